//! UDP services beyond DNS: their names, the ports `--udp-port` refuses, and what a
//! failure of a known one means for this host. Plain functions over port numbers.

use netwatch_common::NTP_PORT;

/// Well-known UDP services, by port: the names diagnoses use.
const NAMES: &[(u16, &str)] = &[
    (53, "dns"),
    (67, "dhcp"),
    (68, "dhcp"),
    (69, "tftp"),
    (88, "kerberos"),
    (123, "ntp"),
    (137, "netbios-ns"),
    (161, "snmp"),
    (162, "snmp-trap"),
    (443, "quic"),
    (500, "ike"),
    (514, "syslog"),
    (1194, "openvpn"),
    (1812, "radius"),
    (1813, "radius-accounting"),
    (1900, "ssdp"),
    (2055, "netflow"),
    (3478, "stun"),
    (4500, "ipsec-nat-t"),
    (4739, "ipfix"),
    (4789, "vxlan"),
    (5060, "sip"),
    (5353, "mdns"),
    (6081, "geneve"),
    (6343, "sflow"),
    (8472, "vxlan"),
    (9995, "netflow"),
    (9996, "netflow"),
    (51820, "wireguard"),
];

/// Ports whose traffic is one-way by nature: nothing answers a datagram, so watched as
/// request/response every one of them would look unanswered. `--udp-port` refuses them
/// unless forced (`514!`). The reason completes "… carries …".
const ONE_WAY: &[(u16, &str)] = &[
    (
        67,
        "DHCP: broadcasts, answered by whichever server or relay hears them",
    ),
    (
        68,
        "DHCP: broadcasts, answered by whichever server or relay hears them",
    ),
    (162, "SNMP traps: notifications, nothing answers them"),
    (514, "syslog: fire-and-forget, nothing answers a message"),
    (1900, "SSDP: multicast discovery, answered by other hosts"),
    (2055, "NetFlow export: one-way, collectors never answer"),
    (4739, "IPFIX export: one-way, collectors never answer"),
    (
        4789,
        "VXLAN: tunnelled frames each way on their own, none answers another",
    ),
    (
        5353,
        "mDNS: multicast discovery, answered by other hosts or to the group",
    ),
    (
        6081,
        "Geneve: tunnelled frames each way on their own, none answers another",
    ),
    (6343, "sFlow export: one-way, collectors never answer"),
    (
        8472,
        "VXLAN: tunnelled frames each way on their own, none answers another",
    ),
    (9995, "NetFlow export: one-way, collectors never answer"),
    (9996, "NetFlow export: one-way, collectors never answer"),
];

/// The name of the UDP service on `port`, if it is a well-known one.
#[must_use]
pub(crate) fn udp_name(port: u16) -> Option<&'static str> {
    NAMES
        .iter()
        .find(|(known, _)| *known == port)
        .map(|(_, name)| *name)
}

/// Why `port` is refused by `--udp-port`, if it carries one-way traffic.
#[must_use]
pub(crate) fn one_way(port: u16) -> Option<&'static str> {
    ONE_WAY
        .iter()
        .find(|(known, _)| *known == port)
        .map(|(_, why)| *why)
}

/// What it means for this host when its requests to UDP `port` fail, if that is known.
#[must_use]
pub(crate) fn udp_consequence(port: u16) -> Option<&'static str> {
    (port == NTP_PORT).then_some("this host cannot sync its clock")
}

/// One `--udp-port` value: a port from 1 to 65535, `PORT!` to force a one-way port.
///
/// # Errors
/// One line saying what is wrong and what to do.
pub(crate) fn parse_udp_port(value: &str) -> Result<u16, String> {
    let trimmed = value.trim();
    let (digits, forced) = match trimmed.strip_suffix('!') {
        Some(digits) => (digits, true),
        None => (trimmed, false),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "'{value}' is not a UDP port (a number from 1 to 65535, e.g. --udp-port 51820,5000)"
        ));
    }
    let port = match digits.parse::<u32>() {
        Ok(port @ 1..=65_535) => u16::try_from(port).map_err(|err| err.to_string())?,
        _ => {
            return Err(format!(
                "{digits} is not a UDP port (ports go from 1 to 65535)"
            ));
        }
    };
    if let (Some(why), false) = (one_way(port), forced) {
        return Err(format!(
            "port {port} carries one-way traffic ({why}): every datagram would look \
             unanswered; force it with --udp-port {port}!"
        ));
    }
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_numbers_from_1_to_65535() {
        assert_eq!(parse_udp_port("51820"), Ok(51820));
        assert_eq!(parse_udp_port(" 5000 "), Ok(5000));
        assert_eq!(parse_udp_port("65535"), Ok(65535));
        for bad in [
            "0",
            "70000",
            "65536",
            "abc",
            "",
            "-1",
            "12a",
            "!",
            "99999999999",
        ] {
            let err = parse_udp_port(bad).expect_err(bad);
            assert!(err.contains("is not a UDP port"), "{bad}: {err}");
            assert!(!err.contains('\n'), "{bad}: one line: {err}");
        }
    }

    #[test]
    fn one_way_ports_are_refused_unless_forced() {
        for port in [514, 162, 2055, 4739, 6343, 4789, 6081, 5353, 1900, 67, 68] {
            let err = parse_udp_port(&port.to_string()).expect_err("one-way");
            assert!(err.contains("one-way"), "{port}: {err}");
            assert!(err.contains(&format!("--udp-port {port}!")), "{err}");
            assert!(!err.contains('\n'), "{err}");
            assert_eq!(parse_udp_port(&format!("{port}!")), Ok(port));
        }
        assert!(
            parse_udp_port("514")
                .unwrap_err()
                .contains("syslog: fire-and-forget")
        );
        assert_eq!(
            parse_udp_port("51820!"),
            Ok(51820),
            "forcing any port is fine"
        );
    }

    #[test]
    fn services_are_named_and_ntp_has_a_consequence() {
        assert_eq!(udp_name(123), Some("ntp"));
        assert_eq!(udp_name(51820), Some("wireguard"));
        assert_eq!(udp_name(443), Some("quic"));
        assert_eq!(udp_name(161), Some("snmp"));
        assert_eq!(udp_name(40_000), None);
        assert_eq!(
            udp_consequence(123),
            Some("this host cannot sync its clock")
        );
        assert_eq!(udp_consequence(161), None);
    }
}

//! Which interfaces to watch (the ones named, or those holding the default routes), and
//! what kind of device each is: where its packets put the IP header.

use std::{fs, io, path::Path};

use thiserror::Error;

/// An interface netwatch can attach to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub kind: LinkKind,
}

/// What kind of device an interface is, as far as reading its packets goes: where tc finds
/// the IP header, and the name the "watching" line gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    /// `ARPHRD_ETHER`: an Ethernet header (and maybe VLAN tags) before IP.
    Ethernet,
    /// `ARPHRD_LOOPBACK`: an Ethernet-shaped header of zeros.
    Loopback,
    /// A tun device (`ARPHRD_NONE`): `OpenVPN`, wireguard-go, Tailscale.
    Tun,
    /// Kernel `WireGuard` (`ARPHRD_NONE`).
    Wireguard,
    /// Any other `ARPHRD_NONE` or `ARPHRD_RAWIP` device: raw IP packets.
    #[serde(rename = "raw-ip")]
    RawIp,
    /// `ARPHRD_PPP`: PPP's protocol field is gone by the time tc sees the packet.
    Ppp,
    /// `ARPHRD_TUNNEL`: IPv4 in IPv4.
    Ipip,
    /// `ARPHRD_TUNNEL6`: IP in IPv6.
    Ip6tnl,
    /// `ARPHRD_SIT`: IPv6 in IPv4.
    Sit,
    /// `ARPHRD_IPGRE`: GRE over IPv4.
    Gre,
    /// `ARPHRD_IP6GRE`: GRE over IPv6.
    Ip6gre,
}

impl LinkKind {
    /// As shown in the "watching" line, the JSON and the metrics.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ethernet => "ethernet",
            Self::Loopback => "loopback",
            Self::Tun => "tun",
            Self::Wireguard => "wireguard",
            Self::RawIp => "raw-ip",
            Self::Ppp => "ppp",
            Self::Ipip => "ipip",
            Self::Ip6tnl => "ip6tnl",
            Self::Sit => "sit",
            Self::Gre => "gre",
            Self::Ip6gre => "ip6gre",
        }
    }

    /// Whether tc hands over packets with a link-layer (Ethernet) header first; the
    /// others start with the IP header, at both hooks, and get the L3 classifiers.
    #[must_use]
    pub const fn has_link_header(self) -> bool {
        matches!(self, Self::Ethernet | Self::Loopback)
    }
}

/// What sysfs says about a device, as [`classify`] needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceFacts {
    /// `type`: its `ARPHRD_*` link type.
    pub link_type: u32,
    /// `flags`: its `IFF_*` flags.
    pub flags: u32,
    /// Whether `tun_flags` exists: a tun (or tap) device.
    pub tun: bool,
    /// `DEVTYPE` in `uevent` (`wireguard`, `vlan`, `bond`…), if any.
    pub devtype: Option<String>,
    /// The device whose slave or port this one is (`master`), if any.
    pub master: Option<String>,
}

/// Why a device that exists cannot be watched.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Unwatchable {
    #[error(
        "cannot watch {name}: it is a slave of {master}, and a request can leave by one slave \
         while its answer comes back by another; watch {master} instead"
    )]
    BondSlave { name: String, master: String },
    #[error(
        "cannot watch {name} ({link}): it has no IP traffic netwatch can read; netwatch \
         watches Ethernet and loopback devices and devices without a link-layer header (tun, \
         WireGuard, PPP, ipip, gre, sit)"
    )]
    NoIpTraffic { name: String, link: String },
}

const ARPHRD_ETHER: u32 = 1;
const ARPHRD_PPP: u32 = 512;
const ARPHRD_RAWIP: u32 = 519;
const ARPHRD_TUNNEL: u32 = 768;
const ARPHRD_TUNNEL6: u32 = 769;
const ARPHRD_LOOPBACK: u32 = 772;
const ARPHRD_SIT: u32 = 776;
const ARPHRD_IPGRE: u32 = 778;
const ARPHRD_IP6GRE: u32 = 823;
const ARPHRD_NONE: u32 = 0xfffe;
/// `IFF_SLAVE`: a slave of a bond (or of an eql load balancer).
const IFF_SLAVE: u32 = 0x800;

/// What `facts` make of the device `name`: the kind of device it is, or why it cannot be
/// watched.
pub fn classify(name: &str, facts: &DeviceFacts) -> Result<LinkKind, Unwatchable> {
    if facts.flags & IFF_SLAVE != 0 {
        return Err(Unwatchable::BondSlave {
            name: name.to_owned(),
            master: facts
                .master
                .clone()
                .unwrap_or_else(|| "its master".to_owned()),
        });
    }
    Ok(match facts.link_type {
        ARPHRD_ETHER => LinkKind::Ethernet,
        ARPHRD_LOOPBACK => LinkKind::Loopback,
        ARPHRD_NONE if facts.tun => LinkKind::Tun,
        ARPHRD_NONE if facts.devtype.as_deref() == Some("wireguard") => LinkKind::Wireguard,
        ARPHRD_NONE | ARPHRD_RAWIP => LinkKind::RawIp,
        ARPHRD_PPP => LinkKind::Ppp,
        ARPHRD_TUNNEL => LinkKind::Ipip,
        ARPHRD_TUNNEL6 => LinkKind::Ip6tnl,
        ARPHRD_SIT => LinkKind::Sit,
        ARPHRD_IPGRE => LinkKind::Gre,
        ARPHRD_IP6GRE => LinkKind::Ip6gre,
        other => {
            return Err(Unwatchable::NoIpTraffic {
                name: name.to_owned(),
                link: link_type_name(other),
            });
        }
    })
}

/// `link type N`, with the kernel's name for the common ones (`if_arp.h`).
fn link_type_name(link_type: u32) -> String {
    let name = match link_type {
        24 => "IEEE 1394",
        32 => "InfiniBand",
        280 => "CAN",
        513 => "Cisco HDLC",
        516 => "LAPB",
        801 => "IEEE 802.11",
        802 => "IEEE 802.11 Prism",
        803 => "IEEE 802.11 radiotap",
        804 => "IEEE 802.15.4",
        805 => "IEEE 802.15.4 monitor",
        820 => "Phonet",
        821 => "Phonet pipe",
        822 => "CAIF",
        824 => "netlink monitor",
        825 => "6LoWPAN",
        826 => "vsock monitor",
        0xffff => "void",
        _ => return format!("link type {link_type}"),
    };
    format!("link type {link_type}, {name}")
}

#[derive(Debug, Error)]
pub enum InterfaceError {
    #[error(
        "no such interface: {0} (see `ip link`; interfaces in other network namespaces are not visible)"
    )]
    NotFound(String),
    #[error(transparent)]
    Unwatchable(#[from] Unwatchable),
    #[error("no default route found: pass the interface(s) to watch with --iface")]
    NoDefaultRoute,
    #[error("could not read {path}: {source}")]
    Read { path: String, source: io::Error },
}

/// Whether a watched interface is there and up, as of now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    Up,
    /// Administratively down: the programs stay attached and see nothing.
    Down,
    /// Deleted (or moved to another namespace): the kernel dropped the attachment.
    Gone,
}

/// The interface named `name` as it is now: its index and whether it is up; `None` when it
/// does not exist.
#[must_use]
pub fn probe_link(name: &str) -> Option<(u32, LinkState)> {
    const IFF_UP: u32 = 0x1;
    let dir = Path::new("/sys/class/net").join(name);
    let index = fs::read_to_string(dir.join("ifindex"))
        .ok()?
        .trim()
        .parse::<u32>()
        .ok()?;
    let flags = fs::read_to_string(dir.join("flags")).ok()?;
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).ok()?;
    Some((
        index,
        if flags & IFF_UP != 0 {
            LinkState::Up
        } else {
            LinkState::Down
        },
    ))
}

/// Resolves the interfaces to watch: `requested` (deduplicated, in order) or, when empty,
/// those holding the IPv4 and IPv6 default routes.
pub fn resolve(requested: &[String]) -> Result<Vec<Interface>, InterfaceError> {
    let names = if requested.is_empty() {
        let v4 = read("/proc/net/route")?;
        let v6 = match fs::read_to_string("/proc/net/ipv6_route") {
            Ok(text) => text,
            // No IPv6 in this kernel: IPv4 routes only.
            Err(err) if err.kind() == io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(InterfaceError::Read {
                    path: "/proc/net/ipv6_route".into(),
                    source,
                });
            }
        };
        let names = default_route_interfaces(&v4, &v6);
        if names.is_empty() {
            return Err(InterfaceError::NoDefaultRoute);
        }
        names
    } else {
        let mut names: Vec<String> = Vec::new();
        for name in requested {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    };
    names.into_iter().map(|name| lookup(&name)).collect()
}

fn read(path: &str) -> Result<String, InterfaceError> {
    fs::read_to_string(path).map_err(|source| InterfaceError::Read {
        path: path.into(),
        source,
    })
}

/// The interface `name` as it is now: its index and kind, or why it cannot be watched.
pub fn lookup(name: &str) -> Result<Interface, InterfaceError> {
    let dir = Path::new("/sys/class/net").join(name);
    let number = |file: &str, radix: u32| {
        fs::read_to_string(dir.join(file)).ok().and_then(|text| {
            let text = text.trim();
            u32::from_str_radix(text.strip_prefix("0x").unwrap_or(text), radix).ok()
        })
    };
    let (Some(index), Some(link_type), Some(flags)) = (
        number("ifindex", 10),
        number("type", 10),
        number("flags", 16),
    ) else {
        return Err(InterfaceError::NotFound(name.to_owned()));
    };
    let facts = DeviceFacts {
        link_type,
        flags,
        tun: dir.join("tun_flags").exists(),
        devtype: fs::read_to_string(dir.join("uevent"))
            .ok()
            .and_then(|uevent| {
                uevent
                    .lines()
                    .find_map(|line| line.strip_prefix("DEVTYPE="))
                    .map(str::to_owned)
            }),
        master: fs::read_link(dir.join("master"))
            .ok()
            .and_then(|target| Some(target.file_name()?.to_string_lossy().into_owned())),
    };
    let kind = classify(name, &facts)?;
    Ok(Interface {
        name: name.to_owned(),
        index,
        kind,
    })
}

/// Interfaces of the default routes in `/proc/net/route` and `/proc/net/ipv6_route`,
/// IPv4 first, without duplicates.
#[must_use]
pub fn default_route_interfaces(route_v4: &str, route_v6: &str) -> Vec<String> {
    const RTF_UP: u32 = 0x0001;
    const RTF_REJECT: u32 = 0x0200;
    let mut names: Vec<String> = Vec::new();
    let mut add = |name: &str| {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    };
    // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
    for line in route_v4.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [iface, destination, _gateway, flags, _, _, _, mask, ..] = fields[..] {
            let flags = u32::from_str_radix(flags, 16).unwrap_or(0);
            if destination == "00000000" && mask == "00000000" && flags & RTF_UP != 0 {
                add(iface);
            }
        }
    }
    // dest prefixlen src srcprefixlen nexthop metric refcnt use flags iface
    for line in route_v6.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [destination, prefix_len, _, _, _, _, _, _, flags, iface] = fields[..] {
            let flags = u32::from_str_radix(flags, 16).unwrap_or(0);
            let is_default = prefix_len == "00" && destination.bytes().all(|b| b == b'0');
            if is_default && flags & RTF_UP != 0 && flags & RTF_REJECT == 0 && iface != "lo" {
                add(iface);
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE_V4: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0000A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
";

    const ROUTE_V6: &str = "\
20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth1
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth1
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";

    #[test]
    fn finds_default_routes_of_both_families() {
        assert_eq!(
            default_route_interfaces(ROUTE_V4, ROUTE_V6),
            vec!["eth0", "wlan0", "eth1"]
        );
    }

    #[test]
    fn no_default_route_finds_nothing() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                  eth0\t0000A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\n";
        assert!(default_route_interfaces(v4, "").is_empty());
    }

    #[test]
    fn duplicates_are_dropped() {
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0\n";
        assert_eq!(
            default_route_interfaces(ROUTE_V4, v6),
            vec!["eth0", "wlan0"]
        );
    }

    #[test]
    fn missing_interfaces_are_named() {
        let err = resolve(&["nw-no-such0".to_owned()]).unwrap_err();
        assert!(
            err.to_string().contains("no such interface: nw-no-such0"),
            "{err}"
        );
    }

    #[test]
    fn loopback_is_up_and_missing_links_are_gone() {
        let (index, state) = probe_link("lo").expect("lo exists");
        assert_eq!((index, state), (1, LinkState::Up));
        assert_eq!(probe_link("nw-no-such0"), None);
    }

    fn facts(link_type: u32) -> DeviceFacts {
        DeviceFacts {
            link_type,
            flags: 0x1003,
            ..DeviceFacts::default()
        }
    }

    #[test]
    fn devices_without_a_link_header_get_the_l3_programs() {
        let tun = DeviceFacts {
            tun: true,
            ..facts(ARPHRD_NONE)
        };
        let wireguard = DeviceFacts {
            devtype: Some("wireguard".to_owned()),
            ..facts(ARPHRD_NONE)
        };
        for (facts, kind) in [
            (facts(ARPHRD_ETHER), LinkKind::Ethernet),
            (facts(ARPHRD_LOOPBACK), LinkKind::Loopback),
            (tun, LinkKind::Tun),
            (wireguard, LinkKind::Wireguard),
            (facts(ARPHRD_NONE), LinkKind::RawIp),
            (facts(ARPHRD_RAWIP), LinkKind::RawIp),
            (facts(ARPHRD_PPP), LinkKind::Ppp),
            (facts(ARPHRD_TUNNEL), LinkKind::Ipip),
            (facts(ARPHRD_TUNNEL6), LinkKind::Ip6tnl),
            (facts(ARPHRD_SIT), LinkKind::Sit),
            (facts(ARPHRD_IPGRE), LinkKind::Gre),
            (facts(ARPHRD_IP6GRE), LinkKind::Ip6gre),
        ] {
            let found = classify("x0", &facts).expect("watchable");
            assert_eq!(found, kind, "{facts:?}");
            assert_eq!(
                found.has_link_header(),
                matches!(kind, LinkKind::Ethernet | LinkKind::Loopback),
                "{kind:?}"
            );
        }
        // A tap device is a tun device with Ethernet frames.
        let tap = DeviceFacts {
            tun: true,
            ..facts(ARPHRD_ETHER)
        };
        assert_eq!(classify("tap0", &tap), Ok(LinkKind::Ethernet));
    }

    #[test]
    fn a_bond_slave_is_refused_naming_its_bond() {
        let slave = DeviceFacts {
            flags: 0x1803,
            master: Some("bond0".to_owned()),
            ..facts(ARPHRD_ETHER)
        };
        let err = classify("eth1", &slave).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot watch eth1: it is a slave of bond0, and a request can leave by one slave \
             while its answer comes back by another; watch bond0 instead"
        );
        // A port of a bridge or a VRF has a master too, and is watched.
        let port = DeviceFacts {
            master: Some("br0".to_owned()),
            ..facts(ARPHRD_ETHER)
        };
        assert_eq!(classify("eth2", &port), Ok(LinkKind::Ethernet));
    }

    #[test]
    fn devices_without_ip_traffic_are_refused_with_their_link_type() {
        for (link_type, named) in [
            (280, "link type 280, CAN"),
            (824, "link type 824, netlink monitor"),
            (9999, "link type 9999"),
        ] {
            let err = classify("x0", &facts(link_type)).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!(
                    "cannot watch x0 ({named}): it has no IP traffic netwatch can read"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn loopback_is_accepted() {
        let found = resolve(&["lo".to_owned(), "lo".to_owned()]).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, "lo");
        assert_eq!(found[0].kind, LinkKind::Loopback);
    }
}

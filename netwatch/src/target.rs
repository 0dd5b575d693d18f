//! Targets as the operator sees them: (direction, proto, remote address, remote port).

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
};

use netwatch_common::{DIRECTION_EGRESS, DIRECTION_INGRESS, TargetKey, proto};
use serde::Serialize;

/// Transport of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl Proto {
    #[must_use]
    pub const fn from_iana(number: u8) -> Option<Self> {
        match number {
            proto::TCP => Some(Self::Tcp),
            proto::UDP => Some(Self::Udp),
            proto::ICMP => Some(Self::Icmp),
            proto::ICMPV6 => Some(Self::Icmpv6),
            _ => None,
        }
    }

    #[must_use]
    pub const fn iana(self) -> u8 {
        match self {
            Self::Tcp => proto::TCP,
            Self::Udp => proto::UDP,
            Self::Icmp => proto::ICMP,
            Self::Icmpv6 => proto::ICMPV6,
        }
    }

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
            Self::Icmpv6 => "icmpv6",
        }
    }

    /// ICMP has no ports: its targets are per remote only.
    #[must_use]
    pub const fn has_ports(self) -> bool {
        matches!(self, Self::Tcp | Self::Udp)
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which way the requests of a target go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Requests this host sent.
    Egress,
    /// Requests this host received ("inbound to this host").
    Ingress,
}

impl Direction {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Egress => "egress",
            Self::Ingress => "ingress",
        }
    }

    /// `out` or `in`: the DIR column of the table and the live view.
    #[must_use]
    pub const fn short(self) -> &'static str {
        match self {
            Self::Egress => "out",
            Self::Ingress => "in",
        }
    }
}

/// One remote endpoint that requests go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub direction: Direction,
    pub proto: Proto,
    pub remote: IpAddr,
    /// `None` for ICMP.
    pub port: Option<u16>,
}

impl Target {
    /// Decodes a kernel key; `None` for a protocol or direction this version does not know.
    #[must_use]
    pub fn from_key(key: &TargetKey) -> Option<Self> {
        let proto = Proto::from_iana(key.proto)?;
        let direction = match key.direction {
            DIRECTION_EGRESS => Direction::Egress,
            DIRECTION_INGRESS => Direction::Ingress,
            _ => return None,
        };
        Some(Self {
            direction,
            proto,
            remote: ip_from_key(key.remote),
            port: proto.has_ports().then_some(key.remote_port),
        })
    }

    /// The kernel's key of this target.
    #[must_use]
    pub fn key(&self) -> TargetKey {
        TargetKey {
            remote: ip_to_key(self.remote),
            remote_port: self.port.unwrap_or(0),
            proto: self.proto.iana(),
            direction: match self.direction {
                Direction::Egress => DIRECTION_EGRESS,
                Direction::Ingress => DIRECTION_INGRESS,
            },
        }
    }

    /// The rollup this target belongs to: `TCP/443`, `ICMP`, `TCP/22 in`.
    #[cfg(test)]
    fn service(&self) -> Service {
        Service {
            direction: self.direction,
            proto: self.proto,
            port: self.port,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.port, self.remote) {
            (Some(port), IpAddr::V6(addr)) => write!(f, "{}/[{addr}]:{port}", self.proto),
            (Some(port), IpAddr::V4(addr)) => write!(f, "{}/{addr}:{port}", self.proto),
            (None, addr) => write!(f, "{}/{addr}", self.proto),
        }
    }
}

/// (direction, proto, port) across remotes: the rows of the rollup. Requests this host
/// received never share a row with requests it sent: an inbound tcp/443 (this host's own
/// port, asked for by peers) is another service than an outbound tcp/443.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Service {
    pub direction: Direction,
    pub proto: Proto,
    pub port: Option<u16>,
}

impl fmt::Display for Service {
    /// `TCP/443`, `ICMP` for requests this host sent; `TCP/22 in`, `ICMP in` for requests
    /// it received.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = self.proto.as_str().to_ascii_uppercase();
        match self.port {
            Some(port) => write!(f, "{proto}/{port}")?,
            None => f.write_str(&proto)?,
        }
        match self.direction {
            Direction::Egress => Ok(()),
            Direction::Ingress => f.write_str(" in"),
        }
    }
}

/// A key address (IPv4 stored mapped into IPv6) in its canonical form.
#[must_use]
pub fn ip_from_key(bytes: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The key form of an address: IPv4 mapped into IPv6.
#[must_use]
pub fn ip_to_key(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Convenience for tests and fakes.
#[cfg(test)]
pub(crate) fn target_key(proto: Proto, remote: IpAddr, port: u16) -> TargetKey {
    TargetKey {
        remote: ip_to_key(remote),
        remote_port: if proto.has_ports() { port } else { 0 },
        proto: proto.iana(),
        direction: DIRECTION_EGRESS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_keys_round_trip_to_canonical_ipv4() {
        let addr: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(ip_from_key(ip_to_key(addr)), addr);
        let v6: IpAddr = "2001:db8::53".parse().unwrap();
        assert_eq!(ip_from_key(ip_to_key(v6)), v6);
        assert_eq!(ip_from_key(ip_to_key(v6)).to_string(), "2001:db8::53");
    }

    #[test]
    fn icmp_targets_have_no_port() {
        let key = target_key(Proto::Icmp, "203.0.113.1".parse().unwrap(), 99);
        let target = Target::from_key(&key).unwrap();
        assert_eq!(target.port, None);
        assert_eq!(target.to_string(), "icmp/203.0.113.1");
        assert_eq!(target.service().to_string(), "ICMP");
    }

    #[test]
    fn unknown_protocols_are_skipped() {
        let mut key = target_key(Proto::Tcp, IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 1);
        key.proto = 132;
        assert!(Target::from_key(&key).is_none());
    }

    #[test]
    fn display_brackets_ipv6_with_port() {
        let target = Target {
            direction: Direction::Egress,
            proto: Proto::Udp,
            remote: "2001:db8::53".parse().unwrap(),
            port: Some(53),
        };
        assert_eq!(target.to_string(), "udp/[2001:db8::53]:53");
        assert_eq!(target.service().to_string(), "UDP/53");
    }

    #[test]
    fn inbound_services_are_apart_and_labelled_in() {
        let mut key = target_key(Proto::Tcp, "198.51.100.7".parse().unwrap(), 22);
        key.direction = DIRECTION_INGRESS;
        let inbound = Target::from_key(&key).unwrap();
        assert_eq!(inbound.direction, Direction::Ingress);
        assert_eq!(inbound.port, Some(22), "this host's port asked for");
        assert_eq!(inbound.service().to_string(), "TCP/22 in");
        let outbound = Target {
            direction: Direction::Egress,
            ..inbound
        };
        assert_ne!(inbound.service(), outbound.service());
        assert_eq!(outbound.service().to_string(), "TCP/22");
        let mut ping = target_key(Proto::Icmpv6, "2001:db8::7".parse().unwrap(), 0);
        ping.direction = DIRECTION_INGRESS;
        let ping = Target::from_key(&ping).unwrap();
        assert_eq!(ping.port, None);
        assert_eq!(ping.service().to_string(), "ICMPV6 in");
        assert_eq!(Direction::Ingress.short(), "in");
        assert_eq!(Direction::Egress.short(), "out");
    }
}

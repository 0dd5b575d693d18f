//! Which interfaces to watch: the ones named, or those holding the default routes.

use std::{fs, io, path::Path};

use thiserror::Error;

/// An interface netwatch can attach to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
}

#[derive(Debug, Error)]
pub enum InterfaceError {
    #[error(
        "no such interface: {0} (see `ip link`; interfaces in other network namespaces are not visible)"
    )]
    NotFound(String),
    #[error(
        "interface {name} is not an Ethernet device (link type {link_type}); netwatch reads \
         Ethernet frames: watch the Ethernet interface underneath instead"
    )]
    NotEthernet { name: String, link_type: u32 },
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

/// `ARPHRD_ETHER` and `ARPHRD_LOOPBACK`: frames tc hands over start with an Ethernet header.
const ETHERNET_LINK_TYPES: [u32; 2] = [1, 772];

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

fn lookup(name: &str) -> Result<Interface, InterfaceError> {
    let dir = Path::new("/sys/class/net").join(name);
    let index = fs::read_to_string(dir.join("ifindex"))
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .ok_or_else(|| InterfaceError::NotFound(name.to_owned()))?;
    let link_type = fs::read_to_string(dir.join("type"))
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .ok_or_else(|| InterfaceError::NotFound(name.to_owned()))?;
    if !ETHERNET_LINK_TYPES.contains(&link_type) {
        return Err(InterfaceError::NotEthernet {
            name: name.to_owned(),
            link_type,
        });
    }
    Ok(Interface {
        name: name.to_owned(),
        index,
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

    #[test]
    fn loopback_is_accepted() {
        let found = resolve(&["lo".to_owned(), "lo".to_owned()]).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, "lo");
    }
}

//! Local drops: what the running kernel's BTF says about `struct sk_buff` and
//! `enum skb_drop_reason`, for the `skb:kfree_skb` program, and the names of drop reasons.
//!
//! Nothing about the kernel is compiled in: field offsets and reason values change between
//! kernels (and configs), so they are read from its BTF at start-up ([`crate::btf`]). The
//! reasons: `enum skb_drop_reason` (<https://elixir.bootlin.com/linux/v6.12/source/include/net/dropreason-core.h>); the
//! tracepoint's arguments (skb, location, reason; `rx_sk` from 6.11):
//! <https://elixir.bootlin.com/linux/v6.12/source/include/trace/events/skb.h>, `TRACE_EVENT(kfree_skb`.

use std::collections::HashMap;

use netwatch_common::{DropConfig, SKB_WINDOW};
use thiserror::Error;

use crate::btf::types::{Offset, Types};
use crate::btf::{self, VMLINUX_BTF};

/// Prefix of the `enum skb_drop_reason` enumerators, left out of the names netwatch shows.
const PREFIX: &str = "SKB_DROP_REASON_";

/// Drops *at* the socket: the application had gone (`NO_SOCKET`: typically a late answer
/// after the client gave up; `QUEUE_PURGE`: closed with the answer unread) or did not keep
/// up, or a socket that was not the asker's filtered out its copy (`SOCKET_FILTER`: every raw
/// ICMP socket gets a clone of each echo reply). The path delivered; such drops are shown in
/// `local_drops` but neither fail a target nor name its reason.
pub(crate) const AT_SOCKET: [&str; 7] = [
    "NO_SOCKET",
    "QUEUE_PURGE",
    "SOCKET_CLOSE",
    "SOCKET_FILTER",
    "SOCKET_RCVBUFF",
    "SOCKET_BACKLOG",
    "PROTO_MEM",
];

/// Why netwatch cannot count local drops on this kernel.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("no kernel BTF ({VMLINUX_BTF}: {0}); the kernel needs CONFIG_DEBUG_INFO_BTF")]
    NoBtf(String),
    #[error("the kernel's BTF could not be parsed ({0})")]
    BadBtf(String),
    #[error(
        "the kernel has no drop reasons (no enum skb_drop_reason in its BTF); they came in \
         Linux 5.17"
    )]
    NoDropReasons,
    #[error("struct sk_buff has no usable {0} in the kernel's BTF")]
    SkbField(&'static str),
    #[error(
        "the sk_buff fields netwatch reads are laid out unlike any kernel it knows (protocol, \
         network_header and head aligned within {SKB_WINDOW} bytes, dev and sk adjacent)"
    )]
    SkbLayout,
}

/// The names of the running kernel's drop reasons, by value.
#[derive(Clone, Debug, Default)]
pub struct DropReasons {
    by_value: HashMap<u32, Reason>,
}

/// One drop reason: its name as shown (`NETFILTER_DROP`) and as a target's reason
/// (`here:netfilter-drop`). Leaked once at start-up: a kernel has a bounded set (~130), and
/// verdict reasons are `&'static str` everywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reason {
    pub name: &'static str,
    pub here: &'static str,
    /// One of [`AT_SOCKET`].
    pub at_socket: bool,
}

impl DropReasons {
    /// The value of the reason named `name` (`NETFILTER_DROP`).
    #[must_use]
    pub fn value_of(&self, name: &str) -> Option<u32> {
        self.by_value
            .iter()
            .find(|(_, reason)| reason.name == name)
            .map(|(value, _)| *value)
    }

    /// From `(enumerator, value)` pairs of `enum skb_drop_reason`.
    #[must_use]
    pub fn from_enumerators<'a>(enumerators: impl IntoIterator<Item = (&'a str, u32)>) -> Self {
        let by_value = enumerators
            .into_iter()
            .filter_map(|(enumerator, value)| {
                let name = reason_name(enumerator)?;
                let here = here_reason(&name);
                let at_socket = AT_SOCKET.contains(&name.as_str());
                Some((
                    value,
                    Reason {
                        name: Box::leak(name.into_boxed_str()),
                        here: Box::leak(here.into_boxed_str()),
                        at_socket,
                    },
                ))
            })
            .collect();
        Self { by_value }
    }

    /// The reason `value`, or an `UNKNOWN_<value>` one (a subsystem's reason, or a value from
    /// a kernel newer than its BTF... which cannot happen, but a name is always given).
    #[must_use]
    pub fn get(&self, value: u32) -> Reason {
        if let Some(reason) = self.by_value.get(&value) {
            return *reason;
        }
        let name = format!("UNKNOWN_{value}");
        let here = here_reason(&name);
        Reason {
            name: Box::leak(name.into_boxed_str()),
            here: Box::leak(here.into_boxed_str()),
            at_socket: false,
        }
    }

    /// Whether no reason is known: the kernel cannot report drop reasons (or the drop
    /// program is not running).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_value.is_empty()
    }
}

/// The name netwatch shows for an `enum skb_drop_reason` enumerator: the prefix dropped
/// (`SKB_DROP_REASON_NETFILTER_DROP` → `NETFILTER_DROP`); `SKB_CONSUMED` and
/// `SKB_NOT_DROPPED_YET` stay whole. `None` for the enum's bookkeeping (`..._MAX`,
/// `..._SUBSYS_MASK`).
#[must_use]
pub(crate) fn reason_name(enumerator: &str) -> Option<String> {
    let name = enumerator.strip_prefix(PREFIX).unwrap_or(enumerator);
    if name == "MAX" || name.starts_with("SUBSYS_") || name.is_empty() {
        return None;
    }
    Some(name.to_owned())
}

/// A target's reason for a drop on this host: `here:` and the name lower-cased with dashes
/// (`NETFILTER_DROP` → `here:netfilter-drop`).
#[must_use]
pub(crate) fn here_reason(name: &str) -> String {
    format!("here:{}", name.to_ascii_lowercase().replace('_', "-"))
}

/// The drop program's configuration and the `enum skb_drop_reason` enumerators. Owned values only, so a child process can parse and hand them back (see
/// [`btf::layout_in_child`]).
pub(crate) fn layout_parts(
    types: &Types<'_>,
) -> Result<(DropConfig, Vec<(String, u32)>), LayoutError> {
    let enumerators = types
        .enumerators("skb_drop_reason")
        .ok_or(LayoutError::NoDropReasons)?;
    let value = |name: &str| {
        enumerators
            .iter()
            .find(|(enumerator, _)| enumerator == name)
            .map(|(_, value)| *value)
    };
    let not_specified = value("SKB_DROP_REASON_NOT_SPECIFIED").ok_or(LayoutError::NoDropReasons)?;
    // SKB_NOT_DROPPED_YET and SKB_CONSUMED came later (6.0, 6.1) than the enum itself (5.17):
    // where they are missing, NOT_SPECIFIED stands in (ignoring it twice costs nothing).
    let not_dropped_yet = value("SKB_NOT_DROPPED_YET").unwrap_or(not_specified);
    let consumed = value("SKB_CONSUMED").unwrap_or(not_specified);
    let skb = types
        .composite("sk_buff")
        .ok_or(LayoutError::SkbField("struct"))?;
    let path = |ty: &'static str, field: &'static str| -> Result<u32, LayoutError> {
        btf::offset(types, ty, field).map_err(|_| LayoutError::SkbField(field))
    };
    let offset = |field: &'static str| path("sk_buff", field);
    let (pkt_type_byte, pkt_type_shift) = match types.offset_of(skb, "pkt_type") {
        Some(Offset::Bits { bit, size: 3 }) => (bit / 8, bit % 8),
        _ => return Err(LayoutError::SkbField("pkt_type")),
    };
    if pkt_type_shift > 5 {
        return Err(LayoutError::SkbField("pkt_type"));
    }
    let config = window_config(&SkbFields {
        dev: offset("dev")?,
        sk: offset("sk")?,
        pkt_type_byte,
        protocol: offset("protocol")?,
        network_header: offset("network_header")?,
        head: offset("head")?,
    })?;
    let config = DropConfig {
        not_dropped_yet,
        consumed,
        not_specified,
        net_inum: path("net", "ns.inum")?,
        pkt_type_shift,
        ..config
    };
    // Without CONFIG_NET_NS there is one namespace and `possible_net_t` is empty: no check.
    let config = match (
        path("net_device", "nd_net.net"),
        path("sock", "__sk_common.skc_net.net"),
    ) {
        (Ok(dev_net), Ok(sk_net)) => DropConfig {
            dev_net,
            sk_net,
            netns: btf::own_netns(),
            ..config
        },
        _ => config,
    };
    let mut socket_reasons = [0u32; 4];
    for name in AT_SOCKET {
        if let Some(value) = value(&format!("{PREFIX}{name}"))
            && let Some(word) = socket_reasons.get_mut(value as usize / 32)
        {
            *word |= 1 << (value % 32);
        }
    }
    Ok((
        DropConfig {
            socket_reasons,
            ..config
        },
        enumerators,
    ))
}

/// Offsets in `struct sk_buff` of the fields the drop program reads (`pkt_type`: the byte
/// holding it).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SkbFields {
    pub dev: u32,
    pub sk: u32,
    pub pkt_type_byte: u32,
    pub protocol: u32,
    pub network_header: u32,
    pub head: u32,
}

/// Places the window the program reads first over `protocol` (2 bytes), `network_header` (2)
/// and `head` (8), their offsets within it; `dev` and `sk` must be adjacent (read together).
/// The window starts on an 8-byte boundary, so each field lies aligned in the program's
/// buffer as in the `sk_buff`, and the program reads it with one load.
pub(crate) fn window_config(fields: &SkbFields) -> Result<DropConfig, LayoutError> {
    let spans = [
        (fields.protocol, 2),
        (fields.network_header, 2),
        (fields.head, 8),
    ];
    let start = spans.iter().map(|(at, _)| *at).min().unwrap_or(0) & !7;
    let end = spans.iter().map(|(at, len)| at + len).max().unwrap_or(0);
    if end - start > u32::try_from(SKB_WINDOW).unwrap_or(u32::MAX)
        || spans.iter().any(|(at, len)| !at.is_multiple_of(*len))
        || fields.dev.abs_diff(fields.sk) != 8
    {
        return Err(LayoutError::SkbLayout);
    }
    Ok(DropConfig {
        enabled: 1,
        skb_window: start,
        protocol: fields.protocol - start,
        network_header: fields.network_header - start,
        head: fields.head - start,
        skb_dev_sk: fields.dev.min(fields.sk),
        skb_dev: fields.dev,
        skb_sk: fields.sk,
        pkt_type_byte: fields.pkt_type_byte,
        ..DropConfig::disabled()
    })
}

/// The drop program's configuration and the reason names, from BTF bytes (the path-MTU
/// lab test reads the kernel's own this way, independently of a netwatch run).
#[cfg(any(test, feature = "test-helpers"))]
pub fn layout(btf: &[u8]) -> Result<(DropConfig, DropReasons), LayoutError> {
    let types = Types::parse(btf).map_err(LayoutError::BadBtf)?;
    let (config, enumerators) = layout_parts(&types)?;
    let reasons = DropReasons::from_enumerators(
        enumerators
            .iter()
            .map(|(name, value)| (name.as_str(), *value)),
    );
    Ok((config, reasons))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn enumerators_become_names_and_here_reasons() {
        assert_eq!(
            reason_name("SKB_DROP_REASON_NETFILTER_DROP").as_deref(),
            Some("NETFILTER_DROP")
        );
        assert_eq!(reason_name("SKB_CONSUMED").as_deref(), Some("SKB_CONSUMED"));
        assert_eq!(reason_name("SKB_DROP_REASON_MAX"), None);
        assert_eq!(reason_name("SKB_DROP_REASON_SUBSYS_MASK"), None);
        assert_eq!(here_reason("NETFILTER_DROP"), "here:netfilter-drop");
        assert_eq!(here_reason("IP_RPFILTER"), "here:ip-rpfilter");
        assert_eq!(here_reason("NO_SOCKET"), "here:no-socket");
    }

    #[test]
    fn reasons_are_found_by_value_whatever_the_numbering() {
        // Two kernels, two numberings: names follow values, nothing is assumed.
        let older = DropReasons::from_enumerators([
            ("SKB_DROP_REASON_NOT_SPECIFIED", 0),
            ("SKB_DROP_REASON_NETFILTER_DROP", 5),
            ("SKB_DROP_REASON_MAX", 6),
        ]);
        let newer = DropReasons::from_enumerators([
            ("SKB_NOT_DROPPED_YET", 0),
            ("SKB_CONSUMED", 1),
            ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
            ("SKB_DROP_REASON_NETFILTER_DROP", 12),
        ]);
        assert_eq!(older.get(5).name, "NETFILTER_DROP");
        assert_eq!(newer.get(12).here, "here:netfilter-drop");
        assert_eq!(newer.value_of("NETFILTER_DROP"), Some(12));
        assert_eq!(
            older.get(6).name,
            "UNKNOWN_6",
            "the bookkeeping MAX is no reason"
        );
        assert_eq!(newer.get(0x1_0003).here, "here:unknown-65539");
    }

    /// 6.18's layout.
    pub(crate) const SKB_6_18: SkbFields = SkbFields {
        dev: 16,
        sk: 24,
        pkt_type_byte: 128,
        protocol: 176,
        network_header: 180,
        head: 192,
    };

    #[test]
    fn the_window_covers_every_field_or_fails() {
        let config = window_config(&SKB_6_18).unwrap();
        assert_eq!(
            (
                config.enabled,
                config.skb_window,
                config.protocol,
                config.network_header,
                config.head,
                config.skb_dev_sk,
                config.pkt_type_byte
            ),
            (1, 176, 0, 4, 16, 16, 128)
        );
        let spread = SkbFields {
            protocol: 0,
            ..SKB_6_18
        };
        assert_eq!(window_config(&spread), Err(LayoutError::SkbLayout));
        let apart = SkbFields { sk: 40, ..SKB_6_18 };
        assert_eq!(window_config(&apart), Err(LayoutError::SkbLayout));
        let misaligned = SkbFields {
            head: 196,
            ..SKB_6_18
        };
        assert_eq!(window_config(&misaligned), Err(LayoutError::SkbLayout));
        // A window starting off a boundary starts at the one before it.
        let shifted = SkbFields {
            protocol: 180,
            network_header: 184,
            ..SKB_6_18
        };
        let config = window_config(&shifted).unwrap();
        assert_eq!(
            (
                config.skb_window,
                config.protocol,
                config.network_header,
                config.head
            ),
            (176, 4, 8, 16)
        );
    }

    #[test]
    fn the_running_kernel_layout_is_read_from_btf() {
        let Ok(btf) = std::fs::read(VMLINUX_BTF) else {
            eprintln!("skipped: no {VMLINUX_BTF}");
            return;
        };
        let (config, reasons) = layout(&btf).unwrap();
        assert_eq!(config.enabled, 1);
        assert_ne!(config.netns, 0, "the namespace check is on");
        assert_ne!(config.dev_net, 0);
        assert!((config.head as usize) + 8 <= SKB_WINDOW);
        assert_eq!(config.skb_dev_sk, config.skb_dev.min(config.skb_sk));
        assert_ne!(config.consumed, config.not_specified);
        let netfilter = reasons.value_of("NETFILTER_DROP").unwrap();
        assert_eq!(reasons.get(netfilter).here, "here:netfilter-drop");
        assert!(!config.at_socket(netfilter));
        let no_socket = reasons.value_of("NO_SOCKET").unwrap();
        assert!(config.at_socket(no_socket) && reasons.get(no_socket).at_socket);
    }

    #[test]
    fn garbage_is_not_btf() {
        assert!(matches!(layout(b"not btf"), Err(LayoutError::BadBtf(_))));
    }
}

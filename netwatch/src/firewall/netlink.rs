//! The few `nf_tables` netlink messages netwatch reads, typed: rule, chain and table changes and
//! the generation that commits them (group `NFNLGRP_NFTABLES`, what `nft monitor` listens to),
//! and packet trace events (group `NFNLGRP_NFTRACE`, what `nft monitor trace` reads).
//!
//! Layouts are the kernel's UAPI, `include/uapi/linux/netfilter/nf_tables.h`
//! (<https://elixir.bootlin.com/linux/v6.12/source/include/uapi/linux/netfilter/nf_tables.h>):
//! each message is a netlink header, a 4-byte `nfgenmsg` (family, version, resource id) and
//! attributes; integers in attributes are big-endian. Pure: bytes in, messages out.

use std::fmt;

use netlink_packet_core::{NLA_TYPE_MASK, NetlinkBuffer, NlaBuffer, NlasIterator};
use serde::Serialize;
use thiserror::Error;

/// `NFNL_SUBSYS_NFTABLES`: the high byte of an `nf_tables` message's type.
const SUBSYS_NFTABLES: u16 = 10;
/// Group numbers (`enum nfnetlink_groups`), for `NETLINK_ADD_MEMBERSHIP`.
pub(crate) const GROUP_NFTABLES: u32 = 7;
pub(crate) const GROUP_NFTRACE: u32 = 9;

// `enum nf_tables_msg_types`.
const MSG_NEWTABLE: u8 = 0;
const MSG_DELTABLE: u8 = 2;
const MSG_NEWCHAIN: u8 = 3;
const MSG_DELCHAIN: u8 = 5;
const MSG_NEWRULE: u8 = 6;
const MSG_DELRULE: u8 = 8;
const MSG_NEWGEN: u8 = 15;
const MSG_TRACE: u8 = 17;

// Attributes (`enum nft_table_attributes`, `nft_chain_attributes`, `nft_rule_attributes`,
// `nft_gen_attributes`, `nft_trace_attributes`, `nft_verdict_attributes`).
const TABLE_NAME: u16 = 1;
const CHAIN_TABLE: u16 = 1;
const CHAIN_HANDLE: u16 = 2;
const CHAIN_NAME: u16 = 3;
const CHAIN_HOOK: u16 = 4;
const CHAIN_POLICY: u16 = 5;
const RULE_TABLE: u16 = 1;
const RULE_CHAIN: u16 = 2;
const RULE_HANDLE: u16 = 3;
const GEN_ID: u16 = 1;
const GEN_PROC_NAME: u16 = 3;
const TRACE_TABLE: u16 = 1;
const TRACE_CHAIN: u16 = 2;
const TRACE_RULE_HANDLE: u16 = 3;
const TRACE_TYPE: u16 = 4;
const TRACE_VERDICT: u16 = 5;
const TRACE_ID: u16 = 6;
const TRACE_NETWORK_HEADER: u16 = 8;
const TRACE_TRANSPORT_HEADER: u16 = 9;
const TRACE_NFPROTO: u16 = 15;
const TRACE_POLICY: u16 = 16;
const VERDICT_CODE: u16 = 1;

/// `NF_DROP`, `NF_ACCEPT`: verdict codes (and chain policies).
pub(crate) const NF_DROP: i32 = 0;
#[cfg(test)]
pub(crate) const NF_ACCEPT: i32 = 1;

/// A table's family (`nfgenmsg.nfgen_family`), named as nft names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Inet,
    Ip,
    Ip6,
    Arp,
    Bridge,
    Netdev,
}

impl Family {
    /// From `NFPROTO_*`; `None` for one nft has no tables of.
    #[must_use]
    pub const fn from_nfproto(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Inet),
            2 => Some(Self::Ip),
            3 => Some(Self::Arp),
            5 => Some(Self::Netdev),
            7 => Some(Self::Bridge),
            10 => Some(Self::Ip6),
            _ => None,
        }
    }

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Inet => "inet",
            Self::Ip => "ip",
            Self::Ip6 => "ip6",
            Self::Arp => "arp",
            Self::Bridge => "bridge",
            Self::Netdev => "netdev",
        }
    }

    /// Parses nft's name of a family.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Inet,
            Self::Ip,
            Self::Ip6,
            Self::Arp,
            Self::Bridge,
            Self::Netdev,
        ]
        .into_iter()
        .find(|family| family.as_str() == name)
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Add,
    Delete,
}

/// Where a chain is: family, table, name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ChainRef {
    pub family: Family,
    pub table: String,
    pub chain: String,
}

impl fmt::Display for ChainRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.family, self.table, self.chain)
    }
}

/// One rule: its chain and its handle (unique within its table).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RuleRef {
    pub chain: ChainRef,
    pub handle: u64,
}

/// One `nf_tables` message, as far as netwatch cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Message {
    Table {
        op: Op,
        family: Family,
        table: String,
    },
    /// A chain added, changed (its policy) or deleted. `policy` is `NF_DROP` or `NF_ACCEPT` for
    /// a base chain (one on a hook), `None` for a regular one.
    Chain {
        op: Op,
        chain: ChainRef,
        handle: Option<u64>,
        policy: Option<i32>,
    },
    Rule {
        op: Op,
        rule: RuleRef,
    },
    /// The commit of everything announced since the previous one.
    Generation {
        id: u32,
        /// The process that committed it (`nft`, `iptables-nft`), when the kernel says.
        process: Option<String>,
    },
    Trace(TraceEvent),
    /// Sets, elements, objects, flowtables: not followed.
    Other,
}

/// What a trace event reports (`enum nft_trace_types`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TraceKind {
    /// The chain's policy decided (`verdict` holds the policy).
    Policy,
    /// The end of a regular chain: back to the caller.
    Return,
    /// A rule matched (`handle`) and gave `verdict`.
    Rule,
    Unknown,
}

/// One event of a traced packet (`NFT_MSG_TRACE`). A packet's events share its `id`; the
/// first event of each chain it traverses carries its headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TraceEvent {
    pub id: u32,
    pub chain: ChainRef,
    pub kind: TraceKind,
    pub handle: Option<u64>,
    /// The verdict code (`NF_DROP`, `NF_ACCEPT`, or an `NFT_*` one such as continue, -1);
    /// for [`TraceKind::Policy`], the chain's policy.
    pub verdict: Option<i32>,
    /// `NFPROTO_IPV4` or `NFPROTO_IPV6` (the packet's, also in an inet table).
    pub nfproto: Option<u8>,
    pub network_header: Option<Vec<u8>>,
    pub transport_header: Option<Vec<u8>>,
}

impl TraceEvent {
    /// Whether this event dropped the packet: a rule's drop (a reject rule's too: reject sends
    /// its answer, then drops) or a drop policy.
    #[must_use]
    pub(crate) fn drops(&self) -> bool {
        matches!(self.kind, TraceKind::Rule | TraceKind::Policy) && self.verdict == Some(NF_DROP)
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum ParseError {
    #[error("malformed netlink message: {0}")]
    Netlink(String),
    #[error("nf_tables message without {0}")]
    Missing(&'static str),
    #[error("nf_tables message of an unknown family {0}")]
    Family(u8),
}

/// Every message in one datagram, in order; a malformed one gives its error in its place
/// (and ends the datagram when its length cannot be trusted).
#[must_use]
pub(crate) fn parse_datagram(bytes: &[u8]) -> Vec<Result<Message, ParseError>> {
    let mut messages = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let buffer = match NetlinkBuffer::new_checked(&bytes[offset..]) {
            Ok(buffer) => buffer,
            Err(err) => {
                messages.push(Err(ParseError::Netlink(err.to_string())));
                break;
            }
        };
        let length = buffer.length() as usize;
        messages.push(parse_message(buffer.message_type(), buffer.payload()));
        // Messages are aligned to 4 bytes (NLMSG_ALIGN).
        let step = length.next_multiple_of(4);
        if step == 0 {
            break;
        }
        offset += step;
    }
    messages
}

/// One message: its netlink type and payload (`nfgenmsg`, then attributes).
fn parse_message(kind: u16, payload: &[u8]) -> Result<Message, ParseError> {
    if kind >> 8 != SUBSYS_NFTABLES {
        return Ok(Message::Other);
    }
    let [family, _version, _res0, _res1, ref attributes @ ..] = *payload else {
        return Err(ParseError::Missing("nfgenmsg"));
    };
    let kind = (kind & 0xff) as u8;
    let attrs = Attributes::parse(attributes)?;
    let family = || Family::from_nfproto(family).ok_or(ParseError::Family(family));
    let op = if matches!(kind, MSG_DELTABLE | MSG_DELCHAIN | MSG_DELRULE) {
        Op::Delete
    } else {
        Op::Add
    };
    match kind {
        MSG_NEWTABLE | MSG_DELTABLE => Ok(Message::Table {
            op,
            family: family()?,
            table: attrs.string(TABLE_NAME, "the table's name")?,
        }),
        MSG_NEWCHAIN | MSG_DELCHAIN => {
            let hooked = attrs.get(CHAIN_HOOK).is_some();
            Ok(Message::Chain {
                op,
                chain: ChainRef {
                    family: family()?,
                    table: attrs.string(CHAIN_TABLE, "the chain's table")?,
                    chain: attrs.string(CHAIN_NAME, "the chain's name")?,
                },
                handle: attrs.u64(CHAIN_HANDLE),
                policy: attrs.u32(CHAIN_POLICY).filter(|_| hooked).map(as_verdict),
            })
        }
        MSG_NEWRULE | MSG_DELRULE => Ok(Message::Rule {
            op,
            rule: RuleRef {
                chain: ChainRef {
                    family: family()?,
                    table: attrs.string(RULE_TABLE, "the rule's table")?,
                    chain: attrs.string(RULE_CHAIN, "the rule's chain")?,
                },
                handle: attrs
                    .u64(RULE_HANDLE)
                    .ok_or(ParseError::Missing("the rule's handle"))?,
            },
        }),
        MSG_NEWGEN => Ok(Message::Generation {
            id: attrs
                .u32(GEN_ID)
                .ok_or(ParseError::Missing("the generation's id"))?,
            process: attrs.string(GEN_PROC_NAME, "").ok(),
        }),
        MSG_TRACE => {
            let verdict = match attrs.get(TRACE_VERDICT) {
                Some(nested) => Attributes::parse(nested)?.u32(VERDICT_CODE).map(as_verdict),
                None => attrs.u32(TRACE_POLICY).map(as_verdict),
            };
            Ok(Message::Trace(TraceEvent {
                id: attrs
                    .u32(TRACE_ID)
                    .ok_or(ParseError::Missing("the trace's id"))?,
                chain: ChainRef {
                    family: family()?,
                    table: attrs.string(TRACE_TABLE, "the trace's table")?,
                    chain: attrs.string(TRACE_CHAIN, "the trace's chain")?,
                },
                kind: match attrs.u32(TRACE_TYPE) {
                    Some(1) => TraceKind::Policy,
                    Some(2) => TraceKind::Return,
                    Some(3) => TraceKind::Rule,
                    _ => TraceKind::Unknown,
                },
                handle: attrs.u64(TRACE_RULE_HANDLE),
                verdict,
                nfproto: attrs
                    .u32(TRACE_NFPROTO)
                    .and_then(|value| u8::try_from(value).ok()),
                network_header: attrs.get(TRACE_NETWORK_HEADER).map(<[u8]>::to_vec),
                transport_header: attrs.get(TRACE_TRANSPORT_HEADER).map(<[u8]>::to_vec),
            }))
        }
        _ => Ok(Message::Other),
    }
}

/// Verdict codes are signed (`NFT_CONTINUE` is -1) but carried as `u32`.
const fn as_verdict(value: u32) -> i32 {
    i32::from_ne_bytes(value.to_ne_bytes())
}

/// A message's attributes by type (nested and byte-order flags masked off).
struct Attributes<'a> {
    list: Vec<(u16, &'a [u8])>,
}

impl<'a> Attributes<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        let mut list = Vec::new();
        for nla in NlasIterator::new(bytes) {
            let nla: NlaBuffer<&'a [u8]> =
                nla.map_err(|err| ParseError::Netlink(err.to_string()))?;
            let kind = nla.kind() & NLA_TYPE_MASK;
            let length = usize::from(nla.length());
            let value = nla.into_inner();
            list.push((kind, value.get(4..length).unwrap_or_default()));
        }
        Ok(Self { list })
    }

    fn get(&self, kind: u16) -> Option<&'a [u8]> {
        self.list.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v)
    }

    /// A NUL-terminated string attribute.
    fn string(&self, kind: u16, what: &'static str) -> Result<String, ParseError> {
        let value = self.get(kind).ok_or(ParseError::Missing(what))?;
        let text = value.split(|&b| b == 0).next().unwrap_or_default();
        Ok(String::from_utf8_lossy(text).into_owned())
    }

    fn u32(&self, kind: u16) -> Option<u32> {
        let bytes: [u8; 4] = self.get(kind)?.try_into().ok()?;
        Some(u32::from_be_bytes(bytes))
    }

    fn u64(&self, kind: u16) -> Option<u64> {
        let bytes: [u8; 8] = self.get(kind)?.try_into().ok()?;
        Some(u64::from_be_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn chain(family: Family, table: &str, chain: &str) -> ChainRef {
        ChainRef {
            family,
            table: table.into(),
            chain: chain.into(),
        }
    }

    // Captured from Linux 6.18 (NETLINK_NETFILTER, group NFNLGRP_NFTABLES) while nft ran
    // `add chain inet host output { type filter hook output priority 0; policy accept; }` and
    // `add rule inet host output tcp dport 3306 drop comment "block mysql"` in one batch.
    const CHAIN_AND_RULE: &str = "70000000030a000401000000146000000100000909000100686f7374000000000b0003006f757470757400000c0002000000000000000001140004000800010000000003080002000000000008000500000000010b00070066696c746572000008000a0000000001080006000000000130010000060a000c02000000146000000100000909000100686f7374000000000b0002006f757470757400000c0003000000000000000002e400040024000100090001006d6574610000000014000200080002000000001008000100000000012c00010008000100636d700020000200080001000000000108000200000000000c0003000500010006000000340001000c0001007061796c6f6164002400020008000100000000010800020000000002080003000000000208000400000000022c00010008000100636d700020000200080001000000000108000200000000000c000300060001000cea0000300001000e000100696d6d6564696174650000001c0002000800010000000000100002000c000200080001000000000012000700000c626c6f636b206d7973716c000000";
    const GENERATION: &str =
        "2c0000000f0a000001000000146000000000000908000100000000090800020000006014080003006e667400";
    // `nft delete rule inet host output handle 2`.
    const DELETE_RULE: &str = "30010000080a000001000000166000000100000a09000100686f7374000000000b0002006f757470757400000c0003000000000000000002e400040024000100090001006d6574610000000014000200080002000000001008000100000000012c00010008000100636d700020000200080001000000000108000200000000000c0003000500010006000000340001000c0001007061796c6f6164002400020008000100000000010800020000000002080003000000000208000400000000022c00010008000100636d700020000200080001000000000108000200000000000c000300060001000cea0000300001000e000100696d6d6564696174650000001c0002000800010000000000100002000c000200080001000000000012000700000c626c6f636b206d7973716c000000";
    // Group NFNLGRP_NFTRACE: a SYN to 192.0.2.9:3306 traced by netwatch's own chain (rule
    // handle 3, verdict continue, with the headers), then dropped by `inet host output`
    // handle 3 (verdict drop, the first event of that chain: headers again).
    const TRACE_OWN_RULE: &str = "a0000000110a000000000000000000000100000008000f00000000020800040000000003080006008a037375080002006f757400130001006e657477617463685f747261636500000c00030000000000000000030c00050008000100ffffffff08000c000000000106000d0003040000180008004500003c9edb4000400617d6c0000201c000020918000900da6a0ceab460a26f00000000a002ffd784390000";
    const TRACE_OWN_POLICY: &str = "50000000110a000000000000000000000100000008000f00000000020800040000000001080006008a037375080002006f757400130001006e657477617463685f747261636500000800100000000001";
    const TRACE_DROP: &str = "9c000000110a000000000000000000000100000008000f00000000020800040000000003080006008a0373750b0002006f7574707574000009000100686f7374000000000c00030000000000000000030c000500080001000000000008000c000000000106000d0003040000180008004500003c9edb4000400617d6c0000201c000020918000900da6a0ceab460a26f00000000a002ffd784390000";

    #[test]
    fn a_batch_is_its_changes_then_its_generation() {
        let messages: Vec<Message> = parse_datagram(&hex(CHAIN_AND_RULE))
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            messages,
            vec![
                Message::Chain {
                    op: Op::Add,
                    chain: chain(Family::Inet, "host", "output"),
                    handle: Some(1),
                    policy: Some(NF_ACCEPT),
                },
                Message::Rule {
                    op: Op::Add,
                    rule: RuleRef {
                        chain: chain(Family::Inet, "host", "output"),
                        handle: 2,
                    },
                },
            ]
        );
        assert_eq!(
            parse_datagram(&hex(GENERATION)),
            vec![Ok(Message::Generation {
                id: 9,
                process: Some("nft".into())
            })]
        );
        assert_eq!(
            parse_datagram(&hex(DELETE_RULE)),
            vec![Ok(Message::Rule {
                op: Op::Delete,
                rule: RuleRef {
                    chain: chain(Family::Inet, "host", "output"),
                    handle: 2,
                },
            })]
        );
    }

    #[test]
    fn trace_events_name_the_chain_rule_verdict_and_packet() {
        let [Ok(Message::Trace(own))] = &parse_datagram(&hex(TRACE_OWN_RULE))[..] else {
            panic!("one trace event");
        };
        assert_eq!(own.chain, chain(Family::Inet, "netwatch_trace", "out"));
        assert_eq!(
            (own.kind, own.handle, own.verdict),
            (TraceKind::Rule, Some(3), Some(-1))
        );
        assert!(!own.drops(), "continue");
        let [Ok(Message::Trace(policy))] = &parse_datagram(&hex(TRACE_OWN_POLICY))[..] else {
            panic!("one trace event");
        };
        assert_eq!(
            (policy.kind, policy.verdict),
            (TraceKind::Policy, Some(NF_ACCEPT))
        );
        let [Ok(Message::Trace(drop))] = &parse_datagram(&hex(TRACE_DROP))[..] else {
            panic!("one trace event");
        };
        assert_eq!(drop.id, own.id, "one packet");
        assert_eq!(drop.chain, chain(Family::Inet, "host", "output"));
        assert_eq!((drop.handle, drop.verdict), (Some(3), Some(NF_DROP)));
        assert!(drop.drops());
        assert_eq!(drop.nfproto, Some(2));
        let network = drop.network_header.as_ref().unwrap();
        assert_eq!(network.len(), 20);
        assert_eq!(&network[16..20], &[192, 0, 2, 9]);
        assert_eq!(drop.transport_header.as_ref().unwrap()[2..4], [0x0c, 0xea]);
    }

    #[test]
    fn truncated_and_foreign_messages_are_errors_or_skipped() {
        let mut bytes = hex(GENERATION);
        bytes.truncate(20);
        assert!(matches!(
            parse_datagram(&bytes)[..],
            [Err(ParseError::Netlink(_))]
        ));
        // An rtnetlink message (type 16, RTM_NEWLINK) is none of ours.
        let mut foreign = hex(GENERATION);
        foreign[4] = 16;
        foreign[5] = 0;
        assert_eq!(parse_datagram(&foreign), vec![Ok(Message::Other)]);
        // A rule without its handle.
        let mut short = hex(&DELETE_RULE[..2 * 44]);
        short[..4].copy_from_slice(&44u32.to_le_bytes());
        assert!(matches!(
            parse_datagram(&short)[..],
            [Err(ParseError::Missing(_))]
        ));
    }
}

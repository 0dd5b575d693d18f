//! Which rule dropped a target's packets: the kernel's own packet tracing, limited to the
//! flows netwatch must explain. netwatch's table (`inet netwatch_trace`) has one chain on
//! output and one on prerouting, before every other priority, whose only statements set
//! `meta nftrace` for packets of the targets in its sets; nothing in it accepts or drops (its
//! policy, accept, ends only its own chain: every other base chain still sees the packet).
//! Traced packets make the kernel send trace events (`NFT_MSG_TRACE`); the one with a drop
//! verdict names the rule (or the chain's policy) that dropped the packet, and the packet's
//! headers name the target. Pure: the table's script, set updates, events in, hits out.

use std::{
    collections::{BTreeSet, VecDeque},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::{
    TRACE_TABLE,
    changes::is_own,
    netlink::{ChainRef, TraceEvent},
};
use crate::target::{Direction, Proto, Target};

/// Targets traced at once, at most (the size of each set).
pub(crate) const MAX_TRACED: usize = 64;
/// netwatch's chains run before every standard priority (raw is -300, conntrack -200).
pub(crate) const PRIORITY: i32 = -1000;
/// Packets whose headers are remembered until their drop event comes.
const HEADERS_KEPT: usize = 512;

/// The table netwatch adds: sets of what to trace, and two verdict-free chains.
#[must_use]
pub(crate) fn table_script() -> String {
    let mut script = format!("table inet {TRACE_TABLE} {{\n");
    for (name, kind) in SETS {
        let _ = writeln!(script, "  set {name} {{ type {kind}; size {MAX_TRACED}; }}");
    }
    for (chain, hook, rules) in [("out", "output", OUT_RULES), ("in", "prerouting", IN_RULES)] {
        let _ = writeln!(
            script,
            "  chain {chain} {{\n    type filter hook {hook} priority {PRIORITY}; policy accept;"
        );
        for rule in rules {
            let _ = writeln!(script, "    {rule} meta nftrace set 1");
        }
        script.push_str("  }\n");
    }
    script.push_str("}\n");
    script
}

const SETS: [(&str, &str); 6] = [
    ("egress4", "ipv4_addr . inet_proto . inet_service"),
    ("egress6", "ipv6_addr . inet_proto . inet_service"),
    ("ingress4", "ipv4_addr . inet_proto . inet_service"),
    ("ingress6", "ipv6_addr . inet_proto . inet_service"),
    ("icmp4", "ipv4_addr"),
    ("icmp6", "ipv6_addr"),
];

/// Leaving: requests to egress targets, answers to ingress ones.
const OUT_RULES: [&str; 6] = [
    "ip daddr . meta l4proto . th dport @egress4",
    "ip6 daddr . meta l4proto . th dport @egress6",
    "ip daddr . meta l4proto . th sport @ingress4",
    "ip6 daddr . meta l4proto . th sport @ingress6",
    "meta l4proto icmp ip daddr @icmp4",
    "meta l4proto ipv6-icmp ip6 daddr @icmp6",
];

/// Arriving: answers from egress targets, requests of ingress ones.
const IN_RULES: [&str; 6] = [
    "ip saddr . meta l4proto . th sport @egress4",
    "ip6 saddr . meta l4proto . th sport @egress6",
    "ip saddr . meta l4proto . th dport @ingress4",
    "ip6 saddr . meta l4proto . th dport @ingress6",
    "meta l4proto icmp ip saddr @icmp4",
    "meta l4proto ipv6-icmp ip6 saddr @icmp6",
];

/// The set a target's element goes in, and the element.
fn element(target: &Target) -> (&'static str, String) {
    let v6 = target.remote.is_ipv6();
    match (target.port, target.direction) {
        (Some(port), direction) => {
            let set = match (direction, v6) {
                (Direction::Egress, false) => "egress4",
                (Direction::Egress, true) => "egress6",
                (Direction::Ingress, false) => "ingress4",
                (Direction::Ingress, true) => "ingress6",
            };
            (
                set,
                format!("{} . {} . {port}", target.remote, target.proto),
            )
        }
        (None, _) => (
            if v6 { "icmp6" } else { "icmp4" },
            target.remote.to_string(),
        ),
    }
}

/// The nft script that turns the traced set `from` into `to`; `None` when they are equal.
#[must_use]
pub(crate) fn update_script(from: &BTreeSet<Target>, to: &BTreeSet<Target>) -> Option<String> {
    let mut script = String::new();
    for (verb, targets) in [
        ("delete", from.difference(to)),
        ("add", to.difference(from)),
    ] {
        for target in targets {
            let (set, element) = element(target);
            let _ = writeln!(
                script,
                "{verb} element inet {TRACE_TABLE} {set} {{ {element} }}"
            );
        }
    }
    (!script.is_empty()).then_some(script)
}

/// The targets to trace: those failing with drops on this host (or dropped here while still
/// pending), most recent first, at most [`MAX_TRACED`].
#[must_use]
pub(crate) fn wanted(candidates: impl Iterator<Item = (Target, bool)>) -> BTreeSet<Target> {
    candidates
        .filter(|(_, dropped_here)| *dropped_here)
        .map(|(target, _)| target)
        .take(MAX_TRACED)
        .collect()
}

/// A packet's addresses, protocol and ports (0 for ICMP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

/// Reads the network header (and the transport header, for ports) a trace event carries.
/// IPv6 extension headers are not followed: such a packet's protocol is its first one.
#[must_use]
pub(crate) fn flow_of(network: &[u8], transport: Option<&[u8]>) -> Option<Flow> {
    let (src, dst, proto) = match network.first()? >> 4 {
        4 if network.len() >= 20 => (
            IpAddr::V4(Ipv4Addr::new(
                network[12],
                network[13],
                network[14],
                network[15],
            )),
            IpAddr::V4(Ipv4Addr::new(
                network[16],
                network[17],
                network[18],
                network[19],
            )),
            network[9],
        ),
        6 if network.len() >= 40 => {
            let src: [u8; 16] = network[8..24].try_into().ok()?;
            let dst: [u8; 16] = network[24..40].try_into().ok()?;
            (
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
                network[6],
            )
        }
        _ => return None,
    };
    let ports = Proto::from_iana(proto)
        .filter(|p| p.has_ports())
        .and(transport)
        .filter(|t| t.len() >= 4)
        .map_or((0, 0), |t| {
            (
                u16::from_be_bytes([t[0], t[1]]),
                u16::from_be_bytes([t[2], t[3]]),
            )
        });
    Some(Flow {
        src,
        dst,
        proto,
        sport: ports.0,
        dport: ports.1,
    })
}

/// The traced target a packet belongs to: a request to an egress target or its answer, a
/// request of an ingress target or this host's answer to it.
#[must_use]
pub(crate) fn attribute(flow: &Flow, traced: &BTreeSet<Target>) -> Option<Target> {
    let proto = Proto::from_iana(flow.proto)?;
    let port = |port: u16| proto.has_ports().then_some(port);
    [
        (Direction::Egress, flow.dst, flow.dport),
        (Direction::Egress, flow.src, flow.sport),
        (Direction::Ingress, flow.src, flow.dport),
        (Direction::Ingress, flow.dst, flow.sport),
    ]
    .into_iter()
    .map(|(direction, remote, p)| Target {
        direction,
        proto,
        remote,
        port: port(p),
    })
    .find(|target| traced.contains(target))
}

/// A traced packet dropped: by a rule (`handle`) or by the chain's policy (`None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hit {
    pub target: Target,
    pub chain: ChainRef,
    pub handle: Option<u64>,
}

/// `drop`, `reject` (a reject rule drops after sending its answer: its text says which) or
/// `policy`.
#[must_use]
pub(crate) fn verdict_word(handle: Option<u64>, text: &str) -> &'static str {
    // A comment may say anything: only the statements count.
    let statements = text.split(" comment \"").next().unwrap_or_default();
    if handle.is_none() {
        "policy"
    } else if statements.split_whitespace().any(|word| word == "reject") {
        "reject"
    } else {
        "drop"
    }
}

/// Follows trace events to the drops of traced targets.
#[derive(Debug, Default)]
pub(crate) struct Tracer {
    /// What netwatch's sets hold now.
    pub traced: BTreeSet<Target>,
    /// Headers by trace id: a chain's first event carries them, its drop may come later.
    headers: VecDeque<(u32, Flow)>,
}

impl Tracer {
    /// Takes in one event; returns the drop it reports, if it reports one of a traced target.
    pub(crate) fn event(&mut self, event: &TraceEvent) -> Option<Hit> {
        if let Some(network) = &event.network_header
            && let Some(flow) = flow_of(network, event.transport_header.as_deref())
        {
            if let Some(known) = self
                .headers
                .iter_mut()
                .rev()
                .find(|(id, _)| *id == event.id)
            {
                known.1 = flow;
            } else {
                if self.headers.len() >= HEADERS_KEPT {
                    self.headers.pop_front();
                }
                self.headers.push_back((event.id, flow));
            }
        }
        if !event.drops() || is_own(&event.chain) {
            return None;
        }
        let at = self.headers.iter().rposition(|(id, _)| *id == event.id)?;
        let (_, flow) = self.headers.remove(at)?;
        Some(Hit {
            target: attribute(&flow, &self.traced)?,
            chain: event.chain.clone(),
            handle: match event.kind {
                super::netlink::TraceKind::Policy => None,
                _ => event.handle,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::netlink::{Family, NF_ACCEPT, NF_DROP, TraceKind};

    fn dns(remote: &str) -> Target {
        Target {
            direction: Direction::Egress,
            proto: Proto::Udp,
            remote: remote.parse().unwrap(),
            port: Some(53),
        }
    }

    fn ipv4_udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> (Vec<u8>, Vec<u8>) {
        let mut ip = vec![0x45, 0, 0, 48, 0, 0, 0, 0, 64, 17, 0, 0];
        ip.extend(src);
        ip.extend(dst);
        let mut udp = sport.to_be_bytes().to_vec();
        udp.extend(dport.to_be_bytes());
        udp.extend([0, 28, 0, 0]);
        (ip, udp)
    }

    fn event(
        id: u32,
        chain: &str,
        kind: TraceKind,
        handle: Option<u64>,
        verdict: i32,
    ) -> TraceEvent {
        TraceEvent {
            id,
            chain: ChainRef {
                family: Family::Inet,
                table: "host".into(),
                chain: chain.into(),
            },
            kind,
            handle,
            verdict: Some(verdict),
            nfproto: Some(2),
            network_header: None,
            transport_header: None,
        }
    }

    #[test]
    fn the_table_sets_nftrace_and_nothing_else() {
        let script = table_script();
        assert!(
            script.starts_with("table inet netwatch_trace {\n"),
            "{script}"
        );
        assert!(script.contains("type filter hook output priority -1000; policy accept;"));
        assert!(script.contains("type filter hook prerouting priority -1000; policy accept;"));
        let rules: Vec<&str> = script
            .lines()
            .filter(|l| l.contains('@') && !l.trim_start().starts_with("set "))
            .collect();
        assert_eq!(rules.len(), 12, "{script}");
        for rule in rules {
            assert!(rule.ends_with(" meta nftrace set 1"), "{rule}");
            for verdict in [
                "accept", "drop", "reject", "jump", "goto", "queue", "return",
            ] {
                assert!(!rule.split_whitespace().any(|w| w == verdict), "{rule}");
            }
        }
    }

    #[test]
    fn set_updates_add_and_delete_only_what_changed() {
        let from: BTreeSet<Target> = [dns("198.51.100.53"), dns("198.51.100.54")].into();
        let mut ssh = dns("2001:db8::9");
        ssh.direction = Direction::Ingress;
        ssh.proto = Proto::Tcp;
        ssh.port = Some(22);
        let ping = Target {
            direction: Direction::Egress,
            proto: Proto::Icmp,
            remote: "192.0.2.7".parse().unwrap(),
            port: None,
        };
        let to: BTreeSet<Target> = [dns("198.51.100.53"), ssh, ping].into();
        assert_eq!(
            update_script(&from, &to).unwrap(),
            "delete element inet netwatch_trace egress4 { 198.51.100.54 . udp . 53 }\n\
             add element inet netwatch_trace icmp4 { 192.0.2.7 }\n\
             add element inet netwatch_trace ingress6 { 2001:db8::9 . tcp . 22 }\n"
        );
        assert_eq!(update_script(&to, &to), None);
    }

    #[test]
    fn wanted_keeps_the_first_dropped_here_and_bounds_them() {
        let many: Vec<Target> = (0..100u8)
            .map(|i| dns(&format!("198.51.100.{i}")))
            .collect();
        let wanted = wanted(
            many.iter()
                .map(|t| (*t, t.remote.to_string().ends_with('7'))),
        );
        assert_eq!(wanted.len(), 10);
        let all = super::wanted(many.iter().map(|t| (*t, true)));
        assert_eq!(all.len(), MAX_TRACED);
    }

    #[test]
    fn packets_are_attributed_to_requests_and_answers_of_traced_targets() {
        let traced: BTreeSet<Target> = [dns("198.51.100.53")].into();
        let (ip, udp) = ipv4_udp([203, 0, 113, 2], [198, 51, 100, 53], 40000, 53);
        let request = flow_of(&ip, Some(&udp)).unwrap();
        assert_eq!(attribute(&request, &traced), Some(dns("198.51.100.53")));
        let (ip, udp) = ipv4_udp([198, 51, 100, 53], [203, 0, 113, 2], 53, 40000);
        let answer = flow_of(&ip, Some(&udp)).unwrap();
        assert_eq!(attribute(&answer, &traced), Some(dns("198.51.100.53")));
        let (ip, udp) = ipv4_udp([203, 0, 113, 2], [198, 51, 100, 54], 40000, 53);
        assert_eq!(attribute(&flow_of(&ip, Some(&udp)).unwrap(), &traced), None);
        assert_eq!(flow_of(&[0x45, 0, 0], None), None, "truncated");
    }

    #[test]
    fn a_drop_is_named_by_the_rule_or_the_policy_with_headers_from_an_earlier_event() {
        let mut tracer = Tracer {
            traced: [dns("198.51.100.53")].into(),
            ..Tracer::default()
        };
        let (ip, udp) = ipv4_udp([203, 0, 113, 2], [198, 51, 100, 53], 40000, 53);
        let mut first = event(7, "output", TraceKind::Rule, Some(4), -1);
        first.network_header = Some(ip.clone());
        first.transport_header = Some(udp.clone());
        assert_eq!(tracer.event(&first), None, "continue");
        let drop = event(7, "output", TraceKind::Rule, Some(9), NF_DROP);
        assert_eq!(
            tracer.event(&drop),
            Some(Hit {
                target: dns("198.51.100.53"),
                chain: drop.chain.clone(),
                handle: Some(9),
            })
        );
        // The answer, dropped by the input chain's policy.
        let (ip, udp) = ipv4_udp([198, 51, 100, 53], [203, 0, 113, 2], 53, 40000);
        let mut policy = event(8, "input", TraceKind::Policy, Some(1), NF_DROP);
        policy.network_header = Some(ip);
        policy.transport_header = Some(udp);
        let hit = tracer.event(&policy).unwrap();
        assert_eq!((hit.chain.chain.as_str(), hit.handle), ("input", None));
        // Accepted packets and netwatch's own chains report nothing.
        let mut accepted = event(9, "output", TraceKind::Policy, None, NF_ACCEPT);
        accepted.network_header = first.network_header.clone();
        assert_eq!(tracer.event(&accepted), None);
        let mut own = drop.clone();
        own.id = 9;
        own.chain.table = TRACE_TABLE.into();
        assert_eq!(tracer.event(&own), None);
    }

    #[test]
    fn reject_rules_and_policies_are_told_apart_from_drops() {
        assert_eq!(verdict_word(Some(7), "tcp dport 3306 drop"), "drop");
        assert_eq!(verdict_word(Some(7), "udp dport 53 reject"), "reject");
        assert_eq!(
            verdict_word(
                Some(7),
                "tcp dport 25 counter packets 0 bytes 0 reject with tcp reset"
            ),
            "reject"
        );
        assert_eq!(
            verdict_word(Some(7), "drop comment \"we reject nothing\""),
            "drop",
            "a word in a comment is no verdict"
        );
        assert_eq!(verdict_word(None, ""), "policy");
    }
}

//! Findings about this host's own drops (the kernel's `skb:kfree_skb` reports), kept apart
//! from the requests to the upstream firewall team: the fix is a rule on this host.
//!
//! | ID | fires when | says |
//! | --- | --- | --- |
//! | `local-firewall-drops` | a target of requests this host sent fails or degrades with a `here:` reason; one per target | which chain of this host drops what, and the rule to add in nft and iptables syntax |
//! | `dropped-beyond-this-host` | local drops are watched and blackholed targets of requests this host sent had nothing dropped here | the drops are beyond this host |

use std::net::IpAddr;

use super::{Finding, list, one_line};
use crate::{
    snapshot::TargetView,
    target::{Direction, Proto},
    verdict::Verdict,
};

pub const LOCAL_FIREWALL_DROPS: &str = "local-firewall-drops";
pub const DROPPED_BEYOND_THIS_HOST: &str = "dropped-beyond-this-host";

/// The reason a netfilter rule dropped the packet.
const NETFILTER: &str = "here:netfilter-drop";

/// Whether this host dropped packets of `t`, a target of requests it sent, and that is why
/// it fails. (Inbound targets have their own findings, which already speak of this host's
/// chains.)
#[must_use]
pub fn dropped_here(t: &TargetView) -> bool {
    t.direction == Direction::Egress
        && t.verdict != Verdict::Ok
        && t.reason.is_some_and(|r| {
            // A reassembly given up: the fragments were lost before this host (`path`).
            r.starts_with("here:") && !super::path::is_reassembly_failure(r)
        })
}

/// One `local-firewall-drops` finding per target failing because of this host, then one
/// `dropped-beyond-this-host` for blackholed targets with nothing dropped here (only when
/// `watched`: the kernel reports local drops).
pub fn local_drop_findings(judged: &[&TargetView], watched: bool, findings: &mut Vec<Finding>) {
    for &target in judged.iter().filter(|t| dropped_here(t)) {
        findings.push(Finding::new(
            LOCAL_FIREWALL_DROPS,
            one_line(local_summary(target)),
            &[target],
            Vec::new(),
        ));
    }
    if !watched {
        return;
    }
    let beyond: Vec<&TargetView> = judged
        .iter()
        .copied()
        .filter(|t| {
            t.direction == Direction::Egress
                && t.verdict == Verdict::Blackholed
                && !t.provisional
                && t.local_drops.is_empty()
        })
        .collect();
    if beyond.is_empty() {
        return;
    }
    let names: Vec<String> = beyond.iter().map(|t| label(t)).collect();
    let summary = format!(
        "Nothing was dropped on this host for {}: the drops are beyond it (an upstream \
         firewall or the remote).",
        list(&names)
    );
    findings.push(Finding::new(
        DROPPED_BEYOND_THIS_HOST,
        one_line(summary),
        &beyond,
        Vec::new(),
    ));
}

/// `udp/53 at 203.0.113.53`, `icmp at 203.0.113.9`.
fn label(t: &TargetView) -> String {
    match t.port {
        Some(port) => format!("{} {}/{port}", t.remote, t.proto),
        None => format!("{} {}", t.remote, t.proto),
    }
}

/// What is dropped where, and the rule that lets it through.
fn local_summary(t: &TargetView) -> String {
    let reason = t.reason.unwrap_or(NETFILTER);
    // Which way the dropped packets went: for a request this host sent, its answers coming
    // in (input chain) or the requests going out (output chain); for one it received, the
    // requests coming in (input) or its answers going out (output).
    let (what, chain) = match (t.direction, t.answers_dropped_here > 0) {
        (Direction::Egress, true) => (format!("answers from {}", label(t)), Chain::Input),
        (Direction::Egress, false) => (format!("requests to {}", label(t)), Chain::Output),
        (Direction::Ingress, false) => (
            format!(
                "requests inbound to this host from {} to {}",
                t.remote,
                port_label(t)
            ),
            Chain::Input,
        ),
        (Direction::Ingress, true) => (
            format!("this host's answers to {} on {}", t.remote, port_label(t)),
            Chain::Output,
        ),
    };
    if reason != NETFILTER {
        return format!(
            "The {what} are dropped on this host ({reason}), not by its firewall: see the \
             kernel's drop reason."
        );
    }
    let (nft, iptables) = rule(t, chain, t.answers_dropped_here > 0);
    format!(
        "The {what} are dropped by this host's {} chain; add `{nft}` (iptables: `{iptables}`).",
        chain.name()
    )
}

fn port_label(t: &TargetView) -> String {
    match t.port {
        Some(port) => format!("{}/{port}", t.proto),
        None => t.proto.to_string(),
    }
}

#[derive(Clone, Copy)]
enum Chain {
    Input,
    Output,
}

impl Chain {
    const fn name(self) -> &'static str {
        match self {
            Self::Input => "input",
            Self::Output => "output",
        }
    }

    const fn iptables(self) -> &'static str {
        match self {
            Self::Input => "INPUT",
            Self::Output => "OUTPUT",
        }
    }
}

/// The nft and iptables rules that accept what is dropped: answers are let in (or out) by
/// connection tracking; requests by address and port.
fn rule(t: &TargetView, chain: Chain, answers: bool) -> (String, String) {
    let v6 = matches!(t.remote, IpAddr::V6(_));
    let iptables = if v6 { "ip6tables" } else { "iptables" };
    let table_chain = format!("inet filter {}", chain.name());
    if answers {
        return (
            format!("nft add rule {table_chain} ct state established,related accept"),
            format!(
                "{iptables} -I {} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                chain.iptables()
            ),
        );
    }
    let family = if v6 { "ip6" } else { "ip" };
    let (addr_nft, addr_ipt) = match chain {
        Chain::Input => ("saddr", "-s"),
        Chain::Output => ("daddr", "-d"),
    };
    let remote = t.remote;
    let (match_nft, match_ipt) = match (t.proto, t.port) {
        (Proto::Tcp | Proto::Udp, Some(port)) => (
            format!("{} dport {port}", t.proto),
            format!("-p {} --dport {port}", t.proto),
        ),
        (Proto::Icmpv6, _) => (
            "icmpv6 type echo-request".to_owned(),
            "-p icmpv6 --icmpv6-type echo-request".to_owned(),
        ),
        _ => (
            "icmp type echo-request".to_owned(),
            "-p icmp --icmp-type echo-request".to_owned(),
        ),
    };
    (
        format!("nft add rule {table_chain} {family} {addr_nft} {remote} {match_nft} accept"),
        format!(
            "{iptables} -I {} {addr_ipt} {remote} {match_ipt} -j ACCEPT",
            chain.iptables()
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::snapshot::tests::view;

    fn here(mut t: TargetView, answers: u64) -> TargetView {
        t.reason = Some(NETFILTER);
        t.answers_dropped_here = answers;
        t.local_drops = BTreeMap::from([("NETFILTER_DROP", 3)]);
        t
    }

    #[test]
    fn answers_dropped_by_the_input_chain_ask_for_established_related() {
        let t = here(
            view(Proto::Udp, "203.0.113.53", Some(53), Verdict::Blackholed),
            3,
        );
        let mut findings = Vec::new();
        local_drop_findings(&[&t], true, &mut findings);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].finding, LOCAL_FIREWALL_DROPS);
        assert_eq!(
            findings[0].summary,
            "The answers from 203.0.113.53 udp/53 are dropped by this host's input chain; add \
             `nft add rule inet filter input ct state established,related accept` (iptables: \
             `iptables -I INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`)."
        );
    }

    #[test]
    fn requests_dropped_by_the_output_chain_ask_for_that_destination() {
        let t = here(
            view(Proto::Udp, "203.0.113.54", Some(53), Verdict::Blackholed),
            0,
        );
        let mut findings = Vec::new();
        local_drop_findings(&[&t], true, &mut findings);
        assert!(
            findings[0].summary.contains(
                "requests to 203.0.113.54 udp/53 are dropped by this host's output chain; add \
                 `nft add rule inet filter output ip daddr 203.0.113.54 udp dport 53 accept` \
                 (iptables: `iptables -I OUTPUT -d 203.0.113.54 -p udp --dport 53 -j ACCEPT`)"
            ),
            "{}",
            findings[0].summary
        );
        let v6 = here(
            view(Proto::Tcp, "2001:db8::7", Some(22), Verdict::Blackholed),
            0,
        );
        let mut findings = Vec::new();
        local_drop_findings(&[&v6], true, &mut findings);
        assert!(
            findings[0].summary.contains(
                "add `nft add rule inet filter output ip6 daddr 2001:db8::7 tcp dport 22 \
                 accept` (iptables: `ip6tables -I OUTPUT -d 2001:db8::7 -p tcp --dport 22 -j \
                 ACCEPT`)"
            ),
            "{}",
            findings[0].summary
        );
        // Inbound targets have their own findings (inbound-*), which name this host's chains.
        let mut inbound = v6.clone();
        inbound.direction = Direction::Ingress;
        let mut findings = Vec::new();
        local_drop_findings(&[&inbound], true, &mut findings);
        assert!(findings.is_empty(), "{findings:?}");
    }

    #[test]
    fn blackholed_with_nothing_dropped_here_is_beyond_this_host() {
        let upstream = view(Proto::Tcp, "198.51.100.10", Some(5432), Verdict::Blackholed);
        let mut findings = Vec::new();
        local_drop_findings(&[&upstream], true, &mut findings);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].finding, DROPPED_BEYOND_THIS_HOST);
        assert!(findings[0].summary.contains("198.51.100.10 tcp/5432"));
        // A kernel that cannot report local drops says nothing about where.
        let mut findings = Vec::new();
        local_drop_findings(&[&upstream], false, &mut findings);
        assert!(findings.is_empty());
    }
}

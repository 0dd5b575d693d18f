//! Findings about this host's own drops (the kernel's `skb:kfree_skb` reports), kept apart
//! from the requests to the upstream firewall team: the fix is a rule on this host.
//!
//! | ID | fires when | says |
//! | --- | --- | --- |
//! | `local-firewall-drops` | a target of requests this host sent fails or degrades with a `here:` reason; one per target | since when, and the ruleset change it followed (`after_change`); which chain of this host drops what; with `--trace-rules` the rule (or policy) that drops it and the nft command to change (delete the rule, or insert an accept rule before it), else the rule to add in nft and iptables syntax and how to get the rule named |
//! | `dropped-beyond-this-host` | local drops are watched and blackholed targets of requests this host sent had nothing dropped here | the drops are beyond this host |

use std::{fmt::Write as _, net::IpAddr, time::SystemTime};

use super::{Finding, list, one_line};
use crate::{
    firewall::RuleDrops,
    snapshot::TargetView,
    target::{Direction, Proto},
    verdict::Verdict,
};

pub(crate) const LOCAL_FIREWALL_DROPS: &str = "local-firewall-drops";
pub(crate) const DROPPED_BEYOND_THIS_HOST: &str = "dropped-beyond-this-host";

/// The reason a netfilter rule dropped the packet.
const NETFILTER: &str = "here:netfilter-drop";

/// Whether this host dropped packets of `t`, a target of requests it sent, and that is why
/// it fails. (Inbound targets have their own findings, which already speak of this host's
/// chains.)
#[must_use]
pub(super) fn dropped_here(t: &TargetView) -> bool {
    t.direction == Direction::Egress
        && t.verdict != Verdict::Ok
        && t.reason.is_some_and(|r| {
            // A reassembly given up: the fragments were lost before this host (`path`).
            r.starts_with("here:") && !super::path::is_reassembly_failure(r)
        })
}

/// One `local-firewall-drops` finding per target failing because of this host, then one
/// `dropped-beyond-this-host` for blackholed targets with nothing dropped here (only when
/// `watched`: the kernel reports local drops). `traced`: `--trace-rules` names rules.
pub(super) fn local_drop_findings(
    judged: &[&TargetView],
    (watched, traced): (bool, bool),
    findings: &mut Vec<Finding>,
) {
    for &target in judged.iter().filter(|t| dropped_here(t)) {
        let mut summary = since_change(target);
        summary.push_str(&local_summary(target, traced));
        findings.push(Finding::new(
            LOCAL_FIREWALL_DROPS,
            one_line(summary),
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

/// "Blackholed since 10:02:33, 1.4 s after this host's ruleset changed: rule added to inet
/// host output: `tcp dport 3306 drop`. " when the failure followed a ruleset change.
fn since_change(t: &TargetView) -> String {
    let Some(change) = &t.change else {
        return String::new();
    };
    let after = t
        .since
        .duration_since(change.at)
        .unwrap_or_default()
        .as_secs_f64();
    let verdict = t.verdict.as_str();
    let mut capitalized = verdict[..1].to_uppercase();
    capitalized.push_str(&verdict[1..]);
    format!(
        "{capitalized} since {}, {after:.1} s after this host's ruleset changed: {}. ",
        time_of_day(t.since),
        change.what
    )
}

/// `10:02:33` (UTC, as the JSON's times).
fn time_of_day(time: SystemTime) -> String {
    let text = humantime::format_rfc3339_seconds(time).to_string();
    text.get(11..19).unwrap_or(&text).to_owned()
}

/// What is dropped where, and the rule that lets it through.
fn local_summary(t: &TargetView, traced: bool) -> String {
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
    let answers = t.answers_dropped_here > 0;
    if let Some(top) = t.local_drops_rules.first() {
        return traced_summary(t, &what, top, chain, answers);
    }
    let (nft, iptables) = rule(t, chain, answers);
    let mut summary = format!(
        "The {what} are dropped by this host's {} chain; add `{nft}` (iptables: `{iptables}`).",
        chain.name()
    );
    if !traced {
        summary.push_str(
            " Run netwatch with --trace-rules to name the rule (or chain policy) that drops them.",
        );
    }
    summary
}

/// The rule (or policy) tracing named, and the command that changes it.
fn traced_summary(
    t: &TargetView,
    what: &str,
    top: &RuleDrops,
    chain: Chain,
    answers: bool,
) -> String {
    let (matching, _) = accept_match(t, chain, answers);
    let place = format!("{} {} {}", top.family, top.table, top.chain);
    let mut summary = match top.handle {
        Some(handle) => {
            let how = if top.verdict == "reject" {
                "rejected"
            } else {
                "dropped"
            };
            format!(
                "The {what} are {how} by this host's rule `{}` ({place} handle {handle}, {} traced); \
                 delete it (`nft delete rule {place} handle {handle}`) or insert an accept \
                 rule before it (`nft insert rule {place} position {handle} {matching} \
                 accept`).",
                top.rule, top.count
            )
        }
        None => format!(
            "The {what} are dropped by the policy of this host's chain {place} (`{}`, {} traced); \
             insert an accept rule (`nft insert rule {place} {matching} accept`).",
            top.rule, top.count
        ),
    };
    if let Some(other) = t.local_drops_rules.get(1) {
        let _ = write!(
            summary,
            " Also dropped by {} {} {} {}.",
            other.family,
            other.table,
            other.chain,
            other
                .handle
                .map_or_else(|| "policy".to_owned(), |h| format!("handle {h}"))
        );
    }
    summary
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
    let (match_nft, match_ipt) = accept_match(t, chain, answers);
    (
        format!("nft add rule {table_chain} {match_nft} accept"),
        format!("{iptables} -I {} {match_ipt} -j ACCEPT", chain.iptables()),
    )
}

/// What an accept rule for `t`'s dropped packets matches, in nft and iptables syntax.
fn accept_match(t: &TargetView, chain: Chain, answers: bool) -> (String, String) {
    if answers {
        return (
            "ct state established,related".to_owned(),
            "-m conntrack --ctstate ESTABLISHED,RELATED".to_owned(),
        );
    }
    let v6 = matches!(t.remote, IpAddr::V6(_));
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
        format!("{family} {addr_nft} {remote} {match_nft}"),
        format!("{addr_ipt} {remote} {match_ipt}"),
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
        local_drop_findings(&[&t], (true, false), &mut findings);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].finding, LOCAL_FIREWALL_DROPS);
        assert_eq!(
            findings[0].summary,
            "The answers from 203.0.113.53 udp/53 are dropped by this host's input chain; add \
             `nft add rule inet filter input ct state established,related accept` (iptables: \
             `iptables -I INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`). Run \
             netwatch with --trace-rules to name the rule (or chain policy) that drops them."
        );
    }

    fn traced(handle: Option<u64>, rule: &str, verdict: &'static str, count: u64) -> RuleDrops {
        RuleDrops {
            family: crate::firewall::netlink::Family::Inet,
            table: "host".into(),
            chain: if handle.is_some() { "output" } else { "input" }.into(),
            handle,
            rule: rule.into(),
            verdict,
            count,
        }
    }

    #[test]
    fn a_traced_rule_is_named_with_the_command_that_changes_it_and_the_change_before() {
        let mut t = here(
            view(Proto::Tcp, "198.51.100.10", Some(3306), Verdict::Blackholed),
            0,
        );
        t.local_drops_rules = vec![traced(
            Some(7),
            "tcp dport 3306 drop comment \"no mysql\"",
            "drop",
            4,
        )];
        let changed = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(36_151);
        t.since = changed + std::time::Duration::from_millis(1_400);
        t.after_change = Some(42);
        t.change = Some(crate::snapshot::RulesetMark {
            generation: 42,
            at: changed,
            position: None,
            what: "rule added to inet host output: `tcp dport 3306 drop comment \"no mysql\"`"
                .into(),
        });
        let mut findings = Vec::new();
        local_drop_findings(&[&t], (true, true), &mut findings);
        assert_eq!(
            findings[0].summary,
            "Blackholed since 10:02:32, 1.4 s after this host's ruleset changed: rule added to \
             inet host output: `tcp dport 3306 drop comment \"no mysql\"`. The requests to \
             198.51.100.10 tcp/3306 are dropped by this host's rule `tcp dport 3306 drop comment \
             \"no mysql\"` (inet host output handle 7, 4 traced); delete it (`nft delete rule \
             inet host output handle 7`) or insert an accept rule before it (`nft insert rule \
             inet host output position 7 ip daddr 198.51.100.10 tcp dport 3306 accept`)."
        );
    }

    #[test]
    fn a_traced_policy_and_a_reject_rule_are_named_as_such() {
        let mut answers = here(
            view(Proto::Udp, "198.51.100.53", Some(53), Verdict::Blackholed),
            3,
        );
        answers.local_drops_rules = vec![traced(
            None,
            "type filter hook input priority filter; policy drop;",
            "policy",
            3,
        )];
        let mut findings = Vec::new();
        local_drop_findings(&[&answers], (true, true), &mut findings);
        assert_eq!(
            findings[0].summary,
            "The answers from 198.51.100.53 udp/53 are dropped by the policy of this host's \
             chain inet host input (`type filter hook input priority filter; policy drop;`, 3 \
             traced); insert an accept rule (`nft insert rule inet host input ct state \
             established,related accept`)."
        );
        let mut rejected = here(
            view(Proto::Udp, "198.51.100.54", Some(53), Verdict::Blackholed),
            0,
        );
        rejected.local_drops_rules = vec![traced(Some(9), "udp dport 53 reject", "reject", 2)];
        let mut findings = Vec::new();
        local_drop_findings(&[&rejected], (true, true), &mut findings);
        assert!(
            findings[0]
                .summary
                .contains("are rejected by this host's rule `udp dport 53 reject`"),
            "{}",
            findings[0].summary
        );
        // Tracing on, nothing traced yet: no hint to turn it on.
        let untraced = here(
            view(Proto::Udp, "198.51.100.55", Some(53), Verdict::Blackholed),
            0,
        );
        let mut findings = Vec::new();
        local_drop_findings(&[&untraced], (true, true), &mut findings);
        assert!(!findings[0].summary.contains("--trace-rules"));
    }

    #[test]
    fn requests_dropped_by_the_output_chain_ask_for_that_destination() {
        let t = here(
            view(Proto::Udp, "203.0.113.54", Some(53), Verdict::Blackholed),
            0,
        );
        let mut findings = Vec::new();
        local_drop_findings(&[&t], (true, false), &mut findings);
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
        local_drop_findings(&[&v6], (true, false), &mut findings);
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
        local_drop_findings(&[&inbound], (true, false), &mut findings);
        assert!(findings.is_empty(), "{findings:?}");
    }

    #[test]
    fn blackholed_with_nothing_dropped_here_is_beyond_this_host() {
        let upstream = view(Proto::Tcp, "198.51.100.10", Some(5432), Verdict::Blackholed);
        let mut findings = Vec::new();
        local_drop_findings(&[&upstream], (true, false), &mut findings);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].finding, DROPPED_BEYOND_THIS_HOST);
        assert!(findings[0].summary.contains("198.51.100.10 tcp/5432"));
        // A kernel that cannot report local drops says nothing about where.
        let mut findings = Vec::new();
        local_drop_findings(&[&upstream], (false, false), &mut findings);
        assert!(findings.is_empty());
    }
}

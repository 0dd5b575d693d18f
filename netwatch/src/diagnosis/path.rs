//! What fails after the handshake, by size: TCP connections that stall because the path
//! carries less than they send and says nothing (path-MTU discovery blackholed), and DNS
//! answers too large to arrive whole (fragments dropped on the way).
//!
//! | ID | fires when | says |
//! | --- | --- | --- |
//! | `path-mtu-blackhole` | TCP targets are degraded for `path-mtu` (their connections open, then segments above a size die); one finding per direction and cause | the sizes that pass and die; upstream: a request to let ICMP "fragmentation needed" (type 3 code 4) and `ICMPv6` "packet too big" (type 2) reach this host; here (this host's input chain dropped them): the local rules that accept them; and a workaround on this host |
//! | `dns-fragments-lost` | DNS targets whose answers arrived in fragments and were never reassembled (the kernel reported the reassembly timing out) | large answers are lost to fragments dropped on the way, small ones arrive: an EDNS buffer of 1232 bytes, or letting fragments through, fixes it |
//!
//! Targets these findings explain feed no other finding: a resolver whose large answers are
//! lost to fragments is no resolver blocked on the way to it, and a stalling connection is
//! no partial loss.

use super::{
    Direction, Finding, FirewallRequest, IpAddr, LocalRule, Proto, TargetView, Verdict, count,
    is_dns, list, remotes, service, source_for,
};
use crate::verdict::PATH_MTU;

pub(crate) const PATH_MTU_BLACKHOLE: &str = "path-mtu-blackhole";
pub(crate) const DNS_FRAGMENTS_LOST: &str = "dns-fragments-lost";

/// `action` and `direction` of the request for ICMP to reach this host.
const INBOUND: &str = "inbound";
/// The ICMP messages path-MTU discovery needs, as `icmp_type` of a request.
pub(super) const FRAGMENTATION_NEEDED: &str = "fragmentation-needed";
pub(super) const PACKET_TOO_BIG: &str = "packet-too-big";
/// The kernel's drop reasons for a datagram whose fragments never all arrived.
const REASSEMBLY_FAILED: [&str; 2] = ["FRAG_REASM_TIMEOUT", "FRAG_TOO_FAR"];
/// The EDNS buffer size that keeps DNS answers out of fragments on any path (the DNS flag
/// day 2020 recommendation).
const EDNS_BUFFER: u16 = 1232;

/// Whether `t` stalls for the path's MTU.
#[must_use]
pub(super) fn stalls_for_mtu(t: &TargetView) -> bool {
    t.verdict == Verdict::Degraded && t.reason == Some(PATH_MTU)
}

/// Whether `t` is a DNS target whose answers were lost to fragments dropped on the way.
#[must_use]
pub(super) fn loses_fragments(t: &TargetView) -> bool {
    is_dns(t)
        && t.fragmented_answers > 0
        && t.verdict != Verdict::Ok
        && REASSEMBLY_FAILED
            .iter()
            .any(|reason| t.local_drops.get(reason).is_some_and(|n| *n > 0))
}

/// Whether the kernel's reason `here` (`here:frag-reasm-timeout`) is a reassembly that
/// failed: the fragments were lost before this host, which only gave up waiting.
#[must_use]
pub(super) fn is_reassembly_failure(here: &str) -> bool {
    matches!(here, "here:frag-reasm-timeout" | "here:frag-too-far")
}

/// The findings, for the targets of both directions in `judged` (pending and provisional
/// ones already left out); `sources` are this host's addresses, global ones first.
pub(super) fn path_findings(
    judged: &[&TargetView],
    sources: &[IpAddr],
    findings: &mut Vec<Finding>,
) {
    for direction in [Direction::Egress, Direction::Ingress] {
        let stalling: Vec<&TargetView> = judged
            .iter()
            .copied()
            .filter(|t| t.direction == direction && stalls_for_mtu(t))
            .collect();
        // Signals that reached this host and still did not help: this host lost them after
        // tc ingress saw them (proven where the kernel reports the drop).
        let (here, upstream): (Vec<&TargetView>, Vec<&TargetView>) = stalling
            .into_iter()
            .partition(|t| t.path_mtu_dropped_here > 0 || t.path_mtu_signals > 0);
        if !upstream.is_empty() {
            findings.push(mtu_finding(&upstream, sources, false));
        }
        if !here.is_empty() {
            findings.push(mtu_finding(&here, sources, true));
        }
    }
    let losing: Vec<&TargetView> = judged
        .iter()
        .copied()
        .filter(|t| t.direction == Direction::Egress && loses_fragments(t))
        .collect();
    if !losing.is_empty() {
        findings.push(fragments_finding(&losing));
    }
}

/// The sizes the evidence shows: the largest that got through (`None`: only the
/// handshake) and the smallest that died.
fn sizes(targets: &[&TargetView]) -> (Option<u16>, u16) {
    let delivered = targets.iter().filter_map(|t| t.largest_delivered).max();
    let lost = targets
        .iter()
        .filter_map(|t| t.smallest_lost)
        .min()
        .unwrap_or(0);
    (delivered, lost)
}

fn mtu_finding(targets: &[&TargetView], sources: &[IpAddr], here: bool) -> Finding {
    let (delivered, lost) = sizes(targets);
    let labels: Vec<String> = targets
        .iter()
        .map(|t| format!("{} {}", t.remote, service(t)))
        .collect();
    let stalls: u64 = targets.iter().map(|t| t.mtu_stalls).sum();
    let who = match targets[0].direction {
        Direction::Egress => format!("Connections to {}", list(&labels)),
        Direction::Ingress => format!(
            "Connections from {} to this host's {}",
            list(&remotes(targets)),
            list(&services(targets))
        ),
    };
    let passes = match delivered {
        Some(bytes) => format!("packets of {bytes} bytes get through"),
        None => "nothing larger than the handshake gets through".to_owned(),
    };
    let proven = targets.iter().any(|t| t.path_mtu_dropped_here > 0);
    let signal = if here && proven {
        "the \"fragmentation needed\" / \"packet too big\" that would tell this host arrives \
         and this host's own input chain drops it"
    } else if here {
        "the \"fragmentation needed\" / \"packet too big\" that would tell this host arrives \
         (netwatch saw it) and TCP does not act on it: something on this host drops it after \
         netwatch saw it, its input chain most likely (this kernel does not report the drop)"
    } else {
        "no \"fragmentation needed\" / \"packet too big\" reaches this host to say the path \
         carries less (path-MTU discovery is blackholed on the way)"
    };
    let fix = if here {
        "accept them in this host's input chain (the rules below)".to_owned()
    } else {
        "ask for ICMP type 3 code 4 (IPv4) and ICMPv6 type 2 (IPv6) to reach this host".to_owned()
    };
    let summary = format!(
        "{who} open and then stall ({}): packets of {lost} bytes never get through while {passes}, \
         and {signal}. Fix: {fix}; meanwhile {}.",
        count(stalls, "connection", "connections"),
        workaround(targets, delivered, lost),
    );
    let request = if here {
        Vec::new()
    } else {
        icmp_requests(targets, sources)
    };
    let mut finding = Finding::new(PATH_MTU_BLACKHOLE, summary, targets, request);
    if here {
        finding.local_rules = accept_path_mtu_rules(targets);
    }
    finding
}

fn services(targets: &[&TargetView]) -> Vec<String> {
    let mut services: Vec<String> = targets.iter().map(|t| service(t)).collect();
    services.sort();
    services.dedup();
    services
}

/// A workaround on this host that works today: TCP's own black-hole detection, or routes
/// with an MTU the evidence supports (a size that got through, never below what every path
/// carries).
fn workaround(targets: &[&TargetView], delivered: Option<u16>, lost: u16) -> String {
    let v6 = targets.iter().all(|t| t.remote.is_ipv6());
    let floor = if v6 {
        crate::stalls::MIN_MTU_V6
    } else {
        crate::stalls::MIN_MTU_V4
    };
    let probing = "`sysctl -w net.ipv4.tcp_mtu_probing=1` (IPv4 and IPv6) lets TCP find the \
                   size that passes by itself";
    let remote = remotes(targets)[0];
    let route = |mtu: u16| {
        let headers = if v6 { 60 } else { 40 };
        format!(
            "`ip route add {remote} via GATEWAY mtu lock {mtu} advmss {}` (GATEWAY: the next \
             hop `ip route get {remote}` shows) sends no more than {mtu} bytes",
            mtu.saturating_sub(headers)
        )
    };
    match delivered {
        Some(bytes) if bytes >= floor => format!("{probing}, or {}", route(bytes)),
        _ if v6 => format!("{probing}, or {}", route(floor)),
        _ => format!(
            "{probing}; a route MTU below {lost} bytes would too, but nothing shows which size \
             passes"
        ),
    }
}

/// Let ICMP "fragmentation needed" and `ICMPv6` "packet too big" reach this host's addresses
/// of each family among `targets`, from anywhere (any router on the path may send them).
fn icmp_requests(targets: &[&TargetView], sources: &[IpAddr]) -> Vec<FirewallRequest> {
    let mut requests = Vec::new();
    for (v6, proto, icmp_type) in [
        (false, Proto::Icmp, FRAGMENTATION_NEEDED),
        (true, Proto::Icmpv6, PACKET_TOO_BIG),
    ] {
        let Some(remote) = targets.iter().map(|t| t.remote).find(|r| r.is_ipv6() == v6) else {
            continue;
        };
        let this_host = source_for(sources, remote);
        let anywhere = match this_host {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        requests.push(FirewallRequest {
            source: anywhere,
            destinations: vec![this_host],
            proto,
            port: None,
            direction: INBOUND,
            action: super::ALLOW,
            icmp_type: Some(icmp_type),
            needed_by: Vec::new(),
        });
    }
    requests
}

/// The rules that accept path-MTU signals in this host's input chain, per family present.
fn accept_path_mtu_rules(targets: &[&TargetView]) -> Vec<LocalRule> {
    let mut rules = Vec::new();
    if targets.iter().any(|t| t.remote.is_ipv4()) {
        rules.push(LocalRule {
            chain: super::INPUT,
            nft: "nft insert rule inet filter input icmp type destination-unreachable icmp \
                  code frag-needed accept"
                .to_owned(),
            iptables: "iptables -I INPUT -p icmp --icmp-type fragmentation-needed -j ACCEPT"
                .to_owned(),
        });
    }
    if targets.iter().any(|t| t.remote.is_ipv6()) {
        rules.push(LocalRule {
            chain: super::INPUT,
            nft: "nft insert rule inet filter input icmpv6 type packet-too-big accept".to_owned(),
            iptables: "ip6tables -I INPUT -p ipv6-icmp --icmpv6-type packet-too-big -j ACCEPT"
                .to_owned(),
        });
    }
    rules
}

fn fragments_finding(targets: &[&TargetView]) -> Finding {
    let resolvers = remotes(targets);
    let fragmented: u64 = targets.iter().map(|t| t.fragmented_answers).sum();
    let lost: u64 = targets
        .iter()
        .map(|t| {
            REASSEMBLY_FAILED
                .iter()
                .filter_map(|reason| t.local_drops.get(reason))
                .sum::<u64>()
        })
        .sum();
    // Answers that arrived whole: the resolver answers what fits.
    let whole: u64 = targets
        .iter()
        .map(|t| t.answered.saturating_sub(t.fragmented_answers))
        .sum();
    let small = if whole > 0 {
        format!(
            "; {} that fit in one packet arrived",
            count(whole, "answer", "answers")
        )
    } else {
        String::new()
    };
    let summary = format!(
        "Large DNS answers from {} are lost to fragmentation: {} arrived in fragments and {lost} \
         never reassembled (the first fragment arrives, the rest is dropped on the way: a \
         firewall that drops IP fragments){small}. The resolver is not blocked: \
         an EDNS buffer of {EDNS_BUFFER} bytes (`edns-udp-size {EDNS_BUFFER}` in BIND, \
         `edns-buffer-size: {EDNS_BUFFER}` in Unbound, `edns-packet-max={EDNS_BUFFER}` in \
         dnsmasq) keeps answers unfragmented and large ones go over TCP; or let fragments \
         through.",
        list(&resolvers),
        count(fragmented, "answer", "answers"),
    );
    Finding::new(DNS_FRAGMENTS_LOST, summary, targets, Vec::new())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::snapshot::tests::view;

    fn stalling(remote: &str, delivered: Option<u16>, lost: u16) -> TargetView {
        let mut t = view(Proto::Tcp, remote, Some(5001), Verdict::Degraded);
        t.reason = Some(PATH_MTU);
        t.answered = 1;
        t.mtu_stalls = 1;
        t.largest_delivered = delivered;
        t.smallest_lost = Some(lost);
        t
    }

    fn sources() -> Vec<IpAddr> {
        vec![
            "203.0.113.2".parse().unwrap(),
            "2001:db8:1::2".parse().unwrap(),
        ]
    }

    #[test]
    fn an_upstream_blackhole_asks_for_the_icmp_and_gives_a_workaround() {
        let t = stalling("198.51.100.10", Some(57), 1500);
        let mut findings = Vec::new();
        path_findings(&[&t], &sources(), &mut findings);
        assert_eq!(findings.len(), 1);
        let f = &findings[0];
        assert_eq!(f.finding, PATH_MTU_BLACKHOLE);
        assert_eq!(
            f.summary,
            "Connections to 198.51.100.10 tcp/5001 open and then stall (1 connection): packets \
             of 1500 bytes never get through while packets of 57 bytes get through, and no \
             \"fragmentation needed\" / \"packet too big\" reaches this host to say the path \
             carries less (path-MTU discovery is blackholed on the way). Fix: ask for ICMP type \
             3 code 4 (IPv4) and ICMPv6 type 2 (IPv6) to reach this host; meanwhile `sysctl -w \
             net.ipv4.tcp_mtu_probing=1` (IPv4 and IPv6) lets TCP find the size that passes by \
             itself; a route MTU below 1500 bytes would too, but nothing shows which size \
             passes."
        );
        assert_eq!(f.request.len(), 1);
        let r = &f.request[0];
        assert_eq!(
            (r.proto, r.port, r.direction, r.icmp_type),
            (Proto::Icmp, None, INBOUND, Some(FRAGMENTATION_NEEDED))
        );
        assert_eq!(
            r.destinations,
            vec!["203.0.113.2".parse::<IpAddr>().unwrap()]
        );
        assert!(f.local_rules.is_empty());
    }

    #[test]
    fn a_size_that_passed_is_the_route_mtu_to_use() {
        let t = stalling("198.51.100.10", Some(1400), 1500);
        let mut findings = Vec::new();
        path_findings(&[&t], &sources(), &mut findings);
        assert!(
            findings[0]
                .summary
                .contains("`ip route add 198.51.100.10 via GATEWAY mtu lock 1400 advmss 1360`"),
            "{}",
            findings[0].summary
        );
        // IPv6: 1280 always passes.
        let v6 = stalling("2001:db8:2::10", None, 1500);
        let mut findings = Vec::new();
        path_findings(&[&v6], &sources(), &mut findings);
        let f = &findings[0];
        assert!(
            f.summary
                .contains("nothing larger than the handshake gets through")
        );
        assert!(
            f.summary.contains("mtu lock 1280 advmss 1220"),
            "{}",
            f.summary
        );
        assert_eq!(f.request[0].icmp_type, Some(PACKET_TOO_BIG));
        assert_eq!(f.request[0].proto, Proto::Icmpv6);
    }

    #[test]
    fn signals_dropped_here_name_the_local_rules_and_ask_nothing_upstream() {
        let mut t = stalling("198.51.100.10", Some(57), 1500);
        t.path_mtu_dropped_here = 8;
        t.path_mtu_signals = 8;
        let mut findings = Vec::new();
        path_findings(&[&t], &sources(), &mut findings);
        let f = &findings[0];
        assert!(
            f.summary.contains("this host's own input chain drops it"),
            "{}",
            f.summary
        );
        assert!(f.request.is_empty());
        assert_eq!(
            f.local_rules[0].nft,
            "nft insert rule inet filter input icmp type destination-unreachable icmp code \
             frag-needed accept"
        );
        assert_eq!(
            f.local_rules[0].iptables,
            "iptables -I INPUT -p icmp --icmp-type fragmentation-needed -j ACCEPT"
        );
    }

    #[test]
    fn signals_seen_arriving_that_did_not_help_were_lost_here() {
        // A kernel without drop reasons: tc ingress saw the signals, the stall went on.
        let mut t = stalling("198.51.100.10", Some(57), 1500);
        t.path_mtu_signals = 3;
        let mut findings = Vec::new();
        path_findings(&[&t], &sources(), &mut findings);
        let f = &findings[0];
        assert!(
            f.summary.contains("its input chain most likely"),
            "{}",
            f.summary
        );
        assert!(f.request.is_empty());
        assert_eq!(f.local_rules.len(), 1);
    }

    #[test]
    fn inbound_stalls_speak_of_the_peers() {
        let mut t = stalling("203.0.113.2", Some(57), 1500);
        t.direction = Direction::Ingress;
        t.port = Some(8080);
        let mut findings = Vec::new();
        path_findings(&[&t], &sources(), &mut findings);
        assert!(
            findings[0]
                .summary
                .starts_with("Connections from 203.0.113.2 to this host's tcp/8080 open"),
            "{}",
            findings[0].summary
        );
    }

    #[test]
    fn recovered_or_answering_targets_are_no_blackhole() {
        let mut recovered = view(Proto::Tcp, "198.51.100.10", Some(5001), Verdict::Ok);
        recovered.mtu_stalls = 1;
        recovered.mtu_recoveries = 1;
        let mut findings = Vec::new();
        path_findings(&[&recovered], &sources(), &mut findings);
        assert!(findings.is_empty(), "{findings:?}");
    }

    #[test]
    fn dns_answers_lost_in_fragments_are_not_a_blocked_resolver() {
        let mut t = view(Proto::Udp, "198.51.100.53", Some(53), Verdict::Degraded);
        t.reason = Some("here:frag-reasm-timeout");
        t.answered = 3;
        t.fragmented_answers = 2;
        t.local_drops = BTreeMap::from([("FRAG_REASM_TIMEOUT", 2)]);
        assert!(loses_fragments(&t));
        let mut findings = Vec::new();
        path_findings(&[&t], &sources(), &mut findings);
        assert_eq!(findings[0].finding, DNS_FRAGMENTS_LOST);
        assert!(
            findings[0].summary.starts_with(
                "Large DNS answers from 198.51.100.53 are lost to fragmentation: 2 answers \
                 arrived in fragments and 2 never reassembled (the first fragment arrives, the \
                 rest is dropped on the way: a firewall that drops IP fragments); 1 answer that \
                 fit in one packet arrived."
            ),
            "{}",
            findings[0].summary
        );
        assert!(findings[0].request.is_empty());
        // Fragmented answers that were reassembled are no loss.
        t.local_drops.clear();
        t.verdict = Verdict::Ok;
        assert!(!loses_fragments(&t));
    }
}

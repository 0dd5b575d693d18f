//! Diagnosis: the targets table turned into findings in plain language, each with the
//! targets it rests on and, for blocked traffic, the firewall change to ask for. Pure: no
//! I/O, no clock; the same snapshot always gives the same findings in the same order.
//!
//! Pending targets are ignored everywhere. DNS targets are `udp/53` and `tcp/53`; a
//! *resolver* is a remote with DNS targets. A target *answers* when its verdict is `ok` or
//! `degraded`, and *fails* when it is `blackholed` or `rejected`.
//!
//! Findings, most important first (the order [`diagnose`] returns them in):
//!
//! | ID | fires when | request |
//! | --- | --- | --- |
//! | `dns-blocked` | resolvers were seen and none answers: every DNS target fails | udp/53 and tcp/53 to every resolver |
//! | `resolver-partially-blocked` | some resolvers answer, others have only failing DNS targets | udp/53 and tcp/53 to the blocked resolvers |
//! | `dns-transport-blocked` | a resolver that answers over one of udp/53, tcp/53 fails over the other (typically tcp/53 dropped: large answers fail) | that proto/53 to those resolvers |
//! | `port-blackholed` | a non-DNS TCP/UDP target is blackholed; one per (proto, port) | that proto/port to those remotes |
//! | `port-rejected` | a non-DNS TCP/UDP target is rejected; one per (proto, port, reason) | that proto/port to those remotes |
//! | `icmp-filtered` | ICMP/ICMPv6 echo targets fail; one finding for the remotes that answer other traffic on a TCP/UDP port (the host is up), then one for the rest | icmp/icmpv6 to those remotes |
//! | `ipv6-broken` | at least one IPv6 target fails, no IPv6 target answers (ok or degraded), and at least one IPv4 target is ok | none |
//! | `partial-loss` | a target is degraded; one per target | none |
//!
//! Targets failing because of this host's own drops (a `here:` reason) are left out of the
//! findings above: [`local`] lists them first, as `local-firewall-drops`, with the rule to add
//! on this host, and says when blackholed targets had nothing dropped here.
//!
//! Within an ID, findings are ordered by what they are about (proto, port, address,
//! reason), never by counters, so the order is stable from one poll to the next;
//! `port-blackholed` and `port-rejected` share a rank and are ordered by (proto, port),
//! blackholed before rejected. Evidence is sorted by (proto, port, remote).
//!
//! Summaries are one line of printable ASCII. Counts in them are the targets' counters
//! (totals since the target was first seen), while verdicts are judged over the window:
//! [`Finding::key`] leaves the counts out so that a finding only "changes" when what it is
//! about does.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::{self, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::Serialize;

mod local;
pub use local::{DROPPED_BEYOND_THIS_HOST, LOCAL_FIREWALL_DROPS};

use crate::{
    snapshot::{Snapshot, TargetView},
    target::Proto,
    verdict::Verdict,
};

pub const DNS_BLOCKED: &str = "dns-blocked";
pub const RESOLVER_PARTIALLY_BLOCKED: &str = "resolver-partially-blocked";
pub const DNS_TRANSPORT_BLOCKED: &str = "dns-transport-blocked";
pub const PORT_BLACKHOLED: &str = "port-blackholed";
pub const PORT_REJECTED: &str = "port-rejected";
pub const ICMP_FILTERED: &str = "icmp-filtered";
pub const IPV6_BROKEN: &str = "ipv6-broken";
pub const PARTIAL_LOSS: &str = "partial-loss";

/// `direction` of every request: the requests this host sends.
pub const OUTBOUND: &str = "outbound";
/// `action` of every request.
pub const ALLOW: &str = "allow";

const DNS_PORT: u16 = 53;
/// Addresses or services listed in a summary before "and N more".
const MAX_LISTED: usize = 5;
/// DNS names listed in a summary (up to 255 characters each) before "and N more".
const MAX_NAMES: usize = 2;

/// One thing wrong with the path, in plain language.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    /// Stable ID: one of the constants of this module.
    pub finding: &'static str,
    /// One or two sentences on one line, printable ASCII.
    pub summary: String,
    /// The targets it rests on, sorted by (proto, port, remote); serialized like `target`
    /// records.
    pub evidence: Vec<TargetView>,
    /// The firewall changes to ask for; empty when there is nothing to ask for.
    pub request: Vec<FirewallRequest>,
}

/// One rule to ask the firewall's owner for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FirewallRequest {
    /// This host's address on the watched interface, same family as `destinations`
    /// (the unspecified address when the host has none of that family).
    pub source: IpAddr,
    /// Sorted, deduplicated, all of one family.
    pub destinations: Vec<IpAddr>,
    pub proto: Proto,
    /// `None` (JSON `null`) for ICMP.
    pub port: Option<u16>,
    /// Always [`OUTBOUND`].
    pub direction: &'static str,
    /// Always [`ALLOW`].
    pub action: &'static str,
}

/// What a finding is about, without its counters: equal keys from one poll to the next
/// mean the finding has not changed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FindingKey {
    pub finding: &'static str,
    /// (proto, remote, port, verdict) of each evidence target, sorted.
    pub targets: Vec<(Proto, IpAddr, Option<u16>, Verdict)>,
}

impl Finding {
    /// The ID and the evidence's target identities and verdicts, sorted; no counters.
    #[must_use]
    pub fn key(&self) -> FindingKey {
        let mut targets: Vec<_> = self
            .evidence
            .iter()
            .map(|t| (t.proto, t.remote, t.port, t.verdict))
            .collect();
        targets.sort_unstable();
        FindingKey {
            finding: self.finding,
            targets,
        }
    }

    fn new(
        finding: &'static str,
        summary: String,
        evidence: &[&TargetView],
        request: Vec<FirewallRequest>,
    ) -> Self {
        let mut evidence: Vec<TargetView> = evidence.iter().map(|&t| t.clone()).collect();
        evidence.sort_by_key(identity);
        evidence.dedup_by(|a, b| identity(a) == identity(b));
        Self {
            finding,
            summary: one_line(summary),
            evidence,
            request,
        }
    }
}

/// The findings on `snapshot`, most important first. `sources` are this host's addresses
/// on the watched interfaces (global ones first): the first of each family is the
/// `source` of the requests to that family.
#[must_use]
pub fn diagnose(snapshot: &Snapshot, sources: &[IpAddr]) -> Vec<Finding> {
    let mut judged: Vec<&TargetView> = snapshot
        .targets
        .iter()
        .filter(|t| t.verdict != Verdict::Pending)
        .collect();
    judged.sort_by_key(|t| identity(t));
    let mut findings = Vec::new();
    // Drops on this host are for this host's rules, not the upstream firewall team's.
    local::local_drop_findings(&judged, snapshot.local_drops_watched, &mut findings);
    judged.retain(|t| !local::dropped_here(t));
    dns_findings(&judged, sources, &mut findings);
    port_findings(&judged, sources, &mut findings);
    icmp_findings(&judged, sources, &mut findings);
    ipv6_finding(&judged, &mut findings);
    partial_loss_findings(&judged, &mut findings);
    findings
}

/// The requests of `findings` as a plain text table, one row per rule: SOURCE,
/// DESTINATIONS (comma-separated), PROTO, PORT (`-` for ICMP), DIRECTION, ACTION. Requests
/// that differ only in their destinations (the same port asked for by two findings) are
/// merged into one row. Empty when there is nothing to ask for.
#[must_use]
pub fn render_requests(findings: &[Finding]) -> String {
    type RuleKey = (IpAddr, Proto, Option<u16>, &'static str, &'static str);
    let mut rules: Vec<(RuleKey, BTreeSet<IpAddr>)> = Vec::new();
    for request in findings.iter().flat_map(|f| &f.request) {
        let key = (
            request.source,
            request.proto,
            request.port,
            request.direction,
            request.action,
        );
        match rules.iter_mut().find(|(k, _)| *k == key) {
            Some((_, destinations)) => destinations.extend(request.destinations.iter().copied()),
            None => rules.push((key, request.destinations.iter().copied().collect())),
        }
    }
    if rules.is_empty() {
        return String::new();
    }
    let mut rows = vec![
        [
            "SOURCE",
            "DESTINATIONS",
            "PROTO",
            "PORT",
            "DIRECTION",
            "ACTION",
        ]
        .map(str::to_owned),
    ];
    for ((source, proto, port, direction, action), destinations) in rules {
        let destinations: Vec<String> = destinations.iter().map(IpAddr::to_string).collect();
        rows.push([
            source.to_string(),
            destinations.join(","),
            proto.as_str().to_owned(),
            port.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            direction.to_owned(),
            action.to_owned(),
        ]);
    }
    let mut widths = [0; 6];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

// --- DNS ---------------------------------------------------------------------------------

fn dns_findings(judged: &[&TargetView], sources: &[IpAddr], findings: &mut Vec<Finding>) {
    let dns: Vec<&TargetView> = judged.iter().copied().filter(|t| is_dns(t)).collect();
    let mut resolvers: BTreeMap<IpAddr, Vec<&TargetView>> = BTreeMap::new();
    for &target in &dns {
        resolvers.entry(target.remote).or_default().push(target);
    }
    let (working, blocked): (Vec<IpAddr>, Vec<IpAddr>) = resolvers
        .keys()
        .partition(|r| resolvers[*r].iter().any(|t| answers(t)));

    if !blocked.is_empty() {
        let dns_protos = [Proto::Udp, Proto::Tcp];
        let request = requests(
            sources,
            blocked.iter().copied(),
            &dns_protos,
            Some(DNS_PORT),
        );
        let failing: Vec<&TargetView> = blocked
            .iter()
            .flat_map(|r| resolvers[r].iter().copied())
            .collect();
        if working.is_empty() {
            let summary = dns_blocked_summary(judged, &failing);
            findings.push(Finding::new(DNS_BLOCKED, summary, &dns, request));
        } else {
            let (verb, noun) = if working.len() == 1 {
                ("answers", "resolver")
            } else {
                ("answer", "resolvers")
            };
            let blocked_noun = if blocked.len() == 1 {
                "resolver"
            } else {
                "resolvers"
            };
            let summary = format!(
                "Some DNS resolvers are blocked upstream: {noun} {} {verb}, but {}{}; lookups \
                 stall or fail whenever the blocked {blocked_noun} {} tried.",
                list(&working),
                failure_phrase(&failing, "query", "queries"),
                names_phrase(&failing),
                if blocked.len() == 1 { "is" } else { "are" },
            );
            findings.push(Finding::new(
                RESOLVER_PARTIALLY_BLOCKED,
                summary,
                &dns,
                request,
            ));
        }
    }

    // Resolvers that answer over one transport and fail over the other.
    for proto in [Proto::Udp, Proto::Tcp] {
        let failing: Vec<&TargetView> = working
            .iter()
            .flat_map(|r| resolvers[r].iter().copied())
            .filter(|t| t.proto == proto && fails(t))
            .collect();
        if failing.is_empty() {
            continue;
        }
        let remotes = remotes(&failing);
        let evidence: Vec<&TargetView> = remotes
            .iter()
            .flat_map(|r| resolvers[r].iter().copied())
            .collect();
        let (other, consequence) = match proto {
            Proto::Udp => (
                "tcp/53",
                "clients ask over UDP first, so lookups stall until they fall back to TCP",
            ),
            _ => (
                "udp/53",
                "answers too large for UDP (truncated: DNSSEC, long record sets) will fail",
            ),
        };
        let summary = format!(
            "DNS over {proto}/53 to {} is {} while {other} answers: {consequence}.",
            list(&remotes),
            blocked_how(&failing),
        );
        let request = requests(sources, remotes, &[proto], Some(DNS_PORT));
        findings.push(Finding::new(
            DNS_TRANSPORT_BLOCKED,
            summary,
            &evidence,
            request,
        ));
    }
}

fn dns_blocked_summary(judged: &[&TargetView], failing: &[&TargetView]) -> String {
    let working: BTreeSet<String> = judged
        .iter()
        .filter(|t| !is_dns(t) && answers(t))
        .map(|t| service(t))
        .collect();
    let other = if !working.is_empty() {
        let working: Vec<String> = working.into_iter().collect();
        let working = list(&working);
        format!(", while traffic to IP addresses works ({working} ok): IP works, names don't")
    } else if judged.iter().any(|t| !is_dns(t)) {
        ", and no other traffic is answered either: the whole uplink may be down".to_owned()
    } else {
        String::new()
    };
    format!(
        "DNS is blocked upstream: {}{}{other}.",
        failure_phrase(failing, "query", "queries"),
        names_phrase(failing),
    )
}

/// "(lookups of a.example, b.example fail)" from the DNS targets' name samples, or "".
fn names_phrase(targets: &[&TargetView]) -> String {
    let names: BTreeSet<&str> = targets
        .iter()
        .filter_map(|t| t.names.as_ref())
        .flatten()
        .map(String::as_str)
        .collect();
    if names.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = names.into_iter().collect();
    format!(" (lookups of {} fail)", list_at_most(&names, MAX_NAMES))
}

// --- TCP/UDP ports -----------------------------------------------------------------------

fn port_findings(judged: &[&TargetView], sources: &[IpAddr], findings: &mut Vec<Finding>) {
    /// (proto, port, rejected: blackholed first, reason).
    type Group = (Proto, Option<u16>, bool, Option<&'static str>);
    let mut groups: BTreeMap<Group, Vec<&TargetView>> = BTreeMap::new();
    for &target in judged.iter().filter(|t| t.proto.has_ports() && !is_dns(t)) {
        let key = match target.verdict {
            Verdict::Blackholed => (target.proto, target.port, false, None),
            Verdict::Rejected => (target.proto, target.port, true, target.reason),
            _ => continue,
        };
        groups.entry(key).or_default().push(target);
    }
    for ((proto, port, rejected, reason), targets) in groups {
        let remotes = remotes(&targets);
        let attempts = if proto == Proto::Tcp {
            ("connection attempt", "connection attempts")
        } else {
            ("request", "requests")
        };
        let service = service(targets[0]);
        let request = requests(sources, remotes.iter().copied(), &[proto], port);
        let finding = if rejected {
            let n = targets.iter().map(|t| t.rejected).sum();
            let how = match reason {
                Some("tcp-reset") => "refused with tcp-reset".to_owned(),
                Some(reason) => format!("rejected with {reason}"),
                None => "rejected".to_owned(),
            };
            let summary = format!(
                "{service} to {} is {how} ({} rejected): {}.",
                list(&remotes),
                count(n, attempts.0, attempts.1),
                reject_meaning(proto, reason),
            );
            Finding::new(PORT_REJECTED, summary, &targets, request)
        } else {
            let n = targets.iter().map(|t| t.unanswered).sum();
            let summary = format!(
                "{service} to {} is silently dropped ({}, no answer, no rejection).",
                list(&remotes),
                count(n, attempts.0, attempts.1),
            );
            Finding::new(PORT_BLACKHOLED, summary, &targets, request)
        };
        findings.push(finding);
    }
}

/// What a rejection of that kind means, and whether a firewall change may not help.
fn reject_meaning(proto: Proto, reason: Option<&str>) -> &'static str {
    match reason {
        Some("tcp-reset") => {
            "a firewall or the host itself refuses it (nothing listens there, or a rule resets \
             it); if it is the host, a firewall change will not help"
        }
        Some("icmp-port-unreachable" | "icmp6-port-unreachable") if proto == Proto::Tcp => {
            "a firewall rule rejects it (port-unreachable is the default of iptables' REJECT; a \
             host with nothing listening would send a TCP reset)"
        }
        Some("icmp-port-unreachable" | "icmp6-port-unreachable") => {
            "nothing listens on that port, or a firewall rejects it with iptables' default \
             REJECT; if it is the host, a firewall change will not help"
        }
        Some(
            "icmp-net-unreachable"
            | "icmp-host-unreachable"
            | "icmp-net-unknown"
            | "icmp-host-unknown"
            | "icmp-host-isolated"
            | "icmp-net-tos-unreachable"
            | "icmp-host-tos-unreachable"
            | "icmp6-no-route"
            | "icmp6-addr-unreachable"
            | "icmp6-beyond-scope",
        ) => {
            "a router cannot reach it (no route, or the host is not answering on its link), or \
             a firewall rejects it with that code; if it is routing, a firewall change will not \
             help"
        }
        Some("icmp-proto-unreachable") => {
            "the remote does not handle that protocol; a firewall change will probably not help"
        }
        Some("icmp6-policy-fail" | "icmp6-reject-route") => "a firewall rule rejects it",
        Some(reason) if reason.ends_with("-prohibited") => "a firewall rule rejects it",
        _ => "something on the path refuses it",
    }
}

// --- ICMP --------------------------------------------------------------------------------

fn icmp_findings(judged: &[&TargetView], sources: &[IpAddr], findings: &mut Vec<Finding>) {
    let failing: Vec<&TargetView> = judged
        .iter()
        .copied()
        .filter(|t| !t.proto.has_ports() && fails(t))
        .collect();
    // Remotes whose ping fails but that answer something else.
    let mut up: Vec<&TargetView> = Vec::new();
    let mut up_proof: Vec<&TargetView> = Vec::new();
    let mut unknown: Vec<&TargetView> = Vec::new();
    for &target in &failing {
        let proof: Vec<&TargetView> = judged
            .iter()
            .copied()
            .filter(|t| t.remote == target.remote && t.proto.has_ports() && answers(t))
            .collect();
        if proof.is_empty() {
            unknown.push(target);
        } else {
            up.push(target);
            up_proof.extend(proof);
        }
    }
    if !up.is_empty() {
        let remotes = remotes(&up);
        let services: BTreeSet<String> = up_proof.iter().map(|t| service(t)).collect();
        let services: Vec<String> = services.into_iter().collect();
        let (verb, hosts) = if remotes.len() == 1 {
            ("answers", "host is")
        } else {
            ("answer", "hosts are")
        };
        let summary = format!(
            "ping fails but {} {verb} on {}: ICMP echo is filtered, the {hosts} not down ({}).",
            list(&remotes),
            list(&services),
            echo_counts(&up),
        );
        let mut evidence = up.clone();
        evidence.extend(up_proof);
        findings.push(Finding::new(
            ICMP_FILTERED,
            summary,
            &evidence,
            icmp_requests(sources, &up),
        ));
    }
    if !unknown.is_empty() {
        let remotes = remotes(&unknown);
        let them = if remotes.len() == 1 { "it" } else { "them" };
        let summary = format!(
            "ping to {} fails ({}) and nothing else to {them} was seen answered: a failing ping \
             alone does not mean the host is down, ICMP echo is often filtered.",
            list(&remotes),
            echo_counts(&unknown),
        );
        let request = icmp_requests(sources, &unknown);
        findings.push(Finding::new(ICMP_FILTERED, summary, &unknown, request));
    }
}

/// The blackholed targets and the rejected ones, in order.
fn dropped_and_refused<'a>(
    targets: &[&'a TargetView],
) -> (Vec<&'a TargetView>, Vec<&'a TargetView>) {
    let with = |verdict| {
        targets
            .iter()
            .copied()
            .filter(|t| t.verdict == verdict)
            .collect()
    };
    (with(Verdict::Blackholed), with(Verdict::Rejected))
}

/// "4 echo requests unanswered, 2 rejected with icmp-admin-prohibited".
fn echo_counts(targets: &[&TargetView]) -> String {
    let mut parts = Vec::new();
    let (dropped, refused) = dropped_and_refused(targets);
    if !dropped.is_empty() {
        let n = dropped.iter().map(|t| t.unanswered).sum();
        parts.push(format!(
            "{} unanswered",
            count(n, "echo request", "echo requests")
        ));
    }
    if !refused.is_empty() {
        let n = refused.iter().map(|t| t.rejected).sum();
        let noun = if parts.is_empty() {
            count(n, "echo request", "echo requests")
        } else {
            n.to_string()
        };
        match reasons(&refused) {
            Some(reasons) => parts.push(format!("{noun} rejected with {reasons}")),
            None => parts.push(format!("{noun} rejected")),
        }
    }
    parts.join(", ")
}

fn icmp_requests(sources: &[IpAddr], targets: &[&TargetView]) -> Vec<FirewallRequest> {
    let mut out = Vec::new();
    for proto in [Proto::Icmp, Proto::Icmpv6] {
        let remotes: Vec<IpAddr> = targets
            .iter()
            .filter(|t| t.proto == proto)
            .map(|t| t.remote)
            .collect();
        out.extend(requests(sources, remotes, &[proto], None));
    }
    out
}

// --- IPv6, partial loss ------------------------------------------------------------------

fn ipv6_finding(judged: &[&TargetView], findings: &mut Vec<Finding>) {
    let v6_failing: Vec<&TargetView> = judged
        .iter()
        .copied()
        .filter(|t| t.remote.is_ipv6() && fails(t))
        .collect();
    let v6_answers = judged.iter().any(|t| t.remote.is_ipv6() && answers(t));
    let v4_ok = judged
        .iter()
        .filter(|t| t.remote.is_ipv4() && t.verdict == Verdict::Ok)
        .count();
    if v6_failing.is_empty() || v6_answers || v4_ok == 0 {
        return;
    }
    let labels: Vec<String> = v6_failing.iter().map(|t| label(t)).collect();
    let summary = format!(
        "IPv6 is broken while IPv4 works: {} ({}) {} and no IPv6 target answers, while {} \
         {} ok; programs that try IPv6 first stall or fall back slowly.",
        count(v6_failing.len() as u64, "IPv6 target", "IPv6 targets"),
        list(&labels),
        if v6_failing.len() == 1 {
            "fails"
        } else {
            "fail"
        },
        count(v4_ok as u64, "IPv4 target", "IPv4 targets"),
        if v4_ok == 1 { "is" } else { "are" },
    );
    findings.push(Finding::new(IPV6_BROKEN, summary, &v6_failing, Vec::new()));
}

fn partial_loss_findings(judged: &[&TargetView], findings: &mut Vec<Finding>) {
    for &target in judged.iter().filter(|t| t.verdict == Verdict::Degraded) {
        let n = target.requests;
        let mut parts = Vec::new();
        if target.unanswered > 0 || target.rejected == 0 {
            parts.push(format!(
                "{} of {} unanswered",
                target.unanswered,
                count(n, "request", "requests")
            ));
        }
        if target.rejected > 0 {
            let rejected = if parts.is_empty() {
                format!("{} of {}", target.rejected, count(n, "request", "requests"))
            } else {
                target.rejected.to_string()
            };
            match target.reason {
                Some(reason) => parts.push(format!("{rejected} rejected ({reason})")),
                None => parts.push(format!("{rejected} rejected")),
            }
        }
        let summary = format!(
            "{} works only part of the time: {}, {} answered (intermittent loss, a rate limit \
             or an overloaded path).",
            label(target),
            parts.join(" and "),
            target.answered,
        );
        findings.push(Finding::new(PARTIAL_LOSS, summary, &[target], Vec::new()));
    }
}

// --- helpers -----------------------------------------------------------------------------

fn identity(t: &TargetView) -> (Proto, Option<u16>, IpAddr) {
    (t.proto, t.port, t.remote)
}

fn is_dns(t: &TargetView) -> bool {
    t.proto.has_ports() && t.port == Some(DNS_PORT)
}

fn answers(t: &TargetView) -> bool {
    matches!(t.verdict, Verdict::Ok | Verdict::Degraded)
}

fn fails(t: &TargetView) -> bool {
    matches!(t.verdict, Verdict::Blackholed | Verdict::Rejected)
}

/// `tcp/443`, `icmp`.
fn service(t: &TargetView) -> String {
    match t.port {
        Some(port) => format!("{}/{port}", t.proto),
        None => t.proto.to_string(),
    }
}

/// `tcp/443 to 198.51.100.10`.
fn label(t: &TargetView) -> String {
    format!("{} to {}", service(t), t.remote)
}

/// The distinct remotes of `targets`, sorted.
fn remotes(targets: &[&TargetView]) -> Vec<IpAddr> {
    let set: BTreeSet<IpAddr> = targets.iter().map(|t| t.remote).collect();
    set.into_iter().collect()
}

/// The distinct reasons of `targets`, sorted and comma-separated.
fn reasons(targets: &[&TargetView]) -> Option<String> {
    let set: BTreeSet<&str> = targets.iter().filter_map(|t| t.reason).collect();
    (!set.is_empty()).then(|| set.into_iter().collect::<Vec<_>>().join(", "))
}

/// "silently dropped", "rejected (icmp-port-unreachable)" or "blocked (dropped or
/// rejected: ...)".
fn blocked_how(targets: &[&TargetView]) -> String {
    let dropped = targets.iter().any(|t| t.verdict == Verdict::Blackholed);
    let refused = targets.iter().any(|t| t.verdict == Verdict::Rejected);
    let reasons = reasons(targets)
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    match (dropped, refused) {
        (true, false) => "silently dropped".to_owned(),
        (false, _) => format!("rejected{reasons}"),
        (true, true) => format!("dropped or rejected{reasons}"),
    }
}

/// "14 queries to A, B got no answer and 6 queries to C were rejected
/// (icmp-admin-prohibited)".
fn failure_phrase(targets: &[&TargetView], one: &str, many: &str) -> String {
    let mut parts = Vec::new();
    let (dropped, refused) = dropped_and_refused(targets);
    if !dropped.is_empty() {
        let n = dropped.iter().map(|t| t.unanswered).sum();
        parts.push(format!(
            "{} to {} got no answer",
            count(n, one, many),
            list(&remotes(&dropped))
        ));
    }
    if !refused.is_empty() {
        let n: u64 = refused.iter().map(|t| t.rejected).sum();
        let reasons = reasons(&refused)
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        parts.push(format!(
            "{} to {} {} rejected{reasons}",
            count(n, one, many),
            list(&remotes(&refused)),
            if n == 1 { "was" } else { "were" },
        ));
    }
    parts.join(" and ")
}

/// The first requests to the (deduplicated) `remotes`: one per (family, proto), IPv4 first,
/// `protos` in the order given.
fn requests(
    sources: &[IpAddr],
    remotes: impl IntoIterator<Item = IpAddr>,
    protos: &[Proto],
    port: Option<u16>,
) -> Vec<FirewallRequest> {
    let remotes: BTreeSet<IpAddr> = remotes.into_iter().collect();
    let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = remotes.into_iter().partition(IpAddr::is_ipv4);
    let mut out = Vec::new();
    for family in [v4, v6] {
        let Some(&first) = family.first() else {
            continue;
        };
        let source = source_for(sources, first);
        for &proto in protos {
            out.push(FirewallRequest {
                source,
                destinations: family.clone(),
                proto,
                port,
                direction: OUTBOUND,
                action: ALLOW,
            });
        }
    }
    out
}

/// The first of `sources` of `destination`'s family, else that family's unspecified address.
fn source_for(sources: &[IpAddr], destination: IpAddr) -> IpAddr {
    sources
        .iter()
        .copied()
        .find(|s| s.is_ipv4() == destination.is_ipv4())
        .unwrap_or(match destination {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        })
}

/// "3 queries", "1 query".
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// "a, b, c, d, e and 2 more".
fn list<T: fmt::Display>(items: &[T]) -> String {
    list_at_most(items, MAX_LISTED)
}

fn list_at_most<T: fmt::Display>(items: &[T], max: usize) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().take(max).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{item}");
    }
    if items.len() > max {
        let _ = write!(out, " and {} more", items.len() - max);
    }
    out
}

/// Printable ASCII on one line: anything else becomes `?`.
fn one_line(text: String) -> String {
    let printable = |c: char| c == ' ' || c.is_ascii_graphic();
    if text.chars().all(printable) {
        return text;
    }
    text.chars()
        .map(|c| if printable(c) { c } else { '?' })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::snapshot::tests::view;

    const SOURCE_V4: &str = "192.0.2.7";
    const SOURCE_V6: &str = "2001:db8:1::7";

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn sources() -> Vec<IpAddr> {
        vec![ip(SOURCE_V4), ip("192.0.2.8"), ip(SOURCE_V6)]
    }

    fn port_of(proto: Proto, port: u16) -> Option<u16> {
        proto.has_ports().then_some(port)
    }

    fn ok(proto: Proto, remote: &str, port: u16, n: u64) -> TargetView {
        let mut t = view(proto, remote, port_of(proto, port), Verdict::Ok);
        (t.requests, t.answered) = (n, n);
        t
    }

    fn dropped(proto: Proto, remote: &str, port: u16, n: u64) -> TargetView {
        let mut t = view(proto, remote, port_of(proto, port), Verdict::Blackholed);
        (t.requests, t.unanswered) = (n, n);
        t
    }

    fn refused(proto: Proto, remote: &str, port: u16, n: u64, reason: &'static str) -> TargetView {
        let mut t = view(proto, remote, port_of(proto, port), Verdict::Rejected);
        (t.requests, t.rejected, t.reason) = (n, n, Some(reason));
        t
    }

    fn degraded(proto: Proto, remote: &str, port: u16, requests: u64, lost: u64) -> TargetView {
        let mut t = view(proto, remote, port_of(proto, port), Verdict::Degraded);
        (t.requests, t.answered, t.unanswered) = (requests, requests - lost, lost);
        t
    }

    fn pending(proto: Proto, remote: &str, port: u16) -> TargetView {
        let mut t = view(proto, remote, port_of(proto, port), Verdict::Pending);
        t.in_flight = 1;
        t
    }

    fn snap(targets: Vec<TargetView>) -> Snapshot {
        Snapshot {
            targets,
            ..Snapshot::default()
        }
    }

    fn run(targets: Vec<TargetView>) -> Vec<Finding> {
        diagnose(&snap(targets), &sources())
    }

    fn ids(findings: &[Finding]) -> Vec<&'static str> {
        findings.iter().map(|f| f.finding).collect()
    }

    fn the(findings: &[Finding], id: &str) -> Finding {
        let matching: Vec<&Finding> = findings.iter().filter(|f| f.finding == id).collect();
        assert_eq!(matching.len(), 1, "exactly one {id} in {findings:#?}");
        matching[0].clone()
    }

    fn request(
        source: &str,
        destinations: &[&str],
        proto: Proto,
        port: Option<u16>,
    ) -> FirewallRequest {
        FirewallRequest {
            source: ip(source),
            destinations: destinations.iter().map(|d| ip(d)).collect(),
            proto,
            port,
            direction: "outbound",
            action: "allow",
        }
    }

    use Proto::{Icmp, Icmpv6, Tcp, Udp};

    const R1: &str = "198.51.100.53";
    const R2: &str = "198.51.100.54";
    const HOST: &str = "198.51.100.10";
    const HOST6: &str = "2001:db8::10";
    const R6: &str = "2001:db8::53";

    /// (scenario, targets, expected IDs in order).
    #[expect(clippy::too_many_lines, reason = "one table of scenarios")]
    fn scenarios() -> Vec<(&'static str, Vec<TargetView>, Vec<&'static str>)> {
        vec![
            ("nothing seen", vec![], vec![]),
            (
                "everything answers",
                vec![
                    ok(Udp, R1, 53, 9),
                    ok(Tcp, HOST, 443, 3),
                    ok(Icmp, HOST, 0, 2),
                ],
                vec![],
            ),
            (
                "only pending targets",
                vec![
                    pending(Udp, R1, 53),
                    pending(Tcp, HOST, 5432),
                    pending(Icmp, HOST, 0),
                ],
                vec![],
            ),
            (
                "DNS dropped to every resolver, IP works",
                vec![
                    dropped(Udp, R1, 53, 10),
                    dropped(Udp, R2, 53, 4),
                    ok(Tcp, HOST, 443, 20),
                ],
                vec![DNS_BLOCKED],
            ),
            (
                "DNS rejected",
                vec![
                    refused(Udp, R1, 53, 5, "icmp-admin-prohibited"),
                    ok(Tcp, HOST, 443, 1),
                ],
                vec![DNS_BLOCKED],
            ),
            (
                "a pending resolver does not count as working",
                vec![dropped(Udp, R1, 53, 3), pending(Udp, R2, 53)],
                vec![DNS_BLOCKED],
            ),
            (
                "pending DNS alone is not blocked",
                vec![pending(Udp, R1, 53), ok(Tcp, HOST, 443, 1)],
                vec![],
            ),
            (
                "one resolver works, the other is dropped",
                vec![dropped(Udp, R1, 53, 3), ok(Udp, R2, 53, 7)],
                vec![RESOLVER_PARTIALLY_BLOCKED],
            ),
            (
                "a degraded resolver still answers",
                vec![dropped(Udp, R1, 53, 3), degraded(Udp, R2, 53, 10, 2)],
                vec![RESOLVER_PARTIALLY_BLOCKED, PARTIAL_LOSS],
            ),
            (
                "tcp/53 dropped while udp/53 answers",
                vec![ok(Udp, R1, 53, 7), dropped(Tcp, R1, 53, 2)],
                vec![DNS_TRANSPORT_BLOCKED],
            ),
            (
                "a non-DNS port dropped",
                vec![dropped(Tcp, HOST, 5432, 3), ok(Tcp, HOST, 443, 3)],
                vec![PORT_BLACKHOLED],
            ),
            (
                "a non-DNS port rejected",
                vec![refused(Tcp, HOST, 8443, 3, "icmp-host-prohibited")],
                vec![PORT_REJECTED],
            ),
            (
                "ping dropped, the host answers on tcp",
                vec![dropped(Icmp, HOST, 0, 4), ok(Tcp, HOST, 443, 3)],
                vec![ICMP_FILTERED],
            ),
            (
                "ping dropped, nothing else seen",
                vec![dropped(Icmp, HOST, 0, 4)],
                vec![ICMP_FILTERED],
            ),
            (
                "ping and tcp to one host, ping to another: two icmp findings",
                vec![
                    dropped(Icmp, HOST, 0, 4),
                    ok(Tcp, HOST, 443, 3),
                    dropped(Icmp, R1, 0, 1),
                ],
                vec![ICMP_FILTERED, ICMP_FILTERED],
            ),
            (
                "IPv6 fails while IPv4 works",
                vec![dropped(Tcp, HOST6, 443, 3), ok(Tcp, HOST, 443, 3)],
                vec![PORT_BLACKHOLED, IPV6_BROKEN],
            ),
            (
                "IPv6 fails but some IPv6 is ok",
                vec![
                    dropped(Tcp, HOST6, 443, 3),
                    ok(Tcp, "2001:db8::11", 443, 1),
                    ok(Tcp, HOST, 443, 3),
                ],
                vec![PORT_BLACKHOLED],
            ),
            (
                "IPv6 fails but some IPv6 is degraded (answers)",
                vec![
                    dropped(Tcp, HOST6, 443, 3),
                    degraded(Tcp, "2001:db8::11", 443, 4, 1),
                    ok(Tcp, HOST, 443, 3),
                ],
                vec![PORT_BLACKHOLED, PARTIAL_LOSS],
            ),
            (
                "IPv6 fails and IPv4 is not ok either",
                vec![dropped(Tcp, HOST6, 443, 3), dropped(Tcp, HOST, 443, 3)],
                vec![PORT_BLACKHOLED],
            ),
            (
                "IPv6 fails, IPv4 only pending",
                vec![dropped(Tcp, HOST6, 443, 3), pending(Tcp, HOST, 443)],
                vec![PORT_BLACKHOLED],
            ),
            (
                "a degraded target",
                vec![degraded(Tcp, HOST, 443, 20, 3)],
                vec![PARTIAL_LOSS],
            ),
            (
                "all at once, most important first",
                vec![
                    degraded(Tcp, "198.51.100.11", 22, 20, 3),
                    dropped(Icmp, HOST, 0, 4),
                    dropped(Tcp, HOST6, 443, 3),
                    refused(Tcp, HOST, 8443, 3, "icmp-host-prohibited"),
                    dropped(Tcp, HOST, 5432, 3),
                    ok(Tcp, HOST, 443, 20),
                    dropped(Udp, R1, 53, 14),
                ],
                vec![
                    DNS_BLOCKED,
                    PORT_BLACKHOLED, // tcp/443 over IPv6
                    PORT_BLACKHOLED, // tcp/5432
                    PORT_REJECTED,   // tcp/8443
                    ICMP_FILTERED,
                    IPV6_BROKEN,
                    PARTIAL_LOSS,
                ],
            ),
        ]
    }

    #[test]
    fn scenarios_fire_the_expected_findings_in_order() {
        for (name, targets, expected) in scenarios() {
            assert_eq!(ids(&run(targets)), expected, "{name}");
        }
    }

    #[test]
    fn summaries_are_one_ascii_line_and_findings_are_deterministic() {
        for (name, targets, _) in scenarios() {
            let findings = run(targets.clone());
            for finding in &findings {
                let summary = &finding.summary;
                assert!(!summary.is_empty(), "{name}");
                assert!(
                    summary.chars().all(|c| c == ' ' || c.is_ascii_graphic()),
                    "{name}: {summary}"
                );
                assert!(summary.ends_with('.'), "{name}: {summary}");
            }
            let mut reversed = targets;
            reversed.reverse();
            assert_eq!(
                run(reversed),
                findings,
                "{name}: input order does not matter"
            );
        }
    }

    #[test]
    fn pending_targets_are_never_evidence() {
        let findings = run(vec![
            dropped(Udp, R1, 53, 3),
            pending(Udp, R2, 53),
            pending(Tcp, R1, 53),
            dropped(Icmp, HOST, 0, 1),
            pending(Icmp, R1, 0),
        ]);
        assert!(!findings.is_empty());
        for finding in &findings {
            assert!(
                finding
                    .evidence
                    .iter()
                    .all(|t| t.verdict != Verdict::Pending),
                "{finding:?}"
            );
        }
        let dns = the(&findings, DNS_BLOCKED);
        assert_eq!(
            dns.request[0].destinations,
            vec![ip(R1)],
            "pending resolvers are not requested"
        );
    }

    #[test]
    fn dns_blocked_says_ip_works_names_dont() {
        let mut r1 = dropped(Udp, R1, 53, 10);
        r1.names = Some(vec!["chat.example.com".into()]);
        let findings = run(vec![
            r1,
            dropped(Udp, R2, 53, 4),
            ok(Tcp, HOST, 443, 20),
            ok(Tcp, HOST, 22, 1),
        ]);
        let dns = the(&findings, DNS_BLOCKED);
        assert_eq!(
            dns.summary,
            "DNS is blocked upstream: 14 queries to 198.51.100.53, 198.51.100.54 got no answer \
             (lookups of chat.example.com fail), while traffic to IP addresses works (tcp/22, \
             tcp/443 ok): IP works, names don't."
        );
        assert_eq!(dns.evidence.len(), 2);
        assert_eq!(dns.evidence[0].remote, ip(R1));
    }

    #[test]
    fn dns_blocked_names_the_rejection_and_mixed_failures() {
        let findings = run(vec![
            refused(Udp, R1, 53, 1, "icmp-admin-prohibited"),
            dropped(Udp, R2, 53, 6),
            ok(Icmp, HOST, 0, 2),
        ]);
        assert_eq!(
            the(&findings, DNS_BLOCKED).summary,
            "DNS is blocked upstream: 6 queries to 198.51.100.54 got no answer and 1 query to \
             198.51.100.53 was rejected (icmp-admin-prohibited), while traffic to IP addresses \
             works (icmp ok): IP works, names don't."
        );
    }

    #[test]
    fn dns_blocked_when_nothing_else_works_says_the_uplink_may_be_down() {
        let findings = run(vec![dropped(Udp, R1, 53, 2), dropped(Tcp, HOST, 443, 5)]);
        let summary = the(&findings, DNS_BLOCKED).summary;
        assert!(
            summary.contains("no other traffic is answered either"),
            "{summary}"
        );
        assert!(!summary.contains("names don't"), "{summary}");
        let only_dns = run(vec![dropped(Udp, R1, 53, 2)]);
        assert_eq!(
            the(&only_dns, DNS_BLOCKED).summary,
            "DNS is blocked upstream: 2 queries to 198.51.100.53 got no answer."
        );
    }

    #[test]
    fn dns_requests_cover_udp_and_tcp_per_family_sorted_and_deduplicated() {
        let findings = run(vec![
            dropped(Udp, R2, 53, 1),
            dropped(Tcp, R2, 53, 1),
            refused(Udp, R1, 53, 1, "icmp-port-unreachable"),
            dropped(Udp, R6, 53, 1),
            ok(Tcp, HOST, 443, 1),
        ]);
        let dns = the(&findings, DNS_BLOCKED);
        assert_eq!(
            dns.request,
            vec![
                request(SOURCE_V4, &[R1, R2], Udp, Some(53)),
                request(SOURCE_V4, &[R1, R2], Tcp, Some(53)),
                request(SOURCE_V6, &[R6], Udp, Some(53)),
                request(SOURCE_V6, &[R6], Tcp, Some(53)),
            ]
        );
    }

    #[test]
    fn sources_fall_back_to_the_unspecified_address_of_the_family() {
        let snapshot = snap(vec![dropped(Udp, R1, 53, 1), dropped(Udp, R6, 53, 1)]);
        let v4_only = diagnose(&snapshot, &[ip(SOURCE_V4)]);
        let sources: Vec<IpAddr> = v4_only[0].request.iter().map(|r| r.source).collect();
        assert_eq!(
            sources,
            vec![ip(SOURCE_V4), ip(SOURCE_V4), ip("::"), ip("::")]
        );
        let v6_first = diagnose(&snapshot, &[ip(SOURCE_V6), ip("2001:db8:1::8")]);
        let sources: Vec<IpAddr> = v6_first[0].request.iter().map(|r| r.source).collect();
        assert_eq!(
            sources,
            vec![ip("0.0.0.0"), ip("0.0.0.0"), ip(SOURCE_V6), ip(SOURCE_V6)]
        );
        for request in v6_first[0].request.iter().chain(&v4_only[0].request) {
            assert_eq!(request.source.is_ipv4(), request.destinations[0].is_ipv4());
        }
    }

    #[test]
    fn dns_blocked_does_not_fire_when_one_resolver_works() {
        let findings = run(vec![
            dropped(Udp, R1, 53, 3),
            ok(Udp, R2, 53, 7),
            ok(Tcp, HOST, 443, 1),
        ]);
        assert!(!ids(&findings).contains(&DNS_BLOCKED));
        let partial = the(&findings, RESOLVER_PARTIALLY_BLOCKED);
        assert_eq!(
            partial.summary,
            "Some DNS resolvers are blocked upstream: resolver 198.51.100.54 answers, but 3 \
             queries to 198.51.100.53 got no answer; lookups stall or fail whenever the blocked \
             resolver is tried."
        );
        assert_eq!(
            partial.request,
            vec![
                request(SOURCE_V4, &[R1], Udp, Some(53)),
                request(SOURCE_V4, &[R1], Tcp, Some(53)),
            ],
            "only the blocked resolver is requested"
        );
        assert!(
            partial
                .evidence
                .iter()
                .any(|t| t.remote == ip(R1) && t.verdict == Verdict::Blackholed)
        );
    }

    #[test]
    fn dns_over_tcp_dropped_while_udp_answers() {
        let findings = run(vec![
            ok(Udp, R1, 53, 7),
            dropped(Tcp, R1, 53, 2),
            ok(Udp, R2, 53, 1),
        ]);
        assert_eq!(ids(&findings), vec![DNS_TRANSPORT_BLOCKED]);
        let finding = &findings[0];
        assert_eq!(
            finding.summary,
            "DNS over tcp/53 to 198.51.100.53 is silently dropped while udp/53 answers: answers \
             too large for UDP (truncated: DNSSEC, long record sets) will fail."
        );
        assert_eq!(
            finding.request,
            vec![request(SOURCE_V4, &[R1], Tcp, Some(53))]
        );
        assert_eq!(
            finding.evidence.len(),
            2,
            "the dropped tcp/53 and the working udp/53"
        );
        let udp = run(vec![
            refused(Udp, R1, 53, 2, "icmp-port-unreachable"),
            ok(Tcp, R1, 53, 1),
        ]);
        assert!(udp[0].summary.starts_with(
            "DNS over udp/53 to 198.51.100.53 is rejected (icmp-port-unreachable) while tcp/53 \
             answers"
        ));
        assert_eq!(
            udp[0].request,
            vec![request(SOURCE_V4, &[R1], Udp, Some(53))]
        );
    }

    #[test]
    fn port_blackholed_one_finding_per_proto_and_port_across_remotes() {
        let findings = run(vec![
            dropped(Tcp, "198.51.100.12", 5432, 2),
            dropped(Tcp, HOST, 5432, 3),
            dropped(Tcp, HOST6, 5432, 1),
            dropped(Tcp, HOST, 6379, 1),
            ok(Tcp, HOST, 443, 1),
            dropped(Tcp, R1, 53, 1), // DNS: not a port finding
        ]);
        let ports: Vec<&Finding> = findings
            .iter()
            .filter(|f| f.finding == PORT_BLACKHOLED)
            .collect();
        assert_eq!(ports.len(), 2);
        assert_eq!(
            ports[0].summary,
            "tcp/5432 to 198.51.100.10, 198.51.100.12, 2001:db8::10 is silently dropped (6 \
             connection attempts, no answer, no rejection)."
        );
        assert_eq!(
            ports[0].request,
            vec![
                request(SOURCE_V4, &[HOST, "198.51.100.12"], Tcp, Some(5432)),
                request(SOURCE_V6, &[HOST6], Tcp, Some(5432)),
            ]
        );
        assert_eq!(
            ports[1].summary,
            "tcp/6379 to 198.51.100.10 is silently dropped (1 connection attempt, no answer, no \
             rejection)."
        );
        assert!(
            findings
                .iter()
                .all(|f| f.evidence.iter().all(|t| t.port != Some(53))
                    || f.finding.starts_with("dns"))
        );
    }

    #[test]
    fn port_rejected_one_finding_per_reason_with_what_it_means() {
        let findings = run(vec![
            refused(Tcp, HOST, 8443, 3, "icmp-host-prohibited"),
            refused(Tcp, HOST6, 8443, 1, "icmp6-adm-prohibited"),
            refused(Tcp, HOST, 9000, 1, "tcp-reset"),
            refused(Tcp, "198.51.100.12", 8443, 2, "icmp-host-prohibited"),
        ]);
        assert_eq!(ids(&findings), vec![PORT_REJECTED; 3]);
        assert_eq!(
            findings[0].summary,
            "tcp/8443 to 198.51.100.10, 198.51.100.12 is rejected with icmp-host-prohibited (5 \
             connection attempts rejected): a firewall rule rejects it."
        );
        assert_eq!(
            findings[0].request,
            vec![request(
                SOURCE_V4,
                &[HOST, "198.51.100.12"],
                Tcp,
                Some(8443)
            )]
        );
        assert!(findings[1].summary.contains("icmp6-adm-prohibited"));
        assert!(findings[1].summary.ends_with("a firewall rule rejects it."));
        assert_eq!(
            findings[1].request,
            vec![request(SOURCE_V6, &[HOST6], Tcp, Some(8443))]
        );
        assert_eq!(
            findings[2].summary,
            "tcp/9000 to 198.51.100.10 is refused with tcp-reset (1 connection attempt rejected): \
             a firewall or the host itself refuses it (nothing listens there, or a rule resets \
             it); if it is the host, a firewall change will not help."
        );
        assert_eq!(
            findings[2].request,
            vec![request(SOURCE_V4, &[HOST], Tcp, Some(9000))]
        );
    }

    #[test]
    fn reject_meanings() {
        let cases = [
            (
                Tcp,
                Some("icmp-admin-prohibited"),
                "a firewall rule rejects it",
            ),
            (
                Tcp,
                Some("icmp-net-prohibited"),
                "a firewall rule rejects it",
            ),
            (Tcp, Some("icmp6-policy-fail"), "a firewall rule rejects it"),
            (
                Tcp,
                Some("icmp-port-unreachable"),
                "default of iptables' REJECT",
            ),
            (
                Udp,
                Some("icmp-port-unreachable"),
                "nothing listens on that port",
            ),
            (
                Udp,
                Some("icmp6-port-unreachable"),
                "a firewall change will not help",
            ),
            (
                Tcp,
                Some("icmp-host-unreachable"),
                "a router cannot reach it",
            ),
            (Tcp, Some("icmp6-no-route"), "a router cannot reach it"),
            (
                Tcp,
                Some("icmp-proto-unreachable"),
                "does not handle that protocol",
            ),
            (
                Tcp,
                Some("icmp-unreachable-other"),
                "something on the path refuses it",
            ),
            (Tcp, None, "something on the path refuses it"),
        ];
        for (proto, reason, expected) in cases {
            assert!(
                reject_meaning(proto, reason).contains(expected),
                "{reason:?}"
            );
        }
    }

    #[test]
    fn icmp_filtered_when_the_host_answers_other_traffic() {
        let findings = run(vec![dropped(Icmp, HOST, 0, 4), ok(Tcp, HOST, 443, 3)]);
        let icmp = the(&findings, ICMP_FILTERED);
        assert_eq!(
            icmp.summary,
            "ping fails but 198.51.100.10 answers on tcp/443: ICMP echo is filtered, the host is \
             not down (4 echo requests unanswered)."
        );
        assert_eq!(icmp.request, vec![request(SOURCE_V4, &[HOST], Icmp, None)]);
        let evidence: Vec<Proto> = icmp.evidence.iter().map(|t| t.proto).collect();
        assert_eq!(
            evidence,
            vec![Tcp, Icmp],
            "the failing ping and the proof the host is up"
        );
    }

    #[test]
    fn icmp_filtered_without_other_working_traffic_does_not_call_the_host_down() {
        let findings = run(vec![
            refused(Icmpv6, HOST6, 0, 2, "icmp6-adm-prohibited"),
            dropped(Icmp, HOST, 0, 1),
            dropped(Tcp, HOST, 443, 1), // fails too: no proof the host is up
        ]);
        let icmp = the(&findings, ICMP_FILTERED);
        assert_eq!(
            icmp.summary,
            "ping to 198.51.100.10, 2001:db8::10 fails (1 echo request unanswered, 2 rejected \
             with icmp6-adm-prohibited) and nothing else to them was seen answered: a failing \
             ping alone does not mean the host is down, ICMP echo is often filtered."
        );
        assert_eq!(
            icmp.request,
            vec![
                request(SOURCE_V4, &[HOST], Icmp, None),
                request(SOURCE_V6, &[HOST6], Icmpv6, None),
            ]
        );
    }

    #[test]
    fn icmp_answering_or_degraded_is_not_filtered() {
        let findings = run(vec![
            degraded(Icmp, HOST, 0, 10, 1),
            ok(Icmpv6, HOST6, 0, 1),
        ]);
        assert_eq!(ids(&findings), vec![PARTIAL_LOSS]);
    }

    #[test]
    fn ipv6_broken_evidence_and_wording() {
        let findings = run(vec![
            dropped(Tcp, HOST6, 443, 3),
            refused(Icmpv6, HOST6, 0, 1, "icmp6-no-route"),
            ok(Tcp, HOST, 443, 3),
            ok(Udp, R1, 53, 3),
            pending(Tcp, "2001:db8::11", 443),
        ]);
        let v6 = the(&findings, IPV6_BROKEN);
        assert_eq!(
            v6.summary,
            "IPv6 is broken while IPv4 works: 2 IPv6 targets (tcp/443 to 2001:db8::10, icmpv6 to \
             2001:db8::10) fail and no IPv6 target answers, while 2 IPv4 targets are ok; programs \
             that try IPv6 first stall or fall back slowly."
        );
        assert_eq!(v6.evidence.len(), 2);
        assert!(v6.evidence.iter().all(|t| t.remote.is_ipv6()));
        assert!(v6.request.is_empty());
    }

    #[test]
    fn partial_loss_gives_the_numbers_and_asks_for_nothing() {
        let mut rejected = degraded(Tcp, "198.51.100.11", 443, 10, 0);
        (rejected.answered, rejected.rejected, rejected.reason) = (8, 2, Some("tcp-reset"));
        let mut both = degraded(Udp, R1, 53, 10, 1);
        (both.answered, both.rejected, both.reason) = (7, 2, Some("icmp-port-unreachable"));
        let findings = run(vec![degraded(Tcp, HOST, 443, 20, 3), rejected, both]);
        assert_eq!(ids(&findings), vec![PARTIAL_LOSS; 3]);
        let summaries: Vec<&str> = findings.iter().map(|f| f.summary.as_str()).collect();
        assert_eq!(
            summaries,
            vec![
                "tcp/443 to 198.51.100.10 works only part of the time: 3 of 20 requests \
                 unanswered, 17 answered (intermittent loss, a rate limit or an overloaded path).",
                "tcp/443 to 198.51.100.11 works only part of the time: 2 of 10 requests rejected \
                 (tcp-reset), 8 answered (intermittent loss, a rate limit or an overloaded path).",
                "udp/53 to 198.51.100.53 works only part of the time: 1 of 10 requests unanswered \
                 and 2 rejected (icmp-port-unreachable), 7 answered (intermittent loss, a rate \
                 limit or an overloaded path).",
            ]
        );
        assert!(
            findings
                .iter()
                .all(|f| f.request.is_empty() && f.evidence.len() == 1)
        );
    }

    #[test]
    fn long_lists_are_cut_and_odd_names_stay_ascii() {
        let mut targets: Vec<TargetView> = (1..=7)
            .map(|i| dropped(Tcp, &format!("198.51.100.{i}"), 5432, 1))
            .collect();
        let mut dns = dropped(Udp, R1, 53, 1);
        dns.names = Some(vec![
            "caf\u{e9}.example\nnext".into(),
            "b.example".into(),
            "c.example".into(),
        ]);
        targets.push(dns);
        let findings = run(targets);
        let port = the(&findings, PORT_BLACKHOLED);
        assert!(
            port.summary.starts_with(
                "tcp/5432 to 198.51.100.1, 198.51.100.2, 198.51.100.3, 198.51.100.4, 198.51.100.5 \
                 and 2 more is silently dropped (7 connection attempts"
            ),
            "{}",
            port.summary
        );
        assert_eq!(
            port.request[0].destinations.len(),
            7,
            "the request lists every remote"
        );
        let dns = the(&findings, DNS_BLOCKED);
        assert!(
            dns.summary
                .contains("lookups of b.example, c.example and 1 more fail"),
            "{}",
            dns.summary
        );
        let mut odd = dropped(Udp, R1, 53, 1);
        odd.names = Some(vec!["caf\u{e9}.example\nnext".into()]);
        let odd = run(vec![odd]);
        assert!(
            odd[0].summary.contains("lookups of caf?.example?next fail"),
            "{}",
            odd[0].summary
        );
    }

    #[test]
    fn findings_serialize_with_target_records_as_evidence() {
        let mut target = dropped(Udp, R1, 53, 14);
        target.retransmits = 2;
        let findings = run(vec![target, ok(Icmp, HOST, 0, 1)]);
        let value = serde_json::to_value(&findings[0]).unwrap();
        assert_eq!(value["finding"], "dns-blocked");
        assert!(
            value["summary"]
                .as_str()
                .unwrap()
                .starts_with("DNS is blocked upstream")
        );
        let evidence = &value["evidence"][0];
        assert_eq!(evidence["direction"], "egress");
        assert_eq!(evidence["proto"], "udp");
        assert_eq!(evidence["remote"], R1);
        assert_eq!(evidence["port"], 53);
        assert_eq!(evidence["requests"], 14);
        assert_eq!(evidence["unanswered"], 14);
        assert_eq!(evidence["retransmits"], 2);
        assert_eq!(evidence["verdict"], "blackholed");
        assert_eq!(evidence["reason"], Value::Null);
        assert_eq!(
            value["request"],
            json!([
                {"source": SOURCE_V4, "destinations": [R1], "proto": "udp", "port": 53,
                 "direction": "outbound", "action": "allow"},
                {"source": SOURCE_V4, "destinations": [R1], "proto": "tcp", "port": 53,
                 "direction": "outbound", "action": "allow"},
            ])
        );
        let icmp = run(vec![dropped(Icmpv6, HOST6, 0, 1)]);
        let value = serde_json::to_value(&icmp[0]).unwrap();
        assert_eq!(value["request"][0]["proto"], "icmpv6");
        assert_eq!(value["request"][0]["port"], Value::Null);
        assert_eq!(value["request"][0]["source"], SOURCE_V6);
        assert_eq!(value["evidence"][0]["port"], Value::Null);
        let partial = run(vec![degraded(Tcp, HOST, 443, 4, 1)]);
        assert_eq!(
            serde_json::to_value(&partial[0]).unwrap()["request"],
            json!([])
        );
    }

    #[test]
    fn key_ignores_counters_but_not_verdicts_or_targets() {
        let before = run(vec![dropped(Udp, R1, 53, 3), ok(Tcp, HOST, 443, 5)]);
        let mut busier = dropped(Udp, R1, 53, 30);
        busier.retransmits = 7;
        busier.last_seen_ago_s = Some(0.5);
        let after = run(vec![busier, ok(Tcp, HOST, 443, 50)]);
        assert_ne!(before, after, "the counters differ");
        assert_eq!(before[0].key(), after[0].key());
        assert_eq!(
            before[0].key(),
            FindingKey {
                finding: DNS_BLOCKED,
                targets: vec![(Udp, ip(R1), Some(53), Verdict::Blackholed)],
            }
        );
        let rejected = run(vec![refused(Udp, R1, 53, 3, "icmp-port-unreachable")]);
        assert_ne!(
            before[0].key(),
            rejected[0].key(),
            "a verdict change is a change"
        );
        let more = run(vec![dropped(Udp, R1, 53, 3), dropped(Udp, R2, 53, 1)]);
        assert_ne!(before[0].key(), more[0].key(), "a new resolver is a change");
        let partial = run(vec![dropped(Udp, R1, 53, 3), ok(Udp, R2, 53, 1)]);
        assert_ne!(before[0].key().finding, partial[0].key().finding);
    }

    #[test]
    fn render_requests_is_one_aligned_row_per_rule() {
        let findings = run(vec![
            dropped(Udp, R2, 53, 1),
            dropped(Udp, R1, 53, 1),
            dropped(Tcp, HOST, 5432, 1),
            refused(Tcp, "198.51.100.12", 5432, 1, "icmp-host-prohibited"),
            dropped(Icmpv6, HOST6, 0, 1),
            degraded(Tcp, HOST, 443, 10, 1),
        ]);
        assert_eq!(
            render_requests(&findings),
            "\
SOURCE         DESTINATIONS                 PROTO   PORT  DIRECTION  ACTION
192.0.2.7      198.51.100.53,198.51.100.54  udp     53    outbound   allow
192.0.2.7      198.51.100.53,198.51.100.54  tcp     53    outbound   allow
192.0.2.7      198.51.100.10,198.51.100.12  tcp     5432  outbound   allow
2001:db8:1::7  2001:db8::10                 icmpv6  -     outbound   allow
"
        );
    }

    #[test]
    fn render_requests_is_empty_when_there_is_nothing_to_ask() {
        assert_eq!(render_requests(&[]), "");
        assert_eq!(
            render_requests(&run(vec![degraded(Tcp, HOST, 443, 10, 1)])),
            ""
        );
    }
}

//! Diagnosis: the targets table turned into findings in plain language, each with the
//! targets it rests on and, for blocked traffic, the firewall change to ask for. Pure: no
//! I/O, no clock; the same snapshot always gives the same findings in the same order.
//!
//! Requests this host sent (`egress` targets) are the evidence of every finding but the
//! `inbound-*` ones, and only they: the requests written are outbound rules, and a request
//! this host received and left unanswered says nothing about the path out. Requests this
//! host received (`ingress` targets: `remote` is the peer that asked, `port` this host's port
//! asked for) are the evidence of the `inbound-*` findings only, which speak of "inbound to
//! this host" and never ask the upstream firewall team for anything: netwatch saw those
//! requests arrive, so whatever stopped them or their answer is on this host. Where a rule
//! on this host would let them in, the finding carries it in [`Finding::local_rules`].
//!
//! Pending targets are ignored everywhere, and so are provisional ones (blackholed for less
//! than one `--timeout`: a late answer may still end the silence). DNS targets are `udp/53`
//! and `tcp/53`; a *resolver* is a remote with DNS targets. A target *answers* when its
//! verdict is `ok` or `degraded`, and *fails* when it is `blackholed` or `rejected`. A target
//! is *slow* when it is `degraded` with reason `late`: its answers come, after `--timeout`. A
//! slow target answers and never fails, so it feeds no blocked finding and no
//! `partial-loss`: only `slow-answers`.
//!
//! Every finding states only what its evidence shows. A firewall request is written only
//! for failures that point at a firewall: requests that go unanswered, and rejections whose
//! kind a firewall sends (`*-prohibited`, `icmp6-policy-fail`, `icmp6-reject-route`, and
//! port-unreachable for TCP, where a host with nothing listening would reset). A TCP reset,
//! a UDP port-unreachable, routing errors (net/host unreachable, no route) and
//! protocol-unreachable are as often the remote host or a router as a firewall: the finding
//! says so and asks for nothing.
//!
//! Findings, most important first (the order [`diagnose`] returns them in):
//!
//! | ID | fires when | request |
//! | --- | --- | --- |
//! | `dns-blocked` | resolvers were seen and none answers: every DNS target fails | udp/53 and tcp/53 to every resolver with a failure pointing at a firewall |
//! | `resolver-partially-blocked` | some resolvers answer, others have only failing DNS targets | udp/53 and tcp/53 to the blocked resolvers with a failure pointing at a firewall |
//! | `dns-transport-blocked` | a resolver that answers over one of udp/53, tcp/53 fails over the other (typically tcp/53 dropped: large answers fail) | that proto/53 to those resolvers whose failure points at a firewall |
//! | `port-blackholed` | a non-DNS TCP/UDP target is blackholed; one per (proto, port) | that proto/port to those remotes |
//! | `port-rejected` | a non-DNS TCP/UDP target is rejected; one per (proto, port, reason) | that proto/port to those remotes, when the reason points at a firewall |
//! | `icmp-filtered` | ICMP/ICMPv6 echo targets fail; one finding for the remotes that answer other traffic on a TCP/UDP port (the host is up), then one for the rest | icmp/icmpv6 to those remotes whose failure points at a firewall |
//! | `inbound-blackholed` | an inbound target is blackholed: requests from peers to this host's proto/port (or pings to it) got nothing back, nothing left this host; one per (proto, port) | none; local rule: accept them from those peers in this host's input chain |
//! | `inbound-rejected` | an inbound target is rejected: this host refused them; one per (proto, port, reason) | none; local rule: as above, unless a TCP reset or a UDP port-unreachable says nothing may listen there |
//! | `path-mtu-blackhole` | TCP targets (either direction) degraded for `path-mtu`: connections open, then segments above a size die and no ICMP says why | upstream: ICMP type 3 code 4 and `ICMPv6` type 2 to this host (`direction` `inbound`, `icmp_type`); dropped by this host's input chain: none, local rules accept them |
//! | `dns-fragments-lost` | DNS answers arrived in fragments and never reassembled (the kernel reported it) | none (an EDNS buffer of 1232 bytes, or letting fragments through) |
//! | `ipv6-broken` | an IPv6 target fails while an IPv4 target of the same service (proto, port; icmpv6 pairs with icmp) is ok, and no IPv6 target answers | none |
//! | `slow-answers` | targets are slow (`degraded`, reason `late`); one finding for all of them, with their latency and a `--timeout` long enough for them (the slowest p99 times 1.5, at least twice the timeout, in whole seconds) | none |
//! | `partial-loss` | a target is degraded, not slow; one per target | none |
//!
//! Targets failing because of this host's own drops (a `here:` reason) are left out of the
//! findings above: [`local`] lists them first, as `local-firewall-drops`, with the rule to add
//! on this host, and says when blackholed targets had nothing dropped here.
//!
//! Within an ID, findings are ordered by what they are about (proto, port, address,
//! reason), never by counters, so the order is stable from one poll to the next;
//! `port-blackholed` and `port-rejected` share a rank and are ordered by (proto, port),
//! blackholed before rejected, and so do `inbound-blackholed` and `inbound-rejected`.
//! Evidence is sorted by (proto, port, remote).
//!
//! Inbound findings name no upstream firewall: an inbound request was seen arriving on a
//! watched interface, so nothing before this host dropped it, and an answer would have been
//! seen leaving. Blackholed, nothing was sent back: this host's input chain dropped the
//! request (a default-drop policy without a rule for that port), its output chain dropped
//! the answer, reverse-path filtering dropped the request, or the answer left by an
//! interface netwatch does not watch. Rejected, this host refused: a TCP reset means nothing
//! listens there or a rule resets it, a UDP port-unreachable that nothing listens there (or
//! iptables' default REJECT), any other ICMP error a reject rule on this host (the kernel
//! sends none of those on its own for a request to its own address). The local rule, in
//! nft and iptables syntax, admits exactly the peers seen (widen it for a public service);
//! it is inserted at the top of the input chain, so that it comes before a final drop or
//! reject rule.
//!
//! Summaries are one line of printable ASCII. Counts in them are the targets' counters
//! (totals since the target was first seen), while verdicts are judged over the window:
//! [`Finding::key`] leaves the counts out so that a finding only "changes" when what it is
//! about does. A late answer's request was first counted unanswered (at its timeout): the
//! requests "never answered" are `unanswered - late`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::{self, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use serde::Serialize;

mod dns;
mod icmp;
mod inbound;
mod local;
mod path;
mod ports;
mod quality;
#[cfg(test)]
mod tests;

use self::{
    dns::dns_findings,
    icmp::{dropped_and_refused, icmp_findings},
    inbound::inbound_findings,
    ports::{at_firewall, blames_firewall, port_findings},
    quality::{ipv6_finding, is_provisional, partial_loss_findings, slow_answers_finding},
};
pub(crate) use inbound::render_local_rules;

use crate::{
    services,
    snapshot::{Snapshot, TargetView},
    target::{Direction, Proto},
    verdict::{LATE, Verdict},
};

pub(crate) const DNS_BLOCKED: &str = "dns-blocked";
pub(crate) const RESOLVER_PARTIALLY_BLOCKED: &str = "resolver-partially-blocked";
pub(crate) const DNS_TRANSPORT_BLOCKED: &str = "dns-transport-blocked";
pub(crate) const PORT_BLACKHOLED: &str = "port-blackholed";
pub(crate) const PORT_REJECTED: &str = "port-rejected";
pub(crate) const ICMP_FILTERED: &str = "icmp-filtered";
pub(crate) const IPV6_BROKEN: &str = "ipv6-broken";
pub(crate) const SLOW_ANSWERS: &str = "slow-answers";
pub(crate) const PARTIAL_LOSS: &str = "partial-loss";
pub(crate) const INBOUND_BLACKHOLED: &str = "inbound-blackholed";
pub(crate) const INBOUND_REJECTED: &str = "inbound-rejected";

/// `direction` of every request: the requests this host sends.
pub(crate) const OUTBOUND: &str = "outbound";
/// `action` of every request.
pub(crate) const ALLOW: &str = "allow";
/// `chain` of a [`LocalRule`] for requests this host receives.
pub(crate) const INPUT: &str = "input";

const DNS_PORT: u16 = 53;
/// Addresses or services listed in a summary before "and N more".
const MAX_LISTED: usize = 5;
/// DNS names listed in a summary (up to 255 characters each) before "and N more".
const MAX_NAMES: usize = 2;
/// The longest `--timeout` netwatch accepts, in seconds: `slow-answers` suggests no more.
const MAX_TIMEOUT_S: u32 = 3600;

/// One thing wrong with the path, in plain language.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[expect(
    clippy::struct_field_names,
    reason = "`finding` is the records' field name (`\"finding\": \"dns-blocked\"`)"
)]
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
    /// Rules for this host's own firewall (not the upstream one); empty when none would help.
    pub local_rules: Vec<LocalRule>,
}

/// One rule to add to this host's own firewall, in both syntaxes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LocalRule {
    /// The chain it goes in: [`INPUT`].
    pub chain: &'static str,
    /// `nft insert rule inet filter input ...`: the table of the stock nftables
    /// configuration (`/etc/nftables.conf`); use your own table's name.
    pub nft: String,
    /// `iptables -I INPUT ...` (`ip6tables` for IPv6).
    pub iptables: String,
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
    /// [`OUTBOUND`] for the requests this host sends; `inbound` for ICMP that must reach it
    /// (path-MTU signals).
    pub direction: &'static str,
    /// Always [`ALLOW`].
    pub action: &'static str,
    /// ICMP: the message type to let through (`fragmentation-needed`, `packet-too-big`);
    /// left out of the JSON for the others (echo, as the target says).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<&'static str>,
    /// The processes whose requests need this rule (`curl (payments.service)`), from the
    /// evidence. Left out of the JSON when unknown.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub needed_by: Vec<String>,
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
        let mut request = request;
        for rule in &mut request {
            rule.needed_by = senders(evidence.iter().filter(|t| {
                t.proto == rule.proto
                    && t.port == rule.port
                    && rule.destinations.contains(&t.remote)
            }));
        }
        let mut summary = summary;
        let sent_by = senders(evidence.iter());
        if !sent_by.is_empty() {
            let _ = write!(summary, " Sent by {}.", list(&sent_by));
        }
        Self {
            finding,
            summary: one_line(summary),
            evidence,
            request,
            local_rules: Vec::new(),
        }
    }
}

/// The findings on `snapshot`, most important first. `sources` are this host's addresses
/// on the watched interfaces (global ones first): the first of each family is the
/// `source` of the requests to that family. `timeout` is the run's `--timeout`.
#[must_use]
pub(crate) fn diagnose(snapshot: &Snapshot, sources: &[IpAddr], timeout: Duration) -> Vec<Finding> {
    let judged_in = |direction: Direction| {
        let mut judged: Vec<&TargetView> = snapshot
            .targets
            .iter()
            .filter(|t| {
                t.direction == direction && t.verdict != Verdict::Pending && !is_provisional(t)
            })
            .collect();
        judged.sort_by_key(|t| identity(t));
        judged
    };
    let mut judged = judged_in(Direction::Egress);
    let inbound = judged_in(Direction::Ingress);
    let mut findings = Vec::new();
    // Drops on this host are for this host's rules, not the upstream firewall team's.
    local::local_drop_findings(
        &judged,
        (snapshot.local_drops_watched, snapshot.rules_traced),
        &mut findings,
    );
    judged.retain(|t| !local::dropped_here(t));
    // What dies by size (after the handshake, or in fragments) is neither blocked nor lost
    // at random.
    let both: Vec<&TargetView> = judged.iter().chain(&inbound).copied().collect();
    path::path_findings(&both, sources, &mut findings);
    judged.retain(|t| !path::stalls_for_mtu(t) && !path::loses_fragments(t));
    dns_findings(&judged, sources, &mut findings);
    port_findings(&judged, sources, &mut findings);
    icmp_findings(&judged, sources, &mut findings);
    inbound_findings(&inbound, &mut findings);
    ipv6_finding(&judged, &mut findings);
    slow_answers_finding(&judged, timeout, &mut findings);
    partial_loss_findings(&judged, &mut findings);
    findings
}

/// The requests of `findings` as a plain text table, one row per rule: SOURCE,
/// DESTINATIONS (comma-separated), PROTO, PORT (`-` for ICMP), DIRECTION, ACTION. Requests
/// that differ only in their destinations (the same port asked for by two findings) are
/// merged into one row. Empty when there is nothing to ask for.
#[must_use]
pub(crate) fn render_requests(findings: &[Finding]) -> String {
    type RuleKey = (
        IpAddr,
        Proto,
        Option<&'static str>,
        Option<u16>,
        &'static str,
        &'static str,
    );
    let mut rules: Vec<(RuleKey, BTreeSet<IpAddr>)> = Vec::new();
    for request in findings.iter().flat_map(|f| &f.request) {
        let key = (
            request.source,
            request.proto,
            request.icmp_type,
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
    for ((source, proto, icmp_type, port, direction, action), destinations) in rules {
        let destinations: Vec<String> = destinations.iter().map(IpAddr::to_string).collect();
        let source = if source.is_unspecified() {
            "any".to_owned()
        } else {
            source.to_string()
        };
        rows.push([
            source,
            destinations.join(","),
            icmp_type.map_or_else(|| proto.as_str().to_owned(), |t| format!("{proto}/{t}")),
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

// --- helpers -----------------------------------------------------------------------------

fn identity(t: &TargetView) -> (Proto, Option<u16>, IpAddr, Direction) {
    (t.proto, t.port, t.remote, t.direction)
}

fn is_dns(t: &TargetView) -> bool {
    t.proto.has_ports() && t.port == Some(DNS_PORT)
}

/// Requests that never got an answer, not even a late one: a late answer's request was
/// counted unanswered at its timeout first.
fn never_answered(t: &TargetView) -> u64 {
    t.unanswered.saturating_sub(t.late)
}

/// Ok or degraded, slow targets included: their answers do arrive.
fn answers(t: &TargetView) -> bool {
    matches!(t.verdict, Verdict::Ok | Verdict::Degraded)
}

/// Blackholed or rejected: never a slow target (it is degraded).
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

/// `udp/123 (ntp)`: [`service`] with the name of a well-known UDP service (DNS has
/// findings of its own, and stays `udp/53`).
fn named_service(t: &TargetView) -> String {
    match (t.proto, t.port.and_then(services::udp_name)) {
        (Proto::Udp, Some(name)) if !is_dns(t) => format!("{} ({name})", service(t)),
        _ => service(t),
    }
}

/// "; this host cannot sync its clock": what a failing UDP service means here, or "".
fn udp_consequence(proto: Proto, port: Option<u16>) -> String {
    match (proto, port.and_then(services::udp_consequence)) {
        (Proto::Udp, Some(consequence)) => format!("; {consequence}"),
        _ => String::new(),
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
        let n = dropped.iter().map(|t| never_answered(t)).sum();
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
                icmp_type: None,
                needed_by: Vec::new(),
            });
        }
    }
    out
}

/// The processes behind `targets`' requests, most recent first per target, deduplicated
/// (`curl (payments.service)`).
fn senders<'a>(targets: impl Iterator<Item = &'a TargetView>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for process in targets.flat_map(|t| &t.processes) {
        let name = crate::attribution::describe(process);
        if !out.contains(&name) {
            out.push(name);
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

/// Blackholed and rejected targets grouped by (proto, port, rejected, reason): blackholed
/// before rejected, rejections apart by reason. Other verdicts are left out.
#[expect(
    clippy::type_complexity,
    reason = "the grouping key, spelled where it is made"
)]
fn failing_by_service<'a>(
    targets: impl Iterator<Item = &'a TargetView>,
) -> BTreeMap<(Proto, Option<u16>, bool, Option<&'static str>), Vec<&'a TargetView>> {
    let mut groups: BTreeMap<_, Vec<&TargetView>> = BTreeMap::new();
    for target in targets {
        let key = match target.verdict {
            Verdict::Blackholed => (target.proto, target.port, false, None),
            Verdict::Rejected => (target.proto, target.port, true, target.reason),
            _ => continue,
        };
        groups.entry(key).or_default().push(target);
    }
    groups
}

/// How a rejection was made: "refused with tcp-reset", "rejected with icmp-…".
fn rejected_how(reason: Option<&str>) -> String {
    match reason {
        Some("tcp-reset") => "refused with tcp-reset".to_owned(),
        Some(reason) => format!("rejected with {reason}"),
        None => "rejected".to_owned(),
    }
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

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

mod local;
pub use local::{DROPPED_BEYOND_THIS_HOST, LOCAL_FIREWALL_DROPS};

use crate::{
    services,
    snapshot::{Snapshot, TargetView},
    target::{Direction, Proto},
    verdict::{LATE, Verdict},
};

pub const DNS_BLOCKED: &str = "dns-blocked";
pub const RESOLVER_PARTIALLY_BLOCKED: &str = "resolver-partially-blocked";
pub const DNS_TRANSPORT_BLOCKED: &str = "dns-transport-blocked";
pub const PORT_BLACKHOLED: &str = "port-blackholed";
pub const PORT_REJECTED: &str = "port-rejected";
pub const ICMP_FILTERED: &str = "icmp-filtered";
pub const IPV6_BROKEN: &str = "ipv6-broken";
pub const SLOW_ANSWERS: &str = "slow-answers";
pub const PARTIAL_LOSS: &str = "partial-loss";
pub const INBOUND_BLACKHOLED: &str = "inbound-blackholed";
pub const INBOUND_REJECTED: &str = "inbound-rejected";

/// `direction` of every request: the requests this host sends.
pub const OUTBOUND: &str = "outbound";
/// `action` of every request.
pub const ALLOW: &str = "allow";
/// `chain` of a [`LocalRule`] for requests this host receives.
pub const INPUT: &str = "input";

const DNS_PORT: u16 = 53;
/// Addresses or services listed in a summary before "and N more".
const MAX_LISTED: usize = 5;
/// DNS names listed in a summary (up to 255 characters each) before "and N more".
const MAX_NAMES: usize = 2;
/// The longest `--timeout` netwatch accepts, in seconds: `slow-answers` suggests no more.
const MAX_TIMEOUT_S: u32 = 3600;

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
    /// Always [`OUTBOUND`].
    pub direction: &'static str,
    /// Always [`ALLOW`].
    pub action: &'static str,
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
pub fn diagnose(snapshot: &Snapshot, sources: &[IpAddr], timeout: Duration) -> Vec<Finding> {
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
    let mut findings = Vec::new();
    // Drops on this host are for this host's rules, not the upstream firewall team's.
    local::local_drop_findings(&judged, snapshot.local_drops_watched, &mut findings);
    judged.retain(|t| !local::dropped_here(t));
    dns_findings(&judged, sources, &mut findings);
    port_findings(&judged, sources, &mut findings);
    icmp_findings(&judged, sources, &mut findings);
    inbound_findings(&judged_in(Direction::Ingress), &mut findings);
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
    // A slow resolver answers (late): it is working, never blocked.
    let (working, blocked): (Vec<IpAddr>, Vec<IpAddr>) = resolvers
        .keys()
        .partition(|r| resolvers[*r].iter().any(|t| answers(t)));

    if !blocked.is_empty() {
        let failing: Vec<&TargetView> = blocked
            .iter()
            .flat_map(|r| resolvers[r].iter().copied())
            .collect();
        // Ask only for the resolvers whose failures point at a firewall.
        let request = requests(
            sources,
            at_firewall(&failing).iter().map(|t| t.remote),
            &[Proto::Udp, Proto::Tcp],
            Some(DNS_PORT),
        );
        let firewall = failing.iter().any(|t| blames_firewall(t));
        if working.is_empty() {
            let summary = dns_blocked_summary(judged, &failing, firewall);
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
            let (headline, failed) = if firewall {
                ("Some DNS resolvers are blocked upstream", "blocked")
            } else {
                ("Some DNS resolvers refuse queries", "refusing")
            };
            let summary = format!(
                "{headline}: {noun} {} {verb}, but {}{}; lookups stall or fail whenever the \
                 {failed} {blocked_noun} {} tried.",
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

    // Resolvers that answer over one transport and fail over the other. DNS targets are
    // udp/53 and tcp/53 only, so on a working resolver the other transport answers.
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
                "clients ask over UDP first and most do not retry over TCP after a timeout, so \
                 lookups through it stall or fail",
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
        let request = requests(
            sources,
            at_firewall(&failing).iter().map(|t| t.remote),
            &[proto],
            Some(DNS_PORT),
        );
        findings.push(Finding::new(
            DNS_TRANSPORT_BLOCKED,
            summary,
            &evidence,
            request,
        ));
    }
}

/// `firewall`: whether any of the `failing` DNS targets points at a firewall; if none does,
/// the summary does not say "blocked".
fn dns_blocked_summary(judged: &[&TargetView], failing: &[&TargetView], firewall: bool) -> String {
    // Non-DNS traffic that is answered, at least in part: the path carries IP.
    let working: BTreeSet<String> = judged
        .iter()
        .filter(|t| !is_dns(t) && answers(t))
        .map(|t| service(t))
        .collect();
    let other = if !working.is_empty() {
        let working: Vec<String> = working.into_iter().collect();
        let working = list(&working);
        format!(", while traffic to IP addresses works ({working} answered): IP works, names don't")
    } else if judged.iter().any(|t| !is_dns(t)) {
        ", and no other traffic is answered either: the whole uplink may be down".to_owned()
    } else {
        String::new()
    };
    let headline = if firewall {
        "DNS is blocked upstream"
    } else {
        "Every DNS resolver refuses queries"
    };
    format!(
        "{headline}: {}{}{other}.",
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
        let service = named_service(targets[0]);
        let consequence = udp_consequence(proto, port);
        let request = requests(
            sources,
            at_firewall(&targets).iter().map(|t| t.remote),
            &[proto],
            port,
        );
        let finding = if rejected {
            let n = targets.iter().map(|t| t.rejected).sum();
            let how = match reason {
                Some("tcp-reset") => "refused with tcp-reset".to_owned(),
                Some(reason) => format!("rejected with {reason}"),
                None => "rejected".to_owned(),
            };
            let summary = format!(
                "{service} to {} is {how} ({} rejected): {}{consequence}.",
                list(&remotes),
                count(n, attempts.0, attempts.1),
                reject_meaning(proto, reason),
            );
            Finding::new(PORT_REJECTED, summary, &targets, request)
        } else {
            let n = targets.iter().map(|t| never_answered(t)).sum();
            let summary = format!(
                "{service} to {} is silently dropped ({}, no answer, no rejection){consequence}.",
                list(&remotes),
                count(n, attempts.0, attempts.1),
            );
            Finding::new(PORT_BLACKHOLED, summary, &targets, request)
        };
        findings.push(finding);
    }
}

/// Whether a rejection of that kind is what a firewall sends, rather than as often the remote
/// host (a TCP reset or UDP port-unreachable from a closed port), a router (no route) or a
/// host without that protocol. Only these, and unanswered requests, get a firewall request.
fn rejection_blames_firewall(proto: Proto, reason: Option<&str>) -> bool {
    match reason {
        Some("icmp-port-unreachable" | "icmp6-port-unreachable") => proto == Proto::Tcp,
        Some("icmp6-policy-fail" | "icmp6-reject-route") => true,
        Some(reason) => reason.ends_with("-prohibited"),
        None => false,
    }
}

/// Whether `t`'s failure points at a firewall: unanswered, or rejected the way a firewall
/// rejects (see [`rejection_blames_firewall`]).
fn blames_firewall(t: &TargetView) -> bool {
    match t.verdict {
        Verdict::Blackholed => true,
        Verdict::Rejected => rejection_blames_firewall(t.proto, t.reason),
        _ => false,
    }
}

/// The failing targets whose failure points at a firewall: those a request may name.
fn at_firewall<'a>(targets: &[&'a TargetView]) -> Vec<&'a TargetView> {
    targets
        .iter()
        .copied()
        .filter(|t| blames_firewall(t))
        .collect()
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
        let n = dropped.iter().map(|t| never_answered(t)).sum();
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
            .filter(|t| t.proto == proto && blames_firewall(t))
            .map(|t| t.remote)
            .collect();
        out.extend(requests(sources, remotes, &[proto], None));
    }
    out
}

// --- Inbound to this host ----------------------------------------------------------------

/// One finding per (proto, port) of inbound targets that are blackholed, then per reason of
/// those that are rejected; ICMP echo has no port. Degraded inbound targets (slow or not)
/// are no evidence here.
fn inbound_findings(inbound: &[&TargetView], findings: &mut Vec<Finding>) {
    /// (proto, port, rejected: blackholed first, reason).
    type Group = (Proto, Option<u16>, bool, Option<&'static str>);
    let mut groups: BTreeMap<Group, Vec<&TargetView>> = BTreeMap::new();
    for &target in inbound {
        let key = match target.verdict {
            Verdict::Blackholed => (target.proto, target.port, false, None),
            Verdict::Rejected => (target.proto, target.port, true, target.reason),
            _ => continue,
        };
        groups.entry(key).or_default().push(target);
    }
    for ((proto, port, rejected, reason), targets) in groups {
        let peers = remotes(&targets);
        let what = if proto.has_ports() {
            named_service(targets[0])
        } else {
            format!("ping ({proto} echo)")
        };
        let attempts = match proto {
            Proto::Tcp => ("connection attempt", "connection attempts"),
            Proto::Udp if port == Some(DNS_PORT) => ("query", "queries"),
            Proto::Udp => ("request", "requests"),
            Proto::Icmp | Proto::Icmpv6 => ("echo request", "echo requests"),
        };
        let mut finding = if rejected {
            let n = targets.iter().map(|t| t.rejected).sum();
            let how = match reason {
                Some("tcp-reset") => "refused with tcp-reset".to_owned(),
                Some(reason) => format!("rejected with {reason}"),
                None => "rejected".to_owned(),
            };
            let summary = format!(
                "Inbound to this host: {what} from {} is {how} ({}): {}.",
                list(&peers),
                count(n, attempts.0, attempts.1),
                inbound_reject_meaning(proto, port, reason),
            );
            Finding::new(INBOUND_REJECTED, summary, &targets, Vec::new())
        } else {
            let n = targets.iter().map(|t| never_answered(t)).sum();
            let why = match proto {
                Proto::Tcp | Proto::Udp => {
                    "this host's input chain drops them (or its output chain the answers, or \
                     reverse-path filtering), or the answers leave by an interface netwatch \
                     does not watch"
                }
                Proto::Icmp => {
                    "this host's input chain drops them (or its output chain the replies), or \
                     it ignores echo requests (net.ipv4.icmp_echo_ignore_all)"
                }
                Proto::Icmpv6 => {
                    "this host's input chain drops them (or its output chain the replies), or \
                     it ignores echo requests (net.ipv6.icmp.echo_ignore_all)"
                }
            };
            let summary = format!(
                "Inbound to this host: {what} from {} goes unanswered ({}, nothing left this \
                 host): {why}.",
                list(&peers),
                count(n, attempts.0, attempts.1),
            );
            Finding::new(INBOUND_BLACKHOLED, summary, &targets, Vec::new())
        };
        if !rejected || inbound_rejection_is_a_rule(proto, reason) {
            finding.local_rules = accept_rules(&peers, proto, port);
        }
        findings.push(finding);
    }
}

/// Whether a rejection this host sent for a request to its own address comes from a reject
/// rule, which an accept rule before it would get past. A TCP reset is as often no
/// listener; a UDP port-unreachable is the kernel's own answer when nothing listens.
fn inbound_rejection_is_a_rule(proto: Proto, reason: Option<&str>) -> bool {
    match reason {
        Some("tcp-reset") | None => false,
        Some("icmp-port-unreachable" | "icmp6-port-unreachable") => proto != Proto::Udp,
        Some(_) => true,
    }
}

/// What this host's rejection of an inbound request means.
fn inbound_reject_meaning(proto: Proto, port: Option<u16>, reason: Option<&str>) -> String {
    let service = match port {
        Some(port) => format!("{proto}/{port}"),
        None => proto.to_string(),
    };
    match reason {
        Some("tcp-reset") => format!(
            "nothing listens on {service} here, or a rule on this host resets them; if a \
             service should answer, check that it listens (ss -ltn)"
        ),
        Some("icmp-port-unreachable" | "icmp6-port-unreachable") if proto == Proto::Udp => {
            format!(
                "nothing listens on {service} here (ss -lun), or a rule on this host rejects \
                 them with iptables' default REJECT"
            )
        }
        Some("icmp-port-unreachable" | "icmp6-port-unreachable") if proto == Proto::Tcp => {
            "a reject rule in this host's input chain refuses them (port-unreachable is \
             iptables' default REJECT; with nothing listening the host would send a TCP reset)"
                .to_owned()
        }
        Some(_) => "a reject rule in this host's input chain refuses them".to_owned(),
        None => "this host refuses them".to_owned(),
    }
}

/// Accept rules for this host's input chain admitting `peers` (sorted) to `proto`/`port`:
/// one per family, IPv4 first, in nft and iptables syntax.
fn accept_rules(peers: &[IpAddr], proto: Proto, port: Option<u16>) -> Vec<LocalRule> {
    let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = peers.iter().partition(|p| p.is_ipv4());
    let mut rules = Vec::new();
    for family in [v4, v6] {
        if family.is_empty() {
            continue;
        }
        let v6 = family[0].is_ipv6();
        let addresses: Vec<String> = family.iter().map(IpAddr::to_string).collect();
        let saddr = if addresses.len() == 1 {
            addresses[0].clone()
        } else {
            format!("{{ {} }}", addresses.join(", "))
        };
        let (nft_match, ipt_match) = match (proto, port) {
            (Proto::Tcp | Proto::Udp, Some(port)) => (
                format!("{proto} dport {port}"),
                format!("-p {proto} --dport {port}"),
            ),
            (Proto::Tcp | Proto::Udp, None) => {
                (format!("meta l4proto {proto}"), format!("-p {proto}"))
            }
            (Proto::Icmp, _) => (
                "icmp type echo-request".to_owned(),
                "-p icmp --icmp-type echo-request".to_owned(),
            ),
            (Proto::Icmpv6, _) => (
                "icmpv6 type echo-request".to_owned(),
                "-p ipv6-icmp --icmpv6-type echo-request".to_owned(),
            ),
        };
        rules.push(LocalRule {
            chain: INPUT,
            nft: format!(
                "nft insert rule inet filter input {} saddr {saddr} {nft_match} accept",
                if v6 { "ip6" } else { "ip" },
            ),
            iptables: format!(
                "{} -I INPUT -s {} {ipt_match} -j ACCEPT",
                if v6 { "ip6tables" } else { "iptables" },
                addresses.join(","),
            ),
        });
    }
    rules
}

/// The local rules of `findings` as text: the nft rules, then the iptables ones, each under
/// a comment line, duplicates left out. Empty when there are none.
#[must_use]
pub fn render_local_rules(findings: &[Finding]) -> String {
    let rules: Vec<&LocalRule> = findings.iter().flat_map(|f| &f.local_rules).collect();
    if rules.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let mut seen = BTreeSet::new();
    out.push_str("# nftables (table inet filter: use your own table's name)\n");
    for rule in &rules {
        if seen.insert(&rule.nft) {
            let _ = writeln!(out, "{}", rule.nft);
        }
    }
    out.push_str("# iptables\n");
    for rule in &rules {
        if seen.insert(&rule.iptables) {
            let _ = writeln!(out, "{}", rule.iptables);
        }
    }
    out
}

// --- IPv6, slow answers, partial loss ----------------------------------------------------

/// The service of `t` with `icmpv6` spelled as `icmp`: what an IPv6 target and its IPv4
/// counterpart have in common.
fn family_free_service(t: &TargetView) -> (Proto, Option<u16>) {
    let proto = if t.proto == Proto::Icmpv6 {
        Proto::Icmp
    } else {
        t.proto
    };
    (proto, t.port)
}

/// IPv6 is only blamed where IPv4 shows the same service works: an IPv6 target that fails
/// exactly like its IPv4 counterpart (DNS blocked on both) says nothing about IPv6.
fn ipv6_finding(judged: &[&TargetView], findings: &mut Vec<Finding>) {
    if judged.iter().any(|t| t.remote.is_ipv6() && answers(t)) {
        return;
    }
    let v4_ok: Vec<&TargetView> = judged
        .iter()
        .copied()
        .filter(|t| t.remote.is_ipv4() && t.verdict == Verdict::Ok)
        .collect();
    let mut v6_failing: Vec<&TargetView> = Vec::new();
    let mut counterparts: Vec<&TargetView> = Vec::new();
    for &target in judged.iter().filter(|t| t.remote.is_ipv6() && fails(t)) {
        let service = family_free_service(target);
        let twins: Vec<&TargetView> = v4_ok
            .iter()
            .copied()
            .filter(|t| family_free_service(t) == service)
            .collect();
        if !twins.is_empty() {
            v6_failing.push(target);
            counterparts.extend(twins);
        }
    }
    if v6_failing.is_empty() {
        return;
    }
    // One IPv4 target can be the counterpart of several IPv6 ones.
    counterparts.sort_by_key(|t| identity(t));
    counterparts.dedup_by_key(|t| identity(t));
    let labels: Vec<String> = v6_failing.iter().map(|t| label(t)).collect();
    let services: BTreeSet<String> = counterparts.iter().map(|t| service(t)).collect();
    let services: Vec<String> = services.into_iter().collect();
    let v4_remotes = remotes(&counterparts);
    let summary = format!(
        "IPv6 is broken while IPv4 works: {} ({}) {} while the same {} over IPv4 ({} to {}) \
         {} ok, and no IPv6 target answers; programs that try IPv6 first stall or fall back \
         slowly.",
        count(v6_failing.len() as u64, "IPv6 target", "IPv6 targets"),
        list(&labels),
        if v6_failing.len() == 1 {
            "fails"
        } else {
            "fail"
        },
        if services.len() == 1 {
            "service"
        } else {
            "services"
        },
        list(&services),
        list(&v4_remotes),
        if counterparts.len() == 1 { "is" } else { "are" },
    );
    let mut evidence = v6_failing;
    evidence.extend(counterparts);
    findings.push(Finding::new(IPV6_BROKEN, summary, &evidence, Vec::new()));
}

/// Blackholed too recently to be evidence: a slow remote's late answer may still come.
fn is_provisional(t: &TargetView) -> bool {
    t.verdict == Verdict::Blackholed && t.provisional
}

/// Whether `t`'s failures are answers after the timeout: slow, not blocked.
fn is_slow(t: &TargetView) -> bool {
    t.verdict == Verdict::Degraded && t.reason == Some(LATE)
}

/// One finding for every slow target: their latency, and a `--timeout` that would have
/// waited for their answers. Late answers mixed with requests never answered stay one
/// slow-answers finding (the unanswered count is in it): with a longer timeout, what is
/// left shows as `partial-loss`.
fn slow_answers_finding(judged: &[&TargetView], timeout: Duration, findings: &mut Vec<Finding>) {
    let slow: Vec<&TargetView> = judged.iter().copied().filter(|t| is_slow(t)).collect();
    if slow.is_empty() {
        return;
    }
    let items: Vec<String> = slow
        .iter()
        .map(|t| match (t.latency_p50_ms, t.latency_p99_ms) {
            (Some(p50), Some(p99)) => format!(
                "{} (latency p50 {}, p99 {})",
                label(t),
                format_ms(p50),
                format_ms(p99)
            ),
            _ => label(t),
        })
        .collect();
    let late: u64 = slow.iter().map(|t| t.late).sum();
    let mut counts = vec![count(late, "late answer", "late answers")];
    let never: u64 = slow.iter().map(|t| never_answered(t)).sum();
    if never > 0 {
        counts.push(format!(
            "{} never answered",
            count(never, "request", "requests")
        ));
    }
    let rejected: u64 = slow.iter().map(|t| t.rejected).sum();
    if rejected > 0 {
        counts.push(format!("{rejected} rejected"));
    }
    let slowest_p99_ms = slow
        .iter()
        .filter_map(|t| t.latency_p99_ms)
        .fold(None, |max: Option<f64>, p99| {
            Some(max.map_or(p99, |m| m.max(p99)))
        });
    let summary = format!(
        "Answers from {} arrive after the {} timeout ({}): {} slow, not blocked; run with \
         --timeout {}s or more.",
        list(&items),
        humantime::format_duration(timeout),
        counts.join(", "),
        if slow.len() == 1 {
            "the target is"
        } else {
            "the targets are"
        },
        suggested_timeout_s(timeout, slowest_p99_ms),
    );
    findings.push(Finding::new(SLOW_ANSWERS, summary, &slow, Vec::new()));
}

/// A `--timeout` in whole seconds that waits for the slowest answers: 1.5 times the
/// slowest p99 (which includes the late answers), at least twice the current timeout (the
/// p99 can sit below it when few answers are late), at most netwatch's limit.
fn suggested_timeout_s(timeout: Duration, slowest_p99_ms: Option<f64>) -> u64 {
    let twice_s = timeout.as_secs_f64() * 2.0;
    let from_p99_s = slowest_p99_ms.map_or(0.0, |ms| ms * 1.5 / 1000.0);
    let seconds = twice_s.max(from_p99_s).ceil();
    if seconds.is_finite() && seconds < f64::from(MAX_TIMEOUT_S) {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a positive whole number below MAX_TIMEOUT_S"
        )]
        let seconds = seconds as u64;
        seconds.max(1)
    } else {
        u64::from(MAX_TIMEOUT_S)
    }
}

/// `850 ms`, `1.6 s`.
fn format_ms(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

fn partial_loss_findings(judged: &[&TargetView], findings: &mut Vec<Finding>) {
    // Slow targets have their own finding: late answers are not loss.
    for &target in judged
        .iter()
        .filter(|t| t.verdict == Verdict::Degraded && !is_slow(t))
    {
        let n = target.requests;
        let never = never_answered(target);
        let mut parts = Vec::new();
        if never > 0 || target.rejected == 0 {
            parts.push(format!(
                "{never} of {} unanswered",
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
        let late = if target.late > 0 {
            format!(" and {} more after the timeout", target.late)
        } else {
            String::new()
        };
        let summary = format!(
            "{} works only part of the time: {}, {} answered{late} (intermittent loss, a rate \
             limit or an overloaded path).",
            label(target),
            parts.join(" and "),
            target.answered,
        );
        findings.push(Finding::new(PARTIAL_LOSS, summary, &[target], Vec::new()));
    }
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
    const TIMEOUT: Duration = Duration::from_secs(1);

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

    /// `t` as a request this host received: `remote` is the peer, `port` this host's port.
    fn inbound(mut t: TargetView) -> TargetView {
        t.direction = Direction::Ingress;
        t
    }

    fn snap(targets: Vec<TargetView>) -> Snapshot {
        Snapshot {
            targets,
            ..Snapshot::default()
        }
    }

    fn run(targets: Vec<TargetView>) -> Vec<Finding> {
        diagnose(&snap(targets), &sources(), TIMEOUT)
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
            needed_by: Vec::new(),
        }
    }

    use Proto::{Icmp, Icmpv6, Tcp, Udp};

    const R1: &str = "198.51.100.53";
    const R2: &str = "198.51.100.54";
    const HOST: &str = "198.51.100.10";
    const HOST6: &str = "2001:db8::10";
    const R6: &str = "2001:db8::53";
    /// Peers asking this host.
    const PEER: &str = "203.0.113.9";
    const PEER2: &str = "203.0.113.10";
    const PEER6: &str = "2001:db8:2::9";

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
                "IPv6 fails exactly like its IPv4 counterpart",
                vec![
                    dropped(Udp, R6, 53, 3),
                    dropped(Udp, R1, 53, 3),
                    ok(Tcp, HOST, 443, 3),
                ],
                vec![DNS_BLOCKED],
            ),
            (
                "a degraded target",
                vec![degraded(Tcp, HOST, 443, 20, 3)],
                vec![PARTIAL_LOSS],
            ),
            (
                "a slow resolver is slow, not blocked",
                vec![
                    slow(Udp, R1, 53, 4, 4, 1600.0, 1700.0),
                    ok(Tcp, HOST, 443, 2),
                ],
                vec![SLOW_ANSWERS],
            ),
            (
                "inbound ssh dropped by this host",
                vec![inbound(dropped(Tcp, PEER, 22, 4)), ok(Tcp, HOST, 443, 3)],
                vec![INBOUND_BLACKHOLED],
            ),
            (
                "inbound to a port nothing listens on",
                vec![inbound(refused(Tcp, PEER, 8080, 2, "tcp-reset"))],
                vec![INBOUND_REJECTED],
            ),
            (
                "inbound ping dropped, inbound DNS refused",
                vec![
                    inbound(dropped(Icmp, PEER, 0, 3)),
                    inbound(refused(Udp, PEER, 53, 2, "icmp-port-unreachable")),
                ],
                vec![INBOUND_REJECTED, INBOUND_BLACKHOLED],
            ),
            (
                "inbound pending, provisional, slow or working: no finding",
                vec![
                    inbound(pending(Tcp, PEER, 22)),
                    inbound(ok(Tcp, PEER2, 22, 5)),
                    inbound(slow(Udp, PEER, 53, 4, 4, 1600.0, 1700.0)),
                    {
                        let mut fresh = inbound(dropped(Tcp, PEER, 443, 1));
                        fresh.provisional = true;
                        fresh
                    },
                ],
                vec![],
            ),
            (
                "inbound and outbound tcp/443 both dropped: one finding each",
                vec![
                    inbound(dropped(Tcp, PEER, 443, 2)),
                    dropped(Tcp, HOST, 443, 3),
                ],
                vec![PORT_BLACKHOLED, INBOUND_BLACKHOLED],
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
                    slow(Tcp, "198.51.100.12", 8080, 4, 4, 1100.0, 1200.0),
                    inbound(refused(Tcp, PEER, 25, 2, "icmp-admin-prohibited")),
                    inbound(dropped(Tcp, PEER6, 22, 5)),
                ],
                vec![
                    DNS_BLOCKED,
                    PORT_BLACKHOLED, // tcp/443 over IPv6
                    PORT_BLACKHOLED, // tcp/5432
                    PORT_REJECTED,   // tcp/8443
                    ICMP_FILTERED,
                    INBOUND_BLACKHOLED, // tcp/22 in
                    INBOUND_REJECTED,   // tcp/25 in
                    IPV6_BROKEN,
                    SLOW_ANSWERS,
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
    fn udp_services_are_named_and_ntp_says_the_clock_cannot_sync() {
        let findings = run(vec![
            dropped(Udp, R1, 123, 3),
            refused(Udp, R2, 51820, 2, "icmp-admin-prohibited"),
            dropped(Udp, R1, 40_000, 2),
        ]);
        let summary = |id: &str, port: &str| {
            findings
                .iter()
                .find(|f| f.finding == id && f.summary.contains(port))
                .unwrap_or_else(|| panic!("no {id} for {port}: {findings:?}"))
                .summary
                .clone()
        };
        let ntp = summary(PORT_BLACKHOLED, "udp/123");
        assert!(ntp.starts_with("udp/123 (ntp) to "), "{ntp}");
        assert!(ntp.ends_with("; this host cannot sync its clock."), "{ntp}");
        let wireguard = summary(PORT_REJECTED, "udp/51820");
        assert!(
            wireguard.starts_with("udp/51820 (wireguard) to "),
            "{wireguard}"
        );
        assert!(wireguard.contains("icmp-admin-prohibited"), "{wireguard}");
        assert!(!wireguard.contains("clock"), "{wireguard}");
        let unknown = summary(PORT_BLACKHOLED, "udp/40000");
        assert!(unknown.starts_with("udp/40000 to "), "{unknown}");
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
    fn requests_this_host_received_are_evidence_only_of_inbound_findings() {
        let findings = run(vec![
            inbound(dropped(Tcp, PEER, 22, 3)),
            inbound(dropped(Udp, PEER, 53, 2)),
            inbound(dropped(Tcp, PEER6, 443, 2)),
            inbound(refused(Icmp, PEER, 0, 2, "icmp-admin-prohibited")),
            ok(Tcp, HOST, 443, 1),
        ]);
        // No dns-blocked, port-blackholed, icmp-filtered or ipv6-broken from inbound targets.
        assert_eq!(
            ids(&findings),
            vec![
                INBOUND_BLACKHOLED,
                INBOUND_BLACKHOLED,
                INBOUND_BLACKHOLED,
                INBOUND_REJECTED
            ],
            "{findings:#?}"
        );
        for finding in &findings {
            assert!(
                finding.request.is_empty(),
                "never the upstream team: {finding:?}"
            );
            assert!(
                finding
                    .evidence
                    .iter()
                    .all(|t| t.direction == Direction::Ingress),
                "{finding:?}"
            );
            assert!(finding.summary.starts_with("Inbound to this host: "));
        }
        assert!(render_requests(&findings).is_empty());
        // And outbound findings never take inbound targets as evidence.
        let findings = run(vec![
            dropped(Udp, R1, 53, 3),
            inbound(ok(Udp, R2, 53, 9)),
            inbound(ok(Tcp, HOST, 443, 9)),
        ]);
        assert_eq!(ids(&findings), vec![DNS_BLOCKED]);
        assert_eq!(
            findings[0].summary,
            "DNS is blocked upstream: 3 queries to 198.51.100.53 got no answer.",
            "an inbound resolver answering is not a resolver this host uses"
        );
    }

    #[test]
    fn inbound_blackholed_names_the_peers_and_the_local_rule() {
        let findings = run(vec![
            inbound(dropped(Tcp, PEER2, 22, 3)),
            inbound(dropped(Tcp, PEER, 22, 4)),
            inbound(dropped(Tcp, PEER6, 22, 1)),
            inbound(ok(Tcp, "203.0.113.11", 22, 7)),
        ]);
        let finding = the(&findings, INBOUND_BLACKHOLED);
        assert_eq!(
            finding.summary,
            "Inbound to this host: tcp/22 from 203.0.113.9, 203.0.113.10, 2001:db8:2::9 goes \
             unanswered (8 connection attempts, nothing left this host): this host's input \
             chain drops them (or its output chain the answers, or reverse-path filtering), or \
             the answers leave by an interface netwatch does not watch."
        );
        let peers: Vec<String> = finding
            .evidence
            .iter()
            .map(|t| t.remote.to_string())
            .collect();
        assert_eq!(peers, [PEER, PEER2, PEER6], "the ok peer is no evidence");
        assert!(finding.request.is_empty());
        assert_eq!(
            finding.local_rules,
            vec![
                LocalRule {
                    chain: "input",
                    nft: "nft insert rule inet filter input ip saddr { 203.0.113.9, \
                          203.0.113.10 } tcp dport 22 accept"
                        .to_owned(),
                    iptables: "iptables -I INPUT -s 203.0.113.9,203.0.113.10 -p tcp --dport 22 \
                               -j ACCEPT"
                        .to_owned(),
                },
                LocalRule {
                    chain: "input",
                    nft: "nft insert rule inet filter input ip6 saddr 2001:db8:2::9 tcp dport \
                          22 accept"
                        .to_owned(),
                    iptables: "ip6tables -I INPUT -s 2001:db8:2::9 -p tcp --dport 22 -j ACCEPT"
                        .to_owned(),
                },
            ]
        );
        // Pings: no port, echo-request rules, the sysctl named.
        let findings = run(vec![
            inbound(dropped(Icmp, PEER, 0, 3)),
            inbound(dropped(Icmpv6, PEER6, 0, 2)),
        ]);
        assert_eq!(ids(&findings), vec![INBOUND_BLACKHOLED; 2]);
        assert_eq!(
            findings[0].summary,
            "Inbound to this host: ping (icmp echo) from 203.0.113.9 goes unanswered (3 echo \
             requests, nothing left this host): this host's input chain drops them (or its \
             output chain the replies), or it ignores echo requests \
             (net.ipv4.icmp_echo_ignore_all)."
        );
        assert_eq!(
            findings[0].local_rules[0].nft,
            "nft insert rule inet filter input ip saddr 203.0.113.9 icmp type echo-request accept"
        );
        assert_eq!(
            findings[1].local_rules[0].iptables,
            "ip6tables -I INPUT -s 2001:db8:2::9 -p ipv6-icmp --icmpv6-type echo-request -j ACCEPT"
        );
        assert!(
            findings[1]
                .summary
                .contains("net.ipv6.icmp.echo_ignore_all")
        );
    }

    #[test]
    fn inbound_rejected_says_what_refused_them() {
        let findings = run(vec![
            inbound(refused(Tcp, PEER, 8080, 2, "tcp-reset")),
            inbound(refused(Tcp, PEER, 25, 3, "icmp-host-prohibited")),
            inbound(refused(Tcp, PEER, 587, 1, "icmp-port-unreachable")),
            inbound(refused(Udp, PEER, 53, 2, "icmp-port-unreachable")),
        ]);
        assert_eq!(ids(&findings), vec![INBOUND_REJECTED; 4]);
        let summaries: Vec<&str> = findings.iter().map(|f| f.summary.as_str()).collect();
        assert_eq!(
            summaries,
            vec![
                "Inbound to this host: tcp/25 from 203.0.113.9 is rejected with \
                 icmp-host-prohibited (3 connection attempts): a reject rule in this host's input \
                 chain refuses them.",
                "Inbound to this host: tcp/587 from 203.0.113.9 is rejected with \
                 icmp-port-unreachable (1 connection attempt): a reject rule in this host's \
                 input chain refuses them (port-unreachable is iptables' default REJECT; with \
                 nothing listening the host would send a TCP reset).",
                "Inbound to this host: tcp/8080 from 203.0.113.9 is refused with tcp-reset (2 \
                 connection attempts): nothing listens on tcp/8080 here, or a rule on this host \
                 resets them; if a service should answer, check that it listens (ss -ltn).",
                "Inbound to this host: udp/53 from 203.0.113.9 is rejected with \
                 icmp-port-unreachable (2 queries): nothing listens on udp/53 here (ss -lun), or \
                 a rule on this host rejects them with iptables' default REJECT.",
            ]
        );
        // A rule is written where a reject rule refused them, not for a reset or a closed
        // UDP port: an accept rule would not make a service listen.
        let rules: Vec<usize> = findings.iter().map(|f| f.local_rules.len()).collect();
        assert_eq!(rules, [1, 1, 0, 0]);
        assert_eq!(
            findings[0].local_rules[0].iptables,
            "iptables -I INPUT -s 203.0.113.9 -p tcp --dport 25 -j ACCEPT"
        );
        assert!(findings.iter().all(|f| f.request.is_empty()));
        let cases = [
            (Tcp, Some("tcp-reset"), false),
            (Tcp, Some("icmp-port-unreachable"), true),
            (Udp, Some("icmp-port-unreachable"), false),
            (Udp, Some("icmp6-port-unreachable"), false),
            (Udp, Some("icmp-admin-prohibited"), true),
            (Icmp, Some("icmp-port-unreachable"), true),
            (Icmpv6, Some("icmp6-adm-prohibited"), true),
            (Tcp, None, false),
        ];
        for (proto, reason, expected) in cases {
            assert_eq!(
                inbound_rejection_is_a_rule(proto, reason),
                expected,
                "{proto} {reason:?}"
            );
        }
    }

    #[test]
    fn inbound_provisional_and_slow_targets_are_not_evidence() {
        let mut fresh = inbound(dropped(Tcp, PEER, 22, 1));
        fresh.provisional = true;
        let slow_peer = inbound(slow(Tcp, PEER2, 22, 4, 4, 1600.0, 1700.0));
        let partial = inbound(degraded(Tcp, PEER, 443, 10, 2));
        let findings = run(vec![fresh.clone(), slow_peer.clone(), partial]);
        assert_eq!(ids(&findings), Vec::<&str>::new(), "{findings:#?}");
        // Beside a peer dropped for longer, the provisional one is left out.
        let findings = run(vec![fresh, slow_peer, inbound(dropped(Tcp, PEER6, 22, 2))]);
        let finding = the(&findings, INBOUND_BLACKHOLED);
        assert_eq!(finding.evidence.len(), 1);
        assert_eq!(finding.evidence[0].remote, ip(PEER6));
        assert_eq!(finding.local_rules.len(), 1, "IPv6 only");
    }

    #[test]
    fn render_local_rules_lists_nft_then_iptables_once_each() {
        assert_eq!(render_local_rules(&[]), "");
        let findings = run(vec![
            inbound(dropped(Tcp, PEER, 22, 3)),
            inbound(refused(Tcp, PEER, 25, 1, "icmp-admin-prohibited")),
            inbound(refused(Tcp, PEER2, 8080, 1, "tcp-reset")),
            dropped(Udp, R1, 53, 1),
        ]);
        assert_eq!(
            render_local_rules(&findings),
            "\
# nftables (table inet filter: use your own table's name)
nft insert rule inet filter input ip saddr 203.0.113.9 tcp dport 22 accept
nft insert rule inet filter input ip saddr 203.0.113.9 tcp dport 25 accept
# iptables
iptables -I INPUT -s 203.0.113.9 -p tcp --dport 22 -j ACCEPT
iptables -I INPUT -s 203.0.113.9 -p tcp --dport 25 -j ACCEPT
"
        );
        // The outbound finding's request stays apart, in the table for the upstream team.
        assert!(render_requests(&findings).contains("198.51.100.53"));
        assert!(!render_requests(&findings).contains(PEER));
    }

    #[test]
    fn provisional_blackholes_are_not_evidence_yet() {
        let mut fresh = dropped(Udp, R1, 53, 3);
        fresh.provisional = true;
        let mut port = dropped(Tcp, HOST6, 443, 1);
        port.provisional = true;
        let findings = run(vec![fresh.clone(), port.clone(), ok(Tcp, HOST, 443, 1)]);
        assert_eq!(ids(&findings), Vec::<&str>::new(), "{findings:#?}");
        // Next to a resolver blocked for longer, the provisional one is left out.
        let findings = run(vec![fresh, dropped(Udp, R2, 53, 2)]);
        let dns = the(&findings, DNS_BLOCKED);
        assert_eq!(dns.evidence.len(), 1);
        assert_eq!(dns.request[0].destinations, vec![ip(R2)]);
        port.provisional = false;
        let findings = run(vec![port, ok(Tcp, HOST, 443, 1)]);
        assert_eq!(ids(&findings), vec![PORT_BLACKHOLED, IPV6_BROKEN]);
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
             tcp/443 answered): IP works, names don't."
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
             works (icmp answered): IP works, names don't."
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
            refused(Udp, R1, 53, 1, "icmp-admin-prohibited"),
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
        let v4_only = diagnose(&snapshot, &[ip(SOURCE_V4)], TIMEOUT);
        let sources: Vec<IpAddr> = v4_only[0].request.iter().map(|r| r.source).collect();
        assert_eq!(
            sources,
            vec![ip(SOURCE_V4), ip(SOURCE_V4), ip("::"), ip("::")]
        );
        let v6_first = diagnose(&snapshot, &[ip(SOURCE_V6), ip("2001:db8:1::8")], TIMEOUT);
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
            refused(Udp, R1, 53, 2, "icmp-admin-prohibited"),
            ok(Tcp, R1, 53, 1),
        ]);
        assert!(udp[0].summary.starts_with(
            "DNS over udp/53 to 198.51.100.53 is rejected (icmp-admin-prohibited) while tcp/53 \
             answers"
        ));
        assert_eq!(
            udp[0].request,
            vec![request(SOURCE_V4, &[R1], Udp, Some(53))]
        );
        let unreachable = run(vec![
            refused(Udp, R1, 53, 2, "icmp-port-unreachable"),
            ok(Tcp, R1, 53, 1),
        ]);
        assert_eq!(ids(&unreachable), vec![DNS_TRANSPORT_BLOCKED]);
        assert_eq!(
            unreachable[0].request,
            vec![],
            "port-unreachable for UDP is as often nothing listening as a firewall"
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
            vec![],
            "a reset is as often the host as a firewall: no request"
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
            // No IPv4 ping was seen: no evidence about ICMPv6, so not part of the finding.
            refused(Icmpv6, HOST6, 0, 1, "icmp6-no-route"),
            ok(Tcp, HOST, 443, 3),
            ok(Udp, R1, 53, 3),
            pending(Tcp, "2001:db8::11", 443),
        ]);
        let v6 = the(&findings, IPV6_BROKEN);
        assert_eq!(
            v6.summary,
            "IPv6 is broken while IPv4 works: 1 IPv6 target (tcp/443 to 2001:db8::10) fails \
             while the same service over IPv4 (tcp/443 to 198.51.100.10) is ok, and no IPv6 \
             target answers; programs that try IPv6 first stall or fall back slowly."
        );
        let evidence: Vec<(Proto, IpAddr)> =
            v6.evidence.iter().map(|t| (t.proto, t.remote)).collect();
        assert_eq!(
            evidence,
            vec![(Tcp, ip(HOST)), (Tcp, ip(HOST6))],
            "the failing IPv6 target and its working IPv4 counterpart"
        );
        assert!(v6.request.is_empty());
    }

    #[test]
    fn ipv6_broken_pairs_icmpv6_with_icmp() {
        let findings = run(vec![dropped(Icmpv6, HOST6, 0, 2), ok(Icmp, HOST, 0, 2)]);
        let v6 = the(&findings, IPV6_BROKEN);
        assert!(
            v6.summary.contains(
                "(icmpv6 to 2001:db8::10) fails while the same service over IPv4 (icmp to \
                 198.51.100.10) is ok"
            ),
            "{}",
            v6.summary
        );
    }

    #[test]
    fn ipv6_broken_needs_an_ipv4_counterpart_that_works() {
        // DNS blocked on both families: the IPv6 resolver fails exactly like the IPv4 one.
        let both = run(vec![
            dropped(Udp, R1, 53, 4),
            dropped(Udp, R6, 53, 4),
            ok(Tcp, HOST, 443, 3),
        ]);
        assert_eq!(ids(&both), vec![DNS_BLOCKED], "{both:#?}");
        // tcp/443 fails on both; another IPv4 service works: still nothing about IPv6.
        let twin_fails = run(vec![
            dropped(Tcp, HOST6, 443, 3),
            dropped(Tcp, HOST, 443, 3),
            ok(Tcp, HOST, 22, 3),
        ]);
        assert!(!ids(&twin_fails).contains(&IPV6_BROKEN), "{twin_fails:#?}");
        // The IPv4 counterpart is only degraded or slow: not "works".
        let mut slow_twin = slow(Tcp, HOST, 443, 4, 1, 1500.0, 1700.0);
        slow_twin.answered = 3;
        for twin in [degraded(Tcp, HOST, 443, 4, 1), slow_twin] {
            let findings = run(vec![dropped(Tcp, HOST6, 443, 3), twin]);
            assert!(!ids(&findings).contains(&IPV6_BROKEN), "{findings:#?}");
        }
        // The other direction: v6 tcp/443 dropped while v4 tcp/443 is ok.
        let broken = run(vec![
            dropped(Tcp, HOST6, 443, 3),
            dropped(Tcp, "2001:db8::11", 443, 3),
            ok(Tcp, "198.51.100.11", 443, 3),
            dropped(Udp, R6, 53, 1),
            dropped(Udp, R1, 53, 1),
        ]);
        let v6 = the(&broken, IPV6_BROKEN);
        assert_eq!(
            v6.evidence.len(),
            3,
            "the DNS target failing on both families is not evidence: {v6:#?}"
        );
        assert!(
            v6.summary.contains(
                "2 IPv6 targets (tcp/443 to 2001:db8::10, tcp/443 to 2001:db8::11) fail while \
                 the same service over IPv4 (tcp/443 to 198.51.100.11) is ok"
            ),
            "{}",
            v6.summary
        );
    }

    fn slow(
        proto: Proto,
        remote: &str,
        port: u16,
        requests: u64,
        late: u64,
        p50_ms: f64,
        p99_ms: f64,
    ) -> TargetView {
        let mut t = view(proto, remote, port_of(proto, port), Verdict::Degraded);
        // A late answer's request was counted unanswered at its timeout first.
        (t.requests, t.unanswered, t.late, t.reason) = (requests, late, late, Some(LATE));
        (t.latency_p50_ms, t.latency_p99_ms) = (Some(p50_ms), Some(p99_ms));
        t
    }

    #[test]
    fn slow_answers_names_the_latency_and_a_timeout_and_asks_for_nothing() {
        let findings = run(vec![slow(Udp, R1, 53, 3, 3, 1600.0, 1700.0)]);
        assert_eq!(ids(&findings), vec![SLOW_ANSWERS]);
        assert_eq!(
            findings[0].summary,
            "Answers from udp/53 to 198.51.100.53 (latency p50 1.6 s, p99 1.7 s) arrive after \
             the 1s timeout (3 late answers): the target is slow, not blocked; run with \
             --timeout 3s or more."
        );
        assert!(findings[0].request.is_empty());
        assert_eq!(findings[0].evidence.len(), 1);

        let many = run(vec![
            slow(Tcp, HOST, 443, 10, 1, 40.0, 1200.0),
            slow(Udp, R1, 53, 3, 3, 1600.0, 4100.0),
            ok(Tcp, HOST, 22, 1),
        ]);
        assert_eq!(
            ids(&many),
            vec![SLOW_ANSWERS],
            "one finding for every slow target"
        );
        assert_eq!(
            many[0].summary,
            "Answers from tcp/443 to 198.51.100.10 (latency p50 40 ms, p99 1.2 s), udp/53 to \
             198.51.100.53 (latency p50 1.6 s, p99 4.1 s) arrive after the 1s timeout (4 late \
             answers): the targets are slow, not blocked; run with --timeout 7s or more."
        );
        assert_eq!(many[0].evidence.len(), 2);
    }

    #[test]
    fn slow_targets_feed_no_blocked_finding() {
        let cases = vec![
            (
                "a slow resolver alone",
                vec![slow(Udp, R1, 53, 5, 5, 1600.0, 1700.0)],
            ),
            (
                "every resolver slow, IP works",
                vec![
                    slow(Udp, R1, 53, 5, 5, 1600.0, 1700.0),
                    slow(Udp, R6, 53, 5, 5, 1600.0, 1700.0),
                    ok(Tcp, HOST, 443, 3),
                ],
            ),
            (
                "slow over udp/53, tcp/53 ok",
                vec![slow(Udp, R1, 53, 5, 5, 1600.0, 1700.0), ok(Tcp, R1, 53, 2)],
            ),
            (
                "a slow non-DNS port",
                vec![
                    slow(Tcp, HOST, 5432, 4, 4, 2000.0, 2500.0),
                    ok(Tcp, HOST, 443, 1),
                ],
            ),
            (
                "a slow ping, the host answers nothing else",
                vec![slow(Icmp, HOST, 0, 4, 4, 1100.0, 1300.0)],
            ),
            (
                "slow over IPv6 while IPv4 is ok",
                vec![
                    slow(Tcp, HOST6, 443, 3, 3, 1500.0, 1900.0),
                    ok(Tcp, HOST, 443, 3),
                ],
            ),
        ];
        for (name, targets) in cases {
            let findings = run(targets);
            assert_eq!(ids(&findings), vec![SLOW_ANSWERS], "{name}: {findings:#?}");
            assert!(render_requests(&findings).is_empty(), "{name}");
        }
        // Next to a blocked resolver, the slow one is the one that answers.
        let findings = run(vec![
            slow(Udp, R1, 53, 5, 5, 1600.0, 1700.0),
            dropped(Udp, R2, 53, 3),
        ]);
        assert_eq!(
            ids(&findings),
            vec![RESOLVER_PARTIALLY_BLOCKED, SLOW_ANSWERS]
        );
        assert_eq!(
            findings[0].request,
            vec![
                request(SOURCE_V4, &[R2], Udp, Some(53)),
                request(SOURCE_V4, &[R2], Tcp, Some(53)),
            ],
            "only the silent resolver is asked for"
        );
    }

    #[test]
    fn late_answers_mixed_with_unanswered_requests() {
        // Slow, and some requests never answered at all: one slow-answers finding that says
        // so; no partial-loss until a longer timeout shows what is really lost.
        let mut mixed = slow(Udp, R1, 53, 10, 3, 1600.0, 1700.0);
        (mixed.answered, mixed.unanswered) = (5, 5);
        let findings = run(vec![mixed]);
        assert_eq!(ids(&findings), vec![SLOW_ANSWERS]);
        assert!(
            findings[0]
                .summary
                .contains("(3 late answers, 2 requests never answered)"),
            "{}",
            findings[0].summary
        );
        // Degraded for another reason, with some late answers too: partial-loss, whose
        // unanswered count leaves the late answers out.
        let mut other = degraded(Tcp, HOST, 443, 10, 3);
        (other.late, other.rejected, other.reason) = (1, 1, Some("tcp-reset"));
        other.answered = 6;
        let findings = run(vec![other]);
        assert_eq!(ids(&findings), vec![PARTIAL_LOSS]);
        assert_eq!(
            findings[0].summary,
            "tcp/443 to 198.51.100.10 works only part of the time: 2 of 10 requests unanswered \
             and 1 rejected (tcp-reset), 6 answered and 1 more after the timeout (intermittent \
             loss, a rate limit or an overloaded path)."
        );
    }

    #[test]
    fn suggested_timeouts() {
        let s = Duration::from_secs;
        let cases = [
            (s(1), Some(1700.0), 3),
            (s(1), None, 2),
            (s(3), Some(3500.0), 6),
            (s(1), Some(10_000.0), 15),
            (Duration::from_millis(500), Some(600.0), 1),
            (Duration::from_millis(10), Some(1.0), 1),
            (s(1800), Some(9000.0), 3600),
            (s(3600), None, 3600),
            (s(1), Some(f64::INFINITY), 3600),
        ];
        for (timeout, p99, expected) in cases {
            assert_eq!(
                suggested_timeout_s(timeout, p99),
                expected,
                "{timeout:?} {p99:?}"
            );
        }
    }

    #[test]
    fn findings_and_requests_name_the_processes_behind_them() {
        let process = |pid, comm: &str, cgroup: &str| crate::attribution::Process {
            pid,
            comm: comm.into(),
            cgroup: cgroup.into(),
        };
        let mut https = dropped(Tcp, "198.51.100.10", 8443, 3);
        https.processes = vec![
            process(10, "curl", "/system.slice/payments.service"),
            process(11, "python3", "/lab/b"),
        ];
        let mut other = dropped(Tcp, "198.51.100.11", 8443, 3);
        other.processes = vec![process(10, "curl", "/system.slice/payments.service")];
        let unknown = dropped(Tcp, "198.51.100.12", 9000, 2);
        let findings = run(vec![https, other, unknown]);
        let blackholed: Vec<&Finding> = findings
            .iter()
            .filter(|f| f.finding == PORT_BLACKHOLED)
            .collect();
        let with = blackholed
            .iter()
            .find(|f| f.evidence[0].port == Some(8443))
            .expect("the 8443 finding");
        assert!(
            with.summary
                .ends_with("Sent by curl (payments.service), python3 (/lab/b)."),
            "{}",
            with.summary
        );
        assert_eq!(
            with.request[0].needed_by,
            ["curl (payments.service)", "python3 (/lab/b)"]
        );
        let without = blackholed
            .iter()
            .find(|f| f.evidence[0].port == Some(9000))
            .expect("the 9000 finding");
        assert!(!without.summary.contains("Sent by"), "{}", without.summary);
        assert!(without.request[0].needed_by.is_empty());
    }

    #[test]
    fn requests_only_where_the_evidence_points_at_a_firewall() {
        let cases = [
            (Tcp, Some("icmp-admin-prohibited"), true),
            (Tcp, Some("icmp6-adm-prohibited"), true),
            (Udp, Some("icmp-host-prohibited"), true),
            (Tcp, Some("icmp6-policy-fail"), true),
            (Tcp, Some("icmp6-reject-route"), true),
            (Tcp, Some("icmp-port-unreachable"), true),
            (Udp, Some("icmp-port-unreachable"), false),
            (Udp, Some("icmp6-port-unreachable"), false),
            (Tcp, Some("tcp-reset"), false),
            (Tcp, Some("icmp-host-unreachable"), false),
            (Tcp, Some("icmp6-no-route"), false),
            (Tcp, Some("icmp-proto-unreachable"), false),
            (Tcp, Some("icmp-unreachable-other"), false),
            (Tcp, None, false),
        ];
        for (proto, reason, expected) in cases {
            assert_eq!(
                rejection_blames_firewall(proto, reason),
                expected,
                "{proto} {reason:?}"
            );
        }
        // Every resolver refuses with port-unreachable: nothing listens, or a firewall's
        // default REJECT. No "blocked", no request.
        let findings = run(vec![
            refused(Udp, R1, 53, 2, "icmp-port-unreachable"),
            ok(Tcp, HOST, 443, 1),
        ]);
        let dns = the(&findings, DNS_BLOCKED);
        assert!(
            dns.summary.starts_with(
                "Every DNS resolver refuses queries: 2 queries to 198.51.100.53 were rejected \
                 (icmp-port-unreachable)"
            ),
            "{}",
            dns.summary
        );
        assert!(dns.request.is_empty());
        let partial = run(vec![
            refused(Udp, R1, 53, 2, "icmp-port-unreachable"),
            ok(Udp, R2, 53, 1),
        ]);
        let partial = the(&partial, RESOLVER_PARTIALLY_BLOCKED);
        assert!(
            partial
                .summary
                .starts_with("Some DNS resolvers refuse queries: resolver 198.51.100.54 answers"),
            "{}",
            partial.summary
        );
        assert!(
            partial
                .summary
                .contains("whenever the refusing resolver is tried")
        );
        assert!(partial.request.is_empty());
        // Mixed: only the resolver whose failure points at a firewall is asked for.
        let mixed = run(vec![
            refused(Udp, R1, 53, 2, "icmp-port-unreachable"),
            dropped(Udp, R2, 53, 1),
        ]);
        let dns = the(&mixed, DNS_BLOCKED);
        assert!(dns.summary.starts_with("DNS is blocked upstream"));
        assert_eq!(
            dns.request,
            vec![
                request(SOURCE_V4, &[R2], Udp, Some(53)),
                request(SOURCE_V4, &[R2], Tcp, Some(53)),
            ]
        );
        // A ping refused by a router: the finding, no request.
        let icmp = run(vec![refused(Icmp, HOST, 0, 2, "icmp-host-unreachable")]);
        assert_eq!(ids(&icmp), vec![ICMP_FILTERED]);
        assert!(icmp[0].request.is_empty());
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
        assert_eq!(
            value["local_rules"],
            json!([]),
            "outbound findings have none"
        );
        let inbound = run(vec![inbound(dropped(Tcp, PEER, 22, 2))]);
        let value = serde_json::to_value(&inbound[0]).unwrap();
        assert_eq!(value["finding"], "inbound-blackholed");
        assert_eq!(value["evidence"][0]["direction"], "ingress");
        assert_eq!(value["evidence"][0]["remote"], PEER);
        assert_eq!(value["evidence"][0]["port"], 22);
        assert_eq!(value["request"], json!([]));
        assert_eq!(
            value["local_rules"],
            json!([{
                "chain": "input",
                "nft": "nft insert rule inet filter input ip saddr 203.0.113.9 tcp dport 22 accept",
                "iptables": "iptables -I INPUT -s 203.0.113.9 -p tcp --dport 22 -j ACCEPT",
            }])
        );
        let slow = run(vec![slow(Udp, R1, 53, 3, 3, 1600.0, 1700.0)]);
        let value = serde_json::to_value(&slow[0]).unwrap();
        assert_eq!(value["finding"], "slow-answers");
        assert_eq!(value["request"], json!([]));
        assert_eq!(value["evidence"][0]["verdict"], "degraded");
        assert_eq!(value["evidence"][0]["reason"], "late");
        assert_eq!(value["evidence"][0]["late"], 3);
        assert_eq!(value["evidence"][0]["latency_p99_ms"], 1700.0);
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

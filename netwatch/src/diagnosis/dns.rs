//! DNS: resolvers that never answer, and the transports they are blocked on.

use super::{
    BTreeMap, BTreeSet, DNS_BLOCKED, DNS_PORT, DNS_TRANSPORT_BLOCKED, Finding, IpAddr, MAX_NAMES,
    Proto, RESOLVER_PARTIALLY_BLOCKED, TargetView, answers, at_firewall, blames_firewall,
    blocked_how, fails, failure_phrase, is_dns, list, list_at_most, remotes, requests, service,
};

pub(super) fn dns_findings(
    judged: &[&TargetView],
    sources: &[IpAddr],
    findings: &mut Vec<Finding>,
) {
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
pub(super) fn dns_blocked_summary(
    judged: &[&TargetView],
    failing: &[&TargetView],
    firewall: bool,
) -> String {
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
pub(super) fn names_phrase(targets: &[&TargetView]) -> String {
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

//! ICMP: echo dropped or refused.

use super::{
    BTreeSet, Finding, FirewallRequest, ICMP_FILTERED, IpAddr, Proto, TargetView, Verdict, answers,
    blames_firewall, count, fails, list, never_answered, reasons, remotes, requests, service,
};

pub(super) fn icmp_findings(
    judged: &[&TargetView],
    sources: &[IpAddr],
    findings: &mut Vec<Finding>,
) {
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
pub(super) fn dropped_and_refused<'a>(
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
pub(super) fn echo_counts(targets: &[&TargetView]) -> String {
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

pub(super) fn icmp_requests(sources: &[IpAddr], targets: &[&TargetView]) -> Vec<FirewallRequest> {
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

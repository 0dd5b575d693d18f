//! TCP and UDP ports: blackholed or refused, and by whom.

use super::{
    Finding, IpAddr, PORT_BLACKHOLED, PORT_REJECTED, Proto, TargetView, Verdict, count,
    failing_by_service, is_dns, list, named_service, never_answered, rejected_how, remotes,
    requests, udp_consequence,
};

pub(super) fn port_findings(
    judged: &[&TargetView],
    sources: &[IpAddr],
    findings: &mut Vec<Finding>,
) {
    let groups = failing_by_service(
        judged
            .iter()
            .copied()
            .filter(|t| t.proto.has_ports() && !is_dns(t)),
    );
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
            let how = rejected_how(reason);
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
pub(super) fn rejection_blames_firewall(proto: Proto, reason: Option<&str>) -> bool {
    match reason {
        Some("icmp-port-unreachable" | "icmp6-port-unreachable") => proto == Proto::Tcp,
        Some("icmp6-policy-fail" | "icmp6-reject-route") => true,
        Some(reason) => reason.ends_with("-prohibited"),
        None => false,
    }
}

/// Whether `t`'s failure points at a firewall: unanswered, or rejected the way a firewall
/// rejects (see [`rejection_blames_firewall`]).
pub(super) fn blames_firewall(t: &TargetView) -> bool {
    match t.verdict {
        Verdict::Blackholed => true,
        Verdict::Rejected => rejection_blames_firewall(t.proto, t.reason),
        _ => false,
    }
}

/// The failing targets whose failure points at a firewall: those a request may name.
pub(super) fn at_firewall<'a>(targets: &[&'a TargetView]) -> Vec<&'a TargetView> {
    targets
        .iter()
        .copied()
        .filter(|t| blames_firewall(t))
        .collect()
}

/// What a rejection of that kind means, and whether a firewall change may not help.
pub(super) fn reject_meaning(proto: Proto, reason: Option<&str>) -> &'static str {
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

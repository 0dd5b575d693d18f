//! Inbound to this host: requests its own firewall drops or refuses, and the local rules
//! that would let them in.

use super::*;

/// One finding per (proto, port) of inbound targets that are blackholed, then per reason of
/// those that are rejected; ICMP echo has no port. Degraded inbound targets (slow or not)
/// are no evidence here.
pub(super) fn inbound_findings(inbound: &[&TargetView], findings: &mut Vec<Finding>) {
    let groups = failing_by_service(inbound.iter().copied());
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
            let how = rejected_how(reason);
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
pub(super) fn inbound_rejection_is_a_rule(proto: Proto, reason: Option<&str>) -> bool {
    match reason {
        Some("tcp-reset") | None => false,
        Some("icmp-port-unreachable" | "icmp6-port-unreachable") => proto != Proto::Udp,
        Some(_) => true,
    }
}

/// What this host's rejection of an inbound request means.
pub(super) fn inbound_reject_meaning(
    proto: Proto,
    port: Option<u16>,
    reason: Option<&str>,
) -> String {
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
pub(super) fn accept_rules(peers: &[IpAddr], proto: Proto, port: Option<u16>) -> Vec<LocalRule> {
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
pub(crate) fn render_local_rules(findings: &[Finding]) -> String {
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

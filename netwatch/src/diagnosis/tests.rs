//! The diagnosis on hand-made snapshots.

use serde_json::{Value, json};

use super::*;
use super::{
    inbound::inbound_rejection_is_a_rule,
    ports::{reject_meaning, rejection_blames_firewall},
    quality::suggested_timeout_s,
};
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
        icmp_type: None,
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
        findings[0].summary, "DNS is blocked upstream: 3 queries to 198.51.100.53 got no answer.",
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
            .all(|f| f.evidence.iter().all(|t| t.port != Some(53)) || f.finding.starts_with("dns"))
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
    let evidence: Vec<(Proto, IpAddr)> = v6.evidence.iter().map(|t| (t.proto, t.remote)).collect();
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

//! Trust (issue 9): netwatch never blames a firewall for what it did not do. Each test drives
//! real clients in the namespace lab through a case outside the lab's usual vocabulary (TCP
//! Fast Open, broadcast and multicast echo, a slow resolver, a foreign tcx program, many new
//! targets from both CPUs, a forwarder reusing DNS ids) and asserts netwatch's `--json`
//! output. The last one checks netwatch's counts against an independent dissector (tshark)
//! of a capture taken at the same time, over randomized clients and firewalls.
//!
//! Every test name starts with `trust_`: `cargo xtask test trust` runs exactly these.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::{Child, Stdio},
    time::Duration,
};

use netwatch_tests::{
    capture::{Capture, tshark_fields},
    clients::{Client, run_together},
    lab::{
        CLIENT_IFACE, DNS_V4, DNS2_V4, Finished, GATEWAY_V4, Lab, OPEN_DNS, SERVER_V4, TargetId,
        target_id, wait_until,
    },
    prerequisites,
};
use serde_json::Value;

const LISTENER: &str = env!("CARGO_BIN_EXE_lab-listener");
const LAB_DNS: &str = env!("CARGO_BIN_EXE_lab-dns");
const DNS_STREAM: &str = env!("CARGO_BIN_EXE_dns-stream");
const LAB_BURST: &str = env!("CARGO_BIN_EXE_lab-burst");
const FOREIGN_TCX: &str = env!("CARGO_BIN_EXE_foreign-tcx");
const VPN: &str = env!("CARGO_BIN_EXE_lab-vpn");

/// netwatch's options in every test: JSON, a 1 s timeout (the clients' own waits are longer).
const WATCH: &[&str] = &["--iface", CLIENT_IFACE, "--json", "--timeout", "1s"];

fn id(proto: &str, remote: &str, port: Option<u64>) -> TargetId {
    (proto.to_owned(), remote.to_owned(), port)
}

fn target<'a>(targets: &'a BTreeMap<TargetId, Value>, which: &TargetId) -> &'a Value {
    targets.get(which).unwrap_or_else(|| {
        panic!(
            "no target record for {which:?}; targets: {:#?}",
            targets.keys()
        )
    })
}

fn count(record: &Value, field: &str) -> u64 {
    record[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter `{field}` in {record}"))
}

/// Asserts netwatch exited cleanly and returns its records.
fn clean(finished: Finished) -> Finished {
    assert!(
        finished.status.success(),
        "netwatch exit: {:?}: {}",
        finished.status,
        finished.stderr
    );
    finished
}

/// No target but `except` is blackholed.
fn assert_no_blackholed(finished: &Finished, except: &[&TargetId]) {
    let wrong: Vec<&Value> = finished
        .records
        .iter()
        .filter(|r| matches!(r["type"].as_str(), Some("target" | "verdict")))
        .filter(|r| r["verdict"] == "blackholed" && !except.contains(&&target_id(r)))
        .collect();
    assert!(wrong.is_empty(), "blackholed without cause: {wrong:#?}");
}

/// Case 1: TCP Fast Open (RFC 7413): the second `curl --tcp-fastopen` sends its data in the SYN,
/// and the SYN-ACK acknowledges ISN + 1 + data length. That is an answer, not an invalid one.
#[test]
fn trust_tcp_fast_open_data_in_the_syn_is_answered() {
    if !prerequisites(
        "trust_tcp_fast_open_data_in_the_syn_is_answered",
        &["ip", "nft", "curl", "nc", "tcpdump", "tshark"],
    ) {
        return;
    }
    let mut lab = Lab::new();
    // Bit 0: client side, bit 1: server side.
    Lab::sysctl(&lab.client, &["net.ipv4.tcp_fastopen=3"]);
    Lab::sysctl(&lab.server, &["net.ipv4.tcp_fastopen=3"]);
    lab.start_listener(LISTENER);
    let capture = Capture::start(&lab.client, CLIENT_IFACE, &lab.dir().join("tfo.pcap"));
    let netwatch = lab.start_netwatch(WATCH);

    // The first asks for a cookie (an empty TFO option); the second spends it on data.
    let post = Client::curl_fast_open(SERVER_V4, 80, "netwatch=fast-open");
    for _ in 0..2 {
        let out = post.run(&lab.client);
        assert!(out.status.success(), "`{}` failed", post.line());
    }
    let sentinel = lab.wait_for_sentinel(&netwatch);
    capture.sync(&lab.client, GATEWAY_V4);
    let finished = clean(netwatch.stop());
    let end = capture.stop();
    assert_eq!(end.dropped_by_kernel, 0, "{}", end.stderr);

    // The capture proves the case happened: a SYN with data, acknowledged past its data.
    let syns = tshark_fields(
        &end.path,
        &["tcp.srcport", "tcp.seq", "tcp.len"],
        Some("tcp.dstport == 80 && tcp.flags.syn == 1 && tcp.flags.ack == 0"),
    );
    let synacks = tshark_fields(
        &end.path,
        &["tcp.dstport", "tcp.ack"],
        Some("tcp.srcport == 80 && tcp.flags.syn == 1 && tcp.flags.ack == 1"),
    );
    let number = |v: &[String]| -> u64 { v[0].parse().expect("a number") };
    let data_syn_acked = syns.iter().any(|syn| {
        let len = number(&syn[2]);
        len > 0
            && synacks.iter().any(|sa| {
                sa[0] == syn[0] && number(&sa[1]) == (number(&syn[1]) + 1 + len) % (1 << 32)
            })
    });
    assert!(
        data_syn_acked,
        "TCP Fast Open did not happen (no SYN with data acknowledged past it), so this test \
         proves nothing; SYNs (port, seq, len): {syns:?}; SYN-ACKs (port, ack): {synacks:?}"
    );

    let targets = finished.targets();
    let web = target(&targets, &id("tcp", SERVER_V4, Some(80)));
    assert_eq!(web["verdict"], "ok", "{web}");
    assert_eq!(
        (count(web, "requests"), count(web, "answered")),
        (2, 2),
        "{web}"
    );
    assert_eq!(count(web, "retransmits"), 0, "{web}");
    assert_eq!(finished.kernel_counter("invalid_answer"), 0);
    assert_no_blackholed(&finished, &[&sentinel]);
    assert!(
        !finished.exit_findings().iter().any(|f| f["evidence"]
            .as_array()
            .is_some_and(|e| e.iter().any(|t| t["port"] == 80))),
        "a finding about tcp/80: {:#?}",
        finished.exit_findings()
    );
}

/// Case 2: Echo requests to a directed broadcast, the limited broadcast and the all-nodes group
/// are answered from other (unicast) addresses: they are not requests to a target at all.
#[test]
fn trust_broadcast_and_multicast_echo_make_no_target() {
    if !prerequisites(
        "trust_broadcast_and_multicast_echo_make_no_target",
        &["ip", "nft", "ping", "nc"],
    ) {
        return;
    }
    let lab = Lab::new();
    // The gateway answers broadcast echo (Linux ignores it by default).
    Lab::sysctl(&lab.firewall, &["net.ipv4.icmp_echo_ignore_broadcasts=0"]);
    let netwatch = lab.start_netwatch(WATCH);

    let all_nodes = format!("ff02::1%{CLIENT_IFACE}");
    let group_pings = [
        Client::ping_broadcast("203.0.113.255", CLIENT_IFACE, 2),
        Client::ping_broadcast("255.255.255.255", CLIENT_IFACE, 2),
        Client::ping(&all_nodes, 2),
    ];
    for ping in &group_pings {
        let out = ping.run(&lab.client);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("bytes from"),
            "`{}` got no reply, so this test proves nothing: {text}",
            ping.line()
        );
    }
    // A unicast control: the same gateway, answering its own address.
    Client::ping(GATEWAY_V4, 2).run(&lab.client);
    let sentinel = lab.wait_for_sentinel(&netwatch);
    let finished = clean(netwatch.stop());

    let targets = finished.targets();
    for group in ["203.0.113.255", "255.255.255.255", "ff02::1"] {
        assert!(
            !targets.keys().any(|(_, remote, _)| remote == group),
            "{group} is not a target: {:#?}",
            targets.keys()
        );
    }
    let control = target(&targets, &id("icmp", GATEWAY_V4, None));
    assert_eq!(control["verdict"], "ok", "{control}");
    assert_eq!(
        (count(control, "requests"), count(control, "answered")),
        (2, 2)
    );
    let not_unicast = finished.kernel_counter("not_unicast");
    assert!(
        not_unicast >= 6,
        "six echo requests went to broadcast or group addresses; not_unicast = {not_unicast}"
    );
    assert_no_blackholed(&finished, &[&sentinel]);
}

/// The findings netwatch must never make about a target that only answers late.
fn assert_no_firewall_blame(finished: &Finished) {
    for finding in finished.exit_findings() {
        assert!(
            !matches!(
                finding["finding"].as_str(),
                Some("dns-blocked" | "port-blackholed")
            ),
            "blames the firewall for slow answers: {finding:#}"
        );
        assert!(
            finding["request"].as_array().is_none_or(Vec::is_empty),
            "asks for a firewall rule about slow answers: {finding:#}"
        );
    }
}

/// Case 3: A resolver that answers every query, 1.6 s after it came, watched with a 1 s timeout:
/// the answers are late, the target is `degraded` (reason `late`), and the diagnosis says
/// the answers are slow, not that DNS is blocked.
#[test]
fn trust_a_slow_resolver_is_degraded_late_not_blocked() {
    if !prerequisites(
        "trust_a_slow_resolver_is_degraded_late_not_blocked",
        &["ip", "nft", "dig", "ss"],
    ) {
        return;
    }
    let mut lab = Lab::new();
    lab.nft(OPEN_DNS);
    lab.start_lab_dns(LAB_DNS, 1600, &[DNS_V4]);
    let netwatch = lab.start_netwatch(WATCH);
    let digs: Vec<Client> = (0..3)
        .map(|n| Client::dig_waiting(DNS_V4, &format!("slow{n}.example"), 4))
        .collect();
    for (dig, out) in digs.iter().zip(run_together(&lab.client, &digs)) {
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(SERVER_V4),
            "`{}` got no answer: the responder must answer, only late",
            dig.line()
        );
    }
    // Every answer has arrived (dig printed it), after the timeout: the exit poll counts all.
    let finished = clean(netwatch.stop());

    let targets = finished.targets();
    let dns_target = id("udp", DNS_V4, Some(53));
    let dns = target(&targets, &dns_target);
    assert_eq!(
        (dns["verdict"].as_str(), dns["reason"].as_str()),
        (Some("degraded"), Some("late")),
        "{dns}"
    );
    assert_eq!(count(dns, "requests"), 3, "{dns}");
    assert_eq!(count(dns, "late"), 3, "{dns}");
    assert_eq!(count(dns, "retransmits"), 0, "{dns}");

    let findings = finished.exit_findings();
    let slow = findings
        .iter()
        .find(|f| f["finding"] == "slow-answers")
        .unwrap_or_else(|| panic!("no slow-answers finding: {findings:#?}"));
    let evidence = slow["evidence"]
        .as_array()
        .and_then(|e| e.iter().find(|t| target_id(t) == dns_target))
        .unwrap_or_else(|| panic!("slow-answers does not name {dns_target:?}: {slow:#}"));
    for latency in ["latency_p50_ms", "latency_p99_ms"] {
        let ms = evidence[latency]
            .as_f64()
            .unwrap_or_else(|| panic!("slow-answers gives no {latency}: {slow:#}"));
        assert!(
            (1000.0..4000.0).contains(&ms),
            "{latency} {ms} ms: the answers came about 1.6 s after their queries: {slow:#}"
        );
    }
    assert!(
        slow["summary"]
            .as_str()
            .is_some_and(|s| s.contains("--timeout")),
        "slow-answers suggests a longer --timeout: {slow:#}"
    );
    assert_no_firewall_blame(&finished);
}

/// Case 3b: The same slow resolver, with some queries it never answers: answers (late) mixed with
/// unanswered requests are `degraded`, and DNS is not called blocked.
#[test]
fn trust_late_answers_mixed_with_lost_queries_are_degraded() {
    if !prerequisites(
        "trust_late_answers_mixed_with_lost_queries_are_degraded",
        &["ip", "nft", "dig", "ss"],
    ) {
        return;
    }
    let mut lab = Lab::new();
    lab.nft(OPEN_DNS);
    lab.start_lab_dns(LAB_DNS, 1600, &[DNS_V4]);
    let netwatch = lab.start_netwatch(WATCH);
    let digs: Vec<Client> = ["slow0", "slow1", "lost0", "lost1"]
        .iter()
        .map(|name| Client::dig_waiting(DNS_V4, &format!("{name}.example"), 3))
        .collect();
    run_together(&lab.client, &digs);
    let finished = clean(netwatch.stop());

    let targets = finished.targets();
    let dns = target(&targets, &id("udp", DNS_V4, Some(53)));
    assert_eq!(dns["verdict"], "degraded", "{dns}");
    assert_eq!(count(dns, "requests"), 4, "{dns}");
    assert_eq!(count(dns, "late"), 2, "{dns}");
    // Unanswered within the timeout: the two lost queries, and the two slow ones, whose
    // answers came 1.6 s after them (late).
    assert_eq!(count(dns, "unanswered"), 4, "{dns}");
    assert!(
        !finished
            .exit_findings()
            .iter()
            .any(|f| f["finding"] == "dns-blocked"),
        "the resolver answers (late): DNS is not blocked: {:#?}",
        finished.exit_findings()
    );
}

/// Case 3c: a rejection that comes after the timeout is still a rejection, not a sign of
/// a slow remote. The firewall drops the first SYN to tcp/7000 (a one-packet `limit`) and
/// rejects the retransmission 1 s later (as rate-limited ICMP errors make happen): with a
/// 500 ms timeout the only outcome is a late rejection. Nothing ever answered: the README's
/// table says `rejected` (degraded needs answers), never `degraded` nor `blackholed`.
#[test]
fn trust_a_late_rejection_is_still_a_rejection() {
    if !prerequisites(
        "trust_a_late_rejection_is_still_a_rejection",
        &["ip", "nft", "nc"],
    ) {
        return;
    }
    let lab = Lab::new();
    lab.nft(
        "insert rule inet lab forward tcp dport 7000 limit rate 1/minute burst 1 packets drop\n",
    );
    let netwatch = lab.start_netwatch(&["--iface", CLIENT_IFACE, "--json", "--timeout", "500ms"]);
    let out = Client::nc(SERVER_V4, 7000, 3).run(&lab.client);
    assert!(
        !out.status.success(),
        "the retransmitted SYN is refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sentinel = lab.wait_for_sentinel(&netwatch);
    let finished = clean(netwatch.stop());
    let targets = finished.targets();
    let refused = target(&targets, &id("tcp", SERVER_V4, Some(7000)));
    assert_eq!(
        (
            count(refused, "requests"),
            count(refused, "answered"),
            count(refused, "late")
        ),
        (1, 0, 1),
        "one request, refused after its timeout: {refused}"
    );
    assert_eq!(
        (refused["verdict"].as_str(), refused["reason"].as_str()),
        (Some("rejected"), Some("icmp-admin-prohibited")),
        "never answered, refused: {refused}; findings: {:#}",
        Value::Array(finished.exit_findings())
    );
    assert!(targets.contains_key(&sentinel));
}

/// `ipv6-broken` claims IPv6 fails where IPv4 works. DNS dropped for both families is no
/// evidence about IPv6; tcp/80 dropped over IPv6 only, while IPv4 is answered, is.
#[test]
fn trust_ipv6_broken_needs_a_working_ipv4_twin() {
    use netwatch_tests::lab::{DNS_V6, SERVER_V6};
    if !prerequisites(
        "trust_ipv6_broken_needs_a_working_ipv4_twin",
        &["ip", "nft", "dig", "dnsmasq", "curl", "nc"],
    ) {
        return;
    }
    let mut lab = Lab::new();
    lab.start_dns();
    lab.start_listener(LISTENER);
    let findings = |lab: &Lab, clients: &[Client]| -> Vec<Value> {
        let netwatch = lab.start_netwatch(WATCH);
        for client in clients {
            client.run(&lab.client);
        }
        lab.wait_for_sentinel(&netwatch);
        clean(netwatch.stop()).exit_findings()
    };
    // DNS blocked on both families, IPv4 web answered, nothing else over IPv6: the only
    // failing IPv6 target fails exactly like its IPv4 twin, which says nothing about IPv6.
    let both = findings(
        &lab,
        &[
            Client::dig(DNS_V4, "chat.example"),
            Client::dig(DNS_V6, "chat.example"),
            Client::curl(SERVER_V4, 80),
        ],
    );
    assert!(
        both.iter().any(|f| f["finding"] == "dns-blocked"),
        "the lab blocks DNS: {both:#?}"
    );
    assert!(
        !both.iter().any(|f| f["finding"] == "ipv6-broken"),
        "DNS fails the same way on IPv4: no evidence about IPv6: {both:#?}"
    );
    // tcp/80 dropped over IPv6 only: that is evidence.
    lab.nft("insert rule inet lab forward ip6 daddr 2001:db8:2::10 tcp dport 80 drop\n");
    let v6_only = findings(
        &lab,
        &[Client::curl(SERVER_V4, 80), Client::nc(SERVER_V6, 80, 1)],
    );
    assert!(
        v6_only.iter().any(|f| f["finding"] == "ipv6-broken"),
        "tcp/80 works over IPv4 and not over IPv6: {v6_only:#?}"
    );
}

/// ICMP "fragmentation needed" and `ICMPv6` "packet too big" are path-MTU signalling
/// (RFC 1191, RFC 8201), not a firewall refusing: an echo request too big for the firewall's
/// server-side link (MTU 1280) is never `rejected`.
#[test]
fn trust_path_mtu_signals_reject_nothing() {
    use netwatch_tests::lab::SERVER_V6;
    if !prerequisites(
        "trust_path_mtu_signals_reject_nothing",
        &["ip", "nft", "ping", "nc"],
    ) {
        return;
    }
    let lab = Lab::new();
    lab.firewall.ok("ip", &["link", "set", "f1", "mtu", "1280"]);
    lab.server.ok("ip", &["link", "set", "s0", "mtu", "1280"]);
    let netwatch = lab.start_netwatch(WATCH);
    for (family, server) in [("-4", SERVER_V4), ("-6", SERVER_V6)] {
        // Don't fragment, 1400 bytes: the firewall answers "too big" instead of forwarding,
        // and once the client knows the path MTU, ping's next sends fail locally.
        let out = lab.client.run(
            "ping",
            &[
                family, "-M", "do", "-s", "1400", "-c", "3", "-i", "0.3", "-W", "1", server,
            ],
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("mtu") || text.contains("too big") || text.contains("Frag needed"),
            "no path-MTU signal came back, so this test proves nothing: {text}"
        );
    }
    let sentinel = lab.wait_for_sentinel(&netwatch);
    let finished = clean(netwatch.stop());
    // One echo request per family left: the "too big" came back at once, and ping's later
    // sends failed locally. Each one signal, counted as such, never a rejection.
    let echoes = [id("icmp", SERVER_V4, None), id("icmpv6", SERVER_V6, None)];
    let targets = finished.targets();
    assert_eq!(
        targets.keys().collect::<BTreeSet<_>>(),
        echoes.iter().chain([&sentinel]).collect(),
        "the two echo targets and the sentinel: {targets:#?}"
    );
    for which in &echoes {
        let record = target(&targets, which);
        assert_eq!(
            ["requests", "answered", "rejected", "unanswered"].map(|f| count(record, f)),
            [1, 0, 0, 1],
            "{which:?}: one echo request, too big to pass, unanswered: {record}"
        );
        assert_ne!(record["verdict"], "rejected", "{which:?}: {record}");
    }
    assert_eq!(
        finished.kernel_counter("path_mtu"),
        2,
        "one \"fragmentation needed\" and one \"packet too big\": {}",
        finished.summary()
    );
}

/// A foreign tcx program held by a `foreign-tcx` process; detached when dropped.
struct ForeignTcx(Child);

impl ForeignTcx {
    fn attach(lab: &Lab, hooks: &str) -> Self {
        let ready = lab.dir().join(format!("foreign-tcx-{hooks}.ready"));
        let child = lab
            .client
            .command(FOREIGN_TCX)
            .arg(&ready)
            .args([CLIENT_IFACE, hooks])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("foreign-tcx");
        let mut foreign = Self(child);
        wait_until(Duration::from_secs(10), "the foreign tcx program", || {
            if let Ok(Some(status)) = foreign.0.try_wait() {
                panic!("foreign-tcx exited: {status}");
            }
            ready.exists()
        });
        foreign
    }
}

impl Drop for ForeignTcx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a target's record says, without timings.
type Outcome = (String, Option<String>, u64, u64, u64, u64);

/// The lab's standard exchange (blocked DNS, an open port, two rejected ones), watched by
/// netwatch, each target's outcome.
fn standard_outcomes(lab: &Lab) -> BTreeMap<TargetId, Outcome> {
    let netwatch = lab.start_netwatch(WATCH);
    Client::dig(DNS_V4, "chat.example").run(&lab.client);
    Client::curl(SERVER_V4, 80).run(&lab.client);
    Client::nc(SERVER_V4, 9000, 3).run(&lab.client);
    Client::nc(SERVER_V4, 8443, 3).run(&lab.client);
    lab.wait_for_sentinel(&netwatch);
    let finished = clean(netwatch.stop());
    finished
        .targets()
        .into_iter()
        .map(|(which, r)| {
            let outcome = (
                r["verdict"].as_str().unwrap_or_default().to_owned(),
                r["reason"].as_str().map(str::to_owned),
                count(&r, "requests"),
                count(&r, "answered"),
                count(&r, "rejected"),
                count(&r, "unanswered"),
            );
            (which, outcome)
        })
        .collect()
}

/// Case 4: A foreign tc program attached with tcx before netwatch starts, returning `TC_ACT_OK`
/// (tcx: `TCX_PASS`, which ends the chain): netwatch must run first, so the verdicts are
/// those without it — on ingress only, and on both hooks.
#[test]
fn trust_a_foreign_tcx_program_first_in_the_chain_changes_nothing() {
    if !prerequisites(
        "trust_a_foreign_tcx_program_first_in_the_chain_changes_nothing",
        &["ip", "nft", "dig", "dnsmasq", "curl", "nc"],
    ) {
        return;
    }
    let mut lab = Lab::new();
    lab.start_dns();
    lab.start_listener(LISTENER);
    let baseline = standard_outcomes(&lab);
    let verdict = |which: TargetId| baseline.get(&which).map(|o| (o.0.as_str(), o.1.as_deref()));
    // The lab itself behaves as expected without a foreign program.
    assert_eq!(
        verdict(id("udp", DNS_V4, Some(53))),
        Some(("blackholed", None))
    );
    assert_eq!(verdict(id("tcp", SERVER_V4, Some(80))), Some(("ok", None)));
    assert_eq!(
        verdict(id("tcp", SERVER_V4, Some(9000))),
        Some(("rejected", Some("tcp-reset")))
    );
    assert_eq!(
        verdict(id("tcp", SERVER_V4, Some(8443))),
        Some(("rejected", Some("icmp-host-prohibited")))
    );
    for hooks in ["ingress", "both"] {
        let _foreign = ForeignTcx::attach(&lab, hooks);
        let with_foreign = standard_outcomes(&lab);
        assert_eq!(
            with_foreign, baseline,
            "a foreign TCX_PASS program on {hooks} changed the verdicts"
        );
    }
}

/// Case 5: New targets from both CPUs at once: 100 remotes, each asked over TCP, DNS and ICMP
/// by bursts pinned to CPU 0 and CPU 1 simultaneously; a third of them dropped by the
/// firewall. Every target is counted exactly: answered ones `ok` with every request
/// answered, dropped ones `blackholed`, nothing else.
#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one lab scenario, read top to bottom"
)]
fn trust_many_new_targets_from_both_cpus_are_counted_exactly() {
    if !prerequisites(
        "trust_many_new_targets_from_both_cpus_are_counted_exactly",
        &["ip", "nft", "ping", "nc", "taskset", "ss"],
    ) {
        return;
    }
    let mut lab = Lab::new();
    let remotes: Vec<String> = (100..200).map(|n| format!("198.51.100.{n}")).collect();
    for remote in &remotes {
        lab.server
            .ok("ip", &["addr", "add", &format!("{remote}/24"), "dev", "s0"]);
    }
    let dropped: BTreeSet<&str> = remotes
        .iter()
        .enumerate()
        .filter(|(n, _)| n % 3 == 0)
        .map(|(_, r)| r.as_str())
        .collect();
    let list = |set: &mut dyn Iterator<Item = &str>| set.collect::<Vec<_>>().join(", ");
    // Inserted rules go first: the drops before the echo accept.
    lab.nft(&format!(
        "{OPEN_DNS}insert rule inet lab forward ip daddr 198.51.100.100-198.51.100.199 icmp type echo-request accept\n\
         insert rule inet lab forward ip daddr {{ {} }} drop\n",
        list(&mut dropped.iter().copied())
    ));
    let refs: Vec<&str> = remotes.iter().map(String::as_str).collect();
    lab.start_lab_dns(LAB_DNS, 0, &refs);
    lab.start_listener(LISTENER);
    let netwatch = lab.start_netwatch(WATCH);
    // The control: a target that exists before the burst, answered now, dropped at the end.
    let control = id("tcp", SERVER_V4, Some(80));
    Client::curl(SERVER_V4, 80).run(&lab.client);
    netwatch.wait_for(Duration::from_secs(10), "the control ok", |r| {
        r["type"] == "verdict" && target_id(r) == control && r["verdict"] == "ok"
    });

    // CPU 0 takes the even remotes, CPU 1 the odd ones: distinct new targets on both CPUs.
    let half = |cpu: usize| -> Vec<&str> {
        refs.iter()
            .enumerate()
            .filter(|(n, _)| n % 2 == cpu)
            .map(|(_, r)| *r)
            .collect()
    };
    let pings: Vec<Client> = refs
        .iter()
        .enumerate()
        .map(|(n, r)| Client::ping(r, 1).pinned(u32::try_from(n % 2).expect("0 or 1")))
        .collect();
    run_together(&lab.client, &pings);
    // The last new targets of the run: both bursts start at the same instant, one per CPU.
    let start_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        + 300;
    let bursts: Vec<Child> = (0..2u32)
        .map(|cpu| {
            lab.client
                .command("taskset")
                .args(["-c", &cpu.to_string(), LAB_BURST, "1500"])
                .arg(format!("--at={start_at_ms}"))
                .args(half(cpu as usize))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("lab-burst")
        })
        .collect();
    for mut burst in bursts {
        let status = burst.wait().expect("lab-burst");
        assert!(status.success(), "lab-burst: {status}");
    }
    // Wait until everything sent so far is judged, without a new target (a new one would
    // hide a slot left unread by the burst): drop the control and ask it again; its verdict
    // turns degraded one timeout later.
    lab.nft("insert rule inet lab forward ip daddr 198.51.100.10 tcp dport 80 drop\n");
    Client::nc(SERVER_V4, 80, 1).run(&lab.client);
    netwatch.wait_for(Duration::from_secs(15), "the control degraded", |r| {
        r["type"] == "verdict" && target_id(r) == control && r["verdict"] == "degraded"
    });
    let finished = clean(netwatch.stop());

    let targets = finished.targets();
    let mut wrong = Vec::new();
    for remote in &refs {
        for which in [
            id("tcp", remote, Some(80)),
            id("udp", remote, Some(53)),
            id("icmp", remote, None),
        ] {
            let Some(record) = targets.get(&which) else {
                wrong.push(format!("{which:?}: no target"));
                continue;
            };
            let (verdict, requests, answered, unanswered) = (
                record["verdict"].as_str().unwrap_or_default(),
                count(record, "requests"),
                count(record, "answered"),
                count(record, "unanswered"),
            );
            let expected = if dropped.contains(remote) {
                ("blackholed", 1, 0, 1)
            } else {
                ("ok", 1, 1, 0)
            };
            if (verdict, requests, answered, unanswered) != expected {
                wrong.push(format!("{which:?}: expected {expected:?}: {record}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong targets: {wrong:#?}",
        wrong.len()
    );
    assert_eq!(
        targets.len(),
        3 * refs.len() + 1,
        "unexpected targets: {:#?}",
        targets
            .keys()
            .filter(|(_, r, _)| !refs.contains(&r.as_str()))
            .collect::<Vec<_>>()
    );
    assert!(targets.contains_key(&control));
    assert_eq!(finished.kernel_counter("target_table_full"), 0);
}

/// Runs `dns-stream` in the client namespace from `port` and returns its lines, one per query.
fn dns_stream(lab: &Lab, server: &str, port: u16, wait_ms: u64, queries: &[&str]) -> Vec<String> {
    let queries: Vec<String> = queries.iter().map(|&q| q.to_owned()).collect();
    let stream = Client::dns_stream(DNS_STREAM, server, port, wait_ms, &queries);
    let out = stream.run(&lab.client);
    assert!(out.status.success(), "`{}` failed", stream.line());
    let outcomes: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    // One line per query: what the caller checks of each must not pass on none.
    assert_eq!(
        outcomes.len(),
        queries.len(),
        "`{}`: {outcomes:?}",
        stream.line()
    );
    outcomes
}

/// Case 6: A forwarder with a fixed source port reuses its DNS ids. While DNS is dropped it asks
/// three names (one retransmitted: same id, same question); once DNS is open it asks three
/// new names with the same ids, answered at once. The new questions are new requests, not
/// retransmits, and their answers are in time, not late.
#[test]
fn trust_a_fixed_port_forwarder_reusing_dns_ids_asks_new_questions() {
    if !prerequisites(
        "trust_a_fixed_port_forwarder_reusing_dns_ids_asks_new_questions",
        &["ip", "nft", "dig", "dnsmasq"],
    ) {
        return;
    }
    let mut lab = Lab::new();
    lab.start_dns();
    let netwatch = lab.start_netwatch(WATCH);
    let port = 40053;
    let lost = dns_stream(
        &lab,
        DNS_V4,
        port,
        300,
        &[
            "1:first-a.example",
            "2:first-b.example",
            "3:first-c.example",
            "3:first-c.example",
        ],
    );
    assert!(lost.iter().all(|l| l.starts_with("lost")), "{lost:?}");
    // Every dropped query judged unanswered: their entries are tombstones now.
    lab.wait_for_sentinel(&netwatch);

    lab.nft(OPEN_DNS);
    let answered = dns_stream(
        &lab,
        DNS_V4,
        port,
        900,
        &[
            "1:second-a.example",
            "2:second-b.example",
            "3:second-c.example",
        ],
    );
    assert!(
        answered.iter().all(|l| l.starts_with("answered")),
        "dnsmasq answers within the timeout: {answered:?}"
    );
    // Answered in time: the kernel counted them before dns-stream saw them.
    let finished = clean(netwatch.stop());

    let targets = finished.targets();
    let dns = target(&targets, &id("udp", DNS_V4, Some(53)));
    let counts = [
        "requests",
        "retransmits",
        "answered",
        "unanswered",
        "late",
        "rejected",
    ]
    .map(|field| (field, count(dns, field)));
    assert_eq!(
        counts,
        [
            ("requests", 6),
            ("retransmits", 1),
            ("answered", 3),
            ("unanswered", 3),
            ("late", 0),
            ("rejected", 0),
        ],
        "{dns}"
    );
}

/// `traffic-gen dns` pinned to `cpu`: distinct queries to `server`, for 2 s or 20,000 of
/// them, whichever comes first.
fn dns_flood(lab: &Lab, cpu: u32, server: &str) -> Child {
    lab.client
        .command("taskset")
        .args([
            "-c",
            &cpu.to_string(),
            env!("CARGO_BIN_EXE_traffic-gen"),
            "dns",
        ])
        .arg(format!("{server}:53"))
        .args(["2", "20000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("traffic-gen")
}

/// Waits for a [`dns_flood`] to end and returns how many queries it sent (its report).
fn flood_sent(flood: Child) -> u64 {
    let out = flood.wait_with_output().expect("traffic-gen");
    assert!(out.status.success(), "traffic-gen: {}", out.status);
    let report: Value = serde_json::from_slice(&out.stdout).expect("traffic-gen's report");
    let sent = report["sent"].as_u64().expect("sent");
    assert!(sent > 0, "the flood sent nothing: {report}");
    sent
}

/// Case 7: Busy traffic from both CPUs (DNS floods answered by dnsmasq, connects, pings), then
/// silence: nothing stays in flight, every request the clients sent is counted on its target
/// and resolved exactly once, and the accounting counters (`not_unicast`, `abandoned`,
/// `tombstone_lost`, `late_duplicate`) stay at zero: nothing here gives them cause.
#[test]
fn trust_in_flight_returns_to_zero_when_traffic_stops() {
    if !prerequisites(
        "trust_in_flight_returns_to_zero_when_traffic_stops",
        &[
            "ip", "nft", "dig", "dnsmasq", "curl", "nc", "ping", "taskset",
        ],
    ) {
        return;
    }
    let mut lab = Lab::new();
    lab.nft(OPEN_DNS);
    lab.start_dns();
    lab.start_listener(LISTENER);
    let netwatch = lab.start_netwatch(WATCH);
    let floods: Vec<(&str, Child)> = [(0, DNS_V4), (1, DNS2_V4)]
        .into_iter()
        .map(|(cpu, server)| (server, dns_flood(&lab, cpu, server)))
        .collect();
    let clients: Vec<Client> = (0..6u32)
        .flat_map(|n| {
            [
                Client::curl(SERVER_V4, 80).pinned(n % 2),
                Client::nc(SERVER_V4, 9000, 2).pinned(n % 2),
                Client::ping(SERVER_V4, 2).pinned(n % 2),
            ]
        })
        .collect();
    run_together(&lab.client, &clients);
    let flooded: Vec<(TargetId, u64)> = floods
        .into_iter()
        .map(|(server, flood)| (id("udp", server, Some(53)), flood_sent(flood)))
        .collect();
    let sentinel = lab.wait_for_sentinel(&netwatch);
    let finished = clean(netwatch.stop());

    let summary = finished.summary();
    assert_eq!(summary["in_flight"], 0, "{summary}");
    let targets = finished.targets();
    for (which, record) in &targets {
        assert_eq!(count(record, "in_flight"), 0, "{which:?}: {record}");
        let resolved = [
            "answered",
            "rejected",
            "unanswered",
            "untracked",
            "abandoned",
        ]
        .iter()
        .map(|field| count(record, field))
        .sum::<u64>();
        assert_eq!(
            resolved,
            count(record, "requests"),
            "{which:?}: every request resolved exactly once: {record}"
        );
    }
    // Every request the clients sent, on its target, and nothing else: the floods' queries
    // (dnsmasq may let some go unanswered under the flood), six connections answered, six
    // refused with a reset, twelve echo requests dropped, and the sentinel.
    let requests: BTreeMap<TargetId, u64> = targets
        .iter()
        .map(|(which, record)| (which.clone(), count(record, "requests")))
        .collect();
    let mut expected: BTreeMap<TargetId, u64> = flooded.into_iter().collect();
    expected.insert(id("tcp", SERVER_V4, Some(80)), 6);
    expected.insert(id("tcp", SERVER_V4, Some(9000)), 6);
    expected.insert(id("icmp", SERVER_V4, None), 12);
    expected.insert(sentinel, 1);
    assert_eq!(requests, expected, "requests per target");
    for (which, field) in [
        (id("tcp", SERVER_V4, Some(80)), "answered"),
        (id("tcp", SERVER_V4, Some(9000)), "rejected"),
        (id("icmp", SERVER_V4, None), "unanswered"),
    ] {
        let record = target(&targets, &which);
        assert_eq!(
            count(record, field),
            expected[&which],
            "{which:?}: {record}"
        );
    }
    // Nothing here is sent to a broadcast address, replaces a request in flight, loses a
    // tombstone or answers twice late.
    let counters = [
        "not_unicast",
        "abandoned",
        "tombstone_lost",
        "late_duplicate",
    ]
    .map(|counter| (counter, finished.kernel_counter(counter)));
    assert_eq!(
        counters,
        [
            ("not_unicast", 0),
            ("abandoned", 0),
            ("tombstone_lost", 0),
            ("late_duplicate", 0),
        ],
        "{summary}"
    );
}

/// The differential test's netwatch timeout. 2 s keeps every answer far from the boundary:
/// lab answers take milliseconds, a SYN retransmitted at 1 s (after a rate-limited ICMP
/// error was not sent) is refused long before 2 s, and the slow resolver answers at 3 s.
const DIFF_TIMEOUT_S: u64 = 2;

/// A resolver (`lab-dns`) answering every query [`DIFF_SLOW_MS`] after it came: late.
const SLOW_V4: &str = "198.51.100.55";
const SLOW_V6: &str = "2001:db8:2::55";
const DIFF_SLOW_MS: u64 = 3000;

/// Fixed seeds, run every time; one fresh seed (printed) is added unless
/// `NETWATCH_TRUST_SEED` replays a single one.
const DIFF_SEEDS: [u64; 3] = [0x7472_7573_7401, 0x7472_7573_7402, 0x7472_7573_7403];

/// Dropped by every differential firewall: the sentinels' ports.
const DIFF_SENTINELS: [u16; 2] = [5432, 5433];

/// A target of the randomized lab: how the firewall matches it and how clients reach it.
#[derive(Clone, Copy, Debug)]
enum DiffService {
    Tcp(&'static str, u16),
    DnsUdp(&'static str),
    DnsTcp(&'static str),
    Echo(&'static str),
}

/// A randomized firewall and the clients that go through it.
struct DiffPlan {
    /// nftables statements of the `out` chain (client to server).
    rules: Vec<String>,
    /// Run three at a time.
    clients: Vec<Client>,
    /// Fixed-port query streams, (resolver, source port): run once, then again after every
    /// earlier request was judged, with the same ids and new names.
    streams: Vec<(&'static str, u16)>,
}

impl DiffPlan {
    fn random(rng: &mut netwatch_tests::random::Rng) -> Self {
        use netwatch_tests::lab::{DNS_V6, SERVER_V6};
        const TCP_PORTS: [u16; 11] = [80, 443, 8888, 3306, 81, 8080, 9000, 8443, 25, 2222, 7000];
        const V4_REJECTS: [&str; 8] = [
            "reject with icmp type net-unreachable",
            "reject with icmp type host-unreachable",
            "reject with icmp type prot-unreachable",
            "reject with icmp type port-unreachable",
            "reject with icmp type net-prohibited",
            "reject with icmp type host-prohibited",
            "reject with icmp type admin-prohibited",
            "reject with icmpx type admin-prohibited",
        ];
        const V6_REJECTS: [&str; 7] = [
            "reject with icmpv6 type no-route",
            "reject with icmpv6 type admin-prohibited",
            "reject with icmpv6 type addr-unreachable",
            "reject with icmpv6 type port-unreachable",
            "reject with icmpv6 type policy-fail",
            "reject with icmpv6 type reject-route",
            "reject with icmpx type port-unreachable",
        ];
        let mut pick = |n: usize| usize::try_from(rng.below(n as u64)).expect("small");
        let mut services = Vec::new();
        for server in [SERVER_V4, SERVER_V6] {
            let mut ports = TCP_PORTS.to_vec();
            for _ in 0..4 {
                let port = ports.swap_remove(pick(ports.len()));
                services.push(DiffService::Tcp(server, port));
            }
        }
        for resolver in [DNS_V4, DNS2_V4, DNS_V6] {
            services.push(DiffService::DnsUdp(resolver));
            services.push(DiffService::DnsTcp(resolver));
        }
        services.push(DiffService::DnsUdp(SLOW_V4));
        services.push(DiffService::DnsUdp(SLOW_V6));
        for host in [SERVER_V4, SERVER_V6, DNS_V4] {
            services.push(DiffService::Echo(host));
        }
        let mut rules = vec![format!(
            "tcp dport {}-{} drop",
            DIFF_SENTINELS[0],
            DIFF_SENTINELS[DIFF_SENTINELS.len() - 1]
        )];
        for service in &services {
            let (address, what, tcp) = match *service {
                DiffService::Tcp(a, port) => (a, format!("tcp dport {port}"), true),
                DiffService::DnsUdp(a) => (a, "udp dport 53".to_owned(), false),
                DiffService::DnsTcp(a) => (a, "tcp dport 53".to_owned(), true),
                DiffService::Echo(a) if a.contains(':') => {
                    (a, "icmpv6 type echo-request".to_owned(), false)
                }
                DiffService::Echo(a) => (a, "icmp type echo-request".to_owned(), false),
            };
            let v6 = address.contains(':');
            let rejects: &[&str] = if v6 { &V6_REJECTS } else { &V4_REJECTS };
            // accept ×3, drop ×2, each reject type ×1, and for TCP a reset ×1.
            let action = match pick(5 + rejects.len() + usize::from(tcp)) {
                0..=2 => "accept",
                3 | 4 => "drop",
                n if n - 5 < rejects.len() => rejects[n - 5],
                _ => "reject with tcp reset",
            };
            let family = if v6 { "ip6" } else { "ip" };
            rules.push(format!("{family} daddr {address} {what} {action}"));
        }
        let clients = (0..24)
            .map(|n| match services[pick(services.len())] {
                DiffService::Tcp(a, port) => match pick(3) {
                    0 => Client::curl(a, port),
                    1 => Client::nc(a, port, 1),
                    _ => Client::curl_fast_open(a, port, &format!("n={n}")),
                },
                DiffService::DnsUdp(a) if a == SLOW_V4 || a == SLOW_V6 => {
                    Client::dig_waiting(a, &format!("s{n}.example"), 5)
                }
                DiffService::DnsUdp(a) => Client::dig(a, &format!("n{n}.example")),
                DiffService::DnsTcp(a) => Client::dig_tcp(a, &format!("t{n}.example")),
                DiffService::Echo(a) => Client::ping(a, u32::try_from(1 + pick(3)).expect("small")),
            })
            .collect();
        let streams = [DNS_V4, DNS2_V4, DNS_V6]
            .into_iter()
            .zip(40053..)
            .filter(|_| pick(2) == 0)
            .collect();
        Self {
            rules,
            clients,
            streams,
        }
    }

    /// The nftables script: the lab's own table replaced by this plan's.
    fn firewall(&self) -> String {
        format!(
            "add table inet lab\ndelete table inet lab\nadd table inet diff\ndelete table inet diff\n\
             table inet diff {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    \
             iifname \"f0\" jump out\n  }}\n  chain out {{\n    {}\n  }}\n}}\n",
            self.rules.join("\n    ")
        )
    }

    /// The query streams of `phase`: ids 1 to 3 from each stream's fixed port, a new name
    /// for every query.
    fn streams(&self, phase: &str) -> Vec<Client> {
        self.streams
            .iter()
            .map(|&(resolver, port)| {
                let queries: Vec<String> = (1..=3)
                    .map(|id| format!("{id}:{phase}{id}-{port}.example"))
                    .collect();
                Client::dns_stream(DNS_STREAM, resolver, port, 300, &queries)
            })
            .collect()
    }
}

/// (requests, answered, rejected, unanswered, retransmits, late, verdict, reason)
type DiffCounts = (u64, u64, u64, u64, u64, u64, String, Option<String>);

#[expect(clippy::too_many_lines, reason = "one round, read top to bottom")]
fn differential_round(lab: &Lab, round: usize, seed: u64) {
    use netwatch_tests::{
        dissector::{self, FIELDS, Packet},
        lab::{CLIENT_V4, CLIENT_V6},
    };
    let plan = DiffPlan::random(&mut netwatch_tests::random::Rng(seed));
    let firewall = plan.firewall();
    lab.nft(&firewall);
    let capture = Capture::start(
        &lab.client,
        CLIENT_IFACE,
        &lab.dir().join(format!("differential-{round}.pcap")),
    );
    let timeout = format!("{DIFF_TIMEOUT_S}s");
    let netwatch = lab.start_netwatch(&[
        "--iface",
        CLIENT_IFACE,
        "--json",
        "--timeout",
        &timeout,
        "--window",
        "10m",
    ]);
    for batch in plan.clients.chunks(3) {
        run_together(&lab.client, batch);
    }
    run_together(&lab.client, &plan.streams("a"));
    lab.wait_for_sentinel_on(&netwatch, DIFF_SENTINELS[0]);
    run_together(&lab.client, &plan.streams("b"));
    lab.wait_for_sentinel_on(&netwatch, DIFF_SENTINELS[1]);
    capture.sync(&lab.client, GATEWAY_V4);
    let finished = clean(netwatch.stop());
    let end = capture.stop();
    assert_eq!(end.dropped_by_kernel, 0, "{}", end.stderr);

    let packets: Vec<Packet> = tshark_fields(&end.path, FIELDS, None)
        .iter()
        .filter_map(|row| Packet::parse(row))
        .collect();
    let local = [
        CLIENT_V4.parse().expect("address"),
        CLIENT_V6.parse().expect("address"),
    ];
    let account = dissector::account(&packets, &local, DIFF_TIMEOUT_S * 1_000_000_000);
    let theirs: BTreeMap<TargetId, DiffCounts> = account
        .targets
        .iter()
        .map(|(which, c)| {
            let (verdict, reason) = c.verdict();
            assert_eq!(c.in_flight, 0, "{which:?} still in flight in the capture");
            (
                which.clone(),
                (
                    c.requests,
                    c.answered,
                    c.rejected,
                    c.unanswered,
                    c.retransmits,
                    c.late,
                    verdict.to_owned(),
                    reason.map(str::to_owned),
                ),
            )
        })
        .collect();
    // The dissector follows requests this host sends; the lab sends it none (no inbound
    // SYN, echo request or query), so every target netwatch reports must be egress.
    let records: Vec<&Value> = finished
        .records
        .iter()
        .filter(|r| r["type"] == "target")
        .collect();
    let inbound: Vec<&&Value> = records
        .iter()
        .filter(|r| r["direction"] != "egress")
        .collect();
    assert!(
        inbound.is_empty(),
        "seed {seed:#x}: targets of requests this host received, in a lab that sends it none: {inbound:#?}"
    );
    let ours: BTreeMap<TargetId, DiffCounts> = records
        .into_iter()
        .map(|r| (target_id(r), r))
        .map(|(which, r)| {
            let counts = (
                count(r, "requests"),
                count(r, "answered"),
                count(r, "rejected"),
                count(r, "unanswered"),
                count(r, "retransmits"),
                count(r, "late"),
                r["verdict"].as_str().unwrap_or_default().to_owned(),
                r["reason"].as_str().map(str::to_owned),
            );
            (which, counts)
        })
        .collect();
    let mut differences = Vec::new();
    for which in theirs.keys().chain(ours.keys()).collect::<BTreeSet<_>>() {
        let (a, b) = (ours.get(which), theirs.get(which));
        if a != b {
            differences.push(format!(
                "{which:?}\n    netwatch:  {a:?}\n    dissector: {b:?}"
            ));
        }
    }
    let clients: Vec<String> = plan
        .clients
        .iter()
        .chain(&plan.streams("a"))
        .chain(&plan.streams("b"))
        .map(Client::line)
        .collect();
    assert!(
        differences.is_empty(),
        "seed {seed:#x}: netwatch and the dissector disagree on {} of {} targets \
         (requests, answered, rejected, unanswered, retransmits, late, verdict, reason):\n{}\n\
         firewall:\n{firewall}\nclients (three at a time, then the streams):\n{}\ncapture: {}",
        differences.len(),
        theirs.len().max(ours.len()),
        differences.join("\n"),
        clients.join("\n"),
        end.path.display()
    );
    assert_eq!(finished.summary()["in_flight"], 0);
    eprintln!(
        "seed {seed:#x}: all {} targets agree ({} packets):",
        theirs.len(),
        packets.len()
    );
    for (which, counts) in &theirs {
        eprintln!("    {which:?} {counts:?}");
    }
}

/// Case 8: The differential test: randomized clients (dig over UDP and TCP, curl with and
/// without TCP Fast Open, nc, ping, fixed-port query streams reusing ids; IPv4 and IPv6)
/// through a randomized firewall (per target: accept, drop, every reject type) to servers
/// that answer at once or late, captured on the watched interface while netwatch runs. An
/// independent dissector of the capture (tshark's fields and the protocols' rules:
/// `netwatch_tests::dissector`) must give exactly netwatch's per-target requests, answered,
/// rejected, unanswered, retransmits, late answers, verdicts and reasons.
///
/// What is independent, and what is not: the counts are the dissector's own, from the
/// packets and the protocols' rules. The verdict is not: `dissector::Counts::verdict` turns
/// counts into a verdict by the README's table, the same five-arm rule as netwatch's
/// `verdict.rs`, shared by definition (the table *is* the contract). So the verdicts can only
/// disagree where the counts (or which of them were late) do; the comparison of verdicts
/// checks that netwatch applies its table to the counts it reports, not the table itself,
/// which `verdict.rs`'s unit tests cover.
#[test]
fn trust_netwatch_agrees_with_an_independent_dissector() {
    let seeds = netwatch_tests::random::env_u64("NETWATCH_TRUST_SEED").map_or_else(
        || {
            let mut seeds = DIFF_SEEDS.to_vec();
            seeds.push(netwatch_tests::random::seed("NETWATCH_TRUST_SEED"));
            seeds
        },
        |seed| vec![seed],
    );
    differential(
        "trust_netwatch_agrees_with_an_independent_dissector",
        Lab::new,
        &seeds,
    );
}

/// Case 8, over a VPN: the client's link is a tun device (raw IP packets, no link-layer
/// header), and the capture and netwatch are on it. Two rounds, of the fixed seeds whose
/// plans hold answers (TCP and DNS, both families), resets (both families), silent drops
/// and unreachables of most types (`NETWATCH_TRUST_SEED` replays any seed instead).
#[test]
fn trust_netwatch_agrees_with_an_independent_dissector_over_a_vpn() {
    let seeds = netwatch_tests::random::env_u64("NETWATCH_TRUST_SEED")
        .map_or_else(|| DIFF_SEEDS[1..].to_vec(), |seed| vec![seed]);
    differential(
        "trust_netwatch_agrees_with_an_independent_dissector_over_a_vpn",
        || Lab::over_a_tunnel(VPN),
        &seeds,
    );
}

/// The differential rounds of `seeds` in the lab `build` makes, its servers started.
fn differential(name: &str, build: impl FnOnce() -> Lab, seeds: &[u64]) {
    if !prerequisites(
        name,
        &[
            "ip", "nft", "dig", "dnsmasq", "curl", "nc", "ping", "ss", "tcpdump", "tshark",
        ],
    ) {
        return;
    }
    let mut lab = build();
    differential_servers(&mut lab);
    for (round, &seed) in seeds.iter().enumerate() {
        eprintln!(
            "{name}: differential round {round}: seed {seed:#x} (NETWATCH_TRUST_SEED={seed:#x} \
             replays it)"
        );
        differential_round(&lab, round, seed);
    }
}

/// The servers of the differential rounds: dnsmasq, a slow resolver, the TCP listener;
/// TCP Fast Open on both ends.
fn differential_servers(lab: &mut Lab) {
    Lab::sysctl(&lab.client, &["net.ipv4.tcp_fastopen=3"]);
    Lab::sysctl(&lab.server, &["net.ipv4.tcp_fastopen=3"]);
    for address in [SLOW_V4, SLOW_V6] {
        let cidr = if address.contains(':') {
            format!("{address}/64")
        } else {
            format!("{address}/24")
        };
        let mut args = vec!["addr", "add", &cidr, "dev", "s0"];
        if address.contains(':') {
            args.push("nodad");
        }
        lab.server.ok("ip", &args);
    }
    lab.start_dns();
    lab.start_lab_dns(LAB_DNS, DIFF_SLOW_MS, &[SLOW_V4, SLOW_V6]);
    lab.start_listener(LISTENER);
}

//! The namespace lab: the real netwatch binary watching the client's interface while real
//! clients (dig, curl, nc, ping) talk through a real nftables firewall to real servers
//! (dnsmasq, a TCP listener). Asserts netwatch's `--json` output.

use std::{process::Command, time::Duration};

use netwatch_tests::{
    clients::Client,
    lab::{
        CLIENT_IFACE, DNS_V4, DNS_V6, DNS2_V4, Finished, Lab, NetwatchRun, OPEN_DNS, SERVER_V4,
        SERVER_V6, TargetId, target_id,
    },
    prerequisites,
};
use serde_json::Value;

const LAB_TOOLS: &[&str] = &["ip", "nft", "dnsmasq", "dig", "curl", "nc", "ping"];
const LISTENER: &str = env!("CARGO_BIN_EXE_lab-listener");
const VPN: &str = env!("CARGO_BIN_EXE_lab-vpn");

fn id(proto: &str, remote: &str, port: Option<u64>) -> TargetId {
    (proto.to_owned(), remote.to_owned(), port)
}

fn assert_target(
    finished: &Finished,
    target: &TargetId,
    verdict: &str,
    reason: Option<&str>,
    requests: u64,
) -> Value {
    let targets = finished.targets();
    let record = targets.get(target).unwrap_or_else(|| {
        panic!(
            "no target record for {target:?}; targets: {:#?}",
            targets.keys()
        )
    });
    assert_eq!(
        record["verdict"], verdict,
        "verdict of {target:?}: {record}"
    );
    assert_eq!(
        record["reason"].as_str(),
        reason,
        "reason of {target:?}: {record}"
    );
    assert_eq!(
        record["requests"], requests,
        "requests of {target:?}: {record}"
    );
    assert_eq!(record["direction"], "egress");
    let counted = ["answered", "rejected", "unanswered"]
        .iter()
        .map(|field| record[*field].as_u64().expect("counter"))
        .sum::<u64>();
    assert_eq!(
        counted, requests,
        "every request of {target:?} resolved exactly once: {record}"
    );
    record.clone()
}

#[test]
fn lab_verdicts_match_what_the_firewall_does() {
    if !prerequisites("lab_verdicts_match_what_the_firewall_does", LAB_TOOLS) {
        return;
    }
    let mut lab = Lab::new();
    lab.start_dns();
    lab.start_listener(LISTENER);
    let netwatch = lab.start_netwatch(&["--iface", CLIENT_IFACE, "--json", "--timeout", "1s"]);
    the_inherited_firewall_is_judged(&lab, netwatch);
}

/// A client whose default routes go through a VPN (a tun device: raw IP packets, no
/// link-layer header), netwatch started with no `--iface`: it picks the tunnel, says what
/// it is, and every verdict, reason and count is the one [`lab_verdicts_match_what_the_firewall_does`]
/// finds on Ethernet.
#[test]
fn a_client_behind_a_vpn_is_judged_as_on_ethernet_with_no_iface() {
    if !prerequisites(
        "a_client_behind_a_vpn_is_judged_as_on_ethernet_with_no_iface",
        LAB_TOOLS,
    ) {
        return;
    }
    let mut lab = Lab::over_a_tunnel(VPN);
    lab.start_dns();
    lab.start_listener(LISTENER);
    let netwatch = lab.start_netwatch(&["--json", "--timeout", "1s"]);
    let watching = format!(
        "watching {CLIENT_IFACE} (tun, {}); Ctrl-C to stop",
        netwatch_tests::auto_attach()
    );
    assert!(
        netwatch.stderr_text().contains(&watching),
        "{}",
        netwatch.stderr_text()
    );
    let finished = the_inherited_firewall_is_judged(&lab, netwatch);
    let interfaces = &finished.summary()["interfaces"];
    assert_eq!(
        interfaces,
        &serde_json::json!([{
            "name": CLIENT_IFACE,
            "kind": "tun",
            "attach": netwatch_tests::auto_attach(),
            "state": "up",
        }]),
        "the default routes' interface only, not the VPN's own link"
    );
}

/// The lab's clients through [`INHERITED_FIREWALL`](netwatch_tests::lab::INHERITED_FIREWALL),
/// watched by `netwatch`, and the verdicts it must give: DNS dropped, TCP 80/443 allowed,
/// ports rejected each a different way, ICMP echo dropped; IPv4 and IPv6.
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn the_inherited_firewall_is_judged(lab: &Lab, netwatch: NetwatchRun) -> Finished {
    // DNS by name: UDP and TCP 53, IPv4 and IPv6, to two resolvers: all dropped.
    Client::dig(DNS_V4, "chat.example").run(&lab.client);
    Client::dig(DNS_V4, "api.example")
        .arg("AAAA")
        .run(&lab.client);
    Client::dig(DNS2_V4, "chat.example").run(&lab.client);
    Client::dig(DNS_V6, "chat.example").run(&lab.client);
    Client::dig_tcp_waiting(DNS_V4, "chat.example", 3).run(&lab.client);
    // TCP by address: allowed ports work.
    Client::curl(SERVER_V4, 80).run(&lab.client);
    Client::curl(SERVER_V4, 443).run(&lab.client);
    Client::curl(SERVER_V6, 80).run(&lab.client);
    Client::nc(SERVER_V4, 8888, 3).run(&lab.client);
    Client::nc(SERVER_V4, 3306, 3).run(&lab.client);
    // Rejected ports, each a different way.
    Client::nc(SERVER_V4, 8443, 3).run(&lab.client);
    Client::nc(SERVER_V6, 8443, 3).run(&lab.client);
    Client::nc(SERVER_V4, 9000, 3).run(&lab.client);
    Client::nc(SERVER_V4, 7000, 3).run(&lab.client);
    // A silently dropped port; the SYN is retransmitted within nc's wait.
    Client::nc(SERVER_V4, 5432, 3).run(&lab.client);
    // ICMP echo is dropped both ways of addressing.
    Client::ping(SERVER_V4, 3).run(&lab.client);
    Client::ping(SERVER_V6, 2).run(&lab.client);
    // Not a request netwatch tracks: UDP to a port other than 53.
    Client::nc_udp(SERVER_V4, 5000, 1).run(&lab.client);

    // The last requests resolve within timeout + one poll.
    netwatch.wait_for(
        Duration::from_secs(10),
        "the ICMPv6 blackhole verdict",
        |r| r["type"] == "verdict" && r["proto"] == "icmpv6" && r["verdict"] == "blackholed",
    );
    std::thread::sleep(Duration::from_millis(1500));
    let finished = netwatch.stop();
    assert!(
        finished.status.success(),
        "netwatch exit: {:?}: {}",
        finished.status,
        finished.stderr
    );

    let udp = |remote: &str| id("udp", remote, Some(53));
    let tcp = |remote: &str, port| id("tcp", remote, Some(port));
    let dns = assert_target(&finished, &udp(DNS_V4), "blackholed", None, 2);
    assert_eq!(dns["unanswered"], 2);
    let mut names: Vec<&str> = dns["names"]
        .as_array()
        .expect("DNS names")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["api.example", "chat.example"]);
    assert_target(&finished, &udp(DNS2_V4), "blackholed", None, 1);
    assert_target(&finished, &udp(DNS_V6), "blackholed", None, 1);
    let tcp_dns = assert_target(&finished, &tcp(DNS_V4, 53), "blackholed", None, 1);
    assert!(
        tcp_dns["retransmits"].as_u64() >= Some(1),
        "SYN retransmits are not requests: {tcp_dns}"
    );
    for port in [80, 443, 8888, 3306] {
        let ok = assert_target(&finished, &tcp(SERVER_V4, port), "ok", None, 1);
        assert_eq!(ok["answered"], 1);
        assert!(
            ok["latency_p50_ms"].as_f64().is_some(),
            "answered targets have a latency: {ok}"
        );
    }
    assert_target(&finished, &tcp(SERVER_V6, 80), "ok", None, 1);
    assert_target(
        &finished,
        &tcp(SERVER_V4, 8443),
        "rejected",
        Some("icmp-host-prohibited"),
        1,
    );
    assert_target(
        &finished,
        &tcp(SERVER_V6, 8443),
        "rejected",
        Some("icmp6-adm-prohibited"),
        1,
    );
    assert_target(
        &finished,
        &tcp(SERVER_V4, 9000),
        "rejected",
        Some("tcp-reset"),
        1,
    );
    assert_target(
        &finished,
        &tcp(SERVER_V4, 7000),
        "rejected",
        Some("icmp-admin-prohibited"),
        1,
    );
    let dropped = assert_target(&finished, &tcp(SERVER_V4, 5432), "blackholed", None, 1);
    assert!(dropped["retransmits"].as_u64() >= Some(1), "{dropped}");
    assert_target(
        &finished,
        &id("icmp", SERVER_V4, None),
        "blackholed",
        None,
        3,
    );
    assert_target(
        &finished,
        &id("icmpv6", SERVER_V6, None),
        "blackholed",
        None,
        2,
    );

    // Nothing else: no false verdicts, no untracked UDP port.
    let expected = 16;
    assert_eq!(
        finished.targets().len(),
        expected,
        "unexpected targets: {:#?}",
        finished.targets().keys()
    );
    // Verdict records came out as things resolved, before the exit records.
    let verdicts = finished.verdicts();
    assert!(
        verdicts
            .iter()
            .any(|r| target_id(r) == udp(DNS_V4) && r["verdict"] == "blackholed"),
        "no blackholed verdict record for DNS: {verdicts:#?}"
    );
    let summary = finished
        .records
        .iter()
        .find(|r| r["type"] == "summary")
        .expect("summary record");
    assert_eq!(summary["lost_requests"], 0);
    finished
}

#[test]
fn opening_the_firewall_turns_dns_back_to_ok_while_running() {
    if !prerequisites(
        "opening_the_firewall_turns_dns_back_to_ok_while_running",
        LAB_TOOLS,
    ) {
        return;
    }
    let mut lab = Lab::new();
    lab.start_dns();
    let netwatch = lab.start_netwatch(&[
        "--iface",
        CLIENT_IFACE,
        "--json",
        "--timeout",
        "1s",
        "--window",
        "3s",
    ]);
    let is_dns = |r: &Value, verdict: &str| {
        r["type"] == "verdict"
            && r["proto"] == "udp"
            && r["remote"] == DNS_V4
            && r["verdict"] == verdict
    };
    Client::dig(DNS_V4, "chat.example").run(&lab.client);
    netwatch.wait_for(Duration::from_secs(5), "DNS blackholed", |r| {
        is_dns(r, "blackholed")
    });

    lab.nft(OPEN_DNS);
    // Let the failure age out of the 3 s window, then resolve a name.
    std::thread::sleep(Duration::from_millis(3500));
    let out = lab.client.run(
        "dig",
        &[
            "+short",
            "+tries=1",
            "+timeout=2",
            &format!("@{DNS_V4}"),
            "chat.example",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        SERVER_V4,
        "DNS works once opened"
    );
    netwatch.wait_for(Duration::from_secs(5), "DNS back to ok", |r| {
        is_dns(r, "ok")
    });

    let finished = netwatch.stop();
    let record = assert_target(&finished, &id("udp", DNS_V4, Some(53)), "ok", None, 2);
    assert_eq!(
        (record["answered"].as_u64(), record["unanswered"].as_u64()),
        (Some(1), Some(1))
    );
}

/// Links and programs named netwatch_* system-wide, as bpftool lists them.

#[test]
fn nothing_stays_attached_after_any_exit() {
    if !prerequisites(
        "nothing_stays_attached_after_any_exit",
        &["ip", "nft", "bpftool"],
    ) {
        return;
    }
    let lab = Lab::new();
    let before = netwatch_tests::lab::netwatch_bpf_objects();
    // Below Linux 6.6 netwatch attaches clsact filters, not tcx links: no links, and a
    // SIGKILL leaves its filters (removed by the next start, see
    // clsact_mode_removes_its_filters_and_the_qdisc_it_created).
    let tcx = netwatch_tests::auto_attach() == "tcx";
    let signals: &[i32] = if tcx {
        &[libc::SIGTERM, libc::SIGINT, libc::SIGKILL]
    } else {
        &[libc::SIGTERM, libc::SIGINT]
    };
    for &signal in signals {
        let netwatch = lab.start_netwatch(&["--iface", CLIENT_IFACE, "--json"]);
        let during = netwatch_tests::lab::netwatch_bpf_objects();
        // Two tcx links (none with clsact filters) and the skb:kfree_skb raw tracepoint link
        // of the local drop program, where this kernel runs it (it says so when not).
        let drops = usize::from(
            !netwatch
                .stderr_text()
                .contains("drops on this host are not counted"),
        );
        // The tcp:tcp_retransmit_skb raw tracepoint link of the retransmission program,
        // likewise.
        let retransmits = usize::from(
            !netwatch
                .stderr_text()
                .contains("stall after the handshake are not followed"),
        );
        // And the six socket owner programs, each with its cgroup link, where netwatch sees
        // a cgroup2 mount (under `ip netns exec` it does not, and says so).
        let owners = 6 * usize::from(
            !netwatch
                .stderr_text()
                .contains("processes behind requests are not named"),
        );
        assert_eq!(
            during.0,
            before.0 + if tcx { 2 } else { 0 } + drops + retransmits + owners,
            "tcx links and the drop and retransmission programs' links while running \
             (signal {signal})"
        );
        assert_eq!(
            during.1,
            before.1 + 2 + drops + retransmits + owners,
            "two tc programs, the drop and retransmission programs while running (signal \
             {signal})"
        );
        let finished = netwatch.stop_with(signal);
        if signal != libc::SIGKILL {
            assert!(
                finished.status.success(),
                "clean exit on signal {signal}: {}",
                finished.stderr
            );
        }
        // The kernel releases a tcx link when its last fd closes, also after SIGKILL.
        netwatch_tests::lab::wait_until(Duration::from_secs(5), "links to go", || {
            netwatch_tests::lab::bpf_objects_back_to(before)
        });
    }
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn clsact_mode_removes_its_filters_and_the_qdisc_it_created() {
    if !prerequisites(
        "clsact_mode_removes_its_filters_and_the_qdisc_it_created",
        &["ip", "nft", "tc", "curl"],
    ) {
        return;
    }
    let mut lab = Lab::new();
    lab.start_listener(LISTENER);
    let qdiscs = |lab: &Lab| {
        String::from_utf8_lossy(
            &lab.client
                .ok("tc", &["qdisc", "show", "dev", CLIENT_IFACE])
                .stdout,
        )
        .into_owned()
    };
    assert!(!qdiscs(&lab).contains("clsact"));
    let netwatch = lab.start_netwatch(&[
        "--iface",
        CLIENT_IFACE,
        "--json",
        "--attach",
        "clsact",
        "--timeout",
        "1s",
    ]);
    assert!(
        netwatch.stderr_text().contains("c0 (ethernet, clsact)"),
        "{}",
        netwatch.stderr_text()
    );
    assert!(qdiscs(&lab).contains("clsact"));
    let filters = lab
        .client
        .ok("tc", &["filter", "show", "dev", CLIENT_IFACE, "egress"]);
    assert!(String::from_utf8_lossy(&filters.stdout).contains("netwatch_egress"));
    // The clsact path works end to end like tcx.
    Client::curl(SERVER_V4, 80).run(&lab.client);
    Client::nc(SERVER_V4, 9000, 3).run(&lab.client);
    netwatch.wait_for(Duration::from_secs(5), "tcp/9000 rejected", |r| {
        r["type"] == "verdict" && r["port"] == 9000 && r["verdict"] == "rejected"
    });
    let finished = netwatch.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert_target(&finished, &id("tcp", SERVER_V4, Some(80)), "ok", None, 1);
    assert!(
        !qdiscs(&lab).contains("clsact"),
        "the qdisc netwatch created is gone"
    );

    // A clsact qdisc that was there before stays, with its other filters.
    lab.client
        .ok("tc", &["qdisc", "add", "dev", CLIENT_IFACE, "clsact"]);
    // A classic-BPF filter that matches nothing: this kernel has no other classifier.
    lab.client.ok(
        "tc",
        &[
            "filter",
            "add",
            "dev",
            CLIENT_IFACE,
            "ingress",
            "bpf",
            "bytecode",
            "1,6 0 0 0,",
        ],
    );
    let netwatch = lab.start_netwatch(&["--iface", CLIENT_IFACE, "--json", "--attach", "clsact"]);
    let finished = netwatch.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(
        qdiscs(&lab).contains("clsact"),
        "a pre-existing qdisc stays"
    );
    let left = lab
        .client
        .ok("tc", &["filter", "show", "dev", CLIENT_IFACE, "ingress"]);
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        left.contains("bytecode") && !left.contains("netwatch"),
        "only its own filters go: {left}"
    );

    // SIGKILL leaves the filters (the kernel keeps them); the next start, in any mode,
    // removes these orphans when no other netwatch runs (tests run one at a time).
    let netwatch = lab.start_netwatch(&["--iface", CLIENT_IFACE, "--json", "--attach", "clsact"]);
    let _killed = netwatch.stop_with(libc::SIGKILL);
    let filters = |direction: &str| {
        String::from_utf8_lossy(
            &lab.client
                .ok("tc", &["filter", "show", "dev", CLIENT_IFACE, direction])
                .stdout,
        )
        .into_owned()
    };
    assert!(
        filters("egress").contains("netwatch_egress"),
        "orphaned after SIGKILL"
    );
    let netwatch = lab.start_netwatch(&["--iface", CLIENT_IFACE, "--json"]);
    assert!(
        netwatch
            .stderr_text()
            .contains("removed a netwatch_egress filter left on c0 by a netwatch that was killed"),
        "{}",
        netwatch.stderr_text()
    );
    let finished = netwatch.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    for direction in ["egress", "ingress"] {
        let left = filters(direction);
        assert!(!left.contains("netwatch"), "orphans removed: {left}");
    }
    assert!(
        filters("ingress").contains("bytecode"),
        "the foreign filter stays"
    );
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn bad_input_gives_one_line_and_a_nonzero_exit() {
    if !prerequisites(
        "bad_input_gives_one_line_and_a_nonzero_exit",
        &["ip", "nft", "setpriv", "nc", "bpftool"],
    ) {
        return;
    }
    let mut lab = Lab::new();
    let binary = netwatch_tests::lab::netwatch_binary();
    let binary = binary.to_string_lossy();
    // An interface that exists, but in another namespace (the firewall's).
    lab.firewall.ok(
        "ip",
        &[
            "link",
            "add",
            "nw-elsewhere0",
            "type",
            "veth",
            "peer",
            "name",
            "nw-elsewhere1",
        ],
    );
    // A device that carries no IP (a CAN bus: link type 280).
    lab.client.tun_of_link_type("nw-can0", 280);
    // A port already taken for --metrics.
    // -k: the probe below must not be the connection that ends the listener.
    let mut taken = lab.client.command("nc");
    taken.args(["-lk", "127.0.0.1", "9555"]);
    lab.spawn(taken);
    netwatch_tests::lab::wait_until(Duration::from_secs(5), "the port to be taken", || {
        lab.client
            .run("nc", &["-z", "127.0.0.1", "9555"])
            .status
            .success()
    });
    let cases: Vec<(Vec<&str>, &str, i32)> = vec![
        (
            vec!["--iface", "nw-missing0"],
            "no such interface: nw-missing0",
            4,
        ),
        (
            vec!["--iface", "nw-elsewhere0"],
            "no such interface: nw-elsewhere0",
            4,
        ),
        (
            vec!["--iface", "nw-can0"],
            "cannot watch nw-can0 (link type 280, CAN): it has no IP traffic netwatch can read",
            4,
        ),
        (vec!["--iface", ""], "interface name is empty", 2),
        (
            vec!["--iface", "a-name-far-too-long"],
            "at most 15 bytes",
            2,
        ),
        (vec!["--iface", "bad/name"], "not a valid interface name", 2),
        (vec!["--timeout", "0s"], "greater than zero", 2),
        (vec!["--timeout", "-1s"], "--timeout", 2),
        (vec!["--timeout", "5"], "with a unit", 2),
        (vec!["--timeout", "99999999999999999999h"], "--timeout", 2),
        (vec!["--timeout", "2h"], "at most 1h", 2),
        (vec!["--window", "10y"], "at most", 2),
        (vec!["--window", "0ms"], "greater than zero", 2),
        (vec!["--duration", "soon"], "--duration", 2),
        (vec!["--duration", "0s"], "greater than zero", 2),
        (vec!["--attach", "xdp"], "invalid value 'xdp'", 2),
        (vec!["--metrics", "localhost"], "expected PORT", 2),
        (vec!["--metrics", "99999"], "expected PORT", 2),
        (vec!["--fail-on", "broken"], "not a verdict", 2),
        (vec!["--json", "--plain"], "cannot be used with", 2),
        (vec!["--bogus"], "--bogus", 2),
        (vec!["completions", "tcsh"], "tcsh", 2),
        (
            vec![
                "--iface",
                CLIENT_IFACE,
                "--metrics",
                "127.0.0.1:9555",
                "--duration",
                "5s",
            ],
            "could not listen on 127.0.0.1:9555",
            1,
        ),
    ];
    for (args, expected, code) in cases {
        let out = lab.client.run(&binary, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{args:?}: one line: {stderr}"
        );
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
    }
    // Output that cannot be written: one line, non-zero, and nothing left attached.
    let before = netwatch_tests::lab::netwatch_bpf_objects();
    let out = lab
        .client
        .command(&binary)
        .args(["--iface", CLIENT_IFACE, "--json", "--duration", "2s"])
        .stdout(std::fs::File::create("/dev/full").expect("/dev/full"))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("writing to stdout") && stderr.contains("No space left"),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().filter(|l| l.contains("error")).count(),
        1,
        "{stderr}"
    );
    netwatch_tests::lab::wait_until(Duration::from_secs(10), "nothing left attached", || {
        netwatch_tests::lab::bpf_objects_back_to(before)
    });
    // Without privileges: one line naming what is missing, nothing attached.
    let out = lab.client.run(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            &binary,
            "--iface",
            CLIENT_IFACE,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("missing capabilities CAP_BPF, CAP_NET_ADMIN"),
        "{stderr}"
    );
}

#[test]
fn interfaces_that_go_away_are_reported_and_attached_again_when_back() {
    if !prerequisites(
        "interfaces_that_go_away_are_reported_and_attached_again_when_back",
        LAB_TOOLS,
    ) {
        return;
    }
    let mut lab = Lab::new();
    lab.start_listener(LISTENER);
    let add_spare = |lab: &Lab| {
        lab.client.ok(
            "ip",
            &[
                "link", "add", "spare0", "type", "veth", "peer", "name", "spare1",
            ],
        );
        lab.client.ok("ip", &["link", "set", "spare0", "up"]);
    };
    add_spare(&lab);
    let netwatch = lab.start_netwatch(&[
        "--iface",
        CLIENT_IFACE,
        "--iface",
        "spare0",
        "--json",
        "--timeout",
        "1s",
    ]);
    let interface_record = |state: &'static str| {
        move |r: &Value| r["type"] == "interface" && r["name"] == "spare0" && r["state"] == state
    };
    lab.client.ok("ip", &["link", "set", "spare0", "down"]);
    netwatch.wait_for(
        Duration::from_secs(5),
        "spare0 down",
        interface_record("down"),
    );
    lab.client.ok("ip", &["link", "set", "spare0", "up"]);
    netwatch.wait_for(Duration::from_secs(5), "spare0 up", interface_record("up"));
    lab.client.ok("ip", &["link", "del", "spare0"]);
    netwatch.wait_for(
        Duration::from_secs(5),
        "spare0 gone",
        interface_record("gone"),
    );

    // The other interface is still watched.
    Client::curl(SERVER_V4, 80).run(&lab.client);
    netwatch.wait_for(Duration::from_secs(5), "tcp/80 ok on c0", |r| {
        r["type"] == "verdict" && r["port"] == 80 && r["verdict"] == "ok"
    });

    // Back under a new index: attached again.
    let before = netwatch.records().len();
    add_spare(&lab);
    netwatch_tests::lab::wait_until(Duration::from_secs(5), "spare0 attached again", || {
        netwatch.records()[before..]
            .iter()
            .any(|r| interface_record("up")(r) && r["attach"] == netwatch_tests::auto_attach())
    });
    let finished = netwatch.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let summary = finished
        .records
        .iter()
        .find(|r| r["type"] == "summary")
        .expect("summary");
    let states: Vec<(&str, &str)> = summary["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap_or(""),
                i["state"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(states, [("c0", "up"), ("spare0", "up")]);
}

#[test]
fn two_instances_watch_the_same_interface_side_by_side() {
    if !prerequisites(
        "two_instances_watch_the_same_interface_side_by_side",
        LAB_TOOLS,
    ) {
        return;
    }
    let mut lab = Lab::new();
    lab.start_listener(LISTENER);
    let first = lab.start_netwatch(&["--iface", CLIENT_IFACE, "--json", "--timeout", "1s"]);
    let second = lab.start_netwatch(&["--iface", CLIENT_IFACE, "--json", "--timeout", "1s"]);
    Client::curl(SERVER_V4, 80).run(&lab.client);
    Client::nc(SERVER_V4, 9000, 3).run(&lab.client);
    for run in [&first, &second] {
        run.wait_for(Duration::from_secs(5), "tcp/9000 rejected", |r| {
            r["type"] == "verdict" && r["port"] == 9000 && r["verdict"] == "rejected"
        });
    }
    // Stopping one leaves the other attached and working.
    let finished = first.stop();
    assert_target(&finished, &id("tcp", SERVER_V4, Some(80)), "ok", None, 1);
    Client::nc(SERVER_V4, 8888, 3).run(&lab.client);
    second.wait_for(
        Duration::from_secs(5),
        "tcp/8888 ok after the first left",
        |r| r["type"] == "verdict" && r["port"] == 8888 && r["verdict"] == "ok",
    );
    let finished = second.stop();
    assert_target(&finished, &id("tcp", SERVER_V4, Some(80)), "ok", None, 1);
    assert_target(
        &finished,
        &id("tcp", SERVER_V4, Some(9000)),
        "rejected",
        Some("tcp-reset"),
        1,
    );
}

/// A netwatch's clsact filters are never taken for a killed one's orphans by another
/// netwatch starting on the interface — whatever the first one's binary is called (a scan of
/// /proc for the name "netwatch" missed it, and the second removed its filters).
#[test]
fn a_renamed_netwatch_keeps_its_filters_when_another_starts() {
    if !prerequisites(
        "a_renamed_netwatch_keeps_its_filters_when_another_starts",
        &["ip", "nft", "tc", "nc"],
    ) {
        return;
    }
    let mut lab = Lab::new();
    lab.start_listener(LISTENER);
    let renamed = lab.dir().join("nw-renamed");
    std::fs::copy(netwatch_tests::lab::netwatch_binary(), &renamed).expect("copying netwatch");
    let clsact = [
        "--iface",
        CLIENT_IFACE,
        "--json",
        "--attach",
        "clsact",
        "--timeout",
        "1s",
    ];
    let mut command = lab.client.command(&renamed.to_string_lossy());
    command.args(clsact);
    let first = NetwatchRun::start(command);
    let second = lab.start_netwatch(&clsact);
    assert!(
        !second.stderr_text().contains("left on"),
        "the second took the first's filters for orphans: {}",
        second.stderr_text()
    );
    let finished = second.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    // The first still sees new requests.
    Client::nc(SERVER_V4, 9000, 3).run(&lab.client);
    first.wait_for(Duration::from_secs(5), "tcp/9000 rejected", |r| {
        r["type"] == "verdict" && r["port"] == 9000 && r["verdict"] == "rejected"
    });
    let finished = first.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let filters = lab
        .client
        .ok("tc", &["filter", "show", "dev", CLIENT_IFACE, "egress"]);
    assert!(
        !String::from_utf8_lossy(&filters.stdout).contains("netwatch"),
        "each removed its own filters on exit"
    );
}

/// A child process, killed and reaped when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether map reads on a held descriptor may need `CAP_BPF` here: kernels before 6.5 may
/// check `kernel.unprivileged_bpf_disabled` at every bpf(2) call (Debian's 5.10 does, its
/// 6.1 does not: the matrix saw both), 6.5 moved the check into map creation and program
/// load.
fn map_reads_may_need_cap_bpf() -> bool {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .is_ok_and(|v| v.trim() != "0");
    disabled && netwatch_tests::kernel_version() < (6, 5)
}

#[test]
fn runs_with_only_bpf_net_admin_and_perfmon_and_keeps_only_net_admin() {
    if !prerequisites(
        "runs_with_only_bpf_net_admin_and_perfmon_and_keeps_only_net_admin",
        &["ip", "nft", "setpriv", "nc"],
    ) {
        return;
    }
    let mut lab = Lab::new();
    lab.start_listener(LISTENER);
    let binary = netwatch_tests::lab::netwatch_binary();
    netwatch_tests::lab::unlimited_memlock_for_old_kernels();
    let mut command = lab.client.command("setpriv");
    command
        .args(netwatch_tests::lab::as_nobody_with("bpf,net_admin,perfmon"))
        .arg(&binary)
        .args(["--iface", CLIENT_IFACE, "--json", "--timeout", "1s"]);
    let netwatch = NetwatchRun::start(command);
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", netwatch.pid())).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| u64::from_str_radix(v.trim(), 16).expect("hex"))
            .expect("cap line")
    };
    // Where map reads may need CAP_BPF too, netwatch asks the kernel and keeps it only if
    // refused without it; that it then still reads its maps, the verdicts below show.
    let net_admin = 1u64 << 12;
    let allowed: &[u64] = if map_reads_may_need_cap_bpf() {
        &[net_admin, net_admin | (1u64 << 39)]
    } else {
        &[net_admin]
    };
    assert!(
        allowed.contains(&field("CapEff:")),
        "only CAP_NET_ADMIN (and CAP_BPF where the kernel needs it) stays effective: {status}"
    );
    assert_eq!(
        field("CapPrm:"),
        field("CapEff:"),
        "nothing more stays permitted than effective: {status}"
    );
    Client::nc(SERVER_V4, 8888, 3).run(&lab.client);
    Client::nc(SERVER_V4, 9000, 3).run(&lab.client);
    netwatch.wait_for(Duration::from_secs(5), "tcp/9000 rejected", |r| {
        r["type"] == "verdict" && r["port"] == 9000 && r["verdict"] == "rejected"
    });
    let finished = netwatch.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert_target(&finished, &id("tcp", SERVER_V4, Some(8888)), "ok", None, 1);

    // Each of the three is needed: without one, one line naming it.
    for (caps, missing) in [
        ("net_admin,perfmon", "CAP_BPF"),
        ("bpf,perfmon", "CAP_NET_ADMIN"),
        ("bpf,net_admin", "CAP_PERFMON"),
    ] {
        let mut args = netwatch_tests::lab::as_nobody_with(caps);
        args.push(binary.to_string_lossy().into_owned());
        args.extend(["--iface".into(), CLIENT_IFACE.into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = lab.client.run("setpriv", &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{caps}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{caps}: {stderr}");
        assert!(
            stderr.contains(&format!("missing capability {missing}")),
            "{caps}: {stderr}"
        );
    }
}

/// The live view filtered for `port`: its row stays, `gone`'s goes (a filter hiding every
/// row would pass the second half alone).
fn filtered_for(screen: &str, port: &str, gone: &str) -> bool {
    let out = |needle: &str| {
        screen
            .lines()
            .any(|l| l.contains(needle) && l.contains(" out "))
    };
    screen.contains(&format!("filter: {port}")) && out(&format!(" {port} ")) && !out(gone)
}

#[test]
fn the_live_view_in_a_real_terminal_shows_what_an_operator_needs() {
    if !prerequisites(
        "the_live_view_in_a_real_terminal_shows_what_an_operator_needs",
        &["ip", "nft", "tmux", "dig", "nc", "dnsmasq", "curl"],
    ) {
        return;
    }
    let mut lab = Lab::new();
    lab.start_dns();
    lab.start_listener(LISTENER);
    let binary = netwatch_tests::lab::netwatch_binary();
    let command = format!(
        "ip netns exec {} {} --iface {CLIENT_IFACE} --timeout 1s; echo EXITED-$?; sleep 60",
        lab.client.name,
        binary.display()
    );
    let terminal = netwatch_tests::terminal::Tmux::start(&command, 180, 50);
    let screen = || terminal.screen();
    netwatch_tests::lab::wait_until(Duration::from_secs(20), "the live view", || {
        screen().contains("Targets")
    });

    Client::dig(DNS_V4, "chat.example").run(&lab.client);
    Client::curl(SERVER_V4, 80).run(&lab.client);
    Client::nc(SERVER_V4, 8443, 3).run(&lab.client);
    netwatch_tests::lab::wait_until(Duration::from_secs(10), "the DNS verdict on screen", || {
        screen()
            .lines()
            .any(|l| l.contains("blackholed") && l.contains(DNS_V4))
    });
    // The other rows, the rollup and the diagnosis follow within a poll or two: wait for
    // them with a bound rather than a fixed sleep (an emulated CPU takes longer).
    netwatch_tests::lab::wait_until(Duration::from_secs(15), "the whole screen", || {
        let text = screen();
        text.contains("[dns-blocked]")
            && text.contains("Ask the firewall team for")
            && text.contains("icmp-host-prohibited")
            && text.lines().any(|l| l.contains(" 80 ") && l.contains("ok"))
    });
    let text = screen();
    let row = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle) && l.contains(" out "))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        row(DNS_V4).contains("chat.example"),
        "unanswered name shown: {text}"
    );
    assert!(
        row(" 8443 ").contains("rejected") && row(" 8443 ").contains("icmp-host-prohibited"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.contains(" 80 ") && l.contains("ok")),
        "{text}"
    );
    assert!(
        text.contains(&format!("c0 (ethernet, {})", netwatch_tests::auto_attach()))
            && text.contains("evictions 0"),
        "status line: {text}"
    );
    assert!(
        text.contains("UDP/53") && text.contains("0/1 answered"),
        "rollup: {text}"
    );
    assert!(
        text.contains("[dns-blocked]") && text.contains("IP works, names don't"),
        "diagnosis: {text}"
    );
    assert!(
        text.contains("Ask the firewall team for"),
        "request: {text}"
    );
    assert!(
        text.lines().any(|l| l.contains("203.0.113.2")
            && l.contains(DNS_V4)
            && l.contains("tcp")
            && l.contains("allow")),
        "{text}"
    );

    // Keys: help, filter, then quit; the terminal comes back with the plain report.
    terminal.keys(&["?"]);
    netwatch_tests::lab::wait_until(Duration::from_secs(5), "help", || {
        screen().contains("nothing left this host (in)")
    });
    terminal.keys(&["Escape"]);
    terminal.keys(&["/", "8", "4", "4", "3", "Enter"]);
    netwatch_tests::lab::wait_until(Duration::from_secs(5), "filter", || {
        filtered_for(&screen(), "8443", DNS_V4)
    });
    terminal.keys(&["q"]);
    netwatch_tests::lab::wait_until(Duration::from_secs(10), "exit", || {
        screen().contains("EXITED-0")
    });
    let after = screen();
    assert!(
        after.contains("ASK THE FIREWALL TEAM FOR"),
        "the final report stays: {after}"
    );
    assert!(!after.contains("q quit"), "alternate screen left: {after}");
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn metrics_diagnosis_and_fail_on_during_a_lab_run() {
    if !prerequisites(
        "metrics_diagnosis_and_fail_on_during_a_lab_run",
        &["ip", "nft", "dig", "dnsmasq", "curl", "promtool"],
    ) {
        return;
    }
    let mut lab = Lab::new();
    lab.start_dns();
    lab.start_listener(LISTENER);
    let netwatch = lab.start_netwatch(&[
        "--iface",
        CLIENT_IFACE,
        "--json",
        "--timeout",
        "1s",
        "--metrics",
        "9464",
        "--duration",
        "8s",
        "--fail-on",
        "blackholed,rejected",
    ]);
    assert!(
        netwatch
            .stderr_text()
            .contains("metrics at http://127.0.0.1:9464/metrics"),
        "{}",
        netwatch.stderr_text()
    );
    Client::dig(DNS_V4, "chat.example").run(&lab.client);
    Client::dig(DNS2_V4, "chat.example").run(&lab.client);
    Client::curl(SERVER_V4, 80).run(&lab.client);
    netwatch.wait_for(Duration::from_secs(5), "tcp/80 ok", |r| {
        r["type"] == "verdict" && r["port"] == 80 && r["verdict"] == "ok"
    });
    netwatch.wait_for(
        Duration::from_secs(5),
        "the second resolver blackholed",
        |r| r["type"] == "verdict" && r["remote"] == DNS2_V4 && r["verdict"] == "blackholed",
    );
    netwatch.wait_for(Duration::from_secs(5), "the dns-blocked diagnosis", |r| {
        r["type"] == "diagnosis" && r["finding"] == "dns-blocked"
    });
    // Scrape while it runs, from inside the client namespace (loopback there). The endpoint
    // serves the state of the last poll, which may not yet be the one that printed the
    // diagnosis: scrape until it shows the blackholed resolver, within a bound.
    let dns = format!("{{direction=\"egress\",proto=\"udp\",remote=\"{DNS_V4}\",port=\"53\"");
    let blackholed = format!("netwatch_target_verdict{dns},verdict=\"blackholed\"}} 1");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let scrape = lab
            .client
            .ok("curl", &["-s", "-m", "3", "http://127.0.0.1:9464/metrics"]);
        let text = String::from_utf8_lossy(&scrape.stdout).into_owned();
        if text.lines().any(|l| l == blackholed) || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(&text);
    assert!(
        check.status.success(),
        "promtool: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    check.stdout.clear();
    let series = |line_start: &str| {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .map(str::to_owned)
    };
    assert_eq!(
        series(&format!("netwatch_requests_total{dns}}}")).as_deref(),
        Some(&*format!("netwatch_requests_total{dns}}} 1"))
    );
    assert!(
        series(&format!("netwatch_unanswered_total{dns}}}")).is_some_and(|l| l.ends_with(" 1")),
        "{text}"
    );
    assert!(
        series(&format!(
            "netwatch_target_verdict{dns},verdict=\"blackholed\"}}"
        ))
        .is_some_and(|l| l.ends_with(" 1")),
        "{text}"
    );
    let web = format!("{{direction=\"egress\",proto=\"tcp\",remote=\"{SERVER_V4}\",port=\"80\"");
    assert!(
        series(&format!("netwatch_answer_latency_seconds_count{web}}}"))
            .is_some_and(|l| l.ends_with(" 1")),
        "{text}"
    );
    assert!(text.contains("netwatch_build_info{"), "{text}");
    assert!(text.contains("netwatch_evictions_total 0"), "{text}");

    let finished = netwatch.wait_exit(Duration::from_secs(15));
    assert_eq!(
        finished.status.code(),
        Some(3),
        "--fail-on matched: {}",
        finished.stderr
    );
    let diagnosis = finished
        .records
        .iter()
        .rev()
        .find(|r| r["type"] == "diagnosis" && r["finding"] == "dns-blocked")
        .expect("a dns-blocked record at exit");
    assert!(
        diagnosis["summary"]
            .as_str()
            .is_some_and(|s| s.contains("IP works")),
        "{diagnosis}"
    );
    assert_eq!(
        diagnosis["evidence"].as_array().map(Vec::len),
        Some(2),
        "{diagnosis}"
    );
    let request = diagnosis["request"].as_array().expect("request");
    for proto in ["udp", "tcp"] {
        let rule = request
            .iter()
            .find(|r| r["proto"] == proto)
            .unwrap_or_else(|| panic!("{proto}/53 requested: {diagnosis}"));
        assert_eq!(rule["port"], 53);
        assert_eq!(rule["source"], "203.0.113.2");
        assert_eq!(rule["destinations"], serde_json::json!([DNS_V4, DNS2_V4]));
        assert_eq!(
            (rule["direction"].as_str(), rule["action"].as_str()),
            (Some("outbound"), Some("allow"))
        );
    }
    // Without a match, the same run ends 0.
    let quiet = lab.start_netwatch(&[
        "--iface",
        CLIENT_IFACE,
        "--json",
        "--duration",
        "1s",
        "--fail-on",
        "blackholed",
    ]);
    assert_eq!(
        quiet.wait_exit(Duration::from_secs(10)).status.code(),
        Some(0)
    );
}

trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &str) -> std::process::Output;
}

impl OutputWithStdin for Command {
    fn output_with_stdin(&mut self, input: &str) -> std::process::Output {
        use std::io::Write as _;
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("wait")
    }
}

/// A DNS name read from the wire carrying a terminal escape sequence reaches neither the
/// JSON nor the plain table raw: it is written in presentation format (`\027`).
#[test]
fn names_from_the_wire_are_escaped_in_json_and_in_the_table() {
    if !prerequisites(
        "names_from_the_wire_are_escaped_in_json_and_in_the_table",
        LAB_TOOLS,
    ) {
        return;
    }
    let lab = Lab::new();
    let netwatch = lab.start_netwatch(&["--iface", CLIENT_IFACE, "--json", "--timeout", "1s"]);
    let plain = lab
        .client
        .command(&netwatch_tests::lab::netwatch_binary().to_string_lossy())
        .args(["--iface", CLIENT_IFACE, "--plain", "--timeout", "1s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("netwatch --plain");
    // Killed if the test fails before it ends it.
    let mut plain = KillOnDrop(plain);
    // Conditions, not fixed sleeps: on an emulated CPU (the kernel matrix runs under TCG)
    // starting takes seconds.
    let collect = |pipe: Box<dyn std::io::Read + Send>| {
        use std::io::Read as _;
        let text = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = std::sync::Arc::clone(&text);
        std::thread::spawn(move || {
            let mut pipe = pipe;
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                sink.lock().expect("output").extend_from_slice(&buf[..n]);
            }
        });
        text
    };
    let table_out = collect(Box::new(plain.0.stdout.take().expect("stdout")));
    let table_err = collect(Box::new(plain.0.stderr.take().expect("stderr")));
    let text = |buf: &std::sync::Mutex<Vec<u8>>| {
        String::from_utf8_lossy(&buf.lock().expect("output")).into_owned()
    };
    netwatch_tests::lab::wait_until(Duration::from_secs(30), "netwatch --plain watching", || {
        text(&table_err).contains("watching")
    });
    // dig reads \027 as the byte 27 (ESC) and puts it in the question as such.
    Client::dig(DNS_V4, r"evil\027[2J.example").run(&lab.client);
    netwatch.wait_for(Duration::from_secs(5), "udp/53 blackholed", |r| {
        r["type"] == "verdict" && r["port"] == 53 && r["verdict"] == "blackholed"
    });
    let finished = netwatch.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let target = assert_target(
        &finished,
        &id("udp", DNS_V4, Some(53)),
        "blackholed",
        None,
        1,
    );
    assert_eq!(target["names"][0], r"evil\027[2J.example", "{target}");
    let raw = |value: &Value| value.to_string().contains("\\u001b");
    assert!(
        !finished.records.iter().any(raw),
        "no record carries a raw ESC"
    );
    netwatch_tests::lab::wait_until(Duration::from_secs(30), "the name in the table", || {
        text(&table_out).contains(r"evil\027[2J.example")
    });
    let pid = libc::pid_t::try_from(plain.0.id()).expect("pid");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let status = plain.0.wait().expect("netwatch --plain");
    let table = table_out.lock().expect("output").clone();
    let stdout = String::from_utf8_lossy(&table).into_owned();
    assert!(status.success(), "{}", text(&table_err));
    assert!(stdout.contains(r"evil\027[2J.example"), "{stdout}");
    assert!(
        !table.contains(&0x1b),
        "no raw ESC in the table: {stdout:?}"
    );
}

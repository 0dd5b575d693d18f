//! UDP services beyond DNS (issue 12) in the namespace lab: real NTP-format clients and a
//! responder (`tests/lab/udp_peer.py`), a firewall that drops one port, rejects others with
//! each ICMP type and accepts the rest. One lab and one netwatch run for every case, inbound
//! ones included: the CI budget is tight.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use netwatch_tests::{
    lab::{
        CLIENT_V4, CLIENT_V6, DNS_V4, DNS_V6, DNS2_V4, Finished, Lab, Netns, SERVER_V4, SERVER_V6,
        netwatch_binary, target_id, wait_until,
    },
    prerequisites,
};
use serde_json::Value;

/// The `--udp-port` services: 5000 answers, 5001 is dropped, 5002.. are rejected.
const UDP_PORTS: &str = "5000,5001,5002,5003,5004,5005,5006,5007,5008";
/// A port nobody watches (the responder answers it all the same).
const UNWATCHED: &str = "6000";

/// Between the namespaces: what the client sends is filtered (answers and the server's own
/// requests pass). NTP to `DNS_V4` is dropped, to `DNS2_V4` refused; every other NTP server
/// is reachable.
const FIREWALL: &str = r#"
flush ruleset
table inet lab {
  chain forward {
    type filter hook forward priority 0; policy accept;
    iifname != "f0" accept
    ip daddr 198.51.100.53 udp dport 123 drop
    ip daddr 198.51.100.54 udp dport 123 reject with icmp type admin-prohibited
    udp dport 5001 drop
    meta nfproto ipv4 udp dport 5002 reject with icmp type port-unreachable
    meta nfproto ipv6 udp dport 5002 reject with icmpv6 type port-unreachable
    meta nfproto ipv4 udp dport 5003 reject with icmp type admin-prohibited
    meta nfproto ipv6 udp dport 5003 reject with icmpv6 type admin-prohibited
    meta nfproto ipv4 udp dport 5004 reject with icmp type host-prohibited
    meta nfproto ipv6 udp dport 5004 reject with icmpv6 type no-route
    meta nfproto ipv4 udp dport 5005 reject with icmp type net-prohibited
    meta nfproto ipv6 udp dport 5005 reject with icmpv6 type addr-unreachable
    meta nfproto ipv4 udp dport 5006 reject with icmp type host-unreachable
    meta nfproto ipv4 udp dport 5007 reject with icmp type net-unreachable
  }
}
"#;

/// The client's own chains: its service on 5001 gets requests and never answers; what it
/// sends to 5008, and NTP to the IPv6 resolver's address, dies in its output chain, before
/// tc egress (the drop program counts it).
const CLIENT_INPUT: &str = r"
table inet host {
  chain input {
    type filter hook input priority 0; policy accept;
    udp dport 5001 drop
  }
  chain output {
    type filter hook output priority 0; policy accept;
    udp dport 5008 drop
    ip6 daddr 2001:db8:2::53 udp dport 123 drop
  }
}
";

/// (family's server, port, expected reason) for each refused `--udp-port` service.
const REJECTIONS: [(&str, u64, &str); 10] = [
    (SERVER_V4, 5002, "icmp-port-unreachable"),
    (SERVER_V4, 5003, "icmp-admin-prohibited"),
    (SERVER_V4, 5004, "icmp-host-prohibited"),
    (SERVER_V4, 5005, "icmp-net-prohibited"),
    (SERVER_V4, 5006, "icmp-host-unreachable"),
    (SERVER_V4, 5007, "icmp-net-unreachable"),
    (SERVER_V6, 5002, "icmp6-port-unreachable"),
    (SERVER_V6, 5003, "icmp6-adm-prohibited"),
    (SERVER_V6, 5004, "icmp6-no-route"),
    (SERVER_V6, 5005, "icmp6-addr-unreachable"),
];

fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/udp_peer.py")
}

/// Starts the responder in `ns` on `addresses` × `ports`, and waits until it is bound.
fn start_responder(lab: &mut Lab, ns_is_client: bool, addresses: &str, ports: &str) {
    let ready = lab.dir().join(format!("responder-{ns_is_client}.ready"));
    let ns = if ns_is_client {
        &lab.client
    } else {
        &lab.server
    };
    let mut command = ns.command("python3");
    command
        .arg(peer_script())
        .args(["serve", &ready.to_string_lossy(), addresses, ports])
        .stdin(Stdio::null());
    lab.spawn(command);
    wait_until(Duration::from_secs(10), "the UDP responder bound", || {
        ready.exists()
    });
}

/// One request from `ns` (retransmitted after `wait` s without an answer, `tries` sends):
/// 0 answered, 1 no answer, 2 refused.
fn ask(ns: &Netns, host: &str, port: &str, kind: &str, tries: &str, wait: &str) -> i32 {
    ask_from(ns, None, host, port, kind, tries, wait)
}

/// [`ask`] from the address `source` of `ns` (the server has several of each family).
fn ask_from(
    ns: &Netns,
    source: Option<&str>,
    host: &str,
    port: &str,
    kind: &str,
    tries: &str,
    wait: &str,
) -> i32 {
    let script = peer_script().to_string_lossy().into_owned();
    let mut args = vec![script.as_str(), "ask", host, port, kind, tries, wait];
    args.extend(source);
    let out = ns.run("python3", &args);
    out.status
        .code()
        .unwrap_or_else(|| panic!("the client asking {host}:{port} was killed"))
}

fn target<'a>(finished: &'a Finished, direction: &str, remote: &str, port: u64) -> &'a Value {
    finished.target_record(direction, "udp", remote, Some(port))
}

fn expect(record: &Value, verdict: &str, reason: Option<&str>, requests: u64, retransmits: u64) {
    assert_eq!(record["verdict"], verdict, "{record}");
    assert_eq!(record["reason"].as_str(), reason, "{record}");
    assert_eq!(record["requests"], requests, "{record}");
    assert_eq!(record["retransmits"], retransmits, "{record}");
    assert_eq!(record["in_flight"], 0, "nothing left in flight: {record}");
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn ntp_and_udp_port_services_are_judged_like_every_target() {
    const NAME: &str = "ntp_and_udp_port_services_are_judged_like_every_target";
    if !prerequisites(NAME, &["ip", "nft", "python3"]) {
        return;
    }
    let mut lab = Lab::new();
    lab.nft(FIREWALL);
    Lab::nft_in(&lab.client, CLIENT_INPUT);
    start_responder(
        &mut lab,
        false,
        &format!("{SERVER_V4},{SERVER_V6}"),
        &format!("123,{UDP_PORTS},{UNWATCHED}"),
    );
    start_responder(&mut lab, true, &format!("{CLIENT_V4},{CLIENT_V6}"), "5000");
    let netwatch = lab.start_netwatch(&[
        "--iface",
        "c0",
        "--json",
        "--timeout",
        "1s",
        // The same list, given in two flags.
        "--udp-port",
        "5000,5001",
        "--udp-port",
        "5002,5003,5004,5005,5006,5007,5008",
    ]);

    // This host's requests: NTP answered, dropped, refused; the services likewise.
    let (client, server) = (&lab.client, &lab.server);
    for host in [SERVER_V4, SERVER_V6] {
        assert_eq!(ask(client, host, "123", "ntp", "2", "1"), 0, "NTP {host}");
        assert_eq!(
            ask(client, host, "5000", "flow", "2", "1"),
            0,
            "{host}:5000"
        );
        assert_eq!(ask(client, host, UNWATCHED, "flow", "1", "1"), 0);
        assert_eq!(
            ask(client, host, "5001", "flow", "2", "0.4"),
            1,
            "{host}:5001"
        );
    }
    assert_eq!(
        ask(client, DNS_V4, "123", "ntp", "2", "0.4"),
        1,
        "NTP dropped"
    );
    assert_eq!(
        ask(client, DNS2_V4, "123", "ntp", "1", "1"),
        2,
        "NTP refused"
    );
    for (host, port, _) in REJECTIONS {
        // Linux reports net and host unreachable to a UDP socket as soft errors (no error
        // unless IP_RECVERR): the client just sees no answer.
        assert_ne!(
            ask(client, host, &port.to_string(), "flow", "1", "0.5"),
            0,
            "{host}:{port} refused"
        );
    }
    // Dropped by this host's own output chain (the send fails with EPERM).
    assert_ne!(ask(client, SERVER_V4, "5008", "flow", "1", "0.5"), 0);
    assert_ne!(
        ask(client, DNS_V6, "123", "ntp", "1", "0.5"),
        0,
        "NTP dropped here"
    );
    // Requests this host receives: its service on 5000 answers, 5001 is dropped by its own
    // input chain, and nothing listens on its NTP port (the kernel's port unreachable).
    for (host, from) in [(CLIENT_V4, SERVER_V4), (CLIENT_V6, SERVER_V6)] {
        let ask =
            |port, kind, tries, wait| ask_from(server, Some(from), host, port, kind, tries, wait);
        assert_eq!(ask("5000", "flow", "1", "1"), 0, "{host}:5000");
        assert_eq!(ask("5001", "flow", "2", "0.4"), 1, "{host}:5001");
        assert_eq!(ask("123", "ntp", "1", "1"), 2, "{host}:123");
    }
    // The last unanswered requests judged: so is everything before them.
    for (direction, remote, port) in [
        ("egress", DNS_V4, 123),
        ("egress", SERVER_V6, 5001),
        ("ingress", SERVER_V6, 5001),
        ("egress", SERVER_V4, 5008),
        ("egress", DNS_V6, 123),
    ] {
        netwatch.wait_for(
            Duration::from_secs(20),
            &format!("{direction} udp {remote}:{port} blackholed"),
            |r| {
                r["type"] == "verdict"
                    && r["direction"] == direction
                    && target_id(r) == ("udp".into(), remote.into(), Some(port))
                    && r["verdict"] == "blackholed"
            },
        );
    }
    let finished = netwatch.stop();
    assert!(
        finished.status.success(),
        "netwatch exit: {:?}: {}",
        finished.status,
        finished.stderr
    );

    for server in [SERVER_V4, SERVER_V6] {
        expect(target(&finished, "egress", server, 123), "ok", None, 1, 0);
        expect(target(&finished, "egress", server, 5000), "ok", None, 1, 0);
        expect(
            target(&finished, "egress", server, 5001),
            "blackholed",
            None,
            1,
            1,
        );
    }
    expect(
        target(&finished, "egress", DNS_V4, 123),
        "blackholed",
        None,
        1,
        1,
    );
    expect(
        target(&finished, "egress", DNS2_V4, 123),
        "rejected",
        Some("icmp-admin-prohibited"),
        1,
        0,
    );
    for (server, port, reason) in REJECTIONS {
        expect(
            target(&finished, "egress", server, port),
            "rejected",
            Some(reason),
            1,
            0,
        );
    }
    for (remote, port) in [(SERVER_V4, 5008), (DNS_V6, 123)] {
        let here = target(&finished, "egress", remote, port);
        expect(here, "blackholed", Some("here:netfilter-drop"), 1, 0);
        assert_eq!(
            here["local_drops"],
            serde_json::json!({"NETFILTER_DROP": 1}),
            "{here}"
        );
    }
    let unwatched: Vec<_> = finished
        .records
        .iter()
        .filter(|r| r["port"].as_u64() == Some(6000))
        .collect();
    assert!(
        unwatched.is_empty(),
        "port 6000 is not watched: {unwatched:#?}"
    );
    for peer in [SERVER_V4, SERVER_V6] {
        expect(target(&finished, "ingress", peer, 5000), "ok", None, 1, 0);
        // This host's input chain dropped both copies: the drop program says so.
        let dropped = target(&finished, "ingress", peer, 5001);
        expect(dropped, "blackholed", Some("here:netfilter-drop"), 1, 1);
        assert_eq!(
            dropped["local_drops"],
            serde_json::json!({"NETFILTER_DROP": 2}),
            "{dropped}"
        );
    }
    expect(
        target(&finished, "ingress", SERVER_V4, 123),
        "rejected",
        Some("icmp-port-unreachable"),
        1,
        0,
    );
    expect(
        target(&finished, "ingress", SERVER_V6, 123),
        "rejected",
        Some("icmp6-port-unreachable"),
        1,
        0,
    );

    // The diagnosis names the service, and says what NTP failing means.
    let findings = finished.exit_findings();
    let summary = |id: &str, service: &str| {
        findings
            .iter()
            .find(|f| {
                f["finding"] == id && f["summary"].as_str().is_some_and(|s| s.contains(service))
            })
            .unwrap_or_else(|| panic!("no {id} finding for {service}: {findings:#?}"))["summary"]
            .as_str()
            .expect("a summary")
            .to_owned()
    };
    let ntp = summary("port-blackholed", "udp/123 (ntp)");
    assert!(ntp.contains(DNS_V4), "{ntp}");
    assert!(ntp.contains("this host cannot sync its clock"), "{ntp}");
    let refused_ntp = summary("port-rejected", "udp/123 (ntp)");
    assert!(
        refused_ntp.contains("icmp-admin-prohibited"),
        "{refused_ntp}"
    );
    summary("port-blackholed", "udp/5001");
    summary("port-rejected", "udp/5003");
}

/// Bad `--udp-port` values: one clear line on stderr and the usage exit status, before
/// anything touches the kernel.
#[test]
fn bad_udp_ports_are_refused_in_one_line() {
    for (value, says) in [
        ("0", "0 is not a UDP port"),
        ("70000", "70000 is not a UDP port"),
        ("ntp", "'ntp' is not a UDP port"),
        ("514", "port 514 carries one-way traffic"),
        ("5000,4789", "port 4789 carries one-way traffic"),
    ] {
        let out = Command::new(netwatch_binary())
            .args(["--udp-port", value])
            .stdin(Stdio::null())
            .output()
            .expect("running netwatch");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--udp-port {value}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "--udp-port {value}: {stderr}");
        assert!(stderr.contains(says), "--udp-port {value}: {stderr}");
        assert!(out.stdout.is_empty(), "--udp-port {value}");
    }
}

//! Requests this host receives (issue 11, the tc half): netwatch in the server namespace,
//! whose own nftables input policy is drop, judges inbound connection attempts and pings by
//! what the server sends back. The firewall between the namespaces accepts everything, so
//! every verdict here is this host's own doing.

use std::{process::Stdio, time::Duration};

use netwatch_tests::{
    lab::{
        CLIENT_V4, CLIENT_V6, Finished, GATEWAY_V4, GATEWAY_V6, Lab, Netns, NetwatchRun, SERVER_V4,
        SERVER_V6, netwatch_binary, wait_until,
    },
    prerequisites,
};
use serde_json::Value;

const LISTENER: &str = env!("CARGO_BIN_EXE_lab-listener");
const VPN: &str = env!("CARGO_BIN_EXE_lab-vpn");

/// The server's own firewall: what a careful operator writes after the lesson, minus the
/// service ports it forgot. Port 80 is served; 7777 is allowed but nothing listens; 9000 is
/// refused with a reset; everything else (5432, echo requests) falls to the drop policy.
const SERVER_INPUT: &str = r#"
table inet host {
  chain input {
    type filter hook input priority 0; policy drop;
    iif "lo" accept
    ct state established,related accept
    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } accept
    tcp dport { 80, 7777 } accept
    tcp dport 9000 reject with tcp reset
  }
}
"#;

/// The exit `target` record of the inbound target (`remote` asked this host's `port`).
fn inbound<'a>(finished: &'a Finished, proto: &str, remote: &str, port: Option<u64>) -> &'a Value {
    finished.target_record("ingress", proto, remote, port)
}

fn expect(record: &Value, verdict: &str, reason: Option<&str>, requests: u64) {
    assert_eq!(record["verdict"], verdict, "{record}");
    assert_eq!(record["reason"].as_str(), reason, "{record}");
    assert_eq!(record["requests"], requests, "{record}");
    let settled: u64 = ["answered", "rejected", "unanswered"]
        .iter()
        .map(|f| record[*f].as_u64().expect("a count"))
        .sum();
    assert_eq!(settled, requests, "each request settled once: {record}");
    assert_eq!(record["in_flight"], 0, "nothing left in flight: {record}");
}

#[test]
fn inbound_requests_are_judged_by_what_this_host_sends_back() {
    const NAME: &str = "inbound_requests_are_judged_by_what_this_host_sends_back";
    if !prerequisites(NAME, &["ip", "nft", "nc", "ping"]) {
        return;
    }
    let mut lab = Lab::new();
    // The firewall between the namespaces lets everything through.
    lab.nft("flush ruleset\n");
    lab.start_listener(LISTENER);
    judge_inbound(&lab, &lab.server, "s0", [SERVER_V4, SERVER_V6]);
}

/// The same requests received at the server end of a VPN: the router's tun device (raw IP
/// packets, no link-layer header), its own input chain, the clients asking the router's
/// tunnel addresses. The same verdicts, reasons, drops and findings.
#[test]
fn inbound_requests_at_the_server_end_of_a_vpn_are_judged_as_on_ethernet() {
    const NAME: &str = "inbound_requests_at_the_server_end_of_a_vpn_are_judged_as_on_ethernet";
    if !prerequisites(NAME, &["ip", "nft", "nc", "ping"]) {
        return;
    }
    let mut lab = Lab::over_a_tunnel(VPN);
    lab.nft("flush ruleset\n");
    let mut listener = lab.firewall.command(LISTENER);
    listener
        .arg("80")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    lab.spawn(listener);
    wait_until(Duration::from_secs(10), "the router's listener", || {
        lab.firewall
            .run("nc", &["-z", "-w", "1", GATEWAY_V4, "80"])
            .status
            .success()
    });
    judge_inbound(&lab, &lab.firewall, "f0", [GATEWAY_V4, GATEWAY_V6]);
}

/// `host` (with [`SERVER_INPUT`] as its own firewall and a listener on port 80 of
/// `addresses`, IPv4 then IPv6) asked by the lab's client, netwatch watching its `iface`:
/// each request judged by what `host` sends back.
fn judge_inbound(lab: &Lab, host: &Netns, iface: &str, addresses: [&str; 2]) {
    Lab::nft_in(host, SERVER_INPUT);
    let netwatch = NetwatchRun::start({
        let mut command = host.command(&netwatch_binary().to_string_lossy());
        command.args(["--iface", iface, "--json", "--timeout", "1s"]);
        command
    });

    for server in addresses {
        for (port, wait) in [("80", "2"), ("7777", "2"), ("9000", "2"), ("5432", "3")] {
            let out = lab.client.run("nc", &["-z", "-w", wait, server, port]);
            assert!(
                out.status.code().is_some(),
                "nc to {server}:{port} was killed"
            );
        }
        let ping = lab
            .client
            .run("ping", &["-c", "2", "-i", "0.5", "-W", "1", server]);
        assert!(ping.status.code().is_some(), "ping {server} was killed");
    }
    // A sentinel sent after everything else: once it is judged, so is all the rest.
    let sentinel = lab
        .client
        .run("nc", &["-z", "-w", "1", addresses[0], "5999"]);
    assert!(
        sentinel.status.code().is_some(),
        "the sentinel nc was killed"
    );
    netwatch.wait_for(Duration::from_secs(20), "the sentinel judged", |r| {
        r["type"] == "verdict"
            && r["direction"] == "ingress"
            && r["port"] == 5999
            && r["verdict"] == "blackholed"
    });
    let finished = netwatch.stop();
    assert!(
        finished.status.success(),
        "netwatch exit: {:?}: {}",
        finished.status,
        finished.stderr
    );

    for (client, icmp) in [(CLIENT_V4, "icmp"), (CLIENT_V6, "icmpv6")] {
        expect(inbound(&finished, "tcp", client, Some(80)), "ok", None, 1);
        // Allowed through the input chain, nobody listening: the kernel resets.
        expect(
            inbound(&finished, "tcp", client, Some(7777)),
            "rejected",
            Some("tcp-reset"),
            1,
        );
        expect(
            inbound(&finished, "tcp", client, Some(9000)),
            "rejected",
            Some("tcp-reset"),
            1,
        );
        // Dropped by the input policy: nothing leaves this host, and the kernel says where
        // (skb:kfree_skb, the local drops program).
        let dropped = inbound(&finished, "tcp", client, Some(5432));
        expect(dropped, "blackholed", Some("here:netfilter-drop"), 1);
        assert!(
            dropped["local_drops"]["NETFILTER_DROP"].as_u64() >= Some(2),
            "the SYN and its retransmits dropped here: {dropped}"
        );
        assert!(
            dropped["retransmits"].as_u64() >= Some(1),
            "the client retried its SYN: {dropped}"
        );
        expect(
            inbound(&finished, icmp, client, None),
            "blackholed",
            Some("here:netfilter-drop"),
            2,
        );
    }
    // Nothing this host sent was a request: no egress target at all.
    let egress: Vec<_> = finished
        .records
        .iter()
        .filter(|r| r["type"] == "target" && r["direction"] == "egress")
        .collect();
    assert!(egress.is_empty(), "egress targets: {egress:#?}");
    expect_inbound_diagnosis(&finished);
}

/// The diagnosis speaks of the inbound targets as inbound to this host, asks the upstream
/// team for nothing, and writes the accept rule for this host's input chain where a rule
/// would help.
fn expect_inbound_diagnosis(finished: &Finished) {
    let findings: Vec<&Value> = finished
        .records
        .iter()
        .filter(|r| r["type"] == "diagnosis")
        .collect();
    // The last of each: those written at exit, after the ones written as findings changed.
    let finding = |id: &str, proto: &str, port: Option<u64>| {
        findings
            .iter()
            .copied()
            .rfind(|f| {
                f["finding"] == id
                    && f["evidence"][0]["proto"] == proto
                    && f["evidence"][0]["port"].as_u64() == port
            })
            .unwrap_or_else(|| panic!("no {id} for {proto}/{port:?}: {findings:#?}"))
    };
    for f in &findings {
        assert!(
            f["finding"]
                .as_str()
                .is_some_and(|id| id.starts_with("inbound-")),
            "only inbound findings: {f}"
        );
        assert_eq!(f["request"], serde_json::json!([]), "{f}");
        assert!(
            f["summary"]
                .as_str()
                .is_some_and(|s| s.starts_with("Inbound to this host: ")),
            "{f}"
        );
    }
    let dropped = finding("inbound-blackholed", "tcp", Some(5432));
    let rules: Vec<&str> = dropped["local_rules"]
        .as_array()
        .expect("local_rules")
        .iter()
        .map(|rule| rule["nft"].as_str().expect("nft"))
        .collect();
    assert_eq!(
        rules,
        [
            format!("nft insert rule inet filter input ip saddr {CLIENT_V4} tcp dport 5432 accept"),
            format!(
                "nft insert rule inet filter input ip6 saddr {CLIENT_V6} tcp dport 5432 accept"
            ),
        ],
        "{dropped}"
    );
    for icmp in ["icmp", "icmpv6"] {
        let ping = finding("inbound-blackholed", icmp, None);
        assert_eq!(
            ping["local_rules"].as_array().map(Vec::len),
            Some(1),
            "{ping}"
        );
    }
    for port in [7777, 9000] {
        let reset = finding("inbound-rejected", "tcp", Some(port));
        assert_eq!(
            reset["local_rules"],
            serde_json::json!([]),
            "a reset: maybe nothing listens, no rule to write: {reset}"
        );
    }
}

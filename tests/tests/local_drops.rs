//! Drops on this host, as the kernel reports them (`skb:kfree_skb`): netwatch in the client
//! namespace, whose own nftables has an input policy of drop (no `ct state established`
//! rule) and an output chain that drops DNS to one resolver. The firewall between the
//! namespaces lets DNS through. Asserts the `local_drops` and `here:` reasons of the JSON.
//!
//! The kernel matrix runs these too. A kernel without drop reasons (before 5.17: the
//! matrix's 5.10) gets the same traffic and must say `local_drops: "unavailable: …"` and
//! blame nobody: what its chains drop before tc is not seen, and what they drop after tc
//! ingress counts as answered (the README's limits).

use std::{process::Stdio, time::Duration};

use netwatch_tests::{
    clients::Client,
    kernel_has_drop_reasons,
    lab::{CLIENT_IFACE, DNS_V4, DNS_V6, DNS2_V4, Finished, Lab, Netns, OPEN_DNS, TargetId},
    prerequisites,
};
use serde_json::Value;

const TRAFFIC_GEN: &str = env!("CARGO_BIN_EXE_traffic-gen");

/// The client host's own rules: everything in is dropped but loopback; DNS to the second
/// resolver and to the IPv6 one is dropped on the way out.
const HOST_FIREWALL: &str = r#"
table inet host {
  chain input {
    type filter hook input priority 0; policy drop;
    iif "lo" accept
  }
  chain output {
    type filter hook output priority 0; policy accept;
    ip daddr 198.51.100.54 udp dport 53 drop
    ip6 daddr 2001:db8:2::53 udp dport 53 drop
  }
}
"#;

fn host_firewall(lab: &Lab) {
    Lab::nft_in(&lab.client, HOST_FIREWALL);
}

fn dns(remote: &str) -> TargetId {
    ("udp".to_owned(), remote.to_owned(), Some(53))
}

fn target(finished: &Finished, id: &TargetId) -> Value {
    finished.targets().remove(id).unwrap_or_else(|| {
        panic!(
            "no target {id:?}; records: {:#?}; stderr: {}",
            finished.records, finished.stderr
        )
    })
}

fn summary(finished: &Finished) -> &Value {
    finished
        .records
        .iter()
        .find(|r| r["type"] == "summary")
        .expect("a summary record")
}

/// On a kernel without drop reasons: netwatch says local drops are unavailable, and no
/// target, verdict or finding says `here:` or blames a firewall for what this host dropped
/// (`unseen`: the targets whose requests its output chain dropped before tc saw them).
fn no_local_drops_and_no_blame(finished: &Finished, unseen: &[TargetId]) {
    let said = summary(finished)["local_drops"]
        .as_str()
        .unwrap_or_default();
    assert!(said.starts_with("unavailable: "), "{said}");
    let targets = finished.targets();
    for id in unseen {
        assert!(!targets.contains_key(id), "{id:?}: {:?}", targets.get(id));
    }
    for record in &finished.records {
        let reason = record["reason"].as_str().unwrap_or_default();
        assert!(!reason.starts_with("here:"), "{record}");
        assert!(
            record["type"] != "diagnosis" || record["finding"] != "dns-blocked",
            "{record}"
        );
    }
}

#[test]
fn dns_dropped_by_this_hosts_output_and_input_chains_is_blackholed_here() {
    if !prerequisites(
        "dns_dropped_by_this_hosts_output_and_input_chains_is_blackholed_here",
        &["ip", "nft", "dnsmasq", "dig"],
    ) {
        return;
    }
    let mut lab = Lab::new();
    lab.nft(OPEN_DNS);
    lab.start_dns();
    host_firewall(&lab);
    let netwatch = lab.start_netwatch(&["--iface", CLIENT_IFACE, "--json", "--timeout", "1s"]);
    // .54 and IPv6 first: each dig to .53 then waits out its one-second timeout, so their
    // last queries are past their deadline (and swept) by the time the loop ends.
    for i in 0..3 {
        for server in [DNS2_V4, DNS_V6, DNS_V4] {
            // Whatever dig says (no answer, or EPERM from the output chain), it sent once.
            Client::dig(server, &format!("q{i}.example")).run(&lab.client);
        }
    }
    if !kernel_has_drop_reasons() {
        let finished = netwatch.stop();
        assert!(finished.status.success(), "{}", finished.stderr);
        no_local_drops_and_no_blame(&finished, &[dns(DNS2_V4), dns(DNS_V6)]);
        // The answers from .53 reached tc ingress, then died in the input chain: answered,
        // as far as this kernel lets netwatch see.
        let back = target(&finished, &dns(DNS_V4));
        assert_eq!(back["answered"], 3, "{back}");
        return;
    }
    for server in [DNS_V4, DNS2_V4, DNS_V6] {
        netwatch.wait_for(
            Duration::from_secs(10),
            &format!("{server} blackholed here"),
            |r| {
                r["type"] == "verdict"
                    && r["remote"] == server
                    && r["verdict"] == "blackholed"
                    && r["reason"] == "here:netfilter-drop"
            },
        );
    }
    let finished = netwatch.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert_eq!(summary(&finished)["local_drops"], "available");

    // The queries to .54 and to the IPv6 resolver died in this host's output chain: tc
    // egress never saw them, the drop program counted them, and they timed out.
    for server in [DNS2_V4, DNS_V6] {
        let out = target(&finished, &dns(server));
        assert_eq!(out["verdict"], "blackholed", "{out}");
        assert_eq!(out["reason"], "here:netfilter-drop", "{out}");
        assert_eq!(out["requests"], 3, "{out}");
        assert_eq!(out["unanswered"], 3, "{out}");
        assert_eq!(
            out["local_drops"],
            serde_json::json!({"NETFILTER_DROP": 3}),
            "{out}"
        );
    }

    // The answers from .53 came back and died in this host's input chain: tc ingress saw
    // them, the socket never did.
    let back = target(&finished, &dns(DNS_V4));
    assert_eq!(back["verdict"], "blackholed", "{back}");
    assert_eq!(back["reason"], "here:netfilter-drop", "{back}");
    assert_eq!(back["requests"], 3, "{back}");
    assert_eq!(back["answered"], 0, "{back}");
    assert_eq!(back["unanswered"], 3, "{back}");

    // The diagnosis names this host's chains and the rules to add, not the upstream firewall.
    let findings: Vec<&Value> = finished
        .records
        .iter()
        .filter(|r| r["type"] == "diagnosis")
        .collect();
    let local: Vec<&str> = findings
        .iter()
        .filter(|f| f["finding"] == "local-firewall-drops")
        .filter_map(|f| f["summary"].as_str())
        .collect();
    assert!(
        local
            .iter()
            .any(|s| s.contains(&format!("answers from {DNS_V4} udp/53"))
                && s.contains("input chain")
                && s.contains("ct state established,related accept")),
        "{findings:#?}"
    );
    assert!(
        local
            .iter()
            .any(|s| s.contains(&format!("requests to {DNS2_V4} udp/53"))
                && s.contains("output chain")),
        "{findings:#?}"
    );
    assert!(
        !findings.iter().any(|f| f["finding"] == "dns-blocked"),
        "nothing for the upstream firewall team: {findings:#?}"
    );
    assert_eq!(
        back["local_drops"],
        serde_json::json!({"NETFILTER_DROP": 3}),
        "{back}"
    );
}

/// Another namespace with the client's own address (a container with the same IP, say)
/// drops DNS to the second resolver in its output chain, as the client does: the tracepoint
/// fires for both, and only the client's drops are this host's: the twin's before the
/// client's and after them. Costs about 4 s.
#[test]
fn a_twin_namespaces_drops_are_not_this_hosts() {
    if !prerequisites(
        "a_twin_namespaces_drops_are_not_this_hosts",
        &["ip", "nft", "dig"],
    ) {
        return;
    }
    let lab = Lab::new();
    host_firewall(&lab);
    let twin = Netns::create(format!("nwlab-twin{}", std::process::id()));
    twin.ok(
        "ip",
        &["link", "add", "t0", "type", "veth", "peer", "name", "t1"],
    );
    twin.ok("ip", &["addr", "add", "203.0.113.2/24", "dev", "t0"]);
    for dev in ["lo", "t0", "t1"] {
        twin.ok("ip", &["link", "set", dev, "up"]);
    }
    twin.ok("ip", &["route", "add", "default", "via", "203.0.113.1"]);
    Lab::nft_in(&twin, HOST_FIREWALL);
    let netwatch = lab.start_netwatch(&["--iface", CLIENT_IFACE, "--json", "--timeout", "1s"]);
    for i in 0..5 {
        Client::dig(DNS2_V4, &format!("twin{i}.example")).run(&twin);
    }
    for i in 0..2 {
        Client::dig(DNS2_V4, &format!("own{i}.example")).run(&lab.client);
    }
    // The twin again, now that a drop has shown the programs netwatch's own namespace: told
    // apart by what that one was, not by reading the twin's number again.
    for i in 5..8 {
        Client::dig(DNS2_V4, &format!("twin{i}.example")).run(&twin);
    }
    if !kernel_has_drop_reasons() {
        let finished = netwatch.stop();
        assert!(finished.status.success(), "{}", finished.stderr);
        no_local_drops_and_no_blame(&finished, &[dns(DNS2_V4)]);
        return;
    }
    netwatch.wait_for(
        Duration::from_secs(10),
        &format!("{DNS2_V4} blackholed here"),
        |r| r["type"] == "verdict" && r["remote"] == DNS2_V4 && r["verdict"] == "blackholed",
    );
    let finished = netwatch.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let own = target(&finished, &dns(DNS2_V4));
    assert_eq!(
        own["requests"], 2,
        "the twin's 8 are not this host's: {own}"
    );
    assert_eq!(
        own["local_drops"],
        serde_json::json!({"NETFILTER_DROP": 2}),
        "{own}"
    );
}

#[test]
fn a_million_drops_in_this_hosts_output_chain_are_counted_exactly() {
    // Fewer in the kernel matrix's emulated guests (`NETWATCH_DROP_STORM`).
    let storm: u64 = std::env::var("NETWATCH_DROP_STORM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    if !prerequisites(
        "a_million_drops_in_this_hosts_output_chain_are_counted_exactly",
        &["ip", "nft"],
    ) {
        return;
    }
    let lab = Lab::new();
    host_firewall(&lab);
    // A long timeout: the one query stays pending through the storm, so every copy after
    // the first is the same request dropped again.
    let netwatch = lab.start_netwatch(&["--iface", CLIENT_IFACE, "--json", "--timeout", "60s"]);
    let started = std::time::Instant::now();
    let out = lab
        .client
        .command(TRAFFIC_GEN)
        .args([
            "dns-same",
            &format!("{DNS2_V4}:53"),
            "60",
            &storm.to_string(),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("traffic-gen");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
        panic!(
            "traffic-gen's report: {err}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(report["sent"], storm, "{report}");
    eprintln!(
        "{storm} drops in {:.1} s: {report}",
        started.elapsed().as_secs_f64()
    );
    let finished = netwatch.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    if !kernel_has_drop_reasons() {
        no_local_drops_and_no_blame(&finished, &[dns(DNS2_V4)]);
        return;
    }
    let dropped = target(&finished, &dns(DNS2_V4));
    assert_eq!(
        dropped["local_drops"],
        serde_json::json!({"NETFILTER_DROP": storm}),
        "{dropped}"
    );
    assert_eq!(
        dropped["requests"], 1,
        "one query, dropped {storm} times: {dropped}"
    );
    assert_eq!(
        summary(&finished)["kernel"]["counters"]["local_drops_full"],
        0
    );
}

#[test]
fn the_drop_program_needs_only_bpf_net_admin_and_perfmon() {
    if !prerequisites(
        "the_drop_program_needs_only_bpf_net_admin_and_perfmon",
        &["ip", "nft", "setpriv", "dig"],
    ) {
        return;
    }
    let lab = Lab::new();
    host_firewall(&lab);
    netwatch_tests::lab::unlimited_memlock_for_old_kernels();
    let mut command = lab.client.command("setpriv");
    command
        .args(netwatch_tests::lab::as_nobody_with("bpf,net_admin,perfmon"))
        .arg(netwatch_tests::lab::netwatch_binary())
        .args(["--iface", CLIENT_IFACE, "--json", "--timeout", "1s"]);
    let netwatch = netwatch_tests::lab::NetwatchRun::start(command);
    // Not counted for want of a capability would be a failure; for want of drop reasons it
    // is what an old kernel gets, said with its cause.
    let stderr = netwatch.stderr_text();
    if kernel_has_drop_reasons() {
        assert!(!stderr.contains("not counted"), "{stderr}");
    } else {
        assert!(
            stderr.contains("drops on this host are not counted: the kernel has no drop reasons"),
            "{stderr}"
        );
    }
    Client::dig(DNS2_V4, "caps.example").run(&lab.client);
    if !kernel_has_drop_reasons() {
        let finished = netwatch.stop();
        assert!(finished.status.success(), "{}", finished.stderr);
        no_local_drops_and_no_blame(&finished, &[dns(DNS2_V4)]);
        return;
    }
    netwatch.wait_for(Duration::from_secs(10), "the dropped query", |r| {
        r["type"] == "verdict" && r["remote"] == DNS2_V4 && r["local_drops"]["NETFILTER_DROP"] == 1
    });
    let finished = netwatch.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert_eq!(summary(&finished)["local_drops"], "available");
}

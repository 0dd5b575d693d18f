//! This host's own firewall, followed: netwatch in the client namespace while the client's
//! own nftables ruleset changes under real clients. A working connection, then an output
//! rule with a comment that drops it: the `ruleset` record (generation, the rule as `nft -a
//! list` prints it), the target's `since` and `after_change`, the rule named by tracing
//! (`--trace-rules`) with the handle nft shows, and the diagnosis naming it. An input policy
//! that drops a resolver's answers, named as the policy; an iptables-nft rule; a reject rule;
//! a burst of 500 changes, summarized and counted; a killed netwatch's trace table removed by
//! the next; the live view's timeline in tmux.
//!
//! The kernel matrix runs the ones that need no drop reasons fully (ruleset records, the
//! burst, the stale table); on a kernel without drop reasons (5.10) the others check what
//! netwatch can still say: the records, and no `after_change` nor rule it cannot know.

use std::{
    fmt::Write as _,
    process::Stdio,
    time::{Duration, Instant, SystemTime},
};

use netwatch_tests::{
    clients::Client,
    kernel_has_drop_reasons,
    lab::{
        CLIENT_IFACE, DNS_V4, DNS2_V4, Finished, Lab, Netns, NetwatchRun, OPEN_DNS, SERVER_V4,
        TargetId, wait_until,
    },
    prerequisites,
};
use serde_json::Value;

const LISTENER: &str = env!("CARGO_BIN_EXE_lab-listener");

/// The client's own firewall before the change: everything allowed, in chains an operator
/// would have.
const HOST_FIREWALL: &str = r"
table inet host {
  chain input {
    type filter hook input priority 0; policy accept;
  }
  chain output {
    type filter hook output priority 0; policy accept;
  }
}
";

fn tcp(port: u16) -> TargetId {
    ("tcp".into(), SERVER_V4.into(), Some(u64::from(port)))
}

fn dns(remote: &str) -> TargetId {
    ("udp".into(), remote.into(), Some(53))
}

fn target(finished: &Finished, id: &TargetId) -> Value {
    finished.targets().remove(id).unwrap_or_else(|| {
        panic!(
            "no target {id:?}; records: {:#?}; stderr: {}",
            finished.records, finished.stderr
        )
    })
}

/// The handle `nft -a list chain FAMILY TABLE CHAIN` shows for the rule containing `needle`.
fn handle_of(ns: &Netns, chain: &[&str], needle: &str) -> u64 {
    let mut args = vec!["-a", "list", "chain"];
    args.extend_from_slice(chain);
    let out = ns.ok("nft", &args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.contains(needle))
        .and_then(|l| l.rsplit_once("# handle "))
        .and_then(|(_, h)| h.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rule with {needle:?} in {text}"))
}

/// The text nft prints for that rule, without its handle.
fn text_of(ns: &Netns, chain: &[&str], needle: &str) -> String {
    let mut args = vec!["-a", "list", "chain"];
    args.extend_from_slice(chain);
    let out = ns.ok("nft", &args);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains(needle))
        .and_then(|l| l.rsplit_once(" # handle "))
        .map_or_else(
            || panic!("no rule with {needle:?}"),
            |(text, _)| text.trim().to_owned(),
        )
}

fn time_of(record: &Value, field: &str) -> SystemTime {
    let text = record[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {record}"));
    humantime::parse_rfc3339(text).unwrap_or_else(|err| panic!("{field} {text:?}: {err}"))
}

/// The `ruleset` record that added the rule with `handle` to `chain`.
fn added_in(run: &NetwatchRun, chain: [&str; 3], handle: u64) -> Value {
    run.wait_for(Duration::from_secs(20), "the ruleset record", |r| {
        r["type"] == "ruleset"
            && r["changes"].as_array().is_some_and(|changes| {
                changes.iter().any(|c| {
                    c["op"] == "add"
                        && c["family"] == chain[0]
                        && c["table"] == chain[1]
                        && c["chain"] == chain[2]
                        && c["handle"] == handle
                })
            })
    })
}

/// Runs `client` until netwatch's `done` holds (each run's packets are traced from the first
/// drop on), at most `limit`.
fn until(
    run: &NetwatchRun,
    lab: &Lab,
    client: &Client,
    limit: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) {
    let start = Instant::now();
    loop {
        client.run(&lab.client);
        if run.records().iter().any(&done) {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "no {what} within {limit:?}; records: {:#?}; stderr: {}",
            run.records(),
            run.stderr_text()
        );
    }
}

/// netwatch tracing rules in the client namespace: JSON, a one-second timeout, and `extra`.
fn tracing(lab: &Lab, extra: &[&str]) -> NetwatchRun {
    let mut args = vec![
        "--iface",
        CLIENT_IFACE,
        "--json",
        "--timeout",
        "1s",
        "--trace-rules",
    ];
    args.extend_from_slice(extra);
    lab.start_netwatch(&args)
}

/// Stops netwatch, which must end well.
fn stopped(run: NetwatchRun) -> Finished {
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    finished
}

/// The `local-firewall-drops` summary written at exit.
fn local_finding(finished: &Finished) -> String {
    finished
        .exit_findings()
        .into_iter()
        .find(|f| f["finding"] == "local-firewall-drops")
        .and_then(|f| f["summary"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no local-firewall-drops at exit: {:#?}", finished.records))
}

/// Waits for the `local-firewall-drops` finding about `remote`: a target blackholed for less
/// than a timeout is no evidence yet, so the finding comes a moment after the verdict.
fn wait_for_finding(run: &NetwatchRun, remote: &str) {
    run.wait_for(
        Duration::from_secs(20),
        "the local-firewall-drops finding",
        |r| {
            r["type"] == "diagnosis"
                && r["finding"] == "local-firewall-drops"
                && r["evidence"][0]["remote"] == remote
                && r["evidence"][0]["verdict"] == "blackholed"
        },
    );
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn an_output_rule_that_drops_a_working_connection_is_named_with_its_change() {
    if !prerequisites(
        "an_output_rule_that_drops_a_working_connection_is_named_with_its_change",
        &["ip", "nft", "nc"],
    ) {
        return;
    }
    let mut lab = Lab::new();
    lab.start_listener(LISTENER);
    Lab::nft_in(&lab.client, HOST_FIREWALL);
    // A short window: the answer before the change leaves it soon, and the verdict is
    // blackholed rather than degraded.
    let netwatch = tracing(&lab, &["--window", "3s"]);
    Client::nc(SERVER_V4, 3306, 2).run(&lab.client);
    netwatch.wait_for(Duration::from_secs(10), "tcp/3306 ok", |r| {
        r["type"] == "verdict" && r["port"] == 3306 && r["verdict"] == "ok"
    });

    let changed_at = SystemTime::now();
    lab.client.ok(
        "nft",
        &[
            "add",
            "rule",
            "inet",
            "host",
            "output",
            "tcp",
            "dport",
            "3306",
            "drop",
            "comment",
            "\"mysql closed by change 1234\"",
        ],
    );
    let chain = ["inet", "host", "output"];
    let handle = handle_of(&lab.client, &chain, "change 1234");
    let record = added_in(&netwatch, chain, handle);
    let generation = record["generation"].as_u64().expect("generation");
    let change = record["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["handle"] == handle)
        .unwrap()
        .clone();
    assert_eq!(
        change["rule"],
        text_of(&lab.client, &chain, "change 1234"),
        "as nft -a list prints it: {record}"
    );
    assert!(
        change["rule"]
            .as_str()
            .unwrap()
            .contains("comment \"mysql closed by change 1234\""),
        "{record}"
    );
    assert!(
        time_of(&record, "time") >= changed_at - Duration::from_secs(1),
        "{record}"
    );

    if !kernel_has_drop_reasons() {
        // The requests die before tc and no drop is reported: nothing to tie or trace.
        let finished = netwatch.stop();
        assert!(finished.status.success(), "{}", finished.stderr);
        assert!(
            finished
                .records
                .iter()
                .all(|r| r.get("after_change").is_none())
        );
        return;
    }
    let nc = Client::nc(SERVER_V4, 3306, 1);
    until(
        &netwatch,
        &lab,
        &nc,
        Duration::from_secs(30),
        "the traced rule, blackholed",
        |r| {
            r["type"] == "verdict"
                && r["port"] == 3306
                && r["verdict"] == "blackholed"
                && r["local_drops_rules"][0]["handle"] == handle
        },
    );
    wait_for_finding(&netwatch, SERVER_V4);
    let finished = stopped(netwatch);

    let t = target(&finished, &tcp(3306));
    assert_eq!(t["verdict"], "blackholed", "{t}");
    assert_eq!(t["reason"], "here:netfilter-drop", "{t}");
    assert_eq!(t["after_change"], generation, "{t}");
    let since = time_of(&t, "since");
    let changed = time_of(&record, "time");
    assert!(
        since + Duration::from_secs(1) >= changed && since <= changed + Duration::from_secs(5),
        "since {t} vs the change {record}"
    );
    let rules = t["local_drops_rules"]
        .as_array()
        .expect("local_drops_rules");
    let rule = &rules[0];
    assert_eq!(
        (
            &rule["family"],
            &rule["table"],
            &rule["chain"],
            &rule["handle"],
            &rule["verdict"]
        ),
        (
            &Value::from("inet"),
            &Value::from("host"),
            &Value::from("output"),
            &Value::from(handle),
            &Value::from("drop")
        ),
        "{t}"
    );
    assert_eq!(rule["rule"], change["rule"], "{t}");
    assert!(rule["count"].as_u64().unwrap_or(0) >= 1, "{t}");

    let summary = local_finding(&finished);
    assert!(
        summary.starts_with("Blackholed since ")
            && summary.contains(" s after this host's ruleset changed: rule added to inet host output: `tcp dport 3306 drop comment \"mysql closed by change 1234\"`"),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("nft delete rule inet host output handle {handle}"))
            && summary.contains(&format!(
                "nft insert rule inet host output position {handle} ip daddr {SERVER_V4} tcp dport 3306 accept"
            )),
        "{summary}"
    );
    // The trace table went with netwatch.
    let tables = lab.client.ok("nft", &["list", "tables"]);
    assert!(
        !String::from_utf8_lossy(&tables.stdout).contains("netwatch_trace"),
        "{}",
        String::from_utf8_lossy(&tables.stdout)
    );
}

#[test]
fn an_input_policy_that_drops_a_resolvers_answers_is_named_as_the_policy() {
    if !prerequisites(
        "an_input_policy_that_drops_a_resolvers_answers_is_named_as_the_policy",
        &["ip", "nft", "dnsmasq", "dig"],
    ) {
        return;
    }
    let mut lab = Lab::new();
    lab.nft(OPEN_DNS);
    lab.start_dns();
    Lab::nft_in(&lab.client, HOST_FIREWALL);
    let netwatch = tracing(&lab, &["--window", "3s"]);
    Client::dig(DNS_V4, "before.example").run(&lab.client);
    netwatch.wait_for(Duration::from_secs(10), "the resolver ok", |r| {
        r["type"] == "verdict" && r["remote"] == DNS_V4 && r["verdict"] == "ok"
    });
    // The tightened input chain: default drop, and no rule for the answers.
    Lab::nft_in(
        &lab.client,
        "table inet host {\n chain input {\n  type filter hook input priority 0; policy drop;\n }\n}\n",
    );
    let record = netwatch.wait_for(Duration::from_secs(10), "the policy change", |r| {
        r["type"] == "ruleset"
            && r["chains"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["chain"] == "input" && c["policy"] == "drop")
            })
    });
    if !kernel_has_drop_reasons() {
        stopped(netwatch);
        return;
    }
    let dig = Client::dig(DNS_V4, "after.example");
    until(
        &netwatch,
        &lab,
        &dig,
        Duration::from_secs(30),
        "the policy traced",
        |r| {
            r["type"] == "verdict"
                && r["remote"] == DNS_V4
                && r["verdict"] == "blackholed"
                && r["local_drops_rules"][0]["verdict"] == "policy"
        },
    );
    wait_for_finding(&netwatch, DNS_V4);
    let finished = stopped(netwatch);
    let t = target(&finished, &dns(DNS_V4));
    assert_eq!(t["reason"], "here:netfilter-drop", "{t}");
    assert_eq!(t["after_change"], record["generation"], "{t} {record}");
    let rule = &t["local_drops_rules"][0];
    assert_eq!(
        (
            &rule["family"],
            &rule["table"],
            &rule["chain"],
            &rule["handle"]
        ),
        (
            &Value::from("inet"),
            &Value::from("host"),
            &Value::from("input"),
            &Value::Null
        ),
        "the chain's policy, not a rule: {t}"
    );
    assert!(
        rule["rule"]
            .as_str()
            .unwrap_or_default()
            .contains("policy drop"),
        "{t}"
    );
    let summary = local_finding(&finished);
    assert!(
        summary.contains(&format!("The answers from {DNS_V4} udp/53 are dropped by the policy of this host's chain inet host input"))
            && summary.contains("nft insert rule inet host input ct state established,related accept")
            && summary.contains("after this host's ruleset changed: chain inet host input policy drop"),
        "{summary}"
    );
}

#[test]
fn an_iptables_nft_rule_is_named_the_same_way() {
    if !prerequisites(
        "an_iptables_nft_rule_is_named_the_same_way",
        &["ip", "nft", "iptables-nft", "dnsmasq", "dig"],
    ) {
        return;
    }
    let mut lab = Lab::new();
    lab.nft(OPEN_DNS);
    lab.start_dns();
    let netwatch = tracing(&lab, &[]);
    lab.client.ok(
        "iptables-nft",
        &[
            "-A", "OUTPUT", "-p", "udp", "-d", DNS2_V4, "--dport", "53", "-j", "DROP",
        ],
    );
    let chain = ["ip", "filter", "OUTPUT"];
    let handle = handle_of(&lab.client, &chain, DNS2_V4);
    let record = added_in(&netwatch, chain, handle);
    let listed = record["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["handle"] == handle)
        .unwrap()["rule"]
        .clone();
    assert_eq!(listed, text_of(&lab.client, &chain, DNS2_V4), "{record}");
    assert_eq!(record["process"], "iptables-nft", "{record}");
    if !kernel_has_drop_reasons() {
        stopped(netwatch);
        return;
    }
    let dig = Client::dig(DNS2_V4, "iptables.example");
    until(
        &netwatch,
        &lab,
        &dig,
        Duration::from_secs(30),
        "the iptables rule traced",
        |r| {
            r["type"] == "verdict"
                && r["remote"] == DNS2_V4
                && r["local_drops_rules"][0]["handle"] == handle
        },
    );
    wait_for_finding(&netwatch, DNS2_V4);
    let finished = stopped(netwatch);
    let t = target(&finished, &dns(DNS2_V4));
    let rule = &t["local_drops_rules"][0];
    assert_eq!(
        (
            &rule["family"],
            &rule["table"],
            &rule["chain"],
            &rule["verdict"]
        ),
        (
            &Value::from("ip"),
            &Value::from("filter"),
            &Value::from("OUTPUT"),
            &Value::from("drop")
        ),
        "{t}"
    );
    assert_eq!(t["after_change"], record["generation"], "{t}");
    let summary = local_finding(&finished);
    assert!(
        summary.contains(&format!("nft delete rule ip filter OUTPUT handle {handle}")),
        "{summary}"
    );
}

#[test]
fn a_reject_rule_is_named_as_a_reject() {
    if !prerequisites("a_reject_rule_is_named_as_a_reject", &["ip", "nft", "nc"]) {
        return;
    }
    let mut lab = Lab::new();
    lab.start_listener(LISTENER);
    Lab::nft_in(&lab.client, HOST_FIREWALL);
    let netwatch = tracing(&lab, &[]);
    lab.client.ok(
        "nft",
        &[
            "add",
            "rule",
            "inet",
            "host",
            "output",
            "tcp",
            "dport",
            "8888",
            "reject",
            "with",
            "tcp",
            "reset",
            "comment",
            "\"no proxy\"",
        ],
    );
    let chain = ["inet", "host", "output"];
    let handle = handle_of(&lab.client, &chain, "no proxy");
    let record = added_in(&netwatch, chain, handle);
    if !kernel_has_drop_reasons() {
        stopped(netwatch);
        return;
    }
    let nc = Client::nc(SERVER_V4, 8888, 1);
    until(
        &netwatch,
        &lab,
        &nc,
        Duration::from_secs(30),
        "the reject rule traced",
        |r| {
            r["type"] == "verdict"
                && r["port"] == 8888
                && r["local_drops_rules"][0]["handle"] == handle
        },
    );
    wait_for_finding(&netwatch, SERVER_V4);
    let finished = stopped(netwatch);
    let t = target(&finished, &tcp(8888));
    let rule = &t["local_drops_rules"][0];
    assert_eq!(rule["verdict"], "reject", "{t}");
    assert_eq!(
        rule["rule"],
        text_of(&lab.client, &chain, "no proxy"),
        "{t}"
    );
    assert_eq!(t["after_change"], record["generation"], "{t}");
    let summary = local_finding(&finished);
    assert!(
        summary.contains("are rejected by this host's rule `tcp dport 8888 reject with tcp reset comment \"no proxy\"`")
            && summary.contains(&format!("nft delete rule inet host output handle {handle}")),
        "{summary}"
    );
}

/// The counter of ruleset changes, scraped from netwatch's metrics in the client namespace.
fn ruleset_changes_metric(ns: &Netns, port: u16) -> Option<u64> {
    let out = ns.run(
        "curl",
        &["-s", "-m", "3", &format!("http://127.0.0.1:{port}/metrics")],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("netwatch_ruleset_changes_total "))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_burst_of_500_rule_changes_is_summarized_and_every_one_counted() {
    if !prerequisites(
        "a_burst_of_500_rule_changes_is_summarized_and_every_one_counted",
        &["ip", "nft", "curl"],
    ) {
        return;
    }
    let lab = Lab::new();
    Lab::nft_in(&lab.client, HOST_FIREWALL);
    let netwatch = lab.start_netwatch(&["--iface", CLIENT_IFACE, "--json", "--metrics", "9464"]);
    // One rule a commit, as a script loading rules one by one does: 500 generations.
    let script = (0..500).fold(String::new(), |mut script, i| {
        let _ = writeln!(
            script,
            "add rule inet host output tcp dport {} drop",
            20_000 + i
        );
        script
    });
    let started = Instant::now();
    let mut nft = lab
        .client
        .command("nft")
        .arg("-i")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("nft -i");
    std::io::Write::write_all(&mut nft.stdin.take().expect("stdin"), script.as_bytes())
        .expect("the script");
    assert!(nft.wait().expect("nft").success());
    let burst = started.elapsed();
    eprintln!("500 commits in {:.2} s", burst.as_secs_f64());

    let counted = |records: &[Value]| -> u64 {
        records
            .iter()
            .filter(|r| r["type"] == "ruleset")
            .map(|r| {
                r["summarized"]["total_changes"]
                    .as_u64()
                    .unwrap_or_else(|| {
                        (r["changes"].as_array().map_or(0, Vec::len)
                            + r["chains"].as_array().map_or(0, Vec::len))
                            as u64
                    })
            })
            .sum()
    };
    wait_until(Duration::from_secs(20), "500 changes in records", || {
        counted(&netwatch.records()) >= 500
    });
    // Then all 500 deleted in one commit.
    lab.client
        .ok("nft", &["flush", "chain", "inet", "host", "output"]);
    wait_until(Duration::from_secs(20), "1,000 changes in records", || {
        counted(&netwatch.records()) >= 1000
    });
    wait_until(Duration::from_secs(10), "the metric", || {
        ruleset_changes_metric(&lab.client, 9464) == Some(1000)
    });
    let finished = stopped(netwatch);
    let records: Vec<&Value> = finished
        .records
        .iter()
        .filter(|r| r["type"] == "ruleset")
        .collect();
    assert_eq!(counted(&finished.records), 1000, "{records:#?}");
    // At most 4 records a second while the burst lasts (and one for the flush, one for the
    // poll that straddles its end): far fewer than one per change.
    let bound = usize::try_from(4 * (burst.as_secs() + 1) + 2).unwrap_or(usize::MAX);
    assert!(
        records.len() <= bound.min(100),
        "summarized, not one record per change: {} records for a {:.2} s burst",
        records.len(),
        burst.as_secs_f64()
    );
    for record in &records {
        let listed = record["changes"].as_array().map_or(0, Vec::len);
        assert!(listed <= 16, "a record lists 16 changes at most: {record}");
    }
    let flush = records
        .iter()
        .find(|r| r["changes"][0]["op"] == "delete")
        .expect("the flush's record");
    assert_eq!(flush["summarized"]["generations"], 1, "{flush}");
    assert_eq!(flush["summarized"]["total_changes"], 500, "{flush}");
    assert_eq!(flush["summarized"]["omitted"], 484, "{flush}");
    assert_eq!(
        flush["changes"][0]["rule"], "tcp dport 20000 drop",
        "a deleted rule named by the text it had: {flush}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["summarized"]["generations"].as_u64() > Some(1)),
        "{records:#?}"
    );
}

#[test]
fn a_killed_tracing_netwatch_leaves_a_table_the_next_start_removes() {
    if !prerequisites(
        "a_killed_tracing_netwatch_leaves_a_table_the_next_start_removes",
        &["ip", "nft"],
    ) {
        return;
    }
    let lab = Lab::new();
    let has_table = || {
        String::from_utf8_lossy(&lab.client.ok("nft", &["list", "tables"]).stdout)
            .contains("table inet netwatch_trace")
    };
    let first = lab.start_netwatch(&["--iface", CLIENT_IFACE, "--json", "--trace-rules"]);
    assert!(has_table(), "{}", first.stderr_text());
    let killed = first.stop_with(libc::SIGKILL);
    assert!(!killed.status.success());
    assert!(has_table(), "nobody removes it after a SIGKILL");
    let second = lab.start_netwatch(&["--iface", CLIENT_IFACE, "--json"]);
    assert!(!has_table(), "{}", second.stderr_text());
    assert!(
        second.stderr_text().contains(
            "removed table inet netwatch_trace, left behind by a netwatch that was killed"
        ),
        "{}",
        second.stderr_text()
    );
    // A live tracing netwatch's table is not another one's to remove.
    let tracing = lab.start_netwatch(&["--iface", CLIENT_IFACE, "--json", "--trace-rules"]);
    let third = lab.start_netwatch(&["--iface", CLIENT_IFACE, "--json"]);
    assert!(has_table(), "{}", third.stderr_text());
    assert!(
        !third.stderr_text().contains("removed table"),
        "{}",
        third.stderr_text()
    );
    let finished = tracing.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(!has_table(), "removed at exit");
    for run in [second, third] {
        let finished = run.stop();
        assert!(finished.status.success(), "{}", finished.stderr);
    }
}

#[test]
fn with_least_privilege_the_trace_table_is_added_and_removed_at_exit() {
    if !prerequisites(
        "with_least_privilege_the_trace_table_is_added_and_removed_at_exit",
        &["ip", "nft", "setpriv"],
    ) {
        return;
    }
    let lab = Lab::new();
    netwatch_tests::lab::unlimited_memlock_for_old_kernels();
    let mut command = lab.client.command("setpriv");
    command
        .args(netwatch_tests::lab::as_nobody_with("bpf,net_admin,perfmon"))
        .arg(netwatch_tests::lab::netwatch_binary())
        .args(["--iface", CLIENT_IFACE, "--json", "--trace-rules"]);
    let netwatch = NetwatchRun::start(command);
    let tables =
        || String::from_utf8_lossy(&lab.client.ok("nft", &["list", "tables"]).stdout).into_owned();
    assert!(
        tables().contains("netwatch_trace"),
        "{}",
        netwatch.stderr_text()
    );
    // Its capabilities are down to CAP_NET_ADMIN by now: the nft it runs must still work.
    Lab::nft_in(
        &lab.client,
        "table inet late {\n chain c {\n  tcp dport 7 drop\n }\n}\n",
    );
    let record = netwatch.wait_for(Duration::from_secs(10), "a change read", |r| {
        r["type"] == "ruleset"
    });
    assert_eq!(record["changes"][0]["rule"], "tcp dport 7 drop", "{record}");
    let finished = stopped(netwatch);
    assert_eq!(
        finished.summary()["trace_rules"],
        "available",
        "{}",
        finished.stderr
    );
    assert!(!tables().contains("netwatch_trace"), "{}", finished.stderr);
    assert!(
        !finished.stderr.contains("could not"),
        "{}",
        finished.stderr
    );
}

#[test]
fn without_nft_rules_are_not_traced_everything_else_works_and_it_is_said_once() {
    if !prerequisites(
        "without_nft_rules_are_not_traced_everything_else_works_and_it_is_said_once",
        &["ip", "nft", "dnsmasq", "dig"],
    ) {
        return;
    }
    let mut lab = Lab::new();
    lab.nft(OPEN_DNS);
    lab.start_dns();
    Lab::nft_in(&lab.client, HOST_FIREWALL);
    // nft is in /usr/sbin: a PATH without it is a host without nft.
    let mut command = lab.client.command("env");
    command
        .arg("PATH=/usr/bin:/bin")
        .arg(netwatch_tests::lab::netwatch_binary())
        .args([
            "--iface",
            CLIENT_IFACE,
            "--json",
            "--timeout",
            "1s",
            "--trace-rules",
        ]);
    let netwatch = NetwatchRun::start(command);
    Client::dig(DNS_V4, "still.example").run(&lab.client);
    netwatch.wait_for(Duration::from_secs(10), "the resolver ok", |r| {
        r["type"] == "verdict" && r["remote"] == DNS_V4 && r["verdict"] == "ok"
    });
    lab.client.ok(
        "nft",
        &[
            "add", "rule", "inet", "host", "output", "tcp", "dport", "7", "drop",
        ],
    );
    let record = netwatch.wait_for(
        Duration::from_secs(10),
        "the change, without its text",
        |r| r["type"] == "ruleset",
    );
    assert_eq!(record["changes"][0]["rule"], "(text unknown)", "{record}");
    let finished = stopped(netwatch);
    let said: Vec<&str> = finished
        .stderr
        .lines()
        .filter(|l| l.contains("--trace-rules"))
        .collect();
    assert_eq!(
        said,
        vec![
            "netwatch: rules that drop packets are not named (--trace-rules): nft is not installed"
        ],
        "once: {}",
        finished.stderr
    );
    assert_eq!(
        finished.summary()["trace_rules"],
        "unavailable: nft is not installed"
    );
    assert_eq!(finished.summary()["ruleset"], "followed");
    let tables = lab.client.ok("nft", &["list", "tables"]);
    assert!(!String::from_utf8_lossy(&tables.stdout).contains("netwatch_trace"));
}

#[test]
fn legacy_iptables_rules_are_said_once_to_be_unfollowed() {
    if !prerequisites(
        "legacy_iptables_rules_are_said_once_to_be_unfollowed",
        &["ip", "nft", "iptables-legacy"],
    ) {
        return;
    }
    let lab = Lab::new();
    lab.client.ok(
        "iptables-legacy",
        &["-A", "OUTPUT", "-p", "udp", "--dport", "9", "-j", "DROP"],
    );
    let netwatch = lab.start_netwatch(&["--iface", CLIENT_IFACE, "--json", "--duration", "1s"]);
    let finished = netwatch.wait_exit(Duration::from_secs(20));
    assert!(finished.status.success(), "{}", finished.stderr);
    let said: Vec<&str> = finished
        .stderr
        .lines()
        .filter(|l| l.contains("legacy iptables"))
        .collect();
    assert_eq!(
        said,
        vec![
            "netwatch: legacy iptables tables are loaded here (filter): their changes are not \
             followed (only nftables, iptables-nft included, announces changes)"
        ],
        "{}",
        finished.stderr
    );
}

#[test]
fn the_live_view_marks_the_ruleset_change_on_each_targets_timeline() {
    if !prerequisites(
        "the_live_view_marks_the_ruleset_change_on_each_targets_timeline",
        &["ip", "nft", "tmux", "nc"],
    ) {
        return;
    }
    let mut lab = Lab::new();
    lab.start_listener(LISTENER);
    Lab::nft_in(&lab.client, HOST_FIREWALL);
    let command = format!(
        "ip netns exec {} {} --iface {CLIENT_IFACE} --timeout 1s; echo EXITED-$?; sleep 60",
        lab.client.name,
        netwatch_tests::lab::netwatch_binary().display()
    );
    let terminal = netwatch_tests::terminal::Tmux::start(&command, 200, 40);
    wait_until(Duration::from_secs(20), "the live view", || {
        terminal.screen().contains("Targets")
    });
    let row = |text: &str| -> Vec<char> {
        text.lines()
            .find(|l| l.contains(SERVER_V4) && l.contains(" 3306 "))
            .unwrap_or_default()
            .chars()
            .collect()
    };
    // Answered for a few seconds (two intervals at least), then the change.
    let answered_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < answered_until {
        Client::nc(SERVER_V4, 3306, 1).run(&lab.client);
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_until(Duration::from_secs(10), "answers on the timeline", || {
        row(&terminal.screen()).contains(&'▁')
    });
    lab.client.ok(
        "nft",
        &[
            "add", "rule", "inet", "host", "output", "tcp", "dport", "3306", "drop",
        ],
    );
    let failed_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < failed_until {
        Client::nc(SERVER_V4, 3306, 1).run(&lab.client);
    }
    let check = || -> Result<String, String> {
        let text = terminal.screen();
        let header = text
            .lines()
            .find(|l| l.contains("VERDICT"))
            .ok_or("no header")?;
        let marker = header
            .chars()
            .position(|c| c == '▼')
            .ok_or("no ▼ in the header")?;
        // Only the history column draws these glyphs: left of the mark is before the
        // change, right of it after.
        let cells = row(&text);
        let before = cells.get(..marker).ok_or("row too short")?;
        let after = cells.get(marker + 1..).ok_or("row too short")?;
        if !before.contains(&'▁') {
            return Err(format!("no answers before the change:\n{text}"));
        }
        if !after.contains(&'█') {
            return Err(format!("no failures after the change:\n{text}"));
        }
        if !text.contains("This host's ruleset changes")
            || !text.contains("rule added to inet host output: `tcp dport 3306 drop`")
        {
            return Err(format!("the change is not listed:\n{text}"));
        }
        Ok(text)
    };
    let start = Instant::now();
    let seen = loop {
        match check() {
            Ok(text) => break text,
            Err(why) => assert!(start.elapsed() < Duration::from_secs(20), "{why}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("{seen}");
    terminal.keys(&["q"]);
    wait_until(Duration::from_secs(10), "exit", || {
        terminal.screen().contains("EXITED-0")
    });
}

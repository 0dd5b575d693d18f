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
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use netwatch_tests::{
    clients::Client,
    kernel_has_drop_reasons,
    lab::{
        CLIENT_IFACE, DNS_V4, DNS2_V4, Finished, Lab, NetwatchRun, Netns, OPEN_DNS, SERVER_V4,
        TargetId, wait_until,
    },
    prerequisites,
};
use serde_json::Value;

const LISTENER: &str = env!("CARGO_BIN_EXE_lab-listener");

/// The client's own firewall before the change: everything allowed, in chains an operator
/// would have.
const HOST_FIREWALL: &str = r#"
table inet host {
  chain input {
    type filter hook input priority 0; policy accept;
  }
  chain output {
    type filter hook output priority 0; policy accept;
  }
}
"#;

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
        .map(|(text, _)| text.trim().to_owned())
        .unwrap_or_else(|| panic!("no rule with {needle:?}"))
}

fn time_of(record: &Value, field: &str) -> SystemTime {
    let text = record[field].as_str().unwrap_or_else(|| panic!("{field} in {record}"));
    humantime::parse_rfc3339(text).unwrap_or_else(|err| panic!("{field} {text:?}: {err}"))
}

/// The `ruleset` record that added the rule with `handle` to `chain`.
fn added_in(run: &NetwatchRun, chain: [&str; 3], handle: u64) -> Value {
    run.wait_for(Duration::from_secs(10), "the ruleset record", |r| {
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
fn until(run: &NetwatchRun, lab: &Lab, client: &Client, limit: Duration, what: &str, done: impl Fn(&Value) -> bool) {
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

#[test]
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
    let netwatch = lab.start_netwatch(&[
        "--iface",
        CLIENT_IFACE,
        "--json",
        "--timeout",
        "1s",
        "--window",
        "3s",
        "--trace-rules",
    ]);
    Client::nc(SERVER_V4, 3306, 2).run(&lab.client);
    netwatch.wait_for(Duration::from_secs(10), "tcp/3306 ok", |r| {
        r["type"] == "verdict" && r["port"] == 3306 && r["verdict"] == "ok"
    });

    let changed_at = SystemTime::now();
    lab.client.ok(
        "nft",
        &[
            "add", "rule", "inet", "host", "output", "tcp", "dport", "3306", "drop", "comment",
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
    assert!(time_of(&record, "time") >= changed_at - Duration::from_secs(1), "{record}");

    if !kernel_has_drop_reasons() {
        // The requests die before tc and no drop is reported: nothing to tie or trace.
        let finished = netwatch.stop();
        assert!(finished.status.success(), "{}", finished.stderr);
        assert!(finished.records.iter().all(|r| r.get("after_change").is_none()));
        return;
    }
    let nc = Client::nc(SERVER_V4, 3306, 1);
    until(&netwatch, &lab, &nc, Duration::from_secs(30), "the traced rule, blackholed", |r| {
        r["type"] == "verdict"
            && r["port"] == 3306
            && r["verdict"] == "blackholed"
            && r["local_drops_rules"][0]["handle"] == handle
    });
    // Blackholed for a timeout, the silence is evidence: the finding comes.
    netwatch.wait_for(Duration::from_secs(10), "the finding", |r| {
        r["type"] == "diagnosis"
            && r["finding"] == "local-firewall-drops"
            && r["evidence"][0]["verdict"] == "blackholed"
    });
    let finished = netwatch.stop();
    assert!(finished.status.success(), "{}", finished.stderr);

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
    let rules = t["local_drops_rules"].as_array().expect("local_drops_rules");
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

    let finding = finished
        .exit_findings()
        .into_iter()
        .find(|f| f["finding"] == "local-firewall-drops")
        .expect("local-firewall-drops");
    let summary = finding["summary"].as_str().unwrap();
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

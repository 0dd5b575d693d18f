//! The files in `deploy/` against the tools that will read them and against the metrics
//! netwatch actually exposes: promtool checks and unit-tests the alerting rules and lints the
//! scrape body of `netwatch::report::metrics::render`; every query of the Grafana dashboard
//! names only metrics that body has.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use netwatch::{
    interfaces::LinkState,
    report::{
        RunInfo, WatchedInterface,
        metrics::{Cardinality, render},
    },
    snapshot::{KernelStats, Snapshot, TargetView},
    target::{Direction, Proto},
    verdict::Verdict,
};
use netwatch_common::{KernelCounter, LATENCY_BUCKETS, REASON_SLOTS, Reason, latency_bucket};
use serde_json::Value;

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// Runs `promtool` with `args` (and `stdin`), failing with its output unless it succeeds.
fn promtool(args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {args:?} failed ({}):\n{text}",
        out.status
    );
    text
}

fn target(proto: Proto, remote: &str, port: Option<u16>, verdict: Verdict) -> TargetView {
    TargetView {
        direction: Direction::Egress,
        proto,
        remote: remote.parse().unwrap(),
        port,
        requests: 0,
        answered: 0,
        rejected: 0,
        unanswered: 0,
        retransmits: 0,
        verdict,
        reason: None,
        in_flight: 0,
        untracked: 0,
        late: 0,
        abandoned: 0,
        provisional: false,
        latency_p50_ms: None,
        latency_p99_ms: None,
        last_seen_ago_s: None,
        names: None,
        latency_buckets: [0; LATENCY_BUCKETS],
        rejected_by_reason: [0; REASON_SLOTS],
        local_drops: std::collections::BTreeMap::new(),
        requests_dropped_here: 0,
        answers_dropped_here: 0,
        processes: Vec::new(),
        mtu_stalls: 0,
        mtu_recoveries: 0,
        largest_delivered: None,
        smallest_lost: None,
        path_mtu: None,
        path_mtu_signals: 0,
        path_mtu_dropped_here: 0,
        fragmented_answers: 0,
        since: std::time::SystemTime::UNIX_EPOCH,
        after_change: None,
        change: None,
        local_drops_rules: Vec::new(),
        timeline: Default::default(),
    }
}

/// A snapshot with every kind of target: blackholed DNS, rejected and ok TCP, degraded
/// ICMP, pending `ICMPv6`, more DNS remotes than the bound so one is folded into `other`, and
/// inbound ones (blackholed tcp/22, ok ping).
fn snapshot() -> Snapshot {
    let mut targets = Vec::new();
    let mut dns = target(Proto::Udp, "198.51.100.53", Some(53), Verdict::Blackholed);
    dns.requests = 14;
    dns.unanswered = 14;
    dns.retransmits = 2;
    targets.push(dns);
    for i in 1..=3u8 {
        let mut resolver = target(Proto::Udp, &format!("192.0.2.{i}"), Some(53), Verdict::Ok);
        resolver.requests = u64::from(i);
        resolver.answered = u64::from(i);
        resolver.latency_buckets[latency_bucket(2_000_000)] = u64::from(i);
        targets.push(resolver);
    }
    let mut rejected = target(Proto::Tcp, "198.51.100.10", Some(8443), Verdict::Rejected);
    rejected.requests = 3;
    rejected.rejected = 3;
    rejected.reason = Some("icmp-host-prohibited");
    rejected.rejected_by_reason[usize::from(Reason::icmp_unreachable(10))] = 3;
    targets.push(rejected);
    let mut https = target(Proto::Tcp, "2001:db8::10", Some(443), Verdict::Ok);
    https.requests = 20;
    https.answered = 20;
    https.untracked = 1;
    https.latency_buckets[latency_bucket(900_000)] = 12;
    https.latency_buckets[latency_bucket(40_000_000)] = 7;
    https.latency_buckets[LATENCY_BUCKETS - 1] = 1;
    targets.push(https);
    let mut ping = target(Proto::Icmp, "198.51.100.1", None, Verdict::Degraded);
    ping.requests = 10;
    ping.answered = 6;
    ping.unanswered = 4;
    ping.late = 1;
    ping.latency_buckets[latency_bucket(15_000_000)] = 6;
    targets.push(ping);
    targets.push(target(Proto::Icmpv6, "2001:db8::1", None, Verdict::Pending));
    // Requests this host received: a peer left unanswered on this host's tcp/22, a ping.
    let mut ssh = target(Proto::Tcp, "203.0.113.9", Some(22), Verdict::Blackholed);
    ssh.direction = Direction::Ingress;
    (ssh.requests, ssh.unanswered) = (4, 4);
    targets.push(ssh);
    let mut ping_in = target(Proto::Icmp, "203.0.113.9", None, Verdict::Ok);
    ping_in.direction = Direction::Ingress;
    (ping_in.requests, ping_in.answered) = (2, 2);
    ping_in.latency_buckets[latency_bucket(50_000)] = 2;
    targets.push(ping_in);
    targets.sort_by(TargetView::worst_first);
    let mut kernel = [0; KernelCounter::COUNT];
    kernel[KernelCounter::PendingFull as usize] = 1;
    kernel[KernelCounter::UnmatchedAnswer as usize] = 9;
    Snapshot {
        targets,
        kernel: KernelStats::from_counters(&kernel),
        in_flight: 2,
        tombstones: 5,
        ..Snapshot::default()
    }
}

fn run_info() -> RunInfo {
    RunInfo {
        interfaces: vec![
            WatchedInterface {
                name: "eth0".into(),
                kind: "ethernet",
                attach: "tcx",
                state: LinkState::Up,
            },
            WatchedInterface {
                name: "wg0".into(),
                kind: "wireguard",
                attach: "clsact",
                state: LinkState::Down,
            },
        ],
        uptime: Duration::from_hours(1),
        timeout: Duration::from_secs(3),
        window: Duration::from_mins(1),
        local_drops: "available".to_owned(),
        attribution: "available".to_owned(),
        path_mtu: "available".to_owned(),
        fragments: "available".to_owned(),
        ruleset: "followed".to_owned(),
        trace_rules: "off".to_owned(),
    }
}

fn scrape() -> String {
    render(
        &snapshot(),
        &run_info(),
        &Cardinality {
            remotes_per_service: 3,
        },
    )
}

/// Metric names of the samples in a scrape body.
fn exposed_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| line.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

#[test]
fn metrics_pass_promtool_check_metrics() {
    if !netwatch_tests::prerequisites("metrics_pass_promtool_check_metrics", &["promtool"]) {
        return;
    }
    let body = scrape();
    assert!(
        body.contains("remote=\"other\""),
        "the snapshot exercises folding"
    );
    assert!(body.contains("port=\"\""), "and ICMP targets");
    assert!(body.contains("direction=\"ingress\""), "and inbound ones");
    // Lint problems (missing HELP, counters without _total, …) make promtool exit non-zero.
    let out = promtool(&["check", "metrics"], Some(&body));
    assert!(
        out.trim().is_empty(),
        "promtool check metrics complained:\n{out}"
    );
    // An empty snapshot is a valid scrape too.
    let empty = render(&Snapshot::default(), &run_info(), &Cardinality::default());
    let out = promtool(&["check", "metrics"], Some(&empty));
    assert!(
        out.trim().is_empty(),
        "promtool check metrics complained:\n{out}"
    );
}

#[test]
fn alert_rules_pass_promtool_check_rules() {
    if !netwatch_tests::prerequisites("alert_rules_pass_promtool_check_rules", &["promtool"]) {
        return;
    }
    let rules = deploy("prometheus/netwatch-alerts.yml");
    let out = promtool(&["check", "rules", rules.to_str().unwrap()], None);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn alert_rules_pass_their_unit_tests() {
    if !netwatch_tests::prerequisites("alert_rules_pass_their_unit_tests", &["promtool"]) {
        return;
    }
    let tests = deploy("prometheus/netwatch-alerts.test.yml");
    let out = promtool(&["test", "rules", tests.to_str().unwrap()], None);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Every alert named in the rules has at least one unit test expecting it to fire.
#[test]
fn every_alert_is_unit_tested() {
    if !netwatch_tests::prerequisites("every_alert_is_unit_tested", &["promtool"]) {
        return;
    }
    let rules = std::fs::read_to_string(deploy("prometheus/netwatch-alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(deploy("prometheus/netwatch-alerts.test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 6, "{alerts:?}");
    for alert in alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} is not tested"
        );
    }
    // And every metric the rules use is one netwatch exposes.
    let exposed = exposed_names(&scrape());
    for name in metric_names(&rules) {
        assert!(
            exposed.contains(&name),
            "the rules use {name}, which netwatch does not expose"
        );
    }
}

/// `netwatch_…` names in `text` (the series in `PromQL`, not functions or labels).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("netwatch_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // A name, not part of a longer identifier such as `job="netwatch_x"`' label value.
        let before = rest[..start].chars().last();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '"') {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// Every panel's queries, including panels nested in rows.
fn panel_queries(panels: &[Value], out: &mut Vec<(String, String)>) {
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?").to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((title.clone(), expr.to_owned()));
            }
        }
        if let Some(nested) = panel["panels"].as_array() {
            panel_queries(nested, out);
        }
    }
}

#[test]
fn dashboard_queries_use_only_exposed_metrics() {
    if !netwatch_tests::prerequisites("dashboard_queries_use_only_exposed_metrics", &["promtool"]) {
        return;
    }
    let text = std::fs::read_to_string(deploy("grafana/netwatch-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let mut queries = Vec::new();
    panel_queries(
        dashboard["panels"].as_array().expect("panels"),
        &mut queries,
    );
    let panel_queries_found = queries.len();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(query) = variable["query"]
            .as_str()
            .or(variable["query"]["query"].as_str())
        {
            queries.push((
                format!("${}", variable["name"].as_str().unwrap_or("?")),
                query.to_owned(),
            ));
        }
    }
    assert!(queries.len() >= 8, "{queries:?}");
    let exposed = exposed_names(&scrape());
    let mut used = BTreeSet::new();
    for (title, expr) in &queries {
        for name in metric_names(expr) {
            assert!(
                exposed.contains(&name),
                "panel {title:?} queries {name}, which netwatch does not expose: {expr}"
            );
            used.insert(name);
        }
    }
    for wanted in [
        "netwatch_target_verdict",
        "netwatch_requests_total",
        "netwatch_answered_total",
        "netwatch_unanswered_total",
        "netwatch_rejected_total",
        "netwatch_answer_latency_seconds_bucket",
        "netwatch_evictions_total",
        "netwatch_kernel_events_total",
        "netwatch_build_info",
    ] {
        assert!(used.contains(wanted), "no panel shows {wanted}");
    }
    // Every datasource reference goes through the dashboard's variable: panels, their queries
    // and panels nested in rows alike; only the annotation built into Grafana names its own.
    let mut references = Vec::new();
    datasource_references(&dashboard, "", &mut references);
    let mut checked = 0;
    for (path, reference) in &references {
        let named = reference["uid"].as_str().or(reference.as_str());
        if path.starts_with(".annotations") && named == Some("-- Grafana --") {
            continue;
        }
        assert_eq!(
            named,
            Some("${datasource}"),
            "{path} hard-codes its datasource: {reference}"
        );
        checked += 1;
    }
    // Each query names it too: a dashboard whose references were not found fails here.
    assert!(
        checked >= panel_queries_found,
        "{checked} datasource references for {panel_queries_found} panel queries"
    );
}

/// Every `datasource` field in `value`, anywhere, with its path (`.panels[3].targets[0]`).
fn datasource_references<'a>(value: &'a Value, path: &str, out: &mut Vec<(String, &'a Value)>) {
    match value {
        Value::Object(fields) => {
            for (key, field) in fields {
                let path = format!("{path}.{key}");
                if key == "datasource" {
                    out.push((path.clone(), field));
                }
                datasource_references(field, &path, out);
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                datasource_references(item, &format!("{path}[{index}]"), out);
            }
        }
        _ => {}
    }
}

/// Every dashboard query (Grafana's `$__rate_interval`, `$instance` and `$direction` filled in)
/// is `PromQL` that Prometheus parses: promtool checks them as recording rules.
#[test]
fn dashboard_queries_are_valid_promql() {
    if !netwatch_tests::prerequisites("dashboard_queries_are_valid_promql", &["promtool"]) {
        return;
    }
    let text = std::fs::read_to_string(deploy("grafana/netwatch-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut queries = Vec::new();
    panel_queries(dashboard["panels"].as_array().unwrap(), &mut queries);
    // "SUCCESS: 0 rules found" would pass on a dashboard whose queries were not found.
    assert!(queries.len() >= 8, "the dashboard's queries: {queries:?}");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (index, (_, expr)) in queries.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*")
            .replace("$direction", ".*");
        // A JSON string is a YAML double-quoted scalar.
        let expr = serde_json::to_string(&expr).unwrap();
        writeln!(
            rules,
            "      - record: netwatch:dashboard_query_{index}\n        expr: {expr}"
        )
        .unwrap();
    }
    let path = std::env::temp_dir().join(format!(
        "netwatch-dashboard-{}.rules.yml",
        std::process::id()
    ));
    std::fs::write(&path, rules).unwrap();
    let result =
        std::panic::catch_unwind(|| promtool(&["check", "rules", path.to_str().unwrap()], None));
    std::fs::remove_file(&path).unwrap();
    let out = result.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{out}"
    );
}

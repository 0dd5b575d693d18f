//! Time namespaces: netwatch started in `unshare --time` with `CLOCK_MONOTONIC` shifted,
//! while the kernel programs stamp requests with the host's clock. A dropped request must
//! still turn `blackholed` one `--timeout` after it left: not at once (a positive offset
//! not taken off makes every request look ancient) and not `offset` later (a negative one).

use std::{
    fs,
    process::Stdio,
    time::{Duration, Instant},
};

use netwatch_tests::{
    lab::{CLIENT_IFACE, Lab, NetwatchRun, SERVER_V4, netwatch_binary},
    prerequisites,
};
use serde_json::Value;

const TIMEOUT_S: f64 = 2.0;

fn is_tcp_5432(record: &Value) -> bool {
    record["type"] == "verdict" && record["proto"] == "tcp" && record["port"] == 5432
}

/// One run in a time namespace `offset_s` seconds off the host's monotonic clock.
fn dropped_request_times_out_on_time(lab: &Lab, offset_s: i64) {
    let binary = netwatch_binary();
    let offset = offset_s.to_string();
    let mut command = lab.client.command("unshare");
    // `--kill-child`: if the test dies, killing unshare kills netwatch too. unshare ignores
    // SIGTERM while it waits, so the run ends by `--duration`.
    command.args(["--time", "--monotonic", &offset, "--fork", "--kill-child"]);
    command.arg(&binary);
    command.args([
        "--iface",
        CLIENT_IFACE,
        "--json",
        "--timeout",
        "2s",
        "--duration",
        "8s",
    ]);
    let run = NetwatchRun::start(command);
    // The inherited firewall drops tcp/5432; nc gives up after 1 s. Not waited for here,
    // so the time of the verdict is measured from the request.
    let mut nc = lab
        .client
        .command("nc")
        .args(["-z", "-w", "1", SERVER_V4, "5432"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nc");
    let sent = Instant::now();
    let blackholed = run.wait_for(Duration::from_secs(6), "tcp/5432 blackholed", |r| {
        is_tcp_5432(r) && r["verdict"] == "blackholed"
    });
    let after = sent.elapsed().as_secs_f64();
    let _ = nc.wait();
    eprintln!("offset {offset_s} s: blackholed {after:.2} s after the request");
    assert!(
        after >= TIMEOUT_S - 0.3,
        "offset {offset_s} s: blackholed {after:.2} s after the request, before the {TIMEOUT_S} s \
         timeout: {blackholed}"
    );
    let first = run
        .records()
        .into_iter()
        .find(is_tcp_5432)
        .expect("a verdict record");
    assert_eq!(
        first["verdict"], "pending",
        "offset {offset_s} s: the request is pending first: {first}"
    );
    let ago = blackholed["last_seen_ago_s"]
        .as_f64()
        .expect("last_seen_ago_s");
    assert!(
        (0.0..10.0).contains(&ago),
        "offset {offset_s} s: last_seen_ago_s {ago} (the offset leaked into the ages)"
    );
    let finished = run.wait_exit(Duration::from_secs(20));
    assert_eq!(
        finished.status.code(),
        Some(0),
        "offset {offset_s} s: {}",
        finished.stderr
    );
}

#[test]
fn a_time_namespace_offset_does_not_shift_timeouts() {
    if !prerequisites(
        "a_time_namespace_offset_does_not_shift_timeouts",
        &["ip", "nft", "nc", "unshare"],
    ) {
        return;
    }
    let lab = Lab::new();
    dropped_request_times_out_on_time(&lab, 100_000);
    // A namespace's monotonic clock cannot go below zero: the negative offset is bounded by
    // the uptime (a minute back, or as far as this machine has been up, less ten seconds).
    let uptime = fs::read_to_string("/proc/uptime").expect("/proc/uptime");
    let uptime_s: f64 = uptime
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("/proc/uptime: {uptime}"));
    #[expect(
        clippy::cast_possible_truncation,
        reason = "whole seconds of an uptime, clamped to a minute"
    )]
    let back = (uptime_s - 10.0).clamp(0.0, 60.0) as i64;
    assert!(
        back >= 1,
        "up {uptime_s:.0} s: too soon for a negative offset"
    );
    dropped_request_times_out_on_time(&lab, -back);
}

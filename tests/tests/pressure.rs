//! More distinct requests than the kernel's pending table holds: evictions are counted,
//! nothing evicted is ever called unanswered, and memory stays bounded.

use std::{net::Ipv4Addr, time::Duration};

use netwatch::{
    app::{monotonic_ns, poll},
    probe::{KernelTables as _, Probe},
    sweep::{SweepPolicy, Sweeper},
    tracker::Tracker,
    verdict::Verdict,
};
use netwatch_common::{EGRESS_PROGRAM, KernelCounter, PENDING_CAPACITY, TARGETS_CAPACITY};
use netwatch_tests::{
    harness::{PASS_THROUGH, run_on},
    lab::{CLIENT_IFACE, DNS_V4, Lab, rss_kib},
    packets::Flow,
    prerequisites,
};
use serde_json::Value;

/// A TCP SYN from this host's `sport` to `remote`:`dport` (the tests' packet factory).
fn syn(remote: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    Flow::tcp(false, sport, dport, 1_000)
        .with_remote(Ipv4Addr::from(remote).into())
        .request()
}

#[test]
fn ten_times_the_table_counts_evictions_and_never_calls_them_unanswered() {
    if !prerequisites(
        "ten_times_the_table_counts_evictions_and_never_calls_them_unanswered",
        &[],
    ) {
        return;
    }
    let mut probe = Probe::load(Duration::from_millis(50)).expect("load");
    let capacity = PENDING_CAPACITY as usize;
    let total = 10 * capacity;
    // Target A fills the table; every later request, to A or to B, finds it full.
    let mut sent_a = 0u64;
    let mut sent_b = 0u64;
    for i in 0..total {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "ports wrap, ports × dports stay distinct"
        )]
        let (sport, dport) = (1024 + (i % 60_000) as u16, 1 + (i / 60_000) as u16);
        let to_b = i >= capacity && i % 2 == 0;
        let remote = if to_b {
            [198, 51, 100, 20]
        } else {
            [198, 51, 100, 10]
        };
        let packet = syn(remote, sport, if to_b { 443 } else { dport });
        assert_eq!(
            run_on(&mut probe, EGRESS_PROGRAM, &packet).expect("test_run"),
            PASS_THROUGH
        );
        if to_b {
            sent_b += 1;
        } else {
            sent_a += 1;
        }
    }
    let counters = probe.read_counters().expect("counters");
    let evicted = counters[KernelCounter::PendingFull as usize];
    assert_eq!(
        evicted,
        (total - capacity) as u64,
        "every request past the capacity is counted"
    );

    // Past the timeout, the real userspace pipeline judges what it can.
    std::thread::sleep(Duration::from_millis(200));
    let mut tracker = Tracker::new(Duration::from_mins(1));
    let mut sweeper = Sweeper::new(SweepPolicy {
        timeout_ns: 50_000_000,
        capacity,
    });
    poll(&mut probe, &mut tracker, &mut sweeper, monotonic_ns()).expect("poll");
    let snapshot = tracker.snapshot(monotonic_ns());
    assert_eq!(snapshot.kernel.lost_requests, evicted);
    let target = |port: u16| {
        snapshot
            .targets
            .iter()
            .find(|t| {
                t.port == Some(port) && (port == 443) == (t.remote.to_string() == "198.51.100.20")
            })
            .cloned()
    };
    let b = target(443).expect("target B");
    assert_eq!(b.requests, sent_b);
    assert_eq!(b.untracked, sent_b, "B found the table full every time");
    assert_eq!(b.unanswered, 0, "untracked requests are never unanswered");
    assert_eq!(
        b.verdict,
        Verdict::Pending,
        "an evicted target is not blackholed"
    );
    let a_requests: u64 = snapshot
        .targets
        .iter()
        .filter(|t| t.remote.to_string() == "198.51.100.10")
        .map(|t| t.requests)
        .sum();
    let a_unanswered: u64 = snapshot
        .targets
        .iter()
        .filter(|t| t.remote.to_string() == "198.51.100.10")
        .map(|t| t.unanswered)
        .sum();
    let a_untracked: u64 = snapshot
        .targets
        .iter()
        .filter(|t| t.remote.to_string() == "198.51.100.10")
        .map(|t| t.untracked)
        .sum();
    assert_eq!(a_requests, sent_a);
    assert_eq!(
        a_unanswered, capacity as u64,
        "exactly the tracked ones went unanswered"
    );
    assert_eq!(a_unanswered + a_untracked, sent_a);
    println!(
        "pressure: {total} requests into a {capacity}-entry table: {evicted} evictions counted, \
         {a_unanswered} unanswered, {} misjudged (untracked yet judged unanswered)",
        b.unanswered
    );
}

#[test]
fn more_targets_than_the_target_table_holds_are_counted_and_never_misjudged() {
    if !prerequisites(
        "more_targets_than_the_target_table_holds_are_counted_and_never_misjudged",
        &[],
    ) {
        return;
    }
    let mut probe = Probe::load(Duration::from_millis(50)).expect("load");
    let capacity = TARGETS_CAPACITY as usize;
    let extra = 1_000;
    // One SYN to each of capacity + extra targets: 198.51.100.10 and .11, every port.
    for i in 0..capacity + extra {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "i < 2 × 65,535: the port and the remote's last byte stay in range"
        )]
        let (remote, dport) = (
            [198, 51, 100, 10 + (i / 65_000) as u8],
            1 + (i % 65_000) as u16,
        );
        let packet = syn(remote, 40_000, dport);
        assert_eq!(
            run_on(&mut probe, EGRESS_PROGRAM, &packet).expect("test_run"),
            PASS_THROUGH
        );
    }
    let counters = probe.read_counters().expect("counters");
    let overflow = counters[KernelCounter::TargetsFull as usize];
    assert_eq!(
        overflow, extra as u64,
        "every request past the target table is counted"
    );

    std::thread::sleep(Duration::from_millis(200));
    let mut tracker = Tracker::new(Duration::from_mins(1));
    let mut sweeper = Sweeper::new(SweepPolicy {
        timeout_ns: 50_000_000,
        capacity: PENDING_CAPACITY as usize,
    });
    poll(&mut probe, &mut tracker, &mut sweeper, monotonic_ns()).expect("poll");
    let snapshot = tracker.snapshot(monotonic_ns());
    assert_eq!(snapshot.targets.len(), capacity, "one target per slot");
    let unanswered: u64 = snapshot.targets.iter().map(|t| t.unanswered).sum();
    // Requests judged unanswered that were not tracked, or tracked ones that were not.
    let misjudged = unanswered.abs_diff(capacity as u64);
    assert_eq!(misjudged, 0, "exactly the tracked requests went unanswered");
    assert_eq!(
        snapshot.kernel.counters.get("target_table_full"),
        Some(&(extra as u64)),
        "the overflow reaches the report"
    );
    assert_eq!(snapshot.kernel.lost_requests, extra as u64);
    println!(
        "target table: {} targets into {capacity} slots: {overflow} requests counted as \
         target_table_full, {unanswered} unanswered, {misjudged} misjudged",
        capacity + extra
    );
}

#[test]
fn a_dns_flood_past_the_table_through_the_lab_is_counted_exactly() {
    if !prerequisites(
        "a_dns_flood_past_the_table_through_the_lab_is_counted_exactly",
        &["ip", "nft", "ping"],
    ) {
        return;
    }
    let lab = Lab::new();
    let netwatch = lab.start_netwatch(&["--iface", CLIENT_IFACE, "--json", "--timeout", "1s"]);
    // Resolve the gateway first: packets queued for ARP never reach tc.
    lab.client
        .run("ping", &["-c", "1", "-W", "1", "203.0.113.1"]);
    let max = 10 * u64::from(PENDING_CAPACITY);
    let generator = lab
        .client
        .command(env!("CARGO_BIN_EXE_traffic-gen"))
        .args(["dns", &format!("{DNS_V4}:53"), "20", &max.to_string()])
        .output()
        .expect("traffic-gen");
    assert!(
        generator.status.success(),
        "{}",
        String::from_utf8_lossy(&generator.stderr)
    );
    let report: Value = serde_json::from_slice(&generator.stdout).expect("generator report");
    let sent = report["sent"].as_u64().expect("sent");
    assert_eq!(sent, max);
    let mut peak_rss = rss_kib(netwatch.pid());
    // Everything resolves within the timeout plus a few sweeps.
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        peak_rss = peak_rss.max(rss_kib(netwatch.pid()));
    }
    let finished = netwatch.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let targets = finished.targets();
    let dns = targets
        .get(&("udp".to_owned(), DNS_V4.to_owned(), Some(53)))
        .unwrap_or_else(|| panic!("no DNS target: {targets:#?}"));
    let field = |name: &str| {
        dns[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} in {dns}"))
    };
    assert_eq!(field("requests"), sent, "every request counted: {dns}");
    assert_eq!(
        field("unanswered") + field("untracked"),
        sent,
        "tracked ones unanswered, the rest evicted: {dns}"
    );
    assert!(
        field("untracked") > 0,
        "the flood overflowed the table: {dns}"
    );
    let summary = finished
        .records
        .iter()
        .find(|r| r["type"] == "summary")
        .expect("summary");
    assert_eq!(
        summary["lost_requests"], dns["untracked"],
        "evictions reported: {summary}"
    );
    assert!(
        peak_rss < 64 * 1024,
        "RSS stayed under 64 MiB: {peak_rss} KiB"
    );
    println!(
        "flood: {sent} DNS queries in {:.2} s, {} unanswered, {} evicted, peak RSS {} KiB",
        report["seconds"].as_f64().unwrap_or(0.0),
        field("unanswered"),
        field("untracked"),
        peak_rss
    );
}

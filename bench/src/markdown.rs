//! Markdown from a report: the results table (`report.md`, printed by `cargo xtask bench`)
//! and the whole of BENCHMARKS.md. Pure: everything comes from the report.

use std::fmt::Write as _;

use crate::{
    goals::{GoalResult, fixed, thousands},
    programs::{KindCost, ProgramResults},
    rates::{Condition, RateResults, RateRun},
    report::Report,
    stats::Figure,
};

/// How a figure is shown.
#[derive(Clone, Copy)]
enum Unit {
    Ns,
    Ratio,
    /// A packet-rate ratio: goals at 0.97 need the fourth decimal to be read right.
    FineRatio,
    Pps,
    Pct,
    Mib,
    Ms,
}

fn show(value: f64, unit: Unit) -> String {
    match unit {
        Unit::Ns => format!("{value:.1} ns"),
        Unit::Ratio => format!("{value:.3}"),
        Unit::FineRatio => format!("{value:.4}"),
        Unit::Pps => format!("{}/s", thousands(value)),
        Unit::Pct => format!("{value:.1} %"),
        Unit::Mib => format!("{value:.1} MiB"),
        Unit::Ms => format!("{value:.0} ms"),
    }
}

fn bare(value: f64, unit: Unit) -> String {
    match unit {
        Unit::Ns | Unit::Pct | Unit::Mib => fixed(1)(value),
        Unit::Ratio => fixed(3)(value),
        Unit::FineRatio => fixed(4)(value),
        Unit::Pps => thousands(value),
        Unit::Ms => fixed(0)(value),
    }
}

/// A count with thousands separators.
fn count(n: u64) -> String {
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    thousands(n as f64)
}

fn met_mark(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "✅ met",
        Some(false) => "❌ missed",
        None => "—",
    }
}

/// (key, what it is, unit): the rows of the results table, in the order.
const ROWS: &[(&str, &str, Unit)] = &[
    ("floor_ns", "empty tc program, per run", Unit::Ns),
    (
        "untracked_ns_over_floor",
        "egress on a bulk TCP data packet, minus the floor",
        Unit::Ns,
    ),
    (
        "tracked_request_ratio",
        "new request ÷ minimal tracker (worst kind)",
        Unit::Ratio,
    ),
    (
        "answer_match_ratio",
        "matching answer ÷ minimal matcher (worst kind)",
        Unit::Ratio,
    ),
    (
        "udp_pps_ratio",
        "64-byte UDP pps, netwatch ÷ none",
        Unit::FineRatio,
    ),
    (
        "tcpdump_pps_ratio",
        "64-byte UDP pps, tcpdump ÷ none",
        Unit::FineRatio,
    ),
    (
        "dns_flood_pps_ratio",
        "DNS flood pps, netwatch ÷ none",
        Unit::FineRatio,
    ),
    (
        "storm_requests_per_s",
        "storm: distinct requests sent per second",
        Unit::Pps,
    ),
    (
        "storm_user_cpu_pct",
        "storm: netwatch CPU (user + system), % of a core",
        Unit::Pct,
    ),
    (
        "storm_rss_mib",
        "storm: netwatch peak RSS (VmHWM)",
        Unit::Mib,
    ),
    (
        "detection_latency_ms_p99",
        "send → `blackholed` verdict, p99",
        Unit::Ms,
    ),
    (
        "connect_rate_ratio",
        "TCP connect rate on loopback, socket owner programs ÷ none",
        Unit::FineRatio,
    ),
];

fn value_of(report: &Report, key: &str) -> Option<f64> {
    match key {
        "floor_ns" => report.floor_ns,
        "untracked_ns_over_floor" => report.untracked_ns_over_floor,
        "tracked_request_ratio" => report.tracked_request_ratio,
        "answer_match_ratio" => report.answer_match_ratio,
        "udp_pps_ratio" => report.udp_pps_ratio,
        "tcpdump_pps_ratio" => report.tcpdump_pps_ratio,
        "dns_flood_pps_ratio" => report.dns_flood_pps_ratio,
        "storm_requests_per_s" => report.storm_requests_per_s,
        "storm_user_cpu_pct" => report.storm_user_cpu_pct,
        "storm_rss_mib" => report.storm_rss_mib,
        "detection_latency_ms_p99" => report.detection_latency_ms_p99,
        "connect_rate_ratio" => report.connect_rate_ratio,
        _ => None,
    }
}

fn goal_of<'a>(report: &'a Report, key: &str) -> Option<&'a GoalResult> {
    report.goals.iter().find(|g| g.key == key)
}

/// The table of every contract figure beside its goal.
#[must_use]
pub fn results_table(report: &Report) -> String {
    let mut out = String::from(
        "| Figure | Measured (median) | Min | Max | Goal | |\n| --- | ---: | ---: | ---: | --- | --- |\n",
    );
    for (key, what, unit) in ROWS {
        let value = value_of(report, key);
        let range = report.ranges.get(*key);
        let (min, max) = range.filter(|r| r.n > 1).map_or(("", ""), |_| ("x", "x"));
        let min = if min.is_empty() {
            "—".to_owned()
        } else {
            bare(range.map_or(0.0, |r| r.min), *unit)
        };
        let max = if max.is_empty() {
            "—".to_owned()
        } else {
            bare(range.map_or(0.0, |r| r.max), *unit)
        };
        let goal = goal_of(report, key);
        let _ = writeln!(
            out,
            "| `{key}` — {what} | {} | {min} | {max} | {} | {} |",
            value.map_or_else(|| "not measured".to_owned(), |v| show(v, *unit)),
            goal.map_or("—", |g| g.goal.as_str()),
            met_mark(goal.and_then(|g| g.met)),
        );
        if *key == "tcpdump_pps_ratio"
            && let Some(goal) = goal_of(report, "udp_loss_vs_tcpdump")
        {
            let _ = writeln!(
                out,
                "| netwatch's loss vs tcpdump's | {} | | | {} | {} |",
                goal.measured,
                goal.goal,
                met_mark(goal.met)
            );
        }
        if *key == "dns_flood_pps_ratio" {
            exact_row(
                &mut out,
                report,
                "dns_flood_count_exact",
                "DNS flood: netwatch counted every request sent",
            );
        }
        if *key == "storm_requests_per_s" {
            exact_row(
                &mut out,
                report,
                "storm_count_exact",
                "storm: requests = sent, unanswered + untracked = sent",
            );
        }
    }
    for goal in report
        .goals
        .iter()
        .filter(|g| g.key.starts_with("verifier_insns"))
    {
        let _ = writeln!(
            out,
            "| `{}` — instructions the verifier processed | {} | | | {} | {} |",
            goal.key,
            goal.measured,
            goal.goal,
            met_mark(goal.met)
        );
    }
    out
}

fn exact_row(out: &mut String, report: &Report, key: &str, what: &str) {
    if let Some(goal) = goal_of(report, key) {
        let _ = writeln!(
            out,
            "| `{key}` — {what} | {} | | | {} | {} |",
            goal.measured,
            goal.goal,
            met_mark(goal.met)
        );
    }
}

fn range(figure: &Figure, unit: Unit) -> String {
    if figure.n > 1 {
        format!(
            "{} [{} – {}]",
            bare(figure.median, unit),
            bare(figure.min, unit),
            bare(figure.max, unit)
        )
    } else {
        bare(figure.median, unit)
    }
}

/// Per kind: the fresh and steady figures side by side.
#[must_use]
pub fn kinds_table(programs: &ProgramResults) -> String {
    let mut out = String::from(
        "| Kind | Fresh: real ns | Fresh: reference ns | **Fresh ratio** (contract) | Fresh raw ratio | Fresh ratio over floor | Steady: real ns | Steady: reference ns | Steady ratio |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for fresh in &programs.fresh {
        let steady: Option<&KindCost> = programs.steady.iter().find(|s| s.kind == fresh.kind);
        let opt = |f: Option<Figure>| f.map_or_else(|| "—".to_owned(), |f| range(&f, Unit::Ratio));
        let _ = writeln!(
            out,
            "| {} `{}` | {} | {} | **{}** | {} | {} | {} | {} | {} |",
            fresh.role,
            fresh.kind,
            range(&fresh.real_ns, Unit::Ns),
            range(&fresh.reference_ns, Unit::Ns),
            range(&fresh.ratio, Unit::Ratio),
            opt(fresh.raw_ratio),
            opt(fresh.over_floor_ratio),
            steady.map_or_else(|| "—".to_owned(), |s| range(&s.real_ns, Unit::Ns)),
            steady.map_or_else(|| "—".to_owned(), |s| range(&s.reference_ns, Unit::Ns)),
            steady.map_or_else(|| "—".to_owned(), |s| range(&s.ratio, Unit::Ratio)),
        );
    }
    out
}

fn rates_rows(out: &mut String, name: &str, run: &RateRun) {
    for rates in &run.conditions {
        let condition = rates.condition;
        let ratio = if condition == Condition::None {
            "1".to_owned()
        } else {
            run.ratio(condition)
                .map_or_else(|| "—".to_owned(), |f| range(&f, Unit::FineRatio))
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {ratio} |",
            match condition {
                Condition::None => "none",
                Condition::Netwatch => "netwatch",
                Condition::Tcpdump => "tcpdump",
                Condition::NetwatchStopped => "netwatch, process stopped (kernel side only)",
                Condition::NetwatchUnpinned => "netwatch, not pinned",
                Condition::EmptyProgram => "empty tc program (tcx, egress + ingress)",
                Condition::MinimalTracker => "minimal tracker (`bench_track`) instead",
            },
            run.pps(condition)
                .map_or_else(|| "—".to_owned(), |f| range(&f, Unit::Pps)),
            run.rx_pps(condition)
                .map_or_else(|| "—".to_owned(), |f| range(&f, Unit::Pps)),
        );
    }
}

#[must_use]
pub fn rates_table(rates: &RateResults) -> String {
    let mut out = String::from(
        "| Run | Attached | Sent pps (generator) | Received pps (sink's veth) | Ratio to the baselines around it (per round) |\n| --- | --- | ---: | ---: | ---: |\n",
    );
    rates_rows(&mut out, "UDP, untracked port", &rates.udp);
    rates_rows(&mut out, "DNS flood", &rates.dns_flood);
    rates_rows(
        &mut out,
        &format!(
            "DNS, {} requests (all tracked)",
            count(rates.dns_tracked_max)
        ),
        &rates.dns_tracked,
    );
    out
}

/// `report.md`: the results and the per-kind tables.
#[must_use]
pub fn report_md(report: &Report) -> String {
    let mut out = String::new();
    let m = &report.meta;
    let _ = writeln!(
        out,
        "netwatch benchmarks ({} run), {} at {}, {} on {} ({} cores)\n",
        m.mode, m.date, m.commit, m.kernel, m.cpu_model, m.cores
    );
    out.push_str(&results_table(report));
    if let Some(programs) = &report.programs {
        out.push('\n');
        out.push_str(&kinds_table(programs));
    }
    if let Some(rates) = &report.rates {
        out.push('\n');
        out.push_str(&rates_table(rates));
    }
    for error in &report.errors {
        let _ = writeln!(out, "\n**Section failed:** {error}");
    }
    out
}

/// BENCHMARKS.md, whole.
#[must_use]
pub fn benchmarks_md(report: &Report) -> String {
    let mut out = String::new();
    let m = &report.meta;
    out.push_str("# netwatch benchmarks\n\n");
    out.push_str(
        "Generated by `cargo xtask bench` from `target/bench/report.json` (regenerate this file \
         from a report with `netwatch-bench --from-report target/bench/report.json \
         --write-benchmarks-md BENCHMARKS.md`). Benchmarks are not tests: nothing gates on these \
         numbers.\n\n",
    );
    out.push_str("## Machine\n\n| | |\n| --- | --- |\n");
    let _ = writeln!(out, "| CPU | {} |", m.cpu_model);
    let _ = writeln!(out, "| Cores | {} |", m.cores);
    let _ = writeln!(out, "| Memory | {} MiB |", count(m.memory_mib));
    let _ = writeln!(out, "| Kernel | {} |", m.kernel);
    let _ = writeln!(out, "| rustc | {} |", m.rustc);
    let _ = writeln!(out, "| Date | {} |", m.date);
    let dirty = if m.dirty.is_empty() {
        String::new()
    } else {
        format!(" (with uncommitted changes: {})", m.dirty.join("; "))
    };
    let _ = writeln!(out, "| Commit | {}{dirty} |", m.commit);
    let _ = writeln!(out, "| Run | {} ({:.0} s) |", m.mode, m.duration_s);
    let _ = writeln!(
        out,
        "| Load average (1, 5, 15 min) | before {:.2} {:.2} {:.2}, after {:.2} {:.2} {:.2} |",
        m.load_before[0],
        m.load_before[1],
        m.load_before[2],
        m.load_after[0],
        m.load_after[1],
        m.load_after[2]
    );
    let _ = writeln!(
        out,
        "| `kernel.bpf_stats_enabled` | {} |",
        match m.bpf_stats_enabled_found.as_deref() {
            Some("0") => "0 (off) throughout".to_owned(),
            Some(found) => format!("was {found}, set to 0 for the run"),
            None => "unknown".to_owned(),
        }
    );
    out.push_str("\n## Results\n\nMedians over the repetitions (rounds), with their minimum and maximum.\n\n");
    out.push_str(&results_table(report));
    for error in &report.errors {
        let _ = writeln!(out, "\n**Section failed:** {error}");
    }
    let borderline = crate::goals::borderline(report);
    if !borderline.is_empty() {
        let _ = writeln!(
            out,
            "\n**Borderline:** {} — the rounds of each fell on both sides of its goal (see Min and Max), \
             so whether the median meets it is within this shared machine's run-to-run noise: another run \
             may well land on the other side.",
            borderline
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    missed_goals(&mut out, report);
    details(&mut out, report);
    out.push_str(METHODOLOGY);
    out
}

/// The per-section detail after the results table.
fn details(out: &mut String, report: &Report) {
    if let Some(programs) = &report.programs {
        out.push_str("\n## Program costs per kind\n\n");
        out.push_str(&kinds_table(programs));
        let _ = writeln!(
            out,
            "\nFloor {} ns per run (steady); egress on bulk TCP data {} ns, ingress {} ns; a single timed run \
             carries {} ns of timer overhead (floor run once minus floor in a loop), taken off both sides of the \
             fresh ratios. Verifier: {}.",
            range(&programs.floor_ns, Unit::Ns),
            range(&programs.egress_data_ns, Unit::Ns),
            range(&programs.ingress_data_ns, Unit::Ns),
            range(&programs.timer_overhead_ns, Unit::Ns),
            programs
                .verifier_insns
                .iter()
                .map(|(name, count)| format!(
                    "`{name}` {} instructions",
                    thousands(f64::from(*count))
                ))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    if let Some(rates) = &report.rates {
        out.push_str("\n## Packet rates\n\n");
        out.push_str(&rates_table(rates));
        let share = rates
            .dns_flood
            .tracked_share()
            .map_or_else(|| "—".to_owned(), |s| format!("{:.1} %", s * 100.0));
        let _ = writeln!(
            out,
            "\n{} rounds; in each, every condition ran {} s between two runs with nothing attached \
             (the baselines), the order of the conditions rotating from round to round, and its ratio is \
             its rate over the mean of those two baselines. The generator {}; netwatch and tcpdump {}. \
             In the DNS flood netwatch could track {share} of the requests: past the pending table's 65,536 \
             entries the rest were counted untracked. tcpdump's own statistics per round (packets matching \
             its filter; none of the UDP run's do): {}.",
            rates.rounds,
            rates.seconds_per_round,
            rates.generator_cpu.map_or_else(
                || "was not pinned".to_owned(),
                |cpu| format!("was pinned to CPU {cpu}")
            ),
            rates.monitor_cpu.map_or_else(
                || "were not pinned".to_owned(),
                |cpu| format!("to CPU {cpu}")
            ),
            rates
                .tcpdump_stats
                .iter()
                .map(|s| format!("{} captured / {} dropped", s.captured, s.dropped_by_kernel))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    if let Some(storm) = &report.storm {
        out.push_str("\n## Storm\n\n");
        let _ = writeln!(
            out,
            "{} distinct DNS queries in {:.2} s ({}/s) to a blackholed lab target. netwatch counted {} requests: \
             {} unanswered, {} untracked (table full; the summary's `lost_requests`: {}), {} still in flight at the end. \
             CPU during the storm: {:.1} % user + {:.1} % system of one core ({:.1} % in the {:.0} s after it, \
             judging what was left). Memory: peak RSS sampled every 100 ms {:.1} MiB, VmHWM {:.1} MiB.",
            count(storm.sent),
            storm.seconds,
            thousands(storm.requests_per_s),
            count(storm.requests),
            count(storm.unanswered),
            count(storm.untracked),
            count(storm.lost_requests),
            storm.in_flight,
            storm.cpu_user_pct,
            storm.cpu_system_pct,
            storm.settle_cpu_pct,
            crate::storm::SETTLE.as_secs_f64(),
            storm.rss_peak_mib,
            storm.rss_hwm_mib,
        );
    }
    if let Some(latency) = &report.latency {
        out.push_str("\n## Detection latency\n\n");
        let _ = writeln!(
            out,
            "{} blackholed DNS targets, one query each, netwatch `--timeout {}ms`: {} detected; p50 {:.0} ms, \
             p99 {:.0} ms, min {:.0} ms, max {:.0} ms (goal: p99 ≤ timeout + 1000 = {:.0} ms).",
            latency.targets,
            latency.timeout_ms,
            latency.detected,
            latency.p50_ms,
            latency.p99_ms,
            latency.min_ms,
            latency.max_ms,
            latency.timeout_ms + 1_000.0,
        );
    }
    connects_section(out, report);
}

fn connects_section(out: &mut String, report: &Report) {
    if let Some(connects) = &report.connects {
        out.push_str("\n## connect() rate\n\n");
        let median = |v: &[f64]| Figure::of(v).map_or(f64::NAN, |f| f.median);
        let _ = writeln!(
            out,
            "One thread in the lab's client namespace, {} rounds of {} s per condition, netwatch \
             running without, then with, its socket owner programs on the cgroup2 root (they run on \
             each socket(), connect() and close()). TCP (connect to 127.0.0.1, accept, both closed): \
             {:.0}/s without them, {:.0}/s with them, ratio {:.4} (goal ≥ 0.97). UDP socket + connect + \
             close (no packet: the cheapest connect(), the programs' worst case): {:.0}/s and {:.0}/s, \
             ratio {:.4}.",
            connects.tcp.ratios.len(),
            connects.seconds_per_round,
            median(&connects.tcp.without),
            median(&connects.tcp.with),
            connects.tcp.ratio().map_or(f64::NAN, |f| f.median),
            median(&connects.udp.without),
            median(&connects.udp.with),
            connects.udp.ratio().map_or(f64::NAN, |f| f.median),
        );
    }
}

fn missed_goals(out: &mut String, report: &Report) {
    let missed: Vec<&GoalResult> = report
        .goals
        .iter()
        .filter(|g| g.met == Some(false))
        .collect();
    if missed.is_empty() {
        return;
    }
    out.push_str("\n## Missed goals: why, and what would close them\n\n");
    for goal in missed {
        let _ = writeln!(
            out,
            "- **`{}`** ({}, goal {}): {}",
            goal.key,
            goal.measured,
            goal.goal,
            explain(report, goal)
        );
    }
}

fn fresh<'a>(report: &'a Report, kind: &str) -> Option<&'a KindCost> {
    report
        .programs
        .as_ref()?
        .fresh
        .iter()
        .find(|k| k.kind == kind)
}

fn worst_fresh<'a>(report: &'a Report, role: &str) -> Option<&'a KindCost> {
    report.programs.as_ref()?.worst_fresh(role)
}

/// `kind` real vs reference, e.g. "`syn_ack` 306 ns against 238 ns (1.34)".
fn versus(cost: &KindCost) -> String {
    format!(
        "`{}` {:.0} ns against the reference's {:.0} ns ({:.2})",
        cost.kind, cost.real_ns.median, cost.reference_ns.median, cost.ratio.median
    )
}

/// The loss (1 − ratio, %) of `condition` in `run`.
fn loss_pct(run: &RateRun, condition: Condition) -> Option<f64> {
    run.ratio(condition).map(|f| (1.0 - f.median) * 100.0)
}

/// Why a goal was missed and what would close it, from what the report shows and what the
/// code does on that path.
#[must_use]
pub fn explain(report: &Report, goal: &GoalResult) -> String {
    match goal.key.as_str() {
        "untracked_ns_over_floor" => explain_untracked(report),
        "tracked_request_ratio" => explain_requests(report),
        "answer_match_ratio" => explain_answers(report),
        "udp_pps_ratio" => explain_udp(report),
        "udp_loss_vs_tcpdump" => {
            let pps_missed = report
                .goals
                .iter()
                .any(|g| g.key == "udp_pps_ratio" && g.met == Some(false));
            if pps_missed {
                "the same loss as for `udp_pps_ratio` above, against tcpdump's.".to_owned()
            } else {
                explain_udp(report)
            }
        }
        "dns_flood_pps_ratio" => explain_flood(report),
        "storm_user_cpu_pct" => explain_storm_cpu(report),
        key if key.starts_with("verifier_insns") => explain_verifier(key),
        "storm_requests_per_s" => "the storm's sender shares its CPU with the lab's forwarding and nftables (every \
            packet crosses two veth pairs and the firewall's forward chain, conntrack included); the rate is the \
            generator's, so this is the lab's ceiling as much as netwatch's. A faster sender (sendmmsg batches) or \
            a sender on its own core would close it."
            .to_owned(),
        "storm_count_exact" | "dns_flood_count_exact" => "a count differs from what the generator sent: see the \
            per-round counts in report.json. Every request must be counted once, either judged unanswered or \
            counted untracked (table full); a difference is a bug in netwatch's accounting, not a performance \
            limit."
            .to_owned(),
        "storm_rss_mib" => "userspace holds a copy of the whole pending table per sweep plus the set of counted \
            keys; with the table full that is two 65,536-entry collections. Reusing one buffer across sweeps \
            (or batched reads into a fixed buffer) would bound it."
            .to_owned(),
        "detection_latency_ms_p99" => "a target turns blackholed at the first sweep after its deadline (timeout \
            plus a 20 ms margin), and sweeps run every 250 ms, so the expected worst case is timeout + 270 ms; \
            beyond that, netwatch's poll loop fell behind (see the storm's CPU figures)."
            .to_owned(),
        _ => "see the figures above.".to_owned(),
    }
}

fn explain_untracked(report: &Report) -> String {
    let over = report.untracked_ns_over_floor.unwrap_or(f64::NAN);
    let spread = report
        .ranges
        .get("untracked_ns_over_floor")
        .map_or_else(String::new, |r| {
            format!(
                " Across the {} loads it ranged from {:.0} to {:.0} ns: each load JIT-compiles the \
             program anew, and where its code lands moves a path this short by a few nanoseconds.",
                r.n, r.min, r.max
            )
        });
    format!(
        "a data packet costs the egress program {over:.0} ns over an empty one: five bounds-checked \
         loads (EtherType, IPv4 version/IHL, fragment field, protocol, TCP flags) and their branches, \
         which `BPF_PROG_TEST_RUN` resolves to the nanosecond only.{spread} Reading the first ten bytes \
         of the IPv4 header in one load (version/IHL, fragment and protocol together) would take two \
         loads and two bounds checks off the path."
    )
}

fn explain_requests(report: &Report) -> String {
    let Some(worst) = worst_fresh(report, "request") else {
        return "see the figures above.".to_owned();
    };
    let syn = fresh(report, "syn")
        .map_or_else(String::new, |c| format!(" (a SYN: {:.2})", c.ratio.median));
    format!(
        "the worst is {}{syn}. Beyond the minimal tracker's clock read and insert, a request looks up its \
         target's counter slot (a second hash lookup, in `TARGET_SLOTS`), adds to the target's counters \
         with an atomic instruction, and for DNS copies up to 76 bytes of the question into the entry with \
         `bpf_skb_load_bytes`. Capturing fewer bytes of the question (the first labels name it well \
         enough), or keeping the last target's slot in a per-CPU one-entry cache so that a burst to one \
         target skips the second lookup, would close the gap.",
        versus(worst)
    )
}

fn explain_answers(report: &Report) -> String {
    let Some(worst) = worst_fresh(report, "answer") else {
        return "see the figures above.".to_owned();
    };
    let answers: Vec<&KindCost> = report
        .programs
        .as_ref()
        .map(|p| p.fresh.iter().filter(|k| k.role == "answer").collect())
        .unwrap_or_default();
    let rejections: Vec<&&KindCost> = answers
        .iter()
        .filter(|k| k.kind.contains("unreachable") || k.kind.contains("prohibited"))
        .collect();
    let plain = answers
        .iter()
        .filter(|k| !(k.kind.contains("unreachable") || k.kind.contains("prohibited")))
        .max_by(|a, b| a.ratio.median.total_cmp(&b.ratio.median));
    let mut text = format!("the worst is {}.", versus(worst));
    if !rejections.is_empty() {
        text.push_str(
            " A rejection (an ICMP error quoting a request) costs two to three times the matcher. It \
             settles the request by deleting the entry and inserting it again as a tombstone (copy the \
             112-byte value, delete, re-insert with the rejected flag, so that the retransmits the stack \
             still sends are recognised), a second hash insert the reference does not do; and it parses \
             a second IP header, the quoted one, in the global function `quoted_rejection` with \
             `bpf_skb_load_bytes` (verified once for any offset, which took the ingress program from \
             658,578 verified instructions to about 52,000, at the price of a call and helper reads). \
             Marking the entry rejected in place (an atomic fetch-or of the flag: whoever sets it first \
             owns the outcome; it needs BPF atomics, Linux 5.12+ and the v3 instruction set) instead of \
             delete + insert would bring it down to the answer path's cost. Rejections are the rare path: \
             a firewall that rejects answers once per request, never per data packet.",
        );
    }
    if let Some(plain) = plain
        && plain.ratio.median > 1.25
    {
        let _ = write!(
            text,
            " Plain answers miss too (worst {}): after the same lookup and delete, an answer reads the clock \
             for the latency, finds the target's counters in `TARGETS` and makes three atomic updates \
             (answered, the latency bucket, and the last-answer time). Counting answers in per-CPU counters \
             (plain increments instead of locked ones) and keeping the last-answer time per CPU would take most \
             of the difference.",
            versus(plain)
        );
    }
    text
}

fn explain_udp(report: &Report) -> String {
    let Some(rates) = &report.rates else {
        return "see the figures above.".to_owned();
    };
    let none = rates
        .udp
        .pps(Condition::None)
        .map_or(f64::NAN, |f| f.median);
    let budget = 1e9 / none;
    let netwatch = loss_pct(&rates.udp, Condition::Netwatch).unwrap_or(f64::NAN);
    let empty = loss_pct(&rates.udp, Condition::EmptyProgram);
    let tcpdump = loss_pct(&rates.udp, Condition::Tcpdump).unwrap_or(f64::NAN);
    let spread = |c| {
        rates
            .udp
            .ratio(c)
            .map_or_else(String::new, |f| format!("{:.3} to {:.3}", f.min, f.max))
    };
    let mut text = format!(
        "at {} packets/s with nothing attached a packet takes {budget:.0} ns end to end on one CPU; netwatch \
         took {netwatch:.1} % of that ({:.0} ns per packet), tcpdump {tcpdump:.1} %.",
        thousands(none),
        netwatch / 100.0 * budget
    );
    if let Some(empty) = empty {
        let _ = write!(
            text,
            " An empty tc program attached the same way (tcx, egress and ingress) took {empty:.1} % ({:.0} ns): \
             that much is the hook itself, not netwatch's work, and no program attached with tcx can do \
             better.",
            empty / 100.0 * budget
        );
    }
    let _ = write!(
        text,
        " netwatch's per-round ratios ranged from {}{}: a percent is within the noise of this shared \
         2-CPU virtual machine. What is netwatch's own is the work its egress program does on a packet \
         it does not track (a header walk and a port check) and, likely, its size: it inlines every \
         request path, which the instruction cache pays for in a real stack even when a packet takes \
         none of them. Fewer loads before the protocol dispatch and the rare paths moved out of line \
         (tail calls or global functions) would close the rest.",
        spread(Condition::Netwatch),
        if rates.udp.ratio(Condition::EmptyProgram).is_some() {
            format!(
                ", the empty program's from {}",
                spread(Condition::EmptyProgram)
            )
        } else {
            String::new()
        }
    );
    text
}

fn explain_flood(report: &Report) -> String {
    let Some(rates) = &report.rates else {
        return "see the figures above.".to_owned();
    };
    let flood = |c| rates.dns_flood.ratio(c).map(|f| f.median);
    let tracked = |c| rates.dns_tracked.ratio(c).map(|f| f.median);
    let none = rates
        .dns_flood
        .pps(Condition::None)
        .map_or(f64::NAN, |f| f.median);
    let netwatch = flood(Condition::Netwatch).unwrap_or(f64::NAN);
    let per_packet = |ratio: f64| (1.0 / ratio - 1.0) * 1e9 / none;
    let share = rates
        .dns_flood
        .tracked_share()
        .map_or(f64::NAN, |s| s * 100.0);
    let mut text = format!(
        "every packet here is a new request; netwatch added {:.0} ns to each ({} packets/s with nothing \
         attached). Only {share:.0} % of the flood could be tracked: past the 65,536-entry table, the \
         rest ran the table-full path, where a request is still counted (untracked) but not stored.",
        per_packet(netwatch),
        thousands(none),
    );
    if let (Some(minimal), Some(stopped)) = (
        flood(Condition::MinimalTracker),
        flood(Condition::NetwatchStopped),
    ) {
        let _ = write!(
            text,
            " With the same flood the minimal tracker (one clock read, one insert into a map like \
             `PENDING`) reached {minimal:.2} ({:.0} ns per packet), and netwatch with its process stopped \
             (the kernel side alone) {stopped:.2}",
            per_packet(minimal)
        );
        if let Some(unpinned) = flood(Condition::NetwatchUnpinned) {
            let _ = write!(text, "; netwatch left unpinned {unpinned:.2}");
        }
        text.push('.');
        if let (Some(t_netwatch), Some(t_minimal)) = (
            tracked(Condition::Netwatch),
            tracked(Condition::MinimalTracker),
        ) {
            let _ = write!(
                text,
                " Within the table's capacity (every request stored) netwatch reached {t_netwatch:.2} and \
                 the minimal tracker {t_minimal:.2}."
            );
        }
        if minimal >= 0.85 {
            text.push_str(
                " The minimal tracker stays above the goal, so the difference is netwatch's own \
                 per-request work, which it also does when the table is full: the target's slot lookup \
                 (`TARGET_SLOTS`), building the 112-byte entry with the DNS question captured by \
                 `bpf_skb_load_bytes`, then the failed insert, then two atomic counter updates. Skipping \
                 the capture and the entry while the table is known to be full (a per-CPU hint set on \
                 `E2BIG`, cleared by the sweep) would make the table-full path little more than a counter \
                 update; capturing the question after a successful insert would do the same for every \
                 request.",
            );
        } else {
            text.push_str(
                " The minimal tracker is below the goal too: one hash insert per request is more than \
                 this machine allows for the goal, so closing it needs a cheaper structure than a hash \
                 insert per request (appending requests to a per-CPU ring buffer and correlating in \
                 userspace moves the cost out of the packet path).",
            );
        }
    } else {
        text.push_str(
            " A full run also measures the minimal tracker and netwatch's kernel side alone under the \
             same flood, which shows how much of this any per-request insert costs.",
        );
    }
    text
}

fn explain_storm_cpu(report: &Report) -> String {
    let Some(storm) = &report.storm else {
        return "see the figures above.".to_owned();
    };
    format!(
        "netwatch used {:.1} % user and {:.1} % system time of one core during the storm. With the table \
         full, each sweep walks 65,536 entries: `BPF_MAP_LOOKUP_BATCH` moves them in 16 syscalls, but the \
         kernel's walk costs about 250 ns an entry, and a busy table is already walked only every other \
         poll (twice a second). The rest is counting each unanswered request in userspace. Sweeping a full \
         table less often still (at the price of detection latency in a storm), or a smaller table, would \
         close it.",
        storm.cpu_user_pct, storm.cpu_system_pct,
    )
}

fn explain_verifier(key: &str) -> String {
    if key.ends_with("ingress") {
        "the verifier walks every path: the ingress program parses the outer headers (up to two VLAN tags, \
         up to six IPv6 extension headers); the quoted header of an ICMP error is parsed, and its \
         request settled, in global functions (`quoted_rejection`, `settle`) verified once each. Making the outer \
         header walk a global function too would cut the rest."
            .to_owned()
    } else {
        "the egress program inlines every request path after the header walk (up to two VLAN tags and six \
         IPv6 extension headers); splitting the walk into a global BPF function verified once would cut it."
            .to_owned()
    }
}

const METHODOLOGY: &str = "
## Methodology

- **Program costs** (`floor_ns`, `untracked_ns_over_floor`, the ratios) come from `BPF_PROG_TEST_RUN`
  (aya's `SchedClassifier::test_run`) on crafted Ethernet frames, with `kernel.bpf_stats_enabled` off.
  The real programs are those of a freshly loaded `Probe`; the references (`bench_floor`, `bench_track`:
  one clock read plus one update of a map of `PENDING`'s type, size and key width, `bench_match`: one
  lookup plus one delete, their key being the 40 bytes after the Ethernet header) are built beside them
  and always measured in the same run, interleaved.
- **Steady** figures run one packet `repeat` times (1e6 in a full run) and take the median of 7
  repetitions. That is the contract's letter, but a request repeated is new only the first time: for
  requests it measures the retransmit path (the reference: updating an existing key), for answers the
  duplicate-answer path (a lookup that misses; the reference too).
- **Fresh** figures are what the goals mean, and the contract keys `tracked_request_ratio` and
  `answer_match_ratio` hold them: per distinct request, `real request → real answer` and
  `bench_track → bench_match` on the same request, each run once, alternating which pair goes first,
  50,000 distinct requests per round (5,000 in a quick run), 7 rounds; per round the 10 %-trimmed mean
  of each, then the median over the rounds. A single timed run includes the timer's own overhead
  (the floor run once minus the floor run in a loop, measured every round); it is taken off both sides
  before dividing, so fresh and steady ratios stand on the same basis. The raw ratio (overhead left in)
  and the ratio over the floor (floor taken off both sides) are shown beside it. Each round checks that
  every answer settled its request and that the reference matcher emptied its map.
- **Kinds**: requests are TCP SYN, DNS query and ICMP echo request, IPv4 and IPv6; answers are SYN-ACK,
  DNS response, echo reply, ICMP port unreachable quoting the DNS query and host prohibited (ICMPv6:
  administratively prohibited) quoting the SYN. The contract keys hold the worst kind.
- **Packet rates**: two namespaces of their own joined by one veth pair (203.0.113.2 on `nwb0` →
  203.0.113.1 on `nwb1`, IPv6 off, permanent neighbour entries, an nftables netdev ingress rule on `nwb1`
  dropping UDP 9 and 53: no firewall, no conntrack, no forwarding, so the rate is as high and as steady as
  the pair allows and netwatch's per-packet cost weighs the most). `traffic-gen udp` sends 64-byte frames
  to the untracked port 9; the rate is packets sent per second as the generator reports it (on a veth pair
  the receiving softirq runs on the sender's CPU, so this is the end-to-end rate); the sink's
  `rx_packets` is shown beside it. The generator is pinned to the last CPU, netwatch and tcpdump to the
  first (`taskset`), so a monitor never competes with the sender for its CPU. Conditions: nothing attached;
  `netwatch --iface nwb0 --json --timeout 1s` started in the sending namespace; `tcpdump -i nwb0 -w
  /dev/null` with the equivalent filter (DNS, TCP SYN, ICMP, ICMPv6); and, to show the floor, the empty
  reference program attached with tcx on both directions. This machine's speed drifts by several
  percent within seconds (other virtual machines share the host), so every condition runs between two
  runs with nothing attached, and its ratio for the round is its rate over the mean of those two
  baselines (a linear drift cancels); the order of the conditions rotates from round to round; the
  figure is the median of the per-round ratios. 8 rounds of 2 s in a full run (quick: 4 rounds of 1 s,
  without the diagnostic conditions).
- **DNS flood**: the same to UDP port 53 with `traffic-gen dns` (distinct queries), netwatch attached or
  not; netwatch's final `target` record must count exactly the requests the generator sent. A flood of
  several seconds outruns the 65,536-entry pending table, so most of it runs the table-full path; the
  run stopping at 60,000 requests, where every request is tracked, is shown beside it. Beside netwatch
  (full runs only):
  the minimal tracker attached instead (what any per-request insert costs), netwatch with its process
  stopped for the round (the kernel side alone, no sweeps), and netwatch left unpinned (sharing CPUs as
  the scheduler sees fit).
- **Storm**: `traffic-gen dns` in the lab's client namespace, through the lab firewall (which drops DNS)
  to 198.51.100.53 for 10 s (quick: 5 s), netwatch `--json --timeout 1s` on the client's interface (pinned
  as above), then 3 s for it to judge the rest. Exact counts: `requests` = sent and
  `unanswered` + `untracked` = sent, with the summary's `lost_requests` = `untracked`. CPU is netwatch's
  utime + stime from `/proc/PID/stat` over the storm, as a percentage of one core (user + system: the
  key holds both, the table above splits them); memory is the kernel's VmHWM (peak RSS), with VmRSS
  sampled every 100 ms beside it.
- **Detection latency**: netwatch `--json --timeout 1s` in the client namespace; a thread of the bench
  joins that namespace (`setns`) and sends one DNS query to each of 150 (quick: 100) blackholed targets
  198.51.100.100 and up, 13 ms apart, recording each send's wall-clock time; latency is the `time` of the
  target's first `blackholed` verdict record minus that.
- **Verifier**: `verified_instruction_count` of each loaded program (`bpf_prog_info.verified_insns`).
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_row_even_unmeasured() {
        let mut report = Report {
            floor_ns: Some(26.0),
            untracked_ns_over_floor: Some(6.0),
            ..Report::default()
        };
        report.ranges.insert(
            "floor_ns".to_owned(),
            Figure {
                median: 26.0,
                min: 25.0,
                max: 28.0,
                n: 7,
            },
        );
        report.goals = crate::goals::evaluate(&report);
        let table = results_table(&report);
        assert!(
            table.contains(
                "| `floor_ns` — empty tc program, per run | 26.0 ns | 25.0 | 28.0 | — | — |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| 6.0 ns | — | — | ≤ 5.0 | ❌ missed |"),
            "{table}"
        );
        assert!(
            table.contains("`udp_pps_ratio` — 64-byte UDP pps, netwatch ÷ none | not measured |"),
            "{table}"
        );
        let doc = benchmarks_md(&report);
        assert!(doc.contains("## Missed goals"), "{doc}");
        assert!(doc.contains("## Methodology"));
    }
}

//! Markdown from a report: the results table (`report.md`, printed by `cargo xtask bench`)
//! and the whole of BENCHMARKS.md. Pure: everything comes from the report.

use std::fmt::Write as _;

use crate::{
    baseline::Baseline,
    drops::DropResults,
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
        None => "❔ not measured",
    }
}

/// The mark of a figure's goal, if it has one.
fn goal_mark(goal: Option<&GoalResult>) -> &'static str {
    goal.map_or("—", |g| met_mark(g.met))
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
        "l3_untracked_ns_over_floor",
        "the same without a link-layer header (tun, `WireGuard`: the L3 classifier), minus the floor",
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
        "answer_timed_match_ratio",
        "matching answer ÷ minimal matcher that also reads the clock, as a latency needs (worst kind)",
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
        "drop_program_ns",
        "drop program (`skb:kfree_skb`) per watched drop, kernel run time ÷ runs",
        Unit::Ns,
    ),
    (
        "drop_counter_ns",
        "minimal counter on the same drops (headers read, one hash add)",
        Unit::Ns,
    ),
    (
        "drop_watched_ratio",
        "watched drop ÷ minimal counter",
        Unit::Ratio,
    ),
    (
        "drop_unwatched_ns",
        "drop program per drop it lets go (unwatched port)",
        Unit::Ns,
    ),
    (
        "drop_floor_ns",
        "empty program on `skb:kfree_skb`, per drop (its floor)",
        Unit::Ns,
    ),
    (
        "drop_headers_ns",
        "the floor plus one header read, per drop it lets go",
        Unit::Ns,
    ),
    (
        "drop_storm_cpu_pct",
        "drop storm: drop program + netwatch CPU, % of a core",
        Unit::Pct,
    ),
    (
        "retransmit_program_ns",
        "retransmission program (`tcp:tcp_retransmit_skb`) per retransmission, kernel run time ÷ runs",
        Unit::Ns,
    ),
    (
        "retransmit_floor_ns",
        "empty program on the same tracepoint, same retransmissions",
        Unit::Ns,
    ),
    (
        "retransmit_minimal_ns",
        "minimal follower (the same fields read, one map update), same retransmissions",
        Unit::Ns,
    ),
    (
        "retransmit_ratio",
        "retransmission program ÷ minimal follower",
        Unit::Ratio,
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
    (
        "startup_ms",
        "netwatch's start: command → \"watching\" (BTF read, programs loaded and attached)",
        Unit::Ms,
    ),
];

pub fn value_of(report: &Report, key: &str) -> Option<f64> {
    match key {
        "floor_ns" => report.floor_ns,
        "untracked_ns_over_floor" => report.untracked_ns_over_floor,
        "l3_untracked_ns_over_floor" => report.l3_untracked_ns_over_floor,
        "tracked_request_ratio" => report.tracked_request_ratio,
        "answer_match_ratio" => report.answer_match_ratio,
        "answer_timed_match_ratio" => report.answer_timed_match_ratio,
        "udp_pps_ratio" => report.udp_pps_ratio,
        "tcpdump_pps_ratio" => report.tcpdump_pps_ratio,
        "dns_flood_pps_ratio" => report.dns_flood_pps_ratio,
        "storm_requests_per_s" => report.storm_requests_per_s,
        "storm_user_cpu_pct" => report.storm_user_cpu_pct,
        "storm_rss_mib" => report.storm_rss_mib,
        "drop_program_ns" => report.drop_program_ns,
        "drop_unwatched_ns" => report.drop_unwatched_ns,
        "drop_floor_ns" => report.drop_floor_ns,
        "drop_headers_ns" => report.drop_headers_ns,
        "drop_counter_ns" => report.drop_counter_ns,
        "drop_watched_ratio" => report.drop_watched_ratio,
        "drop_storm_cpu_pct" => report.drop_storm_cpu_pct,
        "retransmit_program_ns" => report.retransmit_program_ns,
        "retransmit_floor_ns" => report.retransmit_floor_ns,
        "retransmit_minimal_ns" => report.retransmit_minimal_ns,
        "retransmit_ratio" => report.retransmit_ratio,
        "detection_latency_ms_p99" => report.detection_latency_ms_p99,
        "connect_rate_ratio" => report.connect_rate_ratio,
        "startup_ms" => report.startup_ms,
        _ => None,
    }
}

fn goal_of<'a>(report: &'a Report, key: &str) -> Option<&'a GoalResult> {
    report.goals.iter().find(|g| g.key == key)
}

/// The keys of the results table's figures, in its order.
pub fn row_keys() -> Vec<&'static str> {
    ROWS.iter().map(|(key, ..)| *key).collect()
}

/// The previous full run's cells of a row: its figure and the change since (empty cells
/// without a baseline; `—` for a figure it did not have).
fn previous_cells(baseline: Option<&Baseline>, key: &str, now: Option<f64>, unit: Unit) -> String {
    let Some(baseline) = baseline else {
        return String::new();
    };
    match (baseline.figures.get(key), now) {
        (Some(before), Some(now)) => format!(
            " {} | {} |",
            bare(*before, unit),
            crate::baseline::change(key, *before, now)
        ),
        (Some(before), None) => format!(" {} | — |", bare(*before, unit)),
        (None, _) => " — | new |".to_owned(),
    }
}

/// The table of every contract figure beside its goal (and beside the previous full run's
/// when there is a `baseline`), and a row for every goal: met, missed or not measured.
#[must_use]
pub fn results_table(report: &Report, baseline: Option<&Baseline>) -> String {
    let (head, rule, blank) = if baseline.is_some() {
        (" Previous full run | Change |", " ---: | --- |", " | |")
    } else {
        ("", "", "")
    };
    let mut out = format!(
        "| Figure | Measured (median) | Min | Max |{head} Goal | |\n| --- | ---: | ---: | ---: |{rule} --- | --- |\n"
    );
    let mut shown: Vec<&str> = Vec::new();
    for (key, what, unit) in ROWS {
        let value = value_of(report, key);
        let (min, max) = spread_cells(report, key, value, *unit);
        let goal = goal_of(report, key);
        let _ = writeln!(
            out,
            "| `{key}` — {what} | {} | {min} | {max} |{} {} | {} |",
            value.map_or_else(|| "not measured".to_owned(), |v| show(v, *unit)),
            previous_cells(baseline, key, value, *unit),
            goal.map_or("—", |g| g.goal.as_str()),
            goal_mark(goal),
        );
        shown.push(key);
        let after: &[(&str, &str)] = match *key {
            "tcpdump_pps_ratio" => &[(crate::goals::LOSS_KEY, "netwatch's loss vs tcpdump's")],
            "dns_flood_pps_ratio" => &[(
                "dns_flood_count_exact",
                "DNS flood: netwatch counted every request sent",
            )],
            "drop_headers_ns" => &[(
                "drop_storm_count_exact",
                "drop storm: `local_drops` = copies dropped, one request",
            )],
            "storm_requests_per_s" => &[(
                "storm_count_exact",
                "storm: requests = sent, unanswered + untracked = sent",
            )],
            _ => &[],
        };
        for (goal_key, what) in after {
            goal_row(&mut out, report, goal_key, what, blank);
            shown.push(goal_key);
        }
    }
    verifier_rows(&mut out, report, baseline);
    // Any goal without a figure row of its own.
    for goal in report
        .goals
        .iter()
        .filter(|g| !g.key.starts_with("verifier_insns") && !shown.contains(&g.key.as_str()))
    {
        goal_row(&mut out, report, &goal.key, "goal", blank);
    }
    if let Some(baseline) = baseline {
        baseline_note(&mut out, report, baseline);
    }
    out
}

/// A row per program's verifier count, beside the previous full run's.
fn verifier_rows(out: &mut String, report: &Report, baseline: Option<&Baseline>) {
    for goal in report
        .goals
        .iter()
        .filter(|g| g.key.starts_with("verifier_insns"))
    {
        let now = goal
            .key
            .strip_prefix("verifier_insns.")
            .and_then(|program| report.verifier_insns.as_ref()?.get(program))
            .map(|count| f64::from(*count));
        let previous =
            baseline.map_or_else(String::new, |b| match (b.figures.get(&goal.key), now) {
                (Some(before), Some(now)) => format!(
                    " {} | {} |",
                    thousands(*before),
                    crate::baseline::change(&goal.key, *before, now)
                ),
                _ => " — | new |".to_owned(),
            });
        let _ = writeln!(
            out,
            "| `{}` — instructions the verifier processed | {} | | |{previous} {} | {} |",
            goal.key,
            goal.measured,
            goal.goal,
            met_mark(goal.met)
        );
    }
}

/// The Min and Max cells: the rounds' range; "one run" for a figure measured once (no
/// spread is known, so none is shown as if it were); "—" when not measured.
fn spread_cells(report: &Report, key: &str, value: Option<f64>, unit: Unit) -> (String, String) {
    match (report.ranges.get(key).filter(|r| r.n > 1), value) {
        (Some(range), _) => (bare(range.min, unit), bare(range.max, unit)),
        (None, Some(_)) => (ONE_RUN.to_owned(), ONE_RUN.to_owned()),
        (None, None) => ("—".to_owned(), "—".to_owned()),
    }
}

/// What the Min and Max cells of a figure measured once say.
const ONE_RUN: &str = "one run";

/// A row for the goal `key`, as judged (every goal is, measured or not); `blank` fills the
/// previous run's columns when there are.
fn goal_row(out: &mut String, report: &Report, key: &str, what: &str, blank: &str) {
    if let Some(goal) = goal_of(report, key) {
        let _ = writeln!(
            out,
            "| `{key}` — {what} | {} | | |{blank} {} | {} |",
            goal.measured,
            goal.goal,
            met_mark(goal.met)
        );
    }
}

/// What the previous full run's column holds, under the table.
fn baseline_note(out: &mut String, report: &Report, baseline: &Baseline) {
    let elsewhere = if baseline.cpu_model == report.meta.cpu_model {
        ""
    } else {
        " **Another CPU than this run's**: absolute figures (ns, packet rates, CPU) compare \
         machines as much as commits; ratios to references measured in the same run compare \
         better."
    };
    let _ = writeln!(
        out,
        "\nPrevious full run: {}. Change: relative, marked better or worse by which way the \
         figure improves (within 2 %: the same; references' and other tools' figures are \
         not marked).{elsewhere}",
        baseline.describe()
    );
}

/// The judged goals whose figure was measured once: no rounds, so no spread to tell whether
/// another run would land on the other side of the goal.
fn measured_once(report: &Report) -> Vec<&'static str> {
    ROWS.iter()
        .map(|(key, _, _)| *key)
        .filter(|key| goal_of(report, key).is_some_and(|g| g.met.is_some()))
        .filter(|key| report.ranges.get(*key).is_none_or(|r| r.n <= 1))
        .collect()
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
        "| Kind | Fresh: real ns | Fresh: reference ns | **Fresh ratio** (contract) | Fresh raw ratio | Fresh ratio over floor | Fresh: timed reference ns | Fresh ratio to it | Steady: real ns | Steady: reference ns | Steady ratio |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for fresh in &programs.fresh {
        let steady: Option<&KindCost> = programs.steady.iter().find(|s| s.kind == fresh.kind);
        let opt = |f: Option<Figure>| f.map_or_else(|| "—".to_owned(), |f| range(&f, Unit::Ratio));
        let _ = writeln!(
            out,
            "| {} `{}` | {} | {} | **{}** | {} | {} | {} | {} | {} | {} | {} |",
            fresh.role,
            fresh.kind,
            range(&fresh.real_ns, Unit::Ns),
            range(&fresh.reference_ns, Unit::Ns),
            range(&fresh.ratio, Unit::Ratio),
            opt(fresh.raw_ratio),
            opt(fresh.over_floor_ratio),
            fresh
                .timed_reference_ns
                .map_or_else(|| "—".to_owned(), |f| range(&f, Unit::Ns)),
            opt(fresh.timed_ratio),
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
            "| {name} | {} | {} | {ratio} |",
            match condition {
                Condition::None => "none",
                Condition::Netwatch => "netwatch",
                Condition::Tcpdump => "tcpdump",
                Condition::NetwatchStopped => "netwatch, process stopped (kernel side only)",
                Condition::NetwatchUnpinned => "netwatch, not pinned",
                Condition::EmptyProgram => "empty tc program (tcx, egress + ingress)",
                Condition::EmptyProgramsAndDropFloor => {
                    "empty tc program pair and empty `skb:kfree_skb` program (`bench_drop_floor`)"
                }
                Condition::MinimalTracker => "minimal tracker (`bench_track`) instead",
                Condition::MinimalTrackerAndDropFloor => {
                    "minimal tracker and empty `skb:kfree_skb` program (`bench_drop_floor`)"
                }
            },
            run.pps(condition)
                .map_or_else(|| "—".to_owned(), |f| range(&f, Unit::Pps)),
        );
    }
}

#[must_use]
pub fn rates_table(rates: &RateResults) -> String {
    let mut out = String::from(
        "| Run | Attached | Sent pps (generator) | Ratio to the baselines around it (per round) |\n| --- | --- | ---: | ---: |\n",
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
pub fn report_md(report: &Report, baseline: Option<&Baseline>) -> String {
    let mut out = String::new();
    let m = &report.meta;
    let _ = writeln!(
        out,
        "netwatch benchmarks ({} run), {} at {}, {} on {} ({} cores)\n",
        m.mode, m.date, m.commit, m.kernel, m.cpu_model, m.cores
    );
    out.push_str(&results_table(report, baseline));
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
pub fn benchmarks_md(
    report: &Report,
    baseline: Option<&Baseline>,
    previous: Option<&str>,
) -> String {
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
    out.push_str(
        "\n## Results\n\nMedians over the repetitions (rounds), with their minimum and maximum, \
         beside the previous full run's figures (`bench/baseline.json`, which this run then \
         replaced).\n\n",
    );
    out.push_str(&results_table(report, baseline));
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
    let once = measured_once(report);
    if !once.is_empty() {
        let _ = writeln!(
            out,
            "\n**Measured once:** {} — one run each (Min and Max say so), so no spread is known: \
             whether another run would land on the other side of the goal cannot be told from this one.",
            once.iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    missed_goals(&mut out, report);
    details(&mut out, report);
    out.push_str(METHODOLOGY);
    out.push('\n');
    out.push_str(&hand_written(previous));
    out
}

/// The UDP-not-DNS path beside the floor, when the report has it (older reports do not).
fn udp_figures(out: &mut String, programs: &ProgramResults) {
    if let (Some(unwatched), Some(watched)) = (
        &programs.udp_unwatched_ns_over_floor,
        &programs.udp_watched_ns_over_floor,
    ) {
        let _ = writeln!(
            out,
            "\nUDP that is not DNS, beside the floor (steady): a port nothing watches {} ns over the floor \
             (one array index per port); a watched `--udp-port` service {} ns over the floor (the same \
             datagram repeated: a retransmit of its flow).",
            range(unwatched, Unit::Ns),
            range(watched, Unit::Ns),
        );
    }
}

/// The L3 classifiers' common path beside the floor, when the report has it.
fn l3_figures(out: &mut String, programs: &ProgramResults) {
    if let (Some(egress), Some(ingress)) = (
        &programs.l3_untracked_ns_over_floor,
        &programs.l3_ingress_untracked_ns_over_floor,
    ) {
        let _ = writeln!(
            out,
            "\nWithout a link-layer header (tun, `WireGuard`, PPP, ipip, gre, sit: the L3 classifiers, on the \
             bulk TCP data packet as the IP packet alone): egress {} ns, ingress {} ns over the floor (steady).",
            range(egress, Unit::Ns),
            range(ingress, Unit::Ns),
        );
    }
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
        udp_figures(out, programs);
        l3_figures(out, programs);
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
        storm_details(out, storm);
    }
    if let Some(drops) = &report.drops {
        drop_storm(out, drops);
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

fn storm_details(out: &mut String, storm: &crate::storm::StormResults) {
    out.push_str("\n## Storm\n\n");
    let _ = writeln!(
        out,
        "{} distinct DNS queries in {:.2} s ({}/s) to a blackholed lab target. netwatch counted {} requests: \
         {} unanswered, {} untracked (table full; the summary's `lost_requests`: {}), {} still in flight at the end, \
         {} retransmits (a request sent again while pending: none in a storm of distinct queries). \
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
        count(storm.retransmits),
        storm.cpu_user_pct,
        storm.cpu_system_pct,
        storm.settle_cpu_pct,
        crate::storm::SETTLE.as_secs_f64(),
        storm.rss_peak_mib,
        storm.rss_hwm_mib,
    );
}

/// The references' costs in a storm, as a sentence's end.
fn references(storm: &crate::drops::DropStorm) -> String {
    if storm.references.is_empty() {
        return String::new();
    }
    let costs: Vec<String> = storm
        .references
        .iter()
        .map(|r| format!("`{}` {:.1} ns", r.program, r.ns_per_run))
        .collect();
    format!(
        " References, each alone on the same storm: {}.",
        costs.join(", ")
    )
}

fn drop_storm(out: &mut String, drops: &DropResults) {
    out.push_str("\n## Drop storm\n\n");
    let (w, u) = (&drops.watched, &drops.unwatched);
    let _ = writeln!(
        out,
        "{} copies of one DNS query in {:.2} s ({}/s), each dropped by the client's own output chain: \
         the drop program ran {} times, {:.1} ns per run (the kernel's run time ÷ run count, \
         `BPF_ENABLE_STATS`), {:.1} % of a core; netwatch's process {:.1} % of a core. The target's \
         `local_drops`: {} (exact: {}).{} Then {} UDP datagrams to an unwatched port in {:.2} s, \
         dropped alike: {} runs, {:.1} ns per run, {:.1} % of a core; netwatch's process {:.1} \
         %.{}",
        count(w.sent),
        w.seconds,
        thousands(w.per_second()),
        count(w.runs),
        w.ns_per_run,
        w.program_cpu_pct,
        w.netwatch_cpu_pct,
        drops.local_drops,
        drops.count_exact,
        references(w),
        count(u.sent),
        u.seconds,
        count(u.runs),
        u.ns_per_run,
        u.program_cpu_pct,
        u.netwatch_cpu_pct,
        references(u),
    );
}

/// The goals not met: missed, and not measured (a goal nobody measured is not met either).
fn missed_goals(out: &mut String, report: &Report) {
    let open: Vec<&GoalResult> = report
        .goals
        .iter()
        .filter(|g| g.met != Some(true))
        .collect();
    if open.is_empty() {
        return;
    }
    out.push_str("\n## Missed goals\n\nMissed, or not measured in this run.\n\n");
    for goal in open {
        let _ = writeln!(
            out,
            "- **`{}`** ({}): {} (goal {})",
            goal.key,
            met_mark(goal.met),
            goal.measured,
            goal.goal
        );
    }
    let _ = writeln!(
        out,
        "\nWhy, and what would close them: [{ANALYSIS_HEADING}](#{}), below.",
        ANALYSIS_HEADING
            .to_lowercase()
            .replace(|c: char| !c.is_alphanumeric() && c != ' ', "")
            .replace(' ', "-")
    );
}

/// The heading of BENCHMARKS.md's last section: analysis written by hand (why a goal is
/// missed, what would close it), dated and tied to the commit it reads. The generator keeps
/// it as it finds it: only the report's figures are generated.
pub const ANALYSIS_HEADING: &str = "Analysis (written by hand)";

/// The hand-written analysis at the end of `previous` (an earlier BENCHMARKS.md), heading
/// included; a placeholder heading when there is none.
#[must_use]
pub fn hand_written(previous: Option<&str>) -> String {
    let heading = format!("## {ANALYSIS_HEADING}");
    previous
        .and_then(|text| text.find(&heading).map(|at| text[at..].to_owned()))
        .unwrap_or_else(|| format!("{heading}\n\nNone yet.\n"))
}

const METHODOLOGY: &str = "
## Methodology

- **Program costs** (`floor_ns`, `untracked_ns_over_floor`, the ratios) come from `BPF_PROG_TEST_RUN`
  (aya's `SchedClassifier::test_run`) on crafted Ethernet frames, with `kernel.bpf_stats_enabled` off.
  The real programs are those of a freshly loaded `Probe`; the references (`bench_floor`, `bench_track`:
  one clock read plus one update of a map of `PENDING`'s type, size and key width, `bench_match`: one
  lookup plus one delete, their key being the 40 bytes after the Ethernet header) are built beside them
  and always measured in the same run, interleaved. A fourth, `bench_match_timed`, is `bench_match` plus
  the clock read and the request's age that a latency needs: `answer_timed_match_ratio` (no goal of its
  own) holds each answer over it, so the report shows how much of `answer_match_ratio` is that clock
  read alone.
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
  and the ratio over the floor (floor taken off both sides) are shown beside it. After the round's pairs,
  `bench_track → bench_match_timed` on each request again gives the timed reference: a pass of its own,
  so that it leaves the contract's pairs as they were before it existed, its programs warmer than in the
  pairs, which errs against netwatch. Each round checks that
  every answer settled its request and that the reference matcher emptied its map.
- **Kinds**: requests are TCP SYN, DNS query and ICMP echo request, IPv4 and IPv6; answers are SYN-ACK,
  DNS response, echo reply, ICMP port unreachable quoting the DNS query and host prohibited (ICMPv6:
  administratively prohibited) quoting the SYN. The contract keys hold the worst kind.
- **Packet rates**: two namespaces of their own joined by one veth pair (203.0.113.2 on `nwb0` →
  203.0.113.1 on `nwb1`, IPv6 off, permanent neighbour entries, an nftables netdev ingress rule on `nwb1`
  dropping UDP 9 and 53: no firewall, no conntrack, no forwarding, so the rate is as high and as steady as
  the pair allows and netwatch's per-packet cost weighs the most). `traffic-gen udp` sends 64-byte frames
  to the untracked port 9; the rate is packets sent per second as the generator reports it (on a veth pair
  the receiving softirq runs on the sender's CPU, so this is the end-to-end rate; the sink's veth counts
  every packet sent, so its count adds nothing and is not shown). The generator is pinned to the last CPU, netwatch and tcpdump to the
  first (`taskset`), so a monitor never competes with the sender for its CPU. Conditions: nothing attached;
  `netwatch --iface nwb0 --json --timeout 1s` started in the sending namespace; `tcpdump -i nwb0 -w
  /dev/null` with the equivalent filter (DNS, TCP SYN, ICMP, ICMPv6); and, to show the floor, the empty
  reference program attached with tcx on both directions, then the same with the empty program on
  `skb:kfree_skb` too (full runs): the sink drops every datagram, so netwatch's drop program runs on
  each, and that pair of conditions shows what its attach point alone costs the rate. This machine's speed drifts by several
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
  the minimal tracker attached instead (what any per-request insert costs), the minimal tracker with the
  empty program on `skb:kfree_skb` beside it (the sink drops every query, so netwatch's drop program
  runs on each: that attach point's cost, which the tracker alone does not pay), netwatch with its process
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
- **Drop storm**: netwatch `--timeout 120s` in the lab's client namespace, whose own output chain drops
  every copy of one DNS query to 198.51.100.53 (2,000,000 copies; quick: 1,000,000), then UDP to port 9
  for as long. `BPF_ENABLE_STATS` on for the section: each program's cost per drop is its kernel run
  time over its run count, read before and after each storm. Then netwatch is stopped and each
  reference runs the same two storms alone on the tracepoint (the first program on a drop reads its
  `sk_buff` and headers cold, those after it warm: side by side, the order of attachment would
  decide who pays): `bench_drop_floor` (an empty raw tracepoint program on `skb:kfree_skb`),
  `bench_drop_headers` (reads the 32 bytes of `sk_buff` holding `protocol`, `network_header` and
  `head`, then 56 bytes of headers: the floor plus one header read) and `bench_drop_counter` (those
  reads and one hash add). Goals: a drop netwatch lets go costs at most `bench_drop_headers` (in the
  UDP storm), a watched one at most 1.5 times `bench_drop_counter` (in the DNS storm).
- **Start-up** (`startup_ms`): netwatch `--iface c0 --json` started in the lab's client namespace
  (pinned as above) 9 times (quick: 5), each timed from the command (`ip netns exec`, `taskset`) to
  its \"watching\" line, then stopped; the median and range. In that time it reads the kernel's BTF in a
  child process, loads and attaches its programs (the verifier's time) and its socket owner programs.
- **Verifier**: `verified_instruction_count` of each loaded program (`bpf_prog_info.verified_insns`).
- **Goals** are judged on the medians: met, missed, or not measured (a section that did not run, or
  a figure it could not give); a goal not measured is not met, and is listed with the missed ones.
  A ranged figure whose rounds fell on both sides of its goal is called borderline; a figure measured
  once (the storm, the drop storm, the detection latency) has no spread to tell, and says so.
  netwatch's loss against tcpdump's (`udp_loss_vs_tcpdump`) counts a ratio above 1 as no loss (never
  as a negative one, which would meet the goal by its sign alone), is judged only where tcpdump lost
  something (a fifth of nothing is not measurable here), and is borderline when netwatch's rounds lost
  both more and less than its bound.
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
        let table = results_table(&report, None);
        assert!(
            table.contains(
                "| `floor_ns` — empty tc program, per run | 26.0 ns | 25.0 | 28.0 | — | — |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| 6.0 ns | one run | one run | ≤ 5.0 | ❌ missed |"),
            "measured once: no spread, and it says so: {table}"
        );
        assert!(
            table.contains("`udp_pps_ratio` — 64-byte UDP pps, netwatch ÷ none | not measured |"),
            "{table}"
        );
        let doc = benchmarks_md(&report, None, None);
        assert!(doc.contains("## Missed goals"), "{doc}");
        assert!(doc.contains("## Methodology"));
        assert!(
            doc.ends_with("## Analysis (written by hand)\n\nNone yet.\n"),
            "{doc}"
        );
    }

    /// The table's row of goal `key` and its mark.
    fn goal_row_of<'a>(table: &'a str, key: &str) -> Option<&'a str> {
        table
            .lines()
            .find(|line| line.starts_with(&format!("| `{key}` —")))
    }

    #[test]
    fn every_goal_gets_a_row_met_missed_or_not_measured() {
        for report in [
            Report::default(),
            Report {
                udp_pps_ratio: Some(0.99),
                tcpdump_pps_ratio: Some(0.9),
                storm_requests_per_s: Some(120_000.0),
                storm_count_exact: Some(false),
                verifier_insns: Some(std::collections::BTreeMap::from([(
                    "netwatch_egress".to_owned(),
                    20_000,
                )])),
                ..Report::default()
            },
        ] {
            let mut report = report;
            report.goals = crate::goals::evaluate(&report);
            let table = results_table(&report, None);
            for goal in &report.goals {
                let row = goal_row_of(&table, &goal.key)
                    .unwrap_or_else(|| panic!("no row for {}: {table}", goal.key));
                assert!(
                    row.ends_with(&format!("| {} |", met_mark(goal.met))),
                    "{row}"
                );
            }
        }
        let unmeasured = results_table(
            &{
                let mut report = Report::default();
                report.goals = crate::goals::evaluate(&report);
                report
            },
            None,
        );
        assert!(
            goal_row_of(&unmeasured, "storm_count_exact")
                .is_some_and(|row| row.ends_with("| ❔ not measured |")),
            "{unmeasured}"
        );
        assert!(
            goal_row_of(&unmeasured, "verifier_insns").is_some(),
            "no verifier figures: still a row: {unmeasured}"
        );
    }

    #[test]
    fn goals_not_measured_are_listed_with_the_missed_ones() {
        let mut report = Report {
            untracked_ns_over_floor: Some(6.0),
            tracked_request_ratio: Some(1.0),
            ..Report::default()
        };
        report.goals = crate::goals::evaluate(&report);
        let doc = benchmarks_md(&report, None, None);
        let missed = &doc[doc.find("## Missed goals").expect("the section")..];
        let missed = &missed[..missed.find("\n## ").unwrap_or(missed.len())];
        assert!(
            missed.contains("- **`untracked_ns_over_floor`** (❌ missed): 6.0"),
            "{missed}"
        );
        assert!(
            missed.contains("- **`answer_match_ratio`** (❔ not measured): not measured"),
            "{missed}"
        );
        assert!(
            missed.contains("- **`storm_count_exact`** (❔ not measured)"),
            "{missed}"
        );
        assert!(!missed.contains("`tracked_request_ratio`"), "met: {missed}");
    }

    #[test]
    fn figures_measured_once_say_they_have_no_spread() {
        let mut report = Report {
            storm_requests_per_s: Some(120_000.0),
            drop_program_ns: Some(90.0),
            detection_latency_ms_p99: Some(1_300.0),
            udp_pps_ratio: Some(0.985),
            tcpdump_pps_ratio: Some(0.9),
            ..Report::default()
        };
        report.ranges.insert(
            "udp_pps_ratio".to_owned(),
            Figure {
                median: 0.985,
                min: 0.96,
                max: 1.01,
                n: 8,
            },
        );
        report.goals = crate::goals::evaluate(&report);
        let table = results_table(&report, None);
        for key in [
            "storm_requests_per_s",
            "drop_program_ns",
            "detection_latency_ms_p99",
        ] {
            let row = goal_row_of(&table, key).expect("a row");
            assert!(row.contains("| one run | one run |"), "{row}");
        }
        let doc = benchmarks_md(&report, None, None);
        assert!(
            doc.contains(
                "**Measured once:** `storm_requests_per_s`, `detection_latency_ms_p99` — one \
                 run each"
            ),
            "{doc}"
        );
        // udp_pps_ratio's rounds straddle both its own goal and the loss goal's 2 %.
        assert!(
            doc.contains("**Borderline:** `udp_pps_ratio`, `udp_loss_vs_tcpdump` —"),
            "{doc}"
        );
    }

    #[test]
    fn figures_stand_beside_the_previous_full_runs_with_the_change_marked() {
        let mut report = Report {
            answer_match_ratio: Some(1.7),
            untracked_ns_over_floor: Some(12.0),
            drop_counter_ns: Some(60.0),
            ..Report::default()
        };
        report.meta.cpu_model = "AMD EPYC".into();
        report.goals = crate::goals::evaluate(&report);
        let baseline = Baseline {
            commit: "ae76dec".into(),
            date: "2026-11-26".into(),
            cpu_model: "AMD EPYC".into(),
            kernel: "6.18".into(),
            mode: "full".into(),
            figures: [
                ("answer_match_ratio".to_owned(), 3.872),
                ("untracked_ns_over_floor".to_owned(), 11.0),
                ("floor_ns".to_owned(), 38.0),
            ]
            .into(),
        };
        let table = results_table(&report, Some(&baseline));
        assert!(table.contains("| Previous full run | Change |"), "{table}");
        assert!(
            table.contains(
                "| 1.700 | one run | one run | 3.872 | −56 % ✓ better | ≤ 1.250 | ❌ missed |"
            ),
            "{table}"
        );
        assert!(table.contains("| 11.0 | +9 % ⚠ worse |"), "{table}");
        assert!(
            table.contains("| 60.0 ns | one run | one run | — | new |"),
            "{table}"
        );
        assert!(
            table.contains("| not measured | — | — | 38.0 | — |"),
            "{table}"
        );
        assert!(
            table.contains("Previous full run: commit ae76dec"),
            "{table}"
        );
        assert!(!table.contains("Another CPU"), "{table}");
        let plain = results_table(&report, None);
        assert!(!plain.contains("Previous full run"), "{plain}");
    }

    #[test]
    fn the_hand_written_analysis_is_kept_as_found() {
        let previous = "# netwatch benchmarks\n\n## Results\n\nold figures\n\n\
                        ## Analysis (written by hand)\n\n2026-11-26, at abc1234: why.\n";
        let doc = benchmarks_md(&Report::default(), None, Some(previous));
        assert!(!doc.contains("old figures"));
        assert!(
            doc.ends_with("## Analysis (written by hand)\n\n2026-11-26, at abc1234: why.\n"),
            "{doc}"
        );
    }
}

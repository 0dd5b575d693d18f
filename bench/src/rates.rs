//! Packet rates across a veth pair ([`VethPair`]), with netwatch attached, with tcpdump
//! capturing the equivalent filter, and with nothing (plus reference conditions that show
//! where the cost lies): 64-byte UDP frames and DNS queries from `traffic-gen`, the
//! conditions interleaved round by round (the order rotating), each ratio taken per round.
//!
//! The rate is what the generator reports (packets handed to the stack per second, which on
//! a veth pair includes the receiving side's softirq work on the same CPU); the packets the
//! sink's end received are counted beside it.

use std::{thread, time::Duration};

use anyhow::Context as _;
use netwatch_tests::lab::NetwatchRun;
use serde::{Deserialize, Serialize};

use crate::{
    drops::{DROP_FLOOR, Reference},
    labkit::{self, Generated, SINK_V4, TcpdumpStats, Tools, UNTRACKED_PORT, VethPair},
    stats::{self, Figure},
};

#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub seconds: f64,
    pub rounds: usize,
    /// Rounds of the within-capacity DNS run.
    pub tracked_rounds: usize,
    /// Also the conditions that show where the cost lies (empty program, minimal tracker,
    /// netwatch stopped, netwatch unpinned).
    pub diagnostics: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    None,
    Netwatch,
    Tcpdump,
    /// netwatch attached, its process stopped (SIGSTOP) for the round: the kernel programs
    /// alone, without userspace's sweeps of the pending table.
    #[serde(rename = "netwatch_stopped")]
    NetwatchStopped,
    /// netwatch attached and left to the scheduler, like the generator's CPU.
    #[serde(rename = "netwatch_unpinned")]
    NetwatchUnpinned,
    /// The empty reference program attached (tcx, egress and ingress): the cost of any tc
    /// program at all.
    #[serde(rename = "empty_program")]
    EmptyProgram,
    /// The same, and the empty reference program on `skb:kfree_skb` (`bench_drop_floor`):
    /// every attach point netwatch has on this run's path, with nothing in them. The sink
    /// drops every datagram, so netwatch's drop program runs on each.
    #[serde(rename = "empty_programs_and_drop_floor")]
    EmptyProgramsAndDropFloor,
    /// The minimal tracker attached instead of netwatch (one clock read, one map update of
    /// `PENDING`'s type, size and key width): what tracking each request costs at the least.
    #[serde(rename = "minimal_tracker")]
    MinimalTracker,
    /// The same, and the empty reference program on `skb:kfree_skb`: the DNS flood's sink
    /// drops every query, so netwatch's drop program runs on each, and this is the least any
    /// tracker that also watches drops there pays.
    #[serde(rename = "minimal_tracker_and_drop_floor")]
    MinimalTrackerAndDropFloor,
}

/// One condition's rates over the rounds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConditionRates {
    pub condition: Condition,
    /// Generator packets per second, per run (for `none`: every baseline run).
    pub pps: Vec<f64>,
    /// Per round: this condition's rate over the mean of the baseline runs just before and
    /// just after it (empty for `none`).
    #[serde(default)]
    pub ratios: Vec<f64>,
}

impl ConditionRates {
    fn new(condition: Condition) -> Self {
        Self {
            condition,
            pps: Vec::new(),
            ratios: Vec::new(),
        }
    }
}

/// One netwatch round of a DNS run: what was sent and what netwatch counted.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct CountedRound {
    pub sent: u64,
    pub requests: u64,
    pub untracked: u64,
}

impl CountedRound {
    #[must_use]
    pub const fn exact(&self) -> bool {
        self.requests == self.sent
    }
}

/// A run of rounds under several conditions, with the per-round ratios to none.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RateRun {
    pub conditions: Vec<ConditionRates>,
    /// Netwatch's counts (DNS runs only).
    pub counted: Vec<CountedRound>,
}

impl RateRun {
    fn rates(&self, condition: Condition) -> Option<&ConditionRates> {
        self.conditions.iter().find(|c| c.condition == condition)
    }

    /// Per-round `condition / none` ratios, summarised.
    #[must_use]
    pub fn ratio(&self, condition: Condition) -> Option<Figure> {
        Figure::of(&self.rates(condition)?.ratios)
    }

    #[must_use]
    pub fn pps(&self, condition: Condition) -> Option<Figure> {
        Figure::of(&self.rates(condition)?.pps)
    }

    /// Whether netwatch counted exactly what was sent, every round.
    #[must_use]
    pub fn count_exact(&self) -> Option<bool> {
        (!self.counted.is_empty()).then(|| self.counted.iter().all(CountedRound::exact))
    }

    /// The share of requests netwatch could track (not past the table's capacity).
    #[must_use]
    pub fn tracked_share(&self) -> Option<f64> {
        let sent: u64 = self.counted.iter().map(|c| c.sent).sum();
        let untracked: u64 = self.counted.iter().map(|c| c.untracked).sum();
        #[expect(clippy::cast_precision_loss, reason = "packet counts, far below 2^52")]
        stats::ratio(sent.saturating_sub(untracked) as f64, sent as f64)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RateResults {
    pub seconds_per_round: f64,
    pub rounds: usize,
    pub generator_cpu: Option<usize>,
    pub monitor_cpu: Option<usize>,
    /// UDP to an untracked port: none, netwatch, tcpdump.
    pub udp: RateRun,
    pub tcpdump_stats: Vec<TcpdumpStatsRecord>,
    /// DNS queries to the sink, each a new request, for `seconds_per_round`: past the
    /// table's capacity most are counted untracked.
    pub dns_flood: RateRun,
    /// DNS queries stopping at `dns_tracked_max` per round: every one is tracked.
    pub dns_tracked: RateRun,
    pub dns_tracked_max: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct TcpdumpStatsRecord {
    pub captured: u64,
    pub dropped_by_kernel: u64,
}

impl From<TcpdumpStats> for TcpdumpStatsRecord {
    fn from(stats: TcpdumpStats) -> Self {
        Self {
            captured: stats.captured,
            dropped_by_kernel: stats.dropped_by_kernel,
        }
    }
}

#[cfg(test)]
impl RateResults {
    /// Results of the three runs, four rounds of a second each, nothing pinned.
    pub fn of_runs(udp: RateRun, dns_flood: RateRun, dns_tracked: RateRun) -> Self {
        Self {
            seconds_per_round: 1.0,
            rounds: 4,
            generator_cpu: None,
            monitor_cpu: None,
            udp,
            tcpdump_stats: vec![],
            dns_flood,
            dns_tracked,
            dns_tracked_max: TRACKED_MAX,
        }
    }
}

/// Requests per within-capacity round: below the 65,536-entry table with room to spare.
pub const TRACKED_MAX: u64 = 60_000;

pub fn run(tools: &Tools, plan: &Plan, progress: &dyn Fn(&str)) -> anyhow::Result<RateResults> {
    let pair = VethPair::new()?;
    let udp_target = format!("{SINK_V4}:{UNTRACKED_PORT}");
    let dns_target = format!("{SINK_V4}:53");
    // Warm-up: the first sends pay for page faults and cold caches.
    pair.sender(tools).generate("udp", &udp_target, 0.5, None)?;

    let mut udp_conditions = vec![Condition::None, Condition::Netwatch, Condition::Tcpdump];
    let mut dns_conditions = vec![Condition::None, Condition::Netwatch];
    if plan.diagnostics {
        udp_conditions.extend([
            Condition::EmptyProgram,
            Condition::EmptyProgramsAndDropFloor,
        ]);
        dns_conditions.extend([
            Condition::NetwatchStopped,
            Condition::MinimalTracker,
            Condition::MinimalTrackerAndDropFloor,
        ]);
        if tools.monitor_cpu.is_some() {
            dns_conditions.push(Condition::NetwatchUnpinned);
        }
    }
    let names = |conditions: &[Condition]| {
        conditions
            .iter()
            .map(|c| format!("{c:?}").to_lowercase())
            .collect::<Vec<_>>()
            .join(" / ")
    };
    progress(&format!(
        "UDP to an untracked port: {}, {} rounds of {} s each, between baseline runs",
        names(&udp_conditions),
        plan.rounds,
        plan.seconds
    ));
    let mut tcpdump_stats = Vec::new();
    let udp = rounds(&udp_conditions, plan.rounds, &mut |condition| {
        measure(
            &pair,
            tools,
            condition,
            "udp",
            &udp_target,
            plan.seconds,
            None,
            &mut tcpdump_stats,
        )
    })?;

    progress(&format!(
        "DNS flood: {}, {} rounds of {} s each, between baseline runs",
        names(&dns_conditions),
        plan.rounds,
        plan.seconds
    ));
    let dns_flood = rounds(&dns_conditions, plan.rounds, &mut |condition| {
        measure(
            &pair,
            tools,
            condition,
            "dns",
            &dns_target,
            plan.seconds,
            None,
            &mut Vec::new(),
        )
    })?;

    progress(&format!(
        "DNS within the table's capacity: {TRACKED_MAX} requests, {} rounds",
        plan.tracked_rounds
    ));
    let dns_tracked = rounds(
        &dns_conditions[..dns_conditions.len().min(4)],
        plan.tracked_rounds,
        &mut |condition| {
            measure(
                &pair,
                tools,
                condition,
                "dns",
                &dns_target,
                30.0,
                Some(TRACKED_MAX),
                &mut Vec::new(),
            )
        },
    )?;

    Ok(RateResults {
        seconds_per_round: plan.seconds,
        rounds: plan.rounds,
        generator_cpu: tools.generator_cpu,
        monitor_cpu: tools.monitor_cpu,
        udp,
        tcpdump_stats: tcpdump_stats.into_iter().map(Into::into).collect(),
        dns_flood,
        dns_tracked,
        dns_tracked_max: TRACKED_MAX,
    })
}

/// What one round under one condition gave.
struct Measured {
    generated: Generated,
    counted: Option<CountedRound>,
}

/// Rounds of `conditions` (the first being `none`, the baseline), each condition measured
/// between two baseline runs: a round goes none, A, none, B, none, … with the order of A, B, …
/// rotating, and each condition's ratio is its rate over the mean of the baselines on either
/// side, which cancels the drift of this shared machine's speed over a round.
fn rounds(
    conditions: &[Condition],
    rounds: usize,
    measure: &mut dyn FnMut(Condition) -> anyhow::Result<Measured>,
) -> anyhow::Result<RateRun> {
    let mut run = RateRun {
        conditions: conditions.iter().map(|c| ConditionRates::new(*c)).collect(),
        counted: Vec::new(),
    };
    let record = |run: &mut RateRun, index: usize, measured: &Measured| {
        let rates = &mut run.conditions[index];
        rates.pps.push(measured.generated.pps());
        run.counted.extend(measured.counted);
    };
    let others = conditions.len() - 1;
    for round in 0..rounds {
        let mut before = measure(Condition::None)?;
        record(&mut run, 0, &before);
        for offset in 0..others {
            let index = 1 + (offset + round) % others;
            let measured = measure(conditions[index])?;
            record(&mut run, index, &measured);
            let after = measure(Condition::None)?;
            record(&mut run, 0, &after);
            let baseline = f64::midpoint(before.generated.pps(), after.generated.pps());
            if let Some(ratio) = stats::ratio(measured.generated.pps(), baseline) {
                run.conditions[index].ratios.push(ratio);
            }
            before = after;
        }
    }
    Ok(run)
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call per run kind, each spelled out"
)]
fn measure(
    pair: &VethPair,
    tools: &Tools,
    condition: Condition,
    mode: &str,
    target: &str,
    seconds: f64,
    max: Option<u64>,
    tcpdump_stats: &mut Vec<TcpdumpStats>,
) -> anyhow::Result<Measured> {
    let bench = pair.sender(tools);
    let attached = matches!(
        condition,
        Condition::Netwatch | Condition::NetwatchStopped | Condition::NetwatchUnpinned
    );
    let netwatch = attached.then(|| bench.start_netwatch(condition == Condition::NetwatchUnpinned));
    let stopped = netwatch
        .as_ref()
        .filter(|_| condition == Condition::NetwatchStopped)
        .map(NetwatchRun::pid);
    if let Some(pid) = stopped {
        signal(pid, libc::SIGSTOP);
    }
    let tcpdump = if condition == Condition::Tcpdump {
        Some(bench.start_tcpdump()?)
    } else {
        None
    };
    let reference = match condition {
        Condition::EmptyProgram | Condition::EmptyProgramsAndDropFloor => {
            Some(bench.attach_reference("bench_floor")?)
        }
        Condition::MinimalTracker | Condition::MinimalTrackerAndDropFloor => {
            Some(bench.attach_reference("bench_track")?)
        }
        _ => None,
    };
    let drop_floor = if matches!(
        condition,
        Condition::EmptyProgramsAndDropFloor | Condition::MinimalTrackerAndDropFloor
    ) {
        Some(Reference::attach(DROP_FLOOR)?)
    } else {
        None
    };
    let generated = bench.generate(mode, target, seconds, max)?;
    if let Some(pid) = stopped {
        signal(pid, libc::SIGCONT);
    }
    drop(reference);
    drop(drop_floor);
    if let Some(tcpdump) = tcpdump {
        tcpdump_stats.push(tcpdump.stop());
    }
    let counted = match netwatch {
        Some(netwatch) => {
            let finished = labkit::stop_netwatch(netwatch)?;
            (mode == "dns")
                .then(|| counted(&finished, target, generated.sent))
                .transpose()?
        }
        None => None,
    };
    if condition != Condition::None {
        // Let what the run left (netwatch's exit, a detach, softirq backlog) settle.
        thread::sleep(Duration::from_millis(200));
    }
    Ok(Measured { generated, counted })
}

fn signal(pid: u32, signal: i32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) on netwatch, our own child.
        unsafe { libc::kill(pid, signal) };
    }
}

fn counted(
    finished: &netwatch_tests::lab::Finished,
    target: &str,
    sent: u64,
) -> anyhow::Result<CountedRound> {
    let (address, port) = target.rsplit_once(':').context("ADDR:PORT")?;
    let port: u64 = port.parse()?;
    let targets = finished.targets();
    let record = targets
        .get(&("udp".to_owned(), address.to_owned(), Some(port)))
        .with_context(|| format!("netwatch reported no target {target}: {targets:?}"))?;
    let field = |name: &str| {
        record[name]
            .as_u64()
            .with_context(|| format!("{name} in {record}"))
    };
    Ok(CountedRound {
        sent,
        requests: field("requests")?,
        untracked: field("untracked")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_of(none: &[f64], netwatch: &[f64]) -> RateRun {
        RateRun {
            conditions: vec![
                ConditionRates {
                    condition: Condition::None,
                    pps: none.to_vec(),
                    ratios: vec![],
                },
                ConditionRates {
                    condition: Condition::Netwatch,
                    pps: netwatch.to_vec(),
                    ratios: netwatch.iter().zip(none).map(|(n, b)| n / b).collect(),
                },
            ],
            counted: vec![
                CountedRound {
                    sent: 100,
                    requests: 100,
                    untracked: 40,
                },
                CountedRound {
                    sent: 300,
                    requests: 300,
                    untracked: 0,
                },
            ],
        }
    }

    /// A machine whose speed drifts by `drift` per run; `netwatch` runs at `share` of it.
    fn fake(
        drift: f64,
        shares: &[(Condition, f64)],
    ) -> impl FnMut(Condition) -> anyhow::Result<Measured> {
        let shares = shares.to_vec();
        let mut speed = 1_000.0;
        move |condition| {
            speed += drift;
            let share = shares
                .iter()
                .find(|(c, _)| *c == condition)
                .map_or(1.0, |(_, s)| *s);
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "small test rates"
            )]
            let sent = (speed * share) as u64;
            Ok(Measured {
                generated: Generated { sent, seconds: 1.0 },
                counted: None,
            })
        }
    }

    #[test]
    fn baselines_around_each_run_cancel_drift() {
        let conditions = [Condition::None, Condition::Netwatch, Condition::Tcpdump];
        let shares = [(Condition::Netwatch, 0.98), (Condition::Tcpdump, 0.90)];
        let run = rounds(&conditions, 4, &mut fake(10.0, &shares)).unwrap();
        let netwatch = run.ratio(Condition::Netwatch).unwrap();
        let tcpdump = run.ratio(Condition::Tcpdump).unwrap();
        assert_eq!(netwatch.n, 4);
        // Linear drift cancels (up to the integer packet counts).
        assert!((netwatch.median - 0.98).abs() < 2e-3, "{netwatch:?}");
        assert!((tcpdump.median - 0.90).abs() < 2e-3, "{tcpdump:?}");
        // Each round: a baseline, then each condition followed by a baseline.
        assert_eq!(run.conditions[0].pps.len(), 4 * 3);
        assert_eq!(run.conditions[1].pps.len(), 4);
        // Without baselines around each run the same drift would bias a naive ratio.
        let naive = run.conditions[1].pps[0] / run.conditions[0].pps[0];
        assert!(
            (naive - 0.98).abs() > 5e-3,
            "the drift is visible to a naive ratio: {naive}"
        );
    }

    #[test]
    fn ratios_are_summarised_per_round() {
        let run = run_of(&[100.0, 200.0, 100.0, 100.0], &[99.0, 190.0, 98.0, 97.0]);
        let ratio = run.ratio(Condition::Netwatch).unwrap();
        assert_eq!(ratio.n, 4);
        assert!((ratio.median - 0.975).abs() < 1e-9, "{ratio:?}");
        assert!((ratio.min - 0.95).abs() < 1e-9 && (ratio.max - 0.99).abs() < 1e-9);
        assert!(run.ratio(Condition::Tcpdump).is_none());
    }

    #[test]
    fn counts_and_tracked_shares() {
        let mut run = run_of(&[1.0], &[1.0]);
        assert_eq!(run.count_exact(), Some(true));
        assert!((run.tracked_share().unwrap() - 0.9).abs() < 1e-9);
        run.counted[1].requests = 299;
        assert_eq!(run.count_exact(), Some(false));
        run.counted.clear();
        assert_eq!(run.count_exact(), None);
        assert_eq!(run.tracked_share(), None);
    }
}

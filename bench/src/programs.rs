//! The programs' own cost, with `BPF_PROG_TEST_RUN`: the real classifiers against the
//! reference programs (`bench_floor`, `bench_track`, `bench_match`), always in the same run
//! and interleaved, so that whatever the machine does meanwhile hits both.
//!
//! Two methods, both reported:
//!
//! - **steady** (the letter of the contract): one packet run `repeat` (≥ 1e6) times, median
//!   of the repetitions. A request repeated is only new the first time: this is the
//!   retransmit path (and for the reference, an update of an existing key); an answer
//!   repeated only matches the first time: this is the duplicate-answer path (a lookup miss;
//!   for the reference too).
//! - **fresh** (what the goals mean): distinct requests, each run once then answered once,
//!   interleaved per key with the reference's track-then-match on the same request; per
//!   round a trimmed mean over the keys, then the median over the rounds. A single timed run
//!   carries the timer's own overhead (the floor run once minus the floor run in a loop);
//!   it is taken off every figure before dividing, so the ratios stand on the same basis as
//!   the steady ones.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, bail, ensure};
use aya::{
    Ebpf,
    maps::HashMap as BpfHashMap,
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use netwatch::probe::{Classifiers, KernelTables as _, Probe};

use crate::BENCH_OBJECT;
use netwatch_common::{
    EGRESS_PROGRAM, INGRESS_PROGRAM, L3_EGRESS_PROGRAM, L3_INGRESS_PROGRAM, PendingRequest,
    RequestKey,
};
use serde::{Deserialize, Serialize};

use crate::{
    packets::{self, Exchange},
    stats::{self, Figure},
};

/// The kernel's limit on instructions processed while verifying one program.
pub const VERIFIER_LIMIT: u32 = 1_000_000;
/// Share trimmed off each end of the single-run timings of a round.
pub const TRIM: f64 = 0.1;

const FLOOR: &str = "bench_floor";
const TRACK: &str = "bench_track";
const MATCH: &str = "bench_match";
const MATCH_TIMED: &str = "bench_match_timed";
const REFERENCE_MAP: &str = "REFERENCE";
/// `TC_ACT_UNSPEC`, what every program here returns.
const PASS_THROUGH: i32 = -1;

#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Runs per timed call in the steady method.
    pub repeat: u32,
    /// Distinct requests per round in the fresh method.
    pub keys: usize,
    /// Rounds (each with the programs loaded afresh): one steady repetition of every item
    /// and one fresh round of every exchange each.
    pub rounds: usize,
}

/// One kind's cost by one method: the real program, the reference, their ratio.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KindCost {
    /// `syn`, `dns_response_v6`, …
    pub kind: String,
    /// `request` or `answer`.
    pub role: String,
    pub real_ns: Figure,
    pub reference_ns: Figure,
    /// real / reference per repetition (fresh: with the timer overhead taken off both).
    pub ratio: Figure,
    /// Fresh only: the plain ratio of the single-run timings, overhead left in.
    pub raw_ratio: Option<Figure>,
    /// Fresh only: (real − floor) / (reference − floor), the programs' own work alone.
    pub over_floor_ratio: Option<Figure>,
    /// Fresh answers only: `bench_match_timed` (the minimal matcher plus the clock read a
    /// latency needs) on the same requests, and real / it, overhead off both as in `ratio`.
    #[serde(default)]
    pub timed_reference_ns: Option<Figure>,
    #[serde(default)]
    pub timed_ratio: Option<Figure>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProgramResults {
    pub repeat: u32,
    pub reps: usize,
    pub keys: usize,
    pub rounds: usize,
    /// `bench_floor` on the bulk TCP data packet.
    pub floor_ns: Figure,
    pub egress_data_ns: Figure,
    pub ingress_data_ns: Figure,
    pub untracked_ns_over_floor: Figure,
    pub ingress_untracked_ns_over_floor: Figure,
    /// Egress on a UDP datagram that is not DNS, to a port nothing watches, minus the floor:
    /// the UDP common path (one array index per port).
    #[serde(default)]
    pub udp_unwatched_ns_over_floor: Option<Figure>,
    /// Egress on a datagram to a watched `--udp-port` service, minus the floor. Steady: the
    /// same datagram repeated, so every run after the first is a retransmit of its flow.
    #[serde(default)]
    pub udp_watched_ns_over_floor: Option<Figure>,
    /// The L3 classifiers (devices without a link-layer header: tun, `WireGuard`) on the
    /// bulk TCP data packet as such a device carries it (the IP packet alone), minus the
    /// floor: their common path. Egress, then ingress.
    #[serde(default)]
    pub l3_untracked_ns_over_floor: Option<Figure>,
    #[serde(default)]
    pub l3_ingress_untracked_ns_over_floor: Option<Figure>,
    /// One packet repeated (see the module docs).
    pub steady: Vec<KindCost>,
    /// Distinct requests, each once (see the module docs).
    pub fresh: Vec<KindCost>,
    /// The floor run once minus the floor run in a loop, per round.
    pub timer_overhead_ns: Figure,
    /// Instructions the verifier processed, per program.
    pub verifier_insns: BTreeMap<String, u32>,
}

impl ProgramResults {
    /// The worst (highest median ratio) kind of `role` by the fresh method.
    #[must_use]
    pub fn worst_fresh(&self, role: &str) -> Option<&KindCost> {
        worst(&self.fresh, role, |c| Some(c.ratio))
    }

    /// The worst fresh answer over the timed matcher (`KindCost::timed_ratio`), which may
    /// be another kind than the worst over the contract's matcher.
    #[must_use]
    pub fn worst_fresh_timed_answer(&self) -> Option<Figure> {
        worst(&self.fresh, "answer", |c| c.timed_ratio).and_then(|c| c.timed_ratio)
    }
}

/// The kind of `role` whose `ratio` has the highest median (kinds without one left out).
fn worst<'a>(
    costs: &'a [KindCost],
    role: &str,
    ratio: impl Fn(&KindCost) -> Option<Figure>,
) -> Option<&'a KindCost> {
    costs
        .iter()
        .filter(|c| c.role == role)
        .filter_map(|c| ratio(c).map(|r| (c, r)))
        .max_by(|(_, a), (_, b)| a.median.total_cmp(&b.median))
        .map(|(c, _)| c)
}

/// The loaded programs: a fresh netwatch probe and the reference object.
struct Programs {
    probe: Probe,
    reference: Ebpf,
}

impl Programs {
    fn load() -> anyhow::Result<Self> {
        // A timeout far beyond the run: every answer here is in time.
        let mut probe = Probe::load_with(Duration::from_hours(1), Classifiers::ALL)
            .context("loading netwatch's programs")?;
        probe
            .watch_udp_ports(&[packets::WATCHED_UDP_PORT])
            .context("watching the benchmark's UDP port")?;
        let mut reference = Ebpf::load(BENCH_OBJECT).context("loading the reference programs")?;
        for name in [FLOOR, TRACK, MATCH, MATCH_TIMED] {
            let program: &mut SchedClassifier = reference
                .program_mut(name)
                .with_context(|| format!("{name} missing from the reference object"))?
                .try_into()?;
            program.load().with_context(|| format!("loading {name}"))?;
        }
        Ok(Self { probe, reference })
    }

    fn reference(&self, name: &str) -> anyhow::Result<&SchedClassifier> {
        Ok(self
            .reference
            .program(name)
            .with_context(|| format!("{name} missing"))?
            .try_into()?)
    }

    /// Nanoseconds per run of `which` on `frame`, run `repeat` times in the kernel.
    fn time(&mut self, which: Which, frame: &[u8], repeat: u32) -> anyhow::Result<f64> {
        let options = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        };
        let result = match which {
            Which::Egress => self.probe.classifier(EGRESS_PROGRAM)?.test_run(options)?,
            Which::Ingress => self.probe.classifier(INGRESS_PROGRAM)?.test_run(options)?,
            Which::L3Egress => self
                .probe
                .classifier(L3_EGRESS_PROGRAM)?
                .test_run(options)?,
            Which::L3Ingress => self
                .probe
                .classifier(L3_INGRESS_PROGRAM)?
                .test_run(options)?,
            Which::Floor => self.reference(FLOOR)?.test_run(options)?,
            Which::Track => self.reference(TRACK)?.test_run(options)?,
            Which::Match => self.reference(MATCH)?.test_run(options)?,
            Which::MatchTimed => self.reference(MATCH_TIMED)?.test_run(options)?,
        };
        ensure!(
            result.return_value.cast_signed() == PASS_THROUGH,
            "{which:?} returned {} instead of passing the packet on",
            result.return_value.cast_signed()
        );
        #[expect(
            clippy::cast_precision_loss,
            reason = "nanoseconds per run, far below 2^52"
        )]
        Ok(result.duration.as_nanos() as f64)
    }

    /// Empties the real pending table (tombstones of rejections stay otherwise).
    fn clear_pending(&mut self) -> anyhow::Result<()> {
        for (key, _) in self.probe.read_pending()? {
            self.probe.remove_pending(&key)?;
        }
        Ok(())
    }

    fn pending_len(&mut self) -> anyhow::Result<usize> {
        Ok(self.probe.read_pending()?.len())
    }

    fn reference_len(&self) -> anyhow::Result<usize> {
        let map = self
            .reference
            .map(REFERENCE_MAP)
            .context("REFERENCE map missing")?;
        let map: BpfHashMap<_, RequestKey, PendingRequest> = BpfHashMap::try_from(map)?;
        Ok(map.keys().count())
    }

    fn clear_reference(&mut self) -> anyhow::Result<()> {
        let map = self
            .reference
            .map_mut(REFERENCE_MAP)
            .context("REFERENCE map missing")?;
        let mut map: BpfHashMap<_, RequestKey, PendingRequest> = BpfHashMap::try_from(map)?;
        let keys: Vec<RequestKey> = map.keys().collect::<Result<_, _>>()?;
        for key in keys {
            map.remove(&key)?;
        }
        Ok(())
    }

    /// Answers plus rejections counted over every target so far.
    fn settled(&mut self) -> anyhow::Result<u64> {
        let mut total = 0;
        self.probe
            .read_targets(&mut |_, counters| total += counters.answered + counters.rejected)?;
        Ok(total)
    }

    fn verifier_insns(&mut self) -> anyhow::Result<BTreeMap<String, u32>> {
        let mut counts = BTreeMap::new();
        for name in [
            EGRESS_PROGRAM,
            INGRESS_PROGRAM,
            L3_EGRESS_PROGRAM,
            L3_INGRESS_PROGRAM,
        ] {
            let info = self.probe.classifier(name)?.info()?;
            let count = info.verified_instruction_count().with_context(|| {
                format!("the kernel did not report {name}'s verified instructions")
            })?;
            counts.insert(name.to_owned(), count);
        }
        Ok(counts)
    }
}

#[derive(Clone, Copy, Debug)]
enum Which {
    Egress,
    Ingress,
    L3Egress,
    L3Ingress,
    Floor,
    Track,
    Match,
    MatchTimed,
}

/// Runs both methods and reads the verifier's counts.
pub fn run(plan: &Plan, progress: &dyn Fn(&str)) -> anyhow::Result<ProgramResults> {
    ensure!(
        plan.keys <= packets::MAX_KEYS,
        "at most {} keys per round",
        packets::MAX_KEYS
    );
    ensure!(plan.rounds > 0 && plan.keys > 0, "nothing to measure");
    progress(&format!(
        "{} rounds, each with the programs loaded afresh: steady (one packet × {} runs per item), \
         then fresh ({} distinct requests per exchange, each run once)",
        plan.rounds, plan.repeat, plan.keys
    ));
    let mut steady = Steady::new();
    let mut fresh = Fresh::new();
    let mut verifier_insns = None;
    for round in 0..plan.rounds {
        // A fresh load each round: new maps (new hash seeds, new element layout) and newly
        // JIT-compiled code, so the figures do not hang on one load's luck.
        let mut programs = Programs::load()?;
        if verifier_insns.is_none() {
            verifier_insns = Some(programs.verifier_insns()?);
        }
        warm_up(&mut programs)?;
        steady.round(&mut programs, plan, round)?;
        programs.clear_pending()?;
        programs.clear_reference()?;
        fresh.round(&mut programs, plan, round)?;
        progress(&format!(
            "programs: round {}/{} done",
            round + 1,
            plan.rounds
        ));
    }
    let (fresh, timer_overhead) = fresh.finish()?;
    let steady = steady.finish()?;
    Ok(ProgramResults {
        repeat: plan.repeat,
        reps: plan.rounds,
        keys: plan.keys,
        rounds: plan.rounds,
        floor_ns: figure(&steady.floor, "floor")?,
        egress_data_ns: figure(&steady.egress_data, "egress on data")?,
        ingress_data_ns: figure(&steady.ingress_data, "ingress on data")?,
        untracked_ns_over_floor: figure(
            &stats::paired_differences(&steady.egress_data, &steady.floor),
            "egress over floor",
        )?,
        ingress_untracked_ns_over_floor: figure(
            &stats::paired_differences(&steady.ingress_data, &steady.floor),
            "ingress over floor",
        )?,
        udp_unwatched_ns_over_floor: Some(figure(
            &stats::paired_differences(&steady.udp_unwatched, &steady.floor),
            "UDP not watched over floor",
        )?),
        udp_watched_ns_over_floor: Some(figure(
            &stats::paired_differences(&steady.udp_watched, &steady.floor),
            "UDP watched over floor",
        )?),
        l3_untracked_ns_over_floor: Some(figure(
            &stats::paired_differences(&steady.l3_egress_data, &steady.floor),
            "L3 egress over floor",
        )?),
        l3_ingress_untracked_ns_over_floor: Some(figure(
            &stats::paired_differences(&steady.l3_ingress_data, &steady.floor),
            "L3 ingress over floor",
        )?),
        steady: steady.kinds,
        fresh,
        timer_overhead_ns: figure(&timer_overhead, "timer overhead")?,
        verifier_insns: verifier_insns.unwrap_or_default(),
    })
}

fn figure(samples: &[f64], what: &str) -> anyhow::Result<Figure> {
    Figure::of(samples).with_context(|| format!("no usable samples for {what}"))
}

/// Every exchange once, so each target has its slot and each code path was run before any
/// timing (first runs pay for cold caches and slot allocation).
fn warm_up(programs: &mut Programs) -> anyhow::Result<()> {
    let data_out = packets::bulk_tcp_data(true);
    for _ in 0..3 {
        for exchange in Exchange::ALL {
            let (request, answer) = (exchange.request(0), exchange.answer(0));
            programs.time(Which::Egress, &request, 1)?;
            programs.time(Which::Ingress, &answer, 1)?;
            programs.time(Which::Track, &request, 1)?;
            programs.time(Which::Match, &request, 1)?;
        }
        programs.time(Which::Floor, &data_out, 1_000)?;
        programs.time(Which::Egress, &data_out, 1_000)?;
        programs.clear_pending()?;
    }
    Ok(())
}

/// The steady method's items and their samples, one per round.
struct Steady {
    /// Items 0..3 are the floor and the untracked data path; then per kind, real then
    /// reference, so each pair sits side by side.
    items: Vec<Item>,
    labels: Vec<(String, &'static str)>,
}

/// What the steady method found.
struct SteadyResults {
    floor: Vec<f64>,
    egress_data: Vec<f64>,
    ingress_data: Vec<f64>,
    udp_unwatched: Vec<f64>,
    udp_watched: Vec<f64>,
    l3_egress_data: Vec<f64>,
    l3_ingress_data: Vec<f64>,
    kinds: Vec<KindCost>,
}

/// Items of the steady method before the exchanges' pairs: the floor, egress and ingress on
/// TCP data, egress on UDP to a port not watched and to a watched one, the L3 classifiers'
/// egress and ingress on TCP data without a link-layer header.
const LEADING_ITEMS: usize = 7;

/// One timed item of the steady method, and its samples.
struct Item {
    which: Which,
    frame: Vec<u8>,
    /// Runs once before each timed call: makes the entry an answer needs.
    seed: Option<(Which, Vec<u8>)>,
    samples: Vec<f64>,
}

impl Item {
    fn new(which: Which, frame: Vec<u8>, seed: Option<(Which, Vec<u8>)>) -> Self {
        Self {
            which,
            frame,
            seed,
            samples: Vec::new(),
        }
    }
}

impl Steady {
    fn new() -> Self {
        let mut items = vec![
            Item::new(Which::Floor, packets::bulk_tcp_data(true), None),
            Item::new(Which::Egress, packets::bulk_tcp_data(true), None),
            Item::new(Which::Ingress, packets::bulk_tcp_data(false), None),
            Item::new(
                Which::Egress,
                packets::udp_datagram(packets::UNWATCHED_UDP_PORT),
                None,
            ),
            Item::new(
                Which::Egress,
                packets::udp_datagram(packets::WATCHED_UDP_PORT),
                None,
            ),
            Item::new(Which::L3Egress, packets::bulk_tcp_data_l3(true), None),
            Item::new(Which::L3Ingress, packets::bulk_tcp_data_l3(false), None),
        ];
        let mut labels = Vec::new();
        for (number, exchange) in Exchange::ALL.into_iter().enumerate() {
            // A request number per exchange: a rejection's tombstone must not sit on the key
            // another exchange's answer looks up.
            let (request, answer) = (exchange.request(number + 1), exchange.answer(number + 1));
            if exchange.reports_request() {
                labels.push((exchange.request_name(), "request"));
                items.push(Item::new(Which::Egress, request.clone(), None));
                items.push(Item::new(Which::Track, request.clone(), None));
            }
            labels.push((exchange.answer_name(), "answer"));
            items.push(Item::new(
                Which::Ingress,
                answer,
                Some((Which::Egress, request.clone())),
            ));
            items.push(Item::new(
                Which::Match,
                request.clone(),
                Some((Which::Track, request)),
            ));
        }
        Self { items, labels }
    }

    /// One repetition of every item.
    fn round(&mut self, programs: &mut Programs, plan: &Plan, round: usize) -> anyhow::Result<()> {
        // Rotate the order each round: no item always runs right after another.
        let count = self.items.len();
        for k in 0..count {
            let item = &mut self.items[(k + round * 7) % count];
            if let Some((which, frame)) = &item.seed {
                programs.time(*which, frame, 1)?;
            }
            let ns = programs.time(item.which, &item.frame, plan.repeat)?;
            item.samples.push(ns);
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<SteadyResults> {
        let mut kinds = Vec::new();
        for (index, (kind, role)) in self.labels.into_iter().enumerate() {
            let real = &self.items[LEADING_ITEMS + 2 * index].samples;
            let reference = &self.items[LEADING_ITEMS + 1 + 2 * index].samples;
            kinds.push(KindCost {
                kind,
                role: role.to_owned(),
                real_ns: figure(real, "real")?,
                reference_ns: figure(reference, "reference")?,
                ratio: figure(&stats::paired_ratios(real, reference), "ratio")?,
                raw_ratio: None,
                over_floor_ratio: None,
                timed_reference_ns: None,
                timed_ratio: None,
            });
        }
        let mut items = self.items.into_iter();
        let mut next = || items.next().map(|item| item.samples).unwrap_or_default();
        Ok(SteadyResults {
            floor: next(),
            egress_data: next(),
            ingress_data: next(),
            udp_unwatched: next(),
            udp_watched: next(),
            l3_egress_data: next(),
            l3_ingress_data: next(),
            kinds,
        })
    }
}

/// Per-round trimmed means of one exchange in the fresh method.
#[derive(Default)]
struct Rounds {
    request: Vec<f64>,
    answer: Vec<f64>,
    track: Vec<f64>,
    matched: Vec<f64>,
    matched_timed: Vec<f64>,
    floor: Vec<f64>,
    /// The floor run once minus the floor in a loop, this round.
    overhead: Vec<f64>,
}

/// The fresh method's per-round figures for every exchange.
struct Fresh {
    rounds: Vec<Rounds>,
    overheads: Vec<f64>,
}

impl Fresh {
    fn new() -> Self {
        Self {
            rounds: Exchange::ALL.iter().map(|_| Rounds::default()).collect(),
            overheads: Vec::new(),
        }
    }

    /// One round: every exchange over `plan.keys` distinct requests.
    fn round(&mut self, programs: &mut Programs, plan: &Plan, round: usize) -> anyhow::Result<()> {
        let looped_floor =
            programs.time(Which::Floor, &packets::bulk_tcp_data(true), plan.repeat)?;
        for offset in 0..Exchange::ALL.len() {
            let index = (offset + round) % Exchange::ALL.len();
            let measured = fresh_round(programs, Exchange::ALL[index], plan.keys, round)?;
            let into = &mut self.rounds[index];
            let trimmed = |samples: &[f64]| stats::trimmed_mean(samples, TRIM).unwrap_or(f64::NAN);
            let floor_once = trimmed(&measured.floor);
            into.request.push(trimmed(&measured.request));
            into.answer.push(trimmed(&measured.answer));
            into.track.push(trimmed(&measured.track));
            into.matched.push(trimmed(&measured.matched));
            into.matched_timed.push(trimmed(&measured.matched_timed));
            into.floor.push(floor_once);
            into.overhead.push(floor_once - looped_floor);
            self.overheads.push(floor_once - looped_floor);
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<(Vec<KindCost>, Vec<f64>)> {
        let mut kinds = Vec::new();
        for (exchange, r) in Exchange::ALL.iter().zip(&self.rounds) {
            if exchange.reports_request() {
                kinds.push(fresh_cost(
                    exchange.request_name(),
                    "request",
                    &r.request,
                    &r.track,
                    None,
                    r,
                )?);
            }
            kinds.push(fresh_cost(
                exchange.answer_name(),
                "answer",
                &r.answer,
                &r.matched,
                Some(&r.matched_timed),
                r,
            )?);
        }
        Ok((kinds, self.overheads))
    }
}

fn fresh_cost(
    kind: String,
    role: &str,
    real: &[f64],
    reference: &[f64],
    timed_reference: Option<&[f64]>,
    r: &Rounds,
) -> anyhow::Result<KindCost> {
    let less = |values: &[f64], by: &[f64]| stats::paired_differences(values, by);
    let (timed_reference_ns, timed_ratio) = match timed_reference {
        Some(timed) => (
            Some(figure(timed, "timed reference")?),
            Some(figure(
                &stats::paired_ratios(&less(real, &r.overhead), &less(timed, &r.overhead)),
                "ratio to the timed reference",
            )?),
        ),
        None => (None, None),
    };
    Ok(KindCost {
        kind,
        role: role.to_owned(),
        real_ns: figure(real, "real")?,
        reference_ns: figure(reference, "reference")?,
        ratio: figure(
            &stats::paired_ratios(&less(real, &r.overhead), &less(reference, &r.overhead)),
            "ratio",
        )?,
        raw_ratio: Some(figure(&stats::paired_ratios(real, reference), "raw ratio")?),
        over_floor_ratio: Some(figure(
            &stats::paired_ratios(&less(real, &r.floor), &less(reference, &r.floor)),
            "ratio over floor",
        )?),
        timed_reference_ns,
        timed_ratio,
    })
}

/// Single-run timings of one exchange over `keys` distinct requests.
#[derive(Default)]
struct Measured {
    request: Vec<f64>,
    answer: Vec<f64>,
    track: Vec<f64>,
    matched: Vec<f64>,
    matched_timed: Vec<f64>,
    floor: Vec<f64>,
}

fn fresh_round(
    programs: &mut Programs,
    exchange: Exchange,
    keys: usize,
    round: usize,
) -> anyhow::Result<Measured> {
    programs.clear_pending()?;
    programs.clear_reference()?;
    let frames: Vec<(Vec<u8>, Vec<u8>)> = (0..keys)
        .map(|i| (exchange.request(i), exchange.answer(i)))
        .collect();
    let settled_before = programs.settled()?;
    let mut m = Measured::default();
    for (i, (request, answer)) in frames.iter().enumerate() {
        // Alternate which of the real and the reference pair goes first.
        if (i + round).is_multiple_of(2) {
            m.request.push(programs.time(Which::Egress, request, 1)?);
            m.answer.push(programs.time(Which::Ingress, answer, 1)?);
            m.track.push(programs.time(Which::Track, request, 1)?);
            m.matched.push(programs.time(Which::Match, request, 1)?);
        } else {
            m.track.push(programs.time(Which::Track, request, 1)?);
            m.matched.push(programs.time(Which::Match, request, 1)?);
            m.request.push(programs.time(Which::Egress, request, 1)?);
            m.answer.push(programs.time(Which::Ingress, answer, 1)?);
        }
        m.floor.push(programs.time(Which::Floor, request, 1)?);
    }
    // The timed matcher on the same requests, tracked again (those runs are no figure), in a
    // pass of its own after the contract's pairs, which it leaves as they were before it
    // existed (with and without this pass, two runs each: tracked_request_ratio 1.24 and
    // 1.20 with it, 1.24 and 1.24 without).
    for (request, _) in &frames {
        programs.time(Which::Track, request, 1)?;
        m.matched_timed
            .push(programs.time(Which::MatchTimed, request, 1)?);
    }
    // Every request was new and every answer matched it: otherwise this timed other paths.
    let settled = programs.settled()? - settled_before;
    if settled != keys as u64 {
        bail!(
            "{} → {}: {settled} of {keys} requests were settled by their answers",
            exchange.request_name(),
            exchange.answer_name()
        );
    }
    let left = programs.reference_len()?;
    ensure!(
        left == 0,
        "the reference matcher left {left} of {keys} entries"
    );
    let pending = programs.pending_len()?;
    let rejection = matches!(
        exchange.answer,
        packets::Answer::PortUnreachable | packets::Answer::Prohibited
    );
    let expected = if rejection { keys } else { 0 };
    ensure!(
        pending == expected,
        "{}: {pending} pending entries left, {expected} expected",
        exchange.answer_name()
    );
    Ok(m)
}

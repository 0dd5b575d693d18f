//! The local drop program (`skb:kfree_skb`) in a drop storm. The client's own output chain
//! drops every copy of one DNS query sent again and again (one watched request, each copy a
//! watched drop: the program's whole path, from reading the skb to counting it under its
//! target), then UDP to a port nothing watches (drops the program reads and lets go). The
//! kernel times every run of the program while the statistics are on (`BPF_ENABLE_STATS`):
//! its cost per drop is the run time over the run count, read from the program's info
//! before and after each storm. netwatch's `local_drops` must equal the copies sent.
//!
//! The kernel's timing brackets the program with two clock reads: the figure includes part
//! of one (a few ns), so it errs on the high side.
//!
//! The reference programs (`netwatch-ebpf`'s bench object) then run the same two storms, each
//! alone on the tracepoint and netwatch stopped, timed alike: the empty program (the
//! tracepoint's floor), the headers read (floor plus one header read: what a drop the program
//! lets go may cost at most) and the minimal counter (the headers read and one hash add: a
//! watched drop may cost 1.5 times it). Alone, because the first program on a drop reads it
//! cold and the others warm (see [`run`]).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use aya::{EbpfLoader, programs::RawTracePoint};
use netwatch_common::{DROP_TRACEPOINT, DropConfig};
use netwatch_tests::lab::{DNS2_V4, Lab};
use serde::{Deserialize, Serialize};

use crate::{
    BENCH_OBJECT,
    labkit::{self, BenchLab, Tools},
    procfs::CpuTimes,
};

/// The reference programs on `skb:kfree_skb`, cheapest first.
pub const REFERENCES: [&str; 3] = [DROP_FLOOR, DROP_HEADERS, DROP_COUNTER];
/// The empty program: the tracepoint's own cost per drop.
pub const DROP_FLOOR: &str = "bench_drop_floor";
/// The floor plus one header read.
pub const DROP_HEADERS: &str = "bench_drop_headers";
/// The headers read and one hash add.
pub const DROP_COUNTER: &str = "bench_drop_counter";
/// The global telling the references where the `sk_buff` fields are.
const REFERENCE_OFFSETS: &str = "BENCH_SKB";
/// Bytes of `sk_buff` the references read (`SKB_READ` in the bench object).
const REFERENCE_WINDOW: u32 = 32;

/// The drop program's name as the kernel keeps it (`netwatch-ebpf`'s `netwatch_drops`).
const PROGRAM: &str = "netwatch_drops";
/// A port no netwatch watches: its drops are read and let go.
const UNWATCHED_PORT: u16 = 9;

/// This host's firewall in the storm: the output chain drops the watched query and the
/// unwatched datagrams alike.
fn output_chain() -> String {
    format!(
        "table inet bench_host {{\n  chain output {{\n    type filter hook output priority 0; policy accept;\n    \
         ip daddr {DNS2_V4} udp dport {{ 53, {UNWATCHED_PORT} }} drop\n  }}\n}}\n"
    )
}

/// A reference program's cost in a storm.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReferenceCost {
    /// `bench_drop_floor`, …
    pub program: String,
    pub runs: u64,
    pub ns_per_run: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DropStorm {
    /// Packets the sender made (each dropped by the output chain).
    pub sent: u64,
    pub seconds: f64,
    /// Runs of the drop program during the storm (every drop on the host).
    pub runs: u64,
    /// The kernel's run time of the drop program over `runs`.
    pub ns_per_run: f64,
    /// The reference programs on the same drops ([`REFERENCES`]); empty in reports made
    /// before they existed.
    #[serde(default)]
    pub references: Vec<ReferenceCost>,
    /// The drop program's run time over the storm's wall time, % of one core.
    pub program_cpu_pct: f64,
    /// netwatch's process (user + system), % of one core, during the storm.
    pub netwatch_cpu_pct: f64,
}

impl DropStorm {
    #[must_use]
    pub fn per_second(&self) -> f64 {
        labkit::per_second(self.sent, self.seconds)
    }

    /// The cost per run of reference `program` in this storm.
    #[must_use]
    pub fn reference_ns(&self, program: &str) -> Option<f64> {
        self.references
            .iter()
            .find(|r| r.program == program)
            .map(|r| r.ns_per_run)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DropResults {
    /// Copies of one watched DNS query, each dropped here.
    pub watched: DropStorm,
    /// The target's `local_drops` at the end: `{"NETFILTER_DROP": N}`.
    pub local_drops: serde_json::Value,
    /// `local_drops` holds exactly the copies sent, and the target one request.
    pub count_exact: bool,
    /// UDP datagrams to a port nothing watches, each dropped here.
    pub unwatched: DropStorm,
}

/// The cumulative (run time, run count) of the drop program netwatch (`pid`) loaded, from
/// the kernel. Other netwatch processes' drop programs are not it.
fn program_stats(pid: u32) -> anyhow::Result<(Duration, u64)> {
    let ids = labkit::program_ids_of(pid)?;
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing the loaded BPF programs")?;
        if info.name_as_str() == Some(PROGRAM) && ids.contains(&info.id()) {
            return Ok((info.run_time(), info.run_count()));
        }
    }
    bail!("netwatch (pid {pid}) holds no {PROGRAM} program: it did not load its drop program")
}

/// A reference program, loaded and attached alone to `skb:kfree_skb` for as long as this lives.
pub struct Reference {
    object: aya::Ebpf,
    name: &'static str,
}

impl Reference {
    /// Loads and attaches reference `name` (of [`REFERENCES`]), told where the `sk_buff`
    /// fields are from the running kernel's BTF (netwatch's own reading of it).
    pub fn attach(name: &'static str) -> anyhow::Result<Self> {
        let layout = netwatch::btf::read_and_parse();
        let (config, _) = layout
            .drops
            .map_err(|why| anyhow::anyhow!("no drop program on this kernel: {why}"))?;
        let offsets = reference_offsets(&config)?;
        let mut object = EbpfLoader::new()
            .override_global(REFERENCE_OFFSETS, &offsets, true)
            .load(BENCH_OBJECT)
            .context("loading the reference programs")?;
        labkit::attach_reference(&mut object, name, DROP_TRACEPOINT)?;
        Ok(Self { object, name })
    }

    /// The cumulative (run time, run count).
    fn stats(&self) -> anyhow::Result<(Duration, u64)> {
        let program: &RawTracePoint = self
            .object
            .program(self.name)
            .with_context(|| format!("{} missing", self.name))?
            .try_into()?;
        let info = program.info()?;
        Ok((info.run_time(), info.run_count()))
    }

    /// Its cost per drop in `storm`.
    fn timed(
        &self,
        storm: impl FnOnce() -> anyhow::Result<labkit::Generated>,
    ) -> anyhow::Result<ReferenceCost> {
        let before = self.stats()?;
        let generated = storm()?;
        let (runs, ns_per_run) = per_run(before, self.stats()?);
        ensure!(
            runs >= generated.sent,
            "{} ran {runs} times for {} drops: the kernel's statistics are off",
            self.name,
            generated.sent
        );
        Ok(ReferenceCost {
            program: self.name.to_owned(),
            runs,
            ns_per_run,
        })
    }
}

/// The references' window over `protocol`, `network_header` and `head` (the smallest that
/// holds them) and their offsets within it, from netwatch's configuration (whose window
/// holds more fields).
fn reference_offsets(config: &DropConfig) -> anyhow::Result<[u32; 4]> {
    let absolute =
        [config.protocol, config.network_header, config.head].map(|at| config.skb_window + at);
    let start = absolute.iter().copied().min().unwrap_or(0);
    let [protocol, network_header, head] = absolute.map(|at| at - start);
    ensure!(
        head + 8 <= REFERENCE_WINDOW
            && protocol + 2 <= REFERENCE_WINDOW
            && network_header + 2 <= REFERENCE_WINDOW,
        "the sk_buff's protocol, network_header and head span more than {REFERENCE_WINDOW} bytes"
    );
    Ok([start, protocol, network_header, head])
}

/// ns per run from cumulative (run time, run count) before and after.
fn per_run(before: (Duration, u64), after: (Duration, u64)) -> (u64, f64) {
    let runs = after.1.saturating_sub(before.1);
    let ns = after.0.saturating_sub(before.0).as_secs_f64() * 1e9;
    #[expect(clippy::cast_precision_loss, reason = "run counts far below 2^52")]
    let per_run = if runs == 0 { 0.0 } else { ns / runs as f64 };
    (runs, per_run)
}

/// Runs `storm` and times the drop program and netwatch meanwhile.
fn timed(
    pid: u32,
    storm: impl FnOnce() -> anyhow::Result<labkit::Generated>,
) -> anyhow::Result<DropStorm> {
    let (time_before, runs_before) = program_stats(pid)?;
    let cpu_before = CpuTimes::of(pid).context("netwatch's CPU times")?;
    let started = Instant::now();
    let generated = storm()?;
    let wall = started.elapsed();
    let cpu_after = CpuTimes::of(pid).context("netwatch's CPU times")?;
    let (time_after, runs_after) = program_stats(pid)?;
    let runs = runs_after - runs_before;
    ensure!(
        runs >= generated.sent,
        "the drop program ran {runs} times for {} drops: the kernel's statistics are off",
        generated.sent
    );
    let run_ns = time_after.saturating_sub(time_before).as_secs_f64() * 1e9;
    #[expect(clippy::cast_precision_loss, reason = "run counts far below 2^52")]
    let ns_per_run = run_ns / runs as f64;
    let (user, system) = cpu_after.percent_since(&cpu_before, wall);
    Ok(DropStorm {
        sent: generated.sent,
        seconds: generated.seconds,
        runs,
        ns_per_run,
        references: Vec::new(),
        program_cpu_pct: run_ns / (wall.as_secs_f64() * 1e9) * 100.0,
        netwatch_cpu_pct: user + system,
    })
}

pub fn run(tools: &Tools, drops: u64, progress: &dyn Fn(&str)) -> anyhow::Result<DropResults> {
    let lab = BenchLab::new()?;
    Lab::nft_in(&lab.lab.client, &output_chain());
    let bench = lab.sender(tools);
    // Held for the section: the kernel times every program run while this is open.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling the kernel's BPF run-time statistics (BPF_ENABLE_STATS, 5.8+)")?;
    let watched_storm = || bench.generate("dns-same", &format!("{DNS2_V4}:53"), 120.0, Some(drops));
    // A timeout longer than the storm: the query stays pending throughout, so every copy
    // after the first is the same request dropped again.
    let netwatch = bench.start_netwatch_with(&["--timeout", "120s"]);
    let pid = netwatch.pid();

    progress(&format!(
        "drops: {drops} copies of one DNS query to {DNS2_V4}:53, dropped by this host's output chain"
    ));
    let mut watched = timed(pid, watched_storm)?;
    ensure!(
        watched.sent == drops,
        "the sender made {} of {drops} copies in 120 s",
        watched.sent
    );
    let seconds = watched.seconds;
    let unwatched_storm =
        || bench.generate("udp", &format!("{DNS2_V4}:{UNWATCHED_PORT}"), seconds, None);
    progress(&format!(
        "drops: UDP to unwatched port {UNWATCHED_PORT} for {seconds:.1} s, dropped alike"
    ));
    let mut unwatched = timed(pid, unwatched_storm)?;

    let finished = labkit::stop_netwatch(netwatch)?;
    let targets = finished.targets();
    let record = targets
        .get(&("udp".to_owned(), DNS2_V4.to_owned(), Some(53)))
        .with_context(|| format!("netwatch reported no target {DNS2_V4}:53"))?;
    let local_drops = record["local_drops"].clone();
    let count_exact =
        local_drops == serde_json::json!({ "NETFILTER_DROP": drops }) && record["requests"] == 1;
    ensure!(
        targets
            .keys()
            .all(|(_, _, port)| *port != Some(UNWATCHED_PORT.into())),
        "netwatch made a target of the unwatched port {UNWATCHED_PORT}"
    );

    // Each reference alone on the tracepoint, netwatch stopped, on the same two storms. The
    // first program a drop runs reads its `sk_buff` and headers cold; those after it find them
    // in the cache. Side by side, the order of attachment chose who paid: netwatch, attached
    // first, did (on an AMD EPYC, 240 ns per drop let go as the first program, 195 ns as the
    // last; the minimal counter 195 ns after it, 258 ns before it). Alone, each pays what it
    // would on a host.
    for name in REFERENCES {
        progress(&format!("drops: the same two storms under {name} alone"));
        let reference = Reference::attach(name)?;
        watched.references.push(reference.timed(watched_storm)?);
        unwatched.references.push(reference.timed(unwatched_storm)?);
    }
    Ok(DropResults {
        watched,
        local_drops,
        count_exact,
        unwatched,
    })
}

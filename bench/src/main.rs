//! `netwatch-bench`: netwatch's benchmark suite. Run through `cargo xtask bench [--quick]`,
//! which builds what it needs and runs it as root; it writes `report.json` and `report.md`
//! into `--out` and, with `--write-benchmarks-md`, BENCHMARKS.md from the same report.
//!
//! Sections: `programs` (`BPF_PROG_TEST_RUN` against reference programs, verifier counts),
//! `rates` (64-byte UDP packet rates across a veth pair: none / netwatch / tcpdump, and DNS
//! floods), `storm` (a request storm through the lab: counts, CPU, memory), `drops` (the
//! local drop program's cost per drop in a drop storm), `retransmits` (the retransmission
//! program's cost per retransmission beside its references), `latency` (detection latency of
//! blackholed targets), `connects` (`connect()` rate with and without the socket owner
//! programs) and `startup` (netwatch's time from the command to watching). Benchmarks are
//! not tests: a missed goal is reported, not an error; the exit status is 1 only when a
//! section could not run.

mod baseline;
mod connects;
mod drops;
mod goals;
mod labkit;
mod latency;
mod markdown;
mod packets;
mod procfs;
mod programs;
mod rates;
mod report;
mod retransmits;
mod startup;
mod stats;
mod storm;

use std::{
    collections::BTreeMap,
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};

use crate::{labkit::Tools, report::Report};

/// The reference programs (`bench_floor`, `bench_track`, `bench_match`), built by build.rs
/// with the compiler that builds netwatch's own: compared with them, the figures measure
/// netwatch's code, not a compiler's.
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netwatch-bench"));

#[derive(Parser)]
#[command(
    name = "netwatch-bench",
    about = "netwatch's benchmarks; run them with `cargo xtask bench [--quick]`."
)]
struct Args {
    /// Fewer repetitions and shorter runs: finishes within two minutes.
    #[arg(long, conflicts_with = "smoke")]
    quick: bool,
    /// Only check that every section still runs (seconds; the figures mean nothing).
    #[arg(long)]
    smoke: bool,
    /// The netwatch binary to measure (a release build).
    #[arg(long, required_unless_present = "from_report")]
    netwatch: Option<PathBuf>,
    /// The lab's `traffic-gen` binary.
    #[arg(long, required_unless_present = "from_report")]
    traffic_gen: Option<PathBuf>,
    /// Where report.json and report.md go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Run only these sections.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Section>,
    /// Also write BENCHMARKS.md (the whole document) to this path.
    #[arg(long)]
    write_benchmarks_md: Option<PathBuf>,
    /// The previous full run's figures (`bench/baseline.json`): every table shows each figure
    /// beside it, the change marked.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Then write this run's figures there, for the next run to compare with (full runs).
    #[arg(long)]
    write_baseline: Option<PathBuf>,
    /// Measure nothing: render from this report.json.
    #[arg(long)]
    from_report: Option<PathBuf>,
    /// The commit measured (default: `git rev-parse --short HEAD`).
    #[arg(long)]
    commit: Option<String>,
    /// The compiler's version line (default: `rustc -V`).
    #[arg(long)]
    rustc: Option<String>,
    /// Do not pin the traffic generator to the last CPU, nor netwatch and tcpdump to the first.
    #[arg(long)]
    no_pin: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Section {
    Programs,
    Rates,
    Storm,
    Drops,
    Retransmits,
    Latency,
    Connects,
    Startup,
}

/// Every section's parameters.
struct Plan {
    mode: &'static str,
    programs: programs::Plan,
    rates: rates::Plan,
    storm_seconds: f64,
    /// Copies of the watched query dropped in the drop storm.
    drop_storm: u64,
    /// Seconds of lossy uploads for the retransmission program.
    retransmit_seconds: f64,
    latency_targets: usize,
    /// Rounds and seconds per condition of the `connect()` rate.
    connects: (usize, f64),
    /// netwatch's starts, each to "watching".
    startup_rounds: usize,
}

impl Plan {
    fn new(quick: bool, smoke: bool) -> Self {
        if smoke {
            Self {
                mode: "smoke",
                programs: programs::Plan {
                    repeat: 10_000,
                    keys: 500,
                    rounds: 3,
                },
                rates: rates::Plan {
                    seconds: 0.3,
                    rounds: 2,
                    tracked_rounds: 1,
                    diagnostics: true,
                },
                storm_seconds: 1.0,
                drop_storm: 20_000,
                retransmit_seconds: 1.0,
                latency_targets: 10,
                connects: (1, 0.3),
                startup_rounds: 1,
            }
        } else if quick {
            Self {
                mode: "quick",
                programs: programs::Plan {
                    repeat: 200_000,
                    keys: 5_000,
                    rounds: 7,
                },
                rates: rates::Plan {
                    seconds: 1.0,
                    rounds: 4,
                    tracked_rounds: 4,
                    diagnostics: false,
                },
                storm_seconds: 5.0,
                drop_storm: 1_000_000,
                retransmit_seconds: 5.0,
                latency_targets: 100,
                connects: (3, 1.0),
                startup_rounds: 5,
            }
        } else {
            Self {
                mode: "full",
                programs: programs::Plan {
                    repeat: 1_000_000,
                    keys: 50_000,
                    rounds: 7,
                },
                rates: rates::Plan {
                    seconds: 2.0,
                    rounds: 8,
                    tracked_rounds: 8,
                    diagnostics: true,
                },
                storm_seconds: 10.0,
                drop_storm: 2_000_000,
                retransmit_seconds: 10.0,
                latency_targets: 150,
                connects: (7, 2.0),
                startup_rounds: 9,
            }
        }
    }

    fn describe(&self) -> BTreeMap<String, String> {
        let p = &self.programs;
        let r = &self.rates;
        BTreeMap::from([
            (
                "programs".to_owned(),
                format!(
                    "{} rounds, each loading the programs afresh; steady: repeat {} per item; fresh: \
                     {} keys per exchange, trimmed mean ({} % each end) per round",
                    p.rounds,
                    p.repeat,
                    p.keys,
                    programs::TRIM * 100.0
                ),
            ),
            (
                "rates".to_owned(),
                format!(
                    "{} rounds of {} s per condition, each between two baseline runs (UDP and DNS \
                     flood), {} rounds of {} requests (DNS within capacity){}",
                    r.rounds,
                    r.seconds,
                    r.tracked_rounds,
                    rates::TRACKED_MAX,
                    if r.diagnostics {
                        ", with the diagnostic conditions"
                    } else {
                        ""
                    }
                ),
            ),
            (
                "storm".to_owned(),
                format!("{} s, netwatch --timeout 1s", self.storm_seconds),
            ),
            (
                "drops".to_owned(),
                format!(
                    "{} copies of one DNS query dropped by the client's output chain, then UDP to an \
                     unwatched port for as long; BPF_ENABLE_STATS on",
                    self.drop_storm
                ),
            ),
            (
                "retransmits".to_owned(),
                format!(
                    "4 TCP uploads for {} s through a router dropping 5 % of their segments; \
                     netwatch's program, an empty one and a minimal follower on \
                     tcp_retransmit_skb together; BPF_ENABLE_STATS on",
                    self.retransmit_seconds
                ),
            ),
            (
                "latency".to_owned(),
                format!("{} targets, netwatch --timeout 1s", self.latency_targets),
            ),
            (
                "connects".to_owned(),
                format!(
                    "{} rounds of {} s, netwatch without, then with its socket owner programs",
                    self.connects.0, self.connects.1
                ),
            ),
            (
                "startup".to_owned(),
                format!(
                    "{} starts of netwatch on the lab's client interface, each to its \
                     \"watching\" line",
                    self.startup_rounds
                ),
            ),
        ])
    }
}

fn progress(message: &str) {
    eprintln!("bench: {message}");
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default()
}

fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn meta(args: &Args, plan: &Plan) -> report::Meta {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let dirty = command_line(
        "git",
        &[
            "status",
            "--porcelain",
            "--",
            "netwatch",
            "netwatch-ebpf",
            "netwatch-common",
            "tests/src/bin/traffic-gen.rs",
        ],
    )
    .unwrap_or_default();
    report::Meta {
        mode: plan.mode.to_owned(),
        date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        commit: args
            .commit
            .clone()
            .or_else(|| command_line("git", &["rev-parse", "--short", "HEAD"]))
            .unwrap_or_else(|| "unknown".to_owned()),
        dirty: dirty.lines().map(str::to_owned).collect(),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        cpu_model: procfs::cpu_model(&read("/proc/cpuinfo"))
            .unwrap_or_else(|| "unknown".to_owned()),
        cores: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        memory_mib: procfs::kib_field(&read("/proc/meminfo"), "MemTotal:").unwrap_or(0) / 1024,
        rustc: args
            .rustc
            .clone()
            .or_else(|| command_line("rustc", &["-V"]))
            .unwrap_or_else(|| "unknown".to_owned()),
        load_before: procfs::load_now(),
        plan: plan.describe(),
        ..report::Meta::default()
    }
}

/// `kernel.bpf_stats_enabled` must be off while programs are timed: with it on, every run
/// also reads the clock twice for the kernel's own statistics.
fn disable_bpf_stats() -> anyhow::Result<Option<String>> {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let Ok(found) = std::fs::read_to_string(PATH) else {
        return Ok(None);
    };
    let found = found.trim().to_owned();
    if found != "0" {
        progress(&format!(
            "kernel.bpf_stats_enabled was {found}: setting it to 0"
        ));
        std::fs::write(PATH, "0").context("setting kernel.bpf_stats_enabled to 0")?;
    }
    Ok(Some(found))
}

/// Runs one section, turning its errors and panics (the lab helpers panic) into a line.
fn section<T>(
    name: &str,
    errors: &mut Vec<String>,
    run: impl FnOnce() -> anyhow::Result<T>,
) -> Option<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(value)) => Some(value),
        Ok(Err(err)) => {
            errors.push(format!("{name}: {err:#}"));
            None
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panic".to_owned());
            errors.push(format!(
                "{name}: {}",
                message.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
            None
        }
    }
}

fn measure(args: &Args) -> anyhow::Result<Report> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the benchmarks load eBPF programs and build network namespaces: run them as root (cargo xtask bench does)"
        );
    }
    let (Some(netwatch), Some(traffic_gen)) = (&args.netwatch, &args.traffic_gen) else {
        bail!("--netwatch and --traffic-gen are required");
    };
    for path in [netwatch, traffic_gen] {
        if !path.exists() {
            bail!("{} does not exist", path.display());
        }
    }
    let plan = Plan::new(args.quick, args.smoke);
    let mut report = Report {
        meta: meta(args, &plan),
        ..Report::default()
    };
    report.meta.bpf_stats_enabled_found = disable_bpf_stats()?;
    if report.meta.load_before[0] > 0.5 {
        progress(&format!(
            "warning: load average {:.2}: other work is running, the figures will be noisy",
            report.meta.load_before[0]
        ));
    }
    let cores = report.meta.cores;
    let tools = Tools {
        netwatch: std::path::absolute(netwatch)?,
        traffic_gen: std::path::absolute(traffic_gen)?,
        generator_cpu: (!args.no_pin && cores > 1).then(|| cores - 1),
        monitor_cpu: (!args.no_pin && cores > 1).then_some(0),
    };
    let wanted = |s: Section| args.only.is_empty() || args.only.contains(&s);
    let started = Instant::now();
    let mut errors = Vec::new();
    if wanted(Section::Programs) {
        progress("programs: BPF_PROG_TEST_RUN, real against reference");
        report.programs = section("programs", &mut errors, || {
            programs::run(&plan.programs, &progress)
        });
    }
    if wanted(Section::Rates) {
        progress("rates: 64-byte UDP across the client's veth pair");
        report.rates = section("rates", &mut errors, || {
            rates::run(&tools, &plan.rates, &progress)
        });
    }
    if wanted(Section::Storm) {
        report.storm = section("storm", &mut errors, || {
            storm::run(&tools, plan.storm_seconds, &progress)
        });
    }
    if wanted(Section::Drops) {
        report.drops = section("drops", &mut errors, || {
            drops::run(&tools, plan.drop_storm, &progress)
        });
    }
    if wanted(Section::Retransmits) {
        report.retransmits = section("retransmits", &mut errors, || {
            retransmits::run(&tools, plan.retransmit_seconds, &progress)
        });
    }
    if wanted(Section::Latency) {
        report.latency = section("latency", &mut errors, || {
            latency::run(&tools, plan.latency_targets, &progress)
        });
    }
    if wanted(Section::Connects) {
        report.connects = section("connects", &mut errors, || {
            connects::run(&tools, plan.connects.0, plan.connects.1, &progress)
        });
    }
    if wanted(Section::Startup) {
        report.startup = section("startup", &mut errors, || {
            startup::run(&tools, plan.startup_rounds, &progress)
        });
    }
    report.errors = errors;
    report.meta.duration_s = started.elapsed().as_secs_f64();
    report.meta.load_after = procfs::load_now();
    report.finish();
    Ok(report)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(report) if report.errors.is_empty() => ExitCode::SUCCESS,
        Ok(report) => {
            for error in &report.errors {
                eprintln!("netwatch-bench: section failed: {error}");
            }
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("netwatch-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<Report> {
    // Read before measuring: a baseline that does not parse is said at once, not after
    // ten minutes.
    let baseline = match &args.baseline {
        Some(path) => baseline::Baseline::read(path)?,
        None => None,
    };
    let report = if let Some(path) = &args.from_report {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut report: Report =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        // Goals are judged again: the rules may be newer than the report.
        report.goals = goals::evaluate(&report);
        report
    } else {
        {
            let report = measure(args)?;
            std::fs::create_dir_all(&args.out)
                .with_context(|| format!("creating {}", args.out.display()))?;
            let json = serde_json::to_string_pretty(&report)?;
            std::fs::write(args.out.join("report.json"), json + "\n")?;
            std::fs::write(
                args.out.join("report.md"),
                markdown::report_md(&report, baseline.as_ref()),
            )?;
            progress(&format!(
                "wrote {}/report.json and report.md",
                args.out.display()
            ));
            report
        }
    };
    println!("{}", markdown::report_md(&report, baseline.as_ref()));
    if let Some(path) = &args.write_benchmarks_md {
        let previous = std::fs::read_to_string(path).ok();
        std::fs::write(
            path,
            markdown::benchmarks_md(&report, baseline.as_ref(), previous.as_deref()),
        )
        .with_context(|| format!("writing {}", path.display()))?;
        progress(&format!("wrote {}", path.display()));
    }
    if let Some(path) = &args.write_baseline {
        baseline::Baseline::of(&report, &markdown::row_keys()).write(path)?;
        progress(&format!(
            "wrote {}: the next run is compared with this one",
            path.display()
        ));
    }
    Ok(report)
}

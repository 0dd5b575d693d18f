//! `cargo xtask`: the one entry point for building, running, testing and benchmarking
//! netwatch. Each command first installs whatever is missing (and says so).

mod cmd;
mod setup;

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run and test netwatch; installs what is missing."
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build target/release/netwatch (one self-contained binary, eBPF object embedded).
    Build,
    /// Build and run netwatch as root (through sudo when needed); arguments after `--` are
    /// passed on. Without --iface it watches the default-route interface(s).
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run every test: unit tests, the eBPF programs on crafted packets, the namespace lab.
    Test {
        /// Only the tests whose name contains this (passed to the test harness); skips the
        /// benchmark smoke run.
        filter: Option<String>,
    },
    /// Run the benchmark suite as root: writes target/bench/report.json and report.md, prints
    /// the table, and (full runs only) rewrites BENCHMARKS.md from the report.
    Bench {
        /// Fewer repetitions and shorter runs (within two minutes); BENCHMARKS.md is left alone.
        #[arg(long)]
        quick: bool,
        /// Only these sections (comma-separated: programs, rates, storm, latency); BENCHMARKS.md
        /// is left alone.
        #[arg(long)]
        only: Option<String>,
    },
}

pub(crate) fn say(message: &str) {
    eprintln!("xtask: {message}");
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

/// `program args…`, through sudo when not root (keeping the environment the tests need).
fn as_root(program: &Path) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut command = Command::new("sudo");
        command
            .arg("--preserve-env=NETWATCH_BIN,NETWATCH_TEST_STRICT,RUST_LOG,PATH")
            .arg(program);
        command
    }
}

fn build_release() -> anyhow::Result<PathBuf> {
    setup::ensure_build_toolchain()?;
    cmd::run(cargo().args(["build", "--release", "--package", "netwatch"]))?;
    Ok(workspace_root().join("target/release/netwatch"))
}

fn test(filter: Option<&str>) -> anyhow::Result<()> {
    setup::ensure_build_toolchain()?;
    setup::ensure_packages(setup::LAB_PACKAGES)?;
    setup::ensure_packages(setup::BENCH_PACKAGES)?;

    say("unit tests (no kernel needed)");
    cmd::run(cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "netwatch-ebpf",
        "--exclude",
        "netwatch-tests",
    ]))?;

    say("privileged tests: the real programs in the kernel, and the namespace lab");
    cmd::run(cargo().args(["build", "--package", "netwatch"]))?;
    let netwatch = workspace_root().join("target/debug/netwatch");
    let binaries = test_binaries()?;
    if binaries.is_empty() {
        bail!("no integration test binaries were built");
    }
    for binary in binaries {
        let mut command = as_root(&binary);
        command
            .arg("--test-threads=1")
            .env("NETWATCH_BIN", &netwatch)
            .env("NETWATCH_TEST_STRICT", "1")
            .current_dir(workspace_root());
        if let Some(filter) = filter {
            command.arg(filter);
        }
        cmd::run(&mut command)?;
    }
    if filter.is_none() {
        bench_smoke(&netwatch)?;
    }
    Ok(())
}

/// Every benchmark section once, with tiny parameters: proves the suite still runs. The
/// figures mean nothing and are not checked; only a section that cannot run fails.
fn bench_smoke(netwatch: &Path) -> anyhow::Result<()> {
    say("benchmark smoke run (checks the suite runs; figures not checked)");
    cmd::run(cargo().args([
        "build",
        "--package",
        "netwatch-bench",
        "--package",
        "netwatch-tests",
        "--bins",
    ]))?;
    let target = workspace_root().join("target");
    let mut command = as_root(&target.join("debug/netwatch-bench"));
    command
        .arg("--smoke")
        .arg("--netwatch")
        .arg(netwatch)
        .arg("--traffic-gen")
        .arg(target.join("debug/traffic-gen"))
        .arg("--out")
        .arg(target.join("bench/smoke"))
        .stdout(std::process::Stdio::null())
        .current_dir(workspace_root());
    cmd::run(&mut command)
}

fn bench(quick: bool, only: Option<&str>) -> anyhow::Result<()> {
    setup::ensure_build_toolchain()?;
    setup::ensure_packages(setup::LAB_PACKAGES)?;
    setup::ensure_packages(setup::BENCH_PACKAGES)?;
    say("kernel.bpf_stats_enabled=0: the programs are timed without the kernel's own statistics");
    let mut sysctl = if is_root() {
        Command::new("sysctl")
    } else {
        sudo("sysctl")
    };
    cmd::run(sysctl.args(["-qw", "kernel.bpf_stats_enabled=0"]))?;

    say("building netwatch, the bench and the traffic generator (release)");
    cmd::run(cargo().args([
        "build",
        "--release",
        "--package",
        "netwatch",
        "--package",
        "netwatch-bench",
        "--package",
        "netwatch-tests",
        "--bins",
    ]))?;
    let root = workspace_root();
    let release = root.join("target/release");
    let commit = cmd::output(
        Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(&root),
    )
    .map_or_else(|_| "unknown".to_owned(), |c| c.trim().to_owned());
    let rustc = cmd::output(Command::new("rustc").arg("-V").current_dir(&root))
        .map_or_else(|_| "unknown".to_owned(), |v| v.trim().to_owned());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    say(&format!(
        "load average now: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    ));

    let mut command = as_root(&release.join("netwatch-bench"));
    command
        .arg("--netwatch")
        .arg(release.join("netwatch"))
        .arg("--traffic-gen")
        .arg(release.join("traffic-gen"))
        .arg("--out")
        .arg(root.join("target/bench"))
        .args(["--commit", &commit, "--rustc", &rustc])
        .current_dir(&root);
    if quick {
        command.arg("--quick");
    }
    if let Some(only) = only {
        command.args(["--only", only]);
    }
    let full = !quick && only.is_none();
    if full {
        command
            .arg("--write-benchmarks-md")
            .arg(root.join("BENCHMARKS.md"));
    }
    cmd::run(&mut command)?;
    if full {
        say("BENCHMARKS.md rewritten from target/bench/report.json");
    } else {
        say(
            "target/bench/report.json and report.md written; BENCHMARKS.md is only rewritten by a full run",
        );
    }
    Ok(())
}

fn sudo(program: &str) -> Command {
    let mut command = Command::new("sudo");
    command.arg(program);
    command
}

/// Builds the integration tests and returns their executables.
fn test_binaries() -> anyhow::Result<Vec<PathBuf>> {
    let out = cmd::output(cargo().args([
        "test",
        "--package",
        "netwatch-tests",
        "--no-run",
        "--message-format=json",
    ]))?;
    let mut binaries = Vec::new();
    for line in out.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = message["profile"]["test"].as_bool() == Some(true);
        if let (true, Some(executable)) = (is_test, message["executable"].as_str()) {
            binaries.push(PathBuf::from(executable));
        }
    }
    Ok(binaries)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Build => build_release().map(|path| say(&format!("built {}", path.display()))),
        Task::Run { args } => build_release().and_then(|binary| {
            let err = as_root(&binary).args(&args).exec();
            Err(err).context("could not start netwatch")
        }),
        Task::Test { filter } => test(filter.as_deref()),
        Task::Bench { quick, only } => bench(quick, only.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            say(&format!("error: {err:#}"));
            ExitCode::FAILURE
        }
    }
}

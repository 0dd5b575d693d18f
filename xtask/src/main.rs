//! `cargo xtask`: the one entry point for building, running, testing and benchmarking
//! netwatch. Each command first installs whatever is missing (and says so).

mod cmd;
mod package;
mod service_vm;
mod setup;
mod vm;

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
    /// Build the Debian package `target/debian/netwatch_VERSION_ARCH.deb` (the release binary
    /// with its eBPF programs, the systemd unit, the man page, shell completions, the
    /// Prometheus rules and Grafana dashboard) and check it with lintian.
    Package,
    /// Run every test: unit tests, the eBPF programs on crafted packets, the namespace lab.
    Test {
        /// Only the privileged tests whose name contains this (passed to the test harness;
        /// the unit tests run whole); fails when it matches none. Skips the benchmark smoke
        /// run and the kernel matrix.
        filter: Option<String>,
        /// Skip the guests at the end: the service test and the kernel matrix (`vm-test`).
        #[arg(long)]
        no_vm: bool,
    },
    /// Boot Debian's 5.10, 6.1 and 6.12 cloud kernels in QEMU and run inside each (and on
    /// this machine's kernel) the tests of what a kernel can change: the programs, the fuzz
    /// test, the lab's verdicts and attachment, local drops, the ruleset, path MTU, tunnels;
    /// one line `kernel VERSION: N passed, M failed` per kernel.
    VmTest {
        /// Only these kernels: a series of the matrix (5.10, 6.1, 6.12) or `host`; repeatable.
        #[arg(long = "kernel", value_name = "VERSION")]
        kernels: Vec<String>,
    },
    /// Build the Debian package, boot Debian's 6.12 kernel in QEMU with systemd as PID 1,
    /// and check there that the package installs, runs and is removed cleanly, and that its
    /// unit starts, attaches, judges real clients, stops and restarts as it should.
    ServiceTest,
    /// Run the benchmark suite as root: writes target/bench/report.json and report.md, prints
    /// the table beside the previous full run's figures (bench/baseline.json), and (full runs
    /// only) rewrites BENCHMARKS.md from the report and bench/baseline.json with its figures.
    Bench {
        /// Fewer repetitions and shorter runs (within two minutes); BENCHMARKS.md is left alone.
        #[arg(long)]
        quick: bool,
        /// Only these sections (comma-separated: programs, rates, storm, drops, retransmits,
        /// latency, connects, startup); BENCHMARKS.md is left alone.
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
            .arg("--preserve-env=NETWATCH_BIN,NETWATCH_TEST_STRICT,NETWATCH_TEST_BUILD,RUST_LOG,PATH")
            .arg(program);
        command
    }
}

fn build_release() -> anyhow::Result<PathBuf> {
    setup::ensure_build_toolchain()?;
    cmd::run(cargo().args(["build", "--release", "--package", "netwatch"]))?;
    Ok(workspace_root().join("target/release/netwatch"))
}

/// `cargo fmt --check`, and clippy (pedantic, as configured, warnings denied) on every
/// crate, the eBPF one for the BPF target.
fn style() -> anyhow::Result<()> {
    say("style: rustfmt, and clippy (pedantic, as configured) on every crate");
    cmd::run(cargo().args(["fmt", "--all", "--check"]))?;
    // Every userspace crate, the privileged tests included; the eBPF crate below.
    cmd::run(cargo().args([
        "clippy",
        "--package",
        "netwatch",
        "--package",
        "netwatch-common",
        "--package",
        "xtask",
        "--package",
        "netwatch-bench",
        "--package",
        "netwatch-ebpf-build",
        "--package",
        "netwatch-tests",
        "--all-targets",
        "--",
        "--deny",
        "warnings",
    ]))?;
    // The eBPF crate as it is built: for the BPF target (build-std, with the cfg aya's
    // helpers need), in a target directory of its own; both builds of the programs.
    let root = workspace_root();
    for features in [&[][..], &["--features", "no-cmpxchg"][..]] {
        cmd::run(
            cargo()
                .current_dir(root.join("netwatch-ebpf"))
                .args([
                    "clippy",
                    "--package",
                    "netwatch-ebpf",
                    "--target",
                    "bpfel-unknown-none",
                    "-Z",
                    "build-std=core",
                    "--release",
                ])
                .args(features)
                .arg("--target-dir")
                .arg(root.join("target/clippy-ebpf"))
                .args(["--", "--deny", "warnings"])
                .env("RUSTC_BOOTSTRAP", "1")
                .env(
                    "CARGO_ENCODED_RUSTFLAGS",
                    format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
                ),
        )?;
    }
    Ok(())
}

fn test(filter: Option<&str>, no_vm: bool) -> anyhow::Result<()> {
    setup::ensure_build_toolchain()?;
    setup::ensure_packages(setup::LAB_PACKAGES)?;
    setup::ensure_packages(setup::BENCH_PACKAGES)?;

    style()?;

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
    let started = std::time::Instant::now();
    // With the guests to run, the soak waits for them and runs beside them.
    let beside = (filter.is_none() && !no_vm).then_some(BESIDE_THE_GUESTS);
    let mut host = host_suites(&binaries, filter, &netwatch, beside)?;
    let host_elapsed = started.elapsed();
    if let Some(filter) = filter {
        if host.passed == 0 {
            bail!(
                "no privileged test matches {filter:?}: nothing was run (the unit tests above run whole)"
            );
        }
        return Ok(());
    }
    bench_smoke(&netwatch)?;
    if no_vm {
        say("service test and kernel matrix skipped (--no-vm)");
        return Ok(());
    }
    let soak = binaries
        .iter()
        .find(|(name, _)| name == BESIDE_THE_GUESTS)
        .map(|(name, binary)| {
            say(&format!(
                "{name}: runs beside the service test and the kernel matrix (its lab traffic \
                 keeps about 5 % of this machine busy); its result comes after theirs"
            ));
            let (name, binary, netwatch) = (name.clone(), binary.clone(), netwatch.clone());
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                let counts = host_suite(&name, &binary, "", &[], &netwatch);
                (counts, started.elapsed())
            })
        });
    // A failure here is reported after the matrix has run too.
    let service = service_test();
    if let Err(err) = &service {
        say(&format!("service test: {err:#}"));
    }
    let series: Vec<String> = vm::MATRIX.iter().map(|&s| s.to_owned()).collect();
    let executables = vm::Executables {
        netwatch,
        tests: binaries,
    };
    // The soak is waited for even when the matrix could not run, so that nothing of its lab
    // outlives this command.
    let matrix = vm::run_matrix(&series, &executables, &workspace_root());
    let mut elapsed = host_elapsed;
    if let Some(soak) = soak {
        let (counts, soak_elapsed) = soak
            .join()
            .map_err(|_| anyhow::anyhow!("the {BESIDE_THE_GUESTS} suite's thread panicked"))?;
        let counts = counts.unwrap_or_else(|err| {
            say(&format!("{BESIDE_THE_GUESTS}: {err:#}"));
            vm::Counts {
                failed: 1,
                ..vm::Counts::default()
            }
        });
        if counts.failing() {
            say(&format!("{BESIDE_THE_GUESTS}: {}", counts.brief()));
        }
        host.add(counts);
        elapsed += soak_elapsed;
    }
    // This machine's kernel is the matrix's first entry: every suite above ran on it.
    let host = vm::Outcome {
        version: vm::host_kernel(),
        counts: host,
        elapsed,
        narrowed: None,
    };
    println!("{}", vm::result_line(&host));
    let mut outcomes = vec![host];
    outcomes.extend(matrix?);
    vm::conclude(&outcomes)?;
    service.context("the service test failed")
}

/// The privileged suite that runs beside the guests instead of before them: the soak's ten
/// minutes of lab traffic kept 10 % of one core busy (measured over 90 s: 1,043 of 18,964
/// jiffies on two cores), so the service test and the kernel matrix run meanwhile rather
/// than after it. Under `--no-vm` or a filter it runs in its turn with the others.
const BESIDE_THE_GUESTS: &str = "soak";

/// The privileged test executables on this machine's kernel (the program tests once per
/// build of the programs), each expected to report every test it lists; `leave` is one left
/// for the caller to run.
fn host_suites(
    binaries: &[(String, PathBuf)],
    filter: Option<&str>,
    netwatch: &Path,
    leave: Option<&str>,
) -> anyhow::Result<vm::Counts> {
    let mut host = vm::Counts::default();
    let filters: Vec<&str> = filter.into_iter().collect();
    // The program tests run twice: with the build of the programs this kernel loads, and
    // with the one for kernels before 5.12 (no compare-and-swap), which runs here too.
    let runs = binaries.iter().flat_map(|(name, binary)| {
        let builds: &[&str] = if name == "programs" {
            &["", "no-cmpxchg"]
        } else {
            &[""]
        };
        builds.iter().map(move |build| (name, binary, *build))
    });
    for (name, binary, build) in runs {
        if vm::guests_only(name) {
            say(&format!(
                "{name}: tests of what this kernel lacks, run in the kernel matrix only"
            ));
            continue;
        }
        if leave == Some(name.as_str()) {
            continue;
        }
        if filter.is_some() && vm::listed_tests(binary, &filters)? == 0 {
            continue; // the filter matches none of its tests
        }
        if !build.is_empty() {
            say(&format!("the program tests again, with the {build} build"));
        }
        let counts = host_suite(name, binary, build, &filters, netwatch)?;
        if counts.failing() {
            bail!(
                "{name} ({}){}: {}",
                binary.display(),
                if build.is_empty() {
                    String::new()
                } else {
                    format!(" with the {build} build")
                },
                counts.brief()
            );
        }
        host.add(counts);
    }
    Ok(host)
}

/// Runs one privileged test executable on this machine's kernel, one test at a time, with
/// the programs' `build`; its counts against the tests it lists.
fn host_suite(
    name: &str,
    binary: &Path,
    build: &str,
    filters: &[&str],
    netwatch: &Path,
) -> anyhow::Result<vm::Counts> {
    let listed = vm::listed_tests(binary, filters)?;
    let mut command = vm::host_test_command(binary, netwatch, &workspace_root());
    command.args(filters).env("NETWATCH_TEST_BUILD", build);
    let counts = vm::run_counted(&mut command)
        .with_context(|| format!("the {name} tests"))?
        .expecting(listed);
    Ok(counts)
}

/// `cargo xtask service-test`: the package, then its unit under systemd in a guest.
fn service_test() -> anyhow::Result<()> {
    let binary = build_release()?;
    let deb = package::build(&workspace_root(), &binary)?;
    service_vm::run(&workspace_root(), &deb)
}

/// `cargo xtask vm-test`: the suites on this machine's kernel and in QEMU on each kernel of
/// the matrix.
fn vm_test(kernels: &[String]) -> anyhow::Result<()> {
    if !is_root() {
        bail!("vm-test needs root (virtiofsd shares the host's files); run it with sudo");
    }
    if let Some(unknown) = kernels
        .iter()
        .find(|k| k.as_str() != "host" && !vm::MATRIX.contains(&k.as_str()))
    {
        bail!(
            "--kernel {unknown}: the matrix has {} and host",
            vm::MATRIX.join(", ")
        );
    }
    setup::ensure_build_toolchain()?;
    setup::ensure_packages(setup::LAB_PACKAGES)?;
    setup::ensure_packages(vm::VM_PACKAGES)?;
    say("building netwatch and the test executables");
    cmd::run(cargo().args(["build", "--package", "netwatch"]))?;
    let executables = vm::Executables {
        netwatch: workspace_root().join("target/debug/netwatch"),
        tests: test_binaries()?,
    };
    let (host, series): (Vec<&String>, Vec<&String>) =
        kernels.iter().partition(|k| k.as_str() == "host");
    let series: Vec<String> = if kernels.is_empty() {
        vm::MATRIX.iter().map(|&s| s.to_owned()).collect()
    } else {
        series.into_iter().cloned().collect()
    };
    let mut outcomes = Vec::new();
    if kernels.is_empty() || !host.is_empty() {
        let outcome = vm::run_host(&executables, &workspace_root())?;
        println!("{}", vm::result_line(&outcome));
        outcomes.push(outcome);
    }
    outcomes.extend(vm::run_matrix(&series, &executables, &workspace_root())?);
    vm::conclude(&outcomes)
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
    // netwatch alone first: built with the test crates, cargo would unify their features
    // into it (test-helpers), and the binary measured would not be the one shipped.
    cmd::run(cargo().args(["build", "--release", "--package", "netwatch"]))?;
    cmd::run(cargo().args([
        "build",
        "--release",
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
        .arg("--baseline")
        .arg(root.join("bench/baseline.json"))
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
            .arg(root.join("BENCHMARKS.md"))
            .arg("--write-baseline")
            .arg(root.join("bench/baseline.json"));
    }
    cmd::run(&mut command)?;
    if full {
        say(
            "BENCHMARKS.md rewritten from target/bench/report.json, beside the previous full run; \
             bench/baseline.json now holds this run's figures (commit both)",
        );
    } else {
        say(
            "target/bench/report.json and report.md written, beside the previous full run's figures; \
             BENCHMARKS.md and bench/baseline.json are only rewritten by a full run",
        );
    }
    Ok(())
}

fn sudo(program: &str) -> Command {
    let mut command = Command::new("sudo");
    command.arg(program);
    command
}

/// Builds the integration tests and returns their names and executables: the test targets
/// and the library's unit tests, not the helper programs' (`src/bin`, no tests of their own).
fn test_binaries() -> anyhow::Result<Vec<(String, PathBuf)>> {
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
        let is_test = message["profile"]["test"].as_bool() == Some(true)
            && message["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "test" || k == "lib"));
        if let (true, Some(executable), Some(name)) = (
            is_test,
            message["executable"].as_str(),
            message["target"]["name"].as_str(),
        ) {
            binaries.push((name.to_owned(), PathBuf::from(executable)));
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
        Task::Package => {
            build_release().and_then(|binary| package::build(&workspace_root(), &binary).map(drop))
        }
        Task::Test { filter, no_vm } => test(filter.as_deref(), no_vm),
        Task::VmTest { kernels } => vm_test(&kernels),
        Task::ServiceTest => service_test(),
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

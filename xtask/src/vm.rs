//! `cargo xtask vm-test`: the same test suites on every kernel an operator runs.
//!
//! Each kernel of the matrix is one of Debian's packaged cloud kernels
//! (`linux-image-*-cloud-amd64-unsigned`, which carry BTF), fetched with `apt-get download`
//! through a private apt configuration under `target/vm/apt` (its own sources, lists and
//! cache: the host's apt setup is untouched) and cached under `target/vm`. It boots in QEMU
//! with the host's `/` shared read-only over virtiofs under a tmpfs overlay (the built test
//! executables and netwatch are visible at their host paths) and a second virtiofs share for
//! the results. The guest has no network device at all: the tests' traffic stays in the
//! namespaces they create.
//!
//! Each kernel ends with one line, `kernel VERSION: N passed, M failed`; a kernel that cannot
//! be fetched or booted counts as failed, never as skipped. Every suite must run every test
//! its executable lists (`--list`): one that did not report is counted `not run`, and fails
//! the kernel as a failed test does. `NETWATCH_VM_SUITES` narrowing the suites is said on
//! the line too.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};

use crate::{cmd, is_root, say, setup};

/// The kernel series of the matrix: Debian 11's, Debian 12's, and Debian 12's newer one.
pub const MATRIX: &[&str] = &["5.10", "6.1", "6.12"];

/// What booting a kernel needs on the host.
pub const VM_PACKAGES: &[setup::Package] = &[
    setup::Package {
        name: "qemu-system-x86",
        provides: "/usr/bin/qemu-system-x86_64",
        why: "booting the kernels of the matrix",
    },
    setup::Package {
        name: "qemu-system-x86",
        provides: VIRTIOFSD,
        why: "sharing the host's files with the guest (virtiofsd)",
    },
    setup::Package {
        name: "kmod",
        provides: "/usr/sbin/depmod",
        why: "resolving the kernels' module dependencies",
    },
    setup::Package {
        name: "cpio",
        provides: "/usr/bin/cpio",
        why: "packing the initramfs",
    },
    setup::Package {
        name: "xz-utils",
        provides: "/usr/bin/xz",
        why: "unpacking compressed kernel modules",
    },
    // The dynamically linked `busybox` package also provides /bin/busybox; the initramfs
    // has no C library, so it must be the static one.
    setup::Package {
        name: "busybox-static",
        provides: "/usr/share/doc/busybox-static",
        why: "the initramfs's shell and tools",
    },
];

const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";

/// Modules the initramfs loads before it can mount the shares (built in on some kernels).
const BOOT_MODULES: &[&str] = &["virtio_pci", "virtiofs", "overlay"];

/// Modules the tests need, loaded inside the guest from the kernel's own package (the rest,
/// e.g. nftables expressions, the kernel loads on demand through the same modprobe).
const TEST_MODULES: &[&str] = &[
    "veth",
    // The lab's VPN (`lab-vpn`): /dev/net/tun appears with the module.
    "tun",
    "nf_tables",
    "nft_reject_inet",
    "nft_ct",
    "nf_conntrack",
    "sch_ingress",
    "cls_bpf",
    "act_bpf",
];

/// Guest memory; the shared-memory backend virtiofs needs has the same size.
const GUEST_MEMORY: &str = "2G";

/// A kernel that runs longer than this is stopped and counted as failed.
const KERNEL_TIMEOUT: Duration = Duration::from_mins(45);

/// One test executable and how the matrix runs it.
pub struct Suite {
    /// The integration test's name (`tests/tests/NAME.rs`).
    pub test: &'static str,
    /// Extra harness arguments.
    pub args: &'static [&'static str],
    /// When not empty, only these tests (exact names): what a kernel can change. The suite's
    /// other tests exercise only netwatch's own userspace and run on the host alone.
    pub only: &'static [&'static str],
    /// Extra environment.
    pub env: &'static [(&'static str, &'static str)],
    /// Test threads in the guest (on the host the suites run one test at a time, as under
    /// `cargo xtask test`).
    pub guest_threads: u32,
    /// Only in the guests: tests of what this machine's kernel lacks (modules), `#[ignore]`d
    /// and run with `--ignored` here; `cargo xtask test` and the matrix's host line leave
    /// them out.
    pub guests_only: bool,
}

/// What runs on every kernel: the programs on crafted packets, the fuzz test with fewer
/// packets (`BPF_PROG_TEST_RUN` is 13–19× slower under TCG), the namespace lab's verdicts
/// and attachment, this host's own drops (the drop program reads the `sk_buff` at offsets
/// and reasons each kernel's BTF gives; before 5.17 there are none, and netwatch must say
/// so), its storm shortened, and this host's ruleset followed (the `nf_tables`
/// announcements and trace events each kernel sends), what stalls after the handshake, and
/// the kernel's own tunnels (ipip, gre, sit, ip6tnl, ip6gre, `WireGuard`: modules this
/// machine's kernel lacks; about 30 s a kernel). A suite's [`Suite::only`] keeps what a
/// kernel can change.
///
/// The program tests each load their own programs and maps and share nothing, so the guest
/// runs them on both its CPUs (under TCG 165–240 s a kernel, with the kernel's BTF parsed
/// once per process, not once per test: `Probe::load_for_tests`). The lab's tests must run
/// one at a time (they count netwatch processes and programs).
pub const SUITES: &[Suite] = &[
    Suite {
        test: "programs",
        args: &[],
        only: &[],
        env: &[],
        guest_threads: 2,
        guests_only: false,
    },
    Suite {
        test: "fuzz",
        args: &[],
        only: &[],
        env: &[("NETWATCH_FUZZ_PACKETS", "20000")],
        guest_threads: 1,
        guests_only: false,
    },
    // The lab's verdicts, on Ethernet and behind a VPN's tun device (where each kernel hands
    // tc its packet without a link header), and how the programs are attached, detached and
    // re-attached (tcx or clsact), and with which capabilities. Left to the host, since no
    // kernel changes them: bad flags, names escaped in the output, the metrics, the live
    // view, and verdicts changing while netwatch runs.
    Suite {
        test: "lab",
        args: &[],
        only: &[
            "lab_verdicts_match_what_the_firewall_does",
            "a_client_behind_a_vpn_is_judged_as_on_ethernet_with_no_iface",
            "clsact_mode_removes_its_filters_and_the_qdisc_it_created",
            "two_instances_watch_the_same_interface_side_by_side",
            "a_renamed_netwatch_keeps_its_filters_when_another_starts",
            "interfaces_that_go_away_are_reported_and_attached_again_when_back",
            "nothing_stays_attached_after_any_exit",
            "runs_with_only_bpf_net_admin_and_perfmon_and_keeps_only_net_admin",
        ],
        env: &[],
        guest_threads: 1,
        guests_only: false,
    },
    Suite {
        test: "local_drops",
        args: &[],
        only: &[],
        env: &[("NETWATCH_DROP_STORM", "20000")],
        guest_threads: 1,
        guests_only: false,
    },
    // What nf_tables announces and traces (rules from nft and from iptables-nft, a burst of
    // changes), and with which capabilities. Left to the host, where nothing of the kernel's
    // decides them: the live view's timeline (tmux drives it), a killed netwatch's table
    // removed by the next, and hosts without nft or with legacy iptables.
    Suite {
        test: "ruleset",
        args: &[],
        only: &[
            "an_output_rule_that_drops_a_working_connection_is_named_with_its_change",
            "an_input_policy_that_drops_a_resolvers_answers_is_named_as_the_policy",
            "an_iptables_nft_rule_is_named_the_same_way",
            "a_reject_rule_is_named_as_a_reject",
            "a_burst_of_500_rule_changes_is_summarized_and_every_one_counted",
            "with_least_privilege_the_trace_table_is_added_and_removed_at_exit",
        ],
        env: &[],
        guest_threads: 1,
        guests_only: false,
    },
    // What a kernel changes after the handshake: the retransmission program (its tracepoint
    // and the socket's layout), TCP's own black-hole detection (when it lowers the segment
    // size), the drop program's path-MTU signals and fragments (drop reasons from 5.17). The
    // controls and the server's side run the same programs: the host.
    Suite {
        test: "path_mtu",
        args: &[
            "--skip",
            "a_server_names",
            "--skip",
            "loss_a_closed_window",
            "--skip",
            "signals_let_through",
        ],
        only: &[],
        env: &[],
        guest_threads: 1,
        guests_only: false,
    },
    // The kernel's own tunnels and a bond.
    Suite {
        test: "tunnels",
        args: &["--ignored"],
        only: &[],
        env: &[],
        guest_threads: 1,
        guests_only: true,
    },
];

impl Suite {
    /// The harness's arguments: [`Suite::args`], then [`Suite::only`]'s names matched
    /// exactly.
    fn harness_args(&self) -> Vec<&'static str> {
        let mut args = self.args.to_vec();
        if !self.only.is_empty() {
            args.push("--exact");
            args.extend(self.only);
        }
        args
    }
}

/// Fails when a suite's [`Suite::only`] names a test its executable does not have (renamed
/// or removed): the matrix would otherwise run less than it says, and still pass.
fn check_only(suites: &[&Suite], executables: &Executables) -> anyhow::Result<()> {
    for suite in suites.iter().filter(|suite| !suite.only.is_empty()) {
        let executable = executables.get(suite.test)?;
        for name in suite.only {
            if listed_tests(executable, &["--exact", name])? != 1 {
                bail!(
                    "the matrix's {} suite names {name}, a test {} does not have",
                    suite.test,
                    executable.display()
                );
            }
        }
    }
    Ok(())
}

/// Whether the integration test `test` is a [`Suite::guests_only`] one: not run on the host.
pub fn guests_only(test: &str) -> bool {
    SUITES
        .iter()
        .any(|suite| suite.test == test && suite.guests_only)
}

/// [`SUITES`], or only those named in `NETWATCH_VM_SUITES` (comma-separated), for working
/// on one suite; a name that is no suite is an error (a typo would otherwise run nothing).
fn suites() -> anyhow::Result<Vec<&'static Suite>> {
    let only = std::env::var("NETWATCH_VM_SUITES").unwrap_or_default();
    let only: Vec<&str> = only.split(',').filter(|s| !s.is_empty()).collect();
    if let Some(unknown) = only
        .iter()
        .find(|name| !SUITES.iter().any(|suite| suite.test == **name))
    {
        bail!(
            "NETWATCH_VM_SUITES names {unknown:?}: the suites are {}",
            SUITES.iter().map(|s| s.test).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(SUITES
        .iter()
        .filter(|suite| only.is_empty() || only.contains(&suite.test))
        .collect())
}

/// What the kernel's line says when `NETWATCH_VM_SUITES` left suites out: which ran.
fn narrowed(suites: &[&Suite]) -> Option<String> {
    (suites.len() < SUITES.len()).then(|| {
        let names: Vec<&str> = suites.iter().map(|s| s.test).collect();
        format!("only {}: NETWATCH_VM_SUITES", names.join(", "))
    })
}

/// Passed and failed tests of one kernel, and the tests its executables list that never
/// reported (a suite that exited 0 having run nothing, a crash before the end).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: u32,
    pub failed: u32,
    pub not_run: u32,
}

impl Counts {
    pub fn add(&mut self, other: Self) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.not_run += other.not_run;
    }

    /// These counts of a run that had `listed` tests to run: those that reported neither
    /// pass nor failure were not run. A run that lists no test at all ran nothing that can
    /// pass: one not run.
    #[must_use]
    pub fn expecting(mut self, listed: u32) -> Self {
        let reported = self.passed + self.failed;
        self.not_run = if listed == 0 {
            1
        } else {
            listed.saturating_sub(reported)
        };
        self
    }

    /// Whether these counts fail the kernel (or the host's run).
    pub const fn failing(self) -> bool {
        self.failed > 0 || self.not_run > 0 || self.passed == 0
    }

    /// `N passed, M failed`, and `, K not run` when some were not.
    pub fn brief(self) -> String {
        let mut text = format!("{} passed, {} failed", self.passed, self.failed);
        if self.not_run > 0 {
            let _ = write!(text, ", {} not run", self.not_run);
        }
        text
    }
}

/// One kernel's outcome.
pub struct Outcome {
    pub version: String,
    pub counts: Counts,
    pub elapsed: Duration,
    /// Which suites ran, when `NETWATCH_VM_SUITES` left some out.
    pub narrowed: Option<String>,
}

/// The line that ends each kernel.
pub fn result_line(outcome: &Outcome) -> String {
    let mut line = format!("kernel {}: {}", outcome.version, outcome.counts.brief());
    if let Some(narrowed) = &outcome.narrowed {
        let _ = write!(line, " ({narrowed})");
    }
    line
}

/// Counts libtest's results in `output`, and whether the harness got to its summary
/// (`test result:`). The summary's numbers are taken when it is there: in the guest the
/// log has stderr merged in, and a child's line can split a `test NAME ... ok` line;
/// otherwise the per-test lines (`test NAME ... ok` / `... FAILED`) up to where it stopped.
fn count_tests(output: &str) -> (Counts, bool) {
    let mut counts = Counts::default();
    let mut summary = None;
    for line in output.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("test result:") {
            summary = Some(summary_counts(rest));
        } else if line.starts_with("test ") {
            if line.ends_with(" ... ok") {
                counts.passed += 1;
            } else if line.ends_with(" ... FAILED") {
                counts.failed += 1;
            }
        }
    }
    match summary {
        Some(summary) => (summary, true),
        None => (counts, false),
    }
}

/// `ok. 12 passed; 1 failed; 0 ignored; …`: the passed and failed numbers.
fn summary_counts(summary: &str) -> Counts {
    let number = |name: &str| {
        summary
            .split(';')
            .find_map(|part| part.trim().strip_suffix(name))
            .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    Counts {
        passed: number(" passed"),
        failed: number(" failed"),
        not_run: 0,
    }
}

/// The tests `executable` lists with `args` (libtest's `--list`, the same filters): what a
/// run of it with those arguments must report.
pub fn listed_tests(executable: &Path, args: &[&str]) -> anyhow::Result<u32> {
    let out = cmd::output(Command::new(executable).arg("--list").args(args))?;
    let listed = out.lines().filter(|l| l.ends_with(": test")).count();
    u32::try_from(listed).context("more tests than a u32 counts")
}

/// Runs a test executable on the host, its stdout copied through while its tests are
/// counted.
pub fn run_counted(command: &mut Command) -> anyhow::Result<Counts> {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not run {}", command.get_program().display()))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut output = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading the test harness's output")?;
        println!("{line}");
        output.push_str(&line);
        output.push('\n');
    }
    let status = child.wait()?;
    let (mut counts, finished) = count_tests(&output);
    if !status.success() && (counts.failed == 0 || !finished) {
        // Crashed or stopped before the harness could name a failure.
        counts.failed += 1;
    }
    Ok(counts)
}

/// The test executables, by integration test name.
pub struct Executables {
    pub netwatch: PathBuf,
    pub tests: Vec<(String, PathBuf)>,
}

impl Executables {
    fn get(&self, test: &str) -> anyhow::Result<&Path> {
        self.tests
            .iter()
            .find(|(name, _)| name == test)
            .map(|(_, path)| path.as_path())
            .with_context(|| format!("the {test} test executable was not built"))
    }
}

/// Runs the suites on the host's own kernel (the first entry of the matrix).
pub fn run_host(executables: &Executables, root: &Path) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let version = host_kernel();
    say(&format!(
        "kernel {version} (this machine's): the suites run directly"
    ));
    let suites = suites()?;
    check_only(&suites, executables)?;
    let mut counts = Counts::default();
    for suite in suites.iter().filter(|suite| !suite.guests_only) {
        let executable = executables.get(suite.test)?;
        let listed = listed_tests(executable, &suite.harness_args())?;
        let mut command = host_test_command(executable, &executables.netwatch, root);
        command
            .args(suite.harness_args())
            .envs(suite.env.iter().copied());
        counts.add(checked(
            &version,
            suite.test,
            run_counted(&mut command)?,
            listed,
        ));
    }
    Ok(Outcome {
        version,
        counts,
        elapsed: started.elapsed(),
        narrowed: narrowed(&suites),
    })
}

/// A test executable run on this machine as every host suite is: as root, one test at a
/// time (the tests share the host's network namespaces and tracepoints), strict (a test that
/// cannot run fails), against `netwatch`, from the workspace `root`.
pub fn host_test_command(executable: &Path, netwatch: &Path, root: &Path) -> Command {
    let mut command = crate::as_root(executable);
    command
        .arg("--test-threads=1")
        .env("NETWATCH_BIN", netwatch)
        .env("NETWATCH_TEST_STRICT", "1")
        .current_dir(root);
    command
}

/// A suite's counts against the tests it lists; says so when some never reported.
fn checked(version: &str, suite: &str, counts: Counts, listed: u32) -> Counts {
    let counts = counts.expecting(listed);
    if counts.not_run > 0 {
        say(&format!(
            "kernel {version}: {suite} reported {} of the {listed} tests it lists",
            counts.passed + counts.failed
        ));
    }
    counts
}

/// This machine's kernel release (`uname -r`).
pub fn host_kernel() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |r| r.trim().to_owned())
}

/// Boots each of `series` in turn and runs the suites inside. Returns one outcome per
/// kernel; a kernel that could not be fetched or booted is an outcome with one failure.
pub fn run_matrix(
    series: &[String],
    executables: &Executables,
    root: &Path,
) -> anyhow::Result<Vec<Outcome>> {
    if !is_root() {
        bail!(
            "the kernel matrix needs root (virtiofsd shares the host's files with the guest); \
             run as root, or skip it with `cargo xtask test --no-vm`"
        );
    }
    setup::ensure_packages(VM_PACKAGES)?;
    check_only(&suites()?, executables)?;
    let narrowed = narrowed(&suites()?);
    let vm_dir = root.join("target/vm");
    let apt = PrivateApt::new(&vm_dir.join("apt"))?;
    let mut accel: Option<Accel> = None;
    let mut outcomes = Vec::new();
    for name in series {
        let started = Instant::now();
        let outcome = match Kernel::fetch(&apt, name, &vm_dir) {
            Err(err) => {
                say(&format!("kernel {name}: could not be fetched: {err:#}"));
                Outcome {
                    version: name.clone(),
                    counts: Counts {
                        failed: 1,
                        ..Counts::default()
                    },
                    elapsed: started.elapsed(),
                    narrowed: narrowed.clone(),
                }
            }
            Ok(kernel) => {
                let accel = *accel.get_or_insert_with(|| Accel::choose(&kernel, &vm_dir));
                let counts = kernel
                    .run_suites(accel, executables, root, &vm_dir)
                    .unwrap_or_else(|err| {
                        say(&format!("kernel {}: {err:#}", kernel.version));
                        Counts {
                            failed: 1,
                            ..Counts::default()
                        }
                    });
                Outcome {
                    version: kernel.version,
                    counts,
                    elapsed: started.elapsed(),
                    narrowed: narrowed.clone(),
                }
            }
        };
        say(&format!(
            "kernel {} took {} s",
            outcome.version,
            outcome.elapsed.as_secs()
        ));
        println!("{}", result_line(&outcome));
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Prints the matrix's summary again (after all the logs) and fails when any kernel failed.
pub fn conclude(outcomes: &[Outcome]) -> anyhow::Result<()> {
    say("kernel matrix:");
    for outcome in outcomes {
        say(&format!(
            "  {:<40} {:>5} s",
            result_line(outcome),
            outcome.elapsed.as_secs()
        ));
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.counts.failing())
        .map(|o| o.version.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("tests failed on kernel(s) {}", failed.join(", "));
    }
    Ok(())
}

/// apt-get and apt-cache with their own sources, lists and cache: the host's apt
/// configuration and state are neither read nor changed.
pub(crate) struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    /// The lists are refreshed when older than this.
    const MAX_AGE: Duration = Duration::from_hours(24);

    pub(crate) fn new(dir: &Path) -> anyhow::Result<Self> {
        let sources = dir.join("sources");
        for sub in ["sources", "lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("could not create {}", dir.join(sub).display()))?;
        }
        let uri = host_debian_uri();
        let security = uri.replace("/debian", "/debian-security");
        // bullseye-security's pool answers 404 for the cloud kernel: bullseye main has it.
        let text = format!(
            "# Written by cargo xtask vm-test: where the matrix's kernels come from.\n\
             Types: deb\nURIs: {uri}\nSuites: bullseye bookworm bookworm-backports\n\
             Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
             Types: deb\nURIs: {security}\nSuites: bookworm-security\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        );
        let file = sources.join("kernels.sources");
        let changed = fs::read_to_string(&file).ok().as_deref() != Some(text.as_str());
        if changed {
            fs::write(&file, &text)?;
        }
        let apt = Self {
            dir: dir.to_owned(),
        };
        let stamp = dir.join("updated");
        if changed || Self::age(&stamp).is_none_or(|age| age > Self::MAX_AGE) {
            say("refreshing the private apt lists for the kernels (target/vm/apt)");
            cmd::run(apt.command("apt-get").args(["update", "-qq"]))?;
            fs::write(&stamp, "")?;
        }
        Ok(apt)
    }

    /// Since the last successful update (apt dates the lists themselves by the archive's
    /// Release time, not by when they were fetched).
    fn age(stamp: &Path) -> Option<Duration> {
        let modified = fs::metadata(stamp).ok()?.modified().ok()?;
        SystemTime::now().duration_since(modified).ok()
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        let dir = self.dir.display();
        command
            .arg("-o")
            .arg("Dir::Etc::SourceList=/dev/null")
            .arg("-o")
            .arg(format!("Dir::Etc::SourceParts={dir}/sources"))
            .arg("-o")
            .arg(format!("Dir::State::Lists={dir}/lists"))
            .arg("-o")
            .arg(format!("Dir::Cache={dir}/cache"))
            .arg("-o")
            .arg("Dir::State::status=/dev/null")
            .arg("-o")
            .arg("APT::Architecture=amd64")
            .env("DEBIAN_FRONTEND", "noninteractive");
        if is_root() {
            // The _apt user may not write into target/: download as root, no warning.
            command.arg("-o").arg("APT::Sandbox::User=root");
        }
        command
    }

    /// The newest `linux-image-…-cloud-amd64-unsigned` package of `series` (e.g. "6.1"):
    /// the ABI name moves with every Debian point release, so it is resolved each time from
    /// the metapackages' versions.
    fn resolve(&self, series: &str) -> anyhow::Result<(String, String)> {
        let madison = cmd::output(self.command("apt-cache").args([
            "madison",
            "linux-image-cloud-amd64",
            &format!("linux-image-{series}-cloud-amd64"),
        ]))?;
        let (meta, version) = newest_of_series(&madison, series)
            .with_context(|| format!("no cloud kernel {series}.x in bullseye or bookworm"))?;
        let show = cmd::output(
            self.command("apt-cache")
                .args(["show", &format!("{meta}={version}")]),
        )?;
        let image = show
            .lines()
            .find_map(|line| line.strip_prefix("Depends:"))
            .and_then(|deps| deps.split(',').next())
            .and_then(|dep| dep.split_whitespace().next())
            .with_context(|| format!("{meta} {version} depends on no kernel image"))?;
        let upstream = version
            .split(['-', '~', '+'])
            .next()
            .unwrap_or(&version)
            .to_owned();
        Ok((format!("{image}-unsigned"), upstream))
    }
}

/// The Debian mirror the host uses (deb822 or one-line sources), else deb.debian.org.
fn host_debian_uri() -> String {
    let text = fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .or_else(|_| fs::read_to_string("/etc/apt/sources.list"))
        .unwrap_or_default();
    text.lines()
        .find_map(|line| {
            line.split_whitespace().find(|word| {
                word.starts_with("http") && word.trim_end_matches('/').ends_with("/debian")
            })
        })
        .map_or_else(
            || "http://deb.debian.org/debian".to_owned(),
            |uri| uri.trim_end_matches('/').to_owned(),
        )
}

/// From `apt-cache madison` output, the metapackage and version of the newest kernel of
/// `series` ("6.1" matches 6.1.192-2, not 6.12.95-1).
fn newest_of_series(madison: &str, series: &str) -> Option<(String, String)> {
    let prefix = format!("{series}.");
    madison
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('|').map(str::trim);
            let package = fields.next()?;
            let version = fields.next()?;
            version
                .starts_with(&prefix)
                .then(|| (package.to_owned(), version.to_owned()))
        })
        .max_by_key(|(_, version)| version_key(version))
}

/// A Debian version's numbers in order, for comparing kernel versions.
fn version_key(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .filter_map(|part| part.parse().ok())
        .collect()
}

/// A fetched kernel: its package unpacked under `target/vm/kernels/ABI`, with an initramfs.
pub(crate) struct Kernel {
    /// Upstream version, e.g. 6.1.192: the name in the result line.
    pub(crate) version: String,
    /// `uname -r`, e.g. 6.1.0-56-cloud-amd64: the modules directory.
    pub(crate) abi: String,
    dir: PathBuf,
    vmlinuz: PathBuf,
    initramfs: PathBuf,
}

impl Kernel {
    pub(crate) fn fetch(apt: &PrivateApt, series: &str, vm_dir: &Path) -> anyhow::Result<Self> {
        let (package, version) = apt.resolve(series)?;
        let abi = package
            .strip_prefix("linux-image-")
            .and_then(|rest| rest.strip_suffix("-unsigned"))
            .with_context(|| format!("unexpected kernel package name {package}"))?
            .to_owned();
        let debs = vm_dir.join("debs");
        fs::create_dir_all(&debs)?;
        let deb = if let Some(deb) = find_deb(&debs, &package) {
            deb
        } else {
            say(&format!("downloading {package} (Linux {version})"));
            cmd::run(
                apt.command("apt-get")
                    .args(["download", "-qq", &package])
                    .current_dir(&debs),
            )?;
            find_deb(&debs, &package)
                .with_context(|| format!("apt-get download left no {package} .deb"))?
        };
        let dir = vm_dir.join("kernels").join(&abi);
        let unpacked = dir.join(".unpacked");
        if !unpacked.exists() {
            say(&format!(
                "unpacking {} and indexing its modules",
                deb.display()
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir)?;
            cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
            cmd::run(Command::new("depmod").arg("-b").arg(&dir).arg(&abi))?;
            fs::write(&unpacked, "")?;
        }
        let vmlinuz = dir.join(format!("boot/vmlinuz-{abi}"));
        if !vmlinuz.exists() {
            bail!("{package} has no {}", vmlinuz.display());
        }
        let initramfs = dir.join("initramfs.cpio.gz");
        let kernel = Self {
            version,
            abi,
            dir,
            vmlinuz,
            initramfs,
        };
        kernel.build_initramfs()?;
        Ok(kernel)
    }

    fn modules_dir(&self) -> PathBuf {
        self.dir.join("lib/modules").join(&self.abi)
    }

    /// busybox (static) and the modules needed to mount the shares, with an `/init` that
    /// mounts the host's root read-only under a tmpfs overlay and hands over to the run's
    /// guest script (named on the kernel command line).
    fn build_initramfs(&self) -> anyhow::Result<()> {
        let stage = self.dir.join("initramfs");
        let _ = fs::remove_dir_all(&stage);
        for sub in [
            "bin", "modules", "proc", "sys", "dev", "host", "rw", "newroot",
        ] {
            fs::create_dir_all(stage.join(sub))?;
        }
        fs::copy("/bin/busybox", stage.join("bin/busybox"))?;
        let mut insmods = String::new();
        for module in BOOT_MODULES {
            let depends = cmd::output(Command::new("modprobe").arg("-d").arg(&self.dir).args([
                "-S",
                &self.abi,
                "--show-depends",
                module,
            ]))?;
            for line in depends.lines() {
                let Some(path) = line.strip_prefix("insmod ") else {
                    continue; // "builtin NAME"
                };
                let path = Path::new(path.trim());
                let file = path
                    .file_name()
                    .context("modprobe named a module without a file name")?
                    .to_string_lossy();
                let name = file
                    .trim_end_matches(".xz")
                    .trim_end_matches(".zst")
                    .to_owned();
                let target = stage.join("modules").join(&name);
                if target.exists() {
                    continue;
                }
                // busybox's insmod may not read compressed modules: unpack them here.
                if file.ends_with(".xz") {
                    let bytes = cmd::output_bytes(Command::new("xz").arg("-dc").arg(path))?;
                    fs::write(&target, bytes)?;
                } else if file.ends_with(".zst") {
                    let bytes = cmd::output_bytes(Command::new("zstd").arg("-dc").arg(path))?;
                    fs::write(&target, bytes)?;
                } else {
                    fs::copy(path, &target)?;
                }
                writeln!(insmods, "insmod /modules/{name} || fail \"insmod {name}\"")?;
            }
        }
        let init = INIT
            .replace("@INSMODS@", &insmods)
            .replace("@MODULES@", &self.modules_dir().display().to_string())
            .replace("@ABI@", &self.abi);
        let init_path = stage.join("init");
        fs::write(&init_path, init)?;
        set_executable(&init_path)?;
        cmd::run(
            Command::new("sh")
                .arg("-c")
                .arg("find . | cpio -o -H newc --quiet | gzip -1 > \"$0\"")
                .arg(&self.initramfs)
                .current_dir(&stage),
        )?;
        fs::remove_dir_all(&stage)?;
        Ok(())
    }

    /// Boots the kernel, runs every suite inside, and counts the results.
    fn run_suites(
        &self,
        accel: Accel,
        executables: &Executables,
        root: &Path,
        vm_dir: &Path,
    ) -> anyhow::Result<Counts> {
        let run_dir = vm_dir.join("run").join(&self.abi);
        let results = run_dir.join("results");
        let _ = fs::remove_dir_all(&run_dir);
        fs::create_dir_all(&results)?;
        let mut script = GUEST_HEAD
            .replace("@ROOT@", &root.display().to_string())
            .replace("@RESULTS@", &results.display().to_string())
            .replace("@NETWATCH@", &executables.netwatch.display().to_string())
            .replace("@TEST_MODULES@", &TEST_MODULES.join(" "));
        let suites = suites()?;
        for suite in &suites {
            let executable = executables.get(suite.test)?;
            let mut line = String::new();
            for (key, value) in suite.env {
                write!(line, "{key}={} ", shell_quote(value))?;
            }
            write!(line, "{}", shell_quote(&executable.display().to_string()))?;
            write!(line, " --test-threads={}", suite.guest_threads)?;
            for arg in suite.harness_args() {
                write!(line, " {}", shell_quote(arg))?;
            }
            writeln!(script, "suite {} {line}", suite.test)?;
        }
        if let Ok(command) = std::env::var("NETWATCH_VM_COMMAND") {
            // For investigating a kernel by hand: its output lands in results/command.log.
            writeln!(script, "suite command sh -c {}", shell_quote(&command))?;
        }
        script.push_str(GUEST_TAIL);
        let script_path = run_dir.join("guest.sh");
        fs::write(&script_path, script)?;
        set_executable(&script_path)?;

        say(&format!(
            "kernel {} ({}): booting under {} with the suites {}",
            self.version,
            self.abi,
            accel.name(),
            suites.iter().map(|s| s.test).collect::<Vec<_>>().join(", ")
        ));
        let console = run_dir.join("console.log");
        let append = format!(
            "console=ttyS0 quiet loglevel=4 panic=-1 netwatch.script={} netwatch.results={}",
            script_path.display(),
            results.display()
        );
        let booted = self.boot(
            accel,
            &run_dir,
            &results,
            &append,
            &console,
            KERNEL_TIMEOUT,
            true,
        )?;

        let mut counts = Counts::default();
        for suite in &suites {
            let listed = listed_tests(executables.get(suite.test)?, &suite.harness_args())?;
            let log =
                fs::read_to_string(results.join(format!("{}.log", suite.test))).unwrap_or_default();
            let rc = fs::read_to_string(results.join(format!("{}.rc", suite.test)))
                .ok()
                .and_then(|rc| rc.trim().parse::<i32>().ok());
            let (mut found, finished) = count_tests(&log);
            match rc {
                Some(0) if finished => {}
                Some(code) if finished && found.failed > 0 => {
                    say(&format!(
                        "kernel {}: {} exited {code}",
                        self.version, suite.test
                    ));
                }
                Some(code) => {
                    say(&format!(
                        "kernel {}: {} exited {code} without naming a failed test",
                        self.version, suite.test
                    ));
                    found.failed += 1;
                }
                None => {
                    say(&format!(
                        "kernel {}: {} did not finish (the guest stopped, hung or timed out)",
                        self.version, suite.test
                    ));
                    found.failed += 1;
                }
            }
            counts.add(checked(&self.version, suite.test, found, listed));
        }
        if !booted.finished {
            say(&format!(
                "kernel {}: the guest did not finish ({}); the end of its console ({}):",
                self.version,
                booted.why,
                console.display()
            ));
            for line in tail_lines(&console, 30) {
                eprintln!("    {line}");
            }
        }
        Ok(counts)
    }

    /// Boots with `append` on the command line; `finished` when the guest wrote
    /// `results/done` before powering off.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site per use, all paths"
    )]
    pub(crate) fn boot(
        &self,
        accel: Accel,
        run_dir: &Path,
        results: &Path,
        append: &str,
        console: &Path,
        timeout: Duration,
        echo: bool,
    ) -> anyhow::Result<Booted> {
        let root_socket = run_dir.join("root.sock");
        let results_socket = run_dir.join("results.sock");
        let mut daemons = Daemons::default();
        daemons.spawn(
            virtiofsd(&root_socket, Path::new("/"), "always"),
            run_dir,
            "virtiofsd-root",
        )?;
        daemons.spawn(
            virtiofsd(&results_socket, results, "none"),
            run_dir,
            "virtiofsd-results",
        )?;
        for socket in [&root_socket, &results_socket] {
            wait_for(socket, Duration::from_secs(10))
                .with_context(|| format!("virtiofsd did not create {}", socket.display()))?;
        }
        let mut qemu = Command::new("qemu-system-x86_64");
        match accel {
            Accel::Kvm => qemu.args(["-accel", "kvm", "-cpu", "host"]),
            // QEMU 7.2's TCG crashes 6.12 guests with cmpxchg16b; la57 is not needed.
            Accel::Tcg => qemu.args([
                "-accel",
                "tcg,thread=multi,tb-size=512",
                "-cpu",
                "max,la57=off,cx16=off",
            ]),
        };
        qemu.args(["-smp", "2", "-m", GUEST_MEMORY])
            .arg("-object")
            .arg(format!(
                "memory-backend-memfd,id=mem,size={GUEST_MEMORY},share=on"
            ))
            .args(["-numa", "node,memdev=mem"])
            // No default devices: no network card, no display.
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(&self.vmlinuz)
            .arg("-initrd")
            .arg(&self.initramfs)
            .arg("-append")
            .arg(append)
            .arg("-chardev")
            .arg(format!("socket,id=root,path={}", root_socket.display()))
            .args(["-device", "vhost-user-fs-pci,chardev=root,tag=hostroot"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=results,path={}",
                results_socket.display()
            ))
            .args(["-device", "vhost-user-fs-pci,chardev=results,tag=results"]);
        daemons.spawn(qemu, run_dir, "qemu")?;
        let qemu_index = daemons.children.len() - 1;

        let stop = Arc::new(AtomicBool::new(false));
        let follower = echo.then(|| {
            let stop = Arc::clone(&stop);
            let console = console.to_owned();
            std::thread::spawn(move || follow(&console, &stop))
        });
        let started = Instant::now();
        let why = loop {
            if let Some(status) = daemons.children[qemu_index].1.try_wait()? {
                break format!("QEMU exited ({status})");
            }
            if started.elapsed() > timeout {
                break format!("stopped after {} s", timeout.as_secs());
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        drop(daemons); // kills QEMU (if still running) and the virtiofsd daemons
        stop.store(true, Ordering::Relaxed);
        if let Some(follower) = follower {
            let _ = follower.join();
        }
        Ok(Booted {
            finished: results.join("done").exists(),
            why,
        })
    }
}

pub(crate) struct Booted {
    pub(crate) finished: bool,
    pub(crate) why: String,
}

/// Child processes killed (and reaped) when dropped, on success and on error alike.
#[derive(Default)]
struct Daemons {
    children: Vec<(String, Child)>,
}

impl Daemons {
    fn spawn(&mut self, mut command: Command, run_dir: &Path, name: &str) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt as _;
        let log = fs::File::create(run_dir.join(format!("{name}.log")))?;
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the child when
        // xtask dies (killed before its Drop could run: a CI timeout, SIGKILL).
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("could not start {name}"))?;
        self.children.push((name.to_owned(), child));
        Ok(())
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        // QEMU first (it was started last), then the daemons serving it.
        for (_, child) in self.children.iter_mut().rev() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

fn virtiofsd(socket: &Path, source: &Path, cache: &str) -> Command {
    let mut command = Command::new(VIRTIOFSD);
    command
        .arg(format!("--socket-path={}", socket.display()))
        .arg("-o")
        .arg(format!("source={},cache={cache}", source.display()))
        // The namespace sandbox pivot_roots into the source, which fails for `/` (EBUSY).
        .args(["-o", "sandbox=chroot"]);
    command
}

fn wait_for(path: &Path, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    while !path.exists() {
        if started.elapsed() > timeout {
            bail!("timed out");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Copies what the guest writes to its console to stderr, indented, until `stop`.
fn follow(console: &Path, stop: &AtomicBool) {
    let mut offset = 0;
    let mut pending = String::new();
    loop {
        let done = stop.load(Ordering::Relaxed);
        if let Ok(mut file) = fs::File::open(console)
            && file.seek(SeekFrom::Start(offset)).is_ok()
        {
            let mut bytes = Vec::new();
            if let Ok(n) = file.read_to_end(&mut bytes) {
                offset += n as u64;
                pending.push_str(&String::from_utf8_lossy(&bytes).replace('\r', ""));
                while let Some(end) = pending.find('\n') {
                    eprintln!("  | {}", &pending[..end]);
                    pending.drain(..=end);
                }
            }
        }
        if done {
            if !pending.is_empty() {
                eprintln!("  | {pending}");
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

pub(crate) fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<String> = text.lines().map(|l| l.replace('\r', "")).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

fn find_deb(dir: &Path, package: &str) -> Option<PathBuf> {
    let prefix = format!("{package}_");
    fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        (name.starts_with(&prefix) && name.ends_with(".deb")).then(|| entry.path())
    })
}

pub(crate) fn set_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("could not make {} executable", path.display()))
}

/// Single-quotes `text` for sh.
pub(crate) fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// KVM when it really works, TCG otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Kvm => "KVM",
            Self::Tcg => "TCG (emulation)",
        }
    }

    /// [`Accel::probe`], once per xtask run: the service test and the matrix share it.
    pub(crate) fn choose(kernel: &Kernel, vm_dir: &Path) -> Self {
        static CHOSEN: std::sync::OnceLock<Accel> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| Self::probe(kernel, vm_dir))
    }

    /// `NETWATCH_VM_ACCEL=kvm|tcg` decides; otherwise KVM only if `/dev/kvm` exists and a
    /// probe boot under it reaches the initramfs and powers off within 30 s (nested KVM
    /// such as PVM can hang or crash stock kernels).
    fn probe(kernel: &Kernel, vm_dir: &Path) -> Self {
        match std::env::var("NETWATCH_VM_ACCEL").as_deref() {
            Ok("tcg") => return Self::Tcg,
            Ok("kvm") => return Self::Kvm,
            _ => {}
        }
        if !Path::new("/dev/kvm").exists() {
            say("no /dev/kvm: the kernels run under TCG (emulation, slow)");
            return Self::Tcg;
        }
        let run_dir = vm_dir.join("run/kvm-probe");
        let results = run_dir.join("results");
        let _ = fs::remove_dir_all(&run_dir);
        let probed = fs::create_dir_all(&results)
            .map_err(anyhow::Error::from)
            .and_then(|()| {
                kernel.boot(
                    Self::Kvm,
                    &run_dir,
                    &results,
                    "console=ttyS0 quiet panic=-1 netwatch.probe",
                    &run_dir.join("console.log"),
                    Duration::from_secs(30),
                    false,
                )
            });
        let works = probed.is_ok()
            && fs::read_to_string(run_dir.join("console.log"))
                .is_ok_and(|log| log.contains(PROBE_MARK));
        if works {
            say("KVM works here: the kernels run under KVM");
            Self::Kvm
        } else {
            say(
                "KVM did not boot a probe kernel within 30 s: the kernels run under TCG (emulation, slow)",
            );
            Self::Tcg
        }
    }
}

const PROBE_MARK: &str = "netwatch-vm: probe booted";

/// The initramfs's `/init` (busybox sh).
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
fail() { echo "netwatch-vm: $1"; poweroff -f; }
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
script=; results=
for word in $(cat /proc/cmdline); do
    case "$word" in
        netwatch.script=*) script="${word#*=}" ;;
        netwatch.results=*) results="${word#*=}" ;;
        netwatch.probe) echo "netwatch-vm: probe booted"; poweroff -f ;;
    esac
done
@INSMODS@
mount -t virtiofs -o ro hostroot /host || fail "cannot mount the host's root (virtiofs)"
mount -t tmpfs -o size=75% tmpfs /rw || fail "cannot mount the overlay's tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /newroot \
    || fail "cannot mount the overlay"
mount -t virtiofs results "/newroot$results" || fail "cannot mount the results share"
mkdir -p /newroot/lib/modules/@ABI@
mount --bind "/host@MODULES@" /newroot/lib/modules/@ABI@ || fail "cannot bind the modules"
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /bin/sh "$script"
"#;

/// The guest script's beginning (host's /bin/sh, PID 1 after `switch_root`); one `suite`
/// line per suite follows, then [`GUEST_TAIL`].
const GUEST_HEAD: &str = r#"# Written by cargo xtask vm-test: runs inside the guest as PID 1.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
R='@RESULTS@'
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmpfs /run
mkdir -p /run/netns /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# A fresh /tmp, unless the workspace or the results lie beneath it (a clone in /tmp): a
# tmpfs there would hide the test executables and the results share.
case "@ROOT@/" in /tmp/*) ;; *) case "$R/" in /tmp/*) ;; *) mount -t tmpfs tmpfs /tmp ;; esac ;; esac
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
echo "netwatch-vm: kernel $(uname -r), $(nproc) CPUs"
for module in @TEST_MODULES@; do modprobe "$module" 2>/dev/null; done
cd '@ROOT@'
export NETWATCH_BIN='@NETWATCH@' NETWATCH_TEST_STRICT=1 RUST_BACKTRACE=1
suite() {
    name=$1; shift
    echo "netwatch-vm: running $name"
    { env "$@"; echo $? > "$R/$name.rc"; } 2>&1 | tee "$R/$name.log"
}
"#;

const GUEST_TAIL: &str = r#"echo done > "$R/done"
sync
echo "netwatch-vm: done, powering off"
echo o > /proc/sysrq-trigger
sleep 30
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_kernel_of_a_series() {
        let madison = "linux-image-cloud-amd64 | 6.12.95-1~bpo12+1 | http://deb.debian.org/debian bookworm-backports/main amd64 Packages\n\
            linux-image-cloud-amd64 |  6.1.192-2 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages\n\
            linux-image-cloud-amd64 |  6.1.176-1 | http://deb.debian.org/debian bookworm/main amd64 Packages\n\
            linux-image-cloud-amd64 | 5.10.223-1 | http://deb.debian.org/debian bullseye/main amd64 Packages\n\
            linux-image-6.12-cloud-amd64 | 6.12.117-1~deb12u1 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages\n";
        assert_eq!(
            newest_of_series(madison, "6.1"),
            Some(("linux-image-cloud-amd64".into(), "6.1.192-2".into()))
        );
        assert_eq!(
            newest_of_series(madison, "6.12"),
            Some((
                "linux-image-6.12-cloud-amd64".into(),
                "6.12.117-1~deb12u1".into()
            ))
        );
        assert_eq!(
            newest_of_series(madison, "5.10").map(|(_, v)| v),
            Some("5.10.223-1".into())
        );
        assert_eq!(newest_of_series(madison, "4.19"), None);
    }

    #[test]
    fn counts_libtest_lines() {
        let out = "running 3 tests\ntest a ... ok\ntest b ... FAILED\ntest c ... ignored\n\
                   test d ... ok\n\ntest result: FAILED. 2 passed; 1 failed; 1 ignored\n";
        assert_eq!(
            count_tests(out),
            (
                Counts {
                    passed: 2,
                    failed: 1,
                    not_run: 0
                },
                true
            )
        );
        assert!(!count_tests("running 1 test\ntest a ... ok\n").1);
        // In the guest's log a child's stderr can split a test's line: the summary counts.
        let split = "running 2 tests\ntest a ... ok\ntest b ... listener: ready\nok\n\n\
                     test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; \
                     finished in 1.00s\n";
        assert_eq!(count_tests(split).0.passed, 2);
    }

    #[test]
    fn a_run_that_reports_fewer_tests_than_it_lists_fails() {
        let ran = |passed, failed| Counts {
            passed,
            failed,
            not_run: 0,
        };
        // Exited 0 having run nothing: hidden no longer by the other suites' passes.
        let none = ran(0, 0).expecting(12);
        assert_eq!(none.not_run, 12);
        assert!(none.failing());
        let mut kernel = ran(31, 0).expecting(31);
        assert!(!kernel.failing());
        kernel.add(none);
        assert!(kernel.failing(), "{kernel:?}");
        // Stopped half way without naming a failure.
        assert_eq!(ran(5, 1).expecting(12).not_run, 6);
        // A filter that matches nothing lists nothing: nothing ran that can pass.
        assert!(ran(0, 0).expecting(0).failing());
        assert!(!ran(12, 0).expecting(12).failing());
    }

    #[test]
    fn the_kernel_line_says_what_did_not_run_and_which_suites_ran() {
        let outcome = Outcome {
            version: "6.12.117".to_owned(),
            counts: Counts {
                passed: 43,
                failed: 0,
                not_run: 3,
            },
            elapsed: Duration::ZERO,
            narrowed: narrowed(&[&SUITES[2], &SUITES[3]]),
        };
        assert_eq!(
            result_line(&outcome),
            "kernel 6.12.117: 43 passed, 0 failed, 3 not run (only lab, local_drops: NETWATCH_VM_SUITES)"
        );
        let all: Vec<&Suite> = SUITES.iter().collect();
        let outcome = Outcome {
            counts: Counts {
                passed: 47,
                ..Counts::default()
            },
            narrowed: narrowed(&all),
            ..outcome
        };
        assert_eq!(
            result_line(&outcome),
            "kernel 6.12.117: 47 passed, 0 failed"
        );
    }

    #[test]
    fn quotes_for_sh() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}

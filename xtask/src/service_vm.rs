//! `cargo xtask service-test`: the Debian package and its systemd unit under a real systemd.
//!
//! Boots Debian's 6.12 cloud kernel in QEMU as the kernel matrix does (`vm.rs`: the host's
//! `/` read-only under a tmpfs overlay, no network device), but PID 1 goes to the host's own
//! systemd (Debian's `systemd` package). Before systemd starts, the guest copies in the
//! package and the checker (`tests/src/bin/service-check.rs`), then hides the build tree,
//! the Rust toolchains and LLVM: the package must work on a host that has none of them.
//! systemd boots to a target of this test's own, whose one service runs the checker: it
//! installs the package with `dpkg -i`, starts the shipped unit, checks it from outside with
//! real clients in a namespace lab around the guest's own interface, and removes the package.
//! Its log, its exit status, the journal and `systemd-analyze security` land on the results
//! share; `systemd-analyze security`'s score must be the one README records.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    cmd, say, setup,
    vm::{self, Accel, Kernel, PrivateApt},
};

/// The one kernel the service test boots: Debian 12's newer one (tcx links).
pub const SERIES: &str = "6.12";

/// What the guest needs from the host besides the kernel matrix's packages and the lab's.
pub const SERVICE_PACKAGES: &[setup::Package] = &[
    setup::Package {
        name: "systemd",
        provides: "/lib/systemd/systemd",
        why: "the init of the service test's guest",
    },
    setup::Package {
        name: "man-db",
        provides: "/usr/bin/man",
        why: "reading the packaged man page in the service test",
    },
];

/// The guest is stopped (and the test failed) after this long: it boots and checks in about
/// two minutes under TCG (README, "The systemd service").
const TIMEOUT: Duration = Duration::from_mins(12);

/// Units of the host that must not run in the guest: timesyncd would send NTP queries
/// through the lab's default route, and netwatch would judge them.
const MASKED: &[&str] = &["systemd-timesyncd.service"];

/// The checker and the lab's TCP server, built beside each other.
const CHECKER: &str = "service-check";
const LISTENER: &str = "lab-listener";

/// The exposure line of `systemd-analyze security`, which README quotes.
const EXPOSURE: &str = "Overall exposure level for netwatch.service:";

/// Boots the guest, runs the checker in it, and fails unless every check passed and README
/// records the unit's security score as measured.
pub fn run(root: &Path, deb: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    if !crate::is_root() {
        bail!(
            "the service test needs root (virtiofsd shares the host's files with the guest); \
             run as root, or skip it with `cargo xtask test --no-vm`"
        );
    }
    setup::ensure_packages(vm::VM_PACKAGES)?;
    setup::ensure_packages(setup::LAB_PACKAGES)?;
    setup::ensure_packages(SERVICE_PACKAGES)?;
    say("building the service checker and the lab's TCP server");
    cmd::run(crate::cargo().args([
        "build",
        "--package",
        "netwatch-tests",
        "--bin",
        CHECKER,
        "--bin",
        LISTENER,
    ]))?;
    let bin_dir = root.join("target/debug");

    let vm_dir = root.join("target/vm");
    let apt = PrivateApt::new(&vm_dir.join("apt"))?;
    let kernel = Kernel::fetch(&apt, SERIES, &vm_dir)?;
    let accel = Accel::choose(&kernel, &vm_dir);
    let run_dir = vm_dir.join("run").join(format!("service-{}", kernel.abi));
    let results = run_dir.join("results");
    let _ = fs::remove_dir_all(&run_dir);
    fs::create_dir_all(&results)?;

    let hidden = hidden_paths(root);
    let deb_name = deb
        .file_name()
        .context("the package has no file name")?
        .to_string_lossy()
        .into_owned();
    let files = GuestFiles {
        run_dir: &run_dir,
        results: &results,
        deb,
        checker: &bin_dir.join(CHECKER),
        listener: &bin_dir.join(LISTENER),
    };
    write_guest_files(&files, &deb_name, &hidden)?;

    say(&format!(
        "service test: kernel {} ({}) under {}, systemd as PID 1, the package and its unit",
        kernel.version,
        kernel.abi,
        accel.name()
    ));
    let console = run_dir.join("console.log");
    let append = format!(
        "console=ttyS0 quiet loglevel=4 panic=-1 systemd.show_status=false \
         netwatch.script={} netwatch.results={}",
        run_dir.join("guest.sh").display(),
        results.display()
    );
    let booted = kernel.boot(accel, &run_dir, &results, &append, &console, TIMEOUT, true)?;
    let elapsed = started.elapsed().as_secs();
    let rc = fs::read_to_string(results.join("check.rc"))
        .ok()
        .and_then(|rc| rc.trim().parse::<i32>().ok());
    if !booted.finished || rc.is_none() {
        say(&format!(
            "service test: the guest did not finish ({}); the end of its console ({}):",
            booted.why,
            console.display()
        ));
        for line in vm::tail_lines(&console, 40) {
            eprintln!("    {line}");
        }
        bail!("the service test did not finish (after {elapsed} s)");
    }
    if rc != Some(0) {
        bail!(
            "the service test failed (after {elapsed} s): see {} and {}",
            results.join("check.log").display(),
            results.join("journal.txt").display()
        );
    }
    let security = fs::read_to_string(results.join("security.txt"))
        .context("the guest wrote no systemd-analyze security report")?;
    let measured = exposure(&security).context("systemd-analyze security printed no score")?;
    let readme = fs::read_to_string(root.join("README.md"))?;
    if !readme.contains(&measured) {
        bail!(
            "README does not record the unit's security score as measured: `{measured}` \
             (systemd-analyze security netwatch in the guest; the whole report is in {})",
            results.join("security.txt").display()
        );
    }
    say(&format!(
        "service test passed in {elapsed} s (kernel {}; {measured})",
        kernel.version
    ));
    Ok(())
}

/// What the package must do without, as the guest sees it: the workspace, the Rust
/// toolchains and LLVM's directories (its libraries in the system's library directory are
/// removed in the guest's overlay instead).
fn hidden_paths(root: &Path) -> Vec<PathBuf> {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    let cargo = std::env::var_os("CARGO_HOME").map_or_else(|| home.join(".cargo"), PathBuf::from);
    let rustup =
        std::env::var_os("RUSTUP_HOME").map_or_else(|| home.join(".rustup"), PathBuf::from);
    let mut hidden = vec![root.to_owned(), cargo, rustup];
    if let Ok(entries) = fs::read_dir("/usr/lib") {
        hidden.extend(
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("llvm-"))
                .map(|e| e.path()),
        );
    }
    hidden.retain(|path| path.is_dir());
    hidden
}

/// Where the guest's inputs are on the host.
struct GuestFiles<'a> {
    run_dir: &'a Path,
    results: &'a Path,
    deb: &'a Path,
    checker: &'a Path,
    listener: &'a Path,
}

/// The PID 1 script, the checker's wrapper and the two units of the guest.
fn write_guest_files(
    files: &GuestFiles<'_>,
    deb_name: &str,
    hidden: &[PathBuf],
) -> anyhow::Result<()> {
    let quote = |path: &Path| vm::shell_quote(&path.display().to_string());
    let hidden_list: Vec<String> = hidden.iter().map(|p| quote(p)).collect();
    let mut checker_args = format!(
        "--deb /netwatch-test/{} --results /netwatch-results",
        vm::shell_quote(deb_name)
    );
    for path in hidden {
        write!(checker_args, " --hidden {}", quote(path))?;
    }
    let script = GUEST
        .replace("@RESULTS@", &quote(files.results))
        .replace("@RUN_DIR@", &quote(files.run_dir))
        .replace(
            "@COPY@",
            &[files.deb, files.checker, files.listener]
                .iter()
                .map(|p| quote(p))
                .collect::<Vec<_>>()
                .join(" "),
        )
        .replace("@MASKED@", &MASKED.join(" "))
        .replace("@HIDDEN@", &hidden_list.join(" "));
    let path = files.run_dir.join("guest.sh");
    fs::write(&path, script)?;
    vm::set_executable(&path)?;
    fs::write(
        files.run_dir.join("run-check.sh"),
        RUN_CHECK.replace("@ARGS@", &checker_args),
    )?;
    fs::write(
        files.run_dir.join("netwatch-service-check.service"),
        CHECK_SERVICE,
    )?;
    fs::write(
        files.run_dir.join("netwatch-service-check.target"),
        CHECK_TARGET,
    )?;
    Ok(())
}

/// The score and level from a `systemd-analyze security` report: `Overall exposure level
/// for netwatch.service: 2.1 OK` (its emoji left out).
fn exposure(report: &str) -> Option<String> {
    report.lines().find_map(|line| {
        let (_, rest) = line.split_once(EXPOSURE)?;
        let mut words = rest.split_whitespace();
        let score = words.next()?;
        let level = words.next()?;
        Some(format!("{EXPOSURE} {score} {level}"))
    })
}

/// PID 1 of the guest until systemd: `/init` of the initramfs (`vm.rs`) runs it with the
/// host's `/` under a tmpfs overlay and the results share mounted at its host path.
const GUEST: &str = r#"# Written by cargo xtask service-test: prepares the guest as PID 1, then execs systemd.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
fail() { echo "netwatch-vm: $1"; sync; echo o > /proc/sysrq-trigger; sleep 30; }
mkdir -p /netwatch-results /netwatch-test
# The results share moves out of the build tree, which is hidden below.
mount --move @RESULTS@ /netwatch-results || fail "cannot move the results share"
cp @COPY@ @RUN_DIR@/run-check.sh /netwatch-test/ || fail "cannot copy the package and the checker"
cp @RUN_DIR@/netwatch-service-check.service @RUN_DIR@/netwatch-service-check.target \
    /etc/systemd/system/ || fail "cannot install the checker's units"
ln -sf netwatch-service-check.target /etc/systemd/system/default.target
for unit in @MASKED@; do ln -sf /dev/null "/etc/systemd/system/$unit"; done
# What the package must work without: the build tree, Rust and LLVM (their directories
# under empty tmpfs, LLVM's shared libraries removed from the overlay).
for dir in @HIDDEN@; do
    mount -t tmpfs -o size=1m,mode=0755 hidden "$dir" || fail "cannot hide $dir"
done
rm -f /usr/lib/*/libLLVM* /usr/lib/libLLVM*
# The host's temporary directories out of sight too, under empty tmpfs: systemd-tmpfiles
# empties /tmp at boot, and walking the host's (build trees, a CI clone) over virtiofs makes
# virtiofsd hold a descriptor per inode until it refuses every open (EMFILE: seen in CI,
# dpkg could not even start).
mount -t tmpfs -o mode=1777 guest-tmp /tmp || fail "cannot mount /tmp"
mount -t tmpfs -o mode=1777 guest-var-tmp /var/tmp || fail "cannot mount /var/tmp"
# No man-db index rebuild on dpkg -i: it reads all ~24,000 man pages over virtiofs (35 s under
# emulation), and virtiofsd, which holds a descriptor for every inode the guest caches and
# may not raise its limit here (no CAP_SYS_RESOURCE), then refuses every later open (EMFILE).
rm -f /var/lib/man-db/auto-update
# A host booted by systemd has no policy-rc.d; a Docker-built root (this machine's) has one
# that forbids maintainer scripts to start or stop services (exit 101).
rm -f /usr/sbin/policy-rc.d
umount /proc
exec /lib/systemd/systemd
"#;

/// Run by the checker's unit: the checker, its status, the journal, then power off.
const RUN_CHECK: &str = r#"# Written by cargo xtask service-test: runs the checker in the guest, then powers off.
R=/netwatch-results
{ /netwatch-test/service-check @ARGS@; echo $? > "$R/check.rc"; } 2>&1 | tee "$R/check.log"
journalctl -b --no-pager > "$R/journal.txt" 2>&1
echo done > "$R/done"
sync
systemctl --force --force poweroff
"#;

const CHECK_SERVICE: &str = "\
# Written by cargo xtask service-test: the checker, run once the guest has booted.
[Unit]
Description=cargo xtask service-test: the netwatch package and unit, checked from outside
After=basic.target

[Service]
Type=oneshot
Environment=RUST_BACKTRACE=1
ExecStart=/bin/sh /netwatch-test/run-check.sh
StandardOutput=journal+console
StandardError=journal+console
";

const CHECK_TARGET: &str = "\
# Written by cargo xtask service-test: the guest's default target, only the checker.
[Unit]
Description=cargo xtask service-test
Requires=basic.target netwatch-service-check.service
After=basic.target
AllowIsolate=yes
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_exposure_line() {
        let report = "  NAME  DESCRIPTION  EXPOSURE\n✓ UMask=  Files created …\n\n\
                      → Overall exposure level for netwatch.service: 2.1 OK 🙂\n";
        assert_eq!(
            exposure(report).as_deref(),
            Some("Overall exposure level for netwatch.service: 2.1 OK")
        );
        assert_eq!(exposure("nothing"), None);
    }

    #[test]
    fn the_guest_script_names_what_it_hides() {
        let run_dir = Path::new("/ws/target/vm/run/service-x");
        let files = GuestFiles {
            run_dir,
            results: &run_dir.join("results"),
            deb: Path::new("/ws/target/debian/netwatch_0.1.0_amd64.deb"),
            checker: Path::new("/ws/target/debug/service-check"),
            listener: Path::new("/ws/target/debug/lab-listener"),
        };
        let dir = std::env::temp_dir().join(format!("service-vm-{}", std::process::id()));
        let files = GuestFiles {
            run_dir: &dir,
            ..files
        };
        fs::create_dir_all(&dir).unwrap();
        write_guest_files(
            &files,
            "netwatch_0.1.0_amd64.deb",
            &[PathBuf::from("/ws"), PathBuf::from("/root/.cargo")],
        )
        .unwrap();
        let script = fs::read_to_string(dir.join("guest.sh")).unwrap();
        let run = fs::read_to_string(dir.join("run-check.sh")).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert!(
            script.contains("for dir in '/ws' '/root/.cargo'; do"),
            "{script}"
        );
        assert!(
            script.contains("mount --move '/ws/target/vm/run/service-x/results' /netwatch-results"),
            "{script}"
        );
        assert!(!script.contains('@'), "{script}");
        assert!(
            run.contains("--deb /netwatch-test/'netwatch_0.1.0_amd64.deb' --results /netwatch-results --hidden '/ws' --hidden '/root/.cargo'"),
            "{run}"
        );
    }
}

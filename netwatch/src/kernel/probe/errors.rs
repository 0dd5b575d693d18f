//! What goes wrong loading the programs, and how it is said: the verifier's own reason, the
//! kernel too old, one line each.

use aya::maps::MapError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("could not load netwatch's eBPF programs: {0}")]
    Load(String),
    /// The verifier rejected a program: `reason` is the end of its log, where it says why.
    #[error(
        "the kernel's verifier refused netwatch's program {program} ({errno}); the end of its \
         log says why:\n{reason}"
    )]
    Refused {
        program: &'static str,
        errno: std::io::Error,
        reason: String,
    },
    /// The kernel cannot load BPF tc classifiers at all.
    #[error(
        "this kernel cannot load BPF tc classifiers ({0}); netwatch needs Linux \
         {MINIMUM_KERNEL} or later built with CONFIG_BPF_SYSCALL and CONFIG_NET_CLS_BPF"
    )]
    Unsupported(String),
    #[error("netwatch needs Linux {MINIMUM_KERNEL} or later; this is Linux {0}")]
    KernelTooOld(String),
    #[error("could not attach to {iface}: {reason}")]
    Attach { iface: String, reason: String },
    #[error("could not read the kernel map {map}: {source}")]
    Map { map: &'static str, source: MapError },
    #[error(
        "could not map the kernel's target counters into memory ({0}); netwatch needs Linux \
         {MINIMUM_KERNEL} or later"
    )]
    Mmap(std::io::Error),
}

pub(super) fn first_line(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text.lines()
        .next()
        .unwrap_or_default()
        .trim_end_matches(['.', ':'])
        .to_owned()
}

/// The oldest kernel netwatch runs on: the oldest `cargo xtask vm-test` proves.
pub const MINIMUM_KERNEL: &str = "5.10";

/// Lines from the end of a verifier log shown in an error: the rejection and the
/// instructions just before it (the last line is the verifier's statistics).
const VERIFIER_LOG_LINES: usize = 6;

/// A program that failed to load: the verifier's own reason when it refused it, a missing
/// feature only when the kernel really cannot load tc classifiers.
pub(super) fn load_error(program: &'static str, err: aya::programs::ProgramError) -> ProbeError {
    use aya::programs::{ProgramError, ProgramType};
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            if matches!(
                aya::sys::is_program_supported(ProgramType::SchedClassifier),
                Ok(false)
            ) {
                return ProbeError::Unsupported(io_error.to_string());
            }
            let log = verifier_log.to_string();
            let reason = log_tail(&log, VERIFIER_LOG_LINES);
            ProbeError::Refused {
                program,
                errno: io_error,
                reason: if reason.is_empty() {
                    "  (the verifier left no log)".to_owned()
                } else {
                    reason
                },
            }
        }
        other => ProbeError::Load(first_line(&other)),
    }
}

/// Why the kernel refused to load a program, in one line: the error, and where the verifier
/// left a log, the line of it that says why. That is the last line before the statistics
/// it appends, never the first (a note on the program's BTF, say, that the verifier goes
/// past).
pub(super) fn refusal(err: &aya::programs::ProgramError) -> String {
    let aya::programs::ProgramError::LoadError {
        io_error,
        verifier_log,
    } = err
    else {
        return first_line(err);
    };
    let log = verifier_log.to_string();
    match verifier_reason(&log) {
        Some(reason) => format!("{io_error}: {reason}"),
        None => io_error.to_string(),
    }
}

/// The line of a verifier log that says why it refused the program: the last one that is
/// not one of its closing statistics.
fn verifier_reason(log: &str) -> Option<&str> {
    log.lines().map(str::trim).rev().find(|line| {
        !line.is_empty()
            && !line.starts_with("processed ")
            && !line.starts_with("verification time")
            && !line.starts_with("stack depth")
            && !line.starts_with("-- END PROG LOAD LOG --")
    })
}

/// Why neither tc hook took netwatch's programs: each attempt's own reason, once.
pub(super) fn no_tc_hook(tcx: &ProbeError, clsact: &ProbeError) -> String {
    let reason = |err: &ProbeError| match err {
        ProbeError::Attach { reason, .. } => reason.clone(),
        other => other.to_string(),
    };
    format!(
        "this kernel has no tc hook netwatch can use (tcx: {}; clsact: {}); it needs tcx \
         (Linux 6.6+) or CONFIG_NET_SCH_INGRESS and CONFIG_NET_CLS_BPF",
        reason(tcx),
        reason(clsact)
    )
}

/// The last `n` non-empty lines of `log`, indented.
fn log_tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `major.minor` of a kernel release such as `6.1.0-56-cloud-amd64`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Kernels before 5.11 charge BPF maps to `RLIMIT_MEMLOCK` rather than to the cgroup: with
/// a small limit (64 KiB by default) and no `CAP_SYS_RESOURCE` to raise it, map creation
/// fails with EPERM. Says so, and what to do, instead of only EPERM.
pub(super) fn with_memlock_hint(error: String) -> String {
    let old_kernel = running_kernel().is_some_and(|(_, version)| version < (5, 11));
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &raw mut limit) } == 0;
    if !(old_kernel
        && read
        && limit.rlim_cur != libc::RLIM_INFINITY
        && error.contains("Operation not permitted"))
    {
        return error;
    }
    format!(
        "{error}; Linux before 5.11 charges BPF maps to the locked-memory limit, {} KiB here: \
         raise it (`ulimit -l unlimited`, or LimitMEMLOCK=infinity in a systemd unit) or run \
         as root",
        limit.rlim_cur / 1024
    )
}

/// The first kernel with tcx (BPF links on tc hooks).
pub(super) const TCX_KERNEL: (u32, u32) = (6, 6);

/// The running kernel's release and `major.minor`, when it can be read.
pub(super) fn running_kernel() -> Option<(String, (u32, u32))> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let release = release.trim().to_owned();
    let version = kernel_version(&release)?;
    Some((release, version))
}

/// `Err` with one line naming the minimum on a kernel older than [`MINIMUM_KERNEL`].
pub(super) fn check_kernel_version() -> Result<(), ProbeError> {
    // Cannot tell: let the load say what is wrong.
    match (running_kernel(), kernel_version(MINIMUM_KERNEL)) {
        (Some((release, found)), Some(minimum)) if found < minimum => {
            Err(ProbeError::KernelTooOld(release))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::{
        MINIMUM_KERNEL, ProbeError, kernel_version, log_tail, no_tc_hook, verifier_reason,
    };

    #[test]
    fn a_refusal_names_the_verifiers_reason_not_its_first_note() {
        let log = "0: R1=ctx() R10=fp0\narg#0 type is not a struct\n; code\n12: (85) call \
                   bpf_probe_read_kernel#113\ncombined stack size of 3 calls is 544. Too large\n\
                   processed 20 insns (limit 1000000) max_states_per_insn 0 total_states 1\n\
                   stack depth 480+32\n";
        assert_eq!(
            verifier_reason(log),
            Some("combined stack size of 3 calls is 544. Too large")
        );
        assert_eq!(verifier_reason("processed 1 insns\n"), None);
    }

    #[test]
    fn a_kernel_without_a_tc_hook_is_said_in_one_line_with_each_reason() {
        let attach = |reason: &str| ProbeError::Attach {
            iface: "eth0".to_owned(),
            reason: reason.to_owned(),
        };
        let err = ProbeError::Attach {
            iface: "eth0".to_owned(),
            reason: no_tc_hook(
                &attach("Invalid argument (os error 22)"),
                &attach("could not add a clsact qdisc: No such file or directory (os error 2)"),
            ),
        };
        assert_eq!(
            err.to_string(),
            "could not attach to eth0: this kernel has no tc hook netwatch can use (tcx: Invalid \
             argument (os error 22); clsact: could not add a clsact qdisc: No such file or \
             directory (os error 2)); it needs tcx (Linux 6.6+) or CONFIG_NET_SCH_INGRESS and \
             CONFIG_NET_CLS_BPF"
        );
    }

    #[test]
    fn the_end_of_a_verifier_log_is_where_the_reason_is() {
        let log = "func#0 @0\n0: R1=ctx() R10=fp0\n; many lines\n12: (85) call pc+40\n\
                   R1 type=fp expected=ctx\nCaller passes invalid args into func#1\n\
                   processed 94 insns (limit 1000000)\n\n";
        let tail = log_tail(log, 3);
        assert_eq!(
            tail,
            "  R1 type=fp expected=ctx\n  Caller passes invalid args into func#1\n  \
             processed 94 insns (limit 1000000)"
        );
        assert_eq!(log_tail("", 3), "");
    }

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert_eq!(kernel_version("6.1.0-56-cloud-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("5.10.223"), Some((5, 10)));
        assert_eq!(kernel_version("6.12.117+deb12-cloud-amd64"), Some((6, 12)));
        assert!(kernel_version("5.4.0-150-generic") < kernel_version(MINIMUM_KERNEL));
        assert!(kernel_version("5.10.0-32-cloud-amd64") >= kernel_version(MINIMUM_KERNEL));
        assert_eq!(kernel_version("garbage"), None);
    }
}

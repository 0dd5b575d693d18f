//! The clock the kernel programs stamp requests with, read from userspace.
//!
//! `bpf_ktime_get_ns()` reads the host's `CLOCK_MONOTONIC`. In a time namespace
//! (`unshare --time`, some container runtimes) `clock_gettime(CLOCK_MONOTONIC)` adds the
//! namespace's offset, which the kernel programs never see: without correction every
//! request would look `offset` old (or young). The offset is read once from
//! `/proc/self/timens_offsets` (absent: the kernel has no time namespaces, offset 0) and
//! taken off every reading (the file: <https://elixir.bootlin.com/linux/v6.12/source/kernel/time/namespace.c>,
//! `proc_timens_show_offsets`; `bpf_ktime_get_ns` reads `ktime_get_mono_fast_ns`, no
//! namespace: <https://elixir.bootlin.com/linux/v6.12/source/kernel/bpf/helpers.c>).

use std::{fs, io, sync::OnceLock};

use thiserror::Error;

const TIMENS_OFFSETS: &str = "/proc/self/timens_offsets";
const NS_PER_S: i128 = 1_000_000_000;

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub(crate) enum ClockError {
    #[error(
        "could not read this time namespace's clock offset from {TIMENS_OFFSETS} ({0}); \
         the kernel's timestamps could not be compared with this process's clock: run \
         netwatch outside the time namespace"
    )]
    Unreadable(String),
    #[error(
        "could not parse {TIMENS_OFFSETS} ({0}); the kernel's timestamps could not be \
         compared with this process's clock: run netwatch outside the time namespace"
    )]
    Unparsable(String),
}

/// The `monotonic` offset in nanoseconds from the text of `/proc/self/timens_offsets`:
/// lines `<clock> <seconds> <nanoseconds>`, the clock by name or by number (1 is
/// `CLOCK_MONOTONIC`), seconds possibly negative, nanoseconds in `0..1e9`. Other clocks
/// (`boottime`) are ignored; no `monotonic` line is an error.
pub(crate) fn parse_monotonic_offset(text: &str) -> Result<i64, String> {
    let mut offset = None;
    for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l)) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let [clock, seconds, nanos] = fields[..] else {
            return Err(format!(
                "line {number}: expected 3 fields, found {}",
                fields.len()
            ));
        };
        if !matches!(clock, "monotonic" | "1") {
            continue;
        }
        let seconds: i64 = seconds
            .parse()
            .map_err(|_| format!("line {number}: seconds {seconds:?} is not a number"))?;
        let nanos: i64 = nanos
            .parse()
            .ok()
            .filter(|n| (0..1_000_000_000).contains(n))
            .ok_or_else(|| format!("line {number}: nanoseconds {nanos:?} not in 0..1e9"))?;
        let total = i128::from(seconds) * NS_PER_S + i128::from(nanos);
        let total = i64::try_from(total)
            .map_err(|_| format!("line {number}: offset {seconds} s out of range"))?;
        if offset.replace(total).is_some() {
            return Err(format!("line {number}: a second monotonic line"));
        }
    }
    offset.ok_or_else(|| "no monotonic line".to_owned())
}

/// The offset from `read` (the file's text, `NotFound` when it is absent).
pub(crate) fn monotonic_offset_from(
    read: impl FnOnce() -> io::Result<String>,
) -> Result<i64, ClockError> {
    match read() {
        Ok(text) => parse_monotonic_offset(&text).map_err(ClockError::Unparsable),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(err) => Err(ClockError::Unreadable(err.to_string())),
    }
}

static MONOTONIC_OFFSET: OnceLock<Result<i64, ClockError>> = OnceLock::new();

fn monotonic_offset() -> &'static Result<i64, ClockError> {
    MONOTONIC_OFFSET.get_or_init(|| monotonic_offset_from(|| fs::read_to_string(TIMENS_OFFSETS)))
}

/// Reads the time namespace offset (once per process): call at start so a file that cannot
/// be used stops the run with one line, before anything is attached.
pub(crate) fn check() -> Result<(), ClockError> {
    monotonic_offset()
        .as_ref()
        .map(|_| ())
        .map_err(Clone::clone)
}

/// A `CLOCK_MONOTONIC` reading of `seconds` and `nanos` in this namespace, as the kernel's
/// clock: the namespace's `offset` taken off, clamped to `u64`.
#[must_use]
pub(crate) fn kernel_ns(seconds: i64, nanos: i64, offset: i64) -> u64 {
    let ns = i128::from(seconds) * NS_PER_S + i128::from(nanos) - i128::from(offset);
    u64::try_from(ns.max(0)).unwrap_or(u64::MAX)
}

/// `CLOCK_MONOTONIC` in nanoseconds as `bpf_ktime_get_ns()` reads it: this namespace's
/// offset taken off (see [`check`]; an unusable offset file counts as no offset here, and
/// [`check`] is what reports it).
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write to; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    let offset = monotonic_offset().as_ref().copied().unwrap_or(0);
    kernel_ns(now.tv_sec, now.tv_nsec, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernels_format() {
        let host = "monotonic           0         0\nboottime            0         0\n";
        assert_eq!(parse_monotonic_offset(host), Ok(0));
        let shifted = "monotonic      100000         0\nboottime          -5  10\n";
        assert_eq!(parse_monotonic_offset(shifted), Ok(100_000_000_000_000));
        let fraction = "boottime 0 0\nmonotonic 2 500000000\n";
        assert_eq!(parse_monotonic_offset(fraction), Ok(2_500_000_000));
        assert_eq!(
            parse_monotonic_offset("1 3 0\n"),
            Ok(3_000_000_000),
            "by clock id"
        );
    }

    #[test]
    fn negative_offsets() {
        // -2 s + 0.25 s: the kernel keeps nanoseconds positive.
        assert_eq!(
            parse_monotonic_offset("monotonic -2 250000000\n"),
            Ok(-1_750_000_000)
        );
        assert_eq!(
            parse_monotonic_offset("monotonic -100000 0\n"),
            Ok(-100_000_000_000_000)
        );
    }

    #[test]
    fn bad_text_says_which_line() {
        let cases = [
            ("", "no monotonic line"),
            ("boottime 0 0\n", "no monotonic line"),
            ("monotonic 0\n", "line 1: expected 3 fields"),
            ("boottime 0 0\nmonotonic x 0\n", "line 2: seconds \"x\""),
            ("monotonic 1 1000000000\n", "line 1: nanoseconds"),
            ("monotonic 1 -1\n", "line 1: nanoseconds"),
            ("monotonic 99999999999999999 0\n", "out of range"),
            (
                "monotonic 1 0\nmonotonic 2 0\n",
                "line 2: a second monotonic line",
            ),
        ];
        for (text, expected) in cases {
            let err = parse_monotonic_offset(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn an_absent_file_means_no_time_namespaces() {
        let absent = || Err(io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(monotonic_offset_from(absent), Ok(0));
        let denied = || Err(io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(matches!(
            monotonic_offset_from(denied),
            Err(ClockError::Unreadable(_))
        ));
        let garbage = || Ok("monotonic soon\n".to_owned());
        let err = monotonic_offset_from(garbage).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("could not parse /proc/self/timens_offsets (line 1:"),
            "{text}"
        );
        assert!(!text.contains('\n'));
        assert!(text.contains("run netwatch outside the time namespace"));
    }

    #[test]
    fn the_offset_is_taken_off() {
        assert_eq!(kernel_ns(5, 7, 0), 5_000_000_007);
        assert_eq!(kernel_ns(100_005, 0, 100_000_000_000_000), 5_000_000_000);
        assert_eq!(kernel_ns(3, 0, -2_000_000_000), 5_000_000_000);
        assert_eq!(kernel_ns(1, 0, 2_000_000_000), 0, "clamped, never wraps");
        assert_eq!(kernel_ns(i64::MAX, 999_999_999, i64::MIN), u64::MAX);
    }

    #[test]
    fn this_process_reads_the_kernels_clock() {
        check().expect("this host's offsets parse");
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
    }
}

//! Helpers for netwatch's privileged integration tests.
//!
//! Tier 2 (`tests/programs/`, harness in [`harness`]): the real eBPF programs loaded into the kernel and run on
//! crafted packets with `BPF_PROG_TEST_RUN`. Tier 3 (`tests/lab.rs`): the real binary in a
//! namespace lab, driven by real clients through a real nftables firewall.
//!
//! Tests that need root or a tool skip with a loud message when run by hand without them;
//! `cargo xtask test` sets `NETWATCH_TEST_STRICT=1` (and CI sets `CI`), which turns every
//! such skip into a failure, so nothing is silently skipped there.

pub mod capture;
pub mod clients;
pub mod dissector;
pub mod harness;
pub mod lab;
pub mod packets;
pub mod random;
pub mod terminal;
pub mod tun;

use std::path::Path;

/// Whether skipping is forbidden (under `cargo xtask test` and in CI).
#[must_use]
pub fn strict() -> bool {
    std::env::var_os("NETWATCH_TEST_STRICT").is_some_and(|v| v == "1")
        || std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
}

/// Checks the test can run here: root, and each of `tools` on PATH. Returns `false` after
/// printing a loud SKIP line when it can't; panics instead in strict mode.
#[must_use]
pub fn prerequisites(test: &str, tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_owned());
    }
    for tool in tools {
        if !on_path(tool) {
            missing.push(format!("`{tool}`"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let message = format!("{test} needs {}", missing.join(", "));
    assert!(
        !strict(),
        "{message} (strict mode: cargo xtask test installs and escalates)"
    );
    eprintln!("\n!!!!!!!! SKIPPED: {message}; run it with `cargo xtask test` !!!!!!!!\n");
    false
}

/// Whether `tool` is an executable on PATH (or an absolute path that exists).
#[must_use]
pub fn on_path(tool: &str) -> bool {
    if tool.contains('/') {
        return Path::new(tool).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// The running kernel's (major, minor) version; (0, 0) if unreadable.
#[must_use]
pub fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// How netwatch's `--attach auto` attaches on the running kernel: `tcx` from Linux 6.6,
/// `clsact` filters before (the kernel matrix boots 5.10 and 6.1).
#[must_use]
pub fn auto_attach() -> &'static str {
    if kernel_version() >= (6, 6) {
        "tcx"
    } else {
        "clsact"
    }
}

/// Whether the running kernel says why it drops a packet (`skb:kfree_skb`'s `reason`,
/// Linux 5.17): netwatch's local drops need it (the matrix's 5.10 has none).
#[must_use]
pub fn kernel_has_drop_reasons() -> bool {
    kernel_version() >= (5, 17)
}

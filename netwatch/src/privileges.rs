//! Capabilities: checked up front so a missing one gives one clear line, not an EPERM from
//! deep inside the loader.

use std::fs;

use thiserror::Error;

/// A Linux capability netwatch may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    pub bit: u32,
}

pub const CAP_NET_ADMIN: Capability = Capability {
    name: "CAP_NET_ADMIN",
    bit: 12,
};
pub const CAP_SYS_ADMIN: Capability = Capability {
    name: "CAP_SYS_ADMIN",
    bit: 21,
};
pub const CAP_PERFMON: Capability = Capability {
    name: "CAP_PERFMON",
    bit: 38,
};
pub const CAP_BPF: Capability = Capability {
    name: "CAP_BPF",
    bit: 39,
};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PrivilegeError {
    #[error(
        "missing capabilit{plural} {missing}: run netwatch as root (sudo), or grant \
         CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (setcap, or AmbientCapabilities= in systemd)",
        plural = if .missing.contains(',') { "ies" } else { "y" }
    )]
    Missing { missing: String },
    #[error("could not read this process's capabilities from /proc/self/status")]
    Unreadable,
}

/// The effective capability set from the text of `/proc/self/status`.
#[must_use]
pub fn effective_set(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// The capabilities missing from `effective` to load and attach tc programs. `CAP_SYS_ADMIN`
/// stands in for `CAP_BPF` and `CAP_PERFMON`, as the kernel allows.
#[must_use]
pub fn missing(effective: u64) -> Vec<Capability> {
    let has = |cap: Capability| effective & (1u64 << cap.bit) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push(CAP_BPF);
    }
    if !has(CAP_NET_ADMIN) {
        missing.push(CAP_NET_ADMIN);
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push(CAP_PERFMON);
    }
    missing
}

/// Once the programs are loaded and attached, keeps only `CAP_NET_ADMIN` (to attach again
/// to an interface that comes back, and to remove clsact filters at exit) and drops every
/// other capability for good. Map reads and tcx detach need none, from Linux 6.5 on.
///
/// Before 6.5, while `kernel.unprivileged_bpf_disabled` is set (Debian's default), every
/// bpf(2) command needs `CAP_BPF`, map reads included (`__sys_bpf` checked it at entry; 6.5
/// moved the check into map creation and program load): there `CAP_BPF` is kept too, and
/// netwatch says so once.
pub fn drop_after_attach() -> Result<(), caps::errors::CapsError> {
    use caps::{CapSet, Capability as Cap, CapsHashSet};
    let mut keep: CapsHashSet = [Cap::CAP_NET_ADMIN].into_iter().collect();
    if map_reads_need_cap_bpf() {
        eprintln!(
            "netwatch: keeping CAP_BPF: this kernel (before Linux 6.5, with \
             kernel.unprivileged_bpf_disabled set) needs it to read the maps"
        );
        keep.insert(Cap::CAP_BPF);
    }
    let permitted = caps::read(None, CapSet::Permitted)?;
    let keep: CapsHashSet = keep.intersection(&permitted).copied().collect();
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)
}

/// Whether this kernel wants `CAP_BPF` for every bpf(2) command (see [`drop_after_attach`]).
#[must_use]
pub fn map_reads_need_cap_bpf() -> bool {
    let disabled = fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .is_ok_and(|v| v.trim() != "0");
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    disabled && checks_bpf_at_every_call(&release)
}

/// Kernels before 6.5 check `unprivileged_bpf_disabled` at every bpf(2) call.
fn checks_bpf_at_every_call(release: &str) -> bool {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) < (6, 5),
        _ => false,
    }
}

/// Checks this process has what it needs.
pub fn require() -> Result<(), PrivilegeError> {
    let status = fs::read_to_string("/proc/self/status").map_err(|_| PrivilegeError::Unreadable)?;
    let effective = effective_set(&status).ok_or(PrivilegeError::Unreadable)?;
    let missing = missing(effective);
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|cap| cap.name).collect();
    Err(PrivilegeError::Missing {
        missing: names.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[Capability]) -> u64 {
        caps.iter().fold(0, |acc, cap| acc | (1 << cap.bit))
    }

    #[test]
    fn kernels_before_6_5_check_bpf_at_every_call() {
        assert!(checks_bpf_at_every_call("5.10.0-32-cloud-amd64"));
        assert!(checks_bpf_at_every_call("6.1.0-56-cloud-amd64\n"));
        assert!(!checks_bpf_at_every_call("6.5.0"));
        assert!(!checks_bpf_at_every_call("6.12.117+deb12-cloud-amd64"));
        assert!(!checks_bpf_at_every_call("garbage"));
    }

    #[test]
    fn root_has_everything() {
        assert!(missing(0x0000_01ff_ffff_ffff).is_empty());
    }

    #[test]
    fn names_what_is_missing() {
        assert_eq!(missing(0), vec![CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON]);
        assert_eq!(missing(set(&[CAP_BPF, CAP_PERFMON])), vec![CAP_NET_ADMIN]);
        assert!(missing(set(&[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON])).is_empty());
        assert!(missing(set(&[CAP_SYS_ADMIN, CAP_NET_ADMIN])).is_empty());
    }

    #[test]
    fn reads_the_status_line() {
        let status = "Name:\tnetwatch\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_set(status), Some(0x01ff_ffff_ffff));
        assert_eq!(effective_set("Name: x\n"), None);
    }

    #[test]
    fn the_error_is_one_actionable_line() {
        let err = PrivilegeError::Missing {
            missing: "CAP_BPF, CAP_NET_ADMIN".into(),
        };
        let text = err.to_string();
        assert!(
            text.starts_with("missing capabilities CAP_BPF, CAP_NET_ADMIN: run netwatch as root")
        );
        assert!(!text.contains('\n'));
    }
}

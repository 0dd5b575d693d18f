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
/// other capability for good. Map reads and tcx detach need none.
pub fn drop_after_attach() -> Result<(), caps::errors::CapsError> {
    use caps::{CapSet, Capability as Cap, CapsHashSet};
    let keep: CapsHashSet = [Cap::CAP_NET_ADMIN].into_iter().collect();
    let permitted = caps::read(None, CapSet::Permitted)?;
    let keep: CapsHashSet = keep.intersection(&permitted).copied().collect();
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)
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

//! Capabilities: checked up front so a missing one gives one clear line, not an EPERM from
//! deep inside the loader.

use caps::{CapSet, Capability as Cap, CapsHashSet};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum PrivilegeError {
    #[error(
        "missing capabilit{plural} {missing}: run netwatch as root (sudo), or grant \
         CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (setcap, or AmbientCapabilities= in systemd)",
        plural = if .missing.contains(',') { "ies" } else { "y" }
    )]
    Missing { missing: String },
    #[error("could not read this process's capabilities: {0}")]
    Unreadable(String),
}

/// The capabilities missing from `effective` to load and attach tc programs. `CAP_SYS_ADMIN`
/// stands in for `CAP_BPF` and `CAP_PERFMON`, as the kernel allows.
#[must_use]
pub(crate) fn missing(effective: &CapsHashSet) -> Vec<Cap> {
    let has = |cap: Cap| effective.contains(&cap);
    let mut missing = Vec::new();
    if !has(Cap::CAP_BPF) && !has(Cap::CAP_SYS_ADMIN) {
        missing.push(Cap::CAP_BPF);
    }
    if !has(Cap::CAP_NET_ADMIN) {
        missing.push(Cap::CAP_NET_ADMIN);
    }
    if !has(Cap::CAP_PERFMON) && !has(Cap::CAP_SYS_ADMIN) {
        missing.push(Cap::CAP_PERFMON);
    }
    missing
}

/// What a harmless `bpf()` call on one of netwatch's maps said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BpfProbe {
    /// The call worked (a missing key counts: the kernel let the call through).
    Allowed,
    /// `EPERM`: the kernel wants `CAP_BPF` (or `CAP_SYS_ADMIN`) for every `bpf()` call.
    Refused,
    /// Any other error (`errno`, if known): not about privileges.
    Failed(Option<i32>),
}

impl BpfProbe {
    /// From the call's result: `Err` carries its errno when there is one.
    #[must_use]
    pub(crate) fn from_result(result: Result<(), Option<i32>>) -> Self {
        match result {
            Ok(()) => Self::Allowed,
            Err(Some(libc::EPERM)) => Self::Refused,
            Err(errno) => Self::Failed(errno),
        }
    }
}

/// The capabilities to keep once attached: `CAP_NET_ADMIN` (to attach again to an interface
/// that comes back, and to remove clsact filters at exit), plus what the running kernel
/// needs for the map reads of every poll.
///
/// Kernels before 6.5 with `kernel.unprivileged_bpf_disabled` set (Debian's default) refuse
/// every `bpf()` call, even on a map descriptor the process already holds, without `CAP_BPF`
/// (Linux 5.8+) or `CAP_SYS_ADMIN` (before 5.8, the only one): `__sys_bpf` checked it at
/// entry (<https://elixir.bootlin.com/linux/v6.1/source/kernel/bpf/syscall.c>, `__sys_bpf`), 6.5 moved the check into map
/// creation and program load (<https://elixir.bootlin.com/linux/v6.6/source/kernel/bpf/syscall.c>, `map_create`,
/// `bpf_prog_load`; in `cargo xtask vm-test` Debian's 5.10 refuses, its 6.1 does not). Distributions backport such changes, so the kernel is
/// asked rather than guessed from its version: `probe(None)` makes a harmless `bpf()` call with only `CAP_NET_ADMIN`
/// effective; if it is refused, `probe(Some(cap))` tries again with `cap` raised, for
/// `CAP_BPF` then `CAP_SYS_ADMIN`, those in `permitted` only. The first that works is kept.
/// If none does, every permitted capability is kept: something other than privileges is
/// wrong, and the poll will say what. Errors of `probe` itself (raising a capability) are
/// returned as they are.
pub(crate) fn keep_after_attach<E>(
    permitted: &CapsHashSet,
    probe: &mut dyn FnMut(Option<Cap>) -> Result<BpfProbe, E>,
) -> Result<CapsHashSet, E> {
    let base: CapsHashSet = permitted
        .iter()
        .copied()
        .filter(|&cap| cap == Cap::CAP_NET_ADMIN)
        .collect();
    if probe(None)? != BpfProbe::Refused {
        return Ok(base);
    }
    for cap in [Cap::CAP_BPF, Cap::CAP_SYS_ADMIN] {
        if !permitted.contains(&cap) {
            continue;
        }
        if probe(Some(cap))? != BpfProbe::Refused {
            log::debug!(
                "this kernel refuses bpf() without {cap} (kernel.unprivileged_bpf_disabled \
                 before Linux 5.19): keeping {cap}"
            );
            let mut keep = base;
            keep.insert(cap);
            return Ok(keep);
        }
    }
    log::debug!("bpf() is refused even with CAP_BPF and CAP_SYS_ADMIN: keeping every capability");
    Ok(permitted.clone())
}

/// Once the programs are loaded and attached, drops every capability the kernel does not
/// need for the rest of the run (see [`keep_after_attach`]) for good. `CAP_NET_ADMIN` stays
/// inheritable and ambient too: the nft netwatch runs (rule texts, the `--trace-rules` table,
/// removed at exit) reads and changes this namespace's ruleset, and a netwatch that is not
/// root passes it on only that way. `bpf_call` makes a
/// harmless `bpf()` call on one of netwatch's maps with the effective set as it is.
/// Capabilities are first lowered in the effective set only (still permitted, so they can be
/// raised again), then the permitted set follows.
pub(crate) fn drop_after_attach(
    bpf_call: &mut dyn FnMut() -> BpfProbe,
) -> Result<(), caps::errors::CapsError> {
    let permitted = caps::read(None, CapSet::Permitted)?;
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    let base: CapsHashSet = permitted
        .iter()
        .copied()
        .filter(|&cap| cap == Cap::CAP_NET_ADMIN)
        .collect();
    let keep = keep_after_attach::<caps::errors::CapsError>(&permitted, &mut |extra| {
        let mut effective = base.clone();
        effective.extend(extra);
        caps::set(None, CapSet::Effective, &effective)?;
        Ok(bpf_call())
    })?;
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    if keep.contains(&Cap::CAP_NET_ADMIN) {
        caps::raise(None, CapSet::Inheritable, Cap::CAP_NET_ADMIN)?;
        caps::raise(None, CapSet::Ambient, Cap::CAP_NET_ADMIN)?;
    }
    Ok(())
}

/// Checks this process has what it needs.
pub(crate) fn require() -> Result<(), PrivilegeError> {
    let effective = caps::read(None, CapSet::Effective)
        .map_err(|err| PrivilegeError::Unreadable(err.to_string()))?;
    let missing = missing(&effective);
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = missing.iter().map(ToString::to_string).collect();
    Err(PrivilegeError::Missing {
        missing: names.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_everything() {
        assert!(missing(&caps::all()).is_empty());
    }

    #[test]
    fn names_what_is_missing() {
        let set = |list: &[Cap]| list.iter().copied().collect::<CapsHashSet>();
        assert_eq!(
            missing(&set(&[])),
            vec![Cap::CAP_BPF, Cap::CAP_NET_ADMIN, Cap::CAP_PERFMON]
        );
        assert_eq!(
            missing(&set(&[Cap::CAP_BPF, Cap::CAP_PERFMON])),
            vec![Cap::CAP_NET_ADMIN]
        );
        assert!(missing(&set(&[Cap::CAP_BPF, Cap::CAP_NET_ADMIN, Cap::CAP_PERFMON])).is_empty());
        assert!(missing(&set(&[Cap::CAP_SYS_ADMIN, Cap::CAP_NET_ADMIN])).is_empty());
        assert_eq!(Cap::CAP_NET_ADMIN.to_string(), "CAP_NET_ADMIN");
    }

    fn caps(list: &[Cap]) -> CapsHashSet {
        list.iter().copied().collect()
    }

    /// A kernel that refuses `bpf()` unless one of `needs` is raised (none: never refuses),
    /// and the probes it saw.
    fn kernel(needs: &'static [Cap]) -> impl FnMut(Option<Cap>) -> Result<BpfProbe, ()> + use<> {
        move |extra| {
            Ok(
                if needs.is_empty() || extra.is_some_and(|cap| needs.contains(&cap)) {
                    BpfProbe::Allowed
                } else {
                    BpfProbe::Refused
                },
            )
        }
    }

    const ROOT: &[Cap] = &[
        Cap::CAP_NET_ADMIN,
        Cap::CAP_BPF,
        Cap::CAP_PERFMON,
        Cap::CAP_SYS_ADMIN,
        Cap::CAP_CHOWN,
    ];

    #[test]
    fn a_kernel_that_lets_bpf_through_keeps_only_net_admin() {
        let keep = keep_after_attach(&caps(ROOT), &mut kernel(&[])).unwrap();
        assert_eq!(keep, caps(&[Cap::CAP_NET_ADMIN]));
        let least = caps(&[Cap::CAP_NET_ADMIN, Cap::CAP_BPF, Cap::CAP_PERFMON]);
        let keep = keep_after_attach(&least, &mut kernel(&[])).unwrap();
        assert_eq!(keep, caps(&[Cap::CAP_NET_ADMIN]));
    }

    #[test]
    fn unprivileged_bpf_disabled_keeps_cap_bpf() {
        // 5.8 to 5.18: CAP_BPF or CAP_SYS_ADMIN will do; CAP_BPF is the smaller.
        let mut seen = Vec::new();
        let mut probe = kernel(&[Cap::CAP_BPF, Cap::CAP_SYS_ADMIN]);
        let keep = keep_after_attach(&caps(ROOT), &mut |extra| {
            seen.push(extra);
            probe(extra)
        })
        .unwrap();
        assert_eq!(keep, caps(&[Cap::CAP_NET_ADMIN, Cap::CAP_BPF]));
        assert_eq!(seen, vec![None, Some(Cap::CAP_BPF)]);
        // Granted exactly CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON.
        let least = caps(&[Cap::CAP_NET_ADMIN, Cap::CAP_BPF, Cap::CAP_PERFMON]);
        let keep = keep_after_attach(&least, &mut kernel(&[Cap::CAP_BPF])).unwrap();
        assert_eq!(keep, caps(&[Cap::CAP_NET_ADMIN, Cap::CAP_BPF]));
    }

    #[test]
    fn before_cap_bpf_existed_cap_sys_admin_is_kept() {
        // Before 5.8 the kernel knows no CAP_BPF: it is never permitted.
        let permitted = caps(&[Cap::CAP_NET_ADMIN, Cap::CAP_SYS_ADMIN]);
        let keep = keep_after_attach(&permitted, &mut kernel(&[Cap::CAP_SYS_ADMIN])).unwrap();
        assert_eq!(keep, permitted);
    }

    #[test]
    fn refused_whatever_is_raised_keeps_everything() {
        let keep = keep_after_attach(&caps(ROOT), &mut kernel(&[Cap::CAP_SETUID])).unwrap();
        assert_eq!(keep, caps(ROOT));
    }

    #[test]
    fn other_errors_are_not_about_privileges() {
        let mut probe = |_| Ok::<_, ()>(BpfProbe::Failed(Some(libc::EBADF)));
        let keep = keep_after_attach(&caps(ROOT), &mut probe).unwrap();
        assert_eq!(keep, caps(&[Cap::CAP_NET_ADMIN]));
        let mut failing = |_| Err::<BpfProbe, _>("capset failed");
        assert_eq!(
            keep_after_attach(&caps(ROOT), &mut failing),
            Err("capset failed")
        );
    }

    #[test]
    fn probe_results_from_errno() {
        assert_eq!(BpfProbe::from_result(Ok(())), BpfProbe::Allowed);
        assert_eq!(
            BpfProbe::from_result(Err(Some(libc::EPERM))),
            BpfProbe::Refused
        );
        assert_eq!(
            BpfProbe::from_result(Err(Some(libc::EACCES))),
            BpfProbe::Failed(Some(libc::EACCES))
        );
        assert_eq!(BpfProbe::from_result(Err(None)), BpfProbe::Failed(None));
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

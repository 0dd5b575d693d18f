//! Exit statuses, and which failures a restart cannot mend.
//!
//! A service manager restarts a failed netwatch (the systemd unit: `Restart=on-failure`).
//! That helps when the failure may pass (an interface not up yet, a map read that failed);
//! it only loops when this host cannot run netwatch as asked. Those failures exit with
//! [`CANNOT_RUN_HERE`], which the unit names in `RestartPreventExitStatus=`.

use crate::{
    clock::ClockError, interfaces::InterfaceError, privileges::PrivilegeError, probe::ProbeError,
};

/// An error that may pass: trying again later can work.
pub const ERROR: u8 = 1;
/// Bad usage: the command line is wrong.
pub const USAGE: u8 = 2;
/// `--fail-on` matched a target's final verdict.
pub const FAIL_ON_MATCHED: u8 = 3;
/// This host cannot run netwatch as asked, and will not by itself: the kernel is too old or
/// cannot load the programs, a capability is missing, a named interface does not exist or
/// cannot be watched, the time namespace's offset is unreadable.
pub const CANNOT_RUN_HERE: u8 = 4;

/// The exit status for a run that failed with `err`.
#[must_use]
pub fn status_of(err: &anyhow::Error) -> u8 {
    if err.chain().any(cannot_run_here) {
        CANNOT_RUN_HERE
    } else {
        ERROR
    }
}

fn cannot_run_here(cause: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(err) = cause.downcast_ref::<ProbeError>() {
        return matches!(
            err,
            ProbeError::KernelTooOld(_)
                | ProbeError::Unsupported(_)
                | ProbeError::Mmap(_)
                | ProbeError::Refused { .. }
        );
    }
    if let Some(err) = cause.downcast_ref::<InterfaceError>() {
        // No default route may be a network still coming up: that one can pass.
        return matches!(
            err,
            InterfaceError::NotFound(_) | InterfaceError::Unwatchable(_)
        );
    }
    if let Some(err) = cause.downcast_ref::<PrivilegeError>() {
        return matches!(err, PrivilegeError::Missing { .. });
    }
    cause.downcast_ref::<ClockError>().is_some()
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    use super::*;

    #[test]
    fn failures_a_restart_cannot_mend_exit_4() {
        let permanent: Vec<anyhow::Error> = vec![
            ProbeError::KernelTooOld("4.19.0".into()).into(),
            ProbeError::Unsupported("EINVAL".into()).into(),
            InterfaceError::NotFound("nosuch0".into()).into(),
            PrivilegeError::Missing {
                missing: "CAP_BPF".into(),
            }
            .into(),
            ClockError::Unparsable("monotonic x".into()).into(),
            // Wrapped in context, as the run loop may.
            anyhow::Error::from(InterfaceError::NotFound("eth9".into())).context("resolving"),
        ];
        for err in &permanent {
            assert_eq!(status_of(err), CANNOT_RUN_HERE, "{err:#}");
        }
    }

    #[test]
    fn failures_that_may_pass_exit_1() {
        let passing: Vec<anyhow::Error> = vec![
            InterfaceError::NoDefaultRoute.into(),
            ProbeError::Attach {
                iface: "eth0".into(),
                reason: "EBUSY".into(),
            }
            .into(),
            ProbeError::Load("out of memory".into()).into(),
            Err::<(), _>(std::io::Error::other("address in use"))
                .context("binding the metrics port")
                .unwrap_err(),
        ];
        for err in &passing {
            assert_eq!(status_of(err), ERROR, "{err:#}");
        }
    }
}

//! Whether another netwatch watches an interface, answered by the kernel's file locks.
//!
//! clsact filters outlive the process that added them: after a SIGKILL nobody removes a
//! netwatch's filters, and they keep running on every packet. They are orphans exactly when
//! no live netwatch watches the interface — and a live one's filters must never be taken
//! for orphans. Each netwatch holds a shared `flock` on `/run/netwatch/<iface>.net<inode>.lock`
//! (the inode of its network namespace: an interface name is per namespace) for as long as
//! it watches the interface; the kernel releases it when the process dies, however it dies
//! (its files are closed, and closing the last descriptor of an open file releases its
//! `flock`: <https://elixir.bootlin.com/linux/v6.12/source/fs/locks.c>, `locks_remove_file`).
//! A netwatch that can take the lock exclusively is the only one there. That holds for
//! renamed binaries, other PID namespaces and `ProtectProc=invisible`, where a scan of /proc
//! for a process name does not.
//!
//! Claims are serialised by an exclusive lock on the directory, held only while claiming: the
//! probe for other holders and taking the shared lock happen as one step. Lock files stay
//! after exit (removing them would race with a netwatch opening one); they are empty.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

/// Where the lock files are: tmpfs, per boot.
pub(crate) const LOCK_DIR: &str = "/run/netwatch";

/// This netwatch watches an interface for as long as this is held.
#[derive(Debug)]
pub(crate) struct InterfaceLock {
    _file: File,
}

/// The outcome of claiming an interface.
#[derive(Debug)]
pub(crate) struct Claim {
    pub lock: InterfaceLock,
    /// No other live netwatch watches the interface: netwatch filters on it are orphans.
    pub alone: bool,
}

/// The lock file of `iface` in the network namespace with inode `netns`.
#[must_use]
pub(crate) fn lock_path(dir: &Path, iface: &str, netns: u64) -> PathBuf {
    dir.join(format!("{iface}.net{netns}.lock"))
}

/// The inode of this process's network namespace.
pub(crate) fn own_netns() -> io::Result<u64> {
    Ok(fs::metadata("/proc/self/ns/net")?.ino())
}

/// Claims `iface` in this network namespace under [`LOCK_DIR`].
pub(crate) fn claim(iface: &str) -> io::Result<Claim> {
    claim_in(Path::new(LOCK_DIR), iface, own_netns()?)
}

/// Claims `iface` (in namespace `netns`) with lock files in `dir`.
pub(crate) fn claim_in(dir: &Path, iface: &str, netns: u64) -> io::Result<Claim> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)?;
    let serialise = File::open(dir)?;
    serialise.lock()?;
    let path = lock_path(dir, iface, netns);
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            // A file another user made (a root netwatch, where the service runs as its own
            // user): a shared lock needs only reading.
            .or_else(|err| match err.kind() {
                io::ErrorKind::PermissionDenied => File::open(&path),
                _ => Err(err),
            })
    };
    let file = open()?;
    // Another open file description: its exclusive lock conflicts with every holder's
    // shared one, including ours were we to take it first.
    let alone = match open()?.try_lock() {
        Ok(()) => true,
        Err(fs::TryLockError::WouldBlock) => false,
        Err(fs::TryLockError::Error(err)) => return Err(err),
    };
    // Cannot block: only claims take the lock exclusively, and they hold the directory lock.
    file.lock_shared()?;
    Ok(Claim {
        lock: InterfaceLock { _file: file },
        alone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("netwatch-lock-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_first_claim_is_alone_and_later_ones_see_it_until_it_is_released() {
        let dir = scratch("claims");
        let first = claim_in(&dir, "eth0", 1).expect("first claim");
        assert!(first.alone);
        let second = claim_in(&dir, "eth0", 1).expect("second claim");
        assert!(!second.alone, "the first still holds its lock");
        drop(first);
        let third = claim_in(&dir, "eth0", 1).expect("third claim");
        assert!(!third.alone, "the second still holds its lock");
        drop(second);
        drop(third);
        assert!(claim_in(&dir, "eth0", 1).expect("fourth claim").alone);
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn interfaces_and_namespaces_are_claimed_apart() {
        let dir = scratch("apart");
        let _eth0 = claim_in(&dir, "eth0", 1).expect("claim");
        assert!(claim_in(&dir, "eth1", 1).expect("claim").alone);
        assert!(
            claim_in(&dir, "eth0", 2).expect("claim").alone,
            "the same name in another network namespace is another interface"
        );
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_lock_file_names_the_interface_and_its_namespace() {
        assert_eq!(
            lock_path(Path::new(LOCK_DIR), "eth0", 4_026_531_840),
            Path::new("/run/netwatch/eth0.net4026531840.lock")
        );
    }
}

//! The host side of attribution: the cgroup2 tree, `sock_diag` (typed, in
//! [`crate::sock_diag`]) and `/proc`.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::{Host, SocketProcess, escape};

/// Directories of the cgroup tree walked at most (a bound on a pathological host).
const MAX_CGROUPS: usize = 100_000;

/// Where cgroup v2 is mounted, from `/proc/mounts` (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on hybrid hosts); `None` without cgroup2.
#[must_use]
pub fn cgroup2_mount(proc_mounts: &str) -> Option<PathBuf> {
    proc_mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount(dir)))
    })
}

/// `/proc/mounts` escapes space, tab, newline and backslash as octal.
fn unescape_mount(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 4);
        if let Some(byte) = code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            out.push(char::from(byte));
            rest = &rest[at + 4..];
        } else {
            out.push('\\');
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// The cgroup v2 path of a process from `/proc/PID/cgroup` (its `0::` line), escaped as
/// the names of the cgroup tree are.
#[must_use]
pub fn unified_cgroup(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(|path| escape(path.trim_end_matches(" (deleted)").as_bytes()))
}

/// The inode of a `/proc/PID/fd/N` link to a socket (`socket:[12345]`).
#[must_use]
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The host itself.
#[derive(Debug)]
pub struct RealHost {
    cgroup2: Option<PathBuf>,
}

impl RealHost {
    #[must_use]
    pub fn new(cgroup2: Option<PathBuf>) -> Self {
        Self { cgroup2 }
    }
}

impl Host for RealHost {
    fn cgroup_paths(&mut self) -> HashMap<u64, String> {
        self.cgroup2
            .as_deref()
            .map(walk_cgroups)
            .unwrap_or_default()
    }

    fn socket_processes(&mut self) -> HashMap<u64, SocketProcess> {
        let cookies = match inet_sockets() {
            Ok(cookies) => cookies,
            Err(err) => {
                log::debug!("sock_diag dump failed: {err}");
                return HashMap::new();
            }
        };
        let owners = socket_owners_from_proc();
        cookies
            .into_iter()
            .filter_map(|(cookie, inode)| Some((cookie, owners.get(&inode)?.clone())))
            .collect()
    }

    fn process_name(&mut self, tgid: u32, thread: u32, thread_comm: &str) -> Option<String> {
        let read = |path: String| {
            fs::read(path)
                .ok()
                .map(|c| escape(c.strip_suffix(b"\n").unwrap_or(&c)))
        };
        (read(format!("/proc/{tgid}/task/{thread}/comm"))? == thread_comm)
            .then(|| read(format!("/proc/{tgid}/comm")))
            .flatten()
    }
}

/// cgroup id (directory inode) → path relative to `mount` (`/` for the root).
fn walk_cgroups(mount: &Path) -> HashMap<u64, String> {
    let mut out = HashMap::new();
    let mut stack = vec![(mount.to_path_buf(), String::new())];
    while let Some((dir, relative)) = stack.pop() {
        if out.len() >= MAX_CGROUPS {
            break;
        }
        let Ok(meta) = fs::metadata(&dir) else {
            continue;
        };
        out.insert(
            meta.ino(),
            if relative.is_empty() {
                "/".to_owned()
            } else {
                relative.clone()
            },
        );
        let Ok(children) = fs::read_dir(&dir) else {
            continue;
        };
        for child in children.flatten() {
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                let name = escape(child.file_name().as_encoded_bytes());
                stack.push((child.path(), format!("{relative}/{name}")));
            }
        }
    }
    out
}

/// Socket inode → the process holding it, its name and cgroup path, from `/proc/*/fd`.
fn socket_owners_from_proc() -> HashMap<u64, SocketProcess> {
    let mut out = HashMap::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let mut process: Option<SocketProcess> = None;
        for fd in fds.flatten() {
            let Some(inode) = fs::read_link(fd.path())
                .ok()
                .and_then(|link| socket_inode(link.to_str()?))
            else {
                continue;
            };
            let found = process.get_or_insert_with(|| SocketProcess {
                pid,
                comm: fs::read(entry.path().join("comm"))
                    .map(|c| escape(c.strip_suffix(b"\n").unwrap_or(&c)))
                    .unwrap_or_default(),
                cgroup: fs::read_to_string(entry.path().join("cgroup"))
                    .ok()
                    .and_then(|text| unified_cgroup(&text))
                    .unwrap_or_default(),
            });
            out.entry(inode).or_insert_with(|| found.clone());
        }
    }
    out
}

/// Every TCP and UDP socket of this network namespace: (cookie, inode).
fn inet_sockets() -> std::io::Result<Vec<(u64, u64)>> {
    crate::sock_diag::SockDiag::new()?.inet_sockets()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_wherever_it_is() {
        let hybrid = "sysfs /sys sysfs rw 0 0\n\
            tmpfs /sys/fs/cgroup tmpfs ro 0 0\n\
            cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nsdelegate 0 0\n\
            cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            cgroup2_mount("none /a\\040b cgroup2 rw 0 0\n"),
            Some(PathBuf::from("/a b"))
        );
        assert_eq!(
            cgroup2_mount("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"),
            None
        );
    }

    #[test]
    fn proc_files_are_read_as_the_kernel_writes_them() {
        let v1_and_v2 = "12:memory:/user.slice\n1:name=systemd:/user.slice/x.scope\n\
            0::/system.slice/payments.service\n";
        assert_eq!(
            unified_cgroup(v1_and_v2).as_deref(),
            Some("/system.slice/payments.service")
        );
        assert_eq!(unified_cgroup("0::/\n").as_deref(), Some("/"));
        assert_eq!(unified_cgroup("3:cpu:/x\n"), None);
        assert_eq!(socket_inode("socket:[4242]"), Some(4242));
        assert_eq!(socket_inode("pipe:[4242]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }
}

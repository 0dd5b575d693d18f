//! The host side of attribution: the cgroup2 tree, `sock_diag` and `/proc`.

use std::{
    collections::HashMap,
    fs,
    mem::size_of,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
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

// Netlink `sock_diag` (linux/inet_diag.h, linux/sock_diag.h).
const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_HDR_LEN: usize = 16;
/// `NLMSG_ERROR`, `NLMSG_DONE` (linux/netlink.h).
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `AF_INET`, `AF_INET6`, `IPPROTO_TCP`, `IPPROTO_UDP` as the request's bytes.
const FAMILIES: [u8; 2] = [2, 10];
const PROTOCOLS: [u8; 2] = [6, 17];
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg`: the cookie at 44..52, the inode at 68..72.
const MSG_LEN: usize = 72;

/// Every TCP and UDP socket of this network namespace: (cookie, inode).
fn inet_sockets() -> std::io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for family in FAMILIES {
        for protocol in PROTOCOLS {
            out.extend(dump(family, protocol)?);
        }
    }
    Ok(out)
}

fn dump(family: u8, protocol: u8) -> std::io::Result<Vec<(u64, u64)>> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned by socket(2), owned by nobody else.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut request = [0u8; NLMSG_HDR_LEN + REQ_LEN];
    #[expect(clippy::cast_possible_truncation, reason = "72 bytes")]
    let length = request.len() as u32;
    request[0..4].copy_from_slice(&length.to_ne_bytes());
    request[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    #[expect(clippy::cast_possible_truncation, reason = "netlink flags fit in u16")]
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    request[6..8].copy_from_slice(&flags.to_ne_bytes());
    request[8..12].copy_from_slice(&1u32.to_ne_bytes());
    request[16] = family;
    request[17] = protocol;
    // idiag_states: every state.
    request[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
    // SAFETY: sends the request buffer; the kernel address is zeroed (pid 0, no groups).
    let sent = unsafe {
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::sa_family_t::try_from(libc::AF_NETLINK).unwrap_or_default();
        libc::sendto(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
            (&raw const kernel).cast(),
            libc::socklen_t::try_from(size_of::<libc::sockaddr_nl>()).unwrap_or_default(),
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receives into a buffer of the length given.
        let got = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        let Ok(got) = usize::try_from(got) else {
            return Err(std::io::Error::last_os_error());
        };
        if got == 0 || parse_messages(&buffer[..got], &mut out) {
            return Ok(out);
        }
    }
}

/// Adds the (cookie, inode) of each `inet_diag_msg` in `bytes`; true at the end of the dump
/// (`NLMSG_DONE` or an error).
#[must_use]
pub fn parse_messages(bytes: &[u8], out: &mut Vec<(u64, u64)>) -> bool {
    let mut offset = 0;
    while offset + NLMSG_HDR_LEN <= bytes.len() {
        let word = |at: usize| {
            bytes
                .get(at..at + 4)
                .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        };
        let len = word(offset) as usize;
        let kind = bytes
            .get(offset + 4..offset + 6)
            .map_or(0, |b| u16::from_ne_bytes([b[0], b[1]]));
        if len < NLMSG_HDR_LEN || offset + len > bytes.len() {
            return true;
        }
        match kind {
            NLMSG_DONE | NLMSG_ERROR => return true,
            SOCK_DIAG_BY_FAMILY if len >= NLMSG_HDR_LEN + MSG_LEN => {
                let msg = offset + NLMSG_HDR_LEN;
                let cookie = u64::from(word(msg + 44)) | (u64::from(word(msg + 48)) << 32);
                let inode = u64::from(word(msg + 68));
                if inode != 0 {
                    out.push((cookie, inode));
                }
            }
            _ => {}
        }
        // NLMSG_ALIGN
        offset += (len + 3) & !3;
    }
    false
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

    fn message(kind: u16, cookie: u64, inode: u32) -> Vec<u8> {
        let len = NLMSG_HDR_LEN + MSG_LEN;
        let mut m = vec![0u8; len];
        m[0..4].copy_from_slice(&u32::try_from(len).unwrap().to_ne_bytes());
        m[4..6].copy_from_slice(&kind.to_ne_bytes());
        let msg = NLMSG_HDR_LEN;
        m[msg + 44..msg + 48]
            .copy_from_slice(&u32::try_from(cookie & 0xffff_ffff).unwrap().to_ne_bytes());
        m[msg + 48..msg + 52].copy_from_slice(&u32::try_from(cookie >> 32).unwrap().to_ne_bytes());
        m[msg + 68..msg + 72].copy_from_slice(&inode.to_ne_bytes());
        m
    }

    #[test]
    fn inet_diag_messages_give_cookies_and_inodes() {
        let mut bytes = message(SOCK_DIAG_BY_FAMILY, 0x1_0000_0002, 77);
        bytes.extend(message(SOCK_DIAG_BY_FAMILY, 9, 0));
        let mut out = Vec::new();
        assert!(!parse_messages(&bytes, &mut out), "no NLMSG_DONE yet");
        assert_eq!(out, vec![(0x1_0000_0002, 77)]);
        let done = message(NLMSG_DONE, 0, 0);
        assert!(parse_messages(&done, &mut out));
        // A truncated message ends the parse without reading past it.
        let mut short = message(SOCK_DIAG_BY_FAMILY, 1, 1);
        short.truncate(30);
        assert!(parse_messages(&short, &mut out));
        assert_eq!(out.len(), 1);
    }
}

//! Who sent it: the process and cgroup behind each request this host sends.
//!
//! The cgroup socket programs (`netwatch-ebpf/src/owners.rs`) record socket cookie → owner
//! (process id, `comm`, cgroup id) in process context; tc egress records each request's
//! socket cookie and cgroup id in its pending entry. Here the two are joined: a cookie is
//! looked up in the kernel's owner map, else among the sockets that existed before netwatch
//! started ([`host::socket_processes`]: `sock_diag` cookies and inodes matched to
//! `/proc/*/fd`), and cgroup ids are turned into paths under the cgroup2 mount. What cannot
//! be joined stays unattributed: an empty list, never a guess.
//!
//! The join is plain functions over plain data; the I/O it needs comes through [`Host`].

pub mod host;

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
};

use netwatch_common::{DIRECTION_EGRESS, PendingRequest, RequestKey, SocketOwner, TargetKey};
use serde::Serialize;

/// Processes kept per target, most recent first.
pub const PROCESSES_PER_TARGET: usize = 8;

/// Cookies remembered (joined or not) before the caches start over.
const CACHE_LIMIT: usize = 65_536;
/// Requests waiting for their owner to be found, at most.
const RETRY_LIMIT: usize = 1_024;
/// Polls a request is retried before it stays unattributed.
const RETRY_POLLS: u8 = 8;
/// How much earlier than the latest request read a request may be put in the pending table
/// after the read: another CPU stamps it, then inserts it, while the table is being read.
const LATE_INSERT_NS: u64 = 100_000_000;
/// Least time between two walks of the cgroup tree or two `sock_diag` dumps.
const REFRESH_NS: u64 = 1_000_000_000;

/// One process behind a target's requests.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Process {
    pub pid: u32,
    /// The process name (`comm`), escaped.
    pub comm: String,
    /// The cgroup v2 path relative to the cgroup2 mount (`/system.slice/x.service`); empty
    /// when unknown.
    pub cgroup: String,
}

/// A socket found by [`Host::socket_processes`]: its process, and that process's cgroup
/// path as `/proc/PID/cgroup` gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketProcess {
    pub pid: u32,
    pub comm: String,
    pub cgroup: String,
}

/// What the join needs from the host.
pub trait Host {
    /// cgroup id (the inode of its directory) → path relative to the cgroup2 mount.
    fn cgroup_paths(&mut self) -> HashMap<u64, String>;
    /// Socket cookie → process holding it, for the sockets open now.
    fn socket_processes(&mut self) -> HashMap<u64, SocketProcess>;
    /// The name (escaped) of process `tgid`, provided its thread `thread` is still there and
    /// still called `thread_comm` (escaped): the same process, not a reused id.
    fn process_name(&mut self, tgid: u32, thread: u32, thread_comm: &str) -> Option<String>;
}

/// Where a socket's owner comes from, the kernel's owner map first.
pub trait OwnerLookup {
    fn socket_owner(&mut self, cookie: u64) -> Option<SocketOwner>;
}

/// The owner of a socket from the kernel's record: `None` without a process id. `process`
/// is the process's own name when known (the kernel recorded its thread's).
#[must_use]
pub fn from_owner(
    owner: &SocketOwner,
    process: Option<String>,
    cgroup: Option<&str>,
) -> Option<Process> {
    (owner.tgid != 0).then(|| Process {
        pid: owner.tgid,
        comm: process.unwrap_or_else(|| escape_comm(&owner.comm)),
        cgroup: cgroup.unwrap_or_default().to_owned(),
    })
}

/// The owner of a socket found through `/proc`; the socket's own cgroup (from tc) wins over
/// the process's when known.
#[must_use]
pub fn from_socket_process(found: &SocketProcess, socket_cgroup: Option<&str>) -> Process {
    Process {
        pid: found.pid,
        comm: found.comm.clone(),
        cgroup: socket_cgroup.map_or_else(|| found.cgroup.clone(), str::to_owned),
    }
}

/// `comm` bytes up to the first NUL, printable ASCII kept, anything else `\xNN`.
#[must_use]
pub fn escape_comm(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    escape(&bytes[..end])
}

/// Printable ASCII kept (not `\`), anything else `\xNN`.
#[must_use]
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_graphic() && b != b'\\' || b == b' ' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// Puts `process` first in `list`, keeping at most [`PROCESSES_PER_TARGET`].
pub fn remember(list: &mut Vec<Process>, process: Process) {
    list.retain(|p| *p != process);
    list.insert(0, process);
    list.truncate(PROCESSES_PER_TARGET);
}

/// What the WHO column shows for a target: the unit or container its most recent process
/// runs in when the cgroup path names one, else its `comm`; `+N` for the others; empty when
/// unknown.
#[must_use]
pub fn who(processes: &[Process]) -> String {
    let Some(first) = processes.first() else {
        return String::new();
    };
    let name = unit_name(&first.cgroup).unwrap_or_else(|| first.comm.clone());
    let others = processes
        .iter()
        .skip(1)
        .filter(|p| unit_name(&p.cgroup).unwrap_or_else(|| p.comm.clone()) != name)
        .count();
    if others == 0 {
        name
    } else {
        format!("{name} +{others}")
    }
}

/// The unit (`payments.service`) or container (`docker:0123456789ab`) a cgroup path names.
#[must_use]
pub fn unit_name(cgroup: &str) -> Option<String> {
    let last = cgroup.rsplit('/').find(|c| !c.is_empty())?;
    for runtime in ["docker", "cri-containerd", "crio", "libpod"] {
        if let Some(id) = last
            .strip_prefix(runtime)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|rest| rest.strip_suffix(".scope"))
            .filter(|id| is_container_id(id))
        {
            return Some(format!("{runtime}:{}", &id[..12]));
        }
    }
    if is_container_id(last) {
        // cgroupfs drivers: /docker/<id>, /kubepods/.../<id>.
        return Some(format!("container:{}", &last[..12]));
    }
    last.strip_suffix(".service")
        .filter(|name| !name.is_empty())
        .map(|_| last.to_owned())
}

fn is_container_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A name for a process in prose: `curl (payments.service)`, `dig (/lab/a)`, `dig`.
#[must_use]
pub fn describe(process: &Process) -> String {
    match unit_name(&process.cgroup) {
        Some(unit) => format!("{} ({unit})", process.comm),
        None if process.cgroup.is_empty() || process.cgroup == "/" => process.comm.clone(),
        None => format!("{} ({})", process.comm, process.cgroup),
    }
}

/// A request waiting for its owner to be found.
#[derive(Clone, Copy, Debug)]
struct Waiting {
    target: TargetKey,
    cookie: u64,
    cgroup_id: u64,
    polls: u8,
}

/// The join across polls, with its caches.
#[derive(Debug, Default)]
pub struct Attribution {
    /// cgroup id → path, as of the last walk.
    cgroups: HashMap<u64, String>,
    cgroups_walked_ns: Option<u64>,
    /// Sockets open when last dumped.
    sockets: HashMap<u64, SocketProcess>,
    sockets_dumped_ns: Option<u64>,
    /// Cookies joined, with when: reused for [`REFRESH_NS`] only, since a socket passed to
    /// another process that then connects or sends is recorded again under its new owner.
    joined: HashMap<u64, (Process, u64)>,
    waiting: Vec<Waiting>,
    /// The latest `last_sent_ns` of the entries looked at: older ones were seen, except
    /// within [`LATE_INSERT_NS`] of it.
    seen_upto_ns: u64,
    /// Requests looked at within [`LATE_INSERT_NS`] of `seen_upto_ns`: (key, `last_sent_ns`).
    seen_lately: HashSet<(RequestKey, u64)>,
    /// Each target's latest socket as the kernel noted it
    /// (`TargetCounters::last_socket_cookie`), and the ones new since the last join.
    latest: HashMap<TargetKey, u64>,
    latest_changed: Vec<(TargetKey, u64)>,
}

impl Attribution {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the host once up front: sockets opened before netwatch started may close
    /// before their first request is seen.
    pub fn prime(&mut self, host: &mut dyn Host, now_ns: u64) {
        self.refresh_cgroups(host, now_ns);
        self.refresh_sockets(host, now_ns);
    }

    /// The (target, process) pairs for requests of `entries` (the pending table as read at
    /// `now_ns`) sent since the last call, oldest first, so that the most recent process
    /// of a target is remembered last.
    pub fn attribute(
        &mut self,
        owners: &mut dyn OwnerLookup,
        host: &mut dyn Host,
        entries: &[(RequestKey, PendingRequest)],
        now_ns: u64,
    ) -> Vec<(TargetKey, Process)> {
        // A join is reused for `REFRESH_NS` only: older ones would never be read again.
        self.joined
            .retain(|_, (_, at)| now_ns.saturating_sub(*at) < REFRESH_NS);
        if self.joined.len() > CACHE_LIMIT {
            self.joined.clear();
        }
        let since = self.seen_upto_ns.saturating_sub(LATE_INSERT_NS);
        let mut fresh: Vec<(u64, Waiting)> = entries
            .iter()
            .filter(|(key, request)| {
                key.direction == DIRECTION_EGRESS
                    && request.socket_cookie != 0
                    && request.last_sent_ns > since
                    && !self.seen_lately.contains(&(*key, request.last_sent_ns))
            })
            .map(|(key, request)| {
                (
                    request.last_sent_ns,
                    Waiting {
                        target: key.target(),
                        cookie: request.socket_cookie,
                        cgroup_id: request.cgroup_id,
                        polls: 0,
                    },
                )
            })
            .collect();
        for (key, request) in entries {
            if request.last_sent_ns > since {
                self.seen_lately.insert((*key, request.last_sent_ns));
            }
        }
        if let Some(latest) = fresh.iter().map(|(sent, _)| *sent).max() {
            self.seen_upto_ns = self.seen_upto_ns.max(latest);
        }
        let since = self.seen_upto_ns.saturating_sub(LATE_INSERT_NS);
        self.seen_lately.retain(|(_, sent)| *sent > since);
        fresh.sort_by_key(|(sent, _)| *sent);
        let mut todo = std::mem::take(&mut self.waiting);
        todo.extend(fresh.into_iter().map(|(_, w)| w));
        let mut out = Vec::new();
        let mut previous = None;
        for mut request in todo {
            // A burst from one socket is thousands of requests of one target and cookie in a
            // row: the first says it all (the process would only be remembered again).
            if previous.replace((request.target, request.cookie))
                == Some((request.target, request.cookie))
            {
                continue;
            }
            match self.join(owners, host, request.cookie, request.cgroup_id, now_ns) {
                Some(process) => out.push((request.target, process)),
                None if request.polls < RETRY_POLLS && self.waiting.len() < RETRY_LIMIT => {
                    request.polls += 1;
                    self.waiting.push(request);
                }
                None => {}
            }
        }
        out
    }

    /// Takes in the socket of `target`'s latest request (the kernel keeps it per target): a
    /// request answered before the pending table was read is gone from it, its target
    /// named all the same. Cheap per poll: only a socket not seen before for the target is
    /// joined (at [`Attribution::attribute_latest`]).
    pub fn observe_latest(&mut self, target: &TargetKey, cookie: u64) {
        if cookie == 0 || target.direction != DIRECTION_EGRESS {
            return;
        }
        if self.latest.insert(*target, cookie) != Some(cookie) {
            self.latest_changed.push((*target, cookie));
        }
    }

    /// The (target, process) pairs for the sockets [`Attribution::observe_latest`] took in
    /// since the last call. One not joined now (no owner recorded, no such socket open) is
    /// left: the pending table's entries name what they can.
    pub fn attribute_latest(
        &mut self,
        owners: &mut dyn OwnerLookup,
        host: &mut dyn Host,
        now_ns: u64,
    ) -> Vec<(TargetKey, Process)> {
        let changed = std::mem::take(&mut self.latest_changed);
        let mut out = Vec::new();
        for (target, cookie) in &changed {
            if let Some(process) = self.join(owners, host, *cookie, 0, now_ns) {
                out.push((*target, process));
            }
        }
        // The buffer's capacity is kept for the next poll.
        self.latest_changed = changed;
        self.latest_changed.clear();
        out
    }

    /// The process behind `cookie`: the kernel's record, else the sockets open before
    /// netwatch started (dumped again at most once a second).
    fn join(
        &mut self,
        owners: &mut dyn OwnerLookup,
        host: &mut dyn Host,
        cookie: u64,
        cgroup_id: u64,
        now_ns: u64,
    ) -> Option<Process> {
        if let Some((process, at)) = self.joined.get(&cookie)
            && now_ns.saturating_sub(*at) < REFRESH_NS
        {
            return Some(process.clone());
        }
        let process = if let Some(owner) = owners.socket_owner(cookie) {
            let cgroup = self.cgroup_path(host, owner.cgroup_id, now_ns);
            let name = host.process_name(owner.tgid, owner.tid, &escape_comm(&owner.comm));
            from_owner(&owner, name, cgroup.as_deref())
        } else {
            if !self.sockets.contains_key(&cookie) {
                self.refresh_sockets(host, now_ns);
            }
            let found = self.sockets.get(&cookie).cloned();
            found.map(|found| {
                let cgroup = (cgroup_id != 0)
                    .then(|| self.cgroup_path(host, cgroup_id, now_ns))
                    .flatten();
                from_socket_process(&found, cgroup.as_deref())
            })
        }?;
        self.joined.insert(cookie, (process.clone(), now_ns));
        Some(process)
    }

    fn cgroup_path(&mut self, host: &mut dyn Host, id: u64, now_ns: u64) -> Option<String> {
        if !self.cgroups.contains_key(&id) {
            self.refresh_cgroups(host, now_ns);
        }
        self.cgroups.get(&id).cloned()
    }

    fn refresh_cgroups(&mut self, host: &mut dyn Host, now_ns: u64) {
        if due(self.cgroups_walked_ns, now_ns) {
            self.cgroups = host.cgroup_paths();
            self.cgroups_walked_ns = Some(now_ns);
        }
    }

    fn refresh_sockets(&mut self, host: &mut dyn Host, now_ns: u64) {
        if due(self.sockets_dumped_ns, now_ns) {
            self.sockets = host.socket_processes();
            self.sockets_dumped_ns = Some(now_ns);
        }
    }
}

fn due(last: Option<u64>, now_ns: u64) -> bool {
    last.is_none_or(|last| now_ns.saturating_sub(last) >= REFRESH_NS)
}

#[cfg(test)]
mod tests {
    use netwatch_common::{DIRECTION_INGRESS, proto};

    use super::*;

    const S: u64 = 1_000_000_000;

    #[derive(Default)]
    struct FakeHost {
        cgroups: HashMap<u64, String>,
        sockets: HashMap<u64, SocketProcess>,
        walks: usize,
        dumps: usize,
    }

    impl Host for FakeHost {
        fn cgroup_paths(&mut self) -> HashMap<u64, String> {
            self.walks += 1;
            self.cgroups.clone()
        }
        fn socket_processes(&mut self) -> HashMap<u64, SocketProcess> {
            self.dumps += 1;
            self.sockets.clone()
        }
        fn process_name(&mut self, tgid: u32, thread: u32, thread_comm: &str) -> Option<String> {
            (tgid == 1234 && thread == 1235 && thread_comm == "isc-net-0000")
                .then(|| "dig".to_owned())
        }
    }

    #[derive(Default)]
    struct FakeOwners(HashMap<u64, SocketOwner>);

    impl OwnerLookup for FakeOwners {
        /// The owner stored under `cookie`, stamped with it as the kernel's slot is.
        fn socket_owner(&mut self, cookie: u64) -> Option<SocketOwner> {
            self.0
                .get(&cookie)
                .map(|owner| SocketOwner { cookie, ..*owner })
        }
    }

    fn owner(tgid: u32, comm: &str, cgroup_id: u64) -> SocketOwner {
        let mut name = [0u8; 16];
        name[..comm.len()].copy_from_slice(comm.as_bytes());
        SocketOwner {
            cookie: 0,
            cgroup_id,
            released_ns: 0,
            tgid,
            tid: tgid,
            comm: name,
        }
    }

    fn request(port: u16, cookie: u64, cgroup_id: u64, sent: u64) -> (RequestKey, PendingRequest) {
        let key = RequestKey {
            remote: netwatch_common::ipv4_mapped([198, 51, 100, 10]),
            local: netwatch_common::ipv4_mapped([203, 0, 113, 2]),
            remote_port: port,
            local_port: 40_000,
            tag: 0,
            proto: proto::TCP,
            direction: DIRECTION_EGRESS,
        };
        let mut pending = PendingRequest::sent_at(sent);
        pending.socket_cookie = cookie;
        pending.cgroup_id = cgroup_id;
        (key, pending)
    }

    fn process(pid: u32, comm: &str, cgroup: &str) -> Process {
        Process {
            pid,
            comm: comm.into(),
            cgroup: cgroup.into(),
        }
    }

    #[test]
    fn kernel_owners_are_joined_with_cgroup_paths() {
        let mut host = FakeHost::default();
        host.cgroups
            .insert(77, "/system.slice/payments.service".into());
        let mut owners = FakeOwners::default();
        owners.0.insert(5, owner(1234, "curl", 77));
        let mut attribution = Attribution::new();
        let entries = [request(443, 5, 77, S)];
        let found = attribution.attribute(&mut owners, &mut host, &entries, 2 * S);
        assert_eq!(
            found,
            vec![(
                entries[0].0.target(),
                process(1234, "curl", "/system.slice/payments.service")
            )]
        );
        // Reported once per send: the next poll has nothing new.
        assert!(
            attribution
                .attribute(&mut owners, &mut host, &entries, 3 * S)
                .is_empty()
        );
    }

    #[test]
    fn a_targets_latest_socket_names_it_once_its_requests_are_answered_and_gone() {
        let mut host = FakeHost::default();
        host.cgroups.insert(77, "/lab/curl".into());
        let mut owners = FakeOwners::default();
        owners.0.insert(5, owner(1234, "curl", 77));
        owners.0.insert(6, owner(4321, "wget", 77));
        let mut attribution = Attribution::new();
        let target = request(443, 5, 77, S).0.target();
        attribution.observe_latest(&target, 5);
        assert_eq!(
            attribution.attribute_latest(&mut owners, &mut host, 2 * S),
            vec![(target, process(1234, "curl", "/lab/curl"))]
        );
        // The same socket poll after poll: nothing new; another one: its process.
        attribution.observe_latest(&target, 5);
        assert!(
            attribution
                .attribute_latest(&mut owners, &mut host, 3 * S)
                .is_empty()
        );
        attribution.observe_latest(&target, 6);
        assert_eq!(
            attribution.attribute_latest(&mut owners, &mut host, 4 * S),
            vec![(target, process(4321, "wget", "/lab/curl"))]
        );
        // No socket yet, and requests this host received: nothing to name.
        attribution.observe_latest(&request(80, 0, 0, S).0.target(), 0);
        let inbound = TargetKey {
            direction: DIRECTION_INGRESS,
            ..target
        };
        attribution.observe_latest(&inbound, 5);
        assert!(
            attribution
                .attribute_latest(&mut owners, &mut host, 5 * S)
                .is_empty()
        );
    }

    #[test]
    fn a_burst_from_one_socket_is_one_pair_and_another_socket_between_is_kept() {
        let mut host = FakeHost::default();
        let mut owners = FakeOwners::default();
        owners.0.insert(5, owner(10, "traffic-gen", 0));
        owners.0.insert(6, owner(11, "dig", 0));
        let mut attribution = Attribution::new();
        // 1,000 requests from socket 5 (distinct local ports: distinct entries), then one
        // from socket 6, then socket 5 again: the most recent process is remembered last.
        let mut entries: Vec<_> = (0..1_000u16)
            .map(|i| {
                let (mut key, request) = request(53, 5, 0, S + u64::from(i));
                key.local_port = 20_000 + i;
                (key, request)
            })
            .collect();
        entries.push(request(53, 6, 0, S + 2_000));
        let (mut key, last) = request(53, 5, 0, S + 3_000);
        key.local_port = 30_000;
        entries.push((key, last));
        let found = attribution.attribute(&mut owners, &mut host, &entries, 2 * S);
        let target = entries[0].0.target();
        assert_eq!(
            found,
            vec![
                (target, process(10, "traffic-gen", "")),
                (target, process(11, "dig", "")),
                (target, process(10, "traffic-gen", "")),
            ]
        );
    }

    #[test]
    fn a_request_inserted_after_a_later_one_was_read_is_still_seen() {
        let mut host = FakeHost::default();
        let mut owners = FakeOwners::default();
        owners.0.insert(5, owner(10, "curl", 0));
        owners.0.insert(6, owner(11, "dig", 0));
        let mut attribution = Attribution::new();
        let later = request(443, 5, 0, S + 1_000);
        assert_eq!(
            attribution
                .attribute(&mut owners, &mut host, &[later], S + 2_000)
                .len(),
            1
        );
        // Sent a microsecond earlier on another CPU, in the table only by the next read.
        let earlier = request(53, 6, 0, S);
        let found = attribution.attribute(&mut owners, &mut host, &[later, earlier], S + 5_000);
        assert_eq!(found.len(), 1, "the earlier one, once; not the later again");
        assert_eq!(found[0].1.pid, 11);
    }

    #[test]
    fn a_socket_passed_to_another_process_is_named_after_its_new_owner() {
        let mut host = FakeHost::default();
        let mut owners = FakeOwners::default();
        owners.0.insert(5, owner(10, "parent", 0));
        let mut attribution = Attribution::new();
        let first = attribution.attribute(&mut owners, &mut host, &[request(53, 5, 0, S)], S);
        assert_eq!(first[0].1.pid, 10);
        owners.0.insert(5, owner(11, "child", 0));
        let later =
            attribution.attribute(&mut owners, &mut host, &[request(53, 5, 0, 3 * S)], 3 * S);
        assert_eq!(later[0].1.pid, 11, "the cached join expired");
    }

    #[test]
    fn threads_are_named_by_their_process() {
        let mut host = FakeHost::default();
        let mut owners = FakeOwners::default();
        let mut sender = owner(1234, "isc-net-0000", 0);
        sender.tid = 1235;
        owners.0.insert(5, sender);
        // The thread is gone (or its id reused by another): its own name, never a guess.
        let mut gone = owner(1234, "isc-net-0000", 0);
        gone.tid = 1236;
        owners.0.insert(6, gone);
        let found = Attribution::new().attribute(
            &mut owners,
            &mut host,
            &[request(53, 5, 0, S), request(54, 6, 0, S)],
            2 * S,
        );
        assert_eq!(found[0].1.comm, "dig");
        assert_eq!(found[1].1.comm, "isc-net-0000");
    }

    #[test]
    fn sockets_older_than_netwatch_are_found_through_proc() {
        let mut host = FakeHost::default();
        host.cgroups.insert(9, "/lab/early".into());
        host.sockets.insert(
            42,
            SocketProcess {
                pid: 99,
                comm: "python3".into(),
                cgroup: "/elsewhere".into(),
            },
        );
        let mut attribution = Attribution::new();
        let found = attribution.attribute(
            &mut FakeOwners::default(),
            &mut host,
            &[request(53, 42, 9, S)],
            2 * S,
        );
        assert_eq!(found[0].1, process(99, "python3", "/lab/early"));
    }

    #[test]
    fn unknown_sockets_stay_unattributed_and_are_given_up() {
        let mut host = FakeHost::default();
        let mut owners = FakeOwners::default();
        let mut attribution = Attribution::new();
        let entries = [request(443, 7, 0, S)];
        for poll in 0..20 {
            let found = attribution.attribute(&mut owners, &mut host, &entries, (2 + poll) * S);
            assert!(found.is_empty(), "a guess for an unknown socket");
        }
        assert!(attribution.waiting.is_empty(), "given up after a few polls");
        // At most one dump a second, however many misses.
        assert!(host.dumps <= 21);
        // The owner shows up later (a retry within RETRY_POLLS finds it).
        let mut attribution = Attribution::new();
        assert!(
            attribution
                .attribute(&mut owners, &mut host, &entries, 2 * S)
                .is_empty()
        );
        owners.0.insert(7, owner(5, "nc", 0));
        let found = attribution.attribute(&mut owners, &mut host, &[], 3 * S);
        assert_eq!(found[0].1, process(5, "nc", ""));
    }

    #[test]
    fn no_cookie_no_owner_and_inbound_requests_are_never_attributed() {
        let mut host = FakeHost::default();
        let mut owners = FakeOwners::default();
        owners.0.insert(0, owner(1, "init", 0));
        owners.0.insert(3, owner(2, "sshd", 0));
        let mut attribution = Attribution::new();
        let (mut key, pending) = request(22, 3, 0, S);
        key.direction = DIRECTION_INGRESS;
        let entries = [request(443, 0, 0, S), (key, pending)];
        assert!(
            attribution
                .attribute(&mut owners, &mut host, &entries, 2 * S)
                .is_empty()
        );
        // A kernel record without a process (pid 0) is no process.
        owners.0.insert(4, owner(0, "", 0));
        assert!(
            attribution
                .attribute(&mut owners, &mut host, &[request(443, 4, 0, 2 * S)], 3 * S)
                .is_empty()
        );
    }

    #[test]
    fn most_recent_first_and_bounded() {
        let mut list = Vec::new();
        for pid in 0..12 {
            remember(&mut list, process(pid, "dig", "/"));
        }
        remember(&mut list, process(5, "dig", "/"));
        assert_eq!(list.len(), PROCESSES_PER_TARGET);
        assert_eq!(list[0].pid, 5);
        assert_eq!(list[1].pid, 11);
        assert_eq!(list.iter().filter(|p| p.pid == 5).count(), 1);
    }

    #[test]
    fn who_names_units_and_containers_else_comm() {
        assert_eq!(who(&[]), "");
        assert_eq!(
            who(&[process(1, "curl", "/system.slice/payments.service")]),
            "payments.service"
        );
        assert_eq!(who(&[process(1, "dig", "/lab/a")]), "dig");
        let id = "0123456789abcdef".repeat(4);
        assert_eq!(
            who(&[process(
                1,
                "nginx",
                &format!("/system.slice/docker-{id}.scope")
            )]),
            "docker:0123456789ab"
        );
        assert_eq!(
            who(&[process(1, "x", &format!("/docker/{id}"))]),
            "container:0123456789ab"
        );
        assert_eq!(
            who(&[
                process(1, "curl", "/user.slice/session-2.scope"),
                process(2, "curl", "/user.slice/session-3.scope"),
                process(3, "dig", "/"),
            ]),
            "curl +1"
        );
        assert_eq!(
            describe(&process(1, "curl", "/system.slice/payments.service")),
            "curl (payments.service)"
        );
        assert_eq!(describe(&process(1, "dig", "/lab/a")), "dig (/lab/a)");
        assert_eq!(describe(&process(1, "dig", "")), "dig");
    }

    #[test]
    fn comm_is_escaped() {
        assert_eq!(escape_comm(b"curl\0\0\0\0"), "curl");
        assert_eq!(escape_comm(b"a\x1b[2Jb\\"), "a\\x1b[2Jb\\x5c");
    }
}

//! Who sent it (issue 13): the process and cgroup behind every failing request.
//!
//! Clients (dig, curl, nc, ping, python) run in cgroups this test makes under the cgroup2
//! mount (found in `/proc/mounts`: `/sys/fs/cgroup/unified` on this hybrid host), inside the
//! client namespace; netwatch names each failing target's process and cgroup. A socket
//! opened before netwatch started is named through `sock_diag` and `/proc`; forwarded traffic (netwatch on the firewall) stays
//! unattributed. The socket owner programs sit on every `connect()` of the host: with them
//! attached, and their map overflowed, not one `connect()` or `sendto()` fails.
//!
//! `ip netns exec` remounts `/sys` and so hides the cgroup2 mount (netwatch then says
//! attribution is unavailable): netwatch runs with cgroup2 mounted again in that mount
//! namespace.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use netwatch_common::{SOCKET_OWNERS_CAPACITY, SocketOwner};
use netwatch_tests::{
    lab::{
        CLIENT_IFACE, DNS_V4, DNS2_V4, Finished, Lab, Netns, NetwatchRun, OPEN_DNS, SERVER_V4,
        TargetId, netwatch_binary, target_id, wait_until,
    },
    prerequisites,
};
use serde_json::Value;

const LISTENER: &str = env!("CARGO_BIN_EXE_lab-listener");

static CGROUP_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The cgroup2 mount, from `/proc/mounts`.
fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
    mounts
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
        })
        .expect("no cgroup2 mount in /proc/mounts")
}

/// Cgroups made by this test under the cgroup2 mount, killed and removed on drop (a panic
/// too).
struct Cgroups {
    mount: PathBuf,
    /// Relative to the mount: `/netwatch-test-PID-N`.
    parent: String,
    children: Vec<String>,
}

impl Cgroups {
    fn new(names: &[&str]) -> Self {
        let mount = cgroup2_mount();
        let parent = format!(
            "/netwatch-test-{}-{}",
            std::process::id(),
            CGROUP_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let cgroups = Self {
            mount,
            parent,
            children: names.iter().map(|n| (*n).to_owned()).collect(),
        };
        std::fs::create_dir(cgroups.dir("")).expect("creating the test's cgroup");
        for name in names {
            std::fs::create_dir(cgroups.dir(name)).expect("creating a child cgroup");
        }
        cgroups
    }

    /// The cgroup's path as netwatch reports it: relative to the mount.
    fn path(&self, name: &str) -> String {
        if name.is_empty() {
            self.parent.clone()
        } else {
            format!("{}/{name}", self.parent)
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.mount.join(self.path(name).trim_start_matches('/'))
    }

    /// `program args…` in the namespace `ns`, started in the cgroup `name`: the shell moves
    /// itself there, then execs `ip netns exec` which execs the program (one pid throughout).
    fn command(&self, name: &str, ns: &Netns, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("sh");
        command
            .args([
                "-c",
                r#"echo $$ > "$0/cgroup.procs" && ns=$1 && shift && exec ip netns exec "$ns" "$@""#,
            ])
            .arg(self.dir(name))
            .arg(&ns.name)
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }
}

fn pids_in(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        let mut dirs: Vec<PathBuf> = self.children.iter().map(|n| self.dir(n)).collect();
        dirs.push(self.dir(""));
        for dir in &dirs {
            for pid in pids_in(dir) {
                // SAFETY: kill(2); the pids are processes this test put in its own cgroups.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for dir in &dirs {
            // A killed process leaves its cgroup when it is reaped: retry for a while.
            for _ in 0..100 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// netwatch in `ns`. `ip netns exec` mounts a fresh sysfs on `/sys` in a mount namespace of
/// its own, which hides the host's cgroup2 mount: it is mounted again there, at
/// `/sys/fs/cgroup` (the same hierarchy, so the same paths, at another mount point).
fn start_netwatch(ns: &Netns, iface: &str) -> NetwatchRun {
    let mut command = ns.command("sh");
    command
        .args([
            "-c",
            r#"mount -t cgroup2 none /sys/fs/cgroup && exec "$0" "$@""#,
        ])
        .arg(netwatch_binary())
        .args(["--json", "--iface", iface, "--timeout", "1s"]);
    NetwatchRun::start(command)
}

/// Children killed on drop.
struct Children(Vec<Child>);

impl Children {
    fn spawn(&mut self, mut command: Command) -> u32 {
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("could not start {command:?}: {err}"));
        let pid = child.id();
        self.0.push(child);
        pid
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn tcp(remote: &str, port: u64) -> TargetId {
    ("tcp".into(), remote.into(), Some(port))
}

fn udp(remote: &str, port: u64) -> TargetId {
    ("udp".into(), remote.into(), Some(port))
}

fn processes(record: &Value) -> Vec<(u64, String, String)> {
    record["processes"]
        .as_array()
        .unwrap_or_else(|| panic!("no processes list: {record}"))
        .iter()
        .map(|p| {
            (
                p["pid"].as_u64().expect("pid"),
                p["comm"].as_str().expect("comm").to_owned(),
                p["cgroup"].as_str().expect("cgroup").to_owned(),
            )
        })
        .collect()
}

fn names_target(finding: &Value, target: &TargetId) -> bool {
    finding["evidence"]
        .as_array()
        .is_some_and(|e| e.iter().any(|t| target_id(t) == *target))
}

fn egress_targets(finished: &Finished) -> BTreeMap<TargetId, Value> {
    finished
        .records
        .iter()
        .filter(|r| r["type"] == "target" && r["direction"] == "egress")
        .map(|r| (target_id(r), r.clone()))
        .collect()
}

/// A DNS query for `early.example` (A, IN), id 0x1234.
const EARLY_QUERY: &str = "123401000001000000000000056561726c79076578616d706c650000010001";

/// Opens a UDP socket connected to argv[1]:53, says it is ready (argv[2]), waits for argv[3]
/// (bounded), then sends one query on it and waits for an answer that never comes.
const EARLY_CLIENT: &str = r"
import os, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], 53))
open(sys.argv[2], 'w').close()
deadline = time.monotonic() + 60
while not os.path.exists(sys.argv[3]) and time.monotonic() < deadline:
    time.sleep(0.05)
s.send(bytes.fromhex(sys.argv[4]))
s.settimeout(4)
try:
    s.recv(512)
except OSError:
    pass
";

const PYTHON_CONNECT: &str = r"
import socket, sys
s = socket.socket()
s.settimeout(3)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
except OSError:
    pass
";

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn failing_targets_name_the_process_and_cgroup_behind_them() {
    const NAME: &str = "failing_targets_name_the_process_and_cgroup_behind_them";
    if !prerequisites(
        NAME,
        &["ip", "nft", "mount", "dig", "curl", "nc", "ping", "python3"],
    ) {
        return;
    }
    let lab = Lab::new();
    let cgroups = Cgroups::new(&["dig", "curl", "nc", "python", "early", "ping"]);
    let mut children = Children(Vec::new());
    let scratch = std::env::temp_dir().join(format!("netwatch-attribution-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let (ready, go) = (scratch.join("ready"), scratch.join("go"));

    // Opened before netwatch starts: no cgroup program sees it created or connected.
    let early_pid = children.spawn(cgroups.command(
        "early",
        &lab.client,
        "python3",
        &[
            "-c",
            EARLY_CLIENT,
            DNS2_V4,
            &ready.to_string_lossy(),
            &go.to_string_lossy(),
            EARLY_QUERY,
        ],
    ));
    wait_until(Duration::from_secs(10), "the early socket", || {
        ready.exists()
    });

    let client_run = start_netwatch(&lab.client, CLIENT_IFACE);
    let router_run = start_netwatch(&lab.firewall, "f1");
    std::fs::write(&go, b"").expect("go file");

    // The inherited firewall drops DNS and TCP 5432, and passes TCP 80 (nothing listens:
    // the server resets it), which the router's netwatch sees forwarded.
    let dig_pid = children.spawn(cgroups.command(
        "dig",
        &lab.client,
        "dig",
        &["+time=2", "+tries=1", &format!("@{DNS_V4}"), "who.example"],
    ));
    let curl_pid = children.spawn(cgroups.command(
        "curl",
        &lab.client,
        "curl",
        &["-s", "-m", "3", &format!("http://{SERVER_V4}:5432/")],
    ));
    let nc_pid = children.spawn(cgroups.command(
        "nc",
        &lab.client,
        "nc",
        &["-z", "-w", "3", DNS_V4, "5432"],
    ));
    let python_pid = children.spawn(cgroups.command(
        "python",
        &lab.client,
        "python3",
        &["-c", PYTHON_CONNECT, DNS2_V4, "5432"],
    ));
    // Echo requests are dropped: a ping socket is recorded when it is made (it sends with no
    // connect() or sendmsg() hook of its own).
    let ping_pid = children.spawn(cgroups.command(
        "ping",
        &lab.client,
        "ping",
        &["-c", "2", "-i", "0.5", "-W", "1", DNS_V4],
    ));
    let forwarded_pid = children.spawn(cgroups.command(
        "curl",
        &lab.client,
        "curl",
        &["-s", "-m", "3", &format!("http://{SERVER_V4}:80/")],
    ));

    let expected: Vec<(TargetId, u32, &str, &str)> = vec![
        (udp(DNS_V4, 53), dig_pid, "dig", "dig"),
        (tcp(SERVER_V4, 5432), curl_pid, "curl", "curl"),
        (tcp(DNS_V4, 5432), nc_pid, "nc", "nc"),
        (tcp(DNS2_V4, 5432), python_pid, "python3", "python"),
        (udp(DNS2_V4, 53), early_pid, "python3", "early"),
        (tcp(SERVER_V4, 80), forwarded_pid, "curl", "curl"),
        (
            ("icmp".into(), DNS_V4.into(), None),
            ping_pid,
            "ping",
            "ping",
        ),
    ];
    for (target, ..) in &expected {
        client_run.wait_for(
            Duration::from_secs(20),
            &format!("a failing verdict for {target:?}"),
            |r| {
                r["type"] == "verdict"
                    && target_id(r) == *target
                    && (r["verdict"] == "blackholed" || r["verdict"] == "rejected")
            },
        );
    }
    // A blackholed target is evidence once it has been so for one --timeout.
    client_run.wait_for(Duration::from_secs(20), "a finding on tcp/5432", |r| {
        r["type"] == "diagnosis" && names_target(r, &tcp(SERVER_V4, 5432))
    });
    router_run.wait_for(
        Duration::from_secs(20),
        "the forwarded connection attempt at the router",
        |r| r["type"] == "verdict" && target_id(r) == tcp(SERVER_V4, 80),
    );
    let client = client_run.stop();
    let router = router_run.stop();
    let _ = std::fs::remove_dir_all(&scratch);

    assert!(
        !client.stderr.contains("not named"),
        "attribution unavailable: {}",
        client.stderr
    );
    assert_eq!(
        client.summary()["attribution"],
        "available",
        "{:?}",
        client.summary()
    );
    let targets = egress_targets(&client);
    for (target, pid, comm, cgroup) in &expected {
        let record = targets
            .get(target)
            .unwrap_or_else(|| panic!("no target {target:?}: {targets:#?}"));
        let found = processes(record);
        assert_eq!(
            found,
            vec![(u64::from(*pid), (*comm).to_owned(), cgroups.path(cgroup))],
            "{target:?} names the wrong process: {record}"
        );
    }
    // Every target record carries the list, empty when unknown: forwarded traffic has no
    // socket on the router.
    let forwarded = egress_targets(&router);
    let record = forwarded
        .get(&tcp(SERVER_V4, 80))
        .unwrap_or_else(|| panic!("the router saw no forwarded request: {forwarded:#?}"));
    assert_eq!(record["processes"], serde_json::json!([]), "{record}");
    for record in router.records.iter().filter(|r| r["type"] == "target") {
        assert_eq!(
            record["processes"],
            serde_json::json!([]),
            "a forwarded request attributed: {record}"
        );
    }
    // The diagnosis names them too.
    let findings = client.exit_findings();
    let port_finding = findings
        .iter()
        .find(|f| names_target(f, &tcp(SERVER_V4, 5432)))
        .unwrap_or_else(|| panic!("no finding for tcp/5432: {findings:#?}"));
    let summary = port_finding["summary"].as_str().expect("summary");
    assert!(
        summary.contains("Sent by") && summary.contains("curl"),
        "{summary}"
    );
    drop(cgroups);
}

/// One DNS query (argv[2], hex) over UDP to argv[1]:53; waits for the answer, then a second
/// (alive, so its process is named from `/proc`).
const ANSWERED_QUERY: &str = r"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(bytes.fromhex(sys.argv[2]), (sys.argv[1], 53))
s.recv(512)
time.sleep(1)
";

/// Answered targets name their process too (issue 20): an answer settles its request before
/// netwatch reads the pending table, so the kernel keeps each target's latest socket beside
/// its counters. curl to a listening port and a DNS query to an answering resolver, each in
/// a cgroup of its own. Costs about 4 s.
#[test]
fn answered_targets_name_their_process_too() {
    const NAME: &str = "answered_targets_name_their_process_too";
    if !prerequisites(NAME, &["ip", "nft", "mount", "curl", "dnsmasq", "python3"]) {
        return;
    }
    let mut lab = Lab::new();
    lab.nft(OPEN_DNS);
    lab.start_dns();
    lab.start_listener(LISTENER);
    let cgroups = Cgroups::new(&["curl", "query"]);
    let mut children = Children(Vec::new());
    let run = start_netwatch(&lab.client, CLIENT_IFACE);
    let curl_pid = children.spawn(cgroups.command(
        "curl",
        &lab.client,
        "curl",
        &["-s", "-m", "3", &format!("http://{SERVER_V4}:8888/")],
    ));
    let query_pid = children.spawn(cgroups.command(
        "query",
        &lab.client,
        "python3",
        &["-c", ANSWERED_QUERY, DNS_V4, EARLY_QUERY],
    ));
    let expected = [
        (tcp(SERVER_V4, 8888), curl_pid, "curl", "curl"),
        (udp(DNS_V4, 53), query_pid, "python3", "query"),
    ];
    for (target, ..) in &expected {
        run.wait_for(
            Duration::from_secs(10),
            &format!("an answered verdict for {target:?}"),
            |r| r["type"] == "verdict" && target_id(r) == *target && r["verdict"] == "ok",
        );
    }
    let finished = run.stop();
    let targets = egress_targets(&finished);
    for (target, pid, comm, cgroup) in &expected {
        let record = targets
            .get(target)
            .unwrap_or_else(|| panic!("no target {target:?}: {targets:#?}"));
        assert_eq!(record["answered"], 1, "{record}");
        assert_eq!(record["in_flight"], 0, "{record}");
        assert_eq!(
            processes(record),
            vec![(u64::from(*pid), (*comm).to_owned(), cgroups.path(cgroup))],
            "{target:?}: an answered target names its process: {record}"
        );
    }
    drop(cgroups);
}

/// Goes round the owner map twice with sockets that connect (as many as its first argument
/// says: twice its slots) while one connected socket stays open, then connects over TCP and
/// UDP (IPv4 and IPv6) and sends without a connection, thousands of times each, on loopback in
/// the client namespace. Prints `OK FAILED`.
const CONNECT_STORM: &str = r"
import socket, sys, threading
fails, ok = 0, 0
kept = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
kept.connect(('127.0.0.1', 9))
for _ in range(int(sys.argv[1])):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect(('127.0.0.1', 9))
    u.close()
server = socket.socket()
server.bind(('127.0.0.1', 0))
server.listen(4096)
port = server.getsockname()[1]
def accept():
    while True:
        c, _ = server.accept()
        c.close()
threading.Thread(target=accept, daemon=True).start()
for _ in range(2000):
    try:
        socket.create_connection(('127.0.0.1', port), timeout=5).close()
        ok += 1
    except OSError as err:
        fails += 1
        print(err)
for family, address in ((socket.AF_INET, '127.0.0.1'), (socket.AF_INET6, '::1')):
    for _ in range(2000):
        u = socket.socket(family, socket.SOCK_DGRAM)
        try:
            u.connect((address, 9))
            ok += 1
        except OSError as err:
            fails += 1
            print(err)
        u.close()
    u = socket.socket(family, socket.SOCK_DGRAM)
    for _ in range(2000):
        try:
            u.sendto(b'x', (address, 9))
            ok += 1
        except OSError as err:
            fails += 1
            print(err)
print(ok, fails)
";

/// One UDP socket connected on loopback (its owner recorded), closed; prints its cookie
/// (`SO_COOKIE`).
const ONE_SOCKET: &str = r"
import socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect(('127.0.0.1', 9))
print(int.from_bytes(u.getsockopt(socket.SOL_SOCKET, 57, 8), 'little'))
u.close()
";

/// The socket cookies in netwatch's (`pid`'s) socket owner map, and the map's slots. The
/// map is found through the process's own descriptors (`map_id:` in their fdinfo), so
/// another netwatch on the machine is not it.
fn owner_map_cookies(pid: u32) -> (u32, BTreeSet<u64>) {
    use aya::maps::{Array, Map, MapData, MapInfo};
    let ids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("netwatch's fdinfo")
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .filter_map(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("map_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect();
    let id = ids
        .into_iter()
        .find(|&id| {
            MapInfo::from_id(id).is_ok_and(|info| info.name_as_str() == Some("SOCKET_OWNERS"))
        })
        .unwrap_or_else(|| panic!("netwatch (pid {pid}) holds no SOCKET_OWNERS map"));
    let data = MapData::from_id(id).expect("opening SOCKET_OWNERS by id");
    let capacity = MapInfo::from_id(id).expect("SOCKET_OWNERS").max_entries();
    let map: Array<MapData, SocketOwner> =
        Array::try_from(Map::from_map_data(data).expect("a map")).expect("an array map");
    let cookies = map
        .iter()
        .map(|owner| owner.expect("a slot").cookie)
        .filter(|&cookie| cookie != 0)
        .collect();
    (capacity, cookies)
}

#[test]
fn owner_programs_never_refuse_a_connect_even_with_their_map_full() {
    const NAME: &str = "owner_programs_never_refuse_a_connect_even_with_their_map_full";
    if !prerequisites(NAME, &["ip", "mount", "python3", "taskset"]) {
        return;
    }
    let lab = Lab::new();
    let cgroups = Cgroups::new(&["storm"]);
    let run = start_netwatch(&lab.client, CLIENT_IFACE);
    // A first socket, whose owner the map holds until a socket as many cookies newer as the
    // map has slots takes its slot. Both on one CPU: a kernel may hand cookies out in per-CPU
    // batches, and on one CPU they follow each other.
    let first = cgroups
        .command(
            "storm",
            &lab.client,
            "taskset",
            &["-c", "0", "python3", "-c", ONE_SOCKET],
        )
        .stdout(Stdio::piped())
        .output()
        .expect("python3");
    let first: u64 = String::from_utf8_lossy(&first.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|err| panic!("the first socket's cookie: {err}: {first:?}"));
    let (capacity, before) = owner_map_cookies(run.pid());
    assert_eq!(
        capacity, SOCKET_OWNERS_CAPACITY,
        "the owner map netwatch ships"
    );
    assert!(
        before.contains(&first),
        "the first socket's owner ({first}) was not recorded: {before:?}"
    );
    let out = cgroups
        .command(
            "storm",
            &lab.client,
            "taskset",
            &[
                "-c",
                "0",
                "python3",
                "-c",
                CONNECT_STORM,
                &(2 * capacity).to_string(),
            ],
        )
        .stdout(Stdio::piped())
        .output()
        .expect("python3");
    // The map went round: the first owner gave way to a newer socket's.
    let (_, after) = owner_map_cookies(run.pid());
    assert!(
        !after.contains(&first) && after.len() >= usize::try_from(capacity / 2).expect("u32"),
        "the storm did not go round the owner map: the first socket ({first}) is still there, \
         or few slots hold an owner ({} of {capacity})",
        after.len()
    );
    let finished = run.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert_eq!(
        finished.summary()["attribution"],
        "available",
        "the programs were not attached: {}",
        finished.stderr
    );
    // The socket kept open went round with the rest: its owner's loss was counted (so may
    // others', of sockets the host opened meanwhile).
    let owners_lost = &finished.summary()["kernel"]["counters"]["socket_owner_lost"];
    assert!(
        owners_lost.as_u64().is_some_and(|count| count >= 1),
        "an open socket's owner was overwritten uncounted: socket_owner_lost {owners_lost}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    assert!(out.status.success(), "the storm failed: {text}");
    assert_eq!(last, "10000 0", "connect()/sendto() refused: {text}");
    eprintln!(
        "the owner map held {} owners in {capacity} slots after the storm, the first socket's \
         overwritten",
        after.len()
    );
    drop(cgroups);
}

//! The namespace lab: client — firewall — server, three network namespaces joined by veth
//! pairs, with no link or route to the host's network. Names are unique per lab, and
//! everything (processes first, then namespaces) is removed on drop, on failure too.
//!
//! ```text
//!  client ns                 firewall ns                         server ns
//!  c0 203.0.113.2/24  ──  f0 203.0.113.1   f1 198.51.100.1  ──  s0 198.51.100.10 (web)
//!     2001:db8:1::2/64       2001:db8:1::1     2001:db8:2::1       198.51.100.53/.54 (DNS)
//!                                                                   2001:db8:2::10, ::53
//! ```
//!
//! [`Lab::over_a_tunnel`] makes `c0` and `f0` the two ends of a VPN instead: tun devices
//! (raw IP packets, no link-layer header) joined by the `lab-vpn` binary, which carries
//! their packets in UDP over a veth pair of their own (`u0` 192.0.2.2 — `u1` 192.0.2.1).
//! Everything else is the same.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const CLIENT_V4: &str = "203.0.113.2";
pub const CLIENT_V6: &str = "2001:db8:1::2";
pub const SERVER_V4: &str = "198.51.100.10";
pub const SERVER_V6: &str = "2001:db8:2::10";
pub const DNS_V4: &str = "198.51.100.53";
pub const DNS2_V4: &str = "198.51.100.54";
pub const DNS_V6: &str = "2001:db8:2::53";
/// The firewall's address on the client's link: the client's gateway.
pub const GATEWAY_V4: &str = "203.0.113.1";
pub const GATEWAY_V6: &str = "2001:db8:1::1";
/// The client's interface, the one netwatch watches.
pub const CLIENT_IFACE: &str = "c0";
/// The MTU of the tunnel's devices: room for the UDP and IP headers the VPN adds, within
/// the veth pair's 1500.
pub const TUNNEL_MTU: u16 = 1400;
/// The UDP port both ends of the VPN use.
const VPN_PORT: u16 = 51820;

/// Ports the lab's TCP listener serves.
pub const OPEN_PORTS: [u16; 4] = [80, 443, 8888, 3306];

/// The inherited firewall: TCP 80/443 and the service ports pass; DNS (UDP and TCP 53) and
/// ICMP echo are silently dropped; a few ports are rejected, each a different way; anything
/// else is rejected as administratively prohibited.
pub const INHERITED_FIREWALL: &str = r#"
table inet lab {
  chain dns {
    udp dport 53 drop
    tcp dport 53 drop
  }
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname "f1" accept
    jump dns
    tcp dport { 80, 443, 8888, 3306 } accept
    icmp type echo-request drop
    icmpv6 type echo-request drop
    tcp dport 9000 reject with tcp reset
    meta nfproto ipv4 tcp dport 8443 reject with icmp type host-prohibited
    meta nfproto ipv6 tcp dport 8443 reject with icmpv6 type admin-prohibited
    tcp dport 5432 drop
    reject with icmpx type admin-prohibited
  }
}
"#;

/// The port of [`Lab::wait_for_sentinel`]'s request: TCP to it is dropped by
/// [`INHERITED_FIREWALL`].
pub const SENTINEL_PORT: u16 = 5432;

/// Lets DNS through the inherited firewall (replaces the `dns` chain). Only port 53: the
/// chain is jumped to for every packet, so a bare `accept` there would open everything.
pub const OPEN_DNS: &str = "flush chain inet lab dns\n\
    add rule inet lab dns udp dport 53 accept\n\
    add rule inet lab dns tcp dport 53 accept\n";

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace `name` (unique per run: the caller's business), deleted on drop.
    #[must_use]
    pub fn create(name: String) -> Self {
        let ns = Self { name };
        run_ok(Command::new("ip").args(["netns", "add", &ns.name]));
        ns
    }

    /// A name for the network namespace this process runs in (`ip netns attach`), so that
    /// a lab can put this host itself in the client's place. Dropping it removes the name,
    /// not the namespace.
    fn this_host(name: String) -> Self {
        let ns = Self { name };
        run_ok(Command::new("ip").args([
            "netns",
            "attach",
            &ns.name,
            &std::process::id().to_string(),
        ]));
        ns
    }

    /// `program args…` inside this namespace.
    #[must_use]
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Runs a command here and returns its output, whatever its status.
    #[expect(
        clippy::must_use_candidate,
        reason = "often run for its effect alone; the output is there when wanted"
    )]
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|err| panic!("could not run {program} in {}: {err}", self.name))
    }

    /// Runs a command here and panics unless it succeeds.
    #[expect(
        clippy::must_use_candidate,
        reason = "mostly run for its effect; the output is there when wanted"
    )]
    pub fn ok(&self, program: &str, args: &[&str]) -> Output {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "`{program} {}` in {} failed: {}",
            args.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Netns {
    /// Creates a persistent tun device `name` here, its link type set to `link_type`
    /// (`TUNSETLINK`): a device of any `ARPHRD_*` type, for the kinds this kernel cannot
    /// make (a CAN bus, say). It goes with the namespace.
    pub fn tun_of_link_type(&self, name: &str, link_type: u16) {
        let netns = std::fs::File::open(Path::new("/run/netns").join(&self.name))
            .unwrap_or_else(|err| panic!("opening the namespace {}: {err}", self.name));
        let name = name.to_owned();
        // A thread of its own enters the namespace: the device is made where the opener is.
        thread::spawn(move || {
            use std::os::fd::AsRawFd as _;
            // SAFETY: setns on this thread only, with a namespace descriptor we hold.
            let entered = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
            let tun = crate::tun::open(&name).unwrap_or_else(|err| panic!("tun {name}: {err}"));
            let fd = tun.as_raw_fd();
            // SAFETY: TUNSETLINK and TUNSETPERSIST take an integer argument.
            unsafe {
                assert_eq!(
                    libc::ioctl(fd, libc::TUNSETLINK, libc::c_ulong::from(link_type)),
                    0,
                    "TUNSETLINK"
                );
                assert_eq!(
                    libc::ioctl(fd, libc::TUNSETPERSIST, 1 as libc::c_ulong),
                    0,
                    "TUNSETPERSIST"
                );
            }
        })
        .join()
        .expect("creating the tun device");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs `command` (not in any namespace of the lab's); panics, with its stderr, unless it
/// succeeds.
pub fn run_ok(command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|err| panic!("could not run {command:?}: {err}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The three-namespace lab. Processes started through it are killed on drop, before the
/// namespaces go.
pub struct Lab {
    children: Vec<Child>,
    dir: PathBuf,
    // Dropped after `children` are killed (see Drop): field order matters for nothing else.
    pub client: Netns,
    pub firewall: Netns,
    pub server: Netns,
}

impl Lab {
    /// Builds the topology and loads [`INHERITED_FIREWALL`].
    #[must_use]
    pub fn new() -> Self {
        Self::with_firewall(INHERITED_FIREWALL)
    }

    /// The topology with `rules` in the firewall namespace instead of the inherited ones: a
    /// firewall namespace that never tracked connections (the inherited rules do, and a
    /// namespace that ever did keeps reassembling fragments on Linux 5.10 and 6.1, ruleset
    /// flushed or not).
    #[must_use]
    pub fn with_firewall(rules: &str) -> Self {
        let id = Self::unique_id();
        Self::around(Netns::create(format!("nwlab-c{id}")), &id, rules, None)
    }

    /// The same lab with the client's link a VPN: `c0` and `f0` are tun devices joined by
    /// `vpn` (the `lab-vpn` binary) over UDP, so the client's default routes go through a
    /// device without a link-layer header. The VPN processes are the lab's: killed on drop,
    /// and the tun devices with them.
    #[must_use]
    pub fn over_a_tunnel(vpn: &str) -> Self {
        let id = Self::unique_id();
        Self::around(
            Netns::create(format!("nwlab-c{id}")),
            &id,
            INHERITED_FIREWALL,
            Some(vpn),
        )
    }

    /// The same lab with this host in the client's place: `c0`, its addresses and the
    /// default routes are in the namespace this process runs in, where a service (netwatch
    /// under systemd) watches the default-route interface. Only for a host of its own (the
    /// systemd guest of `cargo xtask service-test`): the default route must be free, and
    /// this host's traffic to anywhere but the lab then goes nowhere.
    #[must_use]
    pub fn around_this_host() -> Self {
        let id = Self::unique_id();
        Self::around(
            Netns::this_host(format!("nwlab-h{id}")),
            &id,
            INHERITED_FIREWALL,
            None,
        )
    }

    fn unique_id() -> String {
        format!(
            "{}x{}",
            std::process::id(),
            LAB_COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn around(client: Netns, id: &str, rules: &str, vpn: Option<&str>) -> Self {
        let dir = std::env::temp_dir().join(format!("netwatch-lab-{id}"));
        std::fs::create_dir_all(&dir).expect("lab temp dir");
        let mut lab = Self {
            children: Vec::new(),
            dir,
            client,
            firewall: Netns::create(format!("nwlab-f{id}")),
            server: Netns::create(format!("nwlab-s{id}")),
        };
        match vpn {
            Some(vpn) => lab.tunnel(vpn),
            None => {
                run_ok(Command::new("ip").args([
                    "link",
                    "add",
                    "c0",
                    "netns",
                    &lab.client.name,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "f0",
                    "netns",
                    &lab.firewall.name,
                ]));
            }
        }
        let (f, s) = (&lab.firewall.name, &lab.server.name);
        run_ok(Command::new("ip").args([
            "link", "add", "f1", "netns", f, "type", "veth", "peer", "name", "s0", "netns", s,
        ]));
        let addr = |ns: &Netns, dev: &str, cidr: &str| {
            let mut args = vec!["addr", "add", cidr, "dev", dev];
            if cidr.contains(':') {
                args.push("nodad");
            }
            ns.ok("ip", &args);
        };
        addr(&lab.client, "c0", "203.0.113.2/24");
        addr(&lab.client, "c0", "2001:db8:1::2/64");
        addr(&lab.firewall, "f0", "203.0.113.1/24");
        addr(&lab.firewall, "f0", "2001:db8:1::1/64");
        addr(&lab.firewall, "f1", "198.51.100.1/24");
        addr(&lab.firewall, "f1", "2001:db8:2::1/64");
        for cidr in [
            "198.51.100.10/24",
            "198.51.100.53/24",
            "198.51.100.54/24",
            "2001:db8:2::10/64",
            "2001:db8:2::53/64",
        ] {
            addr(&lab.server, "s0", cidr);
        }
        for (ns, devs) in [
            (&lab.client, &["lo", "c0"][..]),
            (&lab.firewall, &["lo", "f0", "f1"][..]),
            (&lab.server, &["lo", "s0"][..]),
        ] {
            for dev in devs {
                ns.ok("ip", &["link", "set", dev, "up"]);
            }
        }
        lab.client
            .ok("ip", &["route", "add", "default", "via", "203.0.113.1"]);
        lab.client.ok(
            "ip",
            &["-6", "route", "add", "default", "via", "2001:db8:1::1"],
        );
        lab.server
            .ok("ip", &["route", "add", "default", "via", "198.51.100.1"]);
        lab.server.ok(
            "ip",
            &["-6", "route", "add", "default", "via", "2001:db8:2::1"],
        );
        lab.firewall.ok(
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        );
        lab.nft(rules);
        lab
    }

    /// `c0` and `f0` as the two ends of a VPN run by `vpn`: the underlay veth pair, the
    /// VPN processes, and their tun devices (down, at [`TUNNEL_MTU`]) once they exist.
    fn tunnel(&mut self, vpn: &str) {
        run_ok(Command::new("ip").args([
            "link",
            "add",
            "u0",
            "netns",
            &self.client.name,
            "type",
            "veth",
            "peer",
            "name",
            "u1",
            "netns",
            &self.firewall.name,
        ]));
        let (client, firewall) = ("192.0.2.2", "192.0.2.1");
        for (ns, dev, address) in [
            (&self.client, "u0", client),
            (&self.firewall, "u1", firewall),
        ] {
            ns.ok("ip", &["addr", "add", &format!("{address}/24"), "dev", dev]);
            ns.ok("ip", &["link", "set", dev, "up"]);
        }
        for (ns, dev, local, peer) in [
            (&self.client, "c0", client, firewall),
            (&self.firewall, "f0", firewall, client),
        ] {
            let mut command = ns.command(vpn);
            command
                .args([
                    dev,
                    &format!("{local}:{VPN_PORT}"),
                    &format!("{peer}:{VPN_PORT}"),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            let vpn = command
                .spawn()
                .unwrap_or_else(|err| panic!("could not start {command:?}: {err}"));
            self.children.push(vpn);
            wait_until(
                Duration::from_secs(10),
                &format!("the VPN's {dev} in {}", ns.name),
                || ns.run("ip", &["link", "show", "dev", dev]).status.success(),
            );
            ns.ok("ip", &["link", "set", dev, "mtu", &TUNNEL_MTU.to_string()]);
        }
    }

    /// Applies an nftables script in the firewall namespace.
    pub fn nft(&self, script: &str) {
        Self::nft_in(&self.firewall, script);
    }

    /// Applies an nftables script in `ns` (a host's own firewall).
    pub fn nft_in(ns: &Netns, script: &str) {
        let mut child = ns
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write nft script");
        let out = child.wait_with_output().expect("nft");
        assert!(
            out.status.success(),
            "nft in {} failed: {}",
            ns.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts a process in `ns`; it is killed when the lab is dropped.
    pub fn spawn(&mut self, mut command: Command) -> &mut Child {
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("could not start {command:?}: {err}"));
        self.children.push(child);
        self.children.last_mut().expect("just pushed")
    }

    /// Starts dnsmasq on the server's DNS addresses, answering for `*.example`, and waits
    /// until it answers (asked from inside the server namespace, not through the firewall).
    pub fn start_dns(&mut self) {
        self.start_dns_with(&[]);
    }

    /// [`Lab::start_dns`], with more of dnsmasq's options (`--txt-record=…`).
    pub fn start_dns_with(&mut self, options: &[String]) {
        let pid_file = self.dir.join("dnsmasq.pid");
        let mut command = self.server.command("dnsmasq");
        command
            .args([
                "--no-daemon",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
            ])
            .args([
                "--user=root",
                "--group=root",
                "--log-facility=-",
                "--port=53",
            ])
            .arg(format!("--pid-file={}", pid_file.display()))
            .args([
                "--listen-address=198.51.100.53",
                "--listen-address=198.51.100.54",
                "--listen-address=2001:db8:2::53",
            ])
            .args([
                "--address=/example/198.51.100.10",
                "--address=/example/2001:db8:2::10",
            ])
            .args(options)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.spawn(command);
        wait_until(Duration::from_secs(10), "dnsmasq to answer", || {
            let out = self.server.run(
                "dig",
                &[
                    "+short",
                    "+tries=1",
                    "+timeout=1",
                    "@198.51.100.53",
                    "ready.example",
                ],
            );
            String::from_utf8_lossy(&out.stdout).contains("198.51.100.10")
        });
    }

    /// Starts the `lab-dns` responder (answers after `delay_ms`, never for names starting
    /// with `lost`) on `addresses` in the server namespace, and waits until every socket
    /// is bound.
    pub fn start_lab_dns(&mut self, binary: &str, delay_ms: u64, addresses: &[&str]) {
        let mut command = self.server.command(binary);
        command
            .arg(delay_ms.to_string())
            .args(addresses)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        self.spawn(command);
        wait_until(Duration::from_secs(10), "lab-dns to bind", || {
            let out = self.server.run("ss", &["-Huln", "sport = :53"]);
            let bound = String::from_utf8_lossy(&out.stdout).into_owned();
            addresses.iter().all(|address| {
                bound.contains(&format!("{address}:53"))
                    || bound.contains(&format!("[{address}]:53"))
            })
        });
    }

    /// Starts the lab's TCP listener (the `lab-listener` binary) on the server's
    /// [`OPEN_PORTS`], and waits until it accepts.
    pub fn start_listener(&mut self, listener_binary: &str) {
        let mut command = self.server.command(listener_binary);
        for port in OPEN_PORTS {
            command.arg(port.to_string());
        }
        command.stdout(Stdio::null()).stderr(Stdio::inherit());
        self.spawn(command);
        wait_until(Duration::from_secs(10), "the listener to accept", || {
            self.server
                .run("nc", &["-z", "-w", "1", "198.51.100.10", "80"])
                .status
                .success()
        });
    }

    /// This lab's private directory (removed on drop): captures, ready files.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sets `net.*` sysctls (`name=value`) in `ns`.
    pub fn sysctl(ns: &Netns, settings: &[&str]) {
        let mut args = vec!["-qw"];
        args.extend_from_slice(settings);
        ns.ok("sysctl", &args);
    }

    /// Sends [`SENTINEL_PORT`]'s SYN (dropped by [`INHERITED_FIREWALL`]) and waits until
    /// netwatch calls it blackholed. Requests are judged in the order they were sent (one
    /// timeout for all), so every request sent before the sentinel has been judged by then:
    /// a bounded wait for "all earlier requests timed out", without a fixed sleep. Returns
    /// the sentinel's target, to leave out of assertions.
    #[expect(
        clippy::must_use_candidate,
        reason = "callers that only wait need not name the sentinel"
    )]
    pub fn wait_for_sentinel(&self, run: &NetwatchRun) -> TargetId {
        self.wait_for_sentinel_on(run, SENTINEL_PORT)
    }

    /// [`Lab::wait_for_sentinel`] with a dropped `port` of the caller's firewall. A verdict
    /// record comes only when a target's verdict changes: use a new port for each wait in
    /// one run.
    #[expect(
        clippy::must_use_candidate,
        reason = "callers that only wait need not name the sentinel"
    )]
    pub fn wait_for_sentinel_on(&self, run: &NetwatchRun, port: u16) -> TargetId {
        crate::clients::Client::nc(SERVER_V4, port, 1).run(&self.client);
        let target: TargetId = ("tcp".into(), SERVER_V4.into(), Some(u64::from(port)));
        run.wait_for(
            Duration::from_secs(15),
            "the sentinel's blackholed verdict",
            |r| r["type"] == "verdict" && target_id(r) == target && r["verdict"] == "blackholed",
        );
        target
    }

    /// Starts netwatch in the client namespace with `args`, and waits until it watches.
    #[must_use]
    pub fn start_netwatch(&self, args: &[&str]) -> NetwatchRun {
        let mut command = self.client.command(&netwatch_binary().to_string_lossy());
        command.args(args);
        NetwatchRun::start(command)
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // The namespaces are deleted by their own Drop, after this.
    }
}

/// Polls `done` every 100 ms until it holds, or panics after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// The netwatch binary under test: `NETWATCH_BIN` (set by `cargo xtask test`), or the debug
/// build in this workspace.
#[must_use]
pub fn netwatch_binary() -> PathBuf {
    let path = std::env::var_os("NETWATCH_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/netwatch"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "netwatch binary not found at {} (run `cargo build -p netwatch`, or `cargo xtask test`)",
        path.display()
    );
    path
}

/// netwatch's resident memory; a sample that cannot be read fails the test (netwatch gone, or
/// `/proc` not what it was), never a zero that would pass a memory bound.
#[must_use]
pub fn rss_kib(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("netwatch's RSS: reading {path}: {err}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .filter(|&kib: &u64| kib > 0)
        .unwrap_or_else(|| panic!("netwatch's RSS: no VmRSS in {path}: {status}"))
}

/// A running netwatch, its stdout parsed as NDJSON records as they come.
pub struct NetwatchRun {
    child: Child,
    records: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<thread::JoinHandle<()>>,
}

/// What a netwatch run left behind.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub records: Vec<Value>,
    pub stderr: String,
}

impl NetwatchRun {
    /// Starts `command` (netwatch with `--json`) and waits for its "watching" line.
    #[must_use]
    pub fn start(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("could not start netwatch: {err}"));
        let records = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout_pipe = child.stdout.take().expect("stdout");
        let stderr_pipe = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&records);
        let out_reader = thread::spawn(move || {
            for line in BufReader::new(stdout_pipe).lines() {
                let Ok(line) = line else { break };
                let record: Value = serde_json::from_str(&line).unwrap_or_else(|err| {
                    panic!("netwatch printed a non-JSON line {line:?}: {err}")
                });
                sink.lock().expect("records").push(record);
            }
        });
        let text = Arc::clone(&stderr);
        let err_reader = thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines() {
                let Ok(line) = line else { break };
                let mut text = text.lock().expect("stderr");
                text.push_str(&line);
                text.push('\n');
            }
        });
        let mut run = Self {
            child,
            records,
            stderr,
            readers: vec![out_reader, err_reader],
        };
        let start = Instant::now();
        loop {
            if run.stderr.lock().expect("stderr").contains("watching") {
                break;
            }
            if let Ok(Some(status)) = run.child.try_wait() {
                panic!("netwatch exited early ({status}): {}", run.stderr_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "netwatch did not start watching within 20 s: {}",
                run.stderr_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
        run
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    #[must_use]
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().expect("stderr").clone()
    }

    /// Records so far.
    #[must_use]
    pub fn records(&self) -> Vec<Value> {
        self.records.lock().expect("records").clone()
    }

    /// Waits until a record matching `matches` arrives; panics with every record on timeout.
    pub fn wait_for(&self, limit: Duration, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Some(found) = self.records().into_iter().find(|r| matches(r)) {
                return found;
            }
            assert!(
                start.elapsed() < limit,
                "no {what} within {limit:?}; records: {:#?}; stderr: {}",
                self.records(),
                self.stderr_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` and waits (at most 15 s) for the exit.
    #[must_use]
    pub fn stop_with(mut self, signal: i32) -> Finished {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, signal) };
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if start.elapsed() > Duration::from_secs(15) {
                let _ = self.child.kill();
                panic!(
                    "netwatch did not exit within 15 s of signal {signal}: {}",
                    self.stderr_text()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Finished {
            status,
            records: self.records(),
            stderr: self.stderr_text(),
        }
    }

    /// SIGTERM, then wait for the exit records.
    #[must_use]
    pub fn stop(self) -> Finished {
        self.stop_with(libc::SIGTERM)
    }

    /// Waits for a `--duration` run to end by itself (at most `limit`).
    #[must_use]
    pub fn wait_exit(mut self, limit: Duration) -> Finished {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                start.elapsed() < limit,
                "netwatch still running after {limit:?}"
            );
            thread::sleep(Duration::from_millis(50));
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Finished {
            status,
            records: self.records(),
            stderr: self.stderr_text(),
        }
    }
}

impl Drop for NetwatchRun {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// (proto, remote, port) as printed in the records, e.g. `("tcp", "198.51.100.10", Some(443))`.
pub type TargetId = (String, String, Option<u64>);

impl Finished {
    /// The exit `target` records by target.
    #[must_use]
    pub fn targets(&self) -> BTreeMap<TargetId, Value> {
        self.records
            .iter()
            .filter(|r| r["type"] == "target")
            .map(|r| (target_id(r), r.clone()))
            .collect()
    }

    /// The exit `target` record of (`direction`, `proto`, `remote`, `port`); panics, listing
    /// the targets there are, when there is none.
    #[must_use]
    pub fn target_record(
        &self,
        direction: &str,
        proto: &str,
        remote: &str,
        port: Option<u64>,
    ) -> &Value {
        self.records
            .iter()
            .find(|r| {
                r["type"] == "target"
                    && r["direction"] == direction
                    && r["proto"] == proto
                    && r["remote"] == remote
                    && r["port"].as_u64() == port
            })
            .unwrap_or_else(|| {
                panic!(
                    "no {direction} target {proto} {remote} {port:?}; targets: {:#?}",
                    self.records
                        .iter()
                        .filter(|r| r["type"] == "target")
                        .collect::<Vec<_>>()
                )
            })
    }

    /// The `summary` record.
    #[must_use]
    pub fn summary(&self) -> &Value {
        self.records
            .iter()
            .find(|r| r["type"] == "summary")
            .unwrap_or_else(|| panic!("no summary record: {:#?}", self.records))
    }

    /// The kernel counter `name` of the summary (`kernel.counters`); panics when netwatch
    /// has no such counter.
    #[must_use]
    pub fn kernel_counter(&self, name: &str) -> u64 {
        let counters = &self.summary()["kernel"]["counters"];
        counters[name].as_u64().unwrap_or_else(|| {
            panic!("netwatch reports no kernel counter `{name}`; counters: {counters}")
        })
    }

    /// The `diagnosis` records written at exit (after the `target` records).
    #[must_use]
    pub fn exit_findings(&self) -> Vec<Value> {
        let first_target = self
            .records
            .iter()
            .position(|r| r["type"] == "target")
            .unwrap_or(self.records.len());
        self.records[first_target..]
            .iter()
            .filter(|r| r["type"] == "diagnosis")
            .cloned()
            .collect()
    }

    /// The `verdict` records, in order.
    #[must_use]
    pub fn verdicts(&self) -> Vec<Value> {
        self.records
            .iter()
            .filter(|r| r["type"] == "verdict")
            .cloned()
            .collect()
    }
}

/// The target a record is about.
#[must_use]
pub fn target_id(record: &Value) -> TargetId {
    (
        record["proto"].as_str().unwrap_or_default().to_owned(),
        record["remote"].as_str().unwrap_or_default().to_owned(),
        record["port"].as_u64(),
    )
}

/// Whether netwatch's links and programs are back to at most `before` (from
/// [`netwatch_bpf_objects`]). At most, not exactly: the kernel frees a program after its last
/// descriptor closes, asynchronously, so one from an earlier run may still be counted in
/// `before` and go meanwhile. Callers wait for it with a bound ([`wait_until`]).
#[must_use]
pub fn bpf_objects_back_to(before: (usize, usize)) -> bool {
    let now = netwatch_bpf_objects();
    now.0 <= before.0 && now.1 <= before.1
}

/// netwatch's tcx links and programs loaded in the kernel, all namespaces: (links, programs).
/// A `bpftool` that fails or says what is not a list fails the test: a count of 0 read off
/// nothing would pass every "nothing left attached" check.
#[must_use]
pub fn netwatch_bpf_objects() -> (usize, usize) {
    let ids: Vec<u64> = bpftool_list("prog")
        .iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("netwatch_"))
        })
        .map(|p| p["id"].as_u64().expect("a program's id"))
        .collect();
    let links = bpftool_list("link")
        .iter()
        .filter(|link| link["prog_id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .count();
    (links, ids.len())
}

/// `bpftool WHAT show --json`: the kernel's objects of that kind.
fn bpftool_list(what: &str) -> Vec<Value> {
    let out = Command::new("bpftool")
        .args([what, "show", "--json"])
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "bpftool {what} show: {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout) {
        Ok(Value::Array(items)) => items,
        other => panic!("bpftool {what} show --json: not a list: {other:?}"),
    }
}

/// Gives a netwatch about to run without root what the systemd unit gives it
/// (`LimitMEMLOCK=infinity`): kernels before 5.11 (the matrix's 5.10) charge BPF maps to
/// `RLIMIT_MEMLOCK`, which netwatch cannot raise without `CAP_SYS_RESOURCE`. The limit is
/// raised in this (root) test process, and children inherit it; newer kernels ignore it.
pub fn unlimited_memlock_for_old_kernels() {
    if crate::kernel_version() >= (5, 11) {
        return;
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct it is given; the test runs as root.
    let raised = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) };
    assert_eq!(raised, 0, "raising RLIMIT_MEMLOCK");
}

/// setpriv arguments: user nobody with only `caps` (e.g. `bpf,net_admin,perfmon`).
#[must_use]
pub fn as_nobody_with(caps: &str) -> Vec<String> {
    let list: Vec<String> = caps.split(',').map(|c| format!("+{c}")).collect();
    let list = list.join(",");
    vec![
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
        format!("--inh-caps=-all,{list}"),
        format!("--ambient-caps=-all,{list}"),
        format!("--bounding-set=-all,{list}"),
    ]
}

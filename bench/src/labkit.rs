//! Where the benchmarks send from. Packet rates use a bare pair of namespaces joined by one
//! veth pair ([`VethPair`]: no firewall, no conntrack, no forwarding, so the rate is as high
//! and as steady as a veth pair gets and netwatch's per-packet cost weighs the most); the
//! storm and the latency runs use the namespace lab (`netwatch_tests::lab::Lab`: client —
//! firewall — server, the firewall dropping DNS). Either way a [`Sender`] starts the
//! generator, netwatch and tcpdump in the sending namespace, and no packet waits for ARP
//! (permanent neighbour entries). Only documentation addresses are used; no route leads out.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use netwatch_tests::lab::{CLIENT_IFACE, Finished, Lab, NetwatchRun};
use serde::Deserialize;

/// The sending end's address, and the receiving end's: the sink of the rate runs.
const SENDER_V4: &str = "203.0.113.2";
pub const SINK_V4: &str = "203.0.113.1";
/// A port nothing tracks: the untracked UDP rate runs send here.
pub const UNTRACKED_PORT: u16 = 9;
const SENDER_IFACE: &str = "nwb0";
const SINK_IFACE: &str = "nwb1";

/// Drops what the rate runs send at the sink's ingress: no ICMP errors back, no socket, no
/// routing lookup.
const SINK_RULES: &str = r#"
table netdev netwatch_bench {
  chain sink {
    type filter hook ingress device "nwb1" priority 0; policy accept;
    udp dport { 9, 53 } drop
  }
}
"#;

/// tcpdump's equivalent of what netwatch looks at: DNS, TCP SYNs (IPv4 and IPv6 without
/// extension headers), ICMP and `ICMPv6`.
pub const TCPDUMP_FILTER: &str = "udp port 53 or (tcp[tcpflags] & tcp-syn != 0) or icmp or icmp6 or (ip6 and tcp and ip6[53] & 2 != 0)";

/// Where the binaries the benchmarks drive are, and where they run.
#[derive(Clone, Debug)]
pub struct Tools {
    pub netwatch: PathBuf,
    pub traffic_gen: PathBuf,
    /// The CPU the generator is pinned to (`taskset`), if any.
    pub generator_cpu: Option<usize>,
    /// The CPU netwatch and tcpdump are pinned to, if any: another one than the generator's.
    pub monitor_cpu: Option<usize>,
}

/// What one generator run reported.
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct Generated {
    pub sent: u64,
    pub seconds: f64,
}

impl Generated {
    #[must_use]
    pub fn pps(&self) -> f64 {
        per_second(self.sent, self.seconds)
    }
}

/// `count` over `seconds` (0 for no time at all).
#[must_use]
pub fn per_second(count: u64, seconds: f64) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "packet counts, far below 2^52")]
    let count = count as f64;
    if seconds > 0.0 { count / seconds } else { 0.0 }
}

/// Stops netwatch and reads what it reported; an error when it did not exit cleanly.
pub fn stop_netwatch(netwatch: NetwatchRun) -> anyhow::Result<Finished> {
    let finished = netwatch.stop();
    if !finished.status.success() {
        anyhow::bail!(
            "netwatch exited with {}: {}",
            finished.status,
            finished.stderr
        );
    }
    Ok(finished)
}

/// `ip netns exec NS program`.
fn in_ns(ns: &str, program: &str) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns, program]);
    command
}

fn ok(mut command: Command) -> anyhow::Result<Output> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

/// The MAC address of `iface` in `ns`.
fn mac_of(ns: &str, iface: &str) -> anyhow::Result<String> {
    let mut command = in_ns(ns, "ip");
    command.args(["-j", "link", "show", iface]);
    let link: serde_json::Value =
        serde_json::from_slice(&ok(command)?.stdout).context("ip -j link")?;
    Ok(link[0]["address"]
        .as_str()
        .context("a MAC address")?
        .to_owned())
}

fn permanent_neighbour(ns: &str, iface: &str, address: &str, mac: &str) -> anyhow::Result<()> {
    let mut command = in_ns(ns, "ip");
    command.args([
        "neigh",
        "replace",
        address,
        "lladdr",
        mac,
        "dev",
        iface,
        "nud",
        "permanent",
    ]);
    ok(command).map(drop)
}

/// A network namespace of the benchmarks', deleted on drop.
struct Namespace {
    name: String,
}

impl Namespace {
    fn create(name: String) -> anyhow::Result<Self> {
        let mut command = Command::new("ip");
        command.args(["netns", "add", &name]);
        ok(command)?;
        Ok(Self { name })
    }

    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let mut command = in_ns(&self.name, program);
        command.args(args);
        ok(command)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

static PAIRS: AtomicU32 = AtomicU32::new(0);

/// Two namespaces joined by one veth pair: the sender (203.0.113.2 on `nwb0`) and the sink
/// (203.0.113.1 on `nwb1`, dropping UDP 9 and 53 at ingress). IPv6 is off on both, so
/// nothing but the generator's packets crosses the pair.
pub struct VethPair {
    sender: Namespace,
    /// Held for its `Drop`, which removes the namespace.
    _sink: Namespace,
}

impl VethPair {
    pub fn new() -> anyhow::Result<Self> {
        let id = format!(
            "{}x{}",
            std::process::id(),
            PAIRS.fetch_add(1, Ordering::Relaxed)
        );
        let sender = Namespace::create(format!("nwbench-tx{id}"))?;
        let sink = Namespace::create(format!("nwbench-rx{id}"))?;
        let mut link = Command::new("ip");
        link.args([
            "link",
            "add",
            SENDER_IFACE,
            "netns",
            &sender.name,
            "type",
            "veth",
        ])
        .args(["peer", "name", SINK_IFACE, "netns", &sink.name]);
        ok(link)?;
        for (ns, iface, address) in [
            (&sender, SENDER_IFACE, SENDER_V4),
            (&sink, SINK_IFACE, SINK_V4),
        ] {
            ns.run(
                "sysctl",
                &[
                    "-qw",
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ],
            )?;
            ns.run(
                "ip",
                &["addr", "add", &format!("{address}/24"), "dev", iface],
            )?;
            ns.run("ip", &["link", "set", iface, "up"])?;
            ns.run("ip", &["link", "set", "lo", "up"])?;
        }
        let mut nft = in_ns(&sink.name, "nft");
        nft.args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = nft.spawn().context("starting nft")?;
        std::io::Write::write_all(
            &mut child.stdin.take().context("nft's stdin")?,
            SINK_RULES.as_bytes(),
        )?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "nft failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        permanent_neighbour(
            &sender.name,
            SENDER_IFACE,
            SINK_V4,
            &mac_of(&sink.name, SINK_IFACE)?,
        )?;
        Ok(Self {
            sender,
            _sink: sink,
        })
    }

    #[must_use]
    pub fn sender<'a>(&'a self, tools: &'a Tools) -> Sender<'a> {
        Sender {
            ns: &self.sender.name,
            iface: SENDER_IFACE,
            tools,
        }
    }
}

/// The namespace lab, with a permanent neighbour entry for the client's router.
pub struct BenchLab {
    pub lab: Lab,
}

impl BenchLab {
    /// Builds the lab (panics from the lab helpers are caught by the caller's section).
    pub fn new() -> anyhow::Result<Self> {
        let lab = Lab::new();
        let mac = mac_of(&lab.firewall.name, "f0")?;
        permanent_neighbour(&lab.client.name, CLIENT_IFACE, SINK_V4, &mac)?;
        Ok(Self { lab })
    }

    #[must_use]
    pub fn sender<'a>(&'a self, tools: &'a Tools) -> Sender<'a> {
        Sender {
            ns: &self.lab.client.name,
            iface: CLIENT_IFACE,
            tools,
        }
    }
}

/// A reference program attached with tcx to an interface's egress and ingress, by a thread
/// that joined the interface's namespace: `bench_floor` (empty: what attaching any tc program
/// at all costs the packet rate) or `bench_track` (the minimal tracker, with a fresh map).
/// Detached when dropped.
pub struct ReferenceProgram {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ReferenceProgram {
    fn attach(ns: &str, iface: &'static str, name: &'static str) -> anyhow::Result<Self> {
        let namespace = format!("/var/run/netns/{ns}");
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            let attached = (|| -> anyhow::Result<aya::Ebpf> {
                let netns = std::fs::File::open(&namespace)
                    .with_context(|| format!("opening {namespace}"))?;
                // SAFETY: setns on a valid namespace fd; it moves only this thread.
                if unsafe {
                    libc::setns(std::os::fd::AsRawFd::as_raw_fd(&netns), libc::CLONE_NEWNET)
                } != 0
                {
                    bail!(
                        "setns into {namespace}: {}",
                        std::io::Error::last_os_error()
                    );
                }
                let mut ebpf = aya::Ebpf::load(crate::BENCH_OBJECT)?;
                let program: &mut aya::programs::SchedClassifier = ebpf
                    .program_mut(name)
                    .with_context(|| format!("{name} missing"))?
                    .try_into()?;
                program.load()?;
                for direction in [
                    aya::programs::TcAttachType::Egress,
                    aya::programs::TcAttachType::Ingress,
                ] {
                    program
                        .attach(iface, direction)
                        .with_context(|| format!("attaching {name} to {iface}"))?;
                }
                Ok(ebpf)
            })();
            match attached {
                Ok(ebpf) => {
                    let _ = ready_tx.send(Ok(()));
                    let _ = stop_rx.recv();
                    drop(ebpf);
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(err));
                }
            }
        });
        ready_rx.recv().context("the attaching thread died")??;
        Ok(Self {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for ReferenceProgram {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts things in a sending namespace, watching or loading its interface.
pub struct Sender<'a> {
    pub ns: &'a str,
    iface: &'static str,
    tools: &'a Tools,
}

impl Sender<'_> {
    /// A reference program on the sending interface (see [`ReferenceProgram`]).
    pub fn attach_reference(&self, name: &'static str) -> anyhow::Result<ReferenceProgram> {
        ReferenceProgram::attach(self.ns, self.iface, name)
    }

    /// `program` in the sending namespace, pinned to `cpu` when given.
    fn pinned(&self, program: &str, cpu: Option<usize>) -> Command {
        match cpu {
            Some(cpu) => {
                let mut command = in_ns(self.ns, "taskset");
                command.args(["-c", &cpu.to_string(), program]);
                command
            }
            None => in_ns(self.ns, program),
        }
    }

    fn generator_command(
        &self,
        mode: &str,
        target: &str,
        seconds: f64,
        max: Option<u64>,
    ) -> Command {
        let mut command = self.pinned(
            &self.tools.traffic_gen.to_string_lossy(),
            self.tools.generator_cpu,
        );
        command.args([mode, target, &format!("{seconds}")]);
        if let Some(max) = max {
            command.arg(max.to_string());
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs the generator to the end.
    pub fn generate(
        &self,
        mode: &str,
        target: &str,
        seconds: f64,
        max: Option<u64>,
    ) -> anyhow::Result<Generated> {
        let out = self
            .generator_command(mode, target, seconds, max)
            .output()
            .context("running traffic-gen")?;
        parse_generated(&out)
    }

    /// Starts the generator; [`finish_generator`] reads its report.
    pub fn spawn_generator(&self, mode: &str, target: &str, seconds: f64) -> anyhow::Result<Child> {
        self.generator_command(mode, target, seconds, None)
            .spawn()
            .context("starting traffic-gen")
    }

    /// netwatch on the sending interface with `--json --timeout 1s`, watching; on the
    /// monitor CPU unless `unpinned`.
    #[must_use]
    pub fn start_netwatch(&self, unpinned: bool) -> NetwatchRun {
        let cpu = if unpinned {
            None
        } else {
            self.tools.monitor_cpu
        };
        let mut command = self.pinned(&self.tools.netwatch.to_string_lossy(), cpu);
        command.args(["--iface", self.iface, "--json", "--timeout", "1s"]);
        NetwatchRun::start(command)
    }

    /// netwatch on the sending interface with `--json` and `args`, on the monitor CPU.
    #[must_use]
    pub fn start_netwatch_with(&self, args: &[&str]) -> NetwatchRun {
        NetwatchRun::start(self.netwatch_command(args))
    }

    /// The command [`Self::start_netwatch_with`] runs.
    #[must_use]
    pub fn netwatch_command(&self, args: &[&str]) -> Command {
        let mut command = self.pinned(
            &self.tools.netwatch.to_string_lossy(),
            self.tools.monitor_cpu,
        );
        command.args(["--iface", self.iface, "--json"]).args(args);
        command
    }

    /// `tcpdump -w /dev/null` with [`TCPDUMP_FILTER`] on the sending interface, listening.
    pub fn start_tcpdump(&self) -> anyhow::Result<Tcpdump> {
        let mut child = self
            .pinned("tcpdump", self.tools.monitor_cpu)
            .args([
                "-i",
                self.iface,
                "-w",
                "/dev/null",
                "-Z",
                "root",
                TCPDUMP_FILTER,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump")?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().context("tcpdump's stderr")?;
        let sink = Arc::clone(&stderr);
        let reader = thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut text = sink.lock().expect("tcpdump stderr");
                text.push_str(&line);
                text.push('\n');
            }
        });
        let mut tcpdump = Tcpdump {
            child,
            stderr,
            reader: Some(reader),
        };
        let start = Instant::now();
        while !tcpdump.stderr_text().contains("listening on") {
            if let Some(status) = tcpdump.child.try_wait()? {
                bail!("tcpdump exited ({status}): {}", tcpdump.stderr_text());
            }
            ensure!(
                start.elapsed() < Duration::from_secs(10),
                "tcpdump did not start listening"
            );
            thread::sleep(Duration::from_millis(20));
        }
        Ok(tcpdump)
    }
}

/// Waits for a generator started with [`Sender::spawn_generator`] and reads its report.
pub fn finish_generator(child: Child) -> anyhow::Result<Generated> {
    parse_generated(
        &child
            .wait_with_output()
            .context("waiting for traffic-gen")?,
    )
}

fn parse_generated(out: &Output) -> anyhow::Result<Generated> {
    ensure!(
        out.status.success(),
        "traffic-gen failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "traffic-gen printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A running tcpdump; stopped (SIGTERM) by [`Tcpdump::stop`] or on drop.
pub struct Tcpdump {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
}

/// tcpdump's closing statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpdumpStats {
    pub captured: u64,
    pub dropped_by_kernel: u64,
}

impl Tcpdump {
    fn stderr_text(&self) -> String {
        self.stderr.lock().expect("tcpdump stderr").clone()
    }

    /// Stops tcpdump and returns what it says it captured and dropped.
    pub fn stop(mut self) -> TcpdumpStats {
        self.terminate();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        parse_tcpdump_stats(&self.stderr_text())
    }

    fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let pid = libc::pid_t::try_from(self.child.id()).unwrap_or(0);
            if pid > 0 {
                // SAFETY: kill(2) on our own child.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let start = Instant::now();
            while matches!(self.child.try_wait(), Ok(None)) {
                if start.elapsed() > Duration::from_secs(5) {
                    let _ = self.child.kill();
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.wait();
        }
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// "N packets captured" and "N packets dropped by kernel" from tcpdump's exit lines.
#[must_use]
pub fn parse_tcpdump_stats(stderr: &str) -> TcpdumpStats {
    let count = |suffix: &str| {
        stderr
            .lines()
            .find_map(|line| line.trim().strip_suffix(suffix))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    TcpdumpStats {
        captured: count("packets captured"),
        dropped_by_kernel: count("packets dropped by kernel"),
    }
}

/// The BPF programs process `pid` holds, by id: each program descriptor's fdinfo says
/// `prog_id:`.
pub fn program_ids_of(pid: u32) -> anyhow::Result<Vec<u32>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        ids.extend(
            text.lines()
                .filter_map(|line| line.strip_prefix("prog_id:"))
                .filter_map(|id| id.trim().parse::<u32>().ok()),
        );
    }
    Ok(ids)
}

/// Loads reference `name` of the bench object `ebpf` and attaches it to raw tracepoint
/// `tracepoint`, for as long as `ebpf` lives.
pub fn attach_reference(ebpf: &mut aya::Ebpf, name: &str, tracepoint: &str) -> anyhow::Result<()> {
    let program: &mut aya::programs::RawTracePoint = ebpf
        .program_mut(name)
        .with_context(|| format!("{name} missing from the bench object"))?
        .try_into()?;
    program.load().with_context(|| format!("loading {name}"))?;
    program
        .attach(tracepoint)
        .with_context(|| format!("attaching {name} to {tracepoint}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tcpdump_statistics() {
        let stderr = "tcpdump: listening on c0, link-type EN10MB (Ethernet), snapshot length 262144 bytes\n\
                      12 packets captured\n40000 packets received by filter\n3 packets dropped by kernel\n";
        assert_eq!(
            parse_tcpdump_stats(stderr),
            TcpdumpStats {
                captured: 12,
                dropped_by_kernel: 3
            }
        );
        assert_eq!(parse_tcpdump_stats(""), TcpdumpStats::default());
    }

    #[test]
    fn generator_rates_guard_zero_durations() {
        assert!(
            (Generated {
                sent: 1_000,
                seconds: 0.5
            }
            .pps()
                - 2_000.0)
                .abs()
                < 1e-9
        );
        assert!(
            Generated {
                sent: 1_000,
                seconds: 0.0
            }
            .pps()
            .abs()
                < f64::EPSILON
        );
    }
}

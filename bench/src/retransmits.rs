//! The retransmission program (`tcp:tcp_retransmit_skb`, path-MTU stalls) against its
//! references, in one run: TCP uploads through a router that drops one in twenty of their data
//! segments retransmit all the time, and three programs see every retransmission at once:
//! netwatch's own (loaded by a netwatch watching the client), an empty program on the same
//! tracepoint (the floor: what running any program there costs) and a minimal follower (the
//! same fields read the same way, and one update of a map like netwatch's). The kernel times
//! each run of each while its statistics are on (`BPF_ENABLE_STATS`): cost per event is run
//! time over runs, read from the programs' info before and after.
//!
//! The retransmissions are the only events the program runs on: the bulk of TCP (data and
//! ACKs) pays nothing, which `untracked_ns_over_floor` (the `programs` section) shows.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use aya::{EbpfLoader, programs::RawTracePoint};
use netwatch_common::{RETRANSMIT_CONFIG_GLOBAL, RETRANSMIT_PROGRAM, RETRANSMIT_TRACEPOINT};
use netwatch_tests::lab::{Lab, SERVER_V4};
use serde::{Deserialize, Serialize};

use crate::labkit::{self, BenchLab, Tools};

/// The reference programs in the bench object.
const FLOOR: &str = "bench_retransmit_floor";
const MINIMAL: &str = "bench_retransmit_minimal";
/// Uploads at once, and the port they go to.
const UPLOADS: usize = 4;
const PORT: &str = "5001";

/// The router drops one in twenty of the uploads' data segments (not their handshakes).
const LOSSY_ROUTER: &str = "flush ruleset
table inet bench_loss {
  chain forward {
    type filter hook forward priority 0; policy accept;
    tcp dport 5001 tcp flags & syn == 0 numgen random mod 20 == 0 drop
  }
}
";

/// One program's cost over the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Timed {
    pub runs: u64,
    pub ns_per_run: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RetransmitResults {
    pub seconds: f64,
    /// netwatch's retransmission program.
    pub program: Timed,
    /// The empty program on the same tracepoint.
    pub floor: Timed,
    /// The minimal follower.
    pub minimal: Timed,
    /// Connections netwatch followed (its summary), to show the program did its work.
    pub followed: u64,
}

impl RetransmitResults {
    /// netwatch's cost per event ÷ the minimal follower's.
    #[must_use]
    pub fn ratio(&self) -> Option<f64> {
        (self.minimal.ns_per_run > 0.0).then(|| self.program.ns_per_run / self.minimal.ns_per_run)
    }
}

fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/lab/tcp_peer.py")
}

fn in_ns(ns: &str, program: &str) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns, program]);
    command
}

/// A child killed and reaped when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The reference programs, loaded and attached by this process (links held by it).
struct References {
    ebpf: aya::Ebpf,
}

impl References {
    fn attach(netns: u32) -> anyhow::Result<Self> {
        let config = netwatch::btf::read_and_parse()
            .retransmits
            .map_err(|why| anyhow::anyhow!("the kernel's BTF: {why}"))?;
        // The client's namespace: the reference's namespace check passes, as netwatch's does.
        let config = netwatch_common::RetransmitConfig { netns, ..config };
        let mut ebpf = EbpfLoader::new()
            .override_global(RETRANSMIT_CONFIG_GLOBAL, &config, true)
            .load(crate::BENCH_OBJECT)
            .context("loading the reference programs")?;
        for name in [FLOOR, MINIMAL] {
            labkit::attach_reference(&mut ebpf, name, RETRANSMIT_TRACEPOINT)?;
        }
        Ok(Self { ebpf })
    }

    fn stats(&self, name: &str) -> anyhow::Result<(Duration, u64)> {
        let program: &RawTracePoint = self
            .ebpf
            .program(name)
            .with_context(|| format!("{name} missing"))?
            .try_into()?;
        let info = program.info()?;
        Ok((info.run_time(), info.run_count()))
    }
}

/// The (run time, runs) of netwatch's retransmission program, the one process `pid` holds.
fn netwatch_stats(pid: u32) -> anyhow::Result<(Duration, u64)> {
    let ids = labkit::program_ids_of(pid)?;
    // The kernel keeps 15 bytes of a program's name (BPF_OBJ_NAME_LEN).
    let name = &RETRANSMIT_PROGRAM[..RETRANSMIT_PROGRAM.len().min(15)];
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing the loaded BPF programs")?;
        if info.name_as_str() == Some(name) && ids.contains(&info.id()) {
            return Ok((info.run_time(), info.run_count()));
        }
    }
    bail!("netwatch (pid {pid}) holds no {RETRANSMIT_PROGRAM} program")
}

fn per_run(before: (Duration, u64), after: (Duration, u64)) -> Timed {
    let runs = after.1.saturating_sub(before.1);
    let ns = after.0.saturating_sub(before.0).as_secs_f64() * 1e9;
    #[expect(clippy::cast_precision_loss, reason = "run counts far below 2^52")]
    let ns_per_run = if runs == 0 { 0.0 } else { ns / runs as f64 };
    Timed { runs, ns_per_run }
}

/// The inode of a named network namespace (what `net->ns.inum` holds).
fn netns_inode(name: &str) -> anyhow::Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let path = format!("/var/run/netns/{name}");
    let inode = std::fs::metadata(&path)
        .with_context(|| format!("stat {path}"))?
        .ino();
    u32::try_from(inode).context("a namespace inode above 32 bits")
}

pub fn run(
    tools: &Tools,
    seconds: f64,
    progress: &dyn Fn(&str),
) -> anyhow::Result<RetransmitResults> {
    let lab = BenchLab::new()?;
    Lab::nft_in(&lab.lab.firewall, LOSSY_ROUTER);
    let ready = lab.lab.dir().join("retransmits-server.ready");
    let _server = Reaped(
        in_ns(&lab.lab.server.name, "python3")
            .arg(peer_script())
            .args(["serve", &ready.to_string_lossy(), PORT, "read"])
            .stdin(Stdio::null())
            .spawn()
            .context("starting the TCP server")?,
    );
    let started = Instant::now();
    while !ready.exists() {
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "the TCP server did not listen within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let bench = lab.sender(tools);
    let netwatch = bench.start_netwatch_with(&[]);
    let pid = netwatch.pid();
    let references = References::attach(netns_inode(&lab.lab.client.name)?)?;
    // Held for the section: the kernel times every program run while this is open.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling the kernel's BPF run-time statistics (BPF_ENABLE_STATS, 5.8+)")?;
    let before = (
        netwatch_stats(pid)?,
        references.stats(FLOOR)?,
        references.stats(MINIMAL)?,
    );
    progress(&format!(
        "retransmits: {UPLOADS} uploads for {seconds} s through a router dropping 5 % of their segments"
    ));
    let wall = Instant::now();
    let uploads: Vec<Reaped> = (0..UPLOADS)
        .map(|_| {
            in_ns(&lab.lab.client.name, "python3")
                .arg(peer_script())
                .args([
                    "upload",
                    SERVER_V4,
                    PORT,
                    "2000000000",
                    &seconds.to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .map(Reaped)
                .context("starting an upload")
        })
        .collect::<anyhow::Result<_>>()?;
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let after = (
        netwatch_stats(pid)?,
        references.stats(FLOOR)?,
        references.stats(MINIMAL)?,
    );
    let elapsed = wall.elapsed().as_secs_f64();
    drop(uploads);
    drop(references);
    let finished = labkit::stop_netwatch(netwatch)?;
    let followed = finished.summary()["retransmitting_connections"]["followed"]
        .as_u64()
        .context("netwatch's summary has no retransmitting_connections.followed")?;
    let results = RetransmitResults {
        seconds: elapsed,
        program: per_run(before.0, after.0),
        floor: per_run(before.1, after.1),
        minimal: per_run(before.2, after.2),
        followed,
    };
    ensure!(
        results.program.runs > 0 && results.minimal.runs > 0,
        "no retransmission was timed: {results:?}"
    );
    Ok(results)
}

//! `connect()` rate with and without netwatch's socket owner programs (issue 13): they sit on
//! every `socket()`, `connect()` and `close()` of the host. A thread that has joined the
//! lab's client namespace creates a UDP socket, connects it to 127.0.0.1:9 and closes it, as
//! fast as it can (no packet leaves: a UDP connect sends nothing), first with nothing
//! attached, then with netwatch running (its programs on the cgroup2 root), round after
//! round. Ratio = with ÷ without, per round; the figure is their median.
//!
//! A UDP connect is the cheapest `connect()` there is, so this is the programs' worst case
//! relative cost. TCP connections on loopback were tried first: on this two-core machine
//! their rate swung twentyfold between rounds of one condition (the accepting thread's
//! scheduling), hiding the programs' cost entirely.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use netwatch_tests::lab::{Lab, NetwatchRun};
use serde::{Deserialize, Serialize};

use crate::{labkit::Tools, stats};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConnectResults {
    pub seconds_per_round: f64,
    /// `socket()` + `connect()` + `close()` per second, per round.
    pub without: Vec<f64>,
    pub with: Vec<f64>,
    /// `with ÷ without`, per round.
    pub ratios: Vec<f64>,
}

impl ConnectResults {
    #[must_use]
    pub fn ratio(&self) -> Option<stats::Figure> {
        stats::Figure::of(&self.ratios)
    }
}

pub fn run(
    tools: &Tools,
    rounds: usize,
    seconds: f64,
    progress: &dyn Fn(&str),
) -> anyhow::Result<ConnectResults> {
    ensure!(rounds > 0, "at least one round");
    let lab = Lab::new();
    let namespace = format!("/var/run/netns/{}", lab.client.name);
    let length = Duration::from_secs_f64(seconds);
    let mut results = ConnectResults {
        seconds_per_round: seconds,
        without: Vec::new(),
        with: Vec::new(),
        ratios: Vec::new(),
    };
    progress(&format!(
        "connects: UDP socket/connect/close, {rounds} rounds of {seconds} s without and with netwatch"
    ));
    for _ in 0..rounds {
        let without = connects_per_s(&namespace, length)?;
        let netwatch = start_netwatch(&lab, tools);
        let with = connects_per_s(&namespace, length);
        let finished = netwatch.stop();
        let with = with?;
        let attribution = &finished.summary()["attribution"];
        if attribution != "available" {
            bail!("netwatch ran without its socket owner programs: {attribution}");
        }
        results.without.push(without);
        results.with.push(with);
        results
            .ratios
            .push(stats::ratio(with, without).unwrap_or(f64::NAN));
    }
    Ok(results)
}

/// netwatch watching the client namespace's `lo`, with the cgroup2 hierarchy mounted in the
/// mount namespace `ip netns exec` makes (it hides the host's).
fn start_netwatch(lab: &Lab, tools: &Tools) -> NetwatchRun {
    let mut command = lab.client.command("sh");
    command
        .args([
            "-c",
            r#"mount -t cgroup2 none /sys/fs/cgroup && exec "$0" "$@""#,
        ])
        .arg(&tools.netwatch)
        .args(["--iface", "lo", "--json", "--timeout", "1s"]);
    NetwatchRun::start(command)
}

/// Socket, connect, close per second for `length`, in the namespace at `namespace`.
fn connects_per_s(namespace: &str, length: Duration) -> anyhow::Result<f64> {
    let namespace = namespace.to_owned();
    thread::spawn(move || -> anyhow::Result<f64> {
        let netns = File::open(&namespace).with_context(|| format!("opening {namespace}"))?;
        // SAFETY: setns on a valid namespace fd; it moves only this thread.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "setns into {namespace}: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: a zeroed sockaddr_in is valid; the fields are set below.
        let mut address: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        address.sin_family = libc::sa_family_t::try_from(libc::AF_INET)?;
        address.sin_port = 9u16.to_be();
        address.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let length_of = libc::socklen_t::try_from(size_of::<libc::sockaddr_in>())?;
        let started = Instant::now();
        let mut done: u64 = 0;
        while started.elapsed() < length {
            for _ in 0..256 {
                // SAFETY: plain socket(2), connect(2) and close(2) on the descriptor made here.
                unsafe {
                    let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                    if fd < 0 {
                        bail!("socket: {}", std::io::Error::last_os_error());
                    }
                    let connected = libc::connect(fd, (&raw const address).cast(), length_of);
                    let error = std::io::Error::last_os_error();
                    libc::close(fd);
                    if connected != 0 {
                        bail!("connect refused: {error}");
                    }
                }
            }
            done += 256;
        }
        #[expect(clippy::cast_precision_loss, reason = "a rate")]
        Ok(done as f64 / started.elapsed().as_secs_f64())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the connect thread panicked"))?
}

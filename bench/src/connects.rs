//! `connect()` rate with and without netwatch's socket owner programs (issue 13): they sit on
//! every `socket()`, `connect()` and `close()` of the host. One thread, joined to the lab's
//! client namespace, opens TCP connections to a listener on 127.0.0.1 that it accepts
//! itself, closing both ends with a reset (no `TIME_WAIT`), as fast as it can, while
//! netwatch runs: first without its socket owner programs, then with them (on the cgroup2
//! root), round after round. Ratio = with ÷ without, per round; `connect_rate_ratio` is
//! their median. (Against no netwatch at all, the reset connections also wake netwatch's
//! `kfree_skb` drop program: that cost is the drop program's, measured elsewhere.)
//!
//! The same for a UDP socket connected and closed (no packet leaves): the cheapest
//! `connect()` there is, so the programs' worst case, reported beside it.
//!
//! One thread does both ends: with the accepting end on another thread, TCP rates swung
//! twentyfold between rounds of one condition on this two-core machine.

use std::{
    fs::File,
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use netwatch_tests::lab::{CLIENT_IFACE, Lab, NetwatchRun};
use serde::{Deserialize, Serialize};

use crate::{labkit::Tools, stats};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Rates {
    /// Operations per second, per round.
    pub without: Vec<f64>,
    pub with: Vec<f64>,
    /// `with ÷ without`, per round.
    pub ratios: Vec<f64>,
}

impl Rates {
    #[must_use]
    pub fn ratio(&self) -> Option<stats::Figure> {
        stats::Figure::of(&self.ratios)
    }

    fn push(&mut self, without: f64, with: f64) {
        self.without.push(without);
        self.with.push(with);
        self.ratios
            .push(stats::ratio(with, without).unwrap_or(f64::NAN));
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConnectResults {
    pub seconds_per_round: f64,
    /// TCP connections (connect, accept, both closed) per second.
    pub tcp: Rates,
    /// UDP `socket()` + `connect()` + `close()` per second.
    pub udp: Rates,
}

impl ConnectResults {
    #[must_use]
    pub fn ratio(&self) -> Option<stats::Figure> {
        self.tcp.ratio()
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Tcp,
    Udp,
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
        tcp: Rates::default(),
        udp: Rates::default(),
    };
    progress(&format!(
        "connects: TCP and UDP connect on loopback, {rounds} rounds of {seconds} s, netwatch without and with its socket owner programs"
    ));
    for _ in 0..rounds {
        let (tcp_without, udp_without) = measure(&lab, tools, &namespace, length, false)?;
        let (tcp_with, udp_with) = measure(&lab, tools, &namespace, length, true)?;
        results.tcp.push(tcp_without, tcp_with);
        results.udp.push(udp_without, udp_with);
    }
    Ok(results)
}

/// TCP and UDP rates with netwatch running, with its socket owner programs (`owners`) or
/// without them: everything else netwatch attaches (its tc programs, the `kfree_skb` drop
/// program that every reset connection wakes) runs in both, so the ratio is the owner
/// programs' alone.
fn measure(
    lab: &Lab,
    tools: &Tools,
    namespace: &str,
    length: Duration,
    owners: bool,
) -> anyhow::Result<(f64, f64)> {
    let netwatch = start_netwatch(lab, tools, owners);
    let rates = per_s(namespace, Kind::Tcp, length)
        .and_then(|tcp| Ok((tcp, per_s(namespace, Kind::Udp, length)?)));
    let finished = netwatch.stop();
    let attribution = finished.summary()["attribution"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if owners != (attribution == "available") {
        bail!("netwatch's socket owner programs: {attribution} (wanted them: {owners})");
    }
    rates
}

/// netwatch watching the client namespace's veth (not `lo`: the loopback connections are not
/// to go through its tc programs), in the mount namespace `ip netns exec` makes, which hides
/// the host's cgroup2 mount: mounted again there when `owners` are wanted, left hidden (netwatch
/// then runs without its socket owner programs) otherwise.
fn start_netwatch(lab: &Lab, tools: &Tools, owners: bool) -> NetwatchRun {
    let mut command = lab.client.command("sh");
    let script = if owners {
        r#"mount -t cgroup2 none /sys/fs/cgroup && exec "$0" "$@""#
    } else {
        r#"exec "$0" "$@""#
    };
    command.args(["-c", script]).arg(&tools.netwatch).args([
        "--iface",
        CLIENT_IFACE,
        "--json",
        "--timeout",
        "1s",
    ]);
    NetwatchRun::start(command)
}

/// Operations of `kind` per second for `length`, in the namespace at `namespace`.
fn per_s(namespace: &str, kind: Kind, length: Duration) -> anyhow::Result<f64> {
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
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let address = listener.local_addr()?;
        let started = Instant::now();
        let mut done: u64 = 0;
        while started.elapsed() < length {
            for _ in 0..64 {
                match kind {
                    Kind::Tcp => {
                        let client = TcpStream::connect(address).context("TCP connect")?;
                        let (server, _) = listener.accept().context("accept")?;
                        reset_on_close(&client);
                        reset_on_close(&server);
                    }
                    Kind::Udp => udp_connect()?,
                }
            }
            done += 64;
        }
        #[expect(clippy::cast_precision_loss, reason = "a rate")]
        Ok(done as f64 / started.elapsed().as_secs_f64())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the connect thread panicked"))?
}

/// A UDP socket connected to 127.0.0.1:9 and closed (`socket`, `connect`, `close`: no bind,
/// no packet).
fn udp_connect() -> anyhow::Result<()> {
    // SAFETY: a zeroed sockaddr_in is valid; the fields are set below.
    let mut address: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    address.sin_family = libc::sa_family_t::try_from(libc::AF_INET)?;
    address.sin_port = 9u16.to_be();
    address.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
    let length = libc::socklen_t::try_from(size_of::<libc::sockaddr_in>())?;
    // SAFETY: plain socket(2), connect(2) and close(2) on the descriptor made here.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let connected = libc::connect(fd, (&raw const address).cast(), length);
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        if connected != 0 {
            bail!("UDP connect refused: {error}");
        }
    }
    Ok(())
}

/// Closing sends a reset instead of a FIN: no `TIME_WAIT`, whose 4-tuples would slow the
/// search for a free port and then exhaust them.
fn reset_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt(2) on a live socket with a value of the size given.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            libc::socklen_t::try_from(size_of::<libc::linger>()).unwrap_or(0),
        );
    }
}

//! Detection latency: one DNS query to each of many distinct blackholed targets (the lab
//! firewall drops DNS to any address), sent from a thread that has joined the client's
//! network namespace, each send's wall-clock time recorded; netwatch (`--json --timeout 1s`)
//! stamps each `verdict` record with the time it reports it. Latency = the time of the
//! target's first `blackholed` verdict minus its query's send time.

use std::{
    collections::BTreeMap,
    fs::File,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd as _,
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail, ensure};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    labkit::{self, BenchLab, Tools},
    stats,
};

/// netwatch's `--timeout` in these runs.
pub const TIMEOUT_MS: f64 = 1_000.0;
/// Targets are 198.51.100.`FIRST_HOST` and up.
const FIRST_HOST: u8 = 100;
/// Between two sends: not a divisor of netwatch's 250 ms poll, so sends fall at every phase
/// of it.
const SPACING: Duration = Duration::from_millis(13);

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatencyResults {
    pub targets: usize,
    /// Targets whose blackholed verdict was seen; the percentiles are over these.
    pub detected: usize,
    pub timeout_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

pub fn run(
    tools: &Tools,
    targets: usize,
    progress: &dyn Fn(&str),
) -> anyhow::Result<LatencyResults> {
    ensure!((1..=150).contains(&targets), "1 to 150 targets");
    let lab = BenchLab::new()?;
    let bench = lab.sender(tools);
    let netwatch = bench.start_netwatch(false);
    progress(&format!(
        "detection latency: {targets} blackholed DNS targets, timeout {TIMEOUT_MS} ms"
    ));
    let namespace = format!("/var/run/netns/{}", bench.ns);
    let sender = thread::spawn(move || send_queries(&namespace, targets));
    let sent = sender
        .join()
        .map_err(|_| anyhow::anyhow!("the sending thread panicked"))??;

    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let found = first_blackholed(&netwatch.records());
        if sent.keys().all(|address| found.contains_key(address)) || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let finished = labkit::stop_netwatch(netwatch)?;
    let found = first_blackholed(&finished.records);
    let latencies = latencies_ms(&sent, &found);
    let figure = |p: f64| stats::percentile(&latencies, p).context("no blackholed verdict at all");
    Ok(LatencyResults {
        targets,
        detected: latencies.len(),
        timeout_ms: TIMEOUT_MS,
        p50_ms: figure(50.0)?,
        p99_ms: figure(99.0)?,
        min_ms: latencies.iter().copied().fold(f64::INFINITY, f64::min),
        max_ms: figure(100.0)?,
    })
}

/// Joins the network namespace at `namespace` (this thread only) and sends one query to each
/// target; returns each target's send time.
fn send_queries(namespace: &str, targets: usize) -> anyhow::Result<BTreeMap<String, SystemTime>> {
    let netns = File::open(namespace).with_context(|| format!("opening {namespace}"))?;
    // SAFETY: setns on a valid namespace fd; it moves only this thread.
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "setns into {namespace}: {}",
            std::io::Error::last_os_error()
        );
    }
    let socket = UdpSocket::bind("0.0.0.0:0").context("binding in the client namespace")?;
    let mut sent = BTreeMap::new();
    for (n, host) in (FIRST_HOST..).take(targets).enumerate() {
        let address = Ipv4Addr::new(198, 51, 100, host);
        let id = u16::try_from(n).unwrap_or(u16::MAX);
        let at = SystemTime::now();
        socket
            .send_to(&query(id), SocketAddrV4::new(address, 53))
            .with_context(|| format!("sending to {address}"))?;
        sent.insert(address.to_string(), at);
        thread::sleep(SPACING);
    }
    Ok(sent)
}

/// A DNS query for `bench.example` type A.
fn query(id: u16) -> Vec<u8> {
    let mut message = id.to_be_bytes().to_vec();
    message.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    message.extend_from_slice(b"\x05bench\x07example\x00\x00\x01\x00\x01");
    message
}

/// Each UDP/53 target's first `blackholed` verdict time, by remote address.
#[must_use]
pub fn first_blackholed(records: &[Value]) -> BTreeMap<String, SystemTime> {
    let mut found = BTreeMap::new();
    for record in records {
        let is_it = record["type"] == "verdict"
            && record["verdict"] == "blackholed"
            && record["proto"] == "udp"
            && record["port"] == 53;
        if !is_it {
            continue;
        }
        let (Some(remote), Some(time)) = (record["remote"].as_str(), record["time"].as_str())
        else {
            continue;
        };
        if let Ok(time) = humantime::parse_rfc3339(time) {
            found.entry(remote.to_owned()).or_insert(time);
        }
    }
    found
}

/// Latencies (ms) of the targets that have both a send time and a verdict.
#[must_use]
pub fn latencies_ms(
    sent: &BTreeMap<String, SystemTime>,
    found: &BTreeMap<String, SystemTime>,
) -> Vec<f64> {
    sent.iter()
        .filter_map(|(address, at)| {
            let verdict = found.get(address)?;
            Some(match verdict.duration_since(*at) {
                Ok(later) => later.as_secs_f64() * 1_000.0,
                // A verdict stamped before the send (clock steps): negative, kept visible.
                Err(earlier) => -earlier.duration().as_secs_f64() * 1_000.0,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn finds_the_first_blackholed_verdict_of_each_dns_target() {
        let records = vec![
            json!({"type": "verdict", "time": "2026-11-24T22:00:00.500Z", "proto": "udp", "remote": "198.51.100.100", "port": 53, "verdict": "pending"}),
            json!({"type": "verdict", "time": "2026-11-24T22:00:01.250Z", "proto": "udp", "remote": "198.51.100.100", "port": 53, "verdict": "blackholed"}),
            json!({"type": "verdict", "time": "2026-11-24T22:00:09.000Z", "proto": "udp", "remote": "198.51.100.100", "port": 53, "verdict": "blackholed"}),
            json!({"type": "verdict", "time": "2026-11-24T22:00:01.000Z", "proto": "tcp", "remote": "198.51.100.101", "port": 443, "verdict": "blackholed"}),
            json!({"type": "summary"}),
        ];
        let found = first_blackholed(&records);
        assert_eq!(found.len(), 1);
        let sent = BTreeMap::from([
            (
                "198.51.100.100".to_owned(),
                humantime::parse_rfc3339("2026-11-24T22:00:00.100Z").unwrap(),
            ),
            (
                "198.51.100.101".to_owned(),
                humantime::parse_rfc3339("2026-11-24T22:00:00.100Z").unwrap(),
            ),
        ]);
        let latencies = latencies_ms(&sent, &found);
        assert_eq!(latencies.len(), 1);
        assert!((latencies[0] - 1_150.0).abs() < 1e-6, "{latencies:?}");
    }

    #[test]
    fn queries_are_well_formed() {
        let message = query(0x1234);
        assert_eq!(&message[..2], &[0x12, 0x34]);
        assert_eq!(message.len(), 12 + 15 + 4);
    }
}

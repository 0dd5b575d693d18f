//! A request storm: the generator sends distinct DNS queries through the lab firewall, which
//! drops DNS, as fast as it can; netwatch (`--json --timeout 1s`) must count every one: each
//! either judged unanswered or, past the pending table's capacity, counted untracked (and
//! reported as lost). Its CPU time and memory are read from /proc meanwhile.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use netwatch_tests::lab::DNS_V4;
use serde::{Deserialize, Serialize};

use crate::{
    labkit::{self, BenchLab, Tools},
    procfs::{self, CpuTimes},
};

/// How long after the storm netwatch is given to judge the last requests: the 1 s timeout,
/// the sweep margin, a few polls.
pub const SETTLE: Duration = Duration::from_secs(3);
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StormResults {
    pub seconds: f64,
    pub sent: u64,
    pub requests_per_s: f64,
    /// netwatch's final record of the target.
    pub requests: u64,
    pub unanswered: u64,
    pub untracked: u64,
    pub in_flight: u64,
    /// Copies of a request still pending, as netwatch counted them: none in a storm of
    /// distinct queries, so any here are requests the generator repeated (a source port
    /// reused while its queries were pending), which the counts then miss by as many.
    #[serde(default)]
    pub retransmits: u64,
    /// The summary's `lost_requests`.
    pub lost_requests: u64,
    pub count_exact: bool,
    /// netwatch's CPU time during the storm, % of one core.
    pub cpu_user_pct: f64,
    pub cpu_system_pct: f64,
    /// During the settling after the storm (judging what was left).
    pub settle_cpu_pct: f64,
    /// Peak of the resident set sampled every 100 ms, and the kernel's high-water mark.
    pub rss_peak_mib: f64,
    pub rss_hwm_mib: f64,
}

impl StormResults {
    #[must_use]
    pub fn cpu_pct(&self) -> f64 {
        self.cpu_user_pct + self.cpu_system_pct
    }
}

/// Counts are exact when every request sent was counted, and each was either judged
/// unanswered or counted untracked, which the summary reports as lost.
#[must_use]
pub const fn exact(sent: u64, requests: u64, unanswered: u64, untracked: u64, lost: u64) -> bool {
    requests == sent && unanswered + untracked == sent && lost == untracked
}

pub fn run(tools: &Tools, seconds: f64, progress: &dyn Fn(&str)) -> anyhow::Result<StormResults> {
    let lab = BenchLab::new()?;
    let bench = lab.sender(tools);
    let target = format!("{DNS_V4}:53");
    let netwatch = bench.start_netwatch(false);
    let pid = netwatch.pid();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    ensure!(
        comm.trim() == "netwatch",
        "pid {pid} is {:?}, not netwatch",
        comm.trim()
    );

    progress(&format!(
        "storm: distinct DNS queries to blackholed {target} for {seconds} s"
    ));
    let mut peak_rss = 0u64;
    let mut sample = || {
        if let Some((rss, _)) = procfs::rss_kib(pid) {
            peak_rss = peak_rss.max(rss);
        }
    };
    let cpu_start = CpuTimes::of(pid).context("netwatch's CPU times")?;
    let started = Instant::now();
    let mut generator = bench.spawn_generator("dns", &target, seconds)?;
    while generator.try_wait()?.is_none() {
        sample();
        thread::sleep(SAMPLE_EVERY);
    }
    let storm_wall = started.elapsed();
    let cpu_storm = CpuTimes::of(pid).context("netwatch's CPU times")?;
    let generated = labkit::finish_generator(generator)?;

    let settle_start = Instant::now();
    while settle_start.elapsed() < SETTLE {
        sample();
        thread::sleep(SAMPLE_EVERY);
    }
    let cpu_settled = CpuTimes::of(pid).context("netwatch's CPU times")?;
    let hwm = procfs::rss_kib(pid).map_or(0, |(_, hwm)| hwm);
    let finished = labkit::stop_netwatch(netwatch)?;
    let targets = finished.targets();
    let record = targets
        .get(&("udp".to_owned(), DNS_V4.to_owned(), Some(53)))
        .with_context(|| format!("netwatch reported no target {target}"))?;
    let field = |name: &str| {
        record[name]
            .as_u64()
            .with_context(|| format!("{name} in {record}"))
    };
    let summary = finished
        .records
        .iter()
        .find(|r| r["type"] == "summary")
        .context("no summary record")?;
    let lost = summary["lost_requests"]
        .as_u64()
        .context("lost_requests in the summary")?;
    let (requests, unanswered, untracked) = (
        field("requests")?,
        field("unanswered")?,
        field("untracked")?,
    );
    let (cpu_user_pct, cpu_system_pct) = cpu_storm.percent_since(&cpu_start, storm_wall);
    let (settle_user, settle_system) =
        cpu_settled.percent_since(&cpu_storm, settle_start.elapsed());
    #[expect(clippy::cast_precision_loss, reason = "KiB of memory, far below 2^52")]
    let mib = |kib: u64| kib as f64 / 1024.0;
    Ok(StormResults {
        seconds: generated.seconds,
        sent: generated.sent,
        requests_per_s: generated.pps(),
        requests,
        unanswered,
        untracked,
        in_flight: field("in_flight").unwrap_or(0),
        retransmits: field("retransmits")?,
        lost_requests: lost,
        count_exact: exact(generated.sent, requests, unanswered, untracked, lost),
        cpu_user_pct,
        cpu_system_pct,
        settle_cpu_pct: settle_user + settle_system,
        rss_peak_mib: mib(peak_rss),
        rss_hwm_mib: mib(hwm),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_means_every_request_accounted_for() {
        assert!(exact(1_000, 1_000, 700, 300, 300));
        assert!(!exact(1_000, 999, 700, 300, 300), "one request missed");
        assert!(
            !exact(1_000, 1_000, 699, 300, 300),
            "one request neither judged nor lost"
        );
        assert!(
            !exact(1_000, 1_000, 700, 300, 299),
            "lost requests misreported"
        );
    }
}

//! The previous full run's figures, kept in the repository (`bench/baseline.json`): a new
//! full run's tables show each figure beside it, the change marked, and then replace it. A
//! regression is visible the day it lands; nothing gates on it.

use std::{collections::BTreeMap, path::Path};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::report::Report;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// The commit the run measured, its date, the machine.
    pub commit: String,
    pub date: String,
    pub cpu_model: String,
    pub kernel: String,
    /// How the figures were taken (`full`; `transcribed` for the first baseline, copied from
    /// BENCHMARKS.md).
    pub mode: String,
    /// Every contract figure the run measured, by report key (`verifier_insns.PROGRAM` for
    /// the verifier's counts).
    pub figures: BTreeMap<String, f64>,
}

/// Which way a figure improves, for marking its change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
    /// A reference's figure or another tool's (the machine's, not netwatch's).
    Neither,
}

/// Which way `key` improves.
#[must_use]
pub fn better(key: &str) -> Better {
    match key {
        "floor_ns"
        | "tcpdump_pps_ratio"
        | "drop_floor_ns"
        | "drop_headers_ns"
        | "drop_counter_ns"
        | "retransmit_floor_ns"
        | "retransmit_minimal_ns" => Better::Neither,
        "udp_pps_ratio" | "dns_flood_pps_ratio" | "storm_requests_per_s" | "connect_rate_ratio" => {
            Better::Higher
        }
        _ => Better::Lower,
    }
}

/// Changes smaller than this (relative) are shown as unchanged: within any run's noise.
const SAME: f64 = 0.02;

/// `now` beside `before`: the relative change, and whether it is better or worse.
#[must_use]
pub fn change(key: &str, before: f64, now: f64) -> String {
    if before == 0.0 || !before.is_finite() || !now.is_finite() {
        return "—".to_owned();
    }
    let relative = (now - before) / before.abs();
    let percent = format!("{:+.0} %", relative * 100.0).replace('-', "−");
    if relative.abs() < SAME {
        return format!("{percent} (same)");
    }
    let improved = match better(key) {
        Better::Lower => relative < 0.0,
        Better::Higher => relative > 0.0,
        Better::Neither => return percent,
    };
    if improved {
        format!("{percent} ✓ better")
    } else {
        format!("{percent} ⚠ worse")
    }
}

impl Baseline {
    /// The figures of `report` (a full run), to compare the next one with.
    #[must_use]
    pub fn of(report: &Report, keys: &[&str]) -> Self {
        let mut figures: BTreeMap<String, f64> = keys
            .iter()
            .filter_map(|key| {
                crate::markdown::value_of(report, key).map(|v| ((*key).to_owned(), v))
            })
            .collect();
        for (program, count) in report.verifier_insns.iter().flatten() {
            figures.insert(format!("verifier_insns.{program}"), f64::from(*count));
        }
        let m = &report.meta;
        Self {
            commit: m.commit.clone(),
            date: m.date.clone(),
            cpu_model: m.cpu_model.clone(),
            kernel: m.kernel.clone(),
            mode: m.mode.clone(),
            figures,
        }
    }

    /// The baseline at `path`; `None` when there is none yet.
    pub fn read(path: &Path) -> anyhow::Result<Option<Self>> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .with_context(|| format!("parsing {}", path.display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
    }

    /// One line saying what the figures are compared with.
    #[must_use]
    pub fn describe(&self) -> String {
        format!(
            "commit {}, {} on {} (Linux {}){}",
            self.commit,
            self.date,
            self.cpu_model,
            self.kernel,
            if self.mode == "transcribed" {
                ", its figures transcribed from BENCHMARKS.md"
            } else {
                ""
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_marked_by_which_way_the_figure_improves() {
        assert_eq!(change("answer_match_ratio", 3.87, 1.70), "−56 % ✓ better");
        assert_eq!(
            change("untracked_ns_over_floor", 11.0, 12.0),
            "+9 % ⚠ worse"
        );
        assert_eq!(change("udp_pps_ratio", 0.92, 0.97), "+5 % ✓ better");
        assert_eq!(change("dns_flood_pps_ratio", 0.80, 0.70), "−13 % ⚠ worse");
        assert_eq!(change("floor_ns", 38.0, 15.0), "−61 %");
        // The retransmission program's references are the machine's, not netwatch's.
        assert_eq!(change("retransmit_floor_ns", 80.2, 67.2), "−16 %");
        assert_eq!(change("retransmit_minimal_ns", 449.9, 541.0), "+20 %");
        assert_eq!(change("storm_rss_mib", 60.3, 60.5), "+0 % (same)");
        assert_eq!(change("storm_rss_mib", 0.0, 60.5), "—");
    }

    #[test]
    fn a_baseline_round_trips_through_json() {
        let baseline = Baseline {
            commit: "ae76dec".into(),
            date: "2026-11-26T17:03:09Z".into(),
            cpu_model: "AMD EPYC".into(),
            kernel: "6.18.44".into(),
            mode: "transcribed".into(),
            figures: BTreeMap::from([("floor_ns".into(), 38.0)]),
        };
        let text = serde_json::to_string(&baseline).unwrap();
        assert_eq!(serde_json::from_str::<Baseline>(&text).unwrap(), baseline);
        assert!(baseline.describe().contains("transcribed"));
    }
}

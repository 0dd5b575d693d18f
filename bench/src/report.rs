//! `report.json`: the contract's keys at the top (medians), their ranges, the goals, every
//! section's details, and the machine it ran on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    connects::ConnectResults,
    drops::DropResults,
    goals::{self, GoalResult},
    latency::LatencyResults,
    programs::ProgramResults,
    rates::{Condition, RateResults},
    retransmits::RetransmitResults,
    startup::StartupResults,
    stats::Figure,
    storm::StormResults,
};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub floor_ns: Option<f64>,
    pub untracked_ns_over_floor: Option<f64>,
    /// The same on a device without a link-layer header (the L3 classifier, egress).
    #[serde(default)]
    pub l3_untracked_ns_over_floor: Option<f64>,
    pub tracked_request_ratio: Option<f64>,
    pub answer_match_ratio: Option<f64>,
    /// Matching answer ÷ the minimal matcher that also reads the clock (worst kind): what
    /// of `answer_match_ratio` is left beside the latency's clock read.
    #[serde(default)]
    pub answer_timed_match_ratio: Option<f64>,
    pub udp_pps_ratio: Option<f64>,
    pub tcpdump_pps_ratio: Option<f64>,
    pub dns_flood_pps_ratio: Option<f64>,
    pub dns_flood_count_exact: Option<bool>,
    pub storm_requests_per_s: Option<f64>,
    pub storm_count_exact: Option<bool>,
    pub storm_user_cpu_pct: Option<f64>,
    pub storm_rss_mib: Option<f64>,
    /// The drop program's kernel run time per watched drop, and per drop it lets go.
    pub drop_program_ns: Option<f64>,
    pub drop_unwatched_ns: Option<f64>,
    /// Its references on the same drops: the empty program (watched storm), the headers read
    /// (unwatched storm) and the minimal counter (watched storm).
    #[serde(default)]
    pub drop_floor_ns: Option<f64>,
    #[serde(default)]
    pub drop_headers_ns: Option<f64>,
    #[serde(default)]
    pub drop_counter_ns: Option<f64>,
    /// `drop_program_ns` ÷ `drop_counter_ns`.
    #[serde(default)]
    pub drop_watched_ratio: Option<f64>,
    pub drop_storm_count_exact: Option<bool>,
    /// The drop program and netwatch's process in the drop storm, % of one core.
    pub drop_storm_cpu_pct: Option<f64>,
    /// The retransmission program's kernel run time per retransmission, an empty program's
    /// on the same tracepoint and the minimal follower's, in the same run, and the first
    /// over the last.
    pub retransmit_program_ns: Option<f64>,
    pub retransmit_floor_ns: Option<f64>,
    pub retransmit_minimal_ns: Option<f64>,
    pub retransmit_ratio: Option<f64>,
    pub detection_latency_ms_p99: Option<f64>,
    /// TCP `connect()` rate on loopback with netwatch's socket owner programs on the
    /// cgroup2 root ÷ netwatch without them.
    pub connect_rate_ratio: Option<f64>,
    /// Milliseconds from netwatch's command to its "watching" line (median of the starts).
    #[serde(default)]
    pub startup_ms: Option<f64>,
    /// Per program: instructions the verifier processed.
    pub verifier_insns: Option<BTreeMap<String, u32>>,
    /// The largest of `verifier_insns`, as one number.
    pub verifier_insns_max: Option<u32>,
    /// Median, min and max of each key above measured more than once.
    pub ranges: BTreeMap<String, Figure>,
    pub goals: Vec<GoalResult>,
    pub programs: Option<ProgramResults>,
    pub rates: Option<RateResults>,
    pub storm: Option<StormResults>,
    pub drops: Option<DropResults>,
    pub retransmits: Option<RetransmitResults>,
    pub latency: Option<LatencyResults>,
    pub connects: Option<ConnectResults>,
    #[serde(default)]
    pub startup: Option<StartupResults>,
    pub meta: Meta,
    /// Sections that failed, one line each.
    pub errors: Vec<String>,
}

/// Where, when and how the report was made.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Meta {
    /// `full`, `quick` or `smoke`.
    pub mode: String,
    pub date: String,
    pub commit: String,
    /// Files of the measured crates with uncommitted changes when it ran.
    pub dirty: Vec<String>,
    pub kernel: String,
    pub cpu_model: String,
    pub cores: usize,
    pub memory_mib: u64,
    pub rustc: String,
    pub load_before: [f64; 3],
    pub load_after: [f64; 3],
    /// `kernel.bpf_stats_enabled` as found (it is set to 0 for the run).
    pub bpf_stats_enabled_found: Option<String>,
    pub duration_s: f64,
    /// The parameters of each section.
    pub plan: BTreeMap<String, String>,
}

impl Report {
    /// Fills the contract's keys and their ranges from the sections, then the goals.
    pub fn finish(&mut self) {
        let mut ranges = BTreeMap::new();
        let mut put = |key: &str, figure: Option<Figure>| -> Option<f64> {
            let figure = figure?;
            ranges.insert(key.to_owned(), figure);
            Some(figure.median)
        };
        if let Some(p) = &self.programs {
            self.floor_ns = put("floor_ns", Some(p.floor_ns));
            self.untracked_ns_over_floor =
                put("untracked_ns_over_floor", Some(p.untracked_ns_over_floor));
            self.l3_untracked_ns_over_floor =
                put("l3_untracked_ns_over_floor", p.l3_untracked_ns_over_floor);
            self.tracked_request_ratio = put(
                "tracked_request_ratio",
                p.worst_fresh("request").map(|k| k.ratio),
            );
            self.answer_match_ratio = put(
                "answer_match_ratio",
                p.worst_fresh("answer").map(|k| k.ratio),
            );
            self.answer_timed_match_ratio =
                put("answer_timed_match_ratio", p.worst_fresh_timed_answer());
            self.verifier_insns = Some(p.verifier_insns.clone());
            self.verifier_insns_max = p.verifier_insns.values().copied().max();
        }
        if let Some(r) = &self.rates {
            self.udp_pps_ratio = put("udp_pps_ratio", r.udp.ratio(Condition::Netwatch));
            self.tcpdump_pps_ratio = put("tcpdump_pps_ratio", r.udp.ratio(Condition::Tcpdump));
            self.dns_flood_pps_ratio = put(
                "dns_flood_pps_ratio",
                r.dns_flood.ratio(Condition::Netwatch),
            );
            self.dns_flood_count_exact = r.dns_flood.count_exact();
        }
        if let Some(s) = &self.storm {
            self.storm_requests_per_s = Some(s.requests_per_s);
            self.storm_count_exact = Some(s.count_exact);
            self.storm_user_cpu_pct = Some(s.cpu_pct());
            // The kernel's high-water mark: never below any sample.
            self.storm_rss_mib = Some(s.rss_hwm_mib.max(s.rss_peak_mib));
        }
        if let Some(d) = &self.drops {
            self.drop_program_ns = Some(d.watched.ns_per_run);
            self.drop_unwatched_ns = Some(d.unwatched.ns_per_run);
            self.drop_floor_ns = d.watched.reference_ns(crate::drops::DROP_FLOOR);
            self.drop_headers_ns = d.unwatched.reference_ns(crate::drops::DROP_HEADERS);
            self.drop_counter_ns = d.watched.reference_ns(crate::drops::DROP_COUNTER);
            self.drop_watched_ratio = self
                .drop_counter_ns
                .filter(|counter| *counter > 0.0)
                .map(|counter| d.watched.ns_per_run / counter);
            self.drop_storm_count_exact = Some(d.count_exact);
            self.drop_storm_cpu_pct = Some(d.watched.program_cpu_pct + d.watched.netwatch_cpu_pct);
        }
        if let Some(r) = &self.retransmits {
            self.retransmit_program_ns = Some(r.program.ns_per_run);
            self.retransmit_floor_ns = Some(r.floor.ns_per_run);
            self.retransmit_minimal_ns = Some(r.minimal.ns_per_run);
            self.retransmit_ratio = r.ratio();
        }
        if let Some(l) = &self.latency {
            self.detection_latency_ms_p99 = Some(l.p99_ms);
        }
        if let Some(c) = &self.connects {
            self.connect_rate_ratio = put("connect_rate_ratio", c.ratio());
        }
        if let Some(s) = &self.startup {
            self.startup_ms = put("startup_ms", s.figure());
        }
        self.ranges = ranges;
        self.goals = goals::evaluate(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rates::{ConditionRates, CountedRound, RateRun};

    #[test]
    fn keys_come_from_the_sections_and_serialize_as_numbers() {
        let run = |none: f64, with: f64, condition| RateRun {
            conditions: vec![
                ConditionRates {
                    condition: Condition::None,
                    pps: vec![none; 4],
                    ratios: vec![],
                },
                ConditionRates {
                    condition,
                    pps: vec![with; 4],
                    ratios: vec![with / none; 4],
                },
            ],
            counted: vec![CountedRound {
                sent: 10,
                requests: 10,
                untracked: 0,
            }],
        };
        let mut udp = run(100.0, 98.0, Condition::Netwatch);
        udp.conditions.push(ConditionRates {
            condition: Condition::Tcpdump,
            pps: vec![80.0; 4],
            ratios: vec![0.8; 4],
        });
        let mut report = Report {
            rates: Some(RateResults::of_runs(
                udp,
                run(100.0, 90.0, Condition::Netwatch),
                run(100.0, 95.0, Condition::Netwatch),
            )),
            ..Report::default()
        };
        report.finish();
        let json = serde_json::to_value(&report).unwrap();
        assert!((json["udp_pps_ratio"].as_f64().unwrap() - 0.98).abs() < 1e-9);
        assert!((json["tcpdump_pps_ratio"].as_f64().unwrap() - 0.8).abs() < 1e-9);
        assert!((json["dns_flood_pps_ratio"].as_f64().unwrap() - 0.9).abs() < 1e-9);
        assert_eq!(json["dns_flood_count_exact"], true);
        assert!(json["floor_ns"].is_null(), "not measured: null");
        assert_eq!(json["ranges"]["udp_pps_ratio"]["n"], 4);
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back.udp_pps_ratio, report.udp_pps_ratio);
        assert!(!back.goals.is_empty());
    }

    #[test]
    fn the_timed_matcher_ratio_is_the_worst_answer_over_it_and_old_reports_still_read() {
        use crate::programs::{KindCost, ProgramResults};
        let one = |v: f64| Figure {
            median: v,
            min: v,
            max: v,
            n: 1,
        };
        let kind = |name: &str, role: &str, ratio: f64, timed: Option<f64>| KindCost {
            kind: name.to_owned(),
            role: role.to_owned(),
            real_ns: one(100.0),
            reference_ns: one(60.0),
            ratio: one(ratio),
            raw_ratio: None,
            over_floor_ratio: None,
            timed_reference_ns: timed.map(|_| one(80.0)),
            timed_ratio: timed.map(one),
        };
        let programs = ProgramResults {
            repeat: 1,
            reps: 1,
            keys: 1,
            rounds: 1,
            floor_ns: one(15.0),
            egress_data_ns: one(19.0),
            ingress_data_ns: one(19.0),
            untracked_ns_over_floor: one(4.0),
            ingress_untracked_ns_over_floor: one(4.0),
            udp_unwatched_ns_over_floor: None,
            udp_watched_ns_over_floor: None,
            l3_untracked_ns_over_floor: None,
            l3_ingress_untracked_ns_over_floor: None,
            steady: vec![],
            // The worst by the contract's ratio is not the worst over the timed matcher.
            fresh: vec![
                kind("syn", "request", 1.9, None),
                kind("syn_ack", "answer", 1.8, Some(1.2)),
                kind("dns_response", "answer", 1.7, Some(1.3)),
            ],
            timer_overhead_ns: one(28.0),
            verifier_insns: BTreeMap::new(),
        };
        let mut report = Report {
            programs: Some(programs),
            ..Report::default()
        };
        report.finish();
        assert_eq!(report.tracked_request_ratio, Some(1.9));
        assert_eq!(report.answer_match_ratio, Some(1.8));
        assert_eq!(report.answer_timed_match_ratio, Some(1.3));

        // A kind from a report made before the timed matcher existed.
        let mut old = serde_json::to_value(kind("syn_ack", "answer", 1.8, None)).unwrap();
        let fields = old.as_object_mut().unwrap();
        fields.remove("timed_reference_ns");
        fields.remove("timed_ratio");
        let back: KindCost = serde_json::from_value(old).unwrap();
        assert!(back.timed_ratio.is_none() && back.timed_reference_ns.is_none());
    }
}

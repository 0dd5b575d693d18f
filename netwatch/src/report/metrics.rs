//! Prometheus metrics: the snapshot as a scrape body. Pure: no I/O, no server.
//!
//! The tracker's state is cumulative (counters read from the kernel), not a stream of
//! increments, so instead of keeping live `prometheus_client` metrics in step with it this
//! module builds a fresh [`Registry`] per scrape with one [`Collector`] that encodes the
//! snapshot as it is: counters, gauges, and a histogram with netwatch's own pre-aggregated
//! log2 latency buckets.
//!
//! [`render`] writes the Prometheus text format 0.0.4 (serve it as [`CONTENT_TYPE`]): that
//! is what every Prometheus scrapes and what `promtool check metrics` lints.
//!
//! # Metrics
//!
//! Per target, labelled `direction`, `proto`, `remote`, `port` (the number as text, `""` for
//! ICMP). `direction` is `egress` for requests this host sent (`remote` is where they went,
//! `port` the remote port) and `ingress` for requests it received (`remote` is the peer that
//! asked, `port` this host's own port): every per-target family has it, so a query that sums
//! over remotes keeps the two apart by keeping `direction`.
//!
//! | metric | type | |
//! | --- | --- | --- |
//! | `netwatch_requests_total` | counter | distinct requests (sent for `egress`, received for `ingress`) |
//! | `netwatch_answered_total` | counter | answered within the timeout |
//! | `netwatch_rejected_total` | counter | extra label `reason` (`tcp-reset`, `icmp-host-prohibited`, …), one series per reason seen |
//! | `netwatch_unanswered_total` | counter | neither answered nor rejected within the timeout |
//! | `netwatch_retransmits_total` | counter | retransmitted requests (not new requests) |
//! | `netwatch_untracked_total` | counter | requests not tracked: the kernel's pending table was full |
//! | `netwatch_late_total` | counter | answers or rejections after the timeout |
//! | `netwatch_mtu_stalls_total` | counter | TCP connections that opened, then stalled: large segments dying, small ones passing (path MTU) |
//! | `netwatch_path_mtu_signals_total` | counter | ICMP "fragmentation needed" / `ICMPv6` "packet too big" that reached this host about the target's packets |
//! | `netwatch_target_verdict` | gauge | extra label `verdict`: 1 for the current verdict, 0 for the other four |
//! | `netwatch_answer_latency_seconds` | histogram | answer latency, log2 buckets from 2 µs to 8.6 s |
//!
//! Process-wide: `netwatch_kernel_events_total{event}` (every kernel counter, by
//! [`KernelCounter::name`]), `netwatch_local_drops_total{reason}` (watched packets this host
//! dropped, by the kernel's drop reason name: bounded by the kernel's `enum skb_drop_reason`), `netwatch_evictions_total` (requests the kernel could not track),
//! `netwatch_ruleset_changes_total` (rule and chain changes of this host's nftables ruleset
//! announced since the start, summarized ones included),
//! and the gauges `netwatch_in_flight_requests`, `netwatch_tombstones`,
//! `netwatch_uptime_seconds`, `netwatch_timeout_seconds`, `netwatch_window_seconds`,
//! `netwatch_watched_interfaces{interface, kind, attach}` and `netwatch_build_info{version}`.
//!
//! # Cardinality
//!
//! Targets are bounded by [`Cardinality`]: per service (direction, proto, port), the
//! [`Cardinality::remotes_per_service`] busiest remotes by requests get their own series; the
//! rest are folded into one `remote="other"` target whose counters and latency buckets are
//! the sums of theirs and whose verdict is the worst of theirs. Every per-target metric thus
//! has at most `remotes_per_service + 1` remotes per service. A remote that moves in or out
//! of the busiest set moves its counts between its own series and `other`, which Prometheus
//! sees as a counter reset of `other`; `rate()` copes, an exact `increase()` across that
//! moment does not.

use std::{collections::BTreeMap, fmt};

use netwatch_common::{
    KernelCounter, LATENCY_BUCKETS, REASON_SLOTS, Reason, latency_bucket_upper_ns,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet, prometheus_text},
    metrics::MetricType,
    registry::{Registry, Unit},
};

use super::RunInfo;
use crate::{
    snapshot::{Snapshot, TargetView},
    target::{Direction, Proto},
    verdict::Verdict,
};

/// `Content-Type` of [`render`]'s output: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The `remote` label of the target that folds the remotes beyond the bound.
pub const OTHER_REMOTE: &str = "other";

/// Bounds on the number of series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cardinality {
    /// Per service (direction, proto, port): how many remotes, the busiest by requests, get
    /// series of their own. The others are summed into `remote="other"`. Default 20, so each
    /// per-target metric has at most 21 remotes per service.
    pub remotes_per_service: usize,
}

impl Default for Cardinality {
    fn default() -> Self {
        Self {
            remotes_per_service: 20,
        }
    }
}

/// The snapshot in the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]).
#[must_use]
pub fn render(snapshot: &Snapshot, run: &RunInfo, limits: &Cardinality) -> String {
    let registry = registry(snapshot, run, *limits);
    let mut out = String::new();
    prometheus_text::encode(&mut out, &registry).expect("writing to a String does not fail");
    out
}

fn registry(snapshot: &Snapshot, run: &RunInfo, limits: Cardinality) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector::new(snapshot, run, limits)));
    registry
}

/// One series set: a target, or the fold of a service's remotes beyond the bound.
#[derive(Debug)]
struct Row {
    direction: Direction,
    proto: Proto,
    /// Canonical address, or [`OTHER_REMOTE`].
    remote: String,
    port_label: String,
    requests: u64,
    answered: u64,
    rejected: u64,
    unanswered: u64,
    retransmits: u64,
    untracked: u64,
    late: u64,
    mtu_stalls: u64,
    path_mtu_signals: u64,
    verdict: Verdict,
    rejected_by_reason: [u64; REASON_SLOTS],
    latency_buckets: [u64; LATENCY_BUCKETS],
}

impl Row {
    fn of(target: &TargetView) -> Self {
        Self {
            direction: target.direction,
            proto: target.proto,
            remote: target.remote.to_string(),
            port_label: target.port.map(|port| port.to_string()).unwrap_or_default(),
            requests: target.requests,
            answered: target.answered,
            rejected: target.rejected,
            unanswered: target.unanswered,
            retransmits: target.retransmits,
            untracked: target.untracked,
            late: target.late,
            mtu_stalls: target.mtu_stalls,
            path_mtu_signals: target.path_mtu_signals,
            verdict: target.verdict,
            rejected_by_reason: target.rejected_by_reason,
            latency_buckets: target.latency_buckets,
        }
    }

    /// Adds `target` into this fold: sums, and the worse verdict.
    fn fold(&mut self, target: &TargetView) {
        self.requests += target.requests;
        self.answered += target.answered;
        self.rejected += target.rejected;
        self.unanswered += target.unanswered;
        self.retransmits += target.retransmits;
        self.untracked += target.untracked;
        self.late += target.late;
        self.mtu_stalls += target.mtu_stalls;
        self.path_mtu_signals += target.path_mtu_signals;
        // Verdicts order worst first.
        self.verdict = self.verdict.min(target.verdict);
        for (sum, n) in self
            .rejected_by_reason
            .iter_mut()
            .zip(target.rejected_by_reason)
        {
            *sum += n;
        }
        for (sum, n) in self.latency_buckets.iter_mut().zip(target.latency_buckets) {
            *sum += n;
        }
    }

    fn labels(&self) -> [(&'static str, &str); 4] {
        [
            ("direction", self.direction.as_str()),
            ("proto", self.proto.as_str()),
            ("remote", &self.remote),
            ("port", &self.port_label),
        ]
    }

    fn labels_with<'a>(
        &'a self,
        key: &'static str,
        value: &'a str,
    ) -> [(&'static str, &'a str); 5] {
        let [a, b, c, d] = self.labels();
        [a, b, c, d, (key, value)]
    }

    /// (reason name, count) for every reason with a nonzero count. Codes without a name, and
    /// rejections the per-reason counts miss, are `unknown`, so the series sum to `rejected`.
    fn rejections(&self) -> Vec<(&'static str, u64)> {
        let mut by_name: Vec<(&'static str, u64)> = Vec::new();
        let mut add = |name: &'static str, count: u64| match by_name
            .iter_mut()
            .find(|(known, _)| *known == name)
        {
            Some((_, total)) => *total += count,
            None => by_name.push((name, count)),
        };
        for (code, &count) in self.rejected_by_reason.iter().enumerate() {
            if count > 0 {
                add(Reason::name(code).unwrap_or("unknown"), count);
            }
        }
        let counted: u64 = self.rejected_by_reason.iter().sum();
        if self.rejected > counted {
            add("unknown", self.rejected - counted);
        }
        by_name
    }

    /// Answers with a latency: the histogram's `_count`.
    fn latency_count(&self) -> u64 {
        self.latency_buckets.iter().sum()
    }

    /// An estimate of the latencies' sum: each answer counted at its bucket's midpoint (the
    /// open-ended last bucket at its lower bound), so within a factor of 1.5 either way.
    fn latency_sum_estimate(&self) -> f64 {
        (0..LATENCY_BUCKETS)
            .map(|bucket| {
                let lower = if bucket == 0 {
                    0
                } else {
                    latency_bucket_upper_ns(bucket - 1)
                };
                let mid_ns = if bucket == LATENCY_BUCKETS - 1 {
                    lower
                } else {
                    lower + (latency_bucket_upper_ns(bucket) - lower) / 2
                };
                count_as_f64(self.latency_buckets[bucket]) * ns_to_secs(mid_ns)
            })
            .sum()
    }

    /// (upper bound in seconds, count in the bucket): the last bound is +Inf.
    fn latency_buckets(&self) -> Vec<(f64, u64)> {
        (0..LATENCY_BUCKETS)
            .map(|bucket| {
                let upper = if bucket == LATENCY_BUCKETS - 1 {
                    f64::INFINITY
                } else {
                    ns_to_secs(latency_bucket_upper_ns(bucket))
                };
                (upper, self.latency_buckets[bucket])
            })
            .collect()
    }
}

#[expect(
    clippy::cast_precision_loss,
    reason = "bucket bounds and midpoints are below 2^53 ns, exact in f64"
)]
fn ns_to_secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

#[expect(
    clippy::cast_precision_loss,
    reason = "an estimate; exact below 2^53 answers"
)]
fn count_as_f64(count: u64) -> f64 {
    count as f64
}

/// `targets` as rows within the bound: per service, busiest first, then the
/// fold of the rest.
fn rows(targets: &[TargetView], limits: Cardinality) -> Vec<Row> {
    let mut services: BTreeMap<(Direction, Proto, Option<u16>), Vec<&TargetView>> = BTreeMap::new();
    for target in targets {
        services
            .entry((target.direction, target.proto, target.port))
            .or_default()
            .push(target);
    }
    let mut rows = Vec::new();
    for members in services.values_mut() {
        members.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.remote.cmp(&b.remote)));
        let kept = members.len().min(limits.remotes_per_service);
        rows.extend(members[..kept].iter().map(|target| Row::of(target)));
        if let Some((first, rest)) = members[kept..].split_first() {
            let mut other = Row::of(first);
            OTHER_REMOTE.clone_into(&mut other.remote);
            for target in rest {
                other.fold(target);
            }
            rows.push(other);
        }
    }
    rows
}

/// Everything a scrape shows, owned (a registered collector must be `'static`).
#[derive(Debug)]
struct SnapshotCollector {
    rows: Vec<Row>,
    kernel: Vec<(&'static str, u64)>,
    /// Drops on this host of watched packets, summed over targets, by kernel drop reason.
    local_drops: BTreeMap<&'static str, u64>,
    evictions: u64,
    ruleset_changes: u64,
    in_flight: u64,
    tombstones: u64,
    uptime_s: f64,
    timeout_s: f64,
    window_s: f64,
    /// (name, kind, attach mode).
    interfaces: Vec<(String, &'static str, &'static str)>,
}

impl SnapshotCollector {
    fn new(snapshot: &Snapshot, run: &RunInfo, limits: Cardinality) -> Self {
        Self {
            rows: rows(&snapshot.targets, limits),
            kernel: KernelCounter::ALL
                .iter()
                .map(|counter| {
                    let name = counter.name();
                    (
                        name,
                        snapshot.kernel.counters.get(name).copied().unwrap_or(0),
                    )
                })
                .collect(),
            local_drops: snapshot.targets.iter().flat_map(|t| &t.local_drops).fold(
                BTreeMap::new(),
                |mut sums, (reason, count)| {
                    *sums.entry(*reason).or_insert(0) += count;
                    sums
                },
            ),
            evictions: snapshot.kernel.lost_requests,
            ruleset_changes: snapshot.ruleset_changes_total,
            in_flight: snapshot.in_flight as u64,
            tombstones: snapshot.tombstones as u64,
            uptime_s: run.uptime.as_secs_f64(),
            timeout_s: run.timeout.as_secs_f64(),
            window_s: run.window.as_secs_f64(),
            interfaces: run
                .interfaces
                .iter()
                .map(|interface| (interface.name.clone(), interface.kind, interface.attach))
                .collect(),
        }
    }

    /// A per-target counter: one series per row.
    fn target_counter(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        value: impl Fn(&Row) -> u64,
    ) -> fmt::Result {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for row in &self.rows {
            let labels = row.labels();
            counter(&mut family.encode_family(&labels)?, value(row))?;
        }
        Ok(())
    }

    fn rejected(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let mut family = encoder.encode_descriptor(
            "netwatch_rejected",
            "Requests rejected (TCP reset, ICMP unreachable) within the timeout, by reason \
             as iptables --reject-with names it.",
            None,
            MetricType::Counter,
        )?;
        for row in &self.rows {
            for (reason, count) in row.rejections() {
                let labels = row.labels_with("reason", reason);
                counter(&mut family.encode_family(&labels)?, count)?;
            }
        }
        Ok(())
    }

    fn verdicts(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let mut family = encoder.encode_descriptor(
            "netwatch_target_verdict",
            "The target's verdict over the window: 1 for the current one, 0 for the others \
             (blackholed, rejected, degraded, pending, ok). A folded remote=\"other\" shows \
             the worst verdict among its remotes.",
            None,
            MetricType::Gauge,
        )?;
        for row in &self.rows {
            for verdict in Verdict::ALL {
                let labels = row.labels_with("verdict", verdict.as_str());
                family
                    .encode_family(&labels)?
                    .encode_gauge(&u64::from(verdict == row.verdict))?;
            }
        }
        Ok(())
    }

    fn latency(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let mut family = encoder.encode_descriptor(
            "netwatch_answer_latency",
            "Time from a request to its answer, per target, for targets with answers. \
             Buckets are netwatch's log2 buckets; _sum is estimated from bucket midpoints.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for row in self.rows.iter().filter(|row| row.latency_count() > 0) {
            let labels = row.labels();
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(
                    row.latency_sum_estimate(),
                    row.latency_count(),
                    &row.latency_buckets(),
                    None,
                )?;
        }
        Ok(())
    }

    fn kernel(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let mut family = encoder.encode_descriptor(
            "netwatch_kernel_events",
            "Packets the eBPF programs saw but could not use, by event.",
            None,
            MetricType::Counter,
        )?;
        for &(event, value) in &self.kernel {
            counter(&mut family.encode_family(&[("event", event)])?, value)?;
        }
        let mut family = encoder.encode_descriptor(
            "netwatch_local_drops",
            "Watched packets (requests and answers) this host dropped, by the kernel's drop \
             reason (enum skb_drop_reason, e.g. NETFILTER_DROP).",
            None,
            MetricType::Counter,
        )?;
        for (&reason, &value) in &self.local_drops {
            counter(&mut family.encode_family(&[("reason", reason)])?, value)?;
        }
        let mut family = encoder.encode_descriptor(
            "netwatch_evictions",
            "Requests the kernel could not track because its pending or target table was \
             full; never judged unanswered.",
            None,
            MetricType::Counter,
        )?;
        counter(&mut family, self.evictions)?;
        let mut family = encoder.encode_descriptor(
            "netwatch_ruleset_changes",
            "Rule and chain changes of this host's nftables ruleset (iptables-nft included) \
             announced since netwatch started, summarized ones included.",
            None,
            MetricType::Counter,
        )?;
        counter(&mut family, self.ruleset_changes)
    }

    fn gauges(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let counts = [
            (
                "netwatch_in_flight_requests",
                "Requests still within their timeout.",
                self.in_flight,
            ),
            (
                "netwatch_tombstones",
                "Unanswered requests kept to recognise their retransmits.",
                self.tombstones,
            ),
        ];
        for (name, help, value) in counts {
            encoder
                .encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&value)?;
        }
        let seconds = [
            (
                "netwatch_uptime",
                "Time since netwatch started watching.",
                self.uptime_s,
            ),
            (
                "netwatch_timeout",
                "A request with no answer and no rejection within this time is unanswered \
                 (--timeout).",
                self.timeout_s,
            ),
            (
                "netwatch_window",
                "Verdicts are judged on the outcomes of this much time (--window).",
                self.window_s,
            ),
        ];
        for (name, help, value) in seconds {
            encoder
                .encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Gauge)?
                .encode_gauge(&value)?;
        }
        let mut family = encoder.encode_descriptor(
            "netwatch_watched_interfaces",
            "Interfaces netwatch watches, with their kind and how its programs are attached \
             (always 1).",
            None,
            MetricType::Gauge,
        )?;
        for (interface, kind, attach) in &self.interfaces {
            let labels = [
                ("interface", interface.as_str()),
                ("kind", kind),
                ("attach", attach),
            ];
            family.encode_family(&labels)?.encode_gauge(&1u64)?;
        }
        let mut family = encoder.encode_descriptor(
            "netwatch_build_info",
            "The running netwatch's version (always 1).",
            None,
            MetricType::Gauge,
        )?;
        family
            .encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?
            .encode_gauge(&1u64)
    }
}

/// A per-target counter: name (without `_total`), help, and its value for a row.
type TargetCounter = (&'static str, &'static str, fn(&Row) -> u64);

fn counter(encoder: &mut MetricEncoder<'_>, value: u64) -> fmt::Result {
    encoder.encode_counter::<NoLabelSet, u64, u64>(&value, None)
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let counters: [TargetCounter; 8] = [
            (
                "netwatch_requests",
                "Distinct requests: sent by this host (direction=\"egress\") or received by it \
                 (direction=\"ingress\"); a retransmit is not a new request.",
                |r| r.requests,
            ),
            (
                "netwatch_answered",
                "Requests answered within the timeout.",
                |r| r.answered,
            ),
            (
                "netwatch_unanswered",
                "Requests neither answered nor rejected within the timeout.",
                |r| r.unanswered,
            ),
            ("netwatch_retransmits", "Retransmitted requests.", |r| {
                r.retransmits
            }),
            (
                "netwatch_untracked",
                "Requests not tracked because the kernel's pending table was full; never \
                 judged.",
                |r| r.untracked,
            ),
            (
                "netwatch_late",
                "Answers or rejections that came after the timeout.",
                |r| r.late,
            ),
            (
                "netwatch_mtu_stalls",
                "TCP connections that opened and then stalled: segments above a size \
                 retransmitted again and again while smaller ones got through (path MTU).",
                |r| r.mtu_stalls,
            ),
            (
                "netwatch_path_mtu_signals",
                "ICMP \"fragmentation needed\" / ICMPv6 \"packet too big\" that reached this \
                 host about the target's packets.",
                |r| r.path_mtu_signals,
            ),
        ];
        for (name, help, value) in counters {
            self.target_counter(&mut encoder, name, help, value)?;
        }
        self.rejected(&mut encoder)?;
        self.verdicts(&mut encoder)?;
        self.latency(&mut encoder)?;
        self.kernel(&mut encoder)?;
        self.gauges(&mut encoder)
    }
}

#[cfg(test)]
#[expect(
    clippy::float_cmp,
    reason = "the values compared are small integers and short decimals, parsed exactly"
)]
mod tests {
    use std::{collections::HashMap, time::Duration};

    use netwatch_common::latency_bucket;

    use super::*;
    use crate::{
        interfaces::LinkState,
        report::WatchedInterface,
        snapshot::{KernelStats, tests::view},
    };

    fn run() -> RunInfo {
        RunInfo {
            interfaces: vec![WatchedInterface {
                name: "eth0".into(),
                kind: "ethernet",
                attach: "tcx",
                state: LinkState::Up,
            }],
            uptime: Duration::from_millis(90_500),
            timeout: Duration::from_secs(3),
            window: Duration::from_mins(1),
            local_drops: "available".to_owned(),
            attribution: "available".to_owned(),
            path_mtu: "available".to_owned(),
            fragments: "available".to_owned(),
            ruleset: "followed".to_owned(),
            trace_rules: "off".to_owned(),
        }
    }

    fn snapshot() -> Snapshot {
        let mut dns = view(Proto::Udp, "198.51.100.53", Some(53), Verdict::Blackholed);
        dns.requests = 14;
        dns.unanswered = 14;
        dns.retransmits = 2;
        let mut https = view(Proto::Tcp, "198.51.100.10", Some(443), Verdict::Ok);
        https.requests = 20;
        https.answered = 20;
        https.latency_buckets[latency_bucket(1_000_000)] = 15; // 1 ms
        https.latency_buckets[latency_bucket(30_000_000)] = 4; // 30 ms
        https.latency_buckets[LATENCY_BUCKETS - 1] = 1; // beyond 8.6 s
        let mut alt = view(Proto::Tcp, "198.51.100.10", Some(8443), Verdict::Rejected);
        alt.requests = 3;
        alt.rejected = 3;
        alt.rejected_by_reason[usize::from(Reason::TCP_RESET)] = 1;
        alt.rejected_by_reason[usize::from(Reason::icmp_unreachable(10))] = 2;
        alt.late = 1;
        alt.untracked = 5;
        let ping = view(Proto::Icmpv6, "2001:db8::1", None, Verdict::Pending);
        let mut kernel = [0; KernelCounter::COUNT];
        kernel[KernelCounter::PendingFull as usize] = 5;
        kernel[KernelCounter::Malformed as usize] = 2;
        Snapshot {
            targets: vec![dns, alt, ping, https],
            kernel: KernelStats::from_counters(&kernel),
            in_flight: 3,
            tombstones: 7,
            ..Snapshot::default()
        }
    }

    /// A parsed sample: name, labels, value.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: HashMap<String, String>,
        value: f64,
    }

    /// Parses the sample lines (the label values here need no unescaping).
    fn samples(text: &str) -> Vec<Sample> {
        text.lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').unwrap();
                let value = match value {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().unwrap(),
                };
                let (name, labels) = match series.split_once('{') {
                    None => (series, HashMap::new()),
                    Some((name, rest)) => {
                        let rest = rest.strip_suffix('}').unwrap();
                        let labels = rest
                            .split("\",")
                            .map(|pair| {
                                let (k, v) = pair.split_once("=\"").unwrap();
                                (k.to_owned(), v.trim_end_matches('"').to_owned())
                            })
                            .collect();
                        (name, labels)
                    }
                };
                Sample {
                    name: name.to_owned(),
                    labels,
                    value,
                }
            })
            .collect()
    }

    fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
        samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        let found = find(samples, name, labels);
        assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
        found[0].value
    }

    #[test]
    fn every_metric_has_help_and_type() {
        let text = render(&snapshot(), &run(), &Cardinality::default());
        for (name, kind) in [
            ("netwatch_requests_total", "counter"),
            ("netwatch_answered_total", "counter"),
            ("netwatch_rejected_total", "counter"),
            ("netwatch_unanswered_total", "counter"),
            ("netwatch_retransmits_total", "counter"),
            ("netwatch_untracked_total", "counter"),
            ("netwatch_late_total", "counter"),
            ("netwatch_target_verdict", "gauge"),
            ("netwatch_answer_latency_seconds", "histogram"),
            ("netwatch_kernel_events_total", "counter"),
            ("netwatch_evictions_total", "counter"),
            ("netwatch_in_flight_requests", "gauge"),
            ("netwatch_tombstones", "gauge"),
            ("netwatch_uptime_seconds", "gauge"),
            ("netwatch_timeout_seconds", "gauge"),
            ("netwatch_window_seconds", "gauge"),
            ("netwatch_watched_interfaces", "gauge"),
            ("netwatch_build_info", "gauge"),
        ] {
            assert!(
                text.contains(&format!("\n# HELP {name} "))
                    || text.starts_with(&format!("# HELP {name} ")),
                "HELP {name}"
            );
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "TYPE {name} {kind}"
            );
        }
        assert!(
            !text.contains("# EOF"),
            "the 0.0.4 text format has no EOF marker"
        );
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn target_counters_carry_the_target_labels() {
        let s = samples(&render(&snapshot(), &run(), &Cardinality::default()));
        let dns = [
            ("direction", "egress"),
            ("proto", "udp"),
            ("remote", "198.51.100.53"),
            ("port", "53"),
        ];
        assert_eq!(value(&s, "netwatch_requests_total", &dns), 14.0);
        assert_eq!(value(&s, "netwatch_unanswered_total", &dns), 14.0);
        assert_eq!(value(&s, "netwatch_answered_total", &dns), 0.0);
        assert_eq!(value(&s, "netwatch_retransmits_total", &dns), 2.0);
        let alt = [("proto", "tcp"), ("port", "8443")];
        assert_eq!(value(&s, "netwatch_untracked_total", &alt), 5.0);
        assert_eq!(value(&s, "netwatch_late_total", &alt), 1.0);
        let ping = [("proto", "icmpv6"), ("remote", "2001:db8::1"), ("port", "")];
        assert_eq!(value(&s, "netwatch_requests_total", &ping), 1.0);
        for sample in find(&s, "netwatch_requests_total", &[]) {
            let mut keys: Vec<&str> = sample.labels.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, ["direction", "port", "proto", "remote"]);
        }
    }

    #[test]
    fn rejections_are_split_by_reason() {
        let s = samples(&render(&snapshot(), &run(), &Cardinality::default()));
        let alt = [("port", "8443"), ("reason", "tcp-reset")];
        assert_eq!(value(&s, "netwatch_rejected_total", &alt), 1.0);
        let alt = [("port", "8443"), ("reason", "icmp-host-prohibited")];
        assert_eq!(value(&s, "netwatch_rejected_total", &alt), 2.0);
        assert_eq!(
            find(&s, "netwatch_rejected_total", &[]).len(),
            2,
            "only nonzero reasons"
        );
    }

    #[test]
    fn rejections_missing_from_the_reasons_are_unknown() {
        let mut target = view(Proto::Tcp, "198.51.100.1", Some(22), Verdict::Rejected);
        target.rejected = 4;
        target.rejected_by_reason[usize::from(Reason::TCP_RESET)] = 3;
        target.rejected_by_reason[30] = 0;
        let snapshot = Snapshot {
            targets: vec![target],
            ..Snapshot::default()
        };
        let s = samples(&render(&snapshot, &run(), &Cardinality::default()));
        assert_eq!(
            value(&s, "netwatch_rejected_total", &[("reason", "tcp-reset")]),
            3.0
        );
        assert_eq!(
            value(&s, "netwatch_rejected_total", &[("reason", "unknown")]),
            1.0
        );
    }

    #[test]
    fn each_target_has_all_five_verdict_series_one_of_them_set() {
        let s = samples(&render(&snapshot(), &run(), &Cardinality::default()));
        for (port, current) in [
            ("53", "blackholed"),
            ("443", "ok"),
            ("8443", "rejected"),
            ("", "pending"),
        ] {
            for verdict in Verdict::ALL {
                let expected = if verdict.as_str() == current {
                    1.0
                } else {
                    0.0
                };
                let labels = [("port", port), ("verdict", verdict.as_str())];
                assert_eq!(
                    value(&s, "netwatch_target_verdict", &labels),
                    expected,
                    "{port} {verdict}"
                );
            }
        }
        assert_eq!(find(&s, "netwatch_target_verdict", &[]).len(), 4 * 5);
    }

    #[test]
    fn latency_histogram_is_cumulative_and_ends_at_inf() {
        let s = samples(&render(&snapshot(), &run(), &Cardinality::default()));
        let https = [("port", "443")];
        let buckets = find(&s, "netwatch_answer_latency_seconds_bucket", &https);
        assert_eq!(buckets.len(), LATENCY_BUCKETS);
        let mut previous = (0.0, 0.0);
        for bucket in &buckets {
            let le: f64 = match bucket.labels["le"].as_str() {
                "+Inf" => f64::INFINITY,
                le => le.parse().unwrap(),
            };
            assert!(le > previous.0, "bounds increase");
            assert!(bucket.value >= previous.1, "counts are cumulative");
            previous = (le, bucket.value);
        }
        assert_eq!(buckets.last().unwrap().labels["le"], "+Inf");
        let count = value(&s, "netwatch_answer_latency_seconds_count", &https);
        assert_eq!(count, 20.0);
        assert_eq!(buckets.last().unwrap().value, count);
        // 1 ms lies in [524 µs, 1.05 ms): 15 answers at or below 1.048576e-3 s.
        assert_eq!(
            value(
                &s,
                "netwatch_answer_latency_seconds_bucket",
                &[("port", "443"), ("le", "0.001048576")]
            ),
            15.0
        );
        // Sum from midpoints: 15 × 786 µs + 4 × 25.2 ms + 1 × 8.59 s.
        let sum = value(&s, "netwatch_answer_latency_seconds_sum", &https);
        let expected = 15.0 * 786_432e-9 + 4.0 * 25_165_824e-9 + 8_589_934_592e-9;
        assert!((sum - expected).abs() < 1e-9, "{sum} vs {expected}");
        assert!(
            find(
                &s,
                "netwatch_answer_latency_seconds_count",
                &[("port", "53")]
            )
            .is_empty(),
            "no histogram for a target without answers"
        );
    }

    #[test]
    fn local_drops_are_summed_by_reason() {
        let mut snapshot = snapshot();
        snapshot.targets[0].local_drops = BTreeMap::from([("NETFILTER_DROP", 3)]);
        snapshot.targets[1].local_drops = BTreeMap::from([("NETFILTER_DROP", 2), ("NO_SOCKET", 1)]);
        let text = render(&snapshot, &run(), &Cardinality::default());
        assert!(
            text.contains("# TYPE netwatch_local_drops_total counter\n"),
            "{text}"
        );
        let s = samples(&text);
        assert_eq!(
            value(
                &s,
                "netwatch_local_drops_total",
                &[("reason", "NETFILTER_DROP")]
            ),
            5.0
        );
        assert_eq!(
            value(&s, "netwatch_local_drops_total", &[("reason", "NO_SOCKET")]),
            1.0
        );
    }

    #[test]
    fn kernel_counters_and_run_gauges() {
        let s = samples(&render(&snapshot(), &run(), &Cardinality::default()));
        assert_eq!(
            find(&s, "netwatch_kernel_events_total", &[]).len(),
            KernelCounter::COUNT
        );
        assert_eq!(
            value(
                &s,
                "netwatch_kernel_events_total",
                &[("event", "pending_table_full")]
            ),
            5.0
        );
        assert_eq!(
            value(
                &s,
                "netwatch_kernel_events_total",
                &[("event", "malformed")]
            ),
            2.0
        );
        assert_eq!(
            value(&s, "netwatch_kernel_events_total", &[("event", "fragment")]),
            0.0
        );
        assert_eq!(value(&s, "netwatch_evictions_total", &[]), 5.0);
        assert_eq!(value(&s, "netwatch_in_flight_requests", &[]), 3.0);
        assert_eq!(value(&s, "netwatch_tombstones", &[]), 7.0);
        assert_eq!(value(&s, "netwatch_uptime_seconds", &[]), 90.5);
        assert_eq!(value(&s, "netwatch_timeout_seconds", &[]), 3.0);
        assert_eq!(value(&s, "netwatch_window_seconds", &[]), 60.0);
        assert_eq!(
            value(
                &s,
                "netwatch_watched_interfaces",
                &[
                    ("interface", "eth0"),
                    ("kind", "ethernet"),
                    ("attach", "tcx")
                ]
            ),
            1.0
        );
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            value(&s, "netwatch_build_info", &[("version", version)]),
            1.0
        );
    }

    #[test]
    fn remotes_beyond_the_bound_fold_into_other() {
        let mut targets = Vec::new();
        for i in 1..=5u8 {
            let verdict = if i == 2 {
                Verdict::Blackholed
            } else {
                Verdict::Ok
            };
            let mut target = view(Proto::Udp, &format!("198.51.100.{i}"), Some(53), verdict);
            target.requests = u64::from(i) * 10;
            target.answered = u64::from(i) * 9;
            target.unanswered = u64::from(i);
            target.latency_buckets[3] = u64::from(i);
            target.rejected_by_reason[usize::from(Reason::TCP_RESET)] = 1;
            target.rejected = 1;
            targets.push(target);
        }
        // Another service stays apart, under its own bound.
        targets.push(view(Proto::Tcp, "198.51.100.1", Some(443), Verdict::Ok));
        let snapshot = Snapshot {
            targets,
            ..Snapshot::default()
        };
        let limits = Cardinality {
            remotes_per_service: 2,
        };
        let s = samples(&render(&snapshot, &run(), &limits));

        let remotes = |name| {
            let mut r: Vec<String> = find(&s, name, &[("port", "53")])
                .iter()
                .map(|sample| sample.labels["remote"].clone())
                .collect();
            r.sort();
            r
        };
        assert_eq!(
            remotes("netwatch_requests_total"),
            ["198.51.100.4", "198.51.100.5", "other"],
            "busiest two kept"
        );
        let other = [("port", "53"), ("remote", "other")];
        assert_eq!(value(&s, "netwatch_requests_total", &other), 60.0);
        assert_eq!(value(&s, "netwatch_answered_total", &other), 54.0);
        assert_eq!(value(&s, "netwatch_unanswered_total", &other), 6.0);
        assert_eq!(
            value(
                &s,
                "netwatch_rejected_total",
                &[("port", "53"), ("remote", "other"), ("reason", "tcp-reset")]
            ),
            3.0
        );
        assert_eq!(
            value(&s, "netwatch_answer_latency_seconds_count", &other),
            6.0
        );
        assert_eq!(
            value(
                &s,
                "netwatch_target_verdict",
                &[
                    ("port", "53"),
                    ("remote", "other"),
                    ("verdict", "blackholed")
                ]
            ),
            1.0,
            "worst verdict"
        );
        assert_eq!(
            value(
                &s,
                "netwatch_target_verdict",
                &[("port", "53"), ("remote", "other"), ("verdict", "ok")]
            ),
            0.0
        );
        assert_eq!(
            value(
                &s,
                "netwatch_requests_total",
                &[("port", "443"), ("remote", "198.51.100.1")]
            ),
            1.0
        );
        let total: f64 = find(&s, "netwatch_requests_total", &[("port", "53")])
            .iter()
            .map(|x| x.value)
            .sum();
        assert_eq!(total, 150.0, "folding loses nothing");
    }

    #[test]
    fn inbound_and_outbound_are_apart_in_every_family_and_fold() {
        let mut targets = Vec::new();
        for i in 1..=3u8 {
            let mut out = view(
                Proto::Tcp,
                &format!("198.51.100.{i}"),
                Some(443),
                Verdict::Ok,
            );
            (out.requests, out.answered) = (10, 10);
            out.latency_buckets[3] = 10;
            targets.push(out);
            let mut inbound = view(
                Proto::Tcp,
                &format!("203.0.113.{i}"),
                Some(443),
                Verdict::Blackholed,
            );
            inbound.direction = Direction::Ingress;
            (inbound.requests, inbound.unanswered) = (u64::from(i), u64::from(i));
            targets.push(inbound);
        }
        let mut reset = view(Proto::Tcp, "203.0.113.1", Some(8080), Verdict::Rejected);
        reset.direction = Direction::Ingress;
        (reset.requests, reset.rejected) = (2, 2);
        reset.rejected_by_reason[usize::from(Reason::TCP_RESET)] = 2;
        targets.push(reset);
        let snapshot = Snapshot {
            targets,
            ..Snapshot::default()
        };
        let limits = Cardinality {
            remotes_per_service: 2,
        };
        let s = samples(&render(&snapshot, &run(), &limits));
        // Every per-target family (the samples with a remote) has a direction.
        for sample in s.iter().filter(|s| s.labels.contains_key("remote")) {
            let direction = sample.labels.get("direction").map(String::as_str);
            assert!(
                matches!(direction, Some("egress" | "ingress")),
                "{sample:?}"
            );
        }
        let tcp443 = |direction| [("direction", direction), ("port", "443")];
        let total = |labels: &[(&str, &str)]| -> f64 {
            find(&s, "netwatch_requests_total", labels)
                .iter()
                .map(|x| x.value)
                .sum()
        };
        assert_eq!(total(&tcp443("egress")), 30.0);
        assert_eq!(total(&tcp443("ingress")), 6.0, "not merged with egress");
        // Each direction has its own bound: two remotes and an `other` each.
        assert_eq!(
            find(&s, "netwatch_requests_total", &tcp443("egress")).len(),
            3
        );
        assert_eq!(
            find(&s, "netwatch_requests_total", &tcp443("ingress")).len(),
            3
        );
        let other_in = [
            ("direction", "ingress"),
            ("port", "443"),
            ("remote", "other"),
        ];
        assert_eq!(value(&s, "netwatch_requests_total", &other_in), 1.0);
        assert_eq!(
            value(
                &s,
                "netwatch_target_verdict",
                &[
                    ("direction", "ingress"),
                    ("port", "443"),
                    ("remote", "other"),
                    ("verdict", "blackholed")
                ]
            ),
            1.0
        );
        assert_eq!(
            value(
                &s,
                "netwatch_rejected_total",
                &[
                    ("direction", "ingress"),
                    ("port", "8080"),
                    ("reason", "tcp-reset")
                ]
            ),
            2.0
        );
        assert!(
            find(
                &s,
                "netwatch_answer_latency_seconds_count",
                &[("direction", "ingress")]
            )
            .is_empty(),
            "no answers, no histogram"
        );
    }

    #[test]
    fn an_empty_snapshot_still_describes_every_metric() {
        let text = render(&Snapshot::default(), &run(), &Cardinality::default());
        assert!(text.contains("# TYPE netwatch_requests_total counter\n"));
        assert!(!text.contains("netwatch_requests_total{"));
        assert!(text.contains("netwatch_evictions_total 0\n"));
    }
}

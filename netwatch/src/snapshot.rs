//! What the renderers (table, JSON, metrics, TUI) see: one plain-data snapshot of the
//! tracker. Renderers do no I/O of their own beyond writing what they are given.

use std::{cmp::Ordering, collections::BTreeMap, net::IpAddr, time::SystemTime};

use netwatch_common::{KernelCounter, LATENCY_BUCKETS, REASON_SLOTS};
use serde::Serialize;

use crate::{
    target::{Direction, Proto, Service},
    verdict::Verdict,
};

/// One target with its counters and verdict: the fields of the JSON `target` and `verdict`
/// records.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TargetView {
    pub direction: Direction,
    pub proto: Proto,
    pub remote: IpAddr,
    pub port: Option<u16>,
    pub requests: u64,
    pub answered: u64,
    pub rejected: u64,
    pub unanswered: u64,
    pub retransmits: u64,
    pub verdict: Verdict,
    pub reason: Option<&'static str>,
    /// Requests still within their timeout.
    pub in_flight: u64,
    /// Requests that could not be tracked (pending table full): never judged.
    pub untracked: u64,
    /// Answers or rejections that came after the timeout.
    pub late: u64,
    /// Requests the client gave up before their deadline (a new request took their flow).
    pub abandoned: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// Seconds since a request to this target last left.
    pub last_seen_ago_s: Option<f64>,
    /// Packets of this target this host dropped, by kernel drop reason name
    /// (`{"NETFILTER_DROP": 3}`); empty when none, or when the kernel cannot tell.
    pub local_drops: BTreeMap<&'static str, u64>,
    /// Of those, requests (this host's output chain for requests it sent, its input chain
    /// for requests it received) and answers (input for its requests, output for others').
    #[serde(skip)]
    pub requests_dropped_here: u64,
    #[serde(skip)]
    pub answers_dropped_here: u64,
    /// DNS targets: names whose queries went unanswered (a bounded sample, escaped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
    /// Blackholed for less than the grace period (one `--timeout`): the silence may still
    /// end in a late answer, so the diagnosis does not take it as evidence yet.
    #[serde(skip)]
    pub provisional: bool,
    #[serde(skip)]
    pub latency_buckets: [u64; LATENCY_BUCKETS],
    #[serde(skip)]
    pub rejected_by_reason: [u64; REASON_SLOTS],
    /// Requests this host sent: the processes behind them, most recent first (at most
    /// [`crate::attribution::PROCESSES_PER_TARGET`]); empty when unknown.
    pub processes: Vec<crate::attribution::Process>,
    /// TCP: connections that opened and then stalled, large segments dying while small ones
    /// got through (path MTU; see [`crate::stalls`]), and how many of them recovered.
    pub mtu_stalls: u64,
    pub mtu_recoveries: u64,
    /// Over those connections, bytes on the wire of the largest segment known to have got
    /// through (`None`: nothing with data did, only the handshake) and of the smallest that
    /// never did (`None` without stalls).
    pub largest_delivered: Option<u16>,
    pub smallest_lost: Option<u16>,
    /// The smallest MTU a "fragmentation needed" / "packet too big" reported for this
    /// target's path, when one arrived.
    pub path_mtu: Option<u64>,
    /// Those signals that arrived, and of them, those this host then dropped.
    pub path_mtu_signals: u64,
    pub path_mtu_dropped_here: u64,
    /// DNS answers that arrived in fragments.
    pub fragmented_answers: u64,
    /// When its current verdict began (RFC 3339): for a failure, its first failed request
    /// since the target last answered.
    #[serde(serialize_with = "rfc3339")]
    pub since: SystemTime,
    /// The generation of the ruleset change its failure began after (within a few seconds),
    /// when its failures are drops on this host; left out otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_change: Option<u32>,
    /// That change, for the diagnosis.
    #[serde(skip)]
    pub change: Option<RulesetMark>,
    /// With `--trace-rules`: the rules (or policies) that dropped its packets, most first.
    pub local_drops_rules: Vec<crate::firewall::RuleDrops>,
    /// Answered, failed, both or quiet per interval, oldest first, ending now.
    #[serde(skip)]
    pub timeline: [crate::timeline::Outcome; crate::timeline::SLOTS],
}

/// A ruleset change as the live view and the diagnosis show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RulesetMark {
    pub generation: u32,
    /// When netwatch read it.
    pub at: SystemTime,
    /// Its interval on the timeline, when within it.
    pub position: Option<usize>,
    /// "rule added to inet host output: `tcp dport 3306 drop`".
    pub what: String,
}

fn rfc3339<S: serde::Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_millis(*time))
}

impl TargetView {
    #[must_use]
    pub fn service(&self) -> Service {
        Service {
            direction: self.direction,
            proto: self.proto,
            port: self.port,
        }
    }

    /// Worst verdict first; then most failures, most requests, and (direction, proto, port,
    /// address) order. Both directions sort together: a target is as bad as its verdict and
    /// its failures, whichever way its requests go; a lone peer knocking once on a dropped
    /// port sinks below the busier targets of the same verdict.
    #[must_use]
    pub fn worst_first(a: &Self, b: &Self) -> Ordering {
        a.verdict
            .cmp(&b.verdict)
            .then_with(|| (b.unanswered + b.rejected).cmp(&(a.unanswered + a.rejected)))
            .then_with(|| b.requests.cmp(&a.requests))
            .then_with(|| {
                (a.direction, a.proto, a.port, a.remote).cmp(&(
                    b.direction,
                    b.proto,
                    b.port,
                    b.remote,
                ))
            })
    }
}

/// One (direction, proto, port) across all its remotes: an inbound tcp/443 and an outbound
/// tcp/443 are two rollups.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rollup {
    pub direction: Direction,
    pub proto: Proto,
    pub port: Option<u16>,
    pub remotes: usize,
    pub requests: u64,
    pub answered: u64,
    pub rejected: u64,
    pub unanswered: u64,
    pub retransmits: u64,
    pub verdict: Verdict,
    pub reason: Option<&'static str>,
}

impl Rollup {
    /// Groups targets by service (direction, proto, port). The rollup verdict: the common verdict of its remotes
    /// (pending ones aside), `degraded` when they disagree.
    #[must_use]
    pub fn of(targets: &[TargetView]) -> Vec<Self> {
        let mut groups: BTreeMap<Service, Vec<&TargetView>> = BTreeMap::new();
        for target in targets {
            groups.entry(target.service()).or_default().push(target);
        }
        let mut rollups: Vec<Self> = groups
            .into_iter()
            .map(|(service, members)| {
                let judged: Vec<&&TargetView> = members
                    .iter()
                    .filter(|t| t.verdict != Verdict::Pending)
                    .collect();
                let verdict = match judged.first() {
                    None => Verdict::Pending,
                    Some(first) if judged.iter().all(|t| t.verdict == first.verdict) => {
                        first.verdict
                    }
                    Some(_) => Verdict::Degraded,
                };
                let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
                for reason in members.iter().filter_map(|t| t.reason) {
                    *reasons.entry(reason).or_default() += 1;
                }
                let reason = reasons
                    .into_iter()
                    .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
                    .map(|r| r.0);
                Self {
                    direction: service.direction,
                    proto: service.proto,
                    port: service.port,
                    remotes: members.len(),
                    requests: members.iter().map(|t| t.requests).sum(),
                    answered: members.iter().map(|t| t.answered).sum(),
                    rejected: members.iter().map(|t| t.rejected).sum(),
                    unanswered: members.iter().map(|t| t.unanswered).sum(),
                    retransmits: members.iter().map(|t| t.retransmits).sum(),
                    verdict,
                    reason,
                }
            })
            .collect();
        // Worst first; at one verdict, outbound before inbound, then by proto and port.
        rollups.sort_by(|a, b| {
            a.verdict
                .cmp(&b.verdict)
                .then_with(|| a.service().cmp(&b.service()))
        });
        rollups
    }

    #[must_use]
    pub fn service(&self) -> Service {
        Service {
            direction: self.direction,
            proto: self.proto,
            port: self.port,
        }
    }
}

/// The kernel programs' counters of what they could not use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KernelStats {
    /// By [`KernelCounter::name`].
    pub counters: BTreeMap<&'static str, u64>,
    /// Requests that could not be tracked (table full): the evictions.
    pub lost_requests: u64,
}

impl KernelStats {
    #[must_use]
    pub fn from_counters(values: &[u64; KernelCounter::COUNT]) -> Self {
        let mut stats = Self::default();
        for counter in KernelCounter::ALL {
            let value = values[counter as usize];
            stats.counters.insert(counter.name(), value);
            if counter.is_loss() {
                stats.lost_requests += value;
            }
        }
        stats
    }
}

/// Everything a renderer needs.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// Worst first.
    pub targets: Vec<TargetView>,
    pub rollups: Vec<Rollup>,
    pub kernel: KernelStats,
    /// Pending requests still within their timeout.
    pub in_flight: usize,
    /// Unanswered requests kept to recognise retransmits.
    pub tombstones: usize,
    pub requests_per_s: f64,
    /// Whether the kernel reports drops on this host (the `skb:kfree_skb` program runs).
    pub local_drops_watched: bool,
    /// What became of the TCP connections with retransmissions (path MTU).
    pub retransmitting_connections: crate::stalls::StallStats,
    /// Recent ruleset changes, oldest first.
    #[serde(skip)]
    pub ruleset: Vec<RulesetMark>,
    /// Rule and chain changes announced since the start.
    #[serde(skip)]
    pub ruleset_changes_total: u64,
    /// Whether `--trace-rules` names the rules that drop packets in this run.
    #[serde(skip)]
    pub rules_traced: bool,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn view(
        proto: Proto,
        remote: &str,
        port: Option<u16>,
        verdict: Verdict,
    ) -> TargetView {
        TargetView {
            direction: Direction::Egress,
            proto,
            remote: remote.parse().unwrap(),
            port,
            requests: 1,
            answered: 0,
            rejected: 0,
            unanswered: 0,
            retransmits: 0,
            verdict,
            reason: None,
            in_flight: 0,
            untracked: 0,
            abandoned: 0,
            provisional: false,
            late: 0,
            latency_p50_ms: None,
            latency_p99_ms: None,
            last_seen_ago_s: None,
            names: None,
            latency_buckets: [0; LATENCY_BUCKETS],
            rejected_by_reason: [0; REASON_SLOTS],
            local_drops: BTreeMap::new(),
            requests_dropped_here: 0,
            answers_dropped_here: 0,
            processes: Vec::new(),
            mtu_stalls: 0,
            mtu_recoveries: 0,
            largest_delivered: None,
            smallest_lost: None,
            path_mtu: None,
            path_mtu_signals: 0,
            path_mtu_dropped_here: 0,
            fragmented_answers: 0,
            since: SystemTime::UNIX_EPOCH,
            after_change: None,
            change: None,
            local_drops_rules: Vec::new(),
            timeline: Default::default(),
        }
    }

    #[test]
    fn rollups_agree_or_degrade() {
        let targets = vec![
            view(Proto::Udp, "198.51.100.1", Some(53), Verdict::Blackholed),
            view(Proto::Udp, "198.51.100.2", Some(53), Verdict::Blackholed),
            view(Proto::Udp, "198.51.100.3", Some(53), Verdict::Pending),
            view(Proto::Tcp, "198.51.100.1", Some(443), Verdict::Ok),
            view(Proto::Tcp, "198.51.100.2", Some(443), Verdict::Blackholed),
            view(Proto::Icmp, "198.51.100.2", None, Verdict::Pending),
        ];
        let rollups = Rollup::of(&targets);
        let find = |proto, port| {
            rollups
                .iter()
                .find(|r| r.proto == proto && r.port == port)
                .unwrap()
        };
        assert_eq!(find(Proto::Udp, Some(53)).verdict, Verdict::Blackholed);
        assert_eq!(find(Proto::Udp, Some(53)).remotes, 3);
        assert_eq!(find(Proto::Tcp, Some(443)).verdict, Verdict::Degraded);
        assert_eq!(find(Proto::Icmp, None).verdict, Verdict::Pending);
        assert_eq!(rollups[0].verdict, Verdict::Blackholed, "worst first");
    }

    #[test]
    fn inbound_and_outbound_never_share_a_rollup() {
        let mut inbound = view(Proto::Tcp, "203.0.113.9", Some(443), Verdict::Blackholed);
        inbound.direction = Direction::Ingress;
        inbound.unanswered = 1;
        let mut second_peer = view(Proto::Tcp, "203.0.113.10", Some(443), Verdict::Blackholed);
        second_peer.direction = Direction::Ingress;
        let outbound = view(Proto::Tcp, "198.51.100.1", Some(443), Verdict::Ok);
        let outbound_dns = view(Proto::Udp, "198.51.100.53", Some(53), Verdict::Blackholed);
        let rollups = Rollup::of(&[inbound, outbound, second_peer, outbound_dns]);
        let labels: Vec<(String, usize, Verdict)> = rollups
            .iter()
            .map(|r| (r.service().to_string(), r.remotes, r.verdict))
            .collect();
        assert_eq!(
            labels,
            vec![
                ("UDP/53".to_owned(), 1, Verdict::Blackholed),
                ("TCP/443 in".to_owned(), 2, Verdict::Blackholed),
                ("TCP/443".to_owned(), 1, Verdict::Ok),
            ],
            "worst first; at one verdict outbound before inbound"
        );
        assert_eq!(rollups[1].direction, Direction::Ingress);
    }

    #[test]
    fn targets_sort_worst_first() {
        let mut a = view(Proto::Tcp, "198.51.100.1", Some(443), Verdict::Ok);
        a.requests = 100;
        let mut b = view(Proto::Udp, "198.51.100.1", Some(53), Verdict::Blackholed);
        b.unanswered = 1;
        let mut c = view(Proto::Udp, "198.51.100.2", Some(53), Verdict::Blackholed);
        c.unanswered = 5;
        let mut list = vec![a.clone(), b.clone(), c.clone()];
        list.sort_by(TargetView::worst_first);
        assert_eq!(list, vec![c, b, a]);
    }

    #[test]
    fn kernel_losses_sum_the_table_full_counters() {
        let mut values = [0; KernelCounter::COUNT];
        values[KernelCounter::PendingFull as usize] = 7;
        values[KernelCounter::TargetsFull as usize] = 2;
        values[KernelCounter::Malformed as usize] = 100;
        let stats = KernelStats::from_counters(&values);
        assert_eq!(stats.lost_requests, 9);
        assert_eq!(stats.counters["malformed"], 100);
    }
}

//! The correlation core: kernel counters and unanswered requests in, outcomes and verdicts
//! out. Plain data, no I/O: the run loop feeds it, renderers read its [`Snapshot`].

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, SystemTime},
};

use netwatch_common::{
    KernelCounter, LATENCY_BUCKETS, PendingRequest, REASON_SLOTS, RequestKey, Retransmits,
    TargetCounters, TargetKey, latency_bucket_upper_ns, proto,
};

use crate::{
    attribution::{self, Process},
    dns,
    drops::DropReasons,
    firewall::{RuleDrops, changes::change_behind},
    snapshot::{KernelStats, Rollup, RulesetMark, Snapshot, TargetView},
    stalls::{Change, Sizes, Stalls},
    target::{Direction, Target},
    timeline::{self, Timeline},
    verdict::{History, Verdict},
};

/// Ruleset changes kept for the timeline and for tying failures to them.
pub const RULESET_MARKS: usize = 64;
/// Rules (or policies) kept per target.
pub const RULES_PER_TARGET: usize = 8;

/// Unanswered DNS names kept per target.
pub const NAMES_PER_TARGET: usize = 8;

/// Everything known about one target.
#[derive(Clone, Debug)]
pub struct TargetState {
    pub target: Target,
    /// The kernel's cumulative counters as last read.
    kernel: TargetCounters,
    /// Requests userspace found unanswered after the timeout.
    unanswered: u64,
    /// Requests of this target in the pending table and within their deadline, as of the
    /// last sweep. Read from the table rather than derived from the counters, so a request
    /// lost to a race can never hold it above zero.
    in_flight: u64,
    history: History,
    verdict: Verdict,
    reason: Option<&'static str>,
    /// A bounded sample of names whose queries went unanswered (escaped).
    names: Vec<String>,
    /// Whether a verdict record went out for this target yet.
    announced: bool,
    /// Since when the target has been blackholed without a break.
    blackholed_since_ns: Option<u64>,
    /// Cumulative drops on this host by kernel drop reason name, as last read.
    local_drops: BTreeMap<&'static str, u64>,
    /// The processes behind its requests, most recent first (bounded).
    processes: Vec<Process>,
    /// Its connections that stalled after the handshake (path MTU).
    mtu: MtuStalls,
    /// When its current verdict began (monotonic).
    since_ns: u64,
    /// Its earliest failure since it last answered (monotonic).
    failing_since_ns: Option<u64>,
    /// The ruleset change its failure followed.
    after_change: Option<u32>,
    timeline: Timeline,
    /// Traced drops by rule, most first (bounded).
    rule_drops: Vec<RuleDrops>,
    /// How many of them its last verdict record named.
    announced_rules: usize,
}

/// What a target's connections that stalled after the handshake showed (see
/// [`crate::stalls`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MtuStalls {
    /// Connections that stalled (a stall taken back is not counted).
    pub stalls: u64,
    /// Of those, the ones that recovered.
    pub recoveries: u64,
    /// Over those connections: the largest segment known to have got through, and the
    /// smallest that never did (bytes on the wire).
    pub largest_delivered: Option<u16>,
    pub smallest_lost: Option<u16>,
}

impl MtuStalls {
    fn add(&mut self, sizes: Sizes) {
        self.largest_delivered = self.largest_delivered.max(sizes.largest_delivered);
        self.smallest_lost = Some(
            self.smallest_lost
                .map_or(sizes.smallest_lost, |s| s.min(sizes.smallest_lost)),
        );
    }
}

impl TargetState {
    fn new(target: Target, window: Duration) -> Self {
        Self {
            target,
            kernel: zero_counters(),
            unanswered: 0,
            in_flight: 0,
            history: History::new(window),
            verdict: Verdict::Pending,
            reason: None,
            names: Vec::new(),
            announced: false,
            blackholed_since_ns: None,
            local_drops: BTreeMap::new(),
            processes: Vec::new(),
            mtu: MtuStalls::default(),
            since_ns: 0,
            failing_since_ns: None,
            after_change: None,
            timeline: Timeline::default(),
            rule_drops: Vec::new(),
            announced_rules: 0,
        }
    }

    /// A failure seen at `at_ns` (its request's time when known).
    fn failed_at(&mut self, at_ns: u64) {
        let earliest = self
            .failing_since_ns
            .map_or(at_ns, |since| since.min(at_ns));
        self.failing_since_ns = Some(earliest);
    }

    /// Answers the client got: for a request this host sent, those tc ingress counted less
    /// those this host dropped before the socket.
    fn answered(&self) -> u64 {
        if self.target.direction == Direction::Egress {
            self.kernel
                .answered
                .saturating_sub(self.kernel.answers_dropped_here)
        } else {
            self.kernel.answered
        }
    }

    fn view(&self, now_ns: u64, grace_ns: u64, clock: &Clock<'_>) -> TargetView {
        let k = &self.kernel;
        TargetView {
            direction: self.target.direction,
            proto: self.target.proto,
            remote: self.target.remote,
            port: self.target.port,
            requests: k.requests,
            answered: self.answered(),
            rejected: k.rejected,
            // Answers dropped here never reached the client: unanswered, to it.
            unanswered: self.unanswered + k.answered.saturating_sub(self.answered()),
            retransmits: k.retransmits,
            verdict: self.verdict,
            reason: self.reason,
            in_flight: self.in_flight,
            untracked: k.untracked,
            late: k.late,
            abandoned: k.abandoned,
            latency_p50_ms: latency_percentile_ms(&k.latency, 0.50),
            latency_p99_ms: latency_percentile_ms(&k.latency, 0.99),
            last_seen_ago_s: (k.last_request_ns > 0)
                .then(|| ns_to_secs(now_ns.saturating_sub(k.last_request_ns))),
            names: is_dns(&self.target).then(|| self.names.clone()),
            provisional: self
                .blackholed_since_ns
                .is_some_and(|since| now_ns.saturating_sub(since) < grace_ns),
            latency_buckets: k.latency,
            rejected_by_reason: k.rejected_by_reason,
            local_drops: self.local_drops.clone(),
            requests_dropped_here: k.requests_dropped_here,
            answers_dropped_here: k.answers_dropped_here,
            processes: self.processes.clone(),
            mtu_stalls: self.mtu.stalls,
            mtu_recoveries: self.mtu.recoveries,
            largest_delivered: self.mtu.largest_delivered,
            smallest_lost: self.mtu.smallest_lost,
            path_mtu: (k.path_mtu > 0).then_some(k.path_mtu),
            path_mtu_signals: k.path_mtu_signals,
            path_mtu_dropped_here: k.path_mtu_dropped_here,
            fragmented_answers: k.fragmented_answers,
            since: clock.wall(self.since_ns),
            after_change: self.after_change,
            change: self
                .after_change
                .and_then(|generation| clock.marks.iter().find(|m| m.generation == generation))
                .cloned(),
            local_drops_rules: self.rule_drops.clone(),
            timeline: self.timeline.recent(now_ns),
        }
    }
}

/// Monotonic time turned into wall-clock time, and the ruleset changes, for views.
struct Clock<'a> {
    /// (monotonic ns, wall clock) read together.
    anchor: (u64, SystemTime),
    marks: &'a [RulesetMark],
}

impl Clock<'_> {
    fn wall(&self, at_ns: u64) -> SystemTime {
        let (mono, wall) = self.anchor;
        if at_ns >= mono {
            wall + Duration::from_nanos(at_ns - mono)
        } else {
            wall.checked_sub(Duration::from_nanos(mono - at_ns))
                .unwrap_or(SystemTime::UNIX_EPOCH)
        }
    }
}

fn is_dns(target: &Target) -> bool {
    target.proto.iana() == proto::UDP && target.port == Some(netwatch_common::DNS_PORT)
}

/// A target whose verdict changed, with its state at the change.
pub type VerdictChange = TargetView;

/// The tracker: one [`TargetState`] per target, plus what the kernel could not handle.
#[derive(Debug)]
pub struct Tracker {
    window: Duration,
    /// How long a target must stay blackholed before its silence is evidence (see
    /// [`TargetView::provisional`]).
    grace_ns: u64,
    targets: HashMap<TargetKey, TargetState>,
    kernel: [u64; KernelCounter::COUNT],
    in_flight: usize,
    tombstones: usize,
    /// (monotonic ns, total requests) over the last few seconds, for requests/s.
    rate_samples: VecDeque<(u64, u64)>,
    /// The running kernel's drop reason names.
    drop_reasons: DropReasons,
    /// The connections the retransmission program follows.
    stalls: Stalls,
    /// (monotonic ns, wall clock) read together: until told, monotonic time is taken for
    /// time since the epoch (tests).
    wall_anchor: (u64, SystemTime),
    /// Recent ruleset changes: (read at, generation, what), oldest first.
    ruleset: VecDeque<(u64, u32, String)>,
    ruleset_changes_total: u64,
    rules_traced: bool,
}

impl Tracker {
    #[must_use]
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            grace_ns: 0,
            targets: HashMap::new(),
            kernel: [0; KernelCounter::COUNT],
            in_flight: 0,
            tombstones: 0,
            rate_samples: VecDeque::new(),
            drop_reasons: DropReasons::default(),
            stalls: Stalls::new(),
            wall_anchor: (0, SystemTime::UNIX_EPOCH),
            ruleset: VecDeque::new(),
            ruleset_changes_total: 0,
            rules_traced: false,
        }
    }

    /// Whether `--trace-rules` names rules in this run (the diagnosis says how otherwise).
    #[must_use]
    pub fn with_rules_traced(mut self, traced: bool) -> Self {
        self.rules_traced = traced;
        self
    }

    /// The wall clock at monotonic `now_ns`, for `since` times.
    pub fn observe_wall_clock(&mut self, now_ns: u64, wall: SystemTime) {
        self.wall_anchor = (now_ns, wall);
    }

    /// A ruleset change read at `at_ns`: `changes` rule and chain changes up to `generation`.
    pub fn observe_ruleset_change(
        &mut self,
        at_ns: u64,
        generation: u32,
        what: String,
        changes: u64,
    ) {
        if self.ruleset.len() >= RULESET_MARKS {
            self.ruleset.pop_front();
        }
        self.ruleset.push_back((at_ns, generation, what));
        self.ruleset_changes_total = self.ruleset_changes_total.saturating_add(changes);
    }

    /// One packet of target `key` dropped by the rule (or policy) `drop` (its `count`).
    pub fn observe_rule_drop(&mut self, key: &TargetKey, drop: RuleDrops) {
        let Some(state) = self.state_of(key) else {
            return;
        };
        let same = |r: &RuleDrops| {
            (r.family, &r.table, &r.chain, r.handle)
                == (drop.family, &drop.table, &drop.chain, drop.handle)
        };
        if let Some(known) = state.rule_drops.iter_mut().find(|r| same(r)) {
            known.count = known.count.saturating_add(drop.count);
            known.rule = drop.rule;
            known.verdict = drop.verdict;
        } else if state.rule_drops.len() < RULES_PER_TARGET {
            state.rule_drops.push(drop);
        }
        state.rule_drops.sort_by_key(|r| std::cmp::Reverse(r.count));
    }

    fn marks(&self, now_ns: u64) -> Vec<RulesetMark> {
        let clock = Clock {
            anchor: self.wall_anchor,
            marks: &[],
        };
        self.ruleset
            .iter()
            .map(|(at_ns, generation, what)| RulesetMark {
                generation: *generation,
                at: clock.wall(*at_ns),
                position: timeline::position(*at_ns, now_ns),
                what: what.clone(),
            })
            .collect()
    }

    /// Names local drop reasons with the running kernel's names.
    #[must_use]
    pub fn with_drop_reasons(mut self, reasons: DropReasons) -> Self {
        self.drop_reasons = reasons;
        self
    }

    /// A blackholed target is [`TargetView::provisional`] for this long: a remote slower
    /// than `--timeout` looks blackholed from the deadline until its late answer arrives, and
    /// the diagnosis must not blame a firewall for that. One timeout covers answers up to
    /// twice the timeout late.
    #[must_use]
    pub fn with_blackhole_grace(mut self, grace: Duration) -> Self {
        self.grace_ns = u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX);
        self
    }

    /// The state of the target `key`, made on first sight; `None` for a key that names no
    /// target (an unknown protocol).
    fn state_of(&mut self, key: &TargetKey) -> Option<&mut TargetState> {
        let target = Target::from_key(key)?;
        let window = self.window;
        Some(
            self.targets
                .entry(*key)
                .or_insert_with(|| TargetState::new(target, window)),
        )
    }

    /// Takes in one target's cumulative kernel counters as read at `now_ns`; the increase
    /// since the last read becomes outcomes resolved at `now_ns`.
    pub fn observe_counters(&mut self, now_ns: u64, key: &TargetKey, counters: &TargetCounters) {
        let Some(state) = self.state_of(key) else {
            return;
        };
        let old = &state.kernel;
        let answered = counters.answered.saturating_sub(old.answered);
        let mut rejected = Vec::new();
        for (code, (new, old)) in counters
            .rejected_by_reason
            .iter()
            .zip(old.rejected_by_reason.iter())
            .enumerate()
        {
            if new > old {
                rejected.push((u8::try_from(code).unwrap_or(0), new - old));
            }
        }
        // An answer to a request this host sent, dropped here after tc ingress counted it.
        // (For a request it received, a dropped answer never left: the request times out.)
        let answers_dropped = if state.target.direction == Direction::Egress {
            counters
                .answers_dropped_here
                .saturating_sub(old.answers_dropped_here)
        } else {
            0
        };
        let late_rejected = counters.late_rejected.saturating_sub(old.late_rejected);
        let late_answers = counters
            .late
            .saturating_sub(old.late)
            .saturating_sub(late_rejected);
        state.history.record_with_late(
            now_ns,
            answered,
            0,
            (late_answers, late_rejected),
            &rejected,
        );
        state.history.record_local(now_ns, answers_dropped, &[]);
        let rejected_now: u64 = rejected.iter().map(|(_, n)| n).sum();
        let answered_net = answered.saturating_sub(answers_dropped);
        if answered_net > 0 {
            state.failing_since_ns = None;
        }
        if rejected_now + answers_dropped > 0 {
            state.failed_at(now_ns);
        }
        state
            .timeline
            .record(now_ns, answered_net, rejected_now + answers_dropped);
        state.kernel = *counters;
    }

    /// Takes in one target's cumulative count of drops on this host for the kernel drop
    /// reason `reason`, as read at `now_ns`.
    pub fn observe_local_drops(&mut self, now_ns: u64, key: &TargetKey, reason: u32, count: u64) {
        let reason = self.drop_reasons.get(reason);
        let Some(state) = self.state_of(key) else {
            return;
        };
        let old = state.local_drops.insert(reason.name, count).unwrap_or(0);
        if !reason.at_socket {
            // A drop at the socket (the application gone or slow) names no failure.
            let new = count.saturating_sub(old);
            state.history.record_local(now_ns, 0, &[(reason.here, new)]);
            if new > 0 {
                state.failed_at(now_ns);
            }
        }
    }

    /// Takes in a request found unanswered at `now_ns`.
    pub fn observe_unanswered(&mut self, now_ns: u64, key: &RequestKey, request: &PendingRequest) {
        let target_key = key.target();
        let Some(state) = self.state_of(&target_key) else {
            return;
        };
        state.unanswered += 1;
        state.history.record(now_ns, 0, 1, &[]);
        // When the request left: the failure began then.
        let sent_ns = match request.first_sent_ns {
            0 => now_ns,
            sent => sent.min(now_ns),
        };
        state.failed_at(sent_ns);
        state.timeline.record(sent_ns, 0, 1);
        if is_dns(&state.target) && state.names.len() < NAMES_PER_TARGET {
            let captured = usize::from(request.question_len).min(request.question.len());
            if let Some(question) = dns::parse_question(&request.question[..captured])
                && !state.names.contains(&question.name)
            {
                state.names.push(question.name);
            }
        }
    }

    /// Takes in the retransmission program's connections as read at `now_ns` (see
    /// [`crate::stalls`]); `progressed` says whether a still stalled connection's socket
    /// reports bytes acknowledged since, `probing` whether TCP's black-hole detection is on.
    /// Returns the sockets to stop following.
    pub fn observe_retransmits(
        &mut self,
        now_ns: u64,
        entries: &[(u64, Retransmits)],
        progressed: impl FnMut(&Retransmits) -> bool,
        probing: bool,
    ) -> Vec<u64> {
        let targets = &self.targets;
        let polled = self.stalls.poll(
            now_ns,
            entries,
            |key| targets.contains_key(key),
            progressed,
            probing,
        );
        for (key, change) in polled.changes {
            let Some(state) = self.targets.get_mut(&key) else {
                continue;
            };
            match change {
                Change::Stalled(sizes) => {
                    state.mtu.stalls += 1;
                    state.mtu.add(sizes);
                    state.history.record_mtu(now_ns, 1, 0);
                }
                Change::Recovered(sizes) => {
                    state.mtu.recoveries += 1;
                    state.mtu.add(sizes);
                    state.history.record_mtu(now_ns, 0, 1);
                }
                Change::TakenBack => {
                    state.mtu.stalls = state.mtu.stalls.saturating_sub(1);
                    state.history.record_mtu(now_ns, 0, 1);
                }
            }
        }
        polled.forget
    }

    /// Takes in a process found behind a request of the target `key`.
    pub fn observe_process(&mut self, key: &TargetKey, process: Process) {
        let Some(state) = self.state_of(key) else {
            return;
        };
        attribution::remember(&mut state.processes, process);
    }

    /// Takes in the kernel's per-CPU counters (summed) and the pending table's make-up.
    pub fn observe_kernel(
        &mut self,
        counters: [u64; KernelCounter::COUNT],
        in_flight: usize,
        tombstones: usize,
    ) {
        self.kernel = counters;
        self.in_flight = in_flight;
        self.tombstones = tombstones;
    }

    /// Takes in the requests in flight per target, as the last sweep found them.
    pub fn observe_in_flight<S: std::hash::BuildHasher>(
        &mut self,
        by_target: &HashMap<TargetKey, u64, S>,
    ) {
        for (key, state) in &mut self.targets {
            state.in_flight = by_target.get(key).copied().unwrap_or(0);
        }
    }

    /// Re-judges every target; returns those whose verdict or reason changed or whose
    /// dropping rule tracing newly named, and new
    /// targets (their first verdict, usually `pending`).
    pub fn judge(&mut self, now_ns: u64) -> Vec<VerdictChange> {
        let total: u64 = self.targets.values().map(|s| s.kernel.requests).sum();
        self.rate_samples.push_back((now_ns, total));
        while self.rate_samples.len() > 2
            && self
                .rate_samples
                .front()
                .is_some_and(|(t, _)| t + 5_000_000_000 < now_ns)
        {
            self.rate_samples.pop_front();
        }
        let mut changes = Vec::new();
        let ruleset: VecDeque<(u64, u32)> =
            self.ruleset.iter().map(|(at, g, _)| (*at, *g)).collect();
        let marks = self.marks(now_ns);
        let clock = Clock {
            anchor: self.wall_anchor,
            marks: &marks,
        };
        for state in self.targets.values_mut() {
            if state.kernel.requests == 0 && state.unanswered == 0 {
                continue;
            }
            let (verdict, reason) = state.history.judge().unwrap_or((Verdict::Pending, None));
            if verdict == Verdict::Blackholed {
                state.blackholed_since_ns.get_or_insert(now_ns);
            } else {
                state.blackholed_since_ns = None;
            }
            // A rule newly named by tracing is news too: a record says which.
            let named = state.rule_drops.len() != state.announced_rules;
            if !state.announced || verdict != state.verdict || reason != state.reason || named {
                state.announced_rules = state.rule_drops.len();
                let started = state.failing_since_ns.unwrap_or(now_ns).min(now_ns);
                if !state.announced || verdict != state.verdict {
                    state.since_ns = match verdict {
                        Verdict::Blackholed | Verdict::Rejected | Verdict::Degraded => started,
                        Verdict::Ok | Verdict::Pending => now_ns,
                    };
                }
                // Only drops on this host can follow from this host's ruleset.
                let dropped_here = verdict != Verdict::Ok
                    && verdict != Verdict::Pending
                    && reason.is_some_and(|r| r.starts_with("here:"));
                state.after_change = if dropped_here {
                    change_behind(started, &ruleset)
                } else {
                    None
                };
                state.verdict = verdict;
                state.reason = reason;
                state.announced = true;
                changes.push(state.view(now_ns, self.grace_ns, &clock));
            }
        }
        changes.sort_by(TargetView::worst_first);
        changes
    }

    /// The current state for renderers.
    #[must_use]
    pub fn snapshot(&self, now_ns: u64) -> Snapshot {
        let marks = self.marks(now_ns);
        let clock = Clock {
            anchor: self.wall_anchor,
            marks: &marks,
        };
        let mut targets: Vec<TargetView> = self
            .targets
            .values()
            .filter(|s| s.announced)
            .map(|s| s.view(now_ns, self.grace_ns, &clock))
            .collect();
        targets.sort_by(TargetView::worst_first);
        let rollups = Rollup::of(&targets);
        let requests_per_s = match (self.rate_samples.front(), self.rate_samples.back()) {
            (Some(&(t0, r0)), Some(&(t1, r1))) if t1 > t0 => {
                #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
                let rate = r1.saturating_sub(r0) as f64 / ns_to_secs(t1 - t0);
                rate
            }
            _ => 0.0,
        };
        Snapshot {
            targets,
            rollups,
            kernel: KernelStats::from_counters(&self.kernel),
            in_flight: self.in_flight,
            tombstones: self.tombstones,
            requests_per_s,
            local_drops_watched: !self.drop_reasons.is_empty(),
            retransmitting_connections: self.stalls.stats(),
            ruleset: marks,
            ruleset_changes_total: self.ruleset_changes_total,
            rules_traced: self.rules_traced,
        }
    }
}

#[must_use]
pub fn zero_counters() -> TargetCounters {
    TargetCounters {
        requests: 0,
        retransmits: 0,
        answered: 0,
        rejected: 0,
        late: 0,
        late_rejected: 0,
        untracked: 0,
        abandoned: 0,
        last_request_ns: 0,
        last_answer_ns: 0,
        last_socket_cookie: 0,
        requests_dropped_here: 0,
        answers_dropped_here: 0,
        path_mtu_signals: 0,
        path_mtu: 0,
        path_mtu_dropped_here: 0,
        fragmented_answers: 0,
        rejected_by_reason: [0; REASON_SLOTS],
        latency: [0; LATENCY_BUCKETS],
    }
}

#[expect(clippy::cast_precision_loss, reason = "durations for display")]
fn ns_to_secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The `quantile` of the latency histogram in milliseconds, interpolated within its log2
/// bucket; `None` without answers.
#[must_use]
pub fn latency_percentile_ms(buckets: &[u64; LATENCY_BUCKETS], quantile: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    #[expect(clippy::cast_precision_loss, reason = "a percentile for display")]
    let rank = quantile * total as f64;
    let mut below = 0u64;
    for (bucket, &count) in buckets.iter().enumerate() {
        #[expect(clippy::cast_precision_loss, reason = "a percentile for display")]
        let reached = (below + count) as f64 >= rank;
        if count > 0 && reached {
            let lower = if bucket == 0 {
                0
            } else {
                latency_bucket_upper_ns(bucket - 1)
            };
            // The last bucket is open-ended: assume it spans one more octave.
            let upper = if bucket + 1 == LATENCY_BUCKETS {
                lower.saturating_mul(2)
            } else {
                latency_bucket_upper_ns(bucket)
            };
            #[expect(clippy::cast_precision_loss, reason = "a percentile for display")]
            let fraction = ((rank - below as f64) / count as f64).clamp(0.0, 1.0);
            #[expect(clippy::cast_precision_loss, reason = "a percentile for display")]
            let ns = lower as f64 + fraction * (upper - lower) as f64;
            return Some(ns / 1e6);
        }
        below += count;
    }
    None
}

#[cfg(test)]
mod tests {
    use netwatch_common::{DNS_QUESTION_CAPTURE, Reason};

    use super::*;
    use crate::target::{Proto, ip_to_key, target_key};

    const S: u64 = 1_000_000_000;

    fn dns_key() -> TargetKey {
        target_key(Proto::Udp, "198.51.100.53".parse().unwrap(), 53)
    }

    fn counters(requests: u64, answered: u64) -> TargetCounters {
        TargetCounters {
            requests,
            answered,
            ..zero_counters()
        }
    }

    fn request(name: &str) -> (RequestKey, PendingRequest) {
        let key = RequestKey {
            remote: ip_to_key("198.51.100.53".parse().unwrap()),
            local: ip_to_key("203.0.113.2".parse().unwrap()),
            remote_port: 53,
            local_port: 40_000,
            tag: 1,
            proto: proto::UDP,
            direction: netwatch_common::DIRECTION_EGRESS,
        };
        let mut question = [0u8; DNS_QUESTION_CAPTURE];
        let mut len = 0;
        for label in name.split('.') {
            question[len] = u8::try_from(label.len()).unwrap();
            question[len + 1..len + 1 + label.len()].copy_from_slice(label.as_bytes());
            len += 1 + label.len();
        }
        len += 1 + 2;
        let mut pending = PendingRequest::sent_at(0);
        pending.ifindex = 2;
        pending.question_len = u16::try_from(len).unwrap();
        pending.question = question;
        (key, pending)
    }

    #[test]
    fn a_new_target_is_announced_pending_then_judged() {
        let mut tracker = Tracker::new(Duration::from_mins(1));
        tracker.observe_counters(S, &dns_key(), &counters(1, 0));
        let changes = tracker.judge(S);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].verdict, Verdict::Pending);
        assert!(tracker.judge(S).is_empty(), "no change, no record");

        let (key, pending) = request("chat.example.com");
        tracker.observe_unanswered(5 * S, &key, &pending);
        let changes = tracker.judge(5 * S);
        assert_eq!(changes.len(), 1);
        let view = &changes[0];
        assert_eq!(
            (view.verdict, view.requests, view.unanswered),
            (Verdict::Blackholed, 1, 1)
        );
        assert_eq!(
            view.names.as_deref(),
            Some(&["chat.example.com".to_owned()][..])
        );
    }

    #[test]
    fn counter_increases_become_outcomes() {
        let mut tracker = Tracker::new(Duration::from_mins(1));
        tracker.observe_counters(S, &dns_key(), &counters(3, 3));
        assert_eq!(tracker.judge(S)[0].verdict, Verdict::Ok);
        let mut rejected = counters(5, 3);
        rejected.rejected = 2;
        rejected.rejected_by_reason[usize::from(Reason::icmp_unreachable(3))] = 2;
        tracker.observe_counters(2 * S, &dns_key(), &rejected);
        let change = &tracker.judge(2 * S)[0];
        assert_eq!(change.verdict, Verdict::Degraded);
        assert_eq!(change.reason, Some("icmp-port-unreachable"));
        // Reading the same cumulative counters again adds nothing.
        tracker.observe_counters(3 * S, &dns_key(), &rejected);
        assert!(tracker.judge(3 * S).is_empty());
    }

    #[test]
    fn names_are_deduplicated_and_bounded() {
        let mut tracker = Tracker::new(Duration::from_mins(1));
        tracker.observe_counters(S, &dns_key(), &counters(20, 0));
        for i in 0..20 {
            let (key, pending) = request(&format!("host{}.example", i % 10));
            tracker.observe_unanswered(2 * S, &key, &pending);
        }
        tracker.judge(2 * S);
        let view = &tracker.snapshot(2 * S).targets[0];
        let names = view.names.as_ref().unwrap();
        assert_eq!(names.len(), NAMES_PER_TARGET);
        assert_eq!(names[0], "host0.example");
        assert_eq!(view.unanswered, 20);
    }

    #[test]
    fn in_flight_is_what_the_last_sweep_found_in_flight() {
        let mut tracker = Tracker::new(Duration::from_mins(1));
        let mut c = counters(10, 4);
        c.untracked = 1;
        tracker.observe_counters(S, &dns_key(), &c);
        let (key, pending) = request("a.example");
        tracker.observe_unanswered(S, &key, &pending);
        let by_target: HashMap<_, _> = [(dns_key(), 4)].into();
        tracker.observe_in_flight(&by_target);
        tracker.judge(S);
        let view = &tracker.snapshot(S).targets[0];
        assert_eq!((view.in_flight, view.untracked), (4, 1));
        // Requests the table no longer holds (settled, or lost to a race) are not in flight,
        // whatever the counters add up to.
        tracker.observe_in_flight(&HashMap::<TargetKey, u64>::new());
        assert_eq!(tracker.snapshot(S).targets[0].in_flight, 0);
    }

    #[test]
    fn latency_percentiles_interpolate_within_buckets() {
        let mut buckets = [0u64; LATENCY_BUCKETS];
        assert_eq!(latency_percentile_ms(&buckets, 0.5), None);
        // 100 answers between 1.048 ms and 2.097 ms (bucket 10).
        buckets[10] = 100;
        let p50 = latency_percentile_ms(&buckets, 0.5).unwrap();
        assert!((1.5..1.6).contains(&p50), "{p50}");
        buckets[20] = 1;
        let p99 = latency_percentile_ms(&buckets, 0.99).unwrap();
        assert!(p99 < 2.1, "99 of 101 are fast: {p99}");
        let p100 = latency_percentile_ms(&buckets, 1.0).unwrap();
        assert!(p100 > 1000.0, "the slow one: {p100}");
    }

    fn drop_reasons() -> DropReasons {
        DropReasons::from_enumerators([
            ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
            ("SKB_DROP_REASON_NETFILTER_DROP", 12),
        ])
    }

    #[test]
    fn a_failure_dropped_here_right_after_a_ruleset_change_names_it() {
        // A short window: the answer before the change is out of it by the failure.
        let mut tracker = Tracker::new(Duration::from_secs(5)).with_drop_reasons(drop_reasons());
        tracker.observe_wall_clock(0, SystemTime::UNIX_EPOCH + Duration::from_secs(1_000));
        tracker.observe_counters(S, &dns_key(), &counters(1, 1));
        tracker.judge(S);
        assert_eq!(tracker.snapshot(S).targets[0].verdict, Verdict::Ok);
        tracker.observe_ruleset_change(10 * S, 42, "rule added".into(), 1);
        // Dropped by the output chain at 11.4 s (counted at the next poll), unanswered at its
        // deadline.
        let (key, mut pending) = request("after.example");
        pending.first_sent_ns = 11 * S + 400_000_000;
        tracker.observe_local_drops(11 * S + 500_000_000, &dns_key(), 12, 1);
        tracker.observe_counters(14 * S, &dns_key(), &counters(2, 1));
        tracker.observe_unanswered(14 * S + 500_000_000, &key, &pending);
        let change = &tracker.judge(14 * S + 500_000_000)[0];
        assert_eq!(change.verdict, Verdict::Blackholed);
        assert_eq!(change.reason, Some("here:netfilter-drop"));
        assert_eq!(change.after_change, Some(42));
        assert_eq!(
            change.since,
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_011_400),
            "when the first failed request left"
        );
        let mark = change.change.as_ref().unwrap();
        assert_eq!((mark.generation, mark.what.as_str()), (42, "rule added"));
        let snapshot = tracker.snapshot(15 * S);
        assert_eq!(snapshot.ruleset_changes_total, 1);
        assert_eq!(snapshot.targets[0].after_change, Some(42));
        let json = serde_json::to_value(&snapshot.targets[0]).unwrap();
        assert_eq!(json["since"], "1970-01-01T00:16:51.400Z");
        assert_eq!(json["after_change"], 42);
    }

    #[test]
    fn upstream_failures_and_late_ones_are_never_tied_to_a_change() {
        let mut tracker = Tracker::new(Duration::from_mins(1)).with_drop_reasons(drop_reasons());
        tracker.observe_ruleset_change(10 * S, 7, "rule added".into(), 1);
        tracker.observe_counters(10 * S, &dns_key(), &counters(1, 0));
        let (key, mut pending) = request("upstream.example");
        pending.first_sent_ns = 10 * S + S / 2;
        tracker.observe_unanswered(14 * S, &key, &pending);
        let change = &tracker.judge(14 * S)[0];
        assert_eq!(change.verdict, Verdict::Blackholed);
        assert_eq!(change.after_change, None, "nothing dropped here");
        let json = serde_json::to_value(change).unwrap();
        assert!(json.get("after_change").is_none(), "{json}");
        assert_eq!(json["local_drops_rules"], serde_json::json!([]));

        // Dropped here, but 20 s after the change.
        let other = target_key(Proto::Udp, "198.51.100.54".parse().unwrap(), 53);
        tracker.observe_counters(30 * S, &other, &counters(1, 0));
        tracker.observe_local_drops(30 * S, &other, 12, 1);
        let mut late = pending;
        late.first_sent_ns = 30 * S;
        let mut late_key = key;
        late_key.remote = other.remote;
        tracker.observe_unanswered(34 * S, &late_key, &late);
        let changes = tracker.judge(34 * S);
        let late_view = changes
            .iter()
            .find(|t| t.remote.to_string() == "198.51.100.54")
            .unwrap();
        assert_eq!(late_view.reason, Some("here:netfilter-drop"));
        assert_eq!(late_view.after_change, None);
    }

    #[test]
    fn traced_drops_add_up_per_rule_most_first_and_bounded() {
        let mut tracker = Tracker::new(Duration::from_mins(1));
        tracker.observe_counters(S, &dns_key(), &counters(1, 0));
        let rule = |handle: u64| RuleDrops {
            family: crate::firewall::netlink::Family::Inet,
            table: "host".into(),
            chain: "output".into(),
            handle: Some(handle),
            rule: format!("drop # {handle}"),
            verdict: "drop",
            count: 1,
        };
        tracker.observe_rule_drop(&dns_key(), rule(7));
        for _ in 0..3 {
            tracker.observe_rule_drop(&dns_key(), rule(9));
        }
        for handle in 100..120 {
            tracker.observe_rule_drop(&dns_key(), rule(handle));
        }
        tracker.judge(S);
        let rules = &tracker.snapshot(S).targets[0].local_drops_rules;
        assert_eq!(rules.len(), RULES_PER_TARGET);
        assert_eq!((rules[0].handle, rules[0].count), (Some(9), 3));
        assert_eq!((rules[1].handle, rules[1].count), (Some(7), 1));
    }

    #[test]
    fn requests_per_second_over_recent_polls() {
        let mut tracker = Tracker::new(Duration::from_mins(1));
        tracker.observe_counters(S, &dns_key(), &counters(10, 10));
        tracker.judge(S);
        tracker.observe_counters(3 * S, &dns_key(), &counters(30, 30));
        tracker.judge(3 * S);
        let rate = tracker.snapshot(3 * S).requests_per_s;
        assert!((rate - 10.0).abs() < 1e-9, "{rate}");
    }
}

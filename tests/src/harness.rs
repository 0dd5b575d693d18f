//! The harness of the program tests (`tests/programs`) and the fuzz and pressure tests: one
//! loaded [`Probe`], its `BPF_PROG_TEST_RUN` calls counted, the kernel's tables read back as a
//! [`State`] and compared as a [`Change`].

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use crate::packets::{self, Flow, Kind, Shape, TcpFlags};
use aya::programs::{ProgramError, TestRun as _, TestRunOptions};
use netwatch::{
    probe::{Build, Classifiers, KernelTables as _, Probe},
    target::{Proto, Target, ip_from_key},
};
use netwatch_common::{
    EGRESS_PROGRAM, INGRESS_PROGRAM, KernelCounter, PENDING_FLAG_LATE, PENDING_FLAG_REJECTED,
    PendingRequest, REASON_SLOTS, Reason, RequestKey, TargetCounters, TargetKey,
};

/// `TC_ACT_UNSPEC`: what both programs must return on every packet.
pub const PASS_THROUGH: i32 = -1;
/// The timeout compiled into the programs, long enough that nothing in a test is late.
pub const TIMEOUT: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------
// The harness: one loaded probe, runs counted, the kernel's tables read back as a `State`.
// ---------------------------------------------------------------------------------------

/// Runs `program` of `probe` on `frame` once (`BPF_PROG_TEST_RUN`): its return value, or
/// the kernel's refusal.
///
/// # Panics
/// When `probe` has no such program.
pub fn run_on(probe: &mut Probe, program: &str, frame: &[u8]) -> Result<i32, ProgramError> {
    probe
        .classifier(program)
        .unwrap_or_else(|err| panic!("no {program}: {err}"))
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        })
        .map(|result| result.return_value.cast_signed())
}

/// Every target's counters, as the kernel holds them.
///
/// # Panics
/// When the kernel's tables cannot be read.
pub fn all_targets(probe: &mut Probe) -> Vec<(TargetKey, TargetCounters)> {
    let mut all = Vec::new();
    probe
        .read_targets(&mut |key, counters| all.push((*key, *counters)))
        .expect("reading the target counters");
    all
}

/// `field` summed over `all`.
pub fn sum(all: &[(TargetKey, TargetCounters)], field: impl Fn(&TargetCounters) -> u64) -> u64 {
    all.iter().map(|(_, c)| field(c)).sum()
}

/// `NETWATCH_TEST_BUILD`: which build of the programs the harness loads: `no-cmpxchg` (the
/// one for kernels before 5.12, which runs on any kernel), or by default the one this kernel
/// gets. `cargo xtask test` runs the program tests with each.
pub const BUILD_ENV: &str = "NETWATCH_TEST_BUILD";

/// The build of the programs [`BUILD_ENV`] asks for.
///
/// # Panics
/// When it names no build.
#[must_use]
pub fn build() -> Build {
    match std::env::var(BUILD_ENV).as_deref() {
        Err(_) | Ok("") => Build::for_this_kernel(),
        Ok("no-cmpxchg") => Build::NoCompareAndSwap,
        Ok("cmpxchg") => Build::CompareAndSwap,
        Ok(other) => panic!("{BUILD_ENV}={other}: expected cmpxchg or no-cmpxchg"),
    }
}

pub struct Harness {
    pub name: &'static str,
    pub probe: Probe,
    pub runs: usize,
}

impl Harness {
    #[must_use]
    pub fn new(name: &'static str) -> Self {
        Self::with_timeout(name, TIMEOUT)
    }

    #[must_use]
    pub fn with_timeout(name: &'static str, timeout: Duration) -> Self {
        Self::loading(name, timeout, Classifiers::ETHERNET)
    }

    /// A harness with both classifier pairs loaded: the Ethernet one and the one for
    /// devices without a link-layer header.
    #[must_use]
    pub fn with_both_pairs(name: &'static str) -> Self {
        Self::loading(name, TIMEOUT, Classifiers::ALL)
    }

    fn loading(name: &'static str, timeout: Duration, classifiers: Classifiers) -> Self {
        let probe = Probe::load_for_tests(timeout, build(), classifiers)
            .unwrap_or_else(|err| panic!("{name}: loading the eBPF programs failed: {err}"));
        Self {
            name,
            probe,
            runs: 0,
        }
    }

    /// Runs `program` on `frame`: its return value, or the kernel's refusal.
    pub fn try_run(&mut self, program: &str, frame: &[u8]) -> Result<i32, ProgramError> {
        self.runs += 1;
        run_on(&mut self.probe, program, frame)
    }

    /// Runs `program` on `frame` (described by `what`), which must pass through.
    pub fn run(&mut self, program: &str, frame: &[u8], what: &str) {
        match self.try_run(program, frame) {
            Ok(ret) => assert_eq!(
                ret, PASS_THROUGH,
                "{}: {program} returned {ret} on {what}, not TC_ACT_UNSPEC (-1)",
                self.name
            ),
            Err(err) => panic!(
                "{}: test_run of {program} on {what} failed: {err:?}",
                self.name
            ),
        }
    }

    pub fn egress(&mut self, frame: &[u8], what: &str) {
        self.run(EGRESS_PROGRAM, frame, what);
    }

    pub fn ingress(&mut self, frame: &[u8], what: &str) {
        self.run(INGRESS_PROGRAM, frame, what);
    }

    /// Sends the request of each flow.
    pub fn send(&mut self, flows: &[Flow]) {
        for flow in flows {
            self.egress(&flow.request(), &format!("the request {}", flow.describe()));
        }
    }

    /// What running `act` changed in the kernel's tables.
    pub fn change(&mut self, act: impl FnOnce(&mut Self)) -> Change {
        let before = self.state();
        act(self);
        self.state().since(&before)
    }

    /// What one run of `program` on `frame` changed.
    pub fn change_by(&mut self, program: &str, frame: &[u8], what: &str) -> Change {
        self.change(|h| h.run(program, frame, what))
    }

    /// Runs `program` on `frame`, which must change exactly `expected`.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "expectations are built inline at every call"
    )]
    pub fn check(&mut self, program: &str, frame: &[u8], expected: Change, what: &str) {
        let change = self.change_by(program, frame, what);
        assert_eq!(change, expected, "{}: {what}", self.name);
    }

    pub fn state(&mut self) -> State {
        let name = self.name;
        let pending = self
            .probe
            .read_pending()
            .unwrap_or_else(|err| panic!("{name}: reading the pending table: {err}"))
            .into_iter()
            .map(|(key, request)| (key_name(&key), Entry::of(&request)))
            .collect();
        let mut targets = BTreeMap::new();
        self.probe
            .read_targets(&mut |key, counters| {
                targets.insert(target_name(key), Tally::of(counters));
            })
            .unwrap_or_else(|err| panic!("{name}: reading the target counters: {err}"));
        let counters = self
            .probe
            .read_counters()
            .unwrap_or_else(|err| panic!("{name}: reading the kernel counters: {err}"));
        State {
            pending,
            targets,
            counters,
        }
    }

    /// The pending entry of `flow`, looked up by its exact key.
    pub fn entry(&mut self, flow: &Flow) -> Option<PendingRequest> {
        let key = flow.key();
        self.keys()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, entry)| entry)
    }

    pub fn keys(&mut self) -> Vec<(RequestKey, PendingRequest)> {
        self.probe
            .read_pending()
            .expect("reading the pending table")
    }

    /// The counters of the target of `flow`.
    pub fn target(&mut self, flow: &Flow) -> TargetCounters {
        let wanted = flow.target();
        let mut found = None;
        self.probe
            .read_targets(&mut |key, counters| {
                if *key == wanted {
                    found = Some(*counters);
                }
            })
            .expect("reading the target counters");
        found.unwrap_or_else(|| panic!("{}: no counters for {}", self.name, target_name(&wanted)))
    }

    /// Removes the pending entry of `flow` (as userspace's sweep does).
    pub fn forget(&mut self, flow: &Flow) {
        self.probe
            .remove_pending(&flow.key())
            .expect("removing a pending entry");
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        eprintln!("[{}] {} BPF_PROG_TEST_RUN calls", self.name, self.runs);
    }
}

#[must_use]
pub fn key_name(key: &RequestKey) -> String {
    let proto =
        Proto::from_iana(key.proto).map_or_else(|| key.proto.to_string(), |p| p.to_string());
    let inbound = if key.direction == netwatch_common::DIRECTION_EGRESS {
        String::new()
    } else {
        format!(" direction {}", key.direction)
    };
    format!(
        "{proto} {}:{} -> {}:{} tag {}{inbound}",
        ip_from_key(key.local),
        key.local_port,
        ip_from_key(key.remote),
        key.remote_port,
        key.tag
    )
}

/// A target as the tests name it: as netwatch prints it, and `inbound` for the target of
/// requests this host received (the same peer and port as an outbound one is another target).
#[must_use]
pub fn target_name(key: &TargetKey) -> String {
    let name =
        Target::from_key(key).map_or_else(|| format!("{key:?}"), |target| target.to_string());
    if key.direction == netwatch_common::DIRECTION_EGRESS {
        name
    } else {
        format!("{name} inbound")
    }
}

/// A pending entry as the tests compare it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub tcp_seq: u32,
    pub flags: u32,
    pub question: Vec<u8>,
    pub first_sent_ns: u64,
    pub last_sent_ns: u64,
    pub target_slot: u32,
}

impl Entry {
    #[must_use]
    pub fn of(request: &PendingRequest) -> Self {
        let len = usize::from(request.question_len).min(request.question.len());
        assert!(
            request.question[len..].iter().all(|&b| b == 0),
            "bytes past question_len {len} are not zero: {:?}",
            request.question
        );
        Self {
            tcp_seq: request.tcp_seq,
            flags: request.flags,
            question: request.question[..len].to_vec(),
            first_sent_ns: request.first_sent_ns,
            last_sent_ns: request.last_sent_ns,
            target_slot: request.target_slot,
        }
    }
}

/// A target's counters as the tests compare them (the latency histogram summed: which
/// bucket an answer lands in depends on timing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub requests: u64,
    pub retransmits: u64,
    pub answered: u64,
    pub rejected: u64,
    pub late: u64,
    pub untracked: u64,
    pub abandoned: u64,
    pub reasons: [u64; REASON_SLOTS],
    pub latency: u64,
}

impl Tally {
    #[must_use]
    pub fn of(counters: &TargetCounters) -> Self {
        Self {
            requests: counters.requests,
            retransmits: counters.retransmits,
            answered: counters.answered,
            rejected: counters.rejected,
            late: counters.late,
            untracked: counters.untracked,
            abandoned: counters.abandoned,
            reasons: counters.rejected_by_reason,
            latency: counters.latency.iter().sum(),
        }
    }

    /// `self - before`; counters never go backwards.
    #[must_use]
    pub fn since(&self, before: &Self, target: &str) -> Self {
        let minus = |after: u64, before: u64, what: &str| {
            after.checked_sub(before).unwrap_or_else(|| {
                panic!("{target}: {what} went backwards from {before} to {after}")
            })
        };
        let mut reasons = [0; REASON_SLOTS];
        for (slot, reason) in reasons.iter_mut().enumerate() {
            *reason = minus(
                self.reasons[slot],
                before.reasons[slot],
                "rejected_by_reason",
            );
        }
        Self {
            requests: minus(self.requests, before.requests, "requests"),
            retransmits: minus(self.retransmits, before.retransmits, "retransmits"),
            answered: minus(self.answered, before.answered, "answered"),
            rejected: minus(self.rejected, before.rejected, "rejected"),
            late: minus(self.late, before.late, "late"),
            untracked: minus(self.untracked, before.untracked, "untracked"),
            abandoned: minus(self.abandoned, before.abandoned, "abandoned"),
            reasons,
            latency: minus(self.latency, before.latency, "latency"),
        }
    }
}

/// The kernel's tables at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub pending: BTreeMap<String, Entry>,
    pub targets: BTreeMap<String, Tally>,
    pub counters: [u64; KernelCounter::COUNT],
}

impl State {
    /// What changed since `before`.
    #[must_use]
    pub fn since(&self, before: &Self) -> Change {
        let mut change = Change::default();
        for (key, entry) in &self.pending {
            let Some(old) = before.pending.get(key) else {
                change.recorded.insert(
                    key.clone(),
                    (entry.tcp_seq, entry.flags, entry.question.clone()),
                );
                continue;
            };
            assert_eq!(
                (
                    old.tcp_seq,
                    &old.question,
                    old.first_sent_ns,
                    old.target_slot
                ),
                (
                    entry.tcp_seq,
                    &entry.question,
                    entry.first_sent_ns,
                    entry.target_slot
                ),
                "the pending entry {key} was rewritten"
            );
            if old.flags != entry.flags {
                change.flagged.insert(key.clone(), (old.flags, entry.flags));
            }
            if old.last_sent_ns != entry.last_sent_ns {
                assert!(
                    entry.last_sent_ns > old.last_sent_ns,
                    "{key}: last_sent_ns went backwards"
                );
                change.resent.insert(key.clone());
            }
        }
        for key in before.pending.keys() {
            if !self.pending.contains_key(key) {
                change.removed.insert(key.clone());
            }
        }
        let zero = Tally::default();
        for (target, tally) in &self.targets {
            let delta = tally.since(before.targets.get(target).unwrap_or(&zero), target);
            if delta != zero {
                change.targets.insert(target.clone(), delta);
            }
        }
        for target in before.targets.keys() {
            assert!(
                self.targets.contains_key(target),
                "the target {target} vanished"
            );
        }
        for counter in KernelCounter::ALL {
            let (old, new) = (
                before.counters[counter as usize],
                self.counters[counter as usize],
            );
            assert!(
                new >= old,
                "kernel counter {} went backwards",
                counter.name()
            );
            if new != old {
                change.counters.insert(counter.name(), new - old);
            }
        }
        change
    }
}

/// What changed in the kernel's tables. Built from two [`State`]s, or as an expectation
/// with the builder methods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// New pending entries: (`tcp_seq`, flags, captured question).
    pub recorded: BTreeMap<String, (u32, u32, Vec<u8>)>,
    pub removed: BTreeSet<String>,
    /// Entries whose flags changed: before, after.
    pub flagged: BTreeMap<String, (u32, u32)>,
    /// Entries whose `last_sent_ns` moved (a retransmit).
    pub resent: BTreeSet<String>,
    /// Per-target counter increments.
    pub targets: BTreeMap<String, Tally>,
    /// Kernel counter increments, by name.
    pub counters: BTreeMap<&'static str, u64>,
}

impl Change {
    #[must_use]
    pub fn none() -> Self {
        Self::default()
    }

    #[must_use]
    pub fn count(mut self, counter: KernelCounter, n: u64) -> Self {
        *self.counters.entry(counter.name()).or_default() += n;
        self
    }

    #[must_use]
    pub fn tally(mut self, flow: &Flow, add: impl FnOnce(&mut Tally)) -> Self {
        add(self.targets.entry(target_name(&flow.target())).or_default());
        self
    }

    /// `flow` became pending: a new request of its target.
    #[must_use]
    pub fn recorded(mut self, flow: &Flow) -> Self {
        self.recorded
            .insert(key_name(&flow.key()), (flow.seq, 0, flow.question()));
        self.tally(flow, |t| t.requests += 1)
    }

    /// `flow` was sent again while pending.
    #[must_use]
    pub fn retransmitted(mut self, flow: &Flow) -> Self {
        self.resent.insert(key_name(&flow.key()));
        self.tally(flow, |t| t.retransmits += 1)
    }

    /// `flow` was answered in time: removed, counted, one latency sample.
    #[must_use]
    pub fn answered(mut self, flow: &Flow) -> Self {
        self.removed.insert(key_name(&flow.key()));
        self.tally(flow, |t| {
            t.answered += 1;
            t.latency += 1;
        })
    }

    /// `flow` was rejected in time with `reason`: it stays as a tombstone.
    #[must_use]
    pub fn rejected(mut self, flow: &Flow, reason: u8) -> Self {
        self.flagged
            .insert(key_name(&flow.key()), (0, PENDING_FLAG_REJECTED));
        self.tally(flow, |t| {
            t.rejected += 1;
            t.reasons[usize::from(reason)] += 1;
        })
    }

    /// An answer or rejection of `flow` came after the timeout.
    #[must_use]
    pub fn late(mut self, flow: &Flow) -> Self {
        self.flagged
            .insert(key_name(&flow.key()), (0, PENDING_FLAG_LATE));
        self.tally(flow, |t| t.late += 1)
    }

    /// A one-line summary: which entries were recorded, removed or flagged, and the kernel
    /// counters that moved.
    #[must_use]
    pub fn brief(&self) -> String {
        let mut parts = Vec::new();
        for key in self.recorded.keys() {
            parts.push(format!("recorded {key}"));
        }
        for key in &self.removed {
            parts.push(format!("answered {key}"));
        }
        for (key, (before, after)) in &self.flagged {
            parts.push(format!("flags {before} -> {after} on {key}"));
        }
        for (counter, n) in &self.counters {
            parts.push(format!("{counter} +{n}"));
        }
        parts.join("; ")
    }

    /// This change with every captured question cut to `keep` bytes.
    #[must_use]
    pub fn with_question_cut(&self, keep: usize) -> Self {
        let mut cut = self.clone();
        for (_, _, question) in cut.recorded.values_mut() {
            question.truncate(keep);
        }
        cut
    }
}

#[must_use]
pub fn other(program: &str) -> &'static str {
    if program == EGRESS_PROGRAM {
        INGRESS_PROGRAM
    } else {
        EGRESS_PROGRAM
    }
}

/// Another address of this host's network, and another remote.
#[must_use]
pub fn other_local(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 3))
    } else {
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 3))
    }
}

#[must_use]
pub fn other_remote(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x11))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 11))
    }
}

/// The reason an unreachable of `code` should be counted under, in the flow's family.
#[must_use]
pub fn unreachable_reason(v6: bool, code: u8) -> u8 {
    if v6 {
        Reason::icmp6_unreachable(code)
    } else {
        Reason::icmp_unreachable(code)
    }
}

/// A typical firewall reject code: host-prohibited (ICMP) or adm-prohibited (`ICMPv6`).
#[must_use]
pub fn reject_code(v6: bool) -> u8 {
    if v6 { 1 } else { 10 }
}

/// The rejection of `flow` in `shape`: a RST+ACK for TCP, an unreachable quoting the
/// (plain) request otherwise; and its reason.
#[must_use]
pub fn refusal(flow: &Flow, shape: &Shape) -> (Vec<u8>, u8) {
    match flow.kind {
        Kind::Tcp => {
            let flags = TcpFlags {
                syn: false,
                rst: true,
                ack: Some(flow.seq.wrapping_add(1)),
            };
            (flow.segment_in(flags, shape), Reason::TCP_RESET)
        }
        Kind::Dns | Kind::Echo | Kind::Ntp | Kind::Udp => {
            let code = reject_code(flow.v6);
            let error = packets::unreachable(flow.v6, code, &flow.quote(), shape);
            (error, unreachable_reason(flow.v6, code))
        }
    }
}

//! The real eBPF programs, loaded into the kernel, on crafted packets (`BPF_PROG_TEST_RUN`).
//!
//! Every test loads its own [`Probe`] so the maps start empty, runs the classifiers on frames
//! from [`netwatch_tests::packets`], and checks the kernel's tables after each run: the
//! pending requests, the per-target counters and the kernel counters ([`Change`]). Every run
//! must return -1 (`TC_ACT_UNSPEC`): the programs only observe.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use aya::programs::{ProgramError, TestRun as _, TestRunOptions};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use netwatch::{
    probe::{KernelTables as _, Probe},
    target::{Proto, Target, ip_from_key},
};
use netwatch_common::{
    EGRESS_PROGRAM, INGRESS_PROGRAM, KernelCounter,
    KernelCounter::{InvalidAnswer, UnmatchedAnswer, UnmatchedRejection},
    LATENCY_BUCKETS, PENDING_FLAG_LATE, PENDING_FLAG_REJECTED, PendingRequest, REASON_SLOTS,
    Reason, RequestKey, TargetCounters, TargetKey, latency_bucket, latency_bucket_upper_ns,
};
use netwatch_tests::packets::{
    self, ETHERNET_LEN, Ext, Flow, ICMP_LEN, Kind, Shape, TcpFlags, Transport, family,
};

/// `TC_ACT_UNSPEC`: what both programs must return on every packet.
const PASS_THROUGH: i32 = -1;
/// The timeout compiled into the programs, long enough that nothing in a test is late.
const TIMEOUT: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------
// The harness: one loaded probe, runs counted, the kernel's tables read back as a `State`.
// ---------------------------------------------------------------------------------------

struct Harness {
    name: &'static str,
    probe: Probe,
    runs: usize,
}

impl Harness {
    fn new(name: &'static str) -> Self {
        Self::with_timeout(name, TIMEOUT)
    }

    fn with_timeout(name: &'static str, timeout: Duration) -> Self {
        let probe = Probe::load(timeout)
            .unwrap_or_else(|err| panic!("{name}: loading the eBPF programs failed: {err}"));
        Self {
            name,
            probe,
            runs: 0,
        }
    }

    /// Runs `program` on `frame`: its return value, or the kernel's refusal.
    fn try_run(&mut self, program: &str, frame: &[u8]) -> Result<i32, ProgramError> {
        self.runs += 1;
        let classifier = self
            .probe
            .classifier(program)
            .unwrap_or_else(|err| panic!("{}: no {program}: {err}", self.name));
        classifier
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ..TestRunOptions::default()
            })
            .map(|result| result.return_value.cast_signed())
    }

    /// Runs `program` on `frame` (described by `what`), which must pass through.
    fn run(&mut self, program: &str, frame: &[u8], what: &str) {
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

    fn egress(&mut self, frame: &[u8], what: &str) {
        self.run(EGRESS_PROGRAM, frame, what);
    }

    fn ingress(&mut self, frame: &[u8], what: &str) {
        self.run(INGRESS_PROGRAM, frame, what);
    }

    /// Sends the request of each flow.
    fn send(&mut self, flows: &[Flow]) {
        for flow in flows {
            self.egress(&flow.request(), &format!("the request {}", flow.describe()));
        }
    }

    /// What running `act` changed in the kernel's tables.
    fn change(&mut self, act: impl FnOnce(&mut Self)) -> Change {
        let before = self.state();
        act(self);
        self.state().since(&before)
    }

    /// What one run of `program` on `frame` changed.
    fn change_by(&mut self, program: &str, frame: &[u8], what: &str) -> Change {
        self.change(|h| h.run(program, frame, what))
    }

    /// Runs `program` on `frame`, which must change exactly `expected`.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "expectations are built inline at every call"
    )]
    fn check(&mut self, program: &str, frame: &[u8], expected: Change, what: &str) {
        let change = self.change_by(program, frame, what);
        assert_eq!(change, expected, "{}: {what}", self.name);
    }

    fn state(&mut self) -> State {
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
    fn entry(&mut self, flow: &Flow) -> Option<PendingRequest> {
        let key = flow.key();
        self.keys()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, entry)| entry)
    }

    fn keys(&mut self) -> Vec<(RequestKey, PendingRequest)> {
        self.probe
            .read_pending()
            .expect("reading the pending table")
    }

    /// The counters of the target of `flow`.
    fn target(&mut self, flow: &Flow) -> TargetCounters {
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
    fn forget(&mut self, flow: &Flow) {
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

fn key_name(key: &RequestKey) -> String {
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

fn target_name(key: &TargetKey) -> String {
    Target::from_key(key).map_or_else(|| format!("{key:?}"), |target| target.to_string())
}

/// A pending entry as the tests compare it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    tcp_seq: u32,
    flags: u32,
    question: Vec<u8>,
    first_sent_ns: u64,
    last_sent_ns: u64,
    target_slot: u32,
}

impl Entry {
    fn of(request: &PendingRequest) -> Self {
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
struct Tally {
    requests: u64,
    retransmits: u64,
    answered: u64,
    rejected: u64,
    late: u64,
    untracked: u64,
    abandoned: u64,
    reasons: [u64; REASON_SLOTS],
    latency: u64,
}

impl Tally {
    fn of(counters: &TargetCounters) -> Self {
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
    fn since(&self, before: &Self, target: &str) -> Self {
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
struct State {
    pending: BTreeMap<String, Entry>,
    targets: BTreeMap<String, Tally>,
    counters: [u64; KernelCounter::COUNT],
}

impl State {
    /// What changed since `before`.
    fn since(&self, before: &Self) -> Change {
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
struct Change {
    /// New pending entries: (`tcp_seq`, flags, captured question).
    recorded: BTreeMap<String, (u32, u32, Vec<u8>)>,
    removed: BTreeSet<String>,
    /// Entries whose flags changed: before, after.
    flagged: BTreeMap<String, (u32, u32)>,
    /// Entries whose `last_sent_ns` moved (a retransmit).
    resent: BTreeSet<String>,
    /// Per-target counter increments.
    targets: BTreeMap<String, Tally>,
    /// Kernel counter increments, by name.
    counters: BTreeMap<&'static str, u64>,
}

impl Change {
    fn none() -> Self {
        Self::default()
    }

    fn count(mut self, counter: KernelCounter, n: u64) -> Self {
        *self.counters.entry(counter.name()).or_default() += n;
        self
    }

    fn tally(mut self, flow: &Flow, add: impl FnOnce(&mut Tally)) -> Self {
        add(self.targets.entry(target_name(&flow.target())).or_default());
        self
    }

    /// `flow` became pending: a new request of its target.
    fn recorded(mut self, flow: &Flow) -> Self {
        self.recorded
            .insert(key_name(&flow.key()), (flow.seq, 0, flow.question()));
        self.tally(flow, |t| t.requests += 1)
    }

    /// `flow` was sent again while pending.
    fn retransmitted(mut self, flow: &Flow) -> Self {
        self.resent.insert(key_name(&flow.key()));
        self.tally(flow, |t| t.retransmits += 1)
    }

    /// `flow` was answered in time: removed, counted, one latency sample.
    fn answered(mut self, flow: &Flow) -> Self {
        self.removed.insert(key_name(&flow.key()));
        self.tally(flow, |t| {
            t.answered += 1;
            t.latency += 1;
        })
    }

    /// `flow` was rejected in time with `reason`: it stays as a tombstone.
    fn rejected(mut self, flow: &Flow, reason: u8) -> Self {
        self.flagged
            .insert(key_name(&flow.key()), (0, PENDING_FLAG_REJECTED));
        self.tally(flow, |t| {
            t.rejected += 1;
            t.reasons[usize::from(reason)] += 1;
        })
    }

    /// An answer or rejection of `flow` came after the timeout.
    fn late(mut self, flow: &Flow) -> Self {
        self.flagged
            .insert(key_name(&flow.key()), (0, PENDING_FLAG_LATE));
        self.tally(flow, |t| t.late += 1)
    }

    /// A one-line summary: which entries were recorded, removed or flagged, and the kernel
    /// counters that moved.
    fn brief(&self) -> String {
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
    fn with_question_cut(&self, keep: usize) -> Self {
        let mut cut = self.clone();
        for (_, _, question) in cut.recorded.values_mut() {
            question.truncate(keep);
        }
        cut
    }
}

fn other(program: &str) -> &'static str {
    if program == EGRESS_PROGRAM {
        INGRESS_PROGRAM
    } else {
        EGRESS_PROGRAM
    }
}

/// Another address of this host's network, and another remote.
fn other_local(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 3))
    } else {
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 3))
    }
}

fn other_remote(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x11))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 11))
    }
}

/// The reason an unreachable of `code` should be counted under, in the flow's family.
fn unreachable_reason(v6: bool, code: u8) -> u8 {
    if v6 {
        Reason::icmp6_unreachable(code)
    } else {
        Reason::icmp_unreachable(code)
    }
}

/// A typical firewall reject code: host-prohibited (ICMP) or adm-prohibited (`ICMPv6`).
fn reject_code(v6: bool) -> u8 {
    if v6 { 1 } else { 10 }
}

/// The rejection of `flow` in `shape`: a RST+ACK for TCP, an unreachable quoting the
/// (plain) request otherwise; and its reason.
fn refusal(flow: &Flow, shape: &Shape) -> (Vec<u8>, u8) {
    match flow.kind {
        Kind::Tcp => {
            let flags = TcpFlags {
                syn: false,
                rst: true,
                ack: Some(flow.seq.wrapping_add(1)),
            };
            (flow.segment_in(flags, shape), Reason::TCP_RESET)
        }
        Kind::Dns | Kind::Echo => {
            let code = reject_code(flow.v6);
            let error = packets::unreachable(flow.v6, code, &flow.quote(), shape);
            (error, unreachable_reason(flow.v6, code))
        }
    }
}

// ---------------------------------------------------------------------------------------
// The packet builders themselves (no kernel needed).
// ---------------------------------------------------------------------------------------

/// The fixtures are what they claim: etherparse reads them back with the transport header
/// where [`Shape::l4`] says, the IP lengths match, and errors quote the request.
#[test]
fn packets_are_well_formed() {
    let shapes = [
        Shape::plain(),
        Shape::vlan(1),
        Shape::vlan(2),
        Shape::ipv4_options(10),
        Shape::ipv4_fragment(0, true),
        Shape::ipv6_chain(6),
        Shape::ipv6(&[Ext::Fragment {
            offset: 0,
            more: true,
        }]),
    ];
    for v6 in [false, true] {
        for shape in &shapes {
            for kind in Kind::ALL {
                let flow = Flow::numbered(kind, v6, 1);
                for frame in [flow.request_in(shape), flow.answer_in(shape)] {
                    let what = format!("{kind:?} {} in {shape:?}", family(v6));
                    let sliced = SlicedPacket::from_ethernet(&frame)
                        .unwrap_or_else(|err| panic!("{what}: etherparse cannot read it: {err}"));
                    let payload = match sliced.net {
                        Some(NetSlice::Ipv4(ip)) => {
                            assert!(!v6, "{what}");
                            let header = ip.header();
                            assert_eq!(
                                usize::from(header.total_len()),
                                frame.len() - shape.l3(),
                                "{what}"
                            );
                            assert_eq!(
                                usize::from(header.ihl()) * 4,
                                shape.ip_len(false),
                                "{what}"
                            );
                            ip.payload().payload.len()
                        }
                        Some(NetSlice::Ipv6(ip)) => {
                            assert!(v6, "{what}");
                            assert_eq!(
                                ip.extensions().slice().len(),
                                shape.ip_len(true) - packets::IPV6_LEN,
                                "{what}"
                            );
                            ip.payload().payload.len()
                        }
                        _ => panic!("{what}: no IP header"),
                    };
                    assert_eq!(
                        frame.len() - payload,
                        shape.l4(v6),
                        "{what}: transport offset"
                    );
                    if let Some(transport) = sliced.transport {
                        let ok = matches!(
                            (kind, transport),
                            (Kind::Tcp, TransportSlice::Tcp(_))
                                | (Kind::Dns, TransportSlice::Udp(_))
                                | (
                                    Kind::Echo,
                                    TransportSlice::Icmpv4(_) | TransportSlice::Icmpv6(_)
                                )
                        );
                        assert!(ok, "{what}: the wrong transport");
                    }
                }
            }
        }
        // Unreachables quote the request's IP packet after an 8-byte ICMP header.
        let flow = Flow::numbered(Kind::Tcp, v6, 1);
        let error = flow.unreachable(reject_code(v6));
        assert_eq!(&error[flow.l4() + ICMP_LEN..], flow.quote().as_slice());
        assert_eq!(flow.quote(), flow.request()[ETHERNET_LEN..].to_vec());

        // The one-call builders are the flows' packets.
        let (dns, echo) = (Flow::dns(v6, 30_001, 7), Flow::echo(v6, 9, 3));
        let tcp = Flow::tcp(v6, 40_001, 443, 1_000);
        let unreachable = if v6 {
            packets::icmp6_unreachable
        } else {
            packets::icmp_unreachable
        };
        let one_call = [
            (
                packets::dns_query(v6, 30_001, 7, packets::QNAME),
                dns.request(),
            ),
            (
                packets::dns_response(v6, 53, 30_001, 7, packets::QNAME),
                dns.answer(),
            ),
            (packets::syn(v6, 40_001, 443, 1_000), tcp.request()),
            (packets::syn_ack(v6, 443, 40_001, 1_001), tcp.answer()),
            (packets::rst(v6, 443, 40_001, Some(1_001)), tcp.rst()),
            (packets::echo_request(v6, 9, 3), echo.request()),
            (packets::echo_reply(v6, 9, 3), echo.answer()),
            (unreachable(3, &tcp.quote()), tcp.unreachable(3)),
        ];
        for (index, (built, expected)) in one_call.iter().enumerate() {
            assert_eq!(built, expected, "one-call builder {index} ({})", family(v6));
        }
    }
}

/// The hand-patched fixtures chain correctly: a third VLAN tag after `QinQ`, and a seventh
/// IPv6 extension header after the six etherparse writes.
#[test]
fn hand_patched_packets_chain_correctly() {
    let three = Flow::numbered(Kind::Tcp, false, 1).request_in(&Shape::vlan(3));
    let types: Vec<u16> = [12, 16, 20, 24]
        .iter()
        .map(|&at| u16::from_be_bytes([three[at], three[at + 1]]))
        .collect();
    assert_eq!(
        types,
        [0x88a8, 0x8100, 0x8100, 0x0800],
        "three tags: 802.1ad, 802.1Q, 802.1Q"
    );
    assert_eq!(
        three.len(),
        Flow::numbered(Kind::Tcp, false, 1).request().len() + 12
    );

    let seven = Shape::ipv6_chain(7);
    let frame = Flow::numbered(Kind::Dns, true, 1).request_in(&seven);
    let l3 = seven.l3();
    let payload_len = usize::from(u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]));
    assert_eq!(
        payload_len,
        frame.len() - l3 - packets::IPV6_LEN,
        "payload length covers the chain"
    );
    let (mut next, mut at, mut chain) = (frame[l3 + 6], l3 + packets::IPV6_LEN, Vec::new());
    while matches!(next, 0 | 43 | 44 | 51 | 60) {
        chain.push(next);
        let len = match next {
            44 => 8,
            51 => (usize::from(frame[at + 1]) + 2) * 4,
            _ => (usize::from(frame[at + 1]) + 1) * 8,
        };
        next = frame[at];
        at += len;
    }
    assert_eq!(
        chain,
        [0, 60, 43, 44, 51, 60, 60],
        "the seven headers, in order"
    );
    assert_eq!(
        (next, at),
        (17, seven.l4(true)),
        "then UDP where the shape says"
    );
}

// ---------------------------------------------------------------------------------------
// 1. Requests.
// ---------------------------------------------------------------------------------------

/// Four keys of [`Flow::numbered`] flows numbered 1, spelled out byte by byte: IPv4
/// addresses mapped, ports and tags as on the wire.
fn spelled_out_keys() -> [RequestKey; 4] {
    let mapped = |a: [u8; 4]| {
        [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
        ]
    };
    let dns_v4 = RequestKey {
        remote: mapped([198, 51, 100, 10]),
        local: mapped([203, 0, 113, 2]),
        remote_port: 53,
        local_port: 30_001,
        tag: 0x1001,
        proto: 17,
        direction: netwatch_common::DIRECTION_EGRESS,
    };
    let syn_v6 = RequestKey {
        remote: "2001:db8:2::10"
            .parse::<Ipv6Addr>()
            .expect("address")
            .octets(),
        local: "2001:db8:1::2"
            .parse::<Ipv6Addr>()
            .expect("address")
            .octets(),
        remote_port: 443,
        local_port: 40_001,
        tag: 0,
        proto: 6,
        direction: netwatch_common::DIRECTION_EGRESS,
    };
    let echo_v4 = RequestKey {
        remote: mapped([198, 51, 100, 10]),
        local: mapped([203, 0, 113, 2]),
        remote_port: 0,
        local_port: 0x0e01,
        tag: 2,
        proto: 1,
        direction: netwatch_common::DIRECTION_EGRESS,
    };
    let echo_v6 = RequestKey {
        proto: 58,
        ..syn_v6
    };
    let echo_v6 = RequestKey {
        remote_port: 0,
        local_port: 0x0e01,
        tag: 2,
        ..echo_v6
    };
    [dns_v4, syn_v6, echo_v4, echo_v6]
}

/// Each kind of request, IPv4 and IPv6, becomes one pending entry under its exact key;
/// sending it again is a retransmit, not a new request.
#[test]
fn requests_are_recorded_with_exact_keys_and_retransmits_counted() {
    const NAME: &str = "requests_are_recorded_with_exact_keys_and_retransmits_counted";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    let mut sent = Vec::new();
    for v6 in [false, true] {
        for kind in Kind::ALL {
            let flow = Flow::numbered(kind, v6, 1);
            let what = format!("the request {}", flow.describe());
            h.check(
                EGRESS_PROGRAM,
                &flow.request(),
                Change::none().recorded(&flow),
                &what,
            );
            let entry = h
                .entry(&flow)
                .unwrap_or_else(|| panic!("{what}: no entry under its exact key"));
            assert_eq!(entry.first_sent_ns, entry.last_sent_ns, "{what}");
            assert_ne!(entry.first_sent_ns, 0, "{what}");
            assert_eq!(entry.flags, 0, "{what}");
            assert_eq!(
                entry.tcp_seq,
                if kind == Kind::Tcp { flow.seq } else { 0 },
                "{what}"
            );
            assert_eq!(
                usize::from(entry.question_len),
                flow.question().len(),
                "{what}"
            );
            sent.push(flow);
        }
    }

    let mut keys: Vec<RequestKey> = h.keys().into_iter().map(|(key, _)| key).collect();
    for expected in spelled_out_keys() {
        assert!(
            keys.contains(&expected),
            "no pending entry under {}",
            key_name(&expected)
        );
    }
    let mut wanted: Vec<RequestKey> = sent.iter().map(Flow::key).collect();
    let order = |key: &RequestKey| key_name(key);
    keys.sort_by_key(order);
    wanted.sort_by_key(order);
    assert_eq!(keys, wanted, "exactly one entry per request");

    // The same requests again: retransmits. The first-sent time stays (State::since checks).
    for flow in &sent {
        let what = format!("the request {} again", flow.describe());
        h.check(
            EGRESS_PROGRAM,
            &flow.request(),
            Change::none().retransmitted(flow),
            &what,
        );
    }
    // A second request to each target is a new request of the same target.
    for flow in &sent {
        let second = Flow::numbered(flow.kind, flow.v6, 2);
        let what = format!("a second request {}", second.describe());
        h.check(
            EGRESS_PROGRAM,
            &second.request(),
            Change::none().recorded(&second),
            &what,
        );
        let counters = h.target(flow);
        assert_eq!(
            (counters.requests, counters.retransmits),
            (2, 1),
            "{what}: target counters"
        );
        assert_ne!(counters.last_request_ns, 0, "{what}");
        assert_eq!(
            (counters.answered, counters.rejected, counters.late),
            (0, 0, 0),
            "{what}"
        );
    }
}

/// A DNS query's question is captured as sent: the whole of a short one, the first
/// `DNS_QUESTION_CAPTURE` bytes of a long one.
#[test]
fn dns_questions_are_captured_as_sent() {
    const NAME: &str = "dns_questions_are_captured_as_sent";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for v6 in [false, true] {
        let dns = Flow::numbered(Kind::Dns, v6, 1);
        h.send(&[dns]);
        let entry = h.entry(&dns).expect("the DNS entry");
        assert_eq!(
            &entry.question[..usize::from(entry.question_len)],
            packets::dns_question(packets::QNAME).as_slice(),
            "{}",
            dns.describe()
        );
    }
    for v6 in [false, true] {
        let long = Flow::dns(v6, 31_000, 0x2222).with_qname(packets::LONG_QNAME);
        assert!(
            packets::dns_question(packets::LONG_QNAME).len()
                > netwatch_common::DNS_QUESTION_CAPTURE
        );
        let what = format!("a query for a long name {}", long.describe());
        h.check(
            EGRESS_PROGRAM,
            &long.request(),
            Change::none().recorded(&long),
            &what,
        );
        let entry = h.entry(&long).expect("the long query");
        assert_eq!(
            usize::from(entry.question_len),
            netwatch_common::DNS_QUESTION_CAPTURE,
            "{what}"
        );
        assert_eq!(
            &entry.question[..],
            &packets::dns_question(packets::LONG_QNAME)[..netwatch_common::DNS_QUESTION_CAPTURE],
            "{what}"
        );
    }
}

/// What leaves the host but is not a request (a SYN-ACK, a RST, a pure ACK, UDP to another
/// port, an echo reply, an echo request with a nonzero code) records nothing; a SYN-ACK, RST
/// or echo reply leaving answers an inbound request, here none.
#[test]
fn what_is_not_a_request_changes_nothing() {
    const NAME: &str = "what_is_not_a_request_changes_nothing";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for v6 in [false, true] {
        let tcp = Flow::numbered(Kind::Tcp, v6, 9);
        let (local, remote) = (packets::local(v6), packets::remote(v6));
        let not_requests = [
            (
                "a SYN-ACK leaving",
                tcp.with_local(remote).with_remote(local).answer(),
            ),
            (
                "a RST leaving",
                tcp.with_local(remote).with_remote(local).rst(),
            ),
            ("a pure ACK leaving", {
                let mut header = etherparse::TcpHeader::new(40_009, 443, 7, 64_240);
                header.ack = true;
                header.acknowledgment_number = 9;
                packets::frame(local, remote, &Shape::plain(), Transport::Tcp(header), &[])
            }),
            (
                "UDP to port 54",
                Flow::numbered(Kind::Dns, v6, 9)
                    .with_remote_port(54)
                    .request(),
            ),
            (
                "an echo reply leaving",
                Flow::numbered(Kind::Echo, v6, 9)
                    .with_local(remote)
                    .with_remote(local)
                    .answer(),
            ),
            ("an echo request with code 1", {
                let kind = if v6 {
                    packets::ICMPV6_ECHO_REQUEST
                } else {
                    packets::ICMP_ECHO_REQUEST
                };
                let transport = Transport::Icmp {
                    kind,
                    code: 1,
                    rest: [0x0e, 9, 0, 1],
                };
                packets::frame(
                    local,
                    remote,
                    &Shape::plain(),
                    transport,
                    packets::ECHO_PAYLOAD,
                )
            }),
        ];
        for (what, frame) in not_requests {
            let expected = match what {
                "a SYN-ACK leaving" | "an echo reply leaving" => {
                    Change::none().count(UnmatchedAnswer, 1)
                }
                "a RST leaving" => Change::none().count(UnmatchedRejection, 1),
                _ => Change::none(),
            };
            let what = format!("{what} ({})", family(v6));
            h.check(EGRESS_PROGRAM, &frame, expected, &what);
        }
    }
}

// ---------------------------------------------------------------------------------------
// 2. Answers.
// ---------------------------------------------------------------------------------------

/// A DNS response, SYN-ACK or echo reply resolves exactly its own request: that entry goes,
/// its target counts one answer and one latency sample, and a sibling stays pending.
#[test]
fn answers_resolve_exactly_their_request() {
    const NAME: &str = "answers_resolve_exactly_their_request";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for v6 in [false, true] {
        for kind in Kind::ALL {
            let flow = Flow::numbered(kind, v6, 1);
            let sibling = Flow::numbered(kind, v6, 2);
            let started = Instant::now();
            h.send(&[flow, sibling]);
            let what = format!("the answer to {}", flow.describe());
            let change = h.change_by(INGRESS_PROGRAM, &flow.answer(), &what);
            let elapsed = started.elapsed();
            assert_eq!(change, Change::none().answered(&flow), "{what}");
            assert!(
                h.entry(&sibling).is_some(),
                "{what}: the sibling {} was resolved too",
                sibling.describe()
            );

            let counters = h.target(&flow);
            assert_eq!(counters.answered, 1, "{what}");
            let buckets: Vec<usize> = (0..LATENCY_BUCKETS)
                .filter(|&b| counters.latency[b] != 0)
                .collect();
            assert_eq!(
                counters.latency.iter().sum::<u64>(),
                counters.answered,
                "{what}: latency samples"
            );
            assert_eq!(buckets.len(), 1, "{what}: one bucket");
            let wall = u64::try_from(elapsed.as_nanos()).expect("a short test");
            assert!(
                buckets[0] <= latency_bucket(wall),
                "{what}: bucket {} (< {} ns) is above the {wall} ns the exchange took",
                buckets[0],
                latency_bucket_upper_ns(buckets[0])
            );
            assert!(
                counters.last_answer_ns >= counters.last_request_ns,
                "{what}: last_answer_ns"
            );

            // The same answer again matches nothing.
            assert_eq!(
                h.change_by(INGRESS_PROGRAM, &flow.answer(), &what),
                Change::none().count(UnmatchedAnswer, 1),
                "{what}, a second time"
            );
            // The sibling's own answer resolves it.
            let what = format!("the answer to {}", sibling.describe());
            h.check(
                INGRESS_PROGRAM,
                &sibling.answer(),
                Change::none().answered(&sibling),
                &what,
            );
            let counters = h.target(&flow);
            assert_eq!((counters.requests, counters.answered), (2, 2), "{what}");
            assert_eq!(
                counters.latency.iter().sum::<u64>(),
                2,
                "{what}: latency samples"
            );
        }
        // A SYN whose sequence number wraps: the SYN-ACK acknowledges 0.
        let wrap = Flow::tcp(v6, 40_100, 443, u32::MAX);
        h.send(&[wrap]);
        let what = format!("a SYN-ACK acknowledging 0 for {}", wrap.describe());
        h.check(
            INGRESS_PROGRAM,
            &wrap.answer(),
            Change::none().answered(&wrap),
            &what,
        );
    }
    assert!(h.keys().is_empty(), "every request was answered");
}

// ---------------------------------------------------------------------------------------
// 3. Rejections.
// ---------------------------------------------------------------------------------------

/// RST+ACK and ICMP / `ICMPv6` destination unreachable quoting a pending request reject it
/// with the right reason; the entry stays as a tombstone that retransmits still find.
#[test]
fn rejections_resolve_with_their_reason() {
    const NAME: &str = "rejections_resolve_with_their_reason";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    // The names operators see, for the codes firewalls use.
    let named = [
        (false, 3, "icmp-port-unreachable"),
        (false, 10, "icmp-host-prohibited"),
        (false, 13, "icmp-admin-prohibited"),
        (true, 1, "icmp6-adm-prohibited"),
        (true, 4, "icmp6-port-unreachable"),
    ];
    for (v6, code, name) in named {
        assert_eq!(
            Reason::name(usize::from(unreachable_reason(v6, code))),
            Some(name)
        );
    }

    let mut h = Harness::new(NAME);
    for v6 in [false, true] {
        // TCP reset.
        let tcp = Flow::numbered(Kind::Tcp, v6, 1);
        h.send(&[tcp]);
        let what = format!("a RST+ACK for {}", tcp.describe());
        h.check(
            INGRESS_PROGRAM,
            &tcp.rst(),
            Change::none().rejected(&tcp, Reason::TCP_RESET),
            &what,
        );
        let entry = h.entry(&tcp).expect("the tombstone");
        assert_eq!(entry.flags, PENDING_FLAG_REJECTED, "{what}");
        let retransmit = format!("the SYN {} again after its RST", tcp.describe());
        h.check(
            EGRESS_PROGRAM,
            &tcp.request(),
            Change::none().retransmitted(&tcp),
            &retransmit,
        );
        for (late, frame) in [
            ("a SYN-ACK", tcp.answer()),
            ("another RST", tcp.rst()),
            ("an unreachable", tcp.unreachable(reject_code(v6))),
        ] {
            let what = format!("{late} for the rejected {}", tcp.describe());
            assert_eq!(
                h.change_by(INGRESS_PROGRAM, &frame, &what),
                Change::none(),
                "{what}: already settled"
            );
        }
        let counters = h.target(&tcp);
        assert_eq!((counters.rejected, counters.answered), (1, 0));
        assert_eq!(
            counters.rejected_by_reason[usize::from(Reason::TCP_RESET)],
            1
        );

        // Destination unreachable, every code, quoting each kind of request; but
        // "fragmentation needed" (IPv4 code 4), which is path-MTU discovery, not a refusal
        // (path_mtu_signals_reject_nothing).
        let codes: Vec<u8> = if v6 {
            (0..=7).chain([8, 200]).collect()
        } else {
            (0..=15)
                .filter(|&code| code != 4)
                .chain([16, 255])
                .collect()
        };
        let mut expected: BTreeMap<String, Tally> = BTreeMap::new();
        for (index, &code) in codes.iter().enumerate() {
            for kind in Kind::ALL {
                let flow = Flow::numbered(kind, v6, 100 + u16::try_from(index).expect("few codes"));
                h.send(&[flow]);
                let reason = unreachable_reason(v6, code);
                let what = format!("an unreachable code {code} quoting {}", flow.describe());
                h.check(
                    INGRESS_PROGRAM,
                    &flow.unreachable(code),
                    Change::none().rejected(&flow, reason),
                    &what,
                );
                let tally = expected.entry(target_name(&flow.target())).or_default();
                tally.rejected += 1;
                tally.reasons[usize::from(reason)] += 1;
            }
        }
        for kind in [Kind::Dns, Kind::Echo] {
            let flow = Flow::numbered(kind, v6, 100);
            let counters = h.target(&flow);
            let tally = expected[&target_name(&flow.target())];
            assert_eq!(counters.rejected, tally.rejected, "{kind:?} {}", family(v6));
            assert_eq!(
                counters.rejected_by_reason,
                tally.reasons,
                "{kind:?} {}",
                family(v6)
            );
            assert_eq!(counters.answered, 0);
        }
        let counters = h.target(&tcp);
        assert_eq!(
            counters.rejected,
            1 + u64::try_from(codes.len()).expect("few codes")
        );
    }
}

// ---------------------------------------------------------------------------------------
// 4. Spoofs.
// ---------------------------------------------------------------------------------------

/// Answers and rejections that each get one detail of a pending request wrong, with the
/// kernel counter each should move (`None`: not even looked at).
#[expect(clippy::too_many_lines, reason = "a table, one spoof per entry")]
fn spoofs(
    v6: bool,
    dns: Flow,
    tcp: Flow,
    echo: Flow,
) -> Vec<(&'static str, Vec<u8>, Option<KernelCounter>)> {
    let code = reject_code(v6);
    let no_ack = TcpFlags {
        syn: false,
        rst: true,
        ack: None,
    };
    vec![
        (
            "a DNS response with the wrong id",
            dns.with_tag(dns.tag + 1).answer(),
            Some(UnmatchedAnswer),
        ),
        (
            "a DNS response from port 5353",
            dns.with_remote_port(5353).answer(),
            None,
        ),
        (
            "a DNS response to the wrong port",
            dns.with_local_port(dns.local_port + 1).answer(),
            Some(UnmatchedAnswer),
        ),
        (
            "a DNS response from another server",
            dns.with_remote(other_remote(v6)).answer(),
            Some(UnmatchedAnswer),
        ),
        (
            "a DNS response to another address",
            dns.with_local(other_local(v6)).answer(),
            Some(UnmatchedAnswer),
        ),
        (
            "a SYN-ACK acknowledging seq",
            tcp.with_seq(tcp.seq.wrapping_sub(1)).answer(),
            Some(InvalidAnswer),
        ),
        (
            "a SYN-ACK acknowledging seq + 2",
            tcp.with_seq(tcp.seq + 1).answer(),
            Some(InvalidAnswer),
        ),
        (
            "a SYN-ACK acknowledging 0",
            tcp.with_seq(u32::MAX).answer(),
            Some(InvalidAnswer),
        ),
        (
            // A request to this host, but not to one of its addresses (none are known here).
            "a SYN (no ACK) coming in",
            tcp.segment_in(
                TcpFlags {
                    syn: true,
                    rst: false,
                    ack: None,
                },
                &Shape::plain(),
            ),
            Some(KernelCounter::NotForThisHost),
        ),
        (
            "a RST without ACK",
            tcp.segment_in(no_ack, &Shape::plain()),
            None,
        ),
        (
            "a RST+ACK acknowledging seq + 2",
            tcp.with_seq(tcp.seq + 1).rst(),
            Some(InvalidAnswer),
        ),
        (
            "a SYN-ACK to another local port",
            tcp.with_local_port(tcp.local_port + 1).answer(),
            Some(UnmatchedAnswer),
        ),
        (
            "a SYN-ACK from another remote port",
            tcp.with_remote_port(444).answer(),
            Some(UnmatchedAnswer),
        ),
        (
            "a SYN-ACK from another remote",
            tcp.with_remote(other_remote(v6)).answer(),
            Some(UnmatchedAnswer),
        ),
        (
            "a RST+ACK to another local port",
            tcp.with_local_port(tcp.local_port + 1).rst(),
            Some(UnmatchedRejection),
        ),
        (
            "a RST+ACK from another remote",
            tcp.with_remote(other_remote(v6)).rst(),
            Some(UnmatchedRejection),
        ),
        (
            "an unreachable quoting a SYN never sent",
            tcp.with_local_port(tcp.local_port + 1).unreachable(code),
            Some(UnmatchedRejection),
        ),
        (
            "an unreachable quoting a SYN to another port",
            tcp.with_remote_port(444).unreachable(code),
            Some(UnmatchedRejection),
        ),
        (
            "an unreachable quoting another DNS id",
            dns.with_tag(dns.tag + 1).unreachable(code),
            Some(UnmatchedRejection),
        ),
        (
            "an unreachable quoting another echo sequence",
            echo.with_tag(echo.tag + 1).unreachable(code),
            Some(UnmatchedRejection),
        ),
        (
            "an unreachable quoting the SYN with the wrong seq",
            tcp.with_seq(tcp.seq + 1).unreachable(code),
            Some(InvalidAnswer),
        ),
        (
            "an echo reply with the wrong sequence",
            echo.with_tag(echo.tag + 1).answer(),
            Some(UnmatchedAnswer),
        ),
        (
            "an echo reply with the wrong identifier",
            echo.with_local_port(echo.local_port + 1).answer(),
            Some(UnmatchedAnswer),
        ),
        (
            "an echo reply from another remote",
            echo.with_remote(other_remote(v6)).answer(),
            Some(UnmatchedAnswer),
        ),
        (
            "an echo request coming in with our id and sequence",
            echo.with_local(echo.remote)
                .with_remote(echo.local)
                .request(),
            Some(KernelCounter::NotForThisHost),
        ),
    ]
}

/// Answers and rejections that do not match a request exactly resolve nothing, and each
/// is counted where it belongs.
#[test]
fn spoofed_answers_never_resolve_anything() {
    const NAME: &str = "spoofed_answers_never_resolve_anything";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for v6 in [false, true] {
        let dns = Flow::numbered(Kind::Dns, v6, 1);
        let tcp = Flow::numbered(Kind::Tcp, v6, 1);
        let echo = Flow::numbered(Kind::Echo, v6, 1);
        h.send(&[dns, tcp, echo]);
        let spoofs = spoofs(v6, dns, tcp, echo);
        for (what, frame, counter) in spoofs {
            let what = format!("{what} ({})", family(v6));
            let expected =
                counter.map_or_else(Change::none, |counter| Change::none().count(counter, 1));
            h.check(INGRESS_PROGRAM, &frame, expected, &what);
        }
        for flow in [dns, tcp, echo] {
            let entry = h
                .entry(&flow)
                .unwrap_or_else(|| panic!("{} is no longer pending", flow.describe()));
            assert_eq!(entry.flags, 0, "{}", flow.describe());
            let counters = h.target(&flow);
            assert_eq!(
                (counters.answered, counters.rejected, counters.late),
                (0, 0, 0),
                "{}",
                flow.describe()
            );
        }
        // The genuine answers still resolve them: the spoofs left them intact.
        for flow in [dns, tcp, echo] {
            let what = format!("the genuine answer to {}", flow.describe());
            h.check(
                INGRESS_PROGRAM,
                &flow.answer(),
                Change::none().answered(&flow),
                &what,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// 5. QR confusion.
// ---------------------------------------------------------------------------------------

/// The QR bit, not the port, tells a DNS query from a response: a query coming in and a
/// response going out change nothing, even with the id and ports of a pending query.
#[test]
fn dns_queries_in_and_responses_out_change_nothing() {
    const NAME: &str = "dns_queries_in_and_responses_out_change_nothing";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for v6 in [false, true] {
        let dns = Flow::numbered(Kind::Dns, v6, 1);
        let (local, remote) = (packets::local(v6), packets::remote(v6));
        let serve = |from: IpAddr, to: IpAddr, source: u16, destination: u16, response: bool| {
            let message = packets::dns_message(dns.tag, response, packets::QNAME);
            packets::frame(
                from,
                to,
                &Shape::plain(),
                Transport::Udp {
                    source,
                    destination,
                },
                &message,
            )
        };
        let cases = [
            (
                "a DNS query from port 53 (QR 0) with the pending id, before the query",
                INGRESS_PROGRAM,
                dns.dns_in(false, &Shape::plain()),
            ),
            (
                "a DNS response (QR 1) leaving to port 53, before the query",
                EGRESS_PROGRAM,
                dns.dns_out(true, &Shape::plain()),
            ),
        ];
        for (what, program, frame) in &cases {
            let what = format!("{what} ({})", family(v6));
            h.check(program, frame, Change::none(), &what);
        }
        h.send(&[dns]);
        let cases = [
            (
                "a DNS query from port 53 (QR 0) with the pending id and ports",
                INGRESS_PROGRAM,
                dns.dns_in(false, &Shape::plain()),
            ),
            (
                "a DNS query to our port 53",
                INGRESS_PROGRAM,
                serve(remote, local, dns.local_port, 53, false),
            ),
            (
                "a DNS response (QR 1) leaving to port 53 with the pending id",
                EGRESS_PROGRAM,
                dns.dns_out(true, &Shape::plain()),
            ),
            (
                "a DNS response leaving from our port 53",
                EGRESS_PROGRAM,
                serve(local, remote, 53, dns.local_port, true),
            ),
        ];
        for (what, program, frame) in &cases {
            // A query to our port 53 is a request to this host; not to one of its addresses
            // here (none are known), and it records nothing.
            let expected = if what.starts_with("a DNS query to our port 53") {
                Change::none().count(KernelCounter::NotForThisHost, 1)
            } else if what.starts_with("a DNS response leaving from our port 53") {
                Change::none().count(UnmatchedAnswer, 1)
            } else {
                Change::none()
            };
            let what = format!("{what} ({})", family(v6));
            h.check(program, frame, expected, &what);
        }
        let counters = h.target(&dns);
        assert_eq!(
            (counters.requests, counters.retransmits, counters.answered),
            (1, 0, 0)
        );
        let what = format!("the genuine response to {}", dns.describe());
        h.check(
            INGRESS_PROGRAM,
            &dns.answer(),
            Change::none().answered(&dns),
            &what,
        );
    }
}

// ---------------------------------------------------------------------------------------
// 6. Truncations.
// ---------------------------------------------------------------------------------------

/// One packet kind to cut at every length.
struct Cut {
    name: String,
    program: &'static str,
    flow: Flow,
    /// Sent before every run (the request an answer or rejection is for).
    setup: Option<Vec<u8>>,
    packet: Vec<u8>,
    /// What the whole packet does.
    full: Change,
    /// The shortest cut that carries every field identifying the request.
    identified_at: usize,
    /// A packet cut from this length on, but short of its full effect, counts this once.
    short: Option<(KernelCounter, usize)>,
    /// DNS queries: where the question starts (a cut query captures what is left of it).
    question_at: Option<usize>,
}

/// The shapes every packet is cut in: plain, behind a VLAN tag (the kernel does not check
/// the IP header of those, so cuts inside it reach the programs), and with the longest IPv4
/// header (IHL 15) or a chain of six IPv6 extension headers.
fn cut_shapes(v6: bool) -> [(&'static str, Shape); 3] {
    let long = if v6 {
        ("behind six extension headers", Shape::ipv6_chain(6))
    } else {
        ("with IHL 15", Shape::ipv4_options(10))
    };
    [
        ("", Shape::plain()),
        ("behind a VLAN tag", Shape::vlan(1)),
        long,
    ]
}

fn cuts(v6: bool, label: &str, shape: &Shape) -> Vec<Cut> {
    let tagged = if label.is_empty() {
        String::new()
    } else {
        format!(" {label}")
    };
    let l4 = shape.l4(v6);
    let mut cuts = Vec::new();
    for kind in Kind::ALL {
        let flow = Flow::numbered(kind, v6, 1);
        let dns = kind == Kind::Dns;
        cuts.push(Cut {
            name: format!("the request {}{tagged}", flow.describe()),
            program: EGRESS_PROGRAM,
            flow,
            setup: None,
            packet: flow.request_in(shape),
            full: Change::none().recorded(&flow),
            identified_at: l4 + flow.identifying_len(),
            // Once the destination port says DNS, a query too short to read is malformed.
            short: dns.then_some((KernelCounter::Malformed, l4 + 4)),
            question_at: dns.then_some(l4 + packets::UDP_LEN + packets::DNS_HEADER_LEN),
        });
        cuts.push(Cut {
            name: format!("the answer to {}{tagged}", flow.describe()),
            program: INGRESS_PROGRAM,
            flow,
            setup: Some(flow.request()),
            packet: flow.answer_in(shape),
            full: Change::none().answered(&flow),
            identified_at: l4 + flow.identifying_len(),
            // Once both ports are there (one says DNS), a response too short to read is
            // malformed.
            short: dns.then_some((KernelCounter::Malformed, l4 + 4)),
            question_at: None,
        });
        let quote_at = l4 + ICMP_LEN;
        let code = reject_code(v6);
        cuts.push(Cut {
            name: format!(
                "an unreachable code {code} quoting {}{tagged}",
                flow.describe()
            ),
            program: INGRESS_PROGRAM,
            flow,
            setup: Some(flow.request()),
            packet: packets::unreachable(v6, code, &flow.quote(), shape),
            full: Change::none().rejected(&flow, unreachable_reason(v6, code)),
            identified_at: quote_at + Shape::plain().ip_len(v6) + flow.quoted_len(),
            short: Some((KernelCounter::ShortQuote, quote_at)),
            question_at: None,
        });
        if kind == Kind::Tcp {
            let (rst, _) = refusal(&flow, shape);
            cuts.push(Cut {
                name: format!("a RST+ACK for {}{tagged}", flow.describe()),
                program: INGRESS_PROGRAM,
                flow,
                setup: Some(flow.request()),
                packet: rst,
                full: Change::none().rejected(&flow, Reason::TCP_RESET),
                identified_at: l4 + flow.identifying_len(),
                short: None,
                question_at: None,
            });
        }
    }
    cuts
}

/// Which cuts the kernel refuses to run: every frame shorter than an Ethernet header and,
/// since Linux checks the IP header it reads for the test socket ("bpf: `test_run`: reject
/// short IP headers", in 6.18), an untagged IPv4 / IPv6 frame shorter than the fixed IP
/// header. Tagged frames are not checked, so cuts inside the IP header still reach the
/// programs through the VLAN cases.
#[derive(Clone, Copy, Debug)]
struct Refusals {
    short_ip_headers: bool,
}

impl Refusals {
    /// Asks the kernel: is a SYN cut inside its IPv4 header refused?
    fn probe(h: &mut Harness) -> Self {
        let syn = Flow::numbered(Kind::Tcp, false, 0).request();
        let cut = &syn[..ETHERNET_LEN + packets::IPV4_LEN - 1];
        let short_ip_headers = match h.try_run(EGRESS_PROGRAM, cut) {
            Ok(ret) => {
                assert_eq!(ret, PASS_THROUGH, "a SYN cut inside its IP header");
                false
            }
            Err(ProgramError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(libc::EINVAL) =>
            {
                true
            }
            Err(err) => panic!("a SYN cut inside its IP header: unexpected error {err:?}"),
        };
        eprintln!(
            "  this kernel refuses untagged IP frames cut inside the fixed IP header: {short_ip_headers}"
        );
        Self { short_ip_headers }
    }

    fn refused(self, v6: bool, shape: &Shape, len: usize) -> bool {
        let fixed = if v6 {
            packets::IPV6_LEN
        } else {
            packets::IPV4_LEN
        };
        len < ETHERNET_LEN
            || (self.short_ip_headers && shape.vlan_tags == 0 && len < ETHERNET_LEN + fixed)
    }
}

/// Runs `cut` cut to `len` bytes (after its setup) through its program, then through the
/// other one, which must ignore it; returns what the first run changed, or `None` when the
/// kernel refused the frame (it must, with EINVAL, exactly when `refused` says so).
fn run_cut(h: &mut Harness, cut: &Cut, len: usize, refused: bool) -> Option<Change> {
    let what = format!("{} cut to {len} of {} bytes", cut.name, cut.packet.len());
    h.forget(&cut.flow);
    if let Some(setup) = &cut.setup {
        h.egress(setup, &format!("the request before {what}"));
    }
    let frame = &cut.packet[..len];
    if refused {
        let before = h.state();
        for program in [cut.program, other(cut.program)] {
            match h.try_run(program, frame) {
                Err(ProgramError::SyscallError(err)) => assert_eq!(
                    err.io_error.raw_os_error(),
                    Some(libc::EINVAL),
                    "{what}: {program}: the kernel should refuse it with EINVAL: {err}"
                ),
                result => panic!("{what}: {program}: expected EINVAL, got {result:?}"),
            }
        }
        assert_eq!(
            h.state().since(&before),
            Change::none(),
            "{what}: refused, yet something changed"
        );
        return None;
    }
    let change = h.change_by(cut.program, frame, &what);
    // The other way, a request is one received (for an address that is not this host's)
    // and an answer one sent (answering nothing pending): neither may touch a table; a cut
    // one is as malformed (or its quote as short) either way.
    let mut ignored = h.change_by(other(cut.program), frame, &format!("{what}, the other way"));
    ignored.counters.retain(|name, _| {
        ![
            KernelCounter::NotForThisHost.name(),
            KernelCounter::Malformed.name(),
            KernelCounter::ShortQuote.name(),
            UnmatchedAnswer.name(),
            UnmatchedRejection.name(),
        ]
        .contains(name)
    });
    assert_eq!(
        ignored,
        Change::none(),
        "{what}: {} should ignore it",
        other(cut.program)
    );
    Some(change)
}

/// Every request, answer and rejection, IPv4 and IPv6, in each of [`cut_shapes`], cut at
/// every length: the kernel refuses frames shorter than Ethernet (and, untagged, than the
/// fixed IP header: see [`Refusals`]); otherwise the programs pass the packet and either do
/// nothing or exactly what the whole packet does, and only once the cut keeps every field
/// that identifies the request. The other program ignores every cut.
#[test]
fn truncated_packets_do_nothing_or_exactly_what_the_whole_does() {
    const NAME: &str = "truncated_packets_do_nothing_or_exactly_what_the_whole_does";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    let refusals = Refusals::probe(&mut h);
    for v6 in [false, true] {
        for (label, shape) in cut_shapes(v6) {
            for cut in cuts(v6, label, &shape) {
                let whole = cut.packet.len();
                let change = run_cut(&mut h, &cut, whole, false).expect("a whole frame");
                assert_eq!(change, cut.full, "{}: the whole packet", cut.name);
                // From the whole packet down: the full effect, then (once a cut does
                // nothing) never again.
                let mut full_from = whole;
                for len in (0..whole).rev() {
                    let what = format!("{} cut to {len} of {whole} bytes", cut.name);
                    let Some(change) =
                        run_cut(&mut h, &cut, len, refusals.refused(v6, &shape, len))
                    else {
                        continue;
                    };
                    let full = cut.question_at.map_or_else(
                        || cut.full.clone(),
                        |at| cut.full.with_question_cut(len.saturating_sub(at)),
                    );
                    if change == full {
                        assert_eq!(
                            full_from,
                            len + 1,
                            "{what}: the full effect, yet a longer cut did nothing"
                        );
                        full_from = len;
                        continue;
                    }
                    let nothing = match cut.short {
                        Some((counter, from)) if len >= from => Change::none().count(counter, 1),
                        _ => Change::none(),
                    };
                    assert_eq!(
                        change, nothing,
                        "{what}: neither nothing nor what the whole packet does"
                    );
                }
                assert!(
                    full_from >= cut.identified_at,
                    "{}: a cut to {full_from} bytes had the full effect, but the fields \
                     identifying the request end at {}",
                    cut.name,
                    cut.identified_at
                );
                eprintln!(
                    "  {}: full effect from {full_from} of {whole} bytes",
                    cut.name
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// 7. Header variants.
// ---------------------------------------------------------------------------------------

/// Records `flow` sent in `shape`, answers it in `shape`, then rejects a sibling with an
/// unreachable (itself in `shape`) quoting the sibling's shaped request.
fn exchange_in(h: &mut Harness, flow: Flow, sibling: Flow, shape: &Shape, label: &str) {
    let what = format!("the request {} in {label}", flow.describe());
    h.check(
        EGRESS_PROGRAM,
        &flow.request_in(shape),
        Change::none().recorded(&flow),
        &what,
    );
    let what = format!("the answer to {} in {label}", flow.describe());
    h.check(
        INGRESS_PROGRAM,
        &flow.answer_in(shape),
        Change::none().answered(&flow),
        &what,
    );

    let request = sibling.request_in(shape);
    let what = format!("the request {} in {label}", sibling.describe());
    h.check(
        EGRESS_PROGRAM,
        &request,
        Change::none().recorded(&sibling),
        &what,
    );
    let code = reject_code(sibling.v6);
    let error = packets::unreachable(sibling.v6, code, packets::ip_packet(&request), shape);
    let what = format!("an unreachable in {label} quoting {}", sibling.describe());
    h.check(
        INGRESS_PROGRAM,
        &error,
        Change::none().rejected(&sibling, unreachable_reason(sibling.v6, code)),
        &what,
    );
}

/// IPv4 headers with options (IHL 6 to 15) are skipped to the transport header, in requests,
/// answers, ICMP errors and the headers they quote.
#[test]
fn ipv4_options_are_skipped() {
    const NAME: &str = "ipv4_options_are_skipped";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for words in 1..=10u8 {
        let shape = Shape::ipv4_options(words);
        let ihl = 5 + words;
        for (index, kind) in Kind::ALL.into_iter().enumerate() {
            let n = u16::from(words) * 10 + u16::try_from(index).expect("three kinds") * 2;
            let flow = Flow::numbered(kind, false, n);
            let frame = flow.request_in(&shape);
            assert_eq!(frame[shape.l3()] & 0x0f, ihl, "the fixture's IHL");
            exchange_in(
                &mut h,
                flow,
                Flow::numbered(kind, false, n + 1),
                &shape,
                &format!("IPv4 with IHL {ihl}"),
            );
        }
    }
}

/// IPv6 extension headers are walked: hop-by-hop, routing, destination options, a first
/// fragment, authentication, and a chain of six; a seventh is one too many and counted.
#[test]
fn ipv6_extension_headers_are_walked_up_to_six() {
    const NAME: &str = "ipv6_extension_headers_are_walked_up_to_six";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    let variants = [
        ("a hop-by-hop header", Shape::ipv6(&[Ext::HopByHop])),
        ("a routing header", Shape::ipv6(&[Ext::Routing])),
        (
            "a destination options header",
            Shape::ipv6(&[Ext::DestinationOptions]),
        ),
        (
            "a first fragment header",
            Shape::ipv6(&[Ext::Fragment {
                offset: 0,
                more: true,
            }]),
        ),
        ("an authentication header", Shape::ipv6(&[Ext::Auth])),
        (
            "hop-by-hop and routing",
            Shape::ipv6(&[Ext::HopByHop, Ext::Routing]),
        ),
        ("six extension headers", Shape::ipv6_chain(6)),
    ];
    for (variant, (label, shape)) in variants.iter().enumerate() {
        for (index, kind) in Kind::ALL.into_iter().enumerate() {
            let n = u16::try_from(variant * 10 + index * 2).expect("few variants");
            exchange_in(
                &mut h,
                Flow::numbered(kind, true, n),
                Flow::numbered(kind, true, n + 1),
                shape,
                &format!("IPv6 with {label}"),
            );
        }
    }

    let seven = Shape::ipv6_chain(7);
    let limit = || Change::none().count(KernelCounter::ExtensionHeaderLimit, 1);
    for (index, kind) in Kind::ALL.into_iter().enumerate() {
        let n = 100 + u16::try_from(index).expect("three kinds") * 2;
        let flow = Flow::numbered(kind, true, n);
        let what = format!(
            "the request {} behind seven extension headers",
            flow.describe()
        );
        h.check(EGRESS_PROGRAM, &flow.request_in(&seven), limit(), &what);
        assert!(h.entry(&flow).is_none(), "{what}: recorded");

        let pending = Flow::numbered(kind, true, n + 1);
        h.send(&[pending]);
        let what = format!(
            "the answer to {} behind seven extension headers",
            pending.describe()
        );
        h.check(INGRESS_PROGRAM, &pending.answer_in(&seven), limit(), &what);
        let code = reject_code(true);
        let error = packets::unreachable(true, code, &pending.quote(), &seven);
        let what = format!(
            "an unreachable behind seven extension headers quoting {}",
            pending.describe()
        );
        h.check(INGRESS_PROGRAM, &error, limit(), &what);

        // Quoting a request behind seven headers: no rejection, the limit counted (the quote
        // is also counted short: the programs cannot tell it from a cut one).
        let hidden = pending.request_in(&seven);
        let error = packets::unreachable(true, code, packets::ip_packet(&hidden), &Shape::plain());
        let what = format!(
            "an unreachable quoting {} behind seven extension headers",
            pending.describe()
        );
        let mut change = h.change_by(INGRESS_PROGRAM, &error, &what);
        change.counters.remove(KernelCounter::ShortQuote.name());
        assert_eq!(change, limit(), "{what}");

        let entry = h.entry(&pending).expect("still pending");
        assert_eq!(entry.flags, 0, "{what}");
        let what = format!("the plain answer to {}", pending.describe());
        h.check(
            INGRESS_PROGRAM,
            &pending.answer(),
            Change::none().answered(&pending),
            &what,
        );
    }
}

/// A first fragment carries the transport header and is used; a non-first one (IPv4
/// offset, IPv6 fragment header offset) carries none and is only counted.
#[test]
fn non_first_fragments_are_counted_not_parsed() {
    const NAME: &str = "non_first_fragments_are_counted_not_parsed";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for (index, kind) in Kind::ALL.into_iter().enumerate() {
        let n = u16::try_from(index).expect("three kinds") * 2;
        exchange_in(
            &mut h,
            Flow::numbered(kind, false, n),
            Flow::numbered(kind, false, n + 1),
            &Shape::ipv4_fragment(0, true),
            "a first IPv4 fragment",
        );
        exchange_in(
            &mut h,
            Flow::numbered(kind, true, n),
            Flow::numbered(kind, true, n + 1),
            &Shape::ipv6(&[Ext::Fragment {
                offset: 0,
                more: true,
            }]),
            "a first IPv6 fragment",
        );
    }
    let fragment = || Change::none().count(KernelCounter::Fragment, 1);
    let non_first = [
        (
            false,
            "IPv4 offset 185, last",
            Shape::ipv4_fragment(185, false),
        ),
        (false, "IPv4 offset 1, more", Shape::ipv4_fragment(1, true)),
        (false, "IPv4 offset 8191", Shape::ipv4_fragment(8191, false)),
        (
            true,
            "IPv6 fragment offset 185, last",
            Shape::ipv6(&[Ext::Fragment {
                offset: 185,
                more: false,
            }]),
        ),
        (
            true,
            "IPv6 fragment offset 1, more",
            Shape::ipv6(&[Ext::Fragment {
                offset: 1,
                more: true,
            }]),
        ),
        (
            true,
            "IPv6 hop-by-hop then fragment offset 8191",
            Shape::ipv6(&[
                Ext::HopByHop,
                Ext::Fragment {
                    offset: 8191,
                    more: false,
                },
            ]),
        ),
    ];
    for (variant, (v6, label, shape)) in non_first.iter().enumerate() {
        for (index, kind) in Kind::ALL.into_iter().enumerate() {
            let n = 100 + u16::try_from(variant * 10 + index * 2).expect("few variants");
            let flow = Flow::numbered(kind, *v6, n);
            let what = format!(
                "the request {} as a non-first fragment ({label})",
                flow.describe()
            );
            h.check(EGRESS_PROGRAM, &flow.request_in(shape), fragment(), &what);

            let pending = Flow::numbered(kind, *v6, n + 1);
            h.send(&[pending]);
            let what = format!(
                "the answer to {} as a non-first fragment ({label})",
                pending.describe()
            );
            h.check(
                INGRESS_PROGRAM,
                &pending.answer_in(shape),
                fragment(),
                &what,
            );
            let code = reject_code(*v6);
            let error = packets::unreachable(*v6, code, &pending.quote(), shape);
            let what = format!(
                "an unreachable as a non-first fragment ({label}) quoting {}",
                pending.describe()
            );
            h.check(INGRESS_PROGRAM, &error, fragment(), &what);
            assert_eq!(
                h.entry(&pending).map(|e| e.flags),
                Some(0),
                "{what}: still pending"
            );
        }
    }
}

/// One 802.1Q tag and `QinQ` (802.1ad outer, 802.1Q inner) are walked; a third tag is not
/// parsed and changes nothing.
#[test]
fn vlan_tags_up_to_two_are_walked() {
    const NAME: &str = "vlan_tags_up_to_two_are_walked";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for v6 in [false, true] {
        for tags in [1u8, 2] {
            let shape = Shape::vlan(tags);
            let frame = Flow::numbered(Kind::Tcp, v6, 0).request_in(&shape);
            let outer = u16::from_be_bytes([frame[12], frame[13]]);
            assert_eq!(
                outer,
                if tags == 1 { 0x8100 } else { 0x88a8 },
                "the fixture's outer tag"
            );
            for (index, kind) in Kind::ALL.into_iter().enumerate() {
                let n = u16::from(tags) * 10 + u16::try_from(index).expect("three kinds") * 2;
                let label = format!("{tags} VLAN tag(s)");
                exchange_in(
                    &mut h,
                    Flow::numbered(kind, v6, n),
                    Flow::numbered(kind, v6, n + 1),
                    &shape,
                    &label,
                );
            }
        }
        let three = Shape::vlan(3);
        for (index, kind) in Kind::ALL.into_iter().enumerate() {
            let n = 100 + u16::try_from(index).expect("three kinds") * 2;
            let flow = Flow::numbered(kind, v6, n);
            let what = format!("the request {} behind three VLAN tags", flow.describe());
            h.check(
                EGRESS_PROGRAM,
                &flow.request_in(&three),
                Change::none(),
                &what,
            );
            let pending = Flow::numbered(kind, v6, n + 1);
            h.send(&[pending]);
            let what = format!(
                "the answer to {} behind three VLAN tags",
                pending.describe()
            );
            h.check(
                INGRESS_PROGRAM,
                &pending.answer_in(&three),
                Change::none(),
                &what,
            );
            let (tagged, _) = refusal(&pending, &three);
            let what = format!(
                "the refusal of {} behind three VLAN tags",
                pending.describe()
            );
            h.check(INGRESS_PROGRAM, &tagged, Change::none(), &what);
            assert_eq!(
                h.entry(&pending).map(|e| e.flags),
                Some(0),
                "{what}: still pending"
            );
        }
    }
}

/// `frame` (built in `shape`) with the first byte of its IP header replaced by `byte`.
fn with_ip_byte(frame: &[u8], shape: &Shape, byte: u8) -> Vec<u8> {
    let mut frame = frame.to_vec();
    frame[shape.l3()] = byte;
    frame
}

/// IP headers the kernel's own receive path drops (`ip_rcv_core`: IHL below 5 or version
/// not 4; `ip6_rcv_core`: version not 6) are not parsed: no request recorded, no answer
/// or rejection counted. The IPv4 parser checks both; see the report for IPv6.
#[test]
fn ip_headers_with_a_wrong_version_or_length_are_ignored() {
    const NAME: &str = "ip_headers_with_a_wrong_version_or_length_are_ignored";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    let plain = Shape::plain();
    let mut wrong = Vec::new();
    for v6 in [false, true] {
        // First bytes of the IP header: version and IHL (IPv4), version and the top of the
        // traffic class (IPv6, whose traffic class is 0 here).
        let bytes: Vec<(u8, String)> = if v6 {
            [0x40, 0x00, 0xf0]
                .iter()
                .map(|&b| (b, format!("version {}", b >> 4)))
                .collect()
        } else {
            (0x40..=0x44)
                .map(|b| (b, format!("IHL {}", b & 0x0f)))
                .chain([(0x65, "version 6".to_owned())])
                .collect()
        };
        for (index, (byte, label)) in bytes.iter().enumerate() {
            for (k, kind) in Kind::ALL.into_iter().enumerate() {
                let n = u16::try_from(index * 10 + k * 2).expect("few variants");
                let flow = Flow::numbered(kind, v6, n);
                let pending = Flow::numbered(kind, v6, n + 1);
                h.send(&[pending]);
                let (refusal, _) = refusal(&pending, &plain);
                let cases = [
                    (
                        EGRESS_PROGRAM,
                        "the request",
                        flow,
                        with_ip_byte(&flow.request(), &plain, *byte),
                    ),
                    (
                        INGRESS_PROGRAM,
                        "the answer to",
                        pending,
                        with_ip_byte(&pending.answer(), &plain, *byte),
                    ),
                    (
                        INGRESS_PROGRAM,
                        "the refusal of",
                        pending,
                        with_ip_byte(&refusal, &plain, *byte),
                    ),
                ];
                for (program, what, flow, frame) in cases {
                    let what = format!("{what} {} with {label}", flow.describe());
                    let change = h.change_by(program, &frame, &what);
                    if change != Change::none() {
                        wrong.push(format!("{what}: {}", change.brief()));
                        // Put the request back for the next case.
                        h.forget(&flow);
                        if program == INGRESS_PROGRAM {
                            h.send(&[flow]);
                        }
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} packets with an IP header the kernel drops were parsed anyway:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// 8. ICMP errors quoting too little, or someone else.
// ---------------------------------------------------------------------------------------

/// An ICMP error whose quote stops inside the inner IP header, inside the inner transport
/// header, or (DNS) right after the UDP header identifies nothing: no rejection, counted as
/// a short quote. One quoting another host's or another remote's packet matches nothing.
#[test]
fn icmp_errors_quoting_too_little_or_someone_else_reject_nothing() {
    const NAME: &str = "icmp_errors_quoting_too_little_or_someone_else_reject_nothing";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for v6 in [false, true] {
        let code = reject_code(v6);
        let ip_len = Shape::plain().ip_len(v6);
        for kind in Kind::ALL {
            let flow = Flow::numbered(kind, v6, 1);
            h.send(&[flow]);
            let quote = flow.quote();
            let mut lengths = vec![
                0,
                1,
                ip_len / 2,
                ip_len - 1,
                ip_len,
                ip_len + 4,
                ip_len + flow.quoted_len() - 1,
            ];
            if kind == Kind::Dns {
                // The UDP header and nothing of the DNS message.
                lengths.push(ip_len + packets::UDP_LEN);
            }
            for len in lengths {
                let error = packets::unreachable(v6, code, &quote[..len], &Shape::plain());
                let what = format!("an unreachable quoting {len} bytes of {}", flow.describe());
                h.check(
                    INGRESS_PROGRAM,
                    &error,
                    Change::none().count(KernelCounter::ShortQuote, 1),
                    &what,
                );
            }
            let strangers = [
                ("another host's", flow.with_local(other_local(v6))),
                ("another remote's", flow.with_remote(other_remote(v6))),
            ];
            for (whose, stranger) in strangers {
                let what = format!("an unreachable quoting {whose} {}", stranger.describe());
                h.check(
                    INGRESS_PROGRAM,
                    &stranger.unreachable(code),
                    Change::none().count(UnmatchedRejection, 1),
                    &what,
                );
            }
            assert_eq!(
                h.entry(&flow).map(|e| e.flags),
                Some(0),
                "{}: still pending",
                flow.describe()
            );
            let what = format!("an unreachable quoting all of {}", flow.describe());
            h.check(
                INGRESS_PROGRAM,
                &flow.unreachable(code),
                Change::none().rejected(&flow, unreachable_reason(v6, code)),
                &what,
            );
        }
        // Quotes of packets that were never requests: nothing at all.
        let (local, remote) = (packets::local(v6), packets::remote(v6));
        let ntp = Flow::numbered(Kind::Dns, v6, 5).with_remote_port(123);
        let reply_kind = if v6 {
            packets::ICMPV6_ECHO_REPLY
        } else {
            packets::ICMP_ECHO_REPLY
        };
        let our_reply = packets::frame(
            local,
            remote,
            &Shape::plain(),
            Transport::Icmp {
                kind: reply_kind,
                code: 0,
                rest: [0x0e, 5, 0, 6],
            },
            packets::ECHO_PAYLOAD,
        );
        for (what, quoted) in [
            ("UDP to port 123", ntp.quote()),
            (
                "an echo reply we sent",
                packets::ip_packet(&our_reply).to_vec(),
            ),
        ] {
            let what = format!("an unreachable quoting {what} ({})", family(v6));
            let error = packets::unreachable(v6, code, &quoted, &Shape::plain());
            h.check(INGRESS_PROGRAM, &error, Change::none(), &what);
        }
    }
}

// ---------------------------------------------------------------------------------------
// 9. Late answers.
// ---------------------------------------------------------------------------------------

/// An answer or rejection after the timeout resolves nothing: it is counted late once, and
/// the entry stays, flagged, so retransmits are still recognised.
#[test]
fn answers_after_the_timeout_are_late() {
    const NAME: &str = "answers_after_the_timeout_are_late";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::with_timeout(NAME, Duration::from_millis(10));
    let mut pairs = Vec::new();
    for v6 in [false, true] {
        for kind in Kind::ALL {
            let answered = Flow::numbered(kind, v6, 1);
            let refused = Flow::numbered(kind, v6, 2);
            h.send(&[answered, refused]);
            pairs.push((answered, refused));
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    for (answered, refused) in pairs {
        let what = format!("the answer to {} after the timeout", answered.describe());
        h.check(
            INGRESS_PROGRAM,
            &answered.answer(),
            // A late answer keeps its latency: the report says how slow the remote is.
            Change::none()
                .late(&answered)
                .tally(&answered, |t| t.latency += 1),
            &what,
        );
        assert_eq!(
            h.change_by(INGRESS_PROGRAM, &answered.answer(), &what),
            Change::none().count(KernelCounter::LateDuplicate, 1),
            "{what}, again: counted once, as a duplicate"
        );
        let entry = h
            .entry(&answered)
            .unwrap_or_else(|| panic!("{what}: the entry went"));
        assert_eq!(entry.flags & PENDING_FLAG_LATE, PENDING_FLAG_LATE, "{what}");

        let (frame, reason) = refusal(&refused, &Shape::plain());
        let what = format!("the refusal of {} after the timeout", refused.describe());
        h.check(
            INGRESS_PROGRAM,
            &frame,
            // Late, and a refusal still: its reason counts (not `rejected`, which is in time).
            Change::none()
                .late(&refused)
                .tally(&refused, |t| t.reasons[usize::from(reason)] += 1),
            &what,
        );
        assert_eq!(h.target(&refused).late_rejected, 1, "{what}");
        assert_eq!(
            h.entry(&refused).map(|e| e.flags),
            Some(PENDING_FLAG_LATE),
            "{what}"
        );

        let what = format!(
            "the request {} again after its late answer",
            answered.describe()
        );
        h.check(
            EGRESS_PROGRAM,
            &answered.request(),
            Change::none().retransmitted(&answered),
            &what,
        );

        let counters = h.target(&answered);
        assert_eq!(
            (
                counters.requests,
                counters.answered,
                counters.rejected,
                counters.late
            ),
            (2, 0, 0, 2),
            "{}: target counters",
            answered.describe()
        );
        assert_eq!(
            counters.latency.iter().sum::<u64>(),
            1,
            "the late answer has a latency sample, the late refusal none"
        );
    }
}

/// The original example, kept: a SYN, then its SYN-ACK, with etherparse directly.
#[test]
fn syn_then_syn_ack_is_answered() {
    if !netwatch_tests::prerequisites("syn_then_syn_ack_is_answered", &[]) {
        return;
    }
    let mut h = Harness::new("syn_then_syn_ack_is_answered");
    let mut syn = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4([203, 0, 113, 2], [198, 51, 100, 10], 64)
        .tcp(40000, 443, 1000, 64240)
        .syn()
        .write(&mut syn, &[])
        .expect("build the SYN");
    h.egress(&syn, "a SYN");
    assert_eq!(h.keys().len(), 1);
    let mut syn_ack = Vec::new();
    PacketBuilder::ethernet2([4; 6], [2; 6])
        .ipv4([198, 51, 100, 10], [203, 0, 113, 2], 64)
        .tcp(443, 40000, 5000, 64240)
        .syn()
        .ack(1001)
        .write(&mut syn_ack, &[])
        .expect("build the SYN-ACK");
    h.ingress(&syn_ack, "its SYN-ACK");
    assert_eq!(h.keys().len(), 0);
    assert_eq!(h.target(&Flow::tcp(false, 40000, 443, 1000)).answered, 1);
}

/// A SYN with a new initial sequence number on a 4-tuple the table still remembers (here as
/// the tombstone of a reset connection) is a new connection: a new request, not a
/// retransmit. Linux reuses a source port right after a reset.
#[test]
fn a_new_connection_on_a_remembered_four_tuple_is_a_new_request() {
    const NAME: &str = "a_new_connection_on_a_remembered_four_tuple_is_a_new_request";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    let segment = |outbound: bool, seq: u32, ack: Option<u32>, rst: bool| {
        let (src, dst) = if outbound {
            ([203, 0, 113, 2], [198, 51, 100, 10])
        } else {
            ([198, 51, 100, 10], [203, 0, 113, 2])
        };
        let (sport, dport) = if outbound {
            (40000, 9000)
        } else {
            (9000, 40000)
        };
        let mut frame = Vec::new();
        let builder = PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(src, dst, 64)
            .tcp(sport, dport, seq, 64240);
        let builder = match (ack, rst) {
            (Some(ack), true) => builder.rst().ack(ack),
            (Some(ack), false) => builder.syn().ack(ack),
            (None, _) => builder.syn(),
        };
        builder.write(&mut frame, &[]).expect("build the segment");
        frame
    };
    let flow = Flow::tcp(false, 40000, 9000, 1000);
    h.egress(&segment(true, 1000, None, false), "a SYN");
    h.ingress(&segment(false, 0, Some(1001), true), "its RST");
    h.egress(&segment(true, 1000, None, false), "the SYN again");
    let counters = h.target(&flow);
    assert_eq!(
        (counters.requests, counters.retransmits, counters.rejected),
        (1, 1, 1),
        "a retransmit of the rejected request"
    );
    h.egress(
        &segment(true, 7000, None, false),
        "a new SYN, new ISN, same 4-tuple",
    );
    let counters = h.target(&flow);
    assert_eq!(
        (counters.requests, counters.retransmits),
        (2, 1),
        "a new request"
    );
    let entry = h.entry(&flow).expect("the new request is pending");
    assert_eq!(
        (entry.tcp_seq, entry.flags),
        (7000, 0),
        "in flight, not a tombstone"
    );
    h.ingress(&segment(false, 5000, Some(7001), false), "its SYN-ACK");
    assert_eq!(
        h.target(&flow).answered,
        1,
        "the new connection is answered"
    );
    assert!(h.entry(&flow).is_none());
}

/// A frame from this host with the given destination MAC and addresses, carrying `transport`
/// and `payload` (for requests to broadcast and multicast destinations).
fn request_to(
    destination_mac: [u8; 6],
    destination: IpAddr,
    transport: Transport,
    payload: &[u8],
) -> Vec<u8> {
    let mut frame = packets::frame(
        packets::local(destination.is_ipv6()),
        destination,
        &Shape::plain(),
        transport,
        payload,
    );
    frame[..6].copy_from_slice(&destination_mac);
    frame
}

/// TCP Fast Open (RFC 7413): the SYN carries data and a server that takes it acknowledges
/// it in the SYN-ACK (ISN + 1 + length); one that does not acknowledges only the SYN. Both
/// answer the request; anything past the data does not.
#[test]
fn fast_open_syn_acks_acknowledging_the_data_answer_the_syn() {
    const NAME: &str = "fast_open_syn_acks_acknowledging_the_data_answer_the_syn";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    let data = [0x47u8; 100];
    for v6 in [false, true] {
        for (port, ack_past_isn, answers) in [
            (41_000, 101, true),  // the data taken
            (41_001, 1, true),    // the data refused, the SYN answered
            (41_002, 51, true),   // part of it (a server may take less)
            (41_003, 102, false), // past what was sent: not ours
        ] {
            let flow = Flow::tcp(v6, port, 80, 1000);
            let mut header = etherparse::TcpHeader::new(port, 80, 1000, 64240);
            header.syn = true;
            let syn = packets::frame(
                packets::local(v6),
                packets::remote(v6),
                &Shape::plain(),
                Transport::Tcp(header),
                &data,
            );
            h.egress(
                &syn,
                &format!("a Fast Open SYN with 100 bytes, {}", flow.describe()),
            );
            assert_eq!(
                h.entry(&flow).map(|e| e.syn_payload_len),
                Some(100),
                "{}: the SYN's data length is kept",
                flow.describe()
            );
            let syn_ack = packets::syn_ack(v6, 80, port, 1000 + ack_past_isn);
            let what = format!(
                "a SYN-ACK acking ISN+{ack_past_isn} for {}",
                flow.describe()
            );
            let expected = if answers {
                Change::none().answered(&flow)
            } else {
                Change::none().count(InvalidAnswer, 1)
            };
            h.check(INGRESS_PROGRAM, &syn_ack, expected, &what);
        }
        // A reset acknowledging the data rejects the SYN.
        let flow = Flow::tcp(v6, 41_010, 9000, 1000);
        let mut header = etherparse::TcpHeader::new(41_010, 9000, 1000, 64240);
        header.syn = true;
        let syn = packets::frame(
            packets::local(v6),
            packets::remote(v6),
            &Shape::plain(),
            Transport::Tcp(header),
            &data[..40],
        );
        h.egress(&syn, "a Fast Open SYN with 40 bytes");
        h.check(
            INGRESS_PROGRAM,
            &packets::rst(v6, 9000, 41_010, Some(1041)),
            Change::none().rejected(&flow, Reason::TCP_RESET),
            "a RST acknowledging the SYN's data",
        );
    }
}

/// Broadcast and multicast destinations are answered by others, from their own addresses:
/// never a request to a target, counted `not_unicast`.
#[test]
fn broadcast_and_multicast_requests_are_not_requests() {
    const NAME: &str = "broadcast_and_multicast_requests_are_not_requests";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    let echo = Transport::Icmp {
        kind: packets::ICMP_ECHO_REQUEST,
        code: 0,
        rest: [0, 1, 0, 1],
    };
    let echo6 = Transport::Icmp {
        kind: packets::ICMPV6_ECHO_REQUEST,
        code: 0,
        rest: [0, 1, 0, 1],
    };
    let dns = Transport::Udp {
        source: 40_000,
        destination: 53,
    };
    let query = packets::dns_message(7, false, packets::QNAME);
    let broadcast_mac = [0xff; 6];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "ping -b to the subnet's directed broadcast",
            request_to(
                broadcast_mac,
                IpAddr::V4(Ipv4Addr::new(203, 0, 113, 255)),
                echo.clone(),
                packets::ECHO_PAYLOAD,
            ),
        ),
        (
            "ping to the limited broadcast",
            request_to(
                broadcast_mac,
                IpAddr::V4(Ipv4Addr::BROADCAST),
                echo.clone(),
                packets::ECHO_PAYLOAD,
            ),
        ),
        (
            "a DNS query to the limited broadcast",
            request_to(
                broadcast_mac,
                IpAddr::V4(Ipv4Addr::BROADCAST),
                dns.clone(),
                &query,
            ),
        ),
        (
            "ping to 224.0.0.1",
            request_to(
                [0x01, 0x00, 0x5e, 0, 0, 1],
                IpAddr::V4(Ipv4Addr::new(224, 0, 0, 1)),
                echo.clone(),
                packets::ECHO_PAYLOAD,
            ),
        ),
        (
            "ping to a multicast group, unicast MAC (a misbehaving driver)",
            request_to(
                packets::GATEWAY_MAC,
                IpAddr::V4(Ipv4Addr::new(239, 1, 2, 3)),
                echo,
                packets::ECHO_PAYLOAD,
            ),
        ),
        (
            "ping ff02::1",
            request_to(
                [0x33, 0x33, 0, 0, 0, 1],
                IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1)),
                echo6.clone(),
                packets::ECHO_PAYLOAD,
            ),
        ),
        (
            "a DNS query to ff02::fb, unicast MAC",
            request_to(
                packets::GATEWAY_MAC,
                IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb)),
                dns,
                &query,
            ),
        ),
    ];
    for (what, frame) in cases {
        h.check(
            EGRESS_PROGRAM,
            &frame,
            Change::none().count(KernelCounter::NotUnicast, 1),
            what,
        );
    }
    // A unicast address behind a unicast MAC is a request, as ever.
    let flow = Flow::echo(false, 1, 1);
    h.check(
        EGRESS_PROGRAM,
        &flow.request(),
        Change::none().recorded(&flow),
        "ping to a unicast address",
    );
}

/// A forwarder with a fixed source port reuses (port, id) for other names: a new question
/// is a new request, not a retransmit; the same question again is a retransmit.
#[test]
fn a_new_question_on_a_reused_port_and_id_is_a_new_request() {
    const NAME: &str = "a_new_question_on_a_reused_port_and_id_is_a_new_request";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for v6 in [false, true] {
        let first = Flow::dns(v6, 5353, 7).with_qname("first.example");
        let second = Flow::dns(v6, 5353, 7).with_qname("second.example");
        h.check(
            EGRESS_PROGRAM,
            &first.request(),
            Change::none().recorded(&first),
            "a query",
        );
        h.check(
            EGRESS_PROGRAM,
            &first.request(),
            Change::none().retransmitted(&first),
            "the same query again",
        );
        // The entry is replaced (Harness::change would call that a rewrite): compare the
        // counters by hand.
        let before = h.target(&second);
        let abandoned_before = h.state().counters[KernelCounter::Abandoned as usize];
        h.egress(&second.request(), "another name, same port and id");
        let after = h.target(&second);
        assert_eq!(
            (
                after.requests - before.requests,
                after.retransmits - before.retransmits,
                after.abandoned - before.abandoned,
            ),
            (1, 0, 1),
            "{}: a new request; the first query, still in flight, given up",
            family(v6)
        );
        assert_eq!(
            h.state().counters[KernelCounter::Abandoned as usize] - abandoned_before,
            1
        );
        let entry = h.entry(&second).expect("the new question is pending");
        assert_eq!(
            entry.question[..usize::from(entry.question_len)],
            second.question()[..],
            "{}: the entry holds the new question",
            family(v6)
        );
        h.check(
            INGRESS_PROGRAM,
            &second.answer(),
            Change::none().answered(&second),
            "the answer",
        );
    }
}

/// A request replaced after its deadline was unanswered: the new entry carries its send
/// time for userspace to count, and it is not `abandoned`.
#[test]
fn a_request_replaced_after_its_deadline_is_handed_to_userspace() {
    const NAME: &str = "a_request_replaced_after_its_deadline_is_handed_to_userspace";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::with_timeout(NAME, Duration::from_millis(10));
    let old = Flow::tcp(false, 42_000, 5432, 1000);
    h.send(&[old]);
    let sent = h.entry(&old).expect("pending").first_sent_ns;
    let deadline = Instant::now() + Duration::from_millis(30);
    while Instant::now() < deadline {
        std::thread::yield_now();
    }
    let new = Flow::tcp(false, 42_000, 5432, 9000);
    h.send(&[new]);
    let entry = h.entry(&new).expect("the new connection is pending");
    assert_eq!((entry.tcp_seq, entry.replaced_first_sent_ns), (9000, sent));
    let counters = h.target(&new);
    assert_eq!((counters.requests, counters.abandoned), (2, 0));
}

/// "Fragmentation needed" and "packet too big" are path-MTU discovery at work: the sender
/// retries smaller. They reject nothing.
#[test]
fn path_mtu_signals_reject_nothing() {
    const NAME: &str = "path_mtu_signals_reject_nothing";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for v6 in [false, true] {
        let flow = Flow::tcp(v6, 43_000, 443, 1000);
        h.send(&[flow]);
        let request = flow.request();
        let quoted = packets::ip_packet(&request);
        let signal = if v6 {
            packets::frame(
                packets::router(true),
                packets::local(true),
                &Shape::plain(),
                Transport::Icmp {
                    kind: 2,
                    code: 0,
                    rest: 1280u32.to_be_bytes(),
                },
                quoted,
            )
        } else {
            packets::frame(
                packets::router(false),
                packets::local(false),
                &Shape::plain(),
                Transport::Icmp {
                    kind: packets::ICMP_DEST_UNREACHABLE,
                    code: 4,
                    rest: [0, 0, 0x05, 0xdc],
                },
                quoted,
            )
        };
        h.check(
            INGRESS_PROGRAM,
            &signal,
            Change::none().count(KernelCounter::PathMtu, 1),
            &format!("{} path-MTU signal quoting our SYN", family(v6)),
        );
    }
}

/// Requests this host receives, for one of its addresses, and what it sends back: a SYN in
/// and its SYN-ACK or RST out, a query to port 53 and its response or port unreachable, an
/// echo request and its reply. Keyed with direction ingress; the target is the peer and this
/// host's port asked for.
#[test]
fn requests_received_are_settled_by_what_this_host_sends_back() {
    const NAME: &str = "requests_received_are_settled_by_what_this_host_sends_back";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    h.probe
        .set_local_addresses([packets::local(false), packets::local(true)])
        .expect("local addresses");
    let inbound_target = |flow: &Flow, port: u16| TargetKey {
        remote: netwatch::target::ip_to_key(flow.local),
        remote_port: port,
        proto: flow.key().proto,
        direction: netwatch_common::DIRECTION_INGRESS,
    };
    let target = |h: &mut Harness, key: &TargetKey| {
        let mut found = None;
        h.probe
            .read_targets(&mut |k, counters| {
                if k == key {
                    found = Some(*counters);
                }
            })
            .expect("targets");
        found.unwrap_or_else(|| panic!("no target {}", target_name(key)))
    };
    for v6 in [false, true] {
        let (us, peer) = (packets::local(v6), packets::remote(v6));
        // Flows written from the peer's side: its request goes to us.
        let answered = Flow::tcp(v6, 51_000, 443, 7_000)
            .with_local(peer)
            .with_remote(us);
        let reset = Flow::tcp(v6, 51_001, 9_000, 8_000)
            .with_local(peer)
            .with_remote(us);
        h.egress(
            &answered.request(),
            "a SYN leaving towards this host: not ours",
        );
        h.ingress(&answered.request(), "a SYN to this host's port 443");
        h.ingress(&reset.request(), "a SYN to this host's port 9000");
        h.ingress(&answered.request(), "the first SYN again");
        let syn_ack = answered.answer();
        h.egress(&syn_ack, "this host's SYN-ACK");
        h.egress(&reset.rst(), "this host's RST");
        let web = target(&mut h, &inbound_target(&answered, 443));
        assert_eq!(
            (web.requests, web.retransmits, web.answered, web.rejected),
            (1, 1, 1, 0),
            "{}: tcp/443 asked of this host, answered",
            family(v6)
        );
        let closed = target(&mut h, &inbound_target(&reset, 9_000));
        assert_eq!(
            (closed.requests, closed.rejected),
            (1, 1),
            "{}: tcp/9000 refused with a reset",
            family(v6)
        );
        assert_eq!(closed.rejected_by_reason[usize::from(Reason::TCP_RESET)], 1);

        // A query to our port 53, answered; another refused with port unreachable.
        let query = Flow::dns(v6, 53, 0x4242)
            .with_local(peer)
            .with_remote(us)
            .with_remote_port(53);
        h.ingress(&query.request(), "a DNS query to this host");
        h.egress(&query.answer(), "this host's response");
        let refused = Flow::dns(v6, 40_053, 0x4343)
            .with_local(peer)
            .with_remote(us);
        h.ingress(&refused.request(), "a DNS query to this host, no server");
        let code = if v6 { 4 } else { 3 };
        let unreachable = packets::frame(
            us,
            peer,
            &Shape::plain(),
            Transport::Icmp {
                kind: if v6 {
                    packets::ICMPV6_DEST_UNREACHABLE
                } else {
                    packets::ICMP_DEST_UNREACHABLE
                },
                code,
                rest: [0; 4],
            },
            &refused.quote(),
        );
        h.egress(&unreachable, "this host's port unreachable");
        let dns = target(&mut h, &inbound_target(&query, 53));
        assert_eq!(
            (dns.requests, dns.answered, dns.rejected),
            (2, 1, 1),
            "{}: udp/53 asked of this host",
            family(v6)
        );
        assert_eq!(
            dns.rejected_by_reason[usize::from(unreachable_reason(v6, code))],
            1
        );

        // An echo request and its reply.
        let ping = Flow::echo(v6, 0x0e0e, 3).with_local(peer).with_remote(us);
        h.ingress(&ping.request(), "an echo request to this host");
        h.egress(&ping.answer(), "this host's echo reply");
        let echo = target(&mut h, &inbound_target(&ping, 0));
        assert_eq!(
            (echo.requests, echo.answered),
            (1, 1),
            "{}: echo asked of this host",
            family(v6)
        );
    }
    // Nothing is left in flight: every request received was settled.
    let inbound: Vec<_> = h
        .keys()
        .into_iter()
        .filter(|(key, entry)| {
            key.direction == netwatch_common::DIRECTION_INGRESS
                && entry.flags & PENDING_FLAG_REJECTED == 0
        })
        .collect();
    assert!(inbound.is_empty(), "still pending: {inbound:?}");
}

/// The next-slot hint is a plain store from every CPU: two claims racing can leave it below
/// slots already claimed. Every claimed slot's counters must still be read, or a target's
/// answers go unseen (requests seen, answers never: a false blackholed).
#[test]
fn targets_claimed_past_a_rewound_slot_hint_are_still_read() {
    const NAME: &str = "targets_claimed_past_a_rewound_slot_hint_are_still_read";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    let flows: Vec<Flow> = (0..5)
        .map(|n| {
            let remote = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 100 + n));
            Flow::numbered(Kind::Tcp, false, 1).with_remote(remote)
        })
        .collect();
    // Five new targets (slots 0 to 4, hint 5), answered, before userspace reads anything.
    for flow in &flows {
        h.egress(&flow.request(), "a SYN to a new target");
        h.ingress(&flow.answer(), "its SYN-ACK");
    }
    h.probe
        .rewind_slot_hint_for_tests(1)
        .expect("rewind the hint");
    for flow in &flows {
        let counters = h.target(flow);
        assert_eq!(
            (counters.requests, counters.answered),
            (1, 1),
            "{}: claimed past the hint, read all the same",
            flow.describe()
        );
    }
}

/// The sweep reads a tombstone, the kernel replaces it with a new request (a new connection
/// on that exact 4-tuple), then the sweep removes what it read: the new request must stay.
#[test]
fn removing_what_a_sweep_read_spares_a_request_the_kernel_put_there_since() {
    const NAME: &str = "removing_what_a_sweep_read_spares_a_request_the_kernel_put_there_since";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for v6 in [false, true] {
        let old = Flow::tcp(v6, 44_000, 5432, 1_000);
        h.send(&[old]);
        let read = h.entry(&old).expect("pending").first_sent_ns;
        let new = Flow::tcp(v6, 44_000, 5432, 9_000);
        h.send(&[new]);
        h.probe
            .remove_pending_all(&[(old.key(), read)])
            .expect("remove");
        let entry = h
            .entry(&new)
            .unwrap_or_else(|| panic!("{}: the new request was removed with the old", family(v6)));
        assert_eq!(entry.tcp_seq, 9_000, "{}", family(v6));
        // What the sweep read and nothing replaced goes.
        h.probe
            .remove_pending_all(&[(new.key(), entry.first_sent_ns)])
            .expect("remove");
        assert!(h.entry(&new).is_none(), "{}: removed", family(v6));
    }
}

/// The socket owner programs (issue 13) load on this kernel, attach to the cgroup2 root, let
/// `connect()` through, and record this process as the connected socket's owner under the
/// socket's cookie; a release stamps it.
#[test]
fn socket_owner_programs_record_who_connected() {
    const NAME: &str = "socket_owner_programs_record_who_connected";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
    let cgroup2 = netwatch::attribution::host::cgroup2_mount(&mounts)
        .expect("a cgroup2 mount (the VM runner mounts one too)");
    let mut probe = Probe::load(TIMEOUT).expect("loading the programs");
    probe
        .attach_owners(Some(&cgroup2))
        .unwrap_or_else(|why| panic!("the socket owner programs: {why}"));
    assert_eq!(probe.attribution_status(), "available");
    let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    socket
        .connect((Ipv4Addr::LOCALHOST, 9))
        .expect("connect() let through");
    let cookie = socket_cookie(&socket);
    let owner = probe
        .socket_owner(cookie)
        .expect("connect4 recorded the owner");
    assert_eq!(owner.tgid, std::process::id(), "{owner:?}");
    assert_ne!(owner.cgroup_id, 0, "{owner:?}");
    assert_eq!(owner.released_ns, 0, "still open: {owner:?}");
    drop(socket);
    let released = probe.socket_owner(cookie).expect("kept after release");
    assert_ne!(
        released.released_ns, 0,
        "sock_release stamped it: {released:?}"
    );
}

/// `SO_COOKIE`: the socket's cookie, as the programs see it.
fn socket_cookie(socket: &std::net::UdpSocket) -> u64 {
    use std::os::fd::AsRawFd as _;
    const SO_COOKIE: libc::c_int = 57;
    let mut cookie: u64 = 0;
    let mut length = libc::socklen_t::try_from(size_of::<u64>()).expect("8");
    // SAFETY: getsockopt(2) on a live socket into a u64 of the length given.
    let got = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut length,
        )
    };
    assert_eq!(got, 0, "SO_COOKIE: {}", std::io::Error::last_os_error());
    cookie
}

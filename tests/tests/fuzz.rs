//! A million random packets (seeded; the seed is printed) through the real programs with
//! `BPF_PROG_TEST_RUN`: random bytes, and random bytes behind valid Ethernet / VLAN / IPv4
//! (with options) / IPv6 (with extension headers) / TCP / UDP-53 / ICMP / `ICMPv6` headers,
//! header fields mutated, frames cut short.
//!
//! 1. Ingress alone, table empty: nothing can be an answer, so nothing is answered,
//!    rejected or late, and no target appears.
//! 2. Egress alone: the programs and a plain reference parser of the documented rules
//!    (`oracle_request`) agree on every frame: every pending entry is a request the
//!    reference found in a frame sent, and requests + retransmits equal its count.
//! 3. Ingress again, the table now full of requests: random answers settle nothing.
//! 4. A positive control: a real answer to a pending request is counted, so the reading
//!    above could see one.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use aya::programs::ProgramError;
use netwatch::probe::{KernelTables as _, Probe};
use netwatch_common::{
    EGRESS_PROGRAM, INGRESS_PROGRAM, KernelCounter, RequestKey, ipv4_mapped, proto,
};
use netwatch_tests::{
    harness::{PASS_THROUGH, all_targets, run_on, sum},
    packets::{ETHERNET_LEN, Flow, IPV6_LEN},
    prerequisites,
    random::{Rng, env_u64, seed},
};

/// Draws the fuzzer needs beyond numbers.
trait Draw {
    fn byte(&mut self) -> u8;
    fn chance(&mut self, one_in: u64) -> bool;
    fn bytes(&mut self, n: usize) -> Vec<u8>;
    fn pick<T: Copy>(&mut self, items: &[T]) -> T;
}

impl Draw for Rng {
    fn byte(&mut self) -> u8 {
        self.next_u64().to_le_bytes()[0]
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[usize::try_from(self.below(items.len() as u64)).unwrap_or(0)]
    }
}

const LOCAL_V4: [u8; 4] = [203, 0, 113, 2];
const LOCAL_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// The positive control's remote: not one of the remotes random frames use (last byte 1, 2,
/// 3 or 10).
const CONTROL_REMOTE: [u8; 4] = [198, 51, 100, 99];

/// The positive control's exchange: an echo request from [`LOCAL_V4`] to [`CONTROL_REMOTE`],
/// identifier 0xc0de, sequence 1.
fn control_echo() -> Flow {
    Flow::echo(false, 0xc0de, 1)
        .with_local(IpAddr::from(LOCAL_V4))
        .with_remote(IpAddr::from(CONTROL_REMOTE))
}

/// A random frame: one time in eight pure noise, otherwise valid headers of a tracked kind
/// around random fields and payload, sometimes mutated or cut.
#[expect(clippy::too_many_lines, reason = "one frame, header by header")]
fn random_frame(rng: &mut Rng) -> Vec<u8> {
    // Half the frames the other way round: from the remote, as answers would come.
    let inbound = rng.chance(2);
    if rng.chance(8) {
        let len = usize::try_from(rng.below(200)).unwrap_or(0);
        return rng.bytes(len);
    }
    let v6 = rng.chance(2);
    let mut frame = Vec::with_capacity(160);
    frame.extend([2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
    for _ in 0..rng.pick(&[0, 0, 0, 1, 2, 3]) {
        frame.extend(rng.pick(&[[0x81, 0x00], [0x88, 0xa8]]));
        frame.extend([rng.byte() & 0x0f, rng.byte()]);
    }
    frame.extend(if v6 { [0x86, 0xdd] } else { [0x08, 0x00] });
    let l4_proto = if v6 {
        rng.pick(&[
            proto::TCP,
            proto::UDP,
            proto::ICMPV6,
            proto::TCP,
            17,
            58,
            0,
            44,
        ])
    } else {
        rng.pick(&[proto::TCP, proto::UDP, proto::ICMP, proto::TCP, 17, 1, 41])
    };
    let remote_last = rng.pick(&[1, 2, 3, 10]);
    if v6 {
        let extensions = rng.pick(&[0, 0, 0, 1, 2, 7]);
        let first = if extensions > 0 {
            rng.pick(&[0, 43, 60, 44, 51])
        } else {
            l4_proto
        };
        frame.extend([0x60, 0, 0, 0, 0, 0, first, 64]);
        let mut remote = LOCAL_V6;
        remote[5] = 2;
        remote[15] = remote_last;
        let (src, dst) = if inbound {
            (remote, LOCAL_V6)
        } else {
            (LOCAL_V6, remote)
        };
        frame.extend(src);
        frame.extend(dst);
        for n in 0..extensions {
            let next = if n + 1 == extensions {
                l4_proto
            } else {
                rng.pick(&[0, 43, 60, 44])
            };
            frame.extend([next, 0]);
            frame.extend(rng.bytes(6));
        }
    } else {
        let words = rng.pick(&[5, 5, 5, 6, 15]);
        let fragment = if rng.chance(8) {
            rng.bytes(2)
        } else {
            vec![0x40, 0]
        };
        frame.extend([0x40 | words, 0, 0, 0, 0, 0]);
        frame.extend(fragment);
        frame.extend([64, l4_proto, 0, 0]);
        let remote = [198, 51, 100, remote_last];
        let (src, dst) = if inbound {
            (remote, LOCAL_V4)
        } else {
            (LOCAL_V4, remote)
        };
        frame.extend(src);
        frame.extend(dst);
        frame.extend(rng.bytes(usize::from(words - 5) * 4));
    }
    let port = |rng: &mut Rng| {
        rng.pick(&[53u16, 53, 80, 443, 9000, 40_000, 40_001])
            .to_be_bytes()
    };
    match l4_proto {
        proto::TCP => {
            frame.extend(port(rng));
            frame.extend(port(rng));
            frame.extend(rng.pick(&[[0, 0, 0, 1], [0, 0, 0, 2], [1, 2, 3, 4]]));
            // Acknowledging one of those sequence numbers, or not.
            let ack = rng.bytes(4);
            frame.extend(rng.pick(&[
                [0, 0, 0, 2],
                [0, 0, 0, 3],
                [1, 2, 3, 5],
                [ack[0], ack[1], ack[2], ack[3]],
            ]));
            let flags = rng.pick(&[0x02, 0x02, 0x12, 0x14, 0x04, 0x10, 0x18]) ^ (rng.byte() & 0x01);
            frame.extend([0x50, flags]);
            frame.extend(rng.bytes(6));
        }
        proto::UDP => {
            frame.extend(port(rng));
            frame.extend(port(rng));
            frame.extend([0, 40, 0, 0]);
            // DNS: id, flags (QR random), counts, a question.
            frame.extend(rng.pick(&[[0, 1], [0, 2], [0x12, 0x34]]));
            frame.extend([rng.pick(&[0x01, 0x81, 0x00]), 0, 0, 1, 0, 0, 0, 0, 0, 0]);
            frame.extend([
                1, b'a', 7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0, 0, 1, 0, 1,
            ]);
        }
        proto::ICMP | proto::ICMPV6 => {
            let kind = if v6 {
                rng.pick(&[128u8, 129, 1, 3])
            } else {
                rng.pick(&[8u8, 0, 3, 11])
            };
            frame.extend([kind, rng.pick(&[0, 0, 1, 3, 4, 10, 13]), 0, 0]);
            frame.extend([0, rng.pick(&[1, 2]), 0, rng.pick(&[1, 2])]);
            if kind == 3 || kind == 1 {
                // An error: a quoted header of random shape and random bytes.
                frame.extend(rng.pick(&[[0x45u8, 0], [0x60, 0], [0x46, 0]]));
                let quoted = usize::try_from(rng.below(60)).unwrap_or(0);
                frame.extend(rng.bytes(quoted));
            }
        }
        _ => {}
    }
    let payload = usize::try_from(rng.below(32)).unwrap_or(0);
    frame.extend(rng.bytes(payload));
    if rng.chance(4) {
        // Mutate a few bytes anywhere.
        for _ in 0..=rng.below(3) {
            let at = usize::try_from(rng.below(frame.len() as u64)).unwrap_or(0);
            frame[at] = rng.byte();
        }
    }
    if rng.chance(4) {
        let keep = usize::try_from(rng.below(frame.len() as u64 + 1)).unwrap_or(0);
        frame.truncate(keep);
    }
    frame
}

/// The request a frame leaving the host carries, by the rules the programs document,
/// written out plainly: at most two VLAN tags; IPv4 with options, not a non-first fragment;
/// IPv6 with at most six extension headers (hop-by-hop, routing, destination options, AH,
/// fragment), not a non-first fragment; then a SYN without ACK or RST, a DNS query (port
/// 53, QR clear, id and flags present) or an echo request with code 0.
/// With what tells it from another exchange under the same key. Requests to broadcast and
/// multicast destinations (the destination MAC's group bit, 224.0.0.0/4 and above,
/// `ff00::/8`) are not requests: `Err(())` counts them.
fn oracle_request(frame: &[u8]) -> Option<Result<(RequestKey, Exchange), ()>> {
    match oracle(frame, false)? {
        (key, Seen::Request(exchange)) => {
            let multicast = if key.remote[..12] == ipv4_mapped([0; 4])[..12] {
                key.remote[12] >= 224
            } else {
                key.remote[0] == 0xff
            };
            Some(if frame[0] & 1 != 0 || multicast {
                Err(())
            } else {
                Ok((key, exchange))
            })
        }
        _ => None,
    }
}

/// Bytes of a DNS query's question kept with the request (`DNS_QUESTION_CAPTURE`).
const QUESTION_CAPTURE: usize = 76;

/// What tells one request from another under the same key: a new TCP connection has a new
/// initial sequence number; a new DNS query on a reused port and id has another question.
/// A retransmit has the same. The SYN's data length says what its SYN-ACK may acknowledge
/// (TCP Fast Open, RFC 7413).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Exchange {
    seq: u32,
    syn_data: u32,
    /// The captured question, zero-padded, and how much of it the packet had: two
    /// questions differ in either (trailing zero bytes still make a different message).
    question: [u8; QUESTION_CAPTURE],
    question_len: usize,
}

impl Exchange {
    fn syn(frame: &[u8], l4: usize, seq: u32) -> Option<Self> {
        let header_len = usize::from(frame.get(l4 + 12)? >> 4) * 4;
        Some(Self {
            seq,
            syn_data: u32::try_from(frame.len().saturating_sub(l4 + header_len).min(65_535))
                .ok()?,
            question: [0; QUESTION_CAPTURE],
            question_len: 0,
        })
    }

    fn query(frame: &[u8], l4: usize) -> Self {
        let mut question = [0; QUESTION_CAPTURE];
        let start = (l4 + 8 + 12).min(frame.len());
        let captured = &frame[start..frame.len().min(start + QUESTION_CAPTURE)];
        question[..captured.len()].copy_from_slice(captured);
        Self {
            seq: 0,
            syn_data: 0,
            question,
            question_len: captured.len(),
        }
    }

    const fn plain() -> Self {
        Self {
            seq: 0,
            syn_data: 0,
            question: [0; QUESTION_CAPTURE],
            question_len: 0,
        }
    }

    /// Whether `other`, under the same key, is a new exchange rather than this one again.
    fn is_new(&self, other: &Self) -> bool {
        self.seq != other.seq
            || self.question != other.question
            || self.question_len != other.question_len
    }

    /// Whether a SYN-ACK or RST acknowledging `ack` answers this SYN.
    const fn acked_by(&self, ack: u32) -> bool {
        ack.wrapping_sub(self.seq.wrapping_add(1)) <= self.syn_data
    }
}

/// What the reference parser sees in a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// A request, with what tells it from another under the same key.
    Request(Exchange),
    /// A DNS response or echo reply: settles the request with the key, if pending.
    Answer,
    /// A SYN-ACK acknowledging this number: settles the SYN whose sequence is one less.
    SynAck(u32),
    /// A RST+ACK acknowledging this number: rejects that SYN.
    Reset(u32),
}

/// The reference parser: the key a frame names, oriented as the request's (`inbound`:
/// the frame comes from the remote), and what the frame is.
#[expect(clippy::too_many_lines, reason = "one parse, header by header")]
fn oracle(frame: &[u8], inbound: bool) -> Option<(RequestKey, Seen)> {
    let u16_at = |at: usize| Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]));
    let mut ether_type = u16_at(12)?;
    let mut l3 = 14;
    for _ in 0..2 {
        if ether_type != 0x8100 && ether_type != 0x88a8 {
            break;
        }
        ether_type = u16_at(l3 + 2)?;
        l3 += 4;
    }
    let mut key = RequestKey::zeroed();
    let (v6, l4_proto, l4) = match ether_type {
        0x0800 => {
            let version_ihl = *frame.get(l3)?;
            let header_len = usize::from(version_ihl & 0x0f) * 4;
            if version_ihl >> 4 != 4 || header_len < 20 || u16_at(l3 + 6)? & 0x1fff != 0 {
                return None;
            }
            key.local = ipv4_mapped(frame.get(l3 + 12..l3 + 16)?.try_into().ok()?);
            key.remote = ipv4_mapped(frame.get(l3 + 16..l3 + 20)?.try_into().ok()?);
            if inbound {
                std::mem::swap(&mut key.local, &mut key.remote);
            }
            (false, *frame.get(l3 + 9)?, l3 + header_len)
        }
        0x86dd => {
            if frame.get(l3)? >> 4 != 6 {
                return None;
            }
            key.local = frame.get(l3 + 8..l3 + 24)?.try_into().ok()?;
            key.remote = frame.get(l3 + 24..l3 + 40)?.try_into().ok()?;
            if inbound {
                std::mem::swap(&mut key.local, &mut key.remote);
            }
            let mut next = *frame.get(l3 + 6)?;
            let mut at = l3 + 40;
            let mut walked = 0;
            while matches!(next, 0 | 43 | 60 | 51 | 44) {
                if walked == 6 {
                    return None;
                }
                let (following, len) = (*frame.get(at)?, usize::from(*frame.get(at + 1)?));
                at += match next {
                    51 => (len + 2) * 4,
                    44 => {
                        if u16_at(at + 2)? & 0xfff8 != 0 {
                            return None;
                        }
                        8
                    }
                    _ => (len + 1) * 8,
                };
                next = following;
                walked += 1;
            }
            (true, next, at)
        }
        _ => return None,
    };
    let (local_at, remote_at) = if inbound { (l4 + 2, l4) } else { (l4, l4 + 2) };
    let seen = match l4_proto {
        proto::TCP => {
            let flags = *frame.get(l4 + 13)?;
            key.proto = proto::TCP;
            key.local_port = u16_at(local_at)?;
            key.remote_port = u16_at(remote_at)?;
            // The programs read ports and sequence number (and acknowledgement) together.
            let seq = u32::from_be_bytes(frame.get(l4 + 4..l4 + 8)?.try_into().ok()?);
            let ack = u32::from_be_bytes(frame.get(l4 + 8..l4 + 12)?.try_into().ok()?);
            match (inbound, flags & 0x16) {
                (false, 0x02) => Seen::Request(Exchange::syn(frame, l4, seq)?),
                (true, 0x12) => Seen::SynAck(ack),
                (true, 0x14 | 0x16) => Seen::Reset(ack),
                _ => return None,
            }
        }
        proto::UDP => {
            let dns_port = if inbound {
                u16_at(l4)?
            } else {
                u16_at(l4 + 2)?
            };
            let response = frame.get(l4 + 10)? & 0x80 != 0;
            if dns_port != 53 || response != inbound {
                return None;
            }
            key.proto = proto::UDP;
            key.local_port = u16_at(local_at)?;
            key.remote_port = 53;
            key.tag = u16_at(l4 + 8)?;
            if inbound {
                Seen::Answer
            } else {
                Seen::Request(Exchange::query(frame, l4))
            }
        }
        proto::ICMP | proto::ICMPV6 => {
            let (request, reply, expected) = if v6 {
                (128, 129, proto::ICMPV6)
            } else {
                (8, 0, proto::ICMP)
            };
            let kind = *frame.get(l4)?;
            let seen = match (inbound, kind) {
                (false, k) if k == request && *frame.get(l4 + 1)? == 0 => {
                    Seen::Request(Exchange::plain())
                }
                (true, k) if k == reply => Seen::Answer,
                _ => return None,
            };
            if l4_proto != expected {
                return None;
            }
            key.proto = l4_proto;
            key.local_port = u16_at(l4 + 4)?;
            key.tag = u16_at(l4 + 6)?;
            seen
        }
        _ => return None,
    };
    Some((key, seen))
}

/// Runs `program` on `frame`; false when the kernel refuses to run it: `BPF_PROG_TEST_RUN`
/// wants an Ethernet header and, untagged, a whole fixed IP header (Linux 6.18). Such a
/// frame cannot reach the programs from a device either.
fn run(probe: &mut Probe, program: &str, frame: &[u8]) -> bool {
    match run_on(probe, program, frame) {
        Ok(ret) => {
            assert_eq!(
                ret, PASS_THROUGH,
                "{program} must pass {frame:02x?} through"
            );
            true
        }
        Err(ProgramError::SyscallError(err))
            if err.io_error.raw_os_error() == Some(libc::EINVAL)
                && frame.len() < ETHERNET_LEN + IPV6_LEN =>
        {
            false
        }
        Err(err) => panic!("test_run {program} on {frame:02x?}: {err}"),
    }
}

#[test]
#[expect(clippy::too_many_lines, reason = "four phases, read top to bottom")]
fn a_million_random_packets_fool_nothing() {
    if !prerequisites("a_million_random_packets_fool_nothing", &[]) {
        return;
    }
    let total = env_u64("NETWATCH_FUZZ_PACKETS").unwrap_or(1_000_000);
    let seed = seed("NETWATCH_FUZZ_SEED");
    eprintln!("fuzz: seed=0x{seed:x} (NETWATCH_FUZZ_SEED replays it)");
    let mut rng = Rng(seed);
    // A long timeout: nothing may turn late while the test runs.
    let mut probe = Probe::load(Duration::from_hours(1)).expect("load");
    let started = Instant::now();
    let (phase1, phase2) = (total * 2 / 5, total * 2 / 5);
    let phase3 = total - phase1 - phase2;
    // Frames the kernel would not run (see `run`).
    let mut refused = 0u64;

    // 1. Ingress, empty table.
    for n in 0..phase1 {
        let frame = random_frame(&mut rng);
        refused += u64::from(!run(&mut probe, INGRESS_PROGRAM, &frame));
        if n % 100_000 == 99_999 {
            assert!(
                all_targets(&mut probe).is_empty(),
                "ingress created a target"
            );
        }
    }
    // What ingress alone made of nothing: targets or pending requests, none expected.
    let phantom = all_targets(&mut probe).len() + probe.read_pending().expect("pending").len();
    assert_eq!(
        phantom, 0,
        "ingress alone created targets or pending requests"
    );
    let after_ingress = probe.read_counters().expect("counters");
    let unmatched = after_ingress[KernelCounter::UnmatchedAnswer as usize]
        + after_ingress[KernelCounter::UnmatchedRejection as usize];
    assert!(
        unmatched > 0,
        "random answers were seen and matched nothing"
    );

    // 2. Egress: requests, checked against the reference. A request is new unless its key
    // is pending already; then it is a retransmit, except a SYN with a new sequence number:
    // a new connection on the same 4-tuple, a new request.
    let mut expected: HashMap<RequestKey, Exchange> = HashMap::new();
    let (mut expect_new, mut expect_retransmits) = (0u64, 0u64);
    let (mut expect_abandoned, mut expect_not_unicast) = (0u64, 0u64);
    for _ in 0..phase2 {
        let frame = random_frame(&mut rng);
        if !run(&mut probe, EGRESS_PROGRAM, &frame) {
            refused += 1;
            continue;
        }
        match oracle_request(&frame) {
            Some(Ok((key, exchange))) => match expected.get_mut(&key) {
                // The same request again: the first one's entry stays.
                Some(before) if !before.is_new(&exchange) => expect_retransmits += 1,
                // A new exchange under a key still in flight (the timeout is an hour):
                // the earlier one was given up.
                Some(before) => {
                    *before = exchange;
                    expect_new += 1;
                    expect_abandoned += 1;
                }
                None => {
                    expected.insert(key, exchange);
                    expect_new += 1;
                }
            },
            Some(Err(())) => expect_not_unicast += 1,
            None => {}
        }
    }
    let pending = probe.read_pending().expect("pending");
    for (key, request) in &pending {
        assert_eq!(
            expected.get(key).map(|e| (e.seq, e.syn_data, e.question)),
            Some((
                request.tcp_seq,
                u32::from(request.syn_payload_len),
                request.question
            )),
            "a pending request the reference agrees on: {key:?}"
        );
    }
    assert_eq!(pending.len(), expected.len(), "every request is pending");
    let all = all_targets(&mut probe);
    let requests = sum(&all, |c| c.requests);
    let retransmits = sum(&all, |c| c.retransmits);
    assert_eq!(sum(&all, |c| c.untracked), 0, "the table had room");
    assert_eq!(
        (requests, retransmits),
        (expect_new, expect_retransmits),
        "the programs and the reference parser agree on every request frame"
    );
    assert!(!pending.is_empty(), "requests were tracked");
    let counters = probe.read_counters().expect("counters");
    assert_eq!(
        (
            sum(&all, |c| c.abandoned),
            counters[KernelCounter::Abandoned as usize],
            counters[KernelCounter::NotUnicast as usize],
        ),
        (expect_abandoned, expect_abandoned, expect_not_unicast),
        "abandoned and not-unicast requests: programs and reference agree"
    );

    // 3. Ingress again, the table full of requests: random frames, half of them from the
    // remotes, settle exactly the requests the reference says they answer or reject.
    let mut open: HashMap<RequestKey, Exchange> = expected;
    let (mut expect_answered, mut expect_rejected) = (0u64, 0u64);
    for _ in 0..phase3 {
        let frame = random_frame(&mut rng);
        if !run(&mut probe, INGRESS_PROGRAM, &frame) {
            refused += 1;
            continue;
        }
        let Some((key, what)) = oracle(&frame, true) else {
            continue;
        };
        let Some(exchange) = open.get(&key) else {
            continue;
        };
        match what {
            Seen::Answer => expect_answered += 1,
            Seen::SynAck(ack) if exchange.acked_by(ack) => expect_answered += 1,
            Seen::Reset(ack) if exchange.acked_by(ack) => expect_rejected += 1,
            _ => continue,
        }
        open.remove(&key);
    }
    let all = all_targets(&mut probe);
    let answered = sum(&all, |c| c.answered);
    let rejected = sum(&all, |c| c.rejected);
    assert_eq!(
        answered, expect_answered,
        "answers: programs and reference agree"
    );
    assert_eq!(
        rejected, expect_rejected,
        "rejections: programs and reference agree"
    );
    assert_eq!(sum(&all, |c| c.late), 0, "nothing late");
    let counters = probe.read_counters().expect("counters");
    let parse_errors = [
        KernelCounter::Malformed,
        KernelCounter::Fragment,
        KernelCounter::ExtensionHeaderLimit,
        KernelCounter::ShortQuote,
        KernelCounter::InvalidAnswer,
        KernelCounter::UnmatchedAnswer,
        KernelCounter::UnmatchedRejection,
    ]
    .map(|c| (c.name(), counters[c as usize]));
    assert!(
        parse_errors.iter().take(4).all(|(_, n)| *n > 0),
        "every parse error counter moved: {parse_errors:?}"
    );

    // 4. Positive control: a real answer to a pending request is counted. The request is the
    // control's own, to a remote random frames never use: random traffic may leave no echo
    // request open (one seed did, in the guests' 20,000 packets).
    let control = control_echo();
    assert!(run(&mut probe, EGRESS_PROGRAM, &control.request()));
    let (key, request) = probe
        .read_pending()
        .expect("pending")
        .into_iter()
        .find(|(k, _)| k.proto == proto::ICMP && k.remote == ipv4_mapped(CONTROL_REMOTE))
        .expect("the control's echo request is pending");
    let reply = control.answer();
    assert!(run(&mut probe, INGRESS_PROGRAM, &reply));
    let after = sum(&all_targets(&mut probe), |c| c.answered);
    assert_eq!(
        after,
        answered + 1,
        "the control answer to {key:?} ({request:?}) is counted"
    );
    println!(
        "fuzz: seed=0x{seed:x} packets={total} (ingress {}, egress {phase2}) requests={requests} \
         retransmits={retransmits} abandoned={expect_abandoned} \
         not_unicast={expect_not_unicast} pending={} answered={answered} rejected={rejected} (as the \
         reference says) refused_by_test_run={refused} phantom={phantom} \
         parse_errors={parse_errors:?} in {:.1} s",
        phase1 + phase3,
        pending.len(),
        started.elapsed().as_secs_f64()
    );
}

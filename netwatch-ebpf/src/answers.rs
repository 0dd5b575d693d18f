//! Answers and rejections, matched to the pending requests they settle: arriving for the
//! requests this host sent, leaving for the ones it received.

use aya_ebpf::{bindings::__sk_buff, helpers::bpf_ktime_get_ns, programs::TcContext};
use netwatch_common::{
    DIRECTION_EGRESS, DIRECTION_INGRESS, DNS_PORT, KernelCounter, NTP_MODE_CLIENT,
    NTP_ORIGIN_OFFSET, NTP_TRANSMIT_OFFSET, PENDING_FLAG_LATE, PENDING_FLAG_REJECTED,
    PENDING_FLAG_SETTLING, PendingRequest, Reason, RequestKey, TargetKey, UDP_PORT_FLOW,
    UDP_PORT_NTP, latency_bucket, ntp_tag, proto,
};

use crate::{
    maps::{PENDING, TARGET_SLOTS, TARGETS, add, count, timeout_ns, udp_port_kind},
    packet::{
        self, Copied, Hook, ICMP_HEADER_LEN, InPlace, Ip, Reader, UDP_HEADER_LEN, icmp, read,
        tcp_flags,
    },
};

#[cfg(feature = "no-cmpxchg")]
use crate::maps::PENDING_SCRATCH;
#[cfg(not(feature = "no-cmpxchg"))]
use crate::maps::swap_flags;

/// What came back for a request.
#[derive(Clone, Copy)]
enum Outcome {
    Answer,
    /// An answer whose first fragment arrived (the rest follows, or is lost).
    FragmentedAnswer,
    /// A rejection with its [`Reason`] code.
    Reject(u8),
}

/// What the pending request must look like for a packet to be its answer, beyond the key.
#[derive(Clone, Copy)]
enum Check {
    /// The key (with the DNS id or echo sequence in it) is proof enough.
    Key,
    /// A SYN-ACK or RST must acknowledge our SYN: ack = ISN + 1.
    AcksSyn(u32),
    /// A TCP header quoted in an ICMP error must carry our SYN's sequence number.
    QuotesSyn(u32),
    /// An NTP answer's origin timestamp must be our request's transmit timestamp: the tag
    /// holds 16 bits of it folded, this the low 32 bits as they are.
    EchoesTransmit(u32),
}

/// A SYN-ACK or RST: the answer or rejection of the SYN it acknowledges. Seen at ingress it
/// answers a connection this host opened; at egress, one this host was asked for.
// Out of line (see `requests::track`).
#[inline(never)]
pub fn tcp_answer(ctx: &TcContext, ip: &Ip, flags: u8, hook: Hook) {
    let outcome = if flags & tcp_flags::RST != 0 {
        // RFC 9293 §3.10.7.3: in SYN-SENT a reset is acceptable only if it ACKs our SYN.
        if flags & tcp_flags::ACK == 0 {
            return;
        }
        Outcome::Reject(Reason::TCP_RESET)
    } else if flags & tcp_flags::ACK != 0 {
        Outcome::Answer
    } else {
        return;
    };
    // Ports, sequence number, acknowledgement number.
    let mut key = RequestKey::zeroed();
    let Some(header) = read::<[u8; 12]>(ctx, ip.l4) else {
        count(KernelCounter::Malformed);
        return;
    };
    if packet::endpoints_into::<InPlace>(ctx, ip, hook, &mut key).is_none() {
        count(KernelCounter::Malformed);
        return;
    }
    (key.local_port, key.remote_port) = hook.local_and_remote(
        u16::from_be_bytes([header[0], header[1]]),
        u16::from_be_bytes([header[2], header[3]]),
    );
    key.proto = proto::TCP;
    key.direction = hook.answered_direction();
    let ack = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
    settle(&key, outcome, Check::AcksSyn(ack));
}

/// A DNS response (QR set): the answer to the query with its port and id.
// Out of line (see `requests::track`).
#[inline(never)]
pub fn dns_response(ctx: &TcContext, ip: &Ip, ports: [u16; 2], hook: Hook) {
    let mut key = RequestKey::zeroed();
    let Some(id) = read::<[u8; 2]>(ctx, ip.l4 + UDP_HEADER_LEN) else {
        count(KernelCounter::Malformed);
        return;
    };
    if packet::endpoints_into::<InPlace>(ctx, ip, hook, &mut key).is_none() {
        count(KernelCounter::Malformed);
        return;
    }
    (key.local_port, key.remote_port) = hook.local_and_remote(ports[0], ports[1]);
    key.tag = u16::from_be_bytes(id);
    key.proto = proto::UDP;
    key.direction = hook.answered_direction();
    // An answer in fragments is an answer once reassembled; where the rest never comes,
    // the drop program sees the reassembly time out and takes the answer back.
    let outcome = if ip.first_fragment {
        Outcome::FragmentedAnswer
    } else {
        Outcome::Answer
    };
    settle(&key, outcome, Check::Key);
}

/// An NTP server answer (mode 4) from a watched NTP port: the answer to the request whose
/// transmit timestamp it carries back as its origin timestamp.
// Out of line (see `requests::track`).
#[inline(never)]
pub fn ntp_answer(ctx: &TcContext, ip: &Ip, ports: [u16; 2], hook: Hook) {
    let mut key = RequestKey::zeroed();
    // Read up to the end of the 48-byte message: a shorter one answers nothing.
    let (Some(origin), Some(_)) = (
        read::<[u8; 8]>(ctx, ip.l4 + UDP_HEADER_LEN + NTP_ORIGIN_OFFSET),
        read::<[u8; 8]>(ctx, ip.l4 + UDP_HEADER_LEN + NTP_TRANSMIT_OFFSET),
    ) else {
        count(KernelCounter::Malformed);
        return;
    };
    if packet::endpoints_into::<InPlace>(ctx, ip, hook, &mut key).is_none() {
        count(KernelCounter::Malformed);
        return;
    }
    (key.local_port, key.remote_port) = hook.local_and_remote(ports[0], ports[1]);
    key.tag = ntp_tag(origin);
    key.proto = proto::UDP;
    key.direction = hook.answered_direction();
    let low = u32::from_be_bytes([origin[4], origin[5], origin[6], origin[7]]);
    settle(&key, Outcome::Answer, Check::EchoesTransmit(low));
}

/// A datagram from a `--udp-port` service: the answer to what the reversed flow has
/// outstanding. Whether there was anything to answer: a datagram that answers is not also
/// a request. `or_request`: it goes to a watched port too, so finding nothing outstanding
/// makes it a request rather than an unmatched answer (not counted).
// Out of line (see `requests::track`).
#[inline(never)]
pub fn flow_answer(
    ctx: &TcContext,
    ip: &Ip,
    ports: [u16; 2],
    hook: Hook,
    or_request: bool,
) -> bool {
    let mut key = RequestKey::zeroed();
    if packet::endpoints_into::<InPlace>(ctx, ip, hook, &mut key).is_none() {
        count(KernelCounter::Malformed);
        return false;
    }
    (key.local_port, key.remote_port) = hook.local_and_remote(ports[0], ports[1]);
    key.proto = proto::UDP;
    key.direction = hook.answered_direction();
    if or_request && PENDING.get_ptr(&key).is_none() {
        return false;
    }
    settle(&key, Outcome::Answer, Check::Key)
}

/// An echo reply: the answer to the echo request with its identifier and sequence number.
// Out of line (see `requests::track`).
#[inline(never)]
pub fn echo_reply(ctx: &TcContext, ip: &Ip, header: [u8; 8], hook: Hook) {
    let mut key = RequestKey::zeroed();
    if packet::endpoints_into::<InPlace>(ctx, ip, hook, &mut key).is_none() {
        count(KernelCounter::Malformed);
        return;
    }
    key.local_port = u16::from_be_bytes([header[4], header[5]]);
    key.tag = u16::from_be_bytes([header[6], header[7]]);
    key.proto = ip.proto;
    key.direction = hook.answered_direction();
    settle(&key, Outcome::Answer, Check::Key);
}

/// An ICMP or `ICMPv6` error (`header`: type, code, checksum, then four bytes that depend on
/// the type): the rejection of the request it quotes, unless it is path-MTU signalling.
// Out of line (see `requests::track`).
#[inline(never)]
pub fn icmp_error(ctx: &TcContext, ip: &Ip, header: [u8; 8], hook: Hook) {
    let (kind, code) = (header[0], header[1]);
    if (!ip.v6 && kind == icmp::DEST_UNREACHABLE && code == icmp::FRAG_NEEDED)
        || (ip.v6 && kind == icmp::V6_PACKET_TOO_BIG)
    {
        // Path-MTU discovery at work (RFC 1191, RFC 8201): the sender retries smaller, the
        // request is not refused.
        count(KernelCounter::PathMtu);
        if hook == Hook::Ingress {
            // The MTU: the next-hop MTU in the low half of the second word (RFC 1191 §4),
            // all of it for ICMPv6 (RFC 4443 §3.2).
            let mtu = if ip.v6 {
                u32::from_be_bytes([header[4], header[5], header[6], header[7]])
            } else {
                u32::from(u16::from_be_bytes([header[6], header[7]]))
            };
            #[expect(
                clippy::cast_possible_truncation,
                reason = "offsets are below 64 KiB, and quoted_path_mtu bounds them"
            )]
            let quoted_at = (ip.l4 + ICMP_HEADER_LEN) as u32;
            quoted_path_mtu(ctx.skb.skb, quoted_at, u32::from(ip.v6), mtu);
        }
        return;
    }
    let unreachable = if ip.v6 {
        icmp::V6_DEST_UNREACHABLE
    } else {
        icmp::DEST_UNREACHABLE
    };
    if kind != unreachable {
        return;
    }
    let reason = if ip.v6 {
        Reason::icmp6_unreachable(code)
    } else {
        Reason::icmp_unreachable(code)
    };
    // The quoted header is parsed in a function of its own, verified once for any offset:
    // inlined here, its paths multiplied with the outer header's (658,578 verified
    // instructions of the 1,000,000 allowed).
    #[expect(
        clippy::cast_possible_truncation,
        reason = "offsets are below 64 KiB, and quoted_rejection bounds them"
    )]
    let quoted_at = (ip.l4 + ICMP_HEADER_LEN) as u32;
    quoted_rejection(
        ctx.skb.skb,
        quoted_at,
        u32::from(ip.v6),
        u32::from(reason),
        hook as u32,
    );
}

/// The deepest an ICMP error's quoted header may start: Ethernet, two VLAN tags, IPv6 with
/// extension headers, the ICMP header. Anything deeper is not parsed.
const MAX_QUOTE_OFFSET: u32 = 1024;

/// An ICMP error of `reason` quoting, at `quoted_at`, the IP header of a packet we sent.
///
/// A global BPF function (BTF linkage `global`, hence `no_mangle` and the C ABI): the
/// verifier checks it once, for arguments it knows nothing about, rather than once per path
/// that reaches the call. Arguments must be the context or scalars, the result a scalar.
/// Its reads are [`Copied`]: the offset is a range here, not a constant.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn quoted_rejection(
    skb: *mut __sk_buff,
    quoted_at: u32,
    v6: u32,
    reason: u32,
    hook: u32,
) -> i32 {
    let ctx = TcContext::new(skb);
    let Some(quoted) = quoted_header(&ctx, quoted_at, v6) else {
        return 0;
    };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "a Reason code, passed widened"
    )]
    rejected(&ctx, &quoted, reason as u8, Hook::from_u32(hook));
    0
}

/// The IP header an ICMP error quotes at `quoted_at` (`v6`: an `ICMPv6` error), read with
/// [`Copied`] (the offset is a range here); `None`, counted, when it is cut short.
#[inline(always)]
fn quoted_header(ctx: &TcContext, quoted_at: u32, v6: u32) -> Option<Ip> {
    if quoted_at > MAX_QUOTE_OFFSET {
        return None;
    }
    let quoted_at = quoted_at as usize;
    let quoted = if v6 != 0 {
        packet::ipv6::<Copied>(ctx, quoted_at)
    } else {
        packet::ipv4::<Copied>(ctx, quoted_at)
    };
    if quoted.is_none() {
        count(KernelCounter::ShortQuote);
    }
    quoted
}

/// A "fragmentation needed" / "packet too big" arriving, quoting at `quoted_at` a TCP or UDP
/// packet this host sent: counted, with the MTU it reports, for the target of that packet's
/// flow (the peer's port when this host opened it, this host's port when the peer did).
/// Nothing is settled: the sender retries smaller.
///
/// A global BPF function, like [`quoted_rejection`]: verified once, for any offset.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn quoted_path_mtu(skb: *mut __sk_buff, quoted_at: u32, v6: u32, mtu: u32) -> i32 {
    let ctx = TcContext::new(skb);
    let Some(quoted) = quoted_header(&ctx, quoted_at, v6) else {
        return 0;
    };
    if quoted.proto != proto::TCP && quoted.proto != proto::UDP {
        return 0;
    }
    let mut key = RequestKey::zeroed();
    // The quoted packet left this host: seen as at egress, its destination is the peer.
    let (Some(()), Some(ports)) = (
        packet::endpoints_into::<Copied>(&ctx, &quoted, Hook::Egress, &mut key),
        Copied::get::<[u8; 4]>(&ctx, quoted.l4),
    ) else {
        count(KernelCounter::ShortQuote);
        return 0;
    };
    let local_port = u16::from_be_bytes([ports[0], ports[1]]);
    let remote_port = u16::from_be_bytes([ports[2], ports[3]]);
    path_mtu_signal(&key.remote, quoted.proto, local_port, remote_port, mtu);
    0
}

/// Counts a path-MTU signal for the target of the flow (`remote`, `proto`, ports): the one
/// of requests this host sent to `remote_port`, else the one of requests `remote` sent to
/// `local_port`. A flow of neither (opened before netwatch, or over another interface)
/// counts nowhere but in the kernel counter.
#[inline(never)]
fn path_mtu_signal(remote: &[u8; 16], proto: u8, local_port: u16, remote_port: u16, mtu: u32) {
    let mut target = TargetKey {
        remote: *remote,
        remote_port,
        proto,
        direction: DIRECTION_EGRESS,
    };
    let slot = if let Some(slot) = TARGET_SLOTS.get_ptr(&target) {
        slot
    } else {
        target.remote_port = local_port;
        target.direction = DIRECTION_INGRESS;
        let Some(slot) = TARGET_SLOTS.get_ptr(&target) else {
            return;
        };
        slot
    };
    // SAFETY: a map value pointer, valid for this program run.
    let Some(counters) = TARGETS.get_ptr_mut(unsafe { *slot }) else {
        return;
    };
    // SAFETY: an array value pointer, valid for the program run.
    let counters = unsafe { &mut *counters };
    add(&mut counters.path_mtu_signals, 1);
    // The smallest reported; a racing signal on another CPU may win with a larger one, which
    // the next signal corrects. 0 (an RFC 792 router that does not say) reports nothing.
    let mtu = u64::from(mtu);
    if mtu != 0 && (counters.path_mtu == 0 || mtu < counters.path_mtu) {
        counters.path_mtu = mtu;
    }
}

/// An ICMP error seen at `hook` quoting `quoted`, the header of a request: the request it
/// rejects. The quoted request went the other way: an error arriving quotes a packet this
/// host sent (its source is us), one leaving quotes a packet this host received.
#[inline(always)]
fn rejected(ctx: &TcContext, quoted: &Ip, reason: u8, hook: Hook) {
    let mut key = RequestKey::zeroed();
    // The quoted packet is seen as at the other hook.
    let request_hook = hook.opposite();
    if packet::endpoints_into::<Copied>(ctx, quoted, request_hook, &mut key).is_none() {
        count(KernelCounter::ShortQuote);
        return;
    }
    key.direction = hook.answered_direction();
    let outcome = Outcome::Reject(reason);
    match quoted.proto {
        proto::TCP => {
            // Ports and sequence number: the 8 bytes every ICMP error must quote.
            let Some(tcp) = Copied::get::<[u8; 8]>(ctx, quoted.l4) else {
                count(KernelCounter::ShortQuote);
                return;
            };
            (key.local_port, key.remote_port) = request_hook.local_and_remote(
                u16::from_be_bytes([tcp[0], tcp[1]]),
                u16::from_be_bytes([tcp[2], tcp[3]]),
            );
            key.tag = 0;
            key.proto = proto::TCP;
            let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
            settle(&key, outcome, Check::QuotesSyn(seq));
        }
        proto::UDP => {
            let Some(udp) = Copied::get::<[u8; 4]>(ctx, quoted.l4) else {
                count(KernelCounter::ShortQuote);
                return;
            };
            let service = u16::from_be_bytes([udp[2], udp[3]]);
            let Some(tag) = quoted_udp_tag(ctx, quoted, service) else {
                return;
            };
            (key.local_port, key.remote_port) =
                request_hook.local_and_remote(u16::from_be_bytes([udp[0], udp[1]]), service);
            key.tag = tag;
            key.proto = proto::UDP;
            settle(&key, outcome, Check::Key);
        }
        proto::ICMP | proto::ICMPV6 => {
            let Some(echo) = Copied::get::<[u8; 8]>(ctx, quoted.l4) else {
                count(KernelCounter::ShortQuote);
                return;
            };
            let expected = if quoted.v6 {
                icmp::V6_ECHO_REQUEST
            } else {
                icmp::ECHO_REQUEST
            };
            if echo[0] != expected || (quoted.proto == proto::ICMPV6) != quoted.v6 {
                return;
            }
            key.remote_port = 0;
            key.local_port = u16::from_be_bytes([echo[4], echo[5]]);
            key.tag = u16::from_be_bytes([echo[6], echo[7]]);
            key.proto = quoted.proto;
            settle(&key, outcome, Check::Key);
        }
        _ => {}
    }
}

/// The tag of the UDP request quoted at `quoted` (its destination port `service`): the DNS
/// id, the NTP transmit timestamp folded, 0 for a `--udp-port` flow. `None` when the port is
/// not watched, or the quote is not a request or too short to say which (counted).
#[inline(always)]
fn quoted_udp_tag(ctx: &TcContext, quoted: &Ip, service: u16) -> Option<u16> {
    let kind = if service == DNS_PORT {
        0
    } else {
        match udp_port_kind(service) {
            UDP_PORT_FLOW => return Some(0),
            UDP_PORT_NTP => UDP_PORT_NTP,
            _ => return None,
        }
    };
    // The DNS id and the NTP message sit past the 8 bytes RFC 792 guarantees; Linux and
    // RFC 1812 routers quote more, a router quoting less leaves the request unidentifiable.
    let payload = quoted.l4 + UDP_HEADER_LEN;
    let tag = if kind == UDP_PORT_NTP {
        let Some(first) = Copied::get::<u8>(ctx, payload) else {
            count(KernelCounter::ShortQuote);
            return None;
        };
        // Another mode was never a request (so not one cut short either).
        if first & 0x07 != NTP_MODE_CLIENT {
            return None;
        }
        let Some(transmit) = Copied::get::<[u8; 8]>(ctx, payload + NTP_TRANSMIT_OFFSET) else {
            count(KernelCounter::ShortQuote);
            return None;
        };
        ntp_tag(transmit)
    } else {
        let Some(id) = Copied::get::<[u8; 2]>(ctx, payload) else {
            count(KernelCounter::ShortQuote);
            return None;
        };
        u16::from_be_bytes(id)
    };
    Some(tag)
}

/// Settles the pending request `key` with `outcome`, exactly once (in [`settle_pending`]):
/// whether `key` was pending (settled now, or earlier: a tombstone).
///
/// Whoever claims the entry owns the outcome (a duplicate answer on another CPU loses the
/// claim and counts nothing; see [`claim`]). An answer in time deletes the entry. A rejection
/// leaves it flagged as a tombstone, so retransmits of the request are still recognised; so
/// does an answer after the timeout (the request already is, or is about to be, counted
/// unanswered by userspace; the answer is counted late).
#[inline(always)]
fn settle(key: &RequestKey, outcome: Outcome, check: Check) -> bool {
    // Scalars for the out-of-line function: its arguments must be what a BPF call passes in
    // registers.
    let (rejection, reason) = match outcome {
        Outcome::Answer => (0, 0),
        Outcome::FragmentedAnswer => (0, ANSWER_FRAGMENTED),
        Outcome::Reject(reason) => (1, u32::from(reason)),
    };
    let (check, value) = match check {
        Check::Key => (CHECK_KEY, 0),
        Check::AcksSyn(ack) => (CHECK_ACKS_SYN, ack),
        Check::QuotesSyn(seq) => (CHECK_QUOTES_SYN, seq),
        Check::EchoesTransmit(low) => (CHECK_ECHOES_TRANSMIT, low),
    };
    settle_pending(key, rejection, reason, check, value) != 0
}

/// `reason` of an answer (`rejection` 0) that arrived in fragments.
const ANSWER_FRAGMENTED: u32 = 1;

const CHECK_KEY: u32 = 0;
const CHECK_ACKS_SYN: u32 = 1;
const CHECK_QUOTES_SYN: u32 = 2;
const CHECK_ECHOES_TRANSMIT: u32 = 3;

/// [`settle`], its arguments spelled as scalars; 1 when `key` was pending, 0 when not.
///
/// Out of line, a static BPF function: one frame of its own (stays off the classifier's
/// frame, which [`quoted_rejection`] stacks on: 512 bytes for the whole call chain). Not a
/// global one: the verifier checks it at each call site, with the caller's knowledge of
/// `key`. A global function taking a pointer needs Linux 5.12 ("Unrecognized arg#0 type PTR"
/// on 5.10), and before 6.2 the pointer it gets (`PTR_TO_MEM`) cannot be a map key ("R2
/// type=mem expected=fp, …" on 6.1).
#[inline(never)]
fn settle_pending(key: &RequestKey, rejection: u32, reason: u32, check: u32, value: u32) -> i32 {
    let Some(pending) = PENDING.get_ptr_mut(key) else {
        count(if rejection == 0 {
            KernelCounter::UnmatchedAnswer
        } else {
            KernelCounter::UnmatchedRejection
        });
        return 0;
    };
    // From here on the key was pending: 1, whatever the outcome.
    // SAFETY: a map value pointer, valid for this program run.
    let pending = unsafe { &mut *pending };
    // Read once: another CPU may claim the entry meanwhile, and the claim compares with this.
    // SAFETY: an aligned field of a live map value.
    let flags = unsafe { core::ptr::read_volatile(&raw const pending.flags) };
    if flags & (PENDING_FLAG_REJECTED | PENDING_FLAG_SETTLING) != 0 {
        // Settled already: by an earlier rejection (this answers a retransmit of it), or by
        // another CPU this instant.
        return 1;
    }
    let valid = match check {
        // RFC 9293 §3.10.7.3 wants ack = ISN + 1; with TCP Fast Open (RFC 7413 §4.2.1) a
        // server that takes the SYN's data acknowledges it too, up to ISN + 1 + its length.
        CHECK_ACKS_SYN => {
            value.wrapping_sub(pending.tcp_seq.wrapping_add(1))
                <= u32::from(pending.syn_payload_len)
        }
        CHECK_QUOTES_SYN => value == pending.tcp_seq,
        // The request kept its transmit timestamp in `question` (see `requests::ntp_request`).
        CHECK_ECHOES_TRANSMIT => {
            u32::from_be_bytes([
                pending.question[4],
                pending.question[5],
                pending.question[6],
                pending.question[7],
            ]) == value
        }
        _ => true,
    };
    if !valid {
        count(KernelCounter::InvalidAnswer);
        return 1;
    }
    let Some(counters) = TARGETS.get_ptr_mut(pending.target_slot) else {
        return 1;
    };
    // SAFETY: as above.
    let counters = unsafe { &mut *counters };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let elapsed = now.wrapping_sub(pending.first_sent_ns);
    counters.last_answer_ns = now;
    let late = elapsed > timeout_ns();
    if late && flags & PENDING_FLAG_LATE != 0 {
        // The request was answered late already: this answers a retransmit of it.
        count(KernelCounter::LateDuplicate);
        return 1;
    }
    // Answered in time (the common case): the entry goes. Rejected in time, or anything
    // after the deadline: it stays, flagged, a tombstone for the request's retransmits.
    let mark = if !late && rejection == 0 {
        PENDING_FLAG_SETTLING
    } else if late {
        PENDING_FLAG_LATE
    } else {
        PENDING_FLAG_REJECTED
    };
    if !claim(key, pending, flags, mark) {
        if late {
            count(KernelCounter::LateDuplicate);
        }
        return 1;
    }
    if mark == PENDING_FLAG_SETTLING {
        add(&mut counters.answered, 1);
        if reason == ANSWER_FRAGMENTED {
            add(&mut counters.fragmented_answers, 1);
        }
        if let Some(bucket) = counters.latency.get_mut(latency_bucket(elapsed)) {
            add(bucket, 1);
        }
    } else if late {
        // Userspace counts the request unanswered (it was, by the deadline); the late
        // answer says the remote is slow, not unreachable. Its latency is kept so the
        // report can say how slow.
        add(&mut counters.late, 1);
        if rejection != 0 {
            // A refusal however late: its reason counts (userspace judges it a rejection).
            add(&mut counters.late_rejected, 1);
            add(&mut counters.rejected_by_reason[(reason & 31) as usize], 1);
        } else if let Some(bucket) = counters.latency.get_mut(latency_bucket(elapsed)) {
            add(bucket, 1);
        }
    } else {
        add(&mut counters.rejected, 1);
        add(&mut counters.rejected_by_reason[(reason & 31) as usize], 1);
    }
    1
}

/// Takes the outcome of `pending` (its flags as read: `flags`) for this CPU, marking it
/// `mark`: whether it did. Exactly one claim of an entry succeeds, whatever races it on other
/// CPUs (a duplicate answer, a rejection, a new exchange under the same key). An entry
/// claimed [`PENDING_FLAG_SETTLING`] is deleted; one marked late or rejected stays in place.
///
/// The claim is a compare-and-swap of the flags: no delete and insert for a tombstone, no
/// copy of the entry.
#[cfg(not(feature = "no-cmpxchg"))]
#[inline(always)]
fn claim(key: &RequestKey, pending: &mut PendingRequest, flags: u32, mark: u32) -> bool {
    if !swap_flags(pending, flags, flags | mark) {
        return false;
    }
    if mark == PENDING_FLAG_SETTLING {
        // Ours to delete. A new exchange replacing it may delete it first: either way it goes.
        let _ = PENDING.remove(key);
    }
    true
}

/// [`claim`] for kernels without compare-and-swap (before 5.12): whoever deletes the entry
/// owns it. A tombstone is copied first (into this CPU's scratch entry: 136 bytes more would
/// not fit the 512-byte call chain) and put back flagged. A retransmit in the nanoseconds
/// between the delete and the insert would count as a new request; retransmits come
/// seconds apart.
#[cfg(feature = "no-cmpxchg")]
#[inline(always)]
fn claim(key: &RequestKey, pending: &mut PendingRequest, _flags: u32, mark: u32) -> bool {
    if mark == PENDING_FLAG_SETTLING {
        return PENDING.remove(key).is_ok();
    }
    let Some(tombstone) = PENDING_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch entry, used by nothing else until the program ends.
    let tombstone = unsafe { &mut *tombstone };
    *tombstone = *pending;
    if PENDING.remove(key).is_err() {
        return false;
    }
    tombstone.flags |= mark;
    if PENDING
        .insert(key, tombstone, u64::from(aya_ebpf::bindings::BPF_NOEXIST))
        .is_err()
    {
        count(KernelCounter::TombstoneLost);
    }
    true
}

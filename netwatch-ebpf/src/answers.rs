//! Ingress: match answers and rejections to the pending requests they answer.

use aya_ebpf::{bindings::__sk_buff, helpers::bpf_ktime_get_ns, programs::TcContext};
use netwatch_common::{
    DNS_PORT, KernelCounter, PENDING_FLAG_LATE, PENDING_FLAG_REJECTED, Reason, RequestKey,
    latency_bucket, proto,
};

use crate::{
    maps::{PENDING, TARGETS, add, count, timeout_ns},
    packet::{
        self, Copied, ICMP_HEADER_LEN, InPlace, Ip, Reader, TCP_FLAGS_OFFSET, UDP_HEADER_LEN, read,
        tcp_flags,
    },
};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_DEST_UNREACHABLE: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// What came back for a request.
#[derive(Clone, Copy)]
enum Outcome {
    Answer,
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
}

#[inline(always)]
pub fn on_ingress(ctx: &TcContext) {
    let Some(ip) = packet::parse(ctx) else { return };
    match ip.proto {
        proto::TCP => {
            let Some(flags) = read::<u8>(ctx, ip.l4 + TCP_FLAGS_OFFSET) else {
                return;
            };
            // The common path (data, ACKs) ends here.
            if flags & (tcp_flags::SYN | tcp_flags::RST) != 0 {
                tcp_answer(ctx, &ip, flags);
            }
        }
        proto::UDP => {
            let Some(port) = read::<[u8; 2]>(ctx, ip.l4) else {
                return;
            };
            if u16::from_be_bytes(port) == DNS_PORT {
                dns_response(ctx, &ip);
            }
        }
        proto::ICMP if !ip.v6 => icmp(ctx, &ip, false),
        proto::ICMPV6 if ip.v6 => icmp(ctx, &ip, true),
        _ => {}
    }
}

#[inline(always)]
fn tcp_answer(ctx: &TcContext, ip: &Ip, flags: u8) {
    let outcome = if flags & tcp_flags::RST != 0 {
        // RFC 9293 §3.10.7.3: in SYN-SENT a reset is acceptable only if it ACKs our SYN.
        if flags & tcp_flags::ACK == 0 {
            return;
        }
        Outcome::Reject(Reason::TCP_RESET)
    } else if flags & tcp_flags::ACK != 0 {
        Outcome::Answer
    } else {
        // A SYN coming in: someone connecting to us, not an answer.
        return;
    };
    // Ports, sequence number, acknowledgement number.
    let mut key = RequestKey::zeroed();
    let (Some(header), Some(())) = (
        read::<[u8; 12]>(ctx, ip.l4),
        packet::addresses_into::<InPlace>(ctx, ip, &mut key.remote, &mut key.local),
    ) else {
        count(KernelCounter::Malformed);
        return;
    };
    key.remote_port = u16::from_be_bytes([header[0], header[1]]);
    key.local_port = u16::from_be_bytes([header[2], header[3]]);
    key.proto = proto::TCP;
    let ack = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
    resolve(&key, outcome, Check::AcksSyn(ack));
}

#[inline(always)]
fn dns_response(ctx: &TcContext, ip: &Ip) {
    // UDP ports, then the DNS id and flags.
    let mut key = RequestKey::zeroed();
    let (Some(udp), Some(dns), Some(())) = (
        read::<[u8; 4]>(ctx, ip.l4),
        read::<[u8; 3]>(ctx, ip.l4 + UDP_HEADER_LEN),
        packet::addresses_into::<InPlace>(ctx, ip, &mut key.remote, &mut key.local),
    ) else {
        count(KernelCounter::Malformed);
        return;
    };
    if dns[2] & 0x80 == 0 {
        // QR clear: a query coming in (this host serves DNS), not an answer.
        return;
    }
    key.remote_port = DNS_PORT;
    key.local_port = u16::from_be_bytes([udp[2], udp[3]]);
    key.tag = u16::from_be_bytes([dns[0], dns[1]]);
    key.proto = proto::UDP;
    resolve(&key, Outcome::Answer, Check::Key);
}

#[inline(always)]
fn icmp(ctx: &TcContext, ip: &Ip, v6: bool) {
    // Type, code, checksum, then identifier and sequence (echo) or unused (errors).
    let Some(header) = read::<[u8; 8]>(ctx, ip.l4) else {
        return;
    };
    let [kind, code, ..] = header;
    let (echo_reply, unreachable, proto) = if v6 {
        (ICMPV6_ECHO_REPLY, ICMPV6_DEST_UNREACHABLE, proto::ICMPV6)
    } else {
        (ICMP_ECHO_REPLY, ICMP_DEST_UNREACHABLE, proto::ICMP)
    };
    if kind == echo_reply {
        let mut key = RequestKey::zeroed();
        if packet::addresses_into::<InPlace>(ctx, ip, &mut key.remote, &mut key.local).is_none() {
            count(KernelCounter::Malformed);
            return;
        }
        key.local_port = u16::from_be_bytes([header[4], header[5]]);
        key.tag = u16::from_be_bytes([header[6], header[7]]);
        key.proto = proto;
        resolve(&key, Outcome::Answer, Check::Key);
        return;
    }
    if (!v6 && kind == ICMP_DEST_UNREACHABLE && code == ICMP_FRAG_NEEDED)
        || (v6 && kind == ICMPV6_PACKET_TOO_BIG)
    {
        // Path-MTU discovery at work (RFC 1191, RFC 8201): the sender retries smaller, the
        // request is not refused.
        count(KernelCounter::PathMtu);
        return;
    }
    if kind == unreachable {
        let reason = if v6 {
            Reason::icmp6_unreachable(code)
        } else {
            Reason::icmp_unreachable(code)
        };
        // The quoted header is parsed in a function of its own, verified once for any
        // offset: inlined here, its paths multiplied with the outer header's (658,578
        // verified instructions of the 1,000,000 allowed).
        #[expect(
            clippy::cast_possible_truncation,
            reason = "offsets are below 64 KiB, and quoted_rejection bounds them"
        )]
        let quoted_at = (ip.l4 + ICMP_HEADER_LEN) as u32;
        quoted_rejection(ctx.skb.skb, quoted_at, u32::from(v6), u32::from(reason));
    }
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
) -> i32 {
    if quoted_at > MAX_QUOTE_OFFSET {
        return 0;
    }
    let ctx = TcContext::new(skb);
    let quoted_at = quoted_at as usize;
    let quoted = if v6 != 0 {
        packet::ipv6::<Copied>(&ctx, quoted_at)
    } else {
        packet::ipv4::<Copied>(&ctx, quoted_at)
    };
    let Some(quoted) = quoted else {
        count(KernelCounter::ShortQuote);
        return 0;
    };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "a Reason code, passed widened"
    )]
    rejected(&ctx, &quoted, reason as u8);
    0
}

/// An ICMP error quoting `quoted`, the header of a packet we sent: the request it rejects.
#[inline(always)]
fn rejected(ctx: &TcContext, quoted: &Ip, reason: u8) {
    // In the quote, the source is us and the destination the remote.
    let mut key = RequestKey::zeroed();
    if packet::addresses_into::<Copied>(ctx, quoted, &mut key.local, &mut key.remote).is_none() {
        count(KernelCounter::ShortQuote);
        return;
    }
    let outcome = Outcome::Reject(reason);
    match quoted.proto {
        proto::TCP => {
            // Ports and sequence number: the 8 bytes every ICMP error must quote.
            let Some(tcp) = Copied::get::<[u8; 8]>(ctx, quoted.l4) else {
                count(KernelCounter::ShortQuote);
                return;
            };
            key.remote_port = u16::from_be_bytes([tcp[2], tcp[3]]);
            key.local_port = u16::from_be_bytes([tcp[0], tcp[1]]);
            key.tag = 0;
            key.proto = proto::TCP;
            let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
            resolve_out_of_line(&key, outcome, Check::QuotesSyn(seq));
        }
        proto::UDP => {
            let Some(udp) = Copied::get::<[u8; 4]>(ctx, quoted.l4) else {
                count(KernelCounter::ShortQuote);
                return;
            };
            if u16::from_be_bytes([udp[2], udp[3]]) != DNS_PORT {
                return;
            }
            // The DNS id sits just past the 8 bytes RFC 792 guarantees; Linux and RFC 1812
            // routers quote more, a router quoting less leaves the request unidentifiable.
            let Some(id) = Copied::get::<[u8; 2]>(ctx, quoted.l4 + UDP_HEADER_LEN) else {
                count(KernelCounter::ShortQuote);
                return;
            };
            key.remote_port = DNS_PORT;
            key.local_port = u16::from_be_bytes([udp[0], udp[1]]);
            key.tag = u16::from_be_bytes(id);
            key.proto = proto::UDP;
            resolve_out_of_line(&key, outcome, Check::Key);
        }
        proto::ICMP | proto::ICMPV6 => {
            let Some(echo) = Copied::get::<[u8; 8]>(ctx, quoted.l4) else {
                count(KernelCounter::ShortQuote);
                return;
            };
            let expected = if quoted.v6 {
                ICMPV6_ECHO_REQUEST
            } else {
                ICMP_ECHO_REQUEST
            };
            if echo[0] != expected || (quoted.proto == proto::ICMPV6) != quoted.v6 {
                return;
            }
            key.remote_port = 0;
            key.local_port = u16::from_be_bytes([echo[4], echo[5]]);
            key.tag = u16::from_be_bytes([echo[6], echo[7]]);
            key.proto = quoted.proto;
            resolve_out_of_line(&key, outcome, Check::Key);
        }
        _ => {}
    }
}

/// Settles the pending request `key` with `outcome`, exactly once.
///
/// Out of line, in [`settle`], a global BPF function like [`quoted_rejection`]: verified
/// once, and one frame on the stack rather than a copy in each caller's.
///
/// Whoever deletes the entry owns the outcome (a duplicate answer on another CPU loses the
/// delete and counts nothing). After the timeout the request already is, or is about to be,
/// counted unanswered by userspace; the answer is counted late, and the entry comes back
/// flagged as a tombstone so retransmits are still recognised.
#[inline(always)]
fn resolve(key: &RequestKey, outcome: Outcome, check: Check) {
    let (rejection, reason, check, value) = scalars(outcome, check);
    settle_here(key, rejection, reason, check, value);
}

/// [`resolve`] through the global function [`settle`]: for [`quoted_rejection`], whose
/// stack frame sits on top of the classifier's.
#[inline(always)]
fn resolve_out_of_line(key: &RequestKey, outcome: Outcome, check: Check) {
    let (rejection, reason, check, value) = scalars(outcome, check);
    settle(key, rejection, reason, check, value);
}

#[inline(always)]
fn scalars(outcome: Outcome, check: Check) -> (u32, u32, u32, u32) {
    let (rejection, reason) = match outcome {
        Outcome::Answer => (0, 0),
        Outcome::Reject(reason) => (1, u32::from(reason)),
    };
    let (check, value) = match check {
        Check::Key => (CHECK_KEY, 0),
        Check::AcksSyn(ack) => (CHECK_ACKS_SYN, ack),
        Check::QuotesSyn(seq) => (CHECK_QUOTES_SYN, seq),
    };
    (rejection, reason, check, value)
}

const CHECK_KEY: u32 = 0;
const CHECK_ACKS_SYN: u32 = 1;
const CHECK_QUOTES_SYN: u32 = 2;

/// [`resolve`], its arguments spelled as the scalars a global function can take.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn settle(
    key: *const RequestKey,
    rejection: u32,
    reason: u32,
    check: u32,
    value: u32,
) -> i32 {
    // SAFETY: the verifier passes a pointer to 40 readable bytes, or null.
    let Some(key) = (unsafe { key.as_ref() }) else {
        return 0;
    };
    settle_here(key, rejection, reason, check, value)
}

#[inline(always)]
fn settle_here(key: &RequestKey, rejection: u32, reason: u32, check: u32, value: u32) -> i32 {
    let Some(pending) = PENDING.get_ptr_mut(key) else {
        count(if rejection == 0 {
            KernelCounter::UnmatchedAnswer
        } else {
            KernelCounter::UnmatchedRejection
        });
        return 0;
    };
    // SAFETY: a map value pointer, valid for this program run.
    let pending = unsafe { &mut *pending };
    if pending.flags & PENDING_FLAG_REJECTED != 0 {
        // Already settled by an earlier rejection; this answers a retransmit of it.
        return 0;
    }
    let valid = match check {
        // RFC 9293 §3.10.7.3 wants ack = ISN + 1; with TCP Fast Open (RFC 7413 §4.2.1) a
        // server that takes the SYN's data acknowledges it too, up to ISN + 1 + its length.
        CHECK_ACKS_SYN => {
            value.wrapping_sub(pending.tcp_seq.wrapping_add(1))
                <= u32::from(pending.syn_payload_len)
        }
        CHECK_QUOTES_SYN => value == pending.tcp_seq,
        _ => true,
    };
    if !valid {
        count(KernelCounter::InvalidAnswer);
        return 0;
    }
    let Some(counters) = TARGETS.get_ptr_mut(pending.target_slot) else {
        return 0;
    };
    // SAFETY: as above.
    let counters = unsafe { &mut *counters };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let elapsed = now.wrapping_sub(pending.first_sent_ns);
    counters.last_answer_ns = now;
    let late = elapsed > timeout_ns();
    if late && pending.flags & PENDING_FLAG_LATE != 0 {
        // The request was answered late already: this answers a retransmit of it.
        count(KernelCounter::LateDuplicate);
        return 0;
    }
    if !late && rejection == 0 {
        // The common case: answered in time. Whoever deletes the entry owns the outcome.
        if PENDING.remove(key).is_err() {
            return 0;
        }
        add(&mut counters.answered, 1);
        if let Some(bucket) = counters.latency.get_mut(latency_bucket(elapsed)) {
            add(bucket, 1);
        }
        return 0;
    }
    // Rejected in time, or anything after the deadline: settled, but the entry stays as a
    // tombstone (flagged) so retransmits of the request are still recognised. Copy before
    // the delete frees the value; the delete makes the outcome exactly-once across CPUs. A
    // retransmit in the nanoseconds between the delete and the insert would count as a new
    // request; retransmits come seconds apart.
    let mut tombstone = *pending;
    if PENDING.remove(key).is_err() {
        if late {
            count(KernelCounter::LateDuplicate);
        }
        return 0;
    }
    if late {
        // Userspace counts the request unanswered (it was, by the deadline); the late
        // answer says the remote is slow, not unreachable. Its latency is kept so the
        // report can say how slow.
        add(&mut counters.late, 1);
        if rejection == 0
            && let Some(bucket) = counters.latency.get_mut(latency_bucket(elapsed))
        {
            add(bucket, 1);
        }
        tombstone.flags |= PENDING_FLAG_LATE;
    } else {
        add(&mut counters.rejected, 1);
        add(&mut counters.rejected_by_reason[(reason & 31) as usize], 1);
        tombstone.flags |= PENDING_FLAG_REJECTED;
    }
    if PENDING
        .insert(key, &tombstone, u64::from(aya_ebpf::bindings::BPF_NOEXIST))
        .is_err()
    {
        count(KernelCounter::TombstoneLost);
    }
    0
}

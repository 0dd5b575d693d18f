//! Egress: recognise the requests this host sends and record them as pending.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
use netwatch_common::{
    DNS_PORT, DNS_QUESTION_CAPTURE, KernelCounter, PendingRequest, RequestKey, proto,
};

use crate::{
    maps::{EEXIST, PENDING, add, count, target_counters},
    packet::{
        self, DNS_HEADER_LEN, InPlace, Ip, TCP_FLAGS_OFFSET, UDP_HEADER_LEN, read, tcp_flags,
    },
};

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;

#[inline(always)]
pub fn on_egress(ctx: &TcContext) {
    let Some(ip) = packet::parse(ctx) else { return };
    match ip.proto {
        proto::TCP => {
            let Some(flags) = read::<u8>(ctx, ip.l4 + TCP_FLAGS_OFFSET) else {
                return;
            };
            // The common path (data, ACKs) ends here.
            if flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST) == tcp_flags::SYN {
                tcp_syn(ctx, &ip);
            }
        }
        proto::UDP => {
            let Some(port) = read::<[u8; 2]>(ctx, ip.l4 + 2) else {
                return;
            };
            if u16::from_be_bytes(port) == DNS_PORT {
                dns_query(ctx, &ip);
            }
        }
        proto::ICMP if !ip.v6 => echo_request(ctx, &ip, ICMP_ECHO_REQUEST, proto::ICMP),
        proto::ICMPV6 if ip.v6 => echo_request(ctx, &ip, ICMPV6_ECHO_REQUEST, proto::ICMPV6),
        _ => {}
    }
}

#[inline(always)]
fn tcp_syn(ctx: &TcContext, ip: &Ip) {
    // Source port, destination port, sequence number.
    let (Some(header), Some((local, remote))) = (
        read::<[u8; 8]>(ctx, ip.l4),
        packet::addresses::<InPlace>(ctx, ip),
    ) else {
        count(KernelCounter::Malformed);
        return;
    };
    let key = RequestKey {
        remote,
        local,
        remote_port: u16::from_be_bytes([header[2], header[3]]),
        local_port: u16::from_be_bytes([header[0], header[1]]),
        tag: 0,
        proto: proto::TCP,
        _pad: 0,
    };
    let seq = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    track(ctx, &key, seq, None);
}

#[inline(always)]
fn dns_query(ctx: &TcContext, ip: &Ip) {
    // UDP header, then the DNS id and flags.
    let (Some(udp), Some(dns), Some((local, remote))) = (
        read::<[u8; 4]>(ctx, ip.l4),
        read::<[u8; 3]>(ctx, ip.l4 + UDP_HEADER_LEN),
        packet::addresses::<InPlace>(ctx, ip),
    ) else {
        count(KernelCounter::Malformed);
        return;
    };
    if dns[2] & 0x80 != 0 {
        // QR set: a response leaving (this host serves DNS), not a request.
        return;
    }
    let key = RequestKey {
        remote,
        local,
        remote_port: DNS_PORT,
        local_port: u16::from_be_bytes([udp[0], udp[1]]),
        tag: u16::from_be_bytes([dns[0], dns[1]]),
        proto: proto::UDP,
        _pad: 0,
    };
    track(ctx, &key, 0, Some(ip.l4 + UDP_HEADER_LEN + DNS_HEADER_LEN));
}

#[inline(always)]
fn echo_request(ctx: &TcContext, ip: &Ip, echo_request: u8, proto: u8) {
    // Type, code, checksum, identifier, sequence.
    let Some(icmp) = read::<[u8; 8]>(ctx, ip.l4) else {
        return;
    };
    if icmp[0] != echo_request || icmp[1] != 0 {
        return;
    }
    let Some((local, remote)) = packet::addresses::<InPlace>(ctx, ip) else {
        count(KernelCounter::Malformed);
        return;
    };
    let key = RequestKey {
        remote,
        local,
        remote_port: 0,
        local_port: u16::from_be_bytes([icmp[4], icmp[5]]),
        tag: u16::from_be_bytes([icmp[6], icmp[7]]),
        proto,
        _pad: 0,
    };
    track(ctx, &key, 0, None);
}

/// Records a request: a new pending entry, or a retransmit of one already pending.
#[inline(always)]
fn track(ctx: &TcContext, key: &RequestKey, tcp_seq: u32, question_at: Option<usize>) {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some((target_slot, counters)) = target_counters(&key.target()) else {
        return;
    };
    let mut pending = PendingRequest {
        first_sent_ns: now,
        last_sent_ns: now,
        tcp_seq,
        flags: 0,
        // SAFETY: `skb` is the context pointer the kernel passed in.
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        target_slot,
        question_len: 0,
        _pad: 0,
        question: [0; DNS_QUESTION_CAPTURE],
    };
    if let Some(offset) = question_at {
        pending.question_len = capture(ctx, offset, &mut pending.question);
    }
    match PENDING.insert(key, &pending, u64::from(aya_ebpf::bindings::BPF_NOEXIST)) {
        Ok(()) => add(&mut counters.requests, 1),
        Err(err) if err == -EEXIST => {
            let Some(existing) = PENDING.get_ptr_mut(key) else {
                return;
            };
            // SAFETY: a live map value, valid for this program run.
            let existing = unsafe { &mut *existing };
            if key.proto == proto::TCP && existing.tcp_seq != tcp_seq {
                // A new connection on a 4-tuple still remembered (a tombstone kept for
                // retransmits, or an attempt given up): a new initial sequence number makes
                // it a new request. Linux reuses a source port at once after a reset.
                *existing = pending;
                add(&mut counters.requests, 1);
            } else {
                // The same request again (SYN retransmit, resolver retry): one request.
                add(&mut counters.retransmits, 1);
                existing.last_sent_ns = now;
            }
        }
        Err(_) => {
            // E2BIG: the pending table is full. The request is counted, but it can never be
            // resolved, so it must not be mistaken for an unanswered one.
            add(&mut counters.requests, 1);
            add(&mut counters.untracked, 1);
            count(KernelCounter::PendingFull);
        }
    }
    counters.last_request_ns = now;
}

/// Copies up to `out.len()` bytes of the packet from `offset`; returns how many.
#[inline(always)]
fn capture(ctx: &TcContext, offset: usize, out: &mut [u8; DNS_QUESTION_CAPTURE]) -> u16 {
    let len = ctx.len() as usize;
    if offset >= len {
        return 0;
    }
    // verifier: the helper wants a length it can prove is in 1..=out.len(). LLVM knows the
    // length is >= 1 here and would drop a zero check, so the bound is checked on an opaque
    // copy. The check is on `wanted - 1` and the helper gets that same register plus one:
    // LLVM folds `wanted == 0 || wanted > N` into one test of `wanted - 1`, and verifiers
    // before 6.12 (no tracking of linked registers with an offset) do not carry that test
    // back to `wanted`: "invalid zero-sized read" on 5.10 and 6.1.
    let below = core::hint::black_box((len - offset).min(DNS_QUESTION_CAPTURE) - 1);
    if below >= DNS_QUESTION_CAPTURE {
        return 0;
    }
    let wanted = below + 1;
    // SAFETY: `out` has room for `wanted` bytes; the helper bounds-checks the packet side.
    let copied = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            offset as u32,
            out.as_mut_ptr().cast(),
            wanted as u32,
        )
    };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "at most DNS_QUESTION_CAPTURE"
    )]
    if copied == 0 { wanted as u16 } else { 0 }
}

//! Requests, recorded as pending: the ones this host sends (seen at egress) and the ones it
//! receives (seen at ingress).

use aya_ebpf::bindings::BPF_NOEXIST;
use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
#[cfg(not(feature = "no-cmpxchg"))]
use netwatch_common::PENDING_FLAG_SETTLING;
use netwatch_common::{
    DIRECTION_INGRESS, DNS_QUESTION_CAPTURE, KernelCounter, NTP_TRANSMIT_OFFSET,
    PENDING_FLAG_REJECTED, PendingRequest, RequestKey, TargetCounters, ntp_tag, proto,
};

#[cfg(not(feature = "no-cmpxchg"))]
use crate::maps::swap_flags;

use crate::{
    maps::{
        EEXIST, LOCAL_ADDRESSES, PENDING, PENDING_SCRATCH, add, count, target_counters, timeout_ns,
        untracked,
    },
    packet::{
        self, DNS_HEADER_LEN, Hook, InPlace, Ip, TCP_DATA_OFFSET_OFFSET, UDP_HEADER_LEN, read,
    },
};

/// A SYN (without ACK or RST): a connection asked for. Seen at egress, this host asks; at
/// ingress, a peer asks this host.
// Out of line (see `track`).
#[inline(never)]
pub fn tcp_syn(ctx: &TcContext, ip: &Ip, hook: Hook) {
    // Source port, destination port, sequence number; the data offset.
    let mut key = RequestKey::zeroed();
    let (Some(header), Some(data_offset), Some(())) = (
        read::<[u8; 8]>(ctx, ip.l4),
        read::<u8>(ctx, ip.l4 + TCP_DATA_OFFSET_OFFSET),
        packet::endpoints_into::<InPlace>(ctx, ip, hook, &mut key),
    ) else {
        count(KernelCounter::Malformed);
        return;
    };
    (key.local_port, key.remote_port) = hook.local_and_remote(
        u16::from_be_bytes([header[0], header[1]]),
        u16::from_be_bytes([header[2], header[3]]),
    );
    key.proto = proto::TCP;
    key.direction = hook.request_direction();
    let Some(request) = new_request(ctx) else {
        return;
    };
    request.tcp_seq = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    // TCP Fast Open (RFC 7413) puts data in the SYN; the SYN-ACK then acknowledges it too.
    // A SYN comes in one piece (never GSO), so what follows the TCP header is its data (one
    // arriving may carry Ethernet padding: a few bytes more allowed, never fewer).
    let payload = (ctx.len() as usize)
        .saturating_sub(ip.l4 + usize::from(data_offset >> 4) * 4)
        .min(usize::from(u16::MAX));
    #[expect(clippy::cast_possible_truncation, reason = "clamped to u16::MAX")]
    {
        request.syn_payload_len = payload as u16;
    }
    track(ctx, ip, &key, request);
}

/// A DNS query (QR clear) to port 53 (`ports`: source, destination): asked by this host at
/// egress, of it at ingress.
// Out of line (see `track`).
#[inline(never)]
pub fn dns_query(ctx: &TcContext, ip: &Ip, ports: [u16; 2], hook: Hook) {
    let mut key = RequestKey::zeroed();
    let (Some(id), Some(())) = (
        read::<[u8; 2]>(ctx, ip.l4 + UDP_HEADER_LEN),
        packet::endpoints_into::<InPlace>(ctx, ip, hook, &mut key),
    ) else {
        count(KernelCounter::Malformed);
        return;
    };
    (key.local_port, key.remote_port) = hook.local_and_remote(ports[0], ports[1]);
    key.tag = u16::from_be_bytes(id);
    key.proto = proto::UDP;
    key.direction = hook.request_direction();
    let Some(request) = new_request(ctx) else {
        return;
    };
    request.question_len = capture(
        ctx,
        ip.l4 + UDP_HEADER_LEN + DNS_HEADER_LEN,
        &mut request.question,
    );
    track(ctx, ip, &key, request);
}

/// An NTP client request (mode 3) to a watched NTP port (`ports`: source, destination):
/// one request per flow and transmit timestamp; the same datagram again (the same
/// timestamp) is a retransmit.
// Out of line (see `track`).
#[inline(never)]
pub fn ntp_request(ctx: &TcContext, ip: &Ip, ports: [u16; 2], hook: Hook) {
    let mut key = RequestKey::zeroed();
    // The transmit timestamp ends the 48-byte message: a shorter one is no NTP request.
    let (Some(transmit), Some(())) = (
        read::<[u8; 8]>(ctx, ip.l4 + UDP_HEADER_LEN + NTP_TRANSMIT_OFFSET),
        packet::endpoints_into::<InPlace>(ctx, ip, hook, &mut key),
    ) else {
        count(KernelCounter::Malformed);
        return;
    };
    (key.local_port, key.remote_port) = hook.local_and_remote(ports[0], ports[1]);
    key.tag = ntp_tag(transmit);
    key.proto = proto::UDP;
    key.direction = hook.request_direction();
    let Some(request) = new_request(ctx) else {
        return;
    };
    // The whole timestamp: another request whose timestamp folds to the same tag is a new
    // exchange (see `is_new_exchange`), not a retransmit.
    if let Some(first) = request.question.first_chunk_mut::<8>() {
        *first = transmit;
        request.question_len = 8;
    }
    track(ctx, ip, &key, request);
}

/// A datagram to a `--udp-port` service on a flow with nothing outstanding: a request. With
/// one outstanding it is a retransmit of it (`track` finds the key taken and the same,
/// empty, question).
// Out of line (see `track`).
#[inline(never)]
pub fn flow_request(ctx: &TcContext, ip: &Ip, ports: [u16; 2], hook: Hook) {
    let mut key = RequestKey::zeroed();
    if packet::endpoints_into::<InPlace>(ctx, ip, hook, &mut key).is_none() {
        count(KernelCounter::Malformed);
        return;
    }
    (key.local_port, key.remote_port) = hook.local_and_remote(ports[0], ports[1]);
    key.proto = proto::UDP;
    key.direction = hook.request_direction();
    let Some(request) = new_request(ctx) else {
        return;
    };
    track(ctx, ip, &key, request);
}

/// An echo request (`header`: type, code, checksum, identifier, sequence).
// Out of line (see `track`).
#[inline(never)]
pub fn echo_request(ctx: &TcContext, ip: &Ip, header: [u8; 8], hook: Hook) {
    if header[1] != 0 {
        return;
    }
    let mut key = RequestKey::zeroed();
    if packet::endpoints_into::<InPlace>(ctx, ip, hook, &mut key).is_none() {
        count(KernelCounter::Malformed);
        return;
    }
    key.local_port = u16::from_be_bytes([header[4], header[5]]);
    key.tag = u16::from_be_bytes([header[6], header[7]]);
    key.proto = ip.proto;
    key.direction = hook.request_direction();
    let Some(request) = new_request(ctx) else {
        return;
    };
    track(ctx, ip, &key, request);
}

/// The pending entry for a request seen now, for the protocol handler to fill in: this
/// CPU's [`PENDING_SCRATCH`], every field reset. Field by field: building a
/// `PendingRequest` value would put its 136 bytes on the handler's stack frame.
#[inline(always)]
fn new_request(ctx: &TcContext) -> Option<&'static mut PendingRequest> {
    let request = PENDING_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's entry, used by nothing else until the program ends.
    let request = unsafe { &mut *request };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    request.first_sent_ns = now;
    request.last_sent_ns = now;
    request.replaced_first_sent_ns = 0;
    request.tcp_seq = 0;
    request.flags = 0;
    // SAFETY: `skb` is the context pointer the kernel passed in.
    request.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    request.target_slot = 0;
    request.question_len = 0;
    request.syn_payload_len = 0;
    // Set by `track` for requests this host sends (`owners::tag`); 0 for received ones.
    request.socket_cookie = 0;
    request.cgroup_id = 0;
    request.question = [0; DNS_QUESTION_CAPTURE];
    Some(request)
}

/// Whether a request to `remote` goes to one host. Broadcast and multicast "requests" are
/// answered by others (every host on the segment, the group's members) from their own
/// addresses, so no answer can ever match them: they are not requests to a target.
#[inline(always)]
fn is_unicast(ctx: &TcContext, ip: &Ip, remote: &[u8; 16]) -> bool {
    // The destination MAC's group bit: limited (255.255.255.255) and directed broadcasts on
    // the link, and every multicast, whatever the address says. (A device without a
    // link-layer header has no MAC: its packet starts with the IP header.)
    // verifier: a word, not the MAC's first byte: LLVM turns a one-byte bound check at
    // offset 0 into `data_end > data`, from which the verifier learns no readable range.
    if ip.has_link_header()
        && read::<u64>(ctx, 0).is_some_and(|head| head.to_ne_bytes()[0] & 1 != 0)
    {
        return false;
    }
    if netwatch_common::is_ipv4_mapped(remote) {
        // 224.0.0.0/4 multicast; 240.0.0.0/4 reserved, 255.255.255.255 in it.
        remote[12] < 224
    } else {
        remote[0] != 0xff
    }
}

/// Whether `request` is a new exchange under the key of `existing`, rather than the same
/// request sent again.
#[inline(always)]
fn is_new_exchange(key: &RequestKey, existing: &PendingRequest, request: &PendingRequest) -> bool {
    if key.proto == proto::TCP {
        // A new initial sequence number: a new connection on a 4-tuple still remembered (a
        // tombstone kept for retransmits, or an attempt given up). Linux reuses a source port
        // at once after a reset.
        return existing.tcp_seq != request.tcp_seq;
    }
    if key.proto == proto::UDP {
        // A forwarder with a fixed source port reuses (port, id) for other names; a resolver
        // retrying sends the same question again. NTP keeps its whole transmit timestamp
        // here, a `--udp-port` flow nothing: every datagram on it is the same request.
        return existing.question_len != request.question_len
            || !same_question(&existing.question, &request.question);
    }
    false
}

/// Compares two captured questions eight bytes at a time (constant bound, no byte loop).
#[inline(always)]
fn same_question(a: &[u8; DNS_QUESTION_CAPTURE], b: &[u8; DNS_QUESTION_CAPTURE]) -> bool {
    // Whole words only: a slice comparison of the rest compiles to a call to `memcmp`, a BPF
    // function of its own, and a frame more on the deepest call chain (5.10 rounds every
    // frame up to 32 bytes and refuses a chain over 512).
    const _: () = assert!(DNS_QUESTION_CAPTURE.is_multiple_of(4));
    let mut offset = 0;
    while offset + 8 <= DNS_QUESTION_CAPTURE {
        // SAFETY: offset + 8 <= len for both arrays; unaligned reads of plain bytes.
        let (x, y) = unsafe {
            (
                core::ptr::read_unaligned(a.as_ptr().add(offset).cast::<u64>()),
                core::ptr::read_unaligned(b.as_ptr().add(offset).cast::<u64>()),
            )
        };
        if x != y {
            return false;
        }
        offset += 8;
    }
    if offset + 4 <= DNS_QUESTION_CAPTURE {
        // SAFETY: as above, four bytes.
        let (x, y) = unsafe {
            (
                core::ptr::read_unaligned(a.as_ptr().add(offset).cast::<u32>()),
                core::ptr::read_unaligned(b.as_ptr().add(offset).cast::<u32>()),
            )
        };
        return x == y;
    }
    true
}

/// Records a request: a new pending entry, or a retransmit of one already pending.
///
/// Out of line, like the handlers that call it: static BPF functions, each with a frame of
/// its own, so their locals stay off the classifier's frame, which the answer path's
/// functions stack on (512 bytes for the whole call chain).
#[inline(never)]
fn track(ctx: &TcContext, ip: &Ip, key: &RequestKey, request: &mut PendingRequest) {
    if key.direction == DIRECTION_INGRESS {
        // Asked of this host only when sent to one of its addresses: a router sees requests
        // for others pass by, whose answers need not come back this way.
        if LOCAL_ADDRESSES.get_ptr(&key.local).is_none() {
            count(KernelCounter::NotForThisHost);
            return;
        }
    } else if !is_unicast(ctx, ip, &key.remote) {
        count(KernelCounter::NotUnicast);
        return;
    } else {
        crate::owners::tag(ctx, request);
    }
    let now = request.first_sent_ns;
    let Some((target_slot, counters)) = target_counters(&key.target()) else {
        return;
    };
    request.target_slot = target_slot;
    if request.socket_cookie != 0 {
        // On the target's line that `last_request_ns` dirties anyway: the process behind an
        // answered request is still named after its entry is gone.
        counters.last_socket_cookie = request.socket_cookie;
    }
    match PENDING.insert(key, &*request, u64::from(BPF_NOEXIST)) {
        Ok(()) => add(&mut counters.requests, 1),
        Err(err) if err == -EEXIST => {
            let Some(existing) = PENDING.get_ptr_mut(key) else {
                // Settled and removed in between: this one was sent after its answer.
                add(&mut counters.retransmits, 1);
                return;
            };
            // SAFETY: a live map value, valid for this program run.
            let existing = unsafe { &mut *existing };
            if is_new_exchange(key, existing, request) {
                replace(key, existing, request, counters);
            } else {
                // The same request again (SYN retransmit, resolver retry): one request.
                add(&mut counters.retransmits, 1);
                existing.last_sent_ns = now;
            }
        }
        Err(_) => untracked(counters),
    }
    counters.last_request_ns = now;
}

/// Puts `request` where `existing`, an earlier exchange under the same key, was.
///
/// Taking the old entry over ([`take_over`]) makes its settlement exactly-once: if an answer
/// on another CPU claims it first, that answer owns it; otherwise this path does. An earlier
/// request still within its deadline was given up by the client (`abandoned`); one past it
/// is, or is about to be, unanswered: the new entry carries its send time so userspace
/// counts it if it had not yet. Overwriting in place instead would let a late delete by the
/// old exchange's answer remove the new request.
#[inline(always)]
fn replace(
    key: &RequestKey,
    existing: &mut PendingRequest,
    request: &mut PendingRequest,
    counters: &mut TargetCounters,
) {
    // SAFETY: an aligned field of a live map value; read once (see `take_over`).
    let old_flags = unsafe { core::ptr::read_volatile(&raw const existing.flags) };
    let old_first_sent = existing.first_sent_ns;
    let taken = take_over(key, existing, old_flags);
    if let TakeOver::Ours(flags) = taken
        && flags & PENDING_FLAG_REJECTED == 0
    {
        if request.first_sent_ns.wrapping_sub(old_first_sent) <= timeout_ns() {
            add(&mut counters.abandoned, 1);
            count(KernelCounter::Abandoned);
        } else {
            request.replaced_first_sent_ns = old_first_sent;
        }
    }
    match PENDING.insert(key, &*request, u64::from(BPF_NOEXIST)) {
        Ok(()) => add(&mut counters.requests, 1),
        // The old entry is still there, another CPU deleting it this instant: the request is
        // counted, and never judged (it could not be tracked).
        Err(err) if err == -EEXIST && matches!(taken, TakeOver::Busy) => untracked(counters),
        // The same new request inserted by another CPU in between.
        Err(err) if err == -EEXIST => add(&mut counters.retransmits, 1),
        Err(_) => untracked(counters),
    }
}

/// What taking an old entry over found.
#[derive(Clone, Copy)]
enum TakeOver {
    /// This CPU took the old exchange's outcome, and removed its entry: the flags it had.
    Ours(u32),
    /// Another CPU (its answer, another new exchange) took it and is removing it: it is not
    /// touched (removing it could remove what that CPU puts there next).
    #[cfg_attr(
        feature = "no-cmpxchg",
        expect(dead_code, reason = "claims are deletes there")
    )]
    Busy,
    /// Removed already by another CPU.
    #[cfg_attr(
        not(feature = "no-cmpxchg"),
        expect(dead_code, reason = "claims are compare-and-swaps there")
    )]
    Gone,
}

/// Takes `existing` (its flags as read: `flags`) over to make room for a new exchange: claims
/// it (see `answers::claim`) and removes it. A tombstone's flags may change under the claim
/// (a rejection, a late answer): the claim is tried again on what they became.
#[cfg(not(feature = "no-cmpxchg"))]
#[inline(always)]
fn take_over(key: &RequestKey, existing: &mut PendingRequest, flags: u32) -> TakeOver {
    let mut flags = flags;
    for _ in 0..3 {
        if flags & PENDING_FLAG_SETTLING != 0 {
            return TakeOver::Busy;
        }
        if swap_flags(existing, flags, flags | PENDING_FLAG_SETTLING) {
            let _ = PENDING.remove(key);
            return TakeOver::Ours(flags);
        }
        // SAFETY: an aligned field of a live map value.
        flags = unsafe { core::ptr::read_volatile(&raw const existing.flags) };
    }
    TakeOver::Busy
}

/// [`take_over`] for kernels without compare-and-swap: whoever deletes the entry owns it.
#[cfg(feature = "no-cmpxchg")]
#[inline(always)]
fn take_over(key: &RequestKey, _existing: &mut PendingRequest, flags: u32) -> TakeOver {
    if PENDING.remove(key).is_ok() {
        TakeOver::Ours(flags)
    } else {
        TakeOver::Gone
    }
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
    #[expect(
        clippy::cast_possible_truncation,
        reason = "offsets within a packet and at most DNS_QUESTION_CAPTURE bytes"
    )]
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

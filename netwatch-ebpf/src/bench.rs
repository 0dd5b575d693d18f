//! Reference programs for `cargo xtask bench`: what any request tracker, any program on
//! `skb:kfree_skb` or any follower of `tcp_retransmit_skb` must pay at the least, measured
//! beside the real programs in the same run. Never loaded by netwatch. The classifiers are
//! only run with `BPF_PROG_TEST_RUN` (or attached to the bench's own veth pair); the
//! tracepoint ones are attached beside netwatch's for one bench section.
//!
//! The tc references' key is the 40 bytes after the Ethernet header (an IPv4 + TCP header:
//! addresses, ports and sequence number make it distinct per packet), copied as is: the
//! cheapest way to get a key of the real key's width out of a packet.
//!
//! The drop references run on every `kfree_skb` of a drop storm beside netwatch's drop
//! program: the empty program (the tracepoint's floor), the packet's headers read (the
//! `sk_buff` fields that locate them, then the headers: what any program must read to know
//! what a packet is), and the minimal counter (those reads and one hash add).
#![no_std]
#![no_main]
#![allow(
    clippy::inline_always,
    reason = "BPF: a helper call is a frame on a 512-byte call chain; what must be inlined says so"
)]
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "BPF: a map key or value passed by reference goes as a pointer; by value it is \
              copied onto the caller's frame first, and the 512-byte chain counts it"
)]
#![allow(
    clippy::needless_pass_by_value,
    reason = "aya's program macros hand the context over by value"
)]
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core::intrinsics::atomic_xadd, as netwatch's own"
)]

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, generated},
    macros::{classifier, map, raw_tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::{RawTracePointContext, TcContext},
};
use netwatch_common::{
    PENDING_CAPACITY, PendingRequest, RETRANSMITS_CAPACITY, RequestKey, RetransmitConfig,
    Retransmits,
};

const PASS_THROUGH: i32 = -1;
const ETH_HEADER_LEN: usize = 14;

/// Same type, size, key and value width as the real `PENDING`.
#[map]
static REFERENCE: HashMap<RequestKey, PendingRequest> =
    HashMap::with_max_entries(PENDING_CAPACITY, 0);

#[inline(always)]
fn key(ctx: &TcContext) -> Option<RequestKey> {
    let start = ctx.data() + ETH_HEADER_LEN;
    if start + size_of::<RequestKey>() > ctx.data_end() {
        return None;
    }
    // SAFETY: bounds-checked above; RequestKey is integers only, any bytes are a valid value.
    Some(unsafe { core::ptr::read_unaligned(start as *const RequestKey) })
}

/// An empty classifier: the cost of running any program at all.
#[classifier]
pub fn bench_floor(_ctx: TcContext) -> i32 {
    PASS_THROUGH
}

/// One clock read plus one update of a map like `PENDING`.
#[classifier]
pub fn bench_track(ctx: TcContext) -> i32 {
    if let Some(key) = key(&ctx) {
        // SAFETY: no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        let value = PendingRequest::sent_at(now);
        let _ = REFERENCE.insert(&key, &value, 0);
    }
    PASS_THROUGH
}

/// One lookup plus one delete in a map like `PENDING`.
#[classifier]
pub fn bench_match(ctx: TcContext) -> i32 {
    if let Some(key) = key(&ctx)
        && REFERENCE.get_ptr(&key).is_some()
    {
        let _ = REFERENCE.remove(&key);
    }
    PASS_THROUGH
}

/// `bench_match` that also times the answer, as a matcher that reports latency must: one
/// clock read and the request's age beside the lookup and the delete. Not the contract's
/// reference: the bound it shows is what the clock alone costs an answer on this machine.
#[classifier]
pub fn bench_match_timed(ctx: TcContext) -> i32 {
    if let Some(key) = key(&ctx)
        && let Some(pending) = REFERENCE.get_ptr(&key)
    {
        // SAFETY: no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        // SAFETY: a map value pointer, valid for this program run.
        let age = now.wrapping_sub(unsafe { (*pending).first_sent_ns });
        let _ = core::hint::black_box(age);
        let _ = REFERENCE.remove(&key);
    }
    PASS_THROUGH
}

/// As netwatch's `RETRANSMIT_CONFIG`, set by the bench from the same BTF.
#[unsafe(no_mangle)]
static RETRANSMIT_CONFIG: RetransmitConfig = RetransmitConfig::disabled();

/// Same type, size, key and value as netwatch's `RETRANSMITS`.
#[map]
static RETRANSMIT_REFERENCE: HashMap<u64, Retransmits> =
    HashMap::with_max_entries(RETRANSMITS_CAPACITY, 0);

/// An empty program on `tcp:tcp_retransmit_skb`: the cost of running any program there.
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn bench_retransmit_floor(_ctx: RawTracePointContext) -> i32 {
    0
}

/// The least a follower of retransmissions pays: the fields netwatch's program reads (the
/// socket's addresses, ports, family and namespace, the segment's length and sequence, the
/// five `tcp_sock` fields), read the same way, and one update of a map like its own.
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn bench_retransmit_minimal(ctx: RawTracePointContext) -> i32 {
    let sk = ctx.arg::<u64>(0) as *const u8;
    let skb = ctx.arg::<u64>(1) as *const u8;
    let _ = minimal_update(sk, skb);
    0
}

macro_rules! config {
    ($field:ident) => {{
        // SAFETY: reading a plain static; volatile: the loader rewrites it.
        unsafe { core::ptr::read_volatile(&raw const RETRANSMIT_CONFIG.$field) }
    }};
}

#[inline(always)]
fn field<T>(base: *const u8, offset: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }.ok()
}

#[inline(always)]
fn minimal_update(sk: *const u8, skb: *const u8) -> Option<()> {
    let len = field::<u32>(skb, config!(skb_len))?;
    let family = field::<u16>(sk, config!(family))?;
    let net = field::<u64>(sk, config!(sk_net))?;
    let inum = field::<u32>(net as *const u8, config!(net_inum))?;
    let remote_port = field::<u16>(sk, config!(dport))?;
    let local_port = field::<u16>(sk, config!(num))?;
    let remote = field::<[u8; 16]>(sk, config!(v6_daddr))?;
    let local = field::<[u8; 16]>(sk, config!(v6_rcv_saddr))?;
    let seq = field::<u32>(skb, config!(skb_cb))?;
    let snd_una = field::<u32>(sk, config!(snd_una))?;
    let snd_wnd = field::<u32>(sk, config!(snd_wnd))?;
    let mss = field::<u32>(sk, config!(mss_cache))?;
    let header = field::<u16>(sk, config!(tcp_header_len))?;
    let delivered = field::<u32>(sk, config!(delivered))?;
    let bytes_acked = field::<u64>(sk, config!(bytes_acked))?;
    let mut value = Retransmits::new(remote, local, (remote_port, local_port), header, 0);
    value.head_seq = seq;
    value.mss = mss;
    value.delivered = delivered;
    value.bytes_acked = bytes_acked;
    value.window_limited = snd_wnd ^ snd_una ^ len ^ inum ^ u32::from(family);
    RETRANSMIT_REFERENCE.insert(&(sk as u64), &value, 0).ok()
}

/// Where the headers are: offsets in `struct sk_buff` of the smallest window holding its
/// `protocol`, `network_header` and `head` (the window's offset, then each field's within
/// it), set by the bench from the running kernel's BTF (as netwatch's `DropConfig`).
#[unsafe(no_mangle)]
static BENCH_SKB: [u32; 4] = [0; 4];

/// Bytes of `struct sk_buff` read: the three fields above span 24 to 32 bytes.
const SKB_READ: usize = 32;
/// Bytes of the packet read from its network header, as netwatch's drop program does.
const PACKET_READ: usize = 56;

/// Drops counted by the minimal counter: (reason, destination port) → drops.
#[map]
static DROP_COUNTS: HashMap<u64, u64> = HashMap::with_max_entries(1024, 0);

/// The `sk_buff` window and the headers, per CPU (off the stack, as netwatch's).
#[map]
static DROP_READS: PerCpuArray<[u8; SKB_READ + PACKET_READ]> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn skb_offset(index: usize) -> usize {
    // SAFETY: reading a plain static, volatile as netwatch's configuration.
    unsafe { core::ptr::read_volatile(&raw const BENCH_SKB[index]) as usize }
}

/// The packet's headers read into this CPU's buffer, as any drop program must before it
/// knows what a packet is: the `sk_buff` fields that locate them, then the headers. The
/// buffer, or `None` when a read faults.
#[inline(always)]
fn read_headers(skb: *const u8) -> Option<*const u8> {
    let buffer = DROP_READS.get_ptr_mut(0)?.cast::<u8>();
    #[expect(clippy::cast_possible_truncation, reason = "a few dozen bytes")]
    // SAFETY: the helper writes SKB_READ bytes into this CPU's buffer, which has them, and
    // checks the kernel address.
    let status = unsafe {
        generated::bpf_probe_read_kernel(
            buffer.cast(),
            SKB_READ as u32,
            skb.wrapping_add(skb_offset(0)).cast(),
        )
    };
    let (protocol, network_header, head) = (skb_offset(1), skb_offset(2), skb_offset(3));
    if status != 0
        || protocol + 2 > SKB_READ
        || network_header + 2 > SKB_READ
        || head + 8 > SKB_READ
    {
        return None;
    }
    // SAFETY: within the buffer (checked above); unaligned reads of plain integers.
    let (network_header, head) = unsafe {
        (
            core::ptr::read_unaligned(buffer.add(network_header).cast::<u16>()),
            core::ptr::read_unaligned(buffer.add(head).cast::<u64>()),
        )
    };
    #[expect(clippy::cast_possible_truncation, reason = "a few dozen bytes")]
    // SAFETY: as above, PACKET_READ bytes after the window.
    let status = unsafe {
        generated::bpf_probe_read_kernel(
            buffer.wrapping_add(SKB_READ).cast(),
            PACKET_READ as u32,
            (head as *const u8)
                .wrapping_add(usize::from(network_header))
                .cast(),
        )
    };
    (status == 0).then_some(buffer.cast_const())
}

/// An empty program on `skb:kfree_skb`: the tracepoint's own cost per drop.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn bench_drop_floor(_ctx: RawTracePointContext) -> i32 {
    0
}

/// The headers read, nothing more: the floor plus one header read.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn bench_drop_headers(ctx: RawTracePointContext) -> i32 {
    let _ = core::hint::black_box(read_headers(ctx.arg::<u64>(0) as *const u8));
    0
}

/// The minimal counter: the headers read, and one hash add (drops by reason and IPv4
/// destination port, whatever the packet is).
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn bench_drop_counter(ctx: RawTracePointContext) -> i32 {
    let Some(headers) = read_headers(ctx.arg::<u64>(0) as *const u8) else {
        return 0;
    };
    // SAFETY: the destination port of an IPv4 header without options, within the buffer.
    let port = unsafe { core::ptr::read_unaligned(headers.add(SKB_READ + 22).cast::<u16>()) };
    let key = (ctx.arg::<u64>(2) << 16) | u64::from(port);
    if let Some(count) = DROP_COUNTS.get_ptr_mut(&key) {
        // SAFETY: a map value pointer, valid for this program run; aligned.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(count, 1) };
    } else {
        let _ = DROP_COUNTS.insert(&key, &1, u64::from(BPF_NOEXIST));
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

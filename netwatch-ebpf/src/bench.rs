//! Reference programs for `cargo xtask bench`: what any request tracker must pay at the
//! least, measured beside the real programs in the same run. The classifiers are only run
//! with `BPF_PROG_TEST_RUN` (or attached to the bench's own veth pair); the
//! `tcp_retransmit_skb` ones are attached beside netwatch's for one bench section.
//!
//! Their key is the 40 bytes after the Ethernet header (an IPv4 + TCP header: addresses,
//! ports and sequence number make it distinct per packet), copied as is: the cheapest way to
//! get a key of the real key's width out of a packet.
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

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{classifier, map, raw_tracepoint},
    maps::HashMap,
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

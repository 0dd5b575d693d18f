//! Reference programs for `cargo xtask bench`: what any request tracker must pay at the
//! least, measured beside the real programs in the same run. Never attached anywhere.
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
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::HashMap,
    programs::TcContext,
};
use netwatch_common::{PENDING_CAPACITY, PendingRequest, RequestKey};

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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

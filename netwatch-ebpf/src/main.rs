//! netwatch's kernel programs: tc classifiers, tracepoint programs and cgroup socket programs.
//!
//! `netwatch_sock_*`, `netwatch_connect*` and `netwatch_sendmsg*`, on the cgroup2 root,
//! record which process owns each socket (see [`owners`]).
//!
//! `netwatch_drops`, on the `skb:kfree_skb` raw tracepoint, counts the watched packets this
//! host itself drops, per target and kernel drop reason (see [`drops`]).
//!
//! `netwatch_retransmits`, on the `tcp:tcp_retransmit_skb` raw tracepoint, follows the TCP
//! connections whose segments are retransmitted, for path-MTU stalls (see [`retransmits`]).
//!
//! Both hooks run the same code ([`classify::packet`]), told which way the packet goes and
//! where its IP header is: `netwatch_egress` and `netwatch_ingress` on Ethernet (and
//! loopback) devices, `netwatch_l3_egress` and `netwatch_l3_ingress` on devices without a
//! link-layer header.
//! Requests (DNS and NTP queries, datagrams to `--udp-port` services, TCP SYNs, ICMP echo
//! requests) are recorded in [`maps::PENDING`]:
//! leaving, the ones this host sends; arriving, the ones it receives. Answers and rejections
//! settle them, arriving for the first, leaving for the second, and count the outcome per
//! target in [`maps::TARGETS`]. Requests nobody answers stay pending: userspace finds them
//! once `--timeout` has passed.
//!
//! Both programs only observe. They always return `TC_ACT_UNSPEC` so the packet continues
//! exactly as if they were not there: with tcx that is `TCX_NEXT` (run the next program),
//! with a clsact filter it means "no verdict, go on classifying".
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
// Atomic adds and compare-and-swap (see maps::add, maps::swap_flags); the crate is built with
// RUSTC_BOOTSTRAP=1 anyway for build-std.
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core::intrinsics::atomic_xadd and atomic_cxchg, see maps::add and maps::swap_flags"
)]

mod answers;
mod classify;
mod drops;
mod maps;
mod owners;
mod packet;
mod requests;
mod retransmits;

use aya_ebpf::{
    macros::{cgroup_sock, cgroup_sock_addr, classifier, raw_tracepoint},
    programs::{RawTracePointContext, SockAddrContext, SockContext, TcContext},
};
use packet::{Ethernet, Hook, NoLinkHeader};

/// `TC_ACT_UNSPEC` / `TCX_NEXT`: observe only, never decide the packet's fate.
const PASS_THROUGH: i32 = -1;

#[classifier]
pub fn netwatch_egress(ctx: TcContext) -> i32 {
    classify::packet::<Ethernet>(&ctx, Hook::Egress);
    PASS_THROUGH
}

#[classifier]
pub fn netwatch_ingress(ctx: TcContext) -> i32 {
    classify::packet::<Ethernet>(&ctx, Hook::Ingress);
    PASS_THROUGH
}

/// [`netwatch_egress`] for devices without a link-layer header (tun, `WireGuard`, PPP, ipip,
/// gre, sit), whose packets start with the IP header.
#[classifier]
pub fn netwatch_l3_egress(ctx: TcContext) -> i32 {
    classify::packet::<NoLinkHeader>(&ctx, Hook::Egress);
    PASS_THROUGH
}

/// [`netwatch_ingress`] for devices without a link-layer header.
#[classifier]
pub fn netwatch_l3_ingress(ctx: TcContext) -> i32 {
    classify::packet::<NoLinkHeader>(&ctx, Hook::Ingress);
    PASS_THROUGH
}

/// `skb:kfree_skb`: counts the watched packets this host drops, by drop reason.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn netwatch_drops(ctx: RawTracePointContext) -> i32 {
    drops::on_kfree_skb(&ctx);
    0
}

/// `tcp:tcp_retransmit_skb`: follows connections whose segments are retransmitted (path-MTU
/// stalls after the handshake).
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn netwatch_retransmits(ctx: RawTracePointContext) -> i32 {
    retransmits::on_retransmit(&ctx);
    0
}

// The socket owner programs, attached to the cgroup2 root: they only observe, and always
// allow (see `owners`).

#[cgroup_sock(sock_create)]
pub fn netwatch_sock_create(ctx: SockContext) -> i32 {
    owners::created(&ctx);
    owners::ALLOW
}

#[cgroup_sock(sock_release)]
pub fn netwatch_sock_release(ctx: SockContext) -> i32 {
    owners::released(&ctx);
    owners::ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn netwatch_connect4(ctx: SockAddrContext) -> i32 {
    owners::record(&ctx);
    owners::ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn netwatch_connect6(ctx: SockAddrContext) -> i32 {
    owners::record(&ctx);
    owners::ALLOW
}

#[cgroup_sock_addr(sendmsg4)]
pub fn netwatch_sendmsg4(ctx: SockAddrContext) -> i32 {
    owners::record(&ctx);
    owners::ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub fn netwatch_sendmsg6(ctx: SockAddrContext) -> i32 {
    owners::record(&ctx);
    owners::ALLOW
}

// A panic path that survives optimisation fails verification at load time instead of
// becoming undefined behaviour; the loop is never entered by a verified program.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

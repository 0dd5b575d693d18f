//! `tcp:tcp_retransmit_skb`: TCP connections whose segments are retransmitted, followed
//! per connection so that userspace can tell a path-MTU blackhole (the large segments die,
//! the small ones get through) from loss, congestion or a peer that went away.
//!
//! The event only happens when something is already wrong (a segment was not acknowledged
//! in time), so the bulk TCP path pays nothing for it: no tc program looks at data segments.
//! A raw tracepoint (this machine kind has no `tp_btf`): its arguments are `TP_PROTO(sk, skb)`
//! (`err` follows from 6.13 on, unused). The fields are read with `bpf_probe_read_kernel` at
//! offsets userspace took from the running kernel's BTF ([`RetransmitConfig`]). The
//! tracepoint fires after the segment left (`__tcp_retransmit_skb`, on success):
//! <https://elixir.bootlin.com/linux/v6.12/source/net/ipv4/tcp_output.c>.
//!
//! The segment is the one queued for retransmission: `skb->len` is its payload (headers are
//! added to the clone that is sent), at most one MSS per segment (`__tcp_retransmit_skb`
//! splits a queued run to `cur_mss * segs` first). Its size on the wire is that payload, at
//! most one `mss_cache`, plus `tcp_header_len` (TCP with its timestamp option) and the IP
//! header.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::map,
    maps::HashMap,
    programs::RawTracePointContext,
};
use netwatch_common::{
    KernelCounter, RETRANSMITS_CAPACITY, Retransmission, RetransmitConfig, Retransmits,
    ipv4_mapped, is_ipv4_mapped,
};

use crate::maps::count;

/// The kernel's socket address → what its retransmissions showed.
#[map]
static RETRANSMITS: HashMap<u64, Retransmits> = HashMap::with_max_entries(RETRANSMITS_CAPACITY, 0);

/// Set by the loader from the running kernel's BTF; disabled until then.
#[unsafe(no_mangle)]
static RETRANSMIT_CONFIG: RetransmitConfig = RetransmitConfig::disabled();

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPV4_HEADER: u16 = 20;
const IPV6_HEADER: u16 = 40;

/// One field of [`RETRANSMIT_CONFIG`] (see the drop program's `config!` for why volatile).
macro_rules! config {
    ($field:ident) => {{
        // SAFETY: reading a plain static; volatile so the compiler does not fold the default
        // value in: the loader rewrites it in .rodata before the program is verified.
        unsafe { core::ptr::read_volatile(&raw const RETRANSMIT_CONFIG.$field) }
    }};
}

/// `T` at `base + offset` in kernel memory; `None` when the read faults.
#[inline(always)]
fn field<T>(base: *const u8, offset: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address; a fault is an error, not a crash.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }.ok()
}

#[inline(always)]
pub fn on_retransmit(ctx: &RawTracePointContext) {
    if config!(enabled) == 0 {
        return;
    }
    let sk = ctx.arg::<u64>(0) as *const u8;
    let skb = ctx.arg::<u64>(1) as *const u8;
    // A segment without data (a SYN, a FIN) says nothing about sizes; SYNs are the tc
    // programs' (a retransmitted request).
    let Some(len) = field::<u32>(skb, config!(skb_len)) else {
        return;
    };
    if len == 0 {
        return;
    }
    let Some(family) = field::<u16>(sk, config!(family)) else {
        return;
    };
    if family != AF_INET && family != AF_INET6 {
        return;
    }
    let netns = config!(netns);
    if netns != 0 && netns_of(sk) != Some(netns) {
        // Another namespace's connection: another host, as far as netwatch is concerned.
        return;
    }
    record(sk, skb, len, family == AF_INET6);
}

/// The inode number of `sk`'s network namespace. Out of line: a frame of its own.
#[inline(never)]
fn netns_of(sk: *const u8) -> Option<u32> {
    let net = field::<u64>(sk, config!(sk_net))?;
    if net == 0 {
        return None;
    }
    field::<u32>(net as *const u8, config!(net_inum))
}

/// Reads the connection and the segment, and records the retransmission. Out of line: the
/// entry being built stays off the caller's frame.
#[inline(never)]
fn record(sk: *const u8, skb: *const u8, len: u32, v6: bool) {
    let (Some(remote_port), Some(local_port)) = (
        field::<u16>(sk, config!(dport)),
        field::<u16>(sk, config!(num)),
    ) else {
        return;
    };
    let ports = (u16::from_be(remote_port), local_port);
    let (remote, local) = if v6 {
        let (Some(remote), Some(local)) = (
            field::<[u8; 16]>(sk, config!(v6_daddr)),
            field::<[u8; 16]>(sk, config!(v6_rcv_saddr)),
        ) else {
            return;
        };
        (remote, local)
    } else {
        let (Some(remote), Some(local)) = (
            field::<[u8; 4]>(sk, config!(daddr)),
            field::<[u8; 4]>(sk, config!(rcv_saddr)),
        ) else {
            return;
        };
        (ipv4_mapped(remote), ipv4_mapped(local))
    };
    let (Some(seq), Some(snd_una), Some(snd_wnd), Some(mss), Some(tcp_header_len)) = (
        field::<u32>(skb, config!(skb_cb)),
        field::<u32>(sk, config!(snd_una)),
        field::<u32>(sk, config!(snd_wnd)),
        field::<u32>(sk, config!(mss_cache)),
        field::<u16>(sk, config!(tcp_header_len)),
    ) else {
        return;
    };
    let (Some(delivered), Some(bytes_acked)) = (
        field::<u32>(sk, config!(delivered)),
        field::<u64>(sk, config!(bytes_acked)),
    ) else {
        return;
    };
    // An IPv6 socket talking to an IPv4-mapped peer sends IPv4.
    let ip_header = if is_ipv4_mapped(&remote) {
        IPV4_HEADER
    } else {
        IPV6_HEADER
    };
    let header_len = tcp_header_len.saturating_add(ip_header);
    let payload = if mss != 0 && len > mss { mss } else { len };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "clamped to u16 first: a segment's payload is below 64 KiB"
    )]
    let size = (if payload > 0xffff { 0xffff } else { payload } as u16).saturating_add(header_len);
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now_ns = unsafe { bpf_ktime_get_ns() };
    let event = Retransmission {
        seq,
        size,
        snd_una,
        window_limited: snd_wnd < payload,
        now_ns,
        mss,
        delivered,
        bytes_acked,
    };
    let key = sk as u64;
    if let Some(entry) = RETRANSMITS.get_ptr_mut(&key) {
        // SAFETY: a map value pointer, valid for this program run; TCP retransmits a
        // connection's segments one at a time, under its socket lock.
        let entry = unsafe { &mut *entry };
        if entry.is(&remote, &local, ports) {
            entry.record(&event);
            return;
        }
    }
    // A connection seen retransmitting for the first time, or a new one at a freed socket's
    // address (replacing the old entry).
    let mut entry = Retransmits::new(remote, local, ports, header_len, now_ns);
    entry.record(&event);
    let flags = if RETRANSMITS.get_ptr(&key).is_some() {
        BPF_ANY
    } else {
        BPF_NOEXIST
    };
    if RETRANSMITS.insert(&key, &entry, u64::from(flags)).is_err() {
        count(KernelCounter::RetransmitsFull);
    }
}

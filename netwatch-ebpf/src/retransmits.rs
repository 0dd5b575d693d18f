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
    bindings::BPF_ANY,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::map,
    maps::HashMap,
    programs::RawTracePointContext,
};
use netwatch_common::{
    KernelCounter, RETRANSMITS_CAPACITY, Retransmission, RetransmitConfig, Retransmits,
    is_ipv4_mapped,
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
    if netns != 0 && netns_of(sk as u64) != netns {
        // Another namespace's connection: another host, as far as netwatch is concerned.
        return;
    }
    record(sk as u64, skb as u64, len, u32::from(family == AF_INET6));
}

// The out-of-line functions take kernel addresses as integers, not pointers: Linux 5.10's
// verifier checks a subprogram's pointer arguments against its BTF and refuses the load
// ("arg#0 type is not a struct") where the caller passes what a raw tracepoint hands over
// (a scalar).

/// The inode number of `sk`'s network namespace (0 when it cannot be read). Out of line: a
/// frame of its own.
#[inline(never)]
fn netns_of(sk: u64) -> u32 {
    net_inum(sk as *const u8).unwrap_or(0)
}

#[inline(always)]
fn net_inum(sk: *const u8) -> Option<u32> {
    let net = field::<u64>(sk, config!(sk_net))?;
    if net == 0 {
        return None;
    }
    field::<u32>(net as *const u8, config!(net_inum))
}

/// Reads the connection and the segment, and records the retransmission. Out of line: the
/// entry being built stays off the caller's frame.
#[inline(never)]
fn record(sk: u64, skb: u64, len: u32, v6: u32) {
    let (sk, skb, v6) = (sk as *const u8, skb as *const u8, v6 != 0);
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
        (mapped(remote), mapped(local))
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
    let entry = match RETRANSMITS.get_ptr_mut(&key) {
        // SAFETY: a map value pointer, valid for this program run; TCP retransmits a
        // connection's segments one at a time, under its socket lock.
        Some(entry) if unsafe { (*entry).is(&remote, &local, ports) } => entry,
        // A connection seen retransmitting for the first time, or a new one at a freed
        // socket's address (replacing the old entry): an empty entry put in from .rodata and
        // filled in place, so nothing of its 112 bytes is built on the stack (nor zeroed by a
        // call to `memset`, which 5.10's verifier refuses: it masks pointers).
        _ => {
            if RETRANSMITS
                .insert(&key, &EMPTY, u64::from(BPF_ANY))
                .is_err()
            {
                count(KernelCounter::RetransmitsFull);
                return;
            }
            let Some(entry) = RETRANSMITS.get_ptr_mut(&key) else {
                return;
            };
            // SAFETY: as above.
            let fresh = unsafe { &mut *entry };
            fresh.remote = remote;
            fresh.local = local;
            (fresh.remote_port, fresh.local_port) = ports;
            fresh.header_len = header_len;
            fresh.first_ns = now_ns;
            entry
        }
    };
    // SAFETY: as above.
    unsafe { (*entry).record(&event) };
}

/// An entry before its first retransmission: where new entries start from.
static EMPTY: Retransmits = Retransmits::new([0; 16], [0; 16], (0, 0), 0, 0);

/// An IPv4 address as keys store it (`netwatch_common::ipv4_mapped`), built as two words:
/// the byte-by-byte form zeroes its first ten bytes with a call to `memset`.
#[inline(always)]
fn mapped(v4: [u8; 4]) -> [u8; 16] {
    let low = u64::from_ne_bytes([0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3]]);
    // SAFETY: two u64 are 16 initialised bytes, any of which is a valid u8.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([0, low]) }
}

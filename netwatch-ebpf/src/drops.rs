//! `skb:kfree_skb`: watched packets this host drops, counted per target and kernel drop reason.
//!
//! A raw tracepoint (this kernel kind has no `BPF_PROG_TYPE_TRACING`, so no `tp_btf`): its
//! arguments are the tracepoint's `TP_PROTO` — `skb`, `location`, `reason` (5.17+) and
//! `rx_sk` (6.11+). The `sk_buff` is read with `bpf_probe_read_kernel` at offsets userspace
//! took from the running kernel's BTF ([`DropConfig`]); drop reason values come from there
//! too, never from a header. The program runs on every packet the host frees with a reason,
//! so it returns at once for reasons that are no drop and for packets that are not watched
//! traffic; it sends no events, it only counts.
//!
//! What a dropped packet is, and where its drop is counted:
//! - to one of this host's addresses ([`LOCAL_ADDRESSES`]): a request it received (the input
//!   chain dropped it; tc ingress counted it and it stays pending) or an answer to a request
//!   it sent (tc ingress already counted it `answered`: `answers_dropped_here` says it never
//!   reached the socket);
//! - from one of them: a request it sent (the output chain dropped it before tc egress saw
//!   it: the target and its pending entry are created here, so it is counted and times out
//!   like any other) or an answer to a request it received (dropped on the way out).

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, generated},
    macros::map,
    maps::{HashMap, PerCpuArray},
    programs::RawTracePointContext,
};
use netwatch_common::{
    DIRECTION_EGRESS, DIRECTION_INGRESS, DNS_PORT, DropConfig, KernelCounter, LOCAL_DROPS_CAPACITY,
    LocalDropKey, NTP_MODE_CLIENT, NTP_MODE_SERVER, NTP_TRANSMIT_OFFSET, PendingRequest,
    RequestKey, SKB_WINDOW, TargetCounters, TargetKey, UDP_PORT_FLOW, UDP_PORT_NTP, ipv4_mapped,
    ntp_tag, proto,
};

use crate::maps::{
    EEXIST, LOCAL_ADDRESSES, PENDING, TARGET_SLOTS, TARGETS, add, count, target_counters,
    udp_port_kind, untracked,
};
use crate::packet::{
    DNS_FLAGS_OFFSET, DNS_QR, FRAGMENT_OFFSET_MASK, ICMP_HEADER_LEN, IPV6_FRAGMENT, UDP_HEADER_LEN,
    icmp, tcp_flags,
};

/// (target slot, drop reason) → drops.
#[map]
static LOCAL_DROPS: HashMap<LocalDropKey, u64> = HashMap::with_max_entries(LOCAL_DROPS_CAPACITY, 0);

/// Room for the pending entry of a request dropped before tc egress: 136 bytes more on the
/// 512-byte stack do not fit beside the packet's headers.
#[map]
static SCRATCH: PerCpuArray<PendingRequest> = PerCpuArray::with_max_entries(1, 0);

/// Where a drop's reads land, per CPU: the `sk_buff` window, the packet's headers, and its
/// transport header when it lies past them. Off the stack (the call chain has 512 bytes), and
/// read in place: nothing is copied.
#[map]
static READS: PerCpuArray<[u8; READS_LEN]> = PerCpuArray::with_max_entries(1, 0);
const HEADERS_AT: usize = SKB_WINDOW;
const L4_AT: usize = SKB_WINDOW + PACKET_READ;
const READS_LEN: usize = L4_AT + L4_READ;

/// Set by the loader from the running kernel's BTF; disabled until then.
#[unsafe(no_mangle)]
static DROP_CONFIG: DropConfig = DropConfig::disabled();

/// The address of netwatch's own `struct net`, once a drop has shown it (see
/// [`in_netwatch_namespace`]); 0 until then. Stable while netwatch runs: its process holds
/// the namespace.
#[unsafe(no_mangle)]
static mut NETWATCH_NET: u64 = 0;

/// The address of the `struct net` of the last drop in another namespace (a container, a
/// lab's or the bench's sink, whose drops a flood repeats): 0 until one. Always another
/// namespace's, even once freed and reused (see [`in_netwatch_namespace`]).
#[unsafe(no_mangle)]
static mut OTHER_NET: u64 = 0;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
/// `skb->network_header` when unset (`(typeof(skb->network_header))~0U`).
const HEADER_UNSET: u16 = 0xffff;

/// Bytes of the packet read from its network header: an IPv6 header (or an IPv4 one without
/// options) and the first 16 bytes of the transport header.
const PACKET_READ: usize = 56;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const IPV6_FRAGMENT_LEN: usize = 8;
/// Bytes of a quoted packet's IP header read (IPv6's; IPv4's within it).
const QUOTE_READ: usize = 40;
/// Transport bytes used: TCP ports, sequence, ack and flags; UDP header and DNS id and flags;
/// ICMP type, code, checksum, identifier and sequence.
const L4_READ: usize = 16;
/// `PACKET_HOST`: `pkt_type` of a packet to or from this host itself.
const PACKET_HOST: u8 = 0;

/// One field of [`DROP_CONFIG`]. Read field by field, never copied whole: an 80-byte copy
/// on the 512-byte stack does not fit beside the packet's headers.
macro_rules! config {
    ($field:ident) => {{
        #[allow(
            unused_unsafe,
            reason = "used inside unsafe blocks too, where this one is redundant"
        )]
        // SAFETY: reading a plain static; volatile so the compiler does not fold the default
        // value in: the loader rewrites it in .rodata before the program is verified.
        let value = unsafe { core::ptr::read_volatile(&raw const DROP_CONFIG.$field) };
        value
    }};
}

/// What a dropped packet is to netwatch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Request,
    Answer,
    /// An ICMP "fragmentation needed" or `ICMPv6` "packet too big" (`classify` says so; the
    /// quoted packet is read apart).
    PathMtu,
}

/// The watched exchange a packet belongs to, seen from the packet: `src`/`dst` as on the wire.
#[derive(Clone, Copy)]
struct Packet {
    src: [u8; 16],
    dst: [u8; 16],
    src_port: u16,
    dst_port: u16,
    /// DNS id, echo sequence or folded NTP transmit timestamp (the request key's `tag`); 0
    /// for TCP and `--udp-port` flows.
    tag: u16,
    /// An NTP request: its tag is the transmit timestamp, past [`L4_READ`], read separately.
    ntp_request: bool,
    /// TCP: the sequence number (a SYN's ISN).
    seq: u32,
    proto: u8,
    kind: Kind,
}

/// The `sk_buff` fields that locate the packet's headers, from one read of its window.
#[derive(Clone, Copy, Default)]
struct Skb {
    head: u64,
    /// Host order.
    protocol: u16,
    network_header: u16,
}

/// A watched packet dropped: what it is (for a path-MTU signal, the kernel address of the
/// packet it quotes).
struct Dropped {
    packet: Packet,
    quote: u64,
}

#[inline(always)]
pub fn on_kfree_skb(ctx: &RawTracePointContext) {
    // The cheapest exits first: the configuration, then the reason (a register), then what
    // one read of the sk_buff says, then the headers; the namespace last (see `count_drop`).
    if config!(enabled) == 0 {
        return;
    }
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the tracepoint passes an enum skb_drop_reason widened to 64 bits"
    )]
    let reason = ctx.arg::<u64>(2) as u32;
    if reason == config!(consumed)
        || reason == config!(not_specified)
        || reason == config!(not_dropped_yet)
    {
        return;
    }
    let skb = ctx.arg::<u64>(0) as *const u8;
    let Some(headers) = read_headers(skb) else {
        return;
    };
    // SAFETY: within this CPU's buffer, written by the helper (see `read_headers`).
    let l4 = unsafe { &*headers.l4 };
    if headers.proto == proto::UDP && !udp_watched(l4) {
        // Most UDP a host drops is no DNS, NTP or `--udp-port` service (discovery
        // broadcasts, scans, a sink's flood): let go before anything else is done.
        return;
    }
    // Counting a drop (the keys of its lookups) and reading a path-MTU signal's quote are
    // calls side by side, each with a frame of its own: nested, they would not fit 512 bytes.
    let mut dropped = Dropped {
        packet: Packet {
            src: [0; 16],
            dst: [0; 16],
            src_port: 0,
            dst_port: 0,
            tag: 0,
            ntp_request: false,
            seq: 0,
            proto: 0,
            kind: Kind::Request,
        },
        quote: 0,
    };
    if !describe(&headers, l4, &mut dropped) {
        return;
    }
    if dropped.packet.kind == Kind::PathMtu {
        if in_netwatch_namespace(skb) {
            path_mtu_drop(dropped.quote, reason);
        }
        return;
    }
    count_drop(skb, &dropped.packet, reason);
}

/// Where a dropped packet's headers are, once read into this CPU's [`READS`].
#[derive(Clone, Copy)]
struct Headers {
    /// The network header, in kernel memory.
    ip: *const u8,
    /// Its first [`PACKET_READ`] bytes, in [`READS`].
    bytes: *const [u8; PACKET_READ],
    /// The transport header's first [`L4_READ`] bytes, in [`READS`]; 4-byte aligned.
    l4: *const [u8; L4_READ],
    /// Bytes of IP headers before the transport header.
    header_len: usize,
    proto: u8,
    v6: bool,
}

// The transport header lands 4-byte aligned in the buffer (a map value, 8-byte aligned), so
// its ports are one load (`ports`).
const _: () = assert!(
    (HEADERS_AT + IPV4_LEN).is_multiple_of(4)
        && (HEADERS_AT + IPV6_LEN).is_multiple_of(4)
        && L4_AT.is_multiple_of(4)
);

/// Reads the dropped `skb`'s headers: `None` when it is no IPv4 or IPv6 packet with a
/// transport header (or a read faults). Two reads: the `sk_buff` fields that locate the
/// headers, then the headers. Inline: its frame is small (the reads land in [`READS`]), and
/// a drop the program lets go then makes no call at all.
#[inline(always)]
fn read_headers(skb: *const u8) -> Option<Headers> {
    let reads = READS.get_ptr_mut(0)?.cast::<u8>();
    let mut fields = Skb::default();
    if !read_skb(skb, reads, &mut fields)
        || fields.network_header == HEADER_UNSET
        || (fields.protocol != ETH_P_IPV4 && fields.protocol != ETH_P_IPV6)
    {
        return None;
    }
    let ip = (fields.head as *const u8).wrapping_add(usize::from(fields.network_header));
    if !read_into(reads.wrapping_add(HEADERS_AT), PACKET_READ, ip) {
        return None;
    }
    let bytes = reads.wrapping_add(HEADERS_AT).cast::<[u8; PACKET_READ]>();
    // SAFETY: this CPU's buffer, just written by the helper, used by nothing else until the
    // program ends.
    let headers = unsafe { &*bytes };
    let v6 = fields.protocol == ETH_P_IPV6;
    let (proto, header_len) = if v6 {
        if headers[0] >> 4 != 6 {
            return None;
        }
        // Extension headers are not walked here (requests and answers rarely carry them),
        // but for a fragment header: the first fragment of a large answer whose reassembly
        // timed out is an answer lost.
        if headers[6] == IPV6_FRAGMENT {
            let offset = u16::from_be_bytes([headers[IPV6_LEN + 2], headers[IPV6_LEN + 3]]);
            if offset & FRAGMENT_OFFSET_MASK != 0 {
                return None;
            }
            (headers[IPV6_LEN], IPV6_LEN + IPV6_FRAGMENT_LEN)
        } else {
            (headers[6], IPV6_LEN)
        }
    } else {
        let version_ihl = headers[0];
        if version_ihl >> 4 != 4 || u16::from_be_bytes([headers[6], headers[7]]) & 0x1fff != 0 {
            // Not IPv4, or a non-first fragment (no transport header).
            return None;
        }
        (headers[9], usize::from(version_ihl & 0x0f) * 4)
    };
    // verifier: constant offsets into the buffer, opaque to LLVM, which would otherwise add
    // `header_len` itself (unbounded where the pointer is made).
    let l4_at = if header_len == IPV4_LEN {
        core::hint::black_box(HEADERS_AT + IPV4_LEN)
    } else if header_len == IPV6_LEN {
        core::hint::black_box(HEADERS_AT + IPV6_LEN)
    } else {
        // IPv4 options, an IPv6 fragment header: read the transport header where it is.
        if !read_into(
            reads.wrapping_add(L4_AT),
            L4_READ,
            ip.wrapping_add(header_len),
        ) {
            return None;
        }
        core::hint::black_box(L4_AT)
    };
    if l4_at + L4_READ > READS_LEN {
        return None;
    }
    Some(Headers {
        ip,
        bytes,
        l4: reads.wrapping_add(l4_at).cast::<[u8; L4_READ]>(),
        header_len,
        proto,
        v6,
    })
}

/// What the dropped packet whose headers are read is, into `out`: whether it is watched
/// traffic. The packet's addresses are only taken for a packet that is watched.
#[inline(always)]
fn describe(headers: &Headers, l4: &[u8; L4_READ], out: &mut Dropped) -> bool {
    let packet = &mut out.packet;
    if !classify(headers.proto, l4, packet) {
        return false;
    }
    let ip = headers.ip;
    if packet.kind == Kind::PathMtu {
        out.quote = ip.wrapping_add(headers.header_len + ICMP_HEADER_LEN) as u64;
        return true;
    }
    // SAFETY: as in `read_headers`.
    let bytes = unsafe { &*headers.bytes };
    if headers.v6 {
        packet.src.copy_from_slice(&bytes[8..24]);
        packet.dst.copy_from_slice(&bytes[24..40]);
    } else {
        packet.src = ipv4_mapped([bytes[12], bytes[13], bytes[14], bytes[15]]);
        packet.dst = ipv4_mapped([bytes[16], bytes[17], bytes[18], bytes[19]]);
    }
    if packet.ntp_request {
        // The request's key holds its transmit timestamp, folded (`ntp_tag`), as on tc egress.
        let at = headers.header_len + UDP_HEADER_LEN + NTP_TRANSMIT_OFFSET;
        // SAFETY: bpf_probe_read_kernel checks the address; a fault is an error.
        let Ok(transmit) =
            (unsafe { bpf_probe_read_kernel(ip.wrapping_add(at).cast::<[u8; 8]>()) })
        else {
            return false;
        };
        packet.tag = ntp_tag(transmit);
    }
    true
}

/// The transport header's source and destination ports (host order), in one load.
#[inline(always)]
fn ports(l4: &[u8; L4_READ]) -> (u16, u16) {
    #[expect(
        clippy::cast_ptr_alignment,
        reason = "the transport header lies 4-byte aligned in the buffer (asserted at `Headers`)"
    )]
    // SAFETY: four bytes within `l4`, aligned (see above).
    let both = u32::from_be(unsafe { core::ptr::read(l4.as_ptr().cast::<u32>()) });
    #[expect(clippy::cast_possible_truncation, reason = "the two halves")]
    ((both >> 16) as u16, both as u16)
}

/// Whether a UDP datagram is to or from a port netwatch watches: DNS, or an NTP or
/// `--udp-port` service (`classify` then says which way).
#[inline(always)]
fn udp_watched(l4: &[u8; L4_READ]) -> bool {
    let (src_port, dst_port) = ports(l4);
    src_port == DNS_PORT
        || dst_port == DNS_PORT
        || udp_port_kind(src_port) | udp_port_kind(dst_port) != 0
}

/// `len` bytes of kernel memory at `from` into `to` (in this CPU's [`READS`]): whether the
/// read succeeded.
#[inline(always)]
fn read_into(to: *mut u8, len: usize, from: *const u8) -> bool {
    #[expect(clippy::cast_possible_truncation, reason = "at most a hundred bytes")]
    // SAFETY: `to` has `len` bytes in this CPU's buffer; the helper checks `from`: a fault is
    // an error (and zeroes `to`), not a crash.
    let status = unsafe { generated::bpf_probe_read_kernel(to.cast(), len as u32, from.cast()) };
    status == 0
}

/// Counts the drop of `packet`, watched, for `reason`, if it is this host's: to or from one
/// of its addresses, for a target netwatch follows (or a request it sent, which makes one),
/// in its network namespace (asked last: it reads the `sk_buff` again).
#[inline(never)]
fn count_drop(skb: *const u8, packet: &Packet, reason: u32) {
    let inbound = LOCAL_ADDRESSES.get_ptr(&packet.dst).is_some();
    if !inbound && LOCAL_ADDRESSES.get_ptr(&packet.src).is_none() {
        // Neither to nor from this host: forwarded traffic, not watched.
        return;
    }
    match (inbound, packet.kind) {
        // Received, then dropped (the input chain): tc ingress counted it and it stays
        // pending, so it times out; only the drop is added here.
        // Only targets that exist: tc ingress created those of the watched interfaces; a
        // scan dropped on another one must not fill the target table.
        (true, Kind::Request) => {
            let target = ingress_target(&packet.src, packet.dst_port, packet.proto);
            existing_target_drop(&target, reason, Kind::Request, skb);
        }
        // An answer to a request this host sent: counted `answered` by tc ingress, then
        // dropped before the socket. Only for targets that exist (requests were seen).
        (true, Kind::Answer) => {
            let target = egress_target(&packet.src, packet.src_port, packet.proto);
            existing_target_drop(&target, reason, Kind::Answer, skb);
        }
        // Sent, then dropped before it left (the output chain): tc egress never saw it.
        // Not a looped-back copy of a broadcast or multicast (`pkt_type` other than
        // PACKET_HOST), nor one to such an address: those are no request to any one target.
        (false, Kind::Request) => {
            // The namespace before `pkt_type`: a drop in another namespace of a packet with
            // this host's address (this host's request, dropped by a container or a sink
            // downstream, as every packet of a flood into it) then costs one read less.
            if is_unicast(&packet.dst) && in_netwatch_namespace(skb) && sent_here(skb) {
                outbound_request(packet, reason);
            }
        }
        // This host's answer to a request it received, dropped on the way out.
        (false, Kind::Answer) => {
            let target = ingress_target(&packet.dst, packet.src_port, packet.proto);
            existing_target_drop(&target, reason, Kind::Answer, skb);
        }
        (_, Kind::PathMtu) => {}
    }
}

/// The fields of `skb` that locate its headers, into `out`: one read of [`SKB_WINDOW`]
/// bytes, into the start of this CPU's `reads`. `false` when the read faults.
#[inline(always)]
fn read_skb(skb: *const u8, reads: *mut u8, out: &mut Skb) -> bool {
    if !read_into(
        reads,
        SKB_WINDOW,
        skb.wrapping_add(config!(skb_window) as usize),
    ) {
        return false;
    }
    // verifier: the offsets come from .rodata, constants to the verifier: fixed-offset reads
    // of the window. Straight into registers: copies would take stack. Aligned (the loader
    // starts the window on an 8-byte boundary, and the buffer is a map value): one load per
    // field, not one per byte.
    let field = |offset: u32, len: usize| -> Option<*const u8> {
        let start = offset as usize;
        (start + len <= SKB_WINDOW && start.is_multiple_of(len))
            .then(|| reads.cast_const().wrapping_add(start))
    };
    let (Some(head), Some(protocol), Some(network_header)) = (
        field(config!(head), 8),
        field(config!(protocol), 2),
        field(config!(network_header), 2),
    ) else {
        return false;
    };
    #[expect(
        clippy::cast_ptr_alignment,
        reason = "each offset is a multiple of its field's size (checked above)"
    )]
    // SAFETY: each field lies within the window this CPU's buffer starts with, which the
    // helper wrote and nothing else uses until the program ends; aligned (checked above:
    // the buffer, a map value, is) reads of plain integers.
    unsafe {
        *out = Skb {
            head: core::ptr::read(head.cast::<u64>()),
            protocol: u16::from_be(core::ptr::read(protocol.cast::<u16>())),
            network_header: core::ptr::read(network_header.cast::<u16>()),
        };
    }
    true
}

/// Whether `skb` was dropped in netwatch's network namespace: its device's, or (a packet
/// being sent, before it has one) its socket's. The tracepoint fires for every namespace;
/// another one's drop is another host's, as far as netwatch is concerned. Asked last, of a
/// drop that would count.
///
/// Two reads: `dev` and `sk` (adjacent in `sk_buff`), then the `struct net` pointer, compared
/// with netwatch's own once a drop has shown it (any other is then another namespace's), and
/// with the last other namespace's; otherwise a third (its inode number). Pointers, not inode
/// numbers, are remembered: netwatch's namespace lives as long as it runs, while a device may
/// be freed and its address reused by a device elsewhere.
#[inline(never)]
#[expect(
    clippy::cast_ptr_alignment,
    reason = "kernel structure fields, aligned; read through the helper, never dereferenced"
)]
fn in_netwatch_namespace(skb: *const u8) -> bool {
    let netns = config!(netns);
    if netns == 0 {
        return true;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a fault is an error (every read).
    let Ok(pair) = (unsafe {
        bpf_probe_read_kernel(
            skb.wrapping_add(config!(skb_dev_sk) as usize)
                .cast::<[u64; 2]>(),
        )
    }) else {
        return false;
    };
    let (dev, sk) = if config!(skb_dev) == config!(skb_dev_sk) {
        (pair[0], pair[1])
    } else {
        (pair[1], pair[0])
    };
    let (base, offset) = if dev != 0 {
        (dev, config!(dev_net))
    } else if sk != 0 {
        (sk, config!(sk_net))
    } else {
        return false;
    };
    // SAFETY: as above.
    let Ok(net) = (unsafe {
        bpf_probe_read_kernel(
            (base as *const u8)
                .wrapping_add(offset as usize)
                .cast::<u64>(),
        )
    }) else {
        return false;
    };
    if net == 0 {
        return false;
    }
    // netwatch's namespace outlives the programs (its process holds it), so while they run no
    // other namespace can have its address, and it can have no address another namespace
    // had: a `net` seen once, either way, is known for good, without reading its number.
    // SAFETY: plain statics of this program; a racing store writes a value just as true.
    let (own, other) = unsafe {
        (
            core::ptr::read_volatile(&raw const NETWATCH_NET),
            core::ptr::read_volatile(&raw const OTHER_NET),
        )
    };
    if net == own {
        return true;
    }
    if own != 0 || net == other {
        return false;
    }
    // SAFETY: as above.
    let inum = unsafe {
        bpf_probe_read_kernel(
            (net as *const u8)
                .wrapping_add(config!(net_inum) as usize)
                .cast::<u32>(),
        )
    };
    if inum != Ok(netns) {
        if inum.is_ok() {
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(&raw mut OTHER_NET, net) };
        }
        return false;
    }
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(&raw mut NETWATCH_NET, net) };
    true
}

/// Whether `skb` is a packet this host sent (`pkt_type` `PACKET_HOST`), not a looped-back
/// copy of one (`PACKET_LOOPBACK`, `PACKET_BROADCAST`…: a directed broadcast, say).
#[inline(always)]
fn sent_here(skb: *const u8) -> bool {
    // SAFETY: bpf_probe_read_kernel checks the address; a fault is an error.
    unsafe { bpf_probe_read_kernel(skb.wrapping_add(config!(pkt_type_byte) as usize)) }
        .is_ok_and(|byte: u8| (byte >> config!(pkt_type_shift)) & 0x7 == PACKET_HOST)
}

/// A path-MTU signal dropped here (this host's input chain keeping its TCP from learning the
/// path's MTU), quoting at `quote` a packet this host sent: counted for the target of that
/// packet's flow (the peer's port when this host opened it, this host's port when the peer
/// did), when netwatch follows it. Only TCP and UDP quotes, without IPv6 extension headers.
/// The drop's namespace was checked by the caller.
/// Out of line, scalars in: the quote's bytes get a frame of their own.
#[inline(never)]
fn path_mtu_drop(quote: u64, reason: u32) {
    // SAFETY: bpf_probe_read_kernel checks the address; a fault is an error, not a crash.
    let Ok(bytes) =
        (unsafe { bpf_probe_read_kernel((quote as *const u8).cast::<[u8; QUOTE_READ]>()) })
    else {
        return;
    };
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    let (proto, ports_at) = if bytes[0] >> 4 == 6 {
        src.copy_from_slice(&bytes[8..24]);
        dst.copy_from_slice(&bytes[24..40]);
        (bytes[6], IPV6_LEN)
    } else {
        src[10] = 0xff;
        src[11] = 0xff;
        src[12..16].copy_from_slice(&bytes[12..16]);
        dst[10] = 0xff;
        dst[11] = 0xff;
        dst[12..16].copy_from_slice(&bytes[16..20]);
        (bytes[9], usize::from(bytes[0] & 0x0f) * 4)
    };
    if proto != proto::TCP && proto != proto::UDP {
        return;
    }
    // A packet this host sent, quoted back to it.
    if LOCAL_ADDRESSES.get_ptr(&src).is_none() {
        return;
    }
    // verifier: read where the header says, not at a variable offset into the stack copy.
    // SAFETY: as above.
    let Ok(ports) = (unsafe {
        bpf_probe_read_kernel(
            (quote as *const u8)
                .wrapping_add(ports_at)
                .cast::<[u8; 4]>(),
        )
    }) else {
        return;
    };
    let local_port = u16::from_be_bytes([ports[0], ports[1]]);
    let remote_port = u16::from_be_bytes([ports[2], ports[3]]);
    let outbound = egress_target(&dst, remote_port, proto);
    let target = if TARGET_SLOTS.get_ptr(&outbound).is_some() {
        outbound
    } else {
        ingress_target(&dst, local_port, proto)
    };
    existing_target_drop(&target, reason, Kind::PathMtu, core::ptr::null());
}

/// Whether the transport header is a request or an answer netwatch watches (the tc
/// programs' rules): a SYN, an acceptable SYN-ACK, a DNS query to or response from port 53,
/// a datagram to or from a `--udp-port` service, an echo request or reply.
/// What it is goes into `packet` (its addresses are the caller's to fill): whether it is
/// watched. Out-parameters rather than a value returned: LLVM copies a returned `Packet`
/// through the stack, and the frame has room for one.
#[inline(always)]
fn classify(proto: u8, l4: &[u8; L4_READ], packet: &mut Packet) -> bool {
    let (src_port, dst_port) = ports(l4);
    packet.src_port = src_port;
    packet.dst_port = dst_port;
    packet.proto = proto;
    packet.kind = match proto {
        proto::TCP => {
            let flags = l4[13] & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST);
            packet.seq = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
            if flags == tcp_flags::SYN {
                Kind::Request
            } else if flags == tcp_flags::SYN | tcp_flags::ACK {
                Kind::Answer
            } else {
                return false;
            }
        }
        proto::UDP => {
            // The DNS header follows the 8-byte UDP header: id, then QR in the flags.
            let response = l4[UDP_HEADER_LEN + DNS_FLAGS_OFFSET] & DNS_QR != 0;
            if dst_port == DNS_PORT && !response {
                packet.tag = u16::from_be_bytes([l4[8], l4[9]]);
                Kind::Request
            } else if src_port == DNS_PORT && response {
                packet.tag = u16::from_be_bytes([l4[8], l4[9]]);
                Kind::Answer
            } else {
                // NTP and `--udp-port` flows, as the tc programs judge them (`classify.rs`):
                // NTP by its mode (a client's message to the port is a request, a server's
                // from it an answer), a flow by direction (tag 0).
                let mode = l4[UDP_HEADER_LEN] & 0x07;
                let (to, from) = (udp_port_kind(dst_port), udp_port_kind(src_port));
                // The transmit timestamp ends the 48-byte message (the UDP length says
                // whether it is there): a shorter one is no NTP request on tc egress either.
                let whole = usize::from(u16::from_be_bytes([l4[4], l4[5]]))
                    >= UDP_HEADER_LEN + NTP_TRANSMIT_OFFSET + 8;
                if to == UDP_PORT_NTP && mode == NTP_MODE_CLIENT && whole {
                    packet.ntp_request = true;
                    Kind::Request
                } else if from == UDP_PORT_NTP && mode == NTP_MODE_SERVER {
                    Kind::Answer
                } else if to == UDP_PORT_FLOW {
                    Kind::Request
                } else if from == UDP_PORT_FLOW {
                    Kind::Answer
                } else {
                    return false;
                }
            }
        }
        proto::ICMP | proto::ICMPV6 => {
            let (request, reply) = if proto == proto::ICMP {
                (icmp::ECHO_REQUEST, icmp::ECHO_REPLY)
            } else {
                (icmp::V6_ECHO_REQUEST, icmp::V6_ECHO_REPLY)
            };
            // Identifier and sequence; ICMP targets have no port.
            packet.src_port = u16::from_be_bytes([l4[4], l4[5]]);
            packet.dst_port = 0;
            packet.tag = u16::from_be_bytes([l4[6], l4[7]]);
            if l4[0] == request && l4[1] == 0 {
                Kind::Request
            } else if l4[0] == reply && l4[1] == 0 {
                Kind::Answer
            } else if (proto == proto::ICMP
                && l4[0] == icmp::DEST_UNREACHABLE
                && l4[1] == icmp::FRAG_NEEDED)
                || (proto == proto::ICMPV6 && l4[0] == icmp::V6_PACKET_TOO_BIG)
            {
                // The rest is the quoted packet's (see `path_mtu_drop`).
                Kind::PathMtu
            } else {
                return false;
            }
        }
        _ => return false,
    };
    true
}

/// Whether `dst` is one host: not IPv4 multicast, reserved or limited broadcast
/// (224.0.0.0 and up), not IPv6 multicast (`ff00::/8`).
#[inline(always)]
fn is_unicast(dst: &[u8; 16]) -> bool {
    if netwatch_common::is_ipv4_mapped(dst) {
        dst[12] < 224
    } else {
        dst[0] != 0xff
    }
}

/// The target of a request this host sent to `remote`'s `port`.
#[inline(always)]
fn egress_target(remote: &[u8; 16], port: u16, proto: u8) -> TargetKey {
    TargetKey {
        remote: *remote,
        remote_port: if is_icmp(proto) { 0 } else { port },
        proto,
        direction: DIRECTION_EGRESS,
    }
}

/// The target of a request `remote` sent to this host's `port`.
#[inline(always)]
fn ingress_target(remote: &[u8; 16], port: u16, proto: u8) -> TargetKey {
    TargetKey {
        remote: *remote,
        remote_port: if is_icmp(proto) { 0 } else { port },
        proto,
        direction: DIRECTION_INGRESS,
    }
}

#[inline(always)]
fn is_icmp(proto: u8) -> bool {
    proto == proto::ICMP || proto == proto::ICMPV6
}

/// Whether `reason` is a drop at the socket ([`DropConfig::socket_reasons`]).
#[inline(always)]
fn at_socket(reason: u32) -> bool {
    // verifier: each word read in place at a constant offset, never indexed by a variable
    // (a copy on the stack then cannot be indexed, and LLVM hoists the pointer arithmetic of
    // an indexed read above its bounds check).
    // SAFETY: reading a plain static, volatile as for `config!`.
    let bits = unsafe {
        match reason / 32 {
            0 => core::ptr::read_volatile(&raw const DROP_CONFIG.socket_reasons[0]),
            1 => core::ptr::read_volatile(&raw const DROP_CONFIG.socket_reasons[1]),
            2 => core::ptr::read_volatile(&raw const DROP_CONFIG.socket_reasons[2]),
            3 => core::ptr::read_volatile(&raw const DROP_CONFIG.socket_reasons[3]),
            _ => return false,
        }
    };
    bits & (1 << (reason % 32)) != 0
}

/// A request or answer dropped here, for a target netwatch already follows. `skb`: for the
/// namespace check (null: checked already).
#[inline(always)]
fn existing_target_drop(target: &TargetKey, reason: u32, kind: Kind, skb: *const u8) {
    // SAFETY: a map value pointer, valid for this program run.
    let Some(slot) = TARGET_SLOTS.get_ptr(target).map(|slot| unsafe { *slot }) else {
        return;
    };
    if !skb.is_null() && !in_netwatch_namespace(skb) {
        return;
    }
    let Some(counters) = TARGETS.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: an array value pointer, valid for the program run; updated only through `add`.
    let counters = unsafe { &mut *counters };
    match kind {
        // An answer the application was not there (or too slow) to take is no failure of
        // the path: counted by reason only.
        Kind::Answer => {
            if !at_socket(reason) {
                add(&mut counters.answers_dropped_here, 1);
            }
        }
        Kind::Request => add(&mut counters.requests_dropped_here, 1),
        Kind::PathMtu => add(&mut counters.path_mtu_dropped_here, 1),
    }
    count_reason(slot, reason);
}

/// A request this host sent that died before tc egress: counted and made pending here, as tc
/// egress would have, so it is one request of its target and times out like the others.
/// A copy already pending (a retransmit, or a request tc egress saw and something after it
/// dropped) adds only the drop.
#[inline(always)]
fn outbound_request(packet: &Packet, reason: u32) {
    let key = RequestKey {
        remote: packet.dst,
        local: packet.src,
        remote_port: packet.dst_port,
        local_port: packet.src_port,
        tag: packet.tag,
        proto: packet.proto,
        direction: DIRECTION_EGRESS,
    };
    let Some((slot, counters)) = target_counters(&key.target()) else {
        return;
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions. (Not the coarse clock, which would
    // not read the clock source: a tracing program may run inside timekeeping, and the
    // kernel refuses it there.)
    let now = unsafe { bpf_ktime_get_ns() };
    // A copy of a request already pending (an application retrying into the same drop, the
    // common case in a storm): a lookup, far cheaper than an insert the table refuses.
    if PENDING.get_ptr(&key).is_none() {
        insert_pending(&key, slot, packet.seq, now, counters);
    }
    add(&mut counters.requests_dropped_here, 1);
    counters.last_request_ns = now;
    count_reason(slot, reason);
}

/// Makes `key` pending as tc egress would have; counts it as a request of its target.
#[inline(always)]
fn insert_pending(key: &RequestKey, slot: u32, seq: u32, now: u64, counters: &mut TargetCounters) {
    let Some(request) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch entry, used by nothing else while the program runs
    // (migration is disabled).
    let request = unsafe { &mut *request };
    // Field by field: building a PendingRequest value would put it on the stack.
    request.first_sent_ns = now;
    request.last_sent_ns = now;
    request.replaced_first_sent_ns = 0;
    request.tcp_seq = seq;
    request.flags = 0;
    request.ifindex = 0;
    request.target_slot = slot;
    request.question_len = 0;
    request.syn_payload_len = 0;
    // No socket cookie here: such a request is not attributed (never wrongly).
    request.socket_cookie = 0;
    request.cgroup_id = 0;
    match PENDING.insert(key, request, u64::from(BPF_NOEXIST)) {
        Ok(()) => add(&mut counters.requests, 1),
        // Another CPU made it pending in between.
        Err(err) if err == -EEXIST => {}
        Err(_) => untracked(counters),
    }
}

/// One more drop of `reason` for the target at `slot`.
#[inline(always)]
fn count_reason(slot: u32, reason: u32) {
    let key = LocalDropKey { slot, reason };
    if let Some(drops) = LOCAL_DROPS.get_ptr_mut(&key) {
        // SAFETY: a map value pointer, valid for this program run.
        add(unsafe { &mut *drops }, 1);
        return;
    }
    match LOCAL_DROPS.insert(&key, &1, u64::from(BPF_NOEXIST)) {
        Ok(()) => {}
        // Another CPU inserted it in between.
        Err(err) if err == -EEXIST => {
            if let Some(drops) = LOCAL_DROPS.get_ptr_mut(&key) {
                // SAFETY: as above.
                add(unsafe { &mut *drops }, 1);
            }
        }
        Err(_) => count(KernelCounter::LocalDropsFull),
    }
}

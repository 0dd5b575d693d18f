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
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
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
    udp_port_kind,
};
use crate::packet::UDP_HEADER_LEN;

/// (target slot, drop reason) → drops.
#[map]
static LOCAL_DROPS: HashMap<LocalDropKey, u64> = HashMap::with_max_entries(LOCAL_DROPS_CAPACITY, 0);

/// Room for the pending entry of a request dropped before tc egress: 120 bytes more on the
/// 512-byte stack do not fit beside the packet's headers.
#[map]
static SCRATCH: PerCpuArray<PendingRequest> = PerCpuArray::with_max_entries(1, 0);

/// Set by the loader from the running kernel's BTF; disabled until then.
#[unsafe(no_mangle)]
static DROP_CONFIG: DropConfig = DropConfig::disabled();

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
/// `skb->network_header` when unset (`(typeof(skb->network_header))~0U`).
const HEADER_UNSET: u16 = 0xffff;

/// Bytes of the packet read from its network header: an IPv6 header (or an IPv4 one without
/// options) and the first 16 bytes of the transport header.
const PACKET_READ: usize = 56;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_FRAGMENT_LEN: usize = 8;
/// An ICMP error's header, before the packet it quotes.
const ICMP_LEN: usize = 8;
/// Bytes of a quoted packet's IP header read (IPv6's; IPv4's within it).
const QUOTE_READ: usize = 40;
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
/// Transport bytes used: TCP ports, sequence, ack and flags; UDP header and DNS id and flags;
/// ICMP type, code, checksum, identifier and sequence.
const L4_READ: usize = 16;

const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

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

/// What `read_packet` found: a packet of a watched exchange, or a path-MTU signal whose
/// quoted packet is at that kernel address, read apart (see [`path_mtu_drop`]).
enum Found {
    Exchange(Packet),
    PathMtu { quote: u64 },
}

#[inline(always)]
pub fn on_kfree_skb(ctx: &RawTracePointContext) {
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
    // Two calls side by side, each with its own frame: the packet's (a few hundred bytes)
    // and, for a path-MTU signal, its quote's. Nested, they would not fit 512 bytes.
    let quote = watched_drop(skb, reason);
    if quote != 0 {
        path_mtu_drop(quote, reason);
    }
}

/// Counts the drop of `skb` for `reason` if it is watched traffic of this namespace. A
/// path-MTU signal is left to the caller: its quoted packet's address is returned (0 for
/// anything else).
#[inline(never)]
fn watched_drop(skb: *const u8, reason: u32) -> u64 {
    let Some(found) = read_packet(skb) else {
        return 0;
    };
    let netns = config!(netns);
    if netns != 0 && netns_of(skb) != Some(netns) {
        // Another namespace's drop: another host, as far as netwatch is concerned.
        return 0;
    }
    let packet = match found {
        Found::Exchange(packet) => packet,
        Found::PathMtu { quote } => return quote,
    };
    let inbound = LOCAL_ADDRESSES.get_ptr(&packet.dst).is_some();
    if !inbound && LOCAL_ADDRESSES.get_ptr(&packet.src).is_none() {
        // Neither to nor from this host: forwarded traffic, not watched.
        return 0;
    }
    match (inbound, packet.kind) {
        // Received, then dropped (the input chain): tc ingress counted it and it stays
        // pending, so it times out; only the drop is added here.
        // Only targets that exist: tc ingress created those of the watched interfaces; a
        // scan dropped on another one must not fill the target table.
        (true, Kind::Request) => {
            let target = ingress_target(&packet.src, packet.dst_port, packet.proto);
            existing_target_drop(&target, reason, Kind::Request);
        }
        // An answer to a request this host sent: counted `answered` by tc ingress, then
        // dropped before the socket. Only for targets that exist (requests were seen).
        (true, Kind::Answer) => {
            let target = egress_target(&packet.src, packet.src_port, packet.proto);
            existing_target_drop(&target, reason, Kind::Answer);
        }
        // Sent, then dropped before it left (the output chain): tc egress never saw it.
        // Not a looped-back copy of a broadcast or multicast (nor one to such an address):
        // those are no request to any one target.
        (false, Kind::Request) => {
            if is_unicast(&packet.dst) && sent_here(skb) {
                outbound_request(&packet, reason);
            }
        }
        // This host's answer to a request it received, dropped on the way out.
        (false, Kind::Answer) => {
            let target = ingress_target(&packet.dst, packet.src_port, packet.proto);
            existing_target_drop(&target, reason, Kind::Answer);
        }
        (_, Kind::PathMtu) => {}
    }
    0
}

/// A path-MTU signal dropped here (this host's input chain keeping its TCP from learning the
/// path's MTU), quoting at `quote` a packet this host sent: counted for the target of that
/// packet's flow (the peer's port when this host opened it, this host's port when the peer
/// did), when netwatch follows it. Only TCP and UDP quotes, without IPv6 extension headers.
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
    existing_target_drop(&target, reason, Kind::PathMtu);
}

/// The inode number of the network namespace `skb` was dropped in: its device's, or (a
/// packet being sent, before it has one) its socket's. Inlined into [`watched_drop`]: a frame
/// of its own below that one would be a third on the chain, and Linux 5.10 and 6.1 round
/// every frame up to 32 bytes (combined 544 of the 512 allowed).
#[inline(always)]
#[expect(
    clippy::cast_ptr_alignment,
    reason = "kernel structure fields, aligned; read through the helper, never dereferenced"
)]
fn netns_of(skb: *const u8) -> Option<u32> {
    // SAFETY: bpf_probe_read_kernel checks the address; a fault is an error (every read here).
    let dev =
        unsafe { bpf_probe_read_kernel(skb.wrapping_add(config!(skb_dev) as usize).cast::<u64>()) }
            .ok()?;
    let net = if dev != 0 {
        // SAFETY: as above.
        unsafe {
            bpf_probe_read_kernel(
                (dev as *const u8)
                    .wrapping_add(config!(dev_net) as usize)
                    .cast::<u64>(),
            )
        }
        .ok()?
    } else {
        // SAFETY: as above.
        let sk = unsafe {
            bpf_probe_read_kernel(skb.wrapping_add(config!(skb_sk) as usize).cast::<u64>())
        }
        .ok()?;
        if sk == 0 {
            return None;
        }
        // SAFETY: as above.
        unsafe {
            bpf_probe_read_kernel(
                (sk as *const u8)
                    .wrapping_add(config!(sk_net) as usize)
                    .cast::<u64>(),
            )
        }
        .ok()?
    };
    if net == 0 {
        return None;
    }
    // SAFETY: as above.
    unsafe {
        bpf_probe_read_kernel(
            (net as *const u8)
                .wrapping_add(config!(net_inum) as usize)
                .cast::<u32>(),
        )
    }
    .ok()
}

/// The IP and transport headers of `skb`, if it is watched traffic.
#[inline(always)]
fn read_packet(skb: *const u8) -> Option<Found> {
    // One read for the three sk_buff fields.
    // SAFETY: bpf_probe_read_kernel checks the address; a fault is an error, not a crash.
    let window = unsafe {
        bpf_probe_read_kernel(
            skb.wrapping_add(config!(skb_window) as usize)
                .cast::<[u8; SKB_WINDOW]>(),
        )
    }
    .ok()?;
    let field = |offset: u32, dst: &mut [u8]| -> Option<()> {
        let start = offset as usize;
        let bytes = window.get(start..start + dst.len())?;
        dst.copy_from_slice(bytes);
        Some(())
    };
    let (mut protocol, mut network_header, mut head) = ([0u8; 2], [0u8; 2], [0u8; 8]);
    field(config!(protocol), &mut protocol)?;
    field(config!(network_header), &mut network_header)?;
    field(config!(head), &mut head)?;
    let protocol = u16::from_be_bytes(protocol);
    let network_header = u16::from_ne_bytes(network_header);
    if network_header == HEADER_UNSET || (protocol != ETH_P_IPV4 && protocol != ETH_P_IPV6) {
        return None;
    }
    let ip = (u64::from_ne_bytes(head) as *const u8).wrapping_add(usize::from(network_header));
    // SAFETY: as above.
    let bytes = unsafe { bpf_probe_read_kernel(ip.cast::<[u8; PACKET_READ]>()) }.ok()?;
    let (src, dst, proto, l4, header_len) = if protocol == ETH_P_IPV4 {
        let version_ihl = bytes[0];
        if version_ihl >> 4 != 4 || u16::from_be_bytes([bytes[6], bytes[7]]) & 0x1fff != 0 {
            // Not IPv4, or a non-first fragment (no transport header).
            return None;
        }
        let header_len = usize::from(version_ihl & 0x0f) * 4;
        let l4 = if header_len == IPV4_LEN {
            read_array::<L4_READ>(&bytes, IPV4_LEN)?
        } else {
            // Options: read the transport header where it is.
            // SAFETY: as above.
            unsafe { bpf_probe_read_kernel(ip.wrapping_add(header_len).cast::<[u8; L4_READ]>()) }
                .ok()?
        };
        let src = ipv4_mapped(read_array::<4>(&bytes, 12)?);
        let dst = ipv4_mapped(read_array::<4>(&bytes, 16)?);
        (src, dst, bytes[9], l4, header_len)
    } else {
        if bytes[0] >> 4 != 6 {
            return None;
        }
        let (src, dst) = (read_array::<16>(&bytes, 8)?, read_array::<16>(&bytes, 24)?);
        // Extension headers are not walked here (requests and answers rarely carry them),
        // but for a fragment header: the first fragment of a large answer whose reassembly
        // timed out is an answer lost.
        if bytes[6] == IPV6_FRAGMENT {
            let [next, _, offset_hi, offset_lo] = read_array::<4>(&bytes, IPV6_LEN)?;
            if u16::from_be_bytes([offset_hi, offset_lo]) & 0xfff8 != 0 {
                return None;
            }
            let at = IPV6_LEN + IPV6_FRAGMENT_LEN;
            // SAFETY: as above.
            let l4 = unsafe { bpf_probe_read_kernel(ip.wrapping_add(at).cast::<[u8; L4_READ]>()) }
                .ok()?;
            (src, dst, next, l4, at)
        } else {
            (
                src,
                dst,
                bytes[6],
                read_array::<L4_READ>(&bytes, IPV6_LEN)?,
                IPV6_LEN,
            )
        }
    };
    let mut packet = classify(src, dst, proto, &l4)?;
    if packet.kind == Kind::PathMtu {
        return Some(Found::PathMtu {
            quote: ip.wrapping_add(header_len + ICMP_LEN) as u64,
        });
    }
    if packet.ntp_request {
        // The request's key holds its transmit timestamp, folded (`ntp_tag`), as on tc egress.
        let at = header_len + UDP_HEADER_LEN + NTP_TRANSMIT_OFFSET;
        // SAFETY: as above.
        let transmit = unsafe { bpf_probe_read_kernel(ip.wrapping_add(at).cast::<[u8; 8]>()) };
        packet.tag = ntp_tag(transmit.ok()?);
    }
    Some(Found::Exchange(packet))
}

#[inline(always)]
fn read_array<const N: usize>(bytes: &[u8; PACKET_READ], offset: usize) -> Option<[u8; N]> {
    bytes.get(offset..offset + N)?.try_into().ok()
}

/// Whether the transport header is a request or an answer netwatch watches (the tc
/// programs' rules): a SYN, an acceptable SYN-ACK, a DNS query to or response from port 53,
/// a datagram to or from a `--udp-port` service, an echo request or reply.
#[inline(always)]
fn classify(src: [u8; 16], dst: [u8; 16], proto: u8, l4: &[u8; L4_READ]) -> Option<Packet> {
    let src_port = u16::from_be_bytes([l4[0], l4[1]]);
    let dst_port = u16::from_be_bytes([l4[2], l4[3]]);
    let mut packet = Packet {
        src,
        dst,
        src_port,
        dst_port,
        tag: 0,
        ntp_request: false,
        seq: 0,
        proto,
        kind: Kind::Request,
    };
    match proto {
        proto::TCP => {
            let flags = l4[13] & (TCP_SYN | TCP_ACK | TCP_RST);
            packet.kind = if flags == TCP_SYN {
                Kind::Request
            } else if flags == TCP_SYN | TCP_ACK {
                Kind::Answer
            } else {
                return None;
            };
            packet.seq = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
        }
        proto::UDP => {
            // The DNS header follows the 8-byte UDP header: id, then QR in the flags.
            let response = l4[10] & 0x80 != 0;
            if dst_port == DNS_PORT && !response {
                packet.kind = Kind::Request;
                packet.tag = u16::from_be_bytes([l4[8], l4[9]]);
            } else if src_port == DNS_PORT && response {
                packet.kind = Kind::Answer;
                packet.tag = u16::from_be_bytes([l4[8], l4[9]]);
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
                    packet.kind = Kind::Request;
                    packet.ntp_request = true;
                } else if from == UDP_PORT_NTP && mode == NTP_MODE_SERVER {
                    packet.kind = Kind::Answer;
                } else if to == UDP_PORT_FLOW {
                    packet.kind = Kind::Request;
                } else if from == UDP_PORT_FLOW {
                    packet.kind = Kind::Answer;
                } else {
                    return None;
                }
            }
        }
        proto::ICMP | proto::ICMPV6 => {
            let (request, reply) = if proto == proto::ICMP {
                (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY)
            } else {
                (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY)
            };
            packet.kind = if l4[0] == request && l4[1] == 0 {
                Kind::Request
            } else if l4[0] == reply && l4[1] == 0 {
                Kind::Answer
            } else if (proto == proto::ICMP
                && l4[0] == ICMP_DEST_UNREACHABLE
                && l4[1] == ICMP_FRAG_NEEDED)
                || (proto == proto::ICMPV6 && l4[0] == ICMPV6_PACKET_TOO_BIG)
            {
                // The rest is the quoted packet's (see `quoted`).
                return Some(Packet {
                    kind: Kind::PathMtu,
                    ..packet
                });
            } else {
                return None;
            };
            // Identifier and sequence; ICMP targets have no port.
            packet.src_port = u16::from_be_bytes([l4[4], l4[5]]);
            packet.dst_port = 0;
            packet.tag = u16::from_be_bytes([l4[6], l4[7]]);
        }
        _ => return None,
    }
    Some(packet)
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

/// Whether `skb` is a packet this host sent (`pkt_type` `PACKET_HOST`), not a looped-back
/// copy of one (`PACKET_LOOPBACK`, `PACKET_BROADCAST`…: a directed broadcast, say). Inlined,
/// like [`netns_of`].
#[inline(always)]
#[expect(
    clippy::verbose_bit_mask,
    reason = "the three bits of pkt_type, spelled as the kernel spells them"
)]
fn sent_here(skb: *const u8) -> bool {
    // SAFETY: bpf_probe_read_kernel checks the address; a fault is an error.
    unsafe { bpf_probe_read_kernel(skb.wrapping_add(config!(pkt_type_byte) as usize)) }
        .is_ok_and(|byte: u8| (byte >> config!(pkt_type_shift)) & 0x7 == 0)
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

/// A request or answer dropped here, for a target netwatch already follows.
#[inline(always)]
fn existing_target_drop(target: &TargetKey, reason: u32, kind: Kind) {
    // SAFETY: a map value pointer, valid for this program run.
    let Some(slot) = TARGET_SLOTS.get_ptr(target).map(|slot| unsafe { *slot }) else {
        return;
    };
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
    // SAFETY: bpf_ktime_get_ns has no preconditions.
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
    // No socket cookie here: such a request is not attributed (never wrongly). Volatile:
    // LLVM merges the two adjacent zero stores into a call to `memset`, a third frame on the
    // chain (see `netns_of`).
    // SAFETY: fields of this CPU's scratch entry, aligned.
    unsafe {
        core::ptr::write_volatile(&raw mut request.socket_cookie, 0);
        core::ptr::write_volatile(&raw mut request.cgroup_id, 0);
    }
    match PENDING.insert(key, request, u64::from(BPF_NOEXIST)) {
        Ok(()) => add(&mut counters.requests, 1),
        // Another CPU made it pending in between.
        Err(err) if err == -EEXIST => {}
        Err(_) => untracked(counters),
    }
}

/// The pending table is full: counted, never mistaken for unanswered (as on tc egress).
#[inline(always)]
fn untracked(counters: &mut TargetCounters) {
    add(&mut counters.requests, 1);
    add(&mut counters.untracked, 1);
    count(KernelCounter::PendingFull);
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

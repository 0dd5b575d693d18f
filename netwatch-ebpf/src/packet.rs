//! Bounds-checked header reading: Ethernet (with up to two VLAN tags) or no link-layer
//! header at all, IPv4 (with options) and IPv6 (with a bounded chain of extension headers),
//! down to the transport header.

use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{
    bindings::bpf_hdr_start_off::BPF_HDR_START_NET,
    helpers::{bpf_skb_load_bytes, bpf_skb_load_bytes_relative},
    programs::TcContext,
};
use netwatch_common::{DIRECTION_EGRESS, DIRECTION_INGRESS, KernelCounter, RequestKey};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr, vlan::VlanHdr};

use crate::maps::count;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

/// VLAN tags walked in the frame (`QinQ` is two); more is counted, not parsed.
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before giving up (counted).
const MAX_EXTENSION_HEADERS: usize = 6;

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;
/// IPv4's "more fragments" flag in the flags and fragment offset word; IPv6's M flag in
/// the fragment header's offset word.
const IPV4_MORE_FRAGMENTS: u16 = 0x2000;
const IPV6_MORE_FRAGMENTS: u8 = 0x01;
/// The fragment offset in an IPv6 fragment header's offset word (the low bits are flags):
/// not 0, a non-first fragment.
pub const FRAGMENT_OFFSET_MASK: u16 = 0xfff8;

/// How header fields are read: [`InPlace`] on the paths the programs take per packet,
/// [`Copied`] where the offset is only known as a range (see `answers::quoted_rejection`).
pub trait Reader {
    fn get<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T>;
    /// Copies `N` bytes at `offset` into `dst`, where they are needed: assembling them in
    /// registers first spills them byte by byte to the stack, whose 512 bytes the global
    /// functions of `answers` share with their caller.
    fn copy<const N: usize>(ctx: &TcContext, offset: usize, dst: &mut [u8; N]) -> Option<()>;
}

/// [`read`]: from the linear data when the bytes are there.
pub struct InPlace;

impl Reader for InPlace {
    #[inline(always)]
    fn get<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
        read(ctx, offset)
    }

    #[inline(always)]
    fn copy<const N: usize>(ctx: &TcContext, offset: usize, dst: &mut [u8; N]) -> Option<()> {
        *dst = read(ctx, offset)?;
        Some(())
    }
}

/// Always through `bpf_skb_load_bytes`. Slower by a helper call, but it needs no packet
/// pointer arithmetic, which the verifier cannot follow once LLVM reassociates a variable
/// offset (`data + (off + n)` is not `(data + off) + n` to it).
pub struct Copied;

impl Reader for Copied {
    #[inline(always)]
    fn get<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
        ctx.load::<T>(offset).ok()
    }

    #[inline(always)]
    fn copy<const N: usize>(ctx: &TcContext, offset: usize, dst: &mut [u8; N]) -> Option<()> {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "offsets and lengths of headers, far below 4 GiB"
        )]
        // SAFETY: the helper writes at most N bytes into dst, which has N.
        let status = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb.cast(),
                offset as u32,
                dst.as_mut_ptr().cast(),
                N as u32,
            )
        };
        (status == 0).then_some(())
    }
}

/// Reads a `T` at `offset` bytes into the packet: straight from the linear data when it is
/// there (the common case, and the cheap one), through `bpf_skb_load_bytes` when the headers
/// sit in a paged fragment. `None` when the packet is shorter.
#[inline(always)]
pub fn read<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    // verifier: the helper's destination is written before the branch, on both paths. LLVM
    // merges the two paths into code that reads this slot on either (the value is unused on
    // the in-place path); Linux 5.10 refuses any read of stack a path has not written
    // ("invalid read from stack"), later kernels allow it to privileged loaders.
    let mut copied = MaybeUninit::<T>::zeroed();
    let start = ctx.data();
    let end = ctx.data_end();
    // verifier: compare packet pointers (not lengths) so it learns the accessed range. A
    // one-byte check compiles to `data_end > ptr`, from which it learns no readable range:
    // check two (a last byte of the packet is read through the helper below).
    let ptr = start + offset;
    let span = if size_of::<T>() < 2 {
        2
    } else {
        size_of::<T>()
    };
    if ptr + span <= end {
        // SAFETY: [ptr, ptr + size_of::<T>()) is inside the packet's linear data; `T` is
        // plain bytes (network-types headers, integers, byte arrays), any bit pattern is valid.
        Some(unsafe { core::ptr::read_unaligned(ptr as *const T) })
    } else {
        load_into(ctx, offset, &mut copied)
    }
}

/// The tc hook a packet is seen at: leaving this host, or arriving.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Hook {
    Egress = 0,
    Ingress = 1,
}

impl Hook {
    /// From the scalar a global function takes; anything but 1 is egress.
    #[inline(always)]
    pub const fn from_u32(value: u32) -> Self {
        if value == Self::Ingress as u32 {
            Self::Ingress
        } else {
            Self::Egress
        }
    }

    #[inline(always)]
    pub const fn opposite(self) -> Self {
        match self {
            Self::Egress => Self::Ingress,
            Self::Ingress => Self::Egress,
        }
    }

    /// The direction of a request seen here: one leaving was sent by this host.
    #[inline(always)]
    pub const fn request_direction(self) -> u8 {
        match self {
            Self::Egress => DIRECTION_EGRESS,
            Self::Ingress => DIRECTION_INGRESS,
        }
    }

    /// The direction of the request a reply seen here answers: a reply arriving answers a
    /// request this host sent.
    #[inline(always)]
    pub const fn answered_direction(self) -> u8 {
        self.opposite().request_direction()
    }

    /// (local, remote) of a packet's (source, destination) ports or addresses: a packet
    /// leaving comes from this host.
    #[inline(always)]
    pub fn local_and_remote<T>(self, source: T, destination: T) -> (T, T) {
        match self {
            Self::Egress => (source, destination),
            Self::Ingress => (destination, source),
        }
    }
}

/// `bpf_skb_load_bytes` of a `T` at `offset` into `out` (which the caller initialised: see
/// [`read`]).
#[inline(always)]
fn load_into<T: Copy>(ctx: &TcContext, offset: usize, out: &mut MaybeUninit<T>) -> Option<T> {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "offsets and sizes of headers, far below 4 GiB"
    )]
    // SAFETY: the helper writes at most size_of::<T>() bytes into `out`, which has them.
    let status = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            offset as u32,
            out.as_mut_ptr().cast(),
            size_of::<T>() as u32,
        )
    };
    // SAFETY: initialised (zeroed by the caller, then written by the helper); `T` is plain
    // bytes, any bit pattern is valid.
    (status == 0).then(|| unsafe { out.assume_init() })
}

/// Where the IP and transport headers of a packet are.
#[derive(Clone, Copy)]
pub struct Ip {
    pub v6: bool,
    /// Offset of the IP header.
    pub l3: usize,
    /// Transport protocol (IANA number), after any IPv6 extension headers.
    pub proto: u8,
    /// Offset of the transport header.
    pub l4: usize,
    /// The first fragment of a datagram split on the way (IPv4 MF, or an IPv6 fragment
    /// header's M flag, at offset 0): the rest follows in fragments that carry no transport
    /// header.
    pub first_fragment: bool,
}

impl Ip {
    /// Whether a link-layer header precedes the IP header of a packet leaving: Ethernet's
    /// is at least 14 bytes, and a device without one ([`NoLinkHeader`]) starts with the IP
    /// header at egress. (Only asked at egress: arriving, see [`NoLinkHeader`].)
    #[inline(always)]
    pub const fn has_link_header(&self) -> bool {
        self.l3 != 0
    }
}

/// Where a device puts the network header, and so how its packets are parsed: one
/// classifier pair for each ([`Ethernet`], [`NoLinkHeader`]), the same code after that.
pub trait LinkLayer {
    /// The IP and transport headers of a packet seen at `hook`. `None` for anything that
    /// is not IP, a non-first fragment, or headers cut short.
    fn parse(ctx: &TcContext, hook: Hook) -> Option<Ip>;
}

/// Ethernet and loopback devices: an Ethernet header, up to two VLAN tags, then IP.
pub struct Ethernet;

impl LinkLayer for Ethernet {
    #[inline(always)]
    fn parse(ctx: &TcContext, _hook: Hook) -> Option<Ip> {
        let ether_type = u16::from_be(read::<u16>(ctx, 12)?);
        if ether_type == ETH_P_IPV4 {
            return ipv4::<InPlace>(ctx, EthHdr::LEN);
        }
        if ether_type == ETH_P_IPV6 {
            return ipv6::<InPlace>(ctx, EthHdr::LEN);
        }
        vlan(ctx, ether_type)
    }
}

/// Devices without a link-layer header (tun, `WireGuard`, PPP, ipip, gre, sit): the IP
/// header is the first byte, and its version is the family, as the stack reads it
/// (`ip_rcv` and `ipv6_rcv` drop any other). Not `skb->protocol`: `BPF_PROG_TEST_RUN` sets
/// that from bytes 12 and 13, as if they were an `EtherType`.
///
/// Except arriving on the kernel's own tunnels (ipip, sit, gre, ip6tnl, ip6gre) of older
/// kernels (Debian's 5.10; not its 6.1): they left the mac header where the underlay's
/// Ethernet or outer IP header was, and tc ingress hands the packet from there, behind the
/// outer headers. (ipip resets it from 5.14: "ipip: allow redirecting ipip and mplsip
/// packets to eth devices", <https://github.com/torvalds/linux/commit/7ad136fd288c>.)
/// See [`arriving_network_offset`].
pub struct NoLinkHeader;

impl LinkLayer for NoLinkHeader {
    #[inline(always)]
    fn parse(ctx: &TcContext, hook: Hook) -> Option<Ip> {
        let at = match hook {
            Hook::Egress => 0,
            Hook::Ingress => arriving_network_offset(ctx),
        };
        match read::<u8>(ctx, at)? >> 4 {
            4 => ipv4::<InPlace>(ctx, at),
            6 => ipv6::<InPlace>(ctx, at),
            _ => None,
        }
    }
}

/// The most bytes the outer headers of a tunnelled packet take before the inner IP header
/// (see [`NoLinkHeader`]): Ethernet (14), IPv4 with options (60) or IPv6 with an extension
/// header or two, GRE with checksum, key and sequence number (16).
pub const MAX_OUTER_HEADERS: u32 = 112;
/// A mask that keeps an offset within [`MAX_OUTER_HEADERS`]' power of two.
const OUTER_HEADERS_MASK: u32 = 0x7f;
const _: () = assert!(MAX_OUTER_HEADERS <= OUTER_HEADERS_MASK);

/// Where the IP header of a packet arriving on a device without a link-layer header
/// starts: at 0 when the packet there is a whole one carrying no other (tun, `WireGuard`,
/// and every device on newer kernels), a check with no helper call. Otherwise maybe behind outer
/// headers, at the kernel's network header: its IP header's length, counted back from the
/// end, says where, and the same bytes must be there. Else 0, as the parser would have it.
#[inline(always)]
fn arriving_network_offset(ctx: &TcContext) -> usize {
    if starts_with_a_whole_packet(ctx) {
        return 0;
    }
    // verifier: an opaque copy, masked, so the bound travels with the offset (see
    // `classify::exchange`).
    let at = core::hint::black_box(behind_outer_headers(ctx)) & OUTER_HEADERS_MASK;
    if at > MAX_OUTER_HEADERS {
        0
    } else {
        at as usize
    }
}

/// IP in IP, IPv6 in IP, and GRE: what an outer header carries (and an IPv6 one, maybe
/// after the destination options of its encapsulation limit).
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
const IPPROTO_GRE: u8 = 47;

/// Whether the packet starts with an IP header giving the packet's own length, and carries
/// no other IP packet. Not the outer header of a tunnelled packet, then: sit and gre on
/// 5.10 hand tc ingress the packet from there (their mac header is left at the outer IP
/// header, ipip's and the IPv6 tunnels' at the underlay's Ethernet one).
#[inline(always)]
fn starts_with_a_whole_packet(ctx: &TcContext) -> bool {
    // Eight bytes rather than the six needed: zeroing six compiles to a call to `memset`,
    // a BPF function call per packet (see `requests::is_unicast`).
    let Some(head) = read::<[u8; 8]>(ctx, 0) else {
        return false;
    };
    if ip_length(&head) != Some(ctx.len()) {
        return false;
    }
    let carried = if head[0] >> 4 == 6 {
        head[6]
    } else {
        let Some(proto) = read::<u8>(ctx, 9) else {
            return false;
        };
        proto
    };
    !matches!(
        carried,
        IPPROTO_IPIP | IPPROTO_IPV6 | IPPROTO_GRE | IPV6_DEST_OPTS
    )
}

/// The offset of the kernel's network header when the packet has outer headers before it,
/// or 0. A function of its own (a static BPF function: a pointer argument is fine) keeps
/// its buffers off the classifier's frame, and so off the deepest call chain (512 bytes).
#[inline(never)]
fn behind_outer_headers(ctx: &TcContext) -> u32 {
    let mut head = [0u8; 8];
    // SAFETY: the helper writes at most 8 bytes into `head`, which has 8.
    let status = unsafe {
        bpf_skb_load_bytes_relative(
            ctx.skb.skb.cast(),
            0,
            head.as_mut_ptr().cast(),
            8,
            BPF_HDR_START_NET,
        )
    };
    if status != 0 {
        return 0;
    }
    let Some(length) = ip_length(&head) else {
        return 0;
    };
    let Some(at) = ctx.len().checked_sub(length) else {
        return 0;
    };
    if at == 0 || at > MAX_OUTER_HEADERS {
        return 0;
    }
    // verifier: the bound on an opaque copy (LLVM reads the packet at the unchecked one).
    let at = core::hint::black_box(at) & OUTER_HEADERS_MASK;
    if read::<[u8; 8]>(ctx, at as usize) == Some(head) {
        at
    } else {
        0
    }
}

/// The IPv6 header's own length, which its payload length leaves out.
const IPV6_HEADER_LEN: u32 = 40;
const _: () = assert!(Ipv6Hdr::LEN == IPV6_HEADER_LEN as usize);

/// The length an IP header starting with `head` gives its packet (IPv4's total length,
/// IPv6's payload length and its own 40 bytes); `None` when `head` is no IPv4 or IPv6
/// header.
#[inline(always)]
fn ip_length<const N: usize>(head: &[u8; N]) -> Option<u32> {
    let [first, _, v4_hi, v4_lo, v6_hi, v6_lo, ..] = head.as_slice() else {
        return None;
    };
    match first >> 4 {
        4 => Some(u32::from(u16::from_be_bytes([*v4_hi, *v4_lo]))),
        6 => Some(IPV6_HEADER_LEN + u32::from(u16::from_be_bytes([*v6_hi, *v6_lo]))),
        _ => None,
    }
}

#[inline(always)]
fn vlan(ctx: &TcContext, outer_type: u16) -> Option<Ip> {
    let mut ether_type = outer_type;
    let mut offset = EthHdr::LEN;
    for tags in 0..=MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            return None;
        }
        if tags == MAX_VLAN_TAGS {
            // A third tag: counted rather than misread. (Checked here, in the loop, rather
            // than after it: there the check cost the untagged path's register allocation
            // a spill; here the common path is four to six instructions shorter than before.)
            count(KernelCounter::VlanTagLimit);
            return None;
        }
        let tag = read::<VlanHdr>(ctx, offset)?;
        ether_type = u16::from_be(tag.ether_type);
        offset += VlanHdr::LEN;
        if ether_type == ETH_P_IPV4 {
            return ipv4::<InPlace>(ctx, offset);
        }
        if ether_type == ETH_P_IPV6 {
            return ipv6::<InPlace>(ctx, offset);
        }
    }
    None
}

/// The IPv4 header at `offset`, options skipped.
#[inline(always)]
pub fn ipv4<R: Reader>(ctx: &TcContext, offset: usize) -> Option<Ip> {
    // Three small reads instead of the whole header keep the common path short.
    let version_ihl = R::get::<u8>(ctx, offset)?;
    let fragment = u16::from_be_bytes(R::get::<[u8; 2]>(ctx, offset + 6)?);
    let proto = R::get::<u8>(ctx, offset + 9)?;
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < Ipv4Hdr::LEN {
        return None;
    }
    if fragment & 0x1fff != 0 {
        // A non-first fragment: what follows the IP header is payload, not a transport header.
        count(KernelCounter::Fragment);
        return None;
    }
    Some(Ip {
        v6: false,
        l3: offset,
        proto,
        l4: offset + header_len,
        first_fragment: fragment & IPV4_MORE_FRAGMENTS != 0,
    })
}

/// The IPv6 header at `offset`, extension headers walked up to [`MAX_EXTENSION_HEADERS`].
#[inline(always)]
pub fn ipv6<R: Reader>(ctx: &TcContext, offset: usize) -> Option<Ip> {
    // The stack drops anything but version 6; so must we, or a bogus frame could settle a
    // real request.
    if R::get::<u8>(ctx, offset)? >> 4 != 6 {
        return None;
    }
    let mut next = R::get::<u8>(ctx, offset + 6)?;
    let mut l4 = offset + Ipv6Hdr::LEN;
    let mut first_fragment = false;
    for _ in 0..MAX_EXTENSION_HEADERS {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                let [following, len] = R::get::<[u8; 2]>(ctx, l4)?;
                next = following;
                l4 += (usize::from(len) + 1) * 8;
            }
            IPV6_AUTH => {
                let [following, len] = R::get::<[u8; 2]>(ctx, l4)?;
                next = following;
                l4 += (usize::from(len) + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let [following, _, offset_hi, offset_lo] = R::get::<[u8; 4]>(ctx, l4)?;
                if u16::from_be_bytes([offset_hi, offset_lo]) & FRAGMENT_OFFSET_MASK != 0 {
                    count(KernelCounter::Fragment);
                    return None;
                }
                first_fragment = offset_lo & IPV6_MORE_FRAGMENTS != 0;
                next = following;
                l4 += 8;
            }
            _ => {
                return Some(Ip {
                    v6: true,
                    l3: offset,
                    proto: next,
                    l4,
                    first_fragment,
                });
            }
        }
    }
    if matches!(
        next,
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_AUTH | IPV6_FRAGMENT
    ) {
        count(KernelCounter::ExtensionHeaderLimit);
        return None;
    }
    Some(Ip {
        v6: true,
        l3: offset,
        proto: next,
        l4,
        first_fragment,
    })
}

/// Source and destination addresses written into `src` and `dst`, IPv4 ones mapped into
/// IPv6 (`dst` and `src` must hold zeros).
#[inline(always)]
pub fn addresses_into<R: Reader>(
    ctx: &TcContext,
    ip: &Ip,
    src: &mut [u8; 16],
    dst: &mut [u8; 16],
) -> Option<()> {
    if ip.v6 {
        R::copy(ctx, ip.l3 + 8, src)?;
        R::copy(ctx, ip.l3 + 24, dst)
    } else {
        for (address, offset) in [(src, ip.l3 + 12), (dst, ip.l3 + 16)] {
            let (prefix, ipv4) = address.split_last_chunk_mut::<4>()?;
            // ::ffff:a.b.c.d, as netwatch_common::ipv4_mapped spells it.
            prefix[10] = 0xff;
            prefix[11] = 0xff;
            R::copy(ctx, offset, ipv4)?;
        }
        Some(())
    }
}

/// The endpoints of a packet seen at `hook`, written into `key` (its addresses must be
/// zero): a packet leaving comes from this host, one arriving from the remote.
#[inline(always)]
pub fn endpoints_into<R: Reader>(
    ctx: &TcContext,
    ip: &Ip,
    hook: Hook,
    key: &mut RequestKey,
) -> Option<()> {
    match hook {
        Hook::Ingress => addresses_into::<R>(ctx, ip, &mut key.remote, &mut key.local),
        Hook::Egress => addresses_into::<R>(ctx, ip, &mut key.local, &mut key.remote),
    }
}

/// ICMP and `ICMPv6` message types (and the one code netwatch tells apart).
pub mod icmp {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACHABLE: u8 = 3;
    /// Code of a destination unreachable: "fragmentation needed and DF set" (RFC 1191).
    pub const FRAG_NEEDED: u8 = 4;
    pub const ECHO_REQUEST: u8 = 8;
    pub const V6_DEST_UNREACHABLE: u8 = 1;
    pub const V6_PACKET_TOO_BIG: u8 = 2;
    pub const V6_ECHO_REQUEST: u8 = 128;
    pub const V6_ECHO_REPLY: u8 = 129;
}

/// TCP flag bits (byte 13 of the header).
pub mod tcp_flags {
    pub const RST: u8 = 0x04;
    pub const SYN: u8 = 0x02;
    pub const ACK: u8 = 0x10;
}

/// Offset of the flags byte in the TCP header.
pub const TCP_FLAGS_OFFSET: usize = 13;
/// Offset of the data offset byte (header length in words, high nibble) in the TCP header.
pub const TCP_DATA_OFFSET_OFFSET: usize = 12;
/// Length of a DNS message header.
pub const DNS_HEADER_LEN: usize = 12;
/// Length of a UDP header.
pub const UDP_HEADER_LEN: usize = 8;
/// Offset of the DNS flags byte holding QR, from the start of the DNS message.
pub const DNS_FLAGS_OFFSET: usize = 2;
/// QR: the message is a response.
pub const DNS_QR: u8 = 0x80;
/// Bytes of an ICMP/ICMPv6 header before the quoted packet of an error.
pub const ICMP_HEADER_LEN: usize = 8;

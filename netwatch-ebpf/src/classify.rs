//! What a packet is to netwatch: a request, an answer, a rejection, or (the common case)
//! nothing. One dispatch for both hooks; the hook says which way the packet goes.
//!
//! The common path (a TCP segment without SYN or RST, UDP to ports nobody watches) ends in
//! [`packet`], inline in the classifier. Everything else goes on in a global BPF function
//! ([`exchange_egress`], [`exchange_ingress`]), which the verifier checks once for any
//! header layout rather than once for each of the dozens the parser can find (VLAN tags,
//! IPv4 options, IPv6 extension headers): that keeps verification fast on every kernel.

use aya_ebpf::{bindings::__sk_buff, programs::TcContext};
use netwatch_common::{
    DNS_PORT, KernelCounter, NTP_MODE_CLIENT, NTP_MODE_SERVER, UDP_PORT_FLOW, UDP_PORT_NTP, proto,
};

use crate::{
    answers,
    maps::{count, udp_port_kind},
    packet::{
        DNS_FLAGS_OFFSET, DNS_QR, Hook, Ip, LinkLayer, MAX_OUTER_HEADERS, TCP_FLAGS_OFFSET,
        UDP_HEADER_LEN, icmp, read, tcp_flags,
    },
    requests,
};

/// The deepest transport header handled: Ethernet, two VLAN tags, IPv6 with extension
/// headers. Deeper ones are counted in `ipv6_extension_limit`. (Without a link-layer header
/// the IP header is at 0, or behind a tunnel's outer headers.)
const MAX_L4_OFFSET: u32 = 1024;
/// The deepest IP header: behind a tunnel's outer headers (see `packet::NoLinkHeader`);
/// on Ethernet, 22 (two VLAN tags).
const MAX_L3_OFFSET: u32 = MAX_OUTER_HEADERS;
/// Masks that keep the offsets within those bounds (no-ops for offsets within them).
const L3_MASK: u32 = 0x7f;
const L4_MASK: u32 = 0x7ff;
const _: () = assert!(MAX_L3_OFFSET <= L3_MASK && MAX_L4_OFFSET <= L4_MASK);

/// A packet seen at `hook` on a device of link layer `L` (which says where its IP header is).
#[inline(always)]
pub fn packet<L: LinkLayer>(ctx: &TcContext, hook: Hook) {
    let Some(ip) = L::parse(ctx, hook) else {
        return;
    };
    match ip.proto {
        proto::TCP => {
            let Some(flags) = read::<u8>(ctx, ip.l4 + TCP_FLAGS_OFFSET) else {
                return;
            };
            // The common path (data, ACKs) ends here.
            if flags & (tcp_flags::SYN | tcp_flags::RST) == 0 {
                return;
            }
        }
        proto::UDP => {
            let Some(ports) = read::<[u8; 4]>(ctx, ip.l4) else {
                return;
            };
            let source = u16::from_be_bytes([ports[0], ports[1]]);
            let destination = u16::from_be_bytes([ports[2], ports[3]]);
            // UDP that is not DNS: one array index per port (requests and inbound requests
            // go to a watched port, answers come from one); ports nobody watches end here.
            if source != DNS_PORT
                && destination != DNS_PORT
                && udp_port_kind(destination) == 0
                && udp_port_kind(source) == 0
            {
                return;
            }
        }
        proto::ICMP if !ip.v6 => {}
        proto::ICMPV6 if ip.v6 => {}
        _ => return,
    }
    #[expect(
        clippy::cast_possible_truncation,
        reason = "header offsets, bounded in the callee"
    )]
    let (l3, l4) = (ip.l3 as u32, ip.l4 as u32);
    let kind = u32::from(ip.proto) | (u32::from(ip.v6) << 8) | (u32::from(ip.first_fragment) << 9);
    match hook {
        Hook::Egress => exchange_egress(ctx.skb.skb, l3, l4, kind),
        Hook::Ingress => exchange_ingress(ctx.skb.skb, l3, l4, kind),
    };
}

/// [`exchange`] for packets leaving. A global BPF function (BTF linkage `global`, hence
/// `no_mangle` and the C ABI): its arguments must be the context or scalars.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn exchange_egress(skb: *mut __sk_buff, l3: u32, l4: u32, kind: u32) -> i32 {
    exchange(skb, l3, l4, kind, Hook::Egress)
}

/// [`exchange`] for packets arriving.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn exchange_ingress(skb: *mut __sk_buff, l3: u32, l4: u32, kind: u32) -> i32 {
    exchange(skb, l3, l4, kind, Hook::Ingress)
}

/// A packet that may be a request, an answer or a rejection: the transport header at `l4`,
/// the IP header at `l3`, `kind` = IANA protocol | IPv6 << 8 | first fragment << 9.
#[inline(always)]
fn exchange(skb: *mut __sk_buff, l3: u32, l4: u32, kind: u32, hook: Hook) -> i32 {
    // verifier: the offsets are unknown here; bound them so packet pointers stay in range.
    if l4 > MAX_L4_OFFSET {
        count(KernelCounter::ExtensionHeaderLimit);
        return 0;
    }
    if l3 > MAX_L3_OFFSET {
        return 0;
    }
    let ctx = TcContext::new(skb);
    // verifier: masks on opaque copies, so the bounds travel with the values LLVM stores
    // (it would drop a mask it can prove redundant after the checks above, and a check made
    // on one register does not bound the copy spilled from another).
    let l3 = core::hint::black_box(l3) & L3_MASK;
    let l4 = core::hint::black_box(l4) & L4_MASK;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the low byte is the protocol"
    )]
    let ip = Ip {
        v6: kind & (1 << 8) != 0,
        l3: l3 as usize,
        proto: kind as u8,
        l4: l4 as usize,
        first_fragment: kind & (1 << 9) != 0,
    };
    classify(&ctx, &ip, hook);
    0
}

#[inline(always)]
fn classify(ctx: &TcContext, ip: &Ip, hook: Hook) {
    match ip.proto {
        proto::TCP => {
            let Some(flags) = read::<u8>(ctx, ip.l4 + TCP_FLAGS_OFFSET) else {
                return;
            };
            if flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST) == tcp_flags::SYN {
                requests::tcp_syn(ctx, ip, hook);
            } else {
                answers::tcp_answer(ctx, ip, flags, hook);
            }
        }
        proto::UDP => {
            let Some(header) = read::<[u8; 4]>(ctx, ip.l4) else {
                return;
            };
            let ports = [
                u16::from_be_bytes([header[0], header[1]]),
                u16::from_be_bytes([header[2], header[3]]),
            ];
            if ports[0] != DNS_PORT && ports[1] != DNS_PORT {
                udp_service(ctx, ip, ports, hook);
                return;
            }
            let Some(flags) = read::<u8>(ctx, ip.l4 + UDP_HEADER_LEN + DNS_FLAGS_OFFSET) else {
                count(KernelCounter::Malformed);
                return;
            };
            let response = flags & DNS_QR != 0;
            if !response && ports[1] == DNS_PORT {
                requests::dns_query(ctx, ip, ports, hook);
            } else if response && ports[0] == DNS_PORT {
                answers::dns_response(ctx, ip, ports, hook);
            }
        }
        _ => {
            // Type, code, checksum, then identifier and sequence (echo) or unused (errors).
            let Some(header) = read::<[u8; 8]>(ctx, ip.l4) else {
                return;
            };
            let (echo_request, echo_reply) = if ip.v6 {
                (icmp::V6_ECHO_REQUEST, icmp::V6_ECHO_REPLY)
            } else {
                (icmp::ECHO_REQUEST, icmp::ECHO_REPLY)
            };
            match header[0] {
                kind if kind == echo_request => requests::echo_request(ctx, ip, header, hook),
                kind if kind == echo_reply => answers::echo_reply(ctx, ip, header, hook),
                _ => answers::icmp_error(ctx, ip, header, hook),
            }
        }
    }
}

/// A datagram to or from a watched UDP port that is not DNS (`ports`: source, destination).
///
/// NTP (RFC 5905) says what a message is: mode 3 (client) to the port is a request, mode 4
/// (server) from it an answer; any other mode (symmetric, broadcast, control) is not an
/// exchange netwatch follows. A `--udp-port` service says nothing, so the flow does: a
/// datagram from the port answers what the reversed flow has outstanding, one to the port
/// asks. A datagram that answers is not also a request (both ports watched: a `WireGuard`
/// peer on 51820 talking to another).
#[inline(always)]
fn udp_service(ctx: &TcContext, ip: &Ip, ports: [u16; 2], hook: Hook) {
    let (source, destination) = (udp_port_kind(ports[0]), udp_port_kind(ports[1]));
    if source == UDP_PORT_NTP || destination == UDP_PORT_NTP {
        let Some(first) = read::<u8>(ctx, ip.l4 + UDP_HEADER_LEN) else {
            count(KernelCounter::Malformed);
            return;
        };
        let mode = first & 0x07;
        if mode == NTP_MODE_CLIENT && destination == UDP_PORT_NTP {
            requests::ntp_request(ctx, ip, ports, hook);
        } else if mode == NTP_MODE_SERVER && source == UDP_PORT_NTP {
            answers::ntp_answer(ctx, ip, ports, hook);
        }
        return;
    }
    if source == UDP_PORT_FLOW
        && answers::flow_answer(ctx, ip, ports, hook, destination == UDP_PORT_FLOW)
    {
        return;
    }
    if destination == UDP_PORT_FLOW {
        requests::flow_request(ctx, ip, ports, hook);
    }
}

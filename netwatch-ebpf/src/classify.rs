//! What a packet is to netwatch: a request, an answer, a rejection, or (the common case)
//! nothing. One dispatch for both hooks; the hook says which way the packet goes.

use aya_ebpf::programs::TcContext;
use netwatch_common::{DNS_PORT, KernelCounter, proto};

use crate::{
    answers,
    maps::count,
    packet::{self, Hook, TCP_FLAGS_OFFSET, UDP_HEADER_LEN, icmp, read, tcp_flags},
    requests,
};

/// Offset of the DNS flags byte holding QR, from the start of the DNS message.
const DNS_FLAGS_OFFSET: usize = 2;
/// QR: the message is a response.
const DNS_QR: u8 = 0x80;

#[inline(always)]
pub fn packet(ctx: &TcContext, hook: Hook) {
    let Some(ip) = packet::parse(ctx) else { return };
    match ip.proto {
        proto::TCP => {
            let Some(flags) = read::<u8>(ctx, ip.l4 + TCP_FLAGS_OFFSET) else {
                return;
            };
            // The common path (data, ACKs) ends here.
            if flags & (tcp_flags::SYN | tcp_flags::RST) == 0 {
                return;
            }
            if flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST) == tcp_flags::SYN {
                requests::tcp_syn(ctx, &ip, hook);
            } else {
                answers::tcp_answer(ctx, &ip, flags, hook);
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
                return;
            }
            let Some(flags) = read::<u8>(ctx, ip.l4 + UDP_HEADER_LEN + DNS_FLAGS_OFFSET) else {
                count(KernelCounter::Malformed);
                return;
            };
            let response = flags & DNS_QR != 0;
            if !response && ports[1] == DNS_PORT {
                requests::dns_query(ctx, &ip, ports, hook);
            } else if response && ports[0] == DNS_PORT {
                answers::dns_response(ctx, &ip, ports, hook);
            }
        }
        proto::ICMP | proto::ICMPV6 => {
            if (ip.proto == proto::ICMPV6) != ip.v6 {
                return;
            }
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
                kind if kind == echo_request => requests::echo_request(ctx, &ip, header, hook),
                kind if kind == echo_reply => answers::echo_reply(ctx, &ip, header, hook),
                kind => answers::icmp_error(ctx, &ip, kind, header[1], hook),
            }
        }
        _ => {}
    }
}

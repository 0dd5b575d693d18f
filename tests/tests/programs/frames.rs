//! The packet builders themselves (no kernel needed).

use super::*;

/// The fixtures are what they claim: etherparse reads them back with the transport header
/// where [`Shape::l4`] says, the IP lengths match, and errors quote the request.
#[test]
fn packets_are_well_formed() {
    let shapes = [
        Shape::plain(),
        Shape::vlan(1),
        Shape::vlan(2),
        Shape::ipv4_options(10),
        Shape::ipv4_fragment(0, true),
        Shape::ipv6_chain(6),
        Shape::ipv6(&[Ext::Fragment {
            offset: 0,
            more: true,
        }]),
    ];
    for v6 in [false, true] {
        for shape in &shapes {
            for kind in Kind::ALL {
                let flow = Flow::numbered(kind, v6, 1);
                for frame in [flow.request_in(shape), flow.answer_in(shape)] {
                    let what = format!("{kind:?} {} in {shape:?}", family(v6));
                    let sliced = SlicedPacket::from_ethernet(&frame)
                        .unwrap_or_else(|err| panic!("{what}: etherparse cannot read it: {err}"));
                    let payload = match sliced.net {
                        Some(NetSlice::Ipv4(ip)) => {
                            assert!(!v6, "{what}");
                            let header = ip.header();
                            assert_eq!(
                                usize::from(header.total_len()),
                                frame.len() - shape.l3(),
                                "{what}"
                            );
                            assert_eq!(
                                usize::from(header.ihl()) * 4,
                                shape.ip_len(false),
                                "{what}"
                            );
                            ip.payload().payload.len()
                        }
                        Some(NetSlice::Ipv6(ip)) => {
                            assert!(v6, "{what}");
                            assert_eq!(
                                ip.extensions().slice().len(),
                                shape.ip_len(true) - packets::IPV6_LEN,
                                "{what}"
                            );
                            ip.payload().payload.len()
                        }
                        _ => panic!("{what}: no IP header"),
                    };
                    assert_eq!(
                        frame.len() - payload,
                        shape.l4(v6),
                        "{what}: transport offset"
                    );
                    let right_transport = sliced.transport.map(|transport| {
                        matches!(
                            (kind, transport),
                            (Kind::Tcp, TransportSlice::Tcp(_))
                                | (Kind::Dns, TransportSlice::Udp(_))
                                | (
                                    Kind::Echo,
                                    TransportSlice::Icmpv4(_) | TransportSlice::Icmpv6(_)
                                )
                        )
                    });
                    // etherparse reads no transport header out of a fragment, a first one
                    // included: none is right there only.
                    let fragment = shape.fragments(v6);
                    assert!(right_transport.unwrap_or(fragment), "{what}: transport");
                }
            }
        }
        // Unreachables quote the request's IP packet after an 8-byte ICMP header.
        let flow = Flow::numbered(Kind::Tcp, v6, 1);
        let error = flow.unreachable(reject_code(v6));
        assert_eq!(&error[flow.l4() + ICMP_LEN..], flow.quote().as_slice());
        assert_eq!(flow.quote(), flow.request()[ETHERNET_LEN..].to_vec());

        // The one-call builders are the flows' packets.
        let (dns, echo) = (Flow::dns(v6, 30_001, 7), Flow::echo(v6, 9, 3));
        let tcp = Flow::tcp(v6, 40_001, 443, 1_000);
        let unreachable = if v6 {
            packets::icmp6_unreachable
        } else {
            packets::icmp_unreachable
        };
        let one_call = [
            (
                packets::dns_query(v6, 30_001, 7, packets::QNAME),
                dns.request(),
            ),
            (
                packets::dns_response(v6, 53, 30_001, 7, packets::QNAME),
                dns.answer(),
            ),
            (packets::syn(v6, 40_001, 443, 1_000), tcp.request()),
            (packets::syn_ack(v6, 443, 40_001, 1_001), tcp.answer()),
            (packets::rst(v6, 443, 40_001, Some(1_001)), tcp.rst()),
            (packets::echo_request(v6, 9, 3), echo.request()),
            (packets::echo_reply(v6, 9, 3), echo.answer()),
            (unreachable(3, &tcp.quote()), tcp.unreachable(3)),
        ];
        for (index, (built, expected)) in one_call.iter().enumerate() {
            assert_eq!(built, expected, "one-call builder {index} ({})", family(v6));
        }
    }
}

/// The hand-patched fixtures chain correctly: a third VLAN tag after `QinQ`, and a seventh
/// IPv6 extension header after the six etherparse writes.
#[test]
fn hand_patched_packets_chain_correctly() {
    let three = Flow::numbered(Kind::Tcp, false, 1).request_in(&Shape::vlan(3));
    let types: Vec<u16> = [12, 16, 20, 24]
        .iter()
        .map(|&at| u16::from_be_bytes([three[at], three[at + 1]]))
        .collect();
    assert_eq!(
        types,
        [0x88a8, 0x8100, 0x8100, 0x0800],
        "three tags: 802.1ad, 802.1Q, 802.1Q"
    );
    assert_eq!(
        three.len(),
        Flow::numbered(Kind::Tcp, false, 1).request().len() + 12
    );

    let seven = Shape::ipv6_chain(7);
    let frame = Flow::numbered(Kind::Dns, true, 1).request_in(&seven);
    let l3 = seven.l3();
    let payload_len = usize::from(u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]));
    assert_eq!(
        payload_len,
        frame.len() - l3 - packets::IPV6_LEN,
        "payload length covers the chain"
    );
    let (mut next, mut at, mut chain) = (frame[l3 + 6], l3 + packets::IPV6_LEN, Vec::new());
    while matches!(next, 0 | 43 | 44 | 51 | 60) {
        chain.push(next);
        let len = match next {
            44 => 8,
            51 => (usize::from(frame[at + 1]) + 2) * 4,
            _ => (usize::from(frame[at + 1]) + 1) * 8,
        };
        next = frame[at];
        at += len;
    }
    assert_eq!(
        chain,
        [0, 60, 43, 44, 51, 60, 60],
        "the seven headers, in order"
    );
    assert_eq!(
        (next, at),
        (17, seven.l4(true)),
        "then UDP where the shape says"
    );
}

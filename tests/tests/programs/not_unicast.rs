//! Broadcast and multicast destinations: never a request to one target.

use super::*;

/// A frame from this host with the given destination MAC and addresses, carrying `transport`
/// and `payload` (for requests to broadcast and multicast destinations).
fn request_to(
    destination_mac: [u8; 6],
    destination: IpAddr,
    transport: Transport,
    payload: &[u8],
) -> Vec<u8> {
    let mut frame = packets::frame(
        packets::local(destination.is_ipv6()),
        destination,
        &Shape::plain(),
        transport,
        payload,
    );
    frame[..6].copy_from_slice(&destination_mac);
    frame
}

/// Broadcast and multicast destinations are answered by others, from their own addresses:
/// never a request to a target, counted `not_unicast`.
#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one table of cases, read top to bottom"
)]
fn broadcast_and_multicast_requests_are_not_requests() {
    const NAME: &str = "broadcast_and_multicast_requests_are_not_requests";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    let echo = Transport::Icmp {
        kind: packets::ICMP_ECHO_REQUEST,
        code: 0,
        rest: [0, 1, 0, 1],
    };
    let echo6 = Transport::Icmp {
        kind: packets::ICMPV6_ECHO_REQUEST,
        code: 0,
        rest: [0, 1, 0, 1],
    };
    let dns = Transport::Udp {
        source: 40_000,
        destination: 53,
    };
    let query = packets::dns_message(7, false, packets::QNAME);
    let broadcast_mac = [0xff; 6];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "ping -b to the subnet's directed broadcast",
            request_to(
                broadcast_mac,
                IpAddr::V4(Ipv4Addr::new(203, 0, 113, 255)),
                echo.clone(),
                packets::ECHO_PAYLOAD,
            ),
        ),
        (
            "ping to the limited broadcast",
            request_to(
                broadcast_mac,
                IpAddr::V4(Ipv4Addr::BROADCAST),
                echo.clone(),
                packets::ECHO_PAYLOAD,
            ),
        ),
        (
            "a DNS query to the limited broadcast",
            request_to(
                broadcast_mac,
                IpAddr::V4(Ipv4Addr::BROADCAST),
                dns.clone(),
                &query,
            ),
        ),
        (
            "ping to 224.0.0.1",
            request_to(
                [0x01, 0x00, 0x5e, 0, 0, 1],
                IpAddr::V4(Ipv4Addr::new(224, 0, 0, 1)),
                echo.clone(),
                packets::ECHO_PAYLOAD,
            ),
        ),
        (
            "ping to a multicast group, unicast MAC (a misbehaving driver)",
            request_to(
                packets::GATEWAY_MAC,
                IpAddr::V4(Ipv4Addr::new(239, 1, 2, 3)),
                echo,
                packets::ECHO_PAYLOAD,
            ),
        ),
        (
            "ping ff02::1",
            request_to(
                [0x33, 0x33, 0, 0, 0, 1],
                IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1)),
                echo6.clone(),
                packets::ECHO_PAYLOAD,
            ),
        ),
        (
            "a DNS query to ff02::fb, unicast MAC",
            request_to(
                packets::GATEWAY_MAC,
                IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb)),
                dns,
                &query,
            ),
        ),
    ];
    for (what, frame) in cases {
        h.check(
            EGRESS_PROGRAM,
            &frame,
            Change::none().count(KernelCounter::NotUnicast, 1),
            what,
        );
    }
    // A unicast address behind a unicast MAC is a request, as ever.
    let flow = Flow::echo(false, 1, 1);
    h.check(
        EGRESS_PROGRAM,
        &flow.request(),
        Change::none().recorded(&flow),
        "ping to a unicast address",
    );
}

//! 1. Requests.

use super::*;

/// Four keys of [`Flow::numbered`] flows numbered 1, spelled out byte by byte: IPv4
/// addresses mapped, ports and tags as on the wire.
fn spelled_out_keys() -> [RequestKey; 4] {
    let mapped = |a: [u8; 4]| {
        [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
        ]
    };
    let dns_v4 = RequestKey {
        remote: mapped([198, 51, 100, 10]),
        local: mapped([203, 0, 113, 2]),
        remote_port: 53,
        local_port: 30_001,
        tag: 0x1001,
        proto: 17,
        direction: netwatch_common::DIRECTION_EGRESS,
    };
    let syn_v6 = RequestKey {
        remote: "2001:db8:2::10"
            .parse::<Ipv6Addr>()
            .expect("address")
            .octets(),
        local: "2001:db8:1::2"
            .parse::<Ipv6Addr>()
            .expect("address")
            .octets(),
        remote_port: 443,
        local_port: 40_001,
        tag: 0,
        proto: 6,
        direction: netwatch_common::DIRECTION_EGRESS,
    };
    let echo_v4 = RequestKey {
        remote: mapped([198, 51, 100, 10]),
        local: mapped([203, 0, 113, 2]),
        remote_port: 0,
        local_port: 0x0e01,
        tag: 2,
        proto: 1,
        direction: netwatch_common::DIRECTION_EGRESS,
    };
    let echo_v6 = RequestKey {
        proto: 58,
        ..syn_v6
    };
    let echo_v6 = RequestKey {
        remote_port: 0,
        local_port: 0x0e01,
        tag: 2,
        ..echo_v6
    };
    [dns_v4, syn_v6, echo_v4, echo_v6]
}

/// Each kind of request, IPv4 and IPv6, becomes one pending entry under its exact key;
/// sending it again is a retransmit, not a new request.
#[test]
fn requests_are_recorded_with_exact_keys_and_retransmits_counted() {
    const NAME: &str = "requests_are_recorded_with_exact_keys_and_retransmits_counted";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    let mut sent = Vec::new();
    for v6 in [false, true] {
        for kind in Kind::ALL {
            let flow = Flow::numbered(kind, v6, 1);
            let what = format!("the request {}", flow.describe());
            h.check(
                EGRESS_PROGRAM,
                &flow.request(),
                Change::none().recorded(&flow),
                &what,
            );
            let entry = h
                .entry(&flow)
                .unwrap_or_else(|| panic!("{what}: no entry under its exact key"));
            assert_eq!(entry.first_sent_ns, entry.last_sent_ns, "{what}");
            assert_ne!(entry.first_sent_ns, 0, "{what}");
            assert_eq!(entry.flags, 0, "{what}");
            assert_eq!(
                entry.tcp_seq,
                if kind == Kind::Tcp { flow.seq } else { 0 },
                "{what}"
            );
            assert_eq!(
                usize::from(entry.question_len),
                flow.question().len(),
                "{what}"
            );
            sent.push(flow);
        }
    }

    let mut keys: Vec<RequestKey> = h.keys().into_iter().map(|(key, _)| key).collect();
    for expected in spelled_out_keys() {
        assert!(
            keys.contains(&expected),
            "no pending entry under {}",
            key_name(&expected)
        );
    }
    let mut wanted: Vec<RequestKey> = sent.iter().map(Flow::key).collect();
    let order = |key: &RequestKey| key_name(key);
    keys.sort_by_key(order);
    wanted.sort_by_key(order);
    assert_eq!(keys, wanted, "exactly one entry per request");

    // The same requests again: retransmits. The first-sent time stays (State::since checks).
    for flow in &sent {
        let what = format!("the request {} again", flow.describe());
        h.check(
            EGRESS_PROGRAM,
            &flow.request(),
            Change::none().retransmitted(flow),
            &what,
        );
    }
    // A second request to each target is a new request of the same target.
    for flow in &sent {
        let second = Flow::numbered(flow.kind, flow.v6, 2);
        let what = format!("a second request {}", second.describe());
        h.check(
            EGRESS_PROGRAM,
            &second.request(),
            Change::none().recorded(&second),
            &what,
        );
        let counters = h.target(flow);
        assert_eq!(
            (counters.requests, counters.retransmits),
            (2, 1),
            "{what}: target counters"
        );
        assert_ne!(counters.last_request_ns, 0, "{what}");
        assert_eq!(
            (counters.answered, counters.rejected, counters.late),
            (0, 0, 0),
            "{what}"
        );
    }
}

/// A DNS query's question is captured as sent: the whole of a short one, the first
/// `DNS_QUESTION_CAPTURE` bytes of a long one.
#[test]
fn dns_questions_are_captured_as_sent() {
    const NAME: &str = "dns_questions_are_captured_as_sent";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for v6 in [false, true] {
        let dns = Flow::numbered(Kind::Dns, v6, 1);
        h.send(&[dns]);
        let entry = h.entry(&dns).expect("the DNS entry");
        assert_eq!(
            &entry.question[..usize::from(entry.question_len)],
            packets::dns_question(packets::QNAME).as_slice(),
            "{}",
            dns.describe()
        );
    }
    for v6 in [false, true] {
        let long = Flow::dns(v6, 31_000, 0x2222).with_qname(packets::LONG_QNAME);
        assert!(
            packets::dns_question(packets::LONG_QNAME).len()
                > netwatch_common::DNS_QUESTION_CAPTURE
        );
        let what = format!("a query for a long name {}", long.describe());
        h.check(
            EGRESS_PROGRAM,
            &long.request(),
            Change::none().recorded(&long),
            &what,
        );
        let entry = h.entry(&long).expect("the long query");
        assert_eq!(
            usize::from(entry.question_len),
            netwatch_common::DNS_QUESTION_CAPTURE,
            "{what}"
        );
        assert_eq!(
            &entry.question[..],
            &packets::dns_question(packets::LONG_QNAME)[..netwatch_common::DNS_QUESTION_CAPTURE],
            "{what}"
        );
    }
}

/// What leaves the host but is not a request (a SYN-ACK, a RST, a pure ACK, UDP to another
/// port, an echo reply, an echo request with a nonzero code) records nothing; a SYN-ACK, RST
/// or echo reply leaving answers an inbound request, here none.
#[test]
fn what_is_not_a_request_changes_nothing() {
    const NAME: &str = "what_is_not_a_request_changes_nothing";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for v6 in [false, true] {
        let tcp = Flow::numbered(Kind::Tcp, v6, 9);
        let (local, remote) = (packets::local(v6), packets::remote(v6));
        let not_requests = [
            (
                "a SYN-ACK leaving",
                tcp.with_local(remote).with_remote(local).answer(),
            ),
            (
                "a RST leaving",
                tcp.with_local(remote).with_remote(local).rst(),
            ),
            ("a pure ACK leaving", {
                let mut header = etherparse::TcpHeader::new(40_009, 443, 7, 64_240);
                header.ack = true;
                header.acknowledgment_number = 9;
                packets::frame(local, remote, &Shape::plain(), Transport::Tcp(header), &[])
            }),
            (
                "UDP to port 54",
                Flow::numbered(Kind::Dns, v6, 9)
                    .with_remote_port(54)
                    .request(),
            ),
            (
                "an echo reply leaving",
                Flow::numbered(Kind::Echo, v6, 9)
                    .with_local(remote)
                    .with_remote(local)
                    .answer(),
            ),
            ("an echo request with code 1", {
                let kind = if v6 {
                    packets::ICMPV6_ECHO_REQUEST
                } else {
                    packets::ICMP_ECHO_REQUEST
                };
                let transport = Transport::Icmp {
                    kind,
                    code: 1,
                    rest: [0x0e, 9, 0, 1],
                };
                packets::frame(
                    local,
                    remote,
                    &Shape::plain(),
                    transport,
                    packets::ECHO_PAYLOAD,
                )
            }),
        ];
        for (what, frame) in not_requests {
            let expected = match what {
                "a SYN-ACK leaving" | "an echo reply leaving" => {
                    Change::none().count(UnmatchedAnswer, 1)
                }
                "a RST leaving" => Change::none().count(UnmatchedRejection, 1),
                _ => Change::none(),
            };
            let what = format!("{what} ({})", family(v6));
            h.check(EGRESS_PROGRAM, &frame, expected, &what);
        }
    }
}

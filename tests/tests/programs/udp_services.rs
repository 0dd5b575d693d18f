//! UDP services beyond DNS: NTP (watched by default) and `--udp-port` flows.

use super::*;

/// An unreachable of `code` from the router quoting the first `keep` bytes of `flow`'s
/// request (its IP packet).
fn unreachable_quoting(flow: &Flow, code: u8, keep: usize) -> Vec<u8> {
    let quote = flow.quote();
    packets::unreachable(
        flow.v6,
        code,
        &quote[..keep.min(quote.len())],
        &Shape::plain(),
    )
}

/// The codes of port-unreachable and admin-prohibited in the family `v6`.
fn port_and_admin_codes(v6: bool) -> [u8; 2] {
    if v6 { [4, 1] } else { [3, 13] }
}

/// A port unreachable and an admin prohibited quoting a request of `kind` each reject it
/// with its reason; the request sent again after that is a retransmit of it.
fn rejections_settle_and_retransmits_follow(h: &mut Harness, kind: Kind, v6: bool) {
    let fam = family(v6);
    for (n, code) in port_and_admin_codes(v6).into_iter().enumerate() {
        let flow = Flow::numbered(kind, v6, 10 + u16::try_from(n).unwrap());
        h.send(&[flow]);
        h.check(
            INGRESS_PROGRAM,
            &flow.unreachable(code),
            Change::none().rejected(&flow, unreachable_reason(v6, code)),
            &format!("{fam}: an unreachable of code {code} quoting the request rejects it"),
        );
        h.check(
            EGRESS_PROGRAM,
            &flow.request(),
            Change::none().retransmitted(&flow),
            &format!("{fam}: the rejected request sent again is a retransmit"),
        );
    }
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one table of cases, read top to bottom"
)]
fn ntp_requests_are_matched_by_transmit_timestamp() {
    const NAME: &str = "ntp_requests_are_matched_by_transmit_timestamp";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for v6 in [false, true] {
        let fam = family(v6);
        let first = Flow::ntp(v6, 33_001, 0xe95e_d001_0000_0001);
        h.check(
            EGRESS_PROGRAM,
            &first.request(),
            Change::none().recorded(&first),
            &format!("{fam}: an NTP client request is a request"),
        );
        h.check(
            EGRESS_PROGRAM,
            &first.request(),
            Change::none().retransmitted(&first),
            &format!("{fam}: the same datagram again is a retransmit"),
        );
        h.check(
            INGRESS_PROGRAM,
            &first.answer(),
            Change::none().answered(&first),
            &format!("{fam}: the server's answer carrying the timestamp answers it"),
        );
        h.check(
            INGRESS_PROGRAM,
            &first.answer(),
            Change::none().count(UnmatchedAnswer, 1),
            &format!("{fam}: a duplicate answer matches nothing"),
        );
        // The next poll on the same flow: a new timestamp, a new request.
        let second = Flow::ntp(v6, 33_001, 0xe95e_d002_0000_0002);
        h.check(
            EGRESS_PROGRAM,
            &second.request(),
            Change::none().recorded(&second),
            &format!("{fam}: a new transmit timestamp on the flow is a new request"),
        );
        let stranger = Flow::ntp(v6, 33_001, 0xe95e_d0ee_0000_00ef);
        assert_ne!(stranger.tag, second.tag);
        h.check(
            INGRESS_PROGRAM,
            &stranger.answer(),
            Change::none().count(UnmatchedAnswer, 1),
            &format!("{fam}: an answer with another origin timestamp answers nothing"),
        );
        // Another timestamp that folds to the same tag: the low 32 bits tell them apart.
        let lookalike = Flow::ntp(v6, 33_001, 0xe95e_d0ee_0000_00ee);
        assert_eq!(lookalike.tag, second.tag);
        h.check(
            INGRESS_PROGRAM,
            &lookalike.answer(),
            Change::none().count(InvalidAnswer, 1),
            &format!("{fam}: an answer whose origin only folds like the request's"),
        );
        // Rejections: port unreachable and admin prohibited, each with its reason.
        rejections_settle_and_retransmits_follow(&mut h, Kind::Ntp, v6);
        // Not exchanges: symmetric mode, a client-mode datagram *from* port 123, a server
        // answer *to* port 123 that nobody asked.
        let symmetric = first.udp_out(
            &packets::ntp_message(packets::NTP_MODE_SYMMETRIC, 0, 7),
            &Shape::plain(),
        );
        h.check(
            EGRESS_PROGRAM,
            &symmetric,
            Change::none(),
            &format!("{fam}: symmetric mode"),
        );
        let reversed = first.udp_in(
            &packets::ntp_message(packets::NTP_MODE_CLIENT, 0, 7),
            &Shape::plain(),
        );
        h.check(
            INGRESS_PROGRAM,
            &reversed,
            Change::none(),
            &format!("{fam}: mode 3 from port 123"),
        );
        // Truncations: a request or an answer shorter than 48 bytes does nothing but count.
        let cut = first.udp_out(
            &packets::ntp_message(packets::NTP_MODE_CLIENT, 0, 9)[..47],
            &Shape::plain(),
        );
        h.check(
            EGRESS_PROGRAM,
            &cut,
            Change::none().count(KernelCounter::Malformed, 1),
            &format!("{fam}: a 47-byte client request"),
        );
        h.send(&[second]);
        let cut_answer = second.udp_in(&second.ntp_answer_message()[..47], &Shape::plain());
        h.check(
            INGRESS_PROGRAM,
            &cut_answer,
            Change::none().count(KernelCounter::Malformed, 1),
            &format!("{fam}: a 47-byte answer"),
        );
        // An error quoting the request without its transmit timestamp cannot say which.
        let third = Flow::numbered(Kind::Ntp, v6, 20);
        h.send(&[third]);
        let short = unreachable_quoting(
            &third,
            port_and_admin_codes(v6)[0],
            third.l4() - ETHERNET_LEN + packets::UDP_LEN + 8,
        );
        h.check(
            INGRESS_PROGRAM,
            &short,
            Change::none().count(KernelCounter::ShortQuote, 1),
            &format!("{fam}: an unreachable quoting 8 bytes of the NTP message"),
        );
        h.check(
            INGRESS_PROGRAM,
            &second.answer(),
            Change::none().answered(&second),
            &format!("{fam}: the second request's whole answer"),
        );
    }
}

#[test]
fn udp_port_flows_are_requests_until_something_comes_back() {
    const NAME: &str = "udp_port_flows_are_requests_until_something_comes_back";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for v6 in [false, true] {
        let fam = family(v6);
        let flow = Flow::udp(v6, 34_001, packets::UDP_SERVICE_PORT);
        h.check(
            EGRESS_PROGRAM,
            &flow.request(),
            Change::none(),
            &format!("{fam}: a datagram to a port not watched is nothing"),
        );
    }
    h.probe
        .watch_udp_ports(&[packets::UDP_SERVICE_PORT])
        .expect("watching the service port");
    for v6 in [false, true] {
        let fam = family(v6);
        let flow = Flow::udp(v6, 34_001, packets::UDP_SERVICE_PORT);
        h.check(
            EGRESS_PROGRAM,
            &flow.request(),
            Change::none().recorded(&flow),
            &format!("{fam}: the first datagram of a flow to a watched port"),
        );
        for n in 0..2 {
            h.check(
                EGRESS_PROGRAM,
                &flow.udp_out(format!("more {n}").as_bytes(), &Shape::plain()),
                Change::none().retransmitted(&flow),
                &format!("{fam}: more datagrams before anything comes back"),
            );
        }
        h.check(
            INGRESS_PROGRAM,
            &flow.answer(),
            Change::none().answered(&flow),
            &format!("{fam}: any datagram back on the reversed flow answers it"),
        );
        h.check(
            EGRESS_PROGRAM,
            &flow.request(),
            Change::none().recorded(&flow),
            &format!("{fam}: the next datagram after the answer is a new request"),
        );
        h.check(
            INGRESS_PROGRAM,
            &flow.answer(),
            Change::none().answered(&flow),
            &format!("{fam}: and its answer"),
        );
        let other = Flow::udp(v6, 34_002, 5_000);
        h.check(
            EGRESS_PROGRAM,
            &other.request(),
            Change::none(),
            &format!("{fam}: another port is still not watched"),
        );
        rejections_settle_and_retransmits_follow(&mut h, Kind::Udp, v6);
        let cut_flow = Flow::numbered(Kind::Udp, v6, 30);
        let mut cut = cut_flow.request();
        cut.truncate(cut_flow.l4() + 2);
        h.check(
            EGRESS_PROGRAM,
            &cut,
            Change::none(),
            &format!("{fam}: a datagram cut inside its ports"),
        );
        h.send(&[cut_flow]);
        let ip_len = Shape::plain().ip_len(v6);
        h.check(
            INGRESS_PROGRAM,
            &unreachable_quoting(&cut_flow, port_and_admin_codes(v6)[1], ip_len + 2),
            Change::none().count(KernelCounter::ShortQuote, 1),
            &format!("{fam}: an unreachable quoting half the ports"),
        );
        let unasked = Flow::numbered(Kind::Udp, v6, 31);
        h.check(
            INGRESS_PROGRAM,
            &unasked.answer(),
            Change::none().count(UnmatchedAnswer, 1),
            &format!("{fam}: a datagram from the service on a flow that asked nothing"),
        );
        // Both ports watched (two peers on 51820): a datagram that answers is not also a
        // request; one that answers nothing is a request of this host.
        let peers = Flow::udp(v6, packets::UDP_SERVICE_PORT, packets::UDP_SERVICE_PORT);
        h.check(
            EGRESS_PROGRAM,
            &peers.request(),
            Change::none().recorded(&peers),
            &format!("{fam}: 51820 to 51820 with nothing outstanding"),
        );
        h.check(
            INGRESS_PROGRAM,
            &peers.answer(),
            Change::none().answered(&peers),
            &format!("{fam}: the peer's datagram back answers it, and asks nothing"),
        );
    }
}

#[test]
fn udp_services_asked_of_this_host_are_settled_by_its_answers() {
    const NAME: &str = "udp_services_asked_of_this_host_are_settled_by_its_answers";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    h.probe
        .set_local_addresses([packets::local(false), packets::local(true)])
        .expect("local addresses");
    h.probe
        .watch_udp_ports(&[packets::UDP_SERVICE_PORT])
        .expect("watching the service port");
    let counters = |h: &mut Harness, peer: IpAddr, port: u16| {
        let key = TargetKey {
            remote: netwatch::target::ip_to_key(peer),
            remote_port: port,
            proto: netwatch_common::proto::UDP,
            direction: netwatch_common::DIRECTION_INGRESS,
        };
        let mut found = None;
        h.probe
            .read_targets(&mut |k, c| {
                if *k == key {
                    found = Some(*c);
                }
            })
            .expect("targets");
        found.unwrap_or_else(|| panic!("no target {}", target_name(&key)))
    };
    for v6 in [false, true] {
        let (us, peer) = (packets::local(v6), packets::remote(v6));
        // Written from the peer's side: its request comes to us.
        let ntp = Flow::ntp(v6, 41_000, 0xe95e_d0aa_0000_0001)
            .with_local(peer)
            .with_remote(us);
        h.ingress(&ntp.request(), "an NTP request to this host");
        h.ingress(&ntp.request(), "the same NTP request again");
        h.egress(&ntp.answer(), "this host's NTP answer");
        let silent = Flow::ntp(v6, 41_001, 0xe95e_d0aa_0000_0002)
            .with_local(peer)
            .with_remote(us);
        h.ingress(&silent.request(), "an NTP request this host never answers");
        let served = counters(&mut h, peer, 123);
        assert_eq!(
            (served.requests, served.retransmits, served.answered),
            (2, 1, 1),
            "{}: udp/123 asked of this host",
            family(v6)
        );
        let wg = Flow::udp(v6, 41_002, packets::UDP_SERVICE_PORT)
            .with_local(peer)
            .with_remote(us);
        h.ingress(&wg.request(), "a datagram to this host's watched port");
        h.ingress(&wg.request(), "another before any answer");
        h.egress(&wg.answer(), "this host's datagram back");
        let flow = counters(&mut h, peer, packets::UDP_SERVICE_PORT);
        assert_eq!(
            (flow.requests, flow.retransmits, flow.answered),
            (1, 1, 1),
            "{}: udp/{} asked of this host",
            family(v6),
            packets::UDP_SERVICE_PORT
        );
    }
}

//! Requests received: settled by what this host sends back.

use super::*;

/// Requests this host receives, for one of its addresses, and what it sends back: a SYN in
/// and its SYN-ACK or RST out, a query to port 53 and its response or port unreachable, an
/// echo request and its reply. Keyed with direction ingress; the target is the peer and this
/// host's port asked for.
#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one table of cases, read top to bottom"
)]
fn requests_received_are_settled_by_what_this_host_sends_back() {
    const NAME: &str = "requests_received_are_settled_by_what_this_host_sends_back";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    h.probe
        .set_local_addresses([packets::local(false), packets::local(true)])
        .expect("local addresses");
    let inbound_target = |flow: &Flow, port: u16| TargetKey {
        remote: netwatch::target::ip_to_key(flow.local),
        remote_port: port,
        proto: flow.key().proto,
        direction: netwatch_common::DIRECTION_INGRESS,
    };
    let target = |h: &mut Harness, key: &TargetKey| {
        let mut found = None;
        h.probe
            .read_targets(&mut |k, counters| {
                if k == key {
                    found = Some(*counters);
                }
            })
            .expect("targets");
        found.unwrap_or_else(|| panic!("no target {}", target_name(key)))
    };
    for v6 in [false, true] {
        let (us, peer) = (packets::local(v6), packets::remote(v6));
        // Flows written from the peer's side: its request goes to us.
        let answered = Flow::tcp(v6, 51_000, 443, 7_000)
            .with_local(peer)
            .with_remote(us);
        let reset = Flow::tcp(v6, 51_001, 9_000, 8_000)
            .with_local(peer)
            .with_remote(us);
        h.egress(
            &answered.request(),
            "a SYN leaving towards this host: not ours",
        );
        h.ingress(&answered.request(), "a SYN to this host's port 443");
        h.ingress(&reset.request(), "a SYN to this host's port 9000");
        h.ingress(&answered.request(), "the first SYN again");
        let syn_ack = answered.answer();
        h.egress(&syn_ack, "this host's SYN-ACK");
        h.egress(&reset.rst(), "this host's RST");
        let web = target(&mut h, &inbound_target(&answered, 443));
        assert_eq!(
            (web.requests, web.retransmits, web.answered, web.rejected),
            (1, 1, 1, 0),
            "{}: tcp/443 asked of this host, answered",
            family(v6)
        );
        let closed = target(&mut h, &inbound_target(&reset, 9_000));
        assert_eq!(
            (closed.requests, closed.rejected),
            (1, 1),
            "{}: tcp/9000 refused with a reset",
            family(v6)
        );
        assert_eq!(closed.rejected_by_reason[usize::from(Reason::TCP_RESET)], 1);

        // A query to our port 53, answered; another refused with port unreachable.
        let query = Flow::dns(v6, 53, 0x4242)
            .with_local(peer)
            .with_remote(us)
            .with_remote_port(53);
        h.ingress(&query.request(), "a DNS query to this host");
        h.egress(&query.answer(), "this host's response");
        let refused = Flow::dns(v6, 40_053, 0x4343)
            .with_local(peer)
            .with_remote(us);
        h.ingress(&refused.request(), "a DNS query to this host, no server");
        let code = if v6 { 4 } else { 3 };
        let unreachable = packets::frame(
            us,
            peer,
            &Shape::plain(),
            Transport::Icmp {
                kind: if v6 {
                    packets::ICMPV6_DEST_UNREACHABLE
                } else {
                    packets::ICMP_DEST_UNREACHABLE
                },
                code,
                rest: [0; 4],
            },
            &refused.quote(),
        );
        h.egress(&unreachable, "this host's port unreachable");
        let dns = target(&mut h, &inbound_target(&query, 53));
        assert_eq!(
            (dns.requests, dns.answered, dns.rejected),
            (2, 1, 1),
            "{}: udp/53 asked of this host",
            family(v6)
        );
        assert_eq!(
            dns.rejected_by_reason[usize::from(unreachable_reason(v6, code))],
            1
        );

        // An echo request and its reply.
        let ping = Flow::echo(v6, 0x0e0e, 3).with_local(peer).with_remote(us);
        h.ingress(&ping.request(), "an echo request to this host");
        h.egress(&ping.answer(), "this host's echo reply");
        let echo = target(&mut h, &inbound_target(&ping, 0));
        assert_eq!(
            (echo.requests, echo.answered),
            (1, 1),
            "{}: echo asked of this host",
            family(v6)
        );
    }
    // Nothing is left in flight: every request received was settled.
    let inbound: Vec<_> = h
        .keys()
        .into_iter()
        .filter(|(key, entry)| {
            key.direction == netwatch_common::DIRECTION_INGRESS
                && entry.flags & PENDING_FLAG_REJECTED == 0
        })
        .collect();
    assert!(inbound.is_empty(), "still pending: {inbound:?}");
}

//! 5. QR confusion.

use super::*;

/// The QR bit, not the port, tells a DNS query from a response: a query coming in and a
/// response going out change nothing, even with the id and ports of a pending query.
#[test]
fn dns_queries_in_and_responses_out_change_nothing() {
    const NAME: &str = "dns_queries_in_and_responses_out_change_nothing";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for v6 in [false, true] {
        let dns = Flow::numbered(Kind::Dns, v6, 1);
        let (local, remote) = (packets::local(v6), packets::remote(v6));
        let serve = |from: IpAddr, to: IpAddr, source: u16, destination: u16, response: bool| {
            let message = packets::dns_message(dns.tag, response, packets::QNAME);
            packets::frame(
                from,
                to,
                &Shape::plain(),
                Transport::Udp {
                    source,
                    destination,
                },
                &message,
            )
        };
        let cases = [
            (
                "a DNS query from port 53 (QR 0) with the pending id, before the query",
                INGRESS_PROGRAM,
                dns.dns_in(false, &Shape::plain()),
            ),
            (
                "a DNS response (QR 1) leaving to port 53, before the query",
                EGRESS_PROGRAM,
                dns.dns_out(true, &Shape::plain()),
            ),
        ];
        for (what, program, frame) in &cases {
            let what = format!("{what} ({})", family(v6));
            h.check(program, frame, Change::none(), &what);
        }
        h.send(&[dns]);
        let cases = [
            (
                "a DNS query from port 53 (QR 0) with the pending id and ports",
                INGRESS_PROGRAM,
                dns.dns_in(false, &Shape::plain()),
            ),
            (
                "a DNS query to our port 53",
                INGRESS_PROGRAM,
                serve(remote, local, dns.local_port, 53, false),
            ),
            (
                "a DNS response (QR 1) leaving to port 53 with the pending id",
                EGRESS_PROGRAM,
                dns.dns_out(true, &Shape::plain()),
            ),
            (
                "a DNS response leaving from our port 53",
                EGRESS_PROGRAM,
                serve(local, remote, 53, dns.local_port, true),
            ),
        ];
        for (what, program, frame) in &cases {
            // A query to our port 53 is a request to this host; not to one of its addresses
            // here (none are known), and it records nothing.
            let expected = if what.starts_with("a DNS query to our port 53") {
                Change::none().count(KernelCounter::NotForThisHost, 1)
            } else if what.starts_with("a DNS response leaving from our port 53") {
                Change::none().count(UnmatchedAnswer, 1)
            } else {
                Change::none()
            };
            let what = format!("{what} ({})", family(v6));
            h.check(program, frame, expected, &what);
        }
        let counters = h.target(&dns);
        assert_eq!(
            (counters.requests, counters.retransmits, counters.answered),
            (1, 0, 0)
        );
        let what = format!("the genuine response to {}", dns.describe());
        h.check(
            INGRESS_PROGRAM,
            &dns.answer(),
            Change::none().answered(&dns),
            &what,
        );
    }
}

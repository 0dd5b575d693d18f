//! A remembered key used again: a new TCP connection, a new DNS question, a request replaced after its deadline.

use super::*;

/// A SYN with a new initial sequence number on a 4-tuple the table still remembers (here as
/// the tombstone of a reset connection) is a new connection: a new request, not a
/// retransmit. Linux reuses a source port right after a reset.
#[test]
fn a_new_connection_on_a_remembered_four_tuple_is_a_new_request() {
    const NAME: &str = "a_new_connection_on_a_remembered_four_tuple_is_a_new_request";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    let segment = |outbound: bool, seq: u32, ack: Option<u32>, rst: bool| {
        let (src, dst) = if outbound {
            ([203, 0, 113, 2], [198, 51, 100, 10])
        } else {
            ([198, 51, 100, 10], [203, 0, 113, 2])
        };
        let (sport, dport) = if outbound {
            (40000, 9000)
        } else {
            (9000, 40000)
        };
        let mut frame = Vec::new();
        let builder = PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(src, dst, 64)
            .tcp(sport, dport, seq, 64240);
        let builder = match (ack, rst) {
            (Some(ack), true) => builder.rst().ack(ack),
            (Some(ack), false) => builder.syn().ack(ack),
            (None, _) => builder.syn(),
        };
        builder.write(&mut frame, &[]).expect("build the segment");
        frame
    };
    let flow = Flow::tcp(false, 40000, 9000, 1000);
    h.egress(&segment(true, 1000, None, false), "a SYN");
    h.ingress(&segment(false, 0, Some(1001), true), "its RST");
    h.egress(&segment(true, 1000, None, false), "the SYN again");
    let counters = h.target(&flow);
    assert_eq!(
        (counters.requests, counters.retransmits, counters.rejected),
        (1, 1, 1),
        "a retransmit of the rejected request"
    );
    h.egress(
        &segment(true, 7000, None, false),
        "a new SYN, new ISN, same 4-tuple",
    );
    let counters = h.target(&flow);
    assert_eq!(
        (counters.requests, counters.retransmits),
        (2, 1),
        "a new request"
    );
    let entry = h.entry(&flow).expect("the new request is pending");
    assert_eq!(
        (entry.tcp_seq, entry.flags),
        (7000, 0),
        "in flight, not a tombstone"
    );
    h.ingress(&segment(false, 5000, Some(7001), false), "its SYN-ACK");
    assert_eq!(
        h.target(&flow).answered,
        1,
        "the new connection is answered"
    );
    assert!(h.entry(&flow).is_none());
}

/// A forwarder with a fixed source port reuses (port, id) for other names: a new question
/// is a new request, not a retransmit; the same question again is a retransmit.
#[test]
fn a_new_question_on_a_reused_port_and_id_is_a_new_request() {
    const NAME: &str = "a_new_question_on_a_reused_port_and_id_is_a_new_request";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for v6 in [false, true] {
        let first = Flow::dns(v6, 5353, 7).with_qname("first.example");
        let second = Flow::dns(v6, 5353, 7).with_qname("second.example");
        h.check(
            EGRESS_PROGRAM,
            &first.request(),
            Change::none().recorded(&first),
            "a query",
        );
        h.check(
            EGRESS_PROGRAM,
            &first.request(),
            Change::none().retransmitted(&first),
            "the same query again",
        );
        // The entry is replaced (Harness::change would call that a rewrite): compare the
        // counters by hand.
        let before = h.target(&second);
        let abandoned_before = h.state().counters[KernelCounter::Abandoned as usize];
        h.egress(&second.request(), "another name, same port and id");
        let after = h.target(&second);
        assert_eq!(
            (
                after.requests - before.requests,
                after.retransmits - before.retransmits,
                after.abandoned - before.abandoned,
            ),
            (1, 0, 1),
            "{}: a new request; the first query, still in flight, given up",
            family(v6)
        );
        assert_eq!(
            h.state().counters[KernelCounter::Abandoned as usize] - abandoned_before,
            1
        );
        let entry = h.entry(&second).expect("the new question is pending");
        assert_eq!(
            entry.question[..usize::from(entry.question_len)],
            second.question()[..],
            "{}: the entry holds the new question",
            family(v6)
        );
        h.check(
            INGRESS_PROGRAM,
            &second.answer(),
            Change::none().answered(&second),
            "the answer",
        );
    }
}

/// A request replaced after its deadline was unanswered: the new entry carries its send
/// time for userspace to count, and it is not `abandoned`.
#[test]
fn a_request_replaced_after_its_deadline_is_handed_to_userspace() {
    const NAME: &str = "a_request_replaced_after_its_deadline_is_handed_to_userspace";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::with_timeout(NAME, Duration::from_millis(10));
    let old = Flow::tcp(false, 42_000, 5432, 1000);
    h.send(&[old]);
    let sent = h.entry(&old).expect("pending").first_sent_ns;
    let deadline = Instant::now() + Duration::from_millis(30);
    while Instant::now() < deadline {
        std::thread::yield_now();
    }
    let new = Flow::tcp(false, 42_000, 5432, 9000);
    h.send(&[new]);
    let entry = h.entry(&new).expect("the new connection is pending");
    assert_eq!((entry.tcp_seq, entry.replaced_first_sent_ns), (9000, sent));
    let counters = h.target(&new);
    assert_eq!((counters.requests, counters.abandoned), (2, 0));
}

//! Late answers: after the timeout, an answer is late, never a rejection or a phantom.

use super::*;

/// An answer or rejection after the timeout resolves nothing: it is counted late once, and
/// the entry stays, flagged, so retransmits are still recognised.
#[test]
fn answers_after_the_timeout_are_late() {
    const NAME: &str = "answers_after_the_timeout_are_late";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::with_timeout(NAME, Duration::from_millis(10));
    let mut pairs = Vec::new();
    for v6 in [false, true] {
        for kind in Kind::ALL {
            let answered = Flow::numbered(kind, v6, 1);
            let refused = Flow::numbered(kind, v6, 2);
            h.send(&[answered, refused]);
            pairs.push((answered, refused));
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    for (answered, refused) in pairs {
        let what = format!("the answer to {} after the timeout", answered.describe());
        h.check(
            INGRESS_PROGRAM,
            &answered.answer(),
            // A late answer keeps its latency: the report says how slow the remote is.
            Change::none()
                .late(&answered)
                .tally(&answered, |t| t.latency += 1),
            &what,
        );
        assert_eq!(
            h.change_by(INGRESS_PROGRAM, &answered.answer(), &what),
            Change::none().count(KernelCounter::LateDuplicate, 1),
            "{what}, again: counted once, as a duplicate"
        );
        let entry = h
            .entry(&answered)
            .unwrap_or_else(|| panic!("{what}: the entry went"));
        assert_eq!(entry.flags & PENDING_FLAG_LATE, PENDING_FLAG_LATE, "{what}");

        let (frame, reason) = refusal(&refused, &Shape::plain());
        let what = format!("the refusal of {} after the timeout", refused.describe());
        h.check(
            INGRESS_PROGRAM,
            &frame,
            // Late, and a refusal still: its reason counts (not `rejected`, which is in time).
            Change::none()
                .late(&refused)
                .tally(&refused, |t| t.reasons[usize::from(reason)] += 1),
            &what,
        );
        assert_eq!(h.target(&refused).late_rejected, 1, "{what}");
        assert_eq!(
            h.entry(&refused).map(|e| e.flags),
            Some(PENDING_FLAG_LATE),
            "{what}"
        );

        let what = format!(
            "the request {} again after its late answer",
            answered.describe()
        );
        h.check(
            EGRESS_PROGRAM,
            &answered.request(),
            Change::none().retransmitted(&answered),
            &what,
        );

        let counters = h.target(&answered);
        assert_eq!(
            (
                counters.requests,
                counters.answered,
                counters.rejected,
                counters.late
            ),
            (2, 0, 0, 2),
            "{}: target counters",
            answered.describe()
        );
        assert_eq!(
            counters.latency.iter().sum::<u64>(),
            1,
            "the late answer has a latency sample, the late refusal none"
        );
    }
}

/// The original example, kept: a SYN, then its SYN-ACK, with etherparse directly.
#[test]
fn syn_then_syn_ack_is_answered() {
    if !netwatch_tests::prerequisites("syn_then_syn_ack_is_answered", &[]) {
        return;
    }
    let mut h = Harness::new("syn_then_syn_ack_is_answered");
    let mut syn = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4([203, 0, 113, 2], [198, 51, 100, 10], 64)
        .tcp(40000, 443, 1000, 64240)
        .syn()
        .write(&mut syn, &[])
        .expect("build the SYN");
    h.egress(&syn, "a SYN");
    assert_eq!(h.keys().len(), 1);
    let mut syn_ack = Vec::new();
    PacketBuilder::ethernet2([4; 6], [2; 6])
        .ipv4([198, 51, 100, 10], [203, 0, 113, 2], 64)
        .tcp(443, 40000, 5000, 64240)
        .syn()
        .ack(1001)
        .write(&mut syn_ack, &[])
        .expect("build the SYN-ACK");
    h.ingress(&syn_ack, "its SYN-ACK");
    assert_eq!(h.keys().len(), 0);
    assert_eq!(h.target(&Flow::tcp(false, 40000, 443, 1000)).answered, 1);
}

//! 2. Answers.

use super::*;

/// A DNS response, SYN-ACK or echo reply resolves exactly its own request: that entry goes,
/// its target counts one answer and one latency sample, and a sibling stays pending.
#[test]
fn answers_resolve_exactly_their_request() {
    const NAME: &str = "answers_resolve_exactly_their_request";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for v6 in [false, true] {
        for kind in Kind::ALL {
            let flow = Flow::numbered(kind, v6, 1);
            let sibling = Flow::numbered(kind, v6, 2);
            let started = Instant::now();
            h.send(&[flow, sibling]);
            let what = format!("the answer to {}", flow.describe());
            let change = h.change_by(INGRESS_PROGRAM, &flow.answer(), &what);
            let elapsed = started.elapsed();
            assert_eq!(change, Change::none().answered(&flow), "{what}");
            assert!(
                h.entry(&sibling).is_some(),
                "{what}: the sibling {} was resolved too",
                sibling.describe()
            );

            let counters = h.target(&flow);
            assert_eq!(counters.answered, 1, "{what}");
            let buckets: Vec<usize> = (0..LATENCY_BUCKETS)
                .filter(|&b| counters.latency[b] != 0)
                .collect();
            assert_eq!(
                counters.latency.iter().sum::<u64>(),
                counters.answered,
                "{what}: latency samples"
            );
            assert_eq!(buckets.len(), 1, "{what}: one bucket");
            let wall = u64::try_from(elapsed.as_nanos()).expect("a short test");
            assert!(
                buckets[0] <= latency_bucket(wall),
                "{what}: bucket {} (< {} ns) is above the {wall} ns the exchange took",
                buckets[0],
                latency_bucket_upper_ns(buckets[0])
            );
            assert!(
                counters.last_answer_ns >= counters.last_request_ns,
                "{what}: last_answer_ns"
            );

            // The same answer again matches nothing.
            assert_eq!(
                h.change_by(INGRESS_PROGRAM, &flow.answer(), &what),
                Change::none().count(UnmatchedAnswer, 1),
                "{what}, a second time"
            );
            // The sibling's own answer resolves it.
            let what = format!("the answer to {}", sibling.describe());
            h.check(
                INGRESS_PROGRAM,
                &sibling.answer(),
                Change::none().answered(&sibling),
                &what,
            );
            let counters = h.target(&flow);
            assert_eq!((counters.requests, counters.answered), (2, 2), "{what}");
            assert_eq!(
                counters.latency.iter().sum::<u64>(),
                2,
                "{what}: latency samples"
            );
        }
        // A SYN whose sequence number wraps: the SYN-ACK acknowledges 0.
        let wrap = Flow::tcp(v6, 40_100, 443, u32::MAX);
        h.send(&[wrap]);
        let what = format!("a SYN-ACK acknowledging 0 for {}", wrap.describe());
        h.check(
            INGRESS_PROGRAM,
            &wrap.answer(),
            Change::none().answered(&wrap),
            &what,
        );
    }
    assert!(h.keys().is_empty(), "every request was answered");
}

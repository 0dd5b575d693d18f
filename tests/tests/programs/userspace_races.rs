//! Races between the kernel and userspace: slot claims past a rewound hint, the sweep's compared removal.

use super::*;

/// The next-slot hint is a plain store from every CPU: two claims racing can leave it below
/// slots already claimed. Every claimed slot's counters must still be read, or a target's
/// answers go unseen (requests seen, answers never: a false blackholed).
#[test]
fn targets_claimed_past_a_rewound_slot_hint_are_still_read() {
    const NAME: &str = "targets_claimed_past_a_rewound_slot_hint_are_still_read";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    let flows: Vec<Flow> = (0..5)
        .map(|n| {
            let remote = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 100 + n));
            Flow::numbered(Kind::Tcp, false, 1).with_remote(remote)
        })
        .collect();
    // Five new targets (slots 0 to 4, hint 5), answered, before userspace reads anything.
    for flow in &flows {
        h.egress(&flow.request(), "a SYN to a new target");
        h.ingress(&flow.answer(), "its SYN-ACK");
    }
    h.probe
        .rewind_slot_hint_for_tests(1)
        .expect("rewind the hint");
    for flow in &flows {
        let counters = h.target(flow);
        assert_eq!(
            (counters.requests, counters.answered),
            (1, 1),
            "{}: claimed past the hint, read all the same",
            flow.describe()
        );
    }
}

/// The sweep reads a tombstone, the kernel replaces it with a new request (a new connection
/// on that exact 4-tuple), then the sweep removes what it read: the new request must stay.
#[test]
fn removing_what_a_sweep_read_spares_a_request_the_kernel_put_there_since() {
    const NAME: &str = "removing_what_a_sweep_read_spares_a_request_the_kernel_put_there_since";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for v6 in [false, true] {
        let old = Flow::tcp(v6, 44_000, 5432, 1_000);
        h.send(&[old]);
        let read = h.entry(&old).expect("pending").first_sent_ns;
        let new = Flow::tcp(v6, 44_000, 5432, 9_000);
        h.send(&[new]);
        h.probe
            .remove_pending_all(&[(old.key(), read)])
            .expect("remove");
        let entry = h
            .entry(&new)
            .unwrap_or_else(|| panic!("{}: the new request was removed with the old", family(v6)));
        assert_eq!(entry.tcp_seq, 9_000, "{}", family(v6));
        // What the sweep read and nothing replaced goes.
        h.probe
            .remove_pending_all(&[(new.key(), entry.first_sent_ns)])
            .expect("remove");
        assert!(h.entry(&new).is_none(), "{}: removed", family(v6));
    }
}

//! 3. Rejections.

use super::*;

/// RST+ACK and ICMP / `ICMPv6` destination unreachable quoting a pending request reject it
/// with the right reason; the entry stays as a tombstone that retransmits still find.
#[test]
fn rejections_resolve_with_their_reason() {
    const NAME: &str = "rejections_resolve_with_their_reason";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    // The names operators see, for the codes firewalls use.
    let named = [
        (false, 3, "icmp-port-unreachable"),
        (false, 10, "icmp-host-prohibited"),
        (false, 13, "icmp-admin-prohibited"),
        (true, 1, "icmp6-adm-prohibited"),
        (true, 4, "icmp6-port-unreachable"),
    ];
    for (v6, code, name) in named {
        assert_eq!(
            Reason::name(usize::from(unreachable_reason(v6, code))),
            Some(name)
        );
    }

    let mut h = Harness::new(NAME);
    for v6 in [false, true] {
        // TCP reset.
        let tcp = Flow::numbered(Kind::Tcp, v6, 1);
        h.send(&[tcp]);
        let what = format!("a RST+ACK for {}", tcp.describe());
        h.check(
            INGRESS_PROGRAM,
            &tcp.rst(),
            Change::none().rejected(&tcp, Reason::TCP_RESET),
            &what,
        );
        let entry = h.entry(&tcp).expect("the tombstone");
        assert_eq!(entry.flags, PENDING_FLAG_REJECTED, "{what}");
        let retransmit = format!("the SYN {} again after its RST", tcp.describe());
        h.check(
            EGRESS_PROGRAM,
            &tcp.request(),
            Change::none().retransmitted(&tcp),
            &retransmit,
        );
        for (late, frame) in [
            ("a SYN-ACK", tcp.answer()),
            ("another RST", tcp.rst()),
            ("an unreachable", tcp.unreachable(reject_code(v6))),
        ] {
            let what = format!("{late} for the rejected {}", tcp.describe());
            assert_eq!(
                h.change_by(INGRESS_PROGRAM, &frame, &what),
                Change::none(),
                "{what}: already settled"
            );
        }
        let counters = h.target(&tcp);
        assert_eq!((counters.rejected, counters.answered), (1, 0));
        assert_eq!(
            counters.rejected_by_reason[usize::from(Reason::TCP_RESET)],
            1
        );

        // Destination unreachable, every code, quoting each kind of request; but
        // "fragmentation needed" (IPv4 code 4), which is path-MTU discovery, not a refusal
        // (path_mtu_signals_reject_nothing).
        let codes: Vec<u8> = if v6 {
            (0..=7).chain([8, 200]).collect()
        } else {
            (0..=15)
                .filter(|&code| code != 4)
                .chain([16, 255])
                .collect()
        };
        let mut expected: BTreeMap<String, Tally> = BTreeMap::new();
        for (index, &code) in codes.iter().enumerate() {
            for kind in Kind::ALL {
                let flow = Flow::numbered(kind, v6, 100 + u16::try_from(index).expect("few codes"));
                h.send(&[flow]);
                let reason = unreachable_reason(v6, code);
                let what = format!("an unreachable code {code} quoting {}", flow.describe());
                h.check(
                    INGRESS_PROGRAM,
                    &flow.unreachable(code),
                    Change::none().rejected(&flow, reason),
                    &what,
                );
                let tally = expected.entry(target_name(&flow.target())).or_default();
                tally.rejected += 1;
                tally.reasons[usize::from(reason)] += 1;
            }
        }
        for kind in [Kind::Dns, Kind::Echo] {
            let flow = Flow::numbered(kind, v6, 100);
            let counters = h.target(&flow);
            let tally = expected[&target_name(&flow.target())];
            assert_eq!(counters.rejected, tally.rejected, "{kind:?} {}", family(v6));
            assert_eq!(
                counters.rejected_by_reason,
                tally.reasons,
                "{kind:?} {}",
                family(v6)
            );
            assert_eq!(counters.answered, 0);
        }
        let counters = h.target(&tcp);
        assert_eq!(
            counters.rejected,
            1 + u64::try_from(codes.len()).expect("few codes")
        );
    }
}

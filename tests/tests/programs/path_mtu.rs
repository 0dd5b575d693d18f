//! Path MTU signals (fragmentation needed, packet too big): no rejection, counted for the
//! target with the MTU they report; DNS answers that arrive in fragments.

use super::*;

/// "Fragmentation needed" and "packet too big" are path-MTU discovery at work: the sender
/// retries smaller. They reject nothing.
#[test]
fn path_mtu_signals_reject_nothing() {
    const NAME: &str = "path_mtu_signals_reject_nothing";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for v6 in [false, true] {
        let flow = Flow::tcp(v6, 43_000, 443, 1000);
        h.send(&[flow]);
        let request = flow.request();
        let quoted = packets::ip_packet(&request);
        let signal = if v6 {
            packets::frame(
                packets::router(true),
                packets::local(true),
                &Shape::plain(),
                Transport::Icmp {
                    kind: 2,
                    code: 0,
                    rest: 1280u32.to_be_bytes(),
                },
                quoted,
            )
        } else {
            packets::frame(
                packets::router(false),
                packets::local(false),
                &Shape::plain(),
                Transport::Icmp {
                    kind: packets::ICMP_DEST_UNREACHABLE,
                    code: 4,
                    rest: [0, 0, 0x05, 0xdc],
                },
                quoted,
            )
        };
        h.check(
            INGRESS_PROGRAM,
            &signal,
            Change::none().count(KernelCounter::PathMtu, 1),
            &format!("{} path-MTU signal quoting our SYN", family(v6)),
        );
        let counters = h.target(&flow);
        let reported = if v6 { 1280 } else { 1500 };
        assert_eq!(
            (
                counters.path_mtu_signals,
                counters.path_mtu,
                counters.rejected
            ),
            (1, reported, 0),
            "{}: the signal counted for the SYN's target, with the MTU it reports",
            family(v6)
        );
    }
}

/// A DNS answer whose first fragment arrives (IPv4 "more fragments", an IPv6 fragment header
/// at offset 0 with M set) answers its query and is counted as fragmented; a whole answer is
/// not, and a later fragment (no transport header) answers nothing.
#[test]
fn dns_answers_in_fragments_are_counted() {
    const NAME: &str = "dns_answers_in_fragments_are_counted";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for v6 in [false, true] {
        let (first, later) = if v6 {
            (
                Shape::ipv6(&[Ext::Fragment {
                    offset: 0,
                    more: true,
                }]),
                Shape::ipv6(&[Ext::Fragment {
                    offset: 185,
                    more: false,
                }]),
            )
        } else {
            (
                Shape::ipv4_fragment(0, true),
                Shape::ipv4_fragment(185, false),
            )
        };
        let fragmented = Flow::numbered(Kind::Dns, v6, 1);
        let whole = Flow::numbered(Kind::Dns, v6, 2);
        h.send(&[fragmented, whole]);
        let what = format!("{} first fragment of an answer", family(v6));
        h.check(
            INGRESS_PROGRAM,
            &fragmented.answer_in(&first),
            Change::none().answered(&fragmented),
            &what,
        );
        h.check(
            INGRESS_PROGRAM,
            &whole.answer(),
            Change::none().answered(&whole),
            &format!("{} whole answer", family(v6)),
        );
        let changed = h.change_by(
            INGRESS_PROGRAM,
            &whole.answer_in(&later),
            &format!("{} later fragment", family(v6)),
        );
        assert_eq!(
            changed,
            Change::none().count(KernelCounter::Fragment, 1),
            "a later fragment carries no answer"
        );
        assert_eq!(h.target(&fragmented).fragmented_answers, 1, "{what}");
    }
}

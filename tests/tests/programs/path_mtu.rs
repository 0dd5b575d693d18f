//! Path MTU signals (fragmentation needed, packet too big): no rejection.

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
    }
}

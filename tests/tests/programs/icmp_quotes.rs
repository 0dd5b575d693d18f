//! 8. ICMP errors quoting too little, or someone else.

use super::*;

/// An ICMP error whose quote stops inside the inner IP header, inside the inner transport
/// header, or (DNS) right after the UDP header identifies nothing: no rejection, counted as
/// a short quote. One quoting another host's or another remote's packet matches nothing.
#[test]
fn icmp_errors_quoting_too_little_or_someone_else_reject_nothing() {
    const NAME: &str = "icmp_errors_quoting_too_little_or_someone_else_reject_nothing";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for v6 in [false, true] {
        let code = reject_code(v6);
        let ip_len = Shape::plain().ip_len(v6);
        for kind in Kind::ALL {
            let flow = Flow::numbered(kind, v6, 1);
            h.send(&[flow]);
            let quote = flow.quote();
            let mut lengths = vec![
                0,
                1,
                ip_len / 2,
                ip_len - 1,
                ip_len,
                ip_len + 4,
                ip_len + flow.quoted_len() - 1,
            ];
            if kind == Kind::Dns {
                // The UDP header and nothing of the DNS message.
                lengths.push(ip_len + packets::UDP_LEN);
            }
            for len in lengths {
                let error = packets::unreachable(v6, code, &quote[..len], &Shape::plain());
                let what = format!("an unreachable quoting {len} bytes of {}", flow.describe());
                h.check(
                    INGRESS_PROGRAM,
                    &error,
                    Change::none().count(KernelCounter::ShortQuote, 1),
                    &what,
                );
            }
            let strangers = [
                ("another host's", flow.with_local(other_local(v6))),
                ("another remote's", flow.with_remote(other_remote(v6))),
            ];
            for (whose, stranger) in strangers {
                let what = format!("an unreachable quoting {whose} {}", stranger.describe());
                h.check(
                    INGRESS_PROGRAM,
                    &stranger.unreachable(code),
                    Change::none().count(UnmatchedRejection, 1),
                    &what,
                );
            }
            assert_eq!(
                h.entry(&flow).map(|e| e.flags),
                Some(0),
                "{}: still pending",
                flow.describe()
            );
            let what = format!("an unreachable quoting all of {}", flow.describe());
            h.check(
                INGRESS_PROGRAM,
                &flow.unreachable(code),
                Change::none().rejected(&flow, unreachable_reason(v6, code)),
                &what,
            );
        }
        // Quotes of packets that were never requests: nothing at all.
        let (local, remote) = (packets::local(v6), packets::remote(v6));
        let ntp = Flow::numbered(Kind::Dns, v6, 5).with_remote_port(123);
        let reply_kind = if v6 {
            packets::ICMPV6_ECHO_REPLY
        } else {
            packets::ICMP_ECHO_REPLY
        };
        let our_reply = packets::frame(
            local,
            remote,
            &Shape::plain(),
            Transport::Icmp {
                kind: reply_kind,
                code: 0,
                rest: [0x0e, 5, 0, 6],
            },
            packets::ECHO_PAYLOAD,
        );
        for (what, quoted) in [
            ("UDP to port 123", ntp.quote()),
            (
                "an echo reply we sent",
                packets::ip_packet(&our_reply).to_vec(),
            ),
        ] {
            let what = format!("an unreachable quoting {what} ({})", family(v6));
            let error = packets::unreachable(v6, code, &quoted, &Shape::plain());
            h.check(INGRESS_PROGRAM, &error, Change::none(), &what);
        }
    }
}

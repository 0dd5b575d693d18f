//! 4. Spoofs.

use super::*;

/// Answers and rejections that each get one detail of a pending request wrong, with the
/// kernel counter each should move (`None`: not even looked at).
#[expect(clippy::too_many_lines, reason = "a table, one spoof per entry")]
fn spoofs(
    v6: bool,
    dns: Flow,
    tcp: Flow,
    echo: Flow,
) -> Vec<(&'static str, Vec<u8>, Option<KernelCounter>)> {
    let code = reject_code(v6);
    let no_ack = TcpFlags {
        syn: false,
        rst: true,
        ack: None,
    };
    vec![
        (
            "a DNS response with the wrong id",
            dns.with_tag(dns.tag + 1).answer(),
            Some(UnmatchedAnswer),
        ),
        (
            "a DNS response from port 5353",
            dns.with_remote_port(5353).answer(),
            None,
        ),
        (
            "a DNS response to the wrong port",
            dns.with_local_port(dns.local_port + 1).answer(),
            Some(UnmatchedAnswer),
        ),
        (
            "a DNS response from another server",
            dns.with_remote(other_remote(v6)).answer(),
            Some(UnmatchedAnswer),
        ),
        (
            "a DNS response to another address",
            dns.with_local(other_local(v6)).answer(),
            Some(UnmatchedAnswer),
        ),
        (
            "a SYN-ACK acknowledging seq",
            tcp.with_seq(tcp.seq.wrapping_sub(1)).answer(),
            Some(InvalidAnswer),
        ),
        (
            "a SYN-ACK acknowledging seq + 2",
            tcp.with_seq(tcp.seq + 1).answer(),
            Some(InvalidAnswer),
        ),
        (
            "a SYN-ACK acknowledging 0",
            tcp.with_seq(u32::MAX).answer(),
            Some(InvalidAnswer),
        ),
        (
            // A request to this host, but not to one of its addresses (none are known here).
            "a SYN (no ACK) coming in",
            tcp.segment_in(
                TcpFlags {
                    syn: true,
                    rst: false,
                    ack: None,
                },
                &Shape::plain(),
            ),
            Some(KernelCounter::NotForThisHost),
        ),
        (
            "a RST without ACK",
            tcp.segment_in(no_ack, &Shape::plain()),
            None,
        ),
        (
            "a RST+ACK acknowledging seq + 2",
            tcp.with_seq(tcp.seq + 1).rst(),
            Some(InvalidAnswer),
        ),
        (
            "a SYN-ACK to another local port",
            tcp.with_local_port(tcp.local_port + 1).answer(),
            Some(UnmatchedAnswer),
        ),
        (
            "a SYN-ACK from another remote port",
            tcp.with_remote_port(444).answer(),
            Some(UnmatchedAnswer),
        ),
        (
            "a SYN-ACK from another remote",
            tcp.with_remote(other_remote(v6)).answer(),
            Some(UnmatchedAnswer),
        ),
        (
            "a RST+ACK to another local port",
            tcp.with_local_port(tcp.local_port + 1).rst(),
            Some(UnmatchedRejection),
        ),
        (
            "a RST+ACK from another remote",
            tcp.with_remote(other_remote(v6)).rst(),
            Some(UnmatchedRejection),
        ),
        (
            "an unreachable quoting a SYN never sent",
            tcp.with_local_port(tcp.local_port + 1).unreachable(code),
            Some(UnmatchedRejection),
        ),
        (
            "an unreachable quoting a SYN to another port",
            tcp.with_remote_port(444).unreachable(code),
            Some(UnmatchedRejection),
        ),
        (
            "an unreachable quoting another DNS id",
            dns.with_tag(dns.tag + 1).unreachable(code),
            Some(UnmatchedRejection),
        ),
        (
            "an unreachable quoting another echo sequence",
            echo.with_tag(echo.tag + 1).unreachable(code),
            Some(UnmatchedRejection),
        ),
        (
            "an unreachable quoting the SYN with the wrong seq",
            tcp.with_seq(tcp.seq + 1).unreachable(code),
            Some(InvalidAnswer),
        ),
        (
            "an echo reply with the wrong sequence",
            echo.with_tag(echo.tag + 1).answer(),
            Some(UnmatchedAnswer),
        ),
        (
            "an echo reply with the wrong identifier",
            echo.with_local_port(echo.local_port + 1).answer(),
            Some(UnmatchedAnswer),
        ),
        (
            "an echo reply from another remote",
            echo.with_remote(other_remote(v6)).answer(),
            Some(UnmatchedAnswer),
        ),
        (
            "an echo request coming in with our id and sequence",
            echo.with_local(echo.remote)
                .with_remote(echo.local)
                .request(),
            Some(KernelCounter::NotForThisHost),
        ),
    ]
}

/// Answers and rejections that do not match a request exactly resolve nothing, and each
/// is counted where it belongs.
#[test]
fn spoofed_answers_never_resolve_anything() {
    const NAME: &str = "spoofed_answers_never_resolve_anything";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for v6 in [false, true] {
        let dns = Flow::numbered(Kind::Dns, v6, 1);
        let tcp = Flow::numbered(Kind::Tcp, v6, 1);
        let echo = Flow::numbered(Kind::Echo, v6, 1);
        h.send(&[dns, tcp, echo]);
        let spoofs = spoofs(v6, dns, tcp, echo);
        for (what, frame, counter) in spoofs {
            let what = format!("{what} ({})", family(v6));
            let expected =
                counter.map_or_else(Change::none, |counter| Change::none().count(counter, 1));
            h.check(INGRESS_PROGRAM, &frame, expected, &what);
        }
        for flow in [dns, tcp, echo] {
            let entry = h
                .entry(&flow)
                .unwrap_or_else(|| panic!("{} is no longer pending", flow.describe()));
            assert_eq!(entry.flags, 0, "{}", flow.describe());
            let counters = h.target(&flow);
            assert_eq!(
                (counters.answered, counters.rejected, counters.late),
                (0, 0, 0),
                "{}",
                flow.describe()
            );
        }
        // The genuine answers still resolve them: the spoofs left them intact.
        for flow in [dns, tcp, echo] {
            let what = format!("the genuine answer to {}", flow.describe());
            h.check(
                INGRESS_PROGRAM,
                &flow.answer(),
                Change::none().answered(&flow),
                &what,
            );
        }
    }
}

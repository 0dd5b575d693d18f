//! 6. Truncations.

use super::*;

/// One packet kind to cut at every length.
struct Cut {
    name: String,
    program: &'static str,
    flow: Flow,
    /// Sent before every run (the request an answer or rejection is for).
    setup: Option<Vec<u8>>,
    packet: Vec<u8>,
    /// What the whole packet does.
    full: Change,
    /// The shortest cut that carries every field identifying the request.
    identified_at: usize,
    /// A packet cut from this length on, but short of its full effect, counts this once.
    short: Option<(KernelCounter, usize)>,
    /// DNS queries: where the question starts (a cut query captures what is left of it).
    question_at: Option<usize>,
}

/// The shapes every packet is cut in: plain, behind a VLAN tag (the kernel does not check
/// the IP header of those, so cuts inside it reach the programs), and with the longest IPv4
/// header (IHL 15) or a chain of six IPv6 extension headers.
fn cut_shapes(v6: bool) -> [(&'static str, Shape); 3] {
    let long = if v6 {
        ("behind six extension headers", Shape::ipv6_chain(6))
    } else {
        ("with IHL 15", Shape::ipv4_options(10))
    };
    [
        ("", Shape::plain()),
        ("behind a VLAN tag", Shape::vlan(1)),
        long,
    ]
}

fn cuts(v6: bool, label: &str, shape: &Shape) -> Vec<Cut> {
    let tagged = if label.is_empty() {
        String::new()
    } else {
        format!(" {label}")
    };
    let l4 = shape.l4(v6);
    let mut cuts = Vec::new();
    for kind in Kind::ALL {
        let flow = Flow::numbered(kind, v6, 1);
        let dns = kind == Kind::Dns;
        cuts.push(Cut {
            name: format!("the request {}{tagged}", flow.describe()),
            program: EGRESS_PROGRAM,
            flow,
            setup: None,
            packet: flow.request_in(shape),
            full: Change::none().recorded(&flow),
            identified_at: l4 + flow.identifying_len(),
            // Once the destination port says DNS, a query too short to read is malformed.
            short: dns.then_some((KernelCounter::Malformed, l4 + 4)),
            question_at: dns.then_some(l4 + packets::UDP_LEN + packets::DNS_HEADER_LEN),
        });
        cuts.push(Cut {
            name: format!("the answer to {}{tagged}", flow.describe()),
            program: INGRESS_PROGRAM,
            flow,
            setup: Some(flow.request()),
            packet: flow.answer_in(shape),
            full: Change::none().answered(&flow),
            identified_at: l4 + flow.identifying_len(),
            // Once both ports are there (one says DNS), a response too short to read is
            // malformed.
            short: dns.then_some((KernelCounter::Malformed, l4 + 4)),
            question_at: None,
        });
        let quote_at = l4 + ICMP_LEN;
        let code = reject_code(v6);
        cuts.push(Cut {
            name: format!(
                "an unreachable code {code} quoting {}{tagged}",
                flow.describe()
            ),
            program: INGRESS_PROGRAM,
            flow,
            setup: Some(flow.request()),
            packet: packets::unreachable(v6, code, &flow.quote(), shape),
            full: Change::none().rejected(&flow, unreachable_reason(v6, code)),
            identified_at: quote_at + Shape::plain().ip_len(v6) + flow.quoted_len(),
            short: Some((KernelCounter::ShortQuote, quote_at)),
            question_at: None,
        });
        if kind == Kind::Tcp {
            let (rst, _) = refusal(&flow, shape);
            cuts.push(Cut {
                name: format!("a RST+ACK for {}{tagged}", flow.describe()),
                program: INGRESS_PROGRAM,
                flow,
                setup: Some(flow.request()),
                packet: rst,
                full: Change::none().rejected(&flow, Reason::TCP_RESET),
                identified_at: l4 + flow.identifying_len(),
                short: None,
                question_at: None,
            });
        }
    }
    cuts
}

/// Which cuts the kernel refuses to run: every frame shorter than an Ethernet header and,
/// since Linux checks the IP header it reads for the test socket ("bpf: `test_run`: reject
/// short IP headers", in 6.18), an untagged IPv4 / IPv6 frame shorter than the fixed IP
/// header. Tagged frames are not checked, so cuts inside the IP header still reach the
/// programs through the VLAN cases.
#[derive(Clone, Copy, Debug)]
struct Refusals {
    short_ip_headers: bool,
}

impl Refusals {
    /// Asks the kernel: is a SYN cut inside its IPv4 header refused?
    fn probe(h: &mut Harness) -> Self {
        let syn = Flow::numbered(Kind::Tcp, false, 0).request();
        let cut = &syn[..ETHERNET_LEN + packets::IPV4_LEN - 1];
        let short_ip_headers = match h.try_run(EGRESS_PROGRAM, cut) {
            Ok(ret) => {
                assert_eq!(ret, PASS_THROUGH, "a SYN cut inside its IP header");
                false
            }
            Err(ProgramError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(libc::EINVAL) =>
            {
                true
            }
            Err(err) => panic!("a SYN cut inside its IP header: unexpected error {err:?}"),
        };
        eprintln!(
            "  this kernel refuses untagged IP frames cut inside the fixed IP header: {short_ip_headers}"
        );
        Self { short_ip_headers }
    }

    fn refused(self, v6: bool, shape: &Shape, len: usize) -> bool {
        let fixed = if v6 {
            packets::IPV6_LEN
        } else {
            packets::IPV4_LEN
        };
        len < ETHERNET_LEN
            || (self.short_ip_headers && shape.vlan_tags == 0 && len < ETHERNET_LEN + fixed)
    }
}

/// Runs `cut` cut to `len` bytes (after its setup) through its program, then through the
/// other one, which must ignore it; returns what the first run changed, or `None` when the
/// kernel refused the frame (it must, with EINVAL, exactly when `refused` says so).
fn run_cut(h: &mut Harness, cut: &Cut, len: usize, refused: bool) -> Option<Change> {
    let what = format!("{} cut to {len} of {} bytes", cut.name, cut.packet.len());
    h.forget(&cut.flow);
    if let Some(setup) = &cut.setup {
        h.egress(setup, &format!("the request before {what}"));
    }
    let frame = &cut.packet[..len];
    if refused {
        let before = h.state();
        for program in [cut.program, other(cut.program)] {
            match h.try_run(program, frame) {
                Err(ProgramError::SyscallError(err)) => assert_eq!(
                    err.io_error.raw_os_error(),
                    Some(libc::EINVAL),
                    "{what}: {program}: the kernel should refuse it with EINVAL: {err}"
                ),
                result => panic!("{what}: {program}: expected EINVAL, got {result:?}"),
            }
        }
        assert_eq!(
            h.state().since(&before),
            Change::none(),
            "{what}: refused, yet something changed"
        );
        return None;
    }
    let change = h.change_by(cut.program, frame, &what);
    // The other way, a request is one received (for an address that is not this host's)
    // and an answer one sent (answering nothing pending): neither may touch a table; a cut
    // one is as malformed (or its quote as short) either way.
    let mut ignored = h.change_by(other(cut.program), frame, &format!("{what}, the other way"));
    ignored.counters.retain(|name, _| {
        ![
            KernelCounter::NotForThisHost.name(),
            KernelCounter::Malformed.name(),
            KernelCounter::ShortQuote.name(),
            UnmatchedAnswer.name(),
            UnmatchedRejection.name(),
        ]
        .contains(name)
    });
    assert_eq!(
        ignored,
        Change::none(),
        "{what}: {} should ignore it",
        other(cut.program)
    );
    Some(change)
}

/// Every request, answer and rejection, IPv4 and IPv6, in each of [`cut_shapes`], cut at
/// every length: the kernel refuses frames shorter than Ethernet (and, untagged, than the
/// fixed IP header: see [`Refusals`]); otherwise the programs pass the packet and either do
/// nothing or exactly what the whole packet does, and only once the cut keeps every field
/// that identifies the request. The other program ignores every cut.
#[test]
fn truncated_packets_do_nothing_or_exactly_what_the_whole_does() {
    const NAME: &str = "truncated_packets_do_nothing_or_exactly_what_the_whole_does";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    let refusals = Refusals::probe(&mut h);
    for v6 in [false, true] {
        for (label, shape) in cut_shapes(v6) {
            for cut in cuts(v6, label, &shape) {
                let whole = cut.packet.len();
                let change = run_cut(&mut h, &cut, whole, false).expect("a whole frame");
                assert_eq!(change, cut.full, "{}: the whole packet", cut.name);
                // From the whole packet down: the full effect, then (once a cut does
                // nothing) never again.
                let mut full_from = whole;
                for len in (0..whole).rev() {
                    let what = format!("{} cut to {len} of {whole} bytes", cut.name);
                    let Some(change) =
                        run_cut(&mut h, &cut, len, refusals.refused(v6, &shape, len))
                    else {
                        continue;
                    };
                    let full = cut.question_at.map_or_else(
                        || cut.full.clone(),
                        |at| cut.full.with_question_cut(len.saturating_sub(at)),
                    );
                    if change == full {
                        assert_eq!(
                            full_from,
                            len + 1,
                            "{what}: the full effect, yet a longer cut did nothing"
                        );
                        full_from = len;
                        continue;
                    }
                    let nothing = match cut.short {
                        Some((counter, from)) if len >= from => Change::none().count(counter, 1),
                        _ => Change::none(),
                    };
                    assert_eq!(
                        change, nothing,
                        "{what}: neither nothing nor what the whole packet does"
                    );
                }
                assert!(
                    full_from >= cut.identified_at,
                    "{}: a cut to {full_from} bytes had the full effect, but the fields \
                     identifying the request end at {}",
                    cut.name,
                    cut.identified_at
                );
                eprintln!(
                    "  {}: full effect from {full_from} of {whole} bytes",
                    cut.name
                );
            }
        }
    }
}

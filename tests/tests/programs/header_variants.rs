//! 7. Header variants.

use super::*;

/// Records `flow` sent in `shape`, answers it in `shape`, then rejects a sibling with an
/// unreachable (itself in `shape`) quoting the sibling's shaped request.
fn exchange_in(h: &mut Harness, flow: Flow, sibling: Flow, shape: &Shape, label: &str) {
    let what = format!("the request {} in {label}", flow.describe());
    h.check(
        EGRESS_PROGRAM,
        &flow.request_in(shape),
        Change::none().recorded(&flow),
        &what,
    );
    let what = format!("the answer to {} in {label}", flow.describe());
    h.check(
        INGRESS_PROGRAM,
        &flow.answer_in(shape),
        Change::none().answered(&flow),
        &what,
    );

    let request = sibling.request_in(shape);
    let what = format!("the request {} in {label}", sibling.describe());
    h.check(
        EGRESS_PROGRAM,
        &request,
        Change::none().recorded(&sibling),
        &what,
    );
    let code = reject_code(sibling.v6);
    let error = packets::unreachable(sibling.v6, code, packets::ip_packet(&request), shape);
    let what = format!("an unreachable in {label} quoting {}", sibling.describe());
    h.check(
        INGRESS_PROGRAM,
        &error,
        Change::none().rejected(&sibling, unreachable_reason(sibling.v6, code)),
        &what,
    );
}

/// IPv4 headers with options (IHL 6 to 15) are skipped to the transport header, in requests,
/// answers, ICMP errors and the headers they quote.
#[test]
fn ipv4_options_are_skipped() {
    const NAME: &str = "ipv4_options_are_skipped";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for words in 1..=10u8 {
        let shape = Shape::ipv4_options(words);
        let ihl = 5 + words;
        for (index, kind) in Kind::ALL.into_iter().enumerate() {
            let n = u16::from(words) * 10 + u16::try_from(index).expect("three kinds") * 2;
            let flow = Flow::numbered(kind, false, n);
            let frame = flow.request_in(&shape);
            assert_eq!(frame[shape.l3()] & 0x0f, ihl, "the fixture's IHL");
            exchange_in(
                &mut h,
                flow,
                Flow::numbered(kind, false, n + 1),
                &shape,
                &format!("IPv4 with IHL {ihl}"),
            );
        }
    }
}

/// IPv6 extension headers are walked: hop-by-hop, routing, destination options, a first
/// fragment, authentication, and a chain of six; a seventh is one too many and counted.
#[test]
fn ipv6_extension_headers_are_walked_up_to_six() {
    const NAME: &str = "ipv6_extension_headers_are_walked_up_to_six";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    let variants = [
        ("a hop-by-hop header", Shape::ipv6(&[Ext::HopByHop])),
        ("a routing header", Shape::ipv6(&[Ext::Routing])),
        (
            "a destination options header",
            Shape::ipv6(&[Ext::DestinationOptions]),
        ),
        (
            "a first fragment header",
            Shape::ipv6(&[Ext::Fragment {
                offset: 0,
                more: true,
            }]),
        ),
        ("an authentication header", Shape::ipv6(&[Ext::Auth])),
        (
            "hop-by-hop and routing",
            Shape::ipv6(&[Ext::HopByHop, Ext::Routing]),
        ),
        ("six extension headers", Shape::ipv6_chain(6)),
    ];
    for (variant, (label, shape)) in variants.iter().enumerate() {
        for (index, kind) in Kind::ALL.into_iter().enumerate() {
            let n = u16::try_from(variant * 10 + index * 2).expect("few variants");
            exchange_in(
                &mut h,
                Flow::numbered(kind, true, n),
                Flow::numbered(kind, true, n + 1),
                shape,
                &format!("IPv6 with {label}"),
            );
        }
    }

    let seven = Shape::ipv6_chain(7);
    let limit = || Change::none().count(KernelCounter::ExtensionHeaderLimit, 1);
    for (index, kind) in Kind::ALL.into_iter().enumerate() {
        let n = 100 + u16::try_from(index).expect("three kinds") * 2;
        let flow = Flow::numbered(kind, true, n);
        let what = format!(
            "the request {} behind seven extension headers",
            flow.describe()
        );
        h.check(EGRESS_PROGRAM, &flow.request_in(&seven), limit(), &what);
        assert!(h.entry(&flow).is_none(), "{what}: recorded");

        let pending = Flow::numbered(kind, true, n + 1);
        h.send(&[pending]);
        let what = format!(
            "the answer to {} behind seven extension headers",
            pending.describe()
        );
        h.check(INGRESS_PROGRAM, &pending.answer_in(&seven), limit(), &what);
        let code = reject_code(true);
        let error = packets::unreachable(true, code, &pending.quote(), &seven);
        let what = format!(
            "an unreachable behind seven extension headers quoting {}",
            pending.describe()
        );
        h.check(INGRESS_PROGRAM, &error, limit(), &what);

        // Quoting a request behind seven headers: no rejection, the limit counted (the quote
        // is also counted short: the programs cannot tell it from a cut one).
        let hidden = pending.request_in(&seven);
        let error = packets::unreachable(true, code, packets::ip_packet(&hidden), &Shape::plain());
        let what = format!(
            "an unreachable quoting {} behind seven extension headers",
            pending.describe()
        );
        let mut change = h.change_by(INGRESS_PROGRAM, &error, &what);
        change.counters.remove(KernelCounter::ShortQuote.name());
        assert_eq!(change, limit(), "{what}");

        let entry = h.entry(&pending).expect("still pending");
        assert_eq!(entry.flags, 0, "{what}");
        let what = format!("the plain answer to {}", pending.describe());
        h.check(
            INGRESS_PROGRAM,
            &pending.answer(),
            Change::none().answered(&pending),
            &what,
        );
    }
}

/// A first fragment carries the transport header and is used; a non-first one (IPv4
/// offset, IPv6 fragment header offset) carries none and is only counted.
#[test]
fn non_first_fragments_are_counted_not_parsed() {
    const NAME: &str = "non_first_fragments_are_counted_not_parsed";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for (index, kind) in Kind::ALL.into_iter().enumerate() {
        let n = u16::try_from(index).expect("three kinds") * 2;
        exchange_in(
            &mut h,
            Flow::numbered(kind, false, n),
            Flow::numbered(kind, false, n + 1),
            &Shape::ipv4_fragment(0, true),
            "a first IPv4 fragment",
        );
        exchange_in(
            &mut h,
            Flow::numbered(kind, true, n),
            Flow::numbered(kind, true, n + 1),
            &Shape::ipv6(&[Ext::Fragment {
                offset: 0,
                more: true,
            }]),
            "a first IPv6 fragment",
        );
    }
    let fragment = || Change::none().count(KernelCounter::Fragment, 1);
    let non_first = [
        (
            false,
            "IPv4 offset 185, last",
            Shape::ipv4_fragment(185, false),
        ),
        (false, "IPv4 offset 1, more", Shape::ipv4_fragment(1, true)),
        (false, "IPv4 offset 8191", Shape::ipv4_fragment(8191, false)),
        (
            true,
            "IPv6 fragment offset 185, last",
            Shape::ipv6(&[Ext::Fragment {
                offset: 185,
                more: false,
            }]),
        ),
        (
            true,
            "IPv6 fragment offset 1, more",
            Shape::ipv6(&[Ext::Fragment {
                offset: 1,
                more: true,
            }]),
        ),
        (
            true,
            "IPv6 hop-by-hop then fragment offset 8191",
            Shape::ipv6(&[
                Ext::HopByHop,
                Ext::Fragment {
                    offset: 8191,
                    more: false,
                },
            ]),
        ),
    ];
    for (variant, (v6, label, shape)) in non_first.iter().enumerate() {
        for (index, kind) in Kind::ALL.into_iter().enumerate() {
            let n = 100 + u16::try_from(variant * 10 + index * 2).expect("few variants");
            let flow = Flow::numbered(kind, *v6, n);
            let what = format!(
                "the request {} as a non-first fragment ({label})",
                flow.describe()
            );
            h.check(EGRESS_PROGRAM, &flow.request_in(shape), fragment(), &what);

            let pending = Flow::numbered(kind, *v6, n + 1);
            h.send(&[pending]);
            let what = format!(
                "the answer to {} as a non-first fragment ({label})",
                pending.describe()
            );
            h.check(
                INGRESS_PROGRAM,
                &pending.answer_in(shape),
                fragment(),
                &what,
            );
            let code = reject_code(*v6);
            let error = packets::unreachable(*v6, code, &pending.quote(), shape);
            let what = format!(
                "an unreachable as a non-first fragment ({label}) quoting {}",
                pending.describe()
            );
            h.check(INGRESS_PROGRAM, &error, fragment(), &what);
            assert_eq!(
                h.entry(&pending).map(|e| e.flags),
                Some(0),
                "{what}: still pending"
            );
        }
    }
}

/// One 802.1Q tag and `QinQ` (802.1ad outer, 802.1Q inner) are walked; a third tag is not
/// parsed, changes nothing, and is counted (`vlan_tag_limit`), never misread.
#[test]
fn vlan_tags_up_to_two_are_walked_and_more_are_counted() {
    const NAME: &str = "vlan_tags_up_to_two_are_walked_and_more_are_counted";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    for v6 in [false, true] {
        for tags in [1u8, 2] {
            let shape = Shape::vlan(tags);
            let frame = Flow::numbered(Kind::Tcp, v6, 0).request_in(&shape);
            let outer = u16::from_be_bytes([frame[12], frame[13]]);
            assert_eq!(
                outer,
                if tags == 1 { 0x8100 } else { 0x88a8 },
                "the fixture's outer tag"
            );
            for (index, kind) in Kind::ALL.into_iter().enumerate() {
                let n = u16::from(tags) * 10 + u16::try_from(index).expect("three kinds") * 2;
                let label = format!("{tags} VLAN tag(s)");
                exchange_in(
                    &mut h,
                    Flow::numbered(kind, v6, n),
                    Flow::numbered(kind, v6, n + 1),
                    &shape,
                    &label,
                );
            }
        }
        let three = Shape::vlan(3);
        let counted = || Change::none().count(KernelCounter::VlanTagLimit, 1);
        for (index, kind) in Kind::ALL.into_iter().enumerate() {
            let n = 100 + u16::try_from(index).expect("three kinds") * 2;
            let flow = Flow::numbered(kind, v6, n);
            let what = format!("the request {} behind three VLAN tags", flow.describe());
            h.check(EGRESS_PROGRAM, &flow.request_in(&three), counted(), &what);
            let pending = Flow::numbered(kind, v6, n + 1);
            h.send(&[pending]);
            let what = format!(
                "the answer to {} behind three VLAN tags",
                pending.describe()
            );
            h.check(
                INGRESS_PROGRAM,
                &pending.answer_in(&three),
                counted(),
                &what,
            );
            let (tagged, _) = refusal(&pending, &three);
            let what = format!(
                "the refusal of {} behind three VLAN tags",
                pending.describe()
            );
            h.check(INGRESS_PROGRAM, &tagged, counted(), &what);
            assert_eq!(
                h.entry(&pending).map(|e| e.flags),
                Some(0),
                "{what}: still pending"
            );
        }
    }
}

/// `frame` (built in `shape`) with the first byte of its IP header replaced by `byte`.
fn with_ip_byte(frame: &[u8], shape: &Shape, byte: u8) -> Vec<u8> {
    let mut frame = frame.to_vec();
    frame[shape.l3()] = byte;
    frame
}

/// IP headers the kernel's own receive path drops (`ip_rcv_core`: IHL below 5 or version
/// not 4; `ip6_rcv_core`: version not 6) are not parsed: no request recorded, no answer
/// or rejection counted. The IPv4 parser checks both; see the report for IPv6.
#[test]
fn ip_headers_with_a_wrong_version_or_length_are_ignored() {
    const NAME: &str = "ip_headers_with_a_wrong_version_or_length_are_ignored";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::new(NAME);
    let plain = Shape::plain();
    let mut wrong = Vec::new();
    for v6 in [false, true] {
        // First bytes of the IP header: version and IHL (IPv4), version and the top of the
        // traffic class (IPv6, whose traffic class is 0 here).
        let bytes: Vec<(u8, String)> = if v6 {
            [0x40, 0x00, 0xf0]
                .iter()
                .map(|&b| (b, format!("version {}", b >> 4)))
                .collect()
        } else {
            (0x40..=0x44)
                .map(|b| (b, format!("IHL {}", b & 0x0f)))
                .chain([(0x65, "version 6".to_owned())])
                .collect()
        };
        for (index, (byte, label)) in bytes.iter().enumerate() {
            for (k, kind) in Kind::ALL.into_iter().enumerate() {
                let n = u16::try_from(index * 10 + k * 2).expect("few variants");
                let flow = Flow::numbered(kind, v6, n);
                let pending = Flow::numbered(kind, v6, n + 1);
                h.send(&[pending]);
                // An answer or a refusal that changes nothing proves something only where
                // there was a request to match.
                assert!(
                    h.entry(&pending).is_some(),
                    "{} was not recorded",
                    pending.describe()
                );
                let (refusal, _) = refusal(&pending, &plain);
                let cases = [
                    (
                        EGRESS_PROGRAM,
                        "the request",
                        flow,
                        with_ip_byte(&flow.request(), &plain, *byte),
                    ),
                    (
                        INGRESS_PROGRAM,
                        "the answer to",
                        pending,
                        with_ip_byte(&pending.answer(), &plain, *byte),
                    ),
                    (
                        INGRESS_PROGRAM,
                        "the refusal of",
                        pending,
                        with_ip_byte(&refusal, &plain, *byte),
                    ),
                ];
                for (program, what, flow, frame) in cases {
                    let what = format!("{what} {} with {label}", flow.describe());
                    let change = h.change_by(program, &frame, &what);
                    if change != Change::none() {
                        wrong.push(format!("{what}: {}", change.brief()));
                        // Put the request back for the next case.
                        h.forget(&flow);
                        if program == INGRESS_PROGRAM {
                            h.send(&[flow]);
                        }
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} packets with an IP header the kernel drops were parsed anyway:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

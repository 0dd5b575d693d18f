//! Devices without a link-layer header (tun, `WireGuard`, PPP, ipip, gre, sit): their
//! packets start with the IP header, at both hooks. The L3 classifier pair must make of
//! each exactly what the Ethernet pair makes of the same packet in an Ethernet frame.

use netwatch_common::{L3_EGRESS_PROGRAM, L3_INGRESS_PROGRAM};

use super::*;

/// One packet of a scenario: the hook it is seen at, the frame as an Ethernet device would
/// carry it, and what it is.
struct Step {
    ingress: bool,
    frame: Vec<u8>,
    what: String,
}

impl Step {
    fn out(frame: Vec<u8>, what: String) -> Self {
        Self {
            ingress: false,
            frame,
            what,
        }
    }

    fn into_host(frame: Vec<u8>, what: String) -> Self {
        Self {
            ingress: true,
            frame,
            what,
        }
    }
}

/// Requests, retransmits, answers, rejections (resets, unreachables quoting the request),
/// path-MTU signals and requests to multicast groups, sent by this host and received by it,
/// for every kind and family, plain and with IPv4 options or IPv6 extension headers.
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn scenario() -> Vec<Step> {
    let mut steps = Vec::new();
    for v6 in [false, true] {
        let shapes = if v6 {
            vec![Shape::plain(), Shape::ipv6_chain(3)]
        } else {
            vec![Shape::plain(), Shape::ipv4_options(3)]
        };
        for (s, shape) in shapes.iter().enumerate() {
            let label = if s == 0 { "plain" } else { "extended" };
            for (k, kind) in Kind::ALL.into_iter().enumerate() {
                let n = u16::try_from(s * 100 + k * 10).expect("small");
                let answered = Flow::numbered(kind, v6, n);
                let refused = Flow::numbered(kind, v6, n + 1);
                let said =
                    |flow: &Flow, what: &str| format!("{what} {} ({label})", flow.describe());
                steps.push(Step::out(
                    answered.request_in(shape),
                    said(&answered, "the request"),
                ));
                steps.push(Step::out(
                    answered.request_in(shape),
                    said(&answered, "a retransmit of"),
                ));
                steps.push(Step::into_host(
                    answered.answer_in(shape),
                    said(&answered, "the answer to"),
                ));
                let request = refused.request_in(shape);
                steps.push(Step::out(request.clone(), said(&refused, "the request")));
                let refusal = match kind {
                    Kind::Tcp => refusal(&refused, shape).0,
                    _ => packets::unreachable(
                        v6,
                        reject_code(v6),
                        packets::ip_packet(&request),
                        shape,
                    ),
                };
                steps.push(Step::into_host(refusal, said(&refused, "the refusal of")));
            }
            // A TCP SYN's path-MTU signal ("fragmentation needed", "packet too big").
            let stalled =
                Flow::numbered(Kind::Tcp, v6, u16::try_from(s * 100 + 50).expect("small"));
            let request = stalled.request_in(shape);
            steps.push(Step::out(
                request.clone(),
                format!("the request {}", stalled.describe()),
            ));
            let (kind, code, mtu) = if v6 { (2, 0, 1280u32) } else { (3, 4, 1400) };
            let mut signal = packets::unreachable(v6, code, packets::ip_packet(&request), shape);
            let icmp = shape.l4(v6);
            signal[icmp] = kind;
            if v6 {
                signal[icmp + 4..icmp + 8].copy_from_slice(&mtu.to_be_bytes());
            } else {
                let mtu = u16::try_from(mtu).expect("an IPv4 MTU");
                signal[icmp + 6..icmp + 8].copy_from_slice(&mtu.to_be_bytes());
            }
            steps.push(Step::into_host(
                signal,
                format!("a path-MTU signal for {}", stalled.describe()),
            ));
        }
        // Requests this host receives (for one of its addresses), and what it sends back.
        let (us, peer) = (packets::local(v6), packets::remote(v6));
        let syn = Flow::tcp(v6, 51_000, 443, 7_000)
            .with_local(peer)
            .with_remote(us);
        let reset = Flow::tcp(v6, 51_001, 9_000, 8_000)
            .with_local(peer)
            .with_remote(us);
        let query = Flow::dns(v6, 53, 0x4242)
            .with_local(peer)
            .with_remote(us)
            .with_remote_port(53);
        let ping = Flow::echo(v6, 0x0ab0, 1).with_local(peer).with_remote(us);
        for flow in [syn, reset, query, ping] {
            steps.push(Step::into_host(
                flow.request(),
                format!("{} asked of this host", flow.describe()),
            ));
        }
        for (flow, reply) in [
            (syn, syn.answer()),
            (reset, reset.rst()),
            (query, query.answer()),
            (ping, ping.answer()),
        ] {
            steps.push(Step::out(
                reply,
                format!("this host's reply to {}", flow.describe()),
            ));
        }
        // Requests to a group: answered by its members from their own addresses.
        let group = if v6 {
            IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb))
        } else {
            IpAddr::V4(Ipv4Addr::new(224, 0, 0, 251))
        };
        let multicast = Flow::dns(v6, 5353, 0x0777).with_remote(group);
        steps.push(Step::out(
            multicast.request(),
            format!("{} to a group", multicast.describe()),
        ));
    }
    steps
}

/// Every step of [`scenario`] changes the kernel's tables in the same way whether it runs on
/// the Ethernet classifiers in an Ethernet frame or on the L3 classifiers as the bare IP
/// packet: the same pending entries, target counters (reasons included) and kernel
/// counters. And it is not nothing: the totals are the scenario's.
#[test]
fn packets_without_a_link_header_are_judged_as_in_ethernet_frames() {
    judged_as_in_ethernet_frames(
        "packets_without_a_link_header_are_judged_as_in_ethernet_frames",
        Arriving::Bare,
    );
}

/// The same when the packets arriving come behind outer headers, as the kernel's own tunnels
/// (ipip, sit, gre, ip6tnl, ip6gre) of older kernels (5.10) hand them to tc ingress: the L3
/// ingress classifier reads them at the kernel's network header.
#[test]
fn packets_arriving_behind_a_tunnels_outer_headers_are_judged_as_in_ethernet_frames() {
    judged_as_in_ethernet_frames(
        "packets_arriving_behind_a_tunnels_outer_headers_are_judged_as_in_ethernet_frames",
        Arriving::BehindOuterHeaders,
    );
}

/// How the L3 ingress classifier is given a packet arriving.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Arriving {
    /// The IP packet alone, as tun and `WireGuard` devices (and every device on 6.1)
    /// hand it.
    Bare,
    /// The whole Ethernet frame: 14 bytes before the IP header, and `BPF_PROG_TEST_RUN`
    /// puts the kernel's network header at 14, where a tunnel's inner one would be. (Leaving
    /// packets are bare either way: the outer headers are only ever before those arriving.)
    BehindOuterHeaders,
}

fn judged_as_in_ethernet_frames(name: &'static str, arriving: Arriving) {
    if !netwatch_tests::prerequisites(name, &[]) {
        return;
    }
    let mut ethernet = Harness::new(name);
    let mut l3 = Harness::with_both_pairs(name);
    for h in [&mut ethernet, &mut l3] {
        h.probe
            .set_local_addresses([packets::local(false), packets::local(true)])
            .expect("local addresses");
    }
    let steps = scenario();
    for step in &steps {
        let (on_ethernet, on_l3) = if step.ingress {
            (INGRESS_PROGRAM, L3_INGRESS_PROGRAM)
        } else {
            (EGRESS_PROGRAM, L3_EGRESS_PROGRAM)
        };
        let expected = ethernet.change_by(on_ethernet, &step.frame, &step.what);
        let packet = if step.ingress && arriving == Arriving::BehindOuterHeaders {
            &step.frame[..]
        } else {
            packets::ip_packet(&step.frame)
        };
        let found = l3.change_by(on_l3, packet, &step.what);
        assert_eq!(found, expected, "{name}: {} (L3, then Ethernet)", step.what);
    }
    let all = all_targets(&mut l3.probe);
    let totals = (
        sum(&all, |c| c.requests),
        sum(&all, |c| c.retransmits),
        sum(&all, |c| c.answered),
        sum(&all, |c| c.rejected),
        sum(&all, |c| c.path_mtu_signals),
    );
    // Per family: two shapes of (3 kinds × 2 requests + a SYN), and 4 received requests;
    // every kind retransmitted once per shape; 3 answered per shape and 3 received requests
    // answered; 3 refused per shape and the reset; one signal per shape.
    assert_eq!(
        totals,
        (
            2 * (2 * 7 + 4),
            2 * 2 * 3,
            2 * (2 * 3 + 3),
            2 * (2 * 3 + 1),
            2 * 2
        ),
        "{name}: requests, retransmits, answered, rejected, path-MTU signals"
    );
    let counters = l3.probe.read_counters().expect("counters");
    assert_eq!(
        counters[KernelCounter::NotUnicast as usize],
        2,
        "{name}: the two requests to a group, and no other: an IPv4 header's first byte \
         (0x45) is no destination MAC with its group bit set"
    );
}

/// What is not an IP packet at all (an unknown version), or is cut short, changes nothing on
/// the L3 classifiers, and they pass it on like everything else.
#[test]
fn what_is_not_ip_changes_nothing_without_a_link_header() {
    const NAME: &str = "what_is_not_ip_changes_nothing_without_a_link_header";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mut h = Harness::with_both_pairs(NAME);
    for v6 in [false, true] {
        for kind in Kind::ALL {
            let flow = Flow::numbered(kind, v6, 7);
            let frame = flow.request();
            let packet = packets::ip_packet(&frame).to_vec();
            // Both hooks: arriving, the classifier also looks for the IP header behind
            // outer headers, and must not find one in these either.
            for program in [L3_EGRESS_PROGRAM, L3_INGRESS_PROGRAM] {
                for version in [0u8, 5, 7, 15] {
                    let mut other = packet.clone();
                    other[0] = (version << 4) | (other[0] & 0x0f);
                    let what = format!("{} as IP version {version} ({program})", flow.describe());
                    h.check(program, &other, Change::none(), &what);
                }
                // Cut inside the IP header (the kernel runs programs on nothing shorter than
                // 14 bytes).
                let header = if v6 { 40 } else { 20 };
                for cut in [14, 19, header - 1] {
                    let what = format!("{} cut to {cut} bytes ({program})", flow.describe());
                    let change = h.change_by(program, &packet[..cut], &what);
                    assert!(
                        change.recorded.is_empty() && change.targets.is_empty(),
                        "{NAME}: {what}: {change:?}"
                    );
                }
            }
        }
    }
}

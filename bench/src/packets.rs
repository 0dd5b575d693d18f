//! The crafted frames the program benchmarks run on: each request kind with the answer or
//! rejection that settles it, numbered so that request `i` and answer `i` belong together and
//! different `i` are different requests (for netwatch's key and for the reference programs'
//! key, the 40 bytes after the Ethernet header). The frames come from the tests' packet
//! factory ([`netwatch_tests::packets`]): the benchmarks time what the tests check.

use etherparse::TcpHeader;
use netwatch_tests::packets::{
    Flow, Shape, Transport, frame, ip_packet, local, remote, unreachable,
};

const WEB_PORT: u16 = 443;
const ECHO_ID: u16 = 0x4e57;
/// Client ports start here; `i` is added.
const FIRST_PORT: u16 = 10_000;
/// How many distinct requests of one kind the numbering gives.
pub const MAX_KEYS: usize = 55_000;

/// What a frame is, for the tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Syn,
    DnsQuery,
    Echo,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    SynAck,
    DnsResponse,
    EchoReply,
    /// ICMP port unreachable (`ICMPv6`: port unreachable) quoting the DNS query.
    PortUnreachable,
    /// ICMP host prohibited (`ICMPv6`: administratively prohibited) quoting the SYN.
    Prohibited,
}

/// A request kind with the answer that settles it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub request: Request,
    pub answer: Answer,
    pub v6: bool,
}

impl Exchange {
    /// Every exchange the benchmarks run, IPv4 then IPv6. The first of each request kind
    /// and family is the one its request cost is reported from.
    pub const ALL: [Self; 10] = [
        Self {
            request: Request::Syn,
            answer: Answer::SynAck,
            v6: false,
        },
        Self {
            request: Request::DnsQuery,
            answer: Answer::DnsResponse,
            v6: false,
        },
        Self {
            request: Request::Echo,
            answer: Answer::EchoReply,
            v6: false,
        },
        Self {
            request: Request::DnsQuery,
            answer: Answer::PortUnreachable,
            v6: false,
        },
        Self {
            request: Request::Syn,
            answer: Answer::Prohibited,
            v6: false,
        },
        Self {
            request: Request::Syn,
            answer: Answer::SynAck,
            v6: true,
        },
        Self {
            request: Request::DnsQuery,
            answer: Answer::DnsResponse,
            v6: true,
        },
        Self {
            request: Request::Echo,
            answer: Answer::EchoReply,
            v6: true,
        },
        Self {
            request: Request::DnsQuery,
            answer: Answer::PortUnreachable,
            v6: true,
        },
        Self {
            request: Request::Syn,
            answer: Answer::Prohibited,
            v6: true,
        },
    ];

    /// Whether this exchange is the one its request kind's cost is reported from.
    #[must_use]
    pub fn reports_request(self) -> bool {
        Self::ALL
            .iter()
            .find(|e| e.request == self.request && e.v6 == self.v6)
            == Some(&self)
    }

    /// `syn` / `syn6`, …
    #[must_use]
    pub fn request_name(self) -> String {
        let base = match self.request {
            Request::Syn => "syn",
            Request::DnsQuery => "dns_query",
            Request::Echo => "echo_request",
        };
        if self.v6 {
            format!("{base}_v6")
        } else {
            base.to_owned()
        }
    }

    #[must_use]
    pub fn answer_name(self) -> String {
        let base = match self.answer {
            Answer::SynAck => "syn_ack",
            Answer::DnsResponse => "dns_response",
            Answer::EchoReply => "echo_reply",
            Answer::PortUnreachable => "port_unreachable_quoting_dns",
            Answer::Prohibited => "prohibited_quoting_syn",
        };
        if self.v6 {
            format!("{base}_v6")
        } else {
            base.to_owned()
        }
    }

    /// Request number `i` (0 ≤ i < [`MAX_KEYS`]).
    #[must_use]
    pub fn request(self, i: usize) -> Vec<u8> {
        let n = Numbered::new(i);
        with_flow_label(self.flow(&n).request(), self.v6, n.index)
    }

    /// The answer to request number `i`.
    #[must_use]
    pub fn answer(self, i: usize) -> Vec<u8> {
        let n = Numbered::new(i);
        // Destination unreachable codes: port unreachable is 3 (ICMPv6: 4), host
        // prohibited 10 (ICMPv6: administratively prohibited, 1).
        let code = match (self.answer, self.v6) {
            (Answer::SynAck | Answer::DnsResponse | Answer::EchoReply, _) => {
                return self.flow(&n).answer();
            }
            (Answer::PortUnreachable, false) => 3,
            (Answer::PortUnreachable, true) => 4,
            (Answer::Prohibited, false) => 10,
            (Answer::Prohibited, true) => 1,
        };
        // The request whole, flow label included, as routers quote it.
        unreachable(self.v6, code, ip_packet(&self.request(i)), &Shape::plain())
    }

    /// Request `n`'s flow in the tests' packet factory.
    fn flow(self, n: &Numbered) -> Flow {
        match self.request {
            Request::Syn => Flow::tcp(self.v6, n.port, WEB_PORT, n.seq),
            Request::DnsQuery => Flow::dns(self.v6, n.port, n.id),
            Request::Echo => Flow::echo(self.v6, ECHO_ID, n.id),
        }
    }
}

/// The per-request numbers of request `i`.
struct Numbered {
    index: u32,
    port: u16,
    seq: u32,
    id: u16,
}

impl Numbered {
    fn new(i: usize) -> Self {
        assert!(i < MAX_KEYS, "request numbers stop at {MAX_KEYS}");
        let index = u32::try_from(i).expect("below MAX_KEYS");
        let offset = u16::try_from(i).expect("below MAX_KEYS");
        Self {
            index,
            port: FIRST_PORT + offset,
            seq: index.wrapping_mul(2_654_435_761),
            id: offset.wrapping_mul(40_503),
        }
    }
}

/// Sets the IPv6 flow label (as Linux does per flow) so that the reference programs' key,
/// which for IPv6 is the IP header alone, is distinct per request too.
fn with_flow_label(mut frame: Vec<u8>, v6_family: bool, index: u32) -> Vec<u8> {
    if v6_family {
        let label = index & 0x000f_ffff;
        let [_, hi, mid, lo] = label.to_be_bytes();
        frame[15] = (frame[15] & 0xf0) | hi;
        frame[16] = mid;
        frame[17] = lo;
    }
    frame
}

/// A full-size TCP data segment leaving the client (ACK set, 1448 bytes of payload): the
/// packet every watched interface carries most, which netwatch must not track.
#[must_use]
pub fn bulk_tcp_data(outgoing: bool) -> Vec<u8> {
    let (source, destination, sport, dport) = if outgoing {
        (local(false), remote(false), 40_000, WEB_PORT)
    } else {
        (remote(false), local(false), WEB_PORT, 40_000)
    };
    let mut tcp = TcpHeader::new(sport, dport, 1_000_000, 64_240);
    tcp.ack = true;
    tcp.acknowledgment_number = 2_000_000;
    frame(
        source,
        destination,
        &Shape::plain(),
        Transport::Tcp(tcp),
        &[0x42; 1448],
    )
}

/// [`bulk_tcp_data`] as a device without a link-layer header (tun, `WireGuard`) carries it:
/// the IP packet alone.
#[must_use]
pub fn bulk_tcp_data_l3(outgoing: bool) -> Vec<u8> {
    ip_packet(&bulk_tcp_data(outgoing)).to_vec()
}

/// A UDP port that is not DNS and that nothing watches: the common UDP path.
pub const UNWATCHED_UDP_PORT: u16 = 5_000;
/// The `--udp-port` service the benchmark watches (`WireGuard`'s port).
pub const WATCHED_UDP_PORT: u16 = 51_820;

/// A small UDP datagram (64 bytes of payload) from this host's port 40000 to the web
/// server's `port`: UDP that is not DNS.
#[must_use]
pub fn udp_datagram(port: u16) -> Vec<u8> {
    frame(
        local(false),
        remote(false),
        &Shape::plain(),
        Transport::Udp {
            source: 40_000,
            destination: port,
        },
        &[0x42; 64],
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    use netwatch_tests::packets::ICMP_DEST_UNREACHABLE;

    use super::*;

    fn sliced(frame: &[u8]) -> SlicedPacket<'_> {
        SlicedPacket::from_ethernet(frame).expect("a well-formed frame")
    }

    #[test]
    fn every_frame_is_well_formed_and_long_enough_for_the_reference_key() {
        for exchange in Exchange::ALL {
            for i in [0, 1, 777, MAX_KEYS - 1] {
                for frame in [exchange.request(i), exchange.answer(i)] {
                    let packet = sliced(&frame);
                    assert!(packet.net.is_some(), "{exchange:?}");
                    assert!(
                        frame.len() >= 14 + 40,
                        "{exchange:?} is {} bytes",
                        frame.len()
                    );
                    let is_v6 = matches!(packet.net, Some(NetSlice::Ipv6(_)));
                    assert_eq!(is_v6, exchange.v6);
                }
            }
        }
        assert_eq!(bulk_tcp_data(true).len(), 14 + 20 + 20 + 1448);
    }

    #[test]
    fn requests_are_distinct_for_netwatch_and_for_the_reference() {
        for exchange in Exchange::ALL {
            let reference_keys: HashSet<Vec<u8>> = (0..2_000)
                .map(|i| exchange.request(i)[14..54].to_vec())
                .collect();
            assert_eq!(reference_keys.len(), 2_000, "{exchange:?}");
        }
    }

    #[test]
    fn answers_answer_their_own_request() {
        let syn = Exchange::ALL[0];
        let (request, answer) = (syn.request(5), syn.answer(5));
        let (Some(TransportSlice::Tcp(req)), Some(TransportSlice::Tcp(ans))) =
            (sliced(&request).transport, sliced(&answer).transport)
        else {
            panic!("TCP expected");
        };
        assert!(req.syn() && !req.ack());
        assert!(ans.syn() && ans.ack());
        assert_eq!(
            ans.acknowledgment_number(),
            req.sequence_number().wrapping_add(1)
        );
        assert_eq!(
            (ans.source_port(), ans.destination_port()),
            (req.destination_port(), req.source_port())
        );

        let dns = Exchange::ALL[1];
        let (query, response) = (dns.request(9), dns.answer(9));
        let (Some(TransportSlice::Udp(q)), Some(TransportSlice::Udp(r))) =
            (sliced(&query).transport, sliced(&response).transport)
        else {
            panic!("UDP expected");
        };
        assert_eq!(q.destination_port(), 53);
        assert_eq!(r.destination_port(), q.source_port());
        assert_eq!(q.payload()[..2], r.payload()[..2], "same DNS id");
        assert_eq!(r.payload()[2] & 0x80, 0x80, "QR set on the response");

        // An ICMP error quotes the request's IP packet whole.
        let unreachable = Exchange::ALL[3];
        let error = unreachable.answer(9);
        assert_eq!(&error[14 + 20 + 8..], &query[14..]);
        assert_eq!(error[14 + 20], ICMP_DEST_UNREACHABLE);
        let prohibited6 = Exchange::ALL[9];
        let error = prohibited6.answer(3);
        assert_eq!(&error[14 + 40 + 8..], &prohibited6.request(3)[14..]);
    }

    #[test]
    fn each_request_kind_reports_from_one_exchange() {
        let names: Vec<String> = Exchange::ALL
            .iter()
            .filter(|e| e.reports_request())
            .map(|e| e.request_name())
            .collect();
        assert_eq!(
            names,
            [
                "syn",
                "dns_query",
                "echo_request",
                "syn_v6",
                "dns_query_v6",
                "echo_request_v6"
            ]
        );
    }
}

//! Crafted packets for `BPF_PROG_TEST_RUN`: Ethernet frames as netwatch's classifiers see
//! them on an interface, built with etherparse (so lengths and checksums are right). Bytes
//! are patched by hand only where etherparse cannot express the frame: VLAN tags beyond the
//! two of `QinQ`, and IPv6 extension headers beyond the six its `Ipv6Extensions` holds.
//!
//! Documentation addresses only: this host is 203.0.113.2 / `2001:db8:1::2`, the remote
//! 198.51.100.10 / `2001:db8:2::10`, and the router that sends ICMP errors 198.51.100.1 /
//! `2001:db8:2::1`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{
    DoubleVlanHeader, EtherType, IpAuthHeader, IpFragOffset, IpHeaders, Ipv4Extensions, Ipv4Header,
    Ipv4Options, Ipv6Extensions, Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader,
    Ipv6RoutingExtensions, PacketBuilder, SingleVlanHeader, TcpHeader, VlanHeader, VlanId, VlanPcp,
    ip_number,
};
use netwatch::target::ip_to_key;
use netwatch_common::{
    DNS_PORT, DNS_QUESTION_CAPTURE, NTP_LEN, NTP_ORIGIN_OFFSET, NTP_PORT, NTP_TRANSMIT_OFFSET,
    RequestKey, TargetKey, ntp_tag, proto,
};

/// This host.
pub const LOCAL_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// The remote requests go to.
pub const REMOTE_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// A router on the path: the source of ICMP errors.
pub const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// This host (IPv6).
pub const LOCAL_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
/// The remote requests go to (IPv6).
pub const REMOTE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10);
/// A router on the path (IPv6).
pub const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);

/// This host's MAC address.
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// The gateway's MAC address: the other end of every frame.
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// Length of an Ethernet II header.
pub const ETHERNET_LEN: usize = 14;
/// Length of one VLAN tag.
pub const VLAN_TAG_LEN: usize = 4;
/// Length of an IPv4 header without options.
pub const IPV4_LEN: usize = 20;
/// Length of the fixed IPv6 header.
pub const IPV6_LEN: usize = 40;
/// Length of a UDP header.
pub const UDP_LEN: usize = 8;
/// Length of a TCP header without options.
pub const TCP_LEN: usize = 20;
/// Length of an ICMP or `ICMPv6` header (type, code, checksum and four more bytes).
pub const ICMP_LEN: usize = 8;
/// Length of a DNS message header.
pub const DNS_HEADER_LEN: usize = 12;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACHABLE: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMPV6_DEST_UNREACHABLE: u8 = 1;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// The name every DNS query asks about unless told otherwise.
pub const QNAME: &str = "www.example.com";
/// A name longer than the kernel captures of a question.
pub const LONG_QNAME: &str = "a-rather-long-label-for-testing-the-capture.\
    another-fairly-long-label-to-pass-76-bytes.example.com";

/// Payload of every echo request and reply.
pub const ECHO_PAYLOAD: &[u8; 16] = b"netwatch-echo-16";

/// This host's address.
#[must_use]
pub const fn local(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(LOCAL_V6)
    } else {
        IpAddr::V4(LOCAL_V4)
    }
}

/// The remote's address.
#[must_use]
pub const fn remote(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(REMOTE_V6)
    } else {
        IpAddr::V4(REMOTE_V4)
    }
}

/// The router's address.
#[must_use]
pub const fn router(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(ROUTER_V6)
    } else {
        IpAddr::V4(ROUTER_V4)
    }
}

/// "IPv4" or "IPv6", for messages.
#[must_use]
pub const fn family(v6: bool) -> &'static str {
    if v6 { "IPv6" } else { "IPv4" }
}

/// An IPv6 extension header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ext {
    HopByHop,
    DestinationOptions,
    /// A routing header with segments left 0 (type 253, experimental).
    Routing,
    /// A fragment header: `offset` in 8-byte units, `more` fragments follow.
    Fragment {
        offset: u16,
        more: bool,
    },
    /// An authentication header with a 96-bit ICV.
    Auth,
}

impl Ext {
    /// The IANA number of this header (its value in the preceding next-header field).
    #[must_use]
    pub const fn number(self) -> u8 {
        match self {
            Self::HopByHop => 0,
            Self::Routing => 43,
            Self::Fragment { .. } => 44,
            Self::Auth => 51,
            Self::DestinationOptions => 60,
        }
    }

    /// Its length on the wire.
    #[must_use]
    pub const fn wire_len(self) -> usize {
        match self {
            Self::HopByHop | Self::DestinationOptions | Self::Routing | Self::Fragment { .. } => 8,
            Self::Auth => 24,
        }
    }

    /// Options payload of the option-carrying headers (after next header and length): one
    /// `PadN` option filling the 6 bytes.
    const PAD_N: [u8; 6] = [1, 4, 0, 0, 0, 0];
    /// Routing header payload: type 253, segments left 0, reserved.
    const ROUTING: [u8; 6] = [253, 0, 0, 0, 0, 0];
    const AUTH_SPI: u32 = 0x100;
    const AUTH_ICV: [u8; 12] = [0; 12];
    const FRAGMENT_ID: u32 = 0x5eed;

    /// The header's bytes, written by hand (for headers etherparse cannot place).
    #[must_use]
    pub fn bytes(self, next: u8) -> Vec<u8> {
        let mut out = vec![next];
        match self {
            Self::HopByHop | Self::DestinationOptions => {
                out.push(0);
                out.extend(Self::PAD_N);
            }
            Self::Routing => {
                out.push(0);
                out.extend(Self::ROUTING);
            }
            Self::Fragment { offset, more } => {
                out.push(0);
                out.extend((offset << 3 | u16::from(more)).to_be_bytes());
                out.extend(Self::FRAGMENT_ID.to_be_bytes());
            }
            Self::Auth => {
                out.extend([4, 0, 0]);
                out.extend(Self::AUTH_SPI.to_be_bytes());
                out.extend(1u32.to_be_bytes());
                out.extend(Self::AUTH_ICV);
            }
        }
        assert_eq!(out.len(), self.wire_len(), "{self:?} has the wrong length");
        out
    }
}

/// The headers around the transport header: VLAN tags, IPv4 options and fragmentation,
/// IPv6 extension headers. The default is a plain Ethernet + IP frame.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// 1: an 802.1Q tag; 2: `QinQ` (802.1ad outer, 802.1Q inner); more: further 802.1Q tags
    /// inserted by hand inside the `QinQ` pair.
    pub vlan_tags: u8,
    /// IPv4 options in 32-bit words (0..=10): the header's IHL is 5 plus this.
    pub ipv4_option_words: u8,
    /// IPv4 fragmentation: offset in 8-byte units, more fragments.
    pub ipv4_fragment: Option<(u16, bool)>,
    /// IPv6 extension headers, in order.
    pub ipv6_extensions: Vec<Ext>,
}

impl Shape {
    /// Plain Ethernet + IP.
    #[must_use]
    pub fn plain() -> Self {
        Self::default()
    }

    #[must_use]
    pub fn vlan(tags: u8) -> Self {
        Self {
            vlan_tags: tags,
            ..Self::default()
        }
    }

    /// An IPv4 header with `words` 32-bit words of options (IHL 5 + `words`).
    #[must_use]
    pub fn ipv4_options(words: u8) -> Self {
        assert!(words <= 10, "IPv4 options hold at most 10 words");
        Self {
            ipv4_option_words: words,
            ..Self::default()
        }
    }

    /// Whether a packet of this shape (IPv6 or not) is a fragment, a first one included.
    #[must_use]
    pub fn fragments(&self, v6: bool) -> bool {
        if v6 {
            self.ipv6_extensions
                .iter()
                .any(|ext| matches!(ext, Ext::Fragment { .. }))
        } else {
            self.ipv4_fragment.is_some()
        }
    }

    #[must_use]
    pub fn ipv4_fragment(offset: u16, more: bool) -> Self {
        Self {
            ipv4_fragment: Some((offset, more)),
            ..Self::default()
        }
    }

    #[must_use]
    pub fn ipv6(extensions: &[Ext]) -> Self {
        Self {
            ipv6_extensions: extensions.to_vec(),
            ..Self::default()
        }
    }

    /// A chain of `n` IPv6 extension headers: the six etherparse can build, in RFC 8200
    /// order (hop-by-hop, destination options, routing, a first fragment, authentication,
    /// destination options), then destination options headers added by hand.
    #[must_use]
    pub fn ipv6_chain(n: usize) -> Self {
        let canonical = [
            Ext::HopByHop,
            Ext::DestinationOptions,
            Ext::Routing,
            Ext::Fragment {
                offset: 0,
                more: true,
            },
            Ext::Auth,
            Ext::DestinationOptions,
        ];
        let mut extensions: Vec<Ext> = canonical.iter().copied().take(n).collect();
        extensions.resize(n, Ext::DestinationOptions);
        Self::ipv6(&extensions)
    }

    /// Offset of the IP header in the frame.
    #[must_use]
    pub fn l3(&self) -> usize {
        ETHERNET_LEN + VLAN_TAG_LEN * usize::from(self.vlan_tags)
    }

    /// Length of the IP header (IPv4 options or IPv6 extension headers included).
    #[must_use]
    pub fn ip_len(&self, v6: bool) -> usize {
        if v6 {
            IPV6_LEN
                + self
                    .ipv6_extensions
                    .iter()
                    .map(|ext| ext.wire_len())
                    .sum::<usize>()
        } else {
            IPV4_LEN + 4 * usize::from(self.ipv4_option_words)
        }
    }

    /// Offset of the transport header in the frame.
    #[must_use]
    pub fn l4(&self, v6: bool) -> usize {
        self.l3() + self.ip_len(v6)
    }
}

/// The transport header of a frame.
#[derive(Clone, Debug)]
pub enum Transport {
    Tcp(TcpHeader),
    Udp {
        source: u16,
        destination: u16,
    },
    /// ICMP for IPv4 addresses, `ICMPv6` for IPv6 ones: type, code, and bytes 5 to 8.
    Icmp {
        kind: u8,
        code: u8,
        rest: [u8; 4],
    },
}

/// An Ethernet frame from `source` to `destination` (one family) shaped by `shape`.
///
/// # Panics
/// On mixed address families or a shape etherparse refuses.
#[must_use]
pub fn frame(
    source: IpAddr,
    destination: IpAddr,
    shape: &Shape,
    transport: Transport,
    payload: &[u8],
) -> Vec<u8> {
    let from_host = source == local(source.is_ipv6());
    let (source_mac, destination_mac) = if from_host {
        (HOST_MAC, GATEWAY_MAC)
    } else {
        (GATEWAY_MAC, HOST_MAC)
    };
    let (ip, extra_extensions) = ip_headers(source, destination, shape);
    let ethernet = PacketBuilder::ethernet2(source_mac, destination_mac);
    let builder = match shape.vlan_tags {
        0 => ethernet.ip(ip),
        1 => ethernet.vlan(VlanHeader::Single(vlan_tag(100))).ip(ip),
        _ => ethernet
            .vlan(VlanHeader::Double(DoubleVlanHeader {
                outer: vlan_tag(10),
                inner: vlan_tag(100),
            }))
            .ip(ip),
    };
    let mut out = Vec::new();
    let written = match transport {
        Transport::Tcp(header) => builder.tcp_header(header).write(&mut out, payload),
        Transport::Udp {
            source,
            destination,
        } => builder.udp(source, destination).write(&mut out, payload),
        Transport::Icmp { kind, code, rest } if source.is_ipv6() => builder
            .icmpv6_raw(kind, code, rest)
            .write(&mut out, payload),
        Transport::Icmp { kind, code, rest } => builder
            .icmpv4_raw(kind, code, rest)
            .write(&mut out, payload),
    };
    written.expect("etherparse builds the frame");
    // Tags past QinQ: 802.1Q tags inserted after the outer (802.1ad) tag's TCI, each
    // pointing on to the next 802.1Q tag.
    for extra in 2..shape.vlan_tags {
        let at = ETHERNET_LEN + VLAN_TAG_LEN;
        out.splice(at..at, [0x00, 200 + extra, 0x81, 0x00]);
    }
    if !extra_extensions.is_empty() {
        append_ipv6_extensions(&mut out, shape.l3(), extra_extensions);
    }
    out
}

fn vlan_tag(id: u16) -> SingleVlanHeader {
    SingleVlanHeader {
        pcp: VlanPcp::ZERO,
        drop_eligible_indicator: false,
        vlan_id: VlanId::try_new(id).expect("a 12-bit VLAN id"),
        // Set by the builder.
        ether_type: EtherType(0),
    }
}

/// The IP headers of `shape`, and the IPv6 extension headers etherparse could not place
/// (added by hand after the ones it wrote).
fn ip_headers(source: IpAddr, destination: IpAddr, shape: &Shape) -> (IpHeaders, &[Ext]) {
    match (source, destination) {
        (IpAddr::V4(source), IpAddr::V4(destination)) => {
            let mut header =
                Ipv4Header::new(0, 64, ip_number::UDP, source.octets(), destination.octets())
                    .expect("an IPv4 header");
            header.identification = 0x4e57;
            if shape.ipv4_option_words > 0 {
                // NOPs, then end of options list.
                let mut options = vec![1u8; 4 * usize::from(shape.ipv4_option_words)];
                if let Some(last) = options.last_mut() {
                    *last = 0;
                }
                header.options =
                    Ipv4Options::try_from(options.as_slice()).expect("IPv4 options fit");
            }
            if let Some((offset, more)) = shape.ipv4_fragment {
                header.dont_fragment = false;
                header.more_fragments = more;
                header.fragment_offset = IpFragOffset::try_new(offset).expect("a 13-bit offset");
            }
            (IpHeaders::Ipv4(header, Ipv4Extensions::default()), &[])
        }
        (IpAddr::V6(source), IpAddr::V6(destination)) => {
            let header = Ipv6Header {
                hop_limit: 64,
                source: source.octets(),
                destination: destination.octets(),
                ..Ipv6Header::default()
            };
            let (extensions, extra) = ipv6_extensions(&shape.ipv6_extensions);
            (IpHeaders::Ipv6(header, extensions), extra)
        }
        _ => panic!("{source} and {destination} are of different families"),
    }
}

/// Places `list` into etherparse's extension slots (RFC 8200 order, each once); returns the
/// rest, from the first header that does not fit.
fn ipv6_extensions(list: &[Ext]) -> (Ipv6Extensions, &[Ext]) {
    // Slots in the order etherparse writes them (RFC 8200 section 4.1).
    const HOP_BY_HOP: usize = 0;
    const DESTINATION: usize = 1;
    const ROUTING: usize = 2;
    const FRAGMENT: usize = 3;
    const AUTH: usize = 4;
    const FINAL_DESTINATION: usize = 5;
    // The next-header values are set by the builder.
    let any = ip_number::UDP;
    let mut extensions = Ipv6Extensions::default();
    let mut next_slot = 0;
    for (index, ext) in list.iter().enumerate() {
        let slot = match ext {
            Ext::HopByHop => (next_slot == HOP_BY_HOP).then_some(HOP_BY_HOP),
            Ext::DestinationOptions if next_slot <= DESTINATION => Some(DESTINATION),
            // The second destination options header hangs off the routing header.
            Ext::DestinationOptions => (next_slot <= FINAL_DESTINATION
                && extensions.routing.is_some())
            .then_some(FINAL_DESTINATION),
            Ext::Routing => (next_slot <= ROUTING).then_some(ROUTING),
            Ext::Fragment { .. } => (next_slot <= FRAGMENT).then_some(FRAGMENT),
            Ext::Auth => (next_slot <= AUTH).then_some(AUTH),
        };
        let Some(slot) = slot else {
            return (extensions, &list[index..]);
        };
        let pad = || Ipv6RawExtHeader::new_raw(any, &Ext::PAD_N).expect("8-byte options header");
        match *ext {
            Ext::HopByHop => extensions.hop_by_hop_options = Some(pad()),
            Ext::DestinationOptions if slot == DESTINATION => {
                extensions.destination_options = Some(pad());
            }
            Ext::DestinationOptions => {
                if let Some(routing) = extensions.routing.as_mut() {
                    routing.final_destination_options = Some(pad());
                }
            }
            Ext::Routing => {
                extensions.routing = Some(Ipv6RoutingExtensions {
                    routing: Ipv6RawExtHeader::new_raw(any, &Ext::ROUTING)
                        .expect("8-byte routing header"),
                    final_destination_options: None,
                });
            }
            Ext::Fragment { offset, more } => {
                extensions.fragment = Some(Ipv6FragmentHeader::new(
                    any,
                    IpFragOffset::try_new(offset).expect("a 13-bit offset"),
                    more,
                    Ext::FRAGMENT_ID,
                ));
            }
            Ext::Auth => {
                extensions.auth = Some(
                    IpAuthHeader::new(any, Ext::AUTH_SPI, 1, &Ext::AUTH_ICV).expect("96-bit ICV"),
                );
            }
        }
        next_slot = slot + 1;
    }
    (extensions, &[])
}

/// Appends `extra` extension headers (by hand) to the end of the IPv6 chain of `frame`,
/// whose IPv6 header is at `l3`: the last next-header field now points at the first of them,
/// the last of them at the transport header, and the payload length grows. Transport
/// checksums stay valid: the pseudo-header does not cover extension headers.
fn append_ipv6_extensions(frame: &mut Vec<u8>, l3: usize, extra: &[Ext]) {
    let mut next_at = l3 + 6;
    let mut at = l3 + IPV6_LEN;
    loop {
        let length = match frame[next_at] {
            0 | 43 | 60 => (usize::from(frame[at + 1]) + 1) * 8,
            44 => 8,
            51 => (usize::from(frame[at + 1]) + 2) * 4,
            _ => break,
        };
        next_at = at;
        at += length;
    }
    let transport = frame[next_at];
    let mut bytes = Vec::new();
    for (index, ext) in extra.iter().enumerate() {
        let next = extra
            .get(index + 1)
            .map_or(transport, |following| following.number());
        bytes.extend(ext.bytes(next));
    }
    frame[next_at] = extra[0].number();
    let payload_len = u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]])
        + u16::try_from(bytes.len()).expect("a short chain");
    frame[l3 + 4..l3 + 6].copy_from_slice(&payload_len.to_be_bytes());
    frame.splice(at..at, bytes);
}

/// The IP packet inside an Ethernet frame (after any VLAN tags): what an ICMP error quotes.
#[must_use]
pub fn ip_packet(frame: &[u8]) -> &[u8] {
    let mut at = 12;
    while matches!(
        u16::from_be_bytes([frame[at], frame[at + 1]]),
        0x8100 | 0x88a8
    ) {
        at += VLAN_TAG_LEN;
    }
    &frame[at + 2..]
}

/// A DNS question section: `qname` as labels, then QTYPE (A) and QCLASS (IN).
#[must_use]
pub fn dns_question(qname: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in qname.split('.') {
        out.push(u8::try_from(label.len()).expect("a label under 64 bytes"));
        out.extend(label.as_bytes());
    }
    out.push(0);
    out.extend([0, 1, 0, 1]);
    out
}

/// A DNS message: a query (QR 0, RD) or a response (QR 1, RD RA, one A record) for `qname`.
#[must_use]
pub fn dns_message(id: u16, response: bool, qname: &str) -> Vec<u8> {
    let flags: u16 = if response { 0x8180 } else { 0x0100 };
    let answers: u16 = u16::from(response);
    let mut out = Vec::new();
    out.extend(id.to_be_bytes());
    out.extend(flags.to_be_bytes());
    out.extend(1u16.to_be_bytes());
    out.extend(answers.to_be_bytes());
    out.extend([0, 0, 0, 0]);
    out.extend(dns_question(qname));
    if response {
        // Name: pointer to the question; A IN, TTL 300, 192.0.2.1.
        out.extend([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0x01, 0x2c, 0, 4, 192, 0, 2, 1]);
    }
    out
}

/// A UDP DNS query from this host's `local_port` to the remote's port 53.
#[must_use]
pub fn dns_query(v6: bool, local_port: u16, id: u16, qname: &'static str) -> Vec<u8> {
    Flow::dns(v6, local_port, id).with_qname(qname).request()
}

/// A UDP DNS response from the remote's `remote_port` to this host's `local_port`.
#[must_use]
pub fn dns_response(
    v6: bool,
    remote_port: u16,
    local_port: u16,
    id: u16,
    qname: &'static str,
) -> Vec<u8> {
    Flow::dns(v6, local_port, id)
        .with_remote_port(remote_port)
        .with_qname(qname)
        .answer()
}

/// A TCP SYN from this host.
#[must_use]
pub fn syn(v6: bool, local_port: u16, remote_port: u16, seq: u32) -> Vec<u8> {
    Flow::tcp(v6, local_port, remote_port, seq).request()
}

/// Flags of a TCP segment from the remote ([`Flow::segment_in`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpFlags {
    pub syn: bool,
    pub rst: bool,
    /// The ACK flag with this acknowledgement number.
    pub ack: Option<u32>,
}

/// A SYN-ACK from the remote acknowledging `ack`.
#[must_use]
pub fn syn_ack(v6: bool, remote_port: u16, local_port: u16, ack: u32) -> Vec<u8> {
    let flags = TcpFlags {
        syn: true,
        rst: false,
        ack: Some(ack),
    };
    Flow::tcp(v6, local_port, remote_port, 0).segment_in(flags, &Shape::plain())
}

/// A RST from the remote, with the ACK flag and `ack` when given.
#[must_use]
pub fn rst(v6: bool, remote_port: u16, local_port: u16, ack: Option<u32>) -> Vec<u8> {
    let flags = TcpFlags {
        syn: false,
        rst: true,
        ack,
    };
    Flow::tcp(v6, local_port, remote_port, 0).segment_in(flags, &Shape::plain())
}

/// An ICMP echo request (or `ICMPv6`, type 128) from this host.
#[must_use]
pub fn echo_request(v6: bool, id: u16, seq: u16) -> Vec<u8> {
    Flow::echo(v6, id, seq).request()
}

/// An ICMP echo reply (or `ICMPv6`, type 129) from the remote.
#[must_use]
pub fn echo_reply(v6: bool, id: u16, seq: u16) -> Vec<u8> {
    Flow::echo(v6, id, seq).answer()
}

/// An ICMP destination unreachable with `code` from the router, quoting `quoted` (an IP
/// packet this host sent).
#[must_use]
pub fn icmp_unreachable(code: u8, quoted: &[u8]) -> Vec<u8> {
    unreachable(false, code, quoted, &Shape::plain())
}

/// An `ICMPv6` destination unreachable with `code` from the router, quoting `quoted`.
#[must_use]
pub fn icmp6_unreachable(code: u8, quoted: &[u8]) -> Vec<u8> {
    unreachable(true, code, quoted, &Shape::plain())
}

/// A destination unreachable of the family `v6`, itself shaped by `shape`.
#[must_use]
pub fn unreachable(v6: bool, code: u8, quoted: &[u8], shape: &Shape) -> Vec<u8> {
    let kind = if v6 {
        ICMPV6_DEST_UNREACHABLE
    } else {
        ICMP_DEST_UNREACHABLE
    };
    frame(
        router(v6),
        local(v6),
        shape,
        Transport::Icmp {
            kind,
            code,
            rest: [0; 4],
        },
        quoted,
    )
}

/// What kind of request a [`Flow`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A DNS query over UDP and its response.
    Dns,
    /// A TCP SYN and its SYN-ACK.
    Tcp,
    /// An ICMP (or `ICMPv6`) echo request and its reply.
    Echo,
    /// An NTP client request (mode 3) to port 123 and the server's answer (mode 4). Not in
    /// [`Kind::ALL`]: the UDP service tests take it on their own.
    Ntp,
    /// A datagram to a `--udp-port` service and any datagram back. Not in [`Kind::ALL`].
    Udp,
}

impl Kind {
    pub const ALL: [Self; 3] = [Self::Dns, Self::Tcp, Self::Echo];
}

/// One request netwatch tracks, and the packets that can come back for it.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub kind: Kind,
    pub v6: bool,
    pub local: IpAddr,
    pub remote: IpAddr,
    /// Local port (DNS, TCP) or echo identifier.
    pub local_port: u16,
    /// Remote port: 53 for DNS, 0 for echo.
    pub remote_port: u16,
    /// DNS transaction id or echo sequence number; 0 for TCP.
    pub tag: u16,
    /// TCP: the SYN's sequence number.
    pub seq: u32,
    /// DNS: the name asked about.
    pub qname: &'static str,
    /// NTP: the request's transmit timestamp (the answer's origin timestamp).
    pub transmit: u64,
}

impl Flow {
    fn new(kind: Kind, v6: bool) -> Self {
        Self {
            kind,
            v6,
            local: local(v6),
            remote: remote(v6),
            local_port: 0,
            remote_port: 0,
            tag: 0,
            seq: 0,
            qname: QNAME,
            transmit: 0,
        }
    }

    /// A DNS query from `local_port` with transaction id `id`.
    #[must_use]
    pub fn dns(v6: bool, local_port: u16, id: u16) -> Self {
        Self {
            local_port,
            remote_port: DNS_PORT,
            tag: id,
            ..Self::new(Kind::Dns, v6)
        }
    }

    /// A TCP connection attempt whose SYN carries `seq`.
    #[must_use]
    pub fn tcp(v6: bool, local_port: u16, remote_port: u16, seq: u32) -> Self {
        Self {
            local_port,
            remote_port,
            seq,
            ..Self::new(Kind::Tcp, v6)
        }
    }

    /// An echo request with identifier `id` and sequence `seq`.
    #[must_use]
    pub fn echo(v6: bool, id: u16, seq: u16) -> Self {
        Self {
            local_port: id,
            tag: seq,
            ..Self::new(Kind::Echo, v6)
        }
    }

    /// An NTP client request from `local_port` to port 123 with transmit timestamp
    /// `transmit`: its tag is the timestamp folded, as the kernel folds it.
    #[must_use]
    pub fn ntp(v6: bool, local_port: u16, transmit: u64) -> Self {
        Self {
            local_port,
            remote_port: NTP_PORT,
            tag: ntp_tag(transmit.to_be_bytes()),
            transmit,
            ..Self::new(Kind::Ntp, v6)
        }
    }

    /// A datagram from `local_port` to a `--udp-port` service on `remote_port`.
    #[must_use]
    pub fn udp(v6: bool, local_port: u16, remote_port: u16) -> Self {
        Self {
            local_port,
            remote_port,
            ..Self::new(Kind::Udp, v6)
        }
    }

    /// A flow of `kind` numbered `n`: distinct `n` give distinct keys (and, for TCP,
    /// distinct sequence numbers).
    #[must_use]
    pub fn numbered(kind: Kind, v6: bool, n: u16) -> Self {
        match kind {
            Kind::Dns => Self::dns(v6, 30_000 + n, 0x1000 + n),
            Kind::Tcp => Self::tcp(v6, 40_000 + n, 443, 0x1000_0000 + u32::from(n) * 0x0101),
            Kind::Echo => Self::echo(v6, 0x0e00 + n, n + 1),
            Kind::Ntp => Self::ntp(
                v6,
                33_000 + n,
                0xe95e_d000_0000_1000 + u64::from(n) * 0x0101,
            ),
            Kind::Udp => Self::udp(v6, 34_000 + n, UDP_SERVICE_PORT),
        }
    }

    #[must_use]
    pub const fn with_local(self, local: IpAddr) -> Self {
        Self { local, ..self }
    }

    #[must_use]
    pub const fn with_remote(self, remote: IpAddr) -> Self {
        Self { remote, ..self }
    }

    #[must_use]
    pub const fn with_local_port(self, local_port: u16) -> Self {
        Self { local_port, ..self }
    }

    #[must_use]
    pub const fn with_remote_port(self, remote_port: u16) -> Self {
        Self {
            remote_port,
            ..self
        }
    }

    #[must_use]
    pub const fn with_tag(self, tag: u16) -> Self {
        Self { tag, ..self }
    }

    #[must_use]
    pub const fn with_seq(self, seq: u32) -> Self {
        Self { seq, ..self }
    }

    #[must_use]
    pub const fn with_qname(self, qname: &'static str) -> Self {
        Self { qname, ..self }
    }

    /// The transport protocol number in the key.
    #[must_use]
    pub const fn proto(&self) -> u8 {
        match (self.kind, self.v6) {
            (Kind::Dns | Kind::Ntp | Kind::Udp, _) => proto::UDP,
            (Kind::Tcp, _) => proto::TCP,
            (Kind::Echo, false) => proto::ICMP,
            (Kind::Echo, true) => proto::ICMPV6,
        }
    }

    /// The pending-table key the kernel should record.
    #[must_use]
    pub fn key(&self) -> RequestKey {
        RequestKey {
            remote: ip_to_key(self.remote),
            local: ip_to_key(self.local),
            remote_port: self.remote_port,
            local_port: self.local_port,
            tag: self.tag,
            proto: self.proto(),
            direction: netwatch_common::DIRECTION_EGRESS,
        }
    }

    /// The target the request counts towards.
    #[must_use]
    pub fn target(&self) -> TargetKey {
        self.key().target()
    }

    /// The question bytes the kernel should capture from the query (DNS), else none.
    #[must_use]
    pub fn question(&self) -> Vec<u8> {
        match self.kind {
            Kind::Dns => {
                let mut question = dns_question(self.qname);
                question.truncate(DNS_QUESTION_CAPTURE);
                question
            }
            // The whole transmit timestamp is kept with the request.
            Kind::Ntp => self.transmit.to_be_bytes().to_vec(),
            Kind::Tcp | Kind::Echo | Kind::Udp => Vec::new(),
        }
    }

    /// A short description for messages.
    #[must_use]
    pub fn describe(&self) -> String {
        let what = match self.kind {
            Kind::Dns => format!("DNS id {}", self.tag),
            Kind::Tcp => format!("TCP seq {}", self.seq),
            Kind::Echo => format!("echo id {} seq {}", self.local_port, self.tag),
            Kind::Ntp => format!("NTP transmit {:#x}", self.transmit),
            Kind::Udp => "UDP datagram".to_owned(),
        };
        format!(
            "{what} {}:{} -> {}:{} ({})",
            self.local,
            self.local_port,
            self.remote,
            self.remote_port,
            family(self.v6)
        )
    }

    /// The request, as this host sends it.
    #[must_use]
    pub fn request(&self) -> Vec<u8> {
        self.request_in(&Shape::plain())
    }

    /// The request inside the headers of `shape`.
    #[must_use]
    pub fn request_in(&self, shape: &Shape) -> Vec<u8> {
        match self.kind {
            Kind::Dns => self.dns_out(false, shape),
            Kind::Tcp => {
                let mut header =
                    TcpHeader::new(self.local_port, self.remote_port, self.seq, 64_240);
                header.syn = true;
                frame(self.local, self.remote, shape, Transport::Tcp(header), &[])
            }
            Kind::Echo => self.echo_out(shape),
            Kind::Ntp => self.udp_out(&ntp_message(NTP_MODE_CLIENT, 0, self.transmit), shape),
            Kind::Udp => self.udp_out(UDP_REQUEST_PAYLOAD, shape),
        }
    }

    /// The answer, as the remote sends it: the DNS response, the SYN-ACK (acknowledging
    /// seq + 1) or the echo reply.
    #[must_use]
    pub fn answer(&self) -> Vec<u8> {
        self.answer_in(&Shape::plain())
    }

    /// The answer inside the headers of `shape`.
    #[must_use]
    pub fn answer_in(&self, shape: &Shape) -> Vec<u8> {
        match self.kind {
            Kind::Dns => self.dns_in(true, shape),
            Kind::Tcp => self.segment_in(
                TcpFlags {
                    syn: true,
                    rst: false,
                    ack: Some(self.seq.wrapping_add(1)),
                },
                shape,
            ),
            Kind::Echo => self.echo_in(shape),
            Kind::Ntp => self.udp_in(&self.ntp_answer_message(), shape),
            Kind::Udp => self.udp_in(UDP_ANSWER_PAYLOAD, shape),
        }
    }

    /// The NTP server's answer message: mode 4, origin = the request's transmit timestamp.
    #[must_use]
    pub fn ntp_answer_message(&self) -> Vec<u8> {
        ntp_message(NTP_MODE_SERVER, self.transmit, SERVER_TRANSMIT)
    }

    /// A UDP datagram from this host's local port to the remote's port carrying `payload`.
    #[must_use]
    pub fn udp_out(&self, payload: &[u8], shape: &Shape) -> Vec<u8> {
        let transport = Transport::Udp {
            source: self.local_port,
            destination: self.remote_port,
        };
        frame(self.local, self.remote, shape, transport, payload)
    }

    /// A UDP datagram from the remote's port to this host's local port carrying `payload`.
    #[must_use]
    pub fn udp_in(&self, payload: &[u8], shape: &Shape) -> Vec<u8> {
        let transport = Transport::Udp {
            source: self.remote_port,
            destination: self.local_port,
        };
        frame(self.remote, self.local, shape, transport, payload)
    }

    /// A TCP segment from the remote's port to the local port with `flags`.
    #[must_use]
    pub fn segment_in(&self, flags: TcpFlags, shape: &Shape) -> Vec<u8> {
        let mut header = TcpHeader::new(self.remote_port, self.local_port, 0x0bad_cafe, 64_240);
        header.syn = flags.syn;
        header.rst = flags.rst;
        if let Some(ack) = flags.ack {
            header.ack = true;
            header.acknowledgment_number = ack;
        }
        frame(self.remote, self.local, shape, Transport::Tcp(header), &[])
    }

    /// The RST+ACK (acknowledging seq + 1) the remote sends to refuse the connection.
    #[must_use]
    pub fn rst(&self) -> Vec<u8> {
        self.segment_in(
            TcpFlags {
                syn: false,
                rst: true,
                ack: Some(self.seq.wrapping_add(1)),
            },
            &Shape::plain(),
        )
    }

    /// A DNS message from this host's local port to the remote's port (QR as `response`).
    #[must_use]
    pub fn dns_out(&self, response: bool, shape: &Shape) -> Vec<u8> {
        let transport = Transport::Udp {
            source: self.local_port,
            destination: self.remote_port,
        };
        frame(
            self.local,
            self.remote,
            shape,
            transport,
            &dns_message(self.tag, response, self.qname),
        )
    }

    /// A DNS message from the remote's port to this host's local port (QR as `response`).
    #[must_use]
    pub fn dns_in(&self, response: bool, shape: &Shape) -> Vec<u8> {
        let transport = Transport::Udp {
            source: self.remote_port,
            destination: self.local_port,
        };
        frame(
            self.remote,
            self.local,
            shape,
            transport,
            &dns_message(self.tag, response, self.qname),
        )
    }

    fn echo_out(&self, shape: &Shape) -> Vec<u8> {
        let kind = if self.v6 {
            ICMPV6_ECHO_REQUEST
        } else {
            ICMP_ECHO_REQUEST
        };
        let rest = self.echo_rest();
        frame(
            self.local,
            self.remote,
            shape,
            Transport::Icmp {
                kind,
                code: 0,
                rest,
            },
            ECHO_PAYLOAD,
        )
    }

    fn echo_in(&self, shape: &Shape) -> Vec<u8> {
        let kind = if self.v6 {
            ICMPV6_ECHO_REPLY
        } else {
            ICMP_ECHO_REPLY
        };
        let rest = self.echo_rest();
        frame(
            self.remote,
            self.local,
            shape,
            Transport::Icmp {
                kind,
                code: 0,
                rest,
            },
            ECHO_PAYLOAD,
        )
    }

    fn echo_rest(&self) -> [u8; 4] {
        let [id_hi, id_lo] = self.local_port.to_be_bytes();
        let [seq_hi, seq_lo] = self.tag.to_be_bytes();
        [id_hi, id_lo, seq_hi, seq_lo]
    }

    /// The request's IP packet, as an ICMP error quotes it (whole: Linux and RFC 1812
    /// routers quote as much as fits).
    #[must_use]
    pub fn quote(&self) -> Vec<u8> {
        ip_packet(&self.request()).to_vec()
    }

    /// A destination unreachable (ICMP or `ICMPv6` after the flow's family) with `code`,
    /// quoting the whole request.
    #[must_use]
    pub fn unreachable(&self, code: u8) -> Vec<u8> {
        unreachable(self.v6, code, &self.quote(), &Shape::plain())
    }

    /// Offset of the transport header of the request (plain shape).
    #[must_use]
    pub fn l4(&self) -> usize {
        Shape::plain().l4(self.v6)
    }

    /// Bytes of the request's transport header (and DNS header) that identify it: the
    /// request is only recognisable once this much of it is there.
    #[must_use]
    pub const fn identifying_len(&self) -> usize {
        match self.kind {
            // DNS id and the flags byte with QR.
            Kind::Dns => UDP_LEN + 3,
            // Ports, sequence number, and the flags byte.
            Kind::Tcp => 14,
            // Type, code, checksum, identifier, sequence.
            Kind::Echo => ICMP_LEN,
            // The whole 48-byte message (the transmit timestamp ends it).
            Kind::Ntp => UDP_LEN + NTP_LEN,
            // The ports.
            Kind::Udp => 4,
        }
    }

    /// Bytes of the request's transport header an ICMP error must quote to identify it.
    #[must_use]
    pub const fn quoted_len(&self) -> usize {
        match self.kind {
            // UDP header and the DNS id.
            Kind::Dns => UDP_LEN + 2,
            // Ports and sequence number.
            Kind::Tcp => 8,
            Kind::Echo => ICMP_LEN,
            Kind::Ntp => UDP_LEN + NTP_LEN,
            Kind::Udp => 4,
        }
    }
}

/// The `--udp-port` service port the [`Kind::Udp`] flows go to (the one `WireGuard` uses).
pub const UDP_SERVICE_PORT: u16 = 51_820;
/// Payloads of a [`Kind::Udp`] request and answer.
pub const UDP_REQUEST_PAYLOAD: &[u8] = b"netwatch-udp-request";
pub const UDP_ANSWER_PAYLOAD: &[u8] = b"netwatch-udp-answer";
/// NTP modes: client request, server answer; and symmetric active (not an exchange).
pub const NTP_MODE_CLIENT: u8 = 3;
pub const NTP_MODE_SERVER: u8 = 4;
pub const NTP_MODE_SYMMETRIC: u8 = 1;
/// The transmit timestamp of every server answer.
const SERVER_TRANSMIT: u64 = 0xe95e_d0ff_8000_0000;

/// A 48-byte NTP message (RFC 5905 §7.3): version 4 and `mode`, stratum 2 for a server, the
/// origin and transmit timestamps given.
#[must_use]
pub fn ntp_message(mode: u8, origin: u64, transmit: u64) -> Vec<u8> {
    let mut out = vec![0u8; NTP_LEN];
    out[0] = (4 << 3) | (mode & 0x07);
    if mode == NTP_MODE_SERVER {
        out[1] = 2;
    }
    out[2] = 6; // poll 64 s
    out[3] = 0xec; // precision 2^-20 s
    out[NTP_ORIGIN_OFFSET..NTP_ORIGIN_OFFSET + 8].copy_from_slice(&origin.to_be_bytes());
    out[NTP_TRANSMIT_OFFSET..NTP_TRANSMIT_OFFSET + 8].copy_from_slice(&transmit.to_be_bytes());
    out
}

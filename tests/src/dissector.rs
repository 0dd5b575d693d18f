//! An independent account of "what is a request, an answer, a rejection, a retransmit",
//! computed from tshark's dissection of a capture, to check netwatch's counts against.
//!
//! The rules are the protocols', written from the RFCs rather than from netwatch's code:
//!
//! - **TCP** (RFC 9293): a segment with SYN and without ACK opens a connection: a request.
//!   A SYN with the same initial sequence number on the same 4-tuple is its retransmission
//!   (§3.8.1); a new ISN is a new connection (§3.4.1). In SYN-SENT an ACK is acceptable when
//!   ISN < SEG.ACK =< SND.NXT, and SND.NXT counts the SYN and any data it carried (§3.10.7.3;
//!   RFC 7413 §3 for data in the SYN): a SYN-ACK with an acceptable ACK answers; a RST with an
//!   acceptable ACK refuses (`tcp-reset`); anything else is not about the request.
//! - **DNS over UDP** (RFC 1035 §4.1.1, RFC 5452 §9.1): a message to port 53 with QR clear
//!   is a query; a response matches it by addresses, ports, id *and* question. The same id
//!   and question again, before an answer, is a retransmission; another question on the
//!   same (port, id) is a new query.
//! - **ICMP / `ICMPv6` echo** (RFC 792, RFC 4443 §4): each (identifier, sequence) is one
//!   request; an echo reply from the remote with both answers it.
//! - **Rejections** (RFC 792, RFC 4443 §3.1, RFC 1812 §5.2.7.1): a destination unreachable
//!   error quoting the request (for TCP: the quoted sequence number is the ISN, RFC 5927
//!   §4.1) refuses it; the reason is its code, named as iptables' `--reject-with` names it.
//!   "Fragmentation needed" (ICMP type 3 code 4, RFC 1191) is path-MTU discovery, and
//!   "packet too big" is another `ICMPv6` type altogether (RFC 8201): not rejections.
//! - **Not requests**: anything to a broadcast or multicast destination (the destination
//!   MAC's group bit, RFC 894/1112; IPv4 224.0.0.0/4 and broadcast; IPv6 `ff00::/8`).
//!
//! Each request is resolved by its first answer or rejection within `timeout` of its first
//! transmission; a request with neither is `unanswered`, and the first answer or rejection
//! after that is `late`. A target is (proto, remote, remote port); its verdict follows the
//! README's table and issue 9's contract (see [`Counts::verdict`]). That rule is the one
//! netwatch's `verdict.rs` implements, shared by definition rather than derived anew: only
//! the counts here are independent of netwatch.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

/// The tshark fields [`Packet::parse`] reads, in this order.
pub const FIELDS: &[&str] = &[
    "frame.time_epoch",
    "eth.dst.ig",
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "ipv6.dst",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.seq",
    "tcp.ack",
    "tcp.flags",
    "tcp.len",
    "udp.srcport",
    "udp.dstport",
    "dns.id",
    "dns.flags.response",
    "dns.qry.name",
    "dns.qry.type",
    "icmp.type",
    "icmp.code",
    "icmp.ident",
    "icmp.seq",
    "icmpv6.type",
    "icmpv6.code",
    "icmpv6.echo.identifier",
    "icmpv6.echo.sequence_number",
];

const TCP_FIN: u16 = 0x01;
const TCP_SYN: u16 = 0x02;
const TCP_RST: u16 = 0x04;
const TCP_ACK: u16 = 0x10;

/// A DNS message's header fields and first question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dns {
    pub id: u16,
    pub response: bool,
    /// (name, type) of the question; `None` when the packet shows none.
    pub question: Option<(String, u16)>,
}

/// What a packet (or the packet quoted in an ICMP error) carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        src_port: u16,
        dst_port: u16,
        seq: u32,
        ack: u32,
        flags: u16,
        len: u32,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
        dns: Option<Dns>,
    },
    Echo {
        request: bool,
        ident: u16,
        seq: u16,
    },
    /// Destination unreachable, quoting `quoted` (sent from `quoted_src` to `quoted_dst`).
    Unreachable {
        v6: bool,
        code: u8,
        quoted_src: IpAddr,
        quoted_dst: IpAddr,
        quoted: Box<Transport>,
    },
    Other,
}

/// One captured packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub time_ns: u64,
    /// The destination MAC's group bit: broadcast or multicast.
    pub group: bool,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub transport: Transport,
}

fn number(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

fn flag(text: &str) -> bool {
    matches!(text, "1" | "True" | "true")
}

/// `frame.time_epoch` (seconds with a fraction) in nanoseconds, without float rounding.
fn epoch_ns(text: &str) -> Option<u64> {
    let (secs, fraction) = text.split_once('.').unwrap_or((text, ""));
    let mut digits: String = fraction.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    Some(secs.parse::<u64>().ok()? * 1_000_000_000 + digits.parse::<u64>().ok()?)
}

impl Packet {
    /// A packet from one row of `tshark -T fields -E occurrence=a` with [`FIELDS`]; `None`
    /// for packets without an IP header (ARP).
    #[must_use]
    #[expect(
        clippy::too_many_lines,
        reason = "one reading of tshark's fields, outer and quoted"
    )]
    pub fn parse(row: &[Vec<String>]) -> Option<Self> {
        let field = |name: &str| -> &[String] {
            let at = FIELDS
                .iter()
                .position(|f| *f == name)
                .expect("a field of FIELDS");
            row.get(at).map_or(&[], Vec::as_slice)
        };
        let nth = |name: &str, n: usize| field(name).get(n).and_then(|v| number(v));
        let (v6, srcs, dsts) = if field("ip.src").is_empty() {
            (true, field("ipv6.src"), field("ipv6.dst"))
        } else {
            (false, field("ip.src"), field("ip.dst"))
        };
        let address = |list: &[String], n: usize| list.get(n).and_then(|a| a.parse().ok());
        let (src, dst) = (address(srcs, 0)?, address(dsts, 0)?);
        let tcp = || -> Option<Transport> {
            Some(Transport::Tcp {
                src_port: u16::try_from(nth("tcp.srcport", 0)?).ok()?,
                dst_port: u16::try_from(nth("tcp.dstport", 0)?).ok()?,
                seq: u32::try_from(nth("tcp.seq", 0)?).ok()?,
                ack: nth("tcp.ack", 0)
                    .and_then(|a| u32::try_from(a).ok())
                    .unwrap_or(0),
                flags: u16::try_from(nth("tcp.flags", 0)?).ok()?,
                len: nth("tcp.len", 0)
                    .and_then(|l| u32::try_from(l).ok())
                    .unwrap_or(0),
            })
        };
        let udp = || -> Option<Transport> {
            let dns = nth("dns.id", 0).map(|id| Dns {
                id: u16::try_from(id).unwrap_or_default(),
                response: field("dns.flags.response").first().is_some_and(|r| flag(r)),
                question: field("dns.qry.name").first().map(|name| {
                    (
                        name.clone(),
                        nth("dns.qry.type", 0)
                            .and_then(|t| u16::try_from(t).ok())
                            .unwrap_or_default(),
                    )
                }),
            });
            Some(Transport::Udp {
                src_port: u16::try_from(nth("udp.srcport", 0)?).ok()?,
                dst_port: u16::try_from(nth("udp.dstport", 0)?).ok()?,
                dns,
            })
        };
        let (icmp_type, icmp_code, ident, seq, echo_request, echo_reply, unreachable) = if v6 {
            (
                "icmpv6.type",
                "icmpv6.code",
                "icmpv6.echo.identifier",
                "icmpv6.echo.sequence_number",
                128,
                129,
                1,
            )
        } else {
            ("icmp.type", "icmp.code", "icmp.ident", "icmp.seq", 8, 0, 3)
        };
        let echo = |request: bool| -> Option<Transport> {
            Some(Transport::Echo {
                request,
                ident: u16::try_from(nth(ident, 0)?).ok()?,
                seq: u16::try_from(nth(seq, 0)?).ok()?,
            })
        };
        let transport = match nth(icmp_type, 0) {
            Some(t) if t == echo_request => echo(true)?,
            Some(t) if t == echo_reply => echo(false)?,
            Some(t) if t == unreachable => {
                // Inside the error, the quoted packet's fields are the only TCP/UDP ones, and
                // its addresses and ICMP type come second.
                let quoted = if !field("tcp.srcport").is_empty() {
                    tcp()
                } else if !field("udp.srcport").is_empty() {
                    udp()
                } else if nth(icmp_type, 1) == Some(echo_request) {
                    echo(true)
                } else {
                    None
                };
                match (quoted, address(srcs, 1), address(dsts, 1)) {
                    (Some(quoted), Some(quoted_src), Some(quoted_dst)) => Transport::Unreachable {
                        v6,
                        code: u8::try_from(nth(icmp_code, 0)?).ok()?,
                        quoted_src,
                        quoted_dst,
                        quoted: Box::new(quoted),
                    },
                    _ => Transport::Other,
                }
            }
            None if !field("tcp.srcport").is_empty() => tcp()?,
            None if !field("udp.srcport").is_empty() => udp()?,
            Some(_) | None => Transport::Other,
        };
        Some(Self {
            time_ns: epoch_ns(field("frame.time_epoch").first()?)?,
            group: field("eth.dst.ig").first().is_some_and(|g| flag(g)),
            src,
            dst,
            transport,
        })
    }
}

/// A target as netwatch's records name it: (proto, remote, port).
pub type Target = (String, String, Option<u64>);

/// One target's counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub answered: u64,
    pub rejected: u64,
    pub unanswered: u64,
    pub retransmits: u64,
    /// Answers and rejections that came after the timeout (to requests counted unanswered).
    pub late: u64,
    /// Of `late`, the answers.
    pub late_answers: u64,
    /// Still within the timeout when the capture ended.
    pub in_flight: u64,
    /// Rejections by reason, in time or late.
    pub reasons: BTreeMap<&'static str, u64>,
}

impl Counts {
    /// The verdict and its reason, by the README's table and issue 9's contract:
    ///
    /// - an answer after the timeout means the remote is slow, not that anything dropped the
    ///   request: such a target is `degraded`, never `blackholed` (reason: the most frequent
    ///   rejection if there were any, else `late`);
    /// - a rejection after the timeout is still a rejection (the firewall refused, late
    ///   because, say, its earlier ICMP errors were rate-limited): for the verdict, its
    ///   request is rejected rather than unanswered.
    #[must_use]
    pub fn verdict(&self) -> (&'static str, Option<&'static str>) {
        let reason = self
            .reasons
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(reason, _)| *reason);
        if self.late_answers > 0 {
            return ("degraded", reason.or(Some("late")));
        }
        let late_rejections = self.late.saturating_sub(self.late_answers);
        let rejected = self.rejected + late_rejections;
        let unanswered = self.unanswered.saturating_sub(late_rejections);
        let verdict = match (self.answered > 0, unanswered > 0, rejected > 0) {
            (false, false, false) => "pending",
            (true, false, false) => "ok",
            (false, true, false) => "blackholed",
            (false, _, true) => "rejected",
            (true, _, _) => "degraded",
        };
        (verdict, reason)
    }
}

/// What identifies a request's exchange, from our side.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Exchange {
    Tcp {
        local: IpAddr,
        local_port: u16,
        remote: IpAddr,
        remote_port: u16,
    },
    Dns {
        local: IpAddr,
        local_port: u16,
        remote: IpAddr,
        id: u16,
    },
    Echo {
        remote: IpAddr,
        ident: u16,
        seq: u16,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Open,
    Answered,
    Rejected(&'static str),
}

#[derive(Clone, Debug)]
struct Request {
    target: Target,
    first_ns: u64,
    /// TCP: the ISN and the data length of the SYN. DNS: nothing.
    isn: u32,
    syn_len: u32,
    question: Option<(String, u16)>,
    state: State,
    /// The first outcome after the timeout.
    late: Option<Late>,
}

/// An outcome after the timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Late {
    Answer,
    Rejection(&'static str),
}

/// Names of ICMP destination-unreachable codes (iptables `--reject-with` spelling).
fn icmp_reason(code: u8) -> &'static str {
    match code {
        0 => "icmp-net-unreachable",
        1 => "icmp-host-unreachable",
        2 => "icmp-proto-unreachable",
        3 => "icmp-port-unreachable",
        9 => "icmp-net-prohibited",
        10 => "icmp-host-prohibited",
        13 => "icmp-admin-prohibited",
        _ => "icmp-other",
    }
}

/// Names of `ICMPv6` destination-unreachable codes (RFC 4443 §3.1).
fn icmp6_reason(code: u8) -> &'static str {
    match code {
        0 => "icmp6-no-route",
        1 => "icmp6-adm-prohibited",
        2 => "icmp6-beyond-scope",
        3 => "icmp6-addr-unreachable",
        4 => "icmp6-port-unreachable",
        5 => "icmp6-policy-fail",
        6 => "icmp6-reject-route",
        _ => "icmp6-other",
    }
}

fn is_group(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(a) => a.is_multicast() || a.is_broadcast() || a.octets()[3] == 255,
        IpAddr::V6(a) => a.is_multicast(),
    }
}

fn target(proto: &str, remote: IpAddr, port: Option<u16>) -> Target {
    (proto.to_owned(), remote.to_string(), port.map(u64::from))
}

/// The outcome of a capture: per-target counts, and how many would-be requests went to
/// broadcast or multicast destinations.
#[derive(Debug, Default)]
pub struct Account {
    pub targets: BTreeMap<Target, Counts>,
    pub not_unicast: u64,
}

/// Replays `packets` (in capture order) as seen from `local` addresses, with `timeout_ns`.
#[must_use]
pub fn account(packets: &[Packet], local: &[IpAddr], timeout_ns: u64) -> Account {
    let mut account = Account::default();
    // Every request ever made, and the requests of each exchange in the order they came.
    let mut requests: Vec<Request> = Vec::new();
    let mut latest: HashMap<Exchange, Vec<usize>> = HashMap::new();
    for packet in packets {
        if local.contains(&packet.src) {
            egress(packet, &mut account, &mut requests, &mut latest);
        } else if local.contains(&packet.dst) {
            ingress(packet, &mut requests, &latest, timeout_ns);
        }
    }
    let end_ns = packets.last().map_or(0, |p| p.time_ns);
    for request in &requests {
        let counts = account.targets.entry(request.target.clone()).or_default();
        counts.requests += 1;
        match request.state {
            State::Answered => counts.answered += 1,
            State::Rejected(reason) => {
                counts.rejected += 1;
                *counts.reasons.entry(reason).or_default() += 1;
            }
            State::Open if end_ns.saturating_sub(request.first_ns) > timeout_ns => {
                counts.unanswered += 1;
            }
            State::Open => counts.in_flight += 1,
        }
        if let Some(late) = request.late {
            counts.late += 1;
            match late {
                Late::Answer => counts.late_answers += 1,
                Late::Rejection(reason) => *counts.reasons.entry(reason).or_default() += 1,
            }
        }
    }
    account
}

fn egress(
    packet: &Packet,
    account: &mut Account,
    requests: &mut Vec<Request>,
    latest: &mut HashMap<Exchange, Vec<usize>>,
) {
    let (exchange, target, isn, syn_len, question) = match &packet.transport {
        Transport::Tcp {
            src_port,
            dst_port,
            seq,
            flags,
            len,
            ..
        } if flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN => (
            Exchange::Tcp {
                local: packet.src,
                local_port: *src_port,
                remote: packet.dst,
                remote_port: *dst_port,
            },
            target("tcp", packet.dst, Some(*dst_port)),
            *seq,
            *len,
            None,
        ),
        Transport::Udp {
            src_port,
            dst_port: 53,
            dns: Some(dns),
        } if !dns.response => (
            Exchange::Dns {
                local: packet.src,
                local_port: *src_port,
                remote: packet.dst,
                id: dns.id,
            },
            target("udp", packet.dst, Some(53)),
            0,
            0,
            dns.question.clone(),
        ),
        Transport::Echo {
            request: true,
            ident,
            seq,
        } => (
            Exchange::Echo {
                remote: packet.dst,
                ident: *ident,
                seq: *seq,
            },
            target(
                if packet.dst.is_ipv6() {
                    "icmpv6"
                } else {
                    "icmp"
                },
                packet.dst,
                None,
            ),
            0,
            0,
            None,
        ),
        _ => return,
    };
    if packet.group || is_group(packet.dst) {
        account.not_unicast += 1;
        return;
    }
    if let Some(&at) = latest.get(&exchange).and_then(|all| all.last()) {
        let previous = &requests[at];
        let same = match exchange {
            // Same ISN: the same connection attempt, whatever came back.
            Exchange::Tcp { .. } => previous.isn == isn,
            // Same question, not yet answered: the client asks again.
            Exchange::Dns { .. } => {
                previous.question == question && previous.state != State::Answered
            }
            Exchange::Echo { .. } => previous.state != State::Answered,
        };
        if same {
            account.targets.entry(target).or_default().retransmits += 1;
            return;
        }
    }
    latest.entry(exchange).or_default().push(requests.len());
    requests.push(Request {
        target,
        first_ns: packet.time_ns,
        isn,
        syn_len,
        question,
        state: State::Open,
        late: None,
    });
}

/// Whether `ack` acknowledges the SYN of `request`: ISN < ack <= ISN + 1 + data (mod 2^32).
fn acks_syn(request: &Request, ack: u32) -> bool {
    let advance = ack.wrapping_sub(request.isn);
    advance >= 1 && advance <= request.syn_len.saturating_add(1)
}

/// What a packet must show about a request of its exchange to be about it.
type Check = Box<dyn Fn(&Request) -> bool>;

#[expect(
    clippy::too_many_lines,
    reason = "one match over what can come back, each arm a protocol rule"
)]
fn ingress(
    packet: &Packet,
    requests: &mut [Request],
    latest: &HashMap<Exchange, Vec<usize>>,
    timeout_ns: u64,
) {
    // (exchange, whether it refuses and why, and a check on the matched request)
    let (exchange, refusal, check): (Exchange, Option<&'static str>, Check) =
        match &packet.transport {
            Transport::Tcp {
                src_port,
                dst_port,
                ack,
                flags,
                ..
            } => {
                let exchange = Exchange::Tcp {
                    local: packet.dst,
                    local_port: *dst_port,
                    remote: packet.src,
                    remote_port: *src_port,
                };
                let ack = *ack;
                let acked = flags & TCP_ACK != 0;
                if flags & TCP_RST != 0 && acked {
                    (
                        exchange,
                        Some("tcp-reset"),
                        Box::new(move |r| acks_syn(r, ack)),
                    )
                } else if flags & TCP_SYN != 0 && acked && flags & TCP_RST == 0 {
                    (exchange, None, Box::new(move |r| acks_syn(r, ack)))
                } else {
                    return;
                }
            }
            Transport::Udp {
                src_port: 53,
                dst_port,
                dns: Some(dns),
            } if dns.response => {
                let question = dns.question.clone();
                (
                    Exchange::Dns {
                        local: packet.dst,
                        local_port: *dst_port,
                        remote: packet.src,
                        id: dns.id,
                    },
                    None,
                    Box::new(move |r| question.is_none() || r.question == question),
                )
            }
            Transport::Echo {
                request: false,
                ident,
                seq,
            } => (
                Exchange::Echo {
                    remote: packet.src,
                    ident: *ident,
                    seq: *seq,
                },
                None,
                Box::new(|_| true),
            ),
            Transport::Unreachable {
                v6,
                code,
                quoted_src,
                quoted_dst,
                quoted,
            } => {
                if !*v6 && *code == 4 {
                    // Fragmentation needed: path MTU discovery, not a refusal.
                    return;
                }
                let reason = if *v6 {
                    icmp6_reason(*code)
                } else {
                    icmp_reason(*code)
                };
                match quoted.as_ref() {
                    Transport::Tcp {
                        src_port,
                        dst_port,
                        seq,
                        ..
                    } => {
                        let seq = *seq;
                        (
                            Exchange::Tcp {
                                local: *quoted_src,
                                local_port: *src_port,
                                remote: *quoted_dst,
                                remote_port: *dst_port,
                            },
                            Some(reason),
                            Box::new(move |r| r.isn == seq),
                        )
                    }
                    Transport::Udp {
                        src_port,
                        dst_port: 53,
                        dns: Some(dns),
                    } if !dns.response => {
                        let question = dns.question.clone();
                        (
                            Exchange::Dns {
                                local: *quoted_src,
                                local_port: *src_port,
                                remote: *quoted_dst,
                                id: dns.id,
                            },
                            Some(reason),
                            Box::new(move |r| question.is_none() || r.question == question),
                        )
                    }
                    Transport::Echo {
                        request: true,
                        ident,
                        seq,
                    } => (
                        Exchange::Echo {
                            remote: *quoted_dst,
                            ident: *ident,
                            seq: *seq,
                        },
                        Some(reason),
                        Box::new(|_| true),
                    ),
                    _ => return,
                }
            }
            _ => return,
        };
    // The most recent request of the exchange this packet is about (a DNS response names
    // its question: an older question on the same id may still be the one answered).
    let Some(&at) = latest
        .get(&exchange)
        .and_then(|all| all.iter().rev().find(|&&at| check(&requests[at])))
    else {
        return;
    };
    let request = &mut requests[at];
    if request.state != State::Open {
        return;
    }
    if packet.time_ns.saturating_sub(request.first_ns) > timeout_ns {
        // Counted once: the first outcome after the timeout.
        request
            .late
            .get_or_insert(refusal.map_or(Late::Answer, Late::Rejection));
        return;
    }
    request.state = refusal.map_or(State::Answered, State::Rejected);
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const US: &str = "203.0.113.2";
    const THEM: &str = "198.51.100.10";

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn packet(time_ns: u64, src: &str, dst: &str, transport: Transport) -> Packet {
        Packet {
            time_ns,
            group: false,
            src: ip(src),
            dst: ip(dst),
            transport,
        }
    }

    fn tcp(src_port: u16, dst_port: u16, seq: u32, ack: u32, flags: u16, len: u32) -> Transport {
        Transport::Tcp {
            src_port,
            dst_port,
            seq,
            ack,
            flags,
            len,
        }
    }

    fn dns(src_port: u16, dst_port: u16, id: u16, response: bool, name: &str) -> Transport {
        Transport::Udp {
            src_port,
            dst_port,
            dns: Some(Dns {
                id,
                response,
                question: Some((name.to_owned(), 1)),
            }),
        }
    }

    fn run(packets: &[Packet]) -> BTreeMap<Target, Counts> {
        account(packets, &[ip(US)], 2 * S).targets
    }

    fn the(targets: &BTreeMap<Target, Counts>, proto: &str, port: Option<u64>) -> Counts {
        targets[&(proto.to_owned(), THEM.to_owned(), port)].clone()
    }

    #[test]
    fn trust_dissector_a_syn_ack_acknowledging_fast_open_data_answers() {
        let syn = packet(0, US, THEM, tcp(40000, 80, 100, 0, TCP_SYN, 10));
        let end = packet(5 * S, US, THEM, Transport::Other);
        for (ack, answered) in [(111, 1), (101, 1), (112, 0), (100, 0)] {
            let synack = packet(
                S / 100,
                THEM,
                US,
                tcp(80, 40000, 7, ack, TCP_SYN | TCP_ACK, 0),
            );
            let counts = the(&run(&[syn.clone(), synack, end.clone()]), "tcp", Some(80));
            assert_eq!(
                (counts.requests, counts.answered),
                (1, answered),
                "ack {ack}"
            );
        }
        // A reset acknowledging the data refuses the SYN; one without ACK does not.
        let rst = packet(
            S / 100,
            THEM,
            US,
            tcp(80, 40000, 0, 111, TCP_RST | TCP_ACK, 0),
        );
        let counts = the(&run(&[syn.clone(), rst, end.clone()]), "tcp", Some(80));
        assert_eq!(counts.verdict(), ("rejected", Some("tcp-reset")));
        let bare = packet(S / 100, THEM, US, tcp(80, 40000, 111, 0, TCP_RST, 0));
        let counts = the(&run(&[syn, bare, end]), "tcp", Some(80));
        assert_eq!(counts.verdict(), ("blackholed", None));
    }

    #[test]
    fn trust_dissector_a_new_question_on_a_reused_id_is_a_new_request() {
        let packets = [
            packet(0, US, THEM, dns(40053, 53, 1, false, "a.example")),
            packet(S / 2, US, THEM, dns(40053, 53, 1, false, "a.example")),
            packet(3 * S, US, THEM, dns(40053, 53, 1, false, "b.example")),
            packet(3 * S + 1000, THEM, US, dns(53, 40053, 1, true, "b.example")),
            packet(6 * S, US, THEM, Transport::Other),
        ];
        let counts = the(&run(&packets), "udp", Some(53));
        assert_eq!(
            (
                counts.requests,
                counts.retransmits,
                counts.answered,
                counts.unanswered,
                counts.late
            ),
            (2, 1, 1, 1, 0)
        );
    }

    #[test]
    fn trust_dissector_late_answers_are_degraded_late_rejections_rejected() {
        let query = packet(0, US, THEM, dns(40053, 53, 1, false, "a.example"));
        let answer = packet(3 * S, THEM, US, dns(53, 40053, 1, true, "a.example"));
        let end = packet(6 * S, US, THEM, Transport::Other);
        let counts = the(&run(&[query.clone(), answer, end.clone()]), "udp", Some(53));
        assert_eq!((counts.unanswered, counts.late), (1, 1));
        assert_eq!(counts.verdict(), ("degraded", Some("late")));
        let error = packet(
            3 * S,
            "203.0.113.1",
            US,
            Transport::Unreachable {
                v6: false,
                code: 10,
                quoted_src: ip(US),
                quoted_dst: ip(THEM),
                quoted: Box::new(dns(40053, 53, 1, false, "a.example")),
            },
        );
        let counts = the(&run(&[query, error, end]), "udp", Some(53));
        assert_eq!((counts.unanswered, counts.late, counts.rejected), (1, 1, 0));
        assert_eq!(counts.verdict(), ("rejected", Some("icmp-host-prohibited")));
    }

    #[test]
    fn trust_dissector_fragmentation_needed_rejects_nothing() {
        let syn = packet(0, US, THEM, tcp(40000, 443, 100, 0, TCP_SYN, 0));
        let error = |code| {
            packet(
                S / 100,
                "203.0.113.1",
                US,
                Transport::Unreachable {
                    v6: false,
                    code,
                    quoted_src: ip(US),
                    quoted_dst: ip(THEM),
                    quoted: Box::new(tcp(40000, 443, 100, 0, TCP_SYN, 0)),
                },
            )
        };
        let end = packet(5 * S, US, THEM, Transport::Other);
        let counts = the(
            &run(&[syn.clone(), error(4), end.clone()]),
            "tcp",
            Some(443),
        );
        assert_eq!(counts.verdict(), ("blackholed", None));
        let counts = the(&run(&[syn, error(13), end]), "tcp", Some(443));
        assert_eq!(
            counts.verdict(),
            ("rejected", Some("icmp-admin-prohibited"))
        );
    }

    #[test]
    fn trust_dissector_broadcast_echo_is_not_a_request() {
        let mut echo = packet(
            0,
            US,
            "203.0.113.255",
            Transport::Echo {
                request: true,
                ident: 7,
                seq: 1,
            },
        );
        echo.group = true;
        let result = account(&[echo], &[ip(US)], 2 * S);
        assert!(result.targets.is_empty());
        assert_eq!(result.not_unicast, 1);
    }

    #[test]
    fn trust_dissector_reads_an_icmp_error_quoting_a_syn_as_tshark_prints_it() {
        // Fields as `tshark -T fields -E occurrence=a` printed them for a real capture.
        let mut row: Vec<Vec<String>> = vec![Vec::new(); FIELDS.len()];
        let mut set = |name: &str, values: &[&str]| {
            let at = FIELDS.iter().position(|f| *f == name).unwrap();
            row[at] = values.iter().map(|&v| v.to_owned()).collect();
        };
        set("frame.time_epoch", &["1764158400.000123456"]);
        set("eth.dst.ig", &["0"]);
        set("ip.src", &["203.0.113.1", US]);
        set("ip.dst", &[US, THEM]);
        set("tcp.srcport", &["41862"]);
        set("tcp.dstport", &["81"]);
        set("tcp.seq", &["2321639949"]);
        set("tcp.ack", &["0"]);
        set("tcp.flags", &["0x0002"]);
        set("icmp.type", &["3"]);
        set("icmp.code", &["0"]);
        let parsed = Packet::parse(&row).unwrap();
        assert_eq!(parsed.time_ns, 1_764_158_400_000_123_456);
        assert_eq!(
            parsed.transport,
            Transport::Unreachable {
                v6: false,
                code: 0,
                quoted_src: ip(US),
                quoted_dst: ip(THEM),
                quoted: Box::new(tcp(41862, 81, 2_321_639_949, 0, TCP_SYN, 0)),
            }
        );
    }
}

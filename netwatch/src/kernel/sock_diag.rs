//! The kernel's sockets over `sock_diag` (`NETLINK_SOCK_DIAG`): one TCP socket's state, asked
//! by its 4-tuple (`INET_DIAG_INFO`: the `struct tcp_info` `ss -ti` prints), and every TCP
//! and UDP socket's cookie and inode (what `ss -e` lists), for naming the processes behind
//! sockets opened before netwatch. Typed messages from `netlink-packet-sock-diag`; nothing is
//! laid out by hand.

use std::{io, net::IpAddr};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, TCP_TIME_WAIT},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

/// The parts of `struct tcp_info` netwatch reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TcpState {
    /// `tcpi_bytes_acked`: `tcp_sock.bytes_acked`; [`ALL_ACKNOWLEDGED`] for a connection
    /// that closed cleanly.
    pub bytes_acked: u64,
}

/// The `bytes_acked` of a connection in `TIME_WAIT`, which has no `tcp_info`: this host's FIN
/// was acknowledged, so everything it sent before was too.
pub(crate) const ALL_ACKNOWLEDGED: u64 = u64::MAX;

/// A `sock_diag` socket in netwatch's network namespace.
pub(crate) struct SockDiag {
    socket: Socket,
    buffer: Vec<u8>,
}

impl SockDiag {
    pub(crate) fn new() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self {
            socket,
            buffer: vec![0; 8192],
        })
    }

    /// The TCP socket from `local:local_port` to `remote:remote_port`; `None` when there is
    /// none (closed). An IPv4-mapped pair is asked as IPv4, which also finds an IPv6 socket
    /// talking to an IPv4 peer (they share TCP's lookup tables).
    pub(crate) fn tcp(
        &mut self,
        (local, local_port): (IpAddr, u16),
        (remote, remote_port): (IpAddr, u16),
    ) -> io::Result<Option<TcpState>> {
        let (local, remote) = (local.to_canonical(), remote.to_canonical());
        let family = if local.is_ipv4() { AF_INET } else { AF_INET6 };
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        let mut request = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::INFO,
                states: StateFlags::all(),
                socket_id: SocketId {
                    source_port: local_port,
                    destination_port: remote_port,
                    source_address: local,
                    destination_address: remote,
                    interface_id: 0,
                    // INET_DIAG_NOCOOKIE: match by the 4-tuple alone.
                    cookie: [0xff; 8],
                },
            })
            .into(),
        );
        self.send(&mut request)?;
        let size = self.socket.recv(&mut &mut self.buffer[..], 0)?;
        parse_reply(self.buffer.get(..size).unwrap_or_default())
    }

    /// Every TCP and UDP socket of this network namespace, IPv4 and IPv6: (cookie, inode).
    /// A kernel error is an error, never a shorter list.
    pub(crate) fn inet_sockets(&mut self) -> io::Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        for (family, any) in [
            (AF_INET, SocketId::new_v4()),
            (AF_INET6, SocketId::new_v6()),
        ] {
            for protocol in [IPPROTO_TCP, IPPROTO_UDP] {
                self.dump(family, protocol, any.clone(), &mut out)?;
            }
        }
        Ok(out)
    }

    /// One `SOCK_DIAG_BY_FAMILY` dump, its (cookie, inode) pairs added to `out`.
    fn dump(
        &mut self,
        family: u8,
        protocol: u8,
        socket_id: SocketId,
        out: &mut Vec<(u64, u64)>,
    ) -> io::Result<()> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut request = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol,
                extensions: ExtensionFlags::empty(),
                states: StateFlags::all(),
                socket_id,
            })
            .into(),
        );
        self.send(&mut request)?;
        // A dump spans many datagrams; a batch of messages each. Bounded: a namespace has
        // at most a few million sockets, a datagram holds dozens.
        for _ in 0..1_000_000 {
            let size = self.socket.recv(&mut &mut self.buffer[..], 0)?;
            if size == 0 || parse_dump(self.buffer.get(..size).unwrap_or_default(), out)? {
                return Ok(());
            }
        }
        Err(io::Error::other("a sock_diag dump that does not end"))
    }

    fn send(&mut self, request: &mut NetlinkMessage<SockDiagMessage>) -> io::Result<()> {
        request.finalize();
        let mut bytes = vec![0; request.buffer_len()];
        request.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;
        Ok(())
    }
}

/// The (cookie, inode) of each socket in one datagram of a dump, added to `out`: whether the
/// dump ended (`NLMSG_DONE`). A kernel error (`NLMSG_ERROR`) or a message that does not
/// parse is an error: the list would be short.
fn parse_dump(bytes: &[u8], out: &mut Vec<(u64, u64)>) -> io::Result<bool> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let length = NetlinkBuffer::new_checked(rest)
            .map_err(|err| invalid(err.to_string()))?
            .length() as usize;
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(&rest[..length])
            .map_err(|err| invalid(err.to_string()))?;
        match message.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                let cookie = response.header.socket_id.cookie;
                // `idiag_cookie` is two host-order words, the low one first.
                let low = u32::from_ne_bytes([cookie[0], cookie[1], cookie[2], cookie[3]]);
                let high = u32::from_ne_bytes([cookie[4], cookie[5], cookie[6], cookie[7]]);
                if response.header.inode != 0 {
                    out.push((
                        u64::from(low) | u64::from(high) << 32,
                        u64::from(response.header.inode),
                    ));
                }
            }
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(error) => {
                return Err(error.code.map_or_else(
                    || invalid("an acknowledgement in a sock_diag dump".to_owned()),
                    |code| io::Error::from_raw_os_error(-code.get()),
                ));
            }
            _ => {}
        }
        // NLMSG_ALIGN: messages start on 4-byte boundaries.
        at += length.next_multiple_of(4).max(4);
    }
    Ok(false)
}

/// The reply to one socket's query: its TCP state, `None` for "no such socket" (`ENOENT`),
/// an error for any other failure or a reply that does not parse.
fn parse_reply(bytes: &[u8]) -> io::Result<Option<TcpState>> {
    let message = NetlinkMessage::<SockDiagMessage>::deserialize(bytes)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string()))?;
    match message.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
            if response.header.state == TCP_TIME_WAIT {
                // Closed cleanly (a connection that recovered and ended between two polls).
                return Ok(Some(TcpState {
                    bytes_acked: ALL_ACKNOWLEDGED,
                }));
            }
            Ok(response.nlas.iter().find_map(|nla| match nla {
                Nla::TcpInfo(info) => Some(TcpState {
                    bytes_acked: info.bytes_acked,
                }),
                _ => None,
            }))
        }
        NetlinkPayload::Error(error) => match error.code {
            Some(code) if -code.get() == libc::ENOENT => Ok(None),
            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
            None => Ok(None),
        },
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected sock_diag reply: {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// The inode of an open socket, as `/proc/self/fd` names it.
    fn inode_of(fd: &impl std::os::fd::AsRawFd) -> u64 {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        let link = link.to_string_lossy();
        link.strip_prefix("socket:[")
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|inode| inode.parse().ok())
            .unwrap_or_else(|| panic!("not a socket: {link}"))
    }

    #[test]
    fn every_tcp_and_udp_socket_is_listed_with_its_cookie() {
        let mut diag = SockDiag::new().expect("a sock_diag socket (any Linux has them)");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tcp6 = TcpListener::bind("[::1]:0").ok();
        let sockets = diag.inet_sockets().unwrap();
        let udp_inode = inode_of(&udp);
        let found = sockets.iter().find(|(_, inode)| *inode == udp_inode);
        assert!(
            found.is_some_and(|(cookie, _)| *cookie != 0),
            "{udp_inode} in {sockets:?}"
        );
        if let Some(tcp6) = tcp6 {
            let inode = inode_of(&tcp6);
            assert!(sockets.iter().any(|(_, i)| *i == inode), "{inode}");
        }
    }

    #[test]
    fn a_kernel_error_ends_a_dump_as_an_error_not_a_shorter_list() {
        let message = |payload: NetlinkPayload<SockDiagMessage>| {
            let mut message = NetlinkMessage::new(NetlinkHeader::default(), payload);
            message.finalize();
            let mut bytes = vec![0; message.buffer_len()];
            message.serialize(&mut bytes);
            bytes
        };
        let mut error = netlink_packet_core::ErrorMessage::default();
        error.code = std::num::NonZeroI32::new(-libc::ENOBUFS);
        let mut out = Vec::new();
        let err = parse_dump(&message(NetlinkPayload::Error(error)), &mut out).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOBUFS));
        let done = message(NetlinkPayload::Done(
            netlink_packet_core::DoneMessage::default(),
        ));
        assert!(parse_dump(&done, &mut out).unwrap());
        assert!(parse_dump(&done[..8], &mut out).is_err(), "cut short");
        assert!(out.is_empty());
    }

    #[test]
    fn a_connected_socket_is_found_and_a_closed_one_is_not() {
        let mut diag = SockDiag::new().expect("a sock_diag socket (any Linux has them)");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(server).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let local = client.local_addr().unwrap();
        let found = diag
            .tcp((local.ip(), local.port()), (server.ip(), server.port()))
            .unwrap();
        assert_eq!(found, Some(TcpState { bytes_acked: 1 }), "the SYN's byte");
        drop((client, accepted));
        let gone = diag
            .tcp((local.ip(), 1), (server.ip(), server.port()))
            .unwrap();
        assert_eq!(gone, None);
    }

    #[test]
    fn a_connection_that_closed_cleanly_acknowledged_everything() {
        let mut diag = SockDiag::new().expect("a sock_diag socket (any Linux has them)");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let mut client = std::net::TcpStream::connect(server).unwrap();
        let (mut accepted, _) = listener.accept().unwrap();
        let local = client.local_addr().unwrap();
        io::Write::write_all(&mut client, b"hello").unwrap();
        // The client closes first, the server reads to the end and closes: the client's
        // side waits in TIME_WAIT.
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut read = Vec::new();
        io::Read::read_to_end(&mut accepted, &mut read).unwrap();
        assert_eq!(read, b"hello");
        drop(accepted);
        io::Read::read_to_end(&mut client, &mut Vec::new()).unwrap();
        drop(client);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let found = loop {
            let found = diag
                .tcp((local.ip(), local.port()), (server.ip(), server.port()))
                .unwrap();
            if found.is_some_and(|f| f.bytes_acked == ALL_ACKNOWLEDGED)
                || std::time::Instant::now() > deadline
            {
                break found;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(
            found,
            Some(TcpState {
                bytes_acked: ALL_ACKNOWLEDGED
            })
        );
    }
}

//! One TCP socket's state, asked of the kernel by its 4-tuple over `sock_diag`
//! (`NETLINK_SOCK_DIAG`, `INET_DIAG_INFO`: the `struct tcp_info` `ss -ti` prints). Typed
//! messages from `netlink-packet-sock-diag`; nothing is laid out by hand.

use std::{io, net::IpAddr};

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

/// The parts of `struct tcp_info` netwatch reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpState {
    /// `tcpi_bytes_acked`: `tcp_sock.bytes_acked`.
    pub bytes_acked: u64,
}

/// A `sock_diag` socket in netwatch's network namespace.
pub struct SockDiag {
    socket: Socket,
    buffer: Vec<u8>,
}

impl SockDiag {
    pub fn new() -> io::Result<Self> {
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
    pub fn tcp(
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
        request.finalize();
        let mut bytes = vec![0; request.buffer_len()];
        request.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;
        let size = self.socket.recv(&mut &mut self.buffer[..], 0)?;
        parse_reply(self.buffer.get(..size).unwrap_or_default())
    }
}

/// The reply to one socket's query: its TCP state, `None` for "no such socket" (`ENOENT`),
/// an error for any other failure or a reply that does not parse.
fn parse_reply(bytes: &[u8]) -> io::Result<Option<TcpState>> {
    let message = NetlinkMessage::<SockDiagMessage>::deserialize(bytes)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string()))?;
    match message.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
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
}

//! The clsact qdisc netwatch adds on kernels without tcx, removed over rtnetlink when it
//! leaves (aya adds the qdisc and filters but has no call to delete a qdisc): only when no
//! filter is left on it, since other tools may have attached theirs meanwhile.

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcHandle, TcMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The clsact qdisc's own handle (`ffff:`).
const CLSACT_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};

/// Whether any filter (netwatch's or anyone's) is attached to `ifindex`'s clsact qdisc, on
/// ingress or egress.
pub(crate) fn has_filters(ifindex: u32) -> io::Result<bool> {
    for hook in [TcHandle::MIN_INGRESS, TcHandle::MIN_EGRESS] {
        let mut message = tc_message(ifindex)?;
        message.header.parent = TcHandle {
            major: TcHandle::CLSACT.major,
            minor: hook,
        };
        let replies = request(
            RouteNetlinkMessage::GetTrafficFilter(message),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        if replies
            .iter()
            .any(|reply| matches!(reply, RouteNetlinkMessage::NewTrafficFilter(_)))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Deletes `ifindex`'s clsact qdisc (with any filters still on it).
pub(crate) fn delete(ifindex: u32) -> io::Result<()> {
    let mut message = tc_message(ifindex)?;
    message.header.parent = TcHandle::CLSACT;
    message.header.handle = CLSACT_HANDLE;
    request(
        RouteNetlinkMessage::DelQueueDiscipline(message),
        NLM_F_REQUEST | NLM_F_ACK,
    )
    .map(drop)
}

fn tc_message(ifindex: u32) -> io::Result<TcMessage> {
    let index = i32::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index too large"))?;
    Ok(TcMessage::with_index(index))
}

/// Sends one request and collects its replies: a dump's messages up to its end, or the
/// acknowledgement (an error reply becomes the error).
fn request(message: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
    packet.finalize();
    let mut out = vec![0; packet.buffer_len()];
    packet.serialize(&mut out);
    socket.send(&out, 0)?;

    let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
    let mut replies = Vec::new();
    let mut buffer = vec![0; 32 * 1024];
    loop {
        let size = socket.recv(&mut &mut buffer[..], 0)?;
        let mut offset = 0;
        while offset < size {
            let reply =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buffer[offset..size])
                    .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string()))?;
            let length = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::Done(_) => return Ok(replies),
                NetlinkPayload::Error(error) if error.code.is_some() => return Err(error.to_io()),
                // The acknowledgement of a request that is not a dump: its end.
                NetlinkPayload::Error(_) if !dump => return Ok(replies),
                NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

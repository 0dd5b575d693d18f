//! Who owns each socket: programs on the cgroup2 root record, in process context, the
//! process and cgroup behind a socket when it is created, connected, or sends without a
//! connection (`sendto` on UDP), keyed by the socket cookie. tc egress records the cookie of
//! each request's socket ([`tag`]); userspace joins the two.
//!
//! Every program here sits on every `socket()`, `connect()` and unconnected `sendmsg()` of
//! the host: each one always returns [`ALLOW`]. The map is an array written in place (see
//! [`SOCKET_OWNERS_CAPACITY`]): a write cannot fail, and takes no lock.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_skb_cgroup_id},
    },
    macros::map,
    maps::Array,
    programs::{SockContext, TcContext},
};
use netwatch_common::{
    KernelCounter, PendingRequest, SOCKET_OWNERS_CAPACITY, SocketOwner, socket_owner_slot,
};

use crate::maps::count;

/// What a cgroup socket program returns to let the operation go on.
pub const ALLOW: i32 = 1;

/// Socket owners, each in the slot of its socket's cookie ([`socket_owner_slot`]).
#[map]
static SOCKET_OWNERS: Array<SocketOwner> = Array::with_max_entries(SOCKET_OWNERS_CAPACITY, 0);

/// `IPPROTO_TCP`, `IPPROTO_UDP`.
const TCP: u32 = 6;
const UDP: u32 = 17;

/// A socket is created: recorded only when nothing later will record it. TCP and UDP
/// sockets are recorded when they connect or send without a connection (the only ways they
/// send a request), so a server's sockets and sockets that never send cost no map update;
/// ping and raw sockets send with no hook of their own, so they are recorded here.
#[inline(always)]
pub fn created(ctx: &SockContext) {
    // SAFETY: the context pointer the kernel passed in; `protocol` is readable here.
    let protocol = unsafe { (*ctx.sock).protocol };
    if protocol != TCP && protocol != UDP {
        record(ctx);
    }
}

/// Records the current process as the owner of the socket behind `ctx` (a `bpf_sock` or a
/// `bpf_sock_addr`: both have a cookie helper). Called in process context only.
#[inline(always)]
pub fn record(ctx: &impl aya_ebpf::EbpfContext) {
    // SAFETY: the context pointer the kernel passed in; the helper reads its socket.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if cookie == 0 {
        return;
    }
    let Some(slot) = SOCKET_OWNERS.get_ptr_mut(socket_owner_slot(cookie)) else {
        return;
    };
    // SAFETY: an array value pointer, valid for this program run. Another CPU may write the
    // same slot at the same time only for another socket whose cookie shares it (a whole
    // `SOCKET_OWNERS_CAPACITY` of sockets apart); userspace reads a slot twice and takes it only when both reads agree.
    let slot = unsafe { &mut *slot };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if slot.cookie == cookie {
        if slot.tgid == tgid {
            // The same process again (a resolver's every sendto): nothing to write.
            return;
        }
    } else if slot.cookie != 0 && slot.released_ns == 0 {
        // An open socket's owner, a whole map of sockets older, gives way.
        count(KernelCounter::SocketOwnerLost);
    }
    // Field by field, in place: a whole value would be built on the stack and copied.
    // SAFETY: no preconditions.
    slot.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    slot.released_ns = 0;
    slot.tgid = tgid;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the low half of pid_tgid is the thread id"
    )]
    {
        slot.tid = pid_tgid as u32;
    }
    slot.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    slot.cookie = cookie;
}

/// A socket is released: its owner is stamped with the time rather than forgotten, so a
/// request it sent just before closing (a client giving up, `dig` exiting, a refused `curl`)
/// is still named when userspace next reads the pending table; a newer socket overwrites it.
#[inline(always)]
pub fn released(ctx: &impl aya_ebpf::EbpfContext) {
    // SAFETY: as in `record`.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(slot) = SOCKET_OWNERS.get_ptr_mut(socket_owner_slot(cookie)) {
        // SAFETY: an array value pointer, valid for this program run; aligned loads and one
        // aligned store.
        unsafe {
            if (*slot).cookie == cookie {
                (*slot).released_ns = bpf_ktime_get_ns();
            }
        }
    }
}

/// tc egress: the request's socket cookie and cgroup. Both 0 without a socket (forwarded
/// packets); only on the request path.
#[inline(always)]
pub fn tag(ctx: &TcContext, request: &mut PendingRequest) {
    // SAFETY: `skb` is the context pointer the kernel passed in.
    unsafe {
        request.socket_cookie = bpf_get_socket_cookie(ctx.skb.skb.cast());
        request.cgroup_id = bpf_skb_cgroup_id(ctx.skb.skb);
    }
}

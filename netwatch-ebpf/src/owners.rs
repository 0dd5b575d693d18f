//! Who owns each socket: programs on the cgroup2 root record, in process context, the
//! process and cgroup behind a socket when it is created, connected, or sends without a
//! connection (`sendto` on UDP), keyed by the socket cookie. tc egress records the cookie of
//! each request's socket ([`tag`]); userspace joins the two.
//!
//! Every program here sits on every `socket()`, `connect()` and unconnected `sendmsg()` of
//! the host: each one always returns [`ALLOW`], whatever happens to the map (an LRU: full,
//! it evicts the least recently used owner; an update that still fails is counted).

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_skb_cgroup_id},
    },
    macros::map,
    maps::LruHashMap,
    programs::{SockContext, TcContext},
};
use netwatch_common::{KernelCounter, PendingRequest, SOCKET_OWNERS_CAPACITY, SocketOwner};

use crate::maps::count;

/// What a cgroup socket program returns to let the operation go on.
pub const ALLOW: i32 = 1;

/// Socket cookie → owner. An insert is the programs' one map write: about 1.4 µs on this
/// machine kind (`bpf_stats`), whether the map is full or not; lookups about 0.2 µs.
#[map]
static SOCKET_OWNERS: LruHashMap<u64, SocketOwner> =
    LruHashMap::with_max_entries(SOCKET_OWNERS_CAPACITY, 0);

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
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if let Some(known) = SOCKET_OWNERS.get_ptr(&cookie) {
        // SAFETY: a map value pointer, valid for this program run.
        if unsafe { (*known).tgid } == tgid {
            // The same process again (a resolver's every sendto): a lookup, no update.
            return;
        }
    }
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the low half of pid_tgid is the thread id"
    )]
    let owner = SocketOwner {
        // SAFETY: no preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        released_ns: 0,
        tgid,
        tid: pid_tgid as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if SOCKET_OWNERS.insert(&cookie, &owner, 0).is_err() {
        count(KernelCounter::SocketOwnerLost);
    }
}

/// A socket is released: its owner is stamped with the time rather than forgotten, so a
/// request it sent just before closing (a client giving up, `dig` exiting, a refused `curl`)
/// is still named when userspace next reads the pending table; the LRU evicts it later.
/// (Forgetting owners here to keep the map from filling was measured: a delete cost more at
/// release than it saved at insert.)
#[inline(always)]
pub fn released(ctx: &impl aya_ebpf::EbpfContext) {
    // SAFETY: as in `record`.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(known) = SOCKET_OWNERS.get_ptr_mut(&cookie) {
        // SAFETY: a map value pointer, valid for this program run; one aligned store.
        unsafe { (*known).released_ns = bpf_ktime_get_ns() };
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

//! The wire formats shared by netwatch's eBPF programs and its userspace: the maps' and
//! globals' names, and the types that cross between the two.
//!
//! A type that crosses is a map key or value, or a global the loader writes
//! ([`DropConfig`], [`RetransmitConfig`]): `#[repr(C)]`, explicit-width integers, padding
//! spelled out as fields (uninitialised padding in a hash-map key breaks lookups), and a
//! compile-time size assert so both sides can never disagree on a layout. A few others are
//! only the rules both sides run ([`Retransmission`], the functions at the end), kept here
//! so that userspace tests run the very code the kernel runs.
#![no_std]

use core::mem::size_of;

/// Name of the egress classifier in the eBPF object (also the tc filter name in clsact mode).
pub const EGRESS_PROGRAM: &str = "netwatch_egress";
/// Name of the ingress classifier in the eBPF object.
pub const INGRESS_PROGRAM: &str = "netwatch_ingress";
/// The classifiers for devices without a link-layer header (tun, `WireGuard`, PPP, ipip, gre,
/// sit), whose packets start with the IP header. Named so that the kernel's 15-byte
/// program names (`netwatch_l3_egr`, `netwatch_l3_ing`) still tell them from the others.
pub const L3_EGRESS_PROGRAM: &str = "netwatch_l3_egress";
pub const L3_INGRESS_PROGRAM: &str = "netwatch_l3_ingress";

/// Map of requests that left and have not been answered yet: [`RequestKey`] → [`PendingRequest`].
pub const PENDING_MAP: &str = "PENDING";
/// Map from a target to its slot in [`TARGETS_MAP`]: [`TargetKey`] → `u32`.
pub const TARGET_SLOTS_MAP: &str = "TARGET_SLOTS";
/// Array of per-target counters kept by the kernel, indexed by slot: [`TargetCounters`].
/// Memory-mappable: userspace reads every target's counters without a syscall.
pub const TARGETS_MAP: &str = "TARGETS";
/// Map from a slot of [`TARGETS_MAP`] to its owner: `u32` → [`TargetKey`].
pub const SLOT_OWNERS_MAP: &str = "SLOT_OWNERS";
/// One-element array: where the next slot claim starts (`u32`, a hint).
pub const NEXT_SLOT_MAP: &str = "NEXT_SLOT";
/// Hash of this host's addresses (16 bytes, IPv4 ones mapped) → 1, kept by userspace.
pub const LOCAL_ADDRESSES_MAP: &str = "LOCAL_ADDRESSES";
/// Capacity of [`LOCAL_ADDRESSES_MAP`].
pub const LOCAL_ADDRESSES_CAPACITY: u32 = 1024;
/// Per-CPU array of [`KernelCounter`] values: what the programs saw but could not use.
pub const COUNTERS_MAP: &str = "COUNTERS";

/// Capacity of [`PENDING_MAP`]. A plain preallocated hash: when it is full a new request is
/// not tracked and [`KernelCounter::PendingFull`] (and the target's `untracked`) count it, so
/// nothing is silently lost and nothing untracked can ever be called unanswered.
pub const PENDING_CAPACITY: u32 = 65_536;
/// Capacity of [`TARGETS_MAP`] and [`TARGET_SLOTS_MAP`]: 16,384 targets, 9 MiB of counters.
/// A request whose target does not fit is counted in [`KernelCounter::TargetsFull`]. Slots are
/// never reused: a target keeps its counters for the life of the programs.
pub const TARGETS_CAPACITY: u32 = 16_384;

/// Programs on the cgroup2 root that record which process owns each socket (see
/// [`SocketOwner`]). All of them always allow: they only observe.
pub const SOCK_CREATE_PROGRAM: &str = "netwatch_sock_create";
pub const SOCK_RELEASE_PROGRAM: &str = "netwatch_sock_release";
pub const CONNECT4_PROGRAM: &str = "netwatch_connect4";
pub const CONNECT6_PROGRAM: &str = "netwatch_connect6";
pub const SENDMSG4_PROGRAM: &str = "netwatch_sendmsg4";
pub const SENDMSG6_PROGRAM: &str = "netwatch_sendmsg6";
/// Array of [`SocketOwner`]s, written by the cgroup socket programs: a socket's owner is in
/// the slot [`socket_owner_slot`] gives its cookie, stamped with that cookie.
pub const SOCKET_OWNERS_MAP: &str = "SOCKET_OWNERS";
/// Slots of [`SOCKET_OWNERS_MAP`] (a power of two; 3 MiB). Direct-mapped, not a hash: a
/// socket's owner stays until a socket whose cookie shares its slot is recorded, that is
/// until the host has given this many more sockets a cookie. Cookies are handed out in
/// order, so that is the newest 65,536 sockets, and userspace joins them four times a second.
/// A socket whose owner was overwritten is attributed from `/proc` or not at all. A slot is
/// written in place, with no lock: the programs take about 0.5 µs per `connect()` and 0.3 µs
/// per `close()`, where an LRU hash took 2.0 and 0.6 (`bpf_stats`, a loopback connect loop).
pub const SOCKET_OWNERS_CAPACITY: u32 = 65_536;
const _: () = assert!(SOCKET_OWNERS_CAPACITY.is_power_of_two());

/// The slot of [`SOCKET_OWNERS_MAP`] that holds the owner of the socket with `cookie`.
#[expect(
    clippy::inline_always,
    reason = "shared with the eBPF programs, where it must be inlined"
)]
#[inline(always)]
#[must_use]
pub const fn socket_owner_slot(cookie: u64) -> u32 {
    #[expect(clippy::cast_possible_truncation, reason = "masked to the slots")]
    let low = cookie as u32;
    low & (SOCKET_OWNERS_CAPACITY - 1)
}

/// Who last connected a socket, or sent on it without a connection (TCP, UDP), or created it
/// (ping and raw sockets), as the cgroup socket programs saw it in process context.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketOwner {
    /// The socket's cookie: whose owner the slot holds (0: none yet).
    pub cookie: u64,
    /// `bpf_get_current_cgroup_id()`: the cgroup v2 id (the inode number of its directory
    /// under the cgroup2 mount).
    pub cgroup_id: u64,
    /// `bpf_ktime_get_ns()` when the socket was released; 0 while it is open.
    pub released_ns: u64,
    /// The process (thread group) id and the thread's id, as seen from the initial pid
    /// namespace.
    pub tgid: u32,
    pub tid: u32,
    /// `bpf_get_current_comm()`: the *thread's* name (dig sends from `isc-net-0000`),
    /// NUL-padded; userspace names the process from `/proc` when the thread is still there.
    /// Untrusted: escape it.
    pub comm: [u8; 16],
}
const _: () = assert!(size_of::<SocketOwner>() == 48);

/// Name of the read-only global holding `--timeout` in nanoseconds, set at load time.
pub const TIMEOUT_GLOBAL: &str = "TIMEOUT_NS";

/// Name of the raw tracepoint program on `skb:kfree_skb` that counts watched packets this
/// host drops, by the kernel's drop reason.
pub const DROP_PROGRAM: &str = "netwatch_drops";
/// The tracepoint it attaches to (`TP_PROTO(skb, location, reason[, rx_sk])`).
pub const DROP_TRACEPOINT: &str = "kfree_skb";
/// Name of the read-only global holding the [`DropConfig`], set at load time.
pub const DROP_CONFIG_GLOBAL: &str = "DROP_CONFIG";
/// Map of local drops per target and reason: [`LocalDropKey`] → `u64`.
pub const LOCAL_DROPS_MAP: &str = "LOCAL_DROPS";
/// Capacity of [`LOCAL_DROPS_MAP`]: (target, reason) pairs. A plain preallocated hash: a
/// pair that does not fit is counted in [`KernelCounter::LocalDropsFull`].
pub const LOCAL_DROPS_CAPACITY: u32 = 8_192;
/// Bytes of `struct sk_buff` the drop program reads first, from [`DropConfig::skb_window`]:
/// its `protocol`, `network_header` and `head`, which locate the headers, must lie in them.
pub const SKB_WINDOW: usize = 32;

/// Where the drop program finds what it needs, taken from the running kernel's BTF at
/// start-up (rustc emits no CO-RE relocations, so nothing is compiled in).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropConfig {
    /// 0: the program returns at once (netwatch could not work the layout out).
    pub enabled: u32,
    /// Offset in `struct sk_buff` of the [`SKB_WINDOW`] bytes read.
    pub skb_window: u32,
    /// Offsets, within the window, of `protocol` (`__be16`), `network_header` (`u16`,
    /// from `head`) and `head` (`unsigned char *`).
    pub protocol: u32,
    pub network_header: u32,
    pub head: u32,
    /// `enum skb_drop_reason` values that are not drops of interest: `SKB_NOT_DROPPED_YET`,
    /// `SKB_CONSUMED` (a packet used up, not dropped) and `SKB_DROP_REASON_NOT_SPECIFIED`
    /// (every plain `kfree_skb()`, many of them no drop at all).
    pub not_dropped_yet: u32,
    pub consumed: u32,
    pub not_specified: u32,
    /// The inode number of netwatch's network namespace (`net->ns.inum`): the tracepoint
    /// fires for every namespace, and only this one's drops are this host's. 0: no check
    /// (a kernel without network namespaces).
    pub netns: u32,
    /// Offsets of `sk_buff.dev` and `sk_buff.sk` (adjacent: read together, 16 bytes from
    /// `skb_dev_sk`, the first of them), `net_device.nd_net.net`,
    /// `sock.__sk_common.skc_net.net` and `net.ns.inum`: a received packet's namespace is its
    /// device's, a sent one's (no device yet before the output chain) its socket's.
    pub skb_dev_sk: u32,
    pub skb_dev: u32,
    pub skb_sk: u32,
    pub dev_net: u32,
    pub sk_net: u32,
    pub net_inum: u32,
    /// Bit `r` (reason values below 128) set: `r` is a drop *at* the socket (`NO_SOCKET`,
    /// `SOCKET_RCVBUFF`, …): the application was gone or too slow, the path was fine. An
    /// answer dropped for such a reason is counted by reason but is no failure of the target.
    pub socket_reasons: [u32; 4],
    /// Where `sk_buff.pkt_type` (a 3-bit field) is: its byte and the bit it starts at. A packet this host sent is `PACKET_HOST` (0); its looped-back copies (a
    /// broadcast, a multicast) are not, and are not requests.
    pub pkt_type_byte: u32,
    pub pkt_type_shift: u32,
}
const _: () = assert!(size_of::<DropConfig>() == 84);

impl DropConfig {
    /// Whether `reason` is a drop at the socket (see [`DropConfig::socket_reasons`]).
    #[expect(
        clippy::inline_always,
        reason = "shared with the eBPF programs, where it must be inlined"
    )]
    #[inline(always)]
    #[must_use]
    pub const fn at_socket(&self, reason: u32) -> bool {
        let word = (reason / 32) as usize;
        word < self.socket_reasons.len() && self.socket_reasons[word] & (1 << (reason % 32)) != 0
    }
}

impl DropConfig {
    /// The program does nothing.
    #[must_use]
    pub const fn disabled() -> Self {
        Self {
            enabled: 0,
            skb_window: 0,
            protocol: 0,
            network_header: 0,
            head: 0,
            not_dropped_yet: 0,
            consumed: 0,
            not_specified: 0,
            netns: 0,
            skb_dev_sk: 0,
            skb_dev: 0,
            skb_sk: 0,
            dev_net: 0,
            sk_net: 0,
            net_inum: 0,
            socket_reasons: [0; 4],
            pkt_type_byte: 0,
            pkt_type_shift: 0,
        }
    }
}

/// Name of the raw tracepoint program on `tcp:tcp_retransmit_skb` that follows TCP
/// connections whose segments are retransmitted (see [`Retransmits`]).
pub const RETRANSMIT_PROGRAM: &str = "netwatch_retransmits";
/// The tracepoint it attaches to (`TP_PROTO(sk, skb[, err])`: `err` from 6.13 on).
pub const RETRANSMIT_TRACEPOINT: &str = "tcp_retransmit_skb";
/// Name of the read-only global holding the [`RetransmitConfig`], set at load time.
pub const RETRANSMIT_CONFIG_GLOBAL: &str = "RETRANSMIT_CONFIG";
/// Map of connections with retransmissions: the kernel's socket address (`u64`) →
/// [`Retransmits`].
pub const RETRANSMITS_MAP: &str = "RETRANSMITS";
/// Capacity of [`RETRANSMITS_MAP`]. A plain preallocated hash: userspace removes the
/// connections it is done with; a connection that does not fit is counted in
/// [`KernelCounter::RetransmitsFull`].
pub const RETRANSMITS_CAPACITY: u32 = 8_192;
/// Retransmissions of one segment in a row, with nothing acknowledged in between, that
/// make it lost rather than unlucky. With Linux's minimum RTO (200 ms) and its exponential
/// backoff the fourth comes about 3 s after the first loss; random loss of 20 % loses a
/// segment four times in a row once in 625 losses (and then the segment gets through, which
/// clears it).
pub const STALL_RETRANSMITS: u16 = 4;
/// Retransmissions of one segment in a row at one size after which the stack sending it
/// smaller, its segment size (`mss_cache`) lowered, makes that size a stall too, short of
/// [`STALL_RETRANSMITS`]. Nothing but a size that died lowers it under a head: TCP's
/// black-hole detection (`tcp_mtu_probing`), which acts on time (about 3 s of
/// retransmissions, `tcp_retries1`), so on a path whose retransmission timer starts above
/// ~215 ms it acts at the fourth retransmission, after three at full size; or a late
/// "packet too big". A "packet too big" answering the first transmission lowers it before
/// any retransmission at that size: no stall.
pub const LOWERED_AFTER: u16 = 2;

/// Where the retransmission program finds what it reads, taken from the running kernel's
/// BTF at start-up (offsets in bytes; `sock_common` fields are read from the start of
/// `struct sock`, `tcp_sock` ones from the same address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetransmitConfig {
    /// 0: the program returns at once.
    pub enabled: u32,
    /// As [`DropConfig::netns`]: the inode of netwatch's network namespace; 0, no check.
    pub netns: u32,
    /// `sock.__sk_common.skc_net.net` and `net.ns.inum`.
    pub sk_net: u32,
    pub net_inum: u32,
    /// `struct sock_common`: `skc_daddr`, `skc_rcv_saddr` (IPv4), `skc_dport` (network
    /// order), `skc_num` (host order), `skc_family`, `skc_v6_daddr`, `skc_v6_rcv_saddr`.
    pub daddr: u32,
    pub rcv_saddr: u32,
    pub dport: u32,
    pub num: u32,
    pub family: u32,
    pub v6_daddr: u32,
    pub v6_rcv_saddr: u32,
    /// `struct sk_buff`: `len` (a queued TCP segment's payload) and `cb` (its
    /// `struct tcp_skb_cb`, whose first field is the segment's sequence number).
    pub skb_len: u32,
    pub skb_cb: u32,
    /// `struct tcp_sock`: `snd_una`, `snd_wnd`, `mss_cache`, `tcp_header_len` (`u16`),
    /// `delivered`, `bytes_acked` (`u64`).
    pub snd_una: u32,
    pub snd_wnd: u32,
    pub mss_cache: u32,
    pub tcp_header_len: u32,
    pub delivered: u32,
    pub bytes_acked: u32,
    /// Padding to a multiple of 8 bytes; 0.
    pub reserved: u32,
}
const _: () = assert!(size_of::<RetransmitConfig>() == 80);

impl RetransmitConfig {
    /// The program does nothing.
    #[must_use]
    pub const fn disabled() -> Self {
        Self {
            enabled: 0,
            netns: 0,
            sk_net: 0,
            net_inum: 0,
            daddr: 0,
            rcv_saddr: 0,
            dport: 0,
            num: 0,
            family: 0,
            v6_daddr: 0,
            v6_rcv_saddr: 0,
            skb_len: 0,
            skb_cb: 0,
            snd_una: 0,
            snd_wnd: 0,
            mss_cache: 0,
            tcp_header_len: 0,
            delivered: 0,
            bytes_acked: 0,
            reserved: 0,
        }
    }
}

/// What the retransmission program knows of one TCP connection whose segments were
/// retransmitted. Sizes are bytes on the wire (IP and TCP headers and payload) of one
/// segment. The *head* is the first unacknowledged segment: the one TCP retransmits when
/// its timer runs out, again and again while nothing gets through.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retransmits {
    /// The peer and this host (IPv4 ones mapped), the peer's port and this host's.
    pub remote: [u8; 16],
    pub local: [u8; 16],
    pub remote_port: u16,
    pub local_port: u16,
    /// Size of the head as last retransmitted.
    pub head_size: u16,
    /// Retransmissions of the head at that size in a row, nothing acknowledged in between.
    pub head_count: u16,
    /// Sequence number of the head.
    pub head_seq: u32,
    /// Head retransmissions the peer's window could not take (a zero window: window probes,
    /// not loss); they count for nothing else.
    pub window_limited: u32,
    /// `bpf_ktime_get_ns()` of the first and the last retransmission seen.
    pub first_ns: u64,
    pub last_ns: u64,
    /// Every retransmission seen (head or not).
    pub retransmits: u32,
    /// Heads that reached [`STALL_RETRANSMITS`] retransmissions at one size, or
    /// [`LOWERED_AFTER`] before the stack sent them smaller.
    pub stalls: u16,
    /// Of those, the ones then acknowledged (at that size, or smaller after the stack
    /// lowered its segment size).
    pub recoveries: u16,
    /// The smallest size that stalled so without getting through; 0: none.
    pub smallest_lost: u16,
    /// The largest size of a retransmitted head later acknowledged; 0: none.
    pub largest_delivered: u16,
    /// `tcp_sock.mss_cache` at the last retransmission.
    pub mss: u32,
    /// IP and TCP header bytes of this connection's segments.
    pub header_len: u16,
    /// 1 when the head, at any size, stalled: its acknowledgement is then a recovery.
    pub head_stalled: u16,
    /// `tcp_sock.delivered` (data segments acknowledged, the handshake's one included) and
    /// `tcp_sock.bytes_acked` at the last retransmission.
    pub delivered: u32,
    pub bytes_acked: u64,
    /// The same when the first stall was recorded: what got through before the trouble.
    pub stall_delivered: u32,
    /// Padding to a multiple of 8 bytes; 0.
    pub reserved: u32,
    pub stall_bytes_acked: u64,
}
const _: () = assert!(size_of::<Retransmits>() == 112);

/// One retransmission as the retransmission program reads it off the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retransmission {
    /// The segment's sequence number and size (bytes on the wire).
    pub seq: u32,
    pub size: u16,
    /// The first unacknowledged sequence number: the segment is the head when equal.
    pub snd_una: u32,
    /// The peer's window cannot take the segment: a window probe, not a loss.
    pub window_limited: bool,
    pub now_ns: u64,
    pub mss: u32,
    pub delivered: u32,
    pub bytes_acked: u64,
}

impl Retransmits {
    /// A connection first seen retransmitting at `now_ns`, everything else zero.
    #[must_use]
    pub const fn new(
        remote: [u8; 16],
        local: [u8; 16],
        ports: (u16, u16),
        header_len: u16,
        now_ns: u64,
    ) -> Self {
        Self {
            remote,
            local,
            remote_port: ports.0,
            local_port: ports.1,
            head_size: 0,
            head_count: 0,
            head_seq: 0,
            window_limited: 0,
            first_ns: now_ns,
            last_ns: now_ns,
            retransmits: 0,
            stalls: 0,
            recoveries: 0,
            smallest_lost: 0,
            largest_delivered: 0,
            mss: 0,
            header_len,
            head_stalled: 0,
            delivered: 0,
            bytes_acked: 0,
            stall_delivered: 0,
            reserved: 0,
            stall_bytes_acked: 0,
        }
    }

    /// Whether this entry is the connection (`remote`, `local`, ports): a socket's address is
    /// reused by a later one once it is freed.
    #[expect(
        clippy::inline_always,
        reason = "shared with the eBPF programs, where it must be inlined"
    )]
    #[inline(always)]
    #[must_use]
    pub fn is(&self, remote: &[u8; 16], local: &[u8; 16], ports: (u16, u16)) -> bool {
        self.remote_port == ports.0
            && self.local_port == ports.1
            && same_address(&self.remote, remote)
            && same_address(&self.local, local)
    }

    /// Takes in one retransmission of this connection. Run by the kernel for every
    /// retransmission, in order (TCP holds the socket's lock while it retransmits); pure, so
    /// userspace tests run the very rules the kernel runs.
    ///
    /// Only the head tells a stall: a retransmission past it (fast retransmit, a tail loss
    /// probe) is counted and nothing more. The head retransmitted again at the same size adds
    /// to its count; at another size (the stack lowered, or raised, its segment size) starts a
    /// new count, and lowered after [`LOWERED_AFTER`] makes the old size a stall. A new head
    /// means the old one was acknowledged: its size got through, and if it had stalled, the
    /// connection recovered.
    #[expect(
        clippy::inline_always,
        reason = "shared with the eBPF programs, where it must be inlined"
    )]
    #[inline(always)]
    pub fn record(&mut self, r: &Retransmission) {
        self.retransmits = self.retransmits.wrapping_add(1);
        self.last_ns = r.now_ns;
        // The stack lowered its segment size (`mss_cache`): black-hole detection or a
        // "packet too big". Not the SACK blocks this host sends, which shrink one
        // retransmission (`tcp_current_mss`) and leave the size the stack sends at alone.
        let lowered = r.mss < self.mss;
        self.mss = r.mss;
        self.delivered = r.delivered;
        self.bytes_acked = r.bytes_acked;
        if r.seq != r.snd_una {
            return;
        }
        if r.window_limited {
            self.window_limited = self.window_limited.wrapping_add(1);
            return;
        }
        if self.head_count != 0 && self.head_seq == r.seq {
            if r.size != self.head_size {
                // Sent smaller after dying at its size (see [`LOWERED_AFTER`]): that size
                // stalled, unless it already counted.
                if lowered
                    && r.size < self.head_size
                    && self.head_count >= LOWERED_AFTER
                    && self.head_count < STALL_RETRANSMITS
                {
                    self.stalled(r);
                }
                self.head_size = r.size;
                self.head_count = 1;
                return;
            }
            self.head_count = self.head_count.saturating_add(1);
            if self.head_count == STALL_RETRANSMITS {
                self.stalled(r);
            }
            return;
        }
        #[expect(
            clippy::cast_possible_wrap,
            reason = "sequence numbers compare modulo 2^32 (RFC 9293 §3.4)"
        )]
        let after = (r.seq.wrapping_sub(self.head_seq) as i32) > 0;
        if self.head_count != 0 && after {
            if self.head_size > self.largest_delivered {
                self.largest_delivered = self.head_size;
            }
            self.recoveries = self.recoveries.saturating_add(self.head_stalled);
        }
        self.head_seq = r.seq;
        self.head_size = r.size;
        self.head_count = 1;
        self.head_stalled = 0;
    }

    /// The head stalled at its size, as `r` shows.
    #[expect(
        clippy::inline_always,
        reason = "shared with the eBPF programs, where it must be inlined"
    )]
    #[inline(always)]
    fn stalled(&mut self, r: &Retransmission) {
        if self.stalls == 0 {
            self.stall_delivered = r.delivered;
            self.stall_bytes_acked = r.bytes_acked;
        }
        self.stalls = self.stalls.saturating_add(1);
        self.head_stalled = 1;
        if self.smallest_lost == 0 || self.head_size < self.smallest_lost {
            self.smallest_lost = self.head_size;
        }
    }
}

/// Two addresses compared as two words each (see [`is_ipv4_mapped`] for why not a slice).
#[expect(
    clippy::inline_always,
    reason = "shared with the eBPF programs, where it must be inlined"
)]
#[inline(always)]
#[must_use]
pub const fn same_address(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let (a, b) = (halves(a), halves(b));
    a.0 == b.0 && a.1 == b.1
}

#[expect(
    clippy::inline_always,
    reason = "shared with the eBPF programs, where it must be inlined"
)]
#[inline(always)]
const fn halves(x: &[u8; 16]) -> (u64, u64) {
    (
        u64::from_ne_bytes([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]),
        u64::from_ne_bytes([x[8], x[9], x[10], x[11], x[12], x[13], x[14], x[15]]),
    )
}

/// Key of [`LOCAL_DROPS_MAP`]: a target's slot in [`TARGETS_MAP`] and an
/// `enum skb_drop_reason` value of the running kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalDropKey {
    pub slot: u32,
    pub reason: u32,
}
const _: () = assert!(size_of::<LocalDropKey>() == 8);

/// IANA protocol numbers, as used in [`RequestKey::proto`] and [`TargetKey::proto`].
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// [`TargetKey::direction`]: requests this host sent.
pub const DIRECTION_EGRESS: u8 = 0;
/// [`TargetKey::direction`]: requests this host received.
pub const DIRECTION_INGRESS: u8 = 1;

/// The well-known DNS port; UDP queries to it are tracked per transaction id.
pub const DNS_PORT: u16 = 53;

/// Bytes of a DNS query's question section (name and type) kept with the pending request.
pub const DNS_QUESTION_CAPTURE: usize = 76;

/// The programs' global array of UDP ports (`[u8; UDP_PORTS]`, a section of its own, hence
/// a map of one value): how datagrams to or from each port are matched, [`UDP_PORT_NTP`] or
/// [`UDP_PORT_FLOW`]; 0 (the default) is not watched. Indexed by the port directly: on the
/// path of every UDP datagram that is not DNS, a load from memory, no helper and no hashing.
pub const UDP_PORTS_MAP: &str = ".bss.udp_ports";
/// Ports in [`UDP_PORTS_MAP`]: every one (64 KiB).
pub const UDP_PORTS: usize = 65_536;
/// [`UDP_PORTS_MAP`]: NTP, a request per flow and transmit timestamp.
pub const UDP_PORT_NTP: u8 = 1;
/// [`UDP_PORTS_MAP`]: a request/response service matched flow by flow (`--udp-port`).
pub const UDP_PORT_FLOW: u8 = 2;

/// The well-known NTP port, watched by default.
pub const NTP_PORT: u16 = 123;
/// Length of an NTP message without extension fields or MAC (RFC 5905 §7.3).
pub const NTP_LEN: usize = 48;
/// Offsets in an NTP message of its origin timestamp (in a server's answer: the client's
/// transmit timestamp, copied back) and of its transmit timestamp.
pub const NTP_ORIGIN_OFFSET: usize = 24;
pub const NTP_TRANSMIT_OFFSET: usize = 40;
/// NTP modes (the low three bits of the first byte): a client's request, a server's answer.
pub const NTP_MODE_CLIENT: u8 = 3;
pub const NTP_MODE_SERVER: u8 = 4;

/// The [`RequestKey::tag`] of an NTP exchange: its 64-bit timestamp folded to 16 bits
/// (exclusive or of its four 16-bit words). The client's transmit timestamp is unique per
/// request and the server copies it into its answer's origin timestamp, so both sides of an
/// exchange fold to the same tag; the whole timestamp is kept with the request as well.
#[expect(
    clippy::inline_always,
    reason = "shared with the eBPF programs, where it must be inlined"
)]
#[inline(always)]
#[must_use]
pub const fn ntp_tag(timestamp: [u8; 8]) -> u16 {
    u16::from_be_bytes([timestamp[0], timestamp[1]])
        ^ u16::from_be_bytes([timestamp[2], timestamp[3]])
        ^ u16::from_be_bytes([timestamp[4], timestamp[5]])
        ^ u16::from_be_bytes([timestamp[6], timestamp[7]])
}

/// One request in flight: which flow, and which exchange within it.
///
/// Addresses are 16 bytes; IPv4 ones are stored IPv4-mapped (`::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestKey {
    pub remote: [u8; 16],
    pub local: [u8; 16],
    /// Remote port (TCP, UDP); 0 for ICMP.
    pub remote_port: u16,
    /// Local port (TCP, UDP) or echo identifier (ICMP).
    pub local_port: u16,
    /// DNS transaction id (UDP/53), NTP transmit timestamp folded by [`ntp_tag`], echo
    /// sequence number (ICMP); 0 for TCP and for `--udp-port` flows.
    pub tag: u16,
    /// One of [`proto`].
    pub proto: u8,
    /// [`DIRECTION_EGRESS`]: a request this host sent; [`DIRECTION_INGRESS`]: one it received.
    /// `remote` is always the peer and `local` this host, whichever way the request went.
    pub direction: u8,
}
const _: () = assert!(size_of::<RequestKey>() == 40);

impl RequestKey {
    /// All zeros, to be filled in place.
    #[must_use]
    pub const fn zeroed() -> Self {
        Self {
            remote: [0; 16],
            local: [0; 16],
            remote_port: 0,
            local_port: 0,
            tag: 0,
            proto: 0,
            direction: DIRECTION_EGRESS,
        }
    }

    /// The target this request counts towards: the peer and the port asked for (the
    /// remote's for a request this host sent, this host's for one it received).
    #[must_use]
    pub const fn target(&self) -> TargetKey {
        TargetKey {
            remote: self.remote,
            // ICMP keys hold the echo identifier in `local_port`, and 0 in `remote_port`.
            remote_port: if self.direction == DIRECTION_INGRESS
                && (self.proto == proto::TCP || self.proto == proto::UDP)
            {
                self.local_port
            } else {
                self.remote_port
            },
            proto: self.proto,
            direction: self.direction,
        }
    }
}

/// [`PendingRequest::flags`]: an answer or rejection arrived after the deadline.
pub const PENDING_FLAG_LATE: u32 = 1;
/// [`PendingRequest::flags`]: the request was rejected in time and is settled; the entry
/// stays as a tombstone because the stack may retransmit a rejected request (Linux does
/// after an `ICMPv6` error), and that retransmit is the same request.
pub const PENDING_FLAG_REJECTED: u32 = 2;
/// [`PendingRequest::flags`]: a program on some CPU took this entry's outcome (an answer in
/// time, or a new exchange replacing it) and is deleting it. Set with a compare-and-swap
/// (Linux 5.12+), never by the programs built for older kernels, which claim an entry by
/// deleting it. Userspace leaves such an entry alone: it is gone within the program run.
pub const PENDING_FLAG_SETTLING: u32 = 4;

/// What the kernel remembers about a request until it is answered, rejected or expired.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PendingRequest {
    /// `bpf_ktime_get_ns()` (`CLOCK_MONOTONIC`) when the request first left.
    pub first_sent_ns: u64,
    /// When it last left (retransmits move this; the deadline stays with `first_sent_ns`).
    pub last_sent_ns: u64,
    /// When the kernel put this request under a key still holding an earlier, unsettled
    /// request whose deadline had passed (a new TCP connection on a reused 4-tuple, a new DNS
    /// question on a reused port and id): that request's `first_sent_ns`, so userspace can
    /// count it unanswered if it had not yet. 0 otherwise. (An earlier request replaced
    /// before its deadline is counted `abandoned` by the kernel itself.)
    pub replaced_first_sent_ns: u64,
    /// TCP: the SYN's sequence number, to check the ACK of a SYN-ACK or RST and the
    /// sequence quoted in an ICMP error. 0 otherwise.
    pub tcp_seq: u32,
    /// [`PENDING_FLAG_LATE`], [`PENDING_FLAG_REJECTED`], [`PENDING_FLAG_SETTLING`]. The
    /// 8-byte word of `tcp_seq` and `flags` is what the programs compare-and-swap to settle
    /// an entry in place ([`PendingRequest::STATE_OFFSET`]).
    pub flags: u32,
    /// Interface the request left on.
    pub ifindex: u32,
    /// The target's slot in [`TARGETS_MAP`]: the answer path reaches the counters through an
    /// array index instead of a second hash lookup.
    pub target_slot: u32,
    /// How many bytes of `question` were captured (DNS; 8 for NTP).
    pub question_len: u16,
    /// TCP: bytes of data the SYN carried (TCP Fast Open): a SYN-ACK or RST may acknowledge
    /// anything from ISN + 1 to ISN + 1 + this. 0 otherwise.
    pub syn_payload_len: u16,
    /// NTP: the request's transmit timestamp, 8 bytes (so a new request whose timestamp
    /// folds to the same tag is told apart from a retransmit).
    /// DNS: the question section as sent on the wire (labels, then QTYPE), truncated to
    /// [`DNS_QUESTION_CAPTURE`] bytes. Untrusted bytes: escape before display.
    pub question: [u8; DNS_QUESTION_CAPTURE],
    /// Requests this host sent: the sending socket's cookie (`bpf_get_socket_cookie`) and
    /// cgroup v2 id (`bpf_skb_cgroup_id`), for userspace to name the process behind it
    /// ([`SOCKET_OWNERS_MAP`]). 0 when the packet had no socket (forwarded traffic) and for
    /// requests this host received.
    pub socket_cookie: u64,
    pub cgroup_id: u64,
}
const _: () = assert!(size_of::<PendingRequest>() == 136);
const _: () = assert!(
    PendingRequest::STATE_OFFSET.is_multiple_of(8)
        && core::mem::offset_of!(PendingRequest, flags) == PendingRequest::STATE_OFFSET + 4,
    "tcp_seq and flags must make one aligned 8-byte word, flags its high half"
);

impl PendingRequest {
    /// Offset of the aligned 8-byte word holding `tcp_seq` (low half) and `flags` (high
    /// half): `tcp_seq` never changes once the entry is in the table, so a compare-and-swap
    /// of the word changes `flags` only if nobody changed it since it was read.
    pub const STATE_OFFSET: usize = core::mem::offset_of!(PendingRequest, tcp_seq);

    /// A request first sent at `now_ns`, everything else zero, to be filled in place.
    #[must_use]
    pub const fn sent_at(now_ns: u64) -> Self {
        Self {
            first_sent_ns: now_ns,
            last_sent_ns: now_ns,
            replaced_first_sent_ns: 0,
            tcp_seq: 0,
            flags: 0,
            ifindex: 0,
            target_slot: 0,
            question_len: 0,
            syn_payload_len: 0,
            question: [0; DNS_QUESTION_CAPTURE],
            socket_cookie: 0,
            cgroup_id: 0,
        }
    }
}

/// A remote endpoint requests go to: (direction, proto, remote address, remote port).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetKey {
    pub remote: [u8; 16],
    /// The port asked for: the remote's ([`DIRECTION_EGRESS`]) or this host's
    /// ([`DIRECTION_INGRESS`]). 0 for ICMP.
    pub remote_port: u16,
    /// One of [`proto`].
    pub proto: u8,
    /// [`DIRECTION_EGRESS`] or [`DIRECTION_INGRESS`].
    pub direction: u8,
}
const _: () = assert!(size_of::<TargetKey>() == 20);

/// Number of [`Reason`] slots in [`TargetCounters::rejected_by_reason`].
pub const REASON_SLOTS: usize = 32;
/// Number of latency buckets in [`TargetCounters::latency`]; see [`latency_bucket`].
pub const LATENCY_BUCKETS: usize = 24;

/// Cumulative counters the kernel keeps for one target. Userspace turns their deltas into
/// outcomes; the kernel only ever increments them (atomically), so readers never see them go
/// backwards.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TargetCounters {
    /// Distinct requests (a retransmit is not a new request).
    pub requests: u64,
    pub retransmits: u64,
    /// Requests answered within the timeout.
    pub answered: u64,
    /// Requests rejected (TCP RST, ICMP unreachable) within the timeout.
    pub rejected: u64,
    /// Answers or rejections that came after the timeout (the request already counted as
    /// unanswered).
    pub late: u64,
    /// The rejections among `late`. They are also in `rejected_by_reason` (but not in
    /// `rejected`): a refusal is a refusal, however late, and its reason is kept.
    pub late_rejected: u64,
    /// Requests that could not be tracked because the pending table was full.
    pub untracked: u64,
    /// Requests given up by the client before their deadline: a new request took their key
    /// (a new TCP connection on the same 4-tuple, a new DNS question on the same port and
    /// id) while they were still in flight. Neither answered nor unanswered.
    pub abandoned: u64,
    /// When a request (or retransmit) to this target last left.
    pub last_request_ns: u64,
    /// When an answer or rejection last came back.
    pub last_answer_ns: u64,
    /// Requests this host sent: the socket cookie of the latest one sent from a socket (see
    /// [`PendingRequest::socket_cookie`]), so that userspace names the process behind a
    /// target whose requests are answered before it reads the pending table. 0: none yet.
    pub last_socket_cookie: u64,
    /// Requests of this target that this host dropped (its output chain for a request it
    /// sent, its input chain for one it received), as `skb:kfree_skb` reported them; every
    /// dropped copy counts (a retransmit too). A request this host sent and dropped before
    /// tc egress saw it was counted in `requests` by the drop program.
    pub requests_dropped_here: u64,
    /// Answers of this target that this host dropped: for a request it sent, an answer tc
    /// ingress counted in `answered` and that then died before the socket; for one it
    /// received, its answer dropped on the way out (tc egress never saw it).
    pub answers_dropped_here: u64,
    /// ICMP "fragmentation needed" and `ICMPv6` "packet too big" quoting a packet this host
    /// sent to this target (or, for a target of requests it received, to that peer), seen
    /// arriving: path-MTU discovery at work (RFC 1191, RFC 8201), not a rejection.
    pub path_mtu_signals: u64,
    /// The smallest MTU those reported; 0 when none came.
    pub path_mtu: u64,
    /// Of those signals, the ones this host then dropped (`skb:kfree_skb`): its own input
    /// chain keeping its TCP from learning the path MTU.
    pub path_mtu_dropped_here: u64,
    /// DNS answers that arrived in fragments (their first fragment seen): answers too large
    /// for the path, which a firewall that drops fragments loses.
    pub fragmented_answers: u64,
    /// `rejected` and `late_rejected`, split by [`Reason`] code.
    pub rejected_by_reason: [u64; REASON_SLOTS],
    /// Answer latency histogram; see [`latency_bucket`].
    pub latency: [u64; LATENCY_BUCKETS],
}
const _: () = assert!(size_of::<TargetCounters>() == 8 * (17 + REASON_SLOTS + LATENCY_BUCKETS));

/// The latency bucket of an answer that took `ns` nanoseconds. Bucket `b` holds latencies
/// below `latency_bucket_upper_ns(b)`: log2 buckets from 2 µs to 8.6 s, the last open-ended.
#[expect(
    clippy::inline_always,
    reason = "shared with the eBPF programs, where it must be inlined"
)]
#[inline(always)]
#[must_use]
pub const fn latency_bucket(ns: u64) -> usize {
    // floor(log2(ns)) - 10, clamped: the bit length of ns >> 11. Found in five halvings
    // whatever the latency (a loop of one shift per bit took 10 to 16 rounds for the
    // milliseconds real answers take), with a constant bound for the verifier.
    let mut v = ns >> 11;
    if v >= 1 << (LATENCY_BUCKETS - 1) {
        return LATENCY_BUCKETS - 1;
    }
    let mut bits = 0;
    if v >= 1 << 16 {
        v >>= 16;
        bits += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        bits += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        bits += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        bits += 2;
    }
    if v >= 1 << 1 {
        v >>= 1;
        bits += 1;
    }
    // v is 0 or 1: the top bit itself.
    #[expect(clippy::cast_possible_truncation, reason = "0 or 1")]
    let top = v as usize;
    bits + top
}

/// Upper bound (exclusive) of latency bucket `bucket` in nanoseconds; `u64::MAX` for the last.
#[must_use]
pub const fn latency_bucket_upper_ns(bucket: usize) -> u64 {
    if bucket >= LATENCY_BUCKETS - 1 {
        u64::MAX
    } else {
        1u64 << (bucket + 11)
    }
}

/// Why a request was rejected, as a code in `0..REASON_SLOTS`. Names follow iptables'
/// `--reject-with`.
pub struct Reason;

impl Reason {
    pub const TCP_RESET: u8 = 1;
    /// ICMP destination unreachable, code 0; code `c` ≤ 15 is `ICMP_UNREACH_BASE + c`.
    pub const ICMP_UNREACH_BASE: u8 = 2;
    pub const ICMP_UNREACH_OTHER: u8 = 18;
    /// `ICMPv6` destination unreachable, code 0; code `c` ≤ 7 is `ICMP6_UNREACH_BASE + c`.
    pub const ICMP6_UNREACH_BASE: u8 = 19;
    pub const ICMP6_UNREACH_OTHER: u8 = 27;

    /// Names indexed by code; unused slots are empty.
    pub const NAMES: [&'static str; REASON_SLOTS] = [
        "",
        "tcp-reset",
        "icmp-net-unreachable",
        "icmp-host-unreachable",
        "icmp-proto-unreachable",
        "icmp-port-unreachable",
        "icmp-frag-needed",
        "icmp-source-route-failed",
        "icmp-net-unknown",
        "icmp-host-unknown",
        "icmp-host-isolated",
        "icmp-net-prohibited",
        "icmp-host-prohibited",
        "icmp-net-tos-unreachable",
        "icmp-host-tos-unreachable",
        "icmp-admin-prohibited",
        "icmp-host-precedence-violation",
        "icmp-precedence-cutoff",
        "icmp-unreachable-other",
        "icmp6-no-route",
        "icmp6-adm-prohibited",
        "icmp6-beyond-scope",
        "icmp6-addr-unreachable",
        "icmp6-port-unreachable",
        "icmp6-policy-fail",
        "icmp6-reject-route",
        "icmp6-source-route-error",
        "icmp6-unreachable-other",
        "",
        "",
        "",
        "",
    ];

    /// Reason for an ICMP (v4) destination-unreachable with `code`.
    #[expect(
        clippy::inline_always,
        reason = "shared with the eBPF programs, where it must be inlined"
    )]
    #[inline(always)]
    #[must_use]
    pub const fn icmp_unreachable(code: u8) -> u8 {
        if code <= 15 {
            Self::ICMP_UNREACH_BASE + code
        } else {
            Self::ICMP_UNREACH_OTHER
        }
    }

    /// Reason for an `ICMPv6` destination-unreachable with `code`.
    #[expect(
        clippy::inline_always,
        reason = "shared with the eBPF programs, where it must be inlined"
    )]
    #[inline(always)]
    #[must_use]
    pub const fn icmp6_unreachable(code: u8) -> u8 {
        if code <= 7 {
            Self::ICMP6_UNREACH_BASE + code
        } else {
            Self::ICMP6_UNREACH_OTHER
        }
    }

    /// The name of `code`, or `None` for a code no program produces.
    #[must_use]
    pub fn name(code: usize) -> Option<&'static str> {
        match Self::NAMES.get(code) {
            Some(name) if !name.is_empty() => Some(name),
            _ => None,
        }
    }
}

/// Indexes into [`COUNTERS_MAP`]: things the programs saw but could not use. None of these
/// is on the common path; each one is shown in the report, the JSON and the metrics.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelCounter {
    /// A new request was not tracked: the pending table was full.
    PendingFull = 0,
    /// A new request was not tracked: the target table was full.
    TargetsFull = 1,
    /// A packet of a tracked kind was too short or malformed to use.
    Malformed = 2,
    /// An answer (DNS response, SYN-ACK, echo reply) matched no pending request.
    UnmatchedAnswer = 3,
    /// A rejection (RST, ICMP unreachable) matched no pending request.
    UnmatchedRejection = 4,
    /// A SYN-ACK, RST or quoted TCP header matched a flow but not its sequence numbers.
    InvalidAnswer = 5,
    /// A non-first IP fragment: it carries no transport header to inspect.
    Fragment = 6,
    /// An IPv6 packet with more extension headers than the programs walk.
    ExtensionHeaderLimit = 7,
    /// An ICMP error quoting too little of the original packet to identify the request.
    ShortQuote = 8,
    /// A request-shaped packet to a broadcast or multicast destination (the destination
    /// MAC's group bit, `224.0.0.0/4` and above, `ff00::/8`): answers come from other addresses,
    /// so it is not a request to any one target.
    NotUnicast = 9,
    /// A request still in flight replaced by a new one under the same key (see
    /// `TargetCounters::abandoned`).
    Abandoned = 10,
    /// A settled request's tombstone (rejected, or answered late) could not be put back: a
    /// retransmit of it would then count as a new request.
    TombstoneLost = 11,
    /// A second late answer or rejection for a request already answered late.
    LateDuplicate = 12,
    /// ICMP "fragmentation needed" or `ICMPv6` "packet too big": path-MTU signalling, not a
    /// rejection.
    PathMtu = 13,
    /// A request arriving for an address that is not this host's (passing through a router):
    /// not a request to this host.
    NotForThisHost = 14,
    /// A local drop of a watched packet whose (target, reason) pair did not fit in the
    /// local drops map: the drop is not counted by reason.
    LocalDropsFull = 15,
    /// An open socket's owner overwritten in the socket owners map by a newer socket's (their
    /// cookies share a slot): the host had [`SOCKET_OWNERS_CAPACITY`] newer sockets. The
    /// socket is attributed from `/proc` or not at all.
    SocketOwnerLost = 16,
    /// A connection with retransmissions could not be followed: the retransmissions map
    /// was full. Its stalls go unseen (never blamed).
    RetransmitsFull = 17,
    /// An Ethernet frame with more VLAN tags than the programs walk (two: 802.1Q, or
    /// 802.1ad and 802.1Q): not parsed.
    VlanTagLimit = 18,
}

impl KernelCounter {
    pub const COUNT: usize = 19;
    pub const ALL: [Self; Self::COUNT] = [
        Self::PendingFull,
        Self::TargetsFull,
        Self::Malformed,
        Self::UnmatchedAnswer,
        Self::UnmatchedRejection,
        Self::InvalidAnswer,
        Self::Fragment,
        Self::ExtensionHeaderLimit,
        Self::ShortQuote,
        Self::NotUnicast,
        Self::Abandoned,
        Self::TombstoneLost,
        Self::LateDuplicate,
        Self::PathMtu,
        Self::NotForThisHost,
        Self::LocalDropsFull,
        Self::SocketOwnerLost,
        Self::RetransmitsFull,
        Self::VlanTagLimit,
    ];

    /// Stable `snake_case` name used in JSON and metrics.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::PendingFull => "pending_table_full",
            Self::TargetsFull => "target_table_full",
            Self::Malformed => "malformed",
            Self::UnmatchedAnswer => "unmatched_answer",
            Self::UnmatchedRejection => "unmatched_rejection",
            Self::InvalidAnswer => "invalid_answer",
            Self::Fragment => "fragment",
            Self::ExtensionHeaderLimit => "ipv6_extension_limit",
            Self::ShortQuote => "short_icmp_quote",
            Self::NotUnicast => "not_unicast",
            Self::Abandoned => "abandoned",
            Self::TombstoneLost => "tombstone_lost",
            Self::LateDuplicate => "late_duplicate",
            Self::PathMtu => "path_mtu",
            Self::NotForThisHost => "not_for_this_host",
            Self::LocalDropsFull => "local_drops_full",
            Self::SocketOwnerLost => "socket_owner_lost",
            Self::RetransmitsFull => "retransmits_table_full",
            Self::VlanTagLimit => "vlan_tag_limit",
        }
    }

    /// Whether this counter means requests were lost to tracking (an eviction in the
    /// operator's sense) rather than a packet that was simply not ours.
    #[must_use]
    pub const fn is_loss(self) -> bool {
        matches!(self, Self::PendingFull | Self::TargetsFull)
    }
}

/// An IPv4 address as stored in keys: IPv4-mapped IPv6.
#[expect(
    clippy::inline_always,
    reason = "shared with the eBPF programs, where it must be inlined"
)]
#[inline(always)]
#[must_use]
pub const fn ipv4_mapped(addr: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
    ]
}

/// Whether `addr` is an IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`, see
/// [`ipv4_mapped`]). Compared as two words: a slice comparison compiles, in the eBPF
/// programs, to a call to `memcmp`, one more BPF function frame on the deepest call chain.
#[expect(
    clippy::inline_always,
    reason = "shared with the eBPF programs, where it must be inlined"
)]
#[inline(always)]
#[must_use]
pub const fn is_ipv4_mapped(addr: &[u8; 16]) -> bool {
    let head = u64::from_ne_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let prefix = u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]);
    head == 0 && prefix == u32::from_ne_bytes([0, 0, 0xff, 0xff])
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data: repr(C), integer fields only, padding is explicit.
    unsafe impl aya::Pod for super::RequestKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PendingRequest {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TargetKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TargetCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DropConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LocalDropKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SocketOwner {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RetransmitConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Retransmits {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_addresses_are_told_from_ipv6_ones() {
        assert!(is_ipv4_mapped(&ipv4_mapped([198, 51, 100, 10])));
        assert!(is_ipv4_mapped(&ipv4_mapped([0; 4])));
        let v6 = [
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4,
        ];
        assert!(!is_ipv4_mapped(&v6));
        let mut almost = ipv4_mapped([1, 2, 3, 4]);
        almost[9] = 1;
        assert!(!is_ipv4_mapped(&almost));
        assert!(!is_ipv4_mapped(&[0; 16]), "::, not mapped");
    }

    #[test]
    fn latency_buckets_are_log2_from_2us() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(2_047), 0);
        assert_eq!(latency_bucket(2_048), 1);
        assert_eq!(latency_bucket(4_095), 1);
        assert_eq!(latency_bucket(4_096), 2);
        assert_eq!(latency_bucket(1_000_000), 9); // 1 ms: [524 µs, 1.05 ms)
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
        // The bit length of ns >> 11, clamped, for every bit length and its neighbours.
        let bit_length = |ns: u64| {
            let v = ns >> 11;
            (64 - v.leading_zeros() as usize).min(LATENCY_BUCKETS - 1)
        };
        for shift in 0..64 {
            for ns in [1u64 << shift, (1u64 << shift) - 1, (1u64 << shift) + 1] {
                assert_eq!(latency_bucket(ns), bit_length(ns), "{ns}");
            }
        }
        for ns in [0, 1, 2_048, 99_999, 1 << 20, 3_000_000_000] {
            let b = latency_bucket(ns);
            assert!(ns < latency_bucket_upper_ns(b), "{ns} above its bucket {b}");
            if b > 0 {
                assert!(
                    ns >= latency_bucket_upper_ns(b - 1),
                    "{ns} below its bucket {b}"
                );
            }
        }
    }

    #[test]
    fn reason_codes_match_reject_with_names() {
        assert_eq!(Reason::name(Reason::TCP_RESET.into()), Some("tcp-reset"));
        let cases = [
            (0, "icmp-net-unreachable"),
            (1, "icmp-host-unreachable"),
            (2, "icmp-proto-unreachable"),
            (3, "icmp-port-unreachable"),
            (9, "icmp-net-prohibited"),
            (10, "icmp-host-prohibited"),
            (13, "icmp-admin-prohibited"),
            (200, "icmp-unreachable-other"),
        ];
        for (code, name) in cases {
            assert_eq!(
                Reason::name(Reason::icmp_unreachable(code).into()),
                Some(name)
            );
        }
        let cases6 = [
            (0, "icmp6-no-route"),
            (1, "icmp6-adm-prohibited"),
            (3, "icmp6-addr-unreachable"),
            (4, "icmp6-port-unreachable"),
            (99, "icmp6-unreachable-other"),
        ];
        for (code, name) in cases6 {
            assert_eq!(
                Reason::name(Reason::icmp6_unreachable(code).into()),
                Some(name)
            );
        }
        assert_eq!(Reason::name(0), None);
        assert_eq!(Reason::name(REASON_SLOTS), None);
    }

    #[test]
    fn ntp_tags_fold_the_timestamp() {
        assert_eq!(ntp_tag([0; 8]), 0);
        assert_eq!(ntp_tag([0x12, 0x34, 0, 0, 0, 0, 0, 0]), 0x1234);
        assert_eq!(ntp_tag([0x12, 0x34, 0x12, 0x34, 0, 0, 0xab, 0xcd]), 0xabcd);
        assert_ne!(
            ntp_tag([0xe9, 0, 1, 2, 3, 4, 5, 6]),
            ntp_tag([0xe9, 0, 1, 2, 3, 4, 5, 7])
        );
    }

    #[test]
    fn counters_are_listed_in_index_order() {
        for (index, counter) in KernelCounter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, index);
        }
    }

    #[test]
    fn request_target_drops_local_side() {
        let key = RequestKey {
            remote: ipv4_mapped([198, 51, 100, 2]),
            local: ipv4_mapped([203, 0, 113, 2]),
            remote_port: 53,
            local_port: 40_000,
            tag: 7,
            proto: proto::UDP,
            direction: DIRECTION_EGRESS,
        };
        let target = key.target();
        assert_eq!(target.remote, key.remote);
        assert_eq!(
            (target.remote_port, target.proto, target.direction),
            (53, 17, 0)
        );
        let inbound = RequestKey {
            direction: DIRECTION_INGRESS,
            ..key
        }
        .target();
        assert_eq!(
            (inbound.remote_port, inbound.direction),
            (40_000, DIRECTION_INGRESS),
            "an inbound request's target is this host's port asked for"
        );
    }
}

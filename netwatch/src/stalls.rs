//! Connections that open and then hang: path-MTU blackholes told apart from loss.
//!
//! Where a hop carries less than the segments this host sends and the ICMP "fragmentation
//! needed" / "packet too big" that would say so is filtered, TCP retransmits its large
//! segments again and again while small ones get through: the handshake was answered, the
//! connection hangs. The retransmission program (`netwatch-ebpf`'s `retransmits`) follows
//! each connection with retransmissions ([`Retransmits`]); this module judges them. Pure: the
//! kernel's entries and what the socket says now go in, judgements come out.
//!
//! A connection is a **path-MTU stall** when its head segment was retransmitted
//! [`STALL_RETRANSMITS`] times in a row at one size without getting through, or
//! [`LOWERED_AFTER`] times before the stack sent it smaller (`smallest_lost`), that size is
//! above the smallest MTU every path carries (576 bytes for IPv4, 1280 for IPv6), and
//! nothing that large ever got through on it (`largest_delivered`, see
//! [`largest_delivered`]). Everything else is not one:
//! - loss of every size (congestion, a lossy link, a peer that vanished): segments as large
//!   as those lost were acknowledged before, or small ones die too;
//! - a zero window (a receiver that stopped reading): the retransmissions are window probes,
//!   which the program does not count;
//! - a "packet too big" that arrived and was honoured: TCP lowers its segment size at once,
//!   and nothing stalls.
//!
//! A stalled connection whose head is then acknowledged (TCP lowered its segment size: its
//! own MTU probing, `tcp_mtu_probing=1`, or a late "packet too big") has **recovered**: it
//! is reported, and blames nobody.

use std::collections::HashMap;

#[cfg(doc)]
use netwatch_common::LOWERED_AFTER;
use netwatch_common::{
    DIRECTION_EGRESS, DIRECTION_INGRESS, Retransmits, STALL_RETRANSMITS, TargetKey, proto,
};

/// The smallest MTU every IPv4 path must carry (RFC 791: every host accepts 576-byte
/// datagrams) and every IPv6 path (RFC 8200 §5: 1280). A segment no larger dies of
/// something else.
pub(crate) const MIN_MTU_V4: u16 = 576;
pub(crate) const MIN_MTU_V6: u16 = 1280;

/// A connection idle this long (no retransmission) is forgotten once judged: TCP gives up
/// on a stalled connection after about 15 minutes (`tcp_retries2`), and a finished one
/// retransmits nothing more.
pub(crate) const FORGET_AFTER_NS: u64 = 20 * 60 * 1_000_000_000;

/// What a connection's retransmissions say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Judgement {
    /// Nothing lost often enough to say anything.
    Undecided,
    /// Segments died, but not by size: loss, or a peer gone.
    NotPathMtu,
    /// Segments above a size die, smaller ones get through, and the head is still stuck.
    Stalled(Sizes),
    /// It stalled so, then its head got through (TCP lowered its segment size).
    Recovered(Sizes),
}

/// Sizes on the wire (IP and TCP headers and payload) of one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sizes {
    /// The largest known to have been acknowledged; `None` when no segment with data was
    /// (only the handshake got through).
    pub largest_delivered: Option<u16>,
    /// The smallest that never got through.
    pub smallest_lost: u16,
}

/// Who opened a connection, which its totals depend on: `bytes_acked` counts this host's
/// SYN when it opened the connection, not its SYN-ACK when the peer did (the passive side
/// sets `snd_una` past it without counting); `delivered` counts the handshake's segment on
/// both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Opened {
    Here,
    ByPeer,
}

/// Data acknowledged on the connection: (bytes, segments). Not knowing who opened it, the
/// handshake's byte is taken off (the smaller count).
fn acknowledged(c: &Retransmits, opened: Option<Opened>) -> (u64, u64) {
    let handshake = u64::from(opened != Some(Opened::ByPeer));
    (
        c.bytes_acked.saturating_sub(handshake),
        u64::from(c.delivered.saturating_sub(1)),
    )
}

/// The largest segment known to have been acknowledged on the connection: the largest
/// retransmitted one acknowledged later, or a lower bound from its totals, whichever is
/// larger (at least one data segment was at least their average).
#[must_use]
pub(crate) fn largest_delivered(c: &Retransmits, opened: Option<Opened>) -> Option<u16> {
    let (bytes, segments) = acknowledged(c, opened);
    let average = (segments > 0)
        .then(|| bytes / segments)
        .and_then(|payload| u16::try_from(payload).ok())
        .filter(|payload| *payload > 0)
        .map(|payload| payload.saturating_add(c.header_len));
    let retransmitted = (c.largest_delivered > 0).then_some(c.largest_delivered);
    average.max(retransmitted)
}

/// Data segments acknowledged from which a bulk transfer is told.
pub(crate) const BULK_SEGMENTS: u64 = 8;

/// Whether the connection moved bulk data at close to the size that later died: at least
/// [`BULK_SEGMENTS`] segments averaging 90 % of it. The average alone proves no segment that
/// large got through (a greeting drags it down), but a path whose MTU is below `lost` never
/// carried such a transfer: TCP sends its full segments first, and they would have died
/// then. What dies after it is a path or a peer that changed (a firewall that forgot the
/// connection, a peer gone), not the MTU.
fn bulk_got_through(c: &Retransmits, opened: Option<Opened>, lost: u16) -> bool {
    // What got through before the first stall: after a recovery, TCP moves the rest at the
    // sizes that pass, which says nothing of the path before.
    let before = Retransmits {
        bytes_acked: c.stall_bytes_acked,
        delivered: c.stall_delivered,
        ..*c
    };
    let (bytes, segments) = acknowledged(&before, opened);
    let lost_payload = u64::from(lost.saturating_sub(c.header_len));
    segments >= BULK_SEGMENTS && bytes * 10 >= segments * lost_payload * 9
}

/// The smallest MTU a path of the connection's family must carry.
#[must_use]
pub(crate) fn min_mtu(remote: &[u8; 16]) -> u16 {
    if netwatch_common::is_ipv4_mapped(remote) {
        MIN_MTU_V4
    } else {
        MIN_MTU_V6
    }
}

/// How many more retransmissions at the stalled size TCP's own black-hole detection
/// (`net.ipv4.tcp_mtu_probing`) needs to lower its segment size: it acts once the
/// retransmissions have lasted as long as `tcp_retries1` (3) would take, which on a local
/// network is about when [`STALL_RETRANSMITS`] have happened; the next one goes out smaller.
/// (Over a longer path it acts sooner, by count: the lowered size shows the stall then.)
pub(crate) const PROBING_GRACE: u16 = 2;

/// Judges one connection; `progressed` when the socket says bytes were acknowledged since
/// the program last saw a retransmission (its head got through without a retransmission
/// to show it). `probing`: the host has TCP's black-hole detection on
/// (`net.ipv4.tcp_mtu_probing`), so a stall is only one once TCP had its chance to lower
/// the segment size and did not get through either: before that it is [`Judgement::Undecided`],
/// and a recovery reports the stall with it.
#[must_use]
pub(crate) fn judge(
    c: &Retransmits,
    opened: Option<Opened>,
    progressed: bool,
    probing: bool,
) -> Judgement {
    if c.stalls == 0 || c.smallest_lost == 0 {
        return Judgement::Undecided;
    }
    let mut largest_delivered = largest_delivered(c, opened);
    if progressed && c.head_stalled != 0 {
        // The head was acknowledged after its last retransmission, at the size it last went
        // out at: the connection's totals, read at that retransmission, do not show it yet.
        largest_delivered = largest_delivered.max(Some(c.head_size));
    }
    let lost = c.smallest_lost;
    if lost <= min_mtu(&c.remote)
        || largest_delivered.is_some_and(|d| d >= lost)
        || bulk_got_through(c, opened, lost)
    {
        return Judgement::NotPathMtu;
    }
    let sizes = Sizes {
        largest_delivered,
        smallest_lost: lost,
    };
    if c.head_stalled != 0 && !progressed {
        // TCP's probing has yet to lower the size, or its smaller try has yet to fail.
        let tcp_still_trying = probing
            && c.stalls < 2
            && ((c.head_size == lost && c.head_count < STALL_RETRANSMITS + PROBING_GRACE)
                || (c.head_size < lost && c.head_count < STALL_RETRANSMITS));
        if tcp_still_trying {
            Judgement::Undecided
        } else {
            Judgement::Stalled(sizes)
        }
    } else if c.recoveries > 0 || progressed {
        Judgement::Recovered(sizes)
    } else {
        // A stall whose head was dropped by the stack (the connection reset, say) without
        // being acknowledged: it stalled, and never recovered.
        Judgement::Stalled(sizes)
    }
}

/// Whether the connection still stalls, so that its socket is worth asking about: its head,
/// at any size, is stuck (TCP may have got it through at a lowered size and had nothing more
/// to retransmit since).
#[must_use]
pub(crate) fn worth_asking(c: &Retransmits) -> bool {
    c.head_stalled != 0
}

/// The target a connection counts towards: the one of requests this host received (`remote`
/// asked for this host's `local_port`) when netwatch saw that handshake, else the one of
/// requests it sent. `None` when netwatch follows neither: a connection opened before it
/// started, or over an interface it does not watch.
#[must_use]
pub(crate) fn target_of(c: &Retransmits, exists: impl Fn(&TargetKey) -> bool) -> Option<TargetKey> {
    let inbound = TargetKey {
        remote: c.remote,
        remote_port: c.local_port,
        proto: proto::TCP,
        direction: DIRECTION_INGRESS,
    };
    let outbound = TargetKey {
        remote: c.remote,
        remote_port: c.remote_port,
        proto: proto::TCP,
        direction: DIRECTION_EGRESS,
    };
    [inbound, outbound].into_iter().find(|key| exists(key))
}

/// A change in a connection's judgement that its target must count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// A connection of the target stalled (counted once per connection).
    Stalled(Sizes),
    /// A stalled connection of the target recovered.
    Recovered(Sizes),
    /// A connection counted as stalled turned out not to be one: the size that died later
    /// got through (loss, not the path's MTU). Its stall is taken back.
    TakenBack,
}

/// What is remembered of a connection between polls.
#[derive(Clone, Copy, Debug)]
struct Followed {
    /// The program's `first_ns`: a new connection at a reused socket address has another.
    first_ns: u64,
    target: Option<TargetKey>,
    stalled: bool,
    recovered: bool,
    /// Judged not a path-MTU problem (counted once).
    loss: bool,
}

/// What became of the connections with retransmissions, since the start (each counted
/// once): the summary shows them, so that "no stall" can be told from "nothing seen".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StallStats {
    /// Connections the retransmission program followed (in netwatch's namespace, watched
    /// interfaces or not).
    pub followed: u64,
    /// Of those, the ones counted towards a target: stalled for the path's MTU, recovered,
    /// and lost segments for other reasons (loss, a peer gone).
    pub path_mtu_stalls: u64,
    pub recovered: u64,
    pub not_path_mtu: u64,
}

/// The connections followed, and what has been counted of each.
#[derive(Debug, Default)]
pub(crate) struct Stalls {
    followed: HashMap<u64, Followed>,
    stats: StallStats,
}

/// What one poll of the connections gives: changes to count per target, and the sockets to
/// stop following.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Polled {
    pub changes: Vec<(TargetKey, Change)>,
    pub forget: Vec<u64>,
}

impl Stalls {
    #[must_use]
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// What became of the connections followed so far.
    #[must_use]
    pub(crate) fn stats(&self) -> StallStats {
        self.stats
    }

    /// Takes in the program's entries at `now_ns`. `exists` says which targets netwatch
    /// follows; `progressed` whether a still stalled connection's socket reports bytes
    /// acknowledged since the entry's last retransmission; `probing` whether TCP's black-hole
    /// detection is on (see [`judge`]).
    pub(crate) fn poll(
        &mut self,
        now_ns: u64,
        entries: &[(u64, Retransmits)],
        exists: impl Fn(&TargetKey) -> bool,
        mut progressed: impl FnMut(&Retransmits) -> bool,
        probing: bool,
    ) -> Polled {
        let mut polled = Polled::default();
        for (socket, c) in entries {
            let known = self
                .followed
                .get(socket)
                .filter(|f| f.first_ns == c.first_ns)
                .copied();
            if known.is_none() {
                self.stats.followed += 1;
            }
            let mut followed = known.unwrap_or(Followed {
                first_ns: c.first_ns,
                target: None,
                stalled: false,
                recovered: false,
                loss: false,
            });
            if followed.target.is_none() {
                followed.target = target_of(c, &exists);
            }
            let asked = !followed.recovered && worth_asking(c) && progressed(c);
            let opened = followed.target.map(|t| {
                if t.direction == DIRECTION_INGRESS {
                    Opened::ByPeer
                } else {
                    Opened::Here
                }
            });
            let judgement = judge(c, opened, asked, probing);
            if let Some(target) = followed.target {
                let (stalled, recovered) = match judgement {
                    Judgement::Stalled(sizes) => (Some(sizes), None),
                    Judgement::Recovered(sizes) => (Some(sizes), Some(sizes)),
                    Judgement::NotPathMtu => {
                        if followed.stalled {
                            followed.stalled = false;
                            followed.recovered = false;
                            self.stats.path_mtu_stalls -= 1;
                            polled.changes.push((target, Change::TakenBack));
                        }
                        if !followed.loss {
                            followed.loss = true;
                            self.stats.not_path_mtu += 1;
                        }
                        (None, None)
                    }
                    Judgement::Undecided => (None, None),
                };
                if let Some(sizes) = stalled.filter(|_| !followed.stalled) {
                    followed.stalled = true;
                    self.stats.path_mtu_stalls += 1;
                    polled.changes.push((target, Change::Stalled(sizes)));
                }
                if let Some(sizes) = recovered.filter(|_| !followed.recovered) {
                    followed.recovered = true;
                    self.stats.recovered += 1;
                    polled.changes.push((target, Change::Recovered(sizes)));
                }
            }
            if now_ns.saturating_sub(c.last_ns) > FORGET_AFTER_NS {
                polled.forget.push(*socket);
                self.followed.remove(socket);
            } else {
                self.followed.insert(*socket, followed);
            }
        }
        // Entries gone from the kernel's map (forgotten, or replaced) are gone here too.
        if self.followed.len() > entries.len() {
            let present: std::collections::HashSet<u64> =
                entries.iter().map(|(socket, _)| *socket).collect();
            self.followed.retain(|socket, _| present.contains(socket));
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use netwatch_common::{Retransmission, ipv4_mapped};

    use super::*;

    const S: u64 = 1_000_000_000;
    /// IPv4 with timestamps: 20 + 32 bytes of headers, 1448 of payload.
    const HEADERS: u16 = 52;
    const FULL: u16 = 1500;

    fn connection() -> Retransmits {
        Retransmits::new(
            ipv4_mapped([198, 51, 100, 10]),
            ipv4_mapped([203, 0, 113, 2]),
            (5001, 40_000),
            HEADERS,
            S,
        )
    }

    /// A retransmission of `seq` at `size`, with `snd_una` and the socket's totals.
    fn event(seq: u32, size: u16, snd_una: u32, acked: u64, delivered: u32) -> Retransmission {
        Retransmission {
            seq,
            size,
            snd_una,
            window_limited: false,
            now_ns: 2 * S,
            mss: 1448,
            delivered,
            bytes_acked: acked,
        }
    }

    /// [`event`] after the stack lowered its segment size to `size`.
    fn lowered(seq: u32, size: u16, snd_una: u32, acked: u64, delivered: u32) -> Retransmission {
        Retransmission {
            mss: u32::from(size - HEADERS),
            ..event(seq, size, snd_una, acked, delivered)
        }
    }

    /// "hello" got through, then every full-size segment dies at the head.
    fn stalled_upload() -> Retransmits {
        let mut c = connection();
        for _ in 0..5 {
            c.record(&event(1006, FULL, 1006, 6, 2));
        }
        c
    }

    #[test]
    fn large_segments_dying_while_small_ones_passed_are_a_stall() {
        let c = stalled_upload();
        assert_eq!((c.stalls, c.head_stalled, c.smallest_lost), (1, 1, FULL));
        assert_eq!(
            judge(&c, Some(Opened::Here), false, false),
            Judgement::Stalled(Sizes {
                largest_delivered: Some(5 + HEADERS),
                smallest_lost: FULL
            })
        );
    }

    #[test]
    fn three_losses_in_a_row_are_not_yet_a_stall() {
        let mut c = connection();
        for _ in 0..STALL_RETRANSMITS - 1 {
            c.record(&event(1006, FULL, 1006, 6, 2));
        }
        assert_eq!(
            judge(&c, Some(Opened::Here), false, false),
            Judgement::Undecided
        );
    }

    #[test]
    fn nothing_but_the_handshake_through_is_a_stall_with_no_delivered_size() {
        let mut c = connection();
        for _ in 0..4 {
            c.record(&event(1, FULL, 1, 0, 1));
        }
        assert_eq!(
            judge(&c, Some(Opened::Here), false, false),
            Judgement::Stalled(Sizes {
                largest_delivered: None,
                smallest_lost: FULL
            })
        );
    }

    #[test]
    fn a_peer_gone_after_large_segments_got_through_is_no_stall() {
        // 100 full segments acknowledged (and the SYN), then everything dies.
        let mut c = connection();
        for _ in 0..6 {
            c.record(&event(144_801, FULL, 144_801, 144_801, 101));
        }
        assert_eq!(
            largest_delivered(&c, Some(Opened::Here)),
            Some(1448 + HEADERS)
        );
        assert_eq!(
            judge(&c, Some(Opened::Here), false, false),
            Judgement::NotPathMtu
        );
    }

    #[test]
    fn a_peer_gone_after_a_bulk_transfer_is_no_stall_even_with_a_greeting_first() {
        // "hello" and 300,000 bytes in full segments got through (the average is below a
        // full segment), then the peer vanished.
        let mut c = connection();
        for _ in 0..6 {
            c.record(&event(300_008, FULL, 300_008, 300_007, 209));
        }
        assert!(largest_delivered(&c, Some(Opened::Here)) < Some(FULL));
        assert_eq!(
            judge(&c, Some(Opened::Here), false, false),
            Judgement::NotPathMtu
        );
    }

    #[test]
    fn a_connection_this_host_accepted_counts_no_handshake_byte() {
        // A server's "ok\n" got through: 3 bytes acknowledged, the SYN-ACK not counted.
        let mut c = connection();
        for _ in 0..4 {
            c.record(&event(4, FULL, 4, 3, 2));
        }
        assert_eq!(
            largest_delivered(&c, Some(Opened::ByPeer)),
            Some(3 + HEADERS)
        );
        assert_eq!(
            largest_delivered(&c, None),
            Some(2 + HEADERS),
            "the smaller, unknowing"
        );
    }

    #[test]
    fn small_segments_dying_are_no_path_mtu_problem() {
        let mut c = connection();
        for _ in 0..6 {
            c.record(&event(6, 300, 6, 6, 2));
        }
        assert_eq!(c.stalls, 1);
        assert_eq!(
            judge(&c, Some(Opened::Here), false, false),
            Judgement::NotPathMtu,
            "300 < 576"
        );
        let mut v6 = Retransmits::new([0x20; 16], [0x20; 16], (443, 50_000), 72, S);
        for _ in 0..6 {
            v6.record(&event(6, 1200, 6, 0, 1));
        }
        assert_eq!(
            judge(&v6, Some(Opened::Here), false, false),
            Judgement::NotPathMtu,
            "1200 < 1280"
        );
    }

    #[test]
    fn a_zero_window_is_probed_not_lost() {
        let mut c = connection();
        for _ in 0..10 {
            c.record(&Retransmission {
                window_limited: true,
                ..event(1006, FULL, 1006, 6, 2)
            });
        }
        assert_eq!((c.window_limited, c.stalls, c.head_count), (10, 0, 0));
        assert_eq!(
            judge(&c, Some(Opened::Here), false, false),
            Judgement::Undecided
        );
    }

    #[test]
    fn retransmissions_past_the_head_say_nothing_of_it() {
        let mut c = connection();
        for seq in [2454, 3902, 5350, 6798, 8246] {
            c.record(&event(seq, FULL, 1006, 6, 2));
        }
        assert_eq!((c.retransmits, c.head_count, c.stalls), (5, 0, 0));
    }

    #[test]
    fn the_stack_lowering_its_segment_size_then_getting_through_is_a_recovery() {
        // tcp_mtu_probing=1: four full-size attempts, then 1076 bytes, acknowledged: the next
        // head is further on.
        let mut c = stalled_upload();
        c.record(&lowered(1006, 1076, 1006, 6, 2));
        assert_eq!((c.head_size, c.head_count, c.head_stalled), (1076, 1, 1));
        c.record(&lowered(2030, 1076, 2030, 1030, 3));
        assert_eq!(
            (c.recoveries, c.largest_delivered, c.head_stalled),
            (1, 1076, 0)
        );
        assert_eq!(
            judge(&c, Some(Opened::Here), false, false),
            Judgement::Recovered(Sizes {
                largest_delivered: Some(1076),
                smallest_lost: FULL
            })
        );
    }

    #[test]
    fn with_tcp_probing_on_a_stall_waits_for_tcp_to_try_smaller() {
        let mut c = stalled_upload();
        assert_eq!(c.head_count, 5);
        assert_eq!(
            judge(&c, Some(Opened::Here), false, true),
            Judgement::Undecided
        );
        // TCP lowered its size and got through: the stall and the recovery, no blame left.
        let mut recovered = c;
        recovered.record(&lowered(1006, 1076, 1006, 6, 2));
        assert_eq!(
            judge(&recovered, Some(Opened::Here), false, true),
            Judgement::Undecided,
            "the smaller try is on its way"
        );
        recovered.record(&lowered(2030, 1076, 2030, 1030, 3));
        assert!(matches!(
            judge(&recovered, Some(Opened::Here), false, true),
            Judgement::Recovered(_)
        ));
        // It did not lower it: a stall after all.
        c.record(&event(1006, FULL, 1006, 6, 2));
        assert!(matches!(
            judge(&c, Some(Opened::Here), false, true),
            Judgement::Stalled(_)
        ));
        // Smaller did not get through either: a stall.
        let mut smaller = stalled_upload();
        for _ in 0..4 {
            smaller.record(&lowered(1006, 1076, 1006, 6, 2));
        }
        assert!(matches!(
            judge(&smaller, Some(Opened::Here), false, true),
            Judgement::Stalled(_)
        ));
    }

    #[test]
    fn tcp_lowering_its_size_after_three_full_size_tries_is_a_stall_then_a_recovery() {
        // A long path: TCP's black-hole detection acts after ~3 s, at the fourth try.
        let mut c = connection();
        for _ in 0..3 {
            c.record(&event(1006, FULL, 1006, 6, 2));
        }
        assert_eq!((c.stalls, c.head_stalled), (0, 0), "not yet");
        c.record(&lowered(1006, 1076, 1006, 6, 2));
        assert_eq!((c.stalls, c.head_stalled, c.smallest_lost), (1, 1, FULL));
        assert!(worth_asking(&c), "the smaller try may get through silently");
        assert_eq!(
            judge(&c, Some(Opened::Here), false, true),
            Judgement::Undecided,
            "the smaller try is on its way"
        );
        assert!(matches!(
            judge(&c, Some(Opened::Here), true, true),
            Judgement::Recovered(_)
        ));
        c.record(&lowered(2030, 1076, 2030, 1030, 3));
        assert_eq!(
            judge(&c, Some(Opened::Here), false, true),
            Judgement::Recovered(Sizes {
                largest_delivered: Some(1076),
                smallest_lost: FULL
            })
        );
        assert_eq!(c.stalls, 1);
    }

    #[test]
    fn a_size_lowered_after_one_try_or_after_a_counted_stall_adds_no_stall() {
        // A "packet too big" arriving after the first retransmission.
        let mut c = connection();
        c.record(&event(1006, FULL, 1006, 6, 2));
        c.record(&lowered(1006, 1428, 1006, 6, 2));
        assert_eq!((c.stalls, c.head_stalled, c.smallest_lost), (0, 0, 0));
        // Four at full size counted the stall already; lowering then is not a second one.
        let mut counted = stalled_upload();
        counted.record(&lowered(1006, 1076, 1006, 6, 2));
        assert_eq!((counted.stalls, counted.smallest_lost), (1, FULL));
        // Raised again (TCP probing upwards): no stall either.
        let mut raised = connection();
        for _ in 0..3 {
            raised.record(&event(1006, 1076, 1006, 6, 2));
        }
        raised.record(&event(1006, FULL, 1006, 6, 2));
        assert_eq!((raised.stalls, raised.head_stalled), (0, 0));
        // Shrunk by the SACK blocks this host sends (12 bytes of options for one), its
        // segment size unchanged: loss both ways, not a size that died.
        let mut sacking = connection();
        for _ in 0..3 {
            sacking.record(&event(1006, FULL, 1006, 6, 2));
        }
        sacking.record(&event(1006, FULL - 12, 1006, 6, 2));
        assert_eq!((sacking.stalls, sacking.head_stalled), (0, 0));
    }

    #[test]
    fn the_socket_showing_progress_after_a_smaller_try_is_a_recovery_at_that_size() {
        // TCP lowered its size and the head got through, with nothing retransmitted since
        // to show it: the socket's totals do, and the size it got through at is the head's.
        let mut c = stalled_upload();
        c.record(&lowered(1006, 1076, 1006, 6, 2));
        assert!(worth_asking(&c));
        assert_eq!(
            judge(&c, Some(Opened::Here), true, false),
            Judgement::Recovered(Sizes {
                largest_delivered: Some(1076),
                smallest_lost: FULL
            })
        );
        // Never retransmitted at full size since "hello": the totals read then say only that.
        assert_eq!(largest_delivered(&c, Some(Opened::Here)), Some(5 + HEADERS));
    }

    #[test]
    fn the_socket_showing_progress_at_the_size_that_stalled_was_loss() {
        // Four full-size tries lost, then the head got through at full size (a link down for
        // a while): that size passes, so the stall was loss.
        let c = stalled_upload();
        assert!(worth_asking(&c));
        assert_eq!(
            judge(&c, Some(Opened::Here), true, false),
            Judgement::NotPathMtu
        );
    }

    #[test]
    fn a_head_lost_four_times_then_delivered_at_the_same_size_was_loss() {
        // Random loss: the fifth attempt gets through; the size that "died" got through.
        let mut c = stalled_upload();
        c.record(&event(2454, FULL, 2454, 1454, 3));
        assert_eq!((c.recoveries, c.largest_delivered), (1, FULL));
        assert_eq!(
            judge(&c, Some(Opened::Here), false, false),
            Judgement::NotPathMtu
        );
    }

    #[test]
    fn connections_count_towards_the_target_netwatch_follows() {
        let c = connection();
        let outbound = TargetKey {
            remote: c.remote,
            remote_port: 5001,
            proto: proto::TCP,
            direction: DIRECTION_EGRESS,
        };
        let inbound = TargetKey {
            remote_port: 40_000,
            direction: DIRECTION_INGRESS,
            ..outbound
        };
        assert_eq!(target_of(&c, |k| *k == outbound), Some(outbound));
        assert_eq!(target_of(&c, |k| *k == inbound), Some(inbound));
        assert_eq!(target_of(&c, |_| false), None);
    }

    #[test]
    fn each_connection_stalls_once_and_recovers_once() {
        let mut stalls = Stalls::new();
        let c = stalled_upload();
        let target = target_of(&c, |_| true).unwrap();
        let first = stalls.poll(3 * S, &[(0xabc, c)], |_| true, |_| false, false);
        assert_eq!(first.changes.len(), 1);
        assert!(matches!(first.changes[0], (t, Change::Stalled(_)) if t == target));
        let again = stalls.poll(4 * S, &[(0xabc, c)], |_| true, |_| false, false);
        assert!(again.changes.is_empty(), "{again:?}");
        // TCP got the head through smaller, with nothing retransmitted since to show it.
        let mut c = c;
        c.record(&lowered(1006, 1076, 1006, 6, 2));
        let recovered = stalls.poll(5 * S, &[(0xabc, c)], |_| true, |_| true, false);
        assert!(matches!(recovered.changes[..], [(_, Change::Recovered(_))]));
        let after = stalls.poll(6 * S, &[(0xabc, c)], |_| true, |_| false, false);
        assert!(after.changes.is_empty(), "{after:?}");
        // Idle for longer than TCP keeps trying: forgotten.
        let late = stalls.poll(
            c.last_ns + FORGET_AFTER_NS + 1,
            &[(0xabc, c)],
            |_| true,
            |_| false,
            false,
        );
        assert_eq!(late.forget, vec![0xabc]);
    }

    #[test]
    fn a_stall_that_turns_out_to_be_loss_is_taken_back() {
        let mut stalls = Stalls::new();
        let mut c = stalled_upload();
        assert_eq!(
            stalls
                .poll(3 * S, &[(1, c)], |_| true, |_| false, false)
                .changes
                .len(),
            1
        );
        c.record(&event(2454, FULL, 2454, 1454, 3));
        let polled = stalls.poll(4 * S, &[(1, c)], |_| true, |_| false, false);
        assert!(
            matches!(polled.changes[..], [(_, Change::TakenBack)]),
            "{polled:?}"
        );
    }

    #[test]
    fn a_stall_and_its_recovery_between_two_polls_both_count() {
        let mut c = stalled_upload();
        c.record(&lowered(1006, 1076, 1006, 6, 2));
        c.record(&lowered(2030, 1076, 2030, 1030, 3));
        let polled = Stalls::new().poll(3 * S, &[(1, c)], |_| true, |_| false, false);
        assert!(matches!(
            polled.changes[..],
            [(_, Change::Stalled(_)), (_, Change::Recovered(_))]
        ));
    }

    #[test]
    fn a_new_connection_at_a_reused_socket_address_is_judged_anew() {
        let mut stalls = Stalls::new();
        let c = stalled_upload();
        assert_eq!(
            stalls
                .poll(3 * S, &[(7, c)], |_| true, |_| false, false)
                .changes
                .len(),
            1
        );
        let mut newer = stalled_upload();
        newer.first_ns = 10 * S;
        assert_eq!(
            stalls
                .poll(11 * S, &[(7, newer)], |_| true, |_| false, false)
                .changes
                .len(),
            1
        );
    }

    #[test]
    fn connections_netwatch_does_not_follow_count_nowhere() {
        let polled =
            Stalls::new().poll(3 * S, &[(1, stalled_upload())], |_| false, |_| false, false);
        assert!(polled.changes.is_empty());
    }
}

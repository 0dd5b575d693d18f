//! Finding unanswered requests in the kernel's pending table.
//!
//! The kernel deletes a pending entry when its answer or rejection arrives in time, so
//! whatever is still there after `timeout` went unanswered. Userspace counts such an entry
//! once and leaves it in place as a tombstone for a while: a SYN retransmitted a minute later
//! is the same request (the kernel sees the entry and counts a retransmit), not a new one.

use std::collections::HashMap;

use foldhash::fast::RandomState;

use netwatch_common::{
    PENDING_FLAG_LATE, PENDING_FLAG_REJECTED, PendingRequest, RequestKey, TargetKey,
};

/// How long after its deadline an entry is surely not about to be resolved by the kernel.
///
/// The kernel reads the clock and deletes the entry within one program run (microseconds,
/// with preemption disabled); waiting this much longer than the deadline rules out counting a
/// request unanswered that the kernel is at that instant counting answered.
pub const EXPIRY_MARGIN_NS: u64 = 20_000_000;

/// How long a counted entry stays after the request was last (re)sent. Linux retransmits a
/// SYN up to 32 s after the previous one with default settings, and resolvers retry within
/// seconds; a retransmit later than this counts as a new request.
pub const TOMBSTONE_IDLE_NS: u64 = 70_000_000_000;

/// Above this share of the table's capacity, tombstones are removed as soon as counted so
/// that new requests keep finding room.
const PRESSURE_PERCENT: usize = 75;

/// Above this share of the table's capacity, the table is walked every other poll. The walk
/// costs the kernel about 250 ns an entry: four full-table walks a second were half of
/// netwatch's CPU under a request storm. A request is then judged at most one poll later.
const BUSY_PERCENT: usize = 25;

#[derive(Clone, Copy, Debug)]
pub struct SweepPolicy {
    pub timeout_ns: u64,
    pub capacity: usize,
}

/// What a sweep decides for one pending entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Still within its deadline (plus margin): leave it to the kernel.
    InFlight,
    /// Just went unanswered: count it, keep it as a tombstone.
    Unanswered,
    /// Counted before; kept so retransmits are still recognised.
    Tombstone,
    /// Counted before and no longer useful: remove it from the table.
    Remove,
}

/// The fate of `entry` at `now_ns`, given whether it was already counted unanswered.
///
/// An entry flagged [`netwatch_common::PENDING_FLAG_SETTLING`] is being deleted by the
/// kernel this instant: judged as it stands (an answer in time is in flight, an expired
/// request a new exchange is replacing went unanswered, which the replacing entry's
/// `replaced_first_sent_ns` does not count twice).
#[must_use]
pub fn fate(
    policy: &SweepPolicy,
    now_ns: u64,
    entry: &PendingRequest,
    counted: bool,
    under_pressure: bool,
) -> Fate {
    let idle = now_ns.saturating_sub(entry.last_sent_ns);
    if entry.flags & PENDING_FLAG_REJECTED != 0 {
        // Settled by the kernel; kept only to recognise retransmits.
        return if under_pressure || idle > TOMBSTONE_IDLE_NS {
            Fate::Remove
        } else {
            Fate::Tombstone
        };
    }
    let deadline = entry
        .first_sent_ns
        .saturating_add(policy.timeout_ns)
        .saturating_add(EXPIRY_MARGIN_NS);
    if now_ns < deadline {
        return Fate::InFlight;
    }
    if !counted {
        return Fate::Unanswered;
    }
    // A late answer ends the exchange: no retransmit will follow.
    let answered_late = entry.flags & PENDING_FLAG_LATE != 0;
    if under_pressure || answered_late || idle > TOMBSTONE_IDLE_NS {
        Fate::Remove
    } else {
        Fate::Tombstone
    }
}

/// What one sweep found.
#[derive(Debug, Default)]
pub struct SweepOutcome {
    /// Requests that went unanswered since the last sweep.
    pub unanswered: Vec<(RequestKey, PendingRequest)>,
    /// Entries to delete from the kernel table, each with the first send time of the
    /// request read: if the kernel put a new request under the key meanwhile, it must stay.
    pub remove: Vec<(RequestKey, u64)>,
    /// Requests still within their deadline.
    pub in_flight: usize,
    /// The same, by target.
    pub in_flight_by_target: HashMap<TargetKey, u64, RandomState>,
    /// Counted entries kept for retransmit detection.
    pub tombstones: usize,
}

/// Remembers which pending entries were already counted, across sweeps.
#[derive(Debug)]
pub struct Sweeper {
    policy: SweepPolicy,
    /// Counted entries, with the first send time of the request counted: an entry whose
    /// time differs is a new request that the kernel put under the same key (a new TCP
    /// connection on a reused 4-tuple).
    counted: HashMap<RequestKey, u64, RandomState>,
    /// Requests the kernel replaced after their deadline (see
    /// [`PendingRequest::replaced_first_sent_ns`]) and that were counted from the entry that
    /// replaced them: key → the replaced request's first send time.
    counted_replaced: HashMap<RequestKey, u64, RandomState>,
    /// The next sweep's `counted`, its capacity kept: the two maps trade places each sweep
    /// rather than one of tens of thousands of entries being built and freed four times a
    /// second (holes that grew the heap with each burst).
    spare_counted: HashMap<RequestKey, u64, RandomState>,
    /// The buffer the table is read into, its capacity kept for the same reason.
    table: Vec<(RequestKey, PendingRequest)>,
    last_size: usize,
    /// Whether the last [`Sweeper::due`] skipped a busy table's walk.
    skipped: bool,
    /// The last sweep's figures, reported again while a walk is skipped.
    last_in_flight: usize,
    last_tombstones: usize,
}

impl Sweeper {
    #[must_use]
    pub fn new(policy: SweepPolicy) -> Self {
        Self {
            policy,
            counted: HashMap::default(),
            counted_replaced: HashMap::default(),
            spare_counted: HashMap::default(),
            table: Vec::new(),
            last_size: 0,
            skipped: false,
            last_in_flight: 0,
            last_tombstones: 0,
        }
    }

    /// Whether this poll should walk the table: always, except every other poll while the
    /// table is busy (see [`BUSY_PERCENT`]).
    pub fn due(&mut self) -> bool {
        if self.last_size * 100 < self.policy.capacity * BUSY_PERCENT {
            self.skipped = false;
            return true;
        }
        self.skipped = !self.skipped;
        !self.skipped
    }

    /// An empty buffer to read the table into, with the capacity the last table needed;
    /// give it back with [`Sweeper::keep_table_buffer`].
    pub fn table_buffer(&mut self) -> Vec<(RequestKey, PendingRequest)> {
        let mut table = std::mem::take(&mut self.table);
        table.clear();
        table
    }

    pub fn keep_table_buffer(&mut self, table: Vec<(RequestKey, PendingRequest)>) {
        self.table = table;
    }

    /// In-flight requests and tombstones as of the last sweep.
    #[must_use]
    pub const fn last_counts(&self) -> (usize, usize) {
        (self.last_in_flight, self.last_tombstones)
    }

    /// Classifies every entry of the table as read at `now_ns`.
    pub fn sweep(
        &mut self,
        now_ns: u64,
        entries: impl IntoIterator<Item = (RequestKey, PendingRequest)>,
    ) -> SweepOutcome {
        let under_pressure = self.last_size * 100 >= self.policy.capacity * PRESSURE_PERCENT;
        let mut outcome = SweepOutcome::default();
        let mut still_counted = std::mem::take(&mut self.spare_counted);
        still_counted.clear();
        let mut still_replaced = HashMap::default();
        let mut size = 0;
        for (key, entry) in entries {
            size += 1;
            if entry.replaced_first_sent_ns != 0 {
                let replaced = entry.replaced_first_sent_ns;
                if self.counted.get(&key) != Some(&replaced)
                    && self.counted_replaced.get(&key) != Some(&replaced)
                {
                    // Past its deadline and never seen expired by a sweep: unanswered.
                    let mut earlier = PendingRequest::sent_at(replaced);
                    earlier.target_slot = entry.target_slot;
                    earlier.ifindex = entry.ifindex;
                    outcome.unanswered.push((key, earlier));
                }
                still_replaced.insert(key, replaced);
            }
            let counted = self.counted.get(&key) == Some(&entry.first_sent_ns);
            match fate(&self.policy, now_ns, &entry, counted, under_pressure) {
                Fate::InFlight => {
                    outcome.in_flight += 1;
                    *outcome.in_flight_by_target.entry(key.target()).or_default() += 1;
                }
                Fate::Unanswered => {
                    still_counted.insert(key, entry.first_sent_ns);
                    outcome.unanswered.push((key, entry));
                    outcome.tombstones += 1;
                }
                Fate::Tombstone => {
                    if counted {
                        still_counted.insert(key, entry.first_sent_ns);
                    }
                    outcome.tombstones += 1;
                }
                Fate::Remove => outcome.remove.push((key, entry.first_sent_ns)),
            }
        }
        // Forget entries that left the table (removed by us, or a key reused after removal).
        self.spare_counted = std::mem::replace(&mut self.counted, still_counted);
        self.counted_replaced = still_replaced;
        self.last_size = size;
        self.last_in_flight = outcome.in_flight;
        self.last_tombstones = outcome.tombstones;
        outcome
    }

    /// Entries counted and still in the table.
    #[cfg(test)]
    fn tombstones(&self) -> usize {
        self.counted.len()
    }
}

#[cfg(test)]
mod tests {
    use netwatch_common::proto;

    use super::*;

    const S: u64 = 1_000_000_000;

    fn policy() -> SweepPolicy {
        SweepPolicy {
            timeout_ns: 3 * S,
            capacity: 100,
        }
    }

    fn entry(first: u64, last: u64) -> PendingRequest {
        let mut entry = PendingRequest::sent_at(first);
        entry.last_sent_ns = last;
        entry.ifindex = 1;
        entry
    }

    fn key(port: u16) -> RequestKey {
        RequestKey {
            remote: [0; 16],
            local: [0; 16],
            remote_port: 443,
            local_port: port,
            tag: 0,
            proto: proto::TCP,
            direction: netwatch_common::DIRECTION_EGRESS,
        }
    }

    #[test]
    fn requests_within_deadline_and_margin_are_in_flight() {
        let p = policy();
        assert_eq!(fate(&p, 3 * S, &entry(0, 0), false, false), Fate::InFlight);
        assert_eq!(
            fate(&p, 3 * S + EXPIRY_MARGIN_NS - 1, &entry(0, 0), false, false),
            Fate::InFlight
        );
        assert_eq!(
            fate(&p, 3 * S + EXPIRY_MARGIN_NS, &entry(0, 0), false, false),
            Fate::Unanswered
        );
    }

    #[test]
    fn the_deadline_runs_from_the_first_send_not_the_retransmit() {
        let p = policy();
        assert_eq!(
            fate(&p, 4 * S, &entry(0, 3 * S), false, false),
            Fate::Unanswered
        );
    }

    #[test]
    fn counted_entries_stay_as_tombstones_until_idle() {
        let p = policy();
        let e = entry(0, 10 * S);
        assert_eq!(fate(&p, 20 * S, &e, true, false), Fate::Tombstone);
        assert_eq!(
            fate(&p, 10 * S + TOMBSTONE_IDLE_NS + 1, &e, true, false),
            Fate::Remove
        );
    }

    #[test]
    fn late_answers_and_pressure_remove_tombstones_at_once() {
        let p = policy();
        let mut late = entry(0, 0);
        late.flags = PENDING_FLAG_LATE;
        assert_eq!(fate(&p, 5 * S, &late, true, false), Fate::Remove);
        assert_eq!(fate(&p, 5 * S, &entry(0, 0), true, true), Fate::Remove);
        // Never removed before being counted: the unanswered outcome comes first.
        assert_eq!(fate(&p, 5 * S, &late, false, true), Fate::Unanswered);
    }

    #[test]
    fn rejected_tombstones_are_never_unanswered() {
        let p = policy();
        let mut rejected = entry(0, 0);
        rejected.flags = PENDING_FLAG_REJECTED;
        assert_eq!(fate(&p, 1, &rejected, false, false), Fate::Tombstone);
        assert_eq!(fate(&p, 10 * S, &rejected, false, false), Fate::Tombstone);
        assert_eq!(
            fate(&p, TOMBSTONE_IDLE_NS + 1, &rejected, false, false),
            Fate::Remove
        );
        assert_eq!(fate(&p, 10 * S, &rejected, false, true), Fate::Remove);
    }

    #[test]
    fn a_new_request_under_a_counted_key_is_counted_again() {
        let mut sweeper = Sweeper::new(policy());
        let first = sweeper.sweep(4 * S, vec![(key(1), entry(0, 0))]);
        assert_eq!(first.unanswered.len(), 1);
        // The kernel replaced the tombstone: a new connection on the same 4-tuple.
        let replaced = vec![(key(1), entry(10 * S, 10 * S))];
        let second = sweeper.sweep(11 * S, replaced.clone());
        assert_eq!(second.in_flight, 1, "the new request is in flight");
        assert!(second.unanswered.is_empty());
        let third = sweeper.sweep(14 * S, replaced);
        assert_eq!(third.unanswered.len(), 1, "and counted once it expires");
    }

    #[test]
    fn a_request_replaced_after_its_deadline_is_counted_once() {
        let mut sweeper = Sweeper::new(policy());
        // Never swept while expired: the kernel replaced it first (a new connection on the
        // same 4-tuple 5 s after the first SYN), and tells us its send time.
        let mut replacement = entry(5 * S, 5 * S);
        replacement.replaced_first_sent_ns = S;
        let first = sweeper.sweep(5 * S, vec![(key(1), replacement)]);
        assert_eq!(first.unanswered.len(), 1);
        assert_eq!(first.unanswered[0].1.first_sent_ns, S);
        assert_eq!(first.in_flight, 1, "the replacement is in flight");
        let second = sweeper.sweep(6 * S, vec![(key(1), replacement)]);
        assert!(second.unanswered.is_empty(), "counted once");
        // Counted by a sweep before the kernel replaced it: not again.
        let mut sweeper = Sweeper::new(policy());
        assert_eq!(
            sweeper
                .sweep(5 * S, vec![(key(2), entry(S, S))])
                .unanswered
                .len(),
            1
        );
        let mut replacement = entry(6 * S, 6 * S);
        replacement.replaced_first_sent_ns = S;
        assert!(
            sweeper
                .sweep(6 * S, vec![(key(2), replacement)])
                .unanswered
                .is_empty()
        );
    }

    #[test]
    fn each_request_is_counted_once_across_sweeps() {
        let mut sweeper = Sweeper::new(policy());
        let table = vec![(key(1), entry(0, 0)), (key(2), entry(2 * S, 2 * S))];
        let first = sweeper.sweep(4 * S, table.clone());
        assert_eq!(first.unanswered.len(), 1);
        assert_eq!(first.in_flight, 1);
        let second = sweeper.sweep(6 * S, table.clone());
        assert_eq!(second.unanswered.len(), 1, "only key 2 is new");
        assert_eq!(second.unanswered[0].0, key(2));
        assert_eq!(second.tombstones, 2);
        let third = sweeper.sweep(7 * S, table);
        assert!(third.unanswered.is_empty());
        assert_eq!(sweeper.tombstones(), 2);
    }

    #[test]
    fn entries_gone_from_the_table_are_forgotten() {
        let mut sweeper = Sweeper::new(policy());
        sweeper.sweep(4 * S, vec![(key(1), entry(0, 0))]);
        sweeper.sweep(5 * S, Vec::new());
        assert_eq!(sweeper.tombstones(), 0);
        // The same key coming back is a new request.
        let again = sweeper.sweep(20 * S, vec![(key(1), entry(10 * S, 10 * S))]);
        assert_eq!(again.unanswered.len(), 1);
    }

    #[test]
    fn a_busy_table_is_walked_every_other_poll() {
        let mut sweeper = Sweeper::new(SweepPolicy {
            timeout_ns: 1_000,
            capacity: 8,
        });
        assert!(sweeper.due() && sweeper.due(), "an empty table every poll");
        sweeper.sweep(0, (0..2).map(|port| (key(port), entry(0, 0))));
        assert_eq!(sweeper.last_counts(), (2, 0), "both in flight");
        assert!(
            !sweeper.due(),
            "a quarter full: busy, the next poll skips the walk"
        );
        assert!(sweeper.due(), "and the one after walks");
        assert!(!sweeper.due());
        assert!(sweeper.due());
        sweeper.sweep(0, (0..1).map(|port| (key(port), entry(0, 0))));
        assert!(sweeper.due() && sweeper.due(), "quiet again: every poll");
    }

    #[test]
    fn a_nearly_full_table_drops_tombstones_on_the_next_sweep() {
        let mut sweeper = Sweeper::new(SweepPolicy {
            timeout_ns: 3 * S,
            capacity: 4,
        });
        let table: Vec<_> = (1..=3).map(|port| (key(port), entry(0, 0))).collect();
        assert_eq!(sweeper.sweep(4 * S, table.clone()).unanswered.len(), 3);
        let next = sweeper.sweep(5 * S, table);
        assert_eq!(next.remove.len(), 3);
        assert!(next.unanswered.is_empty());
    }
}

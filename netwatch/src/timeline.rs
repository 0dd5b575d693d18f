//! A target's recent history for the live view: whether requests were answered, failed or
//! both, per interval, on one time axis shared by every target and the ruleset changes, so
//! that "it broke when that changed" is seen at a glance. 38 bytes a target, no allocation:
//! [`SLOTS`] intervals in a ring.

/// Intervals shown.
pub(crate) const SLOTS: usize = 30;
/// One interval.
pub(crate) const SLOT_NS: u64 = 2_000_000_000;

const ANSWERED: u8 = 1;
const FAILED: u8 = 2;

/// What happened in one interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Outcome {
    #[default]
    Quiet,
    Answered,
    Failed,
    Both,
}

impl Outcome {
    const fn of(bits: u8) -> Self {
        match bits & (ANSWERED | FAILED) {
            0 => Self::Quiet,
            ANSWERED => Self::Answered,
            FAILED => Self::Failed,
            _ => Self::Both,
        }
    }
}

/// The interval `at_ns` falls in.
#[must_use]
pub(crate) const fn slot_of(at_ns: u64) -> u64 {
    at_ns / SLOT_NS
}

/// Outcomes of the last [`SLOTS`] intervals up to the newest one recorded.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Timeline {
    /// The newest interval recorded.
    newest: u64,
    /// By interval modulo [`SLOTS`]: `ANSWERED` | `FAILED`.
    ring: [u8; SLOTS],
}

impl Timeline {
    /// Records outcomes that happened at `at_ns` (a failure may be placed when its request
    /// left, before later answers; one older than the ring is forgotten).
    pub(crate) fn record(&mut self, at_ns: u64, answered: u64, failed: u64) {
        let bits = (u8::from(answered > 0) * ANSWERED) | (u8::from(failed > 0) * FAILED);
        if bits == 0 {
            return;
        }
        let slot = slot_of(at_ns);
        if slot > self.newest {
            // Clear the intervals between: nothing happened in them.
            let gap = (slot - self.newest).min(SLOTS as u64);
            for back in 0..gap {
                self.ring[index(slot - back)] = 0;
            }
            self.newest = slot;
        } else if self.newest - slot >= SLOTS as u64 {
            return;
        }
        self.ring[index(slot)] |= bits;
    }

    /// The [`SLOTS`] intervals ending with the one `now_ns` falls in, oldest first.
    #[must_use]
    pub(crate) fn recent(&self, now_ns: u64) -> [Outcome; SLOTS] {
        let last = slot_of(now_ns);
        let first = last.saturating_sub(SLOTS as u64 - 1);
        std::array::from_fn(|i| {
            let slot = first + i as u64;
            let known = slot <= self.newest && self.newest - slot < SLOTS as u64;
            Outcome::of(if known { self.ring[index(slot)] } else { 0 })
        })
    }
}

fn index(slot: u64) -> usize {
    usize::try_from(slot % SLOTS as u64).unwrap_or(0)
}

/// Where `at_ns` falls among the [`SLOTS`] intervals ending at `now_ns` (0 the oldest);
/// `None` when outside.
#[must_use]
pub(crate) fn position(at_ns: u64, now_ns: u64) -> Option<usize> {
    let (slot, last) = (slot_of(at_ns), slot_of(now_ns));
    let back = last.checked_sub(slot)?;
    (back < SLOTS as u64).then(|| SLOTS - 1 - usize::try_from(back).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn outcomes_land_in_their_interval_even_when_recorded_late() {
        let mut timeline = Timeline::default();
        timeline.record(100 * S, 3, 0);
        timeline.record(110 * S, 1, 0);
        // A request sent at 104 s found unanswered at 107 s.
        timeline.record(104 * S, 0, 1);
        timeline.record(110 * S, 0, 2);
        let cells = timeline.recent(110 * S);
        assert_eq!(cells[SLOTS - 1], Outcome::Both);
        assert_eq!(cells[SLOTS - 2], Outcome::Quiet);
        assert_eq!(cells[SLOTS - 4], Outcome::Failed);
        assert_eq!(cells[SLOTS - 6], Outcome::Answered);
        assert_eq!(position(104 * S, 110 * S), Some(SLOTS - 4));
        assert_eq!(position(112 * S, 110 * S), None, "the future");
        assert_eq!(position(0, 110 * S), None, "too old");
        // Later, the old intervals scroll out.
        let later = timeline.recent(150 * S);
        assert_eq!(later[SLOTS - 21], Outcome::Both);
        assert!(
            timeline
                .recent(200 * S)
                .iter()
                .all(|c| *c == Outcome::Quiet)
        );
    }

    #[test]
    fn a_new_interval_clears_what_the_ring_held_for_it() {
        let mut timeline = Timeline::default();
        for i in 0..1000 {
            timeline.record(i * SLOT_NS, 1, 0);
        }
        assert!(
            timeline
                .recent(999 * SLOT_NS)
                .iter()
                .all(|c| *c == Outcome::Answered)
        );
        // 10 quiet intervals (1000 to 1009), then a failure: the ring's old answers there
        // are gone.
        timeline.record(1010 * SLOT_NS, 0, 1);
        let cells = timeline.recent(1010 * SLOT_NS);
        assert_eq!(cells[SLOTS - 1], Outcome::Failed);
        assert!(
            cells[SLOTS - 11..SLOTS - 1]
                .iter()
                .all(|c| *c == Outcome::Quiet)
        );
        assert_eq!(cells[SLOTS - 12], Outcome::Answered);
        // Too old to place: forgotten.
        timeline.record(900 * SLOT_NS, 0, 1);
        assert_eq!(timeline.recent(1010 * SLOT_NS), cells);
        assert_eq!(size_of::<Timeline>(), 40);
    }
}

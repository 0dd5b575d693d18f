//! A target's recent history for the live view: answered and failed requests per interval,
//! on one time axis shared by every target and the ruleset changes, so that "it broke when
//! that changed" is seen at a glance. Bounded: [`SLOTS`] intervals per target.

use std::collections::VecDeque;

/// Intervals shown.
pub const SLOTS: usize = 30;
/// One interval.
pub const SLOT_NS: u64 = 2_000_000_000;

/// What happened in one interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cell {
    pub answered: u32,
    pub failed: u32,
}

/// The interval `at_ns` falls in.
#[must_use]
pub const fn slot_of(at_ns: u64) -> u64 {
    at_ns / SLOT_NS
}

/// Outcomes by interval, the last [`SLOTS`] that had any.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    /// (interval, cell), oldest first.
    slots: VecDeque<(u64, Cell)>,
}

impl Timeline {
    /// Records outcomes that happened at `at_ns` (a failure may be placed when its request
    /// left, before later answers).
    pub fn record(&mut self, at_ns: u64, answered: u64, failed: u64) {
        if answered == 0 && failed == 0 {
            return;
        }
        let slot = slot_of(at_ns);
        let at = match self.slots.iter().rposition(|(s, _)| *s <= slot) {
            Some(i) if self.slots[i].0 == slot => i,
            Some(i) => {
                self.slots.insert(i + 1, (slot, Cell::default()));
                i + 1
            }
            None => {
                self.slots.push_front((slot, Cell::default()));
                0
            }
        };
        let cell = &mut self.slots[at].1;
        cell.answered = cell
            .answered
            .saturating_add(u32::try_from(answered).unwrap_or(u32::MAX));
        cell.failed = cell
            .failed
            .saturating_add(u32::try_from(failed).unwrap_or(u32::MAX));
        while self.slots.len() > SLOTS {
            self.slots.pop_front();
        }
    }

    /// The [`SLOTS`] intervals ending with the one `now_ns` falls in, oldest first.
    #[must_use]
    pub fn recent(&self, now_ns: u64) -> Vec<Cell> {
        let last = slot_of(now_ns);
        let first = last.saturating_sub(SLOTS as u64 - 1);
        let mut cells = vec![Cell::default(); SLOTS];
        for (slot, cell) in &self.slots {
            if (first..=last).contains(slot) {
                cells[usize::try_from(slot - first).unwrap_or(0)] = *cell;
            }
        }
        cells
    }
}

/// Where `at_ns` falls among the [`SLOTS`] intervals ending at `now_ns` (0 the oldest);
/// `None` when outside.
#[must_use]
pub fn position(at_ns: u64, now_ns: u64) -> Option<usize> {
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
        let cells = timeline.recent(110 * S);
        assert_eq!(cells.len(), SLOTS);
        assert_eq!(
            cells[SLOTS - 1],
            Cell {
                answered: 1,
                failed: 0
            }
        );
        assert_eq!(
            cells[SLOTS - 4],
            Cell {
                answered: 0,
                failed: 1
            }
        );
        assert_eq!(
            cells[SLOTS - 6],
            Cell {
                answered: 3,
                failed: 0
            }
        );
        assert_eq!(position(104 * S, 110 * S), Some(SLOTS - 4));
        assert_eq!(position(112 * S, 110 * S), None, "the future");
        assert_eq!(position(0, 110 * S), None, "too old");
    }

    #[test]
    fn memory_is_bounded_to_the_intervals_shown() {
        let mut timeline = Timeline::default();
        for i in 0..1000 {
            timeline.record(i * SLOT_NS, 1, 1);
        }
        assert_eq!(timeline.slots.len(), SLOTS);
        assert!(
            timeline
                .recent(999 * SLOT_NS)
                .iter()
                .all(|c| c.answered == 1)
        );
        assert_eq!(
            timeline.recent(2000 * SLOT_NS),
            vec![Cell::default(); SLOTS]
        );
    }
}

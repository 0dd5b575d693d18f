//! Verdicts: what the recent outcomes of a target say about the path to it.

use std::{collections::VecDeque, fmt, time::Duration};

use netwatch_common::Reason;
use serde::Serialize;

/// The reason of a target whose failures include answers that came after the timeout.
pub const LATE: &str = "late";
/// The reason of a target whose connections open and then stall: segments above the path's
/// MTU die (see [`crate::stalls`]).
pub const PATH_MTU: &str = "path-mtu";

/// The judgement on one target, from worst to best.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Requests go unanswered and nothing ever comes back: silently dropped.
    Blackholed,
    /// Requests are actively refused (TCP RST, ICMP unreachable), never answered.
    Rejected,
    /// Some requests are answered, others go unanswered or are rejected.
    Degraded,
    /// Requests were seen but none has been resolved yet.
    Pending,
    /// Every recent request was answered.
    Ok,
}

impl Verdict {
    pub const ALL: [Self; 5] = [
        Self::Blackholed,
        Self::Rejected,
        Self::Degraded,
        Self::Pending,
        Self::Ok,
    ];

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Blackholed => "blackholed",
            Self::Rejected => "rejected",
            Self::Degraded => "degraded",
            Self::Pending => "pending",
            Self::Ok => "ok",
        }
    }

    /// Parses a verdict name as printed by [`Verdict::as_str`].
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|verdict| verdict.as_str() == name)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Outcomes that resolved in one time slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Slot {
    start_ns: u64,
    answered: u64,
    unanswered: u64,
    /// Answers that came after the timeout, to requests counted unanswered.
    late: u64,
    /// Rejections that came after the timeout, to requests counted unanswered (their
    /// reasons are among `rejected`).
    late_rejected: u64,
    /// (reason code, count); a handful of reasons at most.
    rejected: Vec<(u8, u64)>,
    /// Answers counted in `answered` that this host then dropped before the socket.
    answers_dropped: u64,
    /// Drops on this host by `here:` reason; a handful of reasons at most.
    here: Vec<(&'static str, u64)>,
    /// Connections that stalled after the handshake (path MTU), and stalls taken back
    /// (recovered, or found to be loss).
    mtu_stalls: u64,
    mtu_cleared: u64,
}

/// The resolved outcomes of one target over the last `window`, in slots.
///
/// The window ends at the target's most recent resolved outcome, not at "now": a target
/// that goes quiet keeps the verdict its last requests earned, and a target that recovers
/// turns back to ok once its failures fall out of the window.
#[derive(Clone, Debug)]
pub struct History {
    window_ns: u64,
    slot_ns: u64,
    slots: VecDeque<Slot>,
}

impl History {
    #[must_use]
    pub fn new(window: Duration) -> Self {
        let window_ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX).max(1);
        // About 60 slots a window, at most a second each: fine enough for the edge of the
        // window, small enough to keep per-target memory bounded.
        let slot_ns = (window_ns / 60).clamp(1_000_000, 1_000_000_000);
        Self {
            window_ns,
            slot_ns,
            slots: VecDeque::new(),
        }
    }

    /// Records outcomes resolved at `at_ns` (monotonic). Nothing is recorded for all zeros.
    pub fn record(&mut self, at_ns: u64, answered: u64, unanswered: u64, rejected: &[(u8, u64)]) {
        self.record_with_late(at_ns, answered, unanswered, (0, 0), rejected);
    }

    /// Records drops on this host resolved at `at_ns`: `answers_dropped` answers already
    /// recorded as answered that never reached the socket (they count as failures), and
    /// every local drop by `here:` reason (for the verdict's reason).
    pub fn record_local(&mut self, at_ns: u64, answers_dropped: u64, here: &[(&'static str, u64)]) {
        if answers_dropped == 0 && here.iter().all(|(_, n)| *n == 0) {
            return;
        }
        let slot = self.slot_at(at_ns);
        slot.answers_dropped += answers_dropped;
        for &(reason, count) in here.iter().filter(|(_, count)| *count > 0) {
            match slot.here.iter_mut().find(|(name, _)| *name == reason) {
                Some((_, total)) => *total += count,
                None => slot.here.push((reason, count)),
            }
        }
        self.expire();
    }

    /// Records, at `at_ns`, connections that stalled after the handshake and stalls taken
    /// back (the connection recovered, or what died was loss after all).
    pub fn record_mtu(&mut self, at_ns: u64, stalls: u64, cleared: u64) {
        if stalls == 0 && cleared == 0 {
            return;
        }
        let slot = self.slot_at(at_ns);
        slot.mtu_stalls += stalls;
        slot.mtu_cleared += cleared;
        self.expire();
    }

    /// Whether connections stalled in the window and were not all taken back.
    fn stalled(&self) -> bool {
        let stalls: u64 = self.slots.iter().map(|s| s.mtu_stalls).sum();
        let cleared: u64 = self.slots.iter().map(|s| s.mtu_cleared).sum();
        stalls > cleared
    }

    /// The slot for outcomes at `at_ns`: the newest one, or a new one after it.
    fn slot_at(&mut self, at_ns: u64) -> &mut Slot {
        let start_ns = at_ns - at_ns % self.slot_ns;
        if self
            .slots
            .back()
            .is_none_or(|last| last.start_ns < start_ns)
        {
            self.slots.push_back(Slot {
                start_ns,
                ..Slot::default()
            });
        }
        self.slots.back_mut().expect("just pushed")
    }

    /// Drops the slots that fell out of the window ending at the newest one.
    fn expire(&mut self) {
        let Some(newest) = self.slots.back().map(|s| s.start_ns) else {
            return;
        };
        while self
            .slots
            .front()
            .is_some_and(|s| s.start_ns + self.window_ns < newest)
        {
            self.slots.pop_front();
        }
    }

    /// [`History::record`], with `late` answers and `late_rejected` rejections (their
    /// reasons among `rejected`) to requests already counted unanswered.
    pub fn record_with_late(
        &mut self,
        at_ns: u64,
        answered: u64,
        unanswered: u64,
        (late, late_rejected): (u64, u64),
        rejected: &[(u8, u64)],
    ) {
        let rejected_total: u64 = rejected.iter().map(|(_, n)| n).sum();
        if answered == 0 && unanswered == 0 && late == 0 && rejected_total == 0 {
            return;
        }
        let slot = self.slot_at(at_ns);
        slot.answered += answered;
        slot.unanswered += unanswered;
        slot.late += late;
        slot.late_rejected += late_rejected;
        for &(reason, count) in rejected.iter().filter(|(_, count)| *count > 0) {
            match slot.rejected.iter_mut().find(|(code, _)| *code == reason) {
                Some((_, total)) => *total += count,
                None => slot.rejected.push((reason, count)),
            }
        }
        self.expire();
    }

    /// Whether any outcome was ever resolved (and so is in the window).
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The verdict over the window and its reason: the most frequent rejection's name when
    /// there were rejections, else the most frequent drop on this host (`here:…`) when the
    /// target is not ok and this host dropped some of its packets, else [`LATE`] when answers
    /// came after the timeout. `None` when nothing has resolved yet.
    ///
    /// Answers this host dropped before the socket are failures, not answers: the client
    /// never got them.
    ///
    /// A request answered after the timeout was counted unanswered at its deadline, but it
    /// was not dropped: the remote is slow. Such a target is never blackholed (nor ok): it
    /// is degraded, whatever else its window holds.
    ///
    /// A connection that stalled after its handshake was answered makes the target
    /// `degraded` for [`PATH_MTU`], whatever its requests say, unless they fail outright
    /// (blackholed, rejected: new connections cannot even open).
    #[must_use]
    pub fn judge(&self) -> Option<(Verdict, Option<&'static str>)> {
        let judged = self.judge_outcomes();
        if !self.stalled() {
            return judged;
        }
        match judged {
            None | Some((Verdict::Ok | Verdict::Degraded | Verdict::Pending, _)) => {
                Some((Verdict::Degraded, Some(PATH_MTU)))
            }
            failing => failing,
        }
    }

    fn judge_outcomes(&self) -> Option<(Verdict, Option<&'static str>)> {
        let counted: u64 = self.slots.iter().map(|s| s.answered).sum();
        let dropped: u64 = self.slots.iter().map(|s| s.answers_dropped).sum();
        let answered = counted.saturating_sub(dropped);
        let unanswered: u64 =
            self.slots.iter().map(|s| s.unanswered).sum::<u64>() + (counted - answered);
        let mut by_here: Vec<(&'static str, u64)> = Vec::new();
        for &(name, count) in self.slots.iter().flat_map(|s| s.here.iter()) {
            match by_here.iter_mut().find(|(n, _)| *n == name) {
                Some((_, total)) => *total += count,
                None => by_here.push((name, count)),
            }
        }
        let here = by_here
            .iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
            .map(|&(name, _)| name);
        let late: u64 = self.slots.iter().map(|s| s.late).sum();
        // A request refused after its deadline was counted unanswered, then refused: a
        // rejection, not a silence.
        let late_rejected: u64 = self.slots.iter().map(|s| s.late_rejected).sum();
        let unanswered = unanswered.saturating_sub(late_rejected);
        let mut by_reason: Vec<(u8, u64)> = Vec::new();
        for &(reason, count) in self.slots.iter().flat_map(|s| s.rejected.iter()) {
            match by_reason.iter_mut().find(|(code, _)| *code == reason) {
                Some((_, total)) => *total += count,
                None => by_reason.push((reason, count)),
            }
        }
        // Most frequent first; ties go to the lower code so the answer is stable.
        let reason = by_reason
            .iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|&(code, _)| code);
        let rejection = reason.and_then(|code| Reason::name(usize::from(code)));
        if late > 0 {
            return Some((Verdict::Degraded, rejection.or(Some(LATE))));
        }
        let verdict = match (answered > 0, unanswered > 0, reason.is_some()) {
            (false, false, false) => return None,
            (true, false, false) => Verdict::Ok,
            (false, true, false) => Verdict::Blackholed,
            (false, _, true) => Verdict::Rejected,
            (true, _, _) => Verdict::Degraded,
        };
        let reason = if verdict == Verdict::Ok {
            rejection
        } else {
            rejection.or(here)
        };
        Some((verdict, reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn history() -> History {
        History::new(Duration::from_mins(1))
    }

    #[test]
    fn nothing_resolved_has_no_verdict() {
        let mut h = history();
        assert_eq!(h.judge(), None);
        h.record(5 * S, 0, 0, &[]);
        assert_eq!(h.judge(), None);
        assert!(h.is_empty());
    }

    #[test]
    fn a_stalled_connection_degrades_an_answering_target_for_path_mtu() {
        let mut h = history();
        h.record(S, 3, 0, &[]);
        h.record_mtu(2 * S, 1, 0);
        assert_eq!(h.judge(), Some((Verdict::Degraded, Some(PATH_MTU))));
        // It recovered: no blame left.
        h.record_mtu(3 * S, 0, 1);
        assert_eq!(h.judge(), Some((Verdict::Ok, None)));
        // Failing targets keep their verdict: new connections cannot even open.
        let mut failing = history();
        failing.record(S, 0, 4, &[]);
        failing.record_mtu(2 * S, 1, 0);
        assert_eq!(failing.judge(), Some((Verdict::Blackholed, None)));
        // A stall out of the window is forgotten like any outcome.
        let mut old = history();
        old.record_mtu(S, 1, 0);
        old.record(100 * S, 2, 0, &[]);
        assert_eq!(old.judge(), Some((Verdict::Ok, None)));
    }

    #[test]
    fn answers_only_is_ok() {
        let mut h = history();
        h.record(S, 3, 0, &[]);
        assert_eq!(h.judge(), Some((Verdict::Ok, None)));
    }

    #[test]
    fn unanswered_only_is_blackholed() {
        let mut h = history();
        h.record(S, 0, 14, &[]);
        assert_eq!(h.judge(), Some((Verdict::Blackholed, None)));
    }

    #[test]
    fn rejections_without_answers_is_rejected_with_the_most_frequent_reason() {
        let mut h = history();
        h.record(S, 0, 1, &[(12, 2), (1, 1)]);
        h.record(2 * S, 0, 0, &[(1, 3)]);
        assert_eq!(h.judge(), Some((Verdict::Rejected, Some("tcp-reset"))));
    }

    #[test]
    fn reason_ties_go_to_the_lower_code() {
        let mut h = history();
        h.record(S, 0, 0, &[(12, 2), (5, 2)]);
        assert_eq!(
            h.judge(),
            Some((Verdict::Rejected, Some("icmp-port-unreachable")))
        );
    }

    #[test]
    fn answers_mixed_with_failures_is_degraded() {
        let mut h = history();
        h.record(S, 5, 1, &[]);
        assert_eq!(h.judge(), Some((Verdict::Degraded, None)));
        let mut h = history();
        h.record(S, 5, 0, &[(1, 1)]);
        assert_eq!(h.judge(), Some((Verdict::Degraded, Some("tcp-reset"))));
    }

    #[test]
    fn late_answers_are_degraded_never_blackholed() {
        let mut h = history();
        h.record(S, 0, 3, &[]);
        assert_eq!(h.judge(), Some((Verdict::Blackholed, None)));
        h.record_with_late(2 * S, 0, 0, (3, 0), &[]);
        assert_eq!(h.judge(), Some((Verdict::Degraded, Some(LATE))));
        // Late answers mixed with requests never answered: still degraded, still slow.
        h.record(3 * S, 0, 2, &[]);
        assert_eq!(h.judge(), Some((Verdict::Degraded, Some(LATE))));
        // A rejection among them names the rejection.
        h.record(4 * S, 0, 0, &[(1, 1)]);
        assert_eq!(h.judge(), Some((Verdict::Degraded, Some("tcp-reset"))));
    }

    #[test]
    fn a_late_rejection_is_still_a_rejection() {
        let mut h = history();
        h.record(S, 0, 1, &[]);
        assert_eq!(h.judge(), Some((Verdict::Blackholed, None)));
        h.record_with_late(2 * S, 0, 0, (0, 1), &[(15, 1)]);
        assert_eq!(
            h.judge(),
            Some((Verdict::Rejected, Some("icmp-admin-prohibited")))
        );
    }

    #[test]
    fn a_target_that_recovers_turns_back_to_ok() {
        let mut h = history();
        h.record(10 * S, 0, 4, &[]);
        assert_eq!(h.judge().unwrap().0, Verdict::Blackholed);
        h.record(40 * S, 2, 0, &[]);
        assert_eq!(
            h.judge().unwrap().0,
            Verdict::Degraded,
            "failures still in the window"
        );
        h.record(71 * S, 1, 0, &[]);
        assert_eq!(
            h.judge().unwrap().0,
            Verdict::Ok,
            "failures fell out of the window"
        );
    }

    #[test]
    fn a_target_that_goes_quiet_keeps_its_verdict() {
        let mut h = history();
        h.record(10 * S, 0, 4, &[]);
        // No new outcomes for a long time: the window is anchored at the last outcome.
        assert_eq!(h.judge().unwrap().0, Verdict::Blackholed);
    }

    #[test]
    fn short_windows_use_finer_slots() {
        let mut h = History::new(Duration::from_millis(500));
        h.record(S, 0, 1, &[]);
        h.record(S + 200_000_000, 1, 0, &[]);
        assert_eq!(h.judge().unwrap().0, Verdict::Degraded);
        h.record(S + 800_000_000, 1, 0, &[]);
        assert_eq!(h.judge().unwrap().0, Verdict::Ok);
    }

    #[test]
    fn answers_dropped_here_are_failures_named_here() {
        let mut h = history();
        h.record(S, 3, 0, &[]);
        assert_eq!(h.judge(), Some((Verdict::Ok, None)));
        // All three answers died on this host before the socket: nothing got through.
        h.record_local(S, 3, &[("here:netfilter-drop", 3)]);
        assert_eq!(
            h.judge(),
            Some((Verdict::Blackholed, Some("here:netfilter-drop")))
        );
        // One more gets through: degraded, still named after this host's drops.
        h.record(2 * S, 1, 0, &[]);
        assert_eq!(
            h.judge(),
            Some((Verdict::Degraded, Some("here:netfilter-drop")))
        );
    }

    #[test]
    fn requests_dropped_here_time_out_and_are_named_here() {
        let mut h = history();
        // The drop is seen first; the request times out later.
        h.record_local(S, 0, &[("here:netfilter-drop", 2)]);
        assert_eq!(h.judge(), None, "nothing resolved yet: pending");
        h.record(4 * S, 0, 2, &[]);
        assert_eq!(
            h.judge(),
            Some((Verdict::Blackholed, Some("here:netfilter-drop")))
        );
    }

    #[test]
    fn a_reject_keeps_its_reject_type_and_ok_stays_unnamed() {
        let mut h = history();
        h.record(S, 0, 0, &[(1, 2)]);
        h.record_local(S, 0, &[("here:no-socket", 1)]);
        assert_eq!(h.judge(), Some((Verdict::Rejected, Some("tcp-reset"))));
        let mut h = history();
        h.record(S, 4, 0, &[]);
        h.record_local(S, 0, &[("here:no-socket", 1)]);
        assert_eq!(h.judge(), Some((Verdict::Ok, None)));
    }

    #[test]
    fn verdict_names_round_trip() {
        for verdict in Verdict::ALL {
            assert_eq!(Verdict::from_name(verdict.as_str()), Some(verdict));
        }
        assert_eq!(Verdict::from_name("fine"), None);
    }
}

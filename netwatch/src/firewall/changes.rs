//! Ruleset changes: the kernel's announcements gathered into committed generations, paced so
//! that a script loading rules one by one is summarized rather than flooding the output, and
//! written as `ruleset` records with each rule's text. Also the correlation of a target's
//! failure with the change just before it. Pure: messages and times in, records out.

use std::{
    collections::{BTreeMap, VecDeque},
    fmt::Write as _,
};

use serde::Serialize;

use super::{
    TRACE_TABLE,
    netlink::{ChainRef, Family, Message, NF_DROP, Op, RuleRef},
};

/// A failure that began this long after a ruleset change, or less, is tied to it.
pub(crate) const AFTER_CHANGE_WITHIN_NS: u64 = 5_000_000_000;
/// netwatch timestamps a change when it reads the announcement, which may wait for the poll
/// in progress: a failure up to this long before that is still after the change.
pub(crate) const READ_SLACK_NS: u64 = 500_000_000;
/// Records written one per generation in any second; beyond, generations are summarized.
pub(crate) const RECORDS_PER_SECOND: usize = 4;
/// Changes listed in one record; the rest are counted.
pub(crate) const LISTED_PER_RECORD: usize = 16;
/// Rule texts remembered (so that a rule deleted later can still be named).
pub(crate) const MAX_RULE_TEXTS: usize = 20_000;

/// The text of a rule netwatch could not read.
pub(crate) const UNKNOWN_TEXT: &str = "(text unknown)";

/// One committed generation, as the kernel announced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Commit {
    pub generation: u32,
    pub process: Option<String>,
    /// When netwatch read it (monotonic).
    pub at_ns: u64,
    pub rules: Vec<(Op, RuleRef)>,
    /// Chains added, changed or deleted, with a base chain's policy.
    pub chains: Vec<(Op, ChainRef, Option<i32>)>,
}

impl Commit {
    #[must_use]
    pub(crate) fn change_count(&self) -> u64 {
        (self.rules.len() + self.chains.len()) as u64
    }
}

/// Gathers messages into [`Commit`]s: everything announced until a generation message.
#[derive(Debug, Default)]
pub(crate) struct Assembler {
    rules: Vec<(Op, RuleRef)>,
    chains: Vec<(Op, ChainRef, Option<i32>)>,
}

/// Announcements held before their generation comes, at most (a batch larger than this is
/// counted, not listed).
const MAX_PENDING: usize = 4096;

impl Assembler {
    /// Takes in one message read at `at_ns`; returns the commit a generation message closes,
    /// unless it changed only netwatch's own trace table (or sets and elements).
    pub(crate) fn push(&mut self, message: Message, at_ns: u64) -> Option<Commit> {
        match message {
            Message::Rule { op, rule } if !is_own(&rule.chain) => {
                if self.rules.len() < MAX_PENDING {
                    self.rules.push((op, rule));
                }
                None
            }
            Message::Chain {
                op, chain, policy, ..
            } if !is_own(&chain) => {
                if self.chains.len() < MAX_PENDING {
                    self.chains.push((op, chain, policy));
                }
                None
            }
            Message::Generation { id, process } => {
                let rules = std::mem::take(&mut self.rules);
                let chains = std::mem::take(&mut self.chains);
                (!rules.is_empty() || !chains.is_empty()).then_some(Commit {
                    generation: id,
                    process,
                    at_ns,
                    rules,
                    chains,
                })
            }
            _ => None,
        }
    }
}

/// Whether a chain is netwatch's own (the trace table): its changes are not the operator's.
#[must_use]
pub(crate) fn is_own(chain: &ChainRef) -> bool {
    chain.family == Family::Inet && chain.table == TRACE_TABLE
}

/// Decides which commits get a record of their own and which are summarized together: at
/// most [`RECORDS_PER_SECOND`] records a second while commits come one by one; past that, one
/// record per flush for all that came since the last.
#[derive(Debug, Default)]
pub(crate) struct Pacer {
    pending: Vec<Commit>,
    /// When the records of the last second went out.
    written_ns: VecDeque<u64>,
}

impl Pacer {
    pub(crate) fn offer(&mut self, commit: Commit) {
        // Bounded: a flush comes every poll; this only guards against a stalled one.
        if self.pending.len() >= MAX_PENDING {
            let merged = self.pending.remove(0);
            if let Some(next) = self.pending.first_mut() {
                merge_into(next, merged);
            }
        }
        self.pending.push(commit);
    }

    /// The commits due now, grouped one group per record.
    pub(crate) fn flush(&mut self, now_ns: u64) -> Vec<Vec<Commit>> {
        while self
            .written_ns
            .front()
            .is_some_and(|&at| at + 1_000_000_000 <= now_ns)
        {
            self.written_ns.pop_front();
        }
        if self.pending.is_empty() {
            return Vec::new();
        }
        let pending = std::mem::take(&mut self.pending);
        let groups: Vec<Vec<Commit>> =
            if self.written_ns.len() + pending.len() <= RECORDS_PER_SECOND {
                pending.into_iter().map(|commit| vec![commit]).collect()
            } else {
                vec![pending]
            };
        self.written_ns
            .extend(std::iter::repeat_n(now_ns, groups.len()));
        groups
    }
}

fn merge_into(later: &mut Commit, earlier: Commit) {
    let mut rules = earlier.rules;
    rules.append(&mut later.rules);
    later.rules = rules;
    let mut chains = earlier.chains;
    chains.append(&mut later.chains);
    later.chains = chains;
}

/// One rule change of a `ruleset` record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleChange {
    pub op: Op,
    pub family: Family,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    /// As `nft -a list` prints it, without the handle.
    pub rule: String,
}

/// A chain added, deleted or given a new policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainChange {
    pub op: Op,
    pub family: Family,
    pub table: String,
    pub chain: String,
    /// A base chain's policy: `drop` or `accept`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<&'static str>,
}

/// Several generations (or one too large to list) in one record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Summarized {
    /// Generations in this record: `first_generation` up to the record's `generation`.
    pub generations: u64,
    pub first_generation: u32,
    /// Rule and chain changes in them, all counted; [`LISTED_PER_RECORD`] at most listed.
    pub total_changes: u64,
    pub omitted: u64,
}

/// A `ruleset` record (the JSON writer adds `type` and `time`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RulesetRecord {
    /// The (last) generation committed.
    pub generation: u32,
    pub changes: Vec<RuleChange>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub chains: Vec<ChainChange>,
    /// The process that committed it (`nft`, `iptables-nft`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summarized: Option<Summarized>,
    /// When netwatch read it (monotonic): for the tracker, not the record.
    #[serde(skip)]
    pub at_ns: u64,
}

impl RulesetRecord {
    /// Every change the record stands for, listed or not.
    #[must_use]
    pub fn total_changes(&self) -> u64 {
        self.summarized
            .as_ref()
            .map_or((self.changes.len() + self.chains.len()) as u64, |s| {
                s.total_changes
            })
    }

    /// What changed, in a phrase: "rule added to inet host output: `tcp dport 3306 drop`",
    /// "chain inet host input policy drop", "500 changes in 480 generations".
    #[must_use]
    pub fn describe(&self) -> String {
        if let Some(summary) = &self.summarized {
            return format!(
                "{} changes in {} generation{} ({}..{})",
                summary.total_changes,
                summary.generations,
                if summary.generations == 1 { "" } else { "s" },
                summary.first_generation,
                self.generation
            );
        }
        let mut parts: Vec<String> = self
            .changes
            .iter()
            .map(|c| {
                let what = match c.op {
                    Op::Add => "added to",
                    Op::Delete => "deleted from",
                };
                format!(
                    "rule {what} {} {} {}: `{}`",
                    c.family, c.table, c.chain, c.rule
                )
            })
            .collect();
        parts.extend(self.chains.iter().map(|c| {
            let mut text = format!("chain {} {} {}", c.family, c.table, c.chain);
            match (c.op, c.policy) {
                (Op::Delete, _) => text.push_str(" deleted"),
                (Op::Add, Some(policy)) => {
                    let _ = write!(text, " policy {policy}");
                }
                (Op::Add, None) => text.push_str(" added"),
            }
            text
        }));
        match parts.len() {
            0 => "nothing netwatch follows".to_owned(),
            1..=2 => parts.join("; "),
            n => format!("{}; and {} more", parts[..2].join("; "), n - 2),
        }
    }

    /// The line for the plain output and the live view.
    #[must_use]
    pub fn line(&self) -> String {
        let by = self
            .process
            .as_deref()
            .map(|p| format!(" by {p}"))
            .unwrap_or_default();
        format!(
            "ruleset generation {}{by}: {}",
            self.generation,
            self.describe()
        )
    }
}

/// Rule texts by rule, kept from listings so that deleted rules can still be named.
#[derive(Debug, Default)]
pub(crate) struct RuleTexts {
    texts: BTreeMap<RuleRef, String>,
    /// Base chains' `type … policy …;` lines.
    policies: BTreeMap<ChainRef, String>,
}

impl RuleTexts {
    /// Takes in a listing's rules and policies (over what was known; nothing is forgotten
    /// here: a rule deleted meanwhile is still to be named by its delete).
    pub(crate) fn absorb(&mut self, listing: &super::listing::Listing) {
        for (rule, text) in &listing.rules {
            if self.texts.len() < MAX_RULE_TEXTS || self.texts.contains_key(rule) {
                self.texts.insert(rule.clone(), text.clone());
            }
        }
        for (chain, line, _) in &listing.policies {
            if self.policies.len() < MAX_RULE_TEXTS {
                self.policies.insert(chain.clone(), line.clone());
            }
        }
    }

    #[must_use]
    pub(crate) fn get(&self, rule: &RuleRef) -> Option<&str> {
        self.texts.get(rule).map(String::as_str)
    }

    #[must_use]
    pub(crate) fn policy_line(&self, chain: &ChainRef) -> Option<&str> {
        self.policies.get(chain).map(String::as_str)
    }

    /// The records for `groups` (from [`Pacer::flush`]); texts of added rules must have been
    /// absorbed first. Deleted rules' texts are forgotten.
    pub(crate) fn records(&mut self, groups: Vec<Vec<Commit>>) -> Vec<RulesetRecord> {
        groups
            .into_iter()
            .filter_map(|group| self.record(group))
            .collect()
    }

    fn record(&mut self, group: Vec<Commit>) -> Option<RulesetRecord> {
        let first = group.first()?.generation;
        let last = group.last()?;
        let (generation, at_ns, process) = (last.generation, last.at_ns, last.process.clone());
        let generations = group.len() as u64;
        let total: u64 = group.iter().map(Commit::change_count).sum();
        let mut changes = Vec::new();
        let mut chains = Vec::new();
        for commit in group {
            for (op, rule) in commit.rules {
                let text = match op {
                    Op::Add => self.get(&rule).map(str::to_owned),
                    Op::Delete => self.texts.remove(&rule),
                };
                if changes.len() + chains.len() < LISTED_PER_RECORD {
                    changes.push(RuleChange {
                        op,
                        family: rule.chain.family,
                        table: rule.chain.table,
                        chain: rule.chain.chain,
                        handle: rule.handle,
                        rule: text.unwrap_or_else(|| UNKNOWN_TEXT.to_owned()),
                    });
                }
            }
            for (op, chain, policy) in commit.chains {
                if op == Op::Delete {
                    self.policies.remove(&chain);
                    self.texts.retain(|rule, _| rule.chain != chain);
                }
                if changes.len() + chains.len() < LISTED_PER_RECORD {
                    chains.push(ChainChange {
                        op,
                        family: chain.family,
                        table: chain.table,
                        chain: chain.chain,
                        policy: policy.map(|p| if p == NF_DROP { "drop" } else { "accept" }),
                    });
                }
            }
        }
        let listed = (changes.len() + chains.len()) as u64;
        let summarized = (generations > 1 || listed < total).then_some(Summarized {
            generations,
            first_generation: first,
            total_changes: total,
            omitted: total - listed,
        });
        Some(RulesetRecord {
            generation,
            changes,
            chains,
            process,
            summarized,
            at_ns,
        })
    }
}

/// The generation of the ruleset change a failure that began at `started_ns` followed: the
/// latest change at most [`AFTER_CHANGE_WITHIN_NS`] before it (with [`READ_SLACK_NS`] for
/// the time netwatch took to read the change). `changes` are (read at, generation), oldest
/// first.
#[must_use]
pub(crate) fn change_behind(started_ns: u64, changes: &VecDeque<(u64, u32)>) -> Option<u32> {
    changes
        .iter()
        .rev()
        .find(|&&(at_ns, _)| {
            at_ns <= started_ns.saturating_add(READ_SLACK_NS)
                && started_ns.saturating_sub(at_ns) <= AFTER_CHANGE_WITHIN_NS
        })
        .map(|&(_, generation)| generation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::listing;

    const S: u64 = 1_000_000_000;

    fn output() -> ChainRef {
        ChainRef {
            family: Family::Inet,
            table: "host".into(),
            chain: "output".into(),
        }
    }

    fn rule(handle: u64) -> RuleRef {
        RuleRef {
            chain: output(),
            handle,
        }
    }

    fn commit(generation: u32, at_ns: u64, rules: Vec<(Op, RuleRef)>) -> Commit {
        Commit {
            generation,
            process: Some("nft".into()),
            at_ns,
            rules,
            chains: Vec::new(),
        }
    }

    #[test]
    fn a_generation_closes_what_was_announced_and_netwatchs_own_table_is_left_out() {
        let mut assembler = Assembler::default();
        let own = ChainRef {
            family: Family::Inet,
            table: TRACE_TABLE.into(),
            chain: "out".into(),
        };
        assert_eq!(
            assembler.push(
                Message::Rule {
                    op: Op::Add,
                    rule: RuleRef {
                        chain: own,
                        handle: 3
                    }
                },
                S
            ),
            None
        );
        assert_eq!(
            assembler.push(
                Message::Generation {
                    id: 4,
                    process: None
                },
                S
            ),
            None,
            "only netwatch's own table changed"
        );
        assembler.push(
            Message::Rule {
                op: Op::Add,
                rule: rule(7),
            },
            2 * S,
        );
        assembler.push(Message::Other, 2 * S);
        let commit = assembler
            .push(
                Message::Generation {
                    id: 5,
                    process: Some("nft".into()),
                },
                2 * S,
            )
            .expect("a commit");
        assert_eq!(commit.generation, 5);
        assert_eq!(commit.rules, vec![(Op::Add, rule(7))]);
        assert_eq!(commit.at_ns, 2 * S);
    }

    #[test]
    fn records_name_added_and_deleted_rules_with_their_text() {
        let mut texts = RuleTexts::default();
        texts.absorb(&listing::parse(
            "table inet host {\n chain output {\n  type filter hook output priority 0; policy \
             accept;\n  tcp dport 3306 drop comment \"no mysql\" # handle 7\n }\n}\n",
        ));
        let records = texts.records(vec![vec![commit(42, S, vec![(Op::Add, rule(7))])]]);
        assert_eq!(records.len(), 1);
        let record = &records[0];
        assert_eq!(record.generation, 42);
        assert_eq!(record.summarized, None);
        assert_eq!(
            serde_json::to_value(&record.changes).unwrap(),
            serde_json::json!([{
                "op": "add", "family": "inet", "table": "host", "chain": "output",
                "handle": 7, "rule": "tcp dport 3306 drop comment \"no mysql\""
            }])
        );
        assert_eq!(
            record.describe(),
            "rule added to inet host output: `tcp dport 3306 drop comment \"no mysql\"`"
        );
        let deleted = texts.records(vec![vec![commit(43, 2 * S, vec![(Op::Delete, rule(7))])]]);
        assert_eq!(deleted[0].changes[0].op, Op::Delete);
        assert_eq!(
            deleted[0].changes[0].rule,
            "tcp dport 3306 drop comment \"no mysql\""
        );
        assert_eq!(texts.get(&rule(7)), None, "forgotten once deleted");
        let unknown = texts.records(vec![vec![commit(44, 3 * S, vec![(Op::Delete, rule(8))])]]);
        assert_eq!(unknown[0].changes[0].rule, UNKNOWN_TEXT);
    }

    #[test]
    fn a_burst_is_summarized_and_every_change_counted() {
        let mut pacer = Pacer::default();
        let mut texts = RuleTexts::default();
        let mut records = Vec::new();
        // 500 generations of one rule each over 2.5 s, flushed every 250 ms.
        let mut generation = 100;
        for tick in 1..=10u64 {
            for _ in 0..50 {
                generation += 1;
                pacer.offer(commit(
                    generation,
                    tick * S / 4,
                    vec![(Op::Add, rule(u64::from(generation)))],
                ));
            }
            records.extend(texts.records(pacer.flush(tick * S / 4)));
        }
        assert_eq!(records.len(), 10, "one summary per flush");
        let total: u64 = records.iter().map(RulesetRecord::total_changes).sum();
        assert_eq!(total, 500);
        let first = records[0].summarized.as_ref().unwrap();
        assert_eq!(
            (first.generations, first.first_generation, first.omitted),
            (50, 101, 50 - LISTED_PER_RECORD as u64)
        );
        assert_eq!(records[0].changes.len(), LISTED_PER_RECORD);
        assert_eq!(
            records[0].describe(),
            "50 changes in 50 generations (101..150)"
        );
        // A quiet change afterwards gets its own record again, once the second is over.
        pacer.offer(commit(999, 5 * S, vec![(Op::Delete, rule(1))]));
        let quiet = texts.records(pacer.flush(5 * S));
        assert_eq!(quiet.len(), 1);
        assert_eq!(quiet[0].summarized, None);
    }

    #[test]
    fn a_few_changes_in_a_second_each_get_a_record() {
        let mut pacer = Pacer::default();
        for generation in 1..=3 {
            pacer.offer(commit(generation, S, vec![(Op::Add, rule(1))]));
        }
        assert_eq!(pacer.flush(S).len(), 3);
        pacer.offer(commit(4, S, vec![(Op::Add, rule(1))]));
        assert_eq!(pacer.flush(S + S / 4).len(), 1, "the fourth in the second");
        pacer.offer(commit(5, S, vec![(Op::Add, rule(1))]));
        pacer.offer(commit(6, S, vec![(Op::Add, rule(1))]));
        let groups = pacer.flush(S + S / 2);
        assert_eq!(groups.len(), 1, "over the budget: summarized");
        assert_eq!(groups[0].len(), 2);
    }

    #[test]
    fn a_chain_policy_change_is_described() {
        let mut texts = RuleTexts::default();
        let mut input = commit(9, S, Vec::new());
        input.chains.push((
            Op::Add,
            ChainRef {
                family: Family::Inet,
                table: "host".into(),
                chain: "input".into(),
            },
            Some(NF_DROP),
        ));
        let records = texts.records(vec![vec![input]]);
        assert_eq!(records[0].describe(), "chain inet host input policy drop");
        assert_eq!(
            records[0].line(),
            "ruleset generation 9 by nft: chain inet host input policy drop"
        );
    }

    #[test]
    fn failures_are_tied_to_the_change_just_before_them() {
        let changes: VecDeque<(u64, u32)> = [(10 * S, 1), (20 * S, 2)].into();
        assert_eq!(change_behind(21 * S, &changes), Some(2));
        assert_eq!(change_behind(25 * S, &changes), Some(2), "5 s after");
        assert_eq!(change_behind(26 * S, &changes), None, "too long after");
        assert_eq!(change_behind(12 * S, &changes), Some(1));
        assert_eq!(
            change_behind(20 * S - READ_SLACK_NS / 2, &changes),
            Some(2),
            "read a moment after the failure began"
        );
        assert_eq!(change_behind(5 * S, &changes), None, "before any change");
        assert_eq!(change_behind(21 * S, &VecDeque::new()), None);
    }
}

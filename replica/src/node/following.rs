//! The follower: appending what the primary streams, acknowledging it,
//! following the primary's commit, and asking for gaps with NAKs.
//!
//! NAK timing: a gap is asked for after `nak_delay_ms` (reordered
//! datagrams often fill it by themselves), then again with a backoff that
//! doubles up to `nak_backoff_max_ms`; once what a NAK asked for arrived,
//! the next hole is a new loss and waits only the first delay again. This
//! is where to change how eagerly followers repair.

use super::catchup::Fit;
use super::{Action, LogView, Message, Node, NodeId, RoleState, Target, Tip};
use ledger::crypto::Hash32;
use ledger::store::record::ReplicatedRecord;
use std::collections::BTreeMap;

/// Most holes one NAK round asks for; the rest follow in the next round.
pub const NAK_HOLES_MAX: usize = 32;

/// A gap this follower is asking to have filled.
#[derive(Clone, Debug)]
pub(super) struct Nak {
    /// Ask from here rather than from the tip: set after a conflict, to
    /// re-read records this log holds and find where it parts from the
    /// primary's.
    from_gseq: Option<u64>,
    to_gseq: u64,
    due_ms: u64,
    backoff_ms: u64,
    /// The end of the range the last NAK asked for (0: none sent yet).
    asked_to_gseq: u64,
}

/// The missing ranges of `from..=to`, given the records waiting in the
/// reorder buffer, at most `NAK_HOLES_MAX` of them.
pub(super) fn holes<V>(reorder: &BTreeMap<u64, V>, from: u64, to: u64) -> Vec<(u64, u64)> {
    let mut ranges = Vec::new();
    let mut next = from;
    for &held in reorder.range(from..=to).map(|(gseq, _)| gseq) {
        if ranges.len() == NAK_HOLES_MAX {
            return ranges;
        }
        if held > next {
            ranges.push((next, held - 1));
        }
        next = held + 1;
    }
    if next <= to && ranges.len() < NAK_HOLES_MAX {
        ranges.push((next, to));
    }
    ranges
}

impl Node {
    /// Bookkeeping for a datagram from the primary of this epoch.
    pub(super) fn heard_from_primary(&mut self, out: &mut Vec<Action>, sender: NodeId) {
        match self.state {
            // Two primaries in one epoch cannot happen: each won a majority
            // and a voter votes once per epoch. Ignore rather than obey.
            RoleState::Leading { .. } => return,
            RoleState::Following {
                leader: Some(leader),
                ..
            } if leader == sender => {}
            _ => {
                self.transition(out, RoleState::following(Some(sender)));
                self.reorder.clear();
            }
        }
        self.pre_votes = None;
        self.leader_heard_ms = Some(self.now_ms);
        self.reset_election_timer();
    }

    pub(super) fn follow_commit(&mut self, out: &mut Vec<Action>, leader_commit: u64) {
        if !matches!(self.state, RoleState::Following { .. }) {
            return;
        }
        let commit = leader_commit.min(self.verified);
        if commit > self.commit {
            self.commit = commit;
            out.push(Action::CommitAdvanced {
                commit_gseq: commit,
            });
        }
    }

    pub(super) fn on_append(
        &mut self,
        out: &mut Vec<Action>,
        first_gseq: u64,
        records: Vec<Vec<u8>>,
        log: &dyn LogView,
    ) {
        if !matches!(self.state, RoleState::Following { .. }) {
            return;
        }
        let mut tip = log.tip();
        let mut to_write: Vec<ReplicatedRecord> = Vec::new();
        let last_gseq = first_gseq + records.len() as u64 - 1;
        for (gseq, record) in (first_gseq..).zip(records) {
            let Some(record) = self.decode_record(gseq, record) else {
                return;
            };
            match self.fit(out, &record, &mut tip, !to_write.is_empty(), log) {
                Fit::Stored => self.verified = self.verified.max(gseq),
                Fit::Stop => return,
                Fit::Ahead => self.buffer(gseq, record),
                Fit::Unlinked if !to_write.is_empty() => {
                    // The primary's own records do not chain: drop.
                    self.counters.malformed_records_dropped += 1;
                    return;
                }
                Fit::Unlinked => {
                    // Our entry at `tip` differs from the primary's there, so
                    // it is not committed and goes (Raft: a conflicting entry
                    // and all that follow it). Where the logs part is not
                    // known yet: fetch again from our commit, which matches
                    // the primary, and compare record by record.
                    if tip.gseq > 0 && !self.truncate(out, tip.gseq - 1, log) {
                        return;
                    }
                    self.want_from(self.commit + 1, last_gseq);
                    return;
                }
                Fit::Next => {
                    tip = Tip::of(record.entry());
                    to_write.push(record);
                }
            }
        }
        self.drain_reorder(&mut tip, &mut to_write);
        self.settle_conflict_nak(first_gseq);
        if !to_write.is_empty() {
            out.push(Action::AppendReplicated { records: to_write });
            // Every record written continued a chain the primary sent in
            // this epoch, so this log now equals the primary's up to `tip`.
            self.verified = self.verified.max(tip.gseq);
        }
        self.end_repair_if_done(None);
        if last_gseq > tip.gseq {
            self.want(last_gseq);
        }
        self.acknowledge(out, tip);
    }

    /// A re-read that covered where it had to start, without a new
    /// conflict: the logs agree up to the tip again.
    fn settle_conflict_nak(&mut self, first_gseq: u64) {
        if let RoleState::Following { nak: Some(nak), .. } = &mut self.state
            && nak.from_gseq.is_some_and(|from| first_gseq <= from)
        {
            nak.from_gseq = None;
        }
    }

    /// Tells the primary where this follower stands — not while it repairs
    /// a damaged log: the primary must not count it for a commit then.
    fn acknowledge(&mut self, out: &mut Vec<Action>, tip: Tip) {
        if self.repair_until.is_some() {
            return;
        }
        if let Some(leader) = self.leader() {
            self.send(
                out,
                Target::Node(leader),
                Message::Ack {
                    tip_gseq: tip.gseq,
                    tip_hash: tip.hash,
                },
            );
        }
    }

    pub(super) fn on_heartbeat(
        &mut self,
        out: &mut Vec<Action>,
        tip_gseq: u64,
        tip_hash: Hash32,
        log: &dyn LogView,
    ) {
        if !matches!(self.state, RoleState::Following { .. }) {
            return;
        }
        let tip = log.tip();
        if tip_gseq > tip.gseq {
            self.want(tip_gseq);
        } else if log
            .entry_meta(tip_gseq)
            .is_some_and(|(hash, _)| hash == tip_hash)
        {
            self.verified = self.verified.max(tip_gseq);
            self.end_repair_if_done(Some(tip_gseq));
        }
        // Acknowledge on heartbeats too, so the primary learns where this
        // follower stands even when no Append gets through.
        self.acknowledge(out, tip);
    }

    pub(super) fn maybe_nak(&mut self, out: &mut Vec<Action>, log: &dyn LogView) {
        let (now_ms, delay_ms, backoff_max_ms, repair_max) = (
            self.now_ms,
            self.config.nak_delay_ms,
            self.config.nak_backoff_max_ms,
            self.config.repair_records_max,
        );
        let tip = log.tip().gseq;
        let RoleState::Following {
            leader: Some(leader),
            nak: nak_slot,
        } = &mut self.state
        else {
            return;
        };
        let leader = *leader;
        let Some(nak) = nak_slot else {
            return;
        };
        if nak.to_gseq <= tip && nak.from_gseq.is_none() {
            *nak_slot = None;
            return;
        }
        if nak.asked_to_gseq > 0 && tip >= nak.asked_to_gseq {
            // What the last NAK asked for arrived: the next hole is a new
            // loss, asked for after the usual delay, not after a backoff
            // that grew while the previous one was repaired.
            nak.asked_to_gseq = 0;
            nak.backoff_ms = delay_ms.max(1) * 2;
            nak.due_ms = nak.due_ms.min(now_ms + delay_ms);
        }
        if now_ms < nak.due_ms {
            return;
        }
        let from_gseq = nak
            .from_gseq
            .map_or(tip + 1, |from| from.min(tip + 1))
            .max(1);
        let to_gseq = nak.to_gseq.max(from_gseq).min(from_gseq + repair_max - 1);
        let ranges = if nak.from_gseq.is_some() {
            // After a conflict: re-read the whole range, held records too.
            vec![(from_gseq, to_gseq)]
        } else {
            // Ask for the holes only (one NAK each, all at once): what lies
            // between them already waits in the reorder buffer.
            holes(&self.reorder, from_gseq, to_gseq)
        };
        nak.due_ms = now_ms + nak.backoff_ms;
        nak.backoff_ms = (nak.backoff_ms * 2).min(backoff_max_ms);
        nak.asked_to_gseq = ranges.last().map_or(to_gseq, |&(_, to)| to);
        for (from_gseq, to_gseq) in ranges {
            self.counters.naks_sent += 1;
            self.send(
                out,
                Target::Node(leader),
                Message::Nak { from_gseq, to_gseq },
            );
        }
    }

    /// Notes that records up to `to_gseq` are missing; the NAK goes out
    /// after the delay unless they arrive first.
    pub(super) fn want(&mut self, to_gseq: u64) {
        let (now_ms, delay_ms) = (self.now_ms, self.config.nak_delay_ms);
        let RoleState::Following { nak, .. } = &mut self.state else {
            return;
        };
        match nak {
            Some(nak) => nak.to_gseq = nak.to_gseq.max(to_gseq),
            None => {
                *nak = Some(Nak {
                    from_gseq: None,
                    to_gseq,
                    due_ms: now_ms + delay_ms,
                    backoff_ms: delay_ms.max(1) * 2,
                    asked_to_gseq: 0,
                })
            }
        }
    }

    /// Like [`want`](Self::want), but asks for records from `from_gseq` on
    /// even if this log holds some of them.
    fn want_from(&mut self, from_gseq: u64, to_gseq: u64) {
        self.want(to_gseq);
        if let RoleState::Following { nak: Some(nak), .. } = &mut self.state {
            nak.from_gseq = Some(nak.from_gseq.map_or(from_gseq, |f| f.min(from_gseq)));
        }
    }
}

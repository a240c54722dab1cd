//! Records from a more up-to-date voter (catch-up), and what every
//! received record goes through: decoding, fitting against the log
//! (compare, or truncate a stale suffix), and the reorder buffer.
//!
//! Why catch-up exists: the sync replica never stands, so a backup whose
//! log is behind the sync's could never win an election. While no primary
//! is alive, a voter that refuses a candidate for being behind also sends
//! it the records it lacks, and the candidate stands again as soon as it
//! has caught up.

use super::{Action, Candidacy, CatchupSource, LogView, Node, NodeId, Target, Tip};
use ledger::store::record::{GENESIS_HASH, ReplicatedRecord};

/// The last catch-up a voter sent a candidate.
#[derive(Clone, Copy, Debug)]
pub(super) struct CatchupSent {
    at_ms: u64,
    /// The candidate's (last gseq, last epoch) it answered.
    candidate_tip: (u64, u64),
    /// Where the next segment for the same candidate tip starts.
    next_gseq: u64,
}

/// Where a received record stands against the log (and the records
/// accepted before it in the same batch).
pub(super) enum Fit {
    /// The log already holds this very record.
    Stored,
    /// It continues the log: write it.
    Next,
    /// A gap lies before it: buffer it.
    Ahead,
    /// It sits right after the tip but does not link to it.
    Unlinked,
    /// Stop taking this batch (a conflict after records already accepted,
    /// or a truncation that would drop a committed entry).
    Stop,
}

impl Tip {
    pub(super) fn of(entry: &ledger::store::record::LogEntry) -> Tip {
        Tip {
            gseq: entry.body.gseq,
            hash: entry.hash,
            epoch: entry.body.epoch,
        }
    }
}

impl Node {
    /// A replicated record that decodes and sits where the datagram says;
    /// anything else is counted and refused. Decoding hashes the record:
    /// this is the only place a received record is decoded.
    pub(super) fn decode_record(&mut self, gseq: u64, record: Vec<u8>) -> Option<ReplicatedRecord> {
        match ReplicatedRecord::decode(record) {
            Ok(record) if record.gseq() == gseq => Some(record),
            _ => {
                self.counters.malformed_records_dropped += 1;
                None
            }
        }
    }

    /// Fits a received record against the log. A record at or below the
    /// tip is compared with the log's: the same hash means it is stored; a
    /// different one is a suffix from another history, which goes (never
    /// below the commit) so the record can take its place. `accepting` says
    /// records of this batch were already accepted: then `tip` includes
    /// them, and a conflict means the sender's own records disagree.
    pub(super) fn fit(
        &mut self,
        out: &mut Vec<Action>,
        record: &ReplicatedRecord,
        tip: &mut Tip,
        accepting: bool,
        log: &dyn LogView,
    ) -> Fit {
        let entry = record.entry();
        let gseq = entry.body.gseq;
        if gseq <= tip.gseq {
            // Records of one datagram rise in gseq and only pending writes
            // raise `tip`, so with nothing accepted yet `gseq` is on disk.
            match log.entry_meta(gseq) {
                Some((hash, _)) if hash == entry.hash => return Fit::Stored,
                _ if accepting => return Fit::Stop,
                _ => {
                    if !self.truncate(out, gseq - 1, log) {
                        return Fit::Stop;
                    }
                    *tip = log_tip_after_truncate(log, gseq - 1);
                }
            }
        }
        if gseq > tip.gseq + 1 {
            Fit::Ahead
        } else if entry.prev_hash != tip.hash {
            Fit::Unlinked
        } else {
            Fit::Next
        }
    }

    pub(super) fn buffer(&mut self, gseq: u64, record: ReplicatedRecord) {
        if self.reorder.len() >= self.config.reorder_records_max
            && !self.reorder.contains_key(&gseq)
        {
            // Keep the records closest to the tip; a far one will be NAKed.
            match self.reorder.last_key_value() {
                Some((&far, _)) if far > gseq => {
                    self.reorder.remove(&far);
                }
                _ => {
                    self.counters.reorder_overflow_dropped += 1;
                    return;
                }
            }
            self.counters.reorder_overflow_dropped += 1;
        }
        self.reorder.insert(gseq, Box::new(record));
    }

    /// Moves the buffered records that now continue the log to `to_write`.
    pub(super) fn drain_reorder(&mut self, tip: &mut Tip, to_write: &mut Vec<ReplicatedRecord>) {
        // Drop what is already stored.
        while let Some(entry) = self.reorder.first_entry() {
            if *entry.key() > tip.gseq {
                break;
            }
            entry.remove();
        }
        while let Some(record) = self.reorder.remove(&(tip.gseq + 1)) {
            if record.entry().prev_hash != tip.hash {
                // A buffered record from an older view of the log; the NAK
                // path fetches the right one.
                self.reorder.clear();
                break;
            }
            *tip = Tip::of(record.entry());
            to_write.push(*record);
        }
    }

    /// Truncates to `to_gseq` unless that would drop a committed entry.
    pub(super) fn truncate(
        &mut self,
        out: &mut Vec<Action>,
        to_gseq: u64,
        log: &dyn LogView,
    ) -> bool {
        if to_gseq < self.commit {
            // The primary disagrees with something this node holds as
            // committed: that is a safety violation somewhere. Refuse.
            self.counters.conflicts_below_commit += 1;
            return false;
        }
        let tip = log.tip().gseq;
        if to_gseq < tip {
            self.counters.truncations += 1;
            self.counters.records_truncated += tip - to_gseq;
            out.push(Action::TruncateAfter { gseq: to_gseq });
            self.reorder.clear();
            self.verified = self.verified.min(to_gseq);
        }
        true
    }

    /// Sends a candidate whose log is behind ours the next segment of the
    /// records it lacks. Only while no primary is alive, and at most once
    /// per heartbeat per candidate. Where the logs part is not known, the
    /// segments walk up from the candidate's commit through what it holds
    /// until they reach the divergence; otherwise each starts where the
    /// candidate's log ends (see [`catchup_start`]), and a segment that did
    /// not move the candidate's tip (lost on the way) is sent again. Either
    /// way it crosses any distance, segment by segment.
    pub(super) fn send_catchup(
        &mut self,
        out: &mut Vec<Action>,
        candidate: NodeId,
        candidacy: Candidacy,
        log: &dyn LogView,
    ) {
        let primary_alive = self.primary_alive();
        let previous = self.catchup_sent.get(&candidate).copied();
        let recently = previous.is_some_and(|p| self.now_ms < p.at_ms + self.config.heartbeat_ms);
        let tip = log.tip();
        if primary_alive || recently || tip.gseq == 0 {
            return;
        }
        let candidate_tip = (candidacy.last_gseq, candidacy.last_epoch);
        let from = match previous {
            // Still walking through what the candidate holds, looking for
            // where its log parts from ours: go on from there.
            Some(p)
                if p.candidate_tip == candidate_tip
                    && p.next_gseq <= candidacy.last_gseq.min(tip.gseq) =>
            {
                p.next_gseq
            }
            // A fresh tip, a segment past the candidate's tip that did not
            // move it, or a walk that ran past our own tip (the last
            // segment was lost on the way): start over.
            _ => catchup_start(&candidacy, log),
        };
        if from > tip.gseq {
            return;
        }
        let to = tip.gseq.min(from + self.config.repair_records_max - 1);
        let sent = CatchupSent {
            at_ms: self.now_ms,
            candidate_tip,
            next_gseq: to + 1,
        };
        self.catchup_sent.insert(candidate, sent);
        self.counters.catchup_records_sent += to - from + 1;
        out.push(Action::Replicate {
            to: Target::Node(candidate),
            from_gseq: from,
            to_gseq: to,
            epoch: self.epoch,
            commit_gseq: self.commit,
            catchup: Some(CatchupSource {
                last_gseq: tip.gseq,
                last_epoch: tip.epoch,
            }),
        });
    }

    /// Records from a voter with a more up-to-date log, while no primary is
    /// alive. Where they differ from ours at the same gseq, ours are not
    /// committed — a committed entry is in every log that is more up to
    /// date than one holding it — so they go, never below our commit; the
    /// rest extends our log so we can win the election.
    pub(super) fn on_catchup(
        &mut self,
        out: &mut Vec<Action>,
        first_gseq: u64,
        records: Vec<Vec<u8>>,
        source: CatchupSource,
        log: &dyn LogView,
    ) {
        let mut tip = log.tip();
        if self.primary_alive() || (source.last_epoch, source.last_gseq) <= (tip.epoch, tip.gseq) {
            return;
        }
        let mut to_write = Vec::new();
        let mut matched = false;
        for (gseq, record) in (first_gseq..).zip(records) {
            let Some(record) = self.decode_record(gseq, record) else {
                break;
            };
            match self.fit(out, &record, &mut tip, !to_write.is_empty(), log) {
                Fit::Stored => matched = true,
                // Not connected to our log: the next catch-up starts earlier
                // (at our commit) and finds where the logs part.
                Fit::Stop | Fit::Unlinked => break,
                // Datagrams arrive in any order: keep it for when the gap fills.
                Fit::Ahead => self.buffer(gseq, record),
                Fit::Next => {
                    tip = Tip::of(record.entry());
                    to_write.push(record);
                }
            }
        }
        self.drain_reorder(&mut tip, &mut to_write);
        let took = !to_write.is_empty();
        if took {
            self.counters.catchup_records_taken += to_write.len() as u64;
            out.push(Action::AppendReplicated { records: to_write });
        }
        if took || matched || tip.gseq >= source.last_gseq {
            // Caught up with the voter, a segment closer, or a segment
            // further in the search for where the logs part: ask again
            // soon (the voter sends the next segment) rather than after a
            // whole election timeout.
            self.election_due_ms = self
                .election_due_ms
                .min(self.now_ms + self.config.heartbeat_ms);
        }
    }
}

/// Where a catch-up for `candidacy` starts. When our entry at the
/// candidate's last gseq has the candidate's last epoch, the two logs are
/// the same up to there (one primary appends one entry per gseq in its
/// epoch, and the chain links everything before it), so the catch-up
/// continues right after what the candidate holds. Otherwise the logs part
/// somewhere after the candidate's commit (a committed prefix is common to
/// every log), and the catch-up starts there so the candidate can find
/// the divergence. Starting at the commit every time would resend the same
/// first segment forever to a candidate more than a segment behind.
fn catchup_start(candidacy: &Candidacy, log: &dyn LogView) -> u64 {
    let matches_here = log
        .entry_meta(candidacy.last_gseq)
        .is_some_and(|(_, epoch)| epoch == candidacy.last_epoch);
    let from = if matches_here {
        candidacy.last_gseq + 1
    } else {
        (candidacy.commit_gseq + 1).min(candidacy.last_gseq + 1)
    };
    from.max(1)
}

/// The tip after truncating to `gseq` (read back from the log view, which
/// the shell updates when it executes the truncation).
fn log_tip_after_truncate(log: &dyn LogView, gseq: u64) -> Tip {
    match log.entry_meta(gseq) {
        Some((hash, epoch)) => Tip { gseq, hash, epoch },
        None => Tip {
            gseq: 0,
            hash: GENESIS_HASH,
            epoch: 0,
        },
    }
}

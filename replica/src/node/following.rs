//! The follower: appending what the primary streams, acknowledging it,
//! following the primary's commit, and asking for gaps with NAKs.
//!
//! NAK timing, per hole (as Aeron and NORM do): a hole is asked for
//! `nak_delay_ms` after it is found (at once when that is 0; reordered
//! datagrams may fill it by themselves), again at once when a NAK sent
//! after it was answered first (see [`Repairs`]), and otherwise after its
//! own timer, `NakTiming::retry_ms`, doubling up to `nak_backoff_max_ms`.
//! Each hole has its own timer, so a lost NAK or retransmission delays
//! only its own hole: with one timer for all of them, every loss of a
//! repair doubled the wait of every later hole, and under steady loss the
//! stream stalled on 400 ms NAK rounds. This is where to change how
//! eagerly followers repair.

use super::catchup::Fit;
use super::{Action, LogView, Message, Node, NodeId, RoleState, Target, Tip};
use ledger::crypto::Hash32;
use ledger::store::record::ReplicatedRecord;
use std::collections::BTreeMap;

/// Most holes a follower tracks and asks for at a time (counted from its
/// tip); the rest are asked for as these fill.
pub const NAK_HOLES_MAX: usize = 32;

/// A gap this follower is asking to have filled.
#[derive(Clone, Debug)]
pub(super) struct Nak {
    /// Ask from here rather than from the tip: set after a conflict, to
    /// re-read records this log holds and find where it parts from the
    /// primary's.
    from_gseq: Option<u64>,
    /// The highest gseq known to be missing.
    to_gseq: u64,
    /// Each hole's timer, by its first gseq (at most `NAK_HOLES_MAX`).
    holes: BTreeMap<u64, HoleTimer>,
}

/// When a hole is asked for (again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct HoleTimer {
    /// The hole's last gseq when the timer was set.
    to_gseq: u64,
    due_ms: u64,
    /// How many NAKs asked for it so far.
    asks: u32,
    /// When the first NAK of it left.
    asked_at_ms: u64,
    /// The number of its latest NAK ([`Repairs::asked`]).
    ask_number: u64,
}

/// The follower's NAK timings.
#[derive(Clone, Copy, Debug)]
pub(super) struct NakTiming {
    /// A new hole waits this long before its first NAK.
    pub(super) delay_ms: u64,
    /// The wait after a hole's first NAK when no later repair arrives
    /// (from the repair round trip), doubled per retry up to
    /// `backoff_max_ms`.
    pub(super) retry_ms: u64,
    pub(super) backoff_max_ms: u64,
}

impl NakTiming {
    pub(super) fn of(config: &super::NodeConfig, repairs: &Repairs) -> NakTiming {
        let backoff_max_ms = config.nak_backoff_max_ms.max(NAK_RETRY_MS_MIN);
        NakTiming {
            delay_ms: config.nak_delay_ms,
            retry_ms: repairs.retry_ms().min(backoff_max_ms),
            backoff_max_ms,
        }
    }

    /// The wait after the `asks`-th NAK of a hole.
    fn wait_ms(&self, asks: u32) -> u64 {
        let doubled = self
            .retry_ms
            .saturating_mul(1 << asks.saturating_sub(1).min(16));
        doubled.min(self.backoff_max_ms)
    }
}

/// A hole is never asked for again by its timer sooner than this, nor
/// before any repair was timed. The timer is the fallback for a lost
/// repair that no later repair reveals (a lost tail), so it errs long: a
/// repair still on its way when the timer fires is retransmitted twice,
/// and the round trip's queueing tail reaches 100-200 ms on a loaded
/// machine.
pub const NAK_RETRY_MS_MIN: u64 = 200;

/// What the follower learned from its repairs: how long one takes, and
/// which NAK was answered last.
///
/// A lost repair (the NAK or its retransmission) is found the way RACK
/// finds lost TCP segments: the primary answers NAKs in the order it gets
/// them and its retransmissions arrive in that order, so once a later NAK
/// was answered, an earlier one still unanswered was lost, and its hole is
/// asked again at once. The timer is only the fallback when no later
/// repair arrives: the round trip smoothed as TCP smooths its own (RFC
/// 6298), timed only on holes asked for once (Karn's rule), and the wait
/// four times its mean, or the mean plus four deviations, and at least
/// `NAK_RETRY_MS_MIN`. A timer alone must choose between
/// asking twice for repairs that were only slow (the round trip is mostly
/// queueing, a round and an fsync on each side, with a long tail: a fixed
/// 20 ms asked for a third of the holes twice on a loaded machine) and
/// waiting long on the ones really lost.
#[derive(Clone, Copy, Debug, Default)]
pub struct Repairs {
    smoothed_ms: Option<u64>,
    variation_ms: u64,
    /// NAKs sent so far, numbered from 1.
    asked: u64,
    /// The number of the latest NAK whose hole filled.
    answered: u64,
}

impl Repairs {
    fn sample(&mut self, ms: u64) {
        match self.smoothed_ms {
            None => {
                self.smoothed_ms = Some(ms);
                self.variation_ms = ms / 2;
            }
            Some(smoothed) => {
                self.variation_ms = (3 * self.variation_ms + smoothed.abs_diff(ms)) / 4;
                self.smoothed_ms = Some((7 * smoothed + ms) / 8);
            }
        }
    }

    fn retry_ms(&self) -> u64 {
        self.smoothed_ms.map_or(NAK_RETRY_MS_MIN, |smoothed| {
            (smoothed + 4 * self.variation_ms)
                .max(4 * smoothed)
                .max(NAK_RETRY_MS_MIN)
        })
    }

    /// A hole filled: it times the round trip if it was asked for once,
    /// and says every NAK before its latest was answered or lost.
    fn filled(&mut self, timer: &HoleTimer, now_ms: u64) {
        if timer.asks == 0 {
            return;
        }
        if timer.asks == 1 {
            self.sample(now_ms.saturating_sub(timer.asked_at_ms));
        }
        self.answered = self.answered.max(timer.ask_number);
    }
}

/// The hole timers after a NAK round over `holes` (the missing ranges now,
/// all above `tip`): a hole that overlaps one already timed keeps that
/// timer until it is due, or until a later NAK was answered (its own
/// repair was lost); then it is asked for (`ask`) and waits longer each
/// time. A new hole waits the first delay (asked at once when that is 0).
/// Timers of holes that filled are gone, and tell `repairs`.
pub(super) fn next_hole_timers(
    timers: &BTreeMap<u64, HoleTimer>,
    holes: &[(u64, u64)],
    (now_ms, tip): (u64, u64),
    timing: NakTiming,
    repairs: &mut Repairs,
    mut ask: impl FnMut(u64, u64),
) -> BTreeMap<u64, HoleTimer> {
    note_filled(timers, holes, (now_ms, tip), repairs);
    let mut next = BTreeMap::new();
    for &(from, to) in holes {
        // The timers of what was asked for within this hole (a partly
        // filled repair leaves a smaller hole inside the old one).
        let timer = timers
            .range(..=to)
            .rev()
            .take_while(|(_, t)| t.to_gseq >= from)
            .map(|(_, t)| *t)
            .min_by_key(|t| t.due_ms);
        let mut timer = match timer {
            Some(timer) => HoleTimer {
                to_gseq: to.min(timer.to_gseq),
                ..timer
            },
            None => HoleTimer {
                to_gseq: to,
                due_ms: now_ms + timing.delay_ms,
                asks: 0,
                asked_at_ms: now_ms,
                ask_number: 0,
            },
        };
        let lost = timer.asks > 0 && timer.ask_number < repairs.answered;
        if lost || now_ms >= timer.due_ms {
            ask(from, to);
            repairs.asked += 1;
            if timer.asks == 0 {
                timer.asked_at_ms = now_ms;
            }
            timer.asks = timer.asks.saturating_add(1);
            timer.ask_number = repairs.asked;
            timer.to_gseq = to;
            timer.due_ms = now_ms + timing.wait_ms(timer.asks);
        }
        next.insert(from, timer);
    }
    next
}

/// Tells `repairs` of the timed holes that are no longer holes: the tip
/// passed them, or their records wait in the reorder buffer (the scan of
/// `holes` reached past them and did not find them).
fn note_filled(
    timers: &BTreeMap<u64, HoleTimer>,
    holes: &[(u64, u64)],
    (now_ms, tip): (u64, u64),
    repairs: &mut Repairs,
) {
    let scanned_to = match holes.last() {
        Some(&(from, _)) if holes.len() >= NAK_HOLES_MAX => from,
        _ => u64::MAX,
    };
    for (&from, timer) in timers {
        // `holes` rise and do not overlap: the first ending at or after
        // `from` is the only one that can overlap the timer's range.
        let next_hole = holes.partition_point(|&(_, to)| to < from);
        let overlapped = holes
            .get(next_hole)
            .is_some_and(|&(hole_from, _)| hole_from <= timer.to_gseq);
        let filled = timer.to_gseq <= tip || (timer.to_gseq < scanned_to && !overlapped);
        if filled {
            repairs.filled(timer, now_ms);
        }
    }
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
        // A datagram past everything received so far reveals a new hole.
        let new_hole = first_gseq > self.highest_received(tip.gseq) + 1;
        let mut to_write: Vec<ReplicatedRecord> = Vec::new();
        let last_gseq = first_gseq + records.len() as u64 - 1;
        for (gseq, record) in (first_gseq..).zip(records) {
            let Some(record) = self.decode_record(gseq, record) else {
                return;
            };
            match self.fit(out, &record, &mut tip, !to_write.is_empty(), log) {
                Fit::Stored => {
                    self.counters.records_received_twice += 1;
                    self.verified = self.verified.max(gseq);
                }
                Fit::Stop => return,
                Fit::Ahead => {
                    if self.reorder.contains_key(&gseq) {
                        self.counters.records_received_twice += 1;
                    }
                    self.buffer(gseq, record);
                }
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
            if new_hole {
                // Asked for at once when `nak_delay_ms` is 0 (Aeron's
                // unicast NAK delay), else its timer starts now.
                self.nak_holes(out, tip.gseq);
            }
        }
        self.acknowledge(out, tip);
    }

    /// The highest gseq this follower holds, in its log (up to `tip`) or
    /// waiting in the reorder buffer.
    fn highest_received(&self, tip: u64) -> u64 {
        self.reorder
            .last_key_value()
            .map_or(tip, |(&gseq, _)| gseq.max(tip))
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
            let new_hole = tip_gseq > self.highest_received(tip.gseq);
            self.want(tip_gseq);
            if new_hole {
                self.nak_holes(out, tip.gseq);
            }
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

    /// Asks for every hole whose timer is due: a hole first seen waits
    /// `nak_delay_ms` (reordered datagrams may fill it), and each hole
    /// then has its own retry timer, so a lost NAK or retransmission
    /// delays only its own hole, never the holes found after it.
    pub(super) fn maybe_nak(&mut self, out: &mut Vec<Action>, log: &dyn LogView) {
        self.nak_holes(out, log.tip().gseq);
    }

    /// [`maybe_nak`](Self::maybe_nak) with the log's tip as it will be
    /// once the pending writes are done.
    fn nak_holes(&mut self, out: &mut Vec<Action>, tip: u64) {
        let timing = NakTiming::of(&self.config, &self.repairs);
        let (now_ms, repair_max) = (self.now_ms, self.config.repair_records_max);
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
            note_filled(&nak.holes, &[], (now_ms, tip), &mut self.repairs);
            *nak_slot = None;
            return;
        }
        let from_gseq = nak
            .from_gseq
            .map_or(tip + 1, |from| from.min(tip + 1))
            .max(1);
        let to_gseq = nak.to_gseq.max(from_gseq);
        let ranges: Vec<(u64, u64)> = if nak.from_gseq.is_some() {
            // After a conflict: re-read the whole range, held records too.
            vec![(from_gseq, to_gseq)]
        } else {
            // The holes only: what lies between them waits in the reorder
            // buffer.
            holes(&self.reorder, from_gseq, to_gseq)
        };
        // One NAK, one retransmission: a longer hole is asked for in parts.
        let ranges: Vec<(u64, u64)> = ranges
            .into_iter()
            .map(|(from, to)| (from, to.min(from + repair_max - 1)))
            .collect();
        let mut asks = Vec::new();
        let repairs = &mut self.repairs;
        nak.holes = next_hole_timers(
            &nak.holes,
            &ranges,
            (now_ms, tip),
            timing,
            repairs,
            |from, to| {
                asks.push((from, to));
            },
        );
        for (from_gseq, to_gseq) in asks {
            self.counters.naks_sent += 1;
            self.send(
                out,
                Target::Node(leader),
                Message::Nak { from_gseq, to_gseq },
            );
        }
    }

    /// Notes that records up to `to_gseq` are missing; each hole is asked
    /// for after the delay unless it fills first.
    pub(super) fn want(&mut self, to_gseq: u64) {
        let RoleState::Following { nak, .. } = &mut self.state else {
            return;
        };
        match nak {
            Some(nak) => nak.to_gseq = nak.to_gseq.max(to_gseq),
            None => {
                *nak = Some(Nak {
                    from_gseq: None,
                    to_gseq,
                    holes: BTreeMap::new(),
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

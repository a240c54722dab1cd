//! The primary: group-committed proposals, streaming within the flow
//! control window, acknowledgements, the commit rule and retransmission.

use super::{Action, LogView, Message, Node, NodeId, NotPrimary, RoleState, Target};
use ledger::crypto::Hash32;
use ledger::store::Proposed;

/// What the primary knows of a follower.
#[derive(Clone, Debug, Default)]
pub(super) struct Progress {
    /// Highest gseq known to match this log on the follower.
    pub(super) match_gseq: u64,
    pub(super) last_heard_ms: u64,
    /// When a mismatched acknowledgement last triggered a retransmission.
    pub(super) last_repair_ms: Option<u64>,
}

impl Node {
    pub(super) fn tick_primary(&mut self, out: &mut Vec<Action>, log: &dyn LogView) {
        let RoleState::Leading {
            progress,
            heartbeat_due_ms,
            ..
        } = &self.state
        else {
            return;
        };
        // Step down when no follower has been heard for an election timeout:
        // a primary cut off from the majority must stop taking writes so
        // machines move to the side that can commit.
        let quorum_window = self.config.election_timeout_max_ms;
        let heard = progress
            .values()
            .filter(|p| self.now_ms.saturating_sub(p.last_heard_ms) < quorum_window)
            .count();
        if heard + 1 < self.config.majority() {
            self.transition(out, RoleState::following(None));
            self.leader_heard_ms = None;
            self.reset_election_timer();
            return;
        }
        if self.now_ms >= *heartbeat_due_ms {
            self.stream(out, log);
            self.heartbeat(out, log);
        }
    }

    /// Tells followers the tip as streamed so far: records held back by the
    /// flow control window are not a lost tail for followers to NAK.
    fn heartbeat(&mut self, out: &mut Vec<Action>, log: &dyn LogView) {
        let RoleState::Leading { streamed, .. } = self.state else {
            return;
        };
        let tip = log.tip();
        let (tip_gseq, tip_hash): (u64, Hash32) = if streamed < tip.gseq {
            match log.entry_meta(streamed) {
                Some((hash, _)) => (streamed, hash),
                None => (tip.gseq, tip.hash),
            }
        } else {
            (tip.gseq, tip.hash)
        };
        self.send(out, Target::All, Message::Heartbeat { tip_gseq, tip_hash });
        let next = self.now_ms + self.config.heartbeat_ms;
        if let RoleState::Leading {
            heartbeat_due_ms, ..
        } = &mut self.state
        {
            *heartbeat_due_ms = next;
        }
    }

    /// Entries to append: a batch of machine events (group commit: the
    /// shell passes everything that arrived since the last call), or the
    /// records of an operator's request. Both are appended in this epoch,
    /// streamed, committed and fenced alike.
    pub fn propose(&mut self, entries: Vec<Proposed>) -> Result<Vec<Action>, NotPrimary> {
        self.settle();
        if !self.accepts_writes() {
            let leader = self.leader().filter(|&l| l != self.config.id);
            return Err(NotPrimary::Follow(leader));
        }
        Ok(vec![Action::Append {
            epoch: self.epoch,
            entries,
        }])
    }

    /// The shell executed `Append` or `AppendMarker`.
    pub fn on_local_append(&mut self, log: &dyn LogView) -> Vec<Action> {
        self.settle();
        let mut out = Vec::new();
        let epoch = self.epoch;
        let RoleState::Leading {
            epoch_start_gseq, ..
        } = &mut self.state
        else {
            return out;
        };
        let tip = log.tip();
        if epoch_start_gseq.is_none() && tip.epoch == epoch {
            *epoch_start_gseq = Some(tip.gseq);
        }
        self.stream(&mut out, log);
        out
    }

    /// Streams new records to every follower, as far as the flow control
    /// window allows.
    pub(super) fn stream(&mut self, out: &mut Vec<Action>, log: &dyn LogView) {
        let (epoch, commit, now_ms) = (self.epoch, self.commit, self.now_ms);
        let live_ms = self.config.election_timeout_min_ms;
        let window = self.config.stream_window_records;
        let lead = self.config.reorder_records_max as u64;
        let RoleState::Leading {
            progress, streamed, ..
        } = &mut self.state
        else {
            return;
        };
        let tip = log.tip().gseq;
        let acknowledged = progress.values().map(|p| p.match_gseq).max().unwrap_or(0);
        let mut to = tip.min(acknowledged + window);
        // A live follower that keeps up is not left more than its reorder
        // buffer behind (it would drop what it cannot hold and fetch it
        // again record by record); one that is silent or catching up from
        // far behind never holds the stream back.
        for follower in progress.values() {
            let live = now_ms.saturating_sub(follower.last_heard_ms) < live_ms;
            if live && streamed.saturating_sub(follower.match_gseq) <= lead {
                to = to.min(follower.match_gseq + lead);
            }
        }
        let held_back = to < tip;
        if to > *streamed {
            out.push(Action::Replicate {
                to: Target::All,
                from_gseq: *streamed + 1,
                to_gseq: to,
                epoch,
                commit_gseq: commit,
                catchup: None,
            });
            *streamed = to;
        }
        if held_back {
            self.counters.stream_window_waits += 1;
        }
    }

    pub(super) fn on_ack(
        &mut self,
        out: &mut Vec<Action>,
        sender: NodeId,
        tip_gseq: u64,
        tip_hash: Hash32,
        log: &dyn LogView,
    ) {
        let (now, heartbeat_ms) = (self.now_ms, self.config.heartbeat_ms);
        let repair_max = self.config.repair_records_max;
        let RoleState::Leading { progress, .. } = &mut self.state else {
            return;
        };
        let my_tip = log.tip();
        let Some(follower) = progress.get_mut(&sender) else {
            return;
        };
        follower.last_heard_ms = now;
        let matches = tip_gseq <= my_tip.gseq
            && (tip_gseq == 0
                || log
                    .entry_meta(tip_gseq)
                    .is_some_and(|(hash, _)| hash == tip_hash));
        if matches {
            // A follower behind the tip NAKs what it misses by itself.
            follower.match_gseq = follower.match_gseq.max(tip_gseq);
            self.stream(out, log);
        } else {
            // The follower holds a suffix this log does not: resend from
            // where the logs may still agree, at most once per heartbeat, so
            // it finds the conflict and truncates.
            let due = follower
                .last_repair_ms
                .is_none_or(|at| now >= at + heartbeat_ms);
            if due {
                follower.last_repair_ms = Some(now);
                let from = tip_gseq.min(my_tip.gseq).max(1);
                if my_tip.gseq >= from {
                    let to = my_tip.gseq.min(from + repair_max - 1);
                    self.retransmit(out, sender, from, to);
                }
            }
        }
        self.advance_commit(out, log);
    }

    fn retransmit(&mut self, out: &mut Vec<Action>, to_node: NodeId, from: u64, to: u64) {
        self.counters.records_retransmitted += to - from + 1;
        out.push(Action::Replicate {
            to: Target::Node(to_node),
            from_gseq: from,
            to_gseq: to,
            epoch: self.epoch,
            commit_gseq: self.commit,
            catchup: None,
        });
    }

    /// With three members, the majority is this node and one follower: the
    /// highest gseq stored on some follower and synced here is committed,
    /// provided it is of this epoch (at or after the epoch's marker).
    /// Records are streamed before this node's own sync, so a follower may
    /// hold more than is durable here: that waits for `on_synced`.
    pub(super) fn advance_commit(&mut self, out: &mut Vec<Action>, log: &dyn LogView) {
        let RoleState::Leading {
            progress,
            epoch_start_gseq: Some(epoch_start),
            ..
        } = &self.state
        else {
            return;
        };
        let synced = log.synced_gseq().min(log.tip().gseq);
        let mut matched: Vec<u64> = progress
            .values()
            .map(|p| p.match_gseq.min(synced))
            .collect();
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let needed = self.config.majority() - 1;
        let Some(&candidate) = matched.get(needed.saturating_sub(1)) else {
            return;
        };
        if candidate > self.commit && candidate >= *epoch_start {
            self.commit = candidate;
            out.push(Action::CommitAdvanced {
                commit_gseq: candidate,
            });
        }
    }

    pub(super) fn on_nak(
        &mut self,
        out: &mut Vec<Action>,
        sender: NodeId,
        from_gseq: u64,
        to_gseq: u64,
        log: &dyn LogView,
    ) {
        self.counters.naks_received += 1;
        let now = self.now_ms;
        let RoleState::Leading { progress, .. } = &mut self.state else {
            return;
        };
        if let Some(follower) = progress.get_mut(&sender) {
            follower.last_heard_ms = now;
        }
        let tip = log.tip().gseq;
        let to = to_gseq
            .min(tip)
            .min(from_gseq.saturating_add(self.config.repair_records_max - 1));
        if from_gseq == 0 || from_gseq > to {
            return;
        }
        self.retransmit(out, sender, from_gseq, to);
    }
}

//! Elections: timeouts, pre-votes, votes and epochs.
//!
//! Raft's rules: a replica that hears no primary for an election timeout
//! first asks whether the others would vote for it (pre-vote, which changes
//! no state anywhere, so a replica cut off from the others cannot depose a
//! healthy primary when it returns), then stands in the next epoch; a voter
//! grants at most one vote per epoch, persisted before the reply leaves,
//! and only to a candidate whose log is at least as up to date as its own.

use super::{
    Action, Candidacy, LogView, Message, Node, NodeId, RoleState, Target, VoteAnswer,
    leading::Progress,
};
use std::collections::BTreeSet;

impl Node {
    /// Moves to a newer epoch as a follower (no vote cast yet).
    pub(super) fn adopt_epoch(&mut self, out: &mut Vec<Action>, epoch: u64) {
        debug_assert!(epoch > self.epoch);
        self.epoch = epoch;
        self.voted_for = None;
        self.pre_votes = None;
        self.leader_heard_ms = None;
        out.push(Action::PersistVote {
            epoch,
            voted_for: None,
        });
        self.transition(out, RoleState::following(None));
        // Only the committed prefix is known to match the new primary.
        self.verified = self.commit;
    }

    pub(super) fn election_timeout(&mut self, out: &mut Vec<Action>, log: &dyn LogView) {
        self.reset_election_timer();
        if self.config.priority() == 0
            || self.now_ms < self.stand_after_ms
            || self.repair_until.is_some()
        {
            return;
        }
        // Pre-vote: ask whether the others would vote for us in the next
        // epoch, without anyone changing state.
        self.pre_votes = Some(BTreeSet::from([self.config.id]));
        let tip = log.tip();
        out.push(Action::Send {
            to: Target::All,
            epoch: self.epoch + 1,
            commit_gseq: self.commit,
            message: Message::PreVoteRequest {
                last_gseq: tip.gseq,
                last_epoch: tip.epoch,
            },
        });
    }

    fn start_election(&mut self, out: &mut Vec<Action>, log: &dyn LogView) {
        self.pre_votes = None;
        self.epoch += 1;
        self.voted_for = Some(self.config.id);
        self.counters.elections_started += 1;
        out.push(Action::PersistVote {
            epoch: self.epoch,
            voted_for: self.voted_for,
        });
        self.transition(
            out,
            RoleState::Candidate {
                votes: BTreeSet::from([self.config.id]),
            },
        );
        self.verified = self.commit;
        self.reset_election_timer();
        let tip = log.tip();
        self.send(
            out,
            Target::All,
            Message::VoteRequest {
                last_gseq: tip.gseq,
                last_epoch: tip.epoch,
            },
        );
    }

    fn become_primary(&mut self, out: &mut Vec<Action>, log: &dyn LogView) {
        let progress = self
            .config
            .peers()
            .map(|id| {
                (
                    id,
                    Progress {
                        match_gseq: 0,
                        last_heard_ms: self.now_ms,
                        last_repair_ms: None,
                    },
                )
            })
            .collect();
        self.reorder.clear();
        self.transition(
            out,
            RoleState::Leading {
                progress,
                streamed: log.tip().gseq,
                epoch_start_gseq: None,
                heartbeat_due_ms: self.now_ms,
            },
        );
        out.push(Action::AppendMarker { epoch: self.epoch });
    }

    /// Tells a sender from an older epoch about the newer one, so a deposed
    /// primary or a late candidate steps down.
    pub(super) fn answer_stale(
        &mut self,
        out: &mut Vec<Action>,
        sender: NodeId,
        message: &Message,
        log: &dyn LogView,
    ) {
        match message {
            Message::Append { .. } | Message::Heartbeat { .. } => {
                // The newer epoch is what counts. While repairing, the ack
                // names nothing (gseq 0): a damaged log promises nothing.
                let tip = match self.repair_until {
                    Some(_) => super::Tip::default(),
                    None => log.tip(),
                };
                self.send(
                    out,
                    Target::Node(sender),
                    Message::Ack {
                        tip_gseq: tip.gseq,
                        tip_hash: tip.hash,
                    },
                );
            }
            Message::VoteRequest { .. } => self.send(
                out,
                Target::Node(sender),
                Message::VoteReply {
                    granted: false,
                    candidate: sender,
                    epoch: self.epoch,
                },
            ),
            _ => {}
        }
    }

    /// This node is the primary, or heard one within the shortest election
    /// timeout.
    pub(super) fn primary_alive(&self) -> bool {
        matches!(self.state, RoleState::Leading { .. })
            || self
                .leader_heard_ms
                .is_some_and(|at| self.now_ms < at + self.config.election_timeout_min_ms)
    }

    /// Raft's rule: a log is at least as up to date when its last entry has
    /// a newer epoch, or the same epoch and at least as many entries.
    ///
    /// A replica repairing a damaged log judges by what it promised, not
    /// by what is left: the promised entry's (epoch, gseq), or its tip if
    /// that is later. Any candidate that passes holds every entry this
    /// replica acknowledged that can have been committed (a newer epoch's
    /// last entry follows everything its primary held, which includes
    /// every committed entry; the same epoch's holds the same prefix), so
    /// the vote is as safe as one from the undamaged log, and two damaged
    /// replicas can no longer keep a cluster without a primary for good.
    fn candidate_is_up_to_date(&self, candidacy: &Candidacy, log: &dyn LogView) -> bool {
        let tip = log.tip();
        let own = match (self.repair_until, self.repair_epoch) {
            (Some(until), Some(epoch)) => (epoch, until).max((tip.epoch, tip.gseq)),
            _ => (tip.epoch, tip.gseq),
        };
        (candidacy.last_epoch, candidacy.last_gseq) >= own
    }

    pub(super) fn on_vote_request(
        &mut self,
        out: &mut Vec<Action>,
        sender: NodeId,
        candidacy: Candidacy,
        log: &dyn LogView,
    ) {
        let free = self.voted_for.is_none_or(|v| v == sender);
        let up_to_date = self.candidate_is_up_to_date(&candidacy, log);
        if !up_to_date && self.repair_until.is_none() {
            self.send_catchup(out, sender, candidacy, log);
        }
        let leading = matches!(self.state, RoleState::Leading { .. });
        let granted = !leading && free && up_to_date;
        if granted {
            self.voted_for = Some(sender);
            self.counters.votes_granted += 1;
            out.push(Action::PersistVote {
                epoch: self.epoch,
                voted_for: Some(sender),
            });
            self.reset_election_timer();
        }
        let reply = Message::VoteReply {
            granted,
            candidate: sender,
            epoch: self.epoch,
        };
        self.send(out, Target::Node(sender), reply);
    }

    /// A vote counts only if it names this candidate and its epoch: a
    /// granted vote meant for another candidate, replayed here, is not one.
    pub(super) fn on_vote_reply(
        &mut self,
        out: &mut Vec<Action>,
        sender: NodeId,
        answer: VoteAnswer,
        log: &dyn LogView,
    ) {
        let (id, epoch) = (self.config.id, self.epoch);
        let RoleState::Candidate { votes } = &mut self.state else {
            return;
        };
        if !answer.granted || answer.candidate != id || answer.epoch != epoch {
            return;
        }
        votes.insert(sender);
        if votes.len() >= self.config.majority() {
            self.become_primary(out, log);
        }
    }

    pub(super) fn on_pre_vote_request(
        &mut self,
        out: &mut Vec<Action>,
        sender: NodeId,
        proposed_epoch: u64,
        candidacy: Candidacy,
        log: &dyn LogView,
    ) {
        // Grant only if we would vote for it in that epoch and we have not
        // heard from a live primary recently (a healthy primary keeps its
        // followers from granting, which protects it from a returning node).
        let primary_alive = self.primary_alive();
        let up_to_date = self.candidate_is_up_to_date(&candidacy, log);
        if !up_to_date && self.repair_until.is_none() {
            self.send_catchup(out, sender, candidacy, log);
        }
        let granted = proposed_epoch > self.epoch && !primary_alive && up_to_date;
        // A grant echoes the proposed epoch; a refusal carries ours, so a
        // candidate that fell behind in epochs catches up instead of
        // proposing a stale epoch forever.
        out.push(Action::Send {
            to: Target::Node(sender),
            epoch: if granted { proposed_epoch } else { self.epoch },
            commit_gseq: self.commit,
            message: Message::PreVoteReply {
                granted,
                candidate: sender,
                proposed_epoch,
            },
        });
    }

    /// `epoch` is the datagram's: the proposed epoch when granted, the
    /// voter's own when refused (so a candidate behind in epochs catches
    /// up). A grant counts only if it names this candidate and the epoch it
    /// proposes.
    pub(super) fn on_pre_vote_reply(
        &mut self,
        out: &mut Vec<Action>,
        sender: NodeId,
        epoch: u64,
        answer: VoteAnswer,
        log: &dyn LogView,
    ) {
        if !answer.granted {
            if epoch > self.epoch {
                self.adopt_epoch(out, epoch);
            } else if self.pre_votes.is_some() {
                // Refused, most often because the voter heard the primary
                // within the shortest timeout (a primary that just died, or
                // one this node is cut off from): ask again after a
                // heartbeat rather than a whole timeout. A pre-vote changes
                // nothing anywhere, so asking often costs only datagrams,
                // and a dead primary is replaced as soon as its followers'
                // memory of it expires.
                self.election_due_ms = self
                    .election_due_ms
                    .min(self.now_ms + self.config.heartbeat_ms);
            }
            return;
        }
        let leading = matches!(self.state, RoleState::Leading { .. });
        let (id, proposed) = (self.config.id, self.epoch + 1);
        let Some(pre_votes) = &mut self.pre_votes else {
            return;
        };
        if epoch != proposed || answer.candidate != id || answer.epoch != proposed || leading {
            return;
        }
        pre_votes.insert(sender);
        if pre_votes.len() >= self.config.majority() {
            self.start_election(out, log);
        }
    }
}

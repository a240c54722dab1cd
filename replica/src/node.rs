//! The replication and election core, without I/O.
//!
//! [`Node`] is a deterministic state machine in the style of openraft's
//! engine: the shell feeds it inputs — a datagram arrived, time passed, a
//! batch of machine events wants appending, a disk write finished — and it
//! returns [`Action`]s to execute in order: send this, append that, persist
//! the vote, tell machines what is committed. It never touches a socket, a
//! clock or a disk; it reads the log through [`LogView`]. The tokio shell
//! and the deterministic simulation drive the very same code.
//!
//! The protocol is Raft adapted to a hash-chained log:
//! * one primary per epoch, elected by a majority of the three replicas with
//!   Raft's up-to-date rule (last entry's epoch, then gseq), after a pre-vote
//!   round so a replica cut off from the others cannot depose a healthy
//!   primary when it returns; the sync replica (priority 0) votes but never
//!   stands;
//! * a new primary opens its epoch with a marker entry; an entry counts as
//!   committed once it is durable on the primary and one follower and an
//!   entry of the current epoch at or after it is too (Raft's rule: entries
//!   of earlier epochs commit only through one of the current epoch);
//! * followers append only records whose previous-hash links to their own
//!   tip, buffer out-of-order records (bounded), NAK gaps after a short delay
//!   with backoff, and acknowledge cumulatively after the write is durable;
//! * a follower that finds a record differing from its own at the same gseq
//!   truncates its uncommitted suffix — never below its commit — and
//!   continues; anything from an older epoch is refused (fencing), and
//!   anything from a newer epoch demotes the receiver.

use crate::wire::{Message, NodeId, ReplayGuard};
use ledger::crypto::Hash32;
use ledger::store::record::{GENESIS_HASH, LogEntry, SignedEvent};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Most records a follower keeps waiting for a gap to fill.
pub const REORDER_RECORDS_MAX: usize = 8_192;
/// Most records one NAK asks for (one default segment): a replica far
/// behind catches up segment by segment.
pub const NAK_RECORDS_MAX: u64 = 4_096;
/// Most records retransmitted for one NAK or mismatched acknowledgement.
pub const RETRANSMIT_RECORDS_MAX: u64 = 4_096;
/// Most records the primary streams beyond what the most advanced follower
/// acknowledged: flow control, so a burst of writes cannot overrun the
/// followers' receive buffers (which would turn into a storm of NAKs and
/// retransmissions, and lost heartbeats). The rest follows as acks return.
/// A live follower that keeps up is also never left more than
/// `REORDER_RECORDS_MAX` behind.
pub const STREAM_WINDOW_RECORDS: u64 = 4_096;

/// The end of a log: its last entry's gseq, hash and epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tip {
    pub gseq: u64,
    pub hash: Hash32,
    pub epoch: u64,
}

/// Read access to the local log. Implementations must reflect every write
/// the shell has executed so far.
pub trait LogView {
    fn tip(&self) -> Tip;
    /// Hash and epoch of the entry at `gseq`, if the log holds it.
    fn entry_meta(&self, gseq: u64) -> Option<(Hash32, u64)>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Follower,
    Candidate,
    Primary,
}

/// Where a datagram goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    All,
    Node(NodeId),
}

/// What the shell must do, in order. A write action must be durable before
/// the actions after it run (a follower acknowledges only what it stored; a
/// vote is persisted before it is sent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Send {
        to: Target,
        epoch: u64,
        commit_gseq: u64,
        message: Message,
    },
    /// Send the local records `from_gseq..=to_gseq` as Append datagrams
    /// (as Catchup datagrams when `catchup` is set).
    Replicate {
        to: Target,
        from_gseq: u64,
        to_gseq: u64,
        epoch: u64,
        commit_gseq: u64,
        catchup: Option<CatchupSource>,
    },
    PersistVote {
        epoch: u64,
        voted_for: Option<NodeId>,
    },
    /// Primary: append these machine events in `epoch`, then call
    /// [`Node::on_local_append`].
    AppendEvents {
        epoch: u64,
        events: Vec<SignedEvent>,
    },
    /// New primary: append the marker opening `epoch`, then call
    /// [`Node::on_local_append`].
    AppendMarker {
        epoch: u64,
    },
    /// Follower: append these records, which continue the log's tip.
    AppendReplicated {
        records: Vec<Vec<u8>>,
    },
    /// Drop every entry after `gseq` (never at or below the commit).
    TruncateAfter {
        gseq: u64,
    },
    CommitAdvanced {
        commit_gseq: u64,
    },
    RoleChanged {
        role: Role,
        epoch: u64,
        leader: Option<NodeId>,
    },
}

/// What a candidate says about its log when it asks for a vote.
#[derive(Clone, Copy, Debug)]
struct Candidacy {
    last_gseq: u64,
    last_epoch: u64,
    /// The candidate's commit (from the datagram header).
    commit_gseq: u64,
}

/// The end of the log a catch-up comes from, which the receiver checks is
/// more up to date than its own before taking anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatchupSource {
    pub last_gseq: u64,
    pub last_epoch: u64,
}

/// A replica as the others know it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    /// 0: votes but never stands (the sync replica); higher stands sooner.
    pub priority: u8,
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Every member of the cluster, this node included.
    pub members: Vec<Member>,
    pub heartbeat_ms: u64,
    /// Election timeouts are drawn from this range (priority 2 draws from
    /// its lower half, so the preferred primary usually wins first).
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Wait before the first NAK of a gap (reordered datagrams often fill
    /// it by themselves), doubled per retry up to `nak_backoff_max_ms`.
    pub nak_delay_ms: u64,
    pub nak_backoff_max_ms: u64,
}

/// The standard cluster's priority of replica `id`: replica 1 is the
/// preferred primary (2), replica 2 the sync replica (0, never stands),
/// replica 3 the backup (1).
pub fn standard_priority(id: NodeId) -> u8 {
    match id {
        1 => 2,
        2 => 0,
        _ => 1,
    }
}

impl NodeConfig {
    /// Replica `id` of the standard three-replica cluster with the default
    /// timings (heartbeats every 50 ms, elections after 300-600 ms, first
    /// NAK after 20 ms backing off to 400 ms).
    pub fn standard(id: NodeId) -> NodeConfig {
        NodeConfig {
            id,
            members: (1..=3)
                .map(|id| Member {
                    id,
                    priority: standard_priority(id),
                })
                .collect(),
            heartbeat_ms: 50,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            nak_delay_ms: 20,
            nak_backoff_max_ms: 400,
        }
    }

    pub fn priority(&self) -> u8 {
        self.members
            .iter()
            .find(|m| m.id == self.id)
            .map_or(0, |m| m.priority)
    }

    fn majority(&self) -> usize {
        self.members.len() / 2 + 1
    }

    fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .map(|m| m.id)
            .filter(move |&id| id != self.id)
    }
}

/// The vote state that must survive restarts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedVote {
    pub epoch: u64,
    pub voted_for: Option<NodeId>,
}

/// Counters shown on status pages; never reset while the process lives.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub datagrams_received: u64,
    pub replayed_dropped: u64,
    pub stale_epoch_dropped: u64,
    pub malformed_records_dropped: u64,
    pub reorder_overflow_dropped: u64,
    pub naks_sent: u64,
    pub naks_received: u64,
    pub records_retransmitted: u64,
    pub truncations: u64,
    pub records_truncated: u64,
    pub conflicts_below_commit: u64,
    pub elections_started: u64,
    pub votes_granted: u64,
    /// Records sent to a lagging candidate, and taken from a more up-to-date voter.
    pub catchup_records_sent: u64,
    pub catchup_records_taken: u64,
    pub write_failures: u64,
}

/// What the primary knows of a follower.
#[derive(Clone, Debug, Default)]
struct Progress {
    /// Highest gseq known to match this log on the follower.
    match_gseq: u64,
    last_heard_ms: u64,
    /// When a mismatched acknowledgement last triggered a retransmission.
    last_repair_ms: Option<u64>,
}

/// A gap this follower is asking to have filled.
#[derive(Clone, Debug)]
struct Nak {
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

/// Most holes one NAK round asks for; the rest follow in the next round.
pub const NAK_HOLES_MAX: usize = 32;

/// The missing ranges of `from..=to`, given the records waiting in the
/// reorder buffer, at most `NAK_HOLES_MAX` of them.
fn holes(reorder: &BTreeMap<u64, Vec<u8>>, from: u64, to: u64) -> Vec<(u64, u64)> {
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

/// Why a proposal was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotPrimary {
    /// The primary this node follows, if it knows one.
    Follow(Option<NodeId>),
}

pub struct Node {
    config: NodeConfig,
    rng: ChaCha8Rng,
    epoch: u64,
    voted_for: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    commit: u64,
    /// Highest gseq known to equal the current primary's log.
    verified: u64,
    now_ms: u64,
    election_due_ms: u64,
    heartbeat_due_ms: u64,
    /// When this node last heard from a primary of its epoch.
    leader_heard_ms: Option<u64>,
    votes: BTreeSet<NodeId>,
    pre_votes: BTreeSet<NodeId>,
    pre_voting: bool,
    /// Primary: the last gseq already streamed to followers.
    streamed: u64,
    progress: BTreeMap<NodeId, Progress>,
    /// Primary: the gseq of this epoch's marker, once appended.
    epoch_start_gseq: Option<u64>,
    reorder: BTreeMap<u64, Vec<u8>>,
    nak: Option<Nak>,
    replay: ReplayGuard,
    /// After a failed write the node does not stand for election until then.
    stand_after_ms: u64,
    /// When a catch-up was last sent to each candidate (rate limit).
    catchup_sent_ms: BTreeMap<NodeId, u64>,
    counters: Counters,
}

/// The state a node restarts from.
#[derive(Clone, Copy, Debug, Default)]
pub struct Restart {
    pub vote: PersistedVote,
    /// A lower bound of the commit gseq saved before the restart.
    pub commit_hint: u64,
}

impl Node {
    pub fn new(config: NodeConfig, restart: Restart, seed: u64, now_ms: u64) -> Node {
        assert!(
            config.members.iter().any(|m| m.id == config.id),
            "a node is a member of its cluster"
        );
        assert!(config.election_timeout_min_ms < config.election_timeout_max_ms);
        let mut node = Node {
            rng: ChaCha8Rng::seed_from_u64(seed),
            epoch: restart.vote.epoch,
            voted_for: restart.vote.voted_for,
            role: Role::Follower,
            leader: None,
            commit: restart.commit_hint,
            verified: restart.commit_hint,
            now_ms,
            election_due_ms: 0,
            heartbeat_due_ms: 0,
            leader_heard_ms: None,
            votes: BTreeSet::new(),
            pre_votes: BTreeSet::new(),
            pre_voting: false,
            streamed: 0,
            progress: BTreeMap::new(),
            epoch_start_gseq: None,
            reorder: BTreeMap::new(),
            nak: None,
            replay: ReplayGuard::default(),
            stand_after_ms: 0,
            catchup_sent_ms: BTreeMap::new(),
            counters: Counters::default(),
            config,
        };
        node.reset_election_timer();
        node
    }

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    pub fn commit_gseq(&self) -> u64 {
        self.commit
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The primary's view of how far each follower has matched its log.
    pub fn follower_matches(&self) -> Vec<(NodeId, u64)> {
        self.progress
            .iter()
            .map(|(&id, p)| (id, p.match_gseq))
            .collect()
    }

    /// Whether this node may accept machine events right now: it is the
    /// primary and its epoch is open (the marker is in its log).
    pub fn accepts_writes(&self) -> bool {
        self.role == Role::Primary && self.epoch_start_gseq.is_some()
    }

    fn reset_election_timer(&mut self) {
        let (min, max) = (
            self.config.election_timeout_min_ms,
            self.config.election_timeout_max_ms,
        );
        let middle = min + (max - min) / 2;
        let (low, high) = match self.config.priority() {
            2.. => (min, middle.max(min + 1)),
            _ => (middle, max),
        };
        self.election_due_ms = self.now_ms + self.rng.random_range(low..high);
    }

    fn send(&self, out: &mut Vec<Action>, to: Target, message: Message) {
        out.push(Action::Send {
            to,
            epoch: self.epoch,
            commit_gseq: self.commit,
            message,
        });
    }

    fn set_role(&mut self, out: &mut Vec<Action>, role: Role, leader: Option<NodeId>) {
        if self.role != role || self.leader != leader {
            self.role = role;
            self.leader = leader;
            out.push(Action::RoleChanged {
                role,
                epoch: self.epoch,
                leader,
            });
        }
    }

    /// Moves to a newer epoch as a follower (no vote cast yet).
    fn adopt_epoch(&mut self, out: &mut Vec<Action>, epoch: u64) {
        debug_assert!(epoch > self.epoch);
        self.epoch = epoch;
        self.voted_for = None;
        self.votes.clear();
        self.pre_voting = false;
        self.epoch_start_gseq = None;
        self.progress.clear();
        self.leader_heard_ms = None;
        out.push(Action::PersistVote {
            epoch,
            voted_for: None,
        });
        self.set_role(out, Role::Follower, None);
        // Only the committed prefix is known to match the new primary.
        self.verified = self.commit;
    }

    // ----- time -----

    /// Time passed: heartbeats, elections, NAK retries, quorum checks.
    pub fn tick(&mut self, now_ms: u64, log: &dyn LogView) -> Vec<Action> {
        self.now_ms = self.now_ms.max(now_ms);
        let mut out = Vec::new();
        match self.role {
            Role::Primary => self.tick_primary(&mut out, log),
            Role::Follower | Role::Candidate => {
                if self.now_ms >= self.election_due_ms {
                    self.election_timeout(&mut out, log);
                }
                self.maybe_nak(&mut out, log);
            }
        }
        out
    }

    fn tick_primary(&mut self, out: &mut Vec<Action>, log: &dyn LogView) {
        // Step down when no follower has been heard for an election timeout:
        // a primary cut off from the majority must stop taking writes so
        // machines move to the side that can commit.
        let quorum_window = self.config.election_timeout_max_ms;
        let heard = self
            .progress
            .values()
            .filter(|p| self.now_ms.saturating_sub(p.last_heard_ms) < quorum_window)
            .count();
        if heard + 1 < self.config.majority() {
            self.set_role(out, Role::Follower, None);
            self.leader_heard_ms = None;
            self.reset_election_timer();
            return;
        }
        if self.now_ms >= self.heartbeat_due_ms {
            self.stream(out, log);
            // The tip as streamed so far: records held back by the flow
            // control window are not a lost tail for followers to NAK.
            let tip = log.tip();
            let (tip_gseq, tip_hash) = if self.streamed < tip.gseq {
                match log.entry_meta(self.streamed) {
                    Some((hash, _)) => (self.streamed, hash),
                    None => (tip.gseq, tip.hash),
                }
            } else {
                (tip.gseq, tip.hash)
            };
            self.send(out, Target::All, Message::Heartbeat { tip_gseq, tip_hash });
            self.heartbeat_due_ms = self.now_ms + self.config.heartbeat_ms;
        }
    }

    fn election_timeout(&mut self, out: &mut Vec<Action>, log: &dyn LogView) {
        self.reset_election_timer();
        if self.config.priority() == 0 || self.now_ms < self.stand_after_ms {
            return;
        }
        // Pre-vote: ask whether the others would vote for us in the next
        // epoch, without anyone changing state.
        self.pre_voting = true;
        self.pre_votes = BTreeSet::from([self.config.id]);
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
        self.pre_voting = false;
        self.epoch += 1;
        self.voted_for = Some(self.config.id);
        self.votes = BTreeSet::from([self.config.id]);
        self.epoch_start_gseq = None;
        self.progress.clear();
        self.counters.elections_started += 1;
        out.push(Action::PersistVote {
            epoch: self.epoch,
            voted_for: self.voted_for,
        });
        self.set_role(out, Role::Candidate, None);
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
        self.set_role(out, Role::Primary, Some(self.config.id));
        self.progress = self
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
        self.streamed = log.tip().gseq;
        self.nak = None;
        self.reorder.clear();
        self.heartbeat_due_ms = self.now_ms;
        out.push(Action::AppendMarker { epoch: self.epoch });
    }

    fn maybe_nak(&mut self, out: &mut Vec<Action>, log: &dyn LogView) {
        let Some(leader) = self.leader else {
            return;
        };
        let tip = log.tip().gseq;
        let Some(nak) = &mut self.nak else {
            return;
        };
        if nak.to_gseq <= tip && nak.from_gseq.is_none() {
            self.nak = None;
            return;
        }
        if nak.asked_to_gseq > 0 && tip >= nak.asked_to_gseq {
            // What the last NAK asked for arrived: the next hole is a new
            // loss, asked for after the usual delay, not after a backoff
            // that grew while the previous one was repaired.
            nak.asked_to_gseq = 0;
            nak.backoff_ms = self.config.nak_delay_ms.max(1) * 2;
            nak.due_ms = nak.due_ms.min(self.now_ms + self.config.nak_delay_ms);
        }
        if self.now_ms < nak.due_ms {
            return;
        }
        let from_gseq = nak
            .from_gseq
            .map_or(tip + 1, |from| from.min(tip + 1))
            .max(1);
        let to_gseq = nak
            .to_gseq
            .max(from_gseq)
            .min(from_gseq + NAK_RECORDS_MAX - 1);
        let ranges = if nak.from_gseq.is_some() {
            // After a conflict: re-read the whole range, held records too.
            vec![(from_gseq, to_gseq)]
        } else {
            // Ask for the holes only (one NAK each, all at once): what lies
            // between them already waits in the reorder buffer.
            holes(&self.reorder, from_gseq, to_gseq)
        };
        nak.due_ms = self.now_ms + nak.backoff_ms;
        nak.backoff_ms = (nak.backoff_ms * 2).min(self.config.nak_backoff_max_ms);
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
    fn want(&mut self, to_gseq: u64) {
        match &mut self.nak {
            Some(nak) => nak.to_gseq = nak.to_gseq.max(to_gseq),
            None => {
                self.nak = Some(Nak {
                    from_gseq: None,
                    to_gseq,
                    due_ms: self.now_ms + self.config.nak_delay_ms,
                    backoff_ms: self.config.nak_delay_ms.max(1) * 2,
                    asked_to_gseq: 0,
                })
            }
        }
    }

    /// Like [`want`](Self::want), but asks for records from `from_gseq` on
    /// even if this log holds some of them.
    fn want_from(&mut self, from_gseq: u64, to_gseq: u64) {
        self.want(to_gseq);
        if let Some(nak) = &mut self.nak {
            nak.from_gseq = Some(nak.from_gseq.map_or(from_gseq, |f| f.min(from_gseq)));
        }
    }

    // ----- proposals -----

    /// A batch of machine events to append (group commit: the shell passes
    /// everything that arrived since the last call).
    pub fn propose(&mut self, events: Vec<SignedEvent>) -> Result<Vec<Action>, NotPrimary> {
        if !self.accepts_writes() {
            let leader = self.leader.filter(|&l| l != self.config.id);
            return Err(NotPrimary::Follow(leader));
        }
        Ok(vec![Action::AppendEvents {
            epoch: self.epoch,
            events,
        }])
    }

    /// The shell executed `AppendEvents` or `AppendMarker`.
    pub fn on_local_append(&mut self, log: &dyn LogView) -> Vec<Action> {
        let mut out = Vec::new();
        if self.role != Role::Primary {
            return out;
        }
        let tip = log.tip();
        if self.epoch_start_gseq.is_none() && tip.epoch == self.epoch {
            self.epoch_start_gseq = Some(tip.gseq);
        }
        self.stream(&mut out, log);
        out
    }

    /// Primary: streams new records to every follower, as far as the flow
    /// control window allows.
    fn stream(&mut self, out: &mut Vec<Action>, log: &dyn LogView) {
        let tip = log.tip().gseq;
        let acknowledged = self
            .progress
            .values()
            .map(|p| p.match_gseq)
            .max()
            .unwrap_or(0);
        let mut to = tip.min(acknowledged + STREAM_WINDOW_RECORDS);
        // A live follower that keeps up is not left more than its reorder
        // buffer behind (it would drop what it cannot hold and fetch it
        // again record by record); one that is silent or catching up from
        // far behind never holds the stream back.
        let lead = REORDER_RECORDS_MAX as u64;
        for progress in self.progress.values() {
            let live = self.now_ms.saturating_sub(progress.last_heard_ms)
                < self.config.election_timeout_min_ms;
            if live && self.streamed.saturating_sub(progress.match_gseq) <= lead {
                to = to.min(progress.match_gseq + lead);
            }
        }
        if to > self.streamed {
            out.push(Action::Replicate {
                to: Target::All,
                from_gseq: self.streamed + 1,
                to_gseq: to,
                epoch: self.epoch,
                commit_gseq: self.commit,
                catchup: None,
            });
            self.streamed = to;
        }
    }

    /// The shell could not execute a write. The node re-reads its tip; a
    /// primary steps down and stays out of elections for a while, since a
    /// replica that cannot write cannot serve.
    pub fn on_write_failed(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        self.counters.write_failures += 1;
        self.reorder.clear();
        if self.role == Role::Primary {
            self.set_role(&mut out, Role::Follower, None);
            self.stand_after_ms = self.now_ms + 10 * self.config.election_timeout_max_ms;
            self.reset_election_timer();
        }
        out
    }

    // ----- datagrams -----

    /// A datagram that decoded and authenticated. `sender`'s packet numbers
    /// are checked against replays here.
    pub fn receive(
        &mut self,
        now_ms: u64,
        datagram: crate::wire::Datagram,
        log: &dyn LogView,
    ) -> Vec<Action> {
        self.now_ms = self.now_ms.max(now_ms);
        self.counters.datagrams_received += 1;
        let mut out = Vec::new();
        let sender = datagram.sender;
        let known = self.config.members.iter().any(|m| m.id == sender) && sender != self.config.id;
        if !known
            || !self
                .replay
                .admit(sender, datagram.incarnation, datagram.packet_seq)
        {
            self.counters.replayed_dropped += 1;
            return out;
        }
        // Pre-votes and catch-ups carry no authority of an epoch (a catch-up
        // is judged by how up to date its source log is), so they neither
        // raise nor are fenced by the receiver's epoch: a candidate that
        // moved to a newer epoch must still get a voter's records.
        let outside_epochs = matches!(
            datagram.message,
            Message::PreVoteRequest { .. } | Message::PreVoteReply { .. } | Message::Catchup { .. }
        );
        if !outside_epochs {
            if datagram.epoch > self.epoch {
                self.adopt_epoch(&mut out, datagram.epoch);
            } else if datagram.epoch < self.epoch {
                self.counters.stale_epoch_dropped += 1;
                self.answer_stale(&mut out, sender, &datagram.message, log);
                return out;
            }
        }
        match datagram.message {
            Message::Append {
                first_gseq,
                records,
            } => {
                self.heard_from_primary(&mut out, sender);
                self.on_append(&mut out, first_gseq, records, log);
                self.follow_commit(&mut out, datagram.commit_gseq);
            }
            Message::Heartbeat { tip_gseq, tip_hash } => {
                self.heard_from_primary(&mut out, sender);
                self.on_heartbeat(&mut out, tip_gseq, tip_hash, log);
                self.follow_commit(&mut out, datagram.commit_gseq);
            }
            Message::Ack { tip_gseq, tip_hash } => {
                self.on_ack(&mut out, sender, tip_gseq, tip_hash, log)
            }
            Message::Nak { from_gseq, to_gseq } => {
                self.on_nak(&mut out, sender, from_gseq, to_gseq, log)
            }
            Message::VoteRequest {
                last_gseq,
                last_epoch,
            } => self.on_vote_request(
                &mut out,
                sender,
                Candidacy {
                    last_gseq,
                    last_epoch,
                    commit_gseq: datagram.commit_gseq,
                },
                log,
            ),
            Message::VoteReply { granted } => self.on_vote_reply(&mut out, sender, granted, log),
            Message::PreVoteRequest {
                last_gseq,
                last_epoch,
            } => self.on_pre_vote_request(
                &mut out,
                sender,
                datagram.epoch,
                Candidacy {
                    last_gseq,
                    last_epoch,
                    commit_gseq: datagram.commit_gseq,
                },
                log,
            ),
            Message::PreVoteReply { granted } => {
                self.on_pre_vote_reply(&mut out, sender, datagram.epoch, granted, log)
            }
            Message::Catchup {
                first_gseq,
                records,
                last_gseq,
                last_epoch,
            } => self.on_catchup(
                &mut out,
                first_gseq,
                records,
                CatchupSource {
                    last_gseq,
                    last_epoch,
                },
                log,
            ),
        }
        out
    }

    /// Tells a sender from an older epoch about the newer one, so a deposed
    /// primary or a late candidate steps down.
    fn answer_stale(
        &mut self,
        out: &mut Vec<Action>,
        sender: NodeId,
        message: &Message,
        log: &dyn LogView,
    ) {
        match message {
            Message::Append { .. } | Message::Heartbeat { .. } => {
                let tip = log.tip();
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
                Message::VoteReply { granted: false },
            ),
            _ => {}
        }
    }

    /// Bookkeeping for a datagram from the primary of this epoch.
    fn heard_from_primary(&mut self, out: &mut Vec<Action>, sender: NodeId) {
        if self.role == Role::Primary {
            // Two primaries in one epoch cannot happen: each won a majority
            // and a voter votes once per epoch. Ignore rather than obey.
            return;
        }
        if self.role == Role::Candidate || self.leader != Some(sender) {
            self.set_role(out, Role::Follower, Some(sender));
            self.reorder.clear();
            self.nak = None;
        }
        self.pre_voting = false;
        self.leader_heard_ms = Some(self.now_ms);
        self.reset_election_timer();
    }

    fn follow_commit(&mut self, out: &mut Vec<Action>, leader_commit: u64) {
        if self.role != Role::Follower {
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

    fn on_append(
        &mut self,
        out: &mut Vec<Action>,
        first_gseq: u64,
        records: Vec<Vec<u8>>,
        log: &dyn LogView,
    ) {
        if self.role != Role::Follower {
            return;
        }
        let mut tip = log.tip();
        let mut to_write: Vec<Vec<u8>> = Vec::new();
        let last_gseq = first_gseq + records.len() as u64 - 1;
        for (gseq, record) in (first_gseq..).zip(records) {
            let Some(entry) = self.decode_record(gseq, &record) else {
                return;
            };
            if gseq <= tip.gseq {
                // Already stored: records of one datagram rise in gseq and
                // only pending writes raise `tip`, so `gseq` is on disk. The
                // same hash is a duplicate; a different one is a suffix from
                // another epoch that must go.
                match log.entry_meta(gseq) {
                    Some((hash, _)) if hash == entry.hash => {
                        self.verified = self.verified.max(gseq);
                        continue;
                    }
                    _ if !to_write.is_empty() => return,
                    _ => {
                        if !self.truncate(out, gseq - 1, log) {
                            return;
                        }
                        tip = log_tip_after_truncate(log, gseq - 1);
                    }
                }
            }
            if gseq == tip.gseq + 1 {
                if entry.prev_hash != tip.hash {
                    if !to_write.is_empty() {
                        // The primary's own records do not chain: drop.
                        self.counters.malformed_records_dropped += 1;
                        return;
                    }
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
                tip = Tip {
                    gseq,
                    hash: entry.hash,
                    epoch: entry.body.epoch,
                };
                to_write.push(record);
            } else if gseq > tip.gseq + 1 {
                self.buffer(gseq, record);
            }
        }
        self.drain_reorder(&mut tip, &mut to_write);
        if let Some(nak) = &mut self.nak
            && nak.from_gseq.is_some_and(|from| first_gseq <= from)
        {
            // The re-read covered where it had to start, without a new
            // conflict: the logs agree up to the tip again.
            nak.from_gseq = None;
        }
        if !to_write.is_empty() {
            out.push(Action::AppendReplicated { records: to_write });
            // Every record written continued a chain the primary sent in
            // this epoch, so this log now equals the primary's up to `tip`.
            self.verified = self.verified.max(tip.gseq);
        }
        if last_gseq > tip.gseq {
            self.want(last_gseq);
        }
        self.acknowledge(out, tip);
    }

    /// A replicated record that decodes and sits where the datagram says;
    /// anything else is counted and refused.
    fn decode_record(&mut self, gseq: u64, record: &[u8]) -> Option<LogEntry> {
        match LogEntry::decode(record) {
            Ok(entry) if entry.body.gseq == gseq => Some(entry),
            _ => {
                self.counters.malformed_records_dropped += 1;
                None
            }
        }
    }

    fn buffer(&mut self, gseq: u64, record: Vec<u8>) {
        if self.reorder.len() >= REORDER_RECORDS_MAX && !self.reorder.contains_key(&gseq) {
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
        self.reorder.insert(gseq, record);
    }

    fn drain_reorder(&mut self, tip: &mut Tip, to_write: &mut Vec<Vec<u8>>) {
        // Drop what is already stored.
        while let Some(entry) = self.reorder.first_entry() {
            if *entry.key() > tip.gseq {
                break;
            }
            entry.remove();
        }
        while let Some(record) = self.reorder.remove(&(tip.gseq + 1)) {
            match LogEntry::decode(&record) {
                Ok(entry) if entry.prev_hash == tip.hash => {
                    *tip = Tip {
                        gseq: entry.body.gseq,
                        hash: entry.hash,
                        epoch: entry.body.epoch,
                    };
                    to_write.push(record);
                }
                _ => {
                    // A buffered record from an older view of the log; the
                    // NAK path fetches the right one.
                    self.reorder.clear();
                    break;
                }
            }
        }
    }

    /// Truncates to `to_gseq` unless that would drop a committed entry.
    fn truncate(&mut self, out: &mut Vec<Action>, to_gseq: u64, log: &dyn LogView) -> bool {
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

    fn acknowledge(&mut self, out: &mut Vec<Action>, tip: Tip) {
        if let Some(leader) = self.leader {
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

    fn on_heartbeat(
        &mut self,
        out: &mut Vec<Action>,
        tip_gseq: u64,
        tip_hash: Hash32,
        log: &dyn LogView,
    ) {
        if self.role != Role::Follower {
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
        }
        // Acknowledge on heartbeats too, so the primary learns where this
        // follower stands even when no Append gets through.
        self.acknowledge(out, tip);
    }

    fn on_ack(
        &mut self,
        out: &mut Vec<Action>,
        sender: NodeId,
        tip_gseq: u64,
        tip_hash: Hash32,
        log: &dyn LogView,
    ) {
        if self.role != Role::Primary {
            return;
        }
        let now = self.now_ms;
        let heartbeat_ms = self.config.heartbeat_ms;
        let my_tip = log.tip();
        let Some(progress) = self.progress.get_mut(&sender) else {
            return;
        };
        progress.last_heard_ms = now;
        let matches = tip_gseq <= my_tip.gseq
            && (tip_gseq == 0
                || log
                    .entry_meta(tip_gseq)
                    .is_some_and(|(hash, _)| hash == tip_hash));
        if matches {
            // A follower behind the tip NAKs what it misses by itself.
            progress.match_gseq = progress.match_gseq.max(tip_gseq);
            self.stream(out, log);
        } else {
            // The follower holds a suffix this log does not: resend from
            // where the logs may still agree, at most once per heartbeat, so
            // it finds the conflict and truncates.
            let due = progress
                .last_repair_ms
                .is_none_or(|at| now >= at + heartbeat_ms);
            if due {
                progress.last_repair_ms = Some(now);
                let from = tip_gseq.min(my_tip.gseq).max(1);
                if my_tip.gseq >= from {
                    let to = my_tip.gseq.min(from + RETRANSMIT_RECORDS_MAX - 1);
                    self.counters.records_retransmitted += to - from + 1;
                    out.push(Action::Replicate {
                        to: Target::Node(sender),
                        from_gseq: from,
                        to_gseq: to,
                        epoch: self.epoch,
                        commit_gseq: self.commit,
                        catchup: None,
                    });
                }
            }
        }
        self.advance_commit(out, log);
    }

    fn advance_commit(&mut self, out: &mut Vec<Action>, log: &dyn LogView) {
        let Some(epoch_start) = self.epoch_start_gseq else {
            return;
        };
        let tip = log.tip().gseq;
        // With three members, the majority is this node and one follower:
        // the highest gseq stored on some follower (and here) is committed,
        // provided it is of this epoch (at or after the epoch's marker).
        let mut matched: Vec<u64> = self
            .progress
            .values()
            .map(|p| p.match_gseq.min(tip))
            .collect();
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let needed = self.config.majority() - 1;
        let Some(&candidate) = matched.get(needed.saturating_sub(1)) else {
            return;
        };
        if candidate > self.commit && candidate >= epoch_start {
            self.commit = candidate;
            out.push(Action::CommitAdvanced {
                commit_gseq: candidate,
            });
        }
    }

    fn on_nak(
        &mut self,
        out: &mut Vec<Action>,
        sender: NodeId,
        from_gseq: u64,
        to_gseq: u64,
        log: &dyn LogView,
    ) {
        self.counters.naks_received += 1;
        if self.role != Role::Primary {
            return;
        }
        if let Some(progress) = self.progress.get_mut(&sender) {
            progress.last_heard_ms = self.now_ms;
        }
        let tip = log.tip().gseq;
        let to = to_gseq
            .min(tip)
            .min(from_gseq.saturating_add(RETRANSMIT_RECORDS_MAX - 1));
        if from_gseq == 0 || from_gseq > to {
            return;
        }
        self.counters.records_retransmitted += to - from_gseq + 1;
        out.push(Action::Replicate {
            to: Target::Node(sender),
            from_gseq,
            to_gseq: to,
            epoch: self.epoch,
            commit_gseq: self.commit,
            catchup: None,
        });
    }

    /// This node is the primary, or heard one within the shortest election
    /// timeout.
    fn primary_alive(&self) -> bool {
        self.role == Role::Primary
            || self
                .leader_heard_ms
                .is_some_and(|at| self.now_ms < at + self.config.election_timeout_min_ms)
    }

    /// Raft's rule: a log is at least as up to date when its last entry has
    /// a newer epoch, or the same epoch and at least as many entries.
    fn candidate_is_up_to_date(&self, last_gseq: u64, last_epoch: u64, log: &dyn LogView) -> bool {
        let tip = log.tip();
        (last_epoch, last_gseq) >= (tip.epoch, tip.gseq)
    }

    fn on_vote_request(
        &mut self,
        out: &mut Vec<Action>,
        sender: NodeId,
        candidacy: Candidacy,
        log: &dyn LogView,
    ) {
        let free = self.voted_for.is_none_or(|v| v == sender);
        let up_to_date =
            self.candidate_is_up_to_date(candidacy.last_gseq, candidacy.last_epoch, log);
        if !up_to_date {
            self.send_catchup(out, sender, candidacy, log);
        }
        let granted = self.role != Role::Primary && free && up_to_date;
        if granted {
            self.voted_for = Some(sender);
            self.counters.votes_granted += 1;
            out.push(Action::PersistVote {
                epoch: self.epoch,
                voted_for: Some(sender),
            });
            self.reset_election_timer();
        }
        self.send(out, Target::Node(sender), Message::VoteReply { granted });
    }

    fn on_vote_reply(
        &mut self,
        out: &mut Vec<Action>,
        sender: NodeId,
        granted: bool,
        log: &dyn LogView,
    ) {
        if self.role != Role::Candidate || !granted {
            return;
        }
        self.votes.insert(sender);
        if self.votes.len() >= self.config.majority() {
            self.become_primary(out, log);
        }
    }

    fn on_pre_vote_request(
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
        let up_to_date =
            self.candidate_is_up_to_date(candidacy.last_gseq, candidacy.last_epoch, log);
        if !up_to_date {
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
            message: Message::PreVoteReply { granted },
        });
    }

    /// Sends a candidate whose log is behind ours the records it lacks,
    /// from just after its commit (a committed prefix is common to every
    /// log, so any divergence starts after it). Only while no primary is
    /// alive, and at most once per heartbeat per candidate.
    fn send_catchup(
        &mut self,
        out: &mut Vec<Action>,
        candidate: NodeId,
        candidacy: Candidacy,
        log: &dyn LogView,
    ) {
        let primary_alive = self.primary_alive();
        let recently = self
            .catchup_sent_ms
            .get(&candidate)
            .is_some_and(|&at| self.now_ms < at + self.config.heartbeat_ms);
        let tip = log.tip();
        if primary_alive || recently || tip.gseq == 0 {
            return;
        }
        let from = (candidacy.commit_gseq + 1)
            .min(candidacy.last_gseq + 1)
            .max(1);
        if from > tip.gseq {
            return;
        }
        let to = tip.gseq.min(from + RETRANSMIT_RECORDS_MAX - 1);
        self.catchup_sent_ms.insert(candidate, self.now_ms);
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
    fn on_catchup(
        &mut self,
        out: &mut Vec<Action>,
        first_gseq: u64,
        records: Vec<Vec<u8>>,
        source: CatchupSource,
        log: &dyn LogView,
    ) {
        let primary_alive = self.primary_alive();
        let mut tip = log.tip();
        if primary_alive || (source.last_epoch, source.last_gseq) <= (tip.epoch, tip.gseq) {
            return;
        }
        let mut to_write = Vec::new();
        for (gseq, record) in (first_gseq..).zip(records) {
            let Some(entry) = self.decode_record(gseq, &record) else {
                break;
            };
            if gseq <= tip.gseq {
                match log.entry_meta(gseq) {
                    Some((hash, _)) if hash == entry.hash => continue,
                    _ if !to_write.is_empty() => break,
                    _ => {
                        if !self.truncate(out, gseq - 1, log) {
                            break;
                        }
                        tip = log_tip_after_truncate(log, gseq - 1);
                    }
                }
            }
            if gseq > tip.gseq + 1 {
                // Datagrams arrive in any order: keep it for when the gap fills.
                self.buffer(gseq, record);
                continue;
            }
            if entry.prev_hash != tip.hash {
                // Not connected to our log: the next catch-up starts earlier
                // (at our commit) and finds where the logs part.
                break;
            }
            tip = Tip {
                gseq,
                hash: entry.hash,
                epoch: entry.body.epoch,
            };
            to_write.push(record);
        }
        self.drain_reorder(&mut tip, &mut to_write);
        if !to_write.is_empty() {
            self.counters.catchup_records_taken += to_write.len() as u64;
            out.push(Action::AppendReplicated { records: to_write });
        }
        if tip.gseq >= source.last_gseq {
            // Caught up with the voter: stand again soon rather than after
            // a whole election timeout.
            self.election_due_ms = self
                .election_due_ms
                .min(self.now_ms + self.config.heartbeat_ms);
        }
    }

    fn on_pre_vote_reply(
        &mut self,
        out: &mut Vec<Action>,
        sender: NodeId,
        epoch: u64,
        granted: bool,
        log: &dyn LogView,
    ) {
        if !granted {
            if epoch > self.epoch {
                self.adopt_epoch(out, epoch);
            }
            return;
        }
        if !self.pre_voting || epoch != self.epoch + 1 || self.role == Role::Primary {
            return;
        }
        self.pre_votes.insert(sender);
        if self.pre_votes.len() >= self.config.majority() {
            self.start_election(out, log);
        }
    }
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

#[cfg(test)]
mod tests;

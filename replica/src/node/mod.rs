//! The replication and election core, without I/O.
//!
//! [`Node`] is a deterministic state machine in the style of openraft's
//! engine: the shell feeds it inputs — a datagram arrived, time passed, a
//! batch of machine events and operator records wants appending, a disk
//! write finished — and it
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
//!
//! The code is split by concern, like openraft's `engine/handler/`:
//! [`election`] (timeouts, pre-votes, votes, epochs), [`leading`] (the
//! primary: streaming, acknowledgements, commit, retransmission),
//! [`following`] (appending what the primary sends, NAKs, heartbeats) and
//! [`catchup`] (records from a more up-to-date voter, and the routine that
//! fits received records against the log, shared with following). Each
//! role's own state lives in [`RoleState`].

mod catchup;
mod election;
mod following;
mod leading;

use crate::wire::{Message, NodeId, ReplayGuard};
use following::{Nak, Repairs};
use leading::Progress;
use ledger::crypto::Hash32;
use ledger::store::Proposed;
use ledger::store::record::ReplicatedRecord;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A primary whose write failed stays out of elections for this many
/// (longest) election timeouts.
pub const WRITE_FAILURE_STAND_DOWN_TIMEOUTS: u64 = 2;
/// By default, most records a follower keeps waiting for a gap to fill
/// (`NodeConfig::reorder_records_max`): twice the stream window, so what
/// the primary streams past a hole is held, not dropped and fetched again.
pub const REORDER_RECORDS_MAX: usize = 32_768;
/// By default, most records one NAK asks for, one retransmission or one
/// catch-up sends (one default segment): a replica far behind catches up
/// segment by segment (`NodeConfig::repair_records_max`).
pub const REPAIR_RECORDS_DEFAULT: u64 = 4_096;
/// By default, most records the primary streams beyond what the most
/// advanced follower acknowledged (`NodeConfig::stream_window_records`):
/// flow control, so a burst of writes cannot overrun the followers'
/// receive buffers (which would turn into a storm of NAKs and
/// retransmissions, and lost heartbeats). The rest follows as acks return.
/// A live follower that keeps up is also never left more than its reorder
/// buffer behind. Sized to cover a repair's round trip on a loaded
/// machine (about 100 ms at 100,000 records/s; 4,096 stalled the stream
/// at every hole).
pub const STREAM_WINDOW_RECORDS: u64 = 16_384;

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
    /// The last gseq of the log that is durable here (synced). A primary
    /// streams records before its own sync, so it counts itself towards a
    /// commit only up to this. A log whose every write is durable at once
    /// has it at its tip.
    fn synced_gseq(&self) -> u64 {
        self.tip().gseq
    }
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
    /// Primary: append these machine events and operator records in
    /// `epoch`, then call [`Node::on_local_append`].
    Append {
        epoch: u64,
        entries: Vec<Proposed>,
    },
    /// New primary: append the marker opening `epoch`, then call
    /// [`Node::on_local_append`].
    AppendMarker {
        epoch: u64,
    },
    /// Follower: append these records, which continue the log's tip.
    AppendReplicated {
        records: Vec<ReplicatedRecord>,
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

impl Action {
    /// Whether executing the action writes to the log or its metadata.
    pub fn writes(&self) -> bool {
        matches!(
            self,
            Action::PersistVote { .. }
                | Action::Append { .. }
                | Action::AppendMarker { .. }
                | Action::AppendReplicated { .. }
                | Action::TruncateAfter { .. }
        )
    }
}

/// A vote or pre-vote reply: granted or not, to which candidate, for
/// which epoch.
#[derive(Clone, Copy, Debug)]
struct VoteAnswer {
    granted: bool,
    candidate: NodeId,
    epoch: u64,
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
    /// Most records one NAK asks for, one retransmission or one catch-up
    /// sends ([`REPAIR_RECORDS_DEFAULT`]; the simulation uses small ones so
    /// short logs still need many segments).
    pub repair_records_max: u64,
    /// Most records streamed past the most advanced follower's ack
    /// ([`STREAM_WINDOW_RECORDS`]; the simulation uses small ones so its
    /// short loads reach the window).
    pub stream_window_records: u64,
    /// Most records a follower buffers past a hole ([`REORDER_RECORDS_MAX`]).
    pub reorder_records_max: usize,
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
    /// timings (heartbeats every 50 ms, elections after 200-400 ms, a
    /// hole NAKed as soon as it is found, retries backing off to 400 ms).
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
            election_timeout_min_ms: 200,
            election_timeout_max_ms: 400,
            nak_delay_ms: 0,
            nak_backoff_max_ms: 400,
            repair_records_max: REPAIR_RECORDS_DEFAULT,
            stream_window_records: STREAM_WINDOW_RECORDS,
            reorder_records_max: REORDER_RECORDS_MAX,
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
    /// Addressed to another replica (or a reply addressed to everyone).
    pub misaddressed_dropped: u64,
    /// Vote and pre-vote requests left unanswered while the log was being
    /// repaired.
    pub vote_requests_ignored_repairing: u64,
    pub stale_epoch_dropped: u64,
    pub malformed_records_dropped: u64,
    pub reorder_overflow_dropped: u64,
    /// Times the primary held records back for the flow-control window
    /// (or a live follower's reorder buffer).
    pub stream_window_waits: u64,
    pub naks_sent: u64,
    pub naks_received: u64,
    pub records_retransmitted: u64,
    /// Records a follower received while it already held them (stored or
    /// waiting to be): a NAK asked again for a repair that was only slow,
    /// or a duplicated datagram.
    pub records_received_twice: u64,
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

/// Why a proposal was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotPrimary {
    /// The primary this node follows, if it knows one.
    Follow(Option<NodeId>),
}

/// What only one role holds.
#[derive(Debug)]
enum RoleState {
    Following {
        /// The primary of this epoch, once heard from.
        leader: Option<NodeId>,
        /// A gap this follower is asking to have filled.
        nak: Option<Nak>,
    },
    Candidate {
        /// Who voted for this node in its epoch (itself included).
        votes: BTreeSet<NodeId>,
    },
    Leading {
        progress: BTreeMap<NodeId, Progress>,
        /// The last gseq already streamed to followers.
        streamed: u64,
        /// The gseq of this epoch's marker, once appended.
        epoch_start_gseq: Option<u64>,
        heartbeat_due_ms: u64,
    },
}

impl RoleState {
    fn following(leader: Option<NodeId>) -> RoleState {
        RoleState::Following { leader, nak: None }
    }
}

pub struct Node {
    config: NodeConfig,
    rng: ChaCha8Rng,
    epoch: u64,
    voted_for: Option<NodeId>,
    state: RoleState,
    commit: u64,
    /// Highest gseq known to equal the current primary's log.
    verified: u64,
    /// `commit` and `verified` as they were before the latest input: what
    /// a failed write rolls back to, since what the node concluded from
    /// that input may rest on the write (a truncation, an append).
    settled: (u64, u64),
    now_ms: u64,
    election_due_ms: u64,
    /// When this node last heard from a primary of its epoch.
    leader_heard_ms: Option<u64>,
    /// A pre-vote round under way: who would vote for this node.
    pre_votes: Option<BTreeSet<NodeId>>,
    /// Records received ahead of a gap (following, or catching up from a
    /// voter), waiting for it to fill. Boxed: a decoded record is 216
    /// bytes, and the map's nodes shift their values on every
    /// insert and removal (1.8% of the replicas' samples under 5% loss).
    reorder: BTreeMap<u64, Box<ReplicatedRecord>>,
    replay: ReplayGuard,
    /// After a failed write the node does not stand for election until then.
    stand_after_ms: u64,
    /// Set while the log is being repaired after damage (the gseq this
    /// replica had promised): a learner takes records but does not stand
    /// or acknowledge, and votes only as its promise allows.
    repair_until: Option<u64>,
    /// The epoch of the promised entry at `repair_until`, when the promise
    /// names it: the replica then votes as if its log still ended there.
    /// Unknown (an old promise, or none at all), it does not vote.
    repair_epoch: Option<u64>,
    /// The last catch-up sent to each candidate (a rate limit, and where
    /// the next segment starts).
    catchup_sent: BTreeMap<NodeId, catchup::CatchupSent>,
    /// How long a NAK takes to be answered, and which was answered last
    /// (when to ask for a hole again).
    repairs: Repairs,
    counters: Counters,
}

/// The state a node restarts from.
#[derive(Clone, Copy, Debug, Default)]
pub struct Restart {
    pub vote: PersistedVote,
    /// A lower bound of the commit gseq saved before the restart.
    pub commit_hint: u64,
    /// The log ends before what this replica promised (it was damaged):
    /// repair up to here from the primary before standing or
    /// acknowledging.
    pub repair_until: Option<u64>,
    /// The epoch of the promised entry, when the promise names it: while
    /// repairing, votes are judged against (this epoch, `repair_until`)
    /// instead of the damaged log's tip. `None`: no votes while repairing.
    pub repair_epoch: Option<u64>,
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
            state: RoleState::following(None),
            commit: restart.commit_hint,
            verified: restart.commit_hint,
            settled: (restart.commit_hint, restart.commit_hint),
            now_ms,
            election_due_ms: 0,
            leader_heard_ms: None,
            pre_votes: None,
            reorder: BTreeMap::new(),
            replay: ReplayGuard::default(),
            stand_after_ms: 0,
            catchup_sent: BTreeMap::new(),
            repair_until: restart.repair_until,
            repair_epoch: restart.repair_until.and(restart.repair_epoch),
            repairs: Repairs::default(),
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
        match self.state {
            RoleState::Following { .. } => Role::Follower,
            RoleState::Candidate { .. } => Role::Candidate,
            RoleState::Leading { .. } => Role::Primary,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The primary this node knows of (itself, when it leads).
    pub fn leader(&self) -> Option<NodeId> {
        match self.state {
            RoleState::Following { leader, .. } => leader,
            RoleState::Candidate { .. } => None,
            RoleState::Leading { .. } => Some(self.config.id),
        }
    }

    pub fn commit_gseq(&self) -> u64 {
        self.commit
    }

    /// The vote as last persisted: the epoch, and who got the vote in it.
    pub fn vote(&self) -> PersistedVote {
        PersistedVote {
            epoch: self.epoch,
            voted_for: self.voted_for,
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The primary's view of how far each follower has matched its log.
    pub fn follower_matches(&self) -> Vec<(NodeId, u64)> {
        match &self.state {
            RoleState::Leading { progress, .. } => {
                progress.iter().map(|(&id, p)| (id, p.match_gseq)).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The gseq this replica is repairing its damaged log up to, if it is:
    /// until then it does not stand or acknowledge, and votes only for a
    /// candidate whose log holds what it promised.
    pub fn repairing_until(&self) -> Option<u64> {
        self.repair_until
    }

    /// Leaves repair once the log holds everything it promised, or all the
    /// current primary holds (a promised entry that was never committed may
    /// be gone from every log, so waiting for it could last forever).
    fn end_repair_if_done(&mut self, primary_tip: Option<u64>) {
        let Some(until) = self.repair_until else {
            return;
        };
        if self.verified >= until || primary_tip.is_some_and(|tip| self.verified >= tip) {
            self.repair_until = None;
            self.repair_epoch = None;
        }
    }

    /// Whether this node may accept machine events and operator records
    /// right now: it is the primary and its epoch is open (the marker is in
    /// its log).
    pub fn accepts_writes(&self) -> bool {
        matches!(
            self.state,
            RoleState::Leading {
                epoch_start_gseq: Some(_),
                ..
            }
        )
    }

    /// The invariants that hold once the shell executed the node's actions:
    /// nothing is committed beyond the log, and a follower's commit never
    /// passes what it verified against its primary. A programmer error
    /// otherwise: the replica stops rather than serve a wrong log.
    pub fn assert_invariants(&self, log: &dyn LogView) {
        let tip = log.tip().gseq;
        assert!(
            self.commit <= tip,
            "commit {} passes the log's tip {tip}",
            self.commit
        );
        if let RoleState::Following { .. } = self.state {
            assert!(
                self.commit <= self.verified && self.verified <= tip,
                "a follower needs commit {} <= verified {} <= tip {tip}",
                self.commit,
                self.verified
            );
        }
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

    /// Moves to another role; the shell hears of it when the role or the
    /// leader it follows changed.
    fn transition(&mut self, out: &mut Vec<Action>, state: RoleState) {
        let before = (self.role(), self.leader());
        self.state = state;
        // The committed prefix is common to every log that matters, so it
        // is verified against whichever primary comes next.
        self.verified = self.verified.max(self.commit);
        let (role, leader) = (self.role(), self.leader());
        if (role, leader) != before {
            out.push(Action::RoleChanged {
                role,
                epoch: self.epoch,
                leader,
            });
        }
    }

    // ----- time -----

    /// Time passed: heartbeats, elections, NAK retries, quorum checks.
    pub fn tick(&mut self, now_ms: u64, log: &dyn LogView) -> Vec<Action> {
        self.settle();
        self.now_ms = self.now_ms.max(now_ms);
        let mut out = Vec::new();
        if let RoleState::Leading { .. } = self.state {
            self.tick_primary(&mut out, log);
        } else {
            if self.now_ms >= self.election_due_ms {
                self.election_timeout(&mut out, log);
            }
            self.maybe_nak(&mut out, log);
        }
        out
    }

    /// The shell synced the log up to `log.synced_gseq()`: as primary, the
    /// commit may now count this replica's copy of what followers hold.
    pub fn on_synced(&mut self, log: &dyn LogView) -> Vec<Action> {
        let mut out = Vec::new();
        self.advance_commit(&mut out, log);
        out
    }

    /// Marks the start of an input: what the node holds now rests only on
    /// writes already executed.
    fn settle(&mut self) {
        self.settled = (self.commit, self.verified);
    }

    /// The shell could not execute a write (or sync it). What the node
    /// concluded from the input whose write failed is rolled back (a
    /// follower that verified records it could not store, or could not
    /// truncate the entries they replace, must not commit them), it re-reads
    /// its tip, and a primary steps down and stays out of
    /// elections for a while, since a replica that cannot write cannot
    /// serve.
    pub fn on_write_failed(&mut self, log: &dyn LogView) -> Vec<Action> {
        let mut out = Vec::new();
        self.counters.write_failures += 1;
        self.reorder.clear();
        let tip = log.tip().gseq;
        let (commit, verified) = self.settled;
        self.commit = self.commit.min(commit).min(tip);
        self.verified = self.verified.min(verified).min(tip).max(self.commit);
        if let RoleState::Leading { .. } = self.state {
            self.transition(&mut out, RoleState::following(None));
            // Long enough for a healthy replica to win the next election
            // first, short enough that a transient failure never leaves a
            // cluster without a primary for long.
            self.stand_after_ms = self.now_ms
                + WRITE_FAILURE_STAND_DOWN_TIMEOUTS * self.config.election_timeout_max_ms;
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
        self.settle();
        self.now_ms = self.now_ms.max(now_ms);
        self.counters.datagrams_received += 1;
        let mut out = Vec::new();
        let sender = datagram.sender;
        if !self.addressed_here(&datagram) {
            self.counters.misaddressed_dropped += 1;
            return out;
        }
        if self.repair_until.is_some()
            && self.repair_epoch.is_none()
            && matches!(
                datagram.message,
                Message::VoteRequest { .. } | Message::PreVoteRequest { .. }
            )
        {
            // A damaged log's vote could elect a candidate that lacks
            // entries this replica promised, and without the promised
            // entry's epoch there is nothing to judge a candidate by: no
            // answer while repairing.
            self.counters.vote_requests_ignored_repairing += 1;
            return out;
        }
        let known = self.config.members.iter().any(|m| m.id == sender) && sender != self.config.id;
        if !known
            || !self
                .replay
                .admit(sender, datagram.incarnation, datagram.packet_seq)
        {
            self.counters.replayed_dropped += 1;
            return out;
        }
        if self.fenced(&mut out, &datagram, log) {
            return out;
        }
        self.dispatch(&mut out, datagram, log);
        out
    }

    /// Whether a datagram is meant for this node: what goes to every
    /// replica (the stream, heartbeats, vote requests) may say so; a reply
    /// or a repair must name this node. Sender and receiver are
    /// authenticated, so a datagram captured on its way to another replica
    /// and replayed here is refused.
    fn addressed_here(&self, datagram: &crate::wire::Datagram) -> bool {
        let to_everyone = matches!(
            datagram.message,
            Message::Append { .. }
                | Message::Heartbeat { .. }
                | Message::VoteRequest { .. }
                | Message::PreVoteRequest { .. }
        );
        datagram.receiver == self.config.id
            || (to_everyone && datagram.receiver == crate::wire::RECEIVER_ALL)
    }

    /// Epoch rules: a datagram of a newer epoch moves this node to it; one
    /// of an older epoch is refused (fencing) and its sender told. Pre-votes
    /// and catch-ups carry no authority of an epoch (a catch-up is judged
    /// by how up to date its source log is), so they neither raise nor are
    /// fenced by the receiver's epoch: a candidate that moved to a newer
    /// epoch must still get a voter's records.
    fn fenced(
        &mut self,
        out: &mut Vec<Action>,
        datagram: &crate::wire::Datagram,
        log: &dyn LogView,
    ) -> bool {
        let outside_epochs = matches!(
            datagram.message,
            Message::PreVoteRequest { .. } | Message::PreVoteReply { .. } | Message::Catchup { .. }
        );
        if outside_epochs {
            return false;
        }
        if datagram.epoch > self.epoch {
            self.adopt_epoch(out, datagram.epoch);
        } else if datagram.epoch < self.epoch {
            self.counters.stale_epoch_dropped += 1;
            self.answer_stale(out, datagram.sender, &datagram.message, log);
            return true;
        }
        false
    }

    fn dispatch(
        &mut self,
        out: &mut Vec<Action>,
        datagram: crate::wire::Datagram,
        log: &dyn LogView,
    ) {
        let sender = datagram.sender;
        let candidacy = |last_gseq, last_epoch| Candidacy {
            last_gseq,
            last_epoch,
            commit_gseq: datagram.commit_gseq,
        };
        match datagram.message {
            Message::Append {
                first_gseq,
                records,
            } => {
                self.heard_from_primary(out, sender);
                self.on_append(out, first_gseq, records, log);
                self.follow_commit(out, datagram.commit_gseq);
            }
            Message::Heartbeat { tip_gseq, tip_hash } => {
                self.heard_from_primary(out, sender);
                self.on_heartbeat(out, tip_gseq, tip_hash, log);
                self.follow_commit(out, datagram.commit_gseq);
            }
            Message::Ack { tip_gseq, tip_hash } => {
                self.on_ack(out, sender, tip_gseq, tip_hash, log)
            }
            Message::Nak { from_gseq, to_gseq } => {
                self.on_nak(out, sender, from_gseq, to_gseq, log)
            }
            Message::VoteRequest {
                last_gseq,
                last_epoch,
            } => self.on_vote_request(out, sender, candidacy(last_gseq, last_epoch), log),
            Message::VoteReply {
                granted,
                candidate,
                epoch,
            } => {
                let answer = VoteAnswer {
                    granted,
                    candidate,
                    epoch,
                };
                self.on_vote_reply(out, sender, answer, log)
            }
            Message::PreVoteRequest {
                last_gseq,
                last_epoch,
            } => self.on_pre_vote_request(
                out,
                sender,
                datagram.epoch,
                candidacy(last_gseq, last_epoch),
                log,
            ),
            Message::PreVoteReply {
                granted,
                candidate,
                proposed_epoch,
            } => {
                let answer = VoteAnswer {
                    granted,
                    candidate,
                    epoch: proposed_epoch,
                };
                self.on_pre_vote_reply(out, sender, datagram.epoch, answer, log)
            }
            Message::Catchup {
                first_gseq,
                records,
                last_gseq,
                last_epoch,
            } => self.on_catchup(
                out,
                first_gseq,
                records,
                CatchupSource {
                    last_gseq,
                    last_epoch,
                },
                log,
            ),
        }
    }
}

#[cfg(test)]
mod tests;

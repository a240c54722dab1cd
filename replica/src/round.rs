//! The one executor of a replica's protocol cores, without I/O.
//!
//! [`Round`] owns the replication node ([`Node`]), the machine ingest
//! ([`Ingest`]), the ledger (over any storage [`Backend`]) and the outbox.
//! A shell drives it in rounds:
//!
//! ```text
//! round.begin(now_ms, wall_ms);
//! round.input(..); round.input(..); ...   // datagrams, machine frames, sessions
//! round.operator_request(..);             // what an operator asks (appended at once)
//! round.tick();                            // timers
//! for outgoing in round.take_early() { .. send it .. }  // retransmissions, NAKs
//! round.seal();                            // propose what machines sent, announce commits,
//!                                          // deliver committed commands, answer operators
//! for outgoing in round.take_early() { .. send it .. }  // the new records, commit acks
//! let synced = round.sync();               // one fsync for every write of the round
//! for outgoing in round.finish(synced) { .. send it .. }
//! ```
//!
//! The node's actions run here and nowhere else, in order and iteratively
//! (follow-up actions go to the front of the queue). Nothing the round
//! produces that rests on its own writes — acknowledgements to peers,
//! votes, machine frames — leaves before `finish` is handed a successful
//! sync: nothing outside ever depends on a write that a crash could take
//! back. If the sync fails the round sends none of it. Three things may
//! leave before the sync (`take_early`): records, which promise nothing
//! about this replica's disk, a follower's NAKs, which only ask for
//! records, and machines' acknowledgements of a commit, which rest on
//! earlier rounds' syncs. The tokio server and the deterministic
//! simulation both drive this type; neither executes an action itself.
//!
//! Operators' requests take the machine events' path: planned against the
//! projection ([`crate::operators`]), proposed to the node, appended,
//! streamed and committed. A request is answered once its entries are
//! committed (or when it can no longer be: its entries were replaced after
//! a failover, or `OPERATOR_COMMIT_TIMEOUT_MS` passed), and the commands it
//! records go to their machines the moment they are committed.

use crate::ingest::{Ingest, IngestAction, LinkKeys, MachineIndex, SessionId, Standing};
use crate::node::{
    Action, LogView, Node, NodeConfig, NotPrimary, PersistedVote, Restart, Role, Target, Tip,
};
use crate::wire::{Datagram, DatagramCodec, Message, NodeId, WireError, replication_messages};
use dashboard::ports::{ActionError, ActionReceipt, OperatorAction};
use ledger::crypto::Hash32;
use ledger::keys::ChainKeys;
use ledger::operator::{CommandOutcome, OperatorAction as Recorded};
use ledger::rules::RemoteCommand;
use ledger::store::backend::Backend;
use ledger::store::promise::{Promise, PromiseStore};
use ledger::store::record::ReplicatedRecord;
use ledger::store::{Appended, LogStore, Proposed, StoreError};
use ledger::{Ledger, MachineId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The commit hint is saved at most this often.
pub const COMMIT_HINT_EVERY_MS: u64 = 250;
/// Recent entries whose hash and epoch are kept in memory.
pub const META_CACHE_ENTRIES: usize = 65_536;
/// Past this many entries the cache is given its whole window at once.
const META_CACHE_GROWN: usize = 4_096;
/// Storage failures are logged at most this often (with a count).
pub const STORAGE_ERROR_LOG_EVERY_MS: u64 = 5_000;
/// Datagrams that fail authentication are warned about at most this often
/// (with a count): a peer with another cluster key sends many a second.
pub const AUTHENTICATION_FAILURE_LOG_EVERY_MS: u64 = 5_000;
/// Machines whose handshake fails (unknown machine, other link version,
/// wrong key) are warned about at most this often (with a count): a
/// misconfigured machine retries every few seconds, forever.
pub const HANDSHAKE_REFUSAL_LOG_EVERY_MS: u64 = 60_000;
/// A replica that meets a machine it has no key for asks its shell to
/// reload the key directory at most this often.
pub const KEY_RELOAD_INTERVAL_MS: u64 = 1_000;

/// Operator requests appended and waiting for their commit, at most; more
/// are refused at once (the dashboard's own queue is smaller still).
pub const OPERATOR_REQUESTS_WAITING_MAX: usize = 64;
/// An operator request whose entries are not committed within this long is
/// answered with an error (they may still be committed later, and the
/// answer says so): a request never hangs on a cluster without a majority.
pub const OPERATOR_COMMIT_TIMEOUT_MS: u64 = 5_000;

const META_VOTE: &str = "vote";
const META_COMMIT: &str = "commit_hint";
const META_INCARNATION: &str = "incarnation";

/// The keys a replica needs: machines' chain keys (to check their
/// streams) and link keys (to open their sessions).
pub trait FleetKeys: ChainKeys + LinkKeys {}
impl<T: ChainKeys + LinkKeys> FleetKeys for T {}

/// What the shell hands the round.
pub enum Input<K> {
    /// A datagram's bytes as received (the round opens and checks it).
    Datagram(Vec<u8>),
    SessionOpened(SessionId),
    SessionFrame {
        session: SessionId,
        payload: Vec<u8>,
    },
    SessionClosed(SessionId),
    /// The stream carried something that is not a frame (the shell closes
    /// the connection); counted.
    SessionMalformed(SessionId),
    /// A freshly loaded key directory (after [`Outgoing::LoadKeys`]).
    Keys(K),
}

/// What a round releases once its writes are durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outgoing {
    Datagram {
        to: Target,
        bytes: Vec<u8>,
    },
    /// A frame payload for a machine session (the shell frames it).
    Frame {
        session: SessionId,
        payload: Vec<u8>,
    },
    /// Close the session after sending what is queued for it.
    Close {
        session: SessionId,
    },
    /// The session's peer proved it holds the machine's key (its first
    /// sealed frame opened): the shell stops treating the connection as a
    /// stranger's (no handshake deadline, never evicted for newcomers).
    Authenticated {
        session: SessionId,
    },
    /// Load the key directory again (off the core thread) and hand it back
    /// as [`Input::Keys`]: a machine without a key was met.
    LoadKeys,
    /// The answer to an operator request taken by
    /// [`Round::operator_request`]: committed (with what was sent to
    /// machines), or why it is not.
    OperatorAnswer {
        request: RequestId,
        answer: Result<ActionReceipt, ActionError>,
    },
}

/// The shell's name for an operator request, to match its answer.
pub type RequestId = u64;

/// Why an operator request was not taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// This replica is not the primary (or its epoch is not open yet);
    /// `leader` is the primary it follows, if it knows one.
    NotPrimary {
        leader: Option<NodeId>,
    },
    Action(ActionError),
}

/// An operator request whose entries are appended, waiting for the commit.
struct Waiting {
    request: RequestId,
    /// Its last entry, and that entry's hash: when the commit passes the
    /// gseq, the entry there must still be this one (a failover may have
    /// replaced it).
    last_gseq: u64,
    last_hash: Hash32,
    /// The commands it records: (gseq, machine, command id, delivered at
    /// its commit).
    commands: Vec<(u64, MachineId, u64, bool)>,
    deadline_ms: u64,
}

/// What became of the operator records being appended.
#[derive(Default)]
struct Proposing {
    gseqs: Vec<u64>,
    refused: Option<String>,
}

/// What a round starts with besides its configuration and ledger.
pub struct Start<K> {
    pub keys: K,
    pub codec: DatagramCodec,
    /// Where the replica's promises are kept, apart from its log.
    pub promises: Box<dyn PromiseStore>,
    /// The lowest incarnation to take (a server's wall clock).
    pub incarnation_floor: u64,
    pub seed: u64,
    /// The log was found damaged and replaced by an empty one: without a
    /// promise to say what it held, the replica repairs until it holds all
    /// its primary does.
    pub damaged: bool,
}

/// What a round needs to know about its cluster.
#[derive(Clone, Debug)]
pub struct RoundConfig {
    pub node: NodeConfig,
    /// This replica's name (in epoch markers and status).
    pub name: String,
    pub cluster_id: u32,
    pub payload_bytes_max: usize,
    /// Each member's machine address, for redirecting machines.
    pub machine_addresses: BTreeMap<NodeId, String>,
}

/// Hash and epoch of the most recent entries, so acknowledgements and
/// conflict checks do not read (and decrypt) the log.
#[derive(Default)]
struct MetaCache {
    first_gseq: u64,
    metas: VecDeque<(Hash32, u64)>,
}

impl MetaCache {
    fn push(&mut self, gseq: u64, hash: Hash32, epoch: u64) {
        if self.metas.is_empty() || gseq != self.first_gseq + self.metas.len() as u64 {
            self.metas.clear();
            self.first_gseq = gseq;
        }
        if self.metas.len() == META_CACHE_ENTRIES {
            self.metas.pop_front();
            self.first_gseq += 1;
        }
        // Doubling to 4,096, then the whole window at once: each doubling
        // of a large ring copied it and faulted in fresh pages inside one
        // round. (Not all at first: the simulation opens many rounds that
        // each hold a few entries.)
        if self.metas.len() == self.metas.capacity() && self.metas.len() >= META_CACHE_GROWN {
            self.metas
                .reserve_exact(META_CACHE_ENTRIES - self.metas.len());
        }
        self.metas.push_back((hash, epoch));
    }

    fn truncate_after(&mut self, gseq: u64) {
        while !self.metas.is_empty() && self.first_gseq + self.metas.len() as u64 - 1 > gseq {
            self.metas.pop_back();
        }
    }

    fn get(&self, gseq: u64) -> Option<(Hash32, u64)> {
        let offset = usize::try_from(gseq.checked_sub(self.first_gseq)?).ok()?;
        self.metas.get(offset).copied()
    }
}

/// A [`View`] built from the round's fields, so it can be lent while
/// another field (the node, the ingest) is borrowed mutably.
macro_rules! view {
    ($round:ident) => {
        View {
            ledger: &$round.ledger,
            cache: &$round.cache,
            synced_gseq: $round.synced_gseq,
        }
    };
}

/// The node's and the ingest's view of the log.
struct View<'a, B: Backend> {
    ledger: &'a Ledger<B>,
    cache: &'a MetaCache,
    synced_gseq: u64,
}

impl<B: Backend> LogView for View<'_, B> {
    fn tip(&self) -> Tip {
        let head = self.ledger.store().head();
        Tip {
            gseq: head.gseq,
            hash: head.hash,
            epoch: head.epoch,
        }
    }

    fn entry_meta(&self, gseq: u64) -> Option<(Hash32, u64)> {
        if gseq == 0 || gseq > self.ledger.store().head().gseq {
            return None;
        }
        self.cache.get(gseq).or_else(|| {
            let entry = self.ledger.store().get(gseq).ok().flatten()?;
            Some((entry.hash, entry.body.epoch))
        })
    }

    fn synced_gseq(&self) -> u64 {
        self.synced_gseq
    }
}

impl<B: Backend> MachineIndex for View<'_, B> {
    fn machine_head(&self, machine: &MachineId) -> (u64, u64) {
        let head = self.ledger.store().machine_head(machine);
        (head.seq, head.gseq)
    }

    fn gseq_of(&self, machine: &MachineId, seq: u64) -> Option<u64> {
        self.ledger.store().gseq_of(machine, seq).ok().flatten()
    }

    fn pending_commands(
        &self,
        machine: &MachineId,
        commit_gseq: u64,
        max: usize,
    ) -> Vec<RemoteCommand> {
        self.ledger
            .projection()
            .operators
            .pending_commands(machine, commit_gseq, max)
    }
}

/// Why an action was not carried out.
enum NotDone {
    /// The log refused the write (I/O, a full disk, a record that does
    /// not continue it).
    Storage(StoreError),
    /// Replicated events of a machine whose key is not loaded yet.
    KeyMissing,
}

impl From<StoreError> for NotDone {
    fn from(error: StoreError) -> NotDone {
        NotDone::Storage(error)
    }
}

/// Counts of what the round refused or could not do, for the status page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoundCounters {
    /// The last storage failure, until a sync succeeds again.
    pub storage_error: Option<String>,
    /// Datagrams dropped before the protocol saw them, by reason.
    pub datagrams_rejected: BTreeMap<&'static str, u64>,
    pub write_failures: u64,
    pub sync_failures: u64,
    pub key_reloads_requested: u64,
    /// The last datagram that failed authentication: the sender it claimed
    /// and when (the round's clock). Most likely this replica's or that
    /// peer's cluster.key is not the cluster's.
    pub last_unauthenticated: Option<(NodeId, u64)>,
}

pub struct Round<B: Backend, K: FleetKeys> {
    config: RoundConfig,
    node: Node,
    ingest: Ingest,
    ledger: Ledger<B>,
    keys: K,
    codec: DatagramCodec,
    cache: MetaCache,
    incarnation: u64,
    packet_seq: u64,
    now_ms: u64,
    wall_ms: i64,
    /// Everything to send this round, held until the round's writes are
    /// synced (`None`: an acknowledgement a newer one replaced).
    outbox: Vec<Option<Outgoing>>,
    /// The machine sessions something in the outbox is for: a session's
    /// frames are sealed in order and must leave in it, so a commit's
    /// acknowledgement to one of them waits in the outbox behind them.
    outbox_sessions: BTreeSet<SessionId>,
    /// Datagrams of records (streamed, retransmitted, served for a catch
    /// up), NAKs, and machines' acknowledgements of a commit, which may
    /// leave before the round's sync (`take_early`): holding records
    /// promises nothing about this replica's disk, a NAK only asks for
    /// records, and the commit counts this replica only up to
    /// `synced_gseq`, durable since an earlier round.
    early: Vec<Outgoing>,
    /// The last gseq of the log known durable here: the tip at open and at
    /// each successful sync, lowered by truncations.
    synced_gseq: u64,
    /// Handshake nonces (seeded from the OS by a server, from the seed by
    /// the simulation, so a seed replays exactly).
    nonces: ChaCha20Rng,
    /// Where this round's last acknowledgement to each peer sits in the
    /// outbox: acks are cumulative, so a newer one replaces it.
    acks_queued: BTreeMap<NodeId, usize>,
    /// The sessions each event of the proposal being appended came from.
    proposal_origins: Vec<crate::ingest::Origin>,
    /// Set while an operator request's records are being appended (the
    /// proposal then holds only those).
    proposing: Option<Proposing>,
    /// Operator requests appended, waiting for their commit (at most
    /// `OPERATOR_REQUESTS_WAITING_MAX`).
    operators_waiting: Vec<Waiting>,
    /// The primary's commands not committed yet, by gseq: each goes to its
    /// machine the moment the commit passes it (at most
    /// `operators::COMMANDS_PENDING_MAX` per machine).
    commands_to_deliver: BTreeMap<u64, (MachineId, RemoteCommand)>,
    /// A commit advance not yet announced to the machines.
    commit_to_announce: Option<u64>,
    /// Where what was promised is kept, and what was last promised.
    promises: Box<dyn PromiseStore>,
    promised: Option<Promise>,
    commit_saved: u64,
    commit_saved_at_ms: u64,
    /// The primary's tip as last heard (for the follower's lag).
    primary_tip: u64,
    keys_requested_at_ms: Option<u64>,
    storage_failure_logged_at_ms: Option<u64>,
    storage_failures_unlogged: u64,
    authentication_failure_logged_at_ms: Option<u64>,
    authentication_failures_unlogged: u64,
    handshake_refusals: Throttle,
    /// A write of this round succeeded (so a successful sync proves the log
    /// can be written again).
    wrote_this_round: bool,
    counters: RoundCounters,
}

/// Something worth a log line that may happen many times a second: said
/// at most once per interval, with how many times it happened since.
#[derive(Clone, Copy, Debug)]
struct Throttle {
    every_ms: u64,
    logged_at_ms: Option<u64>,
    unlogged: u64,
}

impl Throttle {
    fn new(every_ms: u64) -> Throttle {
        Throttle {
            every_ms,
            logged_at_ms: None,
            unlogged: 0,
        }
    }

    /// It happened at `now_ms`: `Some(count)` when it is time to say so.
    fn note(&mut self, now_ms: u64) -> Option<u64> {
        self.unlogged += 1;
        let due = self
            .logged_at_ms
            .is_none_or(|at| now_ms >= at + self.every_ms);
        if !due {
            return None;
        }
        self.logged_at_ms = Some(now_ms);
        Some(std::mem::take(&mut self.unlogged))
    }
}

impl<B: Backend, K: FleetKeys> Round<B, K> {
    /// Starts a replica on an opened ledger. The vote, the commit hint and
    /// the incarnation come from the ledger's metadata and from the promise
    /// file, whichever is newer: the promise survives damage to the log. A
    /// log that ends before what was promised (or that holds another entry
    /// at the promised gseq) is repaired from the peers before the replica
    /// votes, stands or acknowledges. The incarnation (which peers' replay
    /// guards go by) becomes the larger of the saved one plus one and
    /// `start.incarnation_floor` (a server passes its wall clock).
    pub fn open(
        config: RoundConfig,
        mut ledger: Ledger<B>,
        start: Start<K>,
    ) -> Result<Round<B, K>, StoreError> {
        let Start {
            keys,
            codec,
            mut promises,
            incarnation_floor,
            seed,
            damaged,
        } = start;
        let mut promise = load_promise(&config.name, promises.as_mut());
        if damaged && promise.is_none() {
            promise = Some(Promise::new(u64::MAX, [0; 32], 0, None));
        }
        let (restart, previous) = restart_state(&config.name, ledger.store(), promise.as_ref())?;
        let incarnation = (previous + 1).max(incarnation_floor);
        ledger
            .store_mut()
            .put_app_meta(META_INCARNATION, &incarnation)?;
        ledger.store_mut().sync_deferred()?;
        // A round's appends reach the backend in one write, at its sync
        // (`ledger::store::staged`): a follower appends per datagram.
        ledger.store_mut().stage_writes();
        let node = Node::new(config.node.clone(), restart, seed ^ incarnation, 0);
        tracing::info!(
            replica = %config.name,
            epoch = restart.vote.epoch,
            tip = ledger.store().head().gseq,
            commit_hint = restart.commit_hint,
            incarnation,
            "replica opened its log"
        );
        let commit_hint = restart.commit_hint;
        let synced_gseq = ledger.store().head().gseq;
        Ok(Round {
            config,
            node,
            ingest: Ingest::new(),
            ledger,
            keys,
            codec,
            cache: MetaCache::default(),
            incarnation,
            packet_seq: 0,
            now_ms: 0,
            wall_ms: 0,
            outbox: Vec::new(),
            outbox_sessions: BTreeSet::new(),
            early: Vec::new(),
            synced_gseq,
            nonces: ChaCha20Rng::seed_from_u64(seed),
            acks_queued: BTreeMap::new(),
            proposal_origins: Vec::new(),
            proposing: None,
            operators_waiting: Vec::new(),
            commands_to_deliver: BTreeMap::new(),
            commit_to_announce: None,
            promises,
            promised: promise,
            commit_saved: commit_hint,
            commit_saved_at_ms: 0,
            primary_tip: 0,
            keys_requested_at_ms: None,
            storage_failure_logged_at_ms: None,
            storage_failures_unlogged: 0,
            authentication_failure_logged_at_ms: None,
            authentication_failures_unlogged: 0,
            handshake_refusals: Throttle::new(HANDSHAKE_REFUSAL_LOG_EVERY_MS),
            wrote_this_round: false,
            counters: RoundCounters::default(),
        })
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn ingest(&self) -> &Ingest {
        &self.ingest
    }

    pub fn ledger(&self) -> &Ledger<B> {
        &self.ledger
    }

    pub fn config(&self) -> &RoundConfig {
        &self.config
    }

    pub fn counters(&self) -> &RoundCounters {
        &self.counters
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The primary's tip as last heard in a heartbeat.
    pub fn primary_tip(&self) -> u64 {
        self.primary_tip
    }

    /// The highest seq of `machine` whose entry is at or below
    /// `commit_gseq`, given a seq `known` to be committed (0 for none).
    pub fn committed_seq(&self, machine: &MachineId, commit_gseq: u64, known: u64) -> u64 {
        crate::ingest::committed_seq(&view!(self), machine, commit_gseq, known)
    }

    /// Gives the ledger back (the round is over for good).
    pub fn into_ledger(self) -> Ledger<B> {
        self.ledger
    }

    /// Starts a round at `now_ms` (the replica's monotonic clock, for
    /// timers) and `wall_ms` (milliseconds since the Unix epoch, written
    /// into new entries).
    pub fn begin(&mut self, now_ms: u64, wall_ms: i64) {
        self.now_ms = self.now_ms.max(now_ms);
        self.wall_ms = wall_ms;
    }

    pub fn input(&mut self, input: Input<K>) {
        match input {
            Input::Datagram(bytes) => self.on_datagram(&bytes),
            Input::SessionOpened(session) => {
                if !self.ingest.accept(session) {
                    self.queue_for_session(session, Outgoing::Close { session });
                }
            }
            Input::SessionFrame { session, payload } => self.on_session_frame(session, &payload),
            Input::SessionClosed(session) => self.ingest.disconnected(session),
            Input::SessionMalformed(session) => {
                self.ingest.frame_refused();
                self.ingest.disconnected(session);
            }
            Input::Keys(keys) => self.keys = keys,
        }
    }

    /// Time passed: heartbeats, elections, NAK retries.
    pub fn tick(&mut self) {
        let actions = self.node.tick(self.now_ms, &view!(self));
        self.execute(actions);
    }

    /// Ends the round's work: what machines submitted is proposed as one
    /// group commit, machines hear about the commit, and the commit hint is
    /// saved when due. After this, only [`sync`](Self::sync) and
    /// [`finish`](Self::finish).
    pub fn seal(&mut self) {
        if let Some((events, origins)) = self.ingest.take_proposal() {
            // Not the primary any more: the sessions were redirected when
            // the role changed, and machines resend to the new one.
            let entries = events.into_iter().map(Proposed::Event).collect();
            if let Ok(actions) = self.node.propose(entries) {
                self.proposal_origins = origins;
                self.execute(actions);
                self.proposal_origins.clear();
            }
        }
        self.announce_commit();
        self.save_commit_hint(false);
    }

    /// Machines hear of a new commit (once per round: under load it
    /// advances with every follower ack), and what waited for it goes.
    fn announce_commit(&mut self) {
        if let Some(commit_gseq) = self.commit_to_announce.take() {
            let actions = self.ingest.on_commit(commit_gseq, &view!(self));
            self.acknowledge(actions);
        }
        self.deliver_commands();
        self.answer_operators();
    }

    /// The datagrams of records this round produced so far, to send before
    /// its sync (a follower then stores them while this replica syncs), and
    /// the acknowledgements of what committed before it (a machine need not
    /// wait for a sync its events do not depend on). Whatever a shell does
    /// not take leaves with the rest at `finish`.
    /// They overtake datagrams sealed before them (a heartbeat of `tick`),
    /// which the receivers' replay window (`REPLAY_WINDOW_PACKETS`) takes
    /// out of order; one overtaken by more than that many is dropped as
    /// old, and heartbeats repeat.
    pub fn take_early(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.early)
    }

    /// An operator asks for `action`: it is planned against the projection
    /// and its records appended at once (proposed to the node like machine
    /// events, so they replicate, commit and are fenced alike). The answer
    /// comes as [`Outgoing::OperatorAnswer`] once they are committed, or as
    /// the refusal returned here.
    pub fn operator_request(
        &mut self,
        request: RequestId,
        operator: &str,
        action: &OperatorAction,
    ) -> Result<(), Refusal> {
        let not_primary = |node: &Node| Refusal::NotPrimary {
            leader: node.leader().filter(|&l| l != node.id()),
        };
        if !self.node.accepts_writes() {
            return Err(not_primary(&self.node));
        }
        if self.operators_waiting.len() >= OPERATOR_REQUESTS_WAITING_MAX {
            return Err(Refusal::Action(ActionError::Invalid(
                "too many operator requests are waiting for their commit; try again shortly".into(),
            )));
        }
        let records =
            crate::operators::plan(operator, action, self.wall_ms, self.ledger.projection())
                .map_err(Refusal::Action)?;
        assert!(!records.is_empty(), "a planned request records something");
        let entries = records.iter().cloned().map(Proposed::Operator).collect();
        let actions = self
            .node
            .propose(entries)
            .map_err(|NotPrimary::Follow(_)| not_primary(&self.node))?;
        self.proposing = Some(Proposing::default());
        self.execute(actions);
        let proposing = self.proposing.take().unwrap_or_default();
        if let Some(problem) = proposing.refused {
            return Err(Refusal::Action(ActionError::Invalid(problem)));
        }
        let last = proposing
            .gseqs
            .last()
            .copied()
            .filter(|_| proposing.gseqs.len() == records.len());
        let last_meta = last.and_then(|gseq| Some((gseq, view!(self).entry_meta(gseq)?.0)));
        let Some((last_gseq, last_hash)) = last_meta else {
            // The write failed (the node stepped down): nothing was recorded.
            let problem = self.counters.storage_error.clone();
            return Err(Refusal::Action(ActionError::Storage(
                problem.unwrap_or_else(|| "the write failed".into()),
            )));
        };
        let commands = self.commands_recorded(&records, &proposing.gseqs);
        tracing::info!(replica = %self.config.name, %operator, request, last_gseq, commands = commands.len(), "recorded an operator request; answering once it is committed");
        self.operators_waiting.push(Waiting {
            request,
            last_gseq,
            last_hash,
            commands,
            deadline_ms: self.now_ms + OPERATOR_COMMIT_TIMEOUT_MS,
        });
        Ok(())
    }

    /// The commands among a request's records (appended at `gseqs`), each
    /// queued for delivery at its commit.
    fn commands_recorded(
        &mut self,
        records: &[ledger::operator::OperatorRecord],
        gseqs: &[u64],
    ) -> Vec<(u64, MachineId, u64, bool)> {
        let mut commands = Vec::new();
        for (record, &gseq) in records.iter().zip(gseqs) {
            if let Recorded::CommandRequested {
                machine,
                command_id,
                action,
            } = &record.action
            {
                let command = RemoteCommand {
                    command_id: *command_id,
                    action: action.clone(),
                };
                self.commands_to_deliver
                    .insert(gseq, (machine.clone(), command));
                commands.push((gseq, machine.clone(), *command_id, false));
            }
        }
        commands
    }

    /// Sends every command the commit has passed to its machine's session,
    /// if it has one here (a machine without one gets it when its next
    /// session opens), and notes which went at once.
    fn deliver_commands(&mut self) {
        if !self.node.accepts_writes() {
            return;
        }
        let commit = self.node.commit_gseq();
        while let Some(entry) = self.commands_to_deliver.first_entry() {
            if *entry.key() > commit {
                break;
            }
            let (gseq, (machine, command)) = entry.remove_entry();
            let Some(frames) = self.ingest.remote(&machine, &command) else {
                continue;
            };
            self.ingest_actions(frames);
            for waiting in &mut self.operators_waiting {
                for delivered in waiting.commands.iter_mut().filter(|c| c.0 == gseq) {
                    delivered.3 = true;
                }
            }
        }
    }

    /// Answers every operator request whose entries are committed, or can
    /// no longer be (replaced after a failover), or whose time is up.
    fn answer_operators(&mut self) {
        if self.operators_waiting.is_empty() {
            return;
        }
        let commit = self.node.commit_gseq();
        let tip = self.ledger.store().head().gseq;
        let now_ms = self.now_ms;
        for waiting in std::mem::take(&mut self.operators_waiting) {
            let held = view!(self)
                .entry_meta(waiting.last_gseq)
                .map(|(hash, _)| hash);
            let answer = match held {
                Some(hash) if hash == waiting.last_hash && commit >= waiting.last_gseq => {
                    Ok(ActionReceipt {
                        gseq: waiting.last_gseq,
                        commands: waiting
                            .commands
                            .iter()
                            .map(|(_, machine, id, delivered)| (machine.clone(), *id, *delivered))
                            .collect(),
                    })
                }
                Some(hash) if hash != waiting.last_hash => Err(lost_in_failover()),
                None if tip < waiting.last_gseq => Err(lost_in_failover()),
                _ if now_ms >= waiting.deadline_ms => Err(ActionError::Storage(format!(
                    "it was not committed within {} s (are a majority of the replicas reachable?); it may still be recorded later: check the audit log before asking again",
                    OPERATOR_COMMIT_TIMEOUT_MS / 1_000
                ))),
                _ => {
                    self.operators_waiting.push(waiting);
                    continue;
                }
            };
            self.outbox.push(Some(Outgoing::OperatorAnswer {
                request: waiting.request,
                answer,
            }));
        }
    }

    /// The commands a newly elected primary must deliver at their commit:
    /// those of earlier primaries still above the commit (those below it
    /// go to each machine when its session opens).
    fn commands_awaiting_commit(&self) -> BTreeMap<u64, (MachineId, RemoteCommand)> {
        let commit = self.node.commit_gseq();
        let operators = &self.ledger.projection().operators;
        let mut awaiting = BTreeMap::new();
        for (machine, commands) in &operators.commands {
            for (&command_id, command) in commands {
                if command.outcome == CommandOutcome::Pending && command.gseq > commit {
                    let remote = RemoteCommand {
                        command_id,
                        action: command.action.clone(),
                    };
                    awaiting.insert(command.gseq, (machine.clone(), remote));
                }
            }
        }
        awaiting
    }

    /// Makes the round's writes durable (one fsync). A shell may instead
    /// sync on another thread and pass the result to `finish`.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.ledger.store_mut().sync_deferred()
    }

    /// Ends a round: after a successful sync, everything the round produced
    /// is released; after a failed one, nothing is, and the node learns
    /// that its writes may be lost.
    pub fn finish(&mut self, synced: Result<(), StoreError>) -> Vec<Outgoing> {
        self.acks_queued.clear();
        if let Err(error) = synced {
            self.wrote_this_round = false;
            self.counters.sync_failures += 1;
            self.storage_failed(
                "syncing the round's writes failed; nothing of the round is sent",
                &error,
            );
            let answers = self.take_after_failure();
            self.write_failed();
            // What the failure produced (a role change, redirects) waits
            // for the next round's sync.
            return answers;
        }
        if let Err(error) = self.keep_promises() {
            self.counters.sync_failures += 1;
            self.storage_failed(
                "the promise file could not be written; nothing of the round is sent",
                &error,
            );
            return self.take_after_failure();
        }
        if std::mem::take(&mut self.wrote_this_round)
            && self.counters.storage_error.take().is_some()
        {
            tracing::info!(replica = %self.config.name, "the log can be written again");
        }
        // What followers acknowledged before this sync may commit now, and
        // machines hear of it in this round.
        self.synced_gseq = self.ledger.store().head().gseq;
        let actions = self.node.on_synced(&view!(self));
        self.execute(actions);
        self.announce_commit();
        let mut outgoing = std::mem::take(&mut self.early);
        outgoing.extend(self.outbox.drain(..).flatten());
        self.outbox_sessions.clear();
        outgoing
    }

    /// Empties the outbox of a round whose writes may be lost, keeping only
    /// what rests on commits (entries durable on two replicas since earlier
    /// rounds): the answers to operators, each of which says so or that
    /// nothing is, so an operator is never left waiting on a disk that
    /// keeps failing; and the acknowledgements of commits a shell did not
    /// take before the sync. Records not taken wait for a retransmission.
    fn take_after_failure(&mut self) -> Vec<Outgoing> {
        let acknowledgements = self
            .early
            .drain(..)
            .filter(|outgoing| matches!(outgoing, Outgoing::Frame { .. }));
        let answers = self
            .outbox
            .drain(..)
            .flatten()
            .filter(|outgoing| matches!(outgoing, Outgoing::OperatorAnswer { .. }));
        let kept = acknowledgements.chain(answers).collect();
        self.outbox_sessions.clear();
        kept
    }

    /// Checkpoints the projection (at shutdown), durably at the next sync.
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        self.ledger.checkpoint()
    }

    /// Archives closed segments `0..segments` (`Ledger::archive`) after a
    /// checkpoint at the head, so a restart never reads the archive. Runs
    /// between rounds; `crate::archiving` decides what is safe.
    pub fn archive(
        &mut self,
        segments: u64,
        dir: &std::path::Path,
        key: &ledger::crypto::SecretKey,
    ) -> Result<ledger::store::ArchiveReport, StoreError> {
        self.ledger.checkpoint()?;
        let codec = ledger::store::archive::Codec::Zstd;
        self.ledger.archive(segments, dir, key, codec, &mut |_| {})
    }

    /// Records what this round promises — the durable tip of the log, the
    /// vote, the incarnation — in the promise file, before anything of the
    /// round leaves (only when it changed).
    fn keep_promises(&mut self) -> Result<(), StoreError> {
        let head = self.ledger.store().head();
        let vote = self.node.vote();
        let mut promise = Promise {
            incarnation: self.incarnation,
            tip_epoch: Some(head.epoch),
            ..Promise::new(head.gseq, head.hash, vote.epoch, vote.voted_for)
        };
        // While repairing, what was promised still stands: the log must
        // reach it again before the promise may move.
        if let (Some(_), Some(kept)) = (self.node.repairing_until(), self.promised) {
            promise.tip_gseq = kept.tip_gseq;
            promise.tip_hash = kept.tip_hash;
            promise.tip_epoch = kept.tip_epoch;
        }
        if self.promised.is_some_and(|p| p.same_as(&promise)) {
            return Ok(());
        }
        self.promises
            .save(&promise)
            .map_err(|e| StoreError::Io(e.to_string()))?;
        self.promised = Some(promise);
        Ok(())
    }

    /// A truncation drops entries this replica may have promised (they were
    /// not committed, or the node would not truncate them): the promise
    /// comes down first, durably, so a crash right after the truncation is
    /// not mistaken for damage at the next start.
    fn lower_promise_to(&mut self, gseq: u64) -> Result<(), StoreError> {
        let Some(promised) = self.promised else {
            return Ok(());
        };
        if promised.tip_gseq <= gseq || self.node.repairing_until().is_some() {
            return Ok(());
        }
        let (hash, epoch) = match gseq {
            0 => (ledger::store::record::GENESIS_HASH, 0),
            _ => self
                .ledger
                .store()
                .get(gseq)?
                .map(|entry| (entry.hash, entry.body.epoch))
                .ok_or_else(|| StoreError::Io(format!("entry {gseq} is missing")))?,
        };
        let lowered = Promise {
            tip_gseq: gseq,
            tip_hash: hash,
            tip_epoch: Some(epoch),
            ..promised
        };
        self.promises
            .save(&lowered)
            .map_err(|e| StoreError::Io(e.to_string()))?;
        self.promised = Some(lowered);
        Ok(())
    }

    /// Saves the commit hint now (at shutdown), durably at the next sync.
    pub fn save_commit_hint_now(&mut self) {
        self.save_commit_hint(true);
    }

    fn on_datagram(&mut self, bytes: &[u8]) {
        let datagram = match self.codec.decode(bytes) {
            Ok(datagram) => datagram,
            Err(error) => return self.count_rejected(&error),
        };
        if datagram.sender == self.config.node.id {
            // Our own broadcast, looped back.
            return;
        }
        if let Message::Heartbeat { tip_gseq, .. } = datagram.message {
            self.primary_tip = tip_gseq;
        }
        let actions = self.node.receive(self.now_ms, datagram, &view!(self));
        self.execute(actions);
    }

    /// Counts a dropped datagram. One that fails authentication is also
    /// warned about (rate-limited, with a count) and remembered for the
    /// status: without it a replica with the wrong cluster.key would drop
    /// everything its peers say and never tell anyone.
    fn count_rejected(&mut self, error: &WireError) {
        *self
            .counters
            .datagrams_rejected
            .entry(error.label())
            .or_insert(0) += 1;
        let WireError::Authentication { sender } = *error else {
            tracing::debug!(error = %error, "dropped a datagram");
            return;
        };
        self.counters.last_unauthenticated = Some((sender, self.now_ms));
        self.authentication_failures_unlogged += 1;
        let due = self
            .authentication_failure_logged_at_ms
            .is_none_or(|at| self.now_ms >= at + AUTHENTICATION_FAILURE_LOG_EVERY_MS);
        if due {
            tracing::warn!(
                replica = %self.config.name,
                sender,
                count = self.authentication_failures_unlogged,
                "datagrams from replica {sender} fail authentication: is this replica's cluster.key the cluster's?"
            );
            self.authentication_failure_logged_at_ms = Some(self.now_ms);
            self.authentication_failures_unlogged = 0;
        }
    }

    fn standing(&self) -> Standing {
        Standing {
            accepts_writes: self.node.accepts_writes(),
            epoch: self.node.epoch(),
            commit_gseq: self.node.commit_gseq(),
            primary_address: self
                .node
                .leader()
                .filter(|&leader| leader != self.config.node.id)
                .and_then(|leader| self.config.machine_addresses.get(&leader).cloned()),
            wall_ms: self.wall_ms,
        }
    }

    fn on_session_frame(&mut self, session: SessionId, payload: &[u8]) {
        let standing = self.standing();
        let nonce = self.nonces.random();
        let actions =
            self.ingest
                .on_frame(session, payload, nonce, &self.keys, &standing, &view!(self));
        self.ingest_actions(actions);
    }

    fn ingest_actions(&mut self, actions: Vec<IngestAction>) {
        for action in actions {
            match action {
                IngestAction::Send { session, payload } => {
                    self.queue_for_session(session, Outgoing::Frame { session, payload })
                }
                IngestAction::Close {
                    session,
                    reason,
                    handshake,
                } => {
                    if !handshake {
                        tracing::debug!(session, reason = %reason, "closing a machine session");
                    } else if let Some(count) = self.handshake_refusals.note(self.now_ms) {
                        tracing::warn!(
                            replica = %self.config.name,
                            count,
                            "refused a machine's handshake: {reason} (the machine retries with \
                             backoff; check its id, key and version)"
                        );
                    }
                    self.queue_for_session(session, Outgoing::Close { session });
                }
                IngestAction::UnknownMachine(machine) => self.request_keys(&machine),
                IngestAction::Authenticated { session } => {
                    self.queue_for_session(session, Outgoing::Authenticated { session })
                }
            }
        }
    }

    /// Queues what goes to a machine session for the end of the round.
    fn queue_for_session(&mut self, session: SessionId, outgoing: Outgoing) {
        self.outbox_sessions.insert(session);
        self.outbox.push(Some(outgoing));
    }

    /// Acknowledgements of a commit leave with the round's records, before
    /// its sync: the commit counts this replica only up to `synced_gseq`,
    /// made durable and promised (`keep_promises`) by an earlier round, so
    /// nothing they say rests on this round's writes. One for a session
    /// with a frame already in the outbox goes behind that frame instead.
    fn acknowledge(&mut self, actions: Vec<IngestAction>) {
        for action in actions {
            match action {
                IngestAction::Send { session, payload }
                    if !self.outbox_sessions.contains(&session) =>
                {
                    self.early.push(Outgoing::Frame { session, payload });
                }
                other => self.ingest_actions(vec![other]),
            }
        }
    }

    /// Asks the shell to reload the key directory, at most once per
    /// `KEY_RELOAD_INTERVAL_MS` (a machine provisioned after the replica
    /// started, or a stranger knocking).
    fn request_keys(&mut self, machine: &MachineId) {
        let due = self
            .keys_requested_at_ms
            .is_none_or(|at| self.now_ms >= at + KEY_RELOAD_INTERVAL_MS);
        if due {
            tracing::info!(replica = %self.config.name, %machine, "no key for a machine; reloading the key directory");
            self.keys_requested_at_ms = Some(self.now_ms);
            self.counters.key_reloads_requested += 1;
            self.outbox.push(Some(Outgoing::LoadKeys));
        }
    }

    /// Runs actions in order; an action's follow-ups run before the rest.
    /// A failed write drops what was still queued (it may depend on the
    /// write) and runs the node's reaction instead.
    fn execute(&mut self, actions: Vec<Action>) {
        let mut queue = VecDeque::from(actions);
        while let Some(action) = queue.pop_front() {
            let writes = action.writes();
            match self.execute_one(action) {
                Ok(follow_up) => {
                    self.wrote_this_round |= writes;
                    for action in follow_up.into_iter().rev() {
                        queue.push_front(action);
                    }
                }
                Err(not_done) => {
                    if let NotDone::Storage(error) = not_done {
                        self.counters.write_failures += 1;
                        self.storage_failed("a write to the log failed; it was not made", &error);
                    }
                    // What follows may depend on the write (an ack of what it
                    // stored): drop it, and let the node re-read its log.
                    queue.clear();
                    queue.extend(self.write_failed_actions());
                }
            }
        }
        self.node.assert_invariants(&view!(self));
    }

    /// Says that storage failed — the first time at once, then at most
    /// every `STORAGE_ERROR_LOG_EVERY_MS` with how many failures there were
    /// (a full disk fails every round until space is freed).
    fn storage_failed(&mut self, what: &str, error: &StoreError) {
        self.counters.storage_error = Some(error.to_string());
        self.storage_failures_unlogged += 1;
        let due = self
            .storage_failure_logged_at_ms
            .is_none_or(|at| self.now_ms >= at + STORAGE_ERROR_LOG_EVERY_MS);
        if due {
            tracing::error!(
                replica = %self.config.name,
                error = %error,
                failures = self.storage_failures_unlogged,
                "{what}; this replica refuses writes and does not vote or acknowledge until its log can be written again (status is still served)"
            );
            self.storage_failure_logged_at_ms = Some(self.now_ms);
            self.storage_failures_unlogged = 0;
        }
    }

    /// After a failed write, the appends still held in memory are written
    /// before any more are taken: a replica whose disk is full would
    /// otherwise keep appending in memory (up to `STAGED_RECORDS_MAX`)
    /// what it can neither store nor acknowledge.
    fn write_pending_after_failure(&mut self) -> Result<(), StoreError> {
        if self.counters.storage_error.is_none() {
            return Ok(());
        }
        self.ledger.store_mut().write_pending()
    }

    fn write_failed(&mut self) {
        let actions = self.write_failed_actions();
        self.execute(actions);
    }

    fn write_failed_actions(&mut self) -> Vec<Action> {
        // The log may hold less than the cache says: forget it.
        self.cache = MetaCache::default();
        self.node.on_write_failed(&view!(self))
    }

    /// Executes one action; returns the node's follow-up actions.
    fn execute_one(&mut self, action: Action) -> Result<Vec<Action>, NotDone> {
        match action {
            Action::Send {
                to,
                epoch,
                commit_gseq,
                message,
            } => self.send(to, epoch, commit_gseq, message),
            Action::Replicate {
                to,
                from_gseq,
                to_gseq,
                epoch,
                commit_gseq,
                catchup,
            } => self.replicate(to, from_gseq, to_gseq, epoch, commit_gseq, catchup)?,
            Action::PersistVote { epoch, voted_for } => self
                .ledger
                .store_mut()
                .put_app_meta(META_VOTE, &PersistedVote { epoch, voted_for })?,
            Action::Append { epoch, entries } => {
                self.write_pending_after_failure()?;
                return Ok(self.append(epoch, &entries)?);
            }
            Action::AppendMarker { epoch } => {
                self.write_pending_after_failure()?;
                return Ok(self.append_marker(epoch)?);
            }
            Action::AppendReplicated { records } => {
                self.write_pending_after_failure()?;
                self.append_replicated(&records)?;
            }
            Action::TruncateAfter { gseq } => {
                self.synced_gseq = self.synced_gseq.min(gseq);
                self.lower_promise_to(gseq)?;
                let removed = self.ledger.truncate_after(gseq)?;
                self.cache.truncate_after(gseq);
                tracing::warn!(replica = %self.config.name, to_gseq = gseq, removed, "truncated an uncommitted suffix");
            }
            Action::CommitAdvanced { commit_gseq } => {
                debug_assert!(commit_gseq <= self.ledger.store().head().gseq);
                // Machines hear about it once per round (`seal`): under
                // load the commit advances with every follower ack.
                self.commit_to_announce = Some(commit_gseq);
            }
            Action::RoleChanged {
                role,
                epoch,
                leader,
            } => self.role_changed(role, epoch, leader),
        }
        Ok(Vec::new())
    }

    fn replicate(
        &mut self,
        to: Target,
        from_gseq: u64,
        to_gseq: u64,
        epoch: u64,
        commit_gseq: u64,
        catchup: Option<crate::node::CatchupSource>,
    ) -> Result<(), StoreError> {
        let mut records = Vec::new();
        self.ledger
            .store()
            .for_each_record(from_gseq, to_gseq, |_, record| {
                records.push(record.to_vec());
                Ok(true)
            })?;
        let catchup = catchup.map(|c| (c.last_gseq, c.last_epoch));
        for message in
            replication_messages(from_gseq, records, self.config.payload_bytes_max, catchup)
        {
            let bytes = self.seal_datagram(to, epoch, commit_gseq, message);
            self.early.push(Outgoing::Datagram { to, bytes });
        }
        Ok(())
    }

    fn append(&mut self, epoch: u64, entries: &[Proposed]) -> Result<Vec<Action>, StoreError> {
        let outcome = self
            .ledger
            .append(epoch, self.wall_ms, entries, &self.keys)?;
        for (entry, _) in &outcome.new_entries {
            self.cache
                .push(entry.body.gseq, entry.hash, entry.body.epoch);
        }
        match self.proposing.as_mut() {
            // An operator request's records: note where each went.
            Some(proposing) => {
                for result in &outcome.results {
                    match result {
                        Appended::New { gseq } => proposing.gseqs.push(*gseq),
                        Appended::Duplicate { .. } => {
                            proposing
                                .refused
                                .get_or_insert_with(|| "recorded twice".into());
                        }
                        Appended::Rejected(why) => {
                            proposing.refused.get_or_insert_with(|| why.to_string());
                        }
                    }
                }
            }
            None => {
                let origins = std::mem::take(&mut self.proposal_origins);
                let frames = self.ingest.on_appended(&outcome.results, &origins);
                self.ingest_actions(frames);
            }
        }
        Ok(self.node.on_local_append(&view!(self)))
    }

    fn append_marker(&mut self, epoch: u64) -> Result<Vec<Action>, StoreError> {
        let entry = self
            .ledger
            .append_marker(epoch, self.wall_ms, &self.config.name)?;
        self.cache
            .push(entry.body.gseq, entry.hash, entry.body.epoch);
        tracing::info!(replica = %self.config.name, epoch, gseq = entry.body.gseq, "opened the epoch as primary");
        Ok(self.node.on_local_append(&view!(self)))
    }

    fn append_replicated(&mut self, records: &[ReplicatedRecord]) -> Result<(), NotDone> {
        let unknown = records.iter().find_map(|record| {
            record
                .entry()
                .body
                .machine_event()
                .map(|(machine, _, _)| machine)
                .filter(|machine| self.keys.chain_key(machine).is_none())
                .cloned()
        });
        if let Some(machine) = unknown {
            // Its key may have been provisioned since the keys were loaded;
            // the records come again after the reload (NAK).
            self.request_keys(&machine);
            return Err(NotDone::KeyMissing);
        }
        self.ledger.append_replicated(records, &self.keys)?;
        for record in records {
            let entry = record.entry();
            self.cache
                .push(entry.body.gseq, entry.hash, entry.body.epoch);
        }
        Ok(())
    }

    fn role_changed(&mut self, role: Role, epoch: u64, leader: Option<NodeId>) {
        tracing::info!(replica = %self.config.name, ?role, epoch, ?leader, "role changed");
        self.commands_to_deliver = if role == Role::Primary {
            self.commands_awaiting_commit()
        } else {
            BTreeMap::new()
        };
        if role != Role::Primary {
            // Every machine session is sent on to the primary, if known
            // (a replica that never led has none open: nothing to do).
            let primary = leader
                .filter(|&l| l != self.config.node.id)
                .and_then(|l| self.config.machine_addresses.get(&l).cloned());
            let frames = self.ingest.on_demoted(primary);
            self.ingest_actions(frames);
        }
    }

    fn send(&mut self, to: Target, epoch: u64, commit_gseq: u64, message: Message) {
        let is_ack = matches!(message, Message::Ack { .. });
        let is_nak = matches!(message, Message::Nak { .. });
        let bytes = self.seal_datagram(to, epoch, commit_gseq, message);
        if is_nak {
            // A NAK asks for records and promises nothing about this
            // replica's disk: it leaves before the sync, so a repair does
            // not wait for the fsync of the round that found the hole
            // (Aeron NAKs a unicast gap at once).
            self.early.push(Outgoing::Datagram { to, bytes });
            return;
        }
        if is_ack
            && let Target::Node(peer) = to
            && let Some(earlier) = self.acks_queued.insert(peer, self.outbox.len())
        {
            // Acks are cumulative: the newer one goes, last, in its place.
            self.outbox[earlier] = None;
        }
        self.outbox.push(Some(Outgoing::Datagram { to, bytes }));
    }

    fn seal_datagram(
        &mut self,
        to: Target,
        epoch: u64,
        commit_gseq: u64,
        message: Message,
    ) -> Vec<u8> {
        self.packet_seq += 1;
        let receiver = match to {
            Target::All => crate::wire::RECEIVER_ALL,
            Target::Node(id) => id,
        };
        let datagram = Datagram {
            cluster_id: self.config.cluster_id,
            sender: self.config.node.id,
            receiver,
            epoch,
            incarnation: self.incarnation,
            packet_seq: self.packet_seq,
            commit_gseq,
            message,
        };
        self.codec.encode(&datagram)
    }

    fn save_commit_hint(&mut self, force: bool) {
        let commit = self.node.commit_gseq();
        let due = force || self.now_ms >= self.commit_saved_at_ms + COMMIT_HINT_EVERY_MS;
        if commit > self.commit_saved && due {
            // Tried again after the same period when it fails: a full disk
            // would otherwise log this every round.
            self.commit_saved_at_ms = self.now_ms;
            match self.ledger.store_mut().put_app_meta(META_COMMIT, &commit) {
                Ok(()) => self.commit_saved = commit,
                Err(e) => tracing::warn!(error = %e, "could not save the commit hint"),
            }
        }
    }
}

/// The answer to a request whose entries a failover replaced.
fn lost_in_failover() -> ActionError {
    ActionError::Storage(
        "the primary changed before it was committed, and the new primary does not have it: nothing was recorded; ask the primary again".into(),
    )
}

/// The promise, or `None` for a replica that never promised anything. A
/// promise file that cannot be read means nobody knows what was promised:
/// the replica then repairs as if it had promised everything its primary
/// holds.
fn load_promise(name: &str, promises: &mut dyn PromiseStore) -> Option<Promise> {
    match promises.load() {
        Ok(promise) => promise,
        Err(error) => {
            tracing::error!(replica = %name, error = %error, "the promise file is unreadable; this replica repairs its log from the primary before it votes, stands or acknowledges");
            Some(Promise::new(u64::MAX, [0; 32], 0, None))
        }
    }
}

/// How the node restarts, and the incarnation last used: the newest vote of
/// the log's metadata and the promise, the commit hint, and whether the log
/// must be repaired because it ends before what was promised.
fn restart_state<B: Backend>(
    name: &str,
    store: &LogStore<B>,
    promise: Option<&Promise>,
) -> Result<(Restart, u64), StoreError> {
    let logged: PersistedVote = store.app_meta(META_VOTE)?.unwrap_or_default();
    let promised = promise.map_or_else(PersistedVote::default, |p| PersistedVote {
        epoch: p.vote_epoch,
        voted_for: p.voted_for,
    });
    // At the same epoch, a vote cast beats none (the log may have lost
    // the write that recorded it).
    let vote = if (promised.epoch, promised.voted_for.is_some())
        > (logged.epoch, logged.voted_for.is_some())
    {
        promised
    } else {
        logged
    };
    let commit_hint = store
        .app_meta::<u64>(META_COMMIT)?
        .unwrap_or(0)
        .min(store.head().gseq);
    let logged_incarnation: u64 = store.app_meta(META_INCARNATION)?.unwrap_or(0);
    let incarnation = logged_incarnation.max(promise.map_or(0, |p| p.incarnation));
    let repair_until = promise.and_then(|p| short_of_promise(name, store, p));
    let restart = Restart {
        vote,
        commit_hint,
        repair_until,
        repair_epoch: promise.and_then(|p| p.tip_epoch),
    };
    Ok((restart, incarnation))
}

/// The promised gseq when the log does not hold what was promised.
fn short_of_promise<B: Backend>(name: &str, store: &LogStore<B>, promise: &Promise) -> Option<u64> {
    let tip = store.head().gseq;
    if promise.tip_gseq == 0 {
        return None;
    }
    let holds = tip >= promise.tip_gseq
        && store
            .get(promise.tip_gseq)
            .ok()
            .flatten()
            .is_some_and(|entry| entry.hash == promise.tip_hash);
    if holds {
        return None;
    }
    tracing::error!(
        replica = %name,
        log_tip = tip,
        promised = promise.tip_gseq,
        "this replica's log ends at gseq {tip} (or differs there) but it had promised up to gseq {}: its log was damaged or cut short; it repairs from its peers as a learner and does not stand or acknowledge until then (it votes only for a candidate holding all it promised)",
        promise.tip_gseq
    );
    Some(promise.tip_gseq)
}

#[cfg(test)]
mod throttle_tests {
    use super::Throttle;

    #[test]
    fn a_throttle_speaks_once_per_interval_with_the_count() {
        let mut throttle = Throttle::new(60_000);
        assert_eq!(throttle.note(1_000), Some(1), "the first one is said");
        for second in 2..60 {
            assert_eq!(throttle.note(second * 1_000), None);
        }
        assert_eq!(
            throttle.note(61_000),
            Some(59),
            "then once a minute, counted"
        );
        assert_eq!(throttle.note(61_500), None);
    }
}

#[cfg(test)]
mod meta_cache_tests {
    use super::{META_CACHE_ENTRIES, MetaCache};

    #[test]
    fn the_cache_keeps_the_newest_window_and_never_outgrows_it() {
        let mut cache = MetaCache::default();
        let total = META_CACHE_ENTRIES as u64 + 1_000;
        for gseq in 1..=total {
            cache.push(gseq, [gseq as u8; 32], 1);
        }
        assert_eq!(cache.metas.len(), META_CACHE_ENTRIES);
        assert!(
            cache.metas.capacity() < 2 * META_CACHE_ENTRIES,
            "not doubled past it"
        );
        assert_eq!(cache.get(1_000), None, "the oldest fell out");
        assert_eq!(cache.get(1_001), Some(([1_001u64 as u8; 32], 1)));
        assert_eq!(cache.get(total), Some(([total as u8; 32], 1)));
        assert_eq!(cache.get(total + 1), None);
        // A gseq that does not continue the window starts a new one.
        cache.push(total + 5, [9; 32], 2);
        assert_eq!(cache.get(total), None);
        assert_eq!(cache.get(total + 5), Some(([9; 32], 2)));
    }
}

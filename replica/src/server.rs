//! The I/O shell of a replica: a core thread that owns the node, the
//! ledger and the machine sessions' protocol state, fed by a UDP receiver
//! thread and a tokio runtime (machine connections, the status API,
//! signals). The core executes the node's actions in order — writes are
//! synchronous RocksDB group commits, so "durable before the next action"
//! holds by construction — and everything that arrives while a write is in
//! progress is batched into the next one.

use crate::config::ReplicaConfig;
use crate::ingest::{Ingest, IngestAction, MachineIndex, SessionId, Standing};
use crate::node::{Action, LogView, Node, PersistedVote, Restart, Role, Target, Tip};
use crate::transport::{DatagramSender, UdpSender, sender};
use crate::wire::{Datagram, DatagramCodec, Message, NodeId, WireError, replication_messages};
use bytes::Bytes;
use dashboard::{FollowerStatus, ReplicaStatus, StatusSource};
use futures_util::{SinkExt, StreamExt};
use ledger::crypto::Hash32;
use ledger::keys::Keyring;
use ledger::store::record::LogEntry;
use ledger::store::{OpenOptions, StoreError};
use ledger::{Ledger, MachineId};
use link::channel::{Hello, decode_plain, fresh_nonce};
use link::codec::{frame_codec, is_oversized_frame};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::codec::{FramedRead, FramedWrite};

/// Inputs waiting for the core, at most; beyond it datagrams are dropped
/// (and repaired by NAKs) and new connections refused.
pub const INPUT_QUEUE_MAX: usize = 16_384;
/// Frames queued for one machine connection; a slower machine is cut off.
pub const SESSION_WRITE_QUEUE_FRAMES: usize = 1_024;
/// Inputs handled per core iteration before time is checked again.
const INPUTS_PER_ROUND_MAX: usize = 4_096;
/// Requested size of the replication socket's receive buffer.
const RECEIVE_BUFFER_BYTES: usize = 4 << 20;
/// The core's clock resolution.
const TICK_MS: u64 = 5;
/// The commit hint is saved at most this often.
const COMMIT_HINT_EVERY_MS: u64 = 250;
/// A machine connection that completes no frame for this long is closed
/// (machines ping every second; a trickle of bytes does not count).
const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Recent entries whose hash and epoch are kept in memory.
const META_CACHE_ENTRIES: usize = 65_536;

const META_VOTE: &str = "vote";
const META_COMMIT: &str = "commit_hint";
const META_INCARNATION: &str = "incarnation";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("keys: {0}")]
    Keys(#[from] ledger::keys::KeyringError),
    #[error("log: {0}")]
    Store(#[from] StoreError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("transport: {0}")]
    Transport(#[from] crate::transport::TransportError),
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let context = context.into();
    move |source| ServerError::Io { context, source }
}

enum Input {
    Datagram(Vec<u8>),
    SessionOpened {
        session: SessionId,
        writer: tokio::sync::mpsc::Sender<Vec<u8>>,
    },
    SessionFrame {
        session: SessionId,
        payload: Vec<u8>,
    },
    SessionClosed {
        session: SessionId,
    },
    /// The stream carried something that is not a frame (the connection is
    /// being closed).
    SessionMalformed,
    Status(std::sync::mpsc::Sender<ReplicaStatus>),
    Shutdown,
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Hash and epoch of the most recent entries, so acknowledgements and
/// conflict checks do not decrypt chunks.
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
        self.metas.push_back((hash, epoch));
        if self.metas.len() > META_CACHE_ENTRIES {
            self.metas.pop_front();
            self.first_gseq += 1;
        }
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

struct View<'a> {
    ledger: &'a Ledger,
    cache: &'a MetaCache,
}

impl LogView for View<'_> {
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
}

impl MachineIndex for View<'_> {
    fn machine_head(&self, machine: &MachineId) -> (u64, u64) {
        let head = self.ledger.store().machine_head(machine);
        (head.seq, head.gseq)
    }

    fn gseq_of(&self, machine: &MachineId, seq: u64) -> Option<u64> {
        self.ledger.store().gseq_of(machine, seq).ok().flatten()
    }
}

/// The core: everything the replica decides, on one thread.
struct Core {
    config: ReplicaConfig,
    node: Node,
    ledger: Ledger,
    cache: MetaCache,
    keyring: Keyring,
    ingest: Ingest,
    codec: DatagramCodec,
    sender: Box<dyn DatagramSender>,
    incarnation: u64,
    packet_seq: u64,
    sessions: HashMap<SessionId, tokio::sync::mpsc::Sender<Vec<u8>>>,
    started: Instant,
    commit_saved: u64,
    commit_saved_at_ms: u64,
    rejected: BTreeMap<&'static str, u64>,
    receive_drops: Arc<ReceiveDrops>,
    /// Everything to send this round, held until the round's writes are
    /// synced (`flush_round`).
    outbox: Vec<Outgoing>,
    /// Where this round's last acknowledgement to each peer sits in the
    /// outbox: acks are cumulative, so a newer one replaces it.
    acks_queued: HashMap<SocketAddrV4, usize>,
    /// A commit advance not yet announced to the machines.
    commit_to_announce: Option<u64>,
    /// The primary's tip as last heard (for the follower's lag).
    primary_tip: u64,
    shutdown: bool,
}

impl Core {
    fn open(config: ReplicaConfig) -> Result<Core, ServerError> {
        let keyring = Keyring::open(&config.keys_dir, true)?;
        let cluster_key = keyring.cluster_key(true)?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(io_error(format!("creating {}", config.data_dir.display())))?;
        // One fsync per round of inputs, not per write: see `flush_round`.
        let options = OpenOptions {
            create: true,
            deferred_sync: true,
            ..OpenOptions::default()
        };
        let ledger = Ledger::open(&config.log_dir(), keyring.store_key(), options)?;
        let store = ledger.store();
        let vote: PersistedVote = store.app_meta(META_VOTE)?.unwrap_or_default();
        let commit_hint: u64 = store
            .app_meta::<u64>(META_COMMIT)?
            .unwrap_or(0)
            .min(store.head().gseq);
        let previous: u64 = store.app_meta(META_INCARNATION)?.unwrap_or(0);
        let incarnation = (previous + 1).max(u64::try_from(wall_ms()).unwrap_or(0));
        store.put_app_meta(META_INCARNATION, &incarnation)?;
        let sender: Box<dyn DatagramSender> = match config.transport {
            crate::transport::TransportKind::Udp => {
                let local = SocketAddrV4::new(*config.replication_listen.ip(), 0);
                Box::new(UdpSender::bind(local)?)
            }
            kind => sender(kind, config.raw_source())?,
        };
        let seed = incarnation ^ u64::from(config.id);
        let node = Node::new(config.node_config(), Restart { vote, commit_hint }, seed, 0);
        tracing::info!(
            replica = %config.name,
            epoch = vote.epoch,
            tip = store.head().gseq,
            commit_hint,
            incarnation,
            transport = %config.transport,
            "replica opened its log"
        );
        Ok(Core {
            codec: DatagramCodec::new(config.cluster_id, &cluster_key),
            node,
            ledger,
            cache: MetaCache::default(),
            keyring,
            ingest: Ingest::new(),
            sender,
            incarnation,
            packet_seq: 0,
            sessions: HashMap::new(),
            started: Instant::now(),
            commit_saved: commit_hint,
            commit_saved_at_ms: 0,
            rejected: BTreeMap::new(),
            receive_drops: Arc::default(),
            outbox: Vec::new(),
            acks_queued: HashMap::new(),
            commit_to_announce: None,
            primary_tip: 0,
            shutdown: false,
            config,
        })
    }

    /// Datagrams dropped before the protocol saw them, by reason.
    fn datagrams_rejected(&self) -> Vec<(String, u64)> {
        let mut rejected: Vec<(String, u64)> = self
            .rejected
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect();
        for (reason, counter) in [
            ("injected_loss", &self.receive_drops.injected),
            ("queue_full", &self.receive_drops.queue_full),
        ] {
            let count = counter.load(Ordering::Relaxed);
            if count > 0 {
                rejected.push((reason.to_owned(), count));
            }
        }
        rejected
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn run(&mut self, inputs: &Receiver<Input>) {
        let mut next_tick = self.now_ms();
        while !self.shutdown {
            let wait = next_tick.saturating_sub(self.now_ms());
            match inputs.recv_timeout(Duration::from_millis(wait)) {
                Ok(input) => {
                    self.handle(input);
                    for input in inputs.try_iter().take(INPUTS_PER_ROUND_MAX) {
                        self.handle(input);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.propose_pending();
            let now = self.now_ms();
            if now >= next_tick {
                let actions = self.node.tick(
                    now,
                    &View {
                        ledger: &self.ledger,
                        cache: &self.cache,
                    },
                );
                self.execute(actions, &[]);
                self.save_commit_hint(false);
                next_tick = now + TICK_MS;
            }
            self.flush_round();
        }
        self.save_commit_hint(true);
        self.flush_round();
        if let Err(e) = self.ledger.checkpoint() {
            tracing::warn!(error = %e, "could not checkpoint the projection at shutdown");
        }
        tracing::info!(replica = %self.config.name, "replica stopped");
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Datagram(bytes) => self.on_datagram(&bytes),
            Input::SessionOpened { session, writer } => {
                if self.ingest.accept(session) {
                    self.sessions.insert(session, writer);
                }
            }
            Input::SessionFrame { session, payload } => self.on_session_frame(session, &payload),
            Input::SessionClosed { session } => {
                self.sessions.remove(&session);
                self.ingest.disconnected(session);
            }
            Input::SessionMalformed => self.ingest.frame_refused(),
            Input::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Input::Shutdown => self.shutdown = true,
        }
    }

    fn on_datagram(&mut self, bytes: &[u8]) {
        let datagram = match self.codec.decode(bytes) {
            Ok(datagram) => datagram,
            Err(error) => {
                self.count_rejected(&error);
                return;
            }
        };
        if datagram.sender == self.config.id {
            // Our own broadcast, looped back.
            return;
        }
        if let Message::Heartbeat { tip_gseq, .. } = datagram.message {
            self.primary_tip = tip_gseq;
        }
        let now = self.now_ms();
        let actions = self.node.receive(
            now,
            datagram,
            &View {
                ledger: &self.ledger,
                cache: &self.cache,
            },
        );
        self.execute(actions, &[]);
    }

    fn count_rejected(&mut self, error: &WireError) {
        *self.rejected.entry(error.label()).or_insert(0) += 1;
        tracing::debug!(error = %error, "dropped a datagram");
    }

    fn standing(&self) -> Standing {
        Standing {
            accepts_writes: self.node.accepts_writes(),
            epoch: self.node.epoch(),
            commit_gseq: self.node.commit_gseq(),
            primary_address: self
                .node
                .leader()
                .and_then(|leader| self.config.peer(leader))
                .map(|peer| peer.machine_addr.to_string()),
        }
    }

    fn on_session_frame(&mut self, session: SessionId, payload: &[u8]) {
        // A machine provisioned after this replica started: load its key.
        if let Ok(hello) = decode_plain::<Hello>(payload)
            && self.keyring.machine_key(&hello.machine_id).is_none()
        {
            self.reload_keys();
        }
        let standing = self.standing();
        let nonce = fresh_nonce();
        let actions = self.ingest.on_frame(
            session,
            payload,
            nonce,
            &self.keyring,
            &standing,
            &View {
                ledger: &self.ledger,
                cache: &self.cache,
            },
        );
        self.ingest_actions(actions);
    }

    fn reload_keys(&mut self) {
        match Keyring::open(&self.config.keys_dir, false) {
            Ok(keyring) => self.keyring = keyring,
            Err(e) => tracing::warn!(error = %e, "could not reload the key directory"),
        }
    }

    fn ingest_actions(&mut self, actions: Vec<IngestAction>) {
        for action in actions {
            match action {
                IngestAction::Send { session, payload } => {
                    self.outbox.push(Outgoing::Frame { session, payload });
                }
                IngestAction::Close { session, reason } => {
                    tracing::debug!(session, reason = %reason, "closing a machine session");
                    self.outbox.push(Outgoing::Close { session });
                }
            }
        }
    }

    fn propose_pending(&mut self) {
        let Some((events, origins)) = self.ingest.take_proposal() else {
            return;
        };
        match self.node.propose(events) {
            Ok(actions) => self.execute(actions, &origins),
            Err(_) => {
                // No longer the primary; sessions were redirected when the
                // role changed and machines will resend to the new one.
            }
        }
    }

    fn execute(&mut self, actions: Vec<Action>, origins: &[SessionId]) {
        for action in actions {
            if let Err(error) = self.execute_one(action, origins) {
                tracing::error!(replica = %self.config.name, error = %error, "a write failed");
                let follow_up = self.node.on_write_failed();
                self.cache = MetaCache::default();
                self.execute(follow_up, &[]);
                return;
            }
        }
    }

    fn execute_one(&mut self, action: Action, origins: &[SessionId]) -> Result<(), StoreError> {
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
            } => {
                let count = usize::try_from(to_gseq + 1 - from_gseq).unwrap_or(usize::MAX);
                let records: Vec<Vec<u8>> = self
                    .ledger
                    .store()
                    .records_from(from_gseq)
                    .take(count)
                    .map(|item| item.map(|(_, record)| record))
                    .collect::<Result<_, _>>()?;
                let catchup = catchup.map(|c| (c.last_gseq, c.last_epoch));
                for message in
                    replication_messages(from_gseq, records, self.config.payload_bytes_max, catchup)
                {
                    self.send(to, epoch, commit_gseq, message);
                }
            }
            Action::PersistVote { epoch, voted_for } => {
                self.ledger
                    .store()
                    .put_app_meta(META_VOTE, &PersistedVote { epoch, voted_for })?;
            }
            Action::AppendEvents { epoch, events } => {
                let outcome =
                    self.ledger
                        .append_events(epoch, wall_ms(), &events, &self.keyring)?;
                for (entry, _) in &outcome.new_entries {
                    self.cache
                        .push(entry.body.gseq, entry.hash, entry.body.epoch);
                }
                let frames = self.ingest.on_appended(&outcome.results, origins);
                self.ingest_actions(frames);
                let follow_up = self.node.on_local_append(&View {
                    ledger: &self.ledger,
                    cache: &self.cache,
                });
                self.execute(follow_up, &[]);
            }
            Action::AppendMarker { epoch } => {
                let entry = self
                    .ledger
                    .append_marker(epoch, wall_ms(), &self.config.name)?;
                self.cache
                    .push(entry.body.gseq, entry.hash, entry.body.epoch);
                tracing::info!(replica = %self.config.name, epoch, gseq = entry.body.gseq, "opened the epoch as primary");
                let follow_up = self.node.on_local_append(&View {
                    ledger: &self.ledger,
                    cache: &self.cache,
                });
                self.execute(follow_up, &[]);
            }
            Action::AppendReplicated { records } => self.append_replicated(&records)?,
            Action::TruncateAfter { gseq } => {
                let removed = self.ledger.truncate_after(gseq)?;
                self.cache.truncate_after(gseq);
                tracing::warn!(replica = %self.config.name, to_gseq = gseq, removed, "truncated an uncommitted suffix");
            }
            Action::CommitAdvanced { commit_gseq } => {
                // Machines hear about it once per round (`flush_round`):
                // under load the commit advances with every follower ack.
                self.commit_to_announce = Some(commit_gseq);
            }
            Action::RoleChanged {
                role,
                epoch,
                leader,
            } => {
                let leader_name = leader.map(|l| self.member_name(l));
                tracing::info!(replica = %self.config.name, ?role, epoch, leader = ?leader_name, "role changed");
                if role != Role::Primary {
                    let primary = leader
                        .and_then(|l| self.config.peer(l))
                        .map(|p| p.machine_addr.to_string());
                    let frames = self.ingest.on_demoted(primary);
                    self.ingest_actions(frames);
                }
            }
        }
        Ok(())
    }

    fn append_replicated(&mut self, records: &[Vec<u8>]) -> Result<(), StoreError> {
        let entries: Vec<LogEntry> = records
            .iter()
            .map(|record| LogEntry::decode(record))
            .collect::<Result<_, _>>()
            .map_err(|e| StoreError::NotContiguous {
                gseq: 0,
                problem: e.to_string(),
            })?;
        let unknown_machine = entries.iter().any(|entry| {
            entry
                .body
                .machine_event()
                .is_some_and(|(machine, _, _)| self.keyring.machine_key(machine).is_none())
        });
        if unknown_machine {
            self.reload_keys();
        }
        self.ledger.append_replicated(&entries, &self.keyring)?;
        for entry in &entries {
            self.cache
                .push(entry.body.gseq, entry.hash, entry.body.epoch);
        }
        Ok(())
    }

    fn member_name(&self, id: NodeId) -> String {
        if id == self.config.id {
            return self.config.name.clone();
        }
        self.config
            .peer(id)
            .map_or_else(|| format!("replica-{id}"), |p| p.name.clone())
    }

    fn send(&mut self, to: Target, epoch: u64, commit_gseq: u64, message: Message) {
        let destinations: Vec<SocketAddrV4> = match (to, self.config.broadcast) {
            (Target::All, Some(broadcast)) => vec![broadcast],
            (Target::All, None) => self
                .config
                .peers
                .iter()
                .map(|p| p.replication_addr)
                .collect(),
            (Target::Node(id), _) => self
                .config
                .peer(id)
                .map(|p| p.replication_addr)
                .into_iter()
                .collect(),
        };
        for destination in destinations {
            self.packet_seq += 1;
            let datagram = Datagram {
                cluster_id: self.config.cluster_id,
                sender: self.config.id,
                epoch,
                incarnation: self.incarnation,
                packet_seq: self.packet_seq,
                commit_gseq,
                message: message.clone(),
            };
            let bytes = self.codec.encode(&datagram);
            if matches!(datagram.message, Message::Ack { .. })
                && let Some(earlier) = self.acks_queued.insert(destination, self.outbox.len())
            {
                // Kept in packet order: the newer ack goes last.
                self.outbox[earlier] = Outgoing::Superseded;
            }
            self.outbox.push(Outgoing::Datagram { destination, bytes });
        }
    }

    /// Ends a round: one fsync makes every write of the round durable, and
    /// only then does anything leave — acknowledgements, votes, records,
    /// machine frames — so nothing outside ever depends on a write that a
    /// crash could take back. If the sync fails nothing is sent.
    fn flush_round(&mut self) {
        if let Some(commit_gseq) = self.commit_to_announce.take() {
            let frames = self.ingest.on_commit(
                commit_gseq,
                &View {
                    ledger: &self.ledger,
                    cache: &self.cache,
                },
            );
            self.ingest_actions(frames);
        }
        if let Err(error) = self.ledger.store().sync_deferred() {
            tracing::error!(replica = %self.config.name, error = %error, "syncing the round's writes failed; sending nothing");
            self.outbox.clear();
            self.acks_queued.clear();
            let follow_up = self.node.on_write_failed();
            self.cache = MetaCache::default();
            self.execute(follow_up, &[]);
            return;
        }
        self.acks_queued.clear();
        for outgoing in std::mem::take(&mut self.outbox) {
            match outgoing {
                Outgoing::Datagram { destination, bytes } => {
                    if let Err(error) = self.sender.send(destination, &bytes) {
                        // A lost datagram is repaired by the protocol (NAKs,
                        // heartbeats); log and go on.
                        tracing::debug!(%destination, error = %error, "datagram not sent");
                    }
                }
                Outgoing::Frame { session, payload } => {
                    let delivered = self
                        .sessions
                        .get(&session)
                        .is_some_and(|writer| writer.try_send(payload).is_ok());
                    if !delivered {
                        // Gone or too slow: drop it; the machine reconnects.
                        self.sessions.remove(&session);
                        self.ingest.disconnected(session);
                    }
                }
                Outgoing::Close { session } => {
                    // Dropping the writer lets it flush what is queued, then close.
                    self.sessions.remove(&session);
                }
                Outgoing::Superseded => {}
            }
        }
    }

    fn save_commit_hint(&mut self, force: bool) {
        let commit = self.node.commit_gseq();
        let now = self.now_ms();
        let due = force || now >= self.commit_saved_at_ms + COMMIT_HINT_EVERY_MS;
        if commit > self.commit_saved && due {
            match self.ledger.store().put_app_meta(META_COMMIT, &commit) {
                Ok(()) => {
                    self.commit_saved = commit;
                    self.commit_saved_at_ms = now;
                }
                Err(e) => tracing::warn!(error = %e, "could not save the commit hint"),
            }
        }
    }

    fn status(&self) -> ReplicaStatus {
        let counters = self.node.counters();
        let ingest = self.ingest.counters();
        let tip = self.ledger.store().head().gseq;
        let role = match self.node.role() {
            Role::Primary => "primary".to_owned(),
            Role::Candidate => "candidate".to_owned(),
            Role::Follower => self.config.follower_role_name().to_owned(),
        };
        let followers = if self.node.role() == Role::Primary {
            self.node
                .follower_matches()
                .into_iter()
                .map(|(id, matched)| FollowerStatus {
                    id: self.member_name(id),
                    matched,
                    lag: tip.saturating_sub(matched),
                })
                .collect()
        } else {
            Vec::new()
        };
        let projection = self.ledger.projection();
        ReplicaStatus {
            id: self.config.name.clone(),
            node_id: self.config.id,
            role,
            epoch: self.node.epoch(),
            leader: self.node.leader().map(|l| self.member_name(l)),
            tip,
            commit: self.node.commit_gseq(),
            lag: if self.node.role() == Role::Primary {
                0
            } else {
                self.primary_tip.saturating_sub(tip)
            },
            followers,
            naks_sent: counters.naks_sent,
            naks_received: counters.naks_received,
            records_retransmitted: counters.records_retransmitted,
            datagrams_received: counters.datagrams_received,
            datagrams_rejected: self.datagrams_rejected(),
            datagrams_replayed: counters.replayed_dropped,
            datagrams_stale_epoch: counters.stale_epoch_dropped,
            elections_started: counters.elections_started,
            truncated_records: counters.records_truncated,
            machines_connected: self.ingest.connected_machines().len(),
            events_submitted: ingest.events_submitted,
            events_duplicate: ingest.events_duplicate,
            events_rejected: ingest.events_rejected,
            frames_rejected: ingest.frames_rejected,
            projection_entries: projection.entries_applied,
            projection_issues: projection.issue_count,
            transport: self.config.transport.to_string(),
            pid: std::process::id(),
            uptime_ms: self.now_ms(),
        }
    }
}

/// Asks the core for its status from the HTTP side.
struct StatusBridge {
    inputs: Mutex<SyncSender<Input>>,
}

impl StatusSource for StatusBridge {
    fn status(&self) -> Result<ReplicaStatus, String> {
        let (reply, answer) = std::sync::mpsc::channel();
        let inputs = self
            .inputs
            .lock()
            .map_err(|_| "status bridge poisoned".to_owned())?;
        inputs
            .try_send(Input::Status(reply))
            .map_err(|_| "the replica core is busy".to_owned())?;
        drop(inputs);
        answer
            .recv_timeout(Duration::from_secs(2))
            .map_err(|_| "the replica core did not answer".to_owned())
    }
}

/// A running replica.
pub struct ReplicaHandle {
    inputs: SyncSender<Input>,
    stopping: Arc<AtomicBool>,
    core: Option<std::thread::JoinHandle<()>>,
    receiver: Option<std::thread::JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
    stop_network: Option<tokio::sync::watch::Sender<bool>>,
}

impl ReplicaHandle {
    /// Stops the replica and waits for it.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.inputs.send(Input::Shutdown);
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(stop) = self.stop_network.take() {
            let _ = stop.send(true);
        }
        if let Some(core) = self.core.take() {
            let _ = core.join();
        }
        if let Some(receiver) = self.receiver.take() {
            let _ = receiver.join();
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }

    /// Waits until the core stops (after [`request_stop`](Self::request_stop)
    /// or a signal).
    pub fn wait(mut self) {
        if let Some(core) = self.core.take() {
            let _ = core.join();
        }
        self.stop();
    }

    pub fn request_stop(&self) {
        let _ = self.inputs.send(Input::Shutdown);
    }
}

impl Drop for ReplicaHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Opens the log and starts every part of the replica.
pub fn start(config: ReplicaConfig) -> Result<ReplicaHandle, ServerError> {
    config.validate()?;
    let mut core = Core::open(config.clone())?;
    let (inputs, receiver) = std::sync::mpsc::sync_channel::<Input>(INPUT_QUEUE_MAX);
    let stopping = Arc::new(AtomicBool::new(false));

    let udp = UdpSocket::bind(config.replication_listen).map_err(io_error(format!(
        "binding the replication port {}",
        config.replication_listen
    )))?;
    udp.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(io_error("setting the UDP read timeout"))?;
    // Room for a full flow-control window of datagrams and then some; the
    // kernel caps it at net.core.rmem_max.
    let socket = socket2::SockRef::from(&udp);
    match socket
        .set_recv_buffer_size(RECEIVE_BUFFER_BYTES)
        .and_then(|()| socket.recv_buffer_size())
    {
        // Linux reports twice what it grants (bookkeeping included).
        Ok(granted) if granted < RECEIVE_BUFFER_BYTES => tracing::warn!(
            granted,
            wanted = RECEIVE_BUFFER_BYTES,
            "the UDP receive buffer is smaller than wanted (raise net.core.rmem_max);              bursts will be repaired by NAKs"
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(error = %error, "could not enlarge the UDP receive buffer"),
    }
    let drops = core.receive_drops.clone();
    let drop_percent = config.drop_received_percent;
    let udp_thread = {
        let inputs = inputs.clone();
        let stopping = stopping.clone();
        std::thread::Builder::new()
            .name("udp-receive".into())
            .spawn(move || receive_datagrams(&udp, &inputs, &stopping, drop_percent, &drops))
            .map_err(io_error("starting the UDP thread"))?
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("replica-io")
        .build()
        .map_err(io_error("starting the async runtime"))?;
    let (stop_network, network_stopped) = tokio::sync::watch::channel(false);
    let machine_listener = runtime
        .block_on(tokio::net::TcpListener::bind(config.machine_listen))
        .map_err(io_error(format!(
            "binding the machine port {}",
            config.machine_listen
        )))?;
    let status_listener = runtime
        .block_on(tokio::net::TcpListener::bind(config.status_listen))
        .map_err(io_error(format!(
            "binding the status port {}",
            config.status_listen
        )))?;
    runtime.spawn(accept_machines(
        machine_listener,
        inputs.clone(),
        network_stopped.clone(),
    ));
    let bridge: Arc<dyn StatusSource> = Arc::new(StatusBridge {
        inputs: Mutex::new(inputs.clone()),
    });
    let mut status_stopped = network_stopped.clone();
    runtime.spawn(async move {
        let shutdown = async move { until_stopped(&mut status_stopped).await };
        if let Err(e) = dashboard::serve(status_listener, bridge, shutdown).await {
            tracing::error!(error = %e, "status API stopped");
        }
    });
    let core_thread = std::thread::Builder::new()
        .name("replica-core".into())
        .spawn(move || core.run(&receiver))
        .map_err(io_error("starting the core thread"))?;
    Ok(ReplicaHandle {
        inputs,
        stopping,
        core: Some(core_thread),
        receiver: Some(udp_thread),
        runtime: Some(runtime),
        stop_network: Some(stop_network),
    })
}

/// What a round sends, once its writes are durable.
enum Outgoing {
    Datagram {
        destination: SocketAddrV4,
        bytes: Vec<u8>,
    },
    /// A frame's payload; the session's writer adds the length prefix.
    Frame {
        session: SessionId,
        payload: Vec<u8>,
    },
    Close {
        session: SessionId,
    },
    /// An acknowledgement a newer one of the same round replaced.
    Superseded,
}

/// Datagrams the receiving thread dropped before the core saw them.
#[derive(Default)]
struct ReceiveDrops {
    /// By `drop_received_percent` (fault injection).
    injected: AtomicU64,
    /// Because the core's input queue was full (the sender repairs them
    /// like any other loss).
    queue_full: AtomicU64,
}

/// The receiving half of both transports: an ordinary UDP socket.
fn receive_datagrams(
    socket: &UdpSocket,
    inputs: &SyncSender<Input>,
    stopping: &AtomicBool,
    drop_percent: u8,
    drops: &ReceiveDrops,
) {
    let mut buffer = vec![0u8; crate::wire::PAYLOAD_BYTES_MAX + 1];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(rand::random());
    while !stopping.load(Ordering::SeqCst) {
        match socket.recv_from(&mut buffer) {
            Ok(_) if drop_percent > 0 && rng.random_range(0..100u8) < drop_percent => {
                drops.injected.fetch_add(1, Ordering::Relaxed);
            }
            Ok((length, _)) => match inputs.try_send(Input::Datagram(buffer[..length].to_vec())) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    drops.queue_full.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Disconnected(_)) => return,
            },
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                tracing::warn!(error = %e, "UDP receive failed");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Completes when the stop flag is raised (or its sender is gone).
async fn until_stopped(stopped: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *stopped.borrow_and_update() {
            return;
        }
        if stopped.changed().await.is_err() {
            return;
        }
    }
}

async fn accept_machines(
    listener: tokio::net::TcpListener,
    inputs: SyncSender<Input>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let next_session = Arc::new(AtomicU64::new(1));
    loop {
        tokio::select! {
            () = until_stopped(&mut stopped) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let session = next_session.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(serve_session(stream, session, inputs.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a machine connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

async fn serve_session(
    stream: tokio::net::TcpStream,
    session: SessionId,
    inputs: SyncSender<Input>,
) {
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    let (frames, mut outgoing) = tokio::sync::mpsc::channel::<Vec<u8>>(SESSION_WRITE_QUEUE_FRAMES);
    if inputs
        .try_send(Input::SessionOpened {
            session,
            writer: frames,
        })
        .is_err()
    {
        return;
    }
    let write = tokio::spawn(async move {
        let mut writer = FramedWrite::new(writer, frame_codec());
        while let Some(payload) = outgoing.recv().await {
            if writer.send(Bytes::from(payload)).await.is_err() {
                return;
            }
        }
        // Flushes what is queued, then shuts the write side down.
        let _ = SinkExt::<Bytes>::close(&mut writer).await;
    });
    let mut reader = FramedRead::new(reader, frame_codec());
    loop {
        let payload = match tokio::time::timeout(SESSION_IDLE_TIMEOUT, reader.next()).await {
            Ok(Some(Ok(payload))) => payload.to_vec(),
            Ok(Some(Err(error))) => {
                if is_oversized_frame(&error) {
                    let _ = inputs.try_send(Input::SessionMalformed);
                }
                break;
            }
            Ok(None) | Err(_) => break,
        };
        if inputs
            .try_send(Input::SessionFrame { session, payload })
            .is_err()
        {
            break;
        }
    }
    // The core must learn about the close; wait for room rather than drop it.
    let closed = inputs.clone();
    let _ =
        tokio::task::spawn_blocking(move || closed.send(Input::SessionClosed { session })).await;
    let _ = write.await;
}

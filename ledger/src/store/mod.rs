//! The event store: an append-only, hash-chained log with the rules that
//! keep it honest, over a storage [`Backend`].
//!
//! One store type serves both a machine (its own stream, one machine id)
//! and a replica (the fleet log). [`LogStore`] owns every rule — dedup by
//! (machine, seq), gap and forgery checks against each machine's keyed
//! chain, the fleet chain, epoch markers, segments, what a truncation rolls
//! back — exactly once; a backend only keeps what it is handed, atomically.
//! [`rocks::RocksBackend`] is the RocksDB backend that ships (sealed at
//! rest, group commit); [`memory::MemBackend`] keeps the log in memory for
//! the deterministic simulation. A model-based test runs the same
//! operations against both and compares everything.
//!
//! Every append is one atomic backend write: the entries, their index rows
//! and the new heads land together or not at all, so a crash never exposes
//! half a batch. A replica opens its store with `deferred_sync` to commit
//! many batches with one fsync (`sync_deferred`) before anything that
//! depends on them leaves it.

pub mod archive;
mod archiving;
pub mod backend;
pub mod links;
pub mod memory;
pub mod promise;
pub mod record;
pub mod rocks;
pub mod staged;

use crate::crypto::{Hash32, SecretKey};
use crate::event::EventEnvelope;
use crate::ids::MachineId;
use crate::keys::ChainKeys;
use crate::operator::{OPERATOR_RECORD_BYTES_MAX, OperatorRecord};
use archive::{ArchiveDir, ArchiveMark};
use backend::{
    Backend, Batch, CheckpointSealer, IndexRow, SealedCheckpoint, StoredState, Truncation,
};
use links::{RecentLink, RecentLinks};
use record::{
    ChainError, Content, EntryBody, LogEntry, Payload, REPLICA_NAME_BYTES_MAX, ReplicatedRecord,
    SignedEvent, check_machine_chain,
};
use rocks::RocksBackend;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use staged::{STAGED_RECORDS_MAX, Staged};
use std::collections::{HashMap, VecDeque};

/// A hash map for the store's per-event work, with FxHash instead of
/// SipHash: its keys are machine ids from the key directory and seqs a
/// machine must number consecutively, which nobody can choose to collide.
pub type FastMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

/// Each machine's last logged event.
pub type MachineHeads = FastMap<MachineId, MachineHead>;
use std::path::Path;

pub use archiving::{ArchiveReport, Cutoff};
pub use rocks::{CHUNK_BYTES_MAX, CHUNK_ENTRIES_MAX};

/// The store's on-disk format. Bumped only with a migration path.
pub const STORE_FORMAT_VERSION: u32 = 1;
/// Default entries per segment.
pub const SEGMENT_ENTRIES_DEFAULT: u64 = 4_096;
/// Most events accepted in one append (one write batch).
pub const APPEND_BATCH_MAX: usize = 65_536;
/// Checkpoints kept; older ones are pruned.
pub const CHECKPOINTS_KEPT: usize = 16;
/// A machine's event, by its machine and seq.
type Seq = (MachineId, u64);
/// Records a [`RecordIter`] reads from the backend at a time.
const ITER_BATCH_RECORDS: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no ledger at {0} (run `vendctl simulate --offline` or start a replica to create one)")]
    NotFound(String),
    /// RocksDB's own message. (Like every error of this project, the
    /// message includes its cause and does not also return it as a
    /// `source`: the binaries print chains with `{:#}`, which would say it
    /// twice.)
    #[error("storage error: {0}")]
    Db(rocksdb::Error),
    #[error("the key does not open this ledger (wrong key file?)")]
    WrongKey,
    #[error("entry gseq {gseq}: {problem}")]
    Entry { gseq: u64, problem: String },
    #[error("ledger metadata {name:?} is unreadable: {problem}")]
    Meta { name: String, problem: String },
    #[error("ledger format {found} is not supported (this build reads {STORE_FORMAT_VERSION})")]
    Format { found: u32 },
    #[error("batch of {0} events exceeds the limit of {APPEND_BATCH_MAX}")]
    BatchTooLarge(usize),
    #[error("replicated entry gseq {gseq} does not follow the log: {problem}")]
    NotContiguous { gseq: u64, problem: String },
    #[error("cannot truncate to gseq {to}: {problem}")]
    Truncate { to: u64, problem: String },
    /// The store was opened with `read_only`.
    #[error("the log at {0} is open read-only; nothing can be written to it")]
    ReadOnly(String),
    /// A log another process holds open could not be opened beside it.
    #[error("cannot read the live log at {path}: {problem}")]
    Live { path: String, problem: String },
    /// An archive file is missing or damaged, named with the entry when
    /// one is to blame.
    #[error("archive file {file}: {}{problem}", gseq.map(|g| format!("entry gseq {g}: ")).unwrap_or_default())]
    Archive {
        file: String,
        gseq: Option<u64>,
        problem: String,
    },
    /// An archived entry was asked for, but no archive directory is open.
    #[error(
        "entry gseq {gseq} is archived (entries up to {through} are in archive files under {dir}); give the archive directory"
    )]
    Archived {
        gseq: u64,
        through: u64,
        dir: String,
    },
    /// A backend refused a write or a sync (a full disk, an I/O error, an
    /// injected fault).
    #[error("write failed: {0}")]
    Io(String),
}

impl From<rocksdb::Error> for StoreError {
    fn from(error: rocksdb::Error) -> StoreError {
        StoreError::Db(error)
    }
}

impl StoreError {
    /// Whether the error means the log's files are damaged (corrupt or cut
    /// short), rather than a wrong key, a newer format or a permission.
    pub fn is_damage(&self) -> bool {
        match self {
            StoreError::Db(error) => error.kind() == rocksdb::ErrorKind::Corruption,
            StoreError::Entry { .. } | StoreError::Meta { .. } | StoreError::Archive { .. } => true,
            _ => false,
        }
    }

    fn entry(gseq: u64, problem: impl std::fmt::Display) -> StoreError {
        StoreError::Entry {
            gseq,
            problem: problem.to_string(),
        }
    }
}

/// Settings fixed when a store is created.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    pub format_version: u32,
    pub segment_entries: u64,
}

/// The end of the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub gseq: u64,
    #[serde(with = "serde_bytes")]
    pub hash: Hash32,
    /// Epoch of the last entry.
    pub epoch: u64,
}

/// The end of one machine's stream within the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineHead {
    pub seq: u64,
    #[serde(with = "serde_bytes")]
    pub hash: Hash32,
    pub gseq: u64,
}

/// A closed (or the open) segment: a run of `segment_entries` entries,
/// the unit of streaming, repair and archiving.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentSummary {
    pub index: u64,
    pub first_gseq: u64,
    pub last_gseq: u64,
    #[serde(with = "serde_bytes")]
    pub first_prev_hash: Hash32,
    #[serde(with = "serde_bytes")]
    pub last_hash: Hash32,
    pub record_bytes: u64,
    pub first_logged_ms: i64,
    pub last_logged_ms: i64,
}

impl SegmentSummary {
    fn extend(&mut self, entry: &LogEntry, record_bytes: usize) {
        if self.first_gseq == 0 {
            self.first_gseq = entry.body.gseq;
            self.first_prev_hash = entry.prev_hash;
            self.first_logged_ms = entry.body.logged_ms;
        }
        self.last_gseq = entry.body.gseq;
        self.last_hash = entry.hash;
        self.last_logged_ms = entry.body.logged_ms;
        self.record_bytes += record_bytes as u64;
    }
}

/// What happened to one submitted event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Appended {
    New {
        gseq: u64,
    },
    /// Already in the log (a resend); nothing was written.
    Duplicate {
        gseq: u64,
    },
    Rejected(EventRejection),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventRejection {
    #[error("undecodable event: {0}")]
    Decode(String),
    #[error("gap in the machine's stream: expected #{expected}, got #{got}")]
    Gap { expected: u64, got: u64 },
    #[error("#{seq} is already logged with different content")]
    Conflict { seq: u64 },
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("operator record refused: {0}")]
    Operator(String),
}

/// What a primary appends to the fleet log: a machine's event, or what an
/// operator did. Both are proposed, replicated, committed and fenced the
/// same way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Proposed {
    Event(SignedEvent),
    Operator(OperatorRecord),
}

/// A [`Proposed`] entry, borrowed.
#[derive(Clone, Copy, Debug)]
enum ProposedRef<'a> {
    Event(&'a SignedEvent),
    Operator(&'a OperatorRecord),
}

/// The result of an append: one outcome per submitted entry, plus the new
/// entries (with what they carry, decoded) for projections to apply.
#[derive(Debug, Default)]
pub struct AppendOutcome {
    pub results: Vec<Appended>,
    pub new_entries: Vec<(LogEntry, Content)>,
}

#[derive(Clone, Copy, Debug)]
pub struct OpenOptions {
    pub create: bool,
    pub segment_entries: u64,
    /// Group commit across writes: each write goes to RocksDB's WAL
    /// without an fsync, and `sync_deferred` syncs them all at once. The
    /// owner must let nothing that depends on a write leave the process
    /// (an acknowledgement, a vote) before `sync_deferred` returns. A crash
    /// before it loses a suffix of whole writes, never part of one.
    pub deferred_sync: bool,
    /// RocksDB's write buffer per column family (and so the size its WAL
    /// files are preallocated to). Replicas keep the default; a machine's
    /// own small ledger and tests that open many stores need far less.
    pub memtable_bytes: usize,
    /// Opens an existing store for reading only (`verify`, `replay`,
    /// `dump`): nothing in its directory is written, not even RocksDB's
    /// own recovery, and every write fails with [`StoreError::ReadOnly`].
    /// A store another process holds open (a running replica) is read as
    /// it was at the moment of opening.
    pub read_only: bool,
}

/// RocksDB's own default write buffer.
pub const MEMTABLE_BYTES_DEFAULT: usize = 64 << 20;

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            create: false,
            segment_entries: SEGMENT_ENTRIES_DEFAULT,
            deferred_sync: false,
            memtable_bytes: MEMTABLE_BYTES_DEFAULT,
            read_only: false,
        }
    }
}

/// The log: its rules over a backend (RocksDB unless said otherwise).
pub struct LogStore<B: Backend = RocksBackend> {
    backend: B,
    config: StoreConfig,
    head: Head,
    machine_heads: MachineHeads,
    open_segment: SegmentSummary,
    /// What the live log no longer holds (in archive files), if anything.
    archived: Option<ArchiveMark>,
    /// Where archived entries are read from.
    archive: Option<ArchiveDir>,
    /// The directory holding the store's own directory (a replica's data
    /// directory): an archive directory inside it is recorded relative to
    /// it, so a copied data directory reads its own archive.
    home: Option<std::path::PathBuf>,
    /// The newest entries' links for other threads, when asked for
    /// ([`LogStore::keep_recent_links`]).
    recent_links: Option<RecentLinks>,
    /// Whether appends wait in `staged` for the next sync
    /// ([`LogStore::stage_writes`]).
    staging: bool,
    staged: Option<Staged>,
    /// The last round's staged appends, written and emptied: their vectors
    /// and maps keep their capacity for the next round's, which would
    /// otherwise grow them again from fresh (zeroed) pages every round.
    spare_staged: Option<Staged>,
    /// The last append's emptied batch, so the next one is built in the
    /// room it left (a new one per append faulted in fresh pages: 6% of a
    /// follower's samples under datagram loss, whose appends come in
    /// bursts of thousands once a hole is repaired).
    spare_pending: Option<PendingBatch>,
}

impl LogStore<RocksBackend> {
    /// Opens (or with `options.create`, creates) the RocksDB store at `path`.
    pub fn open(
        path: &Path,
        key: &SecretKey,
        options: OpenOptions,
    ) -> Result<LogStore, StoreError> {
        let backend = RocksBackend::open(path, key, options)?;
        let mut store = LogStore::with_backend(backend, options.segment_entries)?;
        store.home = std::path::absolute(path)
            .ok()
            .and_then(|path| path.parent().map(Path::to_path_buf));
        // Archived entries are read from where they were written, unless
        // the caller names another directory (`attach_archive`).
        if let Some(mark) = &store.archived {
            let dir = store.resolve_archive_dir(&mark.dir);
            store.attach_archive(&dir, key);
        }
        Ok(store)
    }

    /// Opens an existing store for reading only (see
    /// [`OpenOptions::read_only`]): the tools that inspect a log never
    /// change it, and can read one a running replica holds open.
    pub fn open_read_only(path: &Path, key: &SecretKey) -> Result<LogStore, StoreError> {
        let options = OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        };
        LogStore::open(path, key, options)
    }

    pub fn path(&self) -> &Path {
        self.backend.path()
    }

    /// Flushes memtables so a following open is fast (used before backups
    /// and by tools).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.backend.flush()
    }
}

impl<B: Backend> LogStore<B> {
    /// Opens the store kept by `backend`, initialising a new one with
    /// `segment_entries` per segment.
    pub fn with_backend(mut backend: B, segment_entries: u64) -> Result<LogStore<B>, StoreError> {
        let state = match backend.load()? {
            Some(state) => state,
            None => {
                let config = StoreConfig {
                    format_version: STORE_FORMAT_VERSION,
                    segment_entries: segment_entries.max(1),
                };
                backend.init(&config)?;
                StoredState {
                    config,
                    ..StoredState::default()
                }
            }
        };
        if state.config.format_version != STORE_FORMAT_VERSION {
            return Err(StoreError::Format {
                found: state.config.format_version,
            });
        }
        Ok(LogStore {
            backend,
            config: state.config,
            head: state.head,
            machine_heads: state.machine_heads,
            open_segment: state.open_segment,
            archived: state.archived,
            archive: None,
            home: None,
            recent_links: None,
            staging: false,
            staged: None,
            spare_staged: None,
            spare_pending: None,
        })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// From now on, keeps the links of the newest `entries_max` appended
    /// entries in memory, in the returned window (shared with readers on
    /// other threads).
    pub fn keep_recent_links(&mut self, entries_max: usize) -> RecentLinks {
        let links = RecentLinks::new(entries_max);
        self.recent_links = Some(links.clone());
        links
    }

    /// The backend, to reach what only it offers (tests' damage hooks).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    pub fn into_backend(self) -> B {
        self.backend
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub fn head(&self) -> Head {
        self.head
    }

    pub fn machine_head(&self, machine: &MachineId) -> MachineHead {
        self.machine_heads.get(machine).copied().unwrap_or_default()
    }

    pub fn machine_heads(&self) -> &MachineHeads {
        &self.machine_heads
    }

    /// From now on, appends wait in memory and reach the backend in one
    /// write at the next [`sync_deferred`](Self::sync_deferred) (see
    /// [`staged`]). Only for a store opened with deferred sync, whose owner
    /// lets nothing depend on a write before that sync.
    pub fn stage_writes(&mut self) {
        self.staging = true;
    }

    /// Makes every write so far durable. With deferred sync this is the
    /// one fsync of a round (after the one write of the staged appends);
    /// otherwise every write was synced already.
    pub fn sync_deferred(&mut self) -> Result<(), StoreError> {
        self.write_staged()?;
        self.backend.sync()
    }

    /// Writes the staged appends to the backend now (not synced): a
    /// replica whose last write failed tries this before it takes more in
    /// memory, so it stops appending while its disk stays full.
    pub fn write_pending(&mut self) -> Result<(), StoreError> {
        self.write_staged()
    }

    /// Writes the staged appends to the backend; on failure they stay
    /// staged, to be written again.
    fn write_staged(&mut self) -> Result<(), StoreError> {
        let Some(staged) = &mut self.staged else {
            return Ok(());
        };
        self.backend.write(staged.batch())?;
        if let Some(mut written) = self.staged.take() {
            written.clear();
            self.spare_staged = Some(written);
        }
        Ok(())
    }

    /// Appends events submitted by machines (the primary's path, and a
    /// machine's own local ledger). Each event is checked against its
    /// machine's stream: resends are reported as duplicates, gaps and
    /// forgeries are rejected, the rest get consecutive gseqs. Everything
    /// new is written in one atomic batch.
    pub fn append_events(
        &mut self,
        epoch: u64,
        logged_ms: i64,
        events: &[SignedEvent],
        keys: &dyn ChainKeys,
    ) -> Result<AppendOutcome, StoreError> {
        let items = events.iter().map(ProposedRef::Event);
        self.append_items(epoch, logged_ms, events.len(), items, keys)
    }

    /// Appends what a primary proposed, machine events and operator records
    /// in the order given, in one atomic batch: events as
    /// [`append_events`](Self::append_events) does, operator records as
    /// they are (refused only when their encoding is over
    /// `OPERATOR_RECORD_BYTES_MAX`).
    pub fn append(
        &mut self,
        epoch: u64,
        logged_ms: i64,
        entries: &[Proposed],
        keys: &dyn ChainKeys,
    ) -> Result<AppendOutcome, StoreError> {
        let items = entries.iter().map(|entry| match entry {
            Proposed::Event(event) => ProposedRef::Event(event),
            Proposed::Operator(record) => ProposedRef::Operator(record),
        });
        self.append_items(epoch, logged_ms, entries.len(), items, keys)
    }

    fn append_items<'a>(
        &mut self,
        epoch: u64,
        logged_ms: i64,
        count: usize,
        items: impl Iterator<Item = ProposedRef<'a>>,
        keys: &dyn ChainKeys,
    ) -> Result<AppendOutcome, StoreError> {
        if count > APPEND_BATCH_MAX {
            return Err(StoreError::BatchTooLarge(count));
        }
        let mut pending = self.pending_batch(count);
        let mut outcome = AppendOutcome {
            results: Vec::with_capacity(count),
            new_entries: Vec::with_capacity(count),
        };
        for item in items {
            let admitted = match item {
                ProposedRef::Event(event) => match pending.admit(self, event, keys)? {
                    Admission::Append(envelope) => Ok((
                        Payload::Event {
                            machine_id: envelope.machine_id.clone(),
                            machine_seq: envelope.machine_seq,
                            event: event.clone(),
                        },
                        Content::Event(envelope),
                    )),
                    Admission::Duplicate(gseq) => Err(Appended::Duplicate { gseq }),
                    Admission::Reject(why) => Err(Appended::Rejected(why)),
                },
                ProposedRef::Operator(record) => operator_entry(record),
            };
            let result = match admitted {
                Ok((payload, content)) => {
                    let gseq = pending.head.gseq + 1;
                    let body = EntryBody {
                        gseq,
                        epoch,
                        logged_ms,
                        payload,
                    };
                    let (entry, bytes) = LogEntry::seal_body(body, pending.head.hash);
                    pending.push(self, &entry, bytes);
                    outcome.new_entries.push((entry, content));
                    Appended::New { gseq }
                }
                Err(reported) => reported,
            };
            outcome.results.push(result);
        }
        self.commit(pending)?;
        Ok(outcome)
    }

    /// Appends records replicated from the primary, which already carry
    /// their gseq, epoch and chain link. They must continue this log exactly;
    /// anything else is an error and nothing is written. Returns what each
    /// record carries, decoded.
    pub fn append_replicated(
        &mut self,
        records: &[ReplicatedRecord],
        keys: &dyn ChainKeys,
    ) -> Result<Vec<Content>, StoreError> {
        if records.len() > APPEND_BATCH_MAX {
            return Err(StoreError::BatchTooLarge(records.len()));
        }
        let mut pending = self.pending_batch(records.len());
        let mut contents = Vec::with_capacity(records.len());
        for record in records {
            let content = pending.admit_replicated(self, record.entry(), keys)?;
            pending.push(self, record.entry(), record.bytes().to_vec());
            contents.push(content);
        }
        self.commit(pending)?;
        Ok(contents)
    }

    /// Appends the marker with which a newly elected primary opens `epoch`
    /// (which must be newer than every entry in the log).
    pub fn append_marker(
        &mut self,
        epoch: u64,
        logged_ms: i64,
        primary: &str,
    ) -> Result<LogEntry, StoreError> {
        let gseq = self.head.gseq + 1;
        check_marker(self.head.epoch, epoch, primary)
            .map_err(|problem| StoreError::NotContiguous { gseq, problem })?;
        let body = EntryBody {
            gseq,
            epoch,
            logged_ms,
            payload: Payload::EpochStarted {
                primary: primary.to_owned(),
            },
        };
        let (entry, bytes) = LogEntry::seal_body(body, self.head.hash);
        let mut pending = self.pending_batch(1);
        pending.push(self, &entry, bytes);
        self.commit(pending)?;
        Ok(entry)
    }

    /// A batch for the next append, in the last one's room.
    fn pending_batch(&mut self, entries: usize) -> PendingBatch {
        let spare = self.spare_pending.take();
        PendingBatch::new(self, spare, entries)
    }

    fn commit(&mut self, mut pending: PendingBatch) -> Result<(), StoreError> {
        if pending.batch.records.is_empty() {
            pending.clear();
            self.spare_pending = Some(pending);
            return Ok(());
        }
        if self.staging {
            let full = self.staged.as_ref().is_some_and(|staged| {
                staged.records() + pending.batch.records.len() > STAGED_RECORDS_MAX
            });
            if full {
                self.write_staged()?;
            }
        } else {
            pending.finish_heads();
        }
        debug_assert_eq!(pending.batch.first_gseq, self.head.gseq + 1);
        debug_assert_eq!(pending.batch.last_gseq(), pending.head.gseq);
        let open_segment = pending.batch.open_segment.clone();
        if self.staging {
            let PendingBatch {
                batch,
                machine_heads,
                in_batch,
                ..
            } = &mut pending;
            match &mut self.staged {
                Some(staged) => staged.extend(batch, machine_heads, in_batch),
                None => {
                    let mut staged = self.spare_staged.take().unwrap_or_default();
                    staged.restart(batch, machine_heads, in_batch);
                    self.staged = Some(staged);
                }
            }
        } else {
            self.backend.write(&pending.batch)?;
        }
        self.head = pending.head;
        self.open_segment = open_segment;
        self.machine_heads.extend(pending.machine_heads.drain());
        if let (Some(recent), Some(links)) = (&self.recent_links, &mut pending.links) {
            recent.extend(links);
        }
        pending.clear();
        self.spare_pending = Some(pending);
        Ok(())
    }

    /// Reads the plaintext record bytes at `gseq`.
    pub fn record_bytes(&self, gseq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        if gseq == 0 || gseq > self.head.gseq {
            return Ok(None);
        }
        let mut found = None;
        self.for_each_record(gseq, gseq, |_, record| {
            found = Some(record.to_vec());
            Ok(false)
        })?;
        found
            .map(Some)
            .ok_or_else(|| StoreError::entry(gseq, "missing from the log"))
    }

    pub fn get(&self, gseq: u64) -> Result<Option<LogEntry>, StoreError> {
        let Some(bytes) = self.record_bytes(gseq)? else {
            return Ok(None);
        };
        decode_entry(gseq, &bytes).map(Some)
    }

    /// The gseq at which a machine's event `seq` was logged.
    pub fn gseq_of(&self, machine: &MachineId, seq: u64) -> Result<Option<u64>, StoreError> {
        Ok(self.index_row(machine, seq)?.map(|(gseq, _)| gseq))
    }

    /// Where a machine's event `seq` was logged, and its chain hash.
    fn index_row(
        &self,
        machine: &MachineId,
        seq: u64,
    ) -> Result<Option<(u64, Hash32)>, StoreError> {
        if let Some(row) = self.staged.as_ref().and_then(|s| s.index_row(machine, seq)) {
            return Ok(Some(row));
        }
        self.backend.index_row(machine, seq)
    }

    /// Calls `visit` with each live (not archived) record `from..=last`:
    /// the backend's, then the staged ones.
    fn for_each_live_record(
        &self,
        from: u64,
        last: u64,
        visit: &mut backend::RecordVisitor<'_>,
    ) -> Result<(), StoreError> {
        let Some(staged) = &self.staged else {
            return self.backend.for_each_record(from, last, visit);
        };
        let first_staged = staged.first_gseq();
        let mut going = true;
        if from < first_staged {
            let until = last.min(first_staged - 1);
            self.backend
                .for_each_record(from, until, &mut |gseq, record| {
                    going = visit(gseq, record)?;
                    Ok(going)
                })?;
        }
        let mut gseq = from.max(first_staged);
        while going && gseq <= last {
            let record = staged
                .record(gseq)
                .ok_or_else(|| StoreError::entry(gseq, "missing from the log"))?;
            going = visit(gseq, record)?;
            gseq += 1;
        }
        Ok(())
    }

    /// Calls `visit` with each record `from..=last` in order, borrowing the
    /// bytes from the backend; `visit` returns `false` to stop.
    pub fn for_each_record(
        &self,
        from: u64,
        last: u64,
        mut visit: impl FnMut(u64, &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let last = last.min(self.head.gseq);
        let mut from = from.max(1);
        if let Some(mark) = self.archived.as_ref().filter(|m| from <= m.through_gseq) {
            let archive = self.archive.as_ref().ok_or_else(|| StoreError::Archived {
                gseq: from,
                through: mark.through_gseq,
                dir: mark.dir.clone(),
            })?;
            let until = last.min(mark.through_gseq);
            let size = self.config.segment_entries;
            if !archive.for_each_record(from, until, size, &mut visit)? || until == last {
                return Ok(());
            }
            from = mark.through_gseq + 1;
        }
        self.for_each_live_record(from, last, &mut visit)
    }

    /// Iterates plaintext records from `from_gseq` to the head, in order. A
    /// missing gseq is reported as an error naming it.
    pub fn records_from(&self, from_gseq: u64) -> RecordIter<'_, B> {
        RecordIter {
            store: self,
            buffered: VecDeque::new(),
            next_gseq: from_gseq.max(1),
            end_gseq: self.head.gseq,
            failed: false,
        }
    }

    /// Iterates decoded entries from `from_gseq`.
    pub fn entries_from(
        &self,
        from_gseq: u64,
    ) -> impl Iterator<Item = Result<LogEntry, StoreError>> + '_ {
        self.records_from(from_gseq)
            .map(|item| item.and_then(|(gseq, bytes)| decode_entry(gseq, &bytes)))
    }

    /// Reads every record and checks what damage would break: each record
    /// reads back (RocksDB checks every block's checksum, the seal every
    /// chunk's), decodes, sits at its gseq and links to the one before,
    /// and the last one is the head. A replica runs this at start so a
    /// damaged log is repaired rather than served.
    /// Archived entries are not read: the chain starts from the hash the
    /// archive mark keeps (`vendctl verify` checks the archive too).
    pub fn check_chain(&self) -> Result<(), StoreError> {
        let (mut previous, first) = match &self.archived {
            Some(mark) => (mark.through_hash, mark.through_gseq + 1),
            None => (record::GENESIS_HASH, 1),
        };
        self.for_each_live_record(first, self.head.gseq, &mut |gseq, bytes| {
            let entry = decode_entry(gseq, bytes)?;
            if entry.prev_hash != previous {
                return Err(StoreError::entry(
                    gseq,
                    "does not link to the entry before it (the log was damaged or altered)",
                ));
            }
            previous = entry.hash;
            Ok(true)
        })?;
        if previous != self.head.hash {
            return Err(StoreError::entry(
                self.head.gseq,
                "the log's head does not match its last entry",
            ));
        }
        Ok(())
    }

    /// Closed segments, oldest first.
    pub fn segments(&self) -> Result<Vec<SegmentSummary>, StoreError> {
        let mut segments = self.backend.segments()?;
        if let Some(staged) = &self.staged {
            segments.extend(staged.closed_segments().iter().cloned());
        }
        Ok(segments)
    }

    pub fn open_segment(&self) -> &SegmentSummary {
        &self.open_segment
    }

    /// Stores an application value (election state, uplink marks, ...),
    /// durably (at the next sync with deferred sync).
    pub fn put_app_meta<T: Serialize>(&mut self, name: &str, value: &T) -> Result<(), StoreError> {
        let bytes = rmp_serde::to_vec(value).expect("encoding to a Vec cannot fail");
        self.write_staged()?;
        self.backend.put_app_meta(name, &bytes)
    }

    pub fn app_meta<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        let Some(bytes) = self.backend.app_meta(name)? else {
            return Ok(None);
        };
        rmp_serde::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Meta {
                name: format!("app/{name}"),
                problem: e.to_string(),
            })
    }

    /// How checkpoints are sealed for this store (it can be moved to
    /// another thread, to seal one there).
    pub fn checkpoint_sealer(&self) -> CheckpointSealer {
        self.backend.checkpoint_sealer()
    }

    /// Saves a checkpoint sealed by [`LogStore::checkpoint_sealer`] and
    /// prunes old ones.
    pub fn put_checkpoint(&mut self, checkpoint: SealedCheckpoint) -> Result<(), StoreError> {
        self.write_staged()?;
        self.backend.put_checkpoint(checkpoint, CHECKPOINTS_KEPT)
    }

    /// The newest checkpoint taken at or before `gseq`.
    pub fn checkpoint_at_or_before(&self, gseq: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.backend.checkpoint_at_or_before(gseq)
    }

    /// Removes every entry after `to_gseq` (a former primary dropping its
    /// uncommitted suffix). Machine heads, index rows, segments and
    /// checkpoints are rolled back in the same atomic write.
    pub fn truncate_after(&mut self, to_gseq: u64) -> Result<u64, StoreError> {
        if to_gseq >= self.head.gseq {
            return Ok(0);
        }
        self.write_staged()?;
        if let Some(mark) = self.archived.as_ref().filter(|m| to_gseq < m.through_gseq) {
            return Err(StoreError::Truncate {
                to: to_gseq,
                problem: format!("entries up to gseq {} are archived", mark.through_gseq),
            });
        }
        let removed = self.head.gseq - to_gseq;
        let (removed_index, first_removed) = self.removed_events(to_gseq)?;
        let mut machine_heads = Vec::with_capacity(first_removed.len());
        for (machine, seq) in first_removed {
            let head = self.machine_head_before(&machine, seq)?;
            machine_heads.push((machine, (head.seq > 0).then_some(head)));
        }
        let head = match (self.get_live(to_gseq)?, &self.archived) {
            (Some(entry), _) => Head {
                gseq: to_gseq,
                hash: entry.hash,
                epoch: entry.body.epoch,
            },
            (None, Some(mark)) if mark.through_gseq == to_gseq => Head {
                gseq: to_gseq,
                hash: mark.through_hash,
                epoch: mark.through_epoch,
            },
            (None, _) => Head::default(),
        };
        let keep_segments = to_gseq / self.config.segment_entries;
        let cut = Truncation {
            to_gseq,
            removed_index,
            machine_heads,
            head,
            first_removed_segment: keep_segments,
            open_segment: self.rebuild_open_segment(keep_segments, to_gseq)?,
        };
        self.backend.truncate(&cut)?;
        if let Some(recent) = &self.recent_links {
            recent.truncate_after(to_gseq);
        }
        self.head = cut.head;
        self.open_segment = cut.open_segment;
        for (machine, head) in cut.machine_heads {
            match head {
                Some(head) => self.machine_heads.insert(machine, head),
                None => self.machine_heads.remove(&machine),
            };
        }
        Ok(removed)
    }

    /// The index rows of the events after `to_gseq`, and for each machine
    /// the first of its seqs that goes.
    fn removed_events(&self, to_gseq: u64) -> Result<(Vec<Seq>, Vec<Seq>), StoreError> {
        let mut rows = Vec::new();
        let mut first_removed: HashMap<MachineId, u64> = HashMap::new();
        for item in self.entries_from(to_gseq + 1) {
            let entry = item?;
            if let Some((machine, seq, _)) = entry.body.machine_event() {
                rows.push((machine.clone(), seq));
                let first = first_removed.entry(machine.clone()).or_insert(seq);
                *first = (*first).min(seq);
            }
        }
        let mut first_removed: Vec<(MachineId, u64)> = first_removed.into_iter().collect();
        first_removed.sort();
        Ok((rows, first_removed))
    }

    fn machine_head_before(
        &self,
        machine: &MachineId,
        seq: u64,
    ) -> Result<MachineHead, StoreError> {
        if seq <= 1 {
            return Ok(MachineHead::default());
        }
        let (gseq, hash) =
            self.backend
                .index_row(machine, seq - 1)?
                .ok_or_else(|| StoreError::Truncate {
                    to: seq,
                    problem: format!("index row for {machine} #{} missing", seq - 1),
                })?;
        Ok(MachineHead {
            seq: seq - 1,
            hash,
            gseq,
        })
    }

    fn rebuild_open_segment(&self, index: u64, to_gseq: u64) -> Result<SegmentSummary, StoreError> {
        let mut segment = SegmentSummary {
            index,
            ..SegmentSummary::default()
        };
        let first = index * self.config.segment_entries + 1;
        self.for_each_record(first, to_gseq, |gseq, bytes| {
            segment.extend(&decode_entry(gseq, bytes)?, bytes.len());
            Ok(true)
        })?;
        Ok(segment)
    }
}

/// Damage hooks for tests: rewriting history behind the store's back.
#[cfg(any(test, feature = "testing"))]
impl LogStore<RocksBackend> {
    /// The first gseq of the chunk holding `gseq`, and its raw sealed value.
    pub fn raw_chunk(&self, gseq: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.backend.testing_raw_chunk(gseq)
    }

    pub fn overwrite_raw_chunk(
        &mut self,
        first_gseq: u64,
        value: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        self.backend.testing_overwrite_raw_chunk(first_gseq, value)
    }

    /// Reseals the chunk holding `gseq` with `record` in its place (someone
    /// holding the key rewriting history).
    pub fn overwrite_record(&mut self, gseq: u64, record: &[u8]) -> Result<(), StoreError> {
        self.backend.testing_overwrite_record(gseq, record)
    }
}

fn decode_entry(gseq: u64, bytes: &[u8]) -> Result<LogEntry, StoreError> {
    let entry = LogEntry::decode(bytes)
        .map_err(|e| StoreError::entry(gseq, format!("undecodable record: {e}")))?;
    if entry.body.gseq != gseq {
        return Err(StoreError::entry(
            gseq,
            format!("record claims gseq {}", entry.body.gseq),
        ));
    }
    Ok(entry)
}

/// An epoch marker must open a newer epoch than every entry before it.
fn check_marker(head_epoch: u64, epoch: u64, primary: &str) -> Result<(), String> {
    if epoch <= head_epoch {
        return Err(format!(
            "epoch marker for {epoch} does not follow epoch {head_epoch}"
        ));
    }
    if primary.is_empty() || primary.len() > REPLICA_NAME_BYTES_MAX {
        return Err("epoch marker names no valid primary".into());
    }
    Ok(())
}

/// Decides what to do with one submitted event.
enum Admission {
    Append(EventEnvelope),
    Duplicate(u64),
    Reject(EventRejection),
}

/// The payload of a new entry and what it carries, or what to report
/// instead of appending it.
type NewEntry = Result<(Payload, Content), Appended>;

/// The rule for an operator record the primary proposes: it must fit the
/// limit every replica applies when it decodes it.
fn operator_entry(record: &OperatorRecord) -> NewEntry {
    let bytes = record.encode();
    if bytes.len() > OPERATOR_RECORD_BYTES_MAX {
        return Err(Appended::Rejected(EventRejection::Operator(format!(
            "{} bytes encoded, more than {OPERATOR_RECORD_BYTES_MAX}",
            bytes.len()
        ))));
    }
    let content = Content::Operator(record.clone());
    Ok((Payload::Operator { record: bytes }, content))
}

/// A batch being built, with the heads it will leave behind.
#[derive(Default)]
struct PendingBatch {
    batch: Batch,
    head: Head,
    machine_heads: MachineHeads,
    /// (machine, seq) -> (gseq, chain hash) appended in this batch.
    in_batch: FastMap<(MachineId, u64), (u64, Hash32)>,
    /// The entries' links, when the store keeps recent ones.
    links: Option<Vec<RecentLink>>,
}

impl PendingBatch {
    /// A batch sized for `entries` entries, built in `spare` (the last
    /// append's, emptied) when there is one: a saturated round appends
    /// thousands, and growing these by doubling showed in profiles (the
    /// copies, and fresh pages faulted in for each larger buffer).
    fn new<B: Backend>(
        store: &LogStore<B>,
        spare: Option<PendingBatch>,
        entries: usize,
    ) -> PendingBatch {
        let mut pending = spare.unwrap_or_default();
        debug_assert!(pending.batch.records.is_empty() && pending.in_batch.is_empty());
        pending.batch.first_gseq = store.head.gseq + 1;
        pending.batch.open_segment = store.open_segment.clone();
        pending.batch.records.reserve(entries);
        pending.batch.index.reserve(entries);
        pending.head = store.head;
        pending.in_batch.reserve(entries);
        pending.links = store.recent_links.as_ref().map(|_| {
            let mut links = pending.links.take().unwrap_or_default();
            links.reserve(entries);
            links
        });
        pending
    }

    fn machine_head<B: Backend>(&self, store: &LogStore<B>, machine: &MachineId) -> MachineHead {
        self.machine_heads
            .get(machine)
            .copied()
            .unwrap_or_else(|| store.machine_head(machine))
    }

    /// The rule for one submitted event: a resend of what the stream holds
    /// is a duplicate, anything else must continue the machine's chain.
    fn admit<B: Backend>(
        &self,
        store: &LogStore<B>,
        event: &SignedEvent,
        keys: &dyn ChainKeys,
    ) -> Result<Admission, StoreError> {
        let envelope = match event.envelope() {
            Ok(envelope) => envelope,
            Err(e) => return Ok(Admission::Reject(EventRejection::Decode(e.to_string()))),
        };
        let machine = &envelope.machine_id;
        let seq = envelope.machine_seq;
        let head = self.machine_head(store, machine);
        if seq == 0 {
            return Ok(Admission::Reject(EventRejection::Gap {
                expected: head.seq + 1,
                got: 0,
            }));
        }
        if seq <= head.seq {
            let logged = match self.in_batch.get(&(machine.clone(), seq)) {
                Some(&found) => Some(found),
                None => store.index_row(machine, seq)?,
            };
            return Ok(match logged {
                Some((gseq, hash)) if hash == event.chain_hash => Admission::Duplicate(gseq),
                _ => Admission::Reject(EventRejection::Conflict { seq }),
            });
        }
        if seq != head.seq + 1 {
            return Ok(Admission::Reject(EventRejection::Gap {
                expected: head.seq + 1,
                got: seq,
            }));
        }
        if let Err(e) = check_machine_chain(keys, machine, &head.hash, event) {
            return Ok(Admission::Reject(e.into()));
        }
        Ok(Admission::Append(envelope))
    }

    /// The rule for one replicated entry: it continues the fleet chain, its
    /// event (if any) continues its machine's chain, and an operator record
    /// decodes.
    fn admit_replicated<B: Backend>(
        &self,
        store: &LogStore<B>,
        entry: &LogEntry,
        keys: &dyn ChainKeys,
    ) -> Result<Content, StoreError> {
        let gseq = entry.body.gseq;
        let not_contiguous = |problem: String| StoreError::NotContiguous { gseq, problem };
        if gseq != self.head.gseq + 1 {
            return Err(not_contiguous(format!(
                "expected gseq {}",
                self.head.gseq + 1
            )));
        }
        if entry.prev_hash != self.head.hash {
            return Err(not_contiguous(
                "previous-hash link does not match this log".into(),
            ));
        }
        if entry.body.epoch < self.head.epoch {
            return Err(not_contiguous(format!(
                "epoch {} is older than {}",
                entry.body.epoch, self.head.epoch
            )));
        }
        let (machine_id, machine_seq, event) = match &entry.body.payload {
            Payload::EpochStarted { primary } => {
                check_marker(self.head.epoch, entry.body.epoch, primary).map_err(not_contiguous)?;
                return Ok(Content::Marker);
            }
            Payload::Operator { record } => {
                let record = OperatorRecord::decode(record)
                    .map_err(|e| not_contiguous(format!("undecodable operator record: {e}")))?;
                return Ok(Content::Operator(record));
            }
            Payload::Event {
                machine_id,
                machine_seq,
                event,
            } => (machine_id, *machine_seq, event),
        };
        let envelope = match self.admit(store, event, keys)? {
            Admission::Append(envelope) => envelope,
            Admission::Duplicate(_) => {
                return Err(not_contiguous("event is already logged".into()));
            }
            Admission::Reject(why) => return Err(not_contiguous(why.to_string())),
        };
        if envelope.machine_id != *machine_id || envelope.machine_seq != machine_seq {
            return Err(not_contiguous(
                "entry and event disagree on machine or sequence".into(),
            ));
        }
        Ok(Content::Event(envelope))
    }

    /// Adds an entry whose links were already checked.
    fn push<B: Backend>(&mut self, store: &LogStore<B>, entry: &LogEntry, bytes: Vec<u8>) {
        let body = &entry.body;
        assert_eq!(body.gseq, self.head.gseq + 1, "entries are consecutive");
        assert_eq!(entry.prev_hash, self.head.hash, "entries are chained");
        if let Some((machine, seq, event)) = body.machine_event() {
            self.batch.index.push(IndexRow {
                machine: machine.clone(),
                seq,
                gseq: body.gseq,
                chain_hash: event.chain_hash,
            });
            self.in_batch
                .insert((machine.clone(), seq), (body.gseq, event.chain_hash));
            let head = MachineHead {
                seq,
                hash: event.chain_hash,
                gseq: body.gseq,
            };
            self.machine_heads.insert(machine.clone(), head);
        }
        if let Some(links) = &mut self.links {
            links.push(RecentLink {
                gseq: body.gseq,
                hash: entry.hash,
                prev_hash: entry.prev_hash,
                machine: body.machine_event().map(|(machine, _, _)| machine.clone()),
            });
        }
        self.head = Head {
            gseq: body.gseq,
            hash: entry.hash,
            epoch: body.epoch,
        };
        self.batch.open_segment.extend(entry, bytes.len());
        if body.gseq.is_multiple_of(store.config.segment_entries) {
            let next = SegmentSummary {
                index: self.batch.open_segment.index + 1,
                ..SegmentSummary::default()
            };
            let closed = std::mem::replace(&mut self.batch.open_segment, next);
            self.batch.closed_segments.push(closed);
        }
        self.batch.records.push(bytes);
        self.batch.head = self.head;
    }

    /// Moves the machine heads into the batch (sorted, so every backend
    /// sees the same write).
    fn finish_heads(&mut self) {
        self.batch.machine_heads = sorted_heads(&self.machine_heads);
    }

    /// Empties it for the next append, keeping the room it has.
    fn clear(&mut self) {
        self.batch.records.clear();
        self.batch.index.clear();
        self.batch.machine_heads.clear();
        self.batch.closed_segments.clear();
        self.machine_heads.clear();
        self.in_batch.clear();
        if let Some(links) = &mut self.links {
            links.clear();
        }
    }
}

/// Machine heads in machine order, as a [`Batch`] carries them (so every
/// backend sees the same write).
fn sorted_heads(heads: &MachineHeads) -> Vec<(MachineId, MachineHead)> {
    let mut sorted: Vec<(MachineId, MachineHead)> =
        heads.iter().map(|(m, h)| (m.clone(), *h)).collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted
}

/// Iterates `(gseq, plaintext record)` pairs in order up to the head,
/// reading the backend a few hundred records at a time.
pub struct RecordIter<'a, B: Backend = RocksBackend> {
    store: &'a LogStore<B>,
    buffered: VecDeque<(u64, Vec<u8>)>,
    next_gseq: u64,
    end_gseq: u64,
    failed: bool,
}

impl<B: Backend> RecordIter<'_, B> {
    fn refill(&mut self) -> Result<(), StoreError> {
        let from = self.next_gseq;
        let last = self
            .end_gseq
            .min(from.saturating_add(ITER_BATCH_RECORDS - 1));
        let buffered = &mut self.buffered;
        self.store.for_each_record(from, last, |gseq, record| {
            buffered.push_back((gseq, record.to_vec()));
            Ok(true)
        })?;
        if self.buffered.front().is_none_or(|(gseq, _)| *gseq != from) {
            return Err(StoreError::entry(from, "missing from the log"));
        }
        Ok(())
    }
}

impl<B: Backend> Iterator for RecordIter<'_, B> {
    type Item = Result<(u64, Vec<u8>), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next_gseq > self.end_gseq {
            return None;
        }
        if self.buffered.is_empty()
            && let Err(error) = self.refill()
        {
            self.failed = true;
            return Some(Err(error));
        }
        let (gseq, record) = self.buffered.pop_front()?;
        debug_assert_eq!(gseq, self.next_gseq);
        self.next_gseq += 1;
        Some(Ok((gseq, record)))
    }
}

/// Decoded records handed from the reading thread to the consuming one in
/// one message (kept small enough to stay off glibc's mmap path).
const SCAN_BATCH_RECORDS: usize = 256;
/// Batches in flight between the two threads (bounds memory).
const SCAN_QUEUE_BATCHES: usize = 32;

/// Reads records `from..=last` on a helper thread, decrypting and decoding
/// each record with `decode` there, and hands the results in order to
/// `consume` on the calling thread. Replays and verification use both
/// cores this way. Stops at the first error of either side.
pub fn scan_records<B, T, E>(
    store: &LogStore<B>,
    from: u64,
    last: u64,
    decode: impl Fn(u64, &[u8]) -> Result<T, StoreError> + Send,
    mut consume: impl FnMut(T) -> Result<(), E>,
) -> Result<(), E>
where
    B: Backend,
    T: Send,
    E: From<StoreError>,
{
    if from > last || last > store.head().gseq {
        return if from > last {
            Ok(())
        } else {
            Err(StoreError::entry(store.head().gseq + 1, "missing from the log").into())
        };
    }
    std::thread::scope(|scope| {
        let (sender, receiver) =
            std::sync::mpsc::sync_channel::<Result<Vec<T>, StoreError>>(SCAN_QUEUE_BATCHES);
        scope.spawn(move || {
            let mut batch = Vec::with_capacity(SCAN_BATCH_RECORDS);
            let result = store.for_each_record(from, last, |gseq, record| {
                batch.push(decode(gseq, record)?);
                if batch.len() == SCAN_BATCH_RECORDS {
                    let full =
                        std::mem::replace(&mut batch, Vec::with_capacity(SCAN_BATCH_RECORDS));
                    // A closed receiver means the consumer stopped early.
                    return Ok(sender.send(Ok(full)).is_ok());
                }
                Ok(true)
            });
            let _ = match result {
                Ok(()) if batch.is_empty() => Ok(()),
                Ok(()) => sender.send(Ok(batch)),
                Err(error) => sender.send(Err(error)),
            };
        });
        for batch in receiver {
            for value in batch? {
                consume(value)?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests;

//! The event store: an append-only, hash-chained, sealed log on RocksDB.
//!
//! One store type serves both a machine (its own stream, one machine id)
//! and a replica (the fleet log). Column families:
//!
//! ```text
//! log          first gseq (u64 BE)           -> seal(chunk)         consecutive entries
//! machine_seq  len(id) ++ id ++ seq (u64 BE)  -> gseq (u64 BE) ++ chain hash (32)
//! meta         name                           -> MessagePack value   heads, config, segments
//! checkpoints  gseq (u64 BE)                  -> seal(projection)
//! ```
//!
//! Every append is one `WriteBatch` written with `sync = true` (group
//! commit): the entries, their index rows and the new heads land together or
//! not at all, so a crash never exposes half a batch. A replica opens its
//! store with `deferred_sync` to commit many batches with one fsync
//! (`sync_deferred`) before anything that depends on them leaves it.
//!
//! Log values are chunks of up to [`CHUNK_ENTRIES_MAX`] consecutive records
//! (`u32 LE length ++ record`, repeated) sealed with XChaCha20-Poly1305 under
//! the store key, with `"log/" ++ first gseq` as associated data so a value
//! moved to another key fails to open. Sealing per chunk rather than per
//! entry amortises the cipher's per-message setup, which costs more than
//! encrypting a whole small record (see BENCHMARKS.md).

pub mod record;

use crate::crypto::{Hash32, SealError, Sealer, SecretKey};
use crate::event::EventEnvelope;
use crate::ids::MachineId;
use crate::keys::ChainKeys;
use record::{
    ChainError, EntryBody, LogEntry, Payload, REPLICA_NAME_BYTES_MAX, SignedEvent,
    check_machine_chain,
};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, Direction, IteratorMode, Options,
    WriteBatch, WriteOptions,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

const CF_LOG: &str = "log";
const CF_MACHINE_SEQ: &str = "machine_seq";
const CF_META: &str = "meta";
const CF_CHECKPOINTS: &str = "checkpoints";

const META_CONFIG: &[u8] = b"config";
const META_HEAD: &[u8] = b"head";
const META_KEY_CHECK: &[u8] = b"key_check";
const META_OPEN_SEGMENT: &[u8] = b"open_segment";
const META_MACHINE_HEAD_PREFIX: &[u8] = b"mh/";
const META_SEGMENT_PREFIX: &[u8] = b"seg/";
const META_APP_PREFIX: &[u8] = b"app/";
const KEY_CHECK_PLAINTEXT: &[u8] = b"vendledger store key check v1";

/// The store's on-disk format. Bumped only with a migration path.
pub const STORE_FORMAT_VERSION: u32 = 1;
/// Default entries per segment.
pub const SEGMENT_ENTRIES_DEFAULT: u64 = 4_096;
/// Most events accepted in one append (one write batch).
pub const APPEND_BATCH_MAX: usize = 65_536;
/// Checkpoints kept; older ones are pruned.
pub const CHECKPOINTS_KEPT: usize = 16;
/// Most records sealed together in one log value.
pub const CHUNK_ENTRIES_MAX: usize = 64;
/// A chunk is closed early once its plaintext reaches this size.
pub const CHUNK_BYTES_MAX: usize = 64 * 1024;
const CHUNK_LENGTH_BYTES: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no ledger at {0} (run `vendctl simulate --offline` or start a replica to create one)")]
    NotFound(String),
    #[error("storage error: {0}")]
    Db(#[from] rocksdb::Error),
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
}

impl StoreError {
    fn entry(gseq: u64, problem: impl std::fmt::Display) -> StoreError {
        StoreError::Entry {
            gseq,
            problem: problem.to_string(),
        }
    }
}

/// Settings fixed when a store is created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// The result of an append: one outcome per submitted event, plus the new
/// entries (with their decoded events) for projections to apply.
#[derive(Debug, Default)]
pub struct AppendOutcome {
    pub results: Vec<Appended>,
    pub new_entries: Vec<(LogEntry, EventEnvelope)>,
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
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            create: false,
            segment_entries: SEGMENT_ENTRIES_DEFAULT,
            deferred_sync: false,
        }
    }
}

pub struct LogStore {
    db: DB,
    path: PathBuf,
    sealer: Sealer,
    config: StoreConfig,
    head: Head,
    machine_heads: HashMap<MachineId, MachineHead>,
    open_segment: SegmentSummary,
    deferred_sync: bool,
    /// Writes since the last sync (with `deferred_sync`).
    unsynced: AtomicBool,
}

fn gseq_key(gseq: u64) -> [u8; 8] {
    gseq.to_be_bytes()
}

fn machine_seq_key(machine: &MachineId, seq: u64) -> Vec<u8> {
    let id = machine.as_str().as_bytes();
    let mut key = Vec::with_capacity(1 + id.len() + 8);
    key.push(u8::try_from(id.len()).expect("machine ids are at most 32 bytes"));
    key.extend_from_slice(id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn log_aad(gseq: u64) -> [u8; 12] {
    let mut aad = [0u8; 12];
    aad[..4].copy_from_slice(b"log/");
    aad[4..].copy_from_slice(&gseq.to_be_bytes());
    aad
}

fn checkpoint_aad(gseq: u64) -> [u8; 19] {
    let mut aad = [0u8; 19];
    aad[..11].copy_from_slice(b"checkpoint/");
    aad[11..].copy_from_slice(&gseq.to_be_bytes());
    aad
}

fn encode_meta<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec(value).expect("encoding to a Vec cannot fail")
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

impl LogStore {
    /// Opens (or with `options.create`, creates) the store at `path`.
    pub fn open(
        path: &Path,
        key: &SecretKey,
        options: OpenOptions,
    ) -> Result<LogStore, StoreError> {
        if !options.create && !path.join("CURRENT").exists() {
            return Err(StoreError::NotFound(path.display().to_string()));
        }
        let mut db_options = Options::default();
        db_options.create_if_missing(options.create);
        db_options.create_missing_column_families(true);
        db_options.set_compression_type(DBCompressionType::None);
        db_options.set_max_open_files(512);
        db_options.set_keep_log_file_num(4);
        let descriptors = [CF_LOG, CF_MACHINE_SEQ, CF_META, CF_CHECKPOINTS].map(|name| {
            let mut cf_options = Options::default();
            cf_options.set_compression_type(DBCompressionType::None);
            ColumnFamilyDescriptor::new(name, cf_options)
        });
        let db = DB::open_cf_descriptors(&db_options, path, descriptors)?;
        let mut store = LogStore {
            db,
            path: path.to_path_buf(),
            sealer: Sealer::new(key),
            config: StoreConfig {
                format_version: STORE_FORMAT_VERSION,
                segment_entries: options.segment_entries.max(1),
            },
            head: Head::default(),
            machine_heads: HashMap::new(),
            open_segment: SegmentSummary::default(),
            deferred_sync: options.deferred_sync,
            unsynced: AtomicBool::new(false),
        };
        store.load_meta()?;
        Ok(store)
    }

    fn load_meta(&mut self) -> Result<(), StoreError> {
        match self.db.get_cf(self.cf(CF_META), META_KEY_CHECK)? {
            Some(sealed) => {
                self.sealer
                    .open(META_KEY_CHECK, &sealed)
                    .map_err(|_| StoreError::WrongKey)?;
            }
            None => {
                // A new store: record the key check and the configuration.
                let mut batch = WriteBatch::default();
                batch.put_cf(
                    self.cf(CF_META),
                    META_KEY_CHECK,
                    self.sealer.seal(META_KEY_CHECK, KEY_CHECK_PLAINTEXT),
                );
                batch.put_cf(self.cf(CF_META), META_CONFIG, encode_meta(&self.config));
                self.write_synced(batch)?;
            }
        }
        self.config = self
            .read_meta(META_CONFIG)?
            .ok_or_else(|| StoreError::Meta {
                name: "config".into(),
                problem: "missing".into(),
            })?;
        if self.config.format_version != STORE_FORMAT_VERSION {
            return Err(StoreError::Format {
                found: self.config.format_version,
            });
        }
        self.head = self.read_meta(META_HEAD)?.unwrap_or_default();
        self.open_segment = self.read_meta(META_OPEN_SEGMENT)?.unwrap_or_default();
        let iter = self.db.iterator_cf(
            self.cf(CF_META),
            IteratorMode::From(META_MACHINE_HEAD_PREFIX, Direction::Forward),
        );
        for item in iter {
            let (key, value) = item?;
            let Some(id) = key.strip_prefix(META_MACHINE_HEAD_PREFIX) else {
                break;
            };
            let bad = |problem: String| StoreError::Meta {
                name: String::from_utf8_lossy(&key).into_owned(),
                problem,
            };
            let id = std::str::from_utf8(id)
                .ok()
                .and_then(|id| MachineId::new(id).ok())
                .ok_or_else(|| bad("bad machine id".into()))?;
            let head: MachineHead =
                rmp_serde::from_slice(&value).map_err(|e| bad(e.to_string()))?;
            self.machine_heads.insert(id, head);
        }
        Ok(())
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    fn read_meta<T: DeserializeOwned>(&self, name: &[u8]) -> Result<Option<T>, StoreError> {
        let Some(bytes) = self.db.get_cf(self.cf(CF_META), name)? else {
            return Ok(None);
        };
        rmp_serde::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Meta {
                name: String::from_utf8_lossy(name).into_owned(),
                problem: e.to_string(),
            })
    }

    /// Writes a batch atomically and durably — or, with `deferred_sync`,
    /// atomically now and durably at the next `sync_deferred`.
    fn write_synced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut options = WriteOptions::default();
        options.set_sync(!self.deferred_sync);
        self.db.write_opt(batch, &options)?;
        if self.deferred_sync {
            self.unsynced.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Makes every write so far durable (one fsync of the WAL). A no-op
    /// when nothing was written since the last sync, or without
    /// `deferred_sync` (then every write was synced as it was made).
    pub fn sync_deferred(&self) -> Result<(), StoreError> {
        if self.unsynced.swap(false, Ordering::AcqRel)
            && let Err(error) = self.db.flush_wal(true)
        {
            self.unsynced.store(true, Ordering::Release);
            return Err(error.into());
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
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

    pub fn machine_heads(&self) -> &HashMap<MachineId, MachineHead> {
        &self.machine_heads
    }

    /// Appends events submitted by machines (the primary's path, and a
    /// machine's own local ledger). Each event is checked against its
    /// machine's stream: resends are reported as duplicates, gaps and
    /// forgeries are rejected, the rest get consecutive gseqs. Everything
    /// new is written in one synced batch.
    pub fn append_events(
        &mut self,
        epoch: u64,
        logged_ms: i64,
        events: &[SignedEvent],
        keys: &dyn ChainKeys,
    ) -> Result<AppendOutcome, StoreError> {
        if events.len() > APPEND_BATCH_MAX {
            return Err(StoreError::BatchTooLarge(events.len()));
        }
        let mut pending = PendingBatch::new(self);
        let mut outcome = AppendOutcome::default();
        for event in events {
            let result = match pending.admit(self, event, keys)? {
                Admission::Append(envelope) => {
                    let gseq = pending.push(
                        self,
                        epoch,
                        logged_ms,
                        event.clone(),
                        envelope,
                        &mut outcome,
                    );
                    Appended::New { gseq }
                }
                Admission::Duplicate(gseq) => Appended::Duplicate { gseq },
                Admission::Reject(why) => Appended::Rejected(why),
            };
            outcome.results.push(result);
        }
        self.commit(pending)?;
        Ok(outcome)
    }

    /// Appends entries replicated from the primary, which already carry
    /// their gseq, epoch and chain link. They must continue this log exactly;
    /// anything else is an error and nothing is written.
    pub fn append_replicated(
        &mut self,
        entries: &[LogEntry],
        keys: &dyn ChainKeys,
    ) -> Result<Vec<Option<EventEnvelope>>, StoreError> {
        if entries.len() > APPEND_BATCH_MAX {
            return Err(StoreError::BatchTooLarge(entries.len()));
        }
        let mut pending = PendingBatch::new(self);
        let mut envelopes = Vec::with_capacity(entries.len());
        for entry in entries {
            let gseq = entry.body.gseq;
            let not_contiguous = |problem: String| StoreError::NotContiguous { gseq, problem };
            if gseq != pending.head.gseq + 1 {
                return Err(not_contiguous(format!(
                    "expected gseq {}",
                    pending.head.gseq + 1
                )));
            }
            if entry.prev_hash != pending.head.hash {
                return Err(not_contiguous(
                    "previous-hash link does not match this log".into(),
                ));
            }
            if entry.body.epoch < pending.head.epoch {
                return Err(not_contiguous(format!(
                    "epoch {} is older than {}",
                    entry.body.epoch, pending.head.epoch
                )));
            }
            let envelope = match &entry.body.payload {
                Payload::EpochStarted { primary } => {
                    check_marker(pending.head.epoch, entry.body.epoch, primary)
                        .map_err(not_contiguous)?;
                    None
                }
                Payload::Event {
                    machine_id,
                    machine_seq,
                    event,
                } => {
                    let envelope = match pending.admit(self, event, keys)? {
                        Admission::Append(envelope) => envelope,
                        Admission::Duplicate(_) => {
                            return Err(not_contiguous("event is already logged".into()));
                        }
                        Admission::Reject(why) => return Err(not_contiguous(why.to_string())),
                    };
                    if envelope.machine_id != *machine_id || envelope.machine_seq != *machine_seq {
                        return Err(not_contiguous(
                            "entry and event disagree on machine or sequence".into(),
                        ));
                    }
                    Some(envelope)
                }
            };
            let (sealed, bytes) = LogEntry::seal_body(entry.body.clone(), entry.prev_hash);
            debug_assert_eq!(sealed.hash, entry.hash);
            pending.put_record(self, &sealed, &bytes);
            envelopes.push(envelope);
        }
        self.commit(pending)?;
        Ok(envelopes)
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
        let mut pending = PendingBatch::new(self);
        pending.put_record(self, &entry, &bytes);
        self.commit(pending)?;
        Ok(entry)
    }

    fn commit(&mut self, mut pending: PendingBatch) -> Result<(), StoreError> {
        if pending.entries == 0 {
            return Ok(());
        }
        pending.close_chunk(self);
        let PendingBatch {
            mut batch,
            head,
            machine_heads,
            open_segment,
            closed_segments,
            ..
        } = pending;
        let meta = self.cf(CF_META);
        batch.put_cf(meta, META_HEAD, encode_meta(&head));
        batch.put_cf(meta, META_OPEN_SEGMENT, encode_meta(&open_segment));
        for (machine, machine_head) in &machine_heads {
            batch.put_cf(meta, machine_head_key(machine), encode_meta(machine_head));
        }
        for segment in &closed_segments {
            batch.put_cf(meta, segment_key(segment.index), encode_meta(segment));
        }
        self.write_synced(batch)?;
        self.head = head;
        self.open_segment = open_segment;
        self.machine_heads.extend(machine_heads);
        Ok(())
    }

    /// Reads the plaintext record bytes at `gseq`.
    pub fn record_bytes(&self, gseq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        if gseq == 0 || gseq > self.head.gseq {
            return Ok(None);
        }
        let mut raw = self.db.raw_iterator_cf(self.cf(CF_LOG));
        raw.seek_for_prev(gseq_key(gseq));
        let (Some(first), Some(sealed)) = (raw.key().and_then(be_u64), raw.value()) else {
            raw.status()?;
            return Err(StoreError::entry(gseq, "missing from the log"));
        };
        let records = self.open_chunk(first, sealed)?;
        let index = usize::try_from(gseq - first).unwrap_or(usize::MAX);
        records
            .into_iter()
            .nth(index)
            .map(Some)
            .ok_or_else(|| StoreError::entry(gseq, "missing from the log"))
    }

    /// Opens the chunk stored under `first_gseq` into its records.
    fn open_chunk(&self, first_gseq: u64, sealed: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut plaintext = Vec::new();
        self.open_chunk_plaintext(first_gseq, sealed, &mut plaintext)?;
        let mut records = Vec::new();
        let mut rest = plaintext.as_slice();
        while !rest.is_empty() {
            let (record, after) = next_chunk_record(first_gseq + records.len() as u64, rest)?;
            records.push(record.to_vec());
            rest = after;
        }
        if records.is_empty() {
            return Err(StoreError::entry(first_gseq, "chunk holds no records"));
        }
        Ok(records)
    }

    fn open_chunk_plaintext(
        &self,
        first_gseq: u64,
        sealed: &[u8],
        plaintext: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        self.sealer
            .open_into(&log_aad(first_gseq), sealed, plaintext)
            .map_err(|e| {
                let why = match e {
                    SealError::TooShort => "sealed value is truncated",
                    SealError::Authentication => {
                        "cannot be decrypted: wrong key or corrupted bytes"
                    }
                };
                StoreError::entry(
                    first_gseq,
                    format!("{why} (the chunk starting here is unreadable)"),
                )
            })
    }

    pub fn get(&self, gseq: u64) -> Result<Option<LogEntry>, StoreError> {
        let Some(bytes) = self.record_bytes(gseq)? else {
            return Ok(None);
        };
        decode_entry(gseq, &bytes).map(Some)
    }

    /// The gseq at which a machine's event `seq` was logged.
    pub fn gseq_of(&self, machine: &MachineId, seq: u64) -> Result<Option<u64>, StoreError> {
        Ok(self
            .db
            .get_cf(self.cf(CF_MACHINE_SEQ), machine_seq_key(machine, seq))?
            .and_then(|v| be_u64(&v)))
    }

    /// Calls `visit` with each record `from..=last` in order, borrowing the
    /// bytes from the decrypted chunk; `visit` returns `false` to stop.
    pub fn for_each_record(
        &self,
        from: u64,
        last: u64,
        mut visit: impl FnMut(u64, &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let last = last.min(self.head.gseq);
        if from > last {
            return Ok(());
        }
        let mut raw = self.db.raw_iterator_cf(self.cf(CF_LOG));
        let mut expected = from.max(1);
        raw.seek_for_prev(gseq_key(expected));
        if !raw.valid() {
            raw.seek(gseq_key(expected));
        }
        let mut plaintext = Vec::new();
        while expected <= last {
            let (Some(first), Some(sealed)) = (raw.key().and_then(be_u64), raw.value()) else {
                raw.status()?;
                return Err(StoreError::entry(expected, "missing from the log"));
            };
            if first > expected {
                return Err(StoreError::entry(expected, "missing from the log"));
            }
            self.open_chunk_plaintext(first, sealed, &mut plaintext)?;
            let mut rest = plaintext.as_slice();
            let mut gseq = first;
            while !rest.is_empty() {
                let (record, after) = next_chunk_record(gseq, rest)?;
                rest = after;
                if gseq >= expected {
                    if gseq > last {
                        return Ok(());
                    }
                    if !visit(gseq, record)? {
                        return Ok(());
                    }
                    expected += 1;
                }
                gseq += 1;
            }
            raw.next();
        }
        Ok(())
    }

    /// Iterates plaintext records from `from_gseq` in order. A missing gseq
    /// is reported as an error naming it.
    pub fn records_from(&self, from_gseq: u64) -> RecordIter<'_> {
        let mut raw = self.db.raw_iterator_cf(self.cf(CF_LOG));
        let start = from_gseq.max(1);
        // The chunk holding `start` may begin before it.
        raw.seek_for_prev(gseq_key(start));
        if !raw.valid() {
            raw.seek(gseq_key(start));
        }
        RecordIter {
            store: self,
            raw,
            chunk: std::collections::VecDeque::new(),
            next_gseq: start,
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

    /// Closed segments, oldest first.
    pub fn segments(&self) -> Result<Vec<SegmentSummary>, StoreError> {
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(CF_META),
            IteratorMode::From(META_SEGMENT_PREFIX, Direction::Forward),
        );
        for item in iter {
            let (key, value) = item?;
            if !key.starts_with(META_SEGMENT_PREFIX) {
                break;
            }
            out.push(rmp_serde::from_slice(&value).map_err(|e| StoreError::Meta {
                name: String::from_utf8_lossy(&key).into_owned(),
                problem: e.to_string(),
            })?);
        }
        Ok(out)
    }

    pub fn open_segment(&self) -> &SegmentSummary {
        &self.open_segment
    }

    /// Stores an application value (election state, uplink marks, ...),
    /// durably.
    pub fn put_app_meta<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), app_key(name), encode_meta(value));
        self.write_synced(batch)
    }

    pub fn app_meta<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        self.read_meta(&app_key(name))
    }

    /// Saves a sealed checkpoint taken at `gseq` and prunes old ones.
    pub fn put_checkpoint(&self, gseq: u64, plaintext: &[u8]) -> Result<(), StoreError> {
        let cf = self.cf(CF_CHECKPOINTS);
        let mut batch = WriteBatch::default();
        batch.put_cf(
            cf,
            gseq_key(gseq),
            self.sealer.seal(&checkpoint_aad(gseq), plaintext),
        );
        let existing: Vec<Box<[u8]>> = self
            .db
            .iterator_cf(cf, IteratorMode::Start)
            .map(|item| item.map(|(key, _)| key))
            .collect::<Result<_, _>>()?;
        let excess = (existing.len() + 1).saturating_sub(CHECKPOINTS_KEPT);
        for key in existing.iter().take(excess) {
            batch.delete_cf(cf, key);
        }
        self.write_synced(batch)
    }

    /// The newest checkpoint taken at or before `gseq`.
    pub fn checkpoint_at_or_before(&self, gseq: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let cf = self.cf(CF_CHECKPOINTS);
        let mut iter = self
            .db
            .iterator_cf(cf, IteratorMode::From(&gseq_key(gseq), Direction::Reverse));
        let Some(item) = iter.next() else {
            return Ok(None);
        };
        let (key, value) = item?;
        let at = be_u64(&key).ok_or_else(|| StoreError::Meta {
            name: "checkpoint".into(),
            problem: "bad key".into(),
        })?;
        let plaintext =
            self.sealer
                .open(&checkpoint_aad(at), &value)
                .map_err(|_| StoreError::Meta {
                    name: format!("checkpoint {at}"),
                    problem: "cannot be decrypted".into(),
                })?;
        Ok(Some((at, plaintext)))
    }

    /// Removes every entry after `to_gseq` (a former primary dropping its
    /// uncommitted suffix). Machine heads, index rows, segments and
    /// checkpoints are rolled back in the same synced batch.
    pub fn truncate_after(&mut self, to_gseq: u64) -> Result<u64, StoreError> {
        if to_gseq >= self.head.gseq {
            return Ok(0);
        }
        let mut batch = WriteBatch::default();
        let mut rolled_back: HashMap<MachineId, u64> = HashMap::new();
        let removed = self.head.gseq - to_gseq;
        for item in self.entries_from(to_gseq + 1) {
            let entry = item?;
            batch.delete_cf(self.cf(CF_LOG), gseq_key(entry.body.gseq));
            let Some((machine, seq, _)) = entry.body.machine_event() else {
                continue;
            };
            batch.delete_cf(self.cf(CF_MACHINE_SEQ), machine_seq_key(machine, seq));
            rolled_back
                .entry(machine.clone())
                .and_modify(|first| *first = (*first).min(seq))
                .or_insert(seq);
        }
        let mut new_heads = HashMap::new();
        for (machine, first_removed) in rolled_back {
            let head = self.machine_head_before(&machine, first_removed)?;
            let key = machine_head_key(&machine);
            if head.seq == 0 {
                batch.delete_cf(self.cf(CF_META), key);
            } else {
                batch.put_cf(self.cf(CF_META), key, encode_meta(&head));
            }
            new_heads.insert(machine, head);
        }
        let new_head = match to_gseq {
            0 => Head::default(),
            gseq => {
                let entry = self.get(gseq)?.ok_or_else(|| StoreError::Truncate {
                    to: to_gseq,
                    problem: "entry missing".into(),
                })?;
                Head {
                    gseq,
                    hash: entry.hash,
                    epoch: entry.body.epoch,
                }
            }
        };
        let segment_entries = self.config.segment_entries;
        let keep_segments = to_gseq / segment_entries;
        for segment in self.segments()? {
            if segment.index >= keep_segments {
                batch.delete_cf(self.cf(CF_META), segment_key(segment.index));
            }
        }
        let open_segment = self.rebuild_open_segment(keep_segments, to_gseq)?;
        // Chunks after the cut go; the chunk the cut falls into is rewritten
        // with the records it keeps.
        batch.delete_range_cf(self.cf(CF_LOG), gseq_key(to_gseq + 1), gseq_key(u64::MAX));
        if let Some((first, kept)) = self.chunk_prefix(to_gseq)? {
            batch.put_cf(
                self.cf(CF_LOG),
                gseq_key(first),
                self.seal_chunk(first, &kept),
            );
        }
        let checkpoints = self.cf(CF_CHECKPOINTS);
        batch.delete_range_cf(checkpoints, gseq_key(to_gseq + 1), gseq_key(u64::MAX));
        batch.put_cf(self.cf(CF_META), META_HEAD, encode_meta(&new_head));
        batch.put_cf(
            self.cf(CF_META),
            META_OPEN_SEGMENT,
            encode_meta(&open_segment),
        );
        self.write_synced(batch)?;
        self.head = new_head;
        self.open_segment = open_segment;
        for (machine, head) in new_heads {
            if head.seq == 0 {
                self.machine_heads.remove(&machine);
            } else {
                self.machine_heads.insert(machine, head);
            }
        }
        Ok(removed)
    }

    /// The chunk holding `last_kept` when it also holds later records:
    /// its first gseq and the records up to `last_kept`.
    fn chunk_prefix(&self, last_kept: u64) -> Result<Option<ChunkPrefix>, StoreError> {
        if last_kept == 0 {
            return Ok(None);
        }
        let mut raw = self.db.raw_iterator_cf(self.cf(CF_LOG));
        raw.seek_for_prev(gseq_key(last_kept));
        let (Some(first), Some(sealed)) = (raw.key().and_then(be_u64), raw.value()) else {
            raw.status()?;
            return Err(StoreError::entry(last_kept, "missing from the log"));
        };
        let mut records = self.open_chunk(first, sealed)?;
        let keep = usize::try_from(last_kept - first + 1).unwrap_or(usize::MAX);
        if records.len() <= keep {
            return Ok(None);
        }
        records.truncate(keep);
        Ok(Some((first, records)))
    }

    fn seal_chunk(&self, first_gseq: u64, records: &[Vec<u8>]) -> Vec<u8> {
        let mut plaintext = Vec::new();
        for record in records {
            push_chunk_record(&mut plaintext, record);
        }
        self.sealer.seal(&log_aad(first_gseq), &plaintext)
    }

    fn machine_head_before(
        &self,
        machine: &MachineId,
        seq: u64,
    ) -> Result<MachineHead, StoreError> {
        if seq <= 1 {
            return Ok(MachineHead::default());
        }
        let gseq = self
            .gseq_of(machine, seq - 1)?
            .ok_or_else(|| StoreError::Truncate {
                to: seq,
                problem: format!("index row for {machine} #{} missing", seq - 1),
            })?;
        let entry = self
            .get(gseq)?
            .ok_or_else(|| StoreError::entry(gseq, "missing"))?;
        Ok(MachineHead {
            seq: seq - 1,
            hash: entry
                .body
                .machine_event()
                .map(|(_, _, event)| event.chain_hash)
                .ok_or_else(|| StoreError::entry(gseq, "index row points at an epoch marker"))?,
            gseq,
        })
    }

    fn rebuild_open_segment(&self, index: u64, to_gseq: u64) -> Result<SegmentSummary, StoreError> {
        let mut segment = SegmentSummary {
            index,
            ..SegmentSummary::default()
        };
        let first = index * self.config.segment_entries + 1;
        if to_gseq >= first {
            for item in self.records_from(first) {
                let (gseq, bytes) = item?;
                if gseq > to_gseq {
                    break;
                }
                let entry = decode_entry(gseq, &bytes)?;
                segment.extend(&entry, bytes.len());
            }
        }
        Ok(segment)
    }

    /// Flushes memtables so a following open is fast (used before backups
    /// and by tools).
    pub fn flush(&self) -> Result<(), StoreError> {
        for cf in [CF_LOG, CF_MACHINE_SEQ, CF_META, CF_CHECKPOINTS] {
            self.db.flush_cf(self.cf(cf))?;
        }
        Ok(())
    }

    /// Test support: the first gseq of the chunk holding `gseq`, and its raw
    /// sealed value, so tests can prove that tampering is detected.
    #[doc(hidden)]
    pub fn raw_chunk(&self, gseq: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let mut raw = self.db.raw_iterator_cf(self.cf(CF_LOG));
        raw.seek_for_prev(gseq_key(gseq));
        raw.status()?;
        Ok(raw
            .key()
            .and_then(be_u64)
            .zip(raw.value().map(<[u8]>::to_vec)))
    }

    #[doc(hidden)]
    pub fn overwrite_raw_chunk(
        &self,
        first_gseq: u64,
        value: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        match value {
            Some(value) => batch.put_cf(self.cf(CF_LOG), gseq_key(first_gseq), value),
            None => batch.delete_cf(self.cf(CF_LOG), gseq_key(first_gseq)),
        }
        self.write_synced(batch)
    }

    /// Test support: reseals the chunk holding `gseq` with `record` in its
    /// place (someone holding the key rewriting history).
    #[doc(hidden)]
    pub fn overwrite_record(&self, gseq: u64, record: &[u8]) -> Result<(), StoreError> {
        let Some((first, sealed)) = self.raw_chunk(gseq)? else {
            return Err(StoreError::entry(gseq, "missing from the log"));
        };
        let mut records = self.open_chunk(first, &sealed)?;
        let index = usize::try_from(gseq - first).unwrap_or(usize::MAX);
        let slot = records
            .get_mut(index)
            .ok_or_else(|| StoreError::entry(gseq, "missing from the log"))?;
        *slot = record.to_vec();
        self.overwrite_raw_chunk(first, Some(&self.seal_chunk(first, &records)))
    }
}

fn push_chunk_record(chunk: &mut Vec<u8>, record: &[u8]) {
    let length = u32::try_from(record.len()).expect("records are bounded far below 4 GiB");
    chunk.extend_from_slice(&length.to_le_bytes());
    chunk.extend_from_slice(record);
}

/// Splits the next record off a chunk's plaintext. Lengths come from disk,
/// so every one is bounds-checked.
fn next_chunk_record(gseq: u64, plaintext: &[u8]) -> Result<(&[u8], &[u8]), StoreError> {
    let malformed = || StoreError::entry(gseq, "chunk framing is malformed");
    let (length, rest) = plaintext
        .split_at_checked(CHUNK_LENGTH_BYTES)
        .ok_or_else(malformed)?;
    let length = usize::try_from(u32::from_le_bytes(length.try_into().expect("4 bytes")))
        .map_err(|_| malformed())?;
    rest.split_at_checked(length).ok_or_else(malformed)
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

fn machine_head_key(machine: &MachineId) -> Vec<u8> {
    [META_MACHINE_HEAD_PREFIX, machine.as_str().as_bytes()].concat()
}

fn segment_key(index: u64) -> Vec<u8> {
    [META_SEGMENT_PREFIX, &index.to_be_bytes()[..]].concat()
}

fn app_key(name: &str) -> Vec<u8> {
    [META_APP_PREFIX, name.as_bytes()].concat()
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

/// A write batch being built, with the heads it will leave behind.
struct PendingBatch {
    batch: WriteBatch,
    head: Head,
    machine_heads: HashMap<MachineId, MachineHead>,
    open_segment: SegmentSummary,
    closed_segments: Vec<SegmentSummary>,
    /// (machine, seq) -> (gseq, chain hash) appended in this batch.
    in_batch: HashMap<(MachineId, u64), (u64, Hash32)>,
    entries: usize,
    /// The chunk being filled: its first gseq, record count and plaintext.
    chunk_first: u64,
    chunk_records: usize,
    chunk: Vec<u8>,
}

impl PendingBatch {
    fn new(store: &LogStore) -> PendingBatch {
        PendingBatch {
            batch: WriteBatch::default(),
            head: store.head,
            machine_heads: HashMap::new(),
            open_segment: store.open_segment.clone(),
            closed_segments: Vec::new(),
            in_batch: HashMap::new(),
            entries: 0,
            chunk_first: 0,
            chunk_records: 0,
            chunk: Vec::new(),
        }
    }

    /// Seals the chunk being filled into the write batch.
    fn close_chunk(&mut self, store: &LogStore) {
        if self.chunk_records == 0 {
            return;
        }
        let sealed = store.sealer.seal(&log_aad(self.chunk_first), &self.chunk);
        self.batch
            .put_cf(store.cf(CF_LOG), gseq_key(self.chunk_first), sealed);
        self.chunk.clear();
        self.chunk_records = 0;
    }

    fn machine_head(&self, store: &LogStore, machine: &MachineId) -> MachineHead {
        self.machine_heads
            .get(machine)
            .copied()
            .unwrap_or_else(|| store.machine_head(machine))
    }

    fn admit(
        &self,
        store: &LogStore,
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
                None => store
                    .db
                    .get_cf(store.cf(CF_MACHINE_SEQ), machine_seq_key(machine, seq))?
                    .and_then(|v| Some((be_u64(&v)?, v.get(8..40)?.try_into().ok()?))),
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

    fn push(
        &mut self,
        store: &LogStore,
        epoch: u64,
        logged_ms: i64,
        event: SignedEvent,
        envelope: EventEnvelope,
        outcome: &mut AppendOutcome,
    ) -> u64 {
        let gseq = self.head.gseq + 1;
        let body = EntryBody {
            gseq,
            epoch,
            logged_ms,
            payload: Payload::Event {
                machine_id: envelope.machine_id.clone(),
                machine_seq: envelope.machine_seq,
                event,
            },
        };
        let (entry, bytes) = LogEntry::seal_body(body, self.head.hash);
        self.put_record(store, &entry, &bytes);
        outcome.new_entries.push((entry, envelope));
        gseq
    }

    /// Adds a record whose links were already checked.
    fn put_record(&mut self, store: &LogStore, entry: &LogEntry, bytes: &[u8]) {
        let body = &entry.body;
        debug_assert_eq!(body.gseq, self.head.gseq + 1);
        debug_assert_eq!(entry.prev_hash, self.head.hash);
        if self.chunk_records == 0 {
            self.chunk_first = body.gseq;
        }
        push_chunk_record(&mut self.chunk, bytes);
        self.chunk_records += 1;
        if self.chunk_records >= CHUNK_ENTRIES_MAX || self.chunk.len() >= CHUNK_BYTES_MAX {
            self.close_chunk(store);
        }
        if let Some((machine, seq, event)) = body.machine_event() {
            let mut index_value = [0u8; 40];
            index_value[..8].copy_from_slice(&body.gseq.to_be_bytes());
            index_value[8..].copy_from_slice(&event.chain_hash);
            self.batch.put_cf(
                store.cf(CF_MACHINE_SEQ),
                machine_seq_key(machine, seq),
                index_value,
            );
            self.in_batch
                .insert((machine.clone(), seq), (body.gseq, event.chain_hash));
            self.machine_heads.insert(
                machine.clone(),
                MachineHead {
                    seq,
                    hash: event.chain_hash,
                    gseq: body.gseq,
                },
            );
        }
        self.head = Head {
            gseq: body.gseq,
            hash: entry.hash,
            epoch: body.epoch,
        };
        self.open_segment.extend(entry, bytes.len());
        if body.gseq.is_multiple_of(store.config.segment_entries) {
            let next = SegmentSummary {
                index: self.open_segment.index + 1,
                ..SegmentSummary::default()
            };
            self.closed_segments
                .push(std::mem::replace(&mut self.open_segment, next));
        }
        self.entries += 1;
    }
}

/// Iterates `(gseq, plaintext record)` pairs in order up to the head.
pub struct RecordIter<'a> {
    store: &'a LogStore,
    raw: rocksdb::DBRawIterator<'a>,
    /// Records of the current chunk not yet returned, with their gseq.
    chunk: std::collections::VecDeque<(u64, Vec<u8>)>,
    next_gseq: u64,
    end_gseq: u64,
    failed: bool,
}

impl RecordIter<'_> {
    /// Loads the next chunk, which must hold `next_gseq`.
    fn load_chunk(&mut self) -> Result<(), StoreError> {
        let expected = self.next_gseq;
        if !self.raw.valid() {
            self.raw.status()?;
            return Err(StoreError::entry(expected, "missing from the log"));
        }
        let first = self.raw.key().and_then(be_u64);
        let value = self.raw.value();
        let (Some(first), Some(value)) = (first, value) else {
            return Err(StoreError::entry(expected, "missing from the log"));
        };
        if first > expected {
            return Err(StoreError::entry(expected, "missing from the log"));
        }
        let records = self.store.open_chunk(first, value)?;
        self.raw.next();
        self.chunk = (first..)
            .zip(records)
            .filter(|(gseq, _)| *gseq >= expected)
            .collect();
        if self.chunk.front().is_none_or(|(gseq, _)| *gseq != expected) {
            return Err(StoreError::entry(expected, "missing from the log"));
        }
        Ok(())
    }
}

impl Iterator for RecordIter<'_> {
    type Item = Result<(u64, Vec<u8>), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next_gseq > self.end_gseq {
            return None;
        }
        if self.chunk.is_empty()
            && let Err(error) = self.load_chunk()
        {
            self.failed = true;
            return Some(Err(error));
        }
        let (gseq, record) = self.chunk.pop_front().expect("a loaded chunk is not empty");
        debug_assert_eq!(gseq, self.next_gseq);
        self.next_gseq += 1;
        Some(Ok((gseq, record)))
    }
}

/// The first gseq of a chunk and the records of it that are kept.
type ChunkPrefix = (u64, Vec<Vec<u8>>);

/// Decoded records handed from the reading thread to the consuming one in
/// one message (kept small enough to stay off glibc's mmap path).
const SCAN_BATCH_RECORDS: usize = 256;
/// Batches in flight between the two threads (bounds memory).
const SCAN_QUEUE_BATCHES: usize = 32;

/// Reads records `from..=last` on a helper thread, decrypting each chunk and
/// decoding each record with `decode` there, and hands the results in order
/// to `consume` on the calling thread. Replays and verification use both
/// cores this way. Stops at the first error of either side.
pub fn scan_records<T, E>(
    store: &LogStore,
    from: u64,
    last: u64,
    decode: impl Fn(u64, &[u8]) -> Result<T, StoreError> + Send,
    mut consume: impl FnMut(T) -> Result<(), E>,
) -> Result<(), E>
where
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

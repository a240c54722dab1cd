//! The RocksDB backend: what ships. Column families:
//!
//! ```text
//! log          first gseq (u64 BE)           -> seal(chunk)         consecutive entries
//! machine_seq  len(id) ++ id ++ seq (u64 BE)  -> gseq (u64 BE) ++ chain hash (32)
//! meta         name                           -> MessagePack value   heads, config, segments
//! checkpoints  gseq (u64 BE)                  -> seal(projection)
//! ```
//!
//! Every [`Batch`] is one `WriteBatch` written with `sync = true` (group
//! commit): the entries, their index rows and the new heads land together or
//! not at all, so a crash never exposes half a batch. With `deferred_sync`
//! each batch goes to the WAL without an fsync and [`Backend::sync`] makes
//! them all durable at once.
//!
//! Log values are chunks of up to [`CHUNK_ENTRIES_MAX`] consecutive records
//! (`u32 LE length ++ record`, repeated) sealed with XChaCha20-Poly1305 under
//! the store key, with `"log/" ++ first gseq` as associated data so a value
//! moved to another key fails to open. Sealing per chunk rather than per
//! entry amortises the cipher's per-message setup, which costs more than
//! encrypting a whole small record (see BENCHMARKS.md).

use super::archive::{ArchiveDir, ArchiveMark, resolve_dir};
use super::backend::{
    Backend, Batch, CheckpointSealer, RecordVisitor, Restoration, SealedCheckpoint, StoredState,
    Truncation,
};
use super::{MachineHead, MachineHeads, OpenOptions, SegmentSummary, StoreConfig, StoreError};
use crate::crypto::{Hash32, SealError, Sealer, SecretKey};
use crate::ids::MachineId;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, Direction, IteratorMode, Options,
    WriteBatch, WriteOptions,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const CF_LOG: &str = "log";
const CF_MACHINE_SEQ: &str = "machine_seq";
const CF_META: &str = "meta";
const CF_CHECKPOINTS: &str = "checkpoints";
const COLUMN_FAMILIES: [&str; 4] = [CF_LOG, CF_MACHINE_SEQ, CF_META, CF_CHECKPOINTS];

const META_CONFIG: &[u8] = b"config";
const META_HEAD: &[u8] = b"head";
const META_KEY_CHECK: &[u8] = b"key_check";
const META_OPEN_SEGMENT: &[u8] = b"open_segment";
const META_MACHINE_HEAD_PREFIX: &[u8] = b"mh/";
const META_SEGMENT_PREFIX: &[u8] = b"seg/";
const META_APP_PREFIX: &[u8] = b"app/";
const META_ARCHIVE: &[u8] = b"archive";
const KEY_CHECK_PLAINTEXT: &[u8] = b"vendledger store key check v1";

/// Table files RocksDB keeps open, at most (its `max_open_files`). Its
/// WAL, MANIFEST, LOG and lock files come on top. A replica budgets its
/// file descriptors around this.
pub const OPEN_TABLE_FILES_MAX: u16 = 512;

/// Most records sealed together in one log value.
pub const CHUNK_ENTRIES_MAX: usize = 64;
/// A chunk is closed early once its plaintext reaches this size.
pub const CHUNK_BYTES_MAX: usize = 64 * 1024;
const CHUNK_LENGTH_BYTES: usize = 4;
/// Table files (memtable flushes, compactions) are handed to the disk a
/// megabyte at a time as they are written, not all at their final fsync.
const TABLE_BYTES_PER_SYNC: u64 = 1 << 20;
/// At most this many bytes/s of flush and compaction writes (the WAL is not
/// limited), let through every `TABLE_WRITE_REFILL_US`: a 64 MB flush is
/// spread over ~250 ms in 2.6 MB steps instead of reaching the disk at once.
/// Both keep a round's WAL fsync from queueing behind a whole flush (it
/// did: 25–60 ms syncs on every replica at once at 50,000 events/s; the
/// store needs ~40 MB/s at 200,000 events/s).
const TABLE_WRITE_BYTES_PER_S: i64 = 256 << 20;
const TABLE_WRITE_REFILL_US: i64 = 10_000;

/// The first gseq of a chunk and the records of it that are kept.
type ChunkPrefix = (u64, Vec<Vec<u8>>);

/// One table file of the log: entries are stored in chunks keyed by
/// their first gseq, so the file holds the entries from `first_gseq` up to
/// the end of the chunk that starts at `last_chunk_gseq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableFile {
    /// The file's name in the log directory (`000016.sst`).
    pub name: String,
    pub first_gseq: u64,
    pub last_chunk_gseq: u64,
}

pub struct RocksBackend {
    db: Arc<DB>,
    path: PathBuf,
    sealer: Sealer,
    deferred_sync: bool,
    /// Writes since the last sync (with `deferred_sync`).
    unsynced: bool,
    /// Opened with `OpenOptions::read_only`: every write is refused.
    read_only: bool,
    /// A secondary instance's own directory (its info log), removed when
    /// the backend is dropped; declared after `db` so the database closes
    /// first.
    _secondary_dir: Option<tempfile::TempDir>,
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

fn encode_meta<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec(value).expect("encoding to a Vec cannot fail")
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
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

pub(super) fn push_chunk_record(chunk: &mut Vec<u8>, record: &[u8]) {
    let length = u32::try_from(record.len()).expect("records are bounded far below 4 GiB");
    chunk.extend_from_slice(&length.to_le_bytes());
    chunk.extend_from_slice(record);
}

/// The records at the front of `records` that make one chunk: up to
/// [`CHUNK_ENTRIES_MAX`], closed by the one that brings it to
/// [`CHUNK_BYTES_MAX`] (at least one record if there is any).
fn chunk_records(records: &[Vec<u8>]) -> &[Vec<u8>] {
    let mut bytes = 0;
    for (index, record) in records.iter().take(CHUNK_ENTRIES_MAX).enumerate() {
        bytes += CHUNK_LENGTH_BYTES + record.len();
        if bytes >= CHUNK_BYTES_MAX {
            return &records[..=index];
        }
    }
    &records[..records.len().min(CHUNK_ENTRIES_MAX)]
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

fn open_chunk_plaintext(
    sealer: &Sealer,
    first_gseq: u64,
    sealed: &[u8],
    plaintext: &mut Vec<u8>,
) -> Result<(), StoreError> {
    sealer
        .open_into(&log_aad(first_gseq), sealed, plaintext)
        .map_err(|e| {
            let why = match e {
                SealError::TooShort => "sealed value is truncated",
                SealError::Authentication => "cannot be decrypted: wrong key or corrupted bytes",
            };
            StoreError::entry(
                first_gseq,
                format!("{why} (the chunk starting here is unreadable)"),
            )
        })
}

/// Visits records `from..=last` in order, opening each chunk once. A
/// RocksDB iterator reads one consistent point in time, so a reader on
/// another thread never sees half of a write.
fn read_records(
    db: &DB,
    sealer: &Sealer,
    from: u64,
    last: u64,
    visit: &mut RecordVisitor<'_>,
) -> Result<(), StoreError> {
    if from > last {
        return Ok(());
    }
    let cf = db
        .cf_handle(CF_LOG)
        .expect("column families are created at open");
    let mut raw = db.raw_iterator_cf(cf);
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
        open_chunk_plaintext(sealer, first, sealed, &mut plaintext)?;
        let mut rest = plaintext.as_slice();
        let mut gseq = first;
        while !rest.is_empty() {
            let (record, after) = next_chunk_record(gseq, rest)?;
            rest = after;
            if gseq >= expected {
                if gseq > last || !visit(gseq, record)? {
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

/// Opens the database as `options` ask: read-write, or for reading only.
///
/// A read-only open (RocksDB's `OpenForReadOnly`) writes nothing into the
/// directory: not the info log, not a new MANIFEST, not a flush of the
/// write-ahead log, which it replays in memory. It takes no lock either,
/// but a writer holding the store open may delete files it is reading, so
/// a store another process holds (a running replica) is opened as a
/// secondary instance instead, which is made for that: it keeps every
/// table file open and writes only into a scratch directory of its own.
fn open_db(
    path: &Path,
    options: OpenOptions,
) -> Result<(DB, Option<tempfile::TempDir>), StoreError> {
    let mut db_options = Options::default();
    db_options.create_if_missing(options.create);
    db_options.create_missing_column_families(!options.read_only);
    db_options.set_compression_type(DBCompressionType::None);
    db_options.set_max_open_files(i32::from(OPEN_TABLE_FILES_MAX));
    db_options.set_keep_log_file_num(4);
    db_options.set_write_buffer_size(options.memtable_bytes);
    db_options.set_bytes_per_sync(TABLE_BYTES_PER_SYNC);
    // Fairness 10: RocksDB's default share between high (flush) and low
    // (compaction) priority requests.
    db_options.set_ratelimiter(TABLE_WRITE_BYTES_PER_S, TABLE_WRITE_REFILL_US, 10);
    // Recovery as strict as a clean crash allows. A crash can leave a
    // torn record at the end of the WAL — a write that was never
    // synced, so never acknowledged — which this mode drops; anything
    // wrong before the tail (a flipped byte, a lost block) fails the
    // open instead of being silently cut off as the default mode
    // (point in time) would. Absolute consistency would refuse even
    // the torn tail a power cut leaves, and the replica could not
    // restart at all. A log cut short anyway is caught by the
    // replica's promise file; corrupt table blocks by paranoid checks
    // and the chain check at start.
    db_options.set_wal_recovery_mode(rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords);
    db_options.set_paranoid_checks(true);
    // RocksDB's "default" column family is listed too, with the same
    // options: it is always open, and its write buffer sets how large
    // WAL files are preallocated.
    let descriptors = [rocksdb::DEFAULT_COLUMN_FAMILY_NAME]
        .into_iter()
        .chain(COLUMN_FAMILIES)
        .map(|name| {
            let mut cf_options = Options::default();
            cf_options.set_compression_type(DBCompressionType::None);
            cf_options.set_write_buffer_size(options.memtable_bytes);
            ColumnFamilyDescriptor::new(name, cf_options)
        });
    if !options.read_only {
        return Ok((
            DB::open_cf_descriptors(&db_options, path, descriptors)?,
            None,
        ));
    }
    if !held_by_another_process(path) {
        let db = DB::open_cf_descriptors_read_only(&db_options, path, descriptors, false)?;
        return Ok((db, None));
    }
    let scratch = tempfile::Builder::new()
        .prefix("vendledger-secondary-")
        .tempdir()
        .map_err(|e| StoreError::Live {
            path: path.display().to_string(),
            problem: format!("creating a scratch directory for a secondary instance: {e}"),
        })?;
    // Every table file stays open, so the writer's compactions cannot
    // delete one from under the reader.
    db_options.set_max_open_files(-1);
    let db = DB::open_cf_descriptors_as_secondary(&db_options, path, scratch.path(), descriptors)?;
    Ok((db, Some(scratch)))
}

/// Whether another process holds the RocksDB lock of the store at `path`
/// (RocksDB locks its `LOCK` file with `fcntl`, which `F_GETLK` tests
/// without taking). When that cannot be told, the answer is yes: reading a
/// store as a secondary instance is safe either way.
pub fn held_by_another_process(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let lock = match std::fs::File::open(path.join("LOCK")) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
        Err(_) => return true,
    };
    // SAFETY: an all-zero `flock` is a valid value of this plain C struct.
    let mut probe: libc::flock = unsafe { std::mem::zeroed() };
    probe.l_type = libc::F_WRLCK as libc::c_short;
    probe.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_GETLK reads and writes only `probe`, which outlives the
    // call, on a descriptor `lock` keeps open.
    let result = unsafe { libc::fcntl(lock.as_raw_fd(), libc::F_GETLK, &mut probe) };
    result != 0 || probe.l_type != libc::F_UNLCK as libc::c_short
}

/// Reads a RocksDB store's records from any thread, beside the writer that
/// owns it (the dashboard's log pages). Cheap to clone. Archived entries
/// are read from their archive files, as the store reads them.
#[derive(Clone)]
pub struct RocksReader {
    db: Arc<DB>,
    sealer: Sealer,
    /// The directory holding the store's (archive directories recorded
    /// relative to it are found from here).
    home: Option<PathBuf>,
    /// The archive directory last read, kept for its one-segment cache.
    archive: Arc<std::sync::Mutex<Option<Arc<ArchiveDir>>>>,
}

impl RocksReader {
    /// Visits records `from..=last`; the caller bounds `last` by a tip it
    /// knows is written (the reader does not know the writer's head).
    pub fn for_each_record(
        &self,
        from: u64,
        last: u64,
        visit: &mut RecordVisitor<'_>,
    ) -> Result<(), StoreError> {
        let mut from = from.max(1);
        let mark = read_meta_value::<ArchiveMark>(&self.db, META_ARCHIVE)?;
        if let Some(mark) = mark.filter(|mark| from <= mark.through_gseq) {
            let config = read_meta_value::<StoreConfig>(&self.db, META_CONFIG)?.unwrap_or_default();
            let until = last.min(mark.through_gseq);
            let size = config.segment_entries.max(1);
            let archive = self.archive_dir(&mark);
            if !archive.for_each_record(from, until, size, visit)? || until == last {
                return Ok(());
            }
            from = mark.through_gseq + 1;
        }
        read_records(&self.db, &self.sealer, from, last, visit)
    }

    fn archive_dir(&self, mark: &ArchiveMark) -> Arc<ArchiveDir> {
        let dir = resolve_dir(self.home.as_deref(), &mark.dir);
        let mut kept = self
            .archive
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match kept.as_ref().filter(|archive| archive.dir() == dir) {
            Some(archive) => archive.clone(),
            None => {
                let archive = Arc::new(ArchiveDir::with_sealer(&dir, self.sealer.clone()));
                *kept = Some(archive.clone());
                archive
            }
        }
    }
}

fn read_meta_value<T: DeserializeOwned>(db: &DB, name: &[u8]) -> Result<Option<T>, StoreError> {
    let cf = db
        .cf_handle(CF_META)
        .expect("column families are created at open");
    let Some(bytes) = db.get_cf(cf, name)? else {
        return Ok(None);
    };
    rmp_serde::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::Meta {
            name: String::from_utf8_lossy(name).into_owned(),
            problem: e.to_string(),
        })
}

impl RocksBackend {
    /// A reader for other threads.
    pub fn reader(&self) -> RocksReader {
        RocksReader {
            db: self.db.clone(),
            sealer: self.sealer.clone(),
            home: std::path::absolute(&self.path)
                .ok()
                .and_then(|path| path.parent().map(Path::to_path_buf)),
            archive: Arc::default(),
        }
    }

    /// Opens (or with `options.create`, creates) the RocksDB database at
    /// `path` and checks that `key` is the one it was sealed with.
    pub fn open(
        path: &Path,
        key: &SecretKey,
        options: OpenOptions,
    ) -> Result<RocksBackend, StoreError> {
        assert!(
            !(options.read_only && options.create),
            "a read-only open cannot create a store"
        );
        if !options.create && !path.join("CURRENT").exists() {
            return Err(StoreError::NotFound(path.display().to_string()));
        }
        let (db, secondary_dir) = open_db(path, options)?;
        let mut backend = RocksBackend {
            db: Arc::new(db),
            path: path.to_path_buf(),
            sealer: Sealer::new(key),
            deferred_sync: options.deferred_sync,
            unsynced: false,
            read_only: options.read_only,
            _secondary_dir: secondary_dir,
        };
        backend.check_key()?;
        Ok(backend)
    }

    /// Proves the key on a sealed constant, recording it in a new store.
    fn check_key(&mut self) -> Result<(), StoreError> {
        match self.db.get_cf(self.cf(CF_META), META_KEY_CHECK)? {
            Some(sealed) => self
                .sealer
                .open(META_KEY_CHECK, &sealed)
                .map(drop)
                .map_err(|_| StoreError::WrongKey),
            // A store that crashed before its key check was written holds
            // nothing sealed yet; read-only, there is nothing to prove.
            None if self.read_only => Ok(()),
            None => {
                let mut batch = WriteBatch::default();
                batch.put_cf(
                    self.cf(CF_META),
                    META_KEY_CHECK,
                    self.sealer.seal(META_KEY_CHECK, KEY_CHECK_PLAINTEXT),
                );
                self.write_batch(batch, true)
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn writable(&self) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly(self.path.display().to_string()));
        }
        Ok(())
    }

    /// Whether writes are waiting for a sync (with `deferred_sync`).
    pub fn has_unsynced_writes(&self) -> bool {
        self.unsynced
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    fn read_meta<T: DeserializeOwned>(&self, name: &[u8]) -> Result<Option<T>, StoreError> {
        read_meta_value(&self.db, name)
    }

    /// Writes a batch atomically and durably — or, with `deferred_sync`
    /// and unless `force_sync`, atomically now and durably at the next sync.
    fn write_batch(&mut self, batch: WriteBatch, force_sync: bool) -> Result<(), StoreError> {
        self.writable()?;
        let sync = force_sync || !self.deferred_sync;
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.db.write_opt(batch, &options)?;
        if !sync {
            self.unsynced = true;
        }
        Ok(())
    }

    fn load_machine_heads(&self) -> Result<MachineHeads, StoreError> {
        let mut heads = MachineHeads::default();
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
            heads.insert(id, head);
        }
        Ok(heads)
    }

    fn seal_chunk(&self, first_gseq: u64, records: &[Vec<u8>]) -> Vec<u8> {
        let bytes = records.iter().map(|r| CHUNK_LENGTH_BYTES + r.len()).sum();
        self.sealer
            .seal_written(&log_aad(first_gseq), bytes, |plaintext| {
                for record in records {
                    push_chunk_record(plaintext, record);
                }
            })
    }

    /// Adds the batch's records to `rocks` as sealed chunks.
    fn put_chunks(&self, rocks: &mut WriteBatch, batch: &Batch) {
        let mut first = 0;
        while first < batch.records.len() {
            let records = chunk_records(&batch.records[first..]);
            let first_gseq = batch.first_gseq + first as u64;
            let sealed = self.seal_chunk(first_gseq, records);
            rocks.put_cf(self.cf(CF_LOG), gseq_key(first_gseq), sealed);
            first += records.len();
        }
    }

    fn put_index_rows(&self, rocks: &mut WriteBatch, batch: &Batch) {
        for row in &batch.index {
            let mut value = [0u8; 40];
            value[..8].copy_from_slice(&row.gseq.to_be_bytes());
            value[8..].copy_from_slice(&row.chain_hash);
            rocks.put_cf(
                self.cf(CF_MACHINE_SEQ),
                machine_seq_key(&row.machine, row.seq),
                value,
            );
        }
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
        open_chunk_plaintext(&self.sealer, first_gseq, sealed, plaintext)
    }

    /// The chunk holding `last_kept` when it also holds later records:
    /// its first gseq and the records up to `last_kept`.
    fn chunk_prefix(&self, last_kept: u64) -> Result<Option<ChunkPrefix>, StoreError> {
        if last_kept == 0 {
            return Ok(None);
        }
        let Some((first, sealed)) = self.raw_chunk(last_kept)? else {
            return Err(StoreError::entry(last_kept, "missing from the log"));
        };
        let mut records = self.open_chunk(first, &sealed)?;
        let keep = usize::try_from(last_kept - first + 1).unwrap_or(usize::MAX);
        if records.len() <= keep {
            return Ok(None);
        }
        records.truncate(keep);
        Ok(Some((first, records)))
    }

    /// The first gseq of the chunk holding `gseq`, and its raw sealed value.
    fn raw_chunk(&self, gseq: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let mut raw = self.db.raw_iterator_cf(self.cf(CF_LOG));
        raw.seek_for_prev(gseq_key(gseq));
        raw.status()?;
        Ok(raw
            .key()
            .and_then(be_u64)
            .zip(raw.value().map(<[u8]>::to_vec)))
    }

    /// The log's table files and the entries each holds, for saying which
    /// entries a damaged file costs (`vendctl verify`).
    pub fn log_table_files(&self) -> Result<Vec<TableFile>, StoreError> {
        let gseq = |key: Option<Vec<u8>>| key.as_deref().and_then(be_u64);
        Ok(self
            .db
            .live_files()?
            .into_iter()
            .filter(|file| file.column_family_name == CF_LOG)
            .filter_map(|file| {
                Some(TableFile {
                    name: file.name.trim_start_matches('/').to_owned(),
                    first_gseq: gseq(file.start_key)?,
                    last_chunk_gseq: gseq(file.end_key)?,
                })
            })
            .collect())
    }

    /// Flushes memtables so a following open is fast (used before backups
    /// and by tools).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.writable()?;
        for cf in COLUMN_FAMILIES {
            self.db.flush_cf(self.cf(cf))?;
        }
        Ok(())
    }
}

impl Backend for RocksBackend {
    fn load(&self) -> Result<Option<StoredState>, StoreError> {
        let Some(config) = self.read_meta::<StoreConfig>(META_CONFIG)? else {
            return Ok(None);
        };
        Ok(Some(StoredState {
            config,
            head: self.read_meta(META_HEAD)?.unwrap_or_default(),
            open_segment: self.read_meta(META_OPEN_SEGMENT)?.unwrap_or_default(),
            machine_heads: self.load_machine_heads()?,
            archived: self.read_meta(META_ARCHIVE)?,
        }))
    }

    fn init(&mut self, config: &StoreConfig) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), META_CONFIG, encode_meta(config));
        self.write_batch(batch, true)
    }

    fn write(&mut self, batch: &Batch) -> Result<(), StoreError> {
        let mut rocks = WriteBatch::default();
        self.put_chunks(&mut rocks, batch);
        self.put_index_rows(&mut rocks, batch);
        let meta = self.cf(CF_META);
        rocks.put_cf(meta, META_HEAD, encode_meta(&batch.head));
        rocks.put_cf(meta, META_OPEN_SEGMENT, encode_meta(&batch.open_segment));
        for (machine, head) in &batch.machine_heads {
            rocks.put_cf(meta, machine_head_key(machine), encode_meta(head));
        }
        for segment in &batch.closed_segments {
            rocks.put_cf(meta, segment_key(segment.index), encode_meta(segment));
        }
        self.write_batch(rocks, false)
    }

    fn truncate(&mut self, cut: &Truncation) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        // Chunks after the cut go; the chunk the cut falls into is rewritten
        // with the records it keeps.
        batch.delete_range_cf(
            self.cf(CF_LOG),
            gseq_key(cut.to_gseq + 1),
            gseq_key(u64::MAX),
        );
        let archived_through = self
            .read_meta::<ArchiveMark>(META_ARCHIVE)?
            .map_or(0, |mark| mark.through_gseq);
        let prefix = match cut.to_gseq > archived_through {
            true => self.chunk_prefix(cut.to_gseq)?,
            // The live log starts a chunk right after the archived entries.
            false => None,
        };
        if let Some((first, kept)) = prefix {
            batch.put_cf(
                self.cf(CF_LOG),
                gseq_key(first),
                self.seal_chunk(first, &kept),
            );
        }
        for (machine, seq) in &cut.removed_index {
            batch.delete_cf(self.cf(CF_MACHINE_SEQ), machine_seq_key(machine, *seq));
        }
        let meta = self.cf(CF_META);
        for (machine, head) in &cut.machine_heads {
            match head {
                Some(head) => batch.put_cf(meta, machine_head_key(machine), encode_meta(head)),
                None => batch.delete_cf(meta, machine_head_key(machine)),
            }
        }
        for segment in self.segments()? {
            if segment.index >= cut.first_removed_segment {
                batch.delete_cf(meta, segment_key(segment.index));
            }
        }
        batch.delete_range_cf(
            self.cf(CF_CHECKPOINTS),
            gseq_key(cut.to_gseq + 1),
            gseq_key(u64::MAX),
        );
        batch.put_cf(meta, META_HEAD, encode_meta(&cut.head));
        batch.put_cf(meta, META_OPEN_SEGMENT, encode_meta(&cut.open_segment));
        self.write_batch(batch, false)
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        if self.unsynced {
            self.db.flush_wal(true)?;
            self.unsynced = false;
        }
        Ok(())
    }

    fn for_each_record(
        &self,
        from: u64,
        last: u64,
        visit: &mut RecordVisitor<'_>,
    ) -> Result<(), StoreError> {
        read_records(&self.db, &self.sealer, from, last, visit)
    }

    fn index_row(
        &self,
        machine: &MachineId,
        seq: u64,
    ) -> Result<Option<(u64, Hash32)>, StoreError> {
        Ok(self
            .db
            .get_cf(self.cf(CF_MACHINE_SEQ), machine_seq_key(machine, seq))?
            .and_then(|v| Some((be_u64(&v)?, v.get(8..40)?.try_into().ok()?))))
    }

    fn segments(&self) -> Result<Vec<SegmentSummary>, StoreError> {
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

    fn app_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(CF_META), app_key(name))?)
    }

    fn put_app_meta(&mut self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), app_key(name), value);
        self.write_batch(batch, false)
    }

    fn checkpoint_sealer(&self) -> CheckpointSealer {
        CheckpointSealer::at_rest(self.sealer.clone())
    }

    fn put_checkpoint(
        &mut self,
        checkpoint: SealedCheckpoint,
        keep: usize,
    ) -> Result<(), StoreError> {
        let cf = self.cf(CF_CHECKPOINTS);
        let mut batch = WriteBatch::default();
        batch.put_cf(cf, gseq_key(checkpoint.gseq), checkpoint.value);
        // Only the keys: the iterator of `iterator_cf` copies every value,
        // here every kept checkpoint (the whole projection each), at each
        // checkpoint.
        let mut existing: Vec<Vec<u8>> = Vec::new();
        let mut raw = self.db.raw_iterator_cf(cf);
        raw.seek_to_first();
        while let Some(key) = raw.key() {
            existing.push(key.to_vec());
            raw.next();
        }
        raw.status()?;
        drop(raw);
        let excess = (existing.len() + 1).saturating_sub(keep);
        for key in existing.iter().take(excess) {
            batch.delete_cf(cf, key);
        }
        self.write_batch(batch, false)
    }

    fn archive_cut(&mut self, mark: &ArchiveMark) -> Result<(), StoreError> {
        let first_live = mark.through_gseq + 1;
        let mut batch = WriteBatch::default();
        // The chunk holding the first live entry may start among the
        // archived ones: it is resealed with the records it keeps, under
        // the first live gseq, so every archived record leaves the log.
        if let Some((first, sealed)) = self.raw_chunk(first_live)?
            && first < first_live
        {
            let records = self.open_chunk(first, &sealed)?;
            let skip = usize::try_from(first_live - first).unwrap_or(usize::MAX);
            if records.len() > skip {
                let kept = self.seal_chunk(first_live, &records[skip..]);
                batch.put_cf(self.cf(CF_LOG), gseq_key(first_live), kept);
            }
        }
        batch.delete_range_cf(self.cf(CF_LOG), gseq_key(0), gseq_key(first_live));
        batch.put_cf(self.cf(CF_META), META_ARCHIVE, encode_meta(mark));
        self.write_batch(batch, true)?;
        // Reclaims the space now rather than at some later compaction, so
        // the live log really is smaller when the command returns.
        let log = self.cf(CF_LOG);
        self.db
            .compact_range_cf(log, None::<&[u8]>, Some(&gseq_key(first_live)[..]));
        Ok(())
    }

    fn restore(&mut self, restoration: &Restoration) -> Result<(), StoreError> {
        let mut rocks = WriteBatch::default();
        let batch = Batch {
            first_gseq: restoration.first_gseq,
            records: restoration.records.clone(),
            ..Batch::default()
        };
        self.put_chunks(&mut rocks, &batch);
        match &restoration.mark {
            Some(mark) => rocks.put_cf(self.cf(CF_META), META_ARCHIVE, encode_meta(mark)),
            None => rocks.delete_cf(self.cf(CF_META), META_ARCHIVE),
        }
        self.write_batch(rocks, true)
    }

    fn checkpoint_at_or_before(&self, gseq: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
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
        let plaintext = self.checkpoint_sealer().open(at, value.into_vec())?;
        Ok(Some((at, plaintext)))
    }
}

/// Hooks that rewrite history behind the store's back, so tests can prove
/// that tampering and damage are detected. Not part of the product.
#[cfg(any(test, feature = "testing"))]
impl RocksBackend {
    /// The first gseq of the chunk holding `gseq`, and its raw sealed value.
    pub fn testing_raw_chunk(&self, gseq: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.raw_chunk(gseq)
    }

    /// Replaces (or with `None` deletes) the raw value of a chunk, durably.
    pub fn testing_overwrite_raw_chunk(
        &mut self,
        first_gseq: u64,
        value: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        match value {
            Some(value) => batch.put_cf(self.cf(CF_LOG), gseq_key(first_gseq), value),
            None => batch.delete_cf(self.cf(CF_LOG), gseq_key(first_gseq)),
        }
        self.write_batch(batch, true)
    }

    /// Reseals the chunk holding `gseq` with `record` in its place (someone
    /// holding the key rewriting history).
    pub fn testing_overwrite_record(&mut self, gseq: u64, record: &[u8]) -> Result<(), StoreError> {
        let Some((first, sealed)) = self.raw_chunk(gseq)? else {
            return Err(StoreError::entry(gseq, "missing from the log"));
        };
        let mut records = self.open_chunk(first, &sealed)?;
        let index = usize::try_from(gseq - first).unwrap_or(usize::MAX);
        let slot = records
            .get_mut(index)
            .ok_or_else(|| StoreError::entry(gseq, "missing from the log"))?;
        *slot = record.to_vec();
        let value = self.seal_chunk(first, &records);
        self.testing_overwrite_raw_chunk(first, Some(&value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_close_at_the_entry_count_or_at_the_record_that_fills_them() {
        let small = vec![vec![7u8; 100]; CHUNK_ENTRIES_MAX + 3];
        assert_eq!(chunk_records(&small).len(), CHUNK_ENTRIES_MAX);
        assert_eq!(chunk_records(&small[CHUNK_ENTRIES_MAX..]).len(), 3);
        assert!(chunk_records(&[]).is_empty());
        // 4 + 30,000 bytes each: the third record brings it past 64 KiB.
        let large = vec![vec![7u8; 30_000]; 5];
        assert_eq!(chunk_records(&large).len(), 3);
        let huge = vec![vec![7u8; CHUNK_BYTES_MAX]; 2];
        assert_eq!(chunk_records(&huge).len(), 1);
    }

    #[test]
    fn a_chunk_sealed_in_place_opens_to_its_records() {
        let sealer = Sealer::new(&SecretKey::generate());
        let records = vec![b"first".to_vec(), Vec::new(), vec![9u8; 300]];
        let sealed = sealer.seal_written(&log_aad(41), 0, |plaintext| {
            for record in &records {
                push_chunk_record(plaintext, record);
            }
        });
        let mut plaintext = Vec::new();
        open_chunk_plaintext(&sealer, 41, &sealed, &mut plaintext).unwrap();
        let mut rest = plaintext.as_slice();
        let mut opened = Vec::new();
        while !rest.is_empty() {
            let (record, after) = next_chunk_record(41, rest).unwrap();
            opened.push(record.to_vec());
            rest = after;
        }
        assert_eq!(opened, records);
        assert!(open_chunk_plaintext(&sealer, 42, &sealed, &mut plaintext).is_err());
    }
}

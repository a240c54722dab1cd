//! The storage interface under [`LogStore`](super::LogStore).
//!
//! The store's rules — dedup by (machine, seq), machine chains, the fleet
//! chain, epoch markers, segments, what a truncation rolls back — live once,
//! in `LogStore`. A [`Backend`] only keeps what it is given: it writes a
//! [`Batch`] or a [`Truncation`] atomically, reads records back in order,
//! answers index lookups and keeps small metadata. Two backends exist:
//! RocksDB ([`super::rocks::RocksBackend`], sealed at rest, what ships) and
//! memory ([`super::memory::MemBackend`], for the deterministic simulation,
//! which opens thousands of stores per test run). A model-based test holds
//! the two against each other.

use super::archive::ArchiveMark;
use super::{Head, MachineHead, MachineHeads, SegmentSummary, StoreConfig, StoreError};
use crate::crypto::{Hash32, Sealer};
use crate::ids::MachineId;

/// Turns an encoded checkpoint into the value its backend stores:
/// XChaCha20-Poly1305 for RocksDB, the bytes as they are for memory. It
/// can be taken to another thread, so a large projection is encoded and
/// sealed off the thread that appends (10,000 machines make ~5 MB, whose
/// sealing took 3–50 ms of a round).
#[derive(Clone)]
pub struct CheckpointSealer {
    sealer: Option<Sealer>,
}

/// A checkpoint in the form its backend stores. Only a
/// [`CheckpointSealer`] makes one, so a backend is never handed a
/// checkpoint its own sealer did not seal.
pub struct SealedCheckpoint {
    pub(crate) gseq: u64,
    pub(crate) value: Vec<u8>,
}

impl CheckpointSealer {
    /// Seals checkpoints at rest under `sealer`.
    pub fn at_rest(sealer: Sealer) -> CheckpointSealer {
        CheckpointSealer {
            sealer: Some(sealer),
        }
    }

    /// Keeps checkpoints as encoded.
    pub fn plain() -> CheckpointSealer {
        CheckpointSealer { sealer: None }
    }

    /// Seals the checkpoint taken at `gseq` that `write` encodes (about
    /// `bytes_hint` long), written straight into the sealed value.
    pub fn seal(
        &self,
        gseq: u64,
        bytes_hint: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> SealedCheckpoint {
        let value = match &self.sealer {
            Some(sealer) => sealer.seal_written(&checkpoint_aad(gseq), bytes_hint, write),
            None => {
                let mut value = Vec::with_capacity(bytes_hint);
                write(&mut value);
                value
            }
        };
        SealedCheckpoint { gseq, value }
    }

    /// The encoded checkpoint taken at `gseq`, from its stored `value`.
    pub fn open(&self, gseq: u64, value: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        match &self.sealer {
            Some(sealer) => {
                sealer
                    .open(&checkpoint_aad(gseq), &value)
                    .map_err(|_| StoreError::Meta {
                        name: format!("checkpoint {gseq}"),
                        problem: "cannot be decrypted".into(),
                    })
            }
            None => Ok(value),
        }
    }
}

/// What a sealed checkpoint's authentication binds it to: its gseq.
fn checkpoint_aad(gseq: u64) -> [u8; 19] {
    let mut aad = [0u8; 19];
    aad[..11].copy_from_slice(b"checkpoint/");
    aad[11..].copy_from_slice(&gseq.to_be_bytes());
    aad
}

/// What a store persisted about itself, loaded at open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredState {
    pub config: StoreConfig,
    pub head: Head,
    pub open_segment: SegmentSummary,
    pub machine_heads: MachineHeads,
    /// What was moved into archive files, if anything.
    pub archived: Option<ArchiveMark>,
}

/// One machine event's row in the (machine, seq) index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexRow {
    pub machine: MachineId,
    pub seq: u64,
    pub gseq: u64,
    pub chain_hash: Hash32,
}

/// Entries to append, already checked by the store, with everything that
/// must change together with them. A backend writes all of it or nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The gseq of the first record; the records are consecutive.
    pub first_gseq: u64,
    /// Plaintext record bytes (see `record.rs`).
    pub records: Vec<Vec<u8>>,
    pub index: Vec<IndexRow>,
    /// The log's head after the batch.
    pub head: Head,
    /// Machines whose head moved, with their new head.
    pub machine_heads: Vec<(MachineId, MachineHead)>,
    /// The open segment after the batch.
    pub open_segment: SegmentSummary,
    /// Segments the batch closed, oldest first.
    pub closed_segments: Vec<SegmentSummary>,
}

impl Batch {
    /// The gseq of the last record (`first_gseq - 1` when empty).
    pub fn last_gseq(&self) -> u64 {
        self.first_gseq + self.records.len() as u64 - 1
    }
}

/// Everything a truncation after `to_gseq` changes, worked out by the
/// store. A backend applies all of it or nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Truncation {
    /// Entries after this gseq go (and checkpoints taken after it).
    pub to_gseq: u64,
    /// Index rows of the removed entries.
    pub removed_index: Vec<(MachineId, u64)>,
    /// Machines whose head rolls back: their new head, or `None` when none
    /// of their events remain.
    pub machine_heads: Vec<(MachineId, Option<MachineHead>)>,
    pub head: Head,
    /// Closed segments from this index on are reopened or removed.
    pub first_removed_segment: u64,
    pub open_segment: SegmentSummary,
}

/// Archived records put back in front of the live log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restoration {
    pub first_gseq: u64,
    pub records: Vec<Vec<u8>>,
    /// What stays archived (`None`: nothing).
    pub mark: Option<ArchiveMark>,
}

/// Called with each `(gseq, record bytes)` in order; returns `false` to stop.
pub type RecordVisitor<'a> = dyn FnMut(u64, &[u8]) -> Result<bool, StoreError> + 'a;

/// A place to keep a log. Implementations must make each `write` and
/// `truncate` atomic, and durable no later than the next successful
/// `sync` (immediately, unless the store was opened with deferred sync).
pub trait Backend: Send + Sync {
    /// The persisted state, or `None` for a store never initialised.
    fn load(&self) -> Result<Option<StoredState>, StoreError>;
    /// Records the configuration of a new store, durably.
    fn init(&mut self, config: &StoreConfig) -> Result<(), StoreError>;
    fn write(&mut self, batch: &Batch) -> Result<(), StoreError>;
    fn truncate(&mut self, cut: &Truncation) -> Result<(), StoreError>;
    /// Makes every write so far durable.
    fn sync(&mut self) -> Result<(), StoreError>;
    /// Visits records `from..=last` in order (`last` is at most the head).
    /// A gseq the backend does not hold is an error naming it.
    fn for_each_record(
        &self,
        from: u64,
        last: u64,
        visit: &mut RecordVisitor<'_>,
    ) -> Result<(), StoreError>;
    /// The gseq and chain hash at which `machine`'s event `seq` is logged.
    fn index_row(&self, machine: &MachineId, seq: u64)
    -> Result<Option<(u64, Hash32)>, StoreError>;
    /// Closed segments, oldest first.
    fn segments(&self) -> Result<Vec<SegmentSummary>, StoreError>;
    fn app_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn put_app_meta(&mut self, name: &str, value: &[u8]) -> Result<(), StoreError>;
    /// How this backend seals the checkpoints it is given.
    fn checkpoint_sealer(&self) -> CheckpointSealer;
    /// Saves a checkpoint sealed by [`Backend::checkpoint_sealer`], keeping
    /// at most `keep` of them.
    fn put_checkpoint(
        &mut self,
        checkpoint: SealedCheckpoint,
        keep: usize,
    ) -> Result<(), StoreError>;
    /// The newest checkpoint taken at or before `gseq`, opened.
    fn checkpoint_at_or_before(&self, gseq: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError>;
    /// Removes the records up to `mark.through_gseq` (the store wrote them
    /// to archive files first) and records the mark, in one durable write.
    /// Index rows, heads, segment summaries and checkpoints stay.
    fn archive_cut(&mut self, mark: &ArchiveMark) -> Result<(), StoreError>;
    /// Puts archived records back in front of the live log and records
    /// what stays archived, in one durable write.
    fn restore(&mut self, restoration: &Restoration) -> Result<(), StoreError>;
}

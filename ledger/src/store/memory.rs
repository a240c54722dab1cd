//! The in-memory backend, for the deterministic simulation and tests.
//!
//! A [`MemDisk`] is the "disk": the history of every write made to it and
//! how much of that history is synced. A [`MemBackend`] opened on a disk
//! replays the history into its working state. A simulated crash
//! ([`MemDisk::crash`]) keeps the synced writes and, like a real disk, any
//! prefix of the writes made since — whole writes, never part of one — so
//! the simulation sees exactly the outcomes RocksDB's WAL allows. Opening
//! thousands of RocksDB instances per test run would take hours; the
//! model-based test holds this backend to the RocksDB one.

use super::archive::ArchiveMark;
use super::backend::{
    Backend, Batch, CheckpointSealer, IndexRow, RecordVisitor, Restoration, SealedCheckpoint,
    StoredState, Truncation,
};
use super::{SegmentSummary, StoreConfig, StoreError};
use crate::crypto::Hash32;
use crate::ids::MachineId;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// One write as the disk recorded it.
#[derive(Clone, Debug)]
enum Write {
    Init(StoreConfig),
    Batch(Batch),
    Truncate(Truncation),
    AppMeta(String, Vec<u8>),
    Checkpoint {
        gseq: u64,
        bytes: Vec<u8>,
        keep: usize,
    },
    ArchiveCut(ArchiveMark),
    Restore(Restoration),
}

/// Everything ever written to a simulated disk, in order.
#[derive(Debug, Default)]
pub struct MemDiskState {
    writes: Vec<Write>,
    /// Writes `..synced` are durable.
    synced: usize,
}

/// A shared handle to a simulated disk: the simulation keeps one, the
/// backend another, and a crash acts on what the backend left behind.
#[derive(Clone, Debug, Default)]
pub struct MemDisk(Arc<Mutex<MemDiskState>>);

impl MemDisk {
    pub fn new() -> MemDisk {
        MemDisk::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemDiskState> {
        // A panic while holding the lock is a test failure already; the
        // history it guards is still consistent (pushes are atomic).
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes made since the last sync.
    pub fn unsynced_writes(&self) -> usize {
        let state = self.lock();
        state.writes.len() - state.synced
    }

    /// A crash: the synced writes survive, and of the writes made since the
    /// last sync the first `keep_unsynced` do (a WAL keeps a prefix of
    /// whole writes). The backend that wrote them must be dropped.
    pub fn crash(&self, keep_unsynced: usize) {
        let mut state = self.lock();
        let keep = (state.synced + keep_unsynced).min(state.writes.len());
        state.writes.truncate(keep);
        state.synced = keep;
    }

    /// Damage a real disk can do, which the store must detect rather than
    /// serve: the last `writes` synced writes are lost (a cut WAL).
    pub fn lose_synced_writes(&self, writes: usize) {
        let mut state = self.lock();
        let keep = state.writes.len().saturating_sub(writes);
        state.writes.truncate(keep);
        state.synced = state.synced.min(keep);
    }

    /// Damage: one byte of one stored record is flipped (`pick` chooses
    /// which, stably). Returns whether there was a record to damage.
    pub fn corrupt_a_record(&self, pick: usize) -> bool {
        let mut state = self.lock();
        let records: Vec<(usize, usize)> = state
            .writes
            .iter()
            .enumerate()
            .filter_map(|(index, write)| match write {
                Write::Batch(batch) => Some((index, batch.records.len())),
                _ => None,
            })
            .flat_map(|(index, count)| (0..count).map(move |record| (index, record)))
            .collect();
        let Some(&(write, record)) = records.get(pick % records.len().max(1)) else {
            return false;
        };
        let Write::Batch(batch) = &mut state.writes[write] else {
            return false;
        };
        let bytes = &mut batch.records[record];
        let at = pick % bytes.len().max(1);
        if let Some(byte) = bytes.get_mut(at) {
            *byte ^= 0x20;
        }
        true
    }
}

/// The working state rebuilt from a disk's writes.
#[derive(Clone, Debug, Default)]
struct Contents {
    state: Option<StoredState>,
    /// Records from gseq `archived + 1` on.
    records: Vec<Vec<u8>>,
    /// Entries moved to archive files (no longer held here).
    archived: u64,
    index: BTreeMap<(MachineId, u64), (u64, Hash32)>,
    segments: BTreeMap<u64, SegmentSummary>,
    app_meta: BTreeMap<String, Vec<u8>>,
    checkpoints: BTreeMap<u64, Vec<u8>>,
}

impl Contents {
    fn apply(&mut self, write: &Write) {
        match write {
            Write::Init(config) => {
                self.state = Some(StoredState {
                    config: config.clone(),
                    ..StoredState::default()
                });
            }
            Write::Batch(batch) => self.apply_batch(batch),
            Write::Truncate(cut) => self.apply_truncation(cut),
            Write::AppMeta(name, value) => {
                self.app_meta.insert(name.clone(), value.clone());
            }
            Write::Checkpoint { gseq, bytes, keep } => {
                self.checkpoints.insert(*gseq, bytes.clone());
                while self.checkpoints.len() > *keep {
                    self.checkpoints.pop_first();
                }
            }
            Write::ArchiveCut(cut) => self.apply_archive_cut(cut),
            Write::Restore(restoration) => self.apply_restoration(restoration),
        }
    }

    fn apply_batch(&mut self, batch: &Batch) {
        debug_assert_eq!(
            batch.first_gseq,
            self.archived + self.records.len() as u64 + 1
        );
        self.records.extend(batch.records.iter().cloned());
        for IndexRow {
            machine,
            seq,
            gseq,
            chain_hash,
        } in &batch.index
        {
            self.index
                .insert((machine.clone(), *seq), (*gseq, *chain_hash));
        }
        for segment in &batch.closed_segments {
            self.segments.insert(segment.index, segment.clone());
        }
        let state = self.state.get_or_insert_with(StoredState::default);
        state.head = batch.head;
        state.open_segment = batch.open_segment.clone();
        for (machine, head) in &batch.machine_heads {
            state.machine_heads.insert(machine.clone(), *head);
        }
    }

    fn apply_archive_cut(&mut self, mark: &ArchiveMark) {
        let through = mark.through_gseq;
        let drop = usize::try_from(through - self.archived).unwrap_or(usize::MAX);
        self.records.drain(..drop.min(self.records.len()));
        self.archived = through;
        self.state.get_or_insert_with(StoredState::default).archived = Some(mark.clone());
    }

    fn apply_restoration(&mut self, restoration: &Restoration) {
        let Restoration {
            first_gseq,
            records,
            mark,
        } = restoration;
        debug_assert_eq!(first_gseq + records.len() as u64, self.archived + 1);
        self.records.splice(0..0, records.iter().cloned());
        self.archived = first_gseq - 1;
        self.state.get_or_insert_with(StoredState::default).archived = mark.clone();
    }

    fn apply_truncation(&mut self, cut: &Truncation) {
        let keep = usize::try_from(cut.to_gseq.saturating_sub(self.archived)).unwrap_or(usize::MAX);
        self.records.truncate(keep);
        for (machine, seq) in &cut.removed_index {
            self.index.remove(&(machine.clone(), *seq));
        }
        self.segments
            .retain(|&index, _| index < cut.first_removed_segment);
        self.checkpoints.retain(|&gseq, _| gseq <= cut.to_gseq);
        let state = self.state.get_or_insert_with(StoredState::default);
        state.head = cut.head;
        state.open_segment = cut.open_segment.clone();
        for (machine, head) in &cut.machine_heads {
            match head {
                Some(head) => state.machine_heads.insert(machine.clone(), *head),
                None => state.machine_heads.remove(machine),
            };
        }
    }
}

/// A log kept in memory, on a [`MemDisk`].
#[derive(Debug)]
pub struct MemBackend {
    disk: MemDisk,
    contents: Contents,
    deferred_sync: bool,
}

impl MemBackend {
    /// Opens the store on `disk`, as it is after its last crash.
    pub fn open(disk: &MemDisk, deferred_sync: bool) -> MemBackend {
        let mut contents = Contents::default();
        for write in &disk.lock().writes {
            contents.apply(write);
        }
        MemBackend {
            disk: disk.clone(),
            contents,
            deferred_sync,
        }
    }

    /// A fresh store on a disk of its own.
    pub fn new() -> MemBackend {
        MemBackend::open(&MemDisk::new(), false)
    }

    pub fn disk(&self) -> &MemDisk {
        &self.disk
    }

    fn record(&mut self, write: Write) {
        self.contents.apply(&write);
        let mut disk = self.disk.lock();
        disk.writes.push(write);
        if !self.deferred_sync {
            disk.synced = disk.writes.len();
        }
    }
}

impl Default for MemBackend {
    fn default() -> Self {
        MemBackend::new()
    }
}

impl Backend for MemBackend {
    fn load(&self) -> Result<Option<StoredState>, StoreError> {
        Ok(self.contents.state.clone())
    }

    fn init(&mut self, config: &StoreConfig) -> Result<(), StoreError> {
        self.record(Write::Init(config.clone()));
        let mut disk = self.disk.lock();
        disk.synced = disk.writes.len();
        Ok(())
    }

    fn write(&mut self, batch: &Batch) -> Result<(), StoreError> {
        self.record(Write::Batch(batch.clone()));
        Ok(())
    }

    fn truncate(&mut self, cut: &Truncation) -> Result<(), StoreError> {
        self.record(Write::Truncate(cut.clone()));
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        let mut disk = self.disk.lock();
        disk.synced = disk.writes.len();
        Ok(())
    }

    fn for_each_record(
        &self,
        from: u64,
        last: u64,
        visit: &mut RecordVisitor<'_>,
    ) -> Result<(), StoreError> {
        for gseq in from.max(1)..=last {
            let record = gseq
                .checked_sub(self.contents.archived + 1)
                .and_then(|index| usize::try_from(index).ok())
                .and_then(|index| self.contents.records.get(index))
                .ok_or_else(|| StoreError::entry(gseq, "missing from the log"))?;
            if !visit(gseq, record)? {
                break;
            }
        }
        Ok(())
    }

    fn index_row(
        &self,
        machine: &MachineId,
        seq: u64,
    ) -> Result<Option<(u64, Hash32)>, StoreError> {
        Ok(self.contents.index.get(&(machine.clone(), seq)).copied())
    }

    fn segments(&self) -> Result<Vec<SegmentSummary>, StoreError> {
        Ok(self.contents.segments.values().cloned().collect())
    }

    fn app_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.contents.app_meta.get(name).cloned())
    }

    fn put_app_meta(&mut self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.record(Write::AppMeta(name.to_owned(), value.to_vec()));
        Ok(())
    }

    fn checkpoint_sealer(&self) -> CheckpointSealer {
        CheckpointSealer::plain()
    }

    fn put_checkpoint(
        &mut self,
        checkpoint: SealedCheckpoint,
        keep: usize,
    ) -> Result<(), StoreError> {
        self.record(Write::Checkpoint {
            gseq: checkpoint.gseq,
            bytes: checkpoint.value,
            keep,
        });
        Ok(())
    }

    fn archive_cut(&mut self, mark: &ArchiveMark) -> Result<(), StoreError> {
        self.record(Write::ArchiveCut(mark.clone()));
        self.sync()
    }

    fn restore(&mut self, restoration: &Restoration) -> Result<(), StoreError> {
        self.record(Write::Restore(restoration.clone()));
        self.sync()
    }

    fn checkpoint_at_or_before(&self, gseq: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        Ok(self
            .contents
            .checkpoints
            .range(..=gseq)
            .next_back()
            .map(|(&at, bytes)| (at, bytes.clone())))
    }
}

//! Appends held in memory until the round's sync, so a round makes one
//! backend write however many appends it made.
//!
//! A follower appends what each replication datagram carries (a handful of
//! records) as it arrives; written one by one, every datagram cost a
//! RocksDB write of its own — a WAL record and its checksum, a `write`
//! call, a sealed chunk, and the head, open segment and machine heads
//! written again. With [`LogStore::stage_writes`](super::LogStore::stage_writes)
//! the store keeps the appends of a round here, merged into one
//! [`Batch`], and hands it to the backend at `sync_deferred`: one write,
//! then the fsync.
//!
//! Nothing changes for anyone who reads the store: its head, machine heads
//! and recent links move at once, and its reads (records, index rows,
//! closed segments) look here before the backend. Durability is what it
//! was with deferred sync: nothing that depends on a staged append leaves
//! before `sync_deferred` returns, and a crash before it loses whole
//! appends from the end. Any other backend write (election state, a
//! checkpoint, a truncation, archiving) writes the staged appends first,
//! so the backend sees every write in the order it was made. A failed write
//! keeps them staged, to be written again at the next sync.

use super::Seq;
use super::backend::Batch;
use super::{FastMap, MachineHeads, SegmentSummary};
use crate::crypto::Hash32;
use crate::ids::MachineId;

/// Records staged at most; an append beyond it writes what is staged
/// first (bounds the memory a round's appends hold).
pub const STAGED_RECORDS_MAX: usize = 16_384;

/// The appends staged since the last backend write.
#[derive(Debug, Default)]
pub(super) struct Staged {
    batch: Batch,
    machine_heads: MachineHeads,
    /// (machine, seq) -> (gseq, chain hash) of the staged events.
    index: FastMap<Seq, (u64, Hash32)>,
}

impl Staged {
    /// Moves in the next append (its first record follows the last
    /// staged), leaving the append's vectors and map empty with their room,
    /// for the store to build the next append in.
    pub(super) fn extend(
        &mut self,
        batch: &mut Batch,
        machine_heads: &MachineHeads,
        index: &mut FastMap<Seq, (u64, Hash32)>,
    ) {
        debug_assert_eq!(batch.first_gseq, self.batch.last_gseq() + 1);
        self.batch.records.append(&mut batch.records);
        self.batch.index.append(&mut batch.index);
        self.batch.head = batch.head;
        self.batch.open_segment = batch.open_segment.clone();
        self.batch
            .closed_segments
            .append(&mut batch.closed_segments);
        self.machine_heads
            .extend(machine_heads.iter().map(|(m, h)| (m.clone(), *h)));
        self.index.extend(index.drain());
    }

    /// Empties it for reuse, keeping what its vectors and maps hold room
    /// for.
    pub(super) fn clear(&mut self) {
        self.batch.records.clear();
        self.batch.index.clear();
        self.batch.machine_heads.clear();
        self.batch.closed_segments.clear();
        self.machine_heads.clear();
        self.index.clear();
    }

    /// Starts a new (or [`clear`](Self::clear)ed) stage with its first
    /// append, as [`extend`](Self::extend) does.
    pub(super) fn restart(
        &mut self,
        batch: &mut Batch,
        machine_heads: &MachineHeads,
        index: &mut FastMap<Seq, (u64, Hash32)>,
    ) {
        debug_assert!(self.batch.records.is_empty() && self.index.is_empty());
        self.batch.first_gseq = batch.first_gseq;
        self.extend(batch, machine_heads, index);
    }

    pub(super) fn records(&self) -> usize {
        self.batch.records.len()
    }

    pub(super) fn first_gseq(&self) -> u64 {
        self.batch.first_gseq
    }

    /// The staged record at `gseq`.
    pub(super) fn record(&self, gseq: u64) -> Option<&[u8]> {
        let at = gseq.checked_sub(self.batch.first_gseq)?;
        self.batch
            .records
            .get(usize::try_from(at).ok()?)
            .map(Vec::as_slice)
    }

    /// The staged event `seq` of `machine`: its gseq and chain hash.
    pub(super) fn index_row(&self, machine: &MachineId, seq: u64) -> Option<(u64, Hash32)> {
        self.index.get(&(machine.clone(), seq)).copied()
    }

    pub(super) fn closed_segments(&self) -> &[SegmentSummary] {
        &self.batch.closed_segments
    }

    /// The one batch to write: everything staged, with the machines'
    /// newest heads (sorted, so every backend sees the same write).
    pub(super) fn batch(&mut self) -> &Batch {
        self.batch.machine_heads = super::sorted_heads(&self.machine_heads);
        &self.batch
    }
}

//! Storage faults for the simulation: a [`Backend`] wrapper that fails
//! writes and syncs, and crashes the replica at a chosen write or sync,
//! all decided by the seed. It also watches every truncation, so the
//! simulation can prove no committed entry is ever cut.

use ledger::crypto::Hash32;
use ledger::ids::MachineId;
use ledger::store::archive::ArchiveMark;
use ledger::store::backend::{
    Backend, Batch, CheckpointSealer, RecordVisitor, Restoration, SealedCheckpoint, StoredState,
    Truncation,
};
use ledger::store::memory::MemBackend;
use ledger::store::promise::{Promise, PromiseError, PromiseStore};
use ledger::store::{SegmentSummary, StoreConfig, StoreError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::{Arc, Mutex, MutexGuard};

/// What the simulation wants the disk of one replica to do.
#[derive(Debug)]
pub struct FaultPlan {
    rng: ChaCha8Rng,
    /// Chance (percent) that a write fails and writes nothing.
    pub write_fail_percent: u32,
    /// Chance (percent) that a sync fails.
    pub sync_fail_percent: u32,
    /// Crash when this many more writes have been made (0: at the next).
    crash_in_writes: Option<u32>,
    /// Crash at the next sync instead of completing it.
    crash_at_sync: bool,
    /// Set when a planned crash happened: the replica must be dropped.
    pub crashed: bool,
    /// Faults are off (while the replica opens, and after the fault phase).
    pub enabled: bool,
    pub writes_failed: u64,
    pub syncs_failed: u64,
    /// Truncations that cut an entry the simulation saw committed.
    pub committed_truncated: Vec<String>,
}

/// A fault plan shared by the simulation and a replica's backend.
#[derive(Clone, Debug)]
pub struct Faults {
    plan: Arc<Mutex<FaultPlan>>,
    /// Hash of every committed gseq as first committed anywhere (shared by
    /// all replicas' plans).
    committed: Arc<Mutex<Vec<Hash32>>>,
}

impl Faults {
    pub fn new(seed: u64, committed: Arc<Mutex<Vec<Hash32>>>) -> Faults {
        Faults {
            plan: Arc::new(Mutex::new(FaultPlan {
                rng: ChaCha8Rng::seed_from_u64(seed),
                write_fail_percent: 0,
                sync_fail_percent: 0,
                crash_in_writes: None,
                crash_at_sync: false,
                crashed: false,
                enabled: false,
                writes_failed: 0,
                syncs_failed: 0,
                committed_truncated: Vec::new(),
            })),
            committed,
        }
    }

    pub fn plan(&self) -> MutexGuard<'_, FaultPlan> {
        self.plan.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Arms a crash part way through the coming round: at one of its next
    /// few writes, or at its sync.
    pub fn crash_during_round(&self) {
        let mut plan = self.plan();
        if plan.rng.random_bool(0.3) {
            plan.crash_at_sync = true;
        } else {
            let writes = plan.rng.random_range(0..3);
            plan.crash_in_writes = Some(writes);
        }
    }

    /// Clears what a crash left behind, for the restarted replica.
    pub fn reset(&self) {
        let mut plan = self.plan();
        plan.crashed = false;
        plan.crash_in_writes = None;
        plan.crash_at_sync = false;
    }
}

impl FaultPlan {
    /// Decides the fate of a write: `Err` when it fails or crashes.
    fn before_write(&mut self) -> Result<(), StoreError> {
        if self.crashed {
            return Err(StoreError::Io("the simulated replica has crashed".into()));
        }
        if !self.enabled {
            return Ok(());
        }
        if let Some(left) = self.crash_in_writes {
            if left == 0 {
                self.crash_in_writes = None;
                self.crashed = true;
                return Err(StoreError::Io("simulated crash during a write".into()));
            }
            self.crash_in_writes = Some(left - 1);
        }
        if self.rng.random_range(0..100) < self.write_fail_percent {
            self.writes_failed += 1;
            return Err(StoreError::Io("simulated write failure".into()));
        }
        Ok(())
    }

    fn before_sync(&mut self) -> Result<(), StoreError> {
        if self.crashed {
            return Err(StoreError::Io("the simulated replica has crashed".into()));
        }
        if !self.enabled {
            return Ok(());
        }
        if self.crash_at_sync {
            self.crash_at_sync = false;
            self.crashed = true;
            return Err(StoreError::Io("simulated crash during a sync".into()));
        }
        if self.rng.random_range(0..100) < self.sync_fail_percent {
            self.syncs_failed += 1;
            return Err(StoreError::Io("simulated sync failure".into()));
        }
        Ok(())
    }
}

/// A memory backend with a fault plan in front of it.
pub struct FaultyBackend {
    inner: MemBackend,
    faults: Faults,
}

impl FaultyBackend {
    pub fn new(inner: MemBackend, faults: Faults) -> FaultyBackend {
        FaultyBackend { inner, faults }
    }

    /// Before a truncation: does it cut an entry that is committed?
    fn check_truncation(&self, cut: &Truncation) {
        let Ok(Some(state)) = self.inner.load() else {
            return;
        };
        let committed = self
            .faults
            .committed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let last = state.head.gseq.min(committed.len() as u64);
        let mut problem = None;
        let _ = self
            .inner
            .for_each_record(cut.to_gseq + 1, last, &mut |gseq, record| {
                let hash = *blake3::hash(record).as_bytes();
                let index = usize::try_from(gseq - 1).expect("small");
                if committed[index] == hash {
                    problem = Some(format!(
                        "truncating to {} drops committed gseq {gseq}",
                        cut.to_gseq
                    ));
                    return Ok(false);
                }
                Ok(true)
            });
        drop(committed);
        if let Some(problem) = problem {
            self.faults.plan().committed_truncated.push(problem);
        }
    }
}

impl Backend for FaultyBackend {
    fn load(&self) -> Result<Option<StoredState>, StoreError> {
        self.inner.load()
    }

    fn init(&mut self, config: &StoreConfig) -> Result<(), StoreError> {
        self.inner.init(config)
    }

    fn write(&mut self, batch: &Batch) -> Result<(), StoreError> {
        self.faults.plan().before_write()?;
        self.inner.write(batch)
    }

    fn truncate(&mut self, cut: &Truncation) -> Result<(), StoreError> {
        self.faults.plan().before_write()?;
        self.check_truncation(cut);
        self.inner.truncate(cut)
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        // Like RocksDB's, a sync with nothing to sync does no I/O.
        if self.inner.disk().unsynced_writes() > 0 {
            self.faults.plan().before_sync()?;
        }
        self.inner.sync()
    }

    fn for_each_record(
        &self,
        from: u64,
        last: u64,
        visit: &mut RecordVisitor<'_>,
    ) -> Result<(), StoreError> {
        self.inner.for_each_record(from, last, visit)
    }

    fn index_row(
        &self,
        machine: &MachineId,
        seq: u64,
    ) -> Result<Option<(u64, Hash32)>, StoreError> {
        self.inner.index_row(machine, seq)
    }

    fn segments(&self) -> Result<Vec<SegmentSummary>, StoreError> {
        self.inner.segments()
    }

    fn app_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.app_meta(name)
    }

    fn put_app_meta(&mut self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.faults.plan().before_write()?;
        self.inner.put_app_meta(name, value)
    }

    fn checkpoint_sealer(&self) -> CheckpointSealer {
        self.inner.checkpoint_sealer()
    }

    fn put_checkpoint(
        &mut self,
        checkpoint: SealedCheckpoint,
        keep: usize,
    ) -> Result<(), StoreError> {
        self.faults.plan().before_write()?;
        self.inner.put_checkpoint(checkpoint, keep)
    }

    fn checkpoint_at_or_before(&self, gseq: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.inner.checkpoint_at_or_before(gseq)
    }

    fn archive_cut(&mut self, mark: &ArchiveMark) -> Result<(), StoreError> {
        self.faults.plan().before_write()?;
        self.inner.archive_cut(mark)
    }

    fn restore(&mut self, restoration: &Restoration) -> Result<(), StoreError> {
        self.faults.plan().before_write()?;
        self.inner.restore(restoration)
    }
}

/// A replica's promises in the simulation: memory that survives its crashes
/// and is never touched by the damage done to its log.
#[derive(Clone, Debug, Default)]
pub struct MemPromises(Arc<Mutex<Option<Promise>>>);

impl PromiseStore for MemPromises {
    fn load(&mut self) -> Result<Option<Promise>, PromiseError> {
        Ok(*self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn save(&mut self, promise: &Promise) -> Result<(), PromiseError> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(*promise);
        Ok(())
    }
}

//! [`Ledger`]: the event store together with its live projection and the
//! checkpoints that make reopening cheap; plus [`StreamSigner`], which a
//! machine uses to chain its own events.

use crate::crypto::{CHAIN_KEY_CONTEXT, Hash32, SecretKey, chain_hash};
use crate::event::EventEnvelope;
use crate::ids::MachineId;
use crate::keys::ChainKeys;
use crate::projection::Projection;
use crate::store::archive::Codec;
use crate::store::backend::{Backend, CheckpointSealer, SealedCheckpoint};
use crate::store::record::{Content, GENESIS_HASH, LogEntry, ReplicatedRecord, SignedEvent};
use crate::store::rocks::RocksBackend;
use crate::store::{
    AppendOutcome, ArchiveReport, LogStore, OpenOptions, Proposed, SegmentSummary, StoreError,
};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A checkpoint is taken after this many new entries by default.
pub const CHECKPOINT_EVERY_ENTRIES: u64 = 65_536;

/// Signs a machine's events into its keyed hash chain. Clone it to sign
/// tentatively and keep the original until the signed events are stored.
#[derive(Clone)]
pub struct StreamSigner {
    chain_key: SecretKey,
    head_hash: Hash32,
}

impl StreamSigner {
    /// `head_hash` is the chain hash of the machine's last event
    /// ([`GENESIS_HASH`] before the first).
    pub fn new(machine_key: &SecretKey, head_hash: Hash32) -> StreamSigner {
        StreamSigner {
            chain_key: machine_key.derive(CHAIN_KEY_CONTEXT),
            head_hash,
        }
    }

    pub fn genesis(machine_key: &SecretKey) -> StreamSigner {
        StreamSigner::new(machine_key, GENESIS_HASH)
    }

    pub fn sign(&mut self, envelope: &EventEnvelope) -> SignedEvent {
        let bytes = envelope.encode();
        let hash = chain_hash(&self.chain_key, &self.head_hash, &bytes);
        self.head_hash = hash;
        SignedEvent {
            bytes,
            chain_hash: hash,
        }
    }

    /// Advances over an event signed earlier and read back from storage, if
    /// it continues this chain; returns whether it did. The stored bytes
    /// are hashed as they are (not re-encoded), so events written by an
    /// older format version still chain.
    pub fn follow(&mut self, signed: &SignedEvent) -> bool {
        let hash = chain_hash(&self.chain_key, &self.head_hash, &signed.bytes);
        if hash != signed.chain_hash {
            return false;
        }
        self.head_hash = hash;
        true
    }

    pub fn head_hash(&self) -> Hash32 {
        self.head_hash
    }
}

/// Where a rebuild stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    End,
    /// Up to and including this gseq.
    Gseq(u64),
    /// Events that happened at their machine no later than this time (ms).
    MachineTime(i64),
}

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    gseq: u64,
    #[serde(with = "serde_bytes")]
    hash: Hash32,
    projection: Projection,
}

/// The store plus the projection kept current with every append.
pub struct Ledger<B: Backend = RocksBackend> {
    store: LogStore<B>,
    projection: Projection,
    checkpoint_every: u64,
    last_checkpoint_gseq: u64,
    /// Whether checkpoints are encoded on their own thread.
    checkpoint_in_background: bool,
    /// The checkpoint being encoded there, at most one.
    encoding: Option<Encoding>,
    /// How long the last checkpoint stored was, to size the next one's
    /// buffer once.
    checkpoint_bytes: usize,
}

/// A checkpoint of the projection as of `gseq` (whose record hash is
/// `hash`), being encoded and sealed on its own thread.
struct Encoding {
    gseq: u64,
    hash: Hash32,
    sealed: std::thread::JoinHandle<SealedCheckpoint>,
}

impl Ledger<RocksBackend> {
    /// Opens the RocksDB store at `path` (see [`Ledger::with_store`]).
    pub fn open(path: &Path, key: &SecretKey, options: OpenOptions) -> Result<Ledger, StoreError> {
        Ledger::with_store(LogStore::open(path, key, options)?)
    }
}

impl<B: Backend> Ledger<B> {
    /// Takes an opened store and brings the projection up to date from the
    /// newest valid checkpoint, so a restart does not replay from zero.
    pub fn with_store(store: LogStore<B>) -> Result<Ledger<B>, StoreError> {
        let head = store.head().gseq;
        let (projection, last_checkpoint_gseq) = match load_checkpoint(&store, head)? {
            Some(projection) => {
                let at = projection.as_of_gseq;
                (projection, at)
            }
            None => (Projection::default(), 0),
        };
        let mut ledger = Ledger {
            store,
            projection,
            checkpoint_every: CHECKPOINT_EVERY_ENTRIES,
            last_checkpoint_gseq,
            checkpoint_in_background: false,
            encoding: None,
            checkpoint_bytes: 0,
        };
        ledger.catch_up()?;
        Ok(ledger)
    }

    fn catch_up(&mut self) -> Result<(), StoreError> {
        let from = self.projection.as_of_gseq + 1;
        let mut projection = std::mem::take(&mut self.projection);
        let result = apply_range(&self.store, &mut projection, from, Until::End, &mut |_| {});
        self.projection = projection;
        result
    }

    pub fn set_checkpoint_every(&mut self, entries: u64) {
        self.checkpoint_every = entries.max(1);
    }

    /// Encodes the periodic checkpoints on a thread of their own and
    /// stores each at a later append, once encoded, instead of during the
    /// append that made one due. A replica's rounds do this: encoding the
    /// projection of 10,000 machines held a round for 100 to 180 ms every
    /// 65,536 entries, on all three replicas at once. Off by default, so
    /// that the simulation stays deterministic.
    pub fn set_checkpoint_in_background(&mut self, on: bool) {
        self.checkpoint_in_background = on;
    }

    pub fn store(&self) -> &LogStore<B> {
        &self.store
    }

    /// The store, for what changes no entry: application metadata, syncs,
    /// tests' hooks. Entries change only through the ledger's own methods,
    /// which keep the projection current.
    pub fn store_mut(&mut self) -> &mut LogStore<B> {
        &mut self.store
    }

    pub fn projection(&self) -> &Projection {
        &self.projection
    }

    /// See [`LogStore::append_events`]; new entries are applied to the
    /// projection (an entry that does not apply is recorded as a projection
    /// issue, never dropped from the log).
    pub fn append_events(
        &mut self,
        epoch: u64,
        logged_ms: i64,
        events: &[SignedEvent],
        keys: &dyn ChainKeys,
    ) -> Result<AppendOutcome, StoreError> {
        let outcome = self.store.append_events(epoch, logged_ms, events, keys)?;
        self.apply_new_entries(&outcome)?;
        Ok(outcome)
    }

    /// See [`LogStore::append`]: a primary's proposal of machine events and
    /// operator records, applied to the projection like everything else.
    pub fn append(
        &mut self,
        epoch: u64,
        logged_ms: i64,
        entries: &[Proposed],
        keys: &dyn ChainKeys,
    ) -> Result<AppendOutcome, StoreError> {
        let outcome = self.store.append(epoch, logged_ms, entries, keys)?;
        self.apply_new_entries(&outcome)?;
        Ok(outcome)
    }

    fn apply_new_entries(&mut self, outcome: &AppendOutcome) -> Result<(), StoreError> {
        for (entry, content) in &outcome.new_entries {
            self.apply_to_projection(entry.body.gseq, content);
        }
        self.maybe_checkpoint()
    }

    /// See [`LogStore::append_replicated`].
    pub fn append_replicated(
        &mut self,
        records: &[ReplicatedRecord],
        keys: &dyn ChainKeys,
    ) -> Result<(), StoreError> {
        let contents = self.store.append_replicated(records, keys)?;
        for (record, content) in records.iter().zip(&contents) {
            self.apply_to_projection(record.gseq(), content);
        }
        self.maybe_checkpoint()
    }

    /// See [`LogStore::append_marker`].
    pub fn append_marker(
        &mut self,
        epoch: u64,
        logged_ms: i64,
        primary: &str,
    ) -> Result<LogEntry, StoreError> {
        let entry = self.store.append_marker(epoch, logged_ms, primary)?;
        self.apply_to_projection(entry.body.gseq, &Content::Marker);
        self.maybe_checkpoint()?;
        Ok(entry)
    }

    fn apply_to_projection(&mut self, gseq: u64, content: &Content) {
        apply_content(&mut self.projection, gseq, content);
    }

    /// Drops entries after `to_gseq` and rebuilds the projection.
    pub fn truncate_after(&mut self, to_gseq: u64) -> Result<u64, StoreError> {
        let removed = self.store.truncate_after(to_gseq)?;
        if removed > 0 {
            // A checkpoint being encoded may be of entries just removed.
            self.encoding = None;
            self.projection = load_checkpoint(&self.store, to_gseq)?.unwrap_or_default();
            self.last_checkpoint_gseq = self.projection.as_of_gseq;
            self.catch_up()?;
        }
        Ok(removed)
    }

    fn maybe_checkpoint(&mut self) -> Result<(), StoreError> {
        if let Some(encoding) = self.encoding.take_if(|e| e.sealed.is_finished()) {
            self.store_encoded(encoding)?;
        }
        let due = self.projection.as_of_gseq >= self.last_checkpoint_gseq + self.checkpoint_every;
        if !due || self.encoding.is_some() {
            return Ok(());
        }
        if self.checkpoint_in_background {
            self.start_encoding()
        } else {
            self.checkpoint()
        }
    }

    /// Waits (up to 10 s) until a checkpoint being encoded is encoded; the
    /// next append stores it.
    #[cfg(test)]
    pub(crate) fn wait_for_encoding(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self
            .encoding
            .as_ref()
            .is_some_and(|e| !e.sealed.is_finished())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "encoding a checkpoint took 10 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Encodes and seals a checkpoint at the head on a new thread, from a
    /// copy of the projection (machine states are shared, so the copy is
    /// cheap: ~0.5 ms for 10,000 machines).
    fn start_encoding(&mut self) -> Result<(), StoreError> {
        let head = self.store.head();
        let checkpoint = Checkpoint {
            gseq: head.gseq,
            hash: head.hash,
            projection: self.projection.clone(),
        };
        let sealer = self.store.checkpoint_sealer();
        let bytes_hint = self.checkpoint_bytes;
        let spawned = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || seal_checkpoint(&sealer, &checkpoint, bytes_hint));
        match spawned {
            Ok(sealed) => {
                self.encoding = Some(Encoding {
                    gseq: head.gseq,
                    hash: head.hash,
                    sealed,
                });
                Ok(())
            }
            // No thread to be had: encode it here, as without the option.
            Err(_) => self.checkpoint(),
        }
    }

    /// Stores a checkpoint encoded in the background, if it is still of
    /// this log and newer than the last one stored.
    fn store_encoded(&mut self, encoding: Encoding) -> Result<(), StoreError> {
        // An encoder that panicked stored nothing; the next one is due now.
        let Ok(sealed) = encoding.sealed.join() else {
            return Ok(());
        };
        let current = self.store.entry_hash(encoding.gseq)? == Some(encoding.hash);
        if !current || encoding.gseq <= self.last_checkpoint_gseq {
            return Ok(());
        }
        self.put_checkpoint(sealed)
    }

    fn put_checkpoint(&mut self, sealed: SealedCheckpoint) -> Result<(), StoreError> {
        let (gseq, bytes) = (sealed.gseq, sealed.value.len());
        self.store.put_checkpoint(sealed)?;
        self.last_checkpoint_gseq = gseq;
        self.checkpoint_bytes = bytes;
        Ok(())
    }

    /// Saves the projection as a checkpoint at the current head.
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        let head = self.store.head();
        if head.gseq == 0 || head.gseq == self.last_checkpoint_gseq {
            return Ok(());
        }
        debug_assert_eq!(self.projection.as_of_gseq, head.gseq);
        let checkpoint = Checkpoint {
            gseq: head.gseq,
            hash: head.hash,
            projection: self.projection.clone(),
        };
        let sealer = self.store.checkpoint_sealer();
        self.put_checkpoint(seal_checkpoint(&sealer, &checkpoint, self.checkpoint_bytes))
    }

    /// The projection as of `until`, starting from the nearest checkpoint
    /// when the limit is a gseq, otherwise from the current one or zero.
    pub fn projection_as_of(&self, until: Until) -> Result<Projection, StoreError> {
        match until {
            Until::End => Ok(self.projection.clone()),
            Until::Gseq(gseq) if gseq >= self.projection.as_of_gseq => Ok(self.projection.clone()),
            Until::Gseq(gseq) => {
                let mut projection = load_checkpoint(&self.store, gseq)?.unwrap_or_default();
                let from = projection.as_of_gseq + 1;
                apply_range(&self.store, &mut projection, from, until, &mut |_| {})?;
                Ok(projection)
            }
            Until::MachineTime(_) => rebuild(&self.store, until, &mut |_| {}),
        }
    }

    /// Archives the closed segments `0..segments` into `dir` (see
    /// [`LogStore::archive_segments`]), after saving a checkpoint at the
    /// cut, so a restart and "as of now" replays never read the archive.
    pub fn archive(
        &mut self,
        segments: u64,
        dir: &Path,
        key: &SecretKey,
        codec: Codec,
        progress: &mut dyn FnMut(&SegmentSummary),
    ) -> Result<ArchiveReport, StoreError> {
        let through = segments.saturating_mul(self.store.config().segment_entries);
        let head = self.store.head().gseq;
        let newest = self.store.checkpoint_at_or_before(head)?.map(|(at, _)| at);
        let needed = newest.is_none_or(|at| at < through);
        if needed && through >= self.store.first_live_gseq() && through <= head {
            self.checkpoint_at(through)?;
        }
        self.store
            .archive_segments(segments, dir, key, codec, progress)
    }

    /// Saves a checkpoint of the projection as of `gseq`.
    fn checkpoint_at(&mut self, gseq: u64) -> Result<(), StoreError> {
        let projection = self.projection_as_of(Until::Gseq(gseq))?;
        let hash = self
            .store
            .entry_hash(gseq)?
            .ok_or_else(|| StoreError::Entry {
                gseq,
                problem: "missing from the log".into(),
            })?;
        let checkpoint = Checkpoint {
            gseq,
            hash,
            projection,
        };
        let sealed = seal_checkpoint(&self.store.checkpoint_sealer(), &checkpoint, 0);
        self.store.put_checkpoint(sealed)
    }

    /// Takes the machine id's state from the projection (a machine's own
    /// ledger holds a single machine).
    pub fn machine_state(&self, machine: &MachineId) -> Option<&crate::state::MachineState> {
        self.projection.machines.get(machine).map(|state| &**state)
    }

    pub fn into_store(self) -> LogStore<B> {
        self.store
    }
}

/// Applies what one entry carries. An entry that does not apply is
/// recorded as a projection issue; the log keeps it.
fn apply_content(projection: &mut Projection, gseq: u64, content: &Content) {
    match content {
        Content::Event(envelope) => {
            let _ = projection.apply(gseq, envelope);
        }
        Content::Operator(record) => {
            let _ = projection.apply_operator(gseq, record);
        }
        Content::Marker => projection.skip(gseq),
    }
}

/// A checkpoint is a zstd frame of its MessagePack encoding: 10,000
/// machines' projection is 5.2 MB encoded and 0.8 MB compressed at level
/// 1, which takes the encoding thread 2–8 ms and spares the round's write
/// and the next sync 4.4 MB. Checkpoints stored before were MessagePack
/// alone, which starts with an array's marker, never with zstd's magic
/// number; they still load.
const CHECKPOINT_ZSTD_LEVEL: i32 = 1;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// Encodes and compresses `checkpoint` straight into the value `sealer`
/// seals.
fn seal_checkpoint(
    sealer: &CheckpointSealer,
    checkpoint: &Checkpoint,
    bytes_hint: usize,
) -> SealedCheckpoint {
    sealer.seal(checkpoint.gseq, bytes_hint, |out| {
        let start = out.len();
        if compress_checkpoint(out, checkpoint).is_err() {
            // zstd only fails without memory for its context: the plain
            // encoding is as valid, only larger.
            out.truncate(start);
            rmp_serde::encode::write(out, checkpoint).expect("encoding to a Vec cannot fail");
        }
    })
}

fn compress_checkpoint(out: &mut Vec<u8>, checkpoint: &Checkpoint) -> std::io::Result<()> {
    let mut encoder = zstd::stream::write::Encoder::new(out, CHECKPOINT_ZSTD_LEVEL)?;
    rmp_serde::encode::write(&mut encoder, checkpoint).map_err(std::io::Error::other)?;
    encoder.finish().map(|_| ())
}

/// A stored checkpoint, compressed or from before checkpoints were.
fn decode_checkpoint(bytes: &[u8]) -> Option<Checkpoint> {
    if bytes.starts_with(&ZSTD_MAGIC) {
        let plain = zstd::stream::decode_all(bytes).ok()?;
        rmp_serde::from_slice(&plain).ok()
    } else {
        rmp_serde::from_slice(bytes).ok()
    }
}

pub(crate) fn load_checkpoint<B: Backend>(
    store: &LogStore<B>,
    at_or_before: u64,
) -> Result<Option<Projection>, StoreError> {
    let Some((gseq, bytes)) = store.checkpoint_at_or_before(at_or_before)? else {
        return Ok(None);
    };
    // A checkpoint that does not decode, or whose hash no longer matches the
    // log (the log was truncated and rewritten), is ignored: the projection
    // is rebuilt from the log, which is the source of truth.
    let Some(checkpoint) = decode_checkpoint(&bytes) else {
        return Ok(None);
    };
    let matches = store
        .entry_hash(gseq)?
        .is_some_and(|hash| hash == checkpoint.hash && checkpoint.projection.as_of_gseq == gseq);
    Ok(matches.then_some(checkpoint.projection))
}

/// Rebuilds a projection from the first entry of `store`. `progress` is
/// called with each applied gseq.
pub fn rebuild<B: Backend>(
    store: &LogStore<B>,
    until: Until,
    progress: &mut dyn FnMut(u64),
) -> Result<Projection, StoreError> {
    let mut projection = Projection::default();
    apply_range(store, &mut projection, 1, until, progress)?;
    Ok(projection)
}

/// Like [`rebuild`], but on a log whose old segments were archived it
/// starts from the newest checkpoint at or before the limit (the one
/// [`Ledger::archive`] saved at the cut, or a later one), so a replay as
/// of now, or of any point after the cut, never reads the archive. A time
/// limit, or a point inside the archive, replays from the first entry.
pub fn rebuild_past_archive<B: Backend>(
    store: &LogStore<B>,
    until: Until,
    progress: &mut dyn FnMut(u64),
) -> Result<Projection, StoreError> {
    let limit = match until {
        _ if store.archived().is_none() => return rebuild(store, until, progress),
        Until::End => store.head().gseq,
        Until::Gseq(gseq) => gseq.min(store.head().gseq),
        Until::MachineTime(_) => return rebuild(store, until, progress),
    };
    let Some(mut projection) = load_checkpoint(store, limit)? else {
        return rebuild(store, until, progress);
    };
    let from = projection.as_of_gseq + 1;
    apply_range(store, &mut projection, from, until, progress)?;
    Ok(projection)
}

fn apply_range<B: Backend>(
    store: &LogStore<B>,
    projection: &mut Projection,
    from: u64,
    until: Until,
    progress: &mut dyn FnMut(u64),
) -> Result<(), StoreError> {
    let head = store.head().gseq;
    let last = match until {
        Until::Gseq(gseq) => gseq.min(head),
        _ => head,
    };
    // Machines whose clock passed the time limit: their later events are
    // skipped too, even if the clock went backwards, so a stream is never
    // applied with a hole in it.
    let mut stopped: std::collections::HashSet<MachineId> = std::collections::HashSet::new();
    let decode = |gseq: u64, bytes: &[u8]| -> Result<(u64, Content), StoreError> {
        let content = LogEntry::decode_content(bytes).map_err(|e| StoreError::Entry {
            gseq,
            problem: format!("undecodable record: {e}"),
        })?;
        Ok((gseq, content))
    };
    crate::store::scan_records(store, from, last, decode, |(gseq, content)| {
        if let Until::MachineTime(limit) = until {
            let excluded = match &content {
                Content::Event(envelope) => {
                    envelope.at_ms > limit || stopped.contains(&envelope.machine_id)
                }
                // What operators did counts by the primary's clock.
                Content::Operator(record) => record.at_ms > limit,
                Content::Marker => false,
            };
            if excluded {
                if let Content::Event(envelope) = content {
                    stopped.insert(envelope.machine_id);
                }
                // Later entries may still be in range, so skip rather than
                // stop; the projection still advances its gseq.
                projection.skip(gseq);
                return Ok::<(), StoreError>(());
            }
        }
        apply_content(projection, gseq, &content);
        if !matches!(content, Content::Marker) {
            progress(gseq);
        }
        Ok(())
    })
}

//! Full verification of a log: decryption, both hash chains, sequence
//! numbers, postings and the store's own metadata. Stops at the first bad
//! entry and names it.

use crate::crypto::Hash32;
use crate::event::EventEnvelope;
use crate::ids::MachineId;
use crate::keys::ChainKeys;
use crate::projection::Projection;
use crate::store::record::{
    Content, GENESIS_HASH, LogEntry, Payload, SignedEvent, check_machine_chain,
};
use crate::store::{LogStore, StoreError, scan_records};
use std::collections::HashMap;

/// What a clean verification found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifySummary {
    pub entries: u64,
    pub machines: usize,
    pub head_hash: Hash32,
    pub segments: usize,
    /// Entries that record what operators did.
    pub operator_records: u64,
}

/// The first problem found, with the entry it is in when there is one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{problem}", location(*gseq, machine))]
pub struct VerifyFailure {
    pub gseq: Option<u64>,
    pub machine: Option<(MachineId, u64)>,
    pub problem: String,
}

fn location(gseq: Option<u64>, machine: &Option<(MachineId, u64)>) -> String {
    match (gseq, machine) {
        (Some(g), Some((m, s))) => format!("entry gseq {g} ({m} #{s}): "),
        (Some(g), None) => format!("entry gseq {g}: "),
        _ => String::new(),
    }
}

fn fail(
    gseq: Option<u64>,
    machine: Option<(MachineId, u64)>,
    problem: impl Into<String>,
) -> VerifyFailure {
    VerifyFailure {
        gseq,
        machine,
        problem: problem.into(),
    }
}

impl From<StoreError> for VerifyFailure {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Entry { gseq, problem } => fail(Some(gseq), None, problem),
            StoreError::Archive {
                file,
                gseq,
                problem,
            } => fail(gseq, None, format!("archive file {file}: {problem}")),
            other => fail(None, None, other.to_string()),
        }
    }
}

/// Verifies every entry of `store`. `progress` is called with each gseq.
pub fn verify_log(
    store: &LogStore,
    keys: &dyn ChainKeys,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifySummary, VerifyFailure> {
    let head = store.head();
    let mut walk = ChainWalk::new(keys);
    scan_records(store, 1, head.gseq, decode_record, |(entry, content)| {
        let gseq = entry.body.gseq;
        walk.entry(&entry, content)?;
        progress(gseq);
        Ok::<(), VerifyFailure>(())
    })?;
    if walk.count != head.gseq || walk.previous_hash != head.hash {
        return Err(fail(
            None,
            None,
            format!(
                "the log ends at gseq {} but its head says {}",
                walk.count, head.gseq
            ),
        ));
    }
    check_store_metadata(store, &walk.machine_heads, &walk.projection)?;
    let segments = check_segments(store)?;
    Ok(VerifySummary {
        entries: walk.count,
        machines: walk.machine_heads.len(),
        head_hash: walk.previous_hash,
        segments,
        operator_records: walk.projection.operators.records_applied,
    })
}

/// Decodes one record on the scan's reader thread. A record that does not
/// decode, or sits at the wrong gseq, stops the scan; an event or operator
/// record that does not decode is reported by the walk, which knows the
/// machine it is from.
fn decode_record(
    gseq: u64,
    bytes: &[u8],
) -> Result<(LogEntry, Result<Content, String>), StoreError> {
    let entry = LogEntry::decode(bytes).map_err(|e| StoreError::Entry {
        gseq,
        problem: format!("undecodable record: {e}"),
    })?;
    if entry.body.gseq != gseq {
        return Err(StoreError::Entry {
            gseq,
            problem: format!("record claims gseq {}", entry.body.gseq),
        });
    }
    let content = entry.content().map_err(|e| match entry.body.payload {
        Payload::Operator { .. } => format!("undecodable operator record: {e}"),
        _ => format!("undecodable event: {e}"),
    });
    Ok((entry, content))
}

/// What verification has established so far, walking the log in order.
struct ChainWalk<'k> {
    keys: &'k dyn ChainKeys,
    previous_hash: Hash32,
    previous_epoch: u64,
    /// The epoch of the last epoch marker (0 before the first).
    previous_marker_epoch: u64,
    machine_heads: HashMap<MachineId, (u64, Hash32)>,
    /// Every event applied, so an impossible one (an overdrawn tube) is
    /// found and the balances can be cross-checked at the end.
    projection: Projection,
    count: u64,
}

impl<'k> ChainWalk<'k> {
    fn new(keys: &'k dyn ChainKeys) -> ChainWalk<'k> {
        ChainWalk {
            keys,
            previous_hash: GENESIS_HASH,
            previous_epoch: 0,
            previous_marker_epoch: 0,
            machine_heads: HashMap::new(),
            projection: Projection::default(),
            count: 0,
        }
    }

    /// Checks the next entry: the fleet chain and epochs, then the marker,
    /// the machine event or the operator record it carries.
    fn entry(
        &mut self,
        entry: &LogEntry,
        content: Result<Content, String>,
    ) -> Result<(), VerifyFailure> {
        let gseq = entry.body.gseq;
        if entry.prev_hash != self.previous_hash {
            return Err(fail(
                Some(gseq),
                None,
                "fleet chain broken: previous-hash does not match the entry before",
            ));
        }
        if entry.body.epoch < self.previous_epoch {
            return Err(fail(
                Some(gseq),
                None,
                format!(
                    "epoch {} after epoch {}",
                    entry.body.epoch, self.previous_epoch
                ),
            ));
        }
        match (&entry.body.payload, content) {
            (
                Payload::Event {
                    machine_id,
                    machine_seq,
                    event,
                },
                content,
            ) => {
                let at = |problem| {
                    fail(
                        Some(gseq),
                        Some((machine_id.clone(), *machine_seq)),
                        problem,
                    )
                };
                let envelope = content.map_err(at)?.event().cloned();
                self.event_entry(gseq, (machine_id, *machine_seq, event), envelope)?;
            }
            (Payload::EpochStarted { .. }, _) => self.epoch_marker(gseq, entry.body.epoch)?,
            (Payload::Operator { .. }, Ok(Content::Operator(record))) => {
                self.projection.apply_operator(gseq, &record).map_err(|e| {
                    fail(
                        Some(gseq),
                        None,
                        format!("operator record does not apply: {e}"),
                    )
                })?;
            }
            (Payload::Operator { .. }, Ok(_)) => {
                return Err(fail(Some(gseq), None, "operator entry without its record"));
            }
            (Payload::Operator { .. }, Err(problem)) => {
                return Err(fail(Some(gseq), None, problem));
            }
        }
        self.previous_hash = entry.hash;
        self.previous_epoch = entry.body.epoch;
        self.count += 1;
        Ok(())
    }

    /// Each marker opens a newer epoch than the one before.
    fn epoch_marker(&mut self, gseq: u64, epoch: u64) -> Result<(), VerifyFailure> {
        if epoch <= self.previous_marker_epoch && self.previous_marker_epoch > 0 {
            return Err(fail(
                Some(gseq),
                None,
                "epoch marker does not open a new epoch",
            ));
        }
        self.previous_marker_epoch = epoch;
        self.projection.skip(gseq);
        Ok(())
    }

    /// Checks one machine event entry against its machine's chain and
    /// applies it to the verifying projection.
    fn event_entry(
        &mut self,
        gseq: u64,
        (machine, seq, event): (&MachineId, u64, &SignedEvent),
        envelope: Option<EventEnvelope>,
    ) -> Result<(), VerifyFailure> {
        let at = |problem: String| fail(Some(gseq), Some((machine.clone(), seq)), problem);
        let (last_seq, last_hash) = self
            .machine_heads
            .get(machine)
            .copied()
            .unwrap_or((0, GENESIS_HASH));
        if seq != last_seq + 1 {
            return Err(at(format!(
                "machine stream jumps from #{last_seq} to #{seq}"
            )));
        }
        check_machine_chain(self.keys, machine, &last_hash, event)
            .map_err(|e| at(e.to_string()))?;
        let envelope = envelope.ok_or_else(|| at("missing event".into()))?;
        if envelope.machine_id != *machine || envelope.machine_seq != seq {
            return Err(at("entry and event disagree on machine or sequence".into()));
        }
        self.projection
            .apply(gseq, &envelope)
            .map_err(|e| at(format!("event does not apply: {e}")))?;
        self.machine_heads
            .insert(machine.clone(), (seq, event.chain_hash));
        Ok(())
    }
}

fn check_store_metadata(
    store: &LogStore,
    heads: &HashMap<MachineId, (u64, Hash32)>,
    projection: &Projection,
) -> Result<(), VerifyFailure> {
    if store.machine_heads().len() != heads.len() {
        return Err(fail(
            None,
            None,
            "the store's machine heads do not match the log",
        ));
    }
    for (machine, &(seq, hash)) in heads {
        let stored = store.machine_head(machine);
        if stored.seq != seq || stored.hash != hash {
            return Err(fail(
                None,
                Some((machine.clone(), seq)),
                "stored machine head does not match the log",
            ));
        }
        if store.gseq_of(machine, seq)? != Some(stored.gseq) {
            return Err(fail(
                Some(stored.gseq),
                Some((machine.clone(), seq)),
                "machine index row is wrong",
            ));
        }
    }
    for (machine, state) in &projection.machines {
        state
            .check_consistency()
            .map_err(|problem| fail(None, Some((machine.clone(), state.last_seq)), problem))?;
    }
    Ok(())
}

fn check_segments(store: &LogStore) -> Result<usize, VerifyFailure> {
    let segments = store.segments()?;
    let size = store.config().segment_entries;
    for (expected_index, segment) in segments.iter().enumerate() {
        let index = expected_index as u64;
        let first = index * size + 1;
        let bad = |problem: &str| fail(Some(first), None, format!("segment {index}: {problem}"));
        if segment.index != index
            || segment.first_gseq != first
            || segment.last_gseq != first + size - 1
        {
            return Err(bad("summary covers the wrong range"));
        }
        let first_entry = store
            .get(segment.first_gseq)?
            .ok_or_else(|| bad("first entry missing"))?;
        let last_entry = store
            .get(segment.last_gseq)?
            .ok_or_else(|| bad("last entry missing"))?;
        if first_entry.prev_hash != segment.first_prev_hash || last_entry.hash != segment.last_hash
        {
            return Err(bad("summary hashes do not match the entries"));
        }
    }
    Ok(segments.len())
}

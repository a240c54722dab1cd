//! An in-memory log with the same append, dedup, chain and truncation rules
//! as the RocksDB store, for the deterministic simulation and unit tests
//! (opening thousands of RocksDB instances per test run would take hours).

use crate::ingest::MachineIndex;
use crate::node::{LogView, Tip};
use ledger::crypto::Hash32;
use ledger::keys::ChainKeys;
use ledger::projection::Projection;
use ledger::store::record::{
    EntryBody, GENESIS_HASH, LogEntry, Payload, SignedEvent, check_machine_chain,
};
use ledger::store::{Appended, EventRejection};
use ledger::{EventEnvelope, MachineId};
use std::collections::HashMap;

#[derive(Clone, Debug)]
pub struct MemEntry {
    pub record: Vec<u8>,
    pub entry: LogEntry,
}

#[derive(Clone, Debug, Default)]
pub struct MemLog {
    entries: Vec<MemEntry>,
    /// machine -> (seq, gseq, chain hash) of its last event.
    heads: HashMap<MachineId, (u64, u64, Hash32)>,
    index: HashMap<(MachineId, u64), (u64, Hash32)>,
    projection: Projection,
}

impl MemLog {
    pub fn new() -> MemLog {
        MemLog::default()
    }

    pub fn entries(&self) -> &[MemEntry] {
        &self.entries
    }

    pub fn projection(&self) -> &Projection {
        &self.projection
    }

    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn record(&self, gseq: u64) -> Option<&[u8]> {
        let index = usize::try_from(gseq.checked_sub(1)?).ok()?;
        self.entries.get(index).map(|e| e.record.as_slice())
    }

    pub fn records(&self, from: u64, to: u64) -> Vec<Vec<u8>> {
        (from..=to)
            .map_while(|g| self.record(g).map(<[u8]>::to_vec))
            .collect()
    }

    fn head_hash(&self) -> Hash32 {
        self.entries.last().map_or(GENESIS_HASH, |e| e.entry.hash)
    }

    fn head_epoch(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.entry.body.epoch)
    }

    fn push(&mut self, entry: LogEntry, record: Vec<u8>, envelope: Option<&EventEnvelope>) {
        let gseq = entry.body.gseq;
        if let Some((machine, seq, event)) = entry.body.machine_event() {
            self.heads
                .insert(machine.clone(), (seq, gseq, event.chain_hash));
            self.index
                .insert((machine.clone(), seq), (gseq, event.chain_hash));
        }
        match envelope {
            Some(envelope) => {
                let _ = self.projection.apply(gseq, envelope);
            }
            None => self.projection.skip(gseq),
        }
        self.entries.push(MemEntry { record, entry });
    }

    /// Decides about one submitted event exactly as the store does.
    fn admit(&self, event: &SignedEvent, keys: &dyn ChainKeys) -> Result<EventEnvelope, Appended> {
        let envelope = event
            .envelope()
            .map_err(|e| Appended::Rejected(EventRejection::Decode(e.to_string())))?;
        let (head_seq, _, head_hash) =
            self.heads
                .get(&envelope.machine_id)
                .copied()
                .unwrap_or((0, 0, GENESIS_HASH));
        let seq = envelope.machine_seq;
        if seq >= 1 && seq <= head_seq {
            return Err(match self.index.get(&(envelope.machine_id.clone(), seq)) {
                Some(&(gseq, hash)) if hash == event.chain_hash => Appended::Duplicate { gseq },
                _ => Appended::Rejected(EventRejection::Conflict { seq }),
            });
        }
        if seq != head_seq + 1 {
            return Err(Appended::Rejected(EventRejection::Gap {
                expected: head_seq + 1,
                got: seq,
            }));
        }
        check_machine_chain(keys, &envelope.machine_id, &head_hash, event)
            .map_err(|e| Appended::Rejected(e.into()))?;
        Ok(envelope)
    }

    /// Like `LogStore::append_events`.
    pub fn append_events(
        &mut self,
        epoch: u64,
        logged_ms: i64,
        events: &[SignedEvent],
        keys: &dyn ChainKeys,
    ) -> Vec<Appended> {
        let mut results = Vec::with_capacity(events.len());
        for event in events {
            let envelope = match self.admit(event, keys) {
                Ok(envelope) => envelope,
                Err(outcome) => {
                    results.push(outcome);
                    continue;
                }
            };
            let gseq = self.len() + 1;
            let body = EntryBody {
                gseq,
                epoch,
                logged_ms,
                payload: Payload::Event {
                    machine_id: envelope.machine_id.clone(),
                    machine_seq: envelope.machine_seq,
                    event: event.clone(),
                },
            };
            let (entry, record) = LogEntry::seal_body(body, self.head_hash());
            self.push(entry, record, Some(&envelope));
            results.push(Appended::New { gseq });
        }
        results
    }

    /// Like `LogStore::append_marker`.
    pub fn append_marker(
        &mut self,
        epoch: u64,
        logged_ms: i64,
        primary: &str,
    ) -> Result<(), String> {
        if epoch <= self.head_epoch() {
            return Err(format!(
                "epoch marker for {epoch} does not follow epoch {}",
                self.head_epoch()
            ));
        }
        let body = EntryBody {
            gseq: self.len() + 1,
            epoch,
            logged_ms,
            payload: Payload::EpochStarted {
                primary: primary.to_owned(),
            },
        };
        let (entry, record) = LogEntry::seal_body(body, self.head_hash());
        self.push(entry, record, None);
        Ok(())
    }

    /// Like `LogStore::append_replicated`: all or nothing.
    pub fn append_replicated(
        &mut self,
        records: &[Vec<u8>],
        keys: &dyn ChainKeys,
    ) -> Result<(), String> {
        let mut staged = self.clone_tail_state();
        let mut accepted = Vec::with_capacity(records.len());
        for record in records {
            let entry = LogEntry::decode(record).map_err(|e| e.to_string())?;
            let gseq = entry.body.gseq;
            if gseq != staged.len + 1
                || entry.prev_hash != staged.hash
                || entry.body.epoch < staged.epoch
            {
                return Err(format!(
                    "record {gseq} does not continue the log at {}",
                    staged.len
                ));
            }
            let envelope = match &entry.body.payload {
                Payload::EpochStarted { .. } => {
                    if entry.body.epoch <= staged.epoch {
                        return Err(format!("marker {gseq} does not open a newer epoch"));
                    }
                    None
                }
                Payload::Event {
                    machine_id,
                    machine_seq,
                    event,
                } => {
                    let (head_seq, _, head_hash) = staged
                        .heads
                        .get(machine_id)
                        .copied()
                        .or_else(|| self.heads.get(machine_id).copied())
                        .unwrap_or((0, 0, GENESIS_HASH));
                    if *machine_seq != head_seq + 1 {
                        return Err(format!(
                            "record {gseq}: {machine_id} jumps to #{machine_seq}"
                        ));
                    }
                    check_machine_chain(keys, machine_id, &head_hash, event)
                        .map_err(|e| e.to_string())?;
                    let envelope = event.envelope().map_err(|e| e.to_string())?;
                    if &envelope.machine_id != machine_id || envelope.machine_seq != *machine_seq {
                        return Err(format!("record {gseq}: entry and event disagree"));
                    }
                    staged
                        .heads
                        .insert(machine_id.clone(), (*machine_seq, gseq, event.chain_hash));
                    Some(envelope)
                }
            };
            staged.len = gseq;
            staged.hash = entry.hash;
            staged.epoch = entry.body.epoch;
            accepted.push((entry, record.clone(), envelope));
        }
        for (entry, record, envelope) in accepted {
            self.push(entry, record, envelope.as_ref());
        }
        Ok(())
    }

    fn clone_tail_state(&self) -> Staged {
        Staged {
            len: self.len(),
            hash: self.head_hash(),
            epoch: self.head_epoch(),
            heads: HashMap::new(),
        }
    }

    /// Like `LogStore::truncate_after`; rebuilds the projection.
    pub fn truncate_after(&mut self, gseq: u64) {
        let keep = usize::try_from(gseq)
            .unwrap_or(usize::MAX)
            .min(self.entries.len());
        self.entries.truncate(keep);
        self.heads.clear();
        self.index.clear();
        self.projection = Projection::default();
        let entries = std::mem::take(&mut self.entries);
        for MemEntry { record, entry } in entries {
            let envelope = entry.envelope().ok().flatten();
            self.push(entry, record, envelope.as_ref());
        }
    }

    /// A projection rebuilt from the records alone (to compare with the
    /// live one).
    pub fn replay_projection(&self) -> Projection {
        let mut projection = Projection::default();
        for MemEntry { entry, .. } in &self.entries {
            match entry.envelope().ok().flatten() {
                Some(envelope) => {
                    let _ = projection.apply(entry.body.gseq, &envelope);
                }
                None => projection.skip(entry.body.gseq),
            }
        }
        projection
    }
}

struct Staged {
    len: u64,
    hash: Hash32,
    epoch: u64,
    heads: HashMap<MachineId, (u64, u64, Hash32)>,
}

impl LogView for MemLog {
    fn tip(&self) -> Tip {
        match self.entries.last() {
            Some(last) => Tip {
                gseq: last.entry.body.gseq,
                hash: last.entry.hash,
                epoch: last.entry.body.epoch,
            },
            None => Tip::default(),
        }
    }

    fn entry_meta(&self, gseq: u64) -> Option<(Hash32, u64)> {
        let index = usize::try_from(gseq.checked_sub(1)?).ok()?;
        self.entries
            .get(index)
            .map(|e| (e.entry.hash, e.entry.body.epoch))
    }
}

impl MachineIndex for MemLog {
    fn machine_head(&self, machine: &MachineId) -> (u64, u64) {
        self.heads
            .get(machine)
            .map_or((0, 0), |&(seq, gseq, _)| (seq, gseq))
    }

    fn gseq_of(&self, machine: &MachineId, seq: u64) -> Option<u64> {
        self.index
            .get(&(machine.clone(), seq))
            .map(|&(gseq, _)| gseq)
    }
}

//! Log records: one entry of the fleet log, as bytes.
//!
//! ```text
//! record   = version (1 byte, RECORD_FORMAT_VERSION)
//!            ++ prev_hash (32 bytes: hash of the previous record, zeros first)
//!            ++ MessagePack(EntryBody)
//! hash     = blake3(record)
//! ```
//!
//! Almost every entry carries a machine's event. The exceptions are the
//! marker a newly elected primary appends to open its epoch (it lets the
//! primary commit entries of earlier epochs, which it may only count once an
//! entry of its own epoch is replicated, and shows auditors where each
//! primary's reign began), and what operators do through the dashboard
//! (accounts, commands for machines, acknowledged alerts), which the primary
//! writes as [`OperatorRecord`]s so every replica has them.
//!
//! The record bytes are what is sealed at rest and what replication ships,
//! so every replica hashes exactly the same bytes. The machine's encoded
//! event is carried as opaque bytes inside the body: its keyed chain hash is
//! over those bytes, so it stays verifiable across format upgrades. An
//! operator record is carried the same way, as its own versioned bytes.

use crate::crypto::{Hash32, chain_hash};
use crate::event::{DecodeError, EVENT_BYTES_MAX, EventEnvelope};
use crate::ids::MachineId;
use crate::keys::ChainKeys;
use crate::operator::{OPERATOR_RECORD_BYTES_MAX, OperatorRecord};
use serde::{Deserialize, Serialize};

pub const RECORD_FORMAT_VERSION: u8 = 1;
/// Largest record accepted from outside: an event of `EVENT_BYTES_MAX`
/// plus the entry fields (at most about 160 bytes).
pub const RECORD_BYTES_MAX: usize = EVENT_BYTES_MAX + 176;
const HEADER_BYTES: usize = 1 + 32;
// An operator record is never larger than an event, so its entry fits the
// same record limit (and one replication datagram).
const _: () = assert!(OPERATOR_RECORD_BYTES_MAX <= EVENT_BYTES_MAX);

/// An event as a machine signed it: its encoded bytes and its chain hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedEvent {
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub chain_hash: Hash32,
}

impl SignedEvent {
    pub fn envelope(&self) -> Result<EventEnvelope, DecodeError> {
        EventEnvelope::decode(&self.bytes)
    }
}

/// The fleet-log fields of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryBody {
    pub gseq: u64,
    /// Epoch of the primary that appended the entry.
    pub epoch: u64,
    /// The appending primary's clock, milliseconds since the Unix epoch.
    pub logged_ms: i64,
    pub payload: Payload,
}

/// What an entry records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// A machine's event, exactly as the machine signed it.
    Event {
        machine_id: MachineId,
        machine_seq: u64,
        event: SignedEvent,
    },
    /// A primary was elected for `epoch` (the entry's epoch) and opened it.
    EpochStarted { primary: String },
    /// What an operator did, as [`OperatorRecord::encode`] bytes (written
    /// by the primary; a machine's own ledger never holds one).
    Operator {
        #[serde(with = "serde_bytes")]
        record: Vec<u8>,
    },
}

/// What an entry carries, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    Event(EventEnvelope),
    Operator(OperatorRecord),
    /// An epoch marker.
    Marker,
}

impl Content {
    /// The machine event, if the entry carries one.
    pub fn event(&self) -> Option<&EventEnvelope> {
        match self {
            Content::Event(envelope) => Some(envelope),
            Content::Operator(_) | Content::Marker => None,
        }
    }
}

/// Longest replica name accepted in an epoch marker.
pub const REPLICA_NAME_BYTES_MAX: usize = 64;

impl EntryBody {
    /// The machine event carried, if this is not a marker.
    pub fn machine_event(&self) -> Option<(&MachineId, u64, &SignedEvent)> {
        match &self.payload {
            Payload::Event {
                machine_id,
                machine_seq,
                event,
            } => Some((machine_id, *machine_seq, event)),
            Payload::EpochStarted { .. } | Payload::Operator { .. } => None,
        }
    }

    /// The operator record's bytes, if this entry carries one.
    pub fn operator_record(&self) -> Option<&[u8]> {
        match &self.payload {
            Payload::Operator { record } => Some(record),
            Payload::Event { .. } | Payload::EpochStarted { .. } => None,
        }
    }
}

/// A decoded record with its position in the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub body: EntryBody,
    pub prev_hash: Hash32,
    /// blake3 of the record bytes; the next entry's `prev_hash`.
    pub hash: Hash32,
}

impl LogEntry {
    /// Builds the record for `body` after `prev_hash`; returns the entry and
    /// its bytes.
    pub fn seal_body(body: EntryBody, prev_hash: Hash32) -> (LogEntry, Vec<u8>) {
        let carried = match &body.payload {
            Payload::Event { event, .. } => event.bytes.len(),
            Payload::Operator { record } => record.len(),
            Payload::EpochStarted { .. } => 0,
        };
        let mut bytes = Vec::with_capacity(HEADER_BYTES + 64 + carried);
        bytes.push(RECORD_FORMAT_VERSION);
        bytes.extend_from_slice(&prev_hash);
        rmp_serde::encode::write(&mut bytes, &body).expect("encoding to a Vec cannot fail");
        let hash = *blake3::hash(&bytes).as_bytes();
        (
            LogEntry {
                body,
                prev_hash,
                hash,
            },
            bytes,
        )
    }

    /// Decodes record bytes. Structural checks only; chain checks are the
    /// caller's (see [`check_machine_chain`] and the store).
    pub fn decode(bytes: &[u8]) -> Result<LogEntry, DecodeError> {
        let (prev_hash, body) = LogEntry::decode_body(bytes)?;
        Ok(LogEntry {
            body,
            prev_hash,
            hash: *blake3::hash(bytes).as_bytes(),
        })
    }

    /// Decodes the previous hash and body without hashing the record (for
    /// replays that trust an already verified log).
    pub fn decode_body(bytes: &[u8]) -> Result<(Hash32, EntryBody), DecodeError> {
        if bytes.len() > RECORD_BYTES_MAX {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let (&version, _) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if version != RECORD_FORMAT_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        if bytes.len() < HEADER_BYTES {
            return Err(DecodeError::Empty);
        }
        let prev_hash: Hash32 = bytes[1..HEADER_BYTES].try_into().expect("32 bytes");
        let body: EntryBody = rmp_serde::from_slice(&bytes[HEADER_BYTES..])?;
        Ok((prev_hash, body))
    }

    /// The machine's event, decoded; `None` for an entry without one.
    pub fn envelope(&self) -> Result<Option<EventEnvelope>, DecodeError> {
        self.body
            .machine_event()
            .map(|(_, _, event)| event.envelope())
            .transpose()
    }

    /// What the entry carries, decoded.
    pub fn content(&self) -> Result<Content, DecodeError> {
        Ok(match &self.body.payload {
            Payload::Event { event, .. } => Content::Event(event.envelope()?),
            Payload::Operator { record } => Content::Operator(OperatorRecord::decode(record)?),
            Payload::EpochStarted { .. } => Content::Marker,
        })
    }

    /// Decodes only what record bytes carry (the machine's event, the
    /// operator's record), borrowing instead of copying: the replay hot
    /// path.
    pub fn decode_content(bytes: &[u8]) -> Result<Content, DecodeError> {
        #[derive(Deserialize)]
        struct SignedEventRef<'a> {
            #[serde(borrow)]
            bytes: &'a serde_bytes::Bytes,
            #[allow(dead_code)]
            #[serde(borrow)]
            chain_hash: &'a serde_bytes::Bytes,
        }
        #[derive(Deserialize)]
        #[allow(dead_code)]
        enum PayloadRef<'a> {
            Event {
                machine_id: &'a str,
                machine_seq: u64,
                #[serde(borrow)]
                event: SignedEventRef<'a>,
            },
            EpochStarted {
                primary: &'a str,
            },
            Operator {
                #[serde(borrow)]
                record: &'a serde_bytes::Bytes,
            },
        }
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct EntryBodyRef<'a> {
            gseq: u64,
            epoch: u64,
            logged_ms: i64,
            #[serde(borrow)]
            payload: PayloadRef<'a>,
        }
        if bytes.len() > RECORD_BYTES_MAX {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let (&version, _) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if version != RECORD_FORMAT_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let body = bytes.get(HEADER_BYTES..).ok_or(DecodeError::Empty)?;
        let body: EntryBodyRef<'_> = rmp_serde::from_slice(body)?;
        Ok(match body.payload {
            PayloadRef::Event { event, .. } => Content::Event(EventEnvelope::decode(event.bytes)?),
            PayloadRef::Operator { record } => Content::Operator(OperatorRecord::decode(record)?),
            PayloadRef::EpochStarted { .. } => Content::Marker,
        })
    }
}

/// Why an event's machine chain does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("no key for machine {0}")]
    UnknownMachine(MachineId),
    #[error("machine chain hash does not match (forged, altered or missing event)")]
    HashMismatch,
}

/// Verifies that `event` follows `previous` in the chain of `machine`.
pub fn check_machine_chain(
    keys: &dyn ChainKeys,
    machine: &MachineId,
    previous: &Hash32,
    event: &SignedEvent,
) -> Result<(), ChainError> {
    let key = keys
        .chain_key(machine)
        .ok_or_else(|| ChainError::UnknownMachine(machine.clone()))?;
    if chain_hash(key, previous, &event.bytes) == event.chain_hash {
        Ok(())
    } else {
        Err(ChainError::HashMismatch)
    }
}

/// The chain hash a machine's stream starts from.
pub const GENESIS_HASH: Hash32 = [0; 32];

/// A record received from another replica: its bytes and what they decode
/// to, hash included. Built only by [`ReplicatedRecord::decode`], so the
/// two always agree and a record is decoded and hashed once on its way
/// from the datagram to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicatedRecord {
    entry: LogEntry,
    bytes: Vec<u8>,
}

impl ReplicatedRecord {
    pub fn decode(bytes: Vec<u8>) -> Result<ReplicatedRecord, DecodeError> {
        let entry = LogEntry::decode(&bytes)?;
        Ok(ReplicatedRecord { entry, bytes })
    }

    pub fn entry(&self) -> &LogEntry {
        &self.entry
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn gseq(&self) -> u64 {
        self.entry.body.gseq
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

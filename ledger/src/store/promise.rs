//! What a replica has promised, kept where damage to its log cannot roll
//! it back.
//!
//! A replica acknowledges the entries it holds and persists its vote; both
//! are promises other replicas count on. If its log is later damaged — a
//! torn or corrupted WAL, a truncated MANIFEST, a flipped bit in a table
//! file — RocksDB may open what is left without a word, and the replica
//! would serve, vote and acknowledge as if it never held the lost entries.
//! So the replica writes its promises to a small file of its own, beside the
//! log, after each round's writes are durable and before anything the round
//! produced leaves: the log's tip (gseq and hash) and the vote. At start the
//! log is checked against it, and a log that ends before its promise is
//! repaired from the peers before the replica votes, stands or
//! acknowledges (see `replica::round`).
//!
//! ```text
//! file   = slot 0 (SLOT_BYTES) ++ slot 1 (SLOT_BYTES)
//! slot   = length (u16 BE) ++ MessagePack(Promise) ++ blake3(length ++ payload) (32)
//! ```
//!
//! Writes alternate between the two slots (by `Promise::sequence`), each
//! followed by one `fdatasync`, so a write torn by a crash spoils at most
//! the slot being written and the other still holds the previous promise.
//! A reader takes the valid slot with the higher sequence.

use crate::crypto::Hash32;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The promise file's name in a replica's data directory.
pub const PROMISE_FILE: &str = "promise";
/// Bytes per slot (a promise takes about 90).
pub const SLOT_BYTES: usize = 256;
const LENGTH_BYTES: usize = 2;
const CHECKSUM_BYTES: usize = 32;
/// Version 2 added `tip_epoch`; a version 1 promise reads with it unknown.
const PROMISE_FORMAT_VERSION: u32 = 2;

/// What a replica has made durable and promised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promise {
    pub format_version: u32,
    /// Increases with every write; picks the newer slot.
    pub sequence: u64,
    /// The durable tip of the log when anything was last sent.
    pub tip_gseq: u64,
    #[serde(with = "serde_bytes")]
    pub tip_hash: Hash32,
    /// The vote: its epoch, and the candidate it went to.
    pub vote_epoch: u64,
    pub voted_for: Option<u8>,
    /// The replica process's incarnation, which peers' replay guards go
    /// by: it must never go back, even when the log is lost.
    pub incarnation: u64,
    /// The epoch of the entry at `tip_gseq` (format 2; unknown in a
    /// format 1 promise). A replica repairing its damaged log votes as if
    /// its log still ended there, which needs the epoch for Raft's
    /// up-to-date check.
    #[serde(default)]
    pub tip_epoch: Option<u64>,
}

impl Promise {
    pub fn new(tip_gseq: u64, tip_hash: Hash32, vote_epoch: u64, voted_for: Option<u8>) -> Promise {
        Promise {
            format_version: PROMISE_FORMAT_VERSION,
            sequence: 0,
            tip_gseq,
            tip_hash,
            vote_epoch,
            voted_for,
            incarnation: 0,
            tip_epoch: None,
        }
    }

    /// The same promise (the sequence aside).
    pub fn same_as(&self, other: &Promise) -> bool {
        Promise {
            sequence: other.sequence,
            ..*self
        } == *other
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PromiseError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: neither copy of the promise is readable (both damaged)")]
    Damaged { path: String },
}

/// Where promises are kept: a file for a replica, memory for the
/// simulation (which keeps it apart from the simulated log's damage).
pub trait PromiseStore: Send {
    fn load(&mut self) -> Result<Option<Promise>, PromiseError>;
    /// Saves `promise` durably (its sequence is set by the store).
    fn save(&mut self, promise: &Promise) -> Result<(), PromiseError>;
}

/// The promise file of a replica's data directory.
pub struct PromiseFile {
    path: PathBuf,
    file: Option<File>,
    sequence: u64,
}

impl PromiseFile {
    pub fn new(data_dir: &Path) -> PromiseFile {
        PromiseFile {
            path: data_dir.join(PROMISE_FILE),
            file: None,
            sequence: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> PromiseError + '_ {
        |source| PromiseError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Reads the promise without creating anything (for tools).
    pub fn read(data_dir: &Path) -> Result<Option<Promise>, PromiseError> {
        PromiseFile::new(data_dir).load()
    }
}

/// Decodes one slot; `None` when torn, damaged or empty.
fn decode_slot(slot: &[u8]) -> Option<Promise> {
    let length = usize::from(u16::from_be_bytes(
        slot.get(..LENGTH_BYTES)?.try_into().ok()?,
    ));
    let end = LENGTH_BYTES.checked_add(length)?;
    let stored = slot.get(end..end + CHECKSUM_BYTES)?;
    if blake3::hash(&slot[..end]).as_bytes() != stored || length == 0 {
        return None;
    }
    rmp_serde::from_slice(&slot[LENGTH_BYTES..end]).ok()
}

fn encode_slot(promise: &Promise) -> [u8; SLOT_BYTES] {
    let payload = rmp_serde::to_vec(promise).expect("encoding to a Vec cannot fail");
    assert!(
        LENGTH_BYTES + payload.len() + CHECKSUM_BYTES <= SLOT_BYTES,
        "a promise fits its slot"
    );
    let mut slot = [0u8; SLOT_BYTES];
    let length = u16::try_from(payload.len()).expect("bounded by the slot");
    slot[..LENGTH_BYTES].copy_from_slice(&length.to_be_bytes());
    let end = LENGTH_BYTES + payload.len();
    slot[LENGTH_BYTES..end].copy_from_slice(&payload);
    let checksum = *blake3::hash(&slot[..end]).as_bytes();
    slot[end..end + CHECKSUM_BYTES].copy_from_slice(&checksum);
    slot
}

impl PromiseStore for PromiseFile {
    fn load(&mut self) -> Result<Option<Promise>, PromiseError> {
        let mut bytes = Vec::new();
        match File::open(&self.path) {
            Ok(mut file) => {
                file.read_to_end(&mut bytes).map_err(self.io())?;
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(self.io()(error)),
        }
        if bytes.is_empty() {
            return Ok(None);
        }
        let newest = bytes
            .chunks(SLOT_BYTES)
            .filter_map(decode_slot)
            .max_by_key(|promise| promise.sequence);
        match newest {
            Some(promise) => {
                self.sequence = promise.sequence;
                Ok(Some(promise))
            }
            None => Err(PromiseError::Damaged {
                path: self.path.display().to_string(),
            }),
        }
    }

    fn save(&mut self, promise: &Promise) -> Result<(), PromiseError> {
        if self.file.is_none() {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.path)
                .map_err(self.io())?;
            self.file = Some(file);
        }
        self.sequence += 1;
        let promise = Promise {
            sequence: self.sequence,
            ..*promise
        };
        let slot = encode_slot(&promise);
        let offset = (self.sequence % 2) * SLOT_BYTES as u64;
        let file = self.file.as_mut().expect("opened above");
        let written = file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| file.write_all(&slot))
            .and_then(|()| file.sync_data());
        written.map_err(|source| PromiseError::Io {
            path: self.path.display().to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_valid_copy_wins_and_a_torn_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = PromiseFile::new(dir.path());
        assert_eq!(file.load().unwrap(), None);
        file.save(&Promise::new(10, [1; 32], 2, Some(3))).unwrap();
        file.save(&Promise::new(12, [2; 32], 2, Some(3))).unwrap();
        let read = PromiseFile::read(dir.path()).unwrap().unwrap();
        assert_eq!(
            (read.tip_gseq, read.tip_hash, read.sequence),
            (12, [2; 32], 2)
        );
        // Sequence 2 went to slot 0: tear it, and sequence 1 is read.
        let path = dir.path().join(PROMISE_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let read = PromiseFile::read(dir.path()).unwrap().unwrap();
        assert_eq!((read.tip_gseq, read.sequence), (10, 1));
        // Both copies damaged: an error, never a silent "no promise".
        bytes[SLOT_BYTES + 5] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let error = PromiseFile::read(dir.path()).unwrap_err();
        assert!(matches!(error, PromiseError::Damaged { .. }), "{error}");
    }

    /// A format 1 promise (no `tip_epoch`, the fields before it in the
    /// same order) still reads, with the epoch unknown.
    #[test]
    fn a_format_1_promise_reads_with_its_tip_epoch_unknown() {
        #[derive(Serialize)]
        struct PromiseV1 {
            format_version: u32,
            sequence: u64,
            tip_gseq: u64,
            #[serde(with = "serde_bytes")]
            tip_hash: Hash32,
            vote_epoch: u64,
            voted_for: Option<u8>,
            incarnation: u64,
        }
        let old = PromiseV1 {
            format_version: 1,
            sequence: 7,
            tip_gseq: 40,
            tip_hash: [9; 32],
            vote_epoch: 3,
            voted_for: Some(2),
            incarnation: 11,
        };
        let payload = rmp_serde::to_vec(&old).unwrap();
        let mut slot = vec![0u8; SLOT_BYTES];
        let end = LENGTH_BYTES + payload.len();
        slot[..LENGTH_BYTES].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        slot[LENGTH_BYTES..end].copy_from_slice(&payload);
        let checksum = *blake3::hash(&slot[..end]).as_bytes();
        slot[end..end + CHECKSUM_BYTES].copy_from_slice(&checksum);
        let read = decode_slot(&slot).expect("a format 1 slot decodes");
        assert_eq!(
            (
                read.format_version,
                read.tip_gseq,
                read.vote_epoch,
                read.incarnation
            ),
            (1, 40, 3, 11)
        );
        assert_eq!(read.tip_epoch, None);
        // And a format 2 promise keeps its epoch through a slot.
        let new = Promise {
            tip_epoch: Some(5),
            ..Promise::new(40, [9; 32], 3, Some(2))
        };
        assert_eq!(decode_slot(&encode_slot(&new)).unwrap().tip_epoch, Some(5));
    }

    #[test]
    fn a_reopened_file_continues_the_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = PromiseFile::new(dir.path());
        for tip in 1..=5 {
            first.save(&Promise::new(tip, [0; 32], 1, None)).unwrap();
        }
        let mut second = PromiseFile::new(dir.path());
        assert_eq!(second.load().unwrap().unwrap().tip_gseq, 5);
        second.save(&Promise::new(6, [0; 32], 1, None)).unwrap();
        // Damage the newest copy: the one before it is still there.
        let mut bytes = std::fs::read(second.path()).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(second.path(), &bytes).unwrap();
        assert_eq!(PromiseFile::read(dir.path()).unwrap().unwrap().tip_gseq, 5);
    }
}

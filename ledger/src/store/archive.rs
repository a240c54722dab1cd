//! Archive files: closed segments moved out of RocksDB, one file per
//! segment, compressed and sealed, still verifiable and replayable.
//!
//! The format is pure (`encode_segment` / `decode_segment` over bytes);
//! [`ArchiveDir`] is the thin I/O shell that writes a file durably (temp,
//! fsync, rename, directory fsync) and reads segments back for the store,
//! which serves archived gseqs through it (`LogStore::for_each_record`), so
//! every reader — verify, replay, dump, export, a primary answering a
//! lagging follower — reads the archive and the live log as one log.
//!
//! Every read checks the whole file: its checksum, the seal, the framing,
//! that every record decodes at its gseq and links to the one before, and
//! that the header's hashes and machine heads are the records'. Byte by
//! byte in `docs/FORMATS.md`.

use super::record::LogEntry;
use super::rocks::push_chunk_record;
use super::{MachineHead, SegmentSummary, StoreError};
use crate::crypto::{Hash32, SealError, Sealer, SecretKey};
use crate::ids::MachineId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The first bytes of every archive file.
pub const ARCHIVE_MAGIC: [u8; 8] = *b"VLARCHIV";
/// The archive format; a new one gets a new number and a decoder arm.
pub const ARCHIVE_FORMAT_VERSION: u8 = 1;
/// Bytes before the header: magic, version, codec, header length (u32 BE).
const PREFIX_BYTES: usize = 8 + 1 + 1 + 4;
const CHECKSUM_BYTES: usize = 32;
/// A header is bounded by the machines one segment can name.
pub const ARCHIVE_HEADER_BYTES_MAX: usize = 16 << 20;
/// Most plaintext one archive file may hold; decompression stops there, so
/// a hostile file cannot make a reader allocate without bound.
pub const ARCHIVE_PLAINTEXT_BYTES_MAX: usize = 256 << 20;
/// Archive files read whole; anything larger is refused before reading.
pub const ARCHIVE_FILE_BYTES_MAX: u64 = (ARCHIVE_PLAINTEXT_BYTES_MAX as u64) + (32 << 20);
/// zstd's own default level: archiving runs beside a serving replica, so
/// it should cost little CPU; the measured sizes and speeds against LZ4
/// are in BENCHMARKS.md, "Archive".
const ZSTD_LEVEL: i32 = 3;
const CHUNK_LENGTH_BYTES: usize = 4;

/// How the records of an archive file are compressed. `Zstd` is what
/// `vendctl archive` writes (chosen by the benchmark in BENCHMARKS.md);
/// `Lz4` is kept readable and writable for that comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    Zstd = 1,
    Lz4 = 2,
}

impl Codec {
    fn from_byte(byte: u8) -> Option<Codec> {
        match byte {
            1 => Some(Codec::Zstd),
            2 => Some(Codec::Lz4),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::Lz4 => "lz4",
        }
    }

    fn compress(self, plaintext: &[u8]) -> Vec<u8> {
        match self {
            Codec::Zstd => zstd::bulk::compress(plaintext, ZSTD_LEVEL)
                .expect("zstd compresses any buffer in memory"),
            Codec::Lz4 => lz4_flex::compress(plaintext),
        }
    }

    fn decompress(self, compressed: &[u8], plaintext_bytes: usize) -> Result<Vec<u8>, String> {
        if plaintext_bytes > ARCHIVE_PLAINTEXT_BYTES_MAX {
            return Err(format!(
                "declares {plaintext_bytes} bytes of records, more than {ARCHIVE_PLAINTEXT_BYTES_MAX}"
            ));
        }
        let plaintext = match self {
            Codec::Zstd => zstd::bulk::decompress(compressed, plaintext_bytes)
                .map_err(|e| format!("zstd: {e}"))?,
            Codec::Lz4 => lz4_flex::decompress(compressed, plaintext_bytes)
                .map_err(|e| format!("lz4: {e}"))?,
        };
        if plaintext.len() != plaintext_bytes {
            return Err(format!(
                "holds {} bytes of records, its header says {plaintext_bytes}",
                plaintext.len()
            ));
        }
        Ok(plaintext)
    }
}

/// What an archive file says about itself, readable without the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveHeader {
    /// The segment as the live log summarised it: index, first and last
    /// gseq, the fleet chain hash before (`first_prev_hash`) and after
    /// (`last_hash`), record bytes, time range.
    pub segment: SegmentSummary,
    /// The heads, at the segment's end, of the machines with events in it
    /// (sorted by id). With the files before it, every machine's head.
    pub machine_heads: Vec<(MachineId, MachineHead)>,
    /// Length of the records' framing before compression.
    pub plaintext_bytes: u64,
}

/// One archive file, read back and checked.
#[derive(Debug)]
pub struct ArchivedSegment {
    pub header: ArchiveHeader,
    pub codec: Codec,
    /// The records, `header.segment.first_gseq` on.
    pub records: Vec<Vec<u8>>,
}

/// The durable note of what the live log no longer holds: every entry up
/// to `through_gseq` (whole segments `0..segments`) is in archive files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveMark {
    pub segments: u64,
    pub through_gseq: u64,
    /// The hash of entry `through_gseq` (the first live entry's prev_hash).
    #[serde(with = "serde_bytes")]
    pub through_hash: Hash32,
    pub through_epoch: u64,
    /// Where the archive files were written: relative to the directory
    /// that holds the store (a replica's data directory) when inside it,
    /// else absolute.
    pub dir: String,
}

/// The directory a mark's recorded `dir` stands for: relative ones are
/// relative to `home`, the directory holding the store's own.
pub fn resolve_dir(home: Option<&Path>, recorded: &str) -> PathBuf {
    let recorded = Path::new(recorded);
    match home {
        Some(home) if recorded.is_relative() => home.join(recorded),
        _ => recorded.to_path_buf(),
    }
}

/// An archive file's name: `segment-000000000003.vla` for segment 3.
pub fn file_name(index: u64) -> String {
    format!("segment-{index:012}.vla")
}

fn archive_aad(index: u64, header: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(8 + 8 + 32);
    aad.extend_from_slice(b"archive/");
    aad.extend_from_slice(&index.to_be_bytes());
    aad.extend_from_slice(blake3::hash(header).as_bytes());
    aad
}

/// The machine heads at the end of `records` for the machines in them.
fn machine_heads_of(
    records: &[Vec<u8>],
    first_gseq: u64,
) -> Result<Vec<(MachineId, MachineHead)>, String> {
    let mut heads = BTreeMap::new();
    for (gseq, record) in (first_gseq..).zip(records) {
        let entry = LogEntry::decode(record)
            .map_err(|e| format!("entry gseq {gseq}: undecodable record: {e}"))?;
        if let Some((machine, seq, event)) = entry.body.machine_event() {
            let head = MachineHead {
                seq,
                hash: event.chain_hash,
                gseq,
            };
            heads.insert(machine.clone(), head);
        }
    }
    Ok(heads.into_iter().collect())
}

/// Encodes one closed segment's records as an archive file.
pub fn encode_segment(
    sealer: &Sealer,
    segment: &SegmentSummary,
    records: &[Vec<u8>],
    codec: Codec,
) -> Result<Vec<u8>, String> {
    let expected = segment.last_gseq + 1 - segment.first_gseq;
    if records.len() as u64 != expected {
        return Err(format!(
            "segment {} has {} records, expected {expected}",
            segment.index,
            records.len()
        ));
    }
    let mut plaintext = Vec::new();
    for record in records {
        push_chunk_record(&mut plaintext, record);
    }
    let header = ArchiveHeader {
        segment: segment.clone(),
        machine_heads: machine_heads_of(records, segment.first_gseq)?,
        plaintext_bytes: plaintext.len() as u64,
    };
    let header_bytes = rmp_serde::to_vec(&header).expect("encoding to a Vec cannot fail");
    let header_length = u32::try_from(header_bytes.len()).expect("headers are bounded");
    let sealed = sealer.seal(
        &archive_aad(segment.index, &header_bytes),
        &codec.compress(&plaintext),
    );
    let mut file = Vec::with_capacity(PREFIX_BYTES + header_bytes.len() + sealed.len() + 32);
    file.extend_from_slice(&ARCHIVE_MAGIC);
    file.push(ARCHIVE_FORMAT_VERSION);
    file.push(codec as u8);
    file.extend_from_slice(&header_length.to_be_bytes());
    file.extend_from_slice(&header_bytes);
    file.extend_from_slice(&sealed);
    let checksum = blake3::hash(&file);
    file.extend_from_slice(checksum.as_bytes());
    Ok(file)
}

/// A problem with one archive file; `gseq` is the entry when one is to
/// blame.
#[derive(Debug)]
pub struct ArchiveProblem {
    pub gseq: Option<u64>,
    pub problem: String,
}

fn problem(gseq: Option<u64>, problem: impl Into<String>) -> ArchiveProblem {
    ArchiveProblem {
        gseq,
        problem: problem.into(),
    }
}

/// Reads the header only (after the checksum, so a damaged header is never
/// believed), without the key.
pub fn decode_header(bytes: &[u8]) -> Result<(ArchiveHeader, Codec, usize), ArchiveProblem> {
    if bytes.len() < PREFIX_BYTES + CHECKSUM_BYTES {
        return Err(problem(None, "too short to be an archive file"));
    }
    let (content, checksum) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
    if blake3::hash(content).as_bytes() != checksum {
        return Err(problem(None, "checksum mismatch: the file is damaged"));
    }
    if content[..8] != ARCHIVE_MAGIC {
        return Err(problem(None, "not an archive file (bad magic)"));
    }
    if content[8] != ARCHIVE_FORMAT_VERSION {
        return Err(problem(
            None,
            format!(
                "archive format {} is not supported (this build reads {ARCHIVE_FORMAT_VERSION})",
                content[8]
            ),
        ));
    }
    let codec = Codec::from_byte(content[9])
        .ok_or_else(|| problem(None, format!("unknown codec {}", content[9])))?;
    let header_length = u32::from_be_bytes(content[10..14].try_into().expect("4 bytes")) as usize;
    if header_length > ARCHIVE_HEADER_BYTES_MAX || PREFIX_BYTES + header_length > content.len() {
        return Err(problem(None, "header length is out of bounds"));
    }
    let header_bytes = &content[PREFIX_BYTES..PREFIX_BYTES + header_length];
    let header: ArchiveHeader = rmp_serde::from_slice(header_bytes)
        .map_err(|e| problem(None, format!("header does not decode: {e}")))?;
    let segment = &header.segment;
    if segment.first_gseq == 0 || segment.last_gseq < segment.first_gseq {
        return Err(problem(None, "header covers no entries"));
    }
    Ok((header, codec, PREFIX_BYTES + header_length))
}

/// Reads and checks a whole archive file of segment `index`.
pub fn decode_segment(
    sealer: &Sealer,
    index: u64,
    bytes: &[u8],
) -> Result<ArchivedSegment, ArchiveProblem> {
    let (header, codec, body_at) = decode_header(bytes)?;
    let segment = &header.segment;
    if segment.index != index {
        return Err(problem(
            None,
            format!("holds segment {}, not {index}", segment.index),
        ));
    }
    let header_bytes = &bytes[PREFIX_BYTES..body_at];
    let sealed = &bytes[body_at..bytes.len() - CHECKSUM_BYTES];
    let compressed = sealer
        .open(&archive_aad(index, header_bytes), sealed)
        .map_err(|e| match e {
            SealError::TooShort => problem(None, "sealed records are truncated"),
            SealError::Authentication => problem(
                None,
                "records cannot be decrypted: wrong store key or altered bytes",
            ),
        })?;
    let plaintext_bytes = usize::try_from(header.plaintext_bytes).unwrap_or(usize::MAX);
    let plaintext = codec
        .decompress(&compressed, plaintext_bytes)
        .map_err(|e| problem(None, e))?;
    let records = split_records(segment, &plaintext)?;
    check_records(&header, &records)?;
    Ok(ArchivedSegment {
        header,
        codec,
        records,
    })
}

fn split_records(
    segment: &SegmentSummary,
    plaintext: &[u8],
) -> Result<Vec<Vec<u8>>, ArchiveProblem> {
    let expected = segment.last_gseq - segment.first_gseq + 1;
    let mut records = Vec::new();
    let mut rest = plaintext;
    while !rest.is_empty() {
        let gseq = segment.first_gseq + records.len() as u64;
        let malformed = || problem(Some(gseq), "record framing is malformed");
        if records.len() as u64 >= expected {
            return Err(problem(Some(gseq), "more records than the header says"));
        }
        let (length, after) = rest
            .split_at_checked(CHUNK_LENGTH_BYTES)
            .ok_or_else(malformed)?;
        let length = u32::from_le_bytes(length.try_into().expect("4 bytes")) as usize;
        let (record, after) = after.split_at_checked(length).ok_or_else(malformed)?;
        records.push(record.to_vec());
        rest = after;
    }
    if records.len() as u64 != expected {
        let gseq = segment.first_gseq + records.len() as u64;
        return Err(problem(Some(gseq), "missing: the file ends before it"));
    }
    Ok(records)
}

/// Every record decodes at its gseq and links to the one before, from the
/// header's hash before the segment to its hash after; the machine heads
/// are the records'.
fn check_records(header: &ArchiveHeader, records: &[Vec<u8>]) -> Result<(), ArchiveProblem> {
    let segment = &header.segment;
    let mut previous = segment.first_prev_hash;
    let mut heads = BTreeMap::new();
    for (gseq, record) in (segment.first_gseq..).zip(records) {
        let entry = LogEntry::decode(record)
            .map_err(|e| problem(Some(gseq), format!("undecodable record: {e}")))?;
        if let Some((machine, seq, event)) = entry.body.machine_event() {
            let head = MachineHead {
                seq,
                hash: event.chain_hash,
                gseq,
            };
            heads.insert(machine.clone(), head);
        }
        if entry.body.gseq != gseq {
            return Err(problem(
                Some(gseq),
                format!("record claims gseq {}", entry.body.gseq),
            ));
        }
        if entry.prev_hash != previous {
            return Err(problem(
                Some(gseq),
                "does not link to the entry before it (the archive was altered)",
            ));
        }
        previous = entry.hash;
    }
    if previous != segment.last_hash {
        return Err(problem(
            Some(segment.last_gseq),
            "the segment's last hash is not its header's",
        ));
    }
    if !heads.into_iter().eq(header.machine_heads.iter().cloned()) {
        return Err(problem(
            None,
            "the header's machine heads are not the records'",
        ));
    }
    Ok(())
}

/// A directory of archive files, read through by the store. Keeps the
/// last segment it read, since readers go through a segment in order a
/// few hundred records at a time.
pub struct ArchiveDir {
    dir: PathBuf,
    sealer: Sealer,
    last_read: Mutex<Option<Arc<ArchivedSegment>>>,
}

impl std::fmt::Debug for ArchiveDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveDir")
            .field("dir", &self.dir)
            .finish()
    }
}

impl ArchiveDir {
    pub fn new(dir: &Path, key: &SecretKey) -> ArchiveDir {
        ArchiveDir::with_sealer(dir, Sealer::new(key))
    }

    pub fn with_sealer(dir: &Path, sealer: Sealer) -> ArchiveDir {
        ArchiveDir {
            dir: dir.to_path_buf(),
            sealer,
            last_read: Mutex::new(None),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path_of(&self, index: u64) -> PathBuf {
        self.dir.join(file_name(index))
    }

    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    fn error(&self, index: u64, found: ArchiveProblem) -> StoreError {
        StoreError::Archive {
            file: self.path_of(index).display().to_string(),
            gseq: found.gseq,
            problem: found.problem,
        }
    }

    /// Reads and checks the file of segment `index`.
    pub fn segment(&self, index: u64) -> Result<Arc<ArchivedSegment>, StoreError> {
        let mut last = self
            .last_read
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(segment) = last.as_ref().filter(|s| s.header.segment.index == index) {
            return Ok(segment.clone());
        }
        let bytes = self.read_file(index)?;
        let segment = decode_segment(&self.sealer, index, &bytes)
            .map(Arc::new)
            .map_err(|found| self.error(index, found))?;
        *last = Some(segment.clone());
        Ok(segment)
    }

    fn read_file(&self, index: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(index);
        let fail = |problem: String| self.error(index, problem_of(problem));
        let metadata = std::fs::metadata(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => fail("is missing".into()),
            _ => fail(format!("cannot be read: {e}")),
        })?;
        if metadata.len() > ARCHIVE_FILE_BYTES_MAX {
            return Err(fail(format!(
                "is {} bytes, more than an archive file can be",
                metadata.len()
            )));
        }
        std::fs::read(&path).map_err(|e| fail(format!("cannot be read: {e}")))
    }

    /// Visits records `from..=last` (all archived, segments of
    /// `segment_entries`); returns `false` when `visit` asked to stop.
    pub fn for_each_record(
        &self,
        from: u64,
        last: u64,
        segment_entries: u64,
        visit: &mut super::backend::RecordVisitor<'_>,
    ) -> Result<bool, StoreError> {
        let mut gseq = from.max(1);
        while gseq <= last {
            let index = (gseq - 1) / segment_entries;
            let segment = self.segment(index)?;
            let first = segment.header.segment.first_gseq;
            let end = segment.header.segment.last_gseq.min(last);
            if first > gseq {
                let found = problem(Some(gseq), "missing: the file starts after it");
                return Err(self.error(index, found));
            }
            for at in gseq..=end {
                let record = &segment.records[usize::try_from(at - first).expect("bounded")];
                if !visit(at, record)? {
                    return Ok(false);
                }
            }
            gseq = end + 1;
        }
        Ok(true)
    }

    /// Writes one file durably: a temporary file, fsync, rename, and an
    /// fsync of the directory, so the file is whole before anything is
    /// removed from the live log.
    pub fn write_file(&self, index: u64, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        let path = self.path_of(index);
        let io = |what: &str, e: std::io::Error| {
            StoreError::Io(format!("{what} {}: {e}", path.display()))
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| io("creating the directory of", e))?;
        let temporary = self.dir.join(format!("{}.tmp", file_name(index)));
        let mut file = std::fs::File::create(&temporary).map_err(|e| io("creating", e))?;
        file.write_all(bytes).map_err(|e| io("writing", e))?;
        file.sync_all().map_err(|e| io("syncing", e))?;
        drop(file);
        std::fs::rename(&temporary, &path).map_err(|e| io("renaming into", e))?;
        std::fs::File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| io("syncing the directory of", e))?;
        let mut last = self
            .last_read
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *last = None;
        Ok(path)
    }
}

fn problem_of(text: String) -> ArchiveProblem {
    problem(None, text)
}

#[cfg(test)]
mod tests;

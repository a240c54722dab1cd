//! The store's side of archiving: moving closed segments out of the live
//! log into archive files ([`super::archive`]) and back.
//!
//! Order is what makes it safe: every file is written whole and durable,
//! and read back and checked, before one atomic backend write removes its
//! records from the live log and records the [`ArchiveMark`]. A crash in
//! between leaves files the live log still duplicates; the next run
//! writes them again. The live log keeps everything it needs to go on
//! without the archive: the heads, the segment summaries, (the ledger's
//! part) a checkpoint at the cut, and every machine's index rows, archived
//! ones included. Those cost about 54 bytes per archived event (measured:
//! BENCHMARKS.md), and keep a late resend a duplicate rather than a
//! conflict and the primary's search for each machine's committed mark
//! (`replica::ingest::committed_seq`) exact, without reading the archive.

use super::archive::{ArchiveDir, ArchiveMark, Codec, encode_segment};
use super::backend::{Backend, Restoration};
use super::record::{GENESIS_HASH, LogEntry};
use super::{LogStore, SegmentSummary, StoreError};
use crate::crypto::{Hash32, SecretKey};
use std::path::{Path, PathBuf};

/// What an archiving run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveReport {
    /// Segments archived by this run.
    pub segments: u64,
    /// Entries now archived in all (this run and earlier ones).
    pub through_gseq: u64,
    /// Record bytes this run moved, before compression and sealing.
    pub record_bytes: u64,
    /// Bytes of the archive files this run wrote.
    pub file_bytes: u64,
}

/// Which closed segments a run archives: those wholly before a cutoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cutoff {
    /// Segments whose last entry is before this gseq.
    BeforeGseq(u64),
    /// Segments whose last entry the primary logged before this time (ms).
    BeforeTime(i64),
    /// All closed segments but the newest `keep` (a replica's schedule).
    KeepSegments(u64),
}

impl<B: Backend> LogStore<B> {
    /// Reads archived entries from `dir` (overriding the directory the
    /// archive mark names).
    pub fn attach_archive(&mut self, dir: &Path, key: &SecretKey) {
        self.archive = Some(ArchiveDir::new(dir, key));
    }

    /// An archive directory as the mark records it: relative to the
    /// store's home when inside it, else absolute.
    fn recorded_archive_dir(&self, dir: &Path) -> String {
        let inside = self
            .home
            .as_ref()
            .and_then(|home| dir.strip_prefix(home).ok());
        match inside {
            Some(relative) if !relative.as_os_str().is_empty() => relative.display().to_string(),
            _ => dir.display().to_string(),
        }
    }

    /// The directory a mark's recorded archive directory stands for.
    pub fn resolve_archive_dir(&self, recorded: &str) -> PathBuf {
        super::archive::resolve_dir(self.home.as_deref(), recorded)
    }

    /// What the live log no longer holds, if anything was archived.
    pub fn archived(&self) -> Option<&ArchiveMark> {
        self.archived.as_ref()
    }

    /// The archive directory entries are read from, when one is attached.
    pub fn archive_dir(&self) -> Option<&ArchiveDir> {
        self.archive.as_ref()
    }

    /// The first gseq the live log holds (1 unless segments were archived).
    pub fn first_live_gseq(&self) -> u64 {
        self.archived
            .as_ref()
            .map_or(1, |mark| mark.through_gseq + 1)
    }

    /// The entry at `gseq` when the live log holds it.
    pub(super) fn get_live(&self, gseq: u64) -> Result<Option<LogEntry>, StoreError> {
        if gseq < self.first_live_gseq() {
            return Ok(None);
        }
        self.get(gseq)
    }

    /// The hash of entry `gseq` (the genesis hash for 0). The last
    /// archived entry's comes from the mark, so checkpoints taken at the
    /// cut are checked without reading the archive.
    pub fn entry_hash(&self, gseq: u64) -> Result<Option<Hash32>, StoreError> {
        if gseq == 0 {
            return Ok(Some(GENESIS_HASH));
        }
        if let Some(mark) = self.archived.as_ref().filter(|m| m.through_gseq == gseq) {
            return Ok(Some(mark.through_hash));
        }
        Ok(self.get(gseq)?.map(|entry| entry.hash))
    }

    /// How many segments from the first would be archived for `cutoff`
    /// (closed segments only, counted from segment 0, archived or not).
    pub fn segments_for(&self, cutoff: Cutoff) -> Result<u64, StoreError> {
        let segments = self.segments()?;
        let closed = segments.len() as u64;
        let count = match cutoff {
            Cutoff::BeforeGseq(gseq) => segments.iter().take_while(|s| s.last_gseq < gseq).count(),
            Cutoff::BeforeTime(ms) => segments
                .iter()
                .take_while(|s| s.last_logged_ms < ms)
                .count(),
            Cutoff::KeepSegments(keep) => return Ok(closed.saturating_sub(keep)),
        };
        Ok(count as u64)
    }

    /// Moves closed segments `0..segments` (those not archived yet) into
    /// archive files in `dir`, then out of the live log. `progress` is
    /// called with each segment written.
    pub fn archive_segments(
        &mut self,
        segments: u64,
        dir: &Path,
        key: &SecretKey,
        codec: Codec,
        progress: &mut dyn FnMut(&SegmentSummary),
    ) -> Result<ArchiveReport, StoreError> {
        // The segments are read from the backend: staged appends first.
        self.write_staged()?;
        let dir = std::path::absolute(dir)
            .map_err(|e| StoreError::Io(format!("archive directory {}: {e}", dir.display())))?;
        let done = self.archived.as_ref().map_or(0, |mark| mark.segments);
        if let Some(mark) = &self.archived {
            let earlier = self.resolve_archive_dir(&mark.dir);
            if earlier != dir {
                return Err(StoreError::Io(format!(
                    "earlier segments were archived to {}; archive to the same directory (or move them there and name it)",
                    earlier.display()
                )));
            }
        }
        let summaries = self.segments()?;
        let mut report = ArchiveReport::default();
        if segments <= done {
            report.through_gseq = self.first_live_gseq() - 1;
            return Ok(report);
        }
        let Some(last) = summaries.get(usize::try_from(segments - 1).unwrap_or(usize::MAX)) else {
            return Err(StoreError::Io(format!(
                "only {} segments are closed; cannot archive {segments}",
                summaries.len()
            )));
        };
        let archive = ArchiveDir::new(&dir, key);
        for summary in &summaries[usize::try_from(done).expect("bounded")..] {
            if summary.index >= segments {
                break;
            }
            report.file_bytes += self.write_archive_file(&archive, summary, codec)?;
            report.record_bytes += summary.record_bytes;
            report.segments += 1;
            progress(summary);
        }
        let last_entry = self
            .get(last.last_gseq)?
            .ok_or_else(|| StoreError::entry(last.last_gseq, "missing from the log"))?;
        let mark = ArchiveMark {
            segments,
            through_gseq: last.last_gseq,
            through_hash: last.last_hash,
            through_epoch: last_entry.body.epoch,
            dir: self.recorded_archive_dir(&dir),
        };
        self.backend.archive_cut(&mark)?;
        self.archived = Some(mark);
        self.archive = Some(archive);
        report.through_gseq = last.last_gseq;
        Ok(report)
    }

    /// Writes one segment's file and reads it back; returns its size.
    fn write_archive_file(
        &self,
        archive: &ArchiveDir,
        summary: &SegmentSummary,
        codec: Codec,
    ) -> Result<u64, StoreError> {
        let mut records = Vec::new();
        self.backend
            .for_each_record(summary.first_gseq, summary.last_gseq, &mut |_, record| {
                records.push(record.to_vec());
                Ok(true)
            })?;
        let bytes = encode_segment(archive.sealer(), summary, &records, codec)
            .map_err(|problem| StoreError::entry(summary.first_gseq, problem))?;
        archive.write_file(summary.index, &bytes)?;
        // Read back from disk and checked before the live log lets go.
        let written = archive.segment(summary.index)?;
        assert_eq!(
            written.records, records,
            "an archive file reads back as written"
        );
        Ok(bytes.len() as u64)
    }

    /// Brings every archived segment back into the live log, newest first
    /// (each one atomic, so an interrupted restore can be run again). The
    /// archive files stay where they are. Returns the segments restored.
    pub fn restore_archived(
        &mut self,
        progress: &mut dyn FnMut(&SegmentSummary),
    ) -> Result<u64, StoreError> {
        self.write_staged()?;
        let Some(mut mark) = self.archived.clone() else {
            return Ok(0);
        };
        let archive = self.archive.as_ref().ok_or_else(|| StoreError::Archived {
            gseq: mark.through_gseq,
            through: mark.through_gseq,
            dir: mark.dir.clone(),
        })?;
        let mut restored = 0;
        while mark.segments > 0 {
            let index = mark.segments - 1;
            let segment = archive.segment(index)?;
            let summary = segment.header.segment.clone();
            if summary.last_gseq != mark.through_gseq || summary.last_hash != mark.through_hash {
                return Err(StoreError::Archive {
                    file: archive.path_of(index).display().to_string(),
                    gseq: Some(summary.last_gseq),
                    problem: "does not end where the live log begins".into(),
                });
            }
            let records = segment.records.clone();
            let next = match index {
                0 => None,
                _ => {
                    let before = archive.segment(index - 1)?;
                    let last = before.records.last().expect("segments are never empty");
                    let entry = LogEntry::decode(last).map_err(|e| {
                        StoreError::entry(summary.first_gseq - 1, format!("undecodable: {e}"))
                    })?;
                    Some(ArchiveMark {
                        segments: index,
                        through_gseq: summary.first_gseq - 1,
                        through_hash: summary.first_prev_hash,
                        through_epoch: entry.body.epoch,
                        dir: mark.dir.clone(),
                    })
                }
            };
            self.backend.restore(&Restoration {
                first_gseq: summary.first_gseq,
                records,
                mark: next.clone(),
            })?;
            self.archived = next.clone();
            progress(&summary);
            restored += 1;
            match next {
                Some(next) => mark = next,
                None => break,
            }
        }
        Ok(restored)
    }
}

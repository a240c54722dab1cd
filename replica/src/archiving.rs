//! When a replica archives: a pure plan over what it knows (its segments,
//! its commit mark, as primary its followers' matches, the clock), and the
//! step the core runs between rounds.
//!
//! Archiving is a store operation on the core thread (RocksDB has one
//! writer): at most [`SEGMENTS_PER_STEP_MAX`] segment per step, so a
//! backlog of segments never holds heartbeats back for long. It never
//! archives past what is committed, nor, as primary, past what a follower
//! has matched: a lagging follower repairs from the live log. A peer far
//! behind a range already archived is still served: the store reads
//! archived entries back from the files for catch-up and NAKs alike.

use crate::config::ArchiveConfig;
use crate::node::Node;
use crate::round::{FleetKeys, Round};
use ledger::crypto::SecretKey;
use ledger::keys::STORE_KEY_FILE;
use ledger::store::backend::Backend;
use ledger::store::{ArchiveReport, SegmentSummary, StoreError};
use std::path::{Path, PathBuf};

/// Segments archived in one step at most (about 40 ms of zstd each).
pub const SEGMENTS_PER_STEP_MAX: u64 = 1;
const DAY_MS: i64 = 86_400_000;

/// How many segments from the first may be archived now, if more than
/// `archived` already are: the fewest that every rule allows.
pub fn plan(
    config: &ArchiveConfig,
    closed: &[SegmentSummary],
    archived: u64,
    safe_gseq: u64,
    wall_ms: i64,
) -> Option<u64> {
    if !config.enabled() {
        return None;
    }
    let count = |keep: &dyn Fn(&SegmentSummary) -> bool| {
        closed.iter().take_while(|s| !keep(s)).count() as u64
    };
    let mut target = count(&|s| s.last_gseq > safe_gseq);
    if let Some(keep) = config.keep_segments {
        target = target.min((closed.len() as u64).saturating_sub(keep));
    }
    if let Some(days) = config.keep_days {
        // A config may name any number of days; more than the clock can
        // reach keeps everything.
        let kept_ms = i64::try_from(days).map_or(i64::MAX, |days| days.saturating_mul(DAY_MS));
        let horizon = wall_ms.saturating_sub(kept_ms);
        target = target.min(count(&|s| s.last_logged_ms >= horizon));
    }
    let target = target.min(archived + SEGMENTS_PER_STEP_MAX);
    (target > archived).then_some(target)
}

/// What no peer can need from the live log any more: the commit mark, and
/// as primary, the least any follower has matched.
pub fn safe_gseq(node: &Node, tip_gseq: u64) -> u64 {
    let mut safe = node.commit_gseq().min(tip_gseq);
    for (_, matched) in node.follower_matches() {
        safe = safe.min(matched);
    }
    safe
}

/// Where a replica's archive files go.
pub fn archive_dir(config: &ArchiveConfig, data_dir: &Path) -> PathBuf {
    config
        .dir
        .clone()
        .unwrap_or_else(|| data_dir.join("archive"))
}

/// One step: archives what the plan allows, if anything.
pub fn step<B: Backend, K: FleetKeys>(
    round: &mut Round<B, K>,
    config: &ArchiveConfig,
    data_dir: &Path,
    keys_dir: &Path,
    wall_ms: i64,
) -> Result<Option<ArchiveReport>, StoreError> {
    let store = round.ledger().store();
    let archived = store.archived().map_or(0, |mark| mark.segments);
    let safe = safe_gseq(round.node(), store.head().gseq);
    let Some(segments) = plan(config, &store.segments()?, archived, safe, wall_ms) else {
        return Ok(None);
    };
    let key_path = keys_dir.join(STORE_KEY_FILE);
    let key = SecretKey::load(&key_path)
        .map_err(|e| StoreError::Io(format!("reading {}: {e}", key_path.display())))?;
    let dir = archive_dir(config, data_dir);
    round.archive(segments, &dir, &key).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(count: u64) -> Vec<SegmentSummary> {
        (0..count)
            .map(|index| SegmentSummary {
                index,
                first_gseq: index * 10 + 1,
                last_gseq: index * 10 + 10,
                last_logged_ms: (index as i64 + 1) * DAY_MS,
                ..SegmentSummary::default()
            })
            .collect()
    }

    fn keep(segments: Option<u64>, days: Option<u64>) -> ArchiveConfig {
        ArchiveConfig {
            keep_segments: segments,
            keep_days: days,
            ..ArchiveConfig::default()
        }
    }

    #[test]
    fn nothing_is_archived_unless_configured() {
        assert_eq!(
            plan(&ArchiveConfig::default(), &segments(9), 0, 1_000, 0),
            None
        );
    }

    #[test]
    fn one_segment_per_step_within_what_is_kept() {
        let config = keep(Some(3), None);
        assert_eq!(plan(&config, &segments(9), 0, 1_000, 0), Some(1));
        assert_eq!(plan(&config, &segments(9), 5, 1_000, 0), Some(6));
        assert_eq!(plan(&config, &segments(9), 6, 1_000, 0), None);
    }

    #[test]
    fn never_past_what_a_follower_matched_or_what_is_committed() {
        let config = keep(Some(0), None);
        // Segment 2 ends at gseq 30; a follower has matched 29.
        assert_eq!(plan(&config, &segments(9), 2, 29, 0), None);
        assert_eq!(plan(&config, &segments(9), 2, 30, 0), Some(3));
    }

    #[test]
    fn days_keep_the_recent_segments() {
        // Segment i's last entry was logged on day i + 1; it is now day 10.
        let config = keep(None, Some(4));
        let now = 10 * DAY_MS;
        assert_eq!(plan(&config, &segments(9), 5, 1_000, now), None);
        assert_eq!(plan(&config, &segments(9), 4, 1_000, now), Some(5));
        // Both rules: the stricter wins.
        let both = keep(Some(8), Some(4));
        assert_eq!(plan(&both, &segments(9), 0, 1_000, now), Some(1));
        assert_eq!(plan(&both, &segments(9), 1, 1_000, now), None);
    }

    #[test]
    fn more_days_than_the_clock_reaches_keep_everything() {
        let now = 10 * DAY_MS;
        for days in [u64::MAX, 1 << 62, 200_000_000_000_000] {
            let config = keep(None, Some(days));
            assert_eq!(plan(&config, &segments(9), 0, 1_000, now), None, "{days}");
        }
    }
}

//! The chain links of the most recently appended entries, kept in memory
//! for readers on other threads (a replica's dashboard: its chain check
//! and its index of each machine's entries), so they need not read every
//! new entry back from the backend, decrypt and decode it a second time.
//!
//! The store fills it when a write succeeds and cuts it when it truncates,
//! so it always says what the backend holds at those gseqs. It is bounded
//! ([`RecentLinks::new`]): a reader asking for a range it no longer (or not
//! yet) covers is told so and reads the backend instead.

use crate::crypto::Hash32;
use crate::ids::MachineId;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

/// One appended entry's place in the fleet chain. Only entries that passed
/// the store's rules are appended, so each one reads: its event (if any)
/// decoded, its operator record (if any) decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecentLink {
    pub gseq: u64,
    /// blake3 of the record bytes as written.
    pub hash: Hash32,
    pub prev_hash: Hash32,
    /// The machine whose event the entry carries.
    pub machine: Option<MachineId>,
}

struct Ring {
    /// Consecutive gseqs, oldest first.
    links: VecDeque<RecentLink>,
    entries_max: usize,
}

/// A shared, bounded window of the newest appended entries' links.
#[derive(Clone)]
pub struct RecentLinks(Arc<Mutex<Ring>>);

impl RecentLinks {
    /// Keeps at most `entries_max` links (at least one). The window is
    /// allocated whole here: grown by doubling while it fills, each step
    /// copied it and faulted in fresh pages inside one round (at 20,000
    /// events/s, rounds of 1–5 ms every second or two until it was full).
    pub fn new(entries_max: usize) -> RecentLinks {
        let entries_max = entries_max.max(1);
        RecentLinks(Arc::new(Mutex::new(Ring {
            links: VecDeque::with_capacity(entries_max),
            entries_max,
        })))
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        // A panic while holding the lock leaves whole links behind: every
        // change below is a push, a pop or a clear.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves in the links of a successful write (consecutive gseqs),
    /// leaving `links` empty. Links that do not continue the window
    /// replace it.
    pub(super) fn extend(&self, links: &mut Vec<RecentLink>) {
        let Some(first) = links.first() else {
            return;
        };
        let mut ring = self.ring();
        let continues = ring
            .links
            .back()
            .is_some_and(|last| last.gseq + 1 == first.gseq && last.hash == first.prev_hash);
        if !continues {
            ring.links.clear();
        }
        // Room first, so the window never outgrows what it was given.
        let skip = links.len().saturating_sub(ring.entries_max);
        let excess = (ring.links.len() + links.len() - skip).saturating_sub(ring.entries_max);
        ring.links.drain(..excess);
        ring.links.extend(links.drain(..).skip(skip));
    }

    /// Forgets every link after `to_gseq` (the store truncated them).
    pub(super) fn truncate_after(&self, to_gseq: u64) {
        let mut ring = self.ring();
        while ring.links.back().is_some_and(|last| last.gseq > to_gseq) {
            ring.links.pop_back();
        }
    }

    /// The links of `from_gseq..=to_gseq`, or `None` unless the window
    /// holds every one of them.
    pub fn range(&self, from_gseq: u64, to_gseq: u64) -> Option<Vec<RecentLink>> {
        let ring = self.ring();
        let first = ring.links.front()?.gseq;
        let last = ring.links.back()?.gseq;
        if from_gseq > to_gseq || from_gseq < first || to_gseq > last {
            return None;
        }
        let start = usize::try_from(from_gseq - first).ok()?;
        let end = usize::try_from(to_gseq - first).ok()?;
        Some(ring.links.range(start..=end).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Link `gseq`, whose hash is byte `gseq` and which links to `gseq - 1`.
    fn link(gseq: u64) -> RecentLink {
        RecentLink {
            gseq,
            hash: [gseq as u8; 32],
            prev_hash: [(gseq - 1) as u8; 32],
            machine: None,
        }
    }

    fn links(gseqs: std::ops::RangeInclusive<u64>) -> Vec<RecentLink> {
        gseqs.map(link).collect()
    }

    #[test]
    fn the_window_keeps_the_newest_consecutive_links() {
        let recent = RecentLinks::new(4);
        assert_eq!(recent.range(1, 1), None);
        recent.extend(&mut links(1..=3));
        assert_eq!(recent.range(1, 3), Some(links(1..=3)));
        recent.extend(&mut links(4..=6));
        // Bounded: 1 and 2 are gone.
        assert_eq!(recent.range(2, 6), None);
        assert_eq!(recent.range(3, 6), Some(links(3..=6)));
        assert_eq!(recent.range(4, 7), None);
        assert_eq!(recent.range(5, 4), None);
        // What does not continue the window (a gap) replaces it.
        recent.extend(&mut links(9..=9));
        assert_eq!(recent.range(6, 6), None);
        assert_eq!(recent.range(9, 9), Some(links(9..=9)));
        // A write longer than the window leaves its newest links, in the
        // room the window was given.
        let room = recent.ring().links.capacity();
        recent.extend(&mut links(10..=17));
        assert_eq!(recent.range(13, 17), None);
        assert_eq!(recent.range(14, 17), Some(links(14..=17)));
        assert_eq!(recent.ring().links.capacity(), room);
    }

    #[test]
    fn a_truncation_forgets_what_it_removed_and_a_different_entry_replaces_the_window() {
        let recent = RecentLinks::new(10);
        recent.extend(&mut links(1..=5));
        recent.truncate_after(3);
        assert_eq!(recent.range(3, 4), None);
        assert_eq!(recent.range(1, 3), Some(links(1..=3)));
        recent.extend(&mut links(4..=4));
        assert_eq!(recent.range(1, 4), Some(links(1..=4)));
        // Entry 5 of another history (its link is not entry 4's hash).
        let mut other = link(5);
        other.prev_hash = [0xee; 32];
        recent.extend(&mut vec![other.clone()]);
        assert_eq!(recent.range(4, 4), None);
        assert_eq!(recent.range(5, 5), Some(vec![other]));
    }
}

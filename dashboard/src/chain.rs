//! The audit log's chain check: in the background, every committed entry's
//! `prev_hash` is compared with the hash of the entry before it (from
//! genesis on, then as the log grows). The hashes are computed from the
//! record bytes as they are read, so this is the whole fleet chain.

use crate::app::{AppState, now_ms};
use crate::ports::{EntryKind, READ_ENTRIES_MAX, ReadError};
use serde::Serialize;
use std::time::Duration;

/// How often the check looks for newly committed entries.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Entries checked per step (each step is one blocking read).
const STEP_ENTRIES: u64 = READ_ENTRIES_MAX as u64;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChainStatus {
    /// Every entry up to here links to its predecessor.
    pub verified_to: u64,
    /// The hash of `verified_to`.
    pub hash: String,
    /// The first break found (the check stops there).
    pub problem: Option<String>,
    pub checked_at_ms: i64,
}

/// Checks `entries` (in gseq order, continuing `status`) and advances it.
pub fn check(status: &mut ChainStatus, entries: &[crate::ports::LogEntryView]) {
    let genesis = hex::encode(ledger::store::record::GENESIS_HASH);
    for entry in entries {
        if status.problem.is_some() {
            return;
        }
        if entry.gseq != status.verified_to + 1 {
            status.problem = Some(format!("entry {} is missing", status.verified_to + 1));
            return;
        }
        if let EntryKind::Unreadable { problem } = &entry.kind {
            status.problem = Some(format!("entry {} is unreadable: {problem}", entry.gseq));
            return;
        }
        let expected = if entry.gseq == 1 {
            &genesis
        } else {
            &status.hash
        };
        if entry.prev_hash != *expected {
            status.problem = Some(format!(
                "entry {} does not link to entry {}",
                entry.gseq,
                entry.gseq - 1
            ));
            return;
        }
        status.verified_to = entry.gseq;
        status.hash.clone_from(&entry.hash);
    }
}

/// Keeps the chain status current until the replica's ports close.
pub async fn keep_checking(app: AppState) {
    let mut status = ChainStatus::default();
    let mut snapshot = app.ports.snapshot.clone();
    loop {
        let commit = snapshot.borrow_and_update().status.commit;
        while status.problem.is_none() && status.verified_to < commit {
            let from = status.verified_to + 1;
            let to = commit.min(from + STEP_ENTRIES - 1);
            let log = app.ports.log.clone();
            let read = tokio::task::spawn_blocking(move || log.entries(from, to)).await;
            match read {
                Ok(Ok(entries)) if !entries.is_empty() => check(&mut status, &entries),
                Ok(Ok(_)) | Ok(Err(ReadError::BeyondTip { .. })) => break,
                Ok(Err(error)) => {
                    tracing::warn!(error = %error, "the chain check could not read the log");
                    break;
                }
                Err(_) => return,
            }
            status.checked_at_ms = now_ms();
            app.chain.send_replace(status.clone());
        }
        tokio::time::sleep(CHECK_EVERY).await;
        if snapshot.has_changed().is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::LogEntryView;

    fn entry(gseq: u64, prev: &str, hash: &str) -> LogEntryView {
        LogEntryView {
            gseq,
            epoch: 1,
            logged_ms: 0,
            hash: hash.into(),
            prev_hash: prev.into(),
            kind: EntryKind::EpochStarted {
                primary: "replica-1".into(),
            },
        }
    }

    #[test]
    fn a_chain_is_followed_and_the_first_break_named() {
        let genesis = hex::encode([0u8; 32]);
        let mut status = ChainStatus::default();
        check(&mut status, &[entry(1, &genesis, "a"), entry(2, "a", "b")]);
        assert_eq!((status.verified_to, status.problem.as_deref()), (2, None));
        check(
            &mut status,
            &[entry(3, "b", "c"), entry(4, "x", "d"), entry(5, "d", "e")],
        );
        assert_eq!(status.verified_to, 3);
        assert_eq!(
            status.problem.as_deref(),
            Some("entry 4 does not link to entry 3")
        );
        let mut status = ChainStatus::default();
        check(&mut status, &[entry(2, &genesis, "a")]);
        assert_eq!(status.problem.as_deref(), Some("entry 1 is missing"));
    }
}

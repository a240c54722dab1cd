//! The audit log's chain check: in the background, every committed entry's
//! `prev_hash` is compared with the hash of the entry before it (from
//! genesis on, then as the log grows). The hashes are computed from the
//! record bytes as they are read, so this is the whole fleet chain.

use crate::app::{AppState, now_ms};
use crate::ports::{ChainLink, READ_ENTRIES_MAX, ReadError};
use serde::Serialize;
use std::time::Duration;

/// The least time between two passes of the check; a pass waits for the
/// replica's status to change, so an idle replica is not polled. A replica
/// keeps the newest entries' links in memory (65,536 entries); a check that
/// comes often takes them from there instead of reading every entry back
/// from the log. At 250 ms it fell out of that window at 200,000 committed
/// entries/s and then read RocksDB for good (BENCHMARKS.md, stop 23).
const CHECK_EVERY: Duration = Duration::from_millis(50);
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

/// Checks `links` (in gseq order, continuing `status`) and advances it.
pub fn check(status: &mut ChainStatus, links: &[ChainLink]) {
    if status.problem.is_some() {
        return;
    }
    let mut last = [0u8; 32];
    if status.verified_to > 0 && hex::decode_to_slice(&status.hash, &mut last).is_err() {
        status.problem = Some(format!("the hash of entry {} is lost", status.verified_to));
        return;
    }
    let mut verified_to = status.verified_to;
    for link in links {
        if link.gseq != verified_to + 1 {
            status.problem = Some(format!("entry {} is missing", verified_to + 1));
            break;
        }
        if let Some(problem) = &link.unreadable {
            status.problem = Some(format!("entry {} is unreadable: {problem}", link.gseq));
            break;
        }
        let expected = if link.gseq == 1 {
            &ledger::store::record::GENESIS_HASH
        } else {
            &last
        };
        if link.prev_hash != *expected {
            status.problem = Some(format!(
                "entry {} does not link to entry {}",
                link.gseq,
                link.gseq - 1
            ));
            break;
        }
        verified_to = link.gseq;
        last = link.hash;
    }
    if verified_to != status.verified_to {
        status.verified_to = verified_to;
        status.hash = hex::encode(last);
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
            let read = tokio::task::spawn_blocking(move || log.chain_links(from, to)).await;
            match read {
                Ok(Ok(links)) if !links.is_empty() => check(&mut status, &links),
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
        if snapshot.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link whose hashes are named by one byte each (0 is genesis).
    fn entry(gseq: u64, prev: u8, hash: u8) -> ChainLink {
        ChainLink {
            gseq,
            hash: [hash; 32],
            prev_hash: [prev; 32],
            unreadable: None,
        }
    }

    #[test]
    fn a_chain_is_followed_and_the_first_break_named() {
        let mut status = ChainStatus::default();
        check(&mut status, &[entry(1, 0, 0xa), entry(2, 0xa, 0xb)]);
        assert_eq!((status.verified_to, status.problem.as_deref()), (2, None));
        assert_eq!(status.hash, hex::encode([0xb; 32]));
        check(
            &mut status,
            &[entry(3, 0xb, 0xc), entry(4, 0xf, 0xd), entry(5, 0xd, 0xe)],
        );
        assert_eq!(status.verified_to, 3);
        assert_eq!(status.hash, hex::encode([0xc; 32]));
        assert_eq!(
            status.problem.as_deref(),
            Some("entry 4 does not link to entry 3")
        );
        let mut status = ChainStatus::default();
        check(&mut status, &[entry(2, 0, 0xa)]);
        assert_eq!(status.problem.as_deref(), Some("entry 1 is missing"));
        let mut status = ChainStatus::default();
        let mut broken = entry(2, 0xa, 0xb);
        broken.unreadable = Some("bad bytes".into());
        check(&mut status, &[entry(1, 0, 0xa), broken]);
        assert_eq!(
            (status.verified_to, status.problem.as_deref()),
            (1, Some("entry 2 is unreadable: bad bytes"))
        );
    }
}

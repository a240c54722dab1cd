//! How the dashboard reads this replica's log, from any thread and without
//! the core: [`StoreLogReader`] over RocksDB's reader, bounded by the tip
//! the core last finished writing, and an index of each machine's entries
//! so a machine's history pages in time proportional to the page.
//!
//! The index holds committed entries only (8 bytes per entry): they are
//! never truncated, so it never has to forget anything. Entries above the
//! commit are few and read directly. Reads of the log that continue the
//! index feed it (the dashboard's chain check reads every committed entry
//! in order, and each read of a record decrypts and decodes it, so the
//! index should not read them all a second time); a thread keeps the index
//! current when nothing else does ([`keep_index_current`]), and a request
//! catches up whatever is left.
//!
//! The newest entries are not read back at all: the store keeps their
//! chain links in memory as it writes them ([`RecentLinks`]), and the chain
//! check and the index take them from there. Only what that window no
//! longer holds (after a start, or a check that fell far behind) is read
//! from RocksDB, so those hashes are computed from the bytes on disk.

use super::status::ReadableTip;
use dashboard::format;
use dashboard::ports::{
    ChainLink, EntryKind, LogEntryView, LogReader, MACHINE_SCAN_ENTRIES_MAX, READ_ENTRIES_MAX,
    ReadError, SnapshotReceiver,
};
use ledger::event::{Destination, Event, Source};
use ledger::operator::{OperatorAction, OperatorRecord};
use ledger::store::links::{RecentLink, RecentLinks};
use ledger::store::record::{LogEntry, Payload};
use ledger::store::rocks::RocksReader;
use ledger::{EventEnvelope, MachineId};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

/// How often the index thread looks for newly committed entries (the
/// chain check's reads usually got there first: it runs every 2 s).
const INDEX_EVERY: Duration = Duration::from_secs(5);

/// Each machine's committed entries, by gseq (ascending).
#[derive(Default)]
struct MachineIndex {
    indexed_to: u64,
    gseqs: HashMap<MachineId, Vec<u64>>,
}

impl MachineIndex {
    /// Indexes the entry after `indexed_to`.
    fn add(&mut self, gseq: u64, machine: Option<MachineId>) {
        debug_assert_eq!(gseq, self.indexed_to + 1, "the index grows in order");
        if let Some(machine) = machine {
            self.gseqs.entry(machine).or_default().push(gseq);
        }
        self.indexed_to = gseq;
    }
}

/// Reads the replica's log for pages, from any thread.
pub(super) struct StoreLogReader {
    reader: RocksReader,
    /// The newest entries' links, as the core's store wrote them.
    recent: RecentLinks,
    readable_tip: Arc<ReadableTip>,
    snapshot: SnapshotReceiver,
    index: Mutex<MachineIndex>,
}

impl StoreLogReader {
    pub(super) fn new(
        (reader, recent): (RocksReader, RecentLinks),
        readable_tip: Arc<ReadableTip>,
        snapshot: SnapshotReceiver,
    ) -> StoreLogReader {
        StoreLogReader {
            reader,
            recent,
            readable_tip,
            snapshot,
            index: Mutex::new(MachineIndex::default()),
        }
    }

    fn tip(&self) -> u64 {
        self.readable_tip.0.load(Ordering::Acquire)
    }

    /// Indexes what was committed since the last call; returns how far the
    /// index reaches.
    fn catch_up(&self) -> Result<u64, ReadError> {
        let commit = self.snapshot.borrow().status.commit.min(self.tip());
        let mut index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
        if commit <= index.indexed_to {
            return Ok(index.indexed_to);
        }
        let from = index.indexed_to + 1;
        if let Some(links) = self.recent.range(from, commit) {
            for link in links {
                index.add(link.gseq, link.machine);
            }
            return Ok(index.indexed_to);
        }
        let mut indexed_to = index.indexed_to;
        let gseqs = &mut index.gseqs;
        let result = self
            .reader
            .for_each_record(from, commit, &mut |gseq, record| {
                // Only the machine is wanted: the body without hashing the
                // record (the chain check hashes every entry anyway).
                if let Ok((_, body)) = LogEntry::decode_body(record)
                    && let Payload::Event { machine_id, .. } = &body.payload
                {
                    match gseqs.get_mut(machine_id) {
                        Some(list) => list.push(gseq),
                        None => {
                            gseqs.insert(machine_id.clone(), vec![gseq]);
                        }
                    }
                }
                indexed_to = gseq;
                Ok(true)
            });
        index.indexed_to = indexed_to;
        result.map_err(|e| ReadError::Storage(e.to_string()))?;
        Ok(indexed_to)
    }

    /// Adds the committed ones of `read` (gseq and the event's machine, in
    /// gseq order) to the index when they continue it.
    fn index_read(&self, read: &[(u64, Option<MachineId>)]) {
        let commit = self.snapshot.borrow().status.commit;
        let mut index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
        let start = read.partition_point(|(gseq, _)| *gseq <= index.indexed_to);
        if read
            .get(start)
            .is_none_or(|(gseq, _)| *gseq != index.indexed_to + 1)
        {
            return;
        }
        for (gseq, machine) in read[start..].iter().take_while(|(gseq, _)| *gseq <= commit) {
            index.add(*gseq, machine.clone());
        }
    }

    /// Chain links from the store's window of recent links (every entry
    /// in it passed the store's rules, so each reads); the machines feed
    /// the index as reads from RocksDB do.
    fn recent_chain_links(&self, recent: Vec<RecentLink>) -> Vec<ChainLink> {
        let mut links = Vec::with_capacity(recent.len());
        let mut read = Vec::with_capacity(recent.len());
        for link in recent {
            links.push(ChainLink {
                gseq: link.gseq,
                hash: link.hash,
                prev_hash: link.prev_hash,
                unreadable: None,
            });
            read.push((link.gseq, link.machine));
        }
        self.index_read(&read);
        links
    }

    /// `from_gseq..=to_gseq` within what may be read: below the readable
    /// tip and at most [`READ_ENTRIES_MAX`] entries.
    fn readable(&self, from_gseq: u64, to_gseq: u64) -> Result<(u64, u64), ReadError> {
        let tip = self.tip();
        if from_gseq > tip {
            return Err(ReadError::BeyondTip {
                gseq: from_gseq,
                tip,
            });
        }
        let from = from_gseq.max(1);
        let last = to_gseq
            .min(tip)
            .min(from.saturating_add(READ_ENTRIES_MAX as u64 - 1));
        Ok((from, last))
    }

    /// The machine's indexed gseqs within `from..=to`.
    fn indexed(
        &self,
        machine: &MachineId,
        from: u64,
        to: u64,
        newest_first: bool,
        limit: usize,
    ) -> Vec<u64> {
        let index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(list) = index.gseqs.get(machine) else {
            return Vec::new();
        };
        let start = list.partition_point(|&g| g < from);
        let end = list.partition_point(|&g| g <= to);
        let range = &list[start..end.max(start)];
        if newest_first {
            range.iter().rev().take(limit).copied().collect()
        } else {
            range.iter().take(limit).copied().collect()
        }
    }

    fn read_one(&self, gseq: u64) -> Result<Option<LogEntryView>, ReadError> {
        let mut found = None;
        self.reader
            .for_each_record(gseq, gseq, &mut |gseq, record| {
                found = Some(entry_view(gseq, record));
                Ok(false)
            })
            .map_err(|e| ReadError::Storage(e.to_string()))?;
        Ok(found)
    }

    /// Scans `from..=to` (the unindexed tail) for the machine's entries.
    fn scan(
        &self,
        machine: &MachineId,
        from: u64,
        to: u64,
        newest_first: bool,
        limit: usize,
    ) -> Result<Vec<LogEntryView>, ReadError> {
        let to = to.min(from.saturating_add(MACHINE_SCAN_ENTRIES_MAX));
        let mut found = Vec::new();
        self.reader
            .for_each_record(from, to, &mut |gseq, record| {
                let view = entry_view(gseq, record);
                if matches!(&view.kind, EntryKind::Event { machine: m, .. } if m == machine) {
                    found.push(view);
                }
                Ok(true)
            })
            .map_err(|e| ReadError::Storage(e.to_string()))?;
        if newest_first {
            found.reverse();
        }
        found.truncate(limit);
        Ok(found)
    }
}

impl LogReader for StoreLogReader {
    fn entries(&self, from_gseq: u64, to_gseq: u64) -> Result<Vec<LogEntryView>, ReadError> {
        let (from, last) = self.readable(from_gseq, to_gseq)?;
        let mut out = Vec::new();
        self.reader
            .for_each_record(from, last, &mut |gseq, record| {
                out.push(entry_view(gseq, record));
                Ok(true)
            })
            .map_err(|e| ReadError::Storage(e.to_string()))?;
        let read: Vec<(u64, Option<MachineId>)> = out
            .iter()
            .map(|view| match &view.kind {
                EntryKind::Event { machine, .. } => (view.gseq, Some(machine.clone())),
                _ => (view.gseq, None),
            })
            .collect();
        self.index_read(&read);
        Ok(out)
    }

    /// Decodes each record once for its hashes and whether it reads (as
    /// `entries` would show it), without describing events or writing hex;
    /// the machines feed the index as `entries` does.
    fn chain_links(&self, from_gseq: u64, to_gseq: u64) -> Result<Vec<ChainLink>, ReadError> {
        let (from, last) = self.readable(from_gseq, to_gseq)?;
        if let Some(recent) = self.recent.range(from, last) {
            return Ok(self.recent_chain_links(recent));
        }
        let mut links = Vec::new();
        let mut read = Vec::new();
        self.reader
            .for_each_record(from, last, &mut |gseq, record| {
                let (link, machine) = chain_link(gseq, record);
                links.push(link);
                read.push((gseq, machine));
                Ok(true)
            })
            .map_err(|e| ReadError::Storage(e.to_string()))?;
        self.index_read(&read);
        Ok(links)
    }

    fn machine_entries(
        &self,
        machine: &MachineId,
        from_gseq: u64,
        to_gseq: u64,
        newest_first: bool,
        limit: usize,
    ) -> Result<Vec<LogEntryView>, ReadError> {
        let limit = limit.min(READ_ENTRIES_MAX);
        let from = from_gseq.max(1);
        let to = to_gseq.min(self.tip());
        if from > to || limit == 0 {
            return Ok(Vec::new());
        }
        let indexed_to = self.catch_up()?;
        let tail_from = from.max(indexed_to + 1);
        let mut out = Vec::new();
        if newest_first && tail_from <= to {
            out = self.scan(machine, tail_from, to, true, limit)?;
        }
        let wanted = limit - out.len();
        for gseq in self.indexed(machine, from, to.min(indexed_to), newest_first, wanted) {
            if let Some(view) = self.read_one(gseq)? {
                out.push(view);
            }
        }
        if !newest_first && out.len() < limit && tail_from <= to {
            let wanted = limit - out.len();
            out.extend(self.scan(machine, tail_from, to, false, wanted)?);
        }
        Ok(out)
    }
}

/// Keeps the machine index current while the reader is in use.
pub(super) fn keep_index_current(reader: Weak<StoreLogReader>) {
    let spawned = std::thread::Builder::new()
        .name("log-index".into())
        .spawn(move || {
            while let Some(reader) = reader.upgrade() {
                if reader.snapshot.has_changed().is_err() {
                    return;
                }
                if let Err(error) = reader.catch_up() {
                    tracing::warn!(error = %error, "could not index the log for the dashboard");
                }
                drop(reader);
                std::thread::sleep(INDEX_EVERY);
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(error = %error, "the dashboard's log index is built on demand only");
    }
}

/// An entry's chain link and, for an event, its machine. An entry is
/// unreadable exactly when [`entry_view`] would show it so.
fn chain_link(gseq: u64, record: &[u8]) -> (ChainLink, Option<MachineId>) {
    let entry = match LogEntry::decode(record) {
        Ok(entry) => entry,
        Err(error) => {
            let link = ChainLink {
                gseq,
                hash: *blake3::hash(record).as_bytes(),
                prev_hash: [0; 32],
                unreadable: Some(error.to_string()),
            };
            return (link, None);
        }
    };
    let (unreadable, machine) = match &entry.body.payload {
        Payload::EpochStarted { .. } => (None, None),
        Payload::Event {
            machine_id, event, ..
        } => match event.envelope() {
            Ok(_) => (None, Some(machine_id.clone())),
            Err(error) => (Some(error.to_string()), None),
        },
        Payload::Operator { record } => (
            OperatorRecord::decode(record)
                .err()
                .map(|error| format!("operator record: {error}")),
            None,
        ),
    };
    let link = ChainLink {
        gseq,
        hash: entry.hash,
        prev_hash: entry.prev_hash,
        unreadable,
    };
    (link, machine)
}

/// An entry as pages show it; a record that does not decode is shown as
/// such, never hidden.
pub(super) fn entry_view(gseq: u64, record: &[u8]) -> LogEntryView {
    match LogEntry::decode(record) {
        Ok(entry) => {
            let kind = match &entry.body.payload {
                Payload::EpochStarted { primary } => EntryKind::EpochStarted {
                    primary: primary.clone(),
                },
                Payload::Event {
                    machine_id,
                    machine_seq,
                    event,
                } => match event.envelope() {
                    Ok(envelope) => EntryKind::Event {
                        machine: machine_id.clone(),
                        seq: *machine_seq,
                        at_ms: envelope.at_ms,
                        event: envelope.event.kind().to_owned(),
                        detail: describe(&envelope),
                    },
                    Err(error) => EntryKind::Unreadable {
                        problem: error.to_string(),
                    },
                },
                Payload::Operator { record } => operator_kind(record),
            };
            LogEntryView {
                gseq,
                epoch: entry.body.epoch,
                logged_ms: entry.body.logged_ms,
                hash: hex_hash(&entry.hash),
                prev_hash: hex_hash(&entry.prev_hash),
                kind,
            }
        }
        Err(error) => LogEntryView {
            gseq,
            epoch: 0,
            logged_ms: 0,
            hash: hex_hash(blake3::hash(record).as_bytes()),
            prev_hash: String::new(),
            kind: EntryKind::Unreadable {
                problem: error.to_string(),
            },
        },
    }
}

/// A hash in lowercase hex. `hex::encode` goes character by character
/// through an iterator; the chain check words every committed entry, and
/// that walk cost about 4% of a replica's CPU under load.
fn hex_hash(hash: &[u8; 32]) -> String {
    let mut text = [0u8; 64];
    hex::encode_to_slice(hash, &mut text).expect("64 hex digits for 32 bytes");
    String::from_utf8(text.to_vec()).expect("hex digits are ASCII")
}

/// An operator's entry as pages show it.
fn operator_kind(record: &[u8]) -> EntryKind {
    match OperatorRecord::decode(record) {
        Ok(record) => {
            let machine = match &record.action {
                OperatorAction::CommandRequested { machine, .. } => Some(machine.clone()),
                OperatorAction::AlertAcknowledged { alert, .. } => Some(alert.machine.clone()),
                _ => None,
            };
            EntryKind::Operator {
                at_ms: record.at_ms,
                action: record.action.kind().to_owned(),
                operator: record.operator,
                machine,
            }
        }
        Err(error) => EntryKind::Unreadable {
            problem: format!("operator record: {error}"),
        },
    }
}

fn source(source: &Source) -> String {
    match source {
        Source::Local => String::new(),
        Source::Remote { command_id } => format!(" (dashboard command #{command_id})"),
    }
}

/// What an event says, in words, for the audit log and live feeds.
pub(super) fn describe(envelope: &EventEnvelope) -> String {
    let won = format::won;
    match &envelope.event {
        Event::MoneyInserted {
            denomination,
            destination,
        } => {
            let place = match destination {
                Destination::Tube => "tube",
                Destination::CashBox => "cash box",
                Destination::Stacker => "stacker",
                Destination::Escrow => "bill escrow",
            };
            format!("{} into the {place}", won(denomination.value()))
        }
        Event::MoneyRejected { value, reason, .. } => {
            format!("{} returned: {}", won(*value), reason.message())
        }
        Event::ProductPurchased {
            slot,
            product,
            price,
        } => format!("{product} (slot {slot}) for {}", won(*price)),
        Event::PurchaseCancelled {
            slot,
            product,
            price,
        } => format!("{product} (slot {slot}) refunded, {}", won(*price)),
        Event::ChangeReturned { paid, .. } => format!("{} paid out", won(*paid)),
        Event::BillStacked { denomination } => {
            format!(
                "{} bill from the escrow to the stacker",
                won(denomination.value())
            )
        }
        Event::BillReturned { denomination } => {
            format!(
                "{} bill given back from the escrow",
                won(denomination.value())
            )
        }
        Event::ChangeOwed { ticket, amount } => format!("ticket {ticket}: {} owed", won(*amount)),
        Event::ChangeOwedSettled {
            ticket,
            amount,
            source: from,
        } => format!("ticket {ticket} settled, {}{}", won(*amount), source(from)),
        Event::SlotRefilled { slot, added } => format!("slot {slot}: {added} added"),
        Event::TubeLoaded {
            denomination,
            count,
        } => format!("{count} × {}", won(denomination.value())),
        Event::CashCollected {
            cash_box,
            stacker,
            counted,
        } => format!(
            "expected {}, counted {}",
            won(cash_box + stacker),
            won(*counted)
        ),
        Event::PriceChanged {
            slot,
            price,
            source: from,
        } => format!("slot {slot}: price {}{}", won(*price), source(from)),
        Event::ProductRenamed {
            slot,
            name,
            source: from,
        } => format!("slot {slot}: renamed {name:?}{}", source(from)),
        Event::SlotConfigured(config) => format!(
            "slot {}: {} at {}, holds {}",
            config.slot,
            config.product.name,
            won(config.product.price),
            config.capacity
        ),
        Event::AdminLoginFailed { failures } => format!("failure {failures} in a row"),
        Event::AdminLockedOut { until_ms } => format!("until {}", format::time(*until_ms)),
        Event::RemoteCommandRejected { command_id, reason } => {
            format!("command #{command_id}: {reason}")
        }
        Event::Installed(_)
        | Event::AdminLoggedIn
        | Event::AdminLoggedOut
        | Event::AdminPasswordChanged { .. } => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger::store::record::{EntryBody, GENESIS_HASH};

    #[test]
    fn a_view_names_its_hashes_in_lowercase_hex_and_links_to_the_one_before() {
        let marker = |gseq| EntryBody {
            gseq,
            epoch: 1,
            logged_ms: 0,
            payload: Payload::EpochStarted {
                primary: "replica-1".into(),
            },
        };
        let (first, first_bytes) = LogEntry::seal_body(marker(1), GENESIS_HASH);
        let (_, second_bytes) = LogEntry::seal_body(marker(2), first.hash);
        let first_view = entry_view(1, &first_bytes);
        let second_view = entry_view(2, &second_bytes);
        assert_eq!(
            first_view.hash,
            hex::encode(blake3::hash(&first_bytes).as_bytes())
        );
        assert_eq!(first_view.prev_hash, "0".repeat(64));
        assert_eq!(second_view.prev_hash, first_view.hash);
        let unreadable = entry_view(3, b"not a record");
        assert_eq!(
            unreadable.hash,
            hex::encode(blake3::hash(b"not a record").as_bytes())
        );
    }

    /// A log of `entries` epoch markers, all readable, and a reader of it
    /// whose window of recent links holds the newest `recent` of them.
    fn markers_log(
        entries: u64,
        recent: usize,
    ) -> (
        tempfile::TempDir,
        ledger::Ledger,
        Arc<ReadableTip>,
        RecentLinks,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let options = ledger::store::OpenOptions {
            create: true,
            ..Default::default()
        };
        let key = ledger::crypto::SecretKey::from_bytes([7; 32]);
        let mut log = ledger::Ledger::open(dir.path(), &key, options).unwrap();
        let links = log.store_mut().keep_recent_links(recent);
        for epoch in 1..=entries {
            log.append_marker(epoch, 0, "replica-1").unwrap();
        }
        let tip = Arc::new(ReadableTip::default());
        tip.0.store(entries, Ordering::Release);
        (dir, log, tip, links)
    }

    /// A published status whose commit is `commit`.
    fn snapshot_at(commit: u64) -> Arc<dashboard::ports::Snapshot> {
        let mut snapshot = dashboard::ports::Snapshot::default();
        snapshot.status.commit = commit;
        Arc::new(snapshot)
    }

    #[test]
    fn reads_that_continue_the_index_feed_it_up_to_the_commit() {
        // No recent links: every read goes to RocksDB.
        let (_dir, log, tip, _) = markers_log(6, 1);
        let recent = RecentLinks::new(1);
        let (publish, published) = tokio::sync::watch::channel(snapshot_at(4));
        let reader = StoreLogReader::new((log.store().backend().reader(), recent), tip, published);
        let indexed_to = || reader.index.lock().unwrap().indexed_to;
        // A read that does not start where the index ends leaves it.
        assert_eq!(reader.entries(2, 3).unwrap().len(), 2);
        assert_eq!(indexed_to(), 0);
        // One that does feeds it, but only with committed entries.
        assert_eq!(reader.entries(1, 6).unwrap().len(), 6);
        assert_eq!(indexed_to(), 4);
        publish.send_replace(snapshot_at(6));
        reader.entries(3, 6).unwrap();
        assert_eq!(indexed_to(), 6);
        assert_eq!(reader.catch_up().unwrap(), 6);
    }

    #[test]
    fn chain_links_are_the_hashes_entries_show_and_feed_the_index_too() {
        // The window holds entries 3 to 5: links of 1 to 9 are read from
        // RocksDB, links of 3 to 5 come from the window.
        let (_dir, log, tip, recent) = markers_log(5, 3);
        assert!(recent.range(2, 5).is_none());
        assert!(recent.range(3, 5).is_some());
        let (_publish, published) = tokio::sync::watch::channel(snapshot_at(5));
        let reader = StoreLogReader::new((log.store().backend().reader(), recent), tip, published);
        let links = reader.chain_links(1, 9).unwrap();
        assert_eq!(reader.index.lock().unwrap().indexed_to, 5);
        let views = reader.entries(1, 9).unwrap();
        assert_eq!(links.len(), 5);
        for (link, view) in links.iter().zip(&views) {
            assert_eq!(link, &ChainLink::of_view(view));
            assert_eq!(link.unreadable, None);
        }
        assert_eq!(reader.chain_links(3, 5).unwrap(), links[2..]);
        assert!(matches!(
            reader.chain_links(6, 9),
            Err(ReadError::BeyondTip { gseq: 6, tip: 5 })
        ));
    }

    #[test]
    fn the_window_of_recent_links_feeds_the_index_up_to_the_commit_only() {
        let (_dir, mut log, tip, recent) = markers_log(4, 100);
        let (publish, published) = tokio::sync::watch::channel(snapshot_at(3));
        let reader = StoreLogReader::new((log.store().backend().reader(), recent), tip, published);
        let links = reader.chain_links(1, 4).unwrap();
        assert_eq!(links.len(), 4);
        assert_eq!(reader.index.lock().unwrap().indexed_to, 3);
        // A truncation takes the links it removed out of the window, and
        // what replaces them is what the chain check sees.
        log.truncate_after(3).unwrap();
        // (The readable tip has not come down yet: the core lowers it
        // after its round, and this reads what the log lacks.)
        assert!(matches!(
            reader.chain_links(4, 4),
            Err(ReadError::Storage(_))
        ));
        log.append_marker(9, 0, "replica-2").unwrap();
        let replaced = reader.chain_links(4, 4).unwrap();
        assert_ne!(replaced[0].hash, links[3].hash);
        assert_eq!(replaced[0].prev_hash, links[2].hash);
        publish.send_replace(snapshot_at(4));
        assert_eq!(reader.catch_up().unwrap(), 4);
        let views = reader.entries(4, 4).unwrap();
        assert_eq!(replaced[0], ChainLink::of_view(&views[0]));
    }
}

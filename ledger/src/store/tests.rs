use super::*;
use crate::admin::PasswordParams;
use crate::catalog::default_catalog;
use crate::crypto::SecretKey;
use crate::keys::SingleMachineKey;
use crate::machine::MachineCore;
use crate::money::{Denomination, MoneyKind};
use crate::operator::{
    AlertKey, AlertKind, CommandOutcome, OperatorAction, OperatorRecord, OperatorRole,
};
use crate::rules::{Command, Context};
use crate::rules::{RemoteAction, RemoteCommand};
use crate::state::{DEFAULT_STACKER_CAPACITY_BILLS, DEFAULT_TUBE_CAPACITY};
use crate::store::record::ReplicatedRecord;
use std::path::PathBuf;

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    store_key: SecretKey,
    machine_key: SecretKey,
    machine: MachineId,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        Fixture {
            path: dir.path().join("log"),
            _dir: dir,
            store_key: SecretKey::generate(),
            machine_key: SecretKey::generate(),
            machine: MachineId::numbered(1),
        }
    }

    fn open(&self) -> LogStore {
        self.open_with(4)
    }

    fn open_with(&self, segment_entries: u64) -> LogStore {
        LogStore::open(
            &self.path,
            &self.store_key,
            OpenOptions {
                create: true,
                segment_entries,
                ..OpenOptions::default()
            },
        )
        .unwrap()
    }

    fn keys(&self) -> SingleMachineKey {
        SingleMachineKey::new(self.machine.clone(), &self.machine_key)
    }

    /// `count` events of a real stream: the machine is installed and
    /// stocked, then customers insert money and take it back. (The
    /// simulated fleet lives in the `workload` crate, which depends on
    /// this one, so the store's own tests drive the core directly.)
    fn events(&self, count: usize) -> Vec<SignedEvent> {
        let password = "vend-admin-1!".to_owned();
        let setup = [
            Command::Install {
                slots: default_catalog(),
                tube_capacity: DEFAULT_TUBE_CAPACITY,
                stacker_capacity_bills: DEFAULT_STACKER_CAPACITY_BILLS,
                admin_password: password.clone(),
            },
            Command::AdminLogin { password },
            Command::RefillAll,
            Command::LoadTube {
                denomination: Denomination::Coin100,
                count: 10,
            },
            Command::AdminLogout,
        ];
        let customer = [
            Command::Insert {
                kind: MoneyKind::Coin,
                value: 100,
            },
            Command::Insert {
                kind: MoneyKind::Bill,
                value: 1_000,
            },
            Command::ReturnChange,
        ];
        let commands: Vec<Command> = setup
            .into_iter()
            .chain(customer.into_iter().cycle().take(count))
            .collect();
        let mut out = self.stream(&commands, count);
        out.truncate(count);
        out
    }

    /// The machine's events for `commands`, in order, until there are
    /// `count` of them (every command must be accepted).
    fn stream(&self, commands: &[Command], count: usize) -> Vec<SignedEvent> {
        let mut core = MachineCore::new(self.machine.clone(), &self.machine_key);
        let mut out = Vec::new();
        for (n, command) in (0..).zip(commands) {
            if out.len() >= count {
                break;
            }
            let ctx = Context {
                now_ms: 1_767_193_200_000 + 1_000 * n,
                salt: [1; 16],
                password_params: PasswordParams::Light,
            };
            let prepared = core.prepare(command, &ctx).unwrap();
            out.extend_from_slice(prepared.signed());
            core.commit(prepared);
        }
        out
    }
}

/// Every record of `store`, as a follower receives them.
fn replicated(store: &LogStore) -> Vec<ReplicatedRecord> {
    store
        .records_from(1)
        .map(|item| ReplicatedRecord::decode(item.unwrap().1).unwrap())
        .collect()
}

fn new_gseqs(outcome: &AppendOutcome) -> Vec<u64> {
    outcome
        .results
        .iter()
        .filter_map(|r| match r {
            Appended::New { gseq } => Some(*gseq),
            _ => None,
        })
        .collect()
}

#[test]
fn appends_reads_back_and_survives_reopen() {
    let fx = Fixture::new();
    let events = fx.events(10);
    let head = {
        let mut store = fx.open();
        let outcome = store.append_events(1, 5, &events, &fx.keys()).unwrap();
        assert_eq!(new_gseqs(&outcome), (1..=10).collect::<Vec<_>>());
        assert_eq!(store.machine_head(&fx.machine).seq, 10);
        store.head()
    };
    let store = fx.open();
    assert_eq!(store.head(), head);
    let entries: Vec<LogEntry> = store.entries_from(1).map(Result::unwrap).collect();
    assert_eq!(entries.len(), 10);
    for (entry, signed) in entries.iter().zip(&events) {
        assert_eq!(entry.body.machine_event().unwrap().2, signed);
        assert_eq!(entry.body.epoch, 1);
    }
    for pair in entries.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
    assert_eq!(store.gseq_of(&fx.machine, 7).unwrap(), Some(7));
}

#[test]
fn deferred_sync_commits_many_writes_with_one_sync() {
    let fx = Fixture::new();
    let events = fx.events(12);
    let head = {
        let mut store = LogStore::open(
            &fx.path,
            &fx.store_key,
            OpenOptions {
                create: true,
                deferred_sync: true,
                ..OpenOptions::default()
            },
        )
        .unwrap();
        for chunk in events.chunks(3) {
            store.append_events(1, 5, chunk, &fx.keys()).unwrap();
        }
        store.put_app_meta("vote", &7u64).unwrap();
        assert!(store.backend().has_unsynced_writes());
        store.sync_deferred().unwrap();
        assert!(!store.backend().has_unsynced_writes());
        // Nothing written since: no second fsync.
        store.sync_deferred().unwrap();
        store.head()
    };
    let store = fx.open();
    assert_eq!(store.head(), head);
    assert_eq!(store.head().gseq, 12);
    assert_eq!(store.app_meta::<u64>("vote").unwrap(), Some(7));
}

#[test]
fn staged_appends_reach_the_backend_in_one_write_at_the_sync() {
    let fx = Fixture::new();
    let events = fx.events(12);
    let disk = memory::MemDisk::new();
    let mut store = LogStore::with_backend(memory::MemBackend::open(&disk, true), 4).unwrap();
    store.sync_deferred().unwrap();
    store.stage_writes();
    for chunk in events[..9].chunks(3) {
        store.append_events(1, 5, chunk, &fx.keys()).unwrap();
    }
    assert_eq!(disk.unsynced_writes(), 0, "the appends wait for the sync");
    // Reads see them: records, index rows, closed segments, resends.
    assert_eq!(store.head().gseq, 9);
    assert_eq!(store.entries_from(1).count(), 9);
    assert_eq!(store.gseq_of(&fx.machine, 8).unwrap(), Some(8));
    assert_eq!(store.segments().unwrap().len(), 2);
    let resent = store
        .append_events(1, 5, &events[7..8], &fx.keys())
        .unwrap();
    assert_eq!(resent.results, [Appended::Duplicate { gseq: 8 }]);
    // Another write goes after them, in order.
    store.put_app_meta("vote", &7u64).unwrap();
    assert_eq!(disk.unsynced_writes(), 2, "the staged batch, then the vote");
    // Staged again in the emptied stage of the first write: nothing of
    // that write is read from it any more.
    store.append_events(1, 5, &events[9..], &fx.keys()).unwrap();
    assert_eq!(store.gseq_of(&fx.machine, 3).unwrap(), Some(3));
    assert_eq!(store.gseq_of(&fx.machine, 11).unwrap(), Some(11));
    let staged: Vec<Vec<u8>> = (1..=12)
        .map(|gseq| store.record_bytes(gseq).unwrap().unwrap())
        .collect();
    for (gseq, record) in (1..=12).zip(&staged) {
        assert_eq!(LogEntry::decode(record).unwrap().body.gseq, gseq);
    }
    store.sync_deferred().unwrap();
    assert_eq!(disk.unsynced_writes(), 0);
    // A crash after the sync keeps everything; reopened, the log is whole.
    disk.crash(0);
    let reopened = LogStore::with_backend(memory::MemBackend::open(&disk, true), 4).unwrap();
    assert_eq!(reopened.head(), store.head());
    assert_eq!(reopened.entries_from(1).count(), 12);
    for (gseq, record) in (1..=12).zip(&staged) {
        assert_eq!(reopened.record_bytes(gseq).unwrap().as_ref(), Some(record));
    }
    assert_eq!(reopened.app_meta::<u64>("vote").unwrap(), Some(7));
}

#[test]
fn a_crash_before_the_sync_loses_the_staged_appends_whole() {
    let fx = Fixture::new();
    let events = fx.events(6);
    let disk = memory::MemDisk::new();
    let mut store = LogStore::with_backend(memory::MemBackend::open(&disk, true), 4).unwrap();
    store.stage_writes();
    store.append_events(1, 5, &events[..3], &fx.keys()).unwrap();
    store.sync_deferred().unwrap();
    store.append_events(1, 5, &events[3..], &fx.keys()).unwrap();
    drop(store);
    disk.crash(0);
    let reopened = LogStore::with_backend(memory::MemBackend::open(&disk, true), 4).unwrap();
    assert_eq!(reopened.head().gseq, 3);
    assert_eq!(reopened.machine_head(&fx.machine).seq, 3);
    assert_eq!(reopened.gseq_of(&fx.machine, 4).unwrap(), None);
}

#[test]
fn resends_are_duplicates_and_gaps_conflicts_forgeries_are_rejected() {
    let fx = Fixture::new();
    let events = fx.events(6);
    let mut store = fx.open();
    store.append_events(1, 0, &events[..3], &fx.keys()).unwrap();
    // Resend of 2..3 plus new 4: duplicates, then one new entry.
    let outcome = store
        .append_events(1, 0, &events[1..4], &fx.keys())
        .unwrap();
    assert_eq!(
        outcome.results,
        [
            Appended::Duplicate { gseq: 2 },
            Appended::Duplicate { gseq: 3 },
            Appended::New { gseq: 4 }
        ]
    );
    // A gap: #6 without #5.
    let outcome = store
        .append_events(1, 0, &events[5..6], &fx.keys())
        .unwrap();
    assert_eq!(
        outcome.results,
        [Appended::Rejected(EventRejection::Gap {
            expected: 5,
            got: 6
        })]
    );
    // Same seq as #4 with different content.
    let mut altered = events[3].clone();
    altered.chain_hash[0] ^= 1;
    let outcome = store.append_events(1, 0, &[altered], &fx.keys()).unwrap();
    assert_eq!(
        outcome.results,
        [Appended::Rejected(EventRejection::Conflict { seq: 4 })]
    );
    // #5 with a chain hash its machine's key did not produce.
    let mut forged_event = events[4].clone();
    forged_event.chain_hash = [7; 32];
    let outcome = store
        .append_events(1, 0, &[forged_event], &fx.keys())
        .unwrap();
    assert!(
        matches!(
            &outcome.results[0],
            Appended::Rejected(EventRejection::Chain(_))
        ),
        "{outcome:?}"
    );
    // Garbage bytes.
    let garbage = SignedEvent {
        bytes: vec![1, 2, 3],
        chain_hash: [0; 32],
    };
    let outcome = store.append_events(1, 0, &[garbage], &fx.keys()).unwrap();
    assert!(matches!(
        &outcome.results[0],
        Appended::Rejected(EventRejection::Decode(_))
    ));
    assert_eq!(store.head().gseq, 4);
    // In-batch duplicates.
    let outcome = store
        .append_events(1, 0, &[events[4].clone(), events[4].clone()], &fx.keys())
        .unwrap();
    assert_eq!(
        outcome.results,
        [Appended::New { gseq: 5 }, Appended::Duplicate { gseq: 5 }]
    );
}

/// A read-only store reads everything, including writes still in the
/// write-ahead log and writes of a process that holds the store open, and
/// refuses every write by name.
#[test]
fn a_read_only_store_reads_everything_and_refuses_writes() {
    let fx = Fixture::new();
    let events = fx.events(12);
    let mut writer = fx.open();
    writer
        .append_events(1, 5, &events[..6], &fx.keys())
        .unwrap();
    // Opened beside the writer, in this process (no lock is taken).
    let mut reader = LogStore::open_read_only(&fx.path, &fx.store_key).unwrap();
    assert_eq!(reader.head(), writer.head());
    assert_eq!(reader.entries_from(1).count(), 6);
    let refused = reader
        .append_events(1, 5, &events[6..], &fx.keys())
        .unwrap_err();
    assert!(matches!(refused, StoreError::ReadOnly(_)), "{refused}");
    assert!(refused.to_string().contains("read-only"), "{refused}");
    assert!(matches!(
        reader.put_app_meta("note", &1u64),
        Err(StoreError::ReadOnly(_))
    ));
    assert!(matches!(reader.flush(), Err(StoreError::ReadOnly(_))));
    drop(reader);
    drop(writer);
    let reader = LogStore::open_read_only(&fx.path, &fx.store_key).unwrap();
    assert_eq!(reader.head().gseq, 6);
    let wrong = LogStore::open_read_only(&fx.path, &SecretKey::generate())
        .err()
        .unwrap();
    assert!(matches!(wrong, StoreError::WrongKey), "{wrong}");
    let missing = LogStore::open_read_only(&fx.path.join("nope"), &fx.store_key)
        .err()
        .unwrap();
    assert!(matches!(missing, StoreError::NotFound(_)), "{missing}");
    assert!(!fx.path.join("nope").exists(), "nothing was created");
}

#[test]
fn wrong_key_is_a_clear_error() {
    let fx = Fixture::new();
    drop(fx.open());
    let err = LogStore::open(&fx.path, &SecretKey::generate(), OpenOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::WrongKey), "{err}");
    let missing = LogStore::open(&fx.path.join("nope"), &fx.store_key, OpenOptions::default())
        .err()
        .unwrap();
    assert!(matches!(missing, StoreError::NotFound(_)), "{missing}");
}

#[test]
fn flipped_byte_and_missing_entry_name_the_entry() {
    let fx = Fixture::new();
    let mut store = fx.open();
    let events = fx.events(8);
    store.append_events(1, 0, &events[..4], &fx.keys()).unwrap();
    store.append_events(1, 0, &events[4..], &fx.keys()).unwrap();
    let (first, mut value) = store.raw_chunk(6).unwrap().unwrap();
    assert_eq!(first, 5, "each batch starts its own chunk");
    value[30] ^= 0x01;
    store.overwrite_raw_chunk(5, Some(&value)).unwrap();
    let err = store.entries_from(1).find_map(Result::err).unwrap();
    assert!(
        err.to_string()
            .starts_with("entry gseq 5: cannot be decrypted"),
        "{err}"
    );
    assert!(
        store.get(3).unwrap().is_some(),
        "other chunks stay readable"
    );
    // A value moved to another gseq does not open either (key is bound).
    let (_, moved) = store.raw_chunk(1).unwrap().unwrap();
    store.overwrite_raw_chunk(5, Some(&moved)).unwrap();
    assert!(store.get(5).is_err());
    store.overwrite_raw_chunk(5, None).unwrap();
    let err = store.entries_from(1).find_map(Result::err).unwrap();
    assert_eq!(err.to_string(), "entry gseq 5: missing from the log");
    assert!(store.get(7).is_err());
}

#[test]
fn large_batches_split_into_chunks_and_every_entry_reads_back() {
    let fx = Fixture::new();
    let mut store = fx.open_with(1_000);
    let events = fx.events(CHUNK_ENTRIES_MAX * 2 + 5);
    store.append_events(1, 0, &events, &fx.keys()).unwrap();
    assert_eq!(
        store
            .raw_chunk(CHUNK_ENTRIES_MAX as u64)
            .unwrap()
            .unwrap()
            .0,
        1
    );
    assert_eq!(
        store
            .raw_chunk(CHUNK_ENTRIES_MAX as u64 + 1)
            .unwrap()
            .unwrap()
            .0,
        CHUNK_ENTRIES_MAX as u64 + 1
    );
    for gseq in 1..=events.len() as u64 {
        let entry = store.get(gseq).unwrap().unwrap();
        assert_eq!(entry.body.gseq, gseq);
        assert_eq!(
            entry.body.machine_event().unwrap().2,
            &events[gseq as usize - 1]
        );
    }
    assert_eq!(store.get(events.len() as u64 + 1).unwrap(), None);
    let from_middle: Vec<u64> = store
        .entries_from(70)
        .map(|e| e.unwrap().body.gseq)
        .collect();
    assert_eq!(from_middle, (70..=events.len() as u64).collect::<Vec<_>>());
}

#[test]
fn segments_close_every_n_entries() {
    let fx = Fixture::new();
    let mut store = fx.open_with(4);
    store
        .append_events(1, 0, &fx.events(10), &fx.keys())
        .unwrap();
    let segments = store.segments().unwrap();
    assert_eq!(segments.len(), 2);
    assert_eq!((segments[1].first_gseq, segments[1].last_gseq), (5, 8));
    assert_eq!(segments[1].last_hash, store.get(8).unwrap().unwrap().hash);
    assert_eq!(
        segments[1].first_prev_hash,
        store.get(4).unwrap().unwrap().hash
    );
    assert_eq!(
        (
            store.open_segment().first_gseq,
            store.open_segment().last_gseq
        ),
        (9, 10)
    );
}

#[test]
fn truncation_rolls_everything_back_and_appending_resumes() {
    let fx = Fixture::new();
    let events = fx.events(12);
    let mut store = fx.open_with(4);
    store
        .append_events(1, 0, &events[..10], &fx.keys())
        .unwrap();
    let head_at_6 = store.get(6).unwrap().unwrap().hash;
    assert_eq!(store.truncate_after(6).unwrap(), 4);
    assert_eq!(store.head().gseq, 6);
    assert_eq!(store.head().hash, head_at_6);
    assert_eq!(store.machine_head(&fx.machine).seq, 6);
    assert_eq!(store.segments().unwrap().len(), 1);
    assert_eq!(
        (
            store.open_segment().first_gseq,
            store.open_segment().last_gseq
        ),
        (5, 6)
    );
    assert_eq!(store.gseq_of(&fx.machine, 7).unwrap(), None);
    let outcome = store
        .append_events(2, 0, &events[6..12], &fx.keys())
        .unwrap();
    assert_eq!(new_gseqs(&outcome), (7..=12).collect::<Vec<_>>());
    drop(store);
    let store = fx.open_with(4);
    assert_eq!(store.head().gseq, 12);
    assert_eq!(store.segments().unwrap().len(), 3);
    let summary = crate::verify::verify_log(&store, &fx.keys(), &mut |_| {}).unwrap();
    assert_eq!(summary.entries, 12);
}

#[test]
fn a_follower_replicating_records_ends_with_identical_hashes() {
    let fx = Fixture::new();
    let mut primary = fx.open();
    primary
        .append_events(3, 77, &fx.events(9), &fx.keys())
        .unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let follower_key = SecretKey::generate();
    let mut follower = LogStore::open(
        &follower_dir.path().join("log"),
        &follower_key,
        OpenOptions {
            create: true,
            segment_entries: 4,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let entries = replicated(&primary);
    // Out of order is refused, and nothing is written.
    let err = follower
        .append_replicated(&entries[1..3], &fx.keys())
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotContiguous { gseq: 2, .. }),
        "{err}"
    );
    assert_eq!(follower.head().gseq, 0);
    follower
        .append_replicated(&entries[..5], &fx.keys())
        .unwrap();
    follower
        .append_replicated(&entries[5..], &fx.keys())
        .unwrap();
    assert_eq!(follower.head(), primary.head());
    assert_eq!(follower.segments().unwrap(), primary.segments().unwrap());
    // An entry from another history (different prev hash) is refused.
    let mut body = entries[8].entry().body.clone();
    body.gseq = 10;
    let (_, bytes) = LogEntry::seal_body(body, entries[8].entry().prev_hash);
    let forged = ReplicatedRecord::decode(bytes).unwrap();
    let err = follower
        .append_replicated(&[forged], &fx.keys())
        .unwrap_err();
    assert!(err.to_string().contains("previous-hash"), "{err}");
}

#[test]
fn app_metadata_and_checkpoints_round_trip() {
    let fx = Fixture::new();
    let mut store = fx.open();
    store
        .put_app_meta("election", &(7u64, "replica-2"))
        .unwrap();
    assert_eq!(
        store.app_meta::<(u64, String)>("election").unwrap(),
        Some((7, "replica-2".into()))
    );
    assert_eq!(store.app_meta::<u64>("absent").unwrap(), None);
    for gseq in 1..=(CHECKPOINTS_KEPT as u64 + 3) {
        let sealed = store.checkpoint_sealer().seal(gseq * 10, 8, |out| {
            out.extend_from_slice(&gseq.to_be_bytes());
        });
        store.put_checkpoint(sealed).unwrap();
    }
    let (at, bytes) = store.checkpoint_at_or_before(55).unwrap().unwrap();
    assert_eq!((at, bytes), (50, 5u64.to_be_bytes().to_vec()));
    // The oldest were pruned.
    assert_eq!(store.checkpoint_at_or_before(25).unwrap(), None);
}

#[test]
fn epoch_markers_open_epochs_replicate_and_verify() {
    let fx = Fixture::new();
    let events = fx.events(6);
    let mut primary = fx.open();
    let marker = primary.append_marker(1, 10, "replica-1").unwrap();
    assert_eq!(marker.body.gseq, 1);
    assert_eq!(marker.body.machine_event(), None);
    primary
        .append_events(1, 11, &events[..3], &fx.keys())
        .unwrap();
    // A marker must open a newer epoch than the log's head.
    let err = primary.append_marker(1, 12, "replica-2").unwrap_err();
    assert!(err.to_string().contains("does not follow epoch 1"), "{err}");
    primary.append_marker(3, 12, "replica-2").unwrap();
    primary
        .append_events(3, 13, &events[3..], &fx.keys())
        .unwrap();
    assert_eq!(primary.head().gseq, 8);
    assert_eq!(primary.machine_head(&fx.machine).seq, 6);
    let summary = crate::verify::verify_log(&primary, &fx.keys(), &mut |_| {}).unwrap();
    assert_eq!((summary.entries, summary.machines), (8, 1));

    let follower_dir = tempfile::tempdir().unwrap();
    let mut follower = LogStore::open(
        &follower_dir.path().join("log"),
        &SecretKey::generate(),
        OpenOptions {
            create: true,
            segment_entries: 4,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let entries = replicated(&primary);
    let envelopes = follower.append_replicated(&entries, &fx.keys()).unwrap();
    assert_eq!(
        envelopes
            .iter()
            .filter(|c| matches!(c, Content::Marker))
            .count(),
        2
    );
    assert_eq!(follower.head(), primary.head());

    // Truncating back across the second marker restores epoch 1's head.
    primary.truncate_after(4).unwrap();
    assert_eq!(primary.head().epoch, 1);
    assert_eq!(primary.machine_head(&fx.machine).seq, 3);
    primary.append_marker(2, 14, "replica-3").unwrap();
    crate::verify::verify_log(&primary, &fx.keys(), &mut |_| {}).unwrap();
}

fn operator_record(action: OperatorAction) -> OperatorRecord {
    OperatorRecord {
        operator: "kim".into(),
        at_ms: 1_767_193_300_000,
        action,
    }
}

fn password_hash() -> String {
    crate::admin::hash_password("s3cret-pass!", &[3; 16], PasswordParams::Light).unwrap()
}

fn command(machine: &MachineId, command_id: u64, action: RemoteAction) -> OperatorRecord {
    operator_record(OperatorAction::CommandRequested {
        machine: machine.clone(),
        command_id,
        action,
    })
}

#[test]
fn operator_records_are_entries_of_the_fleet_log_like_any_other() {
    let fx = Fixture::new();
    let events = fx.events(3);
    let mut primary = fx.open();
    primary.append_marker(1, 10, "replica-1").unwrap();
    let mut proposal: Vec<Proposed> = events.iter().cloned().map(Proposed::Event).collect();
    proposal.push(Proposed::Operator(operator_record(
        OperatorAction::UserAdded {
            name: "kim".into(),
            role: OperatorRole::Admin,
            password_hash: password_hash(),
        },
    )));
    let set_price = RemoteAction::SetPrice {
        slot: crate::ids::SlotId(1),
        price: 600,
    };
    proposal.push(Proposed::Operator(command(&fx.machine, 1, set_price)));
    let outcome = primary.append(1, 11, &proposal, &fx.keys()).unwrap();
    assert_eq!(new_gseqs(&outcome), [2, 3, 4, 5, 6]);
    let entry = primary.get(6).unwrap().unwrap();
    assert_eq!(entry.body.machine_event(), None);
    let Content::Operator(record) = entry.content().unwrap() else {
        panic!("an operator entry");
    };
    assert_eq!(Proposed::Operator(record), proposal[4]);
    // The machine's stream is untouched by them; segments count them.
    assert_eq!(primary.machine_head(&fx.machine).seq, 3);
    assert_eq!(primary.segments().unwrap().len(), 1);
    let summary = crate::verify::verify_log(&primary, &fx.keys(), &mut |_| {}).unwrap();
    assert_eq!((summary.entries, summary.operator_records), (6, 2));

    // A follower takes the same bytes and has the same chain.
    let follower_dir = tempfile::tempdir().unwrap();
    let mut follower = LogStore::open(
        &follower_dir.path().join("log"),
        &SecretKey::generate(),
        OpenOptions {
            create: true,
            segment_entries: 4,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let contents = follower
        .append_replicated(&replicated(&primary), &fx.keys())
        .unwrap();
    let operators = contents
        .iter()
        .filter(|c| matches!(c, Content::Operator(_)))
        .count();
    assert_eq!(operators, 2);
    assert_eq!(follower.head(), primary.head());

    // A truncation drops them like any entry, and appending resumes.
    primary.truncate_after(4).unwrap();
    assert_eq!(primary.head().gseq, 4);
    let again = primary.append(1, 12, &proposal[4..], &fx.keys()).unwrap();
    assert_eq!(new_gseqs(&again), [5]);
    crate::verify::verify_log(&primary, &fx.keys(), &mut |_| {}).unwrap();
}

#[test]
fn oversized_and_garbled_operator_records_never_enter_a_log() {
    let fx = Fixture::new();
    let mut primary = fx.open();
    primary.append_marker(1, 10, "replica-1").unwrap();
    let huge = operator_record(OperatorAction::AlertAcknowledged {
        alert: AlertKey {
            kind: AlertKind::LowStock,
            machine: fx.machine.clone(),
            slot: None,
        },
        note: "가".repeat(400),
    });
    let outcome = primary
        .append(1, 11, &[Proposed::Operator(huge)], &fx.keys())
        .unwrap();
    assert!(matches!(
        &outcome.results[..],
        [Appended::Rejected(EventRejection::Operator(_))]
    ));
    assert_eq!(primary.head().gseq, 1, "nothing written");

    // A replicated entry whose operator record does not decode is refused.
    let body = EntryBody {
        gseq: 2,
        epoch: 1,
        logged_ms: 12,
        payload: Payload::Operator {
            record: vec![crate::operator::OPERATOR_RECORD_VERSION, 0xc1],
        },
    };
    let (_, bytes) = LogEntry::seal_body(body, primary.head().hash);
    let record = ReplicatedRecord::decode(bytes).unwrap();
    let error = primary
        .append_replicated(&[record], &fx.keys())
        .unwrap_err();
    assert!(
        error.to_string().contains("undecodable operator record"),
        "{error}"
    );
    assert_eq!(primary.head().gseq, 1);
}

/// Accounts, commands and acknowledged alerts in the projection: live, in a
/// replay, and from a checkpoint; a command is pending until its machine's
/// own event answers it (applied, or refused with the reason).
#[test]
fn the_projection_follows_operators_and_the_machines_answers() {
    let fx = Fixture::new();
    let slot = crate::ids::SlotId(1);
    let password = "vend-admin-1!".to_owned();
    let install = [Command::Install {
        slots: default_catalog(),
        tube_capacity: DEFAULT_TUBE_CAPACITY,
        stacker_capacity_bills: DEFAULT_STACKER_CAPACITY_BILLS,
        admin_password: password,
    }];
    let installed = fx.stream(&install, usize::MAX);
    let set_price = RemoteAction::SetPrice { slot, price: 600 };
    let bad_slot = RemoteAction::SetPrice {
        slot: crate::ids::SlotId(60),
        price: 600,
    };
    let remote = |command_id, action| Command::Remote(RemoteCommand { command_id, action });
    let mut commands = install.to_vec();
    commands.push(remote(1, set_price.clone()));
    commands.push(remote(2, bad_slot.clone()));
    let answered = fx.stream(&commands, usize::MAX);
    assert_eq!(answered.len(), installed.len() + 2);

    let mut ledger = crate::Ledger::with_store(fx.open()).unwrap();
    ledger.append_events(1, 10, &installed, &fx.keys()).unwrap();
    let alert = AlertKey {
        kind: AlertKind::SoldOut,
        machine: fx.machine.clone(),
        slot: Some(slot),
    };
    let records = [
        operator_record(OperatorAction::UserAdded {
            name: "lee".into(),
            role: OperatorRole::Auditor,
            password_hash: password_hash(),
        }),
        operator_record(OperatorAction::UserDisabled { name: "lee".into() }),
        command(&fx.machine, 1, set_price),
        command(&fx.machine, 2, bad_slot),
        operator_record(OperatorAction::AlertAcknowledged {
            alert: alert.clone(),
            note: "refilled".into(),
        }),
    ];
    let proposal: Vec<Proposed> = records.iter().cloned().map(Proposed::Operator).collect();
    let outcome = ledger.append(1, 11, &proposal, &fx.keys()).unwrap();
    let request_gseqs = new_gseqs(&outcome);
    let operators = &ledger.projection().operators;
    assert!(operators.users["lee"].disabled);
    assert_eq!(operators.pending_count(&fx.machine), 2);
    assert_eq!(operators.acknowledged[&alert].by, "kim");
    assert_eq!(
        operators
            .pending_commands(&fx.machine, request_gseqs[2], 10)
            .len(),
        1,
        "only what is committed is delivered"
    );
    // The machine answers: command 1 applied, command 2 refused.
    let outcome = ledger
        .append_events(1, 12, &answered[installed.len()..], &fx.keys())
        .unwrap();
    let answers = new_gseqs(&outcome);
    let commands = &ledger.projection().operators.commands[&fx.machine];
    assert!(matches!(
        commands[&1].outcome,
        CommandOutcome::Applied { gseq, .. } if gseq == answers[0]
    ));
    assert!(matches!(
        &commands[&2].outcome,
        CommandOutcome::Rejected { gseq, reason } if *gseq == answers[1] && reason.contains("no slot 60")
    ));
    assert_eq!(commands[&1].gseq, request_gseqs[2]);
    assert_eq!(ledger.projection().issue_count, 0);

    // A replay and a checkpoint give the same projection.
    let live = ledger.projection().clone();
    let replayed = crate::ledger::rebuild(ledger.store(), crate::Until::End, &mut |_| {}).unwrap();
    assert_eq!(replayed, live);
    ledger.checkpoint().unwrap();
    let reopened = crate::Ledger::with_store(ledger.into_store()).unwrap();
    assert_eq!(*reopened.projection(), live);
    // As of the request, the command is still pending.
    let before = reopened
        .projection_as_of(crate::Until::Gseq(request_gseqs[4]))
        .unwrap();
    assert_eq!(before.operators.pending_count(&fx.machine), 2);
}

/// Checkpoints encoded in the background are stored at a later append, as
/// of where they were started; after a truncation, the next one is of the
/// log as it now is.
#[test]
fn checkpoints_encoded_in_the_background_are_stored_at_a_later_append() {
    let fx = Fixture::new();
    let events = fx.events(30);
    let mut ledger = crate::Ledger::with_store(fx.open()).unwrap();
    ledger.set_checkpoint_every(8);
    ledger.set_checkpoint_in_background(true);
    let newest = |ledger: &crate::Ledger| {
        let found = ledger.store().checkpoint_at_or_before(u64::MAX).unwrap();
        found.map(|(gseq, _)| gseq)
    };
    // Due at gseq 10, encoded meanwhile, stored at the next append.
    ledger
        .append_events(1, 10, &events[..10], &fx.keys())
        .unwrap();
    assert_eq!(newest(&ledger), None);
    ledger.wait_for_encoding();
    ledger
        .append_events(1, 11, &events[10..11], &fx.keys())
        .unwrap();
    assert_eq!(newest(&ledger), Some(10));
    let live = ledger.projection().clone();
    let store = ledger.into_store();
    let mut ledger = crate::Ledger::with_store(store).unwrap();
    assert_eq!(*ledger.projection(), live, "checkpoint 10 and entry 11");
    ledger.set_checkpoint_every(8);
    ledger.set_checkpoint_in_background(true);

    // Due at 19; the log is cut to 15 and continues differently.
    ledger
        .append_events(1, 12, &events[11..19], &fx.keys())
        .unwrap();
    ledger.wait_for_encoding();
    ledger.truncate_after(15).unwrap();
    ledger.append_marker(2, 13, "replica-2").unwrap();
    ledger
        .append_events(2, 14, &events[15..17], &fx.keys())
        .unwrap();
    assert_eq!(
        newest(&ledger),
        Some(10),
        "not the checkpoint of the old 19"
    );
    ledger.wait_for_encoding();
    ledger
        .append_events(2, 15, &events[17..18], &fx.keys())
        .unwrap();
    assert_eq!(newest(&ledger), Some(18), "the new 18, never the old 19");
    let live = ledger.projection().clone();
    let reopened = crate::Ledger::with_store(ledger.into_store()).unwrap();
    assert_eq!(*reopened.projection(), live);
}

/// A record that does not apply (an account disabled twice) is an issue of
/// the projection and a failure of `verify`, which names its entry.
#[test]
fn an_operator_record_that_does_not_apply_is_reported() {
    let fx = Fixture::new();
    let mut ledger = crate::Ledger::with_store(fx.open()).unwrap();
    let disable = Proposed::Operator(operator_record(OperatorAction::UserDisabled {
        name: "nobody".into(),
    }));
    ledger.append(1, 11, &[disable], &fx.keys()).unwrap();
    assert_eq!(ledger.projection().issue_count, 1);
    assert!(
        ledger.projection().operators.issues[0]
            .problem
            .contains("no operator account")
    );
    let failure = crate::verify::verify_log(ledger.store(), &fx.keys(), &mut |_| {}).unwrap_err();
    assert_eq!(failure.gseq, Some(1));
    assert!(failure.problem.contains("does not apply"), "{failure}");
}

mod archiving;

/// Checkpoints are stored compressed. One stored before they were (plain
/// MessagePack) still loads; one that no longer decodes is ignored and the
/// projection is rebuilt from the log.
#[test]
fn checkpoints_are_compressed_and_older_plain_ones_still_load() {
    let fx = Fixture::new();
    let events = fx.events(10);
    let mut ledger = crate::Ledger::with_store(fx.open()).unwrap();
    ledger
        .append_events(1, 10, &events[..10], &fx.keys())
        .unwrap();
    ledger.checkpoint().unwrap();
    let live = ledger.projection().clone();
    let mut store = ledger.into_store();
    let load = |store: &LogStore| crate::ledger::load_checkpoint(store, u64::MAX).unwrap();
    let (at, stored) = store.checkpoint_at_or_before(u64::MAX).unwrap().unwrap();
    assert_eq!(at, 10);
    assert!(
        stored.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]),
        "a zstd frame"
    );
    assert_eq!(load(&store).as_ref(), Some(&live));

    let plain = zstd::stream::decode_all(&stored[..]).unwrap();
    let sealed = store
        .checkpoint_sealer()
        .seal(10, 0, |out| out.extend_from_slice(&plain));
    store.put_checkpoint(sealed).unwrap();
    assert_eq!(load(&store).as_ref(), Some(&live), "as stored before");

    let cut = &stored[..stored.len() / 2];
    let sealed = store
        .checkpoint_sealer()
        .seal(10, 0, |out| out.extend_from_slice(cut));
    store.put_checkpoint(sealed).unwrap();
    assert_eq!(load(&store), None, "a damaged frame");
    let reopened = crate::Ledger::with_store(store).unwrap();
    assert_eq!(*reopened.projection(), live);
}

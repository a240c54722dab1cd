//! Archiving closed segments: read-through, the cut, restore, damage.

use super::*;
use crate::store::archive::{Codec, file_name};
use crate::store::memory::MemBackend;

/// A log of 10 entries in segments of 4 (8 closed), archived through
/// segment 1 (gseq 8) into `archive`.
fn archived_log(fx: &Fixture, archive: &Path, codec: Codec) -> (LogStore, Vec<Vec<u8>>) {
    let mut store = fx.open();
    store
        .append_events(1, 5, &fx.events(10), &fx.keys())
        .unwrap();
    let before: Vec<Vec<u8>> = store.records_from(1).map(|r| r.unwrap().1).collect();
    let report = store
        .archive_segments(2, archive, &fx.store_key, codec, &mut |_| {})
        .unwrap();
    assert_eq!(report.segments, 2);
    assert_eq!(report.through_gseq, 8);
    (store, before)
}

#[test]
fn archived_entries_read_through_and_the_live_log_goes_on() {
    for codec in [Codec::Zstd, Codec::Lz4] {
        let fx = Fixture::new();
        let archive = fx.path.with_file_name("archive");
        let (mut store, before) = archived_log(&fx, &archive, codec);
        assert_eq!(store.first_live_gseq(), 9);
        assert!(archive.join(file_name(0)).is_file());
        assert!(archive.join(file_name(1)).is_file());
        let after: Vec<Vec<u8>> = store.records_from(1).map(|r| r.unwrap().1).collect();
        assert_eq!(after, before);
        store.check_chain().unwrap();
        // Other threads' reader (the dashboard's) reads through too.
        let mut read = Vec::new();
        let reader = store.backend().reader();
        reader
            .for_each_record(1, 10, &mut |_, record| {
                read.push(record.to_vec());
                Ok(true)
            })
            .unwrap();
        assert_eq!(read, before);
        drop(reader);
        // The live log no longer holds the archived records.
        let mut live = Vec::new();
        store
            .backend()
            .for_each_record(9, 10, &mut |gseq, _| {
                live.push(gseq);
                Ok(true)
            })
            .unwrap();
        assert_eq!(live, vec![9, 10]);
        assert!(
            store
                .backend()
                .for_each_record(8, 8, &mut |_, _| Ok(true))
                .is_err()
        );
        // Appending, dedup and reopening go on without the archive.
        let events = fx.events(12);
        let outcome = store.append_events(1, 6, &events, &fx.keys()).unwrap();
        assert_eq!(outcome.results[0], Appended::Duplicate { gseq: 1 });
        assert_eq!(outcome.results[11], Appended::New { gseq: 12 });
        drop(store);
        let store = fx.open();
        assert_eq!(store.archived().unwrap().through_gseq, 8);
        assert_eq!(store.entries_from(1).count(), 12);
    }
}

#[test]
fn truncation_stops_at_the_archive_and_a_cut_at_its_edge_keeps_its_head() {
    let fx = Fixture::new();
    let archive = fx.path.with_file_name("archive");
    let (mut store, before) = archived_log(&fx, &archive, Codec::Zstd);
    let refused = store.truncate_after(7).unwrap_err();
    assert!(refused.to_string().contains("archived"), "{refused}");
    assert_eq!(store.truncate_after(8).unwrap(), 2);
    assert_eq!(store.head().gseq, 8);
    assert_eq!(
        store.head().hash,
        LogEntry::decode(&before[7]).unwrap().hash
    );
    assert_eq!(store.machine_head(&fx.machine).seq, 8);
    let outcome = store
        .append_events(1, 6, &fx.events(10), &fx.keys())
        .unwrap();
    assert_eq!(new_gseqs(&outcome), vec![9, 10]);
    store.check_chain().unwrap();
}

#[test]
fn a_missing_or_damaged_archive_file_is_named() {
    let fx = Fixture::new();
    let archive = fx.path.with_file_name("archive");
    let (store, _) = archived_log(&fx, &archive, Codec::Zstd);
    drop(store);
    let path = archive.join(file_name(1));
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let store = fx.open();
    let error = store.records_from(1).find_map(Result::err).unwrap();
    let text = error.to_string();
    assert!(
        text.contains(&file_name(1)) && text.contains("checksum"),
        "{text}"
    );
    std::fs::remove_file(&path).unwrap();
    let error = store.get(5).unwrap_err().to_string();
    assert!(
        error.contains(&file_name(1)) && error.contains("missing"),
        "{error}"
    );
    // The live part and segment 0 still read.
    assert!(store.get(3).unwrap().is_some());
    assert!(store.get(9).unwrap().is_some());
}

#[test]
fn an_archive_file_under_another_key_or_of_another_segment_is_refused() {
    let fx = Fixture::new();
    let archive = fx.path.with_file_name("archive");
    let (store, _) = archived_log(&fx, &archive, Codec::Zstd);
    drop(store);
    std::fs::copy(archive.join(file_name(0)), archive.join(file_name(1))).unwrap();
    let store = fx.open();
    let error = store.get(6).unwrap_err().to_string();
    assert!(error.contains("holds segment 0, not 1"), "{error}");
    let mut other = LogStore::open_read_only(&fx.path, &fx.store_key).unwrap();
    other.attach_archive(&archive, &SecretKey::generate());
    let error = other.get(1).unwrap_err().to_string();
    assert!(error.contains("wrong store key"), "{error}");
}

#[test]
fn restore_brings_every_segment_back() {
    let fx = Fixture::new();
    let archive = fx.path.with_file_name("archive");
    let (mut store, before) = archived_log(&fx, &archive, Codec::Zstd);
    let mut restored_order = Vec::new();
    let restored = store
        .restore_archived(&mut |segment| restored_order.push(segment.index))
        .unwrap();
    assert_eq!((restored, restored_order), (2, vec![1, 0]));
    assert!(store.archived().is_none());
    drop(store);
    std::fs::remove_dir_all(&archive).unwrap();
    let store = fx.open();
    assert!(store.archived().is_none());
    let after: Vec<Vec<u8>> = store.records_from(1).map(|r| r.unwrap().1).collect();
    assert_eq!(after, before);
    store.check_chain().unwrap();
}

#[test]
fn archiving_twice_goes_on_where_it_stopped_and_without_archive_says_where() {
    let fx = Fixture::new();
    let archive = fx.path.with_file_name("archive");
    let (mut store, before) = archived_log(&fx, &archive, Codec::Zstd);
    store
        .append_events(1, 6, &fx.events(13), &fx.keys())
        .unwrap();
    assert_eq!(store.segments_for(Cutoff::KeepSegments(1)).unwrap(), 2);
    assert_eq!(store.segments_for(Cutoff::BeforeGseq(13)).unwrap(), 3);
    let elsewhere = fx.path.with_file_name("elsewhere");
    assert!(
        store
            .archive_segments(3, &elsewhere, &fx.store_key, Codec::Zstd, &mut |_| {})
            .is_err()
    );
    let report = store
        .archive_segments(3, &archive, &fx.store_key, Codec::Zstd, &mut |_| {})
        .unwrap();
    assert_eq!((report.segments, report.through_gseq), (1, 12));
    let read: Vec<Vec<u8>> = store.records_from(1).map(|r| r.unwrap().1).collect();
    assert_eq!(read[..10], before[..]);
    assert_eq!(read.len(), 13);
    drop(store);
    std::fs::rename(&archive, &elsewhere).unwrap();
    let mut store = fx.open();
    let error = store.get(2).unwrap_err().to_string();
    assert!(
        error.contains(&file_name(0)) && error.contains("missing"),
        "{error}"
    );
    store.attach_archive(&elsewhere, &fx.store_key);
    assert_eq!(store.records_from(1).count(), 13);
}

#[test]
fn the_memory_backend_archives_like_rocksdb() {
    let fx = Fixture::new();
    let archive = fx.path.with_file_name("archive");
    let mut memory = LogStore::with_backend(MemBackend::new(), 4).unwrap();
    let mut rocks = fx.open();
    let events = fx.events(10);
    memory.append_events(1, 5, &events, &fx.keys()).unwrap();
    rocks.append_events(1, 5, &events, &fx.keys()).unwrap();
    let memory_dir = fx.path.with_file_name("memory-archive");
    memory
        .archive_segments(2, &memory_dir, &fx.store_key, Codec::Zstd, &mut |_| {})
        .unwrap();
    rocks
        .archive_segments(2, &archive, &fx.store_key, Codec::Zstd, &mut |_| {})
        .unwrap();
    let read = |store_records: Vec<Vec<u8>>| store_records;
    assert_eq!(
        read(memory.records_from(1).map(|r| r.unwrap().1).collect()),
        read(rocks.records_from(1).map(|r| r.unwrap().1).collect())
    );
    assert_eq!(memory.truncate_after(9).unwrap(), 1);
    assert_eq!(rocks.truncate_after(9).unwrap(), 1);
    assert_eq!(memory.head(), rocks.head());
    memory.restore_archived(&mut |_| {}).unwrap();
    rocks.restore_archived(&mut |_| {}).unwrap();
    let memory_records: Vec<Vec<u8>> = memory.records_from(1).map(|r| r.unwrap().1).collect();
    let rocks_records: Vec<Vec<u8>> = rocks.records_from(1).map(|r| r.unwrap().1).collect();
    assert_eq!(memory_records, rocks_records);
    assert_eq!(memory_records.len(), 9);
}

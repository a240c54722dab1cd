use super::*;
use crate::store::record::{EntryBody, GENESIS_HASH, Payload};

fn key() -> SecretKey {
    SecretKey::from_bytes([7; 32])
}

/// A segment of `count` epoch markers from `first_gseq`, chained after
/// `prev_hash`, with its summary.
fn segment(index: u64, first_gseq: u64, count: u64) -> (SegmentSummary, Vec<Vec<u8>>) {
    let mut summary = SegmentSummary {
        index,
        ..SegmentSummary::default()
    };
    let mut previous = GENESIS_HASH;
    let mut records = Vec::new();
    for gseq in first_gseq..first_gseq + count {
        let body = EntryBody {
            gseq,
            epoch: gseq,
            logged_ms: 1_000 * gseq as i64,
            payload: Payload::EpochStarted {
                primary: "replica-1".into(),
            },
        };
        let (entry, bytes) = LogEntry::seal_body(body, previous);
        summary.extend(&entry, bytes.len());
        previous = entry.hash;
        records.push(bytes);
    }
    (summary, records)
}

#[test]
fn a_segment_round_trips_with_either_codec() {
    let sealer = Sealer::new(&key());
    let (summary, records) = segment(3, 1, 50);
    for codec in [Codec::Zstd, Codec::Lz4] {
        let bytes = encode_segment(&sealer, &summary, &records, codec).unwrap();
        assert_eq!(&bytes[..8], b"VLARCHIV");
        assert_eq!(bytes[8], ARCHIVE_FORMAT_VERSION);
        assert_eq!(bytes[9], codec as u8);
        let read = decode_segment(&sealer, 3, &bytes).unwrap();
        assert_eq!(read.records, records);
        assert_eq!(read.codec, codec);
        assert_eq!(read.header.segment, summary);
        assert!(read.header.machine_heads.is_empty());
        let (header, _, _) = decode_header(&bytes).unwrap();
        assert_eq!(header, read.header);
    }
}

#[test]
fn every_flipped_byte_is_refused() {
    let sealer = Sealer::new(&key());
    let (summary, records) = segment(0, 1, 20);
    let bytes = encode_segment(&sealer, &summary, &records, Codec::Zstd).unwrap();
    for at in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x10;
        assert!(decode_segment(&sealer, 0, &damaged).is_err(), "byte {at}");
    }
    for length in [0, 10, bytes.len() - 1] {
        assert!(decode_segment(&sealer, 0, &bytes[..length]).is_err());
    }
}

/// A file whose checksum was recomputed after an edit (someone rewriting
/// it on purpose) is still refused by the seal or the chain checks.
#[test]
fn a_rewritten_header_is_refused_by_the_seal_and_the_chain() {
    let sealer = Sealer::new(&key());
    let (summary, records) = segment(0, 1, 20);
    let mut forged = summary.clone();
    forged.last_hash = [9; 32];
    let bytes = encode_segment(&sealer, &forged, &records, Codec::Zstd).unwrap();
    let error = decode_segment(&sealer, 0, &bytes).unwrap_err();
    assert_eq!(error.gseq, Some(20));
    let mut short = summary.clone();
    short.last_gseq = 19;
    assert!(encode_segment(&sealer, &short, &records, Codec::Zstd).is_err());
    let (other, _) = segment(0, 1, 20);
    let bytes = encode_segment(&sealer, &other, &records, Codec::Zstd).unwrap();
    let wrong = Sealer::new(&SecretKey::from_bytes([8; 32]));
    let error = decode_segment(&wrong, 0, &bytes).unwrap_err();
    assert!(
        error.problem.contains("wrong store key"),
        "{}",
        error.problem
    );
}

#[test]
fn a_hostile_length_never_allocates_beyond_the_bound() {
    let error = Codec::Zstd
        .decompress(&[0; 16], ARCHIVE_PLAINTEXT_BYTES_MAX + 1)
        .unwrap_err();
    assert!(error.contains("more than"), "{error}");
    assert!(Codec::Lz4.decompress(&[0xff; 16], 1_000).is_err());
}

/// The bytes before the sealed records, pinned (docs/FORMATS.md, "Archive
/// file"): a renamed field or a reordered one fails here.
#[test]
fn the_prefix_and_header_bytes_are_pinned() {
    let (summary, records) = segment(3, 7, 1);
    let bytes = encode_segment(&Sealer::new(&key()), &summary, &records, Codec::Zstd).unwrap();
    let (_, _, body_at) = decode_header(&bytes).unwrap();
    let prefix = hex::encode(&bytes[..body_at]);
    assert_eq!(prefix, GOLDEN_PREFIX.concat());
}

const GOLDEN_PREFIX: [&str; 15] = [
    "564c415243484956", // "VLARCHIV"
    "01",               // format version 1
    "01",               // codec: zstd
    "00000052",         // header length: 82 bytes
    "93",               // ArchiveHeader, array of 3
    "98",               // SegmentSummary, array of 8
    "030707",           // index 3, first gseq 7, last gseq 7
    "c420",             // first_prev_hash: bin8 of 32 (zeros here)
    "0000000000000000000000000000000000000000000000000000000000000000",
    "c420", // last_hash: the record's blake3
    "c877814579bcc48839f8cb1e93ba0f405e31b08eb1272ac4152ff762d9c179b1",
    "40",           // record_bytes 64
    "cd1b58cd1b58", // first and last logged_ms 7,000
    "90",           // machine_heads: none (the record is an epoch marker)
    "44",           // plaintext_bytes 68 (4 bytes of length per record)
];

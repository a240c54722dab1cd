//! Golden bytes: the formats of `docs/FORMATS.md`, pinned as hex vectors.
//!
//! Logs written today must replay after every upgrade, so a change to any
//! of these bytes — a renamed event variant, a reordered field, another
//! version byte, key context or framing — must be deliberate. Each test
//! fails on such a change and prints the new bytes; update the vectors only
//! together with a new format version and a decoder arm for the old one.
//!
//! Sealing draws a random nonce, so a sealed value cannot be compared with
//! a vector directly. Instead the tests pin the plaintext and associated
//! data the store seals, and check that a sealed golden chunk (made once)
//! opens with the fixed key to exactly that plaintext, and that the store
//! reads it back.

use ledger::catalog::{CategoryPath, Product, SlotConfig};
use ledger::crypto::{CHAIN_KEY_CONTEXT, Hash32, Sealer, SecretKey, chain_hash};
use ledger::event::{Destination, Event, EventEnvelope, InsertRejection, Installation, Source};
use ledger::ids::{MachineId, SlotId};
use ledger::keys::SingleMachineKey;
use ledger::money::{CoinCounts, Denomination, MoneyKind};
use ledger::operator::{OperatorAction, OperatorRecord};
use ledger::rules::RemoteAction;
use ledger::store::record::{
    Content, EntryBody, GENESIS_HASH, LogEntry, Payload, ReplicatedRecord, SignedEvent,
};
use ledger::store::{LogStore, OpenOptions};

/// 2026-01-01T00:00:00Z.
const AT_MS: i64 = 1_767_225_600_000;
const MACHINE_KEY: [u8; 32] = [0x11; 32];
const STORE_KEY: [u8; 32] = [0x22; 32];
const PASSWORD_HASH: &str = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g";

/// Compares bytes with a hex vector and, on a mismatch, fails naming the
/// vector and printing the bytes found (which become the new vector when a
/// format change is deliberate).
#[track_caller]
fn assert_hex(what: &str, actual: &[u8], expected: &str) {
    let actual = hex::encode(actual);
    assert!(
        actual == expected,
        "{what} changed: the bytes are now\n{actual}\ninstead of\n{expected}"
    );
}

fn from_hex(text: &str) -> Vec<u8> {
    hex::decode(text).expect("golden vectors are valid hex")
}

fn machine() -> MachineId {
    MachineId::numbered(1)
}

/// One envelope per `Event` variant; between them they use every variant
/// of `Denomination`, `Destination`, `MoneyKind`, `InsertRejection` and
/// `Source`, and a non-ASCII name.
fn events() -> Vec<Event> {
    let rejected = |kind, value, reason| Event::MoneyRejected {
        kind,
        value,
        reason,
    };
    vec![
        Event::Installed(Installation {
            tube_capacity: CoinCounts([100, 100, 100, 50]),
            stacker_capacity_bills: 300,
            admin_password_hash: PASSWORD_HASH.into(),
        }),
        Event::MoneyInserted {
            denomination: Denomination::Coin10,
            destination: Destination::Tube,
        },
        Event::MoneyInserted {
            denomination: Denomination::Coin50,
            destination: Destination::CashBox,
        },
        Event::MoneyInserted {
            denomination: Denomination::Coin100,
            destination: Destination::Tube,
        },
        Event::MoneyInserted {
            denomination: Denomination::Coin500,
            destination: Destination::Tube,
        },
        Event::MoneyInserted {
            denomination: Denomination::Bill1000,
            destination: Destination::Stacker,
        },
        rejected(MoneyKind::Coin, 5, InsertRejection::UnknownDenomination),
        rejected(MoneyKind::Bill, 1_000, InsertRejection::BalanceLimit),
        rejected(MoneyKind::Bill, 1_000, InsertRejection::BillLimit),
        rejected(MoneyKind::Bill, 1_000, InsertRejection::StackerFull),
        Event::ProductPurchased {
            slot: SlotId(1),
            product: "Coffee".into(),
            price: 500,
        },
        Event::PurchaseCancelled {
            slot: SlotId(1),
            product: "Coffee".into(),
            price: 500,
        },
        Event::ChangeReturned {
            coins: CoinCounts([1, 1, 1, 1]),
            paid: 660,
        },
        Event::ChangeOwed {
            ticket: 1,
            amount: 40,
        },
        Event::ChangeOwedSettled {
            ticket: 1,
            amount: 40,
            source: Source::Local,
        },
        Event::SlotRefilled {
            slot: SlotId(2),
            added: 5,
        },
        Event::TubeLoaded {
            denomination: Denomination::Coin100,
            count: 20,
        },
        Event::CashCollected {
            cash_box: 3_000,
            stacker: 2_000,
            counted: 4_990,
        },
        Event::PriceChanged {
            slot: SlotId(1),
            price: 550,
            source: Source::Remote { command_id: 8 },
        },
        Event::ProductRenamed {
            slot: SlotId(1),
            name: "커피".into(),
            source: Source::Local,
        },
        Event::SlotConfigured(SlotConfig {
            slot: SlotId(3),
            product: Product {
                name: "Premium Coffee".into(),
                price: 700,
                category: CategoryPath(vec!["Drinks".into(), "Coffee".into()]),
            },
            capacity: 10,
        }),
        Event::AdminLoggedIn,
        Event::AdminLoginFailed { failures: 1 },
        Event::AdminLockedOut {
            until_ms: AT_MS + 300_000,
        },
        Event::AdminLoggedOut,
        Event::AdminPasswordChanged {
            password_hash: PASSWORD_HASH.into(),
        },
        Event::RemoteCommandRejected {
            command_id: 9,
            reason: "there is no slot 9".into(),
        },
    ]
}

/// The position of a variant in `Event`. Exhaustive on purpose: a new
/// variant does not compile here until it has a golden vector.
fn variant_index(event: &Event) -> usize {
    match event {
        Event::Installed(_) => 0,
        Event::MoneyInserted { .. } => 1,
        Event::MoneyRejected { .. } => 2,
        Event::ProductPurchased { .. } => 3,
        Event::PurchaseCancelled { .. } => 4,
        Event::ChangeReturned { .. } => 5,
        Event::ChangeOwed { .. } => 6,
        Event::ChangeOwedSettled { .. } => 7,
        Event::SlotRefilled { .. } => 8,
        Event::TubeLoaded { .. } => 9,
        Event::CashCollected { .. } => 10,
        Event::PriceChanged { .. } => 11,
        Event::ProductRenamed { .. } => 12,
        Event::SlotConfigured(_) => 13,
        Event::AdminLoggedIn => 14,
        Event::AdminLoginFailed { .. } => 15,
        Event::AdminLockedOut { .. } => 16,
        Event::AdminLoggedOut => 17,
        Event::AdminPasswordChanged { .. } => 18,
        Event::RemoteCommandRejected { .. } => 19,
    }
}
const EVENT_VARIANTS: usize = 20;

fn envelope(index: usize, event: Event) -> EventEnvelope {
    EventEnvelope {
        machine_id: machine(),
        machine_seq: index as u64 + 1,
        at_ms: AT_MS + index as i64 * 1_000,
        event,
    }
}

/// `EventEnvelope::encode` of each of [`events`], in order.
const ENVELOPES_HEX: [&str; 27] = [
    "0194a6564d2d30303101cf0000019b76daa80081a9496e7374616c6c6564939464646432cd012cd932246172676f6e32696424763d3139246d3d382c743d312c703d31246332467364484e68624851246147467a61476868633267",
    "0194a6564d2d30303102cf0000019b76daabe881ad4d6f6e6579496e73657274656492a6436f696e3130a454756265",
    "0194a6564d2d30303103cf0000019b76daafd081ad4d6f6e6579496e73657274656492a6436f696e3530a743617368426f78",
    "0194a6564d2d30303104cf0000019b76dab3b881ad4d6f6e6579496e73657274656492a7436f696e313030a454756265",
    "0194a6564d2d30303105cf0000019b76dab7a081ad4d6f6e6579496e73657274656492a7436f696e353030a454756265",
    "0194a6564d2d30303106cf0000019b76dabb8881ad4d6f6e6579496e73657274656492a842696c6c31303030a7537461636b6572",
    "0194a6564d2d30303107cf0000019b76dabf7081ad4d6f6e657952656a656374656493a4436f696e05b3556e6b6e6f776e44656e6f6d696e6174696f6e",
    "0194a6564d2d30303108cf0000019b76dac35881ad4d6f6e657952656a656374656493a442696c6ccd03e8ac42616c616e63654c696d6974",
    "0194a6564d2d30303109cf0000019b76dac74081ad4d6f6e657952656a656374656493a442696c6ccd03e8a942696c6c4c696d6974",
    "0194a6564d2d3030310acf0000019b76dacb2881ad4d6f6e657952656a656374656493a442696c6ccd03e8ab537461636b657246756c6c",
    "0194a6564d2d3030310bcf0000019b76dacf1081b050726f647563745075726368617365649301a6436f66666565cd01f4",
    "0194a6564d2d3030310ccf0000019b76dad2f881b1507572636861736543616e63656c6c65649301a6436f66666565cd01f4",
    "0194a6564d2d3030310dcf0000019b76dad6e081ae4368616e676552657475726e6564929401010101cd0294",
    "0194a6564d2d3030310ecf0000019b76dadac881aa4368616e67654f776564920128",
    "0194a6564d2d3030310fcf0000019b76dadeb081b14368616e67654f776564536574746c6564930128a54c6f63616c",
    "0194a6564d2d30303110cf0000019b76dae29881ac536c6f74526566696c6c6564920205",
    "0194a6564d2d30303111cf0000019b76dae68081aa547562654c6f6164656492a7436f696e31303014",
    "0194a6564d2d30303112cf0000019b76daea6881ad43617368436f6c6c656374656493cd0bb8cd07d0cd137e",
    "0194a6564d2d30303113cf0000019b76daee5081ac50726963654368616e6765649301cd022681a652656d6f74659108",
    "0194a6564d2d30303114cf0000019b76daf23881ae50726f6475637452656e616d65649301a6ecbba4ed94bca54c6f63616c",
    "0194a6564d2d30303115cf0000019b76daf62081ae536c6f74436f6e66696775726564930393ae5072656d69756d20436f66666565cd02bc92a64472696e6b73a6436f666665650a",
    "0194a6564d2d30303116cf0000019b76dafa08ad41646d696e4c6f67676564496e",
    "0194a6564d2d30303117cf0000019b76dafdf081b041646d696e4c6f67696e4661696c65649101",
    "0194a6564d2d30303118cf0000019b76db01d881ae41646d696e4c6f636b65644f757491cf0000019b76df3be0",
    "0194a6564d2d30303119cf0000019b76db05c0ae41646d696e4c6f676765644f7574",
    "0194a6564d2d3030311acf0000019b76db09a881b441646d696e50617373776f72644368616e67656491d932246172676f6e32696424763d3139246d3d382c743d312c703d31246332467364484e68624851246147467a61476868633267",
    "0194a6564d2d3030311bcf0000019b76db0d9081b552656d6f7465436f6d6d616e6452656a65637465649209b27468657265206973206e6f20736c6f742039",
];

#[test]
fn every_event_variant_encodes_to_its_golden_bytes() {
    let events = events();
    let mut covered = [false; EVENT_VARIANTS];
    for event in &events {
        covered[variant_index(event)] = true;
    }
    assert!(covered.iter().all(|&c| c), "an event variant has no vector");
    assert_eq!(events.len(), ENVELOPES_HEX.len());
    for (index, (event, golden)) in events.into_iter().zip(ENVELOPES_HEX).enumerate() {
        let envelope = envelope(index, event);
        let what = format!("encoded event {index} ({})", envelope.event.kind());
        assert_hex(&what, &envelope.encode(), golden);
        assert_eq!(EventEnvelope::decode(&from_hex(golden)).unwrap(), envelope);
    }
}

/// The machine chain: `blake3_keyed(derive_key(context, machine key),
/// previous ++ event)`.
const CHAIN_HASH_HEX: &str = "aabd24e2419da584be91b1f8dfb883a4d5a5319fe2d3c3bcbffd648d93973831";

fn signed_first_event() -> SignedEvent {
    let bytes = envelope(0, events().remove(0)).encode();
    let chain_key = SecretKey::from_bytes(MACHINE_KEY).derive(CHAIN_KEY_CONTEXT);
    let chain_hash = chain_hash(&chain_key, &GENESIS_HASH, &bytes);
    SignedEvent { bytes, chain_hash }
}

#[test]
fn the_machine_chain_hash_is_golden() {
    assert_eq!(
        CHAIN_KEY_CONTEXT,
        "vendledger 2026-11 machine event chain v1"
    );
    assert_hex(
        "machine chain hash",
        &signed_first_event().chain_hash,
        CHAIN_HASH_HEX,
    );
}

/// Log record of gseq 1: the machine's first event, after the genesis hash.
const RECORD_EVENT_HEX: &str = "010000000000000000000000000000000000000000000000000000000000000000940101cf0000019b76daa80581a54576656e7493a6564d2d3030310192c45b0194a6564d2d30303101cf0000019b76daa80081a9496e7374616c6c6564939464646432cd012cd932246172676f6e32696424763d3139246d3d382c743d312c703d31246332467364484e68624851246147467a61476868633267c420aabd24e2419da584be91b1f8dfb883a4d5a5319fe2d3c3bcbffd648d93973831";
const RECORD_EVENT_HASH_HEX: &str =
    "8d1d099f11ac5ee877b0394a27a4c26361b1c47cb464fcd2b94452062de8ee94";
/// Log record of gseq 2: the marker with which epoch 2 opened.
const RECORD_MARKER_HEX: &str = "018d1d099f11ac5ee877b0394a27a4c26361b1c47cb464fcd2b94452062de8ee94940202cf0000019b76daa80981ac45706f63685374617274656491a97265706c6963612d32";
const RECORD_MARKER_HASH_HEX: &str =
    "4cb02c7916dc6ec0f190c55bef395d83380abb3279185b581e34e3a811c791a7";

/// The two golden records, as `LogEntry::seal_body` builds them.
fn golden_records() -> [(LogEntry, Vec<u8>); 2] {
    let event = EntryBody {
        gseq: 1,
        epoch: 1,
        logged_ms: AT_MS + 5,
        payload: Payload::Event {
            machine_id: machine(),
            machine_seq: 1,
            event: signed_first_event(),
        },
    };
    let first = LogEntry::seal_body(event, GENESIS_HASH);
    let marker = EntryBody {
        gseq: 2,
        epoch: 2,
        logged_ms: AT_MS + 9,
        payload: Payload::EpochStarted {
            primary: "replica-2".into(),
        },
    };
    let second = LogEntry::seal_body(marker, first.0.hash);
    [first, second]
}

#[test]
fn log_records_and_their_hashes_are_golden() {
    let [(event, event_bytes), (marker, marker_bytes)] = golden_records();
    assert_hex("event record", &event_bytes, RECORD_EVENT_HEX);
    assert_hex("event record hash", &event.hash, RECORD_EVENT_HASH_HEX);
    assert_hex("marker record", &marker_bytes, RECORD_MARKER_HEX);
    assert_hex("marker record hash", &marker.hash, RECORD_MARKER_HASH_HEX);
    let blake3: Hash32 = *blake3::hash(&from_hex(RECORD_EVENT_HEX)).as_bytes();
    assert_eq!(blake3, event.hash, "a record's hash is blake3 of its bytes");
    assert_eq!(marker.prev_hash, event.hash);
    assert_eq!(
        LogEntry::decode(&from_hex(RECORD_EVENT_HEX)).unwrap(),
        event
    );
    assert_eq!(
        LogEntry::decode(&from_hex(RECORD_MARKER_HEX)).unwrap(),
        marker
    );
}

/// What the store seals for a chunk holding the two golden records:
/// `u32 LE length ++ record`, repeated.
fn chunk_plaintext() -> Vec<u8> {
    from_hex(&format!(
        "{}{RECORD_EVENT_HEX}{}{RECORD_MARKER_HEX}",
        "bd000000", "46000000"
    ))
}
/// The chunk's associated data: `"log/" ++ first gseq (u64 BE)`.
const CHUNK_AAD_HEX: &str = "6c6f672f0000000000000001";
/// The chunk sealed once under `STORE_KEY`: nonce ++ ciphertext ++ tag.
const SEALED_CHUNK_HEX: &str = "4c974c384930bd3025db3ce6da92320b62ab3e2bd4da3fc6aa78383ce24ca3f6c9497bdf1a1accc9006ed3e599a5e276af125b9a1c36fc8e17ed906f5d974824a596b3545770f04ff6c02d31321e9918abe7a6965444d15848b8d89cb2d07e242a7b01a1f6c9ee8840c5156ff377b55d50a9727646c67d7068533096103bb1ae260e9fb7609e9303e6544dfdee4094fe65060e9922642ca2bf12075695d3431b131207f9ffc71fa45fdcdf116b8423bb5fb9753f03aa1c85883d39de0b28909298b52ef8ac6c1283fb15e99602671bb79a9fd75ed28db82d9ccab00a3b5b9060f65228a3b4b04db8b43d6148a3ba8e4d4c13bfa3bb64ece05011aa7bb74bea32c798d37d3671ba51b675bdc5b2256bed06ee88e02f7e63526447b8d9418d6c29d992cd7c81c81f9b9b0e2d607a19f557393c21";

fn store_with_golden_records(dir: &std::path::Path) -> LogStore {
    let options = OpenOptions {
        create: true,
        ..OpenOptions::default()
    };
    let mut store = LogStore::open(dir, &SecretKey::from_bytes(STORE_KEY), options).unwrap();
    let keys = SingleMachineKey::new(machine(), &SecretKey::from_bytes(MACHINE_KEY));
    let records = golden_records().map(|(_, bytes)| ReplicatedRecord::decode(bytes).unwrap());
    store.append_replicated(&records, &keys).unwrap();
    store
}

#[test]
fn the_store_seals_chunks_in_the_golden_format() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_golden_records(dir.path());
    let (first_gseq, sealed) = store.raw_chunk(1).unwrap().expect("a chunk at gseq 1");
    assert_eq!(first_gseq, 1, "both records went into one chunk");
    let sealer = Sealer::new(&SecretKey::from_bytes(STORE_KEY));
    let opened = sealer.open(&from_hex(CHUNK_AAD_HEX), &sealed).unwrap();
    assert_hex("chunk plaintext", &opened, &hex::encode(chunk_plaintext()));
    assert_eq!(
        sealed.len(),
        24 + opened.len() + 16,
        "nonce ++ sealed ++ tag"
    );
}

#[test]
fn a_golden_sealed_chunk_opens_and_reads_back() {
    let sealer = Sealer::new(&SecretKey::from_bytes(STORE_KEY));
    let golden = from_hex(SEALED_CHUNK_HEX);
    let opened = sealer.open(&from_hex(CHUNK_AAD_HEX), &golden).unwrap();
    assert_eq!(opened, chunk_plaintext());
    // The store itself reads the golden value in place of its own.
    let dir = tempfile::tempdir().unwrap();
    let mut store = store_with_golden_records(dir.path());
    store.overwrite_raw_chunk(1, Some(&golden)).unwrap();
    let [(event, _), (marker, _)] = golden_records();
    assert_eq!(store.get(1).unwrap(), Some(event));
    assert_eq!(store.get(2).unwrap(), Some(marker));
}

/// An operator's record: `kim` asks machine VM-001 to sell slot 2 at 600
/// won, as command 1.
const OPERATOR_RECORD_HEX: &str = "0193a36b696dcf0000019b76daa81481b0436f6d6d616e6452657175657374656493a6564d2d3030310181a853657450726963659202cd0258";
/// Log record of gseq 3 (after the golden marker) carrying it.
const RECORD_OPERATOR_HEX: &str = "014cb02c7916dc6ec0f190c55bef395d83380abb3279185b581e34e3a811c791a7940302cf0000019b76daa81581a84f70657261746f7291c4390193a36b696dcf0000019b76daa81481b0436f6d6d616e6452657175657374656493a6564d2d3030310181a853657450726963659202cd0258";
const RECORD_OPERATOR_HASH_HEX: &str =
    "da51bd157f21af55d75827cea7976fea6ea9fc9e1123487cc5813b4de6353ebd";

fn golden_operator_record() -> OperatorRecord {
    OperatorRecord {
        operator: "kim".into(),
        at_ms: AT_MS + 20,
        action: OperatorAction::CommandRequested {
            machine: machine(),
            command_id: 1,
            action: RemoteAction::SetPrice {
                slot: SlotId(2),
                price: 600,
            },
        },
    }
}

#[test]
fn operator_records_and_their_log_records_are_golden() {
    let record = golden_operator_record();
    let encoded = record.encode();
    assert_hex("operator record", &encoded, OPERATOR_RECORD_HEX);
    assert_eq!(
        OperatorRecord::decode(&from_hex(OPERATOR_RECORD_HEX)).unwrap(),
        record
    );
    let [_, (marker, _)] = golden_records();
    let body = EntryBody {
        gseq: 3,
        epoch: 2,
        logged_ms: AT_MS + 21,
        payload: Payload::Operator { record: encoded },
    };
    let (entry, bytes) = LogEntry::seal_body(body, marker.hash);
    assert_hex("operator log record", &bytes, RECORD_OPERATOR_HEX);
    assert_hex(
        "operator log record hash",
        &entry.hash,
        RECORD_OPERATOR_HASH_HEX,
    );
    let decoded = LogEntry::decode(&from_hex(RECORD_OPERATOR_HEX)).unwrap();
    assert_eq!(decoded, entry);
    assert_eq!(
        decoded.content().unwrap(),
        Content::Operator(record.clone())
    );
    assert_eq!(
        LogEntry::decode_content(&from_hex(RECORD_OPERATOR_HEX)).unwrap(),
        Content::Operator(record)
    );
    // The two golden records before it decode as before: adding the
    // operator payload changed no existing byte.
    assert_eq!(
        LogEntry::decode_content(&from_hex(RECORD_MARKER_HEX)).unwrap(),
        Content::Marker
    );
    assert!(matches!(
        LogEntry::decode_content(&from_hex(RECORD_EVENT_HEX)).unwrap(),
        Content::Event(_)
    ));
}

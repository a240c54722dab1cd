//! Golden bytes for replication datagrams (`docs/FORMATS.md`).
//!
//! Replicas of different builds talk to each other during a rolling
//! upgrade, so any change to these bytes must come with a new
//! `WIRE_VERSION`. Each kind of message has a vector of its header, of its
//! MessagePack body, and of a whole datagram sealed once under a fixed
//! cluster key (sealing draws a random nonce, so fresh datagrams are
//! compared through their header and opened body instead).

use ledger::crypto::{Sealer, SecretKey};
use replica::wire::{
    DATAGRAM_KEY_CONTEXT, Datagram, DatagramCodec, HEADER_BYTES, Message, MessageKind, RECEIVER_ALL,
};

const CLUSTER_ID: u32 = 0x00c0_ffee;
const CLUSTER_KEY: [u8; 32] = [0x33; 32];

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

/// The datagram key as FORMATS.md derives it, spelled out here so that a
/// changed context string fails the test.
fn datagram_sealer() -> Sealer {
    let key = blake3::derive_key("vendledger 2026-11 replication datagram v1", &CLUSTER_KEY);
    Sealer::new(&SecretKey::from_bytes(key))
}

/// A datagram from replica 2: what goes to every replica says so, replies
/// and repairs are addressed to replica 3.
fn datagram(message: Message) -> Datagram {
    let to_everyone = matches!(
        message,
        Message::Append { .. }
            | Message::Heartbeat { .. }
            | Message::VoteRequest { .. }
            | Message::PreVoteRequest { .. }
    );
    Datagram {
        cluster_id: CLUSTER_ID,
        sender: 2,
        receiver: if to_everyone { RECEIVER_ALL } else { 3 },
        epoch: 5,
        incarnation: 1_767_225_600_000,
        packet_seq: 42,
        commit_gseq: 99,
        message,
    }
}

/// One message of each kind, in the order of their kind numbers.
fn messages() -> [Message; 9] {
    [
        Message::Append {
            first_gseq: 100,
            records: vec![vec![0x01, 0x02, 0x03], vec![0xff]],
        },
        Message::Heartbeat {
            tip_gseq: 12,
            tip_hash: [0xa1; 32],
        },
        Message::Ack {
            tip_gseq: 11,
            tip_hash: [0xb2; 32],
        },
        Message::Nak {
            from_gseq: 5,
            to_gseq: 9,
        },
        Message::VoteRequest {
            last_gseq: 77,
            last_epoch: 4,
        },
        Message::VoteReply {
            granted: true,
            candidate: 3,
            epoch: 5,
        },
        Message::PreVoteRequest {
            last_gseq: 78,
            last_epoch: 5,
        },
        Message::PreVoteReply {
            granted: false,
            candidate: 3,
            proposed_epoch: 6,
        },
        Message::Catchup {
            first_gseq: 40,
            records: vec![vec![0xaa; 4]],
            last_gseq: 90,
            last_epoch: 3,
        },
    ]
}

/// Per kind: the header, the body before sealing, and a sealed datagram.
struct Golden {
    header: &'static str,
    body: &'static str,
    sealed: &'static str,
}

const GOLDEN: [Golden; 9] = [
    Golden {
        header: "564c4447020100c0ffee020000000000000000050000019b76daa800000000000000002a000000000000006400020000000000000063",
        body: "92c403010203c401ff",
        sealed: "564c4447020100c0ffee020000000000000000050000019b76daa800000000000000002a000000000000006400020000000000000063a80e62f861b16d832076e896c23cd43e9bb1c8bd24cc22dac76a9e8c60699d77c098a8a57a0842c2537f7012c96f5307d0",
    },
    Golden {
        header: "564c4447020200c0ffee020000000000000000050000019b76daa800000000000000002a000000000000000c00000000000000000063",
        body: "920cc420a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1",
        sealed: "564c4447020200c0ffee020000000000000000050000019b76daa800000000000000002a000000000000000c000000000000000000634df31fcff13c85c959b4c750ee31437050bf883d2b40bd96c7adfe538be384aba656e53d5dca675303fee3189be29474f65d8ff386be8f9e7d39a055b69d87fddc1551707162a83a9ff88f9e",
    },
    Golden {
        header: "564c4447020300c0ffee020300000000000000050000019b76daa800000000000000002a000000000000000b00000000000000000063",
        body: "920bc420b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2",
        sealed: "564c4447020300c0ffee020300000000000000050000019b76daa800000000000000002a000000000000000b00000000000000000063a2e16e9c83244b4adb703ccdcf890919900ec3ba10dc8aaa675878b3fdaabe411e6a17c44592d1efe0433be2341fdd27ea0a26c51ab9915c2d96fb6f1bec32c68c4190d4dbc488aad267c8ef",
    },
    Golden {
        header: "564c4447020400c0ffee020300000000000000050000019b76daa800000000000000002a000000000000000500000000000000000063",
        body: "920509",
        sealed: "564c4447020400c0ffee020300000000000000050000019b76daa800000000000000002a000000000000000500000000000000000063fac16adc6caf6bdd274ca9864309226e55fab005b37d03fe1c7458697f543d9870c2f205b465699c0f105c",
    },
    Golden {
        header: "564c4447020500c0ffee020000000000000000050000019b76daa800000000000000002a000000000000004d00000000000000000063",
        body: "924d04",
        sealed: "564c4447020500c0ffee020000000000000000050000019b76daa800000000000000002a000000000000004d00000000000000000063eb28e2776572aec3e860c5ea8c94068347a1aa117d473367f77ac37b219ab62df41a540a710ea0652488e3",
    },
    Golden {
        header: "564c4447020600c0ffee020300000000000000050000019b76daa800000000000000002a000000000000000000000000000000000063",
        body: "93c30305",
        sealed: "564c4447020600c0ffee020300000000000000050000019b76daa800000000000000002a000000000000000000000000000000000063768f31a470128bd2d83f622daa98015702f07bbc53cce80dfd260278d5658a697f4788cb50629278ed47c203",
    },
    Golden {
        header: "564c4447020700c0ffee020000000000000000050000019b76daa800000000000000002a000000000000004e00000000000000000063",
        body: "924e05",
        sealed: "564c4447020700c0ffee020000000000000000050000019b76daa800000000000000002a000000000000004e00000000000000000063dde288bd107ab12881041f865a3cd04286eff0349c154e21e3049b1dec618cffa0a4d42d6c6cfa4aa8ba66",
    },
    Golden {
        header: "564c4447020800c0ffee020300000000000000050000019b76daa800000000000000002a000000000000000000000000000000000063",
        body: "93c20306",
        sealed: "564c4447020800c0ffee020300000000000000050000019b76daa800000000000000002a000000000000000000000000000000000063e74baa92b8283afbc416283a3b2be517e3f91a0dc7167ef4431e9bd9419d3ecac700c37ac934d8e13a94dc78",
    },
    Golden {
        header: "564c4447020900c0ffee020300000000000000050000019b76daa800000000000000002a000000000000002800010000000000000063",
        body: "9391c404aaaaaaaa5a03",
        sealed: "564c4447020900c0ffee020300000000000000050000019b76daa800000000000000002a00000000000000280001000000000000006324cdb9a02fc7b7379ff46b39830a787a251c2968b9459651e220cd027c7232ce1c59544bad7084273e56652719d93fadd708",
    },
];

#[test]
fn kind_numbers_are_golden() {
    let numbers: Vec<u8> = MessageKind::ALL.into_iter().map(u8::from).collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    for (message, kind) in messages().iter().zip(MessageKind::ALL) {
        assert_eq!(message.kind(), kind);
    }
    assert_eq!(
        DATAGRAM_KEY_CONTEXT,
        "vendledger 2026-11 replication datagram v1"
    );
    assert_eq!(HEADER_BYTES, 54);
}

#[test]
fn every_kind_encodes_to_its_golden_header_and_body() {
    let codec = DatagramCodec::new(CLUSTER_ID, &SecretKey::from_bytes(CLUSTER_KEY));
    let sealer = datagram_sealer();
    for (message, golden) in messages().into_iter().zip(&GOLDEN) {
        let name = message.name();
        let bytes = codec.encode(&datagram(message));
        let (header, sealed) = bytes.split_at(HEADER_BYTES);
        assert_hex(&format!("{name} header"), header, golden.header);
        let body = sealer
            .open(header, sealed)
            .expect("sealed under the datagram key");
        assert_hex(&format!("{name} body"), &body, golden.body);
    }
}

#[test]
fn every_golden_datagram_opens_and_decodes() {
    let codec = DatagramCodec::new(CLUSTER_ID, &SecretKey::from_bytes(CLUSTER_KEY));
    let sealer = datagram_sealer();
    for (message, golden) in messages().into_iter().zip(&GOLDEN) {
        let bytes = from_hex(golden.sealed);
        let (header, sealed) = bytes.split_at(HEADER_BYTES);
        assert_eq!(hex::encode(header), golden.header, "{}", message.name());
        assert_eq!(
            hex::encode(sealer.open(header, sealed).unwrap()),
            golden.body
        );
        assert_eq!(codec.decode(&bytes), Ok(datagram(message)));
    }
}

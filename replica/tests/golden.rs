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
    DATAGRAM_KEY_CONTEXT, Datagram, DatagramCodec, HEADER_BYTES, Message, MessageKind,
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

fn datagram(message: Message) -> Datagram {
    Datagram {
        cluster_id: CLUSTER_ID,
        sender: 2,
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
        Message::VoteReply { granted: true },
        Message::PreVoteRequest {
            last_gseq: 78,
            last_epoch: 5,
        },
        Message::PreVoteReply { granted: false },
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
        header: "564c4447010100c0ffee020000000000000000050000019b76daa800000000000000002a000000000000006400020000000000000063",
        body: "92c403010203c401ff",
        sealed: "564c4447010100c0ffee020000000000000000050000019b76daa800000000000000002a000000000000006400020000000000000063a4e08625e1e82be2c1766c0d8b633ce1be9baa241bbbb2b96b47812c571e05c9abe47e047ed6d471fd696815c07b1b5d75",
    },
    Golden {
        header: "564c4447010200c0ffee020000000000000000050000019b76daa800000000000000002a000000000000000c00000000000000000063",
        body: "920cc420a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1",
        sealed: "564c4447010200c0ffee020000000000000000050000019b76daa800000000000000002a000000000000000c00000000000000000063b1e588338006cbe079c0a0b6327f041da778753945db2dd0c7590d1b0e77c80c14e61df23e64fa6afde6c5d7fdc2e19e3081999a735dde514002a87525f857f2ee49d3a186593984b6183440",
    },
    Golden {
        header: "564c4447010300c0ffee020000000000000000050000019b76daa800000000000000002a000000000000000b00000000000000000063",
        body: "920bc420b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2",
        sealed: "564c4447010300c0ffee020000000000000000050000019b76daa800000000000000002a000000000000000b0000000000000000006367ccb37230c39e0fcffa9420bba33093166894b59e57eced1d9dbd2af7648aab9dc4c2ee098a902f9e28a9b1dd7039b4a2bb15e128ba9766b8bd2bf100fcca750accbc871c18e6c21d912051",
    },
    Golden {
        header: "564c4447010400c0ffee020000000000000000050000019b76daa800000000000000002a000000000000000500000000000000000063",
        body: "920509",
        sealed: "564c4447010400c0ffee020000000000000000050000019b76daa800000000000000002a000000000000000500000000000000000063ff5197448461deff47da64e72e55659fa17e3941b63af220fd2b43ce52d0713fe36458765c08797c07036c",
    },
    Golden {
        header: "564c4447010500c0ffee020000000000000000050000019b76daa800000000000000002a000000000000004d00000000000000000063",
        body: "924d04",
        sealed: "564c4447010500c0ffee020000000000000000050000019b76daa800000000000000002a000000000000004d00000000000000000063781ed8ae9fbaa8f1558e96f2d06cabc458395b36675adffb57ad136b70f9cf91ee5539da1f6f4b4d292e68",
    },
    Golden {
        header: "564c4447010600c0ffee020000000000000000050000019b76daa800000000000000002a000000000000000000000000000000000063",
        body: "91c3",
        sealed: "564c4447010600c0ffee020000000000000000050000019b76daa800000000000000002a0000000000000000000000000000000000636bb24c8358528cc2ab78cddcf9ff75ea768f0c1c2c3d08483ec84baf7d83763b424f850a07868760a9a3",
    },
    Golden {
        header: "564c4447010700c0ffee020000000000000000050000019b76daa800000000000000002a000000000000004e00000000000000000063",
        body: "924e05",
        sealed: "564c4447010700c0ffee020000000000000000050000019b76daa800000000000000002a000000000000004e00000000000000000063a37c447522c3b1ad59cc6a7502e056abf9330a865f6a9168d0d965bd90cfc48673e775891be141d7da3265",
    },
    Golden {
        header: "564c4447010800c0ffee020000000000000000050000019b76daa800000000000000002a000000000000000000000000000000000063",
        body: "91c2",
        sealed: "564c4447010800c0ffee020000000000000000050000019b76daa800000000000000002a0000000000000000000000000000000000633b2c62a314cd6cda14d0a9432fee299a6c6de7a5dcedef4e322ccca69ec70ae9d31dbcad4fdbf6f1ed29",
    },
    Golden {
        header: "564c4447010900c0ffee020000000000000000050000019b76daa800000000000000002a000000000000002800010000000000000063",
        body: "9391c404aaaaaaaa5a03",
        sealed: "564c4447010900c0ffee020000000000000000050000019b76daa800000000000000002a0000000000000028000100000000000000632ac5e024c4ca8b91a9de6fa618b1924a38e373a2b6058fe3f791e363a7787a3388328a7d6177e3825cd3ddab66ac433adad6",
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

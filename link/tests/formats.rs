//! Golden bytes of the machine link (`docs/FORMATS.md`, "Machine link").
//!
//! A machine and a replica of different versions must agree on every byte,
//! so renaming a variant, reordering a field or changing the key derivation
//! has to fail here, not in the field. Sealing takes a random nonce, so the
//! sealed vectors are built by a reference implementation written from the
//! format description (blake3 and XChaCha20-Poly1305 called directly, with
//! a fixed nonce); `Channel` must open them, and what `Channel` seals must
//! open with the reference. No test hook is needed in the shipped code.

use bytes::{Bytes, BytesMut};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ledger::MachineId;
use ledger::crypto::SecretKey;
use ledger::store::record::SignedEvent;
use link::channel::{
    Channel, Downstream, Hello, HelloReply, LINK_VERSION, LINK_VERSION_MIN, Refusal, RefusalReason,
    Side, Upstream, UpstreamV1, decode_plain, encode_plain,
};
use link::codec::frame_codec;
use tokio_util::codec::{Decoder, Encoder};

const LINK_KEY: [u8; 32] = [0x42; 32];
const MACHINE: &str = "VM-003";
const CLIENT_NONCE: [u8; 24] = [0x11; 24];
const SERVER_NONCE: [u8; 24] = [0x22; 24];
/// The nonce of the reference seals (a real one is random).
const FRAME_NONCE: [u8; 24] = [0x44; 24];

/// `blake3_keyed(LINK_KEY, "vendledger link session v1" ++ "VM-003" ++ 24 × 11 ++ 24 × 22)`.
const SESSION_KEY_HEX: &str = "42e671d0e7c19a04ac47335431a6d2e2e38b342235da3b595ba089c76b0a618d";
/// The first sealed frame from a machine of link version 1, carrying
/// `UpstreamV1::Ping`: length, nonce, ciphertext, tag.
const SEALED_PING_V1_FRAME_HEX: &str = "0000002d \
    444444444444444444444444444444444444444444444444 \
    6fa913b5eb \
    0a284707e0278ded39b4fce6a5e442c1";
/// The first sealed frame from a machine of link version 2, carrying
/// `Upstream::Ping { local_tip: 7 }`: length, nonce, ciphertext, tag.
const SEALED_PING_FRAME_HEX: &str = "00000030 \
    444444444444444444444444444444444444444444444444 \
    4a5d2ab2e2350b85 \
    5b5b16a661e2970abfa20d129ef3d789";
/// The first sealed frame from the replica, carrying
/// `Downstream::Ack { committed_seq: 7 }`: length, nonce, ciphertext, tag.
const SEALED_ACK_FRAME_HEX: &str = "0000002f \
    444444444444444444444444444444444444444444444444 \
    4a5a3bb8e7c39d \
    35239f1dcdc6f50aa5582bf2cebceac6";

fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text.replace(' ', "")).expect("valid hex in the test")
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut frame = BytesMut::new();
    frame_codec()
        .encode(Bytes::copy_from_slice(payload), &mut frame)
        .unwrap();
    frame.to_vec()
}

fn unframed(frame: &[u8]) -> Vec<u8> {
    let mut buffer = BytesMut::from(frame);
    let payload = frame_codec().decode(&mut buffer).unwrap().expect("whole");
    assert!(buffer.is_empty(), "exactly one frame");
    payload.to_vec()
}

fn machine() -> MachineId {
    MachineId::new(MACHINE).unwrap()
}

fn channel(side: Side) -> Channel {
    Channel::new(
        &SecretKey::from_bytes(LINK_KEY),
        &machine(),
        &CLIENT_NONCE,
        &SERVER_NONCE,
        side,
    )
}

fn reference_session_key() -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_keyed(&LINK_KEY);
    hasher.update(b"vendledger link session v1");
    hasher.update(MACHINE.as_bytes());
    hasher.update(&CLIENT_NONCE);
    hasher.update(&SERVER_NONCE);
    *hasher.finalize().as_bytes()
}

fn reference_aad(direction: u8, counter: u64) -> Vec<u8> {
    let mut aad = MACHINE.as_bytes().to_vec();
    aad.push(direction);
    aad.extend_from_slice(&counter.to_be_bytes());
    aad
}

fn reference_cipher() -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new_from_slice(&reference_session_key()).unwrap()
}

/// `nonce ++ ciphertext ++ tag`, as the format says.
fn reference_seal(direction: u8, counter: u64, plaintext: &[u8]) -> Vec<u8> {
    let aad = reference_aad(direction, counter);
    let sealed = reference_cipher()
        .encrypt(
            XNonce::from_slice(&FRAME_NONCE),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .unwrap();
    [FRAME_NONCE.as_slice(), &sealed].concat()
}

fn reference_open(direction: u8, counter: u64, payload: &[u8]) -> Vec<u8> {
    let aad = reference_aad(direction, counter);
    let (nonce, sealed) = payload.split_at(24);
    reference_cipher()
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: &aad,
            },
        )
        .expect("opens with the reference")
}

#[test]
fn a_frame_is_a_big_endian_length_then_the_payload() {
    assert_eq!(hex::encode(framed(&[1, 2, 3])), "00000003010203");
    assert_eq!(hex::encode(framed(&[])), "00000000");
    assert_eq!(unframed(&unhex("00000003 010203")), [1, 2, 3]);
}

#[test]
fn the_link_is_at_version_2_and_still_reads_version_1() {
    assert_eq!(LINK_VERSION, 2);
    assert_eq!(LINK_VERSION_MIN, 1);
}

#[test]
fn hello_and_its_reply_are_plain_messagepack_arrays() {
    let hello = Hello {
        version: LINK_VERSION,
        machine_id: machine(),
        client_nonce: CLIENT_NONCE,
    };
    let expected = format!("93 02 a6 564d2d303033 c418 {}", "11".repeat(24));
    assert_eq!(hex::encode(encode_plain(&hello)), expected.replace(' ', ""));
    assert_eq!(decode_plain::<Hello>(&unhex(&expected)).unwrap(), hello);
    // On the wire: 4 + 1 + 1 + 7 + 2 + 24 = 39 bytes, 35 of them payload.
    assert_eq!(
        hex::encode(framed(&encode_plain(&hello))),
        format!("00000023{}", expected.replace(' ', ""))
    );

    let reply = HelloReply {
        version: LINK_VERSION,
        server_nonce: SERVER_NONCE,
    };
    let expected = format!("92 02 c418 {}", "22".repeat(24));
    assert_eq!(hex::encode(encode_plain(&reply)), expected.replace(' ', ""));
    assert_eq!(
        decode_plain::<HelloReply>(&unhex(&expected)).unwrap(),
        reply
    );
    // A machine of version 1 says so in the same place, and is answered
    // in its version.
    let hello_v1 = format!("93 01 a6 564d2d303033 c418 {}", "11".repeat(24));
    assert_eq!(decode_plain::<Hello>(&unhex(&hello_v1)).unwrap().version, 1);
    let reply_v1 = HelloReply {
        version: 1,
        server_nonce: SERVER_NONCE,
    };
    assert_eq!(
        hex::encode(encode_plain(&reply_v1)),
        format!("9201c418{}", "22".repeat(24))
    );
}

#[test]
fn a_refusal_is_a_plain_messagepack_enum() {
    let refusals = [
        (
            RefusalReason::UnknownMachine,
            "81 ac 48656c6c6f52656675736564 91 ae 556e6b6e6f776e4d616368696e65",
        ),
        (
            RefusalReason::Version { supported: 2 },
            "81 ac 48656c6c6f52656675736564 91 81 a7 56657273696f6e 91 02",
        ),
    ];
    for (reason, expected) in refusals {
        let refusal = Refusal::HelloRefused { reason };
        assert_eq!(
            hex::encode(encode_plain(&refusal)),
            expected.replace(' ', "")
        );
        assert_eq!(decode_plain::<Refusal>(&unhex(expected)).unwrap(), refusal);
    }
}

#[test]
fn every_message_has_its_pinned_encoding() {
    let upstream = [
        (
            Upstream::Ping { local_tip: 7 },
            "81 a4 50696e67 91 07".to_owned(),
        ),
        (
            Upstream::Submit {
                events: vec![SignedEvent {
                    bytes: vec![1, 2, 3],
                    chain_hash: [0x33; 32],
                }],
            },
            format!(
                "81 a6 5375626d6974 91 91 92 c403 010203 c420 {}",
                "33".repeat(32)
            ),
        ),
    ];
    for (message, expected) in upstream {
        assert_eq!(
            hex::encode(encode_plain(&message)),
            expected.replace(' ', "")
        );
        assert_eq!(
            decode_plain::<Upstream>(&unhex(&expected)).unwrap(),
            message
        );
    }
    // Version 1: the same Submit, and a Ping without the tip; neither
    // version's Ping reads as the other's.
    assert_eq!(hex::encode(encode_plain(&UpstreamV1::Ping)), "a450696e67");
    assert_eq!(
        decode_plain::<UpstreamV1>(&unhex("a4 50696e67")).unwrap(),
        UpstreamV1::Ping
    );
    let submit = format!(
        "81 a6 5375626d6974 91 91 92 c403 010203 c420 {}",
        "33".repeat(32)
    );
    assert!(matches!(
        decode_plain::<UpstreamV1>(&unhex(&submit)).unwrap(),
        UpstreamV1::Submit { events } if events.len() == 1
    ));
    assert!(decode_plain::<Upstream>(&unhex("a4 50696e67")).is_err());
    assert!(decode_plain::<UpstreamV1>(&unhex("81 a4 50696e67 91 07")).is_err());
    let downstream = [
        (
            Downstream::Welcome {
                committed_seq: 5,
                epoch: 2,
            },
            "81 a7 57656c636f6d65 92 05 02",
        ),
        (
            Downstream::Redirect {
                primary: Some("127.0.0.1:7103".into()),
            },
            "81 a8 5265646972656374 91 ae 3132372e302e302e313a37313033",
        ),
        (
            Downstream::Redirect { primary: None },
            "81 a8 5265646972656374 91 c0",
        ),
        (Downstream::Ack { committed_seq: 7 }, "81 a3 41636b 91 07"),
        (
            Downstream::Resend {
                resend_from: 9,
                reason: "busy".into(),
            },
            "81 a6 526573656e64 92 09 a4 62757379",
        ),
    ];
    for (message, expected) in downstream {
        assert_eq!(
            hex::encode(encode_plain(&message)),
            expected.replace(' ', "")
        );
        assert_eq!(
            decode_plain::<Downstream>(&unhex(expected)).unwrap(),
            message
        );
    }
}

#[test]
fn the_session_key_is_pinned() {
    assert_eq!(hex::encode(reference_session_key()), SESSION_KEY_HEX);
}

#[test]
fn a_sealed_ping_from_the_machine_is_pinned() {
    let ping = Upstream::Ping { local_tip: 7 };
    let plaintext = unhex("81 a4 50696e67 91 07");
    let frame = framed(&reference_seal(1, 1, &plaintext));
    assert_eq!(hex::encode(&frame), SEALED_PING_FRAME_HEX.replace(' ', ""));
    assert_eq!(&frame[..4], &[0, 0, 0, 48], "24 + 8 + 16 bytes");

    // The replica's channel opens the pinned frame...
    let mut replica = channel(Side::Replica);
    let payload = unframed(&unhex(SEALED_PING_FRAME_HEX));
    assert_eq!(replica.open::<Upstream>(&payload).unwrap(), ping);
    // ...and what the machine's channel seals opens with the reference.
    let mut machine = channel(Side::Machine);
    let sealed = machine.seal(&ping);
    assert_eq!(sealed.len(), 48);
    assert_eq!(reference_open(1, 1, &sealed), plaintext);
    let second = machine.seal(&ping);
    assert_eq!(reference_open(1, 2, &second), plaintext, "counted from 1");
}

#[test]
fn a_sealed_ping_of_link_version_1_is_still_read() {
    let plaintext = unhex("a4 50696e67");
    let frame = framed(&reference_seal(1, 1, &plaintext));
    assert_eq!(
        hex::encode(&frame),
        SEALED_PING_V1_FRAME_HEX.replace(' ', "")
    );
    assert_eq!(&frame[..4], &[0, 0, 0, 45], "24 + 5 + 16 bytes");
    let mut replica = channel(Side::Replica);
    let payload = unframed(&unhex(SEALED_PING_V1_FRAME_HEX));
    assert_eq!(
        replica.open::<UpstreamV1>(&payload).unwrap(),
        UpstreamV1::Ping
    );
}

#[test]
fn a_sealed_ack_from_the_replica_is_pinned() {
    let plaintext = unhex("81 a3 41636b 91 07");
    let frame = framed(&reference_seal(2, 1, &plaintext));
    assert_eq!(hex::encode(frame), SEALED_ACK_FRAME_HEX.replace(' ', ""));

    let mut machine = channel(Side::Machine);
    let payload = unframed(&unhex(SEALED_ACK_FRAME_HEX));
    assert_eq!(
        machine.open::<Downstream>(&payload).unwrap(),
        Downstream::Ack { committed_seq: 7 }
    );
    let mut replica = channel(Side::Replica);
    let sealed = replica.seal(&Downstream::Ack { committed_seq: 7 });
    assert_eq!(reference_open(2, 1, &sealed), plaintext);
}

//! The machine link's messages: a handshake with fresh nonces from both
//! sides, then every frame payload sealed with XChaCha20-Poly1305 under a
//! session key derived from the machine's link key. Frames themselves (the
//! length prefix) are [`crate::codec`]'s.
//!
//! ```text
//! frame       = length (u32 BE, at most FRAME_BYTES_MAX) ++ payload
//! handshake   = Hello { version, machine_id, client_nonce }      machine → replica, plaintext
//!               HelloReply { version, server_nonce }              replica → machine, plaintext
//!             | Refusal::HelloRefused { reason }, then close      replica → machine, plaintext
//! session_key = blake3_keyed(link_key, "vendledger link session v1" ++ machine_id
//!                                      ++ client_nonce ++ server_nonce)
//! sealed      = nonce (24) ++ XChaCha20-Poly1305(session_key, nonce,
//!               aad = machine_id ++ direction (1 byte) ++ counter (u64 BE), msgpack(message)) ++ tag
//! ```
//!
//! The counter is not sent: each side expects the next number, so a
//! replayed, dropped-and-reinjected or reordered frame fails to open and the
//! connection is closed. Fresh nonces from both sides make every session's
//! key new, so frames from an old session cannot be replayed into a new one.
//! Nothing here does I/O: [`Channel`] seals and opens payloads, and
//! `docs/FORMATS.md` gives every byte.

use ledger::MachineId;
use ledger::crypto::{NONCE_BYTES, SEAL_OVERHEAD_BYTES, SealError, Sealer, SecretKey};
use ledger::event::EVENT_BYTES_MAX;
use ledger::rules::RemoteCommand;
use ledger::store::record::SignedEvent;
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Largest frame payload accepted (a full Submit of `SUBMIT_EVENTS_MAX`
/// largest events fits with room to spare).
pub const FRAME_BYTES_MAX: usize = 256 * 1024;
/// Most events in one Submit.
pub const SUBMIT_EVENTS_MAX: usize = 128;

/// The largest sealed Submit: per event its bytes, the 32-byte chain hash
/// and at most 8 bytes of MessagePack headers; per message at most 16 bytes
/// of headers and the seal's nonce and tag.
const SUBMIT_SEALED_BYTES_MAX: usize =
    SUBMIT_EVENTS_MAX * (EVENT_BYTES_MAX + 32 + 8) + 16 + SEAL_OVERHEAD_BYTES;
// A Submit the uplink builds must always fit a frame; otherwise the machine
// would be refused the same batch forever.
const _: () = assert!(SUBMIT_SEALED_BYTES_MAX <= FRAME_BYTES_MAX);
/// The link version machines speak. Version 2 added the machine's local
/// tip to its `Ping` (so operators see each machine's unsent backlog).
pub const LINK_VERSION: u8 = 2;
/// The oldest version a replica still accepts: a machine that speaks it
/// is answered in it and served as before (its backlog is unknown).
pub const LINK_VERSION_MIN: u8 = 1;
/// Mixed into every session key, so a link key never derives anything else.
const SESSION_CONTEXT: &[u8] = b"vendledger link session v1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("frame failed authentication (replayed, reordered, forged or wrong key)")]
    Authentication,
    #[error(
        "link version {0} is not spoken here (versions {LINK_VERSION_MIN} to {LINK_VERSION} are)"
    )]
    Version(u8),
    #[error("unknown machine {0}")]
    UnknownMachine(String),
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u8,
    pub machine_id: MachineId,
    #[serde(with = "serde_bytes")]
    pub client_nonce: [u8; NONCE_BYTES],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    pub version: u8,
    #[serde(with = "serde_bytes")]
    pub server_nonce: [u8; NONCE_BYTES],
}

/// The plaintext answer of a replica that will not serve a Hello, sent
/// just before it closes the connection, so the machine can tell people
/// why. It cannot be authenticated (the replica may have no key for the
/// machine), so a machine treats it as a hint for people only: it backs
/// off exactly as after any failed attempt and changes nothing else.
///
/// An enum (a map of one entry on the wire), so it is never mistaken for a
/// `HelloReply` (an array).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    HelloRefused { reason: RefusalReason },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalReason {
    /// The replica has no key for this machine id (not provisioned, or
    /// its key file is missing or unreadable on the replica).
    UnknownMachine,
    /// The replica speaks another link version.
    Version { supported: u8 },
}

/// Messages from a machine to a replica (link version 2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Upstream {
    /// Events in machine_seq order, continuing from what was acknowledged.
    Submit { events: Vec<SignedEvent> },
    /// Keeps an idle session alive, asks for the committed mark, and says
    /// how far the machine's own ledger reaches (its highest machine_seq),
    /// so the replica knows how much the machine has not shipped yet.
    Ping { local_tip: u64 },
}

/// Messages from a machine of link version 1, which a replica still reads
/// from machines that speak it: the same, but a `Ping` without the tip.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpstreamV1 {
    Submit { events: Vec<SignedEvent> },
    Ping,
}

/// Messages from a replica to a machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Downstream {
    /// This replica is the primary: send events after `committed_seq`.
    Welcome { committed_seq: u64, epoch: u64 },
    /// Not the primary; try this machine address (if known).
    Redirect { primary: Option<String> },
    /// Everything up to `committed_seq` is committed (cumulative).
    Ack { committed_seq: u64 },
    /// The events from `resend_from` on were not accepted; resend them.
    Resend { resend_from: u64, reason: String },
    /// A command from the dashboard for this machine.
    Remote(RemoteCommand),
}

pub fn encode_plain<T: Serialize>(message: &T) -> Vec<u8> {
    rmp_serde::to_vec(message).expect("encoding to a Vec cannot fail")
}

pub fn decode_plain<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, LinkError> {
    rmp_serde::from_slice(payload).map_err(|e| LinkError::Malformed(e.to_string()))
}

pub fn fresh_nonce() -> [u8; NONCE_BYTES] {
    let mut nonce = [0; NONCE_BYTES];
    rand::rng().fill_bytes(&mut nonce);
    nonce
}

/// Which way a frame travels (bound into every frame's associated data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Machine,
    Replica,
}

impl Side {
    fn direction_byte(self) -> u8 {
        match self {
            Side::Machine => 1,
            Side::Replica => 2,
        }
    }

    fn other(self) -> Side {
        match self {
            Side::Machine => Side::Replica,
            Side::Replica => Side::Machine,
        }
    }
}

/// An established session: seals what this side sends, opens what the
/// other side sends, each with its own counter.
pub struct Channel {
    sealer: Sealer,
    machine: MachineId,
    side: Side,
    sent: u64,
    received: u64,
}

impl Channel {
    pub fn new(
        link_key: &SecretKey,
        machine: &MachineId,
        client_nonce: &[u8; NONCE_BYTES],
        server_nonce: &[u8; NONCE_BYTES],
        side: Side,
    ) -> Channel {
        let mut hasher = blake3::Hasher::new_keyed(link_key.as_bytes());
        hasher.update(SESSION_CONTEXT);
        hasher.update(machine.as_str().as_bytes());
        hasher.update(client_nonce);
        hasher.update(server_nonce);
        let session_key = SecretKey::from_bytes(*hasher.finalize().as_bytes());
        Channel {
            sealer: Sealer::new(&session_key),
            machine: machine.clone(),
            side,
            sent: 0,
            received: 0,
        }
    }

    fn aad(&self, side: Side, counter: u64) -> Vec<u8> {
        let mut aad = Vec::with_capacity(self.machine.as_str().len() + 9);
        aad.extend_from_slice(self.machine.as_str().as_bytes());
        aad.push(side.direction_byte());
        aad.extend_from_slice(&counter.to_be_bytes());
        aad
    }

    /// Seals a message into a frame payload.
    pub fn seal<T: Serialize>(&mut self, message: &T) -> Vec<u8> {
        self.sent += 1;
        let aad = self.aad(self.side, self.sent);
        self.sealer.seal(&aad, &encode_plain(message))
    }

    /// Opens the next frame payload from the other side.
    pub fn open<T: for<'a> Deserialize<'a>>(&mut self, payload: &[u8]) -> Result<T, LinkError> {
        let aad = self.aad(self.side.other(), self.received + 1);
        let plaintext = self
            .sealer
            .open(&aad, payload)
            .map_err(|e: SealError| match e {
                SealError::TooShort | SealError::Authentication => LinkError::Authentication,
            })?;
        self.received += 1;
        decode_plain(&plaintext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair() -> (Channel, Channel) {
        let key = SecretKey::from_bytes([5; 32]);
        let machine = MachineId::numbered(3);
        let (c, s) = ([1; NONCE_BYTES], [2; NONCE_BYTES]);
        (
            Channel::new(&key, &machine, &c, &s, Side::Machine),
            Channel::new(&key, &machine, &c, &s, Side::Replica),
        )
    }

    #[test]
    fn sealed_messages_flow_both_ways() {
        let (mut machine, mut replica) = pair();
        let up = machine.seal(&Upstream::Ping { local_tip: 3 });
        assert_eq!(
            replica.open::<Upstream>(&up).unwrap(),
            Upstream::Ping { local_tip: 3 }
        );
        let down = replica.seal(&Downstream::Ack { committed_seq: 7 });
        assert_eq!(
            machine.open::<Downstream>(&down).unwrap(),
            Downstream::Ack { committed_seq: 7 }
        );
    }

    #[test]
    fn replayed_reordered_reflected_and_wrong_key_frames_fail() {
        let (mut machine, mut replica) = pair();
        let first = machine.seal(&Upstream::Ping { local_tip: 0 });
        let second = machine.seal(&Upstream::Submit { events: vec![] });
        assert_eq!(
            replica.open::<Upstream>(&second),
            Err(LinkError::Authentication),
            "reordered"
        );
        replica.open::<Upstream>(&first).unwrap();
        assert_eq!(
            replica.open::<Upstream>(&first),
            Err(LinkError::Authentication),
            "replayed"
        );
        replica.open::<Upstream>(&second).unwrap();
        // A frame sent back to its own sender (reflection) does not open.
        let down = replica.seal(&Downstream::Ack { committed_seq: 1 });
        assert_eq!(
            replica.open::<Upstream>(&down),
            Err(LinkError::Authentication)
        );
        // Another session (new nonces) cannot open this session's frames.
        let key = SecretKey::from_bytes([5; 32]);
        let mut other = Channel::new(
            &key,
            &MachineId::numbered(3),
            &[1; NONCE_BYTES],
            &[3; NONCE_BYTES],
            Side::Machine,
        );
        assert_eq!(
            other.open::<Downstream>(&down),
            Err(LinkError::Authentication)
        );
        let mut wrong_key = Channel::new(
            &SecretKey::from_bytes([6; 32]),
            &MachineId::numbered(3),
            &[1; NONCE_BYTES],
            &[2; NONCE_BYTES],
            Side::Replica,
        );
        let up = machine.seal(&Upstream::Ping { local_tip: 0 });
        assert_eq!(
            wrong_key.open::<Upstream>(&up),
            Err(LinkError::Authentication)
        );
    }

    /// A refusal never decodes as a reply, nor a reply as a refusal: the
    /// machine tells them apart by trying both.
    #[test]
    fn a_refusal_is_not_a_reply() {
        for reason in [
            RefusalReason::UnknownMachine,
            RefusalReason::Version { supported: 1 },
        ] {
            let refusal = encode_plain(&Refusal::HelloRefused { reason });
            assert!(decode_plain::<HelloReply>(&refusal).is_err());
            assert_eq!(
                decode_plain::<Refusal>(&refusal),
                Ok(Refusal::HelloRefused { reason })
            );
        }
        let reply = encode_plain(&HelloReply {
            version: LINK_VERSION,
            server_nonce: [0x55; NONCE_BYTES],
        });
        assert!(decode_plain::<Refusal>(&reply).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_payloads_never_panic(payload in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_plain::<Hello>(&payload);
            let _ = decode_plain::<HelloReply>(&payload);
            let _ = decode_plain::<Refusal>(&payload);
            let _ = decode_plain::<Upstream>(&payload);
            let _ = decode_plain::<UpstreamV1>(&payload);
            let _ = decode_plain::<Downstream>(&payload);
            let (mut machine, mut replica) = pair();
            prop_assert!(replica.open::<Upstream>(&payload).is_err());
            prop_assert!(machine.open::<Downstream>(&payload).is_err());
        }
    }
}

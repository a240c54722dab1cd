//! Replication datagrams: the header, the messages, sealing with the cluster
//! key, packing log records into datagrams, and the replay guard.
//!
//! ```text
//! datagram = header (HEADER_BYTES, plaintext, authenticated as AAD)
//!            ++ nonce (24) ++ XChaCha20-Poly1305(body) ++ tag (16)
//! header   = magic "VLDG" | version u8 | kind u8 (MessageKind) | cluster_id u32 | sender u8
//!            | receiver u8 (0: every replica) | epoch u64 | incarnation u64 | packet_seq u64
//!            | first_gseq u64 | count u16 | commit_gseq u64      (big-endian)
//! body     = MessagePack of the message's fields
//! ```
//!
//! Every datagram is authenticated: a forged, corrupted or foreign-cluster
//! datagram fails to open and is dropped. The header names its sender and
//! its receiver (or every replica), both authenticated, so a datagram
//! captured on its way to one replica and replayed to another is refused
//! there; replies also name the candidate and epoch they answer.
//! `incarnation` (strictly increasing per sender process) and `packet_seq`
//! (increasing per datagram) let a receiver drop replays with
//! [`ReplayGuard`].
//!
//! `docs/FORMATS.md` documents every byte, and `tests/golden.rs` pins them.

use ledger::crypto::{Hash32, Sealer, SecretKey};
use serde::{Deserialize, Serialize};

pub const MAGIC: [u8; 4] = *b"VLDG";
/// Version 2 binds the receiver into the header and makes vote replies
/// name what they answer.
pub const WIRE_VERSION: u8 = 2;
/// The receiver byte of a datagram meant for every replica.
pub const RECEIVER_ALL: NodeId = 0;
pub const HEADER_BYTES: usize = 4 + 1 + 1 + 4 + 1 + 1 + 8 + 8 + 8 + 8 + 2 + 8;
/// Default datagram payload budget (everything after the UDP header). A
/// replica cuts it to the path MTU (`transport::path_mtu`), so this applies
/// over loopback and jumbo frames: ~37 records a datagram instead of ~6
/// cost 22% less CPU per event and bought 27% more throughput
/// (BENCHMARKS.md, stop 22).
pub const PAYLOAD_BYTES_DEFAULT: usize = 8_192;
/// The smallest budget accepted: one largest log record must fit.
pub const PAYLOAD_BYTES_MIN: usize = 1_400;
/// The largest budget accepted (keeps IPv4 datagrams well below 64 KiB).
pub const PAYLOAD_BYTES_MAX: usize = 60_000;
/// Most records one Append datagram may claim to carry.
pub const RECORDS_PER_DATAGRAM_MAX: usize = 512;
/// Context for deriving the datagram key from the cluster key.
pub const DATAGRAM_KEY_CONTEXT: &str = "vendledger 2026-11 replication datagram v1";

/// A replica's index in the cluster (1, 2, 3).
pub type NodeId = u8;

/// What a datagram says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Consecutive log records starting at `first_gseq` (primary → followers).
    Append {
        first_gseq: u64,
        records: Vec<Vec<u8>>,
    },
    /// The primary's tip, so followers notice a lost tail.
    Heartbeat { tip_gseq: u64, tip_hash: Hash32 },
    /// A follower's durable contiguous tip (cumulative acknowledgement).
    Ack { tip_gseq: u64, tip_hash: Hash32 },
    /// A follower asks for `from_gseq..=to_gseq` again.
    Nak { from_gseq: u64, to_gseq: u64 },
    /// A candidate asks for a vote in the datagram's epoch.
    VoteRequest { last_gseq: u64, last_epoch: u64 },
    /// The answer to `candidate`'s vote request in `epoch`.
    VoteReply {
        granted: bool,
        candidate: NodeId,
        epoch: u64,
    },
    /// Would you vote for me in the datagram's epoch? Changes no state on
    /// either side (Raft's pre-vote).
    PreVoteRequest { last_gseq: u64, last_epoch: u64 },
    /// The answer to `candidate`'s pre-vote request for `proposed_epoch`.
    PreVoteReply {
        granted: bool,
        candidate: NodeId,
        proposed_epoch: u64,
    },
    /// Records from a voter whose log is more up to date than a candidate's
    /// (its last entry is `last_epoch`/`last_gseq`), sent while there is no
    /// primary so the candidate can catch up and win: the sync replica never
    /// stands, so without this a backup that missed the last entries the
    /// sync holds could never be elected.
    Catchup {
        first_gseq: u64,
        records: Vec<Vec<u8>>,
        last_gseq: u64,
        last_epoch: u64,
    },
}

/// The kind byte of a datagram header. This enum is the one place the
/// numbers are defined: they are part of the wire format
/// (`docs/FORMATS.md`), so a number is never changed or reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageKind {
    Append = 1,
    Heartbeat = 2,
    Ack = 3,
    Nak = 4,
    VoteRequest = 5,
    VoteReply = 6,
    PreVoteRequest = 7,
    PreVoteReply = 8,
    Catchup = 9,
}

impl MessageKind {
    /// Every kind, in the order of their numbers.
    pub const ALL: [MessageKind; 9] = [
        MessageKind::Append,
        MessageKind::Heartbeat,
        MessageKind::Ack,
        MessageKind::Nak,
        MessageKind::VoteRequest,
        MessageKind::VoteReply,
        MessageKind::PreVoteRequest,
        MessageKind::PreVoteReply,
        MessageKind::Catchup,
    ];

    /// A stable lowercase label (for logs and counters).
    pub fn name(self) -> &'static str {
        match self {
            MessageKind::Append => "append",
            MessageKind::Heartbeat => "heartbeat",
            MessageKind::Ack => "ack",
            MessageKind::Nak => "nak",
            MessageKind::VoteRequest => "vote_request",
            MessageKind::VoteReply => "vote_reply",
            MessageKind::PreVoteRequest => "pre_vote_request",
            MessageKind::PreVoteReply => "pre_vote_reply",
            MessageKind::Catchup => "catchup",
        }
    }
}

impl From<MessageKind> for u8 {
    fn from(kind: MessageKind) -> u8 {
        kind as u8
    }
}

impl TryFrom<u8> for MessageKind {
    type Error = WireError;

    /// The kind a header byte names; the byte comes from the network, so an
    /// unknown number is an error, never a panic.
    fn try_from(byte: u8) -> Result<MessageKind, WireError> {
        MessageKind::ALL
            .into_iter()
            .find(|&kind| u8::from(kind) == byte)
            .ok_or(WireError::UnknownKind(byte))
    }
}

impl Message {
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Append { .. } => MessageKind::Append,
            Message::Heartbeat { .. } => MessageKind::Heartbeat,
            Message::Ack { .. } => MessageKind::Ack,
            Message::Nak { .. } => MessageKind::Nak,
            Message::VoteRequest { .. } => MessageKind::VoteRequest,
            Message::VoteReply { .. } => MessageKind::VoteReply,
            Message::PreVoteRequest { .. } => MessageKind::PreVoteRequest,
            Message::PreVoteReply { .. } => MessageKind::PreVoteReply,
            Message::Catchup { .. } => MessageKind::Catchup,
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind().name()
    }
}

/// A datagram: who sent it to whom, in which epoch, and the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub cluster_id: u32,
    pub sender: NodeId,
    /// The replica it is meant for, or [`RECEIVER_ALL`].
    pub receiver: NodeId,
    pub epoch: u64,
    pub incarnation: u64,
    pub packet_seq: u64,
    pub commit_gseq: u64,
    pub message: Message,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("datagram of {0} bytes is shorter than a header")]
    Truncated(usize),
    #[error("datagram of {0} bytes is larger than any we send")]
    TooLarge(usize),
    #[error("not a vendledger datagram (bad magic)")]
    BadMagic,
    #[error("unsupported wire version {0}")]
    BadVersion(u8),
    #[error("datagram for cluster {0}, not ours")]
    ForeignCluster(u32),
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// `sender` is what the header claims; it is not authenticated, but
    /// a replica whose cluster key differs shows up under its own number.
    #[error(
        "authentication failed (forged, corrupted or wrong cluster key); claims sender {sender}"
    )]
    Authentication { sender: NodeId },
    #[error("malformed body: {0}")]
    Malformed(String),
}

impl WireError {
    /// A stable label for counters.
    pub fn label(&self) -> &'static str {
        match self {
            WireError::Truncated(_) | WireError::TooLarge(_) => "bad_size",
            WireError::BadMagic | WireError::BadVersion(_) | WireError::UnknownKind(_) => {
                "bad_header"
            }
            WireError::ForeignCluster(_) => "foreign_cluster",
            WireError::Authentication { .. } => "unauthenticated",
            WireError::Malformed(_) => "malformed",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct HashBody {
    tip_gseq: u64,
    #[serde(with = "serde_bytes")]
    tip_hash: Hash32,
}

#[derive(Serialize, Deserialize)]
struct CatchupBody<'a> {
    #[serde(borrow)]
    records: Vec<&'a serde_bytes::Bytes>,
    last_gseq: u64,
    last_epoch: u64,
}

#[derive(Serialize, Deserialize)]
struct NakBody {
    from_gseq: u64,
    to_gseq: u64,
}

#[derive(Serialize, Deserialize)]
struct VoteRequestBody {
    last_gseq: u64,
    last_epoch: u64,
}

#[derive(Serialize, Deserialize)]
struct VoteReplyBody {
    granted: bool,
    /// The candidate the reply answers.
    candidate: NodeId,
    /// The epoch it answers (for a pre-vote: the proposed epoch).
    epoch: u64,
}

/// A message as it goes on the wire: the header's `first_gseq` and
/// `count` fields and the MessagePack body that is sealed after the header.
/// Messages without records put their main gseq in `first_gseq`, so the
/// header alone says what a datagram is about (handy in packet captures).
struct EncodedBody {
    first_gseq: u64,
    count: u16,
    plaintext: Vec<u8>,
}

impl EncodedBody {
    fn of(message: &Message) -> EncodedBody {
        match message {
            Message::Append {
                first_gseq,
                records,
            } => EncodedBody::with_records(*first_gseq, records, &as_byte_slices(records)),
            Message::Catchup {
                first_gseq,
                records,
                last_gseq,
                last_epoch,
            } => EncodedBody::with_records(
                *first_gseq,
                records,
                &CatchupBody {
                    records: as_byte_slices(records),
                    last_gseq: *last_gseq,
                    last_epoch: *last_epoch,
                },
            ),
            Message::Heartbeat { tip_gseq, tip_hash } | Message::Ack { tip_gseq, tip_hash } => {
                let body = HashBody {
                    tip_gseq: *tip_gseq,
                    tip_hash: *tip_hash,
                };
                EncodedBody::without_records(*tip_gseq, &body)
            }
            Message::Nak { from_gseq, to_gseq } => {
                let body = NakBody {
                    from_gseq: *from_gseq,
                    to_gseq: *to_gseq,
                };
                EncodedBody::without_records(*from_gseq, &body)
            }
            Message::VoteRequest {
                last_gseq,
                last_epoch,
            }
            | Message::PreVoteRequest {
                last_gseq,
                last_epoch,
            } => {
                let body = VoteRequestBody {
                    last_gseq: *last_gseq,
                    last_epoch: *last_epoch,
                };
                EncodedBody::without_records(*last_gseq, &body)
            }
            Message::VoteReply {
                granted,
                candidate,
                epoch,
            }
            | Message::PreVoteReply {
                granted,
                candidate,
                proposed_epoch: epoch,
            } => {
                let body = VoteReplyBody {
                    granted: *granted,
                    candidate: *candidate,
                    epoch: *epoch,
                };
                EncodedBody::without_records(0, &body)
            }
        }
    }

    fn with_records<T: Serialize>(first_gseq: u64, records: &[Vec<u8>], body: &T) -> EncodedBody {
        EncodedBody {
            first_gseq,
            count: u16::try_from(records.len()).expect("packing bounds records per datagram"),
            plaintext: to_msgpack(body),
        }
    }

    fn without_records<T: Serialize>(first_gseq: u64, body: &T) -> EncodedBody {
        EncodedBody {
            first_gseq,
            count: 0,
            plaintext: to_msgpack(body),
        }
    }
}

/// Records as MessagePack `bin` values (not arrays of integers).
fn as_byte_slices(records: &[Vec<u8>]) -> Vec<&serde_bytes::Bytes> {
    records.iter().map(|r| serde_bytes::Bytes::new(r)).collect()
}

/// Seals and opens datagrams for one cluster.
pub struct DatagramCodec {
    cluster_id: u32,
    sealer: Sealer,
}

impl DatagramCodec {
    pub fn new(cluster_id: u32, cluster_key: &SecretKey) -> DatagramCodec {
        DatagramCodec {
            cluster_id,
            sealer: Sealer::new(&cluster_key.derive(DATAGRAM_KEY_CONTEXT)),
        }
    }

    pub fn cluster_id(&self) -> u32 {
        self.cluster_id
    }

    /// The datagram's bytes: the plaintext header, then the message body
    /// sealed with the header as associated data.
    pub fn encode(&self, datagram: &Datagram) -> Vec<u8> {
        let body = EncodedBody::of(&datagram.message);
        let mut bytes = self.encode_header(datagram, &body);
        let sealed = self.sealer.seal(&bytes, &body.plaintext);
        bytes.extend_from_slice(&sealed);
        bytes
    }

    /// The header stays plaintext so a receiver can drop a foreign or
    /// malformed datagram before decrypting anything; sealing it as
    /// associated data means nobody without the key can change a field.
    fn encode_header(&self, datagram: &Datagram, body: &EncodedBody) -> Vec<u8> {
        let capacity = HEADER_BYTES + ledger::crypto::SEAL_OVERHEAD_BYTES + body.plaintext.len();
        let mut header = Vec::with_capacity(capacity);
        header.extend_from_slice(&MAGIC);
        header.push(WIRE_VERSION);
        header.push(datagram.message.kind().into());
        header.extend_from_slice(&self.cluster_id.to_be_bytes());
        header.push(datagram.sender);
        header.push(datagram.receiver);
        header.extend_from_slice(&datagram.epoch.to_be_bytes());
        header.extend_from_slice(&datagram.incarnation.to_be_bytes());
        header.extend_from_slice(&datagram.packet_seq.to_be_bytes());
        header.extend_from_slice(&body.first_gseq.to_be_bytes());
        header.extend_from_slice(&body.count.to_be_bytes());
        header.extend_from_slice(&datagram.commit_gseq.to_be_bytes());
        debug_assert_eq!(header.len(), HEADER_BYTES);
        header
    }

    /// Opens and decodes a datagram. Never panics on any input.
    pub fn decode(&self, bytes: &[u8]) -> Result<Datagram, WireError> {
        if bytes.len() > PAYLOAD_BYTES_MAX {
            return Err(WireError::TooLarge(bytes.len()));
        }
        let (header, sealed) = bytes
            .split_at_checked(HEADER_BYTES)
            .ok_or(WireError::Truncated(bytes.len()))?;
        let mut reader = HeaderReader(header);
        if reader.take::<4>() != MAGIC {
            return Err(WireError::BadMagic);
        }
        let [version] = reader.take::<1>();
        if version != WIRE_VERSION {
            return Err(WireError::BadVersion(version));
        }
        let [kind] = reader.take::<1>();
        let cluster_id = u32::from_be_bytes(reader.take());
        if cluster_id != self.cluster_id {
            return Err(WireError::ForeignCluster(cluster_id));
        }
        let [sender] = reader.take::<1>();
        let [receiver] = reader.take::<1>();
        let epoch = u64::from_be_bytes(reader.take());
        let incarnation = u64::from_be_bytes(reader.take());
        let packet_seq = u64::from_be_bytes(reader.take());
        let first_gseq = u64::from_be_bytes(reader.take());
        let count = usize::from(u16::from_be_bytes(reader.take()));
        let commit_gseq = u64::from_be_bytes(reader.take());
        let body = self
            .sealer
            .open(header, sealed)
            .map_err(|_| WireError::Authentication { sender })?;
        // The kind is checked only after authentication, so a forged
        // datagram is counted as unauthenticated whatever its kind byte.
        let message = decode_body(MessageKind::try_from(kind)?, first_gseq, count, &body)?;
        Ok(Datagram {
            cluster_id,
            sender,
            receiver,
            epoch,
            incarnation,
            packet_seq,
            commit_gseq,
            message,
        })
    }
}

/// The kind and record count a datagram's header claims, read without
/// opening it: for the loss drill's statistics of what it dropped, never
/// for deciding anything (the header is not authenticated until opened).
pub fn peek_kind_and_count(bytes: &[u8]) -> Option<(MessageKind, u16)> {
    const KIND_AT: usize = 5;
    const COUNT_AT: usize = HEADER_BYTES - 8 - 2;
    let header = bytes.get(..HEADER_BYTES)?;
    if header[..4] != MAGIC {
        return None;
    }
    let kind = MessageKind::try_from(header[KIND_AT]).ok()?;
    let count = u16::from_be_bytes([header[COUNT_AT], header[COUNT_AT + 1]]);
    Some((kind, count))
}

fn to_msgpack<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec(value).expect("encoding to a Vec cannot fail")
}

fn from_msgpack<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, WireError> {
    rmp_serde::from_slice(body).map_err(|e| WireError::Malformed(e.to_string()))
}

fn check_records(first_gseq: u64, count: usize, found: usize) -> Result<(), WireError> {
    if found != count || count == 0 || count > RECORDS_PER_DATAGRAM_MAX {
        return Err(WireError::Malformed(format!(
            "header says {count} records, body has {found}"
        )));
    }
    if first_gseq == 0 || first_gseq.checked_add(count as u64).is_none() {
        return Err(WireError::Malformed("records out of gseq range".into()));
    }
    Ok(())
}

/// Decodes the opened body of a datagram whose header says `kind`. The
/// header's `first_gseq` and `count` must agree with the body, so a record
/// count cannot be smuggled past the packing bounds.
fn decode_body(
    kind: MessageKind,
    first_gseq: u64,
    count: usize,
    body: &[u8],
) -> Result<Message, WireError> {
    Ok(match kind {
        MessageKind::Append => {
            let records: Vec<serde_bytes::ByteBuf> = from_msgpack(body)?;
            check_records(first_gseq, count, records.len())?;
            Message::Append {
                first_gseq,
                records: records
                    .into_iter()
                    .map(serde_bytes::ByteBuf::into_vec)
                    .collect(),
            }
        }
        MessageKind::Catchup => decode_catchup(first_gseq, count, body)?,
        MessageKind::Heartbeat => {
            let HashBody { tip_gseq, tip_hash } = from_msgpack(body)?;
            Message::Heartbeat { tip_gseq, tip_hash }
        }
        MessageKind::Ack => {
            let HashBody { tip_gseq, tip_hash } = from_msgpack(body)?;
            Message::Ack { tip_gseq, tip_hash }
        }
        MessageKind::Nak => {
            let NakBody { from_gseq, to_gseq } = from_msgpack(body)?;
            if from_gseq == 0 || to_gseq < from_gseq {
                return Err(WireError::Malformed("empty or reversed NAK range".into()));
            }
            Message::Nak { from_gseq, to_gseq }
        }
        MessageKind::VoteRequest => {
            let VoteRequestBody {
                last_gseq,
                last_epoch,
            } = from_msgpack(body)?;
            Message::VoteRequest {
                last_gseq,
                last_epoch,
            }
        }
        MessageKind::PreVoteRequest => {
            let VoteRequestBody {
                last_gseq,
                last_epoch,
            } = from_msgpack(body)?;
            Message::PreVoteRequest {
                last_gseq,
                last_epoch,
            }
        }
        MessageKind::VoteReply => {
            let VoteReplyBody {
                granted,
                candidate,
                epoch,
            } = from_msgpack(body)?;
            Message::VoteReply {
                granted,
                candidate,
                epoch,
            }
        }
        MessageKind::PreVoteReply => {
            let VoteReplyBody {
                granted,
                candidate,
                epoch,
            } = from_msgpack(body)?;
            Message::PreVoteReply {
                granted,
                candidate,
                proposed_epoch: epoch,
            }
        }
    })
}

fn decode_catchup(first_gseq: u64, count: usize, body: &[u8]) -> Result<Message, WireError> {
    let CatchupBody {
        records,
        last_gseq,
        last_epoch,
    } = from_msgpack(body)?;
    check_records(first_gseq, count, records.len())?;
    Ok(Message::Catchup {
        first_gseq,
        records: records.into_iter().map(|r| r.to_vec()).collect(),
        last_gseq,
        last_epoch,
    })
}

struct HeaderReader<'a>(&'a [u8]);

impl HeaderReader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().expect("the header length was checked")
    }
}

/// Bytes the datagram adds around an Append body's records.
const SEAL_AND_HEADER_BYTES: usize = HEADER_BYTES + ledger::crypto::SEAL_OVERHEAD_BYTES;
/// MessagePack framing: array headers and the catch-up fields (≤ 32), and a
/// bin header per record (≤ 5).
const ARRAY_HEADER_BYTES: usize = 32;
const BIN_HEADER_BYTES: usize = 5;

/// Groups consecutive records into Append messages that fit `payload_bytes`.
/// Every record must fit alone (the store bounds record size so it does).
pub fn pack_records(first_gseq: u64, records: Vec<Vec<u8>>, payload_bytes: usize) -> Vec<Message> {
    let budget = payload_bytes.saturating_sub(SEAL_AND_HEADER_BYTES + ARRAY_HEADER_BYTES);
    let mut out = Vec::new();
    let mut current: Vec<Vec<u8>> = Vec::new();
    let mut current_first = first_gseq;
    let mut used = 0;
    for (offset, record) in records.into_iter().enumerate() {
        let cost = record.len() + BIN_HEADER_BYTES;
        assert!(cost <= budget, "a log record must fit one datagram");
        if !current.is_empty()
            && (used + cost > budget || current.len() == RECORDS_PER_DATAGRAM_MAX)
        {
            out.push(Message::Append {
                first_gseq: current_first,
                records: std::mem::take(&mut current),
            });
            used = 0;
        }
        if current.is_empty() {
            current_first = first_gseq + offset as u64;
        }
        used += cost;
        current.push(record);
    }
    if !current.is_empty() {
        out.push(Message::Append {
            first_gseq: current_first,
            records: current,
        });
    }
    out
}

/// The datagrams for records `first_gseq..`: Append messages, or Catchup
/// messages carrying the end of the sender's log when `catchup` is set.
pub fn replication_messages(
    first_gseq: u64,
    records: Vec<Vec<u8>>,
    payload_bytes: usize,
    catchup: Option<(u64, u64)>,
) -> Vec<Message> {
    let appends = pack_records(first_gseq, records, payload_bytes);
    let Some((last_gseq, last_epoch)) = catchup else {
        return appends;
    };
    appends
        .into_iter()
        .map(|message| match message {
            Message::Append {
                first_gseq,
                records,
            } => Message::Catchup {
                first_gseq,
                records,
                last_gseq,
                last_epoch,
            },
            other => other,
        })
        .collect()
}

/// Width of the window of recent packet numbers remembered per sender.
pub const REPLAY_WINDOW_PACKETS: u64 = 1_024;

/// Drops replayed datagrams: per sender, the newest incarnation seen and a
/// sliding window of recent packet numbers (like IPsec's anti-replay).
#[derive(Debug, Default)]
pub struct ReplayGuard {
    senders: std::collections::HashMap<NodeId, SenderWindow>,
}

#[derive(Debug)]
struct SenderWindow {
    incarnation: u64,
    highest: u64,
    /// Bit i set: packet `highest - i` was seen.
    seen: [u64; (REPLAY_WINDOW_PACKETS / 64) as usize],
}

impl ReplayGuard {
    /// `true` when the datagram is new and should be processed.
    pub fn admit(&mut self, sender: NodeId, incarnation: u64, packet_seq: u64) -> bool {
        let window = self.senders.entry(sender).or_insert(SenderWindow {
            incarnation,
            highest: 0,
            seen: [0; (REPLAY_WINDOW_PACKETS / 64) as usize],
        });
        if incarnation < window.incarnation {
            return false;
        }
        if incarnation > window.incarnation {
            *window = SenderWindow {
                incarnation,
                highest: 0,
                seen: [0; (REPLAY_WINDOW_PACKETS / 64) as usize],
            };
        }
        if packet_seq > window.highest {
            window.shift(packet_seq - window.highest);
            window.highest = packet_seq;
            window.set(0);
            return true;
        }
        let age = window.highest - packet_seq;
        if age >= REPLAY_WINDOW_PACKETS || window.get(age) {
            return false;
        }
        window.set(age);
        true
    }
}

impl SenderWindow {
    fn shift(&mut self, by: u64) {
        if by >= REPLAY_WINDOW_PACKETS {
            self.seen = [0; (REPLAY_WINDOW_PACKETS / 64) as usize];
            return;
        }
        let words = (by / 64) as usize;
        let bits = by % 64;
        let len = self.seen.len();
        for i in (0..len).rev() {
            let source = i.checked_sub(words);
            let high = source.map_or(0, |s| self.seen[s] << bits);
            let carry = match (bits, source.and_then(|s| s.checked_sub(1))) {
                (0, _) | (_, None) => 0,
                (_, Some(s)) => self.seen[s] >> (64 - bits),
            };
            self.seen[i] = high | carry;
        }
    }

    fn get(&self, age: u64) -> bool {
        self.seen[(age / 64) as usize] & (1 << (age % 64)) != 0
    }

    fn set(&mut self, age: u64) {
        self.seen[(age / 64) as usize] |= 1 << (age % 64);
    }
}

#[cfg(test)]
mod tests;

use super::*;
use proptest::prelude::*;

fn codec() -> DatagramCodec {
    DatagramCodec::new(7, &SecretKey::from_bytes([9; 32]))
}

fn datagram(message: Message) -> Datagram {
    Datagram {
        cluster_id: 7,
        sender: 2,
        receiver: 1,
        epoch: 5,
        incarnation: 1_700_000_000_000,
        packet_seq: 42,
        commit_gseq: 99,
        message,
    }
}

fn every_message() -> Vec<Message> {
    vec![
        Message::Append {
            first_gseq: 100,
            records: vec![vec![1, 2, 3], vec![], vec![7; 900]],
        },
        Message::Heartbeat {
            tip_gseq: 12,
            tip_hash: [3; 32],
        },
        Message::Ack {
            tip_gseq: 11,
            tip_hash: [4; 32],
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
            candidate: 1,
            epoch: 5,
        },
        Message::PreVoteRequest {
            last_gseq: 78,
            last_epoch: 5,
        },
        Message::PreVoteReply {
            granted: false,
            candidate: 1,
            proposed_epoch: 6,
        },
        Message::Catchup {
            first_gseq: 40,
            records: vec![vec![5; 300], vec![6]],
            last_gseq: 90,
            last_epoch: 3,
        },
    ]
}

#[test]
fn every_message_round_trips() {
    let codec = codec();
    for message in every_message() {
        let original = datagram(message);
        let bytes = codec.encode(&original);
        assert_eq!(codec.decode(&bytes).unwrap(), original);
    }
}

#[test]
fn forged_corrupted_truncated_and_foreign_datagrams_are_refused() {
    let codec = codec();
    let bytes = codec.encode(&datagram(Message::Heartbeat {
        tip_gseq: 1,
        tip_hash: [0; 32],
    }));
    for i in 0..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[i] ^= 0x10;
        assert!(
            codec.decode(&flipped).is_err(),
            "flipping byte {i} went unnoticed"
        );
    }
    for cut in 0..bytes.len() {
        assert!(codec.decode(&bytes[..cut]).is_err());
    }
    let other_key = DatagramCodec::new(7, &SecretKey::from_bytes([8; 32]));
    assert_eq!(
        other_key.decode(&bytes),
        Err(WireError::Authentication { sender: 2 })
    );
    let other_cluster = DatagramCodec::new(8, &SecretKey::from_bytes([9; 32]));
    assert_eq!(
        other_cluster.decode(&bytes),
        Err(WireError::ForeignCluster(7))
    );
    // A forger without the key cannot make the header say something else:
    // the header is authenticated data.
    let mut raised_epoch = bytes.clone();
    raised_epoch[12..20].copy_from_slice(&99u64.to_be_bytes());
    assert_eq!(
        codec.decode(&raised_epoch),
        Err(WireError::Authentication { sender: 2 })
    );
}

#[test]
fn packing_respects_the_payload_budget_and_keeps_order() {
    let codec = codec();
    let records: Vec<Vec<u8>> = (0..300u32)
        .map(|i| vec![i as u8; 100 + (i as usize * 7) % 1_100])
        .collect();
    let messages = pack_records(1_000, records.clone(), PAYLOAD_BYTES_DEFAULT);
    let mut next = 1_000;
    let mut unpacked = Vec::new();
    for message in messages {
        let bytes = codec.encode(&datagram(message.clone()));
        assert!(
            bytes.len() <= PAYLOAD_BYTES_DEFAULT,
            "{} bytes",
            bytes.len()
        );
        let Message::Append {
            first_gseq,
            records,
        } = message
        else {
            unreachable!()
        };
        assert_eq!(first_gseq, next);
        next += records.len() as u64;
        unpacked.extend(records);
    }
    assert_eq!(unpacked, records);
    // The largest record the store accepts fits alone.
    let largest = vec![0u8; ledger::store::record::RECORD_BYTES_MAX];
    let message = pack_records(1, vec![largest], PAYLOAD_BYTES_DEFAULT).remove(0);
    assert!(codec.encode(&datagram(message)).len() <= PAYLOAD_BYTES_DEFAULT);
}

#[test]
fn replay_guard_drops_repeats_and_old_incarnations() {
    let mut guard = ReplayGuard::default();
    assert!(guard.admit(1, 10, 1));
    assert!(!guard.admit(1, 10, 1), "exact repeat");
    assert!(guard.admit(1, 10, 3));
    assert!(guard.admit(1, 10, 2), "late but new");
    assert!(!guard.admit(1, 10, 2));
    assert!(guard.admit(1, 10, 2_000));
    assert!(!guard.admit(1, 10, 3), "older than the window");
    assert!(guard.admit(1, 10, 1_990));
    assert!(!guard.admit(1, 10, 1_990));
    assert!(guard.admit(2, 10, 3), "senders are independent");
    assert!(guard.admit(1, 11, 1), "a restarted sender starts over");
    assert!(
        !guard.admit(1, 10, 2_001),
        "the previous incarnation is over"
    );
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2_000)) {
        let _ = codec().decode(&bytes);
    }

    #[test]
    fn decoding_mutated_valid_datagrams_never_panics(index in 0usize..9, at in any::<prop::sample::Index>(), value in any::<u8>()) {
        let codec = codec();
        let mut bytes = codec.encode(&datagram(every_message().swap_remove(index)));
        let at = at.index(bytes.len());
        bytes[at] = value;
        let _ = codec.decode(&bytes);
    }

    #[test]
    fn replay_guard_admits_each_packet_at_most_once(packets in prop::collection::vec(0u64..3_000, 1..400)) {
        let mut guard = ReplayGuard::default();
        let mut admitted = std::collections::HashSet::new();
        for packet in packets {
            if guard.admit(3, 1, packet) {
                prop_assert!(admitted.insert(packet), "packet {packet} admitted twice");
            }
        }
    }
}

#[test]
fn message_kinds_round_trip_through_their_byte() {
    for kind in MessageKind::ALL {
        assert_eq!(MessageKind::try_from(u8::from(kind)), Ok(kind));
    }
    for unknown in [0, 10, 255] {
        assert_eq!(
            MessageKind::try_from(unknown),
            Err(WireError::UnknownKind(unknown))
        );
    }
    let kinds: Vec<MessageKind> = every_message().iter().map(Message::kind).collect();
    assert_eq!(kinds, MessageKind::ALL, "ALL lists every kind, in order");
}

#[test]
fn an_authentic_datagram_of_an_unknown_kind_is_refused() {
    let codec = codec();
    let vote = Message::VoteReply {
        granted: true,
        candidate: 1,
        epoch: 5,
    };
    let mut header = codec.encode(&datagram(vote));
    header.truncate(HEADER_BYTES);
    header[5] = 10;
    let body = to_msgpack(&VoteReplyBody {
        granted: true,
        candidate: 1,
        epoch: 5,
    });
    let sealed = codec.sealer.seal(&header, &body);
    let bytes = [header, sealed].concat();
    assert_eq!(codec.decode(&bytes), Err(WireError::UnknownKind(10)));
}

/// A granted vote captured on its way to one candidate cannot be sent on
/// to another: the receiver is authenticated with the header, so the
/// re-addressed copy fails to open, and the copy as it was still names its
/// receiver and the candidate it answers.
#[test]
fn a_captured_vote_cannot_be_readdressed_to_another_candidate() {
    let codec = codec();
    let vote = Message::VoteReply {
        granted: true,
        candidate: 1,
        epoch: 5,
    };
    let captured = codec.encode(&datagram(vote.clone()));
    let opened = codec.decode(&captured).unwrap();
    assert_eq!((opened.receiver, opened.message), (1, vote));
    let mut readdressed = captured.clone();
    readdressed[11] = 3;
    assert_eq!(
        codec.decode(&readdressed),
        Err(WireError::Authentication { sender: 2 })
    );
    let mut to_everyone = captured;
    to_everyone[11] = RECEIVER_ALL;
    assert_eq!(
        codec.decode(&to_everyone),
        Err(WireError::Authentication { sender: 2 })
    );
}

/// The loss drill counts what it drops by the header's kind and count,
/// without opening the datagram; anything else is not a datagram of ours.
#[test]
fn the_drill_peeks_at_the_kind_and_record_count_of_a_header() {
    let codec = codec();
    for message in every_message() {
        let records = match &message {
            Message::Append { records, .. } | Message::Catchup { records, .. } => records.len(),
            _ => 0,
        };
        let bytes = codec.encode(&datagram(message.clone()));
        assert_eq!(
            peek_kind_and_count(&bytes),
            Some((message.kind(), records as u16)),
            "{message:?}"
        );
    }
    let append = codec.encode(&datagram(every_message().remove(0)));
    assert_eq!(peek_kind_and_count(&append[..HEADER_BYTES - 1]), None);
    let mut foreign = append.clone();
    foreign[0] ^= 1;
    assert_eq!(peek_kind_and_count(&foreign), None);
    let mut unknown = append;
    unknown[5] = 0xEE;
    assert_eq!(peek_kind_and_count(&unknown), None);
}

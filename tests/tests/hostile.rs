//! Hostile input against a real replica: forged, corrupted, truncated,
//! replayed and foreign datagrams, and malformed or unauthenticated machine
//! frames. Each is dropped and counted; nothing is applied; nothing panics.
mod common;

use bytes::{Bytes, BytesMut};
use ledger::crypto::SecretKey;
use link::channel::{Hello, LINK_VERSION, Refusal, RefusalReason, encode_plain};
use link::codec::frame_codec;
use replica::config::LocalClusterPlan;
use replica::transport::TransportKind;
use replica::wire::{Datagram, DatagramCodec, Message};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};
use tokio_util::codec::Encoder;

/// A payload with the link's length prefix, as a machine would send it.
fn encode_frame(payload: &[u8]) -> BytesMut {
    let mut frame = BytesMut::new();
    frame_codec()
        .encode(Bytes::copy_from_slice(payload), &mut frame)
        .expect("a small frame");
    frame
}

fn status(address: &str) -> serde_json::Value {
    let mut response = ureq::get(&format!("http://{address}/api/v1/status"))
        .call()
        .expect("status answers");
    serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap()
}

fn rejected(status: &serde_json::Value, label: &str) -> u64 {
    status["datagrams_rejected"]
        .as_array()
        .unwrap()
        .iter()
        .find(|pair| pair[0] == label)
        .map_or(0, |pair| pair[1].as_u64().unwrap())
}

/// Reads until the peer closes (bounded wait); returns what arrived.
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
        }
    }
    all
}

#[test]
fn a_replica_drops_and_counts_hostile_datagrams_and_frames() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let port = common::base_port();
    let plan = LocalClusterPlan {
        base_port: port,
        host: Ipv4Addr::LOCALHOST,
    };
    let config = plan.config(2, 99, dir, TransportKind::Udp);
    ledger::keys::create_cluster_keys(&config.keys_dir).unwrap();
    let handle = replica::server::start(config.clone()).expect("replica starts");
    let status_address = config.status_listen.to_string();
    let keyring = ledger::keys::Keyring::open(&config.keys_dir).unwrap();
    let cluster_key = keyring.cluster_key().unwrap();
    let before = status(&status_address);

    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = config.replication_listen;
    let genuine = DatagramCodec::new(99, &cluster_key);
    let heartbeat = |packet_seq| Datagram {
        cluster_id: 99,
        sender: 1,
        receiver: replica::wire::RECEIVER_ALL,
        epoch: 1,
        incarnation: 5,
        packet_seq,
        commit_gseq: 0,
        message: Message::Heartbeat {
            tip_gseq: 0,
            tip_hash: [0; 32],
        },
    };
    let valid = genuine.encode(&heartbeat(1));
    socket.send_to(&valid, target).unwrap();
    socket.send_to(&valid, target).unwrap(); // replayed
    let mut corrupted = genuine.encode(&heartbeat(2));
    let last = corrupted.len() - 1;
    corrupted[last] ^= 1;
    socket.send_to(&corrupted, target).unwrap();
    let forged = DatagramCodec::new(99, &SecretKey::from_bytes([1; 32])).encode(&heartbeat(3));
    socket.send_to(&forged, target).unwrap();
    let foreign = DatagramCodec::new(100, &cluster_key).encode(&heartbeat(4));
    socket.send_to(&foreign, target).unwrap();
    socket.send_to(&valid[..20], target).unwrap(); // truncated
    socket.send_to(&[0x55; 200], target).unwrap(); // not ours: bad magic

    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let after = status(&status_address);
        let counted = rejected(&after, "unauthenticated") >= 2
            && rejected(&after, "foreign_cluster") >= 1
            && rejected(&after, "bad_size") >= 1
            && rejected(&after, "bad_header") >= 1
            && after["datagrams_replayed"].as_u64() >= Some(1);
        if counted || Instant::now() > deadline {
            break after;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(rejected(&after, "unauthenticated") >= 2, "{after:#}");
    assert!(rejected(&after, "foreign_cluster") >= 1, "{after:#}");
    assert!(rejected(&after, "bad_size") >= 1, "{after:#}");
    assert!(rejected(&after, "bad_header") >= 1, "{after:#}");
    assert_eq!(after["datagrams_replayed"].as_u64(), Some(1), "{after:#}");
    assert_eq!(after["tip"], before["tip"], "nothing was applied");

    // Machine frames: an oversized length prefix, garbage, an unknown
    // machine, and a hello followed by a forged sealed frame.
    let machine_address = config.machine_listen;
    let mut oversized = TcpStream::connect(machine_address).unwrap();
    oversized.write_all(&u32::MAX.to_be_bytes()).unwrap();
    read_until_closed(&mut oversized);
    let mut garbage = TcpStream::connect(machine_address).unwrap();
    garbage
        .write_all(&encode_frame(b"\xc1\xc1 garbage"))
        .unwrap();
    read_until_closed(&mut garbage);
    let mut stranger = TcpStream::connect(machine_address).unwrap();
    let hello = Hello {
        version: LINK_VERSION,
        machine_id: ledger::MachineId::numbered(77),
        client_nonce: [3; 24],
    };
    stranger
        .write_all(&encode_frame(&encode_plain(&hello)))
        .unwrap();
    // The stranger is told why before the close, in plaintext (a hint: it
    // is not authenticated), and nothing else.
    let answer = read_until_closed(&mut stranger);
    assert_eq!(
        answer,
        encode_frame(&encode_plain(&Refusal::HelloRefused {
            reason: RefusalReason::UnknownMachine
        }))
        .to_vec()
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let after = status(&status_address);
        if after["frames_rejected"].as_u64() >= Some(3) || Instant::now() > deadline {
            break after;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(after["frames_rejected"].as_u64(), Some(3), "{after:#}");
    assert_eq!(after["events_submitted"], 0);
    assert_eq!(after["tip"], before["tip"]);
    handle.shutdown();
}

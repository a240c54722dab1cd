//! What a replica and a machine do when something they start with is
//! missing or wrong.
//!
//! Keys are made only on an operator's request (`vendctl keys`, or
//! `vendctl cluster init`, which runs the same code). A replica and a
//! machine refuse to start without theirs, naming the missing file and the
//! command that makes it, and create nothing; a replica whose cluster key
//! is not its peers' says so; one unreadable machine key file costs only
//! that machine. And a replica that cannot start says why once, not once
//! per layer of error it passed through.
//!
//! The keys are set up with the real `vendctl` (run `cargo build
//! --workspace` first).

mod common;

use bytes::{Bytes, BytesMut};
use common::vendctl;
use ledger::MachineId;
use ledger::admin::PasswordParams;
use ledger::crypto::SecretKey;
use link::channel::{Hello, HelloReply, LINK_VERSION, decode_plain, encode_plain};
use link::codec::frame_codec;
use replica::config::{LocalClusterPlan, ReplicaConfig};
use replica::transport::TransportKind;
use replica::wire::{Datagram, DatagramCodec, Message};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::codec::Encoder;
use vm_iced::config::MachineConfig;
use vm_iced::machine::{Machine, system_clock};

/// Ports for one test: a block of free ones (`common::base_port` checks
/// them, so a port the system handed out to some other connection is never
/// reused here).
fn plan() -> LocalClusterPlan {
    LocalClusterPlan {
        base_port: common::base_port(),
        host: Ipv4Addr::LOCALHOST,
    }
}

fn run_vendctl(args: &[&str]) {
    let out = vendctl(args);
    assert!(
        out.status.success(),
        "vendctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file under `dir`, relative and sorted (empty if `dir` is absent).
fn files_under(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    files.sort();
    files
}

fn start_error(config: &ReplicaConfig) -> String {
    match replica::server::start(config.clone()) {
        Ok(handle) => {
            handle.shutdown();
            panic!(
                "the replica started with {:?}",
                files_under(&config.keys_dir)
            );
        }
        Err(error) => error.to_string(),
    }
}

fn status(address: &str) -> serde_json::Value {
    let mut response = ureq::get(&format!("http://{address}/api/v1/status"))
        .call()
        .expect("status answers");
    serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap()
}

#[test]
fn a_replica_without_its_keys_refuses_to_start_and_creates_none() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let config = plan().config(1, 5, dir, TransportKind::Udp);
    let keys = config.keys_dir.to_str().unwrap().to_owned();

    let error = start_error(&config);
    assert!(error.contains("store.key is missing"), "{error}");
    assert!(
        error.contains(&format!("vendctl keys init --dir {keys}")),
        "{error}"
    );
    assert!(!config.keys_dir.exists(), "no key directory was made");

    // A store key without the cluster key: a replica that made its own
    // would run alone, refusing every peer's datagram.
    run_vendctl(&["keys", "init", "--dir", &keys]);
    std::fs::remove_file(config.keys_dir.join("cluster.key")).unwrap();
    let error = start_error(&config);
    assert!(error.contains("cluster.key is missing"), "{error}");
    assert!(error.contains("vendctl keys init --dir"), "{error}");
    assert_eq!(files_under(&config.keys_dir), ["store.key"]);

    // A log sealed with a store key that is gone: a new key would only be
    // refused as the wrong one, and the log's true key would be harder to
    // tell apart from the stranger.
    run_vendctl(&["keys", "init", "--dir", &keys]);
    replica::server::start(config.clone())
        .expect("the replica starts with its keys")
        .shutdown();
    std::fs::remove_file(config.keys_dir.join("store.key")).unwrap();
    let error = start_error(&config);
    assert!(error.contains("store.key is missing"), "{error}");
    assert!(!error.contains("wrong key"), "{error}");
    assert_eq!(files_under(&config.keys_dir), ["cluster.key"]);
}

/// A payload with the link's length prefix.
fn frame(payload: &[u8]) -> BytesMut {
    let mut frame = BytesMut::new();
    frame_codec()
        .encode(Bytes::copy_from_slice(payload), &mut frame)
        .unwrap();
    frame
}

/// Says hello as `machine` and returns the payload of the first frame
/// back, if one arrives before the connection closes.
fn hello(address: std::net::SocketAddrV4, machine: &str) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(address).unwrap();
    let hello = Hello {
        version: LINK_VERSION,
        machine_id: MachineId::new(machine).unwrap(),
        client_nonce: [7; 24],
    };
    stream.write_all(&frame(&encode_plain(&hello))).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).ok()?;
    let mut payload = vec![0u8; u32::from_be_bytes(length) as usize];
    stream.read_exact(&mut payload).ok()?;
    Some(payload)
}

#[test]
fn one_unreadable_machine_key_file_costs_only_that_machine() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let config = plan().config(1, 6, dir, TransportKind::Udp);
    let keys = config.keys_dir.to_str().unwrap().to_owned();
    run_vendctl(&["keys", "init", "--dir", &keys]);
    run_vendctl(&["keys", "machine", "--dir", &keys, "--machines", "2"]);
    std::fs::write(config.keys_dir.join("machines/VM-002.key"), "garbage\n").unwrap();

    let handle = replica::server::start(config.clone()).expect("the replica starts");
    let reply = hello(config.machine_listen, "VM-001").expect("VM-001 is answered");
    let reply: HelloReply = decode_plain(&reply).expect("a HelloReply");
    assert_eq!(reply.version, LINK_VERSION);
    handle.shutdown();
}

#[test]
fn a_machine_never_makes_its_own_key() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let keys = dir.join("keys");
    let id = MachineId::numbered(1);
    let config = |keys: &Path, password: Option<&str>| {
        let mut config = MachineConfig::new(id.clone(), dir.join("vm"), keys.to_path_buf());
        config.initial_admin_password = password.map(str::to_owned);
        config
    };
    let open = |config: &MachineConfig| {
        Machine::open(config, system_clock(), PasswordParams::Light).map(drop)
    };

    // Installing needs a provisioned key too: a key the machine made for
    // itself would be unknown to the replicas.
    let error = open(&config(&keys, Some("vend-admin-1!")))
        .unwrap_err()
        .to_string();
    assert!(error.contains("store.key is missing"), "{error}");
    assert!(files_under(&keys).is_empty(), "{:?}", files_under(&keys));

    run_vendctl(&[
        "keys",
        "machine",
        "--dir",
        keys.to_str().unwrap(),
        "--id",
        "VM-001",
    ]);
    open(&config(&keys, Some("vend-admin-1!"))).expect("installs with its key");
    open(&config(&keys, None)).expect("reopens");

    // The ledger exists and the key file is gone.
    std::fs::remove_file(keys.join("machines/VM-001.key")).unwrap();
    let error = open(&config(&keys, None)).unwrap_err().to_string();
    assert!(error.contains("machines/VM-001.key is missing"), "{error}");
    assert!(
        error.contains("vendctl keys machine --dir") && error.contains("--id VM-001"),
        "{error}"
    );
    assert_eq!(files_under(&keys), ["store.key"]);

    // A wrong --keys (another fleet's key directory) gets no key written.
    let other = dir.join("other-keys");
    run_vendctl(&["keys", "init", "--dir", other.to_str().unwrap()]);
    let before = files_under(&other);
    let error = open(&config(&other, Some("vend-admin-1!")))
        .unwrap_err()
        .to_string();
    assert!(error.contains("VM-001.key is missing"), "{error}");
    assert_eq!(files_under(&other), before);
}

#[test]
fn a_machine_that_cannot_start_leaves_nothing_behind_and_names_who_runs_it() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let keys = dir.join("keys");
    run_vendctl(&[
        "keys",
        "machine",
        "--dir",
        keys.to_str().unwrap(),
        "--id",
        "VM-001",
    ]);
    let data = dir.join("vm");
    let config = |password: Option<&str>| {
        let mut config = MachineConfig::new(MachineId::numbered(1), data.clone(), keys.clone());
        config.initial_admin_password = password.map(str::to_owned);
        config
    };
    let open =
        |config: &MachineConfig| Machine::open(config, system_clock(), PasswordParams::Light);

    // No data directory and no password: said as such, nothing created.
    let error = open(&config(None)).err().unwrap().to_string();
    assert!(
        error.contains("the data directory") && error.contains("does not exist"),
        "{error}"
    );
    assert!(!data.exists());

    // A weak password names every rule it breaks and leaves no directory.
    let error = open(&config(Some("short"))).err().unwrap().to_string();
    assert!(
        error.contains("at least 8 characters")
            && error.contains("a digit")
            && error.contains("a special character"),
        "{error}"
    );
    assert!(!data.exists(), "{:?}", files_under(&data));

    // A second instance on the same machine says who runs it.
    let running = open(&config(Some("vend-admin-1!"))).expect("installs");
    let error = open(&config(None)).err().unwrap().to_string();
    assert_eq!(
        error,
        format!("VM-001 is already running (pid {})", std::process::id())
    );
    drop(running);
    open(&config(None)).expect("reopens once the first has stopped");
}

#[test]
fn a_replica_with_another_cluster_key_says_so() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let mut config = plan().config(2, 7, dir, TransportKind::Udp);
    // Quiet elections: this replica only listens.
    config.election_timeout_min_ms = 60_000;
    config.election_timeout_max_ms = 60_001;
    let keys = config.keys_dir.to_str().unwrap().to_owned();
    run_vendctl(&["keys", "init", "--dir", &keys]);
    let config_path = dir.join("replica-2.toml");
    std::fs::write(&config_path, config.to_toml()).unwrap();
    let log_path = dir.join("replica-2.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Stopped(
        Command::new(common::binary("vend-replica"))
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let status_address = config.status_listen.to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ureq::get(&format!("http://{status_address}/api/v1/status"))
        .call()
        .is_err()
    {
        let exited = child.0.try_wait().ok().flatten();
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "the replica did not start ({exited:?}): {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(status(&status_address)["cluster_key_warning"].is_null());

    // Replica 1 of this cluster, with a cluster key of its own: a stream
    // of heartbeats that all fail authentication.
    let stranger = DatagramCodec::new(7, &SecretKey::from_bytes([3; 32]));
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    for packet_seq in 1..=200 {
        let datagram = Datagram {
            cluster_id: 7,
            sender: 1,
            receiver: replica::wire::RECEIVER_ALL,
            epoch: 1,
            incarnation: 9,
            packet_seq,
            commit_gseq: 0,
            message: Message::Heartbeat {
                tip_gseq: 0,
                tip_hash: [0; 32],
            },
        };
        socket
            .send_to(&stranger.encode(&datagram), config.replication_listen)
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let warning = loop {
        let now = status(&status_address);
        if let Some(warning) = now["cluster_key_warning"].as_str() {
            break warning.to_owned();
        }
        assert!(Instant::now() < deadline, "no warning in {now:#}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        warning.contains("from replica-1 fail authentication"),
        "{warning}"
    );
    assert!(warning.contains("cluster.key"), "{warning}");

    let table = vendctl_status_table(dir, &config);
    assert!(table.contains("fail authentication"), "{table}");

    // SAFETY: kill(2) has no memory effects.
    unsafe {
        libc::kill(i32::try_from(child.0.id()).unwrap(), libc::SIGTERM);
    }
    child.0.wait().unwrap();
    let text = std::fs::read_to_string(&log_path).unwrap();
    let warnings = text
        .lines()
        .filter(|l| l.contains("is this replica's cluster.key the cluster's?"))
        .count();
    // 200 datagrams in about a second: logged once (rate-limited), with
    // the count, not 200 times.
    assert!((1..=2).contains(&warnings), "{warnings} warnings:\n{text}");
    assert!(text.contains("count="), "{text}");
}

/// A child process that is killed if the test fails before stopping it.
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `vendctl status --table` for a one-replica cluster file.
fn vendctl_status_table(dir: &Path, config: &ReplicaConfig) -> String {
    let file = serde_json::json!({
        "cluster_id": config.cluster_id,
        "transport": "udp",
        "keys_dir": config.keys_dir,
        "replicas": [{
            "id": config.name,
            "pid": null,
            "config": dir.join("replica-2.toml"),
            "data_dir": config.data_dir,
            "machine_addr": config.machine_listen.to_string(),
            "replication_addr": config.replication_listen.to_string(),
            "dashboard": config.status_listen.to_string(),
        }],
    });
    std::fs::write(dir.join("cluster.json"), file.to_string()).unwrap();
    let out = vendctl(&["status", "--cluster", dir.to_str().unwrap(), "--table"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the real `vend-replica` until it exits (it must fail to start).
fn replica_process_error(config: &Path) -> String {
    let out = Command::new(common::binary("vend-replica"))
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The worst of the repeated error messages: each error in the chain also
/// returned its cause as a `source`, so `{:#}` printed RocksDB's lock
/// message three times.
#[test]
fn a_replica_that_cannot_start_says_why_once() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let first = plan().config(1, 8, dir, TransportKind::Udp);
    run_vendctl(&["keys", "init", "--dir", first.keys_dir.to_str().unwrap()]);
    let running = replica::server::start(first.clone()).expect("the first replica starts");
    // A second replica started on the same data directory by mistake.
    let mut second = plan().config(1, 8, dir, TransportKind::Udp);
    second.data_dir = first.data_dir.clone();
    let second_path = dir.join("second.toml");
    std::fs::write(&second_path, second.to_toml()).unwrap();
    // Its own log lines (descriptor limits) come first; the error is the
    // line the binary ends with.
    let stderr = replica_process_error(&second_path);
    let error = stderr
        .lines()
        .find(|line| line.starts_with("vend-replica:"))
        .unwrap_or(&stderr)
        .to_owned();
    running.shutdown();
    assert!(
        error.starts_with("vend-replica: starting the replica: log: "),
        "{error}"
    );
    assert_eq!(error.matches("LOCK").count(), 1, "{error}");
    assert_eq!(
        error.matches("Resource temporarily unavailable").count(),
        1,
        "{error}"
    );

    let error = replica_process_error(&dir.join("nope.toml"));
    assert!(error.contains("nope.toml"), "{error}");
    assert_eq!(
        error.matches("No such file or directory").count(),
        1,
        "{error}"
    );
}

//! The machine's uplink against real replicas: sell while the replicas
//! are down (the machine keeps working on its own ledger), start them, and
//! see every event arrive exactly once and be acknowledged; and a fleet the
//! replicas refuse says why.

mod common;

use ledger::admin::PasswordParams;
use ledger::ids::SlotId;
use ledger::keys::Keyring;
use ledger::money::MoneyKind;
use ledger::store::{LogStore, OpenOptions};
use ledger::{Command, MachineId};
use link::driver::UplinkReport;
use replica::config::LocalClusterPlan;
use replica::transport::TransportKind;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use vm_iced::config::MachineConfig;
use vm_iced::machine::{Machine, system_clock};

fn sell(machine: &mut Machine, slot: u16) {
    machine
        .execute(Command::Insert {
            kind: MoneyKind::Bill,
            value: 1_000,
        })
        .unwrap();
    machine
        .execute(Command::Purchase { slot: SlotId(slot) })
        .unwrap();
    machine.execute(Command::ReturnChange).unwrap();
}

#[test]
fn events_sold_offline_arrive_exactly_once_when_the_replicas_start() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let port = common::base_port();
    let plan = LocalClusterPlan {
        base_port: port,
        host: Ipv4Addr::LOCALHOST,
    };
    let id = MachineId::numbered(1);
    // Provisioned as an operator would: `vendctl keys init` and `vendctl
    // keys machine` (the machine and the replicas share the directory).
    ledger::keys::create_cluster_keys(&keys).unwrap();
    ledger::keys::create_machine_keys(&keys, std::slice::from_ref(&id)).unwrap();
    let mut config = MachineConfig::new(id.clone(), dir.path().join("vm"), keys.clone());
    config.initial_admin_password = Some("vend-admin-1!".into());
    config.replicas = (1..=3).map(|n| plan.machine_addr(n).to_string()).collect();
    let mut machine = Machine::open(&config, system_clock(), PasswordParams::Light).unwrap();
    machine
        .execute(Command::AdminLogin {
            password: "vend-admin-1!".into(),
        })
        .unwrap();
    machine.execute(Command::RefillAll).unwrap();
    machine.execute(Command::AdminLogout).unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut reports = machine
        .start_uplink(runtime.handle(), config.replicas.clone())
        .expect("replicas configured");

    // Offline: the replicas are not running. Selling still works.
    for slot in 1..=4 {
        sell(&mut machine, slot);
    }
    std::thread::sleep(Duration::from_millis(300));
    let offline_tip = machine.state().last_seq;
    assert_eq!(
        machine.unacknowledged(),
        offline_tip,
        "nothing can be acknowledged yet"
    );

    let replicas: Vec<_> = (1..=3)
        .map(|n| {
            let config = plan.config(n, 31, dir.path(), TransportKind::Udp);
            replica::server::start(config).expect("replica starts")
        })
        .collect();
    // Two more sales while coming online.
    sell(&mut machine, 5);
    sell(&mut machine, 1);
    let tip = machine.state().last_seq;
    let deadline = Instant::now() + Duration::from_secs(30);
    while machine.unacknowledged() > 0 {
        assert!(
            Instant::now() < deadline,
            "still {} unacknowledged of {tip}",
            machine.unacknowledged()
        );
        match reports.try_recv() {
            Ok(UplinkReport::Acknowledged(seq)) => machine.acknowledged(seq),
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    drop(machine);
    for replica in replicas {
        replica.shutdown();
    }
    let keyring = Keyring::open(&keys).unwrap();
    for n in 1..=3 {
        let store = LogStore::open(
            &dir.path().join(format!("replica-{n}/log")),
            keyring.store_key(),
            OpenOptions::default(),
        )
        .unwrap();
        let seqs: Vec<u64> = store
            .entries_from(1)
            .map(|entry| entry.unwrap())
            .filter_map(|entry| {
                entry
                    .body
                    .machine_event()
                    .map(|(machine, seq, _)| (machine.clone(), seq))
            })
            .filter(|(machine, _)| *machine == id)
            .map(|(_, seq)| seq)
            .collect();
        assert_eq!(
            seqs,
            (1..=tip).collect::<Vec<_>>(),
            "replica-{n} holds every event once, in order"
        );
        ledger::verify::verify_log(&store, &keyring, &mut |_| {}).unwrap();
    }
}

/// The machines' keys never reached the replicas: `vendctl simulate
/// --cluster` says that the replicas refuse the handshake, not only that
/// nothing was acknowledged when its time ran out.
#[test]
fn a_fleet_the_replicas_refuse_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster");
    let port = 27_000 + u16::try_from(std::process::id() % 1_000).unwrap() * 3;
    let init = common::vendctl(&[
        "cluster",
        "init",
        "--dir",
        cluster.to_str().unwrap(),
        "--base-port",
        &port.to_string(),
    ]);
    assert!(init.status.success());
    // The replica's host has the cluster's store and cluster keys, but no
    // machine keys: the operator provisioned the fleet in `cluster/keys`
    // and never copied the machine keys over.
    let replica_keys = dir.path().join("replica-keys");
    std::fs::create_dir_all(&replica_keys).unwrap();
    for file in ["store.key", "cluster.key"] {
        std::fs::copy(cluster.join("keys").join(file), replica_keys.join(file)).unwrap();
    }
    let mut config = replica::config::ReplicaConfig::load(&cluster.join("replica-1.toml")).unwrap();
    config.keys_dir = replica_keys;
    let replica = replica::server::start(config).expect("replica starts");

    let fleet = common::vendctl(&[
        "simulate",
        "--cluster",
        cluster.to_str().unwrap(),
        "--machines",
        "1",
        "--events-per-machine",
        "20",
        "--timeout-s",
        "3",
    ]);
    replica.shutdown();
    let stderr = String::from_utf8_lossy(&fleet.stderr);
    assert!(!fleet.status.success(), "{stderr}");
    assert!(
        stderr.contains("VM-001: handshake refused (unknown machine or wrong key)"),
        "{stderr}"
    );
    assert!(!stderr.contains("when the time ran out"), "{stderr}");
}

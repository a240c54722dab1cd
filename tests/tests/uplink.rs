//! The machine's uplink against real replicas: sell while the replicas
//! are down (the machine keeps working on its own ledger), start them, and
//! see every event arrive exactly once and be acknowledged.

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
    let port = 26_000 + u16::try_from(std::process::id() % 1_000).unwrap() * 3;
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

//! Operators' commands through a real cluster to a real machine.
//!
//! Replicas 2 and 3 are `vend-replica` processes; replica 1, the preferred
//! primary, runs in this process (`replica::server::start`, the same server
//! the binary runs) so the test can ask it through its read ports, as the
//! dashboard does (`ReadPorts::actions`). The machine is `vm-iced`'s
//! `Machine` with its background uplink, applying what the uplink reports
//! as the app does (`Command::Remote`).
//!
//! A price change reaches the connected machine at once and comes back as
//! the machine's own `PriceChanged` event with `Source::Remote`; a rename
//! requested while the machine is away reaches it when it reconnects; a
//! command committed on a primary that then stops reaches the machine
//! through the new primary. Afterwards `vendctl verify`, `dump` and
//! `replay --json` see the operators' records on every replica.

mod common;

use common::{Cluster, base_port, init_cluster, primaries, vendctl};
use dashboard::ports::{
    ActionError, ActionReceipt, MachineSummary, OperatorAction, OperatorRequest, ReadPorts, Role,
};
use ledger::admin::PasswordParams;
use ledger::event::{Event, Source};
use ledger::operator::CommandOutcome;
use ledger::{Command, MachineId, SlotId};
use link::driver::UplinkReport;
use replica::config::{LocalClusterPlan, ReplicaConfig};
use replica::server::ReplicaHandle;
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};
use vm_iced::config::MachineConfig;
use vm_iced::machine::{Machine, system_clock};

/// How long any one step may take before the test gives up (a failure,
/// not a timing assertion: every step normally takes well under a second).
const STEP_LIMIT: Duration = Duration::from_secs(30);

fn machine_id() -> MachineId {
    MachineId::numbered(1)
}

/// Polls `done` until it holds; panics naming `what` after `STEP_LIMIT`.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP_LIMIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asks a replica through its ports and waits for the answer.
fn ask(ports: &ReadPorts, action: OperatorAction) -> Result<ActionReceipt, ActionError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let request = OperatorRequest {
        operator: "kim".into(),
        action,
        reply,
    };
    assert!(
        ports.actions.blocking_send(request).is_ok(),
        "the replica takes requests"
    );
    answer.blocking_recv().expect("the replica answers")
}

fn summary(ports: &ReadPorts) -> Option<MachineSummary> {
    let snapshot = ports.snapshot.borrow().clone();
    snapshot
        .machines
        .iter()
        .find(|m| m.machine == machine_id())
        .cloned()
}

fn command_outcome(ports: &ReadPorts, command_id: u64) -> Option<CommandOutcome> {
    let projection = ports.projection.borrow().clone();
    projection
        .operators
        .commands
        .get(&machine_id())?
        .get(&command_id)
        .map(|c| c.outcome.clone())
}

/// The machine, as its app runs it: every report of its uplink handled as
/// `vm-iced`'s `App::on_uplink` does; the remote commands' events kept.
struct RunningMachine {
    machine: Machine,
    reports: tokio::sync::mpsc::Receiver<UplinkReport>,
    answered: Vec<Event>,
}

impl RunningMachine {
    /// Stops the machine's uplink and waits until it has closed its
    /// connection, so the replicas see the machine away for good.
    fn stop(mut self, runtime: &tokio::runtime::Runtime) {
        if let Some(task) = self.machine.stop_uplink() {
            let _ = runtime.block_on(task);
        }
    }

    fn start(config: &MachineConfig, runtime: &tokio::runtime::Runtime) -> RunningMachine {
        let mut machine = Machine::open(config, system_clock(), PasswordParams::Light).unwrap();
        let reports = machine
            .start_uplink(runtime.handle(), config.replicas.clone())
            .expect("replicas configured");
        RunningMachine {
            machine,
            reports,
            answered: Vec::new(),
        }
    }

    /// Handles reports until `done` holds.
    fn run_until(&mut self, what: &str, done: impl Fn(&Machine) -> bool) {
        let deadline = Instant::now() + STEP_LIMIT;
        while !done(&self.machine) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            match self.reports.try_recv() {
                Ok(UplinkReport::Acknowledged(seq)) => self.machine.acknowledged(seq),
                Ok(UplinkReport::Remote(command)) => {
                    let events = self.machine.execute(Command::Remote(command)).unwrap();
                    self.answered.extend(events);
                }
                Ok(UplinkReport::State { .. }) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    fn caught_up(&mut self) {
        self.run_until("the machine's events to be acknowledged", |m| {
            m.unacknowledged() == 0
        });
    }
}

fn slot(machine: &Machine, slot: u16) -> &ledger::catalog::SlotConfig {
    &machine.state().slots[&SlotId(slot)].config
}

fn start_replica_1(dir: &Path) -> ReplicaHandle {
    let config = ReplicaConfig::load(&dir.join("replica-1.toml")).unwrap();
    replica::server::start(config).expect("replica-1 starts")
}

#[test]
fn operators_commands_reach_machines_connected_reconnecting_and_after_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let port = base_port();
    let topology = init_cluster(dir.path(), port);
    // The machine's key, provisioned as an operator would (`vendctl keys
    // machine`) before the replicas start: the machine and the replicas
    // share the directory.
    ledger::keys::create_machine_keys(&dir.path().join("keys"), &[machine_id()]).unwrap();
    let mut cluster = Cluster {
        dir: dir.path().to_path_buf(),
        topology,
        children: vec![None, None, None],
        descriptor_limit: None,
    };
    // Replica 1 and the sync replica (which never stands) first, so replica
    // 1 is the primary; then the backup.
    let primary = start_replica_1(dir.path());
    cluster.spawn(1);
    let ports = primary
        .ports()
        .expect("a started replica has ports")
        .clone();
    wait_until("replica-1 to lead", || {
        ports.snapshot.borrow().role == Role::Primary
    });
    cluster.spawn(2);

    let plan = LocalClusterPlan {
        base_port: port,
        host: Ipv4Addr::LOCALHOST,
    };
    let mut config =
        MachineConfig::new(machine_id(), dir.path().join("vm"), dir.path().join("keys"));
    config.initial_admin_password = Some("vend-admin-1!".into());
    config.replicas = (1..=3).map(|n| plan.machine_addr(n).to_string()).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut vm = RunningMachine::start(&config, &runtime);
    vm.caught_up();

    // Connected: delivered at once, applied by the machine as its own event.
    let receipt = ask(
        &ports,
        OperatorAction::SetPrice {
            machine: machine_id(),
            slot: SlotId(2),
            price: 650,
        },
    )
    .unwrap();
    assert_eq!(receipt.commands, [(machine_id(), 1, true)]);
    assert!(receipt.gseq > 0);
    vm.run_until("the price change", |m| slot(m, 2).product.price == 650);
    assert_eq!(
        vm.answered,
        [Event::PriceChanged {
            slot: SlotId(2),
            price: 650,
            source: Source::Remote { command_id: 1 }
        }]
    );
    vm.caught_up();
    wait_until("the primary to see command 1 applied", || {
        matches!(
            command_outcome(&ports, 1),
            Some(CommandOutcome::Applied { .. })
        )
    });
    wait_until("the overview to show the machine live", || {
        summary(&ports).is_some_and(|m| {
            m.connected && m.last_seen_ms.is_some_and(|at| at > 0) && m.backlog == Some(0)
        })
    });
    // Bad requests are refused precisely, and record nothing.
    let refused = ask(
        &ports,
        OperatorAction::SetPrice {
            machine: machine_id(),
            slot: SlotId(2),
            price: 655,
        },
    );
    assert!(
        matches!(refused, Err(ActionError::Invalid(_))),
        "{refused:?}"
    );
    let refused = ask(
        &ports,
        OperatorAction::FleetPrice {
            product: "Tea".into(),
            price: 500,
        },
    );
    assert_eq!(refused, Err(ActionError::UnknownProduct("Tea".into())));

    // Away: the rename waits for the machine's next session.
    vm.stop(&runtime);
    wait_until("the primary to see the machine go", || {
        summary(&ports).is_some_and(|m| !m.connected)
    });
    let receipt = ask(
        &ports,
        OperatorAction::Rename {
            machine: machine_id(),
            slot: SlotId(3),
            name: "Barley Tea".into(),
        },
    )
    .unwrap();
    assert_eq!(receipt.commands, [(machine_id(), 2, false)]);
    let mut vm = RunningMachine::start(&config, &runtime);
    vm.run_until("the rename after reconnecting", |m| {
        slot(m, 3).product.name == "Barley Tea"
    });
    vm.caught_up();

    // Committed on a primary that then stops: the new primary delivers it.
    vm.stop(&runtime);
    wait_until("the primary to see the machine go again", || {
        summary(&ports).is_some_and(|m| !m.connected)
    });
    let receipt = ask(
        &ports,
        OperatorAction::SetPrice {
            machine: machine_id(),
            slot: SlotId(4),
            price: 780,
        },
    )
    .unwrap();
    assert_eq!(receipt.commands, [(machine_id(), 3, false)]);
    drop(ports);
    primary.shutdown();
    cluster.wait_for("replica-3 to take over", STEP_LIMIT, |status| {
        primaries(status).iter().any(|&(index, _)| index == 2)
    });
    let mut vm = RunningMachine::start(&config, &runtime);
    vm.run_until("the price change through the new primary", |m| {
        slot(m, 4).product.price == 780
    });
    vm.caught_up();
    assert_eq!(
        vm.answered,
        [Event::PriceChanged {
            slot: SlotId(4),
            price: 780,
            source: Source::Remote { command_id: 3 }
        }],
        "each command applied once"
    );

    // Replica 1 comes back as a follower: it sends operators to the
    // primary, and its own projection has every command applied.
    let follower = start_replica_1(dir.path());
    let ports = follower.ports().unwrap().clone();
    wait_until("replica-1 to follow replica-3", || {
        ports.snapshot.borrow().status.leader.as_deref() == Some("replica-3")
    });
    let refused = ask(
        &ports,
        OperatorAction::SetPrice {
            machine: machine_id(),
            slot: SlotId(1),
            price: 500,
        },
    );
    assert_eq!(
        refused,
        Err(ActionError::NotPrimary {
            primary: Some("replica-3".into())
        })
    );
    wait_until("replica-1 to see every command applied", || {
        (1..=3).all(|id| {
            matches!(
                command_outcome(&ports, id),
                Some(CommandOutcome::Applied { .. })
            )
        })
    });
    let tip = ports.snapshot.borrow().status.tip;
    cluster.wait_for("every replica to hold it all", STEP_LIMIT, |status| {
        status[1..]
            .iter()
            .all(|r| r["tip"].as_u64() == Some(tip) && r["commit"].as_u64() == Some(tip))
    });
    drop(ports);
    vm.stop(&runtime);
    follower.shutdown();
    cluster.stop_all();
    check_logs(dir.path());
}

/// Every replica's log verifies, and the tools show the three commands.
fn check_logs(dir: &Path) {
    let keys = dir.join("keys");
    for index in 1..=3 {
        let data = dir.join(format!("replica-{index}"));
        let args = |command: &str| {
            vec![
                command.to_owned(),
                "--data".into(),
                data.to_str().unwrap().into(),
                "--keys".into(),
                keys.to_str().unwrap().into(),
            ]
        };
        let run = |extra: &[&str], command: &str| {
            let mut all = args(command);
            all.extend(extra.iter().map(|s| (*s).to_owned()));
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            let output = vendctl(&all);
            assert!(
                output.status.success(),
                "replica-{index}: vendctl {command}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8_lossy(&output.stdout).into_owned()
        };
        let verdict = run(&[], "verify");
        assert!(
            verdict.contains(", 3 operator records,"),
            "replica-{index}: {verdict}"
        );
        let operator_lines: Vec<Value> = run(&[], "dump")
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .filter(|entry| entry["kind"] == "operator")
            .collect();
        assert_eq!(operator_lines.len(), 3, "replica-{index}");
        assert!(
            operator_lines
                .iter()
                .all(|line| line["operator"] == "kim" && line["action_kind"] == "command_requested")
        );
        let report: Value = serde_json::from_str(&run(&["--json"], "replay")).unwrap();
        let commands = report["operators"]["commands"].as_array().unwrap();
        assert_eq!(commands.len(), 3, "replica-{index}");
        assert!(
            commands
                .iter()
                .all(|c| c["outcome"].get("Applied").is_some()),
            "replica-{index}: {commands:?}"
        );
    }
}

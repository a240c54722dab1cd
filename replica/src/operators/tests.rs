//! Every operator request, planned against a projection: what it records,
//! and each refusal.

use super::*;
use dashboard::ports::OperatorAction as Asked;
use ledger::SlotId;
use ledger::admin::{PasswordParams, hash_password};
use ledger::crypto::SecretKey;
use ledger::operator::{AlertKey, AlertKind, OperatorRole};
use workload::{SIMULATION_START_MS, SimMachine};

const AT_MS: i64 = 1_767_200_000_000;

fn machine(n: u32) -> MachineId {
    MachineId::numbered(n)
}

/// A simulated machine, installed with the default catalog (slot 1 sells
/// Water, slot 2 Coffee, ...), and its events applied to `projection`.
fn install(projection: &mut Projection, n: u32) -> SimMachine {
    let key = SecretKey::from_bytes([u8::try_from(n).unwrap(); 32]);
    let mut sim = SimMachine::new(machine(n), &key, 5, SIMULATION_START_MS);
    let mut signed = Vec::new();
    while !sim.state().installed {
        sim.step_into(&mut signed);
    }
    apply_all(projection, &signed);
    sim
}

fn apply_all(projection: &mut Projection, signed: &[ledger::store::record::SignedEvent]) {
    for event in signed {
        let gseq = projection.as_of_gseq + 1;
        projection.apply(gseq, &event.envelope().unwrap()).unwrap();
    }
}

fn fleet() -> Projection {
    let mut projection = Projection::default();
    install(&mut projection, 1);
    install(&mut projection, 2);
    projection
}

/// Applies planned records as the log would.
fn record(projection: &mut Projection, records: &[OperatorRecord]) {
    for record in records {
        let gseq = projection.as_of_gseq + 1;
        projection.apply_operator(gseq, record).unwrap();
    }
}

fn command_ids(records: &[OperatorRecord]) -> Vec<(MachineId, u64)> {
    records
        .iter()
        .map(|r| match &r.action {
            Recorded::CommandRequested {
                machine,
                command_id,
                ..
            } => (machine.clone(), *command_id),
            other => panic!("not a command: {other:?}"),
        })
        .collect()
}

fn set_price(n: u32, slot: u16, price: ledger::Won) -> Asked {
    Asked::SetPrice {
        machine: machine(n),
        slot: SlotId(slot),
        price,
    }
}

fn hash() -> String {
    hash_password("s3cret-pass!", &[4; 16], PasswordParams::Light).unwrap()
}

#[test]
fn a_price_change_becomes_a_command_whose_id_follows_the_log_and_the_machine() {
    let mut projection = fleet();
    let records = plan("kim", &set_price(1, 2, 600), AT_MS, &projection).unwrap();
    assert_eq!(
        records,
        [OperatorRecord {
            operator: "kim".into(),
            at_ms: AT_MS,
            action: Recorded::CommandRequested {
                machine: machine(1),
                command_id: 1,
                action: RemoteAction::SetPrice {
                    slot: SlotId(2),
                    price: 600
                },
            },
        }]
    );
    record(&mut projection, &records);
    let next = plan("kim", &set_price(1, 3, 700), AT_MS, &projection).unwrap();
    assert_eq!(
        command_ids(&next),
        [(machine(1), 2)],
        "above the log's last"
    );
    // Machine 2 applied a command 7 the log does not know (its ledger
    // says so): ids go on above it.
    let mut projection = Projection::default();
    let command = ledger::rules::RemoteCommand {
        command_id: 7,
        action: RemoteAction::SetPrice {
            slot: SlotId(1),
            price: 460,
        },
    };
    let mut sim = SimMachine::new(
        machine(2),
        &SecretKey::from_bytes([2; 32]),
        5,
        SIMULATION_START_MS,
    );
    let mut events = Vec::new();
    while !sim.state().installed {
        sim.step_into(&mut events);
    }
    sim.remote(command, |prepared| {
        events.extend_from_slice(prepared.signed());
        Ok::<(), ()>(())
    })
    .unwrap();
    apply_all(&mut projection, &events);
    assert_eq!(projection.machines[&machine(2)].last_remote_command_id, 7);
    let records = plan("kim", &set_price(2, 1, 470), AT_MS, &projection).unwrap();
    assert_eq!(command_ids(&records), [(machine(2), 8)]);
}

#[test]
fn machine_commands_are_checked_by_the_machines_own_rules() {
    let projection = fleet();
    let refused = |action: Asked| plan("kim", &action, AT_MS, &projection).unwrap_err();
    assert_eq!(
        refused(set_price(9, 1, 500)),
        ActionError::UnknownMachine(machine(9))
    );
    assert_eq!(
        refused(set_price(1, 60, 500)),
        ActionError::UnknownSlot {
            machine: machine(1),
            slot: SlotId(60)
        }
    );
    for price in [0, 15, -10, ledger::catalog::PRICE_MAX + 10] {
        let ActionError::Invalid(why) = refused(set_price(1, 1, price)) else {
            panic!("price {price} must be refused as invalid");
        };
        assert!(why.contains("multiple of 10"), "{why}");
    }
    for name in ["", " padded", &"x".repeat(41)] {
        let rename = Asked::Rename {
            machine: machine(1),
            slot: SlotId(1),
            name: name.into(),
        };
        assert!(
            matches!(refused(rename), ActionError::Invalid(_)),
            "{name:?}"
        );
    }
    let settle = Asked::SettleTicket {
        machine: machine(1),
        ticket: 3,
    };
    let ActionError::Invalid(why) = refused(settle) else {
        panic!("no such ticket");
    };
    assert!(why.contains("no open change ticket 3"), "{why}");
    let rename = Asked::Rename {
        machine: machine(1),
        slot: SlotId(1),
        name: "아메리카노".into(),
    };
    assert!(plan("kim", &rename, AT_MS, &projection).is_ok());
}

#[test]
fn a_fleet_price_is_one_command_per_slot_that_sells_the_product() {
    let mut projection = fleet();
    // Machine 2 sells Water in a second slot too.
    let rename = plan(
        "kim",
        &Asked::Rename {
            machine: machine(2),
            slot: SlotId(3),
            name: "Water".into(),
        },
        AT_MS,
        &projection,
    )
    .unwrap();
    record(&mut projection, &rename);
    // The rename is only requested: the machine has not applied it, so
    // slot 3 does not sell Water yet.
    let action = Asked::FleetPrice {
        product: "Water".into(),
        price: 480,
    };
    let records = plan("head-office", &action, AT_MS, &projection).unwrap();
    assert_eq!(
        command_ids(&records),
        [(machine(1), 1), (machine(2), 2)],
        "machine 2's id follows its pending rename"
    );
    assert!(records.iter().all(|r| matches!(
        &r.action,
        Recorded::CommandRequested {
            action: RemoteAction::SetPrice {
                slot: SlotId(1),
                price: 480
            },
            ..
        }
    )));
    assert_eq!(
        plan(
            "kim",
            &Asked::FleetPrice {
                product: "Tea".into(),
                price: 480
            },
            AT_MS,
            &projection
        ),
        Err(ActionError::UnknownProduct("Tea".into()))
    );
    assert!(matches!(
        plan(
            "kim",
            &Asked::FleetPrice {
                product: "Water".into(),
                price: 485
            },
            AT_MS,
            &projection
        ),
        Err(ActionError::Invalid(_))
    ));
}

#[test]
fn a_machine_cannot_pile_up_commands_while_it_is_away() {
    let mut projection = fleet();
    for n in 0..COMMANDS_PENDING_MAX {
        let price = 100 + 10 * n as ledger::Won;
        let records = plan("kim", &set_price(1, 1, price), AT_MS, &projection).unwrap();
        record(&mut projection, &records);
    }
    let ActionError::Invalid(why) =
        plan("kim", &set_price(1, 1, 990), AT_MS, &projection).unwrap_err()
    else {
        panic!("refused as invalid");
    };
    assert!(why.contains("waiting to be applied"), "{why}");
    // Another machine is not held up.
    assert!(plan("kim", &set_price(2, 1, 990), AT_MS, &projection).is_ok());
}

#[test]
fn accounts_follow_the_naming_hash_and_existence_rules() {
    let mut projection = fleet();
    let add = |name: &str, password_hash: String| Asked::AddUser {
        name: name.into(),
        role: OperatorRole::Auditor,
        password_hash,
    };
    let records = plan("vendctl", &add("lee.auditor", hash()), AT_MS, &projection).unwrap();
    assert!(matches!(
        &records[..],
        [OperatorRecord {
            action: Recorded::UserAdded { .. },
            ..
        }]
    ));
    record(&mut projection, &records);
    assert_eq!(
        plan("vendctl", &add("lee.auditor", hash()), AT_MS, &projection),
        Err(ActionError::UserExists("lee.auditor".into()))
    );
    for bad in ["", "lee auditor", "이", &"a".repeat(33)] {
        assert!(
            matches!(
                plan("vendctl", &add(bad, hash()), AT_MS, &projection),
                Err(ActionError::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    let not_argon2id = "$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA".to_owned();
    for bad_hash in ["plain-password".to_owned(), not_argon2id] {
        assert!(matches!(
            plan("vendctl", &add("park", bad_hash), AT_MS, &projection),
            Err(ActionError::Invalid(_))
        ));
    }
    let disable = |name: &str| Asked::DisableUser { name: name.into() };
    assert_eq!(
        plan("vendctl", &disable("park"), AT_MS, &projection),
        Err(ActionError::UnknownUser("park".into()))
    );
    let change = Asked::ChangePassword {
        name: "park".into(),
        password_hash: hash(),
    };
    assert_eq!(
        plan("vendctl", &change, AT_MS, &projection),
        Err(ActionError::UnknownUser("park".into()))
    );
    let records = plan("vendctl", &disable("lee.auditor"), AT_MS, &projection).unwrap();
    record(&mut projection, &records);
    assert!(projection.operators.users["lee.auditor"].disabled);
    assert!(matches!(
        plan("vendctl", &disable("lee.auditor"), AT_MS, &projection),
        Err(ActionError::Invalid(_))
    ));
    // Who asks must have a valid name too.
    assert!(matches!(
        plan("no body", &set_price(1, 1, 500), AT_MS, &projection),
        Err(ActionError::Invalid(_))
    ));
}

#[test]
fn an_alert_is_acknowledged_for_a_known_machine_and_slot() {
    let projection = fleet();
    let ack = |n: u32, slot: Option<u16>, note: String| Asked::AcknowledgeAlert {
        alert: AlertKey {
            kind: AlertKind::LowStock,
            machine: machine(n),
            slot: slot.map(SlotId),
        },
        note,
    };
    let records = plan(
        "kim",
        &ack(1, Some(2), "refill on Monday".into()),
        AT_MS,
        &projection,
    )
    .unwrap();
    assert!(matches!(
        &records[..],
        [OperatorRecord {
            action: Recorded::AlertAcknowledged { .. },
            ..
        }]
    ));
    assert_eq!(
        plan("kim", &ack(9, None, String::new()), AT_MS, &projection),
        Err(ActionError::UnknownMachine(machine(9)))
    );
    assert_eq!(
        plan("kim", &ack(1, Some(60), String::new()), AT_MS, &projection),
        Err(ActionError::UnknownSlot {
            machine: machine(1),
            slot: SlotId(60)
        })
    );
    assert!(matches!(
        plan(
            "kim",
            &ack(1, None, "가".repeat(NOTE_CHARS_MAX + 1)),
            AT_MS,
            &projection
        ),
        Err(ActionError::Invalid(_))
    ));
    assert!(
        plan(
            "kim",
            &ack(1, None, "가".repeat(NOTE_CHARS_MAX)),
            AT_MS,
            &projection
        )
        .is_ok()
    );
}

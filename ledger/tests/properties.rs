//! Property tests over random command sequences and random tampering.

use ledger::admin::PasswordParams;
use ledger::catalog::{CategoryPath, Product, SlotConfig, default_catalog};
use ledger::crypto::SecretKey;
use ledger::keys::SingleMachineKey;
use ledger::money::{Denomination, MoneyKind};
use ledger::projection::Projection;
use ledger::rules::{RemoteAction, RemoteCommand, envelopes};
use ledger::state::MachineState;
use ledger::store::{LogStore, OpenOptions};
use ledger::{Command, Context, EventEnvelope, MachineId, Rejection, SlotId, decide};
use proptest::prelude::*;
use workload::{SIMULATION_START_MS, SimMachine};

const PASSWORD: &str = "vend-admin-1!";

fn install() -> Command {
    Command::Install {
        slots: default_catalog(),
        // Small tubes and stacker so overflow and change owed happen often.
        tube_capacity: ledger::money::CoinCounts([6, 4, 5, 3]),
        stacker_capacity_bills: 8,
        admin_password: PASSWORD.to_owned(),
    }
}

fn denomination_any() -> impl Strategy<Value = Denomination> {
    prop::sample::select(Denomination::ALL.to_vec())
}

fn slot() -> impl Strategy<Value = SlotId> {
    (0u16..=7).prop_map(SlotId)
}

fn command() -> impl Strategy<Value = Command> {
    let money = prop_oneof![
        Just((MoneyKind::Coin, 10)),
        Just((MoneyKind::Coin, 50)),
        Just((MoneyKind::Coin, 100)),
        Just((MoneyKind::Coin, 500)),
        Just((MoneyKind::Bill, 1_000)),
        Just((MoneyKind::Bill, 5_000)),
        Just((MoneyKind::Coin, 5)),
        (any::<bool>(), -2_000i64..20_000).prop_map(|(bill, v)| (
            if bill {
                MoneyKind::Bill
            } else {
                MoneyKind::Coin
            },
            v
        )),
    ];
    let denomination = prop::sample::select(Denomination::ALL.to_vec());
    prop_oneof![
        6 => money.prop_map(|(kind, value)| Command::Insert { kind, value }),
        3 => slot().prop_map(|slot| Command::Purchase { slot }),
        1 => Just(Command::CancelLastPurchase),
        2 => Just(Command::ReturnChange),
        1 => denomination_any().prop_map(|jammed| Command::ReturnChangeJammed { jammed }),
        1 => Just(Command::LoadAllTubes),
        3 => prop_oneof![1 => Just(PASSWORD.to_owned()), 3 => Just("wrong-pass-9?".to_owned())].prop_map(|password| Command::AdminLogin { password }),
        1 => Just(Command::AdminLogout),
        1 => (slot(), proptest::option::of(0u32..12)).prop_map(|(slot, count)| Command::Refill { slot, count }),
        1 => Just(Command::RefillAll),
        1 => (denomination, 0u32..8).prop_map(|(denomination, count)| Command::LoadTube { denomination, count }),
        1 => (-100i64..20_000).prop_map(|counted| Command::CollectCash { counted }),
        1 => (slot(), -100i64..2_000).prop_map(|(slot, price)| Command::SetPrice { slot, price }),
        1 => (slot(), "[A-Za-z ]{0,12}").prop_map(|(slot, name)| Command::Rename { slot, name }),
        1 => (slot(), 1u32..15, "[A-Za-z]{1,8}", "[A-Z]{0,3}").prop_map(|(slot, capacity, name, code)| Command::ConfigureSlot(SlotConfig {
            slot,
            product: Product { name, price: 600, category: CategoryPath::parse("Snacks > Test"), code },
            capacity,
        })),
        1 => (0u64..4).prop_map(|ticket| Command::SettleChangeOwed { ticket }),
        1 => (0u64..40, slot(), 0i64..1_000).prop_map(|(command_id, slot, price)| Command::Remote(RemoteCommand {
            command_id,
            action: RemoteAction::SetPrice { slot, price },
        })),
        1 => (0u64..4, 0u64..40).prop_map(|(ticket, command_id)| Command::Remote(RemoteCommand {
            command_id,
            action: RemoteAction::SettleChangeOwed { ticket },
        })),
        1 => prop_oneof![Just("short1!"), Just("longenough1!"), Just("nodigits!!")].prop_map(|new| Command::ChangePassword {
            current: PASSWORD.to_owned(),
            new: new.to_owned(),
        }),
    ]
}

/// Runs commands live, returning every envelope and the final state.
fn run(commands: &[(Command, u32)]) -> (MachineState, Vec<EventEnvelope>) {
    let machine = MachineId::numbered(1);
    let mut state = MachineState::default();
    let mut log = Vec::new();
    let mut now_ms = SIMULATION_START_MS;
    let mut current_password = PASSWORD.to_owned();
    // Install, then stock the machine, so random commands start from a
    // machine that can sell.
    let setup = [
        install(),
        Command::AdminLogin {
            password: PASSWORD.to_owned(),
        },
        Command::RefillAll,
        Command::LoadTube {
            denomination: Denomination::Coin100,
            count: 2,
        },
        Command::LoadTube {
            denomination: Denomination::Coin50,
            count: 1,
        },
        Command::AdminLogout,
    ];
    let first = setup.into_iter().map(|command| (command, 1_000));
    for (mut command, advance_ms) in first.chain(commands.iter().cloned()) {
        now_ms += i64::from(advance_ms);
        // Keep logins meaningful after a password change.
        if let Command::AdminLogin { password }
        | Command::ChangePassword {
            current: password, ..
        } = &mut command
            && password == PASSWORD
        {
            password.clone_from(&current_password);
        }
        let ctx = Context {
            now_ms,
            salt: [1; 16],
            password_params: PasswordParams::Light,
        };
        match decide(&state, &command, &ctx) {
            Ok(events) => {
                if let Command::ChangePassword { new, .. } = &command
                    && !events.is_empty()
                {
                    current_password.clone_from(new);
                }
                for envelope in envelopes(&machine, &state, events, now_ms) {
                    state.apply(&envelope).expect("decided events apply");
                    state
                        .check_consistency()
                        .expect("state stays consistent after every event");
                    log.push(envelope);
                }
            }
            Err(Rejection::Internal(error)) => {
                panic!("rules produced an event that does not apply: {error}")
            }
            Err(_) => {}
        }
    }
    (state, log)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_and_replay_equals_live(commands in prop::collection::vec((command(), 0u32..400_000), 1..120)) {
        let (live, log) = run(&commands);
        // Postings: the books balance and physical accounts are non-negative.
        prop_assert_eq!(live.balances.total(), 0);
        for (account, balance) in live.balances.iter() {
            if account.is_physical() {
                prop_assert!(balance >= 0, "{account:?} = {balance}");
            }
        }
        // Replaying the decoded events gives the same state and projection.
        let mut replayed = MachineState::default();
        let mut projection = Projection::default();
        for (gseq, envelope) in (1..).zip(&log) {
            let decoded = EventEnvelope::decode(&envelope.encode()).unwrap();
            prop_assert_eq!(&decoded, envelope);
            replayed.apply(&decoded).unwrap();
            projection.apply(gseq, &decoded).unwrap();
        }
        prop_assert_eq!(&replayed, &live);
        prop_assert_eq!(projection.machines.values().next().map(|state| &**state), Some(&live));
        prop_assert_eq!(projection.sales.total().won, live.stats.sales_won);
        // Buttons are enabled exactly when a purchase would be accepted.
        for slot in live.slots.keys() {
            let ctx = Context { now_ms: 0, salt: [0; 16], password_params: PasswordParams::Light };
            let accepted = decide(&live, &Command::Purchase { slot: *slot }, &ctx).is_ok();
            prop_assert_eq!(live.can_buy(*slot), accepted);
        }
    }

    #[test]
    fn a_stream_with_a_hole_fails_cleanly(commands in prop::collection::vec((command(), 0u32..400_000), 1..60), skip in any::<prop::sample::Index>()) {
        // Replaying a stream with one event dropped must either fail cleanly
        // with the state untouched or leave a consistent state.
        let (_, log) = run(&commands);
        let dropped = skip.index(log.len());
        let mut state = MachineState::default();
        for (i, envelope) in log.iter().enumerate() {
            if i == dropped {
                continue;
            }
            let mut renumbered = envelope.clone();
            renumbered.machine_seq = state.last_seq + 1;
            let before = state.clone();
            if state.apply(&renumbered).is_err() {
                prop_assert_eq!(&state, &before);
            }
            prop_assert!(state.check_consistency().is_ok());
        }
    }
}

/// The generator must reach every kind of event, or the properties above
/// would hold vacuously for the kinds it never produces.
#[test]
fn random_sequences_reach_every_kind_of_event() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let strategy = prop::collection::vec((command(), 0u32..400_000), 1..120);
    let mut runner = TestRunner::deterministic();
    let mut kinds = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let commands = strategy.new_tree(&mut runner).unwrap().current();
        kinds.extend(run(&commands).1.iter().map(|e| e.event.kind()));
    }
    let all = [
        "installed",
        "money_inserted",
        "money_rejected",
        "product_purchased",
        "purchase_cancelled",
        "change_returned",
        "bill_stacked",
        "bill_returned",
        "change_owed",
        "change_owed_settled",
        "slot_refilled",
        "tube_loaded",
        "cash_collected",
        "price_changed",
        "product_renamed",
        "slot_configured",
        "admin_logged_in",
        "admin_login_failed",
        "admin_locked_out",
        "admin_logged_out",
        "admin_password_changed",
        "remote_command_rejected",
    ];
    let missing: Vec<&str> = all.iter().copied().filter(|k| !kinds.contains(k)).collect();
    assert!(missing.is_empty(), "never produced: {missing:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn tampering_with_any_stored_entry_is_detected(
        batches in prop::collection::vec(1usize..40, 1..6),
        target in any::<prop::sample::Index>(),
        byte in any::<prop::sample::Index>(),
        with_key in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store_key = SecretKey::generate();
        let machine_key = SecretKey::generate();
        let machine = MachineId::numbered(1);
        let keys = SingleMachineKey::new(machine.clone(), &machine_key);
        let mut sim = SimMachine::new(machine, &machine_key, 5, SIMULATION_START_MS);
        let mut store = LogStore::open(&dir.path().join("log"), &store_key, OpenOptions { create: true, segment_entries: 16, ..OpenOptions::default() }).unwrap();
        for size in batches {
            let mut events = Vec::new();
            while events.len() < size {
                sim.step_into(&mut events);
            }
            store.append_events(1, 0, &events, &keys).unwrap();
        }
        let head = store.head().gseq;
        ledger::verify::verify_log(&store, &keys, &mut |_| {}).unwrap();
        let gseq = 1 + target.index(usize::try_from(head).unwrap()) as u64;
        if with_key {
            // Someone with the store key rewrites one record.
            let mut record = store.record_bytes(gseq).unwrap().unwrap();
            let at = byte.index(record.len());
            record[at] ^= 0x01;
            store.overwrite_record(gseq, &record).unwrap();
            let failure = ledger::verify::verify_log(&store, &keys, &mut |_| {}).unwrap_err();
            match failure.gseq {
                Some(found) => prop_assert!(found == gseq || found == gseq + 1, "changed {gseq}, failure {failure}"),
                None => prop_assert_eq!(gseq, head, "{}", failure),
            }
        } else {
            // Someone without the key flips a stored bit.
            let (first, mut sealed) = store.raw_chunk(gseq).unwrap().unwrap();
            let at = byte.index(sealed.len());
            sealed[at] ^= 0x01;
            store.overwrite_raw_chunk(first, Some(&sealed)).unwrap();
            let failure = ledger::verify::verify_log(&store, &keys, &mut |_| {}).unwrap_err();
            prop_assert_eq!(failure.gseq, Some(first), "{}", failure);
        }
    }
}

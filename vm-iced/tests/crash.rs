//! kill -9 of a running machine at random moments: after each restart the
//! machine holds exactly what it recorded — every coin inserted before the
//! crash is still in the customer's balance, nothing is counted twice — and
//! it keeps selling on the same hash chain.
//!
//! The test binary is its own child (`--child DIR`): it sells in a loop and
//! prints `recorded SEQ BALANCE` after every action that returned. The
//! parent kills it, reopens the machine and compares. (`harness = false`.)

use ledger::admin::PasswordParams;
use ledger::keys::Keyring;
use ledger::money::MoneyKind;
use ledger::store::{LogStore, OpenOptions};
use ledger::{Command, MachineId};
use rand::{Rng, SeedableRng};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};
use vm_iced::config::MachineConfig;
use vm_iced::machine::{Machine, system_clock};

const ROUNDS: u32 = 5;
const CHILD_LIFETIME_MAX: Duration = Duration::from_secs(60);

fn config(dir: &Path) -> MachineConfig {
    let mut config = MachineConfig::new(MachineId::numbered(9), dir.join("vm"), dir.join("keys"));
    config.initial_admin_password = Some("vend-admin-1!".into());
    config
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        child(Path::new(&args[2]), args[3].parse().expect("round"));
        return;
    }
    if args.iter().any(|a| a == "--list") {
        println!("kill_9_loses_no_coin: test");
        return;
    }
    parent();
    println!("test kill_9_loses_no_coin ... ok");
}

fn child(dir: &Path, round: u64) {
    let mut machine =
        Machine::open(&config(dir), system_clock(), PasswordParams::Light).expect("machine opens");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(round);
    let started = Instant::now();
    let stdout = std::io::stdout();
    while started.elapsed() < CHILD_LIFETIME_MAX {
        let command = match rng.random_range(0..10) {
            0 => {
                // An operator visit keeps the machine stocked.
                let _ = machine.execute(Command::AdminLogin {
                    password: "vend-admin-1!".into(),
                });
                let _ = machine.execute(Command::RefillAll);
                Command::AdminLogout
            }
            1..=4 => Command::Insert {
                kind: MoneyKind::Coin,
                value: [10, 50, 100, 500][rng.random_range(0..4)],
            },
            5 => Command::Insert {
                kind: MoneyKind::Bill,
                value: 1_000,
            },
            6 | 7 => Command::Purchase {
                slot: ledger::SlotId(rng.random_range(1..=6)),
            },
            8 => Command::CancelLastPurchase,
            _ => Command::ReturnChange,
        };
        if machine.execute(command).is_ok() {
            let state = machine.state();
            writeln!(
                stdout.lock(),
                "recorded {} {}",
                state.last_seq,
                state.escrow.balance
            )
            .unwrap();
        }
    }
}

fn parent() {
    let dir = tempfile::tempdir().unwrap();
    // Provisioned as an operator would (`vendctl keys machine`).
    ledger::keys::create_machine_keys(&dir.path().join("keys"), &[MachineId::numbered(9)]).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(77);
    for round in 1..=ROUNDS {
        let mut child = Process::new(std::env::current_exe().unwrap())
            .args(["--child", dir.path().to_str().unwrap(), &round.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("child starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut last = (0u64, 0i64);
        for _ in 0..rng.random_range(20..200) {
            let line = lines.next().expect("child alive").unwrap();
            let words: Vec<&str> = line.split(' ').collect();
            last = (words[1].parse().unwrap(), words[2].parse().unwrap());
        }
        std::thread::sleep(Duration::from_micros(rng.random_range(0..2_000)));
        child.kill().unwrap();
        child.wait().unwrap();
        for line in lines.map_while(Result::ok) {
            let words: Vec<&str> = line.split(' ').collect();
            last = (words[1].parse().unwrap(), words[2].parse().unwrap());
        }
        let machine = Machine::open(&config(dir.path()), system_clock(), PasswordParams::Light)
            .expect("reopens");
        let state = machine.state();
        state
            .check_consistency()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        // The last reported action is there; at most one more (recorded
        // but not yet reported) may be.
        assert!(
            state.last_seq >= last.0,
            "round {round}: lost #{} (have #{})",
            last.0,
            state.last_seq
        );
        if state.last_seq == last.0 {
            assert_eq!(
                state.escrow.balance, last.1,
                "round {round}: the customer's balance survived the crash"
            );
        }
        drop(machine);
        let keyring = Keyring::open(&dir.path().join("keys")).unwrap();
        let store = LogStore::open(
            &dir.path().join("vm/log"),
            keyring.store_key(),
            OpenOptions::default(),
        )
        .unwrap();
        ledger::verify::verify_log(&store, &keyring, &mut |_| {})
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        eprintln!(
            "round {round}: killed after #{}, reopened at #{}, balance {} won, verified",
            last.0,
            store.head().gseq,
            last.1
        );
    }
}

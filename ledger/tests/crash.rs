//! Kill -9 in the middle of group commits: reopening loses nothing that was
//! reported committed and exposes nothing half-written.
//!
//! The test binary is its own child: run with `--child DIR ROUND` it appends
//! batches forever, printing `batch FIRST LAST` before each append and
//! `committed LAST` after it returns; the parent kills it at a random moment
//! with SIGKILL, reopens the store and checks it. (`harness = false`, so
//! there is no test framework in the child's way.)

use ledger::MachineId;
use ledger::crypto::SecretKey;
use ledger::keys::Keyring;
use ledger::store::{LogStore, OpenOptions};
use rand::{Rng, SeedableRng};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use workload::{SIMULATION_START_MS, SimMachine};

const ROUNDS: u32 = 6;
/// The child stops by itself after this long, in case the parent is gone.
const CHILD_LIFETIME_MAX: Duration = Duration::from_secs(60);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        child(Path::new(&args[2]), args[3].parse().expect("round number"));
        return;
    }
    if args.iter().any(|a| a == "--list") {
        println!("kill_mid_batch_loses_nothing_committed: test");
        return;
    }
    parent();
    println!("test kill_mid_batch_loses_nothing_committed ... ok");
}

fn open(dir: &Path, keyring: &Keyring) -> LogStore {
    LogStore::open(
        &dir.join("log"),
        keyring.store_key(),
        OpenOptions {
            create: true,
            segment_entries: 256,
            ..OpenOptions::default()
        },
    )
    .expect("store opens")
}

fn child(dir: &Path, round: u32) {
    let ids: Vec<MachineId> = (1..=3)
        .map(|n| MachineId::new(format!("R{round}-{n}")).unwrap())
        .collect();
    ledger::keys::create_machine_keys(&dir.join("keys"), &ids).unwrap();
    let keyring = Keyring::open(&dir.join("keys")).unwrap();
    let mut store = open(dir, &keyring);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(u64::from(round));
    let mut machines: Vec<SimMachine> = (1..=3)
        .zip(&ids)
        .map(|(n, id)| {
            let key: &SecretKey = keyring.require_machine(id).unwrap();
            SimMachine::new(
                id.clone(),
                key,
                u64::from(round * 10 + n),
                SIMULATION_START_MS,
            )
        })
        .collect();
    let started = Instant::now();
    let stdout = std::io::stdout();
    while started.elapsed() < CHILD_LIFETIME_MAX {
        let size = rng.random_range(1..300);
        let mut batch = Vec::new();
        while batch.len() < size {
            let machine = rng.random_range(0..machines.len());
            machines[machine].step_into(&mut batch);
        }
        let first = store.head().gseq + 1;
        let last = first + batch.len() as u64 - 1;
        writeln!(stdout.lock(), "batch {first} {last}").unwrap();
        store
            .append_events(round.into(), 0, &batch, &keyring)
            .unwrap();
        writeln!(stdout.lock(), "committed {last}").unwrap();
    }
}

fn parent() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2026);
    let mut previous_head = 0;
    for round in 1..=ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--child", dir.path().to_str().unwrap(), &round.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("child starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let lines_before_kill = rng.random_range(4..60);
        let mut committed = previous_head;
        let mut in_flight = None;
        for _ in 0..lines_before_kill {
            let line = lines.next().expect("child is alive").unwrap();
            let words: Vec<&str> = line.split(' ').collect();
            match words[0] {
                "batch" => in_flight = Some(words[2].parse::<u64>().unwrap()),
                "committed" => {
                    committed = words[1].parse().unwrap();
                    in_flight = None;
                }
                other => panic!("unexpected child output {other}"),
            }
        }
        // Let the next fsync be in progress, or not, when the kill lands.
        std::thread::sleep(Duration::from_micros(rng.random_range(0..3_000)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Whatever the child printed after our last read is also possible.
        for line in lines.map_while(Result::ok) {
            let words: Vec<&str> = line.split(' ').collect();
            match words[0] {
                "batch" => in_flight = Some(words[2].parse::<u64>().unwrap()),
                _ => {
                    committed = words[1].parse().unwrap();
                    in_flight = None;
                }
            }
        }
        let keyring = Keyring::open(&dir.path().join("keys")).unwrap();
        let store = open(dir.path(), &keyring);
        let head = store.head().gseq;
        assert!(
            head >= committed,
            "round {round}: head {head} lost committed {committed}"
        );
        assert!(
            head == committed || Some(head) == in_flight,
            "round {round}: head {head} is neither the committed end {committed} nor the in-flight batch end {in_flight:?}"
        );
        let summary = ledger::verify::verify_log(&store, &keyring, &mut |_| {})
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(summary.entries, head);
        eprintln!(
            "round {round}: killed after {committed} committed (in flight {in_flight:?}), reopened at {head}, verified"
        );
        previous_head = head;
    }
}

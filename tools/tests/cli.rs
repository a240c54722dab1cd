//! Drives the real `vendctl` binary: simulate, verify, replay, dump, and
//! proves that tampering and wrong keys are reported, not ignored.

use ledger::keys::Keyring;
use ledger::store::{LogStore, OpenOptions};
use std::path::Path;
use std::process::{Command, Output};

fn vendctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vendctl"))
        .args(args)
        .output()
        .expect("vendctl runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn simulate(data: &Path, machines: &str, events: &str, seed: &str) -> serde_json::Value {
    let data = data.to_str().unwrap();
    let out = vendctl(&[
        "simulate",
        "--offline",
        "--data",
        data,
        "--machines",
        machines,
        "--events-per-machine",
        events,
        "--seed",
        seed,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "simulate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout(&out)).expect("simulate prints JSON")
}

#[test]
fn simulate_verify_replay_and_dump_agree() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fleet");
    let summary = simulate(&data, "4", "3000", "11");
    let events = summary["events"].as_u64().unwrap();
    assert!((12_000..12_010).contains(&events), "{summary}");
    let data = data.to_str().unwrap();

    let verify = vendctl(&["verify", "--data", data]);
    assert!(verify.status.success(), "{}", stdout(&verify));
    let line = stdout(&verify);
    assert!(
        line.starts_with(&format!("ok: {events} entries, 4 machines")),
        "{line}"
    );
    assert!(
        line.contains(summary["head_hash"].as_str().unwrap()),
        "{line}"
    );

    let replay = vendctl(&["replay", "--data", data, "--json"]);
    assert!(replay.status.success());
    let report: serde_json::Value = serde_json::from_str(&stdout(&replay)).unwrap();
    assert_eq!(report["as_of_gseq"].as_u64(), Some(events));
    assert_eq!(report["projection_issues"].as_u64(), Some(0));
    assert_eq!(report["totals"]["purchases"], summary["purchases"]);
    assert_eq!(report["machines"].as_array().unwrap().len(), 4);
    let sales_won: i64 = report["sales"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["won"].as_i64().unwrap())
        .sum();
    assert_eq!(Some(sales_won), report["totals"]["sales_won"].as_i64());

    let partial = vendctl(&["replay", "--data", data, "--json", "--until-gseq", "500"]);
    let partial: serde_json::Value = serde_json::from_str(&stdout(&partial)).unwrap();
    assert_eq!(partial["entries_applied"].as_u64(), Some(500));

    let early = vendctl(&["replay", "--data", data, "--json", "--until", "2026-01-01"]);
    assert!(
        early.status.success(),
        "{}",
        String::from_utf8_lossy(&early.stderr)
    );
    let early: serde_json::Value = serde_json::from_str(&stdout(&early)).unwrap();
    let early_applied = early["entries_applied"].as_u64().unwrap();
    assert!(
        early_applied > 0 && early_applied < events,
        "{early_applied}"
    );

    let dump = vendctl(&["dump", "--data", data, "--format", "jsonl"]);
    assert!(dump.status.success());
    let lines: Vec<serde_json::Value> = stdout(&dump)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, events);
    assert_eq!(lines[0]["gseq"], 1);
    assert_eq!(lines[0]["kind"], "installed");
    assert_eq!(lines[0]["machine_seq"], 1);
    let purchase = lines
        .iter()
        .find(|l| l["kind"] == "product_purchased")
        .unwrap();
    assert!(purchase["amount"].as_i64().unwrap() > 0);
    assert_eq!(
        lines.last().unwrap()["hash"].as_str(),
        summary["head_hash"].as_str()
    );
}

#[test]
fn the_same_seed_writes_the_same_log() {
    let dir = tempfile::tempdir().unwrap();
    let a = simulate(&dir.path().join("a"), "2", "500", "5");
    let b = simulate(&dir.path().join("b"), "2", "500", "5");
    // Keys differ per directory, so hashes differ; the business content must not.
    for field in [
        "events",
        "purchases",
        "cancels",
        "rejected_inserts",
        "collections",
    ] {
        assert_eq!(a[field], b[field], "{field}");
    }
}

#[test]
fn verify_names_a_tampered_entry_and_rejects_a_wrong_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fleet");
    simulate(&data, "2", "400", "3");
    {
        let keyring = Keyring::open(&data.join("keys")).unwrap();
        let mut store = LogStore::open(
            &data.join("log"),
            keyring.store_key(),
            OpenOptions::default(),
        )
        .unwrap();
        let (first, mut chunk) = store.raw_chunk(300).unwrap().unwrap();
        let middle = chunk.len() / 2;
        chunk[middle] ^= 0x20;
        store.overwrite_raw_chunk(first, Some(&chunk)).unwrap();
    }
    let data_str = data.to_str().unwrap();
    let out = vendctl(&["verify", "--data", data_str]);
    assert!(!out.status.success());
    let text = stdout(&out);
    assert!(text.starts_with("FAILED: entry gseq "), "{text}");
    assert!(text.contains("cannot be decrypted"), "{text}");

    let other_keys = dir.path().join("other-keys");
    let init = vendctl(&["keys", "init", "--dir", other_keys.to_str().unwrap()]);
    assert!(init.status.success());
    let out = vendctl(&[
        "verify",
        "--data",
        data_str,
        "--keys",
        other_keys.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong key"), "{err}");
}

#[test]
fn refuses_to_simulate_over_an_existing_log_and_reports_missing_logs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fleet");
    simulate(&data, "1", "50", "1");
    let out = vendctl(&[
        "simulate",
        "--offline",
        "--data",
        data.to_str().unwrap(),
        "--machines",
        "1",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a log"));
    // The tools make no key: a missing one is named, with the command that
    // makes it, and nothing is created.
    let nothing = dir.path().join("nothing");
    for command in ["verify", "replay", "dump"] {
        let out = vendctl(&[command, "--data", nothing.to_str().unwrap()]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{}/keys/store.key is missing", nothing.display())),
            "{err}"
        );
        assert!(
            err.contains(&format!(
                "vendctl keys init --dir {}/keys",
                nothing.display()
            )),
            "{err}"
        );
        assert!(!nothing.exists(), "{command} created {}", nothing.display());
    }
}

/// Every file under `dir` with its size and modification time.
fn files_of(dir: &Path) -> std::collections::BTreeMap<String, (u64, std::time::SystemTime)> {
    let mut files = std::collections::BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let entry = entry.unwrap();
            let metadata = entry.metadata().unwrap();
            if metadata.is_dir() {
                pending.push(entry.path());
            } else {
                let name = entry
                    .path()
                    .strip_prefix(dir)
                    .unwrap()
                    .display()
                    .to_string();
                files.insert(name, (metadata.len(), metadata.modified().unwrap()));
            }
        }
    }
    files
}

#[test]
fn verify_replay_and_dump_leave_the_data_directory_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fleet");
    let summary = simulate(&data, "2", "300", "4");
    let data_str = data.to_str().unwrap();
    let before = files_of(&data);
    // Modification times have a coarse granularity on some file systems:
    // let any rewrite show as a later time.
    std::thread::sleep(std::time::Duration::from_millis(20));
    for args in [
        vec!["verify", "--data", data_str],
        vec!["replay", "--data", data_str, "--json"],
        vec!["dump", "--data", data_str],
    ] {
        let out = vendctl(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            files_of(&data),
            before,
            "{args:?} changed the data directory"
        );
    }
    let verify = vendctl(&["verify", "--data", data_str]);
    assert!(
        stdout(&verify).contains(summary["head_hash"].as_str().unwrap()),
        "{}",
        stdout(&verify)
    );
}

#[test]
fn verify_reads_a_ledger_that_another_process_holds_open() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fleet");
    let summary = simulate(&data, "2", "300", "6");
    let keyring = Keyring::open(&data.join("keys")).unwrap();
    // This test process is the writer that owns the log (as a running
    // replica would be); vendctl is another process.
    let held = LogStore::open(
        &data.join("log"),
        keyring.store_key(),
        OpenOptions::default(),
    )
    .unwrap();
    let out = vendctl(&["verify", "--data", data.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(summary["head_hash"].as_str().unwrap()),
        "{text}"
    );
    let dump = vendctl(&["dump", "--data", data.to_str().unwrap()]);
    assert!(dump.status.success());
    assert_eq!(
        stdout(&dump).lines().count() as u64,
        summary["events"].as_u64().unwrap()
    );
    drop(held);
}

/// An error says its cause once: RocksDB's message used to follow itself
/// (`storage error: X: X`), because the error also returned it as its
/// source and `vendctl` prints the whole chain.
#[test]
fn a_broken_log_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fleet");
    simulate(&data, "1", "30", "2");
    std::fs::write(data.join("log/CURRENT"), "garbage\n").unwrap();
    let out = vendctl(&["verify", "--data", data.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "vendctl: opening the log at {}/log: storage error: Corruption",
            data.display()
        )),
        "{err}"
    );
    assert_eq!(err.matches("CURRENT file corrupted").count(), 1, "{err}");
}

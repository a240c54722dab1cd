//! Archiving half of a fleet log changes nothing anyone reads: `verify`
//! checks archive and live log as one chain, `replay` as of a point inside
//! the archive and after it, `dump` and `export` give the bytes they gave
//! before. A flipped byte or a missing archive file is reported by name,
//! and `archive restore` brings the segments back.
//!
//! In a cluster, each replica archives on its own schedule, and a replica
//! that starts from nothing catches up across the range its peers have
//! archived (served from their archive files).
//!
//! The log has 200,000 events here (`ARCHIVE_TEST_EVENTS` overrides it);
//! the million-event run of issue 14 was made by hand with
//! `ARCHIVE_TEST_EVENTS=1000000` (BENCHMARKS.md, "Archive").

mod common;

use common::web::{Browser, log_in_when_ready, user_add};
use common::{
    Cluster, base_port, check_every_replica_holds, finish_fleet, init_cluster, primaries,
    start_fleet, vendctl,
};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

const MACHINES: u64 = 50;
const EVENTS_DEFAULT: u64 = 200_000;

fn events() -> u64 {
    std::env::var("ARCHIVE_TEST_EVENTS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(EVENTS_DEFAULT)
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "vendctl failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("vendctl prints UTF-8")
}

fn failed(out: Output) -> String {
    assert!(
        !out.status.success(),
        "vendctl should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A replay's JSON without what depends on the run (timings) or on where
/// it started (entries applied: a replay past the archive starts from the
/// checkpoint at the cut).
fn replay(data: &str, limit: &[&str]) -> Value {
    let args = [&["replay", "--data", data, "--json"], limit].concat();
    let mut report: Value = serde_json::from_str(&ok(vendctl(&args))).unwrap();
    let fields = report.as_object_mut().unwrap();
    for varying in ["seconds", "events_per_second", "entries_applied"] {
        assert!(fields.remove(varying).is_some(), "{varying}");
    }
    report
}

/// Everything a reader sees of the log.
#[derive(Debug, PartialEq)]
struct Reads {
    dump: String,
    inside: Value,
    after: Value,
    by_time: Value,
    now: Value,
    export: String,
}

fn reads(data: &str, inside: u64, after: u64) -> Reads {
    let inside = inside.to_string();
    let after = after.to_string();
    Reads {
        dump: ok(vendctl(&["dump", "--data", data])),
        inside: replay(data, &["--until-gseq", &inside]),
        after: replay(data, &["--until-gseq", &after]),
        by_time: replay(data, &["--until", "2026-01-01T12:00:00+09:00"]),
        now: replay(data, &[]),
        export: ok(vendctl(&["export", "--data", data, "--format", "csv"])),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn an_archived_half_reads_as_before_damage_is_named_and_restore_brings_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let data_path = dir.path().join("fleet");
    let data = data_path.to_str().unwrap();
    let per_machine = (events() / MACHINES).to_string();
    ok(vendctl(&[
        "simulate",
        "--offline",
        "--data",
        data,
        "--machines",
        &MACHINES.to_string(),
        "--events-per-machine",
        &per_machine,
    ]));
    let verified = ok(vendctl(&["verify", "--data", data]));
    assert!(verified.starts_with("ok: "), "{verified}");
    let head: u64 = verified["ok: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .replace(',', "")
        .parse()
        .unwrap();
    let half = head / 2;
    let before = reads(data, half / 2, half + half / 2);

    let archived = ok(vendctl(&[
        "archive",
        "--data",
        data,
        "--before-gseq",
        &half.to_string(),
    ]));
    assert!(archived.contains("archived "), "{archived}");
    let archive = data_path.join("archive");
    let files: Vec<_> = std::fs::read_dir(&archive).unwrap().collect();
    assert!(files.len() >= 2, "{archived}");
    let verified = ok(vendctl(&["verify", "--data", data]));
    assert!(verified.contains("archive files under"), "{verified}");
    assert_eq!(reads(data, half / 2, half + half / 2), before);
    // Nothing more to archive before the same cutoff.
    let again = ok(vendctl(&[
        "archive",
        "--data",
        data,
        "--before-gseq",
        &half.to_string(),
    ]));
    assert!(again.starts_with("nothing to archive"), "{again}");

    damage_is_named(&data_path, dir.path());

    let restored = ok(vendctl(&["archive", "restore", "--data", data]));
    assert!(restored.starts_with("restored "), "{restored}");
    std::fs::remove_dir_all(&archive).unwrap();
    let verified = ok(vendctl(&["verify", "--data", data]));
    assert!(!verified.contains("archive"), "{verified}");
    assert_eq!(ok(vendctl(&["dump", "--data", data])), before.dump);
}

/// On copies of the data directory: a flipped byte, then a missing file.
fn damage_is_named(data: &Path, scratch: &Path) {
    let copy = scratch.join("damaged");
    copy_dir(data, &copy);
    let copy_text = copy.to_str().unwrap();
    let victim = copy.join("archive").join("segment-000000000001.vla");
    let mut bytes = std::fs::read(&victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x04;
    std::fs::write(&victim, &bytes).unwrap();
    let report = failed(vendctl(&["verify", "--data", copy_text]));
    assert!(
        report.contains(&victim.display().to_string()) && report.contains("damaged"),
        "{report}"
    );
    std::fs::remove_file(&victim).unwrap();
    let report = failed(vendctl(&["verify", "--data", copy_text]));
    assert!(
        report.contains(&victim.display().to_string()) && report.contains("missing"),
        "{report}"
    );
    let report = failed(vendctl(&["dump", "--data", copy_text]));
    assert!(report.contains("segment-000000000001.vla"), "{report}");
    // The live part still serves a replay as of now, from the checkpoint.
    let now = ok(vendctl(&["replay", "--data", copy_text, "--json"]));
    assert!(now.contains("as_of_gseq"), "{now}");
    // The archive directory named on the command line wins.
    let report = ok(vendctl(&[
        "verify",
        "--data",
        copy_text,
        "--archive",
        data.join("archive").to_str().unwrap(),
    ]));
    assert!(report.starts_with("ok: "), "{report}");
}

#[test]
fn archive_refuses_what_it_cannot_do_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fleet");
    let data = data.to_str().unwrap();
    ok(vendctl(&[
        "simulate",
        "--offline",
        "--data",
        data,
        "--machines",
        "2",
        "--events-per-machine",
        "5000",
    ]));
    // A log a process holds open (a running replica) is refused.
    {
        let keyring = ledger::keys::Keyring::open(&dir.path().join("fleet/keys")).unwrap();
        let log = dir.path().join("fleet/log");
        let _held =
            ledger::store::LogStore::open(&log, keyring.store_key(), Default::default()).unwrap();
        let report = failed(vendctl(&[
            "archive",
            "--data",
            data,
            "--before-gseq",
            "4097",
        ]));
        assert!(report.contains("open in another process"), "{report}");
    }
    let nothing = ok(vendctl(&[
        "archive",
        "--data",
        data,
        "--before",
        "2000-01-01",
    ]));
    assert!(nothing.starts_with("nothing to archive"), "{nothing}");
    let report = failed(vendctl(&["archive", "--data", data]));
    assert!(report.contains("--before"), "{report}");
    let elsewhere = dir.path().join("cold");
    ok(vendctl(&[
        "archive",
        "--data",
        data,
        "--before-gseq",
        "4097",
        "--to",
        elsewhere.to_str().unwrap(),
    ]));
    let report = failed(vendctl(&[
        "archive",
        "--data",
        data,
        "--before-gseq",
        "8193",
    ]));
    assert!(report.contains("archive to the same directory"), "{report}");
    let restored = ok(vendctl(&["archive", "restore", "--data", data]));
    assert!(restored.starts_with("restored 1 segments"), "{restored}");
    let nothing = ok(vendctl(&["archive", "restore", "--data", data]));
    assert!(nothing.starts_with("nothing to restore"), "{nothing}");
}

/// A follower is wiped while stopped, after the primary has archived most
/// of the log, and catches up from the first entry.
#[test]
fn a_replica_starting_from_nothing_catches_up_across_archived_segments() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("cluster");
    let base = base_port();
    let topology = init_cluster(&dir, base);
    for path in &topology.configs {
        let mut config = replica::config::ReplicaConfig::load(path).unwrap();
        config.archive.keep_segments = Some(1);
        config.archive.every_s = Some(1);
        std::fs::write(path, config.to_toml()).unwrap();
    }
    let mut cluster = Cluster::start(&dir, topology);
    // Whichever replica leads archives; one of the others is wiped.
    let status = cluster.wait_for("a primary", Duration::from_secs(20), |s| {
        primaries(s).len() == 1
    });
    let primary = primaries(&status)[0].0;
    let wiped = (primary + 2) % 3;
    // About 16,000 entries: three closed segments of 4,096, two archived.
    let (machines, per_machine) = (8, 2_000);
    let fleet = start_fleet(&dir, machines, per_machine, 240);
    let summary = finish_fleet(fleet, u64::from(machines) * per_machine);
    let archived = dir.join(format!(
        "replica-{}/archive/segment-000000000001.vla",
        primary + 1
    ));
    cluster.wait_for(
        "the primary to archive two segments",
        Duration::from_secs(30),
        |_| archived.is_file(),
    );
    let status = cluster.status();
    let through = status[primary]["archived_through"].as_u64();
    assert!(
        through.is_some_and(|gseq| gseq >= 8_192),
        "the primary's status names what it archived: {}",
        status[primary]
    );
    audit_pages_reach_into_the_archive(&dir, base, primary);
    cluster.stop(wiped);
    std::fs::remove_dir_all(dir.join(format!("replica-{}", wiped + 1))).unwrap();
    cluster.spawn(wiped);
    cluster.wait_for(
        "the wiped replica to catch up",
        Duration::from_secs(90),
        |s| {
            s.len() == 3
                && s.iter().all(|r: &Value| {
                    r["reachable"] == true && r["tip"] == s[0]["tip"] && r["commit"] == s[0]["tip"]
                })
        },
    );
    cluster.stop_all();
    check_every_replica_holds(&dir, &summary);
    let primary_log = std::fs::read_to_string(dir.join(format!("replica-{}.log", primary + 1)))
        .unwrap_or_default();
    assert!(primary_log.contains("archived a segment"), "{primary_log}");
}

/// An auditor on the primary's dashboard pages back into the archived
/// range: the audit log's entries below gseq 101 (the first segment) and
/// one machine's entries there (through its index) are read from the
/// archive file, not shown as unreadable.
fn audit_pages_reach_into_the_archive(dir: &Path, base: u16, primary: usize) {
    user_add(dir, "lee", "auditor", "audit-pass-2!");
    let offset = u16::try_from(primary).unwrap();
    let primary = SocketAddr::from(([127, 0, 0, 1], base + 21 + offset));
    let mut auditor = Browser::new(primary);
    log_in_when_ready(&mut auditor, "lee", "audit-pass-2!");
    for query in ["before=101", "machine=VM-001&before=3000"] {
        let page = auditor.json(&format!("/api/v1/audit?{query}"));
        let entries = page["entries"].as_array().expect("entries");
        assert!(!entries.is_empty(), "{query}: {page}");
        for entry in entries {
            let gseq = entry["gseq"].as_u64().unwrap();
            assert!(gseq < 3_000, "{query}: {entry}");
            let kind = entry["kind"]["type"].as_str().unwrap_or_default();
            assert!(!kind.is_empty() && kind != "unreadable", "{query}: {entry}");
        }
        let html = auditor.get(&format!("/audit?{query}"));
        assert_eq!(html.status, 200, "{query}: {}", html.body);
    }
    let replication = auditor.get("/replication");
    assert!(
        replication.body.contains("archived through"),
        "the replication page says what is archived: {}",
        replication.body
    );
}

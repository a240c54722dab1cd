//! A replica whose log files are damaged while it is stopped — 8 bytes
//! flipped in its WAL, its WAL cut in half, its MANIFEST cut in half, a
//! byte flipped in a table file — must never serve the damage silently.
//! Each time: `vendctl verify` reports the damaged log as a failure; the
//! replica says so in its log and status, and neither stands nor
//! acknowledges while it repairs (with the primary stopped, the cluster has
//! no primary rather than one elected by a log that lost entries: the sync
//! never stands, and the damaged replica votes only for a candidate holding
//! everything it promised); once the primary is
//! back it repairs from its peers, and every acknowledged event is on all
//! three replicas exactly once.

mod common;

use common::{
    Cluster, base_port, check_every_replica_holds, finish_fleet, init_cluster, primaries,
    start_fleet, vendctl,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MACHINES: u32 = 4;
const EVENTS_PER_MACHINE: u64 = 600;
/// Small write buffers, so the log has table files and a WAL to damage.
const MEMTABLE_MIB: u32 = 1;
/// The damaged replica (the backup, which could otherwise stand).
const DAMAGED: usize = 2;
/// The primary (the preferred one) is stopped while the damage is found.
const PRIMARY: usize = 0;

#[derive(Clone, Copy, Debug)]
enum Damage {
    FlipWal,
    CutWal,
    CutManifest,
    FlipTable,
}

/// The files of one kind in a RocksDB directory, largest first.
fn files(log: &Path, matches: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(log)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| matches(&e.file_name().to_string_lossy()))
        .map(|e| (e.metadata().map_or(0, |m| m.len()), e.path()))
        .filter(|(len, _)| *len > 0)
        .collect();
    found.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
    found.into_iter().map(|(_, path)| path).collect()
}

fn flip(path: &Path, count: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    for byte in &mut bytes[middle..middle + count] {
        *byte ^= 0xff;
    }
    std::fs::write(path, bytes).unwrap();
}

fn cut_in_half(path: &Path) {
    let len = std::fs::metadata(path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_len(len / 2).unwrap();
}

fn apply(damage: Damage, log: &Path) -> PathBuf {
    let wal = || files(log, |name| name.ends_with(".log"));
    let target = match damage {
        Damage::FlipWal | Damage::CutWal => wal().into_iter().next(),
        Damage::CutManifest => files(log, |name| name.starts_with("MANIFEST-"))
            .into_iter()
            .next(),
        Damage::FlipTable => files(log, |name| name.ends_with(".sst")).into_iter().next(),
    }
    .unwrap_or_else(|| {
        let names: Vec<String> = std::fs::read_dir(log)
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        panic!(
            "no file to damage for {damage:?} in {}: {names:?}",
            log.display()
        )
    });
    match damage {
        Damage::FlipWal => flip(&target, 8),
        Damage::FlipTable => flip(&target, 1),
        Damage::CutWal | Damage::CutManifest => cut_in_half(&target),
    }
    target
}

fn replica_log(dir: &Path, index: usize) -> String {
    std::fs::read_to_string(dir.join(format!("replica-{}.log", index + 1))).unwrap_or_default()
}

/// Damages the stopped replica, restarts it alone with the sync replica,
/// checks that it repairs instead of serving, then brings the primary back.
fn damage_and_repair(cluster: &mut Cluster, dir: &Path, damage: Damage) {
    match damage {
        // A replica stopped cleanly flushes its log to table files and
        // leaves an empty WAL: the WAL is damaged after a crash.
        Damage::FlipWal | Damage::CutWal => cluster.kill(DAMAGED),
        Damage::CutManifest | Damage::FlipTable => cluster.stop(DAMAGED),
    }
    cluster.stop(PRIMARY);
    let data = dir.join(format!("replica-{}", DAMAGED + 1));
    let damaged = apply(damage, &data.join("log"));
    eprintln!("{damage:?}: damaged {}", damaged.display());
    let verify = vendctl(&[
        "verify",
        "--data",
        data.to_str().unwrap(),
        "--keys",
        dir.join("keys").to_str().unwrap(),
    ]);
    let verdict = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    eprintln!("{damage:?}: vendctl verify says: {}", verdict.trim());
    assert!(
        !verify.status.success(),
        "{damage:?}: verify must fail: {verdict}"
    );
    let logged_before = replica_log(dir, DAMAGED).len();
    cluster.spawn(DAMAGED);
    // The damaged replica repairs, and while it does no primary appears:
    // it does not stand, and the sync never does.
    let status = cluster.wait_for(
        "the damaged replica to repair",
        Duration::from_secs(30),
        |s| {
            s.get(DAMAGED)
                .is_some_and(|r| r["repairing_until"].is_u64())
        },
    );
    eprintln!(
        "{damage:?}: repairing until {}",
        status[DAMAGED]["repairing_until"]
    );
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        let status = cluster.status();
        assert!(
            primaries(&status).is_empty(),
            "{damage:?}: no primary while repairing: {status:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let told = &replica_log(dir, DAMAGED)[logged_before..];
    assert!(
        told.contains("log is damaged") || told.contains("had promised up to"),
        "{damage:?}: the operator is told:\n{told}"
    );
    cluster.spawn(PRIMARY);
    cluster.wait_for(
        "the damaged replica to catch up",
        Duration::from_secs(60),
        |s| {
            s.len() == 3
                && s.iter().all(|r: &Value| {
                    r["reachable"] == true
                        && r["repairing_until"].is_null()
                        && r["tip"] == s[1]["tip"]
                        && r["commit"] == s[1]["tip"]
                })
        },
    );
}

#[test]
fn a_damaged_replica_repairs_before_it_stands_and_loses_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("cluster");
    let topology = init_cluster(&dir, base_port());
    for path in &topology.configs {
        let mut config = replica::config::ReplicaConfig::load(path).unwrap();
        config.log_memtable_mib = MEMTABLE_MIB;
        std::fs::write(path, config.to_toml()).unwrap();
    }
    let mut cluster = Cluster::start(&dir, topology);
    cluster.wait_for("replica-1 to lead", Duration::from_secs(20), |s| {
        primaries(s).first().is_some_and(|&(i, _)| i == PRIMARY)
    });
    let fleet = start_fleet(&dir, MACHINES, EVENTS_PER_MACHINE, 240);
    let summary = finish_fleet(fleet, u64::from(MACHINES) * EVENTS_PER_MACHINE);
    for damage in [
        Damage::CutWal,
        Damage::FlipWal,
        Damage::CutManifest,
        Damage::FlipTable,
    ] {
        damage_and_repair(&mut cluster, &dir, damage);
    }
    cluster.stop_all();
    check_every_replica_holds(&dir, &summary);
}

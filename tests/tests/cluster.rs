//! Real processes: three `vend-replica`s, a simulated fleet speaking the
//! real link (`vendctl simulate --cluster`), the primary killed with
//! SIGKILL in the middle of the load and restarted later. Afterwards every
//! acknowledged event is on every replica exactly once and `vendctl verify`
//! passes on each replica's log.
//!
//! Once on loopback with the udp transport (runs everywhere), once with
//! the raw transport in three network namespaces on a bridge (needs root;
//! skipped with a message otherwise).

mod common;

use common::{
    Cluster, Topology, base_port, check_every_replica_holds, converge_and_stop, finish_fleet,
    init_cluster, primaries, start_fleet, vendctl,
};
use replica::config::{LocalClusterPlan, PeerConfig, ReplicaConfig};
use replica::transport::TransportKind;
use serde_json::{Value, json};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MACHINES: u32 = 4;
const EVENTS_PER_MACHINE: u64 = 1_500;

fn run_failover_scenario(dir: &Path, topology: Topology) {
    let mut cluster = Cluster::start(dir, topology);
    let status = cluster.wait_for("a primary", Duration::from_secs(20), |s| {
        primaries(s).len() == 1
    });
    let (primary, epoch) = primaries(&status)[0];
    let fleet = start_fleet(dir, MACHINES, EVENTS_PER_MACHINE, 240);

    // Kill the primary while the fleet is writing.
    cluster.wait_for("the fleet to be writing", Duration::from_secs(60), |s| {
        s.get(primary)
            .and_then(|p| p["tip"].as_u64())
            .is_some_and(|tip| tip > 1_000)
    });
    cluster.kill(primary);
    let killed_at = Instant::now();
    let status = cluster.wait_for("a new primary", Duration::from_secs(20), |s| {
        primaries(s).iter().any(|&(i, e)| i != primary && e > epoch)
    });
    eprintln!(
        "replica-{} took over {} ms after replica-{} was killed",
        primaries(&status)[0].0 + 1,
        killed_at.elapsed().as_millis(),
        primary + 1
    );
    std::thread::sleep(Duration::from_secs(2));
    cluster.spawn(primary);

    let summary = finish_fleet(fleet, u64::from(MACHINES) * EVENTS_PER_MACHINE);
    assert!(
        summary["failovers_seen"].as_u64().unwrap() >= 1,
        "machines saw the failover: {summary}"
    );

    // Everything converges: same tip everywhere, all committed.
    converge_and_stop(&mut cluster);
    check_every_replica_holds(dir, &summary);
}

/// Starts a cluster in `dir`, waits for its primary, and runs a fleet of
/// machines with their events in memory against it (`args` added to
/// `simulate`); returns the cluster, the fleet's summary and its stderr.
fn fleet_on_a_new_cluster(dir: &Path, args: &[&str]) -> (Cluster, Value, String) {
    let topology = init_cluster(dir, base_port());
    let cluster = Cluster::start(dir, topology);
    cluster.wait_for("a primary", Duration::from_secs(20), |s| {
        primaries(s).len() == 1
    });
    let mut command = vec!["simulate", "--cluster", dir.to_str().unwrap()];
    command.extend(["--memory-ledgers", "--timeout-s", "120"]);
    command.extend(args);
    let fleet = vendctl(&command);
    let stderr = String::from_utf8_lossy(&fleet.stderr).into_owned();
    assert!(fleet.status.success(), "{stderr}");
    let summary: Value = serde_json::from_slice(&fleet.stdout).unwrap();
    (cluster, summary, stderr)
}

/// The load generator's fleet-scale mode: hundreds of machines with their
/// events in memory, paced to a fleet-wide rate for a fixed time, a share
/// of them going dark together; every event is still acknowledged and
/// held by every replica exactly once.
#[test]
fn a_timed_paced_fleet_with_dark_spells_is_all_acknowledged() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("cluster");
    let (mut cluster, summary, stderr) = fleet_on_a_new_cluster(
        &dir,
        &[
            "--machines",
            "300",
            "--rate",
            "1500",
            "--duration",
            "12",
            "--dark-percent",
            "20",
        ],
    );
    assert_eq!(summary["machines"], 300, "{stderr}");
    assert_eq!(summary["machine_ledgers"], "memory");
    assert_eq!(summary["events_acked"], summary["events"], "{stderr}");
    assert!(summary["events"].as_u64().unwrap() > 1_000, "{stderr}");
    // The spell 10 s in takes about a fifth of the machines at once.
    assert!(
        summary["offline_periods"].as_u64().unwrap() >= 20,
        "{stderr}"
    );
    let (p50, p99) = (
        summary["ack_p50_ms"].as_f64().unwrap(),
        summary["ack_p99_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p99 >= p50, "{stderr}");
    // The decisions of the second half of the 12 s are measured apart.
    let (late_p50, late_p99, late_max) = (
        summary["second_half_ack_p50_ms"].as_f64().unwrap(),
        summary["second_half_ack_p99_ms"].as_f64().unwrap(),
        summary["second_half_ack_max_ms"].as_f64().unwrap(),
    );
    assert!(late_p50 > 0.0 && late_p99 >= late_p50, "{stderr}");
    assert!(late_max <= summary["ack_max_ms"].as_f64().unwrap());
    // The decisions that waited out the spell are counted apart from the
    // commit latency (sixty machines dark for 0.3 to 1.5 s, selling on).
    let outage_p50 = summary["outage_ack_p50_ms"].as_f64().unwrap();
    assert!(summary["outage_events"].as_u64().unwrap() > 0, "{stderr}");
    assert!(outage_p50 > 0.0, "{stderr}");
    assert!(summary["outage_ack_max_ms"].as_f64().unwrap() >= outage_p50);
    converge_and_stop(&mut cluster);
    check_every_replica_holds(&dir, &summary);
}

/// `--idle`, for measuring what idle connections cost: every machine
/// installs itself and sells nothing more, holds its connection until the
/// duration is over, and its installation is acknowledged.
#[test]
fn an_idle_fleet_installs_and_then_only_holds_its_connections() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("cluster");
    let (mut cluster, summary, stderr) =
        fleet_on_a_new_cluster(&dir, &["--machines", "40", "--idle", "--duration", "3"]);
    let per_machine: Vec<u64> = summary["per_machine"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["events"].as_u64().unwrap())
        .collect();
    assert_eq!(per_machine.len(), 40, "{stderr}");
    // Every machine's installation is the same decision, and nothing else
    // was sold.
    assert!(per_machine[0] > 0, "{stderr}");
    assert!(
        per_machine.iter().all(|&events| events == per_machine[0]),
        "{per_machine:?}"
    );
    assert_eq!(summary["events"], per_machine[0] * 40, "{stderr}");
    assert_eq!(summary["events_acked"], summary["events"], "{stderr}");
    assert_eq!(summary["offline_periods"], 0, "{stderr}");
    // Held until the duration was over, not ended at the acknowledgement.
    assert!(summary["seconds"].as_f64().unwrap() >= 3.0, "{stderr}");
    converge_and_stop(&mut cluster);
    check_every_replica_holds(&dir, &summary);
}

#[test]
fn udp_on_loopback_survives_a_killed_primary() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("cluster");
    let topology = init_cluster(&dir, base_port());
    run_failover_scenario(&dir, topology);
}

/// Three namespaces on a bridge, removed again on drop.
struct Namespaces {
    names: Vec<String>,
    bridge: String,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Namespaces {
    fn create(tag: u32, subnet: u8) -> Option<Namespaces> {
        let bridge = format!("vlb{tag}");
        let names: Vec<String> = (1..=3).map(|i| format!("vl{tag}-{i}")).collect();
        let made = Namespaces {
            names: names.clone(),
            bridge: bridge.clone(),
        };
        let root_ip = format!("10.77.{subnet}.254/24");
        let ok = ip(&["link", "add", &bridge, "type", "bridge"])
            && ip(&["addr", "add", &root_ip, "dev", &bridge])
            && ip(&["link", "set", &bridge, "up"]);
        if !ok {
            return None;
        }
        for (i, name) in names.iter().enumerate() {
            let host = format!("vh{tag}{i}");
            let inside = format!("vn{tag}{i}");
            let address = format!("10.77.{subnet}.{}/24", i + 1);
            let ok = ip(&["netns", "add", name])
                && ip(&[
                    "link", "add", &host, "type", "veth", "peer", "name", &inside,
                ])
                && ip(&["link", "set", &inside, "netns", name])
                && ip(&["link", "set", &host, "master", &bridge])
                && ip(&["link", "set", &host, "up"])
                && ip(&[
                    "netns", "exec", name, "ip", "addr", "add", &address, "dev", &inside,
                ])
                && ip(&["netns", "exec", name, "ip", "link", "set", &inside, "up"])
                && ip(&["netns", "exec", name, "ip", "link", "set", "lo", "up"]);
            if !ok {
                return None;
            }
        }
        Some(made)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            ip(&["netns", "delete", name]);
        }
        ip(&["link", "delete", &self.bridge]);
    }
}

#[test]
fn raw_sockets_in_network_namespaces_survive_a_killed_primary() {
    if !replica::transport::raw_sockets_permitted() || !ip(&["netns", "list"]) {
        eprintln!(
            "skipping: the raw transport in network namespaces needs root (CAP_NET_RAW, CAP_NET_ADMIN) and iproute2"
        );
        return;
    }
    let tag = std::process::id() % 10_000;
    let subnet = u8::try_from(std::process::id() % 200).unwrap() + 20;
    let Some(namespaces) = Namespaces::create(tag, subnet) else {
        eprintln!("skipping: could not create network namespaces and a bridge here");
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("cluster");
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys");
    ledger::keys::create_cluster_keys(&keys).unwrap();
    let address = |i: u8| Ipv4Addr::new(10, 77, subnet, i);
    // Every replica has its own namespace, so all use the same ports.
    let (machine_port, replication_port, status_port) = (7_101, 7_111, 7_121);
    let plan = LocalClusterPlan {
        base_port: 7_100,
        host: Ipv4Addr::LOCALHOST,
    };
    let mut configs = Vec::new();
    let mut replicas = Vec::new();
    for id in 1..=3u8 {
        let mut config: ReplicaConfig = plan.config(id, 4_242, &dir, TransportKind::Raw);
        config.machine_listen = SocketAddrV4::new(address(id), machine_port);
        config.replication_listen = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, replication_port);
        config.raw_source = Some(SocketAddrV4::new(address(id), replication_port));
        config.broadcast = Some(SocketAddrV4::new(
            Ipv4Addr::new(10, 77, subnet, 255),
            replication_port,
        ));
        config.status_listen = SocketAddrV4::new(address(id), status_port);
        config.peers = config
            .peers
            .iter()
            .map(|p| PeerConfig {
                replication_addr: SocketAddrV4::new(address(p.id), replication_port),
                machine_addr: SocketAddrV4::new(address(p.id), machine_port),
                ..p.clone()
            })
            .collect();
        config.validate().unwrap();
        let path = dir.join(format!("replica-{id}.toml"));
        std::fs::write(&path, config.to_toml()).unwrap();
        replicas.push(json!({
            "id": config.name,
            "pid": null,
            "config": path,
            "data_dir": config.data_dir,
            "machine_addr": config.machine_listen.to_string(),
            "replication_addr": SocketAddrV4::new(address(id), replication_port).to_string(),
            "dashboard": config.status_listen.to_string(),
        }));
        configs.push(path);
    }
    let file =
        json!({ "cluster_id": 4_242, "transport": "raw", "keys_dir": keys, "replicas": replicas });
    std::fs::write(
        dir.join("cluster.json"),
        serde_json::to_string_pretty(&file).unwrap(),
    )
    .unwrap();
    let prefixes = namespaces
        .names
        .iter()
        .map(|name| {
            vec![
                "ip".to_owned(),
                "netns".to_owned(),
                "exec".to_owned(),
                name.clone(),
            ]
        })
        .collect();
    run_failover_scenario(&dir, Topology { prefixes, configs });
    drop(namespaces);
}

/// `vendctl bench-replication` end to end on a small load: four fresh
/// clusters (saturated, paced, with injected datagram loss, with the
/// primary killed) each run until every event is acknowledged. Checks what
/// the figures must show, not how fast: loss was injected and repaired, and
/// the killed primary's successor acknowledged writes.
#[test]
fn the_replication_benchmark_runs_through_loss_and_a_killed_primary() {
    let temp = tempfile::tempdir().unwrap();
    let port = base_port().to_string();
    let output = vendctl(&[
        "bench-replication",
        "--machines",
        "3",
        "--events",
        "900",
        "--rate",
        "300",
        "--paced-seconds",
        "2",
        "--loss-percent",
        "20",
        "--base-port",
        &port,
        "--timeout-s",
        "120",
        "--dir",
        temp.path().to_str().unwrap(),
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench-replication failed: {stderr}"
    );
    let figures: Value = serde_json::from_slice(&output.stdout).expect("JSON figures");
    let runs = figures["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 4, "{figures}");
    // The names the side-by-side harness (`../shared/peers/vendledger/bench`)
    // maps to its modes: one loss run keeps the plain name.
    let names: Vec<&str> = runs.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "saturated",
            "paced",
            "saturated with loss",
            "paced, primary killed"
        ]
    );
    for run in runs {
        assert!(run["events"].as_u64().unwrap() >= 600, "{run}");
        assert!(run["committed_events_per_second"].as_f64().unwrap() > 0.0);
    }
    let lossy = &runs[2];
    assert_eq!(lossy["drop_received_percent"], 20);
    assert!(
        lossy["datagrams_dropped_by_injection"].as_u64().unwrap() > 0,
        "{lossy}"
    );
    assert!(lossy["naks_sent"].as_u64().unwrap() > 0, "{lossy}");
    assert!(
        lossy["records_retransmitted"].as_u64().unwrap() > 0,
        "{lossy}"
    );
    assert!(runs[3]["failover_ms"].as_f64().is_some(), "{}", runs[3]);
    assert!(runs[1]["ack_latency_ms_p99"].as_f64().unwrap() > 0.0);
}

/// A backup restarted far behind (more than one catch-up segment, 4,096
/// records) while the primary dies at once: the two live replicas are the
/// backup and the sync replica, which never stands. The backup must catch
/// up from the sync across the whole distance and win, within the normal
/// failover time; it used to receive the same first segment again and
/// again, leaving the cluster without a primary until the killed replica
/// came back.
#[test]
fn two_live_replicas_elect_a_primary_whatever_the_distance() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("cluster");
    let topology = init_cluster(&dir, base_port());
    let mut cluster = Cluster::start(&dir, topology);
    let status = cluster.wait_for("replica-1 to lead", Duration::from_secs(20), |s| {
        primaries(s).first().is_some_and(|&(i, _)| i == 0)
    });
    let (_, epoch) = primaries(&status)[0];
    // The backup goes down; the fleet writes three segments' worth.
    cluster.kill(2);
    const MACHINES: u32 = 4;
    const EVENTS: u64 = 3_000;
    let fleet = start_fleet(&dir, MACHINES, EVENTS, 240);
    let summary = finish_fleet(fleet, u64::from(MACHINES) * EVENTS);
    // The backup comes back and the primary dies at once, before the
    // stream can repair the backup.
    cluster.spawn(2);
    cluster.kill(0);
    let killed_at = Instant::now();
    let status = cluster.wait_for("the backup to lead", Duration::from_secs(20), |s| {
        primaries(s).iter().any(|&(i, e)| i == 2 && e > epoch)
    });
    let took = killed_at.elapsed();
    eprintln!(
        "replica-3 caught up {} entries from the sync and leads {} ms after the kill",
        status[1]["tip"],
        took.as_millis()
    );
    assert!(
        took < Duration::from_secs(5),
        "a live majority elects within the normal failover time, not {took:?}"
    );
    cluster.spawn(0);
    converge_and_stop(&mut cluster);
    check_every_replica_holds(&dir, &summary);
}

/// `vendctl bench`, the standard set, end to end on small loads: the store
/// part appends and replays, the replication part runs bench-replication's
/// four clusters, the dashboard part has a fleet write a log and times
/// every page on a real primary and a follower after logging in. Checks
/// that each part measured what it says, not how fast.
#[test]
fn the_standard_benchmark_measures_store_replication_and_pages() {
    let temp = tempfile::tempdir().unwrap();
    let port = base_port().to_string();
    let output = vendctl(&[
        "bench",
        "--events",
        "3000",
        "--machines",
        "5",
        "--batch-sizes",
        "16,3000",
        "--replication-events",
        "900",
        "--replication-rate",
        "300",
        "--replication-paced-seconds",
        "2",
        "--page-events",
        "600",
        "--page-machines",
        "3",
        "--requests",
        "3",
        "--base-port",
        &port,
        "--dir",
        temp.path().to_str().unwrap(),
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed: {stderr}");
    let figures: Value = serde_json::from_slice(&output.stdout).expect("JSON figures");
    let store = &figures["store"];
    assert_eq!(store["append"].as_array().unwrap().len(), 2, "{store}");
    assert!(store["replay_events_per_second"].as_f64().unwrap() > 0.0);
    let runs = figures["replication"]["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 4, "{figures}");
    let pages = &figures["pages"];
    assert!(pages["entries"].as_u64().unwrap() >= 600, "{pages}");
    let timed = pages["pages"].as_array().unwrap();
    assert_eq!(timed.len(), 12, "{pages}");
    for page in timed {
        assert!(page["p99_ms"].as_f64().unwrap() > 0.0, "{page}");
        assert!(page["bytes"].as_u64().unwrap() > 0, "{page}");
    }
    assert_eq!(timed[11]["served_by"], "follower");
    let parts: Vec<&str> = figures["table"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["part"].as_str().unwrap())
        .collect();
    for part in ["store", "replication", "dashboard"] {
        assert!(parts.contains(&part), "no {part} rows in {parts:?}");
    }
    // The overview is the rendered page with its machine table, not a
    // short error body.
    let overview = timed.iter().find(|p| p["page"] == "/").unwrap();
    assert!(overview["bytes"].as_u64().unwrap() > 1_000, "{overview}");
}

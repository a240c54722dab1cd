//! Real processes: three `vend-replica`s, a simulated fleet speaking the
//! real link (`vendctl simulate --cluster`), the primary killed with
//! SIGKILL in the middle of the load and restarted later. Afterwards every
//! acknowledged event is on every replica exactly once and `vendctl verify`
//! passes on each replica's log.
//!
//! Once on loopback with the udp transport (runs everywhere), once with
//! the raw transport in three network namespaces on a bridge (needs root;
//! skipped with a message otherwise).

use replica::config::{LocalClusterPlan, PeerConfig, ReplicaConfig};
use replica::transport::TransportKind;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const MACHINES: u32 = 4;
const EVENTS_PER_MACHINE: u64 = 1_500;

/// The binaries built by `cargo test --workspace` (or `cargo build`).
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` (scripts/test.sh does)",
        path.display()
    );
    path
}

fn vendctl(args: &[&str]) -> Output {
    Command::new(binary("vendctl"))
        .args(args)
        .output()
        .expect("vendctl runs")
}

/// How replicas are laid out and started.
struct Topology {
    /// Command prefix per replica (e.g. `ip netns exec NS`), empty on loopback.
    prefixes: Vec<Vec<String>>,
    configs: Vec<PathBuf>,
}

struct Cluster {
    dir: PathBuf,
    topology: Topology,
    children: Vec<Option<Child>>,
}

impl Cluster {
    fn start(dir: &Path, topology: Topology) -> Cluster {
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            topology,
            children: vec![None, None, None],
        };
        for index in 0..3 {
            cluster.spawn(index);
        }
        cluster
    }

    fn spawn(&mut self, index: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("replica-{}.log", index + 1)))
            .expect("log file");
        let prefix = &self.topology.prefixes[index];
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary("vend-replica"));
                command
            }
            None => Command::new(binary("vend-replica")),
        };
        let child = command
            .arg("--config")
            .arg(&self.topology.configs[index])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("vend-replica starts");
        self.children[index] = Some(child);
    }

    fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.children[index].take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    fn stop_all(&mut self) {
        for child in self.children.iter_mut().flatten() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) has no memory effects.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for slot in &mut self.children {
            if let Some(child) = slot.as_mut() {
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            *slot = None;
        }
    }

    fn status(&self) -> Vec<Value> {
        let out = vendctl(&["status", "--cluster", self.dir.to_str().unwrap()]);
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// Polls status until `done` holds; panics with the last status and the
    /// replicas' logs after `limit`.
    fn wait_for(&self, what: &str, limit: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.status();
            if done(&status) {
                return status;
            }
            if Instant::now() > deadline {
                let logs: String = (1..=3)
                    .map(|i| {
                        std::fs::read_to_string(self.dir.join(format!("replica-{i}.log")))
                            .unwrap_or_default()
                    })
                    .collect::<Vec<_>>()
                    .join("\n----\n");
                panic!("timed out waiting for {what}; last status: {status:#?}\nlogs:\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for slot in &mut self.children {
            if let Some(mut child) = slot.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn primaries(status: &[Value]) -> Vec<(usize, u64)> {
    status
        .iter()
        .enumerate()
        .filter(|(_, s)| s["role"] == "primary")
        .map(|(i, s)| (i, s["epoch"].as_u64().unwrap_or(0)))
        .collect()
}

fn run_failover_scenario(dir: &Path, topology: Topology) {
    let mut cluster = Cluster::start(dir, topology);
    let status = cluster.wait_for("a primary", Duration::from_secs(20), |s| {
        primaries(s).len() == 1
    });
    let (primary, epoch) = primaries(&status)[0];

    let fleet = Command::new(binary("vendctl"))
        .args([
            "simulate",
            "--cluster",
            dir.to_str().unwrap(),
            "--machines",
            &MACHINES.to_string(),
            "--events-per-machine",
            &EVENTS_PER_MACHINE.to_string(),
            "--seed",
            "7",
            "--timeout-s",
            "240",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vendctl simulate starts");

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

    let output = fleet.wait_with_output().expect("vendctl simulate finishes");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "simulate failed: {stderr}\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).expect("simulate prints JSON");
    let total = u64::from(MACHINES) * EVENTS_PER_MACHINE;
    assert!(summary["events"].as_u64().unwrap() >= total, "{summary}");
    assert_eq!(summary["events_acked"], summary["events"], "{summary}");
    assert!(
        summary["failovers_seen"].as_u64().unwrap() >= 1,
        "machines saw the failover: {summary}"
    );

    // Everything converges: same tip everywhere, all committed.
    cluster.wait_for("all replicas to converge", Duration::from_secs(60), |s| {
        s.len() == 3
            && s.iter().all(|r| {
                r["reachable"] == true && r["tip"] == s[0]["tip"] && r["commit"] == s[0]["tip"]
            })
    });
    cluster.stop_all();

    let acked: BTreeMap<String, u64> = summary["per_machine"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                m["acked"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut heads = Vec::new();
    for index in 1..=3 {
        let data = dir.join(format!("replica-{index}"));
        let keys = dir.join("keys");
        let verify = vendctl(&[
            "verify",
            "--data",
            data.to_str().unwrap(),
            "--keys",
            keys.to_str().unwrap(),
        ]);
        let verdict = String::from_utf8_lossy(&verify.stdout);
        assert!(
            verify.status.success(),
            "replica-{index}: {verdict}{}",
            String::from_utf8_lossy(&verify.stderr)
        );
        heads.push(verdict.split("head ").nth(1).map(|h| h[..64].to_owned()));
        let dump = vendctl(&[
            "dump",
            "--data",
            data.to_str().unwrap(),
            "--keys",
            keys.to_str().unwrap(),
        ]);
        assert!(dump.status.success());
        let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for line in String::from_utf8_lossy(&dump.stdout).lines() {
            let entry: Value = serde_json::from_str(line).unwrap();
            if let Some(machine) = entry["machine_id"].as_str() {
                seen.entry(machine.to_owned())
                    .or_default()
                    .push(entry["machine_seq"].as_u64().unwrap());
            }
        }
        for (machine, &count) in &acked {
            let seqs = seen.get(machine).cloned().unwrap_or_default();
            let expected: Vec<u64> = (1..=count).collect();
            assert_eq!(
                seqs, expected,
                "replica-{index}: {machine} must hold 1..={count} exactly once, in order"
            );
        }
    }
    assert!(
        heads.windows(2).all(|w| w[0] == w[1]),
        "identical hash chains: {heads:?}"
    );
}

fn base_port() -> u16 {
    // Spread concurrent runs apart; ports above 20000 stay clear of services.
    20_000 + u16::try_from(std::process::id() % 1_500).unwrap() * 30
}

#[test]
fn udp_on_loopback_survives_a_killed_primary() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("cluster");
    let port = base_port().to_string();
    let init = vendctl(&[
        "cluster",
        "init",
        "--dir",
        dir.to_str().unwrap(),
        "--transport",
        "udp",
        "--base-port",
        &port,
    ]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let configs = (1..=3)
        .map(|i| dir.join(format!("replica-{i}.toml")))
        .collect();
    run_failover_scenario(
        &dir,
        Topology {
            prefixes: vec![Vec::new(); 3],
            configs,
        },
    );
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
    let keyring = ledger::keys::Keyring::open(&keys, true).unwrap();
    keyring.cluster_key(true).unwrap();
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
    // Apart from `base_port()`'s ranges, so the tests can run together.
    let port = (40_000 + u16::try_from(std::process::id() % 800).unwrap() * 30).to_string();
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

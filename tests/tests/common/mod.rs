//! What the multi-process tests share: the binaries, a cluster of real
//! `vend-replica` processes, and the checks that every acknowledged event
//! is on a replica exactly once.

#![allow(dead_code)]

pub mod web;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binaries built by `cargo test --workspace` (or `cargo build`).
pub fn binary(name: &str) -> PathBuf {
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

pub fn vendctl(args: &[&str]) -> Output {
    Command::new(binary("vendctl"))
        .args(args)
        .output()
        .expect("vendctl runs")
}

/// How replicas are laid out and started.
pub struct Topology {
    /// Command prefix per replica (e.g. `ip netns exec NS`), empty on loopback.
    pub prefixes: Vec<Vec<String>>,
    pub configs: Vec<PathBuf>,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub topology: Topology,
    pub children: Vec<Option<Child>>,
    /// RLIMIT_NOFILE (soft and hard) the replicas start with, if set.
    pub descriptor_limit: Option<u64>,
}

impl Cluster {
    pub fn start(dir: &Path, topology: Topology) -> Cluster {
        Cluster::start_limited(dir, topology, None)
    }

    /// Starts the replicas with their descriptor limit (soft and hard) set
    /// to `descriptor_limit`, so they cannot raise it.
    pub fn start_limited(dir: &Path, topology: Topology, descriptor_limit: Option<u64>) -> Cluster {
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            topology,
            children: vec![None, None, None],
            descriptor_limit,
        };
        for index in 0..3 {
            cluster.spawn(index);
        }
        cluster
    }

    pub fn spawn(&mut self, index: usize) {
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
        if let Some(limit) = self.descriptor_limit {
            limit_descriptors(&mut command, limit);
        }
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

    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.children[index].take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    /// Stops one replica cleanly (SIGTERM) and waits for it.
    pub fn stop(&mut self, index: usize) {
        let Some(mut child) = self.children[index].take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) has no memory effects.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn stop_all(&mut self) {
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

    pub fn status(&self) -> Vec<Value> {
        let out = vendctl(&["status", "--cluster", self.dir.to_str().unwrap()]);
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// Polls status until `done` holds; panics with the last status and the
    /// replicas' logs after `limit`.
    pub fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
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

/// Sets the child's RLIMIT_NOFILE, soft and hard, before it runs.
fn limit_descriptors(command: &mut Command, limit: u64) {
    use std::os::unix::process::CommandExt;
    let limit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: between fork and exec the closure only calls setrlimit,
    // which is async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Raises this process's soft descriptor limit to its hard limit (tests
/// that hold many connections); returns the soft limit now.
pub fn raise_own_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only touch the struct given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    limit.rlim_cur
}

pub fn primaries(status: &[Value]) -> Vec<(usize, u64)> {
    status
        .iter()
        .enumerate()
        .filter(|(_, s)| s["role"] == "primary")
        .map(|(i, s)| (i, s["epoch"].as_u64().unwrap_or(0)))
        .collect()
}

/// Ports a local cluster uses above its base (`LocalClusterPlan`).
const CLUSTER_PORTS: u16 = 30;

/// A base port whose next `CLUSTER_PORTS` TCP and UDP ports on loopback are
/// free right now, so tests running at the same time (in one process or
/// several) do not collide. Candidates above 20000 stay clear of services;
/// the search is bounded.
pub fn base_port() -> u16 {
    use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let free = |port: u16| {
        let address = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        TcpListener::bind(address).is_ok() && UdpSocket::bind(address).is_ok()
    };
    let slots = u32::from((60_000 - 20_000) / CLUSTER_PORTS);
    for _ in 0..200 {
        let turn = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let slot = (std::process::id()
            .wrapping_mul(7_919)
            .wrapping_add(turn * 104_729))
            % slots;
        let base = 20_000 + u16::try_from(slot).expect("below 60000") * CLUSTER_PORTS;
        if (1..=CLUSTER_PORTS).all(|offset| free(base + offset)) {
            return base;
        }
    }
    panic!("no free range of {CLUSTER_PORTS} ports found on loopback");
}

/// Each machine's acknowledged count, from `vendctl simulate --cluster`'s
/// JSON summary.
pub fn acked_per_machine(summary: &Value) -> BTreeMap<String, u64> {
    summary["per_machine"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                m["acked"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Verifies replica `index`'s log with `vendctl verify` and checks that it
/// holds every acknowledged event exactly once, in order; returns its head.
pub fn check_replica_holds(
    dir: &Path,
    index: usize,
    acked: &BTreeMap<String, u64>,
) -> Option<String> {
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
    for (machine, &count) in acked {
        let seqs = seen.get(machine).cloned().unwrap_or_default();
        let expected: Vec<u64> = (1..=count).collect();
        assert_eq!(
            seqs, expected,
            "replica-{index}: {machine} must hold 1..={count} exactly once, in order"
        );
    }
    verdict.split("head ").nth(1).map(|h| h[..64].to_owned())
}

/// Starts `vendctl simulate --cluster` in the background.
pub fn start_fleet(dir: &Path, machines: u32, events_per_machine: u64, timeout_s: u64) -> Child {
    Command::new(binary("vendctl"))
        .args([
            "simulate",
            "--cluster",
            dir.to_str().unwrap(),
            "--machines",
            &machines.to_string(),
            "--events-per-machine",
            &events_per_machine.to_string(),
            "--seed",
            "7",
            "--timeout-s",
            &timeout_s.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vendctl simulate starts")
}

/// Waits for the fleet and returns its summary, asserting every event was
/// acknowledged.
pub fn finish_fleet(fleet: Child, total: u64) -> Value {
    let output = fleet.wait_with_output().expect("vendctl simulate finishes");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "simulate failed: {stderr}\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).expect("simulate prints JSON");
    assert!(summary["events"].as_u64().unwrap() >= total, "{summary}");
    assert_eq!(summary["events_acked"], summary["events"], "{summary}");
    summary
}

/// `vendctl cluster init` on loopback with the udp transport.
pub fn init_cluster(dir: &Path, base_port: u16) -> Topology {
    let init = vendctl(&[
        "cluster",
        "init",
        "--dir",
        dir.to_str().unwrap(),
        "--transport",
        "udp",
        "--base-port",
        &base_port.to_string(),
    ]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    Topology {
        prefixes: vec![Vec::new(); 3],
        configs: (1..=3)
            .map(|i| dir.join(format!("replica-{i}.toml")))
            .collect(),
    }
}

/// Waits until every replica holds the same tip, all of it committed,
/// then stops them.
pub fn converge_and_stop(cluster: &mut Cluster) {
    cluster.wait_for("all replicas to converge", Duration::from_secs(60), |s| {
        s.len() == 3
            && s.iter().all(|r| {
                r["reachable"] == true && r["tip"] == s[0]["tip"] && r["commit"] == s[0]["tip"]
            })
    });
    cluster.stop_all();
}

/// Every replica holds each event the fleet saw acknowledged, once and in
/// order, and all three hash chains are the same.
pub fn check_every_replica_holds(dir: &Path, summary: &Value) {
    let acked = acked_per_machine(summary);
    let heads: Vec<Option<String>> = (1..=3)
        .map(|index| check_replica_holds(dir, index, &acked))
        .collect();
    assert!(
        heads.windows(2).all(|w| w[0] == w[1]),
        "identical hash chains: {heads:?}"
    );
}

//! `vendctl cluster init|up` and `vendctl status`: a local three-replica
//! cluster as child processes, and what each replica says about itself.

use crate::say;
use crate::util::grouped;
use anyhow::{Context, Result, bail};
use dashboard::ReplicaStatus;
use ledger::keys::create_cluster_keys;
use replica::config::LocalClusterPlan;
use replica::transport::TransportKind;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

pub const CLUSTER_FILE: &str = "cluster.json";
/// `cluster up` restarts a replica that exits after this pause, doubled
/// for each quick exit in a row up to `RESTART_DELAY_MAX`.
const RESTART_DELAY: Duration = Duration::from_secs(3);
const RESTART_DELAY_MAX: Duration = Duration::from_secs(30);
/// A replica that ran this long before exiting was not failing to start.
const STABLE_RUN: Duration = Duration::from_secs(30);
/// Quick exits in a row after which `cluster up` gives up.
const QUICK_EXITS_MAX: u32 = 3;

#[derive(clap::Args, Clone)]
pub struct ClusterArgs {
    /// The cluster directory (configs, keys, replica data, logs, cluster.json).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Replication transport: udp, or raw (IPv4+UDP built by hand, needs CAP_NET_RAW).
    #[arg(long, default_value = "udp")]
    pub transport: TransportKind,
    /// Ports: machines on P+1..3, replication on P+11..13, status on P+21..23
    /// [default: the cluster's own ports if it exists, else 7100].
    #[arg(long)]
    pub base_port: Option<u16>,
    /// Loss drills: each replica drops this percentage (0-50) of the
    /// replication datagrams it receives, as a lossy network would.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=50))]
    pub drop_received_percent: u8,
}

#[derive(clap::Subcommand)]
pub enum ClusterCommand {
    /// Write the three replicas' configurations and the keys (kept if present).
    #[command(after_help = "Example: vendctl cluster init --dir /tmp/cluster --base-port 7100")]
    Init(ClusterArgs),
    /// Start the three replicas in the foreground; Ctrl-C stops them all.
    #[command(after_help = "Example: vendctl cluster up --dir /tmp/cluster --transport raw")]
    Up(ClusterArgs),
    /// Stop a replica abruptly (SIGKILL) or cleanly (SIGTERM), for
    /// failover drills: `--primary` picks whichever replica leads now.
    #[command(after_help = "Example: vendctl cluster kill --dir /tmp/cluster --primary")]
    Kill(KillArgs),
}

#[derive(clap::Args)]
pub struct KillArgs {
    /// The cluster directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The replica to stop, e.g. replica-1.
    #[arg(long, conflicts_with = "primary")]
    replica: Option<String>,
    /// Stop the current primary.
    #[arg(long)]
    primary: bool,
    /// Stop cleanly (SIGTERM) instead of killing (SIGKILL).
    #[arg(long)]
    clean: bool,
}

/// `DIR/cluster.json`: where everything of a local cluster is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterFile {
    pub cluster_id: u32,
    pub transport: TransportKind,
    pub keys_dir: PathBuf,
    pub replicas: Vec<ClusterReplica>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterReplica {
    pub id: String,
    pub pid: Option<u32>,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub machine_addr: String,
    pub replication_addr: String,
    /// host:port of the replica's status API and dashboard.
    pub dashboard: String,
}

impl ClusterFile {
    pub fn load(dir: &Path) -> Result<ClusterFile> {
        let path = dir.join(CLUSTER_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (run `vendctl cluster up` first)",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(CLUSTER_FILE);
        let temporary = dir.join(format!("{CLUSTER_FILE}.tmp"));
        std::fs::write(&temporary, serde_json::to_string_pretty(self)?)?;
        std::fs::rename(&temporary, &path).with_context(|| format!("writing {}", path.display()))
    }

    pub fn machine_addresses(&self) -> Vec<String> {
        self.replicas
            .iter()
            .map(|r| r.machine_addr.clone())
            .collect()
    }
}

pub fn run(command: ClusterCommand) -> Result<ExitCode> {
    match command {
        ClusterCommand::Init(args) => {
            let file = init(&args)?;
            say!(
                "cluster {} ready in {} ({} transport)",
                file.cluster_id,
                args.dir.display(),
                file.transport
            );
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::Up(args) => up(&args),
        ClusterCommand::Kill(args) => kill(&args),
    }
}

fn kill(args: &KillArgs) -> Result<ExitCode> {
    let file = ClusterFile::load(&args.dir)?;
    let target = if args.primary {
        file.replicas
            .iter()
            .find(|r| fetch_status(&r.dashboard).is_ok_and(|s| s.role == "primary"))
            .context("no replica answers as primary")?
    } else {
        let name = args
            .replica
            .as_deref()
            .context("name --replica or --primary")?;
        file.replicas
            .iter()
            .find(|r| r.id == name)
            .with_context(|| format!("no replica {name}"))?
    };
    let status = fetch_status(&target.dashboard)
        .with_context(|| format!("{} does not answer", target.id))?;
    let pid = libc::pid_t::try_from(status.pid)?;
    let signal = if args.clean {
        libc::SIGTERM
    } else {
        libc::SIGKILL
    };
    // SAFETY: kill(2) with a valid signal number has no memory effects.
    let result = unsafe { libc::kill(pid, signal) };
    if result != 0 {
        bail!(
            "could not signal {} (pid {pid}): {}",
            target.id,
            std::io::Error::last_os_error()
        );
    }
    say!(
        "{} {} (pid {pid}, {} in epoch {})",
        if args.clean { "stopped" } else { "killed" },
        target.id,
        status.role,
        status.epoch
    );
    Ok(ExitCode::SUCCESS)
}

/// The ports when none is given.
pub const DEFAULT_BASE_PORT: u16 = 7100;

impl ClusterFile {
    /// The base port the cluster was set up with (replica-1 takes
    /// machines on base+1).
    pub fn base_port(&self) -> Option<u16> {
        let first = self.replicas.first()?;
        let address: std::net::SocketAddr = first.machine_addr.parse().ok()?;
        address.port().checked_sub(1)
    }
}

/// Writes configs and keys; keeps an existing cluster id, keys and ports
/// (unless --base-port moves them).
pub fn init(args: &ClusterArgs) -> Result<ClusterFile> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let existing = ClusterFile::load(&dir).ok();
    let base_port = args
        .base_port
        .or_else(|| existing.as_ref().and_then(ClusterFile::base_port))
        .unwrap_or(DEFAULT_BASE_PORT);
    if base_port > u16::MAX - 30 {
        bail!("--base-port leaves no room for the cluster's ports");
    }
    let cluster_id = match existing {
        Some(existing) => existing.cluster_id,
        None => rand::random::<u32>() | 1,
    };
    let keys_dir = dir.join("keys");
    // The same code as `vendctl keys init`: a new cluster gets its keys,
    // an existing one keeps them.
    for path in create_cluster_keys(&keys_dir)? {
        eprintln!("created {}", path.display());
    }
    let plan = LocalClusterPlan {
        base_port,
        host: std::net::Ipv4Addr::LOCALHOST,
    };
    let mut replicas = Vec::new();
    for id in 1..=3u8 {
        let mut config = plan.config(id, cluster_id, &dir, args.transport);
        config.drop_received_percent = args.drop_received_percent;
        link_keys(&config.data_dir)?;
        let path = dir.join(format!("replica-{id}.toml"));
        // Keep what an operator set for the dashboard (HTTPS from
        // `vendctl keys tls`, alert thresholds) across re-inits.
        if let Ok(existing) = replica::config::ReplicaConfig::load(&path) {
            config.dashboard = existing.dashboard;
        }
        std::fs::write(&path, config.to_toml())
            .with_context(|| format!("writing {}", path.display()))?;
        replicas.push(ClusterReplica {
            id: config.name.clone(),
            pid: None,
            config: path,
            data_dir: config.data_dir.clone(),
            machine_addr: config.machine_listen.to_string(),
            replication_addr: config.replication_listen.to_string(),
            dashboard: config.status_listen.to_string(),
        });
    }
    let file = ClusterFile {
        cluster_id,
        transport: args.transport,
        keys_dir,
        replicas,
    };
    file.save(&dir)?;
    Ok(file)
}

/// Links `DATA/keys` to the cluster's `keys`, so the log tools find the keys
/// of a replica's data dir the same way they do for any other data dir.
fn link_keys(data_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let link = data_dir.join("keys");
    match std::fs::symlink_metadata(&link) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::os::unix::fs::symlink("../keys", &link)
                .with_context(|| format!("linking {}", link.display()))
        }
        Err(e) => Err(e).with_context(|| format!("inspecting {}", link.display())),
    }
}

/// The `vend-replica` binary built next to this `vendctl`.
pub fn replica_binary() -> Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name("vend-replica");
    if !path.exists() {
        bail!(
            "{} is missing: build it with `cargo build -p replica`",
            path.display()
        );
    }
    Ok(path)
}

pub fn spawn_replica(binary: &Path, config: &Path, log: &Path) -> Result<Child> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    Command::new(binary)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// Sends SIGTERM (a clean stop) to a process.
pub fn terminate(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a valid signal number has no memory effects.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

fn up(args: &ClusterArgs) -> Result<ExitCode> {
    let mut file = init(args)?;
    let binary = replica_binary()?;
    let dir = std::fs::canonicalize(&args.dir)?;
    check_ports_free(&file)?;
    let mut children = Vec::new();
    for replica in &mut file.replicas {
        let log = dir.join(format!("{}.log", replica.id));
        let child = spawn_replica(&binary, &replica.config, &log)?;
        replica.pid = Some(child.id());
        children.push(child);
    }
    file.save(&dir)?;
    print_started(&file, &dir);
    let outcome = supervise_until_stopped(&mut children, &mut file, &binary, &dir);
    say!("stopping the replicas...");
    stop_replicas(&mut children);
    for replica in &mut file.replicas {
        replica.pid = None;
    }
    file.save(&dir)?;
    say!("stopped");
    outcome?;
    Ok(ExitCode::SUCCESS)
}

/// Every port of the cluster is free, or `up` stops before starting
/// anything, naming the port and the flag that moves the cluster (a
/// replica that cannot bind would otherwise exit and be restarted forever).
pub fn check_ports_free(file: &ClusterFile) -> Result<()> {
    for replica in &file.replicas {
        let tcp = [
            (&replica.machine_addr, "machine link"),
            (&replica.dashboard, "status API"),
        ];
        for (address, what) in tcp {
            if let Err(error) = std::net::TcpListener::bind(address.as_str()) {
                bail!(port_in_use(file, &replica.id, what, address, &error));
            }
        }
        if file.transport == TransportKind::Udp
            && let Err(error) = std::net::UdpSocket::bind(replica.replication_addr.as_str())
        {
            bail!(port_in_use(
                file,
                &replica.id,
                "replication",
                &replica.replication_addr,
                &error
            ));
        }
    }
    Ok(())
}

fn port_in_use(
    file: &ClusterFile,
    id: &str,
    what: &str,
    address: &str,
    error: &std::io::Error,
) -> String {
    let base = file.base_port().unwrap_or(DEFAULT_BASE_PORT);
    let other = base
        .checked_add(100)
        .filter(|p| *p <= u16::MAX - 30)
        .unwrap_or(7_200);
    format!(
        "cannot use {address} ({id}'s {what}): {error}. Stop what holds it (is this cluster \
         already up?), or move the cluster's ports with --base-port, e.g. --base-port {other}"
    )
}

fn print_started(file: &ClusterFile, dir: &Path) {
    say!(
        "started {} replicas ({} transport); logs in {}/replica-N.log",
        file.replicas.len(),
        file.transport,
        dir.display()
    );
    for replica in &file.replicas {
        say!(
            "  {}  machines {}  status http://{}/api/v1/status  pid {}",
            replica.id,
            replica.machine_addr,
            replica.dashboard,
            replica.pid.unwrap_or(0)
        );
    }
    say!(
        "A replica that exits is restarted after {} s (longer if it keeps exiting; after {} \
         quick exits in a row cluster up gives up). Ctrl-C stops them all.",
        RESTART_DELAY.as_secs(),
        QUICK_EXITS_MAX
    );
}

/// A replica's restarts: when it started, how many times in a row it
/// exited soon after, and when it is due to start again.
#[derive(Clone, Copy)]
pub struct Restarts {
    started: Instant,
    quick_exits: u32,
    due: Option<Instant>,
}

impl Restarts {
    pub fn new() -> Restarts {
        Restarts {
            started: Instant::now(),
            quick_exits: 0,
            due: None,
        }
    }

    /// The replica exited now: the pause before its restart, or `None`
    /// when it keeps exiting and `up` gives up.
    fn exited(&mut self, now: Instant) -> Option<Duration> {
        self.quick_exits = if now.duration_since(self.started) < STABLE_RUN {
            self.quick_exits + 1
        } else {
            1
        };
        if self.quick_exits >= QUICK_EXITS_MAX {
            return None;
        }
        let delay = RESTART_DELAY
            .saturating_mul(1 << (self.quick_exits - 1).min(8))
            .min(RESTART_DELAY_MAX);
        self.due = Some(now + delay);
        Some(delay)
    }
}

/// The last line a replica wrote to its log (its error, when it could not
/// start), bounded in length.
fn last_log_line(log: &Path) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let tail = &text[text.len().saturating_sub(64 * 1024)..];
    String::from_utf8_lossy(tail)
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .map(|line| line.chars().take(1_000).collect())
        .unwrap_or_else(|| "(its log is empty)".to_owned())
}

/// Keeps the replicas running until Ctrl-C or SIGTERM. A replica that dies
/// is restarted after a pause, like a service manager would: it rejoins as
/// a follower and catches up. One that keeps dying ends `up` with its last
/// error.
fn supervise_until_stopped(
    children: &mut [Child],
    file: &mut ClusterFile,
    binary: &Path,
    dir: &Path,
) -> Result<()> {
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut restarts = vec![Restarts::new(); children.len()];
    signals.block_on(async {
        let mut terminate_signal =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut poll = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = terminate_signal.recv() => return Ok(()),
                _ = poll.tick() => supervise(children, file, &mut restarts, binary, dir)?,
            }
        }
    })
}

/// Asks every replica to stop cleanly, and kills those still running after
/// ten seconds so `up` never hangs on a stuck process.
pub fn stop_replicas(children: &mut [Child]) {
    for child in children.iter() {
        terminate(child.id());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for child in children.iter_mut() {
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Restarts replicas that exited, after their pause; gives up on one that
/// keeps exiting.
pub fn supervise(
    children: &mut [Child],
    file: &mut ClusterFile,
    restarts: &mut [Restarts],
    binary: &Path,
    dir: &Path,
) -> Result<()> {
    let mut changed = false;
    for (index, child) in children.iter_mut().enumerate() {
        let replica = &mut file.replicas[index];
        let restart = &mut restarts[index];
        let log = dir.join(format!("{}.log", replica.id));
        match restart.due {
            None => {
                if let Ok(Some(status)) = child.try_wait() {
                    let Some(delay) = restart.exited(Instant::now()) else {
                        bail!(
                            "{} exited {} times in a row soon after starting ({status}); its \
                             last error, from {}:\n  {}",
                            replica.id,
                            restart.quick_exits,
                            log.display(),
                            last_log_line(&log)
                        );
                    };
                    say!(
                        "{} exited ({status}); restarting it in {} s",
                        replica.id,
                        delay.as_secs()
                    );
                }
            }
            Some(at) if Instant::now() >= at => {
                match spawn_replica(binary, &replica.config, &log) {
                    Ok(new_child) => {
                        say!("{} restarted (pid {})", replica.id, new_child.id());
                        replica.pid = Some(new_child.id());
                        *child = new_child;
                        restart.due = None;
                        restart.started = Instant::now();
                        changed = true;
                    }
                    Err(error) => {
                        say!("{} could not be restarted: {error:#}", replica.id);
                        restart.due = Some(Instant::now() + RESTART_DELAY);
                    }
                }
            }
            Some(_) => {}
        }
    }
    if changed && let Err(error) = file.save(dir) {
        say!("could not update cluster.json: {error:#}");
    }
    Ok(())
}

#[derive(clap::Args)]
#[command(after_help = "Example: vendctl status --cluster /tmp/cluster --table")]
pub struct StatusArgs {
    /// The cluster directory (reads DIR/cluster.json).
    #[arg(long, value_name = "DIR")]
    cluster: PathBuf,
    /// One line per replica for people, instead of JSON.
    #[arg(long)]
    table: bool,
}

/// One replica as `vendctl status` reports it.
#[derive(Serialize)]
struct StatusLine {
    #[serde(flatten)]
    status: ReplicaStatus,
    reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Waits (up to 20 s) until one replica of `file` says it is primary; its
/// name.
pub fn wait_for_primary(file: &ClusterFile) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        for replica in &file.replicas {
            if fetch_status(&replica.dashboard).is_ok_and(|s| s.role == "primary") {
                return Ok(replica.id.clone());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("no replica became primary within 20 s: see the replica-N.log files");
}

pub fn fetch_status(dashboard: &str) -> Result<ReplicaStatus> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    let mut response = agent
        .get(&format!("http://{dashboard}/api/v1/status"))
        .call()?;
    let body = response.body_mut().read_to_string()?;
    Ok(serde_json::from_str(&body)?)
}

pub fn status(args: StatusArgs) -> Result<ExitCode> {
    let file = ClusterFile::load(&args.cluster)?;
    let lines: Vec<StatusLine> = file
        .replicas
        .iter()
        .map(|replica| match fetch_status(&replica.dashboard) {
            Ok(status) => StatusLine {
                status,
                reachable: true,
                error: None,
            },
            Err(error) => StatusLine {
                status: ReplicaStatus {
                    id: replica.id.clone(),
                    role: "down".into(),
                    ..ReplicaStatus::default()
                },
                reachable: false,
                error: Some(error.to_string()),
            },
        })
        .collect();
    if args.table {
        for line in &lines {
            let s = &line.status;
            match &line.error {
                Some(error) => say!("{:<10} down      ({error})", s.id),
                None => say!(
                    "{:<10} {:<9} epoch {:<3} tip {:<11} commit {:<11} lag {:<7} naks {}/{} retransmitted {} machines {}",
                    s.id,
                    s.role,
                    s.epoch,
                    grouped(s.tip),
                    grouped(s.commit),
                    grouped(s.lag),
                    grouped(s.naks_sent),
                    grouped(s.naks_received),
                    grouped(s.records_retransmitted),
                    s.machines_connected
                ),
            }
            for warning in [&s.cluster_key_warning, &s.storage_error]
                .into_iter()
                .flatten()
            {
                say!("{:<10} ! {warning}", "");
            }
            if let Some(through) = s.archived_through {
                say!(
                    "{:<10}   entries through {} are in archive files",
                    "",
                    grouped(through)
                );
            }
        }
    } else {
        say!("{}", serde_json::to_string_pretty(&lines)?);
    }
    if lines.iter().any(|line| line.reachable) {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "vendctl: no replica answers: start the cluster with `vendctl cluster up --dir {}`",
            args.cluster.display()
        );
        Ok(ExitCode::FAILURE)
    }
}

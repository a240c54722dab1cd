//! `vendctl demo`: the product as an operator meets it. Three replicas, a
//! small fleet selling in real time through the day, one machine that loses
//! its network now and then and catches up, the dashboard on every replica,
//! and the machine app for one more machine when there is a display. It
//! runs until Ctrl-C, then stops every child; run again on the same
//! directory, it carries on with the same data.

use crate::cluster::{self, ClusterArgs, ClusterFile};
use crate::fleet::{Local, MachineRun, MachineSetup, Pace};
use crate::say;
use crate::util::report_created_keys;
use anyhow::{Context, Result, bail};
use ledger::keys::{Keyring, SingleMachineKey, create_machine_keys};
use ledger::machine::MachineCore;
use ledger::store::OpenOptions;
use ledger::{Ledger, MachineId};
use replica::transport::{TransportKind, raw_sockets_permitted};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use workload::{SIMULATION_START_MS, SimMachine};

/// The dashboards sit on P..P+2; the cluster plan puts status ports at
/// base + 21..23, so the plan's base is P - 21.
const STATUS_OFFSET: u16 = 21;
/// Machine links on P-20..P-18, replication on P-10..P-8 (the plan's
/// +1..3 and +11..13).
const PLAN_OFFSETS: [(u16, &str); 3] =
    [(1, "machine link"), (11, "replication"), (21, "dashboard")];
const MACHINES_MAX: u32 = 50;
/// How often the demo says how the fleet is doing.
const REPORT_EVERY: Duration = Duration::from_secs(30);
/// How long a machine task may take to stop its uplink at Ctrl-C.
const MACHINE_STOP_WAIT: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
#[command(after_help = "Example: vendctl demo   (then open http://127.0.0.1:8000 and log in)")]
pub struct Args {
    /// Where the demo keeps its keys, logs and machines; run again on the
    /// same directory to carry on [default: ~/.local/share/vendledger/demo]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Simulated machines selling in real time (1-50).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=i64::from(MACHINES_MAX)))]
    machines: u32,
    /// Do not open the machine app (vend-vm) even when a display is there.
    #[arg(long)]
    no_gui: bool,
    /// Dashboards on P, P+1, P+2; machine links on P-20..P-18 and
    /// replication on P-10..P-8.
    #[arg(long, default_value_t = 8000, value_parser = clap::value_parser!(u16).range(1024..=65_000))]
    base_port: u16,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => default_dir()?,
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let plan_base = args.base_port - STATUS_OFFSET;
    check_ports_free(plan_base)?;
    let transport = if raw_sockets_permitted() {
        TransportKind::Raw
    } else {
        TransportKind::Udp
    };
    let mut file = cluster::init(&ClusterArgs {
        dir: dir.clone(),
        transport,
        base_port: Some(plan_base),
        drop_received_percent: 0,
    })?;
    let dir = std::fs::canonicalize(&dir)?;
    // Every machine's key exists before the replicas start, so none is
    // refused while the replicas reload their keyring.
    let ids: Vec<MachineId> = (1..=args.machines + 1).map(MachineId::numbered).collect();
    report_created_keys(&create_machine_keys(&file.keys_dir, &ids)?, &file.keys_dir);
    let binary = cluster::replica_binary()?;
    let mut replicas = Vec::new();
    for replica in &mut file.replicas {
        let log = dir.join(format!("{}.log", replica.id));
        let child = cluster::spawn_replica(&binary, &replica.config, &log)?;
        replica.pid = Some(child.id());
        replicas.push(child);
    }
    file.save(&dir)?;
    let outcome = run_with_replicas(&args, &dir, &mut file, &mut replicas, &binary);
    say!("stopping the replicas...");
    cluster::stop_replicas(&mut replicas);
    for replica in &mut file.replicas {
        replica.pid = None;
    }
    file.save(&dir)?;
    outcome?;
    say!(
        "stopped; everything is in {} (run `vendctl demo --dir {}` again to carry on)",
        dir.display(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `$XDG_DATA_HOME/vendledger/demo`, or `~/.local/share/vendledger/demo`.
fn default_dir() -> Result<PathBuf> {
    let base = match (std::env::var_os("XDG_DATA_HOME"), std::env::var_os("HOME")) {
        (Some(data), _) if !data.is_empty() => PathBuf::from(data),
        (_, Some(home)) => PathBuf::from(home).join(".local/share"),
        _ => bail!("neither XDG_DATA_HOME nor HOME is set: give the demo a --dir"),
    };
    Ok(base.join("vendledger").join("demo"))
}

/// Every port the demo needs, checked before anything starts, so a busy
/// one is named with the flag that moves it rather than failing in a
/// replica's log.
fn check_ports_free(plan_base: u16) -> Result<()> {
    for (offset, what) in PLAN_OFFSETS {
        for n in 0..3u16 {
            let port = plan_base + offset + n;
            let address = std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port);
            let free = if what == "replication" {
                std::net::UdpSocket::bind(address).is_ok()
            } else {
                std::net::TcpListener::bind(address).is_ok()
            };
            if !free {
                bail!(
                    "port {port} ({what} of replica-{}) is in use: stop what holds it (another demo?), or move the demo's ports with --base-port (e.g. --base-port 9000)",
                    n + 1
                );
            }
        }
    }
    Ok(())
}

/// Everything that runs while the replicas do; returns at Ctrl-C or
/// SIGTERM with every machine and the app stopped.
fn run_with_replicas(
    args: &Args,
    dir: &Path,
    file: &mut ClusterFile,
    replicas: &mut [Child],
    binary: &Path,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let primary = cluster::wait_for_primary(file)?;
    let login = demo_login(dir)?;
    let machines = open_machines(file, dir, args.machines)?;
    let (stop, stopped) = watch::channel(false);
    let board = Board::default();
    let tasks: Vec<_> = machines
        .into_iter()
        .enumerate()
        .map(|(index, setup)| {
            // The third machine (or the last of a smaller fleet) is the one
            // whose network comes and goes.
            let flaky = index + 1 == (args.machines as usize).min(3);
            let pace = if flaky { FLAKY_PACE } else { SHOP_PACE };
            let seed = rand::random::<u64>();
            let addresses = file.machine_addresses();
            runtime.spawn(sell_until_stopped(
                setup,
                addresses,
                seed,
                pace,
                stopped.clone(),
                board.clone(),
            ))
        })
        .collect();
    let mut app = if args.no_gui {
        None
    } else {
        open_machine_app(file, dir, args.machines + 1)
    };
    print_banner(
        file,
        dir,
        transport_name(file.transport),
        &primary,
        args.machines,
        app.is_some(),
    );
    print_login(&login, dir);
    let outcome = runtime.block_on(supervise(file, replicas, binary, dir, &board));
    let _ = stop.send(true);
    runtime.block_on(async {
        for task in tasks {
            match tokio::time::timeout(MACHINE_STOP_WAIT, task).await {
                Ok(Ok(Err(error))) => say!("a machine stopped with an error: {error:#}"),
                Ok(Err(error)) => say!("a machine task failed: {error}"),
                Ok(Ok(Ok(_))) | Err(_) => {}
            }
        }
    });
    if let Some(app) = &mut app {
        cluster::terminate(app.id());
        let _ = app.wait();
    }
    outcome
}

fn transport_name(transport: TransportKind) -> &'static str {
    match transport {
        TransportKind::Raw => "raw IPv4+UDP sockets (this process may open raw sockets)",
        TransportKind::Udp => "UDP sockets (raw sockets need CAP_NET_RAW; run as root to see them)",
    }
}

/// Waits until a replica says it is the primary (a fresh cluster elects
/// one within a second or two).
/// A busy shop: a decision (a coin, a purchase, a refill) every second or
/// so, never offline.
const SHOP_PACE: Pace = Pace {
    burst: 1..3,
    pause_ms: 600..2_400,
    rate: None,
    offline_chance: 0.0,
    offline_ms: 1..2,
    dark_spells: None,
};

/// The machine with the bad network: offline for 15-40 s about every
/// minute, selling on meanwhile; its backlog goes out when it is back.
const FLAKY_PACE: Pace = Pace {
    burst: 1..3,
    pause_ms: 600..2_400,
    rate: None,
    offline_chance: 0.03,
    offline_ms: 15_000..40_000,
    dark_spells: None,
};

/// What each machine last said about itself, for the periodic report.
#[derive(Clone, Default)]
struct Board(Arc<Mutex<BTreeMap<String, Progress>>>);

#[derive(Clone, Copy, Default)]
struct Progress {
    events: u64,
    acked: u64,
    online: bool,
}

impl Board {
    fn set(&self, id: &str, progress: Progress) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(id.to_owned(), progress);
        }
    }

    fn line(&self) -> String {
        let Ok(map) = self.0.lock() else {
            return String::new();
        };
        let events: u64 = map.values().map(|p| p.events).sum();
        let acked: u64 = map.values().map(|p| p.acked).sum();
        let offline: Vec<String> = map
            .iter()
            .filter(|(_, p)| !p.online)
            .map(|(id, p)| {
                format!(
                    "{id} offline with {} unsent",
                    p.events.saturating_sub(p.acked)
                )
            })
            .collect();
        let mut line = format!(
            "{} machines: {events} events recorded, {acked} acknowledged",
            map.len()
        );
        if !offline.is_empty() {
            line.push_str("; ");
            line.push_str(&offline.join(", "));
        }
        line
    }
}

/// One machine selling until the demo stops.
async fn sell_until_stopped(
    setup: MachineSetup,
    addresses: Vec<String>,
    seed: u64,
    pace: Pace,
    mut stop: watch::Receiver<bool>,
    board: Board,
) -> Result<()> {
    let id = setup.id.to_string();
    let mut machine = MachineRun::start(setup, u64::MAX, addresses, seed, pace);
    while !*stop.borrow() {
        machine.sell_burst()?;
        machine.go_offline_or_back().await?;
        tokio::select! {
            () = machine.pause_taking_reports() => {}
            _ = stop.changed() => {}
        }
        board.set(
            &id,
            Progress {
                events: machine.recorded(),
                acked: machine.summary().acked,
                online: machine.online(),
            },
        );
    }
    machine.stop().await?;
    Ok(())
}

/// The fleet's machines, each with its own ledger under DIR/machines; a
/// machine that sold in an earlier run carries on from what it stored.
fn open_machines(file: &ClusterFile, dir: &Path, count: u32) -> Result<Vec<MachineSetup>> {
    let ids: Vec<MachineId> = (1..=count).map(MachineId::numbered).collect();
    let keyring = Keyring::open(&file.keys_dir)?;
    let mut setups = Vec::new();
    for id in ids {
        let key = keyring.require_machine(&id)?.clone();
        let options = OpenOptions {
            create: true,
            ..OpenOptions::default()
        };
        let log = dir.join("machines").join(id.as_str()).join("log");
        let ledger = Ledger::open(&log, keyring.store_key(), options)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut sim = SimMachine::new(id.clone(), &key, rand::random(), SIMULATION_START_MS);
        if let Some(state) = ledger.machine_state(&id) {
            let head = ledger.store().machine_head(&id);
            sim.restart(MachineCore::restore(
                id.clone(),
                &key,
                state.clone(),
                head.hash,
            ));
        }
        sim.follow_wall_clock();
        setups.push(MachineSetup {
            sim,
            chain: SingleMachineKey::new(id.clone(), &key),
            local: Local::Disk(Arc::new(Mutex::new(ledger))),
            id,
            key,
        });
    }
    Ok(setups)
}

/// Opens vend-vm for one more machine when there is a display to show it
/// on; says why not otherwise.
fn open_machine_app(file: &ClusterFile, dir: &Path, number: u32) -> Option<Child> {
    if std::env::var_os("DISPLAY").is_none() && std::env::var_os("WAYLAND_DISPLAY").is_none() {
        say!("no display: the machine app is not opened (see README: vend-vm)");
        return None;
    }
    let binary = std::env::current_exe().ok()?.with_file_name("vend-vm");
    if !binary.exists() {
        say!(
            "{} is missing: the machine app is not opened",
            binary.display()
        );
        return None;
    }
    let id = MachineId::numbered(number);
    let data = dir.join("machines").join(format!("{id}-app"));
    let mut command = Command::new(&binary);
    command
        .arg("--machine-id")
        .arg(id.as_str())
        .arg("--data")
        .arg(&data)
        .arg("--keys")
        .arg(&file.keys_dir);
    for address in file.machine_addresses() {
        command.arg("--replica").arg(address);
    }
    if !data.join("log").exists() {
        command.arg("--admin-password").arg(APP_ADMIN_PASSWORD);
    }
    let log = std::fs::File::create(dir.join(format!("{id}-app.log"))).ok()?;
    match command
        .stdin(Stdio::null())
        .stdout(log.try_clone().ok()?)
        .stderr(log)
        .spawn()
    {
        Ok(child) => Some(child),
        Err(error) => {
            say!("could not open the machine app: {error}");
            None
        }
    }
}

/// The operator account the demo makes for its dashboard.
const DEMO_USER: &str = "demo";
/// Where the demo keeps that account's password (readable only by its
/// owner), so a second run can say where it is.
const LOGIN_FILE: &str = "demo-login.txt";

/// The dashboard login of this demo directory.
struct Login {
    password: String,
    /// Made by this run (its password is printed once, now).
    new: bool,
}

/// Makes the demo's admin account on the first run (a random password,
/// kept in DIR/demo-login.txt with mode 0600); later runs reuse it.
fn demo_login(dir: &Path) -> Result<Login> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(LOGIN_FILE);
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Some(password) = text.lines().find_map(|l| l.strip_prefix("password: "))
    {
        return Ok(Login {
            password: password.to_owned(),
            new: false,
        });
    }
    let password = crate::user::generated_password("Demo");
    crate::user::add_account(
        dir,
        DEMO_USER,
        ledger::operator::OperatorRole::Admin,
        &password,
    )
    .context("making the demo's dashboard account")?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "user: {DEMO_USER}\npassword: {password}")?;
    Ok(Login {
        password,
        new: true,
    })
}

fn print_login(login: &Login, dir: &Path) {
    if login.new {
        say!(
            "Log in to any dashboard as {DEMO_USER} with password {} (shown this once; kept in {} for you only).",
            login.password,
            dir.join(LOGIN_FILE).display()
        );
    } else {
        say!(
            "Log in to any dashboard as {DEMO_USER}; the password is in {}.",
            dir.join(LOGIN_FILE).display()
        );
    }
    say!("Ctrl-C stops everything.");
    say!();
}

/// The demo machine app's admin password (it is a demo: say it).
const APP_ADMIN_PASSWORD: &str = "Demo-admin-2026!";

fn print_banner(
    file: &ClusterFile,
    dir: &Path,
    transport: &str,
    primary: &str,
    machines: u32,
    app: bool,
) {
    say!();
    say!("vendledger demo — everything in {}", dir.display());
    say!("  replication over {transport}");
    for replica in &file.replicas {
        let role = if replica.id == primary {
            "primary"
        } else {
            "follower, serves the dashboard too"
        };
        say!(
            "  {}  dashboard http://{}/  ({role})",
            replica.id,
            replica.dashboard
        );
    }
    say!(
        "  {machines} machines (VM-001..VM-{machines:03}) selling in real time; VM-{:03} loses its network now and then and catches up",
        machines.min(3)
    );
    if app {
        say!(
            "  the machine app is open for VM-{:03} (admin password {APP_ADMIN_PASSWORD})",
            machines + 1
        );
    }
}

/// Restarts replicas that die (as `cluster up` does) and reports the
/// fleet now and then, until Ctrl-C or SIGTERM.
async fn supervise(
    file: &mut ClusterFile,
    replicas: &mut [Child],
    binary: &Path,
    dir: &Path,
    board: &Board,
) -> Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut restarts = vec![cluster::Restarts::new(); replicas.len()];
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    let mut report = tokio::time::interval(REPORT_EVERY);
    report.tick().await;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            _ = poll.tick() => cluster::supervise(replicas, file, &mut restarts, binary, dir)?,
            _ = report.tick() => {
                let now = jiff::Zoned::now().strftime("%H:%M:%S").to_string();
                say!("{now}  {}", board.line());
            }
        }
    }
}

//! `vendctl simulate --cluster`: a fleet of simulated machines speaking the
//! real protocol to a running cluster. Each machine sells through its
//! `MachineCore` in the machine app's crash-safe order (every decision is
//! stored in the machine's own ledger first and applied after), and ships
//! its events with the real uplink; now and then it goes offline for a
//! while and keeps selling. The run ends when every event is acknowledged
//! as committed, riding through failovers.

use crate::cluster::ClusterFile;
use crate::say;
use crate::util::report_created_keys;
use anyhow::{Result, bail};
use ledger::crypto::{LINK_KEY_CONTEXT, SecretKey};
use ledger::keys::{Keyring, SingleMachineKey, create_machine_keys};
use ledger::store::{Appended, OpenOptions};
use ledger::{Ledger, MachineId, Prepared};
use link::driver::{LocalLedger, UplinkControl, UplinkReport, spawn_uplink};
use link::uplink::{HandshakeRefused, Uplink, UplinkStats};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use workload::{SIMULATION_START_MS, SimMachine};

/// Reports an uplink may queue before it waits for the machine to read
/// them.
const UPLINK_REPORTS_MAX: usize = 1_024;

pub struct FleetArgs {
    pub cluster: PathBuf,
    pub machines: u32,
    pub events_per_machine: u64,
    pub seed: u64,
    pub timeout_s: u64,
}

#[derive(Serialize, Default)]
struct Summary {
    machines: u32,
    events: u64,
    events_acked: u64,
    events_resent: u64,
    failovers_seen: u64,
    redirects: u64,
    offline_periods: u64,
    seconds: f64,
    per_machine: Vec<MachineSummary>,
}

#[derive(Serialize, Clone, Default)]
struct MachineSummary {
    id: String,
    events: u64,
    acked: u64,
    resent: u64,
    failovers_seen: u64,
    offline_periods: u64,
}

struct MachineSetup {
    id: MachineId,
    key: SecretKey,
    ledger: Arc<Mutex<Ledger>>,
    sim: SimMachine,
    chain: SingleMachineKey,
}

pub fn run(args: FleetArgs) -> Result<ExitCode> {
    let file = ClusterFile::load(&args.cluster)?;
    let machines_dir = args.cluster.join("machines");
    refuse_earlier_machines(&machines_dir)?;
    let setups = open_machines(&file, &machines_dir, &args)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_s);
    let results = drive_fleet(setups, &file.machine_addresses(), &args, deadline)?;
    let (summary, failures) = summarize(args.machines, started.elapsed(), results);
    print_summary(&summary)?;
    if !failures.is_empty() {
        bail!(
            "{} machines did not finish: {}",
            failures.len(),
            failures.join("; ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Machines start from empty ledgers: resuming an earlier run's streams
/// would mix two runs' figures, and their seeds would repeat decisions the
/// ledgers already hold.
fn refuse_earlier_machines(machines_dir: &Path) -> Result<()> {
    if machines_dir.exists() && std::fs::read_dir(machines_dir)?.next().is_some() {
        bail!(
            "{} already holds machines from an earlier run; use a new cluster directory",
            machines_dir.display()
        );
    }
    Ok(())
}

/// Opens each machine's own ledger under `machines_dir`, with the key the
/// cluster's keyring holds for it, and its simulated customers.
fn open_machines(
    file: &ClusterFile,
    machines_dir: &Path,
    args: &FleetArgs,
) -> Result<Vec<MachineSetup>> {
    // The simulated machines are provisioned like real ones, through the
    // same code as `vendctl keys machine` (keys that exist are kept); the
    // replicas load a new machine's key when it first knocks.
    let ids: Vec<MachineId> = (1..=args.machines).map(MachineId::numbered).collect();
    report_created_keys(&create_machine_keys(&file.keys_dir, &ids)?, &file.keys_dir);
    let keyring = Keyring::open(&file.keys_dir)?;
    let mut setups = Vec::new();
    for (n, id) in (1u64..).zip(ids) {
        let key = keyring.require_machine(&id)?.clone();
        let options = OpenOptions {
            create: true,
            ..OpenOptions::default()
        };
        let ledger = Ledger::open(
            &machines_dir.join(id.as_str()).join("log"),
            keyring.store_key(),
            options,
        )?;
        let seed = args.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n;
        setups.push(MachineSetup {
            sim: SimMachine::new(id.clone(), &key, seed, SIMULATION_START_MS),
            chain: SingleMachineKey::new(id.clone(), &key),
            ledger: Arc::new(Mutex::new(ledger)),
            id,
            key,
        });
    }
    Ok(setups)
}

/// Runs every machine as its own task and collects how each one ended.
/// Two worker threads are enough: the machines mostly wait on the network
/// and on their pauses between customers.
fn drive_fleet(
    setups: Vec<MachineSetup>,
    addresses: &[String],
    args: &FleetArgs,
    deadline: Instant,
) -> Result<Vec<Result<MachineSummary>>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let results = runtime.block_on(async {
        let tasks: Vec<_> = setups
            .into_iter()
            .enumerate()
            .map(|(index, setup)| {
                let seed = args.seed ^ (index as u64 + 1).wrapping_mul(0xA5A5);
                tokio::spawn(drive_machine(
                    setup,
                    args.events_per_machine,
                    addresses.to_vec(),
                    seed,
                    deadline,
                ))
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.map_err(anyhow::Error::from).and_then(|r| r));
        }
        results
    });
    Ok(results)
}

/// Adds up the machines that finished and lists those that did not.
fn summarize(
    machines: u32,
    elapsed: Duration,
    results: Vec<Result<MachineSummary>>,
) -> (Summary, Vec<String>) {
    let mut summary = Summary {
        machines,
        seconds: elapsed.as_secs_f64(),
        ..Summary::default()
    };
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(machine) => {
                summary.events += machine.events;
                summary.events_acked += machine.acked;
                summary.events_resent += machine.resent;
                summary.failovers_seen += machine.failovers_seen;
                summary.offline_periods += machine.offline_periods;
                summary.per_machine.push(machine);
            }
            Err(error) => failures.push(format!("{error:#}")),
        }
    }
    (summary, failures)
}

/// One line for the operator on stderr, the whole summary as JSON on
/// stdout for scripts.
fn print_summary(summary: &Summary) -> Result<()> {
    eprintln!(
        "fleet: {} events, {} acknowledged, {} resent after reconnects, {} failovers seen, {} offline periods, {:.1}s",
        summary.events,
        summary.events_acked,
        summary.events_resent,
        summary.failovers_seen,
        summary.offline_periods,
        summary.seconds
    );
    say!("{}", serde_json::to_string_pretty(summary)?);
    Ok(())
}

/// Sells until `target` events are stored, then waits until all of them
/// are acknowledged, or fails at `deadline`.
async fn drive_machine(
    setup: MachineSetup,
    target: u64,
    addresses: Vec<String>,
    seed: u64,
    deadline: Instant,
) -> Result<MachineSummary> {
    let mut machine = MachineRun::start(setup, target, addresses, seed);
    loop {
        if Instant::now() > deadline {
            let summary = &machine.summary;
            match &machine.refused {
                // Why, rather than only how much: the replicas would not
                // take this machine's session.
                Some(refused) => bail!(
                    "{}: {refused}, so {} of {} events were acknowledged",
                    summary.id,
                    summary.acked,
                    summary.events
                ),
                None => bail!(
                    "{}: {} of {} events acknowledged when the time ran out",
                    summary.id,
                    summary.acked,
                    summary.events
                ),
            }
        }
        if machine.summary.events < target {
            machine.sell_burst()?;
        }
        machine.go_offline_or_back().await?;
        machine.pause_taking_reports().await;
        if machine.finished() {
            return machine.stop().await;
        }
    }
}

/// What a machine needs to start its uplink, again after every offline
/// period.
struct LinkStarter {
    id: MachineId,
    link_key: SecretKey,
    addresses: Vec<String>,
    local: LocalLedger,
    reports: mpsc::Sender<UplinkReport>,
}

type RunningUplink = (UplinkControl, JoinHandle<UplinkStats>);

impl LinkStarter {
    /// An uplink that resends from `acked`, the mark the fleet last
    /// acknowledged (as a real machine's restarted uplink does).
    fn start(&self, acked: u64) -> RunningUplink {
        let uplink = Uplink::new(
            self.id.clone(),
            self.link_key.clone(),
            self.addresses.clone(),
            acked,
        );
        spawn_uplink(uplink, self.local.clone(), self.reports.clone())
    }
}

/// One machine of the fleet while it runs.
struct MachineRun {
    setup: MachineSetup,
    target: u64,
    rng: ChaCha8Rng,
    link: LinkStarter,
    /// `None` while the machine is offline.
    running: Option<RunningUplink>,
    reports: mpsc::Receiver<UplinkReport>,
    offline_until: Option<Instant>,
    last_primary: Option<String>,
    /// Why the replicas last refused this machine's handshake, until one
    /// takes a session (see `link::uplink::HandshakeRefused`).
    refused: Option<HandshakeRefused>,
    summary: MachineSummary,
}

impl MachineRun {
    fn start(setup: MachineSetup, target: u64, addresses: Vec<String>, seed: u64) -> MachineRun {
        let (reports_tx, reports) = mpsc::channel(UPLINK_REPORTS_MAX);
        let link = LinkStarter {
            id: setup.id.clone(),
            link_key: setup.key.derive(LINK_KEY_CONTEXT),
            addresses,
            local: LocalLedger {
                machine: setup.id.clone(),
                ledger: setup.ledger.clone(),
            },
            reports: reports_tx,
        };
        MachineRun {
            running: Some(link.start(0)),
            summary: MachineSummary {
                id: setup.id.to_string(),
                ..MachineSummary::default()
            },
            setup,
            target,
            rng: ChaCha8Rng::seed_from_u64(seed),
            link,
            reports,
            offline_until: None,
            last_primary: None,
            refused: None,
        }
    }

    /// A burst of customers. Each decision is stored in the machine's own
    /// ledger before the machine applies it, then the uplink is woken.
    fn sell_burst(&mut self) -> Result<()> {
        for _ in 0..self.rng.random_range(1..8) {
            let (ledger, chain) = (&self.setup.ledger, &self.setup.chain);
            let applied = self
                .setup
                .sim
                .step(|prepared| append_to_own_ledger(ledger, chain, prepared))?;
            self.summary.events += applied.len() as u64;
            if self.summary.events >= self.target {
                break;
            }
        }
        if let Some((control, _)) = &self.running {
            control.appended.notify_one();
        }
        Ok(())
    }

    /// Now and then the machine loses its network for a while and keeps
    /// selling; when the while is over, a new uplink resends everything
    /// after the acknowledged mark.
    async fn go_offline_or_back(&mut self) -> Result<()> {
        let selling = self.summary.events < self.target;
        match (&self.running, self.offline_until) {
            (Some(_), _) if selling && self.rng.random_bool(0.01) => {
                let running = self.running.take().expect("matched Some");
                self.summary.resent += stop_uplink(running).await?.events_resent;
                self.summary.offline_periods += 1;
                let offline_ms = self.rng.random_range(300..1_500);
                self.offline_until = Some(Instant::now() + Duration::from_millis(offline_ms));
            }
            (None, Some(until)) if Instant::now() >= until => {
                self.running = Some(self.link.start(self.summary.acked));
                self.offline_until = None;
            }
            _ => {}
        }
        Ok(())
    }

    /// Customers do not come back to back: waits a moment, taking the
    /// uplink's reports meanwhile.
    async fn pause_taking_reports(&mut self) {
        let pause = tokio::time::sleep(Duration::from_millis(self.rng.random_range(1..30)));
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                Some(report) = self.reports.recv() => self.on_report(report),
            }
        }
    }

    fn on_report(&mut self, report: UplinkReport) {
        match report {
            UplinkReport::Acknowledged(seq) => self.summary.acked = self.summary.acked.max(seq),
            UplinkReport::State {
                primary, refused, ..
            } => {
                if let Some(primary) = primary {
                    if self.last_primary.as_ref().is_some_and(|p| *p != primary) {
                        self.summary.failovers_seen += 1;
                    }
                    self.last_primary = Some(primary);
                }
                if let (None, Some(now)) = (&self.refused, &refused) {
                    // Said at once, not only when the time runs out.
                    eprintln!("{}: {now}; retrying", self.summary.id);
                }
                self.refused = refused;
            }
            UplinkReport::Remote(_) => {}
        }
    }

    /// Everything sold is acknowledged, and the machine is online (so the
    /// last acknowledgement came over a live link).
    fn finished(&self) -> bool {
        self.summary.events >= self.target
            && self.summary.acked >= self.summary.events
            && self.running.is_some()
    }

    async fn stop(mut self) -> Result<MachineSummary> {
        if let Some(running) = self.running.take() {
            self.summary.resent += stop_uplink(running).await?.events_resent;
        }
        Ok(self.summary)
    }
}

async fn stop_uplink((control, task): RunningUplink) -> Result<UplinkStats> {
    // The uplink may have stopped already; then there is nobody to tell.
    let _ = control.stop.send(true);
    Ok(task.await?)
}

/// Stores one decision in the machine's own ledger, as the machine app
/// does: anything but a fresh append means the decision was not stored.
fn append_to_own_ledger(
    ledger: &Mutex<Ledger>,
    chain: &SingleMachineKey,
    prepared: &Prepared,
) -> Result<()> {
    let at_ms = prepared.at_ms().unwrap_or(SIMULATION_START_MS);
    let mut ledger = ledger
        .lock()
        .map_err(|_| anyhow::anyhow!("ledger lock poisoned"))?;
    let outcome = ledger.append_events(0, at_ms, prepared.signed(), chain)?;
    if let Some(problem) = outcome
        .results
        .iter()
        .find(|r| !matches!(r, Appended::New { .. }))
    {
        bail!(
            "{}: the machine's ledger refused an event: {problem:?}",
            chain.machine
        );
    }
    Ok(())
}

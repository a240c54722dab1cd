//! `vendctl simulate --cluster`: a fleet of simulated machines speaking the
//! real protocol to a running cluster. Each machine sells (through the real
//! rules), stores every event in its own ledger first, and ships it with
//! the real uplink; now and then it goes offline for a while and keeps
//! selling. The run ends when every event is acknowledged as committed,
//! riding through failovers.

use crate::cluster::ClusterFile;
use crate::say;
use anyhow::{Context, Result, bail};
use ledger::crypto::{LINK_KEY_CONTEXT, SecretKey};
use ledger::keys::{Keyring, SingleMachineKey};
use ledger::store::OpenOptions;
use ledger::workload::{SIMULATION_START_MS, SimMachine};
use ledger::{Ledger, MachineId};
use link::driver::{LocalLedger, UplinkReport, spawn_uplink};
use link::uplink::Uplink;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    if machines_dir.exists() && std::fs::read_dir(&machines_dir)?.next().is_some() {
        bail!(
            "{} already holds machines from an earlier run; use a new cluster directory",
            machines_dir.display()
        );
    }
    let mut keyring = Keyring::open(&file.keys_dir, false).context("loading the cluster's keys")?;
    let mut setups = Vec::new();
    for n in 1..=args.machines {
        let id = MachineId::numbered(n);
        let key = keyring.ensure_machine(&id)?.clone();
        let options = OpenOptions {
            create: true,
            ..OpenOptions::default()
        };
        let ledger = Ledger::open(
            &machines_dir.join(id.as_str()).join("log"),
            keyring.store_key(),
            options,
        )?;
        let seed = args.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(n);
        setups.push(MachineSetup {
            sim: SimMachine::new(id.clone(), &key, seed, SIMULATION_START_MS),
            chain: SingleMachineKey::new(id.clone(), &key),
            ledger: Arc::new(Mutex::new(ledger)),
            id,
            key,
        });
    }
    let addresses = file.machine_addresses();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_s);
    let results: Vec<Result<MachineSummary>> = runtime.block_on(async {
        let tasks: Vec<_> = setups
            .into_iter()
            .enumerate()
            .map(|(index, setup)| {
                let addresses = addresses.clone();
                let seed = args.seed ^ (index as u64 + 1).wrapping_mul(0xA5A5);
                tokio::spawn(drive_machine(
                    setup,
                    args.events_per_machine,
                    addresses,
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
    let mut summary = Summary {
        machines: args.machines,
        seconds: started.elapsed().as_secs_f64(),
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
    eprintln!(
        "fleet: {} events, {} acknowledged, {} resent after reconnects, {} failovers seen, {} offline periods, {:.1}s",
        summary.events,
        summary.events_acked,
        summary.events_resent,
        summary.failovers_seen,
        summary.offline_periods,
        summary.seconds
    );
    say!("{}", serde_json::to_string_pretty(&summary)?);
    if !failures.is_empty() {
        bail!(
            "{} machines did not finish: {}",
            failures.len(),
            failures.join("; ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn drive_machine(
    mut setup: MachineSetup,
    target: u64,
    addresses: Vec<String>,
    seed: u64,
    deadline: Instant,
) -> Result<MachineSummary> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let local = LocalLedger {
        machine: setup.id.clone(),
        ledger: setup.ledger.clone(),
    };
    let link_key = setup.key.derive(LINK_KEY_CONTEXT);
    let (reports_tx, mut reports) = tokio::sync::mpsc::channel::<UplinkReport>(1_024);
    let start_uplink = |acked: u64| {
        let uplink = Uplink::new(setup.id.clone(), link_key.clone(), addresses.clone(), acked);
        spawn_uplink(uplink, local.clone(), reports_tx.clone())
    };
    let mut running = Some(start_uplink(0));
    let mut summary = MachineSummary {
        id: setup.id.to_string(),
        ..MachineSummary::default()
    };
    let mut offline_until: Option<Instant> = None;
    let mut last_primary: Option<String> = None;
    loop {
        if Instant::now() > deadline {
            bail!(
                "{}: {} of {} events acknowledged when the time ran out",
                setup.id,
                summary.acked,
                summary.events
            );
        }
        if summary.events < target {
            // A burst of customers.
            for _ in 0..rng.random_range(1..8) {
                let decided = setup.sim.step();
                let at_ms = decided
                    .first()
                    .map_or(SIMULATION_START_MS, |(e, _)| e.at_ms);
                let signed: Vec<_> = decided.into_iter().map(|(_, s)| s).collect();
                let count = signed.len() as u64;
                {
                    let mut ledger = setup
                        .ledger
                        .lock()
                        .map_err(|_| anyhow::anyhow!("ledger lock poisoned"))?;
                    ledger.append_events(0, at_ms, &signed, &setup.chain)?;
                }
                summary.events += count;
                if summary.events >= target {
                    break;
                }
            }
            if let Some((control, _)) = &running {
                control.appended.notify_one();
            }
        }
        match (&running, offline_until) {
            (Some(_), _) if summary.events < target && rng.random_bool(0.01) => {
                // The machine loses its network for a while and keeps selling.
                let (control, task) = running.take().expect("checked");
                let _ = control.stop.send(true);
                let stats = task.await?;
                summary.resent += stats.events_resent;
                summary.offline_periods += 1;
                offline_until =
                    Some(Instant::now() + Duration::from_millis(rng.random_range(300..1_500)));
            }
            (None, Some(until)) if Instant::now() >= until => {
                running = Some(start_uplink(summary.acked));
                offline_until = None;
            }
            _ => {}
        }
        let pause = tokio::time::sleep(Duration::from_millis(rng.random_range(1..30)));
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                Some(report) = reports.recv() => match report {
                    UplinkReport::Acknowledged(seq) => summary.acked = summary.acked.max(seq),
                    UplinkReport::State { primary: Some(primary), .. } => {
                        if last_primary.as_ref().is_some_and(|p| *p != primary) {
                            summary.failovers_seen += 1;
                        }
                        last_primary = Some(primary);
                    }
                    UplinkReport::State { .. } | UplinkReport::Remote(_) => {}
                },
            }
        }
        if summary.events >= target && summary.acked >= summary.events && running.is_some() {
            break;
        }
    }
    if let Some((control, task)) = running {
        let _ = control.stop.send(true);
        let stats = task.await?;
        summary.resent += stats.events_resent;
    }
    Ok(summary)
}

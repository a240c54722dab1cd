//! `vendctl simulate --cluster`: a fleet of simulated machines speaking the
//! real protocol to a running cluster, from a handful to 10,000 at once.
//! Each machine (`machine.rs`) sells in the machine app's crash-safe order
//! and ships its events with the real uplink; now and then it goes offline
//! and keeps selling. A run ends when every machine has sold its events (or
//! the duration is over) and everything is acknowledged as committed,
//! riding through failovers.

mod machine;

pub use machine::{DarkSpells, Local, MachineRun, MachineSetup, MachineSummary, Pace};

use crate::cluster::ClusterFile;
use crate::say;
use crate::util::{grouped, report_created_keys};
use anyhow::{Result, bail};
use ledger::keys::{Keyring, SingleMachineKey, create_machine_keys};
use ledger::store::OpenOptions;
use ledger::{Ledger, MachineId};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use workload::{SIMULATION_START_MS, SimMachine};

/// Machines come up at this many per second, as a real fleet's do (not
/// all in the same instant): 10,000 machines take 20 s to come online.
const MACHINES_STARTED_PER_S: u64 = 500;
/// Left in DIR/machines by every run (see `refuse_earlier_machines`).
const RUN_MARK: &str = "fleet-run";
/// How often a fleet-wide dark spell may start (`--dark-percent`).
const DARK_SPELL_EVERY: Duration = Duration::from_secs(20);

pub struct FleetArgs {
    pub cluster: PathBuf,
    pub machines: u32,
    pub events_per_machine: u64,
    pub seed: u64,
    pub timeout_s: u64,
    /// Events per second over the whole fleet; as fast as it goes if None.
    pub rate: Option<f64>,
    /// Sell for this long instead of to `events_per_machine`.
    pub duration: Option<Duration>,
    /// Percentage of machines that go dark together in each dark spell.
    pub dark_percent: u8,
    /// Keep the machines' own events in memory instead of RocksDB.
    pub memory_ledgers: bool,
    /// Machines install themselves, then hold their connections idle until
    /// `duration` is over (see `MachineRun::hold_idle`).
    pub idle: bool,
}

#[derive(Serialize, Default)]
pub struct Summary {
    pub machines: u32,
    pub events: u64,
    pub events_acked: u64,
    pub events_resent: u64,
    pub failovers_seen: u64,
    pub offline_periods: u64,
    pub seconds: f64,
    /// Events per second recorded by the machines (all acknowledged).
    pub events_per_second: f64,
    /// Acknowledgement latency of a decision: stored on the machine →
    /// committed by the cluster, in ms, over the decisions whose machine
    /// stayed online from storing to acknowledgement.
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    pub ack_max_ms: f64,
    /// The same for the decisions made in the second half of `--duration`
    /// (0 without one): a large fleet's steady state, after its machines
    /// connected and installed themselves.
    pub second_half_ack_p50_ms: f64,
    pub second_half_ack_p99_ms: f64,
    pub second_half_ack_max_ms: f64,
    /// Decisions that waited out an outage of their machine (stored while
    /// offline, or waiting when it went offline), and how long they waited
    /// for their acknowledgement: mostly the outage itself.
    pub outage_events: u64,
    pub outage_ack_p50_ms: f64,
    pub outage_ack_p99_ms: f64,
    pub outage_ack_max_ms: f64,
    /// Where the machines kept their own events: "rocksdb" or "memory".
    pub machine_ledgers: &'static str,
    pub per_machine: Vec<MachineSummary>,
}

/// Runs the fleet and prints its summary (a line on stderr, JSON on
/// stdout).
pub fn run(args: FleetArgs) -> Result<ExitCode> {
    let (summary, failures) = load(&args)?;
    print_summary(&summary)?;
    all_finished(failures)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the fleet against the cluster until every machine is done or its
/// time is up: the summary, and how each machine that did not finish
/// ended.
pub fn load(args: &FleetArgs) -> Result<(Summary, Vec<String>)> {
    let (elapsed, results) = start_and_drive(args)?;
    let (mut summary, failures) = summarize(args.machines, elapsed, results);
    summary.machine_ledgers = if args.memory_ledgers {
        "memory"
    } else {
        "rocksdb"
    };
    Ok((summary, failures))
}

/// How many of the machines that did not finish an error names (a fleet
/// of 10,000 that could not reach its cluster named them all, 570 KB).
const FAILURES_NAMED_MAX: usize = 10;

/// An error naming the machines that did not finish (the first
/// `FAILURES_NAMED_MAX`), if any did not.
pub fn all_finished(failures: Vec<String>) -> Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    let named = failures.len().min(FAILURES_NAMED_MAX);
    let more = match failures.len() - named {
        0 => String::new(),
        more => format!("; and {more} more"),
    };
    bail!(
        "{} machines did not finish: {}{more}",
        failures.len(),
        failures[..named].join("; ")
    )
}

type MachineResults = Vec<Result<MachineSummary>>;

fn start_and_drive(args: &FleetArgs) -> Result<(Duration, MachineResults)> {
    let file = ClusterFile::load(&args.cluster)?;
    // Every machine holds a connection; thousands need more descriptors
    // than the common soft limit of 1,024.
    let descriptors = replica::server::limits::raise_descriptor_limit();
    let needed = u64::from(args.machines) + 64;
    if descriptors < needed {
        bail!(
            "{} machines need about {needed} file descriptors, and this process may have only {descriptors} (raise the hard limit: ulimit -Hn)",
            args.machines
        );
    }
    let machines_dir = args.cluster.join("machines");
    refuse_earlier_machines(&machines_dir)?;
    // Machines whose events stay in memory leave no ledger behind; this
    // mark stands for them, so a later run does not resend their seqs with
    // other events.
    std::fs::create_dir_all(&machines_dir)?;
    std::fs::write(
        machines_dir.join(RUN_MARK),
        format!("{} machines\n", args.machines),
    )?;
    let setups = open_machines(&file, &machines_dir, args)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_s);
    let results = drive_fleet(setups, &file.machine_addresses(), args, deadline)?;
    Ok((started.elapsed(), results))
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
        let local = if args.memory_ledgers {
            Local::Memory(Arc::default())
        } else {
            let options = OpenOptions {
                create: true,
                ..OpenOptions::default()
            };
            let log = machines_dir.join(id.as_str()).join("log");
            let ledger = Ledger::open(&log, keyring.store_key(), options)?;
            Local::Disk(Arc::new(Mutex::new(ledger)))
        };
        let seed = args.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n;
        setups.push(MachineSetup {
            sim: SimMachine::new(id.clone(), &key, seed, SIMULATION_START_MS),
            chain: SingleMachineKey::new(id.clone(), &key),
            local,
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
    let pace = load_pace(args);
    let sell_until = args.duration.map(|d| Instant::now() + d);
    let idle = args.idle;
    let results = runtime.block_on(async {
        let tasks: Vec<_> = setups
            .into_iter()
            .enumerate()
            .map(|(index, setup)| {
                let seed = args.seed ^ (index as u64 + 1).wrapping_mul(0xA5A5);
                let target = if args.duration.is_some() {
                    u64::MAX
                } else {
                    args.events_per_machine
                };
                let start_after =
                    Duration::from_millis(index as u64 * 1_000 / MACHINES_STARTED_PER_S);
                let (addresses, pace) = (addresses.to_vec(), pace.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(start_after).await;
                    let mut machine = MachineRun::start(setup, target, addresses, seed, pace);
                    if let Some(at) = sell_until {
                        machine.sell_until(at);
                    }
                    if idle {
                        machine.hold_idle();
                    }
                    drive_machine(machine, deadline).await
                })
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

/// How each machine of a load run paces itself: its share of `--rate`
/// (or as fast as the cluster takes it), short outages of its own, and
/// the fleet-wide dark spells of `--dark-percent` instead.
fn load_pace(args: &FleetArgs) -> Pace {
    Pace {
        burst: 1..8,
        pause_ms: 1..30,
        rate: args.rate.map(|rate| rate / f64::from(args.machines.max(1))),
        // The dark spells, when asked for, are the outages; otherwise a
        // machine now and then loses its network on its own.
        offline_chance: if args.dark_percent > 0 { 0.0 } else { 0.01 },
        offline_ms: 300..1_500,
        dark_spells: (args.dark_percent > 0).then(|| DarkSpells {
            from: Instant::now(),
            every: DARK_SPELL_EVERY,
            share: f64::from(args.dark_percent) / 100.0,
        }),
    }
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
    let mut latencies_us: Vec<u32> = Vec::new();
    let mut second_half_us: Vec<u32> = Vec::new();
    let mut outage_us: Vec<u32> = Vec::new();
    for result in results {
        match result {
            Ok(mut machine) => {
                latencies_us.append(&mut machine.latencies_us);
                second_half_us.append(&mut machine.second_half_latencies_us);
                outage_us.append(&mut machine.outage_latencies_us);
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
    (summary.ack_p50_ms, summary.ack_p99_ms, summary.ack_max_ms) = quantiles_ms(latencies_us);
    (
        summary.second_half_ack_p50_ms,
        summary.second_half_ack_p99_ms,
        summary.second_half_ack_max_ms,
    ) = quantiles_ms(second_half_us);
    summary.outage_events = outage_us.len() as u64;
    (
        summary.outage_ack_p50_ms,
        summary.outage_ack_p99_ms,
        summary.outage_ack_max_ms,
    ) = quantiles_ms(outage_us);
    summary.events_per_second = crate::util::rate(summary.events, elapsed);
    (summary, failures)
}

/// p50, p99 and max of latencies in µs, in ms (0 for none).
fn quantiles_ms(mut latencies_us: Vec<u32>) -> (f64, f64, f64) {
    latencies_us.sort_unstable();
    let quantile = |p: f64| {
        let index = ((latencies_us.len().saturating_sub(1)) as f64 * p).round() as usize;
        latencies_us
            .get(index)
            .map_or(0.0, |us| f64::from(*us) / 1_000.0)
    };
    (quantile(0.5), quantile(0.99), quantile(1.0))
}

/// One line for the operator on stderr, the whole summary as JSON on
/// stdout for scripts.
fn print_summary(summary: &Summary) -> Result<()> {
    eprintln!(
        "fleet: {} machines, {} events, {} acknowledged ({:.0}/s; ack p50 {:.1} ms, p99 {:.1} ms online), {} resent after reconnects, {} failovers seen, {} offline periods ({} events waited them out, p99 {:.1} ms), {:.1}s",
        grouped(u64::from(summary.machines)),
        grouped(summary.events),
        grouped(summary.events_acked),
        summary.events_per_second,
        summary.ack_p50_ms,
        summary.ack_p99_ms,
        grouped(summary.events_resent),
        summary.failovers_seen,
        summary.offline_periods,
        grouped(summary.outage_events),
        summary.outage_ack_p99_ms,
        summary.seconds
    );
    say!("{}", serde_json::to_string_pretty(summary)?);
    Ok(())
}

/// Sells until the machine's target or time is reached, then waits until
/// everything is acknowledged, or fails at `deadline`.
async fn drive_machine(mut machine: MachineRun, deadline: Instant) -> Result<MachineSummary> {
    loop {
        if Instant::now() > deadline {
            let summary = machine.summary();
            match machine.refused() {
                // Why, rather than only how much: the replicas would not
                // take this machine's session.
                Some(refused) => bail!(
                    "{}: {refused}, so {} of {} events were acknowledged",
                    summary.id,
                    summary.acked,
                    machine.recorded()
                ),
                None => bail!(
                    "{}: {} of {} events acknowledged when the time ran out",
                    summary.id,
                    summary.acked,
                    machine.recorded()
                ),
            }
        }
        if machine.selling() {
            machine.sell_burst()?;
        }
        machine.go_offline_or_back().await?;
        machine.pause_taking_reports().await;
        if machine.finished() {
            return machine.stop().await;
        }
    }
}

#[cfg(test)]
mod failures_tests {
    use super::*;

    #[test]
    fn a_large_fleet_that_did_not_finish_is_summed_up_not_listed() {
        assert!(all_finished(Vec::new()).is_ok());
        let few: Vec<String> = (1..=2).map(|n| format!("VM-{n}: stuck")).collect();
        let error = all_finished(few).unwrap_err().to_string();
        assert_eq!(error, "2 machines did not finish: VM-1: stuck; VM-2: stuck");
        let many: Vec<String> = (1..=10_000).map(|n| format!("VM-{n}: stuck")).collect();
        let error = all_finished(many).unwrap_err().to_string();
        assert!(error.starts_with("10000 machines did not finish: VM-1: stuck;"));
        assert!(error.ends_with("VM-10: stuck; and 9990 more"), "{error}");
    }
}

//! `vendctl simulate --offline`: writes a realistic fleet log directly
//! through the ledger, as a primary would, deterministic for a seed.
//! (`--cluster` is `fleet.rs`.)

use crate::say;
use crate::util::{DataArgs, grouped, hex32, per_second, progress, rate, report_created_keys};
use anyhow::{Result, bail};
use ledger::keys::{Keyring, create_machine_keys};
use ledger::store::OpenOptions;
use ledger::store::record::SignedEvent;
use ledger::{Ledger, MachineId, Until};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::process::ExitCode;
use std::time::Instant;
use workload::{SIMULATION_START_MS, SimMachine, WorkloadStats};

/// The largest fleet one `simulate` drives (10,000 concurrent machine
/// connections with --cluster).
const MACHINES_MAX: u32 = 10_000;

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vendctl simulate --offline --data /tmp/fleet --machines 10 --events-per-machine 10000\n  vendctl simulate --cluster /tmp/c --machines 10000 --memory-ledgers --rate 5000 --duration 60 --dark-percent 5 --json\n  vendctl simulate --cluster /tmp/c --machines 10000 --memory-ledgers --idle --duration 60"
)]
pub struct Args {
    /// Write the log directly (no replicas, no network), into --data.
    #[arg(long, conflicts_with = "cluster", requires = "data")]
    offline: bool,
    /// Drive machines over the real link against the cluster in DIR (see
    /// `vendctl cluster up`); machines keep their own ledgers in DIR/machines.
    #[arg(long, value_name = "DIR", conflicts_with = "offline")]
    cluster: Option<std::path::PathBuf>,
    /// Data directory for --offline (holds `log/` and `keys/`).
    #[arg(long, value_name = "DIR")]
    data: Option<std::path::PathBuf>,
    /// Key directory for --offline, if not `DATA/keys`.
    #[arg(long, value_name = "DIR")]
    keys: Option<std::path::PathBuf>,
    /// With --cluster: give up when not everything is acknowledged by then.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    /// Number of machines (VM-001, VM-002, ...).
    #[arg(long, default_value_t = 10)]
    machines: u32,
    /// Events each machine produces (a decision's events are never split,
    /// so a machine may end one or two events over).
    #[arg(long, default_value_t = 10_000)]
    events_per_machine: u64,
    /// Seed for every random choice (customers, operators, clocks).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Events per group commit (one synced write batch).
    #[arg(long, default_value_t = 4_096)]
    batch: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// With --cluster: events per second over the whole fleet (each machine
    /// takes its share); as fast as the cluster takes them if not given.
    #[arg(long, value_name = "EVENTS_PER_S", requires = "cluster")]
    rate: Option<f64>,
    /// With --cluster: sell for this many seconds instead of
    /// --events-per-machine, then wait for every acknowledgement.
    #[arg(long, value_name = "SECONDS", requires = "cluster")]
    duration: Option<u64>,
    /// With --cluster: every 20 s (the first 10 s in) this percentage of
    /// the machines goes dark together for 0.3-1.5 s, keeps selling, and
    /// comes back with a backlog; these are then the only outages.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100), requires = "cluster")]
    dark_percent: u8,
    /// With --cluster: machines keep their own events in memory instead of
    /// a RocksDB ledger each (for thousands of machines: they only make
    /// load; a crashed load generator cannot resend).
    #[arg(long, requires = "cluster")]
    memory_ledgers: bool,
    /// With --cluster and --duration: each machine installs itself (its
    /// first decision) and then sells nothing, holding its connection open
    /// (the link's pings only) until the duration is over; for measuring
    /// what idle connections cost the replicas.
    #[arg(long, requires = "duration", conflicts_with_all = ["rate", "dark_percent"])]
    idle: bool,
}

#[derive(Serialize)]
struct Summary {
    events: u64,
    machines: u32,
    seed: u64,
    head_gseq: u64,
    head_hash: String,
    seconds: f64,
    events_per_second: f64,
    #[serde(flatten)]
    stats: WorkloadStats,
}

pub fn run(args: Args) -> Result<ExitCode> {
    if args.machines == 0 || args.machines > MACHINES_MAX {
        bail!("--machines must be between 1 and {MACHINES_MAX}");
    }
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        bail!("--rate must be a positive number of events per second");
    }
    if let Some(cluster) = &args.cluster {
        return crate::fleet::run(crate::fleet::FleetArgs {
            cluster: cluster.clone(),
            machines: args.machines,
            events_per_machine: args.events_per_machine,
            seed: args.seed,
            timeout_s: args.timeout_s,
            rate: args.rate,
            duration: args.duration.map(std::time::Duration::from_secs),
            dark_percent: args.dark_percent,
            memory_ledgers: args.memory_ledgers,
            idle: args.idle,
        });
    }
    let data = offline_data(&args)?;
    refuse_existing_log(&data)?;
    // A new fleet log: its machines get keys through the same code as
    // `vendctl keys machine` (existing keys are kept), before anything else
    // is written.
    let ids: Vec<MachineId> = (1..=args.machines).map(MachineId::numbered).collect();
    let keys_dir = data.keys_dir();
    report_created_keys(&create_machine_keys(&keys_dir, &ids)?, &keys_dir);
    let keyring = data.keyring()?;
    let mut ledger = open_fresh_log(&data, &keyring)?;
    let machines = new_machines(&keyring, &ids, args.seed)?;
    let started = Instant::now();
    let stats = write_fleet_log(&mut ledger, &keyring, machines, &args)?;
    ledger.checkpoint()?;
    let elapsed = started.elapsed();
    check_projection(&ledger)?;
    let head = ledger.store().head();
    let summary = Summary {
        events: head.gseq,
        machines: args.machines,
        seed: args.seed,
        head_gseq: head.gseq,
        head_hash: hex32(&head.hash),
        seconds: elapsed.as_secs_f64(),
        events_per_second: rate(head.gseq, elapsed),
        stats,
    };
    print_summary(&summary, &data, args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// The data directory of an offline run, once the flags that only make
/// sense together are checked.
fn offline_data(args: &Args) -> Result<DataArgs> {
    let Some(data) = args.data.clone() else {
        bail!("choose --offline --data DIR or --cluster DIR");
    };
    if !args.offline {
        bail!("--data needs --offline (or use --cluster DIR)");
    }
    if !(1..=ledger::store::APPEND_BATCH_MAX).contains(&args.batch) {
        bail!(
            "--batch must be between 1 and {}",
            ledger::store::APPEND_BATCH_MAX
        );
    }
    Ok(DataArgs {
        data,
        keys: args.keys.clone(),
        archive: None,
    })
}

/// A simulated fleet starts every machine's stream at #1, so it cannot
/// continue a log; this is checked before any key or file is made.
fn refuse_existing_log(data: &DataArgs) -> Result<()> {
    if data.log_dir().join("CURRENT").exists() {
        bail!(
            "{} already holds a log; simulate into a new directory",
            data.log_dir().display()
        );
    }
    Ok(())
}

/// Creates the log, which must be empty (see [`refuse_existing_log`]).
fn open_fresh_log(data: &DataArgs, keyring: &Keyring) -> Result<Ledger> {
    let options = OpenOptions {
        create: true,
        ..OpenOptions::default()
    };
    let ledger = Ledger::open(&data.log_dir(), keyring.store_key(), options)?;
    if ledger.store().head().gseq > 0 {
        bail!(
            "{} already holds a log of {} entries; simulate into a new directory",
            data.log_dir().display(),
            ledger.store().head().gseq
        );
    }
    Ok(ledger)
}

/// VM-001, VM-002, ..., each with its key from the keyring and its own
/// seed derived from the run's.
fn new_machines(keyring: &Keyring, ids: &[MachineId], seed: u64) -> Result<Vec<SimMachine>> {
    let mut machines = Vec::new();
    for (n, id) in (1u64..).zip(ids) {
        let key = keyring.require_machine(id)?;
        let machine_seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n;
        machines.push(SimMachine::new(
            id.clone(),
            key,
            machine_seed,
            SIMULATION_START_MS,
        ));
    }
    Ok(machines)
}

/// Steps the machines until each produced `--events-per-machine` events,
/// appending them in group commits of `--batch` events.
///
/// The batch is the machines' storage here: each decision is handed to it
/// before the machine applies it, as everywhere. Nothing is reported to
/// anyone before the run ends, so a crash part way loses only a run that
/// is simply started again.
fn write_fleet_log(
    ledger: &mut Ledger,
    keyring: &Keyring,
    mut machines: Vec<SimMachine>,
    args: &Args,
) -> Result<WorkloadStats> {
    let total = u64::from(args.machines) * args.events_per_machine;
    let bar = progress(total, "simulate");
    let mut stats = WorkloadStats::default();
    // Always step the machine whose clock is furthest behind, so the log is
    // (nearly) in time order like a real fleet's.
    let mut queue: BinaryHeap<Reverse<(i64, usize)>> = (0..machines.len())
        .map(|i| Reverse((machines[i].clock_ms(), i)))
        .collect();
    let mut produced = vec![0u64; machines.len()];
    let mut batch: Vec<SignedEvent> = Vec::with_capacity(args.batch + 2);
    let mut batch_logged_ms = SIMULATION_START_MS;
    while let Some(Reverse((_, index))) = queue.pop() {
        let machine = &mut machines[index];
        for envelope in machine.step_into(&mut batch) {
            stats.record(&envelope.event);
            batch_logged_ms = batch_logged_ms.max(envelope.at_ms);
            produced[index] += 1;
        }
        if produced[index] < args.events_per_machine {
            queue.push(Reverse((machine.clock_ms(), index)));
        }
        if batch.len() >= args.batch || queue.is_empty() {
            append_batch(ledger, keyring, &mut batch, batch_logged_ms)?;
            bar.set_position(ledger.store().head().gseq);
        }
    }
    bar.finish_and_clear();
    Ok(stats)
}

/// The simulated machines ran the real rules, so a replay that reports an
/// issue means a bug, not bad luck.
fn check_projection(ledger: &Ledger) -> Result<()> {
    let projection = ledger.projection_as_of(Until::End)?;
    if projection.issue_count > 0 {
        bail!(
            "the projection reported {} issues; first: {:?}",
            projection.issue_count,
            projection.issues.first()
        );
    }
    Ok(())
}

fn print_summary(summary: &Summary, data: &DataArgs, json: bool) -> Result<()> {
    if json {
        say!("{}", serde_json::to_string_pretty(summary)?);
        return Ok(());
    }
    say!(
        "wrote {} events from {} machines to {} in {:.2}s ({} events/s, durable); head {}",
        grouped(summary.events),
        summary.machines,
        data.log_dir().display(),
        summary.seconds,
        per_second(summary.events_per_second),
        summary.head_hash
    );
    say!(
        "{} purchases, {} cancels, {} rejected inserts, {} change-owed tickets, {} collections",
        grouped(summary.stats.purchases),
        grouped(summary.stats.cancels),
        grouped(summary.stats.rejected_inserts),
        grouped(summary.stats.change_owed),
        grouped(summary.stats.collections)
    );
    Ok(())
}

/// One group commit: the batch becomes durable in one synced write.
fn append_batch(
    ledger: &mut Ledger,
    keyring: &Keyring,
    batch: &mut Vec<SignedEvent>,
    logged_ms: i64,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let outcome = ledger.append_events(0, logged_ms, batch, keyring)?;
    if let Some(problem) = outcome
        .results
        .iter()
        .find(|r| !matches!(r, ledger::store::Appended::New { .. }))
    {
        bail!("the store refused a simulated event: {problem:?}");
    }
    batch.clear();
    Ok(())
}

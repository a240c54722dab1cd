//! `vendctl bench-replication`: what a local three-replica cluster does
//! under a fleet that is not itself the bottleneck.
//!
//! `vendctl simulate --cluster` runs every machine's rules and fsyncs each
//! decision into the machine's own ledger, as a real machine does, so it
//! measures the machines. Here the events are generated up front and held
//! in memory: each machine's uplink (the real one, over the real link)
//! ships them as fast as the primary acknowledges, or at a fixed rate.
//! Four kinds of run, each on a fresh cluster of `vend-replica` processes:
//!
//! - saturated, no loss: committed events/s, follower lag;
//! - paced, no loss: ack latency (event released to the uplink → committed
//!   acknowledgement back at the machine), p50/p99/max;
//! - saturated, each replica dropping a share of received datagrams (a
//!   run per `--loss-percent`, 5% by default, `--loss-percent 1,5` for both): committed events/s
//!   as a fraction of the loss-free run;
//! - paced, with the primary SIGKILLed halfway: time from the kill to the
//!   first acknowledgement from the new primary.
//!
//! `--runs` chooses among them, and `curve` adds paced runs at
//! `CURVE_RATES` (the latency curve, printed with the saturated run).
//! Every run also reports the replicas' CPU time per committed event.

use crate::cluster::{
    ClusterArgs, ClusterFile, check_ports_free, fetch_status, init, replica_binary, spawn_replica,
};
use crate::say;
use crate::util::per_second;
use anyhow::{Context, Result, bail};
use ledger::MachineId;
use ledger::crypto::{LINK_KEY_CONTEXT, SecretKey};
use ledger::keys::Keyring;
use ledger::store::record::SignedEvent;
use link::driver::{UplinkReport, spawn_uplink};
use link::uplink::{LinkState, LocalEvents, Uplink};
use replica::transport::TransportKind;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use workload::{SIMULATION_START_MS, SimMachine};

#[derive(clap::Args)]
#[command(after_help = "Example: vendctl bench-replication --transport udp --json")]
pub struct Args {
    /// Simulated machines, each with its own uplink connection.
    #[arg(long, default_value_t = 20)]
    machines: u32,
    /// Events per saturated run (shared among the machines).
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Offered load of the paced runs, events/s over the whole fleet.
    #[arg(long, default_value_t = 4_000)]
    rate: u64,
    /// Length of each paced run.
    #[arg(long, default_value_t = 10)]
    paced_seconds: u64,
    /// Share of received datagrams each replica drops in the loss runs:
    /// one run per value (`--loss-percent 1,5` measures both of issue 12's
    /// figures; the default keeps the one run the peers harness reads).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "5",
        value_parser = clap::value_parser!(u8).range(1..=50)
    )]
    loss_percent: Vec<u8>,
    /// Replication transport of the clusters.
    #[arg(long, default_value = "udp")]
    transport: TransportKind,
    /// First port of the clusters (each uses 30 from here).
    #[arg(long, default_value_t = 7300)]
    base_port: u16,
    /// Where to put the clusters (default: a temporary directory, removed after).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    /// Keep the clusters' directories (replica logs, data) for inspection.
    #[arg(long)]
    keep: bool,
    /// Which runs to make, in order (`curve`: paced at 4k, 10k, 20k, 50k
    /// and 100k events/s for `--paced-seconds` each).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "saturated,paced,loss,failover"
    )]
    runs: Vec<RunKind>,
    /// Failover runs to make (each on a fresh cluster, a SIGKILL each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    kills: u32,
    /// Print JSON instead of lines for people.
    #[arg(long)]
    json: bool,
}

/// How a run feeds the machines' uplinks.
#[derive(Clone, Copy)]
enum Load {
    /// Every event is available at the start.
    Saturated,
    /// Events become available at this many per second over the fleet.
    Paced { rate: u64 },
}

#[derive(Serialize, Default)]
struct Run {
    name: String,
    drop_received_percent: u8,
    events: u64,
    seconds: f64,
    committed_events_per_second: f64,
    ack_latency_ms_p50: f64,
    ack_latency_ms_p99: f64,
    ack_latency_ms_max: f64,
    /// From an event's first send by its uplink to its acknowledgement:
    /// the time it spent in the link and the replicas' queues (in a
    /// saturated run the release-to-ack latency above is mostly the
    /// machine's own backlog, which the in-flight window keeps at home).
    sent_to_ack_ms_p50: f64,
    sent_to_ack_ms_p99: f64,
    sent_to_ack_ms_max: f64,
    /// Entries the slower follower was behind the primary's tip, sampled
    /// every 100 ms while the run lasted.
    follower_lag_mean: f64,
    follower_lag_max: u64,
    /// After the last acknowledgement, until both followers held the tip.
    followers_caught_up_ms: f64,
    naks_sent: u64,
    records_retransmitted: u64,
    datagrams_dropped_by_injection: u64,
    events_resent: u64,
    failover_ms: Option<f64>,
    /// The failover's phases, one after the other (see [`FailoverPhases`]).
    failover_phases: Option<FailoverPhases>,
    /// CPU time (user + system) of all the replica processes from the start
    /// of the load until both followers held the tip, per committed event:
    /// the figure that transfers between machines.
    replica_cpu_us_per_event: f64,
}

#[derive(Serialize)]
struct Figures {
    cores: usize,
    machines: u32,
    transport: String,
    runs: Vec<Run>,
    /// Saturated throughput with the most loss over without (when both
    /// ran).
    loss_throughput_fraction: Option<f64>,
    /// Each loss run's throughput over the loss-free one.
    loss_runs: Vec<LossFigures>,
}

#[derive(Serialize)]
struct LossFigures {
    loss_percent: u8,
    throughput_fraction: f64,
}

/// The name of the saturated run at `percent` datagram loss: "saturated
/// with loss" when it is the only loss run (the name the side-by-side
/// harness in `../shared/peers` reads), "saturated with N% loss" among
/// several.
fn loss_run_name(percent: u8, percents: &[u8]) -> String {
    match percents {
        [_] => "saturated with loss".to_owned(),
        _ => format!("saturated with {percent}% loss"),
    }
}

/// Which runs an invocation makes.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RunKind {
    /// Every event available at once.
    Saturated,
    /// At `--rate`.
    Paced,
    /// Saturated, each replica dropping `--loss-percent` of what it
    /// receives (a run per value).
    Loss,
    /// At `--rate`, the primary SIGKILLed halfway.
    Failover,
    /// Paced at each of `CURVE_RATES` (the latency curve).
    Curve,
}

/// The offered rates of the latency curve, events/s over the fleet.
const CURVE_RATES: [u64; 5] = [4_000, 10_000, 20_000, 50_000, 100_000];

/// One run of a benchmark.
struct RunPlan {
    name: String,
    /// Share of received datagrams each replica drops.
    loss_percent: u8,
    load: Load,
    events: u64,
    kill_primary: bool,
}

fn plans(args: &Args) -> Vec<RunPlan> {
    let paced = |rate| Load::Paced { rate };
    let plan = |name: &str, loss_percent, load, kill_primary| RunPlan {
        name: name.to_owned(),
        loss_percent,
        load,
        events: match load {
            Load::Saturated => args.events,
            Load::Paced { rate } => rate * args.paced_seconds,
        },
        kill_primary,
    };
    let mut plans = Vec::new();
    for kind in &args.runs {
        match kind {
            RunKind::Saturated => plans.push(plan("saturated", 0, Load::Saturated, false)),
            RunKind::Paced => plans.push(plan("paced", 0, paced(args.rate), false)),
            RunKind::Loss => plans.extend(args.loss_percent.iter().map(|&percent| {
                plan(
                    &loss_run_name(percent, &args.loss_percent),
                    percent,
                    Load::Saturated,
                    false,
                )
            })),
            RunKind::Failover => plans.extend(
                (0..args.kills).map(|_| plan("paced, primary killed", 0, paced(args.rate), true)),
            ),
            RunKind::Curve => plans.extend(
                CURVE_RATES
                    .iter()
                    .map(|&rate| plan(&format!("paced at {rate}/s"), 0, paced(rate), false)),
            ),
        }
    }
    plans
}

pub fn run(args: Args) -> Result<ExitCode> {
    if args.machines == 0 || args.events < u64::from(args.machines) || args.rate == 0 {
        bail!("nothing to measure: give at least one event per machine and a rate");
    }
    let (_guard, root) = scratch_root(&args)?;
    let binary = replica_binary()?;
    let plans = plans(&args);
    let most = plans.iter().map(|plan| plan.events).max().unwrap_or(0);
    let per_machine = most.div_ceil(u64::from(args.machines));
    eprintln!(
        "generating {} events per machine for {} machines...",
        per_machine, args.machines
    );
    let fleet = generate(args.machines, per_machine);
    let mut runs = Vec::new();
    for (index, plan) in plans.into_iter().enumerate() {
        let dir = root.join(format!("run-{}", index + 1));
        let (loss, events) = (plan.loss_percent, plan.events);
        eprintln!(
            "{}: {events} events, {loss}% datagrams dropped per receiver...",
            plan.name
        );
        let cluster = ClusterArgs {
            dir: dir.clone(),
            transport: args.transport,
            base_port: Some(args.base_port),
            drop_received_percent: loss,
        };
        let timeout = Duration::from_secs(args.timeout_s);
        let mut run = measure(&cluster, &binary, &fleet, &plan, timeout)
            .with_context(|| format!("run {:?} (logs in {})", plan.name, dir.display()))?;
        run.name = plan.name;
        runs.push(run);
    }
    let throughput = |name: &str| {
        runs.iter()
            .find(|run| run.name == name)
            .map(|run| run.committed_events_per_second)
    };
    let loss_runs: Vec<LossFigures> = args
        .loss_percent
        .iter()
        .filter_map(|&percent| {
            let (lossy, clean) = throughput(&loss_run_name(percent, &args.loss_percent))
                .zip(throughput("saturated"))?;
            Some(LossFigures {
                loss_percent: percent,
                throughput_fraction: lossy / clean,
            })
        })
        .collect();
    let loss_throughput_fraction = loss_runs
        .iter()
        .max_by_key(|run| run.loss_percent)
        .map(|run| run.throughput_fraction);
    let figures = Figures {
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        machines: args.machines,
        transport: args.transport.to_string(),
        runs,
        loss_throughput_fraction,
        loss_runs,
    };
    if args.json {
        say!("{}", serde_json::to_string_pretty(&figures)?);
    } else {
        print_figures(&figures);
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the clusters go. Dropping the returned guard removes them; with
/// --keep (or when a failed run's message names its logs) they stay.
fn scratch_root(args: &Args) -> Result<(Option<tempfile::TempDir>, PathBuf)> {
    let scratch = tempfile::Builder::new()
        .prefix("vendctl-bench-replication-")
        .tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))?;
    Ok(if args.keep {
        let root = scratch.keep();
        eprintln!("clusters in {}", root.display());
        (None, root)
    } else {
        let root = scratch.path().to_owned();
        (Some(scratch), root)
    })
}

fn print_figures(figures: &Figures) {
    say!(
        "{} machines over the real link, {} transport, {} cores",
        figures.machines,
        figures.transport,
        figures.cores
    );
    for run in &figures.runs {
        say!(
            "{:<22} {:>7} events in {:>6.2}s: {:>10} committed events/s; ack p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
             follower lag mean {:.0}, max {}; followers complete {:.0} ms after the last ack; \
             sent → ack p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
             NAKs {}, retransmitted {}, injected drops {}, resent {}; replica CPU {:.1} µs per event{}",
            run.name,
            run.events,
            run.seconds,
            per_second(run.committed_events_per_second),
            run.ack_latency_ms_p50,
            run.ack_latency_ms_p99,
            run.ack_latency_ms_max,
            run.follower_lag_mean,
            run.follower_lag_max,
            run.followers_caught_up_ms,
            run.sent_to_ack_ms_p50,
            run.sent_to_ack_ms_p99,
            run.sent_to_ack_ms_max,
            run.naks_sent,
            run.records_retransmitted,
            run.datagrams_dropped_by_injection,
            run.events_resent,
            run.replica_cpu_us_per_event,
            failover_words(run)
        );
    }
    for loss in &figures.loss_runs {
        say!(
            "throughput with {}% loss: {:.1}% of loss-free",
            loss.loss_percent,
            loss.throughput_fraction * 100.0
        );
    }
    print_curve(&figures.runs);
    print_failovers(&figures.runs);
}

/// The failover time and its phases, for people.
fn failover_words(run: &Run) -> String {
    let Some(ms) = run.failover_ms else {
        return String::new();
    };
    let phases = run.failover_phases.unwrap_or_default();
    format!(
        "; failover {ms:.0} ms (detection {:.0}, election {:.0}, epoch marker commit {:.0}, machine reconnect {:.0})",
        phases.detection_ms, phases.election_ms, phases.epoch_commit_ms, phases.reconnect_ms
    )
}

/// Over several failover runs: the failover time's p50, p99 and max, and
/// the phases' medians.
fn print_failovers(runs: &[Run]) {
    let mut times: Vec<f64> = runs.iter().filter_map(|run| run.failover_ms).collect();
    if times.len() < 2 {
        return;
    }
    times.sort_by(f64::total_cmp);
    let quantile =
        |sorted: &[f64], p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    let phases: Vec<FailoverPhases> = runs.iter().filter_map(|run| run.failover_phases).collect();
    let median = |f: fn(&FailoverPhases) -> f64| {
        let mut values: Vec<f64> = phases.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        if values.is_empty() {
            0.0
        } else {
            quantile(&values, 0.5)
        }
    };
    say!(
        "failover over {} kills: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; medians: detection {:.0}, election {:.0}, epoch marker commit {:.0}, machine reconnect {:.0} ms",
        times.len(),
        quantile(&times, 0.5),
        quantile(&times, 0.99),
        quantile(&times, 1.0),
        median(|p| p.detection_ms),
        median(|p| p.election_ms),
        median(|p| p.epoch_commit_ms),
        median(|p| p.reconnect_ms)
    );
}

/// The latency curve: ack p50/p99/max at each offered rate that ran, and
/// saturated.
fn print_curve(runs: &[Run]) {
    let curve: Vec<&Run> = runs
        .iter()
        .filter(|run| run.name.starts_with("paced at ") || run.name == "saturated")
        .collect();
    if curve.len() < 2 {
        return;
    }
    say!(
        "latency curve (offered → committed events/s: ack p50 / p99 / max ms; sent → ack p50 / p99 / max ms)"
    );
    for run in curve {
        say!(
            "  {:<20} {:>10}: {:>8.1} / {:>8.1} / {:>8.1}; {:>7.1} / {:>7.1} / {:>7.1}",
            run.name,
            per_second(run.committed_events_per_second),
            run.ack_latency_ms_p50,
            run.ack_latency_ms_p99,
            run.ack_latency_ms_max,
            run.sent_to_ack_ms_p50,
            run.sent_to_ack_ms_p99,
            run.sent_to_ack_ms_max
        );
    }
}

/// Each machine's events, generated through the real rules.
struct FleetEvents {
    machines: Vec<(MachineId, SecretKey, Arc<Vec<SignedEvent>>)>,
}

fn generate(machines: u32, per_machine: u64) -> FleetEvents {
    let machines = (1..=machines)
        .map(|n| {
            let id = MachineId::numbered(n);
            let key = SecretKey::generate();
            let mut sim = SimMachine::new(id.clone(), &key, u64::from(n), SIMULATION_START_MS);
            let mut events = Vec::new();
            while (events.len() as u64) < per_machine {
                sim.step_into(&mut events);
            }
            (id, key, Arc::new(events))
        })
        .collect();
    FleetEvents { machines }
}

/// A machine's events held in memory; `released` of them are "stored
/// locally" and may be shipped. The uplink sends what it reads at once, so
/// a read notes each event's first send.
#[derive(Clone)]
struct MemoryEvents {
    events: Arc<Vec<SignedEvent>>,
    released: Arc<AtomicU64>,
    /// When each event (index seq - 1) was first read for sending.
    first_sent: Arc<Mutex<Vec<Option<Instant>>>>,
}

impl LocalEvents for MemoryEvents {
    fn local_tip(&self) -> u64 {
        self.released.load(Ordering::Acquire)
    }

    fn events_from(&self, from: u64, max: usize) -> Vec<SignedEvent> {
        let tip = self.local_tip();
        let start = usize::try_from(from.max(1) - 1).unwrap_or(usize::MAX);
        let end = usize::try_from(tip).unwrap_or(usize::MAX);
        if start >= end {
            return Vec::new();
        }
        let end = end.min(start + max).min(self.events.len());
        let now = Instant::now();
        let mut first_sent = self.first_sent.lock().expect("not poisoned");
        for sent in first_sent.iter_mut().take(end).skip(start) {
            sent.get_or_insert(now);
        }
        self.events[start..end].to_vec()
    }
}

/// What the load reports about one machine.
#[derive(Default)]
struct MachineResult {
    latencies_us: Vec<u64>,
    sent_to_ack_us: Vec<u64>,
    resent: u64,
    /// First acknowledgement after the kill that came from another primary.
    failover_ack: Option<Instant>,
}

/// The local cluster of one run; its processes are killed when dropped.
struct LocalCluster {
    file: ClusterFile,
    children: Vec<Child>,
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl LocalCluster {
    fn start(args: &ClusterArgs, binary: &Path, fleet: &FleetEvents) -> Result<LocalCluster> {
        let file = init(args)?;
        check_ports_free(&file)?;
        let keyring = Keyring::open(&file.keys_dir)?;
        for (id, key, _) in &fleet.machines {
            key.save_new(&keyring.machine_key_path(id))?;
        }
        let mut cluster = LocalCluster {
            children: Vec::new(),
            file,
        };
        let logs: Vec<PathBuf> = cluster
            .file
            .replicas
            .iter()
            .map(|replica| args.dir.join(format!("{}.log", replica.id)))
            .collect();
        for (replica, log) in cluster.file.replicas.iter().zip(&logs) {
            cluster
                .children
                .push(spawn_replica(binary, &replica.config, log)?);
        }
        // Every replica up and a primary's epoch open: a run measured on
        // two replicas (one that could not bind its port, say) would
        // report a cluster that is not the one described.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for (child, log) in cluster.children.iter_mut().zip(&logs) {
                if let Some(exit) = child.try_wait()? {
                    bail!(
                        "a replica exited at start ({exit}): {}",
                        last_line(log).unwrap_or_else(|| format!("see {}", log.display()))
                    );
                }
            }
            let up = cluster.statuses().len() == cluster.file.replicas.len();
            if up && cluster.primary(true).is_some() {
                return Ok(cluster);
            }
            if Instant::now() > deadline {
                bail!(
                    "the cluster was not up within 20 s (every replica answering, one primary \
                     with its epoch open): see {}",
                    args.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The dashboard address of the replica that is primary now; with
    /// `epoch_open`, only once its epoch marker is committed.
    fn primary(&self, epoch_open: bool) -> Option<String> {
        self.file.replicas.iter().find_map(|replica| {
            let status = fetch_status(&replica.dashboard).ok()?;
            let open = status.tip > 0 && status.commit > 0;
            (status.role == "primary" && (open || !epoch_open)).then(|| replica.dashboard.clone())
        })
    }

    /// Each replica process's CPU time so far (user + system, in clock
    /// ticks); `None` for one whose /proc entry cannot be read. A killed
    /// replica is not reaped until the cluster is dropped, so its figures
    /// stay readable.
    fn cpu_ticks(&self) -> Vec<Option<u64>> {
        self.children
            .iter()
            .map(|child| {
                let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).ok()?;
                stat_cpu_ticks(&stat)
            })
            .collect()
    }

    fn statuses(&self) -> Vec<dashboard::ReplicaStatus> {
        self.file
            .replicas
            .iter()
            .filter_map(|replica| fetch_status(&replica.dashboard).ok())
            .collect()
    }
}

/// When a run SIGKILLs the primary, and where it notes the moment.
type KilledAt = Arc<Mutex<Option<Instant>>>;

fn measure(
    args: &ClusterArgs,
    binary: &Path,
    fleet: &FleetEvents,
    plan: &RunPlan,
    timeout: Duration,
) -> Result<Run> {
    let mut cluster = LocalCluster::start(args, binary, fleet)?;
    let machines = fleet.machines.len() as u64;
    let per_machine = plan.events.div_ceil(machines);
    let lag = LagSampler::start(cluster.file.clone());
    let killed_at = KilledAt::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cpu_before = cluster.cpu_ticks();
    let started = Instant::now();
    let deadline = started + timeout;
    let loads = machine_loads(
        &cluster,
        fleet,
        plan.load,
        per_machine,
        &killed_at,
        deadline,
    );
    let kill_after = plan
        .kill_primary
        .then(|| kill_delay(plan.load, plan.events));
    let (results, watch) = runtime.block_on(run_loads(&mut cluster, loads, kill_after, &killed_at));
    let seconds = started.elapsed().as_secs_f64();
    let last_ack = Instant::now();
    let fleet_result = FleetResult::collect(results)?;
    let (lag_mean, lag_max) = lag.stop();
    wait_for_followers(&cluster, deadline)?;
    let followers_caught_up_ms = last_ack.elapsed().as_secs_f64() * 1_000.0;
    let cpu_seconds = cpu_seconds(&cpu_before, &cluster.cpu_ticks());
    let failover_ms = killed_at
        .lock()
        .expect("not poisoned")
        .as_ref()
        .zip(fleet_result.failover_ack)
        .map(|(killed, ack)| ack.duration_since(*killed).as_secs_f64() * 1_000.0);
    if plan.kill_primary && failover_ms.is_none() {
        bail!("the primary was killed but no other replica acknowledged writes");
    }
    let failover_phases = watch
        .and_then(|watch| watch.join().ok())
        .zip(failover_ms)
        .map(|(moments, total_ms)| moments.phases(total_ms));
    let events = per_machine * machines;
    let run = Run {
        drop_received_percent: args.drop_received_percent,
        events,
        seconds,
        committed_events_per_second: events as f64 / seconds,
        ack_latency_ms_p50: fleet_result.latency_ms(0.5),
        ack_latency_ms_p99: fleet_result.latency_ms(0.99),
        ack_latency_ms_max: fleet_result.latency_ms(1.0),
        sent_to_ack_ms_p50: quantile_ms(&fleet_result.sent_to_ack_us, 0.5),
        sent_to_ack_ms_p99: quantile_ms(&fleet_result.sent_to_ack_us, 0.99),
        sent_to_ack_ms_max: quantile_ms(&fleet_result.sent_to_ack_us, 1.0),
        follower_lag_mean: lag_mean,
        follower_lag_max: lag_max,
        followers_caught_up_ms,
        events_resent: fleet_result.resent,
        failover_ms,
        failover_phases,
        replica_cpu_us_per_event: cpu_seconds * 1e6 / events as f64,
        ..Run::default()
    };
    Ok(with_cluster_counters(run, &cluster.statuses()))
}

/// utime + stime (clock ticks) from a /proc/PID/stat line. The command
/// name in parentheses may hold spaces, so fields count from its `)`:
/// utime and stime are the 14th and 15th fields of the line.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU seconds the replicas spent between two readings (a replica
/// unreadable in either counts nothing).
fn cpu_seconds(before: &[Option<u64>], after: &[Option<u64>]) -> f64 {
    // SAFETY: sysconf has no memory effects.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks: u64 = before
        .iter()
        .zip(after)
        .filter_map(|(b, a)| Some(a.as_ref()?.saturating_sub(*b.as_ref()?)))
        .sum();
    ticks as f64 / ticks_per_second
}

/// One load per machine: its real uplink over the real link, fed from
/// memory all at once or at its share of the paced rate.
fn machine_loads(
    cluster: &LocalCluster,
    fleet: &FleetEvents,
    load: Load,
    per_machine: u64,
    killed_at: &KilledAt,
    deadline: Instant,
) -> Vec<impl Future<Output = Result<MachineResult>> + Send + 'static> {
    let addresses = cluster.file.machine_addresses();
    let machines = fleet.machines.len() as f64;
    let rate = match load {
        Load::Saturated => None,
        Load::Paced { rate } => Some(rate as f64 / machines),
    };
    fleet
        .machines
        .iter()
        .map(|(id, key, events)| {
            let uplink = Uplink::new(
                id.clone(),
                key.derive(LINK_KEY_CONTEXT),
                addresses.clone(),
                0,
            );
            let local = MemoryEvents {
                events: events.clone(),
                released: Arc::new(AtomicU64::new(0)),
                first_sent: Arc::new(Mutex::new(vec![None; events.len()])),
            };
            drive(
                uplink,
                local,
                per_machine,
                rate,
                killed_at.clone(),
                deadline,
            )
        })
        .collect()
}

/// Halfway through a paced run (the primary is killed under load, not
/// after it); two seconds into a saturated one.
fn kill_delay(load: Load, events: u64) -> Duration {
    match load {
        Load::Paced { rate } => Duration::from_secs_f64(events as f64 / rate as f64 / 2.0),
        Load::Saturated => Duration::from_secs(2),
    }
}

/// Runs every machine's load to its end; with `kill_after`, SIGKILLs the
/// primary that long after the start and notes when in `killed_at`.
async fn run_loads(
    cluster: &mut LocalCluster,
    loads: Vec<impl Future<Output = Result<MachineResult>> + Send + 'static>,
    kill_after: Option<Duration>,
    killed_at: &KilledAt,
) -> (Vec<Result<MachineResult>>, Option<FailoverWatch>) {
    let tasks: Vec<_> = loads.into_iter().map(tokio::spawn).collect();
    let mut watch = None;
    if let Some(after) = kill_after {
        tokio::time::sleep(after).await;
        let primary = tokio::task::block_in_place(|| cluster.primary(false));
        if let Some(dashboard) = primary {
            let replica = cluster
                .file
                .replicas
                .iter()
                .position(|r| r.dashboard == dashboard)
                .expect("the primary is one of ours");
            let survivors: Vec<String> = cluster
                .file
                .replicas
                .iter()
                .filter(|r| r.dashboard != dashboard)
                .map(|r| r.dashboard.clone())
                .collect();
            let before = tokio::task::block_in_place(|| cluster.statuses());
            let _ = cluster.children[replica].kill();
            let killed = Instant::now();
            *killed_at.lock().expect("not poisoned") = Some(killed);
            watch = Some(watch_failover(survivors, &before, killed));
        }
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.map_err(anyhow::Error::from).and_then(|r| r));
    }
    (results, watch)
}

/// How long each step of a failover took, in order: a survivor stood for
/// election (detection), one became primary (election), its epoch marker
/// was committed (epoch), and the first machine got a committed ack from
/// it (reconnect). Seen by polling the survivors' status every
/// `FAILOVER_POLL_MS`, so each moment is up to a poll late.
#[derive(Serialize, Clone, Copy, Debug, Default)]
struct FailoverPhases {
    detection_ms: f64,
    election_ms: f64,
    epoch_commit_ms: f64,
    reconnect_ms: f64,
}

/// How often the failover watch polls the survivors.
const FAILOVER_POLL_MS: u64 = 5;
/// The watch gives up after this long.
const FAILOVER_WATCH_MS: u64 = 10_000;

/// Moments of a failover after the kill (see [`FailoverPhases`]).
#[derive(Default)]
struct FailoverMoments {
    killed: Option<Instant>,
    stood: Option<Instant>,
    elected: Option<Instant>,
    epoch_open: Option<Instant>,
}

impl FailoverMoments {
    /// The phases, the last one running to the first ack `total_ms` after
    /// the kill. A moment not seen counts as the next one's.
    fn phases(&self, total_ms: f64) -> FailoverPhases {
        let Some(killed) = self.killed else {
            return FailoverPhases::default();
        };
        let since =
            |at: Option<Instant>| at.map(|at| at.duration_since(killed).as_secs_f64() * 1e3);
        let open = since(self.epoch_open).unwrap_or(total_ms).min(total_ms);
        let elected = since(self.elected).unwrap_or(open).min(open);
        let stood = since(self.stood).unwrap_or(elected).min(elected);
        FailoverPhases {
            detection_ms: stood,
            election_ms: elected - stood,
            epoch_commit_ms: open - elected,
            reconnect_ms: total_ms - open,
        }
    }
}

type FailoverWatch = std::thread::JoinHandle<FailoverMoments>;

/// Polls the survivors after the kill until one has opened its epoch:
/// the first to count an election it started (`elections_started` above
/// what it was before the kill), the first primary of a newer epoch, and
/// when that primary's commit reached its tip as it was when first seen
/// (a new primary commits nothing before an entry of its own epoch, so
/// this is its marker, or the first entry after it).
fn watch_failover(
    survivors: Vec<String>,
    before: &[dashboard::ReplicaStatus],
    killed: Instant,
) -> FailoverWatch {
    let old_epoch = before.iter().map(|s| s.epoch).max().unwrap_or(0);
    let started: std::collections::HashMap<String, u64> = before
        .iter()
        .map(|s| (s.id.clone(), s.elections_started))
        .collect();
    std::thread::spawn(move || {
        let mut moments = FailoverMoments {
            killed: Some(killed),
            ..FailoverMoments::default()
        };
        let mut open_at = None;
        while killed.elapsed() < Duration::from_millis(FAILOVER_WATCH_MS) {
            for status in survivors.iter().filter_map(|d| fetch_status(d).ok()) {
                let now = Instant::now();
                let stood =
                    status.elections_started > started.get(&status.id).copied().unwrap_or(0);
                if (stood || status.role == "candidate") && moments.stood.is_none() {
                    moments.stood = Some(now);
                }
                if status.role == "primary" && status.epoch > old_epoch {
                    moments.elected.get_or_insert(now);
                    let open = *open_at.get_or_insert((status.tip, status.commit + 1));
                    if status.commit >= open.0.max(open.1) {
                        moments.epoch_open = Some(now);
                        return moments;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(FAILOVER_POLL_MS));
        }
        moments
    })
}

/// The machines' results taken together.
struct FleetResult {
    /// Sorted, for percentiles.
    latencies_us: Vec<u64>,
    /// Sorted, for percentiles.
    sent_to_ack_us: Vec<u64>,
    resent: u64,
    /// The earliest acknowledgement from a new primary after the kill.
    failover_ack: Option<Instant>,
}

impl FleetResult {
    fn collect(results: Vec<Result<MachineResult>>) -> Result<FleetResult> {
        let mut fleet = FleetResult {
            latencies_us: Vec::new(),
            sent_to_ack_us: Vec::new(),
            resent: 0,
            failover_ack: None,
        };
        for result in results {
            let result = result?;
            fleet.latencies_us.extend(result.latencies_us);
            fleet.sent_to_ack_us.extend(result.sent_to_ack_us);
            fleet.resent += result.resent;
            fleet.failover_ack = match (fleet.failover_ack, result.failover_ack) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        fleet.latencies_us.sort_unstable();
        fleet.sent_to_ack_us.sort_unstable();
        Ok(fleet)
    }

    /// The `p` quantile (0 to 1) of the acknowledgement latency, in ms.
    fn latency_ms(&self, p: f64) -> f64 {
        quantile_ms(&self.latencies_us, p)
    }
}

/// The `p` quantile (0 to 1) of sorted microseconds, in ms.
fn quantile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let index = ((sorted_us.len() - 1) as f64 * p).round() as usize;
    sorted_us[index] as f64 / 1_000.0
}

/// Waits until both followers hold everything (a killed primary does not
/// answer, so it is not waited for).
fn wait_for_followers(cluster: &LocalCluster, deadline: Instant) -> Result<()> {
    let tip = cluster.statuses().iter().map(|s| s.tip).max().unwrap_or(0);
    while cluster.statuses().iter().any(|s| s.tip < tip) {
        if Instant::now() > deadline {
            bail!("the followers did not reach the primary's tip {tip}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// The last line a replica wrote to its log, if it can be read.
fn last_line(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().rev().find(|line| !line.trim().is_empty())?;
    Some(line.chars().take(300).collect())
}

/// Adds the replicas' protocol counters, summed over the cluster.
fn with_cluster_counters(run: Run, statuses: &[dashboard::ReplicaStatus]) -> Run {
    let sum = |f: fn(&dashboard::ReplicaStatus) -> u64| statuses.iter().map(f).sum::<u64>();
    Run {
        naks_sent: sum(|s| s.naks_sent),
        records_retransmitted: sum(|s| s.records_retransmitted),
        datagrams_dropped_by_injection: statuses
            .iter()
            .flat_map(|s| &s.datagrams_rejected)
            .filter(|(reason, _)| reason == "injected_loss")
            .map(|(_, count)| count)
            .sum(),
        ..run
    }
}

/// Feeds one machine's uplink and records when each event was released
/// and when it came back acknowledged.
async fn drive(
    uplink: Uplink,
    local: MemoryEvents,
    total: u64,
    rate_per_machine: Option<f64>,
    killed_at: KilledAt,
    deadline: Instant,
) -> Result<MachineResult> {
    let total = total.min(local.events.len() as u64);
    let (reports_tx, mut reports) = tokio::sync::mpsc::channel::<UplinkReport>(1_024);
    let mut feed = Feed {
        local: local.clone(),
        released_at: Vec::with_capacity(total as usize),
        total,
        rate_per_machine,
        started: Instant::now(),
    };
    if rate_per_machine.is_none() {
        feed.release_to(total);
    }
    let first_sent = local.first_sent.clone();
    let (control, task) = spawn_uplink(uplink, local, reports_tx);
    control.appended.notify_one();
    let mut acks = AckTracker::default();
    let mut ticker = tokio::time::interval(Duration::from_millis(5));
    while acks.acked < total {
        if Instant::now() > deadline {
            let _ = control.stop.send(true);
            bail!(
                "{} of {total} events acknowledged when the time ran out",
                acks.acked
            );
        }
        tokio::select! {
            _ = ticker.tick() => {
                if feed.release_due() {
                    control.appended.notify_one();
                }
            }
            Some(report) = reports.recv() => {
                acks.on_report(report, &feed.released_at, &first_sent, &killed_at);
            }
        }
    }
    let _ = control.stop.send(true);
    let stats = task.await?;
    acks.result.resent = stats.events_resent;
    Ok(acks.result)
}

/// Which of a machine's events are released to its uplink, and when each
/// was (the start of its acknowledgement latency).
struct Feed {
    local: MemoryEvents,
    released_at: Vec<Instant>,
    total: u64,
    /// `None`: everything was released at the start.
    rate_per_machine: Option<f64>,
    started: Instant,
}

impl Feed {
    fn release_to(&mut self, count: u64) {
        let now = Instant::now();
        while (self.released_at.len() as u64) < count {
            self.released_at.push(now);
        }
        self.local.released.store(count, Ordering::Release);
    }

    /// Releases what the paced rate makes due by now; `true` when that is
    /// anything new (the uplink is then told).
    fn release_due(&mut self) -> bool {
        let Some(rate) = self.rate_per_machine else {
            return false;
        };
        let due = ((self.started.elapsed().as_secs_f64() * rate) as u64).min(self.total);
        if due <= self.released_at.len() as u64 {
            return false;
        }
        self.release_to(due);
        true
    }
}

/// What a machine's uplink reported so far.
#[derive(Default)]
struct AckTracker {
    acked: u64,
    /// The link to the killed primary broke: the next acknowledgement comes
    /// from its successor.
    reconnected_since_kill: bool,
    result: MachineResult,
}

impl AckTracker {
    fn on_report(
        &mut self,
        report: UplinkReport,
        released_at: &[Instant],
        first_sent: &Mutex<Vec<Option<Instant>>>,
        killed_at: &KilledAt,
    ) {
        match report {
            UplinkReport::Acknowledged(seq) if seq > self.acked => {
                let now = Instant::now();
                let seq = seq.min(released_at.len() as u64);
                let acked = self.acked as usize..seq as usize;
                for at in &released_at[acked.clone()] {
                    let latency_us = now.duration_since(*at).as_micros() as u64;
                    self.result.latencies_us.push(latency_us);
                }
                let first_sent = first_sent.lock().expect("not poisoned");
                for at in first_sent[acked].iter().flatten() {
                    let latency_us = now.duration_since(*at).as_micros() as u64;
                    self.result.sent_to_ack_us.push(latency_us);
                }
                self.acked = seq;
                if self.reconnected_since_kill && self.result.failover_ack.is_none() {
                    self.result.failover_ack = Some(now);
                }
            }
            UplinkReport::State { state, stats, .. } => {
                self.result.resent = stats.events_resent;
                let killed = killed_at.lock().expect("not poisoned").is_some();
                if state != LinkState::Online && killed {
                    self.reconnected_since_kill = true;
                }
            }
            UplinkReport::Acknowledged(_) | UplinkReport::Remote(_) => {}
        }
    }
}

/// Polls the primary's status every 100 ms for its followers' lag.
struct LagSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<u64>>,
}

impl LagSampler {
    fn start(file: ClusterFile) -> LagSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                let lag = file.replicas.iter().find_map(|replica| {
                    let status = fetch_status(&replica.dashboard).ok()?;
                    (status.role == "primary")
                        .then(|| status.followers.iter().map(|f| f.lag).max().unwrap_or(0))
                });
                samples.extend(lag);
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        });
        LagSampler { stop, thread }
    }

    /// Mean and maximum of the samples.
    fn stop(self) -> (f64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.thread.join().unwrap_or_default();
        let max = samples.iter().copied().max().unwrap_or(0);
        let mean = if samples.is_empty() {
            0.0
        } else {
            samples.iter().sum::<u64>() as f64 / samples.len() as f64
        };
        (mean, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "4242 (vend replica) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    731 96 0 0 20 0 9 0 100 0 0";
        assert_eq!(stat_cpu_ticks(stat), Some(731 + 96));
        assert_eq!(stat_cpu_ticks("4242 (cut"), None);
        assert_eq!(stat_cpu_ticks("4242 (x) S 1 2"), None);
    }
}

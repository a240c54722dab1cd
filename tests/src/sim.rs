//! The deterministic simulation: three replicas and a few machines over a
//! simulated network that drops, duplicates, delays and reorders datagrams,
//! resets connections, partitions any replica and crashes and restarts any
//! process — the primary in the middle of a batch included. One seed drives
//! every choice, so a failing seed replays exactly.
//!
//! The replicas run the very executor the server runs ([`Round`]: the
//! node, the ingest and the ledger with the store's one set of rules), the
//! real datagram codec with the cluster key and the real sealed machine
//! link; the machines run the real rules through the real `MachineCore`,
//! in the machine app's order (stored first, applied after), and the real
//! `Uplink`. Only disks are simulated: each replica's is a [`MemDisk`]
//! behind a [`FaultyBackend`] that fails writes and syncs and crashes the
//! replica part way through a round, by seed; a crash keeps what was
//! synced and any prefix of the writes since, as a real write-ahead log
//! does. A machine's disk is the list of events it stored, and a
//! restarted machine is rebuilt from it.
//!
//! Operators ask the primary, now and then, to change a price or a name at
//! a machine (through the round, as the dashboard does), during the faults
//! and across the failover drill; machines apply what reaches them with
//! their own rules, as the machine app does.
//!
//! Each invariant has its own checker: no acknowledged event lost, no event
//! twice, every replica agrees on every committed entry, no committed entry
//! is truncated, projections equal a fresh replay, a machine applies only
//! what it stored, at most one primary per epoch, every command committed
//! is applied by its machine exactly once (and none that was not), and
//! after the faults stop everything converges.

use crate::faults::{Faults, FaultyBackend, MemPromises};
use bytes::{Bytes, BytesMut};
use ledger::Ledger;
use ledger::crypto::{CHAIN_KEY_CONTEXT, Hash32, LINK_KEY_CONTEXT, SecretKey};
use ledger::event::{Event, Source};
use ledger::keys::ChainKeys;
use ledger::operator::CommandOutcome;
use ledger::rules::RemoteCommand;
use ledger::store::memory::{MemBackend, MemDisk};
use ledger::store::promise::PromiseStore;
use ledger::store::record::SignedEvent;
use ledger::store::{LogStore, SEGMENT_ENTRIES_DEFAULT, StoreError};
use ledger::{MachineCore, MachineId};
use link::codec::{LengthDelimitedCodec, frame_codec};
use link::uplink::{LocalEvents, Uplink, UplinkAction};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use replica::ingest::LinkKeys;
use replica::node::{NodeConfig, Role, Target};
use replica::round::{Input, Outgoing, Round, RoundConfig, Start};
use replica::wire::{DatagramCodec, Message, NodeId, PAYLOAD_BYTES_DEFAULT, PAYLOAD_BYTES_MIN};
use std::collections::BTreeSet;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio_util::codec::{Decoder, Encoder};
use workload::{SIMULATION_START_MS, SimMachine};

/// Simulated time advances in steps of this many milliseconds.
const STEP_MS: u64 = 5;
/// After the faults stop, the primary is killed and kept down: another
/// replica must be primary within this long.
const FAILOVER_LIMIT_MS: u64 = 5_000;
/// Before that kill, the link between the primary and the other replica
/// that may stand is cut for this long while the fleet writes, so the
/// sync replica holds entries the future primary lacks.
const DRILL_CUT_MS: u64 = 400;
/// Once the replica that may stand holds what the sync holds (the cut left
/// it behind, and it catches up from the sync as a voter), a new primary's
/// epoch is open within this long: detection, pre-vote, vote and the
/// epoch marker's commit, in simulated time. The drill's survivor was cut
/// off from the primary, so its election timer (200-400 ms) runs from any
/// phase and one full timeout may pass after the catch-up: the longest
/// timeout plus 200 ms. (A plain SIGKILL measures under 500 ms at p99 in
/// `vendctl bench-replication --kills 20`.)
const FAILOVER_AFTER_CATCHUP_MS: u64 = 600;

/// The failover drill run once the faults stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drill {
    Waiting,
    Cutting {
        until_ms: u64,
        primary: NodeId,
    },
    Killed {
        at_ms: u64,
        primary: NodeId,
        /// When the survivor that may stand first held the sync's log.
        caught_up_ms: Option<u64>,
    },
    Done,
}
const REPLICAS: [NodeId; 3] = [1, 2, 3];
const CLUSTER_ID: u32 = 77;
/// Operators' requests per simulated second during the faults.
const OPERATOR_REQUESTS_PER_S: f64 = 0.6;

/// How hard one run is.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub machines: usize,
    pub events_per_machine: u64,
    /// Faults happen during this first stretch of simulated time.
    pub fault_phase_ms: u64,
    /// After the faults stop, everything must converge within this long.
    pub liveness_limit_ms: u64,
    pub drop_percent: u32,
    pub duplicate_percent: u32,
    pub delay_ms_max: u64,
    /// Expected replica crashes per simulated second during the fault phase.
    pub replica_crashes_per_s: f64,
    pub partitions_per_s: f64,
    pub machine_crashes_per_s: f64,
    pub connection_resets_per_s: f64,
    /// Chance that a round crashes its replica part way (at a write or at
    /// the sync), and that a machine crashes between storing a decision
    /// and applying it.
    pub crash_mid_round_percent: u32,
    /// Chance that a write fails (and writes nothing).
    pub write_fail_percent: u32,
    /// Chance that a sync fails (the round then sends nothing).
    pub sync_fail_percent: u32,
    /// Most records one NAK, retransmission or catch-up carries.
    pub repair_records_max: u64,
    /// The primary's flow-control window and the followers' reorder
    /// buffer: mostly small, so these short loads reach both.
    pub stream_window_records: u64,
    pub reorder_records_max: usize,
    /// The replicas' datagram payload budget.
    pub payload_bytes_max: usize,
    /// Chance that a replica's crash also damages its disk (lost synced
    /// writes, or a corrupt record).
    pub damage_percent: u32,
}

impl SimConfig {
    /// Fault intensities drawn from the seed, so the seeds together cover
    /// calm runs, lossy runs and runs that crash something every second.
    pub fn for_seed(seed: u64) -> SimConfig {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_CAFE);
        // Drawn apart from the rest, so the other draws (the faults of
        // every seed) stay what they were.
        let mut window_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0F10_3C0D);
        let window = [4, 8, 16, 64, 16_384][window_rng.random_range(0..5)];
        let reorder_records_max = [4, 2 * window as usize][window_rng.random_range(0..2)];
        // Ethernet-sized datagrams (~6 records) or loopback-sized (~37).
        let payload_bytes_max =
            [PAYLOAD_BYTES_MIN, PAYLOAD_BYTES_DEFAULT][window_rng.random_range(0..2)];
        SimConfig {
            seed,
            machines: rng.random_range(1..=4),
            events_per_machine: rng.random_range(20..=80),
            fault_phase_ms: rng.random_range(3_000..=10_000),
            liveness_limit_ms: 30_000,
            drop_percent: rng.random_range(0..=30),
            duplicate_percent: rng.random_range(0..=10),
            delay_ms_max: rng.random_range(1..=40),
            replica_crashes_per_s: rng.random_range(0.0..1.0),
            partitions_per_s: rng.random_range(0.0..0.6),
            machine_crashes_per_s: rng.random_range(0.0..0.5),
            connection_resets_per_s: rng.random_range(0.0..1.0),
            crash_mid_round_percent: rng.random_range(0..=3),
            write_fail_percent: rng.random_range(0..=2),
            sync_fail_percent: rng.random_range(0..=2),
            // Mostly small segments, so these short logs still need many
            // NAKs, retransmissions and catch-ups to repair a replica.
            repair_records_max: [8, 16, 32, 64, 4_096][rng.random_range(0..5)],
            damage_percent: rng.random_range(0..=20),
            stream_window_records: window,
            reorder_records_max,
            payload_bytes_max,
        }
    }
}

/// A broken invariant, with the seed that reproduces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub seed: u64,
    pub at_ms: u64,
    pub checker: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} at {} ms: {} violated: {}",
            self.seed, self.at_ms, self.checker, self.detail
        )
    }
}

/// What a run did (for logs, and to check that runs really exercise faults).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SimReport {
    pub seed: u64,
    pub events: u64,
    pub acknowledged: u64,
    pub epochs: u64,
    pub replica_crashes: u64,
    /// Crashes at a write or a sync, part way through a round.
    pub crashes_mid_round: u64,
    /// Crashes that also damaged the disk, and damaged replicas that
    /// repaired their log from the others.
    pub disks_damaged: u64,
    pub repairs: u64,
    /// Repairs a crash caused without damage (the log fell short of the
    /// promise file), which is safe but costs the replica's vote a while.
    pub repairs_without_damage: u64,
    /// Writes and syncs that failed without a crash.
    pub writes_failed: u64,
    pub syncs_failed: u64,
    pub machine_crashes: u64,
    pub partitions: u64,
    pub datagrams_sent: u64,
    pub datagrams_dropped: u64,
    pub datagrams_duplicated: u64,
    pub truncated_records: u64,
    pub naks: u64,
    /// Times a primary held records back for the flow-control window.
    pub window_waits: u64,
    /// Machines' acknowledgements of a commit that left a primary before
    /// its round's sync, and those of them whose sync then crashed the
    /// primary (what they acknowledged must survive all the same).
    pub acks_before_sync: u64,
    pub acks_before_crashed_sync: u64,
    /// Records followers received twice (slow repairs asked again, and
    /// duplicated datagrams).
    pub records_received_twice: u64,
    pub catchup_records: u64,
    /// Operator requests the primary took, and how many were answered as
    /// committed or as failed (the rest were still waiting at the end).
    pub operator_requests: u64,
    pub operator_committed: u64,
    pub operator_failed: u64,
    /// Commands machines applied (or refused) from the dashboard.
    pub commands_applied: u64,
    /// From killing the primary in the drill to a new primary's open epoch.
    pub failover_ms: u64,
    /// Of `failover_ms`, what came after the survivor that may stand had
    /// caught up with the sync (the rest is catch-up).
    pub failover_after_catchup_ms: u64,
    pub converged_ms: u64,
}

#[derive(Clone)]
struct SimKeys {
    chain: HashMap<MachineId, SecretKey>,
    link: HashMap<MachineId, SecretKey>,
}

impl ChainKeys for SimKeys {
    fn chain_key(&self, machine: &MachineId) -> Option<&SecretKey> {
        self.chain.get(machine)
    }
}

impl LinkKeys for SimKeys {
    fn link_key(&self, machine: &MachineId) -> Option<SecretKey> {
        self.link.get(machine).cloned()
    }
}

type ConnId = u64;

enum Delivery {
    Datagram {
        from: NodeId,
        to: NodeId,
        bytes: Vec<u8>,
    },
    Connected {
        conn: ConnId,
    },
    ConnectFailed {
        machine: usize,
    },
    ToReplica {
        conn: ConnId,
        bytes: Vec<u8>,
    },
    ToMachine {
        conn: ConnId,
        bytes: Vec<u8>,
    },
    ClosedToMachine {
        conn: ConnId,
    },
    ClosedToReplica {
        conn: ConnId,
    },
}

struct Conn {
    machine: usize,
    replica: NodeId,
    /// Deliveries keep their order per direction (TCP).
    up_ready_ms: u64,
    down_ready_ms: u64,
    open: bool,
    machine_inbound: Inbound,
    replica_inbound: Inbound,
}

/// The bytes one end of a simulated connection has received, split into
/// frames by the link's real codec, as `FramedRead` does on a socket.
struct Inbound {
    codec: LengthDelimitedCodec,
    buffer: BytesMut,
}

impl Inbound {
    fn new() -> Inbound {
        Inbound {
            codec: frame_codec(),
            buffer: BytesMut::new(),
        }
    }

    fn extend(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame's payload; an error (a length above the limit)
    /// closes the connection.
    fn next_frame(&mut self) -> std::io::Result<Option<BytesMut>> {
        self.codec.decode(&mut self.buffer)
    }
}

type SimRound = Round<FaultyBackend, SimKeys>;
type SimLedger = Ledger<FaultyBackend>;

/// Damage a crash does to a disk.
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// The last synced writes are lost (a cut WAL).
    LoseWrites(usize),
    /// One byte of one stored record flips.
    Corrupt(usize),
}

/// A replica: its disk survives crashes; the process is either running
/// (a round executor) or down (what its disk holds, for the checkers).
enum Process {
    Running(Box<SimRound>),
    Down(Box<SimLedger>),
}

struct ReplicaSim {
    id: NodeId,
    name: String,
    // Durable across crashes.
    disk: MemDisk,
    faults: Faults,
    process: Process,
    restart_at_ms: Option<u64>,
    /// Highest commit already checked against the other replicas.
    checked_commit: u64,
    /// Kept apart from the disk, so damage to the log cannot roll it back.
    promises: MemPromises,
    /// The disk was damaged and the replica has not repaired it yet.
    damaged: bool,
    /// The log was found damaged and replaced: the next start says so.
    found_damaged: bool,
    /// Started repairing its log (and has not finished).
    repairing: bool,
}

impl ReplicaSim {
    fn alive(&self) -> bool {
        matches!(self.process, Process::Running(_))
    }

    fn ledger(&self) -> &SimLedger {
        match &self.process {
            Process::Running(round) => round.ledger(),
            Process::Down(ledger) => ledger,
        }
    }

    fn accepts_writes(&self) -> bool {
        match &self.process {
            Process::Running(round) => round.node().accepts_writes(),
            Process::Down(_) => false,
        }
    }

    fn round(&mut self) -> Option<&mut SimRound> {
        match &mut self.process {
            Process::Running(round) => Some(round),
            Process::Down(_) => None,
        }
    }
}

/// Opens what a replica's disk holds, faults switched off, and checks its
/// chain as a replica does at start.
fn open_ledger(disk: &MemDisk, faults: &Faults) -> Result<SimLedger, StoreError> {
    faults.plan().enabled = false;
    let backend = FaultyBackend::new(MemBackend::open(disk, true), faults.clone());
    let store = LogStore::with_backend(backend, SEGMENT_ENTRIES_DEFAULT)?;
    let ledger = Ledger::with_store(store)?;
    ledger.store().check_chain()?;
    Ok(ledger)
}

/// What a replica finds on its disk when it starts: the log, or — when the
/// log is damaged — a fresh one on a new disk (the server sets a damaged
/// log aside the same way), and whether that happened.
fn open_disk(replica: &mut ReplicaSim) -> (SimLedger, bool) {
    match open_ledger(&replica.disk, &replica.faults) {
        Ok(ledger) => (ledger, false),
        Err(_) => {
            replica.disk = MemDisk::new();
            let ledger = open_ledger(&replica.disk, &replica.faults).expect("a new disk opens");
            (ledger, true)
        }
    }
}

struct MachineSim {
    id: MachineId,
    // Durable: the machine's key file, its own ledger and its saved
    // acknowledged mark.
    key: SecretKey,
    events: Vec<SignedEvent>,
    saved_ack: u64,
    // Volatile: the machine's core (rebuilt from `events` on restart) with
    // the customers and operators in front of it, who carry on.
    sim: SimMachine,
    alive: bool,
    uplink: Uplink,
    conn: Option<ConnId>,
    restart_at_ms: Option<u64>,
    /// Highest mark ever acknowledged to this machine (for the checkers).
    acked_ever: u64,
}

struct Local<'a>(&'a [SignedEvent]);

impl LocalEvents for Local<'_> {
    fn local_tip(&self) -> u64 {
        self.0.len() as u64
    }

    fn events_from(&self, from: u64, max: usize) -> Vec<SignedEvent> {
        let start = usize::try_from(from.saturating_sub(1)).unwrap_or(usize::MAX);
        self.0.iter().skip(start).take(max).cloned().collect()
    }
}

pub struct Simulation {
    config: SimConfig,
    rng: ChaCha8Rng,
    now_ms: u64,
    keys: SimKeys,
    /// Only to check that what replicas send decodes.
    codec: DatagramCodec,
    cluster_key: SecretKey,
    replicas: Vec<ReplicaSim>,
    machines: Vec<MachineSim>,
    /// Ordered: iteration order must not depend on hashing, or a seed
    /// would not replay exactly.
    conns: BTreeMap<ConnId, Conn>,
    next_conn: ConnId,
    queue: BTreeMap<(u64, u64), Delivery>,
    queue_seq: u64,
    /// Replica pairs that cannot talk (either direction), until a time.
    cuts: BTreeMap<(NodeId, NodeId), u64>,
    /// Replicas cut off from everything, until a time.
    isolated: BTreeMap<NodeId, u64>,
    /// Hash of every committed gseq, as first committed anywhere (shared
    /// with the disks, which check every truncation against it).
    committed: Arc<Mutex<Vec<Hash32>>>,
    /// The primary of each epoch.
    primaries: BTreeMap<u64, NodeId>,
    report: SimReport,
    violation: Option<Violation>,
    /// Print a status line every 500 ms (VENDLEDGER_SIM_TRACE=1).
    trace: bool,
    drill: Drill,
    /// Operator requests handed to rounds so far (their ids).
    next_request: u64,
    /// Every operator request answered as committed.
    receipts: Vec<dashboard::ports::ActionReceipt>,
}

/// Whether a stopped replica's log lacks what it promised (the rule a
/// round applies when it opens, so the replica will start repairing).
fn short_of_promise(ledger: &SimLedger, promises: &MemPromises) -> bool {
    let Ok(Some(promise)) = promises.clone().load() else {
        return false;
    };
    let store = ledger.store();
    promise.tip_gseq > 0
        && store
            .get(promise.tip_gseq)
            .ok()
            .flatten()
            .is_none_or(|entry| entry.hash != promise.tip_hash)
}

fn round_config(id: NodeId, config: &SimConfig) -> RoundConfig {
    RoundConfig {
        node: NodeConfig {
            repair_records_max: config.repair_records_max,
            stream_window_records: config.stream_window_records,
            reorder_records_max: config.reorder_records_max,
            ..NodeConfig::standard(id)
        },
        name: replica_name(id),
        cluster_id: CLUSTER_ID,
        payload_bytes_max: config.payload_bytes_max,
        machine_addresses: REPLICAS.iter().map(|&r| (r, replica_name(r))).collect(),
    }
}

fn replica_name(id: NodeId) -> String {
    format!("replica-{id}")
}

impl Simulation {
    pub fn new(config: SimConfig) -> Simulation {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut keys = SimKeys {
            chain: HashMap::new(),
            link: HashMap::new(),
        };
        let addresses: Vec<String> = REPLICAS.iter().map(|&id| replica_name(id)).collect();
        let machines = (1..=config.machines)
            .map(|n| {
                let id = MachineId::numbered(u32::try_from(n).expect("few machines"));
                let key = SecretKey::from_bytes(rng.random());
                keys.chain.insert(id.clone(), key.derive(CHAIN_KEY_CONTEXT));
                keys.link.insert(id.clone(), key.derive(LINK_KEY_CONTEXT));
                MachineSim {
                    sim: SimMachine::new(id.clone(), &key, rng.random(), SIMULATION_START_MS),
                    uplink: Uplink::new(
                        id.clone(),
                        key.derive(LINK_KEY_CONTEXT),
                        addresses.clone(),
                        0,
                    ),
                    id,
                    key,
                    events: Vec::new(),
                    saved_ack: 0,
                    alive: true,
                    conn: None,
                    restart_at_ms: None,
                    acked_ever: 0,
                }
            })
            .collect();
        let cluster_key = SecretKey::from_bytes(rng.random());
        let codec = DatagramCodec::new(CLUSTER_ID, &cluster_key);
        let committed = Arc::new(Mutex::new(Vec::new()));
        let replicas = REPLICAS
            .iter()
            .map(|&id| {
                let disk = MemDisk::new();
                let faults = Faults::new(rng.random(), committed.clone());
                let ledger = open_ledger(&disk, &faults).expect("a new disk opens");
                let promises = MemPromises::default();
                let start = Start {
                    keys: keys.clone(),
                    codec: DatagramCodec::new(CLUSTER_ID, &cluster_key),
                    promises: Box::new(promises.clone()),
                    incarnation_floor: 0,
                    seed: rng.random(),
                    damaged: false,
                };
                let round = Round::open(round_config(id, &config), ledger, start)
                    .expect("a new replica opens");
                ReplicaSim {
                    id,
                    name: replica_name(id),
                    disk,
                    faults,
                    process: Process::Running(Box::new(round)),
                    restart_at_ms: None,
                    checked_commit: 0,
                    promises,
                    damaged: false,
                    found_damaged: false,
                    repairing: false,
                }
            })
            .collect();
        Simulation {
            report: SimReport {
                seed: config.seed,
                ..SimReport::default()
            },
            codec,
            cluster_key,
            config,
            rng,
            now_ms: 0,
            keys,
            replicas,
            machines,
            conns: BTreeMap::new(),
            next_conn: 1,
            queue: BTreeMap::new(),
            queue_seq: 0,
            cuts: BTreeMap::new(),
            isolated: BTreeMap::new(),
            committed,
            primaries: BTreeMap::new(),
            violation: None,
            trace: std::env::var_os("VENDLEDGER_SIM_TRACE").is_some(),
            drill: Drill::Waiting,
            next_request: 1,
            receipts: Vec::new(),
        }
    }

    fn violate(&mut self, checker: &'static str, detail: String) {
        if self.violation.is_none() {
            self.violation = Some(Violation {
                seed: self.config.seed,
                at_ms: self.now_ms,
                checker,
                detail,
            });
        }
    }

    fn in_fault_phase(&self) -> bool {
        self.now_ms < self.config.fault_phase_ms
    }

    fn chance_per_step(&mut self, per_second: f64) -> bool {
        self.in_fault_phase()
            && self
                .rng
                .random_bool((per_second * STEP_MS as f64 / 1_000.0).clamp(0.0, 1.0))
    }

    fn schedule(&mut self, at_ms: u64, delivery: Delivery) {
        self.queue_seq += 1;
        self.queue.insert((at_ms, self.queue_seq), delivery);
    }

    fn replica_index(id: NodeId) -> usize {
        usize::from(id - 1)
    }

    fn reachable(&self, a: NodeId, b: NodeId) -> bool {
        let key = (a.min(b), a.max(b));
        !self.isolated.contains_key(&a)
            && !self.isolated.contains_key(&b)
            && !self.cuts.contains_key(&key)
    }

    fn machine_can_reach(&self, replica: NodeId) -> bool {
        !self.isolated.contains_key(&replica) && self.replicas[Self::replica_index(replica)].alive()
    }

    /// Runs until convergence or a violation.
    pub fn run(mut self) -> Result<SimReport, Violation> {
        let deadline = self.config.fault_phase_ms + self.config.liveness_limit_ms;
        while self.now_ms <= deadline {
            self.step();
            if let Some(violation) = self.violation.take() {
                return Err(violation);
            }
            if self.drill == Drill::Done && self.converged() {
                self.report.converged_ms = self.now_ms;
                self.final_checks();
                return match self.violation.take() {
                    Some(violation) => Err(violation),
                    None => Ok(self.report),
                };
            }
        }
        let status = self.status_line();
        Err(Violation {
            seed: self.config.seed,
            at_ms: self.now_ms,
            checker: "convergence after the faults stop",
            detail: status,
        })
    }

    fn status_line(&self) -> String {
        let replicas: Vec<String> = self
            .replicas
            .iter()
            .map(|r| {
                let tip = r.ledger().store().head();
                match &r.process {
                    Process::Running(round) => {
                        let node = round.node();
                        format!(
                            "{}: role={:?} epoch={} tip={}/e{} commit={} leader={:?} catchup={}/{}{}",
                            r.name,
                            node.role(),
                            node.epoch(),
                            tip.gseq,
                            tip.epoch,
                            node.commit_gseq(),
                            node.leader(),
                            node.counters().catchup_records_sent,
                            node.counters().catchup_records_taken,
                            node.repairing_until()
                                .map_or_else(String::new, |until| format!(" repairing-until={until}"))
                        )
                    }
                    Process::Down(_) => format!("{}: down tip={}/e{}", r.name, tip.gseq, tip.epoch),
                }
            })
            .collect();
        let machines: Vec<String> = self
            .machines
            .iter()
            .map(|m| {
                format!(
                    "{}: local={} acked={} state={:?}",
                    m.id,
                    m.events.len(),
                    m.uplink.acked(),
                    m.uplink.state()
                )
            })
            .collect();
        format!("{} | {}", replicas.join("; "), machines.join("; "))
    }

    fn step(&mut self) {
        self.now_ms += STEP_MS;
        if self.trace && self.now_ms.is_multiple_of(500) {
            eprintln!("{:>6} ms {}", self.now_ms, self.status_line());
        }
        self.heal_and_restart();
        self.inject_faults();
        self.run_drill();
        self.begin_rounds();
        self.deliver_due();
        self.generate_events();
        if self.chance_per_step(OPERATOR_REQUESTS_PER_S) {
            self.operator_request();
        }
        self.finish_rounds();
        for index in 0..self.machines.len() {
            if self.machines[index].alive {
                let actions = {
                    let m = &mut self.machines[index];
                    // Shipped drivers sleep until the core's next tick;
                    // here it is ticked every step, and a tick before that
                    // time must do nothing, or they would miss it.
                    let next = m.uplink.next_tick_ms();
                    let early = self.now_ms < next;
                    let actions = m.uplink.tick(self.now_ms, &Local(&m.events));
                    assert!(
                        !early || actions.is_empty(),
                        "{} acted at {} ms, before its next tick at {next} ms: {actions:?}",
                        m.id,
                        self.now_ms,
                    );
                    // And a tick moves it past now, or a driver sleeping
                    // until it would spin.
                    assert!(
                        m.uplink.next_tick_ms() > self.now_ms,
                        "{} ticked at {} ms and its next tick is at {} ms",
                        m.id,
                        self.now_ms,
                        m.uplink.next_tick_ms()
                    );
                    actions
                };
                self.machine_actions(index, actions);
            }
        }
    }

    fn heal_and_restart(&mut self) {
        let now = self.now_ms;
        let fault_phase = self.in_fault_phase();
        let drilling = matches!(self.drill, Drill::Cutting { .. });
        self.cuts
            .retain(|_, until| (fault_phase || drilling) && *until > now);
        self.isolated.retain(|_, until| fault_phase && *until > now);
        for index in 0..self.replicas.len() {
            let due = self.replicas[index]
                .restart_at_ms
                .is_some_and(|at| at <= now || !fault_phase);
            if due {
                self.restart_replica(index);
            }
        }
        for index in 0..self.machines.len() {
            let due = self.machines[index]
                .restart_at_ms
                .is_some_and(|at| at <= now || !fault_phase);
            if due {
                self.restart_machine(index);
            }
        }
    }

    fn inject_faults(&mut self) {
        if !self.in_fault_phase() {
            return;
        }
        if self.chance_per_step(self.config.replica_crashes_per_s) {
            let index = self.rng.random_range(0..self.replicas.len());
            if self.replicas[index].alive() {
                self.crash_replica(index, 0);
            }
        }
        if self.chance_per_step(self.config.partitions_per_s) {
            self.report.partitions += 1;
            let until = self.now_ms + self.rng.random_range(200..2_500);
            let a = REPLICAS[self.rng.random_range(0..3)];
            if self.rng.random_bool(0.5) {
                self.isolated.insert(a, until);
                self.drop_connections_of(a);
            } else {
                let b = REPLICAS[self.rng.random_range(0..3)];
                if a != b {
                    self.cuts.insert((a.min(b), a.max(b)), until);
                }
            }
        }
        if self.chance_per_step(self.config.machine_crashes_per_s) {
            let index = self.rng.random_range(0..self.machines.len());
            if self.machines[index].alive {
                self.crash_machine(index);
            }
        }
        if self.chance_per_step(self.config.connection_resets_per_s) {
            let open: Vec<ConnId> = self
                .conns
                .iter()
                .filter(|(_, c)| c.open)
                .map(|(&id, _)| id)
                .collect();
            if !open.is_empty() {
                let conn = open[self.rng.random_range(0..open.len())];
                self.close_conn(conn);
            }
        }
    }

    /// Once the faults stop: cut the primary from the other replica that
    /// may stand while the fleet writes, kill the primary and keep it down,
    /// and require a new primary within `FAILOVER_LIMIT_MS`.
    fn run_drill(&mut self) {
        if self.in_fault_phase() {
            return;
        }
        match self.drill {
            Drill::Waiting => {
                // The drill needs every replica sound: a replica still
                // repairing a damaged log votes only for a candidate
                // holding all it promised (which the survivor may not), and
                // with the primary killed no majority might elect.
                let all_alive = self.replicas.iter().all(ReplicaSim::alive)
                    && self.replicas.iter().all(|r| !r.damaged && !r.repairing);
                let primary = self
                    .replicas
                    .iter()
                    .find(|r| r.accepts_writes())
                    .map(|r| r.id);
                if let (true, Some(primary)) = (all_alive, primary) {
                    let other = REPLICAS
                        .iter()
                        .copied()
                        .find(|&id| id != primary && replica::node::standard_priority(id) > 0)
                        .expect("two replicas may stand");
                    self.cuts
                        .insert((primary.min(other), primary.max(other)), u64::MAX);
                    self.drill = Drill::Cutting {
                        until_ms: self.now_ms + DRILL_CUT_MS,
                        primary,
                    };
                }
            }
            Drill::Cutting { until_ms, primary } => {
                // The fleet keeps selling during the cut, and operators
                // keep asking: their commands cross the failover.
                if self.rng.random_bool(0.2) {
                    let machine = self.rng.random_range(0..self.machines.len());
                    self.generate_for(machine);
                }
                if self.rng.random_bool(0.02) {
                    self.operator_request();
                }
                if self.now_ms >= until_ms {
                    self.cuts.clear();
                    let index = Self::replica_index(primary);
                    if self.replicas[index].alive() {
                        self.crash_replica(index, 0);
                    }
                    self.replicas[index].restart_at_ms = None;
                    self.drill = Drill::Killed {
                        at_ms: self.now_ms,
                        primary,
                        caught_up_ms: None,
                    };
                }
            }
            Drill::Killed {
                at_ms,
                primary,
                caught_up_ms,
            } => {
                // Since when the survivor that may stand holds the sync's
                // log; records still in flight from the killed primary can
                // part them again, which counts until one of them stands.
                let caught_up_ms = if self.candidate_caught_up(primary) {
                    caught_up_ms.or(Some(self.now_ms))
                } else if self.survivors_follow(primary) {
                    None
                } else {
                    caught_up_ms
                };
                if self
                    .replicas
                    .iter()
                    .any(|r| r.id != primary && r.accepts_writes())
                {
                    self.report.failover_ms = self.now_ms - at_ms;
                    let after = self.now_ms - caught_up_ms.unwrap_or(at_ms);
                    self.report.failover_after_catchup_ms = after;
                    if after > FAILOVER_AFTER_CATCHUP_MS {
                        self.violate(
                            "a failover takes under 600 ms once the survivor that may stand caught up",
                            format!("{after} ms from the survivor that may stand holding the sync's tip to an open epoch (killed at {at_ms} ms)"),
                        );
                    }
                    self.restart_replica(Self::replica_index(primary));
                    self.drill = Drill::Done;
                } else if self.now_ms > at_ms + FAILOVER_LIMIT_MS {
                    let status = self.status_line();
                    self.violate(
                        "a new primary takes over when the primary dies",
                        format!("no primary {FAILOVER_LIMIT_MS} ms after replica-{primary} was killed: {status}"),
                    );
                } else {
                    self.drill = Drill::Killed {
                        at_ms,
                        primary,
                        caught_up_ms,
                    };
                }
            }
            Drill::Done => {}
        }
    }

    /// Whether the replicas other than `killed` all follow (none stands).
    fn survivors_follow(&self, killed: NodeId) -> bool {
        self.replicas
            .iter()
            .filter(|r| r.id != killed)
            .all(|r| match &r.process {
                Process::Running(round) => round.node().role() == Role::Follower,
                Process::Down(_) => true,
            })
    }

    /// Whether the survivor that may stand holds the sync replica's tip:
    /// then it is at least as up to date as the only voter it needs, and
    /// nothing is left to catch up. It may hold more than the sync (records
    /// still in flight from the killed primary), which the sync then takes
    /// from it; a record the sync gets that it lacks parts them again.
    fn candidate_caught_up(&self, killed: NodeId) -> bool {
        let running = |id: NodeId| match &self.replicas[Self::replica_index(id)].process {
            Process::Running(round) => Some(round.ledger().store()),
            Process::Down(_) => None,
        };
        let mut survivors = REPLICAS.iter().copied().filter(|&id| id != killed);
        let (Some(a), Some(b)) = (survivors.next(), survivors.next()) else {
            return false;
        };
        let (candidate, sync) = if replica::node::standard_priority(a) > 0 {
            (a, b)
        } else {
            (b, a)
        };
        let (Some(candidate), Some(sync)) = (running(candidate), running(sync)) else {
            return false;
        };
        let tip = sync.head();
        let candidate_head = candidate.head();
        if candidate_head.gseq == tip.gseq {
            return candidate_head.hash == tip.hash;
        }
        tip.gseq < candidate_head.gseq
            && matches!(candidate.get(tip.gseq), Ok(Some(entry)) if entry.hash == tip.hash)
    }

    /// The replica's process dies: its disk keeps what was synced and the
    /// first `keep_unsynced` writes made since.
    fn crash_replica(&mut self, index: usize, keep_unsynced: usize) {
        self.report.replica_crashes += 1;
        let restart_at = self.now_ms + self.rng.random_range(100..1_500);
        let damage = self.damage_for(index);
        let replica = &mut self.replicas[index];
        if let Process::Running(round) = &replica.process {
            let counters = round.node().counters();
            self.report.catchup_records += counters.catchup_records_taken;
            self.report.window_waits += counters.stream_window_waits;
            self.report.records_received_twice += counters.records_received_twice;
        }
        // Drop the process first: nothing it held in memory survives.
        replica.process = Process::Down(Box::new(
            open_ledger(&MemDisk::new(), &replica.faults).expect("a new disk opens"),
        ));
        replica.disk.crash(keep_unsynced);
        if let Some(damage) = damage {
            self.report.disks_damaged += 1;
            replica.damaged = true;
            match damage {
                Damage::LoseWrites(writes) => replica.disk.lose_synced_writes(writes),
                Damage::Corrupt(pick) => {
                    replica.disk.corrupt_a_record(pick);
                }
            }
        }
        replica.faults.reset();
        let (ledger, found) = open_disk(replica);
        replica.found_damaged |= found;
        replica.process = Process::Down(Box::new(ledger));
        replica.restart_at_ms = Some(restart_at);
        let id = replica.id;
        self.drop_connections_of(id);
    }

    /// Whether (and how) a crash also damages the disk: now and then in
    /// the fault phase, and never while another replica is damaged and not
    /// repaired yet — one faulty replica is what three can survive. A
    /// replica that is down counts as unrepaired when its disk falls short
    /// of its promise (a repair whose writes the crash took before they
    /// were synced), not only when its damage was found.
    fn damage_for(&mut self, index: usize) -> Option<Damage> {
        let others_sound = self.replicas.iter().enumerate().all(|(i, r)| {
            let repairing = match &r.process {
                Process::Running(round) => round.node().repairing_until().is_some(),
                // A replica that went down while repairing (or whose log
                // fell short of its promise in a crash) starts repairing
                // again: damaging a second disk meanwhile would leave no
                // sound majority, which no protocol survives.
                Process::Down(ledger) => r.found_damaged || short_of_promise(ledger, &r.promises),
            };
            i == index || !(r.damaged || repairing)
        });
        let damage = self.in_fault_phase()
            && others_sound
            && self.rng.random_range(0..100) < self.config.damage_percent;
        if !damage {
            return None;
        }
        Some(if self.rng.random_bool(0.5) {
            Damage::LoseWrites(self.rng.random_range(1..20))
        } else {
            Damage::Corrupt(self.rng.random_range(0..usize::MAX))
        })
    }

    fn restart_replica(&mut self, index: usize) {
        let start = Start {
            keys: self.keys.clone(),
            codec: DatagramCodec::new(CLUSTER_ID, &self.cluster_key),
            promises: Box::new(self.replicas[index].promises.clone()),
            incarnation_floor: 0,
            seed: self.rng.random(),
            damaged: self.replicas[index].found_damaged,
        };
        let config = round_config(self.replicas[index].id, &self.config);
        let replica = &mut self.replicas[index];
        replica.restart_at_ms = None;
        replica.found_damaged = false;
        let ledger = match std::mem::replace(
            &mut replica.process,
            Process::Down(Box::new(
                open_ledger(&MemDisk::new(), &replica.faults).expect("a new disk opens"),
            )),
        ) {
            Process::Down(ledger) => *ledger,
            Process::Running(round) => {
                replica.process = Process::Running(round);
                return;
            }
        };
        let round = Round::open(config, ledger, start).expect("a replica reopens its memory log");
        replica.repairing = round.node().repairing_until().is_some();
        if replica.repairing && !replica.damaged {
            // Not damaged, yet its log does not hold what it promised: a
            // crash between a write and the promise that covers it.
            self.report.repairs_without_damage += 1;
            replica.damaged = true;
        }
        replica.checked_commit = 0;
        replica.process = Process::Running(Box::new(round));
    }

    fn crash_machine(&mut self, index: usize) {
        self.report.machine_crashes += 1;
        self.machines[index].alive = false;
        self.machines[index].restart_at_ms = Some(self.now_ms + self.rng.random_range(50..1_000));
        if let Some(conn) = self.machines[index].conn.take() {
            self.close_conn(conn);
        }
    }

    /// The machine comes back with what it stored: its core is rebuilt from
    /// its own ledger, its uplink resends from the saved mark.
    fn restart_machine(&mut self, index: usize) {
        let addresses: Vec<String> = REPLICAS.iter().map(|&id| replica_name(id)).collect();
        let machine = &mut self.machines[index];
        let core = match MachineCore::rebuild(machine.id.clone(), &machine.key, &machine.events) {
            Ok(core) => core,
            Err(error) => {
                let detail = format!("{}: {error}", machine.id);
                self.violate("a machine restarts from its own ledger", detail);
                return;
            }
        };
        machine.sim.restart(core);
        machine.restart_at_ms = None;
        machine.alive = true;
        let link_key = self.keys.link[&machine.id].clone();
        machine.uplink = Uplink::new(machine.id.clone(), link_key, addresses, machine.saved_ack);
        machine.conn = None;
    }

    fn drop_connections_of(&mut self, replica: NodeId) {
        let conns: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.open && c.replica == replica)
            .map(|(&id, _)| id)
            .collect();
        for conn in conns {
            self.close_conn(conn);
        }
    }

    fn close_conn(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.open {
            return;
        }
        c.open = false;
        let at = self.now_ms + 1;
        self.schedule(at, Delivery::ClosedToMachine { conn });
        self.schedule(at, Delivery::ClosedToReplica { conn });
    }

    fn deliver_due(&mut self) {
        while let Some((&(at, seq), _)) = self.queue.first_key_value() {
            if at > self.now_ms {
                break;
            }
            let delivery = self.queue.remove(&(at, seq)).expect("just seen");
            self.deliver(delivery);
            if self.violation.is_some() {
                return;
            }
        }
    }

    fn deliver(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::Datagram { from, to, bytes } => {
                let index = Self::replica_index(to);
                if !self.replicas[index].alive() || !self.reachable(from, to) {
                    return;
                }
                if self.codec.decode(&bytes).is_err() {
                    self.violate(
                        "datagram integrity",
                        "a datagram sent by a replica did not decode".into(),
                    );
                    return;
                }
                self.replica_input(index, Input::Datagram(bytes));
            }
            Delivery::Connected { conn } => self.on_connected(conn),
            Delivery::ConnectFailed { machine } => {
                if self.machines[machine].alive {
                    self.machines[machine].uplink.on_disconnected(self.now_ms);
                }
            }
            Delivery::ToReplica { conn, bytes } => self.frame_to_replica(conn, &bytes),
            Delivery::ToMachine { conn, bytes } => self.frame_to_machine(conn, &bytes),
            Delivery::ClosedToMachine { conn } => {
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                let machine = c.machine;
                if self.machines[machine].alive && self.machines[machine].conn == Some(conn) {
                    self.machines[machine].conn = None;
                    self.machines[machine].uplink.on_disconnected(self.now_ms);
                }
            }
            Delivery::ClosedToReplica { conn } => {
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                let index = Self::replica_index(c.replica);
                self.conns.remove(&conn);
                self.replica_input(index, Input::SessionClosed(conn));
            }
        }
    }

    fn on_connected(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let (machine, replica) = (c.machine, c.replica);
        let replica_index = Self::replica_index(replica);
        if !c.open || !self.machine_can_reach(replica) || !self.machines[machine].alive {
            self.close_conn(conn);
            return;
        }
        // The replica may still refuse the session (too many): it closes it.
        self.replica_input(replica_index, Input::SessionOpened(conn));
        self.machines[machine].conn = Some(conn);
        let nonce = self.rng.random();
        let actions = self.machines[machine]
            .uplink
            .on_connected(self.now_ms, nonce);
        self.machine_actions(machine, actions);
    }

    fn frame_to_replica(&mut self, conn: ConnId, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.open {
            return;
        }
        c.replica_inbound.extend(bytes);
        let index = Self::replica_index(c.replica);
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            let payload = match c.replica_inbound.next_frame() {
                Ok(Some(payload)) => payload,
                Ok(None) => return,
                Err(_) => {
                    self.close_conn(conn);
                    return;
                }
            };
            self.replica_input(
                index,
                Input::SessionFrame {
                    session: conn,
                    payload: payload.to_vec(),
                },
            );
        }
    }

    fn frame_to_machine(&mut self, conn: ConnId, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.open {
            return;
        }
        c.machine_inbound.extend(bytes);
        let machine = c.machine;
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            let payload = match c.machine_inbound.next_frame() {
                Ok(Some(payload)) => payload,
                Ok(None) => return,
                Err(_) => {
                    self.close_conn(conn);
                    return;
                }
            };
            if !self.machines[machine].alive || self.machines[machine].conn != Some(conn) {
                return;
            }
            let actions = {
                let m = &mut self.machines[machine];
                m.uplink.on_frame(self.now_ms, &payload, &Local(&m.events))
            };
            self.machine_actions(machine, actions);
        }
    }

    fn send_frame(&mut self, conn: ConnId, to_replica: bool, payload: Vec<u8>) {
        let delay = self.rng.random_range(1..=self.config.delay_ms_max.max(1));
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.open {
            return;
        }
        let mut frame = BytesMut::new();
        frame_codec()
            .encode(Bytes::from(payload), &mut frame)
            .expect("the cores never build a frame above FRAME_BYTES_MAX");
        let frame = frame.to_vec();
        if to_replica {
            let at = (self.now_ms + delay).max(c.up_ready_ms);
            c.up_ready_ms = at;
            self.schedule(at, Delivery::ToReplica { conn, bytes: frame });
        } else {
            let at = (self.now_ms + delay).max(c.down_ready_ms);
            c.down_ready_ms = at;
            self.schedule(at, Delivery::ToMachine { conn, bytes: frame });
        }
    }

    /// Closes a session from the replica's side: what was queued goes
    /// first, like a TCP close.
    fn close_from_replica(&mut self, session: ConnId) {
        let Some(c) = self.conns.get_mut(&session) else {
            return;
        };
        let at = c.down_ready_ms.max(self.now_ms) + 1;
        c.open = false;
        self.schedule(at, Delivery::ClosedToMachine { conn: session });
        self.schedule(at, Delivery::ClosedToReplica { conn: session });
    }

    fn machine_actions(&mut self, machine: usize, actions: Vec<UplinkAction>) {
        for action in actions {
            match action {
                UplinkAction::Connect(address) => {
                    let replica = REPLICAS
                        .iter()
                        .copied()
                        .find(|&id| replica_name(id) == address)
                        .expect("addresses are replica names");
                    let at =
                        self.now_ms + self.rng.random_range(1..=self.config.delay_ms_max.max(1));
                    if self.machine_can_reach(replica) {
                        let conn = self.next_conn;
                        self.next_conn += 1;
                        self.conns.insert(
                            conn,
                            Conn {
                                machine,
                                replica,
                                up_ready_ms: 0,
                                down_ready_ms: 0,
                                open: true,
                                machine_inbound: Inbound::new(),
                                replica_inbound: Inbound::new(),
                            },
                        );
                        self.schedule(at, Delivery::Connected { conn });
                    } else {
                        self.schedule(at, Delivery::ConnectFailed { machine });
                    }
                }
                UplinkAction::Send(payload) => {
                    if let Some(conn) = self.machines[machine].conn {
                        self.send_frame(conn, true, payload);
                    }
                }
                UplinkAction::Close => {
                    if let Some(conn) = self.machines[machine].conn.take() {
                        self.close_conn(conn);
                    }
                }
                UplinkAction::Acknowledged(seq) => {
                    self.check_acknowledged_is_durable(machine, seq);
                    let m = &mut self.machines[machine];
                    m.saved_ack = m.saved_ack.max(seq);
                    m.acked_ever = m.acked_ever.max(seq);
                    self.report.acknowledged = self.machines.iter().map(|m| m.acked_ever).sum();
                }
                UplinkAction::Remote(command) => self.apply_remote(machine, command),
            }
        }
    }

    /// An operator asks the primary (if there is one) to change a price or
    /// a name at a machine, as the dashboard does: through the round. A
    /// refusal (a machine not installed yet, too many commands waiting) is
    /// the dashboard's to show; nothing to check here.
    fn operator_request(&mut self) {
        let Some(index) = self.replicas.iter().position(ReplicaSim::accepts_writes) else {
            return;
        };
        let machine = self.machines[self.rng.random_range(0..self.machines.len())]
            .id
            .clone();
        let slots: Vec<ledger::SlotId> = self.replicas[index]
            .ledger()
            .projection()
            .machines
            .get(&machine)
            .map(|state| state.slots.keys().copied().collect())
            .unwrap_or_default();
        if slots.is_empty() {
            return;
        }
        let slot = slots[self.rng.random_range(0..slots.len())];
        let action = if self.rng.random_bool(0.7) {
            dashboard::ports::OperatorAction::SetPrice {
                machine,
                slot,
                price: self.rng.random_range(10..=200) * 10,
            }
        } else {
            let name = format!("Blend {}", self.rng.random_range(1..1_000));
            dashboard::ports::OperatorAction::Rename {
                machine,
                slot,
                name,
            }
        };
        let request = self.next_request;
        self.next_request += 1;
        let Some(round) = self.replicas[index].round() else {
            return;
        };
        if round
            .operator_request(request, "sim-operator", &action)
            .is_ok()
        {
            self.report.operator_requests += 1;
        }
        self.after_round_step(index);
    }

    /// The machine applies a command from the dashboard as the machine app
    /// does: decided by its rules, stored, applied, then shipped.
    fn apply_remote(&mut self, index: usize, command: RemoteCommand) {
        let m = &mut self.machines[index];
        if !m.alive {
            return;
        }
        let stored_before = m.events.len();
        let Ok(applied) = m.sim.remote(command, |prepared| {
            m.events.extend_from_slice(prepared.signed());
            Ok::<(), std::convert::Infallible>(())
        });
        let stored = (m.events.len() - stored_before) as u64;
        self.report.events += stored;
        self.report.commands_applied += applied.len() as u64;
        let now_ms = self.now_ms;
        let actions = {
            let m = &mut self.machines[index];
            m.uplink.on_local_append(now_ms, &Local(&m.events))
        };
        self.machine_actions(index, actions);
    }

    fn generate_events(&mut self) {
        for index in 0..self.machines.len() {
            let target = self.config.events_per_machine;
            let m = &self.machines[index];
            if !m.alive || m.events.len() as u64 >= target || !self.rng.random_bool(0.05) {
                continue;
            }
            self.generate_for(index);
        }
    }

    /// One decision of one machine: stored in its own ledger, then applied,
    /// then shipped. Now and then during the faults the machine dies right
    /// after storing, before applying: the restart must pick the decision
    /// up from its ledger.
    fn generate_for(&mut self, index: usize) {
        if !self.machines[index].alive {
            return;
        }
        let crash_after_store = self.in_fault_phase()
            && self
                .rng
                .random_ratio(self.config.crash_mid_round_percent, 100);
        let m = &mut self.machines[index];
        let stored_before = m.events.len();
        let outcome = m.sim.step(|prepared| {
            m.events.extend_from_slice(prepared.signed());
            // An error stands for the crash: stored, and never applied.
            if crash_after_store { Err(()) } else { Ok(()) }
        });
        self.report.events += (m.events.len() - stored_before) as u64;
        if outcome.is_err() {
            self.crash_machine(index);
            return;
        }
        let now_ms = self.now_ms;
        let actions = {
            let m = &mut self.machines[index];
            m.uplink.on_local_append(now_ms, &Local(&m.events))
        };
        self.machine_actions(index, actions);
    }

    /// Every running replica starts its round; the disks learn whether
    /// faults are on, and now and then a round is doomed to crash.
    fn begin_rounds(&mut self) {
        let fault_phase = self.in_fault_phase();
        let (now, wall) = (self.now_ms, i64::try_from(self.now_ms).expect("small"));
        for index in 0..self.replicas.len() {
            let crash =
                fault_phase && self.rng.random_range(0..100) < self.config.crash_mid_round_percent;
            let replica = &mut self.replicas[index];
            {
                let mut plan = replica.faults.plan();
                plan.enabled = fault_phase;
                plan.write_fail_percent = self.config.write_fail_percent;
                plan.sync_fail_percent = self.config.sync_fail_percent;
            }
            if let Some(round) = replica.round() {
                round.begin(now, wall);
                if crash {
                    replica.faults.crash_during_round();
                }
            }
        }
    }

    /// Hands one input to a running replica's round.
    fn replica_input(&mut self, index: usize, input: Input<SimKeys>) {
        let Some(round) = self.replicas[index].round() else {
            return;
        };
        round.input(input);
        self.after_round_step(index);
    }

    /// Ends every running replica's round: timers, the group commit, the
    /// sync, and — only if it succeeded — everything the round produced.
    fn finish_rounds(&mut self) {
        for index in 0..self.replicas.len() {
            let Some(round) = self.replicas[index].round() else {
                continue;
            };
            round.tick();
            // As the server does: what the inputs produced to send early
            // leaves before the seal, then what the seal produced.
            let before_seal = round.take_early();
            if self.replicas[index].faults.plan().crashed {
                // Crashed at a write of the tick: nothing left the process.
                self.after_round_step(index);
                continue;
            }
            for outgoing in before_seal {
                self.release(index, outgoing);
            }
            let Some(round) = self.replicas[index].round() else {
                continue;
            };
            round.seal();
            let early = round.take_early();
            let acks = early
                .iter()
                .filter(|outgoing| matches!(outgoing, Outgoing::Frame { .. }))
                .count() as u64;
            if self.replicas[index].faults.plan().crashed {
                // Crashed while sealing: nothing left the process.
                self.after_round_step(index);
                continue;
            }
            // The records streamed before the sync leave first, even when
            // the sync then crashes the process.
            for outgoing in early {
                self.release(index, outgoing);
            }
            self.report.acks_before_sync += acks;
            let Some(round) = self.replicas[index].round() else {
                continue;
            };
            let synced = round.sync();
            let outgoing = round.finish(synced);
            if self.after_round_step(index) {
                // Crashed at the sync: nothing else left the process.
                self.report.acks_before_crashed_sync += acks;
                continue;
            }
            self.check_committed_prefix(index);
            for outgoing in outgoing {
                self.release(index, outgoing);
            }
        }
    }

    /// After anything a replica did: a planned crash takes the process down
    /// (returns `true`), and the per-step checkers run.
    fn after_round_step(&mut self, index: usize) -> bool {
        let (crashed, truncated) = {
            let mut plan = self.replicas[index].faults.plan();
            (plan.crashed, std::mem::take(&mut plan.committed_truncated))
        };
        if let Some(problem) = truncated.first() {
            let name = self.replicas[index].name.clone();
            self.violate(
                "no committed entry is ever truncated",
                format!("{name}: {problem}"),
            );
        }
        if crashed {
            self.report.crashes_mid_round += 1;
            let unsynced = self.replicas[index].disk.unsynced_writes();
            let keep = self.rng.random_range(0..=unsynced);
            self.crash_replica(index, keep);
            return true;
        }
        let Some(round) = self.replicas[index].round() else {
            return true;
        };
        let repairing = round.node().repairing_until().is_some();
        if round.node().role() == Role::Primary {
            let (id, epoch) = (round.node().id(), round.node().epoch());
            self.check_one_primary_per_epoch(id, epoch);
        }
        let replica = &mut self.replicas[index];
        if replica.damaged && !repairing {
            replica.damaged = false;
            if std::mem::take(&mut replica.repairing) {
                self.report.repairs += 1;
            }
        }
        false
    }

    /// Carries out what a round released.
    fn release(&mut self, index: usize, outgoing: Outgoing) {
        match outgoing {
            Outgoing::Datagram { to, bytes } => {
                self.check_repairing_promises_nothing(index, &bytes);
                self.send_datagram(index, to, bytes)
            }
            Outgoing::Frame { session, payload } => self.send_frame(session, false, payload),
            Outgoing::Close { session } => self.close_from_replica(session),
            // Connection admission is the shell's; the simulated network
            // has no handshake deadline to lift.
            Outgoing::Authenticated { .. } => {}
            Outgoing::OperatorAnswer { answer, .. } => match answer {
                Ok(receipt) => {
                    self.report.operator_committed += 1;
                    self.receipts.push(receipt);
                }
                Err(_) => self.report.operator_failed += 1,
            },
            Outgoing::LoadKeys => {
                let name = self.replicas[index].name.clone();
                self.violate(
                    "every machine's key is known",
                    format!("{name} asked to reload keys, but every machine is provisioned"),
                );
            }
        }
    }

    fn send_datagram(&mut self, index: usize, to: Target, bytes: Vec<u8>) {
        let from = self.replicas[index].id;
        let targets: Vec<NodeId> = match to {
            Target::All => REPLICAS.iter().copied().filter(|&id| id != from).collect(),
            Target::Node(id) => vec![id],
        };
        for target in targets {
            self.report.datagrams_sent += 1;
            if self.in_fault_phase() && self.rng.random_range(0..100) < self.config.drop_percent {
                self.report.datagrams_dropped += 1;
                continue;
            }
            let copies = if self.in_fault_phase()
                && self.rng.random_range(0..100) < self.config.duplicate_percent
            {
                self.report.datagrams_duplicated += 1;
                2
            } else {
                1
            };
            for _ in 0..copies {
                let delay = self.rng.random_range(1..=self.config.delay_ms_max.max(1));
                self.schedule(
                    self.now_ms + delay,
                    Delivery::Datagram {
                        from,
                        to: target,
                        bytes: bytes.clone(),
                    },
                );
            }
        }
    }

    // ----- checkers -----

    /// No acknowledged event lost: when a machine is told events are
    /// committed, a majority of replicas hold every one of them.
    fn check_acknowledged_is_durable(&mut self, machine: usize, seq: u64) {
        let id = self.machines[machine].id.clone();
        let holders = self
            .replicas
            .iter()
            .filter(|r| r.ledger().store().machine_head(&id).seq >= seq)
            .count();
        // A replica whose disk was damaged may have lost it since the
        // commit; the other holder must still have it. So may one that is
        // down short of its promise: its repair ended in a round whose
        // writes the crash took before they were synced (it repairs again
        // when it restarts, as `damage_for` counts it).
        let damaged = self.replicas.iter().any(|r| {
            r.damaged
                || matches!(&r.process, Process::Down(ledger) if short_of_promise(ledger, &r.promises))
        });
        if holders < 2 - usize::from(damaged) {
            self.violate(
                "no acknowledged event is lost",
                format!("{id} was told #{seq} is committed but only {holders} replica(s) hold it"),
            );
        }
    }

    /// Every replica agrees on every committed entry, with identical
    /// hashes, and no replica commits beyond its own log.
    fn check_committed_prefix(&mut self, index: usize) {
        let replica = &self.replicas[index];
        let Process::Running(round) = &replica.process else {
            return;
        };
        let commit_gseq = round.node().commit_gseq();
        let store = round.ledger().store();
        let name = replica.name.clone();
        if commit_gseq > store.head().gseq {
            return self.violate(
                "commit never passes the local log",
                format!(
                    "{name} commits {commit_gseq} beyond its tip {}",
                    store.head().gseq
                ),
            );
        }
        if commit_gseq <= replica.checked_commit {
            return;
        }
        let from = replica.checked_commit + 1;
        let mut committed = self.committed.lock().unwrap_or_else(|p| p.into_inner());
        let mut problem = None;
        let read = store.for_each_record(from, commit_gseq, |gseq, record| {
            let hash = *blake3::hash(record).as_bytes();
            match committed.get(usize::try_from(gseq - 1).expect("small")) {
                Some(known) if *known != hash => {
                    problem = Some(format!("{name} commits a different entry at gseq {gseq}"));
                    return Ok(false);
                }
                Some(_) => {}
                None => committed.push(hash),
            }
            Ok(true)
        });
        drop(committed);
        if let Err(error) = read {
            problem = Some(format!("{name} cannot read its committed entries: {error}"));
        }
        match problem {
            Some(problem) => self.violate("replicas agree on every committed entry", problem),
            None => self.replicas[index].checked_commit = commit_gseq,
        }
    }

    /// A replica repairing a damaged log neither acknowledges nor stands:
    /// what it would promise rests on a log that lost entries. It may grant
    /// a vote or pre-vote, but only to a candidate whose log holds every
    /// committed entry up to what the repairing replica had promised (Raft's
    /// guarantee, judged here by the simulation's own record of what was
    /// committed, not by the node's rule).
    fn check_repairing_promises_nothing(&mut self, index: usize, bytes: &[u8]) {
        let Some(round) = self.replicas[index].round() else {
            return;
        };
        let Some(promised) = round.node().repairing_until() else {
            return;
        };
        let promise = match self.codec.decode(bytes).map(|d| d.message) {
            Ok(Message::Ack { tip_gseq, .. }) if tip_gseq > 0 => "acknowledges",
            Ok(
                Message::VoteReply {
                    granted: true,
                    candidate,
                    ..
                }
                | Message::PreVoteReply {
                    granted: true,
                    candidate,
                    ..
                },
            ) => match self.candidate_lacks_committed(candidate, promised) {
                Some(gseq) => &format!(
                    "grants a vote to replica-{candidate}, which lacks committed gseq {gseq}"
                ),
                None => return,
            },
            Ok(Message::PreVoteRequest { .. } | Message::VoteRequest { .. }) => "stands",
            _ => return,
        };
        let name = self.replicas[index].name.clone();
        self.violate(
            "a damaged replica promises nothing until repaired",
            format!("{name} {promise} while repairing its log"),
        );
    }

    /// The highest committed gseq up to `promised` that `candidate`'s log
    /// does not hold as committed (same record bytes), if any. Logs are
    /// hash-chained, so holding that one entry means holding all before it.
    fn candidate_lacks_committed(&self, candidate: NodeId, promised: u64) -> Option<u64> {
        let committed = self.committed.lock().unwrap_or_else(|p| p.into_inner());
        let gseq = promised.min(committed.len() as u64);
        if gseq == 0 {
            return None;
        }
        let expected = committed[usize::try_from(gseq - 1).expect("small")];
        drop(committed);
        let Process::Running(round) = &self.replicas[Self::replica_index(candidate)].process else {
            return None;
        };
        let mut held = None;
        let _ = round
            .ledger()
            .store()
            .for_each_record(gseq, gseq, |_, record| {
                held = Some(*blake3::hash(record).as_bytes());
                Ok(false)
            });
        (held != Some(expected)).then_some(gseq)
    }

    fn check_one_primary_per_epoch(&mut self, id: NodeId, epoch: u64) {
        match self.primaries.get(&epoch) {
            Some(&other) if other != id => self.violate(
                "at most one primary per epoch",
                format!("replica-{other} and replica-{id} both lead epoch {epoch}"),
            ),
            _ => {
                self.primaries.insert(epoch, id);
                self.report.epochs = self.primaries.len() as u64;
            }
        }
    }

    fn converged(&self) -> bool {
        let all_alive =
            self.replicas.iter().all(ReplicaSim::alive) && self.machines.iter().all(|m| m.alive);
        let done = self.machines.iter().all(|m| {
            m.events.len() as u64 >= self.config.events_per_machine
                && m.uplink.acked() == m.events.len() as u64
        });
        let tips: Vec<_> = self
            .replicas
            .iter()
            .map(|r| r.ledger().store().head())
            .collect();
        let same = tips.windows(2).all(|w| w[0] == w[1]);
        let committed = self.replicas.iter().all(|r| match &r.process {
            Process::Running(round) => round.node().commit_gseq() == tips[0].gseq,
            Process::Down(_) => false,
        });
        // Every command requested has reached its machine and come back
        // applied (or refused).
        let settled = self.replicas.iter().all(|r| {
            r.ledger()
                .projection()
                .operators
                .commands
                .values()
                .flat_map(|commands| commands.values())
                .all(|command| command.outcome != CommandOutcome::Pending)
        });
        all_alive && done && same && committed && settled
    }

    /// Sums the counters of every running replica.
    fn sum_counters(&self, counter: fn(&SimRound) -> u64) -> u64 {
        self.replicas
            .iter()
            .filter_map(|r| match &r.process {
                Process::Running(round) => Some(counter(round)),
                Process::Down(_) => None,
            })
            .sum()
    }

    fn final_checks(&mut self) {
        self.report.truncated_records =
            self.sum_counters(|r| r.node().counters().records_truncated);
        self.report.catchup_records +=
            self.sum_counters(|r| r.node().counters().catchup_records_taken);
        self.report.naks = self.sum_counters(|r| r.node().counters().naks_sent);
        self.report.window_waits += self.sum_counters(|r| r.node().counters().stream_window_waits);
        self.report.records_received_twice +=
            self.sum_counters(|r| r.node().counters().records_received_twice);
        for replica in &self.replicas {
            let plan = replica.faults.plan();
            self.report.writes_failed += plan.writes_failed;
            self.report.syncs_failed += plan.syncs_failed;
        }
        let rejected = self.sum_counters(|r| r.counters().datagrams_rejected.values().sum());
        if rejected > 0 {
            self.violate(
                "datagram integrity",
                format!("{rejected} datagrams sent by replicas were refused by replicas"),
            );
        }
        for index in 0..self.replicas.len() {
            self.check_no_duplicates(index);
            self.check_acknowledged_present(index);
            self.check_projection(index);
            self.check_committed_prefix(index);
            self.check_commands_applied_once(index);
            self.check_receipts_hold(index);
        }
    }

    /// An operator told that a request was committed finds it in every
    /// log: each command the receipt names, at or before the receipt's
    /// gseq.
    fn check_receipts_hold(&mut self, index: usize) {
        let operators = &self.replicas[index].ledger().projection().operators;
        let missing = self.receipts.iter().find_map(|receipt| {
            receipt.commands.iter().find_map(|(machine, id, _)| {
                let held = operators
                    .commands
                    .get(machine)
                    .and_then(|commands| commands.get(id))
                    .is_some_and(|command| command.gseq <= receipt.gseq);
                (!held)
                    .then(|| format!("{machine} command {id} (receipt at gseq {})", receipt.gseq))
            })
        });
        if let Some(missing) = missing {
            let name = self.replicas[index].name.clone();
            self.violate(
                "what an operator was told is committed is in the log",
                format!("{name} lacks {missing}"),
            );
        }
    }

    /// Every command the log requested is answered by exactly one event of
    /// its machine (the change, or its refusal), and no machine answered a
    /// command the log does not hold: a command that a failover took back
    /// never reached a machine.
    fn check_commands_applied_once(&mut self, index: usize) {
        let projection = self.replicas[index].ledger().projection();
        let mut problem = None;
        for machine in &self.machines {
            let requested: BTreeSet<u64> = projection
                .operators
                .commands
                .get(&machine.id)
                .map(|commands| commands.keys().copied().collect())
                .unwrap_or_default();
            let mut answered = BTreeSet::new();
            for signed in &machine.events {
                let Some(command_id) = signed
                    .envelope()
                    .ok()
                    .and_then(|e| answered_command(&e.event))
                else {
                    continue;
                };
                if !answered.insert(command_id) {
                    problem = Some(format!("{} applied command {command_id} twice", machine.id));
                }
            }
            if problem.is_none() && answered != requested {
                problem = Some(format!(
                    "{} answered commands {answered:?}, the log requested {requested:?}",
                    machine.id
                ));
            }
            if problem.is_some() {
                break;
            }
        }
        if let Some(problem) = problem {
            let name = self.replicas[index].name.clone();
            self.violate(
                "every committed command is applied exactly once",
                format!("{name}: {problem}"),
            );
        }
    }

    /// No event appears twice, and every machine's stream is gap-free.
    fn check_no_duplicates(&mut self, index: usize) {
        let mut next: HashMap<MachineId, u64> = HashMap::new();
        let mut problem = None;
        for entry in self.replicas[index].ledger().store().entries_from(1) {
            let Ok(entry) = entry else {
                problem = Some("an entry does not read back".to_owned());
                break;
            };
            if let Some((machine, seq, _)) = entry.body.machine_event() {
                let expected = next.entry(machine.clone()).or_insert(1);
                if seq != *expected {
                    problem = Some(format!("{machine} #{seq} where #{expected} was due"));
                    break;
                }
                *expected += 1;
            }
        }
        if let Some(problem) = problem {
            let name = self.replicas[index].name.clone();
            self.violate("no event appears twice", format!("{name}: {problem}"));
        }
    }

    fn check_acknowledged_present(&mut self, index: usize) {
        for machine in 0..self.machines.len() {
            let id = self.machines[machine].id.clone();
            let acked = self.machines[machine].acked_ever;
            let held = self.replicas[index].ledger().store().machine_head(&id).seq;
            if held < acked {
                let name = self.replicas[index].name.clone();
                self.violate(
                    "no acknowledged event is lost",
                    format!("{name} holds {id} up to #{held}, #{acked} was acknowledged"),
                );
            }
        }
    }

    /// The live projection equals a fresh replay, and machines' own state
    /// equals what the fleet log says about them.
    fn check_projection(&mut self, index: usize) {
        let ledger = self.replicas[index].ledger();
        let live = ledger.projection().clone();
        let replayed = ledger::ledger::rebuild(ledger.store(), ledger::Until::End, &mut |_| {})
            .expect("a memory log replays");
        if live != replayed {
            let name = self.replicas[index].name.clone();
            self.violate(
                "projections equal a fresh replay",
                format!("{name}'s live projection differs"),
            );
            return;
        }
        if live.issue_count > 0 {
            let name = self.replicas[index].name.clone();
            self.violate(
                "projections equal a fresh replay",
                format!("{name}: {:?}", live.issues.first()),
            );
            return;
        }
        for machine in &self.machines {
            if live.machines.get(&machine.id).map(|state| &**state) != Some(machine.sim.state()) {
                let id = machine.id.clone();
                let name = self.replicas[index].name.clone();
                self.violate(
                    "projections equal a fresh replay",
                    format!("{name}'s view of {id} differs from the machine"),
                );
                return;
            }
            // The machine never holds state its own ledger does not.
            let rebuilt = MachineCore::rebuild(machine.id.clone(), &machine.key, &machine.events);
            if rebuilt.as_ref().map(MachineCore::state).ok() != Some(machine.sim.state()) {
                let detail = format!(
                    "{}'s state differs from a rebuild of its ledger",
                    machine.id
                );
                self.violate("a machine applies only what it stored", detail);
                return;
            }
        }
    }
}

/// The remote command an event answers, if it answers one.
fn answered_command(event: &Event) -> Option<u64> {
    match event {
        Event::PriceChanged {
            source: Source::Remote { command_id },
            ..
        }
        | Event::ProductRenamed {
            source: Source::Remote { command_id },
            ..
        }
        | Event::ChangeOwedSettled {
            source: Source::Remote { command_id },
            ..
        }
        | Event::RemoteCommandRejected { command_id, .. } => Some(*command_id),
        _ => None,
    }
}

/// Runs one seed with its own fault profile.
pub fn run_seed(seed: u64) -> Result<SimReport, Violation> {
    Simulation::new(SimConfig::for_seed(seed)).run()
}

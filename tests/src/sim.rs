//! The deterministic simulation: three replicas and a few machines over a
//! simulated network that drops, duplicates, delays and reorders datagrams,
//! resets connections, partitions any replica and crashes and restarts any
//! process — the primary in the middle of a batch included. One seed drives
//! every choice, so a failing seed replays exactly.
//!
//! The replicas run the real sans-I/O cores (`Node`, `Ingest`), the real
//! datagram codec with the cluster key and the real sealed machine link; the
//! machines run the real rules (`SimMachine`) and the real `Uplink`. Only
//! the disk is in memory (`MemLog`, same rules as the RocksDB store): what a
//! write action stored survives a crash, nothing else does.
//!
//! Each invariant has its own checker: no acknowledged event lost, no event
//! twice, every replica agrees on every committed entry, projections equal
//! a fresh replay, at most one primary per epoch, and after the faults stop
//! everything converges.

use bytes::{Bytes, BytesMut};
use ledger::MachineId;
use ledger::crypto::{CHAIN_KEY_CONTEXT, Hash32, LINK_KEY_CONTEXT, SecretKey};
use ledger::keys::ChainKeys;
use ledger::store::record::SignedEvent;
use ledger::workload::{SIMULATION_START_MS, SimMachine};
use link::codec::{LengthDelimitedCodec, frame_codec};
use link::uplink::{LocalEvents, Uplink, UplinkAction};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use replica::ingest::{Ingest, IngestAction, LinkKeys, SessionId, Standing};
use replica::memlog::MemLog;
use replica::node::{Action, LogView, Node, NodeConfig, PersistedVote, Restart, Role, Target};
use replica::wire::{
    Datagram, DatagramCodec, Message, NodeId, PAYLOAD_BYTES_DEFAULT, replication_messages,
};
use std::collections::{BTreeMap, HashMap};
use tokio_util::codec::{Decoder, Encoder};

/// Simulated time advances in steps of this many milliseconds.
const STEP_MS: u64 = 5;
/// After the faults stop, the primary is killed and kept down: another
/// replica must be primary within this long.
const FAILOVER_LIMIT_MS: u64 = 5_000;
/// Before that kill, the link between the primary and the other replica
/// that may stand is cut for this long while the fleet writes, so the
/// sync replica holds entries the future primary lacks.
const DRILL_CUT_MS: u64 = 400;

/// The failover drill run once the faults stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drill {
    Waiting,
    Cutting { until_ms: u64, primary: NodeId },
    Killed { at_ms: u64, primary: NodeId },
    Done,
}
const REPLICAS: [NodeId; 3] = [1, 2, 3];
const CLUSTER_ID: u32 = 77;

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
    /// Chance that executing a replica's action list crashes it part way.
    pub crash_mid_batch_percent: u32,
}

impl SimConfig {
    /// Fault intensities drawn from the seed, so the seeds together cover
    /// calm runs, lossy runs and runs that crash something every second.
    pub fn for_seed(seed: u64) -> SimConfig {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_CAFE);
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
            crash_mid_batch_percent: rng.random_range(0..=3),
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
    pub crashes_mid_batch: u64,
    pub machine_crashes: u64,
    pub partitions: u64,
    pub datagrams_sent: u64,
    pub datagrams_dropped: u64,
    pub datagrams_duplicated: u64,
    pub truncated_records: u64,
    pub naks: u64,
    pub catchup_records: u64,
    /// From killing the primary in the drill to a new primary's open epoch.
    pub failover_ms: u64,
    pub converged_ms: u64,
}

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

struct ReplicaSim {
    id: NodeId,
    name: String,
    // Durable across crashes.
    log: MemLog,
    vote: PersistedVote,
    commit_hint: u64,
    incarnation: u64,
    // Volatile.
    alive: bool,
    node: Node,
    ingest: Ingest,
    packet_seq: u64,
    restart_at_ms: Option<u64>,
    was_primary: bool,
}

struct MachineSim {
    id: MachineId,
    sim: SimMachine,
    // Durable: the machine's own ledger and its saved acknowledged mark.
    events: Vec<SignedEvent>,
    saved_ack: u64,
    // Volatile.
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
    codec: DatagramCodec,
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
    /// Hash of every committed gseq, as first committed anywhere.
    committed: Vec<Hash32>,
    /// The primary of each epoch.
    primaries: BTreeMap<u64, NodeId>,
    report: SimReport,
    violation: Option<Violation>,
    /// Print a status line every 500 ms (VENDLEDGER_SIM_TRACE=1).
    trace: bool,
    drill: Drill,
}

fn node_config(id: NodeId) -> NodeConfig {
    NodeConfig::standard(id)
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
                    events: Vec::new(),
                    saved_ack: 0,
                    alive: true,
                    conn: None,
                    restart_at_ms: None,
                    acked_ever: 0,
                }
            })
            .collect();
        let replicas = REPLICAS
            .iter()
            .map(|&id| ReplicaSim {
                id,
                name: replica_name(id),
                log: MemLog::new(),
                vote: PersistedVote::default(),
                commit_hint: 0,
                incarnation: 1,
                alive: true,
                node: Node::new(node_config(id), Restart::default(), rng.random(), 0),
                ingest: Ingest::new(),
                packet_seq: 0,
                restart_at_ms: None,
                was_primary: false,
            })
            .collect();
        let cluster_key = SecretKey::from_bytes(rng.random());
        Simulation {
            report: SimReport {
                seed: config.seed,
                ..SimReport::default()
            },
            codec: DatagramCodec::new(CLUSTER_ID, &cluster_key),
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
            committed: Vec::new(),
            primaries: BTreeMap::new(),
            violation: None,
            trace: std::env::var_os("VENDLEDGER_SIM_TRACE").is_some(),
            drill: Drill::Waiting,
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
        !self.isolated.contains_key(&replica) && self.replicas[Self::replica_index(replica)].alive
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
                format!(
                    "{}: alive={} role={:?} epoch={} vote={:?} tip={}/e{} commit={} leader={:?} catchup={}/{}",
                    r.name,
                    r.alive,
                    r.node.role(),
                    r.node.epoch(),
                    r.vote.voted_for,
                    r.log.tip().gseq,
                    r.log.tip().epoch,
                    r.node.commit_gseq(),
                    r.node.leader(),
                    r.node.counters().catchup_records_sent,
                    r.node.counters().catchup_records_taken
                )
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
        self.deliver_due();
        self.generate_events();
        for index in 0..self.replicas.len() {
            if self.replicas[index].alive {
                let actions = {
                    let replica = &mut self.replicas[index];
                    replica.node.tick(self.now_ms, &replica.log)
                };
                self.execute(index, actions, &[]);
                self.propose(index);
            }
        }
        for index in 0..self.machines.len() {
            if self.machines[index].alive {
                let actions = {
                    let m = &mut self.machines[index];
                    m.uplink.tick(self.now_ms, &Local(&m.events))
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
            if self.replicas[index].alive {
                self.crash_replica(index);
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
                let all_alive = self.replicas.iter().all(|r| r.alive);
                let primary = self
                    .replicas
                    .iter()
                    .find(|r| r.node.accepts_writes())
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
                // The fleet keeps selling during the cut.
                if self.rng.random_bool(0.2) {
                    let machine = self.rng.random_range(0..self.machines.len());
                    self.generate_for(machine);
                }
                if self.now_ms >= until_ms {
                    self.cuts.clear();
                    let index = Self::replica_index(primary);
                    if self.replicas[index].alive {
                        self.crash_replica(index);
                    }
                    self.replicas[index].restart_at_ms = None;
                    self.drill = Drill::Killed {
                        at_ms: self.now_ms,
                        primary,
                    };
                }
            }
            Drill::Killed { at_ms, primary } => {
                if self
                    .replicas
                    .iter()
                    .any(|r| r.id != primary && r.node.accepts_writes())
                {
                    self.report.failover_ms = self.now_ms - at_ms;
                    self.restart_replica(Self::replica_index(primary));
                    self.drill = Drill::Done;
                } else if self.now_ms > at_ms + FAILOVER_LIMIT_MS {
                    let status = self.status_line();
                    self.violate(
                        "a new primary takes over when the primary dies",
                        format!("no primary {FAILOVER_LIMIT_MS} ms after replica-{primary} was killed: {status}"),
                    );
                }
            }
            Drill::Done => {}
        }
    }

    fn crash_replica(&mut self, index: usize) {
        self.report.replica_crashes += 1;
        let replica = &mut self.replicas[index];
        replica.alive = false;
        replica.restart_at_ms = Some(self.now_ms + self.rng.random_range(100..1_500));
        let id = replica.id;
        self.drop_connections_of(id);
    }

    fn restart_replica(&mut self, index: usize) {
        let seed = self.rng.random();
        let now = self.now_ms;
        let replica = &mut self.replicas[index];
        // Counters live in the process; keep what the old one did.
        self.report.catchup_records += replica.node.counters().catchup_records_taken;
        replica.restart_at_ms = None;
        replica.alive = true;
        replica.incarnation += 1;
        replica.packet_seq = 0;
        replica.was_primary = false;
        replica.ingest = Ingest::new();
        let restart = Restart {
            vote: replica.vote,
            commit_hint: replica.commit_hint,
        };
        replica.node = Node::new(node_config(replica.id), restart, seed, now);
    }

    fn crash_machine(&mut self, index: usize) {
        self.report.machine_crashes += 1;
        self.machines[index].alive = false;
        self.machines[index].restart_at_ms = Some(self.now_ms + self.rng.random_range(50..1_000));
        if let Some(conn) = self.machines[index].conn.take() {
            self.close_conn(conn);
        }
    }

    fn restart_machine(&mut self, index: usize) {
        let addresses: Vec<String> = REPLICAS.iter().map(|&id| replica_name(id)).collect();
        let machine = &mut self.machines[index];
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
                if !self.replicas[index].alive || !self.reachable(from, to) {
                    return;
                }
                let Ok(datagram) = self.codec.decode(&bytes) else {
                    self.violate(
                        "datagram integrity",
                        "a datagram sent by a replica did not decode".into(),
                    );
                    return;
                };
                let actions = {
                    let replica = &mut self.replicas[index];
                    replica.node.receive(self.now_ms, datagram, &replica.log)
                };
                self.execute(index, actions, &[]);
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
                self.replicas[index].ingest.disconnected(conn);
                self.conns.remove(&conn);
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
        if !self.replicas[replica_index].ingest.accept(conn) {
            self.close_conn(conn);
            return;
        }
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
            let nonce = self.rng.random();
            let standing = self.standing(index);
            let actions = {
                let replica = &mut self.replicas[index];
                replica
                    .ingest
                    .on_frame(conn, &payload, nonce, &self.keys, &standing, &replica.log)
            };
            self.ingest_actions(actions);
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

    fn standing(&self, index: usize) -> Standing {
        let node = &self.replicas[index].node;
        Standing {
            accepts_writes: node.accepts_writes(),
            epoch: node.epoch(),
            commit_gseq: node.commit_gseq(),
            primary_address: node.leader().filter(|&l| l != node.id()).map(replica_name),
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

    fn ingest_actions(&mut self, actions: Vec<IngestAction>) {
        for action in actions {
            match action {
                IngestAction::Send { session, payload } => self.send_frame(session, false, payload),
                IngestAction::Close { session, .. } => {
                    // Let queued frames go first, like a TCP close.
                    let Some(c) = self.conns.get(&session) else {
                        continue;
                    };
                    let at = c.down_ready_ms.max(self.now_ms) + 1;
                    if let Some(c) = self.conns.get_mut(&session) {
                        c.open = false;
                    }
                    self.schedule(at, Delivery::ClosedToMachine { conn: session });
                    self.schedule(at, Delivery::ClosedToReplica { conn: session });
                }
            }
        }
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
                UplinkAction::Remote(_) => {}
            }
        }
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

    /// One decision of one machine: recorded locally, then shipped.
    fn generate_for(&mut self, index: usize) {
        let m = &mut self.machines[index];
        if !m.alive {
            return;
        }
        let decided = m.sim.step();
        self.report.events += decided.len() as u64;
        m.events
            .extend(decided.into_iter().map(|(_, signed)| signed));
        let actions = {
            let m = &mut self.machines[index];
            m.uplink.on_local_append(&Local(&m.events))
        };
        self.machine_actions(index, actions);
    }

    fn propose(&mut self, index: usize) {
        let Some((events, origins)) = self.replicas[index].ingest.take_proposal() else {
            return;
        };
        // Not the primary any more: the sessions were redirected when the
        // role changed; machines resend to the new primary.
        if let Ok(actions) = self.replicas[index].node.propose(events) {
            self.execute(index, actions, &origins);
        }
    }

    /// Runs a replica's actions in order, the way the shell does; with a
    /// small chance the replica crashes part way through.
    fn execute(&mut self, index: usize, actions: Vec<Action>, origins: &[SessionId]) {
        let crash_at = if self.in_fault_phase()
            && !actions.is_empty()
            && self.rng.random_range(0..100) < self.config.crash_mid_batch_percent
        {
            Some(self.rng.random_range(0..actions.len()))
        } else {
            None
        };
        for (position, action) in actions.into_iter().enumerate() {
            if !self.replicas[index].alive || self.violation.is_some() {
                return;
            }
            if crash_at == Some(position) {
                self.report.crashes_mid_batch += 1;
                self.crash_replica(index);
                return;
            }
            self.execute_one(index, action, origins);
        }
    }

    fn execute_one(&mut self, index: usize, action: Action, origins: &[SessionId]) {
        match action {
            Action::Send {
                to,
                epoch,
                commit_gseq,
                message,
            } => self.send_datagram(index, to, epoch, commit_gseq, message),
            Action::Replicate {
                to,
                from_gseq,
                to_gseq,
                epoch,
                commit_gseq,
                catchup,
            } => {
                let records = self.replicas[index].log.records(from_gseq, to_gseq);
                let catchup = catchup.map(|c| (c.last_gseq, c.last_epoch));
                for message in
                    replication_messages(from_gseq, records, PAYLOAD_BYTES_DEFAULT, catchup)
                {
                    self.send_datagram(index, to, epoch, commit_gseq, message);
                }
            }
            Action::PersistVote { epoch, voted_for } => {
                self.replicas[index].vote = PersistedVote { epoch, voted_for };
            }
            Action::AppendEvents { epoch, events } => {
                let now = i64::try_from(self.now_ms).expect("small");
                let results = {
                    let replica = &mut self.replicas[index];
                    replica.log.append_events(epoch, now, &events, &self.keys)
                };
                let frames = self.replicas[index].ingest.on_appended(&results, origins);
                self.ingest_actions(frames);
                let follow_up = {
                    let replica = &mut self.replicas[index];
                    replica.node.on_local_append(&replica.log)
                };
                self.execute(index, follow_up, &[]);
            }
            Action::AppendMarker { epoch } => {
                let replica = &mut self.replicas[index];
                let name = replica.name.clone();
                if let Err(e) = replica.log.append_marker(
                    epoch,
                    i64::try_from(self.now_ms).expect("small"),
                    &name,
                ) {
                    self.violate("marker opens a newer epoch", e);
                    return;
                }
                let follow_up = replica.node.on_local_append(&replica.log);
                self.execute(index, follow_up, &[]);
            }
            Action::AppendReplicated { records } => {
                let result = {
                    let replica = &mut self.replicas[index];
                    replica.log.append_replicated(&records, &self.keys)
                };
                if let Err(e) = result {
                    self.violate("followers only append what continues their log", e);
                }
            }
            Action::TruncateAfter { gseq } => {
                self.check_truncation_spares_committed(index, gseq);
                self.replicas[index].log.truncate_after(gseq);
            }
            Action::CommitAdvanced { commit_gseq } => {
                self.replicas[index].commit_hint = commit_gseq;
                self.check_committed_prefix(index, commit_gseq);
                let frames = {
                    let replica = &mut self.replicas[index];
                    replica.ingest.on_commit(commit_gseq, &replica.log)
                };
                self.ingest_actions(frames);
            }
            Action::RoleChanged {
                role,
                epoch,
                leader,
            } => {
                let id = self.replicas[index].id;
                if role == Role::Primary {
                    self.check_one_primary_per_epoch(id, epoch);
                    self.replicas[index].was_primary = true;
                } else if self.replicas[index].was_primary {
                    self.replicas[index].was_primary = false;
                    let frames = self.replicas[index]
                        .ingest
                        .on_demoted(leader.map(replica_name));
                    self.ingest_actions(frames);
                }
            }
        }
    }

    fn send_datagram(
        &mut self,
        index: usize,
        to: Target,
        epoch: u64,
        commit_gseq: u64,
        message: Message,
    ) {
        let from = self.replicas[index].id;
        let targets: Vec<NodeId> = match to {
            Target::All => REPLICAS.iter().copied().filter(|&id| id != from).collect(),
            Target::Node(id) => vec![id],
        };
        for target in targets {
            let replica = &mut self.replicas[index];
            replica.packet_seq += 1;
            let datagram = Datagram {
                cluster_id: CLUSTER_ID,
                sender: from,
                epoch,
                incarnation: replica.incarnation,
                packet_seq: replica.packet_seq,
                commit_gseq,
                message: message.clone(),
            };
            let bytes = self.codec.encode(&datagram);
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
            .filter(|r| replica::ingest::MachineIndex::machine_head(&r.log, &id).0 >= seq)
            .count();
        if holders < 2 {
            self.violate(
                "no acknowledged event is lost",
                format!("{id} was told #{seq} is committed but only {holders} replica(s) hold it"),
            );
        }
    }

    /// Every replica agrees on every committed entry, with identical hashes.
    fn check_committed_prefix(&mut self, index: usize, commit_gseq: u64) {
        let log = &self.replicas[index].log;
        if commit_gseq > log.tip().gseq {
            let name = self.replicas[index].name.clone();
            self.violate(
                "commit never passes the local log",
                format!("{name} commits {commit_gseq} beyond its tip"),
            );
            return;
        }
        for gseq in 1..=commit_gseq {
            let (hash, _) = log.entry_meta(gseq).expect("within the tip");
            match self
                .committed
                .get(usize::try_from(gseq - 1).expect("small"))
            {
                Some(known) if *known != hash => {
                    let name = self.replicas[index].name.clone();
                    self.violate(
                        "replicas agree on every committed entry",
                        format!("{name} commits a different entry at gseq {gseq}"),
                    );
                    return;
                }
                Some(_) => {}
                None => self.committed.push(hash),
            }
        }
    }

    /// A truncation may only drop entries that differ from the committed
    /// ones (a stale suffix); dropping a committed entry could lose it if
    /// the other holder crashes before it is copied back.
    fn check_truncation_spares_committed(&mut self, index: usize, to_gseq: u64) {
        let log = &self.replicas[index].log;
        let last = log.tip().gseq.min(self.committed.len() as u64);
        for gseq in to_gseq + 1..=last {
            let (hash, _) = log.entry_meta(gseq).expect("within the tip");
            if hash == self.committed[usize::try_from(gseq - 1).expect("small")] {
                let name = self.replicas[index].name.clone();
                self.violate(
                    "no committed entry is ever truncated",
                    format!("{name} truncates to {to_gseq}, dropping committed gseq {gseq}"),
                );
                return;
            }
        }
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
            self.replicas.iter().all(|r| r.alive) && self.machines.iter().all(|m| m.alive);
        let done = self.machines.iter().all(|m| {
            m.events.len() as u64 >= self.config.events_per_machine
                && m.uplink.acked() == m.events.len() as u64
        });
        let tips: Vec<_> = self.replicas.iter().map(|r| r.log.tip()).collect();
        let same = tips.windows(2).all(|w| w[0] == w[1]);
        let committed = self
            .replicas
            .iter()
            .all(|r| r.node.commit_gseq() == tips[0].gseq);
        all_alive && done && same && committed
    }

    fn final_checks(&mut self) {
        self.report.truncated_records = self
            .replicas
            .iter()
            .map(|r| r.node.counters().records_truncated)
            .sum();
        self.report.catchup_records += self
            .replicas
            .iter()
            .map(|r| r.node.counters().catchup_records_taken)
            .sum::<u64>();
        self.report.naks = self
            .replicas
            .iter()
            .map(|r| r.node.counters().naks_sent)
            .sum();
        for index in 0..self.replicas.len() {
            self.check_no_duplicates(index);
            self.check_acknowledged_present(index);
            self.check_projection(index);
        }
        let tip = self.replicas[0].log.tip().gseq;
        self.check_committed_prefix(0, tip);
    }

    /// No event appears twice, and every machine's stream is gap-free.
    fn check_no_duplicates(&mut self, index: usize) {
        let mut next: HashMap<MachineId, u64> = HashMap::new();
        let mut problem = None;
        for entry in self.replicas[index].log.entries() {
            if let Some((machine, seq, _)) = entry.entry.body.machine_event() {
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
            let held =
                replica::ingest::MachineIndex::machine_head(&self.replicas[index].log, &id).0;
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
        let log = &self.replicas[index].log;
        let live = log.projection().clone();
        let replayed = log.replay_projection();
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
            if live.machines.get(&machine.id) != Some(machine.sim.state()) {
                let id = machine.id.clone();
                let name = self.replicas[index].name.clone();
                self.violate(
                    "projections equal a fresh replay",
                    format!("{name}'s view of {id} differs from the machine"),
                );
                return;
            }
        }
    }
}

/// Runs one seed with its own fault profile.
pub fn run_seed(seed: u64) -> Result<SimReport, Violation> {
    Simulation::new(SimConfig::for_seed(seed)).run()
}

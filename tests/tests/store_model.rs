//! The store's one set of rules, held against both backends: random
//! sequences of appends (machine events with resends, gaps and forgeries;
//! replicated records, some of them not continuing the log; epoch
//! markers; operators' records, some of which do not apply),
//! truncations, checkpoints and reopens run against a RocksDB
//! ledger and a memory ledger, which must agree on every result, head,
//! machine head, segment, record and projection. The memory ledger stages
//! its appends until a sync (as a replica's does), the RocksDB one writes
//! each at once: staging must change nothing anyone reads.
//!
//! `VENDLEDGER_MODEL_CASES` sets the number of cases (default 2,000).

use ledger::crypto::{CHAIN_KEY_CONTEXT, SecretKey};
use ledger::keys::ChainKeys;
use ledger::operator::{AlertKey, AlertKind, OperatorAction, OperatorRecord};
use ledger::rules::RemoteAction;
use ledger::store::backend::Backend;
use ledger::store::memory::{MemBackend, MemDisk};
use ledger::store::record::{EntryBody, LogEntry, Payload, ReplicatedRecord, SignedEvent};
use ledger::store::{LogStore, OpenOptions, Proposed, StoreError};
use ledger::{Ledger, MachineId, SlotId};
use proptest::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use workload::{SIMULATION_START_MS, SimMachine};

const MACHINES: usize = 3;
const EVENTS_PER_MACHINE: usize = 60;
const SEGMENT_ENTRIES: u64 = 8;

struct Fleet {
    keys: HashMap<MachineId, SecretKey>,
    /// Each machine's signed stream, in seq order.
    streams: Vec<Vec<SignedEvent>>,
}

impl ChainKeys for Fleet {
    fn chain_key(&self, machine: &MachineId) -> Option<&SecretKey> {
        self.keys.get(machine)
    }
}

fn fleet() -> Fleet {
    let mut keys = HashMap::new();
    let mut streams = Vec::new();
    for n in 1..=MACHINES {
        let id = MachineId::numbered(u32::try_from(n).unwrap());
        let key = SecretKey::from_bytes([u8::try_from(n).unwrap(); 32]);
        keys.insert(id.clone(), key.derive(CHAIN_KEY_CONTEXT));
        let mut sim = SimMachine::new(id, &key, n as u64, SIMULATION_START_MS);
        let mut stream = Vec::new();
        while stream.len() < EVENTS_PER_MACHINE {
            sim.step_into(&mut stream);
        }
        streams.push(stream);
    }
    Fleet { keys, streams }
}

#[derive(Clone, Debug)]
enum Op {
    /// Machine `machine` submits its events `from..from + count` (resends,
    /// gaps and in-batch duplicates happen naturally); `forge` alters one.
    Events {
        machine: usize,
        from: usize,
        count: usize,
        forge: Option<usize>,
    },
    /// A replicated run of the next events of `machine`, as a primary in
    /// `epoch_bump` epochs later would send them; `break_link` makes the
    /// first not continue the log.
    Replicated {
        machine: usize,
        count: usize,
        epoch_bump: u64,
        break_link: bool,
    },
    Marker {
        epoch_bump: u64,
    },
    /// A primary's operator records: `count` commands for `machine` (the
    /// first not newer than its last when `stale`, so it does not apply)
    /// and an acknowledged alert.
    Operators {
        machine: usize,
        count: usize,
        stale: bool,
    },
    /// Truncate to a fraction (in thousandths) of the head.
    Truncate {
        permille: u64,
    },
    Checkpoint,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..MACHINES, 0..EVENTS_PER_MACHINE, 1usize..12, proptest::option::weighted(0.1, 0usize..12))
            .prop_map(|(machine, from, count, forge)| Op::Events { machine, from, count, forge }),
        3 => (0..MACHINES, 1usize..10, 0u64..2, proptest::bool::weighted(0.15))
            .prop_map(|(machine, count, epoch_bump, break_link)| Op::Replicated { machine, count, epoch_bump, break_link }),
        2 => (0u64..3).prop_map(|epoch_bump| Op::Marker { epoch_bump }),
        2 => (0..MACHINES, 0usize..4, proptest::bool::weighted(0.2))
            .prop_map(|(machine, count, stale)| Op::Operators { machine, count, stale }),
        1 => (0u64..=1_000).prop_map(|permille| Op::Truncate { permille }),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Reopen),
    ]
}

/// The same ledger on RocksDB and in memory.
struct Pair {
    path: PathBuf,
    key: SecretKey,
    rocks: Option<Ledger>,
    disk: MemDisk,
    memory: Option<Ledger<MemBackend>>,
}

fn open_rocks(path: &Path, key: &SecretKey) -> Ledger {
    let options = OpenOptions {
        create: true,
        segment_entries: SEGMENT_ENTRIES,
        deferred_sync: true,
        // Small memtables: hundreds of stores are opened, each a few
        // hundred entries.
        memtable_bytes: 1 << 20,
        read_only: false,
    };
    let mut ledger = Ledger::open(path, key, options).unwrap();
    ledger.set_checkpoint_every(16);
    ledger
}

fn open_memory(disk: &MemDisk) -> Ledger<MemBackend> {
    let mut store = LogStore::with_backend(MemBackend::open(disk, true), SEGMENT_ENTRIES).unwrap();
    store.stage_writes();
    let mut ledger = Ledger::with_store(store).unwrap();
    ledger.set_checkpoint_every(16);
    ledger
}

impl Pair {
    fn new(dir: &Path) -> Pair {
        let path = dir.join("log");
        let key = SecretKey::from_bytes([9; 32]);
        let disk = MemDisk::new();
        Pair {
            rocks: Some(open_rocks(&path, &key)),
            memory: Some(open_memory(&disk)),
            path,
            key,
            disk,
        }
    }

    fn rocks(&mut self) -> &mut Ledger {
        self.rocks.as_mut().expect("open")
    }

    fn memory(&mut self) -> &mut Ledger<MemBackend> {
        self.memory.as_mut().expect("open")
    }

    fn reopen(&mut self) {
        self.rocks().store_mut().sync_deferred().unwrap();
        self.memory().store_mut().sync_deferred().unwrap();
        self.rocks = None;
        self.memory = None;
        self.rocks = Some(open_rocks(&self.path, &self.key));
        self.memory = Some(open_memory(&self.disk));
    }
}

/// An outcome both backends must agree on (errors by their text).
fn outcome<T: std::fmt::Debug>(result: Result<T, StoreError>) -> String {
    match result {
        Ok(value) => format!("ok {value:?}"),
        Err(error) => format!("error {error}"),
    }
}

/// Entries a primary `epoch_bump` epochs ahead would replicate next: the
/// next events of `machine`, continuing `ledger`'s log.
fn replicated_run<B: Backend>(
    ledger: &Ledger<B>,
    fleet: &Fleet,
    machine: usize,
    count: usize,
    epoch_bump: u64,
    break_link: bool,
) -> Vec<ReplicatedRecord> {
    let store = ledger.store();
    let id = MachineId::numbered(u32::try_from(machine + 1).unwrap());
    let next_seq = store.machine_head(&id).seq;
    let mut head = store.head();
    if break_link {
        head.hash[0] ^= 1;
    }
    let epoch = head.epoch + epoch_bump;
    let mut out = Vec::new();
    for event in fleet.streams[machine]
        .iter()
        .skip(usize::try_from(next_seq).unwrap())
        .take(count)
    {
        let envelope = event.envelope().unwrap();
        let body = EntryBody {
            gseq: head.gseq + 1,
            epoch,
            logged_ms: 7,
            payload: Payload::Event {
                machine_id: envelope.machine_id,
                machine_seq: envelope.machine_seq,
                event: event.clone(),
            },
        };
        let (entry, bytes) = LogEntry::seal_body(body, head.hash);
        head.gseq += 1;
        head.hash = entry.hash;
        out.push(ReplicatedRecord::decode(bytes).unwrap());
    }
    out
}

/// Commands for machine `machine` continuing (or, `stale`, not) its ids in
/// the log, and an acknowledged alert.
fn operator_records(pair: &mut Pair, machine: usize, count: usize, stale: bool) -> Vec<Proposed> {
    let id = MachineId::numbered(u32::try_from(machine + 1).unwrap());
    let last = pair.rocks().projection().operators.last_command_id(&id);
    let record = |action| {
        Proposed::Operator(OperatorRecord {
            operator: "model".into(),
            at_ms: 9,
            action,
        })
    };
    let mut entries: Vec<Proposed> = (0..count as u64)
        .map(|n| {
            let command_id = if stale && n == 0 { last } else { last + 1 + n };
            record(OperatorAction::CommandRequested {
                machine: id.clone(),
                command_id,
                action: RemoteAction::SetPrice {
                    slot: SlotId(1),
                    price: 500 + 10 * i64::try_from(n).unwrap(),
                },
            })
        })
        .collect();
    entries.push(record(OperatorAction::AlertAcknowledged {
        alert: AlertKey {
            kind: AlertKind::LowStock,
            machine: id,
            slot: Some(SlotId(1)),
        },
        note: "seen".into(),
    }));
    entries
}

fn apply(pair: &mut Pair, fleet: &Fleet, op: &Op) -> Result<(), TestCaseError> {
    let (rocks, memory) = match op {
        Op::Events {
            machine,
            from,
            count,
            forge,
        } => {
            let stream = &fleet.streams[*machine];
            let mut events: Vec<SignedEvent> =
                stream.iter().skip(*from).take(*count).cloned().collect();
            if let Some(at) = forge
                && let Some(event) = events.get_mut(*at)
            {
                event.chain_hash[5] ^= 0x40;
            }
            let epoch = pair.rocks().store().head().epoch;
            let rocks = pair.rocks().append_events(epoch, 11, &events, fleet);
            let memory = pair.memory().append_events(epoch, 11, &events, fleet);
            let describe =
                |r: Result<ledger::store::AppendOutcome, StoreError>| outcome(r.map(|o| o.results));
            (describe(rocks), describe(memory))
        }
        Op::Replicated {
            machine,
            count,
            epoch_bump,
            break_link,
        } => {
            let records = replicated_run(
                pair.rocks(),
                fleet,
                *machine,
                *count,
                *epoch_bump,
                *break_link,
            );
            let rocks = pair.rocks().append_replicated(&records, fleet);
            let memory = pair.memory().append_replicated(&records, fleet);
            (outcome(rocks), outcome(memory))
        }
        Op::Marker { epoch_bump } => {
            let epoch = pair.rocks().store().head().epoch + epoch_bump;
            let rocks = pair.rocks().append_marker(epoch, 12, "replica-1");
            let memory = pair.memory().append_marker(epoch, 12, "replica-1");
            (outcome(rocks), outcome(memory))
        }
        Op::Operators {
            machine,
            count,
            stale,
        } => {
            let entries = operator_records(pair, *machine, *count, *stale);
            let epoch = pair.rocks().store().head().epoch;
            let rocks = pair.rocks().append(epoch, 13, &entries, fleet);
            let memory = pair.memory().append(epoch, 13, &entries, fleet);
            let describe =
                |r: Result<ledger::store::AppendOutcome, StoreError>| outcome(r.map(|o| o.results));
            (describe(rocks), describe(memory))
        }
        Op::Truncate { permille } => {
            let to = pair.rocks().store().head().gseq * permille / 1_000;
            let rocks = pair.rocks().truncate_after(to);
            let memory = pair.memory().truncate_after(to);
            (outcome(rocks), outcome(memory))
        }
        Op::Checkpoint => {
            let rocks = pair.rocks().checkpoint();
            let memory = pair.memory().checkpoint();
            (outcome(rocks), outcome(memory))
        }
        Op::Reopen => {
            pair.reopen();
            (String::new(), String::new())
        }
    };
    prop_assert_eq!(rocks, memory, "{:?}", op);
    compare_heads(pair)
}

fn compare_heads(pair: &mut Pair) -> Result<(), TestCaseError> {
    let (rocks, memory) = (pair.rocks.as_ref().unwrap(), pair.memory.as_ref().unwrap());
    let (a, b) = (rocks.store(), memory.store());
    prop_assert_eq!(a.head(), b.head());
    prop_assert_eq!(a.open_segment(), b.open_segment());
    prop_assert_eq!(a.segments().unwrap(), b.segments().unwrap());
    let mut heads_a: Vec<_> = a.machine_heads().iter().collect();
    let mut heads_b: Vec<_> = b.machine_heads().iter().collect();
    heads_a.sort_by_key(|(machine, _)| (*machine).clone());
    heads_b.sort_by_key(|(machine, _)| (*machine).clone());
    prop_assert_eq!(heads_a, heads_b);
    prop_assert_eq!(rocks.projection(), memory.projection());
    Ok(())
}

fn compare_everything(pair: &mut Pair, fleet: &Fleet) -> Result<(), TestCaseError> {
    compare_heads(pair)?;
    compare_reads(pair, fleet)?;
    let memory = pair.memory.as_ref().unwrap();
    let replayed =
        ledger::ledger::rebuild(memory.store(), ledger::Until::End, &mut |_| {}).unwrap();
    prop_assert_eq!(&replayed, memory.projection());
    Ok(())
}

/// Every record and index row reads the same (between syncs too, when the
/// memory ledger's appends are staged).
fn compare_reads(pair: &mut Pair, fleet: &Fleet) -> Result<(), TestCaseError> {
    let (rocks, memory) = (pair.rocks.as_ref().unwrap(), pair.memory.as_ref().unwrap());
    let a: Vec<(u64, Vec<u8>)> = rocks.store().records_from(1).map(Result::unwrap).collect();
    let b: Vec<(u64, Vec<u8>)> = memory.store().records_from(1).map(Result::unwrap).collect();
    prop_assert_eq!(a, b);
    for machine in fleet.keys.keys() {
        let head = rocks.store().machine_head(machine).seq;
        for seq in 1..=head {
            prop_assert_eq!(
                rocks.store().gseq_of(machine, seq).unwrap(),
                memory.store().gseq_of(machine, seq).unwrap()
            );
        }
    }
    Ok(())
}

/// A directory for one case's RocksDB: in memory (/dev/shm) where the
/// machine has it, since creating and reopening databases is all fsyncs
/// and the test is about the store's rules, not the disk.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

fn cases() -> u32 {
    std::env::var("VENDLEDGER_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn rocksdb_and_memory_backends_agree(ops in prop::collection::vec(op(), 1..40)) {
        thread_local! {
            static FLEET: Fleet = fleet();
        }
        let dir = scratch_dir();
        let mut pair = Pair::new(dir.path());
        FLEET.with(|fleet| {
            for op in &ops {
                apply(&mut pair, fleet, op)?;
                compare_reads(&mut pair, fleet)?;
            }
            pair.reopen();
            compare_everything(&mut pair, fleet)
        })?;
    }
}

//! Operators' requests through three replicas' rounds, step by step: the
//! same `Round` the server and the simulation drive, over memory logs and
//! a scripted network, to pin what each request is answered and when (and
//! what of a round leaves before its sync).

use crate::faults::MemPromises;
use dashboard::ports::{ActionError, ActionReceipt, OperatorAction};
use ledger::Ledger;
use ledger::MachineId;
use ledger::crypto::SecretKey;
use ledger::keys::ChainKeys;
use ledger::operator::OperatorRole;
use ledger::store::memory::MemBackend;
use ledger::store::{LogStore, SEGMENT_ENTRIES_DEFAULT};
use replica::ingest::LinkKeys;
use replica::node::{NodeConfig, Target};
use replica::round::{
    Input, OPERATOR_COMMIT_TIMEOUT_MS, Outgoing, Refusal, RequestId, Round, RoundConfig, Start,
};
use replica::wire::{
    DatagramCodec, MessageKind, NodeId, PAYLOAD_BYTES_DEFAULT, peek_kind_and_count,
};
use std::collections::BTreeSet;

const CLUSTER_ID: u32 = 5;
const WALL_START_MS: i64 = 1_767_225_600_000;
const STEP_MS: u64 = 5;

/// No machine is provisioned: these tests are about operators.
struct NoMachines;

impl ChainKeys for NoMachines {
    fn chain_key(&self, _: &MachineId) -> Option<&SecretKey> {
        None
    }
}

impl LinkKeys for NoMachines {
    fn link_key(&self, _: &MachineId) -> Option<SecretKey> {
        None
    }
}

type Answer = Result<ActionReceipt, ActionError>;

/// Three replicas whose datagrams arrive at the next step, unless a
/// replica is cut off.
struct Trio {
    rounds: Vec<Round<MemBackend, NoMachines>>,
    now_ms: u64,
    wire: Vec<(NodeId, NodeId, Vec<u8>)>,
    cut: BTreeSet<NodeId>,
    answers: Vec<(NodeId, RequestId, Answer)>,
    next_request: RequestId,
    /// The kinds of the datagrams each replica sent in the last step,
    /// before its sync (`take_early`) and after it.
    sent_before_sync: Vec<(NodeId, MessageKind)>,
    sent_after_sync: Vec<(NodeId, MessageKind)>,
}

impl Trio {
    fn new() -> Trio {
        let cluster_key = SecretKey::from_bytes([8; 32]);
        let rounds = (1..=3)
            .map(|id| {
                let config = RoundConfig {
                    node: NodeConfig::standard(id),
                    name: format!("replica-{id}"),
                    cluster_id: CLUSTER_ID,
                    payload_bytes_max: PAYLOAD_BYTES_DEFAULT,
                    machine_addresses: (1..=3).map(|r| (r, format!("replica-{r}"))).collect(),
                };
                let store =
                    LogStore::with_backend(MemBackend::new(), SEGMENT_ENTRIES_DEFAULT).unwrap();
                let start = Start {
                    keys: NoMachines,
                    codec: DatagramCodec::new(CLUSTER_ID, &cluster_key),
                    promises: Box::new(MemPromises::default()),
                    incarnation_floor: 0,
                    seed: u64::from(id) * 7,
                    damaged: false,
                };
                Round::open(config, Ledger::with_store(store).unwrap(), start).unwrap()
            })
            .collect();
        Trio {
            rounds,
            now_ms: 0,
            wire: Vec::new(),
            cut: BTreeSet::new(),
            answers: Vec::new(),
            next_request: 1,
            sent_before_sync: Vec::new(),
            sent_after_sync: Vec::new(),
        }
    }

    fn round(&mut self, id: NodeId) -> &mut Round<MemBackend, NoMachines> {
        &mut self.rounds[usize::from(id - 1)]
    }

    fn at(&self, id: NodeId) -> &Round<MemBackend, NoMachines> {
        &self.rounds[usize::from(id - 1)]
    }

    /// One round on every replica.
    fn step(&mut self) {
        self.now_ms += STEP_MS;
        let wall_ms = WALL_START_MS + i64::try_from(self.now_ms).unwrap();
        for round in &mut self.rounds {
            round.begin(self.now_ms, wall_ms);
        }
        for (from, to, bytes) in std::mem::take(&mut self.wire) {
            if !self.cut.contains(&from) && !self.cut.contains(&to) {
                self.round(to).input(Input::Datagram(bytes));
            }
        }
        self.sent_before_sync.clear();
        self.sent_after_sync.clear();
        for id in 1..=3 {
            // As the server drives a round: what the inputs produced to
            // send early leaves before the seal, then what the seal made.
            self.round(id).tick();
            self.send_early(id);
            self.round(id).seal();
            self.send_early(id);
            let round = self.round(id);
            let synced = round.sync();
            for outgoing in round.finish(synced) {
                note_kind(&mut self.sent_after_sync, id, &outgoing);
                self.release(id, outgoing);
            }
        }
    }

    fn send_early(&mut self, id: NodeId) {
        for outgoing in self.round(id).take_early() {
            note_kind(&mut self.sent_before_sync, id, &outgoing);
            self.release(id, outgoing);
        }
    }

    /// Drops the records `from` put on the wire to `to` (a lost datagram).
    fn lose_records(&mut self, from: NodeId, to: NodeId) -> usize {
        let before = self.wire.len();
        self.wire.retain(|(f, t, bytes)| {
            let records =
                peek_kind_and_count(bytes).is_some_and(|(kind, _)| kind == MessageKind::Append);
            !(*f == from && *t == to && records)
        });
        before - self.wire.len()
    }

    fn release(&mut self, from: NodeId, outgoing: Outgoing) {
        match outgoing {
            Outgoing::Datagram { to, bytes } => {
                let targets: Vec<NodeId> = match to {
                    Target::All => (1..=3).filter(|&id| id != from).collect(),
                    Target::Node(id) => vec![id],
                };
                for to in targets {
                    self.wire.push((from, to, bytes.clone()));
                }
            }
            Outgoing::OperatorAnswer { request, answer } => {
                self.answers.push((from, request, answer));
            }
            other => panic!("no machine is connected, yet {other:?}"),
        }
    }

    /// Steps until `done`; panics after `limit_ms` of simulated time.
    fn run_until(&mut self, what: &str, limit_ms: u64, done: impl Fn(&Trio) -> bool) {
        let until = self.now_ms + limit_ms;
        while !done(self) {
            assert!(self.now_ms < until, "no {what} within {limit_ms} ms");
            self.step();
        }
    }

    /// The replica whose epoch is open, if one is.
    fn primary(&self) -> Option<NodeId> {
        (1..=3).find(|&id| self.at(id).node().accepts_writes())
    }

    fn elected(&mut self) -> NodeId {
        self.run_until("primary", 5_000, |trio| trio.primary().is_some());
        self.primary().unwrap()
    }

    fn ask(&mut self, id: NodeId, name: &str) -> Result<RequestId, Refusal> {
        let request = self.next_request;
        self.next_request += 1;
        let password_hash = ledger::admin::hash_password(
            "s3cret-pass!",
            &[5; 16],
            ledger::admin::PasswordParams::Light,
        )
        .unwrap();
        let action = OperatorAction::AddUser {
            name: name.into(),
            role: OperatorRole::Admin,
            password_hash,
        };
        self.round(id)
            .operator_request(request, "vendctl", &action)
            .map(|()| request)
    }

    fn answer(&self, request: RequestId) -> Option<&Answer> {
        self.answers
            .iter()
            .find(|(_, r, _)| *r == request)
            .map(|(_, _, answer)| answer)
    }

    fn has_user(&self, id: NodeId, name: &str) -> bool {
        let round = self.at(id);
        round
            .ledger()
            .projection()
            .operators
            .users
            .contains_key(name)
    }
}

/// Notes the kind of a datagram `from` sends.
fn note_kind(sent: &mut Vec<(NodeId, MessageKind)>, from: NodeId, outgoing: &Outgoing) {
    if let Outgoing::Datagram { bytes, .. } = outgoing
        && let Some((kind, _)) = peek_kind_and_count(bytes)
    {
        sent.push((from, kind));
    }
}

#[test]
fn a_follower_asks_for_a_hole_before_its_sync_and_acknowledges_after_it() {
    let mut trio = Trio::new();
    let primary = trio.elected();
    let follower = (1..=3).find(|&id| id != primary).unwrap();
    trio.run_until("the marker to commit everywhere", 2_000, |trio| {
        let marker = trio.at(primary).node().commit_gseq();
        marker >= 1 && trio.at(follower).ledger().store().head().gseq >= marker
    });
    trio.ask(primary, "kim").unwrap();
    trio.step();
    assert_eq!(
        trio.lose_records(primary, follower),
        1,
        "the first records are lost"
    );
    trio.ask(primary, "lee").unwrap();
    // The follower gets the second records, past a hole.
    trio.step();
    trio.step();
    let asked_early = trio
        .sent_before_sync
        .contains(&(follower, MessageKind::Nak));
    let asked_late = trio.sent_after_sync.contains(&(follower, MessageKind::Nak));
    assert!(
        asked_early && !asked_late,
        "the NAK leaves before the follower's sync: before {:?}, after {:?}",
        trio.sent_before_sync,
        trio.sent_after_sync
    );
    assert!(
        !trio
            .sent_before_sync
            .contains(&(follower, MessageKind::Ack)),
        "an acknowledgement waits for the sync: {:?}",
        trio.sent_before_sync
    );
    trio.run_until("the hole to be repaired", 2_000, |trio| {
        trio.has_user(follower, "kim") && trio.has_user(follower, "lee")
    });
}

#[test]
fn a_request_is_answered_once_committed_and_a_follower_names_the_primary() {
    let mut trio = Trio::new();
    let primary = trio.elected();
    let follower = (1..=3).find(|&id| id != primary).unwrap();
    trio.run_until("follower to know the primary", 2_000, |trio| {
        trio.at(follower).node().leader() == Some(primary)
    });
    assert_eq!(
        trio.ask(follower, "kim"),
        Err(Refusal::NotPrimary {
            leader: Some(primary)
        })
    );
    let request = trio.ask(primary, "kim").unwrap();
    assert!(trio.has_user(primary, "kim"), "appended at once");
    // The round that appends it only streams it: no answer before a
    // follower has stored it and said so.
    trio.step();
    assert_eq!(trio.answer(request), None);
    trio.run_until("answer", 2_000, |trio| trio.answer(request).is_some());
    let Some(Ok(receipt)) = trio.answer(request).cloned() else {
        panic!("committed: {:?}", trio.answer(request));
    };
    assert!(receipt.commands.is_empty());
    assert!(trio.round(primary).node().commit_gseq() >= receipt.gseq);
    let stored = (1..=3)
        .filter(|&id| trio.round(id).ledger().store().head().gseq >= receipt.gseq)
        .count();
    assert!(stored >= 2, "durable on two replicas");
    // An account that exists is refused at once, and records nothing.
    assert_eq!(
        trio.ask(primary, "kim"),
        Err(Refusal::Action(ActionError::UserExists("kim".into())))
    );
    trio.run_until("every replica to have the account", 2_000, |trio| {
        (1..=3).all(|id| trio.has_user(id, "kim"))
    });
}

#[test]
fn a_request_a_failover_takes_back_fails_clearly() {
    let mut trio = Trio::new();
    let old = trio.elected();
    trio.run_until("the marker to commit", 2_000, |trio| {
        trio.at(old).node().commit_gseq() >= 1
    });
    trio.cut.insert(old);
    let request = trio.ask(old, "kim").unwrap();
    trio.run_until("a new primary", 5_000, |trio| {
        trio.primary().is_some_and(|id| id != old)
    });
    let new = trio.primary().unwrap();
    assert_eq!(trio.answer(request), None, "still waiting");
    assert!(!trio.has_user(new, "kim"));
    trio.cut.clear();
    trio.run_until("the answer", OPERATOR_COMMIT_TIMEOUT_MS, |trio| {
        trio.answer(request).is_some()
    });
    let Some(Err(ActionError::Storage(why))) = trio.answer(request) else {
        panic!("a clear error: {:?}", trio.answer(request));
    };
    assert!(why.contains("primary changed"), "{why}");
    assert!(!trio.has_user(old, "kim"), "the old primary truncated it");
    // The old primary now sends operators on.
    assert_eq!(
        trio.ask(old, "lee"),
        Err(Refusal::NotPrimary { leader: Some(new) })
    );
}

#[test]
fn a_request_without_a_majority_is_answered_when_its_time_is_up() {
    let mut trio = Trio::new();
    let primary = trio.elected();
    trio.run_until("the marker to commit", 2_000, |trio| {
        trio.at(primary).node().commit_gseq() >= 1
    });
    trio.cut.insert(primary);
    let request = trio.ask(primary, "kim").unwrap();
    let asked_ms = trio.now_ms;
    trio.run_until("the answer", OPERATOR_COMMIT_TIMEOUT_MS + 100, |trio| {
        trio.answer(request).is_some()
    });
    assert!(trio.now_ms >= asked_ms + OPERATOR_COMMIT_TIMEOUT_MS);
    let Some(Err(ActionError::Storage(why))) = trio.answer(request) else {
        panic!("a clear error: {:?}", trio.answer(request));
    };
    assert!(why.contains("not committed within"), "{why}");
}

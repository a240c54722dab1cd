//! Operators' requests through three replicas' rounds, step by step: the
//! same `Round` the server and the simulation drive, over memory logs and
//! a scripted network, to pin what each request is answered and when.

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
use replica::wire::{DatagramCodec, NodeId, PAYLOAD_BYTES_DEFAULT};
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
        }
    }

    fn round(&mut self, id: NodeId) -> &mut Round<MemBackend, NoMachines> {
        &mut self.rounds[usize::from(id - 1)]
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
        for id in 1..=3 {
            let round = self.round(id);
            round.tick();
            round.seal();
            let synced = round.sync();
            for outgoing in round.finish(synced) {
                self.release(id, outgoing);
            }
        }
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
        (1..=3).find(|&id| self.rounds[usize::from(id - 1)].node().accepts_writes())
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
        let round = &self.rounds[usize::from(id - 1)];
        round
            .ledger()
            .projection()
            .operators
            .users
            .contains_key(name)
    }
}

#[test]
fn a_request_is_answered_once_committed_and_a_follower_names_the_primary() {
    let mut trio = Trio::new();
    let primary = trio.elected();
    let follower = (1..=3).find(|&id| id != primary).unwrap();
    trio.run_until("follower to know the primary", 2_000, |trio| {
        trio.rounds[usize::from(follower - 1)].node().leader() == Some(primary)
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
        trio.rounds[usize::from(old - 1)].node().commit_gseq() >= 1
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
        trio.rounds[usize::from(primary - 1)].node().commit_gseq() >= 1
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

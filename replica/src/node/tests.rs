//! The core's reactions, asserted action by action.

use super::*;
use crate::wire::Datagram;
use following::{NAK_HOLES_MAX, holes};
use ledger::Ledger;
use ledger::crypto::{Hash32, SecretKey};
use ledger::keys::SingleMachineKey;
use ledger::operator::{OperatorAction, OperatorRecord, OperatorRole};
use ledger::store::memory::MemBackend;
use ledger::store::record::SignedEvent;
use ledger::store::{LogStore, SEGMENT_ENTRIES_DEFAULT};
use workload::{SIMULATION_START_MS, SimMachine};

/// A log for the node to read: the store's rules over the memory backend.
struct TestLog(Ledger<MemBackend>);

impl TestLog {
    fn new() -> TestLog {
        let store = LogStore::with_backend(MemBackend::new(), SEGMENT_ENTRIES_DEFAULT).unwrap();
        TestLog(Ledger::with_store(store).unwrap())
    }

    fn append_events(
        &mut self,
        epoch: u64,
        at_ms: i64,
        events: &[SignedEvent],
        keys: &SingleMachineKey,
    ) {
        self.0.append_events(epoch, at_ms, events, keys).unwrap();
    }

    /// Appends what a primary proposed (events and operator records).
    fn append(&mut self, epoch: u64, entries: &[Proposed], keys: &SingleMachineKey) {
        let outcome = self.0.append(epoch, 0, entries, keys).unwrap();
        assert!(
            outcome
                .results
                .iter()
                .all(|r| matches!(r, ledger::store::Appended::New { .. })),
            "{:?}",
            outcome.results
        );
    }

    fn append_marker(&mut self, epoch: u64, at_ms: i64, primary: &str) -> Result<(), String> {
        self.0
            .append_marker(epoch, at_ms, primary)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn append_replicated(
        &mut self,
        records: &[Vec<u8>],
        keys: &SingleMachineKey,
    ) -> Result<(), String> {
        let records = decoded(records);
        self.0
            .append_replicated(&records, keys)
            .map_err(|e| e.to_string())
    }

    /// Record bytes `from..=to`.
    fn records(&self, from: u64, to: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        self.0
            .store()
            .for_each_record(from, to, |_, record| {
                out.push(record.to_vec());
                Ok(true)
            })
            .unwrap();
        out
    }

    /// A follower's copy of this log.
    fn copy(&self) -> TestLog {
        let mut copy = TestLog::new();
        let records = decoded(&self.records(1, self.tip().gseq));
        let keys = self.keys();
        copy.0.append_replicated(&records, &keys).unwrap();
        copy
    }

    fn keys(&self) -> SingleMachineKey {
        machine_events(0).1
    }
}

fn decoded(records: &[Vec<u8>]) -> Vec<ReplicatedRecord> {
    records
        .iter()
        .map(|r| ReplicatedRecord::decode(r.clone()).unwrap())
        .collect()
}

impl LogView for TestLog {
    fn tip(&self) -> Tip {
        let head = self.0.store().head();
        Tip {
            gseq: head.gseq,
            hash: head.hash,
            epoch: head.epoch,
        }
    }

    fn entry_meta(&self, gseq: u64) -> Option<(Hash32, u64)> {
        let entry = self.0.store().get(gseq).ok().flatten()?;
        Some((entry.hash, entry.body.epoch))
    }
}

fn config(id: NodeId) -> NodeConfig {
    NodeConfig::standard(id)
}

/// A datagram to every replica (what a primary streams, a candidate asks);
/// see [`to`] for one addressed to a node.
fn datagram(
    sender: NodeId,
    epoch: u64,
    packet_seq: u64,
    commit_gseq: u64,
    message: Message,
) -> Datagram {
    Datagram {
        cluster_id: 1,
        sender,
        receiver: crate::wire::RECEIVER_ALL,
        epoch,
        incarnation: 1,
        packet_seq,
        commit_gseq,
        message,
    }
}

/// `datagram` addressed to `receiver` (replies and repairs must be).
fn to(receiver: NodeId, datagram: Datagram) -> Datagram {
    Datagram {
        receiver,
        ..datagram
    }
}

fn sends(actions: &[Action]) -> Vec<(Target, Message)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { to, message, .. } => Some((*to, message.clone())),
            _ => None,
        })
        .collect()
}

/// Elects node 1 in epoch 1 and returns it with its log holding the marker.
fn elected_primary() -> (Node, TestLog) {
    let mut node = Node::new(config(1), Restart::default(), 7, 0);
    let mut log = TestLog::new();
    let actions = node.tick(1_000, &log);
    assert_eq!(
        sends(&actions),
        [(
            Target::All,
            Message::PreVoteRequest {
                last_gseq: 0,
                last_epoch: 0
            }
        )]
    );
    let actions = node.receive(
        1_001,
        to(
            1,
            datagram(
                2,
                1,
                1,
                0,
                Message::PreVoteReply {
                    granted: true,
                    candidate: 1,
                    proposed_epoch: 1,
                },
            ),
        ),
        &log,
    );
    assert!(actions.contains(&Action::PersistVote {
        epoch: 1,
        voted_for: Some(1)
    }));
    assert_eq!(node.role(), Role::Candidate);
    assert_eq!(
        sends(&actions),
        [(
            Target::All,
            Message::VoteRequest {
                last_gseq: 0,
                last_epoch: 0
            }
        )]
    );
    let actions = node.receive(
        1_002,
        to(
            1,
            datagram(
                3,
                1,
                1,
                0,
                Message::VoteReply {
                    granted: true,
                    candidate: 1,
                    epoch: 1,
                },
            ),
        ),
        &log,
    );
    assert!(actions.contains(&Action::AppendMarker { epoch: 1 }));
    assert_eq!(node.role(), Role::Primary);
    assert!(!node.accepts_writes(), "not before the marker is stored");
    log.append_marker(1, 0, "replica-1").unwrap();
    let actions = node.on_local_append(&log);
    assert_eq!(
        actions,
        [Action::Replicate {
            to: Target::All,
            from_gseq: 1,
            to_gseq: 1,
            epoch: 1,
            commit_gseq: 0,
            catchup: None,
        }]
    );
    assert!(node.accepts_writes());
    (node, log)
}

#[test]
fn a_priority_node_wins_an_election_after_a_pre_vote() {
    elected_primary();
}

#[test]
fn the_sync_replica_never_stands() {
    let mut node = Node::new(config(2), Restart::default(), 7, 0);
    let log = TestLog::new();
    for now in (0..10_000).step_by(100) {
        assert!(sends(&node.tick(now, &log)).is_empty());
    }
    assert_eq!(node.role(), Role::Follower);
}

#[test]
fn a_voter_grants_one_vote_per_epoch_and_only_to_an_up_to_date_log() {
    let mut voter = Node::new(config(2), Restart::default(), 7, 0);
    let mut log = TestLog::new();
    log.append_marker(3, 0, "replica-1").unwrap();
    // Candidate 1 with an older log (epoch 2 < 3) is refused.
    let actions = voter.receive(
        10,
        datagram(
            1,
            4,
            1,
            0,
            Message::VoteRequest {
                last_gseq: 5,
                last_epoch: 2,
            },
        ),
        &log,
    );
    assert_eq!(
        sends(&actions),
        [(
            Target::Node(1),
            Message::VoteReply {
                granted: false,
                candidate: 1,
                epoch: 4
            }
        )]
    );
    // Candidate 3 with an up-to-date log gets the vote, persisted first.
    let actions = voter.receive(
        11,
        datagram(
            3,
            4,
            1,
            0,
            Message::VoteRequest {
                last_gseq: 1,
                last_epoch: 3,
            },
        ),
        &log,
    );
    let persist = actions
        .iter()
        .position(|a| {
            *a == Action::PersistVote {
                epoch: 4,
                voted_for: Some(3),
            }
        })
        .unwrap();
    let reply = actions
        .iter()
        .position(|a| {
            matches!(
                a,
                Action::Send {
                    message: Message::VoteReply {
                        granted: true,
                        candidate: 3,
                        epoch: 4
                    },
                    ..
                }
            )
        })
        .unwrap();
    assert!(persist < reply, "the vote is durable before it is sent");
    // Candidate 1, now up to date, asks in the same epoch: refused.
    let actions = voter.receive(
        12,
        datagram(
            1,
            4,
            2,
            0,
            Message::VoteRequest {
                last_gseq: 1,
                last_epoch: 3,
            },
        ),
        &log,
    );
    assert_eq!(
        sends(&actions),
        [(
            Target::Node(1),
            Message::VoteReply {
                granted: false,
                candidate: 1,
                epoch: 4
            }
        )]
    );
    // A restart keeps the vote.
    let mut restarted = Node::new(
        config(2),
        Restart {
            vote: PersistedVote {
                epoch: 4,
                voted_for: Some(3),
            },
            commit_hint: 0,
            repair_until: None,
            repair_epoch: None,
        },
        8,
        0,
    );
    let actions = restarted.receive(
        13,
        datagram(
            1,
            4,
            3,
            0,
            Message::VoteRequest {
                last_gseq: 1,
                last_epoch: 3,
            },
        ),
        &log,
    );
    assert_eq!(
        sends(&actions),
        [(
            Target::Node(1),
            Message::VoteReply {
                granted: false,
                candidate: 1,
                epoch: 4
            }
        )]
    );
}

fn machine_events(count: usize) -> (Vec<SignedEvent>, SingleMachineKey) {
    let key = SecretKey::from_bytes([1; 32]);
    let id = ledger::MachineId::numbered(1);
    let mut sim = SimMachine::new(id.clone(), &key, 3, SIMULATION_START_MS);
    let mut events = Vec::new();
    while events.len() < count {
        sim.step_into(&mut events);
    }
    events.truncate(count);
    (events, SingleMachineKey::new(id, &key))
}

/// Machine events as a primary proposes them.
fn proposed(events: &[SignedEvent]) -> Vec<Proposed> {
    events.iter().cloned().map(Proposed::Event).collect()
}

/// An elected primary that proposed `count` events of one machine and
/// appended them (gseqs 2 onwards, after its epoch's marker), with the
/// machine's keys.
fn primary_with_events(count: usize) -> (Node, TestLog, SingleMachineKey) {
    let (mut primary, mut log) = elected_primary();
    let (events, keys) = machine_events(count);
    primary.propose(proposed(&events)).unwrap();
    log.append_events(1, 0, &events, &keys);
    (primary, log, keys)
}

/// An account and a command for machine 1, as operators' records.
fn operator_records() -> Vec<Proposed> {
    let password_hash = ledger::admin::hash_password(
        "s3cret-pass!",
        &[3; 16],
        ledger::admin::PasswordParams::Light,
    )
    .unwrap();
    let record = |action| {
        Proposed::Operator(OperatorRecord {
            operator: "vendctl".into(),
            at_ms: 1_000,
            action,
        })
    };
    vec![
        record(OperatorAction::UserAdded {
            name: "kim".into(),
            role: OperatorRole::Admin,
            password_hash,
        }),
        record(OperatorAction::CommandRequested {
            machine: ledger::MachineId::numbered(1),
            command_id: 1,
            action: ledger::rules::RemoteAction::SetPrice {
                slot: ledger::SlotId(1),
                price: 600,
            },
        }),
    ]
}

#[test]
fn commit_needs_one_follower_and_an_entry_of_this_epoch() {
    let (mut primary, mut log) = elected_primary();
    let (events, keys) = machine_events(3);
    let actions = primary.propose(proposed(&events)).unwrap();
    assert_eq!(
        actions,
        [Action::Append {
            epoch: 1,
            entries: proposed(&events)
        }]
    );
    log.append_events(1, 0, &events, &keys);
    let actions = primary.on_local_append(&log);
    assert_eq!(
        actions,
        [Action::Replicate {
            to: Target::All,
            from_gseq: 2,
            to_gseq: 4,
            epoch: 1,
            commit_gseq: 0,
            catchup: None,
        }]
    );
    let (hash_3, _) = log.entry_meta(3).unwrap();
    let actions = primary.receive(
        2_000,
        to(
            1,
            datagram(
                2,
                1,
                5,
                0,
                Message::Ack {
                    tip_gseq: 3,
                    tip_hash: hash_3,
                },
            ),
        ),
        &log,
    );
    assert_eq!(actions, [Action::CommitAdvanced { commit_gseq: 3 }]);
    assert_eq!(primary.commit_gseq(), 3);
    // A wrong hash does not count and asks for a repair instead.
    let actions = primary.receive(
        2_001,
        to(
            1,
            datagram(
                3,
                1,
                5,
                0,
                Message::Ack {
                    tip_gseq: 4,
                    tip_hash: [9; 32],
                },
            ),
        ),
        &log,
    );
    assert_eq!(
        actions,
        [Action::Replicate {
            to: Target::Node(3),
            from_gseq: 4,
            to_gseq: 4,
            epoch: 1,
            commit_gseq: 3,
            catchup: None,
        }]
    );
    assert_eq!(primary.commit_gseq(), 3);
}

#[test]
fn a_follower_appends_buffers_naks_and_acknowledges_after_writing() {
    let (_, primary_log, keys) = primary_with_events(6);
    let records = primary_log.records(1, 7);

    // A NAK delay, as a network that reorders datagrams may want.
    let delayed = NodeConfig {
        nak_delay_ms: 20,
        ..config(2)
    };
    let mut follower = Node::new(delayed, Restart::default(), 9, 0);
    let mut log = TestLog::new();
    // Records 1-2 arrive: written, then acknowledged.
    let actions = follower.receive(
        10,
        datagram(
            1,
            1,
            1,
            0,
            Message::Append {
                first_gseq: 1,
                records: records[0..2].to_vec(),
            },
        ),
        &log,
    );
    assert_eq!(follower.leader(), Some(1));
    let write = actions
        .iter()
        .position(|a| matches!(a, Action::AppendReplicated { records } if records.len() == 2))
        .unwrap();
    let ack = actions
        .iter()
        .position(|a| {
            matches!(
                a,
                Action::Send {
                    message: Message::Ack { tip_gseq: 2, .. },
                    ..
                }
            )
        })
        .unwrap();
    assert!(write < ack, "acknowledged only after the write");
    log.append_replicated(&records[0..2], &keys).unwrap();
    // Records 5-7 arrive before 3-4: buffered, no write, NAK after the delay.
    let actions = follower.receive(
        11,
        datagram(
            1,
            1,
            2,
            0,
            Message::Append {
                first_gseq: 5,
                records: records[4..7].to_vec(),
            },
        ),
        &log,
    );
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::AppendReplicated { .. }))
    );
    assert!(
        sends(&follower.tick(12, &log)).is_empty(),
        "no NAK before the delay"
    );
    // The NAK asks for the hole only: 5-7 wait in the buffer.
    let actions = follower.tick(40, &log);
    assert_eq!(
        sends(&actions),
        [(
            Target::Node(1),
            Message::Nak {
                from_gseq: 3,
                to_gseq: 4
            }
        )]
    );
    // The retransmission fills the gap and the buffered records follow.
    let actions = follower.receive(
        45,
        datagram(
            1,
            1,
            3,
            4,
            Message::Append {
                first_gseq: 3,
                records: records[2..4].to_vec(),
            },
        ),
        &log,
    );
    let written: Vec<ReplicatedRecord> = actions
        .iter()
        .find_map(|a| match a {
            Action::AppendReplicated { records } => Some(records.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(written, decoded(&records[2..7]));
    assert!(actions.contains(&Action::CommitAdvanced { commit_gseq: 4 }));
}

/// What a follower sends in `actions`: its NAKs as (from, to).
fn naks(actions: &[Action]) -> Vec<(u64, u64)> {
    sends(actions)
        .into_iter()
        .filter_map(|(_, message)| match message {
            Message::Nak { from_gseq, to_gseq } => Some((from_gseq, to_gseq)),
            _ => None,
        })
        .collect()
}

/// A follower of node 1 in epoch 1 holding records 1-2 of `records`.
fn follower_holding_two(records: &[Vec<u8>], keys: &SingleMachineKey) -> (Node, TestLog) {
    let mut follower = Node::new(config(2), Restart::default(), 9, 0);
    let mut log = TestLog::new();
    let append = Message::Append {
        first_gseq: 1,
        records: records[0..2].to_vec(),
    };
    follower.receive(10, datagram(1, 1, 1, 0, append), &log);
    log.append_replicated(&records[0..2], keys).unwrap();
    (follower, log)
}

/// Issue 12: each hole is asked for the moment it is found, and has its
/// own retry: a lost repair delays only its own hole. One timer for all
/// holes (the old way) waited 20 ms before asking, and every repair that
/// did not come back doubled the wait of every later hole.
#[test]
fn each_hole_is_naked_at_once_and_retried_on_its_own() {
    let (_, primary_log, keys) = primary_with_events(15);
    let records = primary_log.records(1, 16);
    let (mut follower, log) = follower_holding_two(&records, &keys);
    let mut packet = 1;
    let mut append = |follower: &mut Node, at_ms, first: u64, log: &TestLog| {
        packet += 1;
        let range = (first - 1) as usize..(first + 1) as usize;
        let message = Message::Append {
            first_gseq: first,
            records: records[range].to_vec(),
        };
        follower.receive(at_ms, datagram(1, 1, packet, 0, message), log)
    };
    // 5-6, 9-10 and 13-14 arrive; 3-4, 7-8 and 11-12 were lost: each hole
    // is asked for as it shows, not after a delay.
    assert_eq!(naks(&append(&mut follower, 11, 5, &log)), [(3, 4)]);
    assert_eq!(naks(&append(&mut follower, 12, 9, &log)), [(7, 8)]);
    assert_eq!(naks(&append(&mut follower, 13, 13, &log)), [(11, 12)]);
    assert!(naks(&follower.tick(15, &log)).is_empty(), "asked already");
    // The repair of 7-8 arrives, that of 3-4 does not: the primary answers
    // NAKs in order, so the one for 3-4 (or its answer) was lost, and it
    // is asked again at once; 11-12 was asked later and is still awaited.
    let actions = append(&mut follower, 20, 7, &log);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::AppendReplicated { .. }))
    );
    assert_eq!(naks(&follower.tick(21, &log)), [(3, 4)]);
    assert!(naks(&follower.tick(60, &log)).is_empty());
    assert_eq!(following::NAK_RETRY_MS_MIN, 200);
    // Nothing answers 11-12: its own timer (`NAK_RETRY_MS_MIN` before any
    // repair was timed) asks again, without waiting on the other holes.
    assert!(naks(&follower.tick(212, &log)).is_empty());
    let retried = naks(&follower.tick(213, &log));
    assert_eq!(retried, [(11, 12)]);
    assert_eq!(follower.counters().naks_sent, 5);
}

/// Found by the simulation's storage faults: a follower whose truncation
/// of a stale suffix fails must not commit the stale entries it still
/// holds, although it had verified the primary's records in their place.
#[test]
fn a_failed_truncation_commits_nothing_it_concluded_from_it() {
    let (events, keys) = machine_events(4);
    let mut stale = TestLog::new();
    stale.append_marker(1, 0, "replica-1").unwrap();
    stale.append_events(1, 0, &events[..2], &keys);
    let mut fresh = TestLog::new();
    fresh.append_marker(1, 0, "replica-1").unwrap();
    fresh.append_marker(2, 0, "replica-3").unwrap();
    let restart = Restart {
        vote: PersistedVote {
            epoch: 1,
            voted_for: Some(1),
        },
        commit_hint: 1,
        repair_until: None,
        repair_epoch: None,
    };
    let mut node = Node::new(config(1), restart, 4, 0);
    let append = Message::Append {
        first_gseq: 2,
        records: fresh.records(2, 2),
    };
    let actions = node.receive(10, datagram(3, 2, 1, 2, append), &stale);
    assert!(actions.contains(&Action::TruncateAfter { gseq: 1 }));
    assert!(actions.contains(&Action::CommitAdvanced { commit_gseq: 2 }));
    // The truncation fails: nothing of that datagram happened.
    node.on_write_failed(&stale);
    assert_eq!(node.commit_gseq(), 1);
    node.assert_invariants(&stale);
    // The primary's heartbeat names its gseq 2, which differs from ours.
    let (hash_2, _) = fresh.entry_meta(2).unwrap();
    let heartbeat = Message::Heartbeat {
        tip_gseq: 2,
        tip_hash: hash_2,
    };
    let actions = node.receive(20, datagram(3, 2, 2, 2, heartbeat), &stale);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::CommitAdvanced { .. })),
        "{actions:?}"
    );
    assert_eq!(node.commit_gseq(), 1);
}

#[test]
fn a_returning_primary_truncates_its_uncommitted_suffix() {
    // Node 1 holds epoch 1's marker and two entries nobody else stored.
    let (events, keys) = machine_events(4);
    let mut stale = TestLog::new();
    stale.append_marker(1, 0, "replica-1").unwrap();
    stale.append_events(1, 0, &events[..2], &keys);
    // The new primary (node 3, epoch 2) has the marker of epoch 1, then its own.
    let mut fresh = TestLog::new();
    fresh.append_marker(1, 0, "replica-1").unwrap();
    fresh.append_marker(2, 0, "replica-3").unwrap();
    let mut node = Node::new(
        config(1),
        Restart {
            vote: PersistedVote {
                epoch: 1,
                voted_for: Some(1),
            },
            commit_hint: 1,
            repair_until: None,
            repair_epoch: None,
        },
        4,
        0,
    );
    let actions = node.receive(
        10,
        datagram(
            3,
            2,
            1,
            2,
            Message::Append {
                first_gseq: 2,
                records: fresh.records(2, 2),
            },
        ),
        &stale,
    );
    assert!(actions.contains(&Action::PersistVote {
        epoch: 2,
        voted_for: None
    }));
    let truncate = actions
        .iter()
        .position(|a| *a == Action::TruncateAfter { gseq: 1 })
        .unwrap();
    let write = actions
        .iter()
        .position(|a| matches!(a, Action::AppendReplicated { .. }))
        .unwrap();
    assert!(truncate < write);
    assert_eq!(node.counters().records_truncated, 2);
}

#[test]
fn older_epochs_are_fenced_and_told_about_the_newer_one() {
    let mut node = Node::new(
        config(2),
        Restart {
            vote: PersistedVote {
                epoch: 5,
                voted_for: None,
            },
            commit_hint: 0,
            repair_until: None,
            repair_epoch: None,
        },
        4,
        0,
    );
    let log = TestLog::new();
    let actions = node.receive(
        10,
        datagram(
            1,
            4,
            1,
            0,
            Message::Heartbeat {
                tip_gseq: 9,
                tip_hash: [0; 32],
            },
        ),
        &log,
    );
    assert_eq!(node.counters().stale_epoch_dropped, 1);
    assert_eq!(node.leader(), None);
    assert!(matches!(
        actions.as_slice(),
        [Action::Send {
            to: Target::Node(1),
            epoch: 5,
            message: Message::Ack { .. },
            ..
        }]
    ));
    // Replays are dropped and counted.
    let again = node.receive(
        11,
        datagram(
            1,
            4,
            1,
            0,
            Message::Heartbeat {
                tip_gseq: 9,
                tip_hash: [0; 32],
            },
        ),
        &log,
    );
    assert!(again.is_empty());
    assert_eq!(node.counters().replayed_dropped, 1);
}

#[test]
fn a_primary_that_hears_nobody_steps_down() {
    let (mut primary, log) = elected_primary();
    let mut stepped_down = false;
    for now in (1_100..3_000).step_by(50) {
        let actions = primary.tick(now, &log);
        if actions.iter().any(|a| {
            matches!(
                a,
                Action::RoleChanged {
                    role: Role::Follower,
                    ..
                }
            )
        }) {
            stepped_down = true;
            break;
        }
    }
    assert!(stepped_down);
    assert!(primary.propose(Vec::new()).is_err());
    assert!(primary.propose(operator_records()).is_err());
}

/// The primary dies after the sync replica (never stands) stored entries the
/// backup lacks: the sync refuses the backup's vote as it must, but sends it
/// the missing records, and then the backup is up to date and can win.
#[test]
fn a_voter_with_more_entries_catches_a_lagging_candidate_up() {
    let (_, full, keys) = primary_with_events(6);
    // The sync (node 2) has all 7 records; the backup (node 3) only 1-3.
    let mut sync = Node::new(config(2), Restart::default(), 11, 0);
    let sync_log = full.copy();
    let mut backup = Node::new(config(3), Restart::default(), 12, 0);
    let mut backup_log = TestLog::new();
    backup_log
        .append_replicated(&full.records(1, 3), &keys)
        .unwrap();

    let ask = |packet_seq, last_gseq, commit_gseq| {
        datagram(
            3,
            2,
            packet_seq,
            commit_gseq,
            Message::PreVoteRequest {
                last_gseq,
                last_epoch: 1,
            },
        )
    };
    let actions = sync.receive(5_000, ask(1, 3, 1), &sync_log);
    assert_eq!(
        sends(&actions),
        [(
            Target::Node(3),
            Message::PreVoteReply {
                granted: false,
                candidate: 3,
                proposed_epoch: 2
            }
        )]
    );
    let source = CatchupSource {
        last_gseq: 7,
        last_epoch: 1,
    };
    // The backup's gseq 3 is of epoch 1 here too: the logs agree up to
    // it, so the catch-up starts right after.
    assert!(actions.contains(&Action::Replicate {
        to: Target::Node(3),
        from_gseq: 4,
        to_gseq: 7,
        epoch: 0,
        commit_gseq: 0,
        catchup: Some(source),
    }));
    // Asked again within a heartbeat: no second copy.
    let again = sync.receive(5_001, ask(2, 3, 1), &sync_log);
    assert!(!again.iter().any(|a| matches!(a, Action::Replicate { .. })));

    // The backup takes 4-7 (2-3 it already holds, same hashes).
    let catchup = |packet_seq, first_gseq: u64, records| {
        let message = Message::Catchup {
            first_gseq,
            records,
            last_gseq: source.last_gseq,
            last_epoch: source.last_epoch,
        };
        to(3, datagram(2, 0, packet_seq, 0, message))
    };
    // Out of order first: 6-7 wait in the reorder buffer for 2-5.
    let actions = backup.receive(5_002, catchup(3, 6, full.records(6, 7)), &backup_log);
    assert!(actions.is_empty(), "{actions:?}");
    let actions = backup.receive(5_003, catchup(4, 2, full.records(2, 5)), &backup_log);
    assert_eq!(
        actions,
        [Action::AppendReplicated {
            records: decoded(&full.records(4, 7))
        }]
    );
    backup_log
        .append_replicated(&full.records(4, 7), &keys)
        .unwrap();
    assert_eq!(backup.counters().catchup_records_taken, 4);

    // Now up to date, the backup gets the sync's pre-vote.
    let actions = sync.receive(5_100, ask(3, 7, 1), &sync_log);
    assert_eq!(
        sends(&actions),
        [(
            Target::Node(3),
            Message::PreVoteReply {
                granted: true,
                candidate: 3,
                proposed_epoch: 2
            }
        )]
    );
}

#[test]
fn a_catchup_is_ignored_while_a_primary_is_alive_or_from_a_shorter_log() {
    let (_, full, keys) = primary_with_events(4);
    let mut node = Node::new(config(3), Restart::default(), 13, 0);
    let mut log = TestLog::new();
    log.append_replicated(&full.records(1, 2), &keys).unwrap();
    let catchup = |packet_seq, last_gseq| {
        let message = Message::Catchup {
            first_gseq: 3,
            records: full.records(3, 5),
            last_gseq,
            last_epoch: 1,
        };
        to(3, datagram(2, 0, packet_seq, 0, message))
    };
    // A source that claims no more than we hold is not worth taking.
    assert!(node.receive(10, catchup(1, 2), &log).is_empty());
    // A live primary streams to us itself: a voter's copy is not needed.
    node.receive(
        20,
        datagram(
            1,
            1,
            1,
            2,
            Message::Heartbeat {
                tip_gseq: 2,
                tip_hash: log.entry_meta(2).unwrap().0,
            },
        ),
        &log,
    );
    let actions = node.receive(30, catchup(2, 5), &log);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::AppendReplicated { .. })),
        "{actions:?}"
    );
    assert_eq!(node.counters().catchup_records_taken, 0);
}

#[test]
fn a_nak_round_asks_for_each_hole_and_not_for_what_is_buffered() {
    let held = |gseqs: &[u64]| -> BTreeMap<u64, Vec<u8>> {
        gseqs.iter().map(|&g| (g, Vec::new())).collect()
    };
    // Tip 2; 5-6 and 9 wait; the heartbeat said 12.
    assert_eq!(holes(&held(&[5, 6, 9]), 3, 12), [(3, 4), (7, 8), (10, 12)]);
    // The buffer ends the wanted range: no trailing hole.
    assert_eq!(holes(&held(&[4, 5]), 3, 5), [(3, 3)]);
    assert_eq!(holes(&held(&[]), 3, 7), [(3, 7)]);
    // Bounded: every other record missing yields at most NAK_HOLES_MAX.
    let every_other: Vec<u64> = (1..=200).map(|n| 2 * n).collect();
    let ranges = holes(&held(&every_other), 1, 400);
    assert_eq!(ranges.len(), NAK_HOLES_MAX);
    assert_eq!(ranges[0], (1, 1));
    let last = 2 * NAK_HOLES_MAX as u64 - 1;
    assert_eq!(ranges[NAK_HOLES_MAX - 1], (last, last));
}

/// A vote granted to candidate 1 and replayed to candidate 3 in the same
/// epoch must not count there, or two primaries could lead one epoch.
#[test]
fn a_granted_vote_replayed_to_another_candidate_elects_no_one() {
    // Replica 3 stands in epoch 1 (pre-vote granted by replica 1).
    let mut candidate = Node::new(config(3), Restart::default(), 9, 0);
    let log = TestLog::new();
    let ask = candidate.tick(2_000, &log);
    assert!(matches!(
        sends(&ask)[..],
        [(Target::All, Message::PreVoteRequest { .. })]
    ));
    let pre_vote = Message::PreVoteReply {
        granted: true,
        candidate: 3,
        proposed_epoch: 1,
    };
    candidate.receive(2_001, to(3, datagram(1, 1, 1, 0, pre_vote)), &log);
    assert_eq!(candidate.role(), Role::Candidate);
    // Replica 2 granted its vote of epoch 1 to replica 1; the grant is
    // captured and replayed to replica 3, as it was and re-addressed.
    let grant = Message::VoteReply {
        granted: true,
        candidate: 1,
        epoch: 1,
    };
    let as_captured = to(1, datagram(2, 1, 7, 0, grant.clone()));
    let actions = candidate.receive(2_002, as_captured, &log);
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(candidate.counters().misaddressed_dropped, 1);
    let readdressed = to(3, datagram(2, 1, 8, 0, grant));
    let actions = candidate.receive(2_003, readdressed, &log);
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(
        candidate.role(),
        Role::Candidate,
        "no majority from a replay"
    );
    // A pre-vote grant for another candidate does not count either.
    let mut other = Node::new(config(3), Restart::default(), 9, 0);
    other.tick(2_000, &log);
    let foreign = Message::PreVoteReply {
        granted: true,
        candidate: 1,
        proposed_epoch: 1,
    };
    other.receive(2_001, to(3, datagram(2, 1, 1, 0, foreign)), &log);
    assert_eq!(other.role(), Role::Follower);
}

/// Found in a repeated-kill run: a candidate more than one catch-up
/// segment behind was sent the same first segment (from its commit) again
/// and again, and no primary appeared. Each catch-up now continues from
/// what the candidate holds, so it crosses any distance segment by segment.
#[test]
fn a_candidate_far_behind_catches_up_segment_by_segment() {
    let (_, full, keys) = primary_with_events(20);
    let tip = full.tip().gseq;
    let small = |id| NodeConfig {
        repair_records_max: 4,
        ..config(id)
    };
    let mut sync = Node::new(small(2), Restart::default(), 11, 0);
    let sync_log = full.copy();
    let mut backup = Node::new(small(3), Restart::default(), 12, 0);
    let mut backup_log = TestLog::new();
    backup_log
        .append_replicated(&full.records(1, 2), &keys)
        .unwrap();
    let mut now = 5_000;
    let mut packet_seq = 1;
    let mut segments = Vec::new();
    while backup_log.tip().gseq < tip && segments.len() < 20 {
        // The backup asks (its commit stays 1 all along) ...
        let ask = Message::PreVoteRequest {
            last_gseq: backup_log.tip().gseq,
            last_epoch: backup_log.tip().epoch,
        };
        let actions = sync.receive(now, datagram(3, 2, packet_seq, 1, ask), &sync_log);
        let Some((from, to_gseq)) = actions.iter().find_map(|a| match a {
            Action::Replicate {
                from_gseq, to_gseq, ..
            } => Some((*from_gseq, *to_gseq)),
            _ => None,
        }) else {
            panic!("no catch-up sent: {actions:?}");
        };
        segments.push((from, to_gseq));
        // ... and takes the segment it was sent.
        let catchup = Message::Catchup {
            first_gseq: from,
            records: full.records(from, to_gseq),
            last_gseq: tip,
            last_epoch: 1,
        };
        let actions = backup.receive(
            now,
            to(3, datagram(2, 0, packet_seq, 0, catchup)),
            &backup_log,
        );
        for action in actions {
            if let Action::AppendReplicated { records } = action {
                let bytes: Vec<Vec<u8>> = records.into_iter().map(|r| r.into_bytes()).collect();
                backup_log.append_replicated(&bytes, &keys).unwrap();
            }
        }
        now += 100;
        packet_seq += 1;
    }
    assert_eq!(backup_log.tip(), full.tip(), "caught up: {segments:?}");
    assert_eq!(segments.first(), Some(&(3, 6)));
    assert!(
        segments.windows(2).all(|w| w[1].0 == w[0].1 + 1),
        "each segment continues the last: {segments:?}"
    );
}

/// Found by simulation seed 41114: a voter whose log ends below the
/// candidate's last gseq (a newer epoch's marker against an older epoch's
/// uncommitted suffix) sent its one-record segment, which was lost; it
/// then went on "walking" from past its own tip and sent nothing ever
/// again, and no primary appeared. A walk that runs past the voter's tip
/// starts over.
#[test]
fn a_lost_catchup_segment_past_the_voters_tip_is_sent_again() {
    let mut sync = Node::new(config(2), Restart::default(), 11, 0);
    let mut sync_log = TestLog::new();
    sync_log.append_marker(2, 1_000, "replica-3").unwrap();
    let ask = |packet_seq| {
        let message = Message::PreVoteRequest {
            last_gseq: 19,
            last_epoch: 1,
        };
        datagram(1, 1, packet_seq, 0, message)
    };
    let segment = |actions: &[Action]| {
        actions.iter().find_map(|a| match a {
            Action::Replicate {
                from_gseq, to_gseq, ..
            } => Some((*from_gseq, *to_gseq)),
            _ => None,
        })
    };
    let first = sync.receive(5_000, ask(1), &sync_log);
    assert_eq!(segment(&first), Some((1, 1)), "{first:?}");
    // The segment is lost; the candidate asks again after a heartbeat.
    let again = sync.receive(5_000 + 100, ask(2), &sync_log);
    assert_eq!(segment(&again), Some((1, 1)), "sent again: {again:?}");
}

/// Operator records take the machine events' path: proposed by the primary
/// only, appended in its epoch, streamed, and committed by the same rule.
#[test]
fn operator_records_are_proposed_streamed_and_committed_like_events() {
    let (mut primary, mut log) = elected_primary();
    let (events, keys) = machine_events(1);
    let mut entries = proposed(&events);
    entries.extend(operator_records());
    let actions = primary.propose(entries.clone()).unwrap();
    assert_eq!(
        actions,
        [Action::Append {
            epoch: 1,
            entries: entries.clone()
        }]
    );
    log.append(1, &entries, &keys);
    assert_eq!(
        primary.on_local_append(&log),
        [Action::Replicate {
            to: Target::All,
            from_gseq: 2,
            to_gseq: 4,
            epoch: 1,
            commit_gseq: 0,
            catchup: None,
        }]
    );
    // A follower takes them as it takes events, and its projection has them.
    let mut follower = Node::new(config(2), Restart::default(), 9, 0);
    let mut follower_log = TestLog::new();
    let append = Message::Append {
        first_gseq: 1,
        records: log.records(1, 4),
    };
    let actions = follower.receive(10, datagram(1, 1, 1, 0, append), &follower_log);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::AppendReplicated { records } if records.len() == 4)),
        "{actions:?}"
    );
    follower_log
        .append_replicated(&log.records(1, 4), &keys)
        .unwrap();
    let operators = &follower_log.0.projection().operators;
    assert!(operators.users.contains_key("kim"));
    assert_eq!(
        operators.last_command_id(&ledger::MachineId::numbered(1)),
        1
    );
    let (hash_4, _) = log.entry_meta(4).unwrap();
    let ack = Message::Ack {
        tip_gseq: 4,
        tip_hash: hash_4,
    };
    let actions = primary.receive(2_000, to(1, datagram(2, 1, 5, 0, ack)), &log);
    assert_eq!(actions, [Action::CommitAdvanced { commit_gseq: 4 }]);
}

/// Only the primary of an open epoch proposes: a follower refuses operator
/// records and names the primary it follows, and an Append of an older
/// epoch (a deposed primary's operator record) is fenced.
#[test]
fn operator_records_are_fenced_like_events() {
    let mut follower = Node::new(
        config(2),
        Restart {
            vote: PersistedVote {
                epoch: 5,
                voted_for: None,
            },
            commit_hint: 0,
            repair_until: None,
            repair_epoch: None,
        },
        4,
        0,
    );
    let log = TestLog::new();
    let heartbeat = Message::Heartbeat {
        tip_gseq: 0,
        tip_hash: [0; 32],
    };
    follower.receive(10, datagram(3, 5, 1, 0, heartbeat), &log);
    assert_eq!(
        follower.propose(operator_records()),
        Err(NotPrimary::Follow(Some(3)))
    );
    // A deposed primary of epoch 4 still streams an operator record.
    let mut deposed_log = TestLog::new();
    deposed_log.append_marker(4, 0, "replica-1").unwrap();
    deposed_log.append(4, &operator_records(), &log.keys());
    let append = Message::Append {
        first_gseq: 1,
        records: deposed_log.records(1, 3),
    };
    let actions = follower.receive(20, datagram(1, 4, 1, 0, append), &log);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::AppendReplicated { .. })),
        "{actions:?}"
    );
    assert_eq!(follower.counters().stale_epoch_dropped, 1);
}

/// A former primary's operator records that were never committed are
/// truncated like its events when it rejoins, and its projection forgets
/// them (the account and the command never happened).
#[test]
fn uncommitted_operator_records_are_truncated() {
    let keys = machine_events(0).1;
    let mut stale = TestLog::new();
    stale.append_marker(1, 0, "replica-1").unwrap();
    stale.append(1, &operator_records(), &keys);
    assert!(stale.0.projection().operators.users.contains_key("kim"));
    let mut fresh = TestLog::new();
    fresh.append_marker(1, 0, "replica-1").unwrap();
    fresh.append_marker(2, 0, "replica-3").unwrap();
    let restart = Restart {
        vote: PersistedVote {
            epoch: 1,
            voted_for: Some(1),
        },
        commit_hint: 1,
        repair_until: None,
        repair_epoch: None,
    };
    let mut node = Node::new(config(1), restart, 4, 0);
    let append = Message::Append {
        first_gseq: 2,
        records: fresh.records(2, 2),
    };
    let actions = node.receive(10, datagram(3, 2, 1, 2, append), &stale);
    assert!(
        actions.contains(&Action::TruncateAfter { gseq: 1 }),
        "{actions:?}"
    );
    assert_eq!(node.counters().records_truncated, 2);
    stale.0.truncate_after(1).unwrap();
    stale
        .append_replicated(&fresh.records(2, 2), &keys)
        .unwrap();
    let operators = &stale.0.projection().operators;
    assert!(operators.users.is_empty());
    assert!(operators.commands.is_empty());
}

/// A replica repairing a damaged log (its log cut back to gseq 1, while it
/// had promised gseq 3 of epoch 2) judges a candidate by its promise: a
/// candidate whose log ends before the promise gets no vote, one that
/// reaches it does. Without the promised entry's epoch it does not answer
/// at all. (Found by the simulation: two damaged replicas that never vote
/// kept a cluster without a primary for good.)
#[test]
fn a_repairing_replica_votes_by_what_it_promised() {
    let mut damaged = TestLog::new();
    damaged.append_marker(1, 0, "replica-1").unwrap();
    let repairing = |repair_epoch| Restart {
        vote: PersistedVote {
            epoch: 2,
            voted_for: None,
        },
        commit_hint: 1,
        repair_until: Some(3),
        repair_epoch,
    };
    let ask = |node: &mut Node, seq, last_epoch, last_gseq| {
        let request = Message::VoteRequest {
            last_gseq,
            last_epoch,
        };
        node.receive(1_000, datagram(3, 3, seq, 1, request), &damaged)
    };
    let granted = |actions: &[Action]| {
        actions.iter().find_map(|a| match a {
            Action::Send {
                message: Message::VoteReply { granted, .. },
                ..
            } => Some(*granted),
            _ => None,
        })
    };
    // The promise names its epoch: a candidate short of it is refused
    // (though it is ahead of the damaged log), one holding it is granted.
    let mut node = Node::new(config(2), repairing(Some(2)), 4, 0);
    let behind = ask(&mut node, 1, 2, 2);
    assert_eq!(granted(&behind), Some(false), "{behind:?}");
    assert!(
        !behind.iter().any(|a| matches!(
            a,
            Action::Send {
                message: Message::Catchup { .. },
                ..
            }
        )),
        "a damaged log sends no catch-up: {behind:?}"
    );
    let mut node = Node::new(config(2), repairing(Some(2)), 4, 0);
    let holding = ask(&mut node, 1, 2, 3);
    assert_eq!(granted(&holding), Some(true), "{holding:?}");
    assert!(holding.contains(&Action::PersistVote {
        epoch: 3,
        voted_for: Some(3)
    }));
    assert_eq!(node.repairing_until(), Some(3), "a vote ends no repair");
    let mut node = Node::new(config(2), repairing(Some(2)), 4, 0);
    assert_eq!(
        granted(&ask(&mut node, 1, 3, 2)),
        Some(true),
        "a newer epoch"
    );
    // An old promise without the epoch: no answer, counted.
    let mut node = Node::new(config(2), repairing(None), 4, 0);
    assert!(ask(&mut node, 1, 9, 99).is_empty());
    assert_eq!(node.counters().vote_requests_ignored_repairing, 1);
}

/// A refused pre-vote (the voter still remembers a primary that just died)
/// is asked again after a heartbeat, not after a whole election timeout:
/// the new primary comes as soon as the voters' memory of the old expires.
#[test]
fn a_refused_pre_vote_is_asked_again_after_a_heartbeat() {
    let mut node = Node::new(config(1), Restart::default(), 7, 0);
    let log = TestLog::new();
    let ask = node.tick(1_000, &log);
    assert!(matches!(
        sends(&ask)[..],
        [(Target::All, Message::PreVoteRequest { .. })]
    ));
    let refusal = Message::PreVoteReply {
        granted: false,
        candidate: 1,
        proposed_epoch: 1,
    };
    node.receive(1_001, to(1, datagram(2, 0, 1, 0, refusal)), &log);
    let heartbeat = node.config.heartbeat_ms;
    assert!(node.tick(1_000 + heartbeat - 1, &log).is_empty());
    let again = node.tick(1_001 + heartbeat, &log);
    assert!(
        matches!(
            sends(&again)[..],
            [(Target::All, Message::PreVoteRequest { .. })]
        ),
        "{again:?}"
    );
    assert!(
        heartbeat < node.config.election_timeout_min_ms,
        "sooner than a timeout"
    );
}

/// `TestLog` with only its first `synced` entries durable, as a primary's
/// log is between streaming a round's records and syncing them.
struct SyncedTo<'a>(&'a TestLog, u64);

impl LogView for SyncedTo<'_> {
    fn tip(&self) -> Tip {
        self.0.tip()
    }

    fn entry_meta(&self, gseq: u64) -> Option<(Hash32, u64)> {
        self.0.entry_meta(gseq)
    }

    fn synced_gseq(&self) -> u64 {
        self.1
    }
}

#[test]
fn the_primary_counts_itself_towards_a_commit_only_as_far_as_it_synced() {
    let (mut primary, log, _) = primary_with_events(3);
    let streamed = primary.on_local_append(&SyncedTo(&log, 1));
    assert!(matches!(
        streamed[..],
        [Action::Replicate { to_gseq: 4, .. }]
    ));
    // The follower stored and acknowledged all of it before the primary's
    // own sync of 2..=4 finished.
    let (hash_4, _) = log.entry_meta(4).unwrap();
    let ack = Message::Ack {
        tip_gseq: 4,
        tip_hash: hash_4,
    };
    let actions = primary.receive(2_000, to(1, datagram(2, 1, 5, 0, ack)), &SyncedTo(&log, 1));
    assert_eq!(
        actions,
        [Action::CommitAdvanced { commit_gseq: 1 }],
        "only the epoch's marker is durable here"
    );
    assert_eq!(
        primary.on_synced(&SyncedTo(&log, 3)),
        [Action::CommitAdvanced { commit_gseq: 3 }]
    );
    assert_eq!(
        primary.on_synced(&log),
        [Action::CommitAdvanced { commit_gseq: 4 }]
    );
}

//! The replica's read ports: what the core publishes after its rounds
//! (a snapshot, the committed entries) and how pages read the log, so the
//! dashboard never queues anything on the core.

use super::core::Core;
use super::log_reader::entry_view;
use crate::node::Role as NodeRole;
use dashboard::ports::{
    COMMITTED_FEED_ENTRIES_MAX, CommittedEntry, FleetTotals, MachineSummary, PROJECTION_EVERY_MS,
    Role, Snapshot,
};
use dashboard::{CLUSTER_KEY_WARNING_MS, FollowerStatus, ReplicaStatus};
use ledger::MachineId;
use ledger::projection::Projection;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

/// A snapshot is rebuilt at most this often (building one walks every
/// machine); a role change publishes at once.
const SNAPSHOT_EVERY_MS: u64 = 50;
/// What the status costs the core thread at most: after a snapshot or a
/// projection copy that took T, the next waits at least this many times T.
/// With 10,000 machines a snapshot takes milliseconds, and rebuilding it
/// every 50 ms had the core spend most of its time on it while machines'
/// acknowledgements waited.
const PUBLISH_COST_FACTOR: u32 = 20;
/// The longest wait between snapshots or projection copies, however large
/// the fleet.
const PUBLISH_EVERY_MAX_MS: u64 = 2_000;
/// A snapshot walks at most this many machines per round, so a large
/// fleet's snapshot is built over several rounds instead of holding one
/// round (and every acknowledgement waiting on it) for all of it: with
/// 10,000 machines one walk took 10–14 ms of CPU and 25–50 ms of a round.
const SNAPSHOT_MACHINES_PER_ROUND: usize = 1_000;
/// A snapshot or projection copy that takes this long is logged with its
/// cost, so a slow round's `deliver_ms` (which includes publishing) can be
/// told apart from sending. The cadence keeps these at most a few a second.
const PUBLISH_SLOW_MS: u64 = 25;

/// When something that costs a walk over the fleet is next due: no sooner
/// than its base interval, nor than `PUBLISH_COST_FACTOR` times what the
/// last one took.
#[derive(Clone, Copy, Debug)]
struct Cadence {
    base_ms: u64,
    last_at_ms: Option<u64>,
    every_ms: u64,
}

impl Cadence {
    fn new(base_ms: u64) -> Cadence {
        Cadence {
            base_ms,
            last_at_ms: None,
            every_ms: base_ms,
        }
    }

    fn due(&self, now_ms: u64) -> bool {
        self.last_at_ms
            .is_none_or(|at| now_ms >= at.saturating_add(self.every_ms))
    }

    /// Runs `work` now and sets the next interval from what it took.
    fn run<T>(&mut self, now_ms: u64, what: &str, work: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = work();
        let took = started.elapsed();
        let took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        if took_ms >= PUBLISH_SLOW_MS {
            tracing::info!(took_ms, what, "a slow status publish");
        }
        self.done(now_ms, took);
        out
    }

    /// Work that took `took` in all (in one piece or over several rounds)
    /// finished at `now_ms`: sets the next interval from it.
    fn done(&mut self, now_ms: u64, took: Duration) {
        let cost = took * PUBLISH_COST_FACTOR;
        let cost_ms = u64::try_from(cost.as_millis()).unwrap_or(u64::MAX);
        self.every_ms = cost_ms.clamp(self.base_ms, PUBLISH_EVERY_MAX_MS.max(self.base_ms));
        self.last_at_ms = Some(now_ms);
    }
}

/// A snapshot being built [`SNAPSHOT_MACHINES_PER_ROUND`] machines a round.
struct SnapshotBuild {
    /// The machines walked so far, in order (the walk goes on after the
    /// last).
    machines: Vec<MachineSummary>,
    /// Machines with an open session when the walk began.
    connected: Vec<MachineId>,
    /// Time spent on it so far, over its rounds.
    took: Duration,
}

/// The tip a [`StoreLogReader`](super::log_reader::StoreLogReader) may read up to: the core raises it after
/// each round (a reader never sees a write its round has not finished).
#[derive(Default)]
pub(super) struct ReadableTip(pub(super) AtomicU64);

/// Publishes the core's state for readers.
pub(super) struct Publisher {
    snapshot: watch::Sender<Arc<Snapshot>>,
    projection: watch::Sender<Arc<Projection>>,
    projection_cadence: Cadence,
    committed: broadcast::Sender<CommittedEntry>,
    readable_tip: Arc<ReadableTip>,
    /// The last committed gseq handed to the live feed.
    fed_commit: u64,
    snapshot_cadence: Cadence,
    snapshot_build: Option<SnapshotBuild>,
    published_role: (Role, u64),
}

impl Publisher {
    pub(super) fn new(
        snapshot: watch::Sender<Arc<Snapshot>>,
        projection: watch::Sender<Arc<Projection>>,
        committed: broadcast::Sender<CommittedEntry>,
        readable_tip: Arc<ReadableTip>,
        commit_gseq: u64,
    ) -> Publisher {
        Publisher {
            snapshot,
            projection,
            projection_cadence: Cadence::new(PROJECTION_EVERY_MS),
            committed,
            readable_tip,
            fed_commit: commit_gseq,
            snapshot_cadence: Cadence::new(SNAPSHOT_EVERY_MS),
            snapshot_build: None,
            published_role: (Role::Follower, 0),
        }
    }

    /// After a round: the readable tip moves, newly committed entries go to
    /// live subscribers, and the snapshot is renewed when due.
    pub(super) fn publish(&mut self, core: &Core) {
        let tip = core.round.ledger().store().head().gseq;
        self.readable_tip.0.store(tip, Ordering::Release);
        self.feed_committed(core);
        let now_ms = core.now_ms();
        let role = (role(core), core.round.node().epoch());
        if role != self.published_role {
            // At once and whole: pages must not show the old role.
            self.published_role = role;
            self.snapshot_build = None;
            let previous = Arc::clone(&self.snapshot.borrow());
            let snapshot = self.snapshot_cadence.run(now_ms, "snapshot", || {
                let mut build = SnapshotBuild::new(core);
                build.walk(core, &previous, usize::MAX);
                build.finish(core)
            });
            self.snapshot.send_replace(Arc::new(snapshot));
        } else if self.snapshot_build.is_some() || self.snapshot_cadence.due(now_ms) {
            self.build_snapshot(core, now_ms);
        }
        self.publish_projection(core, now_ms);
    }

    /// Walks the next machines of the snapshot being built (beginning one
    /// if none is), and publishes it once every machine is walked.
    fn build_snapshot(&mut self, core: &Core, now_ms: u64) {
        let started = Instant::now();
        let previous = Arc::clone(&self.snapshot.borrow());
        let build = self
            .snapshot_build
            .get_or_insert_with(|| SnapshotBuild::new(core));
        if !build.walk(core, &previous, SNAPSHOT_MACHINES_PER_ROUND) {
            build.took += started.elapsed();
            return;
        }
        let Some(build) = self.snapshot_build.take() else {
            return;
        };
        let took_before = build.took;
        let snapshot = build.finish(core);
        self.snapshot.send_replace(Arc::new(snapshot));
        self.snapshot_cadence
            .done(now_ms, took_before + started.elapsed());
    }

    /// A copy of the projection for pages, when it changed and at most
    /// every `PROJECTION_EVERY_MS` (longer for a fleet whose copy costs
    /// more, see [`Cadence`]).
    fn publish_projection(&mut self, core: &Core, now_ms: u64) {
        let projection = core.round.ledger().projection();
        let changed = self.projection.borrow().as_of_gseq != projection.as_of_gseq;
        if changed && self.projection_cadence.due(now_ms) {
            // Cheap: each machine's state is shared, not copied (see
            // `Projection`).
            let copy = self
                .projection_cadence
                .run(now_ms, "projection copy", || projection.clone());
            self.projection.send_replace(Arc::new(copy));
        }
    }

    /// Hands entries that became committed to the live feed, at most
    /// `COMMITTED_FEED_ENTRIES_MAX` per round (the rest next round). With
    /// no subscriber nothing is read.
    fn feed_committed(&mut self, core: &Core) {
        let commit = core.round.node().commit_gseq();
        if commit <= self.fed_commit {
            // A truncation or a restart can only move the commit forward,
            // but be safe: never feed an entry twice.
            return;
        }
        if self.committed.receiver_count() == 0 {
            self.fed_commit = commit;
            return;
        }
        let last = commit.min(self.fed_commit + COMMITTED_FEED_ENTRIES_MAX as u64);
        let store = core.round.ledger().store();
        let result = store.for_each_record(self.fed_commit + 1, last, |gseq, record| {
            // A send fails only when every subscriber left; keep going.
            let _ = self.committed.send(Arc::new(entry_view(gseq, record)));
            Ok(true)
        });
        match result {
            Ok(()) => self.fed_commit = last,
            Err(error) => {
                tracing::warn!(error = %error, "could not read committed entries for the live feed");
                self.fed_commit = commit;
            }
        }
    }
}

fn role(core: &Core) -> Role {
    match core.round.node().role() {
        NodeRole::Primary => Role::Primary,
        NodeRole::Candidate => Role::Candidate,
        NodeRole::Follower => match core.config.priority {
            0 => Role::Sync,
            1 => Role::Backup,
            _ => Role::Follower,
        },
    }
}

impl SnapshotBuild {
    fn new(core: &Core) -> SnapshotBuild {
        SnapshotBuild {
            machines: Vec::with_capacity(core.round.ledger().projection().machines.len()),
            connected: core.round.ingest().connected_machines(),
            took: Duration::ZERO,
        }
    }

    /// Summarizes up to `count` more machines, in machine order, each
    /// from `previous` (the last snapshot): what was committed then still
    /// is, so its committed mark is searched for only past it. `true` when
    /// every machine has been walked.
    fn walk(&mut self, core: &Core, previous: &Snapshot, count: usize) -> bool {
        let projection = core.round.ledger().projection();
        let store = core.round.ledger().store();
        let ingest = core.round.ingest();
        let commit = core.round.node().commit_gseq();
        let after = match self.machines.last() {
            Some(last) => Bound::Excluded(last.machine.clone()),
            None => Bound::Unbounded,
        };
        let mut machines = projection.machines.range((after, Bound::Unbounded));
        for (machine, state) in machines.by_ref().take(count) {
            let head = store.machine_head(machine);
            let known = committed_before(previous, machine);
            let committed = core.round.committed_seq(machine, commit, known);
            let seen = ingest.seen(machine);
            self.machines.push(MachineSummary {
                machine: machine.clone(),
                last_seq: head.seq,
                last_gseq: head.gseq,
                last_event_ms: state.last_at_ms,
                connected: self.connected.binary_search(machine).is_ok(),
                last_seen_ms: seen.map(|seen| seen.last_seen_ms),
                // What the machine holds beyond what the fleet committed,
                // by the tip it last reported (machines of link version 1
                // report none).
                backlog: seen
                    .and_then(|seen| seen.local_tip)
                    .map(|tip| tip.saturating_sub(committed)),
                uncommitted: head.seq.saturating_sub(committed),
                cash_held_won: state.balances.physical_total(),
                stock_units: state.slots.values().map(|s| u64::from(s.stock)).sum(),
            });
        }
        machines.next().is_none()
    }

    /// The snapshot: the machines walked, with the totals and status as
    /// they stand now.
    fn finish(self, core: &Core) -> Snapshot {
        let projection = core.round.ledger().projection();
        let totals = projection.totals();
        Snapshot {
            role: role(core),
            machines: self.machines,
            totals: FleetTotals {
                machines: totals.machines,
                entries_applied: projection.entries_applied,
                projection_issues: projection.issue_count,
                purchases: totals.purchases,
                sales_won: totals.sales_won,
                cash_held_won: totals.cash_in_machines_won,
                change_owed_won: totals.change_owed_won,
                items_in_stock: totals.items_in_stock,
            },
            status: status(core),
        }
    }
}

/// The seq `machine` had committed in the last snapshot (0 if it was not
/// there; its machines are in order).
fn committed_before(previous: &Snapshot, machine: &MachineId) -> u64 {
    previous
        .machines
        .binary_search_by(|s| s.machine.cmp(machine))
        .map_or(0, |at| {
            let s = &previous.machines[at];
            s.last_seq.saturating_sub(s.uncommitted)
        })
}

fn member_name(core: &Core, id: crate::wire::NodeId) -> String {
    core.member_name(id)
}

/// Datagrams dropped before the protocol saw them, by reason.
fn datagrams_rejected(core: &Core) -> Vec<(String, u64)> {
    let mut rejected: Vec<(String, u64)> = core
        .round
        .counters()
        .datagrams_rejected
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect();
    let misaddressed = core.round.node().counters().misaddressed_dropped;
    if misaddressed > 0 {
        rejected.push(("misaddressed".to_owned(), misaddressed));
    }
    for (reason, counter) in [
        ("injected_loss", &core.receive_drops.injected),
        ("queue_full", &core.receive_drops.queue_full),
    ] {
        let count = counter.load(Ordering::Relaxed);
        if count > 0 {
            rejected.push((reason.to_owned(), count));
        }
    }
    rejected
}

/// A warning while datagrams fail authentication (see
/// `ReplicaStatus::cluster_key_warning`).
fn cluster_key_warning(core: &Core) -> Option<String> {
    let counters = core.round.counters();
    let (sender, at_ms) = counters.last_unauthenticated?;
    let now_ms = core.now_ms();
    if now_ms >= at_ms + CLUSTER_KEY_WARNING_MS {
        return None;
    }
    let count = counters
        .datagrams_rejected
        .get("unauthenticated")
        .copied()
        .unwrap_or(0);
    Some(format!(
        "datagrams from {} fail authentication ({count} since the start, the last {:.1} s ago): \
         is this replica's cluster.key the cluster's?",
        member_name(core, sender),
        (now_ms - at_ms) as f64 / 1_000.0
    ))
}

fn status(core: &Core) -> ReplicaStatus {
    let node = core.round.node();
    let counters = node.counters();
    let ingest = core.round.ingest().counters();
    let tip = core.round.ledger().store().head().gseq;
    let primary = node.role() == NodeRole::Primary;
    let followers = if primary {
        node.follower_matches()
            .into_iter()
            .map(|(id, matched)| FollowerStatus {
                id: member_name(core, id),
                matched,
                lag: tip.saturating_sub(matched),
            })
            .collect()
    } else {
        Vec::new()
    };
    let projection = core.round.ledger().projection();
    ReplicaStatus {
        id: core.config.name.clone(),
        node_id: core.config.id,
        role: role(core).to_string(),
        epoch: node.epoch(),
        leader: node.leader().map(|l| member_name(core, l)),
        tip,
        commit: node.commit_gseq(),
        lag: if primary {
            0
        } else {
            core.round.primary_tip().saturating_sub(tip)
        },
        followers,
        naks_sent: counters.naks_sent,
        naks_received: counters.naks_received,
        records_retransmitted: counters.records_retransmitted,
        datagrams_received: counters.datagrams_received,
        datagrams_rejected: datagrams_rejected(core),
        cluster_key_warning: cluster_key_warning(core),
        datagrams_replayed: counters.replayed_dropped,
        datagrams_stale_epoch: counters.stale_epoch_dropped,
        elections_started: counters.elections_started,
        truncated_records: counters.records_truncated,
        machines_connected: core.round.ingest().connected_machines().len(),
        events_submitted: ingest.events_submitted,
        events_duplicate: ingest.events_duplicate,
        events_rejected: ingest.events_rejected,
        frames_rejected: ingest.frames_rejected,
        projection_entries: projection.entries_applied,
        projection_issues: projection.issue_count,
        storage_failures: core.round.counters().write_failures
            + core.round.counters().sync_failures,
        storage_error: core.round.counters().storage_error.clone(),
        repairing_until: node.repairing_until(),
        archived_through: core
            .round
            .ledger()
            .store()
            .archived()
            .map(|mark| mark.through_gseq),
        transport: core.config.transport.to_string(),
        pid: std::process::id(),
        uptime_ms: core.now_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_machine_starts_from_what_the_last_snapshot_saw_committed() {
        let summary = |n: u32, last_seq: u64, uncommitted: u64| MachineSummary {
            machine: MachineId::numbered(n),
            last_seq,
            last_gseq: 0,
            last_event_ms: 0,
            connected: false,
            last_seen_ms: None,
            backlog: None,
            uncommitted,
            cash_held_won: 0,
            stock_units: 0,
        };
        // The last snapshot knew machines 1, 3 and 4 (and a 6 no longer
        // listed); machines 2 and 5 are new.
        let last = [
            summary(1, 10, 4),
            summary(3, 30, 0),
            summary(4, 40, 40),
            summary(6, 60, 1),
        ];
        let last = Snapshot {
            machines: last.to_vec(),
            ..Snapshot::default()
        };
        let known: Vec<u64> = (1..=5)
            .map(|n| committed_before(&last, &MachineId::numbered(n)))
            .collect();
        assert_eq!(known, [6, 0, 30, 0, 0]);
    }

    #[test]
    fn a_costly_walk_waits_twenty_times_its_cost_and_a_cheap_one_its_base() {
        let mut cadence = Cadence::new(50);
        assert!(cadence.due(0), "the first is due at once");
        cadence.run(1_000, "test", || ());
        assert_eq!(cadence.every_ms, 50, "a cheap walk keeps the base");
        assert!(!cadence.due(1_049) && cadence.due(1_050));
        cadence.run(2_000, "test", || {
            std::thread::sleep(std::time::Duration::from_millis(10))
        });
        assert!(
            (200..=PUBLISH_EVERY_MAX_MS).contains(&cadence.every_ms),
            "{}",
            cadence.every_ms
        );
        assert!(!cadence.due(2_199));
        cadence.run(3_000, "test", || {
            std::thread::sleep(std::time::Duration::from_millis(150))
        });
        assert_eq!(cadence.every_ms, PUBLISH_EVERY_MAX_MS, "capped");
    }
}

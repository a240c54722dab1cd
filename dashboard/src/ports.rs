//! How the dashboard reads a replica without ever waiting on it.
//!
//! A replica's core thread decides everything; if a page had to queue a
//! request on it, a slow page would slow replication and a busy core would
//! stall pages. So readers get their own paths, defined here and
//! implemented by `replica`:
//!
//! * [`Snapshot`]: after each round the core publishes an immutable
//!   snapshot (status, per-machine summaries, fleet totals) through a
//!   `tokio::sync::watch` channel; a page borrows the newest one. The whole
//!   projection follows on its own channel, less often.
//! * [`LogReader`]: reads entries of the log from any thread (the RocksDB
//!   backend reads through its own snapshot), bounded by the tip the
//!   newest snapshot names.
//! * [`CommittedEntry`] on a bounded `tokio::sync::broadcast` channel: every
//!   entry once it is committed, for live pages. A subscriber that falls
//!   more than the channel's capacity behind loses entries and is told so
//!   (`RecvError::Lagged`); it never slows the core.
//! * [`OperatorRequest`] on a bounded `tokio::sync::mpsc` channel: what an
//!   operator asks a replica to do, answered through a oneshot channel.

use crate::ReplicaStatus;
use ledger::operator::{AlertKey, OperatorRole};
use ledger::{MachineId, SlotId, Won};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Committed entries buffered for live pages; a subscriber further behind
/// is dropped (it reconnects and resumes from the log).
pub const COMMITTED_FEED_ENTRIES_MAX: usize = 4_096;
/// Operator requests waiting for the core; more are refused at once.
pub const OPERATOR_REQUESTS_MAX: usize = 64;
/// Most entries one [`LogReader`] call returns.
pub const READ_ENTRIES_MAX: usize = 1_000;

/// What a replica is doing, as roles are shown to operators.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Candidate,
    /// Following, and never stands for election (priority 0).
    Sync,
    /// Following, and takes over when the primary dies.
    Backup,
    /// Following (the preferred primary, while another leads).
    #[default]
    Follower,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Candidate => "candidate",
            Role::Sync => "sync",
            Role::Backup => "backup",
            Role::Follower => "follower",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One machine as the replica knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineSummary {
    pub machine: MachineId,
    /// The machine's last event in this replica's log.
    pub last_seq: u64,
    pub last_gseq: u64,
    /// The machine's clock at its last event (ms since the Unix epoch).
    pub last_event_ms: i64,
    /// Whether a machine session is open on this replica (only the primary
    /// holds sessions).
    pub connected: bool,
    /// When this replica last heard from the machine over its link (ms
    /// since the Unix epoch), if it has since it started.
    pub last_seen_ms: Option<i64>,
    /// Events the machine holds that the fleet has not acknowledged, as it
    /// last reported (its local tip minus the committed mark).
    pub backlog: Option<u64>,
    /// Events of the machine this replica holds but has not seen committed.
    pub uncommitted: u64,
    pub cash_held_won: i64,
    pub stock_units: u64,
}

/// Fleet-wide figures from the projection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetTotals {
    pub machines: usize,
    pub entries_applied: u64,
    pub projection_issues: u64,
    pub purchases: u64,
    pub sales_won: i64,
    pub cash_held_won: i64,
    pub change_owed_won: i64,
    pub items_in_stock: u64,
}

/// What the core published after a round.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub status: ReplicaStatus,
    pub role: Role,
    pub machines: Vec<MachineSummary>,
    pub totals: FleetTotals,
}

/// The newest snapshot, always available.
pub type SnapshotReceiver = tokio::sync::watch::Receiver<Arc<Snapshot>>;

/// The replica's projection (inventory, cash, sales, per machine and for
/// the fleet), republished at most every `PROJECTION_EVERY_MS` while it
/// changes: pages that need more than the snapshot's summaries read it.
pub type ProjectionReceiver = tokio::sync::watch::Receiver<Arc<ledger::projection::Projection>>;

/// How often the projection is republished at most (a copy of it is made
/// each time; the snapshot and the live feed carry what must be quicker).
pub const PROJECTION_EVERY_MS: u64 = 500;

/// An entry of the log as pages show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntryView {
    pub gseq: u64,
    pub epoch: u64,
    /// The appending primary's clock.
    pub logged_ms: i64,
    /// blake3 of the record, hex.
    pub hash: String,
    pub prev_hash: String,
    pub kind: EntryKind,
}

/// One entry's place in the fleet chain: what the chain check needs, and
/// nothing a page shows (no event decoded for display, no hex).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainLink {
    pub gseq: u64,
    /// blake3 of the record.
    pub hash: [u8; 32],
    pub prev_hash: [u8; 32],
    /// Why the entry cannot be read, when it cannot.
    pub unreadable: Option<String>,
}

impl ChainLink {
    /// The link of an entry as pages show it.
    pub fn of_view(view: &LogEntryView) -> ChainLink {
        let bytes = |text: &str| {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(text, &mut hash).ok().map(|()| hash)
        };
        let unreadable = match &view.kind {
            EntryKind::Unreadable { problem } => Some(problem.clone()),
            _ => None,
        };
        match (bytes(&view.hash), bytes(&view.prev_hash)) {
            (Some(hash), Some(prev_hash)) => ChainLink {
                gseq: view.gseq,
                hash,
                prev_hash,
                unreadable,
            },
            _ => ChainLink {
                gseq: view.gseq,
                hash: [0; 32],
                prev_hash: [0; 32],
                unreadable: unreadable.or_else(|| Some("its hashes are not hex".into())),
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EntryKind {
    Event {
        machine: MachineId,
        seq: u64,
        /// The machine's clock.
        at_ms: i64,
        /// The event's kind, e.g. `product_purchased`.
        event: String,
        /// What it says, in words (`Coffee for 500 won`); empty when there
        /// is nothing to add to the kind.
        #[serde(default)]
        detail: String,
    },
    EpochStarted {
        primary: String,
    },
    /// What an operator did (an account, a command for a machine, an
    /// acknowledged alert), recorded through the primary.
    Operator {
        operator: String,
        /// The primary's clock when it was recorded.
        at_ms: i64,
        /// The action's kind, e.g. `command_requested`
        /// (`ledger::operator::OperatorAction::kind`).
        action: String,
        /// The machine it concerns, if any.
        machine: Option<MachineId>,
    },
    /// A record that does not decode (reported, never hidden).
    Unreadable {
        problem: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("entry {gseq} is not in this replica's log (it holds up to {tip})")]
    BeyondTip { gseq: u64, tip: u64 },
    #[error("the log could not be read: {0}")]
    Storage(String),
}

/// Most entries the default [`LogReader::machine_entries`] reads looking
/// for one machine's (a replica answers from an index instead).
pub const MACHINE_SCAN_ENTRIES_MAX: u64 = 100_000;

/// Reads a replica's log from any thread without involving its core.
pub trait LogReader: Send + Sync + 'static {
    /// Entries `from_gseq..=to_gseq`, at most [`READ_ENTRIES_MAX`].
    fn entries(&self, from_gseq: u64, to_gseq: u64) -> Result<Vec<LogEntryView>, ReadError>;

    /// The chain links of entries `from_gseq..=to_gseq`, at most
    /// [`READ_ENTRIES_MAX`], for the chain check. This default derives them
    /// from [`LogReader::entries`]; a replica reads them without building
    /// what pages show.
    fn chain_links(&self, from_gseq: u64, to_gseq: u64) -> Result<Vec<ChainLink>, ReadError> {
        Ok(self
            .entries(from_gseq, to_gseq)?
            .iter()
            .map(ChainLink::of_view)
            .collect())
    }

    /// `machine`'s entries with a gseq in `from_gseq..=to_gseq`, newest
    /// first when `newest_first`, at most `limit` (and at most
    /// [`READ_ENTRIES_MAX`]). This default scans the range (at most
    /// [`MACHINE_SCAN_ENTRIES_MAX`] entries); a replica answers from its
    /// index of each machine's entries.
    fn machine_entries(
        &self,
        machine: &MachineId,
        from_gseq: u64,
        to_gseq: u64,
        newest_first: bool,
        limit: usize,
    ) -> Result<Vec<LogEntryView>, ReadError> {
        let limit = limit.min(READ_ENTRIES_MAX);
        let chunk = READ_ENTRIES_MAX as u64;
        let (from, to) = (from_gseq.max(1), to_gseq);
        let mut found = Vec::new();
        let mut scanned = 0;
        let mut next = if newest_first { to } else { from };
        while found.len() < limit && from <= to && (from..=to).contains(&next) {
            let (low, high) = if newest_first {
                (next.saturating_sub(chunk - 1).max(from), next)
            } else {
                (next, next.saturating_add(chunk - 1).min(to))
            };
            let mut entries = match self.entries(low, high) {
                Ok(entries) => entries,
                Err(ReadError::BeyondTip { .. }) => Vec::new(),
                Err(error) => return Err(error),
            };
            if newest_first {
                entries.reverse();
            }
            found.extend(entries.into_iter().filter(
                |entry| matches!(&entry.kind, EntryKind::Event { machine: m, .. } if m == machine),
            ));
            scanned += high - low + 1;
            if scanned >= MACHINE_SCAN_ENTRIES_MAX {
                break;
            }
            next = if newest_first {
                match low.checked_sub(1) {
                    Some(next) => next,
                    None => break,
                }
            } else {
                high + 1
            };
        }
        found.truncate(limit);
        Ok(found)
    }
}

/// An entry that became committed, for live pages. `gseq` is the
/// resumption point (SSE's Last-Event-ID).
pub type CommittedEntry = Arc<LogEntryView>;

/// What an operator asks of a replica. Each is recorded in the log with
/// the operator's name (through the primary); commands for machines are
/// delivered over their links and applied by the machines themselves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperatorAction {
    AddUser {
        name: String,
        role: OperatorRole,
        /// argon2id, made by `ledger::admin::hash_password` (the password
        /// never reaches the replica's core).
        password_hash: String,
    },
    DisableUser {
        name: String,
    },
    ChangePassword {
        name: String,
        password_hash: String,
    },
    SetPrice {
        machine: MachineId,
        slot: SlotId,
        price: Won,
    },
    Rename {
        machine: MachineId,
        slot: SlotId,
        name: String,
    },
    /// The head office's price policy: every slot of every machine that
    /// sells `product` (by name) gets `price`.
    FleetPrice {
        product: String,
        price: Won,
    },
    SettleTicket {
        machine: MachineId,
        ticket: u64,
    },
    AcknowledgeAlert {
        alert: AlertKey,
        note: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("this replica is not the primary; ask {primary:?}")]
    NotPrimary { primary: Option<String> },
    #[error("no machine {0}")]
    UnknownMachine(MachineId),
    #[error("machine {machine} has no slot {slot}")]
    UnknownSlot { machine: MachineId, slot: SlotId },
    #[error("no machine sells {0:?}")]
    UnknownProduct(String),
    #[error("no operator account {0:?}")]
    UnknownUser(String),
    #[error("the operator account {0:?} exists already")]
    UserExists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the log could not record it: {0}")]
    Storage(String),
    #[error("the replica is shutting down")]
    Stopped,
}

/// What happened to a request that was carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionReceipt {
    /// The gseq of the (last) entry that records it.
    pub gseq: u64,
    /// Commands sent to machines: which machine, its command id, and
    /// whether it was delivered at once (the machine was connected; an
    /// offline machine gets it when it reconnects).
    pub commands: Vec<(MachineId, u64, bool)>,
}

pub struct OperatorRequest {
    /// Who asked (recorded with what it causes).
    pub operator: String,
    pub action: OperatorAction,
    pub reply: tokio::sync::oneshot::Sender<Result<ActionReceipt, ActionError>>,
}

/// Everything the dashboard reads a replica through.
#[derive(Clone)]
pub struct ReadPorts {
    pub snapshot: SnapshotReceiver,
    pub projection: ProjectionReceiver,
    pub log: Arc<dyn LogReader>,
    pub committed: tokio::sync::broadcast::Sender<CommittedEntry>,
    pub actions: tokio::sync::mpsc::Sender<OperatorRequest>,
}

//! What operators do through the dashboard, as entries of the fleet log.
//!
//! Operator accounts, remote commands to machines and acknowledged alerts
//! are written through the primary like machine events, so every replica
//! has them and a failover keeps them. Each is an [`OperatorRecord`]: who
//! did it, when, and what. It is carried in the log as versioned bytes
//! (`[OPERATOR_RECORD_VERSION] ++ MessagePack(record)`), like a machine's
//! event, so old logs replay after the record grows.

use crate::event::DecodeError;
use crate::ids::{MachineId, SlotId};
use crate::rules::RemoteAction;
use serde::{Deserialize, Serialize};

pub const OPERATOR_RECORD_VERSION: u8 = 1;
/// Largest encoded operator record accepted.
pub const OPERATOR_RECORD_BYTES_MAX: usize = 1_024;
/// Longest operator name.
pub const OPERATOR_NAME_BYTES_MAX: usize = 32;
/// Longest note on an acknowledged alert.
pub const NOTE_CHARS_MAX: usize = 200;

/// What an operator may do on the dashboard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OperatorRole {
    /// Reads everything and acts: prices, names, settlements, accounts.
    Admin,
    /// Reads everything, changes nothing.
    Auditor,
}

impl OperatorRole {
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorRole::Admin => "admin",
            OperatorRole::Auditor => "auditor",
        }
    }
}

impl std::str::FromStr for OperatorRole {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "admin" => Ok(OperatorRole::Admin),
            "auditor" => Ok(OperatorRole::Auditor),
            other => Err(format!("unknown role {other:?} (admin or auditor)")),
        }
    }
}

/// The kinds of alert the dashboard raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AlertKind {
    LowStock,
    SoldOut,
    ChangeOwed,
    ExactChangeOnly,
    Offline,
    Backlog,
    OverShort,
}

/// Which alert: its kind, and where (a machine, a slot of it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AlertKey {
    pub kind: AlertKind,
    pub machine: MachineId,
    pub slot: Option<SlotId>,
}

/// What an operator did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperatorAction {
    UserAdded {
        name: String,
        role: OperatorRole,
        /// argon2id (PHC string), as `admin::hash_password` makes it.
        password_hash: String,
    },
    UserDisabled {
        name: String,
    },
    PasswordChanged {
        name: String,
        password_hash: String,
    },
    /// A command for one machine, delivered over its link; the machine
    /// applies it and records the outcome as its own event, naming
    /// `command_id` (ids increase per machine).
    CommandRequested {
        machine: MachineId,
        command_id: u64,
        action: RemoteAction,
    },
    AlertAcknowledged {
        alert: AlertKey,
        note: String,
    },
}

/// One operator's act, as the log records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorRecord {
    /// The account that acted (`vendctl` for the command line).
    pub operator: String,
    /// When, on the primary's clock (ms since the Unix epoch).
    pub at_ms: i64,
    pub action: OperatorAction,
}

impl OperatorRecord {
    /// `[OPERATOR_RECORD_VERSION] ++ MessagePack(record)`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.push(OPERATOR_RECORD_VERSION);
        rmp_serde::encode::write(&mut out, self).expect("encoding to a Vec cannot fail");
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<OperatorRecord, DecodeError> {
        if bytes.len() > OPERATOR_RECORD_BYTES_MAX {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        match version {
            OPERATOR_RECORD_VERSION => Ok(rmp_serde::from_slice(body)?),
            other => Err(DecodeError::UnknownVersion(other)),
        }
    }
}

/// An operator account as the log made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub role: OperatorRole,
    pub password_hash: String,
    pub disabled: bool,
    pub added_by: String,
    pub added_at_ms: i64,
}

/// What became of a remote command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutcome {
    /// Not applied yet (the machine may be offline).
    Pending,
    /// The machine applied it: its event at `gseq`.
    Applied { gseq: u64, at_ms: i64 },
    /// The machine refused it (its `RemoteCommandRejected` event).
    Rejected { gseq: u64, reason: String },
}

/// A remote command and its fate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandState {
    pub action: RemoteAction,
    pub requested_by: String,
    pub requested_at_ms: i64,
    /// The gseq of the request's entry.
    pub gseq: u64,
    pub outcome: CommandOutcome,
}

/// An acknowledged alert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertAck {
    pub by: String,
    pub at_ms: i64,
    pub note: String,
    pub gseq: u64,
}

/// Everything operators did, as of a gseq: part of the projection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operators {
    pub users: std::collections::BTreeMap<String, UserRecord>,
    /// Per machine, its commands by id.
    pub commands:
        std::collections::BTreeMap<MachineId, std::collections::BTreeMap<u64, CommandState>>,
    pub acknowledged: std::collections::BTreeMap<AlertKey, AlertAck>,
}

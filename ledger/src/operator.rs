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
use crate::rules::{RemoteAction, RemoteCommand};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const OPERATOR_RECORD_VERSION: u8 = 1;
/// Largest encoded operator record accepted.
pub const OPERATOR_RECORD_BYTES_MAX: usize = 1_024;
/// Longest operator name.
pub const OPERATOR_NAME_BYTES_MAX: usize = 32;
/// Longest note on an acknowledged alert.
pub const NOTE_CHARS_MAX: usize = 200;
/// Most problems with operator records a projection remembers (the count
/// keeps going).
pub const OPERATOR_ISSUES_KEPT_MAX: usize = 100;

/// Whether `name` may name an operator account (and so an operator in a
/// record): 1 to [`OPERATOR_NAME_BYTES_MAX`] ASCII letters, digits, `.`,
/// `_` or `-`. The same rule for accounts and for who acted, so every
/// name in the log can be shown and typed back.
pub fn check_operator_name(name: &str) -> Result<(), OperatorError> {
    let valid = !name.is_empty()
        && name.len() <= OPERATOR_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(OperatorError::BadName(name.chars().take(64).collect()))
    }
}

/// Why an operator record does not apply to the operators' state. The
/// primary checks every request against its own projection before it
/// writes the record, so a committed log never holds one that does not
/// apply; replays and `verify` still check.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OperatorError {
    #[error("invalid operator name {0:?}: use 1 to 32 ASCII letters, digits, '.', '_' or '-'")]
    BadName(String),
    #[error("the operator account {0:?} exists already")]
    UserExists(String),
    #[error("no operator account {0:?}")]
    UnknownUser(String),
    #[error("the operator account {0:?} is disabled already")]
    AlreadyDisabled(String),
    #[error("not an argon2id password hash: {0}")]
    BadPasswordHash(String),
    #[error("command {command_id} for {machine} does not follow its command {last}")]
    StaleCommand {
        machine: MachineId,
        command_id: u64,
        last: u64,
    },
    #[error("a note has at most {NOTE_CHARS_MAX} characters")]
    NoteTooLong,
}

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

impl OperatorAction {
    /// A stable lowercase name of the action (for dumps and pages).
    pub fn kind(&self) -> &'static str {
        match self {
            OperatorAction::UserAdded { .. } => "user_added",
            OperatorAction::UserDisabled { .. } => "user_disabled",
            OperatorAction::PasswordChanged { .. } => "password_changed",
            OperatorAction::CommandRequested { .. } => "command_requested",
            OperatorAction::AlertAcknowledged { .. } => "alert_acknowledged",
        }
    }
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

/// An operator record that did not apply (kept, bounded, so `verify` and
/// the dashboard can name it; the projection continues without it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorIssue {
    pub gseq: u64,
    pub problem: String,
}

/// Everything operators did, as of a gseq: part of the projection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operators {
    pub users: BTreeMap<String, UserRecord>,
    /// Per machine, its commands by id.
    pub commands: BTreeMap<MachineId, BTreeMap<u64, CommandState>>,
    pub acknowledged: BTreeMap<AlertKey, AlertAck>,
    /// Operator records applied.
    pub records_applied: u64,
    /// Operator records that did not apply, at most
    /// [`OPERATOR_ISSUES_KEPT_MAX`] (the projection's `issue_count` counts
    /// them all).
    pub issues: Vec<OperatorIssue>,
}

impl Operators {
    /// Applies the record at `gseq`: checked completely first, so a record
    /// that does not apply changes nothing.
    pub fn apply(&mut self, gseq: u64, record: &OperatorRecord) -> Result<(), OperatorError> {
        self.check(record)?;
        let OperatorRecord {
            operator,
            at_ms,
            action,
        } = record;
        match action {
            OperatorAction::UserAdded {
                name,
                role,
                password_hash,
            } => {
                self.users.insert(
                    name.clone(),
                    UserRecord {
                        role: *role,
                        password_hash: password_hash.clone(),
                        disabled: false,
                        added_by: operator.clone(),
                        added_at_ms: *at_ms,
                    },
                );
            }
            OperatorAction::UserDisabled { name } => {
                if let Some(user) = self.users.get_mut(name) {
                    user.disabled = true;
                }
            }
            OperatorAction::PasswordChanged {
                name,
                password_hash,
            } => {
                if let Some(user) = self.users.get_mut(name) {
                    user.password_hash = password_hash.clone();
                }
            }
            OperatorAction::CommandRequested {
                machine,
                command_id,
                action,
            } => {
                let state = CommandState {
                    action: action.clone(),
                    requested_by: operator.clone(),
                    requested_at_ms: *at_ms,
                    gseq,
                    outcome: CommandOutcome::Pending,
                };
                self.commands
                    .entry(machine.clone())
                    .or_default()
                    .insert(*command_id, state);
            }
            OperatorAction::AlertAcknowledged { alert, note } => {
                let ack = AlertAck {
                    by: operator.clone(),
                    at_ms: *at_ms,
                    note: note.clone(),
                    gseq,
                };
                self.acknowledged.insert(alert.clone(), ack);
            }
        }
        self.records_applied += 1;
        Ok(())
    }

    /// The rules a record must meet against the current state.
    pub fn check(&self, record: &OperatorRecord) -> Result<(), OperatorError> {
        check_operator_name(&record.operator)?;
        self.check_action(&record.action)
    }

    /// The rules an action must meet against the current state, whoever
    /// does it.
    pub fn check_action(&self, action: &OperatorAction) -> Result<(), OperatorError> {
        let hash_ok = |hash: &str| {
            crate::admin::validate_hash(hash)
                .map_err(|e| OperatorError::BadPasswordHash(e.to_string()))
        };
        match action {
            OperatorAction::UserAdded {
                name,
                password_hash,
                ..
            } => {
                check_operator_name(name)?;
                if self.users.contains_key(name) {
                    return Err(OperatorError::UserExists(name.clone()));
                }
                hash_ok(password_hash)
            }
            OperatorAction::UserDisabled { name } => match self.users.get(name) {
                None => Err(OperatorError::UnknownUser(name.clone())),
                Some(user) if user.disabled => Err(OperatorError::AlreadyDisabled(name.clone())),
                Some(_) => Ok(()),
            },
            OperatorAction::PasswordChanged {
                name,
                password_hash,
            } => {
                if !self.users.contains_key(name) {
                    return Err(OperatorError::UnknownUser(name.clone()));
                }
                hash_ok(password_hash)
            }
            OperatorAction::CommandRequested {
                machine,
                command_id,
                ..
            } => {
                let last = self.last_command_id(machine);
                if *command_id <= last {
                    return Err(OperatorError::StaleCommand {
                        machine: machine.clone(),
                        command_id: *command_id,
                        last,
                    });
                }
                Ok(())
            }
            OperatorAction::AlertAcknowledged { note, .. } => {
                if note.chars().count() > NOTE_CHARS_MAX {
                    return Err(OperatorError::NoteTooLong);
                }
                Ok(())
            }
        }
    }

    /// Remembers a record that did not apply.
    pub fn record_issue(&mut self, gseq: u64, error: &OperatorError) {
        if self.issues.len() < OPERATOR_ISSUES_KEPT_MAX {
            self.issues.push(OperatorIssue {
                gseq,
                problem: error.to_string(),
            });
        }
    }

    /// The highest command id requested for `machine` (0 if none).
    pub fn last_command_id(&self, machine: &MachineId) -> u64 {
        self.commands
            .get(machine)
            .and_then(|commands| commands.keys().next_back().copied())
            .unwrap_or(0)
    }

    /// The machine applied its command `command_id` with its event at
    /// `gseq`. A command the log never requested is not invented here.
    pub fn command_applied(&mut self, machine: &MachineId, command_id: u64, gseq: u64, at_ms: i64) {
        self.settle_command(machine, command_id, CommandOutcome::Applied { gseq, at_ms });
    }

    /// The machine refused its command `command_id` (its
    /// `RemoteCommandRejected` event at `gseq`).
    pub fn command_rejected(
        &mut self,
        machine: &MachineId,
        command_id: u64,
        gseq: u64,
        reason: &str,
    ) {
        let outcome = CommandOutcome::Rejected {
            gseq,
            reason: reason.to_owned(),
        };
        self.settle_command(machine, command_id, outcome);
    }

    fn settle_command(&mut self, machine: &MachineId, command_id: u64, outcome: CommandOutcome) {
        let command = self
            .commands
            .get_mut(machine)
            .and_then(|commands| commands.get_mut(&command_id));
        if let Some(command) = command
            && command.outcome == CommandOutcome::Pending
        {
            command.outcome = outcome;
        }
    }

    /// `machine`'s commands not applied yet whose request is at or below
    /// `commit_gseq` (only committed commands are ever delivered: one a
    /// failover could still take back must never reach a machine), in id
    /// order, at most `max`.
    pub fn pending_commands(
        &self,
        machine: &MachineId,
        commit_gseq: u64,
        max: usize,
    ) -> Vec<RemoteCommand> {
        let Some(commands) = self.commands.get(machine) else {
            return Vec::new();
        };
        commands
            .iter()
            .filter(|(_, c)| c.outcome == CommandOutcome::Pending && c.gseq <= commit_gseq)
            .take(max)
            .map(|(&command_id, c)| RemoteCommand {
                command_id,
                action: c.action.clone(),
            })
            .collect()
    }

    /// How many of `machine`'s commands are not applied yet.
    pub fn pending_count(&self, machine: &MachineId) -> usize {
        self.commands.get(machine).map_or(0, |commands| {
            commands
                .values()
                .filter(|c| c.outcome == CommandOutcome::Pending)
                .count()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{PasswordParams, hash_password};

    fn record(action: OperatorAction) -> OperatorRecord {
        OperatorRecord {
            operator: "kim".into(),
            at_ms: 1_000,
            action,
        }
    }

    fn hash() -> String {
        hash_password("s3cret-pass!", &[2; 16], PasswordParams::Light).unwrap()
    }

    fn machine() -> MachineId {
        MachineId::numbered(1)
    }

    fn command(command_id: u64) -> OperatorRecord {
        record(OperatorAction::CommandRequested {
            machine: machine(),
            command_id,
            action: RemoteAction::SettleChangeOwed { ticket: command_id },
        })
    }

    #[test]
    fn records_round_trip_through_their_versioned_bytes() {
        let original = command(3);
        let bytes = original.encode();
        assert_eq!(bytes[0], OPERATOR_RECORD_VERSION);
        assert_eq!(OperatorRecord::decode(&bytes).unwrap(), original);
        let mut newer = bytes.clone();
        newer[0] = OPERATOR_RECORD_VERSION + 1;
        assert!(matches!(
            OperatorRecord::decode(&newer),
            Err(DecodeError::UnknownVersion(_))
        ));
        assert!(matches!(
            OperatorRecord::decode(&[]),
            Err(DecodeError::Empty)
        ));
        assert!(matches!(
            OperatorRecord::decode(&vec![1; OPERATOR_RECORD_BYTES_MAX + 1]),
            Err(DecodeError::TooLarge(_))
        ));
        assert!(OperatorRecord::decode(&[OPERATOR_RECORD_VERSION, 0xc1]).is_err());
    }

    #[test]
    fn accounts_are_added_disabled_and_given_new_passwords() {
        let mut operators = Operators::default();
        let add = record(OperatorAction::UserAdded {
            name: "lee".into(),
            role: OperatorRole::Auditor,
            password_hash: hash(),
        });
        operators.apply(1, &add).unwrap();
        let user = &operators.users["lee"];
        assert_eq!((user.role, user.disabled), (OperatorRole::Auditor, false));
        assert_eq!((user.added_by.as_str(), user.added_at_ms), ("kim", 1_000));
        assert_eq!(
            operators.apply(2, &add),
            Err(OperatorError::UserExists("lee".into()))
        );
        let new_hash = hash_password("other-pass1!", &[3; 16], PasswordParams::Light).unwrap();
        let change = |name: &str, password_hash: String| {
            record(OperatorAction::PasswordChanged {
                name: name.into(),
                password_hash,
            })
        };
        operators
            .apply(3, &change("lee", new_hash.clone()))
            .unwrap();
        assert_eq!(operators.users["lee"].password_hash, new_hash);
        assert!(matches!(
            operators.apply(4, &change("lee", "not a hash".into())),
            Err(OperatorError::BadPasswordHash(_))
        ));
        assert_eq!(
            operators.apply(4, &change("park", hash())),
            Err(OperatorError::UnknownUser("park".into()))
        );
        let disable = |name: &str| record(OperatorAction::UserDisabled { name: name.into() });
        operators.apply(5, &disable("lee")).unwrap();
        assert!(operators.users["lee"].disabled);
        assert_eq!(
            operators.apply(6, &disable("lee")),
            Err(OperatorError::AlreadyDisabled("lee".into()))
        );
        assert_eq!(operators.records_applied, 3);
        let badly_named = OperatorRecord {
            operator: "no body".into(),
            ..disable("lee")
        };
        assert!(matches!(
            operators.apply(7, &badly_named),
            Err(OperatorError::BadName(_))
        ));
    }

    #[test]
    fn operator_names_are_short_plain_ascii() {
        for good in ["kim", "lee.auditor", "head-office_2", &"a".repeat(32)] {
            assert_eq!(check_operator_name(good), Ok(()), "{good:?}");
        }
        for bad in ["", "a b", "이", "kim!", &"a".repeat(33)] {
            assert!(check_operator_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn commands_increase_per_machine_and_settle_once() {
        let mut operators = Operators::default();
        operators.apply(10, &command(1)).unwrap();
        operators.apply(20, &command(2)).unwrap();
        assert_eq!(
            operators.apply(30, &command(2)),
            Err(OperatorError::StaleCommand {
                machine: machine(),
                command_id: 2,
                last: 2
            })
        );
        assert_eq!(operators.last_command_id(&machine()), 2);
        assert_eq!(operators.last_command_id(&MachineId::numbered(2)), 0);
        // Only what is committed is pending for delivery, in id order.
        let ids = |commit, max| -> Vec<u64> {
            operators
                .pending_commands(&machine(), commit, max)
                .iter()
                .map(|c| c.command_id)
                .collect()
        };
        assert_eq!(ids(9, 10), Vec::<u64>::new());
        assert_eq!(ids(10, 10), [1]);
        assert_eq!(ids(20, 10), [1, 2]);
        assert_eq!(ids(20, 1), [1]);
        operators.command_applied(&machine(), 1, 40, 5_000);
        operators.command_rejected(&machine(), 2, 41, "no open change ticket 2");
        // A second answer does not change the first; an unknown id is not
        // invented.
        operators.command_rejected(&machine(), 1, 42, "late");
        operators.command_applied(&machine(), 9, 43, 5_000);
        let commands = &operators.commands[&machine()];
        assert_eq!(
            commands[&1].outcome,
            CommandOutcome::Applied {
                gseq: 40,
                at_ms: 5_000
            }
        );
        assert_eq!(
            commands[&2].outcome,
            CommandOutcome::Rejected {
                gseq: 41,
                reason: "no open change ticket 2".into()
            }
        );
        assert_eq!(commands.len(), 2);
        assert_eq!(operators.pending_count(&machine()), 0);
        assert!(operators.pending_commands(&machine(), 100, 10).is_empty());
    }

    #[test]
    fn an_acknowledgement_records_who_when_and_why() {
        let mut operators = Operators::default();
        let alert = AlertKey {
            kind: AlertKind::ChangeOwed,
            machine: machine(),
            slot: None,
        };
        let ack = |note: String| {
            record(OperatorAction::AlertAcknowledged {
                alert: alert.clone(),
                note,
            })
        };
        operators
            .apply(7, &ack("paid at the counter".into()))
            .unwrap();
        assert_eq!(
            operators.acknowledged[&alert],
            AlertAck {
                by: "kim".into(),
                at_ms: 1_000,
                note: "paid at the counter".into(),
                gseq: 7
            }
        );
        assert_eq!(
            operators.apply(8, &ack("x".repeat(NOTE_CHARS_MAX + 1))),
            Err(OperatorError::NoteTooLong)
        );
    }
}

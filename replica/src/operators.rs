//! What an operator's request becomes in the log, without I/O.
//!
//! The primary turns each [`OperatorAction`] a dashboard asks for into the
//! [`OperatorRecord`]s that record it, after checking it against its live
//! projection — the same projection every replica rebuilds from the log,
//! and the primary's log holds everything that can ever be committed before
//! what it appends next, so a record that passes here applies everywhere.
//! Machine commands are checked with the machine's own rules
//! ([`ledger::rules::check_remote`]); nothing here restates a rule the
//! ledger already has.

use dashboard::ports::{ActionError, OperatorAction};
use ledger::catalog::validate_price;
use ledger::operator::{
    AlertKey, NOTE_CHARS_MAX, OperatorAction as Recorded, OperatorError, OperatorRecord,
    check_operator_name,
};
use ledger::projection::Projection;
use ledger::rules::{RemoteAction, check_remote};
use ledger::{MachineId, Rejection};
use std::collections::BTreeMap;

/// Most commands one machine may have waiting (requested, not applied): a
/// machine that stays offline cannot pile up commands without bound, and
/// everything pending fits what a session is sent when it opens
/// (`crate::ingest::COMMANDS_PER_SESSION_MAX`).
pub const COMMANDS_PENDING_MAX: usize = 64;
const _: () = assert!(COMMANDS_PENDING_MAX <= crate::ingest::COMMANDS_PER_SESSION_MAX);

/// The records that carry out `action` for `operator` at `at_ms` (the
/// primary's clock), checked against `projection`, or why not.
pub fn plan(
    operator: &str,
    action: &OperatorAction,
    at_ms: i64,
    projection: &Projection,
) -> Result<Vec<OperatorRecord>, ActionError> {
    check_operator_name(operator)
        .map_err(|e| ActionError::Invalid(format!("who is asking: {e}")))?;
    let mut commands = Commands::new(projection);
    let actions = match action {
        OperatorAction::AddUser { .. }
        | OperatorAction::DisableUser { .. }
        | OperatorAction::ChangePassword { .. } => vec![account(action, projection)?],
        OperatorAction::SetPrice {
            machine,
            slot,
            price,
        } => {
            let remote = RemoteAction::SetPrice {
                slot: *slot,
                price: *price,
            };
            vec![commands.request(machine, remote)?]
        }
        OperatorAction::Rename {
            machine,
            slot,
            name,
        } => {
            let remote = RemoteAction::Rename {
                slot: *slot,
                name: name.clone(),
            };
            vec![commands.request(machine, remote)?]
        }
        OperatorAction::SettleTicket { machine, ticket } => {
            let remote = RemoteAction::SettleChangeOwed { ticket: *ticket };
            vec![commands.request(machine, remote)?]
        }
        OperatorAction::FleetPrice { product, price } => {
            fleet_price(&mut commands, product, *price)?
        }
        OperatorAction::AcknowledgeAlert { alert, note } => {
            vec![acknowledge(alert, note, projection)?]
        }
    };
    let record = |action| OperatorRecord {
        operator: operator.to_owned(),
        at_ms,
        action,
    };
    Ok(actions.into_iter().map(record).collect())
}

/// An alert of a machine (and slot) the projection knows, with a note of
/// bounded length.
fn acknowledge(
    alert: &AlertKey,
    note: &str,
    projection: &Projection,
) -> Result<Recorded, ActionError> {
    let state = projection
        .machines
        .get(&alert.machine)
        .ok_or_else(|| ActionError::UnknownMachine(alert.machine.clone()))?;
    if let Some(slot) = alert.slot
        && !state.slots.contains_key(&slot)
    {
        return Err(ActionError::UnknownSlot {
            machine: alert.machine.clone(),
            slot,
        });
    }
    if note.chars().count() > NOTE_CHARS_MAX {
        return Err(ActionError::Invalid(format!(
            "a note has at most {NOTE_CHARS_MAX} characters"
        )));
    }
    Ok(Recorded::AlertAcknowledged {
        alert: alert.clone(),
        note: note.to_owned(),
    })
}

/// An account change (`action` is `AddUser`, `DisableUser` or
/// `ChangePassword`), checked by the rules the projection applies it with:
/// the name, whether the account exists, the hash being argon2id.
fn account(action: &OperatorAction, projection: &Projection) -> Result<Recorded, ActionError> {
    let recorded = match action {
        OperatorAction::AddUser {
            name,
            role,
            password_hash,
        } => Recorded::UserAdded {
            name: name.clone(),
            role: *role,
            password_hash: password_hash.clone(),
        },
        OperatorAction::DisableUser { name } => Recorded::UserDisabled { name: name.clone() },
        OperatorAction::ChangePassword {
            name,
            password_hash,
        } => Recorded::PasswordChanged {
            name: name.clone(),
            password_hash: password_hash.clone(),
        },
        other => {
            return Err(ActionError::Invalid(format!(
                "not an account change: {other:?}"
            )));
        }
    };
    projection
        .operators
        .check_action(&recorded)
        .map_err(|error| match error {
            OperatorError::UserExists(name) => ActionError::UserExists(name),
            OperatorError::UnknownUser(name) => ActionError::UnknownUser(name),
            other => ActionError::Invalid(other.to_string()),
        })?;
    Ok(recorded)
}

/// The head office's price for `product`: one command per slot of every
/// machine that sells it.
fn fleet_price(
    commands: &mut Commands<'_>,
    product: &str,
    price: ledger::Won,
) -> Result<Vec<Recorded>, ActionError> {
    validate_price(price).map_err(|e| ActionError::Invalid(e.to_string()))?;
    let targets: Vec<(MachineId, ledger::SlotId)> = commands
        .projection
        .machines
        .iter()
        .flat_map(|(machine, state)| {
            state
                .slots
                .values()
                .filter(|slot| slot.config.product.name == product)
                .map(|slot| (machine.clone(), slot.config.slot))
        })
        .collect();
    if targets.is_empty() {
        return Err(ActionError::UnknownProduct(product.to_owned()));
    }
    targets
        .into_iter()
        .map(|(machine, slot)| commands.request(&machine, RemoteAction::SetPrice { slot, price }))
        .collect()
}

/// Commands being planned for one request: ids continue per machine past
/// both the log's last request and the machine's last applied command.
struct Commands<'p> {
    projection: &'p Projection,
    /// The next id and the commands pending, per machine planned so far.
    planned: BTreeMap<MachineId, (u64, usize)>,
}

impl<'p> Commands<'p> {
    fn new(projection: &'p Projection) -> Commands<'p> {
        Commands {
            projection,
            planned: BTreeMap::new(),
        }
    }

    fn request(
        &mut self,
        machine: &MachineId,
        action: RemoteAction,
    ) -> Result<Recorded, ActionError> {
        let state = self
            .projection
            .machines
            .get(machine)
            .ok_or_else(|| ActionError::UnknownMachine(machine.clone()))?;
        check_remote(state, &action).map_err(|rejection| match rejection {
            Rejection::UnknownSlot(slot) => ActionError::UnknownSlot {
                machine: machine.clone(),
                slot,
            },
            other => ActionError::Invalid(format!("{machine}: {other}")),
        })?;
        let operators = &self.projection.operators;
        let (next_id, pending) = self.planned.entry(machine.clone()).or_insert_with(|| {
            let last = operators
                .last_command_id(machine)
                .max(state.last_remote_command_id);
            (last + 1, operators.pending_count(machine))
        });
        if *pending >= COMMANDS_PENDING_MAX {
            return Err(ActionError::Invalid(format!(
                "{machine} has {COMMANDS_PENDING_MAX} commands waiting to be applied; wait until it is back online and has applied them"
            )));
        }
        let command_id = *next_id;
        *next_id += 1;
        *pending += 1;
        Ok(Recorded::CommandRequested {
            machine: machine.clone(),
            command_id,
            action,
        })
    }
}

#[cfg(test)]
mod tests;

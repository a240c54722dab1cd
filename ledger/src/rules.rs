//! The vending rules: `decide(state, command) -> events or a rejection`.
//!
//! `decide` is pure: the clock and the randomness it needs (a salt for a new
//! password hash) come in through [`Context`]. It never changes state; the
//! caller appends the events durably and then applies them with
//! [`MachineState::apply`]. Every event `decide` returns is guaranteed to
//! apply cleanly to the state it was decided on.

use crate::admin::{self, PasswordParams, PolicyViolation};
use crate::catalog::{self, CatalogError, SlotConfig};
use crate::event::{Destination, Event, EventEnvelope, InsertRejection, Installation, Source};
use crate::ids::{MachineId, SlotId};
use crate::money::{CoinCounts, Denomination, MoneyKind, Won, format_won, make_change};
use crate::state::{ApplyError, ESCROW_BILLS_LIMIT, ESCROW_LIMIT, MachineState};
use serde::{Deserialize, Serialize};

/// What the outside world supplies to a decision.
#[derive(Clone, Copy, Debug)]
pub struct Context {
    /// The machine's clock, milliseconds since the Unix epoch.
    pub now_ms: i64,
    /// Fresh random bytes, used as the salt when a password is hashed.
    pub salt: [u8; 16],
    pub password_params: PasswordParams,
}

/// A request from the dashboard, delivered to the machine over its link.
/// Ids increase per machine; an id at or below the last one applied is a
/// resend and is ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteCommand {
    pub command_id: u64,
    pub action: RemoteAction,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteAction {
    SetPrice { slot: SlotId, price: Won },
    Rename { slot: SlotId, name: String },
    SettleChangeOwed { ticket: u64 },
}

/// Everything a customer, an operator or the dashboard can ask a machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Install {
        slots: Vec<SlotConfig>,
        tube_capacity: CoinCounts,
        stacker_capacity_bills: u32,
        admin_password: String,
    },
    Insert {
        kind: MoneyKind,
        value: Won,
    },
    Purchase {
        slot: SlotId,
    },
    CancelLastPurchase,
    ReturnChange,
    AdminLogin {
        password: String,
    },
    AdminLogout,
    ChangePassword {
        current: String,
        new: String,
    },
    /// Adds `count` items; `None` fills the slot to capacity.
    Refill {
        slot: SlotId,
        count: Option<u32>,
    },
    /// Fills every slot to capacity.
    RefillAll,
    LoadTube {
        denomination: Denomination,
        count: u32,
    },
    CollectCash {
        counted: Won,
    },
    SetPrice {
        slot: SlotId,
        price: Won,
    },
    Rename {
        slot: SlotId,
        name: String,
    },
    ConfigureSlot(SlotConfig),
    SettleChangeOwed {
        ticket: u64,
    },
    Remote(RemoteCommand),
}

impl Command {
    /// Commands only a logged-in operator at the machine may give.
    fn needs_admin(&self) -> bool {
        matches!(
            self,
            Command::ChangePassword { .. }
                | Command::Refill { .. }
                | Command::RefillAll
                | Command::LoadTube { .. }
                | Command::CollectCash { .. }
                | Command::SetPrice { .. }
                | Command::Rename { .. }
                | Command::ConfigureSlot(_)
                | Command::SettleChangeOwed { .. }
        )
    }
}

/// Why a command produced no event. The text is what the screen shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the machine is not installed")]
    NotInstalled,
    #[error("the machine is already installed")]
    AlreadyInstalled,
    #[error("there is no slot {0}")]
    UnknownSlot(SlotId),
    #[error("{0} is sold out")]
    SoldOut(String),
    #[error("insert {missing} won more to buy {product}")]
    InsufficientBalance { product: String, missing: Won },
    #[error("there is no purchase to cancel")]
    NothingToCancel,
    #[error("there is no balance to return")]
    NothingToReturn,
    #[error("a customer is using the machine: finish the session first")]
    CustomerSessionActive,
    #[error("log in as admin first")]
    AdminRequired,
    #[error("admin is locked for {seconds_left} more seconds after too many failed logins")]
    AdminLocked { seconds_left: i64 },
    #[error("the current password is wrong")]
    WrongPassword,
    #[error(transparent)]
    Policy(#[from] PolicyViolation),
    #[error("slot {slot} has room for {room} more")]
    OverCapacity { slot: SlotId, room: u32 },
    #[error("every slot is already full")]
    NothingToRefill,
    #[error("{0} is not a coin tube")]
    NotACoin(Denomination),
    #[error("the {denomination} tube has room for {room} more")]
    TubeFull {
        denomination: Denomination,
        room: u32,
    },
    #[error("count must be more than zero")]
    ZeroCount,
    #[error("counted cash must be between 0 and {max} won", max = format_won(COUNTED_CASH_MAX))]
    BadCount,
    #[error("there is nothing to collect")]
    NothingToCollect,
    #[error("there is no open change ticket {0}")]
    UnknownTicket(u64),
    #[error("slot {slot} holds {stock} items, more than the new capacity")]
    StockAboveCapacity { slot: SlotId, stock: u32 },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("installation: {0}")]
    BadInstallation(String),
    #[error("internal error: a decided event does not apply: {0}")]
    Internal(ApplyError),
}

// The cause is in the message, not also a `source` (see `StoreError::Db`).
impl From<ApplyError> for Rejection {
    fn from(error: ApplyError) -> Rejection {
        Rejection::Internal(error)
    }
}

/// Largest counted amount an operator can enter at a collection.
pub const COUNTED_CASH_MAX: Won = 100_000_000;

/// Decides what happens when `command` reaches a machine in `state`.
pub fn decide(
    state: &MachineState,
    command: &Command,
    ctx: &Context,
) -> Result<Vec<Event>, Rejection> {
    if let Command::Install { .. } = command {
        return decide_install(state, command, ctx);
    }
    check_access(state, command)?;
    let events = decide_installed(state, command, ctx)?;
    verify_applies(state, &events, ctx.now_ms)?;
    Ok(events)
}

/// Pre-conditions shared by every command to an installed machine: it is
/// installed, and operator commands need a logged-in admin and no customer
/// in the middle of a session (whose escrow they could disturb).
fn check_access(state: &MachineState, command: &Command) -> Result<(), Rejection> {
    if !state.installed {
        return Err(Rejection::NotInstalled);
    }
    if command.needs_admin() {
        if !state.admin.logged_in {
            return Err(Rejection::AdminRequired);
        }
        if state.escrow.active {
            return Err(Rejection::CustomerSessionActive);
        }
    }
    Ok(())
}

/// The events of one command to an installed machine whose access checks
/// passed; each command's rules live in its own function.
fn decide_installed(
    state: &MachineState,
    command: &Command,
    ctx: &Context,
) -> Result<Vec<Event>, Rejection> {
    Ok(match command {
        Command::Install { .. } => unreachable!("decide handles Install first"),
        Command::Insert { kind, value } => vec![decide_insert(state, *kind, *value)],
        Command::Purchase { slot } => decide_purchase(state, *slot)?,
        Command::CancelLastPurchase => vec![decide_cancel(state)?],
        Command::ReturnChange => decide_return_change(state)?,
        Command::AdminLogin { password } => decide_login(state, password, ctx)?,
        Command::AdminLogout => decide_logout(state),
        Command::ChangePassword { current, new } => {
            vec![decide_password_change(state, current, new, ctx)?]
        }
        Command::Refill { slot, count } => vec![decide_refill(state, *slot, *count)?],
        Command::RefillAll => decide_refill_all(state)?,
        Command::LoadTube {
            denomination,
            count,
        } => vec![decide_load_tube(state, *denomination, *count)?],
        Command::CollectCash { counted } => vec![decide_collect(state, *counted)?],
        Command::SetPrice { slot, price } => {
            vec![price_event(state, *slot, *price, Source::Local)?]
        }
        Command::Rename { slot, name } => vec![rename_event(state, *slot, name, Source::Local)?],
        Command::ConfigureSlot(config) => vec![decide_configure_slot(state, config)?],
        Command::SettleChangeOwed { ticket } => vec![settle_event(state, *ticket, Source::Local)?],
        Command::Remote(remote) => decide_remote(state, remote),
    })
}

/// Post-condition: what `decide` returns applies cleanly. A failure here is
/// a bug in the rules, reported as [`Rejection::Internal`] rather than
/// letting a bad event reach the log.
fn verify_applies(state: &MachineState, events: &[Event], at_ms: i64) -> Result<(), Rejection> {
    if events.is_empty() {
        return Ok(());
    }
    let mut scratch = state.clone();
    for event in events {
        scratch.apply_event(event, at_ms)?;
    }
    debug_assert_eq!(scratch.check_consistency(), Ok(()));
    Ok(())
}

fn decide_install(
    state: &MachineState,
    command: &Command,
    ctx: &Context,
) -> Result<Vec<Event>, Rejection> {
    let Command::Install {
        slots,
        tube_capacity,
        stacker_capacity_bills,
        admin_password,
    } = command
    else {
        unreachable!("only called for Install")
    };
    if state.installed {
        return Err(Rejection::AlreadyInstalled);
    }
    admin::check_policy(admin_password)?;
    let admin_password_hash = admin::hash_password(admin_password, &ctx.salt, ctx.password_params)
        .map_err(|e| Rejection::BadInstallation(e.to_string()))?;
    if slots.is_empty() || slots.len() > catalog::SLOTS_MAX {
        return Err(Rejection::BadInstallation(format!(
            "a machine needs 1 to {} slots",
            catalog::SLOTS_MAX
        )));
    }
    let mut events = vec![Event::Installed(Installation {
        tube_capacity: *tube_capacity,
        stacker_capacity_bills: *stacker_capacity_bills,
        admin_password_hash,
    })];
    events.extend(slots.iter().cloned().map(Event::SlotConfigured));
    let mut scratch = state.clone();
    for event in &events {
        scratch
            .apply_event(event, ctx.now_ms)
            .map_err(|e| match e {
                ApplyError::Catalog(c) => Rejection::Catalog(c),
                other => Rejection::BadInstallation(other.to_string()),
            })?;
    }
    Ok(events)
}

/// An insert always produces an event: accepted, or rejected and returned.
fn decide_insert(state: &MachineState, kind: MoneyKind, value: Won) -> Event {
    let rejected = |reason| Event::MoneyRejected {
        kind,
        value,
        reason,
    };
    let Some(denomination) = Denomination::recognise(kind, value) else {
        return rejected(InsertRejection::UnknownDenomination);
    };
    if state.escrow.balance + value > ESCROW_LIMIT {
        return rejected(InsertRejection::BalanceLimit);
    }
    let destination = match denomination.tube_index() {
        Some(tube) if state.tubes.0[tube] < state.tube_capacity.0[tube] => Destination::Tube,
        Some(_) => Destination::CashBox,
        None => {
            if state.escrow.bills + value > ESCROW_BILLS_LIMIT {
                return rejected(InsertRejection::BillLimit);
            }
            if state.stacker_bills >= state.stacker_capacity_bills {
                return rejected(InsertRejection::StackerFull);
            }
            Destination::Stacker
        }
    };
    Event::MoneyInserted {
        denomination,
        destination,
    }
}

fn decide_purchase(state: &MachineState, slot: SlotId) -> Result<Vec<Event>, Rejection> {
    let s = state.slots.get(&slot).ok_or(Rejection::UnknownSlot(slot))?;
    let product = &s.config.product;
    if s.sold_out() {
        return Err(Rejection::SoldOut(product.name.clone()));
    }
    if state.escrow.balance < product.price {
        return Err(Rejection::InsufficientBalance {
            product: product.name.clone(),
            missing: product.price - state.escrow.balance,
        });
    }
    Ok(vec![Event::ProductPurchased {
        slot,
        product: product.name.clone(),
        price: product.price,
    }])
}

/// Cancel walks back the most recent purchase of the session.
fn decide_cancel(state: &MachineState) -> Result<Event, Rejection> {
    let last = state
        .escrow
        .purchases
        .last()
        .ok_or(Rejection::NothingToCancel)?;
    Ok(Event::PurchaseCancelled {
        slot: last.slot,
        product: last.product.clone(),
        price: last.price,
    })
}

fn decide_return_change(state: &MachineState) -> Result<Vec<Event>, Rejection> {
    if !state.escrow.active {
        return Err(Rejection::NothingToReturn);
    }
    let plan = make_change(state.escrow.balance, &state.tubes);
    let mut events = vec![Event::ChangeReturned {
        coins: plan.coins,
        paid: plan.paid,
    }];
    if plan.owed > 0 {
        events.push(Event::ChangeOwed {
            ticket: state.next_ticket,
            amount: plan.owed,
        });
    }
    Ok(events)
}

fn decide_login(
    state: &MachineState,
    password: &str,
    ctx: &Context,
) -> Result<Vec<Event>, Rejection> {
    if state.admin.is_locked(ctx.now_ms) {
        let until = state.admin.locked_until_ms.unwrap_or(ctx.now_ms);
        return Err(Rejection::AdminLocked {
            seconds_left: (until - ctx.now_ms + 999) / 1_000,
        });
    }
    if state.escrow.active {
        return Err(Rejection::CustomerSessionActive);
    }
    if admin::verify_password(password, &state.admin.password_hash) {
        return Ok(vec![Event::AdminLoggedIn]);
    }
    let failures = state.admin.failures + 1;
    let mut events = vec![Event::AdminLoginFailed { failures }];
    if failures >= admin::LOGIN_FAILURES_MAX {
        events.push(Event::AdminLockedOut {
            until_ms: ctx.now_ms + admin::LOCKOUT_MS,
        });
    }
    Ok(events)
}

/// Logging out twice records nothing the second time.
fn decide_logout(state: &MachineState) -> Vec<Event> {
    if state.admin.logged_in {
        vec![Event::AdminLoggedOut]
    } else {
        Vec::new()
    }
}

/// The current password must be given again, and the new one must meet
/// the policy; only its argon2id hash goes into the event.
fn decide_password_change(
    state: &MachineState,
    current: &str,
    new: &str,
    ctx: &Context,
) -> Result<Event, Rejection> {
    if !admin::verify_password(current, &state.admin.password_hash) {
        return Err(Rejection::WrongPassword);
    }
    admin::check_policy(new)?;
    let password_hash = admin::hash_password(new, &ctx.salt, ctx.password_params)
        .map_err(|e| Rejection::BadInstallation(e.to_string()))?;
    Ok(Event::AdminPasswordChanged { password_hash })
}

fn decide_refill(
    state: &MachineState,
    slot: SlotId,
    count: Option<u32>,
) -> Result<Event, Rejection> {
    let s = state.slots.get(&slot).ok_or(Rejection::UnknownSlot(slot))?;
    let room = s.config.capacity - s.stock;
    let added = count.unwrap_or(room);
    if added == 0 {
        return Err(if room == 0 {
            Rejection::OverCapacity { slot, room }
        } else {
            Rejection::ZeroCount
        });
    }
    if added > room {
        return Err(Rejection::OverCapacity { slot, room });
    }
    Ok(Event::SlotRefilled { slot, added })
}

/// One refill event per slot that has room, filling it to capacity.
fn decide_refill_all(state: &MachineState) -> Result<Vec<Event>, Rejection> {
    let events: Vec<Event> = state
        .slots
        .values()
        .filter(|s| s.stock < s.config.capacity)
        .map(|s| Event::SlotRefilled {
            slot: s.config.slot,
            added: s.config.capacity - s.stock,
        })
        .collect();
    if events.is_empty() {
        return Err(Rejection::NothingToRefill);
    }
    Ok(events)
}

fn decide_load_tube(
    state: &MachineState,
    denomination: Denomination,
    count: u32,
) -> Result<Event, Rejection> {
    let tube = denomination
        .tube_index()
        .ok_or(Rejection::NotACoin(denomination))?;
    if count == 0 {
        return Err(Rejection::ZeroCount);
    }
    let room = state.tube_capacity.0[tube] - state.tubes.0[tube];
    if count > room {
        return Err(Rejection::TubeFull { denomination, room });
    }
    Ok(Event::TubeLoaded {
        denomination,
        count,
    })
}

/// The event records what the ledger expected next to what the operator
/// counted, so the over/short is visible to auditors.
fn decide_collect(state: &MachineState, counted: Won) -> Result<Event, Rejection> {
    if !(0..=COUNTED_CASH_MAX).contains(&counted) {
        return Err(Rejection::BadCount);
    }
    if state.cash_box == 0 && state.stacker_bills == 0 && counted == 0 {
        return Err(Rejection::NothingToCollect);
    }
    Ok(Event::CashCollected {
        cash_box: state.cash_box,
        stacker: state.stacker_total(),
        counted,
    })
}

/// A reconfigured slot keeps its stock, which must fit the new capacity.
fn decide_configure_slot(state: &MachineState, config: &SlotConfig) -> Result<Event, Rejection> {
    config.validate()?;
    if let Some(existing) = state.slots.get(&config.slot)
        && existing.stock > config.capacity
    {
        return Err(Rejection::StockAboveCapacity {
            slot: config.slot,
            stock: existing.stock,
        });
    }
    Ok(Event::SlotConfigured(config.clone()))
}

fn price_event(
    state: &MachineState,
    slot: SlotId,
    price: Won,
    source: Source,
) -> Result<Event, Rejection> {
    state.slots.get(&slot).ok_or(Rejection::UnknownSlot(slot))?;
    catalog::validate_price(price)?;
    Ok(Event::PriceChanged {
        slot,
        price,
        source,
    })
}

fn rename_event(
    state: &MachineState,
    slot: SlotId,
    name: &str,
    source: Source,
) -> Result<Event, Rejection> {
    state.slots.get(&slot).ok_or(Rejection::UnknownSlot(slot))?;
    catalog::validate_name(name)?;
    Ok(Event::ProductRenamed {
        slot,
        name: name.to_owned(),
        source,
    })
}

fn settle_event(state: &MachineState, ticket: u64, source: Source) -> Result<Event, Rejection> {
    let open = state
        .owed
        .get(&ticket)
        .ok_or(Rejection::UnknownTicket(ticket))?;
    Ok(Event::ChangeOwedSettled {
        ticket,
        amount: open.amount,
        source,
    })
}

/// A remote command either applies or is answered with a rejection event, so
/// the dashboard always learns the outcome. A resend of an applied command
/// produces nothing.
fn decide_remote(state: &MachineState, remote: &RemoteCommand) -> Vec<Event> {
    if remote.command_id <= state.last_remote_command_id {
        return Vec::new();
    }
    let source = Source::Remote {
        command_id: remote.command_id,
    };
    match remote_event(state, &remote.action, source) {
        Ok(event) => vec![event],
        Err(rejection) => vec![Event::RemoteCommandRejected {
            command_id: remote.command_id,
            reason: rejection
                .to_string()
                .chars()
                .take(crate::event::REASON_CHARS_MAX)
                .collect(),
        }],
    }
}

/// The event a remote command makes, by the rules of the same change made
/// at the machine.
fn remote_event(
    state: &MachineState,
    action: &RemoteAction,
    source: Source,
) -> Result<Event, Rejection> {
    match action {
        RemoteAction::SetPrice { slot, price } => price_event(state, *slot, *price, source),
        RemoteAction::Rename { slot, name } => rename_event(state, *slot, name, source),
        RemoteAction::SettleChangeOwed { ticket } => settle_event(state, *ticket, source),
    }
}

/// Whether a machine in `state` would apply `action` if it arrived now as
/// its next remote command, by the very rules it will use: the primary
/// checks an operator's request with this before it records the command.
/// (The machine decides again when the command arrives; its state may have
/// moved on, and then it records the refusal.)
pub fn check_remote(state: &MachineState, action: &RemoteAction) -> Result<(), Rejection> {
    let command = Command::Remote(RemoteCommand {
        command_id: state.last_remote_command_id + 1,
        action: action.clone(),
    });
    check_access(state, &command)?;
    let source = Source::Remote {
        command_id: state.last_remote_command_id + 1,
    };
    let event = remote_event(state, action, source)?;
    verify_applies(state, &[event], state.last_at_ms)
}

/// Wraps decided events in envelopes that continue the machine's stream.
pub fn envelopes(
    machine_id: &MachineId,
    state: &MachineState,
    events: Vec<Event>,
    at_ms: i64,
) -> Vec<EventEnvelope> {
    events
        .into_iter()
        .zip(state.last_seq + 1..)
        .map(|(event, machine_seq)| EventEnvelope {
            machine_id: machine_id.clone(),
            machine_seq,
            at_ms,
            event,
        })
        .collect()
}

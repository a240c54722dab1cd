//! The state of one machine, rebuilt from its events by [`MachineState::apply`].
//!
//! `apply` is the only way state changes, on the machine and on every
//! replica alike. Events in a log come from outside, so `apply` validates an
//! event completely before it changes anything: an impossible event (a
//! purchase from an empty slot, an overdrawn tube, a gap in the sequence) is
//! a clear [`ApplyError`] and leaves the state untouched.

use crate::admin;
use crate::catalog::{CatalogError, CategoryNode, SlotConfig};
use crate::event::{Destination, Event, EventEnvelope, Installation, Source};
use crate::ids::SlotId;
use crate::money::{CoinCounts, Denomination, Won, can_pay_every_amount_up_to};
use crate::posting::{Account, Balances, PostingError, postings};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most the customer's balance may hold.
pub const ESCROW_LIMIT: Won = 7_000;
/// Most the bills inserted in one session may add up to.
pub const ESCROW_BILLS_LIMIT: Won = 5_000;
/// How many purchases of a session can be walked back by cancel. Older ones
/// fall off the stack (and become final).
pub const PURCHASE_STACK_MAX: usize = 32;
/// Most change-owed tickets kept open at once per machine.
pub const OWED_TICKETS_MAX: usize = 10_000;
/// "Exact change only" lights when the tubes cannot pay every amount up to
/// the change from one 1,000-won bill.
pub const EXACT_CHANGE_PROBE: Won = 990;
/// Default coin tube capacities (10, 50, 100, 500).
pub const DEFAULT_TUBE_CAPACITY: CoinCounts = CoinCounts([100, 100, 100, 50]);
/// Default number of bills the stacker holds.
pub const DEFAULT_STACKER_CAPACITY_BILLS: u32 = 300;
/// Largest capacity accepted for a tube or the stacker.
pub const HOLDER_CAPACITY_MAX: u32 = 10_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub config: SlotConfig,
    pub stock: u32,
}

impl Slot {
    pub fn sold_out(&self) -> bool {
        self.stock == 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseRecord {
    pub slot: SlotId,
    pub product: String,
    pub price: Won,
}

/// The current customer's session: what they put in and what they bought.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escrow {
    pub active: bool,
    pub balance: Won,
    /// Bills inserted during this session (the 5,000-won bill limit).
    pub bills: Won,
    /// Purchases that cancel can still walk back, most recent last.
    pub purchases: Vec<PurchaseRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwedTicket {
    pub ticket: u64,
    pub amount: Won,
    pub at_ms: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminState {
    pub password_hash: String,
    pub failures: u32,
    pub locked_until_ms: Option<i64>,
    pub logged_in: bool,
}

impl AdminState {
    pub fn is_locked(&self, now_ms: i64) -> bool {
        self.locked_until_ms.is_some_and(|until| now_ms < until)
    }
}

/// Lifetime counters kept for dashboards.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineStats {
    pub purchases: u64,
    pub cancels: u64,
    /// Net sales (purchases minus cancels), in won.
    pub sales_won: Won,
    pub change_paid_won: Won,
    pub inserts_rejected: u64,
    pub collections: u64,
    pub over_short_won: Won,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineState {
    pub installed: bool,
    pub slots: BTreeMap<SlotId, Slot>,
    pub tubes: CoinCounts,
    pub tube_capacity: CoinCounts,
    pub cash_box: Won,
    pub stacker_bills: u32,
    pub stacker_capacity_bills: u32,
    pub escrow: Escrow,
    pub owed: BTreeMap<u64, OwedTicket>,
    pub next_ticket: u64,
    pub admin: AdminState,
    pub balances: Balances,
    pub last_remote_command_id: u64,
    /// Sequence number of the last applied event (0 before the first).
    pub last_seq: u64,
    pub last_at_ms: i64,
    pub stats: MachineStats,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("event #{got} is out of order: expected #{expected}")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("the machine is not installed yet")]
    NotInstalled,
    #[error("the machine is already installed")]
    AlreadyInstalled,
    #[error("installation is invalid: {0}")]
    BadInstallation(String),
    #[error("slot {0} does not exist")]
    UnknownSlot(SlotId),
    #[error("slot {slot}: {problem}")]
    Stock { slot: SlotId, problem: &'static str },
    #[error("{0} cannot go where the event says")]
    BadDestination(Denomination),
    #[error("the {0} tube would overflow")]
    TubeOverflow(Denomination),
    #[error("the bill stacker would overflow")]
    StackerOverflow,
    #[error("escrow limit broken: {0}")]
    EscrowLimit(&'static str),
    #[error("no customer session is active")]
    NoSession,
    #[error("event does not match the customer session: {0}")]
    SessionMismatch(&'static str),
    #[error("change ticket {0} is unknown")]
    UnknownTicket(u64),
    #[error("too many open change-owed tickets")]
    TooManyTickets,
    #[error("cash collection does not match the machine: {0}")]
    CollectionMismatch(&'static str),
    #[error("remote command {got} is not newer than {last}")]
    StaleRemoteCommand { got: u64, last: u64 },
    #[error("admin event is inconsistent: {0}")]
    Admin(&'static str),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Posting(#[from] PostingError),
}

impl MachineState {
    /// Applies one event of this machine's stream.
    pub fn apply(&mut self, envelope: &EventEnvelope) -> Result<(), ApplyError> {
        let expected = self.last_seq + 1;
        if envelope.machine_seq != expected {
            return Err(ApplyError::OutOfOrder {
                expected,
                got: envelope.machine_seq,
            });
        }
        self.apply_event(&envelope.event, envelope.at_ms)?;
        self.last_seq = envelope.machine_seq;
        self.last_at_ms = self.last_at_ms.max(envelope.at_ms);
        Ok(())
    }

    /// Applies an event without sequence bookkeeping (used by [`apply`] and
    /// by `decide`'s look-ahead over multi-event decisions).
    ///
    /// [`apply`]: MachineState::apply
    pub(crate) fn apply_event(&mut self, event: &Event, at_ms: i64) -> Result<(), ApplyError> {
        self.check(event)?;
        self.balances.apply(&postings(event))?;
        self.mutate(event, at_ms);
        Ok(())
    }

    /// Every check an event must pass; changes nothing.
    fn check(&self, event: &Event) -> Result<(), ApplyError> {
        if let Event::Installed(installation) = event {
            return self.check_installation(installation);
        }
        if !self.installed {
            return Err(ApplyError::NotInstalled);
        }
        match event {
            Event::Installed(_) => unreachable!("handled above"),
            Event::MoneyInserted {
                denomination,
                destination,
            } => self.check_insert(*denomination, *destination),
            Event::ProductPurchased { slot, price, .. } => {
                let stock = self.slot(*slot)?.stock;
                if stock == 0 {
                    return Err(ApplyError::Stock {
                        slot: *slot,
                        problem: "purchase from an empty slot",
                    });
                }
                if !self.escrow.active || self.escrow.balance < *price || *price <= 0 {
                    return Err(ApplyError::SessionMismatch("purchase exceeds the balance"));
                }
                Ok(())
            }
            Event::PurchaseCancelled {
                slot,
                product,
                price,
            } => {
                let last = self
                    .escrow
                    .purchases
                    .last()
                    .ok_or(ApplyError::SessionMismatch("no purchase to cancel"))?;
                if last.slot != *slot || last.product != *product || last.price != *price {
                    return Err(ApplyError::SessionMismatch("cancel of another purchase"));
                }
                let s = self.slot(*slot)?;
                if s.stock >= s.config.capacity {
                    return Err(ApplyError::Stock {
                        slot: *slot,
                        problem: "cancel would exceed capacity",
                    });
                }
                Ok(())
            }
            Event::ChangeReturned { coins, paid } => {
                if !self.escrow.active {
                    return Err(ApplyError::NoSession);
                }
                if coins.total() != *paid || *paid > self.escrow.balance {
                    return Err(ApplyError::SessionMismatch(
                        "change does not match the balance",
                    ));
                }
                Ok(())
            }
            Event::ChangeOwed { ticket, amount } => {
                if !self.escrow.active || *amount != self.escrow.balance || *amount <= 0 {
                    return Err(ApplyError::SessionMismatch(
                        "change owed is not the remaining balance",
                    ));
                }
                if *ticket != self.next_ticket {
                    return Err(ApplyError::UnknownTicket(*ticket));
                }
                if self.owed.len() >= OWED_TICKETS_MAX {
                    return Err(ApplyError::TooManyTickets);
                }
                Ok(())
            }
            Event::ChangeOwedSettled {
                ticket,
                amount,
                source,
            } => {
                self.check_source(source)?;
                match self.owed.get(ticket) {
                    Some(open) if open.amount == *amount => Ok(()),
                    _ => Err(ApplyError::UnknownTicket(*ticket)),
                }
            }
            Event::SlotRefilled { slot, added } => {
                let s = self.slot(*slot)?;
                if *added == 0 || s.stock.saturating_add(*added) > s.config.capacity {
                    return Err(ApplyError::Stock {
                        slot: *slot,
                        problem: "refill beyond capacity",
                    });
                }
                Ok(())
            }
            Event::TubeLoaded {
                denomination,
                count,
            } => {
                let tube = denomination
                    .tube_index()
                    .ok_or(ApplyError::BadDestination(*denomination))?;
                if *count == 0
                    || self.tubes.0[tube].saturating_add(*count) > self.tube_capacity.0[tube]
                {
                    return Err(ApplyError::TubeOverflow(*denomination));
                }
                Ok(())
            }
            Event::CashCollected {
                cash_box,
                stacker,
                counted,
            } => {
                if *cash_box != self.cash_box || *stacker != self.stacker_total() {
                    return Err(ApplyError::CollectionMismatch("expected amounts differ"));
                }
                if *counted < 0 {
                    return Err(ApplyError::CollectionMismatch("negative count"));
                }
                Ok(())
            }
            Event::PriceChanged {
                slot,
                price,
                source,
            } => {
                self.slot(*slot)?;
                self.check_source(source)?;
                Ok(crate::catalog::validate_price(*price)?)
            }
            Event::ProductRenamed { slot, name, source } => {
                self.slot(*slot)?;
                self.check_source(source)?;
                Ok(crate::catalog::validate_name(name)?)
            }
            Event::SlotConfigured(config) => {
                config.validate()?;
                if !self.slots.contains_key(&config.slot)
                    && self.slots.len() >= crate::catalog::SLOTS_MAX
                {
                    return Err(ApplyError::Catalog(CatalogError::BadSlot));
                }
                if let Some(existing) = self.slots.get(&config.slot)
                    && existing.stock > config.capacity
                {
                    return Err(ApplyError::Stock {
                        slot: config.slot,
                        problem: "stock above the new capacity",
                    });
                }
                Ok(())
            }
            Event::AdminLoggedIn | Event::AdminLoggedOut => Ok(()),
            Event::AdminLoginFailed { failures } => {
                if *failures != self.admin.failures + 1 || *failures > admin::LOGIN_FAILURES_MAX {
                    return Err(ApplyError::Admin("failure count out of step"));
                }
                Ok(())
            }
            Event::AdminLockedOut { .. } => {
                if self.admin.failures != admin::LOGIN_FAILURES_MAX {
                    return Err(ApplyError::Admin("lockout before the failure limit"));
                }
                Ok(())
            }
            Event::AdminPasswordChanged { password_hash } => admin::validate_hash(password_hash)
                .map_err(|_| ApplyError::Admin("password hash is not valid argon2id")),
            Event::RemoteCommandRejected { command_id, .. } => self.check_source(&Source::Remote {
                command_id: *command_id,
            }),
            Event::MoneyRejected { .. } => Ok(()),
        }
    }

    fn check_installation(&self, installation: &Installation) -> Result<(), ApplyError> {
        if self.installed {
            return Err(ApplyError::AlreadyInstalled);
        }
        let bad = |why: &str| ApplyError::BadInstallation(why.to_owned());
        let capacities_ok = installation
            .tube_capacity
            .0
            .iter()
            .chain(std::iter::once(&installation.stacker_capacity_bills))
            .all(|&c| (1..=HOLDER_CAPACITY_MAX).contains(&c));
        if !capacities_ok {
            return Err(bad("tube and stacker capacities must be 1 to 10,000"));
        }
        admin::validate_hash(&installation.admin_password_hash)
            .map_err(|e| ApplyError::BadInstallation(e.to_string()))
    }

    fn check_insert(
        &self,
        denomination: Denomination,
        destination: Destination,
    ) -> Result<(), ApplyError> {
        let value = denomination.value();
        if self.escrow.balance + value > ESCROW_LIMIT {
            return Err(ApplyError::EscrowLimit("balance above 7,000 won"));
        }
        match (denomination.tube_index(), destination) {
            (Some(tube), Destination::Tube) => {
                if self.tubes.0[tube] >= self.tube_capacity.0[tube] {
                    return Err(ApplyError::TubeOverflow(denomination));
                }
            }
            (Some(_), Destination::CashBox) => {}
            (None, Destination::Stacker) => {
                if self.escrow.bills + value > ESCROW_BILLS_LIMIT {
                    return Err(ApplyError::EscrowLimit("bills above 5,000 won"));
                }
                if self.stacker_bills >= self.stacker_capacity_bills {
                    return Err(ApplyError::StackerOverflow);
                }
            }
            _ => return Err(ApplyError::BadDestination(denomination)),
        }
        Ok(())
    }

    fn check_source(&self, source: &Source) -> Result<(), ApplyError> {
        match *source {
            Source::Remote { command_id } if command_id <= self.last_remote_command_id => {
                Err(ApplyError::StaleRemoteCommand {
                    got: command_id,
                    last: self.last_remote_command_id,
                })
            }
            _ => Ok(()),
        }
    }

    /// Changes state for an event that passed [`check`](Self::check).
    fn mutate(&mut self, event: &Event, at_ms: i64) {
        match event {
            Event::Installed(installation) => {
                self.installed = true;
                self.tube_capacity = installation.tube_capacity;
                self.stacker_capacity_bills = installation.stacker_capacity_bills;
                self.admin.password_hash = installation.admin_password_hash.clone();
                self.next_ticket = 1;
            }
            Event::MoneyInserted {
                denomination,
                destination,
            } => {
                let value = denomination.value();
                match (destination, denomination.tube_index()) {
                    (Destination::Tube, Some(tube)) => self.tubes.0[tube] += 1,
                    (Destination::CashBox, _) => self.cash_box += value,
                    _ => {
                        self.stacker_bills += 1;
                        self.escrow.bills += value;
                    }
                }
                self.escrow.active = true;
                self.escrow.balance += value;
            }
            Event::MoneyRejected { .. } => self.stats.inserts_rejected += 1,
            Event::ProductPurchased {
                slot,
                product,
                price,
            } => {
                self.slot_mut(*slot).stock -= 1;
                self.escrow.balance -= price;
                if self.escrow.purchases.len() == PURCHASE_STACK_MAX {
                    self.escrow.purchases.remove(0);
                }
                self.escrow.purchases.push(PurchaseRecord {
                    slot: *slot,
                    product: product.clone(),
                    price: *price,
                });
                self.stats.purchases += 1;
                self.stats.sales_won += price;
            }
            Event::PurchaseCancelled { slot, price, .. } => {
                self.escrow.purchases.pop();
                self.slot_mut(*slot).stock += 1;
                self.escrow.balance += price;
                self.stats.cancels += 1;
                self.stats.sales_won -= price;
            }
            Event::ChangeReturned { coins, paid } => {
                for (tube, count) in coins.0.iter().enumerate() {
                    self.tubes.0[tube] -= count;
                }
                self.escrow.balance -= paid;
                self.stats.change_paid_won += paid;
                if self.escrow.balance == 0 {
                    self.escrow = Escrow::default();
                }
            }
            Event::ChangeOwed { ticket, amount } => {
                self.owed.insert(
                    *ticket,
                    OwedTicket {
                        ticket: *ticket,
                        amount: *amount,
                        at_ms,
                    },
                );
                self.next_ticket += 1;
                self.escrow = Escrow::default();
            }
            Event::ChangeOwedSettled { ticket, source, .. } => {
                self.owed.remove(ticket);
                self.note_source(source);
            }
            Event::SlotRefilled { slot, added } => self.slot_mut(*slot).stock += added,
            Event::TubeLoaded {
                denomination,
                count,
            } => {
                let tube = denomination.tube_index().expect("checked: a coin");
                self.tubes.0[tube] += count;
            }
            Event::CashCollected {
                cash_box,
                stacker,
                counted,
            } => {
                self.cash_box = 0;
                self.stacker_bills = 0;
                self.stats.collections += 1;
                self.stats.over_short_won += counted - cash_box - stacker;
            }
            Event::PriceChanged {
                slot,
                price,
                source,
            } => {
                self.slot_mut(*slot).config.product.price = *price;
                self.note_source(source);
            }
            Event::ProductRenamed { slot, name, source } => {
                self.slot_mut(*slot).config.product.name = name.clone();
                self.note_source(source);
            }
            Event::SlotConfigured(config) => {
                let stock = self.slots.get(&config.slot).map_or(0, |s| s.stock);
                self.slots.insert(
                    config.slot,
                    Slot {
                        config: config.clone(),
                        stock,
                    },
                );
            }
            Event::AdminLoggedIn => {
                self.admin.logged_in = true;
                self.admin.failures = 0;
                self.admin.locked_until_ms = None;
            }
            Event::AdminLoginFailed { failures } => self.admin.failures = *failures,
            Event::AdminLockedOut { until_ms } => {
                self.admin.locked_until_ms = Some(*until_ms);
                self.admin.failures = 0;
                self.admin.logged_in = false;
            }
            Event::AdminLoggedOut => self.admin.logged_in = false,
            Event::AdminPasswordChanged { password_hash } => {
                self.admin.password_hash = password_hash.clone();
            }
            Event::RemoteCommandRejected { command_id, .. } => {
                self.last_remote_command_id = *command_id;
            }
        }
    }

    fn note_source(&mut self, source: &Source) {
        if let Source::Remote { command_id } = source {
            self.last_remote_command_id = *command_id;
        }
    }

    pub fn slot(&self, slot: SlotId) -> Result<&Slot, ApplyError> {
        self.slots.get(&slot).ok_or(ApplyError::UnknownSlot(slot))
    }

    fn slot_mut(&mut self, slot: SlotId) -> &mut Slot {
        self.slots.get_mut(&slot).expect("checked: the slot exists")
    }

    /// Bills in the stacker, in won.
    pub fn stacker_total(&self) -> Won {
        Won::from(self.stacker_bills) * Denomination::Bill1000.value()
    }

    /// Total change owed to customers.
    pub fn owed_total(&self) -> Won {
        self.owed.values().map(|t| t.amount).sum()
    }

    /// A product button is enabled only with enough balance and stock.
    pub fn can_buy(&self, slot: SlotId) -> bool {
        self.slots
            .get(&slot)
            .is_some_and(|s| s.stock > 0 && self.escrow.balance >= s.config.product.price)
    }

    /// The "exact change only" light.
    pub fn exact_change_only(&self) -> bool {
        !can_pay_every_amount_up_to(EXACT_CHANGE_PROBE, &self.tubes)
    }

    pub fn category_tree(&self) -> CategoryNode {
        CategoryNode::build(self.slots.values().map(|s| &s.config))
    }

    /// Cross-checks the physical state against the double-entry balances.
    /// Holds after every successful `apply`; checked by tests and `verify`.
    pub fn check_consistency(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.balances.total() != 0 {
            problems.push(format!("balances sum to {}", self.balances.total()));
        }
        for coin in Denomination::COINS {
            let physical = Won::from(self.tubes.get(coin)) * coin.value();
            if self.balances.get(Account::Tube(coin)) != physical {
                problems.push(format!(
                    "tube {} holds {physical} won, ledger says {}",
                    coin.value(),
                    self.balances.get(Account::Tube(coin))
                ));
            }
        }
        let pairs = [
            (
                "cash box",
                self.cash_box,
                self.balances.get(Account::CashBox),
            ),
            (
                "stacker",
                self.stacker_total(),
                self.balances.get(Account::BillStacker),
            ),
            (
                "escrow",
                self.escrow.balance,
                -self.balances.get(Account::CustomerEscrow),
            ),
            (
                "change owed",
                self.owed_total(),
                -self.balances.get(Account::ChangeOwed),
            ),
            (
                "sales",
                self.stats.sales_won,
                -self.balances.get(Account::SalesRevenue),
            ),
        ];
        for (name, physical, ledger) in pairs {
            if physical != ledger {
                problems.push(format!("{name} holds {physical} won, ledger says {ledger}"));
            }
        }
        for slot in self.slots.values() {
            if slot.stock > slot.config.capacity {
                problems.push(format!(
                    "slot {} holds more than its capacity",
                    slot.config.slot
                ));
            }
        }
        if self.escrow.balance > ESCROW_LIMIT || self.escrow.bills > ESCROW_BILLS_LIMIT {
            problems.push("escrow above its limits".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

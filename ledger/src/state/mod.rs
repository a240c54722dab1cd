//! The state of one machine, rebuilt from its events by [`MachineState::apply`].
//!
//! `apply` is the only way state changes, on the machine and on every
//! replica alike. Events in a log come from outside, so `apply` validates an
//! event completely before it changes anything: an impossible event (a
//! purchase from an empty slot, an overdrawn tube, a gap in the sequence) is
//! a clear [`ApplyError`] and leaves the state untouched.
//!
//! Each kind of event is checked and applied by one function, with the
//! check right above the mutation it guards: `customer.rs` (money in,
//! purchases, change), `operator.rs` (installation, stock, cash, catalog,
//! remote commands) and `admin_session.rs` (logins and the password).

mod admin_session;
mod customer;
mod operator;

use crate::catalog::{CatalogError, CategoryNode, SlotConfig};
use crate::event::{Event, EventEnvelope, Source};
use crate::ids::SlotId;
use crate::money::{
    CHANGE_AMOUNT_MAX, CoinCounts, Denomination, WON_UNIT, Won, can_pay_every_amount_up_to,
    make_change,
};
use crate::posting::{Account, Balances, PostingError, Postings, postings};
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
    /// The bill waiting in the validator's escrow position (the last one
    /// inserted), given back at Return. Part of `balance`.
    #[serde(default)]
    pub held_bill: Option<Denomination>,
}

impl Escrow {
    /// The value of the bill held in escrow (0 without one).
    pub fn held_won(&self) -> Won {
        self.held_bill.map_or(0, Denomination::value)
    }

    /// The part of the balance paid back in coins at Return: everything
    /// but the held bill.
    pub fn coin_part(&self) -> Won {
        self.balance - self.held_won()
    }
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

/// The postings of the event being applied. Every `apply_*` function
/// takes one and calls [`post`](PendingPostings::post) after its own checks
/// and before it changes anything: posting can still fail (a tube would be
/// overdrawn) and must then leave the state untouched. An `apply_*`
/// function that forgot to post would leave its parameter unused, which
/// the compiler reports.
#[must_use]
struct PendingPostings(Postings);

impl PendingPostings {
    fn post(self, balances: &mut Balances) -> Result<(), ApplyError> {
        Ok(balances.apply(&self.0)?)
    }
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
    /// Each kind of event has one `apply_*` function (in `customer.rs`,
    /// `operator.rs` and `admin_session.rs`) that makes every check first,
    /// then posts the event's double-entry postings, then changes the
    /// state. Posting is the last step that can fail, so an event that is
    /// refused leaves the state exactly as it was.
    ///
    /// [`apply`]: MachineState::apply
    pub(crate) fn apply_event(&mut self, event: &Event, at_ms: i64) -> Result<(), ApplyError> {
        if !self.installed && !matches!(event, Event::Installed(_)) {
            return Err(ApplyError::NotInstalled);
        }
        let pending = PendingPostings(postings(event));
        match event {
            Event::Installed(installation) => self.apply_installation(installation, pending),
            Event::MoneyInserted {
                denomination,
                destination,
            } => self.apply_money_inserted(*denomination, *destination, pending),
            Event::MoneyRejected { .. } => self.apply_money_rejected(pending),
            Event::ProductPurchased {
                slot,
                product,
                price,
            } => self.apply_purchase(*slot, product, *price, pending),
            Event::PurchaseCancelled {
                slot,
                product,
                price,
            } => self.apply_cancel(*slot, product, *price, pending),
            Event::ChangeReturned { coins, paid } => {
                self.apply_change_returned(coins, *paid, pending)
            }
            Event::BillStacked { denomination } => self.apply_bill_stacked(*denomination, pending),
            Event::BillReturned { denomination } => {
                self.apply_bill_returned(*denomination, pending)
            }
            Event::ChangeOwed { ticket, amount } => {
                self.apply_change_owed(*ticket, *amount, at_ms, pending)
            }
            Event::ChangeOwedSettled {
                ticket,
                amount,
                source,
            } => self.apply_settlement(*ticket, *amount, source, pending),
            Event::SlotRefilled { slot, added } => self.apply_refill(*slot, *added, pending),
            Event::TubeLoaded {
                denomination,
                count,
            } => self.apply_tube_load(*denomination, *count, pending),
            Event::CashCollected {
                cash_box,
                stacker,
                counted,
            } => self.apply_collection(*cash_box, *stacker, *counted, pending),
            Event::PriceChanged {
                slot,
                price,
                source,
            } => self.apply_price(*slot, *price, source, pending),
            Event::ProductRenamed { slot, name, source } => {
                self.apply_rename(*slot, name, source, pending)
            }
            Event::SlotConfigured(config) => self.apply_slot_config(config, pending),
            Event::AdminLoggedIn => self.apply_login(pending),
            Event::AdminLoginFailed { failures } => self.apply_login_failure(*failures, pending),
            Event::AdminLockedOut { until_ms } => self.apply_lockout(*until_ms, pending),
            Event::AdminLoggedOut => self.apply_logout(pending),
            Event::AdminPasswordChanged { password_hash } => {
                self.apply_password_change(password_hash, pending)
            }
            Event::RemoteCommandRejected { command_id, .. } => {
                self.apply_remote_rejection(*command_id, pending)
            }
        }?;
        self.debug_assert_bounds();
        Ok(())
    }

    /// The bounds every event must keep, asserted after each one (paired
    /// with the checks that admitted it). They are O(1); the full
    /// cross-check against the double-entry balances is
    /// [`check_consistency`](Self::check_consistency), which tests, `decide`
    /// and `verify` run. A failure is a bug in an `apply_*` function.
    fn debug_assert_bounds(&self) {
        debug_assert_eq!(self.balances.total(), 0, "postings always balance");
        debug_assert!(
            (0..=ESCROW_LIMIT).contains(&self.escrow.balance),
            "escrow balance {} out of bounds",
            self.escrow.balance
        );
        debug_assert!((0..=ESCROW_BILLS_LIMIT).contains(&self.escrow.bills));
        debug_assert!(self.escrow.purchases.len() <= PURCHASE_STACK_MAX);
        debug_assert!(self.cash_box >= 0, "cash box {}", self.cash_box);
        debug_assert!(
            self.stacker_bills + u32::from(self.escrow.held_bill.is_some())
                <= self.stacker_capacity_bills
        );
        debug_assert!(self.escrow.held_won() <= self.escrow.balance);
        debug_assert!(
            (self.tubes.0.iter().zip(self.tube_capacity.0)).all(|(&count, cap)| count <= cap),
            "a tube holds more than its capacity"
        );
        debug_assert!(self.owed.len() <= OWED_TICKETS_MAX);
    }

    /// A remote command is applied at most once: its id must be newer than
    /// the last one the machine applied.
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

    /// Remembers the newest remote command applied (see `check_source`).
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

    /// Nothing is stocked, so nothing can be sold: the machine says it is
    /// out of service and refuses money.
    pub fn out_of_service(&self) -> bool {
        self.installed && self.slots.values().all(Slot::sold_out)
    }

    /// Whether the tubes can pay `amount` exactly.
    pub fn can_pay(&self, amount: Won) -> bool {
        let payable = (0..=CHANGE_AMOUNT_MAX).contains(&amount) && amount % WON_UNIT == 0;
        amount == 0 || (payable && make_change(amount, &self.tubes).owed == 0)
    }

    /// Whether a purchase at `price` stacks the held bill: the coins in
    /// the balance do not cover it.
    pub fn purchase_stacks_bill(&self, price: Won) -> bool {
        self.escrow.held_bill.is_some() && self.escrow.coin_part() < price
    }

    /// The change the tubes would owe after a purchase at `price`: the
    /// balance left, less a bill still held (which goes back as it is).
    pub fn change_after_purchase(&self, price: Won) -> Won {
        let held_after = if self.purchase_stacks_bill(price) {
            0
        } else {
            self.escrow.held_won()
        };
        self.escrow.balance - price - held_after
    }

    /// A product can be bought with enough balance and stock, and when the
    /// tubes can pay the change that leaves.
    pub fn can_buy(&self, slot: SlotId) -> bool {
        self.slots.get(&slot).is_some_and(|s| {
            let price = s.config.product.price;
            s.stock > 0
                && self.escrow.balance >= price
                && self.can_pay(self.change_after_purchase(price))
        })
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
                "bill escrow",
                self.escrow.held_won(),
                self.balances.get(Account::BillEscrow),
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

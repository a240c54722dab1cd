//! Events: the immutable facts a machine records, and their versioned
//! MessagePack encoding.
//!
//! An event is only ever appended. A mistake is undone by a compensating
//! event (a cancelled purchase, a settled debt), never by deleting.

use crate::catalog::SlotConfig;
use crate::ids::{MachineId, SlotId};
use crate::money::{CoinCounts, Denomination, MoneyKind, Won};
use serde::{Deserialize, Serialize};

/// Where an accepted coin or bill went inside the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Destination {
    /// The coin tube of its denomination (change is paid from tubes).
    Tube,
    /// The cash box, once the tube is full.
    CashBox,
    /// The bill stacker.
    Stacker,
}

/// Why an inserted coin or bill was handed back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InsertRejection {
    /// Not a 10, 50, 100 or 500-won coin, or not a 1,000-won bill.
    UnknownDenomination,
    /// The balance would exceed 7,000 won.
    BalanceLimit,
    /// The bills in the balance would exceed 5,000 won.
    BillLimit,
    /// The bill stacker is full.
    StackerFull,
}

impl InsertRejection {
    /// The text the machine shows the customer.
    pub fn message(self) -> &'static str {
        match self {
            InsertRejection::UnknownDenomination => {
                "Not accepted: use 10, 50, 100 or 500-won coins or 1,000-won bills"
            }
            InsertRejection::BalanceLimit => "Returned: the balance may not exceed 7,000 won",
            InsertRejection::BillLimit => "Returned: at most 5,000 won in bills",
            InsertRejection::StackerFull => "Returned: the bill stacker is full, please use coins",
        }
    }
}

/// Who caused a catalog change or settlement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Source {
    /// An operator at the machine (admin screen).
    Local,
    /// A command sent from the dashboard, applied by the machine.
    Remote { command_id: u64 },
}

/// The one-time installation of a machine: its first event. The slots
/// follow as `SlotConfigured` events in the same atomic batch, which keeps
/// every event small enough for one replication datagram.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installation {
    pub tube_capacity: CoinCounts,
    pub stacker_capacity_bills: u32,
    /// argon2id PHC string of the initial admin password.
    pub admin_password_hash: String,
}

/// Everything that can happen at a machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Installed(Installation),
    MoneyInserted {
        denomination: Denomination,
        destination: Destination,
    },
    MoneyRejected {
        kind: MoneyKind,
        value: Won,
        reason: InsertRejection,
    },
    ProductPurchased {
        slot: SlotId,
        product: String,
        price: Won,
    },
    /// Compensates the most recent uncancelled purchase of the session.
    PurchaseCancelled {
        slot: SlotId,
        product: String,
        price: Won,
    },
    /// Coins paid out of the tubes. Ends the customer session (together with
    /// a `ChangeOwed` when the tubes could not pay everything).
    ChangeReturned {
        coins: CoinCounts,
        paid: Won,
    },
    /// What the tubes could not pay, owed to the customer until settled.
    ChangeOwed {
        ticket: u64,
        amount: Won,
    },
    ChangeOwedSettled {
        ticket: u64,
        amount: Won,
        source: Source,
    },
    SlotRefilled {
        slot: SlotId,
        added: u32,
    },
    TubeLoaded {
        denomination: Denomination,
        count: u32,
    },
    /// The operator emptied the cash box and bill stacker and counted
    /// `counted` won; the ledger expected `cash_box + stacker`.
    CashCollected {
        cash_box: Won,
        stacker: Won,
        counted: Won,
    },
    PriceChanged {
        slot: SlotId,
        price: Won,
        source: Source,
    },
    ProductRenamed {
        slot: SlotId,
        name: String,
        source: Source,
    },
    /// A slot added, or reconfigured with a new product, capacity or category.
    SlotConfigured(SlotConfig),
    AdminLoggedIn,
    AdminLoginFailed {
        failures: u32,
    },
    AdminLockedOut {
        until_ms: i64,
    },
    AdminLoggedOut,
    AdminPasswordChanged {
        password_hash: String,
    },
    /// A dashboard command the machine could not apply, with the reason, so
    /// the operator who sent it learns what happened.
    RemoteCommandRejected {
        command_id: u64,
        reason: String,
    },
}

/// The kind of an event as a stable lowercase name (for dumps, filters and
/// exports).
impl Event {
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Installed(_) => "installed",
            Event::MoneyInserted { .. } => "money_inserted",
            Event::MoneyRejected { .. } => "money_rejected",
            Event::ProductPurchased { .. } => "product_purchased",
            Event::PurchaseCancelled { .. } => "purchase_cancelled",
            Event::ChangeReturned { .. } => "change_returned",
            Event::ChangeOwed { .. } => "change_owed",
            Event::ChangeOwedSettled { .. } => "change_owed_settled",
            Event::SlotRefilled { .. } => "slot_refilled",
            Event::TubeLoaded { .. } => "tube_loaded",
            Event::CashCollected { .. } => "cash_collected",
            Event::PriceChanged { .. } => "price_changed",
            Event::ProductRenamed { .. } => "product_renamed",
            Event::SlotConfigured(_) => "slot_configured",
            Event::AdminLoggedIn => "admin_logged_in",
            Event::AdminLoginFailed { .. } => "admin_login_failed",
            Event::AdminLockedOut { .. } => "admin_locked_out",
            Event::AdminLoggedOut => "admin_logged_out",
            Event::AdminPasswordChanged { .. } => "admin_password_changed",
            Event::RemoteCommandRejected { .. } => "remote_command_rejected",
        }
    }

    /// The main money amount the event moves, where there is one.
    pub fn amount(&self) -> Option<Won> {
        match self {
            Event::MoneyInserted { denomination, .. } => Some(denomination.value()),
            Event::MoneyRejected { value, .. } => Some(*value),
            Event::ProductPurchased { price, .. } | Event::PurchaseCancelled { price, .. } => {
                Some(*price)
            }
            Event::ChangeReturned { paid, .. } => Some(*paid),
            Event::ChangeOwed { amount, .. } | Event::ChangeOwedSettled { amount, .. } => {
                Some(*amount)
            }
            Event::TubeLoaded {
                denomination,
                count,
            } => Some(denomination.value() * Won::from(*count)),
            Event::CashCollected { counted, .. } => Some(*counted),
            Event::PriceChanged { price, .. } => Some(*price),
            _ => None,
        }
    }
}

/// An event with its place in its machine's stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventEnvelope {
    pub machine_id: MachineId,
    /// 1, 2, 3, ... with no gaps; (machine_id, machine_seq) is the
    /// idempotency key of the fleet log.
    pub machine_seq: u64,
    /// The machine's clock, milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub event: Event,
}

/// Version byte in front of every encoded event. Decoders keep accepting
/// every version ever written so old logs replay after upgrades.
pub const EVENT_FORMAT_VERSION: u8 = 1;

/// Largest encoded event accepted from outside. Every event `decide` can
/// produce is far smaller (names are at most 40 characters, reasons are cut
/// to `REASON_CHARS_MAX`), and a log record of this size still fits one
/// replication datagram of the default 1,400 payload bytes.
pub const EVENT_BYTES_MAX: usize = 1_024;
/// Longest explanation carried by a `RemoteCommandRejected` event.
pub const REASON_CHARS_MAX: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty record")]
    Empty,
    #[error("record of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("unknown format version {0}")]
    UnknownVersion(u8),
    #[error("malformed MessagePack: {0}")]
    Malformed(rmp_serde::decode::Error),
}

// The cause is in the message, not also a `source` (see `StoreError::Db`).
impl From<rmp_serde::decode::Error> for DecodeError {
    fn from(error: rmp_serde::decode::Error) -> DecodeError {
        DecodeError::Malformed(error)
    }
}

impl EventEnvelope {
    /// `[EVENT_FORMAT_VERSION] ++ MessagePack(envelope)`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.push(EVENT_FORMAT_VERSION);
        rmp_serde::encode::write(&mut out, self).expect("encoding to a Vec cannot fail");
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<EventEnvelope, DecodeError> {
        let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if bytes.len() > EVENT_BYTES_MAX {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        match version {
            EVENT_FORMAT_VERSION => Ok(rmp_serde::from_slice(body)?),
            other => Err(DecodeError::UnknownVersion(other)),
        }
    }
}

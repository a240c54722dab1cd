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
    /// The bill validator's escrow position (event format 2): the last
    /// bill inserted waits there, as on MDB validators, and is given back
    /// when the customer presses Return; it is stacked once the customer
    /// buys with it or inserts another bill.
    Escrow,
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
    /// Nothing is stocked, so nothing can be sold (event format 2).
    OutOfService,
    /// The tubes could not pay this money back as change (exact change
    /// only; event format 2).
    NoChange,
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
            InsertRejection::OutOfService => "Returned: the machine is out of service",
            InsertRejection::NoChange => {
                "Returned: exact change only, the machine could not give this money back as change"
            }
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
    /// The bill held in the validator's escrow went on to the stacker
    /// (event format 2): the customer bought with it or inserted another.
    BillStacked {
        denomination: Denomination,
    },
    /// The bill held in escrow was given back to the customer (event
    /// format 2), at Return, before any change in coins.
    BillReturned {
        denomination: Denomination,
    },
    /// What the tubes could not pay, owed to the customer until settled.
    /// With the escrow and change checks of format 2 it only arises from a
    /// fault (a jammed tube, a count that drifted).
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
            Event::BillStacked { .. } => "bill_stacked",
            Event::BillReturned { .. } => "bill_returned",
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
            Event::MoneyInserted { denomination, .. }
            | Event::BillStacked { denomination }
            | Event::BillReturned { denomination } => Some(denomination.value()),
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

impl Event {
    /// The oldest event format that can express this event.
    pub fn format_version(&self) -> u8 {
        let version_2 = match self {
            Event::MoneyInserted { destination, .. } => *destination == Destination::Escrow,
            Event::MoneyRejected { reason, .. } => {
                matches!(
                    reason,
                    InsertRejection::OutOfService | InsertRejection::NoChange
                )
            }
            Event::BillStacked { .. } | Event::BillReturned { .. } => true,
            Event::SlotConfigured(config) => !config.product.code.is_empty(),
            _ => false,
        };
        if version_2 {
            EVENT_FORMAT_VERSION
        } else {
            EVENT_FORMAT_VERSION_1
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

/// The newest version byte in front of an encoded event. Decoders keep
/// accepting every version ever written so old logs replay after upgrades.
///
/// Version 2 added the bill validator's escrow (`Destination::Escrow`,
/// `BillStacked`, `BillReturned`), the rejections `OutOfService` and
/// `NoChange`, and a product's ASCII code. Every event is written with the
/// oldest version that can express it ([`Event::format_version`]): an
/// event version 1 could hold is still written byte for byte as before,
/// and a reader that only knows version 1 refuses a newer event by its
/// version byte instead of misreading it.
pub const EVENT_FORMAT_VERSION: u8 = 2;
/// The first version, still written for events it can express.
pub const EVENT_FORMAT_VERSION_1: u8 = 1;

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
    #[error("a version {version} event uses what only version {needs} has")]
    NewerThanItsVersion { version: u8, needs: u8 },
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
    /// `[version] ++ MessagePack(envelope)`, with the oldest version that
    /// can express the event.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.push(self.event.format_version());
        rmp_serde::encode::write(&mut out, self).expect("encoding to a Vec cannot fail");
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<EventEnvelope, DecodeError> {
        let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if bytes.len() > EVENT_BYTES_MAX {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        // Version 2 only added variants and a trailing optional field, so
        // one decoder reads both; an event must not use more than its
        // version byte promises.
        let envelope: EventEnvelope = match version {
            EVENT_FORMAT_VERSION_1 | EVENT_FORMAT_VERSION => rmp_serde::from_slice(body)?,
            other => return Err(DecodeError::UnknownVersion(other)),
        };
        let needs = envelope.event.format_version();
        if needs > version {
            return Err(DecodeError::NewerThanItsVersion { version, needs });
        }
        Ok(envelope)
    }
}

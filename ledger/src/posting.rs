//! Double-entry bookkeeping. Every money event maps to postings over
//! accounts that sum to zero, so every won is accounted for.
//!
//! Sign convention: a posting amount is a debit when positive and a credit
//! when negative. Physical accounts (the tubes, cash box and stacker) hold
//! debit balances and may never go below zero; the customer's escrow and
//! change owed are liabilities and hold credit balances, never below zero.

use crate::event::{Destination, Event};
use crate::money::{CoinCounts, Denomination, Won};
use arrayvec::ArrayVec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Account {
    /// Money the current customer has put in and not yet spent or taken back.
    CustomerEscrow,
    /// One coin tube per coin denomination (index as in `Denomination::COINS`).
    Tube(Denomination),
    CashBox,
    BillStacker,
    SalesRevenue,
    /// What the machine could not pay back, until an operator settles it.
    ChangeOwed,
    /// Cash taken out of the machine by operators.
    CollectedCash,
    /// Differences between counted and expected cash at collection.
    OverShort,
    /// Money operators put in: coins loaded into tubes and settlements of
    /// change owed paid out of their pocket.
    OperatorFloat,
    /// The bill held in the validator's escrow position (physical): the
    /// customer's last bill, given back at Return or stacked.
    BillEscrow,
}

/// Every account, in a fixed order (the index of its balance).
pub const ACCOUNTS: [Account; 13] = [
    Account::CustomerEscrow,
    Account::Tube(Denomination::Coin10),
    Account::Tube(Denomination::Coin50),
    Account::Tube(Denomination::Coin100),
    Account::Tube(Denomination::Coin500),
    Account::CashBox,
    Account::BillStacker,
    Account::SalesRevenue,
    Account::ChangeOwed,
    Account::CollectedCash,
    Account::OverShort,
    Account::OperatorFloat,
    Account::BillEscrow,
];

impl Account {
    /// The position of this account in [`ACCOUNTS`]; `None` for a tube of a
    /// denomination that has no tube (a bill).
    pub fn index(self) -> Option<usize> {
        Some(match self {
            Account::CustomerEscrow => 0,
            Account::Tube(d) => 1 + d.tube_index()?,
            Account::CashBox => 5,
            Account::BillStacker => 6,
            Account::SalesRevenue => 7,
            Account::ChangeOwed => 8,
            Account::CollectedCash => 9,
            Account::OverShort => 10,
            Account::OperatorFloat => 11,
            Account::BillEscrow => 12,
        })
    }

    /// Physical accounts are money in the machine; their balance is never
    /// negative.
    pub fn is_physical(self) -> bool {
        matches!(
            self,
            Account::Tube(_) | Account::CashBox | Account::BillStacker | Account::BillEscrow
        )
    }

    /// Liabilities to customers; their credit balance is never negative.
    pub fn is_customer_liability(self) -> bool {
        matches!(self, Account::CustomerEscrow | Account::ChangeOwed)
    }

    pub fn name(self) -> String {
        match self {
            Account::Tube(d) => format!("tube_{}", d.value()),
            other => {
                let debug = format!("{other:?}");
                // CamelCase to snake_case for stable report and CSV names.
                let mut out = String::new();
                for (i, ch) in debug.chars().enumerate() {
                    if ch.is_ascii_uppercase() && i > 0 {
                        out.push('_');
                    }
                    out.push(ch.to_ascii_lowercase());
                }
                out
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    pub account: Account,
    pub amount: Won,
}

fn post(account: Account, amount: Won) -> Posting {
    Posting { account, amount }
}

/// Most postings a single event makes (a change payout: escrow and four
/// tubes).
pub const POSTINGS_PER_EVENT_MAX: usize = 6;

/// The postings of one event, without allocating.
pub type Postings = ArrayVec<Posting, POSTINGS_PER_EVENT_MAX>;

fn postings_of<const N: usize>(items: [Posting; N]) -> Postings {
    items.into_iter().collect()
}

/// The postings of an event; empty for events that move no money.
pub fn postings(event: &Event) -> Postings {
    match event {
        Event::MoneyInserted {
            denomination,
            destination,
        } => insert_postings(*denomination, *destination),
        Event::ProductPurchased { price, .. } => postings_of([
            post(Account::CustomerEscrow, *price),
            post(Account::SalesRevenue, -price),
        ]),
        Event::PurchaseCancelled { price, .. } => postings_of([
            post(Account::SalesRevenue, *price),
            post(Account::CustomerEscrow, -price),
        ]),
        Event::ChangeReturned { coins, paid } => change_postings(coins, *paid),
        // The held bill moves on to the stacker: still the machine's.
        Event::BillStacked { denomination } => postings_of([
            post(Account::BillStacker, denomination.value()),
            post(Account::BillEscrow, -denomination.value()),
        ]),
        // The held bill goes back to the customer: it settles that much of
        // the balance, as change paid would.
        Event::BillReturned { denomination } => postings_of([
            post(Account::CustomerEscrow, denomination.value()),
            post(Account::BillEscrow, -denomination.value()),
        ]),
        Event::ChangeOwed { amount, .. } => postings_of([
            post(Account::CustomerEscrow, *amount),
            post(Account::ChangeOwed, -amount),
        ]),
        Event::ChangeOwedSettled { amount, .. } => postings_of([
            post(Account::ChangeOwed, *amount),
            post(Account::OperatorFloat, -amount),
        ]),
        Event::TubeLoaded {
            denomination,
            count,
        } => {
            let value = denomination.value() * Won::from(*count);
            postings_of([
                post(Account::Tube(*denomination), value),
                post(Account::OperatorFloat, -value),
            ])
        }
        Event::CashCollected {
            cash_box,
            stacker,
            counted,
        } => postings_of([
            post(Account::CollectedCash, *counted),
            post(Account::CashBox, -cash_box),
            post(Account::BillStacker, -stacker),
            post(Account::OverShort, -(counted - cash_box - stacker)),
        ]),
        Event::Installed(_)
        | Event::MoneyRejected { .. }
        | Event::SlotRefilled { .. }
        | Event::PriceChanged { .. }
        | Event::ProductRenamed { .. }
        | Event::SlotConfigured(_)
        | Event::AdminLoggedIn
        | Event::AdminLoginFailed { .. }
        | Event::AdminLockedOut { .. }
        | Event::AdminLoggedOut
        | Event::AdminPasswordChanged { .. }
        | Event::RemoteCommandRejected { .. } => Postings::new(),
    }
}

/// Inserted money is the machine's (in the holder it went to) and owed to
/// the customer until spent or returned.
fn insert_postings(denomination: Denomination, destination: Destination) -> Postings {
    let account = match destination {
        Destination::Tube => Account::Tube(denomination),
        Destination::CashBox => Account::CashBox,
        Destination::Stacker => Account::BillStacker,
        Destination::Escrow => Account::BillEscrow,
    };
    let value = denomination.value();
    postings_of([post(account, value), post(Account::CustomerEscrow, -value)])
}

/// Change paid settles escrow out of the tubes, one posting per tube used.
fn change_postings(coins: &CoinCounts, paid: Won) -> Postings {
    let mut out = postings_of([post(Account::CustomerEscrow, paid)]);
    for (coin, &count) in Denomination::COINS.iter().zip(&coins.0) {
        if count > 0 {
            out.push(post(Account::Tube(*coin), -coin.value() * Won::from(count)));
        }
    }
    out
}

/// Why a set of postings or balances is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostingError {
    #[error("postings sum to {0} won instead of zero")]
    Unbalanced(Won),
    #[error("account {account} would hold {balance} won")]
    NegativeBalance { account: String, balance: Won },
    #[error("posting to an account that does not exist")]
    NoSuchAccount,
}

/// Account balances (debit positive), built by applying postings. A fixed
/// array indexed like [`ACCOUNTS`]: applying an event touches a few slots
/// and allocates nothing. Serialised as a map from account name
/// ([`Account::name`]) to won, which reads well in JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "BTreeMap<String, Won>", try_from = "BTreeMap<String, Won>")]
pub struct Balances([Won; ACCOUNTS.len()]);

impl From<Balances> for BTreeMap<String, Won> {
    fn from(balances: Balances) -> Self {
        balances
            .iter()
            .filter(|&(_, won)| won != 0)
            .map(|(account, won)| (account.name(), won))
            .collect()
    }
}

impl TryFrom<BTreeMap<String, Won>> for Balances {
    type Error = String;
    fn try_from(map: BTreeMap<String, Won>) -> Result<Self, Self::Error> {
        let mut balances = Balances::default();
        for (name, won) in map {
            let index = ACCOUNTS
                .iter()
                .position(|account| account.name() == name)
                .ok_or_else(|| format!("no such account {name:?}"))?;
            balances.0[index] = won;
        }
        Ok(balances)
    }
}

impl Balances {
    pub fn get(&self, account: Account) -> Won {
        account.index().map_or(0, |i| self.0[i])
    }

    /// Every account with its balance, in [`ACCOUNTS`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Account, Won)> + '_ {
        ACCOUNTS.iter().copied().zip(self.0.iter().copied())
    }

    /// Checks that `postings` balance and that applying them keeps physical
    /// accounts and customer liabilities non-negative, then applies them.
    /// Nothing is changed when the check fails.
    pub fn apply(&mut self, postings: &[Posting]) -> Result<(), PostingError> {
        let sum: Won = postings.iter().map(|p| p.amount).sum();
        if sum != 0 {
            return Err(PostingError::Unbalanced(sum));
        }
        let mut next = self.0;
        for posting in postings {
            let index = posting.account.index().ok_or(PostingError::NoSuchAccount)?;
            next[index] += posting.amount;
        }
        for posting in postings {
            let balance = next[posting.account.index().expect("checked above")];
            let negative = (posting.account.is_physical() && balance < 0)
                || (posting.account.is_customer_liability() && balance > 0);
            if negative {
                return Err(PostingError::NegativeBalance {
                    account: posting.account.name(),
                    balance: balance.abs(),
                });
            }
        }
        self.0 = next;
        Ok(())
    }

    /// Sum over all accounts; zero whenever every applied posting balanced.
    pub fn total(&self) -> Won {
        self.0.iter().sum()
    }

    /// Money physically inside the machine.
    pub fn physical_total(&self) -> Won {
        self.iter()
            .filter(|(account, _)| account.is_physical())
            .map(|(_, won)| won)
            .sum()
    }

    /// Adds another machine's balances (for fleet totals).
    pub fn merge(&mut self, other: &Balances) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine += theirs;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SlotId;
    use crate::money::CoinCounts;

    #[test]
    fn every_money_event_balances() {
        let events = [
            Event::MoneyInserted {
                denomination: Denomination::Coin500,
                destination: Destination::Tube,
            },
            Event::ProductPurchased {
                slot: SlotId(1),
                product: "Water".into(),
                price: 450,
            },
            Event::ChangeReturned {
                coins: CoinCounts([0, 1, 0, 0]),
                paid: 50,
            },
            Event::CashCollected {
                cash_box: 1_000,
                stacker: 2_000,
                counted: 2_990,
            },
            Event::MoneyInserted {
                denomination: Denomination::Bill1000,
                destination: Destination::Escrow,
            },
            Event::BillStacked {
                denomination: Denomination::Bill1000,
            },
            Event::BillReturned {
                denomination: Denomination::Bill1000,
            },
        ];
        for event in &events {
            let sum: Won = postings(event).iter().map(|p| p.amount).sum();
            assert_eq!(sum, 0, "{event:?}");
        }
    }

    #[test]
    fn refuses_to_overdraw_a_tube_and_changes_nothing() {
        let mut balances = Balances::default();
        let overdraw = postings(&Event::ChangeReturned {
            coins: CoinCounts([1, 0, 0, 0]),
            paid: 10,
        });
        let err = balances.apply(&overdraw).unwrap_err();
        assert!(matches!(err, PostingError::NegativeBalance { .. }), "{err}");
        assert_eq!(balances, Balances::default());
        let unbalanced = [post(Account::CashBox, 10)];
        assert_eq!(
            balances.apply(&[post(Account::Tube(Denomination::Bill1000), 0)]),
            Err(PostingError::NoSuchAccount)
        );
        assert_eq!(
            balances.apply(&unbalanced),
            Err(PostingError::Unbalanced(10))
        );
    }

    #[test]
    fn balances_serialise_by_account_name() {
        let mut balances = Balances::default();
        balances
            .apply(&postings(&Event::TubeLoaded {
                denomination: Denomination::Coin50,
                count: 3,
            }))
            .unwrap();
        let json = serde_json::to_string(&balances).unwrap();
        assert_eq!(json, r#"{"operator_float":-150,"tube_50":150}"#);
        assert_eq!(serde_json::from_str::<Balances>(&json).unwrap(), balances);
        assert!(serde_json::from_str::<Balances>(r#"{"nope":1}"#).is_err());
    }

    #[test]
    fn account_names_are_snake_case() {
        assert_eq!(Account::CustomerEscrow.name(), "customer_escrow");
        assert_eq!(Account::Tube(Denomination::Coin500).name(), "tube_500");
        assert_eq!(Account::OverShort.name(), "over_short");
        assert_eq!(Account::BillEscrow.name(), "bill_escrow");
        assert!(Account::BillEscrow.is_physical());
    }
}

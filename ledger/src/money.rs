//! Money: integer won, the accepted denominations, coin counts and exact
//! change-making from bounded coin tubes.
//!
//! There are no floats anywhere near money. Every amount is an `i64` count of
//! won; amounts are always multiples of 10 because the smallest coin is 10.

use serde::{Deserialize, Serialize};

/// An amount of Korean won. Signed, because postings move money both ways.
pub type Won = i64;

/// The smallest unit any amount can be expressed in (the 10-won coin).
pub const WON_UNIT: Won = 10;

/// Whether a customer put in a coin or a bill. A foreign or fake item of an
/// unknown value is still one of the two physically, so it can be rejected
/// with a precise reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MoneyKind {
    Coin,
    Bill,
}

/// The money this machine accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Denomination {
    Coin10,
    Coin50,
    Coin100,
    Coin500,
    Bill1000,
}

impl Denomination {
    /// Every accepted denomination, smallest first.
    pub const ALL: [Denomination; 5] = [
        Denomination::Coin10,
        Denomination::Coin50,
        Denomination::Coin100,
        Denomination::Coin500,
        Denomination::Bill1000,
    ];

    /// The coins, smallest first; their index is the coin tube index.
    pub const COINS: [Denomination; COIN_KINDS] = [
        Denomination::Coin10,
        Denomination::Coin50,
        Denomination::Coin100,
        Denomination::Coin500,
    ];

    pub const fn value(self) -> Won {
        match self {
            Denomination::Coin10 => 10,
            Denomination::Coin50 => 50,
            Denomination::Coin100 => 100,
            Denomination::Coin500 => 500,
            Denomination::Bill1000 => 1_000,
        }
    }

    pub const fn kind(self) -> MoneyKind {
        match self {
            Denomination::Bill1000 => MoneyKind::Bill,
            _ => MoneyKind::Coin,
        }
    }

    /// The coin tube this denomination lives in, if it is a coin.
    pub const fn tube_index(self) -> Option<usize> {
        match self {
            Denomination::Coin10 => Some(0),
            Denomination::Coin50 => Some(1),
            Denomination::Coin100 => Some(2),
            Denomination::Coin500 => Some(3),
            Denomination::Bill1000 => None,
        }
    }

    /// Recognises an inserted item. Anything not accepted is `None` and gets
    /// rejected and returned to the customer.
    pub fn recognise(kind: MoneyKind, value: Won) -> Option<Denomination> {
        Denomination::ALL
            .into_iter()
            .find(|d| d.kind() == kind && d.value() == value)
    }
}

impl std::fmt::Display for Denomination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind() {
            MoneyKind::Coin => write!(f, "{}-won coin", self.value()),
            MoneyKind::Bill => write!(f, "{}-won bill", self.value()),
        }
    }
}

/// Number of coin denominations (and so of coin tubes).
pub const COIN_KINDS: usize = 4;

/// A count of coins per coin denomination, indexed like [`Denomination::COINS`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CoinCounts(pub [u32; COIN_KINDS]);

impl CoinCounts {
    pub const ZERO: CoinCounts = CoinCounts([0; COIN_KINDS]);

    pub fn get(&self, coin: Denomination) -> u32 {
        coin.tube_index().map_or(0, |i| self.0[i])
    }

    /// Total value of the coins.
    pub fn total(&self) -> Won {
        self.0
            .iter()
            .zip(Denomination::COINS)
            .map(|(&n, d)| Won::from(n) * d.value())
            .sum()
    }

    pub fn coin_count(&self) -> u64 {
        self.0.iter().map(|&n| u64::from(n)).sum()
    }

    /// Non-zero entries as `(denomination, count)`, largest coin first, for
    /// showing a customer which coins came out.
    pub fn breakdown(&self) -> Vec<(Denomination, u32)> {
        Denomination::COINS
            .into_iter()
            .rev()
            .map(|d| (d, self.get(d)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    /// `true` when every count in `self` is at most the one in `other`.
    pub fn fits_in(&self, other: &CoinCounts) -> bool {
        self.0.iter().zip(other.0.iter()).all(|(a, b)| a <= b)
    }
}

/// The outcome of change-making: which coins to pay and what cannot be paid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangePlan {
    pub coins: CoinCounts,
    pub paid: Won,
    /// The part of the amount the tubes cannot pay; it becomes change owed.
    pub owed: Won,
}

/// Largest amount change-making plans for. The escrow limit (7,000 won) is
/// far below it; a larger request is a programming error.
pub const CHANGE_AMOUNT_MAX: Won = 100_000;

/// Pays `amount` from `tubes` exactly with the fewest coins when that is
/// possible; otherwise pays the largest amount below it that the tubes can
/// make (again with the fewest coins) and reports the rest as owed.
///
/// This is bounded-coin change-making by dynamic programming over 10-won
/// units (binary splitting turns each tube into a handful of 0/1 items), so it
/// is exact where a greedy choice can strand the customer.
pub fn make_change(amount: Won, tubes: &CoinCounts) -> ChangePlan {
    assert!(
        (0..=CHANGE_AMOUNT_MAX).contains(&amount) && amount % WON_UNIT == 0,
        "change amount {amount} out of range"
    );
    let target = usize::try_from(amount / WON_UNIT).expect("bounded above");
    let table = CoinTable::build(target, tubes);
    let best = (0..=target)
        .rev()
        .find(|&v| table.min_coins[v] != UNREACHABLE)
        .unwrap_or(0);
    let coins = table.reconstruct(best);
    let paid = coins.total();
    debug_assert_eq!(paid, Won::try_from(best).expect("small") * WON_UNIT);
    debug_assert!(coins.fits_in(tubes));
    ChangePlan {
        coins,
        paid,
        owed: amount - paid,
    }
}

/// `true` when the tubes can pay every amount from 10 won up to
/// `amount_max` exactly. The machine lights "exact change only" when this
/// fails for the change from a single 1,000-won bill.
pub fn can_pay_every_amount_up_to(amount_max: Won, tubes: &CoinCounts) -> bool {
    assert!((0..=CHANGE_AMOUNT_MAX).contains(&amount_max));
    let target = usize::try_from(amount_max / WON_UNIT).expect("bounded above");
    let table = CoinTable::build(target, tubes);
    table.min_coins[1..=target]
        .iter()
        .all(|&n| n != UNREACHABLE)
}

const UNREACHABLE: u32 = u32::MAX;

/// A bounded-knapsack table: `min_coins[v]` is the fewest coins that make
/// `v` units, and `took[item][v]` says whether item `item` was used.
struct CoinTable {
    min_coins: Vec<u32>,
    /// (tube index, coins in this item)
    items: Vec<(usize, u32)>,
    took: Vec<Vec<bool>>,
}

impl CoinTable {
    fn build(target: usize, tubes: &CoinCounts) -> CoinTable {
        let mut items = Vec::new();
        for (tube, &count) in tubes.0.iter().enumerate() {
            let unit = unit_of(tube);
            // More coins than could ever be used for `target` are irrelevant.
            let useful = count.min(u32::try_from(target / unit).unwrap_or(u32::MAX));
            let mut piece = 1;
            let mut left = useful;
            while left > 0 {
                let take = piece.min(left);
                items.push((tube, take));
                left -= take;
                piece *= 2;
            }
        }
        let mut min_coins = vec![UNREACHABLE; target + 1];
        min_coins[0] = 0;
        let mut took = Vec::with_capacity(items.len());
        for &(tube, coins) in &items {
            let weight = unit_of(tube) * coins as usize;
            let mut row = vec![false; target + 1];
            for v in (weight..=target).rev() {
                let from = min_coins[v - weight];
                if from != UNREACHABLE && from + coins < min_coins[v] {
                    min_coins[v] = from + coins;
                    row[v] = true;
                }
            }
            took.push(row);
        }
        CoinTable {
            min_coins,
            items,
            took,
        }
    }

    fn reconstruct(&self, mut v: usize) -> CoinCounts {
        let mut counts = CoinCounts::ZERO;
        for (index, &(tube, coins)) in self.items.iter().enumerate().rev() {
            if self.took[index][v] {
                counts.0[tube] += coins;
                v -= unit_of(tube) * coins as usize;
            }
        }
        assert_eq!(v, 0, "change table reconstruction must reach zero");
        counts
    }
}

fn unit_of(tube: usize) -> usize {
    usize::try_from(Denomination::COINS[tube].value() / WON_UNIT).expect("positive")
}

/// Formats won with thousands separators: `7000` → `"7,000"`.
pub fn format_won(amount: Won) -> String {
    let digits = amount.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if amount < 0 {
        out.push('-');
    }
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute_force(amount: Won, tubes: &CoinCounts) -> Option<u32> {
        let mut best = None;
        let [a, b, c, d] = tubes.0;
        for n500 in 0..=d {
            for n100 in 0..=c {
                for n50 in 0..=b {
                    let partial =
                        Won::from(n500) * 500 + Won::from(n100) * 100 + Won::from(n50) * 50;
                    let rest = amount - partial;
                    if rest < 0 || rest % 10 != 0 || rest / 10 > Won::from(a) {
                        continue;
                    }
                    let n = n500 + n100 + n50 + u32::try_from(rest / 10).unwrap();
                    if best.is_none_or(|b| n < b) {
                        best = Some(n);
                    }
                }
            }
        }
        best
    }

    #[test]
    fn recognises_only_accepted_money() {
        assert_eq!(
            Denomination::recognise(MoneyKind::Coin, 500),
            Some(Denomination::Coin500)
        );
        assert_eq!(
            Denomination::recognise(MoneyKind::Bill, 1_000),
            Some(Denomination::Bill1000)
        );
        assert_eq!(Denomination::recognise(MoneyKind::Coin, 1_000), None);
        assert_eq!(Denomination::recognise(MoneyKind::Bill, 5_000), None);
        assert_eq!(Denomination::recognise(MoneyKind::Coin, 5), None);
        assert_eq!(Denomination::recognise(MoneyKind::Coin, -10), None);
    }

    #[test]
    fn exact_change_with_fewest_coins() {
        let tubes = CoinCounts([10, 10, 10, 10]);
        let plan = make_change(1_860, &tubes);
        assert_eq!(plan.owed, 0);
        assert_eq!(plan.coins, CoinCounts([1, 1, 3, 3]));
    }

    #[test]
    fn avoids_a_dead_end_that_greedy_would_take() {
        // 60 won from one 50 and six 10s is 2 coins; the change must not try
        // a path that strands the customer when 10s are scarce.
        let tubes = CoinCounts([1, 1, 0, 0]);
        assert_eq!(make_change(60, &tubes).coins, CoinCounts([1, 1, 0, 0]));
        // 150 with no 100s and three 50s: pay three 50s.
        let tubes = CoinCounts([0, 3, 0, 1]);
        assert_eq!(make_change(150, &tubes).coins, CoinCounts([0, 3, 0, 0]));
    }

    #[test]
    fn pays_what_it_can_and_owes_the_rest() {
        let tubes = CoinCounts([2, 0, 1, 0]);
        let plan = make_change(250, &tubes);
        assert_eq!(plan.paid, 120);
        assert_eq!(plan.owed, 130);
        assert_eq!(plan.coins, CoinCounts([2, 0, 1, 0]));
        let empty = make_change(700, &CoinCounts::ZERO);
        assert_eq!((empty.paid, empty.owed), (0, 700));
    }

    #[test]
    fn matches_brute_force_on_small_tubes() {
        for amount in (0..=1_200).step_by(10) {
            for tubes in [
                [0, 1, 2, 1],
                [5, 0, 3, 2],
                [3, 3, 0, 1],
                [9, 1, 1, 1],
                [0, 0, 5, 0],
            ] {
                let tubes = CoinCounts(tubes);
                let plan = make_change(amount, &tubes);
                match brute_force(amount, &tubes) {
                    Some(n) => {
                        assert_eq!(plan.owed, 0, "amount {amount} tubes {tubes:?}");
                        assert_eq!(u64::from(n), plan.coins.coin_count());
                    }
                    None => assert!(plan.owed > 0),
                }
                assert!(plan.coins.fits_in(&tubes));
            }
        }
    }

    #[test]
    fn exact_change_only_when_small_coins_run_out() {
        assert!(can_pay_every_amount_up_to(990, &CoinCounts([4, 1, 4, 1])));
        assert!(!can_pay_every_amount_up_to(990, &CoinCounts([3, 1, 4, 1])));
        assert!(!can_pay_every_amount_up_to(990, &CoinCounts::ZERO));
    }

    #[test]
    fn formats_won_with_separators() {
        assert_eq!(format_won(0), "0");
        assert_eq!(format_won(450), "450");
        assert_eq!(format_won(7_000), "7,000");
        assert_eq!(format_won(-1_234_567), "-1,234,567");
    }
}

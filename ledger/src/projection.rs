//! Projections: what the fleet log says about inventory, cash and sales,
//! derived only from the log.
//!
//! A [`Projection`] is rebuilt by applying log entries in gseq order. It can
//! stop at any gseq or machine time ("as of"), is serialisable so the store
//! can checkpoint it, and applies each machine's events with the very same
//! [`MachineState::apply`] the machine itself uses.

use crate::event::{Event, EventEnvelope, Source};
use crate::ids::MachineId;
use crate::money::Won;
use crate::operator::{OperatorError, OperatorRecord};
use crate::posting::Balances;
use crate::state::{ApplyError, MachineState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Sales are bucketed by Korean calendar days (KST, UTC+9, no daylight
/// saving time).
pub const KST_OFFSET_MS: i64 = 9 * 3_600 * 1_000;
const DAY_MS: i64 = 86_400 * 1_000;

/// Days since 1970-01-01 in KST.
pub fn kst_day(at_ms: i64) -> i32 {
    i32::try_from((at_ms + KST_OFFSET_MS).div_euclid(DAY_MS)).unwrap_or(i32::MAX)
}

/// The KST calendar date of a day number.
pub fn day_date(day: i32) -> jiff::civil::Date {
    let epoch = jiff::civil::date(1970, 1, 1);
    epoch
        .checked_add(jiff::Span::new().days(i64::from(day)))
        .unwrap_or(jiff::civil::Date::MAX)
}

/// Units sold and net revenue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub count: i64,
    pub won: Won,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.count += other.count;
        self.won += other.won;
    }
}

/// How sales are grouped in a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Period {
    Day,
    Week,
    Month,
    Year,
}

impl Period {
    /// The label of the period containing `day`: `2026-11-23`, `2026-W48`,
    /// `2026-11` or `2026`.
    pub fn label(self, day: i32) -> String {
        let date = day_date(day);
        match self {
            Period::Day => date.to_string(),
            Period::Week => {
                let week = date.iso_week_date();
                format!("{:04}-W{:02}", week.year(), week.week())
            }
            Period::Month => format!("{:04}-{:02}", date.year(), date.month()),
            Period::Year => format!("{:04}", date.year()),
        }
    }
}

impl std::str::FromStr for Period {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "day" => Ok(Period::Day),
            "week" => Ok(Period::Week),
            "month" => Ok(Period::Month),
            "year" => Ok(Period::Year),
            other => Err(format!(
                "unknown period {other:?} (day, week, month or year)"
            )),
        }
    }
}

/// One line of a sales report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SalesRow {
    pub period: String,
    pub machine_id: MachineId,
    pub product: String,
    pub count: i64,
    pub won: Won,
}

/// One machine's net sales per KST day and product.
pub type MachineSales = BTreeMap<i32, BTreeMap<String, Tally>>;

/// Net sales per machine, KST day and product. Weeks, months and years are
/// rolled up from days when asked, so applying an event touches one tally.
///
/// Each machine's days are shared (`Arc`) so that copying the whole
/// projection for readers costs a reference count per machine, not its
/// history; the next sale of a machine whose days a copy still holds
/// copies that machine's days only (see [`Projection`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sales {
    #[serde(with = "shared_values")]
    pub days: BTreeMap<MachineId, Arc<MachineSales>>,
}

impl Sales {
    fn record(&mut self, machine: &MachineId, at_ms: i64, product: &str, delta: Tally) {
        let days = match self.days.get_mut(machine) {
            Some(days) => Arc::make_mut(days),
            None => Arc::make_mut(self.days.entry(machine.clone()).or_default()),
        };
        let products = days.entry(kst_day(at_ms)).or_default();
        match products.get_mut(product) {
            Some(tally) => tally.add(delta),
            None => {
                products.insert(product.to_owned(), delta);
            }
        }
    }

    /// Sales grouped by `period`, machine and product, oldest first.
    pub fn report(&self, period: Period, machine: Option<&MachineId>) -> Vec<SalesRow> {
        let mut grouped: BTreeMap<(String, MachineId, String), Tally> = BTreeMap::new();
        for (machine_id, days) in &self.days {
            if machine.is_some_and(|m| m != machine_id) {
                continue;
            }
            let mut label_cache: Option<(i32, String)> = None;
            for (&day, products) in days.iter() {
                let label = match &label_cache {
                    Some((cached, label)) if *cached == day => label.clone(),
                    _ => {
                        let label = period.label(day);
                        label_cache = Some((day, label.clone()));
                        label
                    }
                };
                for (product, tally) in products {
                    grouped
                        .entry((label.clone(), machine_id.clone(), product.clone()))
                        .or_default()
                        .add(*tally);
                }
            }
        }
        grouped
            .into_iter()
            .map(|((period, machine_id, product), t)| SalesRow {
                period,
                machine_id,
                product,
                count: t.count,
                won: t.won,
            })
            .collect()
    }

    /// Totals over the whole fleet and all time.
    pub fn total(&self) -> Tally {
        let mut total = Tally::default();
        for days in self.days.values() {
            for products in days.values() {
                for tally in products.values() {
                    total.add(*tally);
                }
            }
        }
        total
    }
}

/// An entry the projection could not apply. Kept (bounded) so `verify`
/// and the dashboard can name it; the projection continues without it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionIssue {
    pub gseq: u64,
    pub machine_id: MachineId,
    pub machine_seq: u64,
    pub problem: String,
}

/// Most issues a projection remembers (the count keeps going).
pub const ISSUES_KEPT_MAX: usize = 100;

/// A cash collection at a machine: what the ledger expected (cash box and
/// bill stacker), what the operator counted, and the difference, which the
/// machine posted to over/short.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collection {
    pub machine_id: MachineId,
    pub gseq: u64,
    pub machine_seq: u64,
    /// The machine's clock.
    pub at_ms: i64,
    pub cash_box: Won,
    pub stacker: Won,
    pub counted: Won,
}

impl Collection {
    pub fn expected(&self) -> Won {
        self.cash_box + self.stacker
    }

    /// Counted minus expected: positive is over, negative is short.
    pub fn over_short(&self) -> Won {
        self.counted - self.expected()
    }
}

/// Values shared behind `Arc` are stored as the values themselves: a
/// checkpointed projection's bytes are the same as when the maps held them
/// directly (MessagePack maps, key then value).
mod shared_values {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    pub fn serialize<K, V, S>(map: &BTreeMap<K, Arc<V>>, serializer: S) -> Result<S::Ok, S::Error>
    where
        K: Serialize,
        V: Serialize,
        S: Serializer,
    {
        serializer.collect_map(map.iter().map(|(key, value)| (key, &**value)))
    }

    pub fn deserialize<'de, K, V, D>(deserializer: D) -> Result<BTreeMap<K, Arc<V>>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        let plain = BTreeMap::<K, V>::deserialize(deserializer)?;
        Ok(plain
            .into_iter()
            .map(|(key, value)| (key, Arc::new(value)))
            .collect())
    }
}

/// The fleet as the log says it is.
///
/// Readers (the dashboard's pages) get a copy after rounds, and a fleet of
/// 10,000 machines made that copy the core thread's longest stall. So each
/// machine's state is shared (`Arc`): a copy costs a reference count per
/// machine, and applying an event copies only that machine's state, and
/// only while a published copy still holds it (`Arc::make_mut`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Projection {
    /// The last gseq applied (0 for an empty projection).
    pub as_of_gseq: u64,
    #[serde(with = "shared_values")]
    pub machines: BTreeMap<MachineId, Arc<MachineState>>,
    pub sales: Sales,
    pub entries_applied: u64,
    pub issue_count: u64,
    pub issues: Vec<ProjectionIssue>,
    /// Every cash collection in the fleet, in gseq order.
    pub collections: Vec<Collection>,
    /// Operator accounts, remote commands and acknowledged alerts.
    pub operators: crate::operator::Operators,
}

/// Fleet-wide sums.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FleetTotals {
    pub machines: usize,
    pub purchases: u64,
    pub cancels: u64,
    pub sales_won: Won,
    pub cash_in_machines_won: Won,
    pub change_owed_won: Won,
    pub items_in_stock: u64,
    pub balances: Balances,
}

impl Projection {
    /// Applies the entry at `gseq`. An entry that does not apply is recorded
    /// as an issue and skipped; the error is returned too.
    pub fn apply(&mut self, gseq: u64, envelope: &EventEnvelope) -> Result<(), ApplyError> {
        debug_assert!(gseq > self.as_of_gseq, "entries are applied in gseq order");
        self.as_of_gseq = gseq;
        let state = match self.machines.get_mut(&envelope.machine_id) {
            Some(state) => Arc::make_mut(state),
            None => Arc::make_mut(
                self.machines
                    .entry(envelope.machine_id.clone())
                    .or_default(),
            ),
        };
        if let Err(error) = state.apply(envelope) {
            self.issue_count += 1;
            if self.issues.len() < ISSUES_KEPT_MAX {
                self.issues.push(ProjectionIssue {
                    gseq,
                    machine_id: envelope.machine_id.clone(),
                    machine_seq: envelope.machine_seq,
                    problem: error.to_string(),
                });
            }
            return Err(error);
        }
        self.entries_applied += 1;
        if let Event::CashCollected {
            cash_box,
            stacker,
            counted,
        } = &envelope.event
        {
            self.collections.push(Collection {
                machine_id: envelope.machine_id.clone(),
                gseq,
                machine_seq: envelope.machine_seq,
                at_ms: envelope.at_ms,
                cash_box: *cash_box,
                stacker: *stacker,
                counted: *counted,
            });
        }
        self.settle_remote_command(gseq, envelope);
        let sale = match &envelope.event {
            Event::ProductPurchased { product, price, .. } => Some((product, 1, *price)),
            Event::PurchaseCancelled { product, price, .. } => Some((product, -1, -price)),
            _ => None,
        };
        if let Some((product, count, won)) = sale {
            self.sales.record(
                &envelope.machine_id,
                envelope.at_ms,
                product,
                Tally { count, won },
            );
        }
        Ok(())
    }

    /// A machine's event that answers a remote command (the change it made,
    /// or its refusal) settles the command requested in the log.
    fn settle_remote_command(&mut self, gseq: u64, envelope: &EventEnvelope) {
        let machine = &envelope.machine_id;
        match &envelope.event {
            Event::PriceChanged {
                source: Source::Remote { command_id },
                ..
            }
            | Event::ProductRenamed {
                source: Source::Remote { command_id },
                ..
            }
            | Event::ChangeOwedSettled {
                source: Source::Remote { command_id },
                ..
            } => self
                .operators
                .command_applied(machine, *command_id, gseq, envelope.at_ms),
            Event::RemoteCommandRejected { command_id, reason } => {
                self.operators
                    .command_rejected(machine, *command_id, gseq, reason)
            }
            _ => {}
        }
    }

    /// Applies the operator record at `gseq` (an account, a command for a
    /// machine, an acknowledged alert). A record that does not apply is
    /// recorded as an issue and skipped; the error is returned too.
    pub fn apply_operator(
        &mut self,
        gseq: u64,
        record: &OperatorRecord,
    ) -> Result<(), OperatorError> {
        debug_assert!(gseq > self.as_of_gseq, "entries are applied in gseq order");
        self.as_of_gseq = gseq;
        let applied = self.operators.apply(gseq, record);
        if let Err(error) = &applied {
            self.issue_count += 1;
            self.operators.record_issue(gseq, error);
        }
        applied
    }

    /// Advances past an entry that carries no machine event (an epoch
    /// marker) or that an as-of limit excludes.
    pub fn skip(&mut self, gseq: u64) {
        debug_assert!(gseq > self.as_of_gseq, "entries are applied in gseq order");
        self.as_of_gseq = gseq;
    }

    pub fn totals(&self) -> FleetTotals {
        let mut totals = FleetTotals {
            machines: self.machines.len(),
            ..FleetTotals::default()
        };
        for state in self.machines.values() {
            totals.purchases += state.stats.purchases;
            totals.cancels += state.stats.cancels;
            totals.sales_won += state.stats.sales_won;
            totals.cash_in_machines_won += state.balances.physical_total();
            totals.change_owed_won += state.owed_total();
            totals.items_in_stock += state
                .slots
                .values()
                .map(|s| u64::from(s.stock))
                .sum::<u64>();
            totals.balances.merge(&state.balances);
        }
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the maps held before they shared their values: a checkpoint
    /// written either way must read back either way.
    #[derive(Serialize, Deserialize)]
    struct PlainMaps {
        machines: BTreeMap<MachineId, MachineState>,
        days: BTreeMap<MachineId, MachineSales>,
    }

    #[derive(Serialize, Deserialize)]
    struct SharedMaps {
        #[serde(with = "shared_values")]
        machines: BTreeMap<MachineId, Arc<MachineState>>,
        #[serde(with = "shared_values")]
        days: BTreeMap<MachineId, Arc<MachineSales>>,
    }

    #[test]
    fn shared_maps_are_stored_as_the_plain_maps_were() {
        let vm = MachineId::numbered(7);
        let state = MachineState {
            last_seq: 12,
            cash_box: 4_500,
            ..MachineState::default()
        };
        let mut sales = Sales::default();
        sales.record(
            &vm,
            1_795_359_600_000,
            "Water",
            Tally { count: 2, won: 900 },
        );
        let plain = PlainMaps {
            machines: BTreeMap::from([(vm.clone(), state.clone())]),
            days: BTreeMap::from([(vm.clone(), (*sales.days[&vm]).clone())]),
        };
        let shared = SharedMaps {
            machines: BTreeMap::from([(vm.clone(), Arc::new(state.clone()))]),
            days: sales.days.clone(),
        };
        let plain_bytes = rmp_serde::to_vec(&plain).unwrap();
        assert_eq!(rmp_serde::to_vec(&shared).unwrap(), plain_bytes);
        let read: SharedMaps = rmp_serde::from_slice(&plain_bytes).unwrap();
        assert_eq!(*read.machines[&vm], state);
        assert_eq!(read.days, sales.days);
    }

    #[test]
    fn a_copy_shares_each_machine_until_the_original_changes_it() {
        let (one, two) = (MachineId::numbered(1), MachineId::numbered(2));
        let mut projection = Projection::default();
        for vm in [&one, &two] {
            projection
                .machines
                .insert(vm.clone(), Arc::new(MachineState::default()));
            projection
                .sales
                .record(vm, 1_795_359_600_000, "Water", Tally { count: 1, won: 450 });
        }
        let copy = projection.clone();
        assert!(Arc::ptr_eq(
            &copy.machines[&one],
            &projection.machines[&one]
        ));
        projection.sales.record(
            &one,
            1_795_359_600_000,
            "Water",
            Tally { count: 1, won: 450 },
        );
        Arc::make_mut(projection.machines.get_mut(&one).unwrap()).cash_box = 500;
        assert_eq!(
            copy.machines[&one].cash_box, 0,
            "the copy keeps what it had"
        );
        assert_eq!(copy.sales.total(), Tally { count: 2, won: 900 });
        assert_eq!(
            projection.sales.total(),
            Tally {
                count: 3,
                won: 1_350
            }
        );
        assert!(Arc::ptr_eq(
            &copy.machines[&two],
            &projection.machines[&two]
        ));
        assert!(Arc::ptr_eq(
            &copy.sales.days[&two],
            &projection.sales.days[&two]
        ));
    }

    #[test]
    fn kst_days_roll_over_at_kst_midnight() {
        // 2026-11-22T15:00:00Z is 2026-11-23 00:00 KST.
        let midnight_kst = 1_795_359_600_000;
        assert_eq!(Period::Day.label(kst_day(midnight_kst)), "2026-11-23");
        assert_eq!(Period::Day.label(kst_day(midnight_kst - 1)), "2026-11-22");
        assert_eq!(Period::Week.label(kst_day(midnight_kst)), "2026-W48");
        assert_eq!(Period::Month.label(kst_day(midnight_kst)), "2026-11");
        assert_eq!(Period::Year.label(kst_day(midnight_kst)), "2026");
        assert_eq!(Period::Day.label(kst_day(-1)), "1970-01-01");
    }

    #[test]
    fn reports_roll_days_up() {
        let mut sales = Sales::default();
        let vm = MachineId::numbered(1);
        let day1 = 1_795_359_600_000;
        sales.record(&vm, day1, "Water", Tally { count: 1, won: 450 });
        sales.record(&vm, day1 + DAY_MS, "Water", Tally { count: 2, won: 900 });
        sales.record(&vm, day1 + DAY_MS, "Coffee", Tally { count: 1, won: 500 });
        assert_eq!(sales.report(Period::Day, None).len(), 3);
        let monthly = sales.report(Period::Month, Some(&vm));
        assert_eq!(monthly.len(), 2);
        let water = monthly.iter().find(|r| r.product == "Water").unwrap();
        assert_eq!((water.count, water.won), (3, 1_350));
        assert!(
            sales
                .report(Period::Year, Some(&MachineId::numbered(2)))
                .is_empty()
        );
        assert_eq!(
            sales.total(),
            Tally {
                count: 4,
                won: 1_850
            }
        );
    }
}

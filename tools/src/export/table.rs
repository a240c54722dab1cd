//! The csv and jsonl exports: a row per event, or the sales summary.

use super::{Export, Format, Table};
use crate::util::{kst_text, utc_text};
use anyhow::Result;
use ledger::MachineId;
use ledger::event::Event;
use ledger::ids::SlotId;
use ledger::money::Won;
use ledger::posting::{ACCOUNTS, postings};
use ledger::projection::{Projection, Tally, day_date, kst_day};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::io::Write;

/// The columns every event row starts with; one signed column per ledger
/// account follows (debits positive, credits negative, as in the postings).
const EVENT_COLUMNS: [&str; 9] = [
    "gseq",
    "time_kst",
    "time_utc",
    "machine_id",
    "machine_seq",
    "kind",
    "slot",
    "product",
    "amount_won",
];

const SALES_COLUMNS: [&str; 5] = ["date_kst", "machine_id", "product", "units", "won"];

/// Where rows go: a CSV writer (quoting as spreadsheets expect) or JSON
/// lines.
enum Output<'w> {
    /// Boxed: the CSV writer's buffer state is large and lives once.
    Csv(Box<csv::Writer<&'w mut dyn Write>>),
    Jsonl(&'w mut dyn Write),
}

impl Output<'_> {
    /// One row: CSV fields, or the JSON object that carries the same.
    fn row(&mut self, fields: &[String], object: impl FnOnce() -> serde_json::Value) -> Result<()> {
        match self {
            Output::Csv(csv) => csv.write_record(fields)?,
            Output::Jsonl(out) => writeln!(out, "{}", object())?,
        }
        Ok(())
    }
}

/// Writes rows as they come (events) or at the end (sales).
pub struct Writer<'w> {
    table: Table,
    output: Output<'w>,
    sales: BTreeMap<(i32, MachineId, String), Tally>,
}

impl<'w> Writer<'w> {
    pub fn new(format: Format, table: Table, out: &'w mut dyn Write) -> Result<Writer<'w>> {
        let output = if format == Format::Csv {
            let mut csv = csv::Writer::from_writer(out);
            match table {
                Table::Events => {
                    let accounts: Vec<String> = ACCOUNTS.iter().map(|a| a.name()).collect();
                    csv.write_record(
                        EVENT_COLUMNS
                            .iter()
                            .copied()
                            .chain(accounts.iter().map(String::as_str)),
                    )?;
                }
                Table::Sales => csv.write_record(SALES_COLUMNS)?,
            }
            Output::Csv(Box::new(csv))
        } else {
            Output::Jsonl(out)
        };
        Ok(Writer {
            table,
            output,
            sales: BTreeMap::new(),
        })
    }

    /// One applied event; `after` is the projection just after it.
    pub fn event(&mut self, export: &Export<'_>, after: &Projection) -> Result<()> {
        let envelope = export.envelope;
        if self.table == Table::Sales {
            if let Some((product, units, won)) = sale(&envelope.event) {
                let key = (
                    kst_day(envelope.at_ms),
                    envelope.machine_id.clone(),
                    product.to_owned(),
                );
                let tally = self.sales.entry(key).or_default();
                tally.count += units;
                tally.won += won;
            }
            return Ok(());
        }
        let row = EventRow::of(export, after);
        self.output.row(&row.csv_fields(), || row.json())
    }

    /// Writes the sales summary (if that is the table) and flushes.
    pub fn finish(mut self) -> Result<()> {
        for ((day, machine, product), tally) in std::mem::take(&mut self.sales) {
            let date = day_date(day).to_string();
            let fields = [
                date.clone(),
                machine.to_string(),
                product.clone(),
                tally.count.to_string(),
                tally.won.to_string(),
            ];
            self.output.row(&fields, || {
                json!({
                    "date_kst": date,
                    "machine_id": machine,
                    "product": product,
                    "units": tally.count,
                    "won": tally.won,
                })
            })?;
        }
        match &mut self.output {
            Output::Csv(csv) => csv.flush()?,
            Output::Jsonl(out) => out.flush()?,
        }
        Ok(())
    }
}

/// A purchase counts one unit and its price; a cancel takes them back.
fn sale(event: &Event) -> Option<(&str, i64, Won)> {
    match event {
        Event::ProductPurchased { product, price, .. } => Some((product, 1, *price)),
        Event::PurchaseCancelled { product, price, .. } => Some((product, -1, -price)),
        _ => None,
    }
}

/// The slot an event is about, if any.
pub fn slot_of(event: &Event) -> Option<SlotId> {
    match event {
        Event::ProductPurchased { slot, .. }
        | Event::PurchaseCancelled { slot, .. }
        | Event::SlotRefilled { slot, .. }
        | Event::PriceChanged { slot, .. }
        | Event::ProductRenamed { slot, .. } => Some(*slot),
        Event::SlotConfigured(config) => Some(config.slot),
        _ => None,
    }
}

/// One event as an accountant reads it.
struct EventRow {
    gseq: u64,
    at_ms: i64,
    machine_id: String,
    machine_seq: u64,
    kind: &'static str,
    slot: Option<u16>,
    product: Option<String>,
    amount: Option<Won>,
    /// Signed won per account, in `ACCOUNTS` order.
    accounts: [Won; ACCOUNTS.len()],
}

impl EventRow {
    fn of(export: &Export<'_>, after: &Projection) -> EventRow {
        let envelope = export.envelope;
        let event = &envelope.event;
        let slot = slot_of(event);
        let product = match event {
            Event::ProductPurchased { product, .. } | Event::PurchaseCancelled { product, .. } => {
                Some(product.clone())
            }
            _ => slot.and_then(|slot| {
                let state = after.machines.get(&envelope.machine_id)?;
                Some(state.slots.get(&slot)?.config.product.name.clone())
            }),
        };
        let mut accounts = [0; ACCOUNTS.len()];
        for posting in postings(event) {
            if let Some(index) = ACCOUNTS.iter().position(|a| *a == posting.account) {
                accounts[index] += posting.amount;
            }
        }
        EventRow {
            gseq: export.gseq,
            at_ms: envelope.at_ms,
            machine_id: envelope.machine_id.to_string(),
            machine_seq: envelope.machine_seq,
            kind: event.kind(),
            slot: slot.map(|s| s.0),
            product,
            amount: event.amount(),
            accounts,
        }
    }

    fn csv_fields(&self) -> Vec<String> {
        let optional = |v: Option<String>| v.unwrap_or_default();
        let mut fields = vec![
            self.gseq.to_string(),
            kst_text(self.at_ms),
            utc_text(self.at_ms),
            self.machine_id.clone(),
            self.machine_seq.to_string(),
            self.kind.to_owned(),
            optional(self.slot.map(|s| s.to_string())),
            optional(self.product.clone()),
            optional(self.amount.map(|a| a.to_string())),
        ];
        fields.extend(self.accounts.iter().map(Won::to_string));
        fields
    }

    /// A JSON object; the postings as a list of the accounts they touch.
    fn json(&self) -> Value {
        let postings: Vec<Value> = ACCOUNTS
            .iter()
            .zip(self.accounts)
            .filter(|(_, won)| *won != 0)
            .map(|(account, won)| json!({"account": account.name(), "won": won}))
            .collect();
        let mut object = Map::new();
        object.insert("gseq".into(), json!(self.gseq));
        object.insert("time_kst".into(), json!(kst_text(self.at_ms)));
        object.insert("time_utc".into(), json!(utc_text(self.at_ms)));
        object.insert("machine_id".into(), json!(self.machine_id));
        object.insert("machine_seq".into(), json!(self.machine_seq));
        object.insert("kind".into(), json!(self.kind));
        object.insert("slot".into(), json!(self.slot));
        object.insert("product".into(), json!(self.product));
        object.insert("amount_won".into(), json!(self.amount));
        object.insert("postings".into(), Value::Array(postings));
        Value::Object(object)
    }
}

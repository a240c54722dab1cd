//! Cash reconciliation: every collection in the fleet with what the ledger
//! expected (cash box and stacker), what the operator counted, and the
//! over/short the machine posted; totals per machine and per period.

use super::machine::{CollectionRow, collection_row, collection_table};
use super::{Section, Viewer};
use crate::app::AppState;
use crate::format;
use crate::pages::errors::Problem;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Html;
use ledger::projection::{Collection, Period, kst_day};

use ledger::{MachineId, Won};
use maud::{Markup, html};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Collections listed per page (keyset paging by gseq).
pub const PAGE_ROWS: usize = 100;

#[derive(Deserialize, Default)]
pub struct ReconciliationQuery {
    #[serde(default)]
    pub period: Option<String>,
    #[serde(default)]
    pub machine: Option<String>,
    /// Show collections logged before this gseq (the next page).
    #[serde(default)]
    pub before: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ReconTotal {
    pub label: String,
    pub collections: u64,
    pub expected: Won,
    pub counted: Won,
    pub over_short: Won,
}

impl ReconTotal {
    fn add(&mut self, c: &Collection) {
        self.collections += 1;
        self.expected += c.expected();
        self.counted += c.counted;
        self.over_short += c.over_short();
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Reconciliation {
    pub period: String,
    pub machine: Option<MachineId>,
    pub as_of_gseq: u64,
    /// Newest first, at most `PAGE_ROWS`.
    pub collections: Vec<CollectionRow>,
    /// Where the next (older) page starts, if there is one.
    pub next_before: Option<u64>,
    pub per_machine: Vec<ReconTotal>,
    pub per_period: Vec<ReconTotal>,
    pub total: ReconTotal,
}

pub struct Filter {
    pub period: Period,
    pub machine: Option<MachineId>,
    pub before: u64,
}

pub fn parse_query(query: &ReconciliationQuery) -> Result<Filter, Problem> {
    let sales = super::sales::SalesQuery {
        period: Some(query.period.clone().unwrap_or_else(|| "month".into())),
        machine: query.machine.clone(),
    };
    let (period, machine) = super::sales::parse_query(&sales)?;
    let before = match query.before.as_deref().filter(|b| !b.is_empty()) {
        None => u64::MAX,
        Some(text) => text.parse().map_err(|_| {
            Problem::new(StatusCode::BAD_REQUEST, format!("{text:?} is not a gseq"))
        })?,
    };
    Ok(Filter {
        period,
        machine,
        before,
    })
}

/// The collections the filter selects, oldest first.
pub fn selected<'a>(
    collections: &'a [Collection],
    filter: &'a Filter,
) -> impl DoubleEndedIterator<Item = &'a Collection> + 'a {
    collections
        .iter()
        .filter(move |c| filter.machine.as_ref().is_none_or(|m| c.machine_id == *m))
}

pub fn model(app: &AppState, query: &ReconciliationQuery) -> Result<Reconciliation, Problem> {
    let filter = parse_query(query)?;
    let projection = app.projection();
    if let Some(machine) = &filter.machine
        && !projection.machines.contains_key(machine)
    {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("no machine {machine}"),
        ));
    }
    let mut per_machine: BTreeMap<&MachineId, ReconTotal> = BTreeMap::new();
    let mut per_period: BTreeMap<String, ReconTotal> = BTreeMap::new();
    let mut total = ReconTotal {
        label: "total".into(),
        ..ReconTotal::default()
    };
    for c in selected(&projection.collections, &filter) {
        per_machine
            .entry(&c.machine_id)
            .or_insert_with(|| ReconTotal {
                label: c.machine_id.to_string(),
                ..ReconTotal::default()
            })
            .add(c);
        let label = filter.period.label(kst_day(c.at_ms));
        per_period
            .entry(label.clone())
            .or_insert_with(|| ReconTotal {
                label,
                ..ReconTotal::default()
            })
            .add(c);
        total.add(c);
    }
    // Collections are in gseq order: the page starts below `before`.
    let end = projection
        .collections
        .partition_point(|c| c.gseq < filter.before);
    let mut page: Vec<CollectionRow> = selected(&projection.collections[..end], &filter)
        .rev()
        .take(PAGE_ROWS + 1)
        .map(collection_row)
        .collect();
    let next_before = (page.len() > PAGE_ROWS).then(|| page[PAGE_ROWS - 1].gseq);
    page.truncate(PAGE_ROWS);
    Ok(Reconciliation {
        period: super::sales::period_name(filter.period).to_owned(),
        machine: filter.machine.clone(),
        as_of_gseq: projection.as_of_gseq,
        collections: page,
        next_before,
        per_machine: per_machine.into_values().collect(),
        per_period: per_period.into_values().rev().collect(),
        total,
    })
}

fn totals_table(first: &str, rows: &[ReconTotal], total: &ReconTotal) -> Markup {
    html! {
        table {
            thead { tr { th { (first) } th.num { "Collections" } th.num { "Expected" } th.num { "Counted" } th.num { "Over/short" } } }
            tbody {
                @for row in rows {
                    tr {
                        td { (row.label) }
                        td.num { (row.collections) }
                        td.num { (format::won(row.expected)) }
                        td.num { (format::won(row.counted)) }
                        td.num.over[row.over_short > 0].short[row.over_short < 0] { (format::won_signed(row.over_short)) }
                    }
                }
                tr {
                    th { "All" } th.num { (total.collections) } th.num { (format::won(total.expected)) }
                    th.num { (format::won(total.counted)) } th.num { (format::won_signed(total.over_short)) }
                }
            }
        }
    }
}

pub async fn page(
    State(app): State<AppState>,
    viewer: Viewer,
    Query(query): Query<ReconciliationQuery>,
) -> Result<Html<String>, Problem> {
    let report = model(&app, &query)?;
    let machine_param = report
        .machine
        .as_ref()
        .map(|m| format!("&machine={m}"))
        .unwrap_or_default();
    let query_string = format!("period={}{machine_param}", report.period);
    let body = html! {
        h1 { "Cash reconciliation" }
        p.sub {
            "Every cash collection: what the ledger expected in the cash box and stacker, what was counted, and the over/short posted. "
            @if let Some(m) = &report.machine { "Machine " a href={"/machines/" (m)} { (m) } ". " }
        }
        div.tabs {
            @for name in ["day", "week", "month", "year"] {
                a href={"/reconciliation?period=" (name) (machine_param)} class=[(name == report.period).then_some("active")] { (name) }
            }
        }
        div.grid-even {
            section.panel { h2 { "Per machine" } (totals_table("Machine", &report.per_machine, &report.total)) }
            section.panel { h2 { "Per " (report.period) } (totals_table("Period", &report.per_period, &report.total)) }
        }
        section.panel {
            div.exports { h2 { "Collections" } "Export" a href={"/api/v1/reconciliation.csv?" (query_string)} { "CSV" } a href={"/api/v1/reconciliation?" (query_string)} { "JSON" } }
            (collection_table(&report.collections, true))
            div.pager {
                span {}
                @if let Some(before) = report.next_before {
                    a href={"/reconciliation?" (query_string) "&before=" (before)} { "Older →" }
                }
            }
        }
    };
    Ok(super::layout(
        &app,
        Some(&viewer.operator),
        viewer.host(),
        Section::Reconciliation,
        "Reconciliation",
        body,
    ))
}

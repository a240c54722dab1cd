//! Sales by day, week, month or year (KST), for the fleet or one machine:
//! totals per period, per product and per machine, with charts.

use super::chart::{self, Bar};
use super::{Section, Viewer};
use crate::app::AppState;
use crate::format;
use crate::pages::errors::Problem;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Html;
use ledger::projection::{Period, SalesRow};
use ledger::{MachineId, Won};
use maud::html;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Periods charted (the newest this many; tables and exports have all).
fn periods_charted(period: Period) -> usize {
    match period {
        Period::Day => 31,
        Period::Week => 26,
        Period::Month => 24,
        Period::Year => 20,
    }
}

#[derive(Deserialize, Default)]
pub struct SalesQuery {
    #[serde(default)]
    pub period: Option<String>,
    #[serde(default)]
    pub machine: Option<String>,
}

/// Items and won of one group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Bucket {
    pub label: String,
    pub count: i64,
    pub won: Won,
}

#[derive(Clone, Debug, Serialize)]
pub struct SalesReport {
    /// `day`, `week`, `month` or `year`.
    pub period: &'static str,
    pub machine: Option<MachineId>,
    pub as_of_gseq: u64,
    /// Per period, machine and product: the same rows as `vendctl replay`.
    pub rows: Vec<SalesRow>,
    pub by_period: Vec<Bucket>,
    pub by_product: Vec<Bucket>,
    pub by_machine: Vec<Bucket>,
    pub total: Bucket,
}

pub fn period_name(period: Period) -> &'static str {
    match period {
        Period::Day => "day",
        Period::Week => "week",
        Period::Month => "month",
        Period::Year => "year",
    }
}

pub fn parse_query(query: &SalesQuery) -> Result<(Period, Option<MachineId>), Problem> {
    let period = match query.period.as_deref().filter(|p| !p.is_empty()) {
        None => Period::Day,
        Some(text) => text
            .parse()
            .map_err(|e: String| Problem::new(StatusCode::BAD_REQUEST, e))?,
    };
    let machine = match query.machine.as_deref().filter(|m| !m.is_empty()) {
        None => None,
        Some(text) => Some(super::machine::parse_machine(text)?),
    };
    Ok((period, machine))
}

fn add(map: &mut BTreeMap<String, Bucket>, label: &str, row: &SalesRow) {
    let bucket = map.entry(label.to_owned()).or_insert_with(|| Bucket {
        label: label.to_owned(),
        ..Bucket::default()
    });
    bucket.count += row.count;
    bucket.won += row.won;
}

pub fn model(app: &AppState, query: &SalesQuery) -> Result<SalesReport, Problem> {
    let (period, machine) = parse_query(query)?;
    let projection = app.projection();
    if let Some(machine) = &machine
        && !projection.machines.contains_key(machine)
    {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("no machine {machine}"),
        ));
    }
    let rows = projection.sales.report(period, machine.as_ref());
    let (mut by_period, mut by_product, mut by_machine) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    let mut total = Bucket {
        label: "total".into(),
        ..Bucket::default()
    };
    for row in &rows {
        add(&mut by_period, &row.period, row);
        add(&mut by_product, &row.product, row);
        add(&mut by_machine, row.machine_id.as_str(), row);
        total.count += row.count;
        total.won += row.won;
    }
    let mut by_product: Vec<Bucket> = by_product.into_values().collect();
    by_product.sort_by(|a, b| b.won.cmp(&a.won).then_with(|| a.label.cmp(&b.label)));
    Ok(SalesReport {
        period: period_name(period),
        machine,
        as_of_gseq: projection.as_of_gseq,
        rows,
        by_period: by_period.into_values().collect(),
        by_product,
        by_machine: by_machine.into_values().collect(),
        total,
    })
}

pub async fn page(
    State(app): State<AppState>,
    viewer: Viewer,
    Query(query): Query<SalesQuery>,
) -> Result<Html<String>, Problem> {
    let report = model(&app, &query)?;
    let (period, _) = parse_query(&query)?;
    let machine_param = report
        .machine
        .as_ref()
        .map(|m| format!("&machine={m}"))
        .unwrap_or_default();
    let charted: Vec<Bar<'_>> = report
        .by_period
        .iter()
        .rev()
        .take(periods_charted(period))
        .rev()
        .map(|b| Bar {
            label: &b.label,
            won: b.won,
        })
        .collect();
    let products: Vec<Bar<'_>> = report
        .by_product
        .iter()
        .map(|b| Bar {
            label: &b.label,
            won: b.won,
        })
        .collect();
    let machines: Vec<String> = app
        .projection()
        .machines
        .keys()
        .map(|m| m.to_string())
        .collect();
    let query_string = format!("period={}{machine_param}", report.period);
    let body = html! {
        h1 { "Sales" }
        p.sub {
            @match &report.machine { Some(m) => { "Machine " a href={"/machines/" (m)} { (m) } }, None => { "The whole fleet" } }
            " · by " (report.period) " in KST · net of cancels · "
            (format::count(u64::try_from(report.total.count).unwrap_or(0))) " items, " (format::won(report.total.won))
        }
        div.tabs {
            @for name in ["day", "week", "month", "year"] {
                a href={"/sales?period=" (name) (machine_param)} class=[(name == report.period).then_some("active")] { (name) }
            }
            form.inline method="get" action="/sales" {
                input type="hidden" name="period" value=(report.period);
                select name="machine" {
                    option value="" { "All machines" }
                    @for m in &machines {
                        option value=(m) selected[report.machine.as_ref().is_some_and(|x| x.as_str() == m)] { (m) }
                    }
                }
                button.secondary type="submit" { "Show" }
            }
        }
        section.panel {
            div.exports { h2 { "Sales per " (report.period) } "Export" a href={"/api/v1/sales.csv?" (query_string)} { "CSV" } a href={"/api/v1/sales?" (query_string)} { "JSON" } }
            (chart::columns(&format!("Sales per {}", report.period), &charted))
        }
        div.grid2 {
            section.panel {
                h2 { "Per " (report.period) }
                table {
                    thead { tr { th { "Period" } th.num { "Items" } th.num { "Sales" } } }
                    tbody {
                        @for bucket in report.by_period.iter().rev() {
                            tr { td { (bucket.label) } td.num { (bucket.count) } td.num { (format::won(bucket.won)) } }
                        }
                        @if report.by_period.is_empty() { tr { td colspan="3" .muted { "No sales yet." } } }
                    }
                }
            }
            div {
                section.panel {
                    h2 { "By product" }
                    (chart::rows("Sales by product", &products))
                    table {
                        thead { tr { th { "Product" } th.num { "Items" } th.num { "Sales" } } }
                        tbody { @for b in &report.by_product { tr { td { (b.label) } td.num { (b.count) } td.num { (format::won(b.won)) } } } }
                    }
                }
                @if report.machine.is_none() {
                    section.panel {
                        h2 { "By machine" }
                        table {
                            thead { tr { th { "Machine" } th.num { "Items" } th.num { "Sales" } } }
                            tbody {
                                @for b in &report.by_machine {
                                    tr { td { a href={"/sales?period=" (report.period) "&machine=" (b.label)} { (b.label) } } td.num { (b.count) } td.num { (format::won(b.won)) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(super::layout(
        &app,
        Some(&viewer.operator),
        viewer.host(),
        Section::Sales,
        "Sales",
        body,
    ))
}

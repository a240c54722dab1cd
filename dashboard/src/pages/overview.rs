//! The fleet overview: every machine with its link state, last event,
//! backlog, cash held and stock, the fleet's figures for today, the
//! alerts, and a live feed of committed entries.

use super::{Section, Viewer, csrf_field};
use crate::alerts::{Alert, Severity, kind_name};
use crate::app::{AppState, now_ms};
use crate::format;
use crate::ports::{MachineSummary, Role};
use axum::extract::State;
use axum::response::Html;
use ledger::projection::kst_day;
use ledger::{MachineId, Won};
use maud::{Markup, html};
use serde::Serialize;
use std::collections::HashMap;

/// A machine's link as this replica can tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Link {
    Online,
    Offline,
    /// This replica follows: only the primary holds machine sessions.
    OnPrimary,
}

impl Link {
    /// What a replica can say of a machine's link: the primary knows
    /// whether it holds a session; a follower only that the primary does.
    pub fn of(primary: bool, connected: bool) -> Link {
        match (primary, connected) {
            (false, _) => Link::OnPrimary,
            (true, true) => Link::Online,
            (true, false) => Link::Offline,
        }
    }
}

/// One row of the fleet table (also `/api/v1/machines` and its CSV).
#[derive(Clone, Debug, Serialize)]
pub struct MachineRow {
    pub machine: MachineId,
    pub link: Link,
    pub last_event_ms: i64,
    pub last_seen_ms: Option<i64>,
    pub last_seq: u64,
    /// Events the machine holds that the fleet has not acknowledged.
    pub backlog: Option<u64>,
    /// Events this replica holds but has not seen committed.
    pub uncommitted: u64,
    pub tubes_won: Won,
    pub cash_box_won: Won,
    pub stacker_won: Won,
    pub cash_held_won: Won,
    pub stock_units: u64,
    pub capacity_units: u64,
    pub sold_out_slots: usize,
    pub sales_today_won: Won,
    pub open_alerts: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub machines: usize,
    /// Machines with a session open (known on the primary only).
    pub online: Option<usize>,
    pub sales_today_won: Won,
    pub sales_today_items: i64,
    pub sales_total_won: Won,
    pub cash_held_won: Won,
    pub change_owed_won: Won,
    pub items_in_stock: u64,
    pub capacity: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Overview {
    pub replica: String,
    pub role: Role,
    pub as_of_gseq: u64,
    /// `YYYY-MM-DD` of today in KST.
    pub today: String,
    pub totals: Totals,
    pub machines: Vec<MachineRow>,
    pub alerts: Vec<Alert>,
}

pub fn model(app: &AppState) -> Overview {
    let snapshot = app.snapshot();
    let projection = app.projection();
    let board = app.alert_board();
    let now = now_ms();
    let today = kst_day(now);
    let summaries: HashMap<&MachineId, &MachineSummary> =
        snapshot.machines.iter().map(|m| (&m.machine, m)).collect();
    let primary = snapshot.role == Role::Primary;
    let mut totals = Totals {
        machines: projection.machines.len(),
        online: primary.then_some(0),
        ..Totals::default()
    };
    let mut machines = Vec::with_capacity(projection.machines.len());
    for (id, state) in &projection.machines {
        let summary = summaries.get(id);
        let connected = summary.is_some_and(|s| s.connected);
        let today_sales = projection
            .sales
            .days
            .get(id)
            .and_then(|days| days.get(&today))
            .map(|products| {
                products
                    .values()
                    .fold((0, 0), |(c, w), t| (c + t.count, w + t.won))
            })
            .unwrap_or((0, 0));
        let row = MachineRow {
            machine: id.clone(),
            link: Link::of(primary, connected),
            last_event_ms: state.last_at_ms,
            last_seen_ms: summary.and_then(|s| s.last_seen_ms),
            last_seq: state.last_seq,
            backlog: summary.and_then(|s| s.backlog),
            uncommitted: summary.map_or(0, |s| s.uncommitted),
            tubes_won: state.tubes.total(),
            cash_box_won: state.cash_box,
            stacker_won: state.stacker_total(),
            cash_held_won: state.balances.physical_total(),
            stock_units: state.slots.values().map(|s| u64::from(s.stock)).sum(),
            capacity_units: state
                .slots
                .values()
                .map(|s| u64::from(s.config.capacity))
                .sum(),
            sold_out_slots: state.slots.values().filter(|s| s.stock == 0).count(),
            sales_today_won: today_sales.1,
            open_alerts: board
                .alerts
                .iter()
                .filter(|a| a.condition.key.machine == *id && a.acknowledged.is_none())
                .count(),
        };
        if connected {
            totals.online = totals.online.map(|n| n + 1);
        }
        totals.sales_today_items += today_sales.0;
        totals.sales_today_won += today_sales.1;
        totals.sales_total_won += state.stats.sales_won;
        totals.cash_held_won += row.cash_held_won;
        totals.change_owed_won += state.owed_total();
        totals.items_in_stock += row.stock_units;
        totals.capacity += row.capacity_units;
        machines.push(row);
    }
    Overview {
        replica: snapshot.status.id.clone(),
        role: snapshot.role,
        as_of_gseq: projection.as_of_gseq,
        today: ledger::projection::Period::Day.label(today),
        totals,
        machines,
        alerts: board.alerts.clone(),
    }
}

pub async fn page(State(app): State<AppState>, viewer: Viewer) -> Html<String> {
    let overview = model(&app);
    let body = html! {
        div.heading {
            h1 { "Fleet overview" }
            p.sub {
                (overview.totals.machines) @if overview.totals.machines == 1 { " machine" } @else { " machines" } " · today " (overview.today) " (KST) · "
                span #live-status .live { "connecting…" }
            }
        }
        div data-fragment="overview" {
            (cards(&overview))
            div.grid2 {
                div {
                    section.panel {
                        div.exports {
                            h2 { "Machines" }
                            "Export" a href="/api/v1/machines.csv" { "CSV" } a href="/api/v1/machines" { "JSON" }
                        }
                        (machine_table(&overview))
                    }
                }
                div {
                    section.panel {
                        h2 { "Alerts" }
                        (alert_list(&app, &viewer, &overview.alerts, None))
                    }
                    (live_feed(None))
                }
            }
        }
        @if viewer.operator.is_admin() {
            (fleet_price_form(&app, &viewer))
        }
    };
    super::layout(
        &app,
        Some(&viewer.operator),
        viewer.host(),
        Section::Overview,
        "Overview",
        body,
    )
}

fn cards(overview: &Overview) -> Markup {
    let t = &overview.totals;
    html! {
        div.cards {
            div.card {
                div.label { "Machines online" }
                div.value {
                    @match t.online {
                        Some(online) => { (online) " / " (t.machines) }
                        None => { (t.machines) }
                    }
                }
                @if t.online.is_none() { div.muted { "link state is on the primary" } }
            }
            div.card { div.label { "Sales today" } div.value { (format::won(t.sales_today_won)) } div.muted { (t.sales_today_items) " items" } }
            div.card { div.label { "Sales, all time" } div.value { (format::won(t.sales_total_won)) } }
            div.card { div.label { "Cash in machines" } div.value { (format::won(t.cash_held_won)) } }
            div.card { div.label { "Change owed" } div.value { (format::won(t.change_owed_won)) } }
            div.card {
                div.label { "Items in stock" }
                div.value { (format::count(t.items_in_stock)) }
                div.muted { "of " (format::count(t.capacity)) " slots' capacity" }
            }
        }
    }
}

pub fn link_pill(link: Link) -> Markup {
    match link {
        Link::Online => html! { span.pill.ok { "online" } },
        Link::Offline => html! { span.pill.bad { "offline" } },
        Link::OnPrimary => {
            html! { span.pill.muted title="only the primary holds machine connections" { "see primary" } }
        }
    }
}

fn machine_table(overview: &Overview) -> Markup {
    let now = now_ms();
    html! {
        table {
            thead {
                tr {
                    th { "Machine" } th { "Link" } th { "Last event" } th.num { "Backlog" }
                    th.num { "Tubes" } th.num { "Cash box" } th.num { "Stacker" }
                    th.num { "Stock" } th.num { "Today" } th { "Alerts" }
                }
            }
            tbody {
                @for row in &overview.machines {
                    tr {
                        td { a href={"/machines/" (row.machine)} { strong { (row.machine) } } }
                        td {
                            (link_pill(row.link))
                            @if let (Link::Offline, Some(seen)) = (row.link, row.last_seen_ms) {
                                div.muted { "seen " (format::ago(now, seen)) }
                            }
                        }
                        td.nowrap title=(format::time(row.last_event_ms)) { (format::ago(now, row.last_event_ms)) div.muted { "#" (row.last_seq) } }
                        td.num {
                            @match row.backlog { Some(b) => { (format::count(b)) } None => { span.muted { "—" } } }
                        }
                        td.num { (format::won(row.tubes_won)) }
                        td.num { (format::won(row.cash_box_won)) }
                        td.num { (format::won(row.stacker_won)) }
                        td.num {
                            (row.stock_units) " / " (row.capacity_units)
                            @if row.sold_out_slots > 0 { div.short { (row.sold_out_slots) " sold out" } }
                        }
                        td.num { (format::won(row.sales_today_won)) }
                        td {
                            @if row.open_alerts > 0 {
                                span.pill.warn { (row.open_alerts) }
                            } @else {
                                span.pill.ok { "none" }
                            }
                        }
                    }
                }
                @if overview.machines.is_empty() {
                    tr { td colspan="10" .muted { "No machine has reported yet." } }
                }
            }
        }
    }
}

/// Alerts, each with an acknowledge form for admins (`machine`: only that
/// machine's).
pub fn alert_list(
    app: &AppState,
    viewer: &Viewer,
    alerts: &[Alert],
    machine: Option<&MachineId>,
) -> Markup {
    let shown: Vec<&Alert> = alerts
        .iter()
        .filter(|a| machine.is_none_or(|m| a.condition.key.machine == *m))
        .collect();
    let base = super::action_base(app, viewer.host());
    html! {
        @if shown.is_empty() {
            p.muted { "No alerts." }
        } @else {
            ul.alerts {
                @for alert in shown.iter().take(200) {
                    @let key = &alert.condition.key;
                    li class=[alert.acknowledged.is_some().then_some("acked")] {
                        @match alert.condition.severity {
                            Severity::Critical => span.pill.bad { (kind_name(key.kind).replace('_', " ")) },
                            Severity::Warning => span.pill.warn { (kind_name(key.kind).replace('_', " ")) },
                        }
                        div.what {
                            @if machine.is_none() { a href={"/machines/" (key.machine)} { strong { (key.machine) } } " " }
                            (alert.condition.message)
                            @if let Some(ack) = &alert.acknowledged {
                                div.muted {
                                    "acknowledged by " (ack.by) " " (format::ago(now_ms(), ack.at_ms))
                                    @if !ack.note.is_empty() { ": " (ack.note) }
                                }
                            }
                        }
                        @if alert.acknowledged.is_none() && viewer.operator.is_admin() {
                            @if let Some(base) = &base {
                                form.inline method="post" action={(base) "/alerts/acknowledge"} {
                                    (csrf_field(&viewer.operator))
                                    input type="hidden" name="kind" value=(kind_name(key.kind));
                                    input type="hidden" name="machine" value=(key.machine);
                                    input type="hidden" name="slot" value=(key.slot.map(|s| s.0.to_string()).unwrap_or_default());
                                    input.name type="text" name="note" placeholder="note (optional)" maxlength="200";
                                    button.secondary type="submit" { "Acknowledge" }
                                }
                            }
                        }
                    }
                }
            }
            @if shown.len() > 200 { p.muted { (shown.len() - 200) " more not shown; see " a href="/api/v1/alerts.csv" { "the CSV" } "." } }
        }
    }
}

/// The live feed panel; filled by the page's script.
pub fn live_feed(machine: Option<&MachineId>) -> Markup {
    html! {
        section.panel {
            h2 { "Live" }
            ul #live-feed .feed data-machine=[machine.map(|m| m.to_string())] {
                li #live-empty .muted { "Committed entries appear here as they happen." }
            }
        }
    }
}

fn fleet_price_form(app: &AppState, viewer: &Viewer) -> Markup {
    let products: std::collections::BTreeSet<String> = app
        .projection()
        .machines
        .values()
        .flat_map(|state| {
            state
                .slots
                .values()
                .map(|slot| slot.config.product.name.clone())
        })
        .collect();
    let base = super::action_base(app, viewer.host());
    html! {
        section.panel {
            h2 { "Fleet-wide price" }
            p.sub { "Sets the price of a product in every slot of every machine that sells it. Each machine applies the change itself." }
            @match base {
                Some(base) => {
                    form.inline method="post" action={(base) "/fleet/price"} {
                        (csrf_field(&viewer.operator))
                        select name="product" {
                            @for product in &products { option value=(product) { (product) } }
                        }
                        input.price type="text" name="price" placeholder="won" inputmode="numeric" required;
                        button type="submit" { "Set price everywhere" }
                    }
                }
                None => { p.muted { "No primary is known right now; changes are made on the primary." } }
            }
        }
    }
}

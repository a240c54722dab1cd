//! One machine: slots, coin tubes, cash box and stacker, change owed,
//! remote commands and their fate, collections, recent events, alerts.

use super::overview::{Link, alert_list, link_pill, live_feed};
use super::{Section, Viewer, csrf_field};
use crate::alerts::Alert;
use crate::app::{AppState, now_ms};
use crate::format;
use crate::pages::errors::Problem;
use crate::ports::{EntryKind, LogEntryView, Role};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Html;
use ledger::money::Denomination;
use ledger::operator::CommandOutcome;
use ledger::rules::RemoteAction;
use ledger::{MachineId, Won};
use maud::{Markup, html};
use serde::Serialize;

/// Recent events shown on a machine's page.
pub const RECENT_EVENTS: usize = 25;
/// Collections and commands shown (newest first; the CSV exports have all
/// collections).
pub const HISTORY_ROWS: usize = 50;

#[derive(Clone, Debug, Serialize)]
pub struct SlotRow {
    pub slot: u16,
    pub product: String,
    pub category: String,
    pub price: Won,
    pub stock: u32,
    pub capacity: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct TubeRow {
    pub coin: Won,
    pub count: u32,
    pub capacity: u32,
    pub won: Won,
}

#[derive(Clone, Debug, Serialize)]
pub struct TicketRow {
    pub ticket: u64,
    pub amount: Won,
    pub at_ms: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CommandRow {
    pub command_id: u64,
    pub action: String,
    pub requested_by: String,
    pub requested_at_ms: i64,
    pub gseq: u64,
    /// `pending`, `applied` or `rejected`.
    pub outcome: &'static str,
    pub outcome_gseq: Option<u64>,
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CollectionRow {
    pub machine: MachineId,
    pub gseq: u64,
    pub machine_seq: u64,
    pub at_ms: i64,
    pub expected: Won,
    pub counted: Won,
    pub over_short: Won,
}

#[derive(Clone, Debug, Serialize)]
pub struct MachineDetail {
    pub machine: MachineId,
    pub role: Role,
    pub as_of_gseq: u64,
    pub link: Link,
    pub last_event_ms: i64,
    pub last_seen_ms: Option<i64>,
    pub last_seq: u64,
    pub backlog: Option<u64>,
    pub uncommitted: u64,
    pub installed: bool,
    pub exact_change_only: bool,
    pub slots: Vec<SlotRow>,
    pub tubes: Vec<TubeRow>,
    pub cash_box_won: Won,
    pub stacker_won: Won,
    pub stacker_bills: u32,
    pub stacker_capacity_bills: u32,
    pub escrow_won: Won,
    pub change_owed: Vec<TicketRow>,
    pub purchases: u64,
    pub sales_won: Won,
    pub over_short_won: Won,
    pub collections: Vec<CollectionRow>,
    pub commands: Vec<CommandRow>,
    pub recent_events: Vec<LogEntryView>,
    pub alerts: Vec<Alert>,
}

pub fn describe_action(action: &RemoteAction) -> String {
    match action {
        RemoteAction::SetPrice { slot, price } => {
            format!("slot {slot}: price to {}", format::won(*price))
        }
        RemoteAction::Rename { slot, name } => format!("slot {slot}: rename to {name:?}"),
        RemoteAction::SettleChangeOwed { ticket } => format!("settle change-owed ticket {ticket}"),
    }
}

/// The machine's page model; `None` for a machine this replica does not know.
pub async fn model(app: &AppState, machine: &MachineId) -> Result<Option<MachineDetail>, Problem> {
    let projection = app.projection();
    let Some(state) = projection.machines.get(machine) else {
        return Ok(None);
    };
    let snapshot = app.snapshot();
    let summary = snapshot.machines.iter().find(|m| m.machine == *machine);
    let primary = snapshot.role == Role::Primary;
    let connected = summary.is_some_and(|s| s.connected);
    let recent_events = recent_events(app, machine, snapshot.status.tip).await?;
    let commands = projection
        .operators
        .commands
        .get(machine)
        .map(|commands| {
            commands
                .iter()
                .rev()
                .take(HISTORY_ROWS)
                .map(|(id, command)| {
                    let (outcome, outcome_gseq, reason) = match &command.outcome {
                        CommandOutcome::Pending => ("pending", None, None),
                        CommandOutcome::Applied { gseq, .. } => ("applied", Some(*gseq), None),
                        CommandOutcome::Rejected { gseq, reason } => {
                            ("rejected", Some(*gseq), Some(reason.clone()))
                        }
                    };
                    CommandRow {
                        command_id: *id,
                        action: describe_action(&command.action),
                        requested_by: command.requested_by.clone(),
                        requested_at_ms: command.requested_at_ms,
                        gseq: command.gseq,
                        outcome,
                        outcome_gseq,
                        reason,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let collections = projection
        .collections
        .iter()
        .rev()
        .filter(|c| c.machine_id == *machine)
        .take(HISTORY_ROWS)
        .map(collection_row)
        .collect();
    Ok(Some(MachineDetail {
        machine: machine.clone(),
        role: snapshot.role,
        as_of_gseq: projection.as_of_gseq,
        link: Link::of(primary, connected),
        last_event_ms: state.last_at_ms,
        last_seen_ms: summary.and_then(|s| s.last_seen_ms),
        last_seq: state.last_seq,
        backlog: summary.and_then(|s| s.backlog),
        uncommitted: summary.map_or(0, |s| s.uncommitted),
        installed: state.installed,
        exact_change_only: state.installed && state.exact_change_only(),
        slots: state
            .slots
            .values()
            .map(|slot| SlotRow {
                slot: slot.config.slot.0,
                product: slot.config.product.name.clone(),
                category: slot.config.product.category.to_string(),
                price: slot.config.product.price,
                stock: slot.stock,
                capacity: slot.config.capacity,
            })
            .collect(),
        tubes: Denomination::COINS
            .iter()
            .map(|coin| TubeRow {
                coin: coin.value(),
                count: state.tubes.get(*coin),
                capacity: state.tube_capacity.get(*coin),
                won: coin.value() * Won::from(state.tubes.get(*coin)),
            })
            .collect(),
        cash_box_won: state.cash_box,
        stacker_won: state.stacker_total(),
        stacker_bills: state.stacker_bills,
        stacker_capacity_bills: state.stacker_capacity_bills,
        escrow_won: state.escrow.balance,
        change_owed: state
            .owed
            .values()
            .map(|t| TicketRow {
                ticket: t.ticket,
                amount: t.amount,
                at_ms: t.at_ms,
            })
            .collect(),
        purchases: state.stats.purchases,
        sales_won: state.stats.sales_won,
        over_short_won: state.stats.over_short_won,
        collections,
        commands,
        recent_events,
        alerts: app
            .alert_board()
            .alerts
            .iter()
            .filter(|a| a.condition.key.machine == *machine)
            .cloned()
            .collect(),
    }))
}

pub fn collection_row(c: &ledger::projection::Collection) -> CollectionRow {
    CollectionRow {
        machine: c.machine_id.clone(),
        gseq: c.gseq,
        machine_seq: c.machine_seq,
        at_ms: c.at_ms,
        expected: c.expected(),
        counted: c.counted,
        over_short: c.over_short(),
    }
}

/// The machine's newest events, read from the log off the async threads.
async fn recent_events(
    app: &AppState,
    machine: &MachineId,
    tip: u64,
) -> Result<Vec<LogEntryView>, Problem> {
    let log = app.ports.log.clone();
    let machine = machine.clone();
    tokio::task::spawn_blocking(move || log.machine_entries(&machine, 1, tip, true, RECENT_EVENTS))
        .await
        .map_err(|_| Problem::new(StatusCode::SERVICE_UNAVAILABLE, "the log reader stopped"))?
        .map_err(|e| Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
}

pub fn parse_machine(id: &str) -> Result<MachineId, Problem> {
    MachineId::new(id)
        .map_err(|_| Problem::new(StatusCode::NOT_FOUND, format!("no machine {id:?}")))
}

pub async fn page(
    State(app): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Html<String>, Problem> {
    let machine = parse_machine(&id)?;
    let detail = model(&app, &machine)
        .await?
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, format!("no machine {machine}")))?;
    let body = html! {
        h1 { "Machine " (detail.machine) " " (link_pill(detail.link)) }
        p.sub {
            "Last event #" (detail.last_seq) " at " (format::time(detail.last_event_ms))
            @if let Some(seen) = detail.last_seen_ms { " · link last heard " (format::ago(now_ms(), seen)) }
            @if detail.link == Link::OnPrimary { " · live connection state is on the primary" }
            " · " span #live-status .live { "connecting…" }
        }
        div data-fragment="machine" {
            (cards(&detail))
            div.grid2 {
                div {
                    section.panel {
                        div.exports { h2 { "Slots" } "Export" a href={"/api/v1/machines/" (detail.machine) "/slots.csv"} { "CSV" } a href={"/api/v1/machines/" (detail.machine)} { "JSON" } }
                        (slot_table(&app, &viewer, &detail))
                    }
                    section.panel { h2 { "Remote commands" } (command_table(&detail)) }
                    section.panel { h2 { "Collections" } (collection_table(&detail.collections, false)) }
                    section.panel { h2 { "Recent events" } (event_table(&detail.recent_events)) }
                }
                div {
                    section.panel { h2 { "Alerts" } (alert_list(&app, &viewer, &detail.alerts, Some(&detail.machine))) }
                    section.panel { h2 { "Coin tubes" } (tube_table(&detail)) }
                    section.panel { h2 { "Change owed" } (ticket_table(&app, &viewer, &detail)) }
                    (live_feed(Some(&detail.machine)))
                }
            }
        }
    };
    let title = format!("Machine {}", detail.machine);
    Ok(super::layout(
        &app,
        Some(&viewer.operator),
        viewer.host(),
        Section::None,
        &title,
        body,
    ))
}

fn cards(detail: &MachineDetail) -> Markup {
    html! {
        div.cards {
            div.card { div.label { "Coin tubes" } div.value { (format::won(detail.tubes.iter().map(|t| t.won).sum())) } }
            div.card { div.label { "Cash box" } div.value { (format::won(detail.cash_box_won)) } }
            div.card {
                div.label { "Bill stacker" } div.value { (format::won(detail.stacker_won)) }
                div.muted { (detail.stacker_bills) " of " (detail.stacker_capacity_bills) " bills" }
            }
            div.card { div.label { "Change owed" } div.value { (format::won(detail.change_owed.iter().map(|t| t.amount).sum())) } }
            div.card { div.label { "Sales, all time" } div.value { (format::won(detail.sales_won)) } div.muted { (format::count(detail.purchases)) " purchases" } }
            div.card {
                div.label { "Backlog" }
                div.value { @match detail.backlog { Some(b) => { (format::count(b)) } None => { "—" } } }
                div.muted { (detail.uncommitted) " uncommitted here" }
            }
        }
        @if detail.exact_change_only { p { span.pill.warn { "exact change only" } } }
    }
}

/// A small bar for stock (SVG: the page allows no inline styles).
fn stock_bar(stock: u32, capacity: u32) -> Markup {
    let width = if capacity == 0 {
        0
    } else {
        (u64::from(stock.min(capacity)) * 70 / u64::from(capacity)) as u32
    };
    let colour = match stock {
        0 => "#b42318",
        s if u64::from(s) * 5 <= u64::from(capacity) => "#a86300",
        _ => "#1e7a46",
    };
    html! {
        svg.stockbar width="70" height="8" viewBox="0 0 70 8" aria-hidden="true" {
            rect width="70" height="8" rx="4" fill="#e8ecf0" {}
            rect width=(width) height="8" rx="4" fill=(colour) {}
        }
    }
}

fn slot_table(app: &AppState, viewer: &Viewer, detail: &MachineDetail) -> Markup {
    let admin = viewer.operator.is_admin();
    let base = super::action_base(app, viewer.host());
    html! {
        table {
            thead { tr {
                th.num { "Slot" } th { "Product" } th { "Category" } th.num { "Price" } th.num { "Stock" } th {}
                @if admin { th { "Change" } }
            } }
            tbody {
                @for slot in &detail.slots {
                    tr {
                        td.num { (slot.slot) }
                        td { strong { (slot.product) } }
                        td.muted { (slot.category) }
                        td.num { (format::won(slot.price)) }
                        td.num { (slot.stock) " / " (slot.capacity) " " (stock_bar(slot.stock, slot.capacity)) }
                        td { @if slot.stock == 0 { span.pill.bad { "sold out" } } }
                        @if admin {
                            td {
                                @if let Some(base) = &base {
                                    form.inline method="post" action={(base) "/machines/" (detail.machine) "/slots/" (slot.slot) "/price"} {
                                        (csrf_field(&viewer.operator))
                                        input.price type="text" name="price" value=(slot.price) inputmode="numeric" aria-label="new price in won";
                                        button.secondary type="submit" { "Set price" }
                                    }
                                    " "
                                    form.inline method="post" action={(base) "/machines/" (detail.machine) "/slots/" (slot.slot) "/name"} {
                                        (csrf_field(&viewer.operator))
                                        input.name type="text" name="name" value=(slot.product) maxlength="40" aria-label="new product name";
                                        button.secondary type="submit" { "Rename" }
                                    }
                                } @else {
                                    span.muted { "no primary known" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn tube_table(detail: &MachineDetail) -> Markup {
    html! {
        table {
            thead { tr { th.num { "Coin" } th.num { "Count" } th.num { "Capacity" } th.num { "Value" } } }
            tbody {
                @for tube in &detail.tubes {
                    tr { td.num { (format::won(tube.coin)) } td.num { (tube.count) } td.num { (tube.capacity) } td.num { (format::won(tube.won)) } }
                }
            }
        }
    }
}

fn ticket_table(app: &AppState, viewer: &Viewer, detail: &MachineDetail) -> Markup {
    let base = super::action_base(app, viewer.host());
    html! {
        @if detail.change_owed.is_empty() {
            p.muted { "No open tickets." }
        } @else {
            table {
                thead { tr { th.num { "Ticket" } th.num { "Amount" } th { "Since" } th {} } }
                tbody {
                    @for ticket in &detail.change_owed {
                        tr {
                            td.num { (ticket.ticket) }
                            td.num { (format::won(ticket.amount)) }
                            td { (format::time(ticket.at_ms)) }
                            td {
                                @if viewer.operator.is_admin() {
                                    @if let Some(base) = &base {
                                        form.inline method="post" action={(base) "/machines/" (detail.machine) "/tickets/" (ticket.ticket) "/settle"} {
                                            (csrf_field(&viewer.operator))
                                            button.secondary type="submit" { "Settle" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn command_table(detail: &MachineDetail) -> Markup {
    html! {
        @if detail.commands.is_empty() {
            p.muted { "No remote commands yet." }
        } @else {
            table {
                thead { tr { th.num { "#" } th { "Request" } th { "By" } th { "Requested" } th { "Outcome" } } }
                tbody {
                    @for command in &detail.commands {
                        tr {
                            td.num { (command.command_id) }
                            td { (command.action) }
                            td { (command.requested_by) }
                            td { (format::time(command.requested_at_ms)) div.gseq { "gseq " (command.gseq) } }
                            td {
                                @match command.outcome {
                                    "applied" => span.pill.ok { "applied" },
                                    "rejected" => span.pill.bad { "rejected" },
                                    _ => span.pill.warn { "pending" },
                                }
                                @if let Some(gseq) = command.outcome_gseq { " " span.gseq { "gseq " (gseq) } }
                                @if let Some(reason) = &command.reason { div.muted { (reason) } }
                                @if command.outcome == "pending" && detail.link != Link::Online {
                                    div.muted { "delivered when the machine is connected" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Log entries as a table (shared with the audit log).
pub fn event_table(entries: &[LogEntryView]) -> Markup {
    html! {
        @if entries.is_empty() {
            p.muted { "No events." }
        } @else {
            table {
                thead { tr { th.num { "gseq" } th { "Machine" } th.num { "Seq" } th { "Event" } th { "At the machine" } } }
                tbody {
                    @for entry in entries {
                        tr {
                            td.num.mono { (entry.gseq) }
                            @match &entry.kind {
                                EntryKind::Event { machine, seq, at_ms, event, detail } => {
                                    td { a href={"/machines/" (machine)} { (machine) } }
                                    td.num { (seq) }
                                    td { (event.replace('_', " ")) @if !detail.is_empty() { div.muted { (detail) } } }
                                    td { (format::time(*at_ms)) }
                                }
                                EntryKind::EpochStarted { primary } => {
                                    td.muted { "—" } td {} td { "epoch " (entry.epoch) " started by " (primary) } td { (format::time(entry.logged_ms)) }
                                }
                                EntryKind::Operator { operator, action, machine, at_ms } => {
                                    td { @if let Some(m) = machine { (m) } } td {}
                                    td { (action.replace('_', " ")) div.muted { "by " (operator) } } td { (format::time(*at_ms)) }
                                }
                                EntryKind::Unreadable { problem } => {
                                    td.muted { "—" } td {} td.short { "unreadable: " (problem) } td {}
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub fn collection_table(collections: &[CollectionRow], with_machine: bool) -> Markup {
    html! {
        @if collections.is_empty() {
            p.muted { "No collections yet." }
        } @else {
            table {
                thead { tr {
                    @if with_machine { th { "Machine" } }
                    th { "When" } th.num { "Expected" } th.num { "Counted" } th.num { "Over/short" }
                } }
                tbody {
                    @for c in collections {
                        tr {
                            @if with_machine { td { a href={"/machines/" (c.machine)} { (c.machine) } } }
                            td.nowrap { (format::time(c.at_ms)) div.gseq { "gseq " (c.gseq) } }
                            td.num { (format::won(c.expected)) }
                            td.num { (format::won(c.counted)) }
                            td.num.over[c.over_short > 0].short[c.over_short < 0] { (format::won_signed(c.over_short)) }
                        }
                    }
                }
            }
        }
    }
}

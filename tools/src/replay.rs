//! `vendctl replay`: rebuilds the projections from the first entry (or,
//! past archived segments, from the checkpoint at the cut) and prints
//! inventory, cash and sales.

use crate::say;
use crate::util::{Bound, DataArgs, grouped, parse_time, per_second, progress, rate, scan_error};
use anyhow::Result;
use ledger::money::{Denomination, format_won};
use ledger::operator::{AlertKey, CommandOutcome, OperatorRole, Operators};
use ledger::projection::{FleetTotals, Period, Projection, SalesRow};
use ledger::rules::RemoteAction;
use ledger::{MachineId, Until, Won};
use serde::Serialize;
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args)]
#[command(after_help = "Example: vendctl replay --data /tmp/fleet --until 2026-01-03 --period day")]
pub struct Args {
    #[command(flatten)]
    data: DataArgs,
    /// Stop after this gseq.
    #[arg(long, conflicts_with = "until")]
    until_gseq: Option<u64>,
    /// Only events that happened at their machine by this time: an RFC 3339
    /// timestamp, or a date or date-time in Korean time (a bare date means
    /// through the end of that day).
    #[arg(long)]
    until: Option<String>,
    /// Group sales by day, week, month or year.
    #[arg(long, default_value = "month")]
    period: Period,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    as_of_gseq: u64,
    entries_applied: u64,
    projection_issues: u64,
    seconds: f64,
    events_per_second: f64,
    totals: FleetTotals,
    machines: Vec<MachineReport>,
    sales: Vec<SalesRow>,
    operators: OperatorsReport,
}

/// What operators did, as the log says: accounts (without their password
/// hashes), commands for machines with their outcome, acknowledged alerts.
#[derive(Serialize)]
struct OperatorsReport {
    records_applied: u64,
    users: Vec<UserReport>,
    commands: Vec<CommandReport>,
    acknowledged_alerts: Vec<AlertReport>,
}

#[derive(Serialize)]
struct UserReport {
    name: String,
    role: OperatorRole,
    disabled: bool,
    added_by: String,
    added_at_ms: i64,
}

#[derive(Serialize)]
struct CommandReport {
    machine_id: MachineId,
    command_id: u64,
    action: RemoteAction,
    requested_by: String,
    requested_at_ms: i64,
    gseq: u64,
    outcome: CommandOutcome,
}

#[derive(Serialize)]
struct AlertReport {
    alert: AlertKey,
    by: String,
    at_ms: i64,
    note: String,
    gseq: u64,
}

#[derive(Serialize)]
struct MachineReport {
    machine_id: MachineId,
    last_seq: u64,
    slots: Vec<SlotReport>,
    tubes: Vec<(Won, u32)>,
    cash_box: Won,
    stacker: Won,
    escrow: Won,
    change_owed: Won,
    exact_change_only: bool,
    purchases: u64,
    sales_won: Won,
}

#[derive(Serialize)]
struct SlotReport {
    slot: u16,
    product: String,
    category: String,
    price: Won,
    stock: u32,
    capacity: u32,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let until = match (args.until_gseq, &args.until) {
        (Some(gseq), _) => Until::Gseq(gseq),
        (None, Some(text)) => Until::MachineTime(parse_time("--until", text, Bound::End)?),
        (None, None) => Until::End,
    };
    let keyring = args.data.keyring()?;
    let store = args.data.open_store(&keyring)?;
    let bar = progress(store.head().gseq, "replay");
    let started = Instant::now();
    let mut read_up_to = 0;
    // Past archived segments, from the checkpoint at the cut: a replay as
    // of now never needs the archive.
    let projection = ledger::ledger::rebuild_past_archive(&store, until, &mut |gseq| {
        read_up_to = gseq;
        if gseq % 4_096 == 0 {
            bar.set_position(gseq);
        }
    })
    .map_err(|error| scan_error(&store, error, read_up_to))?;
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let report = build_report(&projection, args.period, elapsed);
    if args.json {
        say!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, args.period);
    }
    Ok(ExitCode::SUCCESS)
}

fn build_report(projection: &Projection, period: Period, elapsed: std::time::Duration) -> Report {
    let machines = projection
        .machines
        .iter()
        .map(|(id, state)| MachineReport {
            machine_id: id.clone(),
            last_seq: state.last_seq,
            slots: state
                .slots
                .values()
                .map(|s| SlotReport {
                    slot: s.config.slot.0,
                    product: s.config.product.name.clone(),
                    category: s.config.product.category.to_string(),
                    price: s.config.product.price,
                    stock: s.stock,
                    capacity: s.config.capacity,
                })
                .collect(),
            tubes: Denomination::COINS
                .iter()
                .map(|d| (d.value(), state.tubes.get(*d)))
                .collect(),
            cash_box: state.cash_box,
            stacker: state.stacker_total(),
            escrow: state.escrow.balance,
            change_owed: state.owed_total(),
            exact_change_only: state.exact_change_only(),
            purchases: state.stats.purchases,
            sales_won: state.stats.sales_won,
        })
        .collect();
    Report {
        as_of_gseq: projection.as_of_gseq,
        entries_applied: projection.entries_applied,
        projection_issues: projection.issue_count,
        seconds: elapsed.as_secs_f64(),
        events_per_second: rate(projection.entries_applied, elapsed),
        totals: projection.totals(),
        machines,
        sales: projection.sales.report(period, None),
        operators: operators_report(&projection.operators),
    }
}

fn operators_report(operators: &Operators) -> OperatorsReport {
    let users = operators
        .users
        .iter()
        .map(|(name, user)| UserReport {
            name: name.clone(),
            role: user.role,
            disabled: user.disabled,
            added_by: user.added_by.clone(),
            added_at_ms: user.added_at_ms,
        })
        .collect();
    let commands = operators
        .commands
        .iter()
        .flat_map(|(machine, commands)| {
            commands.iter().map(|(&command_id, command)| CommandReport {
                machine_id: machine.clone(),
                command_id,
                action: command.action.clone(),
                requested_by: command.requested_by.clone(),
                requested_at_ms: command.requested_at_ms,
                gseq: command.gseq,
                outcome: command.outcome.clone(),
            })
        })
        .collect();
    let acknowledged_alerts = operators
        .acknowledged
        .iter()
        .map(|(alert, ack)| AlertReport {
            alert: alert.clone(),
            by: ack.by.clone(),
            at_ms: ack.at_ms,
            note: ack.note.clone(),
            gseq: ack.gseq,
        })
        .collect();
    OperatorsReport {
        records_applied: operators.records_applied,
        users,
        commands,
        acknowledged_alerts,
    }
}

fn print_report(report: &Report, period: Period) {
    say!(
        "replayed {} entries (as of gseq {}) in {:.2}s: {} events/s; {} projection issues",
        grouped(report.entries_applied),
        report.as_of_gseq,
        report.seconds,
        per_second(report.events_per_second),
        report.projection_issues
    );
    print_totals(&report.totals);
    for machine in &report.machines {
        say!();
        print_machine(machine);
    }
    say!();
    print_sales(&report.sales, period);
    print_operators(&report.operators);
}

/// Accounts and commands in a few lines (the JSON has every field).
fn print_operators(operators: &OperatorsReport) {
    if operators.records_applied == 0 {
        return;
    }
    let count = |outcome: fn(&CommandOutcome) -> bool| {
        operators
            .commands
            .iter()
            .filter(|c| outcome(&c.outcome))
            .count()
    };
    say!();
    say!(
        "operators: {} records; {} accounts; {} commands ({} applied, {} refused by the machine, {} pending); {} alerts acknowledged",
        operators.records_applied,
        operators.users.len(),
        operators.commands.len(),
        count(|o| matches!(o, CommandOutcome::Applied { .. })),
        count(|o| matches!(o, CommandOutcome::Rejected { .. })),
        count(|o| *o == CommandOutcome::Pending),
        operators.acknowledged_alerts.len()
    );
    for user in &operators.users {
        say!(
            "  {:<20} {:<8}{}",
            user.name,
            user.role.as_str(),
            if user.disabled { "  disabled" } else { "" }
        );
    }
    for command in operators
        .commands
        .iter()
        .filter(|c| c.outcome == CommandOutcome::Pending)
    {
        say!(
            "  pending: {} command {} {:?} (asked by {}, gseq {})",
            command.machine_id,
            command.command_id,
            command.action,
            command.requested_by,
            command.gseq
        );
    }
}

fn print_totals(t: &FleetTotals) {
    say!(
        "fleet: {} machines, {} purchases, {} cancels, net sales {} won, cash in machines {} won, change owed {} won, {} items in stock",
        t.machines,
        grouped(t.purchases),
        grouped(t.cancels),
        format_won(t.sales_won),
        format_won(t.cash_in_machines_won),
        format_won(t.change_owed_won),
        grouped(t.items_in_stock)
    );
}

/// One machine: a headline, a line per slot, then its money.
fn print_machine(machine: &MachineReport) {
    say!(
        "{}  (#{})  sales {} won over {} purchases{}",
        machine.machine_id,
        machine.last_seq,
        format_won(machine.sales_won),
        grouped(machine.purchases),
        if machine.exact_change_only {
            "  [EXACT CHANGE ONLY]"
        } else {
            ""
        }
    );
    for slot in &machine.slots {
        let status = if slot.stock == 0 { "  SOLD OUT" } else { "" };
        say!(
            "  slot {:>2}  {:<16} {:>7} won  {:>3}/{:<3} {}{}",
            slot.slot,
            slot.product,
            format_won(slot.price),
            slot.stock,
            slot.capacity,
            slot.category,
            status
        );
    }
    let tubes: Vec<String> = machine
        .tubes
        .iter()
        .map(|(value, n)| format!("{value}x{n}"))
        .collect();
    say!(
        "  tubes {}  cash box {} won  stacker {} won  escrow {} won  change owed {} won",
        tubes.join(" "),
        format_won(machine.cash_box),
        format_won(machine.stacker),
        format_won(machine.escrow),
        format_won(machine.change_owed)
    );
}

/// Fleet sales per period: the rows come per machine and product, so they
/// are summed by period label first.
fn print_sales(sales: &[SalesRow], period: Period) {
    say!("sales by {period:?} (fleet):");
    let mut by_period: std::collections::BTreeMap<&str, (i64, Won)> =
        std::collections::BTreeMap::new();
    for row in sales {
        let entry = by_period.entry(row.period.as_str()).or_default();
        entry.0 += row.count;
        entry.1 += row.won;
    }
    for (label, (count, won)) in by_period {
        say!(
            "  {label:<10} {count:>8} items  {:>14} won",
            format_won(won)
        );
    }
}

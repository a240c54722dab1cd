//! Serves the dashboard over a simulated fleet without a cluster, for
//! looking at the pages (and screenshots): `cargo run --example preview
//! -- 127.0.0.1:8300 [follower]`, then log in as kim / admin-pass-1! or
//! lee / audit-pass-2!. VM-006 has a remote command applied, one pending
//! and an acknowledged alert, as a fleet's log would record them.

#[path = "../tests/fixture/mod.rs"]
mod fixture;

use ledger::operator::{AlertAck, AlertKey, AlertKind, CommandOutcome, CommandState};
use ledger::rules::RemoteAction;
use ledger::{MachineId, SlotId};
use std::sync::Arc;

/// Operators' records for VM-006 (what `Projection::operators` holds after
/// the primary recorded them and the machine answered).
fn operators_history(fixture: &fixture::Fixture) {
    let tip = fixture
        .log
        .0
        .lock()
        .map(|log| log.len() as u64)
        .unwrap_or(0);
    let now = jiff::Timestamp::now().as_millisecond();
    let machine = MachineId::numbered(6);
    fixture.projection.send_modify(|projection| {
        let projection = Arc::make_mut(projection);
        let operators = &mut projection.operators;
        let commands = operators.commands.entry(machine.clone()).or_default();
        commands.insert(
            1,
            CommandState {
                action: RemoteAction::SetPrice {
                    slot: SlotId(1),
                    price: 810,
                },
                requested_by: "kim".into(),
                requested_at_ms: now - 3_600_000,
                gseq: tip.saturating_sub(40),
                outcome: CommandOutcome::Applied {
                    gseq: tip.saturating_sub(38),
                    at_ms: now - 3_599_000,
                },
            },
        );
        commands.insert(
            2,
            CommandState {
                action: RemoteAction::Rename {
                    slot: SlotId(6),
                    name: "Special Drink".into(),
                },
                requested_by: "kim".into(),
                requested_at_ms: now - 240_000,
                gseq: tip,
                outcome: CommandOutcome::Pending,
            },
        );
        operators.acknowledged.insert(
            AlertKey {
                kind: AlertKind::LowStock,
                machine: machine.clone(),
                slot: Some(SlotId(1)),
            },
            AlertAck {
                by: "kim".into(),
                at_ms: now - 300_000,
                note: "refill on the 14:00 round".into(),
                gseq: tip,
            },
        );
    });
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:8300".into());
    let role = match args.next().as_deref() {
        Some("follower") => dashboard::ports::Role::Backup,
        _ => dashboard::ports::Role::Primary,
    };
    let fixture = fixture::Fixture::new(8, 1_500, 40, role);
    operators_history(&fixture);
    let (bound, _stop) = fixture.serve(&address).await;
    println!("dashboard preview on http://{bound}/ (Ctrl-C stops)");
    let _ = tokio::signal::ctrl_c().await;
}

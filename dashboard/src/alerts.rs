//! Alerts: what needs an operator, computed from the projection and the
//! snapshot with the thresholds of the replica's `[dashboard]` section.
//!
//! Pure functions. [`compute`] says which conditions hold now; [`Onsets`]
//! remembers since when (the projection's gseq when a condition was first
//! seen, or 0 for one that already held when the replica started), so an
//! acknowledgement quiets an alert only while the condition it saw lasts:
//! a condition that clears and comes back nags again.

use crate::format;
use crate::ports::{MachineSummary, Role, Snapshot};
use ledger::operator::{AlertAck, AlertKey, AlertKind, Operators};
use ledger::projection::Projection;
use ledger::{MachineId, Won};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The thresholds, from the replica's `[dashboard]` section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertThresholds {
    /// A slot with this many items or fewer (but some) is low.
    pub low_stock_units: u32,
    /// A machine not heard from for this long is offline (the primary
    /// only: followers hold no machine sessions).
    pub offline_after_s: u64,
    /// A machine holding more unacknowledged events than this.
    pub backlog_events_max: u64,
    /// A collection whose count differs from the expected amount by more
    /// than this.
    pub over_short_won_max: Won,
}

impl Default for AlertThresholds {
    fn default() -> Self {
        AlertThresholds {
            low_stock_units: 2,
            offline_after_s: 120,
            backlog_events_max: 500,
            over_short_won_max: 1_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    Warning,
}

/// A condition that holds now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    pub key: AlertKey,
    pub severity: Severity,
    pub message: String,
}

/// An alert as pages show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    #[serde(flatten)]
    pub condition: Condition,
    /// Who acknowledged it since the condition began, if anyone.
    pub acknowledged: Option<AlertAck>,
}

pub fn kind_name(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::LowStock => "low_stock",
        AlertKind::SoldOut => "sold_out",
        AlertKind::ChangeOwed => "change_owed",
        AlertKind::ExactChangeOnly => "exact_change_only",
        AlertKind::Offline => "offline",
        AlertKind::Backlog => "backlog",
        AlertKind::OverShort => "over_short",
    }
}

pub fn parse_kind(text: &str) -> Option<AlertKind> {
    [
        AlertKind::LowStock,
        AlertKind::SoldOut,
        AlertKind::ChangeOwed,
        AlertKind::ExactChangeOnly,
        AlertKind::Offline,
        AlertKind::Backlog,
        AlertKind::OverShort,
    ]
    .into_iter()
    .find(|kind| kind_name(*kind) == text)
}

fn condition(
    kind: AlertKind,
    machine: &MachineId,
    slot: Option<ledger::SlotId>,
    severity: Severity,
    message: String,
) -> Condition {
    Condition {
        key: AlertKey {
            kind,
            machine: machine.clone(),
            slot,
        },
        severity,
        message,
    }
}

/// Every condition that holds, machine by machine.
pub fn compute(
    projection: &Projection,
    snapshot: &Snapshot,
    thresholds: &AlertThresholds,
    now_ms: i64,
) -> Vec<Condition> {
    let mut out = Vec::new();
    for (machine, state) in &projection.machines {
        if !state.installed {
            continue;
        }
        for (slot_id, slot) in &state.slots {
            let name = &slot.config.product.name;
            if slot.stock == 0 {
                out.push(condition(
                    AlertKind::SoldOut,
                    machine,
                    Some(*slot_id),
                    Severity::Critical,
                    format!("slot {slot_id} ({name}) is sold out"),
                ));
            } else if slot.stock <= thresholds.low_stock_units {
                out.push(condition(
                    AlertKind::LowStock,
                    machine,
                    Some(*slot_id),
                    Severity::Warning,
                    format!("slot {slot_id} ({name}) has {} left", slot.stock),
                ));
            }
        }
        if !state.owed.is_empty() {
            out.push(condition(
                AlertKind::ChangeOwed,
                machine,
                None,
                Severity::Warning,
                format!(
                    "{} change-owed ticket(s) open, {} in all",
                    state.owed.len(),
                    format::won(state.owed_total())
                ),
            ));
        }
        if state.exact_change_only() {
            out.push(condition(
                AlertKind::ExactChangeOnly,
                machine,
                None,
                Severity::Warning,
                "exact change only: the coin tubes cannot pay every amount".to_owned(),
            ));
        }
    }
    for summary in &snapshot.machines {
        link_conditions(summary, snapshot, thresholds, now_ms, &mut out);
    }
    over_short_conditions(projection, thresholds, &mut out);
    out
}

/// Offline and backlog: what the machine's link says. Only the primary
/// holds machine sessions, so only it can say a machine is offline.
fn link_conditions(
    summary: &MachineSummary,
    snapshot: &Snapshot,
    thresholds: &AlertThresholds,
    now_ms: i64,
    out: &mut Vec<Condition>,
) {
    let machine = &summary.machine;
    if snapshot.role == Role::Primary && !summary.connected {
        // Never heard from since this replica started: count from its start.
        let started_ms = now_ms - i64::try_from(snapshot.status.uptime_ms).unwrap_or(0);
        let heard_ms = summary.last_seen_ms.unwrap_or(started_ms);
        let silent_s = (now_ms - heard_ms).max(0) / 1_000;
        if silent_s >= i64::try_from(thresholds.offline_after_s).unwrap_or(i64::MAX) {
            out.push(condition(
                AlertKind::Offline,
                machine,
                None,
                Severity::Critical,
                match summary.last_seen_ms {
                    Some(at) => format!("offline: last heard from {}", format::ago(now_ms, at)),
                    None => "offline: not heard from since this replica started".to_owned(),
                },
            ));
        }
    }
    if let Some(backlog) = summary.backlog
        && backlog > thresholds.backlog_events_max
    {
        out.push(condition(
            AlertKind::Backlog,
            machine,
            None,
            Severity::Warning,
            format!(
                "{} events not yet acknowledged by the fleet",
                format::count(backlog)
            ),
        ));
    }
}

/// A machine's latest collection, when it was over or short by too much.
fn over_short_conditions(
    projection: &Projection,
    thresholds: &AlertThresholds,
    out: &mut Vec<Condition>,
) {
    let mut latest = BTreeMap::new();
    for collection in &projection.collections {
        latest.insert(&collection.machine_id, collection);
    }
    for (machine, collection) in latest {
        let difference = collection.over_short();
        if difference.abs() > thresholds.over_short_won_max {
            out.push(condition(
                AlertKind::OverShort,
                machine,
                None,
                Severity::Warning,
                format!(
                    "last collection ({}) was {} {}",
                    format::time(collection.at_ms),
                    if difference > 0 {
                        "over by"
                    } else {
                        "short by"
                    },
                    format::won(difference.abs())
                ),
            ));
        }
    }
}

/// Since when each condition has held (a gseq of the projection).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Onsets {
    since: BTreeMap<AlertKey, u64>,
    started: bool,
}

impl Onsets {
    /// The conditions holding now, observed at `as_of_gseq`. The first
    /// observation dates every condition 0 ("before this replica looked"),
    /// so acknowledgements made before a restart still hold.
    pub fn observe(&mut self, conditions: &[Condition], as_of_gseq: u64) {
        let onset = if self.started { as_of_gseq } else { 0 };
        self.started = true;
        let mut next = BTreeMap::new();
        for condition in conditions {
            let since = self.since.get(&condition.key).copied().unwrap_or(onset);
            next.insert(condition.key.clone(), since);
        }
        self.since = next;
    }

    pub fn since(&self, key: &AlertKey) -> u64 {
        self.since.get(key).copied().unwrap_or(0)
    }
}

/// The alerts to show: each condition with its acknowledgement if one was
/// made since it began; unacknowledged first, then by severity and machine.
pub fn board(conditions: Vec<Condition>, onsets: &Onsets, operators: &Operators) -> Vec<Alert> {
    let mut alerts: Vec<Alert> = conditions
        .into_iter()
        .map(|condition| {
            let acknowledged = operators
                .acknowledged
                .get(&condition.key)
                .filter(|ack| ack.gseq >= onsets.since(&condition.key))
                .cloned();
            Alert {
                condition,
                acknowledged,
            }
        })
        .collect();
    alerts.sort_by(|a, b| {
        (
            a.acknowledged.is_some(),
            a.condition.severity,
            &a.condition.key,
        )
            .cmp(&(
                b.acknowledged.is_some(),
                b.condition.severity,
                &b.condition.key,
            ))
    });
    alerts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::MachineSummary;
    use ledger::catalog::default_catalog;
    use ledger::machine::MachineCore;
    use ledger::rules::{Command, Context};

    /// A projection with one installed machine (`VM-001`) driven through
    /// `commands`.
    fn machine_projection(commands: &[Command]) -> Projection {
        let id = MachineId::numbered(1);
        let mut core =
            MachineCore::new(id.clone(), &ledger::crypto::SecretKey::from_bytes([5; 32]));
        let mut projection = Projection::default();
        let mut gseq = 0;
        let install = Command::Install {
            slots: default_catalog(),
            tube_capacity: ledger::state::DEFAULT_TUBE_CAPACITY,
            stacker_capacity_bills: 300,
            admin_password: "light-pass-1!".into(),
        };
        for command in std::iter::once(&install).chain(commands) {
            let context = Context {
                now_ms: 1_000,
                password_params: ledger::admin::PasswordParams::Light,
                salt: [1; 16],
            };
            let prepared = core.prepare(command, &context).expect("accepted");
            for envelope in prepared.envelopes() {
                gseq += 1;
                projection.apply(gseq, envelope).expect("applies");
            }
            core.commit(prepared);
        }
        projection
    }

    fn keys(conditions: &[Condition]) -> Vec<(AlertKind, Option<u16>)> {
        conditions
            .iter()
            .map(|c| (c.key.kind, c.key.slot.map(|s| s.0)))
            .collect()
    }

    #[test]
    fn an_installed_machine_with_empty_tubes_is_sold_out_and_exact_change_only() {
        let projection = machine_projection(&[]);
        let conditions = compute(
            &projection,
            &Snapshot::default(),
            &AlertThresholds::default(),
            10_000,
        );
        let found = keys(&conditions);
        // A fresh machine has no stock and no coins.
        assert!(found.contains(&(AlertKind::SoldOut, Some(1))), "{found:?}");
        assert!(found.contains(&(AlertKind::ExactChangeOnly, None)));
        assert!(!found.iter().any(|(k, _)| *k == AlertKind::LowStock));
    }

    #[test]
    fn low_stock_is_at_or_below_the_threshold() {
        let projection = machine_projection(&[
            Command::AdminLogin {
                password: "light-pass-1!".into(),
            },
            Command::Refill {
                slot: ledger::SlotId(1),
                count: Some(2),
            },
            Command::Refill {
                slot: ledger::SlotId(2),
                count: Some(3),
            },
        ]);
        let found = keys(&compute(
            &projection,
            &Snapshot::default(),
            &AlertThresholds::default(),
            10_000,
        ));
        assert!(found.contains(&(AlertKind::LowStock, Some(1))), "{found:?}");
        assert!(!found.contains(&(AlertKind::LowStock, Some(2))));
        assert!(!found.contains(&(AlertKind::SoldOut, Some(1))));
    }

    fn summary(connected: bool, last_seen_ms: Option<i64>, backlog: Option<u64>) -> MachineSummary {
        MachineSummary {
            machine: MachineId::numbered(1),
            last_seq: 1,
            last_gseq: 1,
            last_event_ms: 1,
            connected,
            last_seen_ms,
            backlog,
            uncommitted: 0,
            cash_held_won: 0,
            stock_units: 0,
        }
    }

    #[test]
    fn only_the_primary_says_a_machine_is_offline() {
        let thresholds = AlertThresholds::default();
        let now = 1_000_000;
        let silent = summary(false, Some(now - 121_000), Some(501));
        let mut snapshot = Snapshot {
            role: Role::Primary,
            machines: vec![silent],
            ..Snapshot::default()
        };
        let found = keys(&compute(
            &Projection::default(),
            &snapshot,
            &thresholds,
            now,
        ));
        assert_eq!(
            found,
            vec![(AlertKind::Offline, None), (AlertKind::Backlog, None)]
        );
        snapshot.role = Role::Backup;
        let found = keys(&compute(
            &Projection::default(),
            &snapshot,
            &thresholds,
            now,
        ));
        assert_eq!(found, vec![(AlertKind::Backlog, None)]);
        snapshot.role = Role::Primary;
        snapshot.machines = vec![summary(false, Some(now - 60_000), Some(3))];
        assert!(compute(&Projection::default(), &snapshot, &thresholds, now).is_empty());
        snapshot.machines = vec![summary(true, Some(now - 600_000), None)];
        assert!(compute(&Projection::default(), &snapshot, &thresholds, now).is_empty());
    }

    #[test]
    fn an_acknowledgement_holds_while_its_condition_lasts() {
        let key = AlertKey {
            kind: AlertKind::SoldOut,
            machine: MachineId::numbered(1),
            slot: Some(ledger::SlotId(1)),
        };
        let condition = Condition {
            key: key.clone(),
            severity: Severity::Critical,
            message: "sold out".into(),
        };
        let mut operators = Operators::default();
        let mut onsets = Onsets::default();
        // Held since before the replica looked; acknowledged at gseq 5.
        onsets.observe(std::slice::from_ref(&condition), 10);
        operators.acknowledged.insert(
            key.clone(),
            AlertAck {
                by: "kim".into(),
                at_ms: 1,
                note: String::new(),
                gseq: 5,
            },
        );
        let shown = board(vec![condition.clone()], &onsets, &operators);
        assert_eq!(shown[0].acknowledged.as_ref().unwrap().by, "kim");
        // Still holding later: still acknowledged.
        onsets.observe(std::slice::from_ref(&condition), 20);
        assert!(
            board(vec![condition.clone()], &onsets, &operators)[0]
                .acknowledged
                .is_some()
        );
        // It clears, then comes back at gseq 30: it nags again.
        onsets.observe(&[], 25);
        onsets.observe(std::slice::from_ref(&condition), 30);
        assert!(
            board(vec![condition], &onsets, &operators)[0]
                .acknowledged
                .is_none()
        );
    }
}

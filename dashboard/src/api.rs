//! The JSON API under `/api/v1` and its CSV exports: the same models the
//! pages render.

use crate::app::AppState;
use crate::auth::Operator;
use crate::pages::audit::{self, AuditQuery};
use crate::pages::errors::Problem;
use crate::pages::reconciliation::{self, ReconciliationQuery};
use crate::pages::{machine, overview, replication, sales};
use crate::{alerts, format};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

/// The newest published status: never waits on the replica's core.
pub async fn status(State(app): State<AppState>) -> Response {
    Json(app.snapshot().status.clone()).into_response()
}

pub async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "no such page")
}

/// `?format=csv` asks for CSV instead of JSON.
#[derive(Deserialize, Default)]
pub struct FormatQuery {
    #[serde(default)]
    format: Option<String>,
}

impl FormatQuery {
    fn csv(&self) -> Result<bool, Problem> {
        match self.format.as_deref() {
            None | Some("") | Some("json") => Ok(false),
            Some("csv") => Ok(true),
            Some(other) => Err(Problem::new(
                StatusCode::BAD_REQUEST,
                format!("unknown format {other:?} (json or csv)"),
            )),
        }
    }
}

/// Rows as a CSV download.
pub fn csv<T: Serialize>(name: &str, rows: impl IntoIterator<Item = T>) -> Response {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        if let Err(error) = writer.serialize(row) {
            return Problem::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
                .into_response();
        }
    }
    let bytes = writer.into_inner().unwrap_or_default();
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.csv\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

#[derive(Serialize)]
pub struct SessionInfo {
    pub name: String,
    pub role: &'static str,
    /// Send it as `X-CSRF-Token` with every POST.
    pub csrf: String,
    pub expires_ms: i64,
}

/// Who is logged in, and the CSRF token for JSON clients.
pub async fn session(Extension(operator): Extension<Operator>) -> Json<SessionInfo> {
    Json(SessionInfo {
        name: operator.name.clone(),
        role: operator.role.as_str(),
        csrf: operator.csrf.clone(),
        expires_ms: (operator.session.issued_s + crate::auth::session::SESSION_ABSOLUTE_S) * 1_000,
    })
}

/// The fleet overview (`?format=csv`: the machine table).
pub async fn machines(
    State(app): State<AppState>,
    Query(query): Query<FormatQuery>,
) -> Result<Response, Problem> {
    let model = overview::model(&app);
    Ok(if query.csv()? {
        csv("machines", model.machines)
    } else {
        Json(model).into_response()
    })
}

pub async fn machines_csv(State(app): State<AppState>) -> Response {
    csv("machines", overview::model(&app).machines)
}

pub async fn machine(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<FormatQuery>,
) -> Result<Response, Problem> {
    let csv_wanted = query.csv()?;
    let detail = machine_detail(&app, &id).await?;
    Ok(if csv_wanted {
        csv(&format!("{}-slots", detail.machine), detail.slots)
    } else {
        Json(detail).into_response()
    })
}

async fn machine_detail(app: &AppState, id: &str) -> Result<machine::MachineDetail, Problem> {
    let id = machine::parse_machine(id)?;
    machine::model(app, &id)
        .await?
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, format!("no machine {id}")))
}

pub async fn machine_slots_csv(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let detail = machine_detail(&app, &id).await?;
    Ok(csv(&format!("{}-slots", detail.machine), detail.slots))
}

#[derive(Serialize)]
struct AlertRow {
    kind: &'static str,
    machine: String,
    slot: Option<u16>,
    severity: alerts::Severity,
    message: String,
    acknowledged_by: Option<String>,
    acknowledged_at: Option<String>,
    note: Option<String>,
}

fn alert_rows(app: &AppState) -> Vec<AlertRow> {
    app.alert_board()
        .alerts
        .iter()
        .map(|a| AlertRow {
            kind: alerts::kind_name(a.condition.key.kind),
            machine: a.condition.key.machine.to_string(),
            slot: a.condition.key.slot.map(|s| s.0),
            severity: a.condition.severity,
            message: a.condition.message.clone(),
            acknowledged_by: a.acknowledged.as_ref().map(|ack| ack.by.clone()),
            acknowledged_at: a
                .acknowledged
                .as_ref()
                .map(|ack| format::time_rfc3339(ack.at_ms)),
            note: a.acknowledged.as_ref().map(|ack| ack.note.clone()),
        })
        .collect()
}

pub async fn alerts(
    State(app): State<AppState>,
    Query(query): Query<FormatQuery>,
) -> Result<Response, Problem> {
    Ok(if query.csv()? {
        csv("alerts", alert_rows(&app))
    } else {
        Json(app.alert_board().alerts.clone()).into_response()
    })
}

pub async fn alerts_csv(State(app): State<AppState>) -> Response {
    csv("alerts", alert_rows(&app))
}

#[derive(Deserialize, Default)]
pub struct SalesApiQuery {
    #[serde(flatten)]
    sales: sales::SalesQuery,
    #[serde(default)]
    format: Option<String>,
}

pub async fn sales(
    State(app): State<AppState>,
    Query(query): Query<SalesApiQuery>,
) -> Result<Response, Problem> {
    let csv_wanted = FormatQuery {
        format: query.format.clone(),
    }
    .csv()?;
    let report = sales::model(&app, &query.sales)?;
    Ok(if csv_wanted {
        csv("sales", report.rows)
    } else {
        Json(report).into_response()
    })
}

pub async fn sales_csv(
    State(app): State<AppState>,
    Query(query): Query<sales::SalesQuery>,
) -> Result<Response, Problem> {
    Ok(csv("sales", sales::model(&app, &query)?.rows))
}

#[derive(Deserialize, Default)]
pub struct ReconciliationApiQuery {
    #[serde(flatten)]
    query: ReconciliationQuery,
    #[serde(default)]
    format: Option<String>,
}

/// Every selected collection, oldest first (the CSV has them all).
fn all_collections(
    app: &AppState,
    query: &ReconciliationQuery,
) -> Result<Vec<machine::CollectionRow>, Problem> {
    let filter = reconciliation::parse_query(query)?;
    let projection = app.projection();
    Ok(reconciliation::selected(&projection.collections, &filter)
        .map(machine::collection_row)
        .collect())
}

pub async fn reconciliation(
    State(app): State<AppState>,
    Query(query): Query<ReconciliationApiQuery>,
) -> Result<Response, Problem> {
    Ok(
        if (FormatQuery {
            format: query.format.clone(),
        })
        .csv()?
        {
            csv("reconciliation", all_collections(&app, &query.query)?)
        } else {
            Json(reconciliation::model(&app, &query.query)?).into_response()
        },
    )
}

pub async fn reconciliation_csv(
    State(app): State<AppState>,
    Query(query): Query<ReconciliationQuery>,
) -> Result<Response, Problem> {
    Ok(csv("reconciliation", all_collections(&app, &query)?))
}

#[derive(Deserialize, Default)]
pub struct AuditApiQuery {
    #[serde(flatten)]
    query: AuditQuery,
    #[serde(default)]
    format: Option<String>,
}

#[derive(Serialize)]
struct AuditRow {
    gseq: u64,
    epoch: u64,
    logged: String,
    kind: String,
    machine: String,
    seq: Option<u64>,
    at_machine: String,
    detail: String,
    hash: String,
    prev_hash: String,
}

fn audit_rows(page: audit::AuditPage) -> Vec<AuditRow> {
    page.entries
        .into_iter()
        .map(|entry| {
            let kind = audit::kind_label(&entry);
            let (machine, seq, at_machine, detail) = match &entry.kind {
                crate::ports::EntryKind::Event {
                    machine,
                    seq,
                    at_ms,
                    detail,
                    ..
                } => (
                    machine.to_string(),
                    Some(*seq),
                    format::time_rfc3339(*at_ms),
                    detail.clone(),
                ),
                crate::ports::EntryKind::EpochStarted { primary } => (
                    String::new(),
                    None,
                    String::new(),
                    format!("started by {primary}"),
                ),
                crate::ports::EntryKind::Operator {
                    operator,
                    at_ms,
                    machine,
                    ..
                } => (
                    machine
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    None,
                    format::time_rfc3339(*at_ms),
                    format!("by {operator}"),
                ),
                crate::ports::EntryKind::Unreadable { problem } => {
                    (String::new(), None, String::new(), problem.clone())
                }
            };
            AuditRow {
                gseq: entry.gseq,
                epoch: entry.epoch,
                logged: format::time_rfc3339(entry.logged_ms),
                kind,
                machine,
                seq,
                at_machine,
                detail,
                hash: entry.hash,
                prev_hash: entry.prev_hash,
            }
        })
        .collect()
}

pub async fn audit(
    State(app): State<AppState>,
    Query(query): Query<AuditApiQuery>,
) -> Result<Response, Problem> {
    let csv_wanted = FormatQuery {
        format: query.format.clone(),
    }
    .csv()?;
    let page = audit::model(&app, &query.query).await?;
    Ok(if csv_wanted {
        csv("audit", audit_rows(page))
    } else {
        Json(page).into_response()
    })
}

pub async fn audit_csv(
    State(app): State<AppState>,
    Query(query): Query<AuditQuery>,
) -> Result<Response, Problem> {
    Ok(csv("audit", audit_rows(audit::model(&app, &query).await?)))
}

#[derive(Serialize)]
struct ReplicaRow {
    replica: String,
    reachable: bool,
    role: String,
    epoch: u64,
    tip: u64,
    commit: u64,
    lag: u64,
    naks_sent: u64,
    naks_received: u64,
    records_retransmitted: u64,
    datagrams_rejected: u64,
    machines_connected: usize,
}

fn replica_rows(model: replication::Replication) -> Vec<ReplicaRow> {
    let row = |name: String, status: Option<crate::ReplicaStatus>| {
        let s = status.clone().unwrap_or_default();
        ReplicaRow {
            replica: name,
            reachable: status.is_some(),
            role: if status.is_some() {
                s.role.clone()
            } else {
                "down".into()
            },
            epoch: s.epoch,
            tip: s.tip,
            commit: s.commit,
            lag: s.lag,
            naks_sent: s.naks_sent,
            naks_received: s.naks_received,
            records_retransmitted: s.records_retransmitted,
            datagrams_rejected: s.datagrams_rejected.iter().map(|(_, n)| n).sum(),
            machines_connected: s.machines_connected,
        }
    };
    let mut rows = vec![row(model.replica.id.clone(), Some(model.replica))];
    rows.extend(model.peers.into_iter().map(|p| row(p.name, p.status)));
    rows
}

pub async fn replication(
    State(app): State<AppState>,
    Query(query): Query<FormatQuery>,
) -> Result<Response, Problem> {
    let csv_wanted = query.csv()?;
    let model = replication::model(&app).await;
    Ok(if csv_wanted {
        csv("replication", replica_rows(model))
    } else {
        Json(model).into_response()
    })
}

pub async fn replication_csv(State(app): State<AppState>) -> Response {
    csv("replication", replica_rows(replication::model(&app).await))
}

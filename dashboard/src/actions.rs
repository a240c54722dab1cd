//! What admins do on the dashboard: a slot's price or name, a fleet-wide
//! price, settling a change-owed ticket, acknowledging an alert. Each
//! becomes an [`OperatorRequest`] on the read ports' action channel, with
//! the operator's name; the core records it in the log (on the primary)
//! and delivers machine commands over the machines' links.
//!
//! Forms answer with a receipt page, JSON calls with the receipt as JSON.
//! Input is checked here first (machine, slot, price, name, note), so a
//! mistake gets a clear 4xx before anything reaches the core.

use crate::app::AppState;
use crate::auth::Operator;
use crate::pages::errors::Problem;
use crate::pages::{Viewer, receipt};
use crate::ports::{ActionError, ActionReceipt, OperatorAction, OperatorRequest};
use axum::Json;
use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ledger::operator::{AlertKey, NOTE_CHARS_MAX};
use ledger::{MachineId, SlotId, Won};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long a request waits for the core's answer.
pub const ACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends a request to the core and waits for its answer.
pub async fn submit(
    app: &AppState,
    operator: &str,
    action: OperatorAction,
) -> Result<ActionReceipt, ActionError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let request = OperatorRequest {
        operator: operator.to_owned(),
        action,
        reply,
    };
    if app.ports.actions.try_send(request).is_err() {
        return Err(ActionError::Invalid(
            "the replica is busy with other operator requests; try again".into(),
        ));
    }
    let result = match tokio::time::timeout(ACTION_TIMEOUT, answer).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(ActionError::Stopped),
        Err(_) => Err(ActionError::Storage(
            "no answer from the replica's core in time".into(),
        )),
    };
    if let Ok(receipt) = &result {
        projection_reaches(app, receipt.gseq).await;
    }
    result
}

/// How long an answered action waits for this replica's projection to
/// include its entry.
pub const PROJECTION_WAIT: Duration = Duration::from_secs(2);

/// Waits (at most [`PROJECTION_WAIT`]) until the projection this replica
/// publishes includes `gseq`, so the page, listing or login that follows
/// an action already shows it.
async fn projection_reaches(app: &AppState, gseq: u64) {
    let mut projection = app.ports.projection.clone();
    let reached = projection.wait_for(|p| p.as_of_gseq >= gseq);
    let _ = tokio::time::timeout(PROJECTION_WAIT, reached).await;
}

/// The status and words for a refused request.
pub fn error_status(error: &ActionError) -> (StatusCode, String) {
    let status = match error {
        ActionError::NotPrimary { .. } | ActionError::UserExists(_) => StatusCode::CONFLICT,
        ActionError::UnknownMachine(_)
        | ActionError::UnknownSlot { .. }
        | ActionError::UnknownProduct(_)
        | ActionError::UnknownUser(_) => StatusCode::NOT_FOUND,
        ActionError::Invalid(_) => StatusCode::BAD_REQUEST,
        ActionError::Storage(_) | ActionError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, error.to_string())
}

/// A refused request as a problem page or JSON error, naming the primary
/// when this replica is not it.
fn refused(app: &AppState, viewer_host: Option<&str>, error: &ActionError) -> Problem {
    let (status, mut message) = error_status(error);
    if let ActionError::NotPrimary { primary } = error {
        message = match (primary, app.primary_url(viewer_host)) {
            (Some(name), Some(url)) => {
                format!("this replica is not the primary: {name} is, at {url}")
            }
            (Some(name), None) => format!("this replica is not the primary: {name} is"),
            _ => "this replica is not the primary, and no primary is known right now".into(),
        };
    }
    Problem::new(status, message)
}

/// The receipt as JSON.
#[derive(Serialize)]
pub struct ReceiptJson {
    pub gseq: u64,
    pub commands: Vec<CommandJson>,
}

#[derive(Serialize)]
pub struct CommandJson {
    pub machine: MachineId,
    pub command_id: u64,
    /// Delivered at once (the machine was connected); otherwise it is sent
    /// when the machine reconnects.
    pub delivered: bool,
}

fn receipt_json(receipt: &ActionReceipt) -> ReceiptJson {
    ReceiptJson {
        gseq: receipt.gseq,
        commands: receipt
            .commands
            .iter()
            .map(|(machine, command_id, delivered)| CommandJson {
                machine: machine.clone(),
                command_id: *command_id,
                delivered: *delivered,
            })
            .collect(),
    }
}

/// The machine and slot of a path, both known to this replica.
fn machine_slot(app: &AppState, id: &str, slot: &str) -> Result<(MachineId, SlotId), Problem> {
    let machine = known_machine(app, id)?;
    let slot_id = slot.parse::<u16>().ok().map(SlotId).ok_or_else(|| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("{slot:?} is not a slot number"),
        )
    })?;
    let projection = app.projection();
    let has_slot = projection
        .machines
        .get(&machine)
        .is_some_and(|state| state.slots.contains_key(&slot_id));
    if !has_slot {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("machine {machine} has no slot {slot_id}"),
        ));
    }
    Ok((machine, slot_id))
}

pub fn known_machine(app: &AppState, id: &str) -> Result<MachineId, Problem> {
    let machine = MachineId::new(id)
        .map_err(|_| Problem::new(StatusCode::NOT_FOUND, format!("no machine {id:?}")))?;
    if app.projection().machines.contains_key(&machine) {
        Ok(machine)
    } else {
        Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("no machine {machine}"),
        ))
    }
}

/// A price typed by a person: digits (commas and a `₩` allowed), a
/// multiple of 10 won within the catalog's range.
pub fn parse_price(text: &str) -> Result<Won, Problem> {
    let cleaned: String = text
        .trim()
        .trim_start_matches('₩')
        .chars()
        .filter(|c| *c != ',')
        .collect();
    let price: Won = cleaned.trim().parse().map_err(|_| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("{text:?} is not a price in won"),
        )
    })?;
    ledger::catalog::validate_price(price)
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(price)
}

fn parse_product_name(text: &str) -> Result<String, Problem> {
    let name = text.trim().to_owned();
    ledger::catalog::validate_name(&name)
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(name)
}

fn form_problem(rejection: FormRejection) -> Problem {
    Problem::new(
        rejection.status(),
        format!("the form is malformed: {}", rejection.body_text()),
    )
}

fn json_problem(rejection: JsonRejection) -> Problem {
    Problem::new(
        rejection.status(),
        format!("the JSON body is malformed: {}", rejection.body_text()),
    )
}

/// Carries out `action` and answers with a receipt page or JSON.
async fn carry_out(
    app: &AppState,
    operator: &Operator,
    host: Option<&str>,
    action: OperatorAction,
    json: bool,
    what: String,
    back: String,
) -> Response {
    match submit(app, &operator.name, action).await {
        Ok(receipt) => {
            tracing::info!(operator = %operator.name, gseq = receipt.gseq, "{what}");
            if json {
                Json(receipt_json(&receipt)).into_response()
            } else {
                receipt::render(app, operator, host, &what, &receipt, &back).into_response()
            }
        }
        Err(error) => refused(app, host, &error).into_response(),
    }
}

#[derive(Deserialize)]
pub struct PriceInput {
    #[serde(default)]
    price: serde_json::Value,
}

fn price_of(value: &serde_json::Value) -> Result<Won, Problem> {
    match value {
        serde_json::Value::Number(n) => parse_price(&n.to_string()),
        serde_json::Value::String(s) => parse_price(s),
        _ => Err(Problem::new(StatusCode::BAD_REQUEST, "give a price in won")),
    }
}

#[derive(Deserialize)]
pub struct PriceForm {
    #[serde(default)]
    price: String,
}

async fn price(
    app: AppState,
    viewer: Viewer,
    (id, slot): (String, String),
    price: Result<Won, Problem>,
    json: bool,
) -> Response {
    let (machine, slot) = match machine_slot(&app, &id, &slot) {
        Ok(found) => found,
        Err(problem) => return problem.into_response(),
    };
    let price = match price {
        Ok(price) => price,
        Err(problem) => return problem.into_response(),
    };
    let what = format!(
        "price of slot {slot} of {machine} set to {}",
        crate::format::won(price)
    );
    let back = format!("/machines/{machine}");
    let action = OperatorAction::SetPrice {
        machine,
        slot,
        price,
    };
    carry_out(
        &app,
        &viewer.operator,
        viewer.host(),
        action,
        json,
        what,
        back,
    )
    .await
}

pub async fn price_form(
    State(app): State<AppState>,
    viewer: Viewer,
    Path(path): Path<(String, String)>,
    form: Result<Form<PriceForm>, FormRejection>,
) -> Response {
    let input = form
        .map_err(form_problem)
        .and_then(|Form(f)| parse_price(&f.price));
    price(app, viewer, path, input, false).await
}

pub async fn price_json(
    State(app): State<AppState>,
    viewer: Viewer,
    Path(path): Path<(String, String)>,
    body: Result<Json<PriceInput>, JsonRejection>,
) -> Response {
    let input = body
        .map_err(json_problem)
        .and_then(|Json(b)| price_of(&b.price));
    price(app, viewer, path, input, true).await
}

#[derive(Deserialize)]
pub struct NameInput {
    #[serde(default)]
    name: String,
}

async fn rename(
    app: AppState,
    viewer: Viewer,
    (id, slot): (String, String),
    name: Result<String, Problem>,
    json: bool,
) -> Response {
    let (machine, slot) = match machine_slot(&app, &id, &slot) {
        Ok(found) => found,
        Err(problem) => return problem.into_response(),
    };
    let name = match name {
        Ok(name) => name,
        Err(problem) => return problem.into_response(),
    };
    let what = format!("slot {slot} of {machine} renamed to {name:?}");
    let back = format!("/machines/{machine}");
    let action = OperatorAction::Rename {
        machine,
        slot,
        name,
    };
    carry_out(
        &app,
        &viewer.operator,
        viewer.host(),
        action,
        json,
        what,
        back,
    )
    .await
}

pub async fn rename_form(
    State(app): State<AppState>,
    viewer: Viewer,
    Path(path): Path<(String, String)>,
    form: Result<Form<NameInput>, FormRejection>,
) -> Response {
    let input = form
        .map_err(form_problem)
        .and_then(|Form(f)| parse_product_name(&f.name));
    rename(app, viewer, path, input, false).await
}

pub async fn rename_json(
    State(app): State<AppState>,
    viewer: Viewer,
    Path(path): Path<(String, String)>,
    body: Result<Json<NameInput>, JsonRejection>,
) -> Response {
    let input = body
        .map_err(json_problem)
        .and_then(|Json(b)| parse_product_name(&b.name));
    rename(app, viewer, path, input, true).await
}

async fn settle(
    app: AppState,
    viewer: Viewer,
    (id, ticket): (String, String),
    json: bool,
) -> Response {
    let machine = match known_machine(&app, &id) {
        Ok(machine) => machine,
        Err(problem) => return problem.into_response(),
    };
    let Ok(ticket) = ticket.parse::<u64>() else {
        return Problem::new(
            StatusCode::BAD_REQUEST,
            format!("{ticket:?} is not a ticket number"),
        )
        .into_response();
    };
    let open = app
        .projection()
        .machines
        .get(&machine)
        .is_some_and(|state| state.owed.contains_key(&ticket));
    if !open {
        return Problem::new(
            StatusCode::NOT_FOUND,
            format!("{machine} has no open change-owed ticket {ticket}"),
        )
        .into_response();
    }
    let what = format!("change-owed ticket {ticket} of {machine} sent for settlement");
    let back = format!("/machines/{machine}");
    let action = OperatorAction::SettleTicket { machine, ticket };
    carry_out(
        &app,
        &viewer.operator,
        viewer.host(),
        action,
        json,
        what,
        back,
    )
    .await
}

pub async fn settle_form(
    State(app): State<AppState>,
    viewer: Viewer,
    Path(path): Path<(String, String)>,
) -> Response {
    settle(app, viewer, path, false).await
}

pub async fn settle_json(
    State(app): State<AppState>,
    viewer: Viewer,
    Path(path): Path<(String, String)>,
) -> Response {
    settle(app, viewer, path, true).await
}

#[derive(Deserialize)]
pub struct FleetPriceForm {
    #[serde(default)]
    product: String,
    #[serde(default)]
    price: serde_json::Value,
}

async fn fleet_price(
    app: AppState,
    viewer: Viewer,
    input: Result<(String, Won), Problem>,
    json: bool,
) -> Response {
    let (product, price) = match input {
        Ok(input) => input,
        Err(problem) => return problem.into_response(),
    };
    let sold = app.projection().machines.values().any(|state| {
        state
            .slots
            .values()
            .any(|slot| slot.config.product.name == product)
    });
    if !sold {
        return Problem::new(
            StatusCode::NOT_FOUND,
            format!("no machine sells {product:?}"),
        )
        .into_response();
    }
    let what = format!(
        "{product} set to {} on every machine",
        crate::format::won(price)
    );
    let action = OperatorAction::FleetPrice { product, price };
    carry_out(
        &app,
        &viewer.operator,
        viewer.host(),
        action,
        json,
        what,
        "/".into(),
    )
    .await
}

fn fleet_input(form: &FleetPriceForm) -> Result<(String, Won), Problem> {
    Ok((parse_product_name(&form.product)?, price_of(&form.price)?))
}

pub async fn fleet_price_form(
    State(app): State<AppState>,
    viewer: Viewer,
    form: Result<Form<FleetPriceFormText>, FormRejection>,
) -> Response {
    let input = form.map_err(form_problem).and_then(|Form(f)| {
        fleet_input(&FleetPriceForm {
            product: f.product,
            price: serde_json::Value::String(f.price),
        })
    });
    fleet_price(app, viewer, input, false).await
}

#[derive(Deserialize)]
pub struct FleetPriceFormText {
    #[serde(default)]
    product: String,
    #[serde(default)]
    price: String,
}

pub async fn fleet_price_json(
    State(app): State<AppState>,
    viewer: Viewer,
    body: Result<Json<FleetPriceForm>, JsonRejection>,
) -> Response {
    let input = body
        .map_err(json_problem)
        .and_then(|Json(b)| fleet_input(&b));
    fleet_price(app, viewer, input, true).await
}

#[derive(Deserialize)]
pub struct AcknowledgeInput {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    machine: String,
    /// Empty for an alert about the whole machine.
    #[serde(default)]
    slot: serde_json::Value,
    #[serde(default)]
    note: String,
}

#[derive(Deserialize)]
pub struct AcknowledgeForm {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    machine: String,
    #[serde(default)]
    slot: String,
    #[serde(default)]
    note: String,
}

fn alert_key(app: &AppState, input: &AcknowledgeInput) -> Result<(AlertKey, String), Problem> {
    let kind = crate::alerts::parse_kind(&input.kind).ok_or_else(|| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("{:?} is not a kind of alert", input.kind),
        )
    })?;
    let machine = known_machine(app, &input.machine)?;
    let slot = match &input.slot {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) if s.trim().is_empty() => None,
        serde_json::Value::String(s) => Some(s.trim().parse::<u16>().ok()),
        serde_json::Value::Number(n) => Some(n.as_u64().and_then(|n| u16::try_from(n).ok())),
        _ => Some(None),
    };
    let slot = match slot {
        None => None,
        Some(Some(slot)) => Some(SlotId(slot)),
        Some(None) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "the slot must be a number",
            ));
        }
    };
    let note = input.note.trim().to_owned();
    if note.chars().count() > NOTE_CHARS_MAX || note.chars().any(char::is_control) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!("a note has at most {NOTE_CHARS_MAX} characters on one line"),
        ));
    }
    let key = AlertKey {
        kind,
        machine,
        slot,
    };
    let active = app
        .alert_board()
        .alerts
        .iter()
        .any(|alert| alert.condition.key == key);
    if !active {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "there is no such alert right now (it may have cleared)",
        ));
    }
    Ok((key, note))
}

async fn acknowledge(
    app: AppState,
    viewer: Viewer,
    input: Result<AcknowledgeInput, Problem>,
    json: bool,
) -> Response {
    let checked = input.and_then(|input| alert_key(&app, &input));
    let (alert, note) = match checked {
        Ok(checked) => checked,
        Err(problem) => return problem.into_response(),
    };
    let what = format!(
        "{} alert of {} acknowledged",
        crate::alerts::kind_name(alert.kind).replace('_', " "),
        alert.machine
    );
    let back = format!("/machines/{}", alert.machine);
    let action = OperatorAction::AcknowledgeAlert { alert, note };
    carry_out(
        &app,
        &viewer.operator,
        viewer.host(),
        action,
        json,
        what,
        back,
    )
    .await
}

pub async fn acknowledge_form(
    State(app): State<AppState>,
    viewer: Viewer,
    form: Result<Form<AcknowledgeForm>, FormRejection>,
) -> Response {
    let input = form.map_err(form_problem).map(|Form(f)| AcknowledgeInput {
        kind: f.kind,
        machine: f.machine,
        slot: serde_json::Value::String(f.slot),
        note: f.note,
    });
    acknowledge(app, viewer, input, false).await
}

pub async fn acknowledge_json(
    State(app): State<AppState>,
    viewer: Viewer,
    body: Result<Json<AcknowledgeInput>, JsonRejection>,
) -> Response {
    let input = body.map_err(json_problem).map(|Json(b)| b);
    acknowledge(app, viewer, input, true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_parsed_as_people_type_them() {
        assert_eq!(parse_price("1,200").unwrap(), 1_200);
        assert_eq!(parse_price(" ₩450 ").unwrap(), 450);
        for bad in [
            "",
            "abc",
            "455",
            "0",
            "-10",
            "10000000",
            "1e3",
            "99999999999999999999",
        ] {
            let problem = parse_price(bad).unwrap_err();
            assert_eq!(problem.status, StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }
}

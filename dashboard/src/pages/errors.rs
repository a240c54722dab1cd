//! Errors as people and programs should see them: a page in the layout, or
//! a JSON object under `/api/`. Every refusal, ours or one of axum's
//! extractors', passes through [`present`], so nothing answers with a bare
//! text or a stack trace.

use crate::app::AppState;
use crate::auth::{Operator, is_api};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use maud::html;

/// Largest error body of axum's own read to reword it.
const REJECTION_BYTES_MAX: usize = 4 * 1024;

/// A refusal with a clear message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub status: StatusCode,
    pub message: String,
}

impl Problem {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Problem {
        Problem {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for Problem {
    /// A plain answer marked as a problem; [`present`] renders it.
    fn into_response(self) -> Response {
        let mut response = (self.status, self.message.clone()).into_response();
        response.extensions_mut().insert(self);
        response
    }
}

#[derive(serde::Serialize)]
struct ErrorJson<'a> {
    error: &'a str,
    status: u16,
}

/// Renders every 4xx and 5xx answer: JSON for the API, a page otherwise.
pub async fn present(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let api = is_api(request.uri().path());
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let response = next.run(request).await;
    let status = response.status();
    let operator = response.extensions().get::<Operator>().cloned();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let problem = match response.extensions().get::<Problem>() {
        Some(problem) => problem.clone(),
        None => {
            let is_ours = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
            if is_ours {
                return response;
            }
            let body = axum::body::to_bytes(response.into_body(), REJECTION_BYTES_MAX)
                .await
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&body).trim().to_owned();
            let message = if text.is_empty() {
                status.canonical_reason().unwrap_or("error").to_owned()
            } else {
                text
            };
            Problem::new(status, message)
        }
    };
    if api {
        let body = ErrorJson {
            error: &problem.message,
            status: problem.status.as_u16(),
        };
        return (problem.status, axum::Json(body)).into_response();
    }
    let title = status.canonical_reason().unwrap_or("Error");
    let body = html! {
        section.problem {
            h1 { (status.as_u16()) " · " (title) }
            p { (problem.message) }
            p {
                @if status == StatusCode::UNAUTHORIZED {
                    a href="/login" { "Log in" }
                } @else {
                    a href="/" { "Back to the overview" }
                }
            }
        }
    };
    let page = super::layout(
        &app,
        operator.as_ref(),
        host.as_deref(),
        super::Section::None,
        title,
        body,
    );
    (problem.status, page).into_response()
}

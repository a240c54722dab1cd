//! Server-rendered pages (maud): the layout every page shares, and one
//! module per page. Each page module builds a serialisable model from the
//! read ports (also served as JSON and CSV by [`crate::api`]) and renders
//! it.

pub mod assets;
pub mod audit;
pub mod chart;
pub mod errors;
pub mod login;
pub mod machine;
pub mod overview;
pub mod receipt;
pub mod reconciliation;
pub mod replication;
pub mod sales;

use crate::app::{AppState, now_ms};
use crate::auth::Operator;
use crate::pages::errors::Problem;
use crate::ports::Role;
use crate::{Connection, format};
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};

/// Who is looking, and how they reached this replica.
pub struct Viewer {
    pub operator: Operator,
    host: Option<String>,
    pub https: bool,
}

impl Viewer {
    /// The `Host` the browser used (to link to a peer on the same host).
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Viewer {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let operator = parts
            .extensions
            .get::<Operator>()
            .cloned()
            .ok_or_else(|| Problem::new(StatusCode::UNAUTHORIZED, "log in first"))?;
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned);
        let https = parts
            .extensions
            .get::<Connection>()
            .is_some_and(|c| c.https);
        Ok(Viewer {
            operator,
            host,
            https,
        })
    }
}

/// The sections of the navigation bar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Sales,
    Reconciliation,
    Audit,
    Replication,
    None,
}

const SECTIONS: [(Section, &str, &str); 5] = [
    (Section::Overview, "/", "Overview"),
    (Section::Sales, "/sales", "Sales"),
    (Section::Reconciliation, "/reconciliation", "Reconciliation"),
    (Section::Audit, "/audit", "Audit log"),
    (Section::Replication, "/replication", "Replication"),
];

/// A page in the shared layout: the header names the replica, its role,
/// epoch and lag on every page, and a follower says so plainly.
pub fn layout(
    app: &AppState,
    operator: Option<&Operator>,
    host: Option<&str>,
    section: Section,
    title: &str,
    body: Markup,
) -> Html<String> {
    let snapshot = app.snapshot();
    let status = &snapshot.status;
    let role = snapshot.role;
    let live = matches!(section, Section::Overview) || title.starts_with("Machine ");
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · " (status.id) " · vendledger" }
                link rel="stylesheet" href=(assets::url("style.css"));
                script src=(assets::url("app.js")) defer {}
            }
            body data-live=[live.then_some("1")] data-as-of=(app.projection().as_of_gseq) {
                header.top {
                    div.brand {
                        a href="/" { "vendledger" }
                        span.replica { (status.id) }
                        span class={"role role-" (role.as_str())} { (role.as_str()) }
                        span.meta { "epoch " (status.epoch) }
                        span.meta { "commit " (format::count(status.commit)) }
                        span.meta { "lag " (format::count(status.lag)) }
                    }
                    @if let Some(operator) = operator {
                        nav {
                            @for (target, href, label) in SECTIONS {
                                a href=(href) class=[(target == section).then_some("active")] { (label) }
                            }
                        }
                        form.user method="post" action="/logout" {
                            span { (operator.name) " · " (operator.role.as_str()) }
                            input type="hidden" name="csrf" value=(operator.csrf);
                            button.link type="submit" { "Log out" }
                        }
                    }
                }
                (follower_banner(app, role, status.lag, host))
                main {
                    (body)
                }
                footer {
                    "Times in KST · rendered " (format::time(now_ms()))
                    " · log tip " (format::count(status.tip))
                }
            }
        }
    };
    Html(markup.into_string())
}

fn follower_banner(app: &AppState, role: Role, lag: u64, host: Option<&str>) -> Markup {
    if role == Role::Primary {
        return html! {};
    }
    let primary = app.primary();
    let url = app.primary_url(host);
    html! {
        div.banner {
            strong { "This replica is a " (role.as_str()) ", not the primary." }
            " It shows the log as far as it has replicated it"
            @if lag > 0 { " (" (format::count(lag)) " entries behind)" }
            "; live machine connections and every change are on the primary"
            @match (primary, url) {
                (Some((name, _)), Some(url)) => {
                    ": " a href=(url) { (name) " at " (url) } "."
                }
                (Some((name, _)), None) => { ": " (name) "." }
                _ => { ", and no primary is known right now." }
            }
        }
    }
}

/// Security headers for every answer: no framing, no sniffing, scripts and
/// styles only from this site.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// A hidden CSRF field for forms.
pub fn csrf_field(operator: &Operator) -> Markup {
    html! { input type="hidden" name="csrf" value=(operator.csrf); }
}

/// Where write forms are sent: this replica when it is the primary, the
/// primary's dashboard when this one follows (the session and its CSRF
/// token are valid on every replica), or nowhere when no primary is known.
pub fn action_base(app: &AppState, host: Option<&str>) -> Option<String> {
    if app.snapshot().role == Role::Primary {
        Some(String::new())
    } else {
        app.primary_url(host)
    }
}

/// A won amount, right-aligned in tables by the `num` class.
pub fn won(amount: ledger::Won) -> Markup {
    html! { (format::won(amount)) }
}

/// Raw markup (for inline SVG built by [`chart`]).
pub fn raw(text: String) -> PreEscaped<String> {
    PreEscaped(text)
}

//! Logins, sessions, roles and CSRF checks, as axum middleware and
//! handlers. The rules themselves are pure and live in [`session`],
//! [`guard`] and [`cluster`].

pub mod cluster;
pub mod guard;
pub mod session;

use crate::app::{AppState, BODY_BYTES_MAX, lock, now_ms};
use crate::pages;
use crate::pages::errors::Problem;
use crate::{Connection, actions};
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use cluster::{AdminReply, AdminRequest, UserLine};
use ledger::operator::OperatorRole;
use serde::Deserialize;
use session::{SESSION_ABSOLUTE_S, Session};
use std::time::Duration;

/// The session cookie (the same on every replica: cookies ignore ports).
pub const SESSION_COOKIE: &str = "vl_session";
/// The login form's nonce cookie (its CSRF token is derived from it).
pub const LOGIN_COOKIE: &str = "vl_login";
/// The header JSON clients send the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Longest account name accepted.
pub const NAME_BYTES_MAX: usize = ledger::operator::OPERATOR_NAME_BYTES_MAX;
/// How long a login waits for a free password verification.
const VERIFY_WAIT: Duration = Duration::from_secs(5);

/// The operator behind a request, once the session checked out.
#[derive(Clone, Debug)]
pub struct Operator {
    pub name: String,
    pub role: OperatorRole,
    pub session: Session,
    /// The session's CSRF token, for forms.
    pub csrf: String,
}

impl Operator {
    pub fn is_admin(&self) -> bool {
        self.role == OperatorRole::Admin
    }
}

/// Whether a request is for the JSON API (errors as JSON, 401 not redirects).
pub fn is_api(path: &str) -> bool {
    path.starts_with("/api/")
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

fn connection(request: &Request) -> Connection {
    request
        .extensions()
        .get::<Connection>()
        .cloned()
        .unwrap_or_default()
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, Secure under HTTPS.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age_s: i64, https: bool) -> HeaderValue {
    let built = cookie::Cookie::build((name, value))
        .path(path)
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .secure(https)
        .max_age(cookie::time::Duration::seconds(max_age_s))
        .build();
    HeaderValue::from_str(&built.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Checks the session cookie: the account must exist and be enabled, the
/// token authentic and fresh, and the session not logged out here.
/// Returns the operator and, when due, a refreshed token.
pub fn authenticate(app: &AppState, token: &str) -> Result<(Operator, Option<String>), String> {
    let user = session::SessionKeys::user_of(token).map_err(|e| e.to_string())?;
    let projection = app.projection();
    let account = projection
        .operators
        .users
        .get(&user)
        .filter(|account| !account.disabled)
        .ok_or("the account is unknown or disabled")?;
    let now_s = now_ms() / 1_000;
    let mut session = app
        .keys
        .check(token, &account.password_hash, now_s)
        .map_err(|e| e.to_string())?;
    if lock(&app.guard).is_revoked(&session.id) {
        return Err("the session was logged out".to_owned());
    }
    let refreshed = session::needs_refresh(&session, now_s).then(|| {
        session.seen_s = now_s;
        app.keys.token(&session, &account.password_hash)
    });
    let operator = Operator {
        name: user,
        role: account.role,
        csrf: app.keys.csrf(&session.id),
        session,
    };
    Ok((operator, refreshed))
}

/// Every private route: pages redirect to the login form, the API answers
/// 401.
pub async fn require_session(
    State(app): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let https = connection(&request).https;
    let token = cookie(request.headers(), SESSION_COOKIE);
    let checked = match token.as_deref() {
        Some(token) => authenticate(&app, token),
        None => Err("no session".to_owned()),
    };
    match checked {
        Ok((operator, refreshed)) => {
            request.extensions_mut().insert(operator.clone());
            let mut response = next.run(request).await;
            // For error pages, which are rendered further out.
            response.extensions_mut().insert(operator);
            if let Some(token) = refreshed {
                response.headers_mut().append(
                    header::SET_COOKIE,
                    set_cookie(SESSION_COOKIE, &token, "/", SESSION_ABSOLUTE_S, https),
                );
            }
            response
        }
        Err(why) => {
            let path = request.uri().path();
            if request.method() == Method::GET && !is_api(path) {
                let target = request
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                let query = serde_urlencoded::to_string([("next", target)]).unwrap_or_default();
                Redirect::to(&format!("/login?{query}")).into_response()
            } else {
                Problem::new(StatusCode::UNAUTHORIZED, format!("log in first ({why})"))
                    .into_response()
            }
        }
    }
}

/// Writes: admins only (auditors read everything and change nothing).
pub async fn require_admin(request: Request, next: Next) -> Response {
    match request.extensions().get::<Operator>() {
        Some(operator) if operator.is_admin() => next.run(request).await,
        _ => Problem::new(
            StatusCode::FORBIDDEN,
            "auditors can read everything but change nothing",
        )
        .into_response(),
    }
}

#[derive(Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

/// State-changing requests carry the session's CSRF token: JSON clients in
/// the `X-CSRF-Token` header, forms in a `csrf` field.
pub async fn check_csrf(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let Some(operator) = request.extensions().get::<Operator>().cloned() else {
        return Problem::new(StatusCode::UNAUTHORIZED, "log in first").into_response();
    };
    if let Some(given) = request.headers().get(CSRF_HEADER) {
        let given = given.to_str().unwrap_or("");
        return if app.keys.csrf_matches(&operator.session.id, given) {
            next.run(request).await
        } else {
            csrf_refused()
        };
    }
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return csrf_refused();
    }
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, BODY_BYTES_MAX).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "the form is too large")
                .into_response();
        }
    };
    let given = serde_urlencoded::from_bytes::<CsrfField>(&bytes)
        .map(|field| field.csrf)
        .unwrap_or_default();
    if !app.keys.csrf_matches(&operator.session.id, &given) {
        return csrf_refused();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn csrf_refused() -> Response {
    Problem::new(
        StatusCode::FORBIDDEN,
        "the form's security token is missing or wrong; reload the page and try again",
    )
    .into_response()
}

/// With TLS configured, plain HTTP is answered only for the status API and
/// the sealed admin API (`vendctl`); pages move to HTTPS.
pub async fn https_only(request: Request, next: Next) -> Response {
    let connection = connection(&request);
    let path = request.uri().path();
    let exempt = path == "/api/v1/status" || path == cluster::ADMIN_PATH;
    if !connection.tls_configured || connection.https || exempt {
        return next.run(request).await;
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    Redirect::permanent(&format!("https://{host}{target}")).into_response()
}

#[derive(Deserialize)]
pub struct NextQuery {
    #[serde(default)]
    next: String,
}

/// Only paths of this site (no `//host`) are followed after a login.
fn safe_next(next: &str) -> String {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') && next.len() < 512
    {
        next.to_owned()
    } else {
        "/".to_owned()
    }
}

pub async fn login_form(
    State(app): State<AppState>,
    Query(query): Query<NextQuery>,
    request: Request,
) -> Response {
    let https = connection(&request).https;
    if let Some(token) = cookie(request.headers(), SESSION_COOKIE)
        && authenticate(&app, &token).is_ok()
    {
        return Redirect::to(&safe_next(&query.next)).into_response();
    }
    login_page(&app, &safe_next(&query.next), None, StatusCode::OK, https)
}

/// The login form with a fresh nonce cookie.
fn login_page(
    app: &AppState,
    next: &str,
    message: Option<&str>,
    status: StatusCode,
    https: bool,
) -> Response {
    let nonce = session::login_nonce();
    let csrf = app.keys.login_csrf(&nonce);
    let html = pages::login::render(app, next, &csrf, message);
    let mut response = (status, html).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, &nonce, "/login", 3_600, https),
    );
    response
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: String,
}

pub async fn login(
    State(app): State<AppState>,
    headers: HeaderMap,
    axum::Extension(connection): axum::Extension<Connection>,
    form: Result<axum::Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let https = connection.https;
    let Ok(axum::Form(form)) = form else {
        return Problem::new(StatusCode::BAD_REQUEST, "the login form is malformed")
            .into_response();
    };
    let next = safe_next(&form.next);
    let nonce = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if !app.keys.login_csrf_matches(&nonce, &form.csrf) {
        let message = "The login form expired or came from elsewhere; please try again.";
        return login_page(&app, &next, Some(message), StatusCode::FORBIDDEN, https);
    }
    let user = form.user.trim().to_owned();
    if user.is_empty()
        || user.len() > NAME_BYTES_MAX
        || form.password.len() > ledger::admin::PASSWORD_BYTES_MAX
    {
        let message = "Wrong name or password.";
        return login_page(&app, &next, Some(message), StatusCode::UNAUTHORIZED, https);
    }
    let now = now_ms();
    let admitted = lock(&app.guard).admit(connection.peer.ip(), &user, now);
    if let Err(refusal) = admitted {
        let message = refusal.to_string();
        return login_page(
            &app,
            &next,
            Some(&message),
            StatusCode::TOO_MANY_REQUESTS,
            https,
        );
    }
    match verify(&app, &user, form.password).await {
        Err(problem) => problem.into_response(),
        Ok(None) => {
            lock(&app.guard).failed(&user, now);
            let message = "Wrong name or password.";
            login_page(&app, &next, Some(message), StatusCode::UNAUTHORIZED, https)
        }
        Ok(Some(password_hash)) => {
            lock(&app.guard).succeeded(&user);
            let (_, token) = app.keys.issue(&user, &password_hash, now / 1_000);
            tracing::info!(operator = %user, "operator logged in");
            let mut response = Redirect::to(&next).into_response();
            let headers = response.headers_mut();
            headers.append(
                header::SET_COOKIE,
                set_cookie(SESSION_COOKIE, &token, "/", SESSION_ABSOLUTE_S, https),
            );
            headers.append(
                header::SET_COOKIE,
                set_cookie(LOGIN_COOKIE, "", "/login", 0, https),
            );
            response
        }
    }
}

/// Verifies a password off the async threads, at most
/// `VERIFICATIONS_MAX` at once. An unknown or disabled account is verified
/// against a dummy hash so it takes as long as a real one. Returns the
/// account's hash when the password matches.
async fn verify(app: &AppState, user: &str, password: String) -> Result<Option<String>, Problem> {
    let account = app
        .projection()
        .operators
        .users
        .get(user)
        .filter(|account| !account.disabled)
        .map(|account| account.password_hash.clone());
    let permit = tokio::time::timeout(VERIFY_WAIT, app.verifications.clone().acquire_owned())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many logins at once; try again in a moment",
            )
        })?;
    let hash = account.clone();
    let matched = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let stored = hash.unwrap_or_else(|| dummy_hash().to_owned());
        ledger::admin::verify_password(&password, &stored)
    })
    .await
    .unwrap_or(false);
    Ok(account.filter(|_| matched))
}

fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        ledger::admin::hash_password(
            &session::login_nonce(),
            &[0; 16],
            ledger::admin::PasswordParams::Standard,
        )
        .unwrap_or_default()
    })
}

pub async fn logout(
    State(app): State<AppState>,
    axum::Extension(operator): axum::Extension<Operator>,
    axum::Extension(connection): axum::Extension<Connection>,
) -> Response {
    let session = &operator.session;
    lock(&app.guard).revoke(
        &session.id,
        session.issued_s + SESSION_ABSOLUTE_S,
        now_ms() / 1_000,
    );
    tracing::info!(operator = %operator.name, "operator logged out");
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", "/", 0, connection.https),
    );
    response
}

/// Operator names: 1-32 ASCII letters, digits, `.`, `-` or `_`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// `POST /api/v1/admin/operators`: `vendctl user ...`, sealed with the
/// cluster key.
pub async fn admin_request(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = |status: StatusCode, reply: AdminReply| (status, axum::Json(reply)).into_response();
    let refuse = |status: StatusCode, message: String| {
        reply(
            status,
            AdminReply {
                message,
                ..AdminReply::default()
            },
        )
    };
    if body.len() > cluster::ADMIN_BODY_BYTES_MAX {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request is too large".into(),
        );
    }
    let time = headers
        .get(cluster::TIME_HEADER)
        .and_then(|v| v.to_str().ok());
    let opened = lock(&app.admin).open(time, &body, now_ms());
    let request = match opened {
        Ok(request) => request,
        Err(error @ cluster::AdminAuthError::Busy) => {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, error.to_string());
        }
        Err(error @ cluster::AdminAuthError::Malformed(_)) => {
            return refuse(StatusCode::BAD_REQUEST, error.to_string());
        }
        Err(error) => return refuse(StatusCode::UNAUTHORIZED, error.to_string()),
    };
    let action = match request {
        AdminRequest::ListUsers => {
            let users = app
                .projection()
                .operators
                .users
                .iter()
                .map(|(name, account)| UserLine {
                    name: name.clone(),
                    role: account.role,
                    disabled: account.disabled,
                    added_by: account.added_by.clone(),
                    added_at_ms: account.added_at_ms,
                })
                .collect();
            return reply(
                StatusCode::OK,
                AdminReply {
                    ok: true,
                    users,
                    ..AdminReply::default()
                },
            );
        }
        AdminRequest::AddUser {
            name,
            role,
            password_hash,
        } => {
            if !valid_name(&name) {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "a name has 1-32 ASCII letters, digits, '.', '-' or '_'".into(),
                );
            }
            if let Err(error) = ledger::admin::validate_hash(&password_hash) {
                return refuse(StatusCode::BAD_REQUEST, error.to_string());
            }
            crate::ports::OperatorAction::AddUser {
                name,
                role,
                password_hash,
            }
        }
        AdminRequest::DisableUser { name } => crate::ports::OperatorAction::DisableUser { name },
    };
    match actions::submit(&app, "vendctl", action).await {
        Ok(receipt) => reply(
            StatusCode::OK,
            AdminReply {
                ok: true,
                message: format!("recorded at gseq {}", receipt.gseq),
                gseq: Some(receipt.gseq),
                ..AdminReply::default()
            },
        ),
        Err(error) => {
            let (status, message) = actions::error_status(&error);
            let (primary, primary_dashboard) = match &error {
                crate::ports::ActionError::NotPrimary { primary } => (
                    primary.clone(),
                    app.primary().and_then(|(_, a)| a).map(|a| a.to_string()),
                ),
                _ => (None, None),
            };
            reply(
                status,
                AdminReply {
                    message,
                    primary,
                    primary_dashboard,
                    ..AdminReply::default()
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(safe_next("/machines/VM-001"), "/machines/VM-001");
        assert_eq!(safe_next("//evil.example/x"), "/");
        assert_eq!(safe_next("https://evil.example/"), "/");
        assert_eq!(safe_next("/\\evil"), "/");
        assert_eq!(safe_next(""), "/");
    }

    #[test]
    fn operator_names_are_plain() {
        assert!(valid_name("kim.admin-2"));
        assert!(!valid_name(""));
        assert!(!valid_name("kim lee"));
        assert!(!valid_name(&"a".repeat(33)));
        assert!(!valid_name("김"));
    }
}

//! The dashboard's shared state, its options, and the router that puts
//! the pages, the API, sessions and CSRF checks together.

use crate::alerts::{Alert, AlertThresholds, Onsets};
use crate::auth::cluster::AdminOpener;
use crate::auth::guard::LoginGuard;
use crate::auth::session::SessionKeys;
use crate::ports::{ReadPorts, Snapshot};
use crate::{actions, api, auth, chain, pages, sse};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{get, post};
use ledger::crypto::SecretKey;
use ledger::projection::Projection;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::{Semaphore, watch};

/// Largest request body accepted (forms and JSON are small).
pub const BODY_BYTES_MAX: usize = 16 * 1024;
/// Password verifications (argon2id, ~19 MiB each) running at once.
pub const VERIFICATIONS_MAX: usize = 4;
/// Live-update subscribers (SSE) held at once by default.
pub const SSE_SUBSCRIBERS_DEFAULT: usize = 100;

/// A certificate chain and its private key, PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

/// Another replica's dashboard, for links to the primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerDashboard {
    pub name: String,
    pub address: SocketAddr,
}

/// What a replica tells its dashboard besides the read ports.
#[derive(Clone)]
pub struct DashboardOptions {
    /// Signs sessions; derived from the cluster key by every replica alike
    /// ([`crate::auth::session::SESSION_KEY_CONTEXT`]).
    pub session_key: [u8; 32],
    /// Opens `vendctl user` requests ([`crate::auth::cluster::admin_key`]).
    pub admin_key: SecretKey,
    /// Serve HTTPS (and plain HTTP only for the status and admin APIs).
    pub tls: Option<TlsFiles>,
    pub thresholds: AlertThresholds,
    pub peers: Vec<PeerDashboard>,
    pub sse_subscribers_max: usize,
}

impl DashboardOptions {
    /// Options with fresh random keys (tests, and tools that serve one
    /// replica's pages alone).
    pub fn ephemeral() -> DashboardOptions {
        DashboardOptions {
            session_key: *SecretKey::generate().as_bytes(),
            admin_key: SecretKey::generate(),
            tls: None,
            thresholds: AlertThresholds::default(),
            peers: Vec::new(),
            sse_subscribers_max: SSE_SUBSCRIBERS_DEFAULT,
        }
    }
}

/// The alerts as last computed, for pages.
#[derive(Clone, Debug, Default)]
pub struct AlertBoard {
    pub alerts: Vec<Alert>,
    pub as_of_gseq: u64,
}

/// Everything handlers share.
pub struct App {
    pub ports: ReadPorts,
    pub options: DashboardOptions,
    pub keys: SessionKeys,
    pub guard: Mutex<LoginGuard>,
    pub admin: Mutex<AdminOpener>,
    pub verifications: Arc<Semaphore>,
    pub subscribers: Arc<Semaphore>,
    pub alerts: watch::Sender<Arc<AlertBoard>>,
    pub chain: watch::Sender<chain::ChainStatus>,
    pub peers_status: pages::replication::PeerCache,
}

pub type AppState = Arc<App>;

/// Locks a mutex whose critical sections cannot leave it inconsistent.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Wall-clock time in ms since the Unix epoch.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl App {
    pub fn new(ports: ReadPorts, options: DashboardOptions) -> AppState {
        Arc::new(App {
            keys: SessionKeys::new(&options.session_key),
            admin: Mutex::new(AdminOpener::new(&options.admin_key)),
            guard: Mutex::new(LoginGuard::default()),
            verifications: Arc::new(Semaphore::new(VERIFICATIONS_MAX)),
            subscribers: Arc::new(Semaphore::new(options.sse_subscribers_max.max(1))),
            alerts: watch::channel(Arc::new(AlertBoard::default())).0,
            chain: watch::channel(chain::ChainStatus::default()).0,
            peers_status: pages::replication::PeerCache::default(),
            ports,
            options,
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.ports.snapshot.borrow().clone()
    }

    pub fn projection(&self) -> Arc<Projection> {
        self.ports.projection.borrow().clone()
    }

    pub fn alert_board(&self) -> Arc<AlertBoard> {
        self.alerts.borrow().clone()
    }

    /// The primary's name and its dashboard's address, when this replica
    /// follows one it knows.
    pub fn primary(&self) -> Option<(String, Option<SocketAddr>)> {
        let snapshot = self.snapshot();
        if snapshot.role == crate::ports::Role::Primary {
            return None;
        }
        let leader = snapshot.status.leader.clone()?;
        let address = self
            .options
            .peers
            .iter()
            .find(|peer| peer.name == leader)
            .map(|peer| peer.address);
        Some((leader, address))
    }

    /// The primary's dashboard as a URL for a browser that reached this
    /// replica at `host` (used when the peer listens on every address).
    pub fn primary_url(&self, host: Option<&str>) -> Option<String> {
        let (_, address) = self.primary()?;
        let address = address?;
        let scheme = if self.options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let ip = if address.ip().is_unspecified() {
            let host = host?;
            // Strip this replica's port from the Host header.
            let name = match host.rsplit_once(':') {
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
                _ => host,
            };
            name.to_owned()
        } else {
            address.ip().to_string()
        };
        Some(format!("{scheme}://{ip}:{}", address.port()))
    }
}

/// Recomputes the alerts when the projection or the snapshot changes (at
/// most once a second for snapshot-only changes, so offline times move).
/// The walk over every machine runs on the blocking pool, not on the
/// threads that serve machines and pages, and the next one waits at least
/// `ALERTS_COST_FACTOR` times what it took: with 10,000 machines a walk
/// takes tens of milliseconds, and every half second on the I/O threads it
/// held machines' frames back.
pub async fn keep_alerts(app: AppState) {
    const ALERTS_COST_FACTOR: u32 = 10;
    let mut projection = app.ports.projection.clone();
    let mut onsets = Onsets::default();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let projection_now = projection.borrow_and_update().clone();
        let snapshot = app.snapshot();
        let thresholds = app.options.thresholds;
        let started = tokio::time::Instant::now();
        let walk = tokio::task::spawn_blocking(move || {
            let conditions =
                crate::alerts::compute(&projection_now, &snapshot, &thresholds, now_ms());
            onsets.observe(&conditions, projection_now.as_of_gseq);
            let alerts = crate::alerts::board(conditions, &onsets, &projection_now.operators);
            let board = AlertBoard {
                alerts,
                as_of_gseq: projection_now.as_of_gseq,
            };
            (board, onsets)
        });
        let Ok((board, kept)) = walk.await else {
            // The runtime is shutting down (or the walk panicked, which
            // `compute` never does on any projection): stop quietly.
            return;
        };
        onsets = kept;
        app.alerts.send_replace(Arc::new(board));
        tokio::time::sleep_until(started + started.elapsed() * ALERTS_COST_FACTOR).await;
        tokio::select! {
            changed = projection.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}

/// The whole dashboard: pages, API, live updates, logins.
pub fn router(app: AppState) -> Router {
    let csrf = from_fn_with_state(app.clone(), auth::check_csrf);
    let writes = Router::new()
        .route(
            "/machines/{id}/slots/{slot}/price",
            post(actions::price_form),
        )
        .route(
            "/machines/{id}/slots/{slot}/name",
            post(actions::rename_form),
        )
        .route(
            "/machines/{id}/tickets/{ticket}/settle",
            post(actions::settle_form),
        )
        .route("/fleet/price", post(actions::fleet_price_form))
        .route("/alerts/acknowledge", post(actions::acknowledge_form))
        .route(
            "/api/v1/machines/{id}/slots/{slot}/price",
            post(actions::price_json),
        )
        .route(
            "/api/v1/machines/{id}/slots/{slot}/name",
            post(actions::rename_json),
        )
        .route(
            "/api/v1/machines/{id}/tickets/{ticket}/settle",
            post(actions::settle_json),
        )
        .route("/api/v1/fleet/price", post(actions::fleet_price_json))
        .route(
            "/api/v1/alerts/acknowledge",
            post(actions::acknowledge_json),
        )
        .route_layer(csrf.clone())
        .route_layer(from_fn(auth::require_admin));
    let logout = Router::new()
        .route("/logout", post(auth::logout))
        .route_layer(csrf);
    let reads = Router::new()
        .route("/", get(pages::overview::page))
        .route("/machines/{id}", get(pages::machine::page))
        .route("/sales", get(pages::sales::page))
        .route("/reconciliation", get(pages::reconciliation::page))
        .route("/audit", get(pages::audit::page))
        .route("/replication", get(pages::replication::page))
        .route("/api/v1/session", get(api::session))
        .route("/api/v1/machines", get(api::machines))
        .route("/api/v1/machines.csv", get(api::machines_csv))
        .route("/api/v1/machines/{id}", get(api::machine))
        .route(
            "/api/v1/machines/{id}/slots.csv",
            get(api::machine_slots_csv),
        )
        .route("/api/v1/alerts", get(api::alerts))
        .route("/api/v1/alerts.csv", get(api::alerts_csv))
        .route("/api/v1/sales", get(api::sales))
        .route("/api/v1/sales.csv", get(api::sales_csv))
        .route("/api/v1/reconciliation", get(api::reconciliation))
        .route("/api/v1/reconciliation.csv", get(api::reconciliation_csv))
        .route("/api/v1/audit", get(api::audit))
        .route("/api/v1/audit.csv", get(api::audit_csv))
        .route("/api/v1/replication", get(api::replication))
        .route("/api/v1/replication.csv", get(api::replication_csv))
        .route("/api/v1/events", get(sse::events));
    let private = reads
        .merge(writes)
        .merge(logout)
        .route_layer(from_fn_with_state(app.clone(), auth::require_session));
    let public = Router::new()
        .route("/login", get(auth::login_form).post(auth::login))
        .route("/static/{file}", get(pages::assets::serve))
        .route("/api/v1/status", get(api::status))
        .route(crate::auth::cluster::ADMIN_PATH, post(auth::admin_request));
    public
        .merge(private)
        .fallback(api::not_found)
        .layer(from_fn_with_state(app.clone(), pages::errors::present))
        .layer(from_fn(auth::https_only))
        .layer(from_fn(pages::security_headers))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(app)
}

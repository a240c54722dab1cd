//! The replicas' HTTP surface: the operators' dashboard (pages, JSON API,
//! CSV exports, live updates over SSE, logins) and the status API that
//! `vendctl status` reads.
//!
//! This crate knows HTTP and the API's JSON types; it learns about a
//! replica only through its read ports ([`ports::ReadPorts`]), which never
//! wait on the replica's core. The map:
//!
//! * [`serve`] / [`serve_router`]: hyper's HTTP/1 builder within
//!   [`HttpLimits`] (connection cap via [`admission`], header-read and
//!   answer timeouts), plain HTTP and HTTPS ([`tls`]) on one port.
//! * [`app`]: shared state, options, the router.
//! * [`auth`]: logins, sessions every replica can check, roles, CSRF, the
//!   sealed `vendctl user` requests.
//! * [`pages`]: server-rendered pages (maud), one module per page, each
//!   with the model [`api`] also serves as JSON and CSV.
//! * [`alerts`], [`chain`], [`format`]: pure rules (alerts, the chain
//!   check, won and KST formatting).
//! * [`sse`]: live updates. [`actions`]: admins' changes.

pub mod actions;
pub mod admission;
pub mod alerts;
pub mod api;
pub mod app;
pub mod auth;
pub mod chain;
pub mod format;
pub mod pages;
pub mod ports;
pub mod sse;
pub mod tls;

pub use app::{DashboardOptions, PeerDashboard, TlsFiles};

use admission::{Admission, AdmissionLimits, Slot};
use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use ports::ReadPorts;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How long after the last datagram that failed authentication the status
/// still warns about the cluster key.
pub const CLUSTER_KEY_WARNING_MS: u64 = 10_000;

/// What a replica reports about itself (`GET /api/v1/status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The replica's name, e.g. `replica-1`.
    pub id: String,
    pub node_id: u8,
    /// `primary`, `candidate`, or while following: `sync`, `backup` or
    /// `follower`.
    pub role: String,
    pub epoch: u64,
    /// The primary this replica follows (its name), if known.
    pub leader: Option<String>,
    /// Last gseq in this replica's log.
    pub tip: u64,
    /// Last gseq this replica knows to be committed.
    pub commit: u64,
    /// Entries this replica is behind the primary (0 on the primary).
    pub lag: u64,
    /// On the primary: each follower's acknowledged position.
    pub followers: Vec<FollowerStatus>,
    pub naks_sent: u64,
    pub naks_received: u64,
    pub records_retransmitted: u64,
    pub datagrams_received: u64,
    /// Datagrams dropped before the protocol saw them, by reason
    /// (`unauthenticated`, `foreign_cluster`, `malformed`, ...).
    pub datagrams_rejected: Vec<(String, u64)>,
    /// Set while replication datagrams fail authentication (the last one
    /// within `CLUSTER_KEY_WARNING_MS`): most likely this replica's or a
    /// peer's cluster.key is not the cluster's, and they cannot hear each
    /// other. `None` otherwise.
    #[serde(default)]
    pub cluster_key_warning: Option<String>,
    pub datagrams_replayed: u64,
    pub datagrams_stale_epoch: u64,
    pub elections_started: u64,
    pub truncated_records: u64,
    pub machines_connected: usize,
    pub events_submitted: u64,
    pub events_duplicate: u64,
    pub events_rejected: u64,
    pub frames_rejected: u64,
    pub projection_entries: u64,
    pub projection_issues: u64,
    /// Writes and syncs of the log that failed since the replica started.
    pub storage_failures: u64,
    /// The last storage failure, while the log cannot be written (a full
    /// disk); `None` once writes succeed again.
    pub storage_error: Option<String>,
    /// Set while the replica repairs a damaged log from its peers: the
    /// gseq it had promised. Until then it does not stand or acknowledge,
    /// and votes only for a candidate whose log holds what it promised.
    pub repairing_until: Option<u64>,
    /// Entries through this gseq live in archive files, not in the live
    /// log (`[archive]`, `vendctl archive`); `None` while nothing is.
    #[serde(default)]
    pub archived_through: Option<u64>,
    pub transport: String,
    pub pid: u32,
    pub uptime_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowerStatus {
    pub id: String,
    pub matched: u64,
    pub lag: u64,
}

/// How one connection reached the dashboard; every request carries it.
#[derive(Clone, Debug)]
pub struct Connection {
    pub peer: SocketAddr,
    /// Served over TLS.
    pub https: bool,
    /// This server has a certificate (plain HTTP then redirects pages).
    pub tls_configured: bool,
    /// Closes the connection (a live-update client that stopped reading).
    pub close: Arc<Notify>,
}

impl Default for Connection {
    fn default() -> Self {
        Connection {
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            https: false,
            tls_configured: false,
            close: Arc::new(Notify::new()),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Connection {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Connection>()
            .cloned()
            .unwrap_or_default())
    }
}

/// Most status-port connections held at once (see [`admission`]); a
/// replica holds fewer when its descriptor limit is low.
pub const HTTP_CONNECTIONS_MAX: usize = 256;
/// A request head must arrive whole within this of the connection opening
/// (or of the previous response on a kept-alive connection). hyper arms
/// it when it starts reading a head and bytes trickling in do not move
/// it, so slow clients cannot hold a connection. Real clients send a head
/// in one packet.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A request must be answered within this once its head has arrived (the
/// handler, including reading any body); otherwise 408 and the connection
/// closes.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// After shutdown, requests being answered get this long to finish; then
/// every connection still open (a slow client in the middle of a head) is
/// closed.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The bounds on the status port's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections held at once. At the limit the oldest connection that
    /// is not being answered gives way to a new one (see [`admission`]).
    pub connections_max: usize,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            connections_max: HTTP_CONNECTIONS_MAX,
            header_read_timeout: HEADER_READ_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

/// Serves the dashboard on `listener` within `limits` until `shutdown`
/// completes, then lets requests in progress finish (for at most
/// [`SHUTDOWN_GRACE`]). With `options.tls`, HTTPS too (see [`tls`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    ports: ReadPorts,
    limits: HttpLimits,
    options: DashboardOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = match &options.tls {
        Some(files) => Some(tls::acceptor(files).map_err(std::io::Error::other)?),
        None => None,
    };
    let app = app::App::new(ports, options);
    // Background work that lives as long as the server.
    let mut background = tokio::task::JoinSet::new();
    background.spawn(app::keep_alerts(app.clone()));
    background.spawn(chain::keep_checking(app.clone()));
    let served = serve_router(listener, app::router(app), limits, tls, shutdown).await;
    background.shutdown().await;
    served
}

/// Serves any router the way [`serve`] serves the dashboard: HTTP/1.1
/// through hyper, one task per connection, at most
/// `limits.connections_max` connections (admitted without waiting, see
/// [`admission`]), each head within `header_read_timeout` and each answer
/// within `request_timeout` (a streamed body, such as live updates, only
/// has to start in time).
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: HttpLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let admission = Admission::new(
        "status",
        AdmissionLimits {
            connections_max: limits.connections_max,
            exposed_max: limits.connections_max,
        },
    );
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let graceful = GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    admission.accept_failed(&error).await;
                    continue;
                }
            },
        };
        // Refused (every connection is being answered): closed at once.
        let Some(slot) = admission.admit() else {
            continue;
        };
        let connection = Connection {
            peer,
            https: false,
            tls_configured: tls.is_some(),
            close: Arc::new(Notify::new()),
        };
        connections.spawn(serve_connection(
            stream,
            connection,
            Arc::new(slot),
            router.clone(),
            builder.clone(),
            limits,
            tls.clone(),
            graceful.watcher(),
        ));
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    connections.shutdown().await;
    Ok(())
}

/// One connection: TLS when it opens with a handshake and a certificate is
/// configured, plain HTTP otherwise; closed when evicted or asked to.
#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    stream: tokio::net::TcpStream,
    mut connection: Connection,
    slot: Arc<Slot>,
    router: Router,
    builder: hyper::server::conn::http1::Builder,
    limits: HttpLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    graceful: hyper_util::server::graceful::Watcher,
) {
    let close = connection.close.clone();
    let handshake = async {
        let Some(acceptor) = tls else {
            return Some(Io::Plain(stream));
        };
        let mut first = [0u8; 1];
        // A client that sends nothing is cut like a slow request head.
        let peeked =
            tokio::time::timeout(limits.header_read_timeout, stream.peek(&mut first)).await;
        match peeked {
            Ok(Ok(1)) if first[0] == tls::TLS_HANDSHAKE_RECORD => {
                let accepted =
                    tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await;
                match accepted {
                    Ok(Ok(stream)) => Some(Io::Tls(Box::new(stream))),
                    _ => None,
                }
            }
            Ok(Ok(_)) => Some(Io::Plain(stream)),
            _ => None,
        }
    };
    let io = tokio::select! {
        io = handshake => io,
        () = slot.evicted() => None,
    };
    let Some(io) = io else { return };
    connection.https = matches!(io, Io::Tls(_));
    let service = answer_within(router, slot.clone(), limits.request_timeout, connection);
    let served = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
    tokio::select! {
        // Errors are the client's (a timeout, a reset, a bad head).
        _ = served => {}
        () = slot.evicted() => {}
        () = close.notified() => {}
    }
}

/// A connection's byte stream, plain or TLS.
enum Io {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl tokio::io::AsyncRead for Io {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Io {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Whether an answer streams for long (live updates).
fn is_stream(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// Exposes the slot again when a streamed body ends.
struct ExposeOnDrop(Arc<Slot>);

impl Drop for ExposeOnDrop {
    fn drop(&mut self) {
        self.0.expose();
    }
}

/// The router as a hyper service whose every answer starts within
/// `timeout`, and whose connection is protected from eviction while a
/// request is being answered (a live-update stream: while it streams;
/// their number is bounded separately).
fn answer_within(
    router: Router,
    slot: Arc<Slot>,
    timeout: Duration,
    connection: Connection,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = Response,
    Error = Infallible,
    Future = impl Future<Output = Result<Response, Infallible>> + Send,
> + Clone {
    let router = TowerToHyperService::new(router);
    hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(connection.clone());
        let answer = hyper::service::Service::call(&router, request);
        let slot = slot.clone();
        async move {
            slot.protect();
            let answered = tokio::time::timeout(timeout, answer).await;
            Ok(match answered {
                Ok(Ok(response)) if is_stream(&response) => {
                    let guard = ExposeOnDrop(slot);
                    let (parts, body) = response.into_parts();
                    let body = body.into_data_stream().map(move |chunk| {
                        let _streaming = &guard;
                        chunk
                    });
                    Response::from_parts(parts, axum::body::Body::from_stream(body))
                }
                Ok(Ok(response)) => {
                    slot.expose();
                    response
                }
                Ok(Err(never)) => match never {},
                Err(_) => {
                    slot.expose();
                    let mut response =
                        (StatusCode::REQUEST_TIMEOUT, "request timed out\n").into_response();
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    response
                }
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use ports::{LogEntryView, LogReader, ReadError, Snapshot};
    use std::sync::Arc;

    struct NoLog;

    impl LogReader for NoLog {
        fn entries(&self, _: u64, _: u64) -> Result<Vec<LogEntryView>, ReadError> {
            Ok(Vec::new())
        }
    }

    /// Read ports over a fixed snapshot; the sender keeps it alive.
    fn ports(status: ReplicaStatus) -> (ReadPorts, tokio::sync::watch::Sender<Arc<Snapshot>>) {
        let (publish, snapshot) = tokio::sync::watch::channel(Arc::new(Snapshot {
            status,
            ..Snapshot::default()
        }));
        let (actions, _) = tokio::sync::mpsc::channel(1);
        let ports = ReadPorts {
            snapshot,
            projection: tokio::sync::watch::channel(Arc::default()).1,
            log: Arc::new(NoLog),
            committed: tokio::sync::broadcast::channel(4).0,
            actions,
        };
        (ports, publish)
    }

    async fn start(ports: ReadPorts) -> (String, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(
            listener,
            ports,
            HttpLimits::default(),
            DashboardOptions::ephemeral(),
            async {
                let _ = stopped.await;
            },
        ));
        (format!("http://{address}"), stop)
    }

    fn get_text(url: String) -> Result<String, ureq::Error> {
        ureq::get(&url).call()?.body_mut().read_to_string()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_the_newest_published_status_as_json() {
        let status = ReplicaStatus {
            id: "replica-2".into(),
            role: "sync".into(),
            epoch: 4,
            tip: 10,
            commit: 9,
            ..ReplicaStatus::default()
        };
        let (ports, publish) = ports(status.clone());
        let (base, stop) = start(ports).await;
        let url = format!("{base}/api/v1/status");
        let first = tokio::task::spawn_blocking({
            let url = url.clone();
            move || get_text(url).unwrap()
        })
        .await
        .unwrap();
        assert_eq!(
            serde_json::from_str::<ReplicaStatus>(&first).unwrap(),
            status
        );
        // A newer snapshot is what the next request sees.
        let newer = ReplicaStatus { tip: 11, ..status };
        publish.send_replace(Arc::new(Snapshot {
            status: newer.clone(),
            ..Snapshot::default()
        }));
        let (second, missing) = tokio::task::spawn_blocking(move || {
            (
                get_text(url).unwrap(),
                get_text(format!("{base}/nope")).is_err(),
            )
        })
        .await
        .unwrap();
        assert_eq!(
            serde_json::from_str::<ReplicaStatus>(&second).unwrap(),
            newer
        );
        assert!(missing, "unknown paths are 404");
        let _ = stop.send(());
    }

    /// A router with a fast route and one that never answers in time.
    fn test_router() -> Router {
        Router::new()
            .route("/fast", get(|| async { "fast" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "slow"
                }),
            )
    }

    /// Serves `test_router` within `limits`; the handle completes once the
    /// server has shut down.
    async fn start_limited(
        limits: HttpLimits,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_router(listener, test_router(), limits, None, async {
            let _ = stopped.await;
        }));
        (address, stop, server)
    }

    /// Sends a whole request and returns the whole response.
    async fn request(address: std::net::SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let head = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    /// Reads until the server closes the connection; what it sent.
    async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut all = Vec::new();
        let mut chunk = [0u8; 1_024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return all,
                Ok(n) => all.extend_from_slice(&chunk[..n]),
            }
        }
    }

    const SHORT: HttpLimits = HttpLimits {
        connections_max: 8,
        header_read_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(200),
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_trickled_request_head_is_cut_at_the_header_read_timeout() {
        use tokio::io::AsyncWriteExt;
        let (address, stop, server) = start_limited(SHORT).await;
        // Before connecting: the server's timer starts once it accepts.
        let started = std::time::Instant::now();
        let mut slow = tokio::net::TcpStream::connect(address).await.unwrap();
        slow.write_all(b"GET /fast HTTP/1.1\r\nHost: t")
            .await
            .unwrap();
        // One byte every 50 ms: the deadline is not moved by bytes.
        let (mut reading, mut writing) = slow.into_split();
        let trickle = tokio::spawn(async move {
            for _ in 0..40 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if writing.write_all(b"x").await.is_err() {
                    return;
                }
            }
        });
        let mut chunk = [0u8; 64];
        let read = tokio::io::AsyncReadExt::read(&mut reading, &mut chunk).await;
        let closed_after = started.elapsed();
        assert!(matches!(read, Ok(0) | Err(_)), "closed without an answer");
        assert!(
            closed_after >= SHORT.header_read_timeout
                && closed_after < SHORT.header_read_timeout + Duration::from_millis(1_000),
            "closed after {closed_after:?}"
        );
        trickle.abort();
        // A whole request is still answered.
        assert!(request(address, "/fast").await.ends_with("fast"));
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_not_answered_in_time_gets_408() {
        let (address, stop, server) = start_limited(SHORT).await;
        let started = std::time::Instant::now();
        let response = request(address, "/slow").await;
        assert!(response.starts_with("HTTP/1.1 408"), "{response}");
        assert!(started.elapsed() < Duration::from_secs(2));
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_the_cap_the_oldest_slow_connection_gives_way() {
        use tokio::io::AsyncWriteExt;
        let limits = HttpLimits {
            connections_max: 3,
            header_read_timeout: Duration::from_secs(30),
            ..SHORT
        };
        let (address, stop, server) = start_limited(limits).await;
        let mut slow = Vec::new();
        for _ in 0..3 {
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            stream.write_all(b"GET /fa").await.unwrap();
            slow.push(stream);
            // Admitted in this order (the accept loop is sequential).
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Every slot is taken by a slow client, yet a real one is answered
        // at once, and the oldest slow client was closed for it.
        let answered = tokio::time::timeout(Duration::from_secs(2), request(address, "/fast"))
            .await
            .expect("answered without waiting for the slow clients");
        assert!(answered.ends_with("fast"), "{answered}");
        let oldest = tokio::time::timeout(Duration::from_secs(2), read_until_closed(&mut slow[0]))
            .await
            .expect("the oldest slow connection is closed");
        assert!(oldest.is_empty());
        // Shutting down does not wait for the slow ones' 30 s timeout.
        let _ = stop.send(());
        tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(2), server)
            .await
            .expect("shut down")
            .unwrap()
            .unwrap();
    }
}

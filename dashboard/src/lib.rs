//! The replicas' HTTP surface. So far: the JSON status API under `/api/v1`
//! that `vendctl status` and operators' scripts read (the pages, SSE and
//! logins of the dashboard issue build on this router).
//!
//! This crate knows HTTP and the API's JSON types; it learns about a
//! replica only through [`StatusSource`].

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;

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

/// Where the API gets its data. Implementations may block briefly (they
/// are called on a blocking thread).
pub trait StatusSource: Send + Sync + 'static {
    fn status(&self) -> Result<ReplicaStatus, String>;
}

/// The API router.
pub fn router(source: Arc<dyn StatusSource>) -> Router {
    Router::new()
        .route("/api/v1/status", get(status))
        .with_state(source)
}

async fn status(State(source): State<Arc<dyn StatusSource>>) -> Response {
    let result = tokio::task::spawn_blocking(move || source.status()).await;
    match result {
        Ok(Ok(status)) => axum::Json(status).into_response(),
        Ok(Err(problem)) => (StatusCode::SERVICE_UNAVAILABLE, problem).into_response(),
        Err(join) => (StatusCode::INTERNAL_SERVER_ERROR, join.to_string()).into_response(),
    }
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    source: Arc<dyn StatusSource>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(source))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(ReplicaStatus);

    impl StatusSource for Fixed {
        fn status(&self) -> Result<ReplicaStatus, String> {
            Ok(self.0.clone())
        }
    }

    struct Down;

    impl StatusSource for Down {
        fn status(&self) -> Result<ReplicaStatus, String> {
            Err("replica core not answering".into())
        }
    }

    async fn start(source: Arc<dyn StatusSource>) -> (String, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, source, async {
            let _ = stopped.await;
        }));
        (format!("http://{address}"), stop)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_status_as_json_and_errors_as_503() {
        let status = ReplicaStatus {
            id: "replica-2".into(),
            role: "sync".into(),
            epoch: 4,
            tip: 10,
            commit: 9,
            ..ReplicaStatus::default()
        };
        let (base, stop) = start(Arc::new(Fixed(status.clone()))).await;
        let fetched = tokio::task::spawn_blocking(move || {
            let mut response = ureq::get(&format!("{base}/api/v1/status")).call().unwrap();
            let body = response.body_mut().read_to_string().unwrap();
            let missing = ureq::get(&format!("{base}/nope")).call();
            (body, missing.is_err())
        })
        .await
        .unwrap();
        assert_eq!(
            serde_json::from_str::<ReplicaStatus>(&fetched.0).unwrap(),
            status
        );
        assert!(fetched.1, "unknown paths are 404");
        let _ = stop.send(());

        let (base, stop) = start(Arc::new(Down)).await;
        let code = tokio::task::spawn_blocking(move || {
            match ureq::get(&format!("{base}/api/v1/status")).call() {
                Err(ureq::Error::StatusCode(code)) => code,
                other => panic!("expected an error status, got {other:?}"),
            }
        })
        .await
        .unwrap();
        assert_eq!(code, 503);
        let _ = stop.send(());
    }
}

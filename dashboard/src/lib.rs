//! The replicas' HTTP surface. So far: the JSON status API under `/api/v1`
//! that `vendctl status` and operators' scripts read (the pages, SSE and
//! logins of the dashboard issue build on this router).
//!
//! This crate knows HTTP and the API's JSON types; it learns about a
//! replica only through its read ports ([`ports::ReadPorts`]), which never
//! wait on the replica's core.

pub mod ports;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ports::ReadPorts;
use serde::{Deserialize, Serialize};
use std::future::Future;

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

/// The API router, reading the replica only through its [`ReadPorts`].
pub fn router(ports: ReadPorts) -> Router {
    Router::new()
        .route("/api/v1/status", get(status))
        .with_state(ports)
}

/// The newest published status: never waits on the replica's core.
async fn status(State(ports): State<ReadPorts>) -> Response {
    let snapshot = ports.snapshot.borrow().clone();
    axum::Json(snapshot.status.clone()).into_response()
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ports: ReadPorts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(ports))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
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
        tokio::spawn(serve(listener, ports, async {
            let _ = stopped.await;
        }));
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
}

//! Replication: this replica's role, epoch, tip, commit, lag and repair
//! counters, and the same for its peers (asked over their status API,
//! with a short timeout, at most every few seconds).

use super::{Section, Viewer};
use crate::ReplicaStatus;
use crate::app::{AppState, lock};
use crate::format;
use axum::extract::State;
use axum::response::Html;
use maud::{Markup, html};
use serde::Serialize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A peer's status is asked for at most this often.
const PEER_REFRESH: Duration = Duration::from_secs(2);
/// How long a peer has to answer.
const PEER_TIMEOUT: Duration = Duration::from_millis(700);

#[derive(Clone, Debug, Serialize)]
pub struct PeerStatus {
    pub name: String,
    pub address: String,
    pub reachable: bool,
    pub status: Option<ReplicaStatus>,
    pub error: Option<String>,
}

#[derive(Default)]
pub struct PeerCache(Mutex<Option<(Instant, Vec<PeerStatus>)>>);

#[derive(Clone, Debug, Serialize)]
pub struct Replication {
    pub replica: ReplicaStatus,
    pub peers: Vec<PeerStatus>,
}

fn fetch(name: String, address: std::net::SocketAddr) -> PeerStatus {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(PEER_TIMEOUT))
        .build()
        .into();
    let answer = agent
        .get(&format!("http://{address}/api/v1/status"))
        .call()
        .and_then(|mut response| {
            response
                .body_mut()
                .with_config()
                .limit(256 * 1024)
                .read_to_string()
        })
        .map_err(|e| e.to_string())
        .and_then(|body| serde_json::from_str::<ReplicaStatus>(&body).map_err(|e| e.to_string()));
    match answer {
        Ok(status) => PeerStatus {
            name,
            address: address.to_string(),
            reachable: true,
            status: Some(status),
            error: None,
        },
        Err(error) => PeerStatus {
            name,
            address: address.to_string(),
            reachable: false,
            status: None,
            error: Some(error),
        },
    }
}

async fn peers(app: &AppState) -> Vec<PeerStatus> {
    if let Some((at, peers)) = lock(&app.peers_status.0).as_ref()
        && at.elapsed() < PEER_REFRESH
    {
        return peers.clone();
    }
    let mut asked = Vec::new();
    for peer in &app.options.peers {
        let (name, address) = (peer.name.clone(), peer.address);
        asked.push(tokio::task::spawn_blocking(move || fetch(name, address)));
    }
    let mut peers = Vec::new();
    for answer in asked {
        if let Ok(status) = answer.await {
            peers.push(status);
        }
    }
    *lock(&app.peers_status.0) = Some((Instant::now(), peers.clone()));
    peers
}

pub async fn model(app: &AppState) -> Replication {
    Replication {
        replica: app.snapshot().status.clone(),
        peers: peers(app).await,
    }
}

pub async fn page(State(app): State<AppState>, viewer: Viewer) -> Html<String> {
    let replication = model(&app).await;
    let mut rows: Vec<(String, Option<&ReplicaStatus>, Option<&str>)> = vec![(
        replication.replica.id.clone(),
        Some(&replication.replica),
        None,
    )];
    for peer in &replication.peers {
        rows.push((
            peer.name.clone(),
            peer.status.as_ref(),
            peer.error.as_deref(),
        ));
    }
    let body = html! {
        h1 { "Replication" }
        p.sub { "Each replica as it reports itself. An entry is committed once the primary and one follower hold it." }
        section.panel {
            div.exports { h2 { "Replicas" } "Export" a href="/api/v1/replication.csv" { "CSV" } a href="/api/v1/replication" { "JSON" } }
            (replica_table(&rows))
        }
        div.grid2 {
            section.panel {
                h2 { "Datagrams rejected by " (replication.replica.id) }
                @if replication.replica.datagrams_rejected.is_empty() {
                    p.muted { "None." }
                } @else {
                    table {
                        thead { tr { th { "Reason" } th.num { "Datagrams" } } }
                        tbody { @for (reason, count) in &replication.replica.datagrams_rejected { tr { td { (reason.replace('_', " ")) } td.num { (format::count(*count)) } } } }
                    }
                }
            }
            section.panel {
                h2 { "Followers (as the primary sees them)" }
                @if replication.replica.followers.is_empty() {
                    p.muted { "Only the primary tracks its followers." }
                } @else {
                    table {
                        thead { tr { th { "Follower" } th.num { "Acknowledged" } th.num { "Lag" } } }
                        tbody { @for f in &replication.replica.followers { tr { td { (f.id) } td.num { (format::count(f.matched)) } td.num { (format::count(f.lag)) } } } }
                    }
                }
            }
        }
    };
    super::layout(
        &app,
        Some(&viewer.operator),
        viewer.host(),
        Section::Replication,
        "Replication",
        body,
    )
}

fn replica_table(rows: &[(String, Option<&ReplicaStatus>, Option<&str>)]) -> Markup {
    html! {
        table {
            thead { tr {
                th { "Replica" } th { "Role" } th.num { "Epoch" } th.num { "Tip" } th.num { "Commit" } th.num { "Lag" }
                th.num { "NAKs sent/received" } th.num { "Retransmitted" } th.num { "Rejected" } th.num { "Machines" } th { "Storage" }
            } }
            tbody {
                @for (name, status, error) in rows {
                    tr {
                        td { strong { (name) } }
                        @match status {
                            Some(s) => {
                                td { span class={"role role-" (s.role)} { (s.role) } }
                                td.num { (s.epoch) }
                                td.num { (format::count(s.tip)) }
                                td.num { (format::count(s.commit)) }
                                td.num { (format::count(s.lag)) }
                                td.num { (format::count(s.naks_sent)) " / " (format::count(s.naks_received)) }
                                td.num { (format::count(s.records_retransmitted)) }
                                td.num { (format::count(s.datagrams_rejected.iter().map(|(_, n)| n).sum())) }
                                td.num { (s.machines_connected) }
                                td {
                                    @match (&s.storage_error, s.repairing_until) {
                                        (Some(e), _) => span.pill.bad title=(e) { "failing" },
                                        (None, Some(until)) => span.pill.warn { "repairing to " (until) },
                                        (None, None) => span.pill.ok { "ok" },
                                    }
                                    @if let Some(through) = s.archived_through {
                                        " " span.muted title="older entries are read from the replica's archive files" {
                                            "archived through " (format::count(through))
                                        }
                                    }
                                }
                            }
                            None => {
                                td { span.pill.bad { "down" } }
                                td colspan="9" .muted { (error.unwrap_or("not reachable")) }
                            }
                        }
                    }
                }
            }
        }
    }
}

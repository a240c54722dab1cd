//! Live updates: `GET /api/v1/events`, Server-Sent Events of committed
//! log entries. Each event's id is its gseq.
//!
//! A subscriber that comes back with `Last-Event-ID` first gets what it
//! missed, read from the log up to the committed tip; then it follows the
//! live feed. The switch cannot lose or repeat anything: entries at or
//! below the last one sent are skipped, and whenever the live feed is
//! ahead of the last one sent (the snapshot's commit trails the feed a
//! little, or entries were committed while the log was being read), the
//! gap is read from the log first. Every entry the feed carries is
//! committed, so the log holds it.
//!
//! Bounds: at most `sse_subscribers_max` subscribers (more get 503); a
//! subscriber that falls more than the feed's capacity behind is dropped
//! (the stream ends, the browser reconnects and resumes from the log); a
//! client that stops reading for `STALL_LIMIT` has its connection closed,
//! so it cannot hold a slot.

use crate::Connection;
use crate::app::{AppState, now_ms};
use crate::pages::errors::Problem;
use crate::ports::{LogEntryView, READ_ENTRIES_MAX, ReadError};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::broadcast;

/// A comment is sent when nothing else was for this long.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// A client that has not taken anything for this long (three keep-alives)
/// is disconnected.
pub const STALL_LIMIT: Duration = Duration::from_secs(45);

/// One subscriber's position.
struct Feed {
    app: AppState,
    /// The last gseq sent.
    last: u64,
    /// Committed entries up to here are to be sent (read from the log).
    target: u64,
    pending: VecDeque<LogEntryView>,
    live: Option<broadcast::Receiver<crate::ports::CommittedEntry>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

fn event(entry: &LogEntryView) -> Event {
    let data = serde_json::to_string(entry).unwrap_or_else(|_| "{}".to_owned());
    Event::default()
        .id(entry.gseq.to_string())
        .event("entry")
        .data(data)
}

/// Reads `from..=to` from the log off the async threads.
async fn read_log(app: &AppState, from: u64, to: u64) -> Result<Vec<LogEntryView>, ReadError> {
    let log = app.ports.log.clone();
    tokio::task::spawn_blocking(move || log.entries(from, to))
        .await
        .unwrap_or_else(|_| Err(ReadError::Storage("the log reader stopped".into())))
}

/// The next event for this subscriber, or `None` to end the stream.
async fn next(mut feed: Feed) -> Option<(Result<Event, Infallible>, Feed)> {
    loop {
        if let Some(entry) = feed.pending.pop_front() {
            if entry.gseq <= feed.last {
                continue;
            }
            debug_assert_eq!(entry.gseq, feed.last + 1, "no gap is ever sent");
            feed.last = entry.gseq;
            return Some((Ok(event(&entry)), feed));
        }
        if feed.last < feed.target {
            let to = feed.target.min(feed.last + READ_ENTRIES_MAX as u64);
            match read_log(&feed.app, feed.last + 1, to).await {
                Ok(entries) if entries.first().is_some_and(|e| e.gseq == feed.last + 1) => {
                    feed.pending.extend(entries);
                    continue;
                }
                Ok(_) | Err(_) => return None,
            }
        }
        let Some(live) = feed.live.as_mut() else {
            // Caught up with the log: follow the feed from here on (what
            // was committed meanwhile is read from the log above).
            feed.live = Some(feed.app.ports.committed.subscribe());
            feed.target = feed.target.max(feed.app.snapshot().status.commit);
            continue;
        };
        match live.recv().await {
            Ok(entry) if entry.gseq == feed.last + 1 => feed.pending.push_back((*entry).clone()),
            Ok(entry) if entry.gseq > feed.last + 1 => feed.target = entry.gseq,
            Ok(_) => {}
            // Too far behind, or the replica is stopping: end; the browser
            // reconnects and resumes from the log.
            Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => {
                return None;
            }
        }
    }
}

/// Where a subscriber starts: after `Last-Event-ID` if it sent one, else
/// at the committed tip (only new entries).
fn start_after(headers: &HeaderMap, commit: u64) -> Result<u64, Problem> {
    match headers.get("last-event-id") {
        None => Ok(commit),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| Problem::new(StatusCode::BAD_REQUEST, "Last-Event-ID must be a gseq")),
    }
}

/// Closes the connection of a client that stopped reading.
fn watch_for_stalls(polled: &Arc<AtomicI64>, connection: &Connection) {
    let polled = Arc::downgrade(polled);
    let close = connection.close.clone();
    tokio::spawn(async move {
        let limit_ms = i64::try_from(STALL_LIMIT.as_millis()).unwrap_or(i64::MAX);
        loop {
            tokio::time::sleep(KEEP_ALIVE / 3).await;
            let Some(polled) = polled.upgrade() else {
                return;
            };
            if now_ms() - polled.load(Ordering::Relaxed) > limit_ms {
                tracing::info!("closing a live-update connection whose client stopped reading");
                close.notify_one();
                return;
            }
        }
    });
}

pub async fn events(
    State(app): State<AppState>,
    connection: Connection,
    headers: HeaderMap,
) -> Response {
    let Ok(permit) = app.subscribers.clone().try_acquire_owned() else {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live-update subscribers on this replica; try again later",
        )
        .into_response();
    };
    let commit = app.snapshot().status.commit;
    let last = match start_after(&headers, commit) {
        Ok(last) => last,
        Err(problem) => return problem.into_response(),
    };
    let feed = Feed {
        app,
        last,
        target: commit,
        pending: VecDeque::new(),
        live: None,
        _permit: permit,
    };
    let polled = Arc::new(AtomicI64::new(now_ms()));
    watch_for_stalls(&polled, &connection);
    let mut inner = Box::pin(futures_util::stream::unfold(feed, next));
    let stream = futures_util::stream::poll_fn(move |cx| {
        polled.store(now_ms(), Ordering::Relaxed);
        inner.poll_next_unpin(cx)
    });
    sse_response(stream)
}

fn sse_response(
    stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> Response {
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response();
    // Proxies must not buffer the stream.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{App, DashboardOptions};
    use crate::ports::{EntryKind, LogReader, ReadPorts, Snapshot};
    use std::sync::Mutex;

    struct Log(Mutex<Vec<LogEntryView>>);

    impl LogReader for Log {
        fn entries(&self, from: u64, to: u64) -> Result<Vec<LogEntryView>, ReadError> {
            let entries = self.0.lock().unwrap();
            Ok(entries
                .iter()
                .filter(|e| (from..=to).contains(&e.gseq))
                .cloned()
                .collect())
        }
    }

    fn entry(gseq: u64) -> LogEntryView {
        LogEntryView {
            gseq,
            epoch: 1,
            logged_ms: 0,
            hash: String::new(),
            prev_hash: String::new(),
            kind: EntryKind::EpochStarted {
                primary: "replica-1".into(),
            },
        }
    }

    fn gseq_of(event: Event) -> u64 {
        // The id line of the rendered event.
        let text = format!("{event:?}");
        let start = text.find("id: ").expect("an id") + 4;
        text[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    }

    /// The feed repeats entries the log already gave, skips some, and the
    /// snapshot's commit trails it: the subscriber still gets each entry
    /// once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_switch_from_the_log_to_the_live_feed_loses_and_repeats_nothing() {
        let log = Arc::new(Log(Mutex::new((1..=10).map(entry).collect())));
        let mut snapshot = Snapshot::default();
        snapshot.status.commit = 5;
        let (_publish, snapshot) = tokio::sync::watch::channel(Arc::new(snapshot));
        let committed = broadcast::channel(16).0;
        let ports = ReadPorts {
            snapshot,
            projection: tokio::sync::watch::channel(Arc::default()).1,
            log,
            committed: committed.clone(),
            actions: tokio::sync::mpsc::channel(1).0,
        };
        let app = App::new(ports, DashboardOptions::ephemeral());
        let feed = Feed {
            last: 2,
            target: 5,
            pending: VecDeque::new(),
            live: None,
            _permit: app.subscribers.clone().try_acquire_owned().unwrap(),
            app,
        };
        let mut stream = Box::pin(futures_util::stream::unfold(feed, next));
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(gseq_of(stream.next().await.unwrap().unwrap()));
        }
        // Caught up with the log (3..=5); the next call subscribes and waits.
        let waiting = tokio::spawn(async move {
            let mut more = Vec::new();
            for _ in 0..5 {
                more.push(gseq_of(stream.next().await.unwrap().unwrap()));
            }
            more
        });
        while committed.receiver_count() == 0 {
            tokio::task::yield_now().await;
        }
        for gseq in [4, 5, 6, 8, 9, 10] {
            committed.send(Arc::new(entry(gseq))).unwrap();
        }
        seen.extend(waiting.await.unwrap());
        assert_eq!(seen, (3..=10).collect::<Vec<_>>());
    }
}

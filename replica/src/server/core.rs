//! The core thread: drives the replica's [`Round`] with what the network
//! delivered, and carries out what each round releases. It is the only
//! thread that touches the ledger for writing; RocksDB writes are
//! synchronous, so a round is simply: take the queued inputs, tick, seal,
//! fsync, send.

use super::status::Publisher;
use super::{ReceiveDrops, SessionWriter};
use crate::config::ReplicaConfig;
use crate::ingest::SessionId;
use crate::node::Target;
use crate::round::{Input, Outgoing, Refusal, RequestId, Round};
use crate::transport::DatagramSender;
use dashboard::ports::{ActionError, ActionReceipt, OperatorRequest};
use ledger::keys::Keyring;
use ledger::store::rocks::RocksBackend;
use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Inputs waiting for the core, at most; beyond it datagrams are dropped
/// (and repaired by NAKs) and new connections refused.
pub const INPUT_QUEUE_MAX: usize = 16_384;
/// Inputs handled per round before time is checked again.
pub const INPUTS_PER_ROUND_MAX: usize = 4_096;
/// The core's clock resolution.
const TICK_MS: u64 = 5;
/// A round that takes longer than this is reported (with where its time
/// went), so stalls under load can be told apart: handling inputs, the
/// RocksDB writes of `seal`, the fsync, or sending.
const ROUND_SLOW_MS: u128 = 25;
/// At most one slow-round report per this many milliseconds; the rounds in
/// between are counted in the next report.
const SLOW_ROUND_REPORT_EVERY_MS: u64 = 1_000;

/// Where a round's time went, in microseconds.
#[derive(Default)]
struct RoundTimes {
    inputs: usize,
    handle_us: u128,
    seal_us: u128,
    sync_us: u128,
    deliver_us: u128,
    /// CPU time the core thread used in the round (user and system): a
    /// slow round with little of it waited (for a core, or a disk).
    cpu_us: u128,
}

/// CPU time the calling thread has used, in microseconds (0 if the clock
/// cannot be read).
fn thread_cpu_us() -> u128 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the call.
    let read = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if read != 0 {
        return 0;
    }
    u128::try_from(now.tv_sec).unwrap_or(0) * 1_000_000
        + u128::try_from(now.tv_nsec).unwrap_or(0) / 1_000
}

/// Reports slow rounds, rate-limited.
#[derive(Default)]
pub(super) struct SlowRounds {
    reported_at_ms: Option<u64>,
    unreported: u64,
}

impl SlowRounds {
    /// Counts the round if it was slow and reports when due; returns how
    /// many slow rounds the report covered (0: none made).
    fn observe(&mut self, times: &RoundTimes, now_ms: u64) -> u64 {
        let total_us = times.handle_us + times.seal_us + times.sync_us + times.deliver_us;
        if total_us < ROUND_SLOW_MS * 1_000 {
            return 0;
        }
        self.unreported += 1;
        if self
            .reported_at_ms
            .is_some_and(|at| now_ms < at + SLOW_ROUND_REPORT_EVERY_MS)
        {
            return 0;
        }
        tracing::info!(
            total_ms = total_us / 1_000,
            inputs = times.inputs,
            handle_ms = times.handle_us / 1_000,
            seal_ms = times.seal_us / 1_000,
            sync_ms = times.sync_us / 1_000,
            deliver_ms = times.deliver_us / 1_000,
            cpu_ms = times.cpu_us / 1_000,
            slow_rounds_since_last_report = self.unreported,
            "a slow round"
        );
        self.reported_at_ms = Some(now_ms);
        std::mem::take(&mut self.unreported)
    }
}

/// What reaches the core thread.
pub enum CoreInput {
    Round(Input<Keyring>),
    /// A machine connection was accepted; frames for it go to `writer`,
    /// and `authenticated` fires once its peer proved it holds the
    /// machine's key.
    SessionOpened {
        session: SessionId,
        writer: SessionWriter,
        authenticated: tokio::sync::oneshot::Sender<()>,
    },
    Operator(OperatorRequest),
    Shutdown,
}

pub(super) fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Where the answer to an operator request goes.
pub(super) type Reply = tokio::sync::oneshot::Sender<Result<ActionReceipt, ActionError>>;

/// What the core keeps of a machine connection's task.
pub(super) struct SessionLink {
    writer: SessionWriter,
    /// Taken when the session authenticates.
    authenticated: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The core: everything the replica decides, on one thread.
pub(super) struct Core {
    pub(super) config: ReplicaConfig,
    pub(super) round: Round<RocksBackend, Keyring>,
    pub(super) sender: Box<dyn DatagramSender>,
    pub(super) sessions: HashMap<SessionId, SessionLink>,
    pub(super) started: Instant,
    pub(super) receive_drops: Arc<ReceiveDrops>,
    /// Asks the key loader thread for a fresh key directory (capacity 1:
    /// a request already waiting covers the next one).
    pub(super) load_keys: SyncSender<()>,
    /// Operator requests taken by the round and not answered yet (at most
    /// `round::OPERATOR_REQUESTS_WAITING_MAX`: the round answers each
    /// within `OPERATOR_COMMIT_TIMEOUT_MS`).
    pub(super) replies: HashMap<RequestId, Reply>,
    pub(super) next_request: RequestId,
    pub(super) shutdown: bool,
    pub(super) slow_rounds: SlowRounds,
}

impl Core {
    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn run(&mut self, inputs: &Receiver<CoreInput>, publisher: &mut Publisher) {
        let mut next_tick_ms = self.now_ms();
        let mut next_archive_ms = self.now_ms() + self.config.archive.every_ms();
        while !self.shutdown {
            let wait = next_tick_ms.saturating_sub(self.now_ms());
            let first = match inputs.recv_timeout(Duration::from_millis(wait)) {
                Ok(input) => Some(input),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let now_ms = self.now_ms();
            let started = Instant::now();
            let cpu_at_start = thread_cpu_us();
            let mut times = RoundTimes::default();
            self.round.begin(now_ms, wall_ms());
            if let Some(input) = first {
                self.handle(input);
                times.inputs = 1;
                for input in inputs.try_iter().take(INPUTS_PER_ROUND_MAX) {
                    self.handle(input);
                    times.inputs += 1;
                }
            }
            if now_ms >= next_tick_ms {
                self.round.tick();
                next_tick_ms = now_ms + TICK_MS;
            }
            times.handle_us = started.elapsed().as_micros();
            self.end_round(publisher, &mut times);
            times.cpu_us = thread_cpu_us().saturating_sub(cpu_at_start);
            self.slow_rounds.observe(&times, now_ms);
            if self.config.archive.enabled() && now_ms >= next_archive_ms {
                next_archive_ms = now_ms + self.config.archive.every_ms();
                self.archive_step();
            }
        }
        self.round.begin(self.now_ms(), wall_ms());
        self.round.save_commit_hint_now();
        if let Err(e) = self.round.checkpoint() {
            tracing::warn!(error = %e, "could not checkpoint the projection at shutdown");
        }
        self.end_round(publisher, &mut RoundTimes::default());
        for (_, reply) in self.replies.drain() {
            // The requester may have given up waiting; nothing to do then.
            let _ = reply.send(Err(ActionError::Stopped));
        }
        // The buffered writes go to table files, so the next start need
        // not replay them.
        if let Err(e) = self.round.ledger().store().flush() {
            tracing::warn!(error = %e, "could not flush the log at shutdown");
        }
        tracing::info!(replica = %self.config.name, "replica stopped");
    }

    /// Seals the round, sends the records it streams, makes it durable
    /// with one fsync, and only then sends the rest of what it produced.
    /// What the inputs already produced to send early (retransmissions a
    /// NAK asked for, a follower's NAKs) leaves before the seal, which
    /// appends the round's events and may take milliseconds.
    fn end_round(&mut self, publisher: &mut Publisher, times: &mut RoundTimes) {
        let started = Instant::now();
        for outgoing in self.round.take_early() {
            self.deliver(outgoing);
        }
        self.round.seal();
        for outgoing in self.round.take_early() {
            self.deliver(outgoing);
        }
        let sealed = Instant::now();
        let synced = self.round.sync();
        let sync_done = Instant::now();
        for outgoing in self.round.finish(synced) {
            self.deliver(outgoing);
        }
        publisher.publish(self);
        times.seal_us = sealed.duration_since(started).as_micros();
        times.sync_us = sync_done.duration_since(sealed).as_micros();
        times.deliver_us = sync_done.elapsed().as_micros();
    }

    /// Archives a closed segment between rounds when `[archive]` allows
    /// one (`crate::archiving`); a failure is logged and tried again at the
    /// next step, the live log being untouched until a file is whole.
    fn archive_step(&mut self) {
        let config = &self.config;
        let (data_dir, keys_dir) = (&config.data_dir, &config.keys_dir);
        match crate::archiving::step(
            &mut self.round,
            &config.archive,
            data_dir,
            keys_dir,
            wall_ms(),
        ) {
            Ok(Some(report)) => tracing::info!(
                replica = %config.name,
                through_gseq = report.through_gseq,
                file_bytes = report.file_bytes,
                "archived a segment"
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!(replica = %config.name, error = %e, "could not archive"),
        }
    }

    fn handle(&mut self, input: CoreInput) {
        match input {
            CoreInput::Round(input) => {
                if let Input::SessionClosed(session) | Input::SessionMalformed(session) = &input {
                    self.sessions.remove(session);
                }
                self.round.input(input);
            }
            CoreInput::SessionOpened {
                session,
                writer,
                authenticated,
            } => {
                let link = SessionLink {
                    writer,
                    authenticated: Some(authenticated),
                };
                self.sessions.insert(session, link);
                self.round.input(Input::SessionOpened(session));
            }
            CoreInput::Operator(request) => self.operator(request),
            CoreInput::Shutdown => self.shutdown = true,
        }
    }

    /// Hands an operator's request to the round: refused at once, or
    /// answered when the round says it is committed (or cannot be).
    fn operator(&mut self, request: OperatorRequest) {
        let OperatorRequest {
            operator,
            action,
            reply,
        } = request;
        let id = self.next_request;
        self.next_request += 1;
        match self.round.operator_request(id, &operator, &action) {
            Ok(()) => {
                self.replies.insert(id, reply);
            }
            Err(refusal) => {
                let error = match refusal {
                    Refusal::NotPrimary { leader } => ActionError::NotPrimary {
                        primary: leader.map(|id| self.member_name(id)),
                    },
                    Refusal::Action(error) => error,
                };
                tracing::info!(%operator, error = %error, "refused an operator request");
                // The requester may have given up waiting; nothing to do then.
                let _ = reply.send(Err(error));
            }
        }
    }

    /// A replica's name as operators know it.
    pub(super) fn member_name(&self, id: crate::wire::NodeId) -> String {
        if id == self.config.id {
            return self.config.name.clone();
        }
        self.config
            .peer(id)
            .map_or_else(|| format!("replica-{id}"), |p| p.name.clone())
    }

    fn destinations(&self, to: Target) -> Vec<SocketAddrV4> {
        match (to, self.config.broadcast) {
            (Target::All, Some(broadcast)) => vec![broadcast],
            (Target::All, None) => self
                .config
                .peers
                .iter()
                .map(|p| p.replication_addr)
                .collect(),
            (Target::Node(id), _) => self
                .config
                .peer(id)
                .map(|p| p.replication_addr)
                .into_iter()
                .collect(),
        }
    }

    fn deliver(&mut self, outgoing: Outgoing) {
        match outgoing {
            Outgoing::Datagram { to, bytes } => {
                for destination in self.destinations(to) {
                    if let Err(error) = self.sender.send(destination, &bytes) {
                        // A lost datagram is repaired by the protocol (NAKs,
                        // heartbeats); log and go on.
                        tracing::debug!(%destination, error = %error, "datagram not sent");
                    }
                }
            }
            Outgoing::Frame { session, payload } => {
                let delivered = self
                    .sessions
                    .get(&session)
                    .is_some_and(|link| link.writer.try_send(payload).is_ok());
                if !delivered {
                    // Gone or too slow: drop it; the machine reconnects.
                    self.sessions.remove(&session);
                    self.round.input(Input::SessionClosed(session));
                }
            }
            Outgoing::Close { session } => {
                // Dropping the writer lets it flush what is queued, then close.
                self.sessions.remove(&session);
            }
            Outgoing::Authenticated { session } => {
                let told = self
                    .sessions
                    .get_mut(&session)
                    .and_then(|link| link.authenticated.take());
                if let Some(told) = told {
                    // The task may have ended meanwhile; nothing to do then.
                    let _ = told.send(());
                }
            }
            Outgoing::OperatorAnswer { request, answer } => {
                if let Some(reply) = self.replies.remove(&request) {
                    // The requester may have given up waiting.
                    let _ = reply.send(answer);
                }
            }
            Outgoing::LoadKeys => match self.load_keys.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) => {}
                Err(TrySendError::Disconnected(())) => {
                    tracing::warn!("the key loader has stopped; keys are not reloaded")
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_rounds_are_reported_at_most_once_a_second_and_counted_between() {
        let mut slow = SlowRounds::default();
        let quick = RoundTimes {
            handle_us: 1_000,
            sync_us: 2_000,
            ..RoundTimes::default()
        };
        let stalled = RoundTimes {
            sync_us: ROUND_SLOW_MS * 1_000,
            ..RoundTimes::default()
        };
        assert_eq!(slow.observe(&quick, 0), 0);
        assert_eq!(slow.observe(&stalled, 10), 1);
        assert_eq!(slow.observe(&stalled, 20), 0);
        assert_eq!(slow.observe(&quick, 30), 0);
        assert_eq!(slow.observe(&stalled, 40), 0);
        assert_eq!(slow.observe(&stalled, 10 + SLOW_ROUND_REPORT_EVERY_MS), 3);
    }
}

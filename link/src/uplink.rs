//! The machine's side of the link, without I/O: which replica to talk to,
//! when to reconnect, what to send and what is acknowledged.
//!
//! A machine keeps every event in its own ledger, so the uplink only needs
//! the acknowledged mark: after any failure it reconnects (with backoff,
//! trying every replica address, following redirects to the primary) and
//! resends from the primary's committed mark. Nothing is lost and the
//! primary's dedup makes sure nothing doubles. The GUI never waits on it.
//!
//! A replica that will not serve the machine (it has no key for it) says
//! so in a plaintext [`Refusal`] before it closes; a key that differs from
//! the replica's shows as a first sealed frame that does not open. Either
//! way the uplink remembers why ([`HandshakeRefused`], [`LinkState::Refused`])
//! so people can be told, and backs off as after any failed attempt: the
//! refusal is unauthenticated, a hint and never a reason to act.

use crate::channel::{
    Channel, Downstream, Hello, HelloReply, LINK_VERSION, LinkError, Refusal, RefusalReason,
    SUBMIT_EVENTS_MAX, Side, Upstream, decode_plain, encode_plain,
};
use crate::window::InFlightWindow;
use ledger::MachineId;
use ledger::crypto::{NONCE_BYTES, SecretKey};
use ledger::rules::RemoteCommand;
use ledger::store::record::SignedEvent;

pub use crate::window::IN_FLIGHT_EVENTS_MAX;
/// First reconnect delay; doubled per failure up to the maximum.
pub const RECONNECT_DELAY_MIN_MS: u64 = 50;
pub const RECONNECT_DELAY_MAX_MS: u64 = 2_000;
/// A live replica that knows no primary (an election is on), or that named
/// a primary which is not there, is followed by the next replica after
/// `RECONNECT_DELAY_MIN_MS`, without backing off, this many times in a row: a failover is over in well under a second, and a
/// doubling backoff would make machines wait up to its last doubling after
/// it. Then the backoff resumes, so a cluster without a primary for long
/// is not polled at this pace.
pub const NO_PRIMARY_QUICK_RETRIES_MAX: u32 = 40;
/// An open session with no frame for this long is considered dead.
pub const SILENCE_TIMEOUT_MS: u64 = 3_000;
/// Pings keep an idle session alive and refresh the committed mark.
pub const PING_INTERVAL_MS: u64 = 1_000;
/// A connection attempt or handshake that takes longer is abandoned.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// After the primary asks for a resend (it is busy, or saw a gap), wait
/// this long or for its next acknowledgement before sending again, so an
/// overloaded primary is not answered with the same events at once.
pub const RESEND_PAUSE_MS: u64 = 50;

/// Where the uplink reads the machine's own events.
pub trait LocalEvents {
    /// The highest machine_seq stored locally.
    fn local_tip(&self) -> u64;
    /// Events `from..` (at most `max`), in order.
    fn events_from(&self, from: u64, max: usize) -> Vec<SignedEvent>;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UplinkAction {
    /// Open a TCP connection to this address; report with `on_connected`
    /// or `on_disconnected`.
    Connect(String),
    /// Send this frame payload on the open connection.
    Send(Vec<u8>),
    /// Close the connection.
    Close,
    /// Everything up to this seq is committed by the fleet (persist it; it
    /// is also the "unsent" count the screen shows).
    Acknowledged(u64),
    /// A command from the dashboard to apply.
    Remote(RemoteCommand),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    Offline,
    Connecting,
    Online,
    /// Not online, and the last handshake was refused (see
    /// [`Uplink::refused`]); the uplink keeps trying with backoff.
    Refused,
}

/// Why a replica would not take the machine's session, as far as the
/// machine can tell. For people only: see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HandshakeRefused {
    /// The replica's machine address.
    pub address: String,
    /// What the replica's refusal said; `None` when it answered but its
    /// first sealed frame did not open with this machine's key.
    pub reason: Option<RefusalReason>,
}

impl std::fmt::Display for HandshakeRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let address = &self.address;
        match self.reason {
            Some(RefusalReason::UnknownMachine) => {
                write!(
                    f,
                    "handshake refused (unknown machine or wrong key) by {address}"
                )
            }
            None => write!(
                f,
                "handshake refused (unknown machine or wrong key) by {address}: its first \
                 sealed frame does not open with this machine's key"
            ),
            Some(RefusalReason::Version { supported }) => write!(
                f,
                "handshake refused by {address}: it speaks link version {supported}, this \
                 machine {LINK_VERSION}"
            ),
        }
    }
}

enum State {
    Idle {
        retry_at_ms: u64,
    },
    Connecting {
        since_ms: u64,
        address: usize,
    },
    Handshaking {
        since_ms: u64,
        address: usize,
        client_nonce: [u8; NONCE_BYTES],
    },
    Open {
        channel: Box<Channel>,
        address: usize,
        last_heard_ms: u64,
        last_ping_ms: u64,
        /// A sealed frame of the replica opened in this session (so the
        /// replica has this machine's key).
        authenticated: bool,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct UplinkStats {
    pub connects: u64,
    pub sessions: u64,
    /// Times the machine found a different primary than before.
    pub failovers: u64,
    pub redirects: u64,
    /// Events sent again after a reconnect or a resend request.
    pub events_resent: u64,
    /// Times the primary asked for a resend (busy, or a gap).
    pub resend_requests: u64,
    pub events_sent: u64,
    pub protocol_errors: u64,
    /// Handshakes a replica refused (see [`HandshakeRefused`]).
    pub handshakes_refused: u64,
}

pub struct Uplink {
    machine: MachineId,
    link_key: SecretKey,
    addresses: Vec<String>,
    state: State,
    /// Committed mark from the primary.
    acked: u64,
    /// Highest seq sent in this session.
    sent: u64,
    /// Highest seq ever sent (to count resends).
    sent_ever: u64,
    delay_ms: u64,
    next_address: usize,
    /// The address of the primary that last welcomed us.
    primary: Option<String>,
    /// After a resend request: send nothing until then (or the next ack).
    paused_until_ms: Option<u64>,
    /// The last refused handshake, until a replica's sealed frame opens.
    refused: Option<HandshakeRefused>,
    /// Replicas that answered "no primary known" (or named one that was
    /// not there) since the last welcome (see
    /// [`NO_PRIMARY_QUICK_RETRIES_MAX`]).
    no_primary_answers: u32,
    /// The current attempt follows a replica's redirect.
    redirected: bool,
    /// How many events may be in flight (adapts to the primary's pace).
    window: InFlightWindow,
    stats: UplinkStats,
}

impl Uplink {
    /// `acked` is the committed mark saved by the machine before a restart.
    pub fn new(
        machine: MachineId,
        link_key: SecretKey,
        addresses: Vec<String>,
        acked: u64,
    ) -> Uplink {
        assert!(
            !addresses.is_empty(),
            "an uplink needs at least one replica address"
        );
        Uplink {
            machine,
            link_key,
            addresses,
            state: State::Idle { retry_at_ms: 0 },
            acked,
            sent: acked,
            sent_ever: acked,
            delay_ms: RECONNECT_DELAY_MIN_MS,
            next_address: 0,
            primary: None,
            paused_until_ms: None,
            refused: None,
            no_primary_answers: 0,
            redirected: false,
            window: InFlightWindow::default(),
            stats: UplinkStats::default(),
        }
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    pub fn stats(&self) -> &UplinkStats {
        &self.stats
    }

    pub fn state(&self) -> LinkState {
        match self.state {
            State::Open { .. } => LinkState::Online,
            _ if self.refused.is_some() => LinkState::Refused,
            State::Idle { .. } => LinkState::Offline,
            State::Connecting { .. } | State::Handshaking { .. } => LinkState::Connecting,
        }
    }

    /// Why the last handshake was refused, while no replica has taken a
    /// session since.
    pub fn refused(&self) -> Option<&HandshakeRefused> {
        self.refused.as_ref()
    }

    pub fn primary(&self) -> Option<&str> {
        self.primary.as_deref()
    }

    /// When [`tick`](Self::tick) next has something to do: a reconnect, a
    /// timeout, a keepalive or the end of a resend pause. A tick before
    /// then does nothing. Every input may move it, so a driver asks again
    /// after each and sleeps until then, instead of ticking on an interval
    /// (a load generator with 10,000 machines spent a core on 10 ms ticks).
    pub fn next_tick_ms(&self) -> u64 {
        let state = match &self.state {
            State::Idle { retry_at_ms } => *retry_at_ms,
            State::Connecting { since_ms, .. } | State::Handshaking { since_ms, .. } => {
                since_ms.saturating_add(CONNECT_TIMEOUT_MS)
            }
            State::Open {
                last_heard_ms,
                last_ping_ms,
                ..
            } => last_heard_ms
                .saturating_add(SILENCE_TIMEOUT_MS)
                .min(last_ping_ms.saturating_add(PING_INTERVAL_MS)),
        };
        self.paused_until_ms.map_or(state, |until| until.min(state))
    }

    /// Time passed: reconnects, keepalives, timeouts, the end of a pause.
    pub fn tick(&mut self, now_ms: u64, local: &dyn LocalEvents) -> Vec<UplinkAction> {
        let mut out = Vec::new();
        if self.paused_until_ms.is_some_and(|until| now_ms >= until) {
            self.paused_until_ms = None;
            self.pump(&mut out, now_ms, local);
        }
        match &mut self.state {
            State::Idle { retry_at_ms } if now_ms >= *retry_at_ms => {
                let address = self.next_address % self.addresses.len();
                self.stats.connects += 1;
                out.push(UplinkAction::Connect(self.addresses[address].clone()));
                self.state = State::Connecting {
                    since_ms: now_ms,
                    address,
                };
            }
            State::Connecting { since_ms, .. } | State::Handshaking { since_ms, .. }
                if now_ms >= *since_ms + CONNECT_TIMEOUT_MS =>
            {
                out.push(UplinkAction::Close);
                self.fail(now_ms, true);
            }
            State::Open {
                channel,
                last_heard_ms,
                last_ping_ms,
                ..
            } => {
                if now_ms >= *last_heard_ms + SILENCE_TIMEOUT_MS {
                    out.push(UplinkAction::Close);
                    self.fail(now_ms, true);
                } else if now_ms >= *last_ping_ms + PING_INTERVAL_MS {
                    *last_ping_ms = now_ms;
                    let ping = Upstream::Ping {
                        local_tip: local.local_tip(),
                    };
                    out.push(UplinkAction::Send(channel.seal(&ping)));
                }
            }
            _ => {}
        }
        out
    }

    /// The connection could not be made, or it ended.
    pub fn on_disconnected(&mut self, now_ms: u64) {
        let redirected = std::mem::take(&mut self.redirected);
        match self.state {
            State::Idle { .. } => {}
            // The primary a live replica named is not there: most likely
            // it has just died and the replica has not noticed yet.
            State::Connecting { .. } | State::Handshaking { .. } if redirected => {
                self.no_primary_known(now_ms);
            }
            _ => self.fail(now_ms, true),
        }
    }

    fn fail(&mut self, now_ms: u64, rotate: bool) {
        let address = match self.state {
            State::Connecting { address, .. }
            | State::Handshaking { address, .. }
            | State::Open { address, .. } => address,
            State::Idle { .. } => self.next_address,
        };
        if rotate {
            self.next_address = address + 1;
        }
        self.state = State::Idle {
            retry_at_ms: now_ms + self.delay_ms,
        };
        self.delay_ms = (self.delay_ms * 2).min(RECONNECT_DELAY_MAX_MS);
        self.redirected = false;
        self.sent = self.acked;
        self.window.forget_sent();
        self.paused_until_ms = None;
    }

    /// The TCP connection is up: say hello with a fresh nonce.
    pub fn on_connected(
        &mut self,
        now_ms: u64,
        client_nonce: [u8; NONCE_BYTES],
    ) -> Vec<UplinkAction> {
        let State::Connecting { address, .. } = self.state else {
            return vec![UplinkAction::Close];
        };
        self.state = State::Handshaking {
            since_ms: now_ms,
            address,
            client_nonce,
        };
        vec![UplinkAction::Send(encode_plain(&Hello {
            version: LINK_VERSION,
            machine_id: self.machine.clone(),
            client_nonce,
        }))]
    }

    /// A frame payload arrived.
    pub fn on_frame(
        &mut self,
        now_ms: u64,
        payload: &[u8],
        local: &dyn LocalEvents,
    ) -> Vec<UplinkAction> {
        let mut out = Vec::new();
        match self.handle_frame(&mut out, now_ms, payload, local) {
            Ok(None) => {}
            Ok(Some(refused)) => {
                // Once per kind of refusal, not per replica tried in turn.
                if self.refused.as_ref().map(|r| r.reason) != Some(refused.reason) {
                    tracing::warn!(machine = %self.machine, "{refused}; retrying with backoff");
                }
                self.stats.handshakes_refused += 1;
                self.refused = Some(refused);
                out.push(UplinkAction::Close);
                self.fail(now_ms, true);
            }
            Err(error) => {
                tracing::warn!(machine = %self.machine, error = %error, "closing the link after a bad frame");
                self.stats.protocol_errors += 1;
                out.push(UplinkAction::Close);
                self.fail(now_ms, true);
            }
        }
        out
    }

    /// Handles one frame; `Ok(Some(_))` when it shows the replica refused
    /// this machine's handshake.
    fn handle_frame(
        &mut self,
        out: &mut Vec<UplinkAction>,
        now_ms: u64,
        payload: &[u8],
        local: &dyn LocalEvents,
    ) -> Result<Option<HandshakeRefused>, LinkError> {
        match &mut self.state {
            State::Handshaking {
                address,
                client_nonce,
                ..
            } => {
                let reply: HelloReply = match decode_plain(payload) {
                    Ok(reply) => reply,
                    Err(error) => {
                        let Ok(Refusal::HelloRefused { reason }) = decode_plain(payload) else {
                            return Err(error);
                        };
                        return Ok(Some(HandshakeRefused {
                            address: self.addresses[*address].clone(),
                            reason: Some(reason),
                        }));
                    }
                };
                if reply.version != LINK_VERSION {
                    return Err(LinkError::Version(reply.version));
                }
                let channel = Channel::new(
                    &self.link_key,
                    &self.machine,
                    client_nonce,
                    &reply.server_nonce,
                    Side::Machine,
                );
                self.state = State::Open {
                    channel: Box::new(channel),
                    address: *address,
                    last_heard_ms: now_ms,
                    last_ping_ms: now_ms,
                    authenticated: false,
                };
                Ok(None)
            }
            State::Open {
                channel,
                address,
                last_heard_ms,
                authenticated,
                ..
            } => {
                *last_heard_ms = now_ms;
                let address = *address;
                let message: Downstream = match channel.open(payload) {
                    Ok(message) => message,
                    // The replica's very first sealed frame: it sealed with
                    // a key for this machine that is not this machine's.
                    Err(LinkError::Authentication) if !*authenticated => {
                        return Ok(Some(HandshakeRefused {
                            address: self.addresses[address].clone(),
                            reason: None,
                        }));
                    }
                    Err(error) => return Err(error),
                };
                *authenticated = true;
                self.refused = None;
                self.on_message(out, now_ms, address, message, local);
                Ok(None)
            }
            State::Idle { .. } | State::Connecting { .. } => {
                Err(LinkError::Protocol("frame without a session"))
            }
        }
    }

    fn on_message(
        &mut self,
        out: &mut Vec<UplinkAction>,
        now_ms: u64,
        address: usize,
        message: Downstream,
        local: &dyn LocalEvents,
    ) {
        match message {
            Downstream::Welcome { committed_seq, .. } => {
                self.stats.sessions += 1;
                self.delay_ms = RECONNECT_DELAY_MIN_MS;
                self.no_primary_answers = 0;
                let here = self.addresses[address].clone();
                if self.primary.as_ref().is_some_and(|p| *p != here) {
                    self.stats.failovers += 1;
                }
                self.primary = Some(here);
                self.next_address = address;
                self.learn_acked(out, now_ms, committed_seq);
                self.sent = self.acked;
                self.window.forget_sent();
                let before = out.len();
                self.pump(out, now_ms, local);
                let submitted = out[before..]
                    .iter()
                    .any(|action| matches!(action, UplinkAction::Send(_)));
                if !submitted {
                    self.prove_key(out, now_ms, local);
                }
            }
            Downstream::Ack { committed_seq } => {
                self.learn_acked(out, now_ms, committed_seq);
                self.paused_until_ms = None;
                self.pump(out, now_ms, local);
            }
            Downstream::Resend { resend_from, .. } => {
                self.sent = resend_from.saturating_sub(1).max(self.acked);
                self.window.forget_sent();
                self.stats.resend_requests += 1;
                self.paused_until_ms = Some(now_ms + RESEND_PAUSE_MS);
            }
            Downstream::Redirect { primary } => {
                self.stats.redirects += 1;
                out.push(UplinkAction::Close);
                match primary.and_then(|p| self.addresses.iter().position(|a| *a == p)) {
                    Some(index) => {
                        // Go straight to the named primary.
                        self.next_address = index;
                        self.state = State::Idle {
                            retry_at_ms: now_ms,
                        };
                        self.sent = self.acked;
                        self.window.forget_sent();
                        self.redirected = true;
                    }
                    None => self.no_primary_known(now_ms),
                }
            }
            Downstream::Remote(command) => out.push(UplinkAction::Remote(command)),
        }
    }

    /// A live replica knows no primary yet: try the next one soon, without
    /// backing off, a bounded number of times in a row.
    fn no_primary_known(&mut self, now_ms: u64) {
        self.fail(now_ms, true);
        if self.no_primary_answers < NO_PRIMARY_QUICK_RETRIES_MAX {
            self.no_primary_answers += 1;
            self.delay_ms = RECONNECT_DELAY_MIN_MS;
            self.state = State::Idle {
                retry_at_ms: now_ms + RECONNECT_DELAY_MIN_MS,
            };
        }
    }

    fn learn_acked(&mut self, out: &mut Vec<UplinkAction>, now_ms: u64, committed_seq: u64) {
        // A committed mark never moves back: what was committed stays
        // committed on every future primary.
        if committed_seq > self.acked {
            self.window
                .on_acked(committed_seq, committed_seq - self.acked, now_ms);
            self.acked = committed_seq;
            out.push(UplinkAction::Acknowledged(committed_seq));
        }
        self.sent = self.sent.max(self.acked);
    }

    /// New local events were stored.
    pub fn on_local_append(&mut self, now_ms: u64, local: &dyn LocalEvents) -> Vec<UplinkAction> {
        let mut out = Vec::new();
        self.pump(&mut out, now_ms, local);
        out
    }

    /// Events that may be in flight now (see [`crate::window`]).
    pub fn window_events(&self) -> u64 {
        self.window.events()
    }

    /// Pings at once: the replica counts a connection as a machine's only
    /// once a sealed frame from it opens, and closes connections that do
    /// not get there within a few seconds (or sooner, when strangers crowd
    /// its handshake pool), so a machine with nothing to send proves its
    /// key right after the welcome instead of at its next ping.
    fn prove_key(&mut self, out: &mut Vec<UplinkAction>, now_ms: u64, local: &dyn LocalEvents) {
        if let State::Open {
            channel,
            last_ping_ms,
            ..
        } = &mut self.state
        {
            *last_ping_ms = now_ms;
            let ping = Upstream::Ping {
                local_tip: local.local_tip(),
            };
            out.push(UplinkAction::Send(channel.seal(&ping)));
        }
    }

    fn pump(&mut self, out: &mut Vec<UplinkAction>, now_ms: u64, local: &dyn LocalEvents) {
        let State::Open { channel, .. } = &mut self.state else {
            return;
        };
        if self.paused_until_ms.is_some() {
            return;
        }
        let tip = local.local_tip();
        let window = self.window.events();
        while self.sent < tip && self.sent - self.acked < window {
            let room = usize::try_from(window - (self.sent - self.acked)).unwrap_or(usize::MAX);
            let events = local.events_from(self.sent + 1, SUBMIT_EVENTS_MAX.min(room));
            if events.is_empty() {
                break;
            }
            let count = events.len() as u64;
            let resent = self.sent_ever.saturating_sub(self.sent).min(count);
            self.stats.events_resent += resent;
            self.stats.events_sent += count;
            self.sent += count;
            self.sent_ever = self.sent_ever.max(self.sent);
            self.window.on_sent(self.sent, now_ms);
            out.push(UplinkAction::Send(
                channel.seal(&Upstream::Submit { events }),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoEvents;

    impl LocalEvents for NoEvents {
        fn local_tip(&self) -> u64 {
            0
        }
        fn events_from(&self, _: u64, _: usize) -> Vec<SignedEvent> {
            Vec::new()
        }
    }

    const CLIENT_NONCE: [u8; NONCE_BYTES] = [1; NONCE_BYTES];
    const SERVER_NONCE: [u8; NONCE_BYTES] = [2; NONCE_BYTES];

    fn key() -> SecretKey {
        SecretKey::from_bytes([5; 32])
    }

    fn uplink() -> Uplink {
        Uplink::new(
            MachineId::numbered(1),
            key(),
            vec!["10.0.0.1:7101".into(), "10.0.0.2:7102".into()],
            0,
        )
    }

    /// Ticks from `now_ms` until the uplink connects, then says hello;
    /// returns when it connected.
    fn attempt(uplink: &mut Uplink, mut now_ms: u64) -> u64 {
        while !uplink
            .tick(now_ms, &NoEvents)
            .iter()
            .any(|a| matches!(a, UplinkAction::Connect(_)))
        {
            now_ms += 1;
        }
        uplink.on_connected(now_ms, CLIENT_NONCE);
        now_ms
    }

    fn reply() -> Vec<u8> {
        encode_plain(&HelloReply {
            version: LINK_VERSION,
            server_nonce: SERVER_NONCE,
        })
    }

    fn replica_channel(key: &SecretKey) -> Channel {
        Channel::new(
            key,
            &MachineId::numbered(1),
            &CLIENT_NONCE,
            &SERVER_NONCE,
            Side::Replica,
        )
    }

    #[test]
    fn a_refused_handshake_says_why_and_backs_off_like_any_failure() {
        let mut uplink = uplink();
        let refusal = encode_plain(&Refusal::HelloRefused {
            reason: RefusalReason::UnknownMachine,
        });
        let mut connected_at = Vec::new();
        let mut now_ms = 0;
        for _ in 0..5 {
            now_ms = attempt(&mut uplink, now_ms);
            connected_at.push(now_ms);
            assert_eq!(
                uplink.on_frame(now_ms, &refusal, &NoEvents),
                [UplinkAction::Close]
            );
            assert_eq!(uplink.state(), LinkState::Refused);
        }
        let gaps: Vec<u64> = connected_at.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps, [50, 100, 200, 400], "the delay doubles");
        assert_eq!(uplink.stats().handshakes_refused, 5);
        assert_eq!(uplink.stats().protocol_errors, 0);
        assert_eq!(
            uplink.refused().unwrap().to_string(),
            "handshake refused (unknown machine or wrong key) by 10.0.0.1:7101"
        );

        // A replica that takes the session ends the refusal.
        now_ms = attempt(&mut uplink, now_ms);
        assert_eq!(uplink.state(), LinkState::Refused, "still only connecting");
        uplink.on_frame(now_ms, &reply(), &NoEvents);
        let welcome = replica_channel(&key()).seal(&Downstream::Welcome {
            committed_seq: 0,
            epoch: 1,
        });
        uplink.on_frame(now_ms, &welcome, &NoEvents);
        assert_eq!(uplink.state(), LinkState::Online);
        assert_eq!(uplink.refused(), None);
    }

    #[test]
    fn a_first_sealed_frame_that_does_not_open_is_a_refusal() {
        let mut uplink = uplink();
        let now_ms = attempt(&mut uplink, 0);
        uplink.on_frame(now_ms, &reply(), &NoEvents);
        // The replica holds another key for this machine.
        let welcome = replica_channel(&SecretKey::from_bytes([6; 32])).seal(&Downstream::Welcome {
            committed_seq: 0,
            epoch: 1,
        });
        assert_eq!(
            uplink.on_frame(now_ms, &welcome, &NoEvents),
            [UplinkAction::Close]
        );
        assert_eq!(uplink.state(), LinkState::Refused);
        let refused = uplink.refused().unwrap().clone();
        assert_eq!(refused.reason, None);
        assert!(
            refused
                .to_string()
                .contains("(unknown machine or wrong key)"),
            "{refused}"
        );
        assert_eq!(uplink.stats().protocol_errors, 0);

        // Later in a session that opened, a frame that fails is a broken
        // frame, not a refusal.
        let now_ms = attempt(&mut uplink, now_ms);
        uplink.on_frame(now_ms, &reply(), &NoEvents);
        let mut replica = replica_channel(&key());
        let welcome = replica.seal(&Downstream::Welcome {
            committed_seq: 0,
            epoch: 1,
        });
        uplink.on_frame(now_ms, &welcome, &NoEvents);
        assert_eq!(uplink.refused(), None);
        uplink.on_frame(now_ms, b"not sealed", &NoEvents);
        assert_eq!(uplink.stats().protocol_errors, 1);
        assert_eq!(uplink.state(), LinkState::Offline);
    }

    #[test]
    fn a_machine_with_nothing_to_send_proves_its_key_right_after_the_welcome() {
        let mut uplink = uplink();
        let now_ms = attempt(&mut uplink, 0);
        assert!(uplink.on_frame(now_ms, &reply(), &NoEvents).is_empty());
        let mut replica = replica_channel(&key());
        let welcome = replica.seal(&Downstream::Welcome {
            committed_seq: 0,
            epoch: 1,
        });
        let out = uplink.on_frame(now_ms, &welcome, &NoEvents);
        let [UplinkAction::Send(ping)] = &out[..] else {
            panic!("one frame right after the welcome: {out:?}");
        };
        assert_eq!(
            replica.open::<Upstream>(ping).unwrap(),
            Upstream::Ping { local_tip: 0 },
            "the ping says how far the machine's ledger reaches"
        );
        // The next ping is a whole interval later.
        assert!(
            uplink
                .tick(now_ms + PING_INTERVAL_MS - 1, &NoEvents)
                .is_empty()
        );
        assert_eq!(uplink.tick(now_ms + PING_INTERVAL_MS, &NoEvents).len(), 1);
    }

    #[test]
    fn replicas_without_a_primary_are_asked_again_soon_then_with_backoff() {
        let mut uplink = uplink();
        let no_primary = |uplink: &mut Uplink, now_ms| {
            uplink.on_frame(now_ms, &reply(), &NoEvents);
            let redirect = replica_channel(&key()).seal(&Downstream::Redirect { primary: None });
            assert_eq!(
                uplink.on_frame(now_ms, &redirect, &NoEvents),
                [UplinkAction::Close]
            );
        };
        let mut connected_at = Vec::new();
        let mut now_ms = 0;
        for _ in 0..=NO_PRIMARY_QUICK_RETRIES_MAX + 2 {
            now_ms = attempt(&mut uplink, now_ms);
            connected_at.push(now_ms);
            no_primary(&mut uplink, now_ms);
        }
        let gaps: Vec<u64> = connected_at.windows(2).map(|w| w[1] - w[0]).collect();
        let quick = NO_PRIMARY_QUICK_RETRIES_MAX as usize;
        assert!(
            gaps[..quick]
                .iter()
                .all(|&gap| gap == RECONNECT_DELAY_MIN_MS),
            "{gaps:?}"
        );
        assert_eq!(gaps[quick..], [50, 100], "then the delay doubles again");
        assert_eq!(
            uplink.stats().redirects,
            u64::from(NO_PRIMARY_QUICK_RETRIES_MAX) + 3
        );
    }

    #[test]
    fn a_redirect_to_a_primary_that_is_gone_is_retried_soon() {
        let mut uplink = uplink();
        let mut now_ms = attempt(&mut uplink, 0);
        let mut connected_at = Vec::new();
        for _ in 0..3 {
            uplink.on_frame(now_ms, &reply(), &NoEvents);
            let redirect = replica_channel(&key()).seal(&Downstream::Redirect {
                primary: Some("10.0.0.1:7101".into()),
            });
            uplink.on_frame(now_ms, &redirect, &NoEvents);
            // Straight to the named primary, which refuses the connection.
            now_ms = attempt(&mut uplink, now_ms);
            uplink.on_disconnected(now_ms);
            now_ms = attempt(&mut uplink, now_ms);
            connected_at.push(now_ms);
        }
        let gaps: Vec<u64> = connected_at.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(
            gaps,
            [RECONNECT_DELAY_MIN_MS, RECONNECT_DELAY_MIN_MS],
            "no backoff"
        );
        // A connection that ends without a redirect before it backs off.
        uplink.on_disconnected(now_ms);
        let again = attempt(&mut uplink, now_ms);
        uplink.on_disconnected(again);
        assert_eq!(
            attempt(&mut uplink, again) - again,
            2 * RECONNECT_DELAY_MIN_MS
        );
    }

    /// `next_tick_ms` is when a tick first acts, in every state: each tick
    /// from the last input up to it does nothing, the one at it acts.
    #[test]
    fn the_next_tick_is_when_a_tick_first_acts() {
        let acts_first_at = |uplink: &mut Uplink, from_ms: u64| {
            let next = uplink.next_tick_ms();
            for now_ms in from_ms..next {
                let out = uplink.tick(now_ms, &NoEvents);
                assert!(out.is_empty(), "at {now_ms}, before {next}: {out:?}");
            }
            let out = uplink.tick(next, &NoEvents);
            assert!(!out.is_empty(), "nothing at {next}");
            (next, out)
        };
        let mut uplink = uplink();
        let (now_ms, out) = acts_first_at(&mut uplink, 0);
        assert!(matches!(out[..], [UplinkAction::Connect(_)]), "{out:?}");
        assert_eq!(now_ms, 0, "a new uplink connects at once");

        let (timed_out, out) = acts_first_at(&mut uplink, now_ms);
        assert_eq!(out, [UplinkAction::Close]);
        assert_eq!(timed_out, CONNECT_TIMEOUT_MS, "the attempt timed out");

        let (now_ms, out) = acts_first_at(&mut uplink, timed_out);
        assert!(matches!(out[..], [UplinkAction::Connect(_)]), "{out:?}");
        assert_eq!(now_ms, timed_out + RECONNECT_DELAY_MIN_MS, "the retry");

        uplink.on_connected(now_ms, CLIENT_NONCE);
        uplink.on_frame(now_ms, &reply(), &NoEvents);
        let welcome = replica_channel(&key()).seal(&Downstream::Welcome {
            committed_seq: 0,
            epoch: 1,
        });
        assert_eq!(uplink.on_frame(now_ms, &welcome, &NoEvents).len(), 1);
        let welcomed = now_ms;
        let (now_ms, out) = acts_first_at(&mut uplink, welcomed);
        assert!(matches!(out[..], [UplinkAction::Send(_)]), "{out:?}");
        assert_eq!(now_ms, welcomed + PING_INTERVAL_MS, "a keepalive");
        let (now_ms, out) = acts_first_at(&mut uplink, now_ms);
        assert!(matches!(out[..], [UplinkAction::Send(_)]), "{out:?}");
        let (now_ms, out) = acts_first_at(&mut uplink, now_ms);
        assert_eq!(out, [UplinkAction::Close]);
        assert_eq!(now_ms, welcomed + SILENCE_TIMEOUT_MS, "nothing heard");
    }
}

//! The tokio shell around [`Uplink`]: a machine's background connection to
//! the replicas. It owns the TCP connection, feeds frames and time to the
//! sans-I/O core, and reports acknowledgements and remote commands. Frames
//! are read and written through [`frame_codec`]. The machine's own ledger is
//! the source of the events ([`LocalLedger`]).

use crate::channel::fresh_nonce;
use crate::codec::frame_codec;
use crate::uplink::{
    CONNECT_TIMEOUT_MS, HandshakeRefused, LinkState, LocalEvents, Uplink, UplinkAction, UplinkStats,
};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use ledger::rules::RemoteCommand;
use ledger::store::record::SignedEvent;
use ledger::{Ledger, MachineId};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// A deadline past any the core sets, should one not fit an `Instant`.
const FAR_FUTURE: Duration = Duration::from_secs(86_400);

/// A machine's own ledger, shared between the machine (which appends) and
/// its uplink (which reads). In a machine's ledger every entry is one of
/// its own events, so gseq and machine_seq coincide.
#[derive(Clone)]
pub struct LocalLedger {
    pub machine: MachineId,
    pub ledger: Arc<Mutex<Ledger>>,
}

impl LocalEvents for LocalLedger {
    fn local_tip(&self) -> u64 {
        self.ledger
            .lock()
            .map_or(0, |ledger| ledger.store().machine_head(&self.machine).seq)
    }

    fn events_from(&self, from: u64, max: usize) -> Vec<SignedEvent> {
        let Ok(ledger) = self.ledger.lock() else {
            return Vec::new();
        };
        let mut events = Vec::with_capacity(max);
        for item in ledger.store().entries_from(from).take(max) {
            match item {
                Ok(entry) => match entry.body.machine_event() {
                    Some((machine, seq, event))
                        if *machine == self.machine && seq == entry.body.gseq =>
                    {
                        events.push(event.clone());
                    }
                    _ => break,
                },
                Err(e) => {
                    tracing::error!(error = %e, "the machine's own ledger is unreadable");
                    break;
                }
            }
        }
        events
    }
}

/// What the uplink tells the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UplinkReport {
    /// Everything up to this seq is committed by the fleet.
    Acknowledged(u64),
    /// A dashboard command to apply.
    Remote(RemoteCommand),
    /// The connection state or statistics changed.
    State {
        state: LinkState,
        primary: Option<String>,
        stats: UplinkStats,
        /// Why the last handshake was refused, while no replica has taken
        /// a session since (a hint for people; see `uplink`).
        refused: Option<HandshakeRefused>,
    },
}

/// Handles for talking to a running uplink.
pub struct UplinkControl {
    /// Wake the uplink after appending local events.
    pub appended: Arc<tokio::sync::Notify>,
    pub stop: tokio::sync::watch::Sender<bool>,
}

/// An open connection to a replica, split into frames by [`frame_codec`].
type Connection = Framed<TcpStream, LengthDelimitedCodec>;
/// A connection attempt in progress, bounded by `CONNECT_TIMEOUT_MS`.
type Connecting = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;
/// What the machine was last told about the link: state, primary, stats,
/// the last refusal.
type Reported = (
    LinkState,
    Option<String>,
    UplinkStats,
    Option<HandshakeRefused>,
);

/// Runs the uplink until stopped. Reports go to `reports` (bounded; when
/// the machine does not read them, state updates are dropped first).
pub async fn run_uplink<L: LocalEvents>(
    uplink: Uplink,
    local: L,
    appended: Arc<tokio::sync::Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    reports: tokio::sync::mpsc::Sender<UplinkReport>,
) -> UplinkStats {
    let mut driver = Driver::new(uplink, local, reports);
    let wake = tokio::time::sleep_until(driver.tick_at());
    tokio::pin!(wake);
    loop {
        wake.as_mut().reset(driver.tick_at());
        // A read or a connection attempt that loses the race to another
        // branch loses nothing: the framed reader keeps a partial frame in
        // its buffer, and the attempt lives on in the driver.
        let actions = tokio::select! {
            _ = stop.changed() => break,
            () = &mut wake => driver.uplink.tick(driver.now_ms(), &driver.local),
            () = appended.notified() => driver.uplink.on_local_append(driver.now_ms(), &driver.local),
            result = async { driver.connecting.as_mut().expect("guarded").await },
                if driver.connecting.is_some() => driver.on_connect_result(result),
            frame = async { driver.connection.as_mut().expect("guarded").next().await },
                if driver.connection.is_some() => driver.on_frame_read(frame),
        };
        driver.execute(actions).await;
        driver.report_state_change();
    }
    driver.uplink.stats().clone()
}

/// The uplink core and the I/O it asked for. The core decides; this only
/// connects, moves frames and passes reports on.
struct Driver<L> {
    uplink: Uplink,
    local: L,
    reports: tokio::sync::mpsc::Sender<UplinkReport>,
    /// The core's clock starts at zero when the driver starts.
    started: Instant,
    connection: Option<Connection>,
    /// At most one attempt: the core asks for the next connection only
    /// after this one has succeeded or failed.
    connecting: Option<Connecting>,
    reported: Reported,
}

impl<L: LocalEvents> Driver<L> {
    fn new(
        uplink: Uplink,
        local: L,
        reports: tokio::sync::mpsc::Sender<UplinkReport>,
    ) -> Driver<L> {
        let reported = observe(&uplink);
        Driver {
            uplink,
            local,
            reports,
            started: Instant::now(),
            connection: None,
            connecting: None,
            reported,
        }
    }

    /// When the core next has something to do on its own.
    fn tick_at(&self) -> tokio::time::Instant {
        let next = Duration::from_millis(self.uplink.next_tick_ms());
        let at = self
            .started
            .checked_add(next)
            .unwrap_or(self.started + FAR_FUTURE);
        tokio::time::Instant::from_std(at)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn on_connect_result(&mut self, result: io::Result<TcpStream>) -> Vec<UplinkAction> {
        self.connecting = None;
        match result {
            Ok(stream) => {
                // Frames are small and a machine waits for each answer, so
                // latency matters more than packing segments.
                let _ = stream.set_nodelay(true);
                self.connection = Some(Framed::new(stream, frame_codec()));
                self.uplink.on_connected(self.now_ms(), fresh_nonce())
            }
            Err(_) => {
                self.uplink.on_disconnected(self.now_ms());
                Vec::new()
            }
        }
    }

    fn on_frame_read(&mut self, frame: Option<io::Result<BytesMut>>) -> Vec<UplinkAction> {
        match frame {
            Some(Ok(payload)) => self.uplink.on_frame(self.now_ms(), &payload, &self.local),
            // Closed, failed, or a length above the limit: the core
            // reconnects and resends from the committed mark either way.
            None | Some(Err(_)) => {
                self.disconnect();
                Vec::new()
            }
        }
    }

    fn disconnect(&mut self) {
        self.connection = None;
        self.uplink.on_disconnected(self.now_ms());
    }

    /// Carries out the core's actions in order. Frames are queued and
    /// written once at the end, so a batch of Submits costs one flush.
    async fn execute(&mut self, actions: Vec<UplinkAction>) {
        for action in actions {
            match action {
                UplinkAction::Connect(address) => {
                    self.connection = None;
                    self.connecting = Some(connect(address));
                }
                UplinkAction::Send(payload) => {
                    let Some(connection) = self.connection.as_mut() else {
                        continue;
                    };
                    if connection.feed(Bytes::from(payload)).await.is_err() {
                        // The reports after it must still be delivered.
                        self.disconnect();
                    }
                }
                UplinkAction::Close => {
                    // Frames still queued go down with the connection: the
                    // core resends from the committed mark on the next one.
                    self.connection = None;
                    self.connecting = None;
                }
                UplinkAction::Acknowledged(seq) => {
                    // Acknowledgements must not be lost: wait for room.
                    let _ = self.reports.send(UplinkReport::Acknowledged(seq)).await;
                }
                UplinkAction::Remote(command) => {
                    let _ = self.reports.send(UplinkReport::Remote(command)).await;
                }
            }
        }
        if let Some(connection) = self.connection.as_mut()
            && SinkExt::<Bytes>::flush(connection).await.is_err()
        {
            self.disconnect();
        }
    }

    /// Tells the machine when the link's state, primary or statistics
    /// changed. A state update is dropped when the channel is full: the
    /// next one supersedes it.
    fn report_state_change(&mut self) {
        let now = observe(&self.uplink);
        if now == self.reported {
            return;
        }
        self.reported = now.clone();
        let (state, primary, stats, refused) = now;
        let _ = self.reports.try_send(UplinkReport::State {
            state,
            primary,
            stats,
            refused,
        });
    }
}

fn observe(uplink: &Uplink) -> Reported {
    (
        uplink.state(),
        uplink.primary().map(str::to_owned),
        uplink.stats().clone(),
        uplink.refused().cloned(),
    )
}

fn connect(address: String) -> Connecting {
    Box::pin(async move {
        let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
        match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::from(io::ErrorKind::TimedOut)),
        }
    })
}

/// Starts an uplink on the current tokio runtime.
pub fn spawn_uplink<L: LocalEvents + Send + 'static>(
    uplink: Uplink,
    local: L,
    reports: tokio::sync::mpsc::Sender<UplinkReport>,
) -> (UplinkControl, tokio::task::JoinHandle<UplinkStats>) {
    let appended = Arc::new(tokio::sync::Notify::new());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(run_uplink(
        uplink,
        local,
        appended.clone(),
        stopped,
        reports,
    ));
    (UplinkControl { appended, stop }, task)
}

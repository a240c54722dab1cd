//! The tokio shell around [`Uplink`]: a machine's background connection to
//! the replicas. It owns the TCP connection, feeds frames and time to the
//! sans-I/O core, and reports acknowledgements and remote commands. The
//! machine's own ledger is the source of the events ([`LocalLedger`]).

use crate::link::{FrameBuffer, encode_frame, fresh_nonce};
use crate::uplink::{LinkState, LocalEvents, Uplink, UplinkAction, UplinkStats};
use ledger::rules::RemoteCommand;
use ledger::store::record::SignedEvent;
use ledger::{Ledger, MachineId};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// How often the uplink core is given the time.
const UPLINK_TICK: Duration = Duration::from_millis(10);

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
    },
}

/// Handles for talking to a running uplink.
pub struct UplinkControl {
    /// Wake the uplink after appending local events.
    pub appended: Arc<tokio::sync::Notify>,
    pub stop: tokio::sync::watch::Sender<bool>,
}

struct Connection {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    buffer: FrameBuffer,
}

/// Runs the uplink until stopped. Reports go to `reports` (bounded; when
/// the machine does not read them, state updates are dropped first).
pub async fn run_uplink<L: LocalEvents>(
    mut uplink: Uplink,
    local: L,
    appended: Arc<tokio::sync::Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    reports: tokio::sync::mpsc::Sender<UplinkReport>,
) -> UplinkStats {
    let started = Instant::now();
    let now_ms = move || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut connection: Option<Connection> = None;
    let mut connecting: Option<
        std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<TcpStream>> + Send>>,
    > = None;
    let mut ticker = tokio::time::interval(UPLINK_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut last_state = (
        uplink.state(),
        uplink.primary().map(str::to_owned),
        uplink.stats().clone(),
    );
    loop {
        let actions = tokio::select! {
            _ = stop.changed() => break,
            _ = ticker.tick() => uplink.tick(now_ms(), &local),
            () = appended.notified() => uplink.on_local_append(&local),
            result = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                connecting = None;
                match result {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        let (reader, writer) = stream.into_split();
                        connection = Some(Connection { reader, writer, buffer: FrameBuffer::default() });
                        uplink.on_connected(now_ms(), fresh_nonce())
                    }
                    Err(_) => {
                        uplink.on_disconnected(now_ms());
                        Vec::new()
                    }
                }
            }
            read = async { connection.as_mut().expect("guarded").reader.read(&mut chunk).await }, if connection.is_some() => {
                match read {
                    Ok(0) | Err(_) => {
                        connection = None;
                        uplink.on_disconnected(now_ms());
                        Vec::new()
                    }
                    Ok(n) => frames_in(&mut uplink, &mut connection, &chunk[..n], &local, now_ms()),
                }
            }
        };
        execute(
            actions,
            &mut uplink,
            &mut connection,
            &mut connecting,
            &reports,
            now_ms(),
        )
        .await;
        let state = (
            uplink.state(),
            uplink.primary().map(str::to_owned),
            uplink.stats().clone(),
        );
        if state != last_state {
            last_state = state.clone();
            let _ = reports.try_send(UplinkReport::State {
                state: state.0,
                primary: state.1,
                stats: state.2,
            });
        }
    }
    uplink.stats().clone()
}

fn frames_in<L: LocalEvents>(
    uplink: &mut Uplink,
    connection: &mut Option<Connection>,
    bytes: &[u8],
    local: &L,
    now_ms: u64,
) -> Vec<UplinkAction> {
    let Some(conn) = connection.as_mut() else {
        return Vec::new();
    };
    conn.buffer.extend(bytes);
    let mut actions = Vec::new();
    loop {
        match conn.buffer.next_frame() {
            Ok(Some(payload)) => actions.extend(uplink.on_frame(now_ms, &payload, local)),
            Ok(None) => return actions,
            Err(_) => {
                *connection = None;
                uplink.on_disconnected(now_ms);
                return actions;
            }
        }
    }
}

type Connecting =
    Option<std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<TcpStream>> + Send>>>;

async fn execute(
    actions: Vec<UplinkAction>,
    uplink: &mut Uplink,
    connection: &mut Option<Connection>,
    connecting: &mut Connecting,
    reports: &tokio::sync::mpsc::Sender<UplinkReport>,
    now_ms: u64,
) {
    for action in actions {
        match action {
            UplinkAction::Connect(address) => {
                *connection = None;
                *connecting = Some(Box::pin(async move {
                    tokio::time::timeout(
                        Duration::from_millis(crate::uplink::CONNECT_TIMEOUT_MS),
                        TcpStream::connect(address),
                    )
                    .await
                    .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut)))
                }));
            }
            UplinkAction::Send(payload) => {
                let Some(conn) = connection.as_mut() else {
                    continue;
                };
                if conn
                    .writer
                    .write_all(&encode_frame(&payload))
                    .await
                    .is_err()
                {
                    *connection = None;
                    uplink.on_disconnected(now_ms);
                    return;
                }
            }
            UplinkAction::Close => {
                *connection = None;
                *connecting = None;
            }
            UplinkAction::Acknowledged(seq) => {
                // Acknowledgements must not be lost: wait for room.
                let _ = reports.send(UplinkReport::Acknowledged(seq)).await;
            }
            UplinkAction::Remote(command) => {
                let _ = reports.send(UplinkReport::Remote(command)).await;
            }
        }
    }
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

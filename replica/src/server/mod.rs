//! The I/O shell of a replica, in four parts:
//!
//! * [`core`]: the core thread, which drives the replica's
//!   [`Round`](crate::round::Round) and carries out what each round
//!   releases (datagrams, machine frames);
//! * [`udp`]: the thread that receives replication datagrams;
//! * [`sessions`]: machine connections (an accept loop within the caps and
//!   a task per session, with its deadlines);
//! * [`limits`]: the descriptor limit, raised at start, and the connection
//!   caps derived from it;
//! * [`status`]: the read ports the dashboard uses (a snapshot published
//!   after rounds, the live feed of committed entries);
//! * [`log_reader`]: how the dashboard reads the log (and its index of
//!   each machine's entries).
//!
//! [`run`] serves a replica on listeners the caller bound (tests bind port
//! 0) until a shutdown future completes; [`start`] binds from the
//! configuration and runs it in the background.

mod core;
pub mod limits;
mod log_reader;
mod sessions;
mod status;
mod udp;

pub use self::core::{INPUT_QUEUE_MAX, INPUTS_PER_ROUND_MAX};
pub use limits::{ConnectionBudget, MACHINE_CONNECTIONS_MAX, MACHINE_HANDSHAKES_MAX};
pub use sessions::{MACHINE_HANDSHAKE_TIMEOUT, SESSION_FRAME_TIMEOUT, SESSION_WRITE_QUEUE_FRAMES};

use self::core::{Core, CoreInput};
use crate::config::ReplicaConfig;
use crate::round::{Input, Round, RoundConfig, Start};
use crate::transport::{DatagramSender, UdpSender, sender};
use crate::wire::DatagramCodec;
use dashboard::ports::{
    COMMITTED_FEED_ENTRIES_MAX, OPERATOR_REQUESTS_MAX, OperatorRequest, ReadPorts, Snapshot,
};
use ledger::Ledger;
use ledger::keys::{Keyring, SkippedKeyFile};
use ledger::store::links::RecentLinks;
use ledger::store::promise::PromiseFile;
use ledger::store::{OpenOptions, StoreError};
use log_reader::StoreLogReader;
use status::{Publisher, ReadableTip};
use std::future::Future;
use std::net::{SocketAddrV4, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};

/// Why a replica could not start or run. Each message includes its
/// cause's text and does not also return the cause as a `source`: the
/// binaries print error chains with `{:#}`, which would say it twice.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("configuration: {0}")]
    Config(crate::config::ConfigError),
    #[error("keys: {0}")]
    Keys(ledger::keys::KeyringError),
    #[error("log: {0}")]
    Store(StoreError),
    #[error("{context}: {error}")]
    Io {
        context: String,
        error: std::io::Error,
    },
    #[error("transport: {0}")]
    Transport(crate::transport::TransportError),
}

impl From<crate::config::ConfigError> for ServerError {
    fn from(error: crate::config::ConfigError) -> ServerError {
        ServerError::Config(error)
    }
}

impl From<ledger::keys::KeyringError> for ServerError {
    fn from(error: ledger::keys::KeyringError) -> ServerError {
        ServerError::Keys(error)
    }
}

impl From<StoreError> for ServerError {
    fn from(error: StoreError) -> ServerError {
        ServerError::Store(error)
    }
}

impl From<crate::transport::TransportError> for ServerError {
    fn from(error: crate::transport::TransportError) -> ServerError {
        ServerError::Transport(error)
    }
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let context = context.into();
    move |error| ServerError::Io { context, error }
}

/// Where frames for one machine session go (to its writing task).
pub type SessionWriter = tokio::sync::mpsc::Sender<Vec<u8>>;

/// Datagrams the receiving thread dropped before the core saw them.
#[derive(Default)]
pub struct ReceiveDrops {
    /// By `drop_received_percent` (fault injection).
    pub injected: AtomicU64,
    /// Because the core's input queue was full (the sender repairs them
    /// like any other loss).
    pub queue_full: AtomicU64,
}

/// The sockets a replica serves on.
pub struct Listeners {
    pub machine: TcpListener,
    pub status: TcpListener,
    pub replication: UdpSocket,
}

impl Listeners {
    /// Binds the addresses of `config`.
    pub fn bind(config: &ReplicaConfig) -> Result<Listeners, ServerError> {
        let bind_tcp = |address: SocketAddrV4, what: &str| {
            TcpListener::bind(address)
                .map_err(io_error(format!("binding the {what} port {address}")))
        };
        Ok(Listeners {
            machine: bind_tcp(config.machine_listen, "machine")?,
            status: bind_tcp(config.status_listen, "status")?,
            replication: UdpSocket::bind(config.replication_listen).map_err(io_error(format!(
                "binding the replication port {}",
                config.replication_listen
            )))?,
        })
    }
}

/// Completes when the stop flag is raised (or its sender is gone).
async fn until_stopped(stopped: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *stopped.borrow_and_update() {
            return;
        }
        if stopped.changed().await.is_err() {
            return;
        }
    }
}

/// How the dashboard reads the log from other threads: RocksDB, and the
/// links of the newest entries the core wrote.
type LogReadHandles = (ledger::store::rocks::RocksReader, RecentLinks);

/// The newest entries whose chain links the store keeps for the dashboard
/// (about 120 bytes each: 8 MB). The chain check, every 50 ms while the
/// log grows, stays within it with a wide margin (~11,000 entries between
/// passes at 220,000 committed entries/s); behind it, it reads RocksDB.
const RECENT_LINKS_MAX: usize = 65_536;

/// Opens the replica's log and builds its core.
/// Also returns the machine key files the keyring skipped (and warned
/// about), so the key loader does not warn about them again.
fn open_core(
    config: &ReplicaConfig,
    load_keys: SyncSender<()>,
) -> Result<(Core, LogReadHandles, Vec<SkippedKeyFile>), ServerError> {
    // A replica makes no key of its own: a cluster key nobody else has
    // would leave it running alone, and a new store key cannot open the
    // log it already has. `vendctl keys` makes them.
    let keyring = Keyring::open(&config.keys_dir)?;
    let cluster_key = keyring.cluster_key()?;
    let mut skipped = Vec::new();
    warn_skipped(&keyring, &mut skipped);
    std::fs::create_dir_all(&config.data_dir)
        .map_err(io_error(format!("creating {}", config.data_dir.display())))?;
    let (mut ledger, damaged) = open_log(config, &keyring)?;
    ledger.set_checkpoint_in_background(true);
    let recent = ledger.store_mut().keep_recent_links(RECENT_LINKS_MAX);
    let reader = (ledger.store().backend().reader(), recent);
    let start = Start {
        keys: keyring,
        codec: DatagramCodec::new(config.cluster_id, &cluster_key),
        promises: Box::new(PromiseFile::new(&config.data_dir)),
        incarnation_floor: u64::try_from(self::core::wall_ms()).unwrap_or(0),
        seed: rand::random(),
        damaged,
    };
    let round = Round::open(round_config(config), ledger, start)?;
    tracing::info!(replica = %config.name, transport = %config.transport, "replica ready");
    let core = Core {
        config: config.clone(),
        round,
        sender: datagram_sender(config)?,
        sessions: std::collections::HashMap::new(),
        started: Instant::now(),
        receive_drops: Arc::default(),
        load_keys,
        replies: std::collections::HashMap::new(),
        next_request: 1,
        shutdown: false,
        slow_rounds: self::core::SlowRounds::default(),
    };
    Ok((core, reader, skipped))
}

fn round_config(config: &ReplicaConfig) -> RoundConfig {
    RoundConfig {
        node: config.node_config(),
        name: config.name.clone(),
        cluster_id: config.cluster_id,
        payload_bytes_max: payload_bytes(config),
        machine_addresses: std::iter::once((config.id, config.machine_listen.to_string()))
            .chain(
                config
                    .peers
                    .iter()
                    .map(|p| (p.id, p.machine_addr.to_string())),
            )
            .collect(),
    }
}

/// The datagram payload this replica sends: `payload_bytes_max`, cut to
/// the smallest path MTU to where its datagrams go (its peers, or the
/// broadcast address). Loopback (65,535) and jumbo frames take the whole
/// budget; Ethernet takes 1,472. A path that cannot be probed gets 1,400,
/// which fits any Ethernet.
fn payload_bytes(config: &ReplicaConfig) -> usize {
    use crate::transport::{path_mtu, payload_bytes_for_mtu};
    use crate::wire::PAYLOAD_BYTES_MIN;
    let source = match config.transport {
        crate::transport::TransportKind::Udp => *config.replication_listen.ip(),
        crate::transport::TransportKind::Raw => *config.raw_source().ip(),
    };
    let destinations: Vec<SocketAddrV4> = match config.broadcast {
        Some(broadcast) => vec![broadcast],
        None => config.peers.iter().map(|p| p.replication_addr).collect(),
    };
    let mut payload = config.payload_bytes_max;
    for destination in destinations {
        let fits = match path_mtu(source, destination) {
            Ok(mtu) => payload_bytes_for_mtu(config.payload_bytes_max, mtu, PAYLOAD_BYTES_MIN),
            Err(error) => {
                tracing::warn!(%error, "datagrams to {destination} carry {PAYLOAD_BYTES_MIN} bytes");
                PAYLOAD_BYTES_MIN
            }
        };
        payload = payload.min(fits);
    }
    tracing::info!(payload_bytes = payload, "replication datagram payload");
    payload
}

fn datagram_sender(config: &ReplicaConfig) -> Result<Box<dyn DatagramSender>, ServerError> {
    Ok(match config.transport {
        crate::transport::TransportKind::Udp => {
            let local = SocketAddrV4::new(*config.replication_listen.ip(), 0);
            Box::new(UdpSender::bind(local)?)
        }
        kind => sender(kind, config.raw_source())?,
    })
}

/// Opens the log and checks its chain. A damaged log is never served: it
/// is moved aside (kept for the operator to inspect) and a fresh one is
/// opened, which the replica repairs from its peers before it votes,
/// stands or acknowledges. Returns whether that happened.
fn open_log(config: &ReplicaConfig, keyring: &Keyring) -> Result<(Ledger, bool), ServerError> {
    // One fsync per round of inputs, not per write: see `Round`.
    let options = OpenOptions {
        create: true,
        deferred_sync: true,
        memtable_bytes: usize::try_from(config.log_memtable_mib).unwrap_or(1) << 20,
        ..OpenOptions::default()
    };
    let opened = Ledger::open(&config.log_dir(), keyring.store_key(), options)
        .and_then(|ledger| ledger.store().check_chain().map(|()| ledger));
    let error = match opened {
        Ok(ledger) => return Ok((ledger, false)),
        Err(error) if error.is_damage() => error,
        Err(error) => return Err(error.into()),
    };
    let aside = config
        .data_dir
        .join(format!("log.damaged-{}", self::core::wall_ms()));
    tracing::error!(
        replica = %config.name,
        error = %error,
        moved_to = %aside.display(),
        "this replica's log is damaged; it is moved aside and the replica rebuilds its log from its peers, without standing or acknowledging until it holds what it had promised (it votes only for a candidate holding all of that)"
    );
    std::fs::rename(config.log_dir(), &aside).map_err(io_error(format!(
        "moving the damaged log to {}",
        aside.display()
    )))?;
    let ledger = Ledger::open(&config.log_dir(), keyring.store_key(), options)?;
    Ok((ledger, true))
}

/// Reloads the key directory when the core asks, off the core thread
/// (a directory of thousands of machine keys takes a while to read).
///
/// `warned` lists the skipped key files reported already (at start or at an
/// earlier reload), so a stranger knocking every second does not repeat
/// the same warnings.
fn load_keys_on_request(
    keys_dir: std::path::PathBuf,
    requests: Receiver<()>,
    inputs: SyncSender<CoreInput>,
    mut warned: Vec<SkippedKeyFile>,
) {
    for () in requests {
        match Keyring::open(&keys_dir) {
            Ok(keyring) => {
                warn_skipped(&keyring, &mut warned);
                if inputs.send(CoreInput::Round(Input::Keys(keyring))).is_err() {
                    return;
                }
            }
            Err(error) => tracing::warn!(
                error = %error,
                "could not reload the key directory; the keys loaded before stay in use"
            ),
        }
    }
}

/// Warns about machine key files the keyring skipped (each one once per
/// `warned` list): those machines cannot connect, the others can.
fn warn_skipped(keyring: &Keyring, warned: &mut Vec<SkippedKeyFile>) {
    for skipped in keyring.skipped() {
        if !warned.contains(skipped) {
            tracing::warn!(
                file = %skipped.path.display(),
                problem = %skipped.problem,
                "a machine key file is unreadable and skipped; that machine cannot connect"
            );
            warned.push(skipped.clone());
        }
    }
}

/// The threads of a running replica, joined at shutdown.
struct Threads {
    core: std::thread::JoinHandle<()>,
    udp: std::thread::JoinHandle<()>,
    keys: std::thread::JoinHandle<()>,
}

/// Starts the core, the UDP receiver and the key loader threads.
fn spawn_threads(
    config: &ReplicaConfig,
    replication: UdpSocket,
    stopping: &Arc<AtomicBool>,
) -> Result<(Threads, SyncSender<CoreInput>, ReadPorts), ServerError> {
    let (inputs, receiver) = std::sync::mpsc::sync_channel::<CoreInput>(INPUT_QUEUE_MAX);
    let (load_keys, key_requests) = std::sync::mpsc::sync_channel::<()>(1);
    let (snapshot_tx, snapshot) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    let (projection_tx, projection) = tokio::sync::watch::channel(Arc::default());
    let (committed, _) = tokio::sync::broadcast::channel(COMMITTED_FEED_ENTRIES_MAX);
    let readable_tip = Arc::new(ReadableTip::default());
    let (mut core, reader, skipped) = open_core(config, load_keys)?;
    let mut publisher = Publisher::new(
        snapshot_tx,
        projection_tx,
        committed.clone(),
        readable_tip.clone(),
        core.round.node().commit_gseq(),
    );
    udp::prepare_socket(&replication).map_err(io_error("preparing the replication socket"))?;
    let drops = core.receive_drops.clone();
    let drop_percent = config.drop_received_percent;
    let spawn = |name: &str| std::thread::Builder::new().name(name.into());
    let udp = {
        let (inputs, stopping) = (inputs.clone(), stopping.clone());
        spawn("udp-receive")
            .spawn(move || {
                udp::receive_datagrams(&replication, &inputs, &stopping, drop_percent, &drops)
            })
            .map_err(io_error("starting the UDP thread"))?
    };
    let keys = {
        let (inputs, dir) = (inputs.clone(), config.keys_dir.clone());
        spawn("key-loader")
            .spawn(move || load_keys_on_request(dir, key_requests, inputs, skipped))
            .map_err(io_error("starting the key loader"))?
    };
    let (actions, operator_requests) = tokio::sync::mpsc::channel(OPERATOR_REQUESTS_MAX);
    forward_operator_requests(operator_requests, inputs.clone());
    let core = spawn("replica-core")
        .spawn(move || core.run(&receiver, &mut publisher))
        .map_err(io_error("starting the core thread"))?;
    let log = Arc::new(StoreLogReader::new(reader, readable_tip, snapshot.clone()));
    log_reader::keep_index_current(Arc::downgrade(&log));
    let ports = ReadPorts {
        snapshot,
        projection,
        log,
        committed,
        actions,
    };
    Ok((Threads { core, udp, keys }, inputs, ports))
}

/// Operator requests arrive on a tokio channel (the dashboard is async);
/// a small thread moves them into the core's queue.
fn forward_operator_requests(
    mut requests: tokio::sync::mpsc::Receiver<OperatorRequest>,
    inputs: SyncSender<CoreInput>,
) {
    let spawned = std::thread::Builder::new()
        .name("operator-requests".into())
        .spawn(move || {
            while let Some(request) = requests.blocking_recv() {
                if inputs.send(CoreInput::Operator(request)).is_err() {
                    return;
                }
            }
        });
    if let Err(error) = spawned {
        tracing::error!(error = %error, "operator requests cannot reach the core");
    }
}

/// What the dashboard needs besides the read ports: keys derived from the
/// cluster key (so a session made on one replica is valid on every one),
/// TLS files, alert thresholds and where the peers' dashboards are. Live
/// updates get at most half the status port's connections.
fn dashboard_options(
    config: &ReplicaConfig,
    http_connections: usize,
) -> Result<dashboard::DashboardOptions, ServerError> {
    let cluster_key = Keyring::open(&config.keys_dir)?.cluster_key()?;
    let dashboard_config = &config.dashboard;
    Ok(dashboard::DashboardOptions {
        session_key: blake3::derive_key(
            dashboard::auth::session::SESSION_KEY_CONTEXT,
            cluster_key.as_bytes(),
        ),
        admin_key: dashboard::auth::cluster::admin_key(&cluster_key),
        tls: dashboard_config.tls(),
        thresholds: dashboard_config.thresholds(),
        peers: config
            .peers
            .iter()
            .filter_map(|peer| {
                Some(dashboard::PeerDashboard {
                    name: peer.name.clone(),
                    address: std::net::SocketAddr::V4(peer.status_addr?),
                })
            })
            .collect(),
        sse_subscribers_max: dashboard_config
            .sse_subscribers_max
            .min((http_connections / 2).max(1)),
    })
}

/// Serves a replica on `listeners` until `shutdown` completes, then stops
/// every part of it (the core saves its commit hint and a checkpoint).
pub async fn run(
    config: ReplicaConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    run_with_ports(config, listeners, shutdown, None).await
}

/// [`run`], handing a copy of the read ports to `ports_out` once the core
/// is up (for [`ReplicaHandle::ports`]).
async fn run_with_ports(
    config: ReplicaConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    ports_out: Option<std::sync::mpsc::Sender<ReadPorts>>,
) -> Result<(), ServerError> {
    config.validate()?;
    let budget = limits::budget_at_start();
    let stopping = Arc::new(AtomicBool::new(false));
    let (threads, inputs, ports) = {
        let config = config.clone();
        let stopping = stopping.clone();
        tokio::task::spawn_blocking(move || {
            spawn_threads(&config, listeners.replication, &stopping)
        })
        .await
        .map_err(|e| io_error("starting the replica")(std::io::Error::other(e)))??
    };
    if let Some(out) = ports_out {
        let _ = out.send(ports.clone());
    }
    let (stop_network, network_stopped) = tokio::sync::watch::channel(false);
    let to_tokio = |listener: TcpListener, what: &str| {
        listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
            .map_err(io_error(format!("serving the {what} port")))
    };
    let machine = to_tokio(listeners.machine, "machine")?;
    let status = to_tokio(listeners.status, "status")?;
    let accept = tokio::spawn(sessions::accept_machines(
        machine,
        inputs.clone(),
        dashboard::admission::AdmissionLimits {
            connections_max: budget.machine_connections,
            exposed_max: budget.machine_handshakes,
        },
        network_stopped.clone(),
    ));
    let http_limits = dashboard::HttpLimits {
        connections_max: budget.http_connections,
        ..dashboard::HttpLimits::default()
    };
    let options = dashboard_options(&config, budget.http_connections)?;
    let mut status_stopped = network_stopped.clone();
    let http = tokio::spawn(async move {
        let shutdown = async move { until_stopped(&mut status_stopped).await };
        if let Err(e) = dashboard::serve(status, ports, http_limits, options, shutdown).await {
            tracing::error!(error = %e, "the dashboard stopped");
        }
    });
    shutdown.await;
    tracing::info!(replica = %config.name, "stopping");
    let _ = stop_network.send(true);
    let _ = inputs.send(CoreInput::Shutdown);
    stopping.store(true, Ordering::SeqCst);
    drop(inputs);
    let _ = tokio::task::spawn_blocking(move || {
        let _ = threads.core.join();
        let _ = threads.udp.join();
        let _ = threads.keys.join();
    })
    .await;
    let _ = accept.await;
    let _ = tokio::time::timeout(Duration::from_secs(2), http).await;
    Ok(())
}

/// A replica running in the background (see [`start`]).
pub struct ReplicaHandle {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
    done: Option<tokio::task::JoinHandle<Result<(), ServerError>>>,
    ports: Option<ReadPorts>,
}

impl ReplicaHandle {
    /// The replica's read ports, as its dashboard gets them (a process
    /// that runs a replica in the background, such as a test, reads and
    /// asks it through these).
    pub fn ports(&self) -> Option<&ReadPorts> {
        self.ports.as_ref()
    }

    /// Stops the replica and waits for it.
    pub fn shutdown(mut self) {
        self.stop_and_wait();
    }

    fn stop_and_wait(&mut self) {
        self.ports = None;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let (Some(runtime), Some(done)) = (self.runtime.take(), self.done.take()) {
            match runtime.block_on(done) {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::error!(error = %error, "the replica stopped with an error")
                }
                Err(error) => tracing::error!(error = %error, "the replica's task failed"),
            }
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Drop for ReplicaHandle {
    fn drop(&mut self) {
        self.stop_and_wait();
    }
}

/// Binds the configured addresses and runs the replica on a runtime of its
/// own until the handle is shut down or dropped.
pub fn start(config: ReplicaConfig) -> Result<ReplicaHandle, ServerError> {
    config.validate()?;
    let listeners = Listeners::bind(&config)?;
    start_with(config, listeners)
}

/// Like [`start`], on listeners the caller bound.
pub fn start_with(
    config: ReplicaConfig,
    listeners: Listeners,
) -> Result<ReplicaHandle, ServerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("replica-io")
        .build()
        .map_err(io_error("starting the async runtime"))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (started_tx, started) = std::sync::mpsc::channel();
    let (ports_tx, ports) = std::sync::mpsc::channel();
    let done = runtime.spawn(async move {
        let shutdown = async move {
            let _ = started_tx.send(());
            let _ = stopped.await;
        };
        run_with_ports(config, listeners, shutdown, Some(ports_tx)).await
    });
    let mut handle = ReplicaHandle {
        stop: Some(stop),
        runtime: Some(runtime),
        done: Some(done),
        ports: None,
    };
    // `run` awaits the shutdown future only once every part is up: an
    // error before that (the log, the keys, a socket) is returned here.
    if started.recv().is_err() {
        let runtime = handle.runtime.take().expect("set above");
        let done = handle.done.take().expect("set above");
        return match runtime.block_on(done) {
            Ok(Ok(())) => Err(io_error("starting the replica")(std::io::Error::other(
                "stopped while starting",
            ))),
            Ok(Err(error)) => Err(error),
            Err(join) => Err(io_error("starting the replica")(std::io::Error::other(
                join,
            ))),
        };
    }
    // Sent before `run` waits for the shutdown, so it is here by now.
    handle.ports = ports.try_recv().ok();
    Ok(handle)
}

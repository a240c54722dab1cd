//! Bounds on every connection, against real processes: three replicas
//! whose descriptor limit is 1,024 (soft and hard, so they cannot raise
//! it). While 1,100 slow HTTP clients (a partial request line, then a
//! byte now and then) and 1,100 idle TCP connections to the machine port
//! press on the primary, reconnecting whenever they are closed, `vendctl
//! status` still answers for it and a real fleet gets every event
//! acknowledged. Meanwhile an authenticated session lives on pings and is
//! cut when it trickles a partial frame, and a stranger trickling its
//! hello is cut at the handshake deadline.
//!
//! Only loopback traffic; every loop stops by itself at `FLOOD_LIMIT`.

mod common;

use common::{
    Cluster, acked_per_machine, base_port, check_replica_holds, finish_fleet, init_cluster,
    primaries, raise_own_descriptor_limit, start_fleet, vendctl,
};
use ledger::MachineId;
use ledger::crypto::{NONCE_BYTES, SecretKey};
use ledger::keys::Keyring;
use link::channel::{
    Channel, Downstream, Hello, HelloReply, LINK_VERSION, Side, Upstream, decode_plain,
    encode_plain,
};
use replica::server::{MACHINE_HANDSHAKE_TIMEOUT, SESSION_FRAME_TIMEOUT};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The replicas' RLIMIT_NOFILE, soft and hard.
const DESCRIPTORS: u64 = 1_024;
/// Slow clients on each of the primary's two TCP ports.
const SLOW_CLIENTS: usize = 1_100;
/// A slow HTTP client adds a byte this often.
const TRICKLE_INTERVAL: Duration = Duration::from_millis(1_000);
/// A slow client closed by the server comes back after this.
const RECONNECT_DELAY: Duration = Duration::from_millis(1_000);
/// Every flood loop ends by then, whatever happens.
const FLOOD_LIMIT: Duration = Duration::from_secs(120);
/// How long the authenticated session pings before it starts trickling:
/// longer than the handshake and frame deadlines together.
const PINGING: Duration = Duration::from_secs(12);
const MACHINES: u32 = 3;
const EVENTS_PER_MACHINE: u64 = 150;

#[derive(Default)]
struct FloodCounters {
    connects: AtomicU64,
    connect_failures: AtomicU64,
    /// Connections the server ended (timed out, evicted or refused).
    closed_by_server: AtomicU64,
    /// Open now, from the clients' side, and the most at once.
    open: AtomicUsize,
    open_peak: AtomicUsize,
}

impl FloodCounters {
    fn opened(&self) {
        self.connects.fetch_add(1, Ordering::Relaxed);
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.open_peak.fetch_max(open, Ordering::Relaxed);
    }

    fn report(&self, what: &str) -> String {
        format!(
            "{what}: {} connects ({} failed), {} closed by the server, {} open now, {} open at most",
            self.connects.load(Ordering::Relaxed),
            self.connect_failures.load(Ordering::Relaxed),
            self.closed_by_server.load(Ordering::Relaxed),
            self.open.load(Ordering::Relaxed),
            self.open_peak.load(Ordering::Relaxed),
        )
    }
}

/// One slow client: connects, sends `opening`, then `trickle` (if any)
/// every `TRICKLE_INTERVAL` until the server closes the connection; then
/// comes back after `RECONNECT_DELAY`. Ends when `stop` is raised or at
/// `deadline`.
async fn slow_client(
    address: SocketAddr,
    opening: &'static [u8],
    trickle: Option<&'static [u8]>,
    counters: Arc<FloodCounters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    deadline: tokio::time::Instant,
) {
    while !*stop.borrow() && tokio::time::Instant::now() < deadline {
        let connected = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(address),
        )
        .await;
        let Ok(Ok(stream)) = connected else {
            counters.connect_failures.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(RECONNECT_DELAY).await;
            continue;
        };
        counters.opened();
        let (mut reading, mut writing) = stream.into_split();
        let mut closed = writing.write_all(opening).await.is_err();
        let mut buffer = [0u8; 512];
        let mut next_byte = tokio::time::Instant::now() + TRICKLE_INTERVAL;
        while !closed {
            tokio::select! {
                read = reading.read(&mut buffer) => closed = matches!(read, Ok(0) | Err(_)),
                () = tokio::time::sleep_until(next_byte), if trickle.is_some() => {
                    next_byte += TRICKLE_INTERVAL;
                    let byte = trickle.expect("checked");
                    closed = writing.write_all(byte).await.is_err();
                }
                _ = stop.changed() => break,
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        counters.open.fetch_sub(1, Ordering::Relaxed);
        if !closed {
            return;
        }
        counters.closed_by_server.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            () = tokio::time::sleep(RECONNECT_DELAY) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The flood: `SLOW_CLIENTS` slow HTTP clients on `status` and as many
/// idle connections on `machine`, on a runtime of its own, until `stop`.
struct Flood {
    http: Arc<FloodCounters>,
    machine: Arc<FloodCounters>,
    stop: tokio::sync::watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

impl Flood {
    fn start(status: SocketAddr, machine: SocketAddr) -> Flood {
        let http = Arc::new(FloodCounters::default());
        let machines = Arc::new(FloodCounters::default());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let thread = {
            let (http, machines) = (http.clone(), machines.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let deadline = tokio::time::Instant::now() + FLOOD_LIMIT;
                    let mut tasks = tokio::task::JoinSet::new();
                    for _ in 0..SLOW_CLIENTS {
                        tasks.spawn(slow_client(
                            status,
                            b"GET /api/v1/status HTTP/1.1\r\nHo",
                            Some(b"s"),
                            http.clone(),
                            stopped.clone(),
                            deadline,
                        ));
                        tasks.spawn(slow_client(
                            machine,
                            b"",
                            None,
                            machines.clone(),
                            stopped.clone(),
                            deadline,
                        ));
                    }
                    while tasks.join_next().await.is_some() {}
                });
            })
        };
        Flood {
            http,
            machine: machines,
            stop,
            thread,
        }
    }

    fn stop(self) {
        let _ = self.stop.send(true);
        self.thread.join().unwrap();
    }
}

fn write_frame(stream: &mut TcpStream, payload: &[u8]) -> std::io::Result<()> {
    let length = u32::try_from(payload.len()).unwrap().to_be_bytes();
    stream.write_all(&[&length[..], payload].concat())
}

fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length)?;
    let mut payload = vec![0u8; u32::from_be_bytes(length) as usize];
    stream.read_exact(&mut payload)?;
    Ok(payload)
}

/// A machine's session with the primary: handshake, then pings.
struct Session {
    stream: TcpStream,
    channel: Channel,
}

impl Session {
    fn open(address: SocketAddr, machine: &MachineId, link_key: &SecretKey) -> Session {
        let mut stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let client_nonce = [7u8; NONCE_BYTES];
        let hello = Hello {
            version: LINK_VERSION,
            machine_id: machine.clone(),
            client_nonce,
        };
        write_frame(&mut stream, &encode_plain(&hello)).unwrap();
        let reply: HelloReply = decode_plain(&read_frame(&mut stream).unwrap()).unwrap();
        let mut channel = Channel::new(
            link_key,
            machine,
            &client_nonce,
            &reply.server_nonce,
            Side::Machine,
        );
        let welcome: Downstream = channel.open(&read_frame(&mut stream).unwrap()).unwrap();
        assert!(matches!(welcome, Downstream::Welcome { .. }), "{welcome:?}");
        let mut session = Session { stream, channel };
        assert!(session.ping(), "the first ping is answered");
        session
    }

    /// Sends a ping and reads frames until its ack; `false` if the
    /// session ended.
    fn ping(&mut self) -> bool {
        let ping = self.channel.seal(&Upstream::Ping { local_tip: 0 });
        if write_frame(&mut self.stream, &ping).is_err() {
            return false;
        }
        loop {
            let Ok(frame) = read_frame(&mut self.stream) else {
                return false;
            };
            match self.channel.open::<Downstream>(&frame) {
                Ok(Downstream::Ack { .. }) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }
}

/// Pings for `PINGING` (the session must live through the flood on pings
/// alone), then trickles a partial frame a byte every 500 ms. Returns the
/// pings answered and when the replica closed the session after the
/// last whole frame.
fn live_on_pings_then_trickle(mut session: Session) -> (u32, Option<Duration>) {
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < PINGING {
        if !session.ping() {
            return (answered, Some(Duration::ZERO));
        }
        answered += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(session.ping(), "the session is alive after {PINGING:?}");
    answered += 1;
    let last_frame = Instant::now();
    let stream = &mut session.stream;
    stream.write_all(&100u32.to_be_bytes()).unwrap();
    let limit = SESSION_FRAME_TIMEOUT + Duration::from_secs(10);
    stream.set_nonblocking(true).unwrap();
    let mut buffer = [0u8; 256];
    while last_frame.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(500));
        match stream.read(&mut buffer) {
            Ok(0) => return (answered, Some(last_frame.elapsed())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return (answered, Some(last_frame.elapsed())),
        }
        if stream.write_all(b"x").is_err() {
            return (answered, Some(last_frame.elapsed()));
        }
    }
    (answered, None)
}

/// A stranger that never finishes its hello, a byte every 500 ms: closed
/// at the handshake deadline. Returns when, after connecting.
fn trickle_a_hello(address: SocketAddr) -> Option<Duration> {
    let mut stream = TcpStream::connect(address).unwrap();
    let connected = Instant::now();
    stream.write_all(&100u32.to_be_bytes()).unwrap();
    stream.set_nonblocking(true).unwrap();
    let mut buffer = [0u8; 64];
    while connected.elapsed() < MACHINE_HANDSHAKE_TIMEOUT + Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(500));
        match stream.read(&mut buffer) {
            Ok(0) => return Some(connected.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Some(connected.elapsed()),
        }
        if stream.write_all(b"x").is_err() {
            return Some(connected.elapsed());
        }
    }
    None
}

/// `vendctl status`, timed; the replica's line.
fn status_of(dir: &Path, index: usize) -> (Duration, Value) {
    let started = Instant::now();
    let out = vendctl(&["status", "--cluster", dir.to_str().unwrap()]);
    let took = started.elapsed();
    let lines: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    (took, lines.get(index).cloned().unwrap_or(Value::Null))
}

fn descriptor_limit_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_default()
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_replica_with_1024_descriptors_serves_machines_and_status_under_a_flood() {
    let own = raise_own_descriptor_limit();
    assert!(
        own >= 3 * SLOW_CLIENTS as u64,
        "this test holds {} connections; the hard descriptor limit is {own}",
        2 * SLOW_CLIENTS
    );
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("cluster");
    let topology = init_cluster(&dir, base_port());
    // A machine of our own, provisioned before the replicas load keys.
    let machine = MachineId::numbered(900);
    ledger::keys::create_machine_keys(&dir.join("keys"), std::slice::from_ref(&machine)).unwrap();
    let keyring = Keyring::open(&dir.join("keys")).unwrap();
    let link_key = keyring.link_key(&machine).unwrap();

    let mut cluster = Cluster::start_limited(&dir, topology, Some(DESCRIPTORS));
    let status = cluster.wait_for("a primary", Duration::from_secs(20), |s| {
        primaries(s).len() == 1
    });
    let primary = primaries(&status)[0].0;
    let follower = (primary + 1) % 3;
    let pid = cluster.children[primary].as_ref().unwrap().id();
    let limit_line = descriptor_limit_of(pid);
    assert!(
        limit_line
            .split_whitespace()
            .filter(|w| *w == "1024")
            .count()
            == 2,
        "{limit_line}"
    );
    // And without transparent huge pages (`replica::heap`), where the
    // kernel says.
    let thp = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|line| line.starts_with("THP_enabled:"))
        .map(str::to_owned);
    if let Some(line) = thp {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cluster.json")).unwrap()).unwrap();
    let address = |index: usize, field: &str| -> SocketAddr {
        file["replicas"][index][field]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (status_address, machine_address) = (
        address(primary, "dashboard"),
        address(primary, "machine_addr"),
    );

    // An authenticated session, opened before the flood, then left to live
    // on pings through it and to trickle a partial frame at the end.
    let session = Session::open(machine_address, &machine, &link_key);
    let pinger = std::thread::spawn(move || live_on_pings_then_trickle(session));
    // A stranger trickling its hello, on a follower nobody floods.
    let stranger = {
        let follower_machine = address(follower, "machine_addr");
        std::thread::spawn(move || trickle_a_hello(follower_machine))
    };

    let flood = Flood::start(status_address, machine_address);
    let flood_started = Instant::now();
    while (flood.http.connects.load(Ordering::Relaxed) < SLOW_CLIENTS as u64
        || flood.machine.connects.load(Ordering::Relaxed) < SLOW_CLIENTS as u64)
        && flood_started.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "flood up after {:?}\n  {}\n  {}",
        flood_started.elapsed(),
        flood.http.report("status port"),
        flood.machine.report("machine port")
    );

    // Status answers for the flooded primary, at once.
    let mut took = Vec::new();
    for _ in 0..5 {
        let (time, line) = status_of(&dir, primary);
        assert_eq!(
            line["reachable"],
            true,
            "status under the flood: {line:#}\n{}",
            flood.http.report("status port")
        );
        took.push(time);
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("vendctl status under the flood took {took:?}");

    // A real fleet gets every event acknowledged.
    let fleet_started = Instant::now();
    let fleet = start_fleet(&dir, MACHINES, EVENTS_PER_MACHINE, 60);
    let summary = finish_fleet(fleet, u64::from(MACHINES) * EVENTS_PER_MACHINE);
    eprintln!(
        "the fleet's {} events were acknowledged in {:?} under the flood\n  {}\n  {}",
        summary["events"],
        fleet_started.elapsed(),
        flood.http.report("status port"),
        flood.machine.report("machine port")
    );

    let (pings, closed) = pinger.join().unwrap();
    eprintln!(
        "the authenticated session: {pings} pings answered, then closed {closed:?} after its last whole frame"
    );
    assert!(
        pings as u128 >= PINGING.as_millis() / 1_000,
        "it lived on pings"
    );
    let closed = closed.expect("a trickled frame is cut");
    assert!(
        closed >= SESSION_FRAME_TIMEOUT - Duration::from_secs(1)
            && closed <= SESSION_FRAME_TIMEOUT + Duration::from_secs(3),
        "cut at the frame deadline ({SESSION_FRAME_TIMEOUT:?}), not {closed:?}"
    );
    let hello_closed = stranger.join().unwrap().expect("a trickled hello is cut");
    eprintln!("the stranger trickling its hello was closed after {hello_closed:?}");
    assert!(
        hello_closed >= MACHINE_HANDSHAKE_TIMEOUT - Duration::from_secs(1)
            && hello_closed <= MACHINE_HANDSHAKE_TIMEOUT + Duration::from_secs(3),
        "cut at the handshake deadline, not {hello_closed:?}"
    );

    let (time, line) = status_of(&dir, primary);
    assert_eq!(line["reachable"], true, "{line:#}");
    eprintln!("status, still under the flood: {time:?}");
    // The flood was real: every slow client got in at least once (the
    // server then closed most of them to keep its caps).
    assert!(flood.http.connects.load(Ordering::Relaxed) >= SLOW_CLIENTS as u64);
    assert!(flood.machine.connects.load(Ordering::Relaxed) >= SLOW_CLIENTS as u64);
    let flood_lasted = flood_started.elapsed();
    flood.stop();
    cluster.stop_all();

    // The caps were reached and said so, at most once per 10 s per port.
    let log = std::fs::read_to_string(dir.join(format!("replica-{}.log", primary + 1))).unwrap();
    let warnings = |port: &str| {
        log.lines()
            .filter(|line| line.contains("connections at their limit") && line.contains(port))
            .count()
    };
    let (status_warnings, machine_warnings) =
        (warnings("port=\"status\""), warnings("port=\"machine\""));
    let most = usize::try_from(flood_lasted.as_secs() / 10 + 2).unwrap();
    eprintln!(
        "limit warnings in {flood_lasted:?}: status {status_warnings}, machine {machine_warnings}"
    );
    assert!((1..=most).contains(&status_warnings), "{status_warnings}");
    assert!((1..=most).contains(&machine_warnings), "{machine_warnings}");
    for line in log.lines().filter(|line| {
        line.contains("connection caps")
            || line.contains("descriptor limit")
            || line.contains("connections at their limit")
    }) {
        eprintln!("  {line}");
    }
    assert!(
        log.contains("connection caps"),
        "the caps are logged at start"
    );

    let acked = acked_per_machine(&summary);
    check_replica_holds(&dir, primary + 1, &acked);
}

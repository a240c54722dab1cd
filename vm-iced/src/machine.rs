//! The machine itself, without a screen: every action goes through the
//! machine's core (`MachineCore::prepare`: the rules, signed on a copy), is
//! appended durably to the machine's own encrypted ledger, and only then
//! changes the state the screen shows (`MachineCore::commit`). A crash at
//! any moment therefore loses no coin and counts nothing twice: on restart
//! the state is rebuilt from the ledger, which holds exactly what was
//! decided.

use crate::config::MachineConfig;
use ledger::admin::PasswordParams;
use ledger::keys::{Keyring, SingleMachineKey};
use ledger::projection::{Collection, Period, SalesRow};
use ledger::rules::Context;
use ledger::store::{Appended, OpenOptions};
use ledger::{Command, Event, Ledger, MachineCore, MachineId, MachineState, Rejection};
use link::driver::{LocalLedger, UplinkControl, UplinkReport, spawn_uplink};
use link::uplink::Uplink;
use rand::RngCore;
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Where the uplink's acknowledged mark is kept in the local ledger.
const ACKED_META: &str = "uplink_acked";
/// When the fleet last answered this machine (machine clock, ms), kept so
/// a machine that restarts offline can still say when it last synced.
const SYNCED_META: &str = "uplink_synced_ms";
/// How stale the saved sync time may get while the link is up.
const SYNCED_SAVE_INTERVAL_MS: i64 = 30_000;

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// The rules said no; the text is for the screen.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The ledger could not record the action, so it did not happen.
    #[error("not recorded: {0}")]
    Storage(String),
    /// Why the machine cannot start, a whole sentence printed as it is
    /// ("VM-001 is already running (pid 4242)").
    #[error("{0}")]
    Setup(String),
}

/// A clock in milliseconds since the Unix epoch (injected so tests can
/// drive lockouts and reports deterministically).
pub type Clock = Box<dyn Fn() -> i64 + Send>;

pub fn system_clock() -> Clock {
    Box::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    })
}

pub struct Machine {
    core: MachineCore,
    ledger: Arc<Mutex<Ledger>>,
    chain: SingleMachineKey,
    acked: u64,
    synced_ms: Option<i64>,
    synced_saved_ms: Option<i64>,
    clock: Clock,
    password_params: PasswordParams,
    uplink: Option<(
        UplinkControl,
        tokio::task::JoinHandle<link::uplink::UplinkStats>,
    )>,
    link_key: ledger::crypto::SecretKey,
    /// Held while the machine runs: a second instance on the same data
    /// directory is told who has it.
    _lock: InstanceLock,
}

impl Machine {
    /// Opens the machine described by `config`, or installs a new one when
    /// the operator asked for an install (`initial_admin_password`) and
    /// the data directory holds no ledger yet.
    ///
    /// The machine never creates a key, not even for an install: its key
    /// is the secret it shares with the replicas, so it is made where both
    /// get it (`vendctl keys machine`); a key the machine made for itself
    /// would be refused by the fleet, and a wrong `--keys` would write it
    /// into somebody else's key directory. A missing key is an error naming
    /// the file and that command.
    pub fn open(
        config: &MachineConfig,
        clock: Clock,
        password_params: PasswordParams,
    ) -> Result<Machine, MachineError> {
        let setup = |e: &dyn std::fmt::Display| MachineError::Setup(e.to_string());
        let keyring = Keyring::open(&config.keys_dir).map_err(|e| setup(&e))?;
        let key = keyring
            .require_machine(&config.machine_id)
            .map_err(|e| setup(&e))?
            .clone();
        // Everything that can be checked is checked before anything is
        // created: a bad password or catalog leaves no directory behind.
        let install = install_plan(config, clock(), password_params)?;
        let data_existed = config.data_dir.exists();
        let lock = InstanceLock::acquire(&config.data_dir, &config.machine_id)?;
        let opened = open_ledger(config, &keyring, install.is_some());
        let ledger = match opened {
            Ok(ledger) => ledger,
            Err(error) => {
                if !data_existed {
                    drop(lock);
                    let _ = std::fs::remove_dir_all(&config.data_dir);
                }
                return Err(error);
            }
        };
        let head = ledger.store().machine_head(&config.machine_id);
        let state = ledger
            .machine_state(&config.machine_id)
            .cloned()
            .unwrap_or_default();
        if state.last_seq != head.seq {
            return Err(MachineError::Setup(format!(
                "{} holds {} events of {} but its state stops at #{}",
                config.log_dir().display(),
                head.seq,
                config.machine_id,
                state.last_seq
            )));
        }
        let acked = ledger
            .store()
            .app_meta::<u64>(ACKED_META)
            .map_err(|e| setup(&e))?
            .unwrap_or(0);
        let synced_ms = ledger
            .store()
            .app_meta::<i64>(SYNCED_META)
            .map_err(|e| setup(&e))?;
        let mut machine = Machine {
            core: MachineCore::restore(config.machine_id.clone(), &key, state, head.hash),
            synced_ms,
            synced_saved_ms: synced_ms,
            chain: SingleMachineKey::new(config.machine_id.clone(), &key),
            link_key: key.derive(ledger::crypto::LINK_KEY_CONTEXT),
            ledger: Arc::new(Mutex::new(ledger)),
            acked,
            clock,
            password_params,
            uplink: None,
            _lock: lock,
        };
        if !machine.core.state().installed {
            let command = install.ok_or_else(|| {
                MachineError::Setup(
                    "a new machine needs an initial admin password (--admin-password)".into(),
                )
            })?;
            machine.execute(command)?;
        } else if machine.core.state().admin.logged_in {
            // A restart ends an admin session: the operator logs in again.
            machine.execute(Command::AdminLogout)?;
        }
        Ok(machine)
    }

    pub fn id(&self) -> &MachineId {
        self.core.id()
    }

    pub fn state(&self) -> &MachineState {
        self.core.state()
    }

    pub fn now_ms(&self) -> i64 {
        (self.clock)()
    }

    /// Decides, records durably, then applies. Returns the events, which
    /// say what happened (a rejected coin, the change paid, ...).
    pub fn execute(&mut self, command: Command) -> Result<Vec<Event>, MachineError> {
        let now_ms = self.now_ms();
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let ctx = Context {
            now_ms,
            salt,
            password_params: self.password_params,
        };
        let prepared = self.core.prepare(&command, &ctx)?;
        if prepared.is_empty() {
            return Ok(Vec::new());
        }
        // The core changes only once the ledger holds the events; if the
        // append fails, the prepared decision is dropped and nothing
        // happened.
        {
            let mut ledger = self
                .ledger
                .lock()
                .map_err(|_| MachineError::Storage("ledger lock poisoned".into()))?;
            let outcome = ledger
                .append_events(0, now_ms, prepared.signed(), &self.chain)
                .map_err(|e| MachineError::Storage(e.to_string()))?;
            if let Some(problem) = outcome
                .results
                .iter()
                .find(|r| !matches!(r, Appended::New { .. }))
            {
                return Err(MachineError::Storage(format!(
                    "the ledger refused an event: {problem:?}"
                )));
            }
        }
        let applied = self.core.commit(prepared);
        if let Some((uplink, _)) = &self.uplink {
            uplink.appended.notify_one();
        }
        Ok(applied.into_iter().map(|envelope| envelope.event).collect())
    }

    /// Events recorded locally that the fleet has not acknowledged yet.
    pub fn unacknowledged(&self) -> u64 {
        self.core.state().last_seq.saturating_sub(self.acked)
    }

    /// The fleet committed everything up to `seq`; remember it, and that
    /// the fleet answered now.
    pub fn acknowledged(&mut self, seq: u64) {
        self.synced();
        if seq <= self.acked {
            return;
        }
        self.acked = seq;
        self.save_meta(ACKED_META, &seq);
    }

    /// The fleet answered (a session opened, or an acknowledgement came).
    pub fn synced(&mut self) {
        let now = self.now_ms();
        // Pings are answered every second: the time on disk only needs to
        // be right to the minute.
        let stale = self
            .synced_saved_ms
            .is_none_or(|saved| now >= saved + SYNCED_SAVE_INTERVAL_MS || now < saved);
        self.synced_ms = Some(now);
        if stale {
            self.synced_saved_ms = Some(now);
            self.save_meta(SYNCED_META, &now);
        }
    }

    /// When the fleet last answered, if ever.
    pub fn synced_ms(&self) -> Option<i64> {
        self.synced_ms
    }

    fn save_meta<T: serde::Serialize>(&self, name: &str, value: &T) {
        if let Ok(mut ledger) = self.ledger.lock()
            && let Err(e) = ledger.store_mut().put_app_meta(name, value)
        {
            tracing::warn!(error = %e, name, "could not save uplink progress (it is learned again from the primary)");
        }
    }

    /// The machine's cash collections, oldest first (time, expected,
    /// counted), from its own ledger.
    pub fn collections(&self) -> Vec<Collection> {
        let id = self.core.id();
        self.ledger
            .lock()
            .map(|ledger| {
                ledger
                    .projection()
                    .collections
                    .iter()
                    .filter(|c| &c.machine_id == id)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sales from the machine's own ledger.
    pub fn sales(&self, period: Period) -> Vec<SalesRow> {
        let id = self.core.id();
        self.ledger
            .lock()
            .map(|ledger| ledger.projection().sales.report(period, Some(id)))
            .unwrap_or_default()
    }

    /// Starts the background uplink on `runtime` (if replicas are given).
    pub fn start_uplink(
        &mut self,
        runtime: &tokio::runtime::Handle,
        replicas: Vec<String>,
    ) -> Option<tokio::sync::mpsc::Receiver<UplinkReport>> {
        if replicas.is_empty() {
            return None;
        }
        let id = self.core.id().clone();
        let uplink = Uplink::new(id.clone(), self.link_key.clone(), replicas, self.acked);
        let local = LocalLedger {
            machine: id,
            ledger: self.ledger.clone(),
        };
        let (reports, receiver) = tokio::sync::mpsc::channel(1_024);
        let _guard = runtime.enter();
        self.uplink = Some(spawn_uplink(uplink, local, reports));
        Some(receiver)
    }

    /// Tells the uplink to stop and hands back its task, which ends once
    /// the connection is closed (dropping the machine only tells it).
    pub fn stop_uplink(&mut self) -> Option<tokio::task::JoinHandle<link::uplink::UplinkStats>> {
        let (control, task) = self.uplink.take()?;
        let _ = control.stop.send(true);
        Some(task)
    }
}

/// The installation a new machine gets, checked in full (password policy,
/// catalog, capacities) against an empty state before anything is written;
/// `None` when the ledger exists already.
fn install_plan(
    config: &MachineConfig,
    now_ms: i64,
    password_params: PasswordParams,
) -> Result<Option<Command>, MachineError> {
    if config.log_dir().join("CURRENT").exists() {
        return Ok(None);
    }
    let Some(password) = config.initial_admin_password.clone() else {
        return Err(MachineError::Setup(if config.data_dir.exists() {
            format!(
                "no ledger at {}: install a new machine with --admin-password",
                config.log_dir().display()
            )
        } else {
            format!(
                "the data directory {} does not exist: give the machine's --data, or install a \
                 new machine there with --admin-password",
                config.data_dir.display()
            )
        }));
    };
    let command = Command::Install {
        slots: config.catalog(),
        tube_capacity: config.tubes(),
        stacker_capacity_bills: config.stacker_capacity_bills,
        admin_password: password,
    };
    let ctx = Context {
        now_ms,
        salt: [0; 16],
        password_params,
    };
    ledger::decide(&MachineState::default(), &command, &ctx)
        .map_err(|rejection| MachineError::Setup(format!("cannot install: {rejection}")))?;
    Ok(Some(command))
}

/// Opens the machine's own ledger (creating it for an install) and checks
/// that it holds only this machine's events.
fn open_ledger(
    config: &MachineConfig,
    keyring: &Keyring,
    create: bool,
) -> Result<Ledger, MachineError> {
    let options = OpenOptions {
        create,
        ..OpenOptions::default()
    };
    let log_dir = config.log_dir();
    let ledger = Ledger::open(&log_dir, keyring.store_key(), options)
        .map_err(|e| MachineError::Setup(e.to_string()))?;
    let head = ledger.store().machine_head(&config.machine_id);
    if ledger.store().head().gseq != head.seq {
        return Err(MachineError::Setup(format!(
            "{} holds events of other machines; a machine's ledger is its own",
            log_dir.display()
        )));
    }
    Ok(ledger)
}

/// `DATA/vend-vm.lock`: an exclusive lock for as long as the machine
/// runs, holding its pid, so a second start says who runs the machine
/// instead of RocksDB's lock error.
pub struct InstanceLock {
    _file: std::fs::File,
}

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "vend-vm.lock";

impl InstanceLock {
    pub fn acquire(data_dir: &Path, machine: &MachineId) -> Result<InstanceLock, MachineError> {
        let setup = |what: &str, error: std::io::Error| {
            MachineError::Setup(format!("{what} {}: {error}", data_dir.display()))
        };
        std::fs::create_dir_all(data_dir).map_err(|e| setup("creating", e))?;
        let path = data_dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| setup("opening the lock file in", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(MachineError::Setup(if pid.is_empty() {
                    format!(
                        "{machine} is already running (its data directory {} is in use)",
                        data_dir.display()
                    )
                } else {
                    format!("{machine} is already running (pid {pid})")
                }));
            }
            Err(std::fs::TryLockError::Error(error)) => {
                return Err(setup("locking the data directory", error));
            }
        }
        file.set_len(0)
            .and_then(|()| file.seek(std::io::SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .map_err(|e| setup("writing the pid into", e))?;
        Ok(InstanceLock { _file: file })
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Some((uplink, _)) = self.uplink.take() {
            let _ = uplink.stop.send(true);
        }
    }
}

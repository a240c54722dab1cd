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
use ledger::projection::{Period, SalesRow};
use ledger::rules::Context;
use ledger::store::{Appended, OpenOptions};
use ledger::{Command, Event, Ledger, MachineCore, MachineId, MachineState, Rejection};
use link::driver::{LocalLedger, UplinkControl, UplinkReport, spawn_uplink};
use link::uplink::Uplink;
use rand::RngCore;
use std::sync::{Arc, Mutex};

/// Where the uplink's acknowledged mark is kept in the local ledger.
const ACKED_META: &str = "uplink_acked";

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// The rules said no; the text is for the screen.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The ledger could not record the action, so it did not happen.
    #[error("not recorded: {0}")]
    Storage(String),
    #[error("setup: {0}")]
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
    clock: Clock,
    password_params: PasswordParams,
    uplink: Option<UplinkControl>,
    link_key: ledger::crypto::SecretKey,
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
        let log_dir = config.log_dir();
        let install = config.initial_admin_password.is_some();
        if !install && !log_dir.join("CURRENT").exists() {
            return Err(MachineError::Setup(format!(
                "no ledger at {}: install a new machine with --admin-password",
                log_dir.display()
            )));
        }
        let options = OpenOptions {
            create: install,
            ..OpenOptions::default()
        };
        let ledger = Ledger::open(&log_dir, keyring.store_key(), options).map_err(|e| setup(&e))?;
        let head = ledger.store().machine_head(&config.machine_id);
        if ledger.store().head().gseq != head.seq {
            return Err(MachineError::Setup(format!(
                "{} holds events of other machines; a machine's ledger is its own",
                config.log_dir().display()
            )));
        }
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
        let mut machine = Machine {
            core: MachineCore::restore(config.machine_id.clone(), &key, state, head.hash),
            chain: SingleMachineKey::new(config.machine_id.clone(), &key),
            link_key: key.derive(ledger::crypto::LINK_KEY_CONTEXT),
            ledger: Arc::new(Mutex::new(ledger)),
            acked,
            clock,
            password_params,
            uplink: None,
        };
        if !machine.core.state().installed {
            let password = config.initial_admin_password.clone().ok_or_else(|| {
                MachineError::Setup(
                    "a new machine needs an initial admin password (--admin-password)".into(),
                )
            })?;
            machine.execute(Command::Install {
                slots: config.catalog(),
                tube_capacity: config.tubes(),
                stacker_capacity_bills: config.stacker_capacity_bills,
                admin_password: password,
            })?;
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
        if let Some(uplink) = &self.uplink {
            uplink.appended.notify_one();
        }
        Ok(applied.into_iter().map(|envelope| envelope.event).collect())
    }

    /// Events recorded locally that the fleet has not acknowledged yet.
    pub fn unacknowledged(&self) -> u64 {
        self.core.state().last_seq.saturating_sub(self.acked)
    }

    /// The fleet committed everything up to `seq`; remember it.
    pub fn acknowledged(&mut self, seq: u64) {
        if seq <= self.acked {
            return;
        }
        self.acked = seq;
        if let Ok(mut ledger) = self.ledger.lock()
            && let Err(e) = ledger.store_mut().put_app_meta(ACKED_META, &seq)
        {
            tracing::warn!(error = %e, "could not save the acknowledged mark (it is learned again from the primary)");
        }
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
        let (control, _task) = spawn_uplink(uplink, local, reports);
        self.uplink = Some(control);
        Some(receiver)
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Some(uplink) = self.uplink.take() {
            let _ = uplink.stop.send(true);
        }
    }
}

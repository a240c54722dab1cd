//! The machine itself, without a screen: every action goes through the
//! rules (`decide`), is appended durably to the machine's own encrypted
//! ledger, and only then changes the state the screen shows. A crash at any
//! moment therefore loses no coin and counts nothing twice: on restart the
//! state is rebuilt from the ledger, which holds exactly what was decided.

use crate::config::MachineConfig;
use ledger::admin::PasswordParams;
use ledger::keys::{Keyring, SingleMachineKey};
use ledger::projection::{Period, SalesRow};
use ledger::rules::{Context, envelopes};
use ledger::store::{Appended, OpenOptions};
use ledger::{Command, Event, Ledger, MachineId, MachineState, Rejection, StreamSigner, decide};
use link::driver::{LocalLedger, UplinkControl, UplinkReport, spawn_uplink};
use link::uplink::Uplink;
use rand::RngCore;
use std::sync::{Arc, Mutex};

/// Where the uplink's acknowledged mark is kept in the local ledger.
const ACKED_META: &str = "uplink_acked";

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// The rules said no; the text is for the screen.
    #[error("{0}")]
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
    id: MachineId,
    ledger: Arc<Mutex<Ledger>>,
    signer: StreamSigner,
    chain: SingleMachineKey,
    state: MachineState,
    acked: u64,
    clock: Clock,
    password_params: PasswordParams,
    uplink: Option<UplinkControl>,
    link_key: ledger::crypto::SecretKey,
}

impl Machine {
    /// Opens (or creates and installs) the machine described by `config`.
    pub fn open(
        config: &MachineConfig,
        clock: Clock,
        password_params: PasswordParams,
    ) -> Result<Machine, MachineError> {
        let setup = |e: &dyn std::fmt::Display| MachineError::Setup(e.to_string());
        let mut keyring = Keyring::open(&config.keys_dir, true).map_err(|e| setup(&e))?;
        let key = keyring
            .ensure_machine(&config.machine_id)
            .map_err(|e| setup(&e))?
            .clone();
        let options = OpenOptions {
            create: true,
            ..OpenOptions::default()
        };
        let ledger =
            Ledger::open(&config.log_dir(), keyring.store_key(), options).map_err(|e| setup(&e))?;
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
        let acked = ledger
            .store()
            .app_meta::<u64>(ACKED_META)
            .map_err(|e| setup(&e))?
            .unwrap_or(0);
        let mut machine = Machine {
            id: config.machine_id.clone(),
            signer: StreamSigner::new(&key, head.hash),
            chain: SingleMachineKey::new(config.machine_id.clone(), &key),
            link_key: key.derive(ledger::crypto::LINK_KEY_CONTEXT),
            ledger: Arc::new(Mutex::new(ledger)),
            state,
            acked,
            clock,
            password_params,
            uplink: None,
        };
        if !machine.state.installed {
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
        } else if machine.state.admin.logged_in {
            // A restart ends an admin session: the operator logs in again.
            machine.execute(Command::AdminLogout)?;
        }
        Ok(machine)
    }

    pub fn id(&self) -> &MachineId {
        &self.id
    }

    pub fn state(&self) -> &MachineState {
        &self.state
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
        let events = decide(&self.state, &command, &ctx)?;
        if events.is_empty() {
            return Ok(events);
        }
        let envelopes = envelopes(&self.id, &self.state, events.clone(), now_ms);
        // Sign on a copy: the chain advances only once the ledger holds it.
        let mut signer = self.signer.clone();
        let signed: Vec<_> = envelopes.iter().map(|e| signer.sign(e)).collect();
        {
            let mut ledger = self
                .ledger
                .lock()
                .map_err(|_| MachineError::Storage("ledger lock poisoned".into()))?;
            let outcome = ledger
                .append_events(0, now_ms, &signed, &self.chain)
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
        self.signer = signer;
        for envelope in &envelopes {
            // Cannot fail: decide only returns events that apply.
            if let Err(e) = self.state.apply(envelope) {
                return Err(MachineError::Storage(format!(
                    "recorded but not applied: {e}"
                )));
            }
        }
        if let Some(uplink) = &self.uplink {
            uplink.appended.notify_one();
        }
        Ok(events)
    }

    /// Events recorded locally that the fleet has not acknowledged yet.
    pub fn unacknowledged(&self) -> u64 {
        self.state.last_seq.saturating_sub(self.acked)
    }

    /// The fleet committed everything up to `seq`; remember it.
    pub fn acknowledged(&mut self, seq: u64) {
        if seq <= self.acked {
            return;
        }
        self.acked = seq;
        if let Ok(ledger) = self.ledger.lock()
            && let Err(e) = ledger.store().put_app_meta(ACKED_META, &seq)
        {
            tracing::warn!(error = %e, "could not save the acknowledged mark (it is learned again from the primary)");
        }
    }

    /// Sales from the machine's own ledger.
    pub fn sales(&self, period: Period) -> Vec<SalesRow> {
        self.ledger
            .lock()
            .map(|ledger| ledger.projection().sales.report(period, Some(&self.id)))
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
        let uplink = Uplink::new(self.id.clone(), self.link_key.clone(), replicas, self.acked);
        let local = LocalLedger {
            machine: self.id.clone(),
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

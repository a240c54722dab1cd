//! [`MachineCore`]: one machine's pipeline from a command to applied
//! events, in the crash-safe order every user follows.
//!
//! A machine decides, signs, stores and applies. If it applied before the
//! events were stored, a crash in between would leave the screen (and the
//! customer) believing in a sale the ledger never heard of; if it advanced
//! its signer before storing, the next event would chain onto a hash the
//! ledger does not hold. So the core has two phases and no I/O of its own:
//!
//! 1. [`MachineCore::prepare`] decides, builds the envelopes, signs them on
//!    a copy of the signer and checks that they apply on a copy of the
//!    state. Nothing changes; a prepared decision that is dropped (the
//!    store failed, the machine crashed) leaves no trace.
//! 2. The caller stores [`Prepared::signed`] durably, in whatever way it
//!    stores (the machine's RocksDB ledger, a fleet log written directly, a
//!    vector in a simulation).
//! 3. [`MachineCore::commit`] makes the prepared decision the core's state.
//!    It asserts that the decision was prepared against the current state,
//!    so nothing else can be committed.
//!
//! After a restart, [`MachineCore::rebuild`] replays what was stored, and
//! [`MachineCore::restore`] takes a state a checkpointed ledger already
//! holds.

use crate::crypto::{Hash32, SecretKey};
use crate::event::{DecodeError, Event, EventEnvelope};
use crate::ids::MachineId;
use crate::ledger::StreamSigner;
use crate::rules::{Command, Context, Rejection, decide, envelopes};
use crate::state::{ApplyError, MachineState};
use crate::store::record::SignedEvent;

/// A machine's id, state and signer: everything needed to turn commands
/// into the next events of its stream.
#[derive(Clone)]
pub struct MachineCore {
    id: MachineId,
    state: MachineState,
    signer: StreamSigner,
}

/// One decision, signed and checked but not yet applied. Only
/// [`MachineCore::prepare`] makes one, and only the core it was prepared
/// against, unchanged since, may commit it.
#[must_use = "a prepared decision changes nothing until it is stored and committed"]
pub struct Prepared {
    /// The state's last sequence number and the signer's head when this
    /// was prepared; commit asserts both still hold.
    base_seq: u64,
    base_hash: Hash32,
    envelopes: Vec<EventEnvelope>,
    signed: Vec<SignedEvent>,
    state_after: MachineState,
    signer_after: StreamSigner,
}

impl Prepared {
    /// The events to store durably before committing, in order.
    pub fn signed(&self) -> &[SignedEvent] {
        &self.signed
    }

    pub fn envelopes(&self) -> &[EventEnvelope] {
        &self.envelopes
    }

    /// The decision produced no event (nothing to store; committing it
    /// changes nothing).
    pub fn is_empty(&self) -> bool {
        self.envelopes.is_empty()
    }

    /// The machine time every event of the decision carries, if any.
    pub fn at_ms(&self) -> Option<i64> {
        self.envelopes.first().map(|envelope| envelope.at_ms)
    }
}

/// Why stored events do not rebuild a machine. Stored events come from a
/// disk, so these are errors, not panics.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("stored event {position} cannot be decoded: {error}")]
    Decode {
        /// 1-based position among the stored events.
        position: u64,
        error: DecodeError,
    },
    #[error("stored event #{seq} belongs to {found}, not {expected}")]
    WrongMachine {
        seq: u64,
        expected: MachineId,
        found: MachineId,
    },
    #[error("stored event #{seq} does not continue the machine's hash chain")]
    ChainBroken { seq: u64 },
    #[error("stored event #{seq} does not apply: {error}")]
    Apply { seq: u64, error: ApplyError },
}

impl MachineCore {
    /// A machine that has recorded nothing yet.
    pub fn new(id: MachineId, machine_key: &SecretKey) -> MachineCore {
        MachineCore {
            id,
            state: MachineState::default(),
            signer: StreamSigner::genesis(machine_key),
        }
    }

    /// A machine from a state and the chain hash of the machine's last
    /// event (`state.last_seq`), as a checkpointed ledger holds them; no
    /// replay. The caller vouches that the two belong together.
    pub fn restore(
        id: MachineId,
        machine_key: &SecretKey,
        state: MachineState,
        head_hash: Hash32,
    ) -> MachineCore {
        MachineCore {
            id,
            state,
            signer: StreamSigner::new(machine_key, head_hash),
        }
    }

    /// A machine rebuilt from every event it stored, in order: each must
    /// belong to it, continue its hash chain and apply.
    pub fn rebuild<'a>(
        id: MachineId,
        machine_key: &SecretKey,
        stored: impl IntoIterator<Item = &'a SignedEvent>,
    ) -> Result<MachineCore, RebuildError> {
        let mut core = MachineCore::new(id, machine_key);
        for (position, signed) in (1..).zip(stored) {
            let envelope = signed
                .envelope()
                .map_err(|error| RebuildError::Decode { position, error })?;
            let seq = envelope.machine_seq;
            if envelope.machine_id != core.id {
                return Err(RebuildError::WrongMachine {
                    seq,
                    expected: core.id.clone(),
                    found: envelope.machine_id,
                });
            }
            if !core.signer.follow(signed) {
                return Err(RebuildError::ChainBroken { seq });
            }
            core.state
                .apply(&envelope)
                .map_err(|error| RebuildError::Apply { seq, error })?;
        }
        Ok(core)
    }

    pub fn id(&self) -> &MachineId {
        &self.id
    }

    pub fn state(&self) -> &MachineState {
        &self.state
    }

    /// The chain hash of the machine's last event.
    pub fn head_hash(&self) -> Hash32 {
        self.signer.head_hash()
    }

    /// Decides `command` and prepares its events for storing. Changes
    /// nothing: the events are signed on a copy of the signer and applied
    /// to a copy of the state, so that nothing that would not apply is
    /// ever stored.
    pub fn prepare(&self, command: &Command, ctx: &Context) -> Result<Prepared, Rejection> {
        let events: Vec<Event> = decide(&self.state, command, ctx)?;
        let envelopes = envelopes(&self.id, &self.state, events, ctx.now_ms);
        let mut signer_after = self.signer.clone();
        let mut state_after = self.state.clone();
        let mut signed = Vec::with_capacity(envelopes.len());
        for envelope in &envelopes {
            // A failure here is a bug in `decide`, caught before anything
            // is stored.
            if let Err(error) = state_after.apply(envelope) {
                panic!(
                    "{}: decide returned event #{} that does not apply: {error}",
                    self.id, envelope.machine_seq
                );
            }
            signed.push(signer_after.sign(envelope));
        }
        Ok(Prepared {
            base_seq: self.state.last_seq,
            base_hash: self.signer.head_hash(),
            envelopes,
            signed,
            state_after,
            signer_after,
        })
    }

    /// Applies a prepared decision once the caller has stored its signed
    /// events durably; returns the envelopes it applied.
    ///
    /// # Panics
    ///
    /// If `prepared` was not prepared against this core's current state:
    /// committing it would fork the machine's stream, which only a
    /// programming error can ask for.
    pub fn commit(&mut self, prepared: Prepared) -> Vec<EventEnvelope> {
        assert_eq!(
            (prepared.base_seq, prepared.base_hash),
            (self.state.last_seq, self.signer.head_hash()),
            "{}: a decision is committed against the state it was prepared on",
            self.id
        );
        let count = prepared.envelopes.len() as u64;
        assert_eq!(prepared.state_after.last_seq, prepared.base_seq + count);
        if let (Some(first), Some(last)) = (prepared.envelopes.first(), prepared.signed.last()) {
            assert_eq!(first.machine_id, self.id);
            assert_eq!(first.machine_seq, self.state.last_seq + 1);
            assert_eq!(last.chain_hash, prepared.signer_after.head_hash());
        }
        self.state = prepared.state_after;
        self.signer = prepared.signer_after;
        prepared.envelopes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::PasswordParams;
    use crate::catalog::default_catalog;
    use crate::money::{Denomination, MoneyKind};
    use crate::state::{DEFAULT_STACKER_CAPACITY_BILLS, DEFAULT_TUBE_CAPACITY};
    use crate::{SlotId, Won};

    const PASSWORD: &str = "vend-admin-1!";

    fn ctx(now_ms: i64) -> Context {
        Context {
            now_ms,
            salt: [7; 16],
            password_params: PasswordParams::Light,
        }
    }

    fn insert(value: Won) -> Command {
        let kind = if value >= 1_000 {
            MoneyKind::Bill
        } else {
            MoneyKind::Coin
        };
        Command::Insert { kind, value }
    }

    /// An installation, an operator's visit and two customers.
    fn commands() -> Vec<Command> {
        vec![
            Command::Install {
                slots: default_catalog(),
                tube_capacity: DEFAULT_TUBE_CAPACITY,
                stacker_capacity_bills: DEFAULT_STACKER_CAPACITY_BILLS,
                admin_password: PASSWORD.to_owned(),
            },
            Command::AdminLogin {
                password: PASSWORD.to_owned(),
            },
            Command::RefillAll,
            Command::LoadTube {
                denomination: Denomination::Coin100,
                count: 20,
            },
            Command::LoadTube {
                denomination: Denomination::Coin50,
                count: 20,
            },
            Command::AdminLogout,
            insert(1_000),
            Command::Purchase { slot: SlotId(1) },
            Command::ReturnChange,
            insert(500),
            insert(100),
            insert(5),
            Command::Purchase { slot: SlotId(2) },
            Command::CancelLastPurchase,
            Command::ReturnChange,
        ]
    }

    /// Runs `commands` through prepare, store (into a vector), commit.
    fn run(core: &mut MachineCore, stored: &mut Vec<SignedEvent>, commands: &[Command]) {
        for (n, command) in (1..).zip(commands) {
            let prepared = core.prepare(command, &ctx(1_000 * n)).unwrap();
            stored.extend_from_slice(prepared.signed());
            core.commit(prepared);
        }
    }

    fn machine() -> (MachineId, SecretKey) {
        (MachineId::numbered(1), SecretKey::from_bytes([9; 32]))
    }

    #[test]
    fn prepare_changes_nothing() {
        let (id, key) = machine();
        let mut core = MachineCore::new(id, &key);
        let mut stored = Vec::new();
        run(&mut core, &mut stored, &commands()[..6]);
        let (state, head) = (core.state().clone(), core.head_hash());
        let prepared = core.prepare(&insert(1_000), &ctx(9_000)).unwrap();
        assert_eq!(prepared.signed().len(), 1);
        assert_eq!(core.state(), &state);
        assert_eq!(core.head_hash(), head);
    }

    #[test]
    fn commit_applies_exactly_the_prepared_events() {
        let (id, key) = machine();
        let mut core = MachineCore::new(id, &key);
        let mut stored = Vec::new();
        run(&mut core, &mut stored, &commands()[..7]);
        let before = core.state().clone();
        let prepared = core
            .prepare(&Command::Purchase { slot: SlotId(1) }, &ctx(9_000))
            .unwrap();
        let envelopes = prepared.envelopes().to_vec();
        let last_hash = prepared.signed().last().unwrap().chain_hash;
        assert_eq!(envelopes[0].machine_seq, before.last_seq + 1);
        let applied = core.commit(prepared);
        assert_eq!(applied, envelopes);
        let mut expected = before;
        for envelope in &envelopes {
            expected.apply(envelope).unwrap();
        }
        assert_eq!(core.state(), &expected);
        assert_eq!(core.head_hash(), last_hash);
    }

    #[test]
    fn a_dropped_prepare_leaves_the_same_seqs_for_the_next() {
        let (id, key) = machine();
        let mut core = MachineCore::new(id, &key);
        let mut stored = Vec::new();
        run(&mut core, &mut stored, &commands()[..6]);
        let dropped = core.prepare(&insert(500), &ctx(9_000)).unwrap();
        let dropped_seqs: Vec<u64> = dropped.envelopes().iter().map(|e| e.machine_seq).collect();
        drop(dropped);
        let prepared = core.prepare(&insert(1_000), &ctx(9_500)).unwrap();
        let seqs: Vec<u64> = prepared.envelopes().iter().map(|e| e.machine_seq).collect();
        assert_eq!(seqs, dropped_seqs);
        core.commit(prepared);
        assert_eq!(core.state().last_seq, seqs[seqs.len() - 1]);
    }

    #[test]
    #[should_panic(expected = "committed against the state it was prepared on")]
    fn a_stale_decision_cannot_be_committed() {
        let (id, key) = machine();
        let mut core = MachineCore::new(id, &key);
        let mut stored = Vec::new();
        run(&mut core, &mut stored, &commands()[..6]);
        let stale = core.prepare(&insert(500), &ctx(9_000)).unwrap();
        let fresh = core.prepare(&insert(1_000), &ctx(9_500)).unwrap();
        core.commit(fresh);
        core.commit(stale);
    }

    #[test]
    fn an_empty_decision_commits_as_nothing() {
        let (id, key) = machine();
        let mut core = MachineCore::new(id, &key);
        let mut stored = Vec::new();
        run(&mut core, &mut stored, &commands()[..6]);
        let (state, head) = (core.state().clone(), core.head_hash());
        // Logging out while nobody is logged in decides no event.
        let prepared = core.prepare(&Command::AdminLogout, &ctx(9_000)).unwrap();
        assert!(prepared.is_empty());
        assert_eq!(prepared.at_ms(), None);
        assert!(core.commit(prepared).is_empty());
        assert_eq!(core.state(), &state);
        assert_eq!(core.head_hash(), head);
    }

    #[test]
    fn rebuilding_from_stored_events_equals_the_live_core() {
        let (id, key) = machine();
        let mut core = MachineCore::new(id.clone(), &key);
        let mut stored = Vec::new();
        run(&mut core, &mut stored, &commands());
        assert!(stored.len() > commands().len());
        let rebuilt = MachineCore::rebuild(id.clone(), &key, &stored).unwrap();
        assert_eq!(rebuilt.state(), core.state());
        assert_eq!(rebuilt.head_hash(), core.head_hash());
        // The rebuilt core continues the stream exactly as the live one.
        let next = ctx(99_000);
        let live = core.prepare(&insert(100), &next).unwrap();
        let again = rebuilt.prepare(&insert(100), &next).unwrap();
        assert_eq!(live.signed(), again.signed());
        // A prefix rebuilds the machine as it was then.
        let prefix = MachineCore::rebuild(id, &key, &stored[..3]).unwrap();
        assert_eq!(prefix.state().last_seq, 3);
    }

    #[test]
    fn rebuilding_refuses_what_the_machine_did_not_store() {
        let (id, key) = machine();
        let mut core = MachineCore::new(id.clone(), &key);
        let mut stored = Vec::new();
        run(&mut core, &mut stored, &commands());
        let other_key = SecretKey::from_bytes([8; 32]);
        assert!(matches!(
            MachineCore::rebuild(id.clone(), &other_key, &stored),
            Err(RebuildError::ChainBroken { seq: 1 })
        ));
        assert!(matches!(
            MachineCore::rebuild(MachineId::numbered(2), &key, &stored),
            Err(RebuildError::WrongMachine { seq: 1, .. })
        ));
        let mut gap = stored.clone();
        gap.remove(4);
        assert!(matches!(
            MachineCore::rebuild(id.clone(), &key, &gap),
            Err(RebuildError::ChainBroken { seq: 6 })
        ));
        let mut torn = stored;
        torn[2].bytes.truncate(3);
        assert!(matches!(
            MachineCore::rebuild(id, &key, &torn),
            Err(RebuildError::Decode { position: 3, .. })
        ));
    }
}

//! vendledger's simulated fleet: a simulated machine with simulated
//! customers and operators, for `vendctl simulate`, the benchmarks and the
//! deterministic simulation.
//!
//! Everything goes through the real machine: the simulator only chooses
//! commands (insert these coins, buy that, cancel, take the change, refill,
//! collect) and drives them through the machine's [`MachineCore`] in the
//! crash-safe order the machine app follows — prepare (decide and sign),
//! have the caller store the signed events, and only then commit. One seed
//! fixes everything, including the clock.

use ledger::admin::PasswordParams;
use ledger::catalog::default_catalog;
use ledger::crypto::SecretKey;
use ledger::money::{Denomination, MoneyKind};
use ledger::state::{DEFAULT_STACKER_CAPACITY_BILLS, DEFAULT_TUBE_CAPACITY};
use ledger::store::record::SignedEvent;
use ledger::{
    Command, Context, Event, EventEnvelope, MachineCore, MachineId, MachineState, Prepared, SlotId,
    Won,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;
use std::convert::Infallible;

/// The admin password every simulated machine is installed with.
pub const SIMULATED_ADMIN_PASSWORD: &str = "vend-admin-1!";
/// 2026-01-01T00:00:00+09:00, where simulated clocks start by default.
pub const SIMULATION_START_MS: i64 = 1_767_193_200_000;
/// Commands tried for one step before giving up (every command is normally
/// accepted or produces a rejection event, so this is a safety bound).
const COMMANDS_PER_STEP_MAX: usize = 64;

/// One simulated machine: its core, and the customers and operators who
/// use it (their plans and the clock survive a restart of the machine).
pub struct SimMachine {
    core: MachineCore,
    rng: ChaCha8Rng,
    clock_ms: i64,
    /// Stamp decisions with the wall clock instead of simulated time.
    wall_clock: bool,
    plan: VecDeque<Command>,
    customers_since_service: u32,
}

impl SimMachine {
    pub fn new(id: MachineId, machine_key: &SecretKey, seed: u64, start_ms: i64) -> SimMachine {
        SimMachine {
            core: MachineCore::new(id, machine_key),
            rng: ChaCha8Rng::seed_from_u64(seed),
            clock_ms: start_ms,
            wall_clock: false,
            plan: VecDeque::new(),
            customers_since_service: 0,
        }
    }

    pub fn id(&self) -> &MachineId {
        self.core.id()
    }

    pub fn state(&self) -> &MachineState {
        self.core.state()
    }

    pub fn clock_ms(&self) -> i64 {
        self.clock_ms
    }

    /// From now on every decision is stamped with the wall clock (never
    /// earlier than the last one), for machines that sell in real time, as
    /// in `vendctl demo`; the simulated pauses between customers are left
    /// to whoever paces the steps.
    pub fn follow_wall_clock(&mut self) {
        self.wall_clock = true;
    }

    /// Moves the clock on by a simulated pause drawn from `range`, or to
    /// the wall clock's now.
    fn advance(&mut self, range: std::ops::Range<i64>) {
        if self.wall_clock {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            self.clock_ms = self.clock_ms.max(now);
        } else {
            self.clock_ms += self.rng.random_range(range);
        }
    }

    /// The machine restarted with `core`, rebuilt from what it had stored;
    /// the people in front of it carry on where they were.
    pub fn restart(&mut self, core: MachineCore) {
        assert_eq!(core.id(), self.core.id(), "a machine restarts as itself");
        self.core = core;
    }

    /// Runs commands until one produces events, has `store` keep the
    /// signed events durably, and only then applies them; returns the
    /// envelopes applied. One decision's events must be stored together.
    /// If `store` fails, nothing is applied and the error is returned; the
    /// next step decides again from the unchanged state.
    pub fn step<E>(
        &mut self,
        store: impl FnOnce(&Prepared) -> Result<(), E>,
    ) -> Result<Vec<EventEnvelope>, E> {
        let prepared = self.next_decision();
        store(&prepared)?;
        Ok(self.core.commit(prepared))
    }

    /// What the machine app does with a command from the dashboard (see
    /// `vm-iced`'s `UplinkReport::Remote`): the machine's own rules decide
    /// it (applied, refused with a reason, or a resend ignored), `store`
    /// keeps the events durably, and only then are they applied. Returns
    /// the envelopes applied (none for a resend).
    pub fn remote<E>(
        &mut self,
        command: ledger::rules::RemoteCommand,
        store: impl FnOnce(&Prepared) -> Result<(), E>,
    ) -> Result<Vec<EventEnvelope>, E> {
        self.clock_ms += 100;
        let ctx = Context {
            now_ms: self.clock_ms,
            salt: [0; 16],
            password_params: PasswordParams::Light,
        };
        match self.core.prepare(&Command::Remote(command), &ctx) {
            Ok(prepared) if !prepared.is_empty() => {
                store(&prepared)?;
                Ok(self.core.commit(prepared))
            }
            // A resend of an applied command, or a machine not installed
            // yet: nothing to record.
            Ok(_) | Err(_) => Ok(Vec::new()),
        }
    }

    /// [`SimMachine::step`] for callers whose storage is memory: the
    /// signed events are appended to `log` (a benchmark's input, a test's
    /// stream, a batch a simulated primary is about to write).
    pub fn step_into(&mut self, log: &mut Vec<SignedEvent>) -> Vec<EventEnvelope> {
        let Ok(applied) = self.step(|prepared| {
            log.extend_from_slice(prepared.signed());
            Ok::<(), Infallible>(())
        });
        applied
    }

    /// Prepares the next decision that produces events; changes nothing
    /// but the simulated world (the plan, the clock, the random stream).
    fn next_decision(&mut self) -> Prepared {
        for _ in 0..COMMANDS_PER_STEP_MAX {
            let command = match self.plan.pop_front() {
                Some(command) => command,
                None => {
                    self.plan_next_activity();
                    continue;
                }
            };
            self.advance(400..4_000);
            let ctx = Context {
                now_ms: self.clock_ms,
                salt: self.rng.random(),
                password_params: PasswordParams::Light,
            };
            match self.core.prepare(&command, &ctx) {
                Ok(prepared) if !prepared.is_empty() => return prepared,
                // A refused or empty command: the customer or operator
                // moves on to the next one.
                Ok(_) | Err(_) => {}
            }
        }
        panic!("simulated machine {} made no progress", self.core.id());
    }

    fn plan_next_activity(&mut self) {
        if !self.core.state().installed {
            self.plan.push_back(Command::Install {
                slots: default_catalog(),
                tube_capacity: DEFAULT_TUBE_CAPACITY,
                stacker_capacity_bills: DEFAULT_STACKER_CAPACITY_BILLS,
                admin_password: SIMULATED_ADMIN_PASSWORD.to_owned(),
            });
            self.plan_service();
            return;
        }
        let state = self.core.state();
        let sold_out = state.slots.values().filter(|s| s.sold_out()).count();
        let needs_service = sold_out >= 2
            || state.stacker_bills + 10 >= state.stacker_capacity_bills
            || self.customers_since_service >= 60
            || (state.exact_change_only() && self.rng.random_bool(0.3));
        if needs_service {
            self.plan_service();
        } else {
            self.plan_customer();
        }
    }

    /// A customer arrives some minutes later, pays (sometimes badly), buys
    /// one or two products, sometimes cancels, and takes the change.
    fn plan_customer(&mut self) {
        self.customers_since_service += 1;
        self.advance(60_000..1_800_000);
        let available: Vec<(SlotId, Won)> = self
            .core
            .state()
            .slots
            .values()
            .filter(|s| !s.sold_out())
            .map(|s| (s.config.slot, s.config.product.price))
            .collect();
        if available.is_empty() {
            self.plan_service();
            return;
        }
        let (slot, price) = available[self.rng.random_range(0..available.len())];
        let second = self.rng.random_bool(0.2);
        let target = if second { price * 2 } else { price };
        let mut paid = 0;
        while paid < target {
            let (kind, value) = self.pick_money();
            self.plan.push_back(Command::Insert { kind, value });
            if Denomination::recognise(kind, value).is_some() {
                paid += value;
            }
        }
        self.plan.push_back(Command::Purchase { slot });
        if second {
            self.plan.push_back(Command::Purchase { slot });
        }
        if self.rng.random_bool(0.08) {
            self.plan.push_back(Command::CancelLastPurchase);
            if second && self.rng.random_bool(0.5) {
                self.plan.push_back(Command::CancelLastPurchase);
            }
        }
        self.plan.push_back(Command::ReturnChange);
    }

    fn pick_money(&mut self) -> (MoneyKind, Won) {
        let roll = self.rng.random_range(0..100);
        match roll {
            0 => (MoneyKind::Coin, 5),
            1 => (MoneyKind::Bill, 5_000),
            2..=29 => (MoneyKind::Bill, 1_000),
            30..=64 => (MoneyKind::Coin, 500),
            65..=89 => (MoneyKind::Coin, 100),
            90..=95 => (MoneyKind::Coin, 50),
            _ => (MoneyKind::Coin, 10),
        }
    }

    /// An operator visit: log in (now and then mistyping first), refill,
    /// top up the tubes, collect the cash, settle debts, adjust a price.
    fn plan_service(&mut self) {
        self.customers_since_service = 0;
        self.advance(600_000..7_200_000);
        if self.rng.random_bool(0.05) {
            self.plan.push_back(Command::AdminLogin {
                password: "wrong-password-1!".to_owned(),
            });
        }
        self.plan.push_back(Command::AdminLogin {
            password: SIMULATED_ADMIN_PASSWORD.to_owned(),
        });
        self.plan.push_back(Command::RefillAll);
        let state = self.core.state();
        // Now and then the operator brings no coins, so tubes run low and
        // customers are owed change until the next visit.
        let brings_coins = !state.installed || self.rng.random_bool(0.8);
        for (tube, coin) in Denomination::COINS.into_iter().enumerate() {
            if !brings_coins {
                break;
            }
            let room = state.tube_capacity.0[tube].saturating_sub(state.tubes.0[tube]);
            let low = state.tubes.0[tube] < state.tube_capacity.0[tube] / 2;
            if low || !state.installed {
                let count = if state.installed { room / 2 + 1 } else { 30 };
                self.plan.push_back(Command::LoadTube {
                    denomination: coin,
                    count,
                });
            }
        }
        let expected = state.cash_box + state.stacker_total();
        if expected > 0 {
            // Operators count right almost always; now and then a coin is
            // missing or extra.
            let error = match self.rng.random_range(0..50) {
                0 => -10,
                1 => 100,
                _ => 0,
            };
            self.plan.push_back(Command::CollectCash {
                counted: (expected + error).max(0),
            });
        }
        for &ticket in state.owed.keys() {
            self.plan.push_back(Command::SettleChangeOwed { ticket });
        }
        if self.rng.random_bool(0.1) {
            let slot = SlotId(self.rng.random_range(1..=6));
            let price = self.rng.random_range(40..=90) * 10;
            self.plan.push_back(Command::SetPrice { slot, price });
        }
        self.plan.push_back(Command::AdminLogout);
    }
}

/// Counts of what a run produced, for summaries.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WorkloadStats {
    pub events: u64,
    pub purchases: u64,
    pub cancels: u64,
    pub rejected_inserts: u64,
    pub change_owed: u64,
    pub collections: u64,
}

impl WorkloadStats {
    pub fn record(&mut self, event: &Event) {
        self.events += 1;
        match event {
            Event::ProductPurchased { .. } => self.purchases += 1,
            Event::PurchaseCancelled { .. } => self.cancels += 1,
            Event::MoneyRejected { .. } => self.rejected_inserts += 1,
            Event::ChangeOwed { .. } => self.change_owed += 1,
            Event::CashCollected { .. } => self.collections += 1,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let key = SecretKey::from_bytes([3; 32]);
        let run = |seed| {
            let mut machine =
                SimMachine::new(MachineId::numbered(1), &key, seed, SIMULATION_START_MS);
            let mut log = Vec::new();
            for _ in 0..300 {
                machine.step_into(&mut log);
            }
            log.into_iter()
                .map(|signed| signed.chain_hash)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn a_long_run_exercises_the_rules_and_stays_consistent() {
        let key = SecretKey::from_bytes([4; 32]);
        let mut machine = SimMachine::new(MachineId::numbered(2), &key, 42, SIMULATION_START_MS);
        let mut stats = WorkloadStats::default();
        let mut log = Vec::new();
        for _ in 0..20_000 {
            for envelope in machine.step_into(&mut log) {
                stats.record(&envelope.event);
            }
        }
        machine.state().check_consistency().unwrap();
        assert_eq!(log.len() as u64, stats.events);
        assert!(stats.purchases > 1_000, "{stats:?}");
        assert!(stats.cancels > 10, "{stats:?}");
        assert!(stats.rejected_inserts > 10, "{stats:?}");
        assert!(stats.collections > 5, "{stats:?}");
    }

    #[test]
    fn nothing_is_applied_unless_it_was_stored() {
        let key = SecretKey::from_bytes([5; 32]);
        let mut machine = SimMachine::new(MachineId::numbered(3), &key, 1, SIMULATION_START_MS);
        let mut log = Vec::new();
        for _ in 0..50 {
            machine.step_into(&mut log);
        }
        let before = machine.state().clone();
        let refused = machine.step(|prepared| Err(prepared.envelopes()[0].machine_seq));
        assert_eq!(refused, Err(before.last_seq + 1));
        assert_eq!(machine.state(), &before);
        let applied = machine.step_into(&mut log);
        assert_eq!(applied[0].machine_seq, before.last_seq + 1);
    }

    #[test]
    fn a_machine_restarted_from_its_stored_events_carries_on_unchanged() {
        let key = SecretKey::from_bytes([6; 32]);
        let id = MachineId::numbered(4);
        let mut steady = SimMachine::new(id.clone(), &key, 11, SIMULATION_START_MS);
        let mut crashing = SimMachine::new(id.clone(), &key, 11, SIMULATION_START_MS);
        let (mut steady_log, mut crashing_log) = (Vec::new(), Vec::new());
        for round in 0..400 {
            steady.step_into(&mut steady_log);
            crashing.step_into(&mut crashing_log);
            if round % 97 == 0 {
                let core = MachineCore::rebuild(id.clone(), &key, &crashing_log).unwrap();
                crashing.restart(core);
            }
        }
        assert_eq!(steady_log, crashing_log);
        assert_eq!(steady.state(), crashing.state());
    }
}

//! A simulated machine with simulated customers and operators, for
//! `vendctl simulate`, benchmarks and the deterministic simulation.
//!
//! Everything goes through the real rules: the simulator only chooses
//! commands (insert these coins, buy that, cancel, take the change, refill,
//! collect), runs them through [`decide`], signs the events into the
//! machine's chain and applies them. One seed fixes everything, including
//! the clock.

use crate::admin::PasswordParams;
use crate::catalog::default_catalog;
use crate::crypto::SecretKey;
use crate::event::{Event, EventEnvelope};
use crate::ids::{MachineId, SlotId};
use crate::ledger::StreamSigner;
use crate::money::{Denomination, MoneyKind, Won};
use crate::rules::{Command, Context, decide, envelopes};
use crate::state::{DEFAULT_STACKER_CAPACITY_BILLS, DEFAULT_TUBE_CAPACITY, MachineState};
use crate::store::record::SignedEvent;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;

/// The admin password every simulated machine is installed with.
pub const SIMULATED_ADMIN_PASSWORD: &str = "vend-admin-1!";
/// 2026-01-01T00:00:00+09:00, where simulated clocks start by default.
pub const SIMULATION_START_MS: i64 = 1_767_193_200_000;
/// Commands tried for one step before giving up (every command is normally
/// accepted or produces a rejection event, so this is a safety bound).
const COMMANDS_PER_STEP_MAX: usize = 64;

/// One simulated machine.
pub struct SimMachine {
    id: MachineId,
    state: MachineState,
    signer: StreamSigner,
    rng: ChaCha8Rng,
    clock_ms: i64,
    plan: VecDeque<Command>,
    customers_since_service: u32,
}

impl SimMachine {
    pub fn new(id: MachineId, machine_key: &SecretKey, seed: u64, start_ms: i64) -> SimMachine {
        SimMachine {
            id,
            state: MachineState::default(),
            signer: StreamSigner::genesis(machine_key),
            rng: ChaCha8Rng::seed_from_u64(seed),
            clock_ms: start_ms,
            plan: VecDeque::new(),
            customers_since_service: 0,
        }
    }

    pub fn id(&self) -> &MachineId {
        &self.id
    }

    pub fn state(&self) -> &MachineState {
        &self.state
    }

    pub fn clock_ms(&self) -> i64 {
        self.clock_ms
    }

    /// Runs commands until one produces events; returns them signed and
    /// already applied to this machine's state (one decision, so it must be
    /// stored atomically).
    pub fn step(&mut self) -> Vec<(EventEnvelope, SignedEvent)> {
        for _ in 0..COMMANDS_PER_STEP_MAX {
            let command = match self.plan.pop_front() {
                Some(command) => command,
                None => {
                    self.plan_next_activity();
                    continue;
                }
            };
            self.clock_ms += self.rng.random_range(400..4_000);
            let ctx = Context {
                now_ms: self.clock_ms,
                salt: self.rng.random(),
                password_params: PasswordParams::Light,
            };
            let Ok(events) = decide(&self.state, &command, &ctx) else {
                continue;
            };
            if events.is_empty() {
                continue;
            }
            let envelopes = envelopes(&self.id, &self.state, events, self.clock_ms);
            let mut out = Vec::with_capacity(envelopes.len());
            for envelope in envelopes {
                self.state
                    .apply(&envelope)
                    .expect("decide only returns events that apply");
                let signed = self.signer.sign(&envelope);
                out.push((envelope, signed));
            }
            return out;
        }
        panic!("simulated machine {} made no progress", self.id);
    }

    fn plan_next_activity(&mut self) {
        if !self.state.installed {
            self.plan.push_back(Command::Install {
                slots: default_catalog(),
                tube_capacity: DEFAULT_TUBE_CAPACITY,
                stacker_capacity_bills: DEFAULT_STACKER_CAPACITY_BILLS,
                admin_password: SIMULATED_ADMIN_PASSWORD.to_owned(),
            });
            self.plan_service();
            return;
        }
        let sold_out = self.state.slots.values().filter(|s| s.sold_out()).count();
        let needs_service = sold_out >= 2
            || self.state.stacker_bills + 10 >= self.state.stacker_capacity_bills
            || self.customers_since_service >= 60
            || (self.state.exact_change_only() && self.rng.random_bool(0.3));
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
        self.clock_ms += self.rng.random_range(60_000..1_800_000);
        let available: Vec<(SlotId, Won)> = self
            .state
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
        self.clock_ms += self.rng.random_range(600_000..7_200_000);
        if self.rng.random_bool(0.05) {
            self.plan.push_back(Command::AdminLogin {
                password: "wrong-password-1!".to_owned(),
            });
        }
        self.plan.push_back(Command::AdminLogin {
            password: SIMULATED_ADMIN_PASSWORD.to_owned(),
        });
        self.plan.push_back(Command::RefillAll);
        // Now and then the operator brings no coins, so tubes run low and
        // customers are owed change until the next visit.
        let brings_coins = !self.state.installed || self.rng.random_bool(0.8);
        for (tube, coin) in Denomination::COINS.into_iter().enumerate() {
            if !brings_coins {
                break;
            }
            let room = self.state.tube_capacity.0[tube].saturating_sub(self.state.tubes.0[tube]);
            let low = self.state.tubes.0[tube] < self.state.tube_capacity.0[tube] / 2;
            if low || !self.state.installed {
                let count = if self.state.installed {
                    room / 2 + 1
                } else {
                    30
                };
                self.plan.push_back(Command::LoadTube {
                    denomination: coin,
                    count,
                });
            }
        }
        let expected = self.state.cash_box + self.state.stacker_total();
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
        let tickets: Vec<u64> = self.state.owed.keys().copied().collect();
        for ticket in tickets {
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
            (0..300)
                .flat_map(|_| machine.step())
                .map(|(_, signed)| signed.chain_hash)
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
        for _ in 0..20_000 {
            for (envelope, _) in machine.step() {
                stats.record(&envelope.event);
            }
        }
        machine.state().check_consistency().unwrap();
        assert!(stats.purchases > 1_000, "{stats:?}");
        assert!(stats.cancels > 10, "{stats:?}");
        assert!(stats.rejected_inserts > 10, "{stats:?}");
        assert!(stats.collections > 5, "{stats:?}");
    }
}

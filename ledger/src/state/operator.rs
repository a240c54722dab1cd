//! What operators do, at the machine or through the dashboard: the
//! installation, stock, coins and cash, the catalog, settlements and
//! remote commands. Each function checks its event completely, posts it,
//! then changes the state (see [`MachineState::apply_event`]).

use super::{ApplyError, HOLDER_CAPACITY_MAX, MachineState, PendingPostings, Slot};
use crate::admin;
use crate::catalog::{self, CatalogError, SlotConfig};
use crate::event::{Installation, Source};
use crate::ids::SlotId;
use crate::money::{Denomination, Won};

impl MachineState {
    /// The first event of every stream: tube and stacker capacities and
    /// the admin password. The slots follow as `SlotConfigured` events.
    pub(super) fn apply_installation(
        &mut self,
        installation: &Installation,
        pending: PendingPostings,
    ) -> Result<(), ApplyError> {
        self.check_installation(installation)?;
        pending.post(&mut self.balances)?;
        self.installed = true;
        self.tube_capacity = installation.tube_capacity;
        self.stacker_capacity_bills = installation.stacker_capacity_bills;
        self.admin.password_hash = installation.admin_password_hash.clone();
        self.next_ticket = 1;
        Ok(())
    }

    fn check_installation(&self, installation: &Installation) -> Result<(), ApplyError> {
        if self.installed {
            return Err(ApplyError::AlreadyInstalled);
        }
        let capacities_ok = installation
            .tube_capacity
            .0
            .iter()
            .chain(std::iter::once(&installation.stacker_capacity_bills))
            .all(|&c| (1..=HOLDER_CAPACITY_MAX).contains(&c));
        if !capacities_ok {
            return Err(ApplyError::BadInstallation(
                "tube and stacker capacities must be 1 to 10,000".to_owned(),
            ));
        }
        admin::validate_hash(&installation.admin_password_hash)
            .map_err(|e| ApplyError::BadInstallation(e.to_string()))
    }

    /// An operator paid an open ticket for exactly its amount.
    pub(super) fn apply_settlement(
        &mut self,
        ticket: u64,
        amount: Won,
        source: &Source,
        pending: PendingPostings,
    ) -> Result<(), ApplyError> {
        self.check_source(source)?;
        match self.owed.get(&ticket) {
            Some(open) if open.amount == amount => {}
            _ => return Err(ApplyError::UnknownTicket(ticket)),
        }
        pending.post(&mut self.balances)?;
        self.owed.remove(&ticket);
        self.note_source(source);
        Ok(())
    }

    pub(super) fn apply_refill(
        &mut self,
        slot: SlotId,
        added: u32,
        pending: PendingPostings,
    ) -> Result<(), ApplyError> {
        let stocked = self.slot(slot)?;
        if added == 0 || stocked.stock.saturating_add(added) > stocked.config.capacity {
            return Err(ApplyError::Stock {
                slot,
                problem: "refill beyond capacity",
            });
        }
        pending.post(&mut self.balances)?;
        let refilled = self.slot_mut(slot);
        refilled.stock += added;
        debug_assert!(refilled.stock <= refilled.config.capacity);
        Ok(())
    }

    /// Coins an operator loads into a tube, up to its capacity.
    pub(super) fn apply_tube_load(
        &mut self,
        denomination: Denomination,
        count: u32,
        pending: PendingPostings,
    ) -> Result<(), ApplyError> {
        let tube = denomination
            .tube_index()
            .ok_or(ApplyError::BadDestination(denomination))?;
        if count == 0 || self.tubes.0[tube].saturating_add(count) > self.tube_capacity.0[tube] {
            return Err(ApplyError::TubeOverflow(denomination));
        }
        pending.post(&mut self.balances)?;
        self.tubes.0[tube] += count;
        Ok(())
    }

    /// The operator emptied the cash box and stacker. The event states what
    /// the machine expected, which must be what it holds; the difference
    /// to the counted amount is the over/short.
    pub(super) fn apply_collection(
        &mut self,
        cash_box: Won,
        stacker: Won,
        counted: Won,
        pending: PendingPostings,
    ) -> Result<(), ApplyError> {
        if cash_box != self.cash_box || stacker != self.stacker_total() {
            return Err(ApplyError::CollectionMismatch("expected amounts differ"));
        }
        if counted < 0 {
            return Err(ApplyError::CollectionMismatch("negative count"));
        }
        pending.post(&mut self.balances)?;
        self.cash_box = 0;
        self.stacker_bills = 0;
        self.stats.collections += 1;
        self.stats.over_short_won += counted - cash_box - stacker;
        Ok(())
    }

    pub(super) fn apply_price(
        &mut self,
        slot: SlotId,
        price: Won,
        source: &Source,
        pending: PendingPostings,
    ) -> Result<(), ApplyError> {
        self.slot(slot)?;
        self.check_source(source)?;
        catalog::validate_price(price)?;
        pending.post(&mut self.balances)?;
        self.slot_mut(slot).config.product.price = price;
        self.note_source(source);
        Ok(())
    }

    pub(super) fn apply_rename(
        &mut self,
        slot: SlotId,
        name: &str,
        source: &Source,
        pending: PendingPostings,
    ) -> Result<(), ApplyError> {
        self.slot(slot)?;
        self.check_source(source)?;
        catalog::validate_name(name)?;
        pending.post(&mut self.balances)?;
        self.slot_mut(slot).config.product.name = name.to_owned();
        self.note_source(source);
        Ok(())
    }

    /// A slot added (within `SLOTS_MAX`) or reconfigured; its stock stays
    /// and must fit the new capacity.
    pub(super) fn apply_slot_config(
        &mut self,
        config: &SlotConfig,
        pending: PendingPostings,
    ) -> Result<(), ApplyError> {
        config.validate()?;
        if !self.slots.contains_key(&config.slot) && self.slots.len() >= catalog::SLOTS_MAX {
            return Err(ApplyError::Catalog(CatalogError::BadSlot));
        }
        if let Some(existing) = self.slots.get(&config.slot)
            && existing.stock > config.capacity
        {
            return Err(ApplyError::Stock {
                slot: config.slot,
                problem: "stock above the new capacity",
            });
        }
        pending.post(&mut self.balances)?;
        let stock = self.slots.get(&config.slot).map_or(0, |s| s.stock);
        let slot = Slot {
            config: config.clone(),
            stock,
        };
        self.slots.insert(config.slot, slot);
        Ok(())
    }

    /// A remote command the machine could not apply still uses up its id,
    /// so a resend of it is recognised as stale.
    pub(super) fn apply_remote_rejection(
        &mut self,
        command_id: u64,
        pending: PendingPostings,
    ) -> Result<(), ApplyError> {
        self.check_source(&Source::Remote { command_id })?;
        pending.post(&mut self.balances)?;
        self.last_remote_command_id = command_id;
        Ok(())
    }
}

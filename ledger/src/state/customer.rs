//! The customer's session: money in, purchases and cancels, change out.
//! Each function checks its event completely, posts it, then changes the
//! state (see [`MachineState::apply_event`]).

use super::{
    ApplyError, ESCROW_BILLS_LIMIT, ESCROW_LIMIT, Escrow, MachineState, OWED_TICKETS_MAX,
    OwedTicket, PURCHASE_STACK_MAX, PendingPostings, PurchaseRecord,
};
use crate::event::Destination;
use crate::ids::SlotId;
use crate::money::{CoinCounts, Denomination, Won};

impl MachineState {
    /// A coin goes to its tube, or to the cash box once the tube is full; a
    /// bill waits in the validator's escrow (format 2; before, bills went
    /// straight to the stacker). Either way it joins the customer's
    /// balance.
    pub(super) fn apply_money_inserted(
        &mut self,
        denomination: Denomination,
        destination: Destination,
        pending: PendingPostings,
    ) -> Result<(), ApplyError> {
        self.check_insert(denomination, destination)?;
        pending.post(&mut self.balances)?;
        let value = denomination.value();
        match (destination, denomination.tube_index()) {
            (Destination::Tube, Some(tube)) => self.tubes.0[tube] += 1,
            (Destination::CashBox, _) => self.cash_box += value,
            (Destination::Escrow, _) => {
                self.escrow.held_bill = Some(denomination);
                self.escrow.bills += value;
            }
            _ => {
                self.stacker_bills += 1;
                self.escrow.bills += value;
            }
        }
        self.escrow.active = true;
        self.escrow.balance += value;
        Ok(())
    }

    /// The escrow limits, and a destination the money can really go to:
    /// a coin to its own tube (with room) or the cash box, a bill to the
    /// stacker (with room).
    fn check_insert(
        &self,
        denomination: Denomination,
        destination: Destination,
    ) -> Result<(), ApplyError> {
        let value = denomination.value();
        if self.escrow.balance + value > ESCROW_LIMIT {
            return Err(ApplyError::EscrowLimit("balance above 7,000 won"));
        }
        match (denomination.tube_index(), destination) {
            (Some(tube), Destination::Tube) => {
                if self.tubes.0[tube] >= self.tube_capacity.0[tube] {
                    return Err(ApplyError::TubeOverflow(denomination));
                }
            }
            (Some(_), Destination::CashBox) => {}
            (None, Destination::Stacker | Destination::Escrow) => {
                if self.escrow.bills + value > ESCROW_BILLS_LIMIT {
                    return Err(ApplyError::EscrowLimit("bills above 5,000 won"));
                }
                // Room for every bill, the held one included: it goes to
                // the stacker when the customer buys.
                let held = u32::from(self.escrow.held_bill.is_some());
                if self.stacker_bills + held >= self.stacker_capacity_bills {
                    return Err(ApplyError::StackerOverflow);
                }
                if destination == Destination::Escrow && held > 0 {
                    return Err(ApplyError::SessionMismatch(
                        "a bill is already held: it is stacked first",
                    ));
                }
            }
            _ => return Err(ApplyError::BadDestination(denomination)),
        }
        Ok(())
    }

    /// A rejected coin or bill was handed straight back: only counted.
    pub(super) fn apply_money_rejected(
        &mut self,
        pending: PendingPostings,
    ) -> Result<(), ApplyError> {
        pending.post(&mut self.balances)?;
        self.stats.inserts_rejected += 1;
        Ok(())
    }

    /// A purchase needs stock, an open session and enough balance; it joins
    /// the stack that cancel walks back.
    pub(super) fn apply_purchase(
        &mut self,
        slot: SlotId,
        product: &str,
        price: Won,
        pending: PendingPostings,
    ) -> Result<(), ApplyError> {
        if self.slot(slot)?.stock == 0 {
            return Err(ApplyError::Stock {
                slot,
                problem: "purchase from an empty slot",
            });
        }
        if !self.escrow.active || self.escrow.balance < price || price <= 0 {
            return Err(ApplyError::SessionMismatch("purchase exceeds the balance"));
        }
        if self.escrow.coin_part() < price {
            return Err(ApplyError::SessionMismatch(
                "a purchase that needs the held bill stacks it first",
            ));
        }
        pending.post(&mut self.balances)?;
        self.slot_mut(slot).stock -= 1;
        self.escrow.balance -= price;
        if self.escrow.purchases.len() == PURCHASE_STACK_MAX {
            // The oldest purchase becomes final: cancel walks back at most
            // PURCHASE_STACK_MAX of them.
            self.escrow.purchases.remove(0);
        }
        self.escrow.purchases.push(PurchaseRecord {
            slot,
            product: product.to_owned(),
            price,
        });
        self.stats.purchases += 1;
        self.stats.sales_won += price;
        Ok(())
    }

    /// A cancel must name exactly the most recent purchase of the session,
    /// and the item must fit back into its slot.
    pub(super) fn apply_cancel(
        &mut self,
        slot: SlotId,
        product: &str,
        price: Won,
        pending: PendingPostings,
    ) -> Result<(), ApplyError> {
        let last = self
            .escrow
            .purchases
            .last()
            .ok_or(ApplyError::SessionMismatch("no purchase to cancel"))?;
        if last.slot != slot || last.product != product || last.price != price {
            return Err(ApplyError::SessionMismatch("cancel of another purchase"));
        }
        let stocked = self.slot(slot)?;
        if stocked.stock >= stocked.config.capacity {
            return Err(ApplyError::Stock {
                slot,
                problem: "cancel would exceed capacity",
            });
        }
        pending.post(&mut self.balances)?;
        self.escrow.purchases.pop();
        let restocked = self.slot_mut(slot);
        restocked.stock += 1;
        debug_assert!(restocked.stock <= restocked.config.capacity);
        self.escrow.balance += price;
        self.stats.cancels += 1;
        self.stats.sales_won -= price;
        Ok(())
    }

    /// Coins paid out of the tubes. The postings refuse to overdraw a tube,
    /// so the counts below cannot go negative; the session ends once the
    /// balance is paid.
    pub(super) fn apply_change_returned(
        &mut self,
        coins: &CoinCounts,
        paid: Won,
        pending: PendingPostings,
    ) -> Result<(), ApplyError> {
        if !self.escrow.active {
            return Err(ApplyError::NoSession);
        }
        if coins.total() != paid || paid > self.escrow.coin_part() {
            return Err(ApplyError::SessionMismatch(
                "change does not match the balance",
            ));
        }
        pending.post(&mut self.balances)?;
        for (tube, count) in coins.0.iter().enumerate() {
            debug_assert!(
                self.tubes.0[tube] >= *count,
                "the postings checked the tube"
            );
            self.tubes.0[tube] -= count;
        }
        self.escrow.balance -= paid;
        self.stats.change_paid_won += paid;
        if self.escrow.balance == 0 {
            self.escrow = Escrow::default();
        }
        Ok(())
    }

    /// What the tubes could not pay becomes a numbered ticket for exactly
    /// the remaining balance, and the session ends.
    pub(super) fn apply_change_owed(
        &mut self,
        ticket: u64,
        amount: Won,
        at_ms: i64,
        pending: PendingPostings,
    ) -> Result<(), ApplyError> {
        let remaining = self.escrow.balance == amount && self.escrow.held_bill.is_none();
        if !self.escrow.active || !remaining || amount <= 0 {
            return Err(ApplyError::SessionMismatch(
                "change owed is not the remaining balance",
            ));
        }
        if ticket != self.next_ticket {
            return Err(ApplyError::UnknownTicket(ticket));
        }
        if self.owed.len() >= OWED_TICKETS_MAX {
            return Err(ApplyError::TooManyTickets);
        }
        pending.post(&mut self.balances)?;
        let open = OwedTicket {
            ticket,
            amount,
            at_ms,
        };
        let previous = self.owed.insert(ticket, open);
        debug_assert!(previous.is_none(), "ticket numbers are never reused");
        self.next_ticket += 1;
        self.escrow = Escrow::default();
        Ok(())
    }
}

impl MachineState {
    /// The held bill goes on to the stacker (the customer bought with it,
    /// or inserted another bill).
    pub(super) fn apply_bill_stacked(
        &mut self,
        denomination: Denomination,
        pending: PendingPostings,
    ) -> Result<(), ApplyError> {
        if self.escrow.held_bill != Some(denomination) {
            return Err(ApplyError::SessionMismatch("no such bill is held"));
        }
        if self.stacker_bills >= self.stacker_capacity_bills {
            return Err(ApplyError::StackerOverflow);
        }
        pending.post(&mut self.balances)?;
        self.escrow.held_bill = None;
        self.stacker_bills += 1;
        Ok(())
    }

    /// The held bill goes back to the customer at Return; the session ends
    /// when it was all that was left.
    pub(super) fn apply_bill_returned(
        &mut self,
        denomination: Denomination,
        pending: PendingPostings,
    ) -> Result<(), ApplyError> {
        if !self.escrow.active || self.escrow.held_bill != Some(denomination) {
            return Err(ApplyError::SessionMismatch("no such bill is held"));
        }
        pending.post(&mut self.balances)?;
        let value = denomination.value();
        self.escrow.held_bill = None;
        self.escrow.balance -= value;
        self.escrow.bills -= value;
        if self.escrow.balance == 0 {
            self.escrow = Escrow::default();
        }
        Ok(())
    }
}

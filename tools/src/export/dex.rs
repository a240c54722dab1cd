//! One machine's EVA-DTS (DEX/UCS) audit file, as a route driver's
//! handheld reads it from a real machine. docs/DEX.md maps every field to
//! the ledger's events and postings.
//!
//! "Since reset" counters restart at the machine's last cash collection,
//! as they do when a driver reads and resets a machine at a visit; "since
//! initialisation" counters run from its installation. Counts are net of
//! cancels.

use anyhow::{Result, bail};
use ledger::MachineId;
use ledger::event::{Destination, Event};
use ledger::ids::SlotId;
use ledger::money::{Denomination, Won};
use ledger::projection::Tally;
use ledger::state::MachineState;
use std::collections::BTreeMap;
use std::fmt::Write;

/// The element separator; it may not appear inside an element.
const SEPARATOR: char = '*';
/// Every segment ends in CR LF.
const LINE_END: &str = "\r\n";
/// DXS01: the sender's communication id, ten characters.
const SENDER_ID: &str = "VENDLEDGER";
/// ID4: no decimal places, Korean won (ISO 4217 numeric and alphabetic).
const CURRENCY: &str = "0*410*KRW";
/// EA2 event id for change-owed tickets (vendledger's own: see DEX.md).
const CHANGE_OWED_EVENT: &str = "VCO";

/// The machine's counters over one span of time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Paid vends, net of cancels (all vends here are paid in cash).
    pub vends: Tally,
    /// Coins that went to the cash box.
    pub to_box: Won,
    /// Coins that went to the change tubes.
    pub to_tubes: Won,
    /// Bills accepted.
    pub bills_in: Won,
    /// Change paid out by the coin mechanism.
    pub change_dispensed: Won,
    /// Change owed that an operator later paid by hand.
    pub manually_dispensed: Won,
    /// Change-owed tickets issued.
    pub change_owed_tickets: u64,
    /// Vends per slot, net of cancels.
    pub products: BTreeMap<SlotId, Tally>,
}

impl Counters {
    /// All cash taken in: coins to box and tubes, and bills.
    pub fn cash_in(&self) -> Won {
        self.to_box + self.to_tubes + self.bills_in
    }

    fn record(&mut self, event: &Event) {
        match event {
            Event::MoneyInserted {
                denomination,
                destination,
            } => {
                let value = denomination.value();
                match destination {
                    Destination::Tube => self.to_tubes += value,
                    Destination::CashBox => self.to_box += value,
                    Destination::Stacker => self.bills_in += value,
                }
            }
            Event::ProductPurchased { slot, price, .. } => self.vend(*slot, 1, *price),
            Event::PurchaseCancelled { slot, price, .. } => self.vend(*slot, -1, -price),
            Event::ChangeReturned { paid, .. } => self.change_dispensed += paid,
            Event::ChangeOwed { .. } => self.change_owed_tickets += 1,
            Event::ChangeOwedSettled { amount, .. } => self.manually_dispensed += amount,
            _ => {}
        }
    }

    fn vend(&mut self, slot: SlotId, count: i64, won: Won) {
        for tally in [&mut self.vends, self.products.entry(slot).or_default()] {
            tally.count += count;
            tally.won += won;
        }
    }
}

/// What a handheld reads: counters since installation and since the last
/// cash collection (the reset).
#[derive(Clone, Debug, Default)]
pub struct Reading {
    pub init: Counters,
    pub since_reset: Counters,
}

impl Reading {
    /// Counts one applied event of the machine.
    pub fn record(&mut self, event: &Event) {
        if matches!(event, Event::CashCollected { .. }) {
            self.since_reset = Counters::default();
            return;
        }
        self.init.record(event);
        self.since_reset.record(event);
    }
}

/// The audit file of `machine` in its `state`, with `reading`'s counters.
pub fn write(machine: &MachineId, state: &MachineState, reading: &Reading) -> Result<String> {
    let (init, reset) = (&reading.init, &reading.since_reset);
    let mut body: Vec<String> = vec![
        "ST*001*0001".to_owned(),
        format!("ID1*{}*VENDLEDGER*1", element(machine.as_str())?),
        format!("ID4*{CURRENCY}"),
        format!("ID5*{}", reading_time(state.last_at_ms)),
        format!(
            "VA1*{}*{}*{}*{}",
            init.vends.won, init.vends.count, reset.vends.won, reset.vends.count
        ),
        format!(
            "CA2*{}*{}*{}*{}",
            reset.vends.won, reset.vends.count, init.vends.won, init.vends.count
        ),
        format!(
            "CA3*{}*{}*{}*{}*{}*{}*{}*{}",
            reset.cash_in(),
            reset.to_box,
            reset.to_tubes,
            reset.bills_in,
            init.cash_in(),
            init.to_box,
            init.to_tubes,
            init.bills_in
        ),
        format!(
            "CA4*{}*{}*{}*{}",
            reset.change_dispensed,
            reset.manually_dispensed,
            init.change_dispensed,
            init.manually_dispensed
        ),
    ];
    let tube_value: Won = Denomination::COINS
        .iter()
        .map(|coin| coin.value() * Won::from(state.tubes.get(*coin)))
        .sum();
    body.push(format!("CA15*{tube_value}"));
    for (index, coin) in Denomination::COINS.iter().enumerate() {
        body.push(format!(
            "CA17*{index}*{}*{}",
            coin.value(),
            state.tubes.get(*coin)
        ));
    }
    for (slot, contents) in &state.slots {
        let label = product_label(&contents.config.product.name, *slot);
        body.push(format!(
            "PA1*{}*{}*{label}",
            slot.0, contents.config.product.price
        ));
        let (i, r) = (
            init.products.get(slot).copied().unwrap_or_default(),
            reset.products.get(slot).copied().unwrap_or_default(),
        );
        body.push(format!("PA2*{}*{}*{}*{}", i.count, i.won, r.count, r.won));
    }
    body.push(format!(
        "EA2*{CHANGE_OWED_EVENT}*{}*{}*{}",
        reset.change_owed_tickets,
        init.change_owed_tickets,
        u8::from(!state.owed.is_empty())
    ));
    Ok(envelope(&body))
}

/// DXS, the transaction's segments, G85 with their CRC, SE with their
/// count, DXE.
fn envelope(body: &[String]) -> String {
    let mut checked = String::new();
    for segment in body {
        checked.push_str(segment);
        checked.push_str(LINE_END);
    }
    let crc = crc16_arc(checked.as_bytes());
    // ST through SE inclusive: the body, G85 and SE itself.
    let count = body.len() + 2;
    let mut out = String::new();
    let _ = write!(out, "DXS*{SENDER_ID}*VA*V1/1*1{LINE_END}");
    out.push_str(&checked);
    let _ = write!(out, "G85*{crc:04X}{LINE_END}");
    let _ = write!(out, "SE*{count}*0001{LINE_END}");
    let _ = write!(out, "DXE*1*1{LINE_END}");
    out
}

/// CRC-16/ARC (poly 0x8005 reflected, init 0), the G85 checksum.
pub fn crc16_arc(bytes: &[u8]) -> u16 {
    crc::Crc::<u16>::new(&crc::CRC_16_ARC).checksum(bytes)
}

/// An element value: printable ASCII without the separator.
fn element(text: &str) -> Result<&str> {
    if text.is_empty() || !text.chars().all(|c| c.is_ascii_graphic() && c != SEPARATOR) {
        bail!("{text:?} cannot be written in a DEX element (printable ASCII without '*')");
    }
    Ok(text)
}

/// A product's name as DEX can carry it: printable ASCII without the
/// separator, at most 20 characters; a name it cannot carry (Hangul, say)
/// becomes `SLOT<n>`, so the slot still identifies it.
fn product_label(name: &str, slot: SlotId) -> String {
    let fits = name
        .chars()
        .all(|c| (c == ' ' || c.is_ascii_graphic()) && c != SEPARATOR);
    if fits && !name.trim().is_empty() {
        name.chars().take(20).collect::<String>().trim().to_owned()
    } else {
        format!("SLOT{}", slot.0)
    }
}

/// ID5: the machine's clock at its last event, in Korean time
/// (`YYYYMMDD*HHMM`).
fn reading_time(at_ms: i64) -> String {
    jiff::Timestamp::from_millisecond(at_ms).map_or_else(
        |_| "19700101*0000".to_owned(),
        |t| {
            t.to_zoned(jiff::tz::TimeZone::fixed(jiff::tz::offset(9)))
                .strftime("%Y%m%d*%H%M")
                .to_string()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crc_is_crc16_arc() {
        // The catalogue's check value for CRC-16/ARC.
        assert_eq!(crc16_arc(b"123456789"), 0xBB3D);
    }

    #[test]
    fn the_envelope_counts_segments_and_checks_st_through_the_last_body_segment() {
        let body = vec!["ST*001*0001".to_owned(), "VA1*1500*2*500*1".to_owned()];
        let text = envelope(&body);
        let lines: Vec<&str> = text.split_terminator("\r\n").collect();
        assert_eq!(lines.first(), Some(&"DXS*VENDLEDGER*VA*V1/1*1"));
        assert_eq!(
            lines[3],
            format!(
                "G85*{:04X}",
                crc16_arc(b"ST*001*0001\r\nVA1*1500*2*500*1\r\n")
            )
        );
        assert_eq!(lines[4], "SE*4*0001");
        assert_eq!(lines[5], "DXE*1*1");
        assert!(text.ends_with("\r\n") && !text.replace("\r\n", "").contains(['\r', '\n']));
    }

    #[test]
    fn a_name_dex_cannot_carry_becomes_its_slot() {
        assert_eq!(product_label("Cola", SlotId(3)), "Cola");
        assert_eq!(product_label("콜라", SlotId(3)), "SLOT3");
        assert_eq!(product_label("a*b", SlotId(4)), "SLOT4");
        assert_eq!(
            product_label("Sparkling Water Large Bottle", SlotId(1)),
            "Sparkling Water Larg"
        );
        assert!(element("VM-001").is_ok());
        assert!(element("VM*1").is_err());
    }

    #[test]
    fn since_reset_counters_restart_at_a_collection() {
        let mut reading = Reading::default();
        let buy = Event::ProductPurchased {
            slot: SlotId(1),
            product: "Cola".into(),
            price: 1_200,
        };
        reading.record(&buy);
        reading.record(&Event::CashCollected {
            cash_box: 0,
            stacker: 0,
            counted: 0,
        });
        reading.record(&buy);
        reading.record(&Event::PurchaseCancelled {
            slot: SlotId(1),
            product: "Cola".into(),
            price: 1_200,
        });
        assert_eq!(
            reading.init.vends,
            Tally {
                count: 1,
                won: 1_200
            }
        );
        assert_eq!(reading.since_reset.vends, Tally { count: 0, won: 0 });
    }
}

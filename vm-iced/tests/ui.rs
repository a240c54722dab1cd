//! The main flows through the real screens, headless with iced_test's
//! simulator: find text, click buttons, feed the messages back to `update`.
//! The machine underneath is real (its own encrypted ledger in a temporary
//! directory), with a clock the tests move.

use iced::keyboard::key::Named;
use iced_test::{selector, simulator};
use ledger::admin::PasswordParams;
use ledger::ids::SlotId;
use ledger::money::Denomination;
use ledger::{Command, MachineId};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use vm_iced::admin::AdminMessage;
use vm_iced::app::{App, Message, Screen};
use vm_iced::config::MachineConfig;
use vm_iced::machine::Machine;
use workload::SIMULATION_START_MS;

const PASSWORD: &str = "vend-admin-1!";

struct Harness {
    app: App,
    clock: Arc<AtomicI64>,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// A new machine, stocked except slot 6, with `tubes` coins of 100 won
    /// (and nothing else) for change.
    fn new(hundreds_in_tube: u32) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut config = MachineConfig::new(
            MachineId::numbered(1),
            dir.path().join("vm"),
            dir.path().join("keys"),
        );
        config.initial_admin_password = Some(PASSWORD.to_owned());
        ledger::keys::create_machine_keys(&config.keys_dir, &[config.machine_id.clone()]).unwrap();
        let clock = Arc::new(AtomicI64::new(SIMULATION_START_MS));
        let time = clock.clone();
        let mut machine = Machine::open(
            &config,
            Box::new(move || time.load(Ordering::SeqCst)),
            PasswordParams::Light,
        )
        .unwrap();
        machine
            .execute(Command::AdminLogin {
                password: PASSWORD.to_owned(),
            })
            .unwrap();
        for slot in 1..=5 {
            machine
                .execute(Command::Refill {
                    slot: SlotId(slot),
                    count: None,
                })
                .unwrap();
        }
        if hundreds_in_tube > 0 {
            machine
                .execute(Command::LoadTube {
                    denomination: Denomination::Coin100,
                    count: hundreds_in_tube,
                })
                .unwrap();
        }
        machine.execute(Command::AdminLogout).unwrap();
        Harness {
            app: App::new(machine, false),
            clock,
            _dir: dir,
        }
    }

    /// Clicks whatever shows `target` and feeds the resulting messages to
    /// the app; returns how many messages the click produced.
    fn click(&mut self, target: &str) -> usize {
        let mut ui = simulator(self.app.view());
        ui.click(target)
            .unwrap_or_else(|e| panic!("cannot click {target:?}: {e:?}"));
        self.feed(ui.into_messages().collect())
    }

    fn feed(&mut self, messages: Vec<Message>) -> usize {
        let count = messages.len();
        for message in messages {
            let _ = self.app.update(message);
        }
        count
    }

    fn sees(&self, text: &str) -> bool {
        simulator(self.app.view()).find(text).is_ok()
    }

    fn notice(&self) -> String {
        self.app
            .notice
            .as_ref()
            .map(|n| n.text.clone())
            .unwrap_or_default()
    }

    fn balance(&self) -> i64 {
        self.app.machine.state().escrow.balance
    }

    fn stock(&self, slot: u16) -> u32 {
        self.app.machine.state().slots[&SlotId(slot)].stock
    }

    /// Types the password into the login field and presses Enter.
    fn log_in(&mut self, password: &str) {
        let mut ui = simulator(self.app.view());
        ui.click(selector::id("admin-password")).unwrap();
        let _ = ui.typewrite(password);
        let _ = ui.tap_key(Named::Enter);
        let messages = ui.into_messages().collect();
        self.feed(messages);
    }
}

#[test]
fn insert_coins_and_buy() {
    let mut h = Harness::new(10);
    assert!(h.sees("Balance 0 won"));
    assert_eq!(h.click("500-won coin"), 1);
    assert_eq!(h.click("100-won coin"), 1);
    assert!(h.sees("Balance 600 won"));
    assert_eq!(h.click("Coffee"), 1);
    assert_eq!(h.notice(), "Enjoy your Coffee!");
    assert_eq!(h.balance(), 100);
    assert_eq!(h.stock(2), 9);
    assert!(h.sees("9 left"));
    assert_eq!(h.click("Return change"), 1);
    assert_eq!(h.notice(), "Your change: 100 won (1×100)");
    assert!(h.sees("Balance 0 won"));
}

#[test]
fn sold_out_and_unaffordable_products_are_disabled() {
    let mut h = Harness::new(10);
    assert!(h.sees("SOLD OUT"), "slot 6 was never filled");
    h.click("1,000-won bill");
    assert_eq!(h.click("Special Drink"), 0, "sold out: no message");
    assert_eq!(
        h.click("Premium Coffee"),
        1,
        "700 won with 1,000 in: enabled"
    );
    assert_eq!(h.balance(), 300);
    assert_eq!(h.click("Soda"), 0, "750 won with 300 in: disabled");
    assert_eq!(h.stock(5), 10);
}

#[test]
fn every_insert_limit_is_refused_with_its_message() {
    let mut h = Harness::new(10);
    for _ in 0..5 {
        h.click("1,000-won bill");
    }
    assert_eq!(h.balance(), 5_000);
    h.click("1,000-won bill");
    assert_eq!(h.notice(), "Returned: at most 5,000 won in bills");
    assert_eq!(h.balance(), 5_000);
    for _ in 0..4 {
        h.click("500-won coin");
    }
    assert_eq!(h.balance(), 7_000);
    h.click("10-won coin");
    assert_eq!(h.notice(), "Returned: the balance may not exceed 7,000 won");
    assert!(h.sees("Returned: the balance may not exceed 7,000 won"));
    h.click("Foreign coin");
    assert_eq!(
        h.notice(),
        "Not accepted: use 10, 50, 100 or 500-won coins or 1,000-won bills"
    );
    h.click("5,000-won bill");
    assert_eq!(
        h.notice(),
        "Not accepted: use 10, 50, 100 or 500-won coins or 1,000-won bills"
    );
    assert_eq!(h.balance(), 7_000);
}

#[test]
fn cancel_walks_back_the_session_twice() {
    let mut h = Harness::new(10);
    h.click("1,000-won bill");
    h.click("1,000-won bill");
    h.click("Water");
    h.click("Coffee");
    assert_eq!(h.balance(), 1_050);
    h.click("Cancel last purchase");
    assert_eq!(h.notice(), "Cancelled Coffee: 500 won back in your balance");
    assert_eq!((h.balance(), h.stock(2)), (1_550, 10));
    h.click("Cancel last purchase");
    assert_eq!(h.notice(), "Cancelled Water: 450 won back in your balance");
    assert_eq!((h.balance(), h.stock(1)), (2_000, 10));
    assert_eq!(
        h.click("Cancel last purchase"),
        0,
        "nothing left to cancel: disabled"
    );
}

#[test]
fn change_from_bounded_tubes_and_change_owed() {
    let mut h = Harness::new(1);
    h.click("1,000-won bill");
    h.click("Water");
    assert_eq!(h.balance(), 550);
    h.click("Return change");
    assert_eq!(
        h.notice(),
        "Your change: 100 won (1×100). The machine owes you 450 won (ticket #1 at VM-001): please call the operator"
    );
    assert!(h.sees(&h.notice()));
    assert_eq!(h.app.machine.state().owed_total(), 450);
    assert_eq!(h.balance(), 0);
}

#[test]
fn wrong_passwords_lock_the_admin_screen_for_five_minutes() {
    let mut h = Harness::new(10);
    h.click("Admin");
    assert_eq!(h.app.screen, Screen::Login);
    for left in (1..=4).rev() {
        h.log_in("not-it-123!");
        assert_eq!(
            h.notice(),
            format!("Wrong password. {left} attempts left before a 5-minute lock.")
        );
    }
    h.log_in("not-it-123!");
    assert_eq!(h.notice(), "Wrong password. Admin is locked for 5 minutes.");
    h.log_in(PASSWORD);
    assert_eq!(
        h.app.screen,
        Screen::Login,
        "locked even with the right password"
    );
    assert!(
        h.notice()
            .starts_with("Admin is locked for 300 more seconds"),
        "{}",
        h.notice()
    );
    assert!(h.sees("Locked after too many failed logins: try again in 300 s"));
    h.clock.fetch_add(5 * 60 * 1_000, Ordering::SeqCst);
    h.log_in(PASSWORD);
    assert_eq!(h.app.screen, Screen::Admin);
    assert!(h.sees("Refill slots"));
}

fn logged_in() -> Harness {
    let mut h = Harness::new(10);
    h.click("Admin");
    h.log_in(PASSWORD);
    assert_eq!(h.app.screen, Screen::Admin);
    h
}

#[test]
fn refill_from_the_admin_screen_clears_sold_out() {
    let mut h = logged_in();
    assert!(h.sees("0 / 10"));
    h.click("Fill slot 6");
    assert_eq!(h.notice(), "Slot 6 +10");
    assert_eq!(h.stock(6), 10);
    h.click("Log out");
    assert_eq!(h.app.screen, Screen::Customer);
    assert!(!h.sees("SOLD OUT"));
}

#[test]
fn a_price_change_shows_on_the_customer_screen() {
    let mut h = logged_in();
    h.click("Products");
    h.feed(vec![Message::Admin(AdminMessage::EditPrice(
        SlotId(2),
        "620".into(),
    ))]);
    h.click("Save slot 2");
    assert_eq!(h.notice(), "Slot 2 now costs 620 won");
    h.click("Log out");
    assert!(h.sees("620 won"));
    assert!(!h.sees("500 won"), "no product costs 500 won any more");
    h.click("500-won coin");
    assert_eq!(
        h.click("Coffee"),
        0,
        "500 in, Coffee now costs 620: disabled"
    );
}

#[test]
fn reports_total_the_day_and_the_month() {
    let mut h = Harness::new(10);
    h.click("1,000-won bill");
    h.click("Water");
    h.click("Coffee");
    h.click("Return change");
    h.click("Admin");
    h.log_in(PASSWORD);
    h.click("Reports");
    assert!(h.sees("Total: 2 sold, 950 won"));
    assert!(h.sees("2026-01-01"));
    h.click("Monthly");
    assert!(h.sees("Total: 2 sold, 950 won"));
    assert!(h.sees("2026-01"));
}

#[test]
fn collecting_cash_records_over_and_short() {
    let mut h = Harness::new(10);
    h.click("1,000-won bill");
    h.click("Water");
    h.click("Return change");
    h.click("Admin");
    h.log_in(PASSWORD);
    h.click("Coins & cash");
    assert!(h.sees("Cash box 0 won + bill stacker 1,000 won = 1,000 won expected"));
    h.feed(vec![Message::Admin(AdminMessage::Counted("990".into()))]);
    h.click("Record collection");
    assert_eq!(h.notice(), "Collected 990 won: 10 won short");
    assert_eq!(h.app.machine.state().stats.over_short_won, -10);
}

#[test]
fn remote_commands_from_the_dashboard_apply_and_show() {
    use ledger::rules::{RemoteAction, RemoteCommand};
    use link::driver::UplinkReport;
    let mut h = Harness::new(10);
    let command = |command_id, action| {
        Message::Uplink(UplinkReport::Remote(RemoteCommand { command_id, action }))
    };
    h.feed(vec![command(
        7,
        RemoteAction::SetPrice {
            slot: SlotId(1),
            price: 480,
        },
    )]);
    assert_eq!(h.notice(), "Slot 1 now costs 480 won (from the dashboard)");
    assert!(h.sees("480 won"));
    h.feed(vec![command(
        8,
        RemoteAction::Rename {
            slot: SlotId(1),
            name: "Mineral Water".into(),
        },
    )]);
    assert!(h.sees("Mineral Water"));
    // A resend of an applied command changes nothing; a bad one is refused
    // with an event the dashboard can show.
    let before = h.app.machine.state().last_seq;
    h.feed(vec![command(
        8,
        RemoteAction::Rename {
            slot: SlotId(1),
            name: "Again".into(),
        },
    )]);
    assert_eq!(h.app.machine.state().last_seq, before);
    h.feed(vec![command(
        9,
        RemoteAction::SetPrice {
            slot: SlotId(1),
            price: 455,
        },
    )]);
    assert!(
        h.notice().starts_with("Remote command 9 refused"),
        "{}",
        h.notice()
    );
    assert_eq!(
        h.app.machine.state().slots[&SlotId(1)].config.product.price,
        480
    );
}

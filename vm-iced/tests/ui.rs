//! The main flows through the real screens, headless with iced_test's
//! simulator: find text, click buttons, feed the messages back to `update`.
//! The machine underneath is real (its own encrypted ledger in a temporary
//! directory), with a clock the tests move. Most tests read the English
//! texts; the machine speaks Korean by default, which has its own tests.

use iced::keyboard::key::Named;
use iced::{Rectangle, Size};
use iced_test::{selector, simulator};
use ledger::admin::PasswordParams;
use ledger::ids::SlotId;
use ledger::money::Denomination;
use ledger::{Command, MachineId};
use link::channel::RefusalReason;
use link::uplink::LinkState;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use vm_iced::admin::AdminMessage;
use vm_iced::app::{App, Message, Screen};
use vm_iced::config::MachineConfig;
use vm_iced::i18n::Language;
use vm_iced::machine::Machine;
use workload::SIMULATION_START_MS;

const PASSWORD: &str = "vend-admin-1!";

/// How the harness stocks the machine before a test.
#[derive(Clone, Copy)]
enum Setup {
    /// Nothing: a newly installed machine.
    Nothing,
    /// Slots 1-5 filled (6 stays sold out) and `n` 100-won coins.
    Hundreds(u32),
    /// Slots 1-5 filled and every tube full.
    FullTubes,
}

struct Harness {
    app: App,
    clock: Arc<AtomicI64>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new(setup: Setup) -> Harness {
        Harness::speaking(setup, Language::English)
    }

    fn speaking(setup: Setup, language: Language) -> Harness {
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
        let mut commands = Vec::new();
        if !matches!(setup, Setup::Nothing) {
            commands.extend((1..=5).map(|slot| Command::Refill {
                slot: SlotId(slot),
                count: None,
            }));
        }
        match setup {
            Setup::Hundreds(count) if count > 0 => commands.push(Command::LoadTube {
                denomination: Denomination::Coin100,
                count,
            }),
            Setup::FullTubes => commands.push(Command::LoadAllTubes),
            _ => {}
        }
        if !commands.is_empty() {
            machine
                .execute(Command::AdminLogin {
                    password: PASSWORD.to_owned(),
                })
                .unwrap();
            for command in commands {
                machine.execute(command).unwrap();
            }
            machine.execute(Command::AdminLogout).unwrap();
        }
        Harness {
            app: App::new(machine, false, language),
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

    /// Clicks the product card of `slot`.
    fn buy(&mut self, slot: u16) -> usize {
        let mut ui = simulator(self.app.view());
        ui.click(selector::id(vm_iced::customer::product_id(SlotId(slot))))
            .unwrap_or_else(|e| panic!("cannot click slot {slot}: {e:?}"));
        self.feed(ui.into_messages().collect())
    }

    /// Where the card of `slot` is drawn in a window of `size`.
    fn card_at(&self, size: Size, slot: u16) -> Option<Rectangle> {
        let mut ui =
            iced_test::Simulator::with_size(iced::Settings::default(), size, self.app.view());
        ui.find(selector::id(vm_iced::customer::product_id(SlotId(slot))))
            .ok()
            .and_then(|found| found.visible_bounds())
    }

    fn sees(&self, text: &str) -> bool {
        simulator(self.app.view()).find(text).is_ok()
    }

    /// Where `text` is drawn in a window of `size`, if it is.
    fn bounds_at(&self, size: Size, text: &str) -> Option<Rectangle> {
        let mut ui =
            iced_test::Simulator::with_size(iced::Settings::default(), size, self.app.view());
        ui.find(text).ok().and_then(|found| found.visible_bounds())
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
        ui.click(selector::id(vm_iced::app::PASSWORD_FIELD))
            .unwrap();
        let _ = ui.typewrite(password);
        let _ = ui.tap_key(Named::Enter);
        let messages = ui.into_messages().collect();
        self.feed(messages);
    }
}

#[test]
fn insert_coins_and_buy() {
    let mut h = Harness::new(Setup::Hundreds(10));
    assert!(h.sees("0 won"));
    assert_eq!(h.click("500-won coin"), 1);
    assert_eq!(h.click("100-won coin"), 1);
    assert!(h.sees("600 won"));
    assert_eq!(h.notice(), "100-won coin accepted");
    assert_eq!(h.buy(2), 1);
    assert_eq!(h.notice(), "Enjoy your 커피!");
    assert_eq!(h.balance(), 100);
    assert_eq!(h.stock(2), 9);
    assert!(h.sees("9 left"));
    assert_eq!(h.click("Return change"), 1);
    assert_eq!(h.notice(), "Your change: 100 won (1×100)");
    assert!(h.sees("0 won"));
}

#[test]
fn a_product_the_balance_cannot_buy_says_how_much_more_to_insert() {
    let mut h = Harness::new(Setup::Hundreds(10));
    assert!(h.sees("SOLD OUT"), "slot 6 was never filled");
    h.click("1,000-won bill");
    assert_eq!(h.buy(6), 1, "a sold-out product still answers");
    assert_eq!(h.notice(), "스페셜 음료 is sold out");
    assert_eq!(h.buy(4), 1);
    assert_eq!(h.notice(), "Enjoy your 프리미엄 커피!");
    assert_eq!(h.balance(), 300);
    assert_eq!(h.buy(5), 1);
    assert_eq!(h.notice(), "Insert 450 won more to buy 사이다");
    assert_eq!(h.stock(5), 10);
    assert!(
        h.bounds_at(
            Size::new(1180.0, 760.0),
            "Insert 450 won more to buy 사이다"
        )
        .is_some_and(|b| b.x > 800.0 && b.y < 260.0),
        "the feedback is next to the balance, not at the bottom"
    );
}

#[test]
fn every_insert_limit_is_refused_with_its_message() {
    let mut h = Harness::new(Setup::FullTubes);
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
    assert!(h.sees("Accepted") && h.sees("Not accepted (try it)"));
}

#[test]
fn cancel_walks_back_the_session_twice() {
    let mut h = Harness::new(Setup::FullTubes);
    h.click("1,000-won bill");
    h.click("1,000-won bill");
    h.buy(1);
    h.buy(2);
    assert_eq!(h.balance(), 1_050);
    h.click("Cancel last purchase");
    assert_eq!(h.notice(), "Cancelled 커피: 500 won back in your balance");
    assert_eq!((h.balance(), h.stock(2)), (1_550, 10));
    h.click("Cancel last purchase");
    assert_eq!(h.notice(), "Cancelled 생수: 450 won back in your balance");
    assert_eq!((h.balance(), h.stock(1)), (2_000, 10));
    assert_eq!(
        h.click("Cancel last purchase"),
        0,
        "nothing left to cancel: disabled"
    );
}

#[test]
fn return_before_buying_gives_the_bill_back() {
    let mut h = Harness::new(Setup::Hundreds(0));
    h.click("1,000-won bill");
    h.click("Return change");
    assert_eq!(h.notice(), "Your 1,000-won bill is returned");
    assert_eq!(h.balance(), 0);
    assert!(h.app.machine.state().owed.is_empty(), "no IOU");
    assert!(h.app.ticket.is_none());
}

#[test]
fn exact_change_only_refuses_a_purchase_it_could_not_change() {
    let mut h = Harness::new(Setup::Hundreds(0));
    assert!(h.sees("EXACT CHANGE ONLY"));
    h.click("1,000-won bill");
    h.click("1,000-won bill");
    assert_eq!(
        h.notice(),
        "Returned: exact change only, the machine could not give this back as change"
    );
    h.buy(3);
    assert_eq!(
        h.notice(),
        "Cannot give 450 won change: insert the exact amount or press Return"
    );
    assert_eq!((h.balance(), h.stock(3)), (1_000, 10));
    assert!(h.app.machine.state().owed.is_empty());
}

#[test]
fn a_jam_owes_change_on_a_proper_ticket() {
    let mut h = Harness::new(Setup::FullTubes);
    h.click("500-won coin");
    h.click("500-won coin");
    h.buy(1);
    h.feed(vec![Message::ChangerJammed(Denomination::Coin500)]);
    assert_eq!(
        h.notice(),
        "The machine owes you 500 won: take your ticket to the operator"
    );
    for line in [
        "Change owed",
        "Ticket no. 1",
        "500 won",
        "VM-001",
        "2026-01-01 00:00",
    ] {
        assert!(h.sees(line), "the ticket shows {line:?}");
    }
    assert!(h.sees(
        "Keep this ticket. The operator pays it in full on the next visit, or call the number on the machine with the ticket number."
    ));
    h.click("OK");
    assert!(h.app.ticket.is_none());
    assert!(h.sees("생수"), "the products are back");
    assert_eq!(h.app.machine.state().owed_total(), 500);
}

#[test]
fn a_machine_with_nothing_to_sell_is_out_of_service() {
    let mut h = Harness::new(Setup::Nothing);
    assert!(h.sees("Out of service"));
    assert!(h.sees("OUT OF SERVICE"));
    assert!(h.sees(
        "This machine has nothing to sell. Operator: press Admin, log in, fill the slots and load the coin tubes."
    ));
    assert_eq!(h.click("500-won coin"), 0, "money buttons are off");
    // A key press still reaches the rules, which hand the coin back.
    h.feed(vec![Message::Insert(ledger::money::MoneyKind::Coin, 500)]);
    assert_eq!(h.notice(), "Returned: the machine is out of service");
    assert_eq!(h.balance(), 0);
    h.click("Admin");
    h.log_in(PASSWORD);
    h.click("Fill all slots");
    h.click("Coins & cash");
    h.click("Load all tubes");
    assert!(
        h.notice().contains("100 × 10-won coin loaded"),
        "{}",
        h.notice()
    );
    h.click("Log out");
    assert!(!h.sees("Out of service"));
    assert!(!h.sees("EXACT CHANGE ONLY"), "the tubes are full");
    assert_eq!(h.click("500-won coin"), 1);
    assert_eq!(h.balance(), 500);
}

#[test]
fn the_login_focuses_the_password_and_counts_failures_in_words() {
    let mut h = Harness::new(Setup::Hundreds(10));
    let focus = h.app.update(Message::OpenAdmin);
    assert_eq!(
        focus.units(),
        1,
        "opening the login focuses the password field"
    );
    assert_eq!(h.app.screen, Screen::Login);
    assert!(h.sees("5 failed attempts lock the admin screen for 5 minutes"));
    h.log_in("not-it-123!");
    assert!(
        h.sees("1 failed attempt since the last login (5 lock the admin screen for 5 minutes)")
    );
    assert_eq!(
        h.notice(),
        "Wrong password. 4 attempts left before a 5-minute lock."
    );
}

#[test]
fn wrong_passwords_lock_the_admin_screen_for_five_minutes() {
    let mut h = Harness::new(Setup::Hundreds(10));
    h.click("Admin");
    assert_eq!(h.app.screen, Screen::Login);
    for left in (1..=4).rev() {
        h.log_in("not-it-123!");
        let attempts = if left == 1 { "attempt" } else { "attempts" };
        assert_eq!(
            h.notice(),
            format!("Wrong password. {left} {attempts} left before a 5-minute lock.")
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
    assert_eq!(
        h.notice(),
        "Admin is locked for 300 more seconds after too many failed logins"
    );
    assert!(h.sees("Locked after too many failed logins: try again in 300 s"));
    h.clock.fetch_add(5 * 60 * 1_000, Ordering::SeqCst);
    h.log_in(PASSWORD);
    assert_eq!(h.app.screen, Screen::Admin);
    assert!(h.sees("Refill slots"));
}

fn logged_in(setup: Setup) -> Harness {
    let mut h = Harness::new(setup);
    h.click("Admin");
    h.log_in(PASSWORD);
    assert_eq!(h.app.screen, Screen::Admin);
    h
}

#[test]
fn refill_from_the_admin_screen_clears_sold_out_and_a_tab_change_clears_the_notice() {
    let mut h = logged_in(Setup::Hundreds(10));
    assert!(h.sees("0 / 10"));
    h.click("Fill slot 6");
    assert_eq!(h.notice(), "Slot 6 +10");
    assert!(h.sees("Slot 6 +10"));
    assert_eq!(h.stock(6), 10);
    h.click("Coins & cash");
    assert_eq!(
        h.notice(),
        "",
        "a notice belongs to the tab it was given on"
    );
    h.click("Log out");
    assert_eq!(h.app.screen, Screen::Customer);
    assert!(!h.sees("SOLD OUT"));
}

#[test]
fn enter_saves_a_price_and_the_customer_screen_shows_it() {
    let mut h = logged_in(Setup::Hundreds(10));
    h.click("Products");
    h.feed(vec![Message::Admin(AdminMessage::EditPrice(
        SlotId(2),
        "620".into(),
    ))]);
    // Enter in the price field.
    let mut ui = simulator(h.app.view());
    ui.click("620").unwrap();
    let _ = ui.tap_key(Named::Enter);
    let messages = ui.into_messages().collect();
    h.feed(messages);
    assert_eq!(h.notice(), "Slot 2 now costs 620 won");
    h.click("Log out");
    assert!(h.sees("620 won"));
    assert!(!h.sees("500 won"), "no product costs 500 won any more");
    h.click("500-won coin");
    h.buy(2);
    assert_eq!(h.notice(), "Insert 120 won more to buy 커피");
}

#[test]
fn reports_have_headers_totals_and_the_cash() {
    let mut h = Harness::new(Setup::FullTubes);
    h.click("1,000-won bill");
    h.buy(1);
    h.buy(2);
    h.click("Return change");
    h.click("Admin");
    h.log_in(PASSWORD);
    h.click("Coins & cash");
    h.feed(vec![Message::Admin(AdminMessage::Counted("1000".into()))]);
    h.click("Record collection");
    h.click("Reports");
    for header in ["Period", "Product", "Sold", "Sales", "Total"] {
        assert!(h.sees(header), "{header}");
    }
    assert!(h.sees("2026-01-01"));
    assert!(h.sees("950 won"), "the total");
    assert!(h.sees("Collected") && h.sees("Over/short"));
    assert!(h.sees("1,000 won"), "collected");
    assert!(h.sees("Change owed: 0 won"));
    h.click("Monthly");
    assert!(h.sees("2026-01"));
    assert!(h.sees("950 won"));
}

#[test]
fn a_collection_that_does_not_match_asks_first_and_is_kept_in_the_history() {
    let mut h = Harness::new(Setup::FullTubes);
    h.click("1,000-won bill");
    h.click("1,000-won bill");
    h.buy(1);
    h.click("Return change");
    h.click("Admin");
    h.log_in(PASSWORD);
    h.click("Coins & cash");
    assert!(h.sees("Cash box 0 won + bill stacker 1,000 won = 1,000 won expected"));
    assert!(h.sees("No collection yet"));
    h.feed(vec![Message::Admin(AdminMessage::Counted("990".into()))]);
    h.click("Record collection");
    assert_eq!(h.app.machine.state().stats.collections, 0, "not yet");
    assert!(h.sees(
        "Counted 990 won, expected 1,000 won: 10 won short. Count again, or record it as it is?"
    ));
    h.click("Count again");
    assert!(!h.sees("Record 990 won"));
    h.click("Record collection");
    h.click("Record 990 won");
    assert_eq!(h.notice(), "Collected 990 won: 10 won short");
    assert_eq!(h.app.machine.state().stats.over_short_won, -10);
    for cell in [
        "Time",
        "Expected",
        "Counted",
        "Over/short",
        "2026-01-01 00:00",
        "10 won short",
    ] {
        assert!(h.sees(cell), "the history shows {cell:?}");
    }
}

#[test]
fn remote_commands_from_the_dashboard_apply_and_show() {
    use ledger::rules::{RemoteAction, RemoteCommand};
    use link::driver::UplinkReport;
    let mut h = Harness::new(Setup::Hundreds(10));
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
            name: "삼다수".into(),
        },
    )]);
    assert!(h.sees("삼다수"));
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

/// The sizes the customer screen is made for: a common kiosk panel, a
/// small tablet, a portrait kiosk and the desktop window.
const SIZES: [(f32, f32); 4] = [
    (800.0, 480.0),
    (1024.0, 600.0),
    (1080.0, 1920.0),
    (1180.0, 760.0),
];

#[test]
fn the_customer_screen_fits_every_panel() {
    let mut h = Harness::new(Setup::Hundreds(10));
    h.click("500-won coin");
    for (width, height) in SIZES {
        let size = Size::new(width, height);
        let window = Rectangle::new(iced::Point::ORIGIN, size);
        let inside = |what: &str| {
            let bounds = h
                .bounds_at(size, what)
                .unwrap_or_else(|| panic!("{what:?} not drawn at {width}×{height}"));
            assert!(
                window.contains(bounds.position())
                    && window.contains(iced::Point::new(
                        bounds.x + bounds.width,
                        bounds.y + bounds.height
                    )),
                "{what:?} at {bounds:?} is outside {width}×{height}"
            );
            bounds
        };
        for what in [
            "Return change",
            "Cancel last purchase",
            "1,000-won bill",
            "500 won",
            "한국어",
            "Admin",
        ] {
            inside(what);
        }
        // Every product card is drawn whole, and no two overlap.
        let cards: Vec<Rectangle> = (1..=6)
            .map(|slot| {
                let card = h
                    .card_at(size, slot)
                    .unwrap_or_else(|| panic!("slot {slot} not drawn at {width}×{height}"));
                assert!(
                    window.contains(card.position())
                        && window
                            .contains(iced::Point::new(card.x + card.width, card.y + card.height)),
                    "slot {slot} at {card:?} is outside {width}×{height}"
                );
                card
            })
            .collect();
        for (i, a) in cards.iter().enumerate() {
            for b in &cards[i + 1..] {
                assert!(
                    a.intersection(b).is_none(),
                    "{a:?} overlaps {b:?} at {width}×{height}"
                );
            }
        }
        let portrait = height > width;
        let balance = inside("Return change");
        let first = cards[0];
        assert_eq!(
            balance.y > first.y + first.height,
            portrait,
            "the money panel is under the products only in portrait ({width}×{height})"
        );
    }
}

#[test]
fn the_category_filter_shows_one_category() {
    let mut h = Harness::new(Setup::Hundreds(10));
    // The chip named after the category (not the product of that name).
    let mut ui = simulator(h.app.view());
    let chips = ui.find("이온음료").unwrap();
    drop(ui);
    assert!(chips.visible_bounds().is_some());
    h.feed(vec![Message::Category(Some(
        ledger::catalog::CategoryPath::parse("음료 > 커피"),
    ))]);
    assert!(h.sees("프리미엄 커피"));
    assert!(!h.sees("사이다"), "other categories are hidden");
    h.click("All");
    assert!(h.sees("사이다"));
}

#[test]
fn korean_by_default_with_an_english_switch() {
    let mut h = Harness::speaking(Setup::Hundreds(10), Language::Korean);
    assert!(h.sees("반환"));
    assert!(h.sees("0원"));
    h.click("1,000원 지폐");
    assert_eq!(h.notice(), "1,000원 지폐 투입됨");
    assert!(h.sees("1,000원"));
    h.click("English");
    assert_eq!(h.app.texts.language(), Language::English);
    assert!(h.sees("Return change"));
    assert!(h.sees("1,000 won"));
    h.click("한국어");
    assert!(h.sees("마지막 구매 취소"));
}

#[test]
fn the_connection_light_says_why_and_when_it_last_synced() {
    use link::driver::UplinkReport;
    use link::uplink::{HandshakeRefused, UplinkStats};
    let mut h = Harness::new(Setup::Hundreds(10));
    let recorded = h.app.machine.state().last_seq;
    assert!(h.sees(&format!(
        "Standalone: sales are kept on this machine ({recorded} recorded)"
    )));
    h.app.link.configured = true;
    let state = |state, refused: Option<Option<RefusalReason>>| {
        Message::Uplink(UplinkReport::State {
            state,
            primary: (state == LinkState::Online).then(|| "127.0.0.1:7101".to_owned()),
            stats: UplinkStats::default(),
            refused: refused.map(|reason| HandshakeRefused {
                address: "127.0.0.1:7101".into(),
                reason,
            }),
        })
    };
    h.feed(vec![state(LinkState::Offline, None)]);
    let unsent = recorded;
    assert!(h.sees(&format!(
        "Offline: no replica answers · {unsent} unsent · last sync never"
    )));
    h.feed(vec![state(LinkState::Online, None)]);
    assert!(h.sees(&format!(
        "Online · primary 127.0.0.1:7101 · {unsent} unsent"
    )));
    h.clock.fetch_add(90_000, Ordering::SeqCst);
    h.feed(vec![state(
        LinkState::Refused,
        Some(Some(RefusalReason::UnknownMachine)),
    )]);
    assert!(h.sees(&format!(
        "Offline: the replicas do not know this machine · {unsent} unsent · last sync 2026-01-01 00:00"
    )));
    h.feed(vec![state(LinkState::Refused, Some(None))]);
    assert!(h.sees(&format!(
        "Offline: this machine's key does not match the replicas' · {unsent} unsent · last sync 2026-01-01 00:00"
    )));
    h.feed(vec![state(
        LinkState::Refused,
        Some(Some(RefusalReason::Version { supported: 2 })),
    )]);
    assert!(h.sees(&format!(
        "Offline: the replicas speak link version 2 · {unsent} unsent · last sync 2026-01-01 00:00"
    )));
}

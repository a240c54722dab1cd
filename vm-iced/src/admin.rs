//! The admin screens: login (argon2id, lockout), stock, coins and cash,
//! products and categories, reports, password. Everything works offline:
//! it only talks to the machine's own ledger.

use crate::app::{App, Message, Notice, Tone};
use iced::widget::{button, column, container, row, rule, scrollable, space, text, text_input};
use iced::{Center, Element, Fill};
use ledger::catalog::{CategoryNode, CategoryPath, Product, SlotConfig};
use ledger::ids::SlotId;
use ledger::money::{Denomination, Won, format_won};
use ledger::projection::Period;
use ledger::state::OwedTicket;
use ledger::{Command, MachineState};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tab {
    Stock,
    Cash,
    Products,
    Reports,
    Password,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotField {
    Slot,
    Name,
    Price,
    Category,
    Capacity,
}

#[derive(Debug, Clone)]
pub enum AdminMessage {
    Tab(Tab),
    Refill(SlotId, Option<u32>),
    RefillAll,
    LoadTube(Denomination, Option<u32>),
    Counted(String),
    Collect,
    Settle(u64),
    EditName(SlotId, String),
    EditPrice(SlotId, String),
    SaveProduct(SlotId),
    SlotForm(SlotField, String),
    ConfigureSlot,
    CurrentPassword(String),
    NewPassword(String),
    ChangePassword,
    Period(Period),
    Logout,
}

/// The admin screen's form state (what is typed but not yet submitted).
#[derive(Clone, Debug)]
pub struct AdminForm {
    pub tab: Tab,
    pub counted: String,
    pub names: BTreeMap<SlotId, String>,
    pub prices: BTreeMap<SlotId, String>,
    pub slot_form: BTreeMap<&'static str, String>,
    pub current_password: String,
    pub new_password: String,
    pub period: Period,
}

fn field_key(field: SlotField) -> &'static str {
    match field {
        SlotField::Slot => "slot",
        SlotField::Name => "name",
        SlotField::Price => "price",
        SlotField::Category => "category",
        SlotField::Capacity => "capacity",
    }
}

fn warn(text: impl Into<String>) -> Option<Notice> {
    Some(Notice {
        tone: Tone::Warning,
        text: text.into(),
    })
}

/// Parses a won amount typed by an operator ("1,500" and "1500" both work).
pub fn parse_won(text: &str) -> Option<Won> {
    let digits: String = text
        .trim()
        .chars()
        .filter(|c| *c != ',' && *c != '_')
        .collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) || digits.len() > 12 {
        return None;
    }
    digits.parse().ok()
}

impl AdminForm {
    pub fn new(state: &MachineState) -> AdminForm {
        let mut form = AdminForm {
            tab: Tab::Stock,
            counted: String::new(),
            names: BTreeMap::new(),
            prices: BTreeMap::new(),
            slot_form: BTreeMap::new(),
            current_password: String::new(),
            new_password: String::new(),
            period: Period::Day,
        };
        form.refresh(state);
        form
    }

    /// Resets the product editors to what the machine now holds.
    pub fn refresh(&mut self, state: &MachineState) {
        self.names = state
            .slots
            .iter()
            .map(|(&id, s)| (id, s.config.product.name.clone()))
            .collect();
        self.prices = state
            .slots
            .iter()
            .map(|(&id, s)| (id, s.config.product.price.to_string()))
            .collect();
    }

    /// Turns a message into commands for the machine (or a notice when the
    /// input is not usable).
    pub fn update(
        &mut self,
        message: AdminMessage,
        state: &MachineState,
    ) -> (Vec<Command>, Option<Notice>) {
        match message {
            AdminMessage::Tab(tab) => self.tab = tab,
            AdminMessage::Refill(slot, count) => {
                return (vec![Command::Refill { slot, count }], None);
            }
            AdminMessage::RefillAll => return (vec![Command::RefillAll], None),
            AdminMessage::LoadTube(denomination, count) => {
                let tube = denomination.tube_index().unwrap_or(0);
                let room = state.tube_capacity.0[tube].saturating_sub(state.tubes.0[tube]);
                let count = count.unwrap_or(room);
                return (
                    vec![Command::LoadTube {
                        denomination,
                        count,
                    }],
                    None,
                );
            }
            AdminMessage::Counted(text) => self.counted = text,
            AdminMessage::Collect => {
                return match parse_won(&self.counted) {
                    Some(counted) => {
                        self.counted.clear();
                        (vec![Command::CollectCash { counted }], None)
                    }
                    None => (
                        Vec::new(),
                        warn("Enter the counted cash in won, e.g. 15000"),
                    ),
                };
            }
            AdminMessage::Settle(ticket) => {
                return (vec![Command::SettleChangeOwed { ticket }], None);
            }
            AdminMessage::EditName(slot, name) => {
                self.names.insert(slot, name);
            }
            AdminMessage::EditPrice(slot, price) => {
                self.prices.insert(slot, price);
            }
            AdminMessage::SaveProduct(slot) => return self.save_product(slot, state),
            AdminMessage::SlotForm(field, value) => {
                self.slot_form.insert(field_key(field), value);
            }
            AdminMessage::ConfigureSlot => return self.configure_slot(),
            AdminMessage::CurrentPassword(text) => self.current_password = text,
            AdminMessage::NewPassword(text) => self.new_password = text,
            AdminMessage::ChangePassword => {
                let current = std::mem::take(&mut self.current_password);
                let new = std::mem::take(&mut self.new_password);
                return (vec![Command::ChangePassword { current, new }], None);
            }
            AdminMessage::Period(period) => self.period = period,
            AdminMessage::Logout => {}
        }
        (Vec::new(), None)
    }

    fn save_product(
        &mut self,
        slot: SlotId,
        state: &MachineState,
    ) -> (Vec<Command>, Option<Notice>) {
        let Some(current) = state.slots.get(&slot) else {
            return (Vec::new(), warn(format!("There is no slot {slot}")));
        };
        let mut commands = Vec::new();
        let name = self.names.get(&slot).cloned().unwrap_or_default();
        if name.trim() != current.config.product.name {
            commands.push(Command::Rename {
                slot,
                name: name.trim().to_owned(),
            });
        }
        match self.prices.get(&slot).and_then(|p| parse_won(p)) {
            Some(price) if price != current.config.product.price => {
                commands.push(Command::SetPrice { slot, price })
            }
            Some(_) => {}
            None => return (Vec::new(), warn("Enter the price in won, a multiple of 10")),
        }
        if commands.is_empty() {
            return (Vec::new(), warn(format!("Slot {slot}: nothing changed")));
        }
        (commands, None)
    }

    fn configure_slot(&mut self) -> (Vec<Command>, Option<Notice>) {
        let get = |key: &str| {
            self.slot_form
                .get(key)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let slot = get("slot").parse::<u16>().ok();
        let price = parse_won(&get("price"));
        let capacity = get("capacity").parse::<u32>().ok();
        let (Some(slot), Some(price), Some(capacity)) = (slot, price, capacity) else {
            return (Vec::new(), warn("Slot, price and capacity must be numbers"));
        };
        let config = SlotConfig {
            slot: SlotId(slot),
            product: Product {
                name: get("name"),
                price,
                category: CategoryPath::parse(&get("category")),
                code: get("code").to_ascii_uppercase(),
            },
            capacity,
        };
        (vec![Command::ConfigureSlot(config)], None)
    }
}

pub fn login_view(app: &App) -> Element<'_, Message> {
    let state = app.machine.state();
    let now = app.machine.now_ms();
    let status = if state.admin.is_locked(now) {
        let seconds = (state.admin.locked_until_ms.unwrap_or(now) - now + 999) / 1_000;
        text(format!(
            "Locked after too many failed logins: try again in {seconds} s"
        ))
        .style(text::danger)
    } else {
        text(format!(
            "{} failed attempts since the last login (5 lock the admin screen for 5 minutes)",
            state.admin.failures
        ))
        .size(13)
    };
    let form = column![
        text("Operator login").size(24),
        text_input("Admin password", &app.password)
            .id("admin-password")
            .secure(true)
            .on_input(Message::PasswordInput)
            .on_submit(Message::Login)
            .width(320)
            .padding(8),
        row![
            button(text("Log in"))
                .on_press(Message::Login)
                .style(button::primary),
            button(text("Back"))
                .on_press(Message::CloseLogin)
                .style(button::secondary),
        ]
        .spacing(8),
        status,
    ]
    .spacing(12);
    container(form).center_x(Fill).padding(40).into()
}

pub fn view(app: &App) -> Element<'_, AdminMessage> {
    let form = &app.admin;
    let tab = |label: &'static str, which: Tab| {
        button(text(label))
            .on_press(AdminMessage::Tab(which))
            .style(if form.tab == which {
                button::primary
            } else {
                button::secondary
            })
    };
    let tabs = row![
        tab("Stock", Tab::Stock),
        tab("Coins & cash", Tab::Cash),
        tab("Products", Tab::Products),
        tab("Reports", Tab::Reports),
        tab("Password", Tab::Password),
        space::horizontal(),
        button(text("Log out"))
            .on_press(AdminMessage::Logout)
            .style(button::danger),
    ]
    .spacing(8);
    let state = app.machine.state();
    let body = match form.tab {
        Tab::Stock => stock(state),
        Tab::Cash => cash(state, form),
        Tab::Products => products(state, form),
        Tab::Reports => reports(app),
        Tab::Password => password(form),
    };
    column![tabs, rule::horizontal(1), scrollable(body).height(Fill)]
        .spacing(10)
        .into()
}

fn stock(state: &MachineState) -> Element<'_, AdminMessage> {
    let rows = state.slots.values().map(|slot| {
        let id = slot.config.slot;
        row![
            text(format!("{id}")).width(30),
            text(slot.config.product.name.as_str()).width(180),
            text(format!("{} / {}", slot.stock, slot.config.capacity)).width(80),
            button(text("+1"))
                .on_press(AdminMessage::Refill(id, Some(1)))
                .style(button::secondary),
            button(text(format!("Fill slot {id}")))
                .on_press(AdminMessage::Refill(id, None))
                .style(button::secondary),
        ]
        .spacing(10)
        .align_y(Center)
        .into()
    });
    column![
        text("Refill slots").size(20),
        column(rows).spacing(6),
        button(text("Fill all slots"))
            .on_press(AdminMessage::RefillAll)
            .style(button::primary),
    ]
    .spacing(10)
    .into()
}

fn cash<'a>(state: &'a MachineState, form: &'a AdminForm) -> Element<'a, AdminMessage> {
    let tubes = Denomination::COINS
        .iter()
        .map(|&coin| tube_row(state, coin));
    let owed = state.owed.values().map(owed_row);
    column![
        text("Coin tubes").size(20),
        column(tubes).spacing(6),
        rule::horizontal(1),
        collection(state, form),
        rule::horizontal(1),
        text(format!(
            "Change owed to customers: {} won",
            format_won(state.owed_total())
        ))
        .size(20),
        column(owed).spacing(6),
    ]
    .spacing(10)
    .into()
}

/// One coin tube: its fill level and buttons to load it.
fn tube_row<'a>(state: &MachineState, coin: Denomination) -> Element<'a, AdminMessage> {
    let tube = coin.tube_index().unwrap_or(0);
    row![
        text(format!("{} won tube", coin.value())).width(130),
        text(format!(
            "{} / {}",
            state.tubes.0[tube], state.tube_capacity.0[tube]
        ))
        .width(90),
        button(text("+10"))
            .on_press(AdminMessage::LoadTube(coin, Some(10)))
            .style(button::secondary),
        button(text(format!("Fill {} tube", coin.value())))
            .on_press(AdminMessage::LoadTube(coin, None))
            .style(button::secondary),
    ]
    .spacing(10)
    .align_y(Center)
    .into()
}

/// The cash collection form: what the ledger expects next to the amount
/// the operator counts, so an over/short is visible before it is recorded.
fn collection<'a>(state: &MachineState, form: &'a AdminForm) -> Element<'a, AdminMessage> {
    let expected = state.cash_box + state.stacker_total();
    column![
        text("Cash collection").size(20),
        text(format!(
            "Cash box {} won + bill stacker {} won = {} won expected",
            format_won(state.cash_box),
            format_won(state.stacker_total()),
            format_won(expected)
        )),
        row![
            text_input("Counted amount (won)", &form.counted)
                .on_input(AdminMessage::Counted)
                .on_submit(AdminMessage::Collect)
                .width(220)
                .padding(6),
            button(text("Record collection"))
                .on_press(AdminMessage::Collect)
                .style(button::primary),
        ]
        .spacing(10),
    ]
    .spacing(10)
    .into()
}

/// An open change-owed ticket with the button that settles it.
fn owed_row<'a>(ticket: &OwedTicket) -> Element<'a, AdminMessage> {
    row![
        text(format!(
            "Ticket #{}: {} won",
            ticket.ticket,
            format_won(ticket.amount)
        ))
        .width(240),
        button(text(format!("Settle #{}", ticket.ticket)))
            .on_press(AdminMessage::Settle(ticket.ticket))
            .style(button::secondary),
    ]
    .spacing(10)
    .align_y(Center)
    .into()
}

fn products<'a>(state: &'a MachineState, form: &'a AdminForm) -> Element<'a, AdminMessage> {
    let editors = state.slots.values().map(|slot| {
        let id = slot.config.slot;
        let name = form.names.get(&id).map_or("", String::as_str);
        let price = form.prices.get(&id).map_or("", String::as_str);
        row![
            text(format!("{id}")).width(30),
            text_input("Name", name)
                .on_input(move |n| AdminMessage::EditName(id, n))
                .width(200)
                .padding(6),
            text_input("Price", price)
                .on_input(move |p| AdminMessage::EditPrice(id, p))
                .width(100)
                .padding(6),
            button(text(format!("Save slot {id}")))
                .on_press(AdminMessage::SaveProduct(id))
                .style(button::primary),
        ]
        .spacing(10)
        .align_y(Center)
        .into()
    });
    let field = |placeholder: &'static str, which: SlotField, width: u32| {
        let value = form
            .slot_form
            .get(field_key(which))
            .map_or("", String::as_str);
        text_input(placeholder, value)
            .on_input(move |v| AdminMessage::SlotForm(which, v))
            .width(width)
            .padding(6)
    };
    let tree = CategoryNode::build(state.slots.values().map(|s| &s.config));
    let mut tree_lines = Vec::new();
    category_lines(&tree, 0, state, &mut tree_lines);
    column![
        text("Names and prices").size(20),
        column(editors).spacing(6),
        rule::horizontal(1),
        text("Add or reconfigure a slot").size(20),
        row![
            field("Slot", SlotField::Slot, 60),
            field("Product name", SlotField::Name, 180),
            field("Price", SlotField::Price, 90),
            field("Category (Drinks > Tea)", SlotField::Category, 200),
            field("Capacity", SlotField::Capacity, 90),
            button(text("Configure slot"))
                .on_press(AdminMessage::ConfigureSlot)
                .style(button::primary),
        ]
        .spacing(8),
        rule::horizontal(1),
        text("Categories").size(20),
        column(
            tree_lines
                .into_iter()
                .map(|line| text(line).size(14).into())
        )
        .spacing(2),
    ]
    .spacing(10)
    .into()
}

/// The category tree as indented lines.
fn category_lines(node: &CategoryNode, depth: usize, state: &MachineState, out: &mut Vec<String>) {
    let indent = "    ".repeat(depth);
    let products: Vec<&str> = node
        .slots
        .iter()
        .filter_map(|id| state.slots.get(id).map(|s| s.config.product.name.as_str()))
        .collect();
    if products.is_empty() {
        out.push(format!("{indent}{}", node.name));
    } else {
        out.push(format!("{indent}{}: {}", node.name, products.join(", ")));
    }
    for child in node.children.values() {
        category_lines(child, depth + 1, state, out);
    }
}

fn reports(app: &App) -> Element<'_, AdminMessage> {
    let form = &app.admin;
    let rows = app.machine.sales(form.period);
    let total_count: i64 = rows.iter().map(|r| r.count).sum();
    let total_won: Won = rows.iter().map(|r| r.won).sum();
    let period_button = |label: &'static str, period: Period| {
        button(text(label))
            .on_press(AdminMessage::Period(period))
            .style(if form.period == period {
                button::primary
            } else {
                button::secondary
            })
    };
    let lines = rows.iter().rev().take(200).map(|r| {
        row![
            text(r.period.clone()).width(110),
            text(r.product.clone()).width(180),
            text(format!("{}", r.count)).width(70),
            text(format!("{} won", format_won(r.won))),
        ]
        .spacing(10)
        .into()
    });
    column![
        row![
            period_button("Daily", Period::Day),
            period_button("Monthly", Period::Month)
        ]
        .spacing(8),
        text(format!(
            "Total: {total_count} sold, {} won",
            format_won(total_won)
        ))
        .size(20),
        column(lines).spacing(4),
    ]
    .spacing(10)
    .into()
}

fn password(form: &AdminForm) -> Element<'_, AdminMessage> {
    column![
        text("Change the admin password").size(20),
        text_input("Current password", &form.current_password)
            .secure(true)
            .on_input(AdminMessage::CurrentPassword)
            .width(320)
            .padding(6),
        text_input("New password", &form.new_password)
            .secure(true)
            .on_input(AdminMessage::NewPassword)
            .on_submit(AdminMessage::ChangePassword)
            .width(320)
            .padding(6),
        text("At least 8 characters with a digit and a special character.").size(13),
        button(text("Change password"))
            .on_press(AdminMessage::ChangePassword)
            .style(button::primary),
    ]
    .spacing(10)
    .into()
}

//! The admin screens: login (argon2id, lockout), stock, coins and cash
//! (with the collection history), products and categories, reports,
//! password. Everything works offline: it only talks to the machine's own
//! ledger.

use crate::app::{App, Layout, Message, Notice, PASSWORD_FIELD, Tone};
use crate::customer::over_short;
use crate::i18n::{Texts, count};
use crate::{args, style};
use iced::widget::{
    Column, button, column, container, row, rule, scrollable, space, text, text_input,
};
use iced::{Center, Element, Fill, Length};
use ledger::catalog::{CategoryNode, CategoryPath, Product, SlotConfig};
use ledger::ids::SlotId;
use ledger::money::{Denomination, Won};
use ledger::projection::{Collection, Period, kst_day};
use ledger::state::OwedTicket;
use ledger::{Command, MachineState};
use std::collections::BTreeMap;

/// Collections shown in the history, newest first.
pub const HISTORY_ROWS_MAX: usize = 20;
/// Report lines shown, newest first.
pub const REPORT_ROWS_MAX: usize = 200;

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
    Code,
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
    LoadAllTubes,
    Counted(String),
    Collect,
    /// Record the collection whose difference was shown.
    ConfirmCollect,
    /// Count again instead.
    CancelCollect,
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

/// A counted amount that differs from what the machine expected, waiting
/// for the operator to record it or count again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingCollection {
    pub counted: Won,
    pub expected: Won,
}

/// The admin screen's form state (what is typed but not yet submitted).
#[derive(Clone, Debug)]
pub struct AdminForm {
    pub tab: Tab,
    pub counted: String,
    pub pending: Option<PendingCollection>,
    pub names: BTreeMap<SlotId, String>,
    pub prices: BTreeMap<SlotId, String>,
    pub slot_form: BTreeMap<&'static str, String>,
    pub current_password: String,
    pub new_password: String,
    pub period: Period,
}

/// What an admin message asks of the app.
#[derive(Debug, Default)]
pub struct Outcome {
    pub commands: Vec<Command>,
    pub notice: Option<Notice>,
    /// The notice of the previous view no longer applies (a tab changed).
    pub clear_notice: bool,
}

impl Outcome {
    fn run(commands: Vec<Command>) -> Outcome {
        Outcome {
            commands,
            ..Outcome::default()
        }
    }

    fn say(tone: Tone, text: String) -> Outcome {
        Outcome {
            notice: Notice::new(tone, text),
            ..Outcome::default()
        }
    }
}

fn field_key(field: SlotField) -> &'static str {
    match field {
        SlotField::Slot => "slot",
        SlotField::Name => "name",
        SlotField::Code => "code",
        SlotField::Price => "price",
        SlotField::Category => "category",
        SlotField::Capacity => "capacity",
    }
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
            pending: None,
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
        texts: &Texts,
    ) -> Outcome {
        match message {
            AdminMessage::Tab(tab) => {
                self.tab = tab;
                self.pending = None;
                return Outcome {
                    clear_notice: true,
                    ..Outcome::default()
                };
            }
            AdminMessage::Refill(slot, count) => {
                return Outcome::run(vec![Command::Refill { slot, count }]);
            }
            AdminMessage::RefillAll => return Outcome::run(vec![Command::RefillAll]),
            AdminMessage::LoadTube(denomination, count) => {
                let tube = denomination.tube_index().unwrap_or(0);
                let room = state.tube_capacity.0[tube].saturating_sub(state.tubes.0[tube]);
                let count = count.unwrap_or(room);
                return Outcome::run(vec![Command::LoadTube {
                    denomination,
                    count,
                }]);
            }
            AdminMessage::LoadAllTubes => return Outcome::run(vec![Command::LoadAllTubes]),
            AdminMessage::Counted(text) => {
                self.counted = text;
                self.pending = None;
            }
            AdminMessage::Collect => return self.collect(state, texts),
            AdminMessage::ConfirmCollect => {
                if let Some(pending) = self.pending.take() {
                    self.counted.clear();
                    return Outcome::run(vec![Command::CollectCash {
                        counted: pending.counted,
                    }]);
                }
            }
            AdminMessage::CancelCollect => self.pending = None,
            AdminMessage::Settle(ticket) => {
                return Outcome::run(vec![Command::SettleChangeOwed { ticket }]);
            }
            AdminMessage::EditName(slot, name) => {
                self.names.insert(slot, name);
            }
            AdminMessage::EditPrice(slot, price) => {
                self.prices.insert(slot, price);
            }
            AdminMessage::SaveProduct(slot) => return self.save_product(slot, state, texts),
            AdminMessage::SlotForm(field, value) => {
                self.slot_form.insert(field_key(field), value);
            }
            AdminMessage::ConfigureSlot => return self.configure_slot(texts),
            AdminMessage::CurrentPassword(text) => self.current_password = text,
            AdminMessage::NewPassword(text) => self.new_password = text,
            AdminMessage::ChangePassword => {
                let current = std::mem::take(&mut self.current_password);
                let new = std::mem::take(&mut self.new_password);
                return Outcome::run(vec![Command::ChangePassword { current, new }]);
            }
            AdminMessage::Period(period) => self.period = period,
            AdminMessage::Logout => {}
        }
        Outcome::default()
    }

    /// A count that matches is recorded at once; one that differs is shown
    /// with its over/short first, to be recorded or counted again.
    fn collect(&mut self, state: &MachineState, texts: &Texts) -> Outcome {
        let Some(counted) = parse_won(&self.counted) else {
            return Outcome::say(Tone::Warning, texts.get("enter-counted"));
        };
        let expected = state.cash_box + state.stacker_total();
        if counted == expected {
            self.counted.clear();
            return Outcome::run(vec![Command::CollectCash { counted }]);
        }
        self.pending = Some(PendingCollection { counted, expected });
        Outcome {
            clear_notice: true,
            ..Outcome::default()
        }
    }

    fn save_product(&mut self, slot: SlotId, state: &MachineState, texts: &Texts) -> Outcome {
        let Some(current) = state.slots.get(&slot) else {
            return Outcome::say(
                Tone::Warning,
                texts.with("unknown-slot", &args![slot = slot.0]),
            );
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
            None => return Outcome::say(Tone::Warning, texts.get("enter-price")),
        }
        if commands.is_empty() {
            return Outcome::say(
                Tone::Warning,
                texts.with("nothing-changed", &args![slot = slot.0]),
            );
        }
        Outcome::run(commands)
    }

    fn configure_slot(&mut self, texts: &Texts) -> Outcome {
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
            return Outcome::say(Tone::Warning, texts.get("numbers-needed"));
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
        Outcome::run(vec![Command::ConfigureSlot(config)])
    }
}

pub fn login_view<'a>(app: &'a App, layout: Layout) -> Element<'a, Message> {
    let texts = &app.texts;
    let state = app.machine.state();
    let now = app.machine.now_ms();
    let status = if state.admin.is_locked(now) {
        let seconds = (state.admin.locked_until_ms.unwrap_or(now) - now + 999) / 1_000;
        text(texts.with("locked-until", &args![seconds = seconds])).color(style::ERROR)
    } else {
        text(texts.with(
            "failed-attempts",
            &args![count = count(state.admin.failures)],
        ))
        .size(13)
    };
    let form = column![
        text(texts.get("login-title")).size(layout.pick(24, 18)),
        text_input(&texts.get("password-placeholder"), &app.password)
            .id(PASSWORD_FIELD)
            .secure(true)
            .on_input(Message::PasswordInput)
            .on_submit(Message::Login)
            .width(320)
            .padding(8),
        row![
            button(text(texts.get("log-in")))
                .on_press(Message::Login)
                .style(button::primary),
            button(text(texts.get("back")))
                .on_press(Message::CloseLogin)
                .style(button::secondary),
        ]
        .spacing(8),
        notice_line(app.notice.as_ref()),
        status,
    ]
    .spacing(12);
    container(form)
        .center_x(Fill)
        .padding(layout.pick(40, 12))
        .into()
}

/// Feedback under the admin tabs and on the login.
fn notice_line<Message: 'static>(notice: Option<&Notice>) -> Element<'static, Message> {
    let Some(notice) = notice else {
        return space().height(0).into();
    };
    let color = match notice.tone {
        Tone::Info => style::INFO,
        Tone::Success => style::LED,
        Tone::Warning => style::WARNING,
        Tone::Error => style::ERROR,
    };
    text(notice.text.clone()).size(15).color(color).into()
}

pub fn view<'a>(app: &'a App, layout: Layout) -> Element<'a, AdminMessage> {
    let texts = &app.texts;
    let form = &app.admin;
    let tab = |label: &str, which: Tab| {
        button(text(texts.get(label)).size(layout.pick(16, 13)))
            .on_press(AdminMessage::Tab(which))
            .style(if form.tab == which {
                button::primary
            } else {
                button::secondary
            })
    };
    let tabs = row![
        tab("tab-stock", Tab::Stock),
        tab("tab-cash", Tab::Cash),
        tab("tab-products", Tab::Products),
        tab("tab-reports", Tab::Reports),
        tab("tab-password", Tab::Password),
        space::horizontal(),
        button(text(texts.get("log-out")).size(layout.pick(16, 13)))
            .on_press(AdminMessage::Logout)
            .style(button::danger),
    ]
    .spacing(layout.pick(8, 4));
    let state = app.machine.state();
    let body = match form.tab {
        Tab::Stock => stock(texts, state),
        Tab::Cash => cash(app, state, form),
        Tab::Products => products(texts, state, form),
        Tab::Reports => reports(app),
        Tab::Password => password(texts, form),
    };
    column![
        tabs,
        notice_line(app.notice.as_ref()),
        rule::horizontal(1),
        scrollable(body).height(Fill)
    ]
    .spacing(layout.pick(10, 5))
    .into()
}

fn heading(label: String) -> iced::widget::Text<'static> {
    text(label).size(20)
}

fn stock<'a>(texts: &Texts, state: &'a MachineState) -> Element<'a, AdminMessage> {
    let rows = state.slots.values().map(|slot| {
        let id = slot.config.slot;
        row![
            text(format!("{id}")).width(30),
            text(slot.config.product.name.as_str()).width(180),
            text(format!("{} / {}", slot.stock, slot.config.capacity)).width(80),
            button(text("+1"))
                .on_press(AdminMessage::Refill(id, Some(1)))
                .style(button::secondary),
            button(text(texts.with("fill-slot", &args![slot = id.0])))
                .on_press(AdminMessage::Refill(id, None))
                .style(button::secondary),
        ]
        .spacing(10)
        .align_y(Center)
        .into()
    });
    column![
        heading(texts.get("refill-title")),
        Column::with_children(rows).spacing(6),
        button(text(texts.get("fill-all-slots")))
            .on_press(AdminMessage::RefillAll)
            .style(button::primary),
    ]
    .spacing(10)
    .into()
}

fn cash<'a>(
    app: &'a App,
    state: &'a MachineState,
    form: &'a AdminForm,
) -> Element<'a, AdminMessage> {
    let texts = &app.texts;
    let tubes = Denomination::COINS
        .iter()
        .map(|&coin| tube_row(texts, state, coin));
    let owed = state.owed.values().map(|ticket| owed_row(texts, ticket));
    column![
        heading(texts.get("tubes-title")),
        Column::with_children(tubes).spacing(6),
        button(text(texts.get("load-all-tubes")))
            .on_press(AdminMessage::LoadAllTubes)
            .style(button::primary),
        rule::horizontal(1),
        collection(texts, state, form),
        rule::horizontal(1),
        history(texts, &app.machine.collections()),
        rule::horizontal(1),
        heading(texts.with("owed-title", &args![amount = texts.won(state.owed_total())])),
        Column::with_children(owed).spacing(6),
    ]
    .spacing(10)
    .into()
}

/// One coin tube: its fill level and buttons to load it.
fn tube_row<'a>(
    texts: &Texts,
    state: &MachineState,
    coin: Denomination,
) -> Element<'a, AdminMessage> {
    let tube = coin.tube_index().unwrap_or(0);
    row![
        text(texts.with("tube-name", &args![value = coin.value()])).width(130),
        text(format!(
            "{} / {}",
            state.tubes.0[tube], state.tube_capacity.0[tube]
        ))
        .width(90),
        button(text("+10"))
            .on_press(AdminMessage::LoadTube(coin, Some(10)))
            .style(button::secondary),
        button(text(texts.with("fill-tube", &args![value = coin.value()])))
            .on_press(AdminMessage::LoadTube(coin, None))
            .style(button::secondary),
    ]
    .spacing(10)
    .align_y(Center)
    .into()
}

/// The cash collection form: what the ledger expects next to the amount
/// the operator counts. A count that differs is shown with its over or
/// short in a warning colour and recorded only when confirmed.
fn collection<'a>(
    texts: &Texts,
    state: &MachineState,
    form: &'a AdminForm,
) -> Element<'a, AdminMessage> {
    let expected = state.cash_box + state.stacker_total();
    let mut content = column![
        heading(texts.get("collection-title")),
        text(texts.with(
            "collection-expected",
            &args![
                cash_box = texts.won(state.cash_box),
                stacker = texts.won(state.stacker_total()),
                expected = texts.won(expected)
            ],
        )),
        row![
            text_input(&texts.get("counted-placeholder"), &form.counted)
                .on_input(AdminMessage::Counted)
                .on_submit(AdminMessage::Collect)
                .width(220)
                .padding(6),
            button(text(texts.get("record-collection")))
                .on_press(AdminMessage::Collect)
                .style(button::primary),
        ]
        .spacing(10),
    ]
    .spacing(10);
    if let Some(pending) = form.pending {
        let difference = pending.counted - pending.expected;
        let question = texts.with(
            "confirm-difference",
            &args![
                counted = texts.won(pending.counted),
                expected = texts.won(pending.expected),
                difference = over_short(texts, difference)
            ],
        );
        content = content.push(
            container(
                column![
                    text(question).color(style::WARNING),
                    row![
                        button(text(texts.with(
                            "record-anyway",
                            &args![counted = texts.won(pending.counted)]
                        )))
                        .on_press(AdminMessage::ConfirmCollect)
                        .style(button::warning),
                        button(text(texts.get("count-again")))
                            .on_press(AdminMessage::CancelCollect)
                            .style(button::secondary),
                    ]
                    .spacing(10),
                ]
                .spacing(8),
            )
            .padding(10)
            .style(style::warning_box),
        );
    }
    content.into()
}

/// The machine's collections, newest first: time, expected, counted and
/// the over/short in a warning colour when there is one.
fn history<'a>(texts: &Texts, collections: &[Collection]) -> Element<'a, AdminMessage> {
    let header = table_row(
        [
            texts.get("history-time"),
            texts.get("history-expected"),
            texts.get("history-counted"),
            texts.get("history-difference"),
        ],
        None,
    );
    let mut rows = vec![heading(texts.get("history-title")).into(), header];
    if collections.is_empty() {
        rows.push(text(texts.get("history-empty")).size(14).into());
    }
    rows.extend(collections.iter().rev().take(HISTORY_ROWS_MAX).map(|c| {
        let difference = c.counted - c.expected();
        table_row(
            [
                texts.time(c.at_ms),
                texts.won(c.expected()),
                texts.won(c.counted),
                over_short(texts, difference),
            ],
            (difference != 0).then_some(style::WARNING),
        )
    }));
    Column::with_children(rows).spacing(4).into()
}

/// One row of a table of four columns; `color` marks the last cell.
fn table_row<'a>(cells: [String; 4], color: Option<iced::Color>) -> Element<'a, AdminMessage> {
    let widths = [170.0, 130.0, 130.0, 150.0];
    let mut cells = cells
        .into_iter()
        .zip(widths)
        .enumerate()
        .map(|(i, (cell, width))| {
            let cell = text(cell).size(14).width(Length::Fixed(width));
            match color {
                Some(color) if i == 3 => cell.color(color),
                _ => cell,
            }
        });
    let mut line = row![].spacing(10);
    for cell in cells.by_ref() {
        line = line.push(cell);
    }
    line.into()
}

/// An open change-owed ticket with the button that settles it.
fn owed_row<'a>(texts: &Texts, ticket: &OwedTicket) -> Element<'a, AdminMessage> {
    row![
        text(texts.with(
            "owed-ticket",
            &args![
                ticket = ticket.ticket,
                amount = texts.won(ticket.amount),
                time = texts.time(ticket.at_ms)
            ],
        ))
        .width(360),
        button(text(texts.with("settle", &args![ticket = ticket.ticket])))
            .on_press(AdminMessage::Settle(ticket.ticket))
            .style(button::secondary),
    ]
    .spacing(10)
    .align_y(Center)
    .into()
}

fn products<'a>(
    texts: &Texts,
    state: &'a MachineState,
    form: &'a AdminForm,
) -> Element<'a, AdminMessage> {
    let editors = state.slots.values().map(|slot| {
        let id = slot.config.slot;
        let name = form.names.get(&id).map_or("", String::as_str);
        let price = form.prices.get(&id).map_or("", String::as_str);
        row![
            text(format!("{id}")).width(30),
            text_input(&texts.get("name-placeholder"), name)
                .on_input(move |n| AdminMessage::EditName(id, n))
                .on_submit(AdminMessage::SaveProduct(id))
                .width(200)
                .padding(6),
            text_input(&texts.get("price-placeholder"), price)
                .on_input(move |p| AdminMessage::EditPrice(id, p))
                .on_submit(AdminMessage::SaveProduct(id))
                .width(100)
                .padding(6),
            text(slot.config.product.code_or_slot(id))
                .size(13)
                .width(120),
            button(text(texts.with("save-slot", &args![slot = id.0])))
                .on_press(AdminMessage::SaveProduct(id))
                .style(button::primary),
        ]
        .spacing(10)
        .align_y(Center)
        .into()
    });
    let field = |placeholder: &str, which: SlotField, width: u32| {
        let value = form
            .slot_form
            .get(field_key(which))
            .map_or("", String::as_str);
        text_input(&texts.get(placeholder), value)
            .on_input(move |v| AdminMessage::SlotForm(which, v))
            .width(width)
            .padding(6)
    };
    let tree = CategoryNode::build(state.slots.values().map(|s| &s.config));
    let mut tree_lines = Vec::new();
    category_lines(&tree, 0, state, &mut tree_lines);
    column![
        heading(texts.get("names-title")),
        Column::with_children(editors).spacing(6),
        rule::horizontal(1),
        heading(texts.get("configure-title")),
        row![
            field("slot-placeholder", SlotField::Slot, 60),
            field("product-placeholder", SlotField::Name, 160),
            field("code-placeholder", SlotField::Code, 130),
            field("price-placeholder", SlotField::Price, 90),
        ]
        .spacing(8),
        row![
            field("category-placeholder", SlotField::Category, 200),
            field("capacity-placeholder", SlotField::Capacity, 90),
            button(text(texts.get("configure-slot")))
                .on_press(AdminMessage::ConfigureSlot)
                .style(button::primary),
        ]
        .spacing(8),
        rule::horizontal(1),
        heading(texts.get("categories-title")),
        Column::with_children(
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

/// Sales by period and product with column headers and a total, then the
/// cash of the same periods: collected and over/short, and the change
/// owed now.
fn reports(app: &App) -> Element<'_, AdminMessage> {
    let texts = &app.texts;
    let form = &app.admin;
    let rows = app.machine.sales(form.period);
    let total_count: i64 = rows.iter().map(|r| r.count).sum();
    let total_won: Won = rows.iter().map(|r| r.won).sum();
    let period_button = |label: &str, period: Period| {
        button(text(texts.get(label)))
            .on_press(AdminMessage::Period(period))
            .style(if form.period == period {
                button::primary
            } else {
                button::secondary
            })
    };
    let mut sales = vec![table_row(
        [
            texts.get("report-period"),
            texts.get("report-product"),
            texts.get("report-count"),
            texts.get("report-sales"),
        ],
        None,
    )];
    if rows.is_empty() {
        sales.push(text(texts.get("report-empty")).size(14).into());
    }
    sales.extend(rows.iter().rev().take(REPORT_ROWS_MAX).map(|r| {
        table_row(
            [
                r.period.clone(),
                r.product.clone(),
                r.count.to_string(),
                texts.won(r.won),
            ],
            None,
        )
    }));
    sales.push(rule::horizontal(1).into());
    sales.push(table_row(
        [
            texts.get("report-total"),
            String::new(),
            total_count.to_string(),
            texts.won(total_won),
        ],
        None,
    ));
    column![
        row![
            period_button("daily", Period::Day),
            period_button("monthly", Period::Month)
        ]
        .spacing(8),
        Column::with_children(sales).spacing(4),
        rule::horizontal(1),
        cash_summary(texts, app, form.period),
    ]
    .spacing(10)
    .into()
}

/// Collected and over/short per period, and the change owed now.
fn cash_summary<'a>(texts: &Texts, app: &App, period: Period) -> Element<'a, AdminMessage> {
    let mut by_period: BTreeMap<String, (Won, Won)> = BTreeMap::new();
    for c in app.machine.collections() {
        let entry = by_period.entry(period.label(kst_day(c.at_ms))).or_default();
        entry.0 += c.counted;
        entry.1 += c.counted - c.expected();
    }
    let mut lines = vec![
        heading(texts.get("cash-summary")).into(),
        table_row(
            [
                texts.get("report-period"),
                texts.get("cash-collected"),
                texts.get("cash-over-short"),
                String::new(),
            ],
            None,
        ),
    ];
    let (mut collected_total, mut difference_total) = (0, 0);
    for (label, (counted, difference)) in by_period.iter().rev().take(REPORT_ROWS_MAX) {
        collected_total += counted;
        difference_total += difference;
        lines.push(table_row(
            [
                label.clone(),
                texts.won(*counted),
                over_short(texts, *difference),
                String::new(),
            ],
            None,
        ));
    }
    lines.push(rule::horizontal(1).into());
    lines.push(table_row(
        [
            texts.get("report-total"),
            texts.won(collected_total),
            over_short(texts, difference_total),
            String::new(),
        ],
        None,
    ));
    lines.push(
        text(format!(
            "{}: {}",
            texts.get("cash-owed"),
            texts.won(app.machine.state().owed_total())
        ))
        .size(16)
        .into(),
    );
    Column::with_children(lines).spacing(4).into()
}

fn password<'a>(texts: &Texts, form: &'a AdminForm) -> Element<'a, AdminMessage> {
    column![
        heading(texts.get("password-title")),
        text_input(&texts.get("current-password"), &form.current_password)
            .secure(true)
            .on_input(AdminMessage::CurrentPassword)
            .width(320)
            .padding(6),
        text_input(&texts.get("new-password"), &form.new_password)
            .secure(true)
            .on_input(AdminMessage::NewPassword)
            .on_submit(AdminMessage::ChangePassword)
            .width(320)
            .padding(6),
        text(texts.get("password-rules")).size(13),
        button(text(texts.get("change-password")))
            .on_press(AdminMessage::ChangePassword)
            .style(button::primary),
    ]
    .spacing(10)
    .into()
}

//! The customer screen: categories, products, the money panel (balance,
//! feedback, Return and Cancel, the money the machine takes), the
//! change-owed ticket, "Out of service", and the header with the
//! exact-change light, the connection light and the language switch.
//!
//! It adapts to the window: at 800×480 the type shrinks and the money
//! panel still shows Return; taller than wide, the money panel goes under
//! the products. The product grid is laid out here in rows of cards of one
//! size, so no card is drawn across another.

use crate::app::{App, Layout, Link, Message, Notice, Ticket, Tone};
use crate::i18n::Texts;
use crate::{args, style};
use iced::widget::{
    Column, Row, button, column, container, row, scrollable, space, text, text_input,
};
use iced::{Center, Color, Element, Fill, Length, Theme};
use ledger::catalog::{CategoryPath, SortKey, matches_search, sort_slots};
use ledger::event::{Event, Source};
use ledger::money::{MoneyKind, Won};
use ledger::state::Slot;
use link::channel::RefusalReason;
use link::uplink::LinkState;

/// The money the machine takes, as (kind, value), smallest first.
pub const ACCEPTED_MONEY: [(MoneyKind, Won); 5] = [
    (MoneyKind::Coin, 10),
    (MoneyKind::Coin, 50),
    (MoneyKind::Coin, 100),
    (MoneyKind::Coin, 500),
    (MoneyKind::Bill, 1_000),
];

/// Money the machine refuses, kept apart so a customer can try it and see
/// it handed back: a 5,000-won bill and a foreign coin.
pub const REFUSED_MONEY: [(MoneyKind, Won); 2] = [(MoneyKind::Bill, 5_000), (MoneyKind::Coin, 200)];

pub fn header<'a>(app: &'a App, layout: Layout) -> Element<'a, Message> {
    let texts = &app.texts;
    let state = app.machine.state();
    let pill = |label: String, color: Color| {
        container(text(label).size(layout.pick(14, 12)))
            .padding([3, 10])
            .style(move |_: &Theme| style::pill(color))
    };
    let status = if state.out_of_service() {
        Some(pill(texts.get("out-of-service-pill"), style::REFUSED))
    } else if state.exact_change_only() {
        Some(pill(texts.get("exact-change-only"), style::AMBER))
    } else {
        None
    };
    let on_customer_screen = app.screen == crate::app::Screen::Customer;
    let admin = on_customer_screen.then(|| {
        button(text(texts.get("admin-button")).size(layout.pick(16, 13)))
            .on_press(Message::OpenAdmin)
            .style(button::secondary)
    });
    let language = button(text(texts.get("language-switch")).size(layout.pick(16, 13)))
        .on_press(Message::SwitchLanguage)
        .style(button::secondary);
    let top = row![
        text(app.machine.id().to_string()).size(layout.pick(26, 18)),
        status,
        space::horizontal(),
        language,
        admin,
    ]
    .spacing(layout.pick(12, 8))
    .align_y(Center);
    column![top, link_indicator(app, layout)]
        .spacing(layout.pick(6, 2))
        .into()
}

/// The connection light in words: kept locally when no replica is
/// configured; online with the primary; or why the machine is offline
/// (no replica answers, the replicas do not know it, its key differs, they
/// speak another link version) and when it last synced.
pub fn link_text(
    texts: &Texts,
    link: &Link,
    unsent: u64,
    events: u64,
    synced: Option<i64>,
) -> String {
    if !link.configured {
        return texts.with("link-standalone", &args![events = events]);
    }
    let synced = synced.map_or_else(|| texts.get("never"), |at| texts.time(at));
    let common = |id: &str| texts.with(id, &args![unsent = unsent, synced = synced.as_str()]);
    match (link.state, &link.refused) {
        (LinkState::Online, _) => match &link.primary {
            Some(primary) => texts.with(
                "link-online",
                &args![primary = primary.as_str(), unsent = unsent],
            ),
            None => texts.with("link-online-no-primary", &args![unsent = unsent]),
        },
        (_, Some(Some(RefusalReason::UnknownMachine))) => common("link-unknown-machine"),
        (_, Some(None)) => common("link-wrong-key"),
        (_, Some(Some(RefusalReason::Version { supported }))) => texts.with(
            "link-version",
            &args![
                supported = *supported,
                unsent = unsent,
                synced = synced.as_str()
            ],
        ),
        (LinkState::Connecting, None) => common("link-connecting"),
        (_, None) => common("link-unreachable"),
    }
}

fn link_indicator<'a>(app: &'a App, layout: Layout) -> Element<'a, Message> {
    let link = &app.link;
    let color = match (link.configured, link.state, &link.refused) {
        (false, ..) => style::LED,
        (true, LinkState::Online, _) => style::ONLINE,
        (true, _, Some(_)) => style::REFUSED,
        (true, LinkState::Connecting, None) => style::AMBER,
        (true, _, None) => style::MUTED,
    };
    let words = link_text(
        &app.texts,
        link,
        app.machine.unacknowledged(),
        app.machine.state().last_seq,
        app.machine.synced_ms(),
    );
    row![
        container(space().width(10).height(10)).style(move |_: &Theme| style::pill(color)),
        text(words).size(layout.pick(13, 11)),
    ]
    .spacing(6)
    .align_y(Center)
    .into()
}

pub fn view<'a>(app: &'a App, layout: Layout) -> Element<'a, Message> {
    let products: Element<'a, Message> = if let Some(ticket) = &app.ticket {
        ticket_card(app, ticket, layout)
    } else if app.machine.state().out_of_service() {
        out_of_service(&app.texts, layout)
    } else {
        product_area(app, layout)
    };
    if layout.portrait {
        column![container(products).height(Fill), money_panel(app, layout)]
            .spacing(12)
            .height(Fill)
            .into()
    } else {
        row![container(products).width(Fill), money_panel(app, layout)]
            .spacing(layout.pick(20, 10))
            .height(Fill)
            .into()
    }
}

/// Width of the money panel beside the products (landscape).
fn panel_width(layout: Layout) -> f32 {
    layout.pick(280.0, 236.0)
}

/// Card size: the grid fits as many as the width allows.
fn card_size(layout: Layout) -> (f32, f32) {
    if layout.portrait {
        (230.0, 150.0)
    } else {
        layout.pick((172.0, 128.0), (150.0, 104.0))
    }
}

fn product_area<'a>(app: &'a App, layout: Layout) -> Element<'a, Message> {
    let texts = &app.texts;
    let state = app.machine.state();
    let mut slots: Vec<&Slot> = state
        .slots
        .values()
        .filter(|s| matches_search(&s.config, &app.search))
        .filter(|s| {
            app.category
                .as_ref()
                .is_none_or(|c| s.config.product.category.0.starts_with(&c.0))
        })
        .collect();
    sort_slots(&mut slots, app.sort, |s| &s.config);
    let categories = categories(app);
    let (card_width, card_height) = card_size(layout);
    let gap = layout.pick(14.0, 8.0);
    let padding = layout.pick(14.0, 8.0);
    let grid_width = grid_width(layout, padding);
    let columns = (((grid_width + gap) / (card_width + gap)).floor() as usize).max(1);
    let rows = slots.chunks(columns).map(|chunk| {
        Row::with_children(chunk.iter().map(|slot| {
            let color = category_color(&categories, &slot.config.product.category);
            product_card(app, slot, color, (card_width, card_height), layout)
        }))
        .spacing(gap)
        .into()
    });
    let grid = scrollable(Column::with_children(rows).spacing(gap)).height(Fill);
    let window = container(grid)
        .padding(padding)
        .width(Fill)
        .height(Fill)
        .style(style::product_window);
    let size = layout.pick(14, 12);
    let sort_button = |label: String, key: SortKey| {
        button(text(label).size(size))
            .on_press(Message::SortBy(key))
            .padding([3, 8])
            .style(if app.sort == key {
                button::primary
            } else {
                button::secondary
            })
    };
    let controls = row![
        text(texts.get("sort")).size(size),
        sort_button(texts.get("sort-slot"), SortKey::Slot),
        sort_button(texts.get("sort-name"), SortKey::Name),
        sort_button(texts.get("sort-price"), SortKey::Price),
        text_input(&texts.get("search"), &app.search)
            .on_input(Message::Search)
            .size(size)
            .width(layout.pick(220, 150))
            .padding(4),
    ]
    .spacing(layout.pick(8, 5))
    .align_y(Center);
    column![category_filter(app, &categories, layout), controls, window]
        .spacing(layout.pick(10, 5))
        .into()
}

/// The width the product grid can use inside its window.
fn grid_width(layout: Layout, padding: f32) -> f32 {
    let page_padding = layout.pick(16.0, 8.0) * 2.0;
    let beside = if layout.portrait {
        0.0
    } else {
        panel_width(layout) + layout.pick(20.0, 10.0)
    };
    // The scrollbar takes a strip at the right.
    layout.size.width - page_padding - beside - padding * 2.0 - 12.0
}

/// The categories products are filed under (their full paths), in order.
fn categories(app: &App) -> Vec<CategoryPath> {
    let mut paths: Vec<CategoryPath> = app
        .machine
        .state()
        .slots
        .values()
        .map(|s| s.config.product.category.clone())
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

fn category_color(categories: &[CategoryPath], category: &CategoryPath) -> Color {
    let index = categories.iter().position(|c| c == category).unwrap_or(0);
    style::CATEGORY_COLORS[index % style::CATEGORY_COLORS.len()]
}

/// One button per category (its last name, in its colour) and "All".
fn category_filter<'a>(
    app: &'a App,
    categories: &[CategoryPath],
    layout: Layout,
) -> Element<'a, Message> {
    let size = layout.pick(14, 12);
    let chip = |label: String, color: Color, choice: Option<CategoryPath>| {
        let selected = app.category == choice;
        button(
            row![
                container(space().width(10).height(10)).style(move |_: &Theme| style::pill(color)),
                text(label).size(size),
            ]
            .spacing(5)
            .align_y(Center),
        )
        .on_press(Message::Category(choice))
        .padding([3, 9])
        .style(style::chip(selected))
    };
    let mut chips = vec![chip(app.texts.get("category-all"), style::MUTED, None).into()];
    chips.extend(categories.iter().map(|path| {
        let label = path.0.last().cloned().unwrap_or_default();
        chip(label, category_color(categories, path), Some(path.clone())).into()
    }));
    Row::with_children(chips).spacing(layout.pick(8, 5)).into()
}

/// The widget id of a slot's product card (`slot-2`), for tests and tools
/// that find a product whatever its name.
pub fn product_id(slot: ledger::SlotId) -> String {
    format!("slot-{}", slot.0)
}

/// A product: its category colour, name, price and stock. It can always
/// be pressed: what cannot be bought says why (how much more to insert,
/// sold out, no change) next to the balance, as the keyboard does.
fn product_card<'a>(
    app: &'a App,
    slot: &'a Slot,
    color: Color,
    (width, height): (f32, f32),
    layout: Layout,
) -> Element<'a, Message> {
    let texts = &app.texts;
    let product = &slot.config.product;
    let stock = if slot.sold_out() {
        text(texts.get("sold-out"))
            .size(layout.pick(14, 12))
            .color(style::SOLD_OUT)
    } else {
        text(texts.with("items-left", &args![count = slot.stock])).size(layout.pick(14, 12))
    };
    let category = product.category.0.last().cloned().unwrap_or_default();
    let label = column![
        row![
            container(space().width(8).height(8)).style(move |_: &Theme| style::pill(color)),
            text(format!("{} · {category}", slot.config.slot)).size(layout.pick(12, 10)),
        ]
        .spacing(5)
        .align_y(Center),
        text(product.name.as_str()).size(layout.pick(19, 15)),
        text(texts.won(product.price))
            .size(layout.pick(20, 16))
            .color(style::PRICE),
        stock,
    ]
    .spacing(layout.pick(4, 2));
    let buyable = app.machine.state().can_buy(slot.config.slot);
    button(
        container(label)
            .id(product_id(slot.config.slot))
            .width(Length::Fixed(width))
            .height(Length::Fixed(height))
            .padding(layout.pick(8, 5)),
    )
    .on_press(Message::Buy(slot.config.slot))
    .padding(0)
    .style(style::product(buyable, color))
    .into()
}

fn money_panel<'a>(app: &'a App, layout: Layout) -> Element<'a, Message> {
    let texts = &app.texts;
    let state = app.machine.state();
    let selling = !state.out_of_service();
    let size = layout.pick(15, 12);
    let balance = container(
        column![
            text(texts.get("balance")).size(layout.pick(13, 11)),
            text(texts.won(state.escrow.balance)).size(layout.pick(30, 22)),
        ]
        .spacing(0),
    )
    .padding([layout.pick(8, 4), 12])
    .width(Fill)
    .style(style::led);
    let session = column![
        button(text(texts.get("return-change")).size(size))
            .on_press_maybe(state.escrow.active.then_some(Message::ReturnChange))
            .width(Fill)
            .padding(layout.pick([8, 12], [5, 10]))
            .style(button::success),
        button(text(texts.get("cancel-last")).size(size))
            .on_press_maybe((!state.escrow.purchases.is_empty()).then_some(Message::CancelLast))
            .width(Fill)
            .padding(layout.pick([6, 12], [4, 10]))
            .style(button::warning),
    ]
    .spacing(layout.pick(8, 4));
    let money_button = |kind: MoneyKind, value: Won, accepted: bool| {
        let fill = match (accepted, kind, value) {
            (false, ..) => style::REFUSED_MONEY,
            (true, MoneyKind::Bill, _) => style::BILL,
            (true, _, 500) => style::GOLD,
            (true, _, 10) => style::BRONZE,
            _ => style::SILVER,
        };
        button(text(texts.money(kind, value)).size(size))
            .on_press_maybe(selling.then_some(Message::Insert(kind, value)))
            .width(Fill)
            .padding(layout.pick([6, 10], [4, 8]))
            .style(style::money(fill, accepted))
    };
    let accepted = ACCEPTED_MONEY.chunks(2).map(|pair| {
        Row::with_children(
            pair.iter()
                .map(|&(kind, value)| money_button(kind, value, true).into()),
        )
        .spacing(6)
        .into()
    });
    let refused = Row::with_children(
        REFUSED_MONEY
            .iter()
            .map(|&(kind, value)| money_button(kind, value, false).into()),
    )
    .spacing(6);
    let mut content = column![
        balance,
        feedback(app.notice.as_ref(), layout),
        session,
        text(texts.get("accepted-money")).size(layout.pick(13, 11)),
        Column::with_children(accepted).spacing(layout.pick(6, 4)),
        text(texts.get("not-accepted-money")).size(layout.pick(13, 11)),
        refused,
    ]
    .spacing(layout.pick(10, 5));
    if !layout.compact {
        content = content.push(text(texts.get("keys-hint")).size(11));
    }
    let panel = container(scrollable(content))
        .padding(layout.pick(14, 8))
        .style(style::panel);
    if layout.portrait {
        panel.width(Fill).into()
    } else {
        panel.width(Length::Fixed(panel_width(layout))).into()
    }
}

/// What the customer is told, right under the balance.
fn feedback(notice: Option<&Notice>, layout: Layout) -> Element<'static, Message> {
    let Some(notice) = notice else {
        return space().height(layout.pick(20, 14)).into();
    };
    let color = match notice.tone {
        Tone::Info => style::INFO,
        Tone::Success => style::LED,
        Tone::Warning => style::WARNING,
        Tone::Error => style::ERROR,
    };
    text(notice.text.clone())
        .size(layout.pick(15, 12))
        .color(color)
        .into()
}

/// "Out of service" with what the operator does about it, in place of the
/// products; the money buttons are off.
fn out_of_service(texts: &Texts, layout: Layout) -> Element<'_, Message> {
    let content = column![
        text(texts.get("out-of-service")).size(layout.pick(40, 28)),
        text(texts.get("out-of-service-hint")).size(layout.pick(18, 14)),
    ]
    .spacing(16)
    .align_x(Center);
    container(content)
        .padding(24)
        .center(Fill)
        .style(style::product_window)
        .into()
}

/// The change-owed ticket: number, amount, machine, time and how to claim
/// it, until the customer presses OK.
fn ticket_card<'a>(app: &'a App, ticket: &Ticket, layout: Layout) -> Element<'a, Message> {
    let texts = &app.texts;
    let line = |label: String, value: String| {
        row![
            text(label)
                .size(layout.pick(16, 13))
                .width(Length::Fixed(layout.pick(130.0, 90.0))),
            text(value).size(layout.pick(18, 14)),
        ]
        .spacing(10)
    };
    let card = column![
        text(texts.get("ticket-title")).size(layout.pick(28, 20)),
        text(texts.with("ticket-number", &args![ticket = ticket.number])).size(layout.pick(20, 15)),
        line(texts.get("ticket-amount"), texts.won(ticket.amount)),
        line(texts.get("ticket-machine"), app.machine.id().to_string()),
        line(texts.get("ticket-time"), texts.time(ticket.at_ms)),
        text(texts.get("ticket-claim")).size(layout.pick(14, 12)),
        button(text(texts.get("ticket-ok")).size(layout.pick(16, 13)))
            .on_press(Message::CloseTicket)
            .style(button::primary),
    ]
    .spacing(layout.pick(10, 5))
    .max_width(460);
    container(
        container(card)
            .padding(layout.pick(20, 12))
            .style(style::ticket),
    )
    .center(Fill)
    .style(style::product_window)
    .into()
}

/// What the customer is told after an action.
pub fn describe_customer(texts: &Texts, events: &[Event]) -> Option<Notice> {
    let mut notice: Option<Notice> = None;
    let mut returned_bill = None;
    for event in events {
        notice = match event {
            Event::MoneyInserted { denomination, .. } => Notice::new(
                Tone::Info,
                texts.with(
                    "inserted",
                    &args![money = texts.denomination(*denomination)],
                ),
            ),
            Event::MoneyRejected { reason, .. } => {
                Notice::new(Tone::Warning, texts.insert_rejection(*reason))
            }
            Event::ProductPurchased { product, .. } => Notice::new(
                Tone::Success,
                texts.with("purchased", &args![product = product.as_str()]),
            ),
            Event::PurchaseCancelled { product, price, .. } => Notice::new(
                Tone::Info,
                texts.with(
                    "cancelled",
                    &args![product = product.as_str(), amount = texts.won(*price)],
                ),
            ),
            Event::BillReturned { denomination } => {
                returned_bill = Some(texts.denomination(*denomination));
                Notice::new(
                    Tone::Success,
                    texts.with(
                        "bill-returned",
                        &args![money = texts.denomination(*denomination)],
                    ),
                )
            }
            Event::ChangeReturned { coins, paid } => Notice::new(
                Tone::Success,
                match (&returned_bill, *paid) {
                    (None, 0) => texts.get("thank-you"),
                    (Some(_), 0) => notice.map(|n| n.text).unwrap_or_default(),
                    (None, paid) => texts.with(
                        "change-returned",
                        &args![amount = texts.won(paid), coins = texts.coins(coins)],
                    ),
                    (Some(bill), paid) => texts.with(
                        "bill-and-change-returned",
                        &args![
                            money = bill.as_str(),
                            amount = texts.won(paid),
                            coins = texts.coins(coins)
                        ],
                    ),
                },
            ),
            Event::ChangeOwed { amount, .. } => Notice::new(
                Tone::Warning,
                texts.with("change-owed-notice", &args![amount = texts.won(*amount)]),
            ),
            _ => notice,
        };
    }
    notice
}

/// What an operator (or a remote command) just did.
pub fn describe_admin(texts: &Texts, events: &[Event]) -> Option<Notice> {
    let mut tone = Tone::Success;
    let lines: Vec<String> = events
        .iter()
        .filter_map(|event| {
            Some(match event {
                Event::SlotRefilled { slot, added } => {
                    texts.with("refilled", &args![slot = slot.0, added = *added])
                }
                Event::TubeLoaded {
                    denomination,
                    count,
                } => texts.with(
                    "tube-loaded",
                    &args![count = *count, money = texts.denomination(*denomination)],
                ),
                Event::CashCollected {
                    cash_box,
                    stacker,
                    counted,
                } => {
                    let difference = counted - cash_box - stacker;
                    if difference != 0 {
                        tone = Tone::Warning;
                    }
                    collected(texts, *counted, difference)
                }
                Event::PriceChanged {
                    slot,
                    price,
                    source,
                } => texts.with(
                    remote_id(source, "price-changed", "price-changed-remote"),
                    &args![slot = slot.0, price = texts.won(*price)],
                ),
                Event::ProductRenamed { slot, name, source } => texts.with(
                    remote_id(source, "renamed", "renamed-remote"),
                    &args![slot = slot.0, name = name.as_str()],
                ),
                Event::SlotConfigured(config) => texts.with(
                    "configured",
                    &args![slot = config.slot.0, name = config.product.name.as_str()],
                ),
                Event::ChangeOwedSettled { ticket, amount, .. } => texts.with(
                    "settled",
                    &args![ticket = *ticket, amount = texts.won(*amount)],
                ),
                Event::AdminPasswordChanged { .. } => texts.get("password-changed"),
                Event::RemoteCommandRejected { command_id, reason } => {
                    tone = Tone::Warning;
                    texts.with(
                        "remote-refused",
                        &args![id = *command_id, reason = reason.as_str()],
                    )
                }
                _ => return None,
            })
        })
        .collect();
    if lines.is_empty() {
        return None;
    }
    Notice::new(tone, lines.join("; "))
}

/// "Collected 990 won: 10 won short".
pub fn collected(texts: &Texts, counted: Won, difference: Won) -> String {
    let counted = texts.won(counted);
    match difference {
        0 => texts.with("collected-exact", &args![counted = counted]),
        d if d > 0 => texts.with(
            "collected-over",
            &args![counted = counted, amount = texts.won(d)],
        ),
        d => texts.with(
            "collected-short",
            &args![counted = counted, amount = texts.won(-d)],
        ),
    }
}

fn remote_id(source: &Source, local: &'static str, remote: &'static str) -> &'static str {
    match source {
        Source::Remote { .. } => remote,
        Source::Local => local,
    }
}

/// "3,000 won over" / "10 won short" / "0 won".
pub fn over_short(texts: &Texts, difference: Won) -> String {
    match difference {
        d if d > 0 => texts.with("over", &args![amount = texts.won(d)]),
        d if d < 0 => texts.with("short", &args![amount = texts.won(-d)]),
        _ => texts.won(0),
    }
}

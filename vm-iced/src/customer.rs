//! The customer screen: products, money, balance, change, and the header
//! with the exact-change light and the connection indicator.

use crate::app::{App, Link, Message, Notice, Tone};
use crate::style;
use iced::widget::{button, column, container, row, scrollable, space, text, text_input};
use iced::{Center, Color, Element, Fill, FillPortion, Theme};
use ledger::catalog::{SortKey, matches_search, sort_slots};
use ledger::money::{MoneyKind, format_won};
use ledger::state::Slot;
use link::uplink::LinkState;

/// The coins and bills a customer can put in, as (label, kind, value). The
/// 5,000-won bill and the foreign coin exist so a customer can try them and
/// see them refused, as on a real machine.
pub const MONEY_BUTTONS: [(&str, MoneyKind, i64); 7] = [
    ("10-won coin", MoneyKind::Coin, 10),
    ("50-won coin", MoneyKind::Coin, 50),
    ("100-won coin", MoneyKind::Coin, 100),
    ("500-won coin", MoneyKind::Coin, 500),
    ("1,000-won bill", MoneyKind::Bill, 1_000),
    ("5,000-won bill", MoneyKind::Bill, 5_000),
    ("Foreign coin", MoneyKind::Coin, 200),
];

pub fn header(app: &App) -> Element<'_, Message> {
    let state = app.machine.state();
    let exact = state.exact_change_only().then(|| {
        container(text("EXACT CHANGE ONLY").size(14))
            .padding([4, 10])
            .style(|_: &Theme| style::pill(style::AMBER))
    });
    let admin = (app.screen == crate::app::Screen::Customer).then(|| {
        button(text("Admin"))
            .on_press(Message::OpenAdmin)
            .style(button::secondary)
    });
    row![
        text(app.machine.id().to_string()).size(26),
        exact,
        space::horizontal(),
        link_indicator(&app.link, app.machine.unacknowledged()),
        admin,
    ]
    .spacing(12)
    .align_y(Center)
    .into()
}

/// "Online · primary 127.0.0.1:7101 · 0 unsent", as the connection light.
pub fn link_text(link: &Link, unsent: u64) -> String {
    let state = match (link.configured, link.state) {
        (false, _) => "Standalone".to_owned(),
        (true, LinkState::Online) => match &link.primary {
            Some(primary) => format!("Online · primary {primary}"),
            None => "Online".to_owned(),
        },
        (true, LinkState::Connecting) => "Connecting…".to_owned(),
        (true, LinkState::Offline) => "Offline".to_owned(),
        // The details (which replica, what it said) are in the log; the
        // screen says what an operator checks first.
        (true, LinkState::Refused) => "Refused: unknown machine or wrong key".to_owned(),
    };
    format!("{state} · {unsent} unsent")
}

fn link_indicator(link: &Link, unsent: u64) -> Element<'static, Message> {
    let color = match (link.configured, link.state) {
        (true, LinkState::Online) => Color::from_rgb8(0x16, 0xa3, 0x4a),
        (true, LinkState::Connecting) => style::AMBER,
        (true, LinkState::Refused) => style::REFUSED,
        _ => style::MUTED,
    };
    row![
        container(space().width(12).height(12)).style(move |_: &Theme| style::pill(color)),
        text(link_text(link, unsent)).size(14),
    ]
    .spacing(6)
    .align_y(Center)
    .into()
}

pub fn view(app: &App) -> Element<'_, Message> {
    let state = app.machine.state();
    let mut slots: Vec<&Slot> = state
        .slots
        .values()
        .filter(|s| matches_search(&s.config, &app.search))
        .collect();
    sort_slots(&mut slots, app.sort, |s| &s.config);
    let cards = slots
        .into_iter()
        .map(|slot| product_card(slot, state.can_buy(slot.config.slot)));
    let sort_button = |label: &'static str, key: SortKey| {
        button(text(label).size(14))
            .on_press(Message::SortBy(key))
            .style(if app.sort == key {
                button::primary
            } else {
                button::secondary
            })
    };
    let controls = row![
        text("Sort").size(14),
        sort_button("Slot", SortKey::Slot),
        sort_button("Name", SortKey::Name),
        sort_button("Price", SortKey::Price),
        text_input("Search products", &app.search)
            .on_input(Message::Search)
            .width(220)
            .padding(6),
    ]
    .spacing(8)
    .align_y(Center);
    let window =
        container(scrollable(row(cards).spacing(14).wrap().vertical_spacing(14)).height(Fill))
            .padding(14)
            .width(Fill)
            .height(Fill)
            .style(style::product_window);
    let products = column![controls, window].spacing(12).width(FillPortion(3));
    row![products, money_panel(app)]
        .spacing(20)
        .height(Fill)
        .into()
}

fn product_card(slot: &Slot, enabled: bool) -> Element<'_, Message> {
    let product = &slot.config.product;
    let stock = if slot.sold_out() {
        text("SOLD OUT")
            .size(14)
            .color(Color::from_rgb8(0xdc, 0x26, 0x26))
    } else {
        text(format!("{} left", slot.stock)).size(14)
    };
    let price = text(format!("{} won", format_won(product.price)))
        .size(20)
        .color(style::PRICE);
    let label = column![
        text(format!("{}  ·  {}", slot.config.slot, product.category)).size(11),
        text(product.name.as_str()).size(19),
        price,
        stock,
    ]
    .spacing(4);
    button(container(label).width(168).padding(8))
        .on_press_maybe(enabled.then_some(Message::Buy(slot.config.slot)))
        .style(style::product)
        .into()
}

fn money_panel(app: &App) -> Element<'_, Message> {
    let state = app.machine.state();
    let balance =
        container(text(format!("Balance {} won", format_won(state.escrow.balance))).size(24))
            .padding(12)
            .width(Fill)
            .style(style::led);
    let money = MONEY_BUTTONS.iter().map(|&(label, kind, value)| {
        let fill = match (kind, value) {
            (MoneyKind::Bill, _) => style::BILL,
            (_, 500) => style::GOLD,
            (_, 10) => style::BRONZE,
            _ => style::SILVER,
        };
        button(text(label).size(15))
            .on_press(Message::Insert(kind, value))
            .width(Fill)
            .padding([6, 14])
            .style(style::money(fill))
            .into()
    });
    let session_buttons = column![
        button(text("Cancel last purchase").size(15))
            .on_press_maybe((!state.escrow.purchases.is_empty()).then_some(Message::CancelLast))
            .width(Fill)
            .style(button::warning),
        button(text("Return change").size(15))
            .on_press_maybe(state.escrow.active.then_some(Message::ReturnChange))
            .width(Fill)
            .style(button::success),
    ]
    .spacing(8);
    let content = column![
        balance,
        text("Insert money").size(14),
        column(money).spacing(6),
        session_buttons,
        text("Keys: a s d f = 10 50 100 500 · g = 1,000 bill · 1-9 buy · c cancel · x change")
            .size(11),
    ]
    .spacing(10);
    container(content)
        .padding(14)
        .width(FillPortion(1))
        .style(style::panel)
        .into()
}

pub fn notice_line(notice: Option<&Notice>) -> Element<'static, Message> {
    let Some(notice) = notice else {
        return text(" ").size(16).into();
    };
    let color = match notice.tone {
        Tone::Info => Color::from_rgb8(0x93, 0xc5, 0xfd),
        Tone::Success => style::LED,
        Tone::Warning => Color::from_rgb8(0xfb, 0xbf, 0x24),
        Tone::Error => Color::from_rgb8(0xf8, 0x71, 0x71),
    };
    text(notice.text.clone()).size(16).color(color).into()
}

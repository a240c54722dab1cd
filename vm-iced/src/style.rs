//! The machine's look: a dark cabinet, a lit product window, white product
//! buttons that grey out when they cannot be bought, coin-coloured money
//! buttons and a green LED balance display.

use iced::widget::{button, container};
use iced::{Background, Border, Color, Shadow, Theme, Vector, border};

pub const CABINET: Color = Color::from_rgb8(0x1f, 0x29, 0x37);
pub const WINDOW: Color = Color::from_rgb8(0xe2, 0xe8, 0xf0);
pub const INK: Color = Color::from_rgb8(0x0f, 0x17, 0x2a);
pub const PRICE: Color = Color::from_rgb8(0x1d, 0x4e, 0xd8);
pub const LED: Color = Color::from_rgb8(0x4a, 0xde, 0x80);
pub const AMBER: Color = Color::from_rgb8(0xd9, 0x77, 0x06);
pub const MUTED: Color = Color::from_rgb8(0x94, 0xa3, 0xb8);
/// The link light when the replicas refuse this machine, and the
/// out-of-service pill.
pub const REFUSED: Color = Color::from_rgb8(0xdc, 0x26, 0x26);
pub const ONLINE: Color = Color::from_rgb8(0x16, 0xa3, 0x4a);
pub const SOLD_OUT: Color = Color::from_rgb8(0xdc, 0x26, 0x26);
/// Feedback colours (next to the balance, under the admin tabs).
pub const INFO: Color = Color::from_rgb8(0x93, 0xc5, 0xfd);
pub const WARNING: Color = Color::from_rgb8(0xfb, 0xbf, 0x24);
pub const ERROR: Color = Color::from_rgb8(0xf8, 0x71, 0x71);
/// Money the machine refuses: grey, with a dashed-looking red edge.
pub const REFUSED_MONEY: Color = Color::from_rgb8(0x47, 0x55, 0x69);
/// One colour per category, in category order.
pub const CATEGORY_COLORS: [Color; 6] = [
    Color::from_rgb8(0x0e, 0xa5, 0xe9),
    Color::from_rgb8(0x92, 0x40, 0x0e),
    Color::from_rgb8(0x22, 0xc5, 0x5e),
    Color::from_rgb8(0xa8, 0x55, 0xf7),
    Color::from_rgb8(0xf9, 0x73, 0x16),
    Color::from_rgb8(0xec, 0x48, 0x99),
];

pub fn cabinet(_: &Theme) -> container::Style {
    container::Style {
        background: Some(CABINET.into()),
        text_color: Some(Color::WHITE),
        ..container::Style::default()
    }
}

pub fn product_window(_: &Theme) -> container::Style {
    container::Style {
        background: Some(WINDOW.into()),
        text_color: Some(INK),
        border: border::rounded(12)
            .color(Color::from_rgb8(0x94, 0xa3, 0xb8))
            .width(2),
        ..container::Style::default()
    }
}

pub fn panel(_: &Theme) -> container::Style {
    container::Style {
        background: Some(Color::from_rgb8(0x11, 0x18, 0x27).into()),
        text_color: Some(Color::WHITE),
        border: border::rounded(12),
        ..container::Style::default()
    }
}

pub fn led(_: &Theme) -> container::Style {
    container::Style {
        background: Some(Color::BLACK.into()),
        text_color: Some(LED),
        border: border::rounded(6)
            .color(Color::from_rgb8(0x33, 0x41, 0x55))
            .width(2),
        ..container::Style::default()
    }
}

pub fn pill(color: Color) -> container::Style {
    container::Style {
        background: Some(color.into()),
        text_color: Some(Color::WHITE),
        border: border::rounded(12),
        ..container::Style::default()
    }
}

/// A product: white and raised with its category colour at the edge when
/// it can be bought, flat grey otherwise (it can still be pressed, and then
/// says why it cannot be bought).
pub fn product(buyable: bool, category: Color) -> impl Fn(&Theme, button::Status) -> button::Style {
    move |_, status| {
        let base = button::Style {
            background: Some(Background::Color(Color::WHITE)),
            text_color: INK,
            border: border::rounded(10).color(category).width(2),
            shadow: Shadow {
                color: Color::from_rgba8(0, 0, 0, 0.25),
                offset: Vector::new(0.0, 2.0),
                blur_radius: 4.0,
            },
            snap: true,
        };
        if !buyable {
            return button::Style {
                background: Some(Background::Color(Color::from_rgb8(0xcb, 0xd5, 0xe1))),
                text_color: Color::from_rgb8(0x64, 0x74, 0x8b),
                shadow: Shadow::default(),
                border: border::rounded(10)
                    .color(Color::from_rgb8(0xb8, 0xc2, 0xcf))
                    .width(1),
                ..base
            };
        }
        match status {
            button::Status::Hovered => button::Style {
                border: border::rounded(10).color(PRICE).width(3),
                ..base
            },
            button::Status::Pressed => button::Style {
                shadow: Shadow::default(),
                ..base
            },
            _ => base,
        }
    }
}

/// Money buttons coloured like what they stand for; refused money is grey
/// with a red edge, and the buttons are off while out of service.
pub fn money(fill: Color, accepted: bool) -> impl Fn(&Theme, button::Status) -> button::Style {
    move |_, status| {
        let background = match status {
            button::Status::Hovered => lighten(fill),
            button::Status::Pressed => darken(fill),
            button::Status::Disabled => Color::from_rgb8(0x33, 0x41, 0x55),
            button::Status::Active => fill,
        };
        let (edge, text_color) = if accepted {
            (darken(fill), INK)
        } else {
            (Color::from_rgb8(0xf8, 0x71, 0x71), Color::WHITE)
        };
        button::Style {
            background: Some(Background::Color(background)),
            text_color: if status == button::Status::Disabled {
                MUTED
            } else {
                text_color
            },
            border: Border {
                color: edge,
                width: if accepted { 1.0 } else { 2.0 },
                radius: 16.0.into(),
            },
            shadow: Shadow::default(),
            snap: true,
        }
    }
}

/// A category filter button: filled when chosen.
pub fn chip(selected: bool) -> impl Fn(&Theme, button::Status) -> button::Style {
    move |_, status| {
        let background = match (selected, status) {
            (true, _) => PRICE,
            (false, button::Status::Hovered) => Color::from_rgb8(0x47, 0x55, 0x69),
            (false, _) => Color::from_rgb8(0x33, 0x41, 0x55),
        };
        button::Style {
            background: Some(Background::Color(background)),
            text_color: Color::WHITE,
            border: border::rounded(14),
            shadow: Shadow::default(),
            snap: true,
        }
    }
}

/// A question that needs the operator's attention (a collection that
/// does not match).
pub fn warning_box(_: &Theme) -> container::Style {
    container::Style {
        background: Some(Color::from_rgb8(0x42, 0x2c, 0x06).into()),
        text_color: Some(Color::WHITE),
        border: border::rounded(8).color(WARNING).width(1),
        ..container::Style::default()
    }
}

/// The change-owed ticket: paper on the product window.
pub fn ticket(_: &Theme) -> container::Style {
    container::Style {
        background: Some(Color::from_rgb8(0xff, 0xfb, 0xeb).into()),
        text_color: Some(INK),
        border: border::rounded(8).color(AMBER).width(2),
        shadow: Shadow {
            color: Color::from_rgba8(0, 0, 0, 0.3),
            offset: Vector::new(0.0, 3.0),
            blur_radius: 8.0,
        },
        ..container::Style::default()
    }
}

pub const GOLD: Color = Color::from_rgb8(0xfa, 0xcc, 0x15);
pub const SILVER: Color = Color::from_rgb8(0xe2, 0xe8, 0xf0);
pub const BRONZE: Color = Color::from_rgb8(0xf5, 0xb0, 0x6b);
pub const BILL: Color = Color::from_rgb8(0x86, 0xef, 0xac);

fn lighten(color: Color) -> Color {
    Color::from_rgb(
        (color.r + 0.1).min(1.0),
        (color.g + 0.1).min(1.0),
        (color.b + 0.1).min(1.0),
    )
}

fn darken(color: Color) -> Color {
    Color::from_rgb(color.r * 0.8, color.g * 0.8, color.b * 0.8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_products_look_different_from_enabled_ones() {
        let theme = Theme::Light;
        let enabled = product(true, CATEGORY_COLORS[0])(&theme, button::Status::Active);
        let disabled = product(false, CATEGORY_COLORS[0])(&theme, button::Status::Active);
        assert_ne!(enabled.background, disabled.background);
        assert_ne!(enabled.text_color, disabled.text_color);
    }
}

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
/// The link light when the replicas refuse this machine.
pub const REFUSED: Color = Color::from_rgb8(0xdc, 0x26, 0x26);

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

/// A product: white and raised when it can be bought, flat grey otherwise.
pub fn product(_: &Theme, status: button::Status) -> button::Style {
    let base = button::Style {
        background: Some(Background::Color(Color::WHITE)),
        text_color: INK,
        border: border::rounded(10)
            .color(Color::from_rgb8(0xcb, 0xd5, 0xe1))
            .width(1),
        shadow: Shadow {
            color: Color::from_rgba8(0, 0, 0, 0.25),
            offset: Vector::new(0.0, 2.0),
            blur_radius: 4.0,
        },
        snap: true,
    };
    match status {
        button::Status::Active => base,
        button::Status::Hovered => button::Style {
            border: border::rounded(10).color(PRICE).width(2),
            ..base
        },
        button::Status::Pressed => button::Style {
            shadow: Shadow::default(),
            ..base
        },
        button::Status::Disabled => button::Style {
            background: Some(Background::Color(Color::from_rgb8(0xcb, 0xd5, 0xe1))),
            text_color: Color::from_rgb8(0x64, 0x74, 0x8b),
            shadow: Shadow::default(),
            ..base
        },
    }
}

/// Money buttons coloured like what they stand for.
pub fn money(fill: Color) -> impl Fn(&Theme, button::Status) -> button::Style {
    move |_, status| {
        let background = match status {
            button::Status::Hovered => lighten(fill),
            button::Status::Pressed => darken(fill),
            _ => fill,
        };
        button::Style {
            background: Some(Background::Color(background)),
            text_color: INK,
            border: Border {
                color: darken(fill),
                width: 1.0,
                radius: 16.0.into(),
            },
            shadow: Shadow::default(),
            snap: true,
        }
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
        let enabled = product(&theme, button::Status::Active);
        let disabled = product(&theme, button::Status::Disabled);
        assert_ne!(enabled.background, disabled.background);
        assert_ne!(enabled.text_color, disabled.text_color);
    }
}

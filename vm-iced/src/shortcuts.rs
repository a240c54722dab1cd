//! Keyboard shortcuts for the customer screen: a plain function from a key
//! to a message, so it is tested without a window.

use crate::app::Message;
use iced::keyboard::{self, Key, key::Named};
use ledger::ids::SlotId;
use ledger::money::MoneyKind;

/// Keys: a s d f insert 10, 50, 100 and 500-won coins, g a 1,000-won bill,
/// 1-9 buy from that slot, c cancels the last purchase, x returns the
/// change, Escape leaves the login screen. Keys typed into a text field
/// never reach here (iced only reports keys no widget used).
pub fn message_for(event: keyboard::Event) -> Option<Message> {
    let keyboard::Event::KeyPressed { key, modifiers, .. } = event else {
        return None;
    };
    if modifiers.control() || modifiers.alt() || modifiers.logo() {
        return None;
    }
    key_message(key.as_ref())
}

pub fn key_message(key: Key<&str>) -> Option<Message> {
    match key {
        Key::Named(Named::Escape) => Some(Message::CloseLogin),
        Key::Character(c) => match c {
            "a" => Some(Message::Insert(MoneyKind::Coin, 10)),
            "s" => Some(Message::Insert(MoneyKind::Coin, 50)),
            "d" => Some(Message::Insert(MoneyKind::Coin, 100)),
            "f" => Some(Message::Insert(MoneyKind::Coin, 500)),
            "g" => Some(Message::Insert(MoneyKind::Bill, 1_000)),
            "c" => Some(Message::CancelLast),
            "x" => Some(Message::ReturnChange),
            digit => {
                let slot = digit.parse::<u16>().ok().filter(|n| (1..=9).contains(n))?;
                Some(Message::Buy(SlotId(slot)))
            }
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_customer_actions() {
        assert!(matches!(
            key_message(Key::Character("f")),
            Some(Message::Insert(MoneyKind::Coin, 500))
        ));
        assert!(matches!(
            key_message(Key::Character("g")),
            Some(Message::Insert(MoneyKind::Bill, 1_000))
        ));
        assert!(matches!(
            key_message(Key::Character("3")),
            Some(Message::Buy(SlotId(3)))
        ));
        assert!(matches!(
            key_message(Key::Character("x")),
            Some(Message::ReturnChange)
        ));
        assert!(matches!(
            key_message(Key::Named(Named::Escape)),
            Some(Message::CloseLogin)
        ));
        assert!(key_message(Key::Character("0")).is_none());
        assert!(key_message(Key::Character("q")).is_none());
    }
}

//! The machine's languages: Korean by default, English on a switch. Every
//! text a screen shows comes from `locales/ko.ftl` and `locales/en.ftl`
//! through Project Fluent (`fluent-bundle`), never from strings in views;
//! this module also formats won (`1,560원`, `1,560 won`) and times the
//! Korean way (`2026-11-30 14:05`, KST) and says in words what the rules
//! and the link report.

use fluent_bundle::concurrent::FluentBundle;
use fluent_bundle::{FluentArgs, FluentResource, FluentValue};
use ledger::admin::PasswordRule;
use ledger::catalog::CatalogError;
use ledger::event::InsertRejection;
use ledger::money::{CoinCounts, Denomination, MoneyKind, Won, format_won};
use ledger::rules::{COUNTED_CASH_MAX, Rejection};
use serde::{Deserialize, Serialize};

/// A language the screens speak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    #[default]
    Korean,
    English,
}

impl Language {
    /// The other one (what the switch on the customer screen changes to).
    pub fn other(self) -> Language {
        match self {
            Language::Korean => Language::English,
            Language::English => Language::Korean,
        }
    }
}

impl std::str::FromStr for Language {
    type Err = String;
    fn from_str(text: &str) -> Result<Language, String> {
        match text {
            "ko" | "korean" => Ok(Language::Korean),
            "en" | "english" => Ok(Language::English),
            other => Err(format!("unknown language {other:?} (ko or en)")),
        }
    }
}

const KOREAN: &str = include_str!("../locales/ko.ftl");
const ENGLISH: &str = include_str!("../locales/en.ftl");

/// Korea has had one offset, without daylight saving, since 1988.
const KST_OFFSET_HOURS: i8 = 9;

/// The texts of both languages and the one in use.
pub struct Texts {
    language: Language,
    korean: FluentBundle<FluentResource>,
    english: FluentBundle<FluentResource>,
}

fn bundle(tag: &str, source: &'static str) -> FluentBundle<FluentResource> {
    let language: unic_langid::LanguageIdentifier = tag.parse().expect("a valid language tag");
    let mut bundle = FluentBundle::new_concurrent(vec![language]);
    // iced draws the isolation marks Fluent puts around arguments as
    // boxes; the texts are one direction anyway.
    bundle.set_use_isolating(false);
    let resource = FluentResource::try_new(source.to_owned())
        .unwrap_or_else(|(_, errors)| panic!("{tag}.ftl does not parse: {errors:?}"));
    bundle
        .add_resource(resource)
        .unwrap_or_else(|errors| panic!("{tag}.ftl defines a message twice: {errors:?}"));
    bundle
}

/// Builds Fluent arguments: `args![amount = "1,560", count = 3]`.
#[macro_export]
macro_rules! args {
    ($($name:ident = $value:expr),* $(,)?) => {{
        let mut args = fluent_bundle::FluentArgs::new();
        $( args.set(stringify!($name), $value); )*
        args
    }};
}

impl Texts {
    pub fn new(language: Language) -> Texts {
        Texts {
            language,
            korean: bundle("ko", KOREAN),
            english: bundle("en", ENGLISH),
        }
    }

    pub fn language(&self) -> Language {
        self.language
    }

    pub fn set_language(&mut self, language: Language) {
        self.language = language;
    }

    fn current(&self) -> &FluentBundle<FluentResource> {
        match self.language {
            Language::Korean => &self.korean,
            Language::English => &self.english,
        }
    }

    /// The message `id` without arguments.
    pub fn get(&self, id: &str) -> String {
        self.format(id, None)
    }

    /// The message `id` with `args`.
    pub fn with(&self, id: &str, args: &FluentArgs<'_>) -> String {
        self.format(id, Some(args))
    }

    /// A missing message or argument is a bug in this crate, caught by
    /// the tests (debug builds stop at it); a release build shows the id
    /// rather than nothing.
    fn format(&self, id: &str, args: Option<&FluentArgs<'_>>) -> String {
        let bundle = self.current();
        let Some(pattern) = bundle.get_message(id).and_then(|m| m.value()) else {
            debug_assert!(false, "no message {id:?} in {:?}", self.language);
            return id.to_owned();
        };
        let mut errors = Vec::new();
        let text = bundle
            .format_pattern(pattern, args, &mut errors)
            .into_owned();
        debug_assert!(errors.is_empty(), "message {id:?}: {errors:?}");
        text
    }

    /// `1,560원` or `1,560 won`.
    pub fn won(&self, amount: Won) -> String {
        self.with("won", &args![amount = format_won(amount)])
    }

    /// `100원 동전`, `1,000원 지폐`, `Foreign coin` for what the machine
    /// does not know.
    pub fn money(&self, kind: MoneyKind, value: Won) -> String {
        let known = Denomination::recognise(kind, value).is_some() || value == 5_000;
        match kind {
            MoneyKind::Coin if !known => self.get("foreign-coin"),
            MoneyKind::Coin => self.with("coin", &args![value = format_won(value)]),
            MoneyKind::Bill => self.with("bill", &args![value = format_won(value)]),
        }
    }

    pub fn denomination(&self, denomination: Denomination) -> String {
        self.money(denomination.kind(), denomination.value())
    }

    /// `1×500 + 2×100`, largest coin first.
    pub fn coins(&self, coins: &CoinCounts) -> String {
        coins
            .breakdown()
            .iter()
            .map(|(coin, count)| format!("{count}×{}", format_won(coin.value())))
            .collect::<Vec<_>>()
            .join(" + ")
    }

    /// What the machine says when it hands an inserted item back.
    pub fn insert_rejection(&self, reason: InsertRejection) -> String {
        self.get(match reason {
            InsertRejection::UnknownDenomination => "rejected-unknown",
            InsertRejection::BalanceLimit => "rejected-balance-limit",
            InsertRejection::BillLimit => "rejected-bill-limit",
            InsertRejection::StackerFull => "rejected-stacker-full",
            InsertRejection::OutOfService => "rejected-out-of-service",
            InsertRejection::NoChange => "rejected-no-change",
        })
    }

    /// Why the rules refused a command, in words for the screen.
    pub fn rejection(&self, rejection: &Rejection) -> String {
        use Rejection as R;
        let slot = |slot: &ledger::SlotId| i64::from(slot.0);
        match rejection {
            R::NotInstalled => self.get("not-installed"),
            R::AlreadyInstalled => self.get("already-installed"),
            R::UnknownSlot(id) => self.with("unknown-slot", &args![slot = slot(id)]),
            R::SoldOut(product) => {
                self.with("sold-out-product", &args![product = product.as_str()])
            }
            R::InsufficientBalance { product, missing } => self.with(
                "insert-more",
                &args![product = product.as_str(), missing = self.won(*missing)],
            ),
            R::CannotMakeChange { amount } => {
                self.with("cannot-make-change", &args![amount = self.won(*amount)])
            }
            R::CannotRefund { amount } => {
                self.with("cannot-refund", &args![amount = self.won(*amount)])
            }
            R::NothingToCancel => self.get("nothing-to-cancel"),
            R::NothingToReturn => self.get("nothing-to-return"),
            R::CustomerSessionActive => self.get("customer-session-active"),
            R::AdminRequired => self.get("admin-required"),
            R::AdminLocked { seconds_left } => {
                self.with("admin-locked", &args![seconds = *seconds_left])
            }
            R::WrongPassword => self.get("wrong-password"),
            R::Policy(violation) => self.password_policy(&violation.broken),
            R::OverCapacity { slot: id, room } => {
                self.with("over-capacity", &args![slot = slot(id), room = *room])
            }
            R::NothingToRefill => self.get("nothing-to-refill"),
            R::NothingToLoad => self.get("nothing-to-load"),
            R::NotACoin(denomination) => self.with(
                "not-a-coin",
                &args![money = self.denomination(*denomination)],
            ),
            R::TubeFull { denomination, room } => self.with(
                "tube-full",
                &args![money = self.denomination(*denomination), room = *room],
            ),
            R::ZeroCount => self.get("zero-count"),
            R::BadCount => self.with("bad-count", &args![max = self.won(COUNTED_CASH_MAX)]),
            R::NothingToCollect => self.get("nothing-to-collect"),
            R::UnknownTicket(ticket) => self.with("unknown-ticket", &args![ticket = *ticket]),
            R::StockAboveCapacity { slot: id, stock } => self.with(
                "stock-above-capacity",
                &args![slot = slot(id), stock = *stock],
            ),
            R::Catalog(error) => self.catalog_error(error),
            // Installation and internal errors come from the ledger's own
            // words: they reach operators at start, not customers.
            R::BadInstallation(_) | R::Internal(_) => {
                self.with("other-problem", &args![problem = rejection.to_string()])
            }
        }
    }

    /// Every rule of the password policy a password breaks, at once.
    pub fn password_policy(&self, broken: &[PasswordRule]) -> String {
        let missing: Vec<String> = broken
            .iter()
            .map(|rule| {
                self.get(match rule {
                    PasswordRule::MinLength => "rule-min-length",
                    PasswordRule::MaxLength => "rule-max-length",
                    PasswordRule::Digit => "rule-digit",
                    PasswordRule::Special => "rule-special",
                })
            })
            .collect();
        self.with("password-policy", &args![missing = missing.join(", ")])
    }

    fn catalog_error(&self, error: &CatalogError) -> String {
        self.get(match error {
            CatalogError::BadName => "bad-name",
            CatalogError::BadPrice => "bad-price",
            CatalogError::BadCapacity => "bad-capacity",
            CatalogError::BadCategory => "bad-category",
            CatalogError::BadSlot => "bad-slot",
            CatalogError::BadCode => "bad-code",
        })
    }

    /// `2026-11-30 14:05` in Korean time.
    pub fn time(&self, at_ms: i64) -> String {
        kst(at_ms).map_or_else(String::new, |zoned| {
            zoned.strftime("%Y-%m-%d %H:%M").to_string()
        })
    }

    /// `2026-11-30`.
    pub fn date(&self, at_ms: i64) -> String {
        kst(at_ms).map_or_else(String::new, |zoned| zoned.strftime("%Y-%m-%d").to_string())
    }
}

fn kst(at_ms: i64) -> Option<jiff::Zoned> {
    let offset = jiff::tz::Offset::constant(KST_OFFSET_HOURS);
    let timestamp = jiff::Timestamp::from_millisecond(at_ms).ok()?;
    Some(timestamp.to_zoned(jiff::tz::TimeZone::fixed(offset)))
}

/// A `FluentValue` for a count that selects plural forms.
pub fn count(n: impl Into<FluentValue<'static>>) -> FluentValue<'static> {
    n.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluent_bundle::FluentResource;
    use std::collections::BTreeSet;

    fn ids(source: &str) -> BTreeSet<String> {
        let resource = FluentResource::try_new(source.to_owned()).expect("parses");
        resource
            .entries()
            .filter_map(|entry| match entry {
                fluent_syntax::ast::Entry::Message(message) => Some(message.id.name.to_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn both_languages_have_every_message() {
        let korean = ids(KOREAN);
        let english = ids(ENGLISH);
        let only_korean: Vec<_> = korean.difference(&english).collect();
        let only_english: Vec<_> = english.difference(&korean).collect();
        assert!(only_korean.is_empty(), "missing in en.ftl: {only_korean:?}");
        assert!(
            only_english.is_empty(),
            "missing in ko.ftl: {only_english:?}"
        );
    }

    #[test]
    fn won_and_dates_the_korean_way() {
        let mut texts = Texts::new(Language::Korean);
        assert_eq!(texts.won(1_560), "1,560원");
        assert_eq!(texts.money(MoneyKind::Bill, 1_000), "1,000원 지폐");
        // 2026-11-30T05:05:00Z is 14:05 in Seoul.
        assert_eq!(texts.time(1_796_015_100_000), "2026-11-30 14:05");
        assert_eq!(texts.date(1_796_015_100_000), "2026-11-30");
        texts.set_language(Language::English);
        assert_eq!(texts.won(1_560), "1,560 won");
        assert_eq!(texts.money(MoneyKind::Coin, 200), "Foreign coin");
    }

    #[test]
    fn plurals_follow_the_count() {
        let texts = Texts::new(Language::English);
        let one = texts.with("failed-attempts", &args![count = count(1)]);
        assert!(one.starts_with("1 failed attempt since"), "{one}");
        let two = texts.with("failed-attempts", &args![count = count(2)]);
        assert!(two.starts_with("2 failed attempts since"), "{two}");
    }

    #[test]
    fn every_rule_a_password_breaks_is_named() {
        let texts = Texts::new(Language::English);
        let violation = ledger::admin::check_policy("short").unwrap_err();
        assert_eq!(
            texts.rejection(&Rejection::Policy(violation)),
            "A password needs at least 8 characters with a digit and a special character. \
             This one lacks: at least 8 characters, a digit, a special character"
        );
    }
}

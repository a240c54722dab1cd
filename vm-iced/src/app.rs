//! The iced application: state, messages, `update` and `view`. `update` only
//! talks to the [`Machine`], which records every action durably before the
//! state the screen shows changes; views are pure functions of the state.

use crate::admin::{self, AdminForm, AdminMessage};
use crate::customer;
use crate::machine::{Machine, MachineError};
use iced::widget::{column, container};
use iced::{Element, Fill, Subscription, Task, Theme};
use ledger::Command;
use ledger::catalog::SortKey;
use ledger::event::Event;
use ledger::ids::SlotId;
use ledger::money::{MoneyKind, Won, format_won};
use link::driver::UplinkReport;
use link::uplink::LinkState;
use std::time::Duration;

/// A customer session with money in and nothing done for this long is
/// closed by returning the change (what a real machine does when someone
/// walks away).
pub const SESSION_IDLE_MS: i64 = 120_000;

#[derive(Debug, Clone)]
pub enum Message {
    Insert(MoneyKind, Won),
    Buy(SlotId),
    CancelLast,
    ReturnChange,
    SortBy(SortKey),
    Search(String),
    OpenAdmin,
    CloseLogin,
    PasswordInput(String),
    Login,
    Admin(AdminMessage),
    Uplink(UplinkReport),
    Tick,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Screen {
    Customer,
    Login,
    Admin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    Info,
    Success,
    Warning,
    Error,
}

/// The line of feedback under the controls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub tone: Tone,
    pub text: String,
}

impl Notice {
    fn new(tone: Tone, text: impl Into<String>) -> Option<Notice> {
        Some(Notice {
            tone,
            text: text.into(),
        })
    }
}

/// The connection indicator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub configured: bool,
    pub state: LinkState,
    pub primary: Option<String>,
}

pub struct App {
    pub machine: Machine,
    pub screen: Screen,
    pub notice: Option<Notice>,
    pub sort: SortKey,
    pub search: String,
    pub password: String,
    pub admin: AdminForm,
    pub link: Link,
    last_customer_action_ms: i64,
}

impl App {
    pub fn new(machine: Machine, uplink_configured: bool) -> App {
        let now = machine.now_ms();
        App {
            admin: AdminForm::new(machine.state()),
            machine,
            screen: Screen::Customer,
            notice: None,
            sort: SortKey::Slot,
            search: String::new(),
            password: String::new(),
            link: Link {
                configured: uplink_configured,
                state: LinkState::Offline,
                primary: None,
            },
            last_customer_action_ms: now,
        }
    }

    pub fn title(&self) -> String {
        format!("vendledger — {}", self.machine.id())
    }

    pub fn theme(&self) -> Theme {
        Theme::Light
    }

    pub fn subscription(&self) -> Subscription<Message> {
        Subscription::batch([
            iced::time::every(Duration::from_secs(1)).map(|_| Message::Tick),
            iced::keyboard::listen().filter_map(crate::shortcuts::message_for),
        ])
    }

    pub fn update(&mut self, message: Message) -> Task<Message> {
        match message {
            Message::Insert(kind, value) => self.customer_command(Command::Insert { kind, value }),
            Message::Buy(slot) => self.customer_command(Command::Purchase { slot }),
            Message::CancelLast => self.customer_command(Command::CancelLastPurchase),
            Message::ReturnChange => self.customer_command(Command::ReturnChange),
            Message::SortBy(key) => self.sort = key,
            Message::Search(text) => self.search = text,
            Message::OpenAdmin => {
                if self.screen == Screen::Customer {
                    self.screen = Screen::Login;
                    self.password.clear();
                    self.notice = None;
                }
            }
            Message::CloseLogin => {
                self.screen = Screen::Customer;
                self.password.clear();
            }
            Message::PasswordInput(text) => self.password = text,
            Message::Login => self.login(),
            Message::Admin(AdminMessage::Logout) => {
                self.run(Command::AdminLogout);
                self.screen = Screen::Customer;
                self.notice = Notice::new(Tone::Info, "Logged out");
            }
            Message::Admin(message) => {
                if self.screen == Screen::Admin {
                    self.admin_message(message);
                }
            }
            Message::Uplink(report) => self.on_uplink(report),
            Message::Tick => self.on_tick(),
        }
        Task::none()
    }

    fn admin_message(&mut self, message: AdminMessage) {
        let (commands, mut notice) = self.admin.update(message, self.machine.state());
        if commands.is_empty() {
            if notice.is_some() {
                self.notice = notice;
            }
            return;
        }
        let mut events = Vec::new();
        for command in commands {
            match self.machine.execute(command) {
                Ok(more) => events.extend(more),
                Err(error) => {
                    notice = error_notice(&error);
                    break;
                }
            }
        }
        self.notice = notice.or_else(|| describe_admin(&events));
        self.admin.refresh(self.machine.state());
    }

    fn customer_command(&mut self, command: Command) {
        if self.screen != Screen::Customer {
            return;
        }
        self.last_customer_action_ms = self.machine.now_ms();
        self.notice = match self.machine.execute(command) {
            Ok(events) => describe_customer(&events, &self.machine),
            Err(error) => error_notice(&error),
        };
    }

    fn run(&mut self, command: Command) {
        if let Err(error) = self.machine.execute(command) {
            self.notice = error_notice(&error);
        }
    }

    fn login(&mut self) {
        let password = std::mem::take(&mut self.password);
        match self.machine.execute(Command::AdminLogin { password }) {
            Ok(events) if events.iter().any(|e| matches!(e, Event::AdminLoggedIn)) => {
                self.screen = Screen::Admin;
                self.admin = AdminForm::new(self.machine.state());
                self.notice = Notice::new(Tone::Success, "Welcome, operator");
            }
            Ok(events) => {
                let locked = events
                    .iter()
                    .any(|e| matches!(e, Event::AdminLockedOut { .. }));
                let failures = events.iter().find_map(|e| match e {
                    Event::AdminLoginFailed { failures } => Some(*failures),
                    _ => None,
                });
                self.notice = if locked {
                    Notice::new(
                        Tone::Error,
                        "Wrong password. Admin is locked for 5 minutes.",
                    )
                } else {
                    let left = ledger::admin::LOGIN_FAILURES_MAX - failures.unwrap_or(0);
                    Notice::new(
                        Tone::Warning,
                        format!("Wrong password. {left} attempts left before a 5-minute lock."),
                    )
                };
            }
            Err(error) => self.notice = error_notice(&error),
        }
    }

    fn on_uplink(&mut self, report: UplinkReport) {
        match report {
            UplinkReport::Acknowledged(seq) => self.machine.acknowledged(seq),
            UplinkReport::State { state, primary, .. } => {
                self.link.state = state;
                self.link.primary = primary;
            }
            UplinkReport::Remote(command) => {
                // Applied even while a customer or operator is busy: the
                // command changes a price or a name, or settles a debt.
                match self.machine.execute(Command::Remote(command)) {
                    Ok(events) => {
                        if let Some(notice) = describe_admin(&events) {
                            self.notice = Some(notice);
                        }
                        self.admin.refresh(self.machine.state());
                    }
                    Err(error) => self.notice = error_notice(&error),
                }
            }
        }
    }

    fn on_tick(&mut self) {
        let state = self.machine.state();
        let idle = self.machine.now_ms() - self.last_customer_action_ms;
        if self.screen == Screen::Customer && state.escrow.active && idle >= SESSION_IDLE_MS {
            self.last_customer_action_ms = self.machine.now_ms();
            self.notice = match self.machine.execute(Command::ReturnChange) {
                Ok(events) => describe_customer(&events, &self.machine).map(|n| Notice {
                    text: format!("Session timed out. {}", n.text),
                    ..n
                }),
                Err(error) => error_notice(&error),
            };
        }
    }

    pub fn view(&self) -> Element<'_, Message> {
        let body = match self.screen {
            Screen::Customer => customer::view(self),
            Screen::Login => admin::login_view(self),
            Screen::Admin => admin::view(self).map(Message::Admin),
        };
        let page = column![
            customer::header(self),
            body,
            customer::notice_line(self.notice.as_ref())
        ]
        .spacing(12);
        container(page)
            .padding(16)
            .width(Fill)
            .height(Fill)
            .style(crate::style::cabinet)
            .into()
    }
}

fn error_notice(error: &MachineError) -> Option<Notice> {
    match error {
        MachineError::Rejected(rejection) => {
            Notice::new(Tone::Warning, capitalise(&rejection.to_string()))
        }
        other => Notice::new(Tone::Error, capitalise(&other.to_string())),
    }
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// What the customer is told after an action.
fn describe_customer(events: &[Event], machine: &Machine) -> Option<Notice> {
    let mut notice = None;
    for event in events {
        notice = match event {
            Event::MoneyInserted { denomination, .. } => Notice::new(
                Tone::Info,
                format!("{} accepted", capitalise(&denomination.to_string())),
            ),
            Event::MoneyRejected { reason, .. } => Notice::new(Tone::Warning, reason.message()),
            Event::ProductPurchased { product, .. } => {
                Notice::new(Tone::Success, format!("Enjoy your {product}!"))
            }
            Event::PurchaseCancelled { product, price, .. } => Notice::new(
                Tone::Info,
                format!(
                    "Cancelled {product}: {} won back in your balance",
                    format_won(*price)
                ),
            ),
            Event::ChangeReturned { coins, paid } => {
                let breakdown: Vec<String> = coins
                    .breakdown()
                    .iter()
                    .map(|(d, n)| format!("{n}×{}", d.value()))
                    .collect();
                let text = if *paid == 0 {
                    "Thank you!".to_owned()
                } else {
                    format!(
                        "Your change: {} won ({})",
                        format_won(*paid),
                        breakdown.join(" + ")
                    )
                };
                Notice::new(Tone::Success, text)
            }
            Event::ChangeOwed { ticket, amount } => {
                let before = notice.map(|n: Notice| n.text + ". ").unwrap_or_default();
                Notice::new(
                    Tone::Warning,
                    format!(
                        "{before}The machine owes you {} won (ticket #{ticket} at {}): please call the operator",
                        format_won(*amount),
                        machine.id()
                    ),
                )
            }
            _ => notice,
        };
    }
    notice
}

/// What an operator (or a remote command) just did.
fn describe_admin(events: &[Event]) -> Option<Notice> {
    let lines: Vec<String> = events
        .iter()
        .filter_map(|event| match event {
            Event::SlotRefilled { slot, added } => Some(format!("slot {slot} +{added}")),
            Event::TubeLoaded {
                denomination,
                count,
            } => Some(format!("{count} × {} loaded", denomination)),
            Event::CashCollected {
                cash_box,
                stacker,
                counted,
            } => {
                let difference = counted - cash_box - stacker;
                Some(match difference {
                    0 => format!("collected {} won, as expected", format_won(*counted)),
                    d if d > 0 => format!(
                        "collected {} won: {} won over",
                        format_won(*counted),
                        format_won(d)
                    ),
                    d => format!(
                        "collected {} won: {} won short",
                        format_won(*counted),
                        format_won(-d)
                    ),
                })
            }
            Event::PriceChanged {
                slot,
                price,
                source,
            } => Some(format!(
                "slot {slot} now costs {} won{}",
                format_won(*price),
                remote_suffix(source)
            )),
            Event::ProductRenamed { slot, name, source } => Some(format!(
                "slot {slot} is now {name}{}",
                remote_suffix(source)
            )),
            Event::SlotConfigured(config) => Some(format!(
                "slot {} configured: {}",
                config.slot, config.product.name
            )),
            Event::ChangeOwedSettled { ticket, amount, .. } => Some(format!(
                "ticket #{ticket} settled ({} won)",
                format_won(*amount)
            )),
            Event::AdminPasswordChanged { .. } => Some("password changed".to_owned()),
            Event::RemoteCommandRejected { command_id, reason } => {
                Some(format!("remote command {command_id} refused: {reason}"))
            }
            _ => None,
        })
        .collect();
    if lines.is_empty() {
        return None;
    }
    Notice::new(Tone::Success, capitalise(&lines.join("; ")))
}

fn remote_suffix(source: &ledger::event::Source) -> &'static str {
    match source {
        ledger::event::Source::Remote { .. } => " (from the dashboard)",
        ledger::event::Source::Local => "",
    }
}

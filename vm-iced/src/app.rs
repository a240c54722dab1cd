//! The iced application: state, messages, `update` and `view`. `update` only
//! talks to the [`Machine`], which records every action durably before the
//! state the screen shows changes; views are pure functions of the state.
//! Every text comes from [`Texts`] (Korean by default, English on a switch).

use crate::admin::{self, AdminForm, AdminMessage};
use crate::customer;
use crate::i18n::{Language, Texts};
use crate::machine::{Machine, MachineError};
use iced::widget::{column, container, responsive};
use iced::{Element, Fill, Size, Subscription, Task, Theme};
use ledger::Command;
use ledger::catalog::{CategoryPath, SortKey};
use ledger::event::Event;
use ledger::ids::SlotId;
use ledger::money::{Denomination, MoneyKind, Won};
use link::channel::RefusalReason;
use link::driver::UplinkReport;
use link::uplink::LinkState;
use std::time::Duration;

/// A customer session with money in and nothing done for this long is
/// closed by returning the change (what a real machine does when someone
/// walks away).
pub const SESSION_IDLE_MS: i64 = 120_000;

/// The id of the admin password field (focused when the login opens).
pub const PASSWORD_FIELD: &str = "admin-password";

#[derive(Debug, Clone)]
pub enum Message {
    Insert(MoneyKind, Won),
    Buy(SlotId),
    CancelLast,
    ReturnChange,
    /// The coin changer reported a jam on this tube while paying change
    /// (from the machine's hardware; `--script jam:100` for drills).
    ChangerJammed(Denomination),
    SortBy(SortKey),
    Search(String),
    /// Show one category (`None`: all).
    Category(Option<CategoryPath>),
    /// Switch between Korean and English.
    SwitchLanguage,
    /// The customer took their change-owed ticket.
    CloseTicket,
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

/// Feedback for the person in front of the machine: next to the balance
/// on the customer screen, under the tabs on the admin screen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub tone: Tone,
    pub text: String,
}

impl Notice {
    pub fn new(tone: Tone, text: impl Into<String>) -> Option<Notice> {
        Some(Notice {
            tone,
            text: text.into(),
        })
    }
}

/// A change-owed ticket, shown to the customer it was issued to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub number: u64,
    pub amount: Won,
    pub at_ms: i64,
}

/// The connection light: whether replicas are configured, what the uplink
/// last reported, and when the fleet last answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub configured: bool,
    pub state: LinkState,
    pub primary: Option<String>,
    /// Why the replicas refused this machine, as far as it can tell
    /// (`Some(None)`: its key does not open their frames).
    pub refused: Option<Option<RefusalReason>>,
}

/// The window's shape, which the screens adapt to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Layout {
    pub size: Size,
    /// Taller than wide (a 1080×1920 kiosk panel): the money panel goes
    /// under the products.
    pub portrait: bool,
    /// A small panel (800×480): smaller type and spacing.
    pub compact: bool,
}

impl Layout {
    pub fn of(size: Size) -> Layout {
        Layout {
            size,
            portrait: size.height > size.width,
            compact: size.height < 640.0 || size.width < 900.0,
        }
    }

    /// `normal`, or `small` on a compact panel.
    pub fn pick<T>(&self, normal: T, small: T) -> T {
        if self.compact { small } else { normal }
    }
}

pub struct App {
    pub machine: Machine,
    pub texts: Texts,
    pub screen: Screen,
    pub notice: Option<Notice>,
    pub sort: SortKey,
    pub search: String,
    pub category: Option<CategoryPath>,
    pub password: String,
    pub admin: AdminForm,
    pub link: Link,
    pub ticket: Option<Ticket>,
    last_customer_action_ms: i64,
}

impl App {
    pub fn new(machine: Machine, uplink_configured: bool, language: Language) -> App {
        let now = machine.now_ms();
        App {
            admin: AdminForm::new(machine.state()),
            machine,
            texts: Texts::new(language),
            screen: Screen::Customer,
            notice: None,
            sort: SortKey::Slot,
            search: String::new(),
            category: None,
            password: String::new(),
            link: Link {
                configured: uplink_configured,
                state: LinkState::Offline,
                primary: None,
                refused: None,
            },
            ticket: None,
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
            Message::ChangerJammed(jammed) => {
                self.customer_command(Command::ReturnChangeJammed { jammed })
            }
            Message::SortBy(key) => self.sort = key,
            Message::Search(text) => self.search = text,
            Message::Category(category) => self.category = category,
            Message::SwitchLanguage => {
                self.texts.set_language(self.texts.language().other());
                // A notice stays in the language it was said in: drop it.
                self.notice = None;
            }
            Message::CloseTicket => self.ticket = None,
            Message::OpenAdmin => return self.open_login(),
            Message::CloseLogin => {
                self.screen = Screen::Customer;
                self.password.clear();
                self.notice = None;
            }
            Message::PasswordInput(text) => self.password = text,
            Message::Login => self.login(),
            Message::Admin(AdminMessage::Logout) => {
                self.run(Command::AdminLogout);
                self.screen = Screen::Customer;
                self.notice = Notice::new(Tone::Info, self.texts.get("logged-out"));
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

    /// The login screen, with the cursor in the password field.
    fn open_login(&mut self) -> Task<Message> {
        if self.screen != Screen::Customer {
            return Task::none();
        }
        self.screen = Screen::Login;
        self.password.clear();
        self.notice = None;
        iced::widget::operation::focus(PASSWORD_FIELD)
    }

    fn admin_message(&mut self, message: AdminMessage) {
        let outcome = self
            .admin
            .update(message, self.machine.state(), &self.texts);
        if let Some(notice) = outcome.notice {
            self.notice = Some(notice);
        } else if outcome.clear_notice {
            self.notice = None;
        }
        if outcome.commands.is_empty() {
            return;
        }
        let mut events = Vec::new();
        for command in outcome.commands {
            match self.machine.execute(command) {
                Ok(more) => events.extend(more),
                Err(error) => {
                    self.notice = self.error_notice(&error);
                    self.admin.refresh(self.machine.state());
                    return;
                }
            }
        }
        self.notice = customer::describe_admin(&self.texts, &events);
        self.admin.refresh(self.machine.state());
    }

    fn customer_command(&mut self, command: Command) {
        if self.screen != Screen::Customer {
            return;
        }
        self.last_customer_action_ms = self.machine.now_ms();
        self.notice = match self.machine.execute(command) {
            Ok(events) => {
                self.note_ticket(&events);
                customer::describe_customer(&self.texts, &events)
            }
            Err(error) => self.error_notice(&error),
        };
    }

    /// A ticket the machine just issued is shown to its customer.
    fn note_ticket(&mut self, events: &[Event]) {
        let at_ms = self.machine.state().last_at_ms;
        if let Some(ticket) = events.iter().find_map(|event| match event {
            Event::ChangeOwed { ticket, amount } => Some(Ticket {
                number: *ticket,
                amount: *amount,
                at_ms,
            }),
            _ => None,
        }) {
            self.ticket = Some(ticket);
        }
    }

    fn run(&mut self, command: Command) {
        if let Err(error) = self.machine.execute(command) {
            self.notice = self.error_notice(&error);
        }
    }

    fn login(&mut self) {
        let password = std::mem::take(&mut self.password);
        match self.machine.execute(Command::AdminLogin { password }) {
            Ok(events) if events.iter().any(|e| matches!(e, Event::AdminLoggedIn)) => {
                self.screen = Screen::Admin;
                self.admin = AdminForm::new(self.machine.state());
                self.notice = Notice::new(Tone::Success, self.texts.get("login-welcome"));
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
                    Notice::new(Tone::Error, self.texts.get("login-locked"))
                } else {
                    let left = ledger::admin::LOGIN_FAILURES_MAX - failures.unwrap_or(0);
                    Notice::new(
                        Tone::Warning,
                        self.texts.with(
                            "login-wrong",
                            &crate::args![left = crate::i18n::count(left)],
                        ),
                    )
                };
            }
            Err(error) => self.notice = self.error_notice(&error),
        }
    }

    fn on_uplink(&mut self, report: UplinkReport) {
        match report {
            UplinkReport::Acknowledged(seq) => self.machine.acknowledged(seq),
            UplinkReport::State {
                state,
                primary,
                refused,
                ..
            } => {
                if state == LinkState::Online {
                    self.machine.synced();
                }
                self.link.state = state;
                self.link.primary = primary;
                self.link.refused = refused.map(|r| r.reason);
            }
            UplinkReport::Remote(command) => {
                // Applied even while a customer or operator is busy: the
                // command changes a price or a name, or settles a debt.
                match self.machine.execute(Command::Remote(command)) {
                    Ok(events) => {
                        if let Some(notice) = customer::describe_admin(&self.texts, &events) {
                            self.notice = Some(notice);
                        }
                        self.admin.refresh(self.machine.state());
                    }
                    Err(error) => self.notice = self.error_notice(&error),
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
                Ok(events) => {
                    self.note_ticket(&events);
                    customer::describe_customer(&self.texts, &events).map(|n| Notice {
                        text: self
                            .texts
                            .with("session-timed-out", &crate::args![text = n.text]),
                        ..n
                    })
                }
                Err(error) => self.error_notice(&error),
            };
        }
    }

    /// What went wrong, in the screen's language.
    pub fn error_notice(&self, error: &MachineError) -> Option<Notice> {
        match error {
            MachineError::Rejected(rejection) => {
                Notice::new(Tone::Warning, self.texts.rejection(rejection))
            }
            MachineError::Storage(problem) => Notice::new(
                Tone::Error,
                self.texts
                    .with("not-recorded", &crate::args![problem = problem.as_str()]),
            ),
            MachineError::Setup(problem) => Notice::new(
                Tone::Error,
                self.texts
                    .with("other-problem", &crate::args![problem = problem.as_str()]),
            ),
        }
    }

    pub fn view(&self) -> Element<'_, Message> {
        responsive(move |size| self.page(Layout::of(size))).into()
    }

    fn page(&self, layout: Layout) -> Element<'_, Message> {
        let body = match self.screen {
            Screen::Customer => customer::view(self, layout),
            Screen::Login => admin::login_view(self, layout),
            Screen::Admin => admin::view(self, layout).map(Message::Admin),
        };
        let page = column![customer::header(self, layout), body].spacing(layout.pick(12, 6));
        container(page)
            .padding(layout.pick(16, 8))
            .width(Fill)
            .height(Fill)
            .style(crate::style::cabinet)
            .into()
    }
}

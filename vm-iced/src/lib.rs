//! `vend-vm`: the vending-machine app.
//!
//! * [`machine`]: the machine without a screen — decide, record durably in
//!   the machine's own ledger, then apply; the background uplink.
//! * [`app`], [`customer`], [`admin`], [`shortcuts`]: the iced screens.
//! * [`config`]: the TOML file and flags.
//! * [`i18n`]: the screens' languages (Korean, English) through Fluent,
//!   won and dates; [`fonts`]: the Hangul font.
//!
//! The app never writes the fleet log: it ships its own events to the
//! primary, which decides where they go in the fleet's order.

pub mod admin;
pub mod app;
pub mod config;
pub mod customer;
pub mod fonts;
pub mod i18n;
pub mod machine;
pub mod shortcuts;
pub mod style;

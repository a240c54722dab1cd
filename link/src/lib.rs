//! The machine link: how a vending machine ships its events to the
//! replicas over TCP.
//!
//! - [`codec`]: framing, a 4-byte big-endian length then the payload
//!   (tokio-util's `LengthDelimitedCodec`, set up in one place).
//! - [`channel`]: the handshake (`Hello`, `HelloReply`), the messages each
//!   way (`Upstream`, `Downstream`) and the sealed [`channel::Channel`].
//! - [`uplink`]: the machine's side as a sans-I/O core ([`uplink::Uplink`]),
//!   driven by the tokio shell in [`driver`] and by the deterministic
//!   simulation in the `tests` crate alike.
//! - [`window`]: how many events the uplink keeps in flight, adapting to
//!   how fast the primary acknowledges ([`window::InFlightWindow`]).
//!
//! The replica's side (`replica::ingest`) uses [`codec`] and [`channel`];
//! the machine app (`vm-iced`) uses this crate and never the replica, so it
//! does not carry the replica's HTTP and raw-socket stack.
//! `docs/FORMATS.md` describes every byte, and `tests/formats.rs` pins them.

pub mod channel;
pub mod codec;
pub mod driver;
pub mod uplink;
pub mod window;

//! vendledger's domain core.
//!
//! * [`money`], [`catalog`], [`event`], [`rules`], [`state`], [`posting`],
//!   [`admin`]: the vending machine as a pure state machine —
//!   `decide(state, command)` returns events or a rejection, and
//!   `state.apply(event)` is the only way state changes.
//! * [`projection`]: inventory, cash and sales derived from the log.
//! * [`store`], [`ledger`], [`verify`]: the hash-chained, sealed RocksDB
//!   event store with group commit, segments and checkpoints.
//! * [`machine`]: [`MachineCore`], a machine's decide → sign → store →
//!   apply pipeline in two phases (`prepare`, then `commit` once stored).
//! * [`crypto`], [`keys`]: keys, sealing and chain hashes.
//!
//! Nothing here opens a socket, draws a window or serves HTTP.

pub mod admin;
pub mod catalog;
pub mod crypto;
pub mod event;
pub mod ids;
pub mod keys;
pub mod ledger;
pub mod machine;
pub mod money;
pub mod operator;
pub mod posting;
pub mod projection;
pub mod rules;
pub mod state;
pub mod store;
pub mod verify;

pub use crate::ledger::{Ledger, StreamSigner, Until};
pub use event::{Event, EventEnvelope};
pub use ids::{MachineId, SlotId};
pub use machine::{MachineCore, Prepared};
pub use money::Won;
pub use rules::{Command, Context, Rejection, decide};
pub use state::MachineState;

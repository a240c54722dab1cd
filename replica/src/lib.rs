//! `vend-replica`: machine ingest, datagram replication, gap repair,
//! election and failover.
//!
//! The protocol logic is sans-I/O — [`node`] (replication and election),
//! [`ingest`] (the primary's side of the machine link; the link's frames,
//! handshake and the machine's side are the `link` crate's) and [`wire`]
//! (the datagram format) — plus [`operators`], which turns what an
//! operator asks into log records, and [`round`] is the one executor of their
//! actions, which the tokio shell ([`server`]) and the deterministic
//! simulation in the `tests` crate both drive. [`transport`] sends
//! datagrams over raw or UDP sockets.

pub mod archiving;
pub mod config;
pub mod heap;
pub mod ingest;
pub mod node;
pub mod operators;
pub mod round;
pub mod server;
pub mod transport;
pub mod wire;

//! `vend-replica`: machine ingest, datagram replication, gap repair,
//! election and failover.
//!
//! The protocol logic is sans-I/O — [`node`] (replication and election),
//! [`ingest`] (the primary's side of the machine link), [`uplink`] (the
//! machine's side), [`wire`] and [`link`] (the byte formats) — so the
//! deterministic simulation in the `tests` crate drives exactly the code the
//! tokio shell runs. [`transport`] sends datagrams over raw or UDP sockets.

pub mod config;
pub mod ingest;
pub mod link;
pub mod node;
pub mod round;
pub mod server;
pub mod transport;
pub mod uplink;
pub mod uplink_driver;
pub mod wire;

//! `vend-replica`: machine ingest, datagram replication, gap repair,
//! election and failover. Built in the replication issue; until then this
//! crate has no code.

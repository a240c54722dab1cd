//! The process's file-descriptor limit and how a replica shares it out.
//!
//! Every connection costs a descriptor, and so does every table file
//! RocksDB keeps open. At start the replica raises its soft
//! `RLIMIT_NOFILE` to the hard limit (where the system allows), then sizes
//! its connection caps from the limit it really has, so that machine
//! connections, status connections, RocksDB's files and the rest fit
//! however low it is: when the caps are reached, connections give way or
//! are refused (see `dashboard::admission`), instead of the process
//! running out of descriptors and failing everywhere at once.

use ledger::store::rocks::OPEN_TABLE_FILES_MAX;

/// Most machine connections held at once (when descriptors allow): a
/// fleet of 10,000 machines on one primary, with room to spare.
pub const MACHINE_CONNECTIONS_MAX: usize = 12_288;
/// Most machine connections still in their handshake held at once, out of
/// `MACHINE_CONNECTIONS_MAX`: connections that have not authenticated
/// cannot take the rest, which is kept for machines.
pub const MACHINE_HANDSHAKES_MAX: usize = 256;
/// Descriptors kept for everything but connections and RocksDB's table
/// files: standard streams, the runtime's epoll and wakers, the listening
/// and UDP sockets, RocksDB's WAL, MANIFEST, LOG and lock, flush and
/// compaction outputs, key files read on a reload, and the connections
/// accepted only to be refused or whose eviction is still closing.
pub const DESCRIPTORS_RESERVED: u64 = 128;
/// The fewest connections of each kind a replica runs with, even when its
/// descriptor limit cannot really cover them (a warning says so then).
const MACHINE_CONNECTIONS_MIN: usize = 16;
const MACHINE_HANDSHAKES_MIN: usize = 4;
const HTTP_CONNECTIONS_MIN: usize = 8;

const _: () = assert!(MACHINE_CONNECTIONS_MAX <= crate::ingest::SESSIONS_MAX);
const _: () = assert!(MACHINE_HANDSHAKES_MAX <= MACHINE_CONNECTIONS_MAX);

/// The caps a replica runs with, derived from its descriptor limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionBudget {
    /// The soft `RLIMIT_NOFILE` the caps were derived from.
    pub descriptors: u64,
    pub machine_connections: usize,
    pub machine_handshakes: usize,
    pub http_connections: usize,
}

impl ConnectionBudget {
    /// Shares `descriptors` out: RocksDB's table files and the reserve
    /// first, then a quarter of the rest for the status port (up to its
    /// maximum) and what remains for machines (up to theirs), a quarter of
    /// that at most for handshakes.
    pub fn for_descriptors(descriptors: u64) -> ConnectionBudget {
        let fixed = u64::from(OPEN_TABLE_FILES_MAX) + DESCRIPTORS_RESERVED;
        let spare = usize::try_from(descriptors.saturating_sub(fixed)).unwrap_or(usize::MAX);
        let http_connections =
            (spare / 4).clamp(HTTP_CONNECTIONS_MIN, dashboard::HTTP_CONNECTIONS_MAX);
        let machine_connections = spare
            .saturating_sub(http_connections)
            .clamp(MACHINE_CONNECTIONS_MIN, MACHINE_CONNECTIONS_MAX);
        let machine_handshakes =
            (machine_connections / 4).clamp(MACHINE_HANDSHAKES_MIN, MACHINE_HANDSHAKES_MAX);
        ConnectionBudget {
            descriptors,
            machine_connections,
            machine_handshakes,
            http_connections,
        }
    }

    /// Descriptors the budget uses when every cap is reached.
    pub fn descriptors_needed(&self) -> u64 {
        u64::from(OPEN_TABLE_FILES_MAX)
            + DESCRIPTORS_RESERVED
            + (self.machine_connections + self.http_connections) as u64
    }
}

/// Raises the soft descriptor limit to the hard one where allowed, logs
/// the outcome, and returns the soft limit now in force.
pub fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!(error = %error, "cannot read the descriptor limit; assuming 1024");
        return 1_024;
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads only the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        } else {
            let error = std::io::Error::last_os_error();
            tracing::warn!(error = %error, soft = before, hard = limit.rlim_max, "cannot raise the descriptor limit");
        }
    }
    // rlim_t is u64 on the platforms replicas run on (Linux).
    let soft: u64 = limit.rlim_cur;
    tracing::info!(
        before,
        now = soft,
        hard = limit.rlim_max,
        "descriptor limit (RLIMIT_NOFILE)"
    );
    soft
}

/// Raises the limit and derives the caps from it, logging both.
pub fn budget_at_start() -> ConnectionBudget {
    let budget = ConnectionBudget::for_descriptors(raise_descriptor_limit());
    if budget.descriptors_needed() > budget.descriptors {
        tracing::warn!(
            descriptors = budget.descriptors,
            needed = budget.descriptors_needed(),
            "the descriptor limit is too low for RocksDB and the smallest connection caps; raise it"
        );
    }
    tracing::info!(
        machine_connections = budget.machine_connections,
        machine_handshakes = budget.machine_handshakes,
        http_connections = budget.http_connections,
        rocksdb_table_files = OPEN_TABLE_FILES_MAX,
        reserved = DESCRIPTORS_RESERVED,
        "connection caps"
    );
    budget
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caps_fit_the_descriptor_limit() {
        for descriptors in [1_024, 2_048, 4_096, 8_192, 65_536, 1 << 20] {
            let budget = ConnectionBudget::for_descriptors(descriptors);
            assert!(
                budget.descriptors_needed() <= descriptors,
                "{descriptors}: {budget:?}"
            );
            assert!(budget.machine_handshakes < budget.machine_connections);
        }
        let low = ConnectionBudget::for_descriptors(1_024);
        assert_eq!(
            (
                low.machine_connections,
                low.machine_handshakes,
                low.http_connections
            ),
            (288, 72, 96)
        );
        let high = ConnectionBudget::for_descriptors(1 << 20);
        assert_eq!(high.machine_connections, MACHINE_CONNECTIONS_MAX);
        assert_eq!(high.machine_handshakes, MACHINE_HANDSHAKES_MAX);
        assert_eq!(high.http_connections, dashboard::HTTP_CONNECTIONS_MAX);
    }

    #[test]
    fn a_limit_too_low_still_gives_each_port_a_few_connections() {
        let budget = ConnectionBudget::for_descriptors(256);
        assert_eq!(budget.machine_connections, MACHINE_CONNECTIONS_MIN);
        assert_eq!(budget.machine_handshakes, MACHINE_HANDSHAKES_MIN);
        assert_eq!(budget.http_connections, HTTP_CONNECTIONS_MIN);
        assert!(budget.descriptors_needed() > 256, "and the start says so");
    }
}

//! Admission of connections: how many a server holds at once, and which
//! connection gives way when that many are held. Used by the status port
//! ([`serve`](crate::serve)) and by the replica's machine port.
//!
//! Every open connection holds a [`Slot`]. A slot is *exposed* while its
//! connection has not shown it is worth keeping — an HTTP connection
//! still sending a request head or idle between requests, a machine
//! connection that has not authenticated yet — and *protected* otherwise
//! (an HTTP request being answered, an authenticated machine session).
//!
//! [`Admission::admit`] never waits. When every slot is taken, or the
//! exposed slots are at their own maximum, the oldest exposed connection is
//! evicted (its task closes it) to make room for the newcomer; only when
//! every slot is protected is the newcomer refused, and its socket closed
//! at once. So no connection queues in the kernel's accept queue behind
//! slow ones, and clients that open connections and then dawdle only ever
//! displace each other: a real client, whose request or handshake takes a
//! round trip, is admitted at once and is done long before it becomes the
//! oldest. Timeouts (the header-read timeout, the machine handshake
//! deadline) end dawdlers anyway; eviction makes the cap hold in between.
//!
//! The count drops as soon as a slot is evicted, a moment before its task
//! closes the socket: callers budget a few spare descriptors for that and
//! for the connection accepted only to be refused.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// At most one warning about a full pool (or failing accepts) per port in
/// this interval; the counts since the last warning are in the next one.
pub const LIMIT_WARNING_INTERVAL: Duration = Duration::from_secs(10);
/// After an accept fails (e.g. the process is out of descriptors), the
/// accept loop pauses this long instead of spinning on the error.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// How many connections a pool holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Connections held at once, exposed or protected.
    pub connections_max: usize,
    /// Exposed connections held at once (at most `connections_max`): a
    /// smaller number keeps room for protected ones that exposed ones can
    /// never take, e.g. for machines that authenticated.
    pub exposed_max: usize,
}

/// What a pool did, since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdmissionCounters {
    pub admitted: u64,
    /// Exposed connections closed to make room for a newcomer.
    pub evicted: u64,
    /// Newcomers closed at once because every slot was protected.
    pub refused: u64,
}

/// The connection pool of one port; cheap to clone (shared).
#[derive(Clone)]
pub struct Admission {
    pool: Arc<Mutex<Pool>>,
}

struct Pool {
    /// The port's name in log lines (`status`, `machine`).
    port: &'static str,
    limits: AdmissionLimits,
    /// Slots admitted and neither dropped nor evicted.
    held: usize,
    /// Exposed slots by ticket, so the oldest comes first.
    exposed: BTreeMap<u64, Arc<Signal>>,
    next_ticket: u64,
    counters: AdmissionCounters,
    /// Counters at the last warning, and when it was logged.
    warned: Option<(Instant, AdmissionCounters)>,
    accept_failed_at: Option<Instant>,
}

/// Shared by a slot and the pool; changed only under the pool's lock.
struct Signal {
    evicted: AtomicBool,
    /// The slot's ticket while it is exposed (0 while protected).
    ticket: AtomicU64,
    notify: Notify,
}

/// One admitted connection's place in its pool; dropping it frees the place.
pub struct Slot {
    pool: Arc<Mutex<Pool>>,
    signal: Arc<Signal>,
}

fn lock(pool: &Mutex<Pool>) -> MutexGuard<'_, Pool> {
    // Nothing in a pool's critical sections can panic half-way through an
    // update, so a poisoned lock still guards consistent counts.
    pool.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Admission {
    pub fn new(port: &'static str, limits: AdmissionLimits) -> Admission {
        assert!(limits.connections_max >= 1, "a pool holds at least one");
        assert!(
            (1..=limits.connections_max).contains(&limits.exposed_max),
            "exposed_max must be between 1 and connections_max: {limits:?}"
        );
        Admission {
            pool: Arc::new(Mutex::new(Pool {
                port,
                limits,
                held: 0,
                exposed: BTreeMap::new(),
                next_ticket: 1,
                counters: AdmissionCounters::default(),
                warned: None,
                accept_failed_at: None,
            })),
        }
    }

    pub fn limits(&self) -> AdmissionLimits {
        lock(&self.pool).limits
    }

    pub fn counters(&self) -> AdmissionCounters {
        lock(&self.pool).counters
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        lock(&self.pool).held
    }

    /// A connection was accepted: its slot, exposed, or `None` when it must
    /// be closed at once because every slot is protected. Evicts the oldest
    /// exposed connection if the pool is full.
    pub fn admit(&self) -> Option<Slot> {
        let mut pool = lock(&self.pool);
        let full = pool.held >= pool.limits.connections_max;
        if full || pool.exposed.len() >= pool.limits.exposed_max {
            if !pool.evict_oldest() {
                assert!(full, "exposed slots at their maximum, yet none exposed");
                pool.counters.refused += 1;
                pool.warn_full();
                return None;
            }
            pool.warn_full();
        }
        pool.held += 1;
        pool.counters.admitted += 1;
        let signal = Arc::new(Signal {
            evicted: AtomicBool::new(false),
            ticket: AtomicU64::new(0),
            notify: Notify::new(),
        });
        pool.expose(&signal);
        debug_assert!(pool.held <= pool.limits.connections_max);
        debug_assert!(pool.exposed.len() <= pool.limits.exposed_max);
        Some(Slot {
            pool: self.pool.clone(),
            signal,
        })
    }

    /// Logs a failed accept (at most once per [`LIMIT_WARNING_INTERVAL`])
    /// and pauses the accept loop briefly, so running out of descriptors
    /// neither spins a core nor floods the log.
    pub async fn accept_failed(&self, error: &std::io::Error) {
        {
            let mut pool = lock(&self.pool);
            let due = pool
                .accept_failed_at
                .is_none_or(|at| at.elapsed() >= LIMIT_WARNING_INTERVAL);
            if due {
                pool.accept_failed_at = Some(Instant::now());
                tracing::warn!(port = pool.port, error = %error, held = pool.held, "accepting a connection failed");
            }
        }
        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
    }
}

impl Pool {
    /// Evicts the oldest exposed slot; `false` if none is exposed.
    fn evict_oldest(&mut self) -> bool {
        let Some((_, signal)) = self.exposed.pop_first() else {
            return false;
        };
        signal.ticket.store(0, Ordering::Relaxed);
        signal.evicted.store(true, Ordering::Relaxed);
        // Stores a permit if the connection's task is not waiting yet.
        signal.notify.notify_one();
        self.held -= 1;
        self.counters.evicted += 1;
        true
    }

    fn expose(&mut self, signal: &Arc<Signal>) {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        signal.ticket.store(ticket, Ordering::Relaxed);
        self.exposed.insert(ticket, signal.clone());
    }

    fn warn_full(&mut self) {
        let now = Instant::now();
        let (due, before) = match self.warned {
            None => (true, AdmissionCounters::default()),
            Some((at, before)) => (now.duration_since(at) >= LIMIT_WARNING_INTERVAL, before),
        };
        if !due {
            return;
        }
        tracing::warn!(
            port = self.port,
            connections_max = self.limits.connections_max,
            exposed_max = self.limits.exposed_max,
            evicted = self.counters.evicted - before.evicted,
            refused = self.counters.refused - before.refused,
            "connections at their limit: the oldest idle or unauthenticated ones give way to new ones"
        );
        self.warned = Some((now, self.counters));
    }
}

impl Slot {
    /// The connection proved itself: it is no longer evicted for newcomers.
    /// `false` if it was evicted already (its task is about to close it).
    pub fn protect(&self) -> bool {
        let mut pool = lock(&self.pool);
        if self.signal.evicted.load(Ordering::Relaxed) {
            return false;
        }
        let ticket = self.signal.ticket.swap(0, Ordering::Relaxed);
        if ticket != 0 {
            pool.exposed.remove(&ticket);
        }
        true
    }

    /// The connection is idle again (an HTTP connection between requests):
    /// it may be evicted, as the newest exposed one. If exposed slots are at
    /// their maximum, the oldest of them gives way.
    pub fn expose(&self) {
        let mut pool = lock(&self.pool);
        if self.signal.evicted.load(Ordering::Relaxed)
            || self.signal.ticket.load(Ordering::Relaxed) != 0
        {
            return;
        }
        if pool.exposed.len() >= pool.limits.exposed_max {
            pool.evict_oldest();
            pool.warn_full();
        }
        pool.expose(&self.signal);
    }

    pub fn is_evicted(&self) -> bool {
        self.signal.evicted.load(Ordering::Relaxed)
    }

    /// Completes once the slot is evicted; the connection must then be
    /// closed. Cancel-safe: an eviction is never missed between calls.
    pub async fn evicted(&self) {
        if self.is_evicted() {
            return;
        }
        self.signal.notify.notified().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut pool = lock(&self.pool);
        if self.signal.evicted.load(Ordering::Relaxed) {
            return; // Its place was given away when it was evicted.
        }
        let ticket = self.signal.ticket.swap(0, Ordering::Relaxed);
        if ticket != 0 {
            pool.exposed.remove(&ticket);
        }
        pool.held -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(connections_max: usize, exposed_max: usize) -> Admission {
        Admission::new(
            "test",
            AdmissionLimits {
                connections_max,
                exposed_max,
            },
        )
    }

    #[test]
    fn a_full_pool_evicts_its_oldest_exposed_connection() {
        let admission = pool(3, 3);
        let first = admission.admit().unwrap();
        let second = admission.admit().unwrap();
        let third = admission.admit().unwrap();
        assert!(second.protect());
        let fourth = admission.admit().unwrap();
        assert!(first.is_evicted(), "the oldest exposed one gives way");
        assert!(!second.is_evicted() && !third.is_evicted() && !fourth.is_evicted());
        assert_eq!(admission.held(), 3);
        // An evicted slot's drop frees nothing more.
        drop(first);
        assert_eq!(admission.held(), 3);
        drop(third);
        assert_eq!(admission.held(), 2);
        assert_eq!(
            admission.counters(),
            AdmissionCounters {
                admitted: 4,
                evicted: 1,
                refused: 0
            }
        );
        drop((second, fourth));
        assert_eq!(admission.held(), 0);
    }

    #[test]
    fn only_when_every_slot_is_protected_is_a_newcomer_refused() {
        let admission = pool(2, 2);
        let slots: Vec<Slot> = (0..2).map(|_| admission.admit().unwrap()).collect();
        assert!(slots.iter().all(Slot::protect));
        assert!(admission.admit().is_none());
        assert_eq!(admission.counters().refused, 1);
        // Exposed again (an HTTP connection between requests): evictable.
        slots[1].expose();
        let newcomer = admission.admit().unwrap();
        assert!(slots[1].is_evicted() && !slots[0].is_evicted());
        assert!(!slots[1].protect(), "an evicted slot stays evicted");
        drop(newcomer);
    }

    #[test]
    fn exposed_connections_cannot_take_the_places_kept_for_protected_ones() {
        // Machines: 8 places, at most 2 for connections still in their
        // handshake.
        let admission = pool(8, 2);
        let machines: Vec<Slot> = (0..3)
            .map(|_| {
                let slot = admission.admit().unwrap();
                assert!(slot.protect());
                slot
            })
            .collect();
        let strangers: Vec<Slot> = (0..100).filter_map(|_| admission.admit()).collect();
        assert_eq!(strangers.len(), 100, "strangers displace each other");
        assert_eq!(
            strangers.iter().filter(|s| !s.is_evicted()).count(),
            2,
            "only the newest two strangers are held"
        );
        assert_eq!(admission.held(), 5);
        let machine = admission.admit().unwrap();
        assert!(machine.protect());
        assert!(machines.iter().all(|m| !m.is_evicted()));
        assert_eq!(admission.held(), 5, "a stranger gave way to the machine");
    }

    #[tokio::test]
    async fn eviction_wakes_the_connection_even_if_it_was_not_waiting_yet() {
        let admission = pool(1, 1);
        let first = admission.admit().unwrap();
        let _second = admission.admit().unwrap();
        tokio::time::timeout(Duration::from_secs(1), first.evicted())
            .await
            .expect("evicted() completes");
    }
}

//! What protects the login form: a rate limit per client address, a
//! lockout per account after repeated failures, and the sessions revoked by
//! logging out on this replica. Every map is bounded. Pure: the caller
//! passes the time.

use std::collections::HashMap;
use std::net::IpAddr;

/// Login attempts a client address may make in a burst...
pub const LOGIN_BURST: u32 = 10;
/// ...after which it gets one more attempt per this interval.
pub const LOGIN_REFILL_MS: i64 = 6_000;
/// Client addresses and accounts remembered at most (each map).
pub const GUARD_ENTRIES_MAX: usize = 4_096;
/// Revoked sessions remembered at most (each until it would have expired).
pub const REVOKED_SESSIONS_MAX: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bucket {
    tokens: u32,
    refilled_ms: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Failures {
    count: u32,
    last_ms: i64,
    locked_until_ms: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("too many login attempts from your address; try again in a minute")]
    RateLimited,
    #[error("this account is locked after repeated failed logins; try again in {0} s")]
    Locked(i64),
}

#[derive(Default)]
pub struct LoginGuard {
    clients: HashMap<IpAddr, Bucket>,
    accounts: HashMap<String, Failures>,
    revoked: HashMap<String, i64>,
}

impl LoginGuard {
    /// May `client` try to log in to `account` now? Takes one attempt from
    /// the client's allowance.
    pub fn admit(&mut self, client: IpAddr, account: &str, now_ms: i64) -> Result<(), Refusal> {
        if let Some(failures) = self.accounts.get(account)
            && let Some(until) = failures.locked_until_ms
            && now_ms < until
        {
            return Err(Refusal::Locked((until - now_ms + 999) / 1_000));
        }
        if !self.clients.contains_key(&client) && self.clients.len() >= GUARD_ENTRIES_MAX {
            // Forget the client that has been quiet the longest (its bucket
            // is the fullest by now).
            if let Some(oldest) = self
                .clients
                .iter()
                .min_by_key(|(_, b)| b.refilled_ms)
                .map(|(ip, _)| *ip)
            {
                self.clients.remove(&oldest);
            }
        }
        let bucket = self.clients.entry(client).or_insert(Bucket {
            tokens: LOGIN_BURST,
            refilled_ms: now_ms,
        });
        let earned = (now_ms - bucket.refilled_ms).max(0) / LOGIN_REFILL_MS;
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            bucket.tokens = bucket.tokens.saturating_add(earned).min(LOGIN_BURST);
            bucket.refilled_ms = now_ms;
        }
        if bucket.tokens == 0 {
            return Err(Refusal::RateLimited);
        }
        bucket.tokens -= 1;
        Ok(())
    }

    /// A failed login for `account`: the fifth in a row locks it.
    pub fn failed(&mut self, account: &str, now_ms: i64) {
        if !self.accounts.contains_key(account) && self.accounts.len() >= GUARD_ENTRIES_MAX {
            let now = now_ms;
            // Forget unlocked accounts first, the oldest failure first.
            if let Some(oldest) = self
                .accounts
                .iter()
                .min_by_key(|(_, f)| (f.locked_until_ms.is_some_and(|u| u > now), f.last_ms))
                .map(|(name, _)| name.clone())
            {
                self.accounts.remove(&oldest);
            }
        }
        let failures = self.accounts.entry(account.to_owned()).or_default();
        if failures
            .locked_until_ms
            .is_some_and(|until| now_ms >= until)
        {
            *failures = Failures::default();
        }
        failures.count += 1;
        failures.last_ms = now_ms;
        if failures.count >= ledger::admin::LOGIN_FAILURES_MAX {
            failures.locked_until_ms = Some(now_ms + ledger::admin::LOCKOUT_MS);
        }
    }

    /// A successful login clears the account's failures.
    pub fn succeeded(&mut self, account: &str) {
        self.accounts.remove(account);
    }

    /// Logging out revokes the session on this replica until it would have
    /// expired anyway.
    pub fn revoke(&mut self, session_id: &str, expires_s: i64, now_s: i64) {
        if self.revoked.len() >= REVOKED_SESSIONS_MAX {
            self.revoked.retain(|_, expires| *expires > now_s);
        }
        if self.revoked.len() >= REVOKED_SESSIONS_MAX
            && let Some(soonest) = self
                .revoked
                .iter()
                .min_by_key(|(_, expires)| **expires)
                .map(|(id, _)| id.clone())
        {
            self.revoked.remove(&soonest);
        }
        self.revoked.insert(session_id.to_owned(), expires_s);
    }

    pub fn is_revoked(&self, session_id: &str) -> bool {
        self.revoked.contains_key(session_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn five_failures_lock_the_account_for_five_minutes() {
        let mut guard = LoginGuard::default();
        for attempt in 0..5 {
            guard.admit(CLIENT, "kim", attempt).unwrap();
            guard.failed("kim", attempt);
        }
        assert_eq!(guard.admit(CLIENT, "kim", 10), Err(Refusal::Locked(300)));
        // Other accounts are not locked by it.
        assert!(guard.admit(CLIENT, "lee", 10).is_ok());
        assert!(guard.admit(CLIENT, "kim", 4 + 300_000).is_ok());
        // After the lock, one failure does not lock again at once.
        guard.failed("kim", 4 + 300_000);
        assert!(guard.admit(CLIENT, "kim", 5 + 300_000).is_ok());
    }

    #[test]
    fn a_success_clears_the_failures() {
        let mut guard = LoginGuard::default();
        for attempt in 0..4 {
            guard.failed("kim", attempt);
        }
        guard.succeeded("kim");
        guard.failed("kim", 10);
        assert!(guard.admit(CLIENT, "kim", 11).is_ok());
    }

    #[test]
    fn a_client_is_rate_limited_across_accounts() {
        let mut guard = LoginGuard::default();
        for n in 0..LOGIN_BURST {
            guard.admit(CLIENT, &format!("user{n}"), 0).unwrap();
        }
        assert_eq!(guard.admit(CLIENT, "x", 0), Err(Refusal::RateLimited));
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(guard.admit(other, "x", 0).is_ok());
        assert!(guard.admit(CLIENT, "x", LOGIN_REFILL_MS).is_ok());
        assert_eq!(
            guard.admit(CLIENT, "x", LOGIN_REFILL_MS),
            Err(Refusal::RateLimited)
        );
    }

    #[test]
    fn maps_stay_bounded() {
        let mut guard = LoginGuard::default();
        for n in 0..(GUARD_ENTRIES_MAX as u32 + 10) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(n));
            let _ = guard.admit(ip, "a", i64::from(n));
            guard.failed(&format!("user{n}"), i64::from(n));
        }
        assert!(guard.clients.len() <= GUARD_ENTRIES_MAX);
        assert!(guard.accounts.len() <= GUARD_ENTRIES_MAX);
        for n in 0..(REVOKED_SESSIONS_MAX + 10) {
            guard.revoke(&format!("s{n}"), 100 + n as i64, 0);
        }
        assert!(guard.revoked.len() <= REVOKED_SESSIONS_MAX);
        assert!(guard.is_revoked(&format!("s{}", REVOKED_SESSIONS_MAX + 9)));
    }
}

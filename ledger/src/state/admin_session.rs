//! The admin session at the machine: logins, failures and lockout, logout
//! and the password. Each function checks its event completely, posts it
//! (admin events move no money), then changes the state (see
//! [`MachineState::apply_event`]).

use super::{ApplyError, MachineState, PendingPostings};
use crate::admin;

impl MachineState {
    /// A successful login clears the failure count and any lockout.
    pub(super) fn apply_login(&mut self, pending: PendingPostings) -> Result<(), ApplyError> {
        pending.post(&mut self.balances)?;
        self.admin.logged_in = true;
        self.admin.failures = 0;
        self.admin.locked_until_ms = None;
        Ok(())
    }

    /// Failures are counted one by one up to the lockout limit, so the
    /// count in the event must be the next one.
    pub(super) fn apply_login_failure(
        &mut self,
        failures: u32,
        pending: PendingPostings,
    ) -> Result<(), ApplyError> {
        if failures != self.admin.failures + 1 || failures > admin::LOGIN_FAILURES_MAX {
            return Err(ApplyError::Admin("failure count out of step"));
        }
        pending.post(&mut self.balances)?;
        self.admin.failures = failures;
        Ok(())
    }

    /// A lockout follows exactly the last allowed failure and starts the
    /// count afresh.
    pub(super) fn apply_lockout(
        &mut self,
        until_ms: i64,
        pending: PendingPostings,
    ) -> Result<(), ApplyError> {
        if self.admin.failures != admin::LOGIN_FAILURES_MAX {
            return Err(ApplyError::Admin("lockout before the failure limit"));
        }
        pending.post(&mut self.balances)?;
        self.admin.locked_until_ms = Some(until_ms);
        self.admin.failures = 0;
        self.admin.logged_in = false;
        Ok(())
    }

    pub(super) fn apply_logout(&mut self, pending: PendingPostings) -> Result<(), ApplyError> {
        pending.post(&mut self.balances)?;
        self.admin.logged_in = false;
        Ok(())
    }

    /// Only an argon2id hash is ever stored, never a password.
    pub(super) fn apply_password_change(
        &mut self,
        password_hash: &str,
        pending: PendingPostings,
    ) -> Result<(), ApplyError> {
        admin::validate_hash(password_hash)
            .map_err(|_| ApplyError::Admin("password hash is not valid argon2id"))?;
        pending.post(&mut self.balances)?;
        self.admin.password_hash = password_hash.to_owned();
        Ok(())
    }
}

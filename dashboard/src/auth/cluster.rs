//! Requests from `vendctl user ...`, authenticated by the cluster key.
//!
//! The command line holds the cluster's key directory, not an operator
//! account, so its requests are sealed (XChaCha20-Poly1305) with a key
//! derived from the cluster key ([`ADMIN_KEY_CONTEXT`]): the method, path
//! and timestamp are the associated data, the JSON request the sealed
//! plaintext. So the body (a password hash) is also secret on plain HTTP.
//! A replica refuses stale timestamps and remembers the nonces it opened
//! (bounded) so a captured request cannot be replayed.

use ledger::crypto::{NONCE_BYTES, Sealer, SecretKey};
use ledger::operator::OperatorRole;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// `blake3::derive_key` context for the admin request key.
pub const ADMIN_KEY_CONTEXT: &str = "vendledger dashboard admin requests v1";
/// Where the command line sends its requests.
pub const ADMIN_PATH: &str = "/api/v1/admin/operators";
/// The header carrying the request's time (ms since the Unix epoch).
pub const TIME_HEADER: &str = "x-vendledger-time";
/// A request older or newer than this (clock skew) is refused.
pub const ADMIN_WINDOW_MS: i64 = 60_000;
/// Nonces remembered at most; each for twice the window.
pub const ADMIN_NONCES_MAX: usize = 4_096;
/// Largest sealed request accepted.
pub const ADMIN_BODY_BYTES_MAX: usize = 4_096;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum AdminRequest {
    AddUser {
        name: String,
        role: OperatorRole,
        password_hash: String,
    },
    DisableUser {
        name: String,
    },
    ListUsers,
}

/// One account as `vendctl user list` prints it (never the hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserLine {
    pub name: String,
    pub role: OperatorRole,
    pub disabled: bool,
    pub added_by: String,
    pub added_at_ms: i64,
}

/// A replica's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminReply {
    pub ok: bool,
    pub message: String,
    /// The log entry that records the change.
    pub gseq: Option<u64>,
    pub users: Vec<UserLine>,
    /// On a follower: the primary's name, and its dashboard when known.
    pub primary: Option<String>,
    pub primary_dashboard: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdminAuthError {
    #[error("the request has no valid time header")]
    NoTime,
    #[error("the request's time is more than a minute off this replica's clock")]
    Stale,
    #[error("the request is not sealed with this cluster's key")]
    NotAuthentic,
    #[error("the request was seen before")]
    Replayed,
    #[error("too many recent admin requests; try again in a minute")]
    Busy,
    #[error("the request is not valid JSON: {0}")]
    Malformed(String),
}

fn associated_data(method: &str, path: &str, at_ms: i64) -> Vec<u8> {
    format!("vendledger admin v1\n{method}\n{path}\n{at_ms}").into_bytes()
}

/// The key both sides derive from the cluster key.
pub fn admin_key(cluster_key: &SecretKey) -> SecretKey {
    cluster_key.derive(ADMIN_KEY_CONTEXT)
}

/// Seals a request (the command line's side): the body to POST to
/// [`ADMIN_PATH`] with [`TIME_HEADER`] set to `at_ms`.
pub fn seal_request(key: &SecretKey, request: &AdminRequest, at_ms: i64) -> Vec<u8> {
    let json = serde_json::to_vec(request).expect("requests always serialise");
    Sealer::new(key).seal(&associated_data("POST", ADMIN_PATH, at_ms), &json)
}

/// Opens requests (the replica's side) and remembers their nonces.
pub struct AdminOpener {
    sealer: Sealer,
    seen: HashMap<[u8; NONCE_BYTES], i64>,
}

impl AdminOpener {
    pub fn new(key: &SecretKey) -> AdminOpener {
        AdminOpener {
            sealer: Sealer::new(key),
            seen: HashMap::new(),
        }
    }

    pub fn open(
        &mut self,
        time_header: Option<&str>,
        body: &[u8],
        now_ms: i64,
    ) -> Result<AdminRequest, AdminAuthError> {
        let at_ms: i64 = time_header
            .and_then(|t| t.trim().parse().ok())
            .ok_or(AdminAuthError::NoTime)?;
        if (now_ms - at_ms).abs() > ADMIN_WINDOW_MS {
            return Err(AdminAuthError::Stale);
        }
        let plaintext = self
            .sealer
            .open(&associated_data("POST", ADMIN_PATH, at_ms), body)
            .map_err(|_| AdminAuthError::NotAuthentic)?;
        let nonce: [u8; NONCE_BYTES] = body[..NONCE_BYTES]
            .try_into()
            .map_err(|_| AdminAuthError::NotAuthentic)?;
        self.seen
            .retain(|_, seen_ms| now_ms - *seen_ms <= 2 * ADMIN_WINDOW_MS);
        if self.seen.contains_key(&nonce) {
            return Err(AdminAuthError::Replayed);
        }
        if self.seen.len() >= ADMIN_NONCES_MAX {
            return Err(AdminAuthError::Busy);
        }
        self.seen.insert(nonce, now_ms);
        serde_json::from_slice(&plaintext).map_err(|e| AdminAuthError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        admin_key(&SecretKey::from_bytes([3; 32]))
    }

    #[test]
    fn a_sealed_request_opens_once() {
        let mut opener = AdminOpener::new(&key());
        let request = AdminRequest::DisableUser { name: "kim".into() };
        let body = seal_request(&key(), &request, 1_000_000);
        assert_eq!(opener.open(Some("1000000"), &body, 1_000_500), Ok(request));
        assert_eq!(
            opener.open(Some("1000000"), &body, 1_000_600),
            Err(AdminAuthError::Replayed)
        );
    }

    #[test]
    fn forged_stale_and_moved_requests_are_refused() {
        let mut opener = AdminOpener::new(&key());
        let body = seal_request(&key(), &AdminRequest::ListUsers, 1_000_000);
        assert_eq!(
            opener.open(Some("1000000"), &body, 1_000_000 + ADMIN_WINDOW_MS + 1),
            Err(AdminAuthError::Stale)
        );
        assert_eq!(
            opener.open(None, &body, 1_000_000),
            Err(AdminAuthError::NoTime)
        );
        // The time is bound: a request re-dated within the window fails.
        assert_eq!(
            opener.open(Some("1000001"), &body, 1_000_000),
            Err(AdminAuthError::NotAuthentic)
        );
        let other = admin_key(&SecretKey::from_bytes([4; 32]));
        let foreign = seal_request(&other, &AdminRequest::ListUsers, 1_000_000);
        assert_eq!(
            opener.open(Some("1000000"), &foreign, 1_000_000),
            Err(AdminAuthError::NotAuthentic)
        );
        assert_eq!(
            opener.open(Some("1000000"), b"short", 1_000_000),
            Err(AdminAuthError::NotAuthentic)
        );
    }
}

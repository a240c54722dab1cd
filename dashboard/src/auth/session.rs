//! Session tokens that every replica can check on its own.
//!
//! A browser that logged in on the primary's dashboard must keep working on
//! a follower's after a failover (cookies ignore the port), so a session is
//! not a row in one replica's memory: the cookie carries it, authenticated
//! with a key every replica derives from the cluster key
//! ([`SESSION_KEY_CONTEXT`]). The token names the account, a random session
//! id, when it was issued and when it was last refreshed; its MAC also
//! covers a fingerprint of the account's password hash, so a changed
//! password ends every session of the account. The account is looked up
//! again on every request (a disabled account's sessions are dead at once).
//!
//! Pure: the caller passes the time and the account's hash.

use rand::RngCore;

/// `blake3::derive_key` context for the session key (from the cluster key).
pub const SESSION_KEY_CONTEXT: &str = "vendledger dashboard sessions v1";
/// A session ends this long after login, however active.
pub const SESSION_ABSOLUTE_S: i64 = 12 * 3_600;
/// A session unused this long ends.
pub const SESSION_IDLE_S: i64 = 30 * 60;
/// A session's `seen` time is refreshed (a new cookie) at most this often.
pub const SESSION_REFRESH_S: i64 = 60;
/// Longest session cookie accepted (anything longer is not ours).
pub const TOKEN_BYTES_MAX: usize = 256;

const TOKEN_VERSION: &str = "v1";

/// A session as its token carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    /// 16 random bytes, hex: names the session (CSRF, revocation).
    pub id: String,
    pub issued_s: i64,
    pub seen_s: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("not a session token")]
    Malformed,
    #[error("the session token is not authentic")]
    Forged,
    #[error("the session has expired")]
    Expired,
}

/// Signs and checks sessions and their CSRF tokens.
#[derive(Clone)]
pub struct SessionKeys {
    mac_key: [u8; 32],
    csrf_key: [u8; 32],
    login_key: [u8; 32],
}

impl SessionKeys {
    /// From the session key every replica derives alike.
    pub fn new(session_key: &[u8; 32]) -> SessionKeys {
        SessionKeys {
            mac_key: blake3::derive_key("vendledger dashboard session mac v1", session_key),
            csrf_key: blake3::derive_key("vendledger dashboard csrf v1", session_key),
            login_key: blake3::derive_key("vendledger dashboard login form v1", session_key),
        }
    }

    /// A new session for `user`, whose account has `password_hash`.
    pub fn issue(&self, user: &str, password_hash: &str, now_s: i64) -> (Session, String) {
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        let session = Session {
            user: user.to_owned(),
            id: hex::encode(id),
            issued_s: now_s,
            seen_s: now_s,
        };
        let token = self.token(&session, password_hash);
        (session, token)
    }

    /// The token of `session` (also to refresh its `seen` time).
    pub fn token(&self, session: &Session, password_hash: &str) -> String {
        let body = format!(
            "{TOKEN_VERSION}.{}.{}.{}.{}",
            hex::encode(session.user.as_bytes()),
            session.id,
            session.issued_s,
            session.seen_s
        );
        let mac = self.mac(&body, password_hash);
        format!("{body}.{mac}")
    }

    /// The account a token names, without checking it (the caller looks the
    /// account up, then calls [`check`](Self::check) with its hash).
    pub fn user_of(token: &str) -> Result<String, SessionError> {
        let parts = split(token)?;
        let bytes = hex::decode(parts[1]).map_err(|_| SessionError::Malformed)?;
        String::from_utf8(bytes).map_err(|_| SessionError::Malformed)
    }

    /// Checks a token against the account's password hash and the clock.
    pub fn check(
        &self,
        token: &str,
        password_hash: &str,
        now_s: i64,
    ) -> Result<Session, SessionError> {
        let parts = split(token)?;
        let body_len = token.len() - parts[5].len() - 1;
        let expected = self.mac(&token[..body_len], password_hash);
        // blake3's Hash compares in constant time.
        let given = blake3::Hash::from_hex(parts[5]).map_err(|_| SessionError::Forged)?;
        let wanted = blake3::Hash::from_hex(&expected).map_err(|_| SessionError::Forged)?;
        if given != wanted {
            return Err(SessionError::Forged);
        }
        let number = |text: &str| text.parse::<i64>().map_err(|_| SessionError::Malformed);
        let session = Session {
            user: Self::user_of(token)?,
            id: parts[2].to_owned(),
            issued_s: number(parts[3])?,
            seen_s: number(parts[4])?,
        };
        let fresh = now_s < session.issued_s.saturating_add(SESSION_ABSOLUTE_S)
            && now_s < session.seen_s.saturating_add(SESSION_IDLE_S)
            && session.issued_s <= session.seen_s;
        if !fresh {
            return Err(SessionError::Expired);
        }
        Ok(session)
    }

    /// The session's CSRF token: bound to it, the same on every replica.
    pub fn csrf(&self, session_id: &str) -> String {
        keyed(&self.csrf_key, session_id.as_bytes())[..32].to_owned()
    }

    /// Whether `given` is `session_id`'s CSRF token (constant time).
    pub fn csrf_matches(&self, session_id: &str, given: &str) -> bool {
        constant_time_eq(self.csrf(session_id).as_bytes(), given.as_bytes())
    }

    /// The login form's CSRF token for the random nonce in its cookie.
    pub fn login_csrf(&self, nonce: &str) -> String {
        keyed(&self.login_key, nonce.as_bytes())[..32].to_owned()
    }

    pub fn login_csrf_matches(&self, nonce: &str, given: &str) -> bool {
        !nonce.is_empty() && constant_time_eq(self.login_csrf(nonce).as_bytes(), given.as_bytes())
    }

    fn mac(&self, body: &str, password_hash: &str) -> String {
        let mut hasher = blake3::Hasher::new_keyed(&self.mac_key);
        hasher.update(body.as_bytes());
        hasher.update(b"\0");
        hasher.update(blake3::hash(password_hash.as_bytes()).as_bytes());
        hasher.finalize().to_hex().to_string()
    }
}

/// Whether a session should be given a new cookie with `seen` moved on.
pub fn needs_refresh(session: &Session, now_s: i64) -> bool {
    now_s >= session.seen_s.saturating_add(SESSION_REFRESH_S)
}

/// A random nonce for the login form's cookie.
pub fn login_nonce() -> String {
    let mut nonce = [0u8; 16];
    rand::rng().fill_bytes(&mut nonce);
    hex::encode(nonce)
}

fn keyed(key: &[u8; 32], data: &[u8]) -> String {
    blake3::keyed_hash(key, data).to_hex().to_string()
}

fn split(token: &str) -> Result<[&str; 6], SessionError> {
    if token.len() > TOKEN_BYTES_MAX {
        return Err(SessionError::Malformed);
    }
    let parts: Vec<&str> = token.split('.').collect();
    let parts: [&str; 6] = parts.try_into().map_err(|_| SessionError::Malformed)?;
    if parts[0] != TOKEN_VERSION || parts[2].len() != 32 {
        return Err(SessionError::Malformed);
    }
    Ok(parts)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaA";

    #[test]
    fn a_session_checks_on_any_replica_with_the_same_key() {
        let primary = SessionKeys::new(&[7; 32]);
        let follower = SessionKeys::new(&[7; 32]);
        let (session, token) = primary.issue("kim", HASH, 1_000);
        assert_eq!(SessionKeys::user_of(&token).unwrap(), "kim");
        assert_eq!(follower.check(&token, HASH, 1_010).unwrap(), session);
        assert!(follower.csrf_matches(&session.id, &primary.csrf(&session.id)));
        assert!(!follower.csrf_matches(&session.id, "0000"));
        let other_cluster = SessionKeys::new(&[8; 32]);
        assert_eq!(
            other_cluster.check(&token, HASH, 1_010),
            Err(SessionError::Forged)
        );
    }

    #[test]
    fn forged_changed_and_expired_tokens_are_refused() {
        let keys = SessionKeys::new(&[1; 32]);
        let (session, token) = keys.issue("kim", HASH, 1_000);
        // Another name with the same MAC.
        let forged = token.replacen(&hex::encode("kim"), &hex::encode("lee"), 1);
        assert_eq!(keys.check(&forged, HASH, 1_001), Err(SessionError::Forged));
        // A later `seen` time without the key.
        let stretched = token.replacen(".1000.1000.", ".1000.9000.", 1);
        assert_eq!(
            keys.check(&stretched, HASH, 1_001),
            Err(SessionError::Forged)
        );
        // The password changed: every session of the account ends.
        assert_eq!(
            keys.check(&token, "$argon2id$other", 1_001),
            Err(SessionError::Forged)
        );
        assert_eq!(
            keys.check(&token, HASH, 1_000 + SESSION_IDLE_S),
            Err(SessionError::Expired)
        );
        // Refreshed, it lives on until the absolute limit.
        let mut refreshed = session.clone();
        refreshed.seen_s = 1_000 + SESSION_ABSOLUTE_S - 10;
        let token = keys.token(&refreshed, HASH);
        assert!(
            keys.check(&token, HASH, 1_000 + SESSION_ABSOLUTE_S - 5)
                .is_ok()
        );
        assert_eq!(
            keys.check(&token, HASH, 1_000 + SESSION_ABSOLUTE_S),
            Err(SessionError::Expired)
        );
        assert_eq!(keys.check("junk", HASH, 0), Err(SessionError::Malformed));
        assert_eq!(
            keys.check(&"x".repeat(1_000), HASH, 0),
            Err(SessionError::Malformed)
        );
    }

    #[test]
    fn login_form_tokens_are_bound_to_their_cookie() {
        let keys = SessionKeys::new(&[1; 32]);
        let nonce = login_nonce();
        let token = keys.login_csrf(&nonce);
        assert!(keys.login_csrf_matches(&nonce, &token));
        assert!(!keys.login_csrf_matches(&login_nonce(), &token));
        assert!(!keys.login_csrf_matches("", &keys.login_csrf("")));
    }

    #[test]
    fn refresh_is_due_after_a_minute() {
        let keys = SessionKeys::new(&[1; 32]);
        let (session, _) = keys.issue("kim", HASH, 1_000);
        assert!(!needs_refresh(&session, 1_059));
        assert!(needs_refresh(&session, 1_060));
    }
}

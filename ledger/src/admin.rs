//! Admin passwords: argon2id hashes, the password policy and the lockout
//! constants.

use argon2::password_hash::{PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};

/// Shortest password accepted.
pub const PASSWORD_CHARS_MIN: usize = 8;
/// Longest password accepted (argon2 hashes anything, but a bound keeps a
/// hostile input from costing memory).
pub const PASSWORD_BYTES_MAX: usize = 256;
/// Failed logins in a row that lock the admin screen.
pub const LOGIN_FAILURES_MAX: u32 = 5;
/// How long the admin screen stays locked.
pub const LOCKOUT_MS: i64 = 5 * 60 * 1_000;
/// Largest argon2 memory cost accepted in a stored hash, so a hash from a
/// log cannot make verification allocate without bound.
pub const HASH_MEMORY_KIB_MAX: u32 = 256 * 1024;

/// One rule of the admin password policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordRule {
    /// At least `PASSWORD_CHARS_MIN` characters.
    MinLength,
    /// At most `PASSWORD_BYTES_MAX` bytes.
    MaxLength,
    /// At least one digit.
    Digit,
    /// At least one special character (not a letter, digit or space).
    Special,
}

impl PasswordRule {
    /// Every rule, in the order the policy states them.
    pub const ALL: [PasswordRule; 4] = [
        PasswordRule::MinLength,
        PasswordRule::Digit,
        PasswordRule::Special,
        PasswordRule::MaxLength,
    ];

    pub fn describe(self) -> String {
        match self {
            PasswordRule::MinLength => format!("at least {PASSWORD_CHARS_MIN} characters"),
            PasswordRule::MaxLength => format!("at most {PASSWORD_BYTES_MAX} bytes"),
            PasswordRule::Digit => "a digit".to_owned(),
            PasswordRule::Special => "a special character (not a letter or digit)".to_owned(),
        }
    }
}

/// A password that breaks the policy, with every rule it breaks (not just
/// the first), so a person fixes it in one go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the password needs at least {PASSWORD_CHARS_MIN} characters with a digit and a special \
     character (not a letter or digit); this one lacks {}",
    list(.broken)
)]
pub struct PolicyViolation {
    /// The rules broken, in [`PasswordRule::ALL`] order; never empty.
    pub broken: Vec<PasswordRule>,
}

fn list(rules: &[PasswordRule]) -> String {
    let described: Vec<String> = rules.iter().map(|r| r.describe()).collect();
    match described.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// The admin password policy: at least 8 characters with at least one digit
/// and one special character (and a bound on the length).
pub fn check_policy(password: &str) -> Result<(), PolicyViolation> {
    let broken: Vec<PasswordRule> = PasswordRule::ALL
        .into_iter()
        .filter(|rule| !keeps(password, *rule))
        .collect();
    if broken.is_empty() {
        Ok(())
    } else {
        Err(PolicyViolation { broken })
    }
}

fn keeps(password: &str, rule: PasswordRule) -> bool {
    match rule {
        PasswordRule::MinLength => password.chars().count() >= PASSWORD_CHARS_MIN,
        PasswordRule::MaxLength => password.len() <= PASSWORD_BYTES_MAX,
        PasswordRule::Digit => password.chars().any(|c| c.is_ascii_digit()),
        PasswordRule::Special => password
            .chars()
            .any(|c| !c.is_alphanumeric() && !c.is_whitespace()),
    }
}

/// argon2id cost settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordParams {
    /// argon2's recommended defaults (19 MiB, 2 passes): real machines.
    Standard,
    /// 64 KiB, 1 pass: simulated fleets and tests, where thousands of logins
    /// must not take minutes. Never used for a real machine's password.
    Light,
}

impl PasswordParams {
    fn argon2(self) -> Argon2<'static> {
        let params = match self {
            PasswordParams::Standard => Params::default(),
            PasswordParams::Light => Params::new(64, 1, 1, None).expect("valid constant params"),
        };
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("not a valid argon2id password hash: {0}")]
    Invalid(String),
}

/// Hashes a password with argon2id and the given 16-byte salt.
pub fn hash_password(
    password: &str,
    salt: &[u8; 16],
    params: PasswordParams,
) -> Result<String, HashError> {
    let salt = SaltString::encode_b64(salt).map_err(|e| HashError::Invalid(e.to_string()))?;
    params
        .argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| HashError::Invalid(e.to_string()))
}

/// Checks that a stored hash is argon2id with bounded cost.
pub fn validate_hash(phc: &str) -> Result<(), HashError> {
    let parsed = PasswordHash::new(phc).map_err(|e| HashError::Invalid(e.to_string()))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(HashError::Invalid(format!(
            "algorithm {} is not argon2id",
            parsed.algorithm
        )));
    }
    let params = Params::try_from(&parsed).map_err(|e| HashError::Invalid(e.to_string()))?;
    if params.m_cost() > HASH_MEMORY_KIB_MAX {
        return Err(HashError::Invalid(format!(
            "memory cost {} KiB is above the limit",
            params.m_cost()
        )));
    }
    Ok(())
}

/// `true` when `password` matches the stored hash. A malformed or
/// out-of-policy hash never matches.
pub fn verify_password(password: &str, phc: &str) -> bool {
    if password.len() > PASSWORD_BYTES_MAX || validate_hash(phc).is_err() {
        return false;
    }
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_requires_length_digit_and_special() {
        use PasswordRule::*;
        let broken = |password: &str| check_policy(password).map_err(|v| v.broken);
        assert_eq!(broken("a1!"), Err(vec![MinLength]));
        assert_eq!(broken("abcdefgh!"), Err(vec![Digit]));
        assert_eq!(broken("abcdefgh1"), Err(vec![Special]));
        assert_eq!(broken("abcd efg1"), Err(vec![Special]));
        assert_eq!(broken(&"a1!".repeat(100)), Err(vec![MaxLength]));
        assert_eq!(broken("vend-admin-1"), Ok(()));
        // Every broken rule at once, not just the first.
        assert_eq!(broken("short"), Err(vec![MinLength, Digit, Special]));
        assert_eq!(
            check_policy("short").unwrap_err().to_string(),
            "the password needs at least 8 characters with a digit and a special character \
             (not a letter or digit); this one lacks at least 8 characters, a digit and a \
             special character (not a letter or digit)"
        );
    }

    #[test]
    fn hashes_verify_and_reject() {
        let hash = hash_password("s3cret-pass", &[7; 16], PasswordParams::Light).unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("s3cret-pass", &hash));
        assert!(!verify_password("s3cret-pasS", &hash));
        assert!(!verify_password("s3cret-pass", "not a hash"));
        assert!(!verify_password(
            "s3cret-pass",
            "$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA"
        ));
    }

    #[test]
    fn rejects_hashes_with_huge_memory_cost() {
        let hostile =
            "$argon2id$v=19$m=4000000,t=1,p=1$c2FsdHNhbHRzYWx0$YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXo";
        assert!(validate_hash(hostile).is_err());
        assert!(!verify_password("anything1!", hostile));
    }
}

//! Keys, sealing with XChaCha20-Poly1305 and the keyed blake3 chain hash.
//!
//! Key files hold 32 random bytes as 64 hex characters. A key is never used
//! for two purposes: the store key only seals values at rest, and a machine
//! key is split by blake3's key derivation into a chain key (hashing the
//! machine's stream) and a link key (sealing its network frames).

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use std::path::Path;
use zeroize::{Zeroize, ZeroizeOnDrop};

pub const KEY_BYTES: usize = 32;
pub const NONCE_BYTES: usize = 24;
pub const TAG_BYTES: usize = 16;
/// Bytes a sealed value adds to its plaintext.
pub const SEAL_OVERHEAD_BYTES: usize = NONCE_BYTES + TAG_BYTES;

/// A 256-bit secret. Zeroed when dropped; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct SecretKey([u8; KEY_BYTES]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    // The cause is part of the message, not a `source`, so `{:#}` does not
    // print it twice.
    #[error("key file {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("key file {path}: expected 64 hex characters")]
    Malformed { path: String },
}

impl SecretKey {
    pub fn generate() -> SecretKey {
        let mut bytes = [0u8; KEY_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        SecretKey(bytes)
    }

    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> SecretKey {
        SecretKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    /// A sub-key for one purpose, so one secret never serves two.
    pub fn derive(&self, context: &str) -> SecretKey {
        SecretKey(blake3::derive_key(context, &self.0))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Option<SecretKey> {
        let mut bytes = [0u8; KEY_BYTES];
        hex::decode_to_slice(text.trim(), &mut bytes).ok()?;
        Some(SecretKey(bytes))
    }

    pub fn load(path: &Path) -> Result<SecretKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|error| KeyError::Io {
            path: path.display().to_string(),
            error,
        })?;
        SecretKey::from_hex(&text).ok_or_else(|| KeyError::Malformed {
            path: path.display().to_string(),
        })
    }

    /// Writes the key readable by its owner only. Refuses to overwrite.
    pub fn save_new(&self, path: &Path) -> Result<(), KeyError> {
        use std::io::Write;
        let io = |error| KeyError::Io {
            path: path.display().to_string(),
            error,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(io)?;
        file.write_all(format!("{}\n", self.to_hex()).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io)
    }
}

/// A 32-byte hash (blake3 output).
pub type Hash32 = [u8; 32];

/// The context strings for [`SecretKey::derive`]. Changing one makes every
/// existing chain or link unverifiable, so they carry a version.
pub const CHAIN_KEY_CONTEXT: &str = "vendledger 2026-11 machine event chain v1";
pub const LINK_KEY_CONTEXT: &str = "vendledger 2026-11 machine link v1";

/// The keyed hash that chains a machine's events:
/// `blake3_keyed(chain_key, previous_hash ++ encoded_event)`.
pub fn chain_hash(chain_key: &SecretKey, previous: &Hash32, encoded_event: &[u8]) -> Hash32 {
    let mut hasher = blake3::Hasher::new_keyed(chain_key.as_bytes());
    hasher.update(previous);
    hasher.update(encoded_event);
    *hasher.finalize().as_bytes()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("sealed value is too short")]
    TooShort,
    #[error("authentication failed (wrong key or corrupted bytes)")]
    Authentication,
}

/// Seals and opens values with XChaCha20-Poly1305. The 192-bit nonce is
/// random per value, which is safe for any number of values under one key.
/// Layout: `nonce (24) ++ ciphertext ++ tag (16)`.
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl Sealer {
    pub fn new(key: &SecretKey) -> Sealer {
        Sealer {
            cipher: XChaCha20Poly1305::new(Key::from_slice(key.as_bytes())),
        }
    }

    pub fn seal(&self, associated_data: &[u8], plaintext: &[u8]) -> Vec<u8> {
        self.seal_written(associated_data, plaintext.len(), |out| {
            out.extend_from_slice(plaintext);
        })
    }

    /// Like [`seal`](Self::seal), for a plaintext `write` appends to the
    /// value being built (about `plaintext_bytes` long), so it is written
    /// once, in place, instead of built apart and copied in.
    pub fn seal_written(
        &self,
        associated_data: &[u8],
        plaintext_bytes: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(SEAL_OVERHEAD_BYTES + plaintext_bytes);
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        out.extend_from_slice(&nonce);
        write(&mut out);
        let tag = self
            .cipher
            .encrypt_in_place_detached(
                XNonce::from_slice(&nonce),
                associated_data,
                &mut out[NONCE_BYTES..],
            )
            .expect("XChaCha20-Poly1305 encrypts any length we produce");
        out.extend_from_slice(&tag);
        out
    }

    pub fn open(&self, associated_data: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut plaintext = Vec::new();
        self.open_into(associated_data, sealed, &mut plaintext)?;
        Ok(plaintext)
    }

    /// Like [`open`](Self::open), reusing `plaintext`'s allocation (scans
    /// open thousands of values in a row). On error `plaintext` is cleared.
    pub fn open_into(
        &self,
        associated_data: &[u8],
        sealed: &[u8],
        plaintext: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        plaintext.clear();
        if sealed.len() < SEAL_OVERHEAD_BYTES {
            return Err(SealError::TooShort);
        }
        let (nonce, rest) = sealed.split_at(NONCE_BYTES);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_BYTES);
        plaintext.extend_from_slice(ciphertext);
        let result = self.cipher.decrypt_in_place_detached(
            XNonce::from_slice(nonce),
            associated_data,
            plaintext,
            Tag::from_slice(tag),
        );
        if result.is_err() {
            plaintext.clear();
            return Err(SealError::Authentication);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trips_and_detects_tampering() {
        let sealer = Sealer::new(&SecretKey::generate());
        let sealed = sealer.seal(b"entry 7", b"hello");
        assert_eq!(sealer.open(b"entry 7", &sealed).unwrap(), b"hello");
        assert_eq!(
            sealer.open(b"entry 8", &sealed),
            Err(SealError::Authentication)
        );
        for i in 0..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[i] ^= 0x40;
            assert_eq!(
                sealer.open(b"entry 7", &flipped),
                Err(SealError::Authentication)
            );
        }
        assert_eq!(sealer.open(b"", &sealed[..10]), Err(SealError::TooShort));
        let other = Sealer::new(&SecretKey::generate());
        assert_eq!(
            other.open(b"entry 7", &sealed),
            Err(SealError::Authentication)
        );
    }

    #[test]
    fn nonces_differ_per_value() {
        let sealer = Sealer::new(&SecretKey::generate());
        assert_ne!(sealer.seal(b"", b"same"), sealer.seal(b"", b"same"));
    }

    #[test]
    fn key_files_round_trip_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/store.key");
        let key = SecretKey::generate();
        key.save_new(&path).unwrap();
        assert_eq!(SecretKey::load(&path).unwrap(), key);
        assert!(key.save_new(&path).is_err());
        std::fs::write(&path, "xyz").unwrap();
        assert!(matches!(
            SecretKey::load(&path),
            Err(KeyError::Malformed { .. })
        ));
    }

    #[test]
    fn derived_keys_differ_by_purpose() {
        let key = SecretKey::generate();
        assert_ne!(key.derive(CHAIN_KEY_CONTEXT), key.derive(LINK_KEY_CONTEXT));
        assert_ne!(&key.derive(CHAIN_KEY_CONTEXT), &key);
    }
}

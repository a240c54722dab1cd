//! Identifiers that come from outside (config files, the network, users) and
//! are therefore validated on construction.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest machine id accepted. Ids are keys in RocksDB and in datagrams, so
/// they are kept short.
pub const MACHINE_ID_BYTES_MAX: usize = 32;

/// A vending machine's id, such as `VM-001`: 1 to 32 ASCII letters, digits,
/// `-` or `_`.
///
/// Held inline (33 bytes, no heap): every event carries one, and the store
/// clones it into its index, its batch maps and its recent links, so a
/// `String` here cost an allocation per clone and per decode (BENCHMARKS.md,
/// stop 22). Equality, order, hashing, `Debug` and the encoding are those
/// of the id's text; the bytes after `len` are always zero.
#[derive(Clone)]
pub struct MachineId {
    len: u8,
    bytes: [u8; MACHINE_ID_BYTES_MAX],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid machine id {0:?}: use 1-32 ASCII letters, digits, '-' or '_' (e.g. VM-001)")]
pub struct InvalidMachineId(pub String);

impl MachineId {
    pub fn new(id: impl Into<String>) -> Result<MachineId, InvalidMachineId> {
        let id = id.into();
        MachineId::from_text(&id).ok_or(InvalidMachineId(id))
    }

    /// The id for `text`, if it is one.
    fn from_text(text: &str) -> Option<MachineId> {
        let valid = !text.is_empty()
            && text.len() <= MACHINE_ID_BYTES_MAX
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return None;
        }
        let mut bytes = [0; MACHINE_ID_BYTES_MAX];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Some(MachineId {
            len: text.len() as u8,
            bytes,
        })
    }

    /// The fleet's naming scheme: `VM-001`, `VM-002`, ... (1-based).
    pub fn numbered(n: u32) -> MachineId {
        MachineId::from_text(&format!("VM-{n:03}")).expect("VM- and at most 10 digits is an id")
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("only ASCII is ever stored")
    }
}

// Equality, order and hashing read the bytes: `as_str` checks UTF-8, and
// these run on every map lookup (3.6% of a saturated profile when they
// went through it).
impl PartialEq for MachineId {
    fn eq(&self, other: &Self) -> bool {
        // The bytes after `len` are always zero.
        self.len == other.len && self.bytes == other.bytes
    }
}

impl Eq for MachineId {}

impl PartialOrd for MachineId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for MachineId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::hash::Hash for MachineId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // What `str`'s `Hash` writes.
        state.write(self.as_bytes());
        state.write_u8(0xff);
    }
}

impl fmt::Debug for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MachineId").field(&self.as_str()).finish()
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MachineId {
    type Err = InvalidMachineId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MachineId::new(s)
    }
}

impl Serialize for MachineId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MachineId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = MachineId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a machine id")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<MachineId, E> {
                MachineId::from_text(text)
                    .ok_or_else(|| E::custom(InvalidMachineId(text.to_owned())))
            }
        }
        // Decoding from the text in place: no allocation per decoded id.
        deserializer.deserialize_str(Text)
    }
}

/// A product slot on a machine, numbered from 1 as printed on the buttons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SlotId(pub u16);

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_fleet_names_and_rejects_junk() {
        assert_eq!(MachineId::numbered(7).as_str(), "VM-007");
        assert!(MachineId::new("VM-001").is_ok());
        assert!(MachineId::new("").is_err());
        assert!(MachineId::new("VM 001").is_err());
        assert!(MachineId::new("a".repeat(33)).is_err());
        assert!(MachineId::new("자판기").is_err());
    }

    #[test]
    fn an_id_encodes_orders_and_hashes_as_its_text() {
        use std::hash::BuildHasher;
        let ids = ["VM-010", "VM-9", "A", "VM-010A", &"z".repeat(32)];
        for text in ids {
            let id = MachineId::new(text).unwrap();
            assert_eq!(id.as_str(), text);
            assert_eq!(format!("{id:?}"), format!("MachineId({text:?})"));
            assert_eq!(
                rmp_serde::to_vec(&id).unwrap(),
                rmp_serde::to_vec(text).unwrap()
            );
            let back: MachineId = rmp_serde::from_slice(&rmp_serde::to_vec(&id).unwrap()).unwrap();
            assert_eq!(back, id);
            let json: MachineId = serde_json::from_str(&format!("{text:?}")).unwrap();
            assert_eq!(json, id);
            let hasher = std::collections::hash_map::RandomState::new();
            assert_eq!(hasher.hash_one(&id), hasher.hash_one(text));
        }
        let mut sorted: Vec<MachineId> = ids.iter().map(|t| MachineId::new(*t).unwrap()).collect();
        sorted.sort();
        let mut texts = ids.to_vec();
        texts.sort();
        assert_eq!(
            sorted.iter().map(MachineId::as_str).collect::<Vec<_>>(),
            texts
        );
    }

    #[test]
    fn deserialising_validates() {
        let bytes = rmp_serde::to_vec(&"bad id!").unwrap();
        assert!(rmp_serde::from_slice::<MachineId>(&bytes).is_err());
    }
}

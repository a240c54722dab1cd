//! Identifiers that come from outside (config files, the network, users) and
//! are therefore validated on construction.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest machine id accepted. Ids are keys in RocksDB and in datagrams, so
/// they are kept short.
pub const MACHINE_ID_BYTES_MAX: usize = 32;

/// A vending machine's id, such as `VM-001`: 1 to 32 ASCII letters, digits,
/// `-` or `_`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct MachineId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid machine id {0:?}: use 1-32 ASCII letters, digits, '-' or '_' (e.g. VM-001)")]
pub struct InvalidMachineId(pub String);

impl MachineId {
    pub fn new(id: impl Into<String>) -> Result<MachineId, InvalidMachineId> {
        let id = id.into();
        let valid = !id.is_empty()
            && id.len() <= MACHINE_ID_BYTES_MAX
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if valid {
            Ok(MachineId(id))
        } else {
            Err(InvalidMachineId(id))
        }
    }

    /// The fleet's naming scheme: `VM-001`, `VM-002`, ... (1-based).
    pub fn numbered(n: u32) -> MachineId {
        MachineId(format!("VM-{n:03}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for MachineId {
    type Err = InvalidMachineId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MachineId::new(s)
    }
}

impl<'de> Deserialize<'de> for MachineId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        MachineId::new(raw).map_err(serde::de::Error::custom)
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
    fn deserialising_validates() {
        let bytes = rmp_serde::to_vec(&"bad id!").unwrap();
        assert!(rmp_serde::from_slice::<MachineId>(&bytes).is_err());
    }
}

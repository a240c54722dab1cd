//! The machine's configuration: a TOML file, overridden by flags. Nothing
//! about a machine is set by editing code (the original needed a source
//! edit to run a second machine).

use ledger::catalog::{CategoryPath, Product, SlotConfig, default_catalog};
use ledger::ids::SlotId;
use ledger::money::CoinCounts;
use ledger::state::{DEFAULT_STACKER_CAPACITY_BILLS, DEFAULT_TUBE_CAPACITY};
use ledger::{MachineId, Won};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// `VM-001`, `VM-002`, ...
    pub machine_id: MachineId,
    /// Where the machine's own ledger lives (`data_dir/log`).
    pub data_dir: PathBuf,
    /// Key directory: `store.key` seals the local ledger,
    /// `machines/<id>.key` chains the events and seals the link.
    pub keys_dir: PathBuf,
    /// Replica machine addresses (host:port); the uplink tries each and
    /// follows redirects to the primary. Empty: the machine stays offline.
    #[serde(default)]
    pub replicas: Vec<String>,
    /// The admin password set at installation (first start only; it is
    /// stored as an argon2id hash in the first event, never in clear).
    #[serde(default)]
    pub initial_admin_password: Option<String>,
    /// The products installed at first start (default: the six drinks).
    #[serde(default)]
    pub slots: Vec<SlotEntry>,
    #[serde(default = "default_tubes")]
    pub tube_capacity: [u32; 4],
    #[serde(default = "default_stacker")]
    pub stacker_capacity_bills: u32,
}

/// Why a configuration file could not be loaded; the path is named so the
/// operator knows which file to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // Each message includes its cause, which is not also a `source`:
    // printed with `{:#}`, it would appear twice.
    #[error("reading {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: {error}")]
    Parse {
        path: String,
        error: toml::de::Error,
    },
}

/// A slot as written in the configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotEntry {
    pub slot: u16,
    pub name: String,
    pub price: Won,
    /// "Drinks > Coffee"
    pub category: String,
    pub capacity: u32,
}

fn default_tubes() -> [u32; 4] {
    DEFAULT_TUBE_CAPACITY.0
}

fn default_stacker() -> u32 {
    DEFAULT_STACKER_CAPACITY_BILLS
}

impl MachineConfig {
    pub fn load(path: &Path) -> Result<MachineConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.display().to_string(),
            error,
        })?;
        toml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.display().to_string(),
            error,
        })
    }

    /// A configuration with defaults for everything but identity and place.
    pub fn new(machine_id: MachineId, data_dir: PathBuf, keys_dir: PathBuf) -> MachineConfig {
        MachineConfig {
            machine_id,
            data_dir,
            keys_dir,
            replicas: Vec::new(),
            initial_admin_password: None,
            slots: Vec::new(),
            tube_capacity: default_tubes(),
            stacker_capacity_bills: default_stacker(),
        }
    }

    /// The slots to install: the configured ones, or the default catalog.
    pub fn catalog(&self) -> Vec<SlotConfig> {
        if self.slots.is_empty() {
            return default_catalog();
        }
        self.slots
            .iter()
            .map(|entry| SlotConfig {
                slot: SlotId(entry.slot),
                product: Product {
                    name: entry.name.clone(),
                    price: entry.price,
                    category: CategoryPath::parse(&entry.category),
                },
                capacity: entry.capacity,
            })
            .collect()
    }

    pub fn tubes(&self) -> CoinCounts {
        CoinCounts(self.tube_capacity)
    }

    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("log")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_file_gets_defaults_and_slots_parse() {
        let text = r#"
machine_id = "VM-002"
data_dir = "/tmp/vm2"
keys_dir = "/tmp/keys"
replicas = ["127.0.0.1:7101"]

[[slots]]
slot = 1
name = "Green Tea"
price = 600
category = "Drinks > Tea"
capacity = 8
"#;
        let config: MachineConfig = toml::from_str(text).unwrap();
        assert_eq!(config.machine_id.as_str(), "VM-002");
        assert_eq!(config.tube_capacity, DEFAULT_TUBE_CAPACITY.0);
        let catalog = config.catalog();
        assert_eq!(catalog.len(), 1);
        assert_eq!(catalog[0].product.category.0, ["Drinks", "Tea"]);
        let bad = text.replace("VM-002", "VM 002");
        assert!(
            toml::from_str::<MachineConfig>(&bad).is_err(),
            "ids are validated"
        );
    }
}

//! The key directory: where a store, a fleet and its machines keep their
//! secrets.
//!
//! ```text
//! KEYS/store.key            seals log values at rest
//! KEYS/cluster.key          seals replication datagrams between replicas
//! KEYS/machines/VM-001.key  one per machine: chains its events, seals its link
//! ```

use crate::crypto::{CHAIN_KEY_CONTEXT, KeyError, LINK_KEY_CONTEXT, SecretKey};
use crate::ids::MachineId;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const STORE_KEY_FILE: &str = "store.key";
pub const CLUSTER_KEY_FILE: &str = "cluster.key";
pub const MACHINE_KEYS_DIR: &str = "machines";

/// Looks up the key that chains a machine's events.
pub trait ChainKeys {
    fn chain_key(&self, machine: &MachineId) -> Option<&SecretKey>;
}

/// A loaded key directory.
#[derive(Debug)]
pub struct Keyring {
    dir: PathBuf,
    store: SecretKey,
    machine: HashMap<MachineId, SecretKey>,
    chain: HashMap<MachineId, SecretKey>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("key directory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("key file name {0:?} is not a machine id")]
    BadMachineFile(String),
}

impl Keyring {
    /// Loads `dir`, creating the store key first if `create` is set and it
    /// does not exist yet.
    pub fn open(dir: &Path, create: bool) -> Result<Keyring, KeyringError> {
        let store_path = dir.join(STORE_KEY_FILE);
        if create && !store_path.exists() {
            SecretKey::generate().save_new(&store_path)?;
        }
        let store = SecretKey::load(&store_path)?;
        let mut ring = Keyring {
            dir: dir.to_path_buf(),
            store,
            machine: HashMap::new(),
            chain: HashMap::new(),
        };
        ring.load_machines()?;
        Ok(ring)
    }

    fn load_machines(&mut self) -> Result<(), KeyringError> {
        let machines_dir = self.dir.join(MACHINE_KEYS_DIR);
        let entries = match std::fs::read_dir(&machines_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(KeyringError::Io {
                    path: machines_dir.display().to_string(),
                    source,
                });
            }
        };
        for entry in entries {
            let entry = entry.map_err(|source| KeyringError::Io {
                path: machines_dir.display().to_string(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".key") else {
                continue;
            };
            let id =
                MachineId::new(stem).map_err(|_| KeyringError::BadMachineFile(name.clone()))?;
            let key = SecretKey::load(&entry.path())?;
            self.insert_machine(id, key);
        }
        Ok(())
    }

    fn insert_machine(&mut self, id: MachineId, key: SecretKey) {
        self.chain.insert(id.clone(), key.derive(CHAIN_KEY_CONTEXT));
        self.machine.insert(id, key);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn store_key(&self) -> &SecretKey {
        &self.store
    }

    pub fn machine_key_path(&self, id: &MachineId) -> PathBuf {
        self.dir.join(MACHINE_KEYS_DIR).join(format!("{id}.key"))
    }

    /// The machine's key, created (and saved) if it does not exist yet.
    pub fn ensure_machine(&mut self, id: &MachineId) -> Result<&SecretKey, KeyringError> {
        if !self.machine.contains_key(id) {
            let key = SecretKey::generate();
            key.save_new(&self.machine_key_path(id))?;
            self.insert_machine(id.clone(), key);
        }
        Ok(&self.machine[id])
    }

    pub fn machine_key(&self, id: &MachineId) -> Option<&SecretKey> {
        self.machine.get(id)
    }

    pub fn link_key(&self, id: &MachineId) -> Option<SecretKey> {
        self.machine.get(id).map(|k| k.derive(LINK_KEY_CONTEXT))
    }

    pub fn machines(&self) -> impl Iterator<Item = &MachineId> {
        self.machine.keys()
    }

    /// The cluster key, created if `create` is set and it does not exist.
    pub fn cluster_key(&self, create: bool) -> Result<SecretKey, KeyringError> {
        let path = self.dir.join(CLUSTER_KEY_FILE);
        if create && !path.exists() {
            SecretKey::generate().save_new(&path)?;
        }
        Ok(SecretKey::load(&path)?)
    }
}

impl ChainKeys for Keyring {
    fn chain_key(&self, machine: &MachineId) -> Option<&SecretKey> {
        self.chain.get(machine)
    }
}

/// A single machine's chain key (what a machine holds for its own stream).
pub struct SingleMachineKey {
    pub machine: MachineId,
    pub chain: SecretKey,
}

impl SingleMachineKey {
    pub fn new(machine: MachineId, machine_key: &SecretKey) -> SingleMachineKey {
        SingleMachineKey {
            machine,
            chain: machine_key.derive(CHAIN_KEY_CONTEXT),
        }
    }
}

impl ChainKeys for SingleMachineKey {
    fn chain_key(&self, machine: &MachineId) -> Option<&SecretKey> {
        (machine == &self.machine).then_some(&self.chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_and_reloads_keys() {
        let dir = tempfile::tempdir().unwrap();
        let vm = MachineId::numbered(1);
        let (store, machine) = {
            let mut ring = Keyring::open(dir.path(), true).unwrap();
            let machine = ring.ensure_machine(&vm).unwrap().clone();
            (ring.store_key().clone(), machine)
        };
        let ring = Keyring::open(dir.path(), false).unwrap();
        assert_eq!(ring.store_key(), &store);
        assert_eq!(ring.machine_key(&vm), Some(&machine));
        assert!(ring.chain_key(&vm).is_some());
        assert!(ring.chain_key(&MachineId::numbered(2)).is_none());
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Keyring::open(&dir.path().join("nope"), false).unwrap_err();
        assert!(err.to_string().contains("store.key"), "{err}");
    }
}

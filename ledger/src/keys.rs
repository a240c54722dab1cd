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
///
/// Loading never creates a key: a key made behind an operator's back
/// either isolates a replica (a cluster key nobody else has) or seals data
/// nobody can open later. Keys are created only on request, by
/// [`create_cluster_keys`] and [`create_machine_keys`] (`vendctl keys`).
#[derive(Debug)]
pub struct Keyring {
    dir: PathBuf,
    store: SecretKey,
    machine: HashMap<MachineId, SecretKey>,
    chain: HashMap<MachineId, SecretKey>,
    skipped: Vec<SkippedKeyFile>,
}

/// A file in `machines/` that could not be loaded. It is skipped, so one
/// bad file does not take every machine offline; the owner warns about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedKeyFile {
    pub path: PathBuf,
    pub problem: String,
}

impl std::fmt::Display for SkippedKeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is skipped: {}", self.path.display(), self.problem)
    }
}

// The messages include their cause's text and do not also return it as a
// `source`, so a chain printed with `{:#}` says everything once.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("key file {path} is missing: {remedy}")]
    Missing { path: String, remedy: String },
    #[error("key directory {path}: {error}")]
    Io { path: String, error: std::io::Error },
}

impl KeyringError {
    fn missing(path: &Path, remedy: String) -> KeyringError {
        KeyringError::Missing {
            path: path.display().to_string(),
            remedy,
        }
    }
}

/// Loads a key file that must exist; a missing one is named with the
/// command that makes it.
fn load_required(path: &Path, remedy: impl FnOnce() -> String) -> Result<SecretKey, KeyringError> {
    match SecretKey::load(path) {
        Ok(key) => Ok(key),
        Err(KeyError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(KeyringError::missing(path, remedy()))
        }
        Err(other) => Err(other.into()),
    }
}

impl Keyring {
    /// Loads `dir`: the store key (which must exist) and every machine key
    /// under `machines/` that loads; the others are listed by
    /// [`skipped`](Self::skipped). Creates nothing.
    pub fn open(dir: &Path) -> Result<Keyring, KeyringError> {
        let store = load_required(&dir.join(STORE_KEY_FILE), || {
            format!(
                "create it with `vendctl keys init --dir {}` (a log that exists opens only \
                 with the store.key it was sealed with: restore that file instead)",
                dir.display()
            )
        })?;
        let mut ring = Keyring {
            dir: dir.to_path_buf(),
            store,
            machine: HashMap::new(),
            chain: HashMap::new(),
            skipped: Vec::new(),
        };
        ring.load_machines()?;
        Ok(ring)
    }

    fn load_machines(&mut self) -> Result<(), KeyringError> {
        let machines_dir = self.dir.join(MACHINE_KEYS_DIR);
        let io = |error| KeyringError::Io {
            path: machines_dir.display().to_string(),
            error,
        };
        let entries = match std::fs::read_dir(&machines_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(io(error)),
        };
        for entry in entries {
            let path = entry.map_err(io)?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Some(stem) = name.strip_suffix(".key") else {
                continue;
            };
            let loaded = MachineId::new(stem)
                .map_err(|_| format!("{name:?} is not a machine id"))
                .and_then(|id| {
                    SecretKey::load(&path)
                        .map(|key| (id, key))
                        .map_err(|e| e.to_string())
                });
            match loaded {
                Ok((id, key)) => self.insert_machine(id, key),
                Err(problem) => self.skipped.push(SkippedKeyFile { path, problem }),
            }
        }
        self.skipped.sort_by(|a, b| a.path.cmp(&b.path));
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

    /// Machine key files that could not be loaded, in path order.
    pub fn skipped(&self) -> &[SkippedKeyFile] {
        &self.skipped
    }

    pub fn machine_key_path(&self, id: &MachineId) -> PathBuf {
        machine_key_path(&self.dir, id)
    }

    pub fn machine_key(&self, id: &MachineId) -> Option<&SecretKey> {
        self.machine.get(id)
    }

    /// The machine's key, or why there is none: the file is missing (named
    /// with the command that makes it) or could not be loaded.
    pub fn require_machine(&self, id: &MachineId) -> Result<&SecretKey, KeyringError> {
        if let Some(key) = self.machine.get(id) {
            return Ok(key);
        }
        let path = self.machine_key_path(id);
        match SecretKey::load(&path) {
            Err(KeyError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
                Err(KeyringError::missing(
                    &path,
                    format!(
                        "create it with `vendctl keys machine --dir {} --id {id}`; the machine \
                         and the replicas need the same file",
                        self.dir.display()
                    ),
                ))
            }
            Err(other) => Err(other.into()),
            // Written since the directory was loaded: load it again.
            Ok(_) => Err(KeyringError::Io {
                path: path.display().to_string(),
                error: std::io::Error::other("appeared after the key directory was loaded"),
            }),
        }
    }

    pub fn link_key(&self, id: &MachineId) -> Option<SecretKey> {
        self.machine.get(id).map(|k| k.derive(LINK_KEY_CONTEXT))
    }

    pub fn machines(&self) -> impl Iterator<Item = &MachineId> {
        self.machine.keys()
    }

    /// The cluster key, which must exist.
    pub fn cluster_key(&self) -> Result<SecretKey, KeyringError> {
        load_required(&self.dir.join(CLUSTER_KEY_FILE), || {
            format!(
                "copy the cluster's cluster.key here (every replica of a cluster needs the \
                 same one), or create the keys of a new cluster with `vendctl keys init --dir {}`",
                self.dir.display()
            )
        })
    }
}

fn machine_key_path(dir: &Path, id: &MachineId) -> PathBuf {
    dir.join(MACHINE_KEYS_DIR).join(format!("{id}.key"))
}

/// Writes a new random key to `path` unless a file is there already;
/// returns whether it wrote one.
fn create_if_absent(path: &Path) -> Result<bool, KeyringError> {
    match SecretKey::generate().save_new(path) {
        Ok(()) => Ok(true),
        Err(KeyError::Io { error, .. }) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(false)
        }
        Err(other) => Err(other.into()),
    }
}

/// Creates the store key and the cluster key in `dir`, keeping those that
/// exist (never overwriting a file); returns the files it wrote. This is
/// `vendctl keys init`, and what `vendctl cluster init` runs for a new
/// cluster.
pub fn create_cluster_keys(dir: &Path) -> Result<Vec<PathBuf>, KeyringError> {
    let mut created = Vec::new();
    for name in [STORE_KEY_FILE, CLUSTER_KEY_FILE] {
        let path = dir.join(name);
        if create_if_absent(&path)? {
            created.push(path);
        }
    }
    Ok(created)
}

/// Creates the store key (if absent) and a key for each of `machines`
/// that has no key file, in `dir`; returns the files it wrote. This is
/// `vendctl keys machine`, and how the simulated fleets provision their
/// machines.
pub fn create_machine_keys(
    dir: &Path,
    machines: &[MachineId],
) -> Result<Vec<PathBuf>, KeyringError> {
    let mut created = Vec::new();
    let store = dir.join(STORE_KEY_FILE);
    if create_if_absent(&store)? {
        created.push(store);
    }
    for id in machines {
        let path = machine_key_path(dir, id);
        if create_if_absent(&path)? {
            created.push(path);
        }
    }
    Ok(created)
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
        let created = create_machine_keys(dir.path(), std::slice::from_ref(&vm)).unwrap();
        assert_eq!(
            created,
            vec![
                dir.path().join("store.key"),
                dir.path().join("machines/VM-001.key")
            ]
        );
        let (store, machine) = {
            let ring = Keyring::open(dir.path()).unwrap();
            (
                ring.store_key().clone(),
                ring.machine_key(&vm).unwrap().clone(),
            )
        };
        // Existing keys are kept, never overwritten.
        assert!(
            create_machine_keys(dir.path(), std::slice::from_ref(&vm))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            create_cluster_keys(dir.path()).unwrap(),
            vec![dir.path().join("cluster.key")]
        );
        let ring = Keyring::open(dir.path()).unwrap();
        assert_eq!(ring.store_key(), &store);
        assert_eq!(ring.machine_key(&vm), Some(&machine));
        assert_eq!(ring.require_machine(&vm).unwrap(), &machine);
        assert!(ring.chain_key(&vm).is_some());
        assert!(ring.chain_key(&MachineId::numbered(2)).is_none());
        assert!(ring.cluster_key().is_ok());
    }

    /// Loading a key directory never creates a key: each missing file is
    /// named, with the command that makes it.
    #[test]
    fn missing_keys_are_named_with_the_command_that_makes_them() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let err = Keyring::open(&keys).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{}/store.key is missing", keys.display())),
            "{err}"
        );
        assert!(err.contains("vendctl keys init --dir"), "{err}");
        assert!(!keys.exists(), "nothing was created");

        create_machine_keys(&keys, &[]).unwrap();
        let ring = Keyring::open(&keys).unwrap();
        let err = ring.cluster_key().unwrap_err().to_string();
        assert!(err.contains("cluster.key is missing"), "{err}");
        assert!(err.contains("vendctl keys init --dir"), "{err}");
        let err = ring
            .require_machine(&MachineId::numbered(4))
            .unwrap_err()
            .to_string();
        assert!(err.contains("machines/VM-004.key is missing"), "{err}");
        assert!(err.contains("vendctl keys machine --dir"), "{err}");
        assert!(err.contains("--id VM-004"), "{err}");
        let mut names: Vec<_> = std::fs::read_dir(&keys)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["store.key"], "loading created nothing");
    }

    /// One unreadable machine key file costs that machine, not the
    /// directory: it is skipped and listed.
    #[test]
    fn an_unreadable_machine_key_file_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let machines = [MachineId::numbered(1), MachineId::numbered(2)];
        create_machine_keys(dir.path(), &machines).unwrap();
        let bad = dir.path().join("machines/VM-002.key");
        std::fs::remove_file(&bad).unwrap();
        std::fs::write(&bad, "not a key\n").unwrap();
        std::fs::write(dir.path().join("machines/not an id.key"), "00").unwrap();
        std::fs::write(dir.path().join("machines/README"), "ignored").unwrap();
        let ring = Keyring::open(dir.path()).unwrap();
        assert!(ring.machine_key(&machines[0]).is_some());
        assert!(ring.machine_key(&machines[1]).is_none());
        let skipped: Vec<String> = ring.skipped().iter().map(ToString::to_string).collect();
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped[0].contains("VM-002.key is skipped"), "{skipped:?}");
        assert!(skipped[0].contains("64 hex characters"), "{skipped:?}");
        assert!(skipped[1].contains("is not a machine id"), "{skipped:?}");
        let err = ring.require_machine(&machines[1]).unwrap_err().to_string();
        assert!(err.contains("64 hex characters"), "{err}");
    }
}

//! `vendctl keys`: create the store, cluster and machine keys.

use crate::say;
use anyhow::{Result, bail};
use ledger::MachineId;
use ledger::keys::Keyring;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Create the store key and the cluster key in DIR (kept if present).
    Init {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Create machine keys (kept if present): --machines N makes VM-001..N.
    Machine {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Machine ids to create keys for.
        #[arg(long = "id")]
        ids: Vec<MachineId>,
        /// Also create VM-001 .. VM-N.
        #[arg(long)]
        machines: Option<u32>,
    },
}

pub fn run(command: KeysCommand) -> Result<ExitCode> {
    match command {
        KeysCommand::Init { dir } => {
            let keyring = Keyring::open(&dir, true)?;
            keyring.cluster_key(true)?;
            say!("keys ready in {}: store.key, cluster.key", dir.display());
        }
        KeysCommand::Machine {
            dir,
            mut ids,
            machines,
        } => {
            ids.extend((1..=machines.unwrap_or(0)).map(MachineId::numbered));
            if ids.is_empty() {
                bail!("name machines with --id VM-001 or --machines N");
            }
            let mut keyring = Keyring::open(&dir, true)?;
            for id in &ids {
                keyring.ensure_machine(id)?;
            }
            say!(
                "{} machine keys ready in {}",
                ids.len(),
                dir.join("machines").display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

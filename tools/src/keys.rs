//! `vendctl keys`: create the store, cluster and machine keys.

use crate::say;
use anyhow::{Result, bail};
use ledger::MachineId;
use ledger::keys::{create_cluster_keys, create_machine_keys};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Create the store key and the cluster key in DIR (kept if present).
    #[command(after_help = "Example: vendctl keys init --dir /srv/vendledger/keys")]
    Init {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Create machine keys (kept if present), and DIR's store.key if it has
    /// none: --machines N makes VM-001..N. A machine needs its key file and
    /// a store key; the replicas need the same machine key files.
    #[command(
        after_help = "Examples:\n  vendctl keys machine --dir /srv/vendledger/keys --id VM-042\n  vendctl keys machine --dir /srv/vendledger/keys --machines 20"
    )]
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
    /// Make a self-signed certificate for the cluster's dashboards (local
    /// use) and point the replica configs at it: they serve HTTPS.
    #[command(after_help = "Example: vendctl keys tls --cluster /tmp/cluster --host 192.168.0.10")]
    Tls(crate::tls::TlsArgs),
}

/// `vendctl keys` is the one command that creates keys: nothing else makes
/// one behind an operator's back (`cluster init` and the simulated fleets
/// call the same functions, and say what they made).
pub fn run(command: KeysCommand) -> Result<ExitCode> {
    match command {
        KeysCommand::Init { dir } => {
            let created = create_cluster_keys(&dir)?;
            say!("keys ready in {}: store.key, cluster.key", dir.display());
            report_created(&created, &dir);
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
            let created = create_machine_keys(&dir, &ids)?;
            say!(
                "{} machine keys ready in {}",
                ids.len(),
                dir.join("machines").display()
            );
            report_created(&created, &dir);
        }
        KeysCommand::Tls(args) => return crate::tls::run(&args),
    }
    Ok(ExitCode::SUCCESS)
}

/// Says which files are new: a key that existed is kept, never replaced.
fn report_created(created: &[PathBuf], dir: &Path) {
    if created.is_empty() {
        say!("  (all of them existed and were kept)");
    }
    for path in created {
        let name = path.strip_prefix(dir).unwrap_or(path);
        say!("  created {}", name.display());
    }
}

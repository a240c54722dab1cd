//! `vendctl keys tls --cluster DIR`: a self-signed certificate for the
//! dashboards of a local cluster, and the replica configs pointed at it.
//! For local use: browsers warn about a certificate no authority signed.

use crate::say;
use anyhow::{Context, Result, bail};
use replica::config::ReplicaConfig;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct TlsArgs {
    /// The cluster directory (its replica-N.toml configs are updated).
    #[arg(long, value_name = "DIR")]
    cluster: PathBuf,
    /// More names or addresses the certificate is valid for (besides
    /// localhost and the replicas' status addresses).
    #[arg(long = "host", value_name = "NAME")]
    hosts: Vec<String>,
}

/// Writes `bytes` to a new file readable only by its owner.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

pub fn run(args: &TlsArgs) -> Result<ExitCode> {
    let dir = std::fs::canonicalize(&args.cluster)
        .with_context(|| format!("no cluster directory {}", args.cluster.display()))?;
    let mut configs: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("replica-") && n.ends_with(".toml"))
        })
        .collect();
    configs.sort();
    if configs.is_empty() {
        bail!(
            "no replica-N.toml in {} (run `vendctl cluster init` first)",
            dir.display()
        );
    }
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let mut loaded = Vec::new();
    for path in &configs {
        let config = ReplicaConfig::load(path)?;
        let ip = config.status_listen.ip().to_string();
        if !config.status_listen.ip().is_unspecified() && !names.contains(&ip) {
            names.push(ip);
        }
        loaded.push((path, config));
    }
    names.extend(args.hosts.iter().cloned());
    let certified =
        rcgen::generate_simple_self_signed(names.clone()).context("making the certificate")?;
    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&tls_dir)?;
    let certificate = tls_dir.join("cert.pem");
    let private_key = tls_dir.join("key.pem");
    std::fs::write(&certificate, certified.cert.pem())
        .with_context(|| format!("writing {}", certificate.display()))?;
    write_private(
        &private_key,
        certified.signing_key.serialize_pem().as_bytes(),
    )?;
    for (path, mut config) in loaded {
        config.dashboard.tls_certificate = Some(certificate.clone());
        config.dashboard.tls_private_key = Some(private_key.clone());
        std::fs::write(path, config.to_toml())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    say!(
        "self-signed certificate for {} in {}; {} replica config(s) now serve HTTPS (restart them)",
        names.join(", "),
        tls_dir.display(),
        configs.len()
    );
    Ok(ExitCode::SUCCESS)
}

//! `vendctl user add|list|disable`: dashboard operator accounts.
//!
//! Accounts live in the fleet log (written through the primary, so every
//! replica has them and a failover keeps them). The password is hashed
//! here (argon2id, the machines' policy) and never leaves this process;
//! the request is sealed with a key derived from the cluster key and sent
//! to a replica's dashboard. A follower answers with the primary's name,
//! which is tried next (addresses from the cluster's replica configs).

use crate::say;
use anyhow::{Context, Result, bail};
use dashboard::auth::cluster::{
    ADMIN_PATH, AdminReply, AdminRequest, TIME_HEADER, admin_key, seal_request,
};
use ledger::crypto::SecretKey;
use ledger::keys::Keyring;
use ledger::operator::OperatorRole;
use rand::RngCore;
use replica::config::ReplicaConfig;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum UserCommand {
    /// Add an operator account: admins act, auditors only read.
    #[command(after_help = "Example: vendctl user add kim --role auditor --cluster /tmp/cluster")]
    Add(AddArgs),
    /// List the operator accounts.
    #[command(after_help = "Example: vendctl user list --cluster /tmp/cluster")]
    List(ClusterArg),
    /// Disable an account: its sessions end at once on every replica.
    #[command(after_help = "Example: vendctl user disable kim --cluster /tmp/cluster")]
    Disable(DisableArgs),
}

#[derive(clap::Args)]
pub struct ClusterArg {
    /// The cluster directory (its replica-N.toml configs and keys).
    #[arg(long, value_name = "DIR")]
    cluster: PathBuf,
}

#[derive(clap::Args)]
pub struct AddArgs {
    /// 1-32 ASCII letters, digits, '.', '-' or '_'.
    name: String,
    /// admin or auditor.
    #[arg(long)]
    role: OperatorRole,
    /// Read the password from the first line of standard input instead of
    /// asking for it.
    #[arg(long)]
    password_stdin: bool,
    #[command(flatten)]
    cluster: ClusterArg,
}

#[derive(clap::Args)]
pub struct DisableArgs {
    name: String,
    #[command(flatten)]
    cluster: ClusterArg,
}

/// A replica's dashboard as its config names it.
struct Replica {
    name: String,
    address: String,
}

/// The cluster's replicas (from `DIR/replica-*.toml`) and its admin key.
fn cluster(dir: &Path) -> Result<(Vec<Replica>, SecretKey)> {
    let mut configs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("replica-") && n.ends_with(".toml"))
        })
        .collect();
    configs.sort();
    let mut replicas = Vec::new();
    let mut keys_dir = None;
    for path in &configs {
        let config = ReplicaConfig::load(path)?;
        let mut address = config.status_listen;
        if address.ip().is_unspecified() {
            address.set_ip(std::net::Ipv4Addr::LOCALHOST);
        }
        keys_dir.get_or_insert(config.keys_dir.clone());
        replicas.push(Replica {
            name: config.name,
            address: address.to_string(),
        });
    }
    let Some(keys_dir) = keys_dir else {
        bail!(
            "no replica-N.toml in {} (run `vendctl cluster init` first)",
            dir.display()
        );
    };
    let cluster_key = Keyring::open(&keys_dir)?.cluster_key()?;
    Ok((replicas, admin_key(&cluster_key)))
}

/// Sends one sealed request to one replica.
fn send(address: &str, key: &SecretKey, request: &AdminRequest) -> Result<(u16, AdminReply)> {
    let at_ms = jiff::Timestamp::now().as_millisecond();
    let body = seal_request(key, request, at_ms);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(15)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .post(&format!("http://{address}{ADMIN_PATH}"))
        .header(TIME_HEADER, &at_ms.to_string())
        .header("content-type", "application/octet-stream")
        .send(&body[..])?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string()?;
    let reply: AdminReply = serde_json::from_str(&text)
        .with_context(|| format!("{address} answered {status} with {text:?}"))?;
    Ok((status, reply))
}

/// Sends `request` to the replicas until one carries it out: a follower
/// names the primary, which is asked next. Returns the answering replica.
fn deliver(
    replicas: &[Replica],
    key: &SecretKey,
    request: &AdminRequest,
) -> Result<(String, AdminReply)> {
    let mut queue: Vec<&Replica> = replicas.iter().collect();
    let mut problems = Vec::new();
    let mut asked = 0;
    while let Some(replica) = queue.first().copied() {
        queue.remove(0);
        asked += 1;
        if asked > replicas.len() * 2 {
            break;
        }
        match send(&replica.address, key, request) {
            Ok((_, reply)) if reply.ok => return Ok((replica.name.clone(), reply)),
            Ok((409, reply)) if reply.primary.is_some() => {
                let primary = reply.primary.clone().unwrap_or_default();
                if let Some(next) = replicas.iter().find(|r| r.name == primary) {
                    queue.insert(0, next);
                }
                problems.push(format!("{}: {}", replica.name, reply.message));
            }
            // A clear refusal (a bad name, an existing account): stop.
            Ok((status, reply)) if (400..500).contains(&status) && status != 409 => {
                bail!("{} refused: {}", replica.name, reply.message);
            }
            Ok((_, reply)) => problems.push(format!("{}: {}", replica.name, reply.message)),
            Err(error) => problems.push(format!("{}: {error:#}", replica.name)),
        }
    }
    bail!("no replica carried it out:\n  {}", problems.join("\n  "))
}

/// The password: from standard input's first line, or asked twice
/// without echo. Checked against the machines' policy.
fn password(from_stdin: bool) -> Result<String> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .take(1_024)
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        let first = rpassword::prompt_password("Password: ").context("reading the password")?;
        let again = rpassword::prompt_password("Again: ").context("reading the password")?;
        if first != again {
            bail!("the passwords differ");
        }
        first
    };
    ledger::admin::check_policy(&password)?;
    Ok(password)
}

use std::io::Read;

/// Adds an operator account to the cluster in `dir`: hashes `password`
/// (argon2id, the machines' policy) and asks the primary to record it.
/// Returns the replica that did and its answer. `vendctl demo` makes its
/// login with this too.
pub fn add_account(
    dir: &Path,
    name: &str,
    role: OperatorRole,
    password: &str,
) -> Result<(String, String)> {
    if !dashboard::auth::valid_name(name) {
        bail!("a name has 1-32 ASCII letters, digits, '.', '-' or '_'");
    }
    ledger::admin::check_policy(password)?;
    let (replicas, key) = cluster(dir)?;
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let password_hash =
        ledger::admin::hash_password(password, &salt, ledger::admin::PasswordParams::Standard)?;
    let request = AdminRequest::AddUser {
        name: name.to_owned(),
        role,
        password_hash,
    };
    let (replica, reply) = deliver(&replicas, &key, &request)?;
    Ok((replica, reply.message))
}

/// A password that keeps the policy, for accounts a command makes itself
/// (the demo's, the benchmark's): `PREFIX-` and twelve letters and digits
/// that cannot be misread, then `-7`.
pub fn generated_password(prefix: &str) -> String {
    let suffix: String = (0..12)
        .map(|_| char::from(b"abcdefghjkmnpqrstuvwxyz23456789"[rand::random_range(0..31)]))
        .collect();
    format!("{prefix}-{suffix}-7")
}

pub fn run(command: UserCommand) -> Result<ExitCode> {
    match command {
        UserCommand::Add(args) => {
            if !dashboard::auth::valid_name(&args.name) {
                bail!("a name has 1-32 ASCII letters, digits, '.', '-' or '_'");
            }
            let password = password(args.password_stdin)?;
            let (replica, message) =
                add_account(&args.cluster.cluster, &args.name, args.role, &password)?;
            say!(
                "added {} as {} ({message}, through {replica})",
                args.name,
                args.role.as_str(),
            );
        }
        UserCommand::Disable(args) => {
            let (replicas, key) = cluster(&args.cluster.cluster)?;
            let request = AdminRequest::DisableUser {
                name: args.name.clone(),
            };
            let (replica, reply) = deliver(&replicas, &key, &request)?;
            say!(
                "disabled {} ({}, through {replica})",
                args.name,
                reply.message
            );
        }
        UserCommand::List(args) => {
            let (replicas, key) = cluster(&args.cluster)?;
            let (replica, reply) = deliver(&replicas, &key, &AdminRequest::ListUsers)?;
            say!("{} account(s), as {replica} knows them:", reply.users.len());
            for user in &reply.users {
                say!(
                    "  {:<20} {:<8} {:<9} added by {} at {}",
                    user.name,
                    user.role.as_str(),
                    if user.disabled { "disabled" } else { "active" },
                    user.added_by,
                    dashboard::format::time(user.added_at_ms)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `vendctl`: the operator's command line for vendledger.

mod archive;
mod bench;
mod bench_replication;
mod cluster;
mod demo;
mod dump;
mod export;
mod fleet;
mod keys;
mod replay;
mod simulate;
mod tls;
mod user;
mod util;
mod verify;
mod web;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// mimalloc instead of glibc malloc: replays decode on one thread and free
/// on another, which glibc serves with arena locking and consolidation.
/// `vendctl bench` measured the difference (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "vendctl",
    version,
    about = "Simulate, verify, replay and inspect vendledger fleet logs"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// The whole product on this machine: three replicas, a fleet selling
    /// in real time, the dashboard, and the machine app; Ctrl-C stops it.
    Demo(demo::Args),
    /// Write a realistic fleet log: machines with customers and operators.
    Simulate(simulate::Args),
    /// Check every hash chain, decryption and posting of a log.
    Verify(verify::Args),
    /// Rebuild projections (inventory, cash, sales) from a log and print them.
    Replay(replay::Args),
    /// Print every log entry as one JSON object per line.
    Dump(dump::Args),
    /// Export events, a sales summary (csv, jsonl) or a machine's EVA-DTS
    /// audit file (dex).
    Export(export::Args),
    /// Move old closed segments out of a stopped replica's live log into
    /// compressed, sealed archive files (or `restore` them).
    Archive(archive::Args),
    /// Create store, cluster and machine keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Set up or run a local three-replica cluster.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Dashboard operator accounts (admin or auditor).
    #[command(subcommand)]
    User(user::UserCommand),
    /// Show each replica's role, epoch, tip, commit, lag and repair counts.
    Status(cluster::StatusArgs),
    /// The standard measurements in one table: store append and replay,
    /// replication, dashboard page latencies.
    Bench(bench::Args),
    /// Measure a local cluster: committed events/s, ack latency, follower
    /// lag, throughput under datagram loss, failover time.
    BenchReplication(bench_replication::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Commands::Demo(args) => demo::run(args),
        Commands::Simulate(args) => simulate::run(args),
        Commands::Verify(args) => verify::run(args),
        Commands::Replay(args) => replay::run(args),
        Commands::Dump(args) => dump::run(args),
        Commands::Export(args) => export::run(args),
        Commands::Archive(args) => archive::run(args),
        Commands::Keys(command) => keys::run(command),
        Commands::Cluster(command) => cluster::run(command),
        Commands::Status(args) => cluster::status(args),
        Commands::User(command) => user::run(command),
        Commands::Bench(args) => bench::run(args),
        Commands::BenchReplication(args) => bench_replication::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("vendctl: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command a person runs shows how in its --help: a one-line
    /// example after the options.
    #[test]
    fn every_command_has_an_example() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name());
            let leaf = command
                .get_subcommands()
                .all(|sub| sub.get_name() == "help");
            if leaf {
                let shown = command
                    .get_after_help()
                    .map(|text| text.to_string())
                    .unwrap_or_default();
                if !shown.contains("vendctl ") {
                    missing.push(path.clone());
                }
            }
            for sub in command.get_subcommands() {
                if sub.get_name() != "help" {
                    walk(sub, &path, missing);
                }
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no example in --help: {missing:?}");
    }
}

//! `vend-replica --config FILE`: runs one replica until SIGINT or SIGTERM.

use anyhow::Context;
use clap::Parser;
use replica::config::ReplicaConfig;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc instead of glibc's allocator: records, datagrams and the
/// dashboard's views are allocated on one thread and freed on another
/// (the core, the udp thread, the blocking pool), and glibc's malloc and
/// free were 9% of a replica's CPU under load (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "vend-replica",
    version,
    about = "A vendledger replica: machine ingest, replication, failover and the status API"
)]
struct Args {
    /// The replica's TOML configuration (see docs/replica.example.toml).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("vend-replica: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    // Before the heap grows: see `replica::heap` for why.
    if let Err(error) = replica::heap::disable_transparent_huge_pages() {
        tracing::warn!(%error, "could not turn transparent huge pages off; running with them");
    }
    let config = ReplicaConfig::load(&args.config)?;
    let handle = replica::server::start(config).context("starting the replica")?;
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal handler")?;
    signals.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = terminate.recv() => Ok(()),
        }
    })?;
    tracing::info!("stopping");
    handle.shutdown();
    Ok(())
}

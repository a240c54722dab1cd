//! `vendctl bench`'s replication part: `vendctl bench-replication --json`
//! run as a child process (its four fresh clusters of `vend-replica`
//! processes are its own business), read back through the JSON it prints
//! for scripts.

use super::Row;
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::Path;
use std::process::{Command, Stdio};

#[derive(clap::Args)]
pub struct ReplicationArgs {
    /// Replication: events of each saturated run.
    #[arg(long, default_value_t = 200_000)]
    replication_events: u64,
    /// Replication: offered load of the paced runs, events/s.
    #[arg(long, default_value_t = 4_000)]
    replication_rate: u64,
    /// Replication: length of each paced run, seconds.
    #[arg(long, default_value_t = 10)]
    replication_paced_seconds: u64,
}

/// What the standard table takes from bench-replication's JSON; the rest
/// of it is passed through to `--json` untouched.
#[derive(Deserialize)]
struct Figures {
    machines: u32,
    transport: String,
    runs: Vec<Run>,
    loss_throughput_fraction: f64,
}

#[derive(Deserialize)]
struct Run {
    name: String,
    drop_received_percent: u8,
    events: u64,
    committed_events_per_second: f64,
    ack_latency_ms_p50: f64,
    ack_latency_ms_p99: f64,
    ack_latency_ms_max: f64,
    failover_ms: Option<f64>,
}

/// Runs the replication benchmark with its clusters under `scratch` and
/// ports from `base_port`; its JSON.
pub fn measure(
    args: &ReplicationArgs,
    scratch: &Path,
    base_port: u16,
) -> Result<serde_json::Value> {
    let vendctl = std::env::current_exe().context("finding vendctl itself")?;
    eprintln!("replication: four fresh clusters (saturated, paced, with loss, primary killed)...");
    let output = Command::new(vendctl)
        .arg("bench-replication")
        .args(["--events", &args.replication_events.to_string()])
        .args(["--rate", &args.replication_rate.to_string()])
        // One loss run (5%), the figure the standard table shows.
        .args(["--loss-percent", "5"])
        .args([
            "--paced-seconds",
            &args.replication_paced_seconds.to_string(),
        ])
        .args(["--base-port", &base_port.to_string()])
        .arg("--dir")
        .arg(scratch)
        .arg("--json")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("starting vendctl bench-replication")?;
    if !output.status.success() {
        bail!(
            "vendctl bench-replication failed ({}); its messages are above",
            output.status
        );
    }
    serde_json::from_slice(&output.stdout).context("reading bench-replication's JSON")
}

/// The replication lines of the standard table.
pub fn rows(json: &serde_json::Value) -> Result<Vec<Row>> {
    let figures = Figures::deserialize(json).context("bench-replication's JSON has changed")?;
    let mut rows = vec![Row::note(
        "replication",
        format!(
            "3 replicas, {} machines over the real link, {} transport",
            figures.machines, figures.transport
        ),
    )];
    for run in &figures.runs {
        let loss = if run.drop_received_percent > 0 {
            format!(", {}% of datagrams dropped", run.drop_received_percent)
        } else {
            String::new()
        };
        let latency = format!(
            "ack p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            run.ack_latency_ms_p50, run.ack_latency_ms_p99, run.ack_latency_ms_max
        );
        // Saturated runs are about throughput (their acks wait in queues);
        // paced ones about latency at a rate the cluster keeps up with.
        if run.name.starts_with("saturated") {
            rows.push(Row::new(
                "replication",
                format!("{} ({} events{loss}; {latency})", run.name, run.events),
                run.committed_events_per_second,
                "events/s",
            ));
        } else {
            rows.push(Row::new(
                "replication",
                format!(
                    "{} at {:.0} events/s: ack p99 (p50 {:.1} ms, max {:.1} ms)",
                    run.name,
                    run.committed_events_per_second,
                    run.ack_latency_ms_p50,
                    run.ack_latency_ms_max
                ),
                run.ack_latency_ms_p99,
                "ms",
            ));
        }
        if let Some(ms) = run.failover_ms {
            rows.push(Row::new(
                "replication",
                "failover: primary SIGKILLed → first ack from its successor".to_owned(),
                ms,
                "ms",
            ));
        }
    }
    rows.push(Row::new(
        "replication",
        "throughput with loss, share of loss-free".to_owned(),
        figures.loss_throughput_fraction * 100.0,
        "%",
    ));
    Ok(rows)
}

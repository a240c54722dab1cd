//! `vendctl dump`: one JSON object per log entry.

use crate::util::{DataArgs, hex32};
use anyhow::{Result, bail};
use serde_json::json;
use std::io::Write;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    data: DataArgs,
    /// Output format (only `jsonl`, one object per line).
    #[arg(long, default_value = "jsonl")]
    format: String,
    /// First gseq to print.
    #[arg(long, default_value_t = 1)]
    from_gseq: u64,
    /// Print at most this many entries.
    #[arg(long)]
    limit: Option<u64>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    if args.format != "jsonl" {
        bail!("unknown format {:?}: only jsonl is supported", args.format);
    }
    let keyring = args.data.keyring()?;
    let store = args.data.open_store(&keyring)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let limit = args.limit.unwrap_or(u64::MAX);
    for item in store
        .entries_from(args.from_gseq)
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
    {
        let entry = item?;
        let line = match (entry.body.machine_event(), entry.envelope()?) {
            (Some((machine_id, machine_seq, event)), Some(envelope)) => json!({
                "gseq": entry.body.gseq,
                "epoch": entry.body.epoch,
                "logged_ms": entry.body.logged_ms,
                "machine_id": machine_id,
                "machine_seq": machine_seq,
                "at_ms": envelope.at_ms,
                "kind": envelope.event.kind(),
                "amount": envelope.event.amount(),
                "event": envelope.event,
                "hash": hex32(&entry.hash),
                "prev_hash": hex32(&entry.prev_hash),
                "chain_hash": hex32(&event.chain_hash),
            }),
            _ => json!({
                "gseq": entry.body.gseq,
                "epoch": entry.body.epoch,
                "logged_ms": entry.body.logged_ms,
                "kind": "epoch_started",
                "event": entry.body.payload,
                "hash": hex32(&entry.hash),
                "prev_hash": hex32(&entry.prev_hash),
            }),
        };
        if writeln!(out, "{line}").is_err() {
            // The reader went away (e.g. `| head`): stop quietly.
            return Ok(ExitCode::SUCCESS);
        }
    }
    out.flush().ok();
    Ok(ExitCode::SUCCESS)
}

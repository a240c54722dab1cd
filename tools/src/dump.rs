//! `vendctl dump`: one JSON object per log entry.

use crate::util::{DataArgs, hex32};
use anyhow::{Result, bail};
use ledger::store::record::{Content, LogEntry};
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
        let line = entry_line(&entry)?;
        if writeln!(out, "{line}").is_err() {
            // The reader went away (e.g. `| head`): stop quietly.
            return Ok(ExitCode::SUCCESS);
        }
    }
    out.flush().ok();
    Ok(ExitCode::SUCCESS)
}

/// One entry as a JSON object: a machine's event, an epoch marker, or what
/// an operator did (an account, a command for a machine, an acknowledged
/// alert), with the entry's place in the fleet chain.
fn entry_line(entry: &LogEntry) -> Result<serde_json::Value> {
    let mut line = match (entry.body.machine_event(), entry.content()?) {
        (Some((machine_id, machine_seq, event)), Content::Event(envelope)) => json!({
            "machine_id": machine_id,
            "machine_seq": machine_seq,
            "at_ms": envelope.at_ms,
            "kind": envelope.event.kind(),
            "amount": envelope.event.amount(),
            "event": envelope.event,
            "chain_hash": hex32(&event.chain_hash),
        }),
        (_, Content::Operator(record)) => json!({
            "kind": "operator",
            "operator": record.operator,
            "at_ms": record.at_ms,
            "action_kind": record.action.kind(),
            "action": record.action,
        }),
        _ => json!({
            "kind": "epoch_started",
            "event": entry.body.payload,
        }),
    };
    let fields = line.as_object_mut().expect("built as an object");
    fields.insert("gseq".into(), json!(entry.body.gseq));
    fields.insert("epoch".into(), json!(entry.body.epoch));
    fields.insert("logged_ms".into(), json!(entry.body.logged_ms));
    fields.insert("hash".into(), json!(hex32(&entry.hash)));
    fields.insert("prev_hash".into(), json!(hex32(&entry.prev_hash)));
    Ok(line)
}

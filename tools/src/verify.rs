//! `vendctl verify`.

use crate::say;
use crate::util::{DataArgs, hex32, progress, rate};
use anyhow::Result;
use ledger::store::promise::PromiseFile;
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    data: DataArgs,
}

/// A replica's data directory holds its promise file (what it had made
/// durable and acknowledged): a log that ends before it, or holds another
/// entry there, lost entries, however sound the rest of it is.
fn short_of_promise(
    data: &crate::util::DataArgs,
    store: &ledger::store::LogStore,
) -> Option<ledger::verify::VerifyFailure> {
    let promise = match PromiseFile::read(&data.data) {
        Ok(Some(promise)) => promise,
        Ok(None) => return None,
        Err(error) => {
            return Some(ledger::verify::VerifyFailure {
                gseq: None,
                machine: None,
                problem: format!("{error}: what this replica promised is unknown"),
            });
        }
    };
    let head = store.head().gseq;
    let holds = head >= promise.tip_gseq
        && store
            .get(promise.tip_gseq)
            .ok()
            .flatten()
            .is_none_or(|entry| promise.tip_gseq == 0 || entry.hash == promise.tip_hash);
    (!holds).then(|| ledger::verify::VerifyFailure {
        gseq: None,
        machine: None,
        problem: format!(
            "the log ends at gseq {head} (or holds another entry at gseq {}), but this replica had promised up to gseq {} ({}): acknowledged entries are missing",
            promise.tip_gseq,
            promise.tip_gseq,
            data.data.join(ledger::store::promise::PROMISE_FILE).display()
        ),
    })
}

pub fn run(args: Args) -> Result<ExitCode> {
    let keyring = args.data.keyring()?;
    let store = args.data.open_store(&keyring)?;
    let bar = progress(store.head().gseq, "verify");
    let started = Instant::now();
    let result = ledger::verify::verify_log(&store, &keyring, &mut |gseq| {
        if gseq % 4_096 == 0 {
            bar.set_position(gseq);
        }
    });
    bar.finish_and_clear();
    let result = result.and_then(|summary| match short_of_promise(&args.data, &store) {
        Some(problem) => Err(problem),
        None => Ok(summary),
    });
    match result {
        Ok(summary) => {
            say!(
                "ok: {} entries, {} machines, {} operator records, {} closed segments, head {} ({:.0} entries/s)",
                summary.entries,
                summary.machines,
                summary.operator_records,
                summary.segments,
                hex32(&summary.head_hash),
                rate(summary.entries, started.elapsed())
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) => {
            say!("FAILED: {failure}");
            Ok(ExitCode::FAILURE)
        }
    }
}

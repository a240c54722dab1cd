//! `vendctl verify`.

use crate::say;
use crate::util::{DataArgs, explain_damage, grouped, hex32, per_second, progress, rate};
use anyhow::Result;
use ledger::store::promise::PromiseFile;
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args)]
#[command(after_help = "Example: vendctl verify --data ~/.local/share/vendledger/demo/replica-1")]
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
    let mut verified_up_to = 0;
    let result = ledger::verify::verify_log(&store, &keyring, &mut |gseq| {
        verified_up_to = gseq;
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
            let archived = match store.archived() {
                Some(mark) => format!(
                    " ({} in {} archive files under {})",
                    grouped(mark.through_gseq),
                    mark.segments,
                    store.resolve_archive_dir(&mark.dir).display()
                ),
                None => String::new(),
            };
            say!(
                "ok: {} entries{archived}, {} machines, {} operator records, {} closed segments, head {} ({} entries/s)",
                grouped(summary.entries),
                summary.machines,
                summary.operator_records,
                summary.segments,
                hex32(&summary.head_hash),
                per_second(rate(summary.entries, started.elapsed()))
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) => {
            let tables = store.backend().log_table_files().unwrap_or_default();
            match explain_damage(&failure.problem, verified_up_to, &tables) {
                Some(explained) if failure.gseq.is_none() => say!("FAILED: {explained}"),
                _ => say!("FAILED: {failure}"),
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

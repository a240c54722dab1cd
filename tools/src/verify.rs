//! `vendctl verify`.

use crate::say;
use crate::util::{DataArgs, hex32, progress, rate};
use anyhow::Result;
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    data: DataArgs,
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
    match result {
        Ok(summary) => {
            say!(
                "ok: {} entries, {} machines, {} closed segments, head {} ({:.0} entries/s)",
                summary.entries,
                summary.machines,
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

//! `vendctl verify`.

use crate::say;
use crate::util::{DAMAGE_ADVICE, DataArgs, grouped, hex32, per_second, progress, rate};
use anyhow::Result;
use ledger::store::promise::PromiseFile;
use ledger::store::rocks::TableFile;
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
    let keyring = args.data.existing_keyring()?;
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
            say!(
                "ok: {} entries, {} machines, {} closed segments, head {} ({} entries/s)",
                grouped(summary.entries),
                summary.machines,
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

/// RocksDB's words for a damaged table file ("Corruption: block checksum
/// mismatch: … in …/000016.sst offset 15997555 …") in ours: the first
/// entry that cannot be read, which entries the file holds, and what to
/// do. `None` when the problem is not a damaged table file.
fn explain_damage(problem: &str, verified_up_to: u64, tables: &[TableFile]) -> Option<String> {
    let (_, rocks) = problem.split_once("Corruption: ")?;
    let name = rocks
        .split(|c: char| c.is_whitespace() || c == '/')
        .find(|word| word.ends_with(".sst"))?;
    let what = rocks.split(':').next().unwrap_or(rocks).trim();
    let held = tables
        .iter()
        .find(|table| table.name == name)
        .map(|table| match table.last_chunk_gseq {
            // An end key past every gseq says nothing about the last entry.
            u64::MAX => format!(
                ", which holds the entries from gseq {} on,",
                table.first_gseq
            ),
            last => format!(
                ", which holds the entries from gseq {} to at least {last},",
                table.first_gseq
            ),
        })
        .unwrap_or_default();
    let verified = match verified_up_to {
        0 => "no entry could be verified".to_owned(),
        n => format!("the entries up to gseq {n} are intact"),
    };
    Some(format!(
        "entry gseq {}: cannot be read: the log's table file {name}{held} is damaged ({what}); \
         {verified}. {DAMAGE_ADVICE}.",
        verified_up_to + 1
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_table_file_is_named_with_its_entries() {
        let problem = "storage error: Corruption: block checksum mismatch: stored(context \
                       removed) = 1274784091, computed = 3732576157, type = 4  in \
                       /tmp/r/log/000016.sst offset 15997555 size 4823, block_type = Data";
        let tables = [
            TableFile {
                name: "000008.sst".into(),
                first_gseq: 1,
                last_chunk_gseq: 5_000,
            },
            TableFile {
                name: "000016.sst".into(),
                first_gseq: 5_121,
                last_chunk_gseq: 150_017,
            },
        ];
        let explained = explain_damage(problem, 77_000, &tables).unwrap();
        assert!(
            explained.starts_with(
                "entry gseq 77001: cannot be read: the log's table file 000016.sst, which holds \
                 the entries from gseq 5121 to at least 150017, is damaged (block checksum \
                 mismatch); the entries up to gseq 77000 are intact. Stop what uses"
            ),
            "{explained}"
        );
        assert_eq!(
            explain_damage("storage error: IO error: disk", 5, &tables),
            None
        );
        let last = [TableFile {
            last_chunk_gseq: u64::MAX,
            ..tables[1].clone()
        }];
        let explained = explain_damage(problem, 77_000, &last).unwrap();
        assert!(
            explained.contains("000016.sst, which holds the entries from gseq 5121 on, is damaged"),
            "{explained}"
        );
        let unknown = explain_damage(problem, 0, &[]).unwrap();
        assert!(
            unknown
                .contains("table file 000016.sst is damaged (block checksum mismatch); no entry"),
            "{unknown}"
        );
    }
}

//! `vendctl archive`: moves closed segments wholly before a cutoff out of
//! a stopped replica's live log into archive files, and `vendctl archive
//! restore` brings them back. The work is the store's
//! (`Ledger::archive`, `LogStore::restore_archived`); this is the shell.

use crate::say;
use crate::util::{Bound, DataArgs, grouped, hex32, parse_time, per_second, progress, rate};
use anyhow::{Context, Result, bail};
use ledger::ledger::Ledger;
use ledger::store::archive::Codec;
use ledger::store::rocks::held_by_another_process;
use ledger::store::{Cutoff, LogStore, OpenOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Archive directory under the data directory unless `--to` says otherwise.
pub const ARCHIVE_SUBDIR: &str = "archive";

#[derive(clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Examples:\n  vendctl archive --data /tmp/fleet --before-gseq 500000\n  vendctl archive --data /tmp/fleet --before 2026-01-01 --to /mnt/cold/fleet\n  vendctl archive restore --data /tmp/fleet"
)]
pub struct Args {
    #[command(subcommand)]
    command: Option<ArchiveCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Subcommand)]
enum ArchiveCommand {
    /// Bring every archived segment back into the live log (the archive
    /// files stay where they are).
    #[command(after_help = "Example: vendctl archive restore --data /tmp/fleet")]
    Restore(RestoreArgs),
}

#[derive(clap::Args)]
#[group(id = "cutoff", required = true, multiple = false)]
struct Cut {
    /// Archive the closed segments whose last entry was logged before this
    /// time: an RFC 3339 timestamp, or a date or date-time in Korean time
    /// (a bare date means its first instant).
    #[arg(long)]
    before: Option<String>,
    /// Archive the closed segments that end before this gseq.
    #[arg(long)]
    before_gseq: Option<u64>,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    data: Option<DataArgs>,
    #[command(flatten)]
    cut: Option<Cut>,
    /// Where the archive files go (default DATA/archive). Every run must
    /// use the directory of the runs before it.
    #[arg(long, value_name = "ARCHIVE_DIR")]
    to: Option<PathBuf>,
    /// How the records are compressed (zstd unless measuring).
    #[arg(long, value_enum, default_value = "zstd")]
    codec: CodecArg,
}

#[derive(clap::Args)]
struct RestoreArgs {
    /// (`--archive DIR` reads the files from DIR instead of where they
    /// were written.)
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CodecArg {
    Zstd,
    Lz4,
}

pub fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        Some(ArchiveCommand::Restore(restore_args)) => restore(restore_args),
        None => archive(args.run),
    }
}

/// Opens a stopped replica's log for writing. RocksDB allows one writer:
/// a log a running process holds is refused with what to do instead.
fn open_for_writing(data: &DataArgs) -> Result<LogStore> {
    let keyring = data.keyring()?;
    let log_dir = data.log_dir();
    if held_by_another_process(&log_dir) {
        bail!(
            "the log at {} is open in another process (a running replica?): stop it first; \
             `vendctl archive` works on a stopped replica's data directory",
            log_dir.display()
        );
    }
    LogStore::open(&log_dir, keyring.store_key(), OpenOptions::default())
        .with_context(|| format!("opening the log at {}", log_dir.display()))
}

fn archive(args: RunArgs) -> Result<ExitCode> {
    let (Some(data), Some(cut)) = (args.data, args.cut) else {
        bail!("give --data and --before or --before-gseq (see `vendctl archive --help`)");
    };
    if data.archive.is_some() {
        bail!("--archive names where to read archived segments; say where to write them with --to");
    }
    let cutoff = match (cut.before_gseq, &cut.before) {
        (Some(gseq), _) => Cutoff::BeforeGseq(gseq),
        (None, Some(text)) => Cutoff::BeforeTime(parse_time("--before", text, Bound::Start)?),
        (None, None) => bail!("give --before or --before-gseq"),
    };
    let codec = match args.codec {
        CodecArg::Zstd => Codec::Zstd,
        CodecArg::Lz4 => Codec::Lz4,
    };
    let to = args.to.unwrap_or_else(|| data.data.join(ARCHIVE_SUBDIR));
    let store = open_for_writing(&data)?;
    let keyring = data.keyring()?;
    let segments = store.segments_for(cutoff)?;
    let already = store.archived().map_or(0, |mark| mark.segments);
    if segments <= already {
        say!(
            "nothing to archive: {} closed segments end before the cutoff, {already} are archived already",
            segments
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut ledger = Ledger::with_store(store)?;
    let bar = progress(segments - already, "archive");
    let started = Instant::now();
    let report = ledger.archive(segments, &to, keyring.store_key(), codec, &mut |_| {
        bar.inc(1)
    })?;
    bar.finish_and_clear();
    let entries = report.segments * ledger.store().config().segment_entries;
    let mark = ledger.store().archived().expect("just archived");
    let dir = ledger.store().resolve_archive_dir(&mark.dir);
    say!(
        "archived {} segments ({} entries, {} record bytes into {} file bytes, {} codec) to {}; the live log now starts at gseq {} after {} ({} entries/s)",
        report.segments,
        grouped(entries),
        grouped(report.record_bytes),
        grouped(report.file_bytes),
        codec.name(),
        dir.display(),
        grouped(report.through_gseq + 1),
        hex32(&mark.through_hash),
        per_second(rate(entries, started.elapsed()))
    );
    Ok(ExitCode::SUCCESS)
}

fn restore(args: RestoreArgs) -> Result<ExitCode> {
    let mut store = open_for_writing(&args.data)?;
    let keyring = args.data.keyring()?;
    let Some(mark) = store.archived().cloned() else {
        say!("nothing to restore: the live log holds every entry");
        return Ok(ExitCode::SUCCESS);
    };
    if let Some(from) = &args.data.archive {
        store.attach_archive(from, keyring.store_key());
    }
    let bar = progress(mark.segments, "restore");
    let restored = store.restore_archived(&mut |_| bar.inc(1));
    bar.finish_and_clear();
    let restored = restored?;
    say!(
        "restored {restored} segments ({} entries); the live log holds every entry again (the archive files were left in place)",
        grouped(mark.through_gseq)
    );
    Ok(ExitCode::SUCCESS)
}

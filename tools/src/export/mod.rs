//! `vendctl export`: the log as an accountant or a route driver reads it.
//!
//! `csv` and `jsonl` write one row per machine event (or, with
//! `--table sales`, a sales summary per KST day, machine and product);
//! `dex` writes one machine's EVA-DTS audit file (docs/DEX.md). Every row
//! comes from an event the projection applied, with the double-entry
//! postings the ledger made of it, so the export's sums are the ledger's.

mod dex;
mod table;

use crate::util::{Bound, DataArgs, parse_time, progress};
use anyhow::{Context, Result, bail};
use ledger::MachineId;
use ledger::event::EventEnvelope;
use ledger::projection::Projection;
use ledger::store::StoreError;
use ledger::store::record::{Content, LogEntry};
use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
#[command(
    after_help = "Example: vendctl export --data /tmp/fleet --format csv --from 2026-11-01 --to 2026-11-30 --out november.csv"
)]
pub struct Args {
    #[command(flatten)]
    data: DataArgs,
    /// Only this machine (required for `dex`).
    #[arg(long, value_name = "ID")]
    machine: Option<MachineId>,
    /// First moment to include: RFC 3339, or a date or date-time in Korean
    /// time (a bare date means from the start of that day). Not for `dex`,
    /// whose counters run since the machine was installed.
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// Last moment to include, read the same way (a bare date means through
    /// the end of that day). For `dex`: the file as a handheld would have
    /// read the machine at that moment.
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
    /// csv or jsonl (a row per event or per sales line), or dex (one
    /// machine's EVA-DTS audit file).
    #[arg(long, value_enum)]
    format: Format,
    /// For csv and jsonl: `events` (one row per event) or `sales` (units
    /// and net won per KST day, machine and product).
    #[arg(long, value_enum, default_value = "events")]
    table: Table,
    /// Write here instead of standard output.
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Jsonl,
    Dex,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Table {
    Events,
    Sales,
}

/// The time window of an export, in milliseconds of machine time.
#[derive(Clone, Copy, Debug)]
struct Window {
    from_ms: i64,
    to_ms: i64,
}

pub fn run(args: Args) -> Result<ExitCode> {
    match export(args) {
        // The reader went away (`vendctl export ... | head`): not an error.
        Err(error) if is_broken_pipe(&error) => Ok(ExitCode::SUCCESS),
        other => other,
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        let io = cause.downcast_ref::<std::io::Error>().or_else(|| {
            cause
                .downcast_ref::<csv::Error>()
                .and_then(|e| match e.kind() {
                    csv::ErrorKind::Io(io) => Some(io),
                    _ => None,
                })
        });
        io.is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn export(args: Args) -> Result<ExitCode> {
    let window = Window {
        from_ms: match &args.from {
            Some(text) => parse_time("--from", text, Bound::Start)?,
            None => i64::MIN,
        },
        to_ms: match &args.to {
            Some(text) => parse_time("--to", text, Bound::End)?,
            None => i64::MAX,
        },
    };
    if window.from_ms > window.to_ms {
        bail!("--from is after --to: nothing to export");
    }
    if args.format == Format::Dex {
        if args.from.is_some() {
            bail!(
                "--from does not apply to dex: its counters run since installation and since the last cash collection (use --to for the file as of a moment)"
            );
        }
        if args.machine.is_none() {
            bail!(
                "dex needs --machine ID: an EVA-DTS audit file describes one machine (e.g. --machine VM-001)"
            );
        }
    }
    let keyring = args.data.keyring()?;
    let store = args.data.open_store(&keyring)?;
    let mut out = open_output(args.out.as_ref())?;
    let mut skipped = Skipped::default();
    match args.format {
        Format::Dex => {
            let machine = args.machine.clone().expect("checked above");
            let mut counters = dex::Reading::default();
            let projection = scan(
                &store,
                args.machine.as_ref(),
                window,
                &mut skipped,
                |e, _| {
                    counters.record(&e.envelope.event);
                    Ok(())
                },
            )?;
            let Some(state) = projection.machines.get(&machine) else {
                bail!("machine {machine} has no events in this log (up to --to)");
            };
            let text = dex::write(&machine, state, &counters)?;
            out.write_all(text.as_bytes())?;
        }
        Format::Csv | Format::Jsonl => {
            let mut writer = table::Writer::new(args.format, args.table, &mut out)?;
            scan(
                &store,
                args.machine.as_ref(),
                window,
                &mut skipped,
                |e, p| writer.event(e, p),
            )?;
            writer.finish()?;
        }
    }
    out.flush()
        .context("writing the export (disk full, or the reader went away?)")?;
    skipped.report();
    if let Some(path) = &args.out {
        eprintln!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn open_output(path: Option<&PathBuf>) -> Result<Box<dyn Write>> {
    Ok(match path {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            Box::new(std::io::BufWriter::new(file))
        }
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    })
}

/// Entries the projection could not apply: left out of the export, and
/// named on stderr so nobody mistakes the export for the whole log.
#[derive(Default)]
struct Skipped {
    count: u64,
    first: Vec<(u64, String)>,
}

const SKIPPED_NAMED_MAX: usize = 5;

impl Skipped {
    fn add(&mut self, gseq: u64, problem: String) {
        self.count += 1;
        if self.first.len() < SKIPPED_NAMED_MAX {
            self.first.push((gseq, problem));
        }
    }

    fn report(&self) {
        if self.count == 0 {
            return;
        }
        eprintln!(
            "warning: {} entries did not apply to their machine and are not in the export (`vendctl verify` explains):",
            self.count
        );
        for (gseq, problem) in &self.first {
            eprintln!("  gseq {gseq}: {problem}");
        }
    }
}

/// Reads the log in gseq order and applies each machine event (of
/// `machine`, when given) to a projection, up to `window.to_ms` of machine
/// time, as `vendctl replay --until` does. Events inside the window are
/// handed to `row` with the projection just after them.
fn scan<B: ledger::store::backend::Backend>(
    store: &ledger::store::LogStore<B>,
    machine: Option<&MachineId>,
    window: Window,
    skipped: &mut Skipped,
    mut row: impl FnMut(&Export<'_>, &Projection) -> Result<()>,
) -> Result<Projection> {
    let mut projection = Projection::default();
    let head = store.head().gseq;
    let bar = progress(head, "export");
    // A machine whose clock passed --to is stopped there, so its stream is
    // never applied with a hole in it (the rule `replay --until` follows).
    let mut stopped: HashSet<MachineId> = HashSet::new();
    let decode = |gseq: u64, bytes: &[u8]| -> Result<(u64, Option<EventEnvelope>), StoreError> {
        let content = LogEntry::decode_content(bytes).map_err(|e| StoreError::Entry {
            gseq,
            problem: format!("undecodable record: {e}"),
        })?;
        // Operators' records and epoch markers hold no sales.
        let envelope = match content {
            Content::Event(envelope) => Some(envelope),
            Content::Operator(_) | Content::Marker => None,
        };
        Ok((gseq, envelope))
    };
    ledger::store::scan_records(store, 1, head, decode, |(gseq, envelope)| {
        if gseq % 4_096 == 0 {
            bar.set_position(gseq);
        }
        let Some(envelope) = envelope else {
            return Ok::<(), anyhow::Error>(());
        };
        if machine.is_some_and(|m| *m != envelope.machine_id) {
            return Ok(());
        }
        if envelope.at_ms > window.to_ms || stopped.contains(&envelope.machine_id) {
            stopped.insert(envelope.machine_id);
            return Ok(());
        }
        // An event that does not apply is not exported; one that does is
        // handed on with the projection just after it (a refill's row names
        // the product its slot holds).
        match projection.apply(gseq, &envelope) {
            Ok(()) if envelope.at_ms >= window.from_ms => row(
                &Export {
                    gseq,
                    envelope: &envelope,
                },
                &projection,
            ),
            Ok(()) => Ok(()),
            Err(error) => {
                skipped.add(gseq, error.to_string());
                Ok(())
            }
        }
    })?;
    bar.finish_and_clear();
    Ok(projection)
}

/// One applied event on its way out.
pub struct Export<'a> {
    pub gseq: u64,
    pub envelope: &'a EventEnvelope,
}

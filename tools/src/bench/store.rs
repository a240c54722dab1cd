//! `vendctl bench`'s store part: durable append throughput with group
//! commit, replay, verify and reopen rates of one log on this machine.

use super::Row;
use crate::util::{grouped, per_second, rate};
use anyhow::{Result, bail};
use ledger::MachineId;
use ledger::Until;
use ledger::crypto::SecretKey;
use ledger::keys::{Keyring, create_machine_keys};
use ledger::store::record::SignedEvent;
use ledger::store::{LogStore, OpenOptions};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use workload::{SIMULATION_START_MS, SimMachine};

#[derive(clap::Args)]
pub struct StoreArgs {
    /// Store: events to append per measurement.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Store: machines producing them.
    #[arg(long, default_value_t = 100)]
    machines: u32,
    /// Store: group-commit batch sizes to measure (events per synced write).
    #[arg(long, value_delimiter = ',', default_value = "1,16,128,1024,4096")]
    batch_sizes: Vec<usize>,
}

#[derive(Serialize)]
pub struct AppendFigure {
    batch: usize,
    events: usize,
    seconds: f64,
    events_per_second: f64,
    syncs_per_second: f64,
}

#[derive(Serialize)]
pub struct Figures {
    events: usize,
    machines: u32,
    mean_record_bytes: f64,
    append: Vec<AppendFigure>,
    replay_events_per_second: f64,
    replay_seconds: f64,
    verify_events_per_second: f64,
    reopen_seconds: f64,
}

/// Batch size 1 pays one fsync per event; measuring a million of them
/// would take a quarter of an hour, so small batches are measured on a
/// prefix that still runs for seconds.
const SMALL_BATCH_EVENTS_PER_BATCH_SIZE: usize = 2_000;

/// What reading the full log back costs.
struct ReadFigures {
    replay_seconds: f64,
    verify_events_per_second: f64,
    reopen_seconds: f64,
}

/// Appends, replays, verifies and reopens logs in `scratch`.
pub fn measure(args: &StoreArgs, scratch: &Path) -> Result<Figures> {
    if args.events == 0 || args.batch_sizes.is_empty() {
        bail!("nothing to measure: give --events and --batch-sizes");
    }
    let keys_dir = scratch.join("keys");
    let ids: Vec<MachineId> = (1..=args.machines).map(MachineId::numbered).collect();
    create_machine_keys(&keys_dir, &ids)?;
    let keyring = Keyring::open(&keys_dir)?;
    eprintln!(
        "store: generating {} events from {} simulated machines...",
        args.events, args.machines
    );
    let events = generate(&keyring, &ids, args.events)?;
    let mean_record_bytes =
        events.iter().map(|e| e.bytes.len() as f64).sum::<f64>() / events.len() as f64;
    let (append, full_log) = measure_appends(scratch, &keyring, &events, &args.batch_sizes)?;
    let read = measure_reads(&full_log, &keyring, events.len())?;
    Ok(Figures {
        events: events.len(),
        machines: args.machines,
        mean_record_bytes,
        append,
        replay_events_per_second: events.len() as f64 / read.replay_seconds,
        replay_seconds: read.replay_seconds,
        verify_events_per_second: read.verify_events_per_second,
        reopen_seconds: read.reopen_seconds,
    })
}

/// Appends the events into a fresh log per batch size; returns the figures
/// and a log that holds all of them, for the read measurements.
fn measure_appends(
    scratch: &Path,
    keyring: &Keyring,
    events: &[SignedEvent],
    batch_sizes: &[usize],
) -> Result<(Vec<AppendFigure>, PathBuf)> {
    let mut append = Vec::new();
    let mut full_log = None;
    for &batch in batch_sizes {
        let count = events
            .len()
            .min(batch.saturating_mul(SMALL_BATCH_EVENTS_PER_BATCH_SIZE))
            .max(batch.min(events.len()));
        let dir = scratch.join(format!("append-{batch}"));
        eprintln!("appending {count} events in batches of {batch}...");
        let (seconds, batches) = measure_append(&dir, keyring, &events[..count], batch)?;
        append.push(AppendFigure {
            batch,
            events: count,
            seconds,
            events_per_second: count as f64 / seconds,
            syncs_per_second: batches as f64 / seconds,
        });
        if count == events.len() {
            full_log = Some(dir);
        }
    }
    let Some(full_log) = full_log else {
        bail!(
            "no batch size appended all {} events; add a larger one",
            events.len()
        );
    };
    Ok((append, full_log))
}

/// Replays the full log from gseq 1, verifies it, and reopens it (from its
/// checkpoint), timing each.
fn measure_reads(full_log: &Path, keyring: &Keyring, events: usize) -> Result<ReadFigures> {
    let store = LogStore::open(full_log, keyring.store_key(), OpenOptions::default())?;
    eprintln!("replaying {} events...", store.head().gseq);
    let started = Instant::now();
    let projection = ledger::ledger::rebuild(&store, Until::End, &mut |_| {})?;
    let replay_seconds = started.elapsed().as_secs_f64();
    assert_eq!(
        projection.entries_applied as usize, events,
        "replay applies every event"
    );
    let started = Instant::now();
    ledger::verify::verify_log(&store, keyring, &mut |_| {}).map_err(|e| anyhow::anyhow!("{e}"))?;
    let verify_elapsed = started.elapsed();
    drop(store);
    let started = Instant::now();
    let ledger = ledger::Ledger::open(full_log, keyring.store_key(), OpenOptions::default())?;
    let reopen_seconds = started.elapsed().as_secs_f64();
    assert_eq!(ledger.projection().as_of_gseq as usize, events);
    Ok(ReadFigures {
        replay_seconds,
        verify_events_per_second: rate(events as u64, verify_elapsed),
        reopen_seconds,
    })
}

/// `total` events from `machines` simulated machines, taken in turns.
/// Memory is their storage: each decision is kept before it is applied.
fn generate(keyring: &Keyring, ids: &[MachineId], total: usize) -> Result<Vec<SignedEvent>> {
    let mut sims = Vec::new();
    for (n, id) in (1u64..).zip(ids) {
        let key: &SecretKey = keyring.require_machine(id)?;
        sims.push(SimMachine::new(id.clone(), key, n, SIMULATION_START_MS));
    }
    let mut events = Vec::with_capacity(total + 4);
    'outer: loop {
        for sim in &mut sims {
            sim.step_into(&mut events);
            if events.len() >= total {
                break 'outer;
            }
        }
    }
    // A decision's events belong together; trimming the tail may split the
    // last one, which is harmless for a benchmark that appends in order.
    events.truncate(total);
    Ok(events)
}

fn measure_append(
    dir: &Path,
    keyring: &Keyring,
    events: &[SignedEvent],
    batch: usize,
) -> Result<(f64, usize)> {
    let options = OpenOptions {
        create: true,
        ..OpenOptions::default()
    };
    let mut ledger = ledger::Ledger::open(dir, keyring.store_key(), options)?;
    let started = Instant::now();
    let mut batches = 0;
    for chunk in events.chunks(batch) {
        let outcome = ledger.append_events(1, SIMULATION_START_MS, chunk, keyring)?;
        debug_assert!(
            outcome
                .results
                .iter()
                .all(|r| matches!(r, ledger::store::Appended::New { .. }))
        );
        batches += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    if ledger.store().head().gseq as usize != events.len() {
        bail!(
            "appended {} of {} events",
            ledger.store().head().gseq,
            events.len()
        );
    }
    Ok((seconds, batches))
}

/// The store's lines of the standard table.
pub fn rows(f: &Figures) -> Vec<Row> {
    let mut rows = vec![Row::note(
        "store",
        format!(
            "{} events from {} machines, mean encoded event {:.0} bytes",
            grouped(f.events as u64),
            f.machines,
            f.mean_record_bytes
        ),
    )];
    for a in &f.append {
        rows.push(Row::new(
            "store",
            format!(
                "durable append, {} per fsync ({} events, {} fsyncs/s)",
                if a.batch == 1 {
                    "1 event".to_owned()
                } else {
                    format!("{} events", grouped(a.batch as u64))
                },
                grouped(a.events as u64),
                per_second(a.syncs_per_second)
            ),
            a.events_per_second,
            "events/s",
        ));
    }
    rows.push(Row::new(
        "store",
        "replay from gseq 1 (decrypt, decode, apply)".to_owned(),
        f.replay_events_per_second,
        "events/s",
    ));
    rows.push(Row::new(
        "store",
        "verify (both hash chains, postings)".to_owned(),
        f.verify_events_per_second,
        "events/s",
    ));
    rows.push(Row::new(
        "store",
        "reopen with checkpoint".to_owned(),
        f.reopen_seconds * 1_000.0,
        "ms",
    ));
    rows
}

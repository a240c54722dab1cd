//! `vendctl bench`: the standard set of measurements on this machine, one
//! table (or one JSON document): the store (durable append with group
//! commit, replay, verify, reopen), replication (`bench-replication`'s
//! four clusters) and the dashboard's page latencies on a real replica.

mod pages;
mod replication;
mod store;

use crate::say;
use crate::util::per_second;
use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
#[command(after_help = "Example: vendctl bench --only store,pages --json")]
pub struct Args {
    /// The parts to run [default: all three].
    #[arg(long, value_delimiter = ',', value_name = "PART")]
    only: Vec<Part>,
    #[command(flatten)]
    store: store::StoreArgs,
    #[command(flatten)]
    replication: replication::ReplicationArgs,
    #[command(flatten)]
    pages: pages::PagesArgs,
    /// First port of the clusters (each uses 30 from here; they run one
    /// after the other).
    #[arg(long, default_value_t = 7300)]
    base_port: u16,
    /// Where to put the scratch logs and clusters (default: a temporary
    /// directory, removed after).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum Part {
    Store,
    Replication,
    Pages,
}

/// One line of the standard table: what was measured and its figure (a
/// line without a figure describes the part's setup).
#[derive(Serialize)]
pub struct Row {
    part: &'static str,
    measure: String,
    value: Option<f64>,
    unit: &'static str,
}

impl Row {
    fn new(part: &'static str, measure: String, value: f64, unit: &'static str) -> Row {
        Row {
            part,
            measure,
            value: Some(value),
            unit,
        }
    }

    fn note(part: &'static str, measure: String) -> Row {
        Row {
            part,
            measure,
            value: None,
            unit: "",
        }
    }

    fn figure(&self) -> String {
        match self.value {
            None => String::new(),
            Some(value) if self.unit == "events/s" => format!("{} events/s", per_second(value)),
            Some(value) if self.unit == "%" => format!("{value:.1}%"),
            Some(value) => format!("{value:.2} {}", self.unit),
        }
    }
}

#[derive(Serialize)]
struct Figures {
    cores: usize,
    table: Vec<Row>,
    #[serde(skip_serializing_if = "Option::is_none")]
    store: Option<store::Figures>,
    /// `vendctl bench-replication --json`, as it printed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    replication: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pages: Option<pages::Figures>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let wanted = |part| args.only.is_empty() || args.only.contains(&part);
    let scratch = tempfile::Builder::new()
        .prefix("vendctl-bench-")
        .tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))?;
    let mut figures = Figures {
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        table: Vec::new(),
        store: None,
        replication: None,
        pages: None,
    };
    if wanted(Part::Store) {
        let measured = store::measure(&args.store, &scratch.path().join("store"))?;
        figures.table.extend(store::rows(&measured));
        figures.store = Some(measured);
    }
    if wanted(Part::Replication) {
        let dir = scratch.path().join("replication");
        std::fs::create_dir_all(&dir)?;
        let measured = replication::measure(&args.replication, &dir, args.base_port)?;
        figures.table.extend(replication::rows(&measured)?);
        figures.replication = Some(measured);
    }
    if wanted(Part::Pages) {
        let measured = pages::measure(&args.pages, scratch.path(), args.base_port)?;
        figures.table.extend(pages::rows(&measured));
        figures.pages = Some(measured);
    }
    if args.json {
        say!("{}", serde_json::to_string_pretty(&figures)?);
    } else {
        print_table(&figures);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(figures: &Figures) {
    say!(
        "{} cores; every part measured one after the other",
        figures.cores
    );
    say!();
    say!("| part | measure | figure |");
    say!("|---|---|---:|");
    for row in &figures.table {
        say!("| {} | {} | {} |", row.part, row.measure, row.figure());
    }
}

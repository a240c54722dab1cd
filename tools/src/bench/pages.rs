//! `vendctl bench`'s dashboard part: page latencies of a real replica.
//! Starts a three-replica cluster, lets a fleet of simulated machines
//! (their own events kept in memory) write the log over the real link,
//! makes an operator account, logs in to the primary's dashboard as a
//! browser does and requests each page one after the other.

use super::Row;
use crate::cluster::{self, ClusterArgs, ClusterFile};
use crate::fleet::{self, FleetArgs};
use crate::util::grouped;
use crate::web::DashboardClient;
use anyhow::{Context, Result, bail};
use ledger::operator::OperatorRole;
use replica::transport::TransportKind;
use serde::Serialize;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct PagesArgs {
    /// Dashboard: entries the fleet writes before the pages are timed.
    #[arg(long, default_value_t = 200_000)]
    page_events: u64,
    /// Dashboard: machines in that fleet.
    #[arg(long, default_value_t = 100)]
    page_machines: u32,
    /// Dashboard: sequential requests per page.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    requests: u32,
}

/// How long the fleet may take to write its events.
const FLEET_TIMEOUT_S: u64 = 900;
/// How long the primary's projection may take to reach the commit mark.
const PROJECTION_WAIT: Duration = Duration::from_secs(60);

#[derive(Serialize)]
pub struct Figures {
    entries: u64,
    machines: u32,
    requests_per_page: u32,
    /// Committed events/s while the fleet wrote the log.
    fleet_events_per_second: f64,
    pages: Vec<PageFigure>,
}

#[derive(Serialize)]
struct PageFigure {
    page: String,
    /// "primary" or "follower": which replica's dashboard served it.
    served_by: &'static str,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    bytes: usize,
}

/// The replicas of the measurement; stopped (cleanly, else killed) when
/// dropped, so an error on the way never leaves them running.
struct Replicas(Vec<Child>);

impl Drop for Replicas {
    fn drop(&mut self) {
        cluster::stop_replicas(&mut self.0);
    }
}

pub fn measure(args: &PagesArgs, scratch: &Path, base_port: u16) -> Result<Figures> {
    if args.page_machines == 0 || args.page_events < u64::from(args.page_machines) {
        bail!("nothing to measure: give --page-events at least one per --page-machines");
    }
    let dir = scratch.join("pages-cluster");
    let file = cluster::init(&ClusterArgs {
        dir: dir.clone(),
        transport: TransportKind::Udp,
        base_port: Some(base_port),
        drop_received_percent: 0,
    })?;
    let binary = cluster::replica_binary()?;
    let mut replicas = Replicas(Vec::new());
    for replica in &file.replicas {
        let log = dir.join(format!("{}.log", replica.id));
        replicas
            .0
            .push(cluster::spawn_replica(&binary, &replica.config, &log)?);
    }
    cluster::wait_for_primary(&file)?;
    eprintln!(
        "dashboard: {} machines write {} events...",
        args.page_machines,
        grouped(args.page_events)
    );
    let (summary, failures) = fleet::load(&FleetArgs {
        cluster: dir.clone(),
        machines: args.page_machines,
        events_per_machine: args.page_events.div_ceil(u64::from(args.page_machines)),
        seed: 1,
        timeout_s: FLEET_TIMEOUT_S,
        rate: None,
        duration: None,
        dark_percent: 0,
        memory_ledgers: true,
        idle: false,
    })?;
    fleet::all_finished(failures)?;
    let password = crate::user::generated_password("Bench");
    let (primary_id, _) = crate::user::add_account(&dir, "bench", OperatorRole::Admin, &password)
        .context("making the benchmark's dashboard account")?;
    let entries = wait_for_projection(&file, &primary_id, summary.events_acked)?;
    let pages = time_pages(&file, &primary_id, &password, entries, args.requests)?;
    drop(replicas);
    Ok(Figures {
        entries,
        machines: args.page_machines,
        requests_per_page: args.requests,
        fleet_events_per_second: summary.events_per_second,
        pages,
    })
}

/// Waits until the primary's projection (refreshed every half second)
/// holds every event the fleet had acknowledged; the entries in the log.
fn wait_for_projection(file: &ClusterFile, primary: &str, events: u64) -> Result<u64> {
    let replica = replica_named(file, primary)?;
    let deadline = Instant::now() + PROJECTION_WAIT;
    loop {
        let status = cluster::fetch_status(&replica.dashboard)?;
        if status.projection_entries >= events {
            return Ok(status.commit);
        }
        if Instant::now() > deadline {
            bail!(
                "{primary}'s projection holds {} of the fleet's {events} events after {} s (role {})",
                status.projection_entries,
                PROJECTION_WAIT.as_secs(),
                status.role
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn replica_named<'a>(file: &'a ClusterFile, id: &str) -> Result<&'a cluster::ClusterReplica> {
    file.replicas
        .iter()
        .find(|r| r.id == id)
        .with_context(|| format!("no replica {id} in the cluster file"))
}

/// The pages an operator opens, from the overview down to a deep page of
/// the audit log; the overview again on a follower.
fn time_pages(
    file: &ClusterFile,
    primary: &str,
    password: &str,
    entries: u64,
    requests: u32,
) -> Result<Vec<PageFigure>> {
    let deep = entries / 10;
    let pages = [
        "/".to_owned(),
        "/machines/VM-001".to_owned(),
        "/sales?period=day".to_owned(),
        "/sales?period=month".to_owned(),
        "/reconciliation".to_owned(),
        "/audit".to_owned(),
        format!("/audit?before={deep}"),
        "/audit?machine=VM-007".to_owned(),
        "/replication".to_owned(),
        "/api/v1/machines".to_owned(),
        "/api/v1/sales.csv?period=day".to_owned(),
    ];
    let mut primary_client = logged_in(&replica_named(file, primary)?.dashboard, password)?;
    let mut figures = Vec::new();
    for page in &pages {
        figures.push(time_page(&mut primary_client, page, "primary", requests)?);
    }
    let follower = file
        .replicas
        .iter()
        .find(|r| r.id != primary)
        .context("a cluster without followers")?;
    let mut follower_client = logged_in(&follower.dashboard, password)?;
    figures.push(time_page(&mut follower_client, "/", "follower", requests)?);
    Ok(figures)
}

/// A client logged in as the benchmark's account; the account is
/// committed, but a replica's projection may take up to half a second to
/// show it, so a refused login is tried again for a while.
fn logged_in(dashboard: &str, password: &str) -> Result<DashboardClient> {
    let deadline = Instant::now() + PROJECTION_WAIT;
    loop {
        let mut client = DashboardClient::new(dashboard);
        match client.log_in("bench", password) {
            Ok(()) => return Ok(client),
            Err(error) if Instant::now() > deadline => return Err(error),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

fn time_page(
    client: &mut DashboardClient,
    page: &str,
    served_by: &'static str,
    requests: u32,
) -> Result<PageFigure> {
    let (status, body) = client.get(page)?;
    if status != 200 {
        bail!("{page} answered {status} on the {served_by}");
    }
    let mut times = Vec::with_capacity(requests as usize);
    for _ in 0..requests {
        let started = Instant::now();
        let (status, _) = client.get(page)?;
        times.push(started.elapsed());
        if status != 200 {
            bail!("{page} answered {status} on the {served_by}");
        }
    }
    times.sort();
    let quantile = |p: f64| {
        let rank = ((times.len() as f64) * p).ceil() as usize;
        times[rank.clamp(1, times.len()) - 1].as_secs_f64() * 1_000.0
    };
    Ok(PageFigure {
        page: page.to_owned(),
        served_by,
        p50_ms: quantile(0.5),
        p99_ms: quantile(0.99),
        max_ms: quantile(1.0),
        bytes: body.len(),
    })
}

/// The dashboard's lines of the standard table.
pub fn rows(f: &Figures) -> Vec<Row> {
    let mut rows = vec![Row::note(
        "dashboard",
        format!(
            "{} entries from {} machines (written at {:.0} events/s), {} sequential requests per page",
            grouped(f.entries),
            f.machines,
            f.fleet_events_per_second,
            f.requests_per_page
        ),
    )];
    for page in &f.pages {
        rows.push(Row::new(
            "dashboard",
            format!(
                "`{}` on the {}: p99 (p50 {:.2} ms, max {:.2} ms, {} bytes)",
                page.page,
                page.served_by,
                page.p50_ms,
                page.max_ms,
                grouped(page.bytes as u64)
            ),
            page.p99_ms,
            "ms",
        ));
    }
    rows
}

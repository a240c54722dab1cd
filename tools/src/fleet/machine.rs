//! One simulated machine of a fleet: it sells through its `MachineCore` in
//! the machine app's crash-safe order (every decision stored in its own
//! ledger first, applied after), ships its events with the real uplink,
//! goes offline now and then, and times how long each decision waits for
//! the fleet's acknowledgement.

use anyhow::{Result, bail};
use ledger::crypto::{LINK_KEY_CONTEXT, SecretKey};
use ledger::keys::SingleMachineKey;
use ledger::store::Appended;
use ledger::store::record::SignedEvent;
use ledger::{Ledger, MachineId, Prepared};
use link::driver::{LocalLedger, UplinkControl, UplinkReport, spawn_uplink};
use link::uplink::{HandshakeRefused, LocalEvents, Uplink, UplinkStats};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use workload::{SIMULATION_START_MS, SimMachine};

/// Reports an uplink may queue before it waits for the machine to read
/// them.
const UPLINK_REPORTS_MAX: usize = 1_024;
/// Acknowledgement latencies kept per machine (the rest are counted, not
/// kept), so a long run's memory stays bounded.
const LATENCIES_KEPT_MAX: usize = 200_000;

#[derive(Serialize, Clone, Default)]
pub struct MachineSummary {
    pub id: String,
    pub events: u64,
    pub acked: u64,
    pub resent: u64,
    pub failovers_seen: u64,
    pub offline_periods: u64,
    /// How long each decision waited for its acknowledgement, in µs, of
    /// those the machine stayed online for (stored to acknowledged): the
    /// cluster's commit latency as a machine sees it.
    #[serde(skip)]
    pub latencies_us: Vec<u32>,
    /// The same, for the decisions made in the second half of the selling
    /// time (after the first connections and installations of a large
    /// fleet: its steady state).
    #[serde(skip)]
    pub second_half_latencies_us: Vec<u32>,
    /// How long the decisions stored while the machine was offline, or
    /// waiting when it went offline, waited: the outage (300 to 1,500 ms
    /// by default), which says nothing of the cluster. Not in the two
    /// above.
    #[serde(skip)]
    pub outage_latencies_us: Vec<u32>,
}

/// Where a machine keeps its own events: a real RocksDB ledger (as vend-vm
/// does), or memory, for load generators running thousands of machines.
#[derive(Clone)]
pub enum Local {
    Disk(Arc<Mutex<Ledger>>),
    Memory(Arc<Mutex<Vec<SignedEvent>>>),
}

impl Local {
    /// Stores one decision's events, as the machine app does: anything but
    /// a fresh append means the decision was not stored.
    fn append(&self, chain: &SingleMachineKey, prepared: &Prepared) -> Result<()> {
        match self {
            Local::Disk(ledger) => append_to_own_ledger(ledger, chain, prepared),
            Local::Memory(events) => {
                let mut events = events
                    .lock()
                    .map_err(|_| anyhow::anyhow!("events lock poisoned"))?;
                events.extend_from_slice(prepared.signed());
                Ok(())
            }
        }
    }
}

/// The uplink's view of a machine's events, wherever they are kept.
#[derive(Clone)]
struct LocalSource {
    machine: MachineId,
    local: Local,
}

impl LocalEvents for LocalSource {
    fn local_tip(&self) -> u64 {
        match &self.local {
            Local::Disk(ledger) => LocalLedger {
                machine: self.machine.clone(),
                ledger: ledger.clone(),
            }
            .local_tip(),
            Local::Memory(events) => events.lock().map_or(0, |e| e.len() as u64),
        }
    }

    fn events_from(&self, from: u64, max: usize) -> Vec<SignedEvent> {
        match &self.local {
            Local::Disk(ledger) => LocalLedger {
                machine: self.machine.clone(),
                ledger: ledger.clone(),
            }
            .events_from(from, max),
            // Machine seqs start at 1, so event n is at index n - 1.
            Local::Memory(events) => events.lock().map_or_else(
                |_| Vec::new(),
                |events| {
                    let start = usize::try_from(from.saturating_sub(1)).unwrap_or(usize::MAX);
                    events.iter().skip(start).take(max).cloned().collect()
                },
            ),
        }
    }
}

pub struct MachineSetup {
    pub id: MachineId,
    pub key: SecretKey,
    pub local: Local,
    pub sim: SimMachine,
    pub chain: SingleMachineKey,
}

/// How a simulated machine paces its customers and its network outages.
#[derive(Clone, Debug)]
pub struct Pace {
    /// Decisions (coins, purchases, refills...) per burst.
    pub burst: Range<u32>,
    /// Pause between bursts, in milliseconds (unless `rate` paces them).
    pub pause_ms: Range<u64>,
    /// Events per second this machine aims at; pauses are then as long as
    /// it takes to stay on that rate.
    pub rate: Option<f64>,
    /// Chance per burst that the machine loses its network.
    pub offline_chance: f64,
    /// How long an outage lasts, in milliseconds.
    pub offline_ms: Range<u64>,
    /// Fleet-wide dark spells (a cell tower going down): every `every`, a
    /// machine joins one with chance `share`, for `offline_ms`.
    pub dark_spells: Option<DarkSpells>,
}

#[derive(Clone, Debug)]
pub struct DarkSpells {
    /// When the run started, so every machine's spells line up.
    pub from: Instant,
    pub every: Duration,
    pub share: f64,
}

/// What a machine needs to start its uplink, again after every offline
/// period.
struct LinkStarter {
    id: MachineId,
    link_key: SecretKey,
    addresses: Vec<String>,
    local: LocalSource,
    reports: mpsc::Sender<UplinkReport>,
}

type RunningUplink = (UplinkControl, JoinHandle<UplinkStats>);

impl LinkStarter {
    /// An uplink that resends from `acked`, the mark the fleet last
    /// acknowledged (as a real machine's restarted uplink does).
    fn start(&self, acked: u64) -> RunningUplink {
        let uplink = Uplink::new(
            self.id.clone(),
            self.link_key.clone(),
            self.addresses.clone(),
            acked,
        );
        spawn_uplink(uplink, self.local.clone(), self.reports.clone())
    }
}

/// One machine of the fleet while it runs.
pub struct MachineRun {
    setup: MachineSetup,
    target: u64,
    /// Selling stops here (a timed run), or at `target` events.
    sell_until: Option<Instant>,
    /// An idle machine installs itself and then sells nothing, holding its
    /// connection (the link's pings only) until `sell_until`.
    idle: bool,
    pace: Pace,
    rng: ChaCha8Rng,
    link: LinkStarter,
    /// `None` while the machine is offline.
    running: Option<RunningUplink>,
    reports: mpsc::Receiver<UplinkReport>,
    offline_until: Option<Instant>,
    /// The last dark spell this machine considered joining.
    last_spell: u64,
    last_primary: Option<String>,
    /// Why the replicas last refused this machine's handshake, until one
    /// takes a session (see `link::uplink::HandshakeRefused`).
    refused: Option<HandshakeRefused>,
    /// Decisions waiting for their acknowledgement: last seq, stored at,
    /// and whether an outage came between (see `outage_latencies_us`).
    waiting: VecDeque<(u64, Instant, bool)>,
    /// Halfway through the selling time, when there is one.
    second_half_from: Option<Instant>,
    /// When the rate's clock started and the events sold by then: after
    /// the first burst (an installation is a dozen events at once, not
    /// customers), so a slow rate paces customers, not the setup.
    rate_since: Option<(Instant, u64)>,
    summary: MachineSummary,
}

impl MachineRun {
    pub fn start(
        setup: MachineSetup,
        target: u64,
        addresses: Vec<String>,
        seed: u64,
        pace: Pace,
    ) -> MachineRun {
        let (reports_tx, reports) = mpsc::channel(UPLINK_REPORTS_MAX);
        let link = LinkStarter {
            id: setup.id.clone(),
            link_key: setup.key.derive(LINK_KEY_CONTEXT),
            addresses,
            local: LocalSource {
                machine: setup.id.clone(),
                local: setup.local.clone(),
            },
            reports: reports_tx,
        };
        MachineRun {
            running: Some(link.start(0)),
            summary: MachineSummary {
                id: setup.id.to_string(),
                ..MachineSummary::default()
            },
            setup,
            target,
            sell_until: None,
            idle: false,
            pace,
            rng: ChaCha8Rng::seed_from_u64(seed),
            link,
            reports,
            offline_until: None,
            last_spell: 0,
            last_primary: None,
            refused: None,
            waiting: VecDeque::new(),
            second_half_from: None,
            rate_since: None,
        }
    }

    /// Stops selling at `at` (the machine still waits for its
    /// acknowledgements).
    pub fn sell_until(&mut self, at: Instant) {
        self.sell_until = Some(at);
        let now = Instant::now();
        self.second_half_from = Some(now + at.saturating_duration_since(now) / 2);
    }

    /// Makes the machine idle: once installed (its first decision) it
    /// sells nothing more and holds its connection until the selling time
    /// set by [`MachineRun::sell_until`] is over, so what an idle
    /// connection costs a replica can be measured.
    pub fn hold_idle(&mut self) {
        self.idle = true;
    }

    /// Whether the machine still has customers.
    pub fn selling(&self) -> bool {
        self.summary.events < self.target
            && self.sell_until.is_none_or(|at| Instant::now() < at)
            && !(self.idle && self.setup.sim.state().installed)
    }

    /// Whether the selling time (if any) is over.
    fn time_is_up(&self) -> bool {
        self.sell_until.is_some_and(|at| Instant::now() >= at)
    }

    /// A burst of customers. Each decision is stored in the machine's own
    /// ledger before the machine applies it, then the uplink is woken.
    pub fn sell_burst(&mut self) -> Result<()> {
        if self.rate_due().is_some_and(|due| Instant::now() < due) {
            // Woken early (an outage ended): the next customer is not due.
            return Ok(());
        }
        for _ in 0..self.rng.random_range(self.pace.burst.clone()) {
            let (local, chain) = (&self.setup.local, &self.setup.chain);
            let applied = self
                .setup
                .sim
                .step(|prepared| local.append(chain, prepared))?;
            self.summary.events += applied.len() as u64;
            let offline = self.running.is_none();
            self.waiting
                .push_back((self.setup.sim.state().last_seq, Instant::now(), offline));
            if !self.selling() {
                break;
            }
        }
        if self.rate_since.is_none() {
            self.rate_since = Some((Instant::now(), self.summary.events));
        }
        if let Some((control, _)) = &self.running {
            control.appended.notify_one();
        }
        Ok(())
    }

    /// Now and then the machine loses its network for a while and keeps
    /// selling; when the while is over, a new uplink resends everything
    /// after the acknowledged mark.
    pub async fn go_offline_or_back(&mut self) -> Result<()> {
        match (self.running.is_some(), self.offline_until) {
            (true, _) if self.selling() && self.goes_dark() => {
                let running = self.running.take().expect("matched Some");
                for (_, _, through_outage) in &mut self.waiting {
                    *through_outage = true;
                }
                self.summary.resent += stop_uplink(running).await?.events_resent;
                self.summary.offline_periods += 1;
                let offline_ms = self.rng.random_range(self.pace.offline_ms.clone());
                self.offline_until = Some(Instant::now() + Duration::from_millis(offline_ms));
            }
            (false, Some(until)) if Instant::now() >= until => {
                self.running = Some(self.link.start(self.summary.acked));
                self.offline_until = None;
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether the machine loses its network now: by chance, or because a
    /// fleet-wide dark spell began and it is among those it takes.
    fn goes_dark(&mut self) -> bool {
        if let Some(spells) = &self.pace.dark_spells {
            // Spells begin half an interval in, then every interval.
            let every = spells.every.as_millis().max(1);
            let spell = ((spells.from.elapsed().as_millis() + every / 2) / every) as u64;
            if spell > self.last_spell {
                self.last_spell = spell;
                let share = spells.share;
                return self.rng.random_bool(share);
            }
        }
        self.pace.offline_chance > 0.0 && self.rng.random_bool(self.pace.offline_chance)
    }

    /// When the next burst is due to keep the machine on its rate, if it
    /// has one.
    fn rate_due(&self) -> Option<Instant> {
        let rate = self.pace.rate?;
        let (since, events) = self.rate_since?;
        let paced = self.summary.events.saturating_sub(events);
        Some(since + Duration::from_secs_f64(paced as f64 / rate))
    }

    /// Customers do not come back to back: waits a moment, taking the
    /// uplink's reports meanwhile.
    pub async fn pause_taking_reports(&mut self) {
        let pause = match self.pace.rate {
            // An idle machine has no customers to wait for: it sleeps until
            // its time is up (or its acknowledgement comes, below).
            _ if self.idle && !self.selling() => Duration::MAX,
            // Due when the events so far fit the rate.
            Some(_) => self.rate_due().map_or(Duration::ZERO, |due| {
                due.saturating_duration_since(Instant::now())
            }),
            None => Duration::from_millis(self.rng.random_range(self.pace.pause_ms.clone())),
        };
        // An outage ends on time even when customers are far apart (a
        // slow rate): the machine wakes to come back online.
        let pause = match self.offline_until {
            Some(until) => pause.min(until.saturating_duration_since(Instant::now())),
            None => pause,
        };
        // Nor does the pause outlast the selling time: at a slow rate a
        // machine's installation alone is minutes' worth of its share, and
        // it would sleep that long after `--duration` ended.
        let pause = match self.sell_until {
            Some(until) => pause.min(until.saturating_duration_since(Instant::now())),
            None => pause,
        };
        let pause = tokio::time::sleep(pause);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                Some(report) = self.reports.recv() => self.on_report(report),
            }
        }
    }

    fn on_report(&mut self, report: UplinkReport) {
        match report {
            UplinkReport::Acknowledged(seq) => {
                self.summary.acked = self.summary.acked.max(seq);
                let now = Instant::now();
                while let Some(&(last, at, through_outage)) = self.waiting.front() {
                    if last > seq {
                        break;
                    }
                    self.waiting.pop_front();
                    let waited = now.duration_since(at).as_micros();
                    let waited = u32::try_from(waited).unwrap_or(u32::MAX);
                    if through_outage {
                        let outage = &mut self.summary.outage_latencies_us;
                        if outage.len() < LATENCIES_KEPT_MAX {
                            outage.push(waited);
                        }
                        continue;
                    }
                    if self.summary.latencies_us.len() < LATENCIES_KEPT_MAX {
                        self.summary.latencies_us.push(waited);
                    }
                    let late = &mut self.summary.second_half_latencies_us;
                    if self.second_half_from.is_some_and(|from| at >= from)
                        && late.len() < LATENCIES_KEPT_MAX
                    {
                        late.push(waited);
                    }
                }
            }
            UplinkReport::State {
                primary, refused, ..
            } => {
                if let Some(primary) = primary {
                    if self.last_primary.as_ref().is_some_and(|p| *p != primary) {
                        self.summary.failovers_seen += 1;
                    }
                    self.last_primary = Some(primary);
                }
                if let (None, Some(now)) = (&self.refused, &refused) {
                    // Said at once, not only when the time runs out.
                    eprintln!("{}: {now}; retrying", self.summary.id);
                }
                self.refused = refused;
            }
            UplinkReport::Remote(_) => {}
        }
    }

    /// Why the replicas refuse this machine, while they do.
    pub fn refused(&self) -> Option<&HandshakeRefused> {
        self.refused.as_ref()
    }

    /// Everything sold is acknowledged, and the machine is online (so the
    /// last acknowledgement came over a live link).
    pub fn finished(&self) -> bool {
        !self.selling()
            && self.summary.acked >= self.recorded()
            && self.running.is_some()
            && (!self.idle || self.time_is_up())
    }

    /// The machine's own count of the events it has recorded, over every
    /// run of it.
    pub fn recorded(&self) -> u64 {
        self.setup.sim.state().last_seq
    }

    /// Whether the machine has its network now.
    pub fn online(&self) -> bool {
        self.running.is_some()
    }

    pub fn summary(&self) -> &MachineSummary {
        &self.summary
    }

    pub async fn stop(mut self) -> Result<MachineSummary> {
        if let Some(running) = self.running.take() {
            self.summary.resent += stop_uplink(running).await?.events_resent;
        }
        Ok(self.summary)
    }
}

async fn stop_uplink((control, task): RunningUplink) -> Result<UplinkStats> {
    // The uplink may have stopped already; then there is nobody to tell.
    let _ = control.stop.send(true);
    Ok(task.await?)
}

/// Stores one decision in the machine's own ledger, as the machine app
/// does: anything but a fresh append means the decision was not stored.
fn append_to_own_ledger(
    ledger: &Mutex<Ledger>,
    chain: &SingleMachineKey,
    prepared: &Prepared,
) -> Result<()> {
    let at_ms = prepared.at_ms().unwrap_or(SIMULATION_START_MS);
    let mut ledger = ledger
        .lock()
        .map_err(|_| anyhow::anyhow!("ledger lock poisoned"))?;
    let outcome = ledger.append_events(0, at_ms, prepared.signed(), chain)?;
    if let Some(problem) = outcome
        .results
        .iter()
        .find(|r| !matches!(r, Appended::New { .. }))
    {
        bail!(
            "{}: the machine's ledger refused an event: {problem:?}",
            chain.machine
        );
    }
    Ok(())
}

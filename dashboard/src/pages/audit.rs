//! The audit log: every entry of this replica's log with its gseq, epoch,
//! hashes, filtered by machine, kind and time, newest first.
//!
//! Paging is by key (a gseq to continue below or above), never by offset,
//! so a page deep in a large log costs what the first one does: without a
//! filter a page reads about a page of entries; a machine filter reads
//! that machine's entries through the replica's index; a time range is
//! turned into a gseq range by binary search on the log time. A kind
//! filter reads at most `SCAN_ENTRIES_MAX` entries per page and says how
//! far it got.

use super::{Section, Viewer};
use crate::app::AppState;
use crate::chain::ChainStatus;
use crate::format;
use crate::pages::errors::Problem;
use crate::ports::{EntryKind, LogEntryView, LogReader, READ_ENTRIES_MAX, ReadError};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Html;
use ledger::MachineId;
use maud::{Markup, html};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Entries per page.
pub const PAGE_ENTRIES: usize = 50;
/// Most entries one page reads looking for matches.
pub const SCAN_ENTRIES_MAX: u64 = 20_000;

/// Kinds offered in the filter (machine events, then the log's own).
pub const KINDS: [&str; 26] = [
    "product_purchased",
    "purchase_cancelled",
    "money_inserted",
    "money_rejected",
    "change_returned",
    "change_owed",
    "change_owed_settled",
    "slot_refilled",
    "tube_loaded",
    "cash_collected",
    "price_changed",
    "product_renamed",
    "slot_configured",
    "installed",
    "admin_logged_in",
    "admin_login_failed",
    "admin_locked_out",
    "admin_logged_out",
    "admin_password_changed",
    "remote_command_rejected",
    "epoch_started",
    "user_added",
    "user_disabled",
    "password_changed",
    "command_requested",
    "alert_acknowledged",
];

#[derive(Deserialize, Default, Clone)]
pub struct AuditQuery {
    #[serde(default)]
    pub machine: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    /// A time in KST or RFC 3339: entries logged at or after it.
    #[serde(default)]
    pub from: Option<String>,
    /// Entries logged at or before it (a bare date: through its end).
    #[serde(default)]
    pub to: Option<String>,
    /// The next page (older): entries below this gseq.
    #[serde(default)]
    pub before: Option<String>,
    /// The previous page (newer): entries above this gseq.
    #[serde(default)]
    pub after: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AuditPage {
    pub tip: u64,
    pub head_hash: Option<String>,
    pub chain: ChainStatus,
    /// Whether each entry on this page links to the one before it (only
    /// checked where the page is contiguous).
    pub page_links_ok: bool,
    /// Newest first.
    pub entries: Vec<LogEntryView>,
    /// Continue with older entries below this gseq.
    pub next_before: Option<u64>,
    /// Continue with newer entries above this gseq.
    pub previous_after: Option<u64>,
    /// Entries read for this page (a kind filter may read many).
    pub scanned: u64,
}

struct Filter {
    machine: Option<MachineId>,
    kind: Option<String>,
    low: u64,
    high: u64,
    newest_first: bool,
}

fn gseq_param(text: Option<&str>) -> Result<Option<u64>, Problem> {
    match text.filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| Problem::new(StatusCode::BAD_REQUEST, format!("{text:?} is not a gseq"))),
    }
}

fn time_param(text: Option<&str>, end: bool) -> Result<Option<i64>, Problem> {
    match text.filter(|t| !t.trim().is_empty()) {
        None => Ok(None),
        Some(text) => format::parse_time(text, end).map(Some).ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                format!("{text:?} is not a time (use 2026-11-23, 2026-11-23 14:05 or RFC 3339)"),
            )
        }),
    }
}

/// The kind of an entry as filters name it.
pub fn kind_label(entry: &LogEntryView) -> String {
    match &entry.kind {
        EntryKind::Event { event, .. } => event.clone(),
        EntryKind::Operator { action, .. } => action.clone(),
        other => serde_json::to_value(other)
            .ok()
            .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
            .unwrap_or_default(),
    }
}

fn read(log: &dyn LogReader, from: u64, to: u64) -> Result<Vec<LogEntryView>, ReadError> {
    match log.entries(from, to) {
        Err(ReadError::BeyondTip { .. }) => Ok(Vec::new()),
        other => other,
    }
}

/// The first gseq in `low..=high` logged at or after `at_ms` (binary
/// search: the primary's clock moves forward with the log).
fn first_logged_at_or_after(
    log: &dyn LogReader,
    low: u64,
    high: u64,
    at_ms: i64,
) -> Result<u64, ReadError> {
    let (mut low, mut high) = (low, high.saturating_add(1));
    while low < high {
        let middle = low + (high - low) / 2;
        let logged = read(log, middle, middle)?
            .first()
            .map_or(i64::MAX, |e| e.logged_ms);
        if logged < at_ms {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    Ok(low)
}

/// Reads matching entries in the filter's direction; returns them, how many
/// entries were read, and where reading stopped (the last gseq looked at).
fn scan(
    log: &dyn LogReader,
    filter: &Filter,
    limit: usize,
) -> Result<(Vec<LogEntryView>, u64, Option<u64>), ReadError> {
    let mut found = Vec::new();
    let mut scanned = 0u64;
    let (mut low, mut high) = (filter.low, filter.high);
    while low <= high && found.len() < limit && scanned < SCAN_ENTRIES_MAX {
        let mut batch = match &filter.machine {
            Some(machine) => {
                log.machine_entries(machine, low, high, filter.newest_first, READ_ENTRIES_MAX)?
            }
            None if filter.newest_first => {
                let from = high.saturating_sub(READ_ENTRIES_MAX as u64 - 1).max(low);
                let mut batch = read(log, from, high)?;
                batch.reverse();
                if batch.is_empty() && from > low {
                    high = from - 1;
                    continue;
                }
                batch
            }
            None => read(
                log,
                low,
                high.min(low.saturating_add(READ_ENTRIES_MAX as u64 - 1)),
            )?,
        };
        if batch.is_empty() {
            return Ok((found, scanned, None));
        }
        let mut stopped = None;
        for entry in batch.drain(..) {
            scanned += 1;
            stopped = Some(entry.gseq);
            if filter
                .kind
                .as_ref()
                .is_none_or(|k| kind_label(&entry) == *k)
            {
                found.push(entry);
                if found.len() == limit {
                    break;
                }
            }
        }
        let Some(last) = stopped else { break };
        if filter.newest_first {
            match last.checked_sub(1) {
                Some(next) => high = next,
                None => break,
            }
        } else {
            low = last + 1;
        }
        if found.len() == limit {
            return Ok((found, scanned, Some(last)));
        }
    }
    let more = low <= high;
    let stopped = if filter.newest_first {
        high + 1
    } else {
        low.saturating_sub(1)
    };
    Ok((found, scanned, more.then_some(stopped)))
}

fn build_filter(query: &AuditQuery, log: &dyn LogReader, tip: u64) -> Result<Filter, Problem> {
    let machine = match query.machine.as_deref().filter(|m| !m.is_empty()) {
        None => None,
        Some(text) => Some(super::machine::parse_machine(text)?),
    };
    let kind = query.kind.clone().filter(|k| !k.is_empty());
    if let Some(kind) = &kind
        && (kind.len() > 64 || !kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
    {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!("{kind:?} is not a kind of entry"),
        ));
    }
    let before = gseq_param(query.before.as_deref())?;
    let after = gseq_param(query.after.as_deref())?;
    let from_ms = time_param(query.from.as_deref(), false)?;
    let to_ms = time_param(query.to.as_deref(), true)?;
    let mut low = after.map_or(1, |a| a.saturating_add(1)).max(1);
    let mut high = before.map_or(tip, |b| b.saturating_sub(1)).min(tip);
    let storage = |e: ReadError| Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    if let Some(from_ms) = from_ms {
        low = low.max(first_logged_at_or_after(log, 1, tip, from_ms).map_err(storage)?);
    }
    if let Some(to_ms) = to_ms {
        let first_after =
            first_logged_at_or_after(log, 1, tip, to_ms.saturating_add(1)).map_err(storage)?;
        high = high.min(first_after.saturating_sub(1));
    }
    Ok(Filter {
        machine,
        kind,
        low,
        high,
        newest_first: after.is_none() || before.is_some(),
    })
}

/// Whether each entry links to the next older one on a contiguous page.
fn links_ok(entries: &[LogEntryView]) -> bool {
    entries.windows(2).all(|pair| {
        let (newer, older) = (&pair[0], &pair[1]);
        newer.gseq != older.gseq + 1 || newer.prev_hash == older.hash
    })
}

/// What one page's reading found.
struct Scanned {
    /// Newest first.
    entries: Vec<LogEntryView>,
    scanned: u64,
    /// Where reading stopped, when there is more in that direction.
    stopped: Option<u64>,
    newest_first: bool,
    head_hash: Option<String>,
}

fn audit_blocking(log: &dyn LogReader, query: &AuditQuery, tip: u64) -> Result<Scanned, Problem> {
    let filter = build_filter(query, log, tip)?;
    let storage = |e: ReadError| Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    let (mut entries, scanned, stopped) = scan(log, &filter, PAGE_ENTRIES).map_err(storage)?;
    if !filter.newest_first {
        entries.reverse();
    }
    let head_hash = read(log, tip, tip)
        .map_err(storage)?
        .first()
        .map(|e| e.hash.clone());
    Ok(Scanned {
        entries,
        scanned,
        stopped,
        newest_first: filter.newest_first,
        head_hash,
    })
}

pub async fn model(app: &AppState, query: &AuditQuery) -> Result<AuditPage, Problem> {
    let tip = app.snapshot().status.tip;
    let log: Arc<dyn LogReader> = app.ports.log.clone();
    let query_owned = query.clone();
    let Scanned {
        entries,
        scanned,
        stopped,
        newest_first,
        head_hash,
    } = tokio::task::spawn_blocking(move || audit_blocking(log.as_ref(), &query_owned, tip))
        .await
        .map_err(|_| Problem::new(StatusCode::SERVICE_UNAVAILABLE, "the log reader stopped"))??;
    let (next_before, previous_after) = if newest_first {
        (
            stopped,
            entries
                .first()
                .map(|e| e.gseq)
                .filter(|_| query.before.is_some()),
        )
    } else {
        (entries.last().map(|e| e.gseq), stopped)
    };
    Ok(AuditPage {
        tip,
        head_hash,
        chain: app.chain.borrow().clone(),
        page_links_ok: links_ok(&entries),
        entries,
        next_before,
        previous_after,
        scanned,
    })
}

pub async fn page(
    State(app): State<AppState>,
    viewer: Viewer,
    Query(query): Query<AuditQuery>,
) -> Result<Html<String>, Problem> {
    let audit = model(&app, &query).await?;
    let keep = filter_params(&query);
    let machines: Vec<String> = app
        .projection()
        .machines
        .keys()
        .map(|m| m.to_string())
        .collect();
    let body = html! {
        h1 { "Audit log" }
        (chain_panel(&audit))
        section.panel {
            form.filters method="get" action="/audit" {
                label { "Machine" select name="machine" {
                    option value="" { "All" }
                    @for m in &machines { option value=(m) selected[query.machine.as_deref() == Some(m.as_str())] { (m) } }
                } }
                label { "Kind" select name="kind" {
                    option value="" { "All" }
                    @for k in KINDS { option value=(k) selected[query.kind.as_deref() == Some(k)] { (k.replace('_', " ")) } }
                } }
                label { "From (KST)" input type="text" name="from" placeholder="2026-11-23 09:00" value=[query.from.as_deref()]; }
                label { "To (KST)" input type="text" name="to" placeholder="2026-11-23" value=[query.to.as_deref()]; }
                button type="submit" { "Filter" }
                span.exports { "Export this page" a href={"/api/v1/audit.csv?" (keep)} { "CSV" } a href={"/api/v1/audit?" (keep)} { "JSON" } }
            }
            (entry_table(&audit.entries))
            div.pager {
                @match audit.previous_after {
                    Some(after) => a href={"/audit?" (keep) "&after=" (after)} { "← Newer" },
                    None => span {},
                }
                span.muted { (audit.scanned) " entries read for this page" }
                @match audit.next_before {
                    Some(before) => a href={"/audit?" (keep) "&before=" (before)} { "Older →" },
                    None => span {},
                }
            }
        }
    };
    Ok(super::layout(
        &app,
        Some(&viewer.operator),
        viewer.host(),
        Section::Audit,
        "Audit log",
        body,
    ))
}

/// The filter's parameters, to carry into paging and export links.
fn filter_params(query: &AuditQuery) -> String {
    let pairs: Vec<(&str, &str)> = [
        ("machine", query.machine.as_deref()),
        ("kind", query.kind.as_deref()),
        ("from", query.from.as_deref()),
        ("to", query.to.as_deref()),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| (k, v)))
    .collect();
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

fn chain_panel(audit: &AuditPage) -> Markup {
    let chain = &audit.chain;
    html! {
        section.panel {
            dl.facts {
                dt { "Chain" }
                dd {
                    @match &chain.problem {
                        Some(problem) => span.chain-bad { "broken: " (problem) },
                        None if chain.verified_to == 0 => span.muted { "not checked yet" },
                        None => span.chain-ok { "verified" },
                    }
                    " from genesis to gseq " (format::count(chain.verified_to))
                    @if chain.checked_at_ms > 0 { " (" (format::time(chain.checked_at_ms)) ")" }
                    ". Every record's hash covers the previous record's hash; this replica checked its whole log when it started and checks every record it appends."
                }
                dt { "Head" }
                dd.mono { "gseq " (audit.tip) " · " (audit.head_hash.as_deref().unwrap_or("—")) }
                dt { "This page" }
                dd {
                    @if audit.page_links_ok { span.chain-ok { "links verified" } } @else { span.chain-bad { "a link does not match" } }
                }
            }
        }
    }
}

fn entry_table(entries: &[LogEntryView]) -> Markup {
    html! {
        @if entries.is_empty() {
            p.muted { "No entries match." }
        } @else {
            table {
                thead { tr {
                    th.num { "gseq" } th.num { "Epoch" } th { "Logged (KST)" } th { "Machine" } th.num { "Seq" }
                    th { "Entry" } th { "Hash" } th { "Previous" }
                } }
                tbody {
                    @for entry in entries {
                        tr {
                            td.num.mono { (entry.gseq) }
                            td.num { (entry.epoch) }
                            td { (format::time(entry.logged_ms)) }
                            @match &entry.kind {
                                EntryKind::Event { machine, seq, event, detail, .. } => {
                                    td { a href={"/machines/" (machine)} { (machine) } }
                                    td.num { (seq) }
                                    td { (event.replace('_', " ")) @if !detail.is_empty() { div.muted { (detail) } } }
                                }
                                EntryKind::EpochStarted { primary } => {
                                    td.muted { "—" } td {} td { "epoch started by " (primary) }
                                }
                                EntryKind::Operator { operator, action, machine, .. } => {
                                    td { @if let Some(m) = machine { a href={"/machines/" (m)} { (m) } } @else { span.muted { "—" } } }
                                    td {}
                                    td { (action.replace('_', " ")) div.muted { "by " (operator) } }
                                }
                                EntryKind::Unreadable { problem } => {
                                    td.muted { "—" } td {} td.short { "unreadable: " (problem) }
                                }
                            }
                            td.mono title=(entry.hash) { (format::short_hash(&entry.hash)) }
                            td.mono title=(entry.prev_hash) { (format::short_hash(&entry.prev_hash)) }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log of `n` events, alternating two machines, logged a second apart.
    struct FakeLog(u64);

    impl LogReader for FakeLog {
        fn entries(&self, from: u64, to: u64) -> Result<Vec<LogEntryView>, ReadError> {
            if from > self.0 {
                return Err(ReadError::BeyondTip {
                    gseq: from,
                    tip: self.0,
                });
            }
            let last = to.min(self.0).min(from + READ_ENTRIES_MAX as u64 - 1);
            Ok((from.max(1)..=last)
                .map(|gseq| LogEntryView {
                    gseq,
                    epoch: 1,
                    logged_ms: 1_000 * gseq as i64,
                    hash: format!("h{gseq}"),
                    prev_hash: format!("h{}", gseq - 1),
                    kind: EntryKind::Event {
                        machine: MachineId::numbered(1 + (gseq % 2) as u32),
                        seq: gseq,
                        at_ms: 0,
                        event: if gseq % 10 == 0 {
                            "cash_collected"
                        } else {
                            "money_inserted"
                        }
                        .into(),
                        detail: String::new(),
                    },
                })
                .collect())
        }
    }

    fn query(pairs: &[(&str, &str)]) -> AuditQuery {
        serde_urlencoded::from_str(&serde_urlencoded::to_string(pairs).unwrap()).unwrap()
    }

    fn gseqs(entries: &[LogEntryView]) -> Vec<u64> {
        entries.iter().map(|e| e.gseq).collect()
    }

    #[test]
    fn pages_walk_the_whole_log_by_key_without_gaps_or_repeats() {
        let log = FakeLog(3_210);
        let mut seen = Vec::new();
        let mut before: Option<u64> = None;
        loop {
            let before_text = before.map(|b| b.to_string()).unwrap_or_default();
            let q = query(&[("before", &before_text)]);
            let page = audit_blocking(&log, &q, 3_210).unwrap();
            assert_eq!(page.head_hash.as_deref(), Some("h3210"));
            assert!(links_ok(&page.entries));
            seen.extend(gseqs(&page.entries));
            match page.stopped {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        let expected: Vec<u64> = (1..=3_210).rev().collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn filters_by_machine_kind_and_time() {
        let log = FakeLog(500);
        let q = query(&[("machine", "VM-001"), ("kind", "cash_collected")]);
        let entries = audit_blocking(&log, &q, 500).unwrap().entries;
        // VM-001 has the even gseqs; cash collections are every tenth.
        assert_eq!(gseqs(&entries)[..3], [500, 490, 480]);
        assert!(entries.iter().all(|e| e.gseq % 10 == 0));
        // Logged at gseq × 1 s: 100 s to 110 s is gseqs 100 to 110.
        let from = format::time_rfc3339(100_000);
        let to = format::time_rfc3339(110_000);
        let q = query(&[("from", &from), ("to", &to)]);
        let page = audit_blocking(&log, &q, 500).unwrap();
        assert_eq!(gseqs(&page.entries), (100..=110).rev().collect::<Vec<_>>());
        assert_eq!(page.stopped, None);
        // A newer page runs the other way and is shown newest first.
        let q = query(&[("after", "200")]);
        let page = audit_blocking(&log, &q, 500).unwrap();
        assert!(!page.newest_first);
        let mut shown = gseqs(&page.entries);
        shown.reverse();
        assert_eq!(shown, (201..=250).collect::<Vec<_>>());
    }

    #[test]
    fn bad_filters_are_refused_with_400() {
        let log = FakeLog(10);
        for pairs in [
            [("before", "x")],
            [("from", "yesterday")],
            [("kind", "DROP TABLE")],
            [("machine", "no such id!")],
        ] {
            let q = query(&pairs);
            let problem = audit_blocking(&log, &q, 10).err().unwrap();
            assert!(problem.status.is_client_error(), "{pairs:?}: {problem:?}");
        }
    }
}

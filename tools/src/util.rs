//! Shared helpers: data-directory layout, opening a log, progress bars.

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ledger::keys::Keyring;
use ledger::store::{LogStore, StoreError};
use std::path::PathBuf;

/// A data directory holds the RocksDB log under `log/` and, unless told
/// otherwise, its keys under `keys/`.
pub const LOG_SUBDIR: &str = "log";
pub const KEYS_SUBDIR: &str = "keys";

/// Where a command finds a log and its keys.
#[derive(clap::Args, Clone, Debug)]
pub struct DataArgs {
    /// Data directory (holds `log/` and by default `keys/`).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Key directory, if not `DATA/keys`.
    #[arg(long, value_name = "DIR")]
    pub keys: Option<PathBuf>,
}

impl DataArgs {
    pub fn log_dir(&self) -> PathBuf {
        self.data.join(LOG_SUBDIR)
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.keys
            .clone()
            .unwrap_or_else(|| self.data.join(KEYS_SUBDIR))
    }

    /// Loads the key directory; creates nothing (a missing key file is
    /// named with the `vendctl keys` command that makes it).
    pub fn keyring(&self) -> Result<Keyring> {
        Ok(Keyring::open(&self.keys_dir())?)
    }

    /// Opens an existing log for reading only: inspecting a log never
    /// changes a file of it, and a log a running replica holds open is
    /// read as it was when the command started.
    pub fn open_store(&self, keyring: &Keyring) -> Result<LogStore> {
        let log_dir = self.log_dir();
        LogStore::open_read_only(&log_dir, keyring.store_key()).map_err(|error| match error {
            // These name the directory already.
            StoreError::NotFound(_) | StoreError::Live { .. } => error.into(),
            other => anyhow::Error::new(other)
                .context(format!("opening the log at {}", log_dir.display())),
        })
    }
}

/// Tells the operator on stderr which key files a command created (the
/// simulated fleets provision their machines through the same code as
/// `vendctl keys`; keys that existed are kept and not mentioned).
pub fn report_created_keys(created: &[PathBuf], dir: &std::path::Path) {
    match created {
        [] => {}
        [one] => eprintln!("created {}", one.display()),
        many => eprintln!("created {} key files in {}", many.len(), dir.display()),
    }
}

/// A progress bar on stderr, hidden when stderr is not a terminal so logs
/// and pipes stay clean.
pub fn progress(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

pub fn hex32(hash: &[u8; 32]) -> String {
    hex::encode(hash)
}

/// Events per second, guarding against a zero duration.
pub fn rate(count: u64, elapsed: std::time::Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Writes a line to stdout. A reader that went away (`vendctl dump | head`)
/// is not an error worth a panic: the rest of the output is dropped.
pub fn emit_line(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out
        .write_all(text.as_bytes())
        .and_then(|()| out.write_all(b"\n"));
}

/// `println!` that tolerates a closed stdout (see [`emit_line`]).
#[macro_export]
macro_rules! say {
    () => { $crate::util::emit_line("") };
    ($($arg:tt)*) => { $crate::util::emit_line(&format!($($arg)*)) };
}

/// Which end of a period a bare date stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// Its first instant (`--from 2026-11-30` includes that day).
    Start,
    /// Its last instant (`--until 2026-11-30` runs through that day).
    End,
}

/// Parses a time given on the command line: an RFC 3339 timestamp, or a
/// civil date or date-time in Korean time, as milliseconds since the epoch.
/// `flag` names the option in the error.
pub fn parse_time(flag: &str, text: &str, bound: Bound) -> Result<i64> {
    if let Ok(timestamp) = text.parse::<jiff::Timestamp>() {
        return Ok(timestamp.as_millisecond());
    }
    let kst = jiff::tz::TimeZone::fixed(jiff::tz::offset(9));
    // A bare date must be read as a date: jiff would also accept it as a
    // date-time at midnight.
    let civil = if let Ok(date) = text.parse::<jiff::civil::Date>() {
        match bound {
            Bound::Start => date.at(0, 0, 0, 0),
            Bound::End => date.at(23, 59, 59, 999_999_999),
        }
    } else if let Ok(datetime) = text.parse::<jiff::civil::DateTime>() {
        datetime
    } else {
        bail!(
            "{flag} {text:?}: use an RFC 3339 timestamp, YYYY-MM-DD or YYYY-MM-DDTHH:MM (Korean time)"
        );
    };
    let zoned = civil
        .to_zoned(kst)
        .with_context(|| format!("{flag} {text:?} is out of range"))?;
    Ok(zoned.timestamp().as_millisecond())
}

/// A time as Korean wall-clock time, `2026-11-30 16:05:03.120`.
pub fn kst_text(at_ms: i64) -> String {
    jiff::Timestamp::from_millisecond(at_ms).map_or_else(
        |_| format!("invalid time {at_ms} ms"),
        |t| {
            t.to_zoned(jiff::tz::TimeZone::fixed(jiff::tz::offset(9)))
                .strftime("%Y-%m-%d %H:%M:%S")
                .to_string()
                + &format!(".{:03}", at_ms.rem_euclid(1_000))
        },
    )
}

/// A time in UTC, RFC 3339 with milliseconds: `2026-11-30T07:05:03.120Z`.
pub fn utc_text(at_ms: i64) -> String {
    jiff::Timestamp::from_millisecond(at_ms).map_or_else(
        |_| format!("invalid time {at_ms} ms"),
        |t| {
            format!(
                "{}.{:03}Z",
                t.strftime("%Y-%m-%dT%H:%M:%S"),
                at_ms.rem_euclid(1_000)
            )
        },
    )
}

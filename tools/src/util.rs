//! Shared helpers: data-directory layout, opening a log, progress bars.

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ledger::keys::Keyring;
use ledger::store::rocks::TableFile;
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
    /// Archive directory of this log's archived segments, if not where
    /// `vendctl archive` wrote them.
    #[arg(long, value_name = "DIR")]
    pub archive: Option<PathBuf>,
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
        self.require_data_dir()?;
        Ok(Keyring::open(&self.keys_dir())?)
    }

    /// A data directory that is not there is named as such, before any
    /// key file or log inside it is missed.
    fn require_data_dir(&self) -> Result<()> {
        if !self.data.is_dir() {
            bail!(
                "no data directory at {}: give --data the directory that holds log/ (a replica's data_dir, or one `vendctl simulate --offline --data DIR` wrote)",
                self.data.display()
            );
        }
        Ok(())
    }

    /// Opens an existing log for reading only: inspecting a log never
    /// changes a file of it, and a log a running replica holds open is
    /// read as it was when the command started.
    pub fn open_store(&self, keyring: &Keyring) -> Result<LogStore> {
        let mut store = self.open_log(keyring)?;
        if let Some(archive) = &self.archive {
            store.attach_archive(archive, keyring.store_key());
        }
        Ok(store)
    }

    fn open_log(&self, keyring: &Keyring) -> Result<LogStore> {
        let log_dir = self.log_dir();
        LogStore::open_read_only(&log_dir, keyring.store_key()).map_err(|error| match error {
            // These name the directory already.
            StoreError::NotFound(_) | StoreError::Live { .. } => error.into(),
            StoreError::WrongKey => anyhow::Error::new(error).context(format!(
                "opening the log at {} with {}: give --keys the directory of the store.key this log was written with",
                log_dir.display(),
                self.keys_dir().join("store.key").display()
            )),
            damage if damage.is_damage() => anyhow::anyhow!(
                "the log at {} is damaged and does not open: {}. {DAMAGE_ADVICE}",
                log_dir.display(),
                damage.to_string().trim_end_matches('.')
            ),
            other => anyhow::Error::new(other)
                .context(format!("opening the log at {}", log_dir.display())),
        })
    }
}

/// What to do about a damaged log, after saying what is damaged.
pub const DAMAGE_ADVICE: &str = "Stop what uses this directory and keep its files as they are; \
     the replicas of a cluster hold the same entries: `vendctl verify --data DIR` on each finds \
     a healthy copy to restore this one from";

/// RocksDB's words for a damaged table file ("Corruption: block checksum
/// mismatch: … in …/000016.sst offset 15997555 …") in ours: the first
/// entry that cannot be read, which entries the file holds, and what to
/// do. `None` when the problem is not a damaged table file.
pub fn explain_damage(problem: &str, verified_up_to: u64, tables: &[TableFile]) -> Option<String> {
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
        n => format!("the entries up to gseq {n} can be read"),
    };
    Some(format!(
        "entry gseq {}: cannot be read: the log's table file {name}{held} is damaged ({what}); \
         {verified}. {DAMAGE_ADVICE}.",
        verified_up_to + 1
    ))
}

/// A storage error met while reading the log through, in the words of
/// [`explain_damage`] when it is a damaged table file (`read_up_to`: the
/// last entry read before it).
pub fn scan_error(
    store: &LogStore,
    error: impl Into<anyhow::Error>,
    read_up_to: u64,
) -> anyhow::Error {
    let error = error.into();
    let tables = store.backend().log_table_files().unwrap_or_default();
    match explain_damage(&format!("{error:#}"), read_up_to, &tables) {
        Some(explained) => anyhow::anyhow!(explained),
        None => error,
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

/// A whole number with thousands separators: `178,877`.
pub fn grouped(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A rate as people read it: a whole number with separators (`178,877`,
/// printed before `events/s`).
pub fn per_second(rate: f64) -> String {
    // `as` saturates: a NaN or negative rate reads 0, an absurd one the max.
    grouped(rate.round() as u64)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_whole_numbers_with_separators() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(178_877), "178,877");
        assert_eq!(grouped(1_397_881), "1,397,881");
        assert_eq!(per_second(178_876.6), "178,877");
        assert_eq!(per_second(f64::NAN), "0");
    }

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
                 mismatch); the entries up to gseq 77000 can be read. Stop what uses"
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

//! How numbers and times look on the dashboard: won with thousands
//! separators, times in Korean Standard Time. Pure functions.

use ledger::Won;
use ledger::money::format_won;

/// Korean Standard Time (UTC+9, no daylight saving time).
fn kst() -> jiff::tz::TimeZone {
    jiff::tz::TimeZone::fixed(jiff::tz::offset(9))
}

/// `₩12,340` (negative amounts `-₩1,200`).
pub fn won(amount: Won) -> String {
    if amount < 0 {
        format!("-₩{}", format_won(-amount))
    } else {
        format!("₩{}", format_won(amount))
    }
}

/// A signed difference: `+₩500`, `-₩1,200`, `₩0`.
pub fn won_signed(amount: Won) -> String {
    if amount > 0 {
        format!("+{}", won(amount))
    } else {
        won(amount)
    }
}

/// A count with thousands separators.
pub fn count(value: u64) -> String {
    format_won(i64::try_from(value).unwrap_or(i64::MAX))
}

/// `2026-11-23 14:05:09 KST` for a time in ms since the Unix epoch; `—`
/// for 0 or a time out of range.
pub fn time(at_ms: i64) -> String {
    if at_ms <= 0 {
        return "—".to_owned();
    }
    match jiff::Timestamp::from_millisecond(at_ms) {
        Ok(timestamp) => timestamp
            .to_zoned(kst())
            .strftime("%Y-%m-%d %H:%M:%S KST")
            .to_string(),
        Err(_) => "—".to_owned(),
    }
}

/// RFC 3339 with the KST offset, for JSON and CSV (`2026-11-23T14:05:09+09:00`).
pub fn time_rfc3339(at_ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(at_ms) {
        Ok(timestamp) => timestamp
            .to_zoned(kst())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
        Err(_) => String::new(),
    }
}

/// How long ago, coarsely: `12 s ago`, `5 min ago`, `3 h ago`, `2 days ago`.
pub fn ago(now_ms: i64, at_ms: i64) -> String {
    if at_ms <= 0 {
        return "never".to_owned();
    }
    let seconds = (now_ms - at_ms).max(0) / 1_000;
    match seconds {
        0..60 => format!("{seconds} s ago"),
        60..3_600 => format!("{} min ago", seconds / 60),
        3_600..86_400 => format!("{} h ago", seconds / 3_600),
        _ => format!("{} days ago", seconds / 86_400),
    }
}

/// Parses a time typed into a filter: RFC 3339, or a date or date-time in
/// KST (`2026-11-23`, `2026-11-23T14:05`, `2026-11-23 14:05`). A bare
/// date means its first instant; `end_of_day` makes it the last.
pub fn parse_time(text: &str, end_of_day: bool) -> Option<i64> {
    let text = text.trim();
    if let Ok(timestamp) = text.parse::<jiff::Timestamp>() {
        return Some(timestamp.as_millisecond());
    }
    // jiff reads a date out of a date-time too: only a bare date is a day.
    let civil = if text.len() > 10 {
        text.replacen(' ', "T", 1)
            .parse::<jiff::civil::DateTime>()
            .ok()?
    } else {
        let date = text.parse::<jiff::civil::Date>().ok()?;
        if end_of_day {
            date.at(23, 59, 59, 999_000_000)
        } else {
            date.at(0, 0, 0, 0)
        }
    };
    let zoned = civil.to_zoned(kst()).ok()?;
    Some(zoned.timestamp().as_millisecond())
}

/// The first `chars` characters of a hash, for tables.
pub fn short_hash(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn won_has_separators_and_a_sign() {
        assert_eq!(won(12_340), "₩12,340");
        assert_eq!(won(0), "₩0");
        assert_eq!(won(-1_200), "-₩1,200");
        assert_eq!(won_signed(500), "+₩500");
        assert_eq!(won_signed(-50), "-₩50");
        assert_eq!(count(1_234_567), "1,234,567");
    }

    #[test]
    fn times_are_shown_in_kst() {
        // 2026-11-22T15:00:00Z is midnight in Seoul.
        let midnight = 1_795_359_600_000;
        assert_eq!(time(midnight), "2026-11-23 00:00:00 KST");
        assert_eq!(time_rfc3339(midnight), "2026-11-23T00:00:00+09:00");
        assert_eq!(time(0), "—");
        assert_eq!(ago(midnight + 90_000, midnight), "1 min ago");
        assert_eq!(ago(midnight, 0), "never");
    }

    #[test]
    fn filter_times_parse_as_kst() {
        let midnight = 1_795_359_600_000;
        assert_eq!(parse_time("2026-11-23", false), Some(midnight));
        assert_eq!(
            parse_time("2026-11-23", true),
            Some(midnight + 86_400_000 - 1)
        );
        assert_eq!(
            parse_time("2026-11-23 00:01", false),
            Some(midnight + 60_000)
        );
        assert_eq!(parse_time("2026-11-22T15:00:00Z", false), Some(midnight));
        assert_eq!(parse_time("yesterday", false), None);
    }
}

//! Time as this project writes and reads it: RFC 3339 in UTC on the wire
//! and in files, local time for people.

use chrono::{DateTime, Local, SecondsFormat, Utc};

/// RFC 3339 UTC to the second (`2026-11-22T10:00:00Z`): grants, task
/// starts, `daemon.json`.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// RFC 3339 UTC to the millisecond (`2026-11-22T10:00:00.123Z`): a
/// command's `issued_at`, transcript lines.
pub fn rfc3339_millis(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// RFC 3339 UTC to the microsecond: audit record times.
pub fn rfc3339_micros(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Parses RFC 3339 with any offset into UTC; `None` when it is not RFC 3339.
pub fn parse_rfc3339(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
}

/// Local time, to the second, as people read it (`2026-11-22 11:00:00 CET`).
pub fn local(t: DateTime<Utc>) -> String {
    t.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S %Z").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_round_trip_through_the_parser() {
        let t = parse_rfc3339("2026-11-22T11:00:00.123456+01:00").unwrap();
        assert_eq!(rfc3339(t), "2026-11-22T10:00:00Z");
        assert_eq!(rfc3339_millis(t), "2026-11-22T10:00:00.123Z");
        assert_eq!(rfc3339_micros(t), "2026-11-22T10:00:00.123456Z");
        assert_eq!(parse_rfc3339(&rfc3339_micros(t)), Some(t));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}

//! Time as this project writes and reads it: RFC 3339 in UTC on the wire,
//! in files and for people. Every instant a person reads (a table, a
//! message, a `support watch` line, a notification) goes through
//! [`human`] or [`human_text`], so it has one shape everywhere
//! (`2026-11-22T10:36:26Z`) and a script or a person can compare it with
//! the `--json` fields; a span of time stays a duration (`29m 12s`,
//! humantime).

use chrono::{DateTime, SecondsFormat, Utc};

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

/// An instant as human output shows it: RFC 3339 in UTC to the second,
/// `2026-11-22T10:36:26Z`, whatever the machine's time zone (README,
/// "Scripting").
pub fn human(t: DateTime<Utc>) -> String {
    rfc3339(t)
}

/// An instant that came as text (a record's `ts`, a wire field) as
/// [`human`] shows it; text that is not RFC 3339 (it may come from the
/// relay or a device) is shown made printable and cut to 64 characters
/// ([`crate::text::brief`]).
pub fn human_text(ts: &str) -> String {
    parse_rfc3339(ts).map(human).unwrap_or_else(|| crate::text::brief(ts))
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

    #[test]
    fn people_read_one_shape_whatever_the_text_was() {
        let cases = [
            ("2026-11-22T11:00:00.123456+01:00", "2026-11-22T10:00:00Z"),
            ("2026-11-22T10:00:00.999Z", "2026-11-22T10:00:00Z"),
            ("2026-11-22T10:00:00Z", "2026-11-22T10:00:00Z"),
            ("2026-11-22T05:00:00-05:00", "2026-11-22T10:00:00Z"),
            ("not a time\x1b[31m", "not a time?[31m"),
            ("", ""),
        ];
        for (given, shown) in cases {
            assert_eq!(human_text(given), shown, "{given:?}");
        }
        assert_eq!(human(parse_rfc3339("2026-11-22T10:36:26.5Z").unwrap()), "2026-11-22T10:36:26Z");
        // A relay's text that is no time is cut, not shown whole.
        assert_eq!(human_text(&"x".repeat(100_000)), format!("{}...", "x".repeat(64)));
    }
}

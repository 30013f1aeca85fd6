//! Instants as the HTTP APIs take them in query strings.

use chrono::{DateTime, NaiveDate, NaiveDateTime};

/// What the APIs accept, for error messages.
pub const ACCEPTED: &str = "YYYY-MM-DD, an RFC 3339 time such as 2016-05-01T12:00:00Z, or Unix seconds";

/// Unix seconds of `text`: `YYYY-MM-DD` (midnight UTC), `YYYY-MM-DDTHH:MM[:SS]` or with a space (UTC), RFC 3339, or
/// an integer; years 1900 to 2199 only (anything else is a typo, and would overflow the callers' arithmetic).
pub fn parse_instant(text: &str) -> Option<i64> {
    let text = text.trim();
    let parsed = if let Ok(seconds) = text.parse::<i64>() {
        Some(seconds)
    } else if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        Some(t.timestamp())
    } else if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        d.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp())
    } else {
        [
            "%Y-%m-%dT%H:%M:%S",
            "%Y-%m-%dT%H:%M",
            "%Y-%m-%d %H:%M:%S",
            "%Y-%m-%d %H:%M",
        ]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
        .map(|t| t.and_utc().timestamp())
    };
    parsed.filter(|t| (-2_208_988_800..7_258_118_400).contains(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_times_and_seconds_are_instants() {
        assert_eq!(parse_instant("2017-03-01"), Some(1_488_326_400));
        assert_eq!(parse_instant(" 2017-03-01T00:00:00Z "), Some(1_488_326_400));
        assert_eq!(parse_instant("2017-03-01T08:00:00+08:00"), Some(1_488_326_400));
        assert_eq!(parse_instant("2017-03-01T01:30"), Some(1_488_331_800));
        assert_eq!(parse_instant("2017-03-01 01:30:00"), Some(1_488_331_800));
        assert_eq!(parse_instant("1488326400"), Some(1_488_326_400));
        for bad in [
            "",
            "tomorrow",
            "2017-02-30",
            "99999-01-01",
            "1e9",
            "2017-03-01T25:00:00Z",
            "9999999999999",
        ] {
            assert_eq!(parse_instant(bad), None, "{bad:?}");
        }
    }
}

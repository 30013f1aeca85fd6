//! The shapes the dashboard draws, computed without HTTP or SQL: air-quality categories of a concentration, the
//! time buckets a range is cut into for a chart, and a series laid out on those buckets with its gaps kept.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::store::BucketRow;

pub const HOUR: i64 = 3600;
/// Seconds in a day; buckets wider than 6 hours are whole days from midnight UTC.
pub const DAY: i64 = 24 * HOUR;
/// The most buckets one series answer may have.
pub const MAX_POINTS: usize = 5000;
/// The longest range one request may cover (20 years).
pub const MAX_RANGE: i64 = 20 * 366 * 24 * HOUR;

/// Why a view request is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ViewError {
    #[error(
        "{field}={value:?} is not a time: give YYYY-MM-DD, an RFC 3339 time such as 2016-05-01T12:00:00Z, or Unix seconds"
    )]
    Time { field: &'static str, value: String },
    #[error("the range is empty: from ({from}) must be before to ({to})")]
    EmptyRange { from: String, to: String },
    #[error("the range from {from} to {to} is longer than 20 years")]
    RangeTooLong { from: String, to: String },
    #[error("points={0} is out of range: ask for 2 to {MAX_POINTS} points")]
    Points(usize),
}

/// RFC 3339 (UTC) of Unix seconds `t`.
pub fn rfc3339(t: i64) -> String {
    DateTime::<Utc>::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// Unix seconds of `value`: `YYYY-MM-DD` (midnight UTC), `YYYY-MM-DDTHH:MM[:SS]` (UTC), RFC 3339, or an integer.
pub fn parse_time(field: &'static str, value: &str) -> Result<i64, ViewError> {
    airq_core::time::parse_instant(value).ok_or_else(|| ViewError::Time {
        field,
        value: value.to_owned(),
    })
}

/// How a range is cut into buckets: `count` buckets of `width` seconds from `from`. `from` is rounded down and
/// `to` up to whole hours, and the width is a whole number of hours, so a bucket never splits an hourly value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub from: i64,
    pub to: i64,
    pub width: i64,
    pub count: usize,
}

impl Plan {
    pub fn new(from: i64, to: i64, points: usize) -> Result<Self, ViewError> {
        if !(2..=MAX_POINTS).contains(&points) {
            return Err(ViewError::Points(points));
        }
        let from = from.div_euclid(HOUR) * HOUR;
        let to = (to + HOUR - 1).div_euclid(HOUR) * HOUR;
        if to <= from {
            return Err(ViewError::EmptyRange {
                from: rfc3339(from),
                to: rfc3339(to),
            });
        }
        let span = to - from;
        if span > MAX_RANGE {
            return Err(ViewError::RangeTooLong {
                from: rfc3339(from),
                to: rfc3339(to),
            });
        }
        let width = Self::width(span, points, HOUR);
        if width <= DAY / 4 {
            let count = usize::try_from((span + width - 1) / width).unwrap_or(points);
            return Ok(Self { from, to, width, count });
        }
        // Buckets of more than 6 hours become whole days from midnight UTC (at most four times as wide, never more
        // than `points` of them), so that they are read from the daily aggregates: a year of 12 stations is 4,400
        // rows instead of 105,000.
        let from = from.div_euclid(DAY) * DAY;
        let to = (to + DAY - 1).div_euclid(DAY) * DAY;
        let span = to - from;
        let width = Self::width(span, points, DAY);
        let count = usize::try_from((span + width - 1) / width).unwrap_or(points);
        Ok(Self { from, to, width, count })
    }

    /// The narrowest whole number of `unit`s that covers `span` in at most `points` buckets.
    fn width(span: i64, points: usize, unit: i64) -> i64 {
        let units = (span + unit - 1) / unit;
        (units + points as i64 - 1) / points as i64 * unit
    }

    /// Start of bucket `index`.
    pub fn start(&self, index: usize) -> i64 {
        self.from + index as i64 * self.width
    }
}

/// A series on a plan's buckets, as columns: `null` where a bucket holds no value, so a chart breaks its line there
/// instead of joining across missing data.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Columns {
    pub min: Vec<Option<f64>>,
    pub mean: Vec<Option<f64>>,
    pub max: Vec<Option<f64>>,
    /// Hourly values in each bucket.
    pub count: Vec<i64>,
}

/// Rounds for display: two decimals say more than any instrument measures, and keep answers small.
fn round(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

impl Columns {
    /// Lays `rows` (one station's buckets, any order) on `plan`.
    pub fn from_rows<'a>(plan: &Plan, rows: impl IntoIterator<Item = &'a BucketRow>) -> Self {
        let mut columns = Self {
            min: vec![None; plan.count],
            mean: vec![None; plan.count],
            max: vec![None; plan.count],
            count: vec![0; plan.count],
        };
        for row in rows {
            let Some(i) = usize::try_from(row.index).ok().filter(|i| *i < plan.count) else {
                continue;
            };
            columns.min[i] = Some(round(row.min));
            columns.mean[i] = Some(round(row.mean));
            columns.max[i] = Some(round(row.max));
            columns.count[i] = row.count;
        }
        columns
    }

    /// Buckets that hold at least one value.
    pub fn filled(&self) -> usize {
        self.count.iter().filter(|c| **c > 0).count()
    }
}

/// An air-quality category, after China's Technical Regulation on Ambient Air Quality Index (HJ 633-2012), the
/// standard of the Beijing stations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Category {
    /// 1 (best) to 6 (worst).
    pub level: u8,
    #[schema(value_type = String)]
    pub label: &'static str,
    /// The colour the standard gives the category.
    #[schema(value_type = String)]
    pub color: &'static str,
}

pub const CATEGORIES: [Category; 6] = [
    Category {
        level: 1,
        label: "Excellent",
        color: "#00e400",
    },
    Category {
        level: 2,
        label: "Good",
        color: "#ffff00",
    },
    Category {
        level: 3,
        label: "Lightly polluted",
        color: "#ff7e00",
    },
    Category {
        level: 4,
        label: "Moderately polluted",
        color: "#ff0000",
    },
    Category {
        level: 5,
        label: "Heavily polluted",
        color: "#99004c",
    },
    Category {
        level: 6,
        label: "Severely polluted",
        color: "#7e0023",
    },
];

/// Index values at the breakpoints.
const INDEX_BREAKPOINTS: [f64; 8] = [0.0, 50.0, 100.0, 150.0, 200.0, 300.0, 400.0, 500.0];

/// Concentration breakpoints (µg/m³) at index 0, 50, 100, 150, 200, 300, 400 and 500. PM2.5 and PM10 use the
/// standard's 24-hour table, the gases their 1-hour tables (for SO₂ above 800 µg/m³, where the 1-hour table stops,
/// the 24-hour breakpoints continue it; CO converted from mg/m³).
fn breakpoints(pollutant: &str) -> Option<[f64; 8]> {
    Some(match pollutant {
        "pm25" => [0.0, 35.0, 75.0, 115.0, 150.0, 250.0, 350.0, 500.0],
        "pm10" => [0.0, 50.0, 150.0, 250.0, 350.0, 420.0, 500.0, 600.0],
        "so2" => [0.0, 150.0, 500.0, 650.0, 800.0, 1600.0, 2100.0, 2620.0],
        "no2" => [0.0, 100.0, 200.0, 700.0, 1200.0, 2340.0, 3090.0, 3840.0],
        "co" => [0.0, 5000.0, 10000.0, 35000.0, 60000.0, 90000.0, 120000.0, 150000.0],
        "o3" => [0.0, 160.0, 200.0, 300.0, 400.0, 800.0, 1000.0, 1200.0],
        _ => return None,
    })
}

/// The individual air-quality index (0–500) of a concentration, interpolated between breakpoints; 500 above the
/// last one.
pub fn index(pollutant: &str, concentration: f64) -> Option<f64> {
    let c = breakpoints(pollutant)?;
    if !concentration.is_finite() || concentration < 0.0 {
        return None;
    }
    for i in 1..c.len() {
        if concentration <= c[i] {
            let (cl, ch) = (c[i - 1], c[i]);
            let (il, ih) = (INDEX_BREAKPOINTS[i - 1], INDEX_BREAKPOINTS[i]);
            return Some(il + (ih - il) * (concentration - cl) / (ch - cl));
        }
    }
    Some(500.0)
}

/// The category of a concentration of `pollutant` (µg/m³).
pub fn category(pollutant: &str, concentration: f64) -> Option<Category> {
    let aqi = index(pollutant, concentration)?;
    let level = match aqi {
        a if a <= 50.0 => 1,
        a if a <= 100.0 => 2,
        a if a <= 150.0 => 3,
        a if a <= 200.0 => 4,
        a if a <= 300.0 => 5,
        _ => 6,
    };
    CATEGORIES.get(level - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_cuts_a_year_into_at_most_the_asked_points() {
        let from = parse_time("from", "2016-01-01").unwrap_or_default();
        let to = parse_time("to", "2017-01-01").unwrap_or_default();
        let plan = Plan::new(from, to, 2000).expect("a valid plan");
        // 8,784 hours in 2016: 5 hours per bucket, 1,757 buckets.
        assert_eq!(plan.width, 5 * HOUR);
        assert_eq!(plan.count, 1757);
        assert!(plan.start(plan.count) >= to);
        // Fewer hours than points: one bucket per hour.
        let day = Plan::new(from, from + 24 * HOUR, 500).expect("a valid plan");
        assert_eq!((day.width, day.count), (HOUR, 24));
        // Rounded to whole hours.
        let odd = Plan::new(from + 10, from + 2 * HOUR - 10, 100).expect("a valid plan");
        assert_eq!((odd.from, odd.to), (from, from + 2 * HOUR));
    }

    #[test]
    fn buckets_wider_than_6_hours_are_whole_days_from_midnight() {
        let from = parse_time("from", "2016-01-01").unwrap_or_default();
        // 2016 in 300 points: 30 hours a bucket becomes 2 days, 183 buckets.
        let year = Plan::new(from, from + 366 * DAY, 300).expect("a valid plan");
        assert_eq!((year.width, year.count), (2 * DAY, 183));
        // A range that starts and ends within days is widened to the midnights around it.
        let odd = Plan::new(from + 5 * HOUR, from + 300 * DAY + 3 * HOUR, 200).expect("a valid plan");
        assert_eq!((odd.from, odd.to), (from, from + 301 * DAY));
        assert_eq!(odd.width % DAY, 0);
        assert!(odd.count <= 200 && odd.start(odd.count) >= odd.to, "{odd:?}");
        // 6 hours or less stays in hours, from the hour asked.
        let six = Plan::new(from + 5 * HOUR, from + 5 * HOUR + 50 * DAY, 200).expect("a valid plan");
        assert_eq!((six.from, six.width), (from + 5 * HOUR, 6 * HOUR));
        let seven = Plan::new(from + 5 * HOUR, from + 5 * HOUR + 58 * DAY, 200).expect("a valid plan");
        assert_eq!((seven.from, seven.width, seven.count), (from, DAY, 59));
    }

    #[test]
    fn plan_refuses_bad_ranges() {
        assert!(matches!(
            Plan::new(10 * HOUR, 5 * HOUR, 100),
            Err(ViewError::EmptyRange { .. })
        ));
        assert!(matches!(Plan::new(0, 10 * HOUR, 1), Err(ViewError::Points(1))));
        assert!(matches!(Plan::new(0, 10 * HOUR, 5001), Err(ViewError::Points(5001))));
        assert!(matches!(
            Plan::new(0, MAX_RANGE + 2 * HOUR, 100),
            Err(ViewError::RangeTooLong { .. })
        ));
    }

    #[test]
    fn columns_keep_gaps_as_nulls() {
        let plan = Plan::new(0, 4 * HOUR, 4).expect("a valid plan");
        let row = |index, v: f64| BucketRow {
            station_id: 1,
            index,
            min: v,
            mean: v,
            max: v,
            count: 1,
        };
        let columns = Columns::from_rows(&plan, &[row(0, 1.0), row(3, 2.0 / 3.0), row(9, 5.0)]);
        assert_eq!(columns.mean, vec![Some(1.0), None, None, Some(0.67)]);
        assert_eq!(columns.count, vec![1, 0, 0, 1]);
        assert_eq!(columns.filled(), 2);
    }

    #[test]
    fn times_in_every_accepted_form() {
        let midnight = 1_451_606_400; // 2016-01-01T00:00:00Z
        for text in [
            "2016-01-01",
            "2016-01-01T00:00:00Z",
            "2016-01-01T08:00:00+08:00",
            "2016-01-01T00:00",
            "1451606400",
        ] {
            assert_eq!(parse_time("from", text), Ok(midnight), "{text}");
        }
        let error = parse_time("from", "yesterday").expect_err("not a time");
        assert!(error.to_string().contains("from=\"yesterday\""), "{error}");
        assert_eq!(rfc3339(midnight), "2016-01-01T00:00:00Z");
    }

    #[test]
    fn categories_follow_the_breakpoints() {
        assert_eq!(category("pm25", 20.0).map(|c| c.level), Some(1));
        assert_eq!(category("pm25", 35.0).map(|c| c.level), Some(1));
        assert_eq!(category("pm25", 35.1).map(|c| c.level), Some(2));
        assert_eq!(category("pm25", 160.0).map(|c| c.level), Some(5));
        assert_eq!(category("pm25", 900.0).map(|c| c.level), Some(6));
        assert_eq!(category("o3", 250.0).map(|c| c.level), Some(3));
        assert_eq!(category("o3", 350.0).map(|c| c.level), Some(4));
        assert_eq!(category("co", 4000.0).map(|c| c.level), Some(1));
        assert_eq!(category("temp", 4.0), None);
        assert_eq!(index("pm25", 55.0).map(f64::round), Some(75.0));
    }
}

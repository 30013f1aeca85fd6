//! The first value a file gave for each station, parameter and hour, to tell a conflicting duplicate from a repeat.
//! A series is usually hourly and in order, so its values are kept in an array indexed by the hour (12 bytes an hour:
//! a Beijing station's twelve series over four years take 5 MB); a series whose hours are too scattered for that
//! falls back to a map. Memory grows with the hours a file covers, not with its size in bytes.

use std::collections::HashMap;

use airq_core::parameter::Parameter;

/// Hours an array may span beyond what it holds before its series moves to a map: sparse series stay cheap.
const SLACK_HOURS: usize = 24 * 366;

/// One series' first values.
#[derive(Debug)]
enum Series {
    /// `values[i]` (NaN when none) and its line for the hour `start + i`.
    Dense {
        start: i64,
        values: Vec<f64>,
        lines: Vec<u32>,
        held: usize,
    },
    Sparse(HashMap<i64, (f64, u32)>),
}

/// The first value kept per station (numbered by the reader), parameter and hour (Unix hours).
#[derive(Debug, Default)]
pub struct FirstValues {
    series: HashMap<(u32, Parameter), Series>,
}

impl FirstValues {
    /// The first value kept for the key, with its line.
    pub fn get(&self, station: u32, parameter: Parameter, hour: i64) -> Option<(f64, u64)> {
        match self.series.get(&(station, parameter))? {
            Series::Dense {
                start, values, lines, ..
            } => {
                let i = usize::try_from(hour.checked_sub(*start)?).ok()?;
                let value = *values.get(i)?;
                (!value.is_nan()).then(|| (value, u64::from(lines[i])))
            }
            Series::Sparse(map) => map.get(&hour).map(|&(value, line)| (value, u64::from(line))),
        }
    }

    /// Records `value` (finite) from `line` as the key's first, unless one is recorded.
    pub fn insert(&mut self, station: u32, parameter: Parameter, hour: i64, value: f64, line: u64) {
        let line = u32::try_from(line).unwrap_or(u32::MAX);
        let series = self
            .series
            .entry((station, parameter))
            .or_insert_with(|| Series::Dense {
                start: hour,
                values: Vec::new(),
                lines: Vec::new(),
                held: 0,
            });
        if let Series::Dense {
            start,
            values,
            lines,
            held,
        } = series
        {
            if dense_insert((start, values, lines, held), hour, value, line) {
                return;
            }
            // Too scattered for an array: the series moves to a map.
            let mut map = HashMap::with_capacity(*held + 1);
            for (i, (&v, &l)) in values.iter().zip(lines.iter()).enumerate() {
                if !v.is_nan() {
                    map.insert(*start + i as i64, (v, l));
                }
            }
            *series = Series::Sparse(map);
        }
        if let Series::Sparse(map) = series {
            map.entry(hour).or_insert((value, line));
        }
    }
}

/// Puts the value in the array, growing it (at either end, doubling) while the series stays dense; false when it
/// would not.
fn dense_insert(
    (start, values, lines, held): (&mut i64, &mut Vec<f64>, &mut Vec<u32>, &mut usize),
    hour: i64,
    value: f64,
    line: u32,
) -> bool {
    let len = values.len() as i64;
    let (new_start, new_end) = ((*start).min(hour), (*start + len).max(hour + 1));
    let span = usize::try_from(new_end - new_start).unwrap_or(usize::MAX);
    if span > 2 * (*held + 1) + SLACK_HOURS {
        return false;
    }
    if new_start < *start {
        // Room in front, as much again as the array holds, so that a file in reverse order costs linear time.
        let front = usize::try_from(*start - new_start).unwrap_or(0).max(values.len());
        let front = front.min(span + values.len());
        values.splice(0..0, std::iter::repeat_n(f64::NAN, front));
        lines.splice(0..0, std::iter::repeat_n(0, front));
        *start -= front as i64;
    }
    let i = usize::try_from(hour - *start).unwrap_or(0);
    if i >= values.len() {
        let size = (i + 1).max(values.len() * 2).min(i + 1 + SLACK_HOURS);
        values.resize(size, f64::NAN);
        lines.resize(size, 0);
    }
    if values[i].is_nan() {
        values[i] = value;
        lines[i] = line;
        *held += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_value_is_kept_in_any_order_and_density() {
        let mut first = FirstValues::default();
        // In order, backwards, and scattered over centuries (a map).
        for hour in 0..1000 {
            first.insert(0, Parameter::Pm25, hour, hour as f64, hour as u64 + 2);
        }
        for hour in (0..1000).rev() {
            first.insert(1, Parameter::Pm25, hour, hour as f64, 5);
        }
        for k in 0..100 {
            first.insert(2, Parameter::No2, k * 1_000_000, k as f64, 7);
        }
        first.insert(0, Parameter::Pm25, 10, 99.0, 3000);
        assert_eq!(first.get(0, Parameter::Pm25, 10), Some((10.0, 12)), "the first stays");
        assert_eq!(first.get(0, Parameter::Pm25, 1000), None);
        assert_eq!(first.get(0, Parameter::Pm25, -1), None);
        assert_eq!(first.get(1, Parameter::Pm25, 0), Some((0.0, 5)));
        assert_eq!(first.get(1, Parameter::Pm25, 999), Some((999.0, 5)));
        assert_eq!(first.get(2, Parameter::No2, 42_000_000), Some((42.0, 7)));
        assert_eq!(first.get(2, Parameter::No2, 42_000_001), None);
        assert_eq!(first.get(3, Parameter::No2, 0), None);
        assert!(matches!(first.series[&(2, Parameter::No2)], Series::Sparse(_)));
        match &first.series[&(1, Parameter::Pm25)] {
            Series::Dense { values, .. } => assert!(values.len() < 4000, "{}", values.len()),
            Series::Sparse(_) => panic!("a backwards series stays an array"),
        }
    }
}

//! The external sources airq reads — CSV files ([`csv`], read line by line by [`lines`]), the OpenAQ v3 API
//! ([`openaq`]) and Open-Meteo ([`open_meteo`]) — each turned into a stream of [`Chunk`]s of checked observations
//! and refused values. A chunk is what one database transaction writes. Used by the ETL's loads and by the
//! predictive service, which reads CSV files directly.

pub mod csv;
pub mod first;
pub mod http;
pub mod index;
pub mod lines;
pub mod open_meteo;
pub mod openaq;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use airq_core::parameter::Parameter;
use airq_core::store::{FLAG_PM25_ABOVE_PM10, NewStation, Rejection};

/// Why a source could not be read. Each names the file, URL or page and what was wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {input}: {detail}")]
    Read { input: String, detail: String },
    #[error("{input} is not in the expected format: {detail}")]
    Format { input: String, detail: String },
    #[error("{input}: {detail}")]
    Http { input: String, detail: String },
}

/// One checked value, in the parameter's stored unit, at an hour in Unix seconds (UTC).
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub station: Arc<str>,
    pub parameter: Parameter,
    pub time: i64,
    pub value: f64,
    pub flags: i16,
}

/// What a connector hands the loader at a time.
#[derive(Debug, Default)]
pub struct Chunk {
    /// Stations these observations belong to, as the source describes them.
    pub stations: Vec<NewStation>,
    pub observations: Vec<Observation>,
    pub rejected: Vec<Rejection>,
    /// Values read (stored or refused; missing values are not counted).
    pub values_read: i64,
    /// Progress units done since the previous chunk (bytes of input for files, requests for APIs).
    pub progress: u64,
    /// The offsets from UTC (seconds east) that the source stated for its rows' local times, with how many rows
    /// stated each: the data's time zone where it is known (the Beijing files' +8 h; a long file's `+01:00`).
    pub stated_offsets: BTreeMap<i32, u64>,
}

/// The hours a load covers: `from` inclusive, `to` exclusive, Unix seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeRange {
    pub from: Option<i64>,
    pub to: Option<i64>,
}

impl TimeRange {
    pub fn contains(&self, time: i64) -> bool {
        self.from.is_none_or(|from| time >= from) && self.to.is_none_or(|to| time < to)
    }
}

/// `value` as text of bounded length: plain decimals for ordinary magnitudes, exponent notation otherwise (Rust
/// writes `1e308` with 309 digits).
pub fn compact(value: f64) -> String {
    let magnitude = value.abs();
    if value == 0.0 || !value.is_finite() || (1e-6..1e15).contains(&magnitude) {
        value.to_string()
    } else {
        format!("{value:e}")
    }
}

/// Builds a chunk value by value: checks each value, keeps it or records why it was refused.
#[derive(Debug)]
pub struct ChunkBuilder {
    source: String,
    chunk: Chunk,
}

impl ChunkBuilder {
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            chunk: Chunk::default(),
        }
    }

    /// Values held so far (kept and refused).
    pub fn held(&self) -> usize {
        self.chunk.observations.len() + self.chunk.rejected.len()
    }

    pub fn station(&mut self, station: NewStation) {
        self.chunk.stations.push(station);
    }

    pub fn progress(&mut self, units: u64) {
        self.chunk.progress += units;
    }

    /// A row whose local time is `seconds` east of UTC, as the source stated.
    pub fn stated_offset(&mut self, seconds: i32) {
        *self.chunk.stated_offsets.entry(seconds).or_default() += 1;
    }

    /// A value already converted to the stored unit: kept if plausible (returns true), refused with the reason
    /// otherwise.
    pub fn value(
        &mut self,
        station: &Arc<str>,
        parameter: Parameter,
        time: i64,
        value: f64,
        record: &dyn Fn() -> String,
    ) -> bool {
        if time.rem_euclid(3600) != 0 {
            let at = chrono::DateTime::from_timestamp(time, 0)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default();
            self.reject(
                Some(station),
                parameter.code(),
                Some(time),
                Some(compact(value)),
                format!("time {at} is not on the hour: airq stores hourly values"),
                record(),
            );
            return false;
        }
        match parameter.check(value) {
            Ok(value) => {
                self.chunk.values_read += 1;
                self.chunk.observations.push(Observation {
                    station: station.clone(),
                    parameter,
                    time,
                    value,
                    flags: 0,
                });
                true
            }
            Err(why) => {
                self.reject(
                    Some(station),
                    parameter.code(),
                    Some(time),
                    Some(compact(value)),
                    format!("{parameter} {} is {why}", compact(value)),
                    record(),
                );
                false
            }
        }
    }

    /// A value given in `unit`: converted to the stored unit and checked, or refused when the unit is unknown.
    pub fn value_in(
        &mut self,
        station: &Arc<str>,
        parameter: Parameter,
        time: i64,
        (value, unit): (f64, &str),
        record: &dyn Fn() -> String,
    ) {
        match parameter.normalise(value, unit) {
            Ok(converted) => {
                self.value(station, parameter, time, converted, record);
            }
            Err(e) => self.reject(
                Some(station),
                parameter.code(),
                Some(time),
                Some(compact(value)),
                e.to_string(),
                record(),
            ),
        }
    }

    /// A value (or a whole record, `parameter` "row") that could not be read or placed, refused with `reason`; it
    /// counts as read.
    pub fn reject(
        &mut self,
        station: Option<&Arc<str>>,
        parameter: &str,
        time: Option<i64>,
        raw_value: Option<String>,
        reason: String,
        record: String,
    ) {
        self.chunk.values_read += 1;
        self.chunk.rejected.push(Rejection {
            source: self.source.clone(),
            record,
            station: station.map(|s| s.to_string()),
            parameter: parameter.to_owned(),
            time,
            raw_value,
            reason,
        });
    }

    /// The chunk, with PM2.5 values above the PM10 of the same station and hour flagged (both values kept).
    pub fn finish(mut self) -> Chunk {
        flag_pm25_above_pm10(&mut self.chunk.observations);
        self.chunk
    }

    /// Takes what was built so far and starts an empty chunk.
    pub fn take(&mut self) -> Chunk {
        let next = ChunkBuilder::new(self.source.clone());
        std::mem::replace(self, next).finish()
    }
}

/// Marks both values of every station-hour whose PM2.5 exceeds its PM10.
pub fn flag_pm25_above_pm10(observations: &mut [Observation]) {
    let pm10: HashMap<(Arc<str>, i64), f64> = observations
        .iter()
        .filter(|o| o.parameter == Parameter::Pm10)
        .map(|o| ((o.station.clone(), o.time), o.value))
        .collect();
    if pm10.is_empty() {
        return;
    }
    let flagged: HashSet<(Arc<str>, i64)> = observations
        .iter()
        .filter(|o| o.parameter == Parameter::Pm25)
        .map(|o| ((o.station.clone(), o.time), o.value))
        .filter(|(key, pm25)| pm10.get(key).is_some_and(|pm10| pm25 > pm10))
        .map(|(key, _)| key)
        .collect();
    for o in observations.iter_mut() {
        if matches!(o.parameter, Parameter::Pm25 | Parameter::Pm10) && flagged.contains(&(o.station.clone(), o.time)) {
            o.flags |= FLAG_PM25_ABOVE_PM10;
        }
    }
}

/// What the API parsers' fuzz tests share: JSON answers damaged as a server or a proxy might damage them.
#[cfg(test)]
pub(crate) mod fuzz {
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;
    use serde_json::Value;

    /// A value to put in place of another.
    fn replacement() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            prop::sample::select(vec![0.0, -1.0, 1e308, -1e308, 999.0, -999.0, 1e-300, 0.5]).prop_map(Value::from),
            prop::sample::select(vec![
                "",
                "NaN",
                "1e309",
                "2024-01-01T00:30:00Z",
                "2024-01-01T00:00:00+0800",
                "2024-13-01T00:00",
                "ppb",
                "ppm",
                "mg/m³",
                "µg/m³",
                "pm25",
                "no2",
                "x",
            ])
            .prop_map(Value::from),
            "[ -~]{0,40}".prop_map(Value::from),
            Just(Value::Array(Vec::new())),
            Just(Value::Object(serde_json::Map::new())),
        ]
    }

    /// Replaces the `n`-th node (in a depth-first walk) of `value` by `new`, or removes it from its object.
    fn change(value: &mut Value, n: &mut usize, new: &Value, remove: bool) -> bool {
        if *n == 0 {
            *value = new.clone();
            return true;
        }
        *n -= 1;
        match value {
            Value::Array(items) => {
                for item in items.iter_mut() {
                    if change(item, n, new, remove) {
                        return true;
                    }
                }
            }
            Value::Object(map) => {
                let keys: Vec<String> = map.keys().cloned().collect();
                for key in keys {
                    if remove && *n == 0 {
                        map.remove(&key);
                        return true;
                    }
                    if let Some(child) = map.get_mut(&key)
                        && change(child, n, new, remove)
                    {
                        return true;
                    }
                }
            }
            _ => {}
        }
        false
    }

    /// Cases per run: `PROPTEST_CASES`, or `default`.
    pub fn cases(default: u32) -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    }

    /// What every chunk of a damaged answer must be: values read = kept + refused; refusals short; kept values
    /// finite, plausible and on the hour.
    pub fn chunk_is_sound(chunk: &super::Chunk) -> Result<(), TestCaseError> {
        prop_assert_eq!(
            chunk.values_read,
            (chunk.observations.len() + chunk.rejected.len()) as i64
        );
        for r in &chunk.rejected {
            prop_assert!(
                r.reason.len() < 500 && r.raw_value.as_ref().is_none_or(|v| v.len() < 64),
                "{r:?}"
            );
        }
        for o in &chunk.observations {
            prop_assert!(o.value.is_finite() && o.parameter.check(o.value).is_ok(), "{o:?}");
            prop_assert_eq!(o.time.rem_euclid(3600), 0);
        }
        Ok(())
    }

    /// `seed` with up to four nodes replaced or removed, then, sometimes, its text cut or a byte changed.
    pub fn damaged(seed: Value) -> impl Strategy<Value = Vec<u8>> {
        (
            prop::collection::vec((any::<usize>(), replacement(), any::<bool>()), 0..4),
            prop::option::weighted(0.2, (any::<usize>(), any::<u8>(), any::<bool>())),
        )
            .prop_map(move |(changes, bytes)| {
                let mut value = seed.clone();
                for (n, new, remove) in changes {
                    let mut n = n % 64;
                    change(&mut value, &mut n, &new, remove);
                }
                let mut text = serde_json::to_vec(&value).unwrap_or_default();
                if let Some((at, byte, cut)) = bytes
                    && !text.is_empty()
                {
                    let at = at % text.len();
                    if cut {
                        text.truncate(at);
                    } else {
                        text[at] = byte;
                    }
                }
                text
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pm25_above_pm10_flags_both_values_and_keeps_them() {
        let station: Arc<str> = Arc::from("A");
        let mut builder = ChunkBuilder::new("test");
        let record = || "line 2".to_owned();
        builder.value(&station, Parameter::Pm25, 0, 80.0, &record);
        builder.value(&station, Parameter::Pm10, 0, 60.0, &record);
        builder.value(&station, Parameter::Pm25, 3600, 50.0, &record);
        builder.value(&station, Parameter::Pm10, 3600, 60.0, &record);
        builder.value(&station, Parameter::Pm25, 7200, 999.0, &record);
        let chunk = builder.finish();
        assert_eq!(chunk.values_read, 5);
        let flags: Vec<i16> = chunk.observations.iter().map(|o| o.flags).collect();
        assert_eq!(flags, vec![1, 1, 0, 0]);
        assert_eq!(chunk.rejected.len(), 1);
        assert!(chunk.rejected[0].reason.contains("sentinel"), "{:?}", chunk.rejected[0]);
        assert_eq!(chunk.rejected[0].record, "line 2");
    }

    #[test]
    fn time_range_is_half_open() {
        let range = TimeRange {
            from: Some(10),
            to: Some(20),
        };
        assert!(!range.contains(9));
        assert!(range.contains(10));
        assert!(range.contains(19));
        assert!(!range.contains(20));
        assert!(TimeRange::default().contains(i64::MIN));
    }
}

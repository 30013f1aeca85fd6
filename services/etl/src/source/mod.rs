//! Connectors: each turns an external source into a stream of [`Chunk`]s of checked observations and refused
//! values. A chunk is what one database transaction writes.

pub mod csv;
pub mod http;
pub mod index;
pub mod open_meteo;
pub mod openaq;

use std::collections::{HashMap, HashSet};
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

    /// A value already converted to the stored unit: kept if plausible, refused with the reason otherwise.
    pub fn value(
        &mut self,
        station: &Arc<str>,
        parameter: Parameter,
        time: i64,
        value: f64,
        record: &dyn Fn() -> String,
    ) {
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
            }
            Err(why) => self.reject(
                Some(station),
                parameter.code(),
                Some(time),
                Some(value.to_string()),
                format!("{parameter} {value} is {why}"),
                record(),
            ),
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
            Ok(converted) => self.value(station, parameter, time, converted, record),
            Err(e) => self.reject(
                Some(station),
                parameter.code(),
                Some(time),
                Some(value.to_string()),
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

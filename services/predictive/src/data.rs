//! The data a model learns from and forecasts with: for each station, the target pollutant and the weather
//! covariates on one hourly grid, missing hours as NaN. Read from the database, or from CSV files (a path, a folder
//! or uploaded bytes) through the ETL's CSV reader, so a file is read the same way as a load would read it.

use std::collections::BTreeMap;

use airq_api::etl::CsvFormat;
use airq_core::parameter::Parameter;
use airq_core::store::{Station, Store};
use airq_sources::csv::{self, Input};
use airq_sources::{Chunk, TimeRange};
use tokio::sync::mpsc;

/// Seconds in an hour: the grid step.
pub const HOUR: i64 = 3600;

/// The weather covariates a model may use, in the order of [`StationSeries::weather`].
pub const WEATHER: [Parameter; 6] = [
    Parameter::Temp,
    Parameter::Pres,
    Parameter::Dewp,
    Parameter::Rain,
    Parameter::Wspm,
    Parameter::Wd,
];

/// Why data could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Source(#[from] airq_sources::SourceError),
    #[error(transparent)]
    Store(#[from] airq_core::store::Error),
    #[error("{0}")]
    Empty(String),
    #[error("unknown station {0:?}")]
    UnknownStation(String),
}

/// One station's series on the grid of its [`Dataset`].
#[derive(Debug, Clone, PartialEq)]
pub struct StationSeries {
    pub code: String,
    /// The target pollutant, in its stored unit.
    pub target: Vec<f32>,
    /// The weather covariates in the order of [`WEATHER`]; empty vectors when the data has none.
    pub weather: [Vec<f32>; 6],
}

impl StationSeries {
    /// Whether the station has any value of weather covariate `i`.
    pub fn has_weather(&self, i: usize) -> bool {
        self.weather[i].iter().any(|v| !v.is_nan())
    }
}

/// Stations' hourly series of one pollutant and the weather, on a common grid starting at `start`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub pollutant: Parameter,
    /// Unix seconds of the first hour of the grid (a whole hour, UTC).
    pub start: i64,
    pub hours: usize,
    pub stations: Vec<StationSeries>,
    /// The offset of the stations' local time from UTC (seconds east) that the files stated, where they did: the
    /// one most of their rows stated (`+08:00` for the Beijing files; a long file's own). `None` for UTC-only files
    /// and the database.
    pub stated_utc_offset: Option<i32>,
    /// The unit of the target series: the stored one, or the model's ([`Dataset::in_unit`]).
    pub unit: String,
}

/// Values by station code, then parameter, then hour.
type Collected = BTreeMap<String, BTreeMap<Parameter, Vec<(i64, f32)>>>;

/// Adds a station's stored series (the non-empty ones) to its entry of [`Collected`].
fn collect_series(
    entry: &mut BTreeMap<Parameter, Vec<(i64, f32)>>,
    series: impl IntoIterator<Item = (Parameter, Vec<airq_core::store::Point>)>,
) {
    for (parameter, points) in series {
        if !points.is_empty() {
            entry.insert(parameter, points.iter().map(|p| (p.time, p.value as f32)).collect());
        }
    }
}

impl Dataset {
    /// The target series multiplied by `factor`, now in `unit` (the weather is untouched).
    pub fn in_unit(mut self, unit: &str, factor: f32) -> Self {
        if unit != self.unit {
            for station in &mut self.stations {
                station.target.iter_mut().for_each(|v| *v *= factor);
            }
            unit.clone_into(&mut self.unit);
        }
        self
    }

    /// Unix seconds of grid index `index`.
    pub fn time(&self, index: usize) -> i64 {
        self.start + index as i64 * HOUR
    }

    /// The grid index of hour `time` (truncated to the hour), if inside the grid.
    pub fn index(&self, time: i64) -> Option<usize> {
        let offset = time.div_euclid(HOUR) * HOUR - self.start;
        if offset < 0 {
            return None;
        }
        let index = usize::try_from(offset / HOUR).ok()?;
        (index < self.hours).then_some(index)
    }

    /// The position of station `code`.
    pub fn station(&self, code: &str) -> Option<usize> {
        self.stations.iter().position(|s| s.code == code)
    }

    /// The index of the newest hour with a target value at station `station`.
    pub fn last_observed(&self, station: usize) -> Option<usize> {
        self.stations.get(station)?.target.iter().rposition(|v| !v.is_nan())
    }

    /// Pads every series with missing hours up to and including hour `time`.
    pub fn extend_to(&mut self, time: i64) {
        let Ok(hours) = usize::try_from((time.div_euclid(HOUR) * HOUR - self.start) / HOUR + 1) else {
            return;
        };
        if hours <= self.hours {
            return;
        }
        self.hours = hours;
        for s in &mut self.stations {
            s.target.resize(hours, f32::NAN);
            for w in &mut s.weather {
                if !w.is_empty() {
                    w.resize(hours, f32::NAN);
                }
            }
        }
    }

    /// Count of target values present.
    pub fn target_values(&self) -> usize {
        self.stations
            .iter()
            .map(|s| s.target.iter().filter(|v| !v.is_nan()).count())
            .sum()
    }

    fn from_collected(pollutant: Parameter, collected: Collected, what: &str) -> Result<Self, DataError> {
        let mut first = i64::MAX;
        let mut last = i64::MIN;
        for series in collected.values() {
            if let Some(values) = series.get(&pollutant) {
                for (time, _) in values {
                    first = first.min(*time);
                    last = last.max(*time);
                }
            }
        }
        if first > last {
            return Err(DataError::Empty(format!("{what} has no {pollutant} values")));
        }
        let start = first.div_euclid(HOUR) * HOUR;
        let hours = usize::try_from((last.div_euclid(HOUR) * HOUR - start) / HOUR + 1).unwrap_or(0);
        let place = |values: Option<&Vec<(i64, f32)>>| {
            let mut grid = vec![f32::NAN; hours];
            for (time, value) in values.into_iter().flatten() {
                let offset = time.div_euclid(HOUR) * HOUR - start;
                if let Ok(i) = usize::try_from(offset / HOUR)
                    && let Some(slot) = grid.get_mut(i)
                {
                    *slot = *value;
                }
            }
            grid
        };
        let stations = collected
            .into_iter()
            .filter(|(_, series)| series.contains_key(&pollutant))
            .map(|(code, series)| StationSeries {
                target: place(series.get(&pollutant)),
                weather: WEATHER.map(|p| place(series.get(&p))),
                code,
            })
            .collect();
        Ok(Self {
            pollutant,
            start,
            hours,
            stations,
            stated_utc_offset: None,
            unit: pollutant.unit().to_owned(),
        })
    }

    /// Reads `pollutant` and the weather of `stations` (every station when empty) from `from` to `to` (Unix
    /// seconds, `to` exclusive) from the database.
    pub async fn from_store(
        store: &Store,
        pollutant: Parameter,
        stations: &[String],
        from: i64,
        to: i64,
    ) -> Result<Self, DataError> {
        let known = store.stations().await?;
        for code in stations {
            if !known.iter().any(|s| &s.code == code) {
                return Err(DataError::UnknownStation(code.clone()));
            }
        }
        let chosen: Vec<Station> = known
            .into_iter()
            .filter(|s| stations.is_empty() || stations.contains(&s.code))
            .collect();
        Self::from_stored_stations(store, pollutant, &chosen, from, to).await
    }

    /// [`Dataset::from_store`] for stations already looked up.
    pub async fn from_stored_stations(
        store: &Store,
        pollutant: Parameter,
        stations: &[Station],
        from: i64,
        to: i64,
    ) -> Result<Self, DataError> {
        let mut collected = Collected::new();
        let parameters: Vec<Parameter> = std::iter::once(pollutant).chain(WEATHER).collect();
        for station in stations {
            let series = store.series_of(station.id, &parameters, from, to).await?;
            collect_series(collected.entry(station.code.clone()).or_default(), series);
        }
        Self::from_collected(pollutant, collected, "the database")
    }

    /// [`Dataset::from_stored_stations`] for forecasting from one origin: the target from `from`, the weather only
    /// from `weather_from` (the features read the weather at the origin and a day before it, not over the longest
    /// lag), which is a fraction of the rows a request reads.
    pub async fn from_stored_recent(
        store: &Store,
        pollutant: Parameter,
        station: &Station,
        from: i64,
        weather_from: i64,
        to: i64,
    ) -> Result<Self, DataError> {
        let mut collected = Collected::new();
        let target = store.series_of(station.id, &[pollutant], from, to).await?;
        let weather = store
            .series_of(station.id, &WEATHER, weather_from.max(from), to)
            .await?;
        collect_series(
            collected.entry(station.code.clone()).or_default(),
            target.into_iter().chain(weather),
        );
        Self::from_collected(pollutant, collected, "the database")
    }

    /// Reads `pollutant` and the weather from CSV files: a file, a folder of files or an http(s) URL.
    pub async fn from_csv(location: &str, format: CsvFormat, pollutant: Parameter) -> Result<Self, DataError> {
        let inputs = csv::inputs(location)?;
        let (tx, rx) = mpsc::channel::<Chunk>(4);
        let reader = tokio::spawn(async move {
            for input in inputs {
                let tx = tx.clone();
                let name = input.name();
                let result = match input {
                    Input::File { path, .. } => tokio::task::spawn_blocking(move || {
                        let file = std::fs::File::open(&path).map_err(|e| airq_sources::SourceError::Read {
                            input: name.clone(),
                            detail: e.to_string(),
                        })?;
                        csv::read(&name, file, format, TimeRange::default(), &tx)
                    })
                    .await
                    .map_err(|e| airq_sources::SourceError::Read {
                        input: "a CSV reader task".to_owned(),
                        detail: e.to_string(),
                    })?,
                    Input::Url(url) => Err(airq_sources::SourceError::Read {
                        input: url,
                        detail: "training reads CSV files from a path; load a URL with airq-etl first".to_owned(),
                    }),
                };
                result?;
            }
            Ok::<(), airq_sources::SourceError>(())
        });
        let (collected, offset) = collect(rx).await;
        reader.await.map_err(|e| DataError::Empty(e.to_string()))??;
        let mut data = Self::from_collected(pollutant, collected, location)?;
        data.stated_utc_offset = offset;
        Ok(data)
    }

    /// Reads `pollutant` and the weather from the bytes of one CSV file (plain or gzip), e.g. an upload.
    pub async fn from_csv_bytes(
        name: &str,
        bytes: Vec<u8>,
        format: CsvFormat,
        pollutant: Parameter,
    ) -> Result<Self, DataError> {
        let (tx, rx) = mpsc::channel::<Chunk>(4);
        let input = name.to_owned();
        let reader = tokio::task::spawn_blocking(move || {
            csv::read(&input, std::io::Cursor::new(bytes), format, TimeRange::default(), &tx)
        });
        let (collected, offset) = collect(rx).await;
        reader.await.map_err(|e| DataError::Empty(e.to_string()))??;
        let mut data = Self::from_collected(pollutant, collected, name)?;
        data.stated_utc_offset = offset;
        Ok(data)
    }
}

/// The values the chunks carry, and the UTC offset most of their rows stated.
async fn collect(mut rx: mpsc::Receiver<Chunk>) -> (Collected, Option<i32>) {
    let mut collected = Collected::new();
    let mut offsets: BTreeMap<i32, u64> = BTreeMap::new();
    while let Some(chunk) = rx.recv().await {
        for (offset, rows) in chunk.stated_offsets {
            *offsets.entry(offset).or_default() += rows;
        }
        for o in chunk.observations {
            collected
                .entry(o.station.to_string())
                .or_default()
                .entry(o.parameter)
                .or_default()
                .push((o.time, o.value as f32));
        }
    }
    // The standard offset where daylight saving time moves it: the smaller one of the two most stated.
    let mut stated: Vec<(i32, u64)> = offsets.into_iter().collect();
    stated.sort_by_key(|(offset, rows)| (std::cmp::Reverse(*rows), *offset));
    let offset = match stated.as_slice() {
        [] => None,
        [(one, _)] => Some(*one),
        [(a, _), (b, _), ..] => Some(if (a - b).abs() == 3600 { *a.min(b) } else { *a }),
    };
    (collected, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\"No\",\"year\",\"month\",\"day\",\"hour\",\"PM2.5\",\"PM10\",\"SO2\",\"NO2\",\"CO\",\"O3\",\"TEMP\",\"PRES\",\"DEWP\",\"RAIN\",\"wd\",\"WSPM\",\"station\"
1,2013,3,1,0,4,4,4,7,300,77,-0.7,1023,-18.8,0,\"NNW\",4.4,\"A\"
2,2013,3,1,1,NA,8,4,7,300,77,-1.1,1023.2,-18.2,0,\"N\",4.7,\"A\"
3,2013,3,1,3,10,12,4,7,300,77,-1.1,1023.2,-18.2,0,\"N\",4.7,\"A\"
";

    #[tokio::test]
    async fn csv_rows_land_on_the_hourly_grid_with_gaps_as_nan() -> anyhow::Result<()> {
        let data =
            Dataset::from_csv_bytes("t.csv", FILE.as_bytes().to_vec(), CsvFormat::Beijing, Parameter::Pm25).await?;
        assert_eq!(data.hours, 4);
        // 2013-03-01 00:00 in Beijing is 2013-02-28 16:00 UTC.
        assert_eq!(data.start, 1_362_067_200);
        let a = &data.stations[0];
        assert_eq!(a.target[0], 4.0);
        assert!(a.target[1].is_nan() && a.target[2].is_nan());
        assert_eq!(a.target[3], 10.0);
        assert_eq!(a.weather[0][1], -1.1);
        assert_eq!(data.index(data.start + 3 * HOUR + 59), Some(3));
        assert_eq!(data.index(data.start - 1), None);
        assert_eq!(data.last_observed(0), Some(3));
        Ok(())
    }
}

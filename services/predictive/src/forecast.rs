//! Answering a forecast: read the station's recent data, run the model from the origin hour, and put the
//! calibrated intervals around each hour. The CLI and the HTTP API both answer through [`forecast`].

use airq_core::parameter::Parameter;
use airq_core::store::Store;
use chrono::DateTime;
use serde::Serialize;

use crate::adaptive::Levels;
use crate::data::{DataError, Dataset, HOUR};
use crate::model::{Hours, Model, ModelError, fmt_time};

/// Why a forecast cannot be given. Each is the caller's mistake (4xx) except `Store` and `Model`.
#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    #[error("unknown station {0:?}: the stations are listed at GET /api/stations (the dashboard's API)")]
    UnknownStation(String),
    #[error("station {station:?} has no {pollutant} data{detail}")]
    NoData {
        station: String,
        pollutant: Parameter,
        detail: String,
    },
    #[error("{0}")]
    Time(String),
    #[error("confidence level {level} is not supported: {reason}")]
    Confidence { level: f64, reason: String },
    #[error(transparent)]
    Store(#[from] airq_core::store::Error),
    #[error(transparent)]
    Model(ModelError),
}

impl From<ModelError> for ForecastError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Confidence { level, reason } => Self::Confidence { level, reason },
            other => Self::Model(other),
        }
    }
}

impl From<DataError> for ForecastError {
    fn from(e: DataError) -> Self {
        match e {
            DataError::UnknownStation(s) => Self::UnknownStation(s),
            DataError::Store(e) => Self::Store(e),
            other => Self::Time(other.to_string()),
        }
    }
}

/// An interval at one confidence level.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Interval {
    pub confidence: f64,
    pub lower: f64,
    pub upper: f64,
    /// The level asked of the calibration residuals for this interval when the serving process adapts it to the
    /// coverage measured on the truths that arrived since training (above `confidence` when the intervals have
    /// been missing more than they should; at most the widest the residuals bound); absent for fixed intervals.
    #[serde(rename = "adaptedLevel", skip_serializing_if = "Option::is_none")]
    pub adapted_level: Option<f64>,
}

/// The forecast for one hour.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForecastPoint {
    /// RFC 3339, UTC.
    pub time: String,
    pub horizon_hours: usize,
    pub value: f64,
    pub intervals: Vec<Interval>,
}

/// A forecast from one origin.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Forecast {
    pub model: String,
    pub version: String,
    pub algorithm: String,
    pub pollutant: String,
    pub unit: String,
    pub station: String,
    /// The newest hour the forecast looks at (RFC 3339, UTC).
    pub origin: String,
    /// True when an input was missing and the model's climatology answered instead.
    pub fallback: bool,
    pub points: Vec<ForecastPoint>,
}

/// What is asked.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Request {
    pub station: String,
    /// The hour forecast (Unix seconds); every hour of the horizon when absent.
    pub at: Option<i64>,
    /// Forecast from this hour instead of the station's newest data.
    pub origin: Option<i64>,
    pub confidence: Vec<f64>,
}

/// Hours of history a model needs before its origin: the longest lag, the 24-hour mean and the 24-hour pressure
/// change, and the fill allowance.
pub fn history_hours(model: &Model) -> i64 {
    let lags = model.meta.featurizer.lags.iter().copied().max().unwrap_or(1) as i64;
    lags.max(25) + crate::features::FILL_HOURS as i64 + 1
}

/// Hours of weather a forecast reads before its origin: the pressure change over 24 hours, and the fill allowance.
pub const WEATHER_HISTORY_HOURS: i64 = 24 + crate::features::FILL_HOURS as i64 + 1;

/// Reads what `model` needs to forecast `request.station` from the database: the origin hour (asked, or the newest
/// data) and the history before it.
pub async fn context(store: &Store, model: &Model, request: &Request) -> Result<(Dataset, i64), ForecastError> {
    let pollutant = model
        .meta
        .spec
        .pollutant()
        .map_err(|e| ForecastError::Model(ModelError::InvalidParameter(e.to_string())))?;
    let stations = store.stations().await?;
    let station = stations
        .iter()
        .find(|s| s.code == request.station)
        .ok_or_else(|| ForecastError::UnknownStation(request.station.clone()))?;
    let latest = store
        .latest(station.id, pollutant)
        .await?
        .ok_or_else(|| ForecastError::NoData {
            station: request.station.clone(),
            pollutant,
            detail: String::new(),
        })?;
    let origin = match request.origin {
        Some(origin) => {
            let origin = origin.div_euclid(HOUR) * HOUR;
            if origin > latest {
                return Err(ForecastError::Time(format!(
                    "origin {} is after the newest {pollutant} data of {} ({})",
                    fmt_time(origin),
                    request.station,
                    fmt_time(latest)
                )));
            }
            origin
        }
        None => latest,
    };
    let from = origin - history_hours(model) * HOUR;
    let weather_from = origin - WEATHER_HISTORY_HOURS * HOUR;
    let mut data = Dataset::from_stored_recent(store, pollutant, station, from, weather_from, origin + HOUR)
        .await
        .map_err(|e| match e {
            DataError::Empty(_) => ForecastError::NoData {
                station: request.station.clone(),
                pollutant,
                detail: format!(" between {} and {}", fmt_time(from), fmt_time(origin)),
            },
            other => other.into(),
        })?;
    // The origin itself may have no value (its inputs are then filled from the hours before, or the fallback answers).
    data.extend_to(origin);
    let data = model
        .meta
        .spec
        .in_unit(data)
        .map_err(|e| ForecastError::Model(ModelError::InvalidParameter(e.to_string())))?;
    Ok((data, origin))
}

/// Forecasts from `origin` (Unix seconds, an hour of `data`) for `request`; the intervals at a confidence level
/// that `adapted` follows get its adapted level, the others the fixed one.
pub fn forecast(
    name: &str,
    version: &str,
    model: &Model,
    data: &Dataset,
    origin: i64,
    request: &Request,
    adapted: Option<&Levels>,
) -> Result<Forecast, ForecastError> {
    let horizon = model.horizon();
    let station = data
        .station(&request.station)
        .ok_or_else(|| ForecastError::UnknownStation(request.station.clone()))?;
    let index = data
        .index(origin)
        .ok_or_else(|| ForecastError::Time(format!("origin {} is outside the data read", fmt_time(origin))))?;
    let hours: Vec<usize> = match request.at {
        Some(at) => {
            let at = at.div_euclid(HOUR) * HOUR;
            if at <= origin {
                return Err(ForecastError::Time(format!(
                    "{} is not after the forecast origin {} (the newest data used); ask for a later hour",
                    fmt_time(at),
                    fmt_time(origin)
                )));
            }
            let h = ((at - origin) / HOUR) as usize;
            if h > horizon {
                return Err(ForecastError::Time(format!(
                    "{} is {h} hours after the forecast origin {}, beyond the model's horizon of {horizon} hours",
                    fmt_time(at),
                    fmt_time(origin)
                )));
            }
            vec![h]
        }
        None => (1..=horizon).collect(),
    };
    let levels = if request.confidence.is_empty() {
        model.meta.spec.confidence_levels.clone()
    } else {
        request.confidence.clone()
    };
    // The dashboard asks for every hour; an API caller often for one (`at`), which is all that is computed then.
    let wanted = match request.at {
        Some(_) => Hours::Only(hours.clone()),
        None => Hours::All,
    };
    let raw = model
        .forecast_hours(data, &[(station, index)], &wanted)?
        .pop()
        .ok_or_else(|| ForecastError::Model(ModelError::InvalidParameter("no forecast".to_owned())))?;
    let fz = &model.meta.featurizer;
    let mut points = Vec::with_capacity(hours.len());
    let distribution = model.distribution();
    let code = &data.stations[station].code;
    for h in hours {
        let p = raw.points[h - 1];
        let c = model.climatology_point(code, origin + h as i64 * HOUR);
        let intervals = levels
            .iter()
            .map(|level| {
                let adapted_level = adapted
                    .and_then(|a| a.get(*level))
                    .map(|a| distribution.bounded_level(h - 1, p, a.level(), raw.fallback));
                let (lo, hi) = distribution.interval(h - 1, p, c, adapted_level.unwrap_or(*level), raw.fallback)?;
                Ok(Interval {
                    confidence: *level,
                    lower: rounded(fz.inverse(lo)),
                    upper: rounded(fz.inverse(hi)),
                    adapted_level: adapted_level.map(|l| (l * 10_000.0).round() / 10_000.0),
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        points.push(ForecastPoint {
            time: rfc3339(origin + h as i64 * HOUR),
            horizon_hours: h,
            value: rounded(fz.inverse(p)),
            intervals,
        });
    }
    Ok(Forecast {
        model: name.to_owned(),
        version: version.to_owned(),
        algorithm: model.meta.spec.algorithm.name().to_owned(),
        pollutant: data.pollutant.code().to_owned(),
        unit: data.unit.clone(),
        station: request.station.clone(),
        origin: rfc3339(origin),
        fallback: raw.fallback,
        points,
    })
}

/// A concentration as answered: to 0.01 µg/m³. The model computes in 32-bit floats, so digits past the
/// seventh are noise (`27.41109848022461`), and measurements are stored to 0.1 at best.
pub fn rounded(value: f32) -> f64 {
    (f64::from(value) * 100.0).round() / 100.0
}

pub fn rfc3339(t: i64) -> String {
    DateTime::from_timestamp(t, 0).map_or_else(|| t.to_string(), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// Parses a time (a date is its midnight UTC) to Unix seconds, naming the field when it fails.
pub fn parse_time(field: &str, text: &str) -> Result<i64, ForecastError> {
    airq_core::time::parse_instant(text).ok_or_else(|| {
        ForecastError::Time(format!(
            "{field}={text:?} is not a time: give {}",
            airq_core::time::ACCEPTED
        ))
    })
}

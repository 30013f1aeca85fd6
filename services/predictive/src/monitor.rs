//! A served model's forecast error, once the truth is stored. Every interval, each new hour of a model's stations
//! that has a stored value is compared with what the model forecasts for it from `lead` hours before (a day ahead,
//! or the model's horizon if shorter) with only the data up to that origin: the forecast a user asking then would
//! have got. The absolute error follows a seasonal detector per station (a day of hours per season, a week back), so
//! a model that stops working — a sensor that moved, inputs that went missing, a retraining gone wrong — opens an
//! anomaly in the shared table while the usual error of a smoggy evening does not. Exported as metrics too:
//! `airq_predictive_forecast_abs_error`, `…_forecasts_scored_total` and `…_forecast_interval_total` (inside or
//! outside the interval, whose ratio is the interval's live coverage).

use std::collections::HashMap;
use std::time::Duration;

use airq_anomaly::watch::{Anomaly, Method, Settings, Watcher};
use airq_core::store::Store;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::api::ApiState;
use crate::data::{Dataset, HOUR};
use crate::forecast::{history_hours, rfc3339};
use crate::model::Model;

/// The signal's name in metrics and the anomalies table.
pub const SIGNAL: &str = "forecast_abs_error";
/// The robust score above which an hour's error is anomalous (the gateway's default, NAB's best).
pub const THRESHOLD: f64 = 5.5;
/// The confidence level whose interval is checked against the truth.
pub const LEVEL: f64 = 0.9;
/// Hours scored at most in one round for a station: the detector's memory, so a first round warms it.
const MAX_HOURS_PER_ROUND: i64 = 24 * 7 * 2 + 48;

/// One hour scored.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub station: String,
    /// The hour forecast (Unix seconds).
    pub time: i64,
    pub forecast: f64,
    pub truth: f64,
    pub inside: bool,
}

/// What follows one model's errors between rounds.
pub struct ModelMonitor {
    name: String,
    watcher: Watcher,
    /// The newest hour scored, per station.
    scored_until: HashMap<String, i64>,
    /// The newest hour scored per subject, for the anomaly's description.
    last: HashMap<String, Scored>,
}

fn settings() -> Settings {
    Settings {
        method: Method::Seasonal { season: 24, seasons: 7 },
        threshold: THRESHOLD,
        clear_after: 5,
    }
}

impl ModelMonitor {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            watcher: Watcher::new(settings()),
            scored_until: HashMap::new(),
            last: HashMap::new(),
        }
    }

    fn subject(&self, station: &str) -> String {
        format!("{}/{station}", self.name)
    }

    /// Scores the hours stored since the last round; returns them in time order per station. A model without a
    /// trained version has nothing to score yet.
    pub async fn round(&mut self, state: &ApiState) -> Result<Vec<Scored>, String> {
        let loaded = match state.model(&self.name, None).await {
            Ok(loaded) => loaded,
            Err(e) if e.code == "not_trained" || e.code == "not_found" => return Ok(Vec::new()),
            Err(e) => return Err(e.message),
        };
        let model = &loaded.1;
        let pollutant = model.meta.spec.pollutant().map_err(|e| e.to_string())?;
        let lead = model.horizon().clamp(1, 24) as i64;
        let stations = state.store.stations().await.map_err(|e| e.to_string())?;
        let mut scored = Vec::new();
        for station in stations.iter().filter(|s| model.meta.stations.contains(&s.code)) {
            let Some(latest) = state
                .store
                .latest(station.id, pollutant)
                .await
                .map_err(|e| e.to_string())?
            else {
                continue;
            };
            let from = self
                .scored_until
                .get(&station.code)
                .map_or(latest - MAX_HOURS_PER_ROUND * HOUR, |t| t + HOUR)
                .max(latest - MAX_HOURS_PER_ROUND * HOUR);
            if from > latest {
                continue;
            }
            let read_from = from - (lead + history_hours(model)) * HOUR;
            let data = match Dataset::from_stored_stations(
                &state.store,
                pollutant,
                std::slice::from_ref(station),
                read_from,
                latest + HOUR,
            )
            .await
            {
                Ok(data) => data,
                Err(crate::data::DataError::Empty(_)) => continue,
                Err(e) => return Err(e.to_string()),
            };
            let model = loaded.clone();
            let code = station.code.clone();
            let hours = tokio::task::spawn_blocking(move || score_hours(&model.1, &data, &code, from, latest, lead))
                .await
                .map_err(|e| e.to_string())??;
            let now = Utc::now().timestamp();
            let subject = self.subject(&station.code);
            for hour in hours {
                match hour {
                    (_, None) => self.watcher.skip(SIGNAL, &subject, now),
                    (_, Some(s)) => {
                        let error = (s.forecast - s.truth).abs();
                        self.watcher.observe(SIGNAL, &subject, error, now);
                        let labels = [("model", self.name.clone()), ("station", s.station.clone())];
                        metrics::gauge!("airq_predictive_forecast_abs_error", &labels).set(error);
                        metrics::counter!("airq_predictive_forecasts_scored_total", "model" => self.name.clone())
                            .increment(1);
                        let outcome = if s.inside { "inside" } else { "outside" };
                        metrics::counter!("airq_predictive_forecast_interval_total", "model" => self.name.clone(),
                            "confidence" => LEVEL.to_string(), "outcome" => outcome)
                        .increment(1);
                        self.last.insert(subject.clone(), s.clone());
                        scored.push(s);
                    }
                }
            }
            self.scored_until.insert(station.code.clone(), latest);
        }
        for (signal, subject, score, open) in self.watcher.scores() {
            let labels = [("signal", signal.to_owned()), ("subject", subject.to_owned())];
            metrics::gauge!("airq_predictive_anomaly_score", &labels).set(score);
            metrics::gauge!("airq_predictive_anomalous", &labels).set(if open { 1.0 } else { 0.0 });
        }
        Ok(scored)
    }

    /// Records the open anomalies (valid until `expires_at` unless refreshed) and closes those that ended.
    pub async fn record(&mut self, log: &Store, expires_at: DateTime<Utc>) -> Result<(), airq_core::store::Error> {
        let closed = self.watcher.take_closed();
        log.record_watched("predictive", "", &self.watcher.open(), &closed, expires_at, |a| {
            self.detail(a)
        })
        .await
    }

    fn detail(&self, anomaly: &Anomaly) -> String {
        let usual = anomaly
            .expected
            .map_or_else(|| "not known yet".to_owned(), |e| format!("about {e:.1}"));
        match self.last.get(&anomaly.subject) {
            Some(s) => format!(
                "model {}: the forecast for {} at {} was {:.1} where {:.1} was measured: error {:.1}, usually {usual}",
                self.name,
                s.station,
                rfc3339(s.time),
                s.forecast,
                s.truth,
                anomaly.value
            ),
            None => format!(
                "model {}: forecast error {:.1}, usually {usual}",
                self.name, anomaly.value
            ),
        }
    }

    /// The anomalies open now.
    pub fn open(&self) -> Vec<Anomaly> {
        self.watcher.open()
    }
}

/// Each hour from `from` to `latest` with the forecast made `lead` hours before it (`None` where the truth or the
/// origin is missing from `data`).
fn score_hours(
    model: &Model,
    data: &Dataset,
    station: &str,
    from: i64,
    latest: i64,
    lead: i64,
) -> Result<Vec<(i64, Option<Scored>)>, String> {
    let Some(s) = data.station(station) else {
        return Ok(Vec::new());
    };
    let hours: Vec<i64> = (0..=(latest - from) / HOUR).map(|i| from + i * HOUR).collect();
    // Each hour's truth and the origin of its forecast; only hours with both are forecast.
    let inputs: Vec<Option<(f32, usize)>> = hours
        .iter()
        .map(|&t| {
            let truth = data.stations[s].target[data.index(t)?];
            let origin = data.index(t - lead * HOUR)?;
            (!truth.is_nan()).then_some((truth, origin))
        })
        .collect();
    let keys: Vec<(usize, usize)> = inputs.iter().flatten().map(|&(_, origin)| (s, origin)).collect();
    let mut forecasts = model.forecast_many(data, &keys).map_err(|e| e.to_string())?.into_iter();
    let fz = &model.meta.featurizer;
    let h = (lead as usize).saturating_sub(1);
    let mut scored = Vec::with_capacity(hours.len());
    for (&t, input) in hours.iter().zip(&inputs) {
        let hour = match input.and_then(|(truth, _)| Some((truth, forecasts.next()?))) {
            Some((truth, f)) => {
                let p = f.points[h];
                let (lo, hi) = model
                    .conformal
                    .offsets(h, p, LEVEL, f.fallback)
                    .map_err(|e| e.to_string())?;
                let truth = f64::from(truth);
                Some(Scored {
                    station: station.to_owned(),
                    time: t,
                    forecast: f64::from(fz.inverse(p)),
                    truth,
                    inside: (f64::from(fz.inverse(p + lo))..=f64::from(fz.inverse(p + hi))).contains(&truth),
                })
            }
            None => None,
        };
        scored.push((t, hour));
    }
    Ok(scored)
}

/// Follows, every `interval` until `stop`, the model `state` serves (a PredictiveModel's server) or, serving every
/// model (one machine), each model with a version; records their anomalies in the database.
pub async fn follow(state: ApiState, interval: Duration, stop: CancellationToken) {
    let lease = chrono::Duration::from_std((interval * 3).max(Duration::from_secs(60))).unwrap_or_default();
    let mut monitors: HashMap<String, ModelMonitor> = HashMap::new();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        let names = match &state.served {
            Some((name, _)) => vec![name.clone()],
            None => state.registry.names().await.unwrap_or_default(),
        };
        for name in names {
            let monitor = monitors.entry(name.clone()).or_insert_with(|| ModelMonitor::new(&name));
            match monitor.round(&state).await {
                Ok(scored) if !scored.is_empty() => {
                    tracing::debug!(model = %name, hours = scored.len(), "forecasts scored against the truth");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(model = %name, error = %e, "forecasts not scored against the truth"),
            }
            if let Err(e) = monitor.record(&state.store, Utc::now() + lease).await {
                tracing::warn!(model = %name, error = %e, "could not record forecast anomalies");
            }
        }
    }
}

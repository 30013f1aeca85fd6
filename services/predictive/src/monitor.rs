//! A served model's forecast error, once the truth is stored. Every interval, each new hour of a model's stations
//! that has a stored value is compared with what the model forecasts for it from `lead` hours before (a day ahead,
//! or the model's horizon if shorter) with only the data up to that origin: the forecast a user asking then would
//! have got. The absolute error follows a seasonal detector per station (a day of hours per season, a week back), so
//! a model that stops working — a sensor that moved, inputs that went missing, a retraining gone wrong — opens an
//! anomaly in the shared table while the usual error of a smoggy evening does not.
//!
//! The same truths adapt the served intervals ([`crate::adaptive`]): each is checked against every forecast of it
//! within the horizon, at the interval served at that origin, and each hour of truths moves the levels once; the
//! forecasts answer with the levels now ([`ApiState::adapted`]). Exported as metrics too:
//! `airq_predictive_forecast_abs_error`, `…_forecasts_scored_total`, `…_forecast_interval_total` (inside or outside
//! the served interval: its live coverage), `…_forecast_fixed_interval_total` (the fixed one) and
//! `…_interval_adapted_level`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use airq_anomaly::watch::{Anomaly, Method, Settings, Watcher};
use airq_core::store::Store;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::adaptive::Levels;
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
    /// Inside the 90 % interval served then (adapted to the truths known at its origin).
    pub inside: bool,
    /// Inside the fixed split-conformal 90 % interval of the version.
    pub inside_fixed: bool,
}

/// One stored truth and a forecast of it: from `lead` hours before, in model space.
#[derive(Debug, Clone, Copy)]
struct Truth {
    time: i64,
    lead: usize,
    point: f32,
    fallback: bool,
    value: f32,
}

/// One station's truths of a round, and the hours of its day-ahead errors.
struct StationRound {
    code: String,
    /// The first hour new to this round (older truths only adapt the levels of a version seen for the first time).
    new_from: i64,
    truths: Vec<Truth>,
    /// The hours from `new_from` with no day-ahead forecast to score (no truth or no origin).
    missing: Vec<i64>,
}

/// What follows one model's errors between rounds.
pub struct ModelMonitor {
    name: String,
    watcher: Watcher,
    /// The newest hour scored, per station.
    scored_until: HashMap<String, i64>,
    /// The newest hour scored per subject, for the anomaly's description.
    last: HashMap<String, Scored>,
    /// The version whose intervals adapt, and their levels.
    adaptation: Option<(String, Levels)>,
    /// The levels asked after each hour's truths, for the forecasts issued then (their origins).
    history: BTreeMap<i64, Vec<f64>>,
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
            adaptation: None,
            history: BTreeMap::new(),
        }
    }

    fn subject(&self, station: &str) -> String {
        format!("{}/{station}", self.name)
    }

    /// The adapted levels of the version followed, once a round has seen it.
    pub fn levels(&self) -> Option<&Levels> {
        self.adaptation.as_ref().map(|(_, levels)| levels)
    }

    /// Scores the hours stored since the last round and adapts the served intervals' levels to them; returns the
    /// day-ahead forecasts scored, in time order. A model without a trained version has nothing to score yet. A
    /// version seen for the first time (after a start or a retraining) gets its levels adapted on the last two weeks
    /// and a bit of stored truths, so a restarted server serves what the one before it did.
    pub async fn round(&mut self, state: &ApiState) -> Result<Vec<Scored>, String> {
        // The version this server answers with: its pinned one (a PredictiveModel's Deployment), else the newest.
        let pinned = state
            .served
            .as_ref()
            .filter(|(name, _)| *name == self.name)
            .and_then(|(_, version)| *version);
        let loaded = match state.model(&self.name, pinned).await {
            Ok(loaded) => loaded,
            Err(e) if e.code == "not_trained" || e.code == "not_found" => return Ok(Vec::new()),
            Err(e) => return Err(e.message),
        };
        let (stored, model) = (&loaded.0, &loaded.1);
        let fresh = self.adaptation.as_ref().is_none_or(|(v, _)| *v != stored.version);
        if fresh {
            let mut targets = model.meta.spec.confidence_levels.clone();
            targets.push(LEVEL);
            self.adaptation = Some((stored.version.clone(), Levels::new(&targets)));
            self.history.clear();
        }
        let pollutant = model.meta.spec.pollutant().map_err(|e| e.to_string())?;
        let horizon = model.horizon() as i64;
        let lead = horizon.clamp(1, 24);
        let stations = state.store.stations().await.map_err(|e| e.to_string())?;
        let mut rounds = Vec::new();
        for station in stations.iter().filter(|s| model.meta.stations.contains(&s.code)) {
            let Some(latest) = state
                .store
                .latest(station.id, pollutant)
                .await
                .map_err(|e| e.to_string())?
            else {
                continue;
            };
            let floor = latest - MAX_HOURS_PER_ROUND * HOUR;
            let from = self
                .scored_until
                .get(&station.code)
                .map_or(floor, |t| t + HOUR)
                .max(floor);
            if from > latest {
                continue;
            }
            let adapt_from = if fresh { floor } else { from };
            let read_from = adapt_from - (horizon + history_hours(model)) * HOUR;
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
            let data = model.meta.spec.in_unit(data).map_err(|e| e.to_string())?;
            let loaded = loaded.clone();
            let code = station.code.clone();
            let window = (adapt_from, from, latest);
            let round = tokio::task::spawn_blocking(move || truths(&loaded.1, &data, &code, window, lead as usize))
                .await
                .map_err(|e| e.to_string())??;
            rounds.extend(round);
            self.scored_until.insert(station.code.clone(), latest);
        }
        let scored = self.adapt(model, &rounds, lead as usize)?;
        if let Some((version, levels)) = &self.adaptation {
            state.adapt(&self.name, version, levels.clone());
            for a in &levels.levels {
                metrics::gauge!("airq_predictive_interval_adapted_level", "model" => self.name.clone(),
                    "confidence" => a.target.to_string())
                .set(a.level());
            }
        }
        let now = Utc::now().timestamp();
        // The detector follows each station's day-ahead error hour by hour, gaps included.
        let mut events: Vec<(i64, String, Option<&Scored>)> = rounds
            .iter()
            .flat_map(|r| r.missing.iter().map(|t| (*t, r.code.clone(), None)))
            .chain(scored.iter().map(|s| (s.time, s.station.clone(), Some(s))))
            .collect();
        events.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (_, station, s) in events {
            let subject = self.subject(&station);
            let Some(s) = s else {
                self.watcher.skip(SIGNAL, &subject, now);
                continue;
            };
            let error = (s.forecast - s.truth).abs();
            self.watcher.observe(SIGNAL, &subject, error, now);
            let labels = [("model", self.name.clone()), ("station", s.station.clone())];
            metrics::gauge!("airq_predictive_forecast_abs_error", &labels).set(error);
            metrics::counter!("airq_predictive_forecasts_scored_total", "model" => self.name.clone()).increment(1);
            self.last.insert(subject, s.clone());
        }
        for (signal, subject, score, open) in self.watcher.scores() {
            let labels = [("signal", signal.to_owned()), ("subject", subject.to_owned())];
            metrics::gauge!("airq_predictive_anomaly_score", &labels).set(score);
            metrics::gauge!("airq_predictive_anomalous", &labels).set(if open { 1.0 } else { 0.0 });
        }
        Ok(scored)
    }

    /// Goes through the round's truths hour by hour: each is checked against the intervals served at its origin
    /// (the levels after the truths known then) and the fixed ones, and each hour's truths move the levels once
    /// (as the evaluation's replay does). Counts the new truths in the interval metrics; returns the day-ahead
    /// forecasts of the new hours.
    fn adapt(&mut self, model: &Model, rounds: &[StationRound], lead: usize) -> Result<Vec<Scored>, String> {
        let Some((_, levels)) = self.adaptation.as_mut() else {
            return Ok(Vec::new());
        };
        let fz = &model.meta.featurizer;
        let distribution = model.distribution();
        let initial: Vec<f64> = levels.levels.iter().map(|a| a.target).collect();
        // The level whose day-ahead forecasts are returned (the monitor's 90 %, always followed).
        let scored_level = initial.iter().position(|t| crate::adaptive::same(*t, LEVEL));
        let mut truths: Vec<(&StationRound, &Truth)> = rounds
            .iter()
            .flat_map(|r| r.truths.iter().map(move |t| (r, t)))
            .collect();
        truths.sort_by(|a, b| (a.1.time, &a.0.code, a.1.lead).cmp(&(b.1.time, &b.0.code, b.1.lead)));
        let mut scored = Vec::new();
        let mut inside_counts: HashMap<(usize, bool, bool), u64> = HashMap::new();
        let mut misses = vec![0usize; initial.len()];
        let newest = self.history.last_key_value().map_or(i64::MIN, |(t, _)| *t);
        let mut i = 0;
        while i < truths.len() {
            let hour = truths[i].1.time;
            misses.iter_mut().for_each(|m| *m = 0);
            let mut of = 0usize;
            while i < truths.len() && truths[i].1.time == hour {
                let (r, t) = truths[i];
                i += 1;
                let origin = t.time - t.lead as i64 * HOUR;
                let asked = self
                    .history
                    .range(..=origin)
                    .next_back()
                    .map_or(&initial, |(_, levels)| levels);
                let truth = f64::from(t.value);
                let within =
                    |(lo, hi): (f32, f32)| (f64::from(fz.inverse(lo))..=f64::from(fz.inverse(hi))).contains(&truth);
                let c = model.climatology_point(&r.code, t.time);
                let h = t.lead - 1;
                let new = t.time >= r.new_from;
                of += 1;
                for (l, a) in levels.levels.iter().enumerate() {
                    let served = distribution
                        .interval_bounded(h, t.point, c, asked[l], t.fallback)
                        .map_err(|e| e.to_string())?;
                    let inside = within(served);
                    misses[l] += usize::from(!inside);
                    if !new {
                        continue;
                    }
                    let fixed = distribution
                        .interval(h, t.point, c, a.target, t.fallback)
                        .map_err(|e| e.to_string())?;
                    let inside_fixed = within(fixed);
                    *inside_counts.entry((l, inside, inside_fixed)).or_default() += 1;
                    if t.lead == lead && scored_level == Some(l) {
                        scored.push(Scored {
                            station: r.code.clone(),
                            time: t.time,
                            forecast: f64::from(fz.inverse(t.point)),
                            truth,
                            inside,
                            inside_fixed,
                        });
                    }
                }
            }
            for (a, m) in levels.levels.iter_mut().zip(&misses) {
                a.observe_hour(*m, of);
            }
            // A station's late truths move the levels now, not in the past the forecasts already left.
            self.history.insert(hour.max(newest), levels.now());
        }
        if let Some(&last) = self.history.keys().next_back() {
            let keep = last - (MAX_HOURS_PER_ROUND + 24 * 7) * HOUR;
            self.history = self.history.split_off(&keep);
        }
        for ((l, inside, inside_fixed), n) in inside_counts {
            let confidence = levels.levels[l].target.to_string();
            let outcome = |inside: bool| if inside { "inside" } else { "outside" };
            metrics::counter!("airq_predictive_forecast_interval_total", "model" => self.name.clone(),
                "confidence" => confidence.clone(), "outcome" => outcome(inside))
            .increment(n);
            metrics::counter!("airq_predictive_forecast_fixed_interval_total", "model" => self.name.clone(),
                "confidence" => confidence, "outcome" => outcome(inside_fixed))
            .increment(n);
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

/// A station's truths from `adapt_from` to `latest` (`window`), each with every forecast of it the model's horizon
/// gives (one per origin before it), and the hours from `new_from` with no forecast `lead` hours ahead.
fn truths(
    model: &Model,
    data: &Dataset,
    station: &str,
    (adapt_from, new_from, latest): (i64, i64, i64),
    lead: usize,
) -> Result<Option<StationRound>, String> {
    let Some(s) = data.station(station) else {
        return Ok(None);
    };
    let horizon = model.horizon();
    let series = &data.stations[s].target;
    let truth = |t: i64| {
        data.index(t)
            .and_then(|i| series.get(i).copied())
            .filter(|v| !v.is_nan())
    };
    // Every origin that forecasts an hour of the window.
    let first = adapt_from - horizon as i64 * HOUR;
    let origins: Vec<usize> = (0..(latest - first) / HOUR)
        .filter_map(|i| data.index(first + i * HOUR))
        .collect();
    let keys: Vec<(usize, usize)> = origins.iter().map(|&o| (s, o)).collect();
    let forecasts = model.forecast_many(data, &keys).map_err(|e| e.to_string())?;
    let mut truths = Vec::new();
    let mut scored = std::collections::HashSet::new();
    for (&o, f) in origins.iter().zip(&forecasts) {
        let origin = data.time(o);
        for h in 1..=horizon {
            let time = origin + h as i64 * HOUR;
            if time < adapt_from || time > latest {
                continue;
            }
            let Some(value) = truth(time) else { continue };
            if h == lead {
                scored.insert(time);
            }
            truths.push(Truth {
                time,
                lead: h,
                point: f.points[h - 1],
                fallback: f.fallback,
                value,
            });
        }
    }
    let missing = (0..=(latest - new_from) / HOUR)
        .map(|i| new_from + i * HOUR)
        .filter(|t| !scored.contains(t))
        .collect();
    Ok(Some(StationRound {
        code: station.to_owned(),
        new_from,
        truths,
        missing,
    }))
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

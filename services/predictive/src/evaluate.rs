//! The evaluation protocol of the design brief, the same for every algorithm and baseline: fit up to a day,
//! calibrate the intervals on the next period, then forecast once a day at a fixed local hour for each of the next
//! 24 hours over the test period, using only data up to that hour, and score.

use chrono::{NaiveDate, TimeZone};
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, HOUR};
use crate::model::{Calibration, Conformal, Distribution, Model, ModelError, Plan, Progress, RawForecast, origins};
use crate::score::Scores;
use crate::spec::ModelSpec;

/// The periods and the daily forecast hour of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Protocol {
    pub fit_from: i64,
    /// Fitting uses targets before this hour; calibration starts here.
    pub calibrate_from: i64,
    pub test_from: i64,
    pub test_to: i64,
    /// Hour of day (UTC) at which forecasts are issued.
    pub origin_hour_utc: u32,
    /// Interval levels scored.
    pub levels: Vec<f64>,
}

/// Midnight of a local day at a fixed offset, in Unix seconds.
fn local_midnight(day: &str, utc_offset_hours: i32) -> Result<i64, String> {
    let date =
        NaiveDate::parse_from_str(day, "%Y-%m-%d").map_err(|e| format!("{day:?} is not a YYYY-MM-DD date: {e}"))?;
    let offset = chrono::FixedOffset::east_opt(utc_offset_hours * 3600)
        .ok_or_else(|| format!("bad UTC offset {utc_offset_hours}"))?;
    let midnight = date
        .and_hms_opt(0, 0, 0)
        .ok_or_else(|| format!("{day} has no midnight"))?;
    offset
        .from_local_datetime(&midnight)
        .single()
        .map(|t| t.timestamp())
        .ok_or_else(|| format!("{day} midnight is ambiguous"))
}

impl Protocol {
    /// Periods as local days (`to` days exclusive) at a fixed UTC offset, forecasts at `origin_hour` local.
    pub fn from_days(
        fit_from: &str,
        calibrate_from: &str,
        test_from: &str,
        test_to: &str,
        origin_hour: u32,
        utc_offset_hours: i32,
    ) -> Result<Self, String> {
        let p = Self {
            fit_from: local_midnight(fit_from, utc_offset_hours)?,
            calibrate_from: local_midnight(calibrate_from, utc_offset_hours)?,
            test_from: local_midnight(test_from, utc_offset_hours)?,
            test_to: local_midnight(test_to, utc_offset_hours)?,
            origin_hour_utc: (origin_hour as i32 - utc_offset_hours).rem_euclid(24) as u32,
            levels: vec![0.8, 0.9],
        };
        if !(p.fit_from < p.calibrate_from && p.calibrate_from < p.test_from && p.test_from < p.test_to) {
            return Err("the periods must follow each other: fit < calibrate < test".to_owned());
        }
        Ok(p)
    }

    /// Rolling-origin folds inside the fitting period: `folds` validation windows of `days` days, the newest ending
    /// where calibration starts, each preceded by `calibration_days` that calibrate it and fitted on everything
    /// from `fit_from` before those. Neither the calibration nor the test period is touched.
    pub fn folds(&self, folds: u32, days: u32, calibration_days: u32) -> Result<Vec<Self>, String> {
        const DAY: i64 = 86_400;
        (0..i64::from(folds))
            .rev()
            .map(|k| {
                let test_to = self.calibrate_from - k * i64::from(days) * DAY;
                let test_from = test_to - i64::from(days) * DAY;
                let calibrate_from = test_from - i64::from(calibration_days) * DAY;
                if calibrate_from - self.fit_from < 60 * DAY {
                    return Err(format!(
                        "{folds} folds of {days} days (each after {calibration_days} days of calibration) leave the \
                         oldest fold less than 60 days of the fitting period to fit on: use fewer or shorter folds, \
                         or an earlier --fit-from"
                    ));
                }
                Ok(Self {
                    fit_from: self.fit_from,
                    calibrate_from,
                    test_from,
                    test_to,
                    origin_hour_utc: self.origin_hour_utc,
                    levels: self.levels.clone(),
                })
            })
            .collect()
    }

    /// The design brief's protocol on the Beijing data (local time UTC+8): fit to 2015-02-28, calibrate
    /// 2015-03-01…2016-02-29, test 2016-03-01…2017-02-28, forecasts at 23:00.
    pub fn beijing() -> Self {
        Self::from_days("2013-03-01", "2015-03-01", "2016-03-01", "2017-03-01", 23, 8)
            .unwrap_or_else(|e| unreachable!("the built-in protocol is valid: {e}"))
    }

    /// How training sees the protocol.
    pub fn plan(&self) -> Plan {
        Plan {
            fit_from: self.fit_from,
            fit_to: self.calibrate_from,
            calibrate_from: self.calibrate_from,
            calibrate_to: self.test_from,
            origin_hour: Some(self.origin_hour_utc),
        }
    }
}

/// Coverage and Winkler score at one level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IntervalMetric {
    pub level: f64,
    pub coverage: f64,
    pub winkler: f64,
}

/// The scores of one model on one period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evaluation {
    /// Forecasts issued (origins × stations).
    pub forecasts: usize,
    /// Of those, answered by the climatology fallback because an input was missing.
    pub fallbacks: usize,
    /// Hourly values scored (forecast hours with a known truth).
    pub values: u64,
    pub mae: f64,
    pub rmse: f64,
    /// MAE of the next-day mean (forecast days with at least 18 known hours, the same hours on both sides).
    pub daily_mean_mae: f64,
    /// CRPS of the conformal predictive distribution (199 quantiles).
    pub crps: f64,
    pub intervals: Vec<IntervalMetric>,
    /// The features the model used, in order.
    #[serde(default)]
    pub features: Vec<String>,
    /// Weather inputs its spec asked for that the data did not have (their features left out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs_absent: Vec<String>,
    /// Coverage and Winkler score of the adaptive intervals, replayed over the period in time order
    /// ([`crate::adaptive`]): each origin's intervals at the levels adapted on the truths known by then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adaptive: Vec<IntervalMetric>,
    /// For a horizon beyond a day, the scores by day ahead ([`lead_bands`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_lead: Vec<LeadMetric>,
}

/// The scores of the hours `fromHour` to `toHour` ahead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeadMetric {
    pub from_hour: usize,
    pub to_hour: usize,
    pub values: u64,
    pub mae: f64,
    pub crps: f64,
    pub intervals: Vec<IntervalMetric>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adaptive: Vec<IntervalMetric>,
}

/// The days ahead reported for a horizon beyond a day: hours 1–24, 25–48, 49–72 and 145–168, as far as the horizon
/// reaches; none for a day or less (the whole is the first day).
pub fn lead_bands(horizon: usize) -> Vec<(usize, usize)> {
    if horizon <= 24 {
        return Vec::new();
    }
    [(1, 24), (25, 48), (49, 72), (145, 168)]
        .into_iter()
        .filter(|(from, _)| *from <= horizon)
        .map(|(from, to)| (from, to.min(horizon)))
        .collect()
}

/// The band of [`lead_bands`] that horizon index `h` (hour `h + 1` ahead) falls in.
fn band_of(bands: &[(usize, usize)], h: usize) -> Option<usize> {
    bands.iter().position(|(from, to)| (*from..=*to).contains(&(h + 1)))
}

fn interval_metrics(scores: &Scores) -> Vec<IntervalMetric> {
    scores
        .intervals()
        .iter()
        .map(|i| IntervalMetric {
            level: i.level,
            coverage: i.coverage(),
            winkler: i.winkler(),
        })
        .collect()
}

impl Evaluation {
    /// Coverage at `level`, if scored.
    pub fn coverage(&self, level: f64) -> Option<f64> {
        self.intervals
            .iter()
            .find(|i| (i.level - level).abs() < 1e-9)
            .map(|i| i.coverage)
    }
}

/// Scores `model`'s forecasts from `keys` against the truth in `data`.
pub fn score(model: &Model, data: &Dataset, keys: &[(usize, usize)], levels: &[f64]) -> Result<Evaluation, ModelError> {
    let forecasts = model.forecast_many(data, keys)?;
    let mut evaluation = score_with(model, data, keys, &forecasts, &[model.distribution()], &|_| 0, levels)?;
    let (adaptive, by_lead) = adaptive_replay(model, data, keys, &forecasts, levels)?;
    evaluation.adaptive = adaptive;
    for (lead, adaptive) in evaluation.by_lead.iter_mut().zip(by_lead) {
        lead.adaptive = adaptive;
    }
    Ok(evaluation)
}

/// Replays `forecasts` in the order of their origins with adaptive levels: the forecasts of one origin hour get the
/// intervals of the levels as adapted so far, and each truth updates the levels once its hour has passed (before
/// the next origin that could know it).
fn adaptive_replay(
    model: &Model,
    data: &Dataset,
    keys: &[(usize, usize)],
    forecasts: &[RawForecast],
    levels: &[f64],
) -> Result<(Vec<IntervalMetric>, Vec<Vec<IntervalMetric>>), ModelError> {
    let fz = &model.meta.featurizer;
    let distribution = model.distribution();
    let horizon = model.horizon();
    let bands = lead_bands(horizon);
    let mut band_scores: Vec<Scores> = bands.iter().map(|_| Scores::new(levels)).collect();
    let mut adaptive: Vec<crate::adaptive::Adaptive> =
        levels.iter().map(|l| crate::adaptive::Adaptive::new(*l)).collect();
    let mut scores = Scores::new(levels);
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by_key(|k| (data.time(keys[*k].1), keys[*k].0));
    // Truths seen but not yet known to the server, per hour and level: (misses, truths).
    let mut pending: std::collections::BTreeMap<(i64, usize), (usize, usize)> = Default::default();
    let mut intervals = Vec::with_capacity(levels.len());
    for k in order {
        let (s, o) = keys[k];
        let now = data.time(o);
        while let Some(entry) = pending.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, level), (misses, of)) = entry.remove_entry();
            adaptive[level].observe_hour(misses, of);
        }
        let f = &forecasts[k];
        let series = &data.stations[s].target;
        for h in 0..horizon {
            let Some(truth) = series.get(o + h + 1).copied().filter(|v| !v.is_nan()) else {
                continue;
            };
            let p = f.points[h];
            let c = model.climatology_point(&data.stations[s].code, data.time(o + h + 1));
            intervals.clear();
            for (i, a) in adaptive.iter().enumerate() {
                let (lo, hi) = distribution.interval_bounded(h, p, c, a.level(), f.fallback)?;
                let (lo, hi) = (f64::from(fz.inverse(lo)), f64::from(fz.inverse(hi)));
                intervals.push((lo, hi));
                let inside = lo <= f64::from(truth) && f64::from(truth) <= hi;
                let hour = pending.entry((now + (h as i64 + 1) * HOUR, i)).or_default();
                hour.0 += usize::from(!inside);
                hour.1 += 1;
            }
            scores.add(f64::from(fz.inverse(p)), &intervals, &[], f64::from(truth));
            if let Some(b) = band_of(&bands, h) {
                band_scores[b].add(f64::from(fz.inverse(p)), &intervals, &[], f64::from(truth));
            }
        }
    }
    Ok((
        interval_metrics(&scores),
        band_scores.iter().map(interval_metrics).collect(),
    ))
}

/// Scores `model` on its own calibration period with two folds: intervals calibrated on the origins of even days
/// score the odd days, and the reverse. Every forecast is scored once, with intervals that did not see it. The
/// forecasts are the ones the training made on that period (`calibration`).
pub fn cross_scored(model: &Model, data: &Dataset, calibration: &Calibration) -> Result<Evaluation, ModelError> {
    let horizon = model.horizon();
    let Calibration {
        keys,
        forecasts,
        truths,
    } = calibration;
    let fold = |i: usize| (data.time(keys[i].1).div_euclid(86_400) % 2) as usize;
    // A pool's climatology forecasts, split the same way (none without a pool).
    let normal = match model.pool {
        Some(_) => model.climatology_trajectories(data, keys),
        None => Vec::new(),
    };
    let mut points = [Vec::new(), Vec::new()];
    let mut truth = [Vec::new(), Vec::new()];
    let mut fallback = [Vec::new(), Vec::new()];
    let mut clim = [Vec::new(), Vec::new()];
    for (i, f) in forecasts.iter().enumerate() {
        let rows = i * horizon..(i + 1) * horizon;
        points[fold(i)].extend_from_slice(&f.points);
        truth[fold(i)].extend_from_slice(&truths[rows.clone()]);
        fallback[fold(i)].push(f.fallback);
        clim[fold(i)].extend_from_slice(normal.get(rows).unwrap_or_default());
    }
    // Fold k is scored with the intervals of the other fold, a pool's climatology sets too (its weights are the
    // model's, learned on the whole period).
    let other = [
        Conformal::fit(&points[1], &truth[1], &fallback[1], horizon),
        Conformal::fit(&points[0], &truth[0], &fallback[0], horizon),
    ];
    let pools = model.pool.as_ref().map(|pool| {
        let set = |k: usize| crate::pool::Pool {
            weights: pool.weights.clone(),
            climatology: Conformal::fit(&clim[k], &truth[k], &vec![false; fallback[k].len()], horizon),
        };
        [set(1), set(0)]
    });
    let distributions: Vec<Distribution> = (0..2)
        .map(|k| Distribution {
            conformal: &other[k],
            pool: pools.as_ref().map(|p| &p[k]),
        })
        .collect();
    score_with(
        model,
        data,
        keys,
        forecasts,
        &distributions,
        &fold,
        &model.meta.spec.confidence_levels,
    )
}

fn score_with(
    model: &Model,
    data: &Dataset,
    keys: &[(usize, usize)],
    forecasts: &[RawForecast],
    distributions: &[Distribution],
    distribution_of: &dyn Fn(usize) -> usize,
    levels: &[f64],
) -> Result<Evaluation, ModelError> {
    let fz = &model.meta.featurizer;
    let horizon = model.horizon();
    let mut scores = Scores::new(levels);
    let bands = lead_bands(horizon);
    let mut band_scores: Vec<Scores> = bands.iter().map(|_| Scores::new(levels)).collect();
    let mut daily_error = 0f64;
    let mut days = 0u64;
    let mut intervals = Vec::with_capacity(levels.len());
    let mut samples = Vec::with_capacity(crate::model::DISTRIBUTION_QUANTILES);
    let mut quantiles = Vec::with_capacity(crate::model::DISTRIBUTION_QUANTILES);
    for (k, ((s, o), f)) in keys.iter().zip(forecasts).enumerate() {
        let distribution = distributions[distribution_of(k)];
        let series = &data.stations[*s].target;
        let (mut sum_point, mut sum_truth, mut known) = (0f64, 0f64, 0u32);
        for h in 0..horizon {
            let Some(truth) = series.get(o + h + 1).copied().filter(|v| !v.is_nan()) else {
                continue;
            };
            let p = f.points[h];
            let point = fz.inverse(p);
            let c = model.climatology_point(&data.stations[*s].code, data.time(o + h + 1));
            intervals.clear();
            for level in levels {
                let (lo, hi) = distribution.interval(h, p, c, *level, f.fallback)?;
                intervals.push((f64::from(fz.inverse(lo)), f64::from(fz.inverse(hi))));
            }
            distribution.quantiles(h, p, c, f.fallback, &mut quantiles);
            samples.clear();
            samples.extend(quantiles.iter().map(|q| f64::from(fz.inverse(*q))));
            scores.add(f64::from(point), &intervals, &samples, f64::from(truth));
            if let Some(b) = band_of(&bands, h) {
                band_scores[b].add(f64::from(point), &intervals, &samples, f64::from(truth));
            }
            sum_point += f64::from(point);
            sum_truth += f64::from(truth);
            known += 1;
        }
        if known >= 18 && horizon >= 24 {
            daily_error += ((sum_point - sum_truth) / f64::from(known)).abs();
            days += 1;
        }
    }
    Ok(Evaluation {
        forecasts: keys.len(),
        fallbacks: forecasts.iter().filter(|f| f.fallback).count(),
        values: scores.count(),
        mae: scores.mae(),
        rmse: scores.rmse(),
        daily_mean_mae: if days > 0 { daily_error / days as f64 } else { f64::NAN },
        crps: scores.crps(),
        intervals: interval_metrics(&scores),
        features: model.meta.features.clone(),
        inputs_absent: model.meta.featurizer.weather_absent.clone(),
        adaptive: Vec::new(),
        by_lead: bands
            .iter()
            .zip(&band_scores)
            .map(|((from, to), s)| LeadMetric {
                from_hour: *from,
                to_hour: *to,
                values: s.count(),
                mae: s.mae(),
                crps: s.crps(),
                intervals: interval_metrics(s),
                adaptive: Vec::new(),
            })
            .collect(),
    })
}

/// The daily origins of a test period `[from, to)` at `hour` (UTC); the last days' targets past the data are unknown
/// and left out of the scores.
pub fn test_origins(data: &Dataset, from: i64, to: i64, horizon: usize, hour: u32) -> Vec<(usize, usize)> {
    origins(data, from, to + horizon as i64 * HOUR, horizon, Some(hour))
        .into_iter()
        .filter(|(_, o)| data.time(*o) < to)
        .collect()
}

/// Trains `spec` on `data` with `protocol`'s periods and scores it on the test period.
pub fn run(
    data: &Dataset,
    spec: &ModelSpec,
    protocol: &Protocol,
    progress: &dyn Progress,
) -> Result<(Model, Evaluation), ModelError> {
    let model = Model::train(data, spec, protocol.plan(), progress)?;
    progress.phase("test");
    let keys = test_origins(
        data,
        protocol.test_from,
        protocol.test_to,
        model.horizon(),
        protocol.origin_hour_utc,
    );
    let evaluation = score(&model, data, &keys, &protocol.levels)?;
    Ok((model, evaluation))
}

/// Scores a trained model, as it is, on a test period: daily forecasts at `hour` (UTC) from `from` to `to`.
pub fn test_model(model: &Model, data: &Dataset, from: i64, to: i64, hour: u32) -> Result<Evaluation, ModelError> {
    let keys = test_origins(data, from, to, model.horizon(), hour);
    if keys.is_empty() {
        return Err(ModelError::EmptyWindow(format!(
            "no forecast origin between {} and {}",
            crate::model::fmt_time(from),
            crate::model::fmt_time(to)
        )));
    }
    score(model, data, &keys, &model.meta.spec.confidence_levels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_beijing_protocol_is_in_local_time() {
        let p = Protocol::beijing();
        // 2015-03-01 00:00 at UTC+8 is 2015-02-28 16:00 UTC.
        assert_eq!(p.calibrate_from, 1_425_139_200);
        assert_eq!(p.origin_hour_utc, 15);
        assert!(Protocol::from_days("2016-01-01", "2015-01-01", "2016-03-01", "2017-03-01", 23, 8).is_err());
    }
}

/// Writes what the comparisons with scikit-learn's kNN and with LightGBM need (see
/// `services/predictive/benches/`): the fitting origins (hour of day, features, trajectories in model space) and
/// their times (`fit-times.csv`, Unix seconds), the test origins with features, truths and airq's own forecasts of
/// `spec` (concentrations) and their stations and times (`test-keys.csv`: station index, Unix seconds), airq's fit
/// and forecast times, and for studying the intervals the calibration period's forecasts at the same origin hour
/// (`calibrate.csv`: station index, time, 1 if the climatology filled in, truths, forecasts — concentrations). An
/// ensemble exports the features of its scale.
pub fn export(
    data: &Dataset,
    spec: &ModelSpec,
    protocol: &Protocol,
    dir: &std::path::Path,
) -> anyhow::Result<serde_json::Value> {
    use std::io::Write;
    let timer = PhaseTimer::default();
    let started = std::time::Instant::now();
    let model = Model::train(data, spec, protocol.plan(), &timer)?;
    // The fit alone where the phases say it (an ensemble's are its members'): the whole training otherwise.
    let fit_seconds = Some(timer.between("fit", "calibrate"))
        .filter(|s| s.is_finite())
        .unwrap_or_else(|| started.elapsed().as_secs_f64());
    let fz = &model.meta.featurizer;
    // Every hour's origins: airq scales the features over all of them, then searches those at the query's hour.
    let fit = crate::model::build_samples(data, fz, protocol.fit_from, protocol.calibrate_from, None);
    let dim = fz.dim();
    let horizon = fz.horizon;
    std::fs::create_dir_all(dir)?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join("fit.csv"))?);
    for (i, _) in fit.times.iter().enumerate() {
        let row: Vec<String> = std::iter::once(fit.hours[i].to_string())
            .chain(
                fit.x[i * dim..(i + 1) * dim]
                    .iter()
                    .chain(&fit.y[i * horizon..(i + 1) * horizon])
                    .map(|v| v.to_string()),
            )
            .collect();
        writeln!(out, "{}", row.join(","))?;
    }
    out.flush()?;
    let times: Vec<String> = fit.times.iter().map(i64::to_string).collect();
    std::fs::write(dir.join("fit-times.csv"), times.join("\n") + "\n")?;
    let keys: Vec<(usize, usize)> = origins(
        data,
        protocol.test_from,
        protocol.test_to + horizon as i64 * HOUR,
        horizon,
        Some(protocol.origin_hour_utc),
    )
    .into_iter()
    .filter(|(_, o)| data.time(*o) < protocol.test_to)
    .collect();
    let mut with_features = Vec::new();
    let mut x = Vec::new();
    for (s, o) in &keys {
        if fz.features(&data.stations[*s], *o, data.time(*o), &mut x) {
            with_features.push((*s, *o));
        }
    }
    let started = std::time::Instant::now();
    let forecasts = model.forecast_many(data, &with_features)?;
    let predict_seconds = started.elapsed().as_secs_f64();
    let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join("test.csv"))?);
    let mut keys_out = std::io::BufWriter::new(std::fs::File::create(dir.join("test-keys.csv"))?);
    for (s, o) in &with_features {
        writeln!(keys_out, "{s},{}", data.time(*o))?;
    }
    keys_out.flush()?;
    // The truths after origin `o` of station `s` ("nan" where unknown), then forecast `f` (concentrations).
    let outcome = |s: usize, o: usize, f: &RawForecast| -> Vec<String> {
        let series = &data.stations[s].target;
        (1..=horizon)
            .map(|h| {
                series
                    .get(o + h)
                    .copied()
                    .filter(|v| !v.is_nan())
                    .map_or(String::from("nan"), |v| v.to_string())
            })
            .chain(f.points.iter().map(|p| fz.inverse(*p).to_string()))
            .collect()
    };
    for (i, ((s, o), f)) in with_features.iter().zip(&forecasts).enumerate() {
        let row: Vec<String> = x[i * dim..(i + 1) * dim]
            .iter()
            .map(|v| v.to_string())
            .chain(outcome(*s, *o, f))
            .collect();
        writeln!(out, "{}", row.join(","))?;
    }
    out.flush()?;
    let calibration: Vec<(usize, usize)> = origins(
        data,
        protocol.calibrate_from,
        protocol.test_from,
        horizon,
        Some(protocol.origin_hour_utc),
    )
    .into_iter()
    .filter(|(s, o)| {
        let mut scratch = Vec::with_capacity(dim);
        fz.features(&data.stations[*s], *o, data.time(*o), &mut scratch)
    })
    .collect();
    let forecasts = model.forecast_many(data, &calibration)?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join("calibrate.csv"))?);
    for ((s, o), f) in calibration.iter().zip(&forecasts) {
        let row: Vec<String> = [
            s.to_string(),
            data.time(*o).to_string(),
            u8::from(f.fallback).to_string(),
        ]
        .into_iter()
        .chain(outcome(*s, *o, f))
        .collect();
        writeln!(out, "{}", row.join(","))?;
    }
    out.flush()?;
    let mut meta = serde_json::json!({
        "algorithm": spec.algorithm.name(),
        "logTransform": fz.log_transform, "dim": dim, "horizon": horizon,
        "originHourUtc": protocol.origin_hour_utc, "fitRows": fit.times.len(), "testRows": with_features.len(),
        "airqFitSeconds": fit_seconds, "airqForecastSeconds": predict_seconds,
        "features": fz.names(),
    });
    if let (Some(knn), Some(m)) = (&spec.algorithm.knn, meta.as_object_mut()) {
        m.insert("k".into(), knn.k.into());
        m.insert("distance".into(), serde_json::to_value(knn.distance)?);
        m.insert("weights".into(), serde_json::to_value(knn.weights)?);
        m.insert("scaling".into(), serde_json::to_value(knn.scaling)?);
    }
    std::fs::write(dir.join("meta.json"), serde_json::to_vec_pretty(&meta)?)?;
    Ok(meta)
}

/// Records when each training phase starts.
#[derive(Default)]
struct PhaseTimer {
    starts: std::sync::Mutex<Vec<(String, std::time::Instant)>>,
}

impl PhaseTimer {
    fn between(&self, from: &str, to: &str) -> f64 {
        let starts = self.starts.lock().unwrap_or_else(|p| p.into_inner());
        let at = |name: &str| starts.iter().find(|(n, _)| n == name).map(|(_, t)| *t);
        match (at(from), at(to)) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => f64::NAN,
        }
    }
}

impl Progress for PhaseTimer {
    fn phase(&self, name: &str) {
        self.starts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.to_owned(), std::time::Instant::now()));
    }
}

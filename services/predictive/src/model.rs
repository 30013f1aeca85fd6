//! Trained models: one estimator per algorithm behind one interface, a climatology fallback, and split-conformal
//! intervals per horizon. A model is saved as one safetensors buffer (tensors plus its metadata as JSON), the form
//! stored in the database.

use std::collections::HashMap;

use airq_api::model::{Distance, Objective, Scaling, Weights};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Module, Optimizer};
use chrono::{DateTime, Datelike, Timelike};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, HOUR};
use crate::features::Featurizer;
use crate::pool::Pool;
use crate::spec::ModelSpec;

/// Why a model could not be trained, loaded or asked.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("the training window has no usable data: {0}")]
    EmptyWindow(String),
    #[error("{0}")]
    InvalidParameter(String),
    #[error("the stored model cannot be read: {0}")]
    Artifact(String),
    #[error("computation failed: {0}")]
    Compute(#[from] candle_core::Error),
    #[error("confidence level {level} is not supported: {reason}")]
    Confidence { level: f64, reason: String },
}

type Result<T> = std::result::Result<T, ModelError>;

/// Which hours the model is fitted and calibrated on (Unix seconds; `to` exclusive: every target hour is before it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub fit_from: i64,
    pub fit_to: i64,
    pub calibrate_from: i64,
    pub calibrate_to: i64,
    /// Calibrate only on origins at this hour of the day (UTC), as the evaluation protocol forecasts; every hour when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_hour: Option<u32>,
}

/// What is known about a trained model besides its tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelMeta {
    pub spec: ModelSpec,
    pub featurizer: Featurizer,
    pub features: Vec<String>,
    pub stations: Vec<String>,
    pub plan: Plan,
    pub fit_samples: usize,
    pub calibration_forecasts: usize,
    /// Epochs run (neural network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs_run: Option<usize>,
    /// Trees kept per hour ahead after early stopping (gradient boosting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trees: Option<Vec<usize>>,
    /// The members and their weights (ensemble).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<EnsembleMeta>,
}

/// An ensemble's members and the weights learned on the calibration period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnsembleMeta {
    /// Each member's algorithm, in order.
    pub members: Vec<String>,
    /// Per hour ahead, each member's weight (non-negative, summing to 1): `weights[h][m]`.
    pub weights: Vec<Vec<f32>>,
    /// Each member's weight averaged over the hours ahead.
    pub mean_weights: Vec<f32>,
    /// Per day ahead, the combined forecast's weight in the pool of its distribution with the climatology's (the
    /// climatology's is one minus it; one: not pooled); absent when the spec turns the pool off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_weights: Option<Vec<f32>>,
}

/// A forecast from one origin: points in model space per horizon, and whether the fallback answered.
#[derive(Debug, Clone, PartialEq)]
pub struct RawForecast {
    pub points: Vec<f32>,
    pub fallback: bool,
}

/// Feature scaling: `(x - offset) / scale`.
#[derive(Debug, Clone, PartialEq)]
struct Scaler {
    offset: Vec<f32>,
    scale: Vec<f32>,
}

impl Scaler {
    fn fit(x: &[f32], dim: usize, scaling: Scaling) -> Self {
        let n = (x.len() / dim.max(1)).max(1) as f64;
        let mut offset = vec![0f32; dim];
        let mut scale = vec![1f32; dim];
        match scaling {
            Scaling::None => {}
            Scaling::Standard => {
                for j in 0..dim {
                    let mean = x.iter().skip(j).step_by(dim).map(|v| f64::from(*v)).sum::<f64>() / n;
                    let var = x
                        .iter()
                        .skip(j)
                        .step_by(dim)
                        .map(|v| (f64::from(*v) - mean).powi(2))
                        .sum::<f64>()
                        / n;
                    offset[j] = mean as f32;
                    scale[j] = if var > 1e-12 { var.sqrt() as f32 } else { 1.0 };
                }
            }
            Scaling::MinMax => {
                for j in 0..dim {
                    let (lo, hi) = x
                        .iter()
                        .skip(j)
                        .step_by(dim)
                        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
                            (lo.min(*v), hi.max(*v))
                        });
                    offset[j] = if lo.is_finite() { lo } else { 0.0 };
                    scale[j] = if hi - lo > 1e-12 { hi - lo } else { 1.0 };
                }
            }
        }
        Self { offset, scale }
    }

    fn apply(&self, x: &[f32]) -> Vec<f32> {
        let dim = self.offset.len();
        x.iter()
            .enumerate()
            .map(|(i, v)| (v - self.offset[i % dim]) / self.scale[i % dim])
            .collect()
    }
}

/// Mean of the target per station, month and hour of day (UTC), with station and global fallbacks.
#[derive(Debug, Clone, PartialEq)]
struct Climatology {
    stations: Vec<String>,
    /// stations × 12 × 24, raw units, NaN where no value.
    table: Vec<f32>,
    station_mean: Vec<f32>,
    /// 12 × 24 over every station.
    global: Vec<f32>,
    overall: f32,
}

fn month_hour(time: i64) -> usize {
    DateTime::from_timestamp(time, 0).map_or(0, |t| t.month0() as usize * 24 + t.hour() as usize)
}

impl Climatology {
    fn fit(data: &Dataset, from: i64, to: i64) -> Self {
        let s_count = data.stations.len();
        let mut sum = vec![0f64; s_count * 288];
        let mut count = vec![0u32; s_count * 288];
        let first = data.index(from.max(data.start)).unwrap_or(0);
        for (s, series) in data.stations.iter().enumerate() {
            for i in first..data.hours {
                let t = data.time(i);
                if t >= to {
                    break;
                }
                let v = series.target[i];
                if !v.is_nan() {
                    let slot = s * 288 + month_hour(t);
                    sum[slot] += f64::from(v);
                    count[slot] += 1;
                }
            }
        }
        let mean = |s: f64, c: u32| if c > 0 { (s / f64::from(c)) as f32 } else { f32::NAN };
        let table: Vec<f32> = sum.iter().zip(&count).map(|(s, c)| mean(*s, *c)).collect();
        let station_mean = (0..s_count)
            .map(|s| {
                let range = s * 288..(s + 1) * 288;
                mean(sum[range.clone()].iter().sum(), count[range].iter().sum())
            })
            .collect();
        let global = (0..288)
            .map(|k| {
                mean(
                    (0..s_count).map(|s| sum[s * 288 + k]).sum(),
                    (0..s_count).map(|s| count[s * 288 + k]).sum(),
                )
            })
            .collect();
        let overall = mean(sum.iter().sum(), count.iter().sum());
        Self {
            stations: data.stations.iter().map(|s| s.code.clone()).collect(),
            table,
            station_mean,
            global,
            overall,
        }
    }

    /// The climatology's forecasts (model space of `fz`) from each `(station, origin)` of `data`, every hour of
    /// `fz`'s horizon: n × horizon.
    fn trajectories(&self, fz: &Featurizer, data: &Dataset, keys: &[(usize, usize)]) -> Vec<f32> {
        keys.iter()
            .flat_map(|(s, o)| {
                let (code, time) = (&data.stations[*s].code, data.time(*o));
                (1..=fz.horizon).map(move |h| fz.forward(self.value(code, time + h as i64 * HOUR)))
            })
            .collect()
    }

    /// The climatological value (raw units) for station `code` at hour `time`.
    fn value(&self, code: &str, time: i64) -> f32 {
        let k = month_hour(time);
        let station = self.stations.iter().position(|s| s == code);
        [
            station.map(|s| self.table[s * 288 + k]),
            station.map(|s| self.station_mean[s]),
            Some(self.global[k]),
            Some(self.overall),
        ]
        .into_iter()
        .flatten()
        .find(|v| !v.is_nan())
        .unwrap_or(0.0)
    }
}

/// Sorted calibration residuals (truth − forecast, model space), in Mondrian sets: per horizon and per band of the
/// forecast value (the errors of a low forecast and a high one differ in size, and a year with more of one kind
/// would otherwise be covered wrongly), per horizon across bands (used when a band is too small for a level), and
/// one set pooled over every horizon for the forecasts the climatology fallback answered (their errors do not
/// depend on the horizon, and mixed in they would distort the model's own intervals).
#[derive(Debug, Clone, PartialEq)]
pub struct Conformal {
    horizon: usize,
    /// Bands of the forecast value per horizon ([`BANDS`] when fitted; a stored version keeps its own).
    bands: usize,
    /// Band limits per horizon: `bands - 1` forecast values (model space), ascending.
    cuts: Vec<f32>,
    /// `horizon` sets across bands, then `horizon × bands` banded sets, then the fallback set.
    residuals: Vec<Vec<f32>>,
}

/// Bands of the forecast value, each with its own residuals.
pub const BANDS: usize = 5;

/// How many evenly spaced quantiles of the residuals make the predictive distribution used for CRPS.
pub const DISTRIBUTION_QUANTILES: usize = 199;

impl Conformal {
    /// Residuals of `points` (n × horizon, model space) against `truths`; `fallback[i]` says whether forecast `i`
    /// came from the fallback.
    pub fn fit(points: &[f32], truths: &[f32], fallback: &[bool], horizon: usize) -> Self {
        let is_fallback = |i: usize| fallback.get(i / horizon).copied().unwrap_or(false);
        let mut cuts = Vec::with_capacity(horizon * (BANDS - 1));
        for h in 0..horizon {
            let mut own: Vec<f32> = points
                .iter()
                .zip(truths)
                .enumerate()
                .filter(|(i, (p, t))| i % horizon == h && !is_fallback(*i) && !p.is_nan() && !t.is_nan())
                .map(|(_, (p, _))| *p)
                .collect();
            own.sort_by(f32::total_cmp);
            for b in 1..BANDS {
                cuts.push(own.get(own.len() * b / BANDS).copied().unwrap_or(f32::INFINITY));
            }
        }
        let mut c = Self {
            horizon,
            bands: BANDS,
            cuts,
            residuals: vec![Vec::new(); horizon * (1 + BANDS) + 1],
        };
        for (i, (p, t)) in points.iter().zip(truths).enumerate() {
            if t.is_nan() || p.is_nan() {
                continue;
            }
            let h = i % horizon;
            if is_fallback(i) {
                c.residuals[horizon * (1 + BANDS)].push(t - p);
            } else {
                c.residuals[h].push(t - p);
                let band = c.band(h, *p);
                c.residuals[horizon + h * BANDS + band].push(t - p);
            }
        }
        for r in &mut c.residuals {
            r.sort_by(f32::total_cmp);
        }
        c
    }

    fn band(&self, h: usize, point: f32) -> usize {
        self.cuts[h * (self.bands - 1)..(h + 1) * (self.bands - 1)]
            .iter()
            .filter(|cut| point >= **cut)
            .count()
    }

    /// A stored version's sets: its band count follows from its cuts (`bands - 1` per horizon).
    fn stored(horizon: usize, cuts: Vec<f32>, residuals: Vec<Vec<f32>>) -> Result<Self> {
        let bands = cuts.len() / horizon.max(1) + 1;
        if horizon == 0 || cuts.len() != horizon * (bands - 1) || residuals.len() != horizon * (1 + bands) + 1 {
            return Err(ModelError::Artifact(format!(
                "the interval calibration does not fit the horizon of {horizon} hours: {} band limits, {} sets",
                cuts.len(),
                residuals.len()
            )));
        }
        Ok(Self {
            horizon,
            bands,
            cuts,
            residuals,
        })
    }

    /// Its sets as tensors named `{prefix}.counts`, `{prefix}.residuals` and `{prefix}.cuts`.
    fn to_tensors(&self, prefix: &str, tensors: &mut HashMap<String, Tensor>) -> Result<()> {
        let cpu = &Device::Cpu;
        let counts: Vec<u32> = self.residuals.iter().map(|r| r.len() as u32).collect();
        let flat: Vec<f32> = self.residuals.iter().flatten().copied().collect();
        tensors.insert(format!("{prefix}.counts"), Tensor::new(counts, cpu)?);
        tensors.insert(format!("{prefix}.residuals"), Tensor::new(flat, cpu)?);
        tensors.insert(format!("{prefix}.cuts"), Tensor::new(self.cuts.clone(), cpu)?);
        Ok(())
    }

    /// The smallest number of residuals of the model's own forecasts at any horizon.
    pub fn size(&self) -> usize {
        self.residuals[..self.horizon].iter().map(Vec::len).min().unwrap_or(0)
    }

    /// The set that calibrates a forecast of `point` at horizon index `h`: the fallback set for a fallback
    /// forecast, the forecast's band otherwise, each when large enough for `level`; else the horizon's whole set.
    pub(crate) fn set(&self, h: usize, point: f32, fallback: bool, level: f64) -> Option<&Vec<f32>> {
        if h >= self.horizon {
            return None;
        }
        let enough = |r: &&Vec<f32>| bounds(r.len(), level).is_some();
        let specific = if fallback {
            self.residuals.get(self.horizon * (1 + self.bands))
        } else {
            self.residuals.get(self.horizon + h * self.bands + self.band(h, point))
        };
        specific.filter(enough).or_else(|| self.residuals.get(h))
    }

    /// The split-conformal interval offsets (model space) for a forecast of `point` at horizon index `h` and
    /// `level`: the residual quantiles at ranks ⌊(n+1)·α/2⌋ and ⌈(n+1)·(1−α/2)⌉ of its set, which cover with
    /// probability at least `level` on exchangeable data.
    pub fn offsets(&self, h: usize, point: f32, level: f64, fallback: bool) -> Result<(f32, f32)> {
        if !(level > 0.0 && level < 1.0) {
            return Err(ModelError::Confidence {
                level,
                reason: "it must be strictly between 0 and 1".to_owned(),
            });
        }
        let r = self
            .set(h, point, fallback, level)
            .ok_or_else(|| ModelError::Confidence {
                level,
                reason: format!("horizon {} is beyond the model", h + 1),
            })?;
        let n = r.len();
        let Some((lo, hi)) = bounds(n, level) else {
            let max = 1.0 - 2.0 / (n + 1) as f64;
            return Err(ModelError::Confidence {
                level,
                reason: format!(
                    "{n} calibration forecasts bound levels up to {max:.4} at horizon {}",
                    h + 1
                ),
            });
        };
        Ok((r[lo - 1], r[hi - 1]))
    }

    /// `level`, or the highest level the residuals that calibrate a forecast of `point` at horizon index `h` can
    /// bound if it is higher (their widest interval): what an adaptive level ([`crate::adaptive`]) is asked at,
    /// [`Distribution::interval_bounded`].
    pub fn bounded_level(&self, h: usize, point: f32, level: f64, fallback: bool) -> f64 {
        let n = self.set(h, point, fallback, level).map_or(0, Vec::len);
        level.min(1.0 - 2.0 / (n + 1) as f64)
    }

    /// Evenly spaced quantiles of the residuals that calibrate a forecast of `point` at horizon index `h`.
    pub fn quantiles(&self, h: usize, point: f32, fallback: bool) -> Vec<f32> {
        let Some(r) = self.set(h, point, fallback, 0.5).filter(|r| !r.is_empty()) else {
            return Vec::new();
        };
        (1..=DISTRIBUTION_QUANTILES)
            .map(|q| {
                let p = q as f64 / (DISTRIBUTION_QUANTILES + 1) as f64;
                r[((p * r.len() as f64) as usize).min(r.len() - 1)]
            })
            .collect()
    }
}

/// How a model's intervals and predictive distribution are made: its conformal sets, pooled with the climatology's
/// where the model has a pool ([`crate::pool`]). Values are in the model's space; `climatology` is the
/// climatology's forecast of the same hour (model space), used only by a pool.
#[derive(Debug, Clone, Copy)]
pub struct Distribution<'a> {
    pub conformal: &'a Conformal,
    pub pool: Option<&'a Pool>,
}

impl Distribution<'_> {
    /// The pool's sets and the forecast's weight for a forecast of `point` at horizon index `h`, if it is pooled
    /// there: never a fallback forecast (the climatology answered it already) nor an hour of weight one.
    fn pooled(
        &self,
        h: usize,
        point: f32,
        climatology: f32,
        fallback: bool,
        level: f64,
    ) -> Option<(&[f32], &[f32], f64)> {
        let pool = self.pool.filter(|_| !fallback && !climatology.is_nan())?;
        let w = f64::from(*pool.weights.get(h)?);
        if w >= 1.0 {
            return None;
        }
        let a = self.conformal.set(h, point, false, level)?;
        let b = pool.climatology.set(h, climatology, false, level)?;
        (!a.is_empty() && !b.is_empty()).then_some((a.as_slice(), b.as_slice(), w))
    }

    /// The interval (model space, not offsets) at `level` for a forecast of `point` at horizon index `h`: the
    /// split-conformal one ([`Conformal::offsets`]), or the pool's quantiles where it is pooled. The level is
    /// checked against the model's own residuals either way.
    pub fn interval(&self, h: usize, point: f32, climatology: f32, level: f64, fallback: bool) -> Result<(f32, f32)> {
        let (lo, hi) = self.conformal.offsets(h, point, level, fallback)?;
        Ok(match self.pooled(h, point, climatology, fallback, level) {
            Some((a, b, w)) => crate::pool::interval(a, point, b, climatology, w, level),
            None => (point + lo, point + hi),
        })
    }

    /// [`Distribution::interval`] at [`Distribution::bounded_level`]: what an adaptive level asks.
    pub fn interval_bounded(
        &self,
        h: usize,
        point: f32,
        climatology: f32,
        level: f64,
        fallback: bool,
    ) -> Result<(f32, f32)> {
        let level = self.bounded_level(h, point, level, fallback);
        self.interval(h, point, climatology, level, fallback)
    }

    /// `level`, or the highest level the model's residuals can bound if it is higher.
    pub fn bounded_level(&self, h: usize, point: f32, level: f64, fallback: bool) -> f64 {
        self.conformal.bounded_level(h, point, level, fallback)
    }

    /// [`DISTRIBUTION_QUANTILES`] evenly spaced quantiles (model space) of the predictive distribution of a forecast
    /// of `point` at horizon index `h`, into `out`; empty without residuals.
    pub fn quantiles(&self, h: usize, point: f32, climatology: f32, fallback: bool, out: &mut Vec<f32>) {
        match self.pooled(h, point, climatology, fallback, 0.5) {
            Some((a, b, w)) => crate::pool::quantiles(a, point, b, climatology, w, out),
            None => {
                out.clear();
                out.extend(self.conformal.quantiles(h, point, fallback).iter().map(|q| point + q));
            }
        }
    }
}

/// The 1-based ranks of the conformal interval at `level` among `n` sorted residuals, if `n` is enough.
fn bounds(n: usize, level: f64) -> Option<(usize, usize)> {
    let alpha = 1.0 - level;
    // The tolerance keeps 1 − 0.9 = 0.0999… from moving a rank.
    let lo = ((n + 1) as f64 * alpha / 2.0 + 1e-9).floor() as usize;
    let hi = ((n + 1) as f64 * (1.0 - alpha / 2.0) - 1e-9).ceil() as usize;
    (lo >= 1 && hi <= n).then_some((lo, hi))
}

/// The reference origins at one hour of day: their scaled features (n × d), trajectories (n × H) and squared norms.
type HourGroup = (Tensor, Vec<f32>, Vec<f32>);

/// A k-nearest-neighbours analogue model: the trajectories after the k most similar past origins at the same hour
/// of day, averaged.
#[derive(Debug, Clone)]
struct KnnModel {
    k: usize,
    distance: Distance,
    weights: Weights,
    scaler: Scaler,
    /// Scaled features, n × d; trajectories n × H; hour of day (UTC) of each origin.
    x: Vec<f32>,
    y: Vec<f32>,
    hour: Vec<u8>,
    /// Per hour of day: the reference rows as a tensor, their trajectories, and squared norms.
    groups: Vec<Option<HourGroup>>,
}

impl KnnModel {
    #[allow(clippy::too_many_arguments)]
    fn new(
        k: usize,
        distance: Distance,
        weights: Weights,
        scaler: Scaler,
        x: Vec<f32>,
        y: Vec<f32>,
        hour: Vec<u8>,
        dim: usize,
        horizon: usize,
    ) -> Result<Self> {
        let mut groups = Vec::with_capacity(24);
        for h in 0..24u8 {
            let rows: Vec<usize> = hour
                .iter()
                .enumerate()
                .filter(|(_, x)| **x == h)
                .map(|(i, _)| i)
                .collect();
            if rows.is_empty() {
                groups.push(None);
                continue;
            }
            let gx: Vec<f32> = rows
                .iter()
                .flat_map(|r| x[r * dim..(r + 1) * dim].iter().copied())
                .collect();
            let gy: Vec<f32> = rows
                .iter()
                .flat_map(|r| y[r * horizon..(r + 1) * horizon].iter().copied())
                .collect();
            let norms = gx.chunks(dim.max(1)).map(|r| r.iter().map(|v| v * v).sum()).collect();
            let t = Tensor::from_vec(gx, (rows.len(), dim), &Device::Cpu)?;
            groups.push(Some((t, gy, norms)));
        }
        Ok(Self {
            k,
            distance,
            weights,
            scaler,
            x,
            y,
            hour,
            groups,
        })
    }

    /// Predictions for queries `q` (m × d, unscaled) at origin hours `hours`.
    fn predict(&self, q: &[f32], hours: &[u8], dim: usize, horizon: usize) -> Result<Vec<f32>> {
        let q = self.scaler.apply(q);
        let mut out = vec![f32::NAN; hours.len() * horizon];
        for h in 0..24u8 {
            let members: Vec<usize> = hours
                .iter()
                .enumerate()
                .filter(|(_, x)| **x == h)
                .map(|(i, _)| i)
                .collect();
            if members.is_empty() {
                continue;
            }
            // An hour without references (a model trained on few hours) borrows the nearest hour that has some.
            let Some((refs, ys, norms)) = (0..24)
                .flat_map(|d| [(h as usize + d) % 24, (h as usize + 24 - d) % 24])
                .find_map(|g| self.groups[g].as_ref())
            else {
                return Err(ModelError::EmptyWindow("the model has no reference origins".to_owned()));
            };
            let n = refs.dim(0)?;
            let k = self.k.min(n);
            let chunk = match self.distance {
                Distance::Manhattan => (4_000_000 / (n * dim).max(1)).max(1),
                _ => 512,
            };
            for part in members.chunks(chunk) {
                let qv: Vec<f32> = part
                    .iter()
                    .flat_map(|i| q[i * dim..(i + 1) * dim].iter().copied())
                    .collect();
                let qn: Vec<f32> = qv.chunks(dim.max(1)).map(|r| r.iter().map(|v| v * v).sum()).collect();
                let qt = Tensor::from_vec(qv, (part.len(), dim), &Device::Cpu)?;
                // Products with every reference (one matrix product), or the Manhattan distances themselves.
                let table = match self.distance {
                    Distance::Manhattan => qt.unsqueeze(1)?.broadcast_sub(&refs.unsqueeze(0)?)?.abs()?.sum(2)?,
                    Distance::Euclidean | Distance::Cosine => qt.matmul(&refs.t()?)?,
                }
                .flatten_all()?
                .to_vec1::<f32>()?;
                let distance = self.distance;
                // The distance of query row `i` to reference `j`, from its product `c`; for the ranking, Euclidean
                // distances leave out the query's own norm (the same for every reference) and the square root.
                let rank = |i: usize, j: usize, c: f32| match distance {
                    Distance::Euclidean => norms[j] - 2.0 * c,
                    Distance::Manhattan => c,
                    Distance::Cosine => 1.0 - c / (qn[i].sqrt() * norms[j].sqrt()).max(1e-12),
                };
                let actual = |i: usize, score: f32| match distance {
                    Distance::Euclidean => (qn[i] + score).max(0.0).sqrt(),
                    Distance::Manhattan | Distance::Cosine => score,
                };
                // The k nearest of each row: a selection (linear time), not a sort of every distance; rows in
                // parallel.
                use rayon::prelude::*;
                let (order, near): (Vec<Vec<u32>>, Vec<Vec<f32>>) = table
                    .par_chunks(n)
                    .enumerate()
                    .map(|(i, row)| {
                        let scores: Vec<f32> = row.iter().enumerate().map(|(j, c)| rank(i, j, *c)).collect();
                        let mut index: Vec<u32> = (0..n as u32).collect();
                        if k < n {
                            index.select_nth_unstable_by(k - 1, |a, b| {
                                scores[*a as usize].total_cmp(&scores[*b as usize])
                            });
                        }
                        index.truncate(k);
                        let d = index.iter().map(|j| actual(i, scores[*j as usize])).collect();
                        (index, d)
                    })
                    .unzip();
                for (row, query) in part.iter().enumerate() {
                    let target = &mut out[query * horizon..(query + 1) * horizon];
                    let mut total = 0f32;
                    target.iter_mut().for_each(|v| *v = 0.0);
                    for (j, r) in order[row].iter().enumerate() {
                        let w = match self.weights {
                            Weights::Uniform => 1.0,
                            Weights::Distance => 1.0 / (near[row][j].max(0.0) + 1e-6),
                        };
                        total += w;
                        let r = *r as usize;
                        for (t, v) in target.iter_mut().zip(&ys[r * horizon..(r + 1) * horizon]) {
                            *t += w * v;
                        }
                    }
                    target.iter_mut().for_each(|v| *v /= total);
                }
            }
        }
        Ok(out)
    }
}

/// Ridge regression of every horizon on the standardised features: `W = (XᵀX + λI)⁻¹ XᵀY`, intercept unpenalised.
#[derive(Debug, Clone)]
struct LinearModel {
    scaler: Scaler,
    /// (d + 1) × H, the last row the intercept.
    w: Tensor,
}

impl LinearModel {
    fn fit(x: &[f32], y: &[f32], dim: usize, horizon: usize, l2: f64) -> Result<Self> {
        let n = x.len() / dim;
        let scaler = Scaler::fit(x, dim, Scaling::Standard);
        let xs = scaler.apply(x);
        let mut design = Vec::with_capacity(n * (dim + 1));
        for row in xs.chunks(dim) {
            design.extend(row.iter().map(|v| f64::from(*v)));
            design.push(1.0);
        }
        let xt = Tensor::from_vec(design, (n, dim + 1), &Device::Cpu)?;
        let yt = Tensor::from_vec(
            y.iter().map(|v| f64::from(*v)).collect::<Vec<_>>(),
            (n, horizon),
            &Device::Cpu,
        )?;
        let xtx = xt.t()?.matmul(&xt)?.to_vec2::<f64>()?;
        let xty = xt.t()?.matmul(&yt)?.to_vec2::<f64>()?;
        let p = dim + 1;
        let mut a = nalgebra::DMatrix::<f64>::from_fn(p, p, |i, j| xtx[i][j]);
        for i in 0..dim {
            a[(i, i)] += l2;
        }
        let b = nalgebra::DMatrix::<f64>::from_fn(p, horizon, |i, j| xty[i][j]);
        let solution = match a.clone().cholesky() {
            Some(c) => c.solve(&b),
            None => a.lu().solve(&b).ok_or_else(|| {
                ModelError::InvalidParameter("the features are collinear: set linear.l2 above 0".to_owned())
            })?,
        };
        let w: Vec<f32> = (0..p)
            .flat_map(|i| (0..horizon).map(move |j| (i, j)))
            .map(|(i, j)| solution[(i, j)] as f32)
            .collect();
        Ok(Self {
            scaler,
            w: Tensor::from_vec(w, (p, horizon), &Device::Cpu)?,
        })
    }

    fn predict(&self, q: &[f32], dim: usize) -> Result<Vec<f32>> {
        let m = q.len() / dim;
        let mut design = Vec::with_capacity(m * (dim + 1));
        for row in self.scaler.apply(q).chunks(dim) {
            design.extend_from_slice(row);
            design.push(1.0);
        }
        let qt = Tensor::from_vec(design, (m, dim + 1), &Device::Cpu)?;
        Ok(qt.matmul(&self.w)?.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// A feed-forward network (ReLU) from the standardised features to the standardised trajectory.
#[derive(Debug, Clone)]
struct Mlp {
    scaler: Scaler,
    target_mean: Vec<f32>,
    target_scale: Vec<f32>,
    layers: Vec<candle_nn::Linear>,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if i + 1 < self.layers.len() {
                h = h.relu()?;
            }
        }
        Ok(h)
    }

    #[allow(clippy::too_many_arguments)]
    fn fit(
        x: &[f32],
        y: &[f32],
        times: &[i64],
        dim: usize,
        horizon: usize,
        nn: &airq_api::model::NeuralNetwork,
        progress: &dyn Fn(usize, usize, f32),
    ) -> Result<(Self, usize)> {
        let scaler = Scaler::fit(x, dim, Scaling::Standard);
        let target_stats = Scaler::fit(y, horizon, Scaling::Standard);
        let xs = scaler.apply(x);
        let ys = target_stats.apply(y);
        let (train, valid) = hold_out_newest(times)?;
        let device = Device::Cpu;
        let gather = |rows: &[usize], data: &[f32], width: usize| -> candle_core::Result<Tensor> {
            let v: Vec<f32> = rows
                .iter()
                .flat_map(|r| data[r * width..(r + 1) * width].iter().copied())
                .collect();
            Tensor::from_vec(v, (rows.len(), width), &device)
        };
        let valid_x = gather(&valid, &xs, dim)?;
        let valid_y = gather(&valid, &ys, horizon)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x41_49_52_51);
        let mut sizes: Vec<usize> = vec![dim];
        sizes.extend(nn.hidden_sizes.iter().map(|h| *h as usize));
        sizes.push(horizon);
        let mut vars = Vec::new();
        let mut layers = Vec::new();
        for pair in sizes.windows(2) {
            let (fan_in, fan_out) = (pair[0], pair[1]);
            let bound = (6.0 / fan_in as f32).sqrt() / 2.0;
            let w: Vec<f32> = (0..fan_in * fan_out).map(|_| rng.random_range(-bound..bound)).collect();
            let w = Var::from_tensor(&Tensor::from_vec(w, (fan_out, fan_in), &device)?)?;
            let b = Var::from_tensor(&Tensor::zeros(fan_out, DType::F32, &device)?)?;
            layers.push(candle_nn::Linear::new(
                w.as_tensor().clone(),
                Some(b.as_tensor().clone()),
            ));
            vars.push(w);
            vars.push(b);
        }
        let mut model = Self {
            scaler,
            target_mean: target_stats.offset,
            target_scale: target_stats.scale,
            layers,
        };
        let mut optimiser = candle_nn::AdamW::new(
            vars.clone(),
            candle_nn::ParamsAdamW {
                lr: nn.learning_rate,
                weight_decay: 1e-4,
                ..candle_nn::ParamsAdamW::default()
            },
        )?;
        let mut best = (f32::INFINITY, Vec::<Tensor>::new(), 0usize);
        let objective = nn.loss.unwrap_or_default();
        let mut order = train.clone();
        let batch = 256;
        let mut epochs_run = 0;
        for epoch in 0..nn.epochs as usize {
            order.shuffle(&mut rng);
            for rows in order.chunks(batch) {
                let bx = gather(rows, &xs, dim)?;
                let by = gather(rows, &ys, horizon)?;
                let loss = nn_loss(objective, &model.forward(&bx)?, &by)?;
                optimiser.backward_step(&loss)?;
            }
            epochs_run = epoch + 1;
            let valid_loss = nn_loss(objective, &model.forward(&valid_x)?, &valid_y)?.to_scalar::<f32>()?;
            progress(epochs_run, nn.epochs as usize, valid_loss);
            if valid_loss < best.0 {
                let snapshot = vars
                    .iter()
                    .map(|v| v.as_tensor().copy())
                    .collect::<candle_core::Result<Vec<_>>>()?;
                best = (valid_loss, snapshot, epoch);
            } else if epoch - best.2 >= nn.early_stopping_patience as usize {
                break;
            }
        }
        if !best.1.is_empty() {
            model.layers = best
                .1
                .chunks(2)
                .map(|wb| candle_nn::Linear::new(wb[0].clone(), Some(wb[1].clone())))
                .collect();
        }
        Ok((model, epochs_run))
    }

    fn predict(&self, q: &[f32], dim: usize, horizon: usize) -> Result<Vec<f32>> {
        let m = q.len() / dim;
        let qt = Tensor::from_vec(self.scaler.apply(q), (m, dim), &Device::Cpu)?;
        let out = self.forward(&qt)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(out
            .iter()
            .enumerate()
            .map(|(i, v)| v * self.target_scale[i % horizon] + self.target_mean[i % horizon])
            .collect())
    }
}

/// The network's training loss between its outputs and the targets.
fn nn_loss(loss: Objective, output: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
    match loss {
        Objective::AbsoluteError => (output - target)?.abs()?.mean_all(),
        Objective::SquaredError => candle_nn::loss::mse(output, target),
    }
}

#[derive(Debug, Clone)]
enum Estimator {
    Persistence,
    SeasonalNaive {
        season: usize,
    },
    Climatology,
    Knn(KnnModel),
    Linear(LinearModel),
    Nn(Mlp),
    Gbm(crate::gbm::GbmModel),
    /// Members and their weights, horizon × members.
    Ensemble(Vec<Model>, Vec<f32>),
}

/// A trained model.
#[derive(Debug, Clone)]
pub struct Model {
    pub meta: ModelMeta,
    estimator: Estimator,
    climatology: Climatology,
    pub conformal: Conformal,
    /// The pool of the forecast's distribution with the climatology's (ensembles that ask for it).
    pub pool: Option<Pool>,
}

/// Training samples: feature rows and complete trajectories (model space).
pub struct Samples {
    pub x: Vec<f32>,
    pub y: Vec<f32>,
    pub times: Vec<i64>,
    pub hours: Vec<u8>,
}

fn origin_hour(time: i64) -> u8 {
    DateTime::from_timestamp(time, 0).map_or(0, |t| t.hour() as u8)
}

/// Progress callbacks of a training: a phase name, then how far the phase is (forecasts made of those it needs),
/// and epochs for the neural network.
pub trait Progress: Sync {
    fn phase(&self, _name: &str) {}
    fn count(&self, _done: usize, _of: usize) {}
    fn epoch(&self, _epoch: usize, _of: usize, _validation_loss: f32) {}
    /// The training is over (stored, or scored): `message` says how it went.
    fn finish(&self, _message: &str) {}
}

/// The forecasts a training made on its calibration period: the evaluation scores the same ones instead of making
/// them again.
pub struct Calibration {
    pub keys: Vec<(usize, usize)>,
    pub forecasts: Vec<RawForecast>,
    /// Model space, `keys.len() × horizon`.
    pub truths: Vec<f32>,
}

/// Passes a member's progress on with its name before each phase.
struct Prefixed<'a> {
    inner: &'a dyn Progress,
    prefix: String,
}

impl Progress for Prefixed<'_> {
    fn phase(&self, name: &str) {
        self.inner.phase(&format!("{}: {name}", self.prefix));
    }
    fn count(&self, done: usize, of: usize) {
        self.inner.count(done, of);
    }
    fn epoch(&self, epoch: usize, of: usize, validation_loss: f32) {
        self.inner.epoch(epoch, of, validation_loss);
    }
}

/// Reports nothing.
pub struct Quiet;
impl Progress for Quiet {}

impl Model {
    /// Trains the algorithm of `spec` on `data` as `plan` says, and calibrates its intervals.
    pub fn train(data: &Dataset, spec: &ModelSpec, plan: Plan, progress: &dyn Progress) -> Result<Self> {
        Self::train_calibrated(data, spec, plan, progress).map(|(model, _)| model)
    }

    /// [`Model::train`], with the forecasts made on the calibration period.
    pub fn train_calibrated(
        data: &Dataset,
        spec: &ModelSpec,
        plan: Plan,
        progress: &dyn Progress,
    ) -> Result<(Self, Calibration)> {
        spec.validate()
            .map_err(|e| ModelError::InvalidParameter(e.to_string()))?;
        let horizon = spec.horizon_hours as usize;
        // The weather inputs asked for that no station has: the features needing them are left out, and said.
        let weather_absent: Vec<String> = if spec.features.weather {
            (0..crate::features::WEATHER_INPUTS.len())
                .filter(|k| !data.stations.iter().any(|s| s.has_weather(*k)))
                .map(|k| crate::features::WEATHER_INPUTS[k].to_owned())
                .collect()
        } else {
            Vec::new()
        };
        let featurizer = Featurizer {
            lags: spec.features.lags.clone(),
            calendar: spec.features.calendar,
            weather: spec.features.weather && weather_absent.len() < crate::features::WEATHER_INPUTS.len(),
            weather_absent,
            log_transform: spec.features.log_transform,
            horizon,
        };
        let values_in_window = data
            .stations
            .iter()
            .map(|s| {
                (0..data.hours)
                    .filter(|i| {
                        let t = data.time(*i);
                        t >= plan.fit_from && t < plan.fit_to && !s.target[*i].is_nan()
                    })
                    .count()
            })
            .sum::<usize>();
        if values_in_window == 0 {
            return Err(ModelError::EmptyWindow(format!(
                "no {} values between {} and {}",
                data.pollutant,
                fmt_time(plan.fit_from),
                fmt_time(plan.fit_to)
            )));
        }
        progress.phase("climatology");
        let climatology = Climatology::fit(data, plan.fit_from, plan.fit_to);
        if let Some(ensemble) = &spec.algorithm.ensemble {
            return Self::train_ensemble(data, spec, ensemble, featurizer, climatology, plan, progress);
        }
        let needs_samples = matches!(spec.algorithm.name(), "knn" | "linear" | "neuralNetwork" | "gbm");
        let samples = if needs_samples {
            progress.phase("features");
            let s = build_samples(data, &featurizer, plan.fit_from, plan.fit_to, None);
            if s.times.is_empty() {
                return Err(ModelError::EmptyWindow(format!(
                    "no origin between {} and {} has every input and {} hours of targets after it",
                    fmt_time(plan.fit_from),
                    fmt_time(plan.fit_to),
                    horizon
                )));
            }
            Some(s)
        } else {
            None
        };
        let dim = featurizer.dim();
        let fit_samples = samples.as_ref().map_or(values_in_window, |s| s.times.len());
        progress.phase("fit");
        let mut epochs_run = None;
        let mut trees = None;
        let a = &spec.algorithm;
        let estimator = match (a.name(), samples) {
            ("knn", Some(s)) => {
                let knn = a.knn.clone().unwrap_or_else(|| airq_api::model::Knn {
                    k: 10,
                    distance: Distance::default(),
                    weights: Weights::default(),
                    scaling: Scaling::default(),
                });
                let smallest = (0..24u8)
                    .map(|h| s.hours.iter().filter(|x| **x == h).count())
                    .filter(|c| *c > 0)
                    .min()
                    .unwrap_or(0);
                if knn.k as usize > smallest {
                    return Err(ModelError::InvalidParameter(format!(
                        "knn.k = {} is larger than the training sample: neighbours are searched among origins at the same hour of day, and the smallest such set has {smallest}",
                        knn.k
                    )));
                }
                let scaler = Scaler::fit(&s.x, dim, knn.scaling);
                let xs = scaler.apply(&s.x);
                Estimator::Knn(KnnModel::new(
                    knn.k as usize,
                    knn.distance,
                    knn.weights,
                    scaler,
                    xs,
                    s.y,
                    s.hours,
                    dim,
                    horizon,
                )?)
            }
            ("linear", Some(s)) => {
                let l2 = a.linear.as_ref().map_or(1.0, |l| l.l2);
                Estimator::Linear(LinearModel::fit(&s.x, &s.y, dim, horizon, l2)?)
            }
            ("neuralNetwork", Some(s)) => {
                let nn = a
                    .neural_network
                    .clone()
                    .ok_or_else(|| ModelError::InvalidParameter("neuralNetwork is not set".to_owned()))?;
                let (mlp, epochs) = Mlp::fit(&s.x, &s.y, &s.times, dim, horizon, &nn, &|e, of, l| {
                    progress.epoch(e, of, l)
                })?;
                epochs_run = Some(epochs);
                Estimator::Nn(mlp)
            }
            ("gbm", Some(s)) => {
                let g = a.gbm.clone().unwrap_or_default();
                let model = crate::gbm::GbmModel::fit(&s.x, &s.y, &s.times, dim, horizon, &g, &|done, of| {
                    progress.count(done, of)
                })?;
                trees = Some(model.trees());
                Estimator::Gbm(model)
            }
            ("persistence", _) => Estimator::Persistence,
            ("seasonalNaive", _) => Estimator::SeasonalNaive {
                season: a.seasonal_naive.as_ref().map_or(24, |s| s.season_hours as usize),
            },
            ("climatology", _) => Estimator::Climatology,
            (other, _) => {
                return Err(ModelError::InvalidParameter(format!("unknown algorithm {other:?}")));
            }
        };
        let mut model = Self {
            meta: ModelMeta {
                spec: spec.clone(),
                features: featurizer.names(),
                featurizer,
                stations: data.stations.iter().map(|s| s.code.clone()).collect(),
                plan,
                fit_samples,
                calibration_forecasts: 0,
                epochs_run,
                trees,
                ensemble: None,
            },
            estimator,
            climatology,
            conformal: Conformal::fit(&[], &[], &[], horizon),
            pool: None,
        };
        progress.phase("calibrate");
        let keys = origins(data, plan.calibrate_from, plan.calibrate_to, horizon, plan.origin_hour);
        let forecasts = model.forecast_counted(data, &keys, progress)?;
        let truths = truths(data, &model.meta.featurizer, &keys);
        let points: Vec<f32> = forecasts.iter().flat_map(|f| f.points.iter().copied()).collect();
        let fallback: Vec<bool> = forecasts.iter().map(|f| f.fallback).collect();
        model.conformal = Conformal::fit(&points, &truths, &fallback, horizon);
        model.meta.calibration_forecasts = keys.len();
        enough_to_calibrate(&model.conformal, plan)?;
        Ok((
            model,
            Calibration {
                keys,
                forecasts,
                truths,
            },
        ))
    }

    /// Trains every member of `ensemble` on the same data and plan, learns the weights on the calibration period's
    /// forecasts, and calibrates the intervals on the combined forecasts. The residuals that calibrate are
    /// cross-fitted: the origins of each fold (weeks in turn, [`crate::ensemble::fold_of`]) are combined with the
    /// weights learned on the other folds, so no residual comes from weights fitted on its own truth; the stored
    /// weights are learned on the whole period.
    fn train_ensemble(
        data: &Dataset,
        spec: &ModelSpec,
        ensemble: &airq_api::model::Ensemble,
        featurizer: Featurizer,
        climatology: Climatology,
        plan: Plan,
        progress: &dyn Progress,
    ) -> Result<(Self, Calibration)> {
        let horizon = featurizer.horizon;
        let count = ensemble.members.len();
        let mut members = Vec::with_capacity(count);
        let mut calibrations = Vec::with_capacity(count);
        for (i, member) in ensemble.members.iter().enumerate() {
            let mut member_spec = spec.clone();
            member_spec.algorithm = member.algorithm();
            if let Some(log) = member.log_transform {
                member_spec.features.log_transform = log;
            }
            let name = member_spec.algorithm.name();
            let prefixed = Prefixed {
                inner: progress,
                prefix: format!("member {} of {count} ({name})", i + 1),
            };
            let (model, calibration) = Self::train_calibrated(data, &member_spec, plan, &prefixed)?;
            members.push(model);
            calibrations.push(calibration);
        }
        progress.phase("weigh the members");
        let keys = calibrations.first().map(|c| c.keys.clone()).unwrap_or_default();
        if calibrations.iter().any(|c| c.keys != keys) {
            return Err(ModelError::InvalidParameter(
                "the members were calibrated on different origins".to_owned(),
            ));
        }
        // Weighed and averaged on the combining scale; calibrated on the ensemble's own (its features').
        let combining = combining_scale(&featurizer, ensemble);
        let truths_combined = truths(data, &combining, &keys);
        let truths = truths(data, &featurizer, &keys);
        let points: Vec<Vec<f32>> = calibrations
            .iter()
            .zip(&members)
            .map(|(c, m)| {
                c.forecasts
                    .iter()
                    .flat_map(|f| f.points.iter().map(|p| rescale(&m.meta.featurizer, &combining, *p)))
                    .collect()
            })
            .collect();
        let parts: Vec<&[f32]> = points.iter().map(Vec::as_slice).collect();
        let objective = ensemble.objective.unwrap_or_default();
        let weights = crate::ensemble::fit(&parts, &truths_combined, horizon, objective, |_| true);
        let combined: Vec<f32> = crate::ensemble::combine(&parts, &weights, horizon)
            .into_iter()
            .map(|p| rescale(&combining, &featurizer, p))
            .collect();
        let crossed: Vec<f32> = crate::ensemble::cross_fitted(&parts, &truths_combined, horizon, objective, |i| {
            crate::ensemble::fold_of(data.time(keys[i].1))
        })
        .into_iter()
        .map(|p| rescale(&combining, &featurizer, p))
        .collect();
        let fallback: Vec<bool> = (0..keys.len())
            .map(|i| calibrations.iter().any(|c| c.forecasts[i].fallback))
            .collect();
        let conformal = Conformal::fit(&crossed, &truths, &fallback, horizon);
        enough_to_calibrate(&conformal, plan)?;
        let pool = if ensemble.pool_with_climatology.unwrap_or(true) {
            progress.phase("pool with the climatology");
            let fz = &featurizer;
            let clim = climatology.trajectories(fz, data, &keys);
            let clim_conformal = Conformal::fit(&clim, &truths, &vec![false; keys.len()], horizon);
            let calibrated = crate::pool::Calibrated {
                points: &crossed,
                climatology: &clim,
                truths: &truths,
                fallback: &fallback,
                horizon,
            };
            let weights = crate::pool::fit(&conformal, &clim_conformal, &calibrated, |v| fz.inverse(v));
            let per_day: Vec<String> = weights
                .iter()
                .step_by(crate::pool::WEIGHT_HOURS)
                .map(|w| format!("{w:.2}"))
                .collect();
            tracing::info!(
                weights = %per_day.join(" "),
                "the forecast's weight per day ahead in the pool with the climatology's distribution"
            );
            Some(Pool {
                weights,
                climatology: clim_conformal,
            })
        } else {
            None
        };
        let forecasts: Vec<RawForecast> = combined
            .chunks(horizon.max(1))
            .zip(&fallback)
            .map(|(p, f)| RawForecast {
                points: p.to_vec(),
                fallback: *f,
            })
            .collect();
        let names: Vec<String> = members
            .iter()
            .map(|m| m.meta.spec.algorithm.name().to_owned())
            .collect();
        let meta = ModelMeta {
            spec: spec.clone(),
            features: featurizer.names(),
            featurizer,
            stations: data.stations.iter().map(|s| s.code.clone()).collect(),
            plan,
            fit_samples: members.iter().map(|m| m.meta.fit_samples).max().unwrap_or(0),
            calibration_forecasts: keys.len(),
            epochs_run: None,
            trees: None,
            ensemble: Some(EnsembleMeta {
                members: names,
                weights: weights.chunks(count).map(<[f32]>::to_vec).collect(),
                mean_weights: (0..count)
                    .map(|m| (0..horizon).map(|h| weights[h * count + m]).sum::<f32>() / horizon as f32)
                    .collect(),
                pool_weights: pool
                    .as_ref()
                    .map(|p| p.weights.iter().step_by(crate::pool::WEIGHT_HOURS).copied().collect()),
            }),
        };
        Ok((
            Self {
                meta,
                estimator: Estimator::Ensemble(members, weights),
                climatology,
                conformal,
                pool,
            },
            Calibration {
                keys,
                forecasts,
                truths,
            },
        ))
    }

    /// [`Model::forecast_many`] in parts, telling `progress` how many of `keys` are done after each.
    pub fn forecast_counted(
        &self,
        data: &Dataset,
        keys: &[(usize, usize)],
        progress: &dyn Progress,
    ) -> Result<Vec<RawForecast>> {
        // Large enough that each hour of day's group of a part fills the nearest-neighbour search's blocks.
        const PART: usize = 8192;
        let mut out = Vec::with_capacity(keys.len());
        progress.count(0, keys.len());
        for part in keys.chunks(PART) {
            out.extend(self.forecast_many(data, part)?);
            progress.count(out.len(), keys.len());
        }
        Ok(out)
    }

    pub fn horizon(&self) -> usize {
        self.meta.featurizer.horizon
    }

    /// How the model's intervals and predictive distributions are made.
    pub fn distribution(&self) -> Distribution<'_> {
        Distribution {
            conformal: &self.conformal,
            pool: self.pool.as_ref(),
        }
    }

    /// The climatology's forecasts (model space) from each of `keys`, n × horizon: what a pool mixes in.
    pub fn climatology_trajectories(&self, data: &Dataset, keys: &[(usize, usize)]) -> Vec<f32> {
        self.climatology.trajectories(&self.meta.featurizer, data, keys)
    }

    /// The climatology's forecast (model space) for station `code` at hour `time`: what a pool mixes in.
    pub fn climatology_point(&self, code: &str, time: i64) -> f32 {
        if self.pool.is_none() {
            return f32::NAN;
        }
        self.meta.featurizer.forward(self.climatology.value(code, time))
    }

    /// Forecasts (model space) from each `(station, origin)` of `data`, every hour of the horizon.
    pub fn forecast_many(&self, data: &Dataset, keys: &[(usize, usize)]) -> Result<Vec<RawForecast>> {
        self.forecast_hours(data, keys, &Hours::All)
    }

    /// [`Model::forecast_many`] where only the hours ahead `wanted` admits must be right: an algorithm whose cost
    /// grows with the hours (gradient boosting: one booster per hour) skips the others, whose values are then
    /// meaningless (NaN, or an ensemble's mix of NaN and its other members); the others compute every hour at once.
    pub fn forecast_hours(&self, data: &Dataset, keys: &[(usize, usize)], wanted: &Hours) -> Result<Vec<RawForecast>> {
        let fz = &self.meta.featurizer;
        let horizon = fz.horizon;
        let dim = fz.dim();
        // The climatology's forecast (model space) from origin `o` of station `s`, `h` hours ahead: the fallback.
        let climatology = |s: usize, o: usize, h: usize| {
            fz.forward(
                self.climatology
                    .value(&data.stations[s].code, data.time(o) + h as i64 * HOUR),
            )
        };
        let mut out: Vec<RawForecast> = keys
            .iter()
            .map(|_| RawForecast {
                points: vec![f32::NAN; horizon],
                fallback: true,
            })
            .collect();
        match &self.estimator {
            Estimator::Climatology => {
                for (f, (s, o)) in out.iter_mut().zip(keys) {
                    f.points
                        .iter_mut()
                        .enumerate()
                        .for_each(|(h, p)| *p = climatology(*s, *o, h + 1));
                    f.fallback = false;
                }
            }
            Estimator::Persistence => {
                for (f, (s, o)) in out.iter_mut().zip(keys) {
                    if let Some(v) = Featurizer::recent(&data.stations[*s].target, *o) {
                        f.points.iter_mut().for_each(|p| *p = fz.forward(v));
                        f.fallback = false;
                    }
                }
            }
            Estimator::SeasonalNaive { season } => {
                for (f, (s, o)) in out.iter_mut().zip(keys) {
                    let series = &data.stations[*s].target;
                    let mut all = true;
                    for h in 1..=horizon {
                        let back = season * h.div_ceil(*season);
                        f.points[h - 1] = match (o + h).checked_sub(back).and_then(|i| Featurizer::recent(series, i)) {
                            Some(v) => fz.forward(v),
                            None => {
                                all = false;
                                climatology(*s, *o, h)
                            }
                        };
                    }
                    f.fallback = !all;
                }
            }
            Estimator::Ensemble(members, weights) => {
                let combining = match &self.meta.spec.algorithm.ensemble {
                    Some(e) => combining_scale(fz, e),
                    None => fz.clone(),
                };
                let mut forecasts = members
                    .iter()
                    .map(|m| m.forecast_hours(data, keys, wanted))
                    .collect::<Result<Vec<_>>>()?;
                for (m, f) in members.iter().zip(&mut forecasts) {
                    for p in f.iter_mut().flat_map(|f| f.points.iter_mut()) {
                        *p = rescale(&m.meta.featurizer, &combining, *p);
                    }
                }
                for (i, f) in out.iter_mut().enumerate() {
                    let parts: Vec<&[f32]> = forecasts.iter().map(|m| m[i].points.as_slice()).collect();
                    f.points = crate::ensemble::combine(&parts, weights, horizon)
                        .into_iter()
                        .map(|p| rescale(&combining, fz, p))
                        .collect();
                    f.fallback = forecasts.iter().any(|m| m[i].fallback);
                }
            }
            Estimator::Knn(_) | Estimator::Linear(_) | Estimator::Nn(_) | Estimator::Gbm(_) => {
                let mut x = Vec::with_capacity(keys.len() * dim);
                let mut rows = Vec::new();
                let mut hours = Vec::new();
                for (i, (s, o)) in keys.iter().enumerate() {
                    let t = data.time(*o);
                    if fz.features(&data.stations[*s], *o, t, &mut x) {
                        rows.push(i);
                        hours.push(origin_hour(t));
                    }
                }
                if !rows.is_empty() {
                    let predicted = match &self.estimator {
                        Estimator::Knn(knn) => knn.predict(&x, &hours, dim, horizon)?,
                        Estimator::Linear(linear) => linear.predict(&x, dim)?,
                        Estimator::Nn(mlp) => mlp.predict(&x, dim, horizon)?,
                        Estimator::Gbm(gbm) => gbm.predict(&x, dim, wanted),
                        _ => Vec::new(),
                    };
                    for (j, i) in rows.iter().enumerate() {
                        out[*i]
                            .points
                            .copy_from_slice(&predicted[j * horizon..(j + 1) * horizon]);
                        out[*i].fallback = false;
                    }
                }
            }
        }
        // Only the forecasts the model could not give pay for the climatology (a partial seasonal-naive fallback
        // filled its own hours above).
        for (f, (s, o)) in out.iter_mut().zip(keys) {
            if f.fallback && f.points.iter().all(|p| p.is_nan()) {
                f.points
                    .iter_mut()
                    .enumerate()
                    .for_each(|(h, p)| *p = climatology(*s, *o, h + 1));
            }
        }
        Ok(out)
    }

    /// The model as one safetensors buffer with its metadata.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let cpu = &Device::Cpu;
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        self.conformal.to_tensors("conformal", &mut tensors)?;
        if let Some(pool) = &self.pool {
            pool.climatology.to_tensors("pool", &mut tensors)?;
            tensors.insert("pool.weights".into(), Tensor::new(pool.weights.clone(), cpu)?);
        }
        let c = &self.climatology;
        tensors.insert("climatology.table".into(), Tensor::new(c.table.clone(), cpu)?);
        tensors.insert("climatology.station".into(), Tensor::new(c.station_mean.clone(), cpu)?);
        tensors.insert("climatology.global".into(), Tensor::new(c.global.clone(), cpu)?);
        tensors.insert("climatology.overall".into(), Tensor::new(&[c.overall], cpu)?);
        let mut info = HashMap::new();
        let scaler = |t: &mut HashMap<String, Tensor>, s: &Scaler| -> Result<()> {
            t.insert("scaler.offset".into(), Tensor::new(s.offset.clone(), cpu)?);
            t.insert("scaler.scale".into(), Tensor::new(s.scale.clone(), cpu)?);
            Ok(())
        };
        match &self.estimator {
            Estimator::Knn(knn) => {
                scaler(&mut tensors, &knn.scaler)?;
                tensors.insert("knn.x".into(), Tensor::new(knn.x.clone(), cpu)?);
                tensors.insert("knn.y".into(), Tensor::new(knn.y.clone(), cpu)?);
                tensors.insert("knn.hour".into(), Tensor::new(knn.hour.clone(), cpu)?);
            }
            Estimator::Linear(linear) => {
                scaler(&mut tensors, &linear.scaler)?;
                tensors.insert("linear.w".into(), linear.w.clone());
            }
            Estimator::Nn(mlp) => {
                scaler(&mut tensors, &mlp.scaler)?;
                tensors.insert("nn.target_mean".into(), Tensor::new(mlp.target_mean.clone(), cpu)?);
                tensors.insert("nn.target_scale".into(), Tensor::new(mlp.target_scale.clone(), cpu)?);
                for (i, layer) in mlp.layers.iter().enumerate() {
                    tensors.insert(format!("nn.{i}.weight"), layer.weight().clone());
                    if let Some(b) = layer.bias() {
                        tensors.insert(format!("nn.{i}.bias"), b.clone());
                    }
                }
                info.insert("airq.layers".to_owned(), mlp.layers.len().to_string());
            }
            Estimator::Gbm(gbm) => gbm.to_tensors(&mut tensors)?,
            Estimator::Ensemble(members, weights) => {
                for (i, m) in members.iter().enumerate() {
                    tensors.insert(format!("ensemble.{i}"), Tensor::new(m.to_bytes()?, cpu)?);
                }
                tensors.insert("ensemble.weights".into(), Tensor::new(weights.clone(), cpu)?);
            }
            Estimator::Persistence | Estimator::SeasonalNaive { .. } | Estimator::Climatology => {}
        }
        info.insert(
            "airq.model".to_owned(),
            serde_json::to_string(&self.meta).map_err(|e| ModelError::Artifact(e.to_string()))?,
        );
        info.insert(
            "airq.stations".to_owned(),
            serde_json::to_string(&c.stations).map_err(|e| ModelError::Artifact(e.to_string()))?,
        );
        safetensors::serialize(&tensors, Some(info)).map_err(|e| ModelError::Artifact(e.to_string()))
    }

    /// Reads a model written by [`Model::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let artifact = |e: &dyn std::fmt::Display| ModelError::Artifact(e.to_string());
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| artifact(&e))?;
        let info = header.metadata().clone().unwrap_or_default();
        let meta: ModelMeta = serde_json::from_str(
            info.get("airq.model")
                .ok_or_else(|| artifact(&"no airq.model metadata"))?,
        )
        .map_err(|e| artifact(&e))?;
        let clim_stations: Vec<String> =
            serde_json::from_str(info.get("airq.stations").map_or("[]", String::as_str)).map_err(|e| artifact(&e))?;
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?;
        let get = |name: &str| {
            tensors
                .get(name)
                .ok_or_else(|| artifact(&format!("tensor {name} is missing")))
        };
        let f32s = |name: &str| -> Result<Vec<f32>> { Ok(get(name)?.to_vec1::<f32>()?) };
        // The sets stored under `prefix` by `Conformal::to_tensors`.
        let conformal = |prefix: &str| -> Result<Conformal> {
            let counts = get(&format!("{prefix}.counts"))?.to_vec1::<u32>()?;
            let flat = f32s(&format!("{prefix}.residuals"))?;
            let mut residuals = Vec::new();
            let mut at = 0usize;
            for c in counts {
                let end = at + c as usize;
                residuals.push(
                    flat.get(at..end)
                        .ok_or_else(|| artifact(&format!("{prefix} residuals are truncated")))?
                        .to_vec(),
                );
                at = end;
            }
            Conformal::stored(meta.featurizer.horizon, f32s(&format!("{prefix}.cuts"))?, residuals)
        };
        let climatology = Climatology {
            stations: clim_stations,
            table: f32s("climatology.table")?,
            station_mean: f32s("climatology.station")?,
            global: f32s("climatology.global")?,
            overall: f32s("climatology.overall")?.first().copied().unwrap_or(0.0),
        };
        let fz = &meta.featurizer;
        let dim = fz.dim();
        let horizon = fz.horizon;
        let scaler = || -> Result<Scaler> {
            Ok(Scaler {
                offset: f32s("scaler.offset")?,
                scale: f32s("scaler.scale")?,
            })
        };
        let a = &meta.spec.algorithm;
        let estimator = match a.name() {
            "knn" => {
                let knn = a.knn.as_ref().ok_or_else(|| artifact(&"knn parameters are missing"))?;
                KnnModel::new(
                    knn.k as usize,
                    knn.distance,
                    knn.weights,
                    scaler()?,
                    f32s("knn.x")?,
                    f32s("knn.y")?,
                    get("knn.hour")?.to_vec1::<u8>()?,
                    dim,
                    horizon,
                )
                .map(Estimator::Knn)?
            }
            "linear" => Estimator::Linear(LinearModel {
                scaler: scaler()?,
                w: get("linear.w")?.clone(),
            }),
            "neuralNetwork" => {
                let count: usize = info.get("airq.layers").and_then(|v| v.parse().ok()).unwrap_or(0);
                let layers = (0..count)
                    .map(|i| -> Result<candle_nn::Linear> {
                        Ok(candle_nn::Linear::new(
                            get(&format!("nn.{i}.weight"))?.clone(),
                            Some(get(&format!("nn.{i}.bias"))?.clone()),
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Estimator::Nn(Mlp {
                    scaler: scaler()?,
                    target_mean: f32s("nn.target_mean")?,
                    target_scale: f32s("nn.target_scale")?,
                    layers,
                })
            }
            "gbm" => Estimator::Gbm(crate::gbm::GbmModel::from_tensors(
                &tensors,
                dim,
                &a.gbm.clone().unwrap_or_default(),
            )?),
            "ensemble" => {
                let count = a.ensemble.as_ref().map_or(0, |e| e.members.len());
                let members = (0..count)
                    .map(|i| Self::from_bytes(&get(&format!("ensemble.{i}"))?.to_vec1::<u8>()?))
                    .collect::<Result<Vec<_>>>()?;
                let weights = f32s("ensemble.weights")?;
                if weights.len() != count * horizon || members.iter().any(|m| m.horizon() != horizon) {
                    return Err(artifact(&"the ensemble's weights or members do not match its horizon"));
                }
                Estimator::Ensemble(members, weights)
            }
            "persistence" => Estimator::Persistence,
            "seasonalNaive" => Estimator::SeasonalNaive {
                season: a.seasonal_naive.as_ref().map_or(24, |s| s.season_hours as usize),
            },
            "climatology" => Estimator::Climatology,
            other => return Err(artifact(&format!("unknown algorithm {other:?}"))),
        };
        Ok(Self {
            estimator,
            climatology,
            conformal: conformal("conformal")?,
            // Versions stored before the pool have none.
            pool: if tensors.contains_key("pool.weights") {
                let weights = f32s("pool.weights")?;
                if weights.len() != horizon || weights.iter().any(|w| !(0.0..=1.0).contains(w)) {
                    return Err(artifact(
                        &"the pool's weights do not match the horizon or lie outside 0 to 1",
                    ));
                }
                Some(Pool {
                    weights,
                    climatology: conformal("pool")?,
                })
            } else {
                None
            },
            meta,
        })
    }
}

/// Refuses intervals calibrated on fewer than 20 forecasts with a known truth at some horizon.
fn enough_to_calibrate(conformal: &Conformal, plan: Plan) -> Result<()> {
    if conformal.size() < 20 {
        return Err(ModelError::EmptyWindow(format!(
            "the calibration period {} to {} gives {} forecasts with a known truth at some horizon; at least 20 are needed to calibrate intervals",
            fmt_time(plan.calibrate_from),
            fmt_time(plan.calibrate_to),
            conformal.size()
        )));
    }
    Ok(())
}

/// The origins (indexes of `times`) fitted on and the newest tenth held out to stop training early.
pub(crate) fn hold_out_newest(times: &[i64]) -> Result<(Vec<usize>, Vec<usize>)> {
    let n = times.len();
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let cut = sorted.get(n * 9 / 10).copied().unwrap_or(i64::MAX);
    let (train, valid): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| times[*i] < cut);
    if train.is_empty() || valid.is_empty() {
        return Err(ModelError::EmptyWindow(format!(
            "{n} training origins are too few to hold some out for early stopping"
        )));
    }
    Ok((train, valid))
}

/// The hours ahead (1 = the hour after the origin) a forecast must give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hours {
    All,
    Only(Vec<usize>),
}

impl Hours {
    pub fn admits(&self, hour: usize) -> bool {
        match self {
            Self::All => true,
            Self::Only(hours) => hours.contains(&hour),
        }
    }
}

/// The scale an ensemble weighs and averages its members on: its features' unless `combineOn` says otherwise.
fn combining_scale(featurizer: &Featurizer, ensemble: &airq_api::model::Ensemble) -> Featurizer {
    let mut combining = featurizer.clone();
    if let Some(scale) = ensemble.combine_on {
        combining.log_transform = scale == airq_api::model::Scale::Logarithm;
    }
    combining
}

/// A value in `from`'s model space in `to`'s.
fn rescale(from: &Featurizer, to: &Featurizer, value: f32) -> f32 {
    if from.log_transform == to.log_transform {
        value
    } else {
        to.forward(from.inverse(value))
    }
}

/// Every origin `(station, index)` whose time is in `[from, to)` with its whole horizon before `to`, at
/// `hour` (UTC) when given.
pub fn origins(data: &Dataset, from: i64, to: i64, horizon: usize, hour: Option<u32>) -> Vec<(usize, usize)> {
    let mut keys = Vec::new();
    for s in 0..data.stations.len() {
        for i in 0..data.hours {
            let t = data.time(i);
            if t < from || t + horizon as i64 * HOUR >= to {
                continue;
            }
            if hour.is_some_and(|h| u32::from(origin_hour(t)) != h) {
                continue;
            }
            keys.push((s, i));
        }
    }
    keys
}

/// The true trajectories (model space, NaN where missing) after each origin, flattened.
pub fn truths(data: &Dataset, fz: &Featurizer, keys: &[(usize, usize)]) -> Vec<f32> {
    let mut out = Vec::with_capacity(keys.len() * fz.horizon);
    for (s, o) in keys {
        fz.targets(&data.stations[*s], *o, &mut out);
    }
    out
}

/// The origins in `[from, to)` (at `hour` UTC when given) with every feature and a complete trajectory.
pub fn build_samples(data: &Dataset, fz: &Featurizer, from: i64, to: i64, hour: Option<u32>) -> Samples {
    let mut s = Samples {
        x: Vec::new(),
        y: Vec::new(),
        times: Vec::new(),
        hours: Vec::new(),
    };
    let mut y = Vec::with_capacity(fz.horizon);
    for (station, origin) in origins(data, from, to, fz.horizon, hour) {
        let series = &data.stations[station];
        y.clear();
        fz.targets(series, origin, &mut y);
        if y.iter().any(|v| v.is_nan()) {
            continue;
        }
        let t = data.time(origin);
        if fz.features(series, origin, t, &mut s.x) {
            s.y.extend_from_slice(&y);
            s.times.push(t);
            s.hours.push(origin_hour(t));
        }
    }
    s
}

pub fn fmt_time(t: i64) -> String {
    DateTime::from_timestamp(t, 0).map_or_else(|| t.to_string(), |t| t.format("%Y-%m-%d %H:%M UTC").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformal_ranks_follow_the_finite_sample_rule() -> Result<()> {
        // Residuals 1..=99: at 90 %, ranks ⌊100·0.05⌋ = 5 and ⌈100·0.95⌉ = 95.
        let points = vec![0f32; 99];
        let truths: Vec<f32> = (1..=99).map(|v| v as f32).collect();
        let c = Conformal::fit(&points, &truths, &[false; 99], 1);
        assert_eq!(c.offsets(0, 0.0, 0.9, false)?, (5.0, 95.0));
        // 99 residuals bound levels up to 1 − 2/100 = 0.98.
        assert!(c.offsets(0, 0.0, 0.98, false).is_ok());
        let e = c.offsets(0, 0.0, 0.99, false).expect_err("too few residuals");
        assert!(e.to_string().contains("up to 0.9800"), "{e}");
        assert!(c.offsets(0, 0.0, 1.0, false).is_err());
        assert_eq!(c.quantiles(0, 0.0, false).len(), DISTRIBUTION_QUANTILES);
        // Without fallback residuals, a fallback forecast uses its horizon's set.
        assert_eq!(c.offsets(0, 0.0, 0.9, true)?, (5.0, 95.0));
        Ok(())
    }

    #[test]
    fn fallback_forecasts_are_calibrated_apart() -> Result<()> {
        // Two horizons; forecasts 0..50 are the model's (residual 1 or -1), 50..100 the fallback's (±10·k).
        let mut points = Vec::new();
        let mut truths = Vec::new();
        let mut fallback = Vec::new();
        for i in 0..100 {
            let own = i < 50;
            let r = if own {
                if i % 2 == 0 { 1.0 } else { -1.0 }
            } else {
                (i - 75) as f32 * 10.0
            };
            points.extend([0.0, 0.0]);
            truths.extend([r, r]);
            fallback.push(!own);
        }
        let c = Conformal::fit(&points, &truths, &fallback, 2);
        assert_eq!(c.size(), 50);
        assert_eq!(c.offsets(1, 0.0, 0.9, false)?, (-1.0, 1.0));
        let (lo, hi) = c.offsets(1, 0.0, 0.9, true)?;
        assert!(lo <= -200.0 && hi >= 200.0, "{lo} {hi}");
        Ok(())
    }

    #[test]
    fn the_networks_losses_are_the_mean_absolute_and_squared_errors() -> Result<()> {
        let output = Tensor::new(&[[1f32, 2.0], [3.0, -4.0]], &Device::Cpu)?;
        let target = Tensor::new(&[[0f32, 2.0], [5.0, 0.0]], &Device::Cpu)?;
        let absolute = nn_loss(Objective::AbsoluteError, &output, &target)?.to_scalar::<f32>()?;
        let squared = nn_loss(Objective::SquaredError, &output, &target)?.to_scalar::<f32>()?;
        assert_eq!(absolute, (1.0 + 0.0 + 2.0 + 4.0) / 4.0);
        assert_eq!(squared, (1.0 + 0.0 + 4.0 + 16.0) / 4.0);
        Ok(())
    }
}

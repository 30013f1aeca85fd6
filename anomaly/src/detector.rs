//! Streaming detectors: each sees one value at a time and says how unusual it is (a robust z-score) using only what
//! came before — as the platform sees its metrics and a load sees its measurements.
//!
//! - [`Seasonal`]: the value expected at this phase of the season (the median of the same phase, and its
//!   neighbours, over the past seasons), or the recent level before two seasons are known; the residual is scaled by
//!   the median absolute deviation of recent residuals. Daily and weekly patterns are followed by choosing the
//!   season; sudden level shifts and spikes stand out, the daily rise does not. A missing sample
//!   ([`Seasonal::skip`]) keeps its place, so the phase stays right across gaps, and the detector's state is a
//!   function of its last [`Seasonal::memory`] samples only: started anywhere at least that far back, it gives the
//!   same scores.
//! - [`RollingZ`]: the classic z-score against the mean and standard deviation of a trailing window.
//! - [`FixedThreshold`]: distance from the mean, in standard deviations, both learned once from a first stretch of
//!   data and then fixed.

use std::collections::VecDeque;

/// Turns a detector's scores into alarms: a score above `threshold`, at least `refractory` values after the
/// previous alarm (an anomaly lasting an hour is one alarm, not twelve).
pub fn alarms(scores: &[f64], threshold: f64, refractory: usize) -> Vec<bool> {
    let mut since = usize::MAX;
    scores
        .iter()
        .map(|&z| {
            since = since.saturating_add(1);
            if z > threshold && since > refractory {
                since = 0;
                true
            } else {
                false
            }
        })
        .collect()
}

/// A detector scoring a stream.
pub trait Detector {
    /// How unusual `value` is given everything before it (0 when nothing can be said yet).
    fn score(&mut self, value: f64) -> f64;
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The median of the values that are not missing (NaN), if any.
fn median_present(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut present: Vec<f64> = values.filter(|v| !v.is_nan()).collect();
    (!present.is_empty()).then(|| median(&mut present))
}

/// Median and scaled median absolute deviation (≈ the standard deviation for normal data).
fn robust(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let mut v: Vec<f64> = values.collect();
    let m = median(&mut v);
    let mut deviations: Vec<f64> = v.iter().map(|x| (x - m).abs()).collect();
    (m, 1.4826 * median(&mut deviations))
}

/// A seasonal baseline with robust bands.
#[derive(Debug, Clone)]
pub struct Seasonal {
    /// Values per season (e.g. 288 for a day of five-minute values).
    season: usize,
    /// Past seasons the expected value is taken from.
    seasons: usize,
    /// Values on each side of the phase that are taken too (tolerates a slightly shifted pattern).
    neighbours: usize,
    /// Recent samples whose residuals the scale is taken from, and the level before two seasons are known.
    recent: usize,
    /// The last samples, NaN where one was missing.
    history: VecDeque<f64>,
    /// The residuals of the last `recent` samples, NaN where there was none (a missing sample, or nothing expected).
    residuals: VecDeque<f64>,
    /// The value expected for the last value scored.
    last_expected: Option<f64>,
    /// The smallest scale a residual is divided by (a series' resolution); 0 for a share of its level only.
    min_scale: f64,
}

impl Seasonal {
    /// The value that was expected for the last value scored (`None` before there was enough history).
    pub fn last_expected(&self) -> Option<f64> {
        self.last_expected
    }

    /// Samples the state depends on: two detectors fed the same last `memory()` samples score the next one alike,
    /// whatever they saw before.
    pub fn memory(&self) -> usize {
        self.history_len() + self.recent
    }

    fn history_len(&self) -> usize {
        (self.season * self.seasons + self.neighbours + 1).max(self.recent)
    }

    /// A missing sample: it keeps its place in the season, and nothing is expected or scored for it.
    pub fn skip(&mut self) {
        self.last_expected = None;
        self.push(f64::NAN, f64::NAN);
    }

    fn push(&mut self, value: f64, residual: f64) {
        self.residuals.push_back(residual);
        if self.residuals.len() > self.recent {
            self.residuals.pop_front();
        }
        self.history.push_back(value);
        if self.history.len() > self.history_len() {
            self.history.pop_front();
        }
    }

    pub fn new(season: usize, seasons: usize, neighbours: usize, recent: usize) -> Self {
        Self {
            season: season.max(1),
            seasons: seasons.max(1),
            neighbours,
            recent: recent.max(8),
            history: VecDeque::new(),
            residuals: VecDeque::new(),
            last_expected: None,
            min_scale: 0.0,
        }
    }

    /// The same detector dividing residuals by at least `min_scale`: differences below a series' resolution
    /// (a sensor that reports whole units, a calm stretch with no spread) do not count as anomalies.
    pub fn with_min_scale(mut self, min_scale: f64) -> Self {
        self.min_scale = min_scale.max(0.0);
        self
    }

    fn expected(&self) -> Option<f64> {
        let n = self.history.len();
        if n >= 2 * self.season + self.neighbours {
            let mut same_phase = Vec::new();
            for k in 1..=self.seasons {
                let Some(centre) = n.checked_sub(k * self.season) else {
                    break;
                };
                let from = centre.saturating_sub(self.neighbours);
                let to = (centre + self.neighbours + 1).min(n);
                same_phase.extend(self.history.range(from..to).copied());
            }
            return median_present(same_phase.into_iter());
        }
        if n >= 8 {
            let from = n.saturating_sub(self.recent);
            return median_present(self.history.range(from..).copied());
        }
        None
    }
}

impl Detector for Seasonal {
    fn score(&mut self, value: f64) -> f64 {
        if value.is_nan() {
            self.skip();
            return 0.0;
        }
        self.last_expected = self.expected();
        let Some(expected) = self.last_expected else {
            self.push(value, f64::NAN);
            return 0.0;
        };
        let residual = value - expected;
        let known = self.residuals.iter().filter(|r| !r.is_nan());
        let score = if known.clone().count() >= 8 {
            let (centre, scale) = robust(known.copied());
            // A flat series has no spread: compare with a small share of its level instead.
            let floor = 1e-3 * expected.abs().max(1e-9);
            (residual - centre).abs() / scale.max(floor).max(self.min_scale)
        } else {
            0.0
        };
        self.push(value, residual);
        score
    }
}

/// The z-score against a trailing window's mean and standard deviation. A missing sample (NaN) is not scored and
/// leaves the window as it was.
#[derive(Debug, Clone)]
pub struct RollingZ {
    window: usize,
    values: VecDeque<f64>,
    last_band: Option<(f64, f64)>,
}

impl RollingZ {
    pub fn new(window: usize) -> Self {
        Self {
            window: window.max(2),
            values: VecDeque::new(),
            last_band: None,
        }
    }

    /// The window's length in values.
    pub fn window(&self) -> usize {
        self.window
    }

    /// The window's mean before the last value scored (`None` before eight values were seen).
    pub fn last_expected(&self) -> Option<f64> {
        self.last_band.map(|(mean, _)| mean)
    }

    /// The mean and the spread (standard deviation, floored) the last value was scored against.
    pub fn last_band(&self) -> Option<(f64, f64)> {
        self.last_band
    }

    /// A missing sample: nothing is expected or scored for it.
    pub fn skip(&mut self) {
        self.last_band = None;
    }
}

impl Detector for RollingZ {
    fn score(&mut self, value: f64) -> f64 {
        if value.is_nan() {
            self.skip();
            return 0.0;
        }
        let n = self.values.len();
        let z = if n >= 8 {
            let mean = self.values.iter().sum::<f64>() / n as f64;
            let var = self.values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            let spread = var.sqrt().max(1e-3 * mean.abs().max(1e-9));
            self.last_band = Some((mean, spread));
            (value - mean).abs() / spread
        } else {
            self.last_band = None;
            0.0
        };
        self.values.push_back(value);
        if self.values.len() > self.window {
            self.values.pop_front();
        }
        z
    }
}

/// Distance from a mean fixed after the first `learn` values, in their standard deviations.
#[derive(Debug, Clone)]
pub struct FixedThreshold {
    learn: usize,
    seen: Vec<f64>,
    fitted: Option<(f64, f64)>,
}

impl FixedThreshold {
    pub fn new(learn: usize) -> Self {
        Self {
            learn: learn.max(8),
            seen: Vec::new(),
            fitted: None,
        }
    }
}

impl Detector for FixedThreshold {
    fn score(&mut self, value: f64) -> f64 {
        if let Some((mean, sd)) = self.fitted {
            return (value - mean).abs() / sd;
        }
        self.seen.push(value);
        if self.seen.len() >= self.learn {
            let n = self.seen.len() as f64;
            let mean = self.seen.iter().sum::<f64>() / n;
            let sd = (self.seen.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
            self.fitted = Some((mean, sd.max(1e-3 * mean.abs().max(1e-9))));
            self.seen = Vec::new();
        }
        0.0
    }
}

/// Several detectors on the same values; the score is the largest of theirs (each is already in units of its own
/// spread, so they compare). Alarms when any of them would.
pub struct Maximum(pub Vec<Box<dyn Detector + Send>>);

impl Detector for Maximum {
    fn score(&mut self, value: f64) -> f64 {
        self.0.iter_mut().map(|d| d.score(value)).fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two weeks of a daily pattern (five-minute values), with a little deterministic noise.
    fn daily(days: usize) -> Vec<f64> {
        (0..days * 288)
            .map(|i| {
                let phase = (i % 288) as f64 / 288.0 * std::f64::consts::TAU;
                100.0 + 40.0 * phase.sin() + ((i * 7919) % 13) as f64 * 0.3
            })
            .collect()
    }

    fn scores(detector: &mut dyn Detector, values: &[f64]) -> Vec<f64> {
        values.iter().map(|&v| detector.score(v)).collect()
    }

    #[test]
    fn the_seasonal_detector_follows_the_daily_pattern_and_flags_a_spike() {
        let mut values = daily(14);
        let spike = 10 * 288 + 100;
        values[spike] += 25.0;
        let z = scores(&mut Seasonal::new(288, 4, 2, 288), &values);
        let flagged = alarms(&z[3 * 288..], 6.0, 36);
        let at: Vec<usize> = flagged
            .iter()
            .enumerate()
            .filter(|(_, f)| **f)
            .map(|(i, _)| i + 3 * 288)
            .collect();
        assert_eq!(at, vec![spike], "scores near the spike: {:?}", &z[spike - 2..spike + 2]);
    }

    #[test]
    fn the_rolling_z_score_mistakes_the_daily_step_for_anomalies_where_the_seasonal_one_does_not() {
        // Office hours: the load steps from 50 to 150 at 08:00 and back at 18:00, every day.
        let values: Vec<f64> = (0..14 * 288)
            .map(|i| {
                let hour = (i % 288) / 12;
                let level = if (8..18).contains(&hour) { 150.0 } else { 50.0 };
                level + ((i * 7919) % 13) as f64 * 0.3
            })
            .collect();
        let rolling = scores(&mut RollingZ::new(36), &values);
        let seasonal = scores(&mut Seasonal::new(288, 4, 2, 288), &values);
        let count = |z: &[f64]| alarms(&z[3 * 288..], 4.0, 0).iter().filter(|f| **f).count();
        assert_eq!(count(&seasonal), 0);
        assert!(count(&rolling) > 0);
    }

    #[test]
    fn a_stuck_sensor_then_a_jump_is_flagged() {
        let mut values = daily(6);
        values.extend(std::iter::repeat_n(250.0, 5));
        let z = scores(&mut Seasonal::new(288, 4, 2, 288), &values);
        assert!(z[6 * 288] > 6.0, "{}", z[6 * 288]);
    }

    #[test]
    fn a_gap_keeps_the_phase() {
        // A day-long gap in the middle: the day after it is still compared with the same hours of earlier days.
        let values = daily(14);
        let mut gapped = Seasonal::new(288, 4, 2, 288);
        let mut z = Vec::new();
        for (i, &v) in values.iter().enumerate() {
            if (8 * 288..9 * 288).contains(&i) {
                gapped.skip();
            } else {
                z.push((i, gapped.score(v)));
            }
        }
        let after: Vec<f64> = z.iter().filter(|(i, _)| *i >= 9 * 288).map(|(_, z)| *z).collect();
        assert!(
            after.iter().all(|z| *z < 6.0),
            "max {:?}",
            after.iter().copied().fold(0.0, f64::max)
        );
        // Without the gap kept in place the phase would be off by the missing hours' worth of samples, and the sine
        // would look like anomalies.
        let mut shifted = Seasonal::new(288, 4, 2, 288);
        let z: Vec<f64> = values
            .iter()
            .enumerate()
            .filter(|(i, _)| !(8 * 288..8 * 288 + 72).contains(i))
            .map(|(_, &v)| shifted.score(v))
            .collect();
        assert!(z[8 * 288..9 * 288].iter().any(|z| *z > 6.0));
    }

    #[test]
    fn the_state_depends_only_on_the_last_memory_samples() {
        let mut values = daily(12);
        values[9 * 288 + 17] += 40.0;
        for (i, v) in values.iter_mut().enumerate() {
            if i % 97 == 0 {
                *v = f64::NAN;
            }
        }
        let make = || Seasonal::new(288, 3, 2, 288);
        let memory = make().memory();
        let full = scores(&mut make(), &values);
        // Started later, with missing samples in front: the same scores once `memory` samples have been seen.
        let start = 2 * 288 + 5;
        let mut late = make();
        for _ in 0..memory {
            late.skip();
        }
        let late_scores = scores(&mut late, &values[start..]);
        for (i, z) in late_scores.iter().enumerate().skip(memory) {
            assert_eq!(z.to_bits(), full[start + i].to_bits(), "sample {}", start + i);
        }
    }

    #[test]
    fn alarms_respect_the_refractory_period() {
        let z = [9.0, 9.0, 9.0, 0.0, 9.0, 9.0];
        assert_eq!(alarms(&z, 5.0, 2), vec![true, false, false, false, true, false]);
        assert_eq!(alarms(&z, 10.0, 0), vec![false; 6]);
    }

    #[test]
    fn the_fixed_threshold_learns_once() {
        let mut fixed = FixedThreshold::new(10);
        let learned: Vec<f64> = (0..10).map(|i| fixed.score(f64::from(i % 2))).collect();
        assert!(learned.iter().all(|z| *z == 0.0));
        assert!(fixed.score(10.0) > 10.0);
    }
}

//! Adaptive conformal inference (Gibbs and Candès, 2021): the split-conformal intervals are calibrated once, on a
//! past period; when the errors grow or shrink afterwards, their coverage drifts. As each truth arrives, the level
//! actually asked of the calibration residuals moves: up after a miss, down after a hit,
//! `αₜ₊₁ = αₜ + γ (α − missₜ)`, so that over any long stretch the share of misses returns to the target `α`. The
//! served level is `1 − αₜ`, kept within what the residuals can bound (their widest interval at most).

use serde::{Deserialize, Serialize};

/// The step `γ` of the update. Gibbs and Candès's choice; fixed, not tuned on any test year.
pub const GAMMA: f64 = 0.005;

/// The adapted level of one target confidence level.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Adaptive {
    /// The confidence level the intervals should have (e.g. 0.9).
    pub target: f64,
    /// The miscoverage `αₜ` asked of the residuals now.
    pub alpha: f64,
    /// Truths seen.
    pub observed: u64,
}

impl Adaptive {
    pub fn new(target: f64) -> Self {
        Self {
            target,
            alpha: 1.0 - target,
            observed: 0,
        }
    }

    /// The level to ask the calibration residuals for now, in (0, 1); the caller bounds it by what its residuals
    /// can give.
    pub fn level(&self) -> f64 {
        (1.0 - self.alpha).clamp(1e-4, 1.0 - 1e-9)
    }

    /// One truth: inside the interval served at [`Adaptive::level`] or not.
    pub fn observe(&mut self, inside: bool) {
        self.observe_hour(usize::from(!inside), 1);
    }

    /// One hour's truths: `misses` of `of` outside their intervals.
    pub fn observe_hour(&mut self, misses: usize, of: usize) {
        if of == 0 {
            return;
        }
        let miss = misses as f64 / of as f64;
        // αₜ may go below 0 (ask for more than any finite level) for a while; bounded so a long run of misses
        // cannot take it so far that hits need thousands of hours to bring it back.
        self.alpha = (self.alpha + GAMMA * ((1.0 - self.target) - miss)).clamp(-0.5, 1.0);
        self.observed += of as u64;
    }
}

/// The adapted levels of a served model version, one per target confidence level it follows (its spec's levels and
/// the monitor's 90 %). The serving process's monitor moves them as the truths arrive ([`crate::monitor`]); a
/// forecast asks the calibration residuals for the adapted level of the confidence it was asked.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Levels {
    pub levels: Vec<Adaptive>,
}

impl Levels {
    /// One adaptive level per distinct target, in increasing order.
    pub fn new(targets: &[f64]) -> Self {
        let mut targets: Vec<f64> = targets.iter().copied().filter(|t| *t > 0.0 && *t < 1.0).collect();
        targets.sort_by(f64::total_cmp);
        targets.dedup_by(|a, b| same(*a, *b));
        Self {
            levels: targets.into_iter().map(Adaptive::new).collect(),
        }
    }

    /// The adaptive level followed for `target`, if it is one.
    pub fn get(&self, target: f64) -> Option<&Adaptive> {
        self.levels.iter().find(|a| same(a.target, target))
    }

    /// The levels asked now, in the order of [`Levels::levels`].
    pub fn now(&self) -> Vec<f64> {
        self.levels.iter().map(Adaptive::level).collect()
    }
}

/// Confidence levels given as decimals (`0.9`) compare equal despite their binary rounding.
pub fn same(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Conformal;

    /// A deterministic stream of standard-normal-like errors (Box–Muller over a fixed LCG).
    fn errors(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        let mut uniform = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| ((-2.0 * uniform().ln()).sqrt() * (std::f64::consts::TAU * uniform()).cos()) as f32)
            .collect()
    }

    #[test]
    fn intervals_move_toward_the_target_when_the_error_doubles() {
        // Calibrated on unit errors; then 4,000 hours of unit errors and 4,000 of doubled errors.
        let calibration = errors(5000, 1);
        let conformal = Conformal::fit(&vec![0.0; 5000], &calibration, &[false; 5000], 1);
        let stream: Vec<f32> = errors(8000, 2)
            .into_iter()
            .enumerate()
            .map(|(i, e)| if i < 4000 { e } else { 2.0 * e })
            .collect();
        let served = crate::model::Distribution {
            conformal: &conformal,
            pool: None,
        };
        let mut adaptive = Adaptive::new(0.9);
        let (mut fixed_hits, mut adaptive_hits) = ([0u32; 2], [0u32; 2]);
        let mut late = 0u32;
        for (i, e) in stream.iter().enumerate() {
            let half = usize::from(i >= 4000);
            let (lo, hi) = conformal.offsets(0, 0.0, 0.9, false).unwrap();
            fixed_hits[half] += u32::from(lo <= *e && *e <= hi);
            let (lo, hi) = served
                .interval_bounded(0, 0.0, f32::NAN, adaptive.level(), false)
                .unwrap();
            let inside = lo <= *e && *e <= hi;
            adaptive_hits[half] += u32::from(inside);
            if i >= 6000 {
                late += u32::from(inside);
            }
            adaptive.observe(inside);
        }
        let share = |hits: u32, n: u32| f64::from(hits) / f64::from(n);
        // Before the change both hold the target.
        assert!((share(fixed_hits[0], 4000) - 0.9).abs() < 0.03, "{fixed_hits:?}");
        assert!((share(adaptive_hits[0], 4000) - 0.9).abs() < 0.03, "{adaptive_hits:?}");
        // After it the fixed intervals cover about 60 %; the adaptive ones move back toward 90 %.
        assert!(share(fixed_hits[1], 4000) < 0.7, "{fixed_hits:?}");
        assert!(share(adaptive_hits[1], 4000) > 0.8, "{adaptive_hits:?}");
        assert!((share(late, 2000) - 0.9).abs() < 0.04, "the last 2,000 hours: {late}");
        assert!(adaptive.level() > 0.97, "the level asked rose: {}", adaptive.level());
    }

    #[test]
    fn hits_lower_the_level_and_misses_raise_it() {
        let mut a = Adaptive::new(0.9);
        a.observe(true);
        assert!(a.level() < 0.9);
        let mut b = Adaptive::new(0.9);
        b.observe(false);
        assert!(b.level() > 0.9);
        // A long run of misses is bounded.
        for _ in 0..100_000 {
            b.observe(false);
        }
        assert!(b.alpha >= -0.5 && b.level() < 1.0);
    }

    #[test]
    fn levels_follow_each_distinct_target_once() {
        let levels = Levels::new(&[0.9, 0.8, 0.9, 0.1 + 0.8, 1.0, 0.0]);
        assert_eq!(levels.levels.len(), 2, "{levels:?}");
        assert_eq!(levels.get(0.8).map(|a| a.target), Some(0.8));
        assert!(levels.get(0.9).is_some() && levels.get(0.95).is_none());
        assert_eq!(levels.now().len(), 2);
        assert!((levels.now()[1] - 0.9).abs() < 1e-12);
    }
}

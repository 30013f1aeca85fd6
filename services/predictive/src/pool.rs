//! The linear pool of a forecast's predictive distribution with the climatology's: `w·F + (1 − w)·G`, where `F` is
//! the conformal distribution around the model's forecast and `G` the one around the climatology's, both calibrated
//! on the calibration period. Far ahead a forecast knows little more than the season, and a distribution that puts
//! part of its mass where the season says scores better (CRPS) than either alone; near the origin the forecast's
//! weight is one and nothing changes.
//!
//! The weight of each day ahead minimises the mean CRPS of the pool on the calibration forecasts. The CRPS of a
//! mixture is a quadratic in `w` — with `E|·|` taken between the distributions and the truth `y`,
//! `CRPS(w) = w·E|X−y| + (1−w)·E|Z−y| − ½·(w²·E|X−X'| + (1−w)²·E|Z−Z'| + 2w(1−w)·E|X−Z|)` — convex (its second
//! derivative is the energy distance of the two), so its minimum over `[0, 1]` is exact and needs one pass over the
//! forecasts.

use crate::model::{Conformal, DISTRIBUTION_QUANTILES};

/// The hours ahead that share one weight: a day.
pub const WEIGHT_HOURS: usize = 24;

/// The pool's part of a stored model.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    /// Per hour ahead, the forecast's weight in `[0, 1]`; the climatology's is one minus it.
    pub weights: Vec<f32>,
    /// The climatology's residuals on the calibration period (the model's space).
    pub climatology: Conformal,
}

/// The interval a mixture `w·F_a + (1 − w)·F_b` of the empirical distributions of `p + a` and `c + b` (`a`, `b`
/// sorted) gives at `level`: its quantiles at `(1 − level)/2` and `(1 + level)/2`.
pub fn interval(a: &[f32], p: f32, b: &[f32], c: f32, w: f64, level: f64) -> (f32, f32) {
    let tail = (1.0 - level) / 2.0;
    (quantile(a, p, b, c, w, tail), quantile(a, p, b, c, w, 1.0 - tail))
}

/// The smallest value `x` of `p + a` and `c + b` at which the mixture's distribution function reaches `tau`.
fn quantile(a: &[f32], p: f32, b: &[f32], c: f32, w: f64, tau: f64) -> f32 {
    let cdf = |x: f32| {
        let below_a = a.partition_point(|r| p + r <= x) as f64 / a.len().max(1) as f64;
        let below_b = b.partition_point(|r| c + r <= x) as f64 / b.len().max(1) as f64;
        w * below_a + (1.0 - w) * below_b
    };
    // The distribution function rises along either sorted list, so the first value of each that reaches `tau` is
    // found by bisection; the quantile is the smaller of the two.
    let first = |set: &[f32], shift: f32| {
        let i = set.partition_point(|r| cdf(shift + r) < tau - 1e-12);
        set.get(i).map(|r| shift + r)
    };
    match (first(a, p), first(b, c)) {
        (Some(x), Some(z)) => x.min(z),
        (Some(x), None) => x,
        (None, Some(z)) => z,
        (None, None) => (p + a.last().copied().unwrap_or(0.0)).max(c + b.last().copied().unwrap_or(0.0)),
    }
}

/// [`DISTRIBUTION_QUANTILES`] evenly spaced quantiles of the mixture of [`interval`], into `out` (cleared first).
pub fn quantiles(a: &[f32], p: f32, b: &[f32], c: f32, w: f64, out: &mut Vec<f32>) {
    out.clear();
    let (wa, wb) = (w / a.len().max(1) as f64, (1.0 - w) / b.len().max(1) as f64);
    let (mut i, mut j, mut mass) = (0, 0, 0f64);
    let step = 1.0 / (DISTRIBUTION_QUANTILES + 1) as f64;
    while out.len() < DISTRIBUTION_QUANTILES && (i < a.len() || j < b.len()) {
        let from_a = j >= b.len() || (i < a.len() && p + a[i] <= c + b[j]);
        let x = if from_a {
            i += 1;
            mass += wa;
            p + a[i - 1]
        } else {
            j += 1;
            mass += wb;
            c + b[j - 1]
        };
        while out.len() < DISTRIBUTION_QUANTILES && mass >= (out.len() + 1) as f64 * step - 1e-12 {
            out.push(x);
        }
    }
    if let Some(last) = out.last().copied() {
        out.resize(DISTRIBUTION_QUANTILES, last);
    }
}

/// The terms of the CRPS of a mixture of two distributions given by sorted samples, summed over forecasts.
#[derive(Debug, Default, Clone, Copy)]
struct Terms {
    to_truth_a: f64,
    to_truth_b: f64,
    within_a: f64,
    within_b: f64,
    between: f64,
    n: u64,
}

impl Terms {
    fn add(&mut self, a: &[f64], b: &[f64], y: f64) {
        self.to_truth_a += mean_distance(a, y);
        self.to_truth_b += mean_distance(b, y);
        self.within_a += spread(a);
        self.within_b += spread(b);
        self.between += cross_distance(a, b);
        self.n += 1;
    }

    /// The weight of `a` in `[0, 1]` that minimises the summed CRPS; one when no forecast was added.
    fn best_weight(&self) -> f64 {
        if self.n == 0 {
            return 1.0;
        }
        // CRPS(w) = w·A + (1−w)·B − ½(w²·C + (1−w)²·D + 2w(1−w)·E): its derivative is
        // (A − B + D − E) − w·(C + D − 2E), and 2E − C − D ≥ 0 is the energy distance.
        let slope0 = self.to_truth_a - self.to_truth_b + self.within_b - self.between;
        let curvature = 2.0 * self.between - self.within_a - self.within_b;
        if curvature <= 1e-12 * self.n as f64 {
            return if slope0 < 0.0 { 1.0 } else { 0.0 };
        }
        (-slope0 / curvature).clamp(0.0, 1.0)
    }
}

/// `E|X − y|` over the samples.
fn mean_distance(x: &[f64], y: f64) -> f64 {
    x.iter().map(|v| (v - y).abs()).sum::<f64>() / x.len().max(1) as f64
}

/// `E|X − X'|` over pairs of the sorted samples.
fn spread(x: &[f64]) -> f64 {
    let n = x.len() as f64;
    if x.is_empty() {
        return 0.0;
    }
    2.0 * x
        .iter()
        .enumerate()
        .map(|(i, v)| (2.0 * i as f64 - n + 1.0) * v)
        .sum::<f64>()
        / (n * n)
}

/// `E|X − Z|` over pairs of the sorted samples of `x` and `z`, in one merge.
fn cross_distance(x: &[f64], z: &[f64]) -> f64 {
    if x.is_empty() || z.is_empty() {
        return 0.0;
    }
    let total: f64 = z.iter().sum();
    let (mut below, mut below_sum, mut sum) = (0usize, 0f64, 0f64);
    for v in x {
        while below < z.len() && z[below] <= *v {
            below_sum += z[below];
            below += 1;
        }
        let above = (z.len() - below) as f64;
        sum += v * below as f64 - below_sum + (total - below_sum) - v * above;
    }
    sum / (x.len() * z.len()) as f64
}

/// The forecasts of a calibration period, for [`fit`].
pub struct Calibrated<'a> {
    /// The model's forecasts (n × horizon, model space), the climatology's, and the truths.
    pub points: &'a [f32],
    pub climatology: &'a [f32],
    pub truths: &'a [f32],
    /// Per forecast, whether the fallback answered (not pooled: the fallback is the climatology).
    pub fallback: &'a [bool],
    pub horizon: usize,
}

/// The forecast's weight per hour ahead (one per [`WEIGHT_HOURS`]) that minimises the mean CRPS, in concentrations
/// (`inverse` maps the model's space to them), of the pool of `model`'s and `climatology`'s conformal distributions
/// on the forecasts of `calibrated`.
pub fn fit(
    model: &Conformal,
    climatology: &Conformal,
    calibrated: &Calibrated,
    inverse: impl Fn(f32) -> f32,
) -> Vec<f32> {
    let horizon = calibrated.horizon.max(1);
    let mut terms = vec![Terms::default(); horizon.div_ceil(WEIGHT_HOURS)];
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let samples = |set: Vec<f32>, point: f32, out: &mut Vec<f64>| {
        out.clear();
        out.extend(set.iter().map(|q| f64::from(inverse(point + q))));
    };
    for (i, ((p, c), y)) in calibrated
        .points
        .iter()
        .zip(calibrated.climatology)
        .zip(calibrated.truths)
        .enumerate()
    {
        let h = i % horizon;
        if calibrated.fallback.get(i / horizon).copied().unwrap_or(true) || p.is_nan() || c.is_nan() || y.is_nan() {
            continue;
        }
        samples(model.quantiles(h, *p, false), *p, &mut a);
        samples(climatology.quantiles(h, *c, false), *c, &mut b);
        if a.is_empty() || b.is_empty() {
            continue;
        }
        terms[h / WEIGHT_HOURS].add(&a, &b, f64::from(inverse(*y)));
    }
    (0..horizon)
        .map(|h| terms[h / WEIGHT_HOURS].best_weight() as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::crps_samples;
    use proptest::prelude::*;

    /// The mixture's distribution function at `x`, counted over every value.
    fn brute_cdf(a: &[f32], p: f32, b: &[f32], c: f32, w: f64, x: f32) -> f64 {
        let below = |set: &[f32], shift: f32| set.iter().filter(|r| shift + **r <= x).count() as f64 / set.len() as f64;
        w * below(a, p) + (1.0 - w) * below(b, c)
    }

    /// The smallest value of either set at which the distribution function reaches `tau`, by trying every value.
    fn brute_quantile(a: &[f32], p: f32, b: &[f32], c: f32, w: f64, tau: f64) -> Option<f32> {
        a.iter()
            .map(|r| p + r)
            .chain(b.iter().map(|r| c + r))
            .filter(|x| brute_cdf(a, p, b, c, w, *x) >= tau - 1e-12)
            .min_by(f32::total_cmp)
    }

    /// Sorted residuals on a quarter grid (exact in f32, so sums compare exactly).
    fn residuals() -> impl Strategy<Value = Vec<f32>> {
        prop::collection::vec(-200i32..200, 1..60).prop_map(|v| {
            let mut r: Vec<f32> = v.into_iter().map(|x| x as f32 / 4.0).collect();
            r.sort_by(f32::total_cmp);
            r
        })
    }

    proptest! {
        // Each case checks 199 quantiles against every value: fewer cases than the default 256 keep it to seconds.
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn a_mixtures_quantiles_are_the_smallest_values_reaching_their_levels(
            a in residuals(),
            b in residuals(),
            p in -50i32..50,
            c in -50i32..50,
            w in 0.0f64..=1.0,
            level in 0.5f64..0.99,
        ) {
            let (p, c) = (p as f32, c as f32);
            let tail = (1.0 - level) / 2.0;
            let (lo, hi) = interval(&a, p, &b, c, w, level);
            if let Some(expected) = brute_quantile(&a, p, &b, c, w, tail) {
                prop_assert_eq!(lo, expected);
            }
            if let Some(expected) = brute_quantile(&a, p, &b, c, w, 1.0 - tail) {
                prop_assert_eq!(hi, expected);
            }
            prop_assert!(lo <= hi);
            let mut q = Vec::new();
            quantiles(&a, p, &b, c, w, &mut q);
            prop_assert_eq!(q.len(), DISTRIBUTION_QUANTILES);
            prop_assert!(q.windows(2).all(|v| v[0] <= v[1]));
            // Each of the evenly spaced quantiles reaches its level, and no smaller value of the sets does.
            for (k, x) in q.iter().enumerate() {
                let tau = (k + 1) as f64 / (DISTRIBUTION_QUANTILES + 1) as f64;
                if let Some(expected) = brute_quantile(&a, p, &b, c, w, tau) {
                    prop_assert_eq!(*x, expected, "level {}", tau);
                }
            }
        }

        #[test]
        fn the_chosen_weight_is_no_worse_than_any_other(
            a in residuals(),
            b in residuals(),
            ys in prop::collection::vec(-60i32..60, 1..8),
        ) {
            let a: Vec<f64> = a.iter().map(|v| f64::from(*v)).collect();
            let b: Vec<f64> = b.iter().map(|v| f64::from(*v) + 10.0).collect();
            let mut terms = Terms::default();
            for y in &ys {
                terms.add(&a, &b, f64::from(*y));
            }
            // The summed CRPS of the mixture at weight `w`, from its definition over every pair of values.
            let crps = |w: f64| {
                let values: Vec<(f64, f64)> = a
                    .iter()
                    .map(|v| (*v, w / a.len() as f64))
                    .chain(b.iter().map(|v| (*v, (1.0 - w) / b.len() as f64)))
                    .collect();
                ys.iter()
                    .map(|y| {
                        let y = f64::from(*y);
                        let to_truth: f64 = values.iter().map(|(v, m)| m * (v - y).abs()).sum();
                        let pairs: f64 = values
                            .iter()
                            .flat_map(|(v, m)| values.iter().map(move |(u, n)| m * n * (v - u).abs()))
                            .sum();
                        to_truth - pairs / 2.0
                    })
                    .sum::<f64>()
            };
            let best = crps(terms.best_weight());
            for k in 0..=10 {
                let other = crps(f64::from(k) / 10.0);
                prop_assert!(best <= other + 1e-9 * other.abs().max(1.0), "w {} gives {} against {}", k, other, best);
            }
        }
    }

    #[test]
    fn the_distances_match_their_definitions() {
        let x = [1.0, 2.0, 4.0, 7.0];
        let z = [0.5, 3.0, 9.0];
        let naive = |u: &[f64], v: &[f64]| {
            u.iter().flat_map(|a| v.iter().map(move |b| (a - b).abs())).sum::<f64>() / (u.len() * v.len()) as f64
        };
        assert!((spread(&x) - naive(&x, &x)).abs() < 1e-12);
        assert!((cross_distance(&x, &z) - naive(&x, &z)).abs() < 1e-12);
        assert!((cross_distance(&z, &x) - naive(&z, &x)).abs() < 1e-12);
    }

    #[test]
    fn the_chosen_weight_minimises_the_mixtures_crps() {
        // A sharp forecast off the truth and a wide climatology around it: the best pool lies strictly between.
        let a: Vec<f64> = (0..50).map(|i| 10.0 + f64::from(i) * 0.1).collect();
        let b: Vec<f64> = (0..50).map(|i| f64::from(i) * 0.8).collect();
        let ys = [14.0, 18.0, 20.0, 11.0];
        let mut terms = Terms::default();
        for y in ys {
            terms.add(&a, &b, y);
        }
        let w = terms.best_weight();
        // The CRPS of the mixture as a sample set with the weights as repetitions (50 × k of each).
        let mixture_crps = |w: f64| {
            let k = (w * 100.0).round() as usize;
            let mut s = Vec::new();
            for _ in 0..k {
                s.extend_from_slice(&a);
            }
            for _ in 0..100 - k {
                s.extend_from_slice(&b);
            }
            ys.iter().map(|y| crps_samples(&s, *y)).sum::<f64>()
        };
        assert!(w > 0.0 && w < 1.0, "{w}");
        let at = (w * 100.0).round() / 100.0;
        for other in [0.0, 0.25, 0.5, 0.75, 1.0] {
            if (other - at).abs() > 0.05 {
                assert!(mixture_crps(at) < mixture_crps(other), "w {at} against {other}");
            }
        }
    }

    #[test]
    fn a_mixtures_quantiles_follow_its_weights() {
        let a: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..100).map(|i| i as f32).collect();
        // All weight on `a` shifted by 1000: the plain quantiles of `a`.
        let (lo, hi) = interval(&a, 1000.0, &b, 0.0, 1.0, 0.9);
        assert_eq!((lo, hi), (1004.0, 1094.0));
        // Half and half, far apart: the 5 % and 95 % points lie in the lower and the upper part.
        let (lo, hi) = interval(&a, 1000.0, &b, 0.0, 0.5, 0.9);
        assert_eq!((lo, hi), (9.0, 1089.0));
        let mut q = Vec::new();
        quantiles(&a, 1000.0, &b, 0.0, 0.5, &mut q);
        assert_eq!(q.len(), DISTRIBUTION_QUANTILES);
        assert!(q.windows(2).all(|w| w[0] <= w[1]));
        // 100 of the 199 levels (k/200, k ≤ 100) fall in the lower half's mass.
        assert_eq!(q.iter().filter(|v| **v >= 1000.0).count(), 99);
    }
}

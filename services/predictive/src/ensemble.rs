//! Ensemble weights: per hour ahead, the non-negative weights summing to 1 that minimise the absolute (or squared)
//! error of the members' weighted mean on the calibration forecasts (model space) — the squared error solved
//! exactly on the members' Gram matrix, the absolute error by iteratively reweighted least squares on it; and the
//! combination itself.

use airq_api::model::Objective;

/// Rounds of reweighting for the absolute error: each minimises a quadratic that lies above the (smoothed) absolute
/// error and touches it at the previous weights, so none makes it worse; the weights settle within a few tens.
const REWEIGHTING_ROUNDS: usize = 30;

/// `members[m]` is member `m`'s forecasts (n × horizon, model space), `truths` the truths (n × horizon, NaN where
/// unknown); only the forecasts `use_row(i)` admits count. Returns the weights, horizon × members (row `h` sums to
/// 1) that minimise `objective`. An hour with no usable forecast gets equal weights.
pub fn fit(
    members: &[&[f32]],
    truths: &[f32],
    horizon: usize,
    objective: Objective,
    use_row: impl Fn(usize) -> bool,
) -> Vec<f32> {
    let k = members.len();
    let rounds = match objective {
        Objective::AbsoluteError => REWEIGHTING_ROUNDS,
        Objective::SquaredError => 1,
    };
    let mut weights = Vec::with_capacity(horizon * k);
    for h in 0..horizon {
        let rows: Vec<(Vec<f64>, f64)> = truths
            .iter()
            .enumerate()
            .skip(h)
            .step_by(horizon.max(1))
            .filter(|(i, t)| !t.is_nan() && use_row(i / horizon))
            .map(|(i, t)| {
                (
                    members.iter().map(|m| f64::from(m[i])).collect::<Vec<f64>>(),
                    f64::from(*t),
                )
            })
            .filter(|(f, _)| f.iter().all(|v| v.is_finite()))
            .collect();
        if rows.is_empty() {
            weights.extend(std::iter::repeat_n(1.0 / k as f32, k));
            continue;
        }
        // Residuals below a thousandth of the typical truth count as that (the smoothing that keeps a row that
        // fits exactly from taking every weight).
        let scale = rows.iter().map(|(_, t)| t.abs()).sum::<f64>() / rows.len() as f64;
        let floor = (scale * 1e-3).max(1e-9);
        let mut row_weight = vec![1f64; rows.len()];
        let mut w: Vec<f64> = Vec::new();
        for round in 0..rounds {
            if round > 0 {
                for ((f, t), rw) in rows.iter().zip(row_weight.iter_mut()) {
                    let r: f64 = t - f.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>();
                    *rw = 1.0 / r.abs().max(floor);
                }
            }
            let mut gram = vec![0f64; k * k];
            let mut cross = vec![0f64; k];
            let total: f64 = row_weight.iter().sum();
            for ((f, t), rw) in rows.iter().zip(&row_weight) {
                for a in 0..k {
                    cross[a] += rw * f[a] * t;
                    for b in 0..k {
                        gram[a * k + b] += rw * f[a] * f[b];
                    }
                }
            }
            gram.iter_mut().for_each(|g| *g /= total);
            cross.iter_mut().for_each(|c| *c /= total);
            w = simplex_least_squares(&gram, &cross, k);
        }
        weights.extend(w.into_iter().map(|w| w as f32));
    }
    weights
}

/// Minimises `wᵀGw − 2bᵀw` over the simplex (w ≥ 0, Σw = 1) exactly: the minimum lies on some face of the
/// simplex, so for every subset of members (at most 2⁸) the minimum on the subset's affine hull is solved from its
/// KKT system, and the best one without a negative weight is kept. A single member is always feasible.
fn simplex_least_squares(gram: &[f64], cross: &[f64], k: usize) -> Vec<f64> {
    let objective = |w: &[f64]| -> f64 {
        (0..k)
            .map(|a| w[a] * ((0..k).map(|b| gram[a * k + b] * w[b]).sum::<f64>() - 2.0 * cross[a]))
            .sum()
    };
    let mut best: Option<(f64, Vec<f64>)> = None;
    for subset in 1u32..(1 << k) {
        let members: Vec<usize> = (0..k).filter(|m| subset & (1 << m) != 0).collect();
        let s = members.len();
        // [2G_S 1; 1ᵀ 0] [w; λ] = [2b_S; 1]
        let system = nalgebra::DMatrix::<f64>::from_fn(s + 1, s + 1, |i, j| match (i < s, j < s) {
            (true, true) => 2.0 * gram[members[i] * k + members[j]],
            (true, false) | (false, true) => 1.0,
            (false, false) => 0.0,
        });
        let rhs = nalgebra::DVector::<f64>::from_fn(s + 1, |i, _| if i < s { 2.0 * cross[members[i]] } else { 1.0 });
        let Some(solution) = system.lu().solve(&rhs) else {
            continue;
        };
        if (0..s).any(|i| !solution[i].is_finite() || solution[i] < -1e-12) {
            continue;
        }
        let mut w = vec![0.0; k];
        for (i, m) in members.iter().enumerate() {
            w[*m] = solution[i].max(0.0);
        }
        let total: f64 = w.iter().sum();
        w.iter_mut().for_each(|x| *x /= total);
        let value = objective(&w);
        if best.as_ref().is_none_or(|(v, _)| value < *v) {
            best = Some((value, w));
        }
    }
    best.map_or_else(|| vec![1.0 / k as f64; k], |(_, w)| w)
}

/// The weighted mean of the members' forecasts (each n × horizon) with `weights` (horizon × members).
pub fn combine(members: &[&[f32]], weights: &[f32], horizon: usize) -> Vec<f32> {
    let k = members.len();
    let n = members.first().map_or(0, |m| m.len());
    (0..n)
        .map(|i| {
            let h = i % horizon;
            members.iter().enumerate().map(|(m, f)| weights[h * k + m] * f[i]).sum()
        })
        .collect()
}

/// The folds of the cross-fitting: the calibration origins by week, in turn.
pub const CROSS_FIT_FOLDS: usize = 5;

/// The fold of an origin at `time` (Unix seconds): its week's number modulo [`CROSS_FIT_FOLDS`], so every fold
/// spans the whole calibration period (each season in every fold) and the days of one week stay together.
pub fn fold_of(time: i64) -> usize {
    time.div_euclid(7 * 86_400).rem_euclid(CROSS_FIT_FOLDS as i64) as usize
}

/// The members' combination where the forecasts of each origin are combined with the weights learned on the other
/// folds' (`fold(i)` is origin `i`'s fold, below [`CROSS_FIT_FOLDS`]): forecasts whose errors say what the stored
/// weights' errors will be on origins they never saw, for calibrating intervals.
pub fn cross_fitted(
    members: &[&[f32]],
    truths: &[f32],
    horizon: usize,
    objective: Objective,
    fold: impl Fn(usize) -> usize,
) -> Vec<f32> {
    let n = members.first().map_or(0, |m| m.len());
    let folds: Vec<usize> = (0..n / horizon.max(1)).map(fold).collect();
    let mut crossed = vec![f32::NAN; n];
    for f in 0..CROSS_FIT_FOLDS {
        if !folds.contains(&f) {
            continue;
        }
        let weights = fit(members, truths, horizon, objective, |i| folds[i] != f);
        for (i, p) in combine(members, &weights, horizon).into_iter().enumerate() {
            if folds[i / horizon] == f {
                crossed[i] = p;
            }
        }
    }
    crossed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_absolute_error_weighs_toward_the_median() {
        // Truths with right-skewed noise (mostly small, sometimes large): member `median` forecasts the signal
        // (the noise's median is 0), member `mean` the signal plus the noise's mean.
        let n = 3000;
        let signal: Vec<f32> = (0..n).map(|i| (i as f32 * 0.21).sin() * 5.0 + 30.0).collect();
        let noise = |i: usize| {
            let u = ((i as f32 * 12.9898).sin() * 43_758.547).fract().abs();
            if u < 0.8 { u - 0.4 } else { 40.0 * u }
        };
        let truths: Vec<f32> = (0..n).map(|i| signal[i] + noise(i)).collect();
        let shift = (0..n).map(noise).sum::<f32>() / n as f32;
        let median = signal.clone();
        let mean: Vec<f32> = signal.iter().map(|s| s + shift).collect();
        let parts = [median.as_slice(), mean.as_slice()];
        let squared = fit(&parts, &truths, 1, Objective::SquaredError, |_| true);
        let absolute = fit(&parts, &truths, 1, Objective::AbsoluteError, |_| true);
        assert!(squared[1] > 0.9, "{squared:?}");
        assert!(absolute[0] > 0.9, "{absolute:?}");
        assert!((absolute.iter().sum::<f32>() - 1.0).abs() < 1e-5 && absolute.iter().all(|w| *w >= 0.0));
        let mae = |w: &[f32]| {
            let c = combine(&parts, w, 1);
            c.iter().zip(&truths).map(|(c, t)| (c - t).abs()).sum::<f32>() / n as f32
        };
        let mse = |w: &[f32]| {
            let c = combine(&parts, w, 1);
            c.iter().zip(&truths).map(|(c, t)| (c - t).powi(2)).sum::<f32>() / n as f32
        };
        // Each objective's weights are the better ones by that objective.
        assert!(
            mae(&absolute) < mae(&squared),
            "{} against {}",
            mae(&absolute),
            mae(&squared)
        );
        assert!(
            mse(&squared) < mse(&absolute),
            "{} against {}",
            mse(&squared),
            mse(&absolute)
        );
    }

    #[test]
    fn a_cross_fitted_forecast_is_combined_without_its_own_folds_truths() {
        // Member a is right on the origins of fold 0 and wrong elsewhere; member b the reverse. Fold 0's
        // cross-fitted forecasts use weights learned on the others, which pick b: they must be b's, not a's.
        let n = 400;
        let week = 7 * 86_400;
        // Daily origins.
        let fold: Vec<usize> = (0..n).map(|i| fold_of(i as i64 * 86_400)).collect();
        assert_eq!(fold_of(0), fold_of(week - 1));
        assert!((0..CROSS_FIT_FOLDS as i64).all(|w| fold_of(w * week) == w as usize % CROSS_FIT_FOLDS));
        let truths: Vec<f32> = (0..n).map(|i| (i as f32 * 0.7).sin() * 5.0 + 10.0).collect();
        let a: Vec<f32> = (0..n)
            .map(|i| truths[i] + if fold[i] == 0 { 0.0 } else { 8.0 })
            .collect();
        let b: Vec<f32> = (0..n)
            .map(|i| truths[i] + if fold[i] == 0 { 8.0 } else { 0.0 })
            .collect();
        for objective in [Objective::AbsoluteError, Objective::SquaredError] {
            let crossed = cross_fitted(&[&a, &b], &truths, 1, objective, |i| fold[i]);
            for i in (0..n).filter(|i| fold[*i] == 0) {
                assert!(
                    (crossed[i] - b[i]).abs() < 0.1,
                    "{objective:?} origin {i}: {}",
                    crossed[i]
                );
            }
            assert!(crossed.iter().all(|p| p.is_finite()));
            // The weights learned on every fold, by contrast, have seen fold 0 and err less there.
            let all = combine(&[&a, &b], &fit(&[&a, &b], &truths, 1, objective, |_| true), 1);
            let fold0 = |f: &[f32]| {
                (0..n)
                    .filter(|i| fold[*i] == 0)
                    .map(|i| (f[i] - truths[i]).abs())
                    .sum::<f32>()
            };
            assert!(fold0(&crossed) > fold0(&all), "{objective:?}");
        }
    }

    #[test]
    fn weights_are_on_the_simplex_and_find_the_better_member() {
        // Truth t; member a is t plus small noise, b is t plus large noise, c is a constant far off.
        let n = 2000;
        let truths: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 10.0 + 20.0).collect();
        let noise = |i: usize, scale: f32| ((i as f32 * 12.9898).sin() * 43_758.547).fract() * scale;
        let a: Vec<f32> = truths.iter().enumerate().map(|(i, t)| t + noise(i, 1.0)).collect();
        let b: Vec<f32> = truths.iter().enumerate().map(|(i, t)| t + noise(i + 7, 6.0)).collect();
        let c = vec![-50f32; n];
        let w = fit(&[&a, &b, &c], &truths, 1, Objective::SquaredError, |_| true);
        assert_eq!(w.len(), 3);
        assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{w:?}");
        assert!(w.iter().all(|x| *x >= 0.0), "{w:?}");
        assert!(w[0] > 0.8 && w[0] > w[1] && w[2] < 1e-3, "{w:?}");
        // The combination is at least as good as the best member alone.
        let mse = |f: &[f32]| f.iter().zip(&truths).map(|(f, t)| (f - t).powi(2)).sum::<f32>() / n as f32;
        let combined = combine(&[&a, &b, &c], &w, 1);
        assert!(
            mse(&combined) <= mse(&a) + 1e-4,
            "{} against {}",
            mse(&combined),
            mse(&a)
        );
        // Two horizons are weighted apart; a horizon without truths gets equal weights.
        let mut t2 = Vec::new();
        let (mut a2, mut b2) = (Vec::new(), Vec::new());
        for i in 0..n {
            t2.extend([truths[i], f32::NAN]);
            a2.extend([a[i], 0.0]);
            b2.extend([b[i], 0.0]);
        }
        let w = fit(&[&a2, &b2], &t2, 2, Objective::SquaredError, |_| true);
        assert!(w[0] > 0.8, "{w:?}");
        assert_eq!(&w[2..], &[0.5, 0.5]);
        let combined = combine(&[&a2, &b2], &w, 2);
        assert!((combined[0] - (w[0] * a2[0] + w[1] * b2[0])).abs() < 1e-5);
    }
}

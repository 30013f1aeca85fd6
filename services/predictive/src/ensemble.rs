//! Ensemble weights: per hour ahead, the non-negative weights summing to 1 that minimise the squared error of the
//! members' weighted mean on the calibration forecasts (model space), solved exactly on the members' Gram
//! matrix; and the combination itself.

/// `members[m]` is member `m`'s forecasts (n × horizon, model space), `truths` the truths (n × horizon, NaN where
/// unknown); only the forecasts `use_row(i)` admits count. Returns the weights, horizon × members (row `h` sums to
/// 1). An hour with no usable forecast gets equal weights.
pub fn fit(members: &[&[f32]], truths: &[f32], horizon: usize, use_row: impl Fn(usize) -> bool) -> Vec<f32> {
    let k = members.len();
    let mut weights = Vec::with_capacity(horizon * k);
    for h in 0..horizon {
        let mut gram = vec![0f64; k * k];
        let mut cross = vec![0f64; k];
        let mut count = 0usize;
        for (i, t) in truths.iter().enumerate().skip(h).step_by(horizon.max(1)) {
            if t.is_nan() || !use_row(i / horizon) {
                continue;
            }
            let f: Vec<f64> = members.iter().map(|m| f64::from(m[i])).collect();
            if f.iter().any(|v| !v.is_finite()) {
                continue;
            }
            count += 1;
            for a in 0..k {
                cross[a] += f[a] * f64::from(*t);
                for b in 0..k {
                    gram[a * k + b] += f[a] * f[b];
                }
            }
        }
        if count == 0 {
            weights.extend(std::iter::repeat_n(1.0 / k as f32, k));
            continue;
        }
        gram.iter_mut().for_each(|g| *g /= count as f64);
        cross.iter_mut().for_each(|c| *c /= count as f64);
        weights.extend(simplex_least_squares(&gram, &cross, k).into_iter().map(|w| w as f32));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_on_the_simplex_and_find_the_better_member() {
        // Truth t; member a is t plus small noise, b is t plus large noise, c is a constant far off.
        let n = 2000;
        let truths: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 10.0 + 20.0).collect();
        let noise = |i: usize, scale: f32| ((i as f32 * 12.9898).sin() * 43_758.547).fract() * scale;
        let a: Vec<f32> = truths.iter().enumerate().map(|(i, t)| t + noise(i, 1.0)).collect();
        let b: Vec<f32> = truths.iter().enumerate().map(|(i, t)| t + noise(i + 7, 6.0)).collect();
        let c = vec![-50f32; n];
        let w = fit(&[&a, &b, &c], &truths, 1, |_| true);
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
        let w = fit(&[&a2, &b2], &t2, 2, |_| true);
        assert!(w[0] > 0.8, "{w:?}");
        assert_eq!(&w[2..], &[0.5, 0.5]);
        let combined = combine(&[&a2, &b2], &w, 2);
        assert!((combined[0] - (w[0] * a2[0] + w[1] * b2[0])).abs() < 1e-5);
    }
}

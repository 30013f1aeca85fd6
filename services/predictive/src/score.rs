//! Scores of the evaluation protocol: point errors (MAE, RMSE), the continuous ranked probability score of a
//! predictive distribution given by samples, and interval coverage and Winkler score at a confidence level.

/// Accumulates the scores of one set of forecasts (e.g. one pollutant over the test year).
#[derive(Debug, Clone, Default)]
pub struct Scores {
    n: u64,
    abs_error: f64,
    squared_error: f64,
    crps: f64,
    intervals: Vec<IntervalScores>,
}

/// Coverage and Winkler score at one confidence level.
#[derive(Debug, Clone, PartialEq)]
pub struct IntervalScores {
    pub level: f64,
    n: u64,
    covered: u64,
    winkler: f64,
}

impl IntervalScores {
    pub fn coverage(&self) -> f64 {
        ratio(self.covered as f64, self.n)
    }

    pub fn winkler(&self) -> f64 {
        ratio(self.winkler, self.n)
    }
}

fn ratio(total: f64, n: u64) -> f64 {
    if n == 0 { f64::NAN } else { total / n as f64 }
}

impl Scores {
    /// Scores at the confidence `levels` (e.g. 0.8 and 0.9).
    pub fn new(levels: &[f64]) -> Self {
        Self {
            intervals: levels
                .iter()
                .map(|&level| IntervalScores {
                    level,
                    n: 0,
                    covered: 0,
                    winkler: 0.0,
                })
                .collect(),
            ..Self::default()
        }
    }

    /// Adds one forecast: its point value, its intervals (in the order of the levels given to [`Scores::new`]),
    /// the samples of its predictive distribution (for CRPS; may be empty) and the truth.
    pub fn add(&mut self, point: f64, intervals: &[(f64, f64)], samples: &[f64], truth: f64) {
        self.n += 1;
        let error = point - truth;
        self.abs_error += error.abs();
        self.squared_error += error * error;
        self.crps += if samples.is_empty() {
            error.abs()
        } else {
            crps_samples(samples, truth)
        };
        for (score, &(lower, upper)) in self.intervals.iter_mut().zip(intervals) {
            score.n += 1;
            if lower <= truth && truth <= upper {
                score.covered += 1;
            }
            score.winkler += winkler(lower, upper, truth, 1.0 - score.level);
        }
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    pub fn mae(&self) -> f64 {
        ratio(self.abs_error, self.n)
    }

    pub fn rmse(&self) -> f64 {
        ratio(self.squared_error, self.n).sqrt()
    }

    pub fn crps(&self) -> f64 {
        ratio(self.crps, self.n)
    }

    pub fn intervals(&self) -> &[IntervalScores] {
        &self.intervals
    }
}

/// The Winkler (interval) score of `[lower, upper]` at miscoverage `alpha`: its width, plus `2/alpha` times the
/// distance by which the truth falls outside.
pub fn winkler(lower: f64, upper: f64, truth: f64, alpha: f64) -> f64 {
    let width = upper - lower;
    if truth < lower {
        width + 2.0 / alpha * (lower - truth)
    } else if truth > upper {
        width + 2.0 / alpha * (truth - upper)
    } else {
        width
    }
}

/// CRPS of the empirical distribution of `samples` at `truth`: `E|X - y| - E|X - X'| / 2`, exact, in
/// O(n log n) (the pairwise term from the sorted samples).
pub fn crps_samples(samples: &[f64], truth: f64) -> f64 {
    let n = samples.len();
    if n == 0 {
        return f64::NAN;
    }
    let mut sorted: Vec<f64> = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let nf = n as f64;
    let spread_to_truth: f64 = sorted.iter().map(|x| (x - truth).abs()).sum::<f64>() / nf;
    // sum over pairs |x_i - x_j| = 2 * sum_i (2i - n + 1) x_(i) for 0-based i.
    let pairwise: f64 = sorted
        .iter()
        .enumerate()
        .map(|(i, x)| (2.0 * i as f64 - nf + 1.0) * x)
        .sum::<f64>()
        * 2.0
        / (nf * nf);
    spread_to_truth - pairwise / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crps_naive(samples: &[f64], truth: f64) -> f64 {
        let n = samples.len() as f64;
        let a: f64 = samples.iter().map(|x| (x - truth).abs()).sum::<f64>() / n;
        let b: f64 = samples
            .iter()
            .flat_map(|x| samples.iter().map(move |y| (x - y).abs()))
            .sum::<f64>()
            / (n * n);
        a - b / 2.0
    }

    #[test]
    fn crps_matches_its_definition() {
        let samples = [3.0, -1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0];
        for truth in [-3.0, 0.0, 2.5, 4.0, 12.0] {
            let fast = crps_samples(&samples, truth);
            let slow = crps_naive(&samples, truth);
            assert!((fast - slow).abs() < 1e-12, "{truth}: {fast} vs {slow}");
        }
        // A single sample is the absolute error.
        assert_eq!(crps_samples(&[2.0], 5.0), 3.0);
    }

    #[test]
    fn winkler_penalises_misses_by_two_over_alpha() {
        assert_eq!(winkler(10.0, 20.0, 15.0, 0.1), 10.0);
        assert!((winkler(10.0, 20.0, 8.0, 0.1) - 50.0).abs() < 1e-9);
        assert!((winkler(10.0, 20.0, 21.0, 0.2) - 20.0).abs() < 1e-9);
    }

    #[test]
    fn scores_accumulate() {
        let mut scores = Scores::new(&[0.8, 0.9]);
        scores.add(10.0, &[(8.0, 12.0), (7.0, 13.0)], &[], 11.0);
        scores.add(10.0, &[(8.0, 12.0), (7.0, 13.0)], &[], 14.0);
        assert_eq!(scores.count(), 2);
        assert_eq!(scores.mae(), 2.5);
        assert!((scores.rmse() - (17.0f64 / 2.0).sqrt()).abs() < 1e-12);
        assert_eq!(scores.intervals()[0].coverage(), 0.5);
        assert_eq!(scores.intervals()[1].coverage(), 0.5);
        // 80 %: widths 4 and 4, the miss by 2 costs 2 / 0.2 * 2 = 20.
        assert!((scores.intervals()[0].winkler() - (4.0 + 24.0) / 2.0).abs() < 1e-9);
    }
}

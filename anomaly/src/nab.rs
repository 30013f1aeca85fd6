//! NAB scoring — Lavin & Ahmad, "Evaluating Real-time Anomaly Detection Algorithms: the Numenta Anomaly Benchmark"
//! (2015) — from its published rules:
//!
//! - each labelled anomaly is a window of rows; a detection inside a window is a true positive, and only the first
//!   one in a window counts, scored by how early it comes: `σ(y) = 2 / (1 + e^(5y)) − 1` at the relative position
//!   `y = −(end − i + 1) / (end − start + 1)` (≈ 1 at the window's start, ≈ 0 at its end), divided by `σ(−1)` so
//!   that the earliest detection earns exactly the profile's true-positive weight;
//! - a detection outside every window is a false positive weighted by the profile's false-positive weight: `−1` when
//!   no window precedes it, otherwise `σ(y)` at `y = (i − end) / (end − start)` after the preceding window (near
//!   the window costs little, far after it costs the full `−1`, and `−1` beyond three window lengths);
//! - each window without a detection costs the false-negative weight;
//! - the first 15 % of each file (at most 750 rows) is the probationary period, in which detections are not counted;
//! - the score of a corpus is the sum over its files, normalised to 100 for the perfect detector (every window
//!   detected at its start) and 0 for the null detector (never detecting).

/// The weights of a scoring profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    pub true_positive: f64,
    pub false_positive: f64,
    pub false_negative: f64,
}

impl Profile {
    /// NAB's standard profile.
    pub const STANDARD: Self = Self {
        true_positive: 1.0,
        false_positive: 0.11,
        false_negative: 1.0,
    };
    /// NAB's "reward low false positives" profile.
    pub const REWARD_LOW_FP: Self = Self {
        true_positive: 1.0,
        false_positive: 0.22,
        false_negative: 1.0,
    };
    /// NAB's "reward low false negatives" profile.
    pub const REWARD_LOW_FN: Self = Self {
        true_positive: 1.0,
        false_positive: 0.11,
        false_negative: 2.0,
    };
}

/// A labelled anomaly: rows `start..=end` of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub end: usize,
}

impl Window {
    fn len(self) -> usize {
        self.end - self.start + 1
    }
}

/// The rows at the start of a file of `rows` rows in which detections are not counted.
pub fn probationary_rows(rows: usize) -> usize {
    // floor(0.15 × rows), at most 750.
    (rows * 15 / 100).min(750)
}

/// NAB's scaled sigmoid.
pub fn scaled_sigmoid(y: f64) -> f64 {
    if y > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * y).exp()) - 1.0
    }
}

/// The score of one file.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FileScore {
    /// Sum of the true positives' weighted scores.
    pub true_positive: f64,
    /// Sum of the false positives' weighted scores (≤ 0).
    pub false_positive: f64,
    /// Windows detected.
    pub detected: usize,
    /// Windows missed.
    pub missed: usize,
    /// Detections outside every window.
    pub false_positives: usize,
    /// The file's raw score: true positives + false positives − false-negative weight × missed windows.
    pub raw: f64,
}

/// Scores `detections` (one flag per row) against `windows` (sorted, not overlapping).
pub fn score_file(detections: &[bool], windows: &[Window], profile: Profile) -> FileScore {
    let probation = probationary_rows(detections.len());
    let max_tp = scaled_sigmoid(-1.0);
    let mut hit = vec![false; windows.len()];
    let mut score = FileScore::default();
    for (i, _) in detections.iter().enumerate().filter(|(_, d)| **d) {
        if i < probation {
            continue;
        }
        if let Some(w) = windows.iter().position(|w| w.start <= i && i <= w.end) {
            if !hit[w] {
                hit[w] = true;
                let window = windows[w];
                let y = -((window.end - i + 1) as f64) / window.len() as f64;
                score.true_positive += scaled_sigmoid(y) * profile.true_positive / max_tp;
                score.detected += 1;
            }
            continue;
        }
        let unweighted = match windows.iter().rev().find(|w| w.end < i) {
            None => -1.0,
            Some(w) => scaled_sigmoid((i - w.end) as f64 / ((w.len() - 1).max(1)) as f64),
        };
        score.false_positive += unweighted * profile.false_positive;
        score.false_positives += 1;
    }
    score.missed = hit.iter().filter(|h| !**h).count();
    score.raw = score.true_positive + score.false_positive - profile.false_negative * score.missed as f64;
    score
}

/// A corpus's score, normalised: 100 for the perfect detector, 0 for the null detector.
pub fn normalised(raw_total: f64, windows_total: usize, profile: Profile) -> f64 {
    let null = -profile.false_negative * windows_total as f64;
    let perfect = profile.true_positive * windows_total as f64;
    if perfect == null {
        return 0.0;
    }
    100.0 * (raw_total - null) / (perfect - null)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Profile = Profile::STANDARD;

    fn flags(len: usize, at: &[usize]) -> Vec<bool> {
        let mut d = vec![false; len];
        for &i in at {
            d[i] = true;
        }
        d
    }

    #[test]
    fn the_earliest_detection_in_a_window_earns_the_full_weight_and_later_ones_less() {
        let windows = [Window { start: 500, end: 599 }];
        let first = score_file(&flags(1000, &[500]), &windows, P);
        assert!((first.true_positive - 1.0).abs() < 1e-12, "{first:?}");
        assert_eq!((first.detected, first.missed), (1, 0));
        let middle = score_file(&flags(1000, &[550]), &windows, P);
        let late = score_file(&flags(1000, &[599]), &windows, P);
        assert!(first.raw > middle.raw && middle.raw > late.raw && late.raw > 0.0 - 1e-9);
        // Only the first detection in a window counts.
        let twice = score_file(&flags(1000, &[550, 560]), &windows, P);
        assert_eq!(twice.raw, middle.raw);
        assert_eq!(twice.false_positives, 0);
    }

    #[test]
    fn misses_cost_the_false_negative_weight_and_probation_is_ignored() {
        let windows = [Window { start: 500, end: 599 }, Window { start: 800, end: 899 }];
        let none = score_file(&flags(1000, &[]), &windows, P);
        assert_eq!(none.raw, -2.0);
        // 15 % of 1000 rows: detections before row 150 do not count at all.
        let early = score_file(&flags(1000, &[10, 149]), &windows, P);
        assert_eq!(early.raw, -2.0);
        assert_eq!(early.false_positives, 0);
        assert_eq!(probationary_rows(100_000), 750);
    }

    #[test]
    fn false_positives_cost_more_the_further_they_are_from_a_preceding_window() {
        let windows = [Window { start: 500, end: 599 }];
        // Before any window: the full weight.
        let before = score_file(&flags(1000, &[300]), &windows, P);
        assert!((before.false_positive + 0.11).abs() < 1e-12, "{before:?}");
        let just_after = score_file(&flags(1000, &[601]), &windows, P);
        let far_after = score_file(&flags(1000, &[990]), &windows, P);
        assert!(just_after.false_positive > far_after.false_positive);
        assert!(just_after.false_positive < 0.0);
        assert!(
            (far_after.false_positive + 0.11).abs() < 1e-12,
            "beyond three window lengths: {far_after:?}"
        );
    }

    #[test]
    fn normalisation_puts_null_at_zero_and_perfect_at_one_hundred() {
        assert_eq!(normalised(-5.0, 5, P), 0.0);
        assert_eq!(normalised(5.0, 5, P), 100.0);
        assert_eq!(normalised(0.0, 5, P), 50.0);
    }

    #[test]
    fn the_sigmoid_is_about_one_at_the_start_and_zero_at_the_end() {
        assert!((scaled_sigmoid(-1.0) - 0.986_614_298_151_430_3).abs() < 1e-12);
        assert!(scaled_sigmoid(0.0).abs() < 1e-12);
        assert_eq!(scaled_sigmoid(3.5), -1.0);
    }
}

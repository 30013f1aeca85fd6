//! Evaluating a detector on a labelled corpus as NAB does: score every series once, then choose the alarm threshold
//! (and here the refractory period too) that gives the best corpus score for a profile, and report that score.

use crate::corpus::Series;
use crate::detector::{Detector, alarms};
use crate::nab::{Profile, normalised, score_file};

/// A detector's scores for every series of a corpus, in the corpus' order.
pub fn score(corpus: &[Series], make: impl Fn(&Series) -> Box<dyn Detector>) -> Vec<Vec<f64>> {
    corpus
        .iter()
        .map(|series| {
            let mut detector = make(series);
            series.values.iter().map(|&v| detector.score(v)).collect()
        })
        .collect()
}

/// The corpus score at one threshold and refractory period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub threshold: f64,
    pub refractory_seconds: i64,
    /// Normalised: 0 for the null detector, 100 for the perfect one.
    pub score: f64,
    /// The sum of the files' raw NAB scores (what `score` normalises).
    pub raw: f64,
    pub detected: usize,
    pub windows: usize,
    pub false_positives: usize,
}

/// Scores the alarms raised at `threshold` with `refractory_seconds` between alarms.
pub fn outcome(
    corpus: &[Series],
    scores: &[Vec<f64>],
    profile: Profile,
    threshold: f64,
    refractory_seconds: i64,
) -> Outcome {
    let mut raw = 0.0;
    let mut result = Outcome {
        threshold,
        refractory_seconds,
        score: 0.0,
        raw: 0.0,
        detected: 0,
        windows: 0,
        false_positives: 0,
    };
    for (series, scores) in corpus.iter().zip(scores) {
        let refractory = if refractory_seconds == 0 {
            0
        } else {
            series.rows_in(refractory_seconds)
        };
        let file = score_file(&alarms(scores, threshold, refractory), &series.windows, profile);
        raw += file.raw;
        result.detected += file.detected;
        result.windows += series.windows.len();
        result.false_positives += file.false_positives;
    }
    result.raw = raw;
    result.score = normalised(raw, result.windows, profile);
    result
}

/// The best outcome over every threshold and refractory period given (the first of equals).
pub fn best(
    corpus: &[Series],
    scores: &[Vec<f64>],
    profile: Profile,
    thresholds: &[f64],
    refractories_seconds: &[i64],
) -> Option<Outcome> {
    let mut best: Option<Outcome> = None;
    for &refractory in refractories_seconds {
        for &threshold in thresholds {
            let candidate = outcome(corpus, scores, profile, threshold, refractory);
            if best.is_none_or(|b| candidate.score > b.score) {
                best = Some(candidate);
            }
        }
    }
    best
}

/// A detector judged on data its threshold was not chosen on: the corpus in two parts, the threshold and refractory
/// period chosen on one part and scored on the other, both ways.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeldOut {
    /// Chosen on the second part, scored on the first.
    pub first: Outcome,
    /// Chosen on the first part, scored on the second.
    pub second: Outcome,
    /// Both held-out scorings as one corpus score (the raw scores added, normalised over every window).
    pub score: f64,
    pub detected: usize,
    pub windows: usize,
    pub false_positives: usize,
}

/// [`HeldOut`] for the split `in_first` makes of `corpus` (e.g. by NAB category); `None` when a part is empty or
/// has no window.
pub fn held_out(
    corpus: &[Series],
    scores: &[Vec<f64>],
    profile: Profile,
    thresholds: &[f64],
    refractories_seconds: &[i64],
    in_first: impl Fn(&Series) -> bool,
) -> Option<HeldOut> {
    let part = |first: bool| -> (Vec<Series>, Vec<Vec<f64>>) {
        corpus
            .iter()
            .zip(scores)
            .filter(|(series, _)| in_first(series) == first)
            .map(|(series, scores)| (series.clone(), scores.clone()))
            .unzip()
    };
    let (first, first_scores) = part(true);
    let (second, second_scores) = part(false);
    let chosen_on_second = best(&second, &second_scores, profile, thresholds, refractories_seconds)?;
    let chosen_on_first = best(&first, &first_scores, profile, thresholds, refractories_seconds)?;
    let on_first = outcome(
        &first,
        &first_scores,
        profile,
        chosen_on_second.threshold,
        chosen_on_second.refractory_seconds,
    );
    let on_second = outcome(
        &second,
        &second_scores,
        profile,
        chosen_on_first.threshold,
        chosen_on_first.refractory_seconds,
    );
    let windows = on_first.windows + on_second.windows;
    if on_first.windows == 0 || on_second.windows == 0 {
        return None;
    }
    Some(HeldOut {
        first: on_first,
        second: on_second,
        score: normalised(on_first.raw + on_second.raw, windows, profile),
        detected: on_first.detected + on_second.detected,
        windows,
        false_positives: on_first.false_positives + on_second.false_positives,
    })
}

/// The NAB category of a series (`realKnownCause` of `realKnownCause/nyc_taxi.csv`).
pub fn category(series: &Series) -> &str {
    series.name.split('/').next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::RollingZ;
    use crate::nab::Window;

    #[test]
    fn the_sweep_finds_the_threshold_that_catches_the_spike_without_false_positives() {
        // Small noise, a big spike inside the window, a middling bump before it.
        let mut values: Vec<f64> = (0..1000).map(|i| 10.0 + ((i * 7919) % 11) as f64 * 0.1).collect();
        values[400] += 3.0;
        values[700] += 30.0;
        let series = Series {
            name: "s".to_owned(),
            timestamps: (0..1000).map(|i| i * 60).collect(),
            values,
            windows: vec![Window { start: 690, end: 760 }],
        };
        let corpus = [series];
        let scores = score(&corpus, |_| Box::new(RollingZ::new(100)));
        let thresholds: Vec<f64> = (1..=40).map(f64::from).collect();
        let best = best(&corpus, &scores, Profile::STANDARD, &thresholds, &[0]).expect("a threshold");
        assert_eq!((best.detected, best.false_positives), (1, 0), "{best:?}");
        assert!(best.score > 55.0 && best.score <= 100.0, "{best:?}");
        let low = outcome(&corpus, &scores, Profile::STANDARD, 1.0, 0);
        assert!(low.false_positives > 0 && low.score < best.score, "{low:?}");
    }

    #[test]
    fn a_threshold_chosen_on_one_part_is_scored_on_the_other() {
        // Two series whose spikes need different thresholds: each part's best is wrong for the other.
        let series = |name: &str, spike: f64| {
            let mut values: Vec<f64> = (0..1000).map(|i| 10.0 + ((i * 7919) % 11) as f64 * 0.1).collect();
            values[400] += spike / 3.0;
            values[700] += spike;
            Series {
                name: name.to_owned(),
                timestamps: (0..1000).map(|i| i * 60).collect(),
                values,
                windows: vec![Window { start: 690, end: 760 }],
            }
        };
        let corpus = [series("a/one.csv", 30.0), series("b/two.csv", 6.0)];
        let scores = score(&corpus, |_| Box::new(RollingZ::new(100)));
        let thresholds: Vec<f64> = (1..=40).map(f64::from).collect();
        let held = held_out(&corpus, &scores, Profile::STANDARD, &thresholds, &[0], |s| {
            category(s) == "a"
        })
        .expect("two parts");
        let in_sample = best(&corpus, &scores, Profile::STANDARD, &thresholds, &[0]).expect("a threshold");
        assert_eq!(held.windows, 2);
        assert!(held.score <= in_sample.score + 1e-9, "{held:?} {in_sample:?}");
        assert_eq!(category(&corpus[1]), "b");
    }
}

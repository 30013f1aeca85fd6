//! A finished load compared with the earlier runs of the same load: its duration and the values it read, each
//! scored by the seasonal detector over those runs (a season of a day's runs for an hourly schedule, of a week's
//! for a daily one, so that a nightly bulk run or a quiet Sunday is not an anomaly). An unusual run opens an
//! episode in the shared anomalies table and is reported; a usual one closes the episode.

use airq_anomaly::detector::{Detector, Seasonal};
use airq_core::store::{AnomalyReport, LoadRun, Store};
use chrono::{DateTime, Utc};

/// The score above which a run is anomalous (the gateway's default, NAB's best standard-profile threshold).
pub const THRESHOLD: f64 = 5.5;
/// Runs of a load read to judge the newest.
const HISTORY_RUNS: i64 = 200;

/// One signal of a run found unusual.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub signal: &'static str,
    pub value: f64,
    pub expected: f64,
    pub score: f64,
}

impl Finding {
    /// What to tell people.
    pub fn describe(&self) -> String {
        match self.signal {
            "load_duration_seconds" => format!(
                "the load took {:.1} s where its earlier runs give about {:.1} s (score {:.1})",
                self.value, self.expected, self.score
            ),
            _ => format!(
                "the load read {:.0} values where its earlier runs give about {:.0} (score {:.1})",
                self.value, self.expected, self.score
            ),
        }
    }
}

/// A signal's value for a run, when it has one.
type Signal = fn(&LoadRun) -> Option<f64>;

fn duration(run: &LoadRun) -> Option<f64> {
    let finished = run.finished_at?;
    Some((finished - run.started_at).num_milliseconds().max(0) as f64 / 1000.0)
}

/// Runs per season for runs `spacing` seconds apart: a day's runs below a day, a week's below a week, else one;
/// one too for runs less than a minute apart (asked for by hand, not by a schedule).
pub fn season(spacing: f64) -> usize {
    const DAY: f64 = 86_400.0;
    if !(spacing.is_finite() && spacing >= 60.0) {
        return 1;
    }
    let runs = if spacing < DAY {
        DAY / spacing
    } else if spacing < 7.0 * DAY {
        7.0 * DAY / spacing
    } else {
        1.0
    };
    (runs.round() as usize).clamp(1, 1_440)
}

/// The score of `current` after `history` (oldest first) with `season` runs per season, and the value expected;
/// `None` while there are too few runs to say. Both on `ln(1 + x)`, with a floor of a tenth of the level, so that
/// a run 10 % slower is never an anomaly.
pub fn score(history: &[f64], current: f64, season: usize) -> Option<(f64, f64)> {
    if history.len() < 2 * season + 8 {
        return None;
    }
    let mut detector = Seasonal::new(season, 4, usize::from(season >= 24), (2 * season).max(16)).with_min_scale(0.1);
    for value in history {
        detector.score(value.max(0.0).ln_1p());
    }
    let score = detector.score(current.max(0.0).ln_1p());
    let expected = detector.last_expected()?.exp_m1();
    Some((score, expected))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Judges run `run_id` of load `name` (finished) against the load's earlier succeeded runs, records what it finds
/// in the anomalies table, and returns the unusual signals.
pub async fn check(store: &Store, name: &str, run_id: i64) -> Result<Vec<Finding>, airq_core::store::Error> {
    let mut runs: Vec<LoadRun> = store
        .runs(Some(name), HISTORY_RUNS)
        .await?
        .into_iter()
        .filter(|r| r.status == "succeeded")
        .collect();
    runs.reverse();
    let Some(position) = runs.iter().position(|r| r.id == run_id) else {
        return Ok(Vec::new());
    };
    let current = &runs[position];
    let earlier = &runs[..position];
    let spacing = median(
        earlier
            .windows(2)
            .map(|w| (w[1].started_at - w[0].started_at).num_seconds() as f64)
            .collect(),
    );
    let season = season(spacing);
    let signals: [(&'static str, Signal); 2] = [
        ("load_duration_seconds", duration),
        ("load_values_read", |r| Some(r.rows_read as f64)),
    ];
    let now = Utc::now();
    let mut findings = Vec::new();
    for (signal, value_of) in signals {
        let history: Vec<f64> = earlier.iter().filter_map(value_of).collect();
        let Some(value) = value_of(current) else { continue };
        let Some((score, expected)) = score(&history, value, season) else {
            continue;
        };
        metrics::gauge!("airq_etl_load_anomaly_score", "load" => name.to_owned(), "signal" => signal).set(score);
        if score > THRESHOLD {
            let finding = Finding {
                signal,
                value,
                expected,
                score,
            };
            store.anomaly_report(&report(name, &finding, now)).await?;
            tracing::warn!(
                load = name,
                run = run_id,
                signal,
                value,
                expected,
                score,
                "{}",
                finding.describe()
            );
            findings.push(finding);
        } else {
            store.anomaly_close("etl", signal, name, "", now).await?;
        }
    }
    Ok(findings)
}

fn report(name: &str, finding: &Finding, now: DateTime<Utc>) -> AnomalyReport {
    AnomalyReport {
        component: "etl".to_owned(),
        signal: finding.signal.to_owned(),
        subject: name.to_owned(),
        reporter: String::new(),
        opened_at: now,
        value: finding.value,
        expected: Some(finding.expected),
        score: finding.score,
        peak_score: finding.score,
        detail: finding.describe(),
        expires_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seasons_follow_the_schedule() {
        assert_eq!(season(3_600.0), 24);
        assert_eq!(season(300.0), 288);
        assert_eq!(season(86_400.0), 7);
        assert_eq!(season(30.0 * 86_400.0), 1);
        assert_eq!(season(f64::NAN), 1);
        assert_eq!(season(2.0), 1);
    }

    #[test]
    fn a_slow_run_scores_high_and_a_usual_one_does_not() {
        // Hourly runs for four days: 40 s at night, 60 s in the day, with a little jitter.
        let history: Vec<f64> = (0..96)
            .map(|i| if (8..20).contains(&(i % 24)) { 60.0 } else { 40.0 } + f64::from(i % 4))
            .collect();
        let (usual, expected) = score(&history, 41.0, 24).unwrap();
        assert!(usual < THRESHOLD, "{usual}");
        assert!((expected - 41.0).abs() < 3.0, "{expected}");
        let (slow, _) = score(&history, 400.0, 24).unwrap();
        assert!(slow > THRESHOLD, "{slow}");
        assert!(score(&history[..40], 40.0, 24).is_none(), "too few runs");
    }
}

//! Following live signals (a route's request rate, error ratio, latency…): one [`Seasonal`] detector per signal,
//! fed one sample per interval, and the anomalies currently open. An anomaly opens when a sample scores above the
//! threshold and closes after `clear_after` samples in a row below it, so that a flapping score is one anomaly.

use std::collections::BTreeMap;

use crate::detector::{Detector, Seasonal};

/// How the signals are followed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Samples per season (a day of one-minute samples: 1,440).
    pub season: usize,
    /// Past seasons the expected value is taken from.
    pub seasons: usize,
    /// The score above which a sample is anomalous (the NAB evaluation's best standard-profile threshold is 5.5).
    pub threshold: f64,
    /// Samples in a row below the threshold that close an anomaly.
    pub clear_after: usize,
}

impl Settings {
    /// Daily seasonality over a week, for samples taken every `interval_seconds`.
    pub fn daily(interval_seconds: f64, threshold: f64) -> Self {
        let season = (86_400.0 / interval_seconds.max(1e-3)).round().max(2.0) as usize;
        Self {
            season,
            seasons: 7,
            threshold,
            clear_after: 5,
        }
    }
}

/// A signal currently out of its usual band.
#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    /// What is measured, e.g. `error_ratio`.
    pub signal: String,
    /// Which instance of it, e.g. a route id.
    pub subject: String,
    /// When it opened (seconds since the epoch).
    pub since: i64,
    /// The last sample and the value expected for it.
    pub value: f64,
    pub expected: Option<f64>,
    /// The last sample's score and the highest since it opened.
    pub score: f64,
    pub peak_score: f64,
}

struct Followed {
    detector: Seasonal,
    score: f64,
    open: Option<Anomaly>,
    below: usize,
}

/// The signals followed and their open anomalies.
pub struct Watcher {
    settings: Settings,
    followed: BTreeMap<(String, String), Followed>,
}

impl Watcher {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            followed: BTreeMap::new(),
        }
    }

    /// Feeds one sample of `signal` for `subject` taken at `now`; returns its score.
    pub fn observe(&mut self, signal: &str, subject: &str, value: f64, now: i64) -> f64 {
        let settings = self.settings;
        let followed = self
            .followed
            .entry((signal.to_owned(), subject.to_owned()))
            .or_insert_with(|| Followed {
                detector: Seasonal::new(settings.season, settings.seasons, 2, settings.season.min(1_440)),
                score: 0.0,
                open: None,
                below: 0,
            });
        let score = followed.detector.score(value);
        let expected = followed.detector.last_expected();
        followed.score = score;
        if score > settings.threshold {
            followed.below = 0;
            let anomaly = followed.open.get_or_insert_with(|| Anomaly {
                signal: signal.to_owned(),
                subject: subject.to_owned(),
                since: now,
                value,
                expected,
                score,
                peak_score: score,
            });
            anomaly.peak_score = anomaly.peak_score.max(score);
        } else if followed.open.is_some() {
            followed.below += 1;
            if followed.below >= settings.clear_after {
                followed.open = None;
                followed.below = 0;
            }
        }
        if let Some(anomaly) = followed.open.as_mut() {
            anomaly.value = value;
            anomaly.expected = expected;
            anomaly.score = score;
        }
        score
    }

    /// The anomalies open now, by signal and subject.
    pub fn open(&self) -> Vec<Anomaly> {
        self.followed.values().filter_map(|f| f.open.clone()).collect()
    }

    /// Every signal followed with its last score and whether it is anomalous.
    pub fn scores(&self) -> Vec<(&str, &str, f64, bool)> {
        self.followed
            .iter()
            .map(|((signal, subject), f)| (signal.as_str(), subject.as_str(), f.score, f.open.is_some()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            season: 24,
            seasons: 3,
            threshold: 5.5,
            clear_after: 3,
        }
    }

    #[test]
    fn a_burst_of_errors_opens_one_anomaly_that_closes_when_the_ratio_returns() {
        let mut watcher = Watcher::new(settings());
        let mut t = 0;
        let mut sample = |watcher: &mut Watcher, value: f64| {
            t += 60;
            watcher.observe("error_ratio", "front", value, t)
        };
        for i in 0..100 {
            sample(&mut watcher, 0.01 + f64::from(i % 3) * 0.002);
        }
        assert!(watcher.open().is_empty(), "{:?}", watcher.open());
        for _ in 0..4 {
            sample(&mut watcher, 0.6);
        }
        let open = watcher.open();
        assert_eq!(open.len(), 1, "{open:?}");
        assert_eq!(
            (open[0].signal.as_str(), open[0].subject.as_str()),
            ("error_ratio", "front")
        );
        assert_eq!(open[0].since, 101 * 60);
        assert!(open[0].expected.is_some_and(|e| e < 0.02), "{open:?}");
        for _ in 0..2 {
            sample(&mut watcher, 0.01);
        }
        assert_eq!(watcher.open().len(), 1, "still open until three quiet samples");
        sample(&mut watcher, 0.012);
        assert!(watcher.open().is_empty());
        assert_eq!(watcher.scores().len(), 1);
    }

    #[test]
    fn daily_settings_count_samples_per_day() {
        assert_eq!(Settings::daily(60.0, 5.5).season, 1_440);
        assert_eq!(Settings::daily(300.0, 5.5).season, 288);
    }
}

//! Following live signals (a route's request rate, error ratio, latency…): one [`Seasonal`] detector per signal,
//! fed one sample per interval, and the anomalies currently open. An anomaly opens when a sample scores above the
//! threshold and closes after `clear_after` samples in a row below it, so that a flapping score is one anomaly.
//! Anomalies that closed are kept until [`Watcher::take_closed`] hands them to whoever records them.

use std::collections::BTreeMap;

use crate::detector::{Detector, Seasonal};

/// How the signals are followed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Samples per season (a day of one-minute samples: 1,440).
    pub season: usize,
    /// Past seasons the expected value is taken from.
    pub seasons: usize,
    /// The score above which a sample is anomalous (5.5: chosen on one NAB category, held out on the other).
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

/// A signal out of its usual band.
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
    /// When it closed (seconds since the epoch), for an anomaly that is over.
    pub closed: Option<i64>,
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
    closed: Vec<Anomaly>,
}

impl Watcher {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            followed: BTreeMap::new(),
            closed: Vec::new(),
        }
    }

    fn followed(&mut self, signal: &str, subject: &str) -> &mut Followed {
        let settings = self.settings;
        self.followed
            .entry((signal.to_owned(), subject.to_owned()))
            .or_insert_with(|| Followed {
                detector: Seasonal::new(settings.season, settings.seasons, 2, settings.season.min(1_440)),
                score: 0.0,
                open: None,
                below: 0,
            })
    }

    /// A sample of `signal` for `subject` that is missing (no requests to time, no truth yet): it keeps its place
    /// in the season and counts as quiet for an open anomaly.
    pub fn skip(&mut self, signal: &str, subject: &str, now: i64) {
        let clear_after = self.settings.clear_after;
        let followed = self.followed(signal, subject);
        followed.detector.skip();
        followed.score = 0.0;
        let closed = Self::quiet(followed, clear_after, now);
        self.closed.extend(closed);
    }

    /// Counts a quiet sample against an open anomaly; returns the anomaly if that closed it.
    fn quiet(followed: &mut Followed, clear_after: usize, now: i64) -> Option<Anomaly> {
        followed.open.as_ref()?;
        followed.below += 1;
        if followed.below < clear_after {
            return None;
        }
        followed.below = 0;
        followed.open.take().map(|mut anomaly| {
            anomaly.closed = Some(now);
            anomaly
        })
    }

    /// Feeds one sample of `signal` for `subject` taken at `now`; returns its score.
    pub fn observe(&mut self, signal: &str, subject: &str, value: f64, now: i64) -> f64 {
        let settings = self.settings;
        let followed = self.followed(signal, subject);
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
                closed: None,
            });
            anomaly.peak_score = anomaly.peak_score.max(score);
        } else if let Some(closed) = Self::quiet(followed, settings.clear_after, now) {
            self.closed.push(closed);
            return score;
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

    /// The anomalies that closed since the last call, oldest first.
    pub fn take_closed(&mut self) -> Vec<Anomaly> {
        std::mem::take(&mut self.closed)
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
        let closed = watcher.take_closed();
        assert_eq!(closed.len(), 1, "{closed:?}");
        assert_eq!((closed[0].since, closed[0].closed), (101 * 60, Some(107 * 60)));
        assert!(closed[0].peak_score > 5.5);
        assert!(watcher.take_closed().is_empty(), "handed over once");
    }

    #[test]
    fn missing_samples_count_as_quiet() {
        let mut watcher = Watcher::new(settings());
        for i in 0..100 {
            watcher.observe("abs_error", "pm25/Dongsi", 10.0 + f64::from(i % 5), i64::from(i));
        }
        watcher.observe("abs_error", "pm25/Dongsi", 500.0, 100);
        assert_eq!(watcher.open().len(), 1);
        for t in 101..104 {
            watcher.skip("abs_error", "pm25/Dongsi", t);
        }
        assert!(watcher.open().is_empty());
        assert_eq!(watcher.take_closed()[0].closed, Some(103));
    }

    #[test]
    fn daily_settings_count_samples_per_day() {
        assert_eq!(Settings::daily(60.0, 5.5).season, 1_440);
        assert_eq!(Settings::daily(300.0, 5.5).season, 288);
    }
}

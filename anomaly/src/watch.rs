//! Following live signals (a route's request rate, error ratio, latency…): one detector per signal (a 1-day
//! [`RollingZ`] or a [`Seasonal`] one, see [`Method`]), fed one sample per interval, and the anomalies currently open. An anomaly opens when a sample scores above the
//! threshold and closes after `clear_after` samples in a row below it, so that a flapping score is one anomaly.
//! Anomalies that closed are kept until [`Watcher::take_closed`] hands them to whoever records them.

use std::collections::BTreeMap;

use crate::detector::{Detector, RollingZ, Seasonal};

/// The detector each signal gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The z-score against the mean and spread of the last `window` samples. With a day's window it is the
    /// detector that won the held-out NAB evaluation on the standard and low-false-positive profiles (docs/benchmarks.md),
    /// the gateway's default.
    Rolling { window: usize },
    /// The median of the same phase over the past `seasons` seasons of `season` samples (fewer missed windows held
    /// out, about twice the false alarms).
    Seasonal { season: usize, seasons: usize },
}

/// How the signals are followed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub method: Method,
    /// The score above which a sample is anomalous (chosen on one NAB category, held out on the other: 5.25 for
    /// the 1-day rolling z-score, 5.5 for the daily seasonal detector).
    pub threshold: f64,
    /// Samples in a row below the threshold that close an anomaly.
    pub clear_after: usize,
}

impl Settings {
    /// Daily seasonality over a week, for samples taken every `interval_seconds`.
    pub fn daily(interval_seconds: f64, threshold: f64) -> Self {
        Self {
            method: Method::Seasonal {
                season: per_day(interval_seconds),
                seasons: 7,
            },
            threshold,
            clear_after: 5,
        }
    }

    /// A rolling z-score over the last day, for samples taken every `interval_seconds`.
    pub fn rolling_day(interval_seconds: f64, threshold: f64) -> Self {
        Self {
            method: Method::Rolling {
                window: per_day(interval_seconds),
            },
            threshold,
            clear_after: 5,
        }
    }
}

fn per_day(interval_seconds: f64) -> usize {
    (86_400.0 / interval_seconds.max(1e-3)).round().max(2.0) as usize
}

/// One signal's detector.
enum Tracker {
    Rolling(RollingZ),
    Seasonal(Seasonal),
}

impl Tracker {
    fn new(method: Method) -> Self {
        match method {
            Method::Rolling { window } => Self::Rolling(RollingZ::new(window)),
            Method::Seasonal { season, seasons } => {
                Self::Seasonal(Seasonal::new(season, seasons, 2, season.min(1_440)))
            }
        }
    }

    fn score(&mut self, value: f64) -> f64 {
        match self {
            Self::Rolling(d) => d.score(value),
            Self::Seasonal(d) => d.score(value),
        }
    }

    fn skip(&mut self) {
        match self {
            Self::Rolling(d) => d.skip(),
            Self::Seasonal(d) => d.skip(),
        }
    }

    fn last_expected(&self) -> Option<f64> {
        match self {
            Self::Rolling(d) => d.last_expected(),
            Self::Seasonal(d) => d.last_expected(),
        }
    }

    /// For a rolling detector, the band (mean, spread) the last value was scored against and the window's length:
    /// an episode is judged against the band that was usual when it opened, for at most a window. (A rolling window
    /// learns the new level within minutes and would close an episode whose cause is still there; the seasonal
    /// detector's median of past days does not.)
    fn band(&self) -> Option<((f64, f64), usize)> {
        match self {
            Self::Rolling(d) => d.last_band().map(|band| (band, d.window())),
            Self::Seasonal(_) => None,
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
    detector: Tracker,
    score: f64,
    open: Option<Anomaly>,
    below: usize,
    /// The usual band when the open episode began and the samples it may last judged against it (rolling only).
    band: Option<((f64, f64), usize)>,
    /// Samples since the open episode began.
    lasted: usize,
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
                detector: Tracker::new(settings.method),
                score: 0.0,
                open: None,
                below: 0,
                band: None,
                lasted: 0,
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
        Self::close(followed, now)
    }

    fn close(followed: &mut Followed, now: i64) -> Option<Anomaly> {
        followed.below = 0;
        followed.band = None;
        followed.lasted = 0;
        followed.open.take().map(|mut anomaly| {
            anomaly.closed = Some(now);
            anomaly
        })
    }

    /// Feeds one sample of `signal` for `subject` taken at `now`; returns its score.
    pub fn observe(&mut self, signal: &str, subject: &str, value: f64, now: i64) -> f64 {
        let settings = self.settings;
        let followed = self.followed(signal, subject);
        let raw = followed.detector.score(value);
        if followed.open.is_some() {
            followed.lasted += 1;
            if followed.band.is_some_and(|(_, most)| followed.lasted >= most) {
                // Out of the old band for a whole window: that is the usual level now.
                followed.score = raw;
                let closed = Self::close(followed, now);
                self.closed.extend(closed);
                return raw;
            }
        }
        let (score, expected) = match followed.band {
            Some(((mean, spread), _)) => ((value - mean).abs() / spread, Some(mean)),
            None => (raw, followed.detector.last_expected()),
        };
        followed.score = score;
        if score > settings.threshold {
            followed.below = 0;
            if followed.open.is_none() {
                followed.band = followed.detector.band();
            }
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

    /// Both detectors, each with a day of 24 samples.
    fn every_method() -> [Settings; 2] {
        [
            Method::Rolling { window: 24 },
            Method::Seasonal { season: 24, seasons: 3 },
        ]
        .map(|method| Settings {
            method,
            threshold: 5.5,
            clear_after: 3,
        })
    }

    #[test]
    fn a_burst_of_errors_opens_one_anomaly_that_closes_when_the_ratio_returns() {
        for settings in every_method() {
            a_burst_of_errors(settings);
        }
    }

    fn a_burst_of_errors(settings: Settings) {
        let mut watcher = Watcher::new(settings);
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
        for settings in every_method() {
            missing_samples(settings);
        }
    }

    fn missing_samples(settings: Settings) {
        let mut watcher = Watcher::new(settings);
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
    fn a_lasting_shift_stays_one_episode_for_a_window_with_the_rolling_detector() {
        let mut watcher = Watcher::new(every_method()[0]);
        for t in 0..100 {
            watcher.observe("error_ratio", "front", 0.01 + f64::from(t % 3) * 0.002, i64::from(t));
        }
        // The upstream fails 60 % of requests from t = 100 on: the window learns the new level within a few
        // samples, but the episode is judged against the band usual before it.
        for t in 100..124 {
            watcher.observe("error_ratio", "front", 0.6, t);
            let open = watcher.open();
            assert_eq!(open.len(), 1, "t = {t}: {open:?}");
            assert!(
                open[0].score > 5.5 && open[0].expected.is_some_and(|e| e < 0.02),
                "{open:?}"
            );
        }
        assert!(watcher.take_closed().is_empty());
        // A whole window later it is the usual level: the episode closes, and no other opens.
        for t in 124..140 {
            watcher.observe("error_ratio", "front", 0.6, t);
        }
        assert!(watcher.open().is_empty(), "{:?}", watcher.open());
        let closed = watcher.take_closed();
        assert_eq!(closed.len(), 1, "{closed:?}");
        assert_eq!((closed[0].since, closed[0].closed), (100, Some(124)));
    }

    #[test]
    fn daily_settings_count_samples_per_day() {
        assert_eq!(
            Settings::daily(60.0, 5.5).method,
            Method::Seasonal {
                season: 1_440,
                seasons: 7
            }
        );
        assert_eq!(
            Settings::rolling_day(300.0, 5.25).method,
            Method::Rolling { window: 288 }
        );
    }
}

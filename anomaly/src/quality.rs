//! Quality marks for hourly measurement series: a sensor *stuck* (the same value hour after hour, above the
//! series' floor) and a *jump* (a spike: a value far outside the band the series' recent days give for that hour,
//! by the [`Seasonal`] detector the platform's metrics are followed with, after which the series is back in its
//! band within a few hours). Values are judged on `ln(offset + value)`: relative changes count at ordinary levels,
//! absolute ones near zero, so 50 → 500 can be a jump and 2 → 10 is not. A change of the air itself — a clean
//! wind after a week of smog — lasts, and is not a jump.
//!
//! The marks of an hour depend only on the [`Settings::memory_hours`] hours before it, itself and the
//! [`Settings::spike_hours`] after it, missing hours included. So a load can recompute the marks of the hours it
//! touched from the stored series alone, and any order of loads and re-loads ends with the marks a single full load
//! gives.

use std::collections::VecDeque;

use crate::detector::{Detector, Seasonal};

/// How series are checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// The same value this many hours in a row (without a gap) marks it stuck, from the last of those hours on.
    pub stuck_hours: usize,
    /// Hours whose lowest value is the series' floor: an instrument reporting its detection limit all day (SO2
    /// at 2 µg/m³ on a clean day) is not stuck, unless it has reported nothing else for all these hours.
    pub floor_hours: usize,
    /// Days of the same hour the expected value is taken from.
    pub days: usize,
    /// The robust z-score (of `ln(offset + value)`) above which a value is out of band.
    pub jump_score: f64,
    /// A value out of band is a jump if the series is back in band (a score below half `jump_score`) within this
    /// many hours.
    pub spike_hours: usize,
    /// Below about this level (in the stored unit, µg/m³) differences count in absolute terms, above it in
    /// relative ones.
    pub offset: f64,
    /// The smallest scale of the residuals: 0.1 is about a tenth of the level, so that after a calm stretch a
    /// jump must still be about `exp(jump_score × min_scale)` times the expected value.
    pub min_scale: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            stuck_hours: 24,
            floor_hours: 14 * 24,
            days: 7,
            jump_score: 12.0,
            spike_hours: 3,
            offset: 10.0,
            min_scale: 0.1,
        }
    }
}

impl Settings {
    fn detector(&self) -> Seasonal {
        // A day of hours per season, an hour either side, a week of residuals for the scale.
        Seasonal::new(24, self.days, 1, 24 * 7).with_min_scale(self.min_scale)
    }

    /// Hours before an hour that its marks depend on.
    pub fn memory_hours(&self) -> usize {
        self.detector().memory().max(self.floor_hours).max(self.stuck_hours)
    }
}

/// The marks of one hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marks {
    pub stuck: bool,
    pub jump: bool,
}

/// What the checker says of an hour from that hour and the ones before it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Step {
    /// Whether the hour had a value.
    pub present: bool,
    pub stuck: bool,
    /// How far out of its band the value is (0 without a value).
    pub score: f64,
}

/// Checks an hourly series hour by hour, looking back only; [`check_hourly`] adds the look ahead that tells a
/// spike from a lasting change.
#[derive(Debug, Clone)]
pub struct Checker {
    settings: Settings,
    detector: Seasonal,
    last: Option<f64>,
    /// Hours in a row with the value `last`, at most `floor_hours`.
    run: usize,
    /// Hour count, and the candidates for the floor: (hour, value) with values rising from the front, over the
    /// last `floor_hours` hours (a sliding minimum).
    hour: usize,
    lows: VecDeque<(usize, f64)>,
}

impl Checker {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            detector: settings.detector(),
            last: None,
            run: 0,
            hour: 0,
            lows: VecDeque::new(),
        }
    }

    /// The lowest value of the last `floor_hours` hours, this one included.
    fn floor(&mut self, value: Option<f64>) -> f64 {
        self.hour += 1;
        let window = self.settings.floor_hours.max(1);
        while self.lows.front().is_some_and(|(h, _)| h + window <= self.hour) {
            self.lows.pop_front();
        }
        if let Some(value) = value {
            while self.lows.back().is_some_and(|(_, v)| *v >= value) {
                self.lows.pop_back();
            }
            self.lows.push_back((self.hour, value));
        }
        self.lows.front().map_or(f64::INFINITY, |(_, v)| *v)
    }

    /// The next hour's value (`None` when it is missing).
    pub fn step(&mut self, value: Option<f64>) -> Step {
        let value = value.filter(|v| v.is_finite());
        let floor = self.floor(value);
        let Some(value) = value else {
            self.detector.skip();
            self.last = None;
            self.run = 0;
            return Step::default();
        };
        // Counted to a bound only, so that the count depends on the last `floor_hours` hours alone.
        self.run = if self.last == Some(value) {
            (self.run + 1).min(self.settings.floor_hours.max(self.settings.stuck_hours))
        } else {
            1
        };
        self.last = Some(value);
        let stuck = self.run >= self.settings.stuck_hours && (value > floor || self.run >= self.settings.floor_hours);
        Step {
            present: true,
            stuck,
            score: self.detector.score((self.settings.offset + value.max(0.0)).ln()),
        }
    }
}

/// The marks of every hour of `values` (one per hour, `None` where missing), starting from nothing. The last
/// `spike_hours` hours cannot be told jumps yet: what follows them is not known.
pub fn check_hourly(values: &[Option<f64>], settings: Settings) -> Vec<Marks> {
    let mut checker = Checker::new(settings);
    let steps: Vec<Step> = values.iter().map(|v| checker.step(*v)).collect();
    let back = settings.jump_score / 2.0;
    steps
        .iter()
        .enumerate()
        .map(|(t, step)| Marks {
            stuck: step.stuck,
            jump: step.score > settings.jump_score
                && steps
                    .iter()
                    .skip(t + 1)
                    .take(settings.spike_hours)
                    .any(|later| later.present && later.score < back),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three weeks of an hourly pollutant with a daily rhythm and some irregular noise.
    fn hourly(days: usize) -> Vec<Option<f64>> {
        (0..days * 24)
            .map(|i| {
                let phase = (i % 24) as f64 / 24.0 * std::f64::consts::TAU;
                let noise = ((i * 7919) % 17) as f64 - 8.0;
                Some(60.0 + 25.0 * phase.sin() + noise)
            })
            .collect()
    }

    fn marked(marks: &[Marks], which: fn(&Marks) -> bool) -> Vec<usize> {
        marks
            .iter()
            .enumerate()
            .filter(|(_, m)| which(m))
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn an_ordinary_series_has_no_marks() {
        let marks = check_hourly(&hourly(21), Settings::default());
        assert!(marked(&marks, |m| m.stuck || m.jump).is_empty());
    }

    #[test]
    fn a_stuck_sensor_is_marked_from_its_24th_hour() {
        let mut values = hourly(21);
        for v in &mut values[300..340] {
            *v = Some(41.0);
        }
        let marks = check_hourly(&values, Settings::default());
        assert_eq!(marked(&marks, |m| m.stuck), (323..340).collect::<Vec<_>>());
        // A gap breaks the run.
        values[310] = None;
        let marks = check_hourly(&values, Settings::default());
        assert_eq!(marked(&marks, |m| m.stuck), (334..340).collect::<Vec<_>>());
    }

    #[test]
    fn a_day_at_the_floor_is_not_stuck_but_two_weeks_of_nothing_else_is() {
        let mut values = hourly(21);
        // The lowest value of the series, for a day and a half.
        for v in &mut values[300..336] {
            *v = Some(2.0);
        }
        let marks = check_hourly(&values, Settings::default());
        assert!(marked(&marks, |m| m.stuck).is_empty());
        // Nothing but the floor value for more than the floor's two weeks.
        let mut values = hourly(7);
        values.extend(std::iter::repeat_n(Some(2.0), 15 * 24));
        let marks = check_hourly(&values, Settings::default());
        let first = 7 * 24 + 14 * 24 - 1;
        assert_eq!(marked(&marks, |m| m.stuck), (first..values.len()).collect::<Vec<_>>());
    }

    #[test]
    fn small_changes_near_zero_are_not_jumps() {
        // A clean week at 2 µg/m³ with a few hours at 10 and 15.
        let mut values: Vec<Option<f64>> = (0..21 * 24).map(|i| Some(2.0 + f64::from(i % 2 == 0))).collect();
        values[400] = Some(10.0);
        values[450] = Some(15.0);
        let marks = check_hourly(&values, Settings::default());
        assert!(marked(&marks, |m| m.jump).is_empty());
        values[470] = Some(400.0);
        let marks = check_hourly(&values, Settings::default());
        assert_eq!(marked(&marks, |m| m.jump), vec![470]);
    }

    #[test]
    fn a_lasting_change_is_not_a_jump() {
        // Ten days at the floor, then a clean wind: the level rises and stays.
        let mut values: Vec<Option<f64>> = (0..10 * 24).map(|i| Some(2.0 + f64::from(i % 3 == 0))).collect();
        values.extend((0..48).map(|i| Some(40.0 + f64::from(i % 5))));
        let marks = check_hourly(&values, Settings::default());
        assert!(marked(&marks, |m| m.jump).is_empty());
        // A rise lasting two hours only is a spike: both hours are jumps.
        values.truncate(10 * 24);
        values.extend([Some(250.0), Some(300.0)]);
        values.extend((0..24).map(|i| Some(2.0 + f64::from(i % 3 == 0))));
        let marks = check_hourly(&values, Settings::default());
        assert_eq!(marked(&marks, |m| m.jump), vec![240, 241]);
    }

    #[test]
    fn the_first_values_after_a_calm_stretch_are_not_jumps() {
        let mut values = hourly(21);
        for v in &mut values[300..330] {
            *v = Some(41.0);
        }
        let marks = check_hourly(&values, Settings::default());
        assert!(marked(&marks, |m| m.jump).is_empty());
    }

    #[test]
    fn a_jump_is_marked_and_the_hours_around_it_are_not() {
        let mut values = hourly(21);
        values[400] = Some(2_000.0);
        let marks = check_hourly(&values, Settings::default());
        assert_eq!(marked(&marks, |m| m.jump), vec![400]);
    }

    #[test]
    fn marks_depend_only_on_the_memory_before_them() {
        let mut values = hourly(30);
        values[500] = Some(1_500.0);
        // Between two of the gaps below (615 and 656).
        for v in &mut values[617..656] {
            *v = Some(33.0);
        }
        for i in (0..values.len()).step_by(41) {
            values[i] = None;
        }
        let settings = Settings::default();
        let full = check_hourly(&values, settings);
        let memory = settings.memory_hours();
        // As a load of part of the range does it: from `memory` hours before the first hour it needs, to
        // `spike_hours` after the last.
        let ahead = settings.spike_hours;
        for (first, last) in [(memory, 700), (450, 520), (480, 719), (610, 650)] {
            let from = first - memory;
            let to = (last + ahead + 1).min(values.len());
            let part = check_hourly(&values[from..to], settings);
            assert_eq!(
                &part[memory..=last - from],
                &full[first..=last],
                "hours {first} to {last}"
            );
        }
        assert!(full[500].jump && full[645].stuck && !full[630].stuck);
    }
}

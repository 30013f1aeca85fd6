//! Feature vectors and target trajectories. A model forecasts from an *origin* hour `t` (the newest hour it may
//! look at) the hours `t+1 … t+H`; it sees the features at `t` and learns the trajectory after it.
//!
//! Features, in order: the target at each lag (lag 1 is the hour `t`, lag 24 the hour `t-23`), the mean of the last
//! 24 hours; with `calendar`, hour of day, day of week and day of year of `t+1` (UTC) as sine and cosine; with
//! `weather`, temperature, pressure, dew point, dew-point depression, rain, wind speed, the wind's east and north
//! components, and the pressure change over 24 hours, all at `t`. With `logTransform` target values are
//! `ln(1 + x)`.
//!
//! Missing values: an input missing at its hour is taken from the newest of the [`FILL_HOURS`] hours before it
//! (stated here, counted nowhere else); if that fails too, the origin has no feature vector and the model answers
//! with its climatology fallback, which the evaluation counts and reports. Targets are never filled: a missing truth
//! is left out of training and of every score.

use chrono::{DateTime, Datelike, Timelike};

use crate::data::{HOUR, StationSeries};

/// How many hours back a missing input may be taken from.
pub const FILL_HOURS: usize = 3;

const TEMP: usize = 0;
const PRES: usize = 1;
const DEWP: usize = 2;
const RAIN: usize = 3;
const WSPM: usize = 4;
const WD: usize = 5;

/// The weather inputs, in the order of a station's `weather` series.
pub const WEATHER_INPUTS: [&str; 6] = ["temp", "pres", "dewp", "rain", "wspm", "wd"];

/// The weather features, in order, with the inputs each needs.
const WEATHER_FEATURES: [(&str, &[usize]); 9] = [
    ("temp", &[TEMP]),
    ("pres", &[PRES]),
    ("dewp", &[DEWP]),
    ("dewpDepression", &[TEMP, DEWP]),
    ("rain", &[RAIN]),
    ("wspm", &[WSPM]),
    ("windEast", &[WSPM, WD]),
    ("windNorth", &[WSPM, WD]),
    ("pres24hChange", &[PRES]),
];

/// Turns a station's series into feature vectors and targets.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Featurizer {
    pub lags: Vec<u32>,
    pub calendar: bool,
    pub weather: bool,
    /// Weather inputs ([`WEATHER_INPUTS`]) the spec asked for that the training data did not have: the features
    /// that need them are left out (all of them, with `weather` false, when none was there). Empty for a model
    /// trained with every input, as for those stored before this was recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weather_absent: Vec<String>,
    pub log_transform: bool,
    pub horizon: usize,
}

impl Featurizer {
    /// The value of `series` at `i`, or the newest of the [`FILL_HOURS`] before it.
    pub fn recent(series: &[f32], i: usize) -> Option<f32> {
        (0..=FILL_HOURS)
            .take_while(|back| *back <= i)
            .filter_map(|back| series.get(i - back).copied())
            .find(|v| !v.is_nan())
    }

    /// Into the space the model works in.
    pub fn forward(&self, value: f32) -> f32 {
        if self.log_transform {
            value.max(0.0).ln_1p()
        } else {
            value
        }
    }

    /// Back to concentrations.
    pub fn inverse(&self, value: f32) -> f32 {
        if self.log_transform {
            value.exp_m1().max(0.0)
        } else {
            value
        }
    }

    /// The names of the features, in order.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lags.iter().map(|l| format!("lag{l}")).collect();
        names.push("mean24".to_owned());
        if self.calendar {
            for n in ["hour", "weekday", "yearday"] {
                names.push(format!("{n}.sin"));
                names.push(format!("{n}.cos"));
            }
        }
        names.extend(self.weather_features().map(|(name, _)| name.to_owned()));
        names
    }

    pub fn dim(&self) -> usize {
        self.lags.len() + 1 + if self.calendar { 6 } else { 0 } + self.weather_features().count()
    }

    /// The weather features used: every one whose inputs the training data had.
    fn weather_features(&self) -> impl Iterator<Item = (&'static str, &'static [usize])> + '_ {
        WEATHER_FEATURES.into_iter().filter(move |(_, inputs)| {
            self.weather
                && inputs
                    .iter()
                    .all(|k| !self.weather_absent.iter().any(|a| a == WEATHER_INPUTS[*k]))
        })
    }

    /// Appends the features at `origin` (whose time is `origin_time`) to `out`; false, with `out` unchanged, when an
    /// input is missing.
    pub fn features(&self, s: &StationSeries, origin: usize, origin_time: i64, out: &mut Vec<f32>) -> bool {
        let start = out.len();
        let ok = self.push_features(s, origin, origin_time, out);
        if !ok {
            out.truncate(start);
        }
        ok
    }

    fn push_features(&self, s: &StationSeries, origin: usize, origin_time: i64, out: &mut Vec<f32>) -> bool {
        for lag in &self.lags {
            let Some(i) = (origin + 1).checked_sub(*lag as usize) else {
                return false;
            };
            match Self::recent(&s.target, i) {
                Some(v) => out.push(self.forward(v)),
                None => return false,
            }
        }
        let first = origin.saturating_sub(23);
        let window: Vec<f32> = s.target[first..=origin.min(s.target.len().saturating_sub(1))]
            .iter()
            .filter(|v| !v.is_nan())
            .map(|v| self.forward(*v))
            .collect();
        if window.len() < 12 {
            return false;
        }
        out.push(window.iter().sum::<f32>() / window.len() as f32);
        if self.calendar {
            let Some(next) = DateTime::from_timestamp(origin_time + HOUR, 0) else {
                return false;
            };
            let tau = std::f32::consts::TAU;
            let cyc = |x: f32, period: f32| [(tau * x / period).sin(), (tau * x / period).cos()];
            out.extend(cyc(next.hour() as f32, 24.0));
            out.extend(cyc(next.weekday().num_days_from_monday() as f32, 7.0));
            out.extend(cyc(next.ordinal0() as f32, 365.25));
        }
        if self.weather {
            let at = |k: usize, i: usize| Self::recent(&s.weather[k], i);
            // The inputs at `origin` (and the pressure a day before) that the features used need.
            let mut input = [0f32; 6];
            let mut needed = [false; 6];
            for (_, inputs) in self.weather_features() {
                for k in inputs {
                    needed[*k] = true;
                }
            }
            for k in 0..6 {
                if needed[k] {
                    match at(k, origin) {
                        Some(v) => input[k] = v,
                        None => return false,
                    }
                }
            }
            let pres_before = if needed[PRES] {
                match origin.checked_sub(24).and_then(|i| at(PRES, i)) {
                    Some(v) => v,
                    None => return false,
                }
            } else {
                0.0
            };
            // Wind direction is where it blows from; the components say where the air goes.
            let radians = input[WD].to_radians();
            for (name, _) in self.weather_features() {
                out.push(match name {
                    "temp" => input[TEMP],
                    "pres" => input[PRES],
                    "dewp" => input[DEWP],
                    "dewpDepression" => input[TEMP] - input[DEWP],
                    "rain" => input[RAIN],
                    "wspm" => input[WSPM],
                    "windEast" => -input[WSPM] * radians.sin(),
                    "windNorth" => -input[WSPM] * radians.cos(),
                    _ => input[PRES] - pres_before,
                });
            }
        }
        true
    }

    /// The targets `origin+1 … origin+H` in model space, NaN where missing or past the data.
    pub fn targets(&self, s: &StationSeries, origin: usize, out: &mut Vec<f32>) {
        for h in 1..=self.horizon {
            let v = s.target.get(origin + h).copied().unwrap_or(f32::NAN);
            out.push(if v.is_nan() { f32::NAN } else { self.forward(v) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(target: Vec<f32>) -> StationSeries {
        let n = target.len();
        StationSeries {
            code: "s".to_owned(),
            target,
            weather: std::array::from_fn(|k| vec![k as f32 + 1.0; n]),
        }
    }

    #[test]
    fn lags_count_back_from_the_origin_and_fill_at_most_three_hours() {
        let f = Featurizer {
            lags: vec![1, 2, 24],
            calendar: false,
            weather: false,
            weather_absent: Vec::new(),
            log_transform: false,
            horizon: 2,
        };
        let mut values: Vec<f32> = (0..30).map(|i| i as f32).collect();
        values[27] = f32::NAN;
        let s = series(values.clone());
        let mut out = Vec::new();
        assert!(f.features(&s, 28, 0, &mut out));
        // lag 1 = hour 28, lag 2 = hour 27 (missing → 26), lag 24 = hour 5.
        assert_eq!(&out[..3], &[28.0, 26.0, 5.0]);
        assert_eq!(out.len(), f.dim());
        // Four missing hours in a row cannot be filled.
        for v in &mut values[23..=27] {
            *v = f32::NAN;
        }
        let s = series(values);
        let mut out = vec![9.0];
        assert!(!f.features(&s, 27, 0, &mut out));
        assert_eq!(out, vec![9.0]);
        // Too early for lag 24.
        assert!(!f.features(&s, 10, 0, &mut out));
    }

    #[test]
    fn weather_features_need_their_inputs_and_the_absent_ones_are_left_out() {
        let all = Featurizer {
            lags: vec![1],
            calendar: false,
            weather: true,
            weather_absent: Vec::new(),
            log_transform: false,
            horizon: 1,
        };
        // Inputs k + 1: temp 1, pres 2, dewp 3, rain 4, wspm 5, wd 6 (degrees).
        let s = series(vec![7.0; 30]);
        let mut out = Vec::new();
        assert!(all.features(&s, 28, 0, &mut out));
        assert_eq!(out.len(), all.dim());
        assert_eq!(all.dim(), 2 + 9);
        assert_eq!(&out[2..7], &[1.0, 2.0, 3.0, -2.0, 4.0]);
        // Wind alone: its speed and components stay, what needs temperature, pressure, dew point or rain goes.
        let wind = Featurizer {
            weather_absent: ["temp", "pres", "dewp", "rain"].map(str::to_owned).to_vec(),
            ..all.clone()
        };
        assert_eq!(wind.names()[2..], ["wspm", "windEast", "windNorth"]);
        let mut out = Vec::new();
        assert!(wind.features(&s, 28, 0, &mut out));
        assert_eq!(out.len(), wind.dim());
        assert_eq!(out[2], 5.0);
        assert!((out[3] - -5.0 * 6f32.to_radians().sin()).abs() < 1e-6);
        // A stored model without the list (older versions) reads as having every input.
        let json = serde_json::to_value(&all).unwrap();
        assert!(json.get("weatherAbsent").is_none());
        let back: Featurizer = serde_json::from_value(json).unwrap();
        assert_eq!(back, all);
    }

    #[test]
    fn targets_are_transformed_and_missing_stays_missing() {
        let f = Featurizer {
            lags: vec![1],
            calendar: true,
            weather: true,
            weather_absent: Vec::new(),
            log_transform: true,
            horizon: 3,
        };
        let s = series(vec![0.0, 1.0, f32::NAN, 3.0]);
        let mut out = Vec::new();
        f.targets(&s, 0, &mut out);
        assert_eq!(out[0], 1f32.ln_1p());
        assert!(out[1].is_nan());
        assert_eq!(out[2], 3f32.ln_1p());
        let mut out = Vec::new();
        f.targets(&s, 2, &mut out);
        assert!(out[1].is_nan() && out[2].is_nan(), "past the data");
        assert_eq!(f.names().len(), f.dim());
        assert!((f.inverse(f.forward(42.0)) - 42.0).abs() < 1e-4);
    }
}

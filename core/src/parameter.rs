//! What airq measures: six pollutants and the weather covariates the Beijing files carry, each stored in one unit,
//! with the plausibility rules a load applies before storing a value.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A measured quantity. `code()` is its key in the database (`parameters.code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parameter {
    Pm25,
    Pm10,
    No2,
    O3,
    So2,
    Co,
    Temp,
    Pres,
    Dewp,
    Rain,
    Wspm,
    Wd,
}

/// Whether a parameter is a pollutant (forecast and shown) or a weather covariate (a model input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pollutant,
    Weather,
}

/// Why a value is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Implausible {
    /// Below the parameter's physical minimum (e.g. a negative concentration).
    BelowMinimum { min: f64 },
    /// Above what the parameter ever reaches (e.g. ozone over 1,000 µg/m³).
    AboveMaximum { max: f64 },
    /// An instrument's "no value" code (999, 9999, -999…).
    Sentinel,
    /// Not a finite number.
    NotFinite,
}

impl fmt::Display for Implausible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BelowMinimum { min } => write!(f, "below the minimum of {min}"),
            Self::AboveMaximum { max } => write!(f, "above the plausible maximum of {max}"),
            Self::Sentinel => write!(f, "a missing-value sentinel (999, 9999 or -999)"),
            Self::NotFinite => write!(f, "not a finite number"),
        }
    }
}

impl Parameter {
    /// Every parameter, pollutants first.
    pub const ALL: [Parameter; 12] = [
        Self::Pm25,
        Self::Pm10,
        Self::No2,
        Self::O3,
        Self::So2,
        Self::Co,
        Self::Temp,
        Self::Pres,
        Self::Dewp,
        Self::Rain,
        Self::Wspm,
        Self::Wd,
    ];

    /// The six pollutants.
    pub const POLLUTANTS: [Parameter; 6] = [Self::Pm25, Self::Pm10, Self::No2, Self::O3, Self::So2, Self::Co];

    /// The database key.
    pub fn code(self) -> &'static str {
        match self {
            Self::Pm25 => "pm25",
            Self::Pm10 => "pm10",
            Self::No2 => "no2",
            Self::O3 => "o3",
            Self::So2 => "so2",
            Self::Co => "co",
            Self::Temp => "temp",
            Self::Pres => "pres",
            Self::Dewp => "dewp",
            Self::Rain => "rain",
            Self::Wspm => "wspm",
            Self::Wd => "wd",
        }
    }

    /// The unit values are stored in (`units.code`).
    pub fn unit(self) -> &'static str {
        match self {
            Self::Pm25 | Self::Pm10 | Self::No2 | Self::O3 | Self::So2 | Self::Co => "ug/m3",
            Self::Temp | Self::Dewp => "degC",
            Self::Pres => "hPa",
            Self::Rain => "mm",
            Self::Wspm => "m/s",
            Self::Wd => "deg",
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            Self::Pm25 | Self::Pm10 | Self::No2 | Self::O3 | Self::So2 | Self::Co => Kind::Pollutant,
            _ => Kind::Weather,
        }
    }

    /// Molar mass in g/mol of a gas, to convert mixing ratios (ppm, ppb) into µg/m³.
    fn molar_mass(self) -> Option<f64> {
        match self {
            Self::No2 => Some(46.0055),
            Self::O3 => Some(47.9982),
            Self::So2 => Some(64.066),
            Self::Co => Some(28.010),
            _ => None,
        }
    }

    /// The range of values a real measurement can take, in the stored unit. Concentrations above these limits were
    /// never recorded by a working instrument (Beijing's worst hours stayed below 1,000 µg/m³ of PM2.5).
    fn plausible_range(self) -> (f64, f64) {
        match self {
            Self::Pm25 => (0.0, 1000.0),
            Self::Pm10 => (0.0, 2000.0),
            Self::No2 => (0.0, 1000.0),
            Self::O3 => (0.0, 1000.0),
            Self::So2 => (0.0, 2000.0),
            Self::Co => (0.0, 50_000.0),
            Self::Temp | Self::Dewp => (-60.0, 60.0),
            Self::Pres => (850.0, 1100.0),
            Self::Rain => (0.0, 300.0),
            Self::Wspm => (0.0, 75.0),
            Self::Wd => (0.0, 360.0),
        }
    }

    /// Checks a value already in the stored unit.
    pub fn check(self, value: f64) -> Result<f64, Implausible> {
        if !value.is_finite() {
            return Err(Implausible::NotFinite);
        }
        // Instruments and exports write these codes for "no value"; a real concentration of exactly 999 µg/m³ is far
        // less likely than a sentinel. Weather values of these magnitudes fail the range check anyway.
        if self.kind() == Kind::Pollutant && (value == 999.0 || value == 9999.0 || value == -999.0) {
            return Err(Implausible::Sentinel);
        }
        let (min, max) = self.plausible_range();
        if value < min {
            return Err(Implausible::BelowMinimum { min });
        }
        if value > max {
            return Err(Implausible::AboveMaximum { max });
        }
        Ok(value)
    }

    /// The factor that converts a stored value of this pollutant into `unit` (`ppb` for a gas: 24.45 / its molar
    /// mass); conversions of weather covariates are not proportional and are refused.
    pub fn factor_from_stored(self, unit: &str) -> Result<f64, UnknownUnit> {
        let unknown = || UnknownUnit {
            parameter: self,
            unit: unit.to_owned(),
        };
        if self.kind() != Kind::Pollutant {
            return Err(unknown());
        }
        self.normalise(1.0, unit).map(|per| 1.0 / per)
    }

    /// Converts `value` given in `unit` into the stored unit. Mixing ratios of gases use 25 °C and 1 atm (a molar
    /// volume of 24.45 l), the convention of air-quality agencies.
    pub fn normalise(self, value: f64, unit: &str) -> Result<f64, UnknownUnit> {
        let unit_key = unit
            .trim()
            .replace(['µ', 'μ'], "u")
            .replace('³', "3")
            .to_ascii_lowercase();
        let unknown = || UnknownUnit {
            parameter: self,
            unit: unit.to_owned(),
        };
        match (self.unit(), unit_key.as_str()) {
            ("ug/m3", "ug/m3") => Ok(value),
            ("ug/m3", "mg/m3") => Ok(value * 1000.0),
            ("ug/m3", "ppb") => self.molar_mass().map(|m| value * m / 24.45).ok_or_else(unknown),
            ("ug/m3", "ppm") => self
                .molar_mass()
                .map(|m| value * 1000.0 * m / 24.45)
                .ok_or_else(unknown),
            ("degC", "degc" | "c" | "°c") => Ok(value),
            ("degC", "degf" | "f" | "°f") => Ok((value - 32.0) * 5.0 / 9.0),
            ("hPa", "hpa" | "mbar") => Ok(value),
            ("hPa", "pa") => Ok(value / 100.0),
            ("mm", "mm") => Ok(value),
            ("m/s", "m/s") => Ok(value),
            ("m/s", "km/h") => Ok(value / 3.6),
            ("deg", "deg" | "°") => Ok(value),
            _ => Err(unknown()),
        }
    }
}

/// A unit a value cannot be converted from.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cannot convert {parameter} from unit {unit:?} into {}", parameter.unit())]
pub struct UnknownUnit {
    pub parameter: Parameter,
    pub unit: String,
}

impl fmt::Display for Parameter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A name that is no parameter airq stores.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unknown parameter {0:?} (expected one of pm25, pm10, no2, o3, so2, co, temp, pres, dewp, rain, wspm, wd)")]
pub struct UnknownParameter(pub String);

impl FromStr for Parameter {
    type Err = UnknownParameter;

    /// Accepts the codes and the names sources use: `PM2.5`, `pm2_5` (Open-Meteo), `nitrogen_dioxide`, `TEMP`…
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let key: String = name
            .trim()
            .to_ascii_lowercase()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        Ok(match key.as_str() {
            "pm25" => Self::Pm25,
            "pm10" => Self::Pm10,
            "no2" | "nitrogendioxide" => Self::No2,
            "o3" | "ozone" => Self::O3,
            "so2" | "sulphurdioxide" | "sulfurdioxide" => Self::So2,
            "co" | "carbonmonoxide" => Self::Co,
            "temp" | "temperature" | "temperature2m" => Self::Temp,
            "pres" | "pressure" | "surfacepressure" => Self::Pres,
            "dewp" | "dewpoint" | "dewpoint2m" => Self::Dewp,
            "rain" | "precipitation" => Self::Rain,
            "wspm" | "windspeed" | "windspeed10m" => Self::Wspm,
            "wd" | "winddirection" | "winddirection10m" => Self::Wd,
            _ => return Err(UnknownParameter(name.to_owned())),
        })
    }
}

/// The compass point a wind direction is written as (`N`, `NNE`, … `NNW`), in degrees from north.
pub fn compass_degrees(point: &str) -> Option<f64> {
    const POINTS: [&str; 16] = [
        "N", "NNE", "NE", "ENE", "E", "ESE", "SE", "SSE", "S", "SSW", "SW", "WSW", "W", "WNW", "NW", "NNW",
    ];
    let point = point.trim();
    POINTS
        .iter()
        .position(|p| p.eq_ignore_ascii_case(point))
        .map(|i| i as f64 * 22.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_every_source_map_to_one_parameter() {
        for (name, expected) in [
            ("PM2.5", Parameter::Pm25),
            ("pm2_5", Parameter::Pm25),
            ("pm25", Parameter::Pm25),
            ("nitrogen_dioxide", Parameter::No2),
            ("O3", Parameter::O3),
            ("TEMP", Parameter::Temp),
            ("WSPM", Parameter::Wspm),
        ] {
            assert_eq!(name.parse::<Parameter>(), Ok(expected), "{name}");
        }
        let err = "um003".parse::<Parameter>().unwrap_err();
        assert!(err.to_string().contains("um003"), "{err}");
    }

    #[test]
    fn units_are_normalised() {
        assert_eq!(Parameter::Pm25.normalise(12.0, "µg/m³"), Ok(12.0));
        assert_eq!(Parameter::Pm25.normalise(12.0, "μg/m³"), Ok(12.0));
        assert_eq!(Parameter::Co.normalise(1.5, "mg/m3"), Ok(1500.0));
        let no2 = Parameter::No2.normalise(10.0, "ppb").unwrap();
        assert!((no2 - 18.816).abs() < 0.01, "{no2}");
        let co = Parameter::Co.normalise(1.0, "ppm").unwrap();
        assert!((co - 1145.6).abs() < 0.5, "{co}");
        assert!(Parameter::Pm25.normalise(1.0, "ppm").is_err());
        // Back from the stored unit: 18.8 µg/m³ of NO2 is 10 ppb again; no ppb for particles or the weather.
        let to_ppb = Parameter::No2.factor_from_stored("ppb").unwrap();
        assert!((no2 * to_ppb - 10.0).abs() < 1e-9, "{to_ppb}");
        assert_eq!(Parameter::Pm25.factor_from_stored("ug/m3"), Ok(1.0));
        assert!(Parameter::Pm25.factor_from_stored("ppb").is_err());
        assert!(Parameter::Temp.factor_from_stored("degF").is_err());
        assert_eq!(Parameter::Wspm.normalise(36.0, "km/h"), Ok(10.0));
    }

    #[test]
    fn implausible_values_are_refused_with_the_reason() {
        assert_eq!(Parameter::Pm25.check(999.0), Err(Implausible::Sentinel));
        assert_eq!(
            Parameter::O3.check(1071.0),
            Err(Implausible::AboveMaximum { max: 1000.0 })
        );
        assert_eq!(Parameter::No2.check(-1.0), Err(Implausible::BelowMinimum { min: 0.0 }));
        assert_eq!(Parameter::Pm25.check(f64::NAN), Err(Implausible::NotFinite));
        assert_eq!(Parameter::Temp.check(-18.8), Ok(-18.8));
        assert_eq!(Parameter::Co.check(10_000.0), Ok(10_000.0));
    }

    #[test]
    fn compass_points_become_degrees() {
        assert_eq!(compass_degrees("N"), Some(0.0));
        assert_eq!(compass_degrees("NNW"), Some(337.5));
        assert_eq!(compass_degrees("E"), Some(90.0));
        assert_eq!(compass_degrees("X"), None);
    }
}

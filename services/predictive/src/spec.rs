//! What to train: the training-relevant part of a PredictiveModel's spec, exactly as the operator passes it in
//! `AIRQ_MODEL_SPEC`, and as the API accepts it.

use crate::data::Dataset;
use airq_api::model::{Algorithm, Features, Target};
use airq_core::parameter::{Kind, Parameter};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// The algorithms, as named in a spec.
pub const ALGORITHMS: [&str; 8] = [
    "knn",
    "linear",
    "neuralNetwork",
    "gbm",
    "ensemble",
    "persistence",
    "seasonalNaive",
    "climatology",
];

/// A spec that cannot be trained, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// Where in the spec (`algorithm`, `training.from`…).
    pub field: String,
    pub message: String,
}

fn spec_error(field: &str, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// The window of data a model is trained and calibrated on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingWindow {
    /// First day (`YYYY-MM-DD`, UTC); the oldest data when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Day after the last one (`YYYY-MM-DD`, UTC); the newest data when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Share of the newest data held out to calibrate the intervals.
    #[serde(default = "default_calibration")]
    pub calibration_fraction: f64,
}

impl Default for TrainingWindow {
    fn default() -> Self {
        Self {
            from: None,
            to: None,
            calibration_fraction: default_calibration(),
        }
    }
}

fn default_calibration() -> f64 {
    0.2
}

fn default_horizon() -> u32 {
    24
}

fn default_levels() -> Vec<f64> {
    vec![0.8, 0.9]
}

/// The training-relevant part of a PredictiveModel's spec.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    pub target: Target,
    #[serde(default = "default_horizon")]
    pub horizon_hours: u32,
    #[serde(default = "default_levels")]
    pub confidence_levels: Vec<f64>,
    pub algorithm: Algorithm,
    #[serde(default)]
    pub features: Features,
    #[serde(default)]
    pub training: TrainingWindow,
}

impl ModelSpec {
    /// Parses and checks a spec, naming the field that is wrong.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, SpecError> {
        let algorithm = value
            .get("algorithm")
            .ok_or_else(|| spec_error("algorithm", format!("missing; set one of {}", ALGORITHMS.join(", "))))?;
        let keys: Vec<&String> = algorithm
            .as_object()
            .ok_or_else(|| {
                spec_error(
                    "algorithm",
                    "must be an object with one algorithm, e.g. {\"knn\": {\"k\": 10}}",
                )
            })?
            .keys()
            .collect();
        if let Some(unknown) = keys.iter().find(|k| !ALGORITHMS.contains(&k.as_str())) {
            return Err(spec_error(
                "algorithm",
                format!(
                    "unknown algorithm {unknown:?}; expected one of {}",
                    ALGORITHMS.join(", ")
                ),
            ));
        }
        if keys.len() != 1 {
            return Err(spec_error(
                "algorithm",
                format!("set exactly one algorithm, found {}", keys.len()),
            ));
        }
        let spec: Self = serde_json::from_value(value.clone()).map_err(|e| spec_error("spec", e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks what the CRD's schema checks in a cluster, for specs that come from elsewhere (CLI, API).
    pub fn validate(&self) -> Result<(), SpecError> {
        self.pollutant()?;
        self.unit()?;
        if !(1..=168).contains(&self.horizon_hours) {
            return Err(spec_error("horizonHours", "must be between 1 and 168"));
        }
        if self.confidence_levels.is_empty() {
            return Err(spec_error("confidenceLevels", "give at least one level"));
        }
        for level in &self.confidence_levels {
            if !(*level > 0.0 && *level < 1.0) {
                return Err(spec_error(
                    "confidenceLevels",
                    format!("{level} is not strictly between 0 and 1"),
                ));
            }
        }
        if let Some(lag) = self.features.lags.iter().find(|l| **l == 0 || **l > 24 * 366) {
            return Err(spec_error(
                "features.lags",
                format!("lag {lag} is out of range: lags are 1 (the last observed hour) to 8784 hours"),
            ));
        }
        if !(0.05..=0.5).contains(&self.training.calibration_fraction) {
            return Err(spec_error(
                "training.calibrationFraction",
                "must be between 0.05 and 0.5",
            ));
        }
        let (from, to) = self.window()?;
        if let (Some(from), Some(to)) = (from, to)
            && from >= to
        {
            return Err(spec_error("training", "training.from must be before training.to"));
        }
        validate_algorithm(&self.algorithm, "algorithm")?;
        Ok(())
    }

    /// The pollutant forecast.
    pub fn pollutant(&self) -> Result<Parameter, SpecError> {
        let p: Parameter = self
            .target
            .pollutant
            .parse()
            .map_err(|e: airq_core::parameter::UnknownParameter| spec_error("target.pollutant", e.to_string()))?;
        if p.kind() != Kind::Pollutant {
            return Err(spec_error(
                "target.pollutant",
                format!("{p} is a weather covariate, not a pollutant"),
            ));
        }
        Ok(p)
    }

    /// The unit the model works in (`target.unit`, the stored unit when absent) and the factor from the stored one.
    pub fn unit(&self) -> Result<(String, f64), SpecError> {
        let pollutant = self.pollutant()?;
        match self.target.unit.as_deref() {
            None => Ok((pollutant.unit().to_owned(), 1.0)),
            Some(unit) => pollutant
                .factor_from_stored(unit)
                .map(|factor| (unit.to_owned(), factor))
                .map_err(|_| {
                    spec_error(
                        "target.unit",
                        format!(
                            "{pollutant} cannot be given in {unit:?}: ug/m3 or mg/m3 for every pollutant, ppb or ppm \
                             (mixing ratios) for the gases no2, o3, so2 and co"
                        ),
                    )
                }),
        }
    }

    /// `data` (read in the stored unit) in the unit the model works in.
    pub fn in_unit(&self, data: Dataset) -> Result<Dataset, SpecError> {
        let (unit, factor) = self.unit()?;
        Ok(data.in_unit(&unit, factor as f32))
    }

    /// The training window in Unix seconds.
    pub fn window(&self) -> Result<(Option<i64>, Option<i64>), SpecError> {
        let day = |field: &str, text: &Option<String>| -> Result<Option<i64>, SpecError> {
            text.as_deref()
                .map(|t| {
                    NaiveDate::parse_from_str(t, "%Y-%m-%d")
                        .map_err(|e| spec_error(field, format!("{t:?} is not a YYYY-MM-DD date: {e}")))
                        .and_then(|d| {
                            d.and_hms_opt(0, 0, 0)
                                .map(|t| t.and_utc().timestamp())
                                .ok_or_else(|| spec_error(field, "not a day"))
                        })
                })
                .transpose()
        };
        Ok((
            day("training.from", &self.training.from)?,
            day("training.to", &self.training.to)?,
        ))
    }
}

/// Checks one algorithm's parameters; `at` names it in errors (`algorithm`, `algorithm.ensemble.members[1]`).
fn validate_algorithm(a: &Algorithm, at: &str) -> Result<(), SpecError> {
    let field = |name: &str| format!("{at}.{name}");
    let fail = |name: &str, message: &str| Err(spec_error(&field(name), message));
    if a.name() == "invalid" {
        return Err(spec_error(at, "set exactly one algorithm"));
    }
    if let Some(knn) = &a.knn
        && knn.k == 0
    {
        return fail("knn.k", "must be at least 1");
    }
    if let Some(linear) = &a.linear
        && !(linear.l2 >= 0.0 && linear.l2.is_finite())
    {
        return fail("linear.l2", "must be a finite number ≥ 0");
    }
    if let Some(nn) = &a.neural_network {
        if nn.hidden_sizes.is_empty() || nn.hidden_sizes.iter().any(|h| *h == 0 || *h > 4096) {
            return fail("neuralNetwork.hiddenSizes", "give 1 to 8 layer sizes, each 1 to 4096");
        }
        if nn.epochs == 0 {
            return fail("neuralNetwork.epochs", "must be at least 1");
        }
        if !(nn.learning_rate > 0.0 && nn.learning_rate <= 1.0) {
            return fail("neuralNetwork.learningRate", "must be in (0, 1]");
        }
    }
    if let Some(g) = &a.gbm {
        if !(1..=10_000).contains(&g.trees) {
            return fail("gbm.trees", "must be 1 to 10000");
        }
        if !(1..=32).contains(&g.max_depth) {
            return fail("gbm.maxDepth", "must be 1 to 32");
        }
        if !(2..=65_536).contains(&g.max_leaves) {
            return fail("gbm.maxLeaves", "must be 2 to 65536");
        }
        if !(g.learning_rate > 0.0 && g.learning_rate <= 1.0) {
            return fail("gbm.learningRate", "must be in (0, 1]");
        }
        if g.min_leaf_samples == 0 {
            return fail("gbm.minLeafSamples", "must be at least 1");
        }
        if !(g.l2 >= 0.0 && g.l2.is_finite()) {
            return fail("gbm.l2", "must be a finite number ≥ 0");
        }
        if g.early_stopping_rounds == 0 {
            return fail("gbm.earlyStoppingRounds", "must be at least 1");
        }
    }
    if let Some(s) = &a.seasonal_naive
        && s.season_hours == 0
    {
        return fail("seasonalNaive.seasonHours", "must be at least 1");
    }
    if let Some(e) = &a.ensemble {
        if !(2..=8).contains(&e.members.len()) {
            return fail("ensemble.members", "give two to eight members");
        }
        for (i, m) in e.members.iter().enumerate() {
            validate_algorithm(&m.algorithm(), &field(&format!("ensemble.members[{i}]")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_operator_spec_parses() -> Result<(), SpecError> {
        let spec = ModelSpec::from_json(&json!({
            "target": {"pollutant": "no2"}, "horizonHours": 24, "confidenceLevels": [0.8, 0.9],
            "algorithm": {"knn": {"k": 5}}, "features": {"lags": [1, 24], "calendar": true, "weather": false, "logTransform": true},
            "training": {"from": null, "to": "2015-03-01", "calibrationFraction": 0.25}
        }))?;
        assert_eq!(spec.algorithm.knn.as_ref().map(|k| k.k), Some(5));
        assert_eq!(spec.window()?.1, Some(1_425_168_000));
        Ok(())
    }

    #[test]
    fn bad_specs_name_the_field() {
        let base = json!({"target": {"pollutant": "no2"}, "algorithm": {"knn": {}}});
        let with = |path: &str, value: serde_json::Value| {
            let mut v = base.clone();
            let mut cursor = &mut v;
            let parts: Vec<&str> = path.split('.').collect();
            for p in &parts[..parts.len() - 1] {
                cursor = cursor
                    .as_object_mut()
                    .map(|o| o.entry(p.to_string()).or_insert(json!({})))
                    .expect("object");
            }
            cursor[parts[parts.len() - 1]] = value;
            ModelSpec::from_json(&v).expect_err("must be refused")
        };
        let e = with("algorithm", json!({"xgboost": {}}));
        assert!(e.message.contains("unknown algorithm \"xgboost\""), "{e}");
        let e = with("algorithm", json!({"knn": {}, "linear": {}}));
        assert!(e.message.contains("exactly one"), "{e}");
        let e = with("target.pollutant", json!("temp"));
        assert_eq!(e.field, "target.pollutant");
        let e = with("confidenceLevels", json!([0.9, 1.0]));
        assert_eq!(e.field, "confidenceLevels");
        let e = with("training.to", json!("2015-13-01"));
        assert_eq!(e.field, "training.to");
        let e = with("algorithm", json!({"knn": {"k": 0}}));
        assert_eq!(e.field, "algorithm.knn.k");
        let e = with("algorithm", json!({"gbm": {"learningRate": 0.0}}));
        assert_eq!(e.field, "algorithm.gbm.learningRate");
        let e = with("algorithm", json!({"ensemble": {"members": [{"linear": {}}]}}));
        assert_eq!(e.field, "algorithm.ensemble.members");
        let e = with(
            "algorithm",
            json!({"ensemble": {"members": [{"linear": {}}, {"gbm": {"trees": 0}}]}}),
        );
        assert_eq!(e.field, "algorithm.ensemble.members[1].gbm.trees");
        let e = with(
            "algorithm",
            json!({"ensemble": {"members": [{"linear": {}}, {"linear": {}, "knn": {}}]}}),
        );
        assert_eq!(e.field, "algorithm.ensemble.members[1]");
    }
}

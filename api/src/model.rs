//! `PredictiveModel`: what to forecast and how. Becomes a training Job (again when the training-relevant spec or
//! `spec.retrainRequest` changes), then a serving Deployment and Service for the trained version, and optionally a
//! CronJob that retrains on a schedule.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{ConditionedStatus, DatabaseRef, PodOptions};

/// A forecasting model for one pollutant.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "airq.dev",
    version = "v1alpha1",
    kind = "PredictiveModel",
    namespaced,
    status = "PredictiveModelStatus",
    shortname = "pm",
    shortname = "model",
    category = "airq",
    doc = "A model that forecasts one pollutant at the stations, with calibrated intervals: trained by a Job, served by a Deployment, retrained when its spec or retrainRequest changes.",
    printcolumn(name = "Pollutant", type_ = "string", json_path = ".spec.target.pollutant"),
    printcolumn(name = "Algorithm", type_ = "string", json_path = ".status.algorithm"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Version", type_ = "string", json_path = ".status.modelVersion"),
    printcolumn(name = "MAE", type_ = "number", json_path = ".status.metrics.mae"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 38").message("metadata.name: at most 38 characters (it names the CronJob model-<name>-retrain, which allows 52)"),
    validation = Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name: only lower-case letters, digits and '-', starting and ending with a letter or digit (it names a Service, which allows no dots)"),
)]
#[serde(rename_all = "camelCase")]
pub struct PredictiveModelSpec {
    /// What is forecast.
    pub target: Target,
    /// How many hours ahead the model forecasts.
    #[serde(default = "default_horizon")]
    #[schemars(range(min = 1, max = 168))]
    pub horizon_hours: u32,
    /// Confidence levels of the intervals served with each forecast, each strictly between 0 and 1.
    #[serde(default = "default_confidence_levels")]
    #[x_kube(validation = Rule::new("self.all(c, c > 0.0 && c < 1.0)").message("each confidence level must be strictly between 0 and 1"))]
    #[schemars(length(min = 1, max = 10))]
    pub confidence_levels: Vec<f64>,
    /// The algorithm and its parameters: exactly one of the fields.
    pub algorithm: Algorithm,
    /// The inputs the algorithm sees.
    #[serde(default)]
    pub features: Features,
    /// The data it learns from, when it retrains, and the machines it trains on.
    #[serde(default)]
    pub training: Training,
    /// How the trained model is served.
    #[serde(default)]
    pub serving: Serving,
    /// Change this value (any string, e.g. a timestamp) to retrain with the same spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrain_request: Option<String>,
    /// The Secret holding the database URL.
    #[serde(default)]
    pub database: DatabaseRef,
    /// The predictive image; the operator's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

fn default_horizon() -> u32 {
    24
}

fn default_confidence_levels() -> Vec<f64> {
    vec![0.8, 0.9]
}

/// The pollutant forecast, and where.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// Pollutant code: `pm25`, `pm10`, `no2`, `o3`, `so2` or `co`.
    #[schemars(regex(pattern = r"^(pm25|pm10|no2|o3|so2|co)$"))]
    pub pollutant: String,
    /// Stations the model is trained on and serves; every station when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stations: Vec<String>,
    /// The unit the model trains, scores and answers in: `ug/m3` (stored values; the default) or `mg/m3`, and for
    /// a gas (`no2`, `o3`, `so2`, `co`) the mixing ratios `ppb` or `ppm` (25 °C, 1 atm), e.g. to keep data loaded
    /// in ppb in ppb.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(ug/m3|mg/m3|ppb|ppm)$"))]
    pub unit: Option<String>,
}

/// The algorithm and its parameters: exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.knn), has(self.linear), has(self.neuralNetwork), has(self.gbm), has(self.ensemble), has(self.persistence), has(self.seasonalNaive), has(self.climatology)].filter(x, x).size() == 1").message("set exactly one algorithm: knn, linear, neuralNetwork, gbm, ensemble, persistence, seasonalNaive or climatology"))]
pub struct Algorithm {
    /// k-nearest neighbours over the feature vectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn: Option<Knn>,
    /// A ridge-regularised linear model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linear: Option<Linear>,
    /// A small feed-forward neural network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neural_network: Option<NeuralNetwork>,
    /// Gradient-boosted regression trees, one booster per hour ahead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gbm: Option<Gbm>,
    /// A weighted combination of other algorithms, the weights learned on the calibration period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<Ensemble>,
    /// Baseline: the last observed value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<Baseline>,
    /// Baseline: the value one season earlier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seasonal_naive: Option<SeasonalNaive>,
    /// Baseline: the mean for the station, month and hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub climatology: Option<Baseline>,
}

impl Algorithm {
    /// The name of the algorithm that is set, as shown by `kubectl get`.
    pub fn name(&self) -> &'static str {
        let set = [
            (self.knn.is_some(), "knn"),
            (self.linear.is_some(), "linear"),
            (self.neural_network.is_some(), "neuralNetwork"),
            (self.gbm.is_some(), "gbm"),
            (self.ensemble.is_some(), "ensemble"),
            (self.persistence.is_some(), "persistence"),
            (self.seasonal_naive.is_some(), "seasonalNaive"),
            (self.climatology.is_some(), "climatology"),
        ];
        match set.iter().filter(|(on, _)| *on).collect::<Vec<_>>().as_slice() {
            [(_, name)] => name,
            _ => "invalid",
        }
    }
}

/// Gradient-boosted regression trees (squared loss on the model's scale), one booster per hour ahead, each
/// stopped early on the newest tenth of the fitting period.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Gbm {
    /// Boosting rounds (trees) per booster at most.
    #[serde(default = "default_trees")]
    #[schemars(range(min = 1, max = 10000))]
    pub trees: u32,
    /// Depth of a tree at most.
    #[serde(default = "default_max_depth")]
    #[schemars(range(min = 1, max = 32))]
    pub max_depth: u32,
    /// Leaves of a tree at most.
    #[serde(default = "default_max_leaves")]
    #[schemars(range(min = 2, max = 65536))]
    pub max_leaves: u32,
    /// Shrinkage of each tree's contribution.
    #[serde(default = "default_gbm_learning_rate")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub learning_rate: f64,
    /// Fewest training origins in a leaf.
    #[serde(default = "default_min_leaf")]
    #[schemars(range(min = 1, max = 1000000))]
    pub min_leaf_samples: u32,
    /// L2 penalty on the leaf values.
    #[serde(default = "default_l2")]
    #[schemars(range(min = 0.0))]
    pub l2: f64,
    /// Stop a booster after this many rounds without improvement on the newest tenth of the fitting period.
    #[serde(default = "default_gbm_patience")]
    #[schemars(range(min = 1, max = 10000))]
    pub early_stopping_rounds: u32,
}

impl Default for Gbm {
    fn default() -> Self {
        Self {
            trees: default_trees(),
            max_depth: default_max_depth(),
            max_leaves: default_max_leaves(),
            learning_rate: default_gbm_learning_rate(),
            min_leaf_samples: default_min_leaf(),
            l2: default_l2(),
            early_stopping_rounds: default_gbm_patience(),
        }
    }
}

fn default_trees() -> u32 {
    500
}

fn default_max_depth() -> u32 {
    8
}

fn default_max_leaves() -> u32 {
    31
}

fn default_gbm_learning_rate() -> f64 {
    0.05
}

fn default_min_leaf() -> u32 {
    50
}

fn default_gbm_patience() -> u32 {
    20
}

/// A combination of algorithms: every member is trained on the same data; on the calibration period each hour
/// ahead gets weights, non-negative and summing to 1, that minimise the absolute error of the weighted mean; the
/// intervals are conformal on the combined forecast.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ensemble {
    /// The members, two to eight, each one algorithm (an ensemble cannot be a member).
    #[schemars(length(min = 2, max = 8))]
    pub members: Vec<Member>,
    /// The scale the members' forecasts are weighed and averaged on: `concentration` (an arithmetic mean) or
    /// `logarithm` (a geometric one); the features' `logTransform` when absent. The intervals are calibrated on the
    /// features' scale whichever is chosen: `logTransform: true` with `combineOn: concentration` averages
    /// concentrations and gives intervals that scale with the forecast (narrow on clean days, wide on polluted ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combine_on: Option<Scale>,
    /// What the weights minimise on the calibration period: `absoluteError` (the default; the weighted mean then
    /// aims at the median, which the MAE rewards) or `squaredError` (the mean).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective: Option<Objective>,
    /// Whether the predictive distribution (intervals and CRPS) is a linear pool of the combined forecast's
    /// conformal distribution with the climatology's, the forecast's weight per day ahead chosen by CRPS on the
    /// calibration period (one where the forecast alone is best, as it is near the origin). Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_with_climatology: Option<bool>,
}

// No doc comment, as for `Scale`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Objective {
    /// The mean absolute error.
    #[default]
    AbsoluteError,
    /// The mean squared error.
    SquaredError,
}

// No doc comment: the schema of the field that uses it would take the type's description instead of the field's.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Scale {
    /// The concentration as measured.
    Concentration,
    /// Its logarithm, `ln(1 + x)`.
    Logarithm,
}

/// One member of an ensemble: exactly one algorithm, with its parameters. The fields repeat [`Algorithm`]'s but
/// `ensemble`: a structural CRD schema cannot refer to itself, so an ensemble of ensembles cannot be written.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.knn), has(self.linear), has(self.neuralNetwork), has(self.gbm), has(self.persistence), has(self.seasonalNaive), has(self.climatology)].filter(x, x).size() == 1").message("set exactly one algorithm per member: knn, linear, neuralNetwork, gbm, persistence, seasonalNaive or climatology"))]
pub struct Member {
    /// k-nearest neighbours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn: Option<Knn>,
    /// A ridge-regularised linear model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linear: Option<Linear>,
    /// A small feed-forward neural network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neural_network: Option<NeuralNetwork>,
    /// Gradient-boosted regression trees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gbm: Option<Gbm>,
    /// Baseline: the last observed value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<Baseline>,
    /// Baseline: the value one season earlier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seasonal_naive: Option<SeasonalNaive>,
    /// Baseline: the mean for the station, month and hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub climatology: Option<Baseline>,
    /// Whether this member models the logarithm of the concentration; the model's `features.logTransform` when
    /// absent. Members on both scales let the calibration period choose between them for each pollutant and city.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_transform: Option<bool>,
}

impl Member {
    /// The member as an algorithm of its own.
    pub fn algorithm(&self) -> Algorithm {
        Algorithm {
            knn: self.knn.clone(),
            linear: self.linear.clone(),
            neural_network: self.neural_network.clone(),
            gbm: self.gbm.clone(),
            ensemble: None,
            persistence: self.persistence.clone(),
            seasonal_naive: self.seasonal_naive.clone(),
            climatology: self.climatology.clone(),
        }
    }
}

/// k-nearest neighbours.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Knn {
    /// Neighbours averaged.
    #[serde(default = "default_k")]
    #[schemars(range(min = 1, max = 1000))]
    pub k: u32,
    /// How distance between feature vectors is measured.
    #[serde(default)]
    pub distance: Distance,
    /// How neighbours are weighted.
    #[serde(default)]
    pub weights: Weights,
    /// How features are scaled before distances are taken.
    #[serde(default)]
    pub scaling: Scaling,
}

fn default_k() -> u32 {
    10
}

/// Distance between feature vectors.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Distance {
    #[default]
    Euclidean,
    Manhattan,
    Cosine,
}

/// Weight of each neighbour.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Weights {
    /// Every neighbour counts the same.
    Uniform,
    /// Nearer neighbours count more (inverse distance).
    #[default]
    Distance,
}

/// Feature scaling.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Scaling {
    /// Zero mean, unit variance.
    #[default]
    Standard,
    /// Into [0, 1].
    MinMax,
    /// Raw values.
    None,
}

/// A ridge-regularised linear model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Linear {
    /// L2 penalty.
    #[serde(default = "default_l2")]
    #[schemars(range(min = 0.0))]
    pub l2: f64,
}

fn default_l2() -> f64 {
    1.0
}

/// A feed-forward neural network.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NeuralNetwork {
    /// Sizes of the hidden layers.
    #[serde(default = "default_hidden_sizes")]
    #[schemars(length(min = 1, max = 8))]
    pub hidden_sizes: Vec<u32>,
    /// Passes over the training data at most.
    #[serde(default = "default_epochs")]
    #[schemars(range(min = 1, max = 10000))]
    pub epochs: u32,
    /// Optimiser step size.
    #[serde(default = "default_learning_rate")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub learning_rate: f64,
    /// Stop after this many epochs without improvement on the validation data.
    #[serde(default = "default_patience")]
    #[schemars(range(min = 1, max = 1000))]
    pub early_stopping_patience: u32,
    /// What training minimises on the model's scale, early stopping included: `absoluteError` (the default; the
    /// network then aims at the median, which the MAE rewards) or `squaredError` (the mean).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<Objective>,
}

fn default_hidden_sizes() -> Vec<u32> {
    vec![32, 16]
}

fn default_epochs() -> u32 {
    100
}

fn default_learning_rate() -> f64 {
    0.001
}

fn default_patience() -> u32 {
    10
}

/// A baseline without parameters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
pub struct Baseline {}

/// The seasonal-naive baseline.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeasonalNaive {
    /// Length of the season in hours (24: same hour yesterday; 168: same hour last week).
    #[serde(default = "default_season")]
    #[schemars(range(min = 1, max = 8784))]
    pub season_hours: u32,
}

fn default_season() -> u32 {
    24
}

/// The inputs of the model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Features {
    /// Lags of the target, in hours.
    #[serde(default = "default_lags")]
    pub lags: Vec<u32>,
    /// Hour of day, day of week and month.
    #[serde(default = "yes")]
    pub calendar: bool,
    /// Weather covariates where the data has them (temperature, pressure, dew point, rain, wind).
    #[serde(default = "yes")]
    pub weather: bool,
    /// Model the logarithm of the concentration.
    #[serde(default = "yes")]
    pub log_transform: bool,
}

impl Default for Features {
    fn default() -> Self {
        Self {
            lags: default_lags(),
            calendar: true,
            weather: true,
            log_transform: true,
        }
    }
}

fn default_lags() -> Vec<u32> {
    vec![1, 2, 3, 24, 168]
}

fn yes() -> bool {
    true
}

/// What the model learns from and where it trains.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.from) || !has(self.to) || self.from < self.to").message("training.from must be before training.to"))]
pub struct Training {
    /// First day of the training data (`YYYY-MM-DD`); the oldest data when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"), length(max = 10))]
    pub from: Option<String>,
    /// Day after the last one of the training data (`YYYY-MM-DD`); the newest data when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"), length(max = 10))]
    pub to: Option<String>,
    /// Share of the newest data held out to calibrate the intervals and stop training early.
    #[serde(default = "default_calibration")]
    #[schemars(range(min = 0.05, max = 0.5))]
    pub calibration_fraction: f64,
    /// Retrain on this cron schedule (`minute hour day-of-month month day-of-week`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Resources and node placement of the training pods.
    #[serde(default, flatten)]
    pub pod: PodOptions,
}

impl Default for Training {
    fn default() -> Self {
        Self {
            from: None,
            to: None,
            calibration_fraction: default_calibration(),
            schedule: None,
            pod: PodOptions::default(),
        }
    }
}

fn default_calibration() -> f64 {
    0.2
}

/// How the trained model is served.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Serving {
    /// Serving pods.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// Resources of each serving pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for Serving {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            resources: None,
        }
    }
}

fn default_replicas() -> i32 {
    1
}

/// Where the model is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ModelPhase {
    /// Waiting to train (e.g. for its database Secret).
    Pending,
    /// A training Job runs.
    Training,
    /// A trained version is served.
    Serving,
    /// The last training failed.
    Failed,
}

/// What the operator last saw of the model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PredictiveModelStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Trained` (the current spec has a trained version), `Serving` (that version is served by ready pods) and
    /// `Ready` (both).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ModelPhase>,
    /// The algorithm of the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// The fingerprint of the training-relevant spec the served version was trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_revision: Option<String>,
    /// The `metadata.generation` the served version was trained for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_generation: Option<i64>,
    /// The model version served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// When the served version finished training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_trained_time: Option<Time>,
    /// The training Job whose report the status holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_job: Option<String>,
    /// The training Job running now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_job: Option<String>,
    /// Evaluation of the served version on its test period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<ModelMetrics>,
    /// Where the model answers inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Evaluation metrics of a model version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelMetrics {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mae: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rmse: Option<f64>,
    /// Share of test values inside the 90 % interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage90: Option<f64>,
    /// Weather inputs the spec asked for that the data did not have (`temp`, `pres`, `dewp`, `rain`, `wspm`,
    /// `wd`): the version was trained without the features that need them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs_absent: Vec<String>,
}

impl ConditionedStatus for PredictiveModelStatus {
    fn observed_generation(&self) -> Option<i64> {
        self.observed_generation
    }
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl PredictiveModelSpec {
    /// The part of the spec that training depends on (the serving replicas, for instance, are not): what the
    /// training Job (or `airq up`) hands `airq-predictive train`.
    pub fn training_spec(&self) -> serde_json::Value {
        serde_json::json!({
            "target": self.target,
            "horizonHours": self.horizon_hours,
            "confidenceLevels": self.confidence_levels,
            "algorithm": self.algorithm,
            "features": self.features,
            "training": { "from": self.training.from, "to": self.training.to,
                "calibrationFraction": self.training.calibration_fraction },
        })
    }

    /// The revision of the training-relevant spec and the retrain request: a new one means a new training.
    pub fn revision(&self) -> String {
        crate::fingerprint(&serde_json::json!({ "spec": self.training_spec(), "retrainRequest": self.retrain_request }))
    }
}

/// The name of the Deployment and the Service serving model `model`.
pub fn serving_name(model: &str) -> String {
    format!("model-{model}")
}

/// The name of the Job that trains model `model` for the spec with revision `revision` (`PredictiveModelSpec::revision`).
pub fn training_job_name(model: &str, revision: &str) -> String {
    format!("model-{model}-train-{revision}")
}

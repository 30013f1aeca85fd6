//! What a finished Job hands back to the operator: its container writes one of these as JSON to
//! `/dev/termination-log`, and the operator reads it from the pod's terminated state into the resource's status.

use serde::{Deserialize, Serialize};

/// Where a Job's container writes its report.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// The outcome of a load run (`airq-etl load`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LoadReport {
    pub rows_inserted: i64,
    pub rows_updated: i64,
    pub rows_rejected: i64,
    /// The newest measurement time now stored for this schedule (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<String>,
    /// What was unusual about the run against the schedule's earlier runs (its duration, the values it read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anomalies: Vec<String>,
}

/// The outcome of a training run (`airq-predictive train`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TrainingReport {
    /// The model version stored in the database.
    pub model_version: String,
    /// Hourly mean absolute error on the test period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mae: Option<f64>,
    /// Hourly root mean squared error on the test period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rmse: Option<f64>,
    /// Share of test values inside the 90 % interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage90: Option<f64>,
    /// Weather inputs the spec asked for that the data did not have: the model was trained without the features
    /// that need them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs_absent: Vec<String>,
}

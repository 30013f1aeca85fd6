//! `EtlSchedule`: where measurements come from and when they are loaded. Becomes a CronJob running the ETL image
//! (or a Job for a one-off run, a backfill, or a run requested by hand).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{ConditionedStatus, DatabaseRef, PodOptions, SecretKeyRef};

/// A load of measurements into airq's database, on a schedule or once.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "airq.dev",
    version = "v1alpha1",
    kind = "EtlSchedule",
    namespaced,
    status = "EtlScheduleStatus",
    shortname = "etl",
    category = "airq",
    doc = "A load of measurements from an external source (OpenAQ, Open-Meteo, a CSV file) into airq's database, on a cron schedule or once.",
    printcolumn(name = "Source", type_ = "string", json_path = ".status.source"),
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Suspended", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(name = "Last Run", type_ = "date", json_path = ".status.lastRun.completionTime"),
    printcolumn(name = "Rows", type_ = "integer", json_path = ".status.lastRun.rowsInserted", priority = 1),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 40").message("metadata.name: at most 40 characters (it prefixes the names of the CronJob etl-<name> and of its Jobs)"),
    validation = Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name: only lower-case letters, digits and '-', starting and ending with a letter or digit (it names the CronJob and its Jobs)"),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.mode != 'backfill' || has(self.backfill)").message("mode backfill needs spec.backfill with from and to"),
    validation = Rule::new("!(self.mode == 'backfill' && has(self.schedule))").message("a backfill runs once: remove spec.schedule, or use mode incremental"),
)]
pub struct EtlScheduleSpec {
    /// Where the measurements come from: exactly one of `csv`, `openaq` or `openMeteo`.
    pub source: EtlSource,
    /// When to load, in cron syntax (`minute hour day-of-month month day-of-week`, e.g. `"15 * * * *"`). Absent:
    /// load once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Time zone of the schedule (an IANA name such as `Asia/Shanghai`); UTC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// `incremental`: load what is newer than the stored watermark. `backfill`: load the range in `backfill`.
    #[serde(default)]
    pub mode: LoadMode,
    /// The range a backfill loads, in chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<Backfill>,
    /// Pause the schedule; runs already started finish.
    #[serde(default)]
    pub suspend: bool,
    /// What to do when a run is due while the previous one still runs.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// How many successful runs to keep.
    #[serde(default = "default_successful_history")]
    #[schemars(range(min = 0, max = 100))]
    pub successful_jobs_history_limit: i32,
    /// How many failed runs to keep.
    #[serde(default = "default_failed_history")]
    #[schemars(range(min = 0, max = 100))]
    pub failed_jobs_history_limit: i32,
    /// Change this value (any string, e.g. a timestamp) to run a load now, outside the schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_request: Option<String>,
    /// The Secret holding the database URL.
    #[serde(default)]
    pub database: DatabaseRef,
    /// The ETL image; the operator's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Resources and node placement of the load's pods.
    #[serde(default, flatten)]
    pub pod: PodOptions,
}

fn default_successful_history() -> i32 {
    3
}

fn default_failed_history() -> i32 {
    1
}

/// Where the measurements come from: exactly one source.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.csv), has(self.openaq), has(self.openMeteo)].filter(x, x).size() == 1").message("set exactly one of csv, openaq or openMeteo"))]
pub struct EtlSource {
    /// A CSV file, plain or gzip-compressed, from a URL or a path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv: Option<CsvSource>,
    /// The OpenAQ v3 API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openaq: Option<OpenAqSource>,
    /// The Open-Meteo air-quality API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_meteo: Option<OpenMeteoSource>,
}

impl EtlSource {
    /// The kind of source, as shown by `kubectl get`: `csv`, `openaq` or `openMeteo`.
    pub fn kind(&self) -> &'static str {
        match (&self.csv, &self.openaq, &self.open_meteo) {
            (Some(_), None, None) => "csv",
            (None, Some(_), None) => "openaq",
            (None, None, Some(_)) => "openMeteo",
            _ => "invalid",
        }
    }
}

/// A CSV file of measurements.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CsvSource {
    /// An `http(s)://` URL, or a path in the pod (a mounted volume) or on the machine in one-machine mode. Gzip is
    /// detected and decompressed. A folder loads every `.csv` and `.csv.gz` file in it; so does a URL ending in `/`,
    /// read as the folder's index (a web server's directory listing, or a list of files one per line).
    #[schemars(length(min = 1))]
    pub url: String,
    /// The layout of the file.
    #[serde(default)]
    pub format: CsvFormat,
}

/// The layout of a CSV file.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "camelCase")]
pub enum CsvFormat {
    /// The Beijing multi-site files: one row per station and hour, one column per pollutant, local time, `NA`.
    #[default]
    Beijing,
    /// One measurement per row: `station,parameter,time,value,unit`.
    Long,
}

/// Measurements from the OpenAQ v3 API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenAqSource {
    /// OpenAQ location ids to load.
    #[schemars(length(min = 1))]
    pub locations: Vec<i64>,
    /// Parameters to load (e.g. `pm25`, `no2`, `o3`); all the locations measure when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<String>,
    /// The Secret key holding the OpenAQ API key.
    pub api_key_secret: SecretKeyRef,
    /// The API's base URL; `https://api.openaq.org` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
}

/// Measurements from the Open-Meteo air-quality API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenMeteoSource {
    /// The points to load, each stored as a station.
    #[schemars(length(min = 1))]
    pub points: Vec<GeoPoint>,
    /// Hourly variables to load (e.g. `pm2_5`, `pm10`, `nitrogen_dioxide`, `ozone`).
    #[schemars(length(min = 1))]
    pub hourly: Vec<String>,
    /// The API's base URL; `https://air-quality-api.open-meteo.com` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
}

/// A named point.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GeoPoint {
    /// The station name the point's measurements are stored under.
    #[schemars(length(min = 1))]
    pub station: String,
    /// Latitude in degrees.
    #[schemars(range(min = -90.0, max = 90.0))]
    pub latitude: f64,
    /// Longitude in degrees.
    #[schemars(range(min = -180.0, max = 180.0))]
    pub longitude: f64,
}

/// How a run chooses what to load.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum LoadMode {
    /// From the stored watermark to now.
    #[default]
    Incremental,
    /// The range in `spec.backfill`.
    Backfill,
}

/// A date range loaded in chunks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.from < self.to").message("backfill.from must be before backfill.to"))]
pub struct Backfill {
    /// First day loaded (`YYYY-MM-DD`, UTC).
    #[schemars(regex(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"), length(max = 10))]
    pub from: String,
    /// Day after the last one loaded (`YYYY-MM-DD`, UTC, exclusive).
    #[schemars(regex(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"), length(max = 10))]
    pub to: String,
    /// Days per chunk.
    #[serde(default = "default_chunk_days")]
    #[schemars(range(min = 1, max = 366))]
    pub chunk_days: u32,
    /// Chunks loaded at the same time.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1, max = 32))]
    pub parallelism: u32,
}

fn default_chunk_days() -> u32 {
    30
}

fn default_parallelism() -> u32 {
    2
}

/// What to do when a run is due while the previous one still runs (as a CronJob's `concurrencyPolicy`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Start the new run too.
    Allow,
    /// Skip the new run.
    #[default]
    Forbid,
    /// Stop the running one and start the new one.
    Replace,
}

impl ConcurrencyPolicy {
    /// The CronJob field value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "Allow",
            Self::Forbid => "Forbid",
            Self::Replace => "Replace",
        }
    }
}

/// What the operator last saw of the loads.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtlScheduleStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: the schedule (or the one-off run) is in place and its last run did not fail.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The kind of source (`csv`, `openaq`, `openMeteo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// When the CronJob last started a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// When a run last succeeded (kept while later runs fail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_time: Option<Time>,
    /// The last run that finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<LoadRunStatus>,
    /// The newest measurement time loaded (an incremental run starts after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<String>,
}

/// A finished run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadRunStatus {
    /// The Job that ran it.
    pub job: String,
    /// Whether it succeeded.
    pub succeeded: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Measurements added.
    #[serde(default)]
    pub rows_inserted: i64,
    /// Measurements whose value changed.
    #[serde(default)]
    pub rows_updated: i64,
    /// Rows refused, each stored with its reason.
    #[serde(default)]
    pub rows_rejected: i64,
    /// What went wrong, for a failed run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl ConditionedStatus for EtlScheduleStatus {
    fn observed_generation(&self) -> Option<i64> {
        self.observed_generation
    }
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl EtlScheduleSpec {
    /// What a load does: the part of the spec the ETL command reads (`AIRQ_LOAD_SPEC`).
    pub fn load_spec(&self) -> serde_json::Value {
        serde_json::json!({ "source": self.source, "mode": self.mode, "backfill": self.backfill })
    }
}

/// The name of the Job that runs a load for `spec.runRequest` = `request` of EtlSchedule `schedule`.
pub fn run_job_name(schedule: &str, request: &str) -> String {
    format!("etl-{schedule}-run-{}", crate::fingerprint(&serde_json::json!(request)))
}

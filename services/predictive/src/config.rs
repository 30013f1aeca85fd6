//! The predictive binary's commands and flags, each flag also an `AIRQ_*` environment variable.

use std::path::PathBuf;

use airq_api::etl::CsvFormat;
use airq_core::config::{DatabaseArgs, LogArgs, ServeArgs};
use clap::{Args, Parser, Subcommand};

/// Training, testing and forecasting of contamination with calibrated intervals.
#[derive(Debug, Clone, Parser)]
#[command(name = "airq-predictive", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Without a command: the flags of `serve`.
    #[command(flatten)]
    pub serve: Option<Config>,
}

impl Cli {
    /// The command to run: `serve` when none is named, its flags parsed from `args` (the process's arguments).
    pub fn into_command<I, T>(self, args: I) -> Result<Command, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        match self.command {
            Some(command) => Ok(command),
            None => Ok(Command::Serve(<ServeOnly as Parser>::try_parse_from(args)?.config)),
        }
    }
}

#[derive(Debug, Clone, Parser)]
#[command(name = "airq-predictive")]
struct ServeOnly {
    #[command(flatten)]
    config: Config,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve the forecasting and training API (the default).
    Serve(Config),
    /// Train a model version and store it: what a PredictiveModel's training Job runs.
    Train(TrainArgs),
    /// Run the evaluation protocol (fit, calibrate, test) for a spec or for every algorithm, and report the scores.
    Evaluate(Box<EvaluateArgs>),
    /// Forecast from a stored model version.
    Forecast(ForecastArgs),
}

/// The HTTP server's flags.
#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Serve only this model, as a PredictiveModel's Deployment does; every model
    /// when absent.
    #[arg(long, env = "AIRQ_MODEL")]
    pub model: Option<String>,
    /// The version of `--model` to serve; its newest when absent.
    #[arg(long = "model-version", env = "AIRQ_MODEL_VERSION", requires = "model")]
    pub model_version: Option<String>,
    /// Seconds between two comparisons of `--model`'s forecasts with the truth newly stored (its error is followed
    /// for anomalies); 0 turns them off. Only with `--model`.
    #[arg(long, env = "AIRQ_SCORE_INTERVAL_SECONDS", default_value_t = 300)]
    pub score_interval_seconds: u64,
}

/// Where a spec comes from.
#[derive(Debug, Clone, Args)]
#[group(id = "spec_source", multiple = false)]
pub struct SpecArgs {
    /// The training-relevant spec as JSON (`{"target": …, "algorithm": …, "features": …, "training": …}`), as the
    /// operator passes it.
    #[arg(long, env = "AIRQ_MODEL_SPEC", conflicts_with = "spec_file")]
    pub spec: Option<String>,
    /// The same, from a file (JSON or YAML; a whole PredictiveModel manifest is accepted and its spec used).
    #[arg(long)]
    pub spec_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// The model's name (the PredictiveModel's, from the operator).
    #[arg(long, env = "AIRQ_MODEL")]
    pub name: String,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// The revision of the spec the operator trains (recorded with the version).
    #[arg(long, env = "AIRQ_MODEL_REVISION")]
    pub revision: Option<String>,
    /// Train from CSV files (a file or a folder) instead of the database's measurements; the model is still
    /// stored in the database.
    #[arg(long)]
    pub csv: Option<String>,
    /// The layout of the `--csv` files.
    #[arg(long = "format", id = "csv_format", value_enum, default_value_t = CsvFormat::Beijing, requires = "csv")]
    pub csv_format: CsvFormat,
    /// Where to write the JSON report for the operator; `/dev/termination-log` when it exists.
    #[arg(long, env = "AIRQ_REPORT_FILE")]
    pub report_file: Option<PathBuf>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Evaluate every algorithm of the report (the baselines included) instead of one spec.
    #[arg(long, conflicts_with_all = ["spec", "spec_file"])]
    pub all: bool,
    /// Pollutants evaluated with `--all`.
    #[arg(long, value_delimiter = ',', default_value = "pm25,no2,o3")]
    pub pollutants: Vec<String>,
    /// Hours ahead for every spec evaluated (instead of each spec's `horizonHours`), 1 to 168; beyond 24 the table
    /// adds the scores by day ahead (hours 1–24, 25–48, 49–72 and 145–168).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=168))]
    pub horizon: Option<u32>,
    /// The unit every spec evaluated trains and is scored in (instead of each spec's `target.unit`): `ug/m3`,
    /// `mg/m3`, or for the gases `ppb` or `ppm` — e.g. to score NO2 and O3 loaded in ppb in ppb.
    #[arg(long, value_parser = ["ug/m3", "mg/m3", "ppb", "ppm"])]
    pub unit: Option<String>,
    /// Read the data from CSV files (a file or a folder) instead of the database.
    #[arg(long)]
    pub csv: Option<String>,
    /// The layout of the `--csv` files: `beijing` (one row per station and hour, local time) or `long` (one
    /// measurement per row: `station,parameter,time,value,unit`, UTC).
    #[arg(long = "format", id = "csv_format", value_enum, default_value_t = CsvFormat::Beijing, requires = "csv")]
    pub csv_format: CsvFormat,
    /// First local day fitted on.
    #[arg(long, default_value = "2013-03-01")]
    pub fit_from: String,
    /// First local day of the calibration period (fitting ends the day before).
    #[arg(long, default_value = "2015-03-01")]
    pub calibrate_from: String,
    /// First local day of the test period.
    #[arg(long, default_value = "2016-03-01")]
    pub test_from: String,
    /// Day after the test period.
    #[arg(long, default_value = "2017-03-01")]
    pub test_to: String,
    /// Local hour at which the daily forecasts are issued.
    #[arg(long, default_value_t = 23)]
    pub origin_hour: u32,
    /// Offset of local time from UTC, in hours, for the days and the origin hour. By default the one the files
    /// state: 8 for the Beijing files (Beijing time), a long file's own (`2016-03-01T23:00:00+01:00`: 1; its
    /// standard offset where daylight saving time moves it); 0 (UTC) for UTC times and the database.
    #[arg(long, allow_hyphen_values = true, value_parser = clap::value_parser!(i32).range(-12..=14))]
    pub utc_offset: Option<i32>,
    /// Write the table as Markdown to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Compare with other libraries: write the spec's fitting and test features, truths and airq's forecasts to
    /// this folder (see services/predictive/benches/sklearn_knn.py and lightgbm_compare.py).
    #[arg(long, requires = "spec_source")]
    pub export: Option<PathBuf>,
    /// Choose the spec's parameters first by rolling-origin cross-validation inside the fitting period (never the
    /// calibration or test periods): `path=value,value,…` over the spec's fields, repeated for a grid, e.g.
    /// `--tune algorithm.gbm.learningRate=0.03,0.05,0.1 --tune algorithm.gbm.maxLeaves=15,31,63`. The candidate
    /// with the lowest mean MAE over the folds is then evaluated as usual; the folds' table comes first.
    #[arg(long, requires = "spec_source", value_name = "PATH=VALUES")]
    pub tune: Vec<String>,
    /// Folds of the cross-validation: validation windows of `--fold-days` ending at the calibration period's start,
    /// each fitted on everything before it (less a calibration slice of `--fold-calibration-days`).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=12))]
    pub folds: u32,
    /// Days of each fold's validation window.
    #[arg(long, default_value_t = 91, value_parser = clap::value_parser!(u32).range(7..=366))]
    pub fold_days: u32,
    /// Days before each validation window that calibrate its intervals (not scored by the tuning, but training
    /// needs them).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(7..=366))]
    pub fold_calibration_days: u32,
    /// Write every score as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Store the evaluation in the database for this model name (needs a database).
    #[arg(long, requires = "database_url")]
    pub name: Option<String>,
    /// Read the data from (and store evaluations in) this database: `postgres://…` or `sqlite://…`.
    #[arg(long = "database-url", env = "AIRQ_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ForecastArgs {
    /// The model's name.
    #[arg(long, env = "AIRQ_MODEL")]
    pub name: String,
    /// The model version; the newest when absent.
    #[arg(long = "model-version", env = "AIRQ_MODEL_VERSION")]
    pub version: Option<String>,
    /// The station's code.
    #[arg(long)]
    pub station: String,
    /// The hour forecast (RFC 3339); every hour of the horizon when absent.
    #[arg(long)]
    pub at: Option<String>,
    /// Forecast from this hour (RFC 3339) instead of the station's newest data.
    #[arg(long)]
    pub origin: Option<String>,
    /// Confidence levels of the intervals.
    #[arg(long, value_delimiter = ',', default_value = "0.9")]
    pub confidence: Vec<f64>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

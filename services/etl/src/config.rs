//! The etl binary's commands and flags, each flag also an `AIRQ_*` environment variable.

use airq_api::etl::{CsvFormat, LoadMode};
use airq_core::config::{DatabaseArgs, LogArgs, ServeArgs};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Incremental and bulk loads from external services (OpenAQ, Open-Meteo, CSV) into the database.
#[derive(Debug, Clone, Parser)]
#[command(name = "airq-etl", version, args_conflicts_with_subcommands = true)]
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
            // The top-level flags were accepted above; parsing them again as `serve` gives every default and
            // environment variable, and `serve`'s own message when one is missing.
            None => Ok(Command::Serve(<ServeOnly as Parser>::try_parse_from(args)?.config)),
        }
    }
}

/// `serve` parsed on its own, for the error naming its missing flags.
#[derive(Debug, Clone, Parser)]
#[command(name = "airq-etl")]
struct ServeOnly {
    #[command(flatten)]
    config: Config,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve the loading API (the default).
    Serve(Config),
    /// Run one load to the end and exit: what an EtlSchedule's Job runs, and a bulk load from a terminal.
    Load(LoadArgs),
}

/// The HTTP server's flags.
#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The OpenAQ API key, for OpenAQ loads requested through the API.
    #[arg(long, env = "AIRQ_OPENAQ_API_KEY", hide_env_values = true)]
    pub openaq_api_key: Option<String>,
}

/// Load modes, as flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// From the stored watermark to now.
    Incremental,
    /// The days from `--from` to `--to`.
    Backfill,
}

impl From<Mode> for LoadMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Incremental => LoadMode::Incremental,
            Mode::Backfill => LoadMode::Backfill,
        }
    }
}

/// What `load` loads: a whole spec (as the operator passes it), or a CSV source given by flags.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// The load's name; runs of the same name share a watermark. Default: the spec's source.
    #[arg(long, env = "AIRQ_LOAD_NAME")]
    pub name: Option<String>,
    /// The load as JSON: `{"source": {...}, "mode": "incremental"|"backfill", "backfill": {...}}` (an EtlSchedule's
    /// source, mode and backfill).
    #[arg(long, env = "AIRQ_LOAD_SPEC", conflicts_with = "csv")]
    pub spec: Option<String>,
    /// A CSV file, a folder of CSV files or an http(s) URL (gzip or plain).
    #[arg(long)]
    pub csv: Option<String>,
    /// The layout of the CSV files.
    #[arg(long = "format", id = "csv_format", value_enum, default_value_t = CsvFormat::Beijing)]
    pub csv_format: CsvFormat,
    /// `incremental` (after the watermark) or `backfill` (`--from` to `--to`).
    #[arg(long, value_enum, default_value_t = Mode::Incremental)]
    pub mode: Mode,
    /// First day of a backfill (YYYY-MM-DD, UTC).
    #[arg(long, requires = "to")]
    pub from: Option<String>,
    /// Day after the last one of a backfill (YYYY-MM-DD, UTC).
    #[arg(long, requires = "from")]
    pub to: Option<String>,
    /// Files or date chunks read at the same time (and transactions written at the same time on PostgreSQL).
    #[arg(long, env = "AIRQ_LOAD_PARALLELISM", default_value_t = 2)]
    pub parallelism: usize,
    /// Where to write the JSON report for the operator; `/dev/termination-log` when it exists.
    #[arg(long, env = "AIRQ_REPORT_FILE")]
    pub report_file: Option<std::path::PathBuf>,
    /// The OpenAQ API key (for an OpenAQ source).
    #[arg(long, env = "AIRQ_OPENAQ_API_KEY", hide_env_values = true)]
    pub openaq_api_key: Option<String>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

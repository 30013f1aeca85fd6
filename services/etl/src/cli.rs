//! `airq-etl load`: one load from a terminal (a progress bar and a summary) or from a Job (JSON logs and a report
//! in the termination log for the operator).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airq_api::etl::{Backfill, CsvSource, EtlSource, LoadMode};
use airq_api::reports::TERMINATION_LOG;
use airq_core::db::Database;
use airq_core::store::Store;
use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::config::LoadArgs;
use crate::load::{self, LoadRequest, LoadSpec};

/// The load `args` describe.
pub fn request(args: &LoadArgs) -> anyhow::Result<LoadRequest> {
    let spec = match (&args.spec, &args.csv) {
        (Some(json), _) => serde_json::from_str::<LoadSpec>(json)
            .with_context(|| format!("--spec (AIRQ_LOAD_SPEC) is not a load specification: {json}"))?,
        (None, Some(url)) => LoadSpec {
            source: EtlSource {
                csv: Some(CsvSource {
                    url: url.clone(),
                    format: args.csv_format,
                }),
                ..EtlSource::default()
            },
            mode: args.mode.into(),
            backfill: match (&args.from, &args.to) {
                (Some(from), Some(to)) => Some(Backfill {
                    from: from.clone(),
                    to: to.clone(),
                    chunk_days: 30,
                    parallelism: args.parallelism as u32,
                }),
                _ => None,
            },
        },
        (None, None) => anyhow::bail!("nothing to load: give --csv PATH (or a URL), or --spec JSON (AIRQ_LOAD_SPEC)"),
    };
    if spec.source.kind() == "invalid" {
        anyhow::bail!("the load's source must have exactly one of csv, openaq or openMeteo");
    }
    if spec.mode == LoadMode::Backfill && spec.backfill.is_none() {
        anyhow::bail!("mode backfill needs --from and --to (or backfill in the spec)");
    }
    let name = args.name.clone().unwrap_or_else(|| match &spec.source.csv {
        Some(csv) => format!("csv:{}", csv.url),
        None => spec.source.kind().to_owned(),
    });
    let parallelism = spec
        .backfill
        .as_ref()
        .map_or(args.parallelism, |b| b.parallelism as usize)
        .max(1);
    Ok(LoadRequest {
        name,
        spec,
        requested_by: if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
            "job"
        } else {
            "cli"
        }
        .to_owned(),
        parallelism,
        openaq_api_key: args.openaq_api_key.clone(),
    })
}

fn report_path(args: &LoadArgs) -> Option<PathBuf> {
    args.report_file.clone().or_else(|| {
        Path::new(TERMINATION_LOG)
            .exists()
            .then(|| PathBuf::from(TERMINATION_LOG))
    })
}

/// A load's progress bar (bytes read of the input) on a terminal; hidden otherwise (the load logs instead).
pub fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left) {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// The logging of a load: on a terminal, unless the log level or format was chosen (flag or variable), warnings
/// only, readable, so that the progress bar and the summary are what a person sees; JSON lines otherwise.
fn load_logging(log: &airq_core::config::LogArgs) -> airq_core::config::LogArgs {
    let chosen = ["AIRQ_LOG_LEVEL", "AIRQ_LOG_FORMAT"]
        .iter()
        .any(|name| std::env::var_os(name).is_some())
        || std::env::args_os().any(|arg| {
            let arg = arg.to_string_lossy();
            arg.starts_with("--log-level") || arg.starts_with("--log-format")
        });
    if chosen || !std::io::stderr().is_terminal() {
        return log.clone();
    }
    airq_core::config::LogArgs {
        level: "warn".to_owned(),
        format: airq_core::config::LogFormat::Pretty,
        ..log.clone()
    }
}

/// Runs `airq-etl load`.
pub async fn load(args: LoadArgs) -> anyhow::Result<()> {
    // Its stdout is the load's summary: logs go to stderr.
    let _telemetry = airq_core::telemetry::init("etl", &load_logging(&args.log).on_stderr())?;
    let request = request(&args)?;
    let db = Database::connect(&args.database).await?;
    let store = Store::new(db.clone());
    let progress = progress_bar();
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        airq_core::http::shutdown_signal().await;
        on_signal.cancel();
    });
    let result = load::run(&store, &request, &progress, &stop).await;
    progress.finish_and_clear();
    db.close().await;
    let report = report_path(&args);
    match result {
        Ok(outcome) => {
            if let Some(path) = &report {
                let text = serde_json::to_string(&outcome.report())?;
                std::fs::write(path, text).with_context(|| format!("cannot write the report to {}", path.display()))?;
            }
            if std::io::stdout().is_terminal() {
                let c = &outcome.counts;
                println!(
                    "load {} (run {}) finished in {:.1} s: {} values read, {} inserted, {} updated, {} unchanged, \
                     {} rejected, {} flagged; {} marked stuck, {} marked as jumps{}",
                    request.name,
                    outcome.run_id,
                    outcome.seconds,
                    outcome.values_read,
                    c.inserted,
                    c.updated,
                    c.unchanged,
                    c.rejected,
                    c.flagged,
                    outcome.marks.stuck,
                    outcome.marks.jump,
                    outcome
                        .watermark
                        .map(|w| format!("; watermark {}", w.to_rfc3339()))
                        .unwrap_or_default()
                );
                for anomaly in &outcome.anomalies {
                    println!("unusual run: {anomaly}");
                }
            } else {
                // For a program: the report as one JSON line (the logs are on stderr).
                println!("{}", serde_json::to_string(&outcome.report())?);
            }
            Ok(())
        }
        Err(error) => {
            if let Some(path) = &report {
                // The operator shows this text as the run's message.
                let _ = std::fs::write(path, error.to_string());
            }
            Err(error.into())
        }
    }
}

//! A load: the run recorded, the source read by its connector into chunks, each chunk written in one transaction
//! (several at a time on PostgreSQL), the watermark advanced when everything is in.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airq_api::etl::{Backfill, CsvFormat, CsvSource, EtlSource, LoadMode};
use airq_api::reports::LoadReport;
use airq_core::db::Database;
use airq_core::store::{NewRun, RunEnd, Store};
use chrono::{DateTime, NaiveDate, Utc};
use futures::StreamExt;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use crate::marks::{MarkCounts, Touched};
use crate::source::{Chunk, SourceError, TimeRange, csv, open_meteo, openaq};
use crate::write::{Batch, Measurement, WriteCounts};

/// What to load: the part of an EtlSchedule the operator hands the Job in `AIRQ_LOAD_SPEC`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadSpec {
    pub source: EtlSource,
    #[serde(default)]
    pub mode: LoadMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<Backfill>,
}

/// A load to run.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    /// The load's name: runs of the same name share a watermark.
    pub name: String,
    pub spec: LoadSpec,
    /// Who asked (`cli`, `job`, `api`).
    pub requested_by: String,
    /// Files or chunks read at the same time; writers at the same time on PostgreSQL.
    pub parallelism: usize,
    /// The OpenAQ API key, when the source is OpenAQ.
    pub openaq_api_key: Option<String>,
}

impl LoadRequest {
    /// A one-off load of the CSV files at `url` (a file, a folder or an http(s) URL) in `format`, incremental from
    /// the load's watermark.
    pub fn csv(name: &str, url: &str, format: CsvFormat, requested_by: &str) -> Self {
        Self {
            name: name.to_owned(),
            spec: LoadSpec {
                source: EtlSource {
                    csv: Some(CsvSource {
                        url: url.to_owned(),
                        format,
                    }),
                    ..EtlSource::default()
                },
                mode: LoadMode::Incremental,
                backfill: None,
            },
            requested_by: requested_by.to_owned(),
            parallelism: 2,
            openaq_api_key: None,
        }
    }

    /// A backfill of the CSV files at `url` over the days `from` to `to` (`YYYY-MM-DD`, UTC, `to` exclusive).
    pub fn csv_backfill(
        name: &str,
        url: &str,
        format: CsvFormat,
        (from, to): (&str, &str),
        requested_by: &str,
    ) -> Self {
        let mut request = Self::csv(name, url, format, requested_by);
        request.spec.mode = LoadMode::Backfill;
        request.spec.backfill = Some(Backfill {
            from: from.to_owned(),
            to: to.to_owned(),
            chunk_days: 30,
            parallelism: 2,
        });
        request
    }
}

/// Why a load failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid load: {0}")]
    Invalid(String),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] airq_core::store::Error),
    #[error("the load was stopped: {0}")]
    Stopped(String),
}

/// What a finished load did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadOutcome {
    pub run_id: i64,
    pub values_read: i64,
    pub counts: WriteCounts,
    /// The quality marks (stuck, jump) of the touched series' ranges once the load's values were in.
    pub marks: MarkCounts,
    /// What was unusual about this run against the load's earlier runs (duration, values read).
    pub anomalies: Vec<String>,
    pub watermark: Option<DateTime<Utc>>,
    pub seconds: f64,
}

impl LoadOutcome {
    /// The report a Job writes to its termination log for the operator.
    pub fn report(&self) -> LoadReport {
        LoadReport {
            rows_inserted: self.counts.inserted,
            rows_updated: self.counts.updated,
            rows_rejected: self.counts.rejected,
            watermark: self.watermark.map(|t| t.to_rfc3339()),
            anomalies: self.anomalies.clone(),
        }
    }
}

fn day(field: &str, text: &str) -> Result<i64, LoadError> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp())
        .ok_or_else(|| LoadError::Invalid(format!("{field}: {text:?} is not a date (YYYY-MM-DD)")))
}

/// The hours a run covers: after the watermark for an incremental run, the backfill's days otherwise.
async fn range(store: &Store, request: &LoadRequest) -> Result<TimeRange, LoadError> {
    match request.spec.mode {
        LoadMode::Incremental => {
            let watermark = store.watermark(&request.name).await?;
            Ok(TimeRange {
                from: watermark.map(|t| t.timestamp() + 1),
                to: None,
            })
        }
        LoadMode::Backfill => {
            let backfill =
                request.spec.backfill.as_ref().ok_or_else(|| {
                    LoadError::Invalid("mode backfill needs backfill.from and backfill.to".to_owned())
                })?;
            let (from, to) = (day("backfill.from", &backfill.from)?, day("backfill.to", &backfill.to)?);
            if from >= to {
                return Err(LoadError::Invalid(format!(
                    "backfill.from {} must be before backfill.to {}",
                    backfill.from, backfill.to
                )));
            }
            Ok(TimeRange {
                from: Some(from),
                to: Some(to),
            })
        }
    }
}

fn mode_name(mode: LoadMode) -> &'static str {
    match mode {
        LoadMode::Incremental => "incremental",
        LoadMode::Backfill => "backfill",
    }
}

/// A connector at work: the chunks it sends, its task (ending with the source's outcome), and the total progress
/// units when known (bytes of the files).
type Started = (
    mpsc::Receiver<Chunk>,
    tokio::task::JoinHandle<Result<(), SourceError>>,
    Option<u64>,
);

/// Starts the connector of `spec.source`.
async fn start_source(request: &LoadRequest, range: TimeRange) -> Result<Started, LoadError> {
    let parallelism = request.parallelism.max(1);
    let (tx, rx) = mpsc::channel::<Chunk>(parallelism * 2);
    let source = &request.spec.source;
    if let Some(csv_source) = &source.csv {
        let inputs = csv::resolve(&csv_source.url).await?;
        let total = inputs.iter().map(csv::Input::size).sum::<Option<u64>>();
        let format = csv_source.format;
        let task = tokio::spawn(read_csv_inputs(inputs, format, range, parallelism, tx));
        return Ok((rx, task, total));
    }
    let chunk_days = request.spec.backfill.as_ref().map_or(30, |b| b.chunk_days);
    if let Some(openaq) = &source.openaq {
        let task = tokio::spawn(openaq::read(
            openaq.clone(),
            request.openaq_api_key.clone(),
            range,
            chunk_days,
            parallelism,
            tx,
        ));
        return Ok((rx, task, None));
    }
    if let Some(open_meteo) = &source.open_meteo {
        let task = tokio::spawn(open_meteo::read(open_meteo.clone(), range, chunk_days, parallelism, tx));
        return Ok((rx, task, None));
    }
    Err(LoadError::Invalid(
        "the load's source must have exactly one of csv, openaq or openMeteo".to_owned(),
    ))
}

async fn read_csv_inputs(
    inputs: Vec<csv::Input>,
    format: CsvFormat,
    range: TimeRange,
    parallelism: usize,
    tx: mpsc::Sender<Chunk>,
) -> Result<(), SourceError> {
    let results = futures::stream::iter(inputs.into_iter().map(|input| {
        let tx = tx.clone();
        async move {
            let name = input.name();
            match input {
                csv::Input::File { path, .. } => tokio::task::spawn_blocking(move || {
                    let file = std::fs::File::open(&path).map_err(|e| SourceError::Read {
                        input: name.clone(),
                        detail: e.to_string(),
                    })?;
                    csv::read(&name, file, format, range, &tx)
                })
                .await
                .map_err(|e| SourceError::Read {
                    input: "a CSV reader task".to_owned(),
                    detail: e.to_string(),
                })?,
                csv::Input::Url(url) => read_csv_url(url, format, range, tx).await,
            }
        }
    }))
    .buffer_unordered(parallelism)
    .collect::<Vec<_>>()
    .await;
    results.into_iter().collect()
}

async fn read_csv_url(
    url: String,
    format: CsvFormat,
    range: TimeRange,
    tx: mpsc::Sender<Chunk>,
) -> Result<(), SourceError> {
    let http = |detail: String| SourceError::Http {
        input: url.clone(),
        detail,
    };
    let response = crate::source::http::client()?
        .get(&url)
        .send()
        .await
        .map_err(|e| http(e.to_string()))?;
    if !response.status().is_success() {
        return Err(http(format!("the server answered {}", response.status())));
    }
    let stream = response
        .bytes_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other));
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let name = url.clone();
    tokio::task::spawn_blocking(move || csv::read(&name, reader, format, range, &tx))
        .await
        .map_err(|e| http(e.to_string()))?
}

/// Station ids by code, filled as chunks describe stations.
type Stations = HashMap<String, i64>;

/// Runs a load to the end. The run is recorded first, so a failure is recorded too.
pub async fn run(
    store: &Store,
    request: &LoadRequest,
    progress: &ProgressBar,
    stop: &CancellationToken,
) -> Result<LoadOutcome, LoadError> {
    run_reporting_start(store, request, progress, stop, |_| ()).await
}

/// [`run`] without a progress bar or a way to stop it early: loads that a program (or a test) waits for.
pub async fn run_to_end(store: &Store, request: &LoadRequest) -> Result<LoadOutcome, LoadError> {
    run(store, request, &ProgressBar::hidden(), &CancellationToken::new()).await
}

/// [`run`], calling `on_start` with the run's id as soon as it is recorded.
pub async fn run_reporting_start(
    store: &Store,
    request: &LoadRequest,
    progress: &ProgressBar,
    stop: &CancellationToken,
    on_start: impl FnOnce(i64),
) -> Result<LoadOutcome, LoadError> {
    run_reporting(store, request, progress, stop, on_start, || ()).await
}

/// [`run_reporting_start`], also calling `on_stored` once every value is stored, before the series are checked for
/// quality marks (what reads only the values, e.g. a training, may start then).
pub async fn run_reporting(
    store: &Store,
    request: &LoadRequest,
    progress: &ProgressBar,
    stop: &CancellationToken,
    on_start: impl FnOnce(i64),
    on_stored: impl FnOnce(),
) -> Result<LoadOutcome, LoadError> {
    let started = Instant::now();
    let range = range(store, request).await?;
    let spec_json = serde_json::to_string(&request.spec).map_err(|e| LoadError::Invalid(e.to_string()))?;
    let handle = store
        .begin_run(&NewRun {
            name: request.name.clone(),
            source: request.spec.source.kind().to_owned(),
            mode: mode_name(request.spec.mode).to_owned(),
            spec: spec_json,
            requested_by: request.requested_by.clone(),
            range_from: range.from.and_then(|t| DateTime::from_timestamp(t, 0)),
            range_to: range.to.and_then(|t| DateTime::from_timestamp(t, 0)),
        })
        .await?;
    let run_id = handle.id;
    on_start(run_id);
    tracing::info!(run = run_id, load = %request.name, source = request.spec.source.kind(), "load started");
    let result = match load_chunks(store, request, run_id, range, progress, stop).await {
        // The marks come before the watermark: a load stopped while marking is run again over the same range.
        Ok((values_read, counts, newest, touched)) => {
            on_stored();
            mark(store, request, run_id, &touched, progress, stop)
                .await
                .map(|marks| (values_read, counts, newest, marks))
        }
        Err(error) => Err(error),
    };
    let source = request.spec.source.kind();
    let seconds = started.elapsed().as_secs_f64();
    match result {
        Ok((values_read, counts, newest, marks)) => {
            let watermark = newest.and_then(|t| DateTime::from_timestamp(t, 0));
            if let Some(watermark) = watermark {
                store.advance_watermark(&request.name, watermark).await?;
            }
            store
                .finish_run(
                    handle,
                    RunEnd::Succeeded {
                        stuck: marks.stuck,
                        jump: marks.jump,
                    },
                )
                .await?;
            metrics::histogram!("airq_etl_load_duration_seconds", "source" => source, "status" => "succeeded")
                .record(seconds);
            let watermark = store.watermark(&request.name).await?.or(watermark);
            tracing::info!(
                run = run_id,
                read = values_read,
                inserted = counts.inserted,
                updated = counts.updated,
                unchanged = counts.unchanged,
                rejected = counts.rejected,
                flagged = counts.flagged,
                stuck = marks.stuck,
                jump = marks.jump,
                seconds,
                "load finished"
            );
            // The load itself succeeded: a failure to judge it is logged, not the load's failure.
            let anomalies = match crate::anomalies::check(store, &request.name, run_id).await {
                Ok(found) => found.iter().map(crate::anomalies::Finding::describe).collect(),
                Err(e) => {
                    tracing::warn!(run = run_id, error = %e, "could not compare the run with earlier runs");
                    Vec::new()
                }
            };
            Ok(LoadOutcome {
                run_id,
                values_read,
                counts,
                marks,
                anomalies,
                watermark,
                seconds,
            })
        }
        Err(error) => {
            metrics::histogram!("airq_etl_load_duration_seconds", "source" => source, "status" => "failed")
                .record(seconds);
            if matches!(error, LoadError::Source(_)) {
                metrics::counter!("airq_etl_source_errors_total", "source" => source).increment(1);
            }
            let message = error.to_string();
            if matches!(error, LoadError::Stopped(_)) {
                // Asked for (Ctrl-C, SIGTERM): said once, by whoever asked, not as a failure.
                tracing::info!(run = run_id, reason = %message, "load stopped");
            } else {
                tracing::error!(run = run_id, error = %message, "load failed");
            }
            // The failure is recorded if the database still answers; the load's own error is what the caller sees.
            if let Err(e) = store.finish_run(handle, RunEnd::Failed(&message)).await {
                tracing::error!(run = run_id, error = %e, "could not record the failure of the load");
            }
            Err(error)
        }
    }
}

/// Recomputes the quality marks of the series the run touched; the run records their counts when it finishes.
async fn mark(
    store: &Store,
    request: &LoadRequest,
    run_id: i64,
    touched: &Touched,
    progress: &ProgressBar,
    stop: &CancellationToken,
) -> Result<MarkCounts, LoadError> {
    let parallelism = match store.database() {
        Database::Postgres(_) => request.parallelism.max(1),
        Database::Sqlite(_) => 1,
    };
    let started = Instant::now();
    let marking = crate::marks::mark(store, touched, Default::default(), parallelism, progress);
    let marks = tokio::select! {
        marks = marking => marks?,
        () = stop.cancelled() => return Err(LoadError::Stopped(
            "a signal asked the process to stop while the loaded series were checked; every value is stored, and \
             the next run of this load checks them again"
                .to_owned(),
        )),
    };
    tracing::info!(
        run = run_id,
        stuck = marks.stuck,
        jump = marks.jump,
        changed = marks.changed,
        seconds = started.elapsed().as_secs_f64(),
        "quality marks set"
    );
    Ok(marks)
}

async fn load_chunks(
    store: &Store,
    request: &LoadRequest,
    run_id: i64,
    range: TimeRange,
    progress: &ProgressBar,
    stop: &CancellationToken,
) -> Result<(i64, WriteCounts, Option<i64>, Touched), LoadError> {
    let (rx, reader, total) = start_source(request, range).await?;
    match total {
        Some(total) => progress.set_length(total),
        // API sources: requests done, without a total.
        None => progress.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos} requests {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        ),
    }
    // SQLite has one writer; PostgreSQL takes several transactions at once.
    let writers = match store.database() {
        Database::Postgres(_) => request.parallelism.max(1),
        Database::Sqlite(_) => 1,
    };
    let stations = Arc::new(Mutex::new(Stations::new()));
    let source = request.spec.source.kind();
    let mut last_log = Instant::now();
    let mut values_read = 0;
    let mut counts = WriteCounts::default();
    let mut newest: Option<i64> = None;
    let mut touched = Touched::default();
    let mut written = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|chunk| {
            let (store, stations) = (store.clone(), stations.clone());
            // A task of its own: a stop abandons the wait, never a transaction half-way (on SQLite a dropped
            // transaction would keep the write lock until its connection is used again, and the run's end could
            // not be recorded).
            let task = tokio::spawn(async move { write_chunk(&store, run_id, chunk, &stations).await });
            async move {
                task.await
                    .map_err(|e| LoadError::Stopped(format!("a batch's writer stopped unexpectedly: {e}")))?
            }
        })
        .buffer_unordered(writers);
    let mut failure = None;
    loop {
        let result = tokio::select! {
            next = written.next() => match next {
                Some(result) => result,
                None => break,
            },
            () = stop.cancelled() => {
                failure = Some(LoadError::Stopped(
                    "a signal asked the process to stop; whole batches written so far are kept, and the next run \
                     of this load fills in the rest"
                        .to_owned(),
                ));
                break;
            }
        };
        match result {
            Ok((read, written_counts, chunk_newest, units, chunk_touched)) => {
                values_read += read;
                counts += written_counts;
                newest = newest.max(chunk_newest);
                touched.merge(chunk_touched);
                progress.inc(units);
                progress.set_message(format!(
                    "{} inserted, {} updated, {} rejected",
                    counts.inserted, counts.updated, counts.rejected
                ));
                metrics::counter!("airq_etl_rows_total", "source" => source, "outcome" => "inserted")
                    .increment(written_counts.inserted as u64);
                metrics::counter!("airq_etl_rows_total", "source" => source, "outcome" => "updated")
                    .increment(written_counts.updated as u64);
                metrics::counter!("airq_etl_rows_total", "source" => source, "outcome" => "unchanged")
                    .increment(written_counts.unchanged as u64);
                metrics::counter!("airq_etl_rows_total", "source" => source, "outcome" => "rejected")
                    .increment(written_counts.rejected as u64);
                if last_log.elapsed() > Duration::from_secs(10) {
                    last_log = Instant::now();
                    tracing::info!(
                        run = run_id,
                        read = values_read,
                        inserted = counts.inserted,
                        rejected = counts.rejected,
                        done = progress.position(),
                        total = progress.length(),
                        "load progress"
                    );
                }
            }
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    // Dropping the stream closes the channel: readers still running stop at their next chunk.
    drop(written);
    let read_result = reader
        .await
        .map_err(|e| LoadError::Stopped(format!("the source reader stopped unexpectedly: {e}")))?;
    if let Some(error) = failure {
        return Err(error);
    }
    read_result?;
    Ok((values_read, counts, newest, touched))
}

/// Writes one chunk; returns (values read, counts, newest stored time, progress units, series touched).
async fn write_chunk(
    store: &Store,
    run_id: i64,
    chunk: Chunk,
    stations: &Mutex<Stations>,
) -> Result<(i64, WriteCounts, Option<i64>, u64, Touched), LoadError> {
    let mut measurements = Vec::with_capacity(chunk.observations.len());
    let mut newest = None;
    let mut touched = Touched::default();
    {
        let mut ids = stations.lock().await;
        for station in &chunk.stations {
            if !ids.contains_key(&station.code) {
                let id = store.ensure_station(station).await?;
                ids.insert(station.code.clone(), id);
            }
        }
        for o in &chunk.observations {
            let Some(&station_id) = ids.get(&*o.station) else {
                return Err(LoadError::Invalid(format!(
                    "internal: station {} was not described by its source",
                    o.station
                )));
            };
            newest = newest.max(Some(o.time));
            touched.add(station_id, o.parameter, o.time);
            measurements.push(Measurement {
                station_id,
                parameter: o.parameter,
                time: o.time,
                value: o.value,
                flags: o.flags,
            });
        }
    }
    let batch = Batch {
        measurements,
        rejected: chunk.rejected,
        values_read: chunk.values_read,
    };
    let counts = crate::write::write(store, run_id, &batch).await?;
    Ok((chunk.values_read, counts, newest, chunk.progress, touched))
}

//! The `train`, `evaluate` and `forecast` commands.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

use airq_api::etl::CsvFormat;
use airq_api::reports::{TERMINATION_LOG, TrainingReport};
use airq_core::db::Database;
use airq_core::store::Store;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::{EvaluateArgs, ForecastArgs, SpecArgs, TrainArgs};
use crate::data::{Dataset, HOUR};
use crate::evaluate::{Evaluation, Protocol};
use crate::forecast::{self, Request};
use crate::model::{Model, Plan, Progress};
use crate::registry::{Registry, parse_version};
use crate::spec::ModelSpec;

/// Shows training phases, forecasts made and epochs on a terminal; logs them otherwise.
pub struct TerminalProgress {
    bar: Option<ProgressBar>,
    label: String,
}

/// A phase without a count: a spinner and its name. One with a count: a bar of forecasts made.
fn phase_style(counted: bool) -> ProgressStyle {
    let template = if counted {
        "{spinner} {elapsed:>4} {prefix}: {msg} {wide_bar} {pos}/{len} forecasts ({eta} left)"
    } else {
        "{spinner} {elapsed:>4} {prefix}: {msg}"
    };
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

impl TerminalProgress {
    pub fn new(label: impl Into<String>) -> Self {
        let label = label.into();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(phase_style(false));
            bar.set_prefix(label.clone());
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            bar
        });
        Self { bar, label }
    }

    /// The same, drawn among `terminal`'s other bars (a load's, while this trains).
    pub fn shown_in(self, terminal: &indicatif::MultiProgress) -> Self {
        if let Some(bar) = &self.bar {
            terminal.add(bar.clone());
        }
        self
    }
}

impl Progress for TerminalProgress {
    fn phase(&self, name: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_style(phase_style(false));
                bar.set_message(name.to_owned());
            }
            None => tracing::info!(model = %self.label, phase = name, "training"),
        }
    }

    fn count(&self, done: usize, of: usize) {
        if let Some(bar) = &self.bar {
            if done == 0 {
                bar.set_style(phase_style(true));
                bar.reset_eta();
            }
            bar.set_length(of as u64);
            bar.set_position(done as u64);
        }
    }

    fn epoch(&self, epoch: usize, of: usize, validation_loss: f32) {
        match &self.bar {
            Some(bar) => {
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {elapsed:>4} {prefix}: {msg} {wide_bar} epoch {pos}/{len}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_length(of as u64);
                bar.set_position(epoch as u64);
                bar.set_message(format!("fit, validation loss {validation_loss:.4}"));
            }
            None => tracing::info!(model = %self.label, epoch, of, validation_loss, "training epoch"),
        }
    }

    fn finish(&self, message: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_style(phase_style(false));
                bar.finish_with_message(message.to_owned());
            }
            None => tracing::info!(model = %self.label, "{message}"),
        }
    }
}

impl Drop for TerminalProgress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar
            && !bar.is_finished()
        {
            bar.abandon();
        }
    }
}

/// The spec given by flags: JSON, or a JSON/YAML file (a whole PredictiveModel manifest is accepted).
pub fn read_spec(args: &SpecArgs) -> anyhow::Result<ModelSpec> {
    let value: serde_json::Value = match (&args.spec, &args.spec_file) {
        (Some(json), _) => serde_json::from_str(json).context("--spec / AIRQ_MODEL_SPEC is not JSON")?,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            serde_saphyr::from_str(&text).with_context(|| format!("{} is not JSON or YAML", path.display()))?
        }
        (None, None) => anyhow::bail!("give the spec with --spec, --spec-file or AIRQ_MODEL_SPEC"),
    };
    let value = match value.get("spec") {
        Some(spec) if value.get("kind").is_some() => spec.clone(),
        _ => value,
    };
    Ok(ModelSpec::from_json(&value)?)
}

async fn dataset(
    csv: Option<(&str, CsvFormat)>,
    store: Option<&Store>,
    spec: &ModelSpec,
    from: i64,
    to: i64,
) -> anyhow::Result<Dataset> {
    let pollutant = spec.pollutant()?;
    let mut data = match (csv, store) {
        (Some((location, format)), _) => Dataset::from_csv(location, format, pollutant).await?,
        (None, Some(store)) => Dataset::from_store(store, pollutant, &spec.target.stations, from, to).await?,
        (None, None) => anyhow::bail!("give --csv or a database"),
    };
    if csv.is_some() && !spec.target.stations.is_empty() {
        for code in &spec.target.stations {
            anyhow::ensure!(
                data.station(code).is_some(),
                "unknown station {code:?} in target.stations"
            );
        }
        data.stations.retain(|s| spec.target.stations.contains(&s.code));
    }
    Ok(spec.in_unit(data)?)
}

/// The plan of a training from a spec: the window from the spec (or the data), its newest share calibrating.
pub fn plan_for(spec: &ModelSpec, data: &Dataset) -> anyhow::Result<Plan> {
    let (from, to) = spec.window()?;
    let from = from.unwrap_or(data.start).max(data.start);
    let to = to.unwrap_or(data.time(data.hours)).min(data.time(data.hours));
    anyhow::ensure!(
        from < to,
        "the training window is empty: the data covers {} to {}",
        crate::model::fmt_time(data.start),
        crate::model::fmt_time(data.time(data.hours))
    );
    let span = (to - from) as f64;
    let calibrate_from = from + ((span * (1.0 - spec.training.calibration_fraction)) as i64).div_euclid(3600) * 3600;
    Ok(Plan {
        fit_from: from,
        fit_to: calibrate_from,
        calibrate_from,
        calibrate_to: to,
        origin_hour: None,
    })
}

/// Trains from `data` and scores on the held-out calibration period with a two-fold split (calibrate on even days,
/// score odd days, and the reverse), so the stored coverage is measured on forecasts the intervals were not
/// calibrated on.
pub fn train_and_score(
    data: &Dataset,
    spec: &ModelSpec,
    plan: Plan,
    progress: &dyn Progress,
) -> anyhow::Result<(Model, Evaluation)> {
    let (model, calibration) = Model::train_calibrated(data, spec, plan, progress)?;
    progress.phase("score");
    let evaluation = crate::evaluate::cross_scored(&model, data, &calibration)?;
    Ok((model, evaluation))
}

/// What a stored version says about itself (`metrics` of `/models/{name}/versions`): its held-out scores, and what
/// the training chose — an ensemble's members and weights, the trees a gbm kept, the epochs a network ran.
pub fn version_metrics(model: &crate::model::Model, evaluation: &Evaluation) -> anyhow::Result<serde_json::Value> {
    let mut metrics = serde_json::to_value(evaluation)?;
    if let Some(m) = metrics.as_object_mut() {
        let meta = &model.meta;
        if let Some(ensemble) = &meta.ensemble {
            m.insert("ensemble".into(), serde_json::to_value(ensemble)?);
        }
        if let Some(trees) = &meta.trees {
            m.insert("trees".into(), serde_json::to_value(trees)?);
        }
        if let Some(epochs) = meta.epochs_run {
            m.insert("epochsRun".into(), epochs.into());
        }
    }
    Ok(metrics)
}

/// Trains a version of `name` with `spec` on the store's data (or the CSV files at `csv`, in their layout), scores it
/// on held-out data and stores it with `revision`; what `train` and the one-machine platform (`airq up`) do.
/// `progress` is told each phase, from reading the data to the forecasts of the calibration period.
#[allow(clippy::too_many_arguments)]
pub async fn train_version<P: Progress + Send + 'static>(
    store: &Store,
    registry: &Registry,
    name: &str,
    spec: &ModelSpec,
    revision: Option<&str>,
    csv: Option<(&str, CsvFormat)>,
    progress: P,
) -> anyhow::Result<(crate::registry::StoredVersion, Evaluation, f64)> {
    let started = Instant::now();
    progress.phase("read the data");
    let (from, to) = spec.window()?;
    let data = dataset(
        csv,
        Some(store),
        spec,
        from.unwrap_or(i64::MIN / 2),
        to.unwrap_or(i64::MAX / 2),
    )
    .await?;
    let plan = plan_for(spec, &data)?;
    let task_spec = spec.clone();
    let (model, evaluation, progress) = tokio::task::spawn_blocking(move || {
        train_and_score(&data, &task_spec, plan, &progress).map(|(m, e)| (m, e, progress))
    })
    .await??;
    let seconds = started.elapsed().as_secs_f64();
    metrics::histogram!("airq_predictive_training_duration_seconds", "algorithm" => spec.algorithm.name())
        .record(seconds);
    progress.phase("store the version");
    let stored = registry
        .save(name, &model, revision, &version_metrics(&model, &evaluation)?, seconds)
        .await?;
    progress.finish(&format!("{} trained in {seconds:.1} s", stored.version));
    Ok((stored, evaluation, seconds))
}

/// `train`: reads the data, trains, stores the version, writes the report.
pub async fn train(args: TrainArgs) -> anyhow::Result<()> {
    // Its stdout is the version's JSON: logs go to stderr.
    let _telemetry = airq_core::telemetry::init("predictive", &args.log.on_stderr())?;
    let spec = read_spec(&args.spec)?;
    let db = Database::connect(&args.database).await?;
    let store = Store::new(db.clone());
    let registry = Registry::new(db.clone());
    let (stored, evaluation, seconds) = train_version(
        &store,
        &registry,
        &args.name,
        &spec,
        args.revision.as_deref(),
        args.csv.as_deref().map(|csv| (csv, args.csv_format)),
        TerminalProgress::new(args.name.clone()),
    )
    .await?;
    tracing::info!(model = %args.name, version = %stored.version, mae = evaluation.mae, coverage90 = evaluation.coverage(0.9), inputs_absent = %evaluation.inputs_absent.join(","), seconds, "model stored");
    let report = TrainingReport {
        model_version: stored.version.clone(),
        mae: Some(evaluation.mae).filter(|v| v.is_finite()),
        rmse: Some(evaluation.rmse).filter(|v| v.is_finite()),
        coverage90: evaluation.coverage(0.9).filter(|v| v.is_finite()),
        inputs_absent: evaluation.inputs_absent.clone(),
    };
    let path = args
        .report_file
        .clone()
        .or_else(|| Path::new(TERMINATION_LOG).exists().then(|| TERMINATION_LOG.into()));
    if let Some(path) = path {
        std::fs::write(&path, serde_json::to_vec(&report)?)
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
    }
    if std::io::stdout().is_terminal() {
        println!(
            "{} {}: MAE {:.2}, RMSE {:.2}, 90 % coverage {:.3} on held-out data ({} forecasts); {:.1} s{}",
            args.name,
            stored.version,
            evaluation.mae,
            evaluation.rmse,
            evaluation.coverage(0.9).unwrap_or(f64::NAN),
            evaluation.forecasts,
            seconds,
            without(&evaluation.inputs_absent)
        );
    } else {
        println!("{}", serde_json::to_string(&stored)?);
    }
    db.close().await;
    Ok(())
}

/// What a training left out, for a person: `; without the weather inputs temp, pres (not in the data)`, or nothing.
pub fn without(absent: &[String]) -> String {
    if absent.is_empty() {
        String::new()
    } else {
        format!("; without the weather inputs {} (not in the data)", absent.join(", "))
    }
}

/// One line of the evaluation table.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub pollutant: String,
    pub algorithm: String,
    pub train_seconds: f64,
    #[serde(flatten)]
    pub evaluation: Evaluation,
}

/// The Markdown table of an evaluation.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| Pollutant | Algorithm | MAE | RMSE | Daily-mean MAE | CRPS | Cover 80 % | Winkler 80 % | Cover 90 % | Winkler 90 % | Adaptive cover 90 % | Adaptive Winkler 90 % | Fallbacks | Inputs absent | Train s |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |\n",
    );
    for r in rows {
        let e = &r.evaluation;
        let level = |l: f64| e.intervals.iter().find(|i| (i.level - l).abs() < 1e-9);
        let (c80, w80) = level(0.8).map_or((f64::NAN, f64::NAN), |i| (i.coverage, i.winkler));
        let (c90, w90) = level(0.9).map_or((f64::NAN, f64::NAN), |i| (i.coverage, i.winkler));
        let (a90, aw90) = e
            .adaptive
            .iter()
            .find(|i| (i.level - 0.9).abs() < 1e-9)
            .map_or((f64::NAN, f64::NAN), |i| (i.coverage, i.winkler));
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.3} | {:.0} | {:.3} | {:.0} | {:.3} | {:.0} | {} of {} | {} | {:.1} |\n",
            r.pollutant,
            r.algorithm,
            e.mae,
            e.rmse,
            e.daily_mean_mae,
            e.crps,
            c80,
            w80,
            c90,
            w90,
            a90,
            aw90,
            e.fallbacks,
            e.forecasts,
            if e.inputs_absent.is_empty() {
                "none".to_owned()
            } else {
                e.inputs_absent.join(", ")
            },
            r.train_seconds
        ));
    }
    if rows.iter().any(|r| !r.evaluation.by_lead.is_empty()) {
        out.push_str(
            "\n| Pollutant | Algorithm | Hours ahead | MAE | CRPS | Cover 90 % | Adaptive cover 90 % |\n\
             | --- | --- | --- | ---: | ---: | ---: | ---: |\n",
        );
        for r in rows {
            for l in &r.evaluation.by_lead {
                let at = |set: &[crate::evaluate::IntervalMetric]| {
                    set.iter()
                        .find(|i| (i.level - 0.9).abs() < 1e-9)
                        .map_or(f64::NAN, |i| i.coverage)
                };
                out.push_str(&format!(
                    "| {} | {} | {}–{} | {:.1} | {:.1} | {:.3} | {:.3} |\n",
                    r.pollutant,
                    r.algorithm,
                    l.from_hour,
                    l.to_hour,
                    l.mae,
                    l.crps,
                    at(&l.intervals),
                    at(&l.adaptive)
                ));
            }
        }
    }
    out
}

/// `--tune` arguments: each `path=value,value,…`, the values JSON (numbers, `true`, `false`) or else text.
pub fn parse_grid(args: &[String]) -> anyhow::Result<Vec<(String, Vec<serde_json::Value>)>> {
    args.iter()
        .map(|arg| {
            let (path, values) = arg.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("--tune {arg:?}: give path=value,value,… (e.g. algorithm.knn.k=20,50)")
            })?;
            let values: Vec<serde_json::Value> = values
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_owned())))
                .collect();
            anyhow::ensure!(!values.is_empty(), "--tune {arg:?}: no value to try");
            Ok((path.trim().to_owned(), values))
        })
        .collect()
}

/// Every combination of the grid's values set in `base`, with its label (`learningRate=0.05, maxLeaves=31`); a
/// combination that is not a valid spec is refused with its field.
pub fn candidates(
    base: &ModelSpec,
    grid: &[(String, Vec<serde_json::Value>)],
) -> anyhow::Result<Vec<(String, ModelSpec)>> {
    let mut combinations: Vec<Vec<(&str, &serde_json::Value)>> = vec![Vec::new()];
    for (path, values) in grid {
        combinations = combinations
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push((path.as_str(), v));
                    c
                })
            })
            .collect();
    }
    let base = serde_json::to_value(base)?;
    combinations
        .into_iter()
        .map(|settings| {
            let mut spec = base.clone();
            for (path, value) in &settings {
                let mut at = &mut spec;
                let keys: Vec<&str> = path.split('.').collect();
                for (i, key) in keys.iter().enumerate() {
                    let object = at
                        .as_object_mut()
                        .ok_or_else(|| anyhow::anyhow!("--tune {path}: {} is not an object", keys[..i].join(".")))?;
                    at = object
                        .entry((*key).to_owned())
                        .or_insert_with(|| serde_json::Value::Object(Default::default()));
                }
                *at = (*value).clone();
            }
            let label = settings
                .iter()
                .map(|(path, value)| format!("{}={value}", path.rsplit('.').next().unwrap_or(path)))
                .collect::<Vec<_>>()
                .join(", ");
            let spec = ModelSpec::from_json(&spec).with_context(|| format!("--tune {label}"))?;
            Ok((label, spec))
        })
        .collect()
}

/// Scores each candidate on the rolling-origin `folds` (MAE of the daily forecasts of each validation window) and
/// returns the table and the one with the lowest mean.
async fn tune(
    data: &Dataset,
    candidates: Vec<(String, ModelSpec)>,
    folds: &[Protocol],
) -> anyhow::Result<(String, (String, ModelSpec))> {
    let mut scored: Vec<(String, ModelSpec, Vec<f64>)> = Vec::new();
    for (label, spec) in candidates {
        let mut maes = Vec::new();
        for (i, fold) in folds.iter().enumerate() {
            let progress = TerminalProgress::new(format!("tune {label} fold {}", i + 1));
            let (data, spec, fold) = (data.clone(), spec.clone(), fold.clone());
            let (evaluation, progress) = tokio::task::spawn_blocking(move || {
                crate::evaluate::run(&data, &spec, &fold, &progress).map(|(_, e)| (e, progress))
            })
            .await??;
            progress.finish(&format!("MAE {:.2}", evaluation.mae));
            maes.push(evaluation.mae);
        }
        scored.push((label, spec, maes));
    }
    let mean = |maes: &[f64]| maes.iter().sum::<f64>() / maes.len().max(1) as f64;
    let best = scored
        .iter()
        .enumerate()
        .min_by(|a, b| mean(&a.1.2).total_cmp(&mean(&b.1.2)))
        .map(|(i, _)| i)
        .ok_or_else(|| anyhow::anyhow!("no candidate to tune"))?;
    let mut table = String::from("| Candidate |");
    for i in 1..=folds.len() {
        table.push_str(&format!(" Fold {i} MAE |"));
    }
    table.push_str(" Mean MAE |\n| --- |");
    table.push_str(&" ---: |".repeat(folds.len() + 1));
    table.push('\n');
    for (i, (label, _, maes)) in scored.iter().enumerate() {
        let mark = if i == best { "**" } else { "" };
        table.push_str(&format!("| {mark}{label}{mark} |"));
        for mae in maes {
            table.push_str(&format!(" {mae:.2} |"));
        }
        table.push_str(&format!(" {mark}{:.2}{mark} |\n", mean(maes)));
    }
    let windows: Vec<String> = folds
        .iter()
        .enumerate()
        .map(|(i, f)| {
            format!(
                "fold {} fits {} to {}, calibrates to {} and validates to {}",
                i + 1,
                crate::model::fmt_time(f.fit_from),
                crate::model::fmt_time(f.calibrate_from),
                crate::model::fmt_time(f.test_from),
                crate::model::fmt_time(f.test_to)
            )
        })
        .collect();
    table.push_str(&format!(
        "\nRolling-origin cross-validation inside the fitting period: {}.\n\n",
        windows.join("; ")
    ));
    let (label, spec, _) = scored.swap_remove(best);
    Ok((table, (label, spec)))
}

/// The offset of local time from UTC, in hours, that places the protocol's local days and origin hour: the one asked
/// (`--utc-offset`), else the one the files state (the Beijing files' +8; a long file's `+01:00`, its standard
/// offset where daylight saving time moves it), else UTC.
pub fn local_offset(asked: Option<i32>, data: Option<&Dataset>) -> i32 {
    if let Some(hours) = asked {
        return hours;
    }
    match data.and_then(|d| d.stated_utc_offset) {
        Some(seconds) => {
            let hours = (f64::from(seconds) / 3600.0).round() as i32;
            if seconds % 3600 != 0 {
                tracing::warn!(
                    stated_seconds = seconds,
                    utc_offset_hours = hours,
                    "the files' local time is not a whole number of hours from UTC; the protocol's days and origin \
                     hour use the nearest whole hour (give --utc-offset to choose)"
                );
            } else {
                tracing::info!(utc_offset_hours = hours, "local time: the offset the files state");
            }
            hours
        }
        None => {
            tracing::warn!(
                "the data states no time zone (UTC times or the database) and --utc-offset was not given: the \
                 protocol's local days and origin hour are taken in UTC"
            );
            0
        }
    }
}

/// `evaluate`: the protocol for one spec or for every algorithm.
pub async fn evaluate(args: EvaluateArgs) -> anyhow::Result<()> {
    // Its stdout is the table: logs go to stderr.
    let _telemetry = airq_core::telemetry::init("predictive", &args.log.on_stderr())?;
    let db = match &args.database_url {
        Some(url) => {
            let db = Database::connect_url(url, 4).await?;
            db.migrate().await?;
            Some(db)
        }
        None => None,
    };
    let store = db.clone().map(Store::new);
    let mut specs: Vec<(String, ModelSpec)> = if args.all {
        args.pollutants.iter().flat_map(|p| crate::suite::suite(p)).collect()
    } else {
        let spec = read_spec(&args.spec)?;
        vec![(spec.algorithm.name().to_owned(), spec)]
    };
    if let Some(hours) = args.horizon {
        specs.iter_mut().for_each(|(_, s)| s.horizon_hours = hours);
    }
    if let Some(unit) = &args.unit {
        for (_, spec) in &mut specs {
            spec.target.unit = Some(unit.clone());
            spec.unit()?;
        }
    }
    // The data reaches past the test period by the longest horizon, so its last days' forecasts are scored too.
    let reach = specs
        .iter()
        .map(|(_, s)| i64::from(s.horizon_hours))
        .max()
        .unwrap_or(24)
        * HOUR
        + 86_400;
    anyhow::ensure!(!specs.is_empty(), "no algorithm to evaluate (check --pollutants)");
    let csv = args.csv.as_deref().map(|csv| (csv, args.csv_format));
    // CSV files are read whole, whatever the period: the first pollutant's data is read now, and the time zone its
    // files state places the protocol's local days.
    let mut cache: Option<Dataset> = match (csv, specs.first()) {
        (Some(_), Some((_, spec))) => Some(dataset(csv, None, spec, 0, 0).await?),
        _ => None,
    };
    let protocol = Protocol::from_days(
        &args.fit_from,
        &args.calibrate_from,
        &args.test_from,
        &args.test_to,
        args.origin_hour,
        local_offset(args.utc_offset, cache.as_ref()),
    )
    .map_err(anyhow::Error::msg)?;
    let mut tuning = String::new();
    if !args.tune.is_empty() {
        let (name, base) = specs.first().cloned().ok_or_else(|| anyhow::anyhow!("no spec"))?;
        let candidates = candidates(&base, &parse_grid(&args.tune)?)?;
        let folds = protocol
            .folds(args.folds, args.fold_days, args.fold_calibration_days)
            .map_err(anyhow::Error::msg)?;
        let data = match cache.take() {
            Some(data) => data,
            None => dataset(csv, store.as_ref(), &base, protocol.fit_from, protocol.test_to + reach).await?,
        };
        let (table, (label, best)) = tune(&data, candidates, &folds).await?;
        tracing::info!(chosen = %label, "parameters chosen by rolling-origin cross-validation in the fitting period");
        cache = Some(data);
        tuning = table;
        specs = vec![(format!("{name} (tuned: {label})"), best)];
    }
    if let Some(dir) = &args.export {
        let (_, spec) = specs.first().cloned().ok_or_else(|| anyhow::anyhow!("no spec"))?;
        let data = match cache.take() {
            Some(data) => data,
            None => dataset(csv, store.as_ref(), &spec, protocol.fit_from, protocol.test_to + reach).await?,
        };
        let dir = dir.clone();
        let meta =
            tokio::task::spawn_blocking(move || crate::evaluate::export(&data, &spec, &protocol, &dir)).await??;
        println!("{}", serde_json::to_string_pretty(&meta)?);
        return Ok(());
    }
    let mut rows = Vec::new();
    for (name, spec) in specs {
        let pollutant = spec.pollutant()?;
        if cache
            .as_ref()
            .is_none_or(|d| d.pollutant != pollutant || Ok(&d.unit) != spec.unit().map(|u| u.0).as_ref())
        {
            cache = Some(dataset(csv, store.as_ref(), &spec, protocol.fit_from, protocol.test_to + reach).await?);
        }
        let Some(data) = cache.clone() else { continue };
        let progress = TerminalProgress::new(format!("{pollutant} {name}"));
        let started = Instant::now();
        let task_spec = spec.clone();
        let task_protocol = protocol.clone();
        let (_model, evaluation, progress) = tokio::task::spawn_blocking(move || {
            crate::evaluate::run(&data, &task_spec, &task_protocol, &progress).map(|(m, e)| (m, e, progress))
        })
        .await??;
        let seconds = started.elapsed().as_secs_f64();
        progress.finish(&format!(
            "MAE {:.2} CRPS {:.2} cover90 {:.3} ({seconds:.1} s)",
            evaluation.mae,
            evaluation.crps,
            evaluation.coverage(0.9).unwrap_or(f64::NAN)
        ));
        if let (Some(model_name), Some(db)) = (&args.name, &db) {
            Registry::new(db.clone())
                .save_evaluation(
                    model_name,
                    None,
                    &serde_json::to_value(&protocol)?,
                    &serde_json::to_value(&evaluation)?,
                )
                .await?;
        }
        let (unit, _) = spec.unit()?;
        rows.push(Row {
            // The table names the unit where it is not the stored one.
            pollutant: if unit == pollutant.unit() {
                pollutant.code().to_owned()
            } else {
                format!("{} ({unit})", pollutant.code())
            },
            algorithm: name,
            train_seconds: seconds,
            evaluation,
        });
    }
    let table = format!("{tuning}{}", markdown(&rows));
    if let Some(path) = &args.markdown {
        std::fs::write(path, &table).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&rows)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    print!("{table}");
    if let Some(db) = db {
        db.close().await;
    }
    Ok(())
}

/// `forecast`: one forecast from a stored version, as JSON.
pub async fn forecast(args: ForecastArgs) -> anyhow::Result<()> {
    let _telemetry = airq_core::telemetry::init("predictive", &args.log)?;
    let db = Database::connect(&args.database).await?;
    let registry = Registry::new(db.clone());
    let version = match &args.version {
        Some(v) => Some(parse_version(v).with_context(|| format!("{v:?} is not a model version (v1, v2…)"))?),
        None => None,
    };
    let (stored, model) = registry.load(&args.name, version).await?.with_context(|| {
        format!(
            "model {} has no trained version{}",
            args.name,
            args.version.as_deref().map(|v| format!(" {v}")).unwrap_or_default()
        )
    })?;
    let request = Request {
        station: args.station.clone(),
        at: args
            .at
            .as_deref()
            .map(|t| forecast::parse_time("--at", t))
            .transpose()?,
        origin: args
            .origin
            .as_deref()
            .map(|t| forecast::parse_time("--origin", t))
            .transpose()?,
        confidence: args.confidence.clone(),
    };
    let store = Store::new(db.clone());
    let (data, origin) = forecast::context(&store, &model, &request).await?;
    let answer = forecast::forecast(&stored.name, &stored.version, &model, &data, origin, &request, None)?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    db.close().await;
    Ok(())
}

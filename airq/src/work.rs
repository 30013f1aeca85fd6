//! What `airq up` does with the resources: the loads of the EtlSchedules (a schedule without `schedule` once — not
//! again when its last run with the same spec succeeded —, one with a cron `schedule` at each of its times), then
//! the training of each PredictiveModel whose revision (its training spec and retrain request, as the operator
//! computes it) has no stored version yet, and again at each time of its `training.schedule`.

use std::time::Duration;

use airq_api::{EtlSchedule, PredictiveModel};
use airq_core::store::Store;
use airq_predictive::registry::Registry;
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;

use crate::resources::Resources;
use crate::up::{load_request, model_spec};

/// Where the platform answers and the admin key it printed: for the lines that say a model is ready to try.
pub struct Ready {
    pub key: String,
    pub gateway: std::net::SocketAddr,
}

/// Runs the loads, then the trainings; then keeps the scheduled loads going until `stop`.
pub async fn run(
    store: Store,
    registry: Registry,
    resources: Resources,
    openaq_api_key: Option<String>,
    ready: Ready,
    stop: CancellationToken,
) {
    let (once, scheduled): (Vec<EtlSchedule>, Vec<EtlSchedule>) = resources
        .etl_schedules
        .into_iter()
        .filter(|s| !s.spec.suspend)
        .partition(|s| s.spec.schedule.is_none());
    for schedule in &once {
        if stop.is_cancelled() {
            return;
        }
        match load_once(&store, schedule, openaq_api_key.clone(), &stop).await {
            Ok(()) => {}
            Err(e) if stop.is_cancelled() && is_stopped(&e) => {
                eprintln!(
                    "airq: EtlSchedule {}: stopped; what it stored is kept, the next `airq up` goes on from there",
                    schedule.name_any()
                );
            }
            Err(e) => eprintln!("airq: EtlSchedule {}: {e:#}", schedule.name_any()),
        }
    }
    for model in &resources.models {
        if stop.is_cancelled() {
            return;
        }
        let trained = tokio::select! {
            result = train_if_needed(&store, &registry, model) => result,
            () = stop.cancelled() => return,
        };
        match trained {
            Ok(()) => say_ready(&store, model, &ready).await,
            Err(e) => eprintln!("airq: PredictiveModel {}: {e:#}", model.name_any()),
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for schedule in scheduled {
        let (store, key, stop) = (store.clone(), openaq_api_key.clone(), stop.clone());
        tasks.spawn(async move {
            let Some(expression) = schedule.spec.schedule.clone() else {
                return;
            };
            let what = format!("EtlSchedule {}", schedule.name_any());
            every(
                &what,
                &expression,
                schedule.spec.time_zone.as_deref(),
                &stop,
                || async {
                    let request = load_request(&schedule, key.clone())?;
                    run_load(&store, &request, &stop).await
                },
            )
            .await;
        });
    }
    // Scheduled retraining: a new version at each time, whatever the revision (new data came in).
    for model in resources.models {
        let Some(expression) = model.spec.training.schedule.clone() else {
            continue;
        };
        let (store, registry, stop) = (store.clone(), registry.clone(), stop.clone());
        tasks.spawn(async move {
            let what = format!("PredictiveModel {}", model.name_any());
            every(&what, &expression, None, &stop, || train(&store, &registry, &model)).await;
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Runs a one-off load unless its newest run, with the same spec, succeeded.
async fn load_once(
    store: &Store,
    schedule: &EtlSchedule,
    openaq_api_key: Option<String>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let request = load_request(schedule, openaq_api_key)?;
    let spec = serde_json::to_value(&request.spec)?;
    if let Some(last) = store.runs(Some(&request.name), 1).await?.into_iter().next()
        && last.status == "succeeded"
        && last.spec == spec
    {
        eprintln!(
            "airq: {} already loaded ({} values, run {}); not loading again",
            request.name,
            last.rows_inserted + last.rows_updated + last.rows_unchanged,
            last.id
        );
        return Ok(());
    }
    run_load(store, &request, stop).await
}

async fn run_load(
    store: &Store,
    request: &airq_etl::load::LoadRequest,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    eprintln!("airq: loading {}", request.name);
    let bar = airq_etl::cli::progress_bar();
    let outcome = airq_etl::load::run(store, request, &bar, stop).await;
    bar.finish_and_clear();
    let report = outcome?.report();
    eprintln!(
        "airq: {} loaded: {} values inserted, {} updated, {} rejected",
        request.name, report.rows_inserted, report.rows_updated, report.rows_rejected
    );
    Ok(())
}

/// Whether `error` is a load stopped because the process was asked to stop.
fn is_stopped(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<airq_etl::load::LoadError>(),
        Some(airq_etl::load::LoadError::Stopped(_))
    )
}

/// A ready-to-paste try of `model`'s forecast through the gateway with the printed key, at one of its stations.
async fn say_ready(store: &Store, model: &PredictiveModel, ready: &Ready) {
    let station = match model.spec.target.stations.first() {
        Some(code) => Some(code.clone()),
        None => store
            .stations()
            .await
            .ok()
            .and_then(|s| s.into_iter().next())
            .map(|s| s.code),
    };
    let Some(station) = station else { return };
    let name = model.name_any();
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("station", &station)
        .finish();
    println!("airq: {name} answers forecasts; to try it, paste:");
    println!("  KEY={}", ready.key);
    println!(
        "  curl -H \"Authorization: Bearer $KEY\" 'http://{}/api/predictive/models/{name}/forecast?{query}'",
        ready.gateway
    );
}

/// Trains `model` when no stored version has its revision.
async fn train_if_needed(store: &Store, registry: &Registry, model: &PredictiveModel) -> anyhow::Result<()> {
    let name = model.name_any();
    let revision = model.spec.revision();
    let versions = registry.versions(Some(&name)).await?;
    if let Some(current) = versions
        .iter()
        .find(|v| v.revision.as_deref() == Some(revision.as_str()))
    {
        eprintln!("airq: {name} is trained ({}, revision {revision})", current.version);
        return Ok(());
    }
    train_as(store, registry, model, &name, &revision).await
}

/// Trains and stores a new version of `model`, with its revision.
async fn train(store: &Store, registry: &Registry, model: &PredictiveModel) -> anyhow::Result<()> {
    train_as(store, registry, model, &model.name_any(), &model.spec.revision()).await
}

async fn train_as(
    store: &Store,
    registry: &Registry,
    model: &PredictiveModel,
    name: &str,
    revision: &str,
) -> anyhow::Result<()> {
    let spec = model_spec(model)?;
    eprintln!("airq: training {name} ({})", spec.algorithm.name());
    let (stored, evaluation, seconds) =
        airq_predictive::cli::train_version(store, registry, name, &spec, Some(revision), None).await?;
    eprintln!(
        "airq: {name} {} trained in {seconds:.1} s: MAE {:.2}, 90 % coverage {:.3} on held-out data",
        stored.version,
        evaluation.mae,
        evaluation.coverage(0.9).unwrap_or(f64::NAN)
    );
    Ok(())
}

/// Calls `task` at each time of the cron `expression` (in `time_zone`, UTC when absent) until `stop`; `what` names
/// the resource and field in errors.
async fn every<F, Fut>(what: &str, expression: &str, time_zone: Option<&str>, stop: &CancellationToken, mut task: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let parsed = croner::parser::CronParser::builder()
        .build()
        .parse(expression)
        .map_err(|e| format!("schedule: {e}"))
        .and_then(|cron| {
            let zone = match time_zone {
                Some(name) => jiff::tz::TimeZone::get(name).map_err(|e| format!("timeZone: {e}"))?,
                None => jiff::tz::TimeZone::UTC,
            };
            Ok((cron, zone))
        });
    let (cron, zone) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("airq: {what}: {e}");
            return;
        }
    };
    loop {
        let now = jiff::Zoned::now().with_time_zone(zone.clone());
        let Ok(next) = cron.find_next_occurrence(&now, false) else {
            return;
        };
        let wait = Duration::try_from(next.timestamp().duration_since(now.timestamp())).unwrap_or(Duration::ZERO);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
        if let Err(e) = task().await {
            eprintln!("airq: {what}: {e:#}");
        }
    }
}

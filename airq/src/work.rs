//! What `airq up` does with the resources: the loads of the EtlSchedules (a schedule without `schedule` once — not
//! again when its last run with the same spec succeeded —, one with a cron `schedule` at each of its times), then
//! the training of each PredictiveModel whose revision (its training spec and retrain request, as the operator
//! computes it) has no stored version yet, and again at each time of its `training.schedule`.

use std::collections::HashMap;
use std::time::Duration;

use airq_api::{EtlSchedule, PredictiveModel};
use airq_core::store::Store;
use airq_predictive::api::ApiState;
use airq_predictive::cli::TerminalProgress;
use airq_predictive::evaluate::Evaluation;
use airq_predictive::model::Progress;
use airq_predictive::registry::{Registry, StoredVersion};
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;

use crate::resources::Resources;
use crate::up::{load_request, model_spec};

/// Where the platform answers and the admin key it printed: for the lines that say a model is ready to try.
pub struct Ready {
    pub key: String,
    pub gateway: std::net::SocketAddr,
}

/// Runs the loads, then the trainings; then keeps the scheduled loads going until `stop`. The trainings to come
/// are announced to the predictive API at once: until a model has a version, its forecasts answer `409 training`
/// with what the training waits for or how far it is.
pub async fn run(
    store: Store,
    api: ApiState,
    resources: Resources,
    openaq_api_key: Option<String>,
    ready: Ready,
    stop: CancellationToken,
) {
    let registry = api.registry.clone();
    let (once, scheduled): (Vec<EtlSchedule>, Vec<EtlSchedule>) = resources
        .etl_schedules
        .into_iter()
        .filter(|s| !s.spec.suspend)
        .partition(|s| s.spec.schedule.is_none());
    let waiting_for = match once.iter().map(|s| s.name_any()).collect::<Vec<_>>().as_slice() {
        [] => "the trainings before it".to_owned(),
        [one] => format!("the load {one} to store its values"),
        names => format!("the loads {} to store their values", names.join(", ")),
    };
    // The load's bar and the training's share the terminal.
    let terminal = indicatif::MultiProgress::new();
    let say = |line: String| terminal.suspend(|| eprintln!("{line}"));
    let mut announced = HashMap::new();
    for model in &resources.models {
        match announce(&api, model, &waiting_for).await {
            Ok(what) => {
                announced.insert(model.name_any(), what);
            }
            Err(e) => say(format!("airq: PredictiveModel {}: {e:#}", model.name_any())),
        }
    }
    // Trainings read values only: they start once the last load has stored its values, while it checks the series
    // for quality marks.
    let (stored_tx, mut stored_rx) = tokio::sync::watch::channel(false);
    let loads = async {
        for (i, schedule) in once.iter().enumerate() {
            if stop.is_cancelled() {
                break;
            }
            let last = i + 1 == once.len();
            let stored = || {
                if last {
                    let _ = stored_tx.send(true);
                }
            };
            match load_once(&store, schedule, openaq_api_key.clone(), &stop, &terminal, stored).await {
                Ok(()) => {}
                Err(e) if stop.is_cancelled() && is_stopped(&e) => say(format!(
                    "airq: EtlSchedule {}: stopped; what it stored is kept, the next `airq up` goes on from there",
                    schedule.name_any()
                )),
                Err(e) => say(format!("airq: EtlSchedule {}: {e:#}", schedule.name_any())),
            }
        }
        let _ = stored_tx.send(true);
    };
    let trainings = async {
        tokio::select! {
            _ = stored_rx.wait_for(|stored| *stored) => {}
            () = stop.cancelled() => return,
        }
        for model in &resources.models {
            if stop.is_cancelled() {
                return;
            }
            let name = model.name_any();
            let trained = match announced.get(&name) {
                None => Ok(()),
                Some(Announced::Trained(version)) => {
                    say(format!(
                        "airq: {name} is trained ({version}, revision {})",
                        model.spec.revision()
                    ));
                    Ok(())
                }
                Some(&Announced::Training(id)) => {
                    let bar = TerminalProgress::new(name.clone()).shown_in(&terminal);
                    let progress = api.start_training(id, bar);
                    say(format!("airq: training {name}"));
                    let result = tokio::select! {
                        result = train_as(&store, &registry, model, progress) => result,
                        () = stop.cancelled() => return,
                    };
                    api.finish_training(
                        id,
                        result
                            .as_ref()
                            .map(|(stored, _, _)| stored.clone())
                            .map_err(|e| format!("{e:#}")),
                    );
                    result.map(|(stored, evaluation, seconds)| {
                        say(format!(
                            "airq: {name} {} trained in {seconds:.1} s: MAE {:.2}, 90 % coverage {:.3} on held-out data{}",
                            stored.version,
                            evaluation.mae,
                            evaluation.coverage(0.9).unwrap_or(f64::NAN),
                            airq_predictive::cli::without(&evaluation.inputs_absent)
                        ))
                    })
                }
            };
            match trained {
                Ok(()) => say_ready(&store, model, &ready, &terminal).await,
                Err(e) => say(format!("airq: PredictiveModel {name}: {e:#}")),
            }
        }
    };
    tokio::join!(loads, trainings);
    if stop.is_cancelled() {
        return;
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
                    run_load(&store, &request, &stop, &indicatif::MultiProgress::new(), || ()).await
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
            every(&what, &expression, None, &stop, || async {
                let (stored, evaluation, seconds) =
                    train_as(&store, &registry, &model, TerminalProgress::new(model.name_any())).await?;
                eprintln!(
                    "airq: {} {} trained in {seconds:.1} s: MAE {:.2}",
                    model.name_any(),
                    stored.version,
                    evaluation.mae
                );
                Ok(())
            })
            .await;
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Runs a one-off load unless its newest run, with the same spec, succeeded; `stored` is called once its values
/// are stored (at once when there is nothing to load).
async fn load_once(
    store: &Store,
    schedule: &EtlSchedule,
    openaq_api_key: Option<String>,
    stop: &CancellationToken,
    terminal: &indicatif::MultiProgress,
    stored: impl FnOnce(),
) -> anyhow::Result<()> {
    let request = load_request(schedule, openaq_api_key)?;
    let spec = serde_json::to_value(&request.spec)?;
    if let Some(last) = store.runs(Some(&request.name), 1).await?.into_iter().next()
        && last.status == "succeeded"
        && last.spec == spec
    {
        stored();
        terminal.suspend(|| {
            eprintln!(
                "airq: {} already loaded ({} values, run {}); not loading again",
                request.name,
                last.rows_inserted + last.rows_updated + last.rows_unchanged,
                last.id
            )
        });
        return Ok(());
    }
    run_load(store, &request, stop, terminal, stored).await
}

async fn run_load(
    store: &Store,
    request: &airq_etl::load::LoadRequest,
    stop: &CancellationToken,
    terminal: &indicatif::MultiProgress,
    stored: impl FnOnce(),
) -> anyhow::Result<()> {
    terminal.suspend(|| eprintln!("airq: loading {}", request.name));
    let bar = terminal.add(airq_etl::cli::progress_bar());
    let outcome = airq_etl::load::run_reporting(store, request, &bar, stop, |_| (), stored).await;
    bar.finish_and_clear();
    terminal.remove(&bar);
    let report = outcome?.report();
    terminal.suspend(|| {
        eprintln!(
            "airq: {} loaded: {} values inserted, {} updated, {} rejected",
            request.name, report.rows_inserted, report.rows_updated, report.rows_rejected
        )
    });
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
async fn say_ready(store: &Store, model: &PredictiveModel, ready: &Ready, terminal: &indicatif::MultiProgress) {
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
    terminal.suspend(|| {
        println!("airq: {name} answers forecasts; to try it, paste:");
        println!("  KEY={}", ready.key);
        println!(
            "  curl -H \"Authorization: Bearer $KEY\" 'http://{}/api/predictive/models/{name}/forecast?{query}'",
            ready.gateway
        );
    });
}

/// A model at the start: trained already (the version with its revision), or its training announced (its id).
enum Announced {
    Trained(String),
    Training(u64),
}

/// When no stored version of `model` has its revision: its spec stored (so the API lists it) and its training
/// announced.
async fn announce(api: &ApiState, model: &PredictiveModel, waiting_for: &str) -> anyhow::Result<Announced> {
    let name = model.name_any();
    let revision = model.spec.revision();
    let versions = api.registry.versions(Some(&name)).await?;
    if let Some(current) = versions
        .iter()
        .find(|v| v.revision.as_deref() == Some(revision.as_str()))
    {
        return Ok(Announced::Trained(current.version.clone()));
    }
    api.registry.set_spec(&name, &model_spec(model)?).await?;
    Ok(Announced::Training(api.announce_training(
        &name,
        "airq up",
        waiting_for.to_owned(),
    )))
}

/// Trains and stores a new version of `model`, with its revision: the version, its scores on held-out data and the
/// seconds it took.
async fn train_as<P: Progress + Send + 'static>(
    store: &Store,
    registry: &Registry,
    model: &PredictiveModel,
    progress: P,
) -> anyhow::Result<(StoredVersion, Evaluation, f64)> {
    let (name, revision) = (model.name_any(), model.spec.revision());
    let spec = model_spec(model)?;
    airq_predictive::cli::train_version(store, registry, &name, &spec, Some(&revision), None, progress).await
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

//! `kubectl airq retrain` and `kubectl airq load`: set the request field the operator acts on, then follow what the
//! operator does with it — the Job it starts, the Job's progress, the status it writes — until done, failed or
//! timed out.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use airq_api::{EtlSchedule, PredictiveModel, model::ModelPhase};
use indicatif::{ProgressBar, ProgressStyle};
use k8s_openapi::api::batch::v1::Job;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use serde::de::DeserializeOwned;
use serde_json::json;

/// How often the state is read again.
const POLL: Duration = Duration::from_millis(500);

/// A spinner with the current step on a terminal; one line per new step otherwise (logs, CI).
struct Progress {
    bar: Option<ProgressBar>,
    last: String,
}

impl Progress {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self {
            bar,
            last: String::new(),
        }
    }

    fn step(&mut self, message: String) {
        if message == self.last {
            return;
        }
        match &self.bar {
            Some(bar) => bar.set_message(message.clone()),
            None => eprintln!("{message}"),
        }
        self.last = message;
    }

    fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A namespaced airq resource by name, or an error that says where it was looked for.
pub async fn get<K>(api: &Api<K>, namespace: &str, name: &str) -> anyhow::Result<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.get_opt(name).await {
        Ok(Some(object)) => Ok(object),
        Ok(None) => anyhow::bail!(
            "{} {name:?} not found in namespace {namespace} (kubectl get {} -n {namespace})",
            K::kind(&()),
            K::plural(&())
        ),
        Err(kube::Error::Api(s)) if s.code == 404 => anyhow::bail!(
            "the cluster does not know {} (are airq's CRDs installed?)",
            K::plural(&())
        ),
        Err(e) => Err(e.into()),
    }
}

/// Sets `spec.<field>` to a new request value (the current time) and returns the patched object.
async fn request<K>(api: &Api<K>, name: &str, field: &str) -> anyhow::Result<(K, String)>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let value = jiff::Timestamp::now().round(jiff::Unit::Millisecond)?.to_string();
    let patch = json!({ "spec": { field: value } });
    let patched = api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| anyhow::anyhow!("cannot set spec.{field} of {} {name}: {e}", K::kind(&())))?;
    Ok((patched, value))
}

/// What a Job is doing, in words; `Err` with the reason when it failed.
fn job_state(job: Option<&Job>) -> Result<String, String> {
    let Some(job) = job else {
        return Ok("waiting for the operator to create it".to_owned());
    };
    let status = job.status.clone().unwrap_or_default();
    if let Some(failed) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed" && c.status == "True")
    {
        return Err(failed
            .message
            .clone()
            .or(failed.reason.clone())
            .unwrap_or_else(|| "failed".to_owned()));
    }
    if status.succeeded.unwrap_or(0) > 0 {
        return Ok("finished".to_owned());
    }
    Ok(match (status.active.unwrap_or(0), status.failed.unwrap_or(0)) {
        (0, 0) => "waiting for its pod to start".to_owned(),
        (_, 0) => "running".to_owned(),
        (_, failed) => format!("running (attempt {} after {failed} failed)", failed + 1),
    })
}

fn timed_out(what: &str, timeout: Duration, last: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "timed out after {} waiting for {what}; last seen: {last}",
        humantime::format_duration(timeout)
    )
}

/// Retrains model `name`: a new `spec.retrainRequest`, then (with a timeout) waits until the version trained for it
/// is served and Ready.
pub async fn retrain(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    timeout: Option<Duration>,
) -> anyhow::Result<()> {
    let models: Api<PredictiveModel> = Api::namespaced(client.clone(), namespace);
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let before = get(&models, namespace, name).await?;
    let previous = before.status.and_then(|s| s.model_version);
    let (patched, _) = request(&models, name, "retrainRequest").await?;
    let generation = patched.metadata.generation.unwrap_or_default();
    let job = airq_api::model::training_job_name(name, &patched.spec.revision());
    println!("predictivemodel/{name} retrain requested (generation {generation}): training Job {job}");
    let Some(timeout) = timeout else {
        return Ok(());
    };

    let started = Instant::now();
    let mut progress = Progress::new();
    let outcome = loop {
        let model = get(&models, namespace, name).await?;
        let status = model.status.clone().unwrap_or_default();
        let seen = status.observed_generation.unwrap_or(0) >= generation;
        let trained = status.trained_generation.unwrap_or(0) >= generation;
        let ready = airq_api::common::condition(&status.conditions, "Ready");
        if seen && trained && ready.is_some_and(|c| c.status == "True") {
            break Ok(status);
        }
        let current = jobs.get_opt(&job).await?;
        match job_state(current.as_ref()) {
            Err(reason) => break Err(anyhow::anyhow!("training Job {job} failed: {reason}")),
            Ok(state) if !trained => progress.step(format!("training Job {job}: {state}")),
            Ok(_) => progress.step(format!(
                "trained {}; waiting for the serving pods: {}",
                status.model_version.as_deref().unwrap_or("?"),
                ready.map(|c| c.message.clone()).unwrap_or_default()
            )),
        }
        if seen && status.phase == Some(ModelPhase::Failed) && !trained {
            let why = ready.map(|c| c.message.clone()).unwrap_or_default();
            break Err(anyhow::anyhow!("training failed: {why}"));
        }
        if started.elapsed() >= timeout {
            break Err(timed_out("the new version", timeout, &progress.last));
        }
        tokio::time::sleep(POLL).await;
    };
    progress.finish();
    let status = outcome?;
    let version = status.model_version.unwrap_or_default();
    let metrics = status.metrics.unwrap_or_default();
    let figure = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".to_owned());
    println!(
        "predictivemodel/{name} {version} is Ready (was {}): MAE {}, RMSE {}, 90% coverage {} ({} s)",
        previous.as_deref().unwrap_or("none"),
        figure(metrics.mae),
        figure(metrics.rmse),
        figure(metrics.coverage90),
        started.elapsed().as_secs()
    );
    Ok(())
}

/// Runs a load of schedule `name` now: a new `spec.runRequest`, then (with a timeout) waits until the run's Job is
/// finished and its report is in the status.
pub async fn load(client: &kube::Client, namespace: &str, name: &str, timeout: Option<Duration>) -> anyhow::Result<()> {
    let schedules: Api<EtlSchedule> = Api::namespaced(client.clone(), namespace);
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    get(&schedules, namespace, name).await?;
    let (_, value) = request(&schedules, name, "runRequest").await?;
    let job = airq_api::etl::run_job_name(name, &value);
    println!("etlschedule/{name} load requested: Job {job}");
    let Some(timeout) = timeout else {
        return Ok(());
    };

    let started = Instant::now();
    let mut progress = Progress::new();
    let outcome = loop {
        let schedule = get(&schedules, namespace, name).await?;
        let run = schedule.status.and_then(|s| s.last_run).filter(|r| r.job == job);
        if let Some(run) = run {
            break Ok(run);
        }
        let current = jobs.get_opt(&job).await?;
        match job_state(current.as_ref()) {
            Err(reason) => progress.step(format!("Job {job} failed ({reason}); waiting for its report")),
            Ok(state) => progress.step(format!("Job {job}: {state}")),
        }
        if started.elapsed() >= timeout {
            break Err(timed_out("the load", timeout, &progress.last));
        }
        tokio::time::sleep(POLL).await;
    };
    progress.finish();
    let run = outcome?;
    if !run.succeeded {
        anyhow::bail!(
            "the load failed: {}",
            run.message.as_deref().unwrap_or("no message (see kubectl logs)")
        );
    }
    println!(
        "etlschedule/{name} loaded: {} rows inserted, {} updated, {} rejected ({} s)",
        run.rows_inserted,
        run.rows_updated,
        run.rows_rejected,
        started.elapsed().as_secs()
    );
    Ok(())
}

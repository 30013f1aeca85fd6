//! PredictiveModel → a training Job for each revision of the training-relevant spec (a `retrainRequest` change is a
//! new revision), then a serving Deployment + Service for the version the newest successful training produced, and
//! a CronJob when the model retrains on a schedule. The serving Deployment rolls with no unavailable pod, so the old
//! version answers until the new one is ready.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use airq_api::model::{ModelMetrics, ModelPhase, PredictiveModel, PredictiveModelStatus};
use airq_api::reports::TrainingReport;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;

use crate::children::{self, Child, ChildKind, Desired, Owner};
use crate::context::Context;
use crate::controllers::adhoc::deployment_available;
use crate::controllers::jobs::{self, JobState};
use crate::error::Result;
use crate::monitoring::METRICS_LABEL;
use crate::status::{condition, event, park, refused, update};
use crate::workload::{
    HTTP_PORT, Rollout, database_env, deployment, disruption_budget, env, job_container, metrics_service, pod_template,
    service_container, service_pod, tmp_mount, tmp_volume,
};

/// The label naming the model a training Job belongs to (also on Jobs its CronJob starts).
pub const MODEL_LABEL: &str = "airq.dev/predictive-model";
/// The label holding the revision of the spec a training Job trains.
pub const REVISION_LABEL: &str = "airq.dev/revision";
/// Finished training Jobs kept as history.
const TRAINING_HISTORY: usize = 3;

pub use airq_api::model::{serving_name, training_job_name};

fn training_job_spec(model: &PredictiveModel, owner: &Owner, image: String, revision: &str) -> (ObjectMeta, JobSpec) {
    let spec = &model.spec;
    let mut labels = owner.labels("airq-training");
    labels.insert(MODEL_LABEL.to_owned(), owner.name.clone());
    labels.insert(REVISION_LABEL.to_owned(), revision.to_owned());
    let environment = vec![
        env("AIRQ_LOG_FORMAT", "json"),
        // The model's name in the database is its name in the namespace, as on one machine: the predictive API
        // (through the gateway) knows it by that name. Each namespace's Platform has its own database.
        env("AIRQ_MODEL", owner.name.clone()),
        env("AIRQ_MODEL_REVISION", revision),
        env("AIRQ_MODEL_SPEC", spec.training_spec().to_string()),
        database_env(&spec.database),
    ];
    let container = job_container(
        "train",
        image,
        vec!["train".to_owned()],
        environment,
        &spec.training.pod,
    );
    let template = pod_template(
        labels.clone(),
        vec![container],
        &spec.training.pod,
        Some("Never"),
        vec![tmp_volume()],
        true,
    );
    (
        ObjectMeta {
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        JobSpec {
            backoff_limit: Some(1),
            template,
            ..JobSpec::default()
        },
    )
}

/// What the model serves: the version and the revision it was trained on.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    pub version: String,
    pub revision: String,
}

/// The objects a model wants: pure, from the resource, its revision, the version to serve and its own Jobs.
pub fn build(
    model: &PredictiveModel,
    owner: &Owner,
    image: String,
    revision: &str,
    served: Option<&Served>,
    own_jobs: &[Arc<Job>],
) -> Desired {
    let spec = &model.spec;
    let (job_meta, job_spec) = training_job_spec(model, owner, image.clone(), revision);
    let mut children = Vec::new();
    if served.map(|s| s.revision.as_str()) != Some(revision) {
        let mut metadata = owner.meta(
            &training_job_name(&owner.name, revision),
            job_meta.labels.clone().unwrap_or_default(),
        );
        metadata.annotations = None;
        children.push(Child::Job(Job {
            metadata,
            spec: Some(job_spec.clone()),
            status: None,
        }));
    }
    if let Some(schedule) = &spec.training.schedule {
        children.push(Child::CronJob(CronJob {
            metadata: owner.meta(&format!("model-{}-retrain", owner.name), owner.labels("airq-training")),
            spec: CronJobSpec {
                schedule: schedule.clone(),
                concurrency_policy: Some("Forbid".to_owned()),
                successful_jobs_history_limit: Some(1),
                failed_jobs_history_limit: Some(1),
                job_template: JobTemplateSpec {
                    metadata: Some(job_meta),
                    spec: Some(job_spec),
                },
                ..CronJobSpec::default()
            },
            status: None,
        }));
    }
    if let Some(served) = served {
        let name = serving_name(&owner.name);
        let labels = owner.labels("airq-model");
        let selector = BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), "airq-model".to_owned()),
            ("app.kubernetes.io/instance".to_owned(), owner.name.clone()),
        ]);
        let mut container = service_container(
            "serve",
            image,
            HTTP_PORT,
            vec![
                env("AIRQ_LOG_FORMAT", "json"),
                env("AIRQ_MODEL", owner.name.clone()),
                env("AIRQ_MODEL_VERSION", served.version.clone()),
                database_env(&spec.database),
            ],
            spec.serving.resources.clone(),
            true,
        );
        container.args = Some(vec!["serve".to_owned()]);
        container.volume_mounts = Some(vec![tmp_mount()]);
        if let Some(budget) = disruption_budget(owner, &name, labels.clone(), selector.clone(), spec.serving.replicas) {
            children.push(Child::PodDisruptionBudget(budget));
        }
        let template = service_pod(labels.clone(), container, true);
        // The old version answers until the new one's pods are ready.
        children.push(Child::Deployment(deployment(
            owner.meta(&name, labels.clone()),
            spec.serving.replicas,
            selector.clone(),
            template,
            Rollout::KeepServing,
        )));
        // Scraped through the Platform's ServiceMonitor, or its scrape annotations (crate::monitoring).
        let mut service_labels = labels;
        service_labels.insert(METRICS_LABEL.0.to_owned(), METRICS_LABEL.1.to_owned());
        children.push(Child::Service(metrics_service(
            owner.meta(&name, service_labels),
            selector,
            "http",
        )));
    }
    let keep: BTreeSet<(ChildKind, String)> = jobs::history(own_jobs, TRAINING_HISTORY, TRAINING_HISTORY)
        .into_iter()
        .map(|name| (ChildKind::Job, name))
        .collect();
    Desired { children, keep }
}

/// The version a serving Deployment serves, from its pod template.
fn deployment_version(deployment: &Deployment) -> Option<String> {
    deployment
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == "AIRQ_MODEL_VERSION")?
        .value
        .clone()
}

/// What the model reconciler observed besides the resource, for [`derive_status`].
#[derive(Debug, Clone, Copy)]
pub struct ModelObserved<'a> {
    /// The revision the spec asks for.
    pub revision: &'a str,
    /// The newest training Job of that revision and where it is.
    pub training: Option<&'a (String, JobState)>,
    /// For a failed training, the last line its pod wrote.
    pub last_words: Option<&'a str>,
    /// The serving Deployment.
    pub deployment: Option<&'a Deployment>,
}

/// Whether `status` holds a version trained for `revision`.
fn is_trained(status: &PredictiveModelStatus, revision: &str) -> bool {
    status.model_version.is_some() && status.trained_revision.as_deref() == Some(revision)
}

/// Why a training failed: its pod's last words, then the Job's message.
fn failure(message: &str, last_words: Option<&str>) -> String {
    match last_words {
        Some(words) => format!("{words} ({message})"),
        None => message.to_owned(),
    }
}

/// The status of `model`, pure: `status` carries what its trainings reported (version, revision, metrics); the
/// conditions (`Trained`, `Serving`, `Ready`), the phase and the active Job follow from `observed`. Conditions keep
/// their transition time from `previous` when their status did not change.
pub fn derive_status(
    model: &PredictiveModel,
    previous: &[Condition],
    mut status: PredictiveModelStatus,
    observed: &ModelObserved,
) -> PredictiveModelStatus {
    let generation = model.metadata.generation;
    let trained = is_trained(&status, observed.revision);
    let (trained_reason, trained_message, phase_if_not_trained) = match observed.training {
        _ if trained => (
            "Trained",
            format!(
                "version {} was trained for this spec",
                status.model_version.clone().unwrap_or_default()
            ),
            ModelPhase::Serving,
        ),
        Some((name, JobState::Failed { message, .. })) => (
            "TrainingFailed",
            format!(
                "Job {name} failed: {}; change the spec or retrainRequest to try again",
                failure(message, observed.last_words)
            ),
            ModelPhase::Failed,
        ),
        Some((name, _)) => ("Training", format!("Job {name} trains the model"), ModelPhase::Training),
        None => (
            "Training",
            format!(
                "Job {} is being created",
                training_job_name(model.metadata.name.as_deref().unwrap_or_default(), observed.revision)
            ),
            ModelPhase::Training,
        ),
    };
    status.active_job = match observed.training {
        Some((name, JobState::Running)) if !trained => Some(name.clone()),
        _ => None,
    };
    let serving_version = observed.deployment.and_then(deployment_version);
    let (available, ready_pods) = deployment_available(observed.deployment);
    let serving = status.model_version.is_some()
        && status.trained_revision.is_some()
        && available
        && serving_version == status.model_version;
    let serving_message = match &status.model_version {
        None => "no version trained yet".to_owned(),
        Some(version) if serving => format!("version {version} answers on {ready_pods} pods"),
        Some(version) => format!(
            "version {version} is rolling out: {ready_pods} of {} pods ready",
            model.spec.serving.replicas
        ),
    };
    let ready = trained && serving;
    let (ready_reason, ready_message) = if ready {
        ("Serving", serving_message.clone())
    } else if !trained {
        (trained_reason, trained_message.clone())
    } else {
        ("RollingOut", serving_message.clone())
    };
    status.phase = Some(if !trained {
        phase_if_not_trained
    } else if serving {
        ModelPhase::Serving
    } else {
        ModelPhase::Training
    });
    status.conditions = vec![
        condition(
            previous,
            "Trained",
            trained,
            trained_reason,
            trained_message,
            generation,
        ),
        condition(
            previous,
            "Serving",
            serving,
            if serving { "Serving" } else { "NotServing" },
            serving_message,
            generation,
        ),
        condition(previous, "Ready", ready, ready_reason, ready_message, generation),
    ];
    status
}

/// Reconciles one PredictiveModel.
pub async fn reconcile(model: Arc<PredictiveModel>, ctx: Arc<Context>) -> Result<Action> {
    let owner = Owner::of(model.as_ref())?;
    let generation = model.metadata.generation;
    let previous = model.status.clone().unwrap_or_default();
    let previous_reason = airq_api::common::condition(&previous.conditions, "Ready").map(|c| c.reason.clone());
    let algorithm = Some(model.spec.algorithm.name().to_owned());

    let mut blocked = airq_api::validation::predictive_model(&model.spec)
        .err()
        .map(|problems| ("InvalidSpec", problems.to_string()));
    if blocked.is_none()
        && !ctx
            .stores
            .secret_exists(&owner.namespace, &model.spec.database.secret_name)
    {
        blocked = Some((
            "SecretNotFound",
            format!(
                "Secret {} not found in namespace {}",
                model.spec.database.secret_name, owner.namespace
            ),
        ));
    }
    if let Some((reason, message)) = blocked {
        let phase = previous.phase.unwrap_or(ModelPhase::Pending);
        let extra = serde_json::json!({ "phase": phase, "algorithm": algorithm });
        park(&ctx, model.as_ref(), reason, message, extra).await?;
        return Ok(Action::await_change());
    }

    let revision = model.spec.revision();
    let all_jobs: Vec<Arc<Job>> = ctx.stores.jobs.state_filter(|job| {
        job.namespace().as_deref() == Some(owner.namespace.as_str())
            && job.labels().get(MODEL_LABEL) == Some(&owner.name)
    });
    let own_jobs: Vec<Arc<Job>> = all_jobs
        .iter()
        .filter(|job| job.owner_references().iter().any(|r| r.uid == owner.uid))
        .cloned()
        .collect();
    let revision_of = |job: &Job| job.labels().get(REVISION_LABEL).cloned().unwrap_or_default();

    // The version to serve: from the newest successful training of this revision, else of any revision.
    let succeeded: Vec<Arc<Job>> = all_jobs
        .iter()
        .filter(|job| matches!(jobs::state(job), JobState::Succeeded { .. }))
        .cloned()
        .collect();
    let current: Vec<Arc<Job>> = succeeded
        .iter()
        .filter(|j| revision_of(j) == revision)
        .cloned()
        .collect();
    let newest = jobs::last_finished(&current).or_else(|| jobs::last_finished(&succeeded));
    let mut status = PredictiveModelStatus {
        observed_generation: generation,
        algorithm,
        ..previous.clone()
    };
    let mut trained_now = None;
    if let Some(job) = newest
        && previous.trained_job.as_deref() != Some(job.name_any().as_str())
    {
        let job_name = job.name_any();
        match jobs::report::<TrainingReport>(&ctx, &owner.namespace, &job_name).await? {
            Ok(report) => {
                status.model_version = Some(report.model_version.clone());
                status.trained_revision = Some(revision_of(&job));
                status.trained_generation = if revision_of(&job) == revision {
                    generation
                } else {
                    previous.trained_generation
                };
                status.last_trained_time = jobs::finished_at(&job);
                status.metrics = Some(ModelMetrics {
                    mae: report.mae,
                    rmse: report.rmse,
                    coverage90: report.coverage90,
                    inputs_absent: report.inputs_absent.clone(),
                });
                status.url = Some(format!("http://{}.{}.svc", serving_name(&owner.name), owner.namespace));
                trained_now = Some((job_name.clone(), report));
            }
            Err(problem) => {
                event(&ctx, model.as_ref(), true, "ReportMissing", "Train", problem);
            }
        }
        status.trained_job = Some(job_name);
    }
    let served = match (&status.model_version, &status.trained_revision) {
        (Some(version), Some(trained)) => Some(Served {
            version: version.clone(),
            revision: trained.clone(),
        }),
        _ => None,
    };

    let image = model.spec.image.clone().unwrap_or_else(|| ctx.args.image("predictive"));
    let mut desired = build(&model, &owner, image, &revision, served.as_ref(), &own_jobs);
    if model.spec.image.is_none() {
        crate::workload::set_pull_policy(&mut desired.children, &ctx.args.image_pull_policy);
    }
    crate::monitoring::annotate_for_scraping(&mut desired.children, ctx.monitoring_apis().await);
    let changes = match children::apply(&ctx, &owner, desired).await {
        Ok(changes) => changes,
        Err(error) => return Err(refused(&ctx, model.as_ref(), error).await),
    };
    if !changes.is_empty() {
        event(&ctx, model.as_ref(), false, "Applied", "Apply", changes.describe());
    }
    if let Some((job, report)) = &trained_now {
        event(
            &ctx,
            model.as_ref(),
            false,
            "Trained",
            "Train",
            format!(
                "Job {job} trained version {} ({}){}",
                report.model_version,
                report
                    .mae
                    .map_or_else(|| "no MAE: no test data".to_owned(), |mae| format!("MAE {mae:.3}")),
                if report.inputs_absent.is_empty() {
                    String::new()
                } else {
                    format!(" without {}: the data has none", report.inputs_absent.join(", "))
                }
            ),
        );
    }

    let training = all_jobs
        .iter()
        .filter(|j| revision_of(j) == revision)
        .max_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .map(|j| (j.name_any(), jobs::state(j)));
    // Why a training failed: what its pod said last (its error), not only the Job's "backoff limit".
    let last_words = match &training {
        Some((name, JobState::Failed { .. })) if !is_trained(&status, &revision) => {
            jobs::termination_message(&ctx, &owner.namespace, name)
                .await?
                .map(|words| jobs::last_line(&words))
                .filter(|words| !words.is_empty())
        }
        _ => None,
    };
    let deployment = ctx
        .stores
        .deployments
        .get(&ObjectRef::new(&serving_name(&owner.name)).within(&owner.namespace));
    let observed = ModelObserved {
        revision: &revision,
        training: training.as_ref(),
        last_words: last_words.as_deref(),
        deployment: deployment.as_deref(),
    };
    let status = derive_status(&model, &previous.conditions, status, &observed);
    if let Some((name, JobState::Failed { message, .. })) = &training
        && airq_api::common::condition(&status.conditions, "Ready").is_some_and(|c| c.reason == "TrainingFailed")
        && previous_reason.as_deref() != Some("TrainingFailed")
    {
        let note = format!("Job {name}: {}", failure(message, last_words.as_deref()));
        event(&ctx, model.as_ref(), true, "TrainingFailed", "Train", note);
    }
    update(&ctx, model.as_ref(), model.status.as_ref(), status).await?;
    Ok(Action::await_change())
}

/// The model a training Job belongs to, from its label.
pub fn model_of_job(job: &Job) -> Option<ObjectRef<PredictiveModel>> {
    let name = job.labels().get(MODEL_LABEL)?;
    Some(ObjectRef::new(name).within(&job.namespace()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn owner() -> Owner {
        Owner {
            kind: "PredictiveModel",
            api_version: "airq.dev/v1alpha1".to_owned(),
            name: "pm25".to_owned(),
            namespace: "airq".to_owned(),
            uid: "uid-m".to_owned(),
        }
    }

    fn model(extra: &str) -> PredictiveModel {
        serde_saphyr::from_str(&format!(
            "apiVersion: airq.dev/v1alpha1\nkind: PredictiveModel\nmetadata: {{ name: pm25, namespace: airq, uid: uid-m }}\nspec:\n  target: {{ pollutant: pm25 }}\n  algorithm: {{ knn: {{ k: 7, distance: manhattan }} }}\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn an_untrained_model_gets_a_training_job_with_its_node_placement() {
        let model =
            model("  training:\n    nodeSelector: { airq.dev/pool: big }\n    resources: { limits: { cpu: \"4\" } }\n");
        let rev = model.spec.revision();
        let desired = build(&model, &owner(), "img/p:1".to_owned(), &rev, None, &[]);
        let [Child::Job(job)] = desired.children.as_slice() else {
            panic!("{:?}", desired.children)
        };
        assert_eq!(job.metadata.name.clone().unwrap(), format!("model-pm25-train-{rev}"));
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.node_selector.as_ref().unwrap()["airq.dev/pool"], "big");
        let limits = pod.containers[0].resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["cpu"].0, "4");
        let spec_env = pod.containers[0]
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "AIRQ_MODEL_SPEC")
            .unwrap();
        assert!(spec_env.value.as_deref().unwrap().contains("\"manhattan\""));
    }

    #[test]
    fn the_revision_follows_training_inputs_and_the_retrain_request_only() {
        let base = model("").spec.revision();
        assert_eq!(base, model("  serving: { replicas: 5 }\n").spec.revision());
        assert_ne!(base, model("  retrainRequest: \"2026-11-29\"\n").spec.revision());
        assert_ne!(base, model("  horizonHours: 48\n").spec.revision());
    }

    #[test]
    fn a_trained_model_is_served_and_not_trained_again() {
        let model = model("  serving: { replicas: 2 }\n  training: { schedule: \"0 3 * * *\" }\n");
        let rev = model.spec.revision();
        let served = Served {
            version: "v7".to_owned(),
            revision: rev.clone(),
        };
        let desired = build(&model, &owner(), "img/p:1".to_owned(), &rev, Some(&served), &[]);
        let kinds: Vec<ChildKind> = desired.children.iter().map(Child::kind).collect();
        assert_eq!(
            kinds,
            [
                ChildKind::CronJob,
                ChildKind::PodDisruptionBudget,
                ChildKind::Deployment,
                ChildKind::Service
            ]
        );
        // Two replicas: evicted one at a time.
        let Child::PodDisruptionBudget(budget) = &desired.children[1] else {
            panic!()
        };
        let budget = budget.spec.clone().unwrap_or_default();
        assert_eq!(budget.max_unavailable, Some(IntOrString::Int(1)));
        let Child::Deployment(deployment) = &desired.children[2] else {
            panic!()
        };
        assert_eq!(deployment_version(deployment).as_deref(), Some("v7"));
        let strategy = deployment.spec.as_ref().unwrap().strategy.as_ref().unwrap();
        assert_eq!(
            strategy.rolling_update.as_ref().unwrap().max_unavailable,
            Some(IntOrString::Int(0))
        );
        // A new revision trains while the old version keeps serving.
        let retrain = self::model("  retrainRequest: again\n").spec.revision();
        let desired = build(&model, &owner(), "img/p:1".to_owned(), &retrain, Some(&served), &[]);
        assert!(
            desired
                .children
                .iter()
                .any(|c| c.name() == format!("model-pm25-train-{retrain}"))
        );
        assert!(desired.children.iter().any(|c| c.kind() == ChildKind::Deployment));
    }

    /// The serving Deployment `build` makes for version `version`, with `ready` of its pods available.
    fn serving_deployment(model: &PredictiveModel, version: &str, ready: i32) -> Deployment {
        let rev = model.spec.revision();
        let served = Served {
            version: version.to_owned(),
            revision: rev.clone(),
        };
        let desired = build(model, &owner(), "img/p:1".to_owned(), &rev, Some(&served), &[]);
        let deployment = desired
            .children
            .into_iter()
            .find_map(|c| match c {
                Child::Deployment(d) => Some(d),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no Deployment"));
        crate::controllers::adhoc::observed_with_ready(deployment, ready)
    }

    fn reported(version: &str, revision: &str) -> PredictiveModelStatus {
        PredictiveModelStatus {
            model_version: Some(version.to_owned()),
            trained_revision: Some(revision.to_owned()),
            ..PredictiveModelStatus::default()
        }
    }

    fn ready(status: &PredictiveModelStatus) -> (String, String, String) {
        let c = airq_api::common::condition(&status.conditions, "Ready").unwrap_or_else(|| panic!("no Ready"));
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    #[test]
    fn status_of_a_new_model_says_its_training_job_is_coming() {
        let model = model("");
        let rev = model.spec.revision();
        let observed = ModelObserved {
            revision: &rev,
            training: None,
            last_words: None,
            deployment: None,
        };
        let status = derive_status(&model, &[], PredictiveModelStatus::default(), &observed);
        assert_eq!(status.phase, Some(ModelPhase::Training));
        let (value, reason, message) = ready(&status);
        assert_eq!((value.as_str(), reason.as_str()), ("False", "Training"));
        assert_eq!(message, format!("Job model-pm25-train-{rev} is being created"));
        let running = (format!("model-pm25-train-{rev}"), JobState::Running);
        let observed = ModelObserved {
            training: Some(&running),
            ..observed
        };
        let status = derive_status(&model, &status.conditions, PredictiveModelStatus::default(), &observed);
        assert_eq!(status.active_job.as_deref(), Some(running.0.as_str()));
        assert_eq!(ready(&status).2, format!("Job {} trains the model", running.0));
    }

    #[test]
    fn status_of_a_failed_training_carries_what_its_pod_said() {
        let model = model("");
        let rev = model.spec.revision();
        let failed = (
            "model-pm25-train-x".to_owned(),
            JobState::Failed {
                at: None,
                message: "Job has reached the specified backoff limit".to_owned(),
            },
        );
        let observed = ModelObserved {
            revision: &rev,
            training: Some(&failed),
            last_words: Some("error: no measurements of pm25"),
            deployment: None,
        };
        let status = derive_status(&model, &[], PredictiveModelStatus::default(), &observed);
        assert_eq!(status.phase, Some(ModelPhase::Failed));
        assert_eq!(status.active_job, None);
        let (value, reason, message) = ready(&status);
        assert_eq!((value.as_str(), reason.as_str()), ("False", "TrainingFailed"));
        assert_eq!(
            message,
            "Job model-pm25-train-x failed: error: no measurements of pm25 (Job has reached the specified backoff \
             limit); change the spec or retrainRequest to try again"
        );
    }

    #[test]
    fn status_is_ready_only_when_the_trained_version_answers_on_every_pod() {
        let model = model("  serving: { replicas: 2 }\n");
        let rev = model.spec.revision();
        let rolling = serving_deployment(&model, "v7", 1);
        let observed = ModelObserved {
            revision: &rev,
            training: None,
            last_words: None,
            deployment: Some(&rolling),
        };
        let status = derive_status(&model, &[], reported("v7", &rev), &observed);
        assert_eq!(status.phase, Some(ModelPhase::Training));
        let (value, reason, message) = ready(&status);
        assert_eq!((value.as_str(), reason.as_str()), ("False", "RollingOut"));
        assert_eq!(message, "version v7 is rolling out: 1 of 2 pods ready");

        let old = serving_deployment(&model, "v6", 2);
        let observed = ModelObserved {
            deployment: Some(&old),
            ..observed
        };
        assert_eq!(
            ready(&derive_status(&model, &[], reported("v7", &rev), &observed)).1,
            "RollingOut"
        );

        let serving = serving_deployment(&model, "v7", 2);
        let observed = ModelObserved {
            deployment: Some(&serving),
            ..observed
        };
        let first = derive_status(&model, &[], reported("v7", &rev), &observed);
        assert_eq!(first.phase, Some(ModelPhase::Serving));
        assert_eq!(
            ready(&first),
            (
                "True".to_owned(),
                "Serving".to_owned(),
                "version v7 answers on 2 pods".to_owned()
            )
        );
        // Derived again from the same facts: the same status, transition times kept.
        let again = derive_status(&model, &first.conditions, reported("v7", &rev), &observed);
        assert_eq!(again, first);
    }

    #[test]
    fn status_of_a_retraining_model_keeps_serving_the_old_version() {
        let model = model("  retrainRequest: again\n");
        let rev = model.spec.revision();
        let serving = serving_deployment(&model, "v7", 1);
        let running = ("model-pm25-train-new".to_owned(), JobState::Running);
        let observed = ModelObserved {
            revision: &rev,
            training: Some(&running),
            last_words: None,
            deployment: Some(&serving),
        };
        let status = derive_status(&model, &[], reported("v7", "an-older-revision"), &observed);
        let serving = airq_api::common::condition(&status.conditions, "Serving").map(|c| c.status.clone());
        assert_eq!(serving.as_deref(), Some("True"));
        assert_eq!(ready(&status).1, "Training");
        assert_eq!(status.active_job.as_deref(), Some("model-pm25-train-new"));
    }
}

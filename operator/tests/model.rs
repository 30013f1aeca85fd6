//! PredictiveModel on the real control plane and node: the data loaded by an EtlSchedule's Job, a training Job whose
//! pod trains and stores a version, serving pods for it, retraining requested with a patch while the old version
//! keeps serving, a training that fails for real and waits for a change, and scheduled retraining.

mod common;

use std::time::Duration;

use airq_api::PredictiveModel;
use airq_api::model::ModelPhase;
use common::{create, has_condition, pod_database, settled_reconciles, setup, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

const MODEL: &str = "apiVersion: airq.dev/v1alpha1\nkind: PredictiveModel\nmetadata: { name: no2 }\nspec:\n  target: { pollutant: no2, stations: [Dongsi, Tiantan] }\n  algorithm: { knn: { k: 15, distance: cosine, weights: uniform } }\n  serving: { replicas: 1 }\n  training:\n    from: \"2015-03-01\"\n    nodeSelector: { kubernetes.io/os: linux }\n";

fn served_version(deployment: &Deployment) -> Option<String> {
    deployment.spec.clone()?.template.spec?.containers[0]
        .env
        .clone()?
        .into_iter()
        .find(|e| e.name == "AIRQ_MODEL_VERSION")?
        .value
}

async fn training_jobs(jobs: &Api<Job>) -> anyhow::Result<Vec<Job>> {
    Ok(jobs
        .list(&ListParams::default().labels("airq.dev/predictive-model=no2"))
        .await?
        .items)
}

async fn new_training_job(jobs: &Api<Job>, known: usize) -> anyhow::Result<Job> {
    Ok(
        airq_testenv::eventually("a new training Job", Duration::from_secs(30), || async {
            let mut all = training_jobs(jobs).await.map_err(|e| e.to_string())?;
            if all.len() <= known {
                return Err(format!("{} Jobs", all.len()));
            }
            all.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));
            all.pop().ok_or_else(|| "none".to_owned())
        })
        .await?,
    )
}

#[tokio::test]
async fn train_serve_retrain_and_fail() -> anyhow::Result<()> {
    let (client, ns, operator) = setup().await?;
    let models: Api<PredictiveModel> = Api::namespaced(client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let database = pod_database(&client, &ns).await?;
    // The data: two stations' files loaded by an EtlSchedule's Job from a server over HTTP.
    let files = airq_testenv::pods::serve_beijing(&["Dongsi", "Tiantan"]).await?;
    create::<airq_api::EtlSchedule>(
        &client,
        &ns,
        &format!("apiVersion: airq.dev/v1alpha1\nkind: EtlSchedule\nmetadata: {{ name: beijing }}\nspec:\n  source: {{ csv: {{ url: \"{files}\" }} }}\n"),
    )
    .await?;
    wait_for(
        &Api::<airq_api::EtlSchedule>::namespaced(client.clone(), &ns),
        "beijing",
        "the data loaded",
        240,
        has_condition("Ready", "True", Some("Succeeded")),
    )
    .await?;
    let model: PredictiveModel = create(&client, &ns, MODEL).await?;

    // A training Job, on the nodes the spec selects, with the algorithm's parameters.
    let first = new_training_job(&jobs, 0).await?;
    assert!(common::owned_by(&first, &model.uid().unwrap_or_default()));
    let pod = first.spec.clone().unwrap_or_default().template.spec.unwrap_or_default();
    assert_eq!(
        pod.node_selector
            .unwrap_or_default()
            .get("kubernetes.io/os")
            .map(String::as_str),
        Some("linux")
    );
    let env = serde_json::to_string(&pod.containers[0].env)?;
    assert!(env.contains("cosine") && env.contains("Dongsi"), "{env}");
    let training = wait_for(
        &models,
        "no2",
        "phase Training",
        30,
        has_condition("Trained", "False", Some("Training")),
    )
    .await?;
    assert_eq!(
        training.status.as_ref().and_then(|s| s.phase),
        Some(ModelPhase::Training)
    );
    assert!(
        deployments.get_opt("model-no2").await?.is_none(),
        "nothing to serve before training"
    );

    // The training pod trains, stores v1 and reports it: version v1 is served.
    let serving = wait_for(&deployments, "model-no2", "the serving Deployment", 240, |d| {
        (served_version(d).as_deref() == Some("v1"))
            .then_some(())
            .ok_or(format!("{:?}", served_version(d)))
    })
    .await?;
    assert!(common::owned_by(&serving, &model.uid().unwrap_or_default()));
    services.get("model-no2").await?;
    wait_for(&models, "no2", "Trained=True, Serving=False", 30, |m| {
        has_condition("Trained", "True", None)(m)?;
        has_condition("Serving", "False", None)(m)
    })
    .await?;
    common::pods_ready(
        &client,
        &ns,
        "app.kubernetes.io/name=airq-model,app.kubernetes.io/instance=no2",
        1,
    )
    .await?;
    let ready = wait_for(
        &models,
        "no2",
        "Ready=True",
        60,
        has_condition("Ready", "True", Some("Serving")),
    )
    .await?;
    let status = ready.status.clone().unwrap_or_default();
    assert_eq!(status.model_version.as_deref(), Some("v1"));
    // The report of the real training: NO2 errors of a few tens of µg/m³, and a calibrated interval.
    let metrics = status.metrics.clone().unwrap_or_default();
    assert!(metrics.mae.is_some_and(|mae| mae > 1.0 && mae < 60.0), "{metrics:?}");
    assert!(metrics.coverage90.is_some_and(|c| c > 0.7), "{metrics:?}");
    assert_eq!(status.phase, Some(ModelPhase::Serving));
    assert_eq!(status.trained_generation, ready.metadata.generation);

    // Retraining requested with a patch (what `kubectl patch` or `kubectl airq retrain` does).
    models
        .patch(
            "no2",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "retrainRequest": "2026-11-29T12:00:00Z" } })),
        )
        .await?;
    let second = new_training_job(&jobs, 1).await?;
    assert_ne!(second.name_any(), first.name_any());
    wait_for(
        &models,
        "no2",
        "Ready=False while retraining",
        30,
        has_condition("Ready", "False", Some("Training")),
    )
    .await?;
    assert_eq!(
        served_version(&deployments.get("model-no2").await?).as_deref(),
        Some("v1"),
        "the old version must keep serving"
    );
    wait_for(&deployments, "model-no2", "version v2 rolled out", 240, |d| {
        (served_version(d).as_deref() == Some("v2"))
            .then_some(())
            .ok_or(format!("{:?}", served_version(d)))
    })
    .await?;
    wait_for(
        &models,
        "no2",
        "v2 served and Ready",
        120,
        has_condition("Ready", "True", None),
    )
    .await?;

    // A change that fails to train (a station the database does not have): Failed, v2 still served, no retry loop.
    models
        .patch(
            "no2",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "target": { "stations": ["Atlantis"] } } })),
        )
        .await?;
    new_training_job(&jobs, 2).await?;
    let failed = wait_for(
        &models,
        "no2",
        "TrainingFailed",
        180,
        has_condition("Trained", "False", Some("TrainingFailed")),
    )
    .await?;
    assert!(
        common::condition_of(&failed, "Trained").is_some_and(|(_, _, m)| m.contains("Atlantis")),
        "the reason names what is wrong: {:?}",
        common::condition_of(&failed, "Trained")
    );
    assert_eq!(failed.status.as_ref().and_then(|s| s.phase), Some(ModelPhase::Failed));
    assert_eq!(
        failed.status.as_ref().and_then(|s| s.model_version.clone()).as_deref(),
        Some("v2")
    );
    assert_eq!(
        served_version(&deployments.get("model-no2").await?).as_deref(),
        Some("v2")
    );
    let before = settled_reconciles(&operator, "PredictiveModel").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        operator.ctx.stats.reconciles("PredictiveModel"),
        before,
        "a failed training is retried in a loop"
    );
    assert_eq!(training_jobs(&jobs).await?.len(), 3);

    // Scheduled retraining: a CronJob with the same training template.
    models
        .patch(
            "no2",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "training": { "schedule": "0 3 * * 0" } } })),
        )
        .await?;
    let cron: CronJob = wait_for(
        &Api::namespaced(client.clone(), &ns),
        "model-no2-retrain",
        "the retraining CronJob",
        30,
        |_| Ok(()),
    )
    .await?;
    assert_eq!(cron.spec.schedule, "0 3 * * 0");
    let template = cron
        .spec
        .job_template
        .spec
        .unwrap_or_default()
        .template
        .spec
        .unwrap_or_default();
    assert_eq!(template.containers[0].args.as_deref(), Some(&["train".to_owned()][..]));
    operator.stop().await;
    database.test.remove().await?;
    airq_testenv::delete_namespace(&client, &ns).await?;
    Ok(())
}

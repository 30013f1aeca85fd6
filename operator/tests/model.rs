//! PredictiveModel on the real control plane: training (the training pod played by the test), serving the trained
//! version, retraining requested with a patch while the old version keeps serving, a failed training that waits for
//! a change, and scheduled retraining.

mod common;

use std::time::Duration;

use airq_api::PredictiveModel;
use airq_api::model::ModelPhase;
use common::{create, finish_job, has_condition, run_pods, secret, settled_reconciles, setup, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

const MODEL: &str = "apiVersion: airq.dev/v1alpha1\nkind: PredictiveModel\nmetadata: { name: no2 }\nspec:\n  target: { pollutant: no2, stations: [Dongsi, Tiantan] }\n  algorithm: { knn: { k: 15, distance: cosine, weights: uniform } }\n  serving: { replicas: 1 }\n  training:\n    nodeSelector: { airq.dev/pool: training }\n";

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
    secret(&client, &ns, "airq-database", "url", "postgres://airq:pw@db/airq").await?;
    let model: PredictiveModel = create(&client, &ns, MODEL).await?;

    // A training Job, on the training nodes, with the algorithm's parameters.
    let first = new_training_job(&jobs, 0).await?;
    assert!(common::owned_by(&first, &model.uid().unwrap_or_default()));
    let pod = first.spec.clone().unwrap_or_default().template.spec.unwrap_or_default();
    assert_eq!(
        pod.node_selector
            .unwrap_or_default()
            .get("airq.dev/pool")
            .map(String::as_str),
        Some("training")
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

    // The training pod finishes with its report: version v1 is served.
    finish_job(
        &client,
        &ns,
        &first.name_any(),
        true,
        r#"{"modelVersion":"v1","mae":17.5,"rmse":25.0,"coverage90":0.9}"#,
    )
    .await?;
    let serving = wait_for(&deployments, "model-no2", "the serving Deployment", 60, |d| {
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
    airq_testenv::eventually("the serving pod to run", Duration::from_secs(60), || async {
        let started = run_pods(
            &client,
            &ns,
            "app.kubernetes.io/name=airq-model,app.kubernetes.io/instance=no2",
        )
        .await
        .map_err(|e| e.to_string())?;
        if started >= 1 { Ok(()) } else { Err("no pod".to_owned()) }
    })
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
    assert_eq!(status.metrics.as_ref().and_then(|m| m.mae), Some(17.5));
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
    finish_job(
        &client,
        &ns,
        &second.name_any(),
        true,
        r#"{"modelVersion":"v2","mae":15.0}"#,
    )
    .await?;
    wait_for(&deployments, "model-no2", "version v2 rolled out", 60, |d| {
        (served_version(d).as_deref() == Some("v2"))
            .then_some(())
            .ok_or(format!("{:?}", served_version(d)))
    })
    .await?;
    airq_testenv::eventually("the new serving pod to run", Duration::from_secs(60), || async {
        run_pods(
            &client,
            &ns,
            "app.kubernetes.io/name=airq-model,app.kubernetes.io/instance=no2",
        )
        .await
        .map_err(|e| e.to_string())?;
        let m = models.get("no2").await.map_err(|e| e.to_string())?;
        has_condition("Ready", "True", None)(&m)
    })
    .await?;

    // A change that fails to train: Failed, v2 still served, no retry loop.
    models
        .patch(
            "no2",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "horizonHours": 48 } })),
        )
        .await?;
    let third = new_training_job(&jobs, 2).await?;
    common::fail_job(&client, &ns, &third.name_any(), "out of memory").await?;
    let failed = wait_for(
        &models,
        "no2",
        "TrainingFailed",
        90,
        has_condition("Trained", "False", Some("TrainingFailed")),
    )
    .await?;
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
    Ok(())
}

//! EtlSchedule on the real control plane and node: a CronJob honouring suspend and history limits, a run requested
//! by hand whose pod loads a Beijing file over HTTP and whose report (the pod's termination message) reaches the
//! status and, the run being unusual against the load's earlier runs, a Warning Event; a one-off load that fails for
//! real and waits for a change; a missing API-key Secret; deletion.

mod common;

use std::time::Duration;

use airq_api::EtlSchedule;
use common::{create, has_condition, pod_database, secret, settled_reconciles, setup, wait_for, wait_gone};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

const HOURLY: &str = "apiVersion: airq.dev/v1alpha1\nkind: EtlSchedule\nmetadata: { name: openaq-beijing }\nspec:\n  source:\n    openaq: { locations: [2178], parameters: [pm25, no2], apiKeySecret: { name: openaq, key: api-key } }\n  schedule: \"15 * * * *\"\n  successfulJobsHistoryLimit: 2\n";

async fn job_named(jobs: &Api<Job>, prefix: &str) -> anyhow::Result<Job> {
    Ok(
        airq_testenv::eventually(&format!("a Job named {prefix}*"), Duration::from_secs(30), || async {
            let list = jobs.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .find(|j| j.name_any().starts_with(prefix))
                .ok_or_else(|| "none yet".to_owned())
        })
        .await?,
    )
}

#[tokio::test]
async fn scheduled_load_lifecycle() -> anyhow::Result<()> {
    let (client, ns, operator) = setup().await?;
    let schedules: Api<EtlSchedule> = Api::namespaced(client.clone(), &ns);
    let cron_jobs: Api<CronJob> = Api::namespaced(client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let database = pod_database(&client, &ns).await?;

    // The API key's Secret is missing: Ready=False, no CronJob, no loop.
    let etl: EtlSchedule = create(&client, &ns, HOURLY).await?;
    let blocked = wait_for(
        &schedules,
        "openaq-beijing",
        "SecretNotFound",
        30,
        has_condition("Ready", "False", Some("SecretNotFound")),
    )
    .await?;
    assert!(common::condition_of(&blocked, "Ready").is_some_and(|(_, _, m)| m.contains("openaq")));
    let before = settled_reconciles(&operator, "EtlSchedule").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(operator.ctx.stats.reconciles("EtlSchedule"), before);
    assert!(cron_jobs.get_opt("etl-openaq-beijing").await?.is_none());

    // With it: the CronJob, with the key and the database URL from their Secrets.
    secret(&client, &ns, "openaq", "api-key", "k3y").await?;
    let cron = wait_for(&cron_jobs, "etl-openaq-beijing", "the CronJob", 30, |_| Ok(())).await?;
    assert!(common::owned_by(&cron, &etl.uid().unwrap_or_default()));
    assert_eq!(cron.spec.schedule, "15 * * * *");
    assert_eq!(cron.spec.successful_jobs_history_limit, Some(2));
    assert_eq!(cron.spec.concurrency_policy.as_deref(), Some("Forbid"));
    let text = serde_json::to_string(&cron)?;
    assert!(
        !text.contains("k3y") && !text.contains("postgres://"),
        "a secret value was inlined"
    );
    wait_for(
        &schedules,
        "openaq-beijing",
        "Ready=True Scheduled",
        30,
        has_condition("Ready", "True", Some("Scheduled")),
    )
    .await?;

    // Suspend is honoured.
    schedules
        .patch(
            "openaq-beijing",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "suspend": true } })),
        )
        .await?;
    wait_for(&cron_jobs, "etl-openaq-beijing", "the CronJob suspended", 30, |c| {
        (c.spec.suspend == Some(true))
            .then_some(())
            .ok_or("not suspended".to_owned())
    })
    .await?;
    wait_for(
        &schedules,
        "openaq-beijing",
        "Suspended",
        30,
        has_condition("Ready", "True", Some("Suspended")),
    )
    .await?;

    // The load's history: a dozen earlier runs asked for by hand (half a minute apart) that each read a day's values
    // of one station (24), as the database holds them (the schema made as every airq service makes it).
    let db = airq_core::db::Database::connect_url(&database.test.url, 2).await?;
    db.migrate().await?;
    db.close().await;
    for step in (1..=12).rev() {
        sqlx::query(
            "insert into load_runs (name, source, mode, spec, requested_by, status, rows_read, rows_inserted,
                 started_at, finished_at)
             values ('openaq-beijing', 'csv', 'incremental', '{}', 'test', 'succeeded', 24, 24,
                 now() - make_interval(secs => $1), now() - make_interval(secs => $1) + interval '2 seconds')",
        )
        .bind(f64::from(step * 30))
        .execute(&database.test.pool)
        .await?;
    }
    // A run requested by hand, of the station's whole file served over HTTP: a Job now, whose pod loads it; its
    // report reaches the status.
    let files = airq_testenv::pods::serve_beijing(&["Dongsi"]).await?;
    schedules
        .patch(
            "openaq-beijing",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": {
                "source": { "openaq": null, "csv": { "url": files, "format": "beijing" } },
                "runRequest": "2026-11-29T10:00:00Z",
            } })),
        )
        .await?;
    let job = job_named(&jobs, "etl-openaq-beijing-run-").await?;
    let done = wait_for(
        &schedules,
        "openaq-beijing",
        "the run's report in the status",
        180,
        |e| {
            let run = e.status.as_ref().and_then(|s| s.last_run.clone()).ok_or("no run yet")?;
            (run.succeeded && run.job == job.name_any())
                .then_some(())
                .ok_or(format!("{run:?}"))
        },
    )
    .await?;
    let status = done.status.unwrap_or_default();
    let run = status.last_run.unwrap_or_default();
    let stored: i64 = sqlx::query_scalar("select count(*) from measurements")
        .fetch_one(&database.test.pool)
        .await?;
    assert!(run.rows_inserted > 400_000, "{run:?}");
    assert_eq!(
        run.rows_inserted, stored,
        "the report's count is what the database holds"
    );
    assert!(run.rows_rejected > 0, "the file has values out of range: {run:?}");
    // Dongsi's last hour, 2017-02-28 23:00 in Beijing.
    assert_eq!(status.watermark.as_deref(), Some("2017-02-28T15:00:00+00:00"));
    // The run was unusual against the schedule's earlier runs: a Warning Event says how.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let unusual = airq_testenv::eventually("a LoadUnusual Event", Duration::from_secs(20), || async {
        let list = events.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("LoadUnusual"))
            .ok_or_else(|| "none yet".to_owned())
    })
    .await?;
    assert_eq!(unusual.type_.as_deref(), Some("Warning"));
    let note = unusual.note.unwrap_or_default();
    assert!(
        note.contains(&job.name_any()) && note.contains("values where its earlier runs give about 24"),
        "{note}"
    );

    // Delete → the CronJob and the Job are garbage-collected.
    schedules.delete("openaq-beijing", &DeleteParams::background()).await?;
    wait_gone(&cron_jobs, "etl-openaq-beijing", "the CronJob to be garbage-collected").await?;
    wait_gone(&jobs, &job.name_any(), "the Job to be garbage-collected").await?;
    operator.stop().await;
    database.test.remove().await?;
    airq_testenv::delete_namespace(&client, &ns).await?;
    Ok(())
}

#[tokio::test]
async fn one_off_backfill_that_fails_waits_for_a_change() -> anyhow::Result<()> {
    let (client, ns, operator) = setup().await?;
    let schedules: Api<EtlSchedule> = Api::namespaced(client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let database = pod_database(&client, &ns).await?;
    // A folder the load's pod does not have: the load fails for real, on each of the Job's attempts.
    create::<EtlSchedule>(&client, &ns, "apiVersion: airq.dev/v1alpha1\nkind: EtlSchedule\nmetadata: { name: beijing }\nspec:\n  source: { csv: { url: /data/beijing-multisite, format: beijing } }\n  mode: backfill\n  backfill: { from: 2013-03-01, to: 2017-03-01, chunkDays: 90, parallelism: 2 }\n").await?;
    let job = job_named(&jobs, "etl-beijing-").await?;
    let env = job
        .spec
        .clone()
        .unwrap_or_default()
        .template
        .spec
        .unwrap_or_default()
        .containers[0]
        .env
        .clone()
        .unwrap_or_default();
    let load = env
        .iter()
        .find(|e| e.name == "AIRQ_LOAD_SPEC")
        .and_then(|e| e.value.clone())
        .unwrap_or_default();
    assert!(
        load.contains("\"chunkDays\":90") && load.contains("beijing-multisite"),
        "{load}"
    );
    wait_for(
        &schedules,
        "beijing",
        "Running",
        30,
        has_condition("Ready", "False", Some("Running")),
    )
    .await?;

    let failed = wait_for(
        &schedules,
        "beijing",
        "LoadFailed",
        180,
        has_condition("Ready", "False", Some("LoadFailed")),
    )
    .await?;
    let run = failed.status.and_then(|s| s.last_run).unwrap_or_default();
    assert!(!run.succeeded);
    let message = run.message.unwrap_or_default();
    assert!(
        message.contains("/data/beijing-multisite") && message.contains("No such file"),
        "{message}"
    );
    let before = settled_reconciles(&operator, "EtlSchedule").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        operator.ctx.stats.reconciles("EtlSchedule"),
        before,
        "a failed load is retried in a loop"
    );
    assert_eq!(
        jobs.list(&ListParams::default()).await?.items.len(),
        1,
        "a failed one-off load was started again"
    );
    operator.stop().await;
    database.test.remove().await?;
    airq_testenv::delete_namespace(&client, &ns).await?;
    Ok(())
}

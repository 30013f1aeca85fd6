//! `kubectl-airq`, the real binary, against the test control plane with the operator running in the test process and
//! the pods on the test node: the training and loading Jobs' pods really run `airq-predictive train` and
//! `airq-etl`, the model's server really answers the forecasts the plugin asks for through the API server's proxy.

use std::process::Output;
use std::time::Duration;

use airq_api::{EtlSchedule, PredictiveModel};
use airq_operator::Operator;
use airq_operator::config::OperatorArgs;
use airq_testenv::kubernetes::create;
use airq_testenv::pods::{PodDatabase, pod_database};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

async fn setup() -> anyhow::Result<(kube::Client, String, Operator)> {
    let client = airq_testenv::kube_client().await?;
    airq_testenv::kubernetes::install_crds(&client, airq_api::crds()).await?;
    let ns = airq_testenv::namespace(&client).await?;
    let images = airq_testenv::images().await?;
    let args = OperatorArgs {
        namespace: Some(ns.clone()),
        image_registry: images.registry,
        image_version: images.tag,
        image_pull_policy: "Never".to_owned(),
        concurrency: 4,
        leader_election: false,
        lease_namespace: "default".to_owned(),
        lease_name: "airq-operator".to_owned(),
        identity: Some(format!("test-{ns}")),
        monitoring_recheck_seconds: 60,
    };
    let operator = Operator::start(client.clone(), args).await?;
    Ok((client, ns, operator))
}

/// Dongsi's file loaded into the pods' database (by the ETL, in the test process: what a load's Job would do).
async fn load_dongsi(database: &PodDatabase) -> anyhow::Result<()> {
    use airq_core::db::Database;
    use airq_core::store::Store;
    let dir = tempfile::tempdir()?;
    for entry in std::fs::read_dir(airq_testenv::shared_data("beijing-multisite")?)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("_Dongsi_"))
        {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap_or_default()))?;
        }
    }
    let db = Database::connect_url(&database.test.url, 4).await?;
    db.migrate().await?;
    let load = airq_etl::load::LoadRequest::csv(
        "beijing",
        &dir.path().display().to_string(),
        airq_api::etl::CsvFormat::Beijing,
        "test",
    );
    airq_etl::load::run_to_end(&Store::new(db.clone()), &load).await?;
    db.close().await;
    Ok(())
}

/// The plugin, as kubectl would start it, talking to the test control plane.
async fn plugin_command(args: &[&str]) -> anyhow::Result<tokio::process::Command> {
    let kubeconfig = airq_testenv::kubernetes().await?.kubeconfig;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-airq"));
    command.args(args).env("KUBECONFIG", kubeconfig).kill_on_drop(true);
    Ok(command)
}

/// Starts the plugin with its output captured, to run while the test watches the cluster.
async fn spawn_plugin(args: &[&str]) -> anyhow::Result<tokio::process::Child> {
    Ok(plugin_command(args)
        .await?
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?)
}

async fn plugin(args: &[&str]) -> anyhow::Result<Output> {
    Ok(plugin_command(args).await?.output().await?)
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const MODEL: &str = "apiVersion: airq.dev/v1alpha1\nkind: PredictiveModel\nmetadata: { name: pm25 }\nspec:\n  target: { pollutant: pm25 }\n  horizonHours: 12\n  algorithm: { persistence: {} }\n  training: { from: \"2016-09-01\" }\n";

/// The training Job of the model's current spec.
async fn training_job(models: &Api<PredictiveModel>, name: &str) -> anyhow::Result<String> {
    let model = models.get(name).await?;
    Ok(airq_api::model::training_job_name(name, &model.spec.revision()))
}

/// Waits until the model is Ready with `version`: trained by its Job's pod, and served by its server's pods.
async fn serve(models: &Api<PredictiveModel>, version: &str) -> anyhow::Result<()> {
    airq_testenv::eventually("the model to be Ready", Duration::from_secs(240), || async {
        let model = models.get("pm25").await.map_err(|e| e.to_string())?;
        let status = model.status.unwrap_or_default();
        let ready = airq_api::common::condition(&status.conditions, "Ready").map(|c| c.status.clone());
        match (status.model_version.as_deref(), ready.as_deref()) {
            (Some(v), Some("True")) if v == version => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn status_lists_every_resource_and_says_why_a_broken_one_is_not_ready() -> anyhow::Result<()> {
    let (client, ns, _operator) = setup().await?;
    // No database Secret: the Platform and the schedule cannot work, and say so.
    create::<airq_api::Platform>(
        &client,
        &ns,
        "apiVersion: airq.dev/v1alpha1\nkind: Platform\nmetadata: { name: airq }\nspec: {}\n",
    )
    .await?;
    create::<EtlSchedule>(&client, &ns, "apiVersion: airq.dev/v1alpha1\nkind: EtlSchedule\nmetadata: { name: nightly }\nspec:\n  source: { csv: { url: https://data.example.org/x.csv } }\n  schedule: \"0 3 * * *\"\n").await?;
    create::<PredictiveModel>(&client, &ns, MODEL).await?;

    let output = airq_testenv::eventually("the status to show the reasons", Duration::from_secs(30), || async {
        let output = plugin(&["status", "-n", &ns]).await.map_err(|e| e.to_string())?;
        let (stdout, _) = text(&output);
        if stdout.contains("SecretNotFound") && stdout.matches("NotObserved").count() == 0 {
            Ok(output)
        } else {
            Err(stdout)
        }
    })
    .await?;
    let (stdout, stderr) = text(&output);
    // Not everything is Ready: exit code 3, and a count on stderr.
    assert_eq!(output.status.code(), Some(3), "{stdout}{stderr}");
    assert!(stderr.contains("3 of 3 resources are not Ready"), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("KIND") && lines[0].contains("READY") && lines[0].contains("REASON"),
        "{stdout}"
    );
    let platform = lines
        .iter()
        .find(|l| l.starts_with("Platform"))
        .copied()
        .unwrap_or_default();
    assert!(platform.contains("airq") && platform.contains("False"), "{stdout}");
    assert!(
        platform.contains("SecretNotFound") && platform.contains("airq-database"),
        "{platform}"
    );
    let schedule = lines
        .iter()
        .find(|l| l.starts_with("EtlSchedule"))
        .copied()
        .unwrap_or_default();
    assert!(
        schedule.contains("nightly") && schedule.contains("airq-database"),
        "{schedule}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("PredictiveModel") && l.contains("pm25")),
        "{stdout}"
    );

    // Every namespace: the namespace column.
    let all = plugin(&["status", "-A"]).await?;
    let (stdout, _) = text(&all);
    assert!(stdout.starts_with("NAMESPACE"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(&ns) && l.contains("SecretNotFound")),
        "{stdout}"
    );

    // An empty namespace.
    let empty = airq_testenv::namespace(&client).await?;
    let output = plugin(&["status", "-n", &empty]).await?;
    assert!(output.status.success());
    assert!(text(&output).0.contains("No airq resources in namespace"));
    Ok(())
}

#[tokio::test]
async fn retrain_sets_the_request_reports_the_job_and_waits_for_the_new_version() -> anyhow::Result<()> {
    let (client, ns, _operator) = setup().await?;
    let database = pod_database(&client, &ns).await?;
    load_dongsi(&database).await?;
    create::<PredictiveModel>(&client, &ns, MODEL).await?;
    let models: Api<PredictiveModel> = Api::namespaced(client.clone(), &ns);
    let first = training_job(&models, "pm25").await?;
    serve(&models, "v1").await?;

    // Retrain and wait: the plugin follows the new Job until v2 is served.
    let child = spawn_plugin(&["retrain", "pm25", "-n", &ns, "--timeout", "4m"]).await?;
    let second = airq_testenv::eventually("the retrain request", Duration::from_secs(30), || async {
        let model = models.get("pm25").await.map_err(|e| e.to_string())?;
        model.spec.retrain_request.clone().ok_or("not yet")?;
        training_job(&models, "pm25").await.map_err(|e| e.to_string())
    })
    .await?;
    assert_ne!(first, second, "a retrain request is a new training Job");
    serve(&models, "v2").await?;
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await??;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains(&format!("training Job {second}")), "{stdout}");
    // The figures of the real training, as the status holds them.
    let metrics = models
        .get("pm25")
        .await?
        .status
        .and_then(|s| s.metrics)
        .unwrap_or_default();
    let mae = metrics.mae.ok_or_else(|| anyhow::anyhow!("no MAE in the status"))?;
    assert!(
        stdout.contains(&format!("pm25 v2 is Ready (was v1): MAE {mae:.2}, RMSE ")),
        "{stdout}"
    );
    // Without a terminal, each step is a line on stderr.
    assert!(stderr.contains(&format!("training Job {second}:")), "{stderr}");

    // --no-wait: the request is set and the Job named, which the operator then creates.
    let output = plugin(&["retrain", "pm25", "-n", &ns, "--no-wait"]).await?;
    let (stdout, _) = text(&output);
    assert!(output.status.success(), "{stdout}");
    let third = training_job(&models, "pm25").await?;
    assert!(stdout.contains(&third), "{stdout} should name {third}");
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), &ns);
    airq_testenv::eventually("the Job the plugin named", Duration::from_secs(30), || async {
        jobs.get_opt(&third)
            .await
            .map_err(|e| e.to_string())?
            .map(|_| ())
            .ok_or("not created".to_owned())
    })
    .await?;

    serve(&models, "v3").await?;

    // A failing training (a station the database does not have): the plugin says so and exits non-zero.
    models
        .patch(
            "pm25",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "target": { "stations": ["Atlantis"] } } })),
        )
        .await?;
    let output = plugin(&["retrain", "pm25", "-n", &ns, "--timeout", "4m"]).await?;
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("error:") && stderr.contains("fail"), "{stderr}");

    // An unknown model.
    let output = plugin(&["retrain", "nope", "-n", &ns]).await?;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output)
            .1
            .contains(&format!("PredictiveModel \"nope\" not found in namespace {ns}"))
    );
    database.test.remove().await?;
    airq_testenv::delete_namespace(&client, &ns).await?;
    Ok(())
}

#[tokio::test]
async fn load_runs_the_schedule_now_and_reports_the_rows() -> anyhow::Result<()> {
    let (client, ns, _operator) = setup().await?;
    let database = pod_database(&client, &ns).await?;
    // Dongsi's file, served over HTTP to the load's pod.
    let files = airq_testenv::pods::serve_beijing(&["Dongsi"]).await?;
    create::<EtlSchedule>(&client, &ns, &format!("apiVersion: airq.dev/v1alpha1\nkind: EtlSchedule\nmetadata: {{ name: nightly }}\nspec:\n  source: {{ csv: {{ url: \"{files}\" }} }}\n  schedule: \"0 3 * * *\"\n")).await?;
    let schedules: Api<EtlSchedule> = Api::namespaced(client.clone(), &ns);
    let child = spawn_plugin(&["load", "nightly", "-n", &ns, "--timeout", "4m"]).await?;
    let job = airq_testenv::eventually("the run request", Duration::from_secs(30), || async {
        let schedule = schedules.get("nightly").await.map_err(|e| e.to_string())?;
        let request = schedule.spec.run_request.ok_or("not yet")?;
        Ok::<_, String>(airq_api::etl::run_job_name("nightly", &request))
    })
    .await?;
    let output = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output()).await??;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains(&format!("load requested: Job {job}")), "{stdout}");
    // What the load's pod reported, as the database holds it.
    let stored: i64 = sqlx::query_scalar("select count(*) from measurements")
        .fetch_one(&database.test.pool)
        .await?;
    let run = schedules
        .get("nightly")
        .await?
        .status
        .and_then(|s| s.last_run)
        .unwrap_or_default();
    assert_eq!(run.rows_inserted, stored);
    assert!(
        stdout.contains(&format!(
            "{stored} rows inserted, 0 updated, {} rejected",
            run.rows_rejected
        )),
        "{stdout}"
    );

    let output = plugin(&["load", "missing", "-n", &ns]).await?;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output)
            .1
            .contains(&format!("EtlSchedule \"missing\" not found in namespace {ns}"))
    );
    database.test.remove().await?;
    airq_testenv::delete_namespace(&client, &ns).await?;
    Ok(())
}

#[tokio::test]
async fn forecast_of_a_model_without_a_trained_version_says_so() -> anyhow::Result<()> {
    let (client, ns, _operator) = setup().await?;
    create::<PredictiveModel>(&client, &ns, MODEL).await?;
    let output = airq_testenv::eventually("the model's status", Duration::from_secs(30), || async {
        let output = plugin(&["forecast", "pm25", "-n", &ns, "--station", "Dongsi"])
            .await
            .map_err(|e| e.to_string())?;
        let (_, stderr) = text(&output);
        if stderr.contains("SecretNotFound") {
            Ok(output)
        } else {
            Err(stderr)
        }
    })
    .await?;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output)
            .1
            .contains("predictivemodel/pm25 has no trained version to ask yet")
    );
    Ok(())
}

#[tokio::test]
async fn forecast_asks_the_served_model_through_the_api_servers_service_proxy() -> anyhow::Result<()> {
    let (client, ns, _operator) = setup().await?;
    let database = pod_database(&client, &ns).await?;
    load_dongsi(&database).await?;
    create::<PredictiveModel>(&client, &ns, MODEL).await?;
    // The training Job's pod trains and stores the version; the server's pod serves it.
    let models: Api<PredictiveModel> = Api::namespaced(client.clone(), &ns);
    serve(&models, "v1").await?;
    let version = "v1";

    // The whole horizon, as a table; the Service's endpoints lead the API server's proxy to the server above.
    let output = airq_testenv::eventually("the forecast through the proxy", Duration::from_secs(60), || async {
        let output = plugin(&["forecast", "pm25", "-n", &ns, "--station", "Dongsi"])
            .await
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(text(&output).1)
        }
    })
    .await?;
    let (stdout, _) = text(&output);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with(&format!("pm25 {version} at Dongsi from 2017-02-28T15:00:00Z")),
        "{stdout}"
    );
    assert!(lines[1].starts_with("TIME") && lines[1].contains("80% INTERVAL") && lines[1].contains("90% INTERVAL"));
    assert_eq!(lines.len(), 2 + 12, "{stdout}");
    assert!(lines[2].starts_with("2017-02-28T16:00:00Z"), "{stdout}");

    // One hour, as JSON, with other confidence levels.
    let output = plugin(&[
        "forecast",
        "pm25",
        "-n",
        &ns,
        "--station",
        "Dongsi",
        "--at",
        "2017-02-28T20:00:00Z",
        "--confidence",
        "0.5",
        "-o",
        "json",
    ])
    .await?;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    let forecast: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(forecast["version"], json!(version));
    let points = forecast["points"].as_array().cloned().unwrap_or_default();
    assert_eq!(points.len(), 1, "{forecast}");
    assert_eq!(points[0]["time"], "2017-02-28T20:00:00Z");
    assert_eq!(points[0]["intervals"][0]["confidence"], 0.5);

    // The model server's own error comes back as the plugin's.
    let output = plugin(&["forecast", "pm25", "-n", &ns, "--station", "Atlantis"]).await?;
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.contains("model pm25 answered 404") && stderr.contains("Atlantis"),
        "{stderr}"
    );
    database.test.remove().await?;
    airq_testenv::delete_namespace(&client, &ns).await?;
    Ok(())
}

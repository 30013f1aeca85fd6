//! airq on the real test node, as a platform engineer runs it: `helm install` of the chart with the images this run
//! built (never pulled), the test PostgreSQL reached through the chart's Service for a database outside the cluster,
//! in a namespace enforcing the Pod Security Standard "restricted". Every pod really runs: the operator under the
//! chart's ServiceAccount with leader election, the core services behind their readiness probes, a load's Job
//! reading Beijing files over HTTP from a server this test runs, a training Job and the model's servers, an
//! AdhocService. A client asks the gateway for forecasts while a model is retrained, while `helm upgrade` rolls
//! every Deployment and while a gateway pod is deleted: failed requests are counted (goal 0). The dashboard is
//! opened through the gateway's Service in Chromium. At the end `helm uninstall` leaves only what docs/cluster.md
//! says it keeps.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use airq_api::common::condition;
use airq_api::{AdhocService, EtlSchedule, Platform, PredictiveModel};
use airq_testenv::eventually;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What the test's steps share.
struct Cluster {
    client: kube::Client,
    ns: String,
    kubeconfig: PathBuf,
    helm: PathBuf,
}

impl Cluster {
    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Runs helm with the test cluster's kubeconfig; its output, or an error with what it printed.
    async fn helm(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = tokio::process::Command::new(&self.helm)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", std::env::temp_dir().join("airq-helm-cache"))
            .env("HELM_CONFIG_HOME", std::env::temp_dir().join("airq-helm-config"))
            .env("HELM_DATA_HOME", std::env::temp_dir().join("airq-helm-data"))
            .output()
            .await?;
        anyhow::ensure!(
            output.status.success(),
            "helm {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Applies a YAML document (server-side apply, as `kubectl apply --server-side` does).
    async fn apply<K>(&self, yaml: &str) -> anyhow::Result<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let object: K = serde_saphyr::from_str(yaml)?;
        let name = object.meta().name.clone().unwrap_or_default();
        Ok(self
            .api::<K>()
            .patch(&name, &PatchParams::apply("platform-engineer"), &Patch::Apply(&object))
            .await?)
    }

    /// The ClusterIP address of Service `name`, port 80.
    async fn service_url(&self, name: &str) -> anyhow::Result<String> {
        let service = self.api::<Service>().get(name).await?;
        let ip = service
            .spec
            .and_then(|s| s.cluster_ip)
            .ok_or_else(|| anyhow::anyhow!("Service {name} has no cluster IP"))?;
        Ok(format!("http://{ip}"))
    }

    async fn secret_value(&self, name: &str, key: &str) -> anyhow::Result<String> {
        let secret = self.api::<Secret>().get(name).await?;
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .ok_or_else(|| anyhow::anyhow!("Secret {name} has no key {key}"))?;
        Ok(String::from_utf8(bytes.0.clone())?)
    }

    /// Waits until every Deployment of the namespace runs `replicas` up-to-date, ready pods and no other.
    async fn rolled_out(&self, what: &str, timeout: Duration) -> anyhow::Result<()> {
        let deployments = self.api::<Deployment>();
        eventually(what, timeout, || async {
            let list = deployments
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            for d in &list.items {
                let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                let status = d.status.clone().unwrap_or_default();
                let current = status.observed_generation >= d.metadata.generation
                    && status.updated_replicas == Some(want)
                    && status.ready_replicas == Some(want)
                    && status.available_replicas == Some(want)
                    && status.replicas == Some(want);
                if !current {
                    return Err(format!("Deployment {}: {status:?}", d.name_any()));
                }
            }
            Ok(())
        })
        .await?;
        Ok(())
    }
}

/// Requests asked every 100 ms until stopped, each URL in turn, over one client that keeps its connections as any
/// HTTP client does; what they answered.
struct Traffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Tally>,
}

#[derive(Debug, Default)]
struct Tally {
    answered: u64,
    /// Each failure: the URL and what came back.
    failed: Vec<String>,
}

impl Traffic {
    fn start(urls: Vec<String>, key: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let http = airq_testenv::http_client();
            let mut tally = Tally::default();
            let mut turn = 0usize;
            while !flag.load(Ordering::Relaxed) {
                let url = &urls[turn % urls.len()];
                turn += 1;
                let started = Instant::now();
                let outcome = http
                    .get(url)
                    .bearer_auth(&key)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                match outcome {
                    Ok(response) if response.status().is_success() => {
                        // The whole body: an answer cut short is a failure too.
                        match response.bytes().await {
                            Ok(_) => tally.answered += 1,
                            Err(e) => tally.failed.push(format!("{url}: body: {e}")),
                        }
                    }
                    Ok(response) => {
                        let status = response.status();
                        let body = response.text().await.unwrap_or_default();
                        tally.failed.push(format!(
                            "{url}: {status} {}",
                            body.chars().take(200).collect::<String>()
                        ));
                    }
                    Err(e) => tally
                        .failed
                        .push(format!("{url}: {e:?} after {:.1?}", started.elapsed())),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tally
        });
        Self { stop, task }
    }

    async fn finish(self) -> anyhow::Result<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.task.await?)
    }
}

/// Writes down a figure of the scenario (and prints it at once: a later failure keeps what was measured).
fn note(figures: &mut BTreeMap<&'static str, String>, what: &'static str, figure: String) {
    eprintln!("airq on the real node: {what}: {figure}");
    figures.insert(what, figure);
}

/// Every pod of the namespace: Running with every container ready, or Succeeded (a finished Job).
async fn pods_running(cluster: &Cluster) -> anyhow::Result<Vec<Pod>> {
    let pods = cluster.api::<Pod>().list(&ListParams::default()).await?.items;
    for pod in &pods {
        let status = pod.status.clone().unwrap_or_default();
        let phase = status.phase.clone().unwrap_or_default();
        let ready = status
            .container_statuses
            .as_ref()
            .is_some_and(|c| c.iter().all(|c| c.ready));
        anyhow::ensure!(
            phase == "Succeeded" || (phase == "Running" && ready),
            "pod {} is {phase} (ready {ready}): {:?}",
            pod.name_any(),
            status.container_statuses
        );
    }
    Ok(pods)
}

#[tokio::test]
async fn a_platform_engineer_runs_airq_on_a_real_node() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut figures: BTreeMap<&str, String> = BTreeMap::new();
    airq_testenv::node().await?;
    let images = airq_testenv::images().await?;
    let postgres = airq_testenv::postgres().await?;
    let database = airq_testenv::database().await?;
    let kubeconfig = airq_testenv::kubernetes().await?.kubeconfig;
    let client = airq_testenv::kube_client().await?;
    // Pods of this namespace must meet "restricted": what is not allowed is refused, not run.
    let ns = airq_testenv::restricted_namespace(&client).await?;
    // Cluster-scoped objects (the operator's ClusterRole) carry the release's name: one of its own per run.
    let release = format!("airq-{}", ns.trim_start_matches("t-"));
    let release = release.as_str();
    let cluster = Cluster {
        client: client.clone(),
        ns: ns.clone(),
        kubeconfig,
        helm: airq_testenv::helm().await?,
    };

    // The database outside the cluster, as docs/cluster.md says: a Secret with its URL, naming the Service the chart
    // makes for the server's address.
    let db_address = postgres
        .pod_address
        .ok_or_else(|| anyhow::anyhow!("PostgreSQL does not listen on this machine's address"))?;
    let db_url = postgres.pod_url_for(&format!("airq-database.{ns}.svc"), 5432, &database.name);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "airq-database" },
        "stringData": { "url": db_url },
    }))?;
    cluster.api::<Secret>().create(&PostParams::default(), &secret).await?;

    // helm install, as a platform engineer would with images of their own registry that are already on the node.
    let chart = repository().join("helm/airq");
    let chart = chart.to_string_lossy().into_owned();
    let install_started = Instant::now();
    let common_values = [
        format!("image.registry={}", images.registry),
        format!("image.tag={}", images.tag),
        "image.pullPolicy=Never".to_owned(),
        "postgresql.enabled=false".to_owned(),
        "database.existingSecret=airq-database".to_owned(),
        format!("database.external.addresses={{{db_address}}}"),
        format!("database.external.port={}", postgres.port),
        // No ingress controller runs here: the gateway's Service is the entrance.
        "ingress.enabled=false".to_owned(),
    ];
    let mut args = vec!["install", release, &chart, "--namespace", &ns];
    for value in &common_values {
        args.extend(["--set", value.as_str()]);
    }
    cluster.helm(&args).await?;

    // The Platform is Ready because its pods run and pass their readiness probes.
    let platforms = cluster.api::<Platform>();
    eventually("the Platform to be Ready", Duration::from_secs(180), || async {
        let platform = platforms.get("airq").await.map_err(|e| e.to_string())?;
        let status = platform.status.clone().unwrap_or_default();
        match condition(&status.conditions, "Ready") {
            Some(c) if c.status == "True" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    note(
        &mut figures,
        "install → Platform Ready",
        format!("{:.1?}", install_started.elapsed()),
    );
    cluster
        .rolled_out("every Deployment ready", Duration::from_secs(120))
        .await?;
    note(
        &mut figures,
        "install → every pod Ready",
        format!("{:.1?}", install_started.elapsed()),
    );
    let pods = pods_running(&cluster).await?;
    let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    let operator = format!("{release}-operator");
    for part in [
        operator.as_str(),
        "airq-gateway",
        "airq-front",
        "airq-predictive",
        "airq-etl",
    ] {
        assert!(names.iter().any(|n| n.starts_with(part)), "no {part} pod: {names:?}");
    }
    // The operator pod leads through the Lease.
    let leases = cluster.api::<Lease>();
    let lease_name = operator.clone();
    let leader = eventually("an operator pod to hold the Lease", Duration::from_secs(60), || async {
        let lease = leases.get(&lease_name).await.map_err(|e| e.to_string())?;
        let holder = lease.spec.and_then(|s| s.holder_identity).unwrap_or_default();
        if names.iter().any(|n| n == &holder && n.starts_with(&operator)) {
            Ok(holder)
        } else {
            Err(format!("holder {holder:?}"))
        }
    })
    .await?;

    let gateway = cluster.service_url("airq-gateway").await?;
    let admin_key = cluster.secret_value("airq-gateway-keys", "adminKey").await?;
    let http = airq_testenv::http_client();

    // A load: the example EtlSchedule, its url set to the folder this test serves over HTTP.
    let files = airq_testenv::pods::serve_beijing(&["Dongsi", "Aotizhongxin"]).await?;
    let example = std::fs::read_to_string(repository().join("examples/etl-beijing-csv.yaml"))?;
    let example = example.replace("url: ../shared/data/beijing-multisite", &format!("url: {files}"));
    assert!(example.contains(&files), "the example's url did not change");
    cluster.apply::<EtlSchedule>(&example).await?;
    let schedules = cluster.api::<EtlSchedule>();
    let load_started = Instant::now();
    let last_run = eventually("the load to finish", Duration::from_secs(300), || async {
        let schedule = schedules.get("beijing").await.map_err(|e| e.to_string())?;
        let status = schedule.status.clone().unwrap_or_default();
        match &status.last_run {
            Some(run) if run.succeeded => Ok(run.clone()),
            Some(run) => Err(format!("the run failed: {run:?}")),
            None => Err(format!("{:?}", condition(&status.conditions, "Ready"))),
        }
    })
    .await?;
    note(
        &mut figures,
        "load of 2 files over HTTP (Job)",
        format!("{:.1?}", load_started.elapsed()),
    );
    let stored: i64 = sqlx::query_scalar("select count(*) from measurements")
        .fetch_one(&database.pool)
        .await?;
    let inserted = last_run.rows_inserted;
    assert!(inserted > 800_000, "{last_run:?}");
    assert_eq!(stored, inserted, "the status's count is not what the database holds");

    // A model: the example PredictiveModel; its training Job stores v1 and its servers serve it.
    let model_yaml = std::fs::read_to_string(repository().join("examples/model-pm25-knn.yaml"))?;
    cluster.apply::<PredictiveModel>(&model_yaml).await?;
    let models = cluster.api::<PredictiveModel>();
    let served = |version: &'static str| {
        let models = models.clone();
        async move {
            let model = models.get("pm25").await.map_err(|e| e.to_string())?;
            let status = model.status.clone().unwrap_or_default();
            let ready = condition(&status.conditions, "Ready").is_some_and(|c| c.status == "True");
            if ready && status.model_version.as_deref() == Some(version) {
                Ok(())
            } else {
                Err(format!(
                    "{:?} {:?}",
                    status.model_version,
                    condition(&status.conditions, "Ready")
                ))
            }
        }
    };
    let training_started = Instant::now();
    eventually("v1 to be served", Duration::from_secs(300), || served("v1")).await?;
    note(
        &mut figures,
        "model applied → v1 served",
        format!("{:.1?}", training_started.elapsed()),
    );
    cluster
        .rolled_out("the model's servers", Duration::from_secs(60))
        .await?;
    let forecast = format!("{gateway}/api/predictive/models/pm25/forecast?station=Dongsi");
    let answer: serde_json::Value = http
        .get(&forecast)
        .bearer_auth(&admin_key)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(answer["version"], "v1", "{answer}");
    assert_eq!(answer["points"].as_array().map(Vec::len), Some(24), "{answer}");
    let model_server = cluster.service_url("model-pm25").await?;

    // Retraining with `kubectl airq retrain` while a client asks for forecasts through the gateway and from the
    // model's own Service.
    let traffic = Traffic::start(
        vec![forecast.clone(), format!("{model_server}/forecast?station=Dongsi")],
        admin_key.clone(),
    );
    let plugin = airq_testenv::images::binary("kubectl-airq")?;
    let retrain_started = Instant::now();
    let output = tokio::process::Command::new(plugin)
        .args(["retrain", "pm25", "-n", &ns, "--timeout", "5m"])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .output()
        .await?;
    assert!(
        output.status.success(),
        "kubectl airq retrain: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    cluster
        .rolled_out("the model's servers on v2", Duration::from_secs(60))
        .await?;
    // The gateway's forecasts move to v2 too (the predictive service reads the newest version every 10 s).
    eventually("v2 through the gateway", Duration::from_secs(30), || async {
        let answer: serde_json::Value = http
            .get(&forecast)
            .bearer_auth(&admin_key)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if answer["version"] == "v2" {
            Ok(())
        } else {
            Err(answer["version"].to_string())
        }
    })
    .await?;
    let retrain = traffic.finish().await?;
    note(
        &mut figures,
        "retrain (kubectl airq retrain → v2 served)",
        format!(
            "{:.1?}; {} requests answered, {} failed",
            retrain_started.elapsed(),
            retrain.answered,
            retrain.failed.len()
        ),
    );
    assert!(retrain.answered > 20, "{retrain:?}");
    assert!(
        retrain.failed.is_empty(),
        "requests failed while retraining: {retrain:#?}"
    );

    // An AdhocService: airq's front image as another team's service, open to the group `analysts`.
    let adhoc = format!(
        r#"
apiVersion: airq.dev/v1alpha1
kind: AdhocService
metadata: {{ name: board }}
spec:
  image: {}
  port: 8080
  replicas: 1
  env:
    - name: AIRQ_DATABASE_URL
      valueFrom: {{ secretKeyRef: {{ name: airq-database, key: url }} }}
  resources: {{ requests: {{ cpu: 10m, memory: 32Mi }} }}
  route: {{ pathPrefix: /adhoc/board/, stripPrefix: true }}
  access: {{ groups: [analysts] }}
"#,
        images.image("front")
    );
    cluster.apply::<AdhocService>(&adhoc).await?;
    let adhocs = cluster.api::<AdhocService>();
    eventually("the AdhocService to be Ready", Duration::from_secs(120), || async {
        let adhoc = adhocs.get("board").await.map_err(|e| e.to_string())?;
        let status = adhoc.status.clone().unwrap_or_default();
        match condition(&status.conditions, "Ready") {
            Some(c) if c.status == "True" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    let stations = format!("{gateway}/adhoc/board/api/stations");
    // A caller in `analysts`, made with the gateway's admin API; one in no group; no key at all.
    let admin_api = |path: &str| format!("{gateway}/admin/{path}");
    http.post(admin_api("groups"))
        .bearer_auth(&admin_key)
        .json(&json!({ "name": "analysts", "description": "may read the board" }))
        .send()
        .await?
        .error_for_status()?;
    for (user, groups) in [("ana", json!(["analysts"])), ("dev", json!([]))] {
        http.post(admin_api("users"))
            .bearer_auth(&admin_key)
            .json(&json!({ "name": user, "groups": groups }))
            .send()
            .await?
            .error_for_status()?;
    }
    let key_of = |user: &'static str| {
        let http = http.clone();
        let url = admin_api(&format!("users/{user}/keys"));
        let admin_key = admin_key.clone();
        async move {
            let created: serde_json::Value = http
                .post(url)
                .bearer_auth(&admin_key)
                .json(&json!({ "description": "node test" }))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            anyhow::Ok(created["key"].as_str().unwrap_or_default().to_owned())
        }
    };
    let analyst = key_of("ana").await?;
    let developer = key_of("dev").await?;
    let status_for = |key: Option<String>| {
        let http = http.clone();
        let stations = stations.clone();
        async move {
            let mut request = http.get(&stations);
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            anyhow::Ok(request.send().await?.status().as_u16())
        }
    };
    eventually(
        "the gateway to route /adhoc/board/",
        Duration::from_secs(60),
        || async {
            match status_for(Some(analyst.clone())).await {
                Ok(200) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await?;
    assert_eq!(status_for(Some(developer.clone())).await?, 403);
    assert_eq!(status_for(None).await?, 401);
    assert_eq!(
        status_for(Some(admin_key.clone())).await?,
        200,
        "the admin may use every route"
    );

    // The dashboard through the gateway's Service, in headless Chromium.
    dashboard(&gateway).await?;

    // helm upgrade to a new image tag: every Deployment rolls while the client asks the gateway, the front and the
    // predictive service.
    let next = images.tagged(&format!("{}-next", images.tag)).await?;
    let traffic = Traffic::start(
        vec![
            forecast.clone(),
            format!("{gateway}/api/stations"),
            format!("{gateway}/"),
            format!("{model_server}/forecast?station=Dongsi"),
        ],
        admin_key.clone(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let upgrade_started = Instant::now();
    let tag = format!("image.tag={}", next.tag);
    cluster
        .helm(&[
            "upgrade",
            release,
            &chart,
            "--namespace",
            &ns,
            "--reuse-values",
            "--set",
            &tag,
        ])
        .await?;
    let deployments = cluster.api::<Deployment>();
    eventually(
        "every Deployment to run the new tag",
        Duration::from_secs(120),
        || async {
            let list = deployments
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let stale: Vec<String> = list
                .items
                .iter()
                .filter(|d| {
                    let image = serde_json::to_value(&d.spec).unwrap_or_default()["template"]["spec"]["containers"][0]
                        ["image"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    // The AdhocService names its image itself: it stays.
                    !d.name_any().starts_with("adhoc-")
                        && image.starts_with(&images.registry)
                        && !image.ends_with(&format!(":{}", next.tag))
                })
                .map(|d| d.name_any())
                .collect();
            if stale.is_empty() {
                Ok(())
            } else {
                Err(format!("still on the old tag: {stale:?}"))
            }
        },
    )
    .await?;
    cluster
        .rolled_out("the rolling update", Duration::from_secs(180))
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let upgrade = traffic.finish().await?;
    note(
        &mut figures,
        "helm upgrade (every Deployment rolled)",
        format!(
            "{:.1?}; {} requests answered, {} failed",
            upgrade_started.elapsed(),
            upgrade.answered,
            upgrade.failed.len()
        ),
    );
    assert!(upgrade.answered > 50, "{upgrade:?}");
    assert!(
        upgrade.failed.is_empty(),
        "requests failed during the upgrade: {upgrade:#?}"
    );

    // A gateway pod deleted under traffic (two replicas): the other answers while a new one starts.
    let traffic = Traffic::start(
        vec![forecast.clone(), format!("{gateway}/api/stations")],
        admin_key.clone(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pods_api = cluster.api::<Pod>();
    let gateway_pods = pods_api
        .list(&ListParams::default().labels("app.kubernetes.io/name=airq-gateway"))
        .await?;
    let victim = gateway_pods
        .items
        .first()
        .map(ResourceExt::name_any)
        .ok_or_else(|| anyhow::anyhow!("no gateway pod"))?;
    pods_api.delete(&victim, &DeleteParams::default()).await?;
    cluster
        .rolled_out("the gateway's replacement", Duration::from_secs(90))
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deletion = traffic.finish().await?;
    note(
        &mut figures,
        "a gateway pod deleted",
        format!(
            "{} requests answered, {} failed",
            deletion.answered,
            deletion.failed.len()
        ),
    );
    assert!(
        deletion.failed.is_empty(),
        "requests failed when a gateway pod went: {deletion:#?}"
    );

    // The leading operator pod deleted: it hands the Lease back as it stops, and the other replica takes it.
    let lease_holder = |lease: &Lease| lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
    let leader = match leases.get(&lease_name).await.ok().as_ref().and_then(lease_holder) {
        Some(current) => current,
        None => leader,
    };
    let handover_started = Instant::now();
    pods_api.delete(&leader, &DeleteParams::default()).await?;
    let released = eventually(
        "the Lease to leave the deleted pod",
        Duration::from_secs(15),
        || async {
            let lease = leases.get(&lease_name).await.map_err(|e| e.to_string())?;
            match lease_holder(&lease) {
                Some(holder) if holder == leader => Err(format!("still held by {holder}")),
                _ => Ok(handover_started.elapsed()),
            }
        },
    )
    .await?;
    let taken = eventually("another operator pod to lead", Duration::from_secs(40), || async {
        let lease = leases.get(&lease_name).await.map_err(|e| e.to_string())?;
        match lease_holder(&lease) {
            Some(holder) if holder != leader && holder.starts_with(&operator) => Ok(handover_started.elapsed()),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await?;
    note(
        &mut figures,
        "operator leader deleted → Lease released / taken over",
        format!("{released:.1?} / {taken:.1?}"),
    );

    // The deleted pod finishes stopping before the pods are read below (a log cannot be read from a pod that
    // goes between the listing and the read).
    eventually(
        "the deleted operator pod to be gone",
        Duration::from_secs(60),
        || async {
            match pods_api.get_opt(&leader).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(_) => Err(format!("{leader} is still stopping")),
            }
        },
    )
    .await?;

    // Security: every container read-only and non-root (the namespace enforces "restricted"), and no secret in
    // any pod's log.
    let secrets = [
        admin_key.clone(),
        cluster.secret_value("airq-gateway-keys", "keyHashSecret").await?,
        postgres.pod_password.clone(),
        analyst.clone(),
        developer.clone(),
    ];
    let pods = pods_api.list(&ListParams::default()).await?.items;
    assert!(
        pods.len() >= 10,
        "{:?}",
        pods.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    );
    for pod in &pods {
        let name = pod.name_any();
        if pod.metadata.deletion_timestamp.is_some() {
            // Stopping (a replaced pod's remains): it may be gone before its log is read.
            continue;
        }
        let spec = pod.spec.clone().unwrap_or_default();
        for container in &spec.containers {
            let security = container.security_context.clone().unwrap_or_default();
            assert_eq!(
                security.read_only_root_filesystem,
                Some(true),
                "{name}/{}",
                container.name
            );
            assert_eq!(
                security.allow_privilege_escalation,
                Some(false),
                "{name}/{}",
                container.name
            );
            let log = pods_api
                .logs(
                    &name,
                    &LogParams {
                        container: Some(container.name.clone()),
                        ..LogParams::default()
                    },
                )
                .await?;
            assert!(!log.is_empty() || name.starts_with("adhoc-"), "{name} wrote no log");
            for secret in &secrets {
                assert!(!log.contains(secret.as_str()), "a secret is in the log of {name}");
            }
        }
    }

    // Uninstall, as docs/cluster.md says: first the resources of one's own (their children go with them), then the
    // chart. What remains is what the docs say is kept.
    schedules.delete("beijing", &DeleteParams::default()).await?;
    models.delete("pm25", &DeleteParams::default()).await?;
    adhocs.delete("board", &DeleteParams::default()).await?;
    cluster
        .helm(&["uninstall", release, "--namespace", &ns, "--wait", "--timeout", "3m"])
        .await?;
    eventually("every pod to be gone", Duration::from_secs(120), || async {
        let left = pods_api.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let names: Vec<String> = left.items.iter().map(|p| p.name_any()).collect();
        if names.is_empty() {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await?;
    for (kind, left) in [
        (
            "Deployment",
            cluster
                .api::<Deployment>()
                .list(&ListParams::default())
                .await?
                .items
                .len(),
        ),
        (
            "Service",
            cluster.api::<Service>().list(&ListParams::default()).await?.items.len(),
        ),
        ("Platform", platforms.list(&ListParams::default()).await?.items.len()),
        (
            "Job",
            cluster
                .api::<k8s_openapi::api::batch::v1::Job>()
                .list(&ListParams::default())
                .await?
                .items
                .len(),
        ),
    ] {
        assert_eq!(left, 0, "{kind}s remain after helm uninstall");
    }
    let secrets_left: Vec<String> = cluster
        .api::<Secret>()
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    assert_eq!(
        secrets_left,
        ["airq-database", "airq-gateway-keys"],
        "kept: the gateway's keys (for a reinstall) and the database Secret of one's own"
    );
    assert!(
        leases.get_opt(&lease_name).await?.is_none(),
        "the operator's Lease belongs to the release and goes with it"
    );

    note(&mut figures, "whole scenario", format!("{:.1?}", started.elapsed()));
    database.remove().await?;
    airq_testenv::delete_namespace(&client, &ns).await?;
    Ok(())
}

/// The dashboard through `gateway` in headless Chromium: the stations' cards drawn, with their colours; a
/// screenshot for a person to look at.
async fn dashboard(gateway: &str) -> anyhow::Result<()> {
    use fantoccini::{ClientBuilder, Locator};
    let shots = airq_testenv::browser::output_dir("node")?;
    let driver = airq_testenv::browser::WebDriver::start().await?;
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(driver.capabilities(1280, 900))
        .connect(&driver.url)
        .await
        .map_err(|e| anyhow::anyhow!("no browser session: {e}\n{}", driver.log_tail()))?;
    browser.goto(&format!("{gateway}/")).await?;
    browser
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(".station-card[data-station='Dongsi']"))
        .await?;
    let colour = browser
        .execute(
            "return getComputedStyle(document.querySelector(\".station-card[data-station='Dongsi']\")).borderLeftColor;",
            vec![],
        )
        .await?;
    let colour = colour.as_str().unwrap_or_default().to_owned();
    assert!(colour.starts_with("rgb") && colour != "rgb(128, 128, 128)", "{colour}");
    let png = browser.screenshot().await?;
    assert!(png.starts_with(b"\x89PNG"));
    std::fs::write(shots.join("dashboard-through-the-gateway.png"), png)?;
    browser.close().await?;
    Ok(())
}

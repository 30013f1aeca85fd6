//! Benchmark: N AdhocServices (default 1,000) reconciled to their children by the operator binary, against a plain
//! client creating the same children with the same concurrency; then a full resync with nothing changed; and the
//! operator's peak memory. Run with `cargo bench -p airq-operator --bench reconcile` (`AIRQ_BENCH_N` to change N).
//! The control plane is the test environment's (built and started on first use).

use std::path::Path;
use std::time::{Duration, Instant};

use airq_api::AdhocService;
use airq_operator::children::{Child, Owner};
use airq_operator::controllers::adhoc;
use airq_testenv::service::RunningService;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::wait::{await_condition, conditions};
use serde_json::json;

const CONCURRENCY: usize = 16;

fn adhoc_yaml(i: usize) -> String {
    format!(
        "apiVersion: airq.dev/v1alpha1\nkind: AdhocService\nmetadata: {{ name: svc-{i:04} }}\nspec:\n  image: registry.invalid/svc:1\n  replicas: 0\n  route: {{ pathPrefix: /adhoc/svc-{i:04}/ }}\n  access: {{ groups: [analysts] }}\n"
    )
}

const PLATFORM: &str =
    "apiVersion: airq.dev/v1alpha1\nkind: Platform\nmetadata: { name: airq }\nspec:\n  ingress: { host: bench.test }\n";

async fn namespace_with_platform(client: &kube::Client) -> anyhow::Result<String> {
    let ns = airq_testenv::namespace(client).await?;
    let secret: Secret = serde_json::from_value(
        json!({ "metadata": { "name": "airq-database" }, "stringData": { "url": "postgres://x" } }),
    )?;
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await?;
    let platform: airq_api::Platform = serde_saphyr::from_str(PLATFORM)?;
    Api::<airq_api::Platform>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &platform)
        .await?;
    Ok(ns)
}

async fn count<K>(api: &Api<K>) -> anyhow::Result<usize>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.list_metadata(&ListParams::default()).await?.items.len())
}

/// Seconds until `done` holds, polling every 250 ms.
async fn wait_until<F, Fut>(started: Instant, mut done: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    loop {
        if done().await? {
            return Ok(started.elapsed().as_secs_f64());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "gave up after 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Seconds a plain client takes to write the children of `adhoc_services` into `ns`, CONCURRENCY at a time.
async fn plain_client(
    client: &kube::Client,
    ns: &str,
    adhoc_services: &[AdhocService],
    platform: &airq_api::Platform,
    apply: bool,
) -> anyhow::Result<f64> {
    let mut children = Vec::new();
    for adhoc_service in adhoc_services {
        let owner = Owner {
            kind: "AdhocService",
            api_version: "airq.dev/v1alpha1".to_owned(),
            name: adhoc_service.name_any(),
            namespace: ns.to_owned(),
            uid: String::new(),
        };
        children.extend(adhoc::build(adhoc_service, &owner, Some(platform)).children);
    }
    let started = Instant::now();
    futures::stream::iter(children.into_iter().map(|child| {
        let client = client.clone();
        async move {
            let pp = PostParams::default();
            let ssa = PatchParams::apply("airq-bench").force();
            match child {
                Child::Deployment(mut o) => {
                    o.metadata.owner_references = None;
                    let api = Api::<Deployment>::namespaced(client, ns);
                    if apply {
                        api.patch(&o.name_any(), &ssa, &Patch::Apply(typed(&o)?))
                            .await
                            .map(drop)?;
                    } else {
                        api.create(&pp, &o).await.map(drop)?;
                    }
                }
                Child::Service(mut o) => {
                    o.metadata.owner_references = None;
                    let api = Api::<Service>::namespaced(client, ns);
                    if apply {
                        api.patch(&o.name_any(), &ssa, &Patch::Apply(typed(&o)?))
                            .await
                            .map(drop)?;
                    } else {
                        api.create(&pp, &o).await.map(drop)?;
                    }
                }
                Child::Ingress(mut o) => {
                    o.metadata.owner_references = None;
                    let api = Api::<Ingress>::namespaced(client, ns);
                    if apply {
                        api.patch(&o.name_any(), &ssa, &Patch::Apply(typed(&o)?))
                            .await
                            .map(drop)?;
                    } else {
                        api.create(&pp, &o).await.map(drop)?;
                    }
                }
                _ => {}
            }
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(CONCURRENCY)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(started.elapsed().as_secs_f64())
}

/// An object as JSON with its `apiVersion` and `kind`, as server-side apply wants it.
fn typed<K: kube::Resource<DynamicType = ()> + serde::Serialize>(object: &K) -> anyhow::Result<serde_json::Value> {
    let mut value = serde_json::to_value(object)?;
    value["apiVersion"] = K::api_version(&()).into();
    value["kind"] = K::kind(&()).into();
    Ok(value)
}

/// Waits until kube-controller-manager has caught up with the N Deployments of `ns` (one ReplicaSet each), so that
/// its work does not land in the next measurement.
async fn quiesce(client: &kube::Client, ns: &str, n: usize) -> anyhow::Result<()> {
    let replica_sets: Api<k8s_openapi::api::apps::v1::ReplicaSet> = Api::namespaced(client.clone(), ns);
    wait_until(Instant::now(), || async { Ok(count(&replica_sets).await? >= n) }).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(())
}

/// Waits until the operator's reconcile count has not moved for three seconds.
async fn settle(operator: &RunningService) -> anyhow::Result<()> {
    let mut last = -1.0;
    loop {
        let (_, metrics) = operator.get("/metrics").await?;
        let now = metric(&metrics, "airq_operator_reconciles_total");
        if now == last {
            return Ok(());
        }
        last = now;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |total, value| total + value)
}

/// User + system CPU seconds the process has used (from /proc; 100 ticks per second).
fn cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(f64::NAN)
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

async fn start_operator(kubeconfig: &str, ns: &str) -> anyhow::Result<RunningService> {
    Ok(RunningService::start(
        Path::new(env!("CARGO_BIN_EXE_airq-operator")),
        &[],
        &[
            ("KUBECONFIG", kubeconfig),
            ("AIRQ_WATCH_NAMESPACE", ns),
            ("AIRQ_LEADER_ELECTION", "false"),
            ("AIRQ_CONCURRENCY", &CONCURRENCY.to_string()),
            ("AIRQ_LOG_LEVEL", "warn"),
        ],
    )
    .await?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("AIRQ_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let client = airq_testenv::kube_client().await?;
    let kubeconfig = airq_testenv::kubernetes()
        .await?
        .kubeconfig
        .to_string_lossy()
        .into_owned();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in airq_api::crds() {
        let name = crd.name_any();
        crds.patch(&name, &PatchParams::apply("airq-bench").force(), &Patch::Apply(&crd))
            .await?;
        await_condition(crds.clone(), &name, conditions::is_crd_established()).await?;
    }
    let adhoc_services: Vec<AdhocService> = (0..n)
        .map(|i| serde_saphyr::from_str(&adhoc_yaml(i)))
        .collect::<Result<_, _>>()?;

    // 1. A plain client creates the same children (the operator's own build step), CONCURRENCY at a time: with
    //    POST, and again in another namespace with server-side apply (what the operator uses).
    let platform: airq_api::Platform = serde_saphyr::from_str(PLATFORM)?;
    let plain_ns = namespace_with_platform(&client).await?;
    let plain_seconds = plain_client(&client, &plain_ns, &adhoc_services, &platform, false).await?;
    println!("plain client, create: {} objects in {plain_seconds:.1} s", 3 * n);
    quiesce(&client, &plain_ns, n).await?;
    let apply_ns = namespace_with_platform(&client).await?;
    let apply_seconds = plain_client(&client, &apply_ns, &adhoc_services, &platform, true).await?;
    println!(
        "plain client, server-side apply: {} objects in {apply_seconds:.1} s",
        3 * n
    );
    quiesce(&client, &apply_ns, n).await?;

    // 2. The operator: N AdhocServices exist; it starts, fills its caches and reconciles them to their children.
    let ns = namespace_with_platform(&client).await?;
    let adhoc_api: Api<AdhocService> = Api::namespaced(client.clone(), &ns);
    let post = PostParams::default();
    futures::stream::iter(adhoc_services.iter().map(|a| adhoc_api.create(&post, a)))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    let operator = start_operator(&kubeconfig, &ns).await?;
    // Two moments, followed through a watch (polling lists of N objects would load the API server the operator is
    // measured against): every AdhocService has its children and a status for its generation (the operator's
    // work), and every AdhocService is Ready (which also waits for kube-controller-manager to report each
    // Deployment's status).
    let mut reconciled = std::collections::HashSet::new();
    let mut ready = std::collections::HashSet::new();
    let mut reconciled_seconds = None;
    let mut changes = std::pin::pin!(
        kube::runtime::watcher(adhoc_api.clone(), kube::runtime::watcher::Config::default())
            .default_backoff()
            .applied_objects()
    );
    while ready.len() < n {
        let Some(adhoc) = changes.try_next().await? else {
            anyhow::bail!("the watch of AdhocServices ended");
        };
        let status = adhoc
            .status
            .as_ref()
            .filter(|s| s.observed_generation == adhoc.metadata.generation);
        if status.is_some() && reconciled.insert(adhoc.name_any()) && reconciled.len() % (n / 10).max(1) == 0 {
            eprintln!(
                "  {} reconciled after {:.1} s",
                reconciled.len(),
                started.elapsed().as_secs_f64()
            );
        }
        if status
            .is_some_and(|s| airq_api::common::condition(&s.conditions, "Ready").is_some_and(|c| c.status == "True"))
        {
            ready.insert(adhoc.name_any());
        } else {
            ready.remove(&adhoc.name_any());
        }
        if reconciled_seconds.is_none() && reconciled.len() == n {
            let children =
                count(&deployments).await? >= n + 4 && count(&services).await? >= n + 4 && count(&ingresses).await? > n;
            if children {
                reconciled_seconds = Some(started.elapsed().as_secs_f64());
            }
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "gave up after 30 minutes"
        );
    }
    let ready_seconds = started.elapsed().as_secs_f64();
    let operator_seconds = reconciled_seconds.unwrap_or(ready_seconds);
    anyhow::ensure!(
        count(&deployments).await? >= n + 4 && count(&services).await? >= n + 4 && count(&ingresses).await? > n,
        "every AdhocService is Ready but children are missing"
    );
    println!(
        "operator: every AdhocService reconciled (children + status) after {operator_seconds:.1} s, Ready after {ready_seconds:.1} s"
    );
    quiesce(&client, &ns, n).await?;
    // Let the operator take in what kube-controller-manager did meanwhile (Deployment statuses) before stopping it.
    settle(&operator).await?;
    let (_, metrics) = operator.get("/metrics").await?;
    let writes = metric(&metrics, "airq_operator_writes_total");
    let reconciles = metric(&metrics, "airq_operator_reconciles_total{kind=\"AdhocService\"");
    let first_peak = peak_rss_mib(operator_pid(&operator));
    let operator_cpu = cpu_seconds(operator_pid(&operator));
    for line in metrics.lines().filter(|l| {
        l.starts_with("airq_operator_writes_total")
            || l.starts_with("airq_operator_reconcile_errors_total")
            || l.starts_with("airq_operator_reconciles_total")
    }) {
        println!("  {line}");
    }
    println!(
        "operator: {n} AdhocServices reconciled in {operator_seconds:.1} s ({writes} writes, {reconciles} reconciles)"
    );

    // 3. A full resync with nothing changed: a new operator process reconciles everything and writes nothing.
    let _ = operator.terminate().await?;
    let started = Instant::now();
    let restarted = start_operator(&kubeconfig, &ns).await?;
    let resync_seconds = wait_until(started, || async {
        let (_, metrics) = restarted.get("/metrics").await?;
        Ok(metric(&metrics, "airq_operator_reconciles_total{kind=\"AdhocService\"") >= n as f64)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, metrics) = restarted.get("/metrics").await?;
    let resync_reconciles = metric(&metrics, "airq_operator_reconciles_total{kind=\"AdhocService\"");
    let resync_writes = metric(&metrics, "airq_operator_writes_total");
    for line in metrics.lines().filter(|l| l.starts_with("airq_operator_writes_total")) {
        println!("  {line}");
    }
    let second_peak = peak_rss_mib(operator_pid(&restarted));
    println!("resync: {resync_reconciles} reconciles in {resync_seconds:.1} s, {resync_writes} writes");
    println!("peak RSS: {first_peak:.1} MiB (first reconcile), {second_peak:.1} MiB (resync)");
    println!();
    println!(
        "| N | plain client: 3N creates | plain client: 3N server-side applies | operator: start + reconcile N (children + status) | Ready | operator / creates | operator / applies | resync | resync writes | operator CPU | peak RSS |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {n} | {plain_seconds:.1} s | {apply_seconds:.1} s | {operator_seconds:.1} s | {ready_seconds:.1} s | {:.2}x | {:.2}x | {resync_seconds:.1} s | {resync_writes} | {operator_cpu:.1} s | {:.1} MiB |",
        operator_seconds / plain_seconds,
        operator_seconds / apply_seconds,
        first_peak.max(second_peak)
    );
    let _ = restarted.terminate().await?;
    Ok(())
}

fn operator_pid(service: &RunningService) -> u32 {
    service.pid().unwrap_or(0)
}

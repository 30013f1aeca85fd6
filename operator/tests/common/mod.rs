//! What the operator's integration tests share: the CRDs installed in the test control plane, an operator running
//! in the test process and watching only the test's namespace, and what its pods need to run on the test node: the
//! images this test run built, and a database they reach.
//!
//! Every pod the operator's children make really runs on the test node (`airq_testenv::node`): Deployments' pods
//! pass their readiness probes, Jobs' pods run `airq-etl` and `airq-predictive` and report through their termination
//! message, as in a cluster.

#![allow(dead_code)]

use std::time::Duration;

use airq_operator::Operator;
use airq_operator::config::OperatorArgs;
use kube::Resource;
use kube::api::{Api, PostParams};
use serde::de::DeserializeOwned;
use serde_json::json;

// Each test file uses some of them.
#[allow(unused_imports)]
pub use airq_testenv::kubernetes::create;
#[allow(unused_imports)]
pub use airq_testenv::pods::pod_database;

/// Applies airq's CRDs (once per test process) and waits until they are served.
pub async fn install_crds(client: &kube::Client) -> anyhow::Result<()> {
    airq_testenv::kubernetes::install_crds(client, airq_api::crds()).await
}

/// The operator's arguments for a test: its namespace only, no leader election, the images made for the test node
/// (never pulled).
pub async fn args(namespace: &str) -> anyhow::Result<OperatorArgs> {
    let images = airq_testenv::images().await?;
    Ok(OperatorArgs {
        namespace: Some(namespace.to_owned()),
        image_registry: images.registry,
        image_version: images.tag,
        image_pull_policy: "Never".to_owned(),
        concurrency: 8,
        leader_election: false,
        lease_namespace: "default".to_owned(),
        lease_name: "airq-operator".to_owned(),
        identity: Some(format!("test-{namespace}")),
        monitoring_recheck_seconds: 60,
    })
}

/// A client, a fresh namespace with airq's CRDs installed, and an operator watching that namespace.
pub async fn setup() -> anyhow::Result<(kube::Client, String, Operator)> {
    // The operator's log lines go with the test's output (shown when it fails); `RUST_LOG` chooses them.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("airq_operator=info")),
        )
        .with_test_writer()
        .try_init();
    let client = airq_testenv::kube_client().await?;
    install_crds(&client).await?;
    let ns = airq_testenv::namespace(&client).await?;
    let operator = Operator::start(client.clone(), args(&ns).await?).await?;
    Ok((client, ns, operator))
}

/// A Platform spec (YAML, indented for `spec:`) that runs the images made for the test node, with `extra` lines.
pub async fn platform_spec(extra: &str) -> anyhow::Result<String> {
    let images = airq_testenv::images().await?;
    Ok(format!(
        "  registry: {}\n  version: \"{}\"\n  imagePullPolicy: Never\n{extra}",
        images.registry, images.tag
    ))
}

/// Waits until every pod the operator made in `ns` runs and is ready, and every Deployment is rolled out.
pub async fn pods_ready(client: &kube::Client, ns: &str, selector: &str, count: usize) -> anyhow::Result<()> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
    airq_testenv::eventually(
        &format!("{count} ready pods ({selector})"),
        Duration::from_secs(120),
        || async {
            let list = pods
                .list(&kube::api::ListParams::default().labels(selector))
                .await
                .map_err(|e| e.to_string())?;
            let ready = list
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .count();
            if ready == count {
                Ok(())
            } else {
                let states: Vec<String> = list
                    .items
                    .iter()
                    .map(|p| {
                        let status = p.status.clone().unwrap_or_default();
                        format!(
                            "{}: {:?} {:?}",
                            p.metadata.name.clone().unwrap_or_default(),
                            status.phase,
                            status
                                .container_statuses
                                .map(|c| c.into_iter().map(|c| c.state).collect::<Vec<_>>())
                        )
                    })
                    .collect();
                Err(format!("{ready} of {count} ready: {states:?}"))
            }
        },
    )
    .await?;
    Ok(())
}

/// Creates a Secret with one key.
pub async fn secret(client: &kube::Client, namespace: &str, name: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": { "name": name },
        "stringData": { key: value },
    }))?;
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await?;
    Ok(())
}

/// Waits until `get` on object `name` satisfies `check`, which says why not otherwise.
pub async fn wait_for<K, F>(api: &Api<K>, name: &str, what: &str, seconds: u64, check: F) -> anyhow::Result<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    F: Fn(&K) -> Result<(), String>,
{
    Ok(airq_testenv::eventually(what, Duration::from_secs(seconds), || async {
        let object = api.get_opt(name).await.map_err(|e| e.to_string())?;
        let object = object.ok_or_else(|| format!("{name} does not exist"))?;
        check(&object).map(|()| object)
    })
    .await?)
}

/// Waits until object `name` is gone.
pub async fn wait_gone<K>(api: &Api<K>, name: &str, what: &str) -> anyhow::Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    airq_testenv::eventually(what, Duration::from_secs(60), || async {
        match api.get_opt(name).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err(format!("{name} still exists")),
        }
    })
    .await?;
    Ok(())
}

/// The status and reason of condition `type_` in an object's JSON status.
pub fn condition_of<K: serde::Serialize>(object: &K, type_: &str) -> Option<(String, String, String)> {
    let value = serde_json::to_value(object).ok()?;
    let found = value["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?
        .clone();
    Some((
        found["status"].as_str()?.to_owned(),
        found["reason"].as_str()?.to_owned(),
        found["message"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// A check that condition `type_` has `status` (and `reason`, when given) for the object's current generation.
pub fn has_condition<K: serde::Serialize + Resource>(
    type_: &'static str,
    status: &'static str,
    reason: Option<&'static str>,
) -> impl Fn(&K) -> Result<(), String> {
    move |object: &K| {
        let value = serde_json::to_value(object).map_err(|e| e.to_string())?;
        let observed = value["status"]["observedGeneration"].as_i64();
        if observed != object.meta().generation {
            return Err(format!(
                "status describes generation {observed:?}, not {:?}",
                object.meta().generation
            ));
        }
        match condition_of(object, type_) {
            Some((s, r, _)) if s == status && reason.is_none_or(|want| want == r) => Ok(()),
            other => Err(format!("{type_} is {other:?}")),
        }
    }
}

/// Whether `object` is controlled by the object with `uid`.
pub fn owned_by<K: Resource>(object: &K, uid: &str) -> bool {
    object
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.uid == uid && r.controller == Some(true))
}

/// Reconciles of `kind` counted by the operator so far, once they have stopped changing for a second.
pub async fn settled_reconciles(operator: &Operator, kind: &str) -> u64 {
    let mut last = operator.ctx.stats.reconciles(kind);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = operator.ctx.stats.reconciles(kind);
        if now == last {
            return now;
        }
        last = now;
    }
}

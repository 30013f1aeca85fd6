//! What the operator's integration tests share: the CRDs installed in the test control plane, an operator running
//! in the test process and watching only the test's namespace, and the kubelet's part played by the test.
//!
//! The test control plane has no kubelet and no scheduler, so nothing runs a pod. Where a test needs a pod to have
//! run — a Deployment's pods ready, a Job's pod finished with its report — it does what a kubelet would: binds the
//! pod to a Node object the test created, and writes the pod's status through the API. kube-controller-manager's
//! Deployment and Job controllers then do the rest, as they would in a cluster.

#![allow(dead_code)]

use std::time::Duration;

use airq_operator::Operator;
use airq_operator::config::OperatorArgs;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::OnceCell;

pub const NODE: &str = "airq-test-node";

/// Applies airq's CRDs (once per test process) and waits until they are served.
pub async fn install_crds(client: &kube::Client) -> anyhow::Result<()> {
    static INSTALLED: OnceCell<()> = OnceCell::const_new();
    INSTALLED
        .get_or_try_init(|| async {
            let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
            for crd in airq_api::crds() {
                let name = crd.name_any();
                crds.patch(&name, &PatchParams::apply("airq-tests").force(), &Patch::Apply(&crd))
                    .await?;
                tokio::time::timeout(
                    Duration::from_secs(30),
                    await_condition(crds.clone(), &name, conditions::is_crd_established()),
                )
                .await??;
            }
            anyhow::Ok(())
        })
        .await?;
    Ok(())
}

/// The operator's arguments for a test: its namespace only, no leader election, test image names.
pub fn args(namespace: &str) -> OperatorArgs {
    OperatorArgs {
        namespace: Some(namespace.to_owned()),
        image_registry: "registry.invalid/airq".to_owned(),
        image_version: "test".to_owned(),
        concurrency: 8,
        leader_election: false,
        lease_namespace: "default".to_owned(),
        lease_name: "airq-operator".to_owned(),
        identity: Some(format!("test-{namespace}")),
    }
}

/// A client, a fresh namespace with airq's CRDs installed, and an operator watching that namespace.
pub async fn setup() -> anyhow::Result<(kube::Client, String, Operator)> {
    let client = airq_testenv::kube_client().await?;
    install_crds(&client).await?;
    let ns = airq_testenv::namespace(&client).await?;
    let operator = Operator::start(client.clone(), args(&ns)).await?;
    Ok((client, ns, operator))
}

/// Creates the object described by `yaml` in `namespace`.
pub async fn create<K>(client: &kube::Client, namespace: &str, yaml: &str) -> anyhow::Result<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let object: K = serde_saphyr::from_str(yaml)?;
    Ok(Api::<K>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &object)
        .await?)
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

async fn ensure_node(client: &kube::Client) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    if nodes.get_opt(NODE).await?.is_none() {
        let node: Node = serde_json::from_value(json!({ "metadata": { "name": NODE } }))?;
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Binds `pod` to the test node, as the scheduler would.
async fn bind(pods: &Api<Pod>, pod: &Pod) -> anyhow::Result<()> {
    if pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
        return Ok(());
    }
    let binding = Binding {
        metadata: kube::api::ObjectMeta {
            name: Some(pod.name_any()),
            ..Default::default()
        },
        target: ObjectReference {
            kind: Some("Node".to_owned()),
            name: Some(NODE.to_owned()),
            api_version: Some("v1".to_owned()),
            ..Default::default()
        },
    };
    pods.create_subresource::<Binding, serde_json::Value>("binding", &pod.name_any(), &PostParams::default(), &binding)
        .await?;
    Ok(())
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// Plays the kubelet for every pod matching `selector`: binds it and reports it running and ready.
pub async fn run_pods(client: &kube::Client, namespace: &str, selector: &str) -> anyhow::Result<usize> {
    ensure_node(client).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods.list(&ListParams::default().labels(selector)).await?;
    let mut started = 0;
    for pod in list.items.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
        bind(&pods, pod).await?;
        let containers: Vec<serde_json::Value> = pod
            .spec
            .as_ref()
            .map(|s| s.containers.iter().map(|c| c.name.clone()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .map(|name| {
                json!({ "name": name, "ready": true, "started": true, "restartCount": 0, "image": "x", "imageID": "x",
                        "state": { "running": { "startedAt": now() } } })
            })
            .collect();
        let status = json!({ "status": {
            "phase": "Running",
            "startTime": now(),
            "conditions": [
                { "type": "PodScheduled", "status": "True", "lastTransitionTime": now() },
                { "type": "Initialized", "status": "True", "lastTransitionTime": now() },
                { "type": "ContainersReady", "status": "True", "lastTransitionTime": now() },
                { "type": "Ready", "status": "True", "lastTransitionTime": now() },
            ],
            "containerStatuses": containers,
        }});
        pods.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        started += 1;
    }
    Ok(started)
}

/// Plays the kubelet for the pod of Job `job`: binds it and reports it finished — succeeded with `message` as its
/// termination message, or failed.
pub async fn finish_job(
    client: &kube::Client,
    namespace: &str,
    job: &str,
    succeeded: bool,
    message: &str,
) -> anyhow::Result<()> {
    ensure_node(client).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("job-name={job}");
    let pod = airq_testenv::eventually("the Job's pod", Duration::from_secs(60), || async {
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .into_iter()
            .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Failed"))
            .ok_or_else(|| "no pod yet".to_owned())
    })
    .await?;
    bind(&pods, &pod).await?;
    let container = pod
        .spec
        .as_ref()
        .map(|s| s.containers[0].name.clone())
        .unwrap_or_default();
    let (phase, exit_code, reason) = if succeeded {
        ("Succeeded", 0, "Completed")
    } else {
        ("Failed", 1, "Error")
    };
    let status = json!({ "status": {
        "phase": phase,
        "startTime": now(),
        "conditions": [
            { "type": "PodScheduled", "status": "True", "lastTransitionTime": now() },
            { "type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now() },
        ],
        "containerStatuses": [{
            "name": container, "ready": false, "restartCount": 0, "image": "x", "imageID": "x",
            "state": { "terminated": {
                "exitCode": exit_code, "reason": reason, "message": message,
                "startedAt": now(), "finishedAt": now(),
            }},
        }],
    }});
    pods.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
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

/// Plays the kubelet for every attempt of Job `job`, each pod failing with `message`, until the Job controller
/// gives up (its `backoffLimit`) and marks the Job failed.
pub async fn fail_job(client: &kube::Client, namespace: &str, job: &str, message: &str) -> anyhow::Result<()> {
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("job-name={job}");
    airq_testenv::eventually(
        "the Job controller to mark the Job failed",
        Duration::from_secs(180),
        || async {
            let current = jobs.get(job).await.map_err(|e| e.to_string())?;
            let failed = current
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Failed" && c.status == "True"));
            if failed {
                return Ok(());
            }
            let waiting = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| e.to_string())?
                .items
                .into_iter()
                .any(|p| {
                    !matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Failed" | "Succeeded")
                    )
                });
            if waiting {
                finish_job(client, namespace, job, false, message)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Err("the Job has not failed yet".to_owned())
        },
    )
    .await?;
    Ok(())
}

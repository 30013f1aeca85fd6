//! Playing the kubelet's part on the test control plane, which has no kubelet and no scheduler: binding pods to a
//! Node object and writing their status through the API, so that kube-controller-manager's Deployment and Job
//! controllers see pods running, ready or finished and do the rest as in a cluster.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// The Node object pods are bound to.
pub const NODE: &str = "airq-test-node";

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
    run_pods_at(client, namespace, selector, None).await
}

/// [`run_pods`], giving each pod the address `ip` (so that its Service's endpoints lead to a real server there).
pub async fn run_pods_at(
    client: &kube::Client,
    namespace: &str,
    selector: &str,
    ip: Option<&str>,
) -> anyhow::Result<usize> {
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
        let mut status = status;
        if let Some(ip) = ip {
            status["status"]["podIP"] = json!(ip);
            status["status"]["podIPs"] = json!([{ "ip": ip }]);
            status["status"]["hostIP"] = json!(ip);
        }
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
    let pod = crate::eventually("the Job's pod", Duration::from_secs(60), || async {
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

/// Plays the kubelet for every attempt of Job `job`, each pod failing with `message`, until the Job controller
/// gives up (its `backoffLimit`) and marks the Job failed.
pub async fn fail_job(client: &kube::Client, namespace: &str, job: &str, message: &str) -> anyhow::Result<()> {
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("job-name={job}");
    crate::eventually(
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

/// Applies `crds` (once per test process) and waits until each is Established and so served.
pub async fn install_crds(
    client: &kube::Client,
    crds: Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>,
) -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::runtime::wait::{await_condition, conditions};
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    INSTALLED
        .get_or_try_init(|| async {
            let api: Api<CustomResourceDefinition> = Api::all(client.clone());
            for crd in crds {
                let name = crd.name_any();
                api.patch(&name, &PatchParams::apply("airq-tests").force(), &Patch::Apply(&crd))
                    .await?;
                tokio::time::timeout(
                    Duration::from_secs(30),
                    await_condition(api.clone(), &name, conditions::is_crd_established()),
                )
                .await??;
            }
            anyhow::Ok(())
        })
        .await?;
    Ok(())
}

/// A namespaced Kubernetes resource with a static type, readable from YAML: what the tests create.
pub trait Namespaced:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + serde::Serialize
    + std::fmt::Debug
{
}

impl<K> Namespaced for K where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
{
}

/// Creates the namespaced object described by `yaml` in `namespace`.
pub async fn create<K: Namespaced>(client: &kube::Client, namespace: &str, yaml: &str) -> anyhow::Result<K> {
    let object: K = serde_saphyr::from_str(yaml)?;
    Ok(Api::<K>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &object)
        .await?)
}

//! The test control plane is a real Kubernetes: the API server validates and serves custom resources and enforces
//! RBAC, and kube-controller-manager turns Deployments into ReplicaSets, CronJobs into Jobs, and garbage-collects
//! what an owner leaves behind; the test node runs pods of airq's images, which reach the database through a
//! Service by its DNS name and answer through theirs. None of these tests could pass against a fake API.

use std::time::Duration;

use airq_testenv::{eventually, kube_client, kubernetes, namespace, tools};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

fn from_json<T: DeserializeOwned>(value: serde_json::Value) -> anyhow::Result<T> {
    Ok(serde_json::from_value(value)?)
}

fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

#[tokio::test]
async fn api_server_runs_the_pinned_kubernetes_version() -> anyhow::Result<()> {
    let client = kube_client().await?;
    let info = client.apiserver_version().await?;
    let pinned = tools::kubernetes_version()?;
    assert_eq!(info.git_version, pinned);
    // The Rust API types target the same minor version.
    let workspace = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))?;
    let feature = format!("\"v{}_{}\"", info.major, info.minor);
    assert!(
        workspace
            .lines()
            .any(|l| l.starts_with("k8s-openapi") && l.contains(&feature)),
        "k8s-openapi in Cargo.toml should enable {feature} to match the control plane {pinned}"
    );
    Ok(())
}

#[tokio::test]
async fn custom_resource_definition_becomes_established_and_serves_validated_objects() -> anyhow::Result<()> {
    let client = kube_client().await?;
    let ns = namespace(&client).await?;
    let id = suffix();
    let (group, plural, kind) = ("smoke.airq.dev", format!("gizmos{id}"), format!("Gizmo{id}"));
    let name = format!("{plural}.{group}");
    let crd: CustomResourceDefinition = from_json(json!({
        "metadata": { "name": name },
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": { "plural": plural, "singular": format!("gizmo{id}"), "kind": kind },
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": { "type": "object", "properties": {
                    "spec": { "type": "object", "required": ["size"], "properties": {
                        "size": { "type": "integer", "minimum": 1 }
                    }}
                }}}
            }]
        }
    }))?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd).await?;
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(crds.clone(), &name, conditions::is_crd_established()),
    )
    .await??;

    let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", &kind), &plural);
    let gizmos: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
    let gizmo = DynamicObject::new("first", &resource).data(json!({ "spec": { "size": 3 } }));
    // The new API is being wired into discovery and the handler chain right after Established.
    let created = eventually("the new resource to be served", Duration::from_secs(20), || async {
        gizmos
            .create(&PostParams::default(), &gizmo)
            .await
            .map_err(|e| e.to_string())
    })
    .await?;
    assert_eq!(created.data["spec"]["size"], 3);
    let listed = gizmos.list(&ListParams::default()).await?;
    assert_eq!(listed.items.len(), 1);

    // The schema is enforced by the API server.
    let invalid = DynamicObject::new("second", &resource).data(json!({ "spec": { "size": 0 } }));
    match gizmos.create(&PostParams::default(), &invalid).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(status.message.contains("spec.size"), "{}", status.message);
        }
        other => anyhow::bail!("an object violating the schema was not rejected: {other:?}"),
    }
    crds.delete(&name, &DeleteParams::default()).await?;
    Ok(())
}

#[tokio::test]
async fn deployment_gets_a_replica_set_which_is_garbage_collected_with_it() -> anyhow::Result<()> {
    let client = kube_client().await?;
    let ns = namespace(&client).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let deployment: Deployment = from_json(json!({
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "web", "image": "registry.invalid/web:1" }] }
            }
        }
    }))?;
    let created = deployments.create(&PostParams::default(), &deployment).await?;
    let owner_uid = created.uid().unwrap_or_default();

    // The deployment controller creates the ReplicaSet and names itself its controlling owner.
    let replica_set = eventually(
        "a ReplicaSet owned by the Deployment",
        Duration::from_secs(60),
        || async {
            let list = replica_sets
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .find(|rs| {
                    rs.owner_references()
                        .iter()
                        .any(|o| o.uid == owner_uid && o.controller == Some(true))
                })
                .ok_or_else(|| "no ReplicaSet yet".to_owned())
        },
    )
    .await?;
    assert!(replica_set.name_any().starts_with("web-"), "{}", replica_set.name_any());
    assert_eq!(replica_set.spec.as_ref().and_then(|s| s.replicas), Some(2));

    // The replica-set controller creates the Pods (the scheduler binds them; their image does not exist).
    eventually("two Pods owned by the ReplicaSet", Duration::from_secs(60), || async {
        let list = pods.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let owned = list
            .items
            .iter()
            .filter(|p| {
                p.owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == replica_set.meta().uid.as_ref())
            })
            .count();
        if owned == 2 {
            Ok(())
        } else {
            Err(format!("{owned} Pods"))
        }
    })
    .await?;

    // Deleting the owner leaves the dependents to the garbage collector.
    deployments.delete("web", &DeleteParams::background()).await?;
    eventually(
        "the garbage collector to delete the ReplicaSet and its Pods",
        Duration::from_secs(90),
        || async {
            let left_rs = replica_sets
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .len();
            let left_pods = pods
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .len();
            if left_rs + left_pods == 0 {
                Ok(())
            } else {
                Err(format!("{left_rs} ReplicaSets and {left_pods} Pods left"))
            }
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn cron_job_controller_creates_a_job_on_schedule() -> anyhow::Result<()> {
    let client = kube_client().await?;
    let ns = namespace(&client).await?;
    let cron_jobs: Api<CronJob> = Api::namespaced(client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let cron_job: CronJob = from_json(json!({
        "metadata": { "name": "tick" },
        "spec": {
            "schedule": "* * * * *",
            "jobTemplate": { "spec": { "template": { "spec": {
                "restartPolicy": "Never",
                "containers": [{ "name": "tick", "image": "registry.invalid/tick:1" }]
            }}}}
        }
    }))?;
    let created = cron_jobs.create(&PostParams::default(), &cron_job).await?;
    let owner_uid = created.uid().unwrap_or_default();

    // The schedule fires at the next minute boundary.
    let job = eventually("the CronJob's first Job", Duration::from_secs(100), || async {
        let list = jobs.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        list.items
            .into_iter()
            .find(|job| job.owner_references().iter().any(|o| o.uid == owner_uid))
            .ok_or_else(|| "no Job yet".to_owned())
    })
    .await?;
    assert!(job.name_any().starts_with("tick-"), "{}", job.name_any());
    // The controller records the schedule in the CronJob's status right after it creates the Job (a separate
    // write, which can land a moment after the Job is listed).
    eventually("the CronJob's lastScheduleTime", Duration::from_secs(30), || async {
        let scheduled = cron_jobs.get("tick").await.map_err(|e| e.to_string())?;
        scheduled
            .status
            .and_then(|s| s.last_schedule_time)
            .ok_or_else(|| "no lastScheduleTime yet".to_owned())
    })
    .await?;

    // And the job controller creates its Pod.
    let selector = format!("job-name={}", job.name_any());
    eventually("the Job's Pod", Duration::from_secs(60), || async {
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| e.to_string())?;
        if list.items.is_empty() {
            Err("no Pod yet".to_owned())
        } else {
            Ok(())
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn rbac_denies_a_service_account_until_a_role_allows_it() -> anyhow::Result<()> {
    let admin = kube_client().await?;
    let ns = namespace(&admin).await?;
    let reader = airq_testenv::service_account_client(&admin, &ns, "reader").await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(reader.clone(), &ns);
    match config_maps.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => anyhow::bail!("a service account without a role could list ConfigMaps: {other:?}"),
    }

    let roles: Api<Role> = Api::namespaced(admin.clone(), &ns);
    roles
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": { "name": "read-config" },
                "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"] }]
            }))?,
        )
        .await?;
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), &ns);
    bindings
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": { "name": "reader-reads-config" },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-config" },
                "subjects": [{ "kind": "ServiceAccount", "name": "reader", "namespace": ns }]
            }))?,
        )
        .await?;
    eventually(
        "the RoleBinding to allow listing ConfigMaps",
        Duration::from_secs(20),
        || async {
            config_maps
                .list(&ListParams::default())
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        },
    )
    .await?;
    // Still nothing beyond the role.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(reader, &ns);
    assert!(matches!(secrets.list(&ListParams::default()).await, Err(kube::Error::Api(s)) if s.code == 403));
    Ok(())
}

#[tokio::test]
async fn helm_installs_a_chart_into_the_control_plane() -> anyhow::Result<()> {
    let helm = airq_testenv::helm().await?;
    let version = std::process::Command::new(&helm)
        .args(["version", "--short"])
        .output()?;
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    let pinned = tools::helm_version()?;
    assert!(
        version.starts_with(&pinned),
        "helm says {version:?}, go.mod pins {pinned}"
    );

    let client = kube_client().await?;
    let ns = namespace(&client).await?;
    let chart = tempfile::tempdir()?;
    std::fs::write(
        chart.path().join("Chart.yaml"),
        "apiVersion: v2\nname: smoke\nversion: 0.1.0\n",
    )?;
    std::fs::create_dir(chart.path().join("templates"))?;
    std::fs::write(
        chart.path().join("templates/config.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-config\ndata:\n  greeting: {{ .Values.greeting | quote }}\n",
    )?;
    let kubeconfig = kubernetes().await?.kubeconfig;
    let output = std::process::Command::new(&helm)
        .args(["install", "smoke"])
        .arg(chart.path())
        .args(["--namespace", &ns, "--set", "greeting=hello"])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .output()?;
    assert!(
        output.status.success(),
        "helm install failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let config: ConfigMap = Api::namespaced(client, &ns).get("smoke-config").await?;
    assert_eq!(
        config.data.and_then(|d| d.get("greeting").cloned()).as_deref(),
        Some("hello")
    );
    assert_eq!(
        config
            .metadata
            .annotations
            .and_then(|a| a.get("meta.helm.sh/release-name").cloned())
            .as_deref(),
        Some("smoke")
    );
    Ok(())
}

#[tokio::test]
async fn a_pod_of_an_airq_image_runs_on_the_node_and_answers_through_its_service() -> anyhow::Result<()> {
    let client = kube_client().await?;
    let ns = namespace(&client).await?;
    let images = airq_testenv::images().await?;
    let database = airq_testenv::pods::pod_database(&client, &ns).await?;
    let deployment: Deployment = from_json(json!({
        "metadata": { "name": "front" },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": "front" } },
            "template": {
                "metadata": { "labels": { "app": "front" } },
                "spec": {
                    "securityContext": { "runAsNonRoot": true, "seccompProfile": { "type": "RuntimeDefault" } },
                    "containers": [{
                        "name": "front",
                        "image": images.image("front"),
                        "imagePullPolicy": "Never",
                        "env": [{ "name": "AIRQ_DATABASE_URL",
                                  "valueFrom": { "secretKeyRef": { "name": "airq-database", "key": "url" } } }],
                        "ports": [{ "name": "http", "containerPort": 8080 }],
                        "readinessProbe": { "httpGet": { "path": "/readyz", "port": "http" }, "periodSeconds": 1 },
                        "securityContext": { "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                             "capabilities": { "drop": ["ALL"] } },
                    }],
                },
            },
        },
    }))?;
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deployment)
        .await?;
    let service: k8s_openapi::api::core::v1::Service = from_json(json!({
        "metadata": { "name": "front" },
        "spec": { "selector": { "app": "front" }, "ports": [{ "port": 80, "targetPort": "http" }] },
    }))?;
    let service = Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &service)
        .await?;
    // Running and ready: its readiness probe asks the database, reached as airq-database.<namespace>.svc.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = eventually("the pod to run and be ready", Duration::from_secs(90), || async {
        let list = pods.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let pod = list.items.into_iter().next().ok_or("no pod yet")?;
        let status = pod.status.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if ready {
            Ok(pod)
        } else {
            Err(format!("{:?}", status.container_statuses))
        }
    })
    .await?;
    let status = pod.status.clone().unwrap_or_default();
    let address = status.pod_ip.unwrap_or_default();
    assert!(
        address.starts_with("198.18."),
        "a pod address outside the pod range: {address}"
    );
    assert_eq!(status.host_ip, Some(airq_testenv::node().await?.address.to_string()));
    // Its Service answers from this machine, through kube-proxy.
    let ip = service.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    assert!(
        ip.starts_with("198.19."),
        "a Service address outside the Service range: {ip}"
    );
    let http = airq_testenv::http_client();
    let answer: serde_json::Value = eventually("the Service to answer", Duration::from_secs(30), || async {
        let response = http
            .get(format!("http://{ip}/readyz"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        response.json().await.map_err(|e| e.to_string())
    })
    .await?;
    assert_eq!(answer["status"], "ready", "{answer}");
    // Its log, through the API server and the kubelet.
    let log = pods.logs(&pod.name_any(), &Default::default()).await?;
    assert!(log.contains("listening"), "{log}");
    database.test.remove().await?;
    airq_testenv::delete_namespace(&client, &ns).await?;
    Ok(())
}

//! The Helm chart against the test control plane: `helm lint`; what `helm template` renders, with the default values
//! and with each file of `helm/airq/ci/`, applied with server-side dry run (every object valid for this Kubernetes
//! version, every pod acceptable under the Pod Security Standard "restricted"); the values schema's errors; and a
//! real `helm install` / `upgrade` / `uninstall`, with the operator running under the chart's own RBAC and turning
//! the chart's Platform into its children.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use airq_api::Platform;
use common::{wait_for, wait_gone};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodTemplateSpec, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role};
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::{Discovery, Scope};
use serde_json::json;

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/airq")
}

/// The Kubernetes version of the test control plane, as helm's `--kube-version` wants it.
fn kube_version() -> anyhow::Result<String> {
    Ok(airq_testenv::tools::kubernetes_version()?
        .trim_start_matches('v')
        .to_owned())
}

async fn helm(args: &[&str]) -> anyhow::Result<Output> {
    let helm = airq_testenv::helm().await?;
    let kubeconfig = airq_testenv::kubernetes().await?.kubeconfig;
    let output = tokio::process::Command::new(helm)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        // Helm's caches and repositories stay out of the home folder.
        .env("HELM_CACHE_HOME", std::env::temp_dir().join("airq-helm-cache"))
        .env("HELM_CONFIG_HOME", std::env::temp_dir().join("airq-helm-config"))
        .env("HELM_DATA_HOME", std::env::temp_dir().join("airq-helm-data"))
        .output()
        .await?;
    Ok(output)
}

async fn helm_ok(args: &[&str]) -> anyhow::Result<String> {
    let output = helm(args).await?;
    anyhow::ensure!(
        output.status.success(),
        "helm {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// The files of `helm/airq/ci/`: one documented option set each.
fn ci_values() -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Renders the chart for release `release` in `namespace`, with `extra` arguments.
async fn render(release: &str, namespace: &str, extra: &[&str]) -> anyhow::Result<Vec<serde_json::Value>> {
    let version = kube_version()?;
    let chart = chart();
    let mut args = vec![
        "template",
        release,
        chart.to_str().unwrap_or_default(),
        "--namespace",
        namespace,
        "--kube-version",
        &version,
    ];
    args.extend_from_slice(extra);
    let text = helm_ok(&args).await?;
    let mut documents = Vec::new();
    for document in text.split("\n---\n") {
        let value: serde_json::Value = serde_saphyr::from_str(document)?;
        if value.is_object() {
            documents.push(value);
        }
    }
    Ok(documents)
}

#[tokio::test]
async fn helm_lint_passes_with_the_default_values_and_every_ci_values_file() -> anyhow::Result<()> {
    let chart = chart();
    let chart = chart.to_str().unwrap_or_default();
    helm_ok(&["lint", "--strict", chart]).await?;
    let files = ci_values()?;
    assert!(
        files.len() >= 5,
        "helm/airq/ci/ should hold the documented option sets: {files:?}"
    );
    for file in files {
        helm_ok(&["lint", "--strict", chart, "-f", file.to_str().unwrap_or_default()]).await?;
    }
    Ok(())
}

async fn restricted_namespace(client: &kube::Client) -> anyhow::Result<String> {
    Ok(airq_testenv::restricted_namespace(client).await?)
}

/// Creates (dry run) a pod from `template` in a "restricted" namespace: the PodSecurity admission refuses it when the
/// template asks for more than the standard allows.
async fn admit_pod(client: &kube::Client, ns: &str, what: &str, template: &PodTemplateSpec) -> Result<(), String> {
    let mut pod: Pod = serde_json::from_value(json!({
        "metadata": { "generateName": "admission-", "labels": template.metadata.as_ref().and_then(|m| m.labels.clone()) },
        "spec": template.spec,
    }))
    .map_err(|e| e.to_string())?;
    // The service account is not what is checked here (it exists only once installed).
    if let Some(spec) = pod.spec.as_mut() {
        spec.service_account_name = None;
    }
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(
            &PostParams {
                dry_run: true,
                ..PostParams::default()
            },
            &pod,
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("{what}: {e}"))
}

#[tokio::test]
async fn every_rendered_object_is_accepted_by_the_api_server_with_server_side_dry_run() -> anyhow::Result<()> {
    let client = airq_testenv::kube_client().await?;
    common::install_crds(&client).await?;
    let discovery = Discovery::new(client.clone()).run().await?;

    let mut cases: Vec<(String, Vec<String>)> = vec![("default values".to_owned(), Vec::new())];
    for file in ci_values()? {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        cases.push((name, vec!["-f".to_owned(), file.to_string_lossy().into_owned()]));
    }
    for (case, mut extra) in cases {
        let ns = restricted_namespace(&client).await?;
        if case.contains("single-namespace") {
            extra.extend(["--set".to_owned(), format!("operator.watchNamespace={ns}")]);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let documents = render("airq", &ns, &extra).await?;
        let mut kinds = Vec::new();
        let mut refused = Vec::new();
        for document in documents {
            let object: DynamicObject = serde_json::from_value(document.clone())?;
            let types = object.types.clone().unwrap_or_default();
            let (group, version) = match types.api_version.split_once('/') {
                Some((g, v)) => (g.to_owned(), v.to_owned()),
                None => (String::new(), types.api_version.clone()),
            };
            let gvk = kube::api::GroupVersionKind::gvk(&group, &version, &types.kind);
            let Some((resource, capabilities)) = discovery.resolve_gvk(&gvk) else {
                refused.push(format!(
                    "{case}: {} is not served by Kubernetes {}",
                    types.api_version,
                    kube_version()?
                ));
                continue;
            };
            let api: Api<DynamicObject> = match capabilities.scope {
                Scope::Cluster => Api::all_with(client.clone(), &resource),
                Scope::Namespaced => Api::namespaced_with(client.clone(), &ns, &resource),
            };
            let name = object.name_any();
            let params = PatchParams::apply("airq-chart-test").dry_run();
            if let Err(e) = api.patch(&name, &params, &Patch::Apply(&object)).await {
                refused.push(format!("{case}: {} {name}: {e}", types.kind));
            }
            // A workload's pods must be admitted in a namespace enforcing "restricted".
            let template = match types.kind.as_str() {
                "Deployment" => serde_json::from_value::<Deployment>(document)?.spec.map(|s| s.template),
                "StatefulSet" => serde_json::from_value::<StatefulSet>(document)?.spec.map(|s| {
                    // The StatefulSet controller adds a claim per volumeClaimTemplate.
                    let mut template = s.template;
                    let claims = s.volume_claim_templates.unwrap_or_default();
                    if let Some(spec) = template.spec.as_mut() {
                        let volumes = spec.volumes.get_or_insert_with(Vec::new);
                        for claim in claims {
                            let name = claim.metadata.name.unwrap_or_default();
                            volumes.push(k8s_openapi::api::core::v1::Volume {
                                persistent_volume_claim: Some(
                                    k8s_openapi::api::core::v1::PersistentVolumeClaimVolumeSource {
                                        claim_name: format!("{name}-0"),
                                        read_only: None,
                                    },
                                ),
                                name,
                                ..Default::default()
                            });
                        }
                    }
                    template
                }),
                _ => None,
            };
            if let Some(template) = template {
                let what = format!("{case}: the pods of {} {name}", types.kind);
                if let Err(e) = admit_pod(&client, &ns, &what, &template).await {
                    refused.push(e);
                }
            }
            kinds.push(format!("{}/{name}", types.kind));
        }
        assert!(refused.is_empty(), "objects refused:\n{}", refused.join("\n"));
        for expected in ["Deployment", "ServiceAccount", "Role", "RoleBinding"] {
            assert!(
                kinds.iter().any(|k| k.starts_with(&format!("{expected}/"))),
                "{case}: no {expected} rendered: {kinds:?}"
            );
        }
        let platform = kinds.iter().any(|k| k == "Platform/airq");
        let postgres = kinds.iter().any(|k| k.starts_with("StatefulSet/"));
        let policies = kinds.iter().filter(|k| k.starts_with("NetworkPolicy/")).count();
        let cluster_role = kinds.iter().any(|k| k == "ClusterRole/airq-operator");
        for role in ["ClusterRole/airq-viewer", "ClusterRole/airq-data-scientist"] {
            assert!(kinds.iter().any(|k| k == role), "{case}: no {role}: {kinds:?}");
        }
        match case.as_str() {
            "default values" => {
                assert!(
                    platform && postgres && cluster_role && policies == 4,
                    "{case}: {kinds:?}"
                )
            }
            "operator-only-values.yaml" => assert!(!platform && !postgres && policies == 0, "{case}: {kinds:?}"),
            "external-database-values.yaml" => assert!(platform && !postgres && policies == 3, "{case}: {kinds:?}"),
            "single-namespace-values.yaml" => assert!(!cluster_role, "{case}: a ClusterRole for one namespace"),
            "everything-values.yaml" => assert!(policies == 5, "{case}: {kinds:?}"),
            _ => {}
        }
    }
    Ok(())
}

fn find<'a>(documents: &'a [serde_json::Value], kind: &str, name: &str) -> Option<&'a serde_json::Value> {
    documents
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

#[tokio::test]
async fn monitoring_the_operator_and_the_grafana_dashboard() -> anyhow::Result<()> {
    // Without the Prometheus Operator: scrape annotations on the operator's pod, no PodMonitor.
    let plain = render("airq", "airq", &[]).await?;
    let operator = find(&plain, "Deployment", "airq-operator").expect("the operator's Deployment");
    assert_eq!(
        operator["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    assert!(plain.iter().all(|d| d["kind"] != "PodMonitor"));
    // With it: a PodMonitor on the operator's named port, and no annotations.
    let monitored = render(
        "airq",
        "airq",
        &["--api-versions", "monitoring.coreos.com/v1/PodMonitor"],
    )
    .await?;
    let pod_monitor = find(&monitored, "PodMonitor", "airq-operator").expect("a PodMonitor");
    assert_eq!(pod_monitor["spec"]["podMetricsEndpoints"][0]["port"], "http");
    let operator = find(&monitored, "Deployment", "airq-operator").expect("the operator's Deployment");
    assert!(operator["spec"]["template"]["metadata"]["annotations"].is_null());
    let ports = operator["spec"]["template"]["spec"]["containers"][0]["ports"].to_string();
    assert!(ports.contains("\"name\":\"http\""), "{ports}");

    // The dashboard: valid JSON for Grafana's sidecar, every panel querying airq's metrics of one namespace.
    let config_map = find(&plain, "ConfigMap", "airq-grafana-dashboard").expect("the dashboard's ConfigMap");
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard: serde_json::Value =
        serde_json::from_str(config_map["data"]["airq.json"].as_str().unwrap_or_default())?;
    assert_eq!(dashboard["uid"], "airq-golden-signals");
    let queries: Vec<&str> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|panel| panel["targets"].as_array().into_iter().flatten())
        .filter_map(|target| target["expr"].as_str())
        .collect();
    assert!(queries.len() >= 14, "{queries:?}");
    assert!(
        queries
            .iter()
            .any(|q| q.contains("airq_predictive_forecast_interval_total")),
        "the live interval coverage: {queries:?}"
    );
    for query in queries {
        assert!(query.contains("airq_"), "{query}");
        assert!(
            query.contains("namespace=\"$namespace\"") || query.contains("airq_operator_reconciles_total"),
            "{query}"
        );
    }
    let without = render("airq", "airq", &["--set", "monitoring.grafanaDashboard.enabled=false"]).await?;
    assert!(find(&without, "ConfigMap", "airq-grafana-dashboard").is_none());
    Ok(())
}

#[tokio::test]
async fn the_values_schema_names_what_is_wrong() -> anyhow::Result<()> {
    let cases = [
        (vec!["--set", "operator.replicas=two"], "/operator/replicas"),
        (vec!["--set", "ingres.host=airq.example.org"], "'ingres' not allowed"),
        (vec!["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
        (vec!["--set", "postgresql.enabled=false"], "/database/existingSecret"),
        (vec!["--set", "ingress.host=Not A Host"], "/ingress/host"),
    ];
    let chart = chart();
    for (extra, expected) in cases {
        let mut args = vec!["template", "airq", chart.to_str().unwrap_or_default()];
        args.extend_from_slice(&extra);
        let output = helm(&args).await?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{extra:?} was accepted");
        assert!(
            stderr.contains(expected),
            "{extra:?}: the error should name {expected}: {stderr}"
        );
    }
    Ok(())
}

fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

#[tokio::test]
async fn helm_install_upgrade_and_uninstall_with_the_operator_under_the_charts_rbac() -> anyhow::Result<()> {
    let admin = airq_testenv::kube_client().await?;
    common::install_crds(&admin).await?;
    let ns = airq_testenv::namespace(&admin).await?;
    // Cluster-scoped objects carry the release name: a release of its own per test run.
    let release = format!("airq-{}", ns.trim_start_matches("t-"));
    let chart = chart();
    let chart = chart.to_str().unwrap_or_default();
    // The images made for the test node: the chart's operator pods run and reconcile its Platform.
    let images = airq_testenv::images().await?;
    let registry = format!("image.registry={}", images.registry);
    let tag = format!("image.tag={}", images.tag);
    helm_ok(&[
        "install",
        &release,
        chart,
        "--namespace",
        &ns,
        "--set",
        &registry,
        "--set",
        &tag,
        "--set",
        "image.pullPolicy=Never",
    ])
    .await?;

    // The operator's objects, as the chart made them.
    let operator_name = format!("{release}-operator");
    let deployment = Api::<Deployment>::namespaced(admin.clone(), &ns)
        .get(&operator_name)
        .await?;
    let pod = deployment.spec.and_then(|s| s.template.spec).unwrap_or_default();
    assert_eq!(pod.service_account_name.as_deref(), Some(operator_name.as_str()));
    assert_eq!(pod.containers[0].image, Some(images.image("operator")));
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .get(&operator_name)
        .await?;
    Api::<ClusterRole>::all(admin.clone()).get(&operator_name).await?;
    Api::<ClusterRoleBinding>::all(admin.clone())
        .get(&operator_name)
        .await?;
    Api::<Role>::namespaced(admin.clone(), &ns)
        .get(&format!("{operator_name}-leader-election"))
        .await?;
    let policies = Api::<NetworkPolicy>::namespaced(admin.clone(), &ns)
        .list(&Default::default())
        .await?;
    assert_eq!(policies.items.len(), 4);
    Api::<StatefulSet>::namespaced(admin.clone(), &ns)
        .get("airq-postgresql")
        .await?;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    let keys = secrets.get("airq-gateway-keys").await?;
    let admin_key = secret_value(&keys, "adminKey").unwrap_or_default();
    assert!(
        admin_key.starts_with("airq_admin_") && admin_key.len() > 40,
        "{admin_key}"
    );
    let database = secrets.get("airq-database").await?;
    let url = secret_value(&database, "url").unwrap_or_default();
    let password = secret_value(&database, "password").unwrap_or_default();
    assert_eq!(
        url,
        format!("postgres://airq:{password}@airq-postgresql.{ns}.svc:5432/airq")
    );

    // The operator's pods, acting as the chart's service account, reconcile the chart's Platform.
    let platforms: Api<Platform> = Api::namespaced(admin.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    // The operator applies a Platform's children at the same time: each is waited for.
    let services: Api<Service> = Api::namespaced(admin.clone(), &ns);
    for service in ["airq-gateway", "airq-front", "airq-predictive", "airq-etl"] {
        wait_for(&deployments, service, "the core Deployments", 60, |_| Ok(())).await?;
        wait_for(&services, service, "the core Services", 10, |_| Ok(())).await?;
    }
    let ingresses: Api<Ingress> = Api::namespaced(admin.clone(), &ns);
    wait_for(&ingresses, "airq", "the Ingress", 10, |_| Ok(())).await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns);
    wait_for(&config_maps, "airq-gateway-routes", "the route table", 10, |_| Ok(())).await?;
    let gateway = deployments.get("airq-gateway").await?;
    let env = serde_json::to_value(&gateway.spec)?["template"]["spec"]["containers"][0]["env"].clone();
    let admin_env = env
        .as_array()
        .and_then(|e| e.iter().find(|v| v["name"] == "AIRQ_ADMIN_KEY"))
        .cloned()
        .unwrap_or_default();
    let reference = &admin_env["valueFrom"]["secretKeyRef"];
    assert_eq!(
        (&reference["name"], &reference["key"]),
        (&json!("airq-gateway-keys"), &json!("adminKey"))
    );
    assert_eq!(gateway.spec.as_ref().and_then(|s| s.replicas), Some(2));

    // The operator's pods pass "restricted" too.
    let strict = restricted_namespace(&admin).await?;
    for service in ["airq-gateway", "airq-front", "airq-predictive", "airq-etl"] {
        let template = deployments
            .get(service)
            .await?
            .spec
            .map(|s| s.template)
            .unwrap_or_default();
        admit_pod(&admin, &strict, service, &template)
            .await
            .map_err(anyhow::Error::msg)?;
    }

    // The chart's own PostgreSQL (an image from Docker Hub, which this machine cannot pull) does not run here, so
    // the Platform waits for its services' pods; tests/tests/platform.rs installs the chart with a database that
    // runs and follows it to Ready.
    wait_for(&platforms, "airq", "the Platform's status", 60, |p| {
        common::condition_of(p, "Ready")
            .map(|_| ())
            .ok_or_else(|| "no Ready condition yet".to_owned())
    })
    .await?;

    // Upgrade: a value changes the Platform, and the operator its Deployment; the generated secrets stay.
    helm_ok(&[
        "upgrade",
        &release,
        chart,
        "--namespace",
        &ns,
        "--reuse-values",
        "--set",
        "platform.gateway.replicas=3",
    ])
    .await?;
    wait_for(&deployments, "airq-gateway", "the gateway scaled to 3", 60, |d| match d
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
    {
        Some(3) => Ok(()),
        other => Err(format!("replicas {other:?}")),
    })
    .await?;
    let kept = secrets.get("airq-gateway-keys").await?;
    assert_eq!(
        secret_value(&kept, "adminKey").unwrap_or_default(),
        admin_key,
        "upgrade changed the admin key"
    );
    let kept = secrets.get("airq-database").await?;
    assert_eq!(
        secret_value(&kept, "url").unwrap_or_default(),
        url,
        "upgrade changed the database password"
    );

    // Uninstall: the Platform goes, its children are garbage-collected; the secrets are kept for a reinstall.
    helm_ok(&["uninstall", &release, "--namespace", &ns, "--wait"]).await?;
    wait_gone(&platforms, "airq", "the Platform to be deleted").await?;
    wait_gone(&deployments, "airq-gateway", "the gateway to be garbage-collected").await?;
    wait_gone(&deployments, &operator_name, "the operator Deployment to be deleted").await?;
    assert!(
        Api::<ClusterRole>::all(admin.clone())
            .get_opt(&operator_name)
            .await?
            .is_none()
    );
    assert!(secrets.get_opt("airq-gateway-keys").await?.is_some());
    assert!(secrets.get_opt("airq-database").await?.is_some());
    airq_testenv::delete_namespace(&admin, &ns).await?;
    Ok(())
}

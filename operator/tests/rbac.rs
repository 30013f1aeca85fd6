//! The chart's RBAC is enough, and tight: an operator acting as a service account bound to exactly the ClusterRole
//! `helm template helm/airq` renders reconciles every kind of resource, with its Events, and cannot read what it
//! has no rule for.

mod common;

use std::time::Duration;

use airq_api::{AdhocService, EtlSchedule, Platform, PredictiveModel};
use common::{create, has_condition, secret, wait_for};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

/// The rules of the ClusterRole the chart renders.
async fn chart_rules() -> anyhow::Result<serde_json::Value> {
    let helm = airq_testenv::helm().await?;
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../helm/airq");
    let output = std::process::Command::new(helm)
        .args([
            "template",
            "airq",
            chart,
            "--kube-version",
            "1.36.3",
            "--namespace",
            "airq-system",
        ])
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout)?;
    for document in text.split("\n---\n") {
        let Ok(value) = serde_saphyr::from_str::<serde_json::Value>(document) else {
            continue;
        };
        if value["kind"] == "ClusterRole" && value["metadata"]["name"] == "airq-operator" {
            return Ok(value["rules"].clone());
        }
    }
    anyhow::bail!("the chart renders no ClusterRole airq-operator")
}

#[tokio::test]
async fn the_operator_works_with_the_charts_rbac_and_no_more() -> anyhow::Result<()> {
    let admin = airq_testenv::kube_client().await?;
    common::install_crds(&admin).await?;
    let ns = airq_testenv::namespace(&admin).await?;

    // A service account bound to a copy of the chart's ClusterRole.
    let role = format!("airq-operator-{ns}");
    let cluster_role: ClusterRole =
        serde_json::from_value(json!({ "metadata": { "name": role }, "rules": chart_rules().await? }))?;
    Api::<ClusterRole>::all(admin.clone())
        .create(&PostParams::default(), &cluster_role)
        .await?;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": { "name": role },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role },
        "subjects": [{ "kind": "ServiceAccount", "name": "airq-operator", "namespace": ns }],
    }))?;
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &binding)
        .await?;
    let restricted = airq_testenv::service_account_client(&admin, &ns, "airq-operator").await?;

    // Nothing beyond the rules: e.g. no Nodes.
    assert!(
        matches!(Api::<Node>::all(restricted.clone()).list(&ListParams::default()).await, Err(kube::Error::Api(s)) if s.code == 403)
    );

    let operator = airq_operator::Operator::start(restricted, common::args(&ns).await?).await?;
    let database = common::pod_database(&admin, &ns).await?;
    secret(&admin, &ns, "openaq", "api-key", "k").await?;
    create::<Platform>(
        &admin,
        &ns,
        &format!(
            "apiVersion: airq.dev/v1alpha1\nkind: Platform\nmetadata: {{ name: airq }}\nspec:\n{}",
            common::platform_spec("").await?
        ),
    )
    .await?;
    create::<AdhocService>(&admin, &ns, "apiVersion: airq.dev/v1alpha1\nkind: AdhocService\nmetadata: { name: maps }\nspec:\n  image: x/maps:1\n  route: { pathPrefix: /adhoc/maps/ }\n  access: { public: true }\n").await?;
    create::<EtlSchedule>(&admin, &ns, "apiVersion: airq.dev/v1alpha1\nkind: EtlSchedule\nmetadata: { name: hourly }\nspec:\n  source: { openaq: { locations: [1], apiKeySecret: { name: openaq, key: api-key } } }\n  schedule: \"0 * * * *\"\n").await?;
    create::<PredictiveModel>(&admin, &ns, "apiVersion: airq.dev/v1alpha1\nkind: PredictiveModel\nmetadata: { name: o3 }\nspec:\n  target: { pollutant: o3 }\n  algorithm: { persistence: {} }\n").await?;

    wait_for(
        &Api::<Platform>::namespaced(admin.clone(), &ns),
        "airq",
        "the Platform's status",
        30,
        has_condition("Ready", "False", Some("Progressing")),
    )
    .await?;
    wait_for(
        &Api::<AdhocService>::namespaced(admin.clone(), &ns),
        "maps",
        "the AdhocService routed",
        30,
        has_condition("Routed", "True", None),
    )
    .await?;
    wait_for(
        &Api::<EtlSchedule>::namespaced(admin.clone(), &ns),
        "hourly",
        "the schedule",
        30,
        has_condition("Ready", "True", Some("Scheduled")),
    )
    .await?;
    wait_for(
        &Api::<PredictiveModel>::namespaced(admin.clone(), &ns),
        "o3",
        "the model training",
        30,
        has_condition("Trained", "False", Some("Training")),
    )
    .await?;
    let events: Api<Event> = Api::namespaced(admin.clone(), &ns);
    airq_testenv::eventually("the operator's Events", Duration::from_secs(20), || async {
        let list = events.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let applied = list
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("Applied"))
            .count();
        if applied >= 4 {
            Ok(())
        } else {
            Err(format!("{applied} Applied events"))
        }
    })
    .await?;
    operator.stop().await;
    database.test.remove().await?;
    airq_testenv::delete_namespace(&admin, &ns).await?;
    Ok(())
}

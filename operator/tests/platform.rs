//! Platform on the real control plane and node: waits for its Secret without looping, then creates the core
//! services, the route table and the Ingress; is Ready once the core services' pods run and pass their readiness
//! probes; follows updates; removes the Ingress it no longer wants; a restart with nothing changed writes nothing;
//! deletion cascades.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use airq_api::Platform;
use common::{create, has_condition, pod_database, settled_reconciles, setup, wait_for, wait_gone};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

async fn versions(client: &kube::Client, ns: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut all = BTreeMap::new();
    let lp = ListParams::default();
    for d in Api::<Deployment>::namespaced(client.clone(), ns).list(&lp).await? {
        all.insert(
            format!("Deployment/{}", d.name_any()),
            d.resource_version().unwrap_or_default(),
        );
    }
    for s in Api::<Service>::namespaced(client.clone(), ns).list(&lp).await? {
        all.insert(
            format!("Service/{}", s.name_any()),
            s.resource_version().unwrap_or_default(),
        );
    }
    for c in Api::<ConfigMap>::namespaced(client.clone(), ns).list(&lp).await? {
        all.insert(
            format!("ConfigMap/{}", c.name_any()),
            c.resource_version().unwrap_or_default(),
        );
    }
    for p in Api::<Platform>::namespaced(client.clone(), ns).list(&lp).await? {
        all.insert(
            format!("Platform/{}", p.name_any()),
            p.resource_version().unwrap_or_default(),
        );
    }
    Ok(all)
}

#[tokio::test]
async fn platform_lifecycle() -> anyhow::Result<()> {
    let (client, ns, operator) = setup().await?;
    let platforms: Api<Platform> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);

    let images = airq_testenv::images().await?;
    let spec = common::platform_spec("  gateway: { replicas: 2 }\n  ingress: { host: airq.test }\n").await?;
    let yaml = format!("apiVersion: airq.dev/v1alpha1\nkind: Platform\nmetadata: {{ name: airq }}\nspec:\n{spec}");

    // Without its database Secret: Ready=False, nothing created, no loop.
    let platform: Platform = create(&client, &ns, &yaml).await?;
    wait_for(
        &platforms,
        "airq",
        "Ready=False SecretNotFound",
        30,
        has_condition("Ready", "False", Some("SecretNotFound")),
    )
    .await?;
    let before = settled_reconciles(&operator, "Platform").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        operator.ctx.stats.reconciles("Platform"),
        before,
        "the Platform is reconciled in a loop"
    );
    assert!(deployments.list(&ListParams::default()).await?.items.is_empty());

    // The Secret appears: the Platform is reconciled again without any change to it.
    let database = pod_database(&client, &ns).await?;
    for name in ["airq-gateway", "airq-front", "airq-predictive", "airq-etl"] {
        let deployment = wait_for(&deployments, name, name, 30, |_| Ok(())).await?;
        assert!(common::owned_by(&deployment, &platform.uid().unwrap_or_default()));
    }
    let gateway = deployments.get("airq-gateway").await?;
    let spec = gateway.spec.clone().unwrap_or_default();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.clone().unwrap_or_default();
    assert_eq!(pod.containers[0].image, Some(images.image("gateway")));
    assert!(
        pod.volumes
            .unwrap_or_default()
            .iter()
            .any(|v| v.config_map.as_ref().is_some_and(|c| c.name == "airq-gateway-routes"))
    );
    let routes = wait_for(&config_maps, "airq-gateway-routes", "the route table", 30, |_| Ok(())).await?;
    let table = routes
        .data
        .unwrap_or_default()
        .remove("routes.yaml")
        .unwrap_or_default();
    assert!(
        table.contains("id: front") && table.contains("/api/predictive/"),
        "{table}"
    );
    let ingress = wait_for(&ingresses, "airq", "the Ingress", 30, |_| Ok(())).await?;
    assert_eq!(
        ingress.spec.unwrap_or_default().rules.unwrap_or_default()[0]
            .host
            .as_deref(),
        Some("airq.test")
    );

    // Ready once every core service's pods run.
    wait_for(
        &platforms,
        "airq",
        "Ready=False Progressing",
        30,
        has_condition("Ready", "False", Some("Progressing")),
    )
    .await?;
    // Ready once the pods of every core service run on the node and pass their readiness probes (which ask the
    // database).
    let ready = wait_for(
        &platforms,
        "airq",
        "the Platform Ready",
        180,
        has_condition("Ready", "True", Some("Available")),
    )
    .await?;
    common::pods_ready(&client, &ns, "app.kubernetes.io/instance=airq", 5).await?;
    let status = ready.status.unwrap_or_default();
    assert_eq!(
        (status.routes, status.url.as_deref()),
        (Some(3), Some("http://airq.test/"))
    );

    // A restart with nothing changed: the new operator reconciles everything and writes nothing.
    let before = versions(&client, &ns).await?;
    operator.stop().await;
    let restarted = airq_operator::Operator::start(client.clone(), common::args(&ns).await?).await?;
    airq_testenv::eventually(
        "the restarted operator to reconcile the Platform",
        Duration::from_secs(30),
        || async {
            if restarted.ctx.stats.reconciles("Platform") > 0 {
                Ok(())
            } else {
                Err("not yet".to_owned())
            }
        },
    )
    .await?;
    settled_reconciles(&restarted, "Platform").await;
    assert_eq!(
        restarted.ctx.stats.writes(),
        0,
        "a resync with nothing changed wrote to the API server"
    );
    assert_eq!(
        versions(&client, &ns).await?,
        before,
        "an object changed during the resync"
    );

    // Update → children follow; an Ingress no longer wanted is deleted.
    let next = images.tagged(&format!("{}-next", images.tag)).await?;
    platforms
        .patch(
            "airq",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "version": next.tag, "ingress": { "enabled": false } } })),
        )
        .await?;
    wait_for(&deployments, "airq-front", "the new image", 30, |d| {
        let image = d
            .spec
            .clone()
            .unwrap_or_default()
            .template
            .spec
            .unwrap_or_default()
            .containers[0]
            .image
            .clone();
        (image == Some(next.image("front")))
            .then_some(())
            .ok_or(format!("{image:?}"))
    })
    .await?;
    // The new version's pods replace the old ones, which keep answering until then.
    wait_for(
        &platforms,
        "airq",
        "the Platform Ready on the new version",
        180,
        has_condition("Ready", "True", Some("Available")),
    )
    .await?;
    wait_gone(&ingresses, "airq", "the unwanted Ingress to be deleted").await?;

    // Delete → everything it owned is garbage-collected.
    platforms.delete("airq", &DeleteParams::background()).await?;
    for name in ["airq-gateway", "airq-front", "airq-predictive", "airq-etl"] {
        wait_gone(&deployments, name, "the core Deployments to be garbage-collected").await?;
    }
    wait_gone(
        &config_maps,
        "airq-gateway-routes",
        "the route table to be garbage-collected",
    )
    .await?;
    restarted.stop().await;
    database.test.remove().await?;
    airq_testenv::delete_namespace(&client, &ns).await?;
    Ok(())
}

//! AdhocService on the real control plane and node: children with owner references, the gateway route, readiness
//! from the Deployment's pods (airq's front image as another team's service), updates, a child deleted by hand,
//! route conflicts, an invalid spec without a hot loop, deletion.

mod common;

use std::time::Duration;

use airq_api::{AdhocService, Platform};
use common::{create, has_condition, pod_database, settled_reconciles, setup, wait_for, wait_gone};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

/// An AdhocService running `image` (airq's front, which answers on 8080 once its database answers).
fn reports(image: &str) -> String {
    format!(
        "apiVersion: airq.dev/v1alpha1\nkind: AdhocService\nmetadata: {{ name: reports }}\nspec:\n  image: {image}\n  port: 8080\n  replicas: 2\n  env:\n    - {{ name: AIRQ_DATABASE_URL, valueFrom: {{ secretKeyRef: {{ name: airq-database, key: url }} }} }}\n  route: {{ pathPrefix: /adhoc/reports/, stripPrefix: true }}\n  access: {{ groups: [analysts] }}\n"
    )
}

fn routes(config: &ConfigMap) -> String {
    config
        .data
        .as_ref()
        .and_then(|d| d.get("routes.yaml").cloned())
        .unwrap_or_default()
}

#[tokio::test]
async fn adhoc_service_lifecycle() -> anyhow::Result<()> {
    let (client, ns, operator) = setup().await?;
    let database = pod_database(&client, &ns).await?;
    let images = airq_testenv::images().await?;
    let spec = common::platform_spec("  ingress: { host: airq.test, className: nginx }\n").await?;
    create::<Platform>(
        &client,
        &ns,
        &format!("apiVersion: airq.dev/v1alpha1\nkind: Platform\nmetadata: {{ name: airq }}\nspec:\n{spec}"),
    )
    .await?;
    let reports_yaml = reports(&images.image("front"));
    let adhoc: AdhocService = create(&client, &ns, &reports_yaml).await?;
    let adhocs: Api<AdhocService> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let uid = adhoc.uid().unwrap_or_default();

    // Create → children with the right spec and owner references.
    let deployment = wait_for(&deployments, "adhoc-reports", "the Deployment", 30, |_| Ok(())).await?;
    assert!(common::owned_by(&deployment, &uid));
    let spec = deployment.spec.clone().unwrap_or_default();
    assert_eq!(spec.replicas, Some(2));
    let container = &spec.template.spec.clone().unwrap_or_default().containers[0];
    assert_eq!(container.image, Some(images.image("front")));
    let security = container.security_context.clone().unwrap_or_default();
    assert_eq!(
        security.read_only_root_filesystem,
        Some(true),
        "read-only unless the spec says otherwise"
    );
    let service = wait_for(&services, "adhoc-reports", "the Service", 30, |_| Ok(())).await?;
    assert!(common::owned_by(&service, &uid));
    let ingress = wait_for(&ingresses, "adhoc-reports", "the Ingress", 30, |_| Ok(())).await?;
    let rule = ingress
        .spec
        .clone()
        .unwrap_or_default()
        .rules
        .unwrap_or_default()
        .remove(0);
    assert_eq!(rule.host.as_deref(), Some("airq.test"));
    assert_eq!(
        rule.http.map(|h| h.paths[0].path.clone()),
        Some(Some("/adhoc/reports/".to_owned()))
    );
    wait_for(
        &config_maps,
        "airq-gateway-routes",
        "the route in the gateway's table",
        30,
        |c| {
            let text = routes(c);
            (text.contains("adhoc/reports") && text.contains("analysts") && text.contains("http://adhoc-reports."))
                .then_some(())
                .ok_or(text)
        },
    )
    .await?;

    // Routed but not available: no pod is ready yet.
    wait_for(&adhocs, "reports", "Routed=True, Ready=False", 30, |a| {
        has_condition("Routed", "True", Some("Routed"))(a)?;
        has_condition("Ready", "False", Some("Progressing"))(a)
    })
    .await?;
    // The ReplicaSet's pods run on the node and answer their probes.
    common::pods_ready(
        &client,
        &ns,
        "app.kubernetes.io/name=adhoc,app.kubernetes.io/instance=reports",
        2,
    )
    .await?;
    let ready = wait_for(
        &adhocs,
        "reports",
        "Ready=True",
        60,
        has_condition("Ready", "True", Some("Available")),
    )
    .await?;
    let status = ready.status.clone().unwrap_or_default();
    assert_eq!(status.available_replicas, Some(2));
    assert_eq!(status.url.as_deref(), Some("http://airq.test/adhoc/reports/"));

    // Update → children updated.
    let next = images.tagged(&format!("{}-next", images.tag)).await?;
    adhocs
        .patch(
            "reports",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 3, "image": next.image("front") } })),
        )
        .await?;
    wait_for(
        &deployments,
        "adhoc-reports",
        "the Deployment to follow the update",
        30,
        |d| {
            let spec = d.spec.clone().unwrap_or_default();
            let image = spec.template.spec.unwrap_or_default().containers[0].image.clone();
            (spec.replicas == Some(3) && image == Some(next.image("front")))
                .then_some(())
                .ok_or(format!("{:?} {image:?}", spec.replicas))
        },
    )
    .await?;
    wait_for(
        &adhocs,
        "reports",
        "Ready=False while the new pods start",
        30,
        has_condition("Ready", "False", None),
    )
    .await?;

    // A child deleted by hand comes back.
    let old_uid = services.get("adhoc-reports").await?.uid();
    services.delete("adhoc-reports", &DeleteParams::default()).await?;
    wait_for(&services, "adhoc-reports", "the Service to be recreated", 30, |s| {
        (s.uid() != old_uid).then_some(()).ok_or("the old Service".to_owned())
    })
    .await?;

    // A second service asking for the same route loses it to the older one.
    create::<AdhocService>(
        &client,
        &ns,
        &reports_yaml.replace("name: reports", "name: reports-copy"),
    )
    .await?;
    let loser = wait_for(
        &adhocs,
        "reports-copy",
        "Routed=False PathConflict",
        30,
        has_condition("Routed", "False", Some("PathConflict")),
    )
    .await?;
    assert!(common::condition_of(&loser, "Routed").is_some_and(|(_, _, message)| message.contains("reports")));

    // An invalid spec: Ready=False with the reason, and no reconcile loop.
    create::<AdhocService>(
        &client,
        &ns,
        &reports_yaml
            .replace("name: reports", "name: sneaky")
            .replace("/adhoc/reports/", "/api/etl/backdoor/"),
    )
    .await?;
    let invalid = wait_for(
        &adhocs,
        "sneaky",
        "Ready=False InvalidSpec",
        30,
        has_condition("Ready", "False", Some("InvalidSpec")),
    )
    .await?;
    assert!(common::condition_of(&invalid, "Ready").is_some_and(|(_, _, m)| m.contains("/api/etl/")));
    // (Counted for that object: the others still roll out, and each change of theirs is reconciled.)
    let sneaky = invalid.uid().unwrap_or_default();
    settled_reconciles(&operator, "AdhocService").await;
    let before = operator.ctx.memory.reconciles(&sneaky);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(before > 0);
    assert_eq!(
        operator.ctx.memory.reconciles(&sneaky),
        before,
        "the invalid object is reconciled in a loop"
    );

    // Delete → the children are garbage-collected and the route leaves the table; the loser takes over.
    adhocs.delete("reports", &DeleteParams::background()).await?;
    wait_gone(&deployments, "adhoc-reports", "the Deployment to be garbage-collected").await?;
    wait_gone(&ingresses, "adhoc-reports", "the Ingress to be garbage-collected").await?;
    wait_for(
        &adhocs,
        "reports-copy",
        "the copy to take the route",
        30,
        has_condition("Routed", "True", None),
    )
    .await?;
    wait_for(
        &config_maps,
        "airq-gateway-routes",
        "the table to route to the copy",
        30,
        |c| {
            let text = routes(c);
            (text.contains("adhoc/reports-copy") && !text.contains("id: adhoc/reports\n"))
                .then_some(())
                .ok_or(text)
        },
    )
    .await?;
    operator.stop().await;
    database.test.remove().await?;
    airq_testenv::delete_namespace(&client, &ns).await?;
    Ok(())
}

//! What a platform engineer does to resources and their children, on the real control plane and node: delete and
//! create again under the same name, edit a child by hand (also while the operator is down), names the API server
//! would refuse for a child, paths the platform's services answer, a spec that becomes invalid, Events that follow
//! what happened, and per-resource metrics that leave with their resource.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use airq_api::{AdhocService, EtlSchedule, PredictiveModel};
use airq_operator::Operator;
use common::{create, has_condition, pod_database, setup, wait_for, wait_gone};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ResourceQuota, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

/// An AdhocService `name` running airq's front (which answers on 8080 once its database answers), one replica.
fn service_yaml(name: &str, image: &str, prefix: &str) -> String {
    format!(
        "apiVersion: airq.dev/v1alpha1\nkind: AdhocService\nmetadata: {{ name: {name} }}\nspec:\n  image: {image}\n  port: 8080\n  replicas: 1\n  env:\n    - {{ name: AIRQ_DATABASE_URL, valueFrom: {{ secretKeyRef: {{ name: airq-database, key: url }} }} }}\n  route: {{ pathPrefix: {prefix} }}\n  access: {{ groups: [analysts] }}\n"
    )
}

/// Scales the Deployment `name` by hand, as `kubectl scale` would.
async fn scale_by_hand(deployments: &Api<Deployment>, name: &str, replicas: i32) -> anyhow::Result<()> {
    deployments
        .patch(
            name,
            &by_hand(),
            &Patch::Merge(json!({ "spec": { "replicas": replicas } })),
        )
        .await?;
    Ok(())
}

/// A hand edit, as `kubectl` makes it: a merge patch under another field manager.
fn by_hand() -> PatchParams {
    PatchParams {
        field_manager: Some("kubectl-edit".to_owned()),
        ..PatchParams::default()
    }
}

fn replicas(deployment: &Deployment) -> Option<i32> {
    deployment.spec.as_ref().and_then(|s| s.replicas)
}

fn service_port(service: &Service) -> Option<i32> {
    Some(service.spec.as_ref()?.ports.as_ref()?.first()?.port)
}

fn target_port(service: &Service) -> Option<IntOrString> {
    service.spec.as_ref()?.ports.as_ref()?.first()?.target_port.clone()
}

/// The notes of the Events about the object `uid`, with their reasons.
async fn event_notes(client: &kube::Client, ns: &str, uid: &str) -> anyhow::Result<BTreeSet<(String, String)>> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect())
}

#[tokio::test]
async fn an_adhoc_service_deleted_and_created_again_gets_a_status_and_hand_edits_are_put_back() -> anyhow::Result<()> {
    let (client, ns, operator) = setup().await?;
    let database = pod_database(&client, &ns).await?;
    let images = airq_testenv::images().await?;
    let adhocs: Api<AdhocService> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let yaml = service_yaml("echo", &images.image("front"), "/adhoc/echo/");

    // No Platform in the namespace: the status says so.
    let first: AdhocService = create(&client, &ns, &yaml).await?;
    let no_platform = has_condition::<AdhocService>("Ready", "False", Some("NoPlatform"));
    wait_for(&adhocs, "echo", "a status", 30, &no_platform).await?;
    let first_uid = first.uid().unwrap_or_default();
    assert!(operator.ctx.memory.last_status(&first_uid).is_some());

    // Deleted, then applied again with the same spec: another object, which gets its own status.
    adhocs.delete("echo", &DeleteParams::background()).await?;
    wait_gone(&adhocs, "echo", "the AdhocService to go").await?;
    airq_testenv::eventually("the deleted object forgotten", Duration::from_secs(10), || async {
        match operator.ctx.memory.last_status(&first_uid) {
            None => Ok(()),
            Some(_) => Err("still remembered".to_owned()),
        }
    })
    .await?;
    let second: AdhocService = create(&client, &ns, &yaml).await?;
    wait_for(&adhocs, "echo", "a status for the new object", 30, &no_platform).await?;
    let uid = second.uid().unwrap_or_default();

    // Its children run; then a Service edited by hand and a Deployment scaled by hand are put back.
    common::pods_ready(&client, &ns, "app.kubernetes.io/instance=echo", 1).await?;
    wait_for(&deployments, "adhoc-echo", "the Deployment", 30, |_| Ok(())).await?;
    scale_by_hand(&deployments, "adhoc-echo", 3).await?;
    wait_for(&deployments, "adhoc-echo", "the scale put back to 1", 30, |d| {
        (replicas(d) == Some(1))
            .then_some(())
            .ok_or(format!("{:?} replicas", replicas(d)))
    })
    .await?;
    services
        .patch(
            "adhoc-echo",
            &by_hand(),
            &Patch::Merge(json!({ "spec": { "ports": [{ "name": "http", "port": 80, "targetPort": 9999 }] } })),
        )
        .await?;
    wait_for(&services, "adhoc-echo", "the target port put back", 30, |s| {
        let target = target_port(s);
        (target == Some(IntOrString::String("http".to_owned())) && service_port(s) == Some(80))
            .then_some(())
            .ok_or(format!("port {:?} → {target:?}", service_port(s)))
    })
    .await?;

    // An edit while the operator is down is put back when it starts.
    operator.stop().await;
    scale_by_hand(&deployments, "adhoc-echo", 2).await?;
    let operator = Operator::start(client.clone(), common::args(&ns).await?).await?;
    wait_for(
        &deployments,
        "adhoc-echo",
        "the scale put back after a restart",
        30,
        |d| {
            (replicas(d) == Some(1))
                .then_some(())
                .ok_or(format!("{:?} replicas", replicas(d)))
        },
    )
    .await?;
    common::pods_ready(&client, &ns, "app.kubernetes.io/instance=echo", 1).await?;
    wait_for(&adhocs, "echo", "settled", 60, &no_platform).await?;
    common::settled_reconciles(&operator, "AdhocService").await;

    // Every field the operator sets is on the children as it set it: nothing it would take for a hand edit.
    let echo = adhocs.get("echo").await?;
    let owner = airq_operator::children::Owner::of(&echo)?;
    for child in airq_operator::controllers::adhoc::build(&echo, &owner, None).children {
        let (desired, _) = child.to_apply()?;
        let live = match &child {
            airq_operator::children::Child::Deployment(_) => {
                serde_json::to_value(deployments.get(child.name()).await?)?
            }
            _ => serde_json::to_value(services.get(child.name()).await?)?,
        };
        assert_eq!(
            airq_operator::children::difference(&live, &desired),
            None,
            "{} {}",
            child.kind().as_str(),
            child.name()
        );
    }

    // A resync with nothing changed writes nothing: the operator sends no write, and the API server stores nothing
    // (the Service's resourceVersion, its etcd revision, stays).
    // The Deployment's status is the Deployment controller's to write: for it, the generation (every spec write) and
    // the operator's field-manager entry (every apply that stored anything) stand for its revision.
    let stored = || async {
        let deployment = deployments.get("adhoc-echo").await?;
        let applied: Vec<_> = deployment
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter(|f| f.manager.as_deref() == Some("airq-operator"))
            .map(|f| (f.operation.clone(), f.time.clone()))
            .collect();
        let service = services.get("adhoc-echo").await?.resource_version();
        anyhow::Ok((deployment.metadata.generation, format!("{applied:?}"), service))
    };
    let before = stored().await?;
    operator.stop().await;
    let operator = Operator::start(client.clone(), common::args(&ns).await?).await?;
    airq_testenv::eventually("a resync", Duration::from_secs(30), || async {
        (operator.ctx.stats.reconciles("AdhocService") > 0)
            .then_some(())
            .ok_or("no reconcile yet".to_owned())
    })
    .await?;
    common::settled_reconciles(&operator, "AdhocService").await;
    let after = stored().await?;
    assert_eq!(operator.ctx.stats.writes(), 0, "a resync sent writes");
    assert_eq!(before, after, "a resync wrote the children");

    // An Event per change, each with its own message: a second `Applied` does not repeat the first one's note.
    adhocs
        .patch(
            "echo",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "env": [
                { "name": "AIRQ_DATABASE_URL", "valueFrom": { "secretKeyRef": { "name": "airq-database", "key": "url" } } },
                { "name": "AIRQ_LOG_LEVEL", "value": "debug" },
            ] } })),
        )
        .await?;
    let notes = airq_testenv::eventually("a second Applied Event", Duration::from_secs(30), || async {
        let notes = event_notes(&client, &ns, &uid).await.map_err(|e| e.to_string())?;
        let applied: Vec<&String> = notes.iter().filter(|(r, _)| r == "Applied").map(|(_, n)| n).collect();
        (applied.len() >= 2)
            .then_some(notes.clone())
            .ok_or(format!("{notes:?}"))
    })
    .await?;
    assert!(
        notes
            .iter()
            .any(|(r, n)| r == "Applied" && n == "applied Deployment adhoc-echo"),
        "{notes:?}"
    );

    operator.stop().await;
    database.test.remove().await?;
    airq_testenv::delete_namespace(&client, &ns).await?;
    Ok(())
}

#[tokio::test]
async fn names_and_paths_that_children_or_the_platform_cannot_take_are_refused_with_a_clear_message()
-> anyhow::Result<()> {
    let (client, ns, operator) = setup().await?;
    let database = pod_database(&client, &ns).await?;
    let images = airq_testenv::images().await?;
    let adhocs: Api<AdhocService> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let image = images.image("front");

    // Names the children could not have are refused at admission, naming the field and the limit.
    let long_model = format!(
        "apiVersion: airq.dev/v1alpha1\nkind: PredictiveModel\nmetadata: {{ name: {} }}\nspec:\n  target: {{ pollutant: no2, stations: [Dongsi] }}\n  algorithm: {{ persistence: {{}} }}\n  training: {{ schedule: \"0 3 * * *\" }}\n",
        "m".repeat(39)
    );
    let refused = create::<PredictiveModel>(&client, &ns, &long_model).await.err();
    let message = refused.map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(message.contains("metadata.name") && message.contains("38"), "{message}");
    for (kind, yaml) in [
        ("AdhocService", service_yaml("my.service", &image, "/adhoc/mine/")),
        (
            "EtlSchedule",
            "apiVersion: airq.dev/v1alpha1\nkind: EtlSchedule\nmetadata: { name: beijing.csv }\nspec:\n  source: { csv: { url: /data/x.csv, format: beijing } }\n".to_owned(),
        ),
    ] {
        let refused = match kind {
            "AdhocService" => create::<AdhocService>(&client, &ns, &yaml).await.err(),
            _ => create::<EtlSchedule>(&client, &ns, &yaml).await.err(),
        };
        let message = refused.map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(message.contains("metadata.name: only lower-case"), "{kind}: {message}");
    }

    // A path the front answers cannot be taken.
    for prefix in [
        "/api/stations/",
        "/api/compare/",
        "/api/ops/",
        "/api/anomalies/",
        "/api/openapi.json",
    ] {
        let name = format!("taker{}", prefix.len());
        create::<AdhocService>(&client, &ns, &service_yaml(&name, &image, prefix)).await?;
        let taker = wait_for(
            &adhocs,
            &name,
            "Ready=False InvalidSpec",
            30,
            has_condition("Ready", "False", Some("InvalidSpec")),
        )
        .await?;
        let (_, _, message) = common::condition_of(&taker, "Ready").unwrap_or_default();
        assert!(message.contains("spec.route.pathPrefix"), "{prefix}: {message}");
        adhocs.delete(&name, &DeleteParams::background()).await?;
    }

    // A valid service that becomes invalid loses its children and its URL, and gets them back once valid again.
    create::<AdhocService>(&client, &ns, &service_yaml("turncoat", &image, "/adhoc/turncoat/")).await?;
    wait_for(&services, "adhoc-turncoat", "the Service", 30, |_| Ok(())).await?;
    wait_for(&adhocs, "turncoat", "a URL", 30, |a| {
        a.status
            .as_ref()
            .and_then(|s| s.url.clone())
            .map(drop)
            .ok_or("no URL".to_owned())
    })
    .await?;
    adhocs
        .patch(
            "turncoat",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "route": { "pathPrefix": "/api/stations/" } } })),
        )
        .await?;
    let invalid = wait_for(
        &adhocs,
        "turncoat",
        "Ready=False InvalidSpec",
        30,
        has_condition("Ready", "False", Some("InvalidSpec")),
    )
    .await?;
    wait_gone(&deployments, "adhoc-turncoat", "the Deployment to go").await?;
    wait_gone(&services, "adhoc-turncoat", "the Service to go").await?;
    assert_eq!(
        invalid.status.and_then(|s| s.url),
        None,
        "an invalid service keeps its URL"
    );
    adhocs
        .patch(
            "turncoat",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "route": { "pathPrefix": "/adhoc/turncoat/" } } })),
        )
        .await?;
    wait_for(&services, "adhoc-turncoat", "the Service back", 30, |_| Ok(())).await?;
    wait_for(&deployments, "adhoc-turncoat", "the Deployment back", 30, |_| Ok(())).await?;

    // A quantity the API server could not read is named before any child is written.
    let greedy = service_yaml("greedy", &image, "/adhoc/greedy/") + "  resources: { limits: { cpu: \"lots\" } }\n";
    create::<AdhocService>(&client, &ns, &greedy).await?;
    let invalid = wait_for(
        &adhocs,
        "greedy",
        "Ready=False InvalidSpec",
        30,
        has_condition("Ready", "False", Some("InvalidSpec")),
    )
    .await?;
    let (_, _, message) = common::condition_of(&invalid, "Ready").unwrap_or_default();
    assert!(message.contains("spec.resources.limits.cpu"), "{message}");

    // A child the API server refuses (here over the namespace's quota): Ready=False with the server's words and an
    // Event, instead of a retry seen only in the logs; once the quota allows it, the service runs.
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": { "name": "no-more-deployments" },
        "spec": { "hard": { "count/deployments.apps": "1" } },
    }))?;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns);
    quotas.create(&Default::default(), &quota).await?;
    airq_testenv::eventually("the quota counted", Duration::from_secs(30), || async {
        let quota = quotas.get("no-more-deployments").await.map_err(|e| e.to_string())?;
        quota
            .status
            .and_then(|s| s.used)
            .and_then(|u| u.get("count/deployments.apps").cloned())
            .map(drop)
            .ok_or("not counted yet".to_owned())
    })
    .await?;
    let second: AdhocService = create(&client, &ns, &service_yaml("second", &image, "/adhoc/second/")).await?;
    let refused = wait_for(
        &adhocs,
        "second",
        "Ready=False ChildRefused",
        60,
        has_condition("Ready", "False", Some("ChildRefused")),
    )
    .await?;
    let (_, _, message) = common::condition_of(&refused, "Ready").unwrap_or_default();
    assert!(
        message.contains("Deployment adhoc-second") && message.contains("quota"),
        "{message}"
    );
    let notes = event_notes(&client, &ns, &second.uid().unwrap_or_default()).await?;
    assert!(notes.iter().any(|(reason, _)| reason == "ChildRefused"), "{notes:?}");
    quotas.delete("no-more-deployments", &DeleteParams::default()).await?;
    wait_for(
        &deployments,
        "adhoc-second",
        "the Deployment once the quota is gone",
        300,
        |_| Ok(()),
    )
    .await?;

    operator.stop().await;
    database.test.remove().await?;
    airq_testenv::delete_namespace(&client, &ns).await?;
    Ok(())
}

#[tokio::test]
async fn a_resources_metrics_leave_with_it() -> anyhow::Result<()> {
    let (client, ns, operator) = setup().await?;
    let schedules: Api<EtlSchedule> = Api::namespaced(client.clone(), &ns);
    // Its Secret is missing: it waits, and still has its gauges.
    create::<EtlSchedule>(
        &client,
        &ns,
        "apiVersion: airq.dev/v1alpha1\nkind: EtlSchedule\nmetadata: { name: hourly }\nspec:\n  source:\n    openaq: { locations: [2178], parameters: [pm25], apiKeySecret: { name: openaq, key: api-key } }\n  schedule: \"15 * * * *\"\n",
    )
    .await?;
    let series = format!("airq_namespace=\"{ns}\",schedule=\"hourly\"");
    let metrics = || {
        let mut text = String::new();
        airq_operator::monitoring::write_resource_metrics(&operator.ctx.stores, &mut text);
        text
    };
    airq_testenv::eventually("the schedule's gauges", Duration::from_secs(30), || async {
        let text = metrics();
        text.contains(&format!("airq_operator_etl_schedule_period_seconds{{{series}}} 3600"))
            .then_some(())
            .ok_or(text)
    })
    .await?;
    // Everything in /metrics, this text included, parses as Prometheus' text format.
    let text = airq_core::telemetry::collected();
    assert!(text.contains(&series), "{text}");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap_or_default();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }

    schedules.delete("hourly", &DeleteParams::background()).await?;
    airq_testenv::eventually("the gauges gone with the schedule", Duration::from_secs(30), || async {
        let text = metrics();
        (!text.contains(&series)).then_some(()).ok_or(text)
    })
    .await?;
    operator.stop().await;
    airq_testenv::delete_namespace(&client, &ns).await?;
    Ok(())
}

//! AdhocService → Deployment + Service + Ingress route (to the gateway) + an entry in the gateway's route table
//! (written by the Platform reconciler, which gathers every AdhocService of its namespace).

use std::collections::BTreeMap;
use std::sync::Arc;

use airq_api::adhoc::{AdhocService, AdhocServiceStatus};
use airq_api::platform::{PLATFORM_NAME, Platform};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, ContainerPort, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;

use crate::children::{self, Child, Desired, Owner};
use crate::context::Context;
use crate::error::Result;
use crate::status::{condition, event, park, refused, update};
use crate::workload::{Rollout, container_security, deployment, gateway_ingress, http_service, service_pod, tmp_mount};

/// The name of an AdhocService's Deployment, Service and Ingress.
pub fn child_name(adhoc: &str) -> String {
    format!("adhoc-{adhoc}")
}

/// The Service of the gateway, which every Ingress route points at.
pub use crate::workload::GATEWAY_SERVICE;

fn selector(owner: &Owner) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "adhoc".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), owner.name.clone()),
    ])
}

/// The objects an AdhocService wants: pure, from the resource and its namespace's Platform.
pub fn build(adhoc: &AdhocService, owner: &Owner, platform: Option<&Platform>) -> Desired {
    let name = child_name(&owner.name);
    let labels = owner.labels("adhoc");
    let spec = &adhoc.spec;
    let tcp_probe = Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String("http".to_owned()),
            host: None,
        }),
        // As for airq's own services: a moment for the process to listen before the first probe.
        initial_delay_seconds: Some(2),
        period_seconds: Some(10),
        ..Probe::default()
    };
    let container = Container {
        name: "service".to_owned(),
        image: Some(spec.image.clone()),
        command: spec.command.clone(),
        args: spec.args.clone(),
        env: if spec.env.is_empty() {
            None
        } else {
            Some(spec.env.clone())
        },
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: spec.port,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        resources: spec.resources.clone(),
        readiness_probe: Some(tcp_probe.clone()),
        liveness_probe: Some(tcp_probe),
        // Another team's image must run as a non-root user; it writes to /tmp only unless its spec says otherwise.
        security_context: Some(container_security(!spec.writable_root_filesystem)),
        volume_mounts: Some(vec![tmp_mount()]),
        ..Container::default()
    };
    let template = service_pod(labels.clone(), container, false);
    let mut children = vec![
        Child::Deployment(deployment(
            owner.meta(&name, labels.clone()),
            spec.replicas,
            selector(owner),
            template,
            Rollout::Default,
        )),
        Child::Service(http_service(owner.meta(&name, labels.clone()), selector(owner))),
    ];
    if let Some(platform) = platform.filter(|p| p.spec.ingress.enabled) {
        let host = spec.route.host.clone().or_else(|| platform.spec.ingress.host.clone());
        children.push(Child::Ingress(gateway_ingress(
            owner.meta(&name, labels),
            platform.spec.ingress.class_name.clone(),
            host,
            None,
            &spec.route.path_prefix,
        )));
    }
    Desired {
        children,
        keep: Default::default(),
    }
}

/// Whether `deployment` runs `replicas` ready pods of its current spec.
pub fn deployment_available(deployment: Option<&Deployment>) -> (bool, i32) {
    let Some(deployment) = deployment else {
        return (false, 0);
    };
    let wanted = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(status) = &deployment.status else {
        return (wanted == 0, 0);
    };
    let current = status.observed_generation >= deployment.metadata.generation;
    let available = status.available_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    (current && updated >= wanted && available >= wanted, available)
}

/// `deployment` as kube-controller-manager reports it once it has seen its spec and `ready` of its pods are updated
/// and available: what the status tests observe.
#[cfg(test)]
pub(crate) fn observed_with_ready(mut deployment: Deployment, ready: i32) -> Deployment {
    deployment.metadata.generation = Some(1);
    deployment.status = Some(k8s_openapi::api::apps::v1::DeploymentStatus {
        observed_generation: Some(1),
        available_replicas: Some(ready),
        updated_replicas: Some(ready),
        ..Default::default()
    });
    deployment
}

/// The URL a caller reaches the service at through the gateway.
fn url(adhoc: &AdhocService, namespace: &str, platform: Option<&Platform>) -> String {
    let prefix = &adhoc.spec.route.path_prefix;
    let ingress = platform.map(|p| &p.spec.ingress).filter(|i| i.enabled);
    match (adhoc.spec.route.host.as_ref(), ingress.and_then(|i| i.host.as_ref())) {
        (Some(host), _) | (None, Some(host)) => {
            let scheme = if ingress.is_some_and(|i| i.tls_secret.is_some()) {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{host}{prefix}")
        }
        (None, None) => format!("http://{GATEWAY_SERVICE}.{namespace}.svc{prefix}"),
    }
}

/// What the AdhocService reconciler observed besides the resource, for [`derive_status`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AdhocObserved<'a> {
    /// The namespace's Platform (its gateway routes to the service).
    pub platform: Option<&'a Platform>,
    /// The service's Deployment.
    pub deployment: Option<&'a Deployment>,
    /// The older AdhocService holding the same host and prefix, if any.
    pub conflict: Option<&'a str>,
}

/// The status of a valid `adhoc`, pure: `Available` from its Deployment, `Routed` from the Platform and route
/// conflicts, `Ready` when both hold; conditions keep their transition time from `previous` when their status did
/// not change.
pub fn derive_status(adhoc: &AdhocService, previous: &[Condition], observed: &AdhocObserved) -> AdhocServiceStatus {
    let generation = adhoc.metadata.generation;
    let namespace = adhoc.metadata.namespace.as_deref().unwrap_or_default();
    let (available, available_replicas) = deployment_available(observed.deployment);
    let (routed, routed_reason, routed_message) = match (observed.platform, observed.conflict) {
        (None, _) => (
            false,
            "NoPlatform",
            format!(
                "no Platform named {PLATFORM_NAME} in namespace {namespace}: the gateway that would route to this service is missing"
            ),
        ),
        (Some(_), Some(winner)) => (
            false,
            "PathConflict",
            format!(
                "AdhocService {winner} already has host and prefix {}",
                adhoc.spec.route.path_prefix
            ),
        ),
        (Some(_), None) => (
            true,
            "Routed",
            format!("the gateway routes {} here", adhoc.spec.route.path_prefix),
        ),
    };
    let pods = format!("{available_replicas} of {} pods available", adhoc.spec.replicas);
    let (ready_reason, ready_message) = if !routed {
        (routed_reason, routed_message.clone())
    } else if !available {
        ("Progressing", pods.clone())
    } else {
        (
            "Available",
            "the service is routed and its pods are available".to_owned(),
        )
    };
    AdhocServiceStatus {
        observed_generation: generation,
        conditions: vec![
            condition(
                previous,
                "Available",
                available,
                if available {
                    "MinimumReplicasAvailable"
                } else {
                    "Progressing"
                },
                pods,
                generation,
            ),
            condition(previous, "Routed", routed, routed_reason, routed_message, generation),
            condition(
                previous,
                "Ready",
                routed && available,
                ready_reason,
                ready_message,
                generation,
            ),
        ],
        available_replicas: Some(available_replicas),
        url: Some(url(adhoc, namespace, observed.platform)),
    }
}

/// Reconciles one AdhocService.
pub async fn reconcile(adhoc: Arc<AdhocService>, ctx: Arc<Context>) -> Result<Action> {
    let owner = Owner::of(adhoc.as_ref())?;
    let previous = adhoc.status.clone().unwrap_or_default();
    let previous_reason = airq_api::common::condition(&previous.conditions, "Ready").map(|c| c.reason.clone());

    if let Err(problems) = airq_api::validation::adhoc_service(&adhoc.spec) {
        // An invalid spec serves nothing: its Deployment, Service and Ingress go (the Platform drops its route), and
        // the status has no URL, rather than the last valid spec half kept.
        let changes = children::apply(&ctx, &owner, Desired::default()).await?;
        if !changes.is_empty() {
            event(&ctx, adhoc.as_ref(), false, "Removed", "Delete", changes.describe());
        }
        let extra = serde_json::json!({ "url": null, "availableReplicas": null });
        park(&ctx, adhoc.as_ref(), "InvalidSpec", problems.to_string(), extra).await?;
        // Nothing will change until the object does.
        return Ok(Action::await_change());
    }

    let platform = ctx
        .stores
        .platforms
        .get(&ObjectRef::new(PLATFORM_NAME).within(&owner.namespace));
    let changes = match children::apply(&ctx, &owner, build(&adhoc, &owner, platform.as_deref())).await {
        Ok(changes) => changes,
        Err(error) => return Err(refused(&ctx, adhoc.as_ref(), error).await),
    };
    if !changes.is_empty() {
        event(&ctx, adhoc.as_ref(), false, "Applied", "Apply", changes.describe());
    }

    let deployment = ctx
        .stores
        .deployments
        .get(&ObjectRef::new(&child_name(&owner.name)).within(&owner.namespace));
    let peers = ctx
        .stores
        .adhoc_services
        .state()
        .into_iter()
        .filter(|a| a.metadata.namespace.as_deref() == Some(owner.namespace.as_str()))
        .collect::<Vec<_>>();
    let conflict = airq_api::routes::conflict_winner(&adhoc, &peers).map(ResourceExt::name_any);
    let observed = AdhocObserved {
        platform: platform.as_deref(),
        deployment: deployment.as_deref(),
        conflict: conflict.as_deref(),
    };
    let status = derive_status(&adhoc, &previous.conditions, &observed);
    // Not routed: one Warning per reason (no Platform, a path conflict).
    if let Some(unrouted) = airq_api::common::condition(&status.conditions, "Routed").filter(|c| c.status == "False")
        && previous_reason.as_deref() != Some(unrouted.reason.as_str())
    {
        let note = unrouted.message.clone();
        event(&ctx, adhoc.as_ref(), true, &unrouted.reason, "Route", note);
    }
    update(&ctx, adhoc.as_ref(), adhoc.status.as_ref(), status).await?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adhoc(yaml: &str) -> AdhocService {
        serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("bad test YAML: {e}"))
    }

    fn owner() -> Owner {
        Owner {
            kind: "AdhocService",
            api_version: "airq.dev/v1alpha1".to_owned(),
            name: "reports".to_owned(),
            namespace: "airq".to_owned(),
            uid: "uid-1".to_owned(),
        }
    }

    const REPORTS: &str = r#"
apiVersion: airq.dev/v1alpha1
kind: AdhocService
metadata: { name: reports, namespace: airq, uid: uid-1 }
spec:
  image: registry.example/reports:1.2
  port: 9000
  replicas: 3
  env: [{ name: MODE, value: fast }]
  route: { pathPrefix: /adhoc/reports/, timeoutSeconds: 10 }
  access: { groups: [analysts] }
"#;

    #[test]
    fn builds_a_deployment_and_a_service_owned_by_the_resource() {
        let desired = build(&adhoc(REPORTS), &owner(), None);
        let [Child::Deployment(deployment), Child::Service(service)] = desired.children.as_slice() else {
            panic!("expected a Deployment and a Service, got {:?}", desired.children);
        };
        assert_eq!(deployment.metadata.name.as_deref(), Some("adhoc-reports"));
        let owner_ref = &deployment.metadata.owner_references.as_deref().unwrap_or_default()[0];
        assert_eq!((owner_ref.uid.as_str(), owner_ref.controller), ("uid-1", Some(true)));
        let spec = deployment.spec.as_ref().map(|s| (s.replicas, s.template.spec.as_ref()));
        let Some((replicas, Some(pod))) = spec else {
            panic!("no pod spec")
        };
        assert_eq!(replicas, Some(3));
        let container = &pod.containers[0];
        assert_eq!(container.image.as_deref(), Some("registry.example/reports:1.2"));
        assert_eq!(container.ports.as_deref().unwrap_or_default()[0].container_port, 9000);
        assert_eq!(
            pod.security_context.as_ref().and_then(|s| s.run_as_non_root),
            Some(true)
        );
        let service_port = &service.spec.as_ref().and_then(|s| s.ports.clone()).unwrap_or_default()[0];
        assert_eq!(service_port.port, 80);
        assert_eq!(
            service
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app.kubernetes.io/managed-by"))
                .map(String::as_str),
            Some("airq-operator")
        );
    }

    #[test]
    fn with_a_platform_an_ingress_routes_the_prefix_to_the_gateway() {
        let platform: Platform = serde_saphyr::from_str(
            "apiVersion: airq.dev/v1alpha1\nkind: Platform\nmetadata: { name: airq, namespace: airq }\nspec:\n  ingress: { host: airq.example, className: nginx }\n",
        )
        .unwrap_or_else(|e| panic!("bad test YAML: {e}"));
        let desired = build(&adhoc(REPORTS), &owner(), Some(&platform));
        let Some(Child::Ingress(ingress)) = desired.children.iter().find(|c| matches!(c, Child::Ingress(_))) else {
            panic!("no Ingress");
        };
        let spec = ingress.spec.as_ref().unwrap_or_else(|| panic!("no spec"));
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        let rule = &spec.rules.as_deref().unwrap_or_default()[0];
        assert_eq!(rule.host.as_deref(), Some("airq.example"));
        let path = &rule.http.as_ref().unwrap_or_else(|| panic!("no http")).paths[0];
        assert_eq!(path.path.as_deref(), Some("/adhoc/reports/"));
        assert_eq!(
            path.backend.service.as_ref().map(|s| s.name.as_str()),
            Some(GATEWAY_SERVICE)
        );
        assert_eq!(
            url(&adhoc(REPORTS), "airq", Some(&platform)),
            "http://airq.example/adhoc/reports/"
        );
    }

    fn ready(status: &AdhocServiceStatus) -> (String, String, String) {
        let c = airq_api::common::condition(&status.conditions, "Ready").unwrap_or_else(|| panic!("no Ready"));
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    fn platform() -> Platform {
        serde_saphyr::from_str(
            "apiVersion: airq.dev/v1alpha1\nkind: Platform\nmetadata: { name: airq, namespace: airq }\nspec: {}\n",
        )
        .unwrap_or_else(|e| panic!("bad test YAML: {e}"))
    }

    fn deployment_with(ready: i32) -> Deployment {
        let desired = build(&adhoc(REPORTS), &owner(), None);
        let Some(Child::Deployment(deployment)) = desired.children.into_iter().next() else {
            panic!("no Deployment")
        };
        observed_with_ready(deployment, ready)
    }

    #[test]
    fn status_without_a_platform_or_with_a_contested_prefix_is_not_routed() {
        let adhoc = adhoc(REPORTS);
        let status = derive_status(&adhoc, &[], &AdhocObserved::default());
        let (value, reason, message) = ready(&status);
        assert_eq!((value.as_str(), reason.as_str()), ("False", "NoPlatform"));
        assert!(
            message.contains("no Platform named airq in namespace airq"),
            "{message}"
        );
        assert_eq!(
            status.url.as_deref(),
            Some("http://airq-gateway.airq.svc/adhoc/reports/")
        );

        let platform = platform();
        let contested = AdhocObserved {
            platform: Some(&platform),
            conflict: Some("older"),
            ..AdhocObserved::default()
        };
        let status = derive_status(&adhoc, &status.conditions, &contested);
        assert_eq!(
            ready(&status),
            (
                "False".to_owned(),
                "PathConflict".to_owned(),
                "AdhocService older already has host and prefix /adhoc/reports/".to_owned()
            )
        );
    }

    #[test]
    fn status_is_ready_when_routed_and_every_pod_is_available() {
        let adhoc = adhoc(REPORTS);
        let platform = platform();
        let starting = deployment_with(1);
        let observed = AdhocObserved {
            platform: Some(&platform),
            deployment: Some(&starting),
            conflict: None,
        };
        let status = derive_status(&adhoc, &[], &observed);
        assert_eq!(
            ready(&status),
            (
                "False".to_owned(),
                "Progressing".to_owned(),
                "1 of 3 pods available".to_owned()
            )
        );
        assert_eq!(status.available_replicas, Some(1));
        let routed = airq_api::common::condition(&status.conditions, "Routed").map(|c| c.status.clone());
        assert_eq!(routed.as_deref(), Some("True"));

        let up = deployment_with(3);
        let observed = AdhocObserved {
            deployment: Some(&up),
            ..observed
        };
        let first = derive_status(&adhoc, &status.conditions, &observed);
        assert_eq!(ready(&first).0, "True");
        assert_eq!(derive_status(&adhoc, &first.conditions, &observed), first);
    }
}

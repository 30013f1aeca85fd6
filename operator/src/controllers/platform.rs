//! Platform → the core services' Deployments and Services (gateway, front, predictive, ETL), the gateway's route
//! table (a ConfigMap gathering every AdhocService of the namespace), and the Ingress for the dashboard and the API.

use std::collections::BTreeMap;
use std::sync::Arc;

use airq_api::AdhocService;
use airq_api::gateway::{ROUTES_CONFIG_MAP, ROUTES_KEY, RouteTable};
use airq_api::platform::{Component, PLATFORM_NAME, Platform, PlatformStatus};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ConfigMapVolumeSource, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;

use crate::children::{self, Child, Desired, Owner};
use crate::context::Context;
use crate::controllers::adhoc::deployment_available;
use crate::error::{Error, Result};
use crate::monitoring::METRICS_LABEL;
use crate::status::{condition, event, park, refused, update};
use crate::workload::{
    HTTP_PORT, OPS_PORT, Rollout, database_env, deployment, disruption_budget, env, gateway_ingress, metrics_service,
    pod_template, probe_on_ops_port, secret_env, service_container, tmp_mount, tmp_volume,
};

/// The core services, in the order they are built.
pub const COMPONENTS: [&str; 4] = ["gateway", "front", "predictive", "etl"];

/// The key of the database Secret the gateway's key hashing secret is read from, unless the Platform names another.
pub const DEFAULT_KEY_HASH_KEY: &str = "keyHashSecret";

/// The Secret and key holding the gateway's key hashing secret.
pub fn key_hash_secret(platform: &Platform) -> (&str, &str) {
    match &platform.spec.key_hash_secret {
        Some(secret) => (&secret.name, &secret.key),
        None => (&platform.spec.database.secret_name, DEFAULT_KEY_HASH_KEY),
    }
}

/// Where the gateway reads its route table.
pub const ROUTES_MOUNT: &str = "/etc/airq/gateway";

fn component<'a>(platform: &'a Platform, name: &str) -> &'a Component {
    match name {
        "gateway" => &platform.spec.gateway,
        "front" => &platform.spec.front,
        "predictive" => &platform.spec.predictive,
        _ => &platform.spec.etl,
    }
}

fn selector(owner: &Owner, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), format!("airq-{component}")),
        ("app.kubernetes.io/instance".to_owned(), owner.name.clone()),
    ])
}

/// The route table of `platform`'s namespace: every route leads to a Service of that namespace.
pub fn route_table(platform: &Platform, adhoc_services: &[Arc<AdhocService>]) -> RouteTable {
    let namespace = platform.namespace().unwrap_or_default();
    airq_api::routes::table(platform, adhoc_services, |upstream| {
        Some(upstream.in_cluster(&namespace))
    })
}

/// The objects a Platform wants: pure, from the resource and the AdhocServices of its namespace.
pub fn build(platform: &Platform, owner: &Owner, table: &RouteTable) -> Result<Desired> {
    let spec = &platform.spec;
    let mut children = Vec::new();

    // A table that cannot be written is an error, never an empty table (which would close every route).
    let routes_yaml = serde_saphyr::to_string(table).map_err(|e| Error::RouteTable(e.to_string()))?;
    children.push(Child::ConfigMap(ConfigMap {
        metadata: owner.meta(ROUTES_CONFIG_MAP, owner.labels("airq-gateway")),
        data: Some(BTreeMap::from([(ROUTES_KEY.to_owned(), routes_yaml)])),
        ..ConfigMap::default()
    }));

    for name in COMPONENTS {
        let part = component(platform, name);
        let service_name = format!("airq-{name}");
        let labels = owner.labels(&service_name);
        let mut environment = vec![env("AIRQ_LOG_FORMAT", "json"), database_env(&spec.database)];
        let mut mounts = vec![tmp_mount()];
        let mut volumes = vec![tmp_volume()];
        if name == "front" {
            // The dashboard's forecasts come from the predictive service, inside the namespace.
            let namespace = platform.metadata.namespace.as_deref().unwrap_or_default();
            environment.push(env(
                "AIRQ_PREDICTIVE_URL",
                airq_api::routes::service_url("airq-predictive", namespace),
            ));
        }
        if name == "gateway" {
            environment.push(env("AIRQ_OPS_LISTEN", format!("0.0.0.0:{OPS_PORT}")));
            // The route table is a mounted file: the gateway sees changes without a restart.
            environment.push(env("AIRQ_ROUTES_FILE", format!("{ROUTES_MOUNT}/{ROUTES_KEY}")));
            if let Some(secret) = &spec.admin_key_secret {
                environment.push(secret_env("AIRQ_ADMIN_KEY", &secret.name, &secret.key));
            }
            let (hash_secret, hash_key) = key_hash_secret(platform);
            environment.push(secret_env("AIRQ_KEY_HASH_SECRET", hash_secret, hash_key));
            if spec.ingress.enabled {
                // The ingress controller appends the client's address: rate limits per address need it.
                environment.push(env("AIRQ_TRUST_FORWARDED_FOR", "true"));
            }
            mounts.push(VolumeMount {
                name: "routes".to_owned(),
                mount_path: ROUTES_MOUNT.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
            volumes.push(Volume {
                name: "routes".to_owned(),
                config_map: Some(ConfigMapVolumeSource {
                    name: ROUTES_CONFIG_MAP.to_owned(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            });
        }
        let mut container = service_container(
            name,
            format!("{}/{service_name}:{}", spec.registry, spec.version),
            HTTP_PORT,
            environment,
            part.resources.clone(),
            true,
        );
        container.image_pull_policy = Some(spec.image_pull_policy.clone());
        container.volume_mounts = Some(mounts);
        if name == "gateway" {
            // Probes and Prometheus on the operational port; callers reach only the public one.
            probe_on_ops_port(&mut container);
        }
        let template = pod_template(
            labels.clone(),
            vec![container],
            &Default::default(),
            None,
            volumes,
            true,
        );
        if let Some(budget) = disruption_budget(
            owner,
            &service_name,
            labels.clone(),
            selector(owner, name),
            part.replicas,
        ) {
            children.push(Child::PodDisruptionBudget(budget));
        }
        children.push(Child::Deployment(deployment(
            owner.meta(&service_name, labels.clone()),
            part.replicas,
            selector(owner, name),
            template,
            Rollout::KeepServing,
        )));
        // Scraped through the Platform's ServiceMonitor, or its scrape annotations (crate::monitoring).
        let mut service_labels = labels;
        service_labels.insert(METRICS_LABEL.0.to_owned(), METRICS_LABEL.1.to_owned());
        children.push(Child::Service(metrics_service(
            owner.meta(&service_name, service_labels),
            selector(owner, name),
            if name == "gateway" { "metrics" } else { "http" },
        )));
    }

    if spec.ingress.enabled {
        let ingress = &spec.ingress;
        children.push(Child::Ingress(gateway_ingress(
            owner.meta(PLATFORM_NAME, owner.labels("airq-gateway")),
            ingress.class_name.clone(),
            ingress.host.clone(),
            ingress.tls_secret.clone(),
            "/",
        )));
    }
    Ok(Desired {
        children,
        keep: Default::default(),
    })
}

fn url(platform: &Platform, namespace: &str) -> String {
    let ingress = &platform.spec.ingress;
    match (&ingress.host, ingress.enabled) {
        (Some(host), true) => {
            let scheme = if ingress.tls_secret.is_some() { "https" } else { "http" };
            format!("{scheme}://{host}/")
        }
        _ => format!("http://airq-gateway.{namespace}.svc/"),
    }
}

/// The status of a valid `platform`, pure: `Ready` when the Deployment of every core service (`deployments`, in the
/// order of `COMPONENTS`) is available; `routes` is the size of its route table.
pub fn derive_status(
    platform: &Platform,
    previous: &[Condition],
    deployments: [Option<&Deployment>; COMPONENTS.len()],
    routes: usize,
) -> PlatformStatus {
    let generation = platform.metadata.generation;
    let waiting: Vec<String> = COMPONENTS
        .iter()
        .zip(deployments)
        .filter(|(_, deployment)| !deployment_available(*deployment).0)
        .map(|(name, _)| format!("airq-{name}"))
        .collect();
    let ready = waiting.is_empty();
    let (reason, message) = if ready {
        ("Available", "every core service is available".to_owned())
    } else {
        ("Progressing", format!("waiting for {}", waiting.join(", ")))
    };
    PlatformStatus {
        observed_generation: generation,
        conditions: vec![condition(previous, "Ready", ready, reason, message, generation)],
        routes: Some(i32::try_from(routes).unwrap_or(i32::MAX)),
        url: Some(url(
            platform,
            platform.metadata.namespace.as_deref().unwrap_or_default(),
        )),
    }
}

/// Reconciles the Platform of a namespace.
pub async fn reconcile(platform: Arc<Platform>, ctx: Arc<Context>) -> Result<Action> {
    let owner = Owner::of(platform.as_ref())?;
    let previous = platform.status.clone().unwrap_or_default();

    let mut missing = Vec::new();
    if !ctx
        .stores
        .secret_exists(&owner.namespace, &platform.spec.database.secret_name)
    {
        missing.push(platform.spec.database.secret_name.clone());
    }
    if let Some(secret) = &platform.spec.admin_key_secret
        && !ctx.stores.secret_exists(&owner.namespace, &secret.name)
    {
        missing.push(secret.name.clone());
    }
    if let Some(secret) = &platform.spec.key_hash_secret
        && !ctx.stores.secret_exists(&owner.namespace, &secret.name)
    {
        missing.push(secret.name.clone());
    }
    if owner.name != PLATFORM_NAME || !missing.is_empty() {
        let (reason, message) = if owner.name != PLATFORM_NAME {
            ("InvalidName", format!("a Platform must be named {PLATFORM_NAME}"))
        } else {
            (
                "SecretNotFound",
                format!(
                    "Secret {} not found in namespace {}",
                    missing.join(", "),
                    owner.namespace
                ),
            )
        };
        park(&ctx, platform.as_ref(), reason, message, serde_json::json!({})).await?;
        return Ok(Action::await_change());
    }

    let adhoc_services: Vec<_> = ctx
        .stores
        .adhoc_services
        .state()
        .into_iter()
        .filter(|a| a.namespace().as_deref() == Some(owner.namespace.as_str()))
        .collect();
    // Built once: the Platform's ConfigMap holds it, its status counts its routes.
    let table = route_table(&platform, &adhoc_services);
    let mut desired = build(&platform, &owner, &table)?;
    let monitoring = ctx.monitoring_apis().await;
    crate::monitoring::annotate_for_scraping(&mut desired.children, monitoring);
    let routes = table.routes.len();
    let mut changes = match children::apply(&ctx, &owner, desired).await {
        Ok(changes) => changes,
        Err(error) => return Err(refused(&ctx, platform.as_ref(), error).await),
    };
    changes
        .applied
        .extend(crate::monitoring::apply(&ctx, &owner, monitoring).await?);
    if !changes.is_empty() {
        event(&ctx, platform.as_ref(), false, "Applied", "Apply", changes.describe());
    }

    let deployments = COMPONENTS.map(|name| {
        ctx.stores
            .deployments
            .get(&ObjectRef::new(&format!("airq-{name}")).within(&owner.namespace))
    });
    let status = derive_status(
        &platform,
        &previous.conditions,
        deployments.each_ref().map(Option::as_deref),
        routes,
    );
    update(&ctx, platform.as_ref(), platform.status.as_ref(), status).await?;
    if monitoring.service_monitors && monitoring.prometheus_rules {
        Ok(Action::await_change())
    } else {
        // Looks again for the Prometheus Operator's API, which may be installed later.
        Ok(Action::requeue(crate::monitoring::recheck(&ctx)))
    }
}

/// The Platform a change to an AdhocService concerns: its namespace's.
pub fn platform_of(adhoc: &AdhocService) -> Option<ObjectRef<Platform>> {
    adhoc
        .namespace()
        .map(|namespace| ObjectRef::new(PLATFORM_NAME).within(&namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner {
            kind: "Platform",
            api_version: "airq.dev/v1alpha1".to_owned(),
            name: "airq".to_owned(),
            namespace: "prod".to_owned(),
            uid: "uid-p".to_owned(),
        }
    }

    fn platform(yaml_spec: &str) -> Platform {
        serde_saphyr::from_str(&format!(
            "apiVersion: airq.dev/v1alpha1\nkind: Platform\nmetadata: {{ name: airq, namespace: prod, uid: uid-p }}\nspec:\n{yaml_spec}"
        ))
        .unwrap()
    }

    fn adhoc(name: &str, prefix: &str, created: &str) -> Arc<AdhocService> {
        Arc::new(
            serde_saphyr::from_str(&format!(
                "apiVersion: airq.dev/v1alpha1\nkind: AdhocService\nmetadata: {{ name: {name}, namespace: prod, creationTimestamp: \"{created}\" }}\nspec:\n  image: x/y:1\n  route: {{ pathPrefix: {prefix} }}\n  access: {{ public: true }}\n",
            ))
            .unwrap(),
        )
    }

    #[test]
    fn builds_every_core_service_with_the_database_from_its_secret() {
        let platform = platform("  version: 1.2.3\n  gateway: { replicas: 3 }\n");
        let desired = build(&platform, &owner(), &route_table(&platform, &[])).unwrap();
        let deployments: Vec<&Deployment> = desired
            .children
            .iter()
            .filter_map(|c| if let Child::Deployment(d) = c { Some(d) } else { None })
            .collect();
        assert_eq!(deployments.len(), 4);
        let gateway = deployments
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some("airq-gateway"))
            .unwrap();
        let spec = gateway.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        let container = &spec.template.spec.as_ref().unwrap().containers[0];
        assert_eq!(container.image.as_deref(), Some("ghcr.io/airq-dev/airq-gateway:1.2.3"));
        let database = container
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "AIRQ_DATABASE_URL")
            .unwrap();
        assert!(database.value.is_none(), "the URL must come from the Secret");
        let from = database
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .unwrap();
        assert_eq!((from.name.as_str(), from.key.as_str()), ("airq-database", "url"));
        // The gateway hashes API keys with a secret from a Secret (by default the database Secret's keyHashSecret),
        // and trusts X-Forwarded-For because the Ingress sits in front of it.
        let env = container.env.as_ref().unwrap();
        let hash = env.iter().find(|e| e.name == "AIRQ_KEY_HASH_SECRET").unwrap();
        let from = hash
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .unwrap();
        assert_eq!(
            (from.name.as_str(), from.key.as_str()),
            ("airq-database", "keyHashSecret")
        );
        assert!(
            env.iter()
                .any(|e| e.name == "AIRQ_TRUST_FORWARDED_FOR" && e.value.as_deref() == Some("true"))
        );
        let front = deployments
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some("airq-front"))
            .unwrap();
        let front_env = front.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0]
            .env
            .as_ref()
            .unwrap();
        assert!(front_env.iter().any(|e| {
            e.name == "AIRQ_PREDICTIVE_URL"
                && e.value
                    .as_deref()
                    .is_some_and(|v| v.starts_with("http://airq-predictive."))
        }));
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(
            desired
                .children
                .iter()
                .filter(|c| matches!(c, Child::Service(_)))
                .count(),
            4
        );
        assert_eq!(
            desired
                .children
                .iter()
                .filter(|c| matches!(c, Child::Ingress(_)))
                .count(),
            1
        );
    }

    #[test]
    fn the_route_table_lists_core_routes_and_adhoc_services_with_the_older_one_winning_a_conflict() {
        let services = [
            adhoc("reports", "/adhoc/reports/", "2026-01-01T00:00:00Z"),
            adhoc("reports-copy", "/adhoc/reports", "2026-02-01T00:00:00Z"),
            adhoc("maps", "/adhoc/maps/", "2026-03-01T00:00:00Z"),
        ];
        let platform = platform("  ingress: { enabled: false }\n");
        let desired = build(&platform, &owner(), &route_table(&platform, &services)).unwrap();
        let Some(Child::ConfigMap(config)) = desired.children.first() else {
            panic!("no ConfigMap first")
        };
        let text = &config.data.as_ref().unwrap()[ROUTES_KEY];
        let table: RouteTable = serde_saphyr::from_str(text).unwrap();
        let ids: Vec<&str> = table.routes.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["predictive", "adhoc/reports", "adhoc/maps", "etl", "front"]);
        let reports = &table.routes[1];
        assert_eq!(reports.upstream, "http://adhoc-reports.prod.svc:80");
        assert!(desired.children.iter().all(|c| !matches!(c, Child::Ingress(_))));
    }

    /// The Deployments `build` makes for the core services, each with `missing[i]` of its pods not available.
    fn core_deployments(platform: &Platform, missing: [i32; COMPONENTS.len()]) -> Vec<Deployment> {
        let desired = build(platform, &owner(), &route_table(platform, &[])).unwrap_or_else(|e| panic!("{e}"));
        COMPONENTS
            .iter()
            .zip(missing)
            .map(|(name, missing)| {
                let deployment = desired
                    .children
                    .iter()
                    .find_map(|c| match c {
                        Child::Deployment(d) if d.metadata.name.as_deref() == Some(&format!("airq-{name}")) => {
                            Some(d.clone())
                        }
                        _ => None,
                    })
                    .unwrap_or_else(|| panic!("no Deployment for {name}"));
                let ready = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1) - missing;
                crate::controllers::adhoc::observed_with_ready(deployment, ready)
            })
            .collect()
    }

    #[test]
    fn status_names_the_core_services_it_waits_for() {
        let platform = platform("  database: { secretName: db }\n");
        let ready_of = |status: &PlatformStatus| {
            let c = airq_api::common::condition(&status.conditions, "Ready").unwrap_or_else(|| panic!("no Ready"));
            (c.status.clone(), c.reason.clone(), c.message.clone())
        };
        let nothing = derive_status(&platform, &[], [None; COMPONENTS.len()], 3);
        assert_eq!(
            ready_of(&nothing),
            (
                "False".to_owned(),
                "Progressing".to_owned(),
                "waiting for airq-gateway, airq-front, airq-predictive, airq-etl".to_owned()
            )
        );
        assert_eq!(nothing.routes, Some(3));
        assert_eq!(nothing.url.as_deref(), Some("http://airq-gateway.prod.svc/"));
        let some = core_deployments(&platform, [0, 1, 1, 0]);
        let found = [0, 1, 2, 3].map(|i| some.get(i));
        let partly = derive_status(&platform, &nothing.conditions, found, 3);
        assert_eq!(ready_of(&partly).2, "waiting for airq-front, airq-predictive");
        let all = core_deployments(&platform, [0; COMPONENTS.len()]);
        let found = [0, 1, 2, 3].map(|i| all.get(i));
        let up = derive_status(&platform, &partly.conditions, found, 3);
        assert_eq!(
            ready_of(&up),
            (
                "True".to_owned(),
                "Available".to_owned(),
                "every core service is available".to_owned()
            )
        );
        assert_eq!(derive_status(&platform, &up.conditions, found, 3), up);
    }
}

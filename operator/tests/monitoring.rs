//! Registration with Prometheus, both ways, on the real control plane: without the Prometheus Operator's CRDs the
//! Platform's metrics Services carry scrape annotations and nothing else is created; once the released
//! ServiceMonitor and PrometheusRule CRDs are installed (Prometheus Operator v0.85.0, from its Go module), the operator
//! notices on its next check and creates the Platform's ServiceMonitor and PrometheusRule — accepted by the CRDs'
//! schemas, owned by the Platform — and drops the annotations. The CRDs are removed again at the end.

mod common;

use std::time::Duration;

use airq_api::Platform;
use airq_operator::Operator;
use common::{args, create, install_crds, wait_for, wait_gone};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Resource, ResourceExt};

const CRDS: [&str; 2] = [
    "servicemonitors.monitoring.coreos.com",
    "prometheusrules.monitoring.coreos.com",
];

async fn remove_prometheus_crds(crds: &Api<CustomResourceDefinition>) -> anyhow::Result<()> {
    for name in CRDS {
        if crds.get_opt(name).await?.is_some() {
            crds.delete(name, &DeleteParams::default()).await?;
            wait_gone(crds, name, "the Prometheus Operator CRD").await?;
        }
    }
    Ok(())
}

fn monitoring_api(client: &kube::Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("monitoring.coreos.com", "v1", kind));
    Api::namespaced_with(client.clone(), ns, &resource)
}

fn scrape_annotation(service: &Service) -> Option<String> {
    service.annotations().get("prometheus.io/scrape").cloned()
}

#[tokio::test]
async fn service_monitor_and_rules_only_where_the_cluster_has_their_crds() -> anyhow::Result<()> {
    let client = airq_testenv::kube_client().await?;
    install_crds(&client).await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    remove_prometheus_crds(&crds).await?;
    let ns = airq_testenv::namespace(&client).await?;
    let mut operator_args = args(&ns).await?;
    operator_args.monitoring_recheck_seconds = 1;
    let operator = Operator::start(client.clone(), operator_args).await?;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);

    // Without the CRDs: scrape annotations on the metrics Services.
    let database = common::pod_database(&client, &ns).await?;
    let spec = common::platform_spec("  ingress: { enabled: false }\n").await?;
    let platform: Platform = create(
        &client,
        &ns,
        &format!("apiVersion: airq.dev/v1alpha1\nkind: Platform\nmetadata: {{ name: airq }}\nspec:\n{spec}"),
    )
    .await?;
    for name in ["airq-gateway", "airq-front", "airq-predictive", "airq-etl"] {
        let service = wait_for(&services, name, "the Service", 30, |_| Ok(())).await?;
        assert_eq!(scrape_annotation(&service).as_deref(), Some("true"), "{name}");
        // The gateway serves its metrics on its operational port, apart from the callers'.
        let port = if name == "airq-gateway" { "9090" } else { "8080" };
        assert_eq!(service.annotations()["prometheus.io/port"], port, "{name}");
        assert_eq!(service.labels()["airq.dev/metrics"], "true");
    }
    assert!(
        client
            .list_api_group_resources("monitoring.coreos.com/v1")
            .await
            .is_err(),
        "the cluster serves monitoring.coreos.com/v1 before the test installs it"
    );

    // The released CRDs installed: the operator registers the platform on its next check.
    for path in airq_testenv::tools::prometheus_operator_crds()? {
        let text = std::fs::read_to_string(&path)?;
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&text)?;
        let name = crd.name_any();
        crds.patch(&name, &PatchParams::apply("airq-tests").force(), &Patch::Apply(&crd))
            .await?;
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await??;
    }
    let registered = async {
        let monitors = monitoring_api(&client, &ns, "ServiceMonitor");
        let monitor = wait_for(&monitors, "airq", "the ServiceMonitor", 30, |_| Ok(())).await?;
        let rules = monitoring_api(&client, &ns, "PrometheusRule");
        let rule = wait_for(&rules, "airq", "the PrometheusRule", 30, |_| Ok(())).await?;
        anyhow::Ok((monitor, rule))
    };
    let (monitor, rule) = registered.await?;
    let uid = platform.meta().uid.clone().unwrap_or_default();
    for object in [&monitor, &rule] {
        assert!(
            object
                .owner_references()
                .iter()
                .any(|r| r.uid == uid && r.controller == Some(true)),
            "owned by the Platform: {:?}",
            object.metadata
        );
    }
    assert_eq!(monitor.data["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(
        monitor.data["spec"]["selector"]["matchLabels"]["airq.dev/metrics"],
        "true"
    );
    assert_eq!(monitor.data["spec"]["namespaceSelector"]["matchNames"][0], ns.as_str());
    let alerts: Vec<String> = rule.data["spec"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|rule| rule["alert"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        alerts,
        [
            "AirqEtlRunFailed",
            "AirqEtlRunLate",
            "AirqModelTrainingFailed",
            "AirqForecastErrorAnomalous",
            "AirqGatewayErrorRate",
            "AirqGatewayLatency",
            "AirqOperatorReconcileErrors"
        ]
    );
    // Scraped through the ServiceMonitor now: the annotations are gone.
    wait_for(
        &services,
        "airq-gateway",
        "no scrape annotations",
        30,
        |service| match scrape_annotation(service) {
            None => Ok(()),
            Some(value) => Err(format!("prometheus.io/scrape: {value}")),
        },
    )
    .await?;

    // Nothing changed: nothing is written again.
    let version = monitor.resource_version();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = monitoring_api(&client, &ns, "ServiceMonitor").get("airq").await?;
    assert_eq!(again.resource_version(), version);

    operator.stop().await;
    remove_prometheus_crds(&crds).await?;
    database.test.remove().await?;
    airq_testenv::delete_namespace(&client, &ns).await?;
    Ok(())
}

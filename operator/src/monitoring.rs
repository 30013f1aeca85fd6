//! Registration with Prometheus. When the cluster serves the Prometheus Operator's API (`monitoring.coreos.com/v1`),
//! each Platform gets a ServiceMonitor selecting every Service the operator runs that serves metrics (the core
//! services and each model's server: label [`METRICS_LABEL`]) and a PrometheusRule with the platform's alerts.
//! Without that API, those Services carry the `prometheus.io/*` scrape annotations instead. The API is looked up
//! again every `--monitoring-recheck-seconds`, so installing the Prometheus Operator later is noticed.
//!
//! The operator also exports, per resource, the gauges the ETL and training alerts need (label `airq_namespace`, so
//! that it does not clash with the `namespace` Prometheus gives the operator's own target).

use std::collections::BTreeMap;
use std::time::Duration;

use airq_api::etl::LoadRunStatus;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crate::children::{Child, HASH_ANNOTATION, MANAGER, Owner, with_hash};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::workload::{HTTP_PORT, OPS_PORT};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The label of a Service whose pods serve `/metrics` on the Service's port named `metrics`.
pub const METRICS_LABEL: (&str, &str) = ("airq.dev/metrics", "true");
/// The Prometheus Operator's API group and version.
pub const GROUP: &str = "monitoring.coreos.com";
pub const VERSION: &str = "v1";
/// The name of the Platform's ServiceMonitor and PrometheusRule.
pub const NAME: &str = "airq";

/// Which of the Prometheus Operator's kinds the cluster serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Apis {
    pub service_monitors: bool,
    pub prometheus_rules: bool,
}

/// Asks the API server which of the kinds it serves (a discovery request: no permission needed).
pub async fn discover(client: &kube::Client) -> Result<Apis, kube::Error> {
    match client.list_api_group_resources(&format!("{GROUP}/{VERSION}")).await {
        Ok(list) => Ok(Apis {
            service_monitors: list.resources.iter().any(|r| r.name == "servicemonitors"),
            prometheus_rules: list.resources.iter().any(|r| r.name == "prometheusrules"),
        }),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Apis::default()),
        Err(e) => Err(e),
    }
}

/// How often the cluster is asked again, and how soon a Platform is reconciled again while the API is missing.
pub fn recheck(ctx: &Context) -> Duration {
    Duration::from_secs(ctx.args.monitoring_recheck_seconds.max(1))
}

/// Adds the `prometheus.io/*` scrape annotations to the Services labelled [`METRICS_LABEL`], for a cluster without
/// ServiceMonitors (Prometheus' usual `kubernetes-service-endpoints` job reads them).
pub fn annotate_for_scraping(children: &mut [Child], apis: Apis) {
    if apis.service_monitors {
        return;
    }
    for child in children {
        if let Child::Service(service) = child
            && service
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.get(METRICS_LABEL.0).map(String::as_str) == Some(METRICS_LABEL.1))
        {
            // The pods' port (what Prometheus' endpoints job scrapes): the gateway's operational port, or `http`.
            let on_ops_port = service
                .spec
                .as_ref()
                .and_then(|s| s.ports.as_ref())
                .into_iter()
                .flatten()
                .any(|p| {
                    p.name.as_deref() == Some("metrics")
                        && p.target_port == Some(IntOrString::String("metrics".to_owned()))
                });
            let port = if on_ops_port { OPS_PORT } else { HTTP_PORT };
            service.metadata.annotations.get_or_insert_with(BTreeMap::new).extend([
                ("prometheus.io/scrape".to_owned(), "true".to_owned()),
                ("prometheus.io/port".to_owned(), port.to_string()),
                ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
            ]);
        }
    }
}

fn resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(GROUP, VERSION, kind))
}

fn object(owner: &Owner, kind: &str, spec: serde_json::Value) -> serde_json::Value {
    let meta = owner.meta(NAME, owner.labels("airq"));
    json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": kind,
        "metadata": meta,
        "spec": spec,
    })
}

/// The ServiceMonitor of the Platform `owner`: every metrics Service of its namespace, every 30 s.
pub fn service_monitor(owner: &Owner) -> serde_json::Value {
    object(
        owner,
        "ServiceMonitor",
        json!({
            "selector": { "matchLabels": {
                METRICS_LABEL.0: METRICS_LABEL.1,
                "app.kubernetes.io/part-of": "airq",
            }},
            "namespaceSelector": { "matchNames": [owner.namespace] },
            "endpoints": [{ "port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s" }],
            "targetLabels": ["app.kubernetes.io/name"],
        }),
    )
}

fn alert(name: &str, expr: String, wait: &str, severity: &str, summary: &str, description: &str) -> serde_json::Value {
    json!({
        "alert": name,
        "expr": expr,
        "for": wait,
        "labels": { "severity": severity, "platform": "airq" },
        "annotations": { "summary": summary, "description": description },
    })
}

/// The PrometheusRule of the Platform `owner`: the platform's alerts, each scoped to its namespace.
pub fn prometheus_rule(owner: &Owner) -> serde_json::Value {
    let ns = &owner.namespace;
    let gateway = format!("namespace=\"{ns}\",service=\"airq-gateway\"");
    let resources = format!("airq_namespace=\"{ns}\"");
    object(
        owner,
        "PrometheusRule",
        json!({ "groups": [
            { "name": "airq.etl", "rules": [
                alert(
                    "AirqEtlRunFailed",
                    format!("max by (airq_namespace, schedule) (airq_operator_etl_last_run_failed{{{resources}}}) == 1"),
                    "0m",
                    "warning",
                    "The last ETL run of {{ $labels.schedule }} failed",
                    "EtlSchedule {{ $labels.airq_namespace }}/{{ $labels.schedule }}: its last load Job failed; \
                     kubectl describe etlschedule {{ $labels.schedule }} shows why.",
                ),
                alert(
                    "AirqEtlRunLate",
                    format!(
                        "time() - max by (airq_namespace, schedule) (airq_operator_etl_last_success_timestamp_seconds{{{resources}}}) \
                         > 2 * max by (airq_namespace, schedule) (airq_operator_etl_schedule_period_seconds{{{resources}}})"
                    ),
                    "10m",
                    "warning",
                    "ETL schedule {{ $labels.schedule }} has not loaded successfully for two periods",
                    "EtlSchedule {{ $labels.airq_namespace }}/{{ $labels.schedule }}: no successful load for more than \
                     twice its schedule's period.",
                ),
            ]},
            { "name": "airq.models", "rules": [
                alert(
                    "AirqModelTrainingFailed",
                    format!("max by (airq_namespace, model) (airq_operator_model_training_failed{{{resources}}}) == 1"),
                    "0m",
                    "warning",
                    "Training of model {{ $labels.model }} failed",
                    "PredictiveModel {{ $labels.airq_namespace }}/{{ $labels.model }}: the last training Job failed; the \
                     previous version, if any, is still served.",
                ),
                alert(
                    "AirqForecastErrorAnomalous",
                    format!("max by (namespace, subject) (airq_predictive_anomalous{{namespace=\"{ns}\"}}) == 1"),
                    "1h",
                    "warning",
                    "Forecasts of {{ $labels.subject }} are far off the truth",
                    "{{ $labels.subject }} (model/station): the day-ahead forecast error has been outside its usual \
                     band for an hour; the dashboard's operations page says what was forecast and measured.",
                ),
            ]},
            { "name": "airq.gateway", "rules": [
                alert(
                    "AirqGatewayErrorRate",
                    format!(
                        "sum by (route) (rate(airq_gateway_http_requests_total{{{gateway},status_class=\"5xx\"}}[5m])) \
                         / sum by (route) (rate(airq_gateway_http_requests_total{{{gateway}}}[5m])) > 0.05"
                    ),
                    "10m",
                    "critical",
                    "More than 5 % of the requests to route {{ $labels.route }} fail",
                    "The gateway answers 5xx to {{ $value | humanizePercentage }} of the requests of route {{ $labels.route }}.",
                ),
                alert(
                    "AirqGatewayLatency",
                    format!(
                        "histogram_quantile(0.99, sum by (le, route) \
                         (rate(airq_gateway_http_request_duration_seconds_bucket{{{gateway}}}[5m]))) > 1"
                    ),
                    "10m",
                    "warning",
                    "The 99th percentile latency of route {{ $labels.route }} is above 1 s",
                    "Route {{ $labels.route }}: p99 {{ $value | humanizeDuration }} over 5 minutes.",
                ),
            ]},
            { "name": "airq.operator", "rules": [
                alert(
                    "AirqOperatorReconcileErrors",
                    format!("sum by (kind) (rate(airq_operator_reconcile_errors_total{{{resources}}}[10m])) > 0"),
                    "15m",
                    "warning",
                    "The operator keeps failing to reconcile {{ $labels.kind }} resources",
                    "Reconciles of {{ $labels.kind }} in {{ $labels.airq_namespace }} have failed for 15 minutes; the \
                     operator's log says why (reconcile failed).",
                ),
            ]},
        ]}),
    )
}

/// Applies the Platform's ServiceMonitor and PrometheusRule where the cluster serves them; an object whose
/// applied-hash already matches is not written. Returns what was applied.
pub async fn apply(ctx: &Context, owner: &Owner, apis: Apis) -> Result<Vec<String>> {
    let mut wanted = Vec::new();
    if apis.service_monitors {
        wanted.push(("ServiceMonitor", service_monitor(owner)));
    }
    if apis.prometheus_rules {
        wanted.push(("PrometheusRule", prometheus_rule(owner)));
    }
    let mut applied = Vec::new();
    for (kind, value) in wanted {
        let (value, hash) = with_hash(value, kind)?;
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &owner.namespace, &resource(kind));
        let apply_error = |source| Error::Apply {
            kind,
            name: NAME.to_owned(),
            source,
        };
        // From the watch cache; from the API server only while the cache cannot be filled.
        let existing = match ctx.monitoring_cache(kind, &resource(kind)).await {
            Some(store) => store
                .get(&ObjectRef::new_with(NAME, resource(kind)).within(&owner.namespace))
                .map(|o| o.as_ref().clone()),
            None => api.get_opt(NAME).await.map_err(apply_error)?,
        };
        let as_applied = existing.is_some_and(|o| {
            o.metadata.annotations.as_ref().and_then(|a| a.get(HASH_ANNOTATION)) == Some(&hash)
                && serde_json::to_value(&o).is_ok_and(|live| crate::children::covers(&live, &value))
        });
        if as_applied {
            continue;
        }
        api.patch(NAME, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&value))
            .await
            .map_err(apply_error)?;
        ctx.stats.wrote(owner.kind, "apply");
        applied.push(format!("{kind} {NAME}"));
    }
    Ok(applied)
}

/// Writes, for every EtlSchedule and PredictiveModel in the caches, the gauges the alerts read (Prometheus text
/// format): whether a schedule's last run failed, when a run last succeeded, its schedule's period, and whether a
/// model's last training failed. Computed from the caches at each scrape, so a deleted resource's series go with it.
pub fn write_resource_metrics(stores: &crate::context::Stores, out: &mut String) {
    use std::fmt::Write;
    let schedules = stores.etl_schedules.state();
    let models = stores.models.state();
    let mut gauge = |name: &str, help: &str, series: Vec<(String, f64)>| {
        if series.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in series {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    let etl_labels = |e: &airq_api::EtlSchedule| {
        format!(
            "airq_namespace=\"{}\",schedule=\"{}\"",
            escape(e.metadata.namespace.as_deref().unwrap_or_default()),
            escape(e.metadata.name.as_deref().unwrap_or_default())
        )
    };
    let last_run = |e: &airq_api::EtlSchedule| -> Option<LoadRunStatus> { e.status.as_ref()?.last_run.clone() };
    gauge(
        "airq_operator_etl_last_run_failed",
        "1 when the EtlSchedule's last finished run failed.",
        schedules
            .iter()
            .map(|e| {
                (
                    etl_labels(e),
                    f64::from(u8::from(last_run(e).is_some_and(|r| !r.succeeded))),
                )
            })
            .collect(),
    );
    gauge(
        "airq_operator_etl_last_success_timestamp_seconds",
        "When a run of the EtlSchedule last succeeded (Unix seconds).",
        schedules
            .iter()
            .filter_map(|e| {
                let at = e.status.as_ref()?.last_success_time.as_ref()?;
                Some((etl_labels(e), at.0.as_second() as f64))
            })
            .collect(),
    );
    gauge(
        "airq_operator_etl_schedule_period_seconds",
        "The period of the EtlSchedule's cron schedule.",
        schedules
            .iter()
            .filter_map(|e| {
                let period = airq_api::validation::cron_period_seconds(e.spec.schedule.as_deref()?)?;
                Some((etl_labels(e), period as f64))
            })
            .collect(),
    );
    gauge(
        "airq_operator_model_training_failed",
        "1 when the PredictiveModel's last training failed.",
        models
            .iter()
            .map(|m| {
                let failed = m.status.as_ref().is_some_and(|s| {
                    airq_api::common::condition(&s.conditions, "Trained").is_some_and(|c| c.reason == "TrainingFailed")
                });
                let labels = format!(
                    "airq_namespace=\"{}\",model=\"{}\"",
                    escape(m.metadata.namespace.as_deref().unwrap_or_default()),
                    escape(m.metadata.name.as_deref().unwrap_or_default())
                );
                (labels, f64::from(u8::from(failed)))
            })
            .collect(),
    );
}

/// A label value escaped for the Prometheus text format.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn owner() -> Owner {
        Owner {
            kind: "Platform",
            api_version: "airq.dev/v1alpha1".to_owned(),
            name: "airq".to_owned(),
            namespace: "air".to_owned(),
            uid: "u-1".to_owned(),
        }
    }

    fn service(labels: &[(&str, &str)]) -> Child {
        Child::Service(Service {
            metadata: ObjectMeta {
                labels: Some(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
                ..ObjectMeta::default()
            },
            ..Service::default()
        })
    }

    fn annotations(child: &Child) -> Option<BTreeMap<String, String>> {
        match child {
            Child::Service(s) => s.metadata.annotations.clone(),
            _ => None,
        }
    }

    #[test]
    fn only_metrics_services_are_annotated_and_only_without_service_monitors() {
        let mut children = vec![service(&[METRICS_LABEL]), service(&[("app", "other")])];
        annotate_for_scraping(&mut children, Apis::default());
        assert_eq!(
            annotations(&children[0]).unwrap()["prometheus.io/scrape"],
            "true".to_owned()
        );
        assert_eq!(annotations(&children[1]), None);
        let mut children = vec![service(&[METRICS_LABEL])];
        annotate_for_scraping(
            &mut children,
            Apis {
                service_monitors: true,
                prometheus_rules: true,
            },
        );
        assert_eq!(annotations(&children[0]), None);
    }

    #[test]
    fn every_alert_is_scoped_to_the_platforms_namespace() {
        let rule = prometheus_rule(&owner());
        let groups = rule["spec"]["groups"].as_array().unwrap();
        let alerts: Vec<&serde_json::Value> = groups.iter().flat_map(|g| g["rules"].as_array().unwrap()).collect();
        assert_eq!(alerts.len(), 7);
        for alert in alerts {
            let expr = alert["expr"].as_str().unwrap();
            assert!(expr.contains("namespace=\"air\""), "{}: {expr}", alert["alert"]);
        }
        assert_eq!(rule["metadata"]["ownerReferences"][0]["uid"], "u-1");
        let monitor = service_monitor(&owner());
        assert_eq!(monitor["spec"]["namespaceSelector"]["matchNames"][0], "air");
        assert_eq!(monitor["spec"]["selector"]["matchLabels"][METRICS_LABEL.0], "true");
    }
}

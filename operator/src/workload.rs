//! What the reconcilers build alike: pod templates with the restricted security settings every airq container runs
//! with, the database URL handed over from its Secret, probes on the operational endpoints, scheduling options; and
//! the Deployment, Service and gateway Ingress that the Platform, PredictiveModel and AdhocService controllers
//! assemble the same way.

use std::collections::BTreeMap;

use airq_api::common::{DatabaseRef, PodOptions};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    IngressTLS, ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::children::Owner;

/// The port every airq service listens on inside its pod.
pub const HTTP_PORT: i32 = 8080;
/// The gateway's operational port (`/readyz`, `/metrics`), apart from the one callers reach.
pub const OPS_PORT: i32 = 9090;
/// The Service port Prometheus scrapes every airq service on (the ServiceMonitor's endpoint `metrics`).
pub const METRICS_SERVICE_PORT: i32 = 9090;
/// The non-root user airq's images run as.
pub const RUN_AS_USER: i64 = 65532;
/// Seconds a service goes on answering after SIGTERM (not ready, closing connections after each answer) so that
/// its endpoint's removal reaches every proxy before it stops: rolling updates lose no request.
pub const SHUTDOWN_DRAIN_SECONDS: u32 = 5;

/// The gateway's Service, which every Ingress leads to.
pub const GATEWAY_SERVICE: &str = "airq-gateway";

/// How a Deployment replaces its pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollout {
    /// Kubernetes' default rolling update.
    Default,
    /// One new pod at a time and none taken away before its replacement is ready: the old version answers until
    /// the new one does.
    KeepServing,
}

/// A Deployment of `replicas` pods of `template`, picked by `selector`.
pub fn deployment(
    metadata: ObjectMeta,
    replicas: i32,
    selector: BTreeMap<String, String>,
    template: PodTemplateSpec,
    rollout: Rollout,
) -> Deployment {
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                match_expressions: None,
            },
            strategy: (rollout == Rollout::KeepServing).then(|| DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template,
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// A Service on port 80 leading to the `http` port of the pods `selector` picks, and on port `metrics` (9090) to the
/// pods' port named `metrics_target`, where they serve `/metrics` (`http` for most services, `metrics` for the
/// gateway, whose operational endpoints are apart from its public port).
pub fn metrics_service(metadata: ObjectMeta, selector: BTreeMap<String, String>, metrics_target: &str) -> Service {
    let mut service = http_service(metadata, selector);
    if let Some(ports) = service.spec.as_mut().and_then(|s| s.ports.as_mut()) {
        ports.push(ServicePort {
            name: Some("metrics".to_owned()),
            port: METRICS_SERVICE_PORT,
            target_port: Some(IntOrString::String(metrics_target.to_owned())),
            protocol: Some("TCP".to_owned()),
            ..ServicePort::default()
        });
    }
    service
}

/// Moves a container's probes to its port `metrics` (`OPS_PORT`), which it declares.
pub fn probe_on_ops_port(container: &mut Container) {
    container.ports.get_or_insert_with(Vec::new).push(ContainerPort {
        name: Some("metrics".to_owned()),
        container_port: OPS_PORT,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    });
    for probe in [&mut container.liveness_probe, &mut container.readiness_probe]
        .into_iter()
        .flatten()
    {
        if let Some(get) = probe.http_get.as_mut() {
            get.port = IntOrString::String("metrics".to_owned());
        }
    }
}

/// A Service on port 80 leading to the `http` port of the pods `selector` picks.
pub fn http_service(metadata: ObjectMeta, selector: BTreeMap<String, String>) -> Service {
    Service {
        metadata,
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: 80,
                target_port: Some(IntOrString::String("http".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// An Ingress sending `host` (any host when `None`) and the paths under `path` to the gateway's Service, with TLS
/// from `tls_secret` when given.
pub fn gateway_ingress(
    metadata: ObjectMeta,
    class_name: Option<String>,
    host: Option<String>,
    tls_secret: Option<String>,
    path: &str,
) -> Ingress {
    Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: class_name,
            tls: tls_secret.map(|secret| {
                vec![IngressTLS {
                    hosts: host.clone().map(|h| vec![h]),
                    secret_name: Some(secret),
                }]
            }),
            rules: Some(vec![IngressRule {
                host,
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some(path.to_owned()),
                        path_type: "Prefix".to_owned(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: GATEWAY_SERVICE.to_owned(),
                                port: Some(ServiceBackendPort {
                                    name: Some("http".to_owned()),
                                    number: None,
                                }),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }]),
            ..IngressSpec::default()
        }),
        status: None,
    }
}

/// `name` from a Secret key.
pub fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// A plain environment variable.
pub fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// `AIRQ_DATABASE_URL` from the Secret the resource names: the URL never appears in a spec.
pub fn database_env(database: &DatabaseRef) -> EnvVar {
    secret_env("AIRQ_DATABASE_URL", &database.secret_name, &database.key)
}

/// The restricted Pod Security Standard: non-root, no privilege escalation, no capabilities, the runtime's seccomp
/// profile, and (for airq's own images) a read-only root filesystem.
pub fn container_security(read_only_root: bool) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        read_only_root_filesystem: Some(read_only_root),
        run_as_non_root: Some(true),
        ..SecurityContext::default()
    }
}

fn pod_security(run_as_user: Option<i64>) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user,
        run_as_group: run_as_user,
        fs_group: run_as_user,
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

fn http_probe(path: &str, initial_delay: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// A container of one of airq's services serving HTTP on `port`, with liveness and readiness probes on `/healthz` and
/// `/readyz` and a drain at shutdown.
pub fn service_container(
    name: &str,
    image: String,
    port: i32,
    mut env: Vec<EnvVar>,
    resources: Option<ResourceRequirements>,
    read_only_root: bool,
) -> Container {
    env.push(self::env(
        "AIRQ_SHUTDOWN_DRAIN_SECONDS",
        SHUTDOWN_DRAIN_SECONDS.to_string(),
    ));
    Container {
        name: name.to_owned(),
        image: Some(image),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: port,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        env: if env.is_empty() { None } else { Some(env) },
        resources,
        // The first probes wait a moment: a process that has just started is not listening yet, and a probe that
        // fails then only makes a warning Event.
        liveness_probe: Some(http_probe("/healthz", 10, 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 2, 5, 2)),
        security_context: Some(container_security(read_only_root)),
        ..Container::default()
    }
}

/// A container that runs to completion and reports through its termination message.
pub fn job_container(name: &str, image: String, args: Vec<String>, env: Vec<EnvVar>, pod: &PodOptions) -> Container {
    Container {
        name: name.to_owned(),
        image: Some(image),
        args: Some(args),
        env: if env.is_empty() { None } else { Some(env) },
        resources: pod.resources.clone(),
        security_context: Some(container_security(true)),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        volume_mounts: Some(vec![tmp_mount()]),
        ..Container::default()
    }
}

/// A pod template with the restricted security settings. `airq_image` pods run as airq's non-root user; other
/// images must run as a non-root user of their own.
pub fn pod_template(
    labels: BTreeMap<String, String>,
    containers: Vec<Container>,
    pod: &PodOptions,
    restart_policy: Option<&str>,
    volumes: Vec<Volume>,
    airq_image: bool,
) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers,
            restart_policy: restart_policy.map(str::to_owned),
            node_selector: pod.node_selector.clone(),
            tolerations: pod.tolerations.clone(),
            security_context: Some(pod_security(airq_image.then_some(RUN_AS_USER))),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            volumes: if volumes.is_empty() { None } else { Some(volumes) },
            ..PodSpec::default()
        }),
    }
}

/// A PodDisruptionBudget for the `replicas` pods that `selector` picks, when there are several: evictions (a node
/// drained) take them one at a time, so the service keeps answering. `None` for a single replica, which a budget
/// would only make impossible to evict.
pub fn disruption_budget(
    owner: &Owner,
    name: &str,
    labels: BTreeMap<String, String>,
    selector: BTreeMap<String, String>,
    replicas: i32,
) -> Option<PodDisruptionBudget> {
    (replicas >= 2).then(|| PodDisruptionBudget {
        metadata: owner.meta(name, labels),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector),
                match_expressions: None,
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

/// Sets the pull policy of every container in `children`'s pod templates (those running airq's own images).
pub fn set_pull_policy(children: &mut [crate::children::Child], policy: &str) {
    use crate::children::Child;
    for child in children {
        let template = match child {
            Child::Deployment(d) => d.spec.as_mut().map(|s| &mut s.template),
            Child::Job(j) => j.spec.as_mut().map(|s| &mut s.template),
            Child::CronJob(c) => c.spec.job_template.spec.as_mut().map(|s| &mut s.template),
            _ => None,
        };
        for container in template
            .and_then(|t| t.spec.as_mut())
            .into_iter()
            .flat_map(|s| s.containers.iter_mut())
        {
            container.image_pull_policy = Some(policy.to_owned());
        }
    }
}

/// Where [`tmp_volume`] is mounted: `/tmp`.
pub fn tmp_mount() -> VolumeMount {
    VolumeMount {
        name: "tmp".to_owned(),
        mount_path: "/tmp".to_owned(),
        ..VolumeMount::default()
    }
}

/// The pod template of a long-running service: one container, a scratch `/tmp`, default scheduling.
pub fn service_pod(labels: BTreeMap<String, String>, container: Container, airq_image: bool) -> PodTemplateSpec {
    pod_template(
        labels,
        vec![container],
        &PodOptions::default(),
        None,
        vec![tmp_volume()],
        airq_image,
    )
}

/// An `emptyDir` volume at `/tmp`, so read-only root filesystems still have scratch space.
pub fn tmp_volume() -> Volume {
    Volume {
        name: "tmp".to_owned(),
        empty_dir: Some(Default::default()),
        ..Volume::default()
    }
}

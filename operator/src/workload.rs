//! Pod templates the reconcilers share: the restricted security settings every airq container runs with, the
//! database URL handed over from its Secret, probes on the operational endpoints, and scheduling options.

use std::collections::BTreeMap;

use airq_api::common::{DatabaseRef, PodOptions};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The port every airq service listens on inside its pod.
pub const HTTP_PORT: i32 = 8080;
/// The non-root user airq's images run as.
pub const RUN_AS_USER: i64 = 65532;

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

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// A container serving HTTP on `port` with liveness and readiness probes on `/healthz` and `/readyz`.
pub fn service_container(
    name: &str,
    image: String,
    port: i32,
    env: Vec<EnvVar>,
    resources: Option<ResourceRequirements>,
    read_only_root: bool,
) -> Container {
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
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 5, 2)),
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
        volume_mounts: Some(vec![VolumeMount {
            name: "tmp".to_owned(),
            mount_path: "/tmp".to_owned(),
            ..VolumeMount::default()
        }]),
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

/// An `emptyDir` volume at `/tmp`, so read-only root filesystems still have scratch space.
pub fn tmp_volume() -> Volume {
    Volume {
        name: "tmp".to_owned(),
        empty_dir: Some(Default::default()),
        ..Volume::default()
    }
}

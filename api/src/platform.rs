//! `Platform`: the platform's own core — the gateway, front, predictive and ETL services, the Ingress for the
//! dashboard and the API, and the gateway's route table. One per namespace, named `airq`, so that the Helm chart
//! installs the operator and this one object.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Access, ConditionedStatus, DatabaseRef, SecretKeyRef};

/// The one name a Platform may have: there is one per namespace, and the other resources find it by this name.
pub const PLATFORM_NAME: &str = "airq";

/// The core of airq in a namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "airq.dev",
    version = "v1alpha1",
    kind = "Platform",
    namespaced,
    status = "PlatformStatus",
    shortname = "aqp",
    category = "airq",
    doc = "The core of airq in a namespace: gateway, front, predictive and ETL services, the Ingress for the dashboard and the API, and the gateway's routes. One per namespace, named airq.",
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Routes", type_ = "integer", json_path = ".status.routes"),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name == 'airq'").message("a Platform must be named airq (there is one per namespace)"),
)]
#[serde(rename_all = "camelCase")]
pub struct PlatformSpec {
    /// The airq version: the tag of the images.
    #[serde(default = "default_version")]
    pub version: String,
    /// Registry and repository prefix of the images: `<registry>/airq-<service>:<version>`.
    #[serde(default = "default_registry")]
    pub registry: String,
    /// When the kubelet pulls images.
    #[serde(default = "default_pull_policy")]
    #[schemars(regex(pattern = r"^(Always|IfNotPresent|Never)$"))]
    pub image_pull_policy: String,
    /// The Secret holding the database URL.
    #[serde(default)]
    pub database: DatabaseRef,
    /// The gateway: the only entrance.
    #[serde(default = "Component::gateway")]
    pub gateway: Component,
    /// The dashboard and the data behind its views.
    #[serde(default = "Component::front")]
    pub front: Component,
    /// The forecasting API.
    #[serde(default = "Component::predictive")]
    pub predictive: Component,
    /// The loading API.
    #[serde(default = "Component::etl")]
    pub etl: Component,
    /// The Secret key holding the gateway's bootstrap admin API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_key_secret: Option<SecretKeyRef>,
    /// The Secret key holding the secret the gateway hashes API keys with (at least 16 bytes, the same for every
    /// replica). By default the key `keyHashSecret` of the database Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_hash_secret: Option<SecretKeyRef>,
    /// How the dashboard and the API are reached from outside.
    #[serde(default)]
    pub ingress: IngressSpec,
}

fn default_version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}

fn default_registry() -> String {
    "ghcr.io/airq-dev".to_owned()
}

fn default_pull_policy() -> String {
    "IfNotPresent".to_owned()
}

/// One core service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Component {
    /// Pods to run.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// CPU and memory requests and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Who may call its routes through the gateway (the gateway itself ignores this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
}

fn one() -> i32 {
    1
}

impl Component {
    fn with(replicas: i32, access: Option<Access>) -> Self {
        Self {
            replicas,
            resources: None,
            access,
        }
    }
    /// The gateway's defaults: two replicas.
    pub fn gateway() -> Self {
        Self::with(2, None)
    }
    /// The front's defaults: the dashboard is public.
    pub fn front() -> Self {
        Self::with(1, Some(Access::public()))
    }
    /// The predictive API's defaults: callers with an API key in group `developers`.
    pub fn predictive() -> Self {
        Self::with(1, Some(Access::groups(&["developers"])))
    }
    /// The ETL API's defaults: group `operators`.
    pub fn etl() -> Self {
        Self::with(1, Some(Access::groups(&["operators"])))
    }
}

/// The Ingress in front of the gateway.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Create the Ingress.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The host name; every host when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The IngressClass; the cluster's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// A TLS Secret for the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret: Option<String>,
}

impl Default for IngressSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            host: None,
            class_name: None,
            tls_secret: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// What the operator last saw of the platform.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlatformStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` when every core service is available.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Routes in the gateway's table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<i32>,
    /// Where the dashboard answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl ConditionedStatus for PlatformStatus {
    fn observed_generation(&self) -> Option<i64> {
        self.observed_generation
    }
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

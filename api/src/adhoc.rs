//! `AdhocService`: any further microservice, added with configuration only. Becomes a Deployment, a Service, an
//! Ingress route to the gateway and an entry in the gateway's route table, with the same authentication, logs and
//! metrics as the core services.

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Access, ConditionedStatus};

/// A microservice behind the gateway.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "airq.dev",
    version = "v1alpha1",
    kind = "AdhocService",
    namespaced,
    status = "AdhocServiceStatus",
    shortname = "adhoc",
    category = "airq",
    doc = "A microservice added with configuration only: run from an image, reached through the gateway under a path prefix, with the gateway's authentication, logs and metrics.",
    printcolumn(name = "Path", type_ = "string", json_path = ".spec.route.pathPrefix"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Available", type_ = "integer", json_path = ".status.availableReplicas"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 50").message("metadata.name: at most 50 characters (it names the Deployment and the Service adhoc-<name>)"),
    validation = Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name: only lower-case letters, digits and '-', starting and ending with a letter or digit (it names a Service, which allows no dots)"),
)]
#[serde(rename_all = "camelCase")]
pub struct AdhocServiceSpec {
    /// The container image.
    #[schemars(length(min = 1))]
    pub image: String,
    /// The port the container serves HTTP on.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Pods to run.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// The container's command, replacing the image's entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// The container's arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Environment variables of the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// CPU and memory requests and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Let the container write to its root filesystem. By default it is read-only, with an empty, writable `/tmp`;
    /// an image that writes elsewhere needs this.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub writable_root_filesystem: bool,
    /// Where the gateway and the ingress expose the service.
    pub route: RouteSpec,
    /// Who may call it.
    pub access: Access,
}

fn default_port() -> i32 {
    8080
}

fn default_replicas() -> i32 {
    1
}

/// Where the service is exposed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// Requests whose path starts with this prefix go to the service, e.g. `/adhoc/reports/`.
    #[schemars(regex(pattern = r"^/[A-Za-z0-9._~/-]*$"))]
    pub path_prefix: String,
    /// Limit the route to this host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Remove the prefix before forwarding (the service sees `/x` for `<prefix>x`).
    #[serde(default)]
    pub strip_prefix: bool,
    /// Seconds the gateway waits for the service to answer.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: u32,
    /// A token bucket per caller (API key, token subject, or client address) on this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<crate::gateway::RateLimit>,
    /// Browser origins allowed to call the route (CORS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<crate::gateway::Cors>,
    /// Let callers open WebSocket connections through the gateway (authenticated and rate-limited when they open;
    /// what passes on an open connection is the service's). Other upgrades are never passed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub websocket: bool,
}

fn default_timeout() -> u32 {
    30
}

/// What the operator last saw of the service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdhocServiceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Available` (enough pods are ready), `Routed` (the gateway lists the route) and `Ready` (both).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Pods of the current spec that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_replicas: Option<i32>,
    /// Where the service answers through the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl ConditionedStatus for AdhocServiceStatus {
    fn observed_generation(&self) -> Option<i64> {
        self.observed_generation
    }
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

//! Types several resources share: where the database URL is, which Secret key holds a credential, who may call a
//! route, and where and how big a workload's pods are.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The default name of the Secret holding the database URL.
pub const DEFAULT_DATABASE_SECRET: &str = "airq-database";

/// Where a workload finds the database URL: a key of a Secret in the resource's namespace. The URL is handed to the
/// pod from the Secret; it never appears in a resource or a pod spec.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseRef {
    /// Name of the Secret.
    #[serde(default = "default_database_secret")]
    pub secret_name: String,
    /// Key of the Secret whose value is the URL (`postgres://user:password@host:5432/db`).
    #[serde(default = "default_database_key")]
    pub key: String,
}

impl Default for DatabaseRef {
    fn default() -> Self {
        Self {
            secret_name: default_database_secret(),
            key: default_database_key(),
        }
    }
}

fn default_database_secret() -> String {
    DEFAULT_DATABASE_SECRET.to_owned()
}

fn default_database_key() -> String {
    "url".to_owned()
}

/// A key of a Secret in the resource's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// Who may call a route through the gateway: everyone, or the members of the listed gateway groups (with an API key
/// or a token).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.public != (has(self.groups) && size(self.groups) > 0)").message("set either public: true or a non-empty list of groups, not both"))]
pub struct Access {
    /// Anyone may call the route, without an API key.
    #[serde(default)]
    pub public: bool,
    /// Gateway groups whose members may call the route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub groups: Vec<String>,
}

impl Access {
    /// Open to anyone.
    pub fn public() -> Self {
        Self {
            public: true,
            groups: Vec::new(),
        }
    }

    /// Open to the members of `groups`.
    pub fn groups(groups: &[&str]) -> Self {
        Self {
            public: false,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }
}

/// How much a workload's pods may use and which nodes they may run on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOptions {
    /// CPU and memory requests and limits of the main container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the pods must run on (e.g. bigger machines for training).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
}

/// The status fields every airq resource has.
pub trait ConditionedStatus {
    /// The `metadata.generation` the status describes.
    fn observed_generation(&self) -> Option<i64>;
    /// The conditions, `Ready` among them.
    fn conditions(&self) -> &[Condition];
}

/// The condition named `type_`, if present.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

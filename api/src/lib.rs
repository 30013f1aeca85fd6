//! The airq API: the `airq.dev/v1alpha1` custom resources that platform engineers apply, the route table the operator
//! writes for the gateway, and the reports the ETL and training Jobs hand back to the operator. Shared by the operator,
//! the services, the kubectl plugin and the one-machine mode, so that all of them read the same YAML the same way.

pub mod adhoc;
pub mod common;
pub mod etl;
pub mod gateway;
pub mod model;
pub mod platform;
pub mod reports;
pub mod validation;

pub use adhoc::{AdhocService, AdhocServiceSpec, AdhocServiceStatus};
pub use etl::{EtlSchedule, EtlScheduleSpec, EtlScheduleStatus};
pub use model::{PredictiveModel, PredictiveModelSpec, PredictiveModelStatus};
pub use platform::{Platform, PlatformSpec, PlatformStatus};

/// The API group of every airq resource.
pub const GROUP: &str = "airq.dev";
/// The version of the resources in this crate.
pub const VERSION: &str = "v1alpha1";

/// The CustomResourceDefinitions of every airq resource, in a stable order.
pub fn crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    use kube::CustomResourceExt;
    vec![
        EtlSchedule::crd(),
        PredictiveModel::crd(),
        AdhocService::crd(),
        Platform::crd(),
    ]
}

/// A short, stable fingerprint of `value` (8 hex digits of its SHA-256): names Jobs after what they do and marks the
/// spec a model version was trained from.
pub fn fingerprint(value: &serde_json::Value) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(value.to_string().as_bytes());
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

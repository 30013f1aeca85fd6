//! The airq API: the `airq.dev/v1alpha1` custom resources that platform engineers apply, the route table the operator
//! writes for the gateway, and the reports the ETL and training Jobs hand back to the operator. Shared by the operator,
//! the services, the kubectl plugin and the one-machine mode, so that all of them read the same YAML the same way.

pub mod adhoc;
pub mod common;
pub mod etl;
pub mod gateway;
pub mod model;
pub mod paths;
pub mod platform;
pub mod reports;
pub mod routes;
pub mod validation;

pub use adhoc::{AdhocService, AdhocServiceSpec, AdhocServiceStatus};
pub use etl::{EtlSchedule, EtlScheduleSpec, EtlScheduleStatus};
pub use model::{PredictiveModel, PredictiveModelSpec, PredictiveModelStatus};
pub use platform::{Platform, PlatformSpec, PlatformStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};

/// The API group of every airq resource.
pub const GROUP: &str = "airq.dev";
/// The version of the resources in this crate.
pub const VERSION: &str = "v1alpha1";

/// The CustomResourceDefinitions of every airq resource, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    use kube::CustomResourceExt;
    let mut crds = vec![
        EtlSchedule::crd(),
        PredictiveModel::crd(),
        AdhocService::crd(),
        Platform::crd(),
    ];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) {
                drop_unknown_formats(schema);
            }
        }
    }
    crds
}

/// Removes the integer formats Kubernetes does not know (schemars writes `uint32` and the like for unsigned
/// fields, and the API server warns about each on every apply); their `minimum: 0` stays.
fn drop_unknown_formats(schema: &mut JSONSchemaProps) {
    if schema
        .format
        .as_deref()
        .is_some_and(|f| f.starts_with("uint") || f == "int8" || f == "int16")
    {
        schema.format = None;
    }
    let children = schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(schema.all_of.iter_mut().flatten())
        .chain(schema.any_of.iter_mut().flatten())
        .chain(schema.one_of.iter_mut().flatten());
    let mut nested: Vec<&mut JSONSchemaProps> = children.collect();
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = schema.items.as_mut() {
        nested.push(items);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(extra)) = schema.additional_properties.as_mut() {
        nested.push(extra);
    }
    for child in nested {
        drop_unknown_formats(child);
    }
}

/// A short, stable fingerprint of `value` (8 hex digits of its SHA-256): names Jobs after what they do and marks the
/// spec a model version was trained from.
pub fn fingerprint(value: &serde_json::Value) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(value.to_string().as_bytes());
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    /// Every `format` in the CRDs' schemas is one the API server knows (it warns about others on every apply).
    #[test]
    fn the_crds_use_only_formats_kubernetes_knows() {
        fn formats(value: &serde_json::Value, found: &mut Vec<String>) {
            match value {
                serde_json::Value::Object(map) => {
                    if let Some(serde_json::Value::String(format)) = map.get("format") {
                        found.push(format.clone());
                    }
                    map.values().for_each(|v| formats(v, found));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| formats(v, found)),
                _ => {}
            }
        }
        let known = [
            "int32",
            "int64",
            "float",
            "double",
            "date-time",
            "date",
            "byte",
            "duration",
        ];
        let mut found = Vec::new();
        for crd in super::crds() {
            formats(&serde_json::to_value(&crd.spec).unwrap_or_default(), &mut found);
        }
        assert!(found.iter().any(|f| f == "int64"), "{found:?}");
        let unknown: Vec<&String> = found.iter().filter(|f| !known.contains(&f.as_str())).collect();
        assert!(unknown.is_empty(), "formats Kubernetes does not know: {unknown:?}");
    }
}

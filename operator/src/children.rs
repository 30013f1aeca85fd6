//! The objects a resource owns: their common metadata (labels, owner reference), and applying the desired set —
//! server-side apply under one field manager, skipped when the object already carries the hash of what would be
//! applied and its fields are still as applied, and deletion of owned objects no longer wanted.
//!
//! Builders make typed children ([`Child`]); applying erases them to dynamic objects (JSON with `apiVersion` and
//! `kind`, written through `Api<DynamicObject>`), so one code path applies, compares and deletes every kind. The
//! kinds are listed once, in [`child_kinds!`]: the enum variants, their API resources and their caches follow.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::context::{Context, Stores};
use crate::error::{Error, Result};

/// The field manager of every write the operator makes.
pub const MANAGER: &str = "airq-operator";
/// The annotation holding the hash of what the operator last applied to an object.
pub const HASH_ANNOTATION: &str = "airq.dev/applied-hash";
/// The label every managed object carries; the operator's watches select on it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "airq-operator");
/// The label naming the kind of the owning resource.
pub const OWNER_KIND_LABEL: &str = "airq.dev/owner-kind";

/// The resource that owns the children being built.
#[derive(Debug, Clone)]
pub struct Owner {
    pub kind: &'static str,
    pub api_version: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

impl Owner {
    /// The owner as seen from an airq resource.
    pub fn of<K: Resource<DynamicType = ()>>(resource: &K) -> Result<Self> {
        Ok(Self {
            kind: crate::status::kind_label::<K>(),
            api_version: K::api_version(&()).into_owned(),
            name: resource.meta().name.clone().ok_or(Error::MissingMetadata("name"))?,
            namespace: resource
                .meta()
                .namespace
                .clone()
                .ok_or(Error::MissingMetadata("namespace"))?,
            uid: resource.meta().uid.clone().ok_or(Error::MissingMetadata("uid"))?,
        })
    }

    /// The labels of a child: the standard `app.kubernetes.io` ones, and the owner's kind.
    pub fn labels(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), component.to_owned()),
            ("app.kubernetes.io/instance".to_owned(), self.name.clone()),
            ("app.kubernetes.io/part-of".to_owned(), "airq".to_owned()),
            (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
            (OWNER_KIND_LABEL.to_owned(), self.kind.to_owned()),
        ])
    }

    /// Metadata of a child named `name`: namespace, labels and the controlling owner reference (so deleting the
    /// owner deletes it).
    pub fn meta(&self, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![OwnerReference {
                api_version: self.api_version.clone(),
                kind: self.kind.to_owned(),
                name: self.name.clone(),
                uid: self.uid.clone(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        }
    }
}

/// Declares the kinds of children once: `Variant(Type) => field of Stores`, in the order they are applied.
macro_rules! child_kinds {
    ($($kind:ident => $store:ident),+ $(,)?) => {
        /// A child object of one of the kinds the operator creates.
        // A handful are built per reconcile and applied at once; boxing them would buy nothing.
        #[allow(clippy::large_enum_variant)]
        #[derive(Debug, Clone, PartialEq)]
        pub enum Child {
            $($kind($kind),)+
        }

        /// The kinds of children, in the order they are applied.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum ChildKind {
            $($kind,)+
        }

        impl ChildKind {
            /// Every kind, in the order they are applied.
            pub const ALL: &[ChildKind] = &[$(ChildKind::$kind),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$kind => stringify!($kind),)+
                }
            }

            /// The API resource of the kind, for dynamic objects.
            pub fn api_resource(self) -> ApiResource {
                match self {
                    $(Self::$kind => ApiResource::erase::<$kind>(&()),)+
                }
            }

            /// The operator's cache of the kind.
            fn cache(self, stores: &Stores) -> &dyn Cached {
                match self {
                    $(Self::$kind => &stores.$store,)+
                }
            }
        }

        impl Child {
            pub fn kind(&self) -> ChildKind {
                match self {
                    $(Self::$kind(_) => ChildKind::$kind,)+
                }
            }

            fn meta(&self) -> &ObjectMeta {
                match self {
                    $(Self::$kind(o) => o.meta(),)+
                }
            }

            /// The object as JSON with `apiVersion` and `kind`.
            fn to_json(&self) -> Result<serde_json::Value> {
                match self {
                    $(Self::$kind(o) => typed_json(o),)+
                }
            }
        }
    };
}

child_kinds! {
    ConfigMap => config_maps,
    Service => services,
    Deployment => deployments,
    PodDisruptionBudget => pod_disruption_budgets,
    Ingress => ingresses,
    CronJob => cron_jobs,
    Job => jobs,
}

impl Child {
    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    /// The object as JSON with `apiVersion` and `kind`, and the hash of that JSON in [`HASH_ANNOTATION`].
    pub fn to_apply(&self) -> Result<(serde_json::Value, String)> {
        with_hash(self.to_json()?, self.kind().as_str())
    }
}

/// A cache of one kind of child, as [`apply`] uses it: compare a live object with what would be applied, list what
/// an owner controls.
trait Cached {
    /// How the object `namespace`/`name` compares with `desired` (the JSON to apply, its hash annotation included).
    fn current(&self, namespace: &str, name: &str, desired: &serde_json::Value, hash: &str) -> Current;
    /// Names of the cached objects `owner` controls.
    fn owned(&self, owner: &Owner) -> Vec<String>;
}

impl<K> Cached for Store<K>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + 'static,
{
    fn current(&self, namespace: &str, name: &str, desired: &serde_json::Value, hash: &str) -> Current {
        let Some(object) = self.get(&ObjectRef::new(name).within(namespace)) else {
            return Current::Missing;
        };
        if object.annotations().get(HASH_ANNOTATION).map(String::as_str) != Some(hash) {
            return Current::Drifted;
        }
        // The hash says what was applied last; the fields say whether they are still so (`kubectl scale`,
        // `kubectl edit`).
        match serde_json::to_value(object.as_ref()).map(|live| difference(&live, desired)) {
            Ok(None) => Current::AsApplied,
            Ok(Some(field)) => {
                tracing::info!(kind = %K::kind(&()), %namespace, %name, %field, "a child was changed by someone else; applying it again");
                Current::Drifted
            }
            Err(_) => Current::Drifted,
        }
    }

    fn owned(&self, owner: &Owner) -> Vec<String> {
        self.state()
            .iter()
            // The uid test comes first: it rules out nearly every object without allocating.
            .filter(|object| {
                object
                    .owner_references()
                    .iter()
                    .any(|r| r.uid == owner.uid && r.controller == Some(true))
                    && object.meta().namespace.as_deref() == Some(owner.namespace.as_str())
            })
            .map(|object| object.name_any())
            .collect()
    }
}

/// `value` (an object with `metadata`) with the hash of its JSON in [`HASH_ANNOTATION`], and that hash.
pub fn with_hash(mut value: serde_json::Value, kind: &'static str) -> Result<(serde_json::Value, String)> {
    let bytes = serde_json::to_vec(&value).map_err(|e| Error::Serialize(kind, e))?;
    let digest = Sha256::digest(&bytes);
    let hash: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    if let Some(metadata) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        let annotations = metadata
            .entry("annotations")
            .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
        if let Some(annotations) = annotations.as_object_mut() {
            annotations.insert(HASH_ANNOTATION.to_owned(), hash.clone().into());
        }
    }
    Ok((value, hash))
}

fn typed_json<K: Resource<DynamicType = ()> + Serialize>(object: &K) -> Result<serde_json::Value> {
    let mut value = serde_json::to_value(object).map_err(|e| Error::Serialize("object", e))?;
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".to_owned(), K::api_version(&()).into());
        map.insert("kind".to_owned(), K::kind(&()).into());
    }
    Ok(value)
}

/// What a reconcile wants to exist, and owned objects it wants kept as they are (e.g. finished Jobs kept as history).
#[derive(Debug, Default)]
pub struct Desired {
    pub children: Vec<Child>,
    pub keep: BTreeSet<(ChildKind, String)>,
}

/// What applying the desired children changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub applied: Vec<String>,
    pub deleted: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.applied.is_empty() && self.deleted.is_empty()
    }

    /// One line for an Event.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.applied.is_empty() {
            parts.push(format!("applied {}", self.applied.join(", ")));
        }
        if !self.deleted.is_empty() {
            parts.push(format!("deleted {}", self.deleted.join(", ")));
        }
        parts.join("; ")
    }
}

/// What the cluster has of a child the operator wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Current {
    /// No such object.
    Missing,
    /// The object has every field the operator applies, with the value it applies.
    AsApplied,
    /// The object differs: the operator's spec changed (another hash), or someone edited a field the operator sets.
    Drifted,
}

/// Whether `live` has every field `desired` sets, with the same value. The API server adds defaults (fields the
/// operator does not set) and leaves out empty values: those are not differences.
pub fn covers(live: &serde_json::Value, desired: &serde_json::Value) -> bool {
    difference(live, desired).is_none()
}

/// The first field `desired` sets that `live` does not have with the same value (`spec.replicas`), if any.
pub fn difference(live: &serde_json::Value, desired: &serde_json::Value) -> Option<String> {
    difference_at(live, desired, false)
}

/// Fields whose values are quantities.
const QUANTITY_FIELDS: [&str; 4] = ["limits", "requests", "sizeLimit", "overhead"];

fn difference_at(live: &serde_json::Value, desired: &serde_json::Value, quantities: bool) -> Option<String> {
    use serde_json::Value;
    let same =
        match (desired, live) {
            (Value::Object(want), Value::Object(have)) => {
                return want.iter().find_map(|(field, want)| match have.get(field) {
                    Some(have) => difference_at(have, want, quantities || QUANTITY_FIELDS.contains(&field.as_str()))
                        .map(|inner| match inner.chars().next() {
                            None => field.clone(),
                            Some('[') => format!("{field}{inner}"),
                            Some(_) => format!("{field}.{inner}"),
                        }),
                    None => (!is_empty(want)).then(|| field.clone()),
                });
            }
            (Value::Array(want), Value::Array(have)) if want.len() == have.len() => {
                return want.iter().zip(have).enumerate().find_map(|(i, (want, have))| {
                    difference_at(have, want, quantities).map(|inner| {
                        if inner.is_empty() {
                            format!("[{i}]")
                        } else {
                            format!("[{i}].{inner}")
                        }
                    })
                });
            }
            (Value::Array(_), Value::Array(_)) => false,
            (Value::Number(want), Value::Number(have)) => want.as_f64() == have.as_f64(),
            (want, Value::Null) => is_empty(want),
            // The API server writes quantities in canonical form (`0.5` as `500m`, `1024Mi` as `1Gi`).
            (Value::String(want), Value::String(have)) if quantities => {
                want == have
                    || airq_api::validation::quantity(want)
                        .is_some_and(|w| airq_api::validation::quantity(have) == Some(w))
            }
            (want, have) => want == have,
        };
    (!same).then(String::new)
}

/// A value the API server stores as absent.
fn is_empty(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_empty),
    }
}

/// Applies `desired` for `owner` and deletes the objects `owner` controls that are neither desired nor kept. An
/// object that carries the hash of what would be applied and still has every field the operator sets as it set them
/// is not written; one edited by hand is applied again, which puts the operator's fields back.
pub async fn apply(ctx: &Context, owner: &Owner, desired: Desired) -> Result<Changes> {
    let mut changes = Changes::default();
    let mut wanted: BTreeSet<(ChildKind, String)> = desired.keep.clone();
    let mut children = desired.children;
    children.sort_by_key(Child::kind);
    let mut pending = Vec::new();
    for child in &children {
        let kind = child.kind();
        let name = child.name().to_owned();
        wanted.insert((kind, name.clone()));
        let (value, hash) = child.to_apply()?;
        let current = kind.cache(&ctx.stores).current(&owner.namespace, &name, &value, &hash);
        // Jobs cannot change once created: an existing one is kept whatever its content.
        if current == Current::AsApplied || (kind == ChildKind::Job && current != Current::Missing) {
            continue;
        }
        pending.push((kind, name, value));
    }
    // The children do not depend on each other: they are applied at the same time.
    let applied = futures::future::try_join_all(pending.into_iter().map(|(kind, name, value)| async move {
        apply_one(ctx, owner, kind, &name, &value).await.map(|()| (kind, name))
    }))
    .await?;
    for (kind, name) in applied {
        ctx.stats.wrote(owner.kind, "apply");
        changes.applied.push(format!("{} {name}", kind.as_str()));
    }

    for &kind in ChildKind::ALL {
        for name in kind.cache(&ctx.stores).owned(owner) {
            if wanted.contains(&(kind, name.clone())) {
                continue;
            }
            let result = api(ctx, owner, kind)
                .delete(&name, &DeleteParams::background())
                .await
                .map(drop);
            match result {
                Ok(()) => {}
                // Already gone: the cache had not caught up.
                Err(kube::Error::Api(status)) if status.code == 404 => continue,
                Err(source) => {
                    return Err(Error::Delete {
                        kind: kind.as_str(),
                        name,
                        source,
                    });
                }
            }
            ctx.stats.wrote(owner.kind, "delete");
            changes.deleted.push(format!("{} {name}", kind.as_str()));
        }
    }
    Ok(changes)
}

async fn apply_one(ctx: &Context, owner: &Owner, kind: ChildKind, name: &str, value: &serde_json::Value) -> Result<()> {
    let params = PatchParams::apply(MANAGER).force();
    api(ctx, owner, kind)
        .patch(name, &params, &Patch::Apply(value))
        .await
        .map(drop)
        .map_err(|source| Error::Apply {
            kind: kind.as_str(),
            name: name.to_owned(),
            source,
        })
}

/// The API of `kind` in the owner's namespace, for dynamic objects.
fn api(ctx: &Context, owner: &Owner, kind: ChildKind) -> Api<DynamicObject> {
    Api::namespaced_with(ctx.client.clone(), &owner.namespace, &kind.api_resource())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_the_server_adds_are_not_drift() {
        let desired = json!({ "spec": { "replicas": 2, "ports": [{ "port": 80 }], "args": [], "paused": false } });
        let live = json!({ "spec": { "replicas": 2, "ports": [{ "port": 80, "protocol": "TCP" }], "revisionHistoryLimit": 10 } });
        assert!(covers(&live, &desired));
    }

    #[test]
    fn a_hand_edit_of_a_field_the_operator_sets_is_drift() {
        let desired = json!({ "spec": { "replicas": 2, "ports": [{ "port": 80 }] } });
        assert!(!covers(
            &json!({ "spec": { "replicas": 3, "ports": [{ "port": 80 }] } }),
            &desired
        ));
        assert!(!covers(&json!({ "spec": { "ports": [{ "port": 80 }] } }), &desired));
        assert!(!covers(
            &json!({ "spec": { "replicas": 2, "ports": [{ "port": 80 }, { "port": 81 }] } }),
            &desired
        ));
        assert!(!covers(
            &json!({ "spec": { "replicas": 2, "ports": [{ "port": 8080 }] } }),
            &desired
        ));
    }

    #[test]
    fn the_difference_names_the_field() {
        let desired = json!({ "spec": { "replicas": 2, "ports": [{ "port": 80 }] } });
        let live = json!({ "spec": { "replicas": 2, "ports": [{ "port": 8080 }] } });
        assert_eq!(difference(&live, &desired).as_deref(), Some("spec.ports[0].port"));
        assert_eq!(difference(&json!({}), &desired).as_deref(), Some("spec"));
    }

    #[test]
    fn quantities_compare_by_amount() {
        let desired = json!({ "limits": { "cpu": "0.5", "memory": "1024Mi", "storage": "1e3" } });
        assert!(covers(
            &json!({ "limits": { "cpu": "500m", "memory": "1Gi", "storage": "1k" } }),
            &desired
        ));
        assert!(!covers(
            &json!({ "limits": { "cpu": "600m", "memory": "1Gi", "storage": "1k" } }),
            &desired
        ));
        // Elsewhere a string is only equal to itself.
        assert!(!covers(
            &json!({ "env": { "value": "1.20" } }),
            &json!({ "env": { "value": "1.2" } })
        ));
    }
}

//! Status: conditions that keep their transition time while unchanged, a status write only when something changed,
//! and Events for what the operator did and why something failed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::children::MANAGER;
use crate::context::Context;
use crate::error::{Error, Result};

/// One of airq's resources, as the status functions handle it.
pub trait Airq:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + std::fmt::Debug
{
}

impl<K> Airq for K where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug
{
}

/// The conditions' `status` values.
pub fn status_word(value: bool) -> String {
    if value { "True" } else { "False" }.to_owned()
}

/// A condition for `generation`; it keeps the `lastTransitionTime` of the same condition in `previous` when its
/// status did not change.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    value: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    let status = status_word(value);
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| Time(Timestamp::now()), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// Writes `status` into the resource's status subresource, unless it is already what the resource has.
pub async fn update<K, S>(ctx: &Context, resource: &K, current: Option<&S>, status: S) -> Result<bool>
where
    K: Airq,
    S: Serialize + PartialEq,
{
    if current == Some(&status) {
        return Ok(false);
    }
    let fingerprint = status_fingerprint(&status)?;
    let status = serde_json::to_value(&status).map_err(|e| Error::Serialize("status", e))?;
    send_status(ctx, resource, fingerprint, &status).await
}

/// Merge-patches the status with `patch`, whose result has `fingerprint`, unless this operator wrote that status last:
/// the object in hand may predate the status written a moment ago (its watch event not yet in), and the same status,
/// but for its transition times, is not written again. Remembered by UID: an object deleted and created again under
/// the same name is another object, with no status yet. True when written.
async fn send_status<K: Airq>(
    ctx: &Context,
    resource: &K,
    fingerprint: String,
    patch: &serde_json::Value,
) -> Result<bool> {
    let uid = resource.meta().uid.clone().ok_or(Error::MissingMetadata("uid"))?;
    if ctx.memory.last_status(&uid).as_deref() == Some(fingerprint.as_str()) {
        return Ok(false);
    }
    let namespace = resource.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PatchParams {
        field_manager: Some(MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch_status(
        &resource.name_any(),
        &params,
        &Patch::Merge(&serde_json::json!({ "status": patch })),
    )
    .await
    .map_err(Error::Status)?;
    ctx.stats.wrote(kind_label::<K>(), "status");
    ctx.memory.remember_status(&uid, fingerprint);
    Ok(true)
}

/// Parks `resource` until it changes: `Ready=False` with `reason` and `message` as its only condition, the status
/// fields `extra` sets (a JSON merge: `null` removes one), and a Warning Event when the reason or the generation is
/// new. Every controller stops this way on what only a change of the resource (or of what it names) can fix.
pub async fn park<K>(ctx: &Context, resource: &K, reason: &str, message: String, extra: serde_json::Value) -> Result<()>
where
    K: Airq,
{
    let generation = resource.meta().generation;
    let current = serde_json::to_value(resource)
        .map_err(|e| Error::Serialize("resource", e))?
        .get("status")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let previous: Vec<Condition> = current
        .get("conditions")
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    let previous_reason = previous.iter().find(|c| c.type_ == "Ready").map(|c| c.reason.as_str());
    let previous_generation = current.get("observedGeneration").and_then(serde_json::Value::as_i64);
    if previous_reason != Some(reason) || previous_generation != generation {
        event(ctx, resource, true, reason, "Validate", message.clone());
    }
    let ready = condition(&previous, "Ready", false, reason, message, generation);
    let mut patch = serde_json::json!({ "observedGeneration": generation, "conditions": [ready] });
    // Set as they are: a `null` must reach the API server, where it removes the field.
    if let (Some(patch), serde_json::Value::Object(extra)) = (patch.as_object_mut(), extra) {
        patch.extend(extra);
    }
    let mut wanted = current.clone();
    json_patch::merge(&mut wanted, &patch);
    write_status(ctx, resource, &current, &wanted, &patch).await
}

/// Parks `resource` when the API server refused one of its children (an invalid or unreadable object, a forbidden
/// write, a quota):
/// `Ready=False`, reason `ChildRefused`, with the server's message, and an Event. The error is returned, so the
/// reconcile is retried with backoff (a forbidden write may be allowed later).
pub async fn refused<K>(ctx: &Context, resource: &K, error: Error) -> Error
where
    K: Airq,
{
    if let Error::Apply {
        kind,
        name,
        source: kube::Error::Api(status),
    } = &error
        // 4xx: refused; 500: the API server could not even read the object (an invalid quantity, say). Not a conflict
        // or a throttle, which pass by themselves.
        && (400..=500).contains(&status.code)
        && status.code != 409
        && status.code != 429
    {
        let message = format!("the API server refused {kind} {name}: {}", status.message);
        if let Err(e) = park(ctx, resource, "ChildRefused", message, serde_json::json!({})).await {
            tracing::warn!(error = %e, "cannot write the status of a refused child");
        }
    }
    error
}

/// Merge-patches the status with `patch` unless `wanted` (the status after it) is what `current` already is, or what
/// this operator wrote last (transition times aside).
async fn write_status<K: Airq>(
    ctx: &Context,
    resource: &K,
    current: &serde_json::Value,
    wanted: &serde_json::Value,
    patch: &serde_json::Value,
) -> Result<()> {
    let fingerprint = status_fingerprint(wanted)?;
    if status_fingerprint(current)? != fingerprint {
        send_status(ctx, resource, fingerprint, patch).await?;
    }
    Ok(())
}

/// The status as JSON without the conditions' transition times.
fn status_fingerprint<S: Serialize>(status: &S) -> Result<String> {
    let mut value = serde_json::to_value(status).map_err(|e| Error::Serialize("status", e))?;
    if let Some(conditions) = value.get_mut("conditions").and_then(|c| c.as_array_mut()) {
        for condition in conditions {
            if let Some(condition) = condition.as_object_mut() {
                condition.remove("lastTransitionTime");
            }
        }
    }
    Ok(value.to_string())
}

/// Queues an Event about `resource` (published in order by the Events task, `crate::events`). A failure to publish
/// is logged, not returned: the reconcile itself went on.
pub fn event<K>(ctx: &Context, resource: &K, warning: bool, reason: &str, action: &str, note: String)
where
    K: Resource<DynamicType = ()>,
{
    let note = crate::events::Note {
        warning,
        reason,
        action,
        note,
    };
    ctx.events.send(resource.object_ref(&()), note, kind_label::<K>());
}

/// The kind name as a `'static` label.
pub fn kind_label<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "Platform" => "Platform",
        "AdhocService" => "AdhocService",
        "EtlSchedule" => "EtlSchedule",
        "PredictiveModel" => "PredictiveModel",
        _ => "Unknown",
    }
}

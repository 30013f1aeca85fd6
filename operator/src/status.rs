//! Status: conditions that keep their transition time while unchanged, a status write only when something changed,
//! and Events for what the operator did and why something failed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::children::MANAGER;
use crate::context::Context;
use crate::error::{Error, Result};

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
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(&status) {
        return Ok(false);
    }
    // The object in hand may predate the status this operator wrote a moment ago (its watch event not yet in): then
    // the same status, but for its transition times, is not written again.
    let key = format!(
        "{}/{}/{}",
        kind_label::<K>(),
        resource.namespace().unwrap_or_default(),
        resource.name_any()
    );
    let fingerprint = status_fingerprint(&status)?;
    if ctx.last_status(&key).as_deref() == Some(fingerprint.as_str()) {
        return Ok(false);
    }
    let namespace = resource.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({ "status": status });
    let params = PatchParams {
        field_manager: Some(MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch_status(&resource.name_any(), &params, &Patch::Merge(&patch))
        .await
        .map_err(Error::Status)?;
    ctx.stats.wrote(kind_label::<K>(), "status");
    ctx.remember_status(key, fingerprint);
    Ok(true)
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

/// Publishes an Event about `resource`. A failure to publish is logged, not returned: the reconcile itself went on.
pub async fn event<K>(ctx: &Context, resource: &K, warning: bool, reason: &str, action: &str, note: String)
where
    K: Resource<DynamicType = ()>,
{
    let event = Event {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: reason.to_owned(),
        note: Some(truncate(note, 1000)),
        action: action.to_owned(),
        secondary: None,
    };
    match ctx.recorder.publish(&event, &resource.object_ref(&())).await {
        Ok(()) => ctx.stats.wrote(kind_label::<K>(), "event"),
        Err(err) => tracing::warn!(error = %err, reason, "cannot publish an event"),
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
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

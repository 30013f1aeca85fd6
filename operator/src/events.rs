//! Events (`events.k8s.io/v1`) about airq's resources, as `kubectl describe` and `kubectl events` show them.
//!
//! A reconcile only queues its Events ([`Events::send`]); one task publishes them in order, as client-go's event
//! broadcaster does, so that Events never hold up the children and the status. A full queue (a burst of more than
//! [`QUEUE`] Events) drops the newest, counted in `airq_operator_events_dropped_total`.
//!
//! The same event again — same object, type, reason, action *and note* — within [`SERIES_WINDOW`] only counts up the
//! first one's series; an event with another note is a new Event. (kube's `Recorder` keys its series without the
//! note, so a reason repeated with a new message kept showing the first message.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::mpsc;

use crate::context::Stats;

/// How long a repeat counts up the earlier Event rather than making a new one.
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);
/// The most Events remembered for counting repeats.
const LIMIT: usize = 10_000;
/// The longest note kept (the API server refuses notes over 1 kB).
const MAX_NOTE: usize = 1000;
/// Events waiting to be published, at most.
pub const QUEUE: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    warning: bool,
    reason: String,
    action: String,
    note: String,
}

struct Sent {
    name: String,
    count: i32,
    at: Instant,
}

/// The queue of Events to publish, as one controller instance.
pub struct Events {
    queue: mpsc::Sender<Queued>,
}

/// One Event to publish.
pub struct Note<'a> {
    pub warning: bool,
    pub reason: &'a str,
    pub action: &'a str,
    pub note: String,
}

struct Queued {
    regarding: ObjectReference,
    /// What the Event says; repeats of the same key count up one Event's series.
    key: Key,
    /// The kind of the object, for the write counters.
    kind: &'static str,
}

impl Events {
    /// Starts the task that publishes the queued Events; it ends when the last sender is dropped, after publishing
    /// what is queued.
    pub fn start(client: kube::Client, controller: &str, instance: &str, stats: Arc<Stats>) -> Self {
        let (queue, mut queued) = mpsc::channel::<Queued>(QUEUE);
        let mut publisher = Publisher {
            client,
            controller: controller.to_owned(),
            instance: instance.to_owned(),
            sent: HashMap::new(),
        };
        tokio::spawn(async move {
            while let Some(event) = queued.recv().await {
                let (kind, reason) = (event.kind, event.key.reason.clone());
                match publisher.publish(event).await {
                    Ok(()) => stats.wrote(kind, "event"),
                    Err(err) => tracing::warn!(error = %err, %reason, "cannot publish an event"),
                }
            }
        });
        Self { queue }
    }

    /// Queues `note` about the object `regarding` (of `kind`), without waiting for it to be published.
    pub fn send(&self, regarding: ObjectReference, note: Note<'_>, kind: &'static str) {
        let key = Key {
            uid: regarding.uid.clone().unwrap_or_default(),
            warning: note.warning,
            reason: note.reason.to_owned(),
            action: note.action.to_owned(),
            note: truncate(note.note, MAX_NOTE),
        };
        if let Err(err) = self.queue.try_send(Queued { regarding, key, kind }) {
            metrics::counter!("airq_operator_events_dropped_total").increment(1);
            let reason = err.into_inner().key.reason;
            tracing::warn!(%reason, "an event was dropped: the queue of events to publish is full");
        }
    }
}

/// Publishes Events, remembering recent ones to count repeats.
struct Publisher {
    client: kube::Client,
    controller: String,
    instance: String,
    sent: HashMap<Key, Sent>,
}

impl Publisher {
    /// Publishes `event`: a new Event, or one more in the series of the same Event sent
    /// within [`SERIES_WINDOW`].
    async fn publish(&mut self, event: Queued) -> Result<(), kube::Error> {
        let Queued { regarding, key, .. } = event;
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".to_owned());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let repeat = self.repeat(&key);
        if let Some((name, count)) = repeat {
            let patch = serde_json::json!({
                "series": EventSeries { count, last_observed_time: MicroTime(Timestamp::now()) },
            });
            match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => return Ok(()),
                // Expired or deleted meanwhile: a new Event.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let now = Timestamp::now();
        let name = format!(
            "{}.{:x}",
            regarding.name.as_deref().unwrap_or(&self.controller),
            now.as_nanosecond()
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(if key.warning { "Warning" } else { "Normal" }.to_owned()),
            reason: Some(key.reason.clone()),
            action: Some(key.action.clone()),
            note: Some(key.note.clone()),
            regarding: Some(regarding),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        api.create(&PostParams::default(), &event).await?;
        self.sent.insert(
            key,
            Sent {
                name,
                count: 1,
                at: Instant::now(),
            },
        );
        Ok(())
    }

    /// The name of the Event `key` repeats and its series' new count; forgets Events past the window.
    fn repeat(&mut self, key: &Key) -> Option<(String, i32)> {
        let sent = &mut self.sent;
        sent.retain(|_, s| s.at.elapsed() < SERIES_WINDOW);
        if sent.len() >= LIMIT {
            sent.clear();
        }
        let entry = sent.get_mut(key)?;
        entry.count = entry.count.saturating_add(1);
        entry.at = Instant::now();
        // A series counts the repeats: the first Event is occurrence 1, so the second makes a series of 2.
        Some((entry.name.clone(), entry.count))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_on_a_character_boundary() {
        let note = "é".repeat(600);
        let cut = truncate(note, MAX_NOTE);
        assert!(cut.len() <= MAX_NOTE);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}

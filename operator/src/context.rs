//! What every reconciler shares: the client, the caches of the objects it watches, the event recorder, the images,
//! and the counters of what it did.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airq_api::{AdhocService, EtlSchedule, Platform, PredictiveModel};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::config::OperatorArgs;

/// The operator's caches, filled by watches: reconcilers read these instead of the API server, so a reconcile that
/// changes nothing makes no request at all.
#[derive(Clone)]
pub struct Stores {
    pub platforms: Store<Platform>,
    pub adhoc_services: Store<AdhocService>,
    pub etl_schedules: Store<EtlSchedule>,
    pub models: Store<PredictiveModel>,
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
    pub ingresses: Store<Ingress>,
    pub config_maps: Store<ConfigMap>,
    pub cron_jobs: Store<CronJob>,
    pub jobs: Store<Job>,
    pub pod_disruption_budgets: Store<PodDisruptionBudget>,
    /// Secrets' metadata only: the operator checks that referenced Secrets exist, never reads their data.
    pub secrets: Store<PartialObjectMeta<Secret>>,
}

impl Stores {
    /// Whether Secret `name` exists in `namespace`.
    pub fn secret_exists(&self, namespace: &str, name: &str) -> bool {
        self.secrets.get(&ObjectRef::new(name).within(namespace)).is_some()
    }
}

/// Counts of what the operator did, by resource kind; also exported as Prometheus metrics.
#[derive(Default)]
pub struct Stats {
    reconciles: Mutex<HashMap<&'static str, u64>>,
    writes: AtomicU64,
}

impl Stats {
    /// Counts a reconcile of a `kind` resource.
    pub fn reconciled(&self, kind: &'static str, outcome: &'static str, took: Duration) {
        *self
            .reconciles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
        metrics::counter!("airq_operator_reconciles_total", "kind" => kind, "outcome" => outcome).increment(1);
        metrics::histogram!("airq_operator_reconcile_duration_seconds", "kind" => kind).record(took.as_secs_f64());
    }

    /// Counts one write to the API server (an apply, a delete, a status update or an Event).
    pub fn wrote(&self, kind: &'static str, what: &'static str) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("airq_operator_writes_total", "kind" => kind, "what" => what).increment(1);
    }

    /// Reconciles of `kind` so far.
    pub fn reconciles(&self, kind: &str) -> u64 {
        self.reconciles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    /// Writes so far, of every kind.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: kube::Client,
    pub stores: Stores,
    pub events: crate::events::Events,
    pub args: OperatorArgs,
    pub stats: Arc<Stats>,
    /// What the operator remembers per object, by UID.
    pub memory: Arc<Memory>,
    /// Whether the cluster serves the Prometheus Operator's kinds, and when that was asked.
    monitoring: tokio::sync::Mutex<Option<(std::time::Instant, crate::monitoring::Apis)>>,
    /// The operator's objects of those kinds, each watched from the first time it is needed.
    monitoring_caches: tokio::sync::Mutex<HashMap<&'static str, MonitoringCache>>,
}

/// A watch of one of the Prometheus Operator's kinds (the operator's objects only) and its cache.
struct MonitoringCache {
    store: Store<kube::api::DynamicObject>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Context {
    fn drop(&mut self) {
        for cache in self.monitoring_caches.get_mut().values() {
            cache.task.abort();
        }
    }
}

impl Context {
    pub fn new(
        client: kube::Client,
        stores: Stores,
        events: crate::events::Events,
        stats: Arc<Stats>,
        args: OperatorArgs,
        memory: Arc<Memory>,
    ) -> Self {
        Self {
            client,
            stores,
            events,
            args,
            stats,
            memory,
            monitoring: tokio::sync::Mutex::new(None),
            monitoring_caches: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The cache of the operator's objects of the Prometheus Operator kind `kind` (`resource`), watched from the first
    /// call on; `None` while it cannot be filled (the kind just appeared, or the watch is refused), so that the caller
    /// asks the API server instead.
    pub async fn monitoring_cache(
        &self,
        kind: &'static str,
        resource: &kube::api::ApiResource,
    ) -> Option<Store<kube::api::DynamicObject>> {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, reflector, watcher};
        let mut caches = self.monitoring_caches.lock().await;
        let store = match caches.get(kind) {
            Some(cache) => cache.store.clone(),
            None => {
                let api: kube::Api<kube::api::DynamicObject> = match &self.args.namespace {
                    Some(namespace) => kube::Api::namespaced_with(self.client.clone(), namespace, resource),
                    None => kube::Api::all_with(self.client.clone(), resource),
                };
                let writer = reflector::store::Writer::new(resource.clone());
                let store = writer.as_reader();
                let config = watcher::Config::default().labels(&format!(
                    "{}={}",
                    crate::children::MANAGED_BY.0,
                    crate::children::MANAGED_BY.1
                ));
                let stream = watcher(api, config)
                    .default_backoff()
                    .reflect(writer)
                    .for_each(move |event| {
                        if let Err(err) = event {
                            tracing::warn!(kind, error = %err, "watch error; retrying");
                        }
                        futures::future::ready(())
                    });
                let task = tokio::spawn(stream);
                caches.insert(
                    kind,
                    MonitoringCache {
                        store: store.clone(),
                        task,
                    },
                );
                store
            }
        };
        drop(caches);
        tokio::time::timeout(Duration::from_secs(5), store.wait_until_ready())
            .await
            .ok()?
            .ok()?;
        Some(store)
    }

    /// Which of the Prometheus Operator's kinds the cluster serves, asked at most every
    /// `--monitoring-recheck-seconds`. A failed discovery counts as "not served" until the next check.
    pub async fn monitoring_apis(&self) -> crate::monitoring::Apis {
        let mut cached = self.monitoring.lock().await;
        if let Some((at, apis)) = *cached
            && at.elapsed() < crate::monitoring::recheck(self)
        {
            return apis;
        }
        let apis = match crate::monitoring::discover(&self.client).await {
            Ok(apis) => apis,
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask the API server whether it serves ServiceMonitors");
                crate::monitoring::Apis::default()
            }
        };
        if cached.is_none_or(|(_, before)| before != apis) {
            tracing::info!(
                service_monitors = apis.service_monitors,
                prometheus_rules = apis.prometheus_rules,
                "Prometheus Operator API"
            );
        }
        *cached = Some((std::time::Instant::now(), apis));
        apis
    }
}

/// What the operator remembers about each of its resources between reconciles: the last status it wrote (without
/// transition times), the failures in a row (for the backoff) and the count of reconciles. Keyed by UID, so that an object deleted and created
/// again under the same name starts afresh; an object's entries are dropped when it is deleted, and the whole is
/// bounded (past [`Memory::LIMIT`] objects it starts over: the cost is one status write per object).
#[derive(Default)]
pub struct Memory {
    objects: Mutex<HashMap<String, Remembered>>,
}

#[derive(Default)]
struct Remembered {
    status: Option<String>,
    failures: u32,
    reconciles: u64,
}

impl Memory {
    /// The most objects remembered.
    pub const LIMIT: usize = 100_000;
    /// The longest wait between retries of a failing reconcile.
    pub const MAX_BACKOFF: Duration = Duration::from_secs(256);

    fn with<T>(&self, uid: &str, f: impl FnOnce(&mut Remembered) -> T) -> T {
        let mut objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        if objects.len() >= Self::LIMIT && !objects.contains_key(uid) {
            objects.clear();
        }
        f(objects.entry(uid.to_owned()).or_default())
    }

    /// The status last written for the object `uid`, without transition times.
    pub fn last_status(&self, uid: &str) -> Option<String> {
        let objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        objects.get(uid).and_then(|r| r.status.clone())
    }

    /// Remembers the status written for the object `uid`.
    pub fn remember_status(&self, uid: &str, status: String) {
        self.with(uid, |r| r.status = Some(status));
    }

    /// The delay before retrying the object `uid` after one more failure: 1 s, doubling, at most
    /// [`Memory::MAX_BACKOFF`].
    pub fn backoff(&self, uid: &str) -> Duration {
        self.with(uid, |r| {
            r.failures = r.failures.saturating_add(1);
            Duration::from_secs(1u64 << (r.failures - 1).min(8)).min(Self::MAX_BACKOFF)
        })
    }

    /// Forgets the failures of the object `uid` after a success.
    pub fn succeeded(&self, uid: &str) {
        let mut objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = objects.get_mut(uid) {
            r.failures = 0;
        }
    }

    /// Counts a reconcile of the object `uid`.
    pub fn reconciled(&self, uid: &str) {
        self.with(uid, |r| r.reconciles = r.reconciles.saturating_add(1));
    }

    /// The reconciles of the object `uid` since it was first seen (or since the memory started over).
    pub fn reconciles(&self, uid: &str) -> u64 {
        let objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        objects.get(uid).map_or(0, |r| r.reconciles)
    }

    /// Forgets everything about the object `uid`: it was deleted.
    pub fn forget(&self, uid: &str) {
        self.objects.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
    }

    /// How many objects are remembered.
    pub fn len(&self) -> usize {
        self.objects.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_is_remembered_by_uid_and_forgotten_when_deleted() {
        let memory = Memory::default();
        memory.remember_status("uid-1", "ready".to_owned());
        assert_eq!(memory.last_status("uid-1").as_deref(), Some("ready"));
        // The same name created again has another UID: nothing is remembered about it.
        assert_eq!(memory.last_status("uid-2"), None);
        memory.forget("uid-1");
        assert_eq!(memory.last_status("uid-1"), None);
        assert!(memory.is_empty());
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_restarts_after_a_success() {
        let memory = Memory::default();
        let delays: Vec<u64> = (0..11).map(|_| memory.backoff("u").as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 256, 256]);
        memory.succeeded("u");
        assert_eq!(memory.backoff("u").as_secs(), 1);
    }

    #[test]
    fn memory_is_bounded() {
        let memory = Memory::default();
        for i in 0..Memory::LIMIT + 10 {
            memory.remember_status(&format!("uid-{i}"), String::new());
        }
        assert!(memory.len() <= Memory::LIMIT);
    }
}

//! What every reconciler shares: the client, the caches of the objects it watches, the event recorder, the images,
//! and the counters of what it did.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use airq_api::{AdhocService, EtlSchedule, Platform, PredictiveModel};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::PartialObjectMeta;
use kube::runtime::events::Recorder;
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
    pub recorder: Recorder,
    pub args: OperatorArgs,
    pub stats: Stats,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// The last status written per object (without transition times).
    statuses: Mutex<HashMap<String, String>>,
    /// Whether the cluster serves the Prometheus Operator's kinds, and when that was asked.
    monitoring: tokio::sync::Mutex<Option<(std::time::Instant, crate::monitoring::Apis)>>,
}

impl Context {
    pub fn new(client: kube::Client, stores: Stores, recorder: Recorder, args: OperatorArgs) -> Self {
        Self {
            client,
            stores,
            recorder,
            args,
            stats: Stats::default(),
            failures: Mutex::new(HashMap::new()),
            statuses: Mutex::new(HashMap::new()),
            monitoring: tokio::sync::Mutex::new(None),
        }
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

    /// The status last written for `key`, without transition times.
    pub fn last_status(&self, key: &str) -> Option<String> {
        self.statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Remembers the status written for `key`.
    pub fn remember_status(&self, key: String, status: String) {
        self.statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, status);
    }

    /// The delay before retrying `key` after one more failure: 1 s, doubling, at most 5 minutes.
    pub fn backoff(&self, key: String) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let attempt = failures.entry(key).or_default();
        *attempt = attempt.saturating_add(1);
        Duration::from_secs(1u64 << (*attempt - 1).min(8)).min(Duration::from_secs(300))
    }

    /// Forgets the failures of `key` after a success.
    pub fn succeeded(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

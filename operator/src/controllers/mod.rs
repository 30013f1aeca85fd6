//! The controllers and their wiring: one reflector per watched kind fills the caches the reconcilers read; one
//! controller per airq resource reacts to changes of the resource, of the objects it owns, and of what it refers to
//! (its Secrets, its Jobs, the Platform or AdhocServices of its namespace).

pub mod adhoc;
pub mod etl;
pub mod jobs;
pub mod model;
pub mod platform;

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airq_api::{AdhocService, EtlSchedule, Platform, PredictiveModel};
use futures::{FutureExt, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;

use crate::children::{MANAGED_BY, MANAGER, OWNER_KIND_LABEL};
use crate::config::OperatorArgs;
use crate::context::{Context, Memory, Stores};
use crate::error::{Error, Result};

/// How long the caches may take to fill before the operator gives up starting.
const CACHE_TIMEOUT: Duration = Duration::from_secs(60);

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

fn managed() -> watcher::Config {
    watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1))
}

type Sender<K> = futures::channel::mpsc::UnboundedSender<Result<K, watcher::Error>>;
type Receiver<K> = futures::channel::mpsc::UnboundedReceiver<Result<K, watcher::Error>>;
/// Decides whether a change reaches a subscriber: the object, and whether it was deleted.
type Filter<K> = Box<dyn Fn(&K, bool) -> bool + Send + Sync>;

/// A watched kind: one watch fills its cache, then hands each change (deletions included) to the controllers that
/// care. A reconcile triggered this way always finds the change already in the cache.
struct Feed<K: Resource<DynamicType = ()> + Clone + 'static> {
    reader: Store<K>,
    writer: reflector::store::Writer<K>,
    subscribers: Vec<(Filter<K>, Sender<K>)>,
    /// Told the UID of each deleted object.
    memory: Option<Arc<Memory>>,
}

impl<K> Feed<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    fn new() -> Self {
        let (reader, writer) = reflector::store();
        Self {
            reader,
            writer,
            subscribers: Vec::new(),
            memory: None,
        }
    }

    /// A feed whose deleted objects are forgotten by `memory`.
    fn remembered_in(memory: &Arc<Memory>) -> Self {
        Self {
            memory: Some(memory.clone()),
            ..Self::new()
        }
    }

    /// The changes `filter` accepts.
    fn subscribe(&mut self, filter: impl Fn(&K) -> bool + Send + Sync + 'static) -> Receiver<K> {
        self.subscribe_changes(move |object, _| filter(object))
    }

    /// The changes `filter` accepts, told whether the object was deleted.
    fn subscribe_changes(&mut self, filter: impl Fn(&K, bool) -> bool + Send + Sync + 'static) -> Receiver<K> {
        let (sender, receiver) = futures::channel::mpsc::unbounded();
        self.subscribers.push((Box::new(filter), sender));
        receiver
    }

    /// Starts the watch (without managed fields: they are large and never read).
    fn start(self, tasks: &mut JoinSet<()>, api: Api<K>, config: watcher::Config) -> Store<K> {
        let Self {
            reader,
            writer,
            subscribers,
            memory,
        } = self;
        let stream = watcher(api, config)
            .default_backoff()
            .modify(|object: &mut K| object.managed_fields_mut().clear())
            .reflect(writer)
            .for_each(move |event| {
                let change = match event {
                    Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => Some((object, false)),
                    Ok(watcher::Event::Delete(object)) => Some((object, true)),
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
                    Err(err) => {
                        tracing::warn!(kind = %K::kind(&()), error = %err, "watch error; retrying");
                        None
                    }
                };
                if let Some((object, deleted)) = change {
                    if deleted && let (Some(memory), Some(uid)) = (&memory, &object.meta().uid) {
                        memory.forget(uid);
                    }
                    for (filter, sender) in &subscribers {
                        if filter(&object, deleted) {
                            let _ = sender.unbounded_send(Ok(object.clone()));
                        }
                    }
                }
                futures::future::ready(())
            });
        tasks.spawn(stream);
        reader
    }
}

fn owned_by_kind<K: Resource>(kind: &'static str) -> impl Fn(&K) -> bool + Send + Sync + 'static {
    move |object: &K| object.labels().get(OWNER_KIND_LABEL).map(String::as_str) == Some(kind)
}

fn has_label<K: Resource>(label: &'static str) -> impl Fn(&K) -> bool + Send + Sync + 'static {
    move |object: &K| object.labels().contains_key(label)
}

fn always<K>(_: &K) -> bool {
    true
}

/// Passes an object's change only when `fingerprint` of it differs from the last one passed (and always its
/// deletion): status-only updates of many objects then do not keep re-triggering (and, with a debounce, starving)
/// a reconcile that depends only on their specs.
fn when_changed<K, F>(
    fingerprint: impl Fn(&K) -> F + Send + Sync + 'static,
) -> impl Fn(&K, bool) -> bool + Send + Sync + 'static
where
    K: Resource,
    F: PartialEq + Send + 'static,
{
    let seen: std::sync::Mutex<std::collections::HashMap<String, F>> = std::sync::Mutex::default();
    move |object: &K, deleted: bool| {
        let key = object.meta().uid.clone().unwrap_or_else(|| object.name_any());
        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        if deleted {
            seen.remove(&key);
            return true;
        }
        let now = fingerprint(object);
        if seen.get(&key) == Some(&now) {
            return false;
        }
        seen.insert(key, now);
        true
    }
}

/// The running operator: its shared context, and the tasks of its watches and controllers.
pub struct Operator {
    pub ctx: Arc<Context>,
    watches: JoinSet<()>,
    controllers: JoinSet<()>,
    stop: tokio::sync::watch::Sender<bool>,
    /// Keeps the per-resource gauges in `/metrics` while the controllers run.
    _metrics: airq_core::telemetry::CollectorGuard,
}

impl Operator {
    /// Fills the caches, then starts the four controllers.
    pub async fn start(client: Client, args: OperatorArgs) -> Result<Self, kube::Error> {
        let ns = args.namespace.clone();
        let ns = ns.as_deref();
        let all = watcher::Config::default;

        let memory = Arc::new(Memory::default());
        let mut platforms = Feed::<Platform>::remembered_in(&memory);
        let mut adhoc_services = Feed::<AdhocService>::remembered_in(&memory);
        let mut etl_schedules = Feed::<EtlSchedule>::remembered_in(&memory);
        let mut models = Feed::<PredictiveModel>::remembered_in(&memory);
        let mut deployments = Feed::<Deployment>::new();
        let mut services = Feed::<Service>::new();
        let mut ingresses = Feed::<Ingress>::new();
        let mut config_maps = Feed::<ConfigMap>::new();
        let mut cron_jobs = Feed::<CronJob>::new();
        let mut jobs = Feed::<Job>::new();
        let pod_disruption_budgets = Feed::<PodDisruptionBudget>::new();
        let mut secrets = Feed::<PartialObjectMeta<Secret>>::new();

        // Who hears about what.
        let platform_main = platforms.subscribe(always);
        // An AdhocService reads its Platform's spec (the ingress host of its URL) and whether it exists.
        let platform_for_adhoc = platforms.subscribe_changes(when_changed(|p: &Platform| {
            (p.metadata.generation, p.metadata.deletion_timestamp.is_some())
        }));
        let adhoc_main = adhoc_services.subscribe(always);
        // The route table depends on each AdhocService's spec and whether it is being deleted, not on its status.
        let adhoc_for_platform = adhoc_services.subscribe_changes(when_changed(|a: &AdhocService| {
            (a.metadata.generation, a.metadata.deletion_timestamp.is_some())
        }));
        let adhoc_for_peers = adhoc_services.subscribe(always);
        let etl_main = etl_schedules.subscribe(always);
        let model_main = models.subscribe(always);
        let adhoc_deployments = deployments.subscribe(owned_by_kind("AdhocService"));
        let platform_deployments = deployments.subscribe(owned_by_kind("Platform"));
        let model_deployments = deployments.subscribe(owned_by_kind("PredictiveModel"));
        let adhoc_services_children = services.subscribe(owned_by_kind("AdhocService"));
        let platform_services = services.subscribe(owned_by_kind("Platform"));
        let model_services = services.subscribe(owned_by_kind("PredictiveModel"));
        let adhoc_ingresses = ingresses.subscribe(owned_by_kind("AdhocService"));
        let platform_ingresses = ingresses.subscribe(owned_by_kind("Platform"));
        let platform_config_maps = config_maps.subscribe(owned_by_kind("Platform"));
        let etl_cron_jobs = cron_jobs.subscribe(owned_by_kind("EtlSchedule"));
        let model_cron_jobs = cron_jobs.subscribe(owned_by_kind("PredictiveModel"));
        let etl_jobs = jobs.subscribe(has_label(etl::SCHEDULE_LABEL));
        let model_jobs = jobs.subscribe(has_label(model::MODEL_LABEL));
        let platform_secrets = secrets.subscribe(always);
        let etl_secrets = secrets.subscribe(always);
        let model_secrets = secrets.subscribe(always);

        let mut tasks = JoinSet::new();
        let stores = Stores {
            platforms: platforms.start(&mut tasks, api(&client, ns), all()),
            adhoc_services: adhoc_services.start(&mut tasks, api(&client, ns), all()),
            etl_schedules: etl_schedules.start(&mut tasks, api(&client, ns), all()),
            models: models.start(&mut tasks, api(&client, ns), all()),
            deployments: deployments.start(&mut tasks, api(&client, ns), managed()),
            services: services.start(&mut tasks, api(&client, ns), managed()),
            ingresses: ingresses.start(&mut tasks, api(&client, ns), managed()),
            config_maps: config_maps.start(&mut tasks, api(&client, ns), managed()),
            cron_jobs: cron_jobs.start(&mut tasks, api(&client, ns), managed()),
            jobs: jobs.start(&mut tasks, api(&client, ns), managed()),
            pod_disruption_budgets: pod_disruption_budgets.start(&mut tasks, api(&client, ns), managed()),
            secrets: secrets.start(&mut tasks, api(&client, ns), all()),
        };
        // Every cache must hold the cluster's state before the first reconcile, or a restart would rewrite
        // objects it believes missing.
        let s = &stores;
        let waits = [
            ("AdhocServices", s.adhoc_services.wait_until_ready().boxed()),
            ("Platforms", s.platforms.wait_until_ready().boxed()),
            ("EtlSchedules", s.etl_schedules.wait_until_ready().boxed()),
            ("PredictiveModels", s.models.wait_until_ready().boxed()),
            ("Deployments", s.deployments.wait_until_ready().boxed()),
            ("Services", s.services.wait_until_ready().boxed()),
            ("Ingresses", s.ingresses.wait_until_ready().boxed()),
            ("ConfigMaps", s.config_maps.wait_until_ready().boxed()),
            ("CronJobs", s.cron_jobs.wait_until_ready().boxed()),
            ("Jobs", s.jobs.wait_until_ready().boxed()),
            (
                "PodDisruptionBudgets",
                s.pod_disruption_budgets.wait_until_ready().boxed(),
            ),
            ("Secrets", s.secrets.wait_until_ready().boxed()),
        ];
        let mut pending: Vec<&str> = waits.iter().map(|(name, _)| *name).collect();
        let mut waiting: futures::stream::FuturesUnordered<_> = waits
            .into_iter()
            .map(|(name, ready)| ready.map(move |r| (name, r)))
            .collect();
        let filled = tokio::time::timeout(CACHE_TIMEOUT, async {
            while let Some((name, _)) = waiting.next().await {
                pending.retain(|p| *p != name);
            }
        })
        .await;
        if filled.is_err() {
            return Err(kube::Error::Service(
                format!(
                    "cannot list and watch {} within {}s: check the operator's RBAC and the logs' watch errors",
                    pending.join(", "),
                    CACHE_TIMEOUT.as_secs()
                )
                .into(),
            ));
        }

        let identity = args.identity.clone().unwrap_or_else(|| MANAGER.to_owned());
        let stats = Arc::new(crate::context::Stats::default());
        let events = crate::events::Events::start(client.clone(), MANAGER, &identity, stats.clone());
        let ctx = Arc::new(Context::new(
            client.clone(),
            stores.clone(),
            events,
            stats,
            args.clone(),
            memory,
        ));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let shutdown = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        };
        let config = ControllerConfig::default().concurrency(args.concurrency);

        // AdhocService: its children, its namespace's Platform, and AdhocServices it may share a route with.
        let by_namespace = stores.adhoc_services.clone();
        let peers = stores.adhoc_services.clone();
        let adhoc = Controller::for_stream(adhoc_main, stores.adhoc_services.clone())
            .with_config(config.clone())
            .owns_stream(adhoc_deployments)
            .owns_stream(adhoc_services_children)
            .owns_stream(adhoc_ingresses)
            .watches_stream(platform_for_adhoc, move |platform: Platform| {
                let namespace = platform.namespace();
                by_namespace
                    .state()
                    .into_iter()
                    .filter(|a| a.namespace() == namespace)
                    .map(|a| ObjectRef::from_obj(a.as_ref()))
                    .collect::<Vec<_>>()
            })
            .watches_stream(adhoc_for_peers, move |changed: AdhocService| {
                route_peers(&peers, &changed)
            })
            .graceful_shutdown_on(shutdown())
            .run(
                |object, ctx| {
                    observe(
                        "AdhocService",
                        object.clone(),
                        ctx.clone(),
                        adhoc::reconcile(object, ctx),
                    )
                },
                error_policy::<AdhocService>,
                ctx.clone(),
            );

        // Platform: its children, every AdhocService of its namespace (the route table), its Secrets.
        let platform_store = stores.platforms.clone();
        let platform = Controller::for_stream(platform_main, stores.platforms.clone())
            .with_config(config.clone().debounce(Duration::from_millis(500)))
            .owns_stream(platform_deployments)
            .owns_stream(platform_services)
            .owns_stream(platform_config_maps)
            .owns_stream(platform_ingresses)
            .watches_stream(adhoc_for_platform, |adhoc: AdhocService| platform::platform_of(&adhoc))
            .watches_stream(platform_secrets, move |secret: PartialObjectMeta<Secret>| {
                referring(&platform_store, &secret, |p: &Platform| {
                    let mut names = vec![p.spec.database.secret_name.clone()];
                    names.extend(p.spec.admin_key_secret.as_ref().map(|s| s.name.clone()));
                    names.extend(p.spec.key_hash_secret.as_ref().map(|s| s.name.clone()));
                    names
                })
            })
            .graceful_shutdown_on(shutdown())
            .run(
                |object, ctx| {
                    observe(
                        "Platform",
                        object.clone(),
                        ctx.clone(),
                        platform::reconcile(object, ctx),
                    )
                },
                error_policy::<Platform>,
                ctx.clone(),
            );

        // EtlSchedule: its CronJob, its Jobs and those its CronJob starts, its Secrets.
        let etl_store = stores.etl_schedules.clone();
        let etl = Controller::for_stream(etl_main, stores.etl_schedules.clone())
            .with_config(config.clone())
            .owns_stream(etl_cron_jobs)
            .watches_stream(etl_jobs, |job: Job| etl::schedule_of_job(&job))
            .watches_stream(etl_secrets, move |secret: PartialObjectMeta<Secret>| {
                referring(&etl_store, &secret, |e: &EtlSchedule| {
                    let mut names = vec![e.spec.database.secret_name.clone()];
                    names.extend(e.spec.source.openaq.as_ref().map(|o| o.api_key_secret.name.clone()));
                    names
                })
            })
            .graceful_shutdown_on(shutdown())
            .run(
                |object, ctx| observe("EtlSchedule", object.clone(), ctx.clone(), etl::reconcile(object, ctx)),
                error_policy::<EtlSchedule>,
                ctx.clone(),
            );

        // PredictiveModel: its serving Deployment and Service, its CronJob, its training Jobs, its Secret.
        let model_store = stores.models.clone();
        let model = Controller::for_stream(model_main, stores.models.clone())
            .with_config(config)
            .owns_stream(model_deployments)
            .owns_stream(model_services)
            .owns_stream(model_cron_jobs)
            .watches_stream(model_jobs, |job: Job| model::model_of_job(&job))
            .watches_stream(model_secrets, move |secret: PartialObjectMeta<Secret>| {
                referring(&model_store, &secret, |m: &PredictiveModel| {
                    vec![m.spec.database.secret_name.clone()]
                })
            })
            .graceful_shutdown_on(shutdown())
            .run(
                |object, ctx| {
                    observe(
                        "PredictiveModel",
                        object.clone(),
                        ctx.clone(),
                        model::reconcile(object, ctx),
                    )
                },
                error_policy::<PredictiveModel>,
                ctx.clone(),
            );

        let metric_stores = stores.clone();
        let metrics = airq_core::telemetry::add_collector(Arc::new(move |out: &mut String| {
            crate::monitoring::write_resource_metrics(&metric_stores, out);
        }));

        let mut controllers = JoinSet::new();
        controllers.spawn(adhoc.for_each(|_| async {}));
        controllers.spawn(platform.for_each(|_| async {}));
        controllers.spawn(etl.for_each(|_| async {}));
        controllers.spawn(model.for_each(|_| async {}));
        Ok(Self {
            ctx,
            watches: tasks,
            controllers,
            stop,
            _metrics: metrics,
        })
    }

    /// Lets reconciles in flight finish (for up to 20 s), then stops every controller and watch.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let finished = tokio::time::timeout(Duration::from_secs(20), async {
            while self.controllers.join_next().await.is_some() {}
        });
        if finished.await.is_err() {
            tracing::warn!("reconciles still running after 20s; stopping them");
        }
        self.controllers.shutdown().await;
        self.watches.shutdown().await;
    }

    /// Completes if a controller stops on its own (it should not).
    pub async fn failed(&mut self) {
        let _ = self.controllers.join_next().await;
    }
}

/// The AdhocServices whose route may change when `changed` changes: those with the same host and prefix, and those
/// that lost a route conflict (the winner may have moved away or gone).
fn route_peers(store: &Store<AdhocService>, changed: &AdhocService) -> Vec<ObjectRef<AdhocService>> {
    let namespace = changed.metadata.namespace.as_deref();
    let name = changed.metadata.name.as_deref();
    let changed_key = airq_api::routes::route_key(changed);
    store
        .state()
        .into_iter()
        .filter(|a| a.metadata.namespace.as_deref() == namespace && a.metadata.name.as_deref() != name)
        .filter(|a| {
            airq_api::routes::route_key(a) == changed_key
                || a.status.as_ref().is_some_and(|s| {
                    airq_api::common::condition(&s.conditions, "Routed").is_some_and(|c| c.reason == "PathConflict")
                })
        })
        .map(|a| ObjectRef::from_obj(a.as_ref()))
        .collect()
}

/// The resources in `store` of the Secret's namespace that name the Secret.
fn referring<K>(
    store: &Store<K>,
    secret: &PartialObjectMeta<Secret>,
    names: impl Fn(&K) -> Vec<String>,
) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let namespace = secret.namespace();
    let secret_name = secret.name_any();
    store
        .state()
        .into_iter()
        .filter(|object| object.namespace() == namespace && names(object).contains(&secret_name))
        .map(|object| ObjectRef::from_obj(object.as_ref()))
        .collect()
}

/// Runs a reconcile and records its count, outcome and duration.
async fn observe<K: Resource>(
    kind: &'static str,
    object: Arc<K>,
    ctx: Arc<Context>,
    reconcile: impl Future<Output = Result<Action>>,
) -> Result<Action> {
    let started = Instant::now();
    if let Some(uid) = &object.meta().uid {
        ctx.memory.reconciled(uid);
    }
    let result = reconcile.await;
    ctx.stats.reconciled(
        kind,
        if result.is_ok() { "success" } else { "error" },
        started.elapsed(),
    );
    if result.is_ok()
        && let Some(uid) = &object.meta().uid
    {
        ctx.memory.succeeded(uid);
    }
    result
}

fn object_key<K: Resource>(kind: &str, object: &K) -> String {
    format!(
        "{kind}/{}/{}",
        object.meta().namespace.as_deref().unwrap_or_default(),
        object.meta().name.as_deref().unwrap_or_default()
    )
}

/// A failed reconcile is retried with exponential backoff; the error is logged and counted by reason.
fn error_policy<K: Resource<DynamicType = ()>>(object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let kind = crate::status::kind_label::<K>();
    let key = object_key(kind, object.as_ref());
    let delay = ctx.memory.backoff(object.meta().uid.as_deref().unwrap_or(&key));
    tracing::warn!(object = %key, error = %error, retry_in = ?delay, "reconcile failed");
    let namespace = object.meta().namespace.clone().unwrap_or_default();
    metrics::counter!(
        "airq_operator_reconcile_errors_total",
        "kind" => kind,
        "reason" => error.metric_label(),
        "airq_namespace" => namespace
    )
    .increment(1);
    Action::requeue(delay)
}

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
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;

use crate::children::{MANAGED_BY, MANAGER};
use crate::config::OperatorArgs;
use crate::context::{Context, Stores};
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

/// Starts a reflector filling a cache of `K`, without managed fields (they are large and never read).
fn cache<K>(tasks: &mut JoinSet<()>, api: Api<K>, config: watcher::Config) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|object: &mut K| object.managed_fields_mut().clear())
        .reflect(writer)
        .for_each(|event| async move {
            if let Err(err) = event {
                tracing::warn!(error = %err, "watch error; retrying");
            }
        });
    tasks.spawn(stream);
    reader
}

/// The running operator: its shared context, and the tasks of its watches and controllers.
pub struct Operator {
    pub ctx: Arc<Context>,
    watches: JoinSet<()>,
    controllers: JoinSet<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Operator {
    /// Fills the caches, then starts the four controllers.
    pub async fn start(client: Client, args: OperatorArgs) -> Result<Self, kube::Error> {
        let ns = args.namespace.clone();
        let ns = ns.as_deref();
        let mut tasks = JoinSet::new();
        let all = watcher::Config::default;
        let secrets = {
            let (reader, writer) = reflector::store();
            let stream = watcher(api::<PartialObjectMeta<Secret>>(&client, ns), all())
                .default_backoff()
                .modify(|object: &mut PartialObjectMeta<Secret>| object.managed_fields_mut().clear())
                .reflect(writer)
                .for_each(|event| async move {
                    if let Err(err) = event {
                        tracing::warn!(kind = "Secret", error = %err, "watch error; retrying");
                    }
                });
            tasks.spawn(stream);
            reader
        };
        let stores = Stores {
            platforms: cache(&mut tasks, api::<Platform>(&client, ns), all()),
            adhoc_services: cache(&mut tasks, api::<AdhocService>(&client, ns), all()),
            etl_schedules: cache(&mut tasks, api::<EtlSchedule>(&client, ns), all()),
            models: cache(&mut tasks, api::<PredictiveModel>(&client, ns), all()),
            deployments: cache(&mut tasks, api::<Deployment>(&client, ns), managed()),
            services: cache(&mut tasks, api::<Service>(&client, ns), managed()),
            ingresses: cache(&mut tasks, api::<Ingress>(&client, ns), managed()),
            config_maps: cache(&mut tasks, api::<ConfigMap>(&client, ns), managed()),
            cron_jobs: cache(&mut tasks, api::<CronJob>(&client, ns), managed()),
            jobs: cache(&mut tasks, api::<Job>(&client, ns), managed()),
            secrets,
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
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.to_owned(),
                instance: Some(identity),
            },
        );
        let ctx = Arc::new(Context::new(client.clone(), stores.clone(), recorder, args.clone()));
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
        let adhoc = Controller::new(api::<AdhocService>(&client, ns), all())
            .with_config(config.clone())
            .owns(api::<Deployment>(&client, ns), managed())
            .owns(api::<Service>(&client, ns), managed())
            .owns(api::<Ingress>(&client, ns), managed())
            .watches(api::<Platform>(&client, ns), all(), move |platform| {
                let namespace = platform.namespace();
                by_namespace
                    .state()
                    .into_iter()
                    .filter(|a| a.namespace() == namespace)
                    .map(|a| ObjectRef::from_obj(a.as_ref()))
                    .collect::<Vec<_>>()
            })
            .watches(api::<AdhocService>(&client, ns), all(), move |changed| {
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
        let platform_secrets = stores.platforms.clone();
        let platform = Controller::new(api::<Platform>(&client, ns), all())
            .with_config(config.clone().debounce(Duration::from_millis(200)))
            .owns(api::<Deployment>(&client, ns), managed())
            .owns(api::<Service>(&client, ns), managed())
            .owns(api::<ConfigMap>(&client, ns), managed())
            .owns(api::<Ingress>(&client, ns), managed())
            .watches(api::<AdhocService>(&client, ns), all(), |adhoc| {
                platform::platform_of(&adhoc)
            })
            .watches_stream(
                watcher(api::<PartialObjectMeta<Secret>>(&client, ns), all()).touched_objects(),
                move |secret| {
                    referring(&platform_secrets, &secret, |p: &Platform| {
                        let mut names = vec![p.spec.database.secret_name.clone()];
                        names.extend(p.spec.admin_key_secret.as_ref().map(|s| s.name.clone()));
                        names
                    })
                },
            )
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
        let etl_secrets = stores.etl_schedules.clone();
        let etl = Controller::new(api::<EtlSchedule>(&client, ns), all())
            .with_config(config.clone())
            .owns(api::<CronJob>(&client, ns), managed())
            .watches(
                api::<Job>(&client, ns),
                watcher::Config::default().labels(etl::SCHEDULE_LABEL),
                |job| etl::schedule_of_job(&job),
            )
            .watches_stream(
                watcher(api::<PartialObjectMeta<Secret>>(&client, ns), all()).touched_objects(),
                move |secret| {
                    referring(&etl_secrets, &secret, |e: &EtlSchedule| {
                        let mut names = vec![e.spec.database.secret_name.clone()];
                        names.extend(e.spec.source.openaq.as_ref().map(|o| o.api_key_secret.name.clone()));
                        names
                    })
                },
            )
            .graceful_shutdown_on(shutdown())
            .run(
                |object, ctx| observe("EtlSchedule", object.clone(), ctx.clone(), etl::reconcile(object, ctx)),
                error_policy::<EtlSchedule>,
                ctx.clone(),
            );

        // PredictiveModel: its serving Deployment and Service, its CronJob, its training Jobs, its Secret.
        let model_secrets = stores.models.clone();
        let model = Controller::new(api::<PredictiveModel>(&client, ns), all())
            .with_config(config)
            .owns(api::<Deployment>(&client, ns), managed())
            .owns(api::<Service>(&client, ns), managed())
            .owns(api::<CronJob>(&client, ns), managed())
            .watches(
                api::<Job>(&client, ns),
                watcher::Config::default().labels(model::MODEL_LABEL),
                |job| model::model_of_job(&job),
            )
            .watches_stream(
                watcher(api::<PartialObjectMeta<Secret>>(&client, ns), all()).touched_objects(),
                move |secret| {
                    referring(&model_secrets, &secret, |m: &PredictiveModel| {
                        vec![m.spec.database.secret_name.clone()]
                    })
                },
            )
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
    let namespace = changed.namespace();
    let key = |a: &AdhocService| {
        (
            a.spec.route.host.clone(),
            a.spec.route.path_prefix.trim_end_matches('/').to_owned(),
        )
    };
    let changed_key = key(changed);
    store
        .state()
        .into_iter()
        .filter(|a| a.namespace() == namespace && a.name_any() != changed.name_any())
        .filter(|a| {
            key(a) == changed_key
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
    let result = reconcile.await;
    ctx.stats.reconciled(
        kind,
        if result.is_ok() { "success" } else { "error" },
        started.elapsed(),
    );
    if result.is_ok() {
        ctx.succeeded(&object_key(kind, object.as_ref()));
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
    let delay = ctx.backoff(key.clone());
    tracing::warn!(object = %key, error = %error, retry_in = ?delay, "reconcile failed");
    metrics::counter!("airq_operator_reconcile_errors_total", "kind" => kind, "reason" => error.metric_label())
        .increment(1);
    Action::requeue(delay)
}

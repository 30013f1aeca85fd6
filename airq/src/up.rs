//! `airq up`: the whole platform in one process on embedded SQLite. The gateway listens where asked; the front, the
//! predictive service and the ETL API listen on loopback ports of their own behind it, with the route table the
//! operator would write for a cluster. EtlSchedules run their loads (once, or on their cron schedule), then
//! PredictiveModels whose spec has no trained version yet are trained and served. Ctrl-C stops everything between
//! two stored chunks; the next `up` on the same data folder goes on from there.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use airq_api::routes::Upstream;
use airq_api::{AdhocService, EtlSchedule, Platform, PredictiveModel};
use airq_core::config::{LogArgs, LogFormat};
use airq_core::db::Database;
use airq_core::store::Store;
use airq_etl::load::{LoadRequest, LoadSpec};
use airq_predictive::registry::Registry;
use airq_predictive::spec::ModelSpec;
use anyhow::Context;
use clap::Args;
use kube::ResourceExt;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::resources::{self, Resources};

/// The namespace one machine stands for in the route table the operator's code builds.
pub const NAMESPACE: &str = "local";
/// Annotation of an AdhocService giving the URL it runs at on this machine (there are no Deployments here).
pub const LOCAL_URL_ANNOTATION: &str = "airq.dev/local-url";

/// `airq up`'s flags.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Folder of the SQLite database (`airq.db`), the API-key hashing secret and the route table; created if missing.
    #[arg(long, env = "AIRQ_DATA_DIR", default_value = "airq-data")]
    pub data_dir: PathBuf,
    /// Folder of EtlSchedule, PredictiveModel, AdhocService and Platform YAML files to act on.
    #[arg(long, env = "AIRQ_RESOURCES", default_value = "examples")]
    pub resources: PathBuf,
    /// Address of the gateway: the dashboard and every API.
    #[arg(long, env = "AIRQ_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Log filter in `tracing` syntax.
    #[arg(
        long = "log-level",
        env = "AIRQ_LOG_LEVEL",
        default_value = "warn,airq::up=info,airq::work=info"
    )]
    pub log_level: String,
    /// Log line format: `pretty` for a terminal, `json` (one object per line, with each request's trace id) for a
    /// log collector.
    #[arg(long = "log-format", env = "AIRQ_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
    /// Where OpenTelemetry traces are sent over OTLP/HTTP, e.g. `http://localhost:4318`; none by default.
    #[arg(long = "otlp-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The OpenAQ API key for EtlSchedules with an `openaq` source (their Secret in a cluster).
    #[arg(long, env = "OPENAQ_API_KEY", hide_env_values = true)]
    pub openaq_api_key: Option<String>,
    /// Seconds between two comparisons of every trained model's forecasts with the truth newly stored (the errors
    /// are followed for anomalies, listed on the dashboard's operations page); 0 turns them off.
    #[arg(long, env = "AIRQ_SCORE_INTERVAL_SECONDS", default_value_t = 300)]
    pub score_interval_seconds: u64,
}

/// Serves `app` on a free loopback port until `stop`, with the layers a service has in a cluster (request id, the
/// trace continued from the gateway, a log line per request, `airq_<service>_http_…` metrics); its base URL.
async fn serve_internal(
    app: axum::Router,
    telemetry: &airq_core::telemetry::Telemetry,
    stop: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<String> {
    let app = airq_core::http::with_common_layers(app, telemetry);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tasks.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "an internal service stopped");
        }
    });
    Ok(format!("http://{address}"))
}

/// The route table the operator would write for `platform` and `adhoc_services`, with this machine's URLs.
fn route_table(
    platform: &Platform,
    adhoc_services: &[AdhocService],
    front: &str,
    predictive: &str,
    etl: &str,
) -> airq_api::gateway::RouteTable {
    let adhoc: Vec<Arc<AdhocService>> = adhoc_services.iter().cloned().map(Arc::new).collect();
    airq_api::routes::table(platform, &adhoc, |upstream| match upstream {
        Upstream::Core("airq-front") => Some(front.to_owned()),
        Upstream::Core("airq-predictive") => Some(predictive.to_owned()),
        Upstream::Core("airq-etl") => Some(etl.to_owned()),
        Upstream::Core(other) => {
            tracing::warn!(service = other, "no such service on this machine");
            None
        }
        Upstream::Adhoc(adhoc) => {
            let url = adhoc.annotations().get(LOCAL_URL_ANNOTATION).cloned();
            if url.is_none() {
                // Said once per start, plainly: nothing runs an AdhocService's image on one machine.
                eprintln!(
                    "airq: AdhocService {} is not routed here: nothing runs its image on one machine; to route {} \
                     to a process of yours, give it the annotation {LOCAL_URL_ANNOTATION}: http://127.0.0.1:PORT",
                    adhoc.name_any(),
                    adhoc.spec.route.path_prefix
                );
            }
            url
        }
    })
}

/// The Platform of the resources folder, or the defaults a cluster's `platform.yaml` would have.
fn platform(resources: &Resources) -> anyhow::Result<Platform> {
    let mut platform = match &resources.platform {
        Some(p) => p.clone(),
        None => serde_json::from_value(serde_json::json!({
            "apiVersion": "airq.dev/v1alpha1", "kind": "Platform", "metadata": { "name": "airq" },
            "spec": {}
        }))
        .context("the default Platform")?,
    };
    platform.metadata.namespace = Some(NAMESPACE.to_owned());
    Ok(platform)
}

/// Replaces the keys earlier `up`s printed with a new one (the gateway lets an admin call every API).
async fn admin_key(db: &Database) -> anyhow::Result<String> {
    use airq_gateway::admin::{ADMIN_GROUP, BOOTSTRAP_USER};
    let store = airq_gateway::store::Store::new(db.clone());
    let now = chrono::Utc::now().timestamp();
    if let Ok(keys) = store.keys_of(BOOTSTRAP_USER).await {
        for key in keys.iter().filter(|k| k.revoked_at.is_none()) {
            store.revoke_key(&key.id, now).await?;
        }
    }
    store
        .ensure_group(ADMIN_GROUP, "may use the gateway's admin API", now)
        .await?;
    // The groups the default routes name, so that the admin can put callers in them (the admin may use every route).
    for (group, description) in [
        ("developers", "may call the predictive API"),
        ("operators", "may call the ETL API"),
    ] {
        store.ensure_group(group, description, now).await?;
    }
    let (_, key) = airq_gateway::identity::generate_key();
    Ok(key)
}

/// An exclusive lock on `<data folder>/airq.lock`, held while the returned file is open (the system releases it when
/// the process ends, however it ends), with the holder's process id written in it for the next one's message.
fn lock_data_dir(data_dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    let path = data_dir.join("airq.lock");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", std::process::id())?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            anyhow::bail!(
                "the data folder {} is in use by another `airq up`{}: stop it first (Ctrl-C in its terminal), or give \
                 this one another folder with --data-dir; nothing was changed",
                data_dir.display(),
                if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (process {holder})")
                }
            )
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

/// Runs `airq up` until Ctrl-C or SIGTERM.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let telemetry = airq_core::telemetry::init(
        "airq",
        &LogArgs {
            otlp_endpoint: args.otlp_endpoint.clone(),
            ..LogArgs::new(args.log_level.clone(), args.log_format)
        },
    )?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create the data folder {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    // Before anything is read or written: the folder is this process's, and the address is free.
    let _folder_lock = lock_data_dir(&data_dir)?;
    let listener = TcpListener::bind(args.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (another program has it? `--listen 127.0.0.1:8081` takes another port)",
            args.listen
        )
    })?;
    let db_url = format!("sqlite://{}", data_dir.join("airq.db").display());
    let db = Database::connect_url(&db_url, 8).await?;
    db.migrate().await?;

    let resources = resources::read_dir(&args.resources)?;
    for invalid in &resources.invalid {
        eprintln!("airq: left out: {invalid}");
    }
    for ignored in &resources.ignored {
        tracing::info!("not for one machine: {ignored}");
    }

    let stop = CancellationToken::new();
    let mut servers = JoinSet::new();
    let store = Store::new(db.clone());
    let registry = Registry::new(db.clone());
    let predictive_state = airq_predictive::api::ApiState::new(registry.clone(), store.clone(), None);
    if args.score_interval_seconds > 0 {
        // One predictive service serves every model here, so it follows every model's forecast error.
        servers.spawn(airq_predictive::monitor::follow(
            predictive_state.clone(),
            Duration::from_secs(args.score_interval_seconds),
            stop.clone(),
        ));
    }
    let predictive_state_for_work = predictive_state.clone();
    let predictive = serve_internal(
        airq_predictive::api::router(predictive_state),
        &telemetry.for_service("predictive"),
        stop.clone(),
        &mut servers,
    )
    .await?;
    let client = airq_front::predictive::Predictive::new(Some(&predictive), Duration::from_secs(5))
        .map_err(anyhow::Error::msg)?;
    let front = serve_internal(
        airq_front::router(airq_front::AppState::new(db.clone(), client)),
        &telemetry.for_service("front"),
        stop.clone(),
        &mut servers,
    )
    .await?;
    let etl = serve_internal(
        airq_etl::api::router(airq_etl::api::ApiState::new(store.clone(), args.openaq_api_key.clone())),
        &telemetry.for_service("etl"),
        stop.clone(),
        &mut servers,
    )
    .await?;

    let table = route_table(
        &platform(&resources)?,
        &resources.adhoc_services,
        &front,
        &predictive,
        &etl,
    );
    let routes_file = data_dir.join("routes.yaml");
    std::fs::write(&routes_file, serde_saphyr::to_string(&table)?)?;
    let key = admin_key(&db).await?;
    let gateway_config = <airq_gateway::Config as clap::Parser>::try_parse_from([
        "airq-gateway",
        "--database-url",
        &db_url,
        "--routes-file",
        &routes_file.display().to_string(),
        "--admin-key",
        &key,
    ])?;
    let gateway = listener.local_addr()?;
    let ops = airq_core::http::ops_router(telemetry.clone(), vec![("database", db.readiness_check())]);
    let gateway_db = db.clone();
    let gateway_stop = stop.clone();
    servers.spawn(async move {
        if let Err(e) = airq_gateway::serve(
            &gateway_config,
            gateway_db,
            listener,
            // On one machine the gateway listens on loopback by default: its operational endpoints stay with it.
            airq_gateway::Ops::Together(ops),
            gateway_stop.clone().cancelled_owned(),
        )
        .await
        {
            eprintln!("airq: the gateway stopped: {e}");
            gateway_stop.cancel();
        }
    });

    println!("airq is up, its data in {}", data_dir.display());
    println!("  dashboard:      http://{gateway}/");
    println!("  admin API key:  {key}");
    println!("  try:            curl -H 'Authorization: Bearer {key}' http://{gateway}/api/predictive/models");
    println!("Stop with Ctrl-C; `airq up` again goes on where it stopped.");

    let work = tokio::spawn(crate::work::run(
        store.clone(),
        predictive_state_for_work,
        resources,
        args.openaq_api_key.clone(),
        crate::work::Ready {
            key: key.clone(),
            gateway,
        },
        stop.clone(),
    ));

    tokio::select! {
        () = airq_core::http::shutdown_signal() => {}
        () = stop.cancelled() => {}
    }
    eprintln!("airq: stopping");
    stop.cancel();
    // Loads stop at their next chunk; a training in progress is abandoned (nothing of it is stored).
    let _ = tokio::time::timeout(Duration::from_secs(30), work).await;
    while servers.join_next().await.is_some() {}
    db.close().await;
    drop(telemetry);
    eprintln!("airq: stopped");
    Ok(())
}

/// The load an EtlSchedule asks for.
pub fn load_request(schedule: &EtlSchedule, openaq_api_key: Option<String>) -> anyhow::Result<LoadRequest> {
    let spec: LoadSpec = serde_json::from_value(schedule.spec.load_spec())?;
    let parallelism = spec.backfill.as_ref().map_or(2, |b| b.parallelism as usize).max(1);
    Ok(LoadRequest {
        // Loads and models keep their resources' names, as the operator names them in a namespace.
        name: schedule.name_any(),
        spec,
        requested_by: "airq up".to_owned(),
        parallelism,
        openaq_api_key,
    })
}

/// The training spec of a PredictiveModel.
pub fn model_spec(model: &PredictiveModel) -> anyhow::Result<ModelSpec> {
    ModelSpec::from_json(&model.spec.training_spec()).map_err(|e| anyhow::anyhow!("{}: {e}", model.name_any()))
}

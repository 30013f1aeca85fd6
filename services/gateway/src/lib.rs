//! The only entrance: routes requests to the services, with API keys, users, groups, rate limits, logs and metrics.
//!
//! A request passes, in order: [`access::edge`] (header limit, canonical path, trace context, access log and
//! metrics), then the gateway's own endpoints (the admin API under `/admin/`, the operational endpoints) or else
//! [`proxy::handle`], then
//! for proxied requests: route match, CORS preflight, authentication, access by group, rate limits and quota, body
//! limit, circuit breaker, and the upstream.

pub mod access;
pub mod admin;
pub mod anomalies;
pub mod config;
pub mod cors;
pub mod error;
pub mod identity;
pub mod limits;
pub mod path;
pub mod proxy;
pub mod routes;
pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use airq_core::db::Database;
use airq_core::http::{ReadinessCheck, ops_router};
use axum::Router;

pub use config::Config;

use crate::identity::{Identities, JwtSettings, JwtVerifier, KeyHasher};
use crate::limits::{Bucket, Limits};
use crate::routes::{BreakerSettings, RouteMetrics, Routes};
use crate::store::Store;

/// Settings the request path reads.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    pub trust_forwarded_for: bool,
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub identities: Identities,
    pub limits: Arc<Limits>,
    pub routes: Arc<Routes>,
    pub client: proxy::UpstreamClient,
    pub settings: Arc<Settings>,
    pub admin_metrics: Arc<RouteMetrics>,
    pub ops_metrics: Arc<RouteMetrics>,
    pub unmatched_metrics: Arc<RouteMetrics>,
    /// Anomaly detection on each route's traffic.
    pub anomalies: anomalies::SharedWatcher,
}

/// The gateway's own endpoints: the admin API. [`app`] adds the operational endpoints, the edge and the proxy.
pub fn router(state: AppState) -> Router {
    admin::router(state.clone())
        .fallback(|uri: axum::http::Uri| async move {
            axum::response::IntoResponse::into_response(error::GatewayError::NoRoute(uri.path().to_owned()))
        })
        .with_state(state)
}

/// The whole service as served: the edge (request ids, trace context, header and path checks, access log and
/// metrics) around every request, then the gateway's own endpoints (the admin API and `ops`, the operational
/// endpoints, through an axum router) or else the proxy, called directly: the request path of proxied traffic
/// has no router, middleware stack or per-layer future in it (measured: those cost a third of the gateway's CPU per
/// request).
pub fn app(state: AppState, ops: Router) -> Gateway {
    let own = router(state.clone()).merge(ops);
    Gateway(Arc::new((state, own)))
}

/// The gateway as a `tower` service (see [`app`]); serve it with connect info (`SocketAddr`).
#[derive(Clone)]
pub struct Gateway(Arc<(AppState, Router)>);

impl tower::Service<axum::extract::Request> for Gateway {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::extract::Request) -> Self::Future {
        let gateway = self.0.clone();
        Box::pin(async move {
            let (state, own) = &*gateway;
            let mut response = access::edge(state, own, request).await;
            // The client's next request opens a new connection, to a replica that is not stopping.
            airq_core::http::close_when_draining(&mut response);
            Ok(response)
        })
    }
}

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Telemetry(#[from] airq_core::telemetry::Error),
    #[error(transparent)]
    Database(#[from] airq_core::db::Error),
    #[error(transparent)]
    Routes(#[from] routes::Error),
    #[error(transparent)]
    Serve(#[from] airq_core::http::ServeError),
}

/// The secret keys are hashed with: given, from a file, or (SQLite only) generated once beside the database.
fn key_hash_secret(config: &Config) -> Result<Vec<u8>, StartError> {
    if let Some(secret) = &config.key_hash_secret {
        return non_empty(secret.as_bytes().to_vec(), "--key-hash-secret");
    }
    if let Some(file) = &config.key_hash_secret_file {
        let bytes = std::fs::read(file).map_err(|e| {
            StartError::Config(format!(
                "cannot read the key hashing secret from {}: {e}",
                file.display()
            ))
        })?;
        return non_empty(bytes.trim_ascii().to_vec(), &file.display().to_string());
    }
    let Some(database) = sqlite_file(&config.database.url) else {
        return Err(StartError::Config(
            "the gateway needs a key hashing secret (--key-hash-secret, AIRQ_KEY_HASH_SECRET or \
             --key-hash-secret-file), the same for every replica"
                .to_owned(),
        ));
    };
    let mut file = database.into_os_string();
    file.push(".key-hash-secret");
    let file = PathBuf::from(file);
    match std::fs::read(&file) {
        Ok(bytes) => non_empty(bytes.trim_ascii().to_vec(), &file.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (_, fresh) = identity::generate_key();
            write_private(&file, fresh.as_bytes())
                .map_err(|e| StartError::Config(format!("cannot write {}: {e}", file.display())))?;
            tracing::info!(file = %file.display(), "generated a key hashing secret for this SQLite database");
            Ok(fresh.into_bytes())
        }
        Err(e) => Err(StartError::Config(format!("cannot read {}: {e}", file.display()))),
    }
}

fn non_empty(bytes: Vec<u8>, what: &str) -> Result<Vec<u8>, StartError> {
    if bytes.len() < 16 {
        return Err(StartError::Config(format!(
            "the key hashing secret from {what} is too short: use at least 16 bytes (32 random bytes is best)"
        )));
    }
    Ok(bytes)
}

fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

fn write_private(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(file)?.write_all(bytes)
}

fn jwt_verifier(config: &Config) -> Result<Option<JwtVerifier>, StartError> {
    let args = &config.jwt;
    let (Some(issuer), Some(audience)) = (&args.issuer, &args.audience) else {
        return Ok(None);
    };
    let public_key_pem = match &args.public_key_file {
        Some(file) => Some(
            std::fs::read(file)
                .map_err(|e| StartError::Config(format!("cannot read the JWT public key {}: {e}", file.display())))?,
        ),
        None => None,
    };
    let settings = JwtSettings {
        issuer: issuer.clone(),
        audience: audience.clone(),
        public_key_pem,
        hs256_secret: args.secret.as_ref().map(|s| s.as_bytes().to_vec()),
        groups_claim: args.groups_claim.clone(),
    };
    JwtVerifier::new(&settings).map(Some).map_err(StartError::Config)
}

/// Everything the gateway needs, from its configuration and a connected database.
pub async fn state(config: &Config, db: Database) -> Result<AppState, StartError> {
    let store = Store::new(db);
    let hasher = KeyHasher::new(&key_hash_secret(config)?);
    if let Some(key) = &config.admin_key {
        let id = admin::bootstrap(&store, &hasher, key)
            .await
            .map_err(StartError::Config)?;
        tracing::info!(key_id = %id, "bootstrap admin key in place");
    }
    let identities = Identities::new(store.clone(), hasher, jwt_verifier(config)?);
    let limits = Arc::new(Limits::new(
        Bucket {
            per_second: config.key_rate_per_second,
            burst: config.key_burst,
        },
        config.key_daily_quota.and_then(|q| i64::try_from(q).ok()),
    ));
    let routes = Arc::new(Routes::load(
        config.routes_file.clone(),
        BreakerSettings {
            failures: config.breaker_failures,
            open_for: Duration::from_secs(config.breaker_open_seconds),
        },
    )?);
    Ok(AppState {
        store,
        identities,
        limits,
        routes,
        client: proxy::upstream_client(),
        settings: Arc::new(Settings {
            max_body_bytes: config.max_body_bytes,
            max_header_bytes: config.max_header_bytes,
            trust_forwarded_for: config.trust_forwarded_for,
        }),
        admin_metrics: Arc::new(RouteMetrics::new("admin")),
        ops_metrics: Arc::new(RouteMetrics::new("ops")),
        unmatched_metrics: Arc::new(RouteMetrics::new("none")),
        anomalies: anomalies::watcher(
            config.anomaly_detector,
            config.anomaly_interval_ms,
            config.anomaly_season_seconds,
            config
                .anomaly_threshold
                .unwrap_or_else(|| config.anomaly_detector.default_threshold()),
        ),
    })
}

/// Connects to the database, then serves until Ctrl-C or SIGTERM.
pub async fn run(config: Config) -> Result<(), StartError> {
    let telemetry = airq_core::telemetry::init_background_writer("gateway", &config.serve.log)?;
    let db = Database::connect(&config.database).await?;
    tracing::info!(database = %db.describe(), "database ready");
    let listen = config.serve.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| airq_core::http::ServeError::Bind { addr: listen, source })?;
    let ops_listen = config.ops_listen;
    let ops_listener =
        tokio::net::TcpListener::bind(ops_listen)
            .await
            .map_err(|source| airq_core::http::ServeError::Bind {
                addr: ops_listen,
                source,
            })?;
    let checks: Vec<(&'static str, ReadinessCheck)> = vec![("database", db.readiness_check())];
    let served = serve(
        &config,
        db.clone(),
        listener,
        Ops::Apart(ops_router(telemetry.clone(), checks), ops_listener),
        airq_core::http::shutdown_after_drain(Duration::from_secs(config.serve.shutdown_drain_seconds)),
    )
    .await;
    db.close().await;
    tracing::info!("stopped");
    // Flushes the log lines still queued.
    drop(telemetry);
    served
}

/// Where the operational endpoints (`/healthz`, `/readyz`, `/metrics`) are served.
pub enum Ops {
    /// On a listener of their own; the public one answers `/healthz` only.
    Apart(Router, tokio::net::TcpListener),
    /// On the public listener (the one-machine platform, on loopback).
    Together(Router),
}

/// Serves the gateway on `listener` with `ops` (the operational endpoints) until `shutdown` completes, following
/// the route file, identity changes and usage counts meanwhile; what [`run`] and the one-machine platform do.
pub async fn serve(
    config: &Config,
    db: Database,
    listener: tokio::net::TcpListener,
    ops: Ops,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let log = airq_core::store::Store::new(db.clone());
    let state = state(config, db).await?;
    let (public_ops, ops_server) = match ops {
        Ops::Together(router) => (router, None),
        Ops::Apart(router, ops_listener) => {
            let local = ops_listener.local_addr().map_err(airq_core::http::ServeError::Serve)?;
            tracing::info!(%local, "operational endpoints (/healthz, /readyz, /metrics) listening");
            let server = tokio::spawn(async move {
                if let Err(e) = axum::serve(ops_listener, router).await {
                    tracing::error!(error = %e, "the operational endpoints stopped");
                }
            });
            (airq_core::http::health_router(), Some(server))
        }
    };
    let background = [
        tokio::spawn(state.identities.clone().follow_changes()),
        tokio::spawn(
            state
                .routes
                .clone()
                .follow(Duration::from_millis(config.routes_poll_ms.max(50))),
        ),
        tokio::spawn(anomalies::follow(
            state.clone(),
            Duration::from_millis(config.anomaly_interval_ms.max(10)),
            log,
        )),
        tokio::spawn(limits::flush_forever(
            state.limits.clone(),
            state.routes.clone(),
            state.store.clone(),
            Duration::from_secs(config.usage_flush_seconds.max(1)),
        )),
    ];
    let service = app(state.clone(), public_ops);
    let local = listener.local_addr().map_err(airq_core::http::ServeError::Serve)?;
    tracing::info!(service = "gateway", %local, "listening");
    // Answers are written whole; Nagle's algorithm would only hold small ones back.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let served = axum::serve(
        listener,
        axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<SocketAddr>(service),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    for task in background.into_iter().chain(ops_server) {
        task.abort();
    }
    // What this replica counted since the last flush is not lost on a rolling update.
    state.limits.flush(&state.store, chrono::Utc::now().timestamp()).await;
    served.map_err(airq_core::http::ServeError::Serve)?;
    Ok(())
}

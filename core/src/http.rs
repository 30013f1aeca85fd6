//! The HTTP serving set-up every service shares: the operational endpoints (`/healthz`, `/readyz`, `/metrics`), the
//! cross-cutting layers (request id, trace span, request metrics) and graceful shutdown.
//!
//! Shutdown drains first: at SIGTERM a service in a cluster keeps answering for `--shutdown-drain-seconds` while
//! `/readyz` fails and every answer says `Connection: close` (clients and the gateway stop reusing its connections,
//! and the removal of its endpoint reaches every proxy), then stops accepting and lets the requests in flight finish.
//! A rolling update then loses no request.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::future::BoxFuture;
use serde_json::json;
use tokio::net::TcpListener;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::telemetry::Telemetry;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// One named readiness condition, e.g. "database": `Ok` when the service can do its work.
pub type ReadinessCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Builds a readiness check from an async closure.
pub fn readiness_check<F, Fut>(check: F) -> ReadinessCheck
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move || Box::pin(check()))
}

#[derive(Clone)]
struct OpsState {
    telemetry: Telemetry,
    checks: Arc<Vec<(&'static str, ReadinessCheck)>>,
}

/// `/healthz` (the process is alive), `/readyz` (every check passes; 503 with the failing ones otherwise) and
/// `/metrics` (Prometheus text format).
pub fn ops_router(telemetry: Telemetry, checks: Vec<(&'static str, ReadinessCheck)>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(OpsState {
            telemetry,
            checks: Arc::new(checks),
        })
}

/// `/healthz` alone: what a public listener answers when `/readyz` and `/metrics` are served on a port of their own.
pub fn health_router() -> Router {
    Router::new().route("/healthz", get(healthz))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Whether this process is draining (it got SIGTERM and stops soon).
static DRAINING: AtomicBool = AtomicBool::new(false);

/// Whether this process is draining: it answers, but is about to stop.
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// Completes on Ctrl-C or SIGTERM, after draining for `drain`: meanwhile `/readyz` fails and every answer closes its
/// connection.
pub async fn shutdown_after_drain(drain: Duration) {
    shutdown_signal().await;
    DRAINING.store(true, Ordering::Relaxed);
    if !drain.is_zero() {
        tracing::info!(
            seconds = drain.as_secs_f64(),
            "draining: not ready, and closing each connection after its answer"
        );
        tokio::time::sleep(drain).await;
    }
}

/// While draining, every answer tells the client to close the connection, so that its next request opens a new one
/// (to a replica that is not stopping).
pub async fn close_connections_when_draining(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    close_when_draining(&mut response);
    response
}

/// What [`close_connections_when_draining`] does to an answer, for a service that is not built of layers.
pub fn close_when_draining(response: &mut Response) {
    if draining() {
        response
            .headers_mut()
            .insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    }
}

async fn readyz(State(state): State<OpsState>) -> Response {
    if draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "draining", "failing": { "shutdown": "stopping: SIGTERM received" } })),
        )
            .into_response();
    }
    let mut failures = serde_json::Map::new();
    for (name, check) in state.checks.iter() {
        // A check that hangs must not hang the probe.
        let outcome = tokio::time::timeout(Duration::from_secs(2), check())
            .await
            .unwrap_or_else(|_| Err("no answer within 2s".to_owned()));
        if let Err(reason) = outcome {
            failures.insert((*name).to_owned(), reason.into());
        }
    }
    if failures.is_empty() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "failing": failures })),
        )
            .into_response()
    }
}

async fn metrics_text(State(state): State<OpsState>) -> Response {
    state.telemetry.prometheus.run_upkeep();
    let mut text = state.telemetry.prometheus.render();
    text.push_str(&crate::telemetry::collected());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

#[derive(Clone)]
struct RequestMetricNames {
    requests: Arc<str>,
    duration: Arc<str>,
}

/// Wraps `app` in the layers every service has: an `X-Request-Id` on each request and response (kept when the
/// caller sent one); a span per request carrying that id and the trace it belongs to (the caller's W3C trace
/// context continued, or a new trace), so that every log line written while serving it names both; one log line per
/// answer (status and duration; at debug level for the operational endpoints); request count and latency metrics
/// per route.
pub fn with_common_layers(app: Router, telemetry: &Telemetry) -> Router {
    let names = RequestMetricNames {
        requests: telemetry.metric_name("http_requests_total").into(),
        duration: telemetry.metric_name("http_request_duration_seconds").into(),
    };
    let service = telemetry.service;
    app.layer(middleware::from_fn(close_connections_when_draining))
        .layer(middleware::from_fn_with_state(names, record_request_metrics))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(move |request: &Request| request_span(service, request))
                .on_request(())
                .on_response(|response: &Response, latency: Duration, span: &tracing::Span| {
                    // Probes and scrapes have a debug-level span: no line for them at the usual levels.
                    if span.metadata().is_some_and(|m| *m.level() == tracing::Level::INFO) {
                        tracing::info!(
                            status = response.status().as_u16(),
                            duration_ms = latency.as_secs_f64() * 1000.0,
                            "answered"
                        );
                    }
                })
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

fn request_span(service: &'static str, request: &Request) -> tracing::Span {
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let path = request.uri().path();
    let span = if matches!(path, "/healthz" | "/readyz" | "/metrics") {
        tracing::debug_span!("request", service, method = %request.method(), path, request_id, trace_id = tracing::field::Empty)
    } else {
        tracing::info_span!("request", service, method = %request.method(), path, request_id, trace_id = tracing::field::Empty)
    };
    crate::telemetry::continue_trace(&span, request.headers());
    span
}

async fn record_request_metrics(State(names): State<RequestMetricNames>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // The route template, not the raw path, so that label values stay few.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!(names.requests.to_string(), &labels).increment(1);
    metrics::histogram!(names.duration.to_string(), &labels).record(started.elapsed().as_secs_f64());
    response
}

/// Serves `app` on `listener` until `shutdown` completes, then lets requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Completes on Ctrl-C or SIGTERM (what Kubernetes sends before stopping a pod).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

/// What can stop a service from serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server stopped: {0}")]
    Serve(#[source] std::io::Error),
}

/// Serves a service's `api` router together with the operational endpoints on `serve.listen`, with the common
/// layers, until Ctrl-C or SIGTERM and the drain that follows (`serve.shutdown_drain_seconds`).
pub async fn run_service(
    telemetry: Telemetry,
    serve_args: &crate::config::ServeArgs,
    api: Router,
    checks: Vec<(&'static str, ReadinessCheck)>,
) -> Result<(), ServeError> {
    let listen = serve_args.listen;
    let drain = Duration::from_secs(serve_args.shutdown_drain_seconds);
    let app = with_common_layers(api.merge(ops_router(telemetry.clone(), checks)), &telemetry);
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Bind { addr: listen, source })?;
    let local = listener.local_addr().map_err(ServeError::Serve)?;
    tracing::info!(service = telemetry.service, %local, "listening");
    serve(listener, app, shutdown_after_drain(drain))
        .await
        .map_err(ServeError::Serve)
}

/// The start of every outgoing HTTP client of airq: rustls with the process's crypto provider (ring, installed
/// here unless the process already has one), a connect timeout, and `service/version` as user agent.
pub fn client_builder(user_agent: &str) -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(user_agent)
}

/// A JSON error answer: `{"error": {"code": "...", "message": "..."}}` with its status. Every API of airq answers
/// errors this way, so a client reads them in one place.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// A stable, machine-readable code (`not_found`, `invalid_request`…).
    pub code: &'static str,
    /// What is wrong, and where, for a person.
    pub message: String,
    /// More fields of the error object for a program (e.g. a training's progress).
    pub details: serde_json::Map<String, serde_json::Value>,
    /// Seconds after which the same request may succeed (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: serde_json::Map::new(),
            retry_after: None,
        }
    }

    /// The error with one more field in its object.
    pub fn with(mut self, field: &str, value: serde_json::Value) -> Self {
        self.details.insert(field.to_owned(), value);
        self
    }

    /// The error with a `Retry-After` of `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// An internal failure: logged in full, answered without details.
    pub fn internal(error: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %error, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the request failed on the server; its log has the details",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = self.details;
        error.insert("code".to_owned(), json!(self.code));
        error.insert("message".to_owned(), json!(self.message));
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(seconds));
        }
        response
    }
}

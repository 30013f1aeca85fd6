//! The edge of every request: header size limit, the canonical path (routing, access checks and the upstream all
//! see it), the trace context, and when the answer's body has been sent, one JSON access log line and the route's
//! metrics. The log line names the key by its id, never the key.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::AppState;
use crate::error::GatewayError;
use crate::identity::Principal;
use crate::routes::{RouteEntry, RouteMetrics};

/// What the handlers learn about a request, for its access log line.
#[derive(Default)]
pub struct AccessRecord {
    route: OnceLock<(Arc<str>, Arc<RouteMetrics>)>,
    caller: OnceLock<(Arc<str>, Option<Arc<str>>)>,
    bytes_in: AtomicU64,
    request_id: String,
}

impl AccessRecord {
    fn new(request_id: String) -> Self {
        Self {
            request_id,
            ..Self::default()
        }
    }

    /// The request's id, for log lines written while serving it.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    pub fn set_route(&self, entry: &RouteEntry) {
        let _ = self.route.set((entry.route.id.as_str().into(), entry.metrics.clone()));
    }

    /// The gateway's own endpoints (the admin API).
    pub fn set_internal_route(&self, id: &'static str, metrics: &Arc<RouteMetrics>) {
        let _ = self.route.set((id.into(), metrics.clone()));
    }

    pub fn set_caller(&self, principal: &Principal) {
        let _ = self.caller.set((principal.user.clone(), principal.key_id.clone()));
    }
}

/// Logs the request and records its metrics when dropped: when the answer's body has been sent, or the client went
/// away.
struct Finish {
    record: Arc<AccessRecord>,
    started: Instant,
    method: axum::http::Method,
    path: String,
    request_id: String,
    trace_id: String,
    /// The request's span ends (and is exported) when the answer's body has been sent.
    _span: tracing::Span,
    status: u16,
    bytes_out: u64,
    unmatched: Arc<RouteMetrics>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let (route, metrics) = match self.record.route.get() {
            Some((id, metrics)) => (id.as_ref(), metrics),
            None => ("none", &self.unmatched),
        };
        metrics.finished(self.status, elapsed);
        let (user, key_id) = match self.record.caller.get() {
            Some((user, key)) => (Some(user.as_ref()), key.as_deref()),
            None => (None, None),
        };
        // Probes and scrapes come every few seconds from the kubelet and Prometheus: a line only at debug level.
        let probe = route == "ops";
        let enabled = if probe {
            tracing::enabled!(target: ACCESS_TARGET, tracing::Level::DEBUG)
        } else {
            tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO)
        };
        if !enabled {
            return;
        }
        let line = AccessLine {
            request_id: &self.request_id,
            trace_id: &self.trace_id,
            route,
            method: self.method.as_str(),
            path: &self.path,
            status: self.status,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            bytes_in: self.record.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out,
            user,
            key_id,
        };
        if let Some(sink) = airq_core::telemetry::json_lines() {
            line.write_json(sink, if probe { "DEBUG" } else { "INFO" });
        } else if probe {
            line.log(tracing::Level::DEBUG);
        } else {
            line.log(tracing::Level::INFO);
        }
    }
}

/// The log target of access lines.
const ACCESS_TARGET: &str = "airq_gateway::access";

/// One access log line.
#[derive(serde::Serialize)]
struct AccessLine<'a> {
    request_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    trace_id: &'a str,
    route: &'a str,
    method: &'a str,
    path: &'a str,
    status: u16,
    duration_ms: f64,
    bytes_in: u64,
    bytes_out: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<&'a str>,
}

impl AccessLine<'_> {
    /// Through `tracing`, in whatever format the logger writes.
    fn log(&self, level: tracing::Level) {
        macro_rules! event {
            ($level:expr) => {
                tracing::event!(
                    target: ACCESS_TARGET,
                    $level,
                    request_id = self.request_id,
                    trace_id = self.trace_id,
                    route = self.route,
                    method = self.method,
                    path = self.path,
                    status = self.status,
                    duration_ms = self.duration_ms,
                    bytes_in = self.bytes_in,
                    bytes_out = self.bytes_out,
                    user = self.user,
                    key_id = self.key_id,
                    "request"
                )
            };
        }
        if level == tracing::Level::DEBUG {
            event!(tracing::Level::DEBUG);
        } else {
            event!(tracing::Level::INFO);
        }
    }

    /// Straight to the logger's batched writer, in the shape its JSON lines have: the same line as [`Self::log`]
    /// writes, without `tracing`'s per-field formatting on the request path.
    fn write_json(&self, sink: &airq_core::log_sink::LogSink, level: &'static str) {
        #[derive(serde::Serialize)]
        struct Json<'a> {
            timestamp: String,
            level: &'static str,
            message: &'static str,
            #[serde(flatten)]
            line: &'a AccessLine<'a>,
            target: &'static str,
        }
        let json = Json {
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            level,
            message: "request",
            line: self,
            target: ACCESS_TARGET,
        };
        let mut line = Vec::with_capacity(384);
        if serde_json::to_writer(&mut line, &json).is_ok() {
            line.push(b'\n');
            sink.write_lines(&line);
        }
    }
}

/// The edge of every request, around `own` (the gateway's own endpoints, for its paths) or the proxy (for the rest):
/// both see the canonical path.
pub async fn edge(state: &AppState, own: &axum::Router, mut request: Request) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let request_id = request_id(request.headers_mut());
    let record = Arc::new(AccessRecord::new(request_id.clone()));
    // The request's span continues the caller's trace (or starts one); the upstream gets this span as its parent.
    // When spans are not exported, none is made: the trace context is passed on with a new span id all the same.
    let (span, trace_id) = if airq_core::telemetry::exporting_traces() {
        let span = tracing::info_span!(
            "request",
            service = "gateway",
            method = %method,
            path = request.uri().path(),
            request_id = request_id.as_str(),
            trace_id = tracing::field::Empty
        );
        let trace_id = airq_core::telemetry::continue_trace(&span, request.headers());
        airq_core::telemetry::inject_trace(&span, request.headers_mut());
        (span, trace_id)
    } else {
        (
            tracing::Span::none(),
            airq_core::telemetry::pass_trace_on(request.headers_mut()),
        )
    };
    // The path without the query (which may hold anything), for the log line: as received, and the canonical one
    // once it replaced it.
    let mut path = request.uri().path().to_owned();
    let refused = if header_bytes(&request) > state.settings.max_header_bytes {
        Some(GatewayError::HeadersTooLarge {
            limit: state.settings.max_header_bytes,
        })
    } else if matches!(*request.method(), Method::CONNECT | Method::TRACE) {
        // CONNECT asks for a tunnel (hyper would make one of a 2xx answer), TRACE echoes the caller's headers,
        // credentials included: neither belongs on an API gateway.
        Some(GatewayError::MethodNotAllowed(request.method().clone()))
    } else if let Some(doubt) = ambiguous(&request) {
        Some(GatewayError::Ambiguous(doubt))
    } else {
        match crate::path::canonical(&path) {
            Ok(canonical) if canonical == path => None,
            Ok(canonical) => match replace_path(&mut request, &canonical) {
                Ok(()) => {
                    path = canonical;
                    None
                }
                Err(e) => Some(e),
            },
            Err(e) => Some(GatewayError::Path(e)),
        }
    };
    let response = match refused {
        Some(error) => error.into_response(),
        None => {
            if matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics") {
                record.set_internal_route("ops", &state.ops_metrics);
            }
            request.extensions_mut().insert(record.clone());
            let counted = record.clone();
            let request = request.map(|body| {
                Body::new(Counted {
                    inner: body,
                    count: move |bytes: usize| {
                        counted.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
                    },
                })
            });
            let serve = async {
                if airq_api::gateway::gateway_path(request.uri().path()).is_some() {
                    let own = own.clone();
                    match tower::ServiceExt::oneshot(own, request).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    }
                } else {
                    crate::proxy::handle(state, request).await
                }
            };
            if span.is_none() {
                serve.await
            } else {
                serve.instrument(span.clone()).await
            }
        }
    };
    let (mut parts, body) = response.into_parts();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        parts.headers.insert(REQUEST_ID, value);
    }
    let mut finish = Finish {
        record,
        started,
        method,
        path,
        request_id,
        trace_id,
        _span: span,
        status: parts.status.as_u16(),
        bytes_out: 0,
        unmatched: state.unmatched_metrics.clone(),
    };
    let body = Counted {
        inner: body,
        count: move |bytes: usize| {
            // The whole `finish` moves into the closure (not just the counter), so that it is dropped with the body.
            let finish = &mut finish;
            finish.bytes_out += bytes as u64;
        },
    };
    Response::from_parts(parts, Body::new(body))
}

pin_project_lite::pin_project! {
    /// A body that reports the length of each data frame to `count`, and keeps the size its inner body announces
    /// (so that a known length is still sent as `Content-Length`).
    struct Counted<B, F> {
        #[pin]
        inner: B,
        count: F,
    }
}

impl<B, F> http_body::Body for Counted<B, F>
where
    B: http_body::Body,
    F: FnMut(usize),
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            (this.count)(hyper::body::Buf::remaining(data));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The request's id: the caller's `X-Request-Id` when it sent a usable one (so that its logs and ours can be joined),
/// else a new random UUID; set on the request, so that the upstream gets it too. A caller's id is usable when it
/// is short (at most 128 characters) visible ASCII and not an API key: the id is logged, and a key sent by mistake
/// in this header must not be.
fn request_id(headers: &mut axum::http::HeaderMap) -> String {
    if let Some(given) = headers.get(REQUEST_ID).and_then(|v| v.to_str().ok())
        && !given.is_empty()
        && given.len() <= 128
        && given.bytes().all(|b| b.is_ascii_graphic())
        && crate::identity::parse_key(given).is_none()
    {
        return given.to_owned();
    }
    let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
        .into_uuid()
        .hyphenated()
        .to_string();
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(REQUEST_ID, value);
    }
    id
}

const REQUEST_ID: axum::http::HeaderName = axum::http::HeaderName::from_static("x-request-id");

/// Why a request can be read two ways, if it can: two credentials of one kind (which one would be checked?), two
/// `Host` headers, or an absolute-form target naming another host than `Host` (which one would be routed?).
pub fn ambiguous(request: &Request) -> Option<String> {
    let headers = request.headers();
    for name in [
        axum::http::header::AUTHORIZATION.as_str(),
        crate::identity::API_KEY_HEADER,
        axum::http::header::HOST.as_str(),
    ] {
        let count = headers.get_all(name).iter().count();
        if count > 1 {
            return Some(format!("the request has {count} {name} headers; send one"));
        }
    }
    let authority = request.uri().authority()?;
    let host = headers.get(axum::http::header::HOST)?;
    let same = host
        .to_str()
        .is_ok_and(|host| host.eq_ignore_ascii_case(authority.as_str()));
    (!same).then(|| format!("the request's target names host {authority} and its Host header another; send one host"))
}

fn header_bytes(request: &Request) -> usize {
    request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + request.uri().path_and_query().map_or(0, |p| p.as_str().len())
}

fn replace_path(request: &mut Request, path: &str) -> Result<(), GatewayError> {
    let path_and_query = match request.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = request.uri().clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().map_err(|e| GatewayError::internal(&e))?);
    *request.uri_mut() = axum::http::Uri::from_parts(parts).map_err(|e| GatewayError::internal(&e))?;
    Ok(())
}

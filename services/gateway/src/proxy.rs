//! Forwarding a request to its route's upstream: access check, limits, the circuit breaker, headers (hop-by-hop
//! removed, `X-Forwarded-*`, the caller's identity), streamed bodies both ways, WebSocket upgrades on routes that
//! accept them, timeouts and retries of idempotent requests that failed to connect.
//!
//! Only the upstream's failures count against its circuit breaker: a body the caller broke off or sent too slowly
//! is answered 400 or 408 and leaves the breaker as it was.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use http_body_util::{LengthLimitError, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::AppState;
use crate::access::AccessRecord;
use crate::error::GatewayError;
use crate::identity::{API_KEY_HEADER, Principal};
use crate::routes::RouteEntry;

/// Headers the gateway sets for the upstream; a caller's own values are removed so they cannot be forged.
pub const USER_HEADER: HeaderName = HeaderName::from_static("x-airq-user");
pub const GROUPS_HEADER: HeaderName = HeaderName::from_static("x-airq-groups");
pub const KEY_ID_HEADER: HeaderName = HeaderName::from_static("x-airq-key-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Where the caller's body is, as the upstream request reads it.
#[derive(Debug, Clone, Default)]
struct BodyProgress(Arc<AtomicU8>);

impl BodyProgress {
    /// Read from so far without waiting on the caller (or not read at all).
    const FLOWING: u8 = 0;
    /// The last read waits for the caller's next bytes.
    const WAITING_ON_CALLER: u8 = 1;
    /// Every byte received.
    const RECEIVED: u8 = 2;
    /// The caller's body broke off or was malformed.
    const BROKEN: u8 = 3;

    fn set(&self, state: u8) {
        self.0.store(state, Ordering::Relaxed);
    }

    fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }
}

pin_project_lite::pin_project! {
    /// The caller's body, telling [`BodyProgress`] how its reading goes.
    struct Watched<B> {
        #[pin]
        inner: B,
        progress: BodyProgress,
    }
}

impl<B: http_body::Body> http_body::Body for Watched<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        this.progress.set(match &polled {
            Poll::Pending => BodyProgress::WAITING_ON_CALLER,
            Poll::Ready(None) => BodyProgress::RECEIVED,
            Poll::Ready(Some(Err(_))) => BodyProgress::BROKEN,
            Poll::Ready(Some(Ok(_))) => BodyProgress::FLOWING,
        });
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end && self.progress.get() != BodyProgress::BROKEN {
            self.progress.set(BodyProgress::RECEIVED);
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The HTTP client to upstreams: one pool of kept-alive connections for every route.
pub type UpstreamClient = Client<HttpConnector, Body>;

pub fn upstream_client() -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build(connector)
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1): never forwarded.
fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in [
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// Whether the only protocol `headers` ask to upgrade to is WebSocket.
fn is_websocket(headers: &HeaderMap) -> bool {
    let mut protocols = headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim);
    protocols.next().is_some_and(|p| p.eq_ignore_ascii_case("websocket")) && protocols.next().is_none()
}

/// The request's host, lower-case and without its port.
fn request_host(request: &Request) -> Option<String> {
    let raw = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().host())?;
    Some(strip_port(raw).to_ascii_lowercase())
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split_once(']').map_or(host, |(address, _)| address);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The caller's address: the connection's peer, or, behind a trusted ingress, the last address it appended.
pub fn client_address(headers: &HeaderMap, peer: SocketAddr, trust_forwarded: bool) -> IpAddr {
    if trust_forwarded
        // Only the last entry: the ones before it came from the client and prove nothing.
        && let Some(last) = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|a| a.trim().parse::<IpAddr>().ok())
    {
        return last;
    }
    peer.ip()
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// What went wrong with the caller's body, from the upstream request's error (the innermost cause).
fn caller_failure(error: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    innermost.to_string()
}

fn limit_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if e.is::<LengthLimitError>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// The caller of a request, as [`crate::identity::Identities::authenticate`] finds it, with failed attempts limited
/// per client address: past the allowance an address is answered 429 without a look at the database.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    client: IpAddr,
    now: i64,
) -> Result<Option<Principal>, GatewayError> {
    let presents = headers.contains_key(API_KEY_HEADER) || headers.contains_key(header::AUTHORIZATION);
    if presents && let Err(retry_after) = state.limits.auth_failures.may_try(client) {
        metrics::counter!("airq_gateway_rate_limited_total", "limit" => "failed_auth").increment(1);
        return Err(GatewayError::RateLimited {
            what: format!("too many failed authentications from {client}"),
            retry_after,
        });
    }
    let found = state.identities.authenticate(headers, now).await;
    if matches!(found, Err(GatewayError::BadCredentials(_))) {
        state.limits.auth_failures.failed(client);
    }
    found
}

/// Every request no gateway endpoint answers. The caller's address comes from the connection's
/// `ConnectInfo<SocketAddr>` (loopback when it is missing).
pub async fn handle(state: &AppState, request: Request) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |info| info.0);
    let record = request.extensions().get::<Arc<AccessRecord>>().cloned();
    let host = request_host(&request);
    let table = state.routes.current();
    let path = request.uri().path();
    // The gateway's own paths are never forwarded, even with a catch-all route.
    let found = match airq_api::gateway::gateway_path(path) {
        Some(_) => None,
        None => table.find(host.as_deref(), path).cloned(),
    };
    let Some(entry) = found else {
        let path = request.uri().path().to_owned();
        return GatewayError::NoRoute(path).into_response();
    };
    if let Some(record) = &record {
        record.set_route(&entry);
    }
    let origin = request.headers().get(header::ORIGIN).cloned();
    let mut response = match forward(state, &entry, peer, request, record.as_deref()).await {
        Ok(response) => response,
        Err(error) => {
            match &error {
                GatewayError::RateLimited { .. } => entry.metrics.rate_limited.increment(1),
                GatewayError::UpstreamUnreachable { .. } => entry.metrics.upstream_connect_errors.increment(1),
                GatewayError::UpstreamTimeout { .. } => entry.metrics.upstream_timeouts.increment(1),
                GatewayError::CircuitOpen { .. } => entry.metrics.circuit_open.increment(1),
                _ => {}
            }
            error.into_response()
        }
    };
    if let (Some(cors), Some(origin)) = (&entry.route.cors, origin) {
        crate::cors::decorate(cors, &origin, response.headers_mut());
    }
    response
}

async fn forward(
    state: &AppState,
    entry: &Arc<RouteEntry>,
    peer: SocketAddr,
    mut request: Request,
    record: Option<&AccessRecord>,
) -> Result<Response, GatewayError> {
    let route = &entry.route;
    let request_id = record.map(AccessRecord::request_id).unwrap_or_default();
    if let Some(cors) = &route.cors
        && let Some(preflight) = crate::cors::preflight(cors, request.method(), request.headers())
    {
        return Ok(preflight);
    }
    let now = chrono::Utc::now().timestamp();
    let client = client_address(request.headers(), peer, state.settings.trust_forwarded_for);
    let principal = authenticate(state, request.headers(), client, now).await?;
    if let (Some(record), Some(principal)) = (record, &principal) {
        record.set_caller(principal);
    }
    if !route.access.public {
        let Some(principal) = &principal else {
            return Err(GatewayError::Unauthenticated);
        };
        if !principal.may_use(&route.access.groups) {
            return Err(GatewayError::Forbidden(format!(
                "{} may not use route {}: it is open to the group(s) {}",
                principal.user,
                route.id,
                route.access.groups.join(", ")
            )));
        }
    }
    if let Some(principal) = &principal {
        state.limits.admit(principal, now)?;
    }
    if let Some(limiter) = &entry.limiter {
        let caller = match &principal {
            Some(p) => p.limit_key().to_owned(),
            None => format!("ip:{client}"),
        };
        limiter
            .check(&caller)
            .map_err(|retry_after| GatewayError::RateLimited {
                what: format!(
                    "route {} allows {} requests per second per caller (burst {})",
                    route.id,
                    limiter.bucket().per_second,
                    limiter.bucket().burst
                ),
                retry_after,
            })?;
    }
    let max_body = state.settings.max_body_bytes;
    if let Some(length) = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        && length > max_body
    {
        return Err(GatewayError::BodyTooLarge { limit: max_body });
    }
    entry.breaker.admit().map_err(|retry_after| GatewayError::CircuitOpen {
        route: route.id.clone(),
        retry_after,
    })?;

    // Only a WebSocket upgrade, on a route that accepts them, becomes a tunnel. Any other `Upgrade` (`h2c`…) is
    // dropped with the hop-by-hop headers: the request goes on as plain HTTP/1.1, which RFC 9110 allows.
    let upgrade = is_upgrade(request.headers()) && is_websocket(request.headers());
    if upgrade && (!route.websocket || request.method() != Method::GET) {
        return Err(GatewayError::UpgradeRefused(format!(
            "route {} does not accept WebSocket upgrades (its route sets websocket: true to allow them, with GET)",
            route.id
        )));
    }
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    let body_expected = has_body(&parts.headers);
    // X-Forwarded-For gains the address of whoever connected (the trusted proxy, or the caller itself).
    let mut headers = upstream_headers(
        state,
        entry,
        std::mem::take(&mut parts.headers),
        &principal,
        peer.ip(),
        upgrade,
    )?;
    let path_and_query = match parts.uri.query() {
        Some(query) => format!("{}?{query}", entry.upstream_path(parts.uri.path())),
        None => entry.upstream_path(parts.uri.path()),
    };
    let mut uri = Uri::builder()
        .scheme(entry.upstream.scheme.clone())
        .authority(entry.upstream.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| GatewayError::internal(&e))?;
    let retriable = idempotent(&parts.method) && !body_expected && !upgrade;
    let attempts = if retriable { 1 + route.retries } else { 1 };
    let progress = BodyProgress::default();
    if !body_expected {
        progress.set(BodyProgress::RECEIVED);
    }
    let mut body = Some(if upgrade {
        Body::empty()
    } else {
        Body::new(Watched {
            inner: Limited::new(body, usize::try_from(max_body).unwrap_or(usize::MAX)),
            progress: progress.clone(),
        })
    });
    let timeout = Duration::from_secs(u64::from(route.timeout_seconds));
    let mut attempt = 0;
    let upstream_response = loop {
        attempt += 1;
        let mut outgoing = axum::http::Request::new(body.take().unwrap_or_default());
        *outgoing.method_mut() = parts.method.clone();
        // The last attempt takes the headers and URI; earlier ones (retries) copy them.
        if attempt < attempts {
            *outgoing.uri_mut() = uri.clone();
            *outgoing.headers_mut() = headers.clone();
        } else {
            *outgoing.uri_mut() = std::mem::take(&mut uri);
            *outgoing.headers_mut() = std::mem::take(&mut headers);
        }
        match tokio::time::timeout(timeout, state.client.request(outgoing)).await {
            Ok(Ok(response)) => break response,
            Ok(Err(error)) => {
                if limit_error(&error) {
                    return Err(GatewayError::BodyTooLarge { limit: max_body });
                }
                if progress.get() == BodyProgress::BROKEN {
                    // The caller's failure: the upstream is not blamed for it.
                    return Err(GatewayError::BadBody(caller_failure(&error)));
                }
                if error.is_connect() && attempt < attempts {
                    tracing::debug!(route = %route.id, request_id, attempt, "retrying an idempotent request after a connect error");
                    continue;
                }
                entry.breaker.record(false);
                tracing::warn!(route = %route.id, request_id, error = %error, error_source = std::error::Error::source(&error).map(tracing::field::display), "upstream request failed");
                return Err(GatewayError::UpstreamUnreachable {
                    route: route.id.clone(),
                });
            }
            Err(_) => {
                if progress.get() == BodyProgress::WAITING_ON_CALLER {
                    // Still waiting for the caller's body: its slowness, not the upstream's.
                    return Err(GatewayError::BodyTimeout {
                        seconds: route.timeout_seconds,
                    });
                }
                entry.breaker.record(false);
                return Err(GatewayError::UpstreamTimeout {
                    route: route.id.clone(),
                    seconds: route.timeout_seconds,
                });
            }
        }
    };
    let status = upstream_response.status();
    let switched = status == StatusCode::SWITCHING_PROTOCOLS;
    if switched && (client_upgrade.is_none() || !is_websocket(upstream_response.headers())) {
        // The upstream switched protocols though it was not asked to (or to another protocol): nothing of that
        // connection may reach the caller.
        entry.breaker.record(false);
        tracing::warn!(route = %route.id, request_id, "the upstream switched protocols unasked; refused");
        return Err(GatewayError::UpstreamUnreachable {
            route: route.id.clone(),
        });
    }
    entry.breaker.record(!matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    ));
    let (mut response_parts, response_body) = upstream_response.into_parts();
    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let mut upstream = axum::http::Response::from_parts(response_parts.clone(), ());
            let upstream_upgrade = hyper::upgrade::on(&mut upstream);
            let route_id = route.id.clone();
            tokio::spawn(async move {
                match (client_upgrade.await, upstream_upgrade.await) {
                    (Ok(client), Ok(upstream)) => {
                        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                            tracing::debug!(route = %route_id, error = %e, "upgraded connection ended");
                        }
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::warn!(route = %route_id, error = %e, "cannot upgrade the connection");
                    }
                }
            });
        }
        return Ok(Response::from_parts(response_parts, Body::empty()));
    }
    remove_hop_by_hop(&mut response_parts.headers, false);
    Ok(Response::from_parts(response_parts, Body::new(response_body)))
}

/// Removes every header whose name, with `_` read as `-`, starts with `x-airq-`: only the gateway sets those.
fn remove_identity_headers(headers: &mut HeaderMap) {
    const PREFIX: &[u8] = b"x-airq-";
    let forged: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str().as_bytes();
            name.len() >= PREFIX.len()
                && name[..PREFIX.len()]
                    .iter()
                    .zip(PREFIX)
                    .all(|(&b, &p)| b == p || (b == b'_' && p == b'-'))
        })
        .cloned()
        .collect();
    for name in forged {
        headers.remove(name);
    }
}

fn upstream_headers(
    state: &AppState,
    entry: &RouteEntry,
    mut headers: HeaderMap,
    principal: &Option<Principal>,
    peer: IpAddr,
    upgrade: bool,
) -> Result<HeaderMap, GatewayError> {
    let trusted = state.settings.trust_forwarded_for;
    // What the caller (or the trusted proxy before us) sent, read before the headers change.
    let previous_forwarded_for = match headers.get(X_FORWARDED_FOR) {
        Some(value) if trusted => value.to_str().ok().map(str::to_owned),
        _ => None,
    };
    let proto = match headers.get(X_FORWARDED_PROTO) {
        Some(value) if trusted => value.clone(),
        _ => HeaderValue::from_static("http"),
    };
    let host = headers.get(header::HOST).cloned();
    remove_hop_by_hop(&mut headers, upgrade);
    // The caller's credentials were for the gateway; upstreams get the identity instead.
    headers.remove(API_KEY_HEADER);
    if principal.is_some() {
        headers.remove(header::AUTHORIZATION);
    }
    // Whatever the caller sent that an upstream could read as an identity header: `X-Airq-User`, and the variants
    // with underscores (`X_Airq_User`, `X-Airq_Groups`) that some servers fold into dashes.
    remove_identity_headers(&mut headers);
    if let Some(principal) = principal {
        let value = |text: &str| {
            HeaderValue::from_str(text).map_err(|_| {
                GatewayError::BadCredentials(format!(
                    "the caller's identity cannot be sent upstream in a header: {text:?}"
                ))
            })
        };
        headers.insert(USER_HEADER, value(&principal.user)?);
        headers.insert(GROUPS_HEADER, value(&principal.groups.join(","))?);
        if let Some(id) = &principal.key_id {
            headers.insert(KEY_ID_HEADER, value(id)?);
        }
    }
    let forwarded_for = match previous_forwarded_for {
        Some(previous) => format!("{previous}, {peer}"),
        None => peer.to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    headers.insert(X_FORWARDED_PROTO, proto);
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host);
    }
    headers.insert(header::HOST, entry.upstream.host_header.clone());
    // The trace context (`traceparent`, naming the gateway's span) was set on the request by the edge and is
    // copied with the other headers.
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret-hop"));
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        remove_hop_by_hop(&mut headers, false);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key(header::ACCEPT));
    }

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(strip_port("example.org:8080"), "example.org");
        assert_eq!(strip_port("example.org"), "example.org");
        assert_eq!(strip_port("[::1]:80"), "::1");
    }

    #[test]
    fn the_client_address_comes_from_the_ingress_only_when_trusted() {
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1, 10.0.0.7"));
        let peer: SocketAddr = "10.0.0.2:5000".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(client_address(&headers, peer, false).to_string(), "10.0.0.2");
        assert_eq!(client_address(&headers, peer, true).to_string(), "10.0.0.7");
    }
}

//! The route table: read from the file the operator writes into a ConfigMap, checked, and swapped in whole when the
//! file changes. A request holds the table it started with, so a reload never disturbs requests in flight; a file
//! that does not parse leaves the table in use as it is.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airq_api::gateway::{Route, RouteTable};
use arc_swap::ArcSwap;
use axum::http::uri::{Authority, Scheme};
use metrics::{Counter, Histogram};

use crate::limits::{Bucket, RouteLimiter};

/// Why a route table cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the route table {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the route table {path} is not valid YAML for a route table: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("the route table {path}: route {index} ({id}): {message}")]
    Invalid {
        path: PathBuf,
        index: usize,
        id: String,
        message: String,
    },
}

/// Where a route's requests go.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// The upstream URL's path without its trailing `/` (usually empty).
    pub base_path: String,
    /// The `Host` header the upstream gets: its authority.
    pub host_header: axum::http::HeaderValue,
}

/// The circuit breaker of one route: after `threshold` failures in a row the upstream is not called for
/// `open_for`; then one trial request decides whether it closes again.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    state: Mutex<BreakerState>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A trial request is on its way.
    Trial,
}

impl Breaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            open_for,
            state: Mutex::new(BreakerState::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// May a request go to the upstream now? If not, how long until it may.
    pub fn admit(&self) -> Result<(), Duration> {
        let mut state = self.lock();
        match *state {
            BreakerState::Closed { .. } => Ok(()),
            BreakerState::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    *state = BreakerState::Trial;
                    Ok(())
                } else {
                    Err(until - now)
                }
            }
            BreakerState::Trial => Err(Duration::from_secs(1)),
        }
    }

    /// Records how a request the breaker admitted ended.
    pub fn record(&self, success: bool) {
        let mut state = self.lock();
        *state = match (*state, success) {
            (_, true) => BreakerState::Closed { failures: 0 },
            (BreakerState::Closed { failures }, false) if failures + 1 < self.threshold => {
                BreakerState::Closed { failures: failures + 1 }
            }
            (BreakerState::Open { until }, false) => BreakerState::Open { until },
            (_, false) => {
                tracing::warn!(
                    open_seconds = self.open_for.as_secs(),
                    "circuit opened after upstream failures"
                );
                BreakerState::Open {
                    until: Instant::now() + self.open_for,
                }
            }
        };
    }

    pub fn is_open(&self) -> bool {
        !matches!(*self.lock(), BreakerState::Closed { .. })
    }
}

/// A route's metric handles, registered once when the route is loaded (not looked up per request).
#[derive(Clone)]
pub struct RouteMetrics {
    by_class: [Counter; 5],
    pub duration: Histogram,
    pub upstream_connect_errors: Counter,
    pub upstream_timeouts: Counter,
    pub circuit_open: Counter,
    pub rate_limited: Counter,
    /// Counts since the anomaly watcher's last sample.
    sampled: Arc<Sampled>,
}

#[derive(Default)]
struct Sampled {
    requests: AtomicU64,
    server_errors: AtomicU64,
    micros: AtomicU64,
}

/// A route's traffic since the previous sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub requests: u64,
    pub server_errors: u64,
    pub micros: u64,
}

impl RouteMetrics {
    pub fn new(route: &str) -> Self {
        let class = |c: &'static str| metrics::counter!("airq_gateway_http_requests_total", "route" => route.to_owned(), "status_class" => c);
        let upstream_error = |kind: &'static str| metrics::counter!("airq_gateway_upstream_errors_total", "route" => route.to_owned(), "kind" => kind);
        Self {
            by_class: [class("1xx"), class("2xx"), class("3xx"), class("4xx"), class("5xx")],
            duration: metrics::histogram!("airq_gateway_http_request_duration_seconds", "route" => route.to_owned()),
            upstream_connect_errors: upstream_error("connect"),
            upstream_timeouts: upstream_error("timeout"),
            circuit_open: upstream_error("circuit_open"),
            rate_limited: metrics::counter!("airq_gateway_route_rate_limited_total", "route" => route.to_owned()),
            sampled: Arc::default(),
        }
    }

    /// Counts an answered request: its status class, its duration, and the anomaly watcher's sample.
    pub fn finished(&self, status: u16, elapsed: Duration) {
        let index = usize::from((status / 100).clamp(1, 5) - 1);
        self.by_class[index].increment(1);
        self.duration.record(elapsed.as_secs_f64());
        self.sampled.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.sampled.server_errors.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sampled.micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// What was counted since the previous call.
    pub fn take_sample(&self) -> Sample {
        Sample {
            requests: self.sampled.requests.swap(0, Ordering::Relaxed),
            server_errors: self.sampled.server_errors.swap(0, Ordering::Relaxed),
            micros: self.sampled.micros.swap(0, Ordering::Relaxed),
        }
    }
}

/// A route with what serving it needs.
pub struct RouteEntry {
    pub route: Route,
    pub upstream: Upstream,
    pub limiter: Option<Arc<RouteLimiter>>,
    pub breaker: Arc<Breaker>,
    pub metrics: Arc<RouteMetrics>,
    host: Option<String>,
    /// The prefix without its trailing `/`: `/api/etl/` also serves `/api/etl`.
    bare_prefix: String,
}

impl RouteEntry {
    /// The path to forward for `path` (canonical, matched by this route).
    pub fn upstream_path(&self, path: &str) -> String {
        let rest = if self.route.strip_prefix {
            let stripped = path.strip_prefix(&self.bare_prefix).unwrap_or(path);
            if stripped.starts_with('/') {
                stripped.to_owned()
            } else {
                format!("/{stripped}")
            }
        } else {
            path.to_owned()
        };
        format!("{}{rest}", self.upstream.base_path)
    }

    fn matches(&self, host: Option<&str>, path: &str) -> bool {
        if let Some(wanted) = &self.host
            && host.is_none_or(|h| !h.eq_ignore_ascii_case(wanted))
        {
            return false;
        }
        let prefix = &self.route.path_prefix;
        if prefix.ends_with('/') {
            path.starts_with(prefix.as_str()) || path == self.bare_prefix
        } else {
            path.strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        }
    }
}

/// A loaded route table.
#[derive(Default)]
pub struct Table {
    pub entries: Vec<Arc<RouteEntry>>,
    source: Vec<u8>,
}

impl Table {
    /// The most specific route for a host (without port) and canonical path.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<RouteEntry>> {
        self.entries.iter().find(|entry| entry.matches(host, path))
    }
}

/// Settings every route's breaker gets.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    pub failures: u32,
    pub open_for: Duration,
}

fn upstream_of(url: &str) -> Result<Upstream, String> {
    let uri: axum::http::Uri = url.parse().map_err(|e| format!("upstream {url:?} is not a URL: {e}"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("upstream {url:?} has no scheme"))?;
    if scheme != Scheme::HTTP {
        return Err(format!(
            "upstream {url:?}: only http:// upstreams are supported (TLS ends at the ingress)"
        ));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("upstream {url:?} has no host"))?;
    let host_header = axum::http::HeaderValue::from_str(authority.as_str())
        .map_err(|e| format!("upstream {url:?}: its host cannot be a Host header: {e}"))?;
    Ok(Upstream {
        scheme,
        authority,
        host_header,
        base_path: uri.path().trim_end_matches('/').to_owned(),
    })
}

fn check(route: &Route) -> Result<(), String> {
    if route.id.trim().is_empty() {
        return Err("the id is empty".to_owned());
    }
    if !route.path_prefix.starts_with('/') {
        return Err(format!("pathPrefix {:?} must start with '/'", route.path_prefix));
    }
    if crate::path::canonical(&route.path_prefix).as_deref() != Ok(route.path_prefix.as_str()) {
        return Err(format!(
            "pathPrefix {:?} is not a plain path (no '//', '.', '..' or escapes of plain characters)",
            route.path_prefix
        ));
    }
    if let Some(reserved) = airq_api::gateway::gateway_path(&route.path_prefix) {
        return Err(format!(
            "pathPrefix {:?} is under {reserved}, which the gateway serves itself",
            route.path_prefix
        ));
    }
    if route.timeout_seconds == 0 {
        return Err("timeoutSeconds must be at least 1".to_owned());
    }
    if let Some(limit) = &route.rate_limit
        && (limit.burst == 0 || Bucket::of(limit).quota().is_none())
    {
        return Err("rateLimit needs requestsPerSecond > 0 and burst ≥ 1".to_owned());
    }
    if let Some(cors) = &route.cors
        && cors.allow_credentials
        && cors.allowed_origins.iter().any(|o| o == "*")
    {
        return Err("cors: allowCredentials cannot be used with the origin '*'".to_owned());
    }
    Ok(())
}

/// A parsed table, and the routes left out of it because they are not valid.
pub struct Built {
    pub table: Table,
    pub skipped: Vec<Error>,
}

/// Parses and checks a route table. A route that is not valid is left out (and reported) rather than the whole
/// table refused: one bad entry must not stop every other route from being updated. Routes that did not change
/// keep their limiter and breaker from `previous`.
pub fn build(path: &Path, text: &[u8], previous: &Table, breaker: BreakerSettings) -> Result<Built, Error> {
    let text_str = std::str::from_utf8(text).map_err(|e| Error::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut table: RouteTable = if text_str.trim().is_empty() {
        RouteTable::default()
    } else {
        serde_saphyr::from_str(text_str).map_err(|e| Error::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?
    };
    let mut skipped = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut valid: Vec<(Route, Upstream)> = Vec::with_capacity(table.routes.len());
    for (index, route) in std::mem::take(&mut table.routes).into_iter().enumerate() {
        let checked = check(&route)
            .and_then(|()| upstream_of(&route.upstream))
            .and_then(|upstream| {
                if seen.insert(route.id.clone()) {
                    Ok(upstream)
                } else {
                    Err("another route has the same id".to_owned())
                }
            });
        match checked {
            Ok(upstream) => valid.push((route, upstream)),
            Err(message) => skipped.push(Error::Invalid {
                path: path.to_owned(),
                index,
                id: route.id,
                message,
            }),
        }
    }
    valid.sort_by(|(a, _), (b, _)| Route::precedence(a, b));
    let entries = valid
        .into_iter()
        .map(|(route, upstream)| {
            // An unchanged route keeps its state (open circuit, buckets, metric handles) across the reload.
            let (breaker, metrics, limiter) = match previous.entries.iter().find(|e| e.route == route) {
                Some(old) => (old.breaker.clone(), old.metrics.clone(), old.limiter.clone()),
                None => (
                    Arc::new(Breaker::new(breaker.failures, breaker.open_for)),
                    Arc::new(RouteMetrics::new(&route.id)),
                    route
                        .rate_limit
                        .as_ref()
                        .and_then(|limit| RouteLimiter::new(Bucket::of(limit)))
                        .map(Arc::new),
                ),
            };
            Arc::new(RouteEntry {
                host: route.host.as_ref().map(|h| h.to_ascii_lowercase()),
                bare_prefix: route.path_prefix.trim_end_matches('/').to_owned(),
                upstream,
                limiter,
                breaker,
                metrics,
                route,
            })
        })
        .collect();
    Ok(Built {
        table: Table {
            entries,
            source: text.to_vec(),
        },
        skipped,
    })
}

fn report_skipped(skipped: &[Error]) {
    for error in skipped {
        metrics::counter!("airq_gateway_route_reload_errors_total").increment(1);
        tracing::error!(error = %error, "a route was left out of the table");
    }
}

/// The table in use, and where it comes from.
pub struct Routes {
    current: ArcSwap<Table>,
    file: Option<PathBuf>,
    breaker: BreakerSettings,
}

impl Routes {
    /// Loads `file` (no file: no routes, the gateway serves only its own endpoints).
    pub fn load(file: Option<PathBuf>, breaker: BreakerSettings) -> Result<Self, Error> {
        let table = match &file {
            Some(path) => {
                let text = std::fs::read(path).map_err(|source| Error::Read {
                    path: path.clone(),
                    source,
                })?;
                let built = build(path, &text, &Table::default(), breaker)?;
                report_skipped(&built.skipped);
                built.table
            }
            None => Table::default(),
        };
        tracing::info!(routes = table.entries.len(), "route table loaded");
        Ok(Self {
            current: ArcSwap::from_pointee(table),
            file,
            breaker,
        })
    }

    pub fn current(&self) -> Arc<Table> {
        self.current.load_full()
    }

    /// Reads the file again; swaps the table in when it changed and is valid. `Ok(true)` when a new table is in use.
    pub fn reload(&self) -> Result<bool, Error> {
        let Some(path) = &self.file else {
            return Ok(false);
        };
        let text = std::fs::read(path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        let current = self.current.load();
        if current.source == text {
            return Ok(false);
        }
        let built = build(path, &text, &current, self.breaker)?;
        report_skipped(&built.skipped);
        let table = built.table;
        tracing::info!(routes = table.entries.len(), "route table reloaded");
        self.current.store(Arc::new(table));
        Ok(true)
    }

    /// Checks the file every `every`. A ConfigMap volume replaces the file through a symlink swap, which file
    /// notifications report unreliably; reading a small file once a second is cheap and always right.
    pub async fn follow(self: Arc<Self>, every: Duration) {
        let mut ticker = tokio::time::interval(every);
        let mut failing = false;
        loop {
            ticker.tick().await;
            match self.reload() {
                Ok(_) => failing = false,
                Err(e) => {
                    metrics::counter!("airq_gateway_route_reload_errors_total").increment(1);
                    if !failing {
                        tracing::error!(error = %e, "the route table was not reloaded; the previous one stays in use");
                    }
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: BreakerSettings = BreakerSettings {
        failures: 2,
        open_for: Duration::from_millis(50),
    };

    fn table(yaml: &str) -> Result<Table, Error> {
        build(Path::new("routes.yaml"), yaml.as_bytes(), &Table::default(), SETTINGS).map(|built| built.table)
    }

    const TABLE: &str = "routes:
- { id: front, pathPrefix: /, upstream: 'http://front:80', timeoutSeconds: 30, access: { public: true } }
- { id: etl, pathPrefix: /api/etl/, upstream: 'http://etl:80', stripPrefix: true, timeoutSeconds: 60, access: { groups: [operators] } }
- { id: reports, pathPrefix: /reports, host: Reports.Example.org, upstream: 'http://reports:8080/base/', timeoutSeconds: 5, access: { public: true } }
";

    #[test]
    fn the_most_specific_route_wins_and_paths_are_rewritten() -> Result<(), Error> {
        let table = table(TABLE)?;
        let find = |host, path| table.find(host, path).map(|e| e.route.id.as_str());
        assert_eq!(find(None, "/api/etl/loads"), Some("etl"));
        assert_eq!(find(None, "/api/etl"), Some("etl"));
        assert_eq!(find(None, "/api/etlx"), Some("front"));
        assert_eq!(find(None, "/API/ETL/loads"), Some("front"));
        assert_eq!(find(Some("reports.example.org"), "/reports/x"), Some("reports"));
        assert_eq!(find(Some("reports.example.org"), "/reportsx"), Some("front"));
        assert_eq!(find(Some("other.org"), "/reports/x"), Some("front"));
        let etl = table
            .find(None, "/api/etl/loads")
            .map(|e| e.upstream_path("/api/etl/loads"));
        assert_eq!(etl.as_deref(), Some("/loads"));
        let reports = table.find(Some("reports.example.org"), "/reports/a");
        assert_eq!(
            reports.map(|e| e.upstream_path("/reports/a")).as_deref(),
            Some("/base/reports/a")
        );
        Ok(())
    }

    #[test]
    fn a_table_that_does_not_parse_is_refused() {
        let message = table("routes: [ { id: x } ]")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("not valid YAML"), "{message}");
    }

    #[test]
    fn invalid_routes_are_left_out_with_the_route_at_fault_and_the_others_kept() -> Result<(), Error> {
        let good =
            "- { id: good, pathPrefix: /good/, upstream: 'http://a', timeoutSeconds: 1, access: { public: true } }\n";
        let cases = [
            (
                "- { id: a, pathPrefix: api, upstream: 'http://a', timeoutSeconds: 1, access: { public: true } }",
                "route 1 (a): pathPrefix \"api\" must start with '/'",
            ),
            (
                "- { id: a, pathPrefix: /admin/x, upstream: 'http://a', timeoutSeconds: 1, access: { public: true } }",
                "which the gateway serves itself",
            ),
            (
                "- { id: a, pathPrefix: /a/../b, upstream: 'http://a', timeoutSeconds: 1, access: { public: true } }",
                "not a plain path",
            ),
            (
                "- { id: a, pathPrefix: /a, upstream: 'https://a', timeoutSeconds: 1, access: { public: true } }",
                "only http://",
            ),
            (
                "- { id: good, pathPrefix: /b, upstream: 'http://b', timeoutSeconds: 1, access: { public: true } }",
                "same id",
            ),
            (
                "- { id: a, pathPrefix: /a, upstream: 'http://a', timeoutSeconds: 0, access: { public: true } }",
                "timeoutSeconds",
            ),
        ];
        for (bad, expected) in cases {
            let yaml = format!("routes:\n{good}{bad}\n");
            let built = build(Path::new("routes.yaml"), yaml.as_bytes(), &Table::default(), SETTINGS)?;
            let ids: Vec<&str> = built.table.entries.iter().map(|e| e.route.id.as_str()).collect();
            assert_eq!(ids, ["good"], "{bad}");
            let messages: Vec<String> = built.skipped.iter().map(ToString::to_string).collect();
            assert!(
                messages.len() == 1 && messages[0].contains(expected),
                "{bad}: {messages:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn the_breaker_opens_after_failures_then_lets_one_trial_through() {
        let breaker = Breaker::new(2, Duration::from_millis(50));
        assert!(breaker.admit().is_ok());
        breaker.record(false);
        assert!(breaker.admit().is_ok());
        breaker.record(false);
        assert!(breaker.admit().is_err(), "open after two failures");
        std::thread::sleep(Duration::from_millis(60));
        assert!(breaker.admit().is_ok(), "one trial after the pause");
        assert!(breaker.admit().is_err(), "only one trial at a time");
        breaker.record(true);
        assert!(breaker.admit().is_ok(), "closed after a successful trial");
        assert!(!breaker.is_open());
    }
}

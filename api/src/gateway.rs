//! The gateway's route table: what the operator writes into the `airq-gateway-routes` ConfigMap (key
//! [`ROUTES_KEY`]) and the gateway reads. Adding a service needs a route here and nothing in any other service.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::Access;

/// The ConfigMap holding the route table.
pub const ROUTES_CONFIG_MAP: &str = "airq-gateway-routes";
/// The ConfigMap key holding the table, as YAML.
pub const ROUTES_KEY: &str = "routes.yaml";

/// Paths the gateway answers itself (its admin API and operational endpoints): never a route's.
pub const GATEWAY_PATHS: [&str; 4] = ["/admin/", "/healthz", "/readyz", "/metrics"];

/// The gateway path `path` falls under, if any (`/admin` counts as `/admin/`).
pub fn gateway_path(path: &str) -> Option<&'static str> {
    GATEWAY_PATHS
        .iter()
        .find(|own| path.starts_with(*own) || path.trim_end_matches('/') == own.trim_end_matches('/'))
        .copied()
}

/// Every route of the gateway, most specific first.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RouteTable {
    pub routes: Vec<Route>,
}

/// One route: requests whose path starts with `path_prefix` (and whose host matches, when set) go to `upstream`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Stable id, used in logs and metric labels (e.g. `adhoc/reports`).
    pub id: String,
    /// Path prefix, starting with `/`.
    pub path_prefix: String,
    /// Host the route is limited to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Base URL of the upstream service, e.g. `http://adhoc-reports.airq.svc:80`.
    pub upstream: String,
    /// Remove `path_prefix` before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Upstream timeout in seconds.
    pub timeout_seconds: u32,
    /// Retries of idempotent requests on connection failures.
    #[serde(default)]
    pub retries: u32,
    /// Who may call the route.
    pub access: Access,
    /// A token bucket per caller (API key, token subject, or client address for anonymous calls) on this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Cross-origin requests allowed from browsers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    /// Whether WebSocket upgrades are passed to the upstream (a tunnel the gateway no longer looks into once open).
    /// Other upgrades (`h2c`…) are never passed: the request goes on as plain HTTP/1.1.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub websocket: bool,
}

/// A token bucket: `requests_per_second` on average, up to `burst` at once.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Requests per second on average.
    #[schemars(range(min = 0.001))]
    pub requests_per_second: f64,
    /// Requests at once above that rate.
    #[schemars(range(min = 1))]
    pub burst: u32,
}

/// Which browser origins may call a route, and how.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cors {
    /// Origins allowed, e.g. `https://dashboard.example.org`; `*` allows any (never with credentials).
    pub allowed_origins: Vec<String>,
    /// Methods a preflight may ask for; empty means GET, HEAD and POST.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_methods: Vec<String>,
    /// Request headers a preflight may ask for, besides the CORS-safelisted ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_headers: Vec<String>,
    /// Response headers scripts may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// Allow cookies and `Authorization` on cross-origin requests.
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_seconds: Option<u32>,
}

impl Route {
    /// The order routes are tried in: the longest (most specific) prefix first, host-bound routes before the others,
    /// then by id.
    pub fn precedence(a: &Route, b: &Route) -> std::cmp::Ordering {
        b.path_prefix
            .len()
            .cmp(&a.path_prefix.len())
            .then_with(|| b.host.is_some().cmp(&a.host.is_some()))
            .then_with(|| a.id.cmp(&b.id))
    }
}

impl RouteTable {
    /// Sorts the routes by [`Route::precedence`]: the table's text does not depend on the order its routes were
    /// gathered in.
    pub fn sort(&mut self) {
        self.routes.sort_by(Route::precedence);
    }
}

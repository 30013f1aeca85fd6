//! The dashboard: one HTML page, its script and its style sheet, compiled into the binary. Every URL in them is
//! relative, so the dashboard works wherever the gateway or the ingress mounts the front service (`/`, `/airq/`…).

use airq_api::paths::front as paths;
use std::sync::LazyLock;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::caching::{self, Freshness};

/// A file of the dashboard with its ETag, digested once.
struct Asset {
    content_type: &'static str,
    body: &'static str,
    etag: String,
}

impl Asset {
    fn new(content_type: &'static str, body: &'static str) -> Self {
        Self {
            content_type,
            body,
            etag: caching::etag(body.as_bytes()),
        }
    }

    fn respond(&self, request: &HeaderMap) -> Response {
        caching::respond_tagged(
            request,
            self.content_type,
            Body::from(self.body),
            &self.etag,
            Freshness::Revalidate,
        )
    }
}

static INDEX: LazyLock<Asset> =
    LazyLock::new(|| Asset::new("text/html; charset=utf-8", include_str!("../assets/index.html")));
static SCRIPT: LazyLock<Asset> =
    LazyLock::new(|| Asset::new("text/javascript; charset=utf-8", include_str!("../assets/app.js")));
static STYLE: LazyLock<Asset> =
    LazyLock::new(|| Asset::new("text/css; charset=utf-8", include_str!("../assets/app.css")));
static ICON: LazyLock<Asset> = LazyLock::new(|| Asset::new("image/svg+xml", include_str!("../assets/icon.svg")));

/// Only the dashboard's own files run: no inline script, nothing from elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
     frame-ancestors 'none'; base-uri 'self'; form-action 'self'";

pub fn router() -> Router {
    Router::new()
        .route("/", get(|h: HeaderMap| async move { INDEX.respond(&h) }))
        .route(paths::INDEX, get(|h: HeaderMap| async move { INDEX.respond(&h) }))
        .route(
            &format!("{}app.js", paths::ASSETS),
            get(|h: HeaderMap| async move { SCRIPT.respond(&h) }),
        )
        .route(
            &format!("{}app.css", paths::ASSETS),
            get(|h: HeaderMap| async move { STYLE.respond(&h) }),
        )
        .route(
            &format!("{}icon.svg", paths::ASSETS),
            get(|h: HeaderMap| async move { ICON.respond(&h) }),
        )
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("referrer-policy"),
            HeaderValue::from_static("same-origin"),
        ))
}

/// A page that does not exist, for a person: JSON under `api/`, a short HTML page elsewhere.
pub async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        return airq_core::http::ApiError::not_found(format!("no API endpoint {}", uri.path())).into_response();
    }
    (
        axum::http::StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<!doctype html><title>Not found</title><p>There is no such page. <a href=\"./\">Open the dashboard</a>.",
    )
        .into_response()
}

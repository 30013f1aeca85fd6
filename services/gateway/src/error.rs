//! Every answer the gateway gives itself (rather than the upstream's), as JSON with a stable `code`, in the shape
//! every airq API uses: `{"error": {"code": "...", "message": "..."}}`.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::path::PathError;

/// Why the gateway answered instead of the upstream.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid path: {0}")]
    Path(#[from] PathError),
    #[error("no route serves {0}")]
    NoRoute(String),
    #[error("this route needs an API key (header 'Authorization: Bearer <key>' or 'X-Api-Key') or a bearer token")]
    Unauthenticated,
    #[error("{0}")]
    BadCredentials(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("the request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("the request headers are larger than the limit of {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("{what}; retry after {} s", whole_seconds(*retry_after))]
    RateLimited { what: String, retry_after: Duration },
    #[error("the upstream of route {route} cannot be reached")]
    UpstreamUnreachable { route: String },
    #[error("the upstream of route {route} is failing; the gateway stopped calling it for a while")]
    CircuitOpen { route: String, retry_after: Duration },
    #[error("the upstream of route {route} did not answer within {seconds} s")]
    UpstreamTimeout { route: String, seconds: u32 },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the request failed in the gateway; its log has the details")]
    Internal,
    /// A request that could be read two ways (two credentials, two hosts): refused rather than guessed.
    #[error("{0}")]
    Ambiguous(String),
    /// The caller's body broke off or was malformed: the caller's failure, not the upstream's.
    #[error("the request body could not be read: {0}")]
    BadBody(String),
    /// The caller sent its body slower than the route's timeout.
    #[error("the request body was not received within {seconds} s")]
    BodyTimeout { seconds: u32 },
    #[error("{0}")]
    UpgradeRefused(String),
    #[error("the gateway does not pass {0} requests on")]
    MethodNotAllowed(axum::http::Method),
}

/// A wait in whole seconds, rounded up and at least 1: "retry after 0 s" would invite an immediate retry that fails
/// again. The message and the `Retry-After` header say the same.
pub fn whole_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Path(_) => StatusCode::BAD_REQUEST,
            Self::NoRoute(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unauthenticated | Self::BadCredentials(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamUnreachable { .. } => StatusCode::BAD_GATEWAY,
            Self::CircuitOpen { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Ambiguous(_) | Self::BadBody(_) | Self::UpgradeRefused(_) => StatusCode::BAD_REQUEST,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Path(_) => "invalid_path",
            Self::NoRoute(_) => "no_route",
            Self::Unauthenticated => "unauthenticated",
            Self::BadCredentials(_) => "invalid_credentials",
            Self::Forbidden(_) => "forbidden",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::HeadersTooLarge { .. } => "headers_too_large",
            Self::RateLimited { .. } => "rate_limited",
            Self::UpstreamUnreachable { .. } => "upstream_unreachable",
            Self::CircuitOpen { .. } => "upstream_unavailable",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::Invalid(_) => "invalid_request",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::Internal => "internal",
            Self::Ambiguous(_) => "ambiguous_request",
            Self::BadBody(_) => "invalid_body",
            Self::BodyTimeout { .. } => "request_timeout",
            Self::UpgradeRefused(_) => "upgrade_refused",
            Self::MethodNotAllowed(_) => "method_not_allowed",
        }
    }

    /// An internal failure: logged in full, answered without details.
    pub fn internal(error: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %error, "gateway request failed");
        Self::Internal
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::json!({ "error": { "code": self.code(), "message": self.to_string() } });
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Unauthenticated | Self::BadCredentials(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"airq\""),
                );
            }
            Self::RateLimited { retry_after, .. } | Self::CircuitOpen { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(whole_seconds(*retry_after)));
            }
            Self::MethodNotAllowed(_) => {
                headers.insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                );
            }
            Self::BodyTooLarge { .. } | Self::BadBody(_) | Self::BodyTimeout { .. } | Self::Ambiguous(_) => {
                // The rest of the body is not read (or the framing of the request is in doubt), so the connection
                // cannot carry another request: say so, or a client reusing it from its pool sends the next request
                // into a closing connection.
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

impl From<crate::store::Error> for GatewayError {
    fn from(error: crate::store::Error) -> Self {
        match error {
            crate::store::Error::NotFound(message) => Self::NotFound(message),
            crate::store::Error::Conflict(message) => Self::Conflict(message),
            crate::store::Error::Invalid(message) => Self::Invalid(message),
            other => Self::internal(&other),
        }
    }
}

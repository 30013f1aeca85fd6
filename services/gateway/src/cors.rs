//! Cross-origin requests, per route: preflights answered by the gateway (before authentication: browsers send no
//! credentials with them), and the `Access-Control-*` headers added to the upstream's answers for allowed origins.

use airq_api::gateway::Cors;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;

fn allowed(cors: &Cors, origin: &str) -> bool {
    cors.allowed_origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
}

fn allow_origin_value(cors: &Cors, origin: &HeaderValue) -> HeaderValue {
    if cors.allowed_origins.iter().any(|o| o == "*") && !cors.allow_credentials {
        HeaderValue::from_static("*")
    } else {
        origin.clone()
    }
}

/// The answer to a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`); `None` when the request
/// is not one. A preflight from an origin or for a method the route does not allow gets 403.
pub fn preflight(cors: &Cors, method: &Method, headers: &HeaderMap) -> Option<Response> {
    if method != Method::OPTIONS {
        return None;
    }
    let origin = headers.get(header::ORIGIN)?;
    let requested = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
    let methods: Vec<String> = if cors.allowed_methods.is_empty() {
        vec!["GET".to_owned(), "HEAD".to_owned(), "POST".to_owned()]
    } else {
        cors.allowed_methods.iter().map(|m| m.to_ascii_uppercase()).collect()
    };
    let origin_text = origin.to_str().unwrap_or_default();
    let method_ok = requested
        .to_str()
        .is_ok_and(|m| methods.iter().any(|allowed| allowed.eq_ignore_ascii_case(m)));
    let headers_ok = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|asked| {
            asked
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .all(|h| cors.allowed_headers.iter().any(|a| a.eq_ignore_ascii_case(h)))
        });
    let mut response = Response::new(Body::empty());
    if !(allowed(cors, origin_text) && method_ok && headers_ok) {
        *response.status_mut() = StatusCode::FORBIDDEN;
        return Some(response);
    }
    *response.status_mut() = StatusCode::NO_CONTENT;
    let out = response.headers_mut();
    out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin_value(cors, origin));
    if let Ok(value) = HeaderValue::from_str(&methods.join(", ")) {
        out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, value);
    }
    if !cors.allowed_headers.is_empty()
        && let Ok(value) = HeaderValue::from_str(&cors.allowed_headers.join(", "))
    {
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, value);
    }
    if cors.allow_credentials {
        out.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if let Some(age) = cors.max_age_seconds {
        out.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(age));
    }
    out.append(header::VARY, HeaderValue::from_static("Origin"));
    Some(response)
}

/// Adds the CORS headers to an answer for `origin`, when the route allows it.
pub fn decorate(cors: &Cors, origin: &HeaderValue, headers: &mut HeaderMap) {
    if !allowed(cors, origin.to_str().unwrap_or_default()) {
        return;
    }
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin_value(cors, origin));
    if cors.allow_credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !cors.expose_headers.is_empty()
        && let Ok(value) = HeaderValue::from_str(&cors.expose_headers.join(", "))
    {
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, value);
    }
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// Header names a preflight may carry (for tests and docs).
pub const PREFLIGHT_HEADERS: [HeaderName; 2] = [
    header::ACCESS_CONTROL_REQUEST_METHOD,
    header::ACCESS_CONTROL_REQUEST_HEADERS,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn cors() -> Cors {
        Cors {
            allowed_origins: vec!["https://dash.example.org".to_owned()],
            allowed_methods: vec!["GET".to_owned(), "PUT".to_owned()],
            allowed_headers: vec!["X-Api-Key".to_owned()],
            max_age_seconds: Some(600),
            ..Cors::default()
        }
    }

    fn asking(origin: &'static str, method: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ORIGIN, HeaderValue::from_static(origin));
        headers.insert(PREFLIGHT_HEADERS[0].clone(), HeaderValue::from_static(method));
        headers
    }

    #[test]
    fn preflights_from_allowed_origins_are_answered() {
        let answer = preflight(&cors(), &Method::OPTIONS, &asking("https://dash.example.org", "PUT"));
        let answer = answer.expect("a preflight");
        assert_eq!(answer.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            answer
                .headers()
                .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .map(|v| v.as_bytes()),
            Some(&b"https://dash.example.org"[..])
        );
        assert_eq!(
            answer
                .headers()
                .get(header::ACCESS_CONTROL_MAX_AGE)
                .map(|v| v.as_bytes()),
            Some(&b"600"[..])
        );
    }

    #[test]
    fn other_origins_methods_and_headers_are_refused() {
        let refused = |headers: HeaderMap| preflight(&cors(), &Method::OPTIONS, &headers).map(|r| r.status());
        assert_eq!(
            refused(asking("https://evil.example", "GET")),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            refused(asking("https://dash.example.org", "DELETE")),
            Some(StatusCode::FORBIDDEN)
        );
        let mut headers = asking("https://dash.example.org", "GET");
        headers.insert(PREFLIGHT_HEADERS[1].clone(), HeaderValue::from_static("x-other"));
        assert_eq!(refused(headers), Some(StatusCode::FORBIDDEN));
        assert!(preflight(&cors(), &Method::GET, &asking("https://dash.example.org", "GET")).is_none());
    }
}

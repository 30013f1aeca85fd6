//! Answers a browser or a cache can keep: each carries an ETag (a digest of its body) and a `Cache-Control`, and a
//! request whose `If-None-Match` names the current ETag gets `304 Not Modified` without the body.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// How long an answer may be reused.
#[derive(Debug, Clone, Copy)]
pub enum Freshness {
    /// Reused for this many seconds without asking (data views: loads add data every few minutes at most).
    Seconds(u32),
    /// Always revalidated with the ETag (the dashboard's files, the operations view).
    Revalidate,
}

impl Freshness {
    fn header(self) -> HeaderValue {
        match self {
            Self::Seconds(s) => {
                HeaderValue::from_str(&format!("public, max-age={s}")).unwrap_or(HeaderValue::from_static("no-cache"))
            }
            Self::Revalidate => HeaderValue::from_static("no-cache"),
        }
    }
}

/// A weak ETag of `body`: weak, because the compression layer may send the same content in another encoding.
pub fn etag(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("W/\"{hex}\"")
}

/// Whether `If-None-Match` in `request` names `tag` (weak comparison, as RFC 9110 asks for this header).
pub fn not_modified(request: &HeaderMap, tag: &str) -> bool {
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|candidate| candidate.trim() == "*" || bare(candidate) == bare(tag))
}

/// `body` of `content_type` with its ETag and `freshness`, or 304 when the request already has it.
pub fn respond(request: &HeaderMap, content_type: &'static str, body: Vec<u8>, freshness: Freshness) -> Response {
    let tag = etag(&body);
    respond_tagged(request, content_type, Body::from(body), &tag, freshness)
}

/// As [`respond`], for a body whose ETag is already known (the dashboard's files, digested once).
pub fn respond_tagged(
    request: &HeaderMap,
    content_type: &'static str,
    body: Body,
    tag: &str,
    freshness: Freshness,
) -> Response {
    let tag_value = HeaderValue::from_str(tag).unwrap_or(HeaderValue::from_static("W/\"0\""));
    if not_modified(request, tag) {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, tag_value), (header::CACHE_CONTROL, freshness.header())],
        )
            .into_response();
    }
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::ETAG, tag_value),
            (header::CACHE_CONTROL, freshness.header()),
        ],
        body,
    )
        .into_response()
}

/// A JSON answer (see [`respond`]).
pub fn json<T: serde::Serialize>(request: &HeaderMap, value: &T, freshness: Freshness) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => respond(request, "application/json", body, freshness),
        Err(e) => airq_core::http::ApiError::internal(&e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_is_compared_weakly_and_in_lists() {
        let tag = etag(b"hello");
        assert!(tag.starts_with("W/\"") && tag.len() == 28, "{tag}");
        assert_ne!(tag, etag(b"hello!"));
        let mut headers = HeaderMap::new();
        assert!(!not_modified(&headers, &tag));
        let strong = tag.trim_start_matches("W/").to_owned();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"other\", {strong}")).expect("a header value"),
        );
        assert!(not_modified(&headers, &tag));
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert!(!not_modified(&headers, &tag));
    }

    #[test]
    fn a_known_version_gets_304_without_a_body() {
        let mut headers = HeaderMap::new();
        let first = respond(&headers, "application/json", b"{}".to_vec(), Freshness::Seconds(60));
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(
            first.headers().get(header::CACHE_CONTROL).and_then(|v| v.to_str().ok()),
            Some("public, max-age=60")
        );
        let tag = first.headers().get(header::ETAG).cloned().expect("an ETag");
        headers.insert(header::IF_NONE_MATCH, tag);
        let second = respond(&headers, "application/json", b"{}".to_vec(), Freshness::Seconds(60));
        assert_eq!(second.status(), StatusCode::NOT_MODIFIED);
    }
}

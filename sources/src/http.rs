//! What the API connectors share: a GET that honours rate limits (429 with `Retry-After` or `x-ratelimit-reset`)
//! and retries server errors with backoff, and reads JSON with errors that name the request.

use std::time::Duration;

use reqwest::{Client, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;

use super::SourceError;

/// Attempts per request before a 429 or a server error becomes the load's error.
pub const ATTEMPTS: u32 = 6;

/// The longest wait for a rate limit to reset.
const MAX_WAIT: Duration = Duration::from_secs(120);

/// An HTTP client for the connectors, with timeouts.
pub fn client() -> Result<Client, SourceError> {
    airq_core::http::client_builder(concat!("airq-etl/", env!("CARGO_PKG_VERSION")))
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| SourceError::Http {
            input: "HTTP client".to_owned(),
            detail: e.to_string(),
        })
}

/// How long a 429 asks to wait: `Retry-After` seconds, else `x-ratelimit-reset` seconds, else exponential backoff.
fn rate_limit_wait(headers: &reqwest::header::HeaderMap, attempt: u32) -> Duration {
    let seconds = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
    };
    let wait = seconds("retry-after")
        .or_else(|| seconds("x-ratelimit-reset"))
        .map(Duration::from_secs_f64)
        .unwrap_or_else(|| backoff(attempt));
    wait.min(MAX_WAIT)
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250 * 2u64.pow(attempt.min(8)))
}

/// GETs `what` (named in errors, e.g. "OpenAQ sensor 7, page 3") and parses its JSON body as `T`.
pub async fn get_json<T: DeserializeOwned>(
    request: impl Fn() -> RequestBuilder,
    what: &str,
    source: &'static str,
) -> Result<T, SourceError> {
    parse_json(&get_body(request, what, source).await?, what)
}

/// A response body as `T`, or an error naming `what` and saying where the JSON is wrong.
pub fn parse_json<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, SourceError> {
    serde_json::from_slice(body).map_err(|e| SourceError::Format {
        input: what.to_owned(),
        detail: format!("the body is not the expected JSON ({e})"),
    })
}

/// GETs `what`: the body of a successful answer, after waiting out rate limits and retrying server errors.
pub async fn get_body(
    request: impl Fn() -> RequestBuilder,
    what: &str,
    source: &'static str,
) -> Result<Vec<u8>, SourceError> {
    let error = |detail: String| SourceError::Http {
        input: what.to_owned(),
        detail,
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let outcome = request().send().await;
        let response = match outcome {
            Ok(response) => response,
            Err(e) if attempt < ATTEMPTS && (e.is_timeout() || e.is_connect()) => {
                tracing::warn!(request = what, error = %e, attempt, "request failed; retrying");
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
            Err(e) => return Err(error(format!("request failed: {e}"))),
        };
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            metrics::counter!("airq_etl_source_rate_limited_total", "source" => source).increment(1);
            if attempt >= ATTEMPTS {
                return Err(error(format!("still rate-limited (429) after {ATTEMPTS} attempts")));
            }
            let wait = rate_limit_wait(response.headers(), attempt);
            tracing::warn!(
                request = what,
                wait_seconds = wait.as_secs_f64(),
                "rate-limited (429); waiting"
            );
            tokio::time::sleep(wait).await;
            continue;
        }
        if status.is_server_error() && attempt < ATTEMPTS {
            tracing::warn!(request = what, %status, attempt, "server error; retrying");
            tokio::time::sleep(backoff(attempt)).await;
            continue;
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| error(format!("reading the body failed: {e}")))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            let text: String = text.chars().take(300).collect();
            return Err(error(format!("the server answered {status}: {text}")));
        }
        return Ok(body.to_vec());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn waits_as_long_as_the_server_asks() {
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-reset", HeaderValue::from_static("3"));
        assert_eq!(rate_limit_wait(&headers, 1), Duration::from_secs(3));
        headers.insert("retry-after", HeaderValue::from_static("1"));
        assert_eq!(rate_limit_wait(&headers, 1), Duration::from_secs(1));
        headers.insert("retry-after", HeaderValue::from_static("100000"));
        assert_eq!(rate_limit_wait(&headers, 1), MAX_WAIT);
        assert_eq!(rate_limit_wait(&HeaderMap::new(), 2), Duration::from_millis(1000));
    }
}

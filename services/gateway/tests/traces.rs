//! OpenTelemetry traces from the gateway binary: with an OTLP endpoint configured, the span of a request through
//! the gateway reaches a real OTLP/HTTP receiver (protobuf, `POST /v1/traces`) with the caller's trace id, the
//! caller's span as its parent, the span id the upstream was given as parent, and the service's name; a caller's
//! "not sampled" decision is kept (nothing exported for that trace); a malformed endpoint stops the start-up with a
//! message naming the setting.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use common::{Gateway, Upstream};

/// An OTLP/HTTP receiver on loopback that keeps every export it is sent.
struct Receiver {
    url: String,
    exports: Arc<Mutex<Vec<(String, Bytes)>>>,
}

impl Receiver {
    async fn start() -> Self {
        let exports: Arc<Mutex<Vec<(String, Bytes)>>> = Arc::default();
        let kept = exports.clone();
        let app = Router::new().route(
            "/v1/traces",
            post(move |headers: HeaderMap, body: Bytes| {
                let kept = kept.clone();
                async move {
                    let content_type = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    kept.lock().unwrap().push((content_type, body));
                    // An empty ExportTraceServiceResponse.
                    ([("content-type", "application/x-protobuf")], Bytes::new())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, exports }
    }

    /// Whether an export so far holds `bytes`.
    fn holds(&self, bytes: &[u8]) -> bool {
        self.exports
            .lock()
            .unwrap()
            .iter()
            .any(|(_, body)| body.windows(bytes.len()).any(|w| w == bytes))
    }
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn a_request_through_the_gateway_is_exported_over_otlp_as_a_child_of_the_callers_span() {
    let receiver = Receiver::start().await;
    let upstream = Upstream::start("up").await;
    let routes = common::one_public_route(&upstream);
    let gateway = Gateway::start(
        &routes,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.as_str()),
            // The SDK's batch is sent every 100 ms instead of every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;

    let (trace, caller_span) = ("5a6b7c8d9e0f11223344556677889900", "1122334455667788");
    let response = gateway
        .http
        .get(gateway.url("/echo"))
        .header("traceparent", format!("00-{trace}-{caller_span}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.hits().pop().unwrap();
    let parent: Vec<&str> = seen.headers["traceparent"].split('-').collect();
    assert_eq!(parent[1], trace);
    let gateway_span = parent[2].to_owned();
    assert_ne!(gateway_span, caller_span);

    // Not sampled by the caller: the trace goes on (ids passed on) but is not exported.
    let unsampled = "0f0e0d0c0b0a09080706050403020100";
    gateway
        .http
        .get(gateway.url("/echo"))
        .header("traceparent", format!("00-{unsampled}-{caller_span}-00"))
        .send()
        .await
        .unwrap();
    let seen = upstream.hits().pop().unwrap();
    assert!(seen.headers["traceparent"].starts_with(&format!("00-{unsampled}-")));
    assert!(seen.headers["traceparent"].ends_with("-00"));

    airq_testenv::eventually(
        "the request's span at the receiver",
        Duration::from_secs(10),
        || async {
            if receiver.holds(&hex(trace)) {
                Ok(())
            } else {
                Err(format!("{} exports so far", receiver.exports.lock().unwrap().len()))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()));
    // The span's own id is the parent the upstream was given; its parent is the caller's span.
    assert!(receiver.holds(&hex(&gateway_span)));
    assert!(receiver.holds(&hex(caller_span)));
    assert!(receiver.holds(b"airq-gateway"), "service.name");
    assert!(
        receiver
            .exports
            .lock()
            .unwrap()
            .iter()
            .all(|(content_type, _)| content_type == "application/x-protobuf")
    );
    // Stopping flushes what is queued; the unsampled trace never left.
    gateway.service.terminate().await.unwrap();
    assert!(!receiver.holds(&hex(unsampled)));
}

#[tokio::test]
async fn a_malformed_otlp_endpoint_is_a_clear_start_up_error() {
    let db = airq_testenv::database().await.unwrap();
    let (status, output) = airq_testenv::service::run_to_exit(
        std::path::Path::new(env!("CARGO_BIN_EXE_airq-gateway")),
        &["--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0"],
        &[
            ("AIRQ_DATABASE_URL", &db.url),
            ("AIRQ_KEY_HASH_SECRET", "a-test-secret-of-enough-length"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
        ],
    )
    .await
    .unwrap();
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("invalid OTLP endpoint \"collector:4318\" (--otlp-endpoint / OTEL_EXPORTER_OTLP_ENDPOINT)"),
        "{output}"
    );
}

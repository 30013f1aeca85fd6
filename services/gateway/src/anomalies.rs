//! Anomaly detection on the gateway's own traffic: every `--anomaly-interval-ms`, each route's request rate, share
//! of 5xx answers and mean latency since the previous sample go to a detector per route and signal (a rolling
//! z-score over a day by default, `airq_anomaly::watch`). Open anomalies are exported as metrics, listed by `GET /admin/anomalies` (this
//! replica's), and recorded in the platform's anomalies table as this replica's (the dashboard's operations page
//! lists every part's): refreshed at each sample with an expiry a few samples ahead, so a replica that goes away
//! leaves no anomaly open behind it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use airq_anomaly::watch::{Anomaly, Method, Settings, Watcher};
use airq_core::store::Store;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::json;

use crate::AppState;
use crate::config::Detector;

/// The watcher shared by the sampling task and the admin API.
pub type SharedWatcher = Arc<Mutex<Watcher>>;

/// A watcher for samples every `interval_ms` looking back `span_seconds` (the rolling window, or the season).
pub fn watcher(detector: Detector, interval_ms: u64, span_seconds: u64, threshold: f64) -> SharedWatcher {
    let interval_ms = interval_ms.max(1);
    let samples = usize::try_from(span_seconds.saturating_mul(1_000) / interval_ms)
        .unwrap_or(usize::MAX)
        .clamp(2, 1 << 20);
    let method = match detector {
        Detector::Rolling => Method::Rolling { window: samples },
        Detector::Seasonal => Method::Seasonal {
            season: samples,
            seasons: 7,
        },
    };
    Arc::new(Mutex::new(Watcher::new(Settings {
        method,
        threshold,
        clear_after: 5,
    })))
}

fn lock(watcher: &SharedWatcher) -> std::sync::MutexGuard<'_, Watcher> {
    watcher.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The name this replica records its anomalies under: the pod's name in a cluster (`HOSTNAME`), the host's
/// otherwise.
pub fn reporter() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".to_owned())
}

/// Samples every route of the current table each `interval` until the task is aborted, recording the anomalies
/// in `log`.
pub async fn follow(state: AppState, interval: Duration, log: Store) {
    let reporter = reporter();
    // Refreshed every sample; a few missed samples end the episode.
    let lease = chrono::Duration::from_std((interval * 3).max(Duration::from_secs(10))).unwrap_or_default();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        sample(&state, interval.as_secs_f64());
        let (open, closed) = {
            let mut watcher = lock(&state.anomalies);
            (watcher.open(), watcher.take_closed())
        };
        let recorded = log.record_watched("gateway", &reporter, &open, &closed, Utc::now() + lease, detail);
        if let Err(e) = recorded.await {
            tracing::warn!(error = %e, "could not record the gateway's anomalies");
        }
    }
}

/// What people read of an anomaly of `signal` on a route.
fn detail(anomaly: &Anomaly) -> String {
    let expected = anomaly
        .expected
        .map_or_else(|| "nothing yet".to_owned(), |e| format!("{e:.3}"));
    let what = match anomaly.signal.as_str() {
        "request_rate" => "requests per second",
        "error_ratio" => "share of 5xx answers",
        "latency_seconds" => "mean latency (s)",
        other => other,
    };
    format!(
        "{what} on route {}: {:.3} where {expected} is usual",
        anomaly.subject, anomaly.value
    )
}

/// Takes one sample of every route and updates the anomaly metrics.
pub fn sample(state: &AppState, seconds: f64) {
    let now = chrono::Utc::now().timestamp();
    let table = state.routes.current();
    let mut watcher = lock(&state.anomalies);
    for entry in &table.entries {
        let route = entry.route.id.as_str();
        let sample = entry.metrics.take_sample();
        watcher.observe("request_rate", route, sample.requests as f64 / seconds.max(1e-3), now);
        // Without requests there is no ratio or latency to judge.
        if sample.requests > 0 {
            let requests = sample.requests as f64;
            watcher.observe("error_ratio", route, sample.server_errors as f64 / requests, now);
            watcher.observe("latency_seconds", route, sample.micros as f64 / requests / 1e6, now);
        }
    }
    for (signal, route, score, open) in watcher.scores() {
        let labels = [("signal", signal.to_owned()), ("route", route.to_owned())];
        metrics::gauge!("airq_gateway_anomaly_score", &labels).set(score);
        metrics::gauge!("airq_gateway_anomalous", &labels).set(if open { 1.0 } else { 0.0 });
    }
    metrics::gauge!("airq_gateway_anomalies_open").set(watcher.open().len() as f64);
}

fn describe(anomaly: &Anomaly) -> serde_json::Value {
    json!({
        "signal": anomaly.signal,
        "route": anomaly.subject,
        "since": chrono::DateTime::from_timestamp(anomaly.since, 0).map(|t| t.to_rfc3339()),
        "value": anomaly.value,
        "expected": anomaly.expected,
        "score": anomaly.score,
        "peakScore": anomaly.peak_score,
    })
}

/// `GET /admin/anomalies`: the anomalies open on this replica.
#[utoipa::path(get, path = "/admin/anomalies", tag = "admin",
    responses((status = 200, description = "`anomalies`: each open anomaly (signal, route, since, value, expected, score); `followed`: how many signals are followed", body = serde_json::Value)))]
pub async fn list(State(state): State<AppState>) -> Response {
    let watcher = lock(&state.anomalies);
    let open: Vec<serde_json::Value> = watcher.open().iter().map(describe).collect();
    Json(json!({ "anomalies": open, "followed": watcher.scores().len() })).into_response()
}

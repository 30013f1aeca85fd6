//! Anomaly detection on the gateway's own traffic: every `--anomaly-interval-ms`, each route's request rate, share
//! of 5xx answers and mean latency since the previous sample go to a seasonal detector per route and signal
//! (`airq_anomaly::watch`). Open anomalies are exported as metrics and listed by `GET /admin/anomalies`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use airq_anomaly::watch::{Anomaly, Settings, Watcher};
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::AppState;

/// The watcher shared by the sampling task and the admin API.
pub type SharedWatcher = Arc<Mutex<Watcher>>;

/// A watcher for samples every `interval_ms` with a season of `season_seconds`.
pub fn watcher(interval_ms: u64, season_seconds: u64, threshold: f64) -> SharedWatcher {
    let interval_ms = interval_ms.max(1);
    let season = usize::try_from(season_seconds.saturating_mul(1_000) / interval_ms)
        .unwrap_or(usize::MAX)
        .max(2);
    Arc::new(Mutex::new(Watcher::new(Settings {
        season,
        seasons: 7,
        threshold,
        clear_after: 5,
    })))
}

fn lock(watcher: &SharedWatcher) -> std::sync::MutexGuard<'_, Watcher> {
    watcher.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Samples every route of the current table each `interval` until the task is aborted.
pub async fn follow(state: AppState, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        sample(&state, interval.as_secs_f64());
    }
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
pub async fn list(State(state): State<AppState>) -> Response {
    let watcher = lock(&state.anomalies);
    let open: Vec<serde_json::Value> = watcher.open().iter().map(describe).collect();
    Json(json!({ "anomalies": open, "followed": watcher.scores().len() })).into_response()
}

//! Anomaly detection on the gateway's traffic, with the binary and a real upstream: sampled every 100 ms with a
//! 2-second season, steady traffic raises no error-ratio anomaly; a burst of 500s opens one for the route — listed
//! by `GET /admin/anomalies` with the value expected, and exported as `airq_gateway_anomalous` — which closes once
//! the route answers normally again. The episode is in the platform's anomalies table meanwhile, as this replica's,
//! and closed there after.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Gateway, Upstream};
use reqwest::Method;
use serde_json::Value;

/// Sends requests to `path` every 10 ms for `seconds`.
async fn traffic(gateway: &Gateway, path: &str, seconds: f64) {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    while Instant::now() < until {
        ticks.tick().await;
        let _ = gateway.http.get(gateway.url(path)).send().await.unwrap();
    }
}

/// The gateway's error-ratio episodes of route `up` in the anomalies table.
async fn recorded(gateway: &Gateway) -> Vec<airq_core::store::StoredAnomaly> {
    let db = airq_core::db::Database::connect_url(&gateway.db.url, 1).await.unwrap();
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    let found = airq_core::store::Store::new(db.clone())
        .anomalies(since, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.component == "gateway" && a.signal == "error_ratio" && a.subject == "up")
        .collect();
    db.close().await;
    found
}

async fn error_ratio_anomaly(gateway: &Gateway) -> Option<Value> {
    let (status, body) = gateway.admin(Method::GET, "/admin/anomalies", None).await;
    assert_eq!(status, 200, "{body}");
    body["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["signal"] == "error_ratio" && a["route"] == "up")
        .cloned()
}

#[tokio::test]
async fn a_burst_of_server_errors_is_an_anomaly_of_its_route_until_it_ends() {
    let upstream = Upstream::start("up").await;
    let routes = common::one_public_route(&upstream);
    let gateway = Gateway::start(
        &routes,
        &[
            ("AIRQ_ANOMALY_INTERVAL_MS", "100"),
            ("AIRQ_ANOMALY_SEASON_SECONDS", "2"),
        ],
    )
    .await;

    // Steady, healthy traffic for two seasons.
    traffic(&gateway, "/echo", 4.0).await;
    assert_eq!(error_ratio_anomaly(&gateway).await, None);
    let (_, body) = gateway.admin(Method::GET, "/admin/anomalies", None).await;
    assert!(body["followed"].as_u64().unwrap() >= 3, "{body}");

    // The upstream fails every request for a second.
    traffic(&gateway, "/status/500", 1.0).await;
    let anomaly = airq_testenv::eventually("an error-ratio anomaly", Duration::from_secs(5), || async {
        error_ratio_anomaly(&gateway).await.ok_or_else(|| "none yet".to_owned())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()));
    assert!(anomaly["expected"].as_f64().unwrap() < 0.01, "{anomaly}");
    assert!(anomaly["peakScore"].as_f64().unwrap() > 5.5, "{anomaly}");
    assert!(anomaly["since"].as_str().is_some_and(|s| s.contains('T')), "{anomaly}");
    let metrics = gateway.metrics().await;
    assert!(
        metrics.lines().any(|l| l.starts_with("airq_gateway_anomalous{")
            && l.contains("signal=\"error_ratio\"")
            && l.ends_with(" 1")),
        "{metrics}"
    );

    let episode = airq_testenv::eventually("the episode recorded", Duration::from_secs(5), || async {
        let found = recorded(&gateway).await;
        match found.as_slice() {
            [one] if one.is_open() => Ok(one.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    assert!(!episode.reporter.is_empty() && episode.peak_score > 5.5, "{episode:?}");
    assert!(
        episode.detail.contains("share of 5xx answers on route up"),
        "{episode:?}"
    );

    // Healthy again: the anomaly closes after five quiet samples, here and in the table.
    let closed = async {
        traffic(&gateway, "/echo", 3.0).await;
        error_ratio_anomaly(&gateway).await
    };
    assert_eq!(closed.await, None);
    let after = airq_testenv::eventually("the episode closed", Duration::from_secs(5), || async {
        let found = recorded(&gateway).await;
        match found.as_slice() {
            [one] if !one.is_open() => Ok(one.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    assert_eq!(after.id, episode.id, "the same episode, closed");
    assert!(after.closed_at.unwrap() > after.opened_at);

    // Only the admin group may read them.
    let (status, _, _) = gateway.get("/admin/anomalies", None).await;
    assert_eq!(status, 401);
}

//! A model's forecast error followed once the truth is stored, against a real PostgreSQL loaded with a slice of the
//! Beijing data: a model trained on data to mid-May scores each hour that arrives against its day-ahead forecast
//! (ordinary errors, intervals that mostly hold, no anomaly); six hours of a broken NO2 sensor open an anomaly for
//! that station in the shared table, and the corrected data that follows closes it.

#![allow(clippy::unwrap_used)]

mod common;

use std::fmt::Write as _;

use airq_api::etl::CsvFormat;
use airq_core::db::Database;
use airq_core::store::{Store, StoredAnomaly};
use airq_etl::load::{LoadRequest, run_to_end};
use airq_predictive::api::ApiState;
use airq_predictive::monitor::{ModelMonitor, SIGNAL};
use airq_predictive::registry::Registry;
use airq_predictive::spec::ModelSpec;
use chrono::{Duration, TimeZone, Utc};
use serde_json::json;

fn load(url: &str, from: &str, to: &str) -> LoadRequest {
    LoadRequest::csv_backfill("slice", url, CsvFormat::Beijing, (from, to), "test")
}

async fn forecast_anomalies(store: &Store) -> Vec<StoredAnomaly> {
    store
        .anomalies(Utc::now() - Duration::hours(1), 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.component == "predictive" && a.signal == SIGNAL)
        .collect()
}

#[tokio::test]
async fn forecast_errors_are_followed_once_the_truth_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let slice = common::slice_csv(dir.path()).display().to_string();
    let test_db = airq_testenv::database().await.unwrap();
    let db = Database::connect_url(&test_db.url, 5).await.unwrap();
    db.migrate().await.unwrap();
    let store = Store::new(db.clone());
    let registry = Registry::new(db.clone());

    // Data to 2016-05-15, and a linear NO2 model trained on it.
    run_to_end(&store, &load(&slice, "2015-10-01", "2016-05-15"))
        .await
        .unwrap();
    let mut spec = common::spec(json!({ "linear": {} }));
    spec["training"]["to"] = json!("2016-05-15");
    let spec = ModelSpec::from_json(&spec).unwrap();
    airq_predictive::cli::train_version(
        &store,
        &registry,
        "no2",
        &spec,
        None,
        None,
        airq_predictive::model::Quiet,
    )
    .await
    .unwrap();
    let state = ApiState::new(registry, store.clone(), None);
    let mut monitor = ModelMonitor::new("no2");

    // The first round scores the newest two weeks and a bit, which warms the detector.
    let warm = monitor.round(&state).await.unwrap();
    assert!(warm.len() > 2 * 300, "{} hours scored", warm.len());
    assert!(
        warm.iter()
            .all(|s| s.time < Utc.with_ymd_and_hms(2016, 5, 15, 0, 0, 0).unwrap().timestamp())
    );
    assert!(
        monitor.round(&state).await.unwrap().is_empty(),
        "nothing new, nothing scored"
    );

    // Ten days of truth arrive: every hour with a value is scored once, with ordinary errors.
    run_to_end(&store, &load(&slice, "2016-05-15", "2016-05-25"))
        .await
        .unwrap();
    let scored = monitor.round(&state).await.unwrap();
    assert!(
        scored.len() > 2 * 200 && scored.len() <= 2 * 240,
        "{} hours",
        scored.len()
    );
    let mae = scored.iter().map(|s| (s.forecast - s.truth).abs()).sum::<f64>() / scored.len() as f64;
    let coverage = scored.iter().filter(|s| s.inside).count() as f64 / scored.len() as f64;
    assert!(mae < 25.0, "day-ahead NO2 MAE {mae}");
    assert!(coverage > 0.75, "90 % intervals held {coverage}");
    monitor.record(&store, Utc::now() + Duration::minutes(5)).await.unwrap();
    assert!(monitor.open().is_empty(), "{:?}", monitor.open());
    assert!(forecast_anomalies(&store).await.is_empty());

    // A broken sensor at Aotizhongxin: six hours at 350 µg/m³.
    let start = Utc.with_ymd_and_hms(2016, 5, 25, 0, 0, 0).unwrap();
    let mut broken = String::from("station,parameter,time,value,unit\n");
    for hour in 0..6 {
        let time = (start + Duration::hours(hour)).format("%Y-%m-%dT%H:%M:%SZ");
        writeln!(broken, "Aotizhongxin,no2,{time},350,ug/m3").unwrap();
    }
    let broken_file = dir.path().join("broken.csv");
    std::fs::write(&broken_file, broken).unwrap();
    run_to_end(
        &store,
        &LoadRequest::csv("broken", &broken_file.display().to_string(), CsvFormat::Long, "test"),
    )
    .await
    .unwrap();
    let scored = monitor.round(&state).await.unwrap();
    assert_eq!(scored.len(), 6, "{scored:?}");
    assert!(scored.iter().all(|s| s.station == "Aotizhongxin" && !s.inside));
    let open = monitor.open();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].subject, "no2/Aotizhongxin");
    monitor.record(&store, Utc::now() + Duration::minutes(5)).await.unwrap();
    let recorded = forecast_anomalies(&store).await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert!(recorded[0].is_open() && recorded[0].peak_score > 5.5, "{recorded:?}");
    assert!(recorded[0].detail.contains("350.0 was measured"), "{recorded:?}");

    // The corrected data and the following days: ordinary errors again, and the episode closes.
    run_to_end(&store, &load(&slice, "2016-05-25", "2016-05-28"))
        .await
        .unwrap();
    let scored = monitor.round(&state).await.unwrap();
    assert!(
        scored
            .iter()
            .all(|s| s.station != "Aotizhongxin" || s.time > start.timestamp() + 5 * 3600),
        "each hour of a station is scored once"
    );
    assert!(
        scored
            .iter()
            .any(|s| s.station == "Changping" && s.time == start.timestamp())
    );
    assert!(monitor.open().is_empty(), "{:?}", monitor.open());
    monitor.record(&store, Utc::now() + Duration::minutes(5)).await.unwrap();
    let recorded = forecast_anomalies(&store).await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert!(!recorded[0].is_open(), "{recorded:?}");
    db.close().await;
    test_db.remove().await.unwrap();
}

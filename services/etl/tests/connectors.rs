//! The OpenAQ and Open-Meteo connectors against a local HTTP server that replays responses of the real shape (the
//! recorded bodies in `sources/tests/replay/`), into a real PostgreSQL: paging to the end, `meta.found` as a string, a 429
//! with `x-ratelimit-reset` waited out, empty pages, units converted, and a malformed page that fails the load with
//! an error naming it while the pages before it stay whole.

// A failed step of a test's set-up is the test's failure: unwrap reports it with its location.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use airq_api::common::SecretKeyRef;
use airq_api::etl::{Backfill, EtlSource, GeoPoint, LoadMode, OpenAqSource, OpenMeteoSource};
use airq_core::db::Database;
use airq_core::store::Store;
use airq_etl::load::{self, LoadRequest, LoadSpec};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Duration, Utc};
use indicatif::ProgressBar;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const KEY: &str = "test-openaq-key";

fn recorded(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../sources/tests/replay")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// What the replay server does, and what it saw.
#[derive(Default)]
struct Replay {
    /// Sensor and page that answer with a truncated body.
    malformed: Option<(i64, usize)>,
    /// Sensor and page that answer 429 once before the data.
    rate_limited: Option<(i64, usize)>,
    rate_limit_sent: AtomicUsize,
    /// A sensor with no data at all: its first page is empty.
    empty: Option<i64>,
    requests: AtomicUsize,
    pages: Mutex<Vec<(i64, usize)>>,
}

/// The hourly value a sensor has at `time`, or None (a gap) every 97th hour; every 500th is negative.
fn value_at(sensor: i64, time: DateTime<Utc>) -> Option<f64> {
    let hour = time.timestamp() / 3600;
    if hour % 97 == 0 {
        return None;
    }
    if hour % 500 == 0 {
        return Some(-2.0);
    }
    Some((hour % 50) as f64 + sensor as f64 / 10_000.0)
}

async fn location(Path(id): Path<i64>, headers: HeaderMap, State(replay): State<Arc<Replay>>) -> Response {
    replay.requests.fetch_add(1, Ordering::SeqCst);
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(KEY) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "detail": "Unauthorized. A valid API key must be provided in the X-API-Key header." })),
        )
            .into_response();
    }
    if id != 2178 {
        return Json(json!({ "meta": { "name": "openaq-api", "website": "/", "page": 1, "limit": 100, "found": 0 }, "results": [] })).into_response();
    }
    Json(recorded("openaq/location.json")).into_response()
}

async fn hours(
    Path(sensor): Path<i64>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    State(replay): State<Arc<Replay>>,
) -> Response {
    replay.requests.fetch_add(1, Ordering::SeqCst);
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(KEY) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let from: DateTime<Utc> = query["datetime_from"].parse().unwrap();
    let to: DateTime<Utc> = query["datetime_to"].parse().unwrap();
    let limit: usize = query["limit"].parse().unwrap();
    let page: usize = query["page"].parse().unwrap();
    if replay.rate_limited == Some((sensor, page)) && replay.rate_limit_sent.fetch_add(1, Ordering::SeqCst) == 0 {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [
                ("x-ratelimit-limit", "60"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-used", "60"),
                ("x-ratelimit-reset", "1"),
            ],
            Json(json!({ "message": "Too many requests" })),
        )
            .into_response();
    }
    replay.pages.lock().unwrap().push((sensor, page));
    if replay.empty == Some(sensor) {
        return Json(json!({ "meta": { "name": "openaq-api", "website": "/", "page": page, "limit": limit, "found": 0 }, "results": [] })).into_response();
    }
    if replay.malformed == Some((sensor, page)) {
        return (
            StatusCode::OK,
            [("content-type", "application/json")],
            "{\"meta\": {\"page\": 2}, \"results\": [{\"value\": 1.",
        )
            .into_response();
    }
    // Every hour of the window (datetime_to inclusive, as the API does), with gaps where the sensor had none.
    let (parameter, units) = if sensor == 3916 {
        ("no2", "ppb")
    } else {
        ("pm25", "µg/m³")
    };
    let mut all = Vec::new();
    let mut time = from;
    while time <= to {
        if let Some(value) = value_at(sensor, time) {
            let mut hour = recorded("openaq/hour.json");
            hour["value"] = json!(value);
            hour["parameter"]["name"] = json!(parameter);
            hour["parameter"]["units"] = json!(units);
            hour["period"]["datetimeFrom"]["utc"] = json!(time.format("%Y-%m-%dT%H:%M:%SZ").to_string());
            hour["period"]["datetimeTo"]["utc"] =
                json!((time + Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ").to_string());
            all.push(hour);
        }
        time += Duration::hours(1);
    }
    let results: Vec<Value> = all.iter().skip((page - 1) * limit).take(limit).cloned().collect();
    // The API says ">1000" when it did not count further.
    let found = if all.len() > 1000 {
        json!(">1000")
    } else {
        json!(all.len())
    };
    Json(json!({ "meta": { "name": "openaq-api", "website": "/", "page": page, "limit": limit, "found": found }, "results": results })).into_response()
}

async fn air_quality(Query(query): Query<HashMap<String, String>>, State(replay): State<Arc<Replay>>) -> Response {
    replay.requests.fetch_add(1, Ordering::SeqCst);
    let start: chrono::NaiveDate = query["start_date"].parse().unwrap();
    let end: chrono::NaiveDate = query["end_date"].parse().unwrap();
    if start.format("%Y").to_string() == "2010" {
        return (StatusCode::BAD_REQUEST, Json(recorded("open-meteo/error.json"))).into_response();
    }
    let mut body = recorded("open-meteo/air-quality.json");
    let mut times = Vec::new();
    let mut pm25 = Vec::new();
    let mut no2 = Vec::new();
    let mut time = start.and_hms_opt(0, 0, 0).unwrap().and_utc();
    let end = end.and_hms_opt(23, 0, 0).unwrap().and_utc();
    while time <= end {
        times.push(json!(time.format("%Y-%m-%dT%H:%M").to_string()));
        let hour = time.timestamp() / 3600;
        pm25.push(if hour % 10 == 0 {
            Value::Null
        } else {
            json!(20.0 + (hour % 7) as f64)
        });
        no2.push(json!(30.0 + (hour % 5) as f64));
        time += Duration::hours(1);
    }
    if query.get("hourly").is_some_and(|h| h.contains("ozone")) {
        // A broken answer: one array shorter than the times.
        no2.pop();
    }
    body["hourly"] = json!({ "time": times, "pm2_5": pm25, "nitrogen_dioxide": no2, "ozone": [] });
    Json(body).into_response()
}

/// One Beijing file, as a web server would send it.
async fn beijing_file() -> Response {
    let folder = airq_testenv::shared_data("beijing-multisite").unwrap();
    let mut files: Vec<_> = std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let bytes = std::fs::read(&files[0]).unwrap();
    ([("content-type", "application/gzip")], bytes).into_response()
}

async fn server(replay: Arc<Replay>) -> String {
    let app = Router::new()
        .route("/files/beijing.csv.gz", get(beijing_file))
        .route("/v3/locations/{id}", get(location))
        .route("/v3/sensors/{id}/hours", get(hours))
        .route("/v1/air-quality", get(air_quality))
        .with_state(replay);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

async fn store() -> (Store, airq_testenv::TestDatabase) {
    let db = airq_testenv::database().await.unwrap();
    let database = Database::connect_url(&db.url, 5).await.unwrap();
    database.migrate().await.unwrap();
    (Store::new(database), db)
}

fn openaq_request(base: &str, locations: Vec<i64>, from: &str, to: &str, key: Option<&str>) -> LoadRequest {
    LoadRequest {
        name: "openaq-test".to_owned(),
        spec: LoadSpec {
            source: EtlSource {
                openaq: Some(OpenAqSource {
                    locations,
                    parameters: vec![],
                    api_key_secret: SecretKeyRef {
                        name: "openaq".to_owned(),
                        key: "key".to_owned(),
                    },
                    base_url: Some(base.to_owned()),
                }),
                ..EtlSource::default()
            },
            mode: LoadMode::Backfill,
            backfill: Some(Backfill {
                from: from.to_owned(),
                to: to.to_owned(),
                chunk_days: 60,
                parallelism: 2,
            }),
        },
        requested_by: "test".to_owned(),
        parallelism: 2,
        openaq_api_key: key.map(str::to_owned),
    }
}

/// Hours of [from, to) with a value, and those of them that are negative (refused).
fn expected(sensor: i64, from: &str, to: &str) -> (i64, i64) {
    let from: DateTime<Utc> = format!("{from}T00:00:00Z").parse().unwrap();
    let to: DateTime<Utc> = format!("{to}T00:00:00Z").parse().unwrap();
    let (mut values, mut negative) = (0, 0);
    let mut time = from;
    while time < to {
        match value_at(sensor, time) {
            Some(v) if v < 0.0 => {
                values += 1;
                negative += 1;
            }
            Some(_) => values += 1,
            None => {}
        }
        time += Duration::hours(1);
    }
    (values, negative)
}

async fn stored(store: &Store) -> HashMap<(String, String), i64> {
    store
        .series_counts()
        .await
        .unwrap()
        .into_iter()
        .map(|c| ((c.station, c.parameter), c.count))
        .collect()
}

#[tokio::test]
async fn openaq_pages_to_the_end_waits_out_a_429_and_converts_units() {
    let replay = Arc::new(Replay {
        rate_limited: Some((3917, 2)),
        ..Replay::default()
    });
    let base = server(replay.clone()).await;
    let (store, db) = store().await;
    // 60 days: 1,440 hours per sensor, two pages of at most 1,000.
    let started = Instant::now();
    let outcome = load::run(
        &store,
        &openaq_request(&base, vec![2178], "2024-01-01", "2024-03-01", Some(KEY)),
        &ProgressBar::hidden(),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(
        started.elapsed().as_secs_f64() >= 1.0,
        "the 429's x-ratelimit-reset of 1 s was waited"
    );
    assert_eq!(
        replay.rate_limit_sent.load(Ordering::SeqCst),
        2,
        "one 429, then the page again"
    );
    let mut pages = replay.pages.lock().unwrap().clone();
    pages.sort();
    assert_eq!(
        pages,
        vec![(3916, 1), (3916, 2), (3917, 1), (3917, 2)],
        "both sensors paged to the end; humidity skipped"
    );

    let (pm25, pm25_negative) = expected(3917, "2024-01-01", "2024-03-01");
    let (no2, no2_negative) = expected(3916, "2024-01-01", "2024-03-01");
    assert!(pm25 > 1000, "the window needs two pages");
    assert_eq!(outcome.values_read, pm25 + no2);
    assert_eq!(outcome.counts.rejected, pm25_negative + no2_negative);
    let counts = stored(&store).await;
    assert_eq!(
        counts[&("openaq-2178".to_owned(), "pm25".to_owned())],
        pm25 - pm25_negative
    );
    assert_eq!(
        counts[&("openaq-2178".to_owned(), "no2".to_owned())],
        no2 - no2_negative
    );

    // NO2 arrives in ppb and is stored in µg/m³ (× 46.0055 / 24.45).
    let (raw_hour, stored_value): (i64, f64) = sqlx::query_as(
        "select extract(epoch from time)::bigint / 3600, value from measurements where parameter = 'no2' order by time limit 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let ppb = (raw_hour % 50) as f64 + 3916.0 / 10_000.0;
    assert!(
        (stored_value - ppb * 46.0055 / 24.45).abs() < 1e-6,
        "{stored_value} from {ppb} ppb"
    );
    let (name, latitude): (String, f64) =
        sqlx::query_as("select name, latitude from stations where code = 'openaq-2178'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((name.as_str(), latitude), ("Del Norte", 35.1353));

    // Run again: nothing new, nothing duplicated.
    let again = load::run(
        &store,
        &openaq_request(&base, vec![2178], "2024-01-01", "2024-03-01", Some(KEY)),
        &ProgressBar::hidden(),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!((again.counts.inserted, again.counts.updated), (0, 0));
    assert_eq!(stored(&store).await, counts);
}

#[tokio::test]
async fn an_empty_page_ends_the_sensor_and_the_load_succeeds() {
    let replay = Arc::new(Replay {
        empty: Some(3917),
        ..Replay::default()
    });
    let base = server(replay.clone()).await;
    let (store, _db) = store().await;
    let outcome = load::run(
        &store,
        &openaq_request(&base, vec![2178], "2024-01-01", "2024-01-03", Some(KEY)),
        &ProgressBar::hidden(),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let mut pages = replay.pages.lock().unwrap().clone();
    pages.sort();
    assert_eq!(pages, vec![(3916, 1), (3917, 1)]);
    let (no2, negative) = expected(3916, "2024-01-01", "2024-01-03");
    assert_eq!(outcome.values_read, no2);
    let counts = stored(&store).await;
    assert_eq!(counts.get(&("openaq-2178".to_owned(), "pm25".to_owned())), None);
    assert_eq!(counts[&("openaq-2178".to_owned(), "no2".to_owned())], no2 - negative);
}

#[tokio::test]
async fn a_malformed_page_fails_the_load_naming_it_and_keeps_whole_pages() {
    let replay = Arc::new(Replay {
        malformed: Some((3916, 2)),
        ..Replay::default()
    });
    let base = server(replay.clone()).await;
    let (store, db) = store().await;
    let result = load::run(
        &store,
        &openaq_request(&base, vec![2178], "2024-01-01", "2024-03-01", Some(KEY)),
        &ProgressBar::hidden(),
        &CancellationToken::new(),
    )
    .await;
    let message = result.unwrap_err().to_string();
    assert!(
        message.contains("sensor 3916") && message.contains("page 2"),
        "{message}"
    );
    assert!(message.contains("not the expected JSON"), "{message}");
    // Page 1 of NO2 is stored whole; nothing of page 2.
    let no2: i64 = sqlx::query_scalar("select count(*) from measurements where parameter = 'no2'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let rejected_no2: i64 = sqlx::query_scalar("select count(*) from rejected_rows where parameter = 'no2'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(no2 + rejected_no2, 1000, "exactly the first page");
    let (status, error): (String, Option<String>) =
        sqlx::query_as("select status, error from load_runs order by id desc limit 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(status, "failed");
    assert!(error.unwrap_or_default().contains("page 2"));
}

#[tokio::test]
async fn openaq_errors_say_what_is_wrong() {
    let replay = Arc::new(Replay::default());
    let base = server(replay.clone()).await;
    let (store, db) = store().await;
    let unknown = load::run(
        &store,
        &openaq_request(&base, vec![9999], "2024-01-01", "2024-01-02", Some(KEY)),
        &ProgressBar::hidden(),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        unknown.contains("location 9999") && unknown.contains("no such location"),
        "{unknown}"
    );
    let no_key = load::run(
        &store,
        &openaq_request(&base, vec![2178], "2024-01-01", "2024-01-02", None),
        &ProgressBar::hidden(),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(no_key.contains("AIRQ_OPENAQ_API_KEY"), "{no_key}");
    let wrong_key = load::run(
        &store,
        &openaq_request(&base, vec![2178], "2024-01-01", "2024-01-02", Some("wrong")),
        &ProgressBar::hidden(),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(wrong_key.contains("401"), "{wrong_key}");
    assert!(
        !wrong_key.contains("wrong\""),
        "the key is not repeated in errors: {wrong_key}"
    );
    let rows: i64 = sqlx::query_scalar("select count(*) from measurements")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

fn open_meteo_request(base: &str, hourly: &[&str], from: &str, to: &str) -> LoadRequest {
    LoadRequest {
        name: "open-meteo-test".to_owned(),
        spec: LoadSpec {
            source: EtlSource {
                open_meteo: Some(OpenMeteoSource {
                    points: vec![GeoPoint {
                        station: "beijing-centre".to_owned(),
                        latitude: 39.9,
                        longitude: 116.4,
                    }],
                    hourly: hourly.iter().map(|h| (*h).to_owned()).collect(),
                    base_url: Some(base.to_owned()),
                }),
                ..EtlSource::default()
            },
            mode: LoadMode::Backfill,
            backfill: Some(Backfill {
                from: from.to_owned(),
                to: to.to_owned(),
                chunk_days: 2,
                parallelism: 2,
            }),
        },
        requested_by: "test".to_owned(),
        parallelism: 2,
        openaq_api_key: None,
    }
}

#[tokio::test]
async fn open_meteo_hourly_arrays_load_with_gaps_and_errors_are_clear() {
    let replay = Arc::new(Replay::default());
    let base = server(replay.clone()).await;
    let (store, _db) = store().await;
    // Five days in windows of two: three requests.
    let outcome = load::run(
        &store,
        &open_meteo_request(&base, &["pm2_5", "nitrogen_dioxide"], "2024-01-01", "2024-01-06"),
        &ProgressBar::hidden(),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(replay.requests.load(Ordering::SeqCst), 3);
    let hours = 5 * 24;
    let start = 1_704_067_200 / 3600;
    let pm25_gaps = (start..start + hours).filter(|h| h % 10 == 0).count() as i64;
    let counts = stored(&store).await;
    assert_eq!(counts[&("beijing-centre".to_owned(), "no2".to_owned())], hours);
    assert_eq!(
        counts[&("beijing-centre".to_owned(), "pm25".to_owned())],
        hours - pm25_gaps
    );
    assert_eq!(outcome.values_read, 2 * hours - pm25_gaps);

    let broken = load::run(
        &store,
        &open_meteo_request(&base, &["ozone", "nitrogen_dioxide"], "2024-01-01", "2024-01-02"),
        &ProgressBar::hidden(),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(broken.contains("hourly.ozone has 0 values for 24 times"), "{broken}");
    let refused = load::run(
        &store,
        &open_meteo_request(&base, &["pm2_5"], "2010-01-01", "2010-01-02"),
        &ProgressBar::hidden(),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        refused.contains("400") && refused.contains("out of allowed range"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_csv_file_from_a_url_loads_like_the_same_file_on_disk() {
    let base = server(Arc::new(Replay::default())).await;
    let (from_url, _db_url) = store().await;
    let (from_disk, _db_disk) = store().await;
    let csv_request = |location: String| LoadRequest {
        name: "csv".to_owned(),
        spec: LoadSpec {
            source: EtlSource {
                csv: Some(airq_api::etl::CsvSource {
                    url: location,
                    format: airq_api::etl::CsvFormat::Beijing,
                }),
                ..EtlSource::default()
            },
            mode: LoadMode::Incremental,
            backfill: None,
        },
        requested_by: "test".to_owned(),
        parallelism: 1,
        openaq_api_key: None,
    };
    let folder = airq_testenv::shared_data("beijing-multisite").unwrap();
    let mut files: Vec<_> = std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let stop = CancellationToken::new();
    let over_http = load::run(
        &from_url,
        &csv_request(format!("{base}/files/beijing.csv.gz")),
        &ProgressBar::hidden(),
        &stop,
    )
    .await
    .unwrap();
    let on_disk = load::run(
        &from_disk,
        &csv_request(files[0].display().to_string()),
        &ProgressBar::hidden(),
        &stop,
    )
    .await
    .unwrap();
    assert!(over_http.counts.inserted > 300_000, "{over_http:?}");
    assert_eq!(over_http.counts, on_disk.counts);
    assert_eq!(
        from_url.fingerprint().await.unwrap(),
        from_disk.fingerprint().await.unwrap()
    );
    let missing = load::run(
        &from_url,
        &csv_request(format!("{base}/files/none.csv")),
        &ProgressBar::hidden(),
        &stop,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(missing.contains("none.csv") && missing.contains("404"), "{missing}");
}

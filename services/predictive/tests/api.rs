//! The predictive API over HTTP against a real PostgreSQL loaded with a slice of the Beijing data: specs, training
//! from the database and from an uploaded CSV file, versions, evaluations, forecasts with intervals that match the
//! CLI's, clear 4xx errors, and the OpenAPI description.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use airq_core::store::Store;
use airq_predictive::api::{self, ApiState};
use airq_predictive::registry::Registry;
use serde_json::{Value, json};

async fn serve(db: airq_core::db::Database) -> String {
    let app = api::router(ApiState::new(Registry::new(db.clone()), Store::new(db), None));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

async fn get(http: &reqwest::Client, url: String) -> (u16, Value) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn wait_trained(http: &reqwest::Client, base: &str, name: &str, id: i64) -> Value {
    let url = format!("{base}/models/{name}/trainings/{id}");
    airq_testenv::wait_finished(http, &url, "the training to finish", Duration::from_secs(300))
        .await
        .unwrap()
}

#[tokio::test]
async fn train_version_and_forecast_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let csv = common::slice_csv(dir.path());
    let (test_db, db) = common::loaded_database(&csv).await;
    let base = serve(db.clone()).await;
    let http = airq_testenv::http_client();
    let name = "no2-knn";

    // Unknown model; a model with a spec but no version.
    let (status, body) = get(&http, format!("{base}/models/nothing/forecast?station=Aotizhongxin")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let response = http
        .put(format!("{base}/models/{name}/spec"))
        .json(&common::spec(json!({ "knn": { "k": 10 } })))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, body) = get(&http, format!("{base}/models/{name}/forecast?station=Aotizhongxin")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("not_trained")),
        "{body}"
    );

    // A bad spec names the field; an unknown algorithm is refused.
    let mut bad = common::spec(json!({ "knn": { "k": 10 } }));
    bad["confidenceLevels"] = json!([1.5]);
    let response = http
        .put(format!("{base}/models/{name}/spec"))
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains("confidenceLevels"),
        "{body}"
    );
    let response = http
        .post(format!("{base}/models/{name}/train"))
        .json(&json!({ "spec": common::spec(json!({ "boosting": {} })) }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);

    // Train from the database.
    let response = http
        .post(format!("{base}/models/{name}/train"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let training: Value = response.json().await.unwrap();
    assert_eq!(training["source"], "database");
    let done = wait_trained(&http, &base, name, training["id"].as_i64().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["version"]["version"], "v1");
    let coverage = done["version"]["metrics"]["intervals"][1]["coverage"].as_f64().unwrap();
    assert!((0.7..=1.0).contains(&coverage), "held-out 90 % coverage {coverage}");

    // A forecast for a known case: from 2016-05-20 15:00 UTC, the hour 6 hours later.
    let origin = "2016-05-20T15:00:00Z";
    let at = "2016-05-20T21:00:00Z";
    let (status, api) = get(
        &http,
        format!("{base}/models/{name}/forecast?station=Aotizhongxin&origin={origin}&at={at}&confidence=0.8,0.9"),
    )
    .await;
    assert_eq!(status, 200, "{api}");
    assert_eq!(api["version"], "v1");
    assert_eq!(api["origin"], origin);
    let point = &api["points"][0];
    assert_eq!(point["horizonHours"], 6);
    let (value, i80, i90) = (
        point["value"].as_f64().unwrap(),
        &point["intervals"][0],
        &point["intervals"][1],
    );
    assert!(value > 0.0);
    assert!(i90["lower"].as_f64().unwrap() <= i80["lower"].as_f64().unwrap());
    assert!(i80["lower"].as_f64().unwrap() <= value && value <= i80["upper"].as_f64().unwrap());
    assert!(i80["upper"].as_f64().unwrap() <= i90["upper"].as_f64().unwrap());

    // The same forecast as the model gives on the whole file: the request reads only the history the features
    // need (the target over the longest lag, the weather over a day) and nothing else changes.
    let (stored, model) = Registry::new(db.clone()).load(name, None).await.unwrap().unwrap();
    let whole_file = airq_predictive::data::Dataset::from_csv(
        &csv.display().to_string(),
        airq_api::etl::CsvFormat::Beijing,
        airq_core::parameter::Parameter::No2,
    )
    .await
    .unwrap();
    let seconds = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp();
    let request = airq_predictive::forecast::Request {
        station: "Aotizhongxin".to_owned(),
        at: Some(seconds(at)),
        origin: Some(seconds(origin)),
        confidence: vec![0.8, 0.9],
    };
    let expected = airq_predictive::forecast::forecast(
        name,
        &stored.version,
        &model,
        &whole_file,
        seconds(origin),
        &request,
        None,
    )
    .unwrap();
    assert_eq!(serde_json::to_value(&expected).unwrap(), api);

    // The CLI answers the same.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_airq-predictive"))
        .args([
            "forecast",
            "--name",
            name,
            "--station",
            "Aotizhongxin",
            "--origin",
            origin,
            "--at",
            at,
        ])
        .args([
            "--confidence",
            "0.8,0.9",
            "--database-url",
            &test_db.url,
            "--log-level",
            "warn",
        ])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let cli: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(cli, api);

    // The whole horizon from the newest data.
    let (status, whole) = get(&http, format!("{base}/models/{name}/forecast?station=Changping")).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["points"].as_array().unwrap().len(), 24);
    // Values and bounds to 0.01, not the model's float noise.
    for point in whole["points"].as_array().unwrap() {
        let mut numbers = vec![point["value"].as_f64().unwrap()];
        for interval in point["intervals"].as_array().unwrap() {
            numbers.extend([interval["lower"].as_f64().unwrap(), interval["upper"].as_f64().unwrap()]);
        }
        for n in numbers {
            assert_eq!((n * 100.0).round() / 100.0, n, "{point}");
        }
    }
    assert_eq!(
        whole["points"][0]["intervals"].as_array().unwrap().len(),
        2,
        "the model's levels"
    );

    // Clear 4xx errors.
    for (query, status, needle) in [
        (
            "station=Nowhere",
            404,
            "unknown station \"Nowhere\": the stations are listed at GET /api/stations",
        ),
        (
            &format!("station=Aotizhongxin&origin={origin}&at=2016-05-20T10:00:00Z") as &str,
            422,
            "not after the forecast origin",
        ),
        (
            &format!("station=Aotizhongxin&origin={origin}&at=2016-05-23T10:00:00Z"),
            422,
            "beyond the model's horizon",
        ),
        (
            "station=Aotizhongxin&origin=2019-01-01T00:00:00Z",
            422,
            "after the newest no2 data",
        ),
        ("station=Aotizhongxin&confidence=0.99999", 422, "is not supported"),
        ("station=Aotizhongxin&confidence=1.2", 422, "strictly between 0 and 1"),
        (
            "station=Aotizhongxin&at=yesterday",
            422,
            "is not a time: give YYYY-MM-DD",
        ),
        ("", 422, "give the station"),
    ] {
        let (got, body) = get(&http, format!("{base}/models/{name}/forecast?{query}")).await;
        assert_eq!(got, status, "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{query}: {message}");
    }

    // Change a parameter and train from an uploaded CSV file: a second version, with the new parameter.
    let response = http
        .put(format!("{base}/models/{name}/spec"))
        .json(&common::spec(json!({ "knn": { "k": 30, "distance": "manhattan" } })))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = http
        .post(format!("{base}/models/{name}/train"))
        .header("content-type", "text/csv")
        .body(std::fs::read(&csv).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let training: Value = response.json().await.unwrap();
    assert_eq!(training["source"], "upload");
    let done = wait_trained(&http, &base, name, training["id"].as_i64().unwrap()).await;
    assert_eq!(done["version"]["version"], "v2", "{done}");
    assert_eq!(done["version"]["spec"]["algorithm"]["knn"]["k"], 30);
    let (_, second) = get(
        &http,
        format!("{base}/models/{name}/forecast?station=Aotizhongxin&origin={origin}&at={at}&version=v2"),
    )
    .await;
    assert_eq!(second["version"], "v2");
    assert_ne!(second["points"][0]["value"], api["points"][0]["value"]);
    // A broken upload is the request's error.
    let response = http
        .post(format!("{base}/models/{name}/train"))
        .header("content-type", "text/csv")
        .body("not,a,beijing,file\n1,2,3,4\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);

    // Versions and models.
    let (_, versions) = get(&http, format!("{base}/models/{name}/versions")).await;
    assert_eq!(versions.as_array().unwrap().len(), 2);
    let (_, models) = get(&http, format!("{base}/models")).await;
    assert_eq!(models[0]["latest"]["version"], "v2");

    // An evaluation with explicit periods is stored.
    let response = http
        .post(format!("{base}/models/{name}/evaluate"))
        .json(&json!({ "fitFrom": "2015-10-01", "calibrateFrom": "2016-01-15", "testFrom": "2016-04-01", "testTo": "2016-06-01", "utcOffset": 8 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let evaluation: Value = response.json().await.unwrap();
    assert!(evaluation["metrics"]["mae"].as_f64().unwrap() > 0.0, "{evaluation}");
    assert_eq!(evaluation["metrics"]["forecasts"], 2 * 61);
    // A stored version tested as it is on a period; its scores are stored with the version.
    let response = http
        .post(format!("{base}/models/{name}/evaluate"))
        .json(&json!({ "version": "v1", "testFrom": "2016-05-01", "testTo": "2016-06-01", "utcOffset": 8 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let tested: Value = response.json().await.unwrap();
    assert_eq!(tested["version"], "v1");
    assert_eq!(tested["metrics"]["forecasts"], 2 * 31);
    assert!(tested["metrics"]["crps"].as_f64().unwrap() > 0.0, "{tested}");
    let response = http
        .post(format!("{base}/models/{name}/evaluate"))
        .json(&json!({ "testFrom": "2016-05-01", "testTo": "2016-06-01" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422, "neither a version nor the fitting periods");
    let (_, stored) = get(&http, format!("{base}/models/{name}/evaluations")).await;
    assert_eq!(stored.as_array().unwrap().len(), 2);
    assert_eq!(stored[0]["version"], "v1");

    // The OpenAPI description names every route.
    let (_, document) = get(&http, format!("{base}/openapi.json")).await;
    for path in [
        "/models",
        "/models/{name}/spec",
        "/models/{name}/train",
        "/models/{name}/forecast",
        "/forecast",
    ] {
        assert!(document["paths"].get(path).is_some(), "{path}");
    }
    assert!(document["components"]["schemas"].get("Knn").is_some());
    assert!(!document.to_string().contains("#/$defs/"));
    assert_eq!(document["servers"][0]["url"], "/api/predictive");
    let problems = airq_testenv::openapi::problems(&http, &base, None, &document).await;
    assert!(problems.is_empty(), "{problems:#?}");

    db.close().await;
    test_db.remove().await.unwrap();
}

#[tokio::test]
async fn the_training_job_stores_a_version_and_reports_it() {
    // What the operator's training Job runs: `airq-predictive train` with the spec in AIRQ_MODEL_SPEC.
    let dir = tempfile::tempdir().unwrap();
    let csv = common::slice_csv(dir.path());
    let (test_db, db) = common::loaded_database(&csv).await;
    let report = dir.path().join("report.json");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_airq-predictive"))
        .arg("train")
        .env("AIRQ_MODEL", "no2")
        .env("AIRQ_MODEL_REVISION", "abc123")
        .env(
            "AIRQ_MODEL_SPEC",
            common::spec(json!({ "linear": { "l2": 1.0 } })).to_string(),
        )
        .env("AIRQ_DATABASE_URL", &test_db.url)
        .env("AIRQ_REPORT_FILE", &report)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: airq_api::reports::TrainingReport = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(report.model_version, "v1");
    assert!(
        report.mae.unwrap() > 0.0 && report.coverage90.unwrap() > 0.5,
        "{report:?}"
    );
    // JSON log lines on stderr, one saying what was stored, its coverage a number (not a Rust `Some(…)`); stdout
    // is the stored version's JSON alone.
    let logs = String::from_utf8_lossy(&output.stderr);
    let stored_line = logs
        .lines()
        .find(|l| l.contains("\"model stored\"") && l.contains("\"version\":\"v1\""))
        .unwrap_or_else(|| panic!("{logs}"));
    let stored_line: Value = serde_json::from_str(stored_line).unwrap();
    assert!(stored_line["coverage90"].is_number(), "{stored_line}");
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["version"], "v1");
    let registry = Registry::new(db.clone());
    let stored = registry.versions(Some("no2")).await.unwrap();
    assert_eq!(stored[0].revision.as_deref(), Some("abc123"));
    // A spec with an unknown algorithm fails with the field named, and stores nothing.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_airq-predictive"))
        .arg("train")
        .env("AIRQ_MODEL", "no2")
        .env("AIRQ_MODEL_SPEC", common::spec(json!({ "forest": {} })).to_string())
        .env("AIRQ_DATABASE_URL", &test_db.url)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown algorithm \"forest\""));
    assert_eq!(registry.versions(Some("no2")).await.unwrap().len(), 1);
    db.close().await;
    test_db.remove().await.unwrap();
}

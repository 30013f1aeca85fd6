//! The loading API over HTTP, against a real PostgreSQL: start a load of two Beijing files, follow it to the end,
//! list runs, read what it refused; clear JSON errors for bad requests and unknown runs; the OpenAPI description
//! names every route.

// A failed step of a test's set-up is the test's failure: unwrap reports it with its location.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use airq_core::db::Database;
use airq_core::store::Store;
use airq_etl::api::{self, ApiState};
use serde_json::{Value, json};

async fn serve() -> (String, airq_testenv::TestDatabase) {
    let db = airq_testenv::database().await.unwrap();
    let database = Database::connect_url(&db.url, 5).await.unwrap();
    database.migrate().await.unwrap();
    let app = api::router(ApiState::new(Store::new(database), None));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}"), db)
}

fn two_files() -> tempfile::TempDir {
    let folder = airq_testenv::shared_data("beijing-multisite").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<_> = std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for file in files.iter().take(2) {
        std::os::unix::fs::symlink(file, dir.path().join(file.file_name().unwrap())).unwrap();
    }
    dir
}

#[tokio::test]
async fn a_load_started_over_http_runs_to_the_end() {
    let (base, _db) = serve().await;
    let http = airq_testenv::http_client();
    let files = two_files();
    let response = http
        .post(format!("{base}/loads"))
        .json(&json!({
            "name": "two-stations",
            "spec": { "source": { "csv": { "url": files.path().display().to_string(), "format": "beijing" } } }
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let run: Value = response.json().await.unwrap();
    let id = run["id"].as_i64().unwrap();
    assert_eq!(run["status"], "running");
    assert_eq!(run["requestedBy"], "api");

    // A second request for the same load while it runs is refused.
    let again = http
        .post(format!("{base}/loads"))
        .json(&json!({ "name": "two-stations", "spec": { "source": { "csv": { "url": "/nowhere" } } } }))
        .send()
        .await
        .unwrap();
    let status = again.status();
    let body: Value = again.json().await.unwrap();
    // Unless the first finished already (two files load in a second or two).
    if status == 409 {
        assert_eq!(body["error"]["code"], "conflict");
    }

    let finished = airq_testenv::wait_finished(
        &http,
        &format!("{base}/loads/{id}"),
        "the load to finish",
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    assert_eq!(finished["status"], "succeeded", "{finished}");
    let read = finished["rowsRead"].as_i64().unwrap();
    let inserted = finished["rowsInserted"].as_i64().unwrap();
    let rejected = finished["rowsRejected"].as_i64().unwrap();
    assert!(inserted > 800_000, "two stations of four years: {finished}");
    assert_eq!(read, inserted + rejected);

    let runs: Value = http
        .get(format!("{base}/loads?name=two-stations"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(runs.as_array().unwrap().iter().any(|r| r["id"] == id));

    let refused: Value = http
        .get(format!("{base}/loads/{id}/rejected?limit=5"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refused = refused.as_array().unwrap();
    assert_eq!(refused.len() as i64, rejected.min(5));
    for row in refused {
        assert!(row["reason"].as_str().unwrap().len() > 10, "{row}");
        assert!(row["record"].as_str().unwrap().starts_with("line "), "{row}");
    }
}

#[tokio::test]
async fn bad_requests_get_json_errors_that_say_what_is_wrong() {
    let (base, _db) = serve().await;
    let http = airq_testenv::http_client();

    let missing = http.get(format!("{base}/loads/424242")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    assert!(body["error"]["message"].as_str().unwrap().contains("424242"));

    let not_a_number = http.get(format!("{base}/loads/abc")).send().await.unwrap();
    assert_eq!(not_a_number.status(), 422);

    let two_sources = http
        .post(format!("{base}/loads"))
        .json(&json!({ "spec": { "source": {
            "csv": { "url": "/x" },
            "openMeteo": { "points": [{ "station": "a", "latitude": 1.0, "longitude": 2.0 }], "hourly": ["pm2_5"] } } } }))
        .send()
        .await
        .unwrap();
    assert_eq!(two_sources.status(), 422);
    let body: Value = two_sources.json().await.unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains("exactly one"),
        "{body}"
    );

    let unknown_field = http
        .post(format!("{base}/loads"))
        .json(&json!({ "spec": { "source": { "csv": { "url": "/x" } } }, "paralelism": 3 }))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_field.status(), 422);
    let body: Value = unknown_field.json().await.unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains("paralelism"),
        "{body}"
    );

    // A source that cannot be read: the run is recorded as failed with the reason.
    let response = http
        .post(format!("{base}/loads"))
        .json(&json!({ "name": "nowhere", "spec": { "source": { "csv": { "url": "/no/such/folder" } } } }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let failed = airq_testenv::wait_finished(
        &http,
        &format!("{base}/loads/{id}"),
        "the load to fail",
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["error"].as_str().unwrap().contains("/no/such/folder"),
        "{failed}"
    );
}

#[tokio::test]
async fn the_openapi_description_names_every_route() {
    let (base, _db) = serve().await;
    let document: Value = airq_testenv::http_client()
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    for path in ["/loads", "/loads/{id}", "/loads/{id}/rejected"] {
        assert!(document["paths"][path].is_object(), "{path} missing");
    }
    // Every reference points at a schema that exists, every operation is served, and the document says where the
    // API is behind the gateway.
    let problems = airq_testenv::openapi::problems(&airq_testenv::http_client(), &base, None, &document).await;
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(document["servers"][0]["url"], "/api/etl");
    // The request's schema is the one the CRD is generated from: its source's kinds are there.
    let schemas = document["components"]["schemas"].to_string();
    assert!(
        schemas.contains("openMeteo") && schemas.contains("backfill"),
        "{schemas}"
    );
}

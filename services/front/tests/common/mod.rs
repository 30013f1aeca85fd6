//! Shared set-up: a real PostgreSQL loaded through the ETL with whole Beijing files (every hour of 2013-03 to
//! 2017-02 of two stations), the predictive service's router with a trained model, and the front's router, each
//! served on a loopback port.

#![allow(clippy::unwrap_used, dead_code)]

use std::path::Path;
use std::time::Duration;

use airq_core::db::Database;
use airq_core::store::Store;
use serde_json::{Value, json};

pub const STATIONS: [&str; 2] = ["Aotizhongxin", "Dongsi"];

/// A migrated PostgreSQL database with the whole files of [`STATIONS`] loaded by the ETL.
pub async fn loaded_database() -> (airq_testenv::TestDatabase, Database) {
    let dir = tempfile::tempdir().unwrap();
    let folder = airq_testenv::shared_data("beijing-multisite").unwrap();
    for entry in std::fs::read_dir(&folder).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if STATIONS.iter().any(|s| name.contains(&format!("_{s}_"))) {
            std::fs::copy(&path, dir.path().join(&name)).unwrap();
        }
    }
    let test_db = airq_testenv::database().await.unwrap();
    let db = Database::connect_url(&test_db.url, 5).await.unwrap();
    db.migrate().await.unwrap();
    let request = airq_etl::load::LoadRequest::csv(
        "beijing",
        &dir.path().display().to_string(),
        airq_api::etl::CsvFormat::Beijing,
        "test",
    );
    airq_etl::load::run_to_end(&Store::new(db.clone()), &request)
        .await
        .unwrap();
    (test_db, db)
}

/// A router served on a loopback port until [`Served::stop`].
pub struct Served {
    pub url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    /// Stops the server: the port is closed and open connections too, as when a service goes down.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Serves `app` on a free loopback port.
pub async fn serve(app: axum::Router) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                // A dropped handle keeps the server until the test ends; only `stop` stops it.
                if stopped.await.is_err() {
                    std::future::pending::<()>().await;
                }
            })
            .await;
    });
    Served {
        url: format!("http://{address}"),
        stop,
        task,
    }
}

/// The predictive API over `db`, served.
pub async fn predictive(db: &Database) -> Served {
    use airq_predictive::api::{self, ApiState};
    use airq_predictive::registry::Registry;
    serve(api::router(ApiState::new(
        Registry::new(db.clone()),
        Store::new(db.clone()),
        None,
    )))
    .await
}

/// Trains `name` for `pollutant` through the predictive API (kNN on the last nine months, a day ahead) and waits
/// for it.
pub async fn train(predictive: &str, name: &str, pollutant: &str) {
    train_ahead(predictive, name, pollutant, 24).await;
}

/// [`train`] with `hours` ahead.
pub async fn train_ahead(predictive: &str, name: &str, pollutant: &str, hours: u32) {
    let http = airq_testenv::http_client();
    let spec = json!({
        "target": { "pollutant": pollutant },
        "horizonHours": hours,
        "confidenceLevels": [0.8, 0.9],
        "algorithm": { "knn": { "k": 10 } },
        "features": { "lags": [1, 2, 3, 24], "calendar": true, "weather": true, "logTransform": true },
        "training": { "from": "2016-06-01", "calibrationFraction": 0.25 }
    });
    let response = http
        .post(format!("{predictive}/models/{name}/train"))
        .json(&json!({ "spec": spec }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    let training: Value = response.json().await.unwrap();
    let id = training["id"].as_i64().unwrap();
    let url = format!("{predictive}/models/{name}/trainings/{id}");
    let done = airq_testenv::wait_finished(&http, &url, "the training to finish", Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!(done["status"], "succeeded", "{done}");
}

/// The front's router over `db`, asking the predictive service at `predictive` (if any), served.
pub async fn front(db: &Database, predictive: Option<&str>) -> Served {
    let client = airq_front::predictive::Predictive::new(predictive, Duration::from_secs(5)).unwrap();
    serve(airq_front::router(airq_front::AppState::new(db.clone(), client))).await
}

/// The gateway over `db`, with `routes` (YAML) as its route table, served with the callers' addresses.
pub async fn gateway(db_url: &str, routes: &str, dir: &Path) -> String {
    use clap::Parser;
    let routes_file = dir.join("routes.yaml");
    std::fs::write(&routes_file, routes).unwrap();
    let config = airq_gateway::Config::try_parse_from([
        "airq-gateway",
        "--database-url",
        db_url,
        "--routes-file",
        &routes_file.display().to_string(),
        "--key-hash-secret",
        "a-test-hashing-secret-of-enough-length",
    ])
    .unwrap();
    let db = Database::connect_url(db_url, 5).await.unwrap();
    let state = airq_gateway::state(&config, db).await.unwrap();
    let app = airq_gateway::app(state, axum::Router::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<std::net::SocketAddr>(
                app,
            ),
        )
        .await;
    });
    format!("http://{address}")
}

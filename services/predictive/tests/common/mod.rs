//! Shared set-up: a slice of the real Beijing data (two stations, 2015-10 to 2016-06) as a CSV file, and a real
//! PostgreSQL loaded with it through the ETL.

#![allow(clippy::unwrap_used, dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

use airq_core::db::Database;
use airq_core::store::Store;

pub const STATIONS: [&str; 2] = ["Aotizhongxin", "Changping"];

/// Writes the rows of two stations from 2015-10-01 to 2016-05-31 (local days) to one CSV file.
pub fn slice_csv(dir: &std::path::Path) -> PathBuf {
    let folder = airq_testenv::shared_data("beijing-multisite").unwrap();
    let path = dir.join("slice.csv");
    let mut out = std::fs::File::create(&path).unwrap();
    let mut header_written = false;
    for station in STATIONS {
        let file = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().contains(station))
            .unwrap();
        let reader = BufReader::new(flate2::read::GzDecoder::new(std::fs::File::open(file).unwrap()));
        for (i, line) in reader.lines().enumerate() {
            let line = line.unwrap();
            if i == 0 {
                if !header_written {
                    writeln!(out, "{line}").unwrap();
                    header_written = true;
                }
                continue;
            }
            let fields: Vec<&str> = line.split(',').collect();
            let (year, month): (u32, u32) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
            let key = year * 100 + month;
            if (201510..=201605).contains(&key) {
                writeln!(out, "{line}").unwrap();
            }
        }
    }
    path
}

/// A migrated PostgreSQL database with the slice loaded.
pub async fn loaded_database(csv: &std::path::Path) -> (airq_testenv::TestDatabase, Database) {
    let test_db = airq_testenv::database().await.unwrap();
    let db = Database::connect_url(&test_db.url, 5).await.unwrap();
    db.migrate().await.unwrap();
    let request = airq_etl::load::LoadRequest::csv(
        "slice",
        &csv.display().to_string(),
        airq_api::etl::CsvFormat::Beijing,
        "test",
    );
    airq_etl::load::run_to_end(&Store::new(db.clone()), &request)
        .await
        .unwrap();
    (test_db, db)
}

/// A spec for NO2 trained on the slice: fit from October, calibrate on the newest 25 %.
pub fn spec(algorithm: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "target": { "pollutant": "no2" },
        "horizonHours": 24,
        "confidenceLevels": [0.8, 0.9],
        "algorithm": algorithm,
        "features": { "lags": [1, 2, 3, 24], "calendar": true, "weather": true, "logTransform": true },
        "training": { "from": "2015-10-01", "to": "2016-06-01", "calibrationFraction": 0.25 }
    })
}

//! Benchmark: every dashboard API endpoint with the twelve Beijing files loaded (about 5 M values), on PostgreSQL
//! and on SQLite. Run with `cargo bench -p airq-front --bench endpoints` (release build; PostgreSQL from the test
//! environment, started by the benchmark itself when `airq-testenv run` does not provide one).
//!
//! The twelve files are loaded through the ETL, then the front's router is served on loopback and each endpoint is
//! asked `REQUESTS` times, one request at a time over HTTP/1.1 keep-alive, without `If-None-Match` (every answer is
//! computed and sent whole), after `WARM_UP` untimed requests. Where an endpoint takes a station, a pollutant or a
//! range, each request draws them at random (seeded): nothing is reused between requests but the database's cache.
//! `/forecast` is the predictive service's answer passed on (its latency is the predictive benchmark's).

#[path = "../tests/common/mod.rs"]
mod common;
mod measure;

use measure::{latency, loaded};

use rand::{Rng, SeedableRng};

const REQUESTS: usize = 400;
const WARM_UP: usize = 40;
const STATIONS: [&str; 12] = [
    "Aotizhongxin",
    "Changping",
    "Dingling",
    "Dongsi",
    "Guanyuan",
    "Gucheng",
    "Huairou",
    "Nongzhanguan",
    "Shunyi",
    "Tiantan",
    "Wanliu",
    "Wanshouxigong",
];
const POLLUTANTS: [&str; 6] = ["pm25", "pm10", "no2", "o3", "so2", "co"];
/// 2013-03-01 and 2017-03-01, the data's extent.
const FIRST: i64 = 1_362_096_000;
const END: i64 = 1_488_326_400;
const DAY: i64 = 86_400;

/// A random day-aligned range of `days` days within the data, as the dashboard's date inputs give it.
fn dates(rng: &mut impl Rng, days: i64) -> (String, String) {
    let start = FIRST + rng.random_range(0..(END - FIRST) / DAY - days) * DAY;
    let day = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0)
            .map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_default()
    };
    (day(start), day(start + days * DAY))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let folder = airq_testenv::shared_data("beijing-multisite")?;
    let test_db = airq_testenv::database().await?;
    let sqlite_url = format!("sqlite://{}/airq.db", work.path().display());
    let (postgres, pg_load) = loaded(&test_db.url, &folder).await?;
    let (sqlite, sqlite_load) = loaded(&sqlite_url, &folder).await?;
    eprintln!("loaded: PostgreSQL in {pg_load:.1} s, SQLite in {sqlite_load:.1} s");
    let http = airq_testenv::http_client();

    println!("| database | endpoint | p50 ms | p99 ms | max ms | answer bytes |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for (name, db) in [("PostgreSQL 15", postgres), ("SQLite", sqlite)] {
        let front = common::front(&db, None).await.url;
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut cases: Vec<(&str, Vec<String>)> = Vec::new();
        let each = |f: &mut dyn FnMut() -> String| (0..REQUESTS + WARM_UP).map(|_| f()).collect::<Vec<_>>();
        cases.push(("GET /api/stations", each(&mut || format!("{front}/api/stations"))));
        cases.push((
            "GET /api/stations/{code}",
            each(&mut || format!("{front}/api/stations/{}", STATIONS[rng.random_range(0..12)])),
        ));
        let mut series = |days: Option<i64>, points: usize| {
            each(&mut || {
                let station = STATIONS[rng.random_range(0..12)];
                let pollutant = POLLUTANTS[rng.random_range(0..6)];
                let range = days.map_or(String::new(), |d| {
                    let (from, to) = dates(&mut rng, d);
                    format!("&from={from}&to={to}")
                });
                format!("{front}/api/stations/{station}/series?pollutant={pollutant}&points={points}{range}")
            })
        };
        cases.push(("GET …/series, the newest week", series(None, 600)));
        cases.push(("GET …/series, a random 30 days", series(Some(30), 600)));
        cases.push(("GET …/series, a random year", series(Some(365), 600)));
        cases.push(("GET …/series, the whole 4 years", series(Some(1460), 600)));
        let mut compare = |days: Option<i64>| {
            each(&mut || {
                let pollutant = POLLUTANTS[rng.random_range(0..6)];
                let range = days.map_or(String::new(), |d| {
                    let (from, to) = dates(&mut rng, d);
                    format!("&from={from}&to={to}")
                });
                format!("{front}/api/compare?pollutant={pollutant}&points=300{range}")
            })
        };
        cases.push(("GET /api/compare, the newest week", compare(None)));
        cases.push(("GET /api/compare, a random 30 days", compare(Some(30))));
        cases.push(("GET /api/compare, a random 150 days", compare(Some(150))));
        cases.push(("GET /api/compare, a random year", compare(Some(365))));
        cases.push(("GET /api/compare, the whole 4 years", compare(Some(1460))));
        cases.push(("GET /api/ops", each(&mut || format!("{front}/api/ops"))));
        cases.push(("GET /api/anomalies", each(&mut || format!("{front}/api/anomalies"))));
        cases.push((
            "GET /api/openapi.json",
            each(&mut || format!("{front}/api/openapi.json")),
        ));
        for (label, urls) in cases {
            let (p50, p99, max, bytes) = latency(&http, &urls, WARM_UP).await?;
            println!("| {name} | {label} | {p50:.2} | {p99:.2} | {max:.2} | {bytes} |");
        }
    }
    test_db.remove().await?;
    Ok(())
}

//! Benchmark: a year of hourly data of one station downsampled to 500 points, latency through the HTTP API.
//! Run with `cargo bench -p airq-front --bench series` (release build; PostgreSQL from the test environment, started
//! by the benchmark itself when `airq-testenv run` does not provide one).
//!
//! One station's whole file (Dongsi, 2013-03 to 2017-02) is loaded through the ETL into PostgreSQL and into SQLite,
//! and the front's router is served on loopback. Then, one request at a time over HTTP/1.1 keep-alive, without
//! `If-None-Match` (so every answer is computed and sent whole):
//! (a) the same year (2016) asked again and again — the dashboard's "1 year" button;
//! (b) a different 365-day window each time, its start a random hour of the data — nothing reused between requests;
//! (c) (b) through the gateway (`/airq/` → front, public route, access log and metrics on).

#[path = "../tests/common/mod.rs"]
mod common;
mod measure;

use measure::{latency, loaded};

use rand::{Rng, SeedableRng};

const REQUESTS: usize = 2000;
const WARM_UP: usize = 100;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let folder = airq_testenv::shared_data("beijing-multisite")?;
    let one = work.path().join("dongsi");
    std::fs::create_dir_all(&one)?;
    for entry in std::fs::read_dir(&folder)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("_Dongsi_"))
        {
            std::fs::copy(&path, one.join(path.file_name().unwrap_or_default()))?;
        }
    }
    let test_db = airq_testenv::database().await?;
    let sqlite_url = format!("sqlite://{}/airq.db", work.path().display());
    let databases = [
        ("PostgreSQL 15", loaded(&test_db.url, &one).await?.0),
        ("SQLite", loaded(&sqlite_url, &one).await?.0),
    ];
    let http = airq_testenv::http_client();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // 2013-03-01 to 2016-02-28: every start leaves a whole year of data after it.
    let first = 1_362_096_000_i64;
    let last_start = 1_456_617_600_i64;
    let starts: Vec<i64> = (0..REQUESTS)
        .map(|_| first + rng.random_range(0..(last_start - first) / 3600) * 3600)
        .collect();

    println!("| database | request | p50 ms | p99 ms | max ms | answer bytes |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for (name, db) in databases {
        let front = common::front(&db, None).await.url;
        let same: Vec<String> = (0..REQUESTS)
            .map(|_| {
                format!("{front}/api/stations/Dongsi/series?pollutant=pm25&from=2016-01-01&to=2017-01-01&points=500")
            })
            .collect();
        let windows: Vec<String> = starts
            .iter()
            .map(|s| {
                format!(
                    "{front}/api/stations/Dongsi/series?pollutant=pm25&from={s}&to={}&points=500",
                    s + 365 * 86_400
                )
            })
            .collect();
        for (label, urls) in [
            ("(a) 2016, again and again", &same),
            ("(b) a random 365-day window", &windows),
        ] {
            let (p50, p99, max, bytes) = latency(&http, urls, WARM_UP).await?;
            println!("| {name} | {label} | {p50:.2} | {p99:.2} | {max:.2} | {bytes} |");
        }
        if name.starts_with("PostgreSQL") {
            let dir = tempfile::tempdir()?;
            let routes = format!(
                "routes:\n- {{ id: dashboard, pathPrefix: /airq/, upstream: '{front}', stripPrefix: true, timeoutSeconds: 10, access: {{ public: true }} }}\n"
            );
            let gateway = common::gateway(&test_db.url, &routes, dir.path()).await;
            let through: Vec<String> = windows
                .iter()
                .map(|u| u.replace(&front, &format!("{gateway}/airq")))
                .collect();
            let (p50, p99, max, bytes) = latency(&http, &through, WARM_UP).await?;
            println!("| {name} | (c) (b) through the gateway | {p50:.2} | {p99:.2} | {max:.2} | {bytes} |");
        }
    }
    test_db.remove().await?;
    Ok(())
}

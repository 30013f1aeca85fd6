//! Benchmark: training time per algorithm on all 12 Beijing stations, and forecast latency through the HTTP API.
//! Run with `cargo bench -p airq-predictive --bench predictive` (release build of `airq-predictive`).
//!
//! Training: `airq-predictive train --csv <the 12 files>` for each algorithm of the evaluation report (PM2.5, the
//! whole four years, the newest 20 % calibrating), into a SQLite database, timed from the command's start to its
//! exit (reading the files included).
//!
//! Latency: three stations loaded into SQLite, the kNN model and the default ensemble trained and served by
//! `airq-predictive serve`; then, one
//! request at a time over HTTP/1.1 keep-alive, (a) the 24-hour forecast from the newest data of a station (the
//! dashboard's request; the station's recent data is re-read from the database every 30 s) and (b) a single hour
//! from a random past origin (a database read each time).
//!
//! `AIRQ_BENCH_LATENCY_ONLY=1` skips the training table (the latency part alone takes about a minute);
//! `AIRQ_BENCH_POSTGRES=1` serves from a PostgreSQL server (as in a cluster) instead of SQLite.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use airq_core::db::Database;
use airq_core::store::Store;
use rand::{Rng, SeedableRng};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn latency(http: &reqwest::Client, urls: &[String]) -> anyhow::Result<(f64, f64, f64)> {
    let mut times = Vec::with_capacity(urls.len());
    for url in urls {
        let started = Instant::now();
        let response = http.get(url).send().await?;
        if !response.status().is_success() {
            anyhow::bail!("{url}: {} {}", response.status(), response.text().await?);
        }
        let _ = response.bytes().await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok((
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[times.len() - 1],
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let folder = airq_testenv::shared_data("beijing-multisite")?;
    let binary = Path::new(env!("CARGO_BIN_EXE_airq-predictive"));
    let work = tempfile::tempdir()?;
    // SQLite (one machine) by default; `AIRQ_BENCH_POSTGRES=1`: a PostgreSQL server the test tooling starts.
    let postgres = match std::env::var_os("AIRQ_BENCH_POSTGRES") {
        Some(_) => Some(airq_testenv::database().await?),
        None => None,
    };
    let url = match &postgres {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}/airq.db", work.path().display()),
    };
    println!("Database: {}", if postgres.is_some() { "PostgreSQL" } else { "SQLite" });

    let training = std::env::var_os("AIRQ_BENCH_LATENCY_ONLY").is_none();
    if training {
        println!("## Training on all 12 stations (PM2.5, 2013-03 to 2017-02, newest 20 % calibrating)");
        println!("| Algorithm | Seconds |\n| --- | ---: |");
    }
    for (name, spec) in airq_predictive::suite::suite("pm25").into_iter().filter(|_| training) {
        let started = Instant::now();
        let output = Command::new(binary)
            .args(["train", "--name", &format!("bench/{}", spec.algorithm.name())])
            .args([
                "--csv",
                &folder.display().to_string(),
                "--database-url",
                &url,
                "--log-level",
                "warn",
            ])
            .arg("--spec")
            .arg(serde_json::to_string(&spec)?)
            .env("AIRQ_REPORT_FILE", work.path().join("report.json"))
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        println!("| {name} | {:.1} |", started.elapsed().as_secs_f64());
    }

    // Three stations in the database for the service.
    let db = Database::connect_url(&url, 2).await?;
    db.migrate().await?;
    let three = work.path().join("three");
    std::fs::create_dir_all(&three)?;
    let mut files: Vec<_> = std::fs::read_dir(&folder)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    for file in files.iter().take(3) {
        std::os::unix::fs::symlink(
            file,
            three.join(file.file_name().ok_or_else(|| anyhow::anyhow!("name"))?),
        )?;
    }
    let request = airq_etl::load::LoadRequest::csv(
        "bench",
        &three.display().to_string(),
        airq_api::etl::CsvFormat::Beijing,
        "bench",
    );
    airq_etl::load::run_to_end(&Store::new(db.clone()), &request).await?;
    let stations: Vec<String> = Store::new(db.clone())
        .stations()
        .await?
        .into_iter()
        .map(|s| s.code)
        .collect();
    db.close().await;
    println!("\n## Forecast latency through the HTTP API (one request at a time)");
    println!("| Model | Request | Requests | p50 ms | p99 ms | max ms |\n| --- | --- | ---: | ---: | ---: | ---: |");
    for algorithm in ["knn", "ensemble"] {
        serve_and_time(binary, &url, &stations, work.path(), algorithm).await?;
    }
    if let Some(db) = postgres {
        db.remove().await?;
    }
    Ok(())
}

/// Trains the suite's `algorithm` on the stations in the database, serves it, and times requests.
async fn serve_and_time(
    binary: &Path,
    url: &str,
    stations: &[String],
    work: &Path,
    algorithm: &str,
) -> anyhow::Result<()> {
    let spec = airq_predictive::suite::suite("pm25")
        .into_iter()
        .find(|(_, s)| s.algorithm.name() == algorithm)
        .ok_or_else(|| anyhow::anyhow!("no {algorithm} in the suite"))?
        .1;
    let name = format!("serve/{algorithm}");
    let output = Command::new(binary)
        .args(["train", "--name", &name, "--database-url", url, "--log-level", "warn"])
        .arg("--spec")
        .arg(serde_json::to_string(&spec)?)
        .env("AIRQ_REPORT_FILE", work.join("report.json"))
        .output()?;
    anyhow::ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let service = airq_testenv::service::RunningService::start(
        binary,
        &["serve"],
        &[("AIRQ_DATABASE_URL", url), ("AIRQ_MODEL", name.as_str())],
    )
    .await?;
    let base = service.base_url.clone();
    let http = airq_testenv::http_client();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let newest: Vec<String> = (0..3000)
        .map(|i| format!("{base}/forecast?station={}", stations[i % stations.len()]))
        .collect();
    // Random origins in 2016, each asking the hour 6 hours later.
    let past: Vec<String> = (0..1000)
        .map(|_| {
            let origin = 1_451_606_400 + rng.random_range(0..8000) * 3600;
            let at = origin + 6 * 3600;
            let fmt = |t: i64| airq_predictive::forecast::rfc3339(t);
            format!(
                "{base}/forecast?station={}&origin={}&at={}",
                stations[rng.random_range(0..stations.len())],
                fmt(origin),
                fmt(at)
            )
        })
        .collect();
    latency(&http, &newest[..200]).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (p50, p99, max) = latency(&http, &newest).await?;
    println!(
        "| {algorithm} | 24 hours from the newest data | {} | {p50:.2} | {p99:.2} | {max:.2} |",
        newest.len()
    );
    let (p50, p99, max) = latency(&http, &past).await?;
    println!(
        "| {algorithm} | one hour from a random past origin (database read) | {} | {p50:.2} | {p99:.2} | {max:.2} |",
        past.len()
    );
    service.terminate().await?;
    Ok(())
}

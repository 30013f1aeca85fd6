//! What the front's benchmarks share: GETs timed one at a time, and a database loaded with Beijing files.

use std::time::Instant;

use airq_core::db::Database;
use airq_core::store::Store;

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// p50, p99 and the maximum in milliseconds of GETs of `urls`, after `warm_up` untimed ones; the last answer's size.
pub async fn latency(
    http: &reqwest::Client,
    urls: &[String],
    warm_up: usize,
) -> anyhow::Result<(f64, f64, f64, usize)> {
    let mut times = Vec::with_capacity(urls.len());
    let mut bytes = 0;
    for (i, url) in urls.iter().enumerate() {
        let started = Instant::now();
        let response = http.get(url).send().await?;
        if !response.status().is_success() {
            anyhow::bail!("{url}: {} {}", response.status(), response.text().await?);
        }
        let body = response.bytes().await?;
        if i >= warm_up {
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            bytes = body.len();
        }
    }
    times.sort_by(f64::total_cmp);
    Ok((
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[times.len() - 1],
        bytes,
    ))
}

/// The database at `url`, migrated, with the Beijing files of `folder` loaded through the ETL; the load's seconds.
pub async fn loaded(url: &str, folder: &std::path::Path) -> anyhow::Result<(Database, f64)> {
    let db = Database::connect_url(url, 8).await?;
    db.migrate().await?;
    let request = airq_etl::load::LoadRequest::csv(
        "bench",
        &folder.display().to_string(),
        airq_api::etl::CsvFormat::Beijing,
        "bench",
    );
    let started = Instant::now();
    airq_etl::load::run_to_end(&Store::new(db.clone()), &request).await?;
    Ok((db, started.elapsed().as_secs_f64()))
}

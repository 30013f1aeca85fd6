//! The twelve Beijing files loaded into a real PostgreSQL and into SQLite: every value that is not `NA` is either
//! stored or refused with a reason, per station and parameter; a second run changes nothing; a load killed half-way
//! (SIGKILL to the `airq-etl load` process) and run again ends with exactly the rows of a clean load.

// A failed step of a test's set-up is the test's failure: unwrap reports it with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use airq_api::etl::{Backfill, CsvFormat, CsvSource, EtlSource, LoadMode};
use airq_core::db::Database;
use airq_core::store::Store;
use airq_etl::load::{self, LoadRequest, LoadSpec};
use indicatif::ProgressBar;
use tokio_util::sync::CancellationToken;

const COLUMNS: [(&str, &str); 12] = [
    ("PM2.5", "pm25"),
    ("PM10", "pm10"),
    ("SO2", "so2"),
    ("NO2", "no2"),
    ("CO", "co"),
    ("O3", "o3"),
    ("TEMP", "temp"),
    ("PRES", "pres"),
    ("DEWP", "dewp"),
    ("RAIN", "rain"),
    ("WSPM", "wspm"),
    ("wd", "wd"),
];

/// Values that are not missing, per (station, parameter), counted straight from the files.
fn expected_counts(folder: &Path) -> BTreeMap<(String, String), i64> {
    let mut counts = BTreeMap::new();
    let mut files: Vec<_> = std::fs::read_dir(folder).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for file in files {
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(std::fs::File::open(&file).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let headers = reader.headers().unwrap().clone();
        let index = |name: &str| headers.iter().position(|h| h == name).unwrap();
        let station = index("station");
        for record in reader.records() {
            let record = record.unwrap();
            for (column, parameter) in COLUMNS {
                let cell = record[index(column)].trim();
                if !cell.is_empty() && cell != "NA" {
                    *counts
                        .entry((record[station].to_owned(), parameter.to_owned()))
                        .or_insert(0) += 1;
                }
            }
        }
    }
    counts
}

fn request(folder: &Path, mode: LoadMode) -> LoadRequest {
    LoadRequest {
        name: "beijing".to_owned(),
        spec: LoadSpec {
            source: EtlSource {
                csv: Some(CsvSource {
                    url: folder.display().to_string(),
                    format: CsvFormat::Beijing,
                }),
                ..EtlSource::default()
            },
            mode,
            backfill: (mode == LoadMode::Backfill).then(|| Backfill {
                from: "2013-02-01".to_owned(),
                to: "2017-04-01".to_owned(),
                chunk_days: 30,
                parallelism: 2,
            }),
        },
        requested_by: "test".to_owned(),
        parallelism: 2,
        openaq_api_key: None,
    }
}

async fn rejected_counts(store: &Store, run_id: i64) -> BTreeMap<(String, String), i64> {
    let mut counts = BTreeMap::new();
    for row in store.rejected(run_id, 1_000_000).await.unwrap() {
        assert!(
            row.reason.contains("sentinel") || row.reason.contains("plausible") || row.reason.contains("minimum"),
            "unexpected reason: {row:?}"
        );
        assert!(row.record.starts_with("line "), "{row:?}");
        *counts
            .entry((row.station.clone().unwrap_or_default(), row.parameter.clone()))
            .or_insert(0) += 1;
    }
    counts
}

/// The whole data set, then the same again: the checks shared by both databases.
async fn full_load_then_nothing_changes(store: Store) {
    let folder = airq_testenv::shared_data("beijing-multisite").unwrap();
    let expected = expected_counts(&folder);
    let total: i64 = expected.values().sum();
    let stop = CancellationToken::new();

    let first = load::run(
        &store,
        &request(&folder, LoadMode::Incremental),
        &ProgressBar::hidden(),
        &stop,
    )
    .await
    .unwrap();
    assert_eq!(first.values_read, total, "every value that is not NA is read");
    assert_eq!(first.counts.inserted + first.counts.rejected, total);
    assert_eq!(first.counts.updated, 0);
    assert!(
        first.counts.rejected > 0,
        "the files hold 999 sentinels and ozone over 1,000"
    );
    assert!(first.counts.flagged > 0, "the files hold hours with PM2.5 above PM10");

    let stored: BTreeMap<(String, String), i64> = store
        .series_counts()
        .await
        .unwrap()
        .into_iter()
        .map(|c| ((c.station, c.parameter), c.count))
        .collect();
    let rejected = rejected_counts(&store, first.run_id).await;
    assert_eq!(
        stored.len(),
        12 * 12,
        "12 stations × 12 parameters: {:?}",
        stored.keys()
    );
    for (key, want) in &expected {
        let got = stored.get(key).copied().unwrap_or(0) + rejected.get(key).copied().unwrap_or(0);
        assert_eq!(got, *want, "{key:?}: stored + rejected");
    }
    let run = store.run(first.run_id).await.unwrap().unwrap();
    assert_eq!(run.status, "succeeded");
    assert_eq!(run.rows_inserted, first.counts.inserted);
    assert_eq!(run.rows_rejected, first.counts.rejected);
    // The last hour of the files, 2017-02-28 23:00 in Beijing.
    assert_eq!(
        first.watermark.map(|w| w.to_rfc3339()).as_deref(),
        Some("2017-02-28T15:00:00+00:00")
    );
    let fingerprint = store.fingerprint().await.unwrap();

    // An incremental run has nothing newer to load.
    let again = load::run(
        &store,
        &request(&folder, LoadMode::Incremental),
        &ProgressBar::hidden(),
        &stop,
    )
    .await
    .unwrap();
    assert_eq!(again.values_read, 0);
    assert_eq!(again.counts.inserted, 0);

    // A backfill over the whole range reads everything again and changes nothing.
    let backfill = load::run(
        &store,
        &request(&folder, LoadMode::Backfill),
        &ProgressBar::hidden(),
        &stop,
    )
    .await
    .unwrap();
    assert_eq!(backfill.values_read, total);
    assert_eq!((backfill.counts.inserted, backfill.counts.updated), (0, 0));
    assert_eq!(backfill.counts.unchanged, first.counts.inserted);
    assert_eq!(store.fingerprint().await.unwrap(), fingerprint);
    let rejected_again = rejected_counts(&store, backfill.run_id).await;
    assert_eq!(rejected_again, rejected, "refused values are refreshed, not duplicated");
}

#[tokio::test]
async fn beijing_files_load_exactly_into_postgres() {
    let db = airq_testenv::database().await.unwrap();
    let database = Database::connect_url(&db.url, 5).await.unwrap();
    database.migrate().await.unwrap();
    full_load_then_nothing_changes(Store::new(database.clone())).await;
    database.close().await;
    db.remove().await.unwrap();
}

#[tokio::test]
async fn beijing_files_load_exactly_into_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("airq.db").display());
    let database = Database::connect_url(&url, 2).await.unwrap();
    database.migrate().await.unwrap();
    full_load_then_nothing_changes(Store::new(database)).await;
}

#[tokio::test]
async fn a_killed_load_run_again_gives_the_rows_of_a_clean_load() {
    let folder = airq_testenv::shared_data("beijing-multisite").unwrap();
    let binary = env!("CARGO_BIN_EXE_airq-etl");

    // The reference: a clean load into a database of its own.
    let clean = airq_testenv::database().await.unwrap();
    let clean_db = Database::connect_url(&clean.url, 5).await.unwrap();
    clean_db.migrate().await.unwrap();
    let clean_store = Store::new(clean_db);
    load::run(
        &clean_store,
        &request(&folder, LoadMode::Incremental),
        &ProgressBar::hidden(),
        &CancellationToken::new(),
    )
    .await
    .unwrap();

    // The same load by the binary, killed once a good part is in.
    let target = airq_testenv::database().await.unwrap();
    let load_command = || {
        let mut command = tokio::process::Command::new(binary);
        command
            .args(["load", "--name", "beijing", "--csv"])
            .arg(&folder)
            .args(["--database-url", &target.url, "--log-level", "warn"])
            .env_remove("AIRQ_LOAD_SPEC")
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        command
    };
    let child = Arc::new(tokio::sync::Mutex::new(load_command().spawn().unwrap()));
    airq_testenv::eventually("a third of the rows written", Duration::from_secs(300), || async {
        if let Ok(Some(status)) = child.lock().await.try_wait() {
            return Err(format!("the load exited early with {status}"));
        }
        let inserted: Option<i64> = sqlx::query_scalar("select sum(rows_inserted)::bigint from load_runs")
            .fetch_one(&target.pool)
            .await
            .unwrap_or(None);
        match inserted {
            Some(n) if n > 1_500_000 => Ok(()),
            n => Err(format!("{n:?} rows so far")),
        }
    })
    .await
    .unwrap();
    let mut child = child.lock().await;
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "the load was killed before it finished");
    let (killed_id, killed_status): (i64, String) =
        sqlx::query_as("select id, status from load_runs order by id desc limit 1")
            .fetch_one(&target.pool)
            .await
            .unwrap();
    assert_eq!(killed_status, "running", "a killed process cannot record its end");

    // Run again to the end: the killed run is recognised as dead, and the rows are exactly the clean load's.
    let output = load_command().output().await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let target_store = Store::new(Database::connect_url(&target.url, 2).await.unwrap());
    assert_eq!(
        target_store.fingerprint().await.unwrap(),
        clean_store.fingerprint().await.unwrap(),
        "the re-run ends with exactly the rows of a clean load"
    );
    assert_eq!(
        target_store.series_counts().await.unwrap(),
        clean_store.series_counts().await.unwrap()
    );
    let killed = target_store.run(killed_id).await.unwrap().unwrap();
    assert_eq!(killed.status, "failed");
    assert!(killed.error.unwrap_or_default().contains("interrupted"));
    let duplicates: i64 = sqlx::query_scalar(
        "select count(*) from (select source, record, parameter from rejected_rows
         group by source, record, parameter having count(*) > 1) d",
    )
    .fetch_one(&target.pool)
    .await
    .unwrap();
    assert_eq!(duplicates, 0);
    clean_store.database().close().await;
    target_store.database().close().await;
    clean.remove().await.unwrap();
    target.remove().await.unwrap();
}

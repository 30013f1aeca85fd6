//! What a load checks once its values are in, on a real PostgreSQL and on SQLite: a stuck sensor and a jump are
//! marked on the stored values (and counted on the run); the marks depend on the stored data only, so loading the
//! same file in pieces, in any order, ends with exactly the rows and marks of one full load; a correction clears a
//! mark. And a run unlike the load's earlier ones (many more values read) opens an anomaly that the next usual run
//! closes.

// A failed step of a test's set-up is the test's failure: unwrap reports it with its location.
#![allow(clippy::unwrap_used)]

mod common;

use common::{postgres_store, sqlite_store};

use std::fmt::Write as _;
use std::path::Path;

use airq_api::etl::CsvFormat;
use airq_core::parameter::Parameter;
use airq_core::store::{FLAG_JUMP, FLAG_STUCK, Store};
use airq_etl::load::{self, LoadRequest};
use chrono::{DateTime, Duration, TimeZone, Utc};

const DAYS: i64 = 30;
/// The hour the sensor gets stuck, and for how long.
const STUCK_FROM: i64 = 15 * 24 + 6;
const STUCK_HOURS: i64 = 30;
/// The hour with a jump.
const JUMP_AT: i64 = 22 * 24 + 9;

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2016, 3, 1, 0, 0, 0).unwrap()
}

/// A month of hourly PM2.5 with a daily rhythm and irregular noise; `stuck` and `jump` add the faults.
fn csv(stuck: bool, jump: bool) -> String {
    let mut text = String::from("station,parameter,time,value,unit\n");
    for hour in 0..DAYS * 24 {
        let phase = (hour % 24) as f64 / 24.0 * std::f64::consts::TAU;
        let mut value = 55.0 + 20.0 * phase.sin() + ((hour * 7919) % 23) as f64 - 11.0;
        if stuck && (STUCK_FROM..STUCK_FROM + STUCK_HOURS).contains(&hour) {
            value = 47.0;
        }
        if jump && hour == JUMP_AT {
            value = 900.0;
        }
        let time = start() + Duration::hours(hour);
        let _ = writeln!(text, "Nowhere,pm25,{},{value},ug/m3", time.format("%Y-%m-%dT%H:%M:%SZ"));
    }
    text
}

fn request(name: &str, file: &Path, range: Option<(&str, &str)>) -> LoadRequest {
    let url = file.display().to_string();
    match range {
        Some(range) => LoadRequest::csv_backfill(name, &url, CsvFormat::Long, range, "test"),
        None => LoadRequest::csv(name, &url, CsvFormat::Long, "test"),
    }
}

/// Hours since the start that carry `flag`.
async fn hours_with(store: &Store, flag: i16) -> Vec<i64> {
    let stations = store.stations().await.unwrap();
    let station = stations.iter().find(|s| s.code == "Nowhere").unwrap();
    store
        .series(station.id, Parameter::Pm25, i64::MIN, i64::MAX)
        .await
        .unwrap()
        .iter()
        .filter(|p| p.flags & flag != 0)
        .map(|p| (p.time - start().timestamp()) / 3600)
        .collect()
}

async fn marks_are_set_and_independent_of_how_the_data_came(full: Store, pieces: Store) {
    let dir = tempfile::tempdir().unwrap();
    let faulty = dir.path().join("faulty.csv");
    std::fs::write(&faulty, csv(true, true)).unwrap();

    let outcome = load::run_to_end(&full, &request("month", &faulty, None)).await.unwrap();
    let stuck: Vec<i64> = (STUCK_FROM + 23..STUCK_FROM + STUCK_HOURS).collect();
    assert_eq!(
        hours_with(&full, FLAG_STUCK).await,
        stuck,
        "stuck from the 24th equal hour on"
    );
    assert_eq!(hours_with(&full, FLAG_JUMP).await, vec![JUMP_AT]);
    assert_eq!((outcome.marks.stuck, outcome.marks.jump), (stuck.len() as i64, 1));
    let run = full.run(outcome.run_id).await.unwrap().unwrap();
    assert_eq!((run.rows_stuck, run.rows_jump), (stuck.len() as i64, 1));

    // Loaded again: nothing changes, marks included.
    let fingerprint = full.fingerprint().await.unwrap();
    let again = load::run_to_end(
        &full,
        &request("month-again", &faulty, Some(("2016-03-01", "2016-04-01"))),
    )
    .await
    .unwrap();
    assert_eq!((again.counts.inserted, again.counts.updated), (0, 0));
    assert_eq!(again.marks.changed, 0);
    assert_eq!(full.fingerprint().await.unwrap(), fingerprint);

    // In three pieces, the last part first: the same rows and marks as the full load.
    for (from, to) in [
        ("2016-03-20", "2016-04-01"),
        ("2016-03-01", "2016-03-10"),
        ("2016-03-10", "2016-03-20"),
    ] {
        load::run_to_end(&pieces, &request("pieces", &faulty, Some((from, to))))
            .await
            .unwrap();
    }
    assert_eq!(
        pieces.fingerprint().await.unwrap(),
        fingerprint,
        "pieces in any order = one full load"
    );

    // The stuck hours corrected by a later file: their marks go, the jump's stays.
    let corrected = dir.path().join("corrected.csv");
    std::fs::write(&corrected, csv(false, true)).unwrap();
    let fix = load::run_to_end(&full, &request("fix", &corrected, Some(("2016-03-16", "2016-03-18"))))
        .await
        .unwrap();
    assert_eq!(fix.counts.updated, STUCK_HOURS);
    assert!(hours_with(&full, FLAG_STUCK).await.is_empty());
    assert_eq!(hours_with(&full, FLAG_JUMP).await, vec![JUMP_AT]);
}

#[tokio::test]
async fn a_stuck_sensor_and_a_jump_are_marked_the_same_however_loaded_on_postgres() {
    let (full, full_db) = postgres_store().await;
    let (pieces, pieces_db) = postgres_store().await;
    marks_are_set_and_independent_of_how_the_data_came(full.clone(), pieces.clone()).await;
    full.database().close().await;
    pieces.database().close().await;
    full_db.remove().await.unwrap();
    pieces_db.remove().await.unwrap();
}

#[tokio::test]
async fn a_stuck_sensor_and_a_jump_are_marked_the_same_however_loaded_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let full = sqlite_store(dir.path(), "full.db").await;
    let pieces = sqlite_store(dir.path(), "pieces.db").await;
    marks_are_set_and_independent_of_how_the_data_came(full, pieces).await;
}

#[tokio::test]
async fn a_run_unlike_the_earlier_ones_opens_an_anomaly_the_next_usual_run_closes() {
    let (store, db) = postgres_store().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("month.csv");
    std::fs::write(&file, csv(false, false)).unwrap();
    let day = |d: i64| (start() + Duration::days(d)).format("%Y-%m-%d").to_string();

    // A day at a time, twelve times: 24 values each.
    for d in 0..12 {
        let outcome = load::run_to_end(&store, &request("daily", &file, Some((&day(d), &day(d + 1)))))
            .await
            .unwrap();
        assert_eq!(outcome.values_read, 24);
        assert!(outcome.anomalies.is_empty(), "run {d}: {:?}", outcome.anomalies);
    }
    // Then the whole month in one run.
    let big = load::run_to_end(&store, &request("daily", &file, Some((&day(0), &day(DAYS)))))
        .await
        .unwrap();
    assert_eq!(big.values_read, DAYS * 24);
    assert!(
        big.anomalies.iter().any(|a| a.contains("read 720 values")),
        "{:?}",
        big.anomalies
    );
    assert!(
        big.report().anomalies == big.anomalies,
        "the Job's report carries them to the operator"
    );
    let since = Utc::now() - Duration::hours(1);
    let open: Vec<_> = store.anomalies(since, 50).await.unwrap();
    let episode = open
        .iter()
        .find(|a| a.signal == "load_values_read")
        .unwrap_or_else(|| panic!("{open:?}"));
    assert_eq!((episode.component.as_str(), episode.subject.as_str()), ("etl", "daily"));
    assert!(episode.is_open() && episode.value == 720.0, "{episode:?}");
    assert!(episode.expected.is_some_and(|e| (e - 24.0).abs() < 1e-6), "{episode:?}");
    assert!(episode.score > airq_etl::anomalies::THRESHOLD);

    // A usual day again: the episode closes.
    let usual = load::run_to_end(&store, &request("daily", &file, Some((&day(12), &day(13)))))
        .await
        .unwrap();
    assert!(
        !usual.anomalies.iter().any(|a| a.contains("values")),
        "{:?}",
        usual.anomalies
    );
    let after = store.anomalies(since, 50).await.unwrap();
    let closed = after.iter().find(|a| a.id == episode.id).unwrap();
    assert!(!closed.is_open(), "{closed:?}");
    store.database().close().await;
    db.remove().await.unwrap();
}

//! The measurement store, one suite run against a real PostgreSQL and against SQLite: upserts count what they did,
//! a value already stored is left alone, refused values are refreshed rather than duplicated, watermarks never move
//! back, runs are recorded with their counters, and an interrupted run is recognised at once on both; the anomaly
//! log keeps one open episode per reporter and closes or expires it.

// A failed step of a test's set-up is the test's failure: unwrap reports it with its location.
#![allow(clippy::unwrap_used)]

use airq_core::db::Database;
use airq_core::parameter::Parameter;
use airq_core::store::{AnomalyReport, Batch, Measurement, NewRun, NewStation, Rejection, RunEnd, Store};
use chrono::{DateTime, Duration, Utc};

async fn postgres() -> (Store, airq_testenv::TestDatabase) {
    let db = airq_testenv::database().await.unwrap();
    let database = Database::connect_url(&db.url, 5).await.unwrap();
    database.migrate().await.unwrap();
    (Store::new(database), db)
}

async fn sqlite() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("airq.db").display());
    let database = Database::connect_url(&url, 2).await.unwrap();
    database.migrate().await.unwrap();
    (Store::new(database), dir)
}

fn new_run(name: &str) -> NewRun {
    NewRun {
        name: name.to_owned(),
        source: "csv".to_owned(),
        mode: "incremental".to_owned(),
        spec: "{\"source\":{}}".to_owned(),
        requested_by: "test".to_owned(),
        range_from: None,
        range_to: DateTime::from_timestamp(1_700_000_000, 0),
    }
}

fn m(station_id: i64, parameter: Parameter, hour: i64, value: f64) -> Measurement {
    Measurement {
        station_id,
        parameter,
        time: 1_700_000_000 + hour * 3600,
        value,
        flags: 0,
    }
}

fn rejection(record: &str, reason: &str) -> Rejection {
    Rejection {
        source: "file.csv".to_owned(),
        record: record.to_owned(),
        station: Some("A".to_owned()),
        parameter: "pm25".to_owned(),
        time: Some(1_700_000_000),
        raw_value: Some("999".to_owned()),
        reason: reason.to_owned(),
    }
}

async fn suite(store: Store) {
    let station = store
        .ensure_station(&NewStation {
            code: "A".to_owned(),
            name: "Station A".to_owned(),
            source: "csv".to_owned(),
            latitude: Some(39.9),
            longitude: None,
        })
        .await
        .unwrap();
    // The same code again is the same station, its name refreshed, its known position kept.
    let again = store
        .ensure_station(&NewStation {
            code: "A".to_owned(),
            name: "Station A (renamed)".to_owned(),
            source: "csv".to_owned(),
            latitude: None,
            longitude: Some(116.4),
        })
        .await
        .unwrap();
    assert_eq!(station, again);

    let run = store.begin_run(&new_run("suite")).await.unwrap();
    let run_id = run.id;
    let first = Batch {
        measurements: vec![
            m(station, Parameter::Pm25, 0, 10.0),
            m(station, Parameter::Pm25, 1, 11.0),
            m(station, Parameter::No2, 0, 20.0),
        ],
        rejected: vec![rejection("line 2", "a sentinel")],
        values_read: 4,
    };
    let counts = store.write(run_id, &first).await.unwrap();
    assert_eq!(
        (counts.inserted, counts.updated, counts.unchanged, counts.rejected),
        (3, 0, 0, 1)
    );

    // One value changed, one the same, one new; the refused value refreshed, and a repeated key within the batch
    // keeps its last value.
    let second = Batch {
        measurements: vec![
            m(station, Parameter::Pm25, 0, 10.5),
            m(station, Parameter::Pm25, 1, 11.0),
            m(station, Parameter::Pm25, 2, 1.0),
            m(station, Parameter::Pm25, 2, 12.0),
        ],
        rejected: vec![rejection("line 2", "a sentinel, again")],
        values_read: 5,
    };
    let counts = store.write(run_id, &second).await.unwrap();
    assert_eq!((counts.inserted, counts.updated, counts.unchanged), (1, 1, 2));
    let series = store.series_counts().await.unwrap();
    let pm25 = series.iter().find(|c| c.parameter == "pm25").unwrap();
    assert_eq!((pm25.station.as_str(), pm25.count), ("A", 3));
    let fingerprint = store.fingerprint().await.unwrap();
    // The same batch again changes nothing.
    let repeated = store.write(run_id, &second).await.unwrap();
    assert_eq!((repeated.inserted, repeated.updated, repeated.unchanged), (0, 0, 4));
    assert_eq!(store.fingerprint().await.unwrap(), fingerprint);

    // Reading back: the stations, and a series in time order within a half-open range.
    let stations = store.stations().await.unwrap();
    assert_eq!(stations.len(), 1);
    assert_eq!(
        (
            stations[0].id,
            stations[0].name.as_str(),
            stations[0].latitude,
            stations[0].longitude
        ),
        (station, "Station A (renamed)", Some(39.9), Some(116.4))
    );
    let points = store
        .series(station, Parameter::Pm25, 1_700_000_000, 1_700_000_000 + 2 * 3600)
        .await
        .unwrap();
    let values: Vec<(i64, f64)> = points.iter().map(|p| (p.time, p.value)).collect();
    assert_eq!(values, vec![(1_700_000_000, 10.5), (1_700_003_600, 11.0)]);
    let last = store
        .series(station, Parameter::Pm25, 1_700_000_000 + 2 * 3600, i64::from(i32::MAX))
        .await
        .unwrap();
    assert_eq!(
        last.iter().map(|p| p.value).collect::<Vec<_>>(),
        vec![12.0],
        "the repeated key's last value"
    );
    assert!(
        store
            .series(station, Parameter::O3, 0, i64::from(i32::MAX))
            .await
            .unwrap()
            .is_empty()
    );

    let refused = store.rejected(run_id, 10).await.unwrap();
    assert_eq!(refused.len(), 1, "refreshed, not duplicated");
    assert_eq!(refused[0].reason, "a sentinel, again");

    // Watermarks only move forward.
    let late = DateTime::from_timestamp(1_700_100_000, 0).unwrap();
    let early = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
    assert_eq!(store.watermark("suite").await.unwrap(), None);
    store.advance_watermark("suite", late).await.unwrap();
    store.advance_watermark("suite", early).await.unwrap();
    assert_eq!(store.watermark("suite").await.unwrap(), Some(late));

    store
        .finish_run(run, RunEnd::Succeeded { stuck: 0, jump: 0 })
        .await
        .unwrap();
    let recorded = store.run(run_id).await.unwrap().unwrap();
    assert_eq!(recorded.status, "succeeded");
    assert_eq!(recorded.rows_read, 4 + 5 + 5);
    assert_eq!(recorded.rows_unchanged, 2 + 4);
    assert_eq!(recorded.rows_inserted, 4);
    assert_eq!(recorded.rows_rejected, 3);
    assert_eq!(recorded.range_to, DateTime::from_timestamp(1_700_000_000, 0));
    assert!(recorded.finished_at.is_some());
    let failed = store.begin_run(&new_run("other")).await.unwrap();
    let failed_id = failed.id;
    store
        .finish_run(failed, RunEnd::Failed("the source went away"))
        .await
        .unwrap();
    let runs = store.runs(None, 10).await.unwrap();
    assert_eq!(
        runs.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![failed_id, run_id],
        "newest first"
    );
    assert_eq!(runs[0].error.as_deref(), Some("the source went away"));
    assert_eq!(store.runs(Some("suite"), 10).await.unwrap().len(), 1);
    let _: Option<DateTime<Utc>> = runs[0].finished_at;
}

fn report(subject: &str, reporter: &str, score: f64, expires_at: Option<DateTime<Utc>>) -> AnomalyReport {
    AnomalyReport {
        component: "gateway".to_owned(),
        signal: "error_ratio".to_owned(),
        subject: subject.to_owned(),
        reporter: reporter.to_owned(),
        opened_at: Utc::now() - Duration::minutes(10),
        value: score / 100.0,
        expected: Some(0.01),
        score,
        peak_score: score,
        detail: format!("{subject} at {score}"),
        expires_at,
    }
}

/// The anomaly log: one open episode per reporter, refreshed in place with the highest peak kept; closed, then
/// opened anew; an expired episode reads as closed and a new report opens a new one; the listing's order and window.
async fn anomaly_suite(store: Store) {
    let since = Utc::now() - Duration::hours(1);
    store
        .anomaly_report(&report("front", "pod-a", 30.0, None))
        .await
        .unwrap();
    store
        .anomaly_report(&report("front", "pod-a", 12.0, None))
        .await
        .unwrap();
    store
        .anomaly_report(&report("front", "pod-b", 8.0, None))
        .await
        .unwrap();
    let listed = store.anomalies(since, 10).await.unwrap();
    assert_eq!(listed.len(), 2, "one episode per reporter: {listed:?}");
    let a = listed.iter().find(|x| x.reporter == "pod-a").unwrap();
    assert_eq!(
        (a.score, a.peak_score, a.value),
        (12.0, 30.0, 0.12),
        "refreshed, the peak kept"
    );
    assert!(a.is_open() && a.detail == "front at 12");

    // Closed, then the signal leaves its band again: a second episode.
    let closed_at = Utc::now();
    assert!(
        store
            .anomaly_close("gateway", "error_ratio", "front", "pod-a", closed_at)
            .await
            .unwrap()
    );
    assert!(
        !store
            .anomaly_close("gateway", "error_ratio", "front", "pod-a", closed_at)
            .await
            .unwrap()
    );
    store
        .anomaly_report(&report("front", "pod-a", 9.0, None))
        .await
        .unwrap();
    let listed = store.anomalies(since, 10).await.unwrap();
    let mine: Vec<_> = listed.iter().filter(|x| x.reporter == "pod-a").collect();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert!(mine[0].is_open() && !mine[1].is_open(), "open first: {mine:?}");
    assert_eq!(mine[1].closed_at.map(|t| t.timestamp()), Some(closed_at.timestamp()));
    assert_ne!(mine[0].id, mine[1].id);

    // A reporter that went away: its episode expired, reads as closed, and a new report opens a new one.
    let expired = Utc::now() - Duration::seconds(5);
    store
        .anomaly_report(&report("etl", "pod-c", 7.0, Some(expired)))
        .await
        .unwrap();
    let gone = store.anomalies(since, 10).await.unwrap();
    let gone = gone.iter().find(|x| x.reporter == "pod-c").unwrap();
    assert_eq!(gone.closed_at.map(|t| t.timestamp()), Some(expired.timestamp()));
    store
        .anomaly_report(&report("etl", "pod-c", 6.0, Some(Utc::now() + Duration::minutes(1))))
        .await
        .unwrap();
    let listed = store.anomalies(since, 10).await.unwrap();
    let c: Vec<_> = listed.iter().filter(|x| x.reporter == "pod-c").collect();
    assert_eq!(c.len(), 2, "{c:?}");
    assert!(
        c[0].is_open() && c[0].peak_score == 6.0,
        "a new episode, not the expired one: {c:?}"
    );

    // The window: episodes closed before `since` are left out; the limit keeps the open ones first.
    let later = store.anomalies(Utc::now() + Duration::minutes(5), 10).await.unwrap();
    assert!(later.iter().all(|x| x.is_open()), "{later:?}");
    assert_eq!(later.len(), 3);
    assert!(store.anomalies(since, 2).await.unwrap().iter().all(|x| x.is_open()));
}

#[tokio::test]
async fn store_suite_on_postgres() {
    let (store, _db) = postgres().await;
    suite(store.clone()).await;
    anomaly_suite(store).await;
}

#[tokio::test]
async fn store_suite_on_sqlite() {
    let (store, _dir) = sqlite().await;
    suite(store.clone()).await;
    anomaly_suite(store).await;
}

/// A run of `other` (a second process's store on the same database) abandoned without recording its end is
/// marked interrupted by the next run of the same load in `store`, at once; while it lives it is left alone.
async fn an_abandoned_run_is_marked_interrupted(store: &Store, other: Store, settle: std::time::Duration) {
    let abandoned = other.begin_run(&new_run("nightly")).await.unwrap();
    let abandoned_id = abandoned.id;
    let alongside = store.begin_run(&new_run("nightly")).await.unwrap();
    assert_eq!(store.run(abandoned_id).await.unwrap().unwrap().status, "running");
    store
        .finish_run(alongside, RunEnd::Succeeded { stuck: 0, jump: 0 })
        .await
        .unwrap();
    // Gone without recording its end, seconds after its last write (not the five minutes an unlocked run waits).
    drop(abandoned);
    other.database().close().await;
    tokio::time::sleep(settle).await;
    let next = store.begin_run(&new_run("nightly")).await.unwrap();
    let dead = store.run(abandoned_id).await.unwrap().unwrap();
    assert_eq!(dead.status, "failed");
    assert!(dead.error.unwrap_or_default().starts_with("interrupted"));
    store
        .finish_run(next, RunEnd::Succeeded { stuck: 0, jump: 0 })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_postgres_run_whose_process_is_gone_is_marked_interrupted() {
    let (store, db) = postgres().await;
    // Its lock goes with its connection; the server ends the dead session as soon as it sees the connection closed.
    let other = Store::new(Database::connect_url(&db.url, 2).await.unwrap());
    an_abandoned_run_is_marked_interrupted(&store, other, std::time::Duration::from_millis(500)).await;
}

#[tokio::test]
async fn a_sqlite_run_whose_process_is_gone_is_marked_interrupted_at_once() {
    let (store, dir) = sqlite().await;
    // Its lock is a file lock, released when the handle (or the process) goes.
    let url = format!("sqlite://{}", dir.path().join("airq.db").display());
    let other = Store::new(Database::connect_url(&url, 1).await.unwrap());
    an_abandoned_run_is_marked_interrupted(&store, other, std::time::Duration::ZERO).await;
    // Finished runs leave no lock file behind.
    let locks: Vec<_> = std::fs::read_dir(dir.path().join("airq.db.locks"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(locks.is_empty(), "{locks:?}");
}

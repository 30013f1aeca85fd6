//! The core's store against a real PostgreSQL and against SQLite: an interrupted run is recognised at once on both,
//! and the anomaly log keeps one open episode per reporter and closes or expires it. (The load's write path and
//! reading back what it wrote are in `services/etl/tests/store.rs`.)

// A failed step of a test's set-up is the test's failure: unwrap reports it with its location.
#![allow(clippy::unwrap_used)]

use airq_core::db::Database;
use airq_core::store::{AnomalyReport, NewRun, RunEnd, Store};
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
async fn anomaly_log_on_postgres() {
    let (store, _db) = postgres().await;
    anomaly_suite(store).await;
}

#[tokio::test]
async fn anomaly_log_on_sqlite() {
    let (store, _dir) = sqlite().await;
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

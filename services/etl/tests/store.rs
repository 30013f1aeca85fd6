//! The load's write path and the store it writes, one suite run against a real PostgreSQL and against SQLite:
//! upserts count what they did, a value already stored is left alone, refused values are refreshed rather than
//! duplicated, watermarks never move back, runs are recorded with their counters, stations and series read back.

// A failed step of a test's set-up is the test's failure: unwrap reports it with its location.
#![allow(clippy::unwrap_used)]

mod common;

use airq_core::parameter::Parameter;
use airq_core::store::{NewRun, NewStation, Rejection, RunEnd, Store};
use airq_etl::write::{Batch, Measurement, write};
use chrono::{DateTime, Utc};

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

/// `measurement_days` holds, for every day with values of the station's PM2.5 and NO₂, what those values give.
async fn days_agree(store: &Store, station: i64) {
    type Day = (String, i64, f64, f64, f64, i64);
    let mut stored: Vec<Day> = airq_core::on_pool!(store.database(), pool => sqlx::query_as(
        "select parameter, day, min, max, sum, count from measurement_days where station_id = $1
         order by parameter, day",
    )
    .bind(station)
    .fetch_all(pool)
    .await)
    .unwrap();
    stored.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let mut expected: Vec<Day> = Vec::new();
    for parameter in [Parameter::No2, Parameter::Pm25] {
        for point in store
            .series(station, parameter, i64::from(i32::MIN), i64::from(i32::MAX))
            .await
            .unwrap()
        {
            let day = point.time.div_euclid(86_400);
            match expected.last_mut() {
                Some(last) if last.0 == parameter.code() && last.1 == day => {
                    last.2 = last.2.min(point.value);
                    last.3 = last.3.max(point.value);
                    last.4 += point.value;
                    last.5 += 1;
                }
                _ => expected.push((
                    parameter.code().to_owned(),
                    day,
                    point.value,
                    point.value,
                    point.value,
                    1,
                )),
            }
        }
    }
    assert_eq!(stored, expected);
    assert!(stored.iter().any(|d| d.1 < 0), "{stored:?}");
    assert!(stored.iter().filter(|d| d.0 == "pm25").count() >= 3, "{stored:?}");
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
    let counts = write(&store, run_id, &first).await.unwrap();
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
    let counts = write(&store, run_id, &second).await.unwrap();
    assert_eq!((counts.inserted, counts.updated, counts.unchanged), (1, 1, 2));
    let series = store.series_counts().await.unwrap();
    let pm25 = series.iter().find(|c| c.parameter == "pm25").unwrap();
    assert_eq!((pm25.station.as_str(), pm25.count), ("A", 3));
    let fingerprint = store.fingerprint().await.unwrap();
    // The same batch again changes nothing.
    let repeated = write(&store, run_id, &second).await.unwrap();
    assert_eq!((repeated.inserted, repeated.updated, repeated.unchanged), (0, 0, 4));
    assert_eq!(store.fingerprint().await.unwrap(), fingerprint);
    // The daily aggregates follow every insert and update (the hours above cross a midnight), and a value before
    // 1970 falls in its own day.
    let old = Batch {
        measurements: vec![Measurement {
            time: -3600,
            ..m(station, Parameter::Pm25, 0, 7.0)
        }],
        rejected: vec![],
        values_read: 1,
    };
    write(&store, run_id, &old).await.unwrap();
    days_agree(&store, station).await;

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

    // Several parameters in one read: the same points as one read each, an entry per parameter asked.
    let together = store
        .series_of(station, &[Parameter::O3, Parameter::Pm25], 0, i64::from(i32::MAX))
        .await
        .unwrap();
    assert_eq!(together.len(), 2);
    assert_eq!((together[0].0, together[0].1.len()), (Parameter::O3, 0));
    assert_eq!(together[1].0, Parameter::Pm25);
    assert_eq!(
        together[1].1,
        store
            .series(station, Parameter::Pm25, 0, i64::from(i32::MAX))
            .await
            .unwrap()
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
    assert_eq!(recorded.rows_read, 4 + 5 + 5 + 1);
    assert_eq!(recorded.rows_unchanged, 2 + 4);
    assert_eq!(recorded.rows_inserted, 4 + 1);
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

#[tokio::test]
async fn store_suite_on_postgres() {
    let (store, _db) = common::postgres_store().await;
    suite(store).await;
}

#[tokio::test]
async fn store_suite_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    suite(common::sqlite_store(dir.path(), "airq.db").await).await;
}

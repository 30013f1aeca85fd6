//! The load's write path (the ETL's alone, so it lives here rather than in the core's store): a batch of checked
//! values, refused values and counts, written in one transaction.
//! Measurements are upserted on (station, parameter, time): a value already stored is left alone. The dialects truly
//! differ here — `COPY` into a staging table and `xmax` on PostgreSQL, multi-row statements and counts on SQLite —
//! so each has its own code.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, QueryBuilder, SqliteConnection};

use airq_core::db::{Database, DbTime};
use airq_core::parameter::Parameter;
use airq_core::store::{Error, Rejection, Result, Store};
use serde::Serialize;

fn sql(what: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Sql { what, source }
}

fn timestamp(seconds: i64) -> DateTime<Utc> {
    DbTime::from_seconds(seconds).0
}

/// One value to store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    pub station_id: i64,
    pub parameter: Parameter,
    /// Unix seconds, UTC.
    pub time: i64,
    /// In the parameter's stored unit.
    pub value: f64,
    pub flags: i16,
}

/// What one transaction writes.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub measurements: Vec<Measurement>,
    pub rejected: Vec<Rejection>,
    /// Values read from the source for this batch (stored + rejected).
    pub values_read: i64,
}

/// What writing a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WriteCounts {
    pub inserted: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub rejected: i64,
    pub flagged: i64,
}

impl std::ops::AddAssign for WriteCounts {
    fn add_assign(&mut self, other: Self) {
        self.inserted += other.inserted;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.rejected += other.rejected;
        self.flagged += other.flagged;
    }
}

/// Adds a batch's counts to its run, on `$conn` (the batch's transaction, of either database).
macro_rules! advance_counters {
    ($conn:expr, $run_id:expr, $read:expr, $counts:expr) => {{
        let (run_id, c): (i64, &WriteCounts) = ($run_id, $counts);
        let done = sqlx::query(
            "update load_runs set rows_read = rows_read + $2, rows_inserted = rows_inserted + $3,
                 rows_updated = rows_updated + $4, rows_unchanged = rows_unchanged + $5,
                 rows_rejected = rows_rejected + $6, rows_flagged = rows_flagged + $7, updated_at = $8
             where id = $1",
        )
        .bind(run_id)
        .bind($read)
        .bind(c.inserted)
        .bind(c.updated)
        .bind(c.unchanged)
        .bind(c.rejected)
        .bind(c.flagged)
        .bind(DbTime::now())
        .execute($conn)
        .await
        .map_err(sql("counting a batch"))?;
        if done.rows_affected() == 0 {
            return Err(Error::NoSuchRun(run_id));
        }
    }};
}

/// Removes repeated keys, keeping the last value of each (a later record of the same hour corrects an earlier one);
/// returns how many were removed.
fn dedupe_measurements(measurements: &[Measurement]) -> (Vec<Measurement>, usize) {
    let mut last: HashMap<(i64, Parameter, i64), usize> = HashMap::with_capacity(measurements.len());
    for (i, m) in measurements.iter().enumerate() {
        last.insert((m.station_id, m.parameter, m.time), i);
    }
    if last.len() == measurements.len() {
        return (measurements.to_vec(), 0);
    }
    let kept: Vec<Measurement> = measurements
        .iter()
        .enumerate()
        .filter(|(i, m)| last.get(&(m.station_id, m.parameter, m.time)) == Some(i))
        .map(|(_, m)| *m)
        .collect();
    let removed = measurements.len() - kept.len();
    (kept, removed)
}

fn dedupe_rejections(rejected: &[Rejection]) -> Vec<&Rejection> {
    let mut last: HashMap<(&str, &str, &str), usize> = HashMap::with_capacity(rejected.len());
    for (i, r) in rejected.iter().enumerate() {
        last.insert((&r.source, &r.record, &r.parameter), i);
    }
    rejected
        .iter()
        .enumerate()
        .filter(|(i, r)| last.get(&(r.source.as_str(), r.record.as_str(), r.parameter.as_str())) == Some(i))
        .map(|(_, r)| r)
        .collect()
}

/// Writes a batch for run `run_id` of `store` in one transaction: measurements upserted (a value already stored is left
/// alone), refused values recorded, the run's counters advanced.
pub async fn write(store: &Store, run_id: i64, batch: &Batch) -> Result<WriteCounts> {
    let (measurements, duplicates) = dedupe_measurements(&batch.measurements);
    let rejected = dedupe_rejections(&batch.rejected);
    // What the batch itself says; the upsert adds what the database did.
    let known = WriteCounts {
        unchanged: duplicates as i64,
        rejected: batch.rejected.len() as i64,
        flagged: measurements.iter().filter(|m| m.flags != 0).count() as i64,
        ..WriteCounts::default()
    };
    match store.database() {
        Database::Postgres(pool) => {
            let mut tx = pool.begin().await.map_err(sql("starting a transaction"))?;
            let ranges = series_ranges(&measurements);
            postgres_lock_stations(&mut tx, &ranges).await?;
            let mut counts = postgres_upsert(&mut tx, &measurements).await?;
            // The upsert added its inserted values to the daily aggregates; a changed value needs its days
            // computed again.
            if counts.updated > 0 {
                postgres_days(&mut tx, &ranges).await?;
            }
            counts += known;
            postgres_reject(&mut tx, run_id, &rejected).await?;
            advance_counters!(&mut *tx, run_id, batch.values_read, &counts);
            tx.commit().await.map_err(sql("committing a batch"))?;
            Ok(counts)
        }
        Database::Sqlite(pool) => {
            // IMMEDIATE: the batch counts rows before writing them, and a deferred transaction that read would
            // fail to upgrade to a write (SQLITE_BUSY_SNAPSHOT, "database is locked") when another connection —
            // the gateway's request log, another load — wrote in between; taking the write lock at the start
            // waits for it instead (busy_timeout).
            let mut tx = pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(sql("starting a transaction"))?;
            let ranges = series_ranges(&measurements);
            let mut counts = sqlite_upsert(&mut tx, &measurements, &ranges).await?;
            if counts.inserted + counts.updated > 0 {
                sqlite_days(&mut tx, &ranges).await?;
            }
            counts += known;
            sqlite_reject(&mut tx, run_id, &rejected).await?;
            advance_counters!(&mut *tx, run_id, batch.values_read, &counts);
            tx.commit().await.map_err(sql("committing a batch"))?;
            Ok(counts)
        }
    }
}

/// First key of the transaction locks a batch takes per station on PostgreSQL ("DAYS"); the second is the station.
const DAYS_LOCK_KEY: i32 = 0x4441_5953;

/// Seconds in a day: `measurement_days.day` counts them from 1970-01-01 UTC.
const DAY: i64 = 86_400;

/// The first and last time (Unix seconds) a batch holds values of, per station and parameter: what the daily
/// aggregates recompute and SQLite's counts cover.
type SeriesRanges = BTreeMap<(i64, &'static str), (i64, i64)>;

fn series_ranges(measurements: &[Measurement]) -> SeriesRanges {
    let mut ranges = SeriesRanges::new();
    for m in measurements {
        let range = ranges
            .entry((m.station_id, m.parameter.code()))
            .or_insert((m.time, m.time));
        range.0 = range.0.min(m.time);
        range.1 = range.1.max(m.time);
    }
    ranges
}

/// Midnight (UTC) of the first day and of the day after the last of a range of times.
fn whole_days((first, last): (i64, i64)) -> (i64, i64) {
    (first.div_euclid(DAY) * DAY, (last.div_euclid(DAY) + 1) * DAY)
}

/// PostgreSQL: the batch's stations locked for the transaction, in order (so two batches cannot deadlock), before it
/// writes: another load's batch of the same station waits, and the daily aggregates each recomputes see the
/// other's committed values instead of overwriting them with older sums.
async fn postgres_lock_stations(conn: &mut PgConnection, ranges: &SeriesRanges) -> Result<()> {
    let mut stations: Vec<i64> = ranges.keys().map(|(station, _)| *station).collect();
    stations.dedup();
    for station in stations {
        sqlx::query("select pg_advisory_xact_lock($1, $2)")
            .bind(DAYS_LOCK_KEY)
            // Station ids are identity values far below 2^31; a larger one shares a lock, which only serialises.
            .bind(station as i32)
            .execute(&mut *conn)
            .await
            .map_err(sql("locking a station's daily aggregates"))?;
    }
    Ok(())
}

/// PostgreSQL: the daily aggregates of the days the batch touched, recomputed from the stored values.
async fn postgres_days(conn: &mut PgConnection, ranges: &SeriesRanges) -> Result<()> {
    let stations: Vec<i64> = ranges.keys().map(|(station, _)| *station).collect();
    let parameters: Vec<&str> = ranges.keys().map(|(_, parameter)| *parameter).collect();
    let (firsts, ends): (Vec<i64>, Vec<i64>) = ranges.values().map(|range| whole_days(*range)).unzip();
    sqlx::query(
        "insert into measurement_days (station_id, parameter, day, min, max, sum, count)
         select m.station_id, m.parameter, floor(date_part('epoch', m.time) / 86400)::bigint, min(m.value),
                max(m.value), sum(m.value), count(*)
         from unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[]) as r (station_id, parameter, t0, t1)
         join measurements m on m.station_id = r.station_id and m.parameter = r.parameter
             and m.time >= to_timestamp(r.t0) and m.time < to_timestamp(r.t1)
         group by 1, 2, 3
         on conflict (station_id, parameter, day) do update set min = excluded.min, max = excluded.max,
             sum = excluded.sum, count = excluded.count",
    )
    .bind(stations)
    .bind(parameters)
    .bind(firsts)
    .bind(ends)
    .execute(&mut *conn)
    .await
    .map_err(sql("updating the daily aggregates"))?;
    Ok(())
}

/// SQLite: the daily aggregates of the days the batch touched, recomputed from the stored values (the transaction
/// is IMMEDIATE: no other writer runs in between).
async fn sqlite_days(conn: &mut SqliteConnection, ranges: &SeriesRanges) -> Result<()> {
    for ((station, parameter), range) in ranges {
        let (from, to) = whole_days(*range);
        // Integer division truncates toward zero: shifted so that times before 1970 fall in their own day.
        sqlx::query(
            "insert into measurement_days (station_id, parameter, day, min, max, sum, count)
             select station_id, parameter, (time - ((time % 86400) + 86400) % 86400) / 86400, min(value),
                    max(value), sum(value), count(*)
             from measurements where station_id = $1 and parameter = $2 and time >= $3 and time < $4
             group by 1, 2, 3
             on conflict (station_id, parameter, day) do update set min = excluded.min, max = excluded.max,
                 sum = excluded.sum, count = excluded.count",
        )
        .bind(station)
        .bind(parameter)
        .bind(from)
        .bind(to)
        .execute(&mut *conn)
        .await
        .map_err(sql("updating the daily aggregates"))?;
    }
    Ok(())
}

/// PostgreSQL: COPY the batch into a temporary table, then one `insert … select … on conflict` that reports, per
/// row, whether it was inserted (`xmax = 0`) or updated; rows whose value is already stored are not touched. The
/// inserted values are added to their days' aggregates in the same statement (the station is locked: no other
/// batch changes those days meanwhile); the caller recomputes the days of updated values.
async fn postgres_upsert(conn: &mut PgConnection, measurements: &[Measurement]) -> Result<WriteCounts> {
    if measurements.is_empty() {
        return Ok(WriteCounts::default());
    }
    sqlx::query(
        "create temporary table if not exists staging_measurements (
             station_id bigint, parameter text, t bigint, value double precision, flags smallint
         ) on commit delete rows",
    )
    .execute(&mut *conn)
    .await
    .map_err(sql("creating the staging table"))?;
    let mut copy = conn
        .copy_in_raw("copy staging_measurements (station_id, parameter, t, value, flags) from stdin")
        .await
        .map_err(sql("starting COPY"))?;
    let mut buffer = String::with_capacity(64 * 1024);
    for m in measurements {
        let _ = writeln!(
            buffer,
            "{}\t{}\t{}\t{}\t{}",
            m.station_id,
            m.parameter.code(),
            m.time,
            m.value,
            m.flags
        );
        if buffer.len() > 60 * 1024 {
            copy.send(buffer.as_bytes()).await.map_err(sql("sending COPY data"))?;
            buffer.clear();
        }
    }
    if !buffer.is_empty() {
        copy.send(buffer.as_bytes()).await.map_err(sql("sending COPY data"))?;
    }
    copy.finish().await.map_err(sql("finishing COPY"))?;
    let (inserted, updated): (i64, i64) = sqlx::query_as(
        "with upserted as (
             insert into measurements (station_id, parameter, time, value, flags)
             select station_id, parameter, to_timestamp(t), value, flags from staging_measurements
             on conflict (station_id, parameter, time) do update
                 set value = excluded.value, flags = (measurements.flags & 6::smallint) | excluded.flags
                 where measurements.value <> excluded.value or (measurements.flags & ~6::smallint) <> excluded.flags
             returning station_id, parameter, time, value, (xmax = 0) as inserted
         ),
         added as (
             insert into measurement_days (station_id, parameter, day, min, max, sum, count)
             select station_id, parameter, floor(date_part('epoch', time) / 86400)::bigint, min(value), max(value),
                    sum(value), count(*)
             from upserted where inserted group by 1, 2, 3
             on conflict (station_id, parameter, day) do update
                 set min = least(measurement_days.min, excluded.min),
                     max = greatest(measurement_days.max, excluded.max),
                     sum = measurement_days.sum + excluded.sum, count = measurement_days.count + excluded.count
         )
         select count(*) filter (where inserted), count(*) filter (where not inserted) from upserted",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(sql("upserting measurements"))?;
    Ok(WriteCounts {
        inserted,
        updated,
        unchanged: measurements.len() as i64 - inserted - updated,
        ..WriteCounts::default()
    })
}

async fn postgres_reject(conn: &mut PgConnection, run_id: i64, rejected: &[&Rejection]) -> Result<()> {
    if rejected.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&Rejection) -> Option<String>| rejected.iter().map(|r| f(r)).collect::<Vec<_>>();
    let times: Vec<Option<DateTime<Utc>>> = rejected.iter().map(|r| r.time.map(timestamp)).collect();
    sqlx::query(
        "insert into rejected_rows (load_run_id, source, record, station, parameter, time, raw_value, reason)
         select $1, * from unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[],
                                  $8::text[])
         on conflict (source, record, parameter) do update set load_run_id = excluded.load_run_id,
             station = excluded.station, time = excluded.time, raw_value = excluded.raw_value,
             reason = excluded.reason",
    )
    .bind(run_id)
    .bind(column(|r| Some(r.source.clone())))
    .bind(column(|r| Some(r.record.clone())))
    .bind(column(|r| r.station.clone()))
    .bind(column(|r| Some(r.parameter.clone())))
    .bind(times)
    .bind(column(|r| r.raw_value.clone()))
    .bind(column(|r| Some(r.reason.clone())))
    .execute(&mut *conn)
    .await
    .map_err(sql("recording rejected values"))?;
    Ok(())
}

/// Rows per multi-row statement on SQLite (5 values each, under SQLite's 32,766 bound parameters).
const SQLITE_ROWS_PER_STATEMENT: usize = 2000;

/// SQLite: multi-row upserts in the batch's transaction. SQLite cannot say whether an upserted row was inserted or
/// updated, so the rows of each touched series are counted before and after: the difference was inserted, the
/// rest of the changed rows were updated.
async fn sqlite_upsert(
    conn: &mut SqliteConnection,
    measurements: &[Measurement],
    ranges: &SeriesRanges,
) -> Result<WriteCounts> {
    if measurements.is_empty() {
        return Ok(WriteCounts::default());
    }
    let before = sqlite_count(conn, ranges).await?;
    let mut changed = 0;
    for chunk in measurements.chunks(SQLITE_ROWS_PER_STATEMENT) {
        let mut builder: QueryBuilder<sqlx::Sqlite> =
            QueryBuilder::new("insert into measurements (station_id, parameter, time, value, flags) ");
        builder.push_values(chunk, |mut row, m| {
            row.push_bind(m.station_id)
                .push_bind(m.parameter.code())
                .push_bind(m.time)
                .push_bind(m.value)
                .push_bind(m.flags);
        });
        builder.push(
            " on conflict (station_id, parameter, time) do update
              set value = excluded.value, flags = (measurements.flags & 6) | excluded.flags
              where measurements.value <> excluded.value or (measurements.flags & ~6) <> excluded.flags",
        );
        changed += builder
            .build()
            .execute(&mut *conn)
            .await
            .map_err(sql("upserting measurements"))?
            .rows_affected() as i64;
    }
    let after = sqlite_count(conn, ranges).await?;
    let inserted = after - before;
    let updated = changed - inserted;
    Ok(WriteCounts {
        inserted,
        updated,
        unchanged: measurements.len() as i64 - changed,
        ..WriteCounts::default()
    })
}

async fn sqlite_count(conn: &mut SqliteConnection, ranges: &SeriesRanges) -> Result<i64> {
    let mut total = 0;
    for ((station_id, parameter), (from, to)) in ranges {
        let count: i64 = sqlx::query_scalar(
            "select count(*) from measurements where station_id = $1 and parameter = $2 and time between $3 and $4",
        )
        .bind(station_id)
        .bind(parameter)
        .bind(from)
        .bind(to)
        .fetch_one(&mut *conn)
        .await
        .map_err(sql("counting measurements"))?;
        total += count;
    }
    Ok(total)
}

async fn sqlite_reject(conn: &mut SqliteConnection, run_id: i64, rejected: &[&Rejection]) -> Result<()> {
    for chunk in rejected.chunks(1000) {
        let mut builder: QueryBuilder<sqlx::Sqlite> = QueryBuilder::new(
            "insert into rejected_rows (load_run_id, source, record, station, parameter, time, raw_value, reason) ",
        );
        builder.push_values(chunk, |mut row, r| {
            row.push_bind(run_id)
                .push_bind(&r.source)
                .push_bind(&r.record)
                .push_bind(&r.station)
                .push_bind(&r.parameter)
                .push_bind(r.time)
                .push_bind(&r.raw_value)
                .push_bind(&r.reason);
        });
        builder.push(
            " on conflict (source, record, parameter) do update set load_run_id = excluded.load_run_id,
              station = excluded.station, time = excluded.time, raw_value = excluded.raw_value,
              reason = excluded.reason",
        );
        builder
            .build()
            .execute(&mut *conn)
            .await
            .map_err(sql("recording rejected values"))?;
    }
    Ok(())
}

//! The reads behind the dashboard's views, on PostgreSQL or SQLite: the newest value and the extent of every
//! station's pollutant series, and a series aggregated into fixed-width time buckets by the database (so a year of
//! hourly values leaves the database as a few hundred rows).

use airq_core::db::{Database, DbTime};
use airq_core::on_pool;

use crate::view::DAY;

/// What can go wrong reading the database.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct StoreError {
    what: &'static str,
    #[source]
    source: sqlx::Error,
}

type Result<T> = std::result::Result<T, StoreError>;

fn sql(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError { what, source }
}

/// A station's series of one pollutant: its first and newest hour (Unix seconds) and the newest value.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesState {
    pub station_id: i64,
    pub parameter: String,
    pub first: i64,
    pub last: i64,
    pub last_value: f64,
}

/// One time bucket of a series: values from `from + index × width` for `width` seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketRow {
    pub station_id: i64,
    pub index: i64,
    pub min: f64,
    pub mean: f64,
    pub max: f64,
    pub count: i64,
}

/// The view reads over one database.
#[derive(Debug, Clone)]
pub struct ViewStore {
    db: Database,
}

impl ViewStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// For every station and pollutant with data: first and newest hour, and the newest value. Three probes of the
    /// primary key (station, parameter, time) per station and pollutant and no scan, so it costs the same with a
    /// thousand rows or ten million (a join on the newest time let SQLite's planner walk each station's rows).
    pub async fn series_states(&self) -> Result<Vec<SeriesState>> {
        let what = "reading the newest values";
        type Row = (i64, String, DbTime, DbTime, Option<f64>);
        // `first` and `last` are computed once per pair in the inner select; the value is one more probe. One text for
        // both databases: `DbTime` reads a timestamptz and Unix seconds alike.
        const SELECT: &str = "select id, code, first, last,
                (select m.value from measurements m
                    where m.station_id = q.id and m.parameter = q.code and m.time = q.last)
             from (select s.id as id, p.code as code,
                     (select min(f.time) from measurements f where f.station_id = s.id and f.parameter = p.code)
                         as first,
                     (select max(x.time) from measurements x where x.station_id = s.id and x.parameter = p.code)
                         as last
                   from stations s cross join parameters p where p.kind = 'pollutant') q
             where last is not null
             order by id, code";
        let rows: Vec<Row> =
            on_pool!(&self.db, pool => sqlx::query_as(SELECT).fetch_all(pool).await).map_err(sql(what))?;
        Ok(rows
            .into_iter()
            .filter_map(|(station_id, parameter, first, last, last_value)| {
                Some(SeriesState {
                    station_id,
                    parameter,
                    first: first.seconds(),
                    last: last.seconds(),
                    last_value: last_value?,
                })
            })
            .collect())
    }

    /// The first and newest hour (Unix seconds) of one station's series, if it has values. Two index probes.
    pub async fn extent(&self, station_id: i64, parameter: &str) -> Result<Option<(i64, i64)>> {
        let what = "reading a series' extent";
        let (first, last): (Option<DbTime>, Option<DbTime>) = on_pool!(&self.db, pool => sqlx::query_as(
            "select (select min(time) from measurements where station_id = $1 and parameter = $2),
                    (select max(time) from measurements where station_id = $1 and parameter = $2)",
        )
        .bind(station_id)
        .bind(parameter)
        .fetch_one(pool)
        .await)
        .map_err(sql(what))?;
        Ok(first.zip(last).map(|(first, last)| (first.seconds(), last.seconds())))
    }

    /// The values of `parameter` at `stations` from `from` (inclusive) to `to` (exclusive), Unix seconds,
    /// aggregated into buckets of `width` seconds starting at `from`. Buckets without a value are absent. Buckets of
    /// whole days from midnight are read from the daily aggregates (`measurement_days`, kept by the loads), a row
    /// per day instead of 24; the mean is weighted by each day's count, so both give the same answer.
    pub async fn buckets(
        &self,
        stations: &[i64],
        parameter: &str,
        from: i64,
        to: i64,
        width: i64,
    ) -> Result<Vec<BucketRow>> {
        let what = "reading a series";
        type Row = (i64, i64, f64, f64, f64, i64);
        let daily = width % DAY == 0 && from % DAY == 0 && to % DAY == 0;
        let rows: Vec<Row> = match &self.db {
            Database::Postgres(pool) => {
                let query = if daily {
                    "select station_id, (day * 86400 - $3) / $5 as bucket,
                        min(min), sum(sum) / sum(count), max(max), sum(count)::bigint
                     from measurement_days
                     where station_id = any($1) and parameter = $2 and day >= $3 / 86400 and day < $4 / 86400
                     group by station_id, bucket order by station_id, bucket"
                } else {
                    "select station_id, (date_part('epoch', time)::bigint - $3) / $5 as bucket,
                        min(value), avg(value), max(value), count(*)
                     from measurements
                     where station_id = any($1) and parameter = $2
                         and time >= to_timestamp($3::bigint) and time < to_timestamp($4::bigint)
                     group by station_id, bucket order by station_id, bucket"
                };
                sqlx::query_as(query)
                    .bind(stations)
                    .bind(parameter)
                    .bind(from)
                    .bind(to)
                    .bind(width)
                    .fetch_all(pool)
                    .await
                    .map_err(sql(what))?
            }
            Database::Sqlite(pool) => {
                let ids = serde_json::to_string(stations).unwrap_or_else(|_| "[]".to_owned());
                let query = if daily {
                    "select station_id, (day * 86400 - $3) / $5 as bucket,
                        min(min), sum(sum) / sum(count), max(max), sum(count)
                     from measurement_days
                     where station_id in (select value from json_each($1)) and parameter = $2
                         and day >= $3 / 86400 and day < $4 / 86400
                     group by station_id, bucket order by station_id, bucket"
                } else {
                    "select station_id, (time - $3) / $5 as bucket, min(value), avg(value), max(value), count(*)
                     from measurements
                     where station_id in (select value from json_each($1)) and parameter = $2
                         and time >= $3 and time < $4
                     group by station_id, bucket order by station_id, bucket"
                };
                sqlx::query_as(query)
                    .bind(ids)
                    .bind(parameter)
                    .bind(from)
                    .bind(to)
                    .bind(width)
                    .fetch_all(pool)
                    .await
                    .map_err(sql(what))?
            }
        };
        Ok(rows
            .into_iter()
            .map(|(station_id, index, min, mean, max, count)| BucketRow {
                station_id,
                index,
                min,
                mean,
                max,
                count,
            })
            .collect())
    }
}

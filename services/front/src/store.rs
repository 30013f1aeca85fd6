//! The reads behind the dashboard's views, on PostgreSQL or SQLite: the newest value and the extent of every
//! station's pollutant series, and a series aggregated into fixed-width time buckets by the database (so a year of
//! hourly values leaves the database as a few hundred rows).

use airq_core::db::Database;

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

    /// For every station and pollutant with data: first and newest hour, and the newest value. One index probe per
    /// station and pollutant, so it costs the same with a thousand rows or ten million.
    pub async fn series_states(&self) -> Result<Vec<SeriesState>> {
        let what = "reading the newest values";
        type Row = (i64, String, Option<i64>, i64, f64);
        let rows: Vec<Row> = match &self.db {
            Database::Postgres(pool) => sqlx::query_as(
                "select s.id, p.code,
                    (select extract(epoch from min(f.time))::bigint from measurements f
                        where f.station_id = s.id and f.parameter = p.code),
                    extract(epoch from l.time)::bigint, l.value
                 from stations s cross join parameters p
                 cross join lateral (select time, value from measurements m
                     where m.station_id = s.id and m.parameter = p.code order by time desc limit 1) l
                 where p.kind = 'pollutant'
                 order by s.id, p.code",
            )
            .fetch_all(pool)
            .await
            .map_err(sql(what))?,
            Database::Sqlite(pool) => sqlx::query_as(
                "select s.id, p.code,
                    (select min(f.time) from measurements f where f.station_id = s.id and f.parameter = p.code),
                    l.time, l.value
                 from stations s cross join parameters p
                 join measurements l on l.station_id = s.id and l.parameter = p.code
                     and l.time = (select max(x.time) from measurements x
                         where x.station_id = s.id and x.parameter = p.code)
                 where p.kind = 'pollutant'
                 order by s.id, p.code",
            )
            .fetch_all(pool)
            .await
            .map_err(sql(what))?,
        };
        Ok(rows
            .into_iter()
            .map(|(station_id, parameter, first, last, last_value)| SeriesState {
                station_id,
                parameter,
                first: first.unwrap_or(last),
                last,
                last_value,
            })
            .collect())
    }

    /// The first and newest hour (Unix seconds) of one station's series, if it has values. Two index probes.
    pub async fn extent(&self, station_id: i64, parameter: &str) -> Result<Option<(i64, i64)>> {
        let what = "reading a series' extent";
        let (first, last): (Option<i64>, Option<i64>) = match &self.db {
            Database::Postgres(pool) => sqlx::query_as(
                "select (select extract(epoch from min(time))::bigint from measurements
                            where station_id = $1 and parameter = $2),
                        (select extract(epoch from max(time))::bigint from measurements
                            where station_id = $1 and parameter = $2)",
            )
            .bind(station_id)
            .bind(parameter)
            .fetch_one(pool)
            .await
            .map_err(sql(what))?,
            Database::Sqlite(pool) => sqlx::query_as(
                "select (select min(time) from measurements where station_id = $1 and parameter = $2),
                        (select max(time) from measurements where station_id = $1 and parameter = $2)",
            )
            .bind(station_id)
            .bind(parameter)
            .fetch_one(pool)
            .await
            .map_err(sql(what))?,
        };
        Ok(first.zip(last))
    }

    /// The values of `parameter` at `stations` from `from` (inclusive) to `to` (exclusive), Unix seconds,
    /// aggregated into buckets of `width` seconds starting at `from`. Buckets without a value are absent.
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
        let rows: Vec<Row> = match &self.db {
            Database::Postgres(pool) => sqlx::query_as(
                "select station_id, (extract(epoch from time)::bigint - $3) / $5 as bucket,
                    min(value), avg(value), max(value), count(*)
                 from measurements
                 where station_id = any($1) and parameter = $2
                     and time >= to_timestamp($3::bigint) and time < to_timestamp($4::bigint)
                 group by station_id, bucket order by station_id, bucket",
            )
            .bind(stations)
            .bind(parameter)
            .bind(from)
            .bind(to)
            .bind(width)
            .fetch_all(pool)
            .await
            .map_err(sql(what))?,
            Database::Sqlite(pool) => {
                let ids = serde_json::to_string(stations).unwrap_or_else(|_| "[]".to_owned());
                sqlx::query_as(
                    "select station_id, (time - $3) / $5 as bucket, min(value), avg(value), max(value), count(*)
                     from measurements
                     where station_id in (select value from json_each($1)) and parameter = $2
                         and time >= $3 and time < $4
                     group by station_id, bucket order by station_id, bucket",
                )
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

//! Stored series: reading them back, their extents and counts, a fingerprint of every row, and the quality marks a
//! load sets after writing.

use std::fmt::Write as _;

use super::{FLAGS_FROM_CHECKS, Point, Result, SeriesCount, Store, sql};
use crate::db::{Database, DbTime};
use crate::on_pool;
use crate::parameter::Parameter;

impl Store {
    /// The values of one station's parameter from `from` (inclusive) to `to` (exclusive), Unix seconds, in time
    /// order.
    pub async fn series(&self, station_id: i64, parameter: Parameter, from: i64, to: i64) -> Result<Vec<Point>> {
        const SELECT: &str = "select time, value, flags from measurements
            where station_id = $1 and parameter = $2 and time >= $3 and time < $4 order by time";
        let rows: Vec<(DbTime, f64, i16)> = on_pool!(&self.db, pool => sqlx::query_as(SELECT)
            .bind(station_id)
            .bind(parameter.code())
            .bind(DbTime::from_seconds(from))
            .bind(DbTime::from_seconds(to))
            .fetch_all(pool)
            .await)
        .map_err(sql("reading a series"))?;
        Ok(rows
            .into_iter()
            .map(|(time, value, flags)| Point {
                time: time.seconds(),
                value,
                flags,
            })
            .collect())
    }

    /// The series of several `parameters` of one station from `from` to `to`, in one read (a forecast's inputs):
    /// one entry per parameter asked, empty where it has no value.
    pub async fn series_of(
        &self,
        station_id: i64,
        parameters: &[Parameter],
        from: i64,
        to: i64,
    ) -> Result<Vec<(Parameter, Vec<Point>)>> {
        // SQLite answers seven indexed reads in a row faster than one `in (…)` statement (measured with the
        // predictive bench, docs/benchmarks.md); PostgreSQL saves the round trips.
        if let Database::Sqlite(_) = &self.db {
            let mut found = Vec::with_capacity(parameters.len());
            for parameter in parameters {
                found.push((*parameter, self.series(station_id, *parameter, from, to).await?));
            }
            return Ok(found);
        }
        // Placeholders only: the statement's text depends on how many parameters are asked, never on their values.
        let placeholders: Vec<String> = (0..parameters.len()).map(|i| format!("${}", i + 4)).collect();
        let select = format!(
            "select parameter, time, value, flags from measurements
            where station_id = $1 and time >= $2 and time < $3 and parameter in ({}) order by parameter, time",
            placeholders.join(", ")
        );
        let mut found: Vec<(Parameter, Vec<Point>)> = parameters.iter().map(|p| (*p, Vec::new())).collect();
        let rows: Vec<(String, DbTime, f64, i16)> = on_pool!(&self.db, pool => {
            let mut query = sqlx::query_as(&select)
                .bind(station_id)
                .bind(DbTime::from_seconds(from))
                .bind(DbTime::from_seconds(to));
            for parameter in parameters {
                query = query.bind(parameter.code());
            }
            query.fetch_all(pool).await
        })
        .map_err(sql("reading a station's series"))?;
        for (code, time, value, flags) in rows {
            if let Some((_, points)) = found.iter_mut().find(|(p, _)| p.code() == code) {
                points.push(Point {
                    time: time.seconds(),
                    value,
                    flags,
                });
            }
        }
        Ok(found)
    }

    /// The newest hour (Unix seconds) with a value of `parameter` at station `station_id`.
    pub async fn latest(&self, station_id: i64, parameter: Parameter) -> Result<Option<i64>> {
        const SELECT: &str = "select max(time) from measurements where station_id = $1 and parameter = $2";
        let newest: Option<DbTime> = on_pool!(&self.db, pool => sqlx::query_scalar(SELECT)
            .bind(station_id)
            .bind(parameter.code())
            .fetch_one(pool)
            .await)
        .map_err(sql("reading the newest value's time"))?;
        Ok(newest.map(DbTime::seconds))
    }

    /// Stored values per station and parameter.
    pub async fn series_counts(&self) -> Result<Vec<SeriesCount>> {
        const SELECT: &str = "select s.code, m.parameter, count(*) from measurements m
            join stations s on s.id = m.station_id group by s.code, m.parameter order by s.code, m.parameter";
        let rows: Vec<(String, String, i64)> = on_pool!(&self.db, pool => sqlx::query_as(SELECT).fetch_all(pool).await)
            .map_err(sql("counting measurements"))?;
        Ok(rows
            .into_iter()
            .map(|(station, parameter, count)| SeriesCount {
                station,
                parameter,
                count,
            })
            .collect())
    }

    /// A digest of every stored measurement (station, parameter, time, value, flags), to compare two stores or a
    /// store before and after a load.
    pub async fn fingerprint(&self) -> Result<String> {
        use futures::TryStreamExt;
        use sha2::{Digest, Sha256};
        const SELECT: &str = "select s.code, m.parameter, m.time, m.value, m.flags
            from measurements m join stations s on s.id = m.station_id order by s.code, m.parameter, m.time";
        let mut hasher = Sha256::new();
        let mut line = String::new();
        let mut feed = |(code, parameter, time, value, flags): (String, String, DbTime, f64, i16)| {
            line.clear();
            let _ = writeln!(line, "{code}\t{parameter}\t{}\t{value}\t{flags}", time.seconds());
            hasher.update(line.as_bytes());
        };
        on_pool!(&self.db, pool => {
            let mut rows = sqlx::query_as(SELECT).fetch(pool);
            while let Some(row) = rows.try_next().await.map_err(sql("reading every measurement"))? {
                feed(row);
            }
        });
        Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Sets the checks' bits ([`FLAGS_FROM_CHECKS`]) of one series' values at the given times (Unix seconds) to the
    /// given bits, in one transaction; a source's own bits are kept. Returns how many values changed. Callers pass
    /// the hours whose marks change, usually few.
    pub async fn set_check_flags(&self, station_id: i64, parameter: Parameter, marks: &[(i64, i16)]) -> Result<u64> {
        if marks.is_empty() {
            return Ok(0);
        }
        let what = "setting quality marks";
        match &self.db {
            // One statement over arrays of times and bits (PostgreSQL only).
            Database::Postgres(pool) => {
                let times: Vec<DbTime> = marks.iter().map(|(t, _)| DbTime::from_seconds(*t)).collect();
                let bits: Vec<i16> = marks.iter().map(|(_, b)| b & FLAGS_FROM_CHECKS).collect();
                let done = sqlx::query(
                    "update measurements m set flags = (m.flags & ~6::smallint) | u.bits
                     from unnest($3::timestamptz[], $4::smallint[]) as u(time, bits)
                     where m.station_id = $1 and m.parameter = $2 and m.time = u.time
                         and (m.flags & 6::smallint) <> u.bits",
                )
                .bind(station_id)
                .bind(parameter.code())
                .bind(times)
                .bind(bits)
                .execute(pool)
                .await
                .map_err(sql(what))?;
                Ok(done.rows_affected())
            }
            Database::Sqlite(pool) => {
                let mut tx = pool
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(sql("starting a transaction"))?;
                let mut changed = 0;
                for (time, bits) in marks {
                    changed += sqlx::query(
                        "update measurements set flags = (flags & ~6) | $4
                         where station_id = $1 and parameter = $2 and time = $3 and (flags & 6) <> $4",
                    )
                    .bind(station_id)
                    .bind(parameter.code())
                    .bind(DbTime::from_seconds(*time))
                    .bind(bits & FLAGS_FROM_CHECKS)
                    .execute(&mut *tx)
                    .await
                    .map_err(sql(what))?
                    .rows_affected();
                }
                tx.commit().await.map_err(sql("committing quality marks"))?;
                Ok(changed)
            }
        }
    }
}

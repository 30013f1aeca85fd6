//! The measurement store: stations, measurements, load runs, watermarks and rejected values, on PostgreSQL or
//! SQLite behind one interface. Every write of a batch is one transaction, and measurements are upserted on
//! (station, parameter, time), so re-running a load never duplicates and a load killed between batches leaves only
//! whole batches behind.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, QueryBuilder, Row, SqliteConnection};

use crate::db::Database;
use crate::parameter::Parameter;

mod anomalies;
pub use anomalies::{AnomalyReport, StoredAnomaly};

/// Flag bit on a stored measurement: PM2.5 above PM10 at the same station and hour (physically impossible, as PM10
/// includes PM2.5; usually two instruments disagreeing). The value is kept and marked.
pub const FLAG_PM25_ABOVE_PM10: i16 = 1;
/// Flag bit: the sensor looks stuck — the same value 24 hours in a row or more (set from the 24th hour on).
pub const FLAG_STUCK: i16 = 2;
/// Flag bit: a jump — the value is far outside the band the series' recent days give for that hour.
pub const FLAG_JUMP: i16 = 4;
/// The bits a load sets after writing, from the stored series around the hours it touched
/// ([`Store::set_check_flags`]). A source's own bits are the others; writing a value keeps the checks' bits, which
/// the checks then recompute.
pub const FLAGS_FROM_CHECKS: i16 = FLAG_STUCK | FLAG_JUMP;
const _: () = assert!(FLAGS_FROM_CHECKS == 6, "the upserts' SQL spells the checks' bits as 6");

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Sql {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("load run {0} does not exist")]
    NoSuchRun(i64),
    #[error("cannot take or probe the lock of load run {run_id} ({path}): {source}")]
    Lock {
        run_id: i64,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn sql(what: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Sql { what, source }
}

/// A station as a source describes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewStation {
    /// Unique across sources (the station name, or `openaq-<id>`).
    pub code: String,
    pub name: String,
    /// `csv`, `openaq` or `openMeteo`.
    pub source: String,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
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

/// A value a load refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The file or URL it came from.
    pub source: String,
    /// Where in the source: `line 1234`, `page 3, result 17`.
    pub record: String,
    pub station: Option<String>,
    /// The parameter code, or `row` when the whole record was refused.
    pub parameter: String,
    pub time: Option<i64>,
    pub raw_value: Option<String>,
    pub reason: String,
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

/// A load about to start.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// The load's name (an EtlSchedule's `<namespace>/<name>`, or what the caller chose): the key of its watermark.
    pub name: String,
    /// `csv`, `openaq`, `openMeteo`.
    pub source: String,
    /// `incremental` or `backfill`.
    pub mode: String,
    /// The load's specification, as JSON.
    pub spec: String,
    /// Who asked: `cli`, `api:<key id>`, `job:<name>`.
    pub requested_by: String,
    pub range_from: Option<DateTime<Utc>>,
    pub range_to: Option<DateTime<Utc>>,
}

/// A load, running or finished.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadRun {
    pub id: i64,
    pub name: String,
    pub source: String,
    pub mode: String,
    pub spec: serde_json::Value,
    pub requested_by: String,
    pub range_from: Option<DateTime<Utc>>,
    pub range_to: Option<DateTime<Utc>>,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    pub rows_read: i64,
    pub rows_inserted: i64,
    pub rows_updated: i64,
    pub rows_unchanged: i64,
    pub rows_rejected: i64,
    /// Values written with a source's quality flag (PM2.5 above PM10).
    pub rows_flagged: i64,
    /// Values of the run's series and range marked stuck or as a jump once it finished.
    pub rows_stuck: i64,
    pub rows_jump: i64,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A refused value as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectedRow {
    pub load_run_id: i64,
    pub source: String,
    pub record: String,
    pub station: Option<String>,
    pub parameter: String,
    pub time: Option<DateTime<Utc>>,
    pub raw_value: Option<String>,
    pub reason: String,
}

/// A station as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Station {
    pub id: i64,
    pub code: String,
    pub name: String,
    pub source: String,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
}

/// One stored value of a series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Unix seconds, UTC.
    pub time: i64,
    pub value: f64,
    pub flags: i16,
}

/// Stored values per station and parameter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SeriesCount {
    pub station: String,
    pub parameter: String,
    pub count: i64,
}

/// The range of times the store reads: years 0 to 9999 (Unix seconds).
const TIME_MIN: i64 = -62_167_219_200;
const TIME_MAX: i64 = 253_402_300_799;

/// Runs without a lock to probe (on an in-memory SQLite database) that have not written for this long while
/// `running` are taken for dead (their process was killed) when a new run of the same load starts. On PostgreSQL a
/// run holds an advisory lock for its lifetime, and on a SQLite file a lock on a file beside it, so a dead run is
/// recognised at once.
pub const STALE_RUN_SECONDS: i64 = 300;

/// First key of the advisory locks runs hold on PostgreSQL ("AIRQ"); the second is the run id.
const RUN_LOCK_KEY: i32 = 0x4149_5251;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd<'a> {
    /// Every value written; the values of its series' range marked stuck and as jumps (`FLAG_STUCK`, `FLAG_JUMP`).
    Succeeded { stuck: i64, jump: i64 },
    /// Why it failed.
    Failed(&'a str),
}

/// A started run. On PostgreSQL it keeps a connection of its own holding the run's advisory lock, on SQLite the
/// load's lock file; either is released when the run finishes or its process dies.
#[derive(Debug)]
pub struct RunHandle {
    pub id: i64,
    lease: Option<PgConnection>,
    lock: Option<std::fs::File>,
}

/// The folder of the run locks of the SQLite database `pool` (`<database>.locks/`), or `None` for an in-memory
/// database.
fn sqlite_lock_folder(pool: &sqlx::SqlitePool) -> Option<std::path::PathBuf> {
    let options = pool.connect_options();
    let database = options.get_filename();
    if !database.is_file() {
        return None;
    }
    let mut folder = database.as_os_str().to_owned();
    folder.push(".locks");
    Some(folder.into())
}

/// What the lock of a run on SQLite says about it.
enum RunLock {
    /// Held: by this process (the file is returned) or, when probing, by a live run.
    Held(Option<std::fs::File>),
    /// Free: the run's process is gone.
    Free,
    /// No lock file (an in-memory database, or a run started before its lock was taken).
    Unknown,
}

/// Takes (`create`) or probes the lock of run `run_id`: an exclusive lock on `<database>.locks/run-<id>.lock`, held
/// while the file is open; the system releases it when the process dies, as PostgreSQL ends an advisory lock with
/// its session.
fn sqlite_run_lock(pool: &sqlx::SqlitePool, run_id: i64, create: bool) -> Result<RunLock> {
    let Some(folder) = sqlite_lock_folder(pool) else {
        return Ok(RunLock::Unknown);
    };
    let path = folder.join(format!("run-{run_id}.lock"));
    let lock_error = |source: std::io::Error| Error::Lock {
        run_id,
        path: path.display().to_string(),
        source,
    };
    if create {
        std::fs::create_dir_all(&folder).map_err(lock_error)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(create)
        .truncate(false)
        .write(true)
        .open(&path);
    let file = match file {
        Ok(file) => file,
        Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => return Ok(RunLock::Unknown),
        Err(e) => return Err(lock_error(e)),
    };
    match file.try_lock() {
        Ok(()) if create => Ok(RunLock::Held(Some(file))),
        Ok(()) => {
            drop(file);
            let _ = std::fs::remove_file(&path);
            Ok(RunLock::Free)
        }
        Err(std::fs::TryLockError::WouldBlock) if !create => Ok(RunLock::Held(None)),
        Err(std::fs::TryLockError::WouldBlock) => Err(lock_error(std::io::Error::other(
            "the lock of a new run is held by another process",
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(lock_error(e)),
    }
}

/// The measurement store over one database.
#[derive(Debug, Clone)]
pub struct Store {
    db: Database,
}

fn timestamp(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).unwrap_or_default()
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

impl Store {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Creates the station, or refreshes its name and position; returns its id.
    pub async fn ensure_station(&self, station: &NewStation) -> Result<i64> {
        const UPSERT: &str =
            "insert into stations (code, name, source, latitude, longitude) values ($1, $2, $3, $4, $5)
             on conflict (code) do update set name = excluded.name,
                 latitude = coalesce(excluded.latitude, stations.latitude),
                 longitude = coalesce(excluded.longitude, stations.longitude)
             returning id";
        let what = "storing a station";
        match &self.db {
            Database::Postgres(pool) => sqlx::query_scalar(UPSERT)
                .bind(&station.code)
                .bind(&station.name)
                .bind(&station.source)
                .bind(station.latitude)
                .bind(station.longitude)
                .fetch_one(pool)
                .await
                .map_err(sql(what)),
            Database::Sqlite(pool) => sqlx::query_scalar(UPSERT)
                .bind(&station.code)
                .bind(&station.name)
                .bind(&station.source)
                .bind(station.latitude)
                .bind(station.longitude)
                .fetch_one(pool)
                .await
                .map_err(sql(what)),
        }
    }

    /// Records the start of a load. Runs of the same load still marked running whose process is gone are marked
    /// failed first.
    pub async fn begin_run(&self, run: &NewRun) -> Result<RunHandle> {
        let what = "recording the start of a load";
        let interrupted = "interrupted: the load stopped without finishing (its process was killed or lost its \
                           database connection); a later run of the same load continues from what was stored";
        match &self.db {
            Database::Postgres(pool) => {
                let running: Vec<i64> =
                    sqlx::query_scalar("select id from load_runs where name = $1 and status = 'running'")
                        .bind(&run.name)
                        .fetch_all(pool)
                        .await
                        .map_err(sql(what))?;
                if !running.is_empty() {
                    let mut probe = pool.acquire().await.map_err(sql(what))?;
                    for id in running {
                        // The lock is free only if the run's process (and its connection) is gone.
                        let free: bool = sqlx::query_scalar("select pg_try_advisory_lock($1, $2)")
                            .bind(RUN_LOCK_KEY)
                            .bind(id as i32)
                            .fetch_one(&mut *probe)
                            .await
                            .map_err(sql(what))?;
                        if free {
                            sqlx::query("select pg_advisory_unlock($1, $2)")
                                .bind(RUN_LOCK_KEY)
                                .bind(id as i32)
                                .execute(&mut *probe)
                                .await
                                .map_err(sql(what))?;
                            sqlx::query(
                                "update load_runs set status = 'failed', error = $1, finished_at = now()
                                 where id = $2 and status = 'running'",
                            )
                            .bind(interrupted)
                            .bind(id)
                            .execute(&mut *probe)
                            .await
                            .map_err(sql(what))?;
                        }
                    }
                }
                let id: i64 = sqlx::query_scalar(
                    "insert into load_runs (name, source, mode, spec, requested_by, range_from, range_to, status)
                     values ($1, $2, $3, $4, $5, $6, $7, 'running') returning id",
                )
                .bind(&run.name)
                .bind(&run.source)
                .bind(&run.mode)
                .bind(&run.spec)
                .bind(&run.requested_by)
                .bind(run.range_from)
                .bind(run.range_to)
                .fetch_one(pool)
                .await
                .map_err(sql(what))?;
                // A connection of the run's own, out of the pool, so that the lock lives exactly as long as the run.
                let mut lease = pool.acquire().await.map_err(sql(what))?.detach();
                sqlx::query("select pg_advisory_lock($1, $2)")
                    .bind(RUN_LOCK_KEY)
                    .bind(id as i32)
                    .execute(&mut lease)
                    .await
                    .map_err(sql(what))?;
                Ok(RunHandle {
                    id,
                    lease: Some(lease),
                    lock: None,
                })
            }
            Database::Sqlite(pool) => {
                let running: Vec<(i64, i64)> =
                    sqlx::query_as("select id, updated_at from load_runs where name = $1 and status = 'running'")
                        .bind(&run.name)
                        .fetch_all(pool)
                        .await
                        .map_err(sql(what))?;
                let stale_before = (Utc::now() - chrono::Duration::seconds(STALE_RUN_SECONDS)).timestamp();
                for (id, updated_at) in running {
                    let dead = match sqlite_run_lock(pool, id, false)? {
                        RunLock::Held(_) => false,
                        RunLock::Free => true,
                        RunLock::Unknown => updated_at < stale_before,
                    };
                    if dead {
                        sqlx::query(
                            "update load_runs set status = 'failed', error = $1, finished_at = unixepoch()
                             where id = $2 and status = 'running'",
                        )
                        .bind(interrupted)
                        .bind(id)
                        .execute(pool)
                        .await
                        .map_err(sql(what))?;
                    }
                }
                let id: i64 = sqlx::query_scalar(
                    "insert into load_runs (name, source, mode, spec, requested_by, range_from, range_to, status)
                     values ($1, $2, $3, $4, $5, $6, $7, 'running') returning id",
                )
                .bind(&run.name)
                .bind(&run.source)
                .bind(&run.mode)
                .bind(&run.spec)
                .bind(&run.requested_by)
                .bind(run.range_from.map(|t| t.timestamp()))
                .bind(run.range_to.map(|t| t.timestamp()))
                .fetch_one(pool)
                .await
                .map_err(sql(what))?;
                let lock = match sqlite_run_lock(pool, id, true)? {
                    RunLock::Held(file) => file,
                    RunLock::Free | RunLock::Unknown => None,
                };
                Ok(RunHandle { id, lease: None, lock })
            }
        }
    }

    /// Writes a batch for run `run_id` in one transaction: measurements upserted (a value already stored is left
    /// alone), refused values recorded, the run's counters advanced.
    pub async fn write(&self, run_id: i64, batch: &Batch) -> Result<WriteCounts> {
        let (measurements, duplicates) = dedupe_measurements(&batch.measurements);
        let rejected = dedupe_rejections(&batch.rejected);
        // What the batch itself says; the upsert adds what the database did.
        let known = WriteCounts {
            unchanged: duplicates as i64,
            rejected: batch.rejected.len() as i64,
            flagged: measurements.iter().filter(|m| m.flags != 0).count() as i64,
            ..WriteCounts::default()
        };
        match &self.db {
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await.map_err(sql("starting a transaction"))?;
                let mut counts = postgres_upsert(&mut tx, &measurements).await?;
                counts += known;
                postgres_reject(&mut tx, run_id, &rejected).await?;
                advance_counters_pg(&mut tx, run_id, batch.values_read, &counts).await?;
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
                let mut counts = sqlite_upsert(&mut tx, &measurements).await?;
                counts += known;
                sqlite_reject(&mut tx, run_id, &rejected).await?;
                advance_counters_sqlite(&mut tx, run_id, batch.values_read, &counts).await?;
                tx.commit().await.map_err(sql("committing a batch"))?;
                Ok(counts)
            }
        }
    }

    /// Marks the run finished and releases its lock: succeeded with the quality marks its series' range carries
    /// now, or failed with why.
    pub async fn finish_run(&self, run: RunHandle, end: RunEnd<'_>) -> Result<()> {
        let run_id = run.id;
        let (status, error, (stuck, jump)) = match end {
            RunEnd::Succeeded { stuck, jump } => ("succeeded", None, (stuck, jump)),
            RunEnd::Failed(error) => ("failed", Some(error), (0, 0)),
        };
        let what = "recording the end of a load";
        let affected = match &self.db {
            Database::Postgres(pool) => sqlx::query(
                "update load_runs set status = $1, error = $2, rows_stuck = $4, rows_jump = $5, finished_at = now(),
                     updated_at = now()
                 where id = $3",
            )
            .bind(status)
            .bind(error)
            .bind(run_id)
            .bind(stuck)
            .bind(jump)
            .execute(pool)
            .await
            .map_err(sql(what))?
            .rows_affected(),
            Database::Sqlite(pool) => sqlx::query(
                "update load_runs set status = $1, error = $2, rows_stuck = $4, rows_jump = $5,
                     finished_at = unixepoch(), updated_at = unixepoch()
                 where id = $3",
            )
            .bind(status)
            .bind(error)
            .bind(run_id)
            .bind(stuck)
            .bind(jump)
            .execute(pool)
            .await
            .map_err(sql(what))?
            .rows_affected(),
        };
        if let (Some(lock), Database::Sqlite(pool)) = (run.lock, &self.db) {
            drop(lock);
            if let Some(folder) = sqlite_lock_folder(pool) {
                let _ = std::fs::remove_file(folder.join(format!("run-{run_id}.lock")));
            }
        }
        if let Some(lease) = run.lease {
            use sqlx::Connection;
            // Closing the connection releases the lock; a failure to close cleanly releases it too.
            let _ = lease.close().await;
        }
        if affected == 0 {
            return Err(Error::NoSuchRun(run_id));
        }
        Ok(())
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
            Database::Postgres(pool) => {
                let times: Vec<DateTime<Utc>> = marks.iter().map(|(t, _)| timestamp(*t)).collect();
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
                    .bind(time)
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

    /// One run.
    pub async fn run(&self, run_id: i64) -> Result<Option<LoadRun>> {
        Ok(self.runs_where(Some(run_id), None, 1).await?.into_iter().next())
    }

    /// The newest runs first, optionally of one load only.
    pub async fn runs(&self, name: Option<&str>, limit: i64) -> Result<Vec<LoadRun>> {
        self.runs_where(None, name, limit).await
    }

    async fn runs_where(&self, id: Option<i64>, name: Option<&str>, limit: i64) -> Result<Vec<LoadRun>> {
        const SELECT: &str = "select id, name, source, mode, spec, requested_by, range_from, range_to, status,
                rows_read, rows_inserted, rows_updated, rows_unchanged, rows_rejected, rows_flagged, error,
                started_at, updated_at, finished_at, rows_stuck, rows_jump
            from load_runs where ($1 is null or id = $1) and ($2 is null or name = $2)
            order by id desc limit $3";
        let what = "reading load runs";
        let common = |row: &dyn RowAccess| -> Result<LoadRun, sqlx::Error> {
            Ok(LoadRun {
                id: row.i64(0)?,
                name: row.string(1)?,
                source: row.string(2)?,
                mode: row.string(3)?,
                spec: serde_json::from_str(&row.string(4)?).unwrap_or(serde_json::Value::Null),
                requested_by: row.string(5)?,
                range_from: row.time_opt(6)?,
                range_to: row.time_opt(7)?,
                status: row.string(8)?,
                rows_read: row.i64(9)?,
                rows_inserted: row.i64(10)?,
                rows_updated: row.i64(11)?,
                rows_unchanged: row.i64(12)?,
                rows_rejected: row.i64(13)?,
                rows_flagged: row.i64(14)?,
                rows_stuck: row.i64(19)?,
                rows_jump: row.i64(20)?,
                error: row.string_opt(15)?,
                started_at: row.time(16)?,
                updated_at: row.time(17)?,
                finished_at: row.time_opt(18)?,
            })
        };
        match &self.db {
            Database::Postgres(pool) => {
                let rows = sqlx::query(SELECT)
                    .bind(id)
                    .bind(name)
                    .bind(limit)
                    .fetch_all(pool)
                    .await
                    .map_err(sql(what))?;
                rows.iter().map(|r| common(r).map_err(sql(what))).collect()
            }
            Database::Sqlite(pool) => {
                let rows = sqlx::query(SELECT)
                    .bind(id)
                    .bind(name)
                    .bind(limit)
                    .fetch_all(pool)
                    .await
                    .map_err(sql(what))?;
                rows.iter().map(|r| common(r).map_err(sql(what))).collect()
            }
        }
    }

    /// The values run `run_id` refused (at most `limit`), in source order.
    pub async fn rejected(&self, run_id: i64, limit: i64) -> Result<Vec<RejectedRow>> {
        const SELECT: &str = "select load_run_id, source, record, station, parameter, time, raw_value, reason
            from rejected_rows where load_run_id = $1 order by id limit $2";
        let what = "reading rejected values";
        let map = |row: &dyn RowAccess| -> Result<RejectedRow, sqlx::Error> {
            Ok(RejectedRow {
                load_run_id: row.i64(0)?,
                source: row.string(1)?,
                record: row.string(2)?,
                station: row.string_opt(3)?,
                parameter: row.string(4)?,
                time: row.time_opt(5)?,
                raw_value: row.string_opt(6)?,
                reason: row.string(7)?,
            })
        };
        match &self.db {
            Database::Postgres(pool) => sqlx::query(SELECT)
                .bind(run_id)
                .bind(limit)
                .fetch_all(pool)
                .await
                .map_err(sql(what))?
                .iter()
                .map(|r| map(r).map_err(sql(what)))
                .collect(),
            Database::Sqlite(pool) => sqlx::query(SELECT)
                .bind(run_id)
                .bind(limit)
                .fetch_all(pool)
                .await
                .map_err(sql(what))?
                .iter()
                .map(|r| map(r).map_err(sql(what)))
                .collect(),
        }
    }

    /// How far the load `name` has got.
    pub async fn watermark(&self, name: &str) -> Result<Option<DateTime<Utc>>> {
        let what = "reading a watermark";
        match &self.db {
            Database::Postgres(pool) => sqlx::query_scalar("select watermark from watermarks where name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await
                .map_err(sql(what)),
            Database::Sqlite(pool) => {
                let seconds: Option<i64> = sqlx::query_scalar("select watermark from watermarks where name = $1")
                    .bind(name)
                    .fetch_optional(pool)
                    .await
                    .map_err(sql(what))?;
                Ok(seconds.map(timestamp))
            }
        }
    }

    /// Moves the watermark of `name` to `to`, never backwards.
    pub async fn advance_watermark(&self, name: &str, to: DateTime<Utc>) -> Result<()> {
        let what = "advancing a watermark";
        match &self.db {
            Database::Postgres(pool) => sqlx::query(
                "insert into watermarks (name, watermark) values ($1, $2)
                 on conflict (name) do update set watermark = greatest(watermarks.watermark, excluded.watermark),
                     updated_at = now()",
            )
            .bind(name)
            .bind(to)
            .execute(pool)
            .await
            .map(drop)
            .map_err(sql(what)),
            Database::Sqlite(pool) => sqlx::query(
                "insert into watermarks (name, watermark) values ($1, $2)
                 on conflict (name) do update set watermark = max(watermarks.watermark, excluded.watermark),
                     updated_at = unixepoch()",
            )
            .bind(name)
            .bind(to.timestamp())
            .execute(pool)
            .await
            .map(drop)
            .map_err(sql(what)),
        }
    }

    /// Every station, by code.
    pub async fn stations(&self) -> Result<Vec<Station>> {
        const SELECT: &str = "select id, code, name, source, latitude, longitude from stations order by code";
        let what = "reading stations";
        type Row = (i64, String, String, String, Option<f64>, Option<f64>);
        let rows: Vec<Row> = match &self.db {
            Database::Postgres(pool) => sqlx::query_as(SELECT).fetch_all(pool).await.map_err(sql(what))?,
            Database::Sqlite(pool) => sqlx::query_as(SELECT).fetch_all(pool).await.map_err(sql(what))?,
        };
        Ok(rows
            .into_iter()
            .map(|(id, code, name, source, latitude, longitude)| Station {
                id,
                code,
                name,
                source,
                latitude,
                longitude,
            })
            .collect())
    }

    /// The values of one station's parameter from `from` (inclusive) to `to` (exclusive), Unix seconds, in time
    /// order.
    pub async fn series(&self, station_id: i64, parameter: Parameter, from: i64, to: i64) -> Result<Vec<Point>> {
        let what = "reading a series";
        // Open ends are given as huge values; PostgreSQL's timestamps stop at year 294276.
        let (from, to) = (from.clamp(TIME_MIN, TIME_MAX), to.clamp(TIME_MIN, TIME_MAX));
        let rows: Vec<(i64, f64, i64)> = match &self.db {
            Database::Postgres(pool) => sqlx::query_as(
                "select extract(epoch from time)::bigint, value, flags::bigint from measurements
                 where station_id = $1 and parameter = $2 and time >= to_timestamp($3) and time < to_timestamp($4)
                 order by time",
            )
            .bind(station_id)
            .bind(parameter.code())
            .bind(from as f64)
            .bind(to as f64)
            .fetch_all(pool)
            .await
            .map_err(sql(what))?,
            Database::Sqlite(pool) => sqlx::query_as(
                "select time, value, flags from measurements
                 where station_id = $1 and parameter = $2 and time >= $3 and time < $4 order by time",
            )
            .bind(station_id)
            .bind(parameter.code())
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await
            .map_err(sql(what))?,
        };
        Ok(rows
            .into_iter()
            .map(|(time, value, flags)| Point {
                time,
                value,
                flags: i16::try_from(flags).unwrap_or(i16::MAX),
            })
            .collect())
    }

    /// The newest hour (Unix seconds) with a value of `parameter` at station `station_id`.
    pub async fn latest(&self, station_id: i64, parameter: Parameter) -> Result<Option<i64>> {
        let what = "reading the newest value's time";
        Ok(match &self.db {
            Database::Postgres(pool) => sqlx::query_scalar::<_, Option<i64>>(
                "select extract(epoch from max(time))::bigint from measurements where station_id = $1 and parameter = $2",
            )
            .bind(station_id)
            .bind(parameter.code())
            .fetch_one(pool)
            .await
            .map_err(sql(what))?,
            Database::Sqlite(pool) => sqlx::query_scalar::<_, Option<i64>>(
                "select max(time) from measurements where station_id = $1 and parameter = $2",
            )
            .bind(station_id)
            .bind(parameter.code())
            .fetch_one(pool)
            .await
            .map_err(sql(what))?,
        })
    }

    /// Stored values per station and parameter.
    pub async fn series_counts(&self) -> Result<Vec<SeriesCount>> {
        const SELECT: &str = "select s.code, m.parameter, count(*) from measurements m
            join stations s on s.id = m.station_id group by s.code, m.parameter order by s.code, m.parameter";
        let what = "counting measurements";
        let rows: Vec<(String, String, i64)> = match &self.db {
            Database::Postgres(pool) => sqlx::query_as(SELECT).fetch_all(pool).await.map_err(sql(what))?,
            Database::Sqlite(pool) => sqlx::query_as(SELECT).fetch_all(pool).await.map_err(sql(what))?,
        };
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
        use sha2::{Digest, Sha256};
        const SELECT_PG: &str =
            "select s.code, m.parameter, extract(epoch from m.time)::bigint, m.value, m.flags::bigint
            from measurements m join stations s on s.id = m.station_id order by s.code, m.parameter, m.time";
        const SELECT_SQLITE: &str = "select s.code, m.parameter, m.time, m.value, m.flags
            from measurements m join stations s on s.id = m.station_id order by s.code, m.parameter, m.time";
        let what = "reading every measurement";
        let mut hasher = Sha256::new();
        let mut line = String::new();
        let mut feed = |(code, parameter, time, value, flags): (String, String, i64, f64, i64)| {
            line.clear();
            let _ = writeln!(line, "{code}\t{parameter}\t{time}\t{value}\t{flags}");
            hasher.update(line.as_bytes());
        };
        match &self.db {
            Database::Postgres(pool) => {
                use futures::TryStreamExt;
                let mut rows = sqlx::query_as(SELECT_PG).fetch(pool);
                while let Some(row) = rows.try_next().await.map_err(sql(what))? {
                    feed(row);
                }
            }
            Database::Sqlite(pool) => {
                use futures::TryStreamExt;
                let mut rows = sqlx::query_as(SELECT_SQLITE).fetch(pool);
                while let Some(row) = rows.try_next().await.map_err(sql(what))? {
                    feed(row);
                }
            }
        }
        Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// Reading a column the same way from a PostgreSQL and a SQLite row (times are `timestamptz` in one, Unix seconds
/// in the other).
trait RowAccess {
    fn i64(&self, i: usize) -> Result<i64, sqlx::Error>;
    fn string(&self, i: usize) -> Result<String, sqlx::Error>;
    fn string_opt(&self, i: usize) -> Result<Option<String>, sqlx::Error>;
    fn f64(&self, i: usize) -> Result<f64, sqlx::Error>;
    fn f64_opt(&self, i: usize) -> Result<Option<f64>, sqlx::Error>;
    fn time_opt(&self, i: usize) -> Result<Option<DateTime<Utc>>, sqlx::Error>;
    fn time(&self, i: usize) -> Result<DateTime<Utc>, sqlx::Error> {
        self.time_opt(i)?
            .ok_or_else(|| sqlx::Error::ColumnNotFound(format!("column {i} is null")))
    }
}

impl RowAccess for sqlx::postgres::PgRow {
    fn i64(&self, i: usize) -> Result<i64, sqlx::Error> {
        self.try_get(i)
    }
    fn string(&self, i: usize) -> Result<String, sqlx::Error> {
        self.try_get(i)
    }
    fn string_opt(&self, i: usize) -> Result<Option<String>, sqlx::Error> {
        self.try_get(i)
    }
    fn f64(&self, i: usize) -> Result<f64, sqlx::Error> {
        self.try_get(i)
    }
    fn f64_opt(&self, i: usize) -> Result<Option<f64>, sqlx::Error> {
        self.try_get(i)
    }
    fn time_opt(&self, i: usize) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        self.try_get(i)
    }
}

impl RowAccess for sqlx::sqlite::SqliteRow {
    fn i64(&self, i: usize) -> Result<i64, sqlx::Error> {
        self.try_get(i)
    }
    fn string(&self, i: usize) -> Result<String, sqlx::Error> {
        self.try_get(i)
    }
    fn string_opt(&self, i: usize) -> Result<Option<String>, sqlx::Error> {
        self.try_get(i)
    }
    fn f64(&self, i: usize) -> Result<f64, sqlx::Error> {
        self.try_get(i)
    }
    fn f64_opt(&self, i: usize) -> Result<Option<f64>, sqlx::Error> {
        self.try_get(i)
    }
    fn time_opt(&self, i: usize) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        Ok(self.try_get::<Option<i64>, _>(i)?.map(timestamp))
    }
}

/// PostgreSQL: COPY the batch into a temporary table, then one `insert … select … on conflict` that reports, per
/// row, whether it was inserted (`xmax = 0`) or updated; rows whose value is already stored are not touched.
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
             returning (xmax = 0) as inserted
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

async fn advance_counters_pg(conn: &mut PgConnection, run_id: i64, read: i64, c: &WriteCounts) -> Result<()> {
    let done = sqlx::query(
        "update load_runs set rows_read = rows_read + $2, rows_inserted = rows_inserted + $3,
             rows_updated = rows_updated + $4, rows_unchanged = rows_unchanged + $5,
             rows_rejected = rows_rejected + $6, rows_flagged = rows_flagged + $7, updated_at = now()
         where id = $1",
    )
    .bind(run_id)
    .bind(read)
    .bind(c.inserted)
    .bind(c.updated)
    .bind(c.unchanged)
    .bind(c.rejected)
    .bind(c.flagged)
    .execute(&mut *conn)
    .await
    .map_err(sql("counting a batch"))?;
    if done.rows_affected() == 0 {
        return Err(Error::NoSuchRun(run_id));
    }
    Ok(())
}

/// Rows per multi-row statement on SQLite (5 values each, under SQLite's 32,766 bound parameters).
const SQLITE_ROWS_PER_STATEMENT: usize = 2000;

/// SQLite: multi-row upserts in the batch's transaction. SQLite cannot say whether an upserted row was inserted or
/// updated, so the rows of each touched series are counted before and after: the difference was inserted, the
/// rest of the changed rows were updated.
async fn sqlite_upsert(conn: &mut SqliteConnection, measurements: &[Measurement]) -> Result<WriteCounts> {
    if measurements.is_empty() {
        return Ok(WriteCounts::default());
    }
    let mut ranges: BTreeMap<(i64, &'static str), (i64, i64)> = BTreeMap::new();
    for m in measurements {
        let range = ranges
            .entry((m.station_id, m.parameter.code()))
            .or_insert((m.time, m.time));
        range.0 = range.0.min(m.time);
        range.1 = range.1.max(m.time);
    }
    let before = sqlite_count(conn, &ranges).await?;
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
    let after = sqlite_count(conn, &ranges).await?;
    let inserted = after - before;
    let updated = changed - inserted;
    Ok(WriteCounts {
        inserted,
        updated,
        unchanged: measurements.len() as i64 - changed,
        ..WriteCounts::default()
    })
}

async fn sqlite_count(conn: &mut SqliteConnection, ranges: &BTreeMap<(i64, &'static str), (i64, i64)>) -> Result<i64> {
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

async fn advance_counters_sqlite(conn: &mut SqliteConnection, run_id: i64, read: i64, c: &WriteCounts) -> Result<()> {
    let done = sqlx::query(
        "update load_runs set rows_read = rows_read + $2, rows_inserted = rows_inserted + $3,
             rows_updated = rows_updated + $4, rows_unchanged = rows_unchanged + $5,
             rows_rejected = rows_rejected + $6, rows_flagged = rows_flagged + $7, updated_at = unixepoch()
         where id = $1",
    )
    .bind(run_id)
    .bind(read)
    .bind(c.inserted)
    .bind(c.updated)
    .bind(c.unchanged)
    .bind(c.rejected)
    .bind(c.flagged)
    .execute(&mut *conn)
    .await
    .map_err(sql("counting a batch"))?;
    if done.rows_affected() == 0 {
        return Err(Error::NoSuchRun(run_id));
    }
    Ok(())
}

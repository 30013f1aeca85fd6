//! Load runs, their locks and watermarks, and the values they refused.

use chrono::{DateTime, Utc};

use super::{Error, LoadRun, NewRun, RejectedRow, Result, Store, sql};
use crate::db::{Database, DbTime};
use crate::on_pool;

/// Runs without a lock to probe (on an in-memory SQLite database) that have not written for this long while
/// `running` are taken for dead (their process was killed) when a new run of the same load starts. On PostgreSQL a
/// run holds an advisory lock for its lifetime, and on a SQLite file a lock on a file beside it, so a dead run is
/// recognised at once.
pub const STALE_RUN_SECONDS: i64 = 300;

/// First key of the advisory locks runs hold on PostgreSQL ("AIRQ"); the second is the run id.
const RUN_LOCK_KEY: i32 = 0x4149_5251;

/// Why a run whose process is gone is marked failed.
const INTERRUPTED: &str = "interrupted: the load stopped without finishing (its process was killed or lost its \
                           database connection); a later run of the same load continues from what was stored";

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd<'a> {
    /// Every value written; the values of its series' range marked stuck and as jumps (`FLAG_STUCK`, `FLAG_JUMP`).
    Succeeded { stuck: i64, jump: i64 },
    /// Why it failed.
    Failed(&'a str),
}

/// A started run. On PostgreSQL it keeps a connection of its own holding the run's advisory lock, on SQLite the
/// run's lock file; either is released when the run finishes or its process dies.
#[derive(Debug)]
pub struct RunHandle {
    pub id: i64,
    lease: Option<sqlx::PgConnection>,
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

/// A load run as stored.
#[derive(sqlx::FromRow)]
struct RunRow {
    id: i64,
    name: String,
    source: String,
    mode: String,
    spec: String,
    requested_by: String,
    range_from: Option<DbTime>,
    range_to: Option<DbTime>,
    status: String,
    rows_read: i64,
    rows_inserted: i64,
    rows_updated: i64,
    rows_unchanged: i64,
    rows_rejected: i64,
    rows_flagged: i64,
    rows_stuck: i64,
    rows_jump: i64,
    error: Option<String>,
    started_at: DbTime,
    updated_at: DbTime,
    finished_at: Option<DbTime>,
}

impl From<RunRow> for LoadRun {
    fn from(r: RunRow) -> Self {
        let time = |t: Option<DbTime>| t.map(|t| t.0);
        Self {
            id: r.id,
            name: r.name,
            source: r.source,
            mode: r.mode,
            spec: serde_json::from_str(&r.spec).unwrap_or(serde_json::Value::Null),
            requested_by: r.requested_by,
            range_from: time(r.range_from),
            range_to: time(r.range_to),
            status: r.status,
            rows_read: r.rows_read,
            rows_inserted: r.rows_inserted,
            rows_updated: r.rows_updated,
            rows_unchanged: r.rows_unchanged,
            rows_rejected: r.rows_rejected,
            rows_flagged: r.rows_flagged,
            rows_stuck: r.rows_stuck,
            rows_jump: r.rows_jump,
            error: r.error,
            started_at: r.started_at.0,
            updated_at: r.updated_at.0,
            finished_at: time(r.finished_at),
        }
    }
}

/// A refused value as stored.
#[derive(sqlx::FromRow)]
struct RejectedRecord {
    load_run_id: i64,
    source: String,
    record: String,
    station: Option<String>,
    parameter: String,
    time: Option<DbTime>,
    raw_value: Option<String>,
    reason: String,
}

impl Store {
    /// Records the start of a load. Runs of the same load still marked running whose process is gone (its lock is
    /// free) are marked failed as interrupted first.
    pub async fn begin_run(&self, run: &NewRun) -> Result<RunHandle> {
        let what = "recording the start of a load";
        let running: Vec<(i64, DbTime)> = on_pool!(&self.db, pool => sqlx::query_as(
            "select id, updated_at from load_runs where name = $1 and status = 'running'",
        )
        .bind(&run.name)
        .fetch_all(pool)
        .await)
        .map_err(sql(what))?;
        let stale_before = DbTime::now().seconds() - STALE_RUN_SECONDS;
        for (id, updated_at) in running {
            let dead = match &self.db {
                Database::Postgres(pool) => {
                    // The lock is free only if the run's process (and its connection) is gone.
                    let mut probe = pool.acquire().await.map_err(sql(what))?;
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
                    }
                    free
                }
                Database::Sqlite(pool) => match sqlite_run_lock(pool, id, false)? {
                    RunLock::Held(_) => false,
                    RunLock::Free => true,
                    RunLock::Unknown => updated_at.seconds() < stale_before,
                },
            };
            if dead {
                on_pool!(&self.db, pool => sqlx::query(
                    "update load_runs set status = 'failed', error = $1, finished_at = $2
                     where id = $3 and status = 'running'",
                )
                .bind(INTERRUPTED)
                .bind(DbTime::now())
                .bind(id)
                .execute(pool)
                .await
                .map(|done| done.rows_affected()))
                .map_err(sql(what))?;
            }
        }
        let now = DbTime::now();
        let id: i64 = on_pool!(&self.db, pool => sqlx::query_scalar(
            "insert into load_runs (name, source, mode, spec, requested_by, range_from, range_to, status,
                 started_at, updated_at)
             values ($1, $2, $3, $4, $5, $6, $7, 'running', $8, $8) returning id",
        )
        .bind(&run.name)
        .bind(&run.source)
        .bind(&run.mode)
        .bind(&run.spec)
        .bind(&run.requested_by)
        .bind(run.range_from.map(DbTime))
        .bind(run.range_to.map(DbTime))
        .bind(now)
        .fetch_one(pool)
        .await)
        .map_err(sql(what))?;
        match &self.db {
            Database::Postgres(pool) => {
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
                let lock = match sqlite_run_lock(pool, id, true)? {
                    RunLock::Held(file) => file,
                    RunLock::Free | RunLock::Unknown => None,
                };
                Ok(RunHandle { id, lease: None, lock })
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
        let affected = on_pool!(&self.db, pool => sqlx::query(
            "update load_runs set status = $1, error = $2, rows_stuck = $4, rows_jump = $5, finished_at = $6,
                 updated_at = $6
             where id = $3",
        )
        .bind(status)
        .bind(error)
        .bind(run_id)
        .bind(stuck)
        .bind(jump)
        .bind(DbTime::now())
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))
        .map_err(sql("recording the end of a load"))?;
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
        let rows: Vec<RunRow> = on_pool!(&self.db, pool => sqlx::query_as(SELECT)
            .bind(id)
            .bind(name)
            .bind(limit)
            .fetch_all(pool)
            .await)
        .map_err(sql("reading load runs"))?;
        Ok(rows.into_iter().map(LoadRun::from).collect())
    }

    /// The values run `run_id` refused (at most `limit`), in source order.
    pub async fn rejected(&self, run_id: i64, limit: i64) -> Result<Vec<RejectedRow>> {
        const SELECT: &str = "select load_run_id, source, record, station, parameter, time, raw_value, reason
            from rejected_rows where load_run_id = $1 order by id limit $2";
        let rows: Vec<RejectedRecord> = on_pool!(&self.db, pool => sqlx::query_as(SELECT)
            .bind(run_id)
            .bind(limit)
            .fetch_all(pool)
            .await)
        .map_err(sql("reading rejected values"))?;
        Ok(rows
            .into_iter()
            .map(|r| RejectedRow {
                load_run_id: r.load_run_id,
                source: r.source,
                record: r.record,
                station: r.station,
                parameter: r.parameter,
                time: r.time.map(|t| t.0),
                raw_value: r.raw_value,
                reason: r.reason,
            })
            .collect())
    }

    /// How far the load `name` has got.
    pub async fn watermark(&self, name: &str) -> Result<Option<DateTime<Utc>>> {
        let found: Option<DbTime> = on_pool!(&self.db, pool => sqlx::query_scalar(
            "select watermark from watermarks where name = $1",
        )
        .bind(name)
        .fetch_optional(pool)
        .await)
        .map_err(sql("reading a watermark"))?;
        Ok(found.map(|t| t.0))
    }

    /// Moves the watermark of `name` to `to`, never backwards.
    pub async fn advance_watermark(&self, name: &str, to: DateTime<Utc>) -> Result<()> {
        let upsert = crate::db::dialect(
            &self.db,
            "insert into watermarks (name, watermark, updated_at) values ($1, $2, $3)
             on conflict (name) do update set watermark = greatest(watermarks.watermark, excluded.watermark),
                 updated_at = excluded.updated_at",
            "insert into watermarks (name, watermark, updated_at) values ($1, $2, $3)
             on conflict (name) do update set watermark = max(watermarks.watermark, excluded.watermark),
                 updated_at = excluded.updated_at",
        );
        on_pool!(&self.db, pool => sqlx::query(upsert)
            .bind(name)
            .bind(DbTime(to))
            .bind(DbTime::now())
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))
        .map(drop)
        .map_err(sql("advancing a watermark"))
    }
}

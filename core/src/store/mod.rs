//! The measurement store: stations, measurements, load runs, watermarks, rejected values and anomalies, on
//! PostgreSQL or SQLite behind one interface. Split by subject; each query is written once for both databases
//! ([`on_pool!`](crate::on_pool), times bound and read as [`DbTime`]) except where the dialects truly differ
//! (`COPY`, `greatest`/`max`, array parameters). Every write of a batch is one transaction, and measurements are
//! upserted on (station, parameter, time), so re-running a load never duplicates and a load killed between batches
//! leaves only whole batches behind.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::db::{Database, DbTime};

mod anomalies;
mod measurements;
mod runs;
mod stations;

pub use anomalies::{AnomalyReport, StoredAnomaly};
pub use runs::{RunEnd, RunHandle, STALE_RUN_SECONDS};

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
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
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

/// The measurement store over one database.
#[derive(Debug, Clone)]
pub struct Store {
    db: Database,
}

impl Store {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }
}

fn timestamp(seconds: i64) -> DateTime<Utc> {
    DbTime::from_seconds(seconds).0
}

//! The database: PostgreSQL in a cluster, embedded SQLite when the whole platform runs on one machine. One pool
//! set-up and one migration entry point for both; each dialect keeps its own migration folder.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{ConnectOptions, PgPool, SqlitePool};

use crate::config::DatabaseArgs;
use crate::http::{ReadinessCheck, readiness_check};

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");

/// What can go wrong when connecting to or preparing the database.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database URL {url} is not understood: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot connect to the database at {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("migrating the database at {url} failed: {source}")]
    Migrate {
        url: String,
        source: sqlx::migrate::MigrateError,
    },
    #[error("the database does not answer: {0}")]
    Ping(#[source] sqlx::Error),
}

/// A pool of connections to one of the supported databases.
#[derive(Debug, Clone)]
pub enum Database {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Database {
    /// Connects to the database `args.url` names and, when `args.migrate` is set, brings its schema up to date.
    pub async fn connect(args: &DatabaseArgs) -> Result<Self, Error> {
        let db = Self::open(
            &args.url,
            args.max_connections,
            Duration::from_secs(args.connect_timeout_secs),
        )
        .await?;
        if args.migrate {
            db.migrate().await?;
        }
        Ok(db)
    }

    /// Connects to `url` (`postgres://…` or `sqlite://…`) without migrating.
    pub async fn connect_url(url: &str, max_connections: u32) -> Result<Self, Error> {
        Self::open(url, max_connections, Duration::from_secs(10)).await
    }

    async fn open(url: &str, max_connections: u32, connect_timeout: Duration) -> Result<Self, Error> {
        // A load's batches and a training's reads take seconds by design: a statement over a second is worth a
        // line when looking closely (debug), not a warning in every normal run.
        const SLOW_STATEMENT: Duration = Duration::from_secs(1);
        const SLOW_STATEMENT_LEVEL: tracing::log::LevelFilter = tracing::log::LevelFilter::Debug;
        let shown = redact_url(url);
        let invalid = |reason: String| Error::InvalidUrl {
            url: shown.clone(),
            reason,
        };
        let connect = |source| Error::Connect {
            url: shown.clone(),
            source,
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url)
                .map_err(|e| invalid(e.to_string()))?
                .log_slow_statements(SLOW_STATEMENT_LEVEL, SLOW_STATEMENT)
                // PostgreSQL's notices ("relation … already exists, skipping") are not worth a log line each.
                .options([("client_min_messages", "warning")]);
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(connect_timeout)
                .connect_with(options)
                .await
                .map_err(connect)?;
            Ok(Self::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| invalid(e.to_string()))?
                .create_if_missing(true)
                // WAL lets the dashboard read while a load writes.
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                .log_slow_statements(SLOW_STATEMENT_LEVEL, SLOW_STATEMENT);
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(connect_timeout)
                .connect_with(options)
                .await
                .map_err(connect)?;
            Ok(Self::Sqlite(pool))
        } else {
            Err(invalid(
                "expected a URL starting with postgres:// or sqlite:".to_owned(),
            ))
        }
    }

    /// Applies the migrations of this database's dialect that have not run yet.
    pub async fn migrate(&self) -> Result<(), Error> {
        let result = match self {
            Self::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await,
            Self::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await,
        };
        result.map_err(|source| Error::Migrate {
            url: self.describe(),
            source,
        })
    }

    /// Checks that the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), Error> {
        let result = match self {
            Self::Postgres(pool) => sqlx::query("select 1").execute(pool).await.map(drop),
            Self::Sqlite(pool) => sqlx::query("select 1").execute(pool).await.map(drop),
        };
        result.map_err(Error::Ping)
    }

    /// A `/readyz` check that passes while the database answers.
    pub fn readiness_check(&self) -> ReadinessCheck {
        let db = self.clone();
        readiness_check(move || {
            let db = db.clone();
            async move { db.ping().await.map_err(|e| e.to_string()) }
        })
    }

    /// The dialect, for logs and errors.
    pub fn describe(&self) -> String {
        match self {
            Self::Postgres(_) => "postgres".to_owned(),
            Self::Sqlite(_) => "sqlite".to_owned(),
        }
    }

    /// Closes every connection of the pool.
    pub async fn close(&self) {
        match self {
            Self::Postgres(pool) => pool.close().await,
            Self::Sqlite(pool) => pool.close().await,
        }
    }
}

/// Runs `$body` with `$pool` bound to the PostgreSQL or the SQLite pool of `$db` (a [`Database`]): one query text
/// and one chain of binds serve both dialects where they agree.
#[macro_export]
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Database::Postgres($pool) => $body,
            $crate::db::Database::Sqlite($pool) => $body,
        }
    };
}

/// The text of the statement for `db`'s dialect, where the two truly differ (`greatest` and `max`, casts, `COPY`).
pub fn dialect<'a>(db: &Database, postgres: &'a str, sqlite: &'a str) -> &'a str {
    match db {
        Database::Postgres(_) => postgres,
        Database::Sqlite(_) => sqlite,
    }
}

/// An instant as each database keeps it — `timestamptz` on PostgreSQL, Unix seconds (`integer`) on SQLite — bound
/// and read the same way in Rust, so that one query serves both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DbTime(pub DateTime<Utc>);

impl DbTime {
    pub fn now() -> Self {
        Self(Utc::now())
    }

    /// Unix seconds, clamped to the years 0 to 9999 (open ends are often given as `i64::MIN`/`MAX`; PostgreSQL's
    /// timestamps stop at year 294276).
    pub fn from_seconds(seconds: i64) -> Self {
        let clamped = seconds.clamp(-62_167_219_200, 253_402_300_799);
        Self(DateTime::from_timestamp(clamped, 0).unwrap_or_default())
    }

    pub fn seconds(self) -> i64 {
        self.0.timestamp()
    }
}

impl From<DateTime<Utc>> for DbTime {
    fn from(time: DateTime<Utc>) -> Self {
        Self(time)
    }
}

impl sqlx::Type<sqlx::Postgres> for DbTime {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <DateTime<Utc> as sqlx::Type<sqlx::Postgres>>::type_info()
    }
    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <DateTime<Utc> as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl sqlx::postgres::PgHasArrayType for DbTime {
    fn array_type_info() -> sqlx::postgres::PgTypeInfo {
        <DateTime<Utc> as sqlx::postgres::PgHasArrayType>::array_type_info()
    }
}

impl<'q> sqlx::Encode<'q, sqlx::Postgres> for DbTime {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <DateTime<Utc> as sqlx::Encode<'q, sqlx::Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for DbTime {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        Ok(Self(<DateTime<Utc> as sqlx::Decode<'r, sqlx::Postgres>>::decode(
            value,
        )?))
    }
}

impl sqlx::Type<sqlx::Sqlite> for DbTime {
    fn type_info() -> sqlx::sqlite::SqliteTypeInfo {
        <i64 as sqlx::Type<sqlx::Sqlite>>::type_info()
    }
    fn compatible(ty: &sqlx::sqlite::SqliteTypeInfo) -> bool {
        <i64 as sqlx::Type<sqlx::Sqlite>>::compatible(ty)
    }
}

impl<'q> sqlx::Encode<'q, sqlx::Sqlite> for DbTime {
    fn encode_by_ref(
        &self,
        buf: &mut Vec<sqlx::sqlite::SqliteArgumentValue<'q>>,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <i64 as sqlx::Encode<'q, sqlx::Sqlite>>::encode_by_ref(&self.0.timestamp(), buf)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Sqlite> for DbTime {
    fn decode(value: sqlx::sqlite::SqliteValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let seconds = <i64 as sqlx::Decode<'r, sqlx::Sqlite>>::decode(value)?;
        DateTime::from_timestamp(seconds, 0)
            .map(Self)
            .ok_or_else(|| format!("{seconds} is not a time in Unix seconds").into())
    }
}

/// `url` with its password replaced by `***`, so it can be logged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_only_the_password() {
        assert_eq!(
            redact_url("postgres://airq:s3cr%40t@db:5432/airq?sslmode=require"),
            "postgres://airq:***@db:5432/airq?sslmode=require"
        );
        assert_eq!(redact_url("postgres://airq@db/airq"), "postgres://airq@db/airq");
        assert_eq!(
            redact_url("sqlite:///var/lib/airq/airq.db"),
            "sqlite:///var/lib/airq/airq.db"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[tokio::test]
    async fn sqlite_database_migrates_and_answers() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("airq.db").display());
        let db = Database::connect_url(&url, 2).await?;
        db.migrate().await?;
        // A second run finds nothing to do.
        db.migrate().await?;
        db.ping().await?;
        let Database::Sqlite(pool) = &db else {
            return Err("expected SQLite".into());
        };
        let units: Vec<(String,)> = sqlx::query_as("select code from units order by code")
            .fetch_all(pool)
            .await?;
        assert!(units.iter().any(|(code,)| code == "ug/m3"), "units: {units:?}");
        db.close().await;
        Ok(())
    }

    #[tokio::test]
    async fn unknown_scheme_is_rejected_with_the_url() {
        let err = Database::connect_url("mysql://u:p@h/db", 1).await.err();
        let message = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("mysql://u:***@h/db"), "{message}");
        assert!(message.contains("postgres://"), "{message}");
    }
}

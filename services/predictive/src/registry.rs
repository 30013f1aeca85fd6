//! Model versions, specs and evaluations in the database (PostgreSQL or SQLite).

use airq_core::db::Database;
use serde::Serialize;

use crate::model::{Model, ModelError};
use crate::spec::ModelSpec;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{what}: {source}")]
    Sql {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("stored JSON cannot be read: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Model(#[from] ModelError),
}

type Result<T> = std::result::Result<T, RegistryError>;

fn sql(what: &'static str) -> impl FnOnce(sqlx::Error) -> RegistryError {
    move |source| RegistryError::Sql { what, source }
}

/// A stored model version, without its artifact.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredVersion {
    pub name: String,
    /// `v1`, `v2`…
    pub version: String,
    pub algorithm: String,
    pub pollutant: String,
    pub spec: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    pub metrics: serde_json::Value,
    pub artifact_bytes: i64,
    pub train_seconds: f64,
    /// Unix seconds.
    pub created_at: i64,
}

/// A stored evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredEvaluation {
    pub id: i64,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub protocol: serde_json::Value,
    pub metrics: serde_json::Value,
    pub created_at: i64,
}

/// The version number of `v3` or `3`.
pub fn parse_version(text: &str) -> Option<i64> {
    text.trim().trim_start_matches('v').parse().ok().filter(|v| *v > 0)
}

type VersionRow = (
    String,
    i64,
    String,
    String,
    String,
    Option<String>,
    String,
    i64,
    f64,
    i64,
);

fn version_from(row: VersionRow) -> Result<StoredVersion> {
    let (name, version, algorithm, pollutant, spec, revision, metrics, artifact_bytes, train_seconds, created_at) = row;
    Ok(StoredVersion {
        name,
        version: format!("v{version}"),
        algorithm,
        pollutant,
        spec: serde_json::from_str(&spec)?,
        revision,
        metrics: serde_json::from_str(&metrics)?,
        artifact_bytes,
        train_seconds,
        created_at,
    })
}

const PG_VERSION_COLUMNS: &str = "name, version::bigint, algorithm, pollutant, spec::text, revision, metrics::text, \
    length(artifact)::bigint, train_seconds, extract(epoch from created_at)::bigint";
const SQLITE_VERSION_COLUMNS: &str =
    "name, version, algorithm, pollutant, spec, revision, metrics, length(artifact), train_seconds, created_at";

/// Model versions, specs and evaluations.
#[derive(Debug, Clone)]
pub struct Registry {
    db: Database,
}

impl Registry {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Stores `model` as the next version of `name`.
    pub async fn save(
        &self,
        name: &str,
        model: &Model,
        revision: Option<&str>,
        metrics: &serde_json::Value,
        train_seconds: f64,
    ) -> Result<StoredVersion> {
        let artifact = model.to_bytes()?;
        let spec = serde_json::to_string(&model.meta.spec)?;
        let metrics = metrics.to_string();
        let algorithm = model.meta.spec.algorithm.name();
        let pollutant = model.meta.spec.target.pollutant.clone();
        let what = "storing a model version";
        // The next number is read and written in one statement; the unique key turns a race into an error that a
        // second attempt resolves.
        for attempt in 0..3 {
            let result = match &self.db {
                Database::Postgres(pool) => sqlx::query_scalar::<_, i64>(
                    "insert into model_versions (name, version, algorithm, pollutant, spec, revision, metrics, artifact, train_seconds)
                     select $1, coalesce(max(version), 0) + 1, $2, $3, $4::jsonb, $5, $6::jsonb, $7, $8
                     from model_versions where name = $1 returning version::bigint",
                )
                .bind(name)
                .bind(algorithm)
                .bind(&pollutant)
                .bind(&spec)
                .bind(revision)
                .bind(&metrics)
                .bind(&artifact)
                .bind(train_seconds)
                .fetch_one(pool)
                .await,
                Database::Sqlite(pool) => sqlx::query_scalar::<_, i64>(
                    "insert into model_versions (name, version, algorithm, pollutant, spec, revision, metrics, artifact, train_seconds)
                     select $1, coalesce(max(version), 0) + 1, $2, $3, $4, $5, $6, $7, $8
                     from model_versions where name = $1 returning version",
                )
                .bind(name)
                .bind(algorithm)
                .bind(&pollutant)
                .bind(&spec)
                .bind(revision)
                .bind(&metrics)
                .bind(&artifact)
                .bind(train_seconds)
                .fetch_one(pool)
                .await,
            };
            match result {
                Ok(version) => {
                    return self
                        .version(name, version)
                        .await?
                        .ok_or_else(|| sql(what)(sqlx::Error::RowNotFound));
                }
                Err(e) if attempt < 2 && is_unique_violation(&e) => continue,
                Err(e) => return Err(sql(what)(e)),
            }
        }
        Err(sql(what)(sqlx::Error::RowNotFound))
    }

    /// One version's description.
    pub async fn version(&self, name: &str, version: i64) -> Result<Option<StoredVersion>> {
        let what = "reading a model version";
        let row: Option<VersionRow> = match &self.db {
            Database::Postgres(pool) => sqlx::query_as(&format!(
                "select {PG_VERSION_COLUMNS} from model_versions where name = $1 and version = $2"
            ))
            .bind(name)
            .bind(version as i32)
            .fetch_optional(pool)
            .await
            .map_err(sql(what))?,
            Database::Sqlite(pool) => sqlx::query_as(&format!(
                "select {SQLITE_VERSION_COLUMNS} from model_versions where name = $1 and version = $2"
            ))
            .bind(name)
            .bind(version)
            .fetch_optional(pool)
            .await
            .map_err(sql(what))?,
        };
        row.map(version_from).transpose()
    }

    /// Versions, newest first; of one model when `name` is given.
    pub async fn versions(&self, name: Option<&str>) -> Result<Vec<StoredVersion>> {
        let what = "listing model versions";
        let rows: Vec<VersionRow> = match &self.db {
            Database::Postgres(pool) => sqlx::query_as(&format!(
                "select {PG_VERSION_COLUMNS} from model_versions where $1::text is null or name = $1 order by name, version desc"
            ))
            .bind(name)
            .fetch_all(pool)
            .await
            .map_err(sql(what))?,
            Database::Sqlite(pool) => sqlx::query_as(&format!(
                "select {SQLITE_VERSION_COLUMNS} from model_versions where $1 is null or name = $1 order by name, version desc"
            ))
            .bind(name)
            .fetch_all(pool)
            .await
            .map_err(sql(what))?,
        };
        rows.into_iter().map(version_from).collect()
    }

    /// The newest version number of `name`, if it has one.
    pub async fn latest_version(&self, name: &str) -> Result<Option<i64>> {
        let what = "reading the newest model version";
        Ok(match &self.db {
            Database::Postgres(pool) => {
                sqlx::query_scalar::<_, Option<i64>>("select max(version)::bigint from model_versions where name = $1")
                    .bind(name)
                    .fetch_one(pool)
                    .await
                    .map_err(sql(what))?
            }
            Database::Sqlite(pool) => {
                sqlx::query_scalar::<_, Option<i64>>("select max(version) from model_versions where name = $1")
                    .bind(name)
                    .fetch_one(pool)
                    .await
                    .map_err(sql(what))?
            }
        })
    }

    /// Loads a version (the newest when `version` is absent) with its model.
    pub async fn load(&self, name: &str, version: Option<i64>) -> Result<Option<(StoredVersion, Model)>> {
        let what = "loading a model";
        let number = match version {
            Some(v) => Some(v),
            None => self.latest_version(name).await?,
        };
        let Some(number) = number else {
            return Ok(None);
        };
        let artifact: Option<Vec<u8>> = match &self.db {
            Database::Postgres(pool) => {
                sqlx::query_scalar("select artifact from model_versions where name = $1 and version = $2")
                    .bind(name)
                    .bind(number as i32)
                    .fetch_optional(pool)
                    .await
                    .map_err(sql(what))?
            }
            Database::Sqlite(pool) => {
                sqlx::query_scalar("select artifact from model_versions where name = $1 and version = $2")
                    .bind(name)
                    .bind(number)
                    .fetch_optional(pool)
                    .await
                    .map_err(sql(what))?
            }
        };
        let (Some(artifact), Some(stored)) = (artifact, self.version(name, number).await?) else {
            return Ok(None);
        };
        let model = tokio::task::spawn_blocking(move || Model::from_bytes(&artifact))
            .await
            .map_err(|e| ModelError::Artifact(e.to_string()))??;
        Ok(Some((stored, model)))
    }

    /// Sets the spec `name` trains with through the API.
    pub async fn set_spec(&self, name: &str, spec: &ModelSpec) -> Result<()> {
        let text = serde_json::to_string(spec)?;
        let what = "storing a model spec";
        match &self.db {
            Database::Postgres(pool) => sqlx::query(
                "insert into model_specs (name, spec) values ($1, $2::jsonb)
                 on conflict (name) do update set spec = excluded.spec, updated_at = now()",
            )
            .bind(name)
            .bind(&text)
            .execute(pool)
            .await
            .map(drop)
            .map_err(sql(what))?,
            Database::Sqlite(pool) => sqlx::query(
                "insert into model_specs (name, spec) values ($1, $2)
                 on conflict (name) do update set spec = excluded.spec, updated_at = unixepoch()",
            )
            .bind(name)
            .bind(&text)
            .execute(pool)
            .await
            .map(drop)
            .map_err(sql(what))?,
        };
        Ok(())
    }

    /// The spec `name` trains with through the API.
    pub async fn spec(&self, name: &str) -> Result<Option<serde_json::Value>> {
        let what = "reading a model spec";
        let text: Option<String> = match &self.db {
            Database::Postgres(pool) => sqlx::query_scalar("select spec::text from model_specs where name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await
                .map_err(sql(what))?,
            Database::Sqlite(pool) => sqlx::query_scalar("select spec from model_specs where name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await
                .map_err(sql(what))?,
        };
        Ok(text.map(|t| serde_json::from_str(&t)).transpose()?)
    }

    /// Every model name with a spec or a version.
    pub async fn names(&self) -> Result<Vec<String>> {
        const SELECT: &str = "select name from model_specs union select name from model_versions order by name";
        let what = "listing models";
        Ok(match &self.db {
            Database::Postgres(pool) => sqlx::query_scalar(SELECT).fetch_all(pool).await.map_err(sql(what))?,
            Database::Sqlite(pool) => sqlx::query_scalar(SELECT).fetch_all(pool).await.map_err(sql(what))?,
        })
    }

    /// Stores an evaluation.
    pub async fn save_evaluation(
        &self,
        name: &str,
        version: Option<i64>,
        protocol: &serde_json::Value,
        metrics: &serde_json::Value,
    ) -> Result<i64> {
        let what = "storing an evaluation";
        Ok(match &self.db {
            Database::Postgres(pool) => sqlx::query_scalar::<_, i64>(
                "insert into model_evaluations (name, version, protocol, metrics) values ($1, $2, $3::jsonb, $4::jsonb) returning id",
            )
            .bind(name)
            .bind(version.map(|v| v as i32))
            .bind(protocol.to_string())
            .bind(metrics.to_string())
            .fetch_one(pool)
            .await
            .map_err(sql(what))?,
            Database::Sqlite(pool) => sqlx::query_scalar::<_, i64>(
                "insert into model_evaluations (name, version, protocol, metrics) values ($1, $2, $3, $4) returning id",
            )
            .bind(name)
            .bind(version)
            .bind(protocol.to_string())
            .bind(metrics.to_string())
            .fetch_one(pool)
            .await
            .map_err(sql(what))?,
        })
    }

    /// Evaluations of `name`, newest first.
    pub async fn evaluations(&self, name: &str) -> Result<Vec<StoredEvaluation>> {
        let what = "listing evaluations";
        let rows: Vec<(i64, String, Option<i64>, String, String, i64)> = match &self.db {
            Database::Postgres(pool) => sqlx::query_as(
                "select id, name, version::bigint, protocol::text, metrics::text, extract(epoch from created_at)::bigint
                 from model_evaluations where name = $1 order by created_at desc, id desc",
            )
            .bind(name)
            .fetch_all(pool)
            .await
            .map_err(sql(what))?,
            Database::Sqlite(pool) => sqlx::query_as(
                "select id, name, version, protocol, metrics, created_at
                 from model_evaluations where name = $1 order by created_at desc, id desc",
            )
            .bind(name)
            .fetch_all(pool)
            .await
            .map_err(sql(what))?,
        };
        rows.into_iter()
            .map(|(id, name, version, protocol, metrics, created_at)| {
                Ok(StoredEvaluation {
                    id,
                    name,
                    version: version.map(|v| format!("v{v}")),
                    protocol: serde_json::from_str(&protocol)?,
                    metrics: serde_json::from_str(&metrics)?,
                    created_at,
                })
            })
            .collect()
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

//! Model versions, specs and evaluations in the database (PostgreSQL or SQLite).

use airq_core::db::{Database, DbTime};
use airq_core::on_pool;
use serde::Serialize;
use sqlx::types::Json;

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
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = Version)]
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
    /// RFC 3339, UTC.
    pub created_at: String,
}

/// A stored evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = Evaluation)]
#[serde(rename_all = "camelCase")]
pub struct StoredEvaluation {
    pub id: i64,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub protocol: serde_json::Value,
    pub metrics: serde_json::Value,
    /// RFC 3339, UTC.
    pub created_at: String,
}

/// The version number of `v3` or `3`.
pub fn parse_version(text: &str) -> Option<i64> {
    text.trim().trim_start_matches('v').parse().ok().filter(|v| *v > 0)
}

/// A model version as stored (without its artifact).
#[derive(sqlx::FromRow)]
struct VersionRow {
    name: String,
    version: i64,
    algorithm: String,
    pollutant: String,
    spec: Json<serde_json::Value>,
    revision: Option<String>,
    metrics: Json<serde_json::Value>,
    artifact_bytes: i64,
    train_seconds: f64,
    created_at: DbTime,
}

impl From<VersionRow> for StoredVersion {
    fn from(row: VersionRow) -> Self {
        Self {
            name: row.name,
            version: format!("v{}", row.version),
            algorithm: row.algorithm,
            pollutant: row.pollutant,
            spec: row.spec.0,
            revision: row.revision,
            metrics: row.metrics.0,
            artifact_bytes: row.artifact_bytes,
            train_seconds: row.train_seconds,
            created_at: crate::forecast::rfc3339(row.created_at.seconds()),
        }
    }
}

/// The columns of [`VersionRow`]; the casts make both databases give 64-bit integers.
const VERSION_COLUMNS: &str = "name, cast(version as bigint) as version, algorithm, pollutant, spec, revision, metrics,
    cast(length(artifact) as bigint) as artifact_bytes, train_seconds, created_at";

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
        let algorithm = model.meta.spec.algorithm.name();
        let pollutant = model.meta.spec.target.pollutant.clone();
        let spec = serde_json::to_value(&model.meta.spec)?;
        let what = "storing a model version";
        // The next number is read and written in one statement; the unique key turns a race into an error that a
        // second attempt resolves.
        for attempt in 0..3 {
            let result: std::result::Result<i64, sqlx::Error> = on_pool!(&self.db, pool => sqlx::query_scalar(
                "insert into model_versions (name, version, algorithm, pollutant, spec, revision, metrics, artifact,
                     train_seconds, created_at)
                 select $1, coalesce(max(version), 0) + 1, $2, $3, $4, $5, $6, $7, $8, $9
                 from model_versions where name = $1 returning cast(version as bigint)",
            )
            .bind(name)
            .bind(algorithm)
            .bind(&pollutant)
            .bind(Json(&spec))
            .bind(revision)
            .bind(Json(metrics))
            .bind(&artifact)
            .bind(train_seconds)
            .bind(DbTime::now())
            .fetch_one(pool)
            .await);
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
        let query = format!("select {VERSION_COLUMNS} from model_versions where name = $1 and version = $2");
        let row: Option<VersionRow> = on_pool!(&self.db, pool => sqlx::query_as(&query)
            .bind(name)
            .bind(version)
            .fetch_optional(pool)
            .await)
        .map_err(sql("reading a model version"))?;
        Ok(row.map(StoredVersion::from))
    }

    /// Versions, newest first; of one model when `name` is given.
    pub async fn versions(&self, name: Option<&str>) -> Result<Vec<StoredVersion>> {
        let query = format!(
            "select {VERSION_COLUMNS} from model_versions where cast($1 as text) is null or name = $1
             order by name, version desc"
        );
        let rows: Vec<VersionRow> = on_pool!(&self.db, pool => sqlx::query_as(&query)
            .bind(name)
            .fetch_all(pool)
            .await)
        .map_err(sql("listing model versions"))?;
        Ok(rows.into_iter().map(StoredVersion::from).collect())
    }

    /// The newest version number of `name`, if it has one.
    pub async fn latest_version(&self, name: &str) -> Result<Option<i64>> {
        const SELECT: &str = "select cast(max(version) as bigint) from model_versions where name = $1";
        on_pool!(&self.db, pool => sqlx::query_scalar(SELECT).bind(name).fetch_one(pool).await)
            .map_err(sql("reading the newest model version"))
    }

    /// Loads a version (the newest when `version` is absent) with its model.
    pub async fn load(&self, name: &str, version: Option<i64>) -> Result<Option<(StoredVersion, Model)>> {
        const SELECT: &str = "select artifact from model_versions where name = $1 and version = $2";
        let number = match version {
            Some(v) => Some(v),
            None => self.latest_version(name).await?,
        };
        let Some(number) = number else {
            return Ok(None);
        };
        let artifact: Option<Vec<u8>> = on_pool!(&self.db, pool => sqlx::query_scalar(SELECT)
            .bind(name)
            .bind(number)
            .fetch_optional(pool)
            .await)
        .map_err(sql("loading a model"))?;
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
        const UPSERT: &str = "insert into model_specs (name, spec, updated_at) values ($1, $2, $3)
             on conflict (name) do update set spec = excluded.spec, updated_at = excluded.updated_at";
        on_pool!(&self.db, pool => sqlx::query(UPSERT)
            .bind(name)
            .bind(Json(spec))
            .bind(DbTime::now())
            .execute(pool)
            .await
            .map(drop))
        .map_err(sql("storing a model spec"))
    }

    /// The spec `name` trains with through the API.
    pub async fn spec(&self, name: &str) -> Result<Option<serde_json::Value>> {
        const SELECT: &str = "select spec from model_specs where name = $1";
        let spec: Option<Json<serde_json::Value>> =
            on_pool!(&self.db, pool => sqlx::query_scalar(SELECT).bind(name).fetch_optional(pool).await)
                .map_err(sql("reading a model spec"))?;
        Ok(spec.map(|s| s.0))
    }

    /// Every model name with a spec or a version.
    pub async fn names(&self) -> Result<Vec<String>> {
        const SELECT: &str = "select name from model_specs union select name from model_versions order by name";
        on_pool!(&self.db, pool => sqlx::query_scalar(SELECT).fetch_all(pool).await).map_err(sql("listing models"))
    }

    /// Stores an evaluation.
    pub async fn save_evaluation(
        &self,
        name: &str,
        version: Option<i64>,
        protocol: &serde_json::Value,
        metrics: &serde_json::Value,
    ) -> Result<i64> {
        const INSERT: &str = "insert into model_evaluations (name, version, protocol, metrics, created_at)
            values ($1, $2, $3, $4, $5) returning id";
        on_pool!(&self.db, pool => sqlx::query_scalar(INSERT)
            .bind(name)
            .bind(version)
            .bind(Json(protocol))
            .bind(Json(metrics))
            .bind(DbTime::now())
            .fetch_one(pool)
            .await)
        .map_err(sql("storing an evaluation"))
    }

    /// Evaluations of `name`, newest first.
    pub async fn evaluations(&self, name: &str) -> Result<Vec<StoredEvaluation>> {
        const SELECT: &str = "select id, name, cast(version as bigint), protocol, metrics, created_at
            from model_evaluations where name = $1 order by created_at desc, id desc";
        type Row = (
            i64,
            String,
            Option<i64>,
            Json<serde_json::Value>,
            Json<serde_json::Value>,
            DbTime,
        );
        let rows: Vec<Row> = on_pool!(&self.db, pool => sqlx::query_as(SELECT).bind(name).fetch_all(pool).await)
            .map_err(sql("listing evaluations"))?;
        Ok(rows
            .into_iter()
            .map(|(id, name, version, protocol, metrics, created_at)| StoredEvaluation {
                id,
                name,
                version: version.map(|v| format!("v{v}")),
                protocol: protocol.0,
                metrics: metrics.0,
                created_at: crate::forecast::rfc3339(created_at.seconds()),
            })
            .collect())
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

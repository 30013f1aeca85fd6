//! The forecasting and training API.
//!
//! | method | path | |
//! | --- | --- | --- |
//! | GET | `/models` | every model: its spec, newest version and metrics |
//! | GET | `/models/{name}` | one model with its spec and versions |
//! | PUT | `/models/{name}/spec` | set the training parameters (a PredictiveModel's training spec) |
//! | POST | `/models/{name}/train` | train a new version: JSON (optional spec) from the database, or a CSV upload → 202 |
//! | GET | `/models/{name}/trainings/{id}` | a training started here: running, succeeded (with the version) or failed |
//! | GET | `/models/{name}/versions` | the stored versions, newest first |
//! | POST | `/models/{name}/evaluate` | run the evaluation protocol on the database's data and store the scores |
//! | GET | `/models/{name}/evaluations` | stored evaluations |
//! | GET | `/models/{name}/forecast` | `?station=&at=` or the whole horizon, `&confidence=0.8,0.9`, `&origin=`, `&version=` |
//! | GET | `/forecast` | the same for the model this service serves (`AIRQ_MODEL`) |
//! | GET | `/openapi.json` | this API's OpenAPI 3.1 description |
//!
//! A model's name is its PredictiveModel's name (unique in a namespace, whose Platform has a database of its own).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use airq_api::etl::CsvFormat;
use airq_core::http::ApiError;
use airq_core::store::Store;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::adaptive::Levels;
use crate::data::{Dataset, HOUR};
use crate::evaluate::Protocol;
use crate::forecast::{self, Forecast, ForecastError, Request};
use crate::model::{Model, Quiet};
use crate::registry::{Registry, StoredEvaluation, StoredVersion, parse_version};
use crate::spec::ModelSpec;

/// How long a station's recent data is reused between forecasts before it is read again.
const CONTEXT_TTL: Duration = Duration::from_secs(30);
/// How long "the newest version of a model" is reused before the database is asked again.
const LATEST_TTL: Duration = Duration::from_secs(10);
/// Largest CSV upload accepted for training.
const MAX_UPLOAD: usize = 256 * 1024 * 1024;

type Loaded = Arc<(StoredVersion, Model)>;
/// Station, pollutant and asked origin.
type ContextKey = (String, String, Option<i64>);
/// A station's recent data, the origin it gives, and when it was read.
type CachedContext = (Arc<Dataset>, i64, Instant);

/// A training started through the API, or by the process serving it (`airq up`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = TrainingRun)]
#[serde(rename_all = "camelCase")]
pub struct Training {
    pub id: u64,
    pub name: String,
    /// `waiting` (for its data), `running`, `succeeded` or `failed`.
    #[schema(value_type = String, example = "running")]
    pub status: &'static str,
    /// `database`, `upload`, or `airq up`.
    #[schema(value_type = String)]
    pub source: &'static str,
    /// Where a waiting or running training is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<TrainingProgress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<StoredVersion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    #[schema(ignore)]
    started: Instant,
}

/// How far a training is: its phase (`waiting`: what it waits for) and, in phases that count, how many of the
/// forecasts the phase needs are made.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingProgress {
    pub phase: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Seconds since the training was started (or announced).
    pub seconds: f64,
}

impl Training {
    fn new(id: u64, name: &str, status: &'static str, source: &'static str, phase: String) -> Self {
        Self {
            id,
            name: name.to_owned(),
            status,
            source,
            progress: Some(TrainingProgress {
                phase,
                done: None,
                total: None,
                seconds: 0.0,
            }),
            version: None,
            error: None,
            started: Instant::now(),
        }
    }

    /// The training as it is now (its progress's seconds up to date).
    fn now(&self) -> Self {
        let mut t = self.clone();
        if let Some(p) = &mut t.progress {
            p.seconds = (self.started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
        }
        t
    }

    fn unfinished(&self) -> bool {
        matches!(self.status, "waiting" | "running")
    }

    /// Where it is, for a person: `calibrate, 12000 of 63000 forecasts (19 %), 14 s so far`.
    fn describe(&self) -> String {
        let now = self.now();
        let Some(p) = &now.progress else {
            return self.status.to_owned();
        };
        if self.status == "waiting" {
            return format!("it waits for {}", p.phase);
        }
        let count = match (p.done, p.total) {
            (Some(done), Some(total)) if total > 0 => {
                format!(", {done} of {total} forecasts ({} %)", done * 100 / total)
            }
            _ => String::new(),
        };
        format!("it is being trained ({}{count}, {:.0} s so far)", p.phase, p.seconds)
    }
}

/// A training's progress, recorded where the API shows it, and passed on to `also` (a terminal's bar).
pub struct Tracked<P> {
    trainings: Arc<Mutex<HashMap<u64, Training>>>,
    id: u64,
    also: P,
}

impl<P> Tracked<P> {
    fn update(&self, change: impl FnOnce(&mut TrainingProgress)) {
        if let Some(t) = self
            .trainings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&self.id)
            && let Some(p) = &mut t.progress
        {
            change(p);
        }
    }
}

impl<P: crate::model::Progress> crate::model::Progress for Tracked<P> {
    fn phase(&self, name: &str) {
        self.update(|p| {
            p.phase = name.to_owned();
            p.done = None;
            p.total = None;
        });
        self.also.phase(name);
    }

    fn count(&self, done: usize, of: usize) {
        self.update(|p| {
            p.done = Some(done as u64);
            p.total = Some(of as u64);
        });
        self.also.count(done, of);
    }

    fn epoch(&self, epoch: usize, of: usize, validation_loss: f32) {
        self.update(|p| {
            p.phase = "fit (epochs)".to_owned();
            p.done = Some(epoch as u64);
            p.total = Some(of as u64);
        });
        self.also.epoch(epoch, of, validation_loss);
    }

    fn finish(&self, message: &str) {
        self.also.finish(message);
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub registry: Registry,
    pub store: Store,
    /// The model this service serves at `/forecast` (a PredictiveModel's Deployment), with its pinned version.
    pub served: Option<(String, Option<i64>)>,
    models: Arc<RwLock<HashMap<(String, i64), Loaded>>>,
    latest: Arc<RwLock<HashMap<String, (i64, Instant)>>>,
    contexts: Arc<RwLock<HashMap<ContextKey, CachedContext>>>,
    trainings: Arc<Mutex<HashMap<u64, Training>>>,
    next_training: Arc<AtomicU64>,
    /// Per model, the version whose intervals the monitor adapts and their levels now.
    adapted: Arc<RwLock<HashMap<String, (String, Levels)>>>,
}

impl ApiState {
    pub fn new(registry: Registry, store: Store, served: Option<(String, Option<i64>)>) -> Self {
        Self {
            registry,
            store,
            served,
            models: Arc::default(),
            latest: Arc::default(),
            contexts: Arc::default(),
            trainings: Arc::default(),
            next_training: Arc::new(AtomicU64::new(1)),
            adapted: Arc::default(),
        }
    }

    /// Records the adapted interval levels of `name`'s `version` (the monitor, after each round).
    pub fn adapt(&self, name: &str, version: &str, levels: Levels) {
        self.adapted
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), (version.to_owned(), levels));
    }

    /// The adapted interval levels of `name`'s `version`, once the monitor has followed its truths.
    pub fn adapted(&self, name: &str, version: &str) -> Option<Levels> {
        self.adapted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .filter(|(v, _)| v == version)
            .map(|(_, levels)| levels.clone())
    }

    /// Announces a training of `name` that starts once `waiting_for` (said to callers: "it waits for …") is done;
    /// until it finishes, a forecast of a model without a version answers `409 training` with its progress.
    pub fn announce_training(&self, name: &str, source: &'static str, waiting_for: String) -> u64 {
        let id = self.next_training.fetch_add(1, Ordering::Relaxed);
        self.trainings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Training::new(id, name, "waiting", source, waiting_for));
        id
    }

    /// Marks the training `id` as running (its clock restarted) and returns the progress that records its phases.
    pub fn start_training<P>(&self, id: u64, also: P) -> Tracked<P> {
        if let Some(t) = self.trainings.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&id) {
            *t = Training::new(id, &t.name, "running", t.source, "read the data".to_owned());
        }
        Tracked {
            trainings: self.trainings.clone(),
            id,
            also,
        }
    }

    /// Records how the training `id` ended; a new version is served from the next forecast on.
    pub fn finish_training(&self, id: u64, outcome: Result<StoredVersion, String>) {
        let mut trainings = self.trainings.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = trainings.get_mut(&id) {
            self.latest.write().unwrap_or_else(|p| p.into_inner()).remove(&t.name);
            t.progress = None;
            match outcome {
                Ok(v) => {
                    t.status = "succeeded";
                    t.version = Some(v);
                }
                Err(e) => {
                    t.status = "failed";
                    t.error = Some(e);
                }
            }
        }
    }

    /// The unfinished training of `name` in this process, if any (the newest).
    pub fn training_of(&self, name: &str) -> Option<Training> {
        self.trainings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|t| t.name == name && t.unfinished())
            .max_by_key(|t| t.id)
            .map(Training::now)
    }

    /// The model `name` at `version` (the newest when absent), from memory or the database.
    pub async fn model(&self, name: &str, version: Option<i64>) -> Result<Loaded, ApiError> {
        let number = match version {
            Some(v) => v,
            None => self.latest_version(name).await?,
        };
        let key = (name.to_owned(), number);
        if let Some(m) = self.models.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(m.clone());
        }
        let (stored, model) = self
            .registry
            .load(name, Some(number))
            .await
            .map_err(|e| ApiError::internal(&e))?
            .ok_or_else(|| ApiError::not_found(format!("model {name:?} has no version v{number}")))?;
        let loaded = Arc::new((stored, model));
        self.models
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, loaded.clone());
        Ok(loaded)
    }

    async fn latest_version(&self, name: &str) -> Result<i64, ApiError> {
        if let Some((v, at)) = self.latest.read().unwrap_or_else(|p| p.into_inner()).get(name)
            && at.elapsed() < LATEST_TTL
        {
            return Ok(*v);
        }
        let newest = self
            .registry
            .latest_version(name)
            .await
            .map_err(|e| ApiError::internal(&e))?;
        let Some(newest) = newest else {
            if let Some(training) = self.training_of(name) {
                let progress = serde_json::to_value(&training).unwrap_or(Value::Null);
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "training",
                    format!(
                        "model {name:?} has no version yet: {}; it answers once that is done",
                        training.describe()
                    ),
                )
                .with("training", progress)
                .retry_after(5));
            }
            let spec = self.registry.spec(name).await.map_err(|e| ApiError::internal(&e))?;
            return Err(match spec {
                Some(_) => ApiError::new(
                    StatusCode::CONFLICT,
                    "not_trained",
                    format!("model {name:?} has no trained version yet; train it with POST /models/{name}/train"),
                ),
                None => ApiError::not_found(format!("no model {name:?}")),
            });
        };
        self.latest
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), (newest, Instant::now()));
        Ok(newest)
    }
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/models", get(list_models))
        .route("/models/{name}", get(get_model))
        .route("/models/{name}/spec", put(put_spec).get(get_spec))
        .route(
            "/models/{name}/train",
            post(train).layer(DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .route("/models/{name}/trainings/{id}", get(get_training))
        .route("/models/{name}/versions", get(list_versions))
        .route("/models/{name}/evaluate", post(evaluate))
        .route("/models/{name}/evaluations", get(list_evaluations))
        .route("/models/{name}/forecast", get(forecast_named))
        .route("/forecast", get(forecast_served))
        .route("/openapi.json", get(openapi))
        .with_state(state)
}

fn forecast_error(e: ForecastError) -> ApiError {
    match e {
        ForecastError::UnknownStation(_) | ForecastError::NoData { .. } => ApiError::not_found(e.to_string()),
        ForecastError::Time(_) | ForecastError::Confidence { .. } => ApiError::invalid(e.to_string()),
        ForecastError::Store(_) | ForecastError::Model(_) => ApiError::internal(&e),
    }
}

#[utoipa::path(get, path = "/models", tag = "predictive",
    responses((status = 200, description = "Every model with its spec, newest version and any training in progress here", body = [ModelInfo])))]
async fn list_models(State(state): State<ApiState>) -> Result<Json<Vec<ModelInfo>>, ApiError> {
    let names = state.registry.names().await.map_err(|e| ApiError::internal(&e))?;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        out.push(describe(&state, &name, false).await?);
    }
    Ok(Json(out))
}

/// A model: its spec, newest version, and the training of it in progress here, if any.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelInfo {
    pub name: String,
    /// Its training parameters (a PredictiveModel's training spec).
    #[schema(value_type = Option<ModelSpec>)]
    pub spec: Option<Value>,
    pub latest: Option<StoredVersion>,
    /// Every version, newest first (one model's description only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versions: Option<Vec<StoredVersion>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training: Option<Training>,
}

/// The scores of an evaluation, as stored.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scored {
    pub id: i64,
    pub name: String,
    /// The version tested; none when the spec was fitted, calibrated and tested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The periods.
    pub protocol: Value,
    /// MAE, RMSE, CRPS, coverage… per horizon and overall.
    pub metrics: Value,
}

/// The JSON body of `POST /models/{name}/train`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TrainRequest {
    /// Training parameters, stored as the model's spec; the stored spec when absent.
    #[schema(value_type = Option<ModelSpec>)]
    pub spec: Option<Value>,
}

async fn describe(state: &ApiState, name: &str, all_versions: bool) -> Result<ModelInfo, ApiError> {
    let spec = state.registry.spec(name).await.map_err(|e| ApiError::internal(&e))?;
    let versions = state
        .registry
        .versions(Some(name))
        .await
        .map_err(|e| ApiError::internal(&e))?;
    if spec.is_none() && versions.is_empty() {
        return Err(ApiError::not_found(format!("no model {name:?}")));
    }
    let spec = spec.or_else(|| versions.first().map(|v| v.spec.clone()));
    Ok(ModelInfo {
        name: name.to_owned(),
        spec,
        latest: versions.first().cloned(),
        training: state.training_of(name),
        versions: all_versions.then_some(versions),
    })
}

#[utoipa::path(get, path = "/models/{name}", tag = "predictive", params(("name" = String, Path, description = "The model's name (its PredictiveModel's)")),
    responses((status = 200, description = "The model with every version", body = ModelInfo),
        (status = 404, description = "No such model", body = airq_core::openapi::ErrorBody)))]
async fn get_model(State(state): State<ApiState>, Path(name): Path<String>) -> Result<Json<ModelInfo>, ApiError> {
    Ok(Json(describe(&state, &name, true).await?))
}

#[utoipa::path(get, path = "/models/{name}/spec", tag = "predictive", params(("name" = String, Path, description = "The model's name (its PredictiveModel's)")),
    responses((status = 200, description = "The training parameters", body = ModelSpec),
        (status = 404, description = "The model has no spec", body = airq_core::openapi::ErrorBody)))]
async fn get_spec(State(state): State<ApiState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    state
        .registry
        .spec(&name)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "model {name:?} has no spec; set one with PUT /models/{name}/spec"
            ))
        })
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 120
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "model name {name:?}: use 1 to 120 letters, digits, '-', '_', '.' or '/'"
        )))
    }
}

fn parse_spec(value: &Value) -> Result<ModelSpec, ApiError> {
    ModelSpec::from_json(value).map_err(|e| ApiError::invalid(format!("spec.{e}")))
}

#[utoipa::path(put, path = "/models/{name}/spec", tag = "predictive", params(("name" = String, Path, description = "The model's name (its PredictiveModel's)")), request_body = ModelSpec,
    responses((status = 200, description = "The stored spec", body = ModelSpec),
        (status = 422, description = "The spec is not valid; the message names the field", body = airq_core::openapi::ErrorBody)))]
async fn put_spec(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    check_name(&name)?;
    let spec = parse_spec(&body)?;
    state
        .registry
        .set_spec(&name, &spec)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(serde_json::to_value(&spec).map_err(|e| ApiError::internal(&e))?))
}

#[utoipa::path(post, path = "/models/{name}/train", tag = "predictive", params(("name" = String, Path, description = "The model's name (its PredictiveModel's)")),
    request_body(description = "JSON (`{}`, or `{\"spec\": …}` which becomes the model's spec) trains from the database; a CSV file in the Beijing layout (plain or gzip) trains from that file with the stored spec",
        content((TrainRequest = "application/json"), (String = "text/csv"), (Vec<u8> = "application/gzip"))),
    responses((status = 202, description = "Training started; follow it at /models/{name}/trainings/{id}", body = Training),
        (status = 404, description = "No spec for the model", body = airq_core::openapi::ErrorBody),
        (status = 422, description = "A bad spec, or data that cannot be trained on", body = airq_core::openapi::ErrorBody)))]
/// `POST /models/{name}/train`: a JSON body (`{}` or `{"spec": {...}}`, which also becomes the model's spec) trains
/// from the database; a `text/csv` or `application/gzip` body trains from that file (Beijing layout) with the
/// stored spec.
async fn train(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Training>), ApiError> {
    check_name(&name)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_ascii_lowercase();
    let upload = content_type.starts_with("text/csv") || content_type.starts_with("application/gzip");
    let given_spec = if upload || body.is_empty() {
        None
    } else {
        let value: Value =
            serde_json::from_slice(&body).map_err(|e| ApiError::invalid(format!("the body is not JSON: {e}")))?;
        value.get("spec").map(parse_spec).transpose()?
    };
    let spec = match given_spec {
        Some(spec) => {
            state
                .registry
                .set_spec(&name, &spec)
                .await
                .map_err(|e| ApiError::internal(&e))?;
            spec
        }
        None => {
            let stored = state.registry.spec(&name).await.map_err(|e| ApiError::internal(&e))?.ok_or_else(|| {
                ApiError::not_found(format!(
                    "model {name:?} has no spec; give one in the body ({{\"spec\": ...}}) or with PUT /models/{name}/spec"
                ))
            })?;
            parse_spec(&stored)?
        }
    };
    let pollutant = spec.pollutant().map_err(|e| ApiError::invalid(e.to_string()))?;
    // Read the data before answering, so that bad input is this request's error.
    let data = if upload {
        Dataset::from_csv_bytes("the uploaded file", body.to_vec(), CsvFormat::Beijing, pollutant)
            .await
            .map_err(|e| ApiError::invalid(e.to_string()))?
    } else {
        let (from, to) = spec.window().map_err(|e| ApiError::invalid(e.to_string()))?;
        Dataset::from_store(
            &state.store,
            pollutant,
            &spec.target.stations,
            from.unwrap_or(i64::MIN / 2),
            to.unwrap_or(i64::MAX / 2),
        )
        .await
        .map_err(|e| match e {
            crate::data::DataError::Store(e) => ApiError::internal(&e),
            other => ApiError::invalid(format!("cannot train {name:?}: {other}")),
        })?
    };
    let data = spec.in_unit(data).map_err(|e| ApiError::invalid(e.to_string()))?;
    let plan = crate::cli::plan_for(&spec, &data).map_err(|e| ApiError::invalid(e.to_string()))?;
    let source = if upload { "upload" } else { "database" };
    let id = state.announce_training(&name, source, String::new());
    let progress = state.start_training(id, Quiet);
    let training = state
        .trainings
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
        .map(Training::now)
        .ok_or_else(|| ApiError::internal(&"a training vanished as it was started"))?;
    let task = state.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let algorithm = spec.algorithm.name();
        let trained =
            tokio::task::spawn_blocking(move || crate::cli::train_and_score(&data, &spec, plan, &progress)).await;
        let seconds = started.elapsed().as_secs_f64();
        let outcome = match trained {
            Ok(Ok((model, evaluation))) => {
                let metrics = serde_json::to_value(&evaluation).unwrap_or(Value::Null);
                task.registry
                    .save(&name, &model, None, &metrics, seconds)
                    .await
                    .map_err(|e| e.to_string())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let status = if outcome.is_ok() { "succeeded" } else { "failed" };
        metrics::histogram!("airq_predictive_training_duration_seconds", "algorithm" => algorithm, "status" => status)
            .record(seconds);
        match &outcome {
            Ok(v) => tracing::info!(model = %name, version = %v.version, seconds, "training finished"),
            Err(e) => tracing::warn!(model = %name, error = %e, "training failed"),
        }
        task.finish_training(id, outcome);
    });
    Ok((StatusCode::ACCEPTED, Json(training)))
}

#[utoipa::path(get, path = "/models/{name}/trainings/{id}", tag = "predictive",
    params(("name" = String, Path, description = "The model's name (its PredictiveModel's)"), ("id" = u64, Path, description = "The training's id, from POST /models/{name}/train")),
    responses((status = 200, description = "The training: waiting, running (with its progress), succeeded (with the version) or failed", body = Training),
        (status = 404, description = "No such training in this service", body = airq_core::openapi::ErrorBody)))]
async fn get_training(
    State(state): State<ApiState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<Training>, ApiError> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::invalid(format!("training id {id:?} is not a number")))?;
    state
        .trainings
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
        .filter(|t| t.name == name)
        .map(Training::now)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no training {id} of model {name:?} in this service")))
}

#[utoipa::path(get, path = "/models/{name}/versions", tag = "predictive", params(("name" = String, Path, description = "The model's name (its PredictiveModel's)")),
    responses((status = 200, description = "The stored versions, newest first", body = [StoredVersion]),
        (status = 404, description = "No such model", body = airq_core::openapi::ErrorBody)))]
async fn list_versions(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<StoredVersion>>, ApiError> {
    let versions = state
        .registry
        .versions(Some(&name))
        .await
        .map_err(|e| ApiError::internal(&e))?;
    if versions.is_empty()
        && state
            .registry
            .spec(&name)
            .await
            .map_err(|e| ApiError::internal(&e))?
            .is_none()
    {
        return Err(ApiError::not_found(format!("no model {name:?}")));
    }
    Ok(Json(versions))
}

/// The periods of an evaluation, as local days. With `version`, that stored version is tested as it is on the test
/// period; without, the model's spec is fitted, calibrated and tested with the protocol's three periods.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvaluateRequest {
    /// A stored version to test (`v1`…).
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub fit_from: Option<String>,
    #[serde(default)]
    pub calibrate_from: Option<String>,
    pub test_from: String,
    pub test_to: String,
    /// Local hour of the daily forecasts (default 23).
    #[serde(default)]
    pub origin_hour: Option<u32>,
    /// Local time's offset from UTC in hours (default 0).
    #[serde(default)]
    pub utc_offset: Option<i32>,
}

#[utoipa::path(post, path = "/models/{name}/evaluate", tag = "predictive", params(("name" = String, Path, description = "The model's name (its PredictiveModel's)")), request_body = EvaluateRequest,
    responses((status = 200, description = "The scores, stored", body = Scored),
        (status = 404, description = "No spec or version", body = airq_core::openapi::ErrorBody),
        (status = 422, description = "Bad periods, or no data in them", body = airq_core::openapi::ErrorBody)))]
async fn evaluate(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Json(body): Json<EvaluateRequest>,
) -> Result<Json<Scored>, ApiError> {
    if let Some(version) = &body.version {
        return test_version(&state, &name, version, &body).await.map(Json);
    }
    let (Some(fit_from), Some(calibrate_from)) = (&body.fit_from, &body.calibrate_from) else {
        return Err(ApiError::invalid(
            "give fitFrom and calibrateFrom (to train and test the spec), or version (to test a stored version)",
        ));
    };
    let stored = state
        .registry
        .spec(&name)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| ApiError::not_found(format!("model {name:?} has no spec to evaluate")))?;
    let spec = parse_spec(&stored)?;
    let protocol = Protocol::from_days(
        fit_from,
        calibrate_from,
        &body.test_from,
        &body.test_to,
        body.origin_hour.unwrap_or(23),
        body.utc_offset.unwrap_or(0),
    )
    .map_err(ApiError::invalid)?;
    let pollutant = spec.pollutant().map_err(|e| ApiError::invalid(e.to_string()))?;
    let data = Dataset::from_store(
        &state.store,
        pollutant,
        &spec.target.stations,
        protocol.fit_from,
        protocol.test_to + 2 * 86_400,
    )
    .await
    .map_err(|e| ApiError::invalid(format!("cannot evaluate {name:?}: {e}")))?;
    let data = spec.in_unit(data).map_err(|e| ApiError::invalid(e.to_string()))?;
    let task_protocol = protocol.clone();
    let (_, evaluation) =
        tokio::task::spawn_blocking(move || crate::evaluate::run(&data, &spec, &task_protocol, &Quiet))
            .await
            .map_err(|e| ApiError::internal(&e))?
            .map_err(|e| ApiError::invalid(format!("cannot evaluate {name:?}: {e}")))?;
    let protocol = serde_json::to_value(&protocol).map_err(|e| ApiError::internal(&e))?;
    let metrics = serde_json::to_value(&evaluation).map_err(|e| ApiError::internal(&e))?;
    let id = state
        .registry
        .save_evaluation(&name, None, &protocol, &metrics)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(Scored {
        id,
        name,
        version: None,
        protocol,
        metrics,
    }))
}

/// Tests a stored version as it is on `body`'s test period and stores the scores with the version.
async fn test_version(state: &ApiState, name: &str, version: &str, body: &EvaluateRequest) -> Result<Scored, ApiError> {
    let number =
        parse_version(version).ok_or_else(|| ApiError::invalid(format!("version {version:?} is not v1, v2…")))?;
    let loaded = state.model(name, Some(number)).await?;
    let offset = body.utc_offset.unwrap_or(0);
    // Local midnight at the offset, in Unix seconds.
    let midnight = |field: &str, day: &str| {
        chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
            .map(|d| d.and_hms_opt(0, 0, 0).map_or(0, |t| t.and_utc().timestamp()) - i64::from(offset) * 3600)
            .map_err(|e| ApiError::invalid(format!("{field}: {day:?} is not a YYYY-MM-DD date: {e}")))
    };
    let from = midnight("testFrom", &body.test_from)?;
    let to = midnight("testTo", &body.test_to)?;
    if from >= to {
        return Err(ApiError::invalid("testFrom must be before testTo"));
    }
    let hour = (i64::from(body.origin_hour.unwrap_or(23)) - i64::from(offset)).rem_euclid(24) as u32;
    let model = &loaded.1;
    let pollutant = model.meta.spec.pollutant().map_err(|e| ApiError::internal(&e))?;
    let history = crate::forecast::history_hours(model) * HOUR;
    let data = Dataset::from_store(
        &state.store,
        pollutant,
        &model.meta.stations,
        from - history,
        to + 2 * 86_400,
    )
    .await
    .map_err(|e| match e {
        crate::data::DataError::Store(e) => ApiError::internal(&e),
        other => ApiError::invalid(format!("cannot test {name:?} {version}: {other}")),
    })?;
    let data = model.meta.spec.in_unit(data).map_err(|e| ApiError::internal(&e))?;
    let task = loaded.clone();
    let evaluation = tokio::task::spawn_blocking(move || crate::evaluate::test_model(&task.1, &data, from, to, hour))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| ApiError::invalid(format!("cannot test {name:?} {version}: {e}")))?;
    let protocol = json!({ "version": format!("v{number}"), "testFrom": from, "testTo": to, "originHourUtc": hour });
    let metrics = serde_json::to_value(&evaluation).map_err(|e| ApiError::internal(&e))?;
    let id = state
        .registry
        .save_evaluation(name, Some(number), &protocol, &metrics)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Scored {
        id,
        name: name.to_owned(),
        version: Some(format!("v{number}")),
        protocol,
        metrics,
    })
}

#[utoipa::path(get, path = "/models/{name}/evaluations", tag = "predictive", params(("name" = String, Path, description = "The model's name (its PredictiveModel's)")),
    responses((status = 200, description = "Stored evaluations, newest first", body = [StoredEvaluation])))]
async fn list_evaluations(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<StoredEvaluation>>, ApiError> {
    let list = state
        .registry
        .evaluations(&name)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(list))
}

/// The query of a forecast.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ForecastQuery {
    /// The station's code (required), e.g. `Dongsi`; `GET /api/stations` lists them.
    pub station: Option<String>,
    /// The hour forecast (RFC 3339 or a date, UTC); every hour of the horizon when absent.
    pub at: Option<String>,
    /// Forecast from this hour instead of the newest data.
    pub origin: Option<String>,
    /// Comma-separated confidence levels, e.g. `0.8,0.9`; the model's when absent.
    pub confidence: Option<String>,
    /// `v1`, `v2`…; the newest when absent.
    pub version: Option<String>,
}

#[utoipa::path(get, path = "/models/{name}/forecast", tag = "predictive", params(("name" = String, Path, description = "The model's name (its PredictiveModel's)"), ForecastQuery),
    responses((status = 200, description = "The forecast with its intervals", body = Forecast),
        (status = 404, description = "Unknown model or station, or no data for the station", body = airq_core::openapi::ErrorBody),
        (status = 409, description = "The model has no version yet: `training` (with the training's progress and a Retry-After) or `not_trained`", body = airq_core::openapi::ErrorBody),
        (status = 422, description = "A time before the origin or beyond the horizon, or an unsupported confidence level", body = airq_core::openapi::ErrorBody)))]
async fn forecast_named(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(query): Query<ForecastQuery>,
) -> Result<Json<Forecast>, ApiError> {
    answer(&state, &name, query, None).await
}

#[utoipa::path(get, path = "/forecast", tag = "predictive", params(ForecastQuery),
    responses((status = 200, description = "The forecast of the model this service serves (a PredictiveModel's own Service)", body = Forecast),
        (status = 404, description = "Unknown station, or this service serves no single model", body = airq_core::openapi::ErrorBody),
        (status = 409, description = "The model has no version yet", body = airq_core::openapi::ErrorBody),
        (status = 422, description = "A time beyond the horizon, or an unsupported confidence level", body = airq_core::openapi::ErrorBody)))]
async fn forecast_served(
    State(state): State<ApiState>,
    Query(query): Query<ForecastQuery>,
) -> Result<Json<Forecast>, ApiError> {
    let Some((name, pinned)) = state.served.clone() else {
        return Err(ApiError::not_found(
            "this service serves no single model; use /models/{name}/forecast",
        ));
    };
    answer(&state, &name, query, pinned).await
}

async fn answer(
    state: &ApiState,
    name: &str,
    query: ForecastQuery,
    pinned: Option<i64>,
) -> Result<Json<Forecast>, ApiError> {
    let started = Instant::now();
    let station = query
        .station
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::invalid("give the station: ?station=CODE"))?;
    let version = match (&query.version, pinned) {
        (Some(v), _) => {
            Some(parse_version(v).ok_or_else(|| ApiError::invalid(format!("version {v:?} is not v1, v2…")))?)
        }
        (None, pinned) => pinned,
    };
    let confidence = match &query.confidence {
        Some(text) => text
            .split(',')
            .map(|c| {
                c.trim()
                    .parse::<f64>()
                    .map_err(|_| ApiError::invalid(format!("confidence {c:?} is not a number such as 0.9")))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let request = Request {
        station,
        at: query
            .at
            .as_deref()
            .map(|t| forecast::parse_time("at", t))
            .transpose()
            .map_err(forecast_error)?,
        origin: query
            .origin
            .as_deref()
            .map(|t| forecast::parse_time("origin", t))
            .transpose()
            .map_err(forecast_error)?,
        confidence,
    };
    let loaded = state.model(name, version).await?;
    let (stored, model) = (&loaded.0, &loaded.1);
    let key = (
        request.station.clone(),
        model.meta.spec.target.pollutant.clone(),
        request.origin,
    );
    let cached = state
        .contexts
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .filter(|(data, origin, at)| {
            at.elapsed() < CONTEXT_TTL && data.start <= origin - crate::forecast::history_hours(model) * HOUR
        })
        .map(|(d, o, _)| (d.clone(), *o));
    let (data, origin) = match cached {
        Some(hit) => hit,
        None => {
            let (data, origin) = forecast::context(&state.store, model, &request)
                .await
                .map_err(forecast_error)?;
            let data = Arc::new(data);
            state
                .contexts
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, (data.clone(), origin, Instant::now()));
            (data, origin)
        }
    };
    let adapted = state.adapted(name, &stored.version);
    let answer = forecast::forecast(name, &stored.version, model, &data, origin, &request, adapted.as_ref())
        .map_err(forecast_error)?;
    metrics::histogram!("airq_predictive_forecast_duration_seconds").record(started.elapsed().as_secs_f64());
    Ok(Json(answer))
}

async fn openapi() -> impl axum::response::IntoResponse {
    static DOCUMENT: std::sync::OnceLock<axum::body::Bytes> = std::sync::OnceLock::new();
    airq_core::openapi::served(&DOCUMENT, openapi_document)
}

airq_core::schema_from_schemars!(ModelSpec, EvaluateRequest);

/// This API's OpenAPI 3.1 description, generated from its handlers and their types.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "airq predictive API",
        description = "Forecasts with calibrated intervals; training, versions and evaluations."
    ),
    paths(
        list_models,
        get_model,
        get_spec,
        put_spec,
        train,
        get_training,
        list_versions,
        evaluate,
        list_evaluations,
        forecast_named,
        forecast_served
    ),
    components(schemas(airq_core::openapi::ErrorBody, airq_core::openapi::ErrorDetail, TrainingProgress)),
    tags((name = "predictive", description = "Forecasts with calibrated intervals; training, versions and evaluations"))
)]
pub struct Doc;

/// This API's OpenAPI description, with the `servers` entry of its place behind the gateway
/// (`/api/predictive`).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    airq_core::openapi::behind_gateway(
        <Doc as utoipa::OpenApi>::openapi(),
        airq_api::paths::PREDICTIVE,
        env!("CARGO_PKG_VERSION"),
    )
}

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

use crate::data::{Dataset, HOUR};
use crate::evaluate::Protocol;
use crate::forecast::{self, Forecast, ForecastError, Request};
use crate::model::{Model, Quiet};
use crate::registry::{Registry, StoredVersion, parse_version};
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

/// A training started through the API.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Training {
    pub id: u64,
    pub name: String,
    /// `running`, `succeeded` or `failed`.
    pub status: &'static str,
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<StoredVersion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
        }
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

async fn list_models(State(state): State<ApiState>) -> Result<Json<Vec<Value>>, ApiError> {
    let names = state.registry.names().await.map_err(|e| ApiError::internal(&e))?;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        out.push(describe(&state, &name, false).await?);
    }
    Ok(Json(out))
}

async fn describe(state: &ApiState, name: &str, all_versions: bool) -> Result<Value, ApiError> {
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
    let mut value = json!({ "name": name, "spec": spec, "latest": versions.first() });
    if all_versions {
        value["versions"] = serde_json::to_value(&versions).map_err(|e| ApiError::internal(&e))?;
    }
    Ok(value)
}

async fn get_model(State(state): State<ApiState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(describe(&state, &name, true).await?))
}

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
    let plan = crate::cli::plan_for(&spec, &data).map_err(|e| ApiError::invalid(e.to_string()))?;
    let id = state.next_training.fetch_add(1, Ordering::Relaxed);
    let training = Training {
        id,
        name: name.clone(),
        status: "running",
        source: if upload { "upload" } else { "database" },
        version: None,
        error: None,
    };
    state
        .trainings
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, training.clone());
    let task = state.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let algorithm = spec.algorithm.name();
        let trained =
            tokio::task::spawn_blocking(move || crate::cli::train_and_score(&data, &spec, plan, &Quiet)).await;
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
        task.latest.write().unwrap_or_else(|p| p.into_inner()).remove(&name);
        if let Some(t) = task.trainings.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&id) {
            t.status = status;
            match outcome {
                Ok(v) => t.version = Some(v),
                Err(e) => t.error = Some(e),
            }
        }
    });
    Ok((StatusCode::ACCEPTED, Json(training)))
}

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
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no training {id} of model {name:?} in this service")))
}

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

async fn evaluate(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Json(body): Json<EvaluateRequest>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(
        json!({ "id": id, "name": name, "protocol": protocol, "metrics": metrics }),
    ))
}

/// Tests a stored version as it is on `body`'s test period and stores the scores with the version.
async fn test_version(state: &ApiState, name: &str, version: &str, body: &EvaluateRequest) -> Result<Value, ApiError> {
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
    Ok(json!({ "id": id, "name": name, "version": format!("v{number}"), "protocol": protocol, "metrics": metrics }))
}

async fn list_evaluations(State(state): State<ApiState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let list = state
        .registry
        .evaluations(&name)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(serde_json::to_value(list).map_err(|e| ApiError::internal(&e))?))
}

/// The query of a forecast.
#[derive(Debug, Deserialize)]
pub struct ForecastQuery {
    pub station: Option<String>,
    /// The hour forecast (RFC 3339); the whole horizon when absent.
    pub at: Option<String>,
    /// Forecast from this hour instead of the newest data.
    pub origin: Option<String>,
    /// Comma-separated confidence levels; the model's when absent.
    pub confidence: Option<String>,
    pub version: Option<String>,
}

async fn forecast_named(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(query): Query<ForecastQuery>,
) -> Result<Json<Forecast>, ApiError> {
    answer(&state, &name, query, None).await
}

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
    let answer = forecast::forecast(name, &stored.version, model, &data, origin, &request).map_err(forecast_error)?;
    metrics::histogram!("airq_predictive_forecast_duration_seconds").record(started.elapsed().as_secs_f64());
    Ok(Json(answer))
}

async fn openapi() -> Json<Value> {
    Json(openapi_document())
}

/// The OpenAPI 3.1 description of this API.
pub fn openapi_document() -> Value {
    let mut spec_schema = serde_json::to_value(schemars::schema_for!(ModelSpec)).unwrap_or_default();
    let mut schemas = serde_json::Map::new();
    if let Some(Value::Object(defs)) = spec_schema.as_object_mut().and_then(|o| o.remove("$defs")) {
        schemas.extend(defs);
    }
    let mut evaluate_schema = serde_json::to_value(schemars::schema_for!(EvaluateRequest)).unwrap_or_default();
    if let Some(o) = evaluate_schema.as_object_mut() {
        o.remove("$schema");
    }
    if let Some(o) = spec_schema.as_object_mut() {
        o.remove("$schema");
    }
    let err = |d: &str| json!({ "description": d, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } });
    let name = json!({ "name": "name", "in": "path", "required": true, "schema": { "type": "string" },
                       "description": "The model's name (its PredictiveModel's)" });
    let forecast_params = json!([
        { "name": "station", "in": "query", "required": true, "schema": { "type": "string" } },
        { "name": "at", "in": "query", "schema": { "type": "string", "format": "date-time" }, "description": "The hour forecast; every hour of the horizon when absent" },
        { "name": "origin", "in": "query", "schema": { "type": "string", "format": "date-time" }, "description": "Forecast from this hour instead of the newest data" },
        { "name": "confidence", "in": "query", "schema": { "type": "string" }, "description": "Comma-separated levels, e.g. 0.8,0.9" },
        { "name": "version", "in": "query", "schema": { "type": "string" }, "description": "v1, v2…; the newest when absent" }
    ]);
    let named_forecast_params: Vec<Value> = std::iter::once(name.clone())
        .chain(forecast_params.as_array().cloned().unwrap_or_default())
        .collect();
    let forecast_responses = json!({
        "200": { "description": "The forecast", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Forecast" } } } },
        "404": err("Unknown model or station, or no data for the station"),
        "409": err("The model has no trained version yet"),
        "422": err("A time before the origin or beyond the horizon, or an unsupported confidence level")
    });
    schemas.insert("ModelSpec".into(), spec_schema);
    schemas.insert("EvaluateRequest".into(), evaluate_schema);
    schemas.insert(
        "Error".into(),
        json!({ "type": "object", "properties": { "error": { "type": "object", "properties": {
        "code": { "type": "string" }, "message": { "type": "string" } } } } }),
    );
    schemas.insert("Forecast".into(), json!({ "type": "object", "properties": {
        "model": { "type": "string" }, "version": { "type": "string" }, "algorithm": { "type": "string" },
        "pollutant": { "type": "string" }, "unit": { "type": "string" }, "station": { "type": "string" },
        "origin": { "type": "string", "format": "date-time" }, "fallback": { "type": "boolean" },
        "points": { "type": "array", "items": { "type": "object", "properties": {
            "time": { "type": "string", "format": "date-time" }, "horizonHours": { "type": "integer" },
            "value": { "type": "number" },
            "intervals": { "type": "array", "items": { "type": "object", "properties": {
                "confidence": { "type": "number" }, "lower": { "type": "number" }, "upper": { "type": "number" } } } } } } } } }));
    schemas.insert(
        "Version".into(),
        json!({ "type": "object", "properties": {
        "name": { "type": "string" }, "version": { "type": "string" }, "algorithm": { "type": "string" },
        "pollutant": { "type": "string" }, "spec": { "$ref": "#/components/schemas/ModelSpec" },
        "revision": { "type": "string" }, "metrics": { "type": "object" }, "artifactBytes": { "type": "integer" },
        "trainSeconds": { "type": "number" }, "createdAt": { "type": "string", "format": "date-time" } } }),
    );
    schemas.insert(
        "Training".into(),
        json!({ "type": "object", "properties": {
        "id": { "type": "integer" }, "name": { "type": "string" },
        "status": { "type": "string", "enum": ["running", "succeeded", "failed"] },
        "source": { "type": "string", "enum": ["database", "upload"] },
        "version": { "$ref": "#/components/schemas/Version" }, "error": { "type": "string" } } }),
    );
    let document = json!({
        "openapi": "3.1.0",
        "info": { "title": "airq predictive API", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Forecasts with calibrated intervals; training, versions and evaluations. Through the gateway: /api/predictive/…" },
        "paths": {
            "/models": { "get": { "summary": "List models", "responses": { "200": { "description": "Models with their spec and newest version" } } } },
            "/models/{name}": { "get": { "summary": "A model with its versions", "parameters": [name],
                "responses": { "200": { "description": "The model" }, "404": err("No such model") } } },
            "/models/{name}/spec": {
                "get": { "summary": "The training parameters", "parameters": [name],
                    "responses": { "200": { "description": "The spec", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ModelSpec" } } } }, "404": err("No spec") } },
                "put": { "summary": "Change the training parameters", "parameters": [name],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ModelSpec" } } } },
                    "responses": { "200": { "description": "The stored spec" }, "422": err("The spec is not valid; the message names the field") } } },
            "/models/{name}/train": { "post": { "summary": "Train a new version", "parameters": [name],
                "requestBody": { "content": {
                    "application/json": { "schema": { "type": "object", "properties": { "spec": { "$ref": "#/components/schemas/ModelSpec" } } } },
                    "text/csv": { "schema": { "type": "string" }, "description": "A CSV file in the Beijing layout to train from" },
                    "application/gzip": { "schema": { "type": "string", "format": "binary" } } } },
                "responses": { "202": { "description": "Training started", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Training" } } } },
                               "404": err("No spec for the model"), "422": err("Bad spec or data that cannot be trained on") } } },
            "/models/{name}/trainings/{id}": { "get": { "summary": "A training's state", "parameters": [name, { "name": "id", "in": "path", "required": true, "schema": { "type": "integer" } }],
                "responses": { "200": { "description": "The training", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Training" } } } }, "404": err("No such training") } } },
            "/models/{name}/versions": { "get": { "summary": "Stored versions, newest first", "parameters": [name],
                "responses": { "200": { "description": "Versions", "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/Version" } } } } }, "404": err("No such model") } } },
            "/models/{name}/evaluate": { "post": { "summary": "Run the evaluation protocol and store the scores", "parameters": [name],
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/EvaluateRequest" } } } },
                "responses": { "200": { "description": "The scores" }, "404": err("No spec"), "422": err("Bad periods or no data in them") } } },
            "/models/{name}/evaluations": { "get": { "summary": "Stored evaluations", "parameters": [name], "responses": { "200": { "description": "Evaluations, newest first" } } } },
            "/models/{name}/forecast": { "get": { "summary": "Forecast with intervals", "parameters": named_forecast_params,
                "responses": forecast_responses } },
            "/forecast": { "get": { "summary": "Forecast from the model this service serves", "parameters": forecast_params, "responses": forecast_responses } }
        },
        "components": { "schemas": schemas }
    });
    // Schemas generated from the Rust types refer to `#/$defs/…`; in the document they are components.
    let text = document.to_string().replace("#/$defs/", "#/components/schemas/");
    serde_json::from_str(&text).unwrap_or(document)
}

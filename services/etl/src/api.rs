//! The loading API: start a load, follow it, list past runs and what they refused.
//!
//! | method | path | |
//! | --- | --- | --- |
//! | POST | `/loads` | start a load: `{"name": "...", "spec": {"source": …, "mode": …, "backfill": …}}` → 202 with the run |
//! | GET | `/loads` | runs, newest first (`?name=`, `?limit=`) |
//! | GET | `/loads/{id}` | one run with its counters, while it runs and after |
//! | GET | `/loads/{id}/rejected` | the values it refused, with the reason (`?limit=`) |
//! | GET | `/openapi.json` | this API's OpenAPI 3.1 description |

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use airq_core::http::ApiError;
use airq_core::store::{LoadRun, RejectedRow, Store};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use indicatif::ProgressBar;
use serde::Deserialize;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::load::{self, LoadRequest, LoadSpec};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    /// Names of the loads this process runs now: a second request for one of them is refused.
    pub running: Arc<Mutex<HashSet<String>>>,
    /// Cancelled at shutdown: running loads stop between batches and are recorded as stopped.
    pub stop: CancellationToken,
    /// The OpenAQ API key from the service's configuration.
    pub openaq_api_key: Option<String>,
}

impl ApiState {
    pub fn new(store: Store, openaq_api_key: Option<String>) -> Self {
        Self {
            store,
            running: Arc::default(),
            stop: CancellationToken::new(),
            openaq_api_key,
        }
    }
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/loads", post(start_load).get(list_loads))
        .route("/loads/{id}", get(get_load))
        .route("/loads/{id}/rejected", get(get_rejected))
        .route("/openapi.json", get(openapi))
        .with_state(state)
}

/// A load request.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartLoad {
    /// The load's name: runs of one name share a watermark. Default: the source's kind.
    #[serde(default)]
    pub name: Option<String>,
    /// What to load: an EtlSchedule's `source`, `mode` and `backfill`.
    pub spec: LoadSpec,
    /// Files or windows read at the same time (1–16, default 2).
    #[serde(default)]
    pub parallelism: Option<usize>,
}

fn validate(spec: &LoadSpec) -> Result<(), ApiError> {
    if spec.source.kind() == "invalid" {
        return Err(ApiError::invalid(
            "spec.source: set exactly one of csv, openaq or openMeteo",
        ));
    }
    if spec.mode == airq_api::etl::LoadMode::Backfill && spec.backfill.is_none() {
        return Err(ApiError::invalid(
            "spec.backfill: mode backfill needs backfill.from and backfill.to",
        ));
    }
    Ok(())
}

/// Starts a load; follow it at `/loads/{id}`.
#[utoipa::path(post, path = "/loads", tag = "etl", request_body = StartLoad,
    responses((status = 202, description = "The load started: its run", body = LoadRun),
        (status = 409, description = "A load of that name is already running", body = airq_core::openapi::ErrorBody),
        (status = 422, description = "The request is not a valid load; the message names the field", body = airq_core::openapi::ErrorBody)))]
async fn start_load(
    State(state): State<ApiState>,
    body: Result<Json<StartLoad>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<LoadRun>), ApiError> {
    let Json(body) =
        body.map_err(|e| ApiError::invalid(format!("the body is not a load request: {}", e.body_text())))?;
    validate(&body.spec)?;
    let parallelism = body.parallelism.unwrap_or(2);
    if !(1..=16).contains(&parallelism) {
        return Err(ApiError::invalid(format!(
            "parallelism {parallelism} is not between 1 and 16"
        )));
    }
    let name = body.name.unwrap_or_else(|| body.spec.source.kind().to_owned());
    {
        let mut running = state.running.lock().unwrap_or_else(|p| p.into_inner());
        if !running.insert(name.clone()) {
            return Err(ApiError::conflict(format!(
                "load {name:?} is already running in this service"
            )));
        }
    }
    let request = LoadRequest {
        name: name.clone(),
        spec: body.spec,
        requested_by: "api".to_owned(),
        parallelism,
        openaq_api_key: state.openaq_api_key.clone(),
    };
    let (started_tx, started_rx) = oneshot::channel();
    let task_state = state.clone();
    tokio::spawn(async move {
        let result = load::run_reporting_start(
            &task_state.store,
            &request,
            &ProgressBar::hidden(),
            &task_state.stop,
            move |id| {
                let _ = started_tx.send(id);
            },
        )
        .await;
        if let Err(e) = result {
            tracing::warn!(load = %request.name, error = %e, "load requested through the API failed");
        }
        task_state
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&request.name);
    });
    // The run is recorded before anything is read; a failure before that (e.g. the database) has no run id.
    let id = started_rx
        .await
        .map_err(|_| ApiError::invalid(format!("load {name:?} could not start; see the service's log")))?;
    let run = state
        .store
        .run(id)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| ApiError::not_found(format!("load run {id} disappeared")))?;
    Ok((StatusCode::ACCEPTED, Json(run)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only the runs of this load.
    name: Option<String>,
    /// At most this many (1–1000, default 50).
    limit: Option<i64>,
}

/// Load runs, newest first.
#[utoipa::path(get, path = "/loads", tag = "etl", params(ListQuery),
    responses((status = 200, description = "Runs", body = [LoadRun])))]
async fn list_loads(
    State(state): State<ApiState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<LoadRun>>, ApiError> {
    let limit = query.limit.unwrap_or(50).clamp(1, 1000);
    let runs = state
        .store
        .runs(query.name.as_deref(), limit)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(runs))
}

fn run_id(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .map_err(|_| ApiError::invalid(format!("load run id {text:?} is not a number")))
}

/// One load run with its counters, while it runs and after.
#[utoipa::path(get, path = "/loads/{id}", tag = "etl", params(("id" = i64, Path, description = "The load run's id")),
    responses((status = 200, description = "The run", body = LoadRun),
        (status = 404, description = "No such run", body = airq_core::openapi::ErrorBody)))]
async fn get_load(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Json<LoadRun>, ApiError> {
    let id = run_id(&id)?;
    state
        .store
        .run(id)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no load run {id}")))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LimitQuery {
    /// At most this many (1–10000, default 100).
    limit: Option<i64>,
}

/// The values a run refused, with the reason.
#[utoipa::path(get, path = "/loads/{id}/rejected", tag = "etl", params(("id" = i64, Path, description = "The load run's id"), LimitQuery),
    responses((status = 200, description = "Refused values", body = [RejectedRow]),
        (status = 404, description = "No such run", body = airq_core::openapi::ErrorBody)))]
async fn get_rejected(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(query): Query<LimitQuery>,
) -> Result<Json<Vec<RejectedRow>>, ApiError> {
    let id = run_id(&id)?;
    if state.store.run(id).await.map_err(|e| ApiError::internal(&e))?.is_none() {
        return Err(ApiError::not_found(format!("no load run {id}")));
    }
    let limit = query.limit.unwrap_or(100).clamp(1, 10_000);
    let rows = state
        .store
        .rejected(id, limit)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(rows))
}

async fn openapi() -> impl axum::response::IntoResponse {
    static DOCUMENT: std::sync::OnceLock<axum::body::Bytes> = std::sync::OnceLock::new();
    airq_core::openapi::served(&DOCUMENT, openapi_document)
}

airq_core::schema_from_schemars!(StartLoad);

/// This API's OpenAPI 3.1 description, generated from its handlers and their types; the request's schema is the
/// one the EtlSchedule CRD is generated from.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "airq ETL API", description = "Start loads of measurements and follow them."),
    paths(start_load, list_loads, get_load, get_rejected),
    components(schemas(airq_core::openapi::ErrorBody, airq_core::openapi::ErrorDetail)),
    tags((name = "etl", description = "Loads of measurements from external services and files"))
)]
pub struct Doc;

/// This API's OpenAPI description, with the `servers` entry of its place behind the gateway (`/api/etl`).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    airq_core::openapi::behind_gateway(
        <Doc as utoipa::OpenApi>::openapi(),
        airq_api::paths::ETL,
        env!("CARGO_PKG_VERSION"),
    )
}

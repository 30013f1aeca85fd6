//! The view data API the dashboard reads (and anyone may call through the gateway).
//!
//! | method | path | |
//! | --- | --- | --- |
//! | GET | `/api/stations` | every station with the newest value, index and category of each pollutant |
//! | GET | `/api/stations/{code}` | one station, the same way |
//! | GET | `/api/stations/{code}/series` | `?pollutant=&from=&to=&points=`: min/mean/max per time bucket, gaps as `null` |
//! | GET | `/api/stations/{code}/forecast` | `?pollutant=&confidence=0.8,0.9`: the forecast from the station's newest data |
//! | GET | `/api/compare` | `?pollutant=&stations=A,B&from=&to=&points=`: several stations on the same buckets |
//! | GET | `/api/ops` | the anomalies of the last day, the newest loads, the models and their scores, and the extent of the stored data |
//! | GET | `/api/anomalies` | `?hours=24`: the anomalies open now and those that closed in the last `hours` (1–720), from every part |
//! | GET | `/api/openapi.json` | this API's OpenAPI 3.1 description |
//!
//! Answers carry an ETag and `Cache-Control`; errors are `{"error": {"code", "message"}}`.

use airq_api::paths::front as paths;
use std::collections::BTreeMap;

use airq_core::http::ApiError;
use airq_core::parameter::{Kind, Parameter};
use airq_core::store::Station;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::AppState;
use crate::caching::{self, Freshness};
use crate::predictive::PredictiveError;
use crate::view::{self, CATEGORIES, Category, Columns, HOUR, Plan, rfc3339};

/// Data views may be reused for a minute: loads add data hourly at most.
const DATA_FRESHNESS: Freshness = Freshness::Seconds(60);
/// Points of a series when the request does not say.
const DEFAULT_POINTS: usize = 500;
/// Range of a series when the request gives no `from`: the week before `to`.
const DEFAULT_SPAN: i64 = 7 * 24 * HOUR;
/// Load runs in the operations view.
const OPS_LOADS: i64 = 25;
/// Anomalies in one answer at most, open ones first.
const ANOMALIES_LIMIT: i64 = 200;
/// Hours of closed anomalies the operations view shows, and the most `/api/anomalies` may ask for.
const ANOMALY_HOURS: i64 = 24;
const ANOMALY_HOURS_MAX: i64 = 30 * 24;

/// The API's routes, at the paths `airq_api::paths::front` reserves for them.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(paths::STATIONS, get(list_stations))
        .route(&format!("{}/{{code}}", paths::STATIONS), get(get_station))
        .route(&format!("{}/{{code}}/series", paths::STATIONS), get(series))
        .route(&format!("{}/{{code}}/forecast", paths::STATIONS), get(forecast))
        .route(paths::COMPARE, get(compare))
        .route(paths::OPS, get(ops))
        .route(paths::ANOMALIES, get(anomalies))
        .route(paths::OPENAPI, get(openapi))
        .with_state(state)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(&e)
}

/// Display names of the pollutants.
fn label(p: Parameter) -> &'static str {
    match p {
        Parameter::Pm25 => "PM2.5",
        Parameter::Pm10 => "PM10",
        Parameter::No2 => "NO₂",
        Parameter::O3 => "O₃",
        Parameter::So2 => "SO₂",
        Parameter::Co => "CO",
        _ => p.code(),
    }
}

fn pollutant(text: Option<&str>) -> Result<Parameter, ApiError> {
    let text = text.unwrap_or("pm25");
    text.parse::<Parameter>()
        .ok()
        .filter(|p| p.kind() == Kind::Pollutant)
        .ok_or_else(|| {
            let known: Vec<&str> = Parameter::POLLUTANTS.iter().map(|p| p.code()).collect();
            ApiError::invalid(format!(
                "pollutant={text:?} is not one airq shows: use one of {}",
                known.join(", ")
            ))
        })
}

fn time(field: &'static str, text: Option<&str>) -> Result<Option<i64>, ApiError> {
    text.filter(|t| !t.trim().is_empty())
        .map(|t| view::parse_time(field, t))
        .transpose()
        .map_err(|e| ApiError::invalid(e.to_string()))
}

fn points(text: Option<&str>) -> Result<usize, ApiError> {
    match text {
        None => Ok(DEFAULT_POINTS),
        Some(t) => t
            .trim()
            .parse()
            .map_err(|_| ApiError::invalid(format!("points={t:?} is not a whole number"))),
    }
}

async fn stations(state: &AppState) -> Result<Vec<Station>, ApiError> {
    state.store.stations().await.map_err(internal)
}

async fn station(state: &AppState, code: &str) -> Result<Station, ApiError> {
    stations(state)
        .await?
        .into_iter()
        .find(|s| s.code == code)
        .ok_or_else(|| unknown_station(code))
}

fn unknown_station(code: &str) -> ApiError {
    ApiError::not_found(format!("no station {code:?}; the stations are listed at api/stations"))
}

/// The newest value of a pollutant at a station, with its index and category.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct Latest {
    /// First and newest hour with a value (RFC 3339).
    first: String,
    last: String,
    value: f64,
    /// `ug/m3` (µg/m³) or `mg/m3` (CO).
    #[schema(value_type = String)]
    unit: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    aqi: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    category: Option<Category>,
}

/// A station with the newest value of each pollutant it measures.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct StationView {
    #[serde(flatten)]
    station: Station,
    /// By pollutant code (`pm25`…).
    pollutants: BTreeMap<String, Latest>,
}

/// A pollutant the dashboard shows.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct PollutantInfo {
    /// `pm25`, `pm10`, `no2`, `o3`, `so2` or `co`.
    #[schema(value_type = String)]
    code: &'static str,
    #[schema(value_type = String)]
    label: &'static str,
    #[schema(value_type = String)]
    unit: &'static str,
}

/// Every station, the pollutants and the categories of the index.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct StationList {
    stations: Vec<StationView>,
    pollutants: Vec<PollutantInfo>,
    categories: Vec<Category>,
}

async fn station_views(state: &AppState, only: Option<&str>) -> Result<Vec<StationView>, ApiError> {
    let mut views: Vec<StationView> = stations(state)
        .await?
        .into_iter()
        .filter(|s| only.is_none_or(|code| s.code == code))
        .map(|station| StationView {
            station,
            pollutants: BTreeMap::new(),
        })
        .collect();
    for s in state.views.series_states().await.map_err(internal)? {
        let Some(view) = views.iter_mut().find(|v| v.station.id == s.station_id) else {
            continue;
        };
        let Ok(parameter) = s.parameter.parse::<Parameter>() else {
            continue;
        };
        view.pollutants.insert(
            s.parameter.clone(),
            Latest {
                first: rfc3339(s.first),
                last: rfc3339(s.last),
                value: s.last_value,
                unit: parameter.unit(),
                aqi: view::index(&s.parameter, s.last_value).map(|a| a.round() as u32),
                category: view::category(&s.parameter, s.last_value),
            },
        );
    }
    Ok(views)
}

fn pollutant_list() -> Vec<PollutantInfo> {
    Parameter::POLLUTANTS
        .iter()
        .map(|p| PollutantInfo {
            code: p.code(),
            label: label(*p),
            unit: p.unit(),
        })
        .collect()
}

/// Every station with the newest value, index and category of each pollutant.
#[utoipa::path(get, path = "/api/stations", tag = "dashboard",
    responses((status = 200, description = "Every station", body = StationList)))]
async fn list_stations(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let views = station_views(&state, None).await?;
    let list = StationList {
        stations: views,
        pollutants: pollutant_list(),
        categories: CATEGORIES.to_vec(),
    };
    Ok(caching::json(&headers, &list, DATA_FRESHNESS))
}

/// One station with the newest value of each pollutant.
#[utoipa::path(get, path = "/api/stations/{code}", tag = "dashboard", params(("code" = String, Path, description = "The station's code, e.g. `Dongsi`")),
    responses((status = 200, description = "The station", body = StationView),
        (status = 404, description = "No such station", body = airq_core::openapi::ErrorBody)))]
async fn get_station(
    State(state): State<AppState>,
    Path(code): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // One read of the stations: the view of an unknown code is empty.
    let view = station_views(&state, Some(&code))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| unknown_station(&code))?;
    Ok(caching::json(&headers, &view, DATA_FRESHNESS))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    /// `pm25` (default), `pm10`, `no2`, `o3`, `so2` or `co`.
    pollutant: Option<String>,
    /// YYYY-MM-DD, RFC 3339 or Unix seconds; a week before `to` by default.
    from: Option<String>,
    /// The end (exclusive); the hour after the newest value by default.
    to: Option<String>,
    /// The most buckets to answer (2–5000, default 500).
    points: Option<String>,
    /// Comma-separated station codes (compare only; every station when absent).
    stations: Option<String>,
}

/// The buckets a request asks for: its range, or the week up to the newest of `newest` (Unix seconds).
fn plan(query: &RangeQuery, newest: Option<i64>) -> Result<Plan, ApiError> {
    let to = time("to", query.to.as_deref())?;
    let from = time("from", query.from.as_deref())?;
    let to = to.or(newest.map(|n| n + HOUR)).unwrap_or(0);
    let from = from.unwrap_or(to - DEFAULT_SPAN);
    Plan::new(from, to, points(query.points.as_deref())?).map_err(|e| ApiError::invalid(e.to_string()))
}

/// The first and newest hour with a value (RFC 3339).
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Extent {
    first: String,
    last: String,
}

/// What a view's buckets are: the pollutant, and the range cut into buckets of `bucketSeconds`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct Buckets {
    #[schema(value_type = String)]
    pollutant: &'static str,
    #[schema(value_type = String)]
    label: &'static str,
    #[schema(value_type = String)]
    unit: &'static str,
    from: String,
    to: String,
    /// Unix seconds of the first bucket; bucket `i` starts at `start + i × bucketSeconds`.
    start: i64,
    bucket_seconds: i64,
}

impl Buckets {
    fn new(pollutant: Parameter, plan: &Plan) -> Self {
        Self {
            pollutant: pollutant.code(),
            label: label(pollutant),
            unit: pollutant.unit(),
            from: rfc3339(plan.from),
            to: rfc3339(plan.to),
            start: plan.from,
            bucket_seconds: plan.width,
        }
    }
}

/// One station's series on time buckets: min, mean and max per bucket, `null` where a bucket holds no value.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct SeriesView {
    station: String,
    #[serde(flatten)]
    buckets: Buckets,
    /// Buckets that hold a value.
    filled: usize,
    extent: Extent,
    #[serde(flatten)]
    columns: Columns,
}

/// Several stations' series on the same buckets.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct CompareView {
    #[serde(flatten)]
    buckets: Buckets,
    /// Buckets.
    count: usize,
    series: Vec<CompareSeries>,
}

/// One station of a comparison.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct CompareSeries {
    station: String,
    name: String,
    filled: usize,
    min: Vec<Option<f64>>,
    mean: Vec<Option<f64>>,
    max: Vec<Option<f64>>,
}

/// A station's series of one pollutant: min, mean and max per time bucket, gaps as `null`.
#[utoipa::path(get, path = "/api/stations/{code}/series", tag = "dashboard", params(("code" = String, Path, description = "The station's code, e.g. `Dongsi`"), RangeQuery),
    responses((status = 200, description = "The series", body = SeriesView),
        (status = 404, description = "No such station, or no values in the range (`no_data`)", body = airq_core::openapi::ErrorBody),
        (status = 422, description = "A bad pollutant, time or number of points", body = airq_core::openapi::ErrorBody)))]
async fn series(
    State(state): State<AppState>,
    Path(code): Path<String>,
    Query(query): Query<RangeQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let pollutant = pollutant(query.pollutant.as_deref())?;
    let station = station(&state, &code).await?;
    let extent = state
        .views
        .extent(station.id, pollutant.code())
        .await
        .map_err(internal)?;
    let Some((first, last)) = extent else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_data",
            format!("{} has no {} values", station.name, label(pollutant)),
        ));
    };
    let plan = plan(&query, Some(last))?;
    if plan.to <= first || plan.from > last {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_data",
            format!(
                "{} has no {} values from {} to {}: its data spans {} to {}",
                station.name,
                label(pollutant),
                rfc3339(plan.from),
                rfc3339(plan.to),
                rfc3339(first),
                rfc3339(last)
            ),
        ));
    }
    let rows = state
        .views
        .buckets(&[station.id], pollutant.code(), plan.from, plan.to, plan.width)
        .await
        .map_err(internal)?;
    let columns = Columns::from_rows(&plan, &rows);
    let view = SeriesView {
        station: station.code,
        buckets: Buckets::new(pollutant, &plan),
        filled: columns.filled(),
        extent: Extent {
            first: rfc3339(first),
            last: rfc3339(last),
        },
        columns,
    };
    Ok(caching::json(&headers, &view, DATA_FRESHNESS))
}

/// Several stations' series of one pollutant on the same buckets.
#[utoipa::path(get, path = "/api/compare", tag = "dashboard", params(RangeQuery),
    responses((status = 200, description = "The series", body = CompareView),
        (status = 404, description = "An unknown station", body = airq_core::openapi::ErrorBody),
        (status = 422, description = "A bad pollutant, time or number of points", body = airq_core::openapi::ErrorBody)))]
async fn compare(
    State(state): State<AppState>,
    Query(query): Query<RangeQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let pollutant = pollutant(query.pollutant.as_deref())?;
    let all = stations(&state).await?;
    let chosen: Vec<Station> = match query.stations.as_deref().filter(|s| !s.trim().is_empty()) {
        None => all,
        Some(list) => {
            let mut chosen = Vec::new();
            for code in list.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                let found = all
                    .iter()
                    .find(|s| s.code == code)
                    .ok_or_else(|| unknown_station(code))?;
                chosen.push(found.clone());
            }
            chosen
        }
    };
    let newest = state
        .views
        .series_states()
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|s| s.parameter == pollutant.code() && chosen.iter().any(|c| c.id == s.station_id))
        .map(|s| s.last)
        .max();
    let plan = plan(&query, newest)?;
    let ids: Vec<i64> = chosen.iter().map(|s| s.id).collect();
    let rows = state
        .views
        .buckets(&ids, pollutant.code(), plan.from, plan.to, plan.width)
        .await
        .map_err(internal)?;
    let series = chosen
        .iter()
        .map(|s| {
            let columns = Columns::from_rows(&plan, rows.iter().filter(|r| r.station_id == s.id));
            CompareSeries {
                station: s.code.clone(),
                name: s.name.clone(),
                filled: columns.filled(),
                min: columns.min,
                mean: columns.mean,
                max: columns.max,
            }
        })
        .collect();
    let view = CompareView {
        buckets: Buckets::new(pollutant, &plan),
        count: plan.count,
        series,
    };
    Ok(caching::json(&headers, &view, DATA_FRESHNESS))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ForecastQuery {
    /// `pm25` (default), `pm10`, `no2`, `o3`, `so2` or `co`.
    pollutant: Option<String>,
    /// Comma-separated levels, e.g. `0.8,0.9`; the model's when absent.
    confidence: Option<String>,
}

fn forecast_error(e: PredictiveError) -> ApiError {
    match &e {
        PredictiveError::NotConfigured | PredictiveError::Unreachable(_) => {
            tracing::warn!(error = %e, "no forecast");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "forecast_unavailable",
                format!("forecasts are unavailable: {e}"),
            )
        }
        PredictiveError::NoModel { .. } => ApiError::new(StatusCode::NOT_FOUND, "no_model", e.to_string()),
        PredictiveError::Refused {
            status,
            message,
            training: Some(training),
        } => ApiError::new(
            StatusCode::from_u16(*status).unwrap_or(StatusCode::CONFLICT),
            "training",
            message.clone(),
        )
        .with("training", training.clone())
        .retry_after(5),
        PredictiveError::Refused { status, message, .. } => ApiError::new(
            StatusCode::from_u16(*status).unwrap_or(StatusCode::NOT_FOUND),
            "no_forecast",
            message.clone(),
        ),
    }
}

/// The forecast from the station's newest data, by the model that serves the pollutant there.
#[utoipa::path(get, path = "/api/stations/{code}/forecast", tag = "dashboard", params(("code" = String, Path, description = "The station's code, e.g. `Dongsi`"), ForecastQuery),
    responses((status = 200, description = "The predictive service's forecast", body = airq_predictive::forecast::Forecast),
        (status = 404, description = "No such station, or no model forecasts the pollutant there (`no_model`)", body = airq_core::openapi::ErrorBody),
        (status = 409, description = "The model is still training (`training`, with its progress and a Retry-After)", body = airq_core::openapi::ErrorBody),
        (status = 422, description = "A bad pollutant or confidence level", body = airq_core::openapi::ErrorBody),
        (status = 503, description = "The predictive service did not answer", body = airq_core::openapi::ErrorBody)))]
async fn forecast(
    State(state): State<AppState>,
    Path(code): Path<String>,
    Query(query): Query<ForecastQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let pollutant = pollutant(query.pollutant.as_deref())?;
    let station = station(&state, &code).await?;
    let confidence = query.confidence.unwrap_or_default();
    if confidence.split(',').filter(|c| !c.trim().is_empty()).any(|c| {
        c.trim()
            .parse::<f64>()
            .map_or(true, |v| !(0.0..1.0).contains(&v) || v == 0.0)
    }) {
        return Err(ApiError::invalid(format!(
            "confidence={confidence:?}: give levels between 0 and 1, e.g. 0.8,0.9"
        )));
    }
    let forecast = state
        .predictive
        .forecast(&station.code, pollutant.code(), &confidence)
        .await
        .map_err(forecast_error)?;
    Ok(caching::json(&headers, &forecast, DATA_FRESHNESS))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AnomaliesQuery {
    /// Hours of closed anomalies to include (1–720, default 24).
    hours: Option<String>,
}

/// The anomalies open now and those closed in the last hours.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct AnomalyList {
    /// How many are open.
    open: usize,
    hours: i64,
    anomalies: Vec<airq_core::store::StoredAnomaly>,
}

/// A station's series of one pollutant in the operations view.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct StoredSeries {
    station: String,
    pollutant: String,
    first: String,
    last: String,
    /// The newest value.
    value: f64,
}

/// The operations view: anomalies of the last day, the newest loads, the models and the stored data.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct OpsView {
    anomalies: Vec<airq_core::store::StoredAnomaly>,
    loads: Vec<airq_core::store::LoadRun>,
    /// Every model (the predictive service's `GET /models`); none when it did not answer.
    #[schema(value_type = Option<Vec<airq_predictive::api::ModelInfo>>)]
    models: Option<std::sync::Arc<Vec<Value>>>,
    /// Why the models are missing.
    models_error: Option<String>,
    series: Vec<StoredSeries>,
}

/// The anomalies open now and those closed in the last `hours`.
async fn recent_anomalies(state: &AppState, hours: i64) -> Result<Vec<airq_core::store::StoredAnomaly>, ApiError> {
    let since = chrono::Utc::now() - chrono::Duration::hours(hours);
    state.store.anomalies(since, ANOMALIES_LIMIT).await.map_err(internal)
}

/// The anomalies open now and those that closed in the last `hours`, from every part of the platform.
#[utoipa::path(get, path = "/api/anomalies", tag = "dashboard", params(AnomaliesQuery),
    responses((status = 200, description = "Anomalies, open ones first", body = AnomalyList),
        (status = 422, description = "A bad number of hours", body = airq_core::openapi::ErrorBody)))]
async fn anomalies(
    State(state): State<AppState>,
    Query(query): Query<AnomaliesQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let hours = match query.hours.as_deref() {
        None => ANOMALY_HOURS,
        Some(text) => text
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|h| (1..=ANOMALY_HOURS_MAX).contains(h))
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "hours={text:?}: give a whole number of hours from 1 to {ANOMALY_HOURS_MAX}"
                ))
            })?,
    };
    let found = recent_anomalies(&state, hours).await?;
    let open = found.iter().filter(|a| a.is_open()).count();
    Ok(caching::json(
        &headers,
        &AnomalyList {
            open,
            hours,
            anomalies: found,
        },
        Freshness::Revalidate,
    ))
}

/// The operations view: the anomalies of the last day, the newest loads, the models and their scores, and the
/// extent of the stored data.
#[utoipa::path(get, path = "/api/ops", tag = "dashboard", responses((status = 200, description = "The view", body = OpsView)))]
async fn ops(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let anomalies = recent_anomalies(&state, ANOMALY_HOURS).await?;
    let loads = state.store.runs(None, OPS_LOADS).await.map_err(internal)?;
    let stations = stations(&state).await?;
    let series = state
        .views
        .series_states()
        .await
        .map_err(internal)?
        .into_iter()
        .map(|s| StoredSeries {
            station: stations
                .iter()
                .find(|st| st.id == s.station_id)
                .map_or_else(String::new, |st| st.code.clone()),
            pollutant: s.parameter,
            first: rfc3339(s.first),
            last: rfc3339(s.last),
            value: s.last_value,
        })
        .collect();
    let (models, models_error) = match state.predictive.models().await {
        Ok(models) => (Some(models), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let view = OpsView {
        anomalies,
        loads,
        models,
        models_error,
        series,
    };
    Ok(caching::json(&headers, &view, Freshness::Revalidate))
}

async fn openapi() -> impl axum::response::IntoResponse {
    static DOCUMENT: std::sync::OnceLock<axum::body::Bytes> = std::sync::OnceLock::new();
    airq_core::openapi::served(&DOCUMENT, openapi_document)
}

/// The dashboard's API, generated from its handlers and their types.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list_stations, get_station, series, forecast, compare, ops, anomalies),
    components(schemas(airq_core::openapi::ErrorBody, airq_core::openapi::ErrorDetail)),
    tags((name = "dashboard", description = "The data behind the dashboard's views; anyone may call it"))
)]
pub struct Doc;

/// One OpenAPI 3.1 document for everything a key can call through the gateway: the dashboard's API, the predictive
/// and ETL APIs under their prefixes, and the gateway's admin API. Each part is generated from its service's
/// handlers; the document's server is the gateway (every path is called on it).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi as _;
    use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
    let prefix = |p: &'static str| p.trim_end_matches('/');
    let mut doc = Doc::openapi()
        .nest(
            prefix(airq_api::paths::PREDICTIVE),
            airq_predictive::api::Doc::openapi(),
        )
        .nest(prefix(airq_api::paths::ETL), airq_etl::api::Doc::openapi())
        .merge_from(airq_gateway::admin::Doc::openapi());
    doc.info = utoipa::openapi::InfoBuilder::new()
        .title("airq API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Everything callable through the airq gateway: the dashboard's data (anyone), forecasts and models \
             (`/api/predictive`, the developers group), loads (`/api/etl`, the operators group) and the admin API \
             (`/admin`, the admin group). Give a key as `Authorization: Bearer airq_…` or `X-Api-Key: airq_…`; which \
             routes need one, and which groups may call them, is the gateway's route configuration \
             (`GET /admin/routes`). Each service also serves its own part at `openapi.json` under its prefix.",
        ))
        .build();
    doc.servers = Some(vec![
        utoipa::openapi::ServerBuilder::new()
            .url("/")
            .description(Some("the gateway that served this document"))
            .build(),
    ]);
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("airq_<id>_<secret>")
                .build(),
        ),
    );
    components.add_security_scheme(
        "apiKey",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Api-Key"))),
    );
    // A key is optional on the dashboard's routes and required elsewhere, as the routes say.
    doc.security = Some(vec![
        utoipa::openapi::security::SecurityRequirement::default(),
        utoipa::openapi::security::SecurityRequirement::new("bearer", Vec::<String>::new()),
        utoipa::openapi::security::SecurityRequirement::new("apiKey", Vec::<String>::new()),
    ]);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OpenAPI document lists what the front answers: each of its paths must be one `airq_api::paths` reserves,
    /// or an AdhocService could take it over.
    #[test]
    fn every_documented_path_is_reserved_for_the_front() {
        use utoipa::OpenApi as _;
        let documented: Vec<String> = Doc::openapi().paths.paths.keys().cloned().collect();
        assert!(documented.len() >= 7, "{documented:?}");
        for path in documented {
            assert!(
                paths::ALL.iter().any(|reserved| path.starts_with(reserved)),
                "{path} is served by the front but not in airq_api::paths::front::ALL"
            );
        }
    }

    /// The parts are merged by schema name, the first one kept: two parts may share a name only for the same schema.
    #[test]
    fn the_parts_do_not_give_one_name_to_two_schemas() {
        use utoipa::OpenApi as _;
        let parts = [
            ("dashboard", Doc::openapi()),
            ("predictive", airq_predictive::api::Doc::openapi()),
            ("etl", airq_etl::api::Doc::openapi()),
            ("admin", airq_gateway::admin::Doc::openapi()),
        ];
        let mut seen: BTreeMap<String, (&str, Value)> = BTreeMap::new();
        for (part, doc) in &parts {
            for (name, schema) in doc.components.iter().flat_map(|c| c.schemas.iter()) {
                let schema = serde_json::to_value(schema).unwrap();
                if let Some((first, earlier)) = seen.get(name) {
                    assert_eq!(earlier, &schema, "{name} means two things: in {first} and in {part}");
                } else {
                    seen.insert(name.clone(), (part, schema));
                }
            }
        }
        let whole = serde_json::to_value(openapi_document()).unwrap();
        assert!(whole["components"]["schemas"]["TrainingRun"].is_object());
        assert!(whole["paths"]["/api/predictive/models/{name}/forecast"]["get"].is_object());
        assert!(whole["paths"]["/admin/users/{name}/keys"]["post"].is_object());
        assert!(whole["paths"]["/api/etl/loads"]["post"].is_object());
    }
}

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
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

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
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Latest {
    /// First and newest hour with a value (RFC 3339).
    first: String,
    last: String,
    value: f64,
    unit: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    aqi: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    category: Option<Category>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StationView {
    #[serde(flatten)]
    station: Station,
    pollutants: BTreeMap<String, Latest>,
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

fn pollutant_list() -> Vec<Value> {
    Parameter::POLLUTANTS
        .iter()
        .map(|p| json!({ "code": p.code(), "label": label(*p), "unit": p.unit() }))
        .collect()
}

async fn list_stations(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let views = station_views(&state, None).await?;
    Ok(caching::json(
        &headers,
        &json!({ "stations": views, "pollutants": pollutant_list(), "categories": CATEGORIES }),
        DATA_FRESHNESS,
    ))
}

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

#[derive(Debug, Default, Deserialize)]
pub struct RangeQuery {
    pollutant: Option<String>,
    from: Option<String>,
    to: Option<String>,
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

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SeriesView {
    station: String,
    pollutant: &'static str,
    label: &'static str,
    unit: &'static str,
    from: String,
    to: String,
    /// Unix seconds of the first bucket; bucket `i` starts at `start + i × bucketSeconds`.
    start: i64,
    bucket_seconds: i64,
    /// Buckets that hold a value.
    filled: usize,
    extent: Value,
    #[serde(flatten)]
    columns: Columns,
}

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
        pollutant: pollutant.code(),
        label: label(pollutant),
        unit: pollutant.unit(),
        from: rfc3339(plan.from),
        to: rfc3339(plan.to),
        start: plan.from,
        bucket_seconds: plan.width,
        filled: columns.filled(),
        extent: json!({ "first": rfc3339(first), "last": rfc3339(last) }),
        columns,
    };
    Ok(caching::json(&headers, &view, DATA_FRESHNESS))
}

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
    let series: Vec<Value> = chosen
        .iter()
        .map(|s| {
            let columns = Columns::from_rows(&plan, rows.iter().filter(|r| r.station_id == s.id));
            json!({ "station": s.code, "name": s.name, "filled": columns.filled(), "min": columns.min,
                    "mean": columns.mean, "max": columns.max })
        })
        .collect();
    Ok(caching::json(
        &headers,
        &json!({
            "pollutant": pollutant.code(), "label": label(pollutant), "unit": pollutant.unit(),
            "from": rfc3339(plan.from), "to": rfc3339(plan.to), "start": plan.from,
            "bucketSeconds": plan.width, "count": plan.count, "series": series,
        }),
        DATA_FRESHNESS,
    ))
}

#[derive(Debug, Default, Deserialize)]
pub struct ForecastQuery {
    pollutant: Option<String>,
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
        PredictiveError::Refused { status, message } => ApiError::new(
            StatusCode::from_u16(*status).unwrap_or(StatusCode::NOT_FOUND),
            "no_forecast",
            message.clone(),
        ),
    }
}

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

#[derive(Debug, Default, Deserialize)]
pub struct AnomaliesQuery {
    hours: Option<String>,
}

/// The anomalies open now and those closed in the last `hours`.
async fn recent_anomalies(state: &AppState, hours: i64) -> Result<Vec<airq_core::store::StoredAnomaly>, ApiError> {
    let since = chrono::Utc::now() - chrono::Duration::hours(hours);
    state.store.anomalies(since, ANOMALIES_LIMIT).await.map_err(internal)
}

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
        &json!({ "open": open, "hours": hours, "anomalies": found }),
        Freshness::Revalidate,
    ))
}

async fn ops(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let anomalies = recent_anomalies(&state, ANOMALY_HOURS).await?;
    let loads = state.store.runs(None, OPS_LOADS).await.map_err(internal)?;
    let stations = stations(&state).await?;
    let series: Vec<Value> = state
        .views
        .series_states()
        .await
        .map_err(internal)?
        .into_iter()
        .map(|s| {
            let code = stations
                .iter()
                .find(|st| st.id == s.station_id)
                .map_or("", |st| st.code.as_str());
            json!({ "station": code, "pollutant": s.parameter, "first": rfc3339(s.first), "last": rfc3339(s.last),
                    "value": s.last_value })
        })
        .collect();
    let (models, models_error) = match state.predictive.models().await {
        Ok(models) => (Some(models), None),
        Err(e) => (None, Some(e.to_string())),
    };
    Ok(caching::json(
        &headers,
        &json!({ "anomalies": anomalies, "loads": loads, "models": models, "modelsError": models_error,
                 "series": series }),
        Freshness::Revalidate,
    ))
}

async fn openapi() -> Json<Value> {
    Json(openapi_document())
}

/// The OpenAPI 3.1 description of this API.
pub fn openapi_document() -> Value {
    let error = json!({ "description": "what is wrong", "content": { "application/json": { "schema": {
        "$ref": "#/components/schemas/Error" } } } });
    let range_parameters = json!([
        { "name": "pollutant", "in": "query", "schema": { "type": "string",
            "enum": ["pm25", "pm10", "no2", "o3", "so2", "co"], "default": "pm25" } },
        { "name": "from", "in": "query", "description": "YYYY-MM-DD, RFC 3339 or Unix seconds; a week before `to` by default",
            "schema": { "type": "string" } },
        { "name": "to", "in": "query", "description": "end (exclusive); the hour after the newest value by default",
            "schema": { "type": "string" } },
        { "name": "points", "in": "query", "description": "most buckets to answer (2–5000)",
            "schema": { "type": "integer", "default": DEFAULT_POINTS } }
    ]);
    let code = json!({ "name": "code", "in": "path", "required": true, "schema": { "type": "string" } });
    let mut series_parameters = range_parameters.as_array().cloned().unwrap_or_default();
    series_parameters.insert(0, code.clone());
    let mut compare_parameters = range_parameters.as_array().cloned().unwrap_or_default();
    compare_parameters.push(
        json!({ "name": "stations", "in": "query", "description": "comma-separated codes; all by default",
        "schema": { "type": "string" } }),
    );
    let nullable_numbers = json!({ "type": "array", "items": { "type": ["number", "null"] } });
    json!({
        "openapi": "3.1.0",
        "info": { "title": "airq front", "version": env!("CARGO_PKG_VERSION"),
            "description": "The data behind the dashboard's views. Times are UTC; concentrations are µg/m³." },
        "paths": {
            "/api/stations": { "get": { "summary": "every station with the newest value and category of each pollutant",
                "responses": { "200": { "description": "stations, pollutants and the categories' colours" } } } },
            "/api/stations/{code}": { "get": { "summary": "one station", "parameters": [code],
                "responses": { "200": { "description": "the station" }, "404": error } } },
            "/api/stations/{code}/series": { "get": {
                "summary": "a pollutant's values in time buckets: min, mean and max per bucket, null where empty",
                "parameters": series_parameters,
                "responses": { "200": { "description": "the series", "content": { "application/json": { "schema": {
                    "$ref": "#/components/schemas/Series" } } } },
                    "304": { "description": "not modified (If-None-Match)" }, "404": error, "422": error } } },
            "/api/stations/{code}/forecast": { "get": {
                "summary": "the forecast from the station's newest data, by the model that serves the pollutant",
                "parameters": [code, { "name": "pollutant", "in": "query", "schema": { "type": "string" } },
                    { "name": "confidence", "in": "query", "description": "e.g. 0.8,0.9", "schema": { "type": "string" } }],
                "responses": { "200": { "description": "the predictive service's forecast" },
                    "404": error, "503": error } } },
            "/api/compare": { "get": { "summary": "several stations on the same buckets",
                "parameters": compare_parameters, "responses": { "200": { "description": "one series per station" },
                "404": error, "422": error } } },
            "/api/ops": { "get": {
                "summary": "the anomalies of the last day, the newest loads, the models and the stored data's extent",
                "responses": { "200": { "description": "the operations view" } } } },
            "/api/anomalies": { "get": {
                "summary": "anomalies from every part of the platform: open ones, then those closed in the last hours",
                "parameters": [{ "name": "hours", "in": "query", "description": "closed in the last hours (1–720)",
                    "schema": { "type": "integer", "default": ANOMALY_HOURS } }],
                "responses": { "200": { "description": "the anomalies", "content": { "application/json": {
                    "schema": { "$ref": "#/components/schemas/Anomalies" } } } }, "422": error } } }
        },
        "components": { "schemas": {
            "Anomalies": { "type": "object", "properties": {
                "open": { "type": "integer" }, "hours": { "type": "integer" },
                "anomalies": { "type": "array", "items": { "type": "object", "properties": {
                    "id": { "type": "integer" },
                    "component": { "type": "string", "description": "gateway, etl or predictive" },
                    "signal": { "type": "string", "description": "e.g. error_ratio, load_duration_seconds, forecast_abs_error" },
                    "subject": { "type": "string", "description": "a route, a load, model/station" },
                    "reporter": { "type": "string" },
                    "openedAt": { "type": "string", "format": "date-time" },
                    "closedAt": { "type": ["string", "null"], "format": "date-time" },
                    "value": { "type": "number" }, "expected": { "type": ["number", "null"] },
                    "score": { "type": "number" }, "peakScore": { "type": "number" },
                    "detail": { "type": "string" } } } } } },
            "Error": { "type": "object", "properties": { "error": { "type": "object", "properties": {
                "code": { "type": "string" }, "message": { "type": "string" } } } } },
            "Series": { "type": "object", "properties": {
                "station": { "type": "string" }, "pollutant": { "type": "string" }, "unit": { "type": "string" },
                "from": { "type": "string", "format": "date-time" }, "to": { "type": "string", "format": "date-time" },
                "start": { "type": "integer", "description": "Unix seconds of the first bucket" },
                "bucketSeconds": { "type": "integer" }, "filled": { "type": "integer" },
                "extent": { "type": "object", "properties": { "first": { "type": "string" }, "last": { "type": "string" } } },
                "min": nullable_numbers, "mean": nullable_numbers, "max": nullable_numbers,
                "count": { "type": "array", "items": { "type": "integer" } } } }
        } }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OpenAPI document lists what the front answers: each of its paths must be one `airq_api::paths` reserves,
    /// or an AdhocService could take it over.
    #[test]
    fn every_documented_path_is_reserved_for_the_front() {
        let document = openapi_document();
        let documented = document["paths"]
            .as_object()
            .map(|p| p.keys().cloned().collect::<Vec<_>>());
        let documented = documented.unwrap_or_default();
        assert!(documented.len() >= 7, "{documented:?}");
        for path in documented {
            assert!(
                paths::ALL.iter().any(|reserved| path.starts_with(reserved)),
                "{path} is served by the front but not in airq_api::paths::front::ALL"
            );
        }
    }
}

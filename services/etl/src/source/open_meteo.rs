//! Open-Meteo air quality (`GET /v1/air-quality`): hourly arrays for one point per request, in UTC, over
//! `start_date`–`end_date` windows (or `past_days` for a first incremental load). Missing hours are `null`.

use std::collections::BTreeMap;
use std::sync::Arc;

use airq_api::etl::{GeoPoint, OpenMeteoSource};
use airq_core::parameter::Parameter;
use airq_core::store::NewStation;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::http::get_json;
use super::{Chunk, ChunkBuilder, SourceError, TimeRange, csv::parse_time};

/// The API's address when the spec names none.
pub const DEFAULT_BASE_URL: &str = "https://air-quality-api.open-meteo.com";
/// How far back an incremental load without a watermark starts (the API's `past_days` allows up to 92).
pub const FIRST_LOOKBACK_DAYS: i64 = 7;

#[derive(Debug, Deserialize)]
struct Response {
    #[serde(default)]
    hourly_units: BTreeMap<String, String>,
    hourly: Hourly,
}

#[derive(Debug, Deserialize)]
struct Hourly {
    time: Vec<String>,
    #[serde(flatten)]
    series: BTreeMap<String, Vec<Option<f64>>>,
}

fn date(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

/// Reads every point of `spec` over `range`, in windows of `chunk_days`, `parallelism` requests at a time.
pub async fn read(
    spec: OpenMeteoSource,
    range: TimeRange,
    chunk_days: u32,
    parallelism: usize,
    chunks: mpsc::Sender<Chunk>,
) -> Result<(), SourceError> {
    let base = spec.base_url.clone().unwrap_or_else(|| DEFAULT_BASE_URL.to_owned());
    let base = base.trim_end_matches('/').to_owned();
    let client = super::http::client()?;
    let mut variables = Vec::new();
    for name in &spec.hourly {
        let parameter = name.parse::<Parameter>().map_err(|e| SourceError::Read {
            input: "spec.source.openMeteo.hourly".to_owned(),
            detail: e.to_string(),
        })?;
        variables.push((name.clone(), parameter));
    }
    let mut described = ChunkBuilder::new("open-meteo");
    for point in &spec.points {
        described.station(NewStation {
            code: point.station.clone(),
            name: point.station.clone(),
            source: "openMeteo".to_owned(),
            latitude: Some(point.latitude),
            longitude: Some(point.longitude),
        });
    }
    if chunks.send(described.finish()).await.is_err() {
        return Ok(());
    }

    let now = chrono::Utc::now().timestamp();
    let from = range.from.unwrap_or(now - FIRST_LOOKBACK_DAYS * 86_400);
    // The API's end_date is inclusive: the window's last day is the day before `to`.
    let to = range.to.unwrap_or(now + 86_400);
    let step = i64::from(chunk_days.max(1)) * 86_400;
    let mut windows = Vec::new();
    let mut start = from - from.rem_euclid(86_400);
    while start < to {
        windows.push((start, (start + step).min(to)));
        start += step;
    }
    let context = Arc::new(Context {
        client,
        base,
        hourly: spec.hourly.join(","),
        variables,
        from,
        range,
        chunks,
    });
    let mut jobs = Vec::new();
    for point in &spec.points {
        for &(start, end) in &windows {
            jobs.push((point.clone(), start, end));
        }
    }
    let results = futures::stream::iter(jobs)
        .map(|(point, start, end)| read_window(context.clone(), point, start, end))
        .buffer_unordered(parallelism.max(1))
        .collect::<Vec<_>>()
        .await;
    results.into_iter().collect()
}

/// What every window's request shares.
struct Context {
    client: reqwest::Client,
    base: String,
    hourly: String,
    variables: Vec<(String, Parameter)>,
    from: i64,
    range: TimeRange,
    chunks: mpsc::Sender<Chunk>,
}

/// One point over one window of days: one request, one chunk.
async fn read_window(context: Arc<Context>, point: GeoPoint, start: i64, end: i64) -> Result<(), SourceError> {
    let Context {
        client,
        base,
        hourly,
        variables,
        from,
        range,
        chunks,
    } = &*context;
    let (from, range) = (*from, *range);
    let url = format!("{base}/v1/air-quality");
    let query = [
        ("latitude", point.latitude.to_string()),
        ("longitude", point.longitude.to_string()),
        ("hourly", hourly.clone()),
        ("timezone", "UTC".to_owned()),
        ("start_date", date(start)),
        ("end_date", date(end - 1)),
    ];
    let what = format!(
        "Open-Meteo {} {}..{} ({url})",
        point.station,
        date(start),
        date(end - 1)
    );
    let response: Response = get_json(|| client.get(&url).query(&query), &what, "openMeteo").await?;
    let station: Arc<str> = Arc::from(point.station.as_str());
    let mut builder = ChunkBuilder::new(format!("open-meteo:{}", point.station));
    builder.progress(1);
    for (name, parameter) in variables {
        let Some(values) = response.hourly.series.get(name) else {
            return Err(SourceError::Format {
                input: what.clone(),
                detail: format!("hourly has no {name:?} array"),
            });
        };
        if values.len() != response.hourly.time.len() {
            return Err(SourceError::Format {
                input: what.clone(),
                detail: format!(
                    "hourly.{name} has {} values for {} times",
                    values.len(),
                    response.hourly.time.len()
                ),
            });
        }
        let unit = response.hourly_units.get(name).map(String::as_str).unwrap_or("");
        for (time_text, value) in response.hourly.time.iter().zip(values) {
            let Some(value) = value else { continue };
            let record = || format!("hourly.{name} at {time_text}");
            let Some(time) = parse_time(time_text) else {
                builder.reject(
                    Some(&station),
                    parameter.code(),
                    None,
                    Some(value.to_string()),
                    format!("time {time_text:?} is not YYYY-MM-DDTHH:MM"),
                    record(),
                );
                continue;
            };
            if time < start.max(from) || time >= end || !range.contains(time) {
                continue;
            }
            builder.value_in(&station, *parameter, time, (*value, unit), &record);
        }
    }
    if chunks.send(builder.finish()).await.is_err() {
        return Ok(());
    }
    Ok(())
}

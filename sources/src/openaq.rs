//! OpenAQ API v3: each location's sensors (`GET /v3/locations/{id}`), then each sensor's hourly means
//! (`GET /v3/sensors/{id}/hours`), paged with `limit` (1,000) and `page` until a short page. `meta.found` is a number
//! or a string such as `">1000"`, so paging never relies on it. The API key goes in `X-API-Key`.

use std::sync::Arc;

use airq_api::etl::OpenAqSource;
use airq_core::parameter::Parameter;
use airq_core::store::NewStation;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::http::{get_body, get_json, parse_json};
use super::{Chunk, ChunkBuilder, SourceError, TimeRange, compact, csv::parse_time};

/// The API's address when the spec names none.
pub const DEFAULT_BASE_URL: &str = "https://api.openaq.org";
/// Results per page: the API's maximum.
pub const PAGE_LIMIT: usize = 1000;
/// How far back an incremental load without a watermark starts.
pub const FIRST_LOOKBACK_DAYS: i64 = 7;

#[derive(Debug, Deserialize)]
struct Page<T> {
    #[serde(default)]
    meta: Option<Meta>,
    results: Vec<T>,
}

#[derive(Debug, Deserialize)]
struct Meta {
    /// A count, or a string such as ">1000" when the API did not count them all.
    #[serde(default)]
    found: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Location {
    id: i64,
    name: Option<String>,
    coordinates: Option<Coordinates>,
    #[serde(default)]
    sensors: Vec<Sensor>,
}

#[derive(Debug, Deserialize)]
struct Coordinates {
    latitude: Option<f64>,
    longitude: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct Sensor {
    id: i64,
    parameter: ParameterInfo,
}

#[derive(Debug, Deserialize)]
struct ParameterInfo {
    name: String,
    units: String,
}

#[derive(Debug, Deserialize)]
struct Hour {
    value: Option<f64>,
    parameter: ParameterInfo,
    period: Option<Period>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Period {
    datetime_from: Option<Instant>,
}

#[derive(Debug, Deserialize)]
struct Instant {
    utc: String,
}

/// A sensor to read, with the station it belongs to.
struct Target {
    station: Arc<str>,
    sensor: i64,
    parameter: Parameter,
}

fn iso(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Reads the locations of `spec` over `range` (split into `chunk_days` windows), `parallelism` requests at a time.
pub async fn read(
    spec: OpenAqSource,
    api_key: Option<String>,
    range: TimeRange,
    chunk_days: u32,
    parallelism: usize,
    chunks: mpsc::Sender<Chunk>,
) -> Result<(), SourceError> {
    let api_key = api_key.ok_or_else(|| SourceError::Read {
        input: "OpenAQ".to_owned(),
        detail: "no API key: set AIRQ_OPENAQ_API_KEY (the EtlSchedule's apiKeySecret)".to_owned(),
    })?;
    let base = spec.base_url.clone().unwrap_or_else(|| DEFAULT_BASE_URL.to_owned());
    let base = base.trim_end_matches('/').to_owned();
    let client = super::http::client()?;
    let wanted: Vec<Parameter> = spec
        .parameters
        .iter()
        .map(|p| p.parse::<Parameter>())
        .collect::<Result<_, _>>()
        .map_err(|e| SourceError::Read {
            input: "spec.source.openaq.parameters".to_owned(),
            detail: e.to_string(),
        })?;

    // The locations and their sensors first: a location that does not exist stops the load before anything is
    // written.
    let mut targets = Vec::new();
    let mut stations = Vec::new();
    for location_id in &spec.locations {
        let url = format!("{base}/v3/locations/{location_id}");
        let what = format!("OpenAQ location {location_id} ({url})");
        let page: Page<Location> = get_json(|| client.get(&url).header("X-API-Key", &api_key), &what, "openaq").await?;
        let Some(location) = page.results.into_iter().next() else {
            return Err(SourceError::Http {
                input: what,
                detail: "the API knows no such location".to_owned(),
            });
        };
        let code: Arc<str> = Arc::from(format!("openaq-{}", location.id));
        stations.push(NewStation {
            code: code.to_string(),
            name: location.name.clone().unwrap_or_else(|| code.to_string()),
            source: "openaq".to_owned(),
            latitude: location.coordinates.as_ref().and_then(|c| c.latitude),
            longitude: location.coordinates.as_ref().and_then(|c| c.longitude),
        });
        for sensor in location.sensors {
            match sensor.parameter.name.parse::<Parameter>() {
                Ok(parameter) if wanted.is_empty() || wanted.contains(&parameter) => targets.push(Target {
                    station: code.clone(),
                    sensor: sensor.id,
                    parameter,
                }),
                Ok(_) => {}
                Err(_) => tracing::debug!(
                    location = location.id,
                    sensor = sensor.id,
                    parameter = %sensor.parameter.name,
                    "sensor skipped: airq does not store this parameter"
                ),
            }
        }
    }
    let mut described = ChunkBuilder::new("openaq");
    for station in stations {
        described.station(station);
    }
    if chunks.send(described.finish()).await.is_err() {
        return Ok(());
    }

    let now = chrono::Utc::now().timestamp();
    let from = range.from.unwrap_or(now - FIRST_LOOKBACK_DAYS * 86_400);
    let to = range.to.unwrap_or(now);
    let step = i64::from(chunk_days.max(1)) * 86_400;
    let mut windows = Vec::new();
    let mut start = from;
    while start < to {
        windows.push((start, (start + step).min(to)));
        start += step;
    }
    let base: Arc<str> = Arc::from(base);
    let api_key: Arc<str> = Arc::from(api_key);
    let mut jobs = Vec::new();
    for target in targets.into_iter().map(Arc::new) {
        for &(from, to) in &windows {
            jobs.push((target.clone(), from, to));
        }
    }
    let results = futures::stream::iter(jobs)
        .map(|(target, from, to)| {
            read_window(
                client.clone(),
                base.clone(),
                api_key.clone(),
                target,
                from,
                to,
                chunks.clone(),
            )
        })
        .buffer_unordered(parallelism.max(1))
        .collect::<Vec<_>>()
        .await;
    results.into_iter().collect()
}

/// One sensor over one window, page by page; each page is one chunk.
async fn read_window(
    client: reqwest::Client,
    base: Arc<str>,
    api_key: Arc<str>,
    target: Arc<Target>,
    from: i64,
    to: i64,
    chunks: mpsc::Sender<Chunk>,
) -> Result<(), SourceError> {
    let url = format!("{base}/v3/sensors/{}/hours", target.sensor);
    for page_number in 1.. {
        let what = format!("OpenAQ sensor {} hours, page {page_number} ({url})", target.sensor);
        let query = [
            ("datetime_from", iso(from)),
            ("datetime_to", iso(to)),
            ("limit", PAGE_LIMIT.to_string()),
            ("page", page_number.to_string()),
        ];
        let body = get_body(
            || client.get(&url).header("X-API-Key", &*api_key).query(&query),
            &what,
            "openaq",
        )
        .await?;
        let (chunk, count, found) = hours_page(&body, &what, &target, page_number, (from, to))?;
        if chunks.send(chunk).await.is_err() {
            return Ok(());
        }
        // A short page is the last; `meta.found` (a number, or a string such as ">1000") only goes to the log.
        tracing::debug!(
            sensor = target.sensor,
            page = page_number,
            results = count,
            found,
            "OpenAQ page read"
        );
        if count < PAGE_LIMIT {
            break;
        }
    }
    Ok(())
}

/// One page of a sensor's hours (`body`, the answer to `what`) as a chunk of the values within `from..to`; with the
/// number of results on the page and what `meta.found` said.
fn hours_page(
    body: &[u8],
    what: &str,
    target: &Target,
    page_number: usize,
    (from, to): (i64, i64),
) -> Result<(Chunk, usize, String), SourceError> {
    let page: Page<Hour> = parse_json(body, what)?;
    let count = page.results.len();
    let mut builder = ChunkBuilder::new(format!("openaq:sensor/{}", target.sensor));
    builder.progress(1);
    for (i, hour) in page.results.into_iter().enumerate() {
        let record = || format!("page {page_number}, result {}", i + 1);
        let Some(value) = hour.value else { continue };
        let time = hour
            .period
            .as_ref()
            .and_then(|p| p.datetime_from.as_ref())
            .and_then(|t| parse_time(&t.utc));
        let Some(time) = time else {
            builder.reject(
                Some(&target.station),
                target.parameter.code(),
                None,
                Some(compact(value)),
                "the result has no period.datetimeFrom.utc time".to_owned(),
                record(),
            );
            continue;
        };
        // `datetime_to` is inclusive on the API's side; the window is half-open here.
        if time < from || time >= to {
            continue;
        }
        builder.value_in(
            &target.station,
            target.parameter,
            time,
            (value, &hour.parameter.units),
            &record,
        );
    }
    let found = page
        .meta
        .and_then(|m| m.found)
        .map(|f| f.to_string())
        .unwrap_or_default();
    Ok((builder.finish(), count, found))
}

#[cfg(test)]
mod tests {
    // A failed step of a test's set-up is the test's failure: unwrap reports it with its location.
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    /// A page of two recorded results (`tests/replay/openaq/hour.json`, the second an hour later).
    fn seed() -> serde_json::Value {
        let hour: serde_json::Value = serde_json::from_str(include_str!("../tests/replay/openaq/hour.json")).unwrap();
        let mut later = hour.clone();
        later["period"]["datetimeFrom"]["utc"] = "2024-01-01T01:00:00Z".into();
        later["value"] = 8.1.into();
        serde_json::json!({ "meta": { "found": ">1000" }, "results": [hour, later] })
    }

    fn target() -> Target {
        Target {
            station: Arc::from("openaq-2178"),
            sensor: 7,
            parameter: Parameter::Pm25,
        }
    }

    #[test]
    fn a_recorded_page_reads_whole() {
        let body = serde_json::to_vec(&seed()).unwrap();
        let (chunk, count, found) = hours_page(&body, "page", &target(), 1, (0, i64::MAX)).unwrap();
        assert_eq!((count, found.as_str()), (2, "\">1000\""));
        assert_eq!(chunk.observations.len(), 2);
        assert_eq!(chunk.observations[1].time, 1_704_070_800);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: crate::fuzz::cases(1000), failure_persistence: None, ..ProptestConfig::default() })]

        /// Damaged pages: never a panic; an error names the request; every value read is kept or refused, and what
        /// is kept is finite, plausible and on the hour.
        #[test]
        fn damaged_pages_are_read_or_refused_cleanly(body in crate::fuzz::damaged(seed())) {
            match hours_page(&body, "OpenAQ sensor 7 hours, page 1", &target(), 1, (0, i64::MAX)) {
                Err(e) => prop_assert!(e.to_string().contains("OpenAQ sensor 7"), "{e}"),
                Ok((chunk, _, _)) => crate::fuzz::chunk_is_sound(&chunk)?,
            }
        }
    }
}

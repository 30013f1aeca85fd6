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

use super::http::{get_body, parse_json};
use super::{Chunk, ChunkBuilder, SourceError, TimeRange, compact, csv::parse_time};

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
    let body = get_body(|| client.get(&url).query(&query), &what, "openMeteo").await?;
    let chunk = window_chunk(&body, &what, &point.station, variables, (start.max(from), end), range)?;
    if chunks.send(chunk).await.is_err() {
        return Ok(());
    }
    Ok(())
}

/// One window's answer (`body`, the answer to `what`) for `station` as a chunk of the `variables`' values within
/// `start..end` and `range`.
fn window_chunk(
    body: &[u8],
    what: &str,
    station: &str,
    variables: &[(String, Parameter)],
    (start, end): (i64, i64),
    range: TimeRange,
) -> Result<Chunk, SourceError> {
    let response: Response = parse_json(body, what)?;
    let station: Arc<str> = Arc::from(station);
    let mut builder = ChunkBuilder::new(format!("open-meteo:{station}"));
    builder.progress(1);
    for (name, parameter) in variables {
        let Some(values) = response.hourly.series.get(name) else {
            return Err(SourceError::Format {
                input: what.to_owned(),
                detail: format!("hourly has no {name:?} array"),
            });
        };
        if values.len() != response.hourly.time.len() {
            return Err(SourceError::Format {
                input: what.to_owned(),
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
                    Some(compact(*value)),
                    format!("time {time_text:?} is not YYYY-MM-DDTHH:MM"),
                    record(),
                );
                continue;
            };
            if time < start || time >= end || !range.contains(time) {
                continue;
            }
            builder.value_in(&station, *parameter, time, (*value, unit), &record);
        }
    }
    Ok(builder.finish())
}

#[cfg(test)]
mod tests {
    // A failed step of a test's set-up is the test's failure: unwrap reports it with its location.
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn seed() -> serde_json::Value {
        serde_json::from_str(include_str!("../tests/replay/open-meteo/air-quality.json")).unwrap()
    }

    fn variables() -> Vec<(String, Parameter)> {
        vec![
            ("pm2_5".to_owned(), Parameter::Pm25),
            ("nitrogen_dioxide".to_owned(), Parameter::No2),
        ]
    }

    #[test]
    fn a_recorded_answer_reads_whole() {
        let body = serde_json::to_vec(&seed()).unwrap();
        let chunk = window_chunk(
            &body,
            "window",
            "Beijing",
            &variables(),
            (0, i64::MAX),
            TimeRange::default(),
        )
        .unwrap();
        // pm2_5 has a null: three values.
        assert_eq!(chunk.observations.len(), 3);
        assert_eq!(chunk.values_read, 3);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: crate::fuzz::cases(1000), failure_persistence: None, ..ProptestConfig::default() })]

        /// Damaged answers: never a panic; an error names the request; every value read is kept or refused, and
        /// what is kept is finite, plausible and on the hour.
        #[test]
        fn damaged_answers_are_read_or_refused_cleanly(body in crate::fuzz::damaged(seed())) {
            let what = "Open-Meteo Beijing 2024-01-01..2024-01-01";
            match window_chunk(&body, what, "Beijing", &variables(), (0, i64::MAX), TimeRange::default()) {
                Err(e) => prop_assert!(e.to_string().contains(what), "{e}"),
                Ok(chunk) => crate::fuzz::chunk_is_sound(&chunk)?,
            }
        }
    }
}

//! `kubectl airq forecast`: asks the model's serving Service for a forecast through the API server's service proxy
//! (`/api/v1/namespaces/NS/services/model-NAME:http/proxy/forecast`), so it needs no ingress and no API key — only
//! the RBAC right to `get services/proxy` in the namespace.

use airq_api::PredictiveModel;
use kube::api::Api;
use serde::Deserialize;

/// What is asked.
#[derive(Debug, Clone)]
pub struct Request {
    pub station: String,
    pub at: Option<String>,
    pub confidence: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Forecast {
    model: String,
    version: String,
    pollutant: String,
    unit: String,
    station: String,
    origin: String,
    #[serde(default)]
    fallback: bool,
    points: Vec<Point>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Point {
    time: String,
    horizon_hours: u32,
    value: f64,
    intervals: Vec<Interval>,
}

#[derive(Debug, Deserialize)]
struct Interval {
    confidence: f64,
    lower: f64,
    upper: f64,
}

pub async fn run(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    request: &Request,
    json: bool,
) -> anyhow::Result<()> {
    let models: Api<PredictiveModel> = Api::namespaced(client.clone(), namespace);
    let model = crate::wait::get(&models, namespace, name).await?;
    let status = model.status.unwrap_or_default();
    if status.model_version.is_none() {
        let why = airq_api::common::condition(&status.conditions, "Ready")
            .map(|c| format!(": {} — {}", c.reason, c.message))
            .unwrap_or_default();
        anyhow::bail!("predictivemodel/{name} has no trained version to ask yet{why}");
    }

    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("station", &request.station);
    if let Some(at) = &request.at {
        query.append_pair("at", at);
    }
    if let Some(confidence) = &request.confidence {
        query.append_pair("confidence", confidence);
    }
    let service = airq_api::model::serving_name(name);
    let path = format!(
        "/api/v1/namespaces/{namespace}/services/{service}:http/proxy/forecast?{}",
        query.finish()
    );
    let http_request = http::Request::get(path).body(kube::client::Body::empty())?;
    let response = client
        .send(http_request)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach model {name} through service {service}: {e}"))?;
    let code = response.status();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map_err(|e| anyhow::anyhow!("reading model {name}'s answer: {e}"))?
        .to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    if !code.is_success() {
        // The model server's own error ({"error": …, "message": …}), or the API server's Status (e.g. no ready pod
        // behind the Service).
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().or(v["error"].as_str()).map(str::to_owned))
            .unwrap_or(text);
        anyhow::bail!("model {name} answered {}: {}", code.as_u16(), message.trim());
    }
    if json {
        println!("{text}");
        return Ok(());
    }
    let forecast: Forecast = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("model {name} answered something that is not a forecast: {e}"))?;
    println!(
        "{} {} at {} from {} ({} {}{})",
        forecast.model,
        forecast.version,
        forecast.station,
        forecast.origin,
        forecast.pollutant,
        forecast.unit,
        if forecast.fallback {
            ", climatology fallback: an input was missing"
        } else {
            ""
        }
    );
    let levels: Vec<f64> = forecast
        .points
        .first()
        .map(|p| p.intervals.iter().map(|i| i.confidence).collect())
        .unwrap_or_default();
    let mut header = vec!["TIME".to_owned(), "HOURS".to_owned(), "VALUE".to_owned()];
    header.extend(levels.iter().map(|l| format!("{:.0}% INTERVAL", l * 100.0)));
    let rows: Vec<Vec<String>> = forecast
        .points
        .iter()
        .map(|p| {
            let mut row = vec![p.time.clone(), p.horizon_hours.to_string(), format!("{:.1}", p.value)];
            row.extend(p.intervals.iter().map(|i| format!("{:.1} – {:.1}", i.lower, i.upper)));
            row
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    crate::table::print(&header, &rows);
    Ok(())
}

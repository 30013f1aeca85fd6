//! The predictive service as the front sees it: which model forecasts a pollutant at a station, its forecast, and
//! the models with their newest versions for the operations view. The front keeps working when the service is
//! absent or down: callers get an error they turn into a notice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Url;
use serde_json::Value;
use tokio::sync::RwLock;

/// How long the model list is reused before the predictive service is asked again.
const MODELS_TTL: Duration = Duration::from_secs(15);

/// The model list and when it was read.
type CachedModels = Option<(Instant, Arc<Vec<Value>>)>;

/// Why there is no forecast.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PredictiveError {
    #[error("no predictive service is configured (AIRQ_PREDICTIVE_URL)")]
    NotConfigured,
    #[error("the predictive service did not answer: {0}")]
    Unreachable(String),
    #[error("no trained model forecasts {pollutant} at {station}")]
    NoModel { pollutant: String, station: String },
    /// The predictive service refused the request (4xx): its message; a model still training says how far it is
    /// (`training`).
    #[error("{message}")]
    Refused {
        status: u16,
        message: String,
        training: Option<Value>,
    },
}

/// A client of the predictive service.
#[derive(Debug, Clone)]
pub struct Predictive {
    base: Option<Url>,
    http: reqwest::Client,
    models: Arc<RwLock<CachedModels>>,
}

impl Predictive {
    /// A client of the service at `base` (none: every call answers [`PredictiveError::NotConfigured`]).
    pub fn new(base: Option<&str>, timeout: Duration) -> Result<Self, String> {
        let base = base
            .map(|b| Url::parse(b).map_err(|e| format!("predictive URL {b:?} is not a URL: {e}")))
            .transpose()?;
        let http = airq_core::http::client_builder(concat!("airq-front/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .timeout(timeout)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self {
            base,
            http,
            models: Arc::default(),
        })
    }

    fn url(&self, segments: &[&str]) -> Result<Url, PredictiveError> {
        let mut url = self.base.clone().ok_or(PredictiveError::NotConfigured)?;
        url.path_segments_mut()
            .map_err(|()| PredictiveError::Unreachable("the predictive URL cannot take a path".to_owned()))?
            .pop_if_empty()
            // Each part is one path segment, whatever it holds.
            .extend(segments);
        Ok(url)
    }

    async fn get_json(&self, url: Url) -> Result<Value, PredictiveError> {
        // The predictive service continues this request's trace.
        let mut headers = reqwest::header::HeaderMap::new();
        airq_core::telemetry::inject_trace(&tracing::Span::current(), &mut headers);
        let response = self
            .http
            .get(url)
            .headers(headers)
            .send()
            .await
            .map_err(|e| PredictiveError::Unreachable(describe(&e)))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| PredictiveError::Unreachable(format!("unreadable answer ({status}): {}", describe(&e))))?;
        if status.is_success() {
            Ok(body)
        } else if status.is_client_error() {
            Err(PredictiveError::Refused {
                status: status.as_u16(),
                message: body["error"]["message"].as_str().unwrap_or("refused").to_owned(),
                training: Some(body["error"]["training"].clone()).filter(|t| t.is_object()),
            })
        } else {
            Err(PredictiveError::Unreachable(format!(
                "{status}: {}",
                body["error"]["message"].as_str().unwrap_or("server error")
            )))
        }
    }

    /// Every model with its spec and newest version (`GET /models`), reused for a few seconds.
    pub async fn models(&self) -> Result<Arc<Vec<Value>>, PredictiveError> {
        if let Some((at, models)) = self.models.read().await.as_ref()
            && at.elapsed() < MODELS_TTL
        {
            return Ok(models.clone());
        }
        let body = self.get_json(self.url(&["models"])?).await?;
        let models = Arc::new(match body {
            Value::Array(models) => models,
            _ => Vec::new(),
        });
        *self.models.write().await = Some((Instant::now(), models.clone()));
        Ok(models)
    }

    /// The newest forecast of `pollutant` at `station` from the model that serves them, with intervals at
    /// `confidence` (comma-separated levels; the model's own when empty).
    pub async fn forecast(&self, station: &str, pollutant: &str, confidence: &str) -> Result<Value, PredictiveError> {
        let models = self.models().await?;
        let name = choose_model(&models, station, pollutant).ok_or_else(|| PredictiveError::NoModel {
            pollutant: pollutant.to_owned(),
            station: station.to_owned(),
        })?;
        let mut url = self.url(&["models", name, "forecast"])?;
        url.query_pairs_mut().append_pair("station", station);
        if !confidence.is_empty() {
            url.query_pairs_mut().append_pair("confidence", confidence);
        }
        self.get_json(url).await
    }
}

/// The error chain of a request failure in one line (reqwest's top-level message alone says little).
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The model to ask for `pollutant` at `station`: among those with a trained version whose target is that
/// pollutant and includes the station (no station list means every station), the most recently trained.
pub fn choose_model<'a>(models: &'a [Value], station: &str, pollutant: &str) -> Option<&'a str> {
    let serving = models
        .iter()
        .filter(|m| m["spec"]["target"]["pollutant"].as_str() == Some(pollutant))
        .filter(|m| match m["spec"]["target"]["stations"].as_array() {
            Some(stations) if !stations.is_empty() => stations.iter().any(|s| s.as_str() == Some(station)),
            _ => true,
        });
    let (trained, training): (Vec<&Value>, Vec<&Value>) = serving
        .filter(|m| m["latest"].is_object() || m["training"].is_object())
        .partition(|m| m["latest"].is_object());
    // A model still training is asked only when none is trained: its answer says how far the training is.
    trained
        .into_iter()
        .max_by_key(|m| created(&m["latest"]["createdAt"]))
        .or_else(|| training.into_iter().next())
        .and_then(|m| m["name"].as_str())
}

/// When a version was trained, Unix seconds: RFC 3339 text, or the Unix seconds older services gave.
fn created(value: &Value) -> i64 {
    value
        .as_str()
        .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
        .map_or_else(|| value.as_i64().unwrap_or(0), |t| t.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_newest_model_for_the_pollutant_and_station_is_chosen() {
        let model = |name: &str, pollutant: &str, stations: Value, created: Option<i64>| {
            json!({
                "name": name,
                "spec": { "target": { "pollutant": pollutant, "stations": stations } },
                "latest": created.map(|c| json!({ "createdAt": c })),
            })
        };
        let models = vec![
            model("pm25-old", "pm25", json!([]), Some(100)),
            model("pm25-new", "pm25", Value::Null, Some(200)),
            model("pm25-untrained", "pm25", json!([]), None),
            model("pm25-dingling", "pm25", json!(["Dingling"]), Some(300)),
            model("no2", "no2", json!([]), Some(400)),
        ];
        assert_eq!(choose_model(&models, "Aotizhongxin", "pm25"), Some("pm25-new"));
        assert_eq!(choose_model(&models, "Dingling", "pm25"), Some("pm25-dingling"));
        assert_eq!(choose_model(&models, "Dingling", "o3"), None);
        // Trained times as RFC 3339 text (as the predictive service gives them) order the same way.
        let text = |name: &str, created: &str| json!({ "name": name, "spec": { "target": { "pollutant": "no2" } }, "latest": { "createdAt": created } });
        let models = vec![
            text("no2-a", "2026-12-06T10:00:00Z"),
            text("no2-b", "2026-12-06T11:00:00Z"),
            text("no2-c", "2026-12-05T23:00:00Z"),
        ];
        assert_eq!(choose_model(&models, "Dongsi", "no2"), Some("no2-b"));
    }

    #[test]
    fn a_model_still_training_is_asked_only_when_none_is_trained() {
        let training = json!({ "name": "o3-new", "spec": { "target": { "pollutant": "o3" } }, "latest": null,
                               "training": { "status": "running" } });
        let trained = json!({ "name": "o3-old", "spec": { "target": { "pollutant": "o3" } },
                              "latest": { "createdAt": "2026-12-01T00:00:00Z" } });
        // Its answer (409 training, with the progress) is the dashboard's when it is the only one.
        assert_eq!(
            choose_model(std::slice::from_ref(&training), "Dongsi", "o3"),
            Some("o3-new")
        );
        assert_eq!(choose_model(&[training, trained], "Dongsi", "o3"), Some("o3-old"));
    }

    #[test]
    fn model_names_with_a_namespace_are_one_path_segment() {
        let client = Predictive::new(Some("http://predictive:80/"), Duration::from_secs(1)).expect("a client");
        let url = client.url(&["models", "airq/pm25", "forecast"]).expect("a URL");
        assert_eq!(url.as_str(), "http://predictive/models/airq%2Fpm25/forecast");
        let none = Predictive::new(None, Duration::from_secs(1)).expect("a client");
        assert!(matches!(none.url(&["models"]), Err(PredictiveError::NotConfigured)));
        assert!(Predictive::new(Some("not a url"), Duration::from_secs(1)).is_err());
    }
}

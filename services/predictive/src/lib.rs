//! Training, testing and forecasting of contamination with calibrated intervals.

pub mod adaptive;
pub mod api;
pub mod cli;
pub mod config;
pub mod data;
pub mod ensemble;
pub mod evaluate;
pub mod features;
pub mod forecast;
mod gbm;
pub mod model;
pub mod monitor;
pub mod pool;
pub mod registry;
pub mod score;
pub mod spec;
pub mod suite;

use airq_core::store::Store;

pub use config::{Cli, Command, Config};

/// Connects to the database, then serves the API until Ctrl-C or SIGTERM. With `--model`, the model's version is
/// loaded before the first request, so a serving pod is warm when it becomes ready.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let served = match &config.model {
        Some(name) => {
            let version = match &config.model_version {
                Some(v) => Some(
                    registry::parse_version(v)
                        .ok_or_else(|| anyhow::anyhow!("--model-version {v:?} is not a version such as v3"))?,
                ),
                None => None,
            };
            Some((name.clone(), version))
        }
        None => None,
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let score_interval = std::time::Duration::from_secs(config.score_interval_seconds);
    let monitor_stop = stop.clone();
    let result = airq_core::service::run_with_database("predictive", &config.serve, &config.database, move |db| {
        let state = api::ApiState::new(registry::Registry::new(db.clone()), Store::new(db), served.clone());
        if let Some((name, version)) = served {
            let warm = state.clone();
            tokio::spawn(async move {
                match warm.model(&name, version).await {
                    Ok(loaded) => tracing::info!(model = %name, version = %loaded.0.version, "model loaded"),
                    Err(e) => tracing::warn!(model = %name, error = %e.message, "model not loaded yet"),
                }
            });
            // A model's server follows its forecasts' error once the truth is stored.
            if !score_interval.is_zero() {
                tokio::spawn(monitor::follow(state.clone(), score_interval, monitor_stop));
            }
        }
        api::router(state)
    })
    .await;
    stop.cancel();
    result?;
    Ok(())
}

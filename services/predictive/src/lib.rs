//! Training, testing and forecasting of contamination with calibrated intervals.

pub mod cli;
pub mod config;
pub mod data;
pub mod evaluate;
pub mod features;
pub mod forecast;
pub mod model;
pub mod registry;
pub mod score;
pub mod spec;
pub mod suite;

use airq_core::db::Database;
use axum::Router;

pub use config::{Cli, Command, Config};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub db: Database,
}

/// The service's API routes; the operational endpoints and common layers are added by [`run`].
pub fn router(state: AppState) -> Router {
    Router::new().with_state(state)
}

/// Connects to the database, then serves until Ctrl-C or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    airq_core::service::run_with_database("predictive", &config.serve, &config.database, |db| {
        router(AppState { db })
    })
    .await?;
    Ok(())
}

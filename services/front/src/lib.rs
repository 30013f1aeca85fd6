//! The data behind the dashboard's views, and the dashboard.

pub mod api;
pub mod caching;
pub mod config;
pub mod dashboard;
pub mod predictive;
pub mod store;
pub mod view;

use std::time::Duration;

use airq_core::db::Database;
use airq_core::store::Store;
use axum::Router;
use tower_http::compression::CompressionLayer;

pub use config::Config;
use predictive::Predictive;
use store::ViewStore;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub views: ViewStore,
    pub predictive: Predictive,
}

impl AppState {
    /// The state over `db`, asking `predictive` for forecasts.
    pub fn new(db: Database, predictive: Predictive) -> Self {
        Self {
            store: Store::new(db.clone()),
            views: ViewStore::new(db),
            predictive,
        }
    }
}

/// The API and the dashboard, compressed when the client accepts it; the operational endpoints and common layers
/// are added by [`run`].
pub fn router(state: AppState) -> Router {
    api::router(state)
        .merge(dashboard::router())
        .fallback(dashboard::not_found)
        .layer(CompressionLayer::new())
}

/// Connects to the database, then serves until Ctrl-C or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let predictive = Predictive::new(
        config.predictive_url.as_deref(),
        Duration::from_millis(config.predictive_timeout_ms),
    )
    .map_err(anyhow::Error::msg)?;
    airq_core::service::run_with_database("front", &config.serve, &config.database, |db| {
        router(AppState::new(db, predictive))
    })
    .await?;
    Ok(())
}

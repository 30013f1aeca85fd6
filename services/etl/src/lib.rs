//! Incremental and bulk loads from external services (OpenAQ, Open-Meteo, CSV) into the database.

pub mod anomalies;
pub mod api;
pub mod cli;
pub mod config;
pub mod load;
pub mod marks;
/// The connectors, in a crate of their own (the predictive service reads CSV files with them too).
pub use airq_sources as source;
pub mod write;

use airq_core::store::Store;

pub use config::{Cli, Command, Config};

/// Connects to the database, then serves the loading API until Ctrl-C or SIGTERM; loads still running then stop
/// between batches and are recorded as stopped.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let key = config.openaq_api_key.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let on_exit = stop.clone();
    let result = airq_core::service::run_with_database("etl", &config.serve, &config.database, move |db| {
        let mut state = api::ApiState::new(Store::new(db), key);
        state.stop = stop;
        api::router(state)
    })
    .await;
    on_exit.cancel();
    result?;
    Ok(())
}

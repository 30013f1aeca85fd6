//! The start-up sequence every database-backed service shares: telemetry, the database (migrated), then the API with
//! the operational endpoints until SIGTERM, then the pool closed.

use axum::Router;

use crate::config::{DatabaseArgs, ServeArgs};
use crate::db::{self, Database};
use crate::http::{self, run_service};
use crate::telemetry;

/// Why a service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Telemetry(#[from] telemetry::Error),
    #[error(transparent)]
    Database(#[from] db::Error),
    #[error(transparent)]
    Serve(#[from] http::ServeError),
}

/// Runs the service `name`: its API is what `api` builds from the connected database.
pub async fn run_with_database(
    name: &'static str,
    serve: &ServeArgs,
    database: &DatabaseArgs,
    api: impl FnOnce(Database) -> Router,
) -> Result<(), Error> {
    let telemetry = telemetry::init(name, &serve.log)?;
    let db = Database::connect(database).await?;
    tracing::info!(database = %db.describe(), "database ready");
    let checks = vec![("database", db.readiness_check())];
    let served = run_service(telemetry, serve, api(db.clone()), checks).await;
    db.close().await;
    Ok(served?)
}

//! The airq-predictive binary starts against a real PostgreSQL, migrates it, serves its operational endpoints and stops
//! cleanly; an unreachable database is a clear start-up error.

#[tokio::test]
async fn binary_starts_serves_and_stops() -> anyhow::Result<()> {
    airq_testenv::service::check_database_service(
        std::path::Path::new(env!("CARGO_BIN_EXE_airq-predictive")),
        "predictive",
    )
    .await?;
    Ok(())
}

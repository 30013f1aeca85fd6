//! The airq-gateway binary starts against a real PostgreSQL, migrates it, serves its operational endpoints and stops
//! cleanly; an unreachable database is a clear start-up error; without a key hashing secret on PostgreSQL it refuses
//! to start and says what is missing.

#[tokio::test]
async fn binary_starts_serves_and_stops() -> anyhow::Result<()> {
    // The operational endpoints on their own port (the public listener answers /healthz only).
    let ops = format!("127.0.0.1:{}", airq_testenv::process::free_port()?);
    airq_testenv::service::check_database_service_with(
        std::path::Path::new(env!("CARGO_BIN_EXE_airq-gateway")),
        "gateway",
        &[
            ("AIRQ_KEY_HASH_SECRET", "a-test-secret-of-enough-length"),
            ("AIRQ_OPS_LISTEN", ops.as_str()),
        ],
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn without_a_key_hashing_secret_on_postgres_it_says_what_is_missing() -> anyhow::Result<()> {
    let db = airq_testenv::database().await?;
    let (status, output) = airq_testenv::service::run_to_exit(
        std::path::Path::new(env!("CARGO_BIN_EXE_airq-gateway")),
        &["--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0"],
        &[("AIRQ_DATABASE_URL", &db.url), ("AIRQ_LOG_FORMAT", "json")],
    )
    .await?;
    anyhow::ensure!(!status.success(), "started without a key hashing secret:\n{output}");
    anyhow::ensure!(
        output.contains("needs a key hashing secret (--key-hash-secret"),
        "unclear error:\n{output}"
    );
    Ok(())
}

//! The airq-etl binary starts against a real PostgreSQL, migrates it, serves its operational endpoints and stops
//! cleanly; an unreachable database is a clear start-up error.

#[tokio::test]
async fn binary_starts_serves_and_stops() -> anyhow::Result<()> {
    airq_testenv::service::check_database_service(std::path::Path::new(env!("CARGO_BIN_EXE_airq-etl")), "etl").await?;
    Ok(())
}

/// `airq-etl load` on a terminal (a pseudo-terminal made by `script`) shows its summary and no JSON log line; with
/// its output going elsewhere it writes JSON log lines, as in a Job.
#[tokio::test]
async fn a_load_on_a_terminal_shows_a_summary_not_json_lines() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("month.csv");
    let mut text = String::from("station,parameter,time,value,unit\n");
    for hour in 0..48 {
        text.push_str(&format!(
            "Nowhere,pm25,2016-03-{:02}T{:02}:00:00Z,{},ug/m3\n",
            1 + hour / 24,
            hour % 24,
            20 + hour % 7
        ));
    }
    std::fs::write(&file, text)?;
    let binary = env!("CARGO_BIN_EXE_airq-etl");
    let command = |database: &str| {
        format!(
            "{binary} load --name month --csv {} --format long --database-url sqlite://{}",
            file.display(),
            dir.path().join(database).display()
        )
    };
    let on_terminal = tokio::process::Command::new("script")
        .args(["-qec", &command("terminal.db"), "/dev/null"])
        .env_remove("AIRQ_LOG_LEVEL")
        .env_remove("AIRQ_LOG_FORMAT")
        .output()
        .await?;
    let shown = String::from_utf8_lossy(&on_terminal.stdout);
    anyhow::ensure!(on_terminal.status.success(), "{shown}");
    anyhow::ensure!(
        shown.contains("load month (run 1) finished") && shown.contains("48 values read, 48 inserted"),
        "no summary on the terminal: {shown}"
    );
    anyhow::ensure!(!shown.contains("{\""), "JSON log lines on the terminal: {shown}");
    let elsewhere = tokio::process::Command::new("sh")
        .args(["-c", &command("job.db")])
        .env_remove("AIRQ_LOG_LEVEL")
        .env_remove("AIRQ_LOG_FORMAT")
        .output()
        .await?;
    // Elsewhere: JSON log lines on stderr, and stdout the report alone (`load … > report.json`).
    let logged = String::from_utf8_lossy(&elsewhere.stderr);
    anyhow::ensure!(elsewhere.status.success(), "{logged}");
    anyhow::ensure!(
        logged
            .lines()
            .any(|l| l.starts_with('{') && l.contains("load finished")),
        "no JSON log line: {logged}"
    );
    let report: serde_json::Value = serde_json::from_slice(&elsewhere.stdout).map_err(|e| {
        anyhow::anyhow!(
            "stdout is not the report alone ({e}): {}",
            String::from_utf8_lossy(&elsewhere.stdout)
        )
    })?;
    anyhow::ensure!(report["rowsInserted"] == 48, "{report}");
    Ok(())
}

//! The airq-operator binary connects to a real API server, is ready only while it answers, and serves its
//! operational endpoints.

use std::path::Path;

use airq_testenv::service::RunningService;

const OPERATOR: &str = env!("CARGO_BIN_EXE_airq-operator");

#[tokio::test]
async fn binary_is_ready_when_the_api_server_answers() -> anyhow::Result<()> {
    let cluster = airq_testenv::kubernetes().await?;
    let kubeconfig = cluster.kubeconfig.to_string_lossy().into_owned();
    let operator = RunningService::start(Path::new(OPERATOR), &[], &[("KUBECONFIG", &kubeconfig)]).await?;
    operator.check_operational_endpoints("operator").await?;
    assert!(operator.terminate().await?.success());
    Ok(())
}

#[tokio::test]
async fn binary_is_not_ready_without_an_api_server() -> anyhow::Result<()> {
    let cluster = airq_testenv::kubernetes().await?;
    // The same credentials, pointed at a port where nothing listens.
    let config = std::fs::read_to_string(&cluster.kubeconfig)?;
    let closed = format!("https://127.0.0.1:{}", airq_testenv::process::free_port()?);
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, config.replace(&cluster.server, &closed))?;
    let operator = RunningService::start(
        Path::new(OPERATOR),
        &[],
        &[("KUBECONFIG", &kubeconfig.to_string_lossy())],
    )
    .await?;
    let (status, body) = operator.get("/readyz").await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("kubernetes"), "{body}");
    Ok(())
}

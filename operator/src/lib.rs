//! The airq Kubernetes operator: turns the `airq.dev` custom resources into running workloads.

pub mod config;

use airq_core::http::{ReadinessCheck, readiness_check, run_service};
use airq_core::telemetry;
use axum::Router;

pub use config::Config;

/// Ready while the Kubernetes API server answers with its version.
fn api_server_check(client: kube::Client) -> ReadinessCheck {
    readiness_check(move || {
        let client = client.clone();
        async move {
            client
                .apiserver_version()
                .await
                .map(drop)
                .map_err(|e| format!("the Kubernetes API server does not answer: {e}"))
        }
    })
}

/// Connects to the cluster, then serves the operational endpoints until Ctrl-C or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let telemetry = telemetry::init("operator", &config.serve.log)?;
    let client = kube::Client::try_default().await?;
    match client.apiserver_version().await {
        Ok(version) => tracing::info!(kubernetes = %version.git_version, "connected to the cluster"),
        Err(err) => tracing::warn!(error = %err, "the Kubernetes API server does not answer yet"),
    }
    let checks = vec![("kubernetes", api_server_check(client))];
    run_service(telemetry, config.serve.listen, Router::new(), checks).await?;
    Ok(())
}

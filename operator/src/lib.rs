//! The airq Kubernetes operator: turns the `airq.dev` custom resources into running workloads. Each reconciler is a
//! pipeline — validate (pure), dereference (its Secrets and neighbours, from the caches), build (pure: the desired
//! children), apply (server-side apply, skipped when unchanged; unwanted children deleted), status — so most of
//! the logic is tested without a cluster.

pub mod children;
pub mod config;
pub mod context;
pub mod controllers;
pub mod crds;
pub mod error;
pub mod monitoring;
pub mod routes;
pub mod status;
pub mod workload;

use std::time::Duration;

use airq_core::http::{ReadinessCheck, readiness_check, run_service};
use airq_core::telemetry;
use axum::Router;
use kube_lease_manager::LeaseManagerBuilder;

pub use config::{Cli, Command, Config};
pub use controllers::Operator;

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

/// An error before the controllers ran: worth another attempt.
struct Startup(anyhow::Error);

/// Takes the Lease (when leader election is on), runs the controllers until SIGTERM or until the Lease is lost, then
/// releases it. `Err` when it could not get as far as running the controllers.
async fn lead_and_reconcile(client: &kube::Client, args: &config::OperatorArgs) -> Result<anyhow::Result<()>, Startup> {
    let mut lease = None;
    if args.leader_election {
        let identity = args
            .identity
            .clone()
            .unwrap_or_else(|| format!("airq-operator-{}", std::process::id()));
        let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
            .with_namespace(&args.lease_namespace)
            .with_identity(&identity)
            .with_duration(15)
            .with_grace(5)
            .build()
            .await
            .map_err(|e| Startup(e.into()))?;
        let (mut leading, task) = manager.watch().await;
        tracing::info!(lease = %args.lease_name, %identity, "waiting for the lease");
        leading.wait_for(|held| *held).await.map_err(|e| Startup(e.into()))?;
        tracing::info!(lease = %args.lease_name, %identity, "holding the lease");
        lease = Some((leading, task));
    }
    let mut operator = Operator::start(client.clone(), args.clone())
        .await
        .map_err(|e| Startup(e.into()))?;
    metrics::gauge!("airq_operator_leader").set(1.0);
    tracing::info!(
        namespace = args.namespace.as_deref().unwrap_or("all"),
        "controllers started"
    );
    let outcome = match &mut lease {
        Some((leading, _)) => {
            tokio::select! {
                () = airq_core::http::shutdown_signal() => Ok(()),
                _ = leading.wait_for(|held| !*held) => Err(anyhow::anyhow!("lost the lease {}; exiting so that another replica leads", args.lease_name)),
                () = operator.failed() => Err(anyhow::anyhow!("a controller stopped")),
            }
        }
        None => {
            tokio::select! {
                () = airq_core::http::shutdown_signal() => Ok(()),
                () = operator.failed() => Err(anyhow::anyhow!("a controller stopped")),
            }
        }
    };
    operator.stop().await;
    metrics::gauge!("airq_operator_leader").set(0.0);
    if let Some((leading, task)) = lease {
        // Closing the channel ends the lease task, which hands the manager back to release the lease at once.
        drop(leading);
        if let Ok(Ok(Ok(manager))) = tokio::time::timeout(Duration::from_secs(5), task).await {
            let _ = manager.release().await;
        }
    }
    Ok(outcome)
}

/// Connects to the cluster, serves the operational endpoints, and — once it holds the Lease, when leader election
/// is on — runs the controllers until SIGTERM or until the Lease is lost.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let telemetry = telemetry::init("operator", &config.serve.log)?;
    let client = kube::Client::try_default().await?;
    match client.apiserver_version().await {
        Ok(version) => tracing::info!(kubernetes = %version.git_version, "connected to the cluster"),
        Err(err) => tracing::warn!(error = %err, "the Kubernetes API server does not answer yet"),
    }
    let checks = vec![("kubernetes", api_server_check(client.clone()))];
    let mut server = tokio::spawn(run_service(telemetry, config.serve.listen, Router::new(), checks));
    metrics::gauge!("airq_operator_leader").set(0.0);

    let args = config.operator.clone();
    let work = async {
        // Until the API server answers, keep trying (the probes say why it is not ready) rather than crash-loop.
        let mut attempt = 0u32;
        loop {
            match lead_and_reconcile(&client, &args).await {
                Err(Startup(err)) => {
                    attempt = attempt.saturating_add(1);
                    let delay = Duration::from_secs(u64::from(attempt.min(6)) * 5);
                    tracing::warn!(error = %err, retry_in = ?delay, "cannot start the controllers yet");
                    tokio::select! {
                        () = airq_core::http::shutdown_signal() => return Ok(()),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                Ok(outcome) => return outcome,
            }
        }
    };
    tokio::select! {
        outcome = work => {
            outcome?;
            // The HTTP server stops on the same signal.
            let _ = tokio::time::timeout(Duration::from_secs(10), &mut server).await;
        }
        served = &mut server => {
            served??;
        }
    }
    Ok(())
}

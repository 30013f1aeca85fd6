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
pub mod events;
pub mod monitoring;
pub mod status;
pub mod workload;

use std::time::Duration;

use airq_core::http::{ReadinessCheck, readiness_check, run_service};
use airq_core::telemetry;
use axum::Router;
use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;

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

/// Hands the Lease back: closing the watch channel ends the lease task, which releases the Lease if this replica
/// holds it; the manager it returns is asked once more, in case the task ended before that.
async fn release(leading: tokio::sync::watch::Receiver<bool>, task: LeaseTask) {
    drop(leading);
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(Ok(manager))) => {
            if let Err(e) = manager.release().await {
                tracing::warn!(error = %e, "could not release the lease");
            }
        }
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "could not release the lease"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the lease task failed"),
        Err(_) => tracing::warn!("the lease was not released within 5s; it expires by itself"),
    }
}

type LeaseTask = tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>;

/// Takes the Lease (when leader election is on), runs the controllers until `shutdown` or until the Lease is lost,
/// then releases it. `Err` when it could not get as far as running the controllers; `Ok` at once when `shutdown`
/// comes while waiting for the Lease.
async fn lead_and_reconcile(
    client: &kube::Client,
    args: &config::OperatorArgs,
    shutdown: &CancellationToken,
) -> Result<anyhow::Result<()>, Startup> {
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
        let held = tokio::select! {
            held = leading.wait_for(|held| *held) => Some(held.map(drop)),
            () = shutdown.cancelled() => None,
        };
        match held {
            Some(held) => held.map_err(|e| Startup(e.into()))?,
            None => {
                // A replica that stops while waiting must not take the Lease on its way out.
                release(leading, task).await;
                return Ok(Ok(()));
            }
        }
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
                () = shutdown.cancelled() => Ok(()),
                _ = leading.wait_for(|held| !*held) => Err(anyhow::anyhow!("lost the lease {}; exiting so that another replica leads", args.lease_name)),
                () = operator.failed() => Err(anyhow::anyhow!("a controller stopped")),
            }
        }
        None => {
            tokio::select! {
                () = shutdown.cancelled() => Ok(()),
                () = operator.failed() => Err(anyhow::anyhow!("a controller stopped")),
            }
        }
    };
    operator.stop().await;
    metrics::gauge!("airq_operator_leader").set(0.0);
    if let Some((leading, task)) = lease {
        // At once, so that the next leader need not wait for the Lease to expire.
        release(leading, task).await;
        tracing::info!(lease = %args.lease_name, "lease released");
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
    let serve_args = config.serve.clone();
    let mut server = tokio::spawn(async move { run_service(telemetry, &serve_args, Router::new(), checks).await });
    metrics::gauge!("airq_operator_leader").set(0.0);

    let args = config.operator.clone();
    // One signal for every part: a listener made after SIGTERM arrived would never hear it.
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            airq_core::http::shutdown_signal().await;
            shutdown.cancel();
        }
    });
    let work = async {
        // Until the API server answers, keep trying (the probes say why it is not ready) rather than crash-loop.
        let mut attempt = 0u32;
        loop {
            match lead_and_reconcile(&client, &args, &shutdown).await {
                Err(Startup(err)) => {
                    attempt = attempt.saturating_add(1);
                    let delay = Duration::from_secs(u64::from(attempt.min(6)) * 5);
                    tracing::warn!(error = %err, retry_in = ?delay, "cannot start the controllers yet");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                Ok(outcome) => return outcome,
            }
        }
    };
    tokio::pin!(work);
    tokio::select! {
        outcome = &mut work => {
            outcome?;
            // The HTTP server stops on the same signal.
            let _ = tokio::time::timeout(Duration::from_secs(10), &mut server).await;
        }
        served = &mut server => {
            served??;
            // The server stops at SIGTERM too, often first: the controllers still stop and hand the Lease back
            // (otherwise the next leader waits for it to expire).
            work.await?;
        }
    }
    Ok(())
}

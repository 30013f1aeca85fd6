//! The airq-operator binary: it connects to a real API server, is ready only while it answers, serves its
//! operational endpoints, prints its CRDs, and elects one leader among replicas through a Lease.

use std::path::Path;
use std::time::Duration;

use airq_testenv::service::{RunningService, run_to_exit};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

const OPERATOR: &str = env!("CARGO_BIN_EXE_airq-operator");

async fn start(kubeconfig: &str, namespace: &str, identity: &str) -> anyhow::Result<RunningService> {
    Ok(RunningService::start(
        Path::new(OPERATOR),
        &[],
        &[
            ("KUBECONFIG", kubeconfig),
            ("AIRQ_WATCH_NAMESPACE", namespace),
            ("AIRQ_LEASE_NAMESPACE", namespace),
            ("AIRQ_POD_NAME", identity),
        ],
    )
    .await?)
}

async fn leads(operator: &RunningService) -> anyhow::Result<bool> {
    let (_, metrics) = operator.get("/metrics").await?;
    Ok(metrics.lines().any(|line| line.trim() == "airq_operator_leader 1"))
}

#[tokio::test]
async fn binary_is_ready_when_the_api_server_answers() -> anyhow::Result<()> {
    let cluster = airq_testenv::kubernetes().await?;
    let client = airq_testenv::kube_client().await?;
    let ns = airq_testenv::namespace(&client).await?;
    let kubeconfig = cluster.kubeconfig.to_string_lossy().into_owned();
    let operator = start(&kubeconfig, &ns, "solo").await?;
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
    let operator = start(&kubeconfig.to_string_lossy(), "nowhere", "lost").await?;
    let (status, body) = operator.get("/readyz").await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("kubernetes"), "{body}");
    Ok(())
}

#[tokio::test]
async fn crds_subcommand_prints_every_crd() -> anyhow::Result<()> {
    let (status, output) = run_to_exit(Path::new(OPERATOR), &["crds"], &[]).await?;
    assert!(status.success(), "{output}");
    for name in [
        "etlschedules.airq.dev",
        "predictivemodels.airq.dev",
        "adhocservices.airq.dev",
        "platforms.airq.dev",
    ] {
        assert!(output.contains(&format!("name: {name}")), "{name} missing");
    }
    Ok(())
}

#[tokio::test]
async fn one_replica_leads_and_the_other_takes_over_when_it_stops() -> anyhow::Result<()> {
    let cluster = airq_testenv::kubernetes().await?;
    let client = airq_testenv::kube_client().await?;
    let ns = airq_testenv::namespace(&client).await?;
    let kubeconfig = cluster.kubeconfig.to_string_lossy().into_owned();
    let first = start(&kubeconfig, &ns, "replica-a").await?;
    let second = start(&kubeconfig, &ns, "replica-b").await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);

    let holder = airq_testenv::eventually("one replica to lead", Duration::from_secs(30), || async {
        let (a, b) = (
            leads(&first).await.map_err(|e| e.to_string())?,
            leads(&second).await.map_err(|e| e.to_string())?,
        );
        match (a, b) {
            (true, false) => Ok("replica-a"),
            (false, true) => Ok("replica-b"),
            other => Err(format!("leaders: {other:?}")),
        }
    })
    .await?;
    let lease = leases.get("airq-operator").await?;
    assert_eq!(lease.spec.and_then(|s| s.holder_identity).as_deref(), Some(holder));

    // The leader stops (SIGTERM, as in a rolling update): the other replica takes the Lease.
    let (leader, follower) = if holder == "replica-a" {
        (first, second)
    } else {
        (second, first)
    };
    assert!(leader.terminate().await?.success());
    airq_testenv::eventually("the other replica to lead", Duration::from_secs(40), || async {
        if leads(&follower).await.map_err(|e| e.to_string())? {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    })
    .await?;
    let lease = leases.get("airq-operator").await?;
    assert_ne!(lease.spec.and_then(|s| s.holder_identity).as_deref(), Some(holder));
    Ok(())
}

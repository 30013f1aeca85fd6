//! Every file in `examples/` works as written: the API server accepts it, and the operator reconciles it without
//! finding anything wrong (given the Secrets the files' comments ask for).

mod common;

use airq_api::{AdhocService, EtlSchedule, Platform, PredictiveModel};
use common::{pod_database, secret, wait_for};
use kube::api::{Api, PostParams};

async fn apply_and_check<K: airq_testenv::kubernetes::Namespaced>(
    client: &kube::Client,
    ns: &str,
    text: &str,
    name: &str,
) -> anyhow::Result<()> {
    let object: K = serde_saphyr::from_str(text)?;
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &object).await?;
    wait_for(
        &api,
        name,
        &format!("{name} to be reconciled without a problem"),
        30,
        |object| {
            let (status, reason, message) = common::condition_of(object, "Ready").ok_or("no Ready condition yet")?;
            match reason.as_str() {
                "InvalidSpec" | "SecretNotFound" | "InvalidName" => Err(format!("{status} {reason}: {message}")),
                _ => Ok(()),
            }
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn every_example_is_accepted_and_reconciled() -> anyhow::Result<()> {
    let (client, ns, operator) = common::setup().await?;
    let database = pod_database(&client, &ns).await?;
    secret(&client, &ns, "openaq", "api-key", "k").await?;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let head: serde_json::Value = serde_saphyr::from_str(&text)?;
        let name = head["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let result = match head["kind"].as_str().unwrap_or_default() {
            "Platform" => apply_and_check::<Platform>(&client, &ns, &text, &name).await,
            "AdhocService" => apply_and_check::<AdhocService>(&client, &ns, &text, &name).await,
            "EtlSchedule" => apply_and_check::<EtlSchedule>(&client, &ns, &text, &name).await,
            "PredictiveModel" => apply_and_check::<PredictiveModel>(&client, &ns, &text, &name).await,
            other => Err(anyhow::anyhow!("unknown kind {other:?}")),
        };
        result.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        seen += 1;
    }
    assert!(seen >= 4, "only {seen} examples");
    operator.stop().await;
    database.test.remove().await?;
    airq_testenv::delete_namespace(&client, &ns).await?;
    Ok(())
}

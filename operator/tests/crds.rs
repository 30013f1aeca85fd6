//! The CRDs: the committed YAML is what the Rust types generate, and the real API server accepts them, serves
//! their printer columns, and rejects objects that break their schema or CEL rules with the rule's message.

mod common;

use airq_api::{AdhocService, EtlSchedule, Platform, PredictiveModel};
use kube::api::{Api, PostParams};

#[test]
fn committed_yaml_matches_the_rust_types() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in ["crds", "helm/airq/crds"] {
        for crd in airq_api::crds() {
            let file = root.join(dir).join(airq_operator::crds::file_name(&crd));
            let committed = std::fs::read_to_string(&file).unwrap_or_default();
            assert!(
                committed == airq_operator::crds::to_yaml(&crd)?,
                "{} is stale: run `cargo run -p airq-operator -- crds --output-dir {dir}` and commit the result",
                file.display()
            );
        }
    }
    Ok(())
}

async fn rejected<K: airq_testenv::kubernetes::Namespaced>(
    client: &kube::Client,
    ns: &str,
    yaml: &str,
) -> anyhow::Result<String> {
    let object: K = serde_saphyr::from_str(yaml)?;
    match Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &object)
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 422 => Ok(status.message),
        other => anyhow::bail!("expected 422 for\n{yaml}\ngot {other:?}"),
    }
}

#[tokio::test]
async fn the_api_server_enforces_the_schemas_and_cel_rules() -> anyhow::Result<()> {
    let client = airq_testenv::kube_client().await?;
    common::install_crds(&client).await?;
    let ns = airq_testenv::namespace(&client).await?;

    let two_sources = rejected::<EtlSchedule>(&client, &ns, "apiVersion: airq.dev/v1alpha1\nkind: EtlSchedule\nmetadata: { name: two }\nspec:\n  source: { csv: { url: /x.csv }, openMeteo: { points: [{ station: a, latitude: 1, longitude: 2 }], hourly: [pm2_5] } }\n").await?;
    assert!(
        two_sources.contains("set exactly one of csv, openaq or openMeteo"),
        "{two_sources}"
    );

    let backwards = rejected::<EtlSchedule>(&client, &ns, "apiVersion: airq.dev/v1alpha1\nkind: EtlSchedule\nmetadata: { name: back }\nspec:\n  source: { csv: { url: /x.csv } }\n  mode: backfill\n  backfill: { from: 2017-01-01, to: 2016-01-01 }\n").await?;
    assert!(
        backwards.contains("backfill.from must be before backfill.to"),
        "{backwards}"
    );

    let scheduled_backfill = rejected::<EtlSchedule>(&client, &ns, "apiVersion: airq.dev/v1alpha1\nkind: EtlSchedule\nmetadata: { name: sb }\nspec:\n  source: { csv: { url: /x.csv } }\n  mode: backfill\n  schedule: \"@daily\"\n  backfill: { from: 2016-01-01, to: 2017-01-01 }\n").await?;
    assert!(
        scheduled_backfill.contains("a backfill runs once"),
        "{scheduled_backfill}"
    );

    let no_range = rejected::<EtlSchedule>(&client, &ns, "apiVersion: airq.dev/v1alpha1\nkind: EtlSchedule\nmetadata: { name: nr }\nspec:\n  source: { csv: { url: /x.csv } }\n  mode: backfill\n").await?;
    assert!(no_range.contains("mode backfill needs spec.backfill"), "{no_range}");

    let two_algorithms = rejected::<PredictiveModel>(&client, &ns, "apiVersion: airq.dev/v1alpha1\nkind: PredictiveModel\nmetadata: { name: two }\nspec:\n  target: { pollutant: no2 }\n  algorithm: { knn: {}, linear: {} }\n").await?;
    assert!(two_algorithms.contains("set exactly one algorithm"), "{two_algorithms}");

    let bad_level = rejected::<PredictiveModel>(&client, &ns, "apiVersion: airq.dev/v1alpha1\nkind: PredictiveModel\nmetadata: { name: lvl }\nspec:\n  target: { pollutant: o3 }\n  algorithm: { persistence: {} }\n  confidenceLevels: [0.9, 1.5]\n").await?;
    assert!(bad_level.contains("strictly between 0 and 1"), "{bad_level}");

    let bad_pollutant = rejected::<PredictiveModel>(&client, &ns, "apiVersion: airq.dev/v1alpha1\nkind: PredictiveModel\nmetadata: { name: pol }\nspec:\n  target: { pollutant: smog }\n  algorithm: { persistence: {} }\n").await?;
    assert!(bad_pollutant.contains("spec.target.pollutant"), "{bad_pollutant}");

    let both_access = rejected::<AdhocService>(&client, &ns, "apiVersion: airq.dev/v1alpha1\nkind: AdhocService\nmetadata: { name: both }\nspec:\n  image: x/y:1\n  route: { pathPrefix: /adhoc/x/ }\n  access: { public: true, groups: [analysts] }\n").await?;
    assert!(both_access.contains("not both"), "{both_access}");

    let wrong_name = rejected::<Platform>(
        &client,
        &ns,
        "apiVersion: airq.dev/v1alpha1\nkind: Platform\nmetadata: { name: core }\nspec: {}\n",
    )
    .await?;
    assert!(wrong_name.contains("must be named airq"), "{wrong_name}");

    // Defaults are applied by the API server, so `kubectl get -o yaml` shows them.
    let model: PredictiveModel = common::create(&client, &ns, "apiVersion: airq.dev/v1alpha1\nkind: PredictiveModel\nmetadata: { name: defaults }\nspec:\n  target: { pollutant: no2 }\n  algorithm: { knn: {} }\n").await?;
    let knn = model.spec.algorithm.knn.clone().unwrap_or_else(|| panic!("no knn"));
    assert_eq!(
        (knn.k, model.spec.horizon_hours, model.spec.confidence_levels.clone()),
        (10, 24, vec![0.8, 0.9])
    );
    assert_eq!(model.spec.database.secret_name, "airq-database");
    Ok(())
}

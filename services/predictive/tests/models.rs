//! Models trained on a slice of the real Beijing data: every algorithm saved and loaded (as bytes and through the
//! database) forecasts identically; a parameter change changes the model; bad input gets a clear error.

#![allow(clippy::unwrap_used)]

mod common;

use airq_api::etl::CsvFormat;
use airq_core::db::Database;
use airq_core::parameter::Parameter;
use airq_predictive::cli::plan_for;
use airq_predictive::data::Dataset;
use airq_predictive::model::{Hours, Model, ModelError, Quiet, origins};
use airq_predictive::registry::Registry;
use airq_predictive::spec::ModelSpec;
use serde_json::json;

async fn slice() -> (tempfile::TempDir, Dataset) {
    let dir = tempfile::tempdir().unwrap();
    let csv = common::slice_csv(dir.path());
    let data = Dataset::from_csv(&csv.display().to_string(), CsvFormat::Beijing, Parameter::No2)
        .await
        .unwrap();
    (dir, data)
}

fn train(data: &Dataset, algorithm: serde_json::Value) -> Result<Model, ModelError> {
    let spec = ModelSpec::from_json(&common::spec(algorithm)).unwrap();
    let plan = plan_for(&spec, data).unwrap();
    Model::train(data, &spec, plan, &Quiet)
}

/// Forecasts from every day of May 2016 at 15:00 UTC, both stations.
fn may(data: &Dataset) -> Vec<(usize, usize)> {
    origins(data, 1_462_060_800, 1_464_739_200, 24, Some(15))
}

fn points(model: &Model, data: &Dataset) -> Vec<f32> {
    model
        .forecast_many(data, &may(data))
        .unwrap()
        .into_iter()
        .flat_map(|f| f.points)
        .collect()
}

fn algorithms() -> Vec<serde_json::Value> {
    vec![
        json!({ "knn": { "k": 7, "distance": "manhattan", "weights": "uniform", "scaling": "minMax" } }),
        json!({ "knn": { "k": 15, "distance": "cosine" } }),
        json!({ "linear": { "l2": 3.0 } }),
        json!({ "neuralNetwork": { "hiddenSizes": [16], "epochs": 3, "learningRate": 0.01, "earlyStoppingPatience": 2 } }),
        json!({ "persistence": {} }),
        json!({ "seasonalNaive": { "seasonHours": 24 } }),
        json!({ "climatology": {} }),
        json!({ "gbm": { "trees": 40, "maxDepth": 4, "maxLeaves": 12, "learningRate": 0.1, "minLeafSamples": 20 } }),
        json!({ "ensemble": { "members": [
            { "gbm": { "trees": 20 }, "logTransform": false },
            { "linear": {} },
            { "persistence": {} },
        ] } }),
    ]
}

#[tokio::test]
async fn every_algorithm_saved_and_loaded_forecasts_identically() {
    let (_dir, data) = slice().await;
    assert_eq!(data.stations.len(), 2);
    let test_db = airq_testenv::database().await.unwrap();
    let db = Database::connect_url(&test_db.url, 3).await.unwrap();
    db.migrate().await.unwrap();
    let registry = Registry::new(db.clone());
    for algorithm in algorithms() {
        let model = train(&data, algorithm.clone()).unwrap();
        let before = points(&model, &data);
        assert!(before.iter().all(|p| p.is_finite()), "{algorithm}");
        let loaded = Model::from_bytes(&model.to_bytes().unwrap()).unwrap();
        assert_eq!(points(&loaded, &data), before, "{algorithm} through bytes");
        assert_eq!(loaded.meta, model.meta);
        assert_eq!(loaded.conformal, model.conformal);
        assert_eq!(loaded.pool, model.pool, "{algorithm}");
        // Through the database: a new version each time, read back whole.
        let stored = registry
            .save("m", &model, Some("rev"), &json!({"mae": 1.0}), 0.5)
            .await
            .unwrap();
        let (again, from_db) = registry.load("m", None).await.unwrap().unwrap();
        assert_eq!(again.version, stored.version);
        assert_eq!(points(&from_db, &data), before, "{algorithm} through the database");
        // The intervals are the same too.
        assert_eq!(
            from_db.conformal.offsets(5, before[5], 0.9, false).unwrap(),
            model.conformal.offsets(5, before[5], 0.9, false).unwrap()
        );
    }
    let versions = registry.versions(Some("m")).await.unwrap();
    assert_eq!(versions.len(), algorithms().len());
    assert_eq!(versions[0].version, format!("v{}", algorithms().len()));
    assert_eq!(versions.last().unwrap().version, "v1");
    db.close().await;
    test_db.remove().await.unwrap();
}

#[tokio::test]
async fn an_ensemble_weighs_its_members_per_hour_ahead() {
    let (_dir, data) = slice().await;
    let model = train(
        &data,
        json!({ "ensemble": { "members": [
            { "linear": {} }, { "persistence": {} }, { "climatology": {} },
            { "gbm": { "trees": 25 }, "logTransform": false },
        ] } }),
    )
    .unwrap();
    let meta = model.meta.ensemble.as_ref().unwrap();
    assert_eq!(meta.members, ["linear", "persistence", "climatology", "gbm"]);
    // As documented: per hour ahead, one weight per member, none negative, summing to 1.
    assert_eq!(meta.weights.len(), 24);
    for (h, w) in meta.weights.iter().enumerate() {
        assert_eq!(w.len(), 4);
        assert!(w.iter().all(|x| *x >= 0.0), "{h}: {w:?}");
        assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-4, "{h}: {w:?}");
    }
    assert!((meta.mean_weights.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    // Persistence matters most one hour ahead, less a day ahead.
    assert!(meta.weights[0][1] > meta.weights[23][1], "{:?}", meta.weights);
    // A stored version says them (`metrics` of the versions' listing).
    let evaluation = airq_predictive::evaluate::test_model(&model, &data, 1_462_060_800, 1_464_739_200, 15).unwrap();
    let metrics = airq_predictive::cli::version_metrics(&model, &evaluation).unwrap();
    assert_eq!(metrics["ensemble"]["members"][3], "gbm", "{metrics}");
    assert_eq!(metrics["ensemble"]["weights"].as_array().unwrap().len(), 24);
    assert!(metrics["mae"].as_f64().unwrap() > 0.0);
    // The combination is each member's forecast weighted.
    let three = [
        json!({ "linear": {} }),
        json!({ "persistence": {} }),
        json!({ "climatology": {} }),
    ];
    let ensemble = train(&data, json!({ "ensemble": { "members": three } })).unwrap();
    let weights = &ensemble.meta.ensemble.as_ref().unwrap().weights;
    let combined = points(&ensemble, &data);
    let members: Vec<Vec<f32>> = three
        .iter()
        .map(|a| points(&train(&data, a.clone()).unwrap(), &data))
        .collect();
    for (i, c) in combined.iter().enumerate() {
        let expected: f32 = (0..3).map(|m| weights[i % 24][m] * members[m][i]).sum();
        assert!((c - expected).abs() < 1e-4, "{i}: {c} against {expected}");
    }
    // `combineOn: concentration` with the features on the logarithm: the members' concentrations are averaged (the
    // forecast is still stored on the logarithm, where the intervals are calibrated).
    let on_concentration = train(
        &data,
        json!({ "ensemble": { "members": three, "combineOn": "concentration" } }),
    )
    .unwrap();
    let weights_c = &on_concentration.meta.ensemble.as_ref().unwrap().weights;
    assert_ne!(weights_c, weights, "weighed on another scale");
    let combined_c = points(&on_concentration, &data);
    for (i, c) in combined_c.iter().enumerate() {
        let mean: f32 = (0..3)
            .map(|m| weights_c[i % 24][m] * members[m][i].exp_m1().max(0.0))
            .sum();
        assert!(
            (c.exp_m1() - mean).abs() < 1e-3 * mean.max(1.0),
            "{i}: {} against {mean}",
            c.exp_m1()
        );
    }
    // Its intervals are calibrated on the logarithm: wider, in concentration, for a larger forecast.
    let conformal = &on_concentration.conformal;
    let width = |p: f32| {
        let (lo, hi) = conformal.offsets(5, p, 0.9, false).unwrap();
        (p + hi).exp_m1() - (p + lo).exp_m1()
    };
    assert!(width(5.0) > 5.0 * width(2.0), "{} against {}", width(5.0), width(2.0));
}

/// The example ensemble is the report's, and trains and forecasts.
#[tokio::test]
async fn the_example_ensemble_trains() {
    let (_dir, data) = slice().await;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/model-pm25-ensemble.yaml");
    let manifest: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let example = ModelSpec::from_json(&manifest["spec"]).unwrap();
    let (_, reported) = airq_predictive::suite::suite("pm25")
        .into_iter()
        .find(|(name, _)| name.starts_with("ensemble"))
        .unwrap();
    assert_eq!(example.algorithm, reported.algorithm);
    assert_eq!(example.features, reported.features);
    let mut spec = common::spec(serde_json::to_value(&example.algorithm).unwrap());
    spec["features"] = serde_json::to_value(&example.features).unwrap();
    let spec = ModelSpec::from_json(&spec).unwrap();
    let model = Model::train(&data, &spec, plan_for(&spec, &data).unwrap(), &Quiet).unwrap();
    let meta = model.meta.ensemble.as_ref().unwrap();
    assert_eq!(meta.members.len(), 8);
    let forecasts = model.forecast_many(&data, &may(&data)).unwrap();
    assert!(
        forecasts
            .iter()
            .flat_map(|f| &f.points)
            .all(|p| p.is_finite() && *p >= 0.0)
    );
    let loaded = Model::from_bytes(&model.to_bytes().unwrap()).unwrap();
    assert_eq!(
        loaded.forecast_many(&data, &may(&data)).unwrap(),
        forecasts,
        "through bytes"
    );
    // A forecast of some hours only (a request with `at`) gives those hours exactly as the whole one does.
    let some = model
        .forecast_hours(&data, &may(&data), &Hours::Only(vec![1, 7, 24]))
        .unwrap();
    for (part, whole) in some.iter().zip(&forecasts) {
        assert_eq!(part.fallback, whole.fallback);
        for h in [1, 7, 24] {
            assert_eq!(part.points[h - 1], whole.points[h - 1], "{h} h ahead");
        }
    }
}

#[tokio::test]
async fn a_parameter_change_changes_the_model() {
    let (_dir, data) = slice().await;
    let pairs = [
        (json!({ "knn": { "k": 3 } }), json!({ "knn": { "k": 60 } })),
        (
            json!({ "knn": { "k": 20, "weights": "uniform" } }),
            json!({ "knn": { "k": 20, "weights": "distance" } }),
        ),
        (
            json!({ "linear": { "l2": 0.0 } }),
            json!({ "linear": { "l2": 100000.0 } }),
        ),
        (
            json!({ "neuralNetwork": { "hiddenSizes": [8], "epochs": 2 } }),
            json!({ "neuralNetwork": { "hiddenSizes": [32, 8], "epochs": 2 } }),
        ),
        (
            json!({ "neuralNetwork": { "hiddenSizes": [8], "epochs": 2 } }),
            json!({ "neuralNetwork": { "hiddenSizes": [8], "epochs": 2, "loss": "squaredError" } }),
        ),
        (
            json!({ "seasonalNaive": { "seasonHours": 24 } }),
            json!({ "seasonalNaive": { "seasonHours": 168 } }),
        ),
        (
            json!({ "gbm": { "trees": 30, "maxDepth": 2 } }),
            json!({ "gbm": { "trees": 30, "maxDepth": 6 } }),
        ),
        (
            json!({ "ensemble": { "members": [{ "linear": {} }, { "climatology": {} }] } }),
            json!({ "ensemble": { "members": [{ "linear": {} }, { "persistence": {} }] } }),
        ),
    ];
    for (a, b) in pairs {
        let pa = points(&train(&data, a.clone()).unwrap(), &data);
        let pb = points(&train(&data, b.clone()).unwrap(), &data);
        assert_ne!(pa, pb, "{a} and {b} must give different models");
        // The same parameters give the same model: training is deterministic.
        assert_eq!(points(&train(&data, a.clone()).unwrap(), &data), pa, "{a} twice");
    }
}

#[tokio::test]
async fn bad_inputs_get_clear_errors() {
    let (_dir, data) = slice().await;
    // A training window without data.
    let mut empty = common::spec(json!({ "knn": {} }));
    empty["training"] = json!({ "from": "2020-01-01", "to": "2020-02-01" });
    let spec = ModelSpec::from_json(&empty).unwrap();
    let e = plan_for(&spec, &data).unwrap_err().to_string();
    assert!(
        e.contains("training window is empty") && e.contains("the data covers"),
        "{e}"
    );
    // A window inside the data's span where the pollutant is absent: a plan over hours before the data.
    let plan = airq_predictive::model::Plan {
        fit_from: data.start - 86_400 * 30,
        fit_to: data.start,
        calibrate_from: data.start,
        calibrate_to: data.start + 86_400 * 30,
        origin_hour: None,
    };
    let e = Model::train(&data, &spec, plan, &Quiet).unwrap_err();
    assert!(matches!(e, ModelError::EmptyWindow(_)), "{e}");
    assert!(e.to_string().contains("no no2 values between"), "{e}");
    // An unknown algorithm.
    let e = ModelSpec::from_json(&common::spec(json!({ "xgboost": { "depth": 3 } }))).unwrap_err();
    assert_eq!(e.field, "algorithm");
    assert!(e.message.contains("unknown algorithm \"xgboost\""), "{e}");
    // k larger than the sample: two months, two stations, so about 90 origins per hour of day.
    let mut short = common::spec(json!({ "knn": { "k": 1000 } }));
    short["training"] = json!({ "from": "2016-04-01", "to": "2016-06-01", "calibrationFraction": 0.25 });
    let spec = ModelSpec::from_json(&short).unwrap();
    let e = Model::train(&data, &spec, plan_for(&spec, &data).unwrap(), &Quiet).unwrap_err();
    assert!(
        e.to_string()
            .contains("knn.k = 1000 is larger than the training sample"),
        "{e}"
    );
    // A confidence level the calibration cannot support.
    let model = train(&data, json!({ "persistence": {} })).unwrap();
    let e = model.conformal.offsets(0, 3.0, 0.9999, false).unwrap_err().to_string();
    assert!(e.contains("calibration forecasts bound levels up to"), "{e}");
}

/// A spec asking for weather on data without some of it trains with what there is (wind alone here), and says which
/// inputs were absent in the model, its evaluation and the table; with no weather at all, without weather features.
#[tokio::test]
async fn weather_the_data_lacks_is_left_out_and_said() {
    let (_dir, mut data) = slice().await;
    let spec = ModelSpec::from_json(&common::spec(json!({ "linear": { "l2": 1.0 } }))).unwrap();
    assert!(spec.features.weather);
    // Only the wind: temperature, pressure, dew point and rain removed at every station.
    for station in &mut data.stations {
        for k in 0..4 {
            station.weather[k].iter_mut().for_each(|v| *v = f32::NAN);
        }
    }
    let plan = plan_for(&spec, &data).unwrap();
    let (model, evaluation) = airq_predictive::cli::train_and_score(&data, &spec, plan, &Quiet).unwrap();
    assert_eq!(evaluation.inputs_absent, ["temp", "pres", "dewp", "rain"]);
    let weather: Vec<&String> = evaluation
        .features
        .iter()
        .filter(|f| !f.starts_with("lag") && f.as_str() != "mean24" && !f.contains('.'))
        .collect();
    assert_eq!(weather, ["wspm", "windEast", "windNorth"]);
    // Trained on what exists: its forecasts come from the model, not the climatology fallback.
    assert!(evaluation.fallbacks * 2 < evaluation.forecasts, "{evaluation:?}");
    // Stored and read back, the model still knows.
    let back = Model::from_bytes(&model.to_bytes().unwrap()).unwrap();
    assert_eq!(back.meta.featurizer.weather_absent, ["temp", "pres", "dewp", "rain"]);
    let table = airq_predictive::cli::markdown(&[airq_predictive::cli::Row {
        pollutant: "no2".to_owned(),
        algorithm: "linear".to_owned(),
        train_seconds: 1.0,
        evaluation: evaluation.clone(),
    }]);
    assert!(
        table.contains("Inputs absent") && table.contains("temp, pres, dewp, rain"),
        "{table}"
    );

    // No weather at all: no weather feature, every input said absent.
    for station in &mut data.stations {
        for k in 0..6 {
            station.weather[k].iter_mut().for_each(|v| *v = f32::NAN);
        }
    }
    let (model, evaluation) = airq_predictive::cli::train_and_score(&data, &spec, plan, &Quiet).unwrap();
    assert!(!model.meta.featurizer.weather);
    assert_eq!(evaluation.inputs_absent.len(), 6);
    assert!(!evaluation.features.iter().any(|f| f.contains("wind") || f == "temp"));
}

/// A model 168 hours ahead: every origin gets 168 points, and the intervals widen with the hours ahead.
#[tokio::test]
async fn a_seven_day_forecast_has_168_points_with_widening_intervals() {
    let (_dir, data) = slice().await;
    for algorithm in [json!({ "linear": {} }), json!({ "gbm": { "trees": 20 } })] {
        let mut spec = common::spec(algorithm.clone());
        spec["horizonHours"] = json!(168);
        let spec = ModelSpec::from_json(&spec).unwrap();
        let model = Model::train(&data, &spec, plan_for(&spec, &data).unwrap(), &Quiet).unwrap();
        assert_eq!(model.horizon(), 168);
        let keys = origins(&data, 1_462_060_800, 1_464_739_200, 168, Some(15));
        assert!(!keys.is_empty());
        let forecasts = model.forecast_many(&data, &keys).unwrap();
        let mut width = vec![0f64; 168];
        for f in &forecasts {
            assert_eq!(f.points.len(), 168, "{algorithm}");
            for (h, p) in f.points.iter().enumerate() {
                let (lo, hi) = model.conformal.offsets(h, *p, 0.9, f.fallback).unwrap();
                let fz = &model.meta.featurizer;
                width[h] += f64::from(fz.inverse(p + hi) - fz.inverse(p + lo)) / forecasts.len() as f64;
            }
        }
        let day = |d: usize| width[d * 24..(d + 1) * 24].iter().sum::<f64>() / 24.0;
        // Wider every later day than on the first (the errors grow over the first day or two, then level off near
        // the climatology's spread).
        assert!(
            (1..7).all(|d| day(d) > day(0)),
            "{algorithm}: mean 90 % widths per day {:?}",
            (0..7).map(day).collect::<Vec<_>>()
        );
        assert!(width[0] < width[167], "{algorithm}: {} then {}", width[0], width[167]);
        // The evaluation says each day ahead apart.
        let e = airq_predictive::evaluate::test_model(&model, &data, 1_462_060_800, 1_464_739_200, 15).unwrap();
        let bands: Vec<(usize, usize)> = e.by_lead.iter().map(|l| (l.from_hour, l.to_hour)).collect();
        assert_eq!(bands, [(1, 24), (25, 48), (49, 72), (145, 168)], "{algorithm}");
        assert!(
            e.by_lead
                .iter()
                .all(|l| l.values > 0 && l.mae.is_finite() && l.adaptive.len() == 2)
        );
        // Each day's values are that day's hours: a day's worth of origins, less those whose truth is past the data.
        assert!(
            e.by_lead[3].values <= e.by_lead[0].values,
            "{algorithm}: {:?}",
            e.by_lead
        );
    }
}

/// A seven-day ensemble pools its distribution with the climatology's where that scored better on the calibration
/// period: the weights are said per day, stored, and make the served intervals; turned off, the intervals are the
/// plain split-conformal ones.
#[tokio::test]
async fn an_ensembles_distribution_is_pooled_with_the_climatologys() {
    let (_dir, data) = slice().await;
    let members = json!([{ "linear": {} }, { "persistence": {} }]);
    let trained = |pool: bool| {
        let mut spec = common::spec(json!({ "ensemble": { "members": members, "poolWithClimatology": pool } }));
        spec["horizonHours"] = json!(168);
        let spec = ModelSpec::from_json(&spec).unwrap();
        Model::train(&data, &spec, plan_for(&spec, &data).unwrap(), &Quiet).unwrap()
    };
    let model = trained(true);
    let weights = model.meta.ensemble.as_ref().unwrap().pool_weights.clone().unwrap();
    assert_eq!(weights.len(), 7);
    assert!(weights.iter().all(|w| (0.0..=1.0).contains(w)), "{weights:?}");
    // A week ahead, linear and persistence know less than the season: the climatology takes part of the mass.
    assert!(weights[6] < 1.0, "{weights:?}");
    let pool = model.pool.as_ref().unwrap();
    assert_eq!(pool.weights.len(), 168);
    assert_eq!(pool.weights[167], weights[6]);
    let loaded = Model::from_bytes(&model.to_bytes().unwrap()).unwrap();
    assert_eq!(loaded.pool, model.pool);
    let plain = trained(false);
    assert!(plain.pool.is_none() && plain.meta.ensemble.as_ref().unwrap().pool_weights.is_none());
    // The same forecasts and the same residuals: only the distribution differs.
    assert_eq!(points(&plain, &data), points(&model, &data));
    assert_eq!(plain.conformal, model.conformal);
    let keys = origins(&data, 1_462_060_800, 1_464_739_200, 168, Some(15));
    let forecasts = model.forecast_many(&data, &keys).unwrap();
    let (mut differ, mut quantiles) = (0, Vec::new());
    for ((s, o), f) in keys.iter().zip(&forecasts) {
        let h = 160;
        let (p, time) = (f.points[h], data.time(o + h + 1));
        let c = model.climatology_point(&data.stations[*s].code, time);
        let pooled = loaded.distribution().interval(h, p, c, 0.9, f.fallback).unwrap();
        assert_eq!(pooled, model.distribution().interval(h, p, c, 0.9, f.fallback).unwrap());
        let (lo, hi) = plain.conformal.offsets(h, p, 0.9, f.fallback).unwrap();
        let alone = plain.distribution().interval(h, p, f32::NAN, 0.9, f.fallback).unwrap();
        assert_eq!(alone, (p + lo, p + hi));
        differ += usize::from(pooled != alone);
        assert!(pooled.0 <= pooled.1);
        // The 80 % interval lies within the 90 % one; the distribution's quantiles rise.
        let inner = model.distribution().interval(h, p, c, 0.8, f.fallback).unwrap();
        assert!(inner.0 >= pooled.0 && inner.1 <= pooled.1, "{inner:?} {pooled:?}");
        model.distribution().quantiles(h, p, c, f.fallback, &mut quantiles);
        assert_eq!(quantiles.len(), 199);
        assert!(quantiles.windows(2).all(|q| q[0] <= q[1]));
    }
    assert!(differ > 0, "no pooled interval differs from the model's own");
}

//! The algorithm configurations compared by the evaluation report: the three baselines, the four learned
//! algorithms and the default ensemble of them all, with the parameters the report was tuned with.

use serde_json::json;

use crate::spec::ModelSpec;

/// `(name, spec)` for `pollutant`, every algorithm of the report.
pub fn suite(pollutant: &str) -> Vec<(String, ModelSpec)> {
    let features =
        json!({ "lags": [1, 2, 3, 6, 12, 24, 48, 168], "calendar": true, "weather": true, "logTransform": true });
    let configs = [
        ("persistence", json!({ "persistence": {} })),
        (
            "seasonal naive (24 h)",
            json!({ "seasonalNaive": { "seasonHours": 24 } }),
        ),
        ("climatology", json!({ "climatology": {} })),
        (
            "knn (k=50, euclidean, distance)",
            json!({ "knn": { "k": 50, "distance": "euclidean", "weights": "distance", "scaling": "standard" } }),
        ),
        ("linear (ridge, l2=1)", json!({ "linear": { "l2": 1.0 } })),
        ("neural network (64-32)", json!({ "neuralNetwork": network() })),
        ("gbm (≤500 trees, 31 leaves, rate 0.05)", json!({ "gbm": {} })),
        ("ensemble (8 members)", json!({ "ensemble": ensemble() })),
    ];
    configs
        .into_iter()
        .filter_map(|(name, algorithm)| {
            let spec = json!({
                "target": { "pollutant": pollutant },
                "horizonHours": 24,
                "confidenceLevels": [0.8, 0.9],
                "algorithm": algorithm,
                "features": features.clone(),
            });
            ModelSpec::from_json(&spec).ok().map(|s| (name.to_owned(), s))
        })
        .collect()
}

fn network() -> serde_json::Value {
    json!({ "hiddenSizes": [64, 32], "epochs": 60, "learningRate": 0.001, "earlyStoppingPatience": 6 })
}

/// The default ensemble (`examples/model-pm25-ensemble.yaml`): gradient boosting and the network each on the
/// logarithm and on the concentration, the ridge model and kNN on the logarithm, and two baselines; the calibration
/// period weighs them, averaging concentrations; the intervals are calibrated on the features' scale (the
/// logarithm), so they scale with the forecast.
pub fn ensemble() -> serde_json::Value {
    json!({ "combineOn": "concentration", "members": [
        { "gbm": {}, "logTransform": true },
        { "gbm": {}, "logTransform": false },
        { "neuralNetwork": network(), "logTransform": true },
        { "neuralNetwork": network(), "logTransform": false },
        { "linear": { "l2": 1.0 }, "logTransform": true },
        { "knn": { "k": 50 }, "logTransform": true },
        { "persistence": {} },
        { "climatology": {} },
    ] })
}

//! The algorithm configurations compared by the evaluation report: the three baselines and the three learned
//! algorithms, with the parameters the report was tuned with.

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
        (
            "neural network (64-32)",
            json!({ "neuralNetwork": { "hiddenSizes": [64, 32], "epochs": 60, "learningRate": 0.001, "earlyStoppingPatience": 6 } }),
        ),
    ];
    configs
        .into_iter()
        .filter_map(|(name, algorithm)| {
            let spec = json!({
                "target": { "pollutant": pollutant },
                "horizonHours": 24,
                "confidenceLevels": [0.8, 0.9],
                "algorithm": algorithm,
                "features": features,
            });
            ModelSpec::from_json(&spec).ok().map(|s| (name.to_owned(), s))
        })
        .collect()
}

"""LightGBM itself on the features airq exported (`airq-predictive evaluate --spec … --export <dir>`).

One LightGBM booster per hour ahead, on the same fitting origins and features as airq's learned models, on the
scale the exported spec models (its `logTransform`), early-stopped on the newest tenth of the fitting origins as
airq's gbm is. The parameters are airq's gbm defaults (LightGBM's own defaults but 31 leaves at depth ≤ 8, learning
rate 0.05, 50 origins per leaf, L2 1, at most 500 rounds, stopping after 20 without improvement). Both LightGBM and
airq's forecasts of the exported spec are scored on the same test values. Prints one JSON object. With
`--airq-only`, scores airq's forecasts alone.
"""

import json
import sys
import time
import warnings

import lightgbm as lgb
import numpy as np

# LightGBM 4.7 announces a rename of `eval_set`; the bench keeps the argument every 4.x version accepts.
warnings.filterwarnings("ignore", message=".*eval_set.*")

folder = sys.argv[1]
airq_only = "--airq-only" in sys.argv[2:]
meta = json.load(open(f"{folder}/meta.json"))
dim, horizon = meta["dim"], meta["horizon"]
fit = np.loadtxt(f"{folder}/fit.csv", delimiter=",", dtype=np.float64)
times = np.loadtxt(f"{folder}/fit-times.csv", dtype=np.int64)
test = np.loadtxt(f"{folder}/test.csv", delimiter=",", dtype=np.float64)
fit_x, fit_y = fit[:, 1 : 1 + dim], fit[:, 1 + dim :]
test_x = test[:, :dim]
truth = test[:, dim : dim + horizon]
airq = test[:, dim + horizon :]

known = ~np.isnan(truth)
airq_mae = float(np.abs(airq - truth)[known].mean())
if airq_only:
    print(json.dumps({"airqAlgorithm": meta["algorithm"], "airqMae": airq_mae, "valuesScored": int(known.sum())}))
    sys.exit(0)

cut = np.sort(times)[len(times) * 9 // 10]
train, valid = times < cut, times >= cut
started = time.perf_counter()
predicted = np.zeros((len(test_x), horizon))
rounds = []
for h in range(horizon):
    model = lgb.LGBMRegressor(
        n_estimators=500,
        learning_rate=0.05,
        num_leaves=31,
        max_depth=8,
        min_child_samples=50,
        reg_lambda=1.0,
        verbose=-1,
    )
    model.fit(
        fit_x[train],
        fit_y[train, h],
        eval_set=[(fit_x[valid], fit_y[valid, h])],
        callbacks=[lgb.early_stopping(20, verbose=False)],
    )
    rounds.append(int(model.best_iteration_ or 500))
    predicted[:, h] = model.predict(test_x)
seconds = time.perf_counter() - started
if meta["logTransform"]:
    predicted = np.maximum(np.expm1(predicted), 0.0)

print(
    json.dumps(
        {
            "testRows": int(test.shape[0]),
            "valuesScored": int(known.sum()),
            "lightgbmSeconds": seconds,
            "lightgbmMae": float(np.abs(predicted - truth)[known].mean()),
            "lightgbmRounds": rounds,
            "airqAlgorithm": meta["algorithm"],
            "airqSeconds": meta["airqFitSeconds"],
            "airqMae": airq_mae,
        }
    )
)

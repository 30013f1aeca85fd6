"""The same kNN configuration in scikit-learn, on the features airq exported (`airq-predictive evaluate --export`).

airq's kNN standardises the features over every fitting origin, then searches the neighbours among the origins at the
query's hour of day and averages their trajectories (log space) with the chosen weights. This script does the same
with StandardScaler and KNeighborsRegressor, and scores both on the same test rows. Prints one JSON object.
"""

import json
import sys
import time

import numpy as np
from sklearn.neighbors import KNeighborsRegressor
from sklearn.preprocessing import MinMaxScaler, StandardScaler

folder = sys.argv[1]
meta = json.load(open(f"{folder}/meta.json"))
dim, horizon = meta["dim"], meta["horizon"]
fit = np.loadtxt(f"{folder}/fit.csv", delimiter=",", dtype=np.float64)
test = np.loadtxt(f"{folder}/test.csv", delimiter=",", dtype=np.float64)
hours, fit_x, fit_y = fit[:, 0], fit[:, 1 : 1 + dim], fit[:, 1 + dim :]
test_x = test[:, :dim]
truth = test[:, dim : dim + horizon]
airq = test[:, dim + horizon :]

started = time.perf_counter()
scaler = {"standard": StandardScaler(), "minMax": MinMaxScaler()}.get(meta["scaling"])
if scaler is not None:
    scaler.fit(fit_x)
    scale = scaler.transform
else:
    scale = lambda x: x  # noqa: E731
at_hour = hours == meta["originHourUtc"]
model = KNeighborsRegressor(
    n_neighbors=meta["k"],
    weights=meta["weights"],
    metric={"euclidean": "euclidean", "manhattan": "manhattan", "cosine": "cosine"}[meta["distance"]],
    algorithm="brute" if meta["distance"] == "cosine" else "auto",
)
model.fit(scale(fit_x[at_hour]), fit_y[at_hour])
fit_seconds = time.perf_counter() - started

started = time.perf_counter()
predicted = model.predict(scale(test_x))
predict_seconds = time.perf_counter() - started
if meta["logTransform"]:
    predicted = np.maximum(np.expm1(predicted), 0.0)

known = ~np.isnan(truth)
sklearn_mae = float(np.abs(predicted - truth)[known].mean())
airq_mae = float(np.abs(airq - truth)[known].mean())
print(
    json.dumps(
        {
            "testRows": int(test.shape[0]),
            "valuesScored": int(known.sum()),
            "sklearnFitSeconds": fit_seconds,
            "sklearnForecastSeconds": predict_seconds,
            "sklearnMae": sklearn_mae,
            "airqFitSeconds": meta["airqFitSeconds"],
            "airqForecastSeconds": meta["airqForecastSeconds"],
            "airqMae": airq_mae,
            "meanAbsDifference": float(np.abs(predicted - airq)[known].mean()),
        }
    )
)

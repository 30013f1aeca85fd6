#!/usr/bin/env bash
# The predictive service's evaluation report and the scikit-learn comparison, on this machine:
#   1. the design brief's protocol for every algorithm (the baselines included) on PM2.5, NO2 and O3;
#   2. the same kNN configuration in scikit-learn (installed from PyPI into a throwaway virtualenv), on the features
#      airq exports, for time and accuracy.
# Usage: services/predictive/benches/report.sh [beijing folder]   (default: ../shared/data/beijing-multisite)
set -euo pipefail
cd "$(dirname "$0")/../../.."
data="${1:-${AIRQ_SHARED_DATA:-../shared/data}/beijing-multisite}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -q -p airq-predictive
bin="$CARGO_TARGET_DIR/release/airq-predictive"

echo "## Evaluation protocol, every algorithm"
"$bin" evaluate --csv "$data" --all --pollutants pm25,no2,o3 --log-level warn --json "$work/evaluation.json"

python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet scikit-learn numpy
echo
echo "## kNN: airq against scikit-learn (same features, k=50, euclidean, distance weights, standard scaling)"
echo "| Pollutant | airq fit s | airq forecast s | airq MAE | scikit-learn fit s | scikit-learn forecast s | scikit-learn MAE | mean abs. difference |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for pollutant in pm25 no2 o3; do
  spec='{"target":{"pollutant":"'$pollutant'"},"algorithm":{"knn":{"k":50,"distance":"euclidean","weights":"distance","scaling":"standard"}},"features":{"lags":[1,2,3,6,12,24,48,168],"calendar":true,"weather":true,"logTransform":true}}'
  "$bin" evaluate --csv "$data" --spec "$spec" --export "$work/$pollutant" --log-level warn >/dev/null
  "$work/venv/bin/python" services/predictive/benches/sklearn_knn.py "$work/$pollutant" \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); print("| '$pollutant' | %.3f | %.3f | %.2f | %.3f | %.3f | %.2f | %.4f |" % (r["airqFitSeconds"], r["airqForecastSeconds"], r["airqMae"], r["sklearnFitSeconds"], r["sklearnForecastSeconds"], r["sklearnMae"], r["meanAbsDifference"]))'
done

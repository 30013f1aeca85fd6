#!/usr/bin/env bash
# The predictive service's evaluation report and the comparisons with other libraries, on this machine:
#   1. the design brief's protocol for every algorithm (the baselines, gbm and the default ensemble included) on
#      PM2.5, NO2 and O3;
#   2. the same kNN configuration in scikit-learn, on the features airq exports, for time and accuracy;
#   3. LightGBM itself (one booster per hour ahead, airq's gbm parameters) on the same features, on both scales,
#      against airq's gbm and the default ensemble on the same test values;
#   4. days ahead: every algorithm of 1. trained for 168 hours ahead, scored by day ahead against the baselines
#      (up to half of the report's 37 minutes on 2 vCPUs; AIRQ_REPORT_DAYS_AHEAD=0 leaves it out).
# Python packages come from PyPI into a throwaway virtualenv.
# Usage: services/predictive/benches/report.sh [--update-docs] [beijing folder]
#   (default folder: ../shared/data/beijing-multisite). With --update-docs the report replaces the part of
#   docs/benchmarks.md between "<!-- evaluation report: begin -->" and "<!-- evaluation report: end -->".
set -euo pipefail
cd "$(dirname "$0")/../../.."
update=false
if [[ "${1:-}" == "--update-docs" ]]; then
  update=true
  shift
fi
data="${1:-${AIRQ_SHARED_DATA:-../shared/data}/beijing-multisite}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -q -p airq-predictive
bin="$CARGO_TARGET_DIR/release/airq-predictive"
features='{"lags":[1,2,3,6,12,24,48,168],"calendar":true,"weather":true,"logTransform":true}'

python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet scikit-learn numpy lightgbm pyyaml

report() {
  echo "Machine: $(nproc) vCPU $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), $(free -g | awk '/^Mem:/ {print $2}') GiB;" \
    "$(date -u +%F); commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' with changes');" \
    "command: \`services/predictive/benches/report.sh\`."
  echo
  echo "#### Evaluation protocol, every algorithm"
  echo
  "$bin" evaluate --csv "$data" --all --pollutants pm25,no2,o3 --log-level warn --json "$work/evaluation.json"
  echo
  echo "#### kNN: airq against scikit-learn (same features, k=50, euclidean, distance weights, standard scaling)"
  echo
  echo "| Pollutant | airq fit s | airq forecast s | airq MAE | scikit-learn fit s | scikit-learn forecast s | scikit-learn MAE | mean abs. difference |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for pollutant in pm25 no2 o3; do
    spec='{"target":{"pollutant":"'$pollutant'"},"algorithm":{"knn":{"k":50,"distance":"euclidean","weights":"distance","scaling":"standard"}},"features":'$features'}'
    "$bin" evaluate --csv "$data" --spec "$spec" --export "$work/knn-$pollutant" --log-level warn >/dev/null
    "$work/venv/bin/python" services/predictive/benches/sklearn_knn.py "$work/knn-$pollutant" \
      | python3 -c 'import json,sys; r=json.load(sys.stdin); print("| '$pollutant' | %.3f | %.3f | %.2f | %.3f | %.3f | %.2f | %.4f |" % (r["airqFitSeconds"], r["airqForecastSeconds"], r["airqMae"], r["sklearnFitSeconds"], r["sklearnForecastSeconds"], r["sklearnMae"], r["meanAbsDifference"]))'
  done
  echo
  echo "#### LightGBM against airq's gbm and the default ensemble (same features, same test values)"
  echo
  echo "| Pollutant | Scale | LightGBM MAE | LightGBM s | airq gbm MAE | airq gbm s | airq ensemble MAE | ensemble vs best LightGBM |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  for pollutant in pm25 no2 o3; do
    # The example manifest's spec, for this pollutant.
    "$work/venv/bin/python" -c 'import json, sys, yaml
spec = yaml.safe_load(open("examples/model-pm25-ensemble.yaml"))["spec"]
spec["target"]["pollutant"] = sys.argv[1]
print(json.dumps({k: spec[k] for k in ("target", "horizonHours", "confidenceLevels", "algorithm", "features")}))' "$pollutant" >"$work/ensemble-$pollutant.json"
    "$bin" evaluate --csv "$data" --spec "$(cat "$work/ensemble-$pollutant.json")" --export "$work/ensemble-$pollutant" --log-level warn >/dev/null
    ensemble_mae="$("$work/venv/bin/python" services/predictive/benches/lightgbm_compare.py "$work/ensemble-$pollutant" --airq-only | python3 -c 'import json,sys; print("%.2f" % json.load(sys.stdin)["airqMae"])')"
    for log in true false; do
      spec='{"target":{"pollutant":"'$pollutant'"},"algorithm":{"gbm":{}},"features":{"lags":[1,2,3,6,12,24,48,168],"calendar":true,"weather":true,"logTransform":'$log'}}'
      "$bin" evaluate --csv "$data" --spec "$spec" --export "$work/gbm-$pollutant-$log" --log-level warn >/dev/null
      "$work/venv/bin/python" services/predictive/benches/lightgbm_compare.py "$work/gbm-$pollutant-$log" >"$work/lgb-$pollutant-$log.json"
    done
    python3 - "$work" "$pollutant" "$ensemble_mae" <<'EOF'
import json, sys
work, pollutant, ensemble = sys.argv[1], sys.argv[2], float(sys.argv[3])
rows = {log: json.load(open(f"{work}/lgb-{pollutant}-{log}.json")) for log in ("true", "false")}
best = min(r["lightgbmMae"] for r in rows.values())
for log, r in rows.items():
    scale = "logarithm" if log == "true" else "concentration"
    margin = f"{(ensemble / best - 1) * 100:+.1f} %" if r["lightgbmMae"] == best else ""
    print(f"| {pollutant} | {scale} | {r['lightgbmMae']:.2f} | {r['lightgbmSeconds']:.0f} | {r['airqMae']:.2f} | "
          f"{r['airqSeconds']:.0f} | {ensemble:.2f} | {margin} |")
EOF
  done
  if [[ "${AIRQ_REPORT_DAYS_AHEAD:-1}" != 0 ]]; then
    echo
    echo "#### Days ahead: every algorithm trained for 168 hours, scores by day ahead"
    echo
    "$bin" evaluate --csv "$data" --all --pollutants pm25,no2,o3 --horizon 168 --log-level warn
  fi
}

report | tee "$work/report.md"
if $update; then
  python3 - "$work/report.md" docs/benchmarks.md <<'EOF'
import sys
report, doc = open(sys.argv[1]).read(), open(sys.argv[2]).read()
begin, end = "<!-- evaluation report: begin -->", "<!-- evaluation report: end -->"
if begin not in doc or end not in doc:
    sys.exit(f"{sys.argv[2]} has no {begin} … {end} block")
head, rest = doc.split(begin, 1)
_, tail = rest.split(end, 1)
open(sys.argv[2], "w").write(head + begin + "\n\n" + report.strip() + "\n\n" + end + tail)
print(f"updated {sys.argv[2]}", file=sys.stderr)
EOF
fi

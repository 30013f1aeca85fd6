#!/usr/bin/env bash
# The gateway against nginx, side by side, on this machine: the same upstream (an nginx worker answering a small
# JSON body), reached directly, through nginx as a plain reverse proxy, and through airq-gateway with an API key,
# a group check, a per-key and a per-route token bucket, request ids, the JSON access log and metrics all on.
# nginx and the gateway get the same worker count (WORKERS, default 1). The load generator is oha, at fixed
# connection counts, then at a fixed rate of half the gateway's throughput to measure the latency the gateway adds.
#
#   services/gateway/benches/proxy.sh            # prints a Markdown table (paste it into docs/benchmarks.md)
#   DURATION=20s CONNECTIONS="16 64 256" WORKERS=2 services/gateway/benches/proxy.sh
#
# Then the Kong-style anchor and the ratio to it (services/gateway/benches/anchors.sh; ANCHORS=0 skips it).
#
# Installs nginx-light from Debian and oha from crates.io when they are missing.
set -euo pipefail

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-"16 64"}
WORKERS=${WORKERS:-1}
HALF_LOAD_CONNECTIONS=${HALF_LOAD_CONNECTIONS:-16}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
TOOLS=${AIRQ_CACHE:-$HOME/.cache/airq}/tools
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

if ! command -v nginx >/dev/null; then
    echo "installing nginx-light from Debian…" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light >&2
fi
OHA=$(command -v oha || true)
if [ -z "$OHA" ]; then
    OHA=$TOOLS/bin/oha
    if [ ! -x "$OHA" ]; then
        echo "installing oha from crates.io into $TOOLS…" >&2
        cargo install oha --locked --root "$TOOLS" >&2
    fi
fi

echo "building airq-gateway (release)…" >&2
cargo build --release -q -p airq-gateway --manifest-path "$ROOT/Cargo.toml"
GATEWAY=$CARGO_TARGET_DIR/release/airq-gateway

WORK=$(mktemp -d /tmp/airq-gateway-bench.XXXXXX)
UPSTREAM_PORT=18181
NGINX_PORT=18182
GATEWAY_PORT=18183
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    nginx -c "$WORK/upstream.conf" -s stop 2>/dev/null || true
    nginx -c "$WORK/proxy.conf" -s stop 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

BODY='{"station":"Aotizhongxin","pollutant":"pm25","value":41.0,"unit":"ug/m3"}'
cat >"$WORK/upstream.conf" <<EOF
worker_processes 1;
pid $WORK/upstream.pid;
error_log $WORK/upstream-error.log;
events { worker_connections 8192; }
http {
    access_log off;
    server {
        listen 127.0.0.1:$UPSTREAM_PORT;
        location / { default_type application/json; return 200 '$BODY'; }
    }
}
EOF
# A plain reverse proxy, as a platform engineer would write it: kept-alive upstream connections, the usual
# forwarding headers, an access log.
cat >"$WORK/proxy.conf" <<EOF
worker_processes $WORKERS;
pid $WORK/proxy.pid;
error_log $WORK/proxy-error.log;
events { worker_connections 8192; }
http {
    access_log $WORK/proxy-access.log;
    upstream app { server 127.0.0.1:$UPSTREAM_PORT; keepalive 256; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
EOF
nginx -c "$WORK/upstream.conf"
nginx -c "$WORK/proxy.conf"

ADMIN_KEY="airq_benchadmin_$(head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 40)"
cat >"$WORK/routes.yaml" <<EOF
routes:
  - id: bench
    pathPrefix: /
    upstream: http://127.0.0.1:$UPSTREAM_PORT
    timeoutSeconds: 10
    access: { groups: [bench] }
    rateLimit: { requestsPerSecond: 1000000000, burst: 1000000000 }
EOF
TOKIO_WORKER_THREADS=$WORKERS AIRQ_DATABASE_URL="sqlite://$WORK/airq.db" AIRQ_ROUTES_FILE="$WORK/routes.yaml" \
    AIRQ_ADMIN_KEY="$ADMIN_KEY" AIRQ_LISTEN="127.0.0.1:$GATEWAY_PORT" AIRQ_LOG_FORMAT=json \
    "$GATEWAY" >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$GATEWAY_PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
admin() { curl -fsS -X "$1" -H "X-Api-Key: $ADMIN_KEY" -H 'Content-Type: application/json' \
    "http://127.0.0.1:$GATEWAY_PORT$2" -d "$3"; }
admin POST /admin/groups '{"name":"bench"}' >/dev/null
admin POST /admin/users '{"name":"bench","groups":["bench"]}' >/dev/null
KEY=$(admin POST /admin/users/bench/keys '{"ratePerSecond":1000000000,"burst":1000000000}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')

# Runs oha; prints "rps p50_ms p99_ms non2xx errors".
load() {
    local url=$1 connections=$2 rate=${3:-}
    local extra=()
    if [ -n "$rate" ]; then extra=(-q "$rate" --latency-correction); fi
    "$OHA" -z "$DURATION" -c "$connections" --no-tui --output-format json -H "X-Api-Key: $KEY" "${extra[@]}" \
        "$url" | python3 -c '
import json, sys
d = json.load(sys.stdin)
codes = d.get("statusCodeDistribution", {})
non2xx = sum(n for code, n in codes.items() if not code.startswith("2"))
errors = sum(n for reason, n in d.get("errorDistribution", {}).items() if "deadline" not in reason)
p = d["latencyPercentiles"]
rps = d["summary"]["requestsPerSec"]
print("%.0f %.3f %.3f %d %d" % (rps, p["p50"] * 1000, p["p99"] * 1000, non2xx, errors))'
}

# Warm-up: connections, caches, the key's first verification.
for url in "http://127.0.0.1:$UPSTREAM_PORT/" "http://127.0.0.1:$NGINX_PORT/" "http://127.0.0.1:$GATEWAY_PORT/"; do
    DURATION=2s load "$url" 16 >/dev/null
done

echo "| connections | target | requests/s | p50 ms | p99 ms | non-2xx | errors | ratio to nginx (req/s) |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
GATEWAY_MAX=0
for c in $CONNECTIONS; do
    read -r up_rps up_p50 up_p99 up_bad up_err <<<"$(load "http://127.0.0.1:$UPSTREAM_PORT/" "$c")"
    read -r ng_rps ng_p50 ng_p99 ng_bad ng_err <<<"$(load "http://127.0.0.1:$NGINX_PORT/" "$c")"
    read -r gw_rps gw_p50 gw_p99 gw_bad gw_err <<<"$(load "http://127.0.0.1:$GATEWAY_PORT/" "$c")"
    ratio=$(python3 -c "print(f'{$gw_rps / $ng_rps:.2f}')")
    echo "| $c | upstream directly | $up_rps | $up_p50 | $up_p99 | $up_bad | $up_err | |"
    echo "| $c | nginx (plain proxy) | $ng_rps | $ng_p50 | $ng_p99 | $ng_bad | $ng_err | 1.00 |"
    echo "| $c | airq-gateway (auth, limits, logs, metrics) | $gw_rps | $gw_p50 | $gw_p99 | $gw_bad | $gw_err | $ratio |"
    if [ "$gw_rps" -gt "$GATEWAY_MAX" ]; then GATEWAY_MAX=$gw_rps; fi
done

HALF=$((GATEWAY_MAX / 2))
echo
echo "Half load: $HALF requests/s (half the gateway's best throughput above), $HALF_LOAD_CONNECTIONS connections, latency corrected for coordinated omission."
echo
echo "| target | p50 ms | p99 ms | p99 added to the upstream's, ms | non-2xx |"
echo "| --- | ---: | ---: | ---: | ---: |"
read -r _ up_p50 up_p99 up_bad _ <<<"$(load "http://127.0.0.1:$UPSTREAM_PORT/" "$HALF_LOAD_CONNECTIONS" "$HALF")"
read -r _ ng_p50 ng_p99 ng_bad _ <<<"$(load "http://127.0.0.1:$NGINX_PORT/" "$HALF_LOAD_CONNECTIONS" "$HALF")"
read -r _ gw_p50 gw_p99 gw_bad _ <<<"$(load "http://127.0.0.1:$GATEWAY_PORT/" "$HALF_LOAD_CONNECTIONS" "$HALF")"
echo "| upstream directly | $up_p50 | $up_p99 | | $up_bad |"
echo "| nginx (plain proxy) | $ng_p50 | $ng_p99 | $(python3 -c "print(f'{$ng_p99 - $up_p99:.3f}')") | $ng_bad |"
echo "| airq-gateway | $gw_p50 | $gw_p99 | $(python3 -c "print(f'{$gw_p99 - $up_p99:.3f}')") | $gw_bad |"
echo
echo "gateway access log lines: $(wc -l <"$WORK/gateway.log"), nginx access log lines: $(wc -l <"$WORK/proxy-access.log")" >&2

# Then the Kong-style anchor (ANCHORS=0 skips it): the servers above are stopped first, the anchor script starts
# its own.
if [ "${ANCHORS:-1}" = 1 ]; then
    cleanup
    trap - EXIT
    echo
    DURATION=$DURATION bash "$ROOT/services/gateway/benches/anchors.sh" "$GATEWAY"
fi

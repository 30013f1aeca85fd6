#!/usr/bin/env bash
# The gateway against the Kong-style anchor: runs `../shared/bench/gateway-anchors.sh` (plain nginx as a proxy,
# nginx + Lua doing a gateway's per-request work — keyed hash of the API key, consumer header, per-key limit, JSON
# access line with request id, per-route counter — and airq-gateway, one worker each, wrk -t1, 16 and 64
# connections, two runs) and prints each run as a Markdown row with the gateway's ratio to the anchor.
#
# With PIN=1 it runs again with the proxies on CPU 1 and wrk and the upstream on CPU 0, the gateway with 1 and then
# 2 worker threads on its one core (what taskset can show of scaling on a two-core machine).
#
#   services/gateway/benches/anchors.sh GATEWAY_BIN            # DURATION=8s by default
#   PIN=1 DURATION=10s services/gateway/benches/anchors.sh GATEWAY_BIN
#
# services/gateway/benches/proxy.sh builds the gateway and calls this at its end.
set -euo pipefail

GATEWAY=$1
DURATION=${DURATION:-8s}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
ANCHOR_SCRIPT=${ANCHOR_SCRIPT:-$ROOT/../shared/bench/gateway-anchors.sh}
if [ ! -f "$ANCHOR_SCRIPT" ]; then
    echo "no anchor script at $ANCHOR_SCRIPT (set ANCHOR_SCRIPT): the Kong-style comparison is skipped" >&2
    exit 0
fi

# The anchor script's lines (`run1 c=16 kong-like rps=… p99=…ms non2xx=0`) as a table with the ratio.
table() {
    python3 -c '
import re, sys
print(sys.argv[1] + "\n")
rows = {}
for line in sys.stdin:
    m = re.match(r"run(\d+) c=(\d+) (\S+) rps=([\d.]+) p99=([\d.]+)(us|ms|s) non2xx=(\d+)", line.strip())
    if m:
        run, c, name, rps, p99, unit, bad = m.groups()
        p99 = float(p99) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
        rows.setdefault((int(run), int(c)), {})[name] = (float(rps), p99, int(bad))
print("| run | connections | nginx req/s (p99 ms) | Kong-style req/s (p99 ms) | airq-gateway req/s (p99 ms) | gateway / Kong-style | non-2xx |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for (run, c), r in sorted(rows.items()):
    cell = lambda n: "%.0f (%.2f)" % r[n][:2] if n in r else "-"
    both = "airq-gateway" in r and "kong-like" in r
    ratio = "%.2f" % (r["airq-gateway"][0] / r["kong-like"][0]) if both else "-"
    print("| %d | %d | %s | %s | %s | %s | %d |" % (run, c, cell("nginx"), cell("kong-like"), cell("airq-gateway"), ratio, sum(v[2] for v in r.values())))
print()
' "$1"
}

echo "Kong-style anchor, one worker each, all sharing both cores ($DURATION per run):" >&2
bash "$ANCHOR_SCRIPT" "$GATEWAY" "$DURATION" 2>/dev/null | tee /dev/stderr |
    table "Kong-style anchor, one worker each, all sharing both cores (wrk, $DURATION per run):"

if [ "${PIN:-0}" != 1 ]; then
    exit 0
fi

# Moves nginx workers as they appear: the upstream's (up.conf) to CPU 0, the proxies' to CPU 1.
pin_nginx() {
    while true; do
        for pid in $(pgrep -f "nginx: worker" || true); do
            parent=$(ps -o ppid= -p "$pid" | tr -d ' ')
            case "$(tr '\0' ' ' <"/proc/$parent/cmdline" 2>/dev/null || true)" in
                *up.conf*) taskset -pc 0 "$pid" >/dev/null 2>&1 || true ;;
                *) taskset -pc 1 "$pid" >/dev/null 2>&1 || true ;;
            esac
        done
        sleep 0.2
    done
}

for workers in 1 2; do
    wrapper=$(mktemp /tmp/airq-gateway-pinned.XXXXXX)
    printf '#!/usr/bin/env bash\nexec env TOKIO_WORKER_THREADS=%s taskset -c 1 %q "$@"\n' "$workers" "$GATEWAY" >"$wrapper"
    chmod +x "$wrapper"
    pin_nginx &
    mover=$!
    # wrk runs where this shell runs: CPU 0.
    taskset -c 0 bash "$ANCHOR_SCRIPT" "$wrapper" "$DURATION" 2>/dev/null | tee /dev/stderr |
        table "Pinned: the proxies on CPU 1, wrk and the upstream on CPU 0; airq-gateway with $workers worker(s):"
    kill "$mover" 2>/dev/null || true
    wait "$mover" 2>/dev/null || true
    rm -f "$wrapper"
done

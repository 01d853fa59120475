#!/usr/bin/env bash
# hale-server vs nginx on the same repository, in one run, alternating per scenario.
#   server/bench/server-vs-nginx.sh
# Scenarios (wrk, via shared/bench/serve-bench.sh): GET timestamp.json, conditional GET -> 304,
# GET of a 1 MiB target. Prints every wrk line, then hale/nginx ratios of requests per second.
# Env: DURATION (default 10), CONNS (default "64"), WORK (default /tmp/hale-bench),
#      BENCH (default ../shared/bench beside the repository), HALE_PORT, NGINX_PORT.
# A benchmark, not a test: the machine is shared and noisy, so compare ratios within one run.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BENCH=${BENCH:-$ROOT/../shared/bench}
[ -d "$BENCH" ] || { echo "benchmark harness not found at $BENCH (set BENCH=.../shared/bench)" >&2; exit 2; }
export WORK=${WORK:-/tmp/hale-bench}
export DURATION=${DURATION:-10} CONNS=${CONNS:-64}
HALE_PORT=${HALE_PORT:-18181} NGINX_PORT=${NGINX_PORT:-18182}
mkdir -p "$WORK"

command -v nginx >/dev/null && command -v wrk >/dev/null || bash "$BENCH/setup.sh"
(cd "$ROOT" && cargo build --release -q -p hale-server)
BIN=$ROOT/target/release/hale-server

DATA=$WORK/hale-server-data EXPORT=$WORK/hale-server-export
rm -rf "$DATA" "$EXPORT"
# wrk opens up to 256 connections at once: above the default max_connections (200 per listener)
mkdir -p "$DATA" && echo '{"max_connections": 1024}' >"$DATA/config.json"
HALE_LOG=warn "$BIN" demo --data "$DATA" --listen "127.0.0.1:$HALE_PORT" --extra-target-size 1048576 \
  >"$WORK/hale-server.out" 2>"$WORK/hale-server.err" &
HALE_PID=$!
cleanup() { kill "$HALE_PID" 2>/dev/null || true; bash "$BENCH/nginx-repo.sh" stop || true; }
trap cleanup EXIT
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$HALE_PORT/timestamp.json" && break; sleep 0.1; done

"$BIN" export --data "$DATA" --out "$EXPORT" >/dev/null
bash "$BENCH/nginx-repo.sh" start "$EXPORT" "$NGINX_PORT" >/dev/null
NGINX_PIDS=$(bash "$BENCH/nginx-repo.sh" pids)

# the 1 MiB target's consistent-snapshot path, from the served targets metadata
TARGET=$(curl -fs "http://127.0.0.1:$HALE_PORT/1.targets.json" | python3 -c '
import json, sys
t = json.load(sys.stdin)["signed"]["targets"]["firmware.bin"]
print("targets/%s.firmware.bin" % t["hashes"]["sha256"])')
cmp <(curl -fs "http://127.0.0.1:$HALE_PORT/$TARGET") <(curl -fs "http://127.0.0.1:$NGINX_PORT/$TARGET")
cmp <(curl -fs "http://127.0.0.1:$HALE_PORT/timestamp.json") <(curl -fs "http://127.0.0.1:$NGINX_PORT/timestamp.json")

OUT=$WORK/server-vs-nginx.txt
: >"$OUT"
for s in timestamp timestamp-304 target; do
  LABEL=hale SCENARIOS=$s SERVER_PIDS="$HALE_PID" bash "$BENCH/serve-bench.sh" \
    "http://127.0.0.1:$HALE_PORT" "http://127.0.0.1:$HALE_PORT/$TARGET" | tee -a "$OUT"
  LABEL=nginx SCENARIOS=$s SERVER_PIDS="$NGINX_PIDS" bash "$BENCH/serve-bench.sh" \
    "http://127.0.0.1:$NGINX_PORT" "http://127.0.0.1:$NGINX_PORT/$TARGET" | tee -a "$OUT"
done
echo
echo "ratio hale/nginx (requests/s; goal: >= 1.0 on polls, >= 0.8 on the 1 MiB target)"
awk '{ key = $2 " c=" $3; rps[$1, key] = $4; keys[key] = 1 }
     END { for (k in keys) if (rps["nginx", k] > 0)
             printf "  %-32s %6.2fx  (hale %.0f, nginx %.0f req/s)\n", k, rps["hale", k] / rps["nginx", k], rps["hale", k], rps["nginx", k] }' "$OUT" | sort

#!/usr/bin/env bash
# Cold and warm refresh + download: hale-conformance (in process and whole process) and the
# pump's own check (hale-agent's poll, in process) against python-tuf's ngclient (in process and
# whole process), same repository, same loopback server, one run, in process in ROUNDS
# alternating rounds (default 3); then hale-conformance against python-tuf in a catalog of 10,000
# targets in 256 hashed bins (see the end).
# Then the pump's check and python-tuf over a link with a round trip of LINK_MS (default 20; 0
# skips it): the same server behind delay-proxy.py, where round trips, not CPU, set the time.
#   [ROUNDS=3] [CATALOG_ROUNDS=3] [CATALOG_TARGETS=10000] [LINK_MS=20] device-agent/bench/client-bench.sh [ITERS]
# Needs the python-tuf venv from .ci/install.sh (target/venv) and the shared bench client.
# Every client works under $TMPDIR (default /tmp): TMPDIR=/dev/shm compares them on tmpfs, where
# file creation costs little (and the pump's fdatasync nothing).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO_ROOT"
ITERS=${1:-20}
PY=${PY:-$REPO_ROOT/target/venv/bin/python}
SHARED_CLIENT=${SHARED_CLIENT:-$REPO_ROOT/../shared/bench/tuf-client.py}
TMP=$(mktemp -d)
NGINX_REPO=${NGINX_REPO:-$REPO_ROOT/../shared/bench/nginx-repo.sh}
export NGINX_RUN="$TMP/nginx"
cleanup() {
  [ -n "${SERVER_PID:-}" ] && kill "$SERVER_PID" 2>/dev/null
  [ -n "${PROXY_PID:-}" ] && kill "$PROXY_PID" 2>/dev/null
  [ -n "${NGINX_UP:-}" ] && bash "$NGINX_REPO" stop >/dev/null 2>&1
  rm -rf "$TMP"
}
trap cleanup EXIT
cargo build -q --release -p device-agent --features std --bin hale-conformance --example bench_client --example bench_agent
cargo run -q -p device-agent --example bench_repo -- "$TMP/repo" >/dev/null
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# nginx (the shared harness's server) when it is installed: a slow server would hide the clients'
# own cost; else python's http.server
if command -v nginx >/dev/null && [ -f "$NGINX_REPO" ]; then
  chmod -R a+rX "$TMP"   # nginx's workers run as another user
  bash "$NGINX_REPO" start "$TMP/repo" "$PORT" >/dev/null
  NGINX_UP=1
  echo "server: nginx on 127.0.0.1:$PORT"
else
  python3 -m http.server "$PORT" --bind 127.0.0.1 --directory "$TMP/repo" >/dev/null 2>&1 &
  SERVER_PID=$!
  echo "server: python http.server on 127.0.0.1:$PORT (nginx not installed)"
fi
sleep 1
URL="http://127.0.0.1:$PORT"
BIN=target/release/hale-conformance
T=pump-a/firmware.bin

hale_cold() {
  rm -rf "$TMP/c"; mkdir -p "$TMP/c/md" "$TMP/c/t"
  "$BIN" --metadata-dir "$TMP/c/md" init "$TMP/repo/1.root.json"
  "$BIN" --metadata-url "$URL" --metadata-dir "$TMP/c/md" --target-name "$T" --target-dir "$TMP/c/t" --target-base-url "$URL/targets" download
}
hale_warm() {
  "$BIN" --metadata-url "$URL" --metadata-dir "$TMP/c/md" --target-name "$T" --target-dir "$TMP/c/t" --target-base-url "$URL/targets" download
}
timeit() { # NAME N FN
  local name=$1 n=$2 f=$3 t0 t1
  for _ in $(seq "$n"); do t0=$(date +%s%N); $f >/dev/null; t1=$(date +%s%N); echo $((t1 - t0)); done |
    python3 -c 'import statistics as s,sys; v=[int(x)/1e9 for x in sys.stdin]; print(f"{sys.argv[1]:<32} median {s.median(v):.4f} s (n={len(v)})")' "$name"
}
# in process, shaped like the shared python client (new client per iteration, same steps), and
# the pump's own check (hale-agent's poll: check_for_update into the file-backed flash), against
# python-tuf in ROUNDS rounds (default 3) of ITERS each, alternating: this machine is shared, so
# each round's ratios are taken in one go, and the median of the rounds' ratios is reported
HALE_INPROC=target/release/examples/bench_client
AGENT=target/release/examples/bench_agent
ROUNDS=${ROUNDS:-3}
R="$TMP/repo/1.root.json"
agent() { "$AGENT" --root "$R" --url "$URL" --target "$T" --model pump-a --revision r2 "$@" --iters "$ITERS"; }
HAVE_PY=
[ -x "$PY" ] && [ -f "$SHARED_CLIENT" ] && HAVE_PY=1
for round in $(seq "$ROUNDS"); do
  for mode in cold warm; do
    "$HALE_INPROC" --root "$R" --url "$URL" --target "$T" --mode "$mode" --iters "$ITERS" >"$TMP/i-$mode-$round"
    if [ -n "$HAVE_PY" ]; then
      "$PY" "$SHARED_CLIENT" --root "$R" --url "$URL" --target "$T" --mode "$mode" --iters "$ITERS" >"$TMP/p-$mode-$round"
    fi
  done
  agent --mode cold >"$TMP/a-cold-$round"
  agent --mode refresh --running 2.0.0 >"$TMP/a-refresh-$round"
  agent --mode warm >"$TMP/a-warm-$round"
done
cat "$TMP"/i-*-1 "$TMP"/a-*-1
"$HALE_INPROC" --root "$R" --url "$URL" --target "$T" --mode floor --iters "$ITERS" | tee "$TMP/if"
timeit "hale-conformance cold (process)" "$ITERS" hale_cold | tee "$TMP/hc"
hale_cold >/dev/null
timeit "hale-conformance warm (process)" "$ITERS" hale_warm | tee "$TMP/hw"
if [ -n "$HAVE_PY" ]; then
  cat "$TMP"/p-*-1
  py_cold() { "$PY" "$SHARED_CLIENT" --root "$R" --url "$URL" --target "$T" --mode cold --iters 1; }
  timeit "python-tuf cold (process)" "$ITERS" py_cold | tee "$TMP/pp"
  python3 - "$TMP" "$ROUNDS" <<'PYEOF'
import json, re, statistics, sys
d, rounds = sys.argv[1], int(sys.argv[2])
med = lambda f, part="total": json.load(open(f"{d}/{f}"))["seconds"][part]["median"]
proc = lambda f: float(re.search(r"median ([0-9.]+)", open(f"{d}/{f}").read()).group(1))
x = lambda r: f"{r:.1f}x" if r >= 1 else f"{r:.2f}x"
print(f"\nratios (python-tuf / hale, same server; in process: {rounds} alternating rounds, the median "
      "of the rounds' ratios, and each round's; > 1: hale faster)")
fl = json.load(open(f"{d}/if"))["seconds"]
cold_refresh = lambda r: med(f"p-cold-{r}", "refresh") + med(f"p-cold-{r}", "lookup")
for label, p, h in (("in process, cold (refresh + download)", lambda r: med(f"p-cold-{r}"), "i-cold"),
                    ("in process, warm (refresh + cached check)", lambda r: med(f"p-warm-{r}"), "i-warm"),
                    ("hale-agent check, cold (image staged)", lambda r: med(f"p-cold-{r}"), "a-cold"),
                    ("hale-agent check, cold refresh (nothing new)", cold_refresh, "a-refresh"),
                    ("hale-agent check, warm (nothing new)", lambda r: med(f"p-warm-{r}"), "a-warm")):
    rs = [(p(r), med(f"{h}-{r}")) for r in range(1, rounds + 1)]
    ratio = statistics.median(a / b for a, b in rs)
    pm, hm = statistics.median(a for a, _ in rs), statistics.median(b for _, b in rs)
    print(f"  {label:<44} python-tuf {pm * 1e3:6.2f} ms   hale {hm * 1e3:6.2f} ms   {x(ratio):>6}"
          f"   (rounds: {', '.join(x(a / b) for a, b in rs)})")
p, h = proc("pp"), proc("hc")
print(f"  {'whole process, cold':<44} python-tuf {p * 1e3:6.1f} ms   hale {h * 1e3:6.2f} ms   {x(p / h):>6}")
print("  (hale-agent's checks write the pump's flash file and sync it around every state record, as the\n"
      "   simulated pump does; python-tuf writes its files without syncing. Cold refresh: python-tuf's\n"
      "   refresh() + get_targetinfo() of its cold runs, against a pump that already runs the served version)")
ms = lambda k: f"{fl[k] * 1e3:.2f} ms"
print(f"\nfloors, each part alone (bench_client --mode floor): requests of a cold run {ms('transfer_cold')}, "
      f"of a warm run {ms('transfer_warm')}; the 4 signature checks + SHA-256 of the target {ms('crypto')}; "
      f"the 5 files a cold run keeps {ms('files')}")
# a cold refresh is a chain: a client that checks each answer before it asks for the next file
# (python-tuf, hale-conformance) waits for both in turn, so its parts add up; one that asks for
# the next file while it checks the answer that named it (hale-agent) can overlap them, as a
# warm one can overlap its checks of the stored files with the requests: at least the larger
# of the two then
cold_min = fl["transfer_cold"] + fl["crypto"]
overlap_min = max(fl["transfer_cold"], fl["crypto"])
warm_min = max(fl["transfer_warm"], fl["crypto"])
pc = statistics.median(med(f"p-cold-{r}") for r in range(1, rounds + 1))
pw = statistics.median(med(f"p-warm-{r}") for r in range(1, rounds + 1))
print(f"  most a client could show: cold python-tuf / (requests + checks) = {pc / cold_min:.1f}x, "
      f"overlapping them, / max(requests, checks) = {pc / overlap_min:.1f}x; "
      f"warm python-tuf / max(requests, checks) = {pw / warm_min:.1f}x")
PYEOF
else
  echo "python-tuf venv or shared client missing: skipped (bash .ci/install.sh)"
fi

# A link: the same server behind a proxy that holds every byte from the server LINK_MS (a
# pump on a cellular or a long link). Each check then waits a round trip per request it cannot
# overlap: the pump asks for the next root and the timestamp together, python-tuf one after the
# other. A few checks each (each takes tens of ms); no TCP handshake delay (the proxy accepts
# at once), so a new connection costs nothing here that it would cost on a real link.
LINK_MS=${LINK_MS:-20}
if [ "$LINK_MS" -gt 0 ] && [ -n "$HAVE_PY" ]; then
  LPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  python3 device-agent/bench/delay-proxy.py "$LPORT" "$PORT" "$LINK_MS" &
  PROXY_PID=$!
  sleep 1
  LURL="http://127.0.0.1:$LPORT"
  LITERS=10
  link_agent() { "$AGENT" --root "$R" --url "$LURL" --target "$T" --model pump-a --revision r2 "$@" --iters "$LITERS"; }
  link_agent --mode cold >"$TMP/l-a-cold"
  link_agent --mode refresh --running 2.0.0 >"$TMP/l-a-refresh"
  link_agent --mode warm >"$TMP/l-a-warm"
  for mode in cold warm; do
    "$PY" "$SHARED_CLIENT" --root "$R" --url "$LURL" --target "$T" --mode "$mode" --iters "$LITERS" >"$TMP/l-p-$mode"
  done
  kill "$PROXY_PID" 2>/dev/null
  PROXY_PID=
  python3 - "$TMP" "$LINK_MS" "$LITERS" <<'PYEOF'
import json, sys
d, ms, n = sys.argv[1], sys.argv[2], sys.argv[3]
sec = lambda f, part="total": json.load(open(f"{d}/{f}"))["seconds"][part]["median"]
print(f"\nover a link with a {ms} ms round trip (delay-proxy.py; medians of {n} checks each; > 1: hale faster)")
for label, p, h in (("hale-agent check, cold (image staged)", sec("l-p-cold"), sec("l-a-cold")),
                    ("hale-agent check, cold refresh (nothing new)",
                     sec("l-p-cold", "refresh") + sec("l-p-cold", "lookup"), sec("l-a-refresh")),
                    ("hale-agent check, warm (nothing new)", sec("l-p-warm"), sec("l-a-warm"))):
    print(f"  {label:<44} python-tuf {p * 1e3:6.1f} ms   hale {h * 1e3:6.1f} ms   {p / h:4.1f}x")
PYEOF
fi

# A catalog: the shared harness's repository shape (make-repo.py, python-tuf's own signing):
# CATALOG_TARGETS targets (default 10,000) of 1 KiB in 256 hash-prefix bins, so targets.json is
# mostly its 256 delegations (about 40 KB) and snapshot lists 257 roles. A maker with many models,
# revisions and channels grows toward it; the one-image repository above is the other end.
# hale-conformance against python-tuf there, in CATALOG_ROUNDS rounds (default 3) of ITERS each,
# alternating: this machine is shared, so each round's ratio is taken in one go.
# CATALOG_TARGETS=0 or CATALOG_ROUNDS=0 skips it.
MAKE_REPO=${MAKE_REPO:-$REPO_ROOT/../shared/bench/make-repo.py}
CATALOG_TARGETS=${CATALOG_TARGETS:-10000}
if [ "$CATALOG_TARGETS" -gt 0 ] && [ "${CATALOG_ROUNDS:-3}" -gt 0 ] && [ -x "$PY" ] && [ -f "$SHARED_CLIENT" ] && [ -f "$MAKE_REPO" ]; then
  # the contents are made beside the repository and kept until the end: deleting 10,000 files
  # just before the runs leaves ext4 searching freed inodes on every file the clients create
  "$PY" "$MAKE_REPO" --targets "$CATALOG_TARGETS" --size 1024 --bins 256 \
    --out "$TMP/repo/catalog" --src "$TMP/catalog-src" >/dev/null
  chmod -R a+rX "$TMP/repo/catalog"
  C_ROOT="$TMP/repo/catalog/1.root.json" C_URL="$URL/catalog" C_T=file-00007.bin
  echo
  echo "catalog: $CATALOG_TARGETS targets in 256 bins (../shared/bench/make-repo.py), target $C_T"
  for round in $(seq "${CATALOG_ROUNDS:-3}"); do
    for mode in cold warm; do
      "$HALE_INPROC" --root "$C_ROOT" --url "$C_URL" --target "$C_T" --mode "$mode" --iters "$ITERS" >"$TMP/c-h-$mode-$round"
      "$PY" "$SHARED_CLIENT" --root "$C_ROOT" --url "$C_URL" --target "$C_T" --mode "$mode" --iters "$ITERS" >"$TMP/c-p-$mode-$round"
    done
  done
  python3 - "$TMP" "${CATALOG_ROUNDS:-3}" <<'PYEOF'
import json, statistics, sys
d, rounds = sys.argv[1], int(sys.argv[2])
med = lambda f: json.load(open(f"{d}/{f}"))["seconds"]["total"]["median"]
print("ratios in the catalog (python-tuf / hale-conformance, in process, same server; each round one go)")
for mode, label in (("cold", "cold (refresh + download)"), ("warm", "warm (refresh + cached check)")):
    rs = []
    for r in range(1, rounds + 1):
        p, h = med(f"c-p-{mode}-{r}"), med(f"c-h-{mode}-{r}")
        rs.append(p / h)
        print(f"  {label:<32} round {r}: python-tuf {p * 1e3:7.2f} ms   hale {h * 1e3:6.2f} ms   {p / h:5.1f}x")
    print(f"  {label:<32} median of the rounds: {statistics.median(rs):.1f}x")
PYEOF
fi

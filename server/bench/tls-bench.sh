#!/usr/bin/env bash
# What device identity costs a polling fleet: fresh mTLS handshakes vs resumed sessions vs
# kept-alive TLS vs plain HTTP, against one release hale-server with its TLS listeners, in one run.
#   server/bench/tls-bench.sh
# Sets up a throwaway repository, CA hierarchy (hale-sign ca) and one enrolled pump (hale-agent
# enroll --token), then runs the load client server/examples/tls-bench.rs (rustls with
# hale_pki::tls::client_config, tokio): every poll is a GET of timestamp.json on the device API
# with the pump's operational certificate. Prints polls/s per mode, the ratios between them, the
# server's CPU µs per poll (/proc/PID/stat) and how many handshakes were resumed.
# Env: CONNS (default 16), SECS per phase (default 3), ROUNDS (default 2), KEEP=1 keeps $WORK.
# A benchmark, not a test: the machine is shared and noisy, so compare ratios within one run.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CONNS=${CONNS:-16} SECS=${SECS:-3} ROUNDS=${ROUNDS:-2}

# hale-agent on its own: with other packages selected, `--features device-agent/std` lands on
# device-agent's dev-dependency on itself and the binary is skipped
(cd "$ROOT" && cargo build --release -q -p hale-sign -p hale-server --bins &&
    cargo build --release -q -p device-agent --features std --bin hale-agent &&
    cargo build --release -q -p hale-server --example tls-bench)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
SIGN=$BIN/hale-sign SERVER=$BIN/hale-server AGENT=$BIN/hale-agent LOAD=$BIN/examples/tls-bench

WORK=$(mktemp -d "${TMPDIR:-/tmp}/hale-tls-bench.XXXXXX")
SERVER_PID=""
cleanup() {
    local rc=$?
    [[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    if [[ $rc -ne 0 && -f "$WORK/server.log" ]]; then tail -n 20 "$WORK/server.log" >&2; fi
    if [[ "${KEEP:-0}" == 1 ]]; then echo "work files kept in $WORK"; else rm -rf "$WORK"; fi
    exit $rc
}
trap cleanup EXIT INT TERM

# secrets for this run only, never on a command line
secret() { head -c 24 /dev/urandom | base64 | tr -d '\n'; }
HALE_KEY_PASSPHRASE=$(secret) BENCH_CA_OFFLINE=$(secret) HALE_CA_PASSPHRASE=$(secret)
BENCH_CA_OPERATIONS=$(secret) HALE_DEVICE_SECRET=$(secret)
export HALE_KEY_PASSPHRASE BENCH_CA_OFFLINE HALE_CA_PASSPHRASE BENCH_CA_OPERATIONS HALE_DEVICE_SECRET
export HALE_LOG=warn
quiet() { "$@" >/dev/null 2>"$WORK/step.err" || { cat "$WORK/step.err" >&2; exit 1; }; }

# the TUF side: keys, a 1-of-1 root, an initialised server with one release
mkdir -p "$WORK/keys"
for k in root targets snapshot timestamp; do
    quiet "$SIGN" key generate --type ed25519 --out "$WORK/keys/$k" --passphrase-env HALE_KEY_PASSPHRASE
done
quiet "$SIGN" init "$WORK/repo" --root-key "$WORK/keys/root.pub" --root-threshold 1 \
    --targets-key "$WORK/keys/targets.pub" --snapshot-key "$WORK/keys/snapshot.pub" \
    --timestamp-key "$WORK/keys/timestamp.pub"
quiet "$SIGN" sign "$WORK/repo/staged/root.json" --key "$WORK/keys/root.key" --passphrase-env HALE_KEY_PASSPHRASE
DATA=$WORK/server TLS=$WORK/server/tls CA=$WORK/ca
quiet "$SERVER" init --data "$DATA" --root "$WORK/repo/staged/root.json" \
    --timestamp-key "$WORK/keys/timestamp.key" --snapshot-key "$WORK/keys/snapshot.key"
HALE_TOKEN=$("$SERVER" token add --data "$DATA" --name bench 2>/dev/null)
export HALE_TOKEN

# the device-identity side: CA hierarchy, server certificate, TLS directory, CRLs, a token
quiet "$SIGN" ca init --out "$CA" --passphrase-env BENCH_CA_OFFLINE --server-passphrase-env HALE_CA_PASSPHRASE \
    --operations-passphrase-env BENCH_CA_OPERATIONS
mkdir -p "$TLS/ca" "$TLS/crl"
quiet "$SIGN" ca server-cert --ca-dir "$CA" --dns localhost --ip 127.0.0.1 --out "$TLS/server" \
    --passphrase-env BENCH_CA_OPERATIONS --key-passphrase-env HALE_CA_PASSPHRASE
cp "$CA"/{root,manufacturing,device-issuing,technician,server}.crt "$CA/device-issuing.key" "$TLS/ca/"
quiet "$SIGN" ca crl --ca-dir "$CA" --ca manufacturing --out "$TLS/crl/manufacturing.crl" --passphrase-env BENCH_CA_OFFLINE
quiet "$SIGN" ca crl --ca-dir "$CA" --ca technician --out "$TLS/crl/technician.crl" --passphrase-env BENCH_CA_OPERATIONS
ENROLL_TOKEN=$("$SERVER" enroll-token --data "$DATA" --serial BENCH-0001 --model pump-a 2>/dev/null)
export ENROLL_TOKEN

"$SERVER" serve --data "$DATA" --listen 127.0.0.1:0 --tls-dir "$TLS" --device-listen 127.0.0.1:0 \
    --enroll-listen 127.0.0.1:0 --staff-listen 127.0.0.1:0 >"$WORK/server.out" 2>"$WORK/server.log" &
SERVER_PID=$!
listener() { sed -n "s/^$1listening on \(https\{0,1\}:\/\/.*\)\$/\1/p" "$WORK/server.out"; }
for _ in $(seq 100); do
    PLAIN=$(listener "") DEVICE=$(listener "device ") ENROLL=$(listener "enroll ")
    [[ -n "$PLAIN" && -n "$DEVICE" && -n "$ENROLL" ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || exit 1
    sleep 0.1
done
[[ -n "$ENROLL" ]] || { echo "hale-server did not start" >&2; exit 1; }

head -c 30000 /dev/urandom >"$WORK/fw.bin"
quiet "$SIGN" target add "$WORK/repo" --file "$WORK/fw.bin" --name pump-a/firmware.bin --model pump-a \
    --revisions r2 --version 1.0.0 --security-counter 1 --min-bootloader 1.0.0
quiet "$SIGN" sign "$WORK/repo/staged/targets.json" --key "$WORK/keys/targets.key" --passphrase-env HALE_KEY_PASSPHRASE
quiet "$SIGN" push "$WORK/repo" --server "$PLAIN" --token-env HALE_TOKEN

# one pump, enrolled with its token: its operational certificate is the load client's
quiet "$AGENT" --state "$WORK/pump" factory-csr --serial BENCH-0001
quiet "$AGENT" --state "$WORK/pump" enroll --est "$ENROLL" --ca-cert "$CA/server.crt" --token-env ENROLL_TOKEN

echo "hale-server $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') (release), pid $SERVER_PID; $(nproc) cores"
"$LOAD" --device "$DEVICE" --plain "$PLAIN" --server-ca "$CA/server.crt" --device-state "$WORK/pump" \
    --conns "$CONNS" --secs "$SECS" --rounds "$ROUNDS" --server-pid "$SERVER_PID" --clk-tck "$(getconf CLK_TCK)"

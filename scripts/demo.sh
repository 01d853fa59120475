#!/usr/bin/env bash
# Hale end to end, one command on a fresh machine:
#
#   scripts/demo.sh
#
# builds hale-sign, hale-server and hale-agent; makes a repository with hale-sign signed by the
# PUBLIC demo keys of keys-example/ (hale-sign warns loudly about them: expected, never do this
# in production); runs the device-identity ceremony with a throwaway demo CA (hale-sign ca: a
# Device Root CA and its Manufacturing, Device Issuing, Technician and Server CAs, passphrases
# generated for this run); builds two insulin pumps at the "factory" (pump1 gets a factory
# certificate and a manufacturing-manifest entry, pump2 a single-use enrollment token); starts
# hale-server with its TLS listeners (device API over mTLS, EST enrollment, staff API) on free
# loopback ports; pushes v1, and v2 held back by a staged rollout at 0 % (the pump defers) until
# the operator ends it; the pumps enroll, then poll over mTLS and go through
# update → health check → confirm; shows an install deferred while therapy runs, a v3 that fails
# its health check and is reverted, an image for another pump model and an older image refused,
# the server's inventory (staff API), a replayed enrollment token refused, and a decommissioned
# pump refused by the server while it keeps running its verified firmware; verifies the audit
# chain; and shuts everything down. Work files go to a temporary directory (KEEP=1 keeps it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT_DIR=$PWD

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
note() { printf '   %s\n' "$*"; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/hale-demo.XXXXXX")
SERVER_PID=""
cleanup() {
    local rc=$?
    if [[ $rc -ne 0 && -f "$WORK/server.log" ]]; then
        echo "--- hale-server log (last 20 lines)" >&2
        tail -n 20 "$WORK/server.log" >&2
    fi
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ "${KEEP:-0}" == 1 ]]; then
        echo "work files kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    if [[ $rc -ne 0 ]]; then
        echo "demo FAILED (exit $rc); rerun with KEEP=1 to keep the work files" >&2
    fi
    exit $rc
}
trap cleanup EXIT INT TERM

say "1. build hale-sign, hale-server, hale-agent (and hale-staff, the staff API client)"
cargo build -p hale-sign -p hale-server --bins
# hale-agent on its own: with other packages selected, `--features device-agent/std` lands on
# device-agent's dev-dependency on itself and the binary (required-features = std) is skipped
cargo build -p device-agent --features std --bin hale-agent
cargo build -p hale-server --example hale-staff
BIN="${CARGO_TARGET_DIR:-$ROOT_DIR/target}/debug"
SIGN="$BIN/hale-sign"
SERVER="$BIN/hale-server"
AGENT="$BIN/hale-agent"
STAFF_CLIENT="$BIN/examples/hale-staff"

KEYS="$ROOT_DIR/keys-example"
REPO="$WORK/release"
DATA="$WORK/server"
CA="$WORK/ca"
TLS="$DATA/tls"
# the demo keys' passphrase is public (keys-example/PASSPHRASE); hale-sign and hale-server read
# it from the environment, never from their command line
HALE_DEMO_PASSPHRASE=$(head -n1 "$KEYS/PASSPHRASE")
export HALE_DEMO_PASSPHRASE
export HALE_KEY_PASSPHRASE="$HALE_DEMO_PASSPHRASE"
PASS=(--passphrase-env HALE_DEMO_PASSPHRASE)

say "2. hale-sign: a repository with a 2-of-3 root (demo keys: expect loud warnings)"
"$SIGN" init "$REPO" \
    --root-key "$KEYS/root-1.pub" --root-key "$KEYS/root-2.pub" --root-key "$KEYS/root-3.pub" \
    --root-threshold 2 --targets-key "$KEYS/targets-1.pub" \
    --snapshot-key "$KEYS/snapshot.pub" --timestamp-key "$KEYS/timestamp.pub" 2>&1 | sed 's/^/   /'
"$SIGN" sign "$REPO/staged/root.json" --key "$KEYS/root-1.key" "${PASS[@]}" 2>/dev/null | sed 's/^/   /'
"$SIGN" sign "$REPO/staged/root.json" --key "$KEYS/root-2.key" "${PASS[@]}" 2>/dev/null | sed 's/^/   /'
note "root v1 signed by 2 of its 3 root keys"

say "3. device identity: the CA ceremony (hale-sign ca, offline), a throwaway CA for this demo"
# fresh secrets for this run only, from the kernel's random source; passed through the
# environment, never on a command line, never written to the repository
secret() { head -c 24 /dev/urandom | base64 | tr -d '\n'; }
HALE_DEMO_CA_OFFLINE=$(secret) # root + Manufacturing CA: stays with the ceremony
HALE_CA_PASSPHRASE=$(secret)   # the server's: device-issuing.key (the one CA file it holds) and its TLS key
HALE_DEMO_CA_OPERATIONS=$(secret) # Technician + Server CA: issue staff and server certificates, never on the server
HALE_STAFF_PASSPHRASE=$(secret) # the operator's own key
export HALE_DEMO_CA_OFFLINE HALE_CA_PASSPHRASE HALE_DEMO_CA_OPERATIONS HALE_STAFF_PASSPHRASE
OFFLINE=(--passphrase-env HALE_DEMO_CA_OFFLINE)
OPERATIONS=(--passphrase-env HALE_DEMO_CA_OPERATIONS)
"$SIGN" ca init --out "$CA" "${OFFLINE[@]}" --server-passphrase-env HALE_CA_PASSPHRASE \
    --operations-passphrase-env HALE_DEMO_CA_OPERATIONS 2>&1 | sed 's/^/   /'
mkdir -p "$TLS/ca" "$TLS/crl"
"$SIGN" ca server-cert --ca-dir "$CA" --dns localhost --ip 127.0.0.1 --out "$TLS/server" \
    "${OPERATIONS[@]}" --key-passphrase-env HALE_CA_PASSPHRASE | sed 's/^/   /'
# the server gets the CA certificates and only one CA key: the Device Issuing CA's (sealed)
cp "$CA"/{root,manufacturing,device-issuing,technician,server}.crt "$TLS/ca/"
cp "$CA/device-issuing.key" "$TLS/ca/"
"$SIGN" ca crl --ca-dir "$CA" --ca manufacturing --out "$TLS/crl/manufacturing.crl" "${OFFLINE[@]}" |
    sed 's/^/   /'
"$SIGN" ca crl --ca-dir "$CA" --ca technician --out "$TLS/crl/technician.crl" "${OPERATIONS[@]}" |
    sed 's/^/   /'
"$SIGN" ca staff --ca-dir "$CA" --role operator --name olga --hours 1 --out "$WORK/olga" \
    "${OPERATIONS[@]}" --key-passphrase-env HALE_STAFF_PASSPHRASE | sed 's/^/   /'
note "TLS directory $TLS: server certificate + sealed key, CA certificates, CRLs"
note "operator olga: a one-hour staff certificate (Technician CA), key sealed"

say "4. the factory: each pump makes its own key; the station certifies pump1"
pump_secret() { # the simulated secure element's secret that seals pump N's keys
    [[ -f "$WORK/pump$1.secret" ]] || { secret >"$WORK/pump$1.secret"; chmod 600 "$WORK/pump$1.secret"; }
    echo "$WORK/pump$1.secret"
}
ident() { # ident N COMMAND ARGS...: a hale-agent identity command of pump N, narrated
    local n=$1 cmd=$2; shift 2
    "$AGENT" --state "$WORK/pump$n" "$cmd" --device-secret-file "$(pump_secret "$n")" "$@" |
        sed "s/^/   pump$n: /"
}
ident 1 factory-csr --serial pump-0001 --out "$WORK/pump1.csr"
"$SIGN" factory issue --ca-dir "$CA" --csr "$WORK/pump1.csr" --serial pump-0001 --model pump-a \
    --out "$WORK/pump1-factory.crt" --manifest "$WORK/manifest.json" "${OFFLINE[@]}" | sed 's/^/   /'
ident 1 factory-install --cert "$WORK/pump1-factory.crt"
ident 2 factory-csr --serial pump-0002 --out "$WORK/pump2.csr"
note "pump2 left the station without a factory certificate: it will enroll with a token"

say "5. hale-server: init with the root and the online keys; manifest, enrollment token"
"$SERVER" init --data "$DATA" --root "$REPO/staged/root.json" \
    --timestamp-key "$KEYS/timestamp.key" --snapshot-key "$KEYS/snapshot.key" 2>/dev/null | sed 's/^/   /'
note "releases are pushed by operator olga with her certificate (no operator token with TLS on)"
"$SERVER" manifest import --data "$DATA" --tls-dir "$TLS" "$WORK/manifest.json" 2>/dev/null | sed 's/^/   /'
ENROLL_TOKEN=$("$SERVER" enroll-token --data "$DATA" --serial pump-0002 --model pump-a --ttl 3600 2>/dev/null)
export ENROLL_TOKEN   # handed to the pump through its environment, never its command line
note "single-use enrollment token for pump-0002 (${ENROLL_TOKEN:0:12}…), handed to the pump"
"$SERVER" serve --data "$DATA" --listen 127.0.0.1:0 --tls-dir "$TLS" \
    --device-listen 127.0.0.1:0 --enroll-listen 127.0.0.1:0 --staff-listen 127.0.0.1:0 \
    >"$WORK/server.out" 2>"$WORK/server.log" &
SERVER_PID=$!
listener() { sed -n "s/^$1 listening on \(https\{0,1\}:\/\/.*\)\$/\1/p" "$WORK/server.out"; }
URL="" DEVICE="" ENROLL="" STAFF=""
for _ in $(seq 100); do
    URL=$(sed -n 's/^listening on \(http:\/\/.*\)$/\1/p' "$WORK/server.out")
    DEVICE=$(listener device) ENROLL=$(listener enroll) STAFF=$(listener staff)
    [[ -n "$URL" && -n "$DEVICE" && -n "$ENROLL" && -n "$STAFF" ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; exit 1; }
    sleep 0.1
done
[[ -n "$STAFF" ]] || { echo "hale-server did not start" >&2; cat "$WORK/server.log" >&2; exit 1; }
note "hale-server (pid $SERVER_PID):"
note "  device API (mTLS, Device Issuing CA)  $DEVICE"
note "  enrollment (EST)                      $ENROLL"
note "  staff API (mTLS, Technician CA)       $STAFF"
note "  staff API also takes releases from operator certificates (hale-sign push --cert)"
note "  TUF read path (plain HTTP)            $URL"

# make_image VERSION: a firmware image (random bytes after a readable header)
make_image() {
    local f="$WORK/fw-$1.bin"
    { printf 'HALE PUMP FIRMWARE %s\n' "$1"; head -c 30000 /dev/urandom; } >"$f"
    echo "$f"
}
# release VERSION COUNTER MODEL [IMAGE]: hale-sign target add + sign + push (a new image unless
# one is given)
release() {
    local fw=${4:-}
    [[ -n "$fw" ]] || fw=$(make_image "$1")
    "$SIGN" target add "$REPO" --file "$fw" --name pump-a/firmware.bin \
        --model "$3" --revisions r2,r3 --version "$1" --security-counter "$2" \
        --min-bootloader 1.0.0 >/dev/null 2>&1
    "$SIGN" sign "$REPO/staged/targets.json" --key "$KEYS/targets-1.key" "${PASS[@]}" >/dev/null 2>&1
    "$SIGN" status "$REPO" --quiet 2>/dev/null | sed 's/^/   /'
    "$SIGN" push "$REPO" --server "$STAFF" --cert "$WORK/olga.crt" --key "$WORK/olga.key" \
        --ca-cert "$CA/server.crt" --key-passphrase-env HALE_STAFF_PASSPHRASE 2>/dev/null | sed 's/^/   /'
}
# staff METHOD PATH [ARGS]: one staff API request as operator olga (mTLS)
staff() {
    "$STAFF_CLIENT" --url "$STAFF" --ca-cert "$CA/server.crt" --cert "$WORK/olga.crt" \
        --key "$WORK/olga.key" --passphrase-env HALE_STAFF_PASSPHRASE "$@"
}

say "6. release v1 (1.0.0) and push it to the server"
release 1.0.0 1 pump-a
cp "$WORK/fw-1.0.0.bin" "$WORK/factory.bin"

say "7. both pumps (model pump-a, revision r2) get v1 and the trusted root"
for p in 1 2; do
    "$AGENT" --state "$WORK/pump$p" provision --root "$REPO/repository/1.root.json" \
        --image "$WORK/factory.bin" --version 1.0.0 --security-counter 1 \
        --id "pump-000$p" --model pump-a --revision r2 --target pump-a/firmware.bin | sed 's/^/   /'
done

say "8. enrollment (EST): pump1 with its factory certificate, pump2 with its token"
ident 1 enroll --est "$ENROLL" --ca-cert "$CA/server.crt"
ident 2 enroll --est "$ENROLL" --ca-cert "$CA/server.crt" --token-env ENROLL_TOKEN
note "each pump trusts only the Server CA; its operational certificate (Device Issuing CA) is"
note "what it shows on every device call from now on"
before=$(sha256sum "$WORK/pump2/identity/operational.json")
if out=$(ident 2 enroll --est "$ENROLL" --ca-cert "$CA/server.crt" --token-env ENROLL_TOKEN); then
    echo "$out"; echo "a replayed enrollment token was accepted" >&2; exit 1
fi
echo "$out"
grep -q 'token_used' <<<"$out" || { echo "expected token_used" >&2; exit 1; }
[[ "$(sha256sum "$WORK/pump2/identity/operational.json")" == "$before" ]] ||
    { echo "a refused enrollment changed pump2's certificate" >&2; exit 1; }
note "the token is single-use: its replay is refused and pump2's certificate is unchanged"

say "9. release v2 (2.0.0), held back by a staged rollout until operator olga ends it"
fw2=$(make_image 2.0.0)
sha2=$(sha256sum "$fw2" | cut -d' ' -f1)
staff PUT "/api/v1/staff/rollouts/$sha2" --json '{"percent": 0, "target": "pump-a/firmware.bin"}' |
    sed 's/^/   rollout: /'
release 2.0.0 2 pump-a "$fw2"

pump() { # pump N ARGS...: one hale-agent command, narrated
    local n=$1; shift
    "$AGENT" --state "$WORK/pump$n" "$@" | sed "s/^/   pump$n: /"
}
# every poll goes to the device API over mTLS with the pump's operational certificate
poll() { ident "$1" run --server "$DEVICE" --once --jitter 0; }
expect() { # expect N RESULT|'*' RUNNING-VERSION: the pump's own status must say so
    "$AGENT" --state "$WORK/pump$1" status | python3 -c '
import json, sys
s = json.load(sys.stdin)
want, version = sys.argv[1], sys.argv[2]
running = [x["version"] for x in s["slots"] if x["active"]]
lr = s.get("last_result") or {"result": "none", "reason": "nothing to report"}
ok = want in ("*", lr["result"]) and running == [version]
print("   status: %s (%s), running %s" % (lr["result"], lr["reason"], running[0] if running else "-"))
sys.exit(0 if ok else "expected %s running %s" % (want, version))' "$2" "$3"
}

# the server's fleet view, read by operator olga over the staff API (mTLS): each device's record
# (status, certificate) and the last report it sent over the device API (GET /api/v1/staff/reports)
read -r -d '' INVENTORY_PY <<'EOF_PY' || true
import json, sys
devices = json.load(open(sys.argv[1]))["devices"]
last = {r["device"]: r["report"] for r in json.load(open(sys.argv[2]))["reports"]}
for d in devices:
    c = d.get("certificate") or {}
    r = last.get(d["id"]) or {}
    slots = ", ".join(f'{s["name"]}={s["version"] or "-"}({s["state"]})' for s in r.get("slots", []))
    lr = r.get("last_result") or {}
    print(f'   server inventory: {d["id"]} [{d["status"]}, certificate {c.get("serial", "-")[:8]}]: '
          f'{slots or "no report"}; last: {lr.get("result")} ({lr.get("reason")})')
EOF_PY
inventory() {
    staff GET /api/v1/staff/devices >"$WORK/devices.json"
    staff GET /api/v1/staff/reports >"$WORK/reports.json"
    python3 -c "$INVENTORY_PY" "$WORK/devices.json" "$WORK/reports.json"
}

say "10. pump1 polls over mTLS: v2 is in a rollout at 0 %, so the pump defers and runs v1"
poll 1
expect 1 deferred 1.0.0
staff DELETE "/api/v1/staff/rollouts/$sha2" | sed 's/^/   rollout ended: /'
note "the rollout ended: v2 is offered to every pump (each change is in the audit log)"
say "   ... the next poll installs v2, reboots into the trial, health check passes, confirms"
pump 1 health pass
poll 1
expect 1 installed 2.0.0

say "11. pump2 is delivering insulin: the install is deferred"
pump 2 therapy on
poll 2
expect 2 deferred 1.0.0
inventory
say "   ... therapy stops; the next poll installs and confirms v2"
pump 2 therapy off
poll 2
expect 2 installed 2.0.0

say "12. release v3 (3.0.0); on pump1 its health check fails"
release 3.0.0 3 pump-a
pump 1 health fail
poll 1
expect 1 reverted 2.0.0
note "pump1 went back to v2; v3's slot is marked bad and never booted again"
inventory
pump 1 health pass

say "13. a release built for another model (pump-b) is refused by the pump"
release 4.0.0 4 pump-b
poll 2
expect 2 rejected 2.0.0

say "14. an older image (1.5.0, below the running 2.0.0) is refused too"
release 1.5.0 2 pump-a
poll 2
expect 2 rejected 2.0.0

say "15. the server's inventory"
inventory

say "16. operator olga decommissions pump2 (staff API); the server refuses its next poll"
staff POST /api/v1/staff/devices/pump-0002/decommission --json '{"reason": "returned to the manufacturer"}' |
    python3 -c 'import json, sys; d = json.load(sys.stdin); print("   %s is now %s" % (d["id"], d["status"]))'
out=$(poll 2)
echo "$out"
# decommissioning revokes the certificate too: the device API refuses the handshake with the TLS
# alert certificate_revoked, before any HTTP (a connection opened before the decommission gets
# 403 device_decommissioned from the per-request record check instead). The pump usually reads
# the alert; when its request is already in flight the server's close can arrive as a reset first.
grep -q 'update check failed' <<<"$out" || { echo "expected pump2's poll to be refused" >&2; exit 1; }
refusal=$(grep 'TLS handshake refused' "$WORK/server.log" | grep 'device API' | grep 'Revoked' | tail -n 1 |
    sed 's/\x1b\[[0-9;]*m//g; s/^.*TLS handshake refused/TLS handshake refused/')
[[ -n "$refusal" ]] || { echo "expected the device API to refuse pump2's revoked certificate" >&2; exit 1; }
note "server: $refusal"
expect 2 '*' 2.0.0
note "pump2 is refused (TLS alert certificate_revoked) and keeps running its verified 2.0.0"
poll 1
expect 1 '*' 2.0.0
note "pump1 is unaffected"
inventory

say "17. shut down; the audit chain verifies end to end"
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""
note "hale-server stopped"
"$SERVER" audit verify --data "$DATA" | sed 's/^/   /'
echo
echo "demo finished: a CA ceremony, two pumps enrolled (factory certificate, token) polling over mTLS;"
echo "v2 held by a staged rollout, then on both; a deferred install, a reverted v3, a foreign and"
echo "an older image refused, a replayed token and a decommissioned pump refused"

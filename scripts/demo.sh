#!/usr/bin/env bash
# Hale end to end, one command on a fresh machine:
#
#   scripts/demo.sh
#
# builds hale-sign, hale-server and hale-agent; makes a repository with hale-sign signed by the
# PUBLIC demo keys of keys-example/ (hale-sign warns loudly about them: expected, never do this
# in production); starts hale-server on a free loopback port with the online snapshot/timestamp
# keys; pushes v1 and v2; runs two simulated insulin pumps through update → health check →
# confirm; shows an install deferred while therapy runs; a v3 that fails its health check and
# is reverted; an image for another pump model and an older image refused; prints the server's inventory; and shuts
# everything down. Work files go to a temporary directory (KEEP=1 keeps it).
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

say "1. build hale-sign, hale-server, hale-agent"
cargo build -p hale-sign -p hale-server -p device-agent --features device-agent/std --bins
BIN="${CARGO_TARGET_DIR:-$ROOT_DIR/target}/debug"
SIGN="$BIN/hale-sign"
SERVER="$BIN/hale-server"
AGENT="$BIN/hale-agent"

KEYS="$ROOT_DIR/keys-example"
REPO="$WORK/release"
DATA="$WORK/server"
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

say "3. hale-server: init with that root and the online snapshot/timestamp keys; an operator token"
"$SERVER" init --data "$DATA" --root "$REPO/staged/root.json" \
    --timestamp-key "$KEYS/timestamp.key" --snapshot-key "$KEYS/snapshot.key" 2>/dev/null | sed 's/^/   /'
HALE_TOKEN=$("$SERVER" token add --data "$DATA" --name release-engineer 2>/dev/null)
export HALE_TOKEN
note "token created (kept in \$HALE_TOKEN, never on a command line)"
"$SERVER" serve --data "$DATA" --listen 127.0.0.1:0 >"$WORK/server.out" 2>"$WORK/server.log" &
SERVER_PID=$!
URL=""
for _ in $(seq 100); do
    URL=$(sed -n 's/^listening on \(http:\/\/.*\)$/\1/p' "$WORK/server.out")
    [[ -n "$URL" ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; exit 1; }
    sleep 0.1
done
[[ -n "$URL" ]] || { echo "hale-server did not start" >&2; cat "$WORK/server.log" >&2; exit 1; }
note "hale-server (pid $SERVER_PID) listening on $URL"

# make_image VERSION: a firmware image (random bytes after a readable header)
make_image() {
    local f="$WORK/fw-$1.bin"
    { printf 'HALE PUMP FIRMWARE %s\n' "$1"; head -c 30000 /dev/urandom; } >"$f"
    echo "$f"
}
# release VERSION COUNTER MODEL: hale-sign target add + sign + push
release() {
    local fw
    fw=$(make_image "$1")
    "$SIGN" target add "$REPO" --file "$fw" --name pump-a/firmware.bin \
        --model "$3" --revisions r2,r3 --version "$1" --security-counter "$2" \
        --min-bootloader 1.0.0 >/dev/null 2>&1
    "$SIGN" sign "$REPO/staged/targets.json" --key "$KEYS/targets-1.key" "${PASS[@]}" >/dev/null 2>&1
    "$SIGN" status "$REPO" --quiet 2>/dev/null | sed 's/^/   /'
    "$SIGN" push "$REPO" --server "$URL" --token-env HALE_TOKEN 2>/dev/null | sed 's/^/   /'
}

say "4. release v1 (1.0.0) and push it to the server"
release 1.0.0 1 pump-a
cp "$WORK/fw-1.0.0.bin" "$WORK/factory.bin"

say "5. two pumps (model pump-a, revision r2) leave the factory with v1 and the trusted root"
for p in 1 2; do
    "$AGENT" --state "$WORK/pump$p" provision --root "$REPO/repository/1.root.json" \
        --image "$WORK/factory.bin" --version 1.0.0 --security-counter 1 \
        --id "pump-000$p" --model pump-a --revision r2 --target pump-a/firmware.bin | sed 's/^/   /'
done

say "6. release v2 (2.0.0) and push it"
release 2.0.0 2 pump-a

pump() { # pump N ARGS...: one hale-agent command, narrated
    local n=$1; shift
    "$AGENT" --state "$WORK/pump$n" "$@" | sed "s/^/   pump$n: /"
}
poll() { pump "$1" run --server "$URL" --once; }
expect() { # expect N RESULT RUNNING-VERSION: the pump's own status must say so
    "$AGENT" --state "$WORK/pump$1" status | python3 -c '
import json, sys
s = json.load(sys.stdin)
want, version = sys.argv[1], sys.argv[2]
running = [x["version"] for x in s["slots"] if x["active"]]
ok = s["last_result"]["result"] == want and running == [version]
print("   status: %s (%s), running %s" % (s["last_result"]["result"], s["last_result"]["reason"], running[0] if running else "-"))
sys.exit(0 if ok else "expected %s running %s" % (want, version))' "$2" "$3"
}

inventory() { # the server's inventory (GET /api/v1/devices), one line per pump
    python3 - "$URL/api/v1/devices" <<'EOF'
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    inv = json.load(r)
for d in inv["devices"]:
    r = d["report"]
    slots = ", ".join(f'{s["name"]}={s["version"] or "-"}({s["state"]})' for s in r["slots"])
    lr = r.get("last_result") or {}
    print(f'   server inventory: {d["device"]}: {slots}; last: {lr.get("result")} ({lr.get("reason")})')
EOF
}

say "7. pump1 polls: installs v2, reboots into the trial, health check passes, confirms"
pump 1 health pass
poll 1
expect 1 installed 2.0.0

say "8. pump2 is delivering insulin: the install is deferred"
pump 2 therapy on
poll 2
expect 2 deferred 1.0.0
inventory
say "   ... therapy stops; the next poll installs and confirms v2"
pump 2 therapy off
poll 2
expect 2 installed 2.0.0

say "9. release v3 (3.0.0); on pump1 its health check fails"
release 3.0.0 3 pump-a
pump 1 health fail
poll 1
expect 1 reverted 2.0.0
note "pump1 went back to v2; v3's slot is marked bad and never booted again"
inventory
pump 1 health pass

say "10. a release built for another model (pump-b) is refused by the pump"
release 4.0.0 4 pump-b
poll 2
expect 2 rejected 2.0.0

say "11. an older image (1.5.0, below the running 2.0.0) is refused too"
release 1.5.0 2 pump-a
poll 2
expect 2 rejected 2.0.0

say "12. the server's inventory"
inventory

say "13. shut down"
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""
note "hale-server stopped"
echo
echo "demo finished: v1 → v2 on two pumps, a deferred install, a reverted v3, a foreign and an older image refused"

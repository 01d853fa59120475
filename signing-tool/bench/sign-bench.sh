#!/usr/bin/env bash
# Benchmark (not a test): create and sign a 10,000-target repository with 256 hashed bins with
# hale-sign (release build) and with python-tuf's Metadata API (../shared/bench/make-repo.py),
# in the same run, alternating, and print the ratio.
#
#   signing-tool/bench/sign-bench.sh [TARGETS] [SIZE_BYTES] [ROUNDS]     (default 10000 1024 3)
#
# Both sides start from the same target contents (made by make-repo.py, not timed) and end with
# a complete consistent-snapshot repository: keys, targets hashed and copied under their
# consistent names, targets + 256 bins + snapshot + timestamp signed and written.
# python-tuf: its own phase timings (keygen, hash, copy, sign, write; `total_incl_copy`).
# hale-sign: wall clock of the whole CLI flow, one process per step — key generation (5 keys,
# encrypted at rest with scrypt), init, bins, `target add --from-dir`, `sign`, `publish` (which
# also re-verifies the whole result with hale-core, every target file included, and flushes it
# to disk). Also reported: the same flow with the test-only low scrypt cost, to show what the
# key-file KDF costs. Python: target/venv/bin/python (installed by .ci/install.sh).
set -euo pipefail

N=${1:-10000}
SIZE=${2:-1024}
ROUNDS=${3:-3}
BINS=256
BITS=8

here="$(cd "$(dirname "$0")" && pwd)"
ws="$(cd "$here/../.." && pwd)"
shared="$ws/../shared"
py="$ws/target/venv/bin/python"
make_repo="$shared/bench/make-repo.py"
[ -x "$py" ] || { echo "no $py: run .ci/install.sh first" >&2; exit 1; }
[ -f "$make_repo" ] || { echo "no $make_repo (clone next to ../shared)" >&2; exit 1; }

(cd "$ws" && cargo build --release -q -p hale-sign)
target_dir="${CARGO_TARGET_DIR:-$ws/target}"
case "$target_dir" in /*) ;; *) target_dir="$ws/$target_dir" ;; esac
hale="$target_dir/release/hale-sign"

work="$(mktemp -d "${TMPDIR:-/tmp}/hale-sign-bench.XXXXXX")"
trap 'rm -rf "$work"' EXIT
export HALE_BENCH_PW="bench-passphrase"

now_ns() { date +%s%N; }

# one hale-sign run over the contents in $1; prints seconds
hale_run() {
    local src="$1" out="$2" t0 t1
    rm -rf "$out"; mkdir -p "$out"
    sync   # not timed: start from a clean page cache, not paying for the previous run's writes
    t0=$(now_ns)
    for k in root targets snapshot timestamp bins; do
        "$hale" key generate --type ed25519 --out "$out/$k" --passphrase-env HALE_BENCH_PW >/dev/null 2>&1
    done
    "$hale" init "$out/repo" --root-key "$out/root.pub" --targets-key "$out/targets.pub" \
        --snapshot-key "$out/snapshot.pub" --timestamp-key "$out/timestamp.pub" >/dev/null 2>&1
    "$hale" bins "$out/repo" --from targets --bit-length "$BITS" --key "$out/bins.pub" >/dev/null 2>&1
    "$hale" target add "$out/repo" --from-dir "$src" >/dev/null
    "$hale" sign "$out/repo" --key "$out/root.key" --key "$out/targets.key" --key "$out/bins.key" \
        --passphrase-env HALE_BENCH_PW >/dev/null
    "$hale" publish "$out/repo" --snapshot-key "$out/snapshot.key" --timestamp-key "$out/timestamp.key" \
        --passphrase-env HALE_BENCH_PW >/dev/null
    t1=$(now_ns)
    "$hale" verify "$out/repo/repository" --root "$out/repo/repository/1.root.json" >/dev/null
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f\n", (b - a) / 1e9 }'
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "targets=$N size=$SIZE bins=$BINS rounds=$ROUNDS (alternating python-tuf / hale-sign)"
: >"$work/t.py_total"; : >"$work/t.py_sync"; : >"$work/t.py_tuf"; : >"$work/t.hale"; : >"$work/t.hale_lowkdf"
for r in $(seq 1 "$ROUNDS"); do
    sync
    json=$("$py" "$make_repo" --targets "$N" --size "$SIZE" --bins "$BINS" --out "$work/py")
    # python-tuf never flushes; hale-sign flushes signed metadata (and with it, on ext4, the
    # journal holding its target files). Time python's flush separately for a like-for-like figure.
    s0=$(now_ns); sync; s1=$(now_ns)
    awk -v a="$s0" -v b="$s1" 'BEGIN { printf "%.4f\n", (b - a) / 1e9 }' >>"$work/t.py_sync"
    echo "$json" | "$py" -c 'import json,sys; s=json.load(sys.stdin)["seconds"]; print(s["total_incl_copy"])' >>"$work/t.py_total"
    echo "$json" | "$py" -c 'import json,sys; s=json.load(sys.stdin)["seconds"]; print(s["tuf_total"])' >>"$work/t.py_tuf"
    h=$(hale_run "$work/py-src" "$work/hale")
    echo "$h" >>"$work/t.hale"
    l=$(HALE_SIGN_INSECURE_TEST_SCRYPT_LOG_N=10 hale_run "$work/py-src" "$work/hale")
    echo "$l" >>"$work/t.hale_lowkdf"
    echo "round $r: python-tuf $(tail -1 "$work/t.py_total") s (tuf_total $(tail -1 "$work/t.py_tuf") s without copy; its flush $(tail -1 "$work/t.py_sync") s) | hale-sign $h s | hale-sign, low scrypt cost $l s"
done
pt=$(median <"$work/t.py_total"); pu=$(median <"$work/t.py_tuf"); ps=$(median <"$work/t.py_sync"); h=$(median <"$work/t.hale"); l=$(median <"$work/t.hale_lowkdf")
echo "median: python-tuf ${pt}s (incl. copy; ${pu}s without copy; flushing its output ${ps}s more) | hale-sign ${h}s | hale-sign with low scrypt cost ${l}s"
echo "ratio python-tuf / hale-sign: $(awk -v a="$pt" -v b="$h" 'BEGIN { printf "%.1f", a / b }')x (complete repositories, both incl. copy)"
echo "ratio python-tuf / hale-sign (low scrypt cost): $(awk -v a="$pt" -v b="$l" 'BEGIN { printf "%.1f", a / b }')x"
echo "ratio python-tuf incl. flush / hale-sign (low scrypt cost): $(awk -v a="$pt" -v s="$ps" -v b="$l" 'BEGIN { printf "%.1f", (a + s) / b }')x"

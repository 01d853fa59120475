#!/usr/bin/env bash
# Benchmark (not a test): create and sign a 10,000-target repository with 256 hashed bins with
# hale-sign (release build) and with python-tuf's Metadata API (../shared/bench/make-repo.py),
# in the same run, alternating, and print python-tuf / hale-sign ratios phase by phase.
#
#   signing-tool/bench/sign-bench.sh [TARGETS] [SIZE_BYTES] [ROUNDS]     (default 10000 1024 5)
#   TMPDIR=/dev/shm signing-tool/bench/sign-bench.sh                     (take the disk out)
#   HALE_SIGN_BIN=path/to/hale-sign signing-tool/bench/sign-bench.sh     (skip the release build)
#
# Both sides start from the same kind of target contents (made by make-repo.py, not timed) and
# end with a complete consistent-snapshot repository: keys, targets hashed and copied under their
# consistent names, targets + 256 bins + snapshot + timestamp signed and written.
#
# python-tuf reports its own phases (keygen, hash, copy, sign = build + sign, write,
# total_incl_copy). hale-sign runs its real CLI flow, one process per step — `key generate` x5,
# `init`, `bins`, `target add --from-dir`, `sign`, `publish` — and `target add`, `sign` and
# `publish` print their phases with HALE_SIGN_TIMINGS=1 (see signing-tool/src/timings.rs).
# Rounds alternate which side runs first; figures are medians over the rounds.
#
# Python: target/venv/bin/python (installed by .ci/install.sh).
set -euo pipefail

N=${1:-10000}
SIZE=${2:-1024}
ROUNDS=${3:-5}
BINS=256
BITS=8

here="$(cd "$(dirname "$0")" && pwd)"
ws="$(cd "$here/../.." && pwd)"
shared="$ws/../shared"
py="$ws/target/venv/bin/python"
make_repo="$shared/bench/make-repo.py"
[ -x "$py" ] || { echo "no $py: run .ci/install.sh first" >&2; exit 1; }
[ -f "$make_repo" ] || { echo "no $make_repo (clone next to ../shared)" >&2; exit 1; }

if [ -n "${HALE_SIGN_BIN:-}" ]; then   # a release binary built beforehand
    hale="$(cd "$(dirname "$HALE_SIGN_BIN")" && pwd)/$(basename "$HALE_SIGN_BIN")"
else
    (cd "$ws" && cargo build --release -q -p hale-sign)
    target_dir="${CARGO_TARGET_DIR:-$ws/target}"
    case "$target_dir" in /*) ;; *) target_dir="$ws/$target_dir" ;; esac
    hale="$target_dir/release/hale-sign"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/hale-sign-bench.XXXXXX")"
trap 'rm -rf "$work"' EXIT
export HALE_BENCH_PW="bench-passphrase"
# Every run writes into its own new directory and nothing is deleted until the end: on ext4, an
# inode freed in the last minute is skipped (and checked) when allocating a new one, so creating
# 10,000 files right after deleting 10,000 costs seconds for whichever side comes next.
src="$work/r0/py-src"   # make-repo.py writes the contents next to its --out; the latest is used

now_ns() { date +%s%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", (b - a) / 1e9 }'; }

# python-tuf: one make-repo.py run; appends {"side":"python",...} to rounds.jsonl
py_run() {
    sync   # not timed: neither side pays for the other's writeback
    local json
    json=$("$py" "$make_repo" --targets "$N" --size "$SIZE" --bins "$BINS" --out "$work/r$1/py")
    src="$work/r$1/py-src"
    echo "{\"side\":\"python\",\"round\":$1,\"run\":$json}" >>"$work/rounds.jsonl"
}

# hale-sign: the whole CLI flow over the contents in $src; appends {"side":"hale",...}
hale_run() {
    local out="$work/r$1/hale" t0 t1 t2 t3
    mkdir -p "$out"
    sync
    t0=$(now_ns)
    for k in root targets snapshot timestamp bins; do
        "$hale" key generate --type ed25519 --out "$out/$k" --passphrase-env HALE_BENCH_PW >/dev/null 2>&1
    done
    t1=$(now_ns)
    "$hale" init "$out/repo" --root-key "$out/root.pub" --targets-key "$out/targets.pub" \
        --snapshot-key "$out/snapshot.pub" --timestamp-key "$out/timestamp.pub" >/dev/null 2>&1
    "$hale" bins "$out/repo" --from targets --bit-length "$BITS" --key "$out/bins.pub" >/dev/null 2>&1
    t2=$(now_ns)
    "$hale" target add "$out/repo" --from-dir "$src" --timings >/dev/null 2>>"$out/timings"
    "$hale" sign "$out/repo" --key "$out/root.key" --key "$out/targets.key" --key "$out/bins.key" \
        --passphrase-env HALE_BENCH_PW --timings >/dev/null 2>>"$out/timings"
    "$hale" publish "$out/repo" --snapshot-key "$out/snapshot.key" --timestamp-key "$out/timestamp.key" \
        --passphrase-env HALE_BENCH_PW --timings >/dev/null 2>>"$out/timings"
    t3=$(now_ns)
    "$hale" verify "$out/repo/repository" --root "$out/repo/repository/1.root.json" >/dev/null
    local cmds
    cmds=$(grep '^{"command"' "$out/timings" | paste -sd, -)
    echo "{\"side\":\"hale\",\"round\":$1,\"wall\":$(secs "$t0" "$t3"),\"keygen\":$(secs "$t0" "$t1"),\"init_bins\":$(secs "$t1" "$t2"),\"commands\":[$cmds]}" >>"$work/rounds.jsonl"
}

echo "targets=$N size=$SIZE bins=$BINS rounds=$ROUNDS, alternating python-tuf / hale-sign; work dir $work"
# warm-up, not counted: makes the first target contents and warms caches
"$py" "$make_repo" --targets "$N" --size "$SIZE" --bins "$BINS" --out "$work/r0/py" >/dev/null
for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) -eq 1 ]; then py_run "$r"; hale_run "$r"; else hale_run "$r"; py_run "$r"; fi
    # the floor under any tool: one `cp -r` of the same contents (no hashing, no metadata, no
    # keys); python-tuf's total over this is the highest ratio any signer could reach here
    sync
    t0=$(now_ns); cp -r "$src" "$work/r$r/floor"; t1=$(now_ns)
    echo "{\"side\":\"floor\",\"round\":$r,\"cp\":$(secs "$t0" "$t1")}" >>"$work/rounds.jsonl"
    echo "round $r done"
done

N="$N" "$py" - "$work/rounds.jsonl" <<'EOF'
import json, os, statistics, sys
N = os.environ["N"]

rows = [json.loads(l) for l in open(sys.argv[1])]
py = [r["run"]["seconds"] for r in rows if r["side"] == "python"]
hale = []
for r in rows:
    if r["side"] != "hale":
        continue
    c = {x["command"]: x["seconds"] for x in r["commands"]}
    g = lambda cmd, *ps: sum(c[cmd].get(p, 0.0) for p in ps)
    add, sign, pub = c["target add"], c["sign"], c["publish"]
    unlock = g("sign", "unlock") + g("publish", "unlock")
    verify = g("publish", "verify")
    flush = sum(g(k, "flush") for k in c)
    # everything the three commands did except hashing/copying contents, unlocking keys and verifying
    meta = (add["total"] - g("target add", "hash", "copy")
            + sign["total"] - g("sign", "unlock")
            + pub["total"] - g("publish", "unlock", "verify")
            + r["init_bins"])
    hale.append({
        "wall": r["wall"], "keygen": r["keygen"], "init_bins": r["init_bins"],
        "hash": add["hash"], "copy": add["copy"], "hash+copy": add["hash"] + add["copy"],
        "unlock": unlock, "verify": verify, "flush": flush,
        "meta": meta, "meta_noflush": meta - flush,
        "sign_canon": g("sign", "sign") + g("publish", "sign"),
        "add": add["total"], "sign_cmd": sign["total"], "publish": pub["total"],
        **{f"add.{k}": v for k, v in add.items()},
        **{f"sign.{k}": v for k, v in sign.items()},
        **{f"publish.{k}": v for k, v in pub.items()},
    })
floor = statistics.median(r["cp"] for r in rows if r["side"] == "floor")
P = lambda k: statistics.median(x[k] for x in py)
H = lambda k: statistics.median(x[k] for x in hale)
rng = lambda xs, k: f"{min(x[k] for x in xs):.3f}-{max(x[k] for x in xs):.3f}"

def line(label, p, h, note=""):
    print(f"  {label:<44} python-tuf {p:8.3f} s   hale-sign {h:8.3f} s   ratio {p / h:6.1f}x  {note}")

print(f"\nmedians of {len(hale)} rounds (python-tuf / hale-sign; ratio > 1: hale-sign faster)")
line("(a) end to end", P("total_incl_copy"), H("wall"),
     f"[py {rng(py, 'total_incl_copy')}, hale {rng(hale, 'wall')}]")
print(f"      ceiling: `cp -r` of the same {N} contents takes {floor:.3f} s, so no tool that writes the"
      f" targets can beat python-tuf by more than {P('total_incl_copy') / floor:.1f}x here")
print("      python total_incl_copy vs every hale-sign process: key generate x5 (scrypt), init, bins,")
print("      target add, sign (scrypt x3), publish (scrypt x2, verification), flushes included")
line("(b) build + sign + write metadata", P("sign") + P("write"), H("meta"),
     f"[hale {rng(hale, 'meta')}]")
line("(b') same, without hale-sign's fsyncs", P("sign") + P("write"), H("meta_noflush"))
print("      python sign+write vs hale-sign init, bins and target add/sign/publish minus the excluded")
print("      phases: key generation and unlock (scrypt; python-tuf keeps its keys unencrypted in")
print("      memory), hashing and copying contents (c), publish's verification (python-tuf does none).")
print("      Included on hale-sign's side: process start-up and re-reading the working directory in")
print("      each command (each signer runs on their own machine), hale-core threshold checks, and")
print("      (b only) flushing metadata to disk, which python-tuf never does.")
line("(c) hash target contents", P("hash"), H("hash"),
     "(python reads each file twice: hash, then copy)")
line("(c') hash + copy target contents", P("hash") + P("copy"), H("hash+copy"),
     "(hale-sign reads each file once)")
print("\n  excluded from (b), hale-sign only:")
print(f"    key generate x5 {H('keygen'):.3f} s (python keygen {P('keygen'):.3f} s, keys in memory)"
      f" | key unlock x5 (scrypt) {H('unlock'):.3f} s | publish verification {H('verify'):.3f} s")
print(f"    of which in (b): fsync {H('flush'):.3f} s; canonicalise + sign {H('sign_canon'):.3f} s"
      f" (python-tuf sign, incl. building objects, {P('sign'):.3f} s)")
print("\n  hale-sign per command (median s):")
for cmd in ("add", "sign", "publish"):
    keys = sorted({k for x in hale for k in x if k.startswith(cmd + ".")})
    print("    " + cmd + ": " + ", ".join(f"{k.split('.', 1)[1]} {H(k):.3f}" for k in keys))
print(f"    init + bins {H('init_bins'):.3f}")
print("  python-tuf (median s): " + ", ".join(f"{k} {P(k):.3f}" for k in
      ("keygen", "hash", "copy", "sign", "write", "tuf_total", "total_incl_copy")))
EOF

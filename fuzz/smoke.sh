#!/usr/bin/env bash
# Build every fuzz target (hale-core's parsers, the technician link's receiver, the pump's
# firmware store and update path) and run each for a bounded time from the seed corpora.
# Exits non-zero if any target crashes (panic, failed property, timeout, out-of-memory), after
# printing the crashing input's path, its bytes, and the stack. See README.md.
#
#   FUZZ_SECONDS=20        seconds per target
#   FUZZ_TARGETS="a b"     subset of targets (default: all)
#   FUZZ_FEATURES=std      hale-core with std (RSA keys, sorting canonicaliser); separate target dir
#   FUZZ_JOBS=1            cargo build jobs (the machines are small and shared)
#   FUZZ_ARGS="..."        extra libFuzzer flags (e.g. -dict=..., -max_len=...)
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

seconds="${FUZZ_SECONDS:-20}"
targets="${FUZZ_TARGETS:-json_parse canonical metadata trusted_set policy expires key bundle rollback link_receiver store install bundle_install}"
features="${FUZZ_FEATURES:-}"
jobs="${FUZZ_JOBS:-1}"

# libfuzzer-sys compiles libFuzzer (C++) with the cc crate
if ! command -v c++ >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "smoke.sh: installing a C++ compiler for libFuzzer" >&2
        apt-get update -qq && apt-get install -y -qq g++ >/dev/null || { echo "smoke.sh: apt-get install g++ failed" >&2; exit 2; }
    else
        echo "smoke.sh: need a C++ compiler (c++) to build libFuzzer" >&2
        exit 2
    fi
fi

host="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="$here/target${features:+/$features}"
# What cargo-fuzz passes for `--sanitizer none`, all stable rustc flags: SanitizerCoverage for
# libFuzzer's feedback, value profiling of comparisons, and `cfg(fuzzing)`. `--target` keeps these
# flags off build scripts and proc macros. Panics abort through libfuzzer-sys's hook.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
export RUST_BACKTRACE=1

echo "== building fuzz targets (host $host${features:+, features $features}, -j$jobs)"
# shellcheck disable=SC2086
cargo build --release --locked -j "$jobs" --target "$host" ${features:+--features $features} --bins || {
    echo "smoke.sh: build failed" >&2
    exit 2
}
bin="$CARGO_TARGET_DIR/$host/release"

failed=()
# inputs that once failed (regressions/<target>-<what>): each must pass its target, at once
for r in regressions/*; do
    [ -f "$r" ] || continue
    t="${r#regressions/}"; t="${t%%-*}"
    case " $targets " in
        *" $t "*) ;;
        *) echo "== regression $r: skipped ($t is not in FUZZ_TARGETS)"; continue ;;
    esac
    if "$bin/$t" -timeout=1 -rss_limit_mb=1024 "$r" >"$CARGO_TARGET_DIR/regression.log" 2>&1; then
        echo "== regression $r: passes"
    else
        failed+=("$r")
        echo "!! regression $r FAILED; log: $CARGO_TARGET_DIR/regression-$(basename "$r").log"
        cp "$CARGO_TARGET_DIR/regression.log" "$CARGO_TARGET_DIR/regression-$(basename "$r").log"
        grep -E -A40 "panicked at|==ERROR|ERROR: libFuzzer|deadly signal|timeout after|out-of-memory" "$CARGO_TARGET_DIR/regression.log" | head -60 | sed 's/^/   /'
    fi
done
for t in $targets; do
    corpus="$CARGO_TARGET_DIR/corpus/$t"
    artifacts="$CARGO_TARGET_DIR/artifacts/$t/"
    log="$CARGO_TARGET_DIR/logs/$t.log"
    mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
    marker="$CARGO_TARGET_DIR/logs/$t.start"
    touch "$marker"
    echo "== $t: ${seconds}s from seeds/$t"
    # first dir: the working corpus (new inputs go there); seeds/ is only read
    # shellcheck disable=SC2086
    "$bin/$t" "$corpus" "seeds/$t" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 -print_final_stats=1 \
        -artifact_prefix="$artifacts" ${FUZZ_ARGS:-} >"$log" 2>&1
    rc=$?
    grep -E '^#[0-9]+.*(DONE|INITED)' "$log" | tail -2 | sed 's/^/   /'
    grep -E '^stat::number_of_executed_units|^Done ' "$log" | sed 's/^/   /'
    if [ "$rc" -ne 0 ]; then
        failed+=("$t")
        echo "!! $t FAILED (exit $rc); log: $log"
        grep -E -A40 "panicked at|==ERROR|ERROR: libFuzzer|deadly signal|timeout after|out-of-memory" "$log" | head -80 | sed 's/^/   /'
        for a in $(find "$artifacts" -type f -newer "$marker"); do
            echo "   crashing input: $a ($(wc -c <"$a") bytes)"
            echo "   reproduce: $bin/$t $a"
            head -c 512 "$a" | od -An -c | head -20 | sed 's/^/     /'
        done
    fi
done

echo
if [ "${#failed[@]}" -ne 0 ]; then
    echo "smoke.sh: FAILED: ${failed[*]}"
    exit 1
fi
echo "smoke.sh: all targets ran ${seconds}s without a crash"

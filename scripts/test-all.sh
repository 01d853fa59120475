#!/usr/bin/env bash
# Hale's one test command: everything CI checks, in the order a failure is cheapest to find.
#
#   scripts/test-all.sh            # all of it
#   SKIP_FUZZ=1 scripts/test-all.sh
#
# 1. installs what the tests need (.ci/install.sh: QEMU, nginx, faketime, python-tuf venv, targets)
# 2. cargo fmt --check; clippy -D warnings on every package and on the no_std core for Cortex-M
# 3. cargo test --workspace (unit, attack suite, interop with python-tuf and rust-tuf, server,
#    agent with its power-loss sweep, PKI with real TLS handshakes, link, end to end)
# 4. hale-core for thumbv7em-none-eabihf with default (no-heap) features
# 5. the QEMU firmware: a whole update passes, tampered metadata fails, an authorized rollback
#    passes; flash and RAM within budget (64 KiB, 32 KiB)
# 6. a short fuzz smoke run of every parser
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# each step's wall time is printed when the next starts (CI must stay under 30 minutes)
STEP_NAME= STEP_START=$SECONDS
step() {
  [ -n "$STEP_NAME" ] && printf '== (%s: %d s)\n' "$STEP_NAME" $((SECONDS - STEP_START))
  STEP_NAME=$1 STEP_START=$SECONDS
  printf '\n== %s\n' "$*"
}

step "install test dependencies"
bash .ci/install.sh
export HALE_VENV="${HALE_VENV:-$PWD/target/venv}"

# A clean checkout builds everything once: no incremental state to keep, and line tables are
# enough for a test's backtrace (full debug info for the optimised dependencies was a large part
# of the build; CI ran 28.9 minutes of its 30 on 2026-11-23). Only under CI, so that a
# developer's own target directory is not rebuilt.
if [ -n "${CI:-}" ]; then
  export CARGO_INCREMENTAL=0 CARGO_PROFILE_DEV_DEBUG=line-tables-only
fi

step "format"
cargo fmt --all -- --check

step "clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p hale-core -p hale-mem --target thumbv7em-none-eabihf --locked -- -D warnings

step "binaries (the end-to-end test drives them; same command as scripts/demo.sh)"
cargo build -p hale-sign -p hale-server --bins --locked
# each on its own: with other packages, `--features device-agent/std` (`hale-link/std`) lands on
# the package's dev-dependency on itself and its binary (which needs `std`) is skipped
cargo build -p hale-link --features std --bins --locked
cargo build -p device-agent --features std --bins --locked

step "tests"
cargo test --workspace --locked

step "hale-core on Cortex-M (no_std, no heap)"
cargo build -p hale-core --target thumbv7em-none-eabihf --locked
# hale-core's unit tests in the device's features (no heap): the workspace run above builds it with
# `std`, and some readers take another path without a heap (docs/decisions.md)
cargo test -p hale-core --lib --locked

if [ -x device-agent/firmware-qemu/run.sh ]; then
  step "QEMU firmware (mps2-an386): update passes, tampered metadata fails, within 64 KiB flash / 32 KiB RAM"
  HALE_ENFORCE_BUDGET=1 device-agent/firmware-qemu/run.sh
fi

if [ "${SKIP_FUZZ:-0}" != 1 ] && [ -x fuzz/smoke.sh ]; then
  step "fuzz smoke run"
  FUZZ_SECONDS="${FUZZ_SECONDS:-15}" fuzz/smoke.sh
fi

step "all checks passed"
printf '== (%d s in all)\n' "$SECONDS"

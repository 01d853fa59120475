#!/usr/bin/env bash
# Installs everything Hale's CI needs on a clean Debian machine.
#
#   - Debian packages: QEMU (Cortex-M emulation), arm-none-eabi binutils,
#     nginx + wrk (serving / load benchmarks), curl, faketime (expiry tests),
#     openssl (key fixtures), python3-venv (only if venv/ensurepip is missing).
#   - Rust: the thumbv7em-none-eabihf target (embedded build), clippy, rustfmt.
#   - A Python venv with python-tuf, the reference implementation used by the
#     interop tests (tests/interop/*.py).
#
# Idempotent and fast when everything is already present: apt-get and pip are
# only invoked when something is actually missing.
#
# Environment:
#   HALE_VENV   where the venv lives (default: <repo>/target/venv)
#
# Usage: bash .ci/install.sh
set -euo pipefail

# Repository root = parent of this script's directory (no absolute paths).
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HALE_VENV:-$REPO/target/venv}"

# Pinned versions of the Python reference implementation.
TUF_VERSION="7.0.1"
SSLIB_VERSION="1.6.0"

APT_PACKAGES=(qemu-system-arm binutils-arm-none-eabi nginx-light wrk curl faketime openssl)
RUST_TARGETS=(thumbv7em-none-eabihf)
RUST_COMPONENTS=(clippy rustfmt)

INSTALLED=()   # human-readable summary of what this run installed

log() { echo "[install] $*"; }

# Run as root directly, otherwise through sudo if available.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# --- 1. Debian packages -------------------------------------------------------
pkg_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

missing_pkgs=()
for p in "${APT_PACKAGES[@]}"; do
  pkg_installed "$p" || missing_pkgs+=("$p")
done
# Debian's own python3 ships venv/ensurepip separately (python3-venv).
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  missing_pkgs+=(python3-venv)
fi

if [ "${#missing_pkgs[@]}" -gt 0 ]; then
  log "apt: installing ${missing_pkgs[*]}"
  as_root apt-get update -qq
  # Do not start services (nginx) on install: tests start their own instances.
  # policy-rc.d exit code 101 = "action forbidden"; only add it if absent.
  policy=/usr/sbin/policy-rc.d
  added_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    added_policy=1
  fi
  rc=0
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}" || rc=$?
  if [ "$added_policy" -eq 1 ]; then as_root rm -f "$policy"; fi
  [ "$rc" -eq 0 ] || { log "apt-get install failed ($rc)"; exit "$rc"; }
  INSTALLED+=("apt: ${missing_pkgs[*]}")
else
  log "apt: all packages present"
fi

# --- 2. Rust target and components -------------------------------------------
# Run rustup from the repo so a rust-toolchain.toml there (if any) is honoured.
if ! command -v rustup >/dev/null 2>&1; then
  log "rustup not found; the machine's Rust toolchain is expected to be installed by rustup"
  exit 1
fi
installed_targets="$(cd "$REPO" && rustup target list --installed)"
for t in "${RUST_TARGETS[@]}"; do
  if ! grep -qx "$t" <<<"$installed_targets"; then
    log "rustup: adding target $t"
    (cd "$REPO" && rustup target add "$t")
    INSTALLED+=("rust target: $t")
  fi
done
installed_components="$(cd "$REPO" && rustup component list --installed)"
for c in "${RUST_COMPONENTS[@]}"; do
  # installed components are listed as e.g. "clippy-x86_64-unknown-linux-gnu"
  if ! grep -q "^$c\(-\|$\)" <<<"$installed_components"; then
    log "rustup: adding component $c"
    (cd "$REPO" && rustup component add "$c")
    INSTALLED+=("rust component: $c")
  fi
done

# --- 3. Python venv with python-tuf ------------------------------------------
venv_ok() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$TUF_VERSION" "$SSLIB_VERSION" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
assert version("tuf") == sys.argv[1], "tuf"
assert version("securesystemslib") == sys.argv[2], "securesystemslib"
import cryptography  # the [crypto] extra (CryptoSigner)
import tuf.ngclient  # noqa: F401
EOF
}

if venv_ok; then
  log "venv: $VENV already has tuf==$TUF_VERSION securesystemslib==$SSLIB_VERSION"
else
  log "venv: creating/updating $VENV"
  mkdir -p "$(dirname "$VENV")"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    "tuf==$TUF_VERSION" "securesystemslib[crypto]==$SSLIB_VERSION"
  venv_ok || { log "venv check failed after install"; exit 1; }
  INSTALLED+=("venv $VENV: tuf==$TUF_VERSION securesystemslib[crypto]==$SSLIB_VERSION")
fi

# --- summary ------------------------------------------------------------------
if [ "${#INSTALLED[@]}" -eq 0 ]; then
  log "nothing to install; everything already present"
else
  log "installed:"
  for i in "${INSTALLED[@]}"; do log "  - $i"; done
fi
log "python with tuf: $VENV/bin/python"

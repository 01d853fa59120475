#!/usr/bin/env bash
# Build and run Hale's test firmware under QEMU (Cortex-M4, mps2-an386):
#   1. the genuine update must exit 0;
#   2. the tampered-metadata variant must exit non-zero (1), with the exact trust error.
# Prints flash (.text+.rodata+.data), static RAM (.data+.bss), the stack high-water mark and the
# instructions for one update check. Needs qemu-system-arm, arm-none-eabi-size and the
# thumbv7em-none-eabihf target (bash .ci/install.sh).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"
QEMU=(qemu-system-arm -machine mps2-an386 -cpu cortex-m4 -nographic -semihosting-config enable=on,target=native -icount shift=0 -kernel)
ELF=target/thumbv7em-none-eabihf/release/hale-firmware-qemu
FLASH_BUDGET=$((64 * 1024))
RAM_BUDGET=$((32 * 1024))
fail=0

run_variant() { # name, expected exit, cargo args...
  local name="$1" want="$2"; shift 2
  cargo build --release --quiet "$@"
  cp "$ELF" "target/$name.elf"
  local out rc=0
  out="$(timeout 120 "${QEMU[@]}" "target/$name.elf" 2>&1)" || rc=$?
  echo "--- $name (exit $rc, expected $want)"
  echo "$out"
  if [ "$rc" -ne "$want" ]; then
    echo "FAIL: $name exited $rc, expected $want"; fail=1
  fi
  LAST_OUT="$out"
}

run_variant update 0
sizes="$(arm-none-eabi-size -A target/update.elf)"
sec() { awk -v s="$1" '$1 == s { print $2 }' <<<"$sizes" | head -1; }
text=$(sec .text); rodata=$(sec .rodata); data=$(sec .data); bss=$(sec .bss); vt=$(sec .vector_table)
text=${text:-0}; rodata=${rodata:-0}; data=${data:-0}; bss=${bss:-0}; vt=${vt:-0}
flash=$((vt + text + rodata + data))
fixtures=$(cat fixtures/root.json fixtures/timestamp.json fixtures/snapshot.json fixtures/targets.json fixtures/firmware-v1.bin fixtures/firmware-v2.bin fixtures/names.txt | wc -c)
ram=$((data + bss))
stack=$(grep -oE 'stack high-water mark: [0-9]+' <<<"$LAST_OUT" | grep -oE '[0-9]+$' || echo 0)
instr=$(grep -oE '= [0-9]+ instructions' <<<"$LAST_OUT" | grep -oE '[0-9]+' || echo 0)

run_variant tampered 1 --features tampered
if ! grep -q "ThresholdNotMet for targets (exact): yes; slots unchanged: yes" <<<"$LAST_OUT"; then
  echo "FAIL: tampered variant did not report the exact error with unchanged slots"; fail=1
fi

echo "=== figures (release, opt-level z, LTO)"
echo "flash (.vector_table+.text+.rodata+.data): $flash bytes; of which embedded test payload (metadata + two images): $fixtures bytes; agent+core: $((flash - fixtures)) bytes (budget $FLASH_BUDGET)"
echo "static RAM (.data+.bss): $ram bytes; stack high-water mark: $stack bytes; total: $((ram + stack)) bytes (budget $RAM_BUDGET)"
echo "one update check: $instr instructions (SysTick ticks x 40 at 25 MHz under -icount shift=0)"
over=0
[ $((flash - fixtures)) -le $FLASH_BUDGET ] || { echo "OVER BUDGET: flash"; over=1; }
[ $((ram + stack)) -le $RAM_BUDGET ] || { echo "OVER BUDGET: RAM"; over=1; }
if [ "${HALE_ENFORCE_BUDGET:-0}" = 1 ] && [ "$over" = 1 ]; then fail=1; fi
if [ "$fail" -ne 0 ]; then echo "firmware-qemu: FAILED"; exit 1; fi
echo "firmware-qemu: both variants behaved (update exit 0, tampered exit 1)"

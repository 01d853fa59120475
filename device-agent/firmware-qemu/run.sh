#!/usr/bin/env bash
# Build and run Hale's test firmware under QEMU (Cortex-M4, mps2-an386):
#   1. the genuine update must exit 0;
#   2. the tampered-metadata variant must exit non-zero (1), with the exact trust error;
#   3. the rollback variant must refuse an authorization for another device (exact error, slots
#      unchanged), then roll back from 2.0.0 to 1.0.0 with this device's authorization: exit 0.
# Prints flash (.text+.rodata+.data), static RAM (.data+.bss), the stack high-water mark and the
# instructions for one update check, and for a poll with nothing new after a reset and in the
# same boot (update variant). With HALE_ENFORCE_BUDGET=1 (scripts/test-all.sh, CI) a
# variant over 64 KiB flash or 32 KiB RAM (static + stack) fails the run. Needs qemu-system-arm,
# arm-none-eabi-size and the thumbv7em-none-eabihf target (bash .ci/install.sh).
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

# flash of an ELF less the embedded fixture payload (files given): agent + core + harness
agent_flash() { # elf, fixture files...
  local elf="$1"; shift
  local sizes text rodata data vt fixtures
  sizes="$(arm-none-eabi-size -A "$elf")"
  sec() { awk -v s="$1" '$1 == s { print $2 }' <<<"$sizes" | head -1; }
  text=$(sec .text); rodata=$(sec .rodata); data=$(sec .data); vt=$(sec .vector_table)
  fixtures=$(cd fixtures && cat "$@" | wc -c)
  echo $(( ${vt:-0} + ${text:-0} + ${rodata:-0} + ${data:-0} - fixtures )) "$fixtures"
}

run_variant update 0
read -r flash_update fixtures_update < <(agent_flash target/update.elf root.json timestamp.json snapshot.json targets.json firmware-v1.bin firmware-v2.bin names.txt)
sizes="$(arm-none-eabi-size -A target/update.elf)"
sec() { awk -v s="$1" '$1 == s { print $2 }' <<<"$sizes" | head -1; }
data=$(sec .data); bss=$(sec .bss)
ram=$(( ${data:-0} + ${bss:-0} ))
stack=$(grep -oE 'stack high-water mark: [0-9]+' <<<"$LAST_OUT" | grep -oE '[0-9]+$' || echo 0)
instr=$(grep -oE '= [0-9]+ instructions' <<<"$LAST_OUT" | grep -oE '[0-9]+' || echo 0)
poll_reset=$(grep -oE 'nothing new, after a reset: [0-9]+' <<<"$LAST_OUT" | grep -oE '[0-9]+$' || echo 0)
poll_same=$(grep -oE 'nothing new, in the same boot: [0-9]+' <<<"$LAST_OUT" | grep -oE '[0-9]+$' || echo 0)

run_variant tampered 1 --features tampered
if ! grep -q "ThresholdNotMet for targets (exact): yes; slots unchanged: yes" <<<"$LAST_OUT"; then
  echo "FAIL: tampered variant did not report the exact error with unchanged slots"; fail=1
fi

run_variant rollback 0 --features rollback
if ! grep -q "authorization for another device refused: NotForThisDevice (exact): yes; slots unchanged: yes" <<<"$LAST_OUT" \
  || ! grep -q "authorized rollback: confirmed 1.0.0 in slot b" <<<"$LAST_OUT"; then
  echo "FAIL: rollback variant did not refuse the other device's authorization exactly or did not roll back"; fail=1
fi
read -r flash_rollback fixtures_rollback < <(agent_flash target/rollback.elf rollback-root.json rollback-timestamp.json rollback-snapshot.json rollback-targets.json rollback-authorization.json rollback-authorization-other-device.json rollback-names.txt firmware-v1.bin firmware-v2.bin)
rb_stack=$(grep -oE 'stack high-water mark: [0-9]+' <<<"$LAST_OUT" | grep -oE '[0-9]+$' || echo 0)
rb_sizes="$(arm-none-eabi-size -A target/rollback.elf)"
rb_ram=$(awk '$1 == ".data" || $1 == ".bss" { s += $2 } END { print s + 0 }' <<<"$rb_sizes")

echo "=== figures (release, opt-level z, LTO)"
echo "flash less the embedded test payload (agent + core + test harness):"
echo "  update variant:   $flash_update bytes (payload excluded: $fixtures_update bytes)"
echo "  rollback variant: $flash_rollback bytes (payload excluded: $fixtures_rollback bytes; includes the rollback-authorization check)"
echo "  budget $FLASH_BUDGET"
echo "static RAM (.data+.bss): $ram bytes; stack high-water mark: $stack bytes; total: $((ram + stack)) bytes (budget $RAM_BUDGET)"
echo "rollback variant: static RAM $rb_ram bytes; stack high-water mark: $rb_stack bytes; total: $((rb_ram + rb_stack)) bytes"
echo "one update check: $instr instructions (SysTick ticks x 40 at 25 MHz under -icount shift=0)"
echo "one poll with nothing new: $poll_reset instructions after a reset, $poll_same in the same boot (the last check's seal)"
over=0
for v in "update:$flash_update" "rollback:$flash_rollback"; do
  f=${v#*:}
  if [ "$f" -le $FLASH_BUDGET ]; then
    echo "flash within budget: ${v%%:*} variant, $((FLASH_BUDGET - f)) bytes to spare"
  else
    echo "OVER BUDGET: flash, ${v%%:*} variant, $((f - FLASH_BUDGET)) bytes over"; over=1
  fi
done
for r in $((ram + stack)) $((rb_ram + rb_stack)); do
  [ "$r" -le $RAM_BUDGET ] || { echo "OVER BUDGET: RAM"; over=1; }
done
if [ "${HALE_ENFORCE_BUDGET:-0}" = 1 ] && [ "$over" = 1 ]; then fail=1; fi
if [ "$fail" -ne 0 ]; then echo "firmware-qemu: FAILED"; exit 1; fi
echo "firmware-qemu: all variants behaved (update exit 0, tampered exit 1, rollback exit 0)"

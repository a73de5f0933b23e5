#!/usr/bin/env bash
# Boot an Ember test guest under QEMU (microvm, PVH entry) with a timeout.
#
#   run-qemu.sh <guest> [extra qemu args...]   run one guest, serial on stdout
#   run-qemu.sh --check-all                    run every guest, check its output
#
# Environment:
#   OUT      directory holding the built guests (default: ../out/test-guests
#            relative to this script; relative paths are taken from this
#            script's directory, as `make OUT=...` does)
#   TIMEOUT  seconds per QEMU run (default 30)
#   QEMU     QEMU binary (default qemu-system-x86_64)
#   ACCEL    kvm or tcg (default: kvm when /dev/kvm is usable, else tcg)
#
# QEMU with -no-reboot exits 0 both on the i8042 reset and on a triple fault,
# so success is judged from the serial output, not the exit status. Note:
# `-cpu host` fails on PVM hosts (QEMU 7.2 cannot set MSR 0x10a); the default
# CPU model is used.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-../out/test-guests}"
case "$OUT" in /*) ;; *) OUT="$here/$OUT" ;; esac
TIMEOUT="${TIMEOUT:-30}"
QEMU="${QEMU:-qemu-system-x86_64}"
if [[ -z "${ACCEL:-}" ]]; then
    if [[ -r /dev/kvm && -w /dev/kvm ]]; then ACCEL=kvm; else ACCEL=tcg; fi
fi

run_guest() { # <guest> [qemu args...]; serial output on stdout
    local guest="$1"; shift
    local kernel="$OUT/$guest"
    if [[ ! -f "$kernel" ]]; then
        echo "run-qemu.sh: $kernel not found (run make first)" >&2
        return 2
    fi
    timeout --foreground -k 5 "$TIMEOUT" "$QEMU" -M microvm,acpi=off -accel "$ACCEL" \
        -m 256 -nographic -nodefaults -serial stdio -no-reboot \
        -kernel "$kernel" "$@"
}

if [[ "${1:-}" != "--check-all" ]]; then
    if [[ $# -lt 1 ]]; then
        sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
    fi
    run_guest "$@"
    exit $?
fi

# ---------------------------------------------------------------- --check-all
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
printf 'ember test initrd\n' >"$tmp/initrd"   # 18 bytes
initrd_hash=0x7b434ce61ec1090a                # FNV-1a 64 of those bytes

failures=0
check() { # <name> <expected lines file> <guest> [qemu args...]; stdin = guest input
    local name="$1" expect="$2"; shift 2
    local log="$tmp/$name.log" rc
    run_guest "$@" >"$log" 2>"$tmp/$name.err"
    rc=$?
    tr -d '\r' <"$log" >"$log.lf"
    local missing=0
    while IFS= read -r line; do
        if ! grep -qxF -- "$line" "$log.lf"; then
            echo "  missing: $line"
            missing=1
        fi
    done <"$expect"
    if grep -q ' fail ' "$log.lf" && ! grep -q ' fail ' "$expect"; then missing=1; fi
    if [[ $rc -ne 0 ]]; then echo "  qemu exit status $rc (124: timeout)"; missing=1; fi
    if [[ $missing -eq 0 ]]; then
        echo "PASS $name"
    else
        echo "FAIL $name; output was:"
        sed 's/^/  | /' "$log.lf"
        sed 's/^/  ! /' "$tmp/$name.err"
        failures=$((failures + 1))
    fi
}

expect() { printf '%s\n' "$@" >"$tmp/expect"; }

expect "EMBER-TEST hello start protocol=pvh" "Hello from the hello guest" "EMBER-TEST hello done"
check hello "$tmp/expect" hello </dev/null

expect "EMBER-TEST bootinfo start protocol=pvh" "CMDLINE foo bar=baz" \
    "INITRD $(printf 'none')" "EMBER-TEST bootinfo done"
check bootinfo-noinitrd "$tmp/expect" bootinfo -append 'foo bar=baz' </dev/null

expect "EMBER-TEST bootinfo start protocol=pvh" "E820 0x100000 0xff00000 1" "CMDLINE console=x" \
    "EMBER-TEST bootinfo done"
check bootinfo "$tmp/expect" bootinfo -append 'console=x' -initrd "$tmp/initrd" </dev/null
if grep -qE "^INITRD 0x[0-9a-f]+ 0x12 $initrd_hash\$" "$tmp/bootinfo.log.lf"; then
    echo "PASS bootinfo-initrd-hash"
else
    echo "FAIL bootinfo-initrd-hash (want INITRD <addr> 0x12 $initrd_hash)"
    failures=$((failures + 1))
fi

# QEMU microvm has no MP table; cpus=<n> makes the guest use APIC ids 0..n-1.
expect "EMBER-TEST smp start protocol=pvh" "CPU apic=0" "CPU apic=1" \
    "SMP online=2 expected=2" "EMBER-TEST smp done"
check smp "$tmp/expect" smp -smp 2 -append 'cpus=2' </dev/null

expect "EMBER-TEST smp start protocol=pvh" "EMBER-TEST smp fail no-mp-table"
check smp-no-mp-table "$tmp/expect" smp </dev/null

expect "EMBER-TEST echo start protocol=pvh" "READY" "ECHO hello world" "ECHO x y" \
    "EMBER-TEST echo done"
printf 'hello world\r\n\nx y\nquit\n' >"$tmp/echo.in"
check echo "$tmp/expect" echo <"$tmp/echo.in"

expect "EMBER-TEST fault start protocol=pvh" "MMIO read 0x0" "EMBER-TEST fault done"
check fault-mmio "$tmp/expect" fault -append 'fault=mmio' </dev/null
expect "EMBER-TEST fault start protocol=pvh" "PIO read 0xff" "EMBER-TEST fault done"
check fault-pio "$tmp/expect" fault -append 'fault=pio' </dev/null
expect "EMBER-TEST fault start protocol=pvh" "TRIPLE"
check fault-triple "$tmp/expect" fault -append 'fault=triple' </dev/null
expect "EMBER-TEST fault start protocol=pvh" "MMIO read 0x0" "PIO read 0xff" "TRIPLE"
check fault-all "$tmp/expect" fault </dev/null

# exits: no device attached, so the MMIO loop reads the unmapped 0xd0000000.
expect "EMBER-TEST exits start protocol=pvh" "EMBER-TEST exits done"
check exits "$tmp/expect" exits -append 'mmio=100 pio=32' </dev/null
if grep -qE '^EXITS mmio addr=0xd0000000 unmapped n=100 tsc=[0-9]+$' "$tmp/exits.log.lf"; then
    echo "PASS exits-unmapped"
else
    echo "FAIL exits-unmapped (want EXITS mmio addr=0xd0000000 unmapped n=100 tsc=<n>)"
    failures=$((failures + 1))
fi

# blk: a 1 MiB zero disk; QEMU microvm's virtio-mmio must be told to use version 2.
truncate -s 1M "$tmp/disk"
expect "EMBER-TEST blk start protocol=pvh" "BLK sectors=2048" "BLK readback ok" \
    "BLK oob status=0x1" "EMBER-TEST blk done"
check blk "$tmp/expect" blk -global virtio-mmio.force-legacy=false \
    -drive "if=none,file=$tmp/disk,format=raw,id=d0" -device virtio-blk-device,drive=d0 </dev/null

if [[ $failures -ne 0 ]]; then
    echo "run-qemu.sh: $failures check(s) failed (accel=$ACCEL)"
    exit 1
fi
echo "run-qemu.sh: all checks passed (accel=$ACCEL)"

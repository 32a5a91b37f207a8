#!/usr/bin/env bash
# Restore throughput of `openvdi` against plain tools on the same bytes, in one run.
#
#   openvdi restore ID --replace   (zstd:1 backup, 2 stripes)   vs   zstd -d -T2 file.zst -o file
#   openvdi restore ID --replace   (none backup, 2 stripes)     vs   cat file > copy; sync copy
#
# Both openvdi restores are timed with and without the default verification pass
# (`--replace` verifies the backup before touching the live database; `--no-verify`
# skips it). The plain tools get the engine's native backup stream (`openvdi
# export`, concatenated) and its zstd -1 compression; their output is fsynced, as the
# engine fsyncs the restored files. Inputs are read once beforehand (page cache warm).
#
# Usage: crates/openvdi-cli/bench/restore.sh    (env: SIZE=2G, BENCH_DIR=/tmp, RUNS=1)
set -euo pipefail

SIZE=${SIZE:-2G}
RUNS=${RUNS:-1}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$ROOT"
command -v zstd >/dev/null || { echo "bench: needs zstd (apt-get install zstd)" >&2; exit 2; }

cargo build --release -q -p openvdi-cli --bin openvdi
cargo build --release -q -p openvdi-engine --bin openvdi-engine
BIN="$ROOT/target/release"

WORK=$(mktemp -d "${BENCH_DIR:-/tmp}/openvdi-rbench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
OV=("$BIN/openvdi" --quiet --repo "$WORK/repo" --data-dir "$WORK/data")

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.3f}')"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
best() { sort -n | head -1; }

echo "bench: creating a $SIZE database (engine)…" >&2
"${OV[@]}" init >/dev/null
"$BIN/openvdi-engine" --data-dir "$WORK/data" create-database bench --size "$SIZE" >/dev/null
OUT=$("${OV[@]}" --json backup bench --stripes 2 --compress zstd:1)
IDZ=$(echo "$OUT" | json 'd["id"]'); RAW=$(echo "$OUT" | json 'd["raw_size"]')
IDN=$("${OV[@]}" --json backup bench --stripes 2 --compress none | json 'd["id"]')
"${OV[@]}" export "$IDZ" "$WORK/native" >/dev/null
cat "$WORK"/native/*.bak >"$WORK/native.bin"
rm -rf "$WORK/native"
zstd -q -1 -T2 -f "$WORK/native.bin" -o "$WORK/native.zst"
cat "$WORK/native.bin" "$WORK/native.zst" >/dev/null
find "$WORK/repo" -type f -exec cat {} + >/dev/null

restore() { # id [--no-verify] -> seconds
    local t0 t1
    sync
    t0=$(now)
    "${OV[@]}" restore "$1" --replace "${@:2}" >/dev/null
    t1=$(now)
    secs "$t0" "$t1"
}

T_OVZ=(); T_OVZN=(); T_ZSTD=(); T_OVN=(); T_OVNN=(); T_CATS=()
for _ in $(seq "$RUNS"); do
    T_OVZ+=("$(restore "$IDZ")"); T_OVZN+=("$(restore "$IDZ" --no-verify)")
    sync; t0=$(now); zstd -q -d -T2 -f "$WORK/native.zst" -o "$WORK/out.bin"; sync "$WORK/out.bin"; t1=$(now)
    T_ZSTD+=("$(secs "$t0" "$t1")"); rm -f "$WORK/out.bin"
    T_OVN+=("$(restore "$IDN")"); T_OVNN+=("$(restore "$IDN" --no-verify)")
    sync; t0=$(now); cat "$WORK/native.bin" >"$WORK/copy.bin"; sync "$WORK/copy.bin"; t1=$(now)
    T_CATS+=("$(secs "$t0" "$t1")"); rm -f "$WORK/copy.bin"
done

b() { printf '%s\n' "$@" | best; }
python3 - "$RAW" "$(b "${T_OVZ[@]}")" "$(b "${T_OVZN[@]}")" "$(b "${T_ZSTD[@]}")" \
    "$(b "${T_OVN[@]}")" "$(b "${T_OVNN[@]}")" "$(b "${T_CATS[@]}")" <<'PY'
import sys
raw, ovz, ovzn, zs, ovn, ovnn, cts = int(sys.argv[1]), *map(float, sys.argv[2:])
mib = raw / 1048576
r = lambda t: mib / t
print(f"bytes: {raw} ({mib:.0f} MiB native backup stream), best of runs, page cache warm")
print(f"openvdi restore (zstd:1, 2 stripes)             : {ovz:7.3f} s  {r(ovz):6.0f} MiB/s  {zs / ovz:.2f}x zstd -d")
print(f"openvdi restore --no-verify (zstd:1, 2 stripes) : {ovzn:7.3f} s  {r(ovzn):6.0f} MiB/s  {zs / ovzn:.2f}x zstd -d")
print(f"zstd -d -T2 file.zst -o file; sync              : {zs:7.3f} s  {r(zs):6.0f} MiB/s")
print(f"openvdi restore (none, 2 stripes)               : {ovn:7.3f} s  {r(ovn):6.0f} MiB/s  {cts / ovn:.2f}x cat+sync")
print(f"openvdi restore --no-verify (none, 2 stripes)   : {ovnn:7.3f} s  {r(ovnn):6.0f} MiB/s  {cts / ovnn:.2f}x cat+sync")
print(f"cat file > copy; sync copy                      : {cts:7.3f} s  {r(cts):6.0f} MiB/s")
PY

#!/usr/bin/env bash
# Restore throughput of `openvdi` against plain tools on the same bytes, in one run.
#
#   openvdi restore ID --as NEW   (zstd:1 backup, 2 stripes)   vs   zstd -d -T2 file.zst -o file
#   openvdi restore ID --as NEW   (none backup, 2 stripes)     vs   cat file > copy; sync copy
#
# The main figure is a restore to a database that does not exist (a disaster
# recovery; the previous round's copy is dropped first). A restore over the live
# database (`--replace`) first verifies the whole backup, so it reads and decodes it
# twice: it is timed too, as a second line. The plain tools get the engine's native backup stream (`openvdi
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
"${OV[@]}" init --no-encryption >/dev/null 2>&1
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

restore() { # id --as NEW | id --replace -> seconds
    local t0 t1
    "$BIN/openvdi-engine" --data-dir "$WORK/data" drop rb >/dev/null 2>&1 || true
    sync
    t0=$(now)
    "${OV[@]}" restore "$@" >/dev/null
    t1=$(now)
    secs "$t0" "$t1"
}

T_OVZ=(); T_OVZN=(); T_ZSTD=(); T_OVN=(); T_OVNN=(); T_CATS=()
for _ in $(seq "$RUNS"); do
    T_OVZ+=("$(restore "$IDZ" --as rb)"); T_OVZN+=("$(restore "$IDZ" --replace)")
    sync; t0=$(now); zstd -q -d -T2 -f "$WORK/native.zst" -o "$WORK/out.bin"; sync "$WORK/out.bin"; t1=$(now)
    T_ZSTD+=("$(secs "$t0" "$t1")"); rm -f "$WORK/out.bin"
    T_OVN+=("$(restore "$IDN" --as rb)"); T_OVNN+=("$(restore "$IDN" --replace)")
    sync; t0=$(now); cat "$WORK/native.bin" >"$WORK/copy.bin"; sync "$WORK/copy.bin"; t1=$(now)
    T_CATS+=("$(secs "$t0" "$t1")"); rm -f "$WORK/copy.bin"
done

b() { printf '%s\n' "$@" | best; }
# Every run, in order (the disk's write-back speed varies from run to run; the
# comparison is of the best of each, and each round runs both sides back to back).
echo "runs (s): restore zstd:1 --as ${T_OVZ[*]} | zstd -d ${T_ZSTD[*]} | restore none --as ${T_OVN[*]} | cat+sync ${T_CATS[*]}"
python3 - "$RAW" "$(b "${T_OVZ[@]}")" "$(b "${T_OVZN[@]}")" "$(b "${T_ZSTD[@]}")" \
    "$(b "${T_OVN[@]}")" "$(b "${T_OVNN[@]}")" "$(b "${T_CATS[@]}")" <<'PY'
import sys
raw, ovz, ovzn, zs, ovn, ovnn, cts = int(sys.argv[1]), *map(float, sys.argv[2:])
mib = raw / 1048576
r = lambda t: mib / t
print(f"bytes: {raw} ({mib:.0f} MiB native backup stream), best of runs, page cache warm")
print(f"openvdi restore --as (zstd:1, 2 stripes)         : {ovz:7.3f} s  {r(ovz):6.0f} MiB/s  {zs / ovz:.2f}x zstd -d")
print(f"openvdi restore --replace, verifies first (zstd:1): {ovzn:7.3f} s  {r(ovzn):6.0f} MiB/s  {zs / ovzn:.2f}x zstd -d")
print(f"zstd -d -T2 file.zst -o file; sync              : {zs:7.3f} s  {r(zs):6.0f} MiB/s")
print(f"openvdi restore --as (none, 2 stripes)           : {ovn:7.3f} s  {r(ovn):6.0f} MiB/s  {cts / ovn:.2f}x cat+sync")
print(f"openvdi restore --replace, verifies first (none)  : {ovnn:7.3f} s  {r(ovnn):6.0f} MiB/s  {cts / ovnn:.2f}x cat+sync")
print(f"cat file > copy; sync copy                      : {cts:7.3f} s  {r(cts):6.0f} MiB/s")
PY

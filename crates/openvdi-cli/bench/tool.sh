#!/usr/bin/env bash
# Backup throughput of `openvdi` against plain tools on the same bytes, in one run.
#
#   openvdi backup --compress zstd:1 --stripes 2   vs   zstd -1 -T2 file -o file.zst
#   openvdi backup --compress none   --stripes 2   vs   cat file > copy   (and cat + sync)
#
# The database is created by the engine (SIZE, default 2G); the "same bytes" for the
# plain tools are the engine's native backup stream, re-materialised with
# `openvdi export` and concatenated into one file. Everything is read from the page
# cache (each input is read once beforehand), so the comparison is CPU and pipeline
# cost, not the disk. openvdi fsyncs each stripe before it reports success; plain
# `cat` does not, so the figure against `cat + sync` is printed too.
#
# Usage: crates/openvdi-cli/bench/tool.sh    (env: SIZE=2G, BENCH_DIR=/tmp, RUNS=1)
set -euo pipefail

SIZE=${SIZE:-2G}
RUNS=${RUNS:-1}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$ROOT"
command -v zstd >/dev/null || { echo "bench: needs zstd (apt-get install zstd)" >&2; exit 2; }

cargo build --release -q -p openvdi-cli --bin openvdi
cargo build --release -q -p openvdi-engine --bin openvdi-engine
BIN="$ROOT/target/release"

WORK=$(mktemp -d "${BENCH_DIR:-/tmp}/openvdi-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
OV=("$BIN/openvdi" --quiet --repo "$WORK/repo" --data-dir "$WORK/data")

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.3f}')"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

# Throughput of the pipeline itself: an unencrypted repository (the cost of
# encryption is bench/encryption.sh's subject).
"${OV[@]}" init --no-encryption >/dev/null 2>&1
echo "bench: creating a $SIZE database (engine)…" >&2
"$BIN/openvdi-engine" --data-dir "$WORK/data" create-database bench --size "$SIZE" >/dev/null
cat "$WORK"/data/bench* >/dev/null

best() { sort -n | head -1; }

backup() { # codec -> "seconds raw_bytes id"
    local t0 t1 out
    sync
    t0=$(now)
    out=$("${OV[@]}" --json backup bench --stripes 2 --compress "$1")
    t1=$(now)
    echo "$(secs "$t0" "$t1") $(echo "$out" | json 'd["raw_size"]') $(echo "$out" | json 'd["id"]')"
}

read -r _ RAW ID <<<"$(backup zstd:1)"
"${OV[@]}" export "$ID" "$WORK/native" >/dev/null
cat "$WORK"/native/*.bak >"$WORK/native.bin"
rm -rf "$WORK/native"
NATIVE=$(stat -c %s "$WORK/native.bin")
[ "$NATIVE" = "$RAW" ] || { echo "bench: exported $NATIVE bytes, backup says $RAW" >&2; exit 1; }
cat "$WORK/native.bin" >/dev/null

T_OVZ=(); T_ZSTD=(); T_OVN=(); T_CAT=(); T_CATS=()
for _ in $(seq "$RUNS"); do
    read -r t _ _ <<<"$(backup zstd:1)"; T_OVZ+=("$t")
    sync; t0=$(now); zstd -q -1 -T2 -f "$WORK/native.bin" -o "$WORK/native.zst"; t1=$(now)
    T_ZSTD+=("$(secs "$t0" "$t1")"); rm -f "$WORK/native.zst"
    read -r t _ _ <<<"$(backup none)"; T_OVN+=("$t")
    sync; t0=$(now); cat "$WORK/native.bin" >"$WORK/copy.bin"; t1=$(now)
    T_CAT+=("$(secs "$t0" "$t1")"); rm -f "$WORK/copy.bin"
    sync; t0=$(now); cat "$WORK/native.bin" >"$WORK/copy.bin"; sync "$WORK/copy.bin"; t1=$(now)
    T_CATS+=("$(secs "$t0" "$t1")"); rm -f "$WORK/copy.bin"
    "${OV[@]}" prune --keep-last 1 --confirm >/dev/null
done

ovz=$(printf '%s\n' "${T_OVZ[@]}" | best); zs=$(printf '%s\n' "${T_ZSTD[@]}" | best)
ovn=$(printf '%s\n' "${T_OVN[@]}" | best); ct=$(printf '%s\n' "${T_CAT[@]}" | best)
cts=$(printf '%s\n' "${T_CATS[@]}" | best)
python3 - "$RAW" "$ovz" "$zs" "$ovn" "$ct" "$cts" <<'PY'
import sys
raw, ovz, zs, ovn, ct, cts = int(sys.argv[1]), *map(float, sys.argv[2:])
mib = raw / 1048576
rate = lambda t: mib / t
print(f"bytes: {raw} ({mib:.0f} MiB native backup stream), best of runs, page cache warm")
print(f"openvdi backup --compress zstd:1 --stripes 2 : {ovz:7.3f} s  {rate(ovz):7.0f} MiB/s")
print(f"zstd -1 -T2 file -o file.zst                 : {zs:7.3f} s  {rate(zs):7.0f} MiB/s")
print(f"  ratio openvdi/zstd                         : {zs / ovz:.2f}x")
print(f"openvdi backup --compress none   --stripes 2 : {ovn:7.3f} s  {rate(ovn):7.0f} MiB/s")
print(f"cat file > copy                              : {ct:7.3f} s  {rate(ct):7.0f} MiB/s")
print(f"cat file > copy; sync copy                   : {cts:7.3f} s  {rate(cts):7.0f} MiB/s")
print(f"  ratio openvdi/cat                          : {ct / ovn:.2f}x")
print(f"  ratio openvdi/(cat+sync)                   : {cts / ovn:.2f}x")
PY

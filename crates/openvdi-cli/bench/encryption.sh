#!/usr/bin/env bash
# Cost of encryption, in one run: the same database backed up and restored through an
# encrypted and through an unencrypted repository, runs interleaved (this machine is
# noisy: compare the ratios, not the absolute figures).
#
#   openvdi backup  DB --compress zstd:1 --stripes 2        encrypted vs --no-encryption
#   openvdi restore ID --replace --no-verify                encrypted vs --no-encryption
#
# The encrypted restore includes its authentication pass over the stored stripes
# (see the README: nothing reaches the engine before the whole backup checked out),
# and every encrypted command its argon2id key derivation (64 MiB, 3 passes).
#
# Usage: crates/openvdi-cli/bench/encryption.sh   (env: SIZE=2G, RUNS=2, BENCH_DIR=/tmp)
set -euo pipefail

SIZE=${SIZE:-2G}
RUNS=${RUNS:-2}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$ROOT"
cargo build --release -q -p openvdi-cli --bin openvdi
cargo build --release -q -p openvdi-engine --bin openvdi-engine
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"

WORK=$(mktemp -d "${BENCH_DIR:-/tmp}/openvdi-encbench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export OPENVDI_PASSWORD="bench password"
ENC=("$BIN/openvdi" --quiet --repo "$WORK/enc" --data-dir "$WORK/data")
PLAIN=("$BIN/openvdi" --quiet --repo "$WORK/plain" --data-dir "$WORK/data")
"${ENC[@]}" init >/dev/null
"${PLAIN[@]}" init --no-encryption >/dev/null 2>&1

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.3f}')"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
best() { sort -n | head -1; }

echo "bench: creating a $SIZE database (engine)…" >&2
"$BIN/openvdi-engine" --data-dir "$WORK/data" create-database bench --size "$SIZE" >/dev/null
cat "$WORK"/data/bench* >/dev/null

backup() { # repo-args… -> "seconds raw stored id"
    local t0 t1 out
    sync
    t0=$(now)
    out=$("$@" --json backup bench --stripes 2 --compress zstd:1)
    t1=$(now)
    echo "$(secs "$t0" "$t1") $(echo "$out" | json 'd["raw_size"]') $(echo "$out" | json 'd["stored_size"]') $(echo "$out" | json 'd["id"]')"
}
restore() { # id repo-args… -> seconds
    local id=$1 t0 t1
    shift
    sync
    t0=$(now)
    "$@" restore "$id" --replace --no-verify >/dev/null
    t1=$(now)
    secs "$t0" "$t1"
}

B_ENC=(); B_PLAIN=(); R_ENC=(); R_PLAIN=()
for _ in $(seq "$RUNS"); do
    read -r t RAW ST_PLAIN ID_PLAIN <<<"$(backup "${PLAIN[@]}")"; B_PLAIN+=("$t")
    read -r t _ ST_ENC ID_ENC <<<"$(backup "${ENC[@]}")"; B_ENC+=("$t")
    R_PLAIN+=("$(restore "$ID_PLAIN" "${PLAIN[@]}")")
    R_ENC+=("$(restore "$ID_ENC" "${ENC[@]}")")
    "${PLAIN[@]}" prune --keep-last 1 --confirm >/dev/null
    "${ENC[@]}" prune --keep-last 1 --confirm >/dev/null
done

be=$(printf '%s\n' "${B_ENC[@]}" | best); bp=$(printf '%s\n' "${B_PLAIN[@]}" | best)
re=$(printf '%s\n' "${R_ENC[@]}" | best); rp=$(printf '%s\n' "${R_PLAIN[@]}" | best)
echo "runs: backup enc ${B_ENC[*]} / plain ${B_PLAIN[*]}; restore enc ${R_ENC[*]} / plain ${R_PLAIN[*]}"
python3 - "$RAW" "$ST_PLAIN" "$ST_ENC" "$be" "$bp" "$re" "$rp" <<'PY'
import sys
raw, stp, ste = map(int, sys.argv[1:4])
be, bp, re, rp = map(float, sys.argv[4:])
mib = raw / 1048576
r = lambda t: mib / t
print(f"bytes: {raw} ({mib:.0f} MiB native stream); stored {stp} plain, {ste} encrypted; best of runs")
print(f"backup  --compress zstd:1 --stripes 2, unencrypted : {bp:7.3f} s  {r(bp):7.0f} MiB/s")
print(f"backup  --compress zstd:1 --stripes 2, encrypted   : {be:7.3f} s  {r(be):7.0f} MiB/s")
print(f"  encrypted / unencrypted throughput               : {bp / be:.2f}x")
print(f"restore --replace --no-verify, unencrypted         : {rp:7.3f} s  {r(rp):7.0f} MiB/s")
print(f"restore --replace --no-verify, encrypted           : {re:7.3f} s  {r(re):7.0f} MiB/s")
print(f"  encrypted / unencrypted throughput               : {rp / re:.2f}x")
PY

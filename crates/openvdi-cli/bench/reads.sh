#!/usr/bin/env bash
# How many times each command reads an encrypted backup's stored stripes: strace
# (-ff: one log per thread, so no syscall line is split; -y: each fd's path) counts
# the bytes read from stripe objects, as a multiple of the stripes' stored size.
#
# Usage: crates/openvdi-cli/bench/reads.sh [BIN_DIR]   (env: SIZE=64M)
# BIN_DIR holds openvdi and openvdi-engine (default: the debug build, built here).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
if [[ $# -ge 1 ]]; then
    BIN=$1
else
    (cd "$ROOT" && cargo build -q -p openvdi-cli --bin openvdi -p openvdi-engine --bin openvdi-engine)
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
fi
command -v strace >/dev/null || { echo "reads.sh needs strace" >&2; exit 1; }
W=$(mktemp -d "${TMPDIR:-/tmp}/openvdi-reads.XXXXXX")
trap 'rm -rf "$W"' EXIT
export OPENVDI_PASSWORD=bench OPENVDI_KDF_MEMORY_MIB=8 OPENVDI_KDF_ITERATIONS=1
O=("$BIN/openvdi" --quiet --repo "$W/repo" --data-dir "$W/data")
"${O[@]}" init >/dev/null
"$BIN/openvdi-engine" --data-dir "$W/data" create-database m --size "${SIZE:-64M}" >/dev/null
ID=$("${O[@]}" --json backup m --stripes 2 --compress zstd:1 |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
STORED=$(find "$W/repo" -name 'stripe*' -exec cat {} + | wc -c)
echo "backup $ID: $STORED stored stripe bytes (2 stripes, zstd:1)"
count() {
    python3 - "$1" "$STORED" <<'PY'
import glob, re, sys
total = opens = 0
for f in glob.glob(sys.argv[1] + ".*"):
    for line in open(f, errors="replace"):
        m = re.match(r"(read|pread64)\(\d+<([^>]*)>.*\)\s+=\s+(\d+)", line)
        if m and "/stripe" in m.group(2):
            total += int(m.group(3))
        if re.match(r'openat\(.*"[^"]*/stripe[^"]*".*\)\s+=\s+\d+', line):
            opens += 1
print(f"{total:>11} bytes  {total / int(sys.argv[2]):.2f}x stored  {opens} stripe opens")
PY
}
m() {
    local what=$1
    shift
    rm -f "$W"/t.*
    strace -ff -y -qq -e trace=openat,read,pread64 -s 0 -o "$W/t" "$@" >/dev/null
    printf '%-32s %s\n' "$what" "$(count "$W/t")"
}
m "restore --as n1" "${O[@]}" restore "$ID" --as n1
m "restore --as n2 --replace" "${O[@]}" restore "$ID" --as n2 --replace
m "restore --replace" "${O[@]}" restore "$ID" --replace
m "restore --replace --no-verify" "${O[@]}" restore "$ID" --replace --no-verify
m "verify --engine" "${O[@]}" verify "$ID" --engine
m "verify" "${O[@]}" verify "$ID"
m "inspect" "${O[@]}" inspect "$ID"
m "export" "${O[@]}" export "$ID" "$W/exp"

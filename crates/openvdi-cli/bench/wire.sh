#!/usr/bin/env bash
# BACKUP through the TDS endpoint against the same through openvdi-sqlcmd, and the
# connection setup time of the endpoint with and without TLS, in one run.
#
#   openvdi backup --tds …                 (openvdi-engine serve; tiberius; plaintext TDS)
#   openvdi backup --tds …;encrypt=true    (the whole TDS session in TLS)
#   openvdi backup --tds … --vdi-library libsqlvdi.so --vdi-abi cpp
#   openvdi backup --engine-cmd 'openvdi-sqlcmd … -Q {sql}'
#
# all with --compress none --stripes 1 of a SIZE (default 1G) database, best of RUNS;
# then CONNS connections (login + close) with mssql-python (ODBC Driver 18) to an
# endpoint without TLS (--no-tls), with login-only TLS (Encrypt=no) and with the whole
# session in TLS (Encrypt=yes).
#
# Usage: crates/openvdi-cli/bench/wire.sh   (env: SIZE=1G, RUNS=3, CONNS=50, BENCH_DIR=/tmp)
set -euo pipefail

SIZE=${SIZE:-1G}
RUNS=${RUNS:-3}
CONNS=${CONNS:-50}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$ROOT"
cargo build --release -q -p openvdi-cli --bin openvdi
cargo build --release -q -p openvdi-engine --bin openvdi-engine --bin openvdi-sqlcmd
cargo build --release -q -p openvdi-ffi --lib
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"

WORK=$(mktemp -d "${BENCH_DIR:-/tmp}/openvdi-wire.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
export OPENVDI_TDS_PASSWORD='Bench-Pw-1'
OV=("$BIN/openvdi" --quiet --repo "$WORK/repo" --data-dir "$WORK/data")

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.3f}')"; }
best() { sort -n | head -1; }

echo "bench: creating a $SIZE database (engine)…" >&2
"$BIN/openvdi-engine" --data-dir "$WORK/data" create-database bench --size "$SIZE" >/dev/null
cat "$WORK"/data/bench* >/dev/null
"${OV[@]}" init --no-encryption >/dev/null 2>&1

# serve NAME args…: start an endpoint; port NAME: its port once it listens (the
# first stdout line), waiting at most 30 s.
serve() {
    local name=$1; shift
    "$BIN/openvdi-engine" --data-dir "$WORK/data" serve --listen 127.0.0.1:0 "$@" >"$WORK/serve.$name" 2>/dev/null &
    PIDS+=($!)
}
port() {
    for _ in $(seq 300); do
        if grep -q '^listening on ' "$WORK/serve.$1" 2>/dev/null; then sed -n 's/^listening on .*://p' "$WORK/serve.$1"; return; fi
        sleep 0.1
    done
    echo "bench: serve did not start" >&2; exit 1
}
serve tls
serve plain --no-tls
PORT=$(port tls)
PLAIN_PORT=$(port plain)
ADO="server=tcp:127.0.0.1,$PORT;user=sa"

backup() { # args… -> seconds
    local t0 t1
    sync
    t0=$(now)
    "${OV[@]}" "$@" backup bench --stripes 1 --compress none >/dev/null
    t1=$(now)
    secs "$t0" "$t1"
}

declare -A T
CASES=(tds tds_tls tds_cpp sqlcmd)
for _ in $(seq "$RUNS"); do
    T[tds]+="$(backup --tds "$ADO;encrypt=DANGER_PLAINTEXT") "
    T[tds_tls]+="$(backup --tds "$ADO;encrypt=true;TrustServerCertificate=true") "
    T[tds_cpp]+="$(backup --tds "$ADO;encrypt=DANGER_PLAINTEXT" --vdi-library "$BIN/libsqlvdi.so" --vdi-abi cpp) "
    T[sqlcmd]+="$(backup --engine-cmd "'$BIN/openvdi-sqlcmd' -S . -b --data-dir '$WORK/data' -Q {sql}") "
done
RAW=$("${OV[@]}" --json list | python3 -c "import json,sys; print(json.load(sys.stdin)['backups'][-1]['raw_size'])")
BASE=$(echo "${T[sqlcmd]}" | tr ' ' '\n' | grep . | best)
echo "BACKUP of a $SIZE database, $RAW-byte stream, --compress none --stripes 1, best of $RUNS:"
printf '| %-40s | %8s | %6s | %s |\n' case time MiB/s "ratio to openvdi-sqlcmd"
for c in "${CASES[@]}"; do
    t=$(echo "${T[$c]}" | tr ' ' '\n' | grep . | best)
    python3 -c "print(f'| {\"$c\":40} | {$t:8.3f} | {$RAW/1048576/$t:6.0f} | {$BASE/$t:.2f} |')"
done

python3 - "$PORT" "$PLAIN_PORT" "$CONNS" <<'EOF'
import statistics, sys, time
import mssql_python
port, plain, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def conn(p, enc):
    cs = f"Server=tcp:127.0.0.1,{p};UID=sa;PWD=Bench-Pw-1;Encrypt={enc};TrustServerCertificate=yes"
    t0 = time.perf_counter()
    c = mssql_python.connect(cs, autocommit=True, timeout=10)
    c.close()
    return time.perf_counter() - t0
mssql_python.pooling(enabled=False) if hasattr(mssql_python, "pooling") else None
cases = [("no TLS (--no-tls endpoint, Encrypt=no)", plain, "no"),
         ("login-only TLS (Encrypt=no)", port, "no"),
         ("whole session TLS (Encrypt=yes)", port, "yes")]
for _, p, e in cases:
    conn(p, e)  # warm up
res = {name: [conn(p, e) for _ in range(n)] for name, p, e in cases}
base = statistics.median(res[cases[0][0]])
print(f"Connection setup (login + close), mssql-python / ODBC Driver 18, {n} each, median:")
for name, _, _ in cases:
    m = statistics.median(res[name])
    print(f"| {name:40} | {m*1000:7.2f} ms | {m/base:.2f} |")
EOF

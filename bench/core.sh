#!/usr/bin/env bash
# The core protocol benchmark and, in the same run, the C baseline it is judged
# against (../shared/bench/baseline). Compare ratios within one run: the machine is
# shared and noisy. Usage: bench/core.sh [GIB per throughput case, default 2]
set -euo pipefail
cd "$(dirname "$0")/.."
GIB=${1:-2}
BASE=${OPENVDI_BASELINE:-../shared/bench/baseline}
echo "# $(date -u +%FT%TZ) $(uname -r) nproc=$(nproc) $(uptime)"
# The C baseline's Makefile builds with -march=native (AVX-512 here), so vdibench is
# built for the same CPU: the 1-device case is bound by the client's sum over every
# byte, and an SSE2 loop against an AVX-512 one measured the compilers' flags, not the
# protocol. (Its own target dir: the rest of the workspace stays generic.)
CARGO_TARGET_DIR=target/bench-native RUSTFLAGS="-C target-cpu=native" \
  cargo build --release -q -p openvdi --example vdibench
echo "## openvdi (target-cpu=native, as the C baseline)"
./target/bench-native/release/examples/vdibench "$GIB"
if [[ -d $BASE ]]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  cp -r "$BASE"/. "$tmp"/ && make -s -C "$tmp" >/dev/null
  echo "## baseline (C, same run)"
  "$tmp"/xfer pipe total=${GIB}G chunk=1M pipesz=1M fill=memset consume=sum | tail -1
  "$tmp"/xfer shmring total=${GIB}G nbuf=8 chunk=1M fill=memset consume=sum sync=hybrid | tail -1
  # Unpinned, like vdibench (whose processes are not pinned).
  "$tmp"/xfer shmring total=${GIB}G nbuf=8 chunk=1M fill=memset consume=sum sync=hybrid place=free | tail -1
  "$tmp"/pingpong futexspin split 100000 | tail -1
  "$tmp"/pingpong futex split 20000 | tail -1
fi
echo "# after: $(uptime)"

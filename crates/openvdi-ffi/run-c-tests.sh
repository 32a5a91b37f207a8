#!/usr/bin/env bash
# Build libsqlvdi.so and run the C/C++ test programs (tests/c) against it:
#   run-c-tests.sh            plain
#   run-c-tests.sh --asan     programs built with AddressSanitizer (LeakSanitizer on)
#   run-c-tests.sh --valgrind programs (and their children) under valgrind memcheck
# Any sanitizer or valgrind report fails the run.
set -euo pipefail
cd "$(dirname "$0")/../.."
case "${1:-}" in
  --asan) export OPENVDI_C_MODE=asan ;;
  --valgrind) export OPENVDI_C_MODE=valgrind ;;
  "") unset OPENVDI_C_MODE ;;
  *) echo "usage: $0 [--asan|--valgrind]" >&2; exit 2 ;;
esac
cargo test -p openvdi-ffi --test c_programs -- --test-threads=1

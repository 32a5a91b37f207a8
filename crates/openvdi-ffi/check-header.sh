#!/usr/bin/env bash
# Fails when include/openvdi.h differs from what the pinned cbindgen generates from
# this crate. To regenerate: OPENVDI_UPDATE_HEADER=1 cargo test -p openvdi-ffi --test header
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo test -p openvdi-ffi --test header

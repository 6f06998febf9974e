#!/usr/bin/env bash
# Builds everything (CUDA sources too when nvcc is present) and runs the whole
# test suite. This is what CI runs (.ci/run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$STRATA_ROOT/scripts/install-deps.sh"
strata_configure
cmake --build "$STRATA_BUILD"
cd "$STRATA_BUILD"
ctest --output-on-failure -j "$(nproc)" --timeout 600

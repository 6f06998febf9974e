#!/usr/bin/env bash
# Builds everything (CUDA sources too when nvcc is present), runs the whole
# C++ test suite, then builds the Python package into a venv and runs its
# pytest suite (scripts/python-tests.sh). This is what CI runs (.ci/run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$STRATA_ROOT/scripts/install-deps.sh"
strata_configure
cmake --build "$STRATA_BUILD"
(cd "$STRATA_BUILD" && ctest --output-on-failure -j "$(nproc)" --timeout 600)
"$STRATA_ROOT/scripts/python-tests.sh"

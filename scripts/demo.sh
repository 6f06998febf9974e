#!/usr/bin/env bash
# The main job. Until `strata train` lands: what this box can do for offload
# (strata report) and its DRAM roofline (strata bench memory).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$STRATA_ROOT/scripts/install-deps.sh"
strata_configure
cmake --build "$STRATA_BUILD" --target strata
nvme_dir=${STRATA_NVME_DIR:-$STRATA_BUILD/nvme-swap}
mkdir -p "$nvme_dir"
"$STRATA_BUILD/tools/strata" report --nvme-path "$nvme_dir"
"$STRATA_BUILD/tools/strata" bench memory

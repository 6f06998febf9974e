#!/usr/bin/env bash
# The main job: install what is missing, build strata, and train gpt2-tiny
# (0.9M params, byte-level) on the fortunes text collection for a few
# minutes, fp16 with the optimizer offloaded to an NVMe swap folder
# (configs/gpt2_tiny_nvme.json), printing the training and validation loss
# as they fall, then 300 bytes of text the model writes. STRATA_DEMO_STEPS
# changes the length of the run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$STRATA_ROOT/scripts/install-deps.sh"
strata_configure
cmake --build "$STRATA_BUILD" --target strata
# The config's nvme_path (./build/nvme-swap) is relative to the repository root.
cd "$STRATA_ROOT"
"$STRATA_BUILD/tools/strata" train --model gpt2-tiny --data /usr/share/games/fortunes \
  --deepspeed_config configs/gpt2_tiny_nvme.json --steps "${STRATA_DEMO_STEPS:-450}" \
  --log-json "$STRATA_BUILD/demo-train.jsonl" --sample 300

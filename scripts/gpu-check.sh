#!/usr/bin/env bash
# The checks that need a real GPU, in one call sized for a short lease
# (about 8 minutes on a 16-core H100/H200 box):
#   1. build for sm_90 only (release, CUDA on) into build-gpu/;
#   2. nvidia-smi, and the CUDA test cases (they skip without a GPU);
#   3. strata bench pcie (pinned and pageable H2D, D2H, both ways);
#   4. strata train --device cuda, gpt2-medium, fp16, 20 steps, with the
#      optimizer offloaded to cpu and then to nvme; per run: tokens/s, the
#      model TFLOPS it implies (6 x params x tokens/s, attention left out),
#      the step time, bytes over PCIe, and the loss.
# Every stage runs even when one before it failed; each writes its log under
# $OUT (the device tool's output folder) or build-gpu/gpu-check/, and the
# script ends with one summary and a non-zero exit if any stage failed.
# STRATA_GPU_ARCH (default 90), STRATA_GPU_STEPS (20), STRATA_GPU_SEQ (512),
# STRATA_GPU_MICRO (4), STRATA_GPU_MODEL (gpt2-medium) and STRATA_GPU_DEVICE
# (cuda; cpu dry-runs the training stages on SimDevice) change the run.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$STRATA_ROOT/scripts/install-deps.sh" || exit 1
BUILD=${STRATA_GPU_BUILD:-$STRATA_ROOT/build-gpu}
LOGS=${OUT:-$BUILD/gpu-check}
mkdir -p "$LOGS"
STEPS=${STRATA_GPU_STEPS:-20}
SEQ=${STRATA_GPU_SEQ:-512}
MICRO=${STRATA_GPU_MICRO:-4}
MODEL=${STRATA_GPU_MODEL:-gpt2-medium}
DEVICE=${STRATA_GPU_DEVICE:-cuda}
failed=()
summary=()

stage() {  # stage NAME TIMEOUT_S CMD...: runs CMD with its output in $LOGS/NAME.log
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "== $name" >&2
  timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$LOGS/$name.log" >&2
  summary+=("$name: exit $rc in $((SECONDS - t0)) s")
  [[ $rc -eq 0 ]] || failed+=("$name")
  return $rc
}

if [[ "$DEVICE" == cuda ]]; then
  stage configure 120 cmake -S "$STRATA_ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_ARCHITECTURES="${STRATA_GPU_ARCH:-90}"
  stage build 360 cmake --build "$BUILD" -j "$(nproc)"
  stage nvidia-smi 30 nvidia-smi
  stage cuda-tests 180 ctest --test-dir "$BUILD" --output-on-failure -j 4 --timeout 120 \
    -R 'cuda|Cuda|CUDA|Gpu|Device|Pcie'
  stage bench-pcie 60 "$BUILD/tools/strata" bench pcie --json
else
  BUILD=$STRATA_BUILD  # a dry run of the training stages with the usual build
fi
STRATA=$BUILD/tools/strata

# The model with the user's RTX 5090 settings (fixture), fp16, byte-level
# vocab, AdamW from the flags, the optimizer offloaded to cpu or nvme.
for offload in cpu nvme; do
  cfg=$LOGS/ds_config_$offload.json
  python3 - "$STRATA_ROOT/tests/fixtures/ds_config_gpt2_rtx5090.json" "$cfg" "$offload" \
    "$BUILD/nvme-swap" "$MICRO" <<'EOF'
import json, sys
src, dst, offload, swap, micro = sys.argv[1:]
c = json.load(open(src))
c["train_micro_batch_size_per_gpu"] = int(micro)
c["gradient_accumulation_steps"] = 1
c.pop("train_batch_size", None)
c["zero_optimization"]["offload_optimizer"] = {"device": offload, "nvme_path": swap}
c["strata"] = {"overlap": "overlap"}
json.dump(c, open(dst, "w"), indent=2)
EOF
  mkdir -p "$BUILD/nvme-swap"
  stage "train-$offload" 240 "$STRATA" train --device "$DEVICE" --model "$MODEL" \
    --data /usr/share/games/fortunes --deepspeed_config "$cfg" --steps "$STEPS" \
    --seq-len "$SEQ" --eval-every "$STEPS" --eval-batches 2 \
    --log-json "$LOGS/train-$offload.jsonl"
  python3 - "$LOGS/train-$offload.jsonl" "$offload" "$MODEL" <<'EOF' >&2 || true
import json, sys
path, offload, model = sys.argv[1:]
# layers, width, positions; byte-level vocab 256, tied embeddings.
shape = {"gpt2-tiny": (4, 128, 256), "gpt2": (12, 768, 1024), "gpt2-medium": (24, 1024, 1024),
         "gpt2-large": (36, 1280, 1024), "gpt2-xl": (48, 1600, 1024)}[model]
L, C, P = shape
params = 256 * C + P * C + L * (12 * C * C + 13 * C) + 2 * C
rows = [json.loads(l) for l in open(path) if l.strip()]
steady = rows[1:] or rows
if not steady:
    sys.exit("train-%s: no step logged" % offload)
tok = sum(r["tokens_per_second"] for r in steady) / len(steady)
sec = sum(r["step_seconds"] for r in steady) / len(steady)
h2d = sum(r["bytes_in"]["device"] for r in steady) / len(steady)
d2h = sum(r["bytes_out"]["device"] for r in steady) / len(steady)
print("train-%s: %d steps, %.0f tokens/s, %.1f model TFLOPS, %.3f s/step, "
      "PCIe %.2f GB in + %.2f GB out per step, loss %.3f -> %.3f"
      % (offload, len(rows), tok, 6 * params * tok / 1e12, sec, h2d / 1e9, d2h / 1e9,
         rows[0]["loss"], rows[-1]["loss"]))
EOF
done

echo "== summary" >&2
printf '%s\n' "${summary[@]}" >&2
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "gpu-check: failed: ${failed[*]} (logs in $LOGS)" >&2
  exit 1
fi
echo "gpu-check: all stages passed (logs in $LOGS)" >&2

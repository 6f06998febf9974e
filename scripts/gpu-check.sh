#!/usr/bin/env bash
# The checks that need a real GPU, in one call sized for a short lease
# (under 8 minutes on a 16-core H100/H200 box; a global deadline caps every
# phase's timeout so the summary always prints):
#   1. build for sm_90 only (release, CUDA on) into build-gpu/, only the
#      strata binary and the CUDA test programs;
#   2. nvidia-smi, and the CUDA test programs (c_api_cuda_test, whose
#      device bindings also train through stratad, device_conformance_test,
#      model_cuda_kernels_test, bench_pcie_command_test; they skip without
#      a GPU);
#   3. strata bench pcie (pinned and pageable H2D, D2H, both ways);
#   4. strata train --device cuda, gpt2-medium, fp16, 20 steps, with the
#      optimizer offloaded to cpu (overlap and sync mode), to nvme, and to
#      cpu through stratad (--daemon, the arena pinned by the client); per
#      run from its --log-json: tokens/s, the model TFLOPS it implies
#      (6 x params x tokens/s, attention left out), the step time, host and
#      device synchronisations per step, bytes over PCIe and the loss; the
#      overlap ratio is the sync run's step time over the overlap run's;
#   5. the Python tests' CUDA cases (through stratad too), when the venv
#      (scripts/python-tests.sh) already holds its requirements (the GPU box
#      has no network); skipped otherwise.
# Every phase runs even when one before it failed; each writes its log under
# $OUT (the device tool's output folder) or build-gpu/gpu-check/, and the
# script ends with a summary table and a non-zero exit if any phase failed.
# Knobs: STRATA_GPU_ARCH (default 90), STRATA_GPU_STEPS (20), STRATA_GPU_SEQ
# (512), STRATA_GPU_MICRO (4), STRATA_GPU_MODEL (gpt2-medium),
# STRATA_GPU_DEADLINE_S (470: all phases), STRATA_GPU_BUILD (build-gpu/) and
# STRATA_GPU_DEVICE (cuda; cpu dry-runs everything but the build, nvidia-smi
# and bench pcie on SimDevice with the usual build, e.g.
# STRATA_GPU_DEVICE=cpu STRATA_GPU_MODEL=gpt2-tiny scripts/gpu-check.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
BUILD=${STRATA_GPU_BUILD:-$STRATA_ROOT/build-gpu}
LOGS=${OUT:-$BUILD/gpu-check}
mkdir -p "$LOGS"
STEPS=${STRATA_GPU_STEPS:-20}
SEQ=${STRATA_GPU_SEQ:-512}
MICRO=${STRATA_GPU_MICRO:-4}
MODEL=${STRATA_GPU_MODEL:-gpt2-medium}
DEVICE=${STRATA_GPU_DEVICE:-cuda}
DEADLINE=$((SECONDS + ${STRATA_GPU_DEADLINE_S:-470}))
CUDA_TESTS=(c_api_cuda_test device_conformance_test model_cuda_kernels_test bench_pcie_command_test)
failed=()
rows=()   # summary: "phase|status|seconds|note"
trains=() # per training run: its line of figures

# phase NAME TIMEOUT_S CMD...: runs CMD with its output in $LOGS/NAME.log,
# within TIMEOUT_S and the global deadline; records the outcome, never exits.
phase() {
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE - SECONDS))
  if ((left < 5)); then
    rows+=("$name|skipped|0|global deadline reached")
    failed+=("$name")
    return 0
  fi
  ((limit <= left)) || limit=$left
  local t0=$SECONDS rc=0
  echo "== $name (limit ${limit}s)" >&2
  timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1 || rc=$?
  tail -n 15 "$LOGS/$name.log" >&2 || true
  local note=""
  ((rc != 124 && rc != 137)) || note="timed out after ${limit}s"
  rows+=("$name|$([[ $rc -eq 0 ]] && echo ok || echo "exit $rc")|$((SECONDS - t0))|$note")
  ((rc == 0)) || failed+=("$name")
  return 0
}

skip() {  # skip NAME WHY
  rows+=("$1|skipped|0|$2")
  echo "== $1: skipped ($2)" >&2
}

# Each CUDA test program that was built (c_api_cuda_test is built only with
# CUDA); a missing one fails the phase. Runs under `timeout`, so in bash -c.
CUDA_TESTS_SH='
  build=$1 device=$2 rc=0
  shift 2
  for t in "$@"; do
    if [[ ! -x "$build/tests/$t" ]]; then
      [[ "$t" == c_api_cuda_test && "$device" != cuda ]] && continue
      echo "$t: not built"; rc=1; continue
    fi
    echo "-- $t"
    "$build/tests/$t" --gtest_brief=1 || rc=1
  done
  exit $rc'

if [[ "$DEVICE" == cuda ]]; then
  phase deps 120 "$STRATA_ROOT/scripts/install-deps.sh"
  phase configure 120 cmake -S "$STRATA_ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_ARCHITECTURES="${STRATA_GPU_ARCH:-90}"
  phase build 300 cmake --build "$BUILD" -j "$(nproc)" --target strata "${CUDA_TESTS[@]}"
  phase nvidia-smi 30 nvidia-smi
  phase cuda-tests 120 bash -c "$CUDA_TESTS_SH" _ "$BUILD" "$DEVICE" "${CUDA_TESTS[@]}"
  phase bench-pcie 60 "$BUILD/tools/strata" bench pcie --json
else
  BUILD=$STRATA_BUILD  # a dry run with the usual build
  skip build "STRATA_GPU_DEVICE=$DEVICE: the usual build at $BUILD"
  skip nvidia-smi "no GPU asked for"
  phase cuda-tests 120 bash -c "$CUDA_TESTS_SH" _ "$BUILD" "$DEVICE" "${CUDA_TESTS[@]}"
  skip bench-pcie "no GPU asked for"
fi
STRATA=$BUILD/tools/strata

# The model with the user's RTX 5090 settings (fixture), fp16, byte-level
# vocab, AdamW from the flags, the optimizer offloaded to cpu or nvme.
train_run() {  # train_run NAME OFFLOAD OVERLAP [EXTRA FLAGS...]
  local name=$1 offload=$2 overlap=$3
  shift 3
  local cfg=$LOGS/ds_config_$name.json log=$LOGS/$name.jsonl
  python3 - "$STRATA_ROOT/tests/fixtures/ds_config_gpt2_rtx5090.json" "$cfg" "$offload" \
    "$BUILD/nvme-swap" "$MICRO" "$overlap" <<'EOF'
import json, sys
src, dst, offload, swap, micro, overlap = sys.argv[1:]
c = json.load(open(src))
c["train_micro_batch_size_per_gpu"] = int(micro)
c["gradient_accumulation_steps"] = 1
c.pop("train_batch_size", None)
c["zero_optimization"]["offload_optimizer"] = {"device": offload, "nvme_path": swap}
c["strata"] = {"overlap": overlap}
json.dump(c, open(dst, "w"), indent=2)
EOF
  mkdir -p "$BUILD/nvme-swap"
  rm -f "$log"
  phase "$name" 150 "$STRATA" train --device "$DEVICE" --model "$MODEL" \
    --data /usr/share/games/fortunes --deepspeed_config "$cfg" --steps "$STEPS" \
    --seq-len "$SEQ" --eval-every "$STEPS" --eval-batches 2 --log-json "$log" "$@"
  local line
  line=$(python3 - "$log" "$name" "$MODEL" <<'EOF' 2>&1
import json, sys
path, name, model = sys.argv[1:]
# layers, width, positions; byte-level vocab 256, tied embeddings.
L, C, P = {"gpt2-tiny": (4, 128, 256), "gpt2": (12, 768, 1024), "gpt2-medium": (24, 1024, 1024),
           "gpt2-large": (36, 1280, 1024), "gpt2-xl": (48, 1600, 1024)}[model]
params = 256 * C + P * C + L * (12 * C * C + 13 * C) + 2 * C
try:
    rows = [json.loads(l) for l in open(path) if l.strip()]
except OSError:
    rows = []
if not rows:
    print("%-14s no step logged" % name)
    sys.exit(0)
steady = rows[1:] or rows
mean = lambda f: sum(f(r) for r in steady) / len(steady)
tok = mean(lambda r: r["tokens_per_second"])
print("%-14s %5d %9.0f %7.2f %8.3f %9.1f %9.1f %6.2f/%-6.2f %.3f -> %.3f"
      % (name, len(rows), tok, 6 * params * tok / 1e12, mean(lambda r: r["step_seconds"]),
         mean(lambda r: r["host_syncs"]), mean(lambda r: r["device_syncs"]),
         mean(lambda r: r["bytes_in"]["device"]) / 1e9,
         mean(lambda r: r["bytes_out"]["device"]) / 1e9, rows[0]["loss"], rows[-1]["loss"]))
EOF
  ) || line="$name: figures unreadable: $line"
  trains+=("$line")
}

train_run train-cpu cpu overlap
train_run train-cpu-sync cpu sync
train_run train-nvme nvme overlap
# Through stratad: the optimizer in the daemon, its arena pinned by the client.
STRATAD_SOCK=/tmp/strata-gpu-check-$$.sock  # short: a socket path holds 107 bytes
"$BUILD/daemon/stratad" --socket "$STRATAD_SOCK" 2>"$LOGS/stratad.log" &
STRATAD_PID=$!
train_run train-daemon cpu overlap --daemon "$STRATAD_SOCK" --session gpu-check
kill "$STRATAD_PID" 2>/dev/null
wait "$STRATAD_PID" 2>/dev/null

# The Python tests' CUDA cases need torch in the venv; the GPU box cannot
# download it, so only a venv that already has its requirements runs them.
PYVER=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
VENV=${STRATA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/strata/venv-py$PYVER}
if [[ "$DEVICE" != cuda ]]; then
  skip python-cuda "no GPU asked for"
elif "$VENV/bin/python" -c 'import torch, nanobind, scikit_build_core, pytest' 2>/dev/null; then
  phase python-cuda 120 env PIP_NO_INDEX=1 STRATA_BUILD="$BUILD" \
    "$STRATA_ROOT/scripts/python-tests.sh" -k 'pinned or cuda'
else
  skip python-cuda "no venv with torch at $VENV (the GPU box has no network)"
fi

{
  echo
  echo "== training ($MODEL, seq $SEQ, micro-batch $MICRO, $STEPS steps, device $DEVICE; means of steps 2..)"
  echo "run            steps  tokens/s  TFLOPS   s/step  host syncs dev syncs  PCIe GB in/out  loss"
  printf '%s\n' "${trains[@]}"
  python3 - "$LOGS/train-cpu.jsonl" "$LOGS/train-cpu-sync.jsonl" <<'EOF' || true
import json, sys
def step_s(path):
    try:
        rows = [json.loads(l) for l in open(path) if l.strip()][1:]
    except OSError:
        return None
    return sum(r["step_seconds"] for r in rows) / len(rows) if rows else None
overlap, sync = step_s(sys.argv[1]), step_s(sys.argv[2])
if overlap and sync:
    print("overlap ratio (cpu offload): sync %.3f s / overlap %.3f s per step = %.2fx"
          % (sync, overlap, sync / overlap))
EOF
  echo
  echo "== summary (logs in $LOGS)"
  printf '%-16s %-10s %6s  %s\n' phase status secs note
  for r in "${rows[@]}"; do
    IFS='|' read -r name status secs note <<<"$r"
    printf '%-16s %-10s %6s  %s\n' "$name" "$status" "$secs" "$note"
  done
} | tee "$LOGS/summary.txt" >&2
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "gpu-check: failed: ${failed[*]} (logs in $LOGS)" >&2
  exit 1
fi
echo "gpu-check: all phases passed (logs in $LOGS)" >&2

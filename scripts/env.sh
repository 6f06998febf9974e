# Sourced by the scripts: where the build goes and how CUDA is found.
STRATA_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STRATA_BUILD=${STRATA_BUILD:-$STRATA_ROOT/build}
# nvcc lives outside PATH in a stock CUDA install; CMake enables CUDA when it finds it.
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
strata_configure() {
  if [[ ! -f "$STRATA_BUILD/build.ninja" ]]; then
    cmake -S "$STRATA_ROOT" -B "$STRATA_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
  fi
}

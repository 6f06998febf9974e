// probe_cuda() for builds configured with -DSTRATA_CUDA=OFF.
#include "gpu/cuda_info.h"

namespace strata::gpu {

CudaInfo probe_cuda() {
  CudaInfo info;
  info.why_none =
      "this build has no CUDA support (configured with STRATA_CUDA=OFF); "
      "rebuild on a machine with nvcc to use a GPU";
  return info;
}

}  // namespace strata::gpu

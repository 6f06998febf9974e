// make_cuda_device() for builds configured with -DSTRATA_CUDA=OFF.
#include "gpu/device.h"

namespace strata::gpu {

absl::StatusOr<std::unique_ptr<Device>> make_cuda_device(int ordinal) {
  return absl::FailedPreconditionError(
      "this build of strata has no CUDA support (STRATA_CUDA=OFF); use --device cpu or rebuild "
      "on a machine with nvcc");
}

}  // namespace strata::gpu

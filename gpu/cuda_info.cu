#include <cuda_runtime.h>

#include <string>

#include "gpu/cuda_info.h"
#include "gpu/cuda_status.h"

namespace strata::gpu {

CudaInfo probe_cuda() {
  CudaInfo info;
  info.compiled = true;
  cudaRuntimeGetVersion(&info.runtime_version);
  if (cudaDriverGetVersion(&info.driver_version) != cudaSuccess || info.driver_version == 0) {
    clear_cuda_error();
    info.driver_version = 0;
    info.why_none =
        "no NVIDIA driver found (libcuda.so.1 not loadable); install the driver or run "
        "on a GPU machine";
    return info;
  }
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    info.why_none = std::string("CUDA reports no usable device: ") + cudaGetErrorString(err);
    clear_cuda_error();
    return info;
  }
  if (count == 0) {
    info.why_none = "the NVIDIA driver is present but sees no GPU (check CUDA_VISIBLE_DEVICES)";
    return info;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) {
      clear_cuda_error();
      continue;
    }
    CudaDeviceInfo d;
    d.index = i;
    d.name = prop.name;
    d.compute_major = prop.major;
    d.compute_minor = prop.minor;
    d.total_memory_bytes = prop.totalGlobalMem;
    d.multiprocessors = prop.multiProcessorCount;
    char bus[32] = {};
    if (cudaDeviceGetPCIBusId(bus, sizeof bus, i) == cudaSuccess) {
      d.pci_bus_id = bus;
    } else {
      clear_cuda_error();
    }
    info.devices.push_back(std::move(d));
  }
  return info;
}

}  // namespace strata::gpu

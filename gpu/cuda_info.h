// What CUDA this process can use: driver, runtime and devices, or why none.
//
// probe_cuda() never fails: on a build without CUDA, a machine without a
// driver, or a driver without devices, it returns an empty device list and a
// `why_none` a user can act on. Safe to call from any thread; it initialises
// the CUDA runtime on CUDA builds.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace strata::gpu {

struct CudaDeviceInfo {
  int index = 0;
  std::string name;
  int compute_major = 0;
  int compute_minor = 0;
  uint64_t total_memory_bytes = 0;
  int multiprocessors = 0;
  std::string pci_bus_id;  // "0000:65:00.0", to match with the hwloc topology
};

struct CudaInfo {
  bool compiled = false;    // this build has the CUDA device layer
  int runtime_version = 0;  // e.g. 13000 for 13.0; 0 when not compiled
  int driver_version = 0;   // highest CUDA version the driver supports; 0: no driver
  std::vector<CudaDeviceInfo> devices;
  std::string why_none;  // set when devices is empty
};

CudaInfo probe_cuda();

// NCCL's version as "2.27.3" when libnccl.so.2 can be loaded, else the reason.
struct NcclInfo {
  bool available = false;
  std::string version;
  std::string why_not;
};
NcclInfo probe_nccl();

// Formats 13000 as "13.0".
std::string cuda_version_string(int version);

}  // namespace strata::gpu

#include <dlfcn.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "gpu/cuda_info.h"

namespace strata::gpu {

std::string cuda_version_string(int version) {
  if (version <= 0) return "none";
  return absl::StrCat(version / 1000, ".", (version % 1000) / 10);
}

// NCCL is loaded on demand: strata links no NCCL until multi-GPU work needs it,
// and the report must work on machines without it.
NcclInfo probe_nccl() {
  NcclInfo info;
  void* lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* err = dlerror();
    info.why_not = absl::StrCat("libnccl.so.2 not loadable: ", err != nullptr ? err : "unknown");
    return info;
  }
  using GetVersion = int (*)(int*);
  auto get_version = reinterpret_cast<GetVersion>(dlsym(lib, "ncclGetVersion"));
  int v = 0;
  if (get_version == nullptr || get_version(&v) != 0) {
    info.why_not = "libnccl.so.2 has no working ncclGetVersion";
  } else {
    // Since NCCL 2.9 the code is major*10000 + minor*100 + patch.
    info.available = true;
    info.version = v >= 10000 ? absl::StrCat(v / 10000, ".", (v % 10000) / 100, ".", v % 100)
                              : absl::StrCat(v / 1000, ".", (v % 1000) / 100, ".", v % 100);
  }
  dlclose(lib);
  return info;
}

}  // namespace strata::gpu

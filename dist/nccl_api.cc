#include "dist/nccl_api.h"

#include <dlfcn.h>

#include "absl/strings/str_cat.h"

namespace strata::dist::nccl {
namespace {

absl::StatusOr<Api> load_once() {
  void* lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* err = dlerror();
    return absl::FailedPreconditionError(absl::StrCat(
        "the NCCL backend needs libnccl.so.2, which is not loadable (",
        err != nullptr ? err : "unknown",
        "); install NCCL or add its folder to LD_LIBRARY_PATH, or use the Gloo backend"));
  }
  Api api{};
  absl::Status missing;
  auto sym = [&](auto& fn, const char* name, bool required = true) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
    if (fn == nullptr && required && missing.ok()) {
      missing = absl::FailedPreconditionError(
          absl::StrCat("libnccl.so.2 has no ", name, "; NCCL 2.10 or newer is needed"));
    }
  };
  sym(api.GetVersion, "ncclGetVersion");
  sym(api.GetUniqueId, "ncclGetUniqueId");
  sym(api.CommInitRank, "ncclCommInitRank");
  sym(api.CommDestroy, "ncclCommDestroy");
  sym(api.CommAbort, "ncclCommAbort");
  sym(api.CommGetAsyncError, "ncclCommGetAsyncError");
  sym(api.GetErrorString, "ncclGetErrorString");
  sym(api.GetLastError, "ncclGetLastError", false);
  sym(api.AllReduce, "ncclAllReduce");
  sym(api.Broadcast, "ncclBroadcast");
  sym(api.Reduce, "ncclReduce");
  sym(api.AllGather, "ncclAllGather");
  sym(api.ReduceScatter, "ncclReduceScatter");
  sym(api.GroupStart, "ncclGroupStart");
  sym(api.GroupEnd, "ncclGroupEnd");
  if (!missing.ok()) return missing;
  if (api.GetVersion(&api.version) != kSuccess || api.version < 21000) {
    return absl::FailedPreconditionError(absl::StrCat("libnccl.so.2 is version code ", api.version,
                                                      "; NCCL 2.10 or newer is needed (bf16)"));
  }
  return api;
}

}  // namespace

absl::StatusOr<const Api*> load() {
  static const absl::StatusOr<Api>* loaded = new absl::StatusOr<Api>(load_once());
  if (!loaded->ok()) return loaded->status();
  return &**loaded;
}

}  // namespace strata::dist::nccl

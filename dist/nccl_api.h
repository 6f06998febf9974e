// The slice of NCCL's C ABI the NCCL communicator uses, loaded with dlopen
// so strata links no NCCL (a CPU-only box, or one without NCCL, still runs
// everything else). The types mirror nccl.h (stable across NCCL 2.x; bf16
// needs 2.10 or newer).
#pragma once

#include <cstddef>

#include "absl/status/statusor.h"

namespace strata::dist::nccl {

using Result = int;  // ncclResult_t
inline constexpr Result kSuccess = 0;
inline constexpr Result kUnhandledCudaError = 1;
inline constexpr Result kRemoteError = 6;
inline constexpr Result kSystemError = 2;
inline constexpr Result kInProgress = 7;

using DataType = int;  // ncclDataType_t
inline constexpr DataType kFloat16 = 6;
inline constexpr DataType kFloat32 = 7;
inline constexpr DataType kFloat64 = 8;
inline constexpr DataType kBFloat16 = 9;

using RedOp = int;  // ncclRedOp_t
inline constexpr RedOp kSum = 0;
inline constexpr RedOp kMax = 2;

struct UniqueId {
  char internal[128];
};
using Comm = struct ncclComm*;
using Stream = void*;  // cudaStream_t

struct Api {
  Result (*GetVersion)(int*);
  Result (*GetUniqueId)(UniqueId*);
  Result (*CommInitRank)(Comm*, int, UniqueId, int);
  Result (*CommDestroy)(Comm);
  Result (*CommAbort)(Comm);
  Result (*CommGetAsyncError)(Comm, Result*);
  const char* (*GetErrorString)(Result);
  const char* (*GetLastError)(Comm);  // null before NCCL 2.13
  Result (*AllReduce)(const void*, void*, size_t, DataType, RedOp, Comm, Stream);
  Result (*Broadcast)(const void*, void*, size_t, DataType, int, Comm, Stream);
  Result (*Reduce)(const void*, void*, size_t, DataType, RedOp, int, Comm, Stream);
  Result (*AllGather)(const void*, void*, size_t, DataType, Comm, Stream);
  Result (*ReduceScatter)(const void*, void*, size_t, DataType, RedOp, Comm, Stream);
  Result (*GroupStart)();
  Result (*GroupEnd)();
  int version = 0;  // e.g. 22807 for 2.28.7
};

// Loads libnccl.so.2 once per process (never unloaded: NCCL keeps threads)
// and resolves every symbol. FailedPrecondition says what is missing.
absl::StatusOr<const Api*> load();

}  // namespace strata::dist::nccl

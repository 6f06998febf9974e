// Communicator: the collectives data-parallel ZeRO needs, on existing
// engines: Gloo (CPU ranks: host memory, SimDevice) and NCCL (CUDA device
// memory, loaded on demand so strata links no NCCL). One Communicator per
// rank; every rank calls the same collectives in the same order.
//
// Memory: `device_memory()` says where collective buffers live. Gloo: host
// memory (SimDevice's "device" memory is host memory, so the engine hands
// it its device buffers unchanged). NCCL: CUDA device memory; collectives
// are enqueued on the stream given at connect and return at once
// (stream-ordered; the caller orders its own work after them on the
// device). The *_host calls take small host arrays (norms, flags, counts)
// on every backend and return when the result is there (on NCCL that is a
// host sync, which is why the engine uses them once per step).
//
// Threading: one thread at a time per Communicator (the caller serializes).
// Errors: every collective has the timeout given at connect; a rank that
// exits or stalls makes the others' collectives fail, never hang. What the
// rendezvous store knows picks the error: Unavailable naming the rank that
// exited (its host and pid), rank 0 when its store is gone, or a rank that
// closed its communicator while others still expected it; DeadlineExceeded
// naming the ranks that never joined, or else saying no rank exited (one is
// stalled or slower than the timeout). Bad arguments (a counts span whose
// length is not the world size, a root outside the world) are
// InvalidArgument and leave the communicator usable. Counts must be the same
// on every rank; that is not checked (it would cost a collective), and a
// mismatch fails, usually by timeout. After a collective fails the
// Communicator is unusable (every later call fails with the first error).
//
// Element types: DType's fp32, fp16, bf16 (16-bit ones are reduced in fp32
// and rounded, as NCCL does); kMax propagates NaN. fp64 only through
// all_reduce_host.
//
// Gloo (TCP; peers reach a rank at the interface its store connection
// used, or the one GLOO_SOCKET_IFNAME names, as with torch): all_reduce is Gloo's ring, all_gather
// allgatherv, reduce_scatter our ring over Gloo's point-to-point buffers (see
// gloo_communicator.cc). NCCL: ncclAllGather / ncclReduceScatter when counts are equal, grouped
// ncclBroadcast / ncclReduce per rank otherwise; a watchdog aborts the
// NCCL communicator when a collective outlives the timeout; barrier and
// all_reduce_host sync the host (all_reduce_host: at most 4096 values).
//
// Around it: dist/launcher.h starts N local ranks (`strata train --nproc`),
// dist/store.h is the rendezvous store, dist/net.h has pick_free_port().
//
// Usage (every rank):
//   STRATA_ASSIGN_OR_RETURN(dist::RankInfo info, dist::rank_info_from_env());
//   STRATA_ASSIGN_OR_RETURN(auto comm, dist::connect(info, dist::CommOptions{}));
//   STRATA_RETURN_IF_ERROR(comm->all_reduce(grads, n, DType::kFloat32, dist::ReduceOp::kSum));
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "core/dtype.h"

namespace strata::dist {

enum class ReduceOp { kSum, kMax };
enum class Backend { kGloo, kNccl };

// Where this process sits in the job, as torchrun (and Slurm / mpirun
// wrappers that export the same names) describe it.
struct RankInfo {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
};

// RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT.
// None set: one rank. InvalidArgument names the variable for a malformed
// or inconsistent value (rank >= world size, WORLD_SIZE without RANK, ...).
absl::StatusOr<RankInfo> rank_info_from_env();

struct CommOptions {
  Backend backend = Backend::kGloo;
  // Every collective and the rendezvous itself.
  std::chrono::milliseconds timeout{std::chrono::seconds(300)};
  // NCCL: the CUDA device ordinal (usually local_rank) and the cudaStream_t
  // (as void*, so dist stays free of CUDA headers) collectives run on.
  int cuda_device = 0;
  void* cuda_stream = nullptr;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual Backend backend() const = 0;
  virtual bool device_memory() const = 0;

  // In place over `count` elements of `dtype` on every rank.
  virtual absl::Status all_reduce(void* data, uint64_t count, DType dtype, ReduceOp op) = 0;
  // counts[r] elements from each rank r, concatenated in rank order into
  // `recv` (sum(counts) elements); rank r sends counts[r] from `send`.
  // `send` may point into `recv` at rank r's place (in place).
  virtual absl::Status all_gather(const void* send, void* recv, std::span<const uint64_t> counts,
                                  DType dtype) = 0;
  // `send` holds sum(counts) elements on every rank; rank r receives into
  // `recv` the reduction of the counts[r] elements at its place.
  virtual absl::Status reduce_scatter(const void* send, void* recv,
                                      std::span<const uint64_t> counts, DType dtype,
                                      ReduceOp op) = 0;
  virtual absl::Status broadcast(void* data, uint64_t count, DType dtype, int root) = 0;
  virtual absl::Status barrier() = 0;

  // Small host arrays on every backend (see above).
  virtual absl::Status all_reduce_host(std::span<double> data, ReduceOp op) = 0;
};

// Joins the job `info` describes: rank 0 serves a rendezvous store on
// master_addr:master_port, every rank connects to it (retrying until the
// timeout) and registers its rank, then the backend's communicator is
// built. Gloo with world_size 1 returns a communicator whose collectives
// copy or do nothing (no store, no sockets); NCCL with world_size 1 is a
// one-rank NCCL communicator (its buffers are device memory). Errors:
// InvalidArgument for a rank outside the world, a bad port or timeout, or
// a rank / WORLD_SIZE that conflicts with another process's (names both);
// Unavailable naming master_addr:master_port when rank 0 cannot be reached
// (or, on rank 0, the port is taken); DeadlineExceeded naming the ranks
// that never joined; FailedPrecondition, before any rendezvous, when the
// backend is not there (NCCL on a build without CUDA, without libnccl.so.2
// or without the GPU).
absl::StatusOr<std::unique_ptr<Communicator>> connect(const RankInfo& info,
                                                      const CommOptions& options);

}  // namespace strata::dist

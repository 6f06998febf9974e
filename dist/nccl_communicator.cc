// NcclCommunicator: collectives on CUDA device memory through NCCL (loaded
// with dlopen, see nccl_api.h), stream-ordered on the stream given at
// connect.
//
// Timeouts: NCCL collectives never time out by themselves, and a dead peer
// usually leaves them spinning on the device. So every enqueued collective
// records an event, and a watchdog thread checks the oldest pending event:
// when it is past its deadline, or NCCL reports an asynchronous error, the
// watchdog calls ncclCommAbort (which frees the stuck kernels), and every
// later call returns the error (DeadlineExceeded, or Unavailable naming the
// rank the store saw die). The host calls (all_reduce_host, barrier) wait
// on their own event with the same deadline.
//
// Uneven counts: ncclAllGather / ncclReduceScatter need the same count on
// every rank; otherwise all_gather is one ncclBroadcast per rank and
// reduce_scatter one ncclReduce per rank, in one NCCL group.
#include <cuda_runtime.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "dist/backends.h"
#include "dist/nccl_api.h"
#include "dist/net.h"

namespace strata::dist {
namespace {

std::string cuda_error(cudaError_t e) {
  return absl::StrCat(cudaGetErrorName(e), " (", cudaGetErrorString(e), ")");
}

nccl::DataType nccl_type(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return nccl::kFloat32;
    case DType::kFloat16:
      return nccl::kFloat16;
    case DType::kBFloat16:
      return nccl::kBFloat16;
  }
  return nccl::kFloat32;
}

nccl::RedOp nccl_op(ReduceOp op) { return op == ReduceOp::kSum ? nccl::kSum : nccl::kMax; }

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const nccl::Api& api, const RankInfo& info, const CommOptions& options,
                   std::unique_ptr<Rendezvous> rendezvous)
      : api_(api),
        rank_(info.rank),
        world_(info.world_size),
        device_(options.cuda_device),
        stream_(static_cast<cudaStream_t>(options.cuda_stream)),
        timeout_(options.timeout),
        rendezvous_(std::move(rendezvous)) {}

  ~NcclCommunicator() override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      // Let the collectives in flight finish (bounded by their deadlines,
      // which the watchdog enforces) before the communicator goes.
      cv_.wait(lock, [&] { return pending_.empty() || !error_.ok(); });
      stop_ = true;
    }
    cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    cudaSetDevice(device_);
    if (comm_ != nullptr) {
      if (error_.ok()) {
        api_.CommDestroy(comm_);
      } else if (!aborted_) {
        api_.CommAbort(comm_);
      }
    }
    for (auto& p : pending_) cudaEventDestroy(p.event);
    for (cudaEvent_t e : event_pool_) cudaEventDestroy(e);
    if (host_buffer_ != nullptr) cudaFree(host_buffer_);
    if (pinned_ != nullptr) cudaFreeHost(pinned_);
  }

  absl::Status start() {
    if (cudaError_t e = cudaSetDevice(device_); e != cudaSuccess) {
      return absl::FailedPreconditionError(
          absl::StrCat("NCCL backend: cannot use CUDA device ", device_, ": ", cuda_error(e)));
    }
    nccl::UniqueId id{};
    if (rank_ == 0) {
      if (nccl::Result r = api_.GetUniqueId(&id); r != nccl::kSuccess) {
        return absl::UnavailableError(absl::StrCat("ncclGetUniqueId: ", api_.GetErrorString(r)));
      }
      if (rendezvous_ != nullptr) {
        STRATA_RETURN_IF_ERROR(
            rendezvous_->store().set("nccl/id", absl::string_view(id.internal, sizeof(id))),
            "publishing the NCCL unique id");
      }
    } else {
      STRATA_ASSIGN_OR_RETURN(std::string bytes, rendezvous_->store().get("nccl/id", timeout_),
                              "waiting for rank 0's NCCL unique id");
      if (bytes.size() != sizeof(id)) {
        return absl::DataLossError(absl::StrCat("the NCCL unique id from the store has ",
                                                bytes.size(), " bytes, not ", sizeof(id)));
      }
      std::memcpy(id.internal, bytes.data(), sizeof(id));
    }
    STRATA_RETURN_IF_ERROR(init_comm(id));
    // all_reduce_host's staging buffers, device and pinned host: allocated
    // once, here, so steady steps make no cudaMalloc; pinned so the copy
    // back is truly asynchronous (a pageable one would block the host until
    // the all-reduce ends, out of the watchdog's reach).
    cudaError_t e = cudaMalloc(&host_buffer_, kHostBufferDoubles * sizeof(double));
    if (e == cudaSuccess) e = cudaMallocHost(&pinned_, kHostBufferDoubles * sizeof(double));
    if (e != cudaSuccess) {
      return absl::ResourceExhaustedError(
          absl::StrCat("NCCL backend: allocating a small staging buffer: ", cuda_error(e)));
    }
    watchdog_ = std::thread([this] { watch(); });
    return absl::OkStatus();
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  Backend backend() const override { return Backend::kNccl; }
  bool device_memory() const override { return true; }

  absl::Status all_reduce(void* data, uint64_t count, DType dtype, ReduceOp op) override {
    return enqueue(absl::StrCat("all_reduce of ", count, " ", std::string(dtype_name(dtype))),
                   [&] {
                     return api_.AllReduce(data, data, count, nccl_type(dtype), nccl_op(op), comm_,
                                           stream_);
                   })
        .status();
  }

  absl::Status all_gather(const void* send, void* recv, std::span<const uint64_t> counts,
                          DType dtype) override {
    STRATA_RETURN_IF_ERROR(check_counts(counts, "all_gather"));
    const size_t esize = dtype_size(dtype);
    const bool even =
        std::all_of(counts.begin(), counts.end(), [&](uint64_t c) { return c == counts[0]; });
    return enqueue(absl::StrCat("all_gather of ", std::string(dtype_name(dtype))),
                   [&] {
                     if (even) {
                       return api_.AllGather(send, recv, counts[0], nccl_type(dtype), comm_,
                                             stream_);
                     }
                     nccl::Result r = api_.GroupStart();
                     uint64_t offset = 0;
                     for (int root = 0; root < world_ && r == nccl::kSuccess; ++root) {
                       char* out = static_cast<char*>(recv) + offset * esize;
                       offset += counts[root];
                       if (counts[root] == 0) continue;
                       r = api_.Broadcast(root == rank_ ? send : out, out, counts[root],
                                          nccl_type(dtype), root, comm_, stream_);
                     }
                     nccl::Result end = api_.GroupEnd();
                     return r != nccl::kSuccess ? r : end;
                   })
        .status();
  }

  absl::Status reduce_scatter(const void* send, void* recv, std::span<const uint64_t> counts,
                              DType dtype, ReduceOp op) override {
    STRATA_RETURN_IF_ERROR(check_counts(counts, "reduce_scatter"));
    const size_t esize = dtype_size(dtype);
    const bool even =
        std::all_of(counts.begin(), counts.end(), [&](uint64_t c) { return c == counts[0]; });
    return enqueue(absl::StrCat("reduce_scatter of ", std::string(dtype_name(dtype))),
                   [&] {
                     if (even) {
                       return api_.ReduceScatter(send, recv, counts[0], nccl_type(dtype),
                                                 nccl_op(op), comm_, stream_);
                     }
                     nccl::Result r = api_.GroupStart();
                     uint64_t offset = 0;
                     for (int root = 0; root < world_ && r == nccl::kSuccess; ++root) {
                       const char* in = static_cast<const char*>(send) + offset * esize;
                       offset += counts[root];
                       if (counts[root] == 0) continue;
                       // recvbuff is only used on the root.
                       r = api_.Reduce(in, root == rank_ ? recv : nullptr, counts[root],
                                       nccl_type(dtype), nccl_op(op), root, comm_, stream_);
                     }
                     nccl::Result end = api_.GroupEnd();
                     return r != nccl::kSuccess ? r : end;
                   })
        .status();
  }

  absl::Status broadcast(void* data, uint64_t count, DType dtype, int root) override {
    if (root < 0 || root >= world_) {
      return absl::InvalidArgumentError(
          absl::StrCat("broadcast root ", root, " is not a rank of a world of ", world_));
    }
    return enqueue(absl::StrCat("broadcast of ", count, " ", std::string(dtype_name(dtype))),
                   [&] {
                     return api_.Broadcast(data, data, count, nccl_type(dtype), root, comm_,
                                           stream_);
                   })
        .status();
  }

  // A host-synchronous all-reduce of one double.
  absl::Status barrier() override {
    double one = 1.0;
    return all_reduce_host(std::span<double>(&one, 1), ReduceOp::kSum);
  }

  absl::Status all_reduce_host(std::span<double> data, ReduceOp op) override {
    const std::string what = absl::StrCat("all_reduce_host of ", data.size(), " fp64");
    if (data.size() > kHostBufferDoubles) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": at most ", kHostBufferDoubles,
                                                     " values (it is for norms and flags)"));
    }
    if (data.empty()) return absl::OkStatus();
    const size_t bytes = data.size() * sizeof(double);
    std::memcpy(pinned_, data.data(), bytes);
    STRATA_ASSIGN_OR_RETURN(
        cudaEvent_t done, enqueue(what, [&] {
          if (cudaMemcpyAsync(host_buffer_, pinned_, bytes, cudaMemcpyHostToDevice, stream_) !=
              cudaSuccess) {
            return nccl::kUnhandledCudaError;
          }
          nccl::Result r = api_.AllReduce(host_buffer_, host_buffer_, data.size(), nccl::kFloat64,
                                          nccl_op(op), comm_, stream_);
          if (r != nccl::kSuccess) return r;
          if (cudaMemcpyAsync(pinned_, host_buffer_, bytes, cudaMemcpyDeviceToHost, stream_) !=
              cudaSuccess) {
            return nccl::kUnhandledCudaError;
          }
          return nccl::kSuccess;
        }));
    STRATA_RETURN_IF_ERROR(wait_event(done, what));
    std::memcpy(data.data(), pinned_, bytes);
    return absl::OkStatus();
  }

 private:
  static constexpr size_t kHostBufferDoubles = 4096;

  struct Pending {
    cudaEvent_t event;
    Clock::time_point deadline;
    std::string what;
  };

  absl::Status check_counts(std::span<const uint64_t> counts, const char* what) {
    if (counts.size() != static_cast<size_t>(world_)) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": ", counts.size(), " counts for a world of ", world_));
    }
    return absl::OkStatus();
  }

  // ncclCommInitRank blocks until every rank has joined; with a rank that
  // never comes it would block forever, so it runs on its own thread and
  // is abandoned after the timeout (the process is expected to exit then;
  // if the init ever completes, that thread destroys the communicator).
  absl::Status init_comm(const nccl::UniqueId& id) {
    struct InitState {
      std::mutex mu;
      std::condition_variable cv;
      bool done = false;
      bool abandoned = false;
      nccl::Result result = nccl::kSuccess;
      nccl::Comm comm = nullptr;
    };
    auto state = std::make_shared<InitState>();
    const nccl::Api* api = &api_;
    std::thread([state, api, id, world = world_, rank = rank_, device = device_] {
      cudaSetDevice(device);
      nccl::Comm comm = nullptr;
      nccl::Result r = api->CommInitRank(&comm, world, id, rank);
      std::lock_guard<std::mutex> lock(state->mu);
      if (state->abandoned) {
        if (r == nccl::kSuccess) api->CommAbort(comm);
        return;
      }
      state->done = true;
      state->result = r;
      state->comm = comm;
      state->cv.notify_all();
    }).detach();
    std::unique_lock<std::mutex> lock(state->mu);
    if (!state->cv.wait_for(lock, timeout_, [&] { return state->done; })) {
      state->abandoned = true;
      lock.unlock();
      return explain("ncclCommInitRank", absl::StatusCode::kDeadlineExceeded,
                     absl::StrCat("not every rank joined within ", timeout_.count(), " ms"));
    }
    if (state->result != nccl::kSuccess) {
      lock.unlock();
      return explain("ncclCommInitRank", absl::StatusCode::kUnavailable,
                     api_.GetErrorString(state->result));
    }
    comm_ = state->comm;
    return absl::OkStatus();
  }

  absl::Status explain(absl::string_view what, absl::StatusCode code, absl::string_view detail) {
    if (rendezvous_ == nullptr) {
      return absl::Status(code, absl::StrCat(what, " on rank ", rank_, " failed: ", detail));
    }
    return rendezvous_->explain_failure(what, code, detail);
  }

  // Runs `fn` (the NCCL calls) on the stream and records the event the
  // watchdog and wait_event follow.
  template <typename Fn>
  absl::StatusOr<cudaEvent_t> enqueue(const std::string& what, Fn&& fn) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!error_.ok()) {
        return absl::Status(error_.code(), absl::StrCat(what,
                                                        ": the communicator failed earlier and is "
                                                        "unusable: ",
                                                        error_.message()));
      }
    }
    cudaSetDevice(device_);
    const uint64_t n = ++collectives_;
    const std::string full = absl::StrCat(what, " (collective #", n, ")");
    nccl::Result r = fn();
    if (r != nccl::kSuccess && r != nccl::kInProgress) {
      std::string detail = api_.GetErrorString(r);
      if (api_.GetLastError != nullptr) absl::StrAppend(&detail, ": ", api_.GetLastError(comm_));
      std::lock_guard<std::mutex> lock(mu_);
      fail_locked(full,
                  r == nccl::kRemoteError || r == nccl::kSystemError
                      ? absl::StatusCode::kUnavailable
                      : absl::StatusCode::kInternal,
                  detail);
      return error_;
    }
    cudaEvent_t event = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!event_pool_.empty()) {
        event = event_pool_.back();
        event_pool_.pop_back();
      }
    }
    cudaError_t e =
        event != nullptr ? cudaSuccess : cudaEventCreateWithFlags(&event, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventRecord(event, stream_);
    std::lock_guard<std::mutex> lock(mu_);
    if (e != cudaSuccess) {
      fail_locked(full, absl::StatusCode::kInternal,
                  absl::StrCat("cudaEventRecord: ", cuda_error(e)));
      return error_;
    }
    pending_.push_back(Pending{event, Clock::now() + timeout_, full});
    cv_.notify_all();
    return event;
  }

  // Host-synchronous wait for `event` (recorded by enqueue) or the error.
  absl::Status wait_event(cudaEvent_t event, const std::string& what) {
    const auto deadline = Clock::now() + timeout_;
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!error_.ok()) return error_;
        cudaError_t q = cudaEventQuery(event);
        if (q == cudaSuccess) return absl::OkStatus();
        if (q != cudaErrorNotReady) {
          fail_locked(what, absl::StatusCode::kInternal, cuda_error(q));
          return error_;
        }
        if (Clock::now() >= deadline) {
          fail_locked(what, absl::StatusCode::kDeadlineExceeded,
                      absl::StrCat("not complete after ", timeout_.count(), " ms"));
          return error_;
        }
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }

  // The first failure: abort NCCL (so kernels stuck on a dead peer end),
  // then record why. Holds mu_.
  void fail_locked(absl::string_view what, absl::StatusCode code, absl::string_view detail) {
    if (!error_.ok()) return;
    if (comm_ != nullptr && !aborted_) {
      api_.CommAbort(comm_);
      aborted_ = true;
    }
    error_ = explain(what, code, detail);
    if (error_.ok()) error_ = absl::InternalError(absl::StrCat(what, ": failed"));
    cv_.notify_all();
  }

  void watch() {
    cudaSetDevice(device_);
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      cv_.wait_for(lock, std::chrono::milliseconds(5));
      while (!pending_.empty() && error_.ok()) {
        Pending& p = pending_.front();
        cudaError_t q = cudaEventQuery(p.event);
        if (q == cudaSuccess) {
          event_pool_.push_back(p.event);
          pending_.pop_front();
          continue;
        }
        if (q != cudaErrorNotReady) {
          fail_locked(p.what, absl::StatusCode::kInternal, cuda_error(q));
        } else if (Clock::now() >= p.deadline) {
          fail_locked(p.what, absl::StatusCode::kDeadlineExceeded,
                      absl::StrCat("not complete after ", timeout_.count(), " ms"));
        }
        break;
      }
      if (pending_.empty()) cv_.notify_all();
      if (error_.ok() && !pending_.empty()) {
        nccl::Result async = nccl::kSuccess;
        if (api_.CommGetAsyncError(comm_, &async) == nccl::kSuccess && async != nccl::kSuccess &&
            async != nccl::kInProgress) {
          std::string detail = api_.GetErrorString(async);
          if (api_.GetLastError != nullptr) {
            absl::StrAppend(&detail, ": ", api_.GetLastError(comm_));
          }
          fail_locked(pending_.front().what, absl::StatusCode::kUnavailable, detail);
        }
      }
    }
  }

  const nccl::Api& api_;
  const int rank_;
  const int world_;
  const int device_;
  cudaStream_t stream_;
  const std::chrono::milliseconds timeout_;
  std::unique_ptr<Rendezvous> rendezvous_;
  nccl::Comm comm_ = nullptr;
  double* host_buffer_ = nullptr;  // device memory
  double* pinned_ = nullptr;       // pinned host memory
  uint64_t collectives_ = 0;

  std::mutex mu_;  // guards everything below, and the store in explain()
  std::condition_variable cv_;
  std::deque<Pending> pending_;
  std::vector<cudaEvent_t> event_pool_;
  absl::Status error_;
  bool aborted_ = false;
  bool stop_ = false;
  std::thread watchdog_;
};

}  // namespace

absl::Status check_nccl(const CommOptions& options) {
  STRATA_ASSIGN_OR_RETURN(const nccl::Api* api, nccl::load());
  (void)api;
  int devices = 0;
  if (cudaError_t e = cudaGetDeviceCount(&devices); e != cudaSuccess || devices == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the NCCL backend needs a CUDA device, and there is none (",
        e != cudaSuccess ? cuda_error(e) : std::string("0 devices"), "); use the Gloo backend"));
  }
  if (options.cuda_device < 0 || options.cuda_device >= devices) {
    return absl::FailedPreconditionError(absl::StrCat("CUDA device ", options.cuda_device,
                                                      " does not exist (this machine has ", devices,
                                                      "); is LOCAL_RANK right?"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Communicator>> make_nccl_communicator(
    const RankInfo& info, const CommOptions& options, std::unique_ptr<Rendezvous> rendezvous) {
  STRATA_RETURN_IF_ERROR(check_nccl(options));
  STRATA_ASSIGN_OR_RETURN(const nccl::Api* api, nccl::load());
  auto comm = std::make_unique<NcclCommunicator>(*api, info, options, std::move(rendezvous));
  STRATA_RETURN_IF_ERROR(comm->start());
  return std::unique_ptr<Communicator>(std::move(comm));
}

}  // namespace strata::dist

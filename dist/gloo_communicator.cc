// GlooCommunicator: the collectives on Gloo's TCP transport (host memory).
//
// Which Gloo algorithm does what:
//   all_reduce, all_reduce_host  gloo::allreduce (ring), our reduce kernels
//   all_gather                   gloo::allgatherv (per-rank counts)
//   reduce_scatter               our ring over Gloo's point-to-point
//                                buffers (ring_reduce_scatter), per-rank
//                                counts. Gloo 0.5's ReduceScatterHalvingDoubling
//                                is an old-style algorithm with no timeout
//                                or per-call tag, and one gloo::reduce per
//                                rank's slice measured 1.4-2x slower than the
//                                whole allreduce.
//   broadcast, barrier           gloo::broadcast, gloo::barrier
// Every call gets its own tag (so a rank running ahead cannot match a message
// to the wrong collective) and the timeout from connect().
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "dist/backends.h"
#include "dist/reduce_ops.h"
#include "gloo/allgatherv.h"
#include "gloo/allreduce.h"
#include "gloo/barrier.h"
#include "gloo/broadcast.h"
#include "gloo/common/error.h"
#include "gloo/rendezvous/context.h"
#include "gloo/rendezvous/store.h"
#include "gloo/transport/tcp/device.h"
#include "gloo/types.h"

namespace strata::dist {
namespace {

// Slot prefix for our own point-to-point rounds; Gloo's collectives use
// 0x01..0x08 (gloo/types.h).
constexpr uint8_t kRingSlotPrefix = 0x20;

// gloo::rendezvous::Store over our store; Gloo expects exceptions.
class GlooStore final : public gloo::rendezvous::Store {
 public:
  GlooStore(StoreClient& client, std::chrono::milliseconds timeout)
      : client_(client), timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    throw_if(client_.set(prefixed(key), absl::string_view(data.data(), data.size())));
  }
  std::vector<char> get(const std::string& key) override {
    auto value = client_.get(prefixed(key), timeout_);
    throw_if(value.status());
    return std::vector<char>(value->begin(), value->end());
  }
  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override {
    std::vector<std::string> full;
    for (const auto& k : keys) full.push_back(prefixed(k));
    throw_if(client_.wait(full, timeout));
  }

 private:
  static std::string prefixed(const std::string& key) { return "gloo/" + key; }
  static void throw_if(const absl::Status& s) {
    if (!s.ok()) throw gloo::IoException(std::string(s.message()));
  }
  StoreClient& client_;
  std::chrono::milliseconds timeout_;
};

// Gloo says "Timed out" (its waits) and our store "within N ms" (its
// waits); anything else is a broken connection.
absl::StatusCode failure_code(absl::string_view detail) {
  return absl::StrContains(detail, "Timed out") || absl::StrContains(detail, "timed out") ||
                 absl::StrContains(detail, " within ")
             ? absl::StatusCode::kDeadlineExceeded
             : absl::StatusCode::kUnavailable;
}

std::string describe(DType dtype, uint64_t count) {
  return absl::StrCat(count, " ", std::string(dtype_name(dtype)));
}

class GlooCommunicator final : public Communicator {
 public:
  GlooCommunicator(const RankInfo& info, const CommOptions& options,
                   std::unique_ptr<Rendezvous> rendezvous)
      : rank_(info.rank),
        world_(info.world_size),
        timeout_(options.timeout),
        rendezvous_(std::move(rendezvous)) {}

  ~GlooCommunicator() override {
    // Tearing down the pairs of a broken context may throw; nothing to do then.
    try {
      context_.reset();
      device_.reset();
    } catch (const std::exception&) {
    }
  }

  absl::Status start() {
    gloo::transport::tcp::attr attr;
    if (const char* iface = std::getenv("GLOO_SOCKET_IFNAME"); iface != nullptr && *iface) {
      // The name torch users already set to pick the NIC.
      attr.iface = iface;
    } else {
      // Peers reach this rank where rank 0's store reached it: the
      // interface the store connection left from (127.0.0.1 on one machine).
      std::string local = rendezvous_->store().local_address();
      attr.hostname = local.substr(0, local.rfind(':'));
      if (!attr.hostname.empty() && attr.hostname.front() == '[') {
        attr.hostname = attr.hostname.substr(1, attr.hostname.size() - 2);
      }
    }
    const std::string what =
        absl::StrCat("connecting Gloo (", attr.iface.empty() ? attr.hostname : attr.iface, ")");
    try {
      device_ = gloo::transport::tcp::CreateDevice(attr);
      auto context = std::make_shared<gloo::rendezvous::Context>(rank_, world_);
      context->setTimeout(timeout_);
      GlooStore store(rendezvous_->store(), timeout_);
      context->connectFullMesh(store, device_);
      context_ = std::move(context);
    } catch (const std::exception& e) {
      return rendezvous_->explain_failure(what, failure_code(e.what()), e.what());
    }
    return absl::OkStatus();
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  Backend backend() const override { return Backend::kGloo; }
  bool device_memory() const override { return false; }

  absl::Status all_reduce(void* data, uint64_t count, DType dtype, ReduceOp op) override {
    return run(absl::StrCat("all_reduce of ", describe(dtype, count)), [&] {
      if (count == 0) return;
      gloo::AllreduceOptions opts(context_);
      with_type(dtype, [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        opts.setOutput(static_cast<T*>(data), count);
      });
      opts.setReduceFunction(reduce_fn(dtype, op));
      opts.setTag(next_tag());
      opts.setTimeout(timeout_);
      gloo::allreduce(opts);
    });
  }

  absl::Status all_reduce_host(std::span<double> data, ReduceOp op) override {
    return run(absl::StrCat("all_reduce_host of ", data.size(), " fp64"), [&] {
      if (data.empty()) return;
      gloo::AllreduceOptions opts(context_);
      opts.setOutput(data.data(), data.size());
      opts.setReduceFunction(reduce_fn_f64(op));
      opts.setTag(next_tag());
      opts.setTimeout(timeout_);
      gloo::allreduce(opts);
    });
  }

  absl::Status all_gather(const void* send, void* recv, std::span<const uint64_t> counts,
                          DType dtype) override {
    STRATA_RETURN_IF_ERROR(check_counts(counts, "all_gather"));
    uint64_t total = 0, offset = 0;
    for (int r = 0; r < world_; ++r) {
      if (r == rank_) offset = total;
      total += counts[r];
    }
    return run(absl::StrCat("all_gather of ", describe(dtype, total)), [&] {
      if (total == 0) return;
      const size_t esize = dtype_size(dtype);
      gloo::AllgathervOptions opts(context_);
      with_type(dtype, [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        T* out = static_cast<T*>(recv);
        // In place (send already at this rank's place in recv): no input.
        if (static_cast<const char*>(send) != static_cast<char*>(recv) + offset * esize) {
          opts.setInput(const_cast<T*>(static_cast<const T*>(send)), counts[rank_]);
        }
        opts.setOutput(out, std::vector<size_t>(counts.begin(), counts.end()));
      });
      opts.setTag(next_tag());
      opts.setTimeout(timeout_);
      gloo::allgatherv(opts);
    });
  }

  absl::Status reduce_scatter(const void* send, void* recv, std::span<const uint64_t> counts,
                              DType dtype, ReduceOp op) override {
    STRATA_RETURN_IF_ERROR(check_counts(counts, "reduce_scatter"));
    uint64_t total = 0, largest = 0;
    for (uint64_t c : counts) {
      total += c;
      largest = std::max(largest, c);
    }
    const size_t esize = dtype_size(dtype);
    if (scratch_.size() < 2 * largest * esize) scratch_.resize(2 * largest * esize);
    return run(absl::StrCat("reduce_scatter of ", describe(dtype, total)), [&] {
      ring_reduce_scatter(static_cast<const char*>(send), static_cast<char*>(recv), counts, esize,
                          reduce_fn(dtype, op));
    });
  }

  absl::Status broadcast(void* data, uint64_t count, DType dtype, int root) override {
    if (root < 0 || root >= world_) {
      return absl::InvalidArgumentError(
          absl::StrCat("broadcast root ", root, " is not a rank of a world of ", world_));
    }
    return run(absl::StrCat("broadcast of ", describe(dtype, count), " from rank ", root), [&] {
      if (count == 0) return;
      gloo::BroadcastOptions opts(context_);
      with_type(dtype, [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        opts.setOutput(static_cast<T*>(data), count);
      });
      opts.setRoot(root);
      opts.setTag(next_tag());
      opts.setTimeout(timeout_);
      gloo::broadcast(opts);
    });
  }

  absl::Status barrier() override {
    return run("barrier", [&] {
      gloo::BarrierOptions opts(context_);
      opts.setTag(next_tag());
      opts.setTimeout(timeout_);
      gloo::barrier(opts);
    });
  }

 private:
  // Ring reduce-scatter over per-rank counts, on Gloo's point-to-point
  // buffers. Step s (0..N-2): send this rank's partial sum of chunk
  // (r-s-1) mod N to the right, receive the left's partial of chunk
  // (r-s-2) mod N and add this rank's own elements of it; after N-1 steps
  // the chunk received is chunk r, fully reduced, written to recv. Each
  // rank moves (N-1)/N of the data once. `recv` may alias this rank's
  // place in `send`: that chunk is only read at the last step.
  void ring_reduce_scatter(const char* send, char* recv, std::span<const uint64_t> counts,
                           size_t esize, ReduceFn reduce) {
    const int n = world_;
    const int right = (rank_ + 1) % n;
    const int left = (rank_ + n - 1) % n;
    std::vector<uint64_t> offset(n, 0);
    uint64_t total = 0;
    for (int c = 0; c < n; ++c) {
      offset[c] = total;
      total += counts[c];
    }
    uint64_t largest = *std::max_element(counts.begin(), counts.end());
    char* acc = scratch_.data();
    char* inbox = scratch_.data() + largest * esize;
    auto send_buf = context_->createUnboundBuffer(const_cast<char*>(send), total * esize);
    auto acc_buf = context_->createUnboundBuffer(acc, largest * esize);
    auto inbox_buf = context_->createUnboundBuffer(inbox, largest * esize);
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    auto left_ms = [&] {
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      return std::max(ms, std::chrono::milliseconds(1));
    };
    for (int step = 0; step < n - 1; ++step) {
      const uint64_t slot = gloo::Slot::build(kRingSlotPrefix, next_tag());
      const int out_chunk = (rank_ - step - 1 + 2 * n) % n;
      const int in_chunk = (rank_ - step - 2 + 2 * n) % n;
      const uint64_t out_n = counts[out_chunk];
      const uint64_t in_n = counts[in_chunk];
      if (out_n > 0) {
        if (step == 0) {
          send_buf->send(right, slot, offset[out_chunk] * esize, out_n * esize);
        } else {
          acc_buf->send(right, slot, 0, out_n * esize);
        }
      }
      if (in_n > 0) inbox_buf->recv(left, slot, 0, in_n * esize);
      if (out_n > 0 && !(step == 0 ? send_buf : acc_buf)->waitSend(left_ms())) {
        throw gloo::IoException("reduce_scatter: send aborted");
      }
      if (in_n > 0) {
        if (!inbox_buf->waitRecv(left_ms())) {
          throw gloo::IoException("reduce_scatter: receive aborted");
        }
        const char* own = send + offset[in_chunk] * esize;
        char* out = step == n - 2 ? recv : acc;
        reduce(out, inbox, own, in_n);
      }
    }
  }

  // Calls fn with a null pointer of the element type the dtype's size needs
  // (Gloo only moves bytes; the reduce kernels know the real type).
  template <typename Fn>
  static void with_type(DType dtype, Fn&& fn) {
    if (dtype_size(dtype) == 4) {
      fn(static_cast<float*>(nullptr));
    } else {
      fn(static_cast<uint16_t*>(nullptr));
    }
  }

  absl::Status check_counts(std::span<const uint64_t> counts, const char* what) {
    if (counts.size() != static_cast<size_t>(world_)) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": ", counts.size(), " counts for a world of ", world_));
    }
    return absl::OkStatus();
  }

  uint32_t next_tag() { return tag_++; }

  template <typename Fn>
  absl::Status run(const std::string& what, Fn&& fn) {
    if (!error_.ok()) {
      return absl::Status(error_.code(),
                          absl::StrCat(what, ": the communicator failed earlier and is unusable: ",
                                       error_.message()));
    }
    ++collectives_;
    try {
      fn();
      return absl::OkStatus();
    } catch (const std::exception& e) {
      error_ = rendezvous_->explain_failure(absl::StrCat(what, " (collective #", collectives_, ")"),
                                            failure_code(e.what()), e.what());
      return error_;
    }
  }

  const int rank_;
  const int world_;
  const std::chrono::milliseconds timeout_;
  std::unique_ptr<Rendezvous> rendezvous_;
  std::shared_ptr<gloo::transport::Device> device_;
  std::shared_ptr<gloo::Context> context_;
  std::vector<char> scratch_;
  uint32_t tag_ = 1;
  uint64_t collectives_ = 0;
  absl::Status error_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> make_gloo_communicator(
    const RankInfo& info, const CommOptions& options, std::unique_ptr<Rendezvous> rendezvous) {
  auto comm = std::make_unique<GlooCommunicator>(info, options, std::move(rendezvous));
  STRATA_RETURN_IF_ERROR(comm->start());
  return std::unique_ptr<Communicator>(std::move(comm));
}

}  // namespace strata::dist

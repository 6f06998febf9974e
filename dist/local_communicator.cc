#include <cstring>

#include "absl/strings/str_cat.h"
#include "dist/backends.h"

namespace strata::dist {
namespace {

// One rank: every reduction of one contribution is that contribution.
class LocalCommunicator final : public Communicator {
 public:
  explicit LocalCommunicator(Backend backend) : backend_(backend) {}
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  Backend backend() const override { return backend_; }
  bool device_memory() const override { return false; }

  absl::Status all_reduce(void*, uint64_t, DType, ReduceOp) override { return absl::OkStatus(); }
  absl::Status all_gather(const void* send, void* recv, std::span<const uint64_t> counts,
                          DType dtype) override {
    return copy(send, recv, counts, dtype, "all_gather");
  }
  absl::Status reduce_scatter(const void* send, void* recv, std::span<const uint64_t> counts,
                              DType dtype, ReduceOp) override {
    return copy(send, recv, counts, dtype, "reduce_scatter");
  }
  absl::Status broadcast(void*, uint64_t, DType, int root) override {
    if (root != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("broadcast root ", root, " is not a rank of a world of 1"));
    }
    return absl::OkStatus();
  }
  absl::Status barrier() override { return absl::OkStatus(); }
  absl::Status all_reduce_host(std::span<double>, ReduceOp) override { return absl::OkStatus(); }

 private:
  static absl::Status copy(const void* send, void* recv, std::span<const uint64_t> counts,
                           DType dtype, const char* what) {
    if (counts.size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": ", counts.size(), " counts for a world of 1"));
    }
    if (send != recv && counts[0] > 0) std::memmove(recv, send, counts[0] * dtype_size(dtype));
    return absl::OkStatus();
  }

  Backend backend_;
};

}  // namespace

std::unique_ptr<Communicator> make_local_communicator(Backend backend) {
  return std::make_unique<LocalCommunicator>(backend);
}

}  // namespace strata::dist

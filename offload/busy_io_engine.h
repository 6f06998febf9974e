// BusyIoEngine: an IoEngine that forwards every call to another and measures
// how long the drive had work: the time during which at least one read (or
// write, or either) was in flight, as the kernel's io_ticks counts a disk's
// busy time. The benchmarks rate NVMe by it (`bench step`, `bench store`)
// instead of bytes / a probe's rate, which page cache and queue depth make
// wrong both ways.
//
// A waitable request counts from submit() until wait() or poll() returns its
// completion (the engine reports no earlier time), a detached one until its
// callback runs: an upper bound of the device's own busy time, and never
// more than the wall time it spans, so no step comes out faster than it.
//
// Threading: thread-safe as the IoEngine contract asks. Ownership: `inner`
// is not owned and must outlive this engine.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "swap/io_engine.h"

namespace strata::offload {

struct IoBusyTimes {
  int64_t read_ns = 0;   // at least one read in flight
  int64_t write_ns = 0;  // at least one write in flight
  int64_t any_ns = 0;    // at least one request in flight
};

class BusyIoEngine final : public swap::IoEngine {
 public:
  explicit BusyIoEngine(swap::IoEngine* inner) : inner_(inner) {}
  ~BusyIoEngine() override = default;

  // Busy time since construction, the intervals still open counted up to now
  // (so the difference of two calls is the busy time between them).
  IoBusyTimes busy() const;

  std::string_view name() const override { return inner_->name(); }
  const swap::IoEngineOptions& options() const override { return inner_->options(); }
  absl::StatusOr<swap::FileId> open(const std::vector<std::string>& stripe_paths,
                                    const swap::OpenOptions& options) override {
    return inner_->open(stripe_paths, options);
  }
  using swap::IoEngine::open;
  absl::Status close(swap::FileId file) override { return inner_->close(file); }
  absl::Status preallocate(swap::FileId file, uint64_t logical_bytes) override {
    return inner_->preallocate(file, logical_bytes);
  }
  absl::StatusOr<uint64_t> size(swap::FileId file) override { return inner_->size(file); }
  absl::Status sync(swap::FileId file) override { return inner_->sync(file); }
  bool is_direct(swap::FileId file) const override { return inner_->is_direct(file); }
  std::string describe(swap::FileId file) const override { return inner_->describe(file); }
  absl::Status register_buffer(void* data, size_t bytes) override {
    return inner_->register_buffer(data, bytes);
  }
  absl::Status unregister_buffer(void* data) override { return inner_->unregister_buffer(data); }
  absl::StatusOr<swap::Ticket> submit(swap::IoRequest request) override;
  absl::Status wait(swap::Ticket ticket) override;
  std::optional<absl::Status> poll(swap::Ticket ticket) override;
  absl::Status drain() override { return inner_->drain(); }
  void shutdown() override { inner_->shutdown(); }

 private:
  static constexpr int kAny = 2;  // slots: read, write, any
  void begin(swap::IoOp op);
  void end(swap::IoOp op);
  void end_ticket(swap::Ticket ticket);

  swap::IoEngine* inner_;
  mutable std::mutex mu_;
  std::array<int64_t, 3> in_flight_{};
  std::array<int64_t, 3> since_ns_{};
  std::array<int64_t, 3> busy_ns_{};
  std::unordered_map<swap::Ticket, swap::IoOp> tickets_;
};

}  // namespace strata::offload

// GatedIoEngine: an IoEngine for tests that forwards everything to a real
// engine, but can hold back detached reads or writes (the ones the
// TieredStore's NVMe pipeline submits) until the test releases them, or fail
// detached writes. It counts the detached requests in flight (submitted, the
// caller's callback not yet run) and the most seen at once, and checks that
// a held write's buffer still holds, when the write goes out, the bytes it
// held when it was submitted (a host block reused too early would not).
//
// Threading: every method is thread-safe. Held requests must be released
// (release_all) before the store that submitted them is destroyed.
#pragma once

#include <algorithm>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "swap/io_engine.h"

namespace strata::testing {

class GatedIoEngine final : public swap::IoEngine {
 public:
  explicit GatedIoEngine(swap::IoEngine& inner) : inner_(inner) {}
  ~GatedIoEngine() override { release_all(); }

  void hold_reads(bool on) { set(&hold_reads_, on); }
  void hold_writes(bool on) { set(&hold_writes_, on); }
  void fail_writes(bool on) { set(&fail_writes_, on); }
  // Sends every held request to the real engine.
  void release_all() {
    std::deque<Held> held;
    {
      std::lock_guard lock(mu_);
      held.swap(held_);
    }
    for (Held& h : held) forward(std::move(h));
  }
  int held() const {
    std::lock_guard lock(mu_);
    return static_cast<int>(held_.size());
  }
  int max_reads_in_flight() const { return read(max_in_flight_[0]); }
  int max_writes_in_flight() const { return read(max_in_flight_[1]); }
  int writes_in_flight() const { return read(in_flight_[1]); }
  // Held writes whose buffer changed between submission and going out.
  int torn_writes() const { return read(torn_writes_); }
  void reset_counts() {
    std::lock_guard lock(mu_);
    max_in_flight_[0] = in_flight_[0];
    max_in_flight_[1] = in_flight_[1];
  }

  std::string_view name() const override { return inner_.name(); }
  const swap::IoEngineOptions& options() const override { return inner_.options(); }
  absl::StatusOr<swap::FileId> open(const std::vector<std::string>& paths,
                                    const swap::OpenOptions& o) override {
    return inner_.open(paths, o);
  }
  using IoEngine::open;
  absl::Status close(swap::FileId f) override { return inner_.close(f); }
  absl::Status preallocate(swap::FileId f, uint64_t b) override { return inner_.preallocate(f, b); }
  absl::StatusOr<uint64_t> size(swap::FileId f) override { return inner_.size(f); }
  absl::Status sync(swap::FileId f) override { return inner_.sync(f); }
  bool is_direct(swap::FileId f) const override { return inner_.is_direct(f); }
  std::string describe(swap::FileId f) const override { return inner_.describe(f); }
  absl::Status register_buffer(void* d, size_t b) override { return inner_.register_buffer(d, b); }
  absl::Status unregister_buffer(void* d) override { return inner_.unregister_buffer(d); }
  absl::Status wait(swap::Ticket t) override { return inner_.wait(t); }
  std::optional<absl::Status> poll(swap::Ticket t) override { return inner_.poll(t); }
  absl::Status drain() override { return inner_.drain(); }
  void shutdown() override { inner_.shutdown(); }

  absl::StatusOr<swap::Ticket> submit(swap::IoRequest r) override {
    if (!r.on_complete) return inner_.submit(std::move(r));
    const int k = r.op == swap::IoOp::kWrite ? 1 : 0;
    bool hold = false, fail = false;
    {
      std::lock_guard lock(mu_);
      ++in_flight_[k];
      max_in_flight_[k] = std::max(max_in_flight_[k], in_flight_[k]);
      fail = k == 1 && fail_writes_;
      hold = !fail && (k == 1 ? hold_writes_ : hold_reads_);
    }
    auto done = std::move(r.on_complete);
    r.on_complete = [this, k, done = std::move(done)](const absl::Status& s) {
      {
        std::lock_guard lock(mu_);
        --in_flight_[k];
      }
      done(s);
    };
    if (fail) {
      r.on_complete(absl::DataLossError(absl::StrCat(
          "injected write error on ", inner_.describe(r.file), " at offset ", r.offset)));
      return swap::kNoTicket;
    }
    if (hold) {
      Held h{std::move(r), {}};
      if (k == 1) h.bytes.assign(static_cast<const char*>(h.request.buffer), h.request.length);
      std::lock_guard lock(mu_);
      held_.push_back(std::move(h));
      return swap::kNoTicket;
    }
    return inner_.submit(std::move(r));
  }

 private:
  struct Held {
    swap::IoRequest request;
    std::string bytes;  // writes: the buffer as submitted
  };
  int read(const int& v) const {
    std::lock_guard lock(mu_);
    return v;
  }
  void set(bool* flag, bool on) {
    std::lock_guard lock(mu_);
    *flag = on;
  }
  void forward(Held h) {
    if (!h.bytes.empty() && std::memcmp(h.bytes.data(), h.request.buffer, h.bytes.size()) != 0) {
      std::lock_guard lock(mu_);
      ++torn_writes_;
    }
    auto submitted = inner_.submit(h.request);
    if (!submitted.ok()) h.request.on_complete(submitted.status());
  }

  swap::IoEngine& inner_;
  mutable std::mutex mu_;
  bool hold_reads_ = false;
  bool hold_writes_ = false;
  bool fail_writes_ = false;
  std::deque<Held> held_;
  int in_flight_[2] = {0, 0};
  int max_in_flight_[2] = {0, 0};
  int torn_writes_ = 0;
};

}  // namespace strata::testing

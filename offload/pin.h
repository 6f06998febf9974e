// Pin: one acquired copy of a TieredStore tensor, released on scope exit.
//
//   offload::Pin grad(store, id, Tier::kHost);
//   STRATA_ASSIGN_OR_RETURN(TensorView v, grad.acquire(Access::kRead));
//   ... use v ...
//   STRATA_RETURN_IF_ERROR(grad.release(/*dirty=*/false));
//
// release() reports the store's error; a Pin still held when it goes out of
// scope (an early return) is released clean and its error dropped, so an
// error path never leaves a copy pinned. Movable, not copyable; not
// thread-safe (one owner). The store must outlive it.
#pragma once

#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/status.h"
#include "offload/tiered_store.h"

namespace strata::offload {

class Pin {
 public:
  Pin(TieredStore* store, TensorId id, Tier tier) : store_(store), id_(id), tier_(tier) {}
  absl::StatusOr<TensorView> acquire(Access access) {
    STRATA_ASSIGN_OR_RETURN(TensorView v, store_->acquire(id_, tier_, access));
    held_ = true;
    return v;
  }
  absl::Status release(bool dirty) {
    held_ = false;
    return store_->release(id_, tier_, dirty);
  }
  ~Pin() {
    if (held_) store_->release(id_, tier_, false).IgnoreError();
  }
  Pin(const Pin&) = delete;
  Pin& operator=(const Pin&) = delete;
  Pin(Pin&& o) noexcept : store_(o.store_), id_(o.id_), tier_(o.tier_), held_(o.held_) {
    o.held_ = false;
  }
  Pin& operator=(Pin&&) = delete;

 private:
  TieredStore* store_;
  TensorId id_;
  Tier tier_;
  bool held_ = false;
};

// StreamPins: copies on one tier used by work on one device stream,
// acquired with acquire_on (the stream waits for their loads on the device)
// and released together with release_after (no host wait: the store keeps
// the stream's event). Released clean on scope exit if still held.
//
//   offload::StreamPins params(store, Tier::kDevice, stream);
//   STRATA_ASSIGN_OR_RETURN(TensorView w, params.acquire(id, Access::kRead));
//   ... enqueue kernels on `stream` reading w ...
//   STRATA_RETURN_IF_ERROR(params.release(/*dirty=*/false));
class StreamPins {
 public:
  StreamPins(TieredStore* store, Tier tier, gpu::StreamId stream)
      : store_(store), tier_(tier), stream_(stream) {}
  absl::StatusOr<TensorView> acquire(TensorId id, Access access) {
    STRATA_ASSIGN_OR_RETURN(TensorView v, store_->acquire_on(id, tier_, access, stream_));
    ids_.push_back(id);
    return v;
  }
  // `copy_back`: as TieredStore::release_after's.
  absl::Status release(bool dirty, bool copy_back = true) {
    std::vector<TensorId> ids = std::move(ids_);
    ids_.clear();
    return store_->release_after(ids, tier_, dirty, stream_, copy_back);
  }
  ~StreamPins() {
    if (!ids_.empty()) store_->release_after(ids_, tier_, false, stream_).IgnoreError();
  }
  StreamPins(const StreamPins&) = delete;
  StreamPins& operator=(const StreamPins&) = delete;

 private:
  TieredStore* store_;
  Tier tier_;
  gpu::StreamId stream_;
  std::vector<TensorId> ids_;
};

}  // namespace strata::offload

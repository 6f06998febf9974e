#include "engine/speculation.h"

#include <algorithm>
#include <cstring>

#include "core/status.h"

namespace strata::engine {

Speculation::Speculation(SpeculationPolicy policy, std::vector<std::vector<uint64_t>> numels,
                         uint64_t capacity_floats)
    : policy_(policy),
      numels_(std::move(numels)),
      capacity_(capacity_floats),
      at_(numels_.size(), -1),
      saved_(numels_.size(), 0),
      stepped_(numels_.size(), 0) {}

void Speculation::begin_step(double prev_host_seconds, double prev_backward_seconds) {
  // The copies' memory traffic only slows a host that could not keep up
  // with backward anyway; it then steps after backward, as sync does.
  active_ = capacity_ > 0 &&
            (policy_ == SpeculationPolicy::kAlways ||
             (policy_ == SpeculationPolicy::kAuto && prev_host_seconds <= prev_backward_seconds));
  used_ = 0;
  std::fill(at_.begin(), at_.end(), -1);
  std::fill(saved_.begin(), saved_.end(), 0);
  std::fill(stepped_.begin(), stepped_.end(), 0);
}

uint64_t Speculation::layer_floats(int layer) const {
  uint64_t floats = 0;
  for (uint64_t n : numels_[layer]) floats += 3 * n;
  return floats;
}

bool Speculation::reserve(int layer) {
  STRATA_CHECK(at_[layer] < 0);
  const uint64_t floats = layer_floats(layer);
  if (!active_ || used_ + floats > capacity_) return false;
  if (copies_.size() < capacity_) copies_.resize(capacity_);
  at_[layer] = static_cast<int64_t>(used_);
  used_ += floats;
  return true;
}

const float* Speculation::slot(int layer, int param) const {
  STRATA_CHECK(at_[layer] >= 0);
  uint64_t at = static_cast<uint64_t>(at_[layer]);
  for (int i = 0; i < param; ++i) at += 3 * numels_[layer][i];
  return copies_.data() + at;
}

void Speculation::save(int layer, int param, const float* master, const float* exp_avg,
                       const float* exp_avg_sq) {
  // Params are saved in order, each once, so saved_ counts a prefix.
  STRATA_CHECK(param == saved_[layer]);
  const uint64_t n = numels_[layer][param];
  float* dst = const_cast<float*>(slot(layer, param));
  std::memcpy(dst, master, n * sizeof(float));
  std::memcpy(dst + n, exp_avg, n * sizeof(float));
  std::memcpy(dst + 2 * n, exp_avg_sq, n * sizeof(float));
  ++saved_[layer];
}

float* Speculation::save_slot(int layer, int param) {
  STRATA_CHECK(param == saved_[layer]);
  return const_cast<float*>(slot(layer, param));
}

void Speculation::mark_saved(int layer, int param) {
  STRATA_CHECK(param == saved_[layer]);
  ++saved_[layer];
}

void Speculation::restore(int layer, int param, float* master, float* exp_avg,
                          float* exp_avg_sq) const {
  STRATA_CHECK(param < saved_[layer]);
  const uint64_t n = numels_[layer][param];
  const float* src = slot(layer, param);
  std::memcpy(master, src, n * sizeof(float));
  std::memcpy(exp_avg, src + n, n * sizeof(float));
  std::memcpy(exp_avg_sq, src + 2 * n, n * sizeof(float));
}

int Speculation::stepped_layers() const {
  return static_cast<int>(std::count(stepped_.begin(), stepped_.end(), 1));
}

Speculation::Plan Speculation::plan(int layer, bool apply, bool clipped) const {
  const bool was_stepped = stepped(layer);
  if (!apply) return was_stepped ? Plan::kRestore : Plan::kNothing;
  if (!was_stepped) return Plan::kStep;
  // The speculative step used clip coefficient 1: right unless clipped.
  return clipped ? Plan::kRestoreAndStep : Plan::kKeep;
}

}  // namespace strata::engine

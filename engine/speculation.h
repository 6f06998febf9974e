// Speculation: overlap mode's speculative optimizer steps and the copies
// that undo them.
//
// In overlap mode a layer is stepped during backward, before the step is
// decided (overflow, clipping, or a failure later in the step). Before a
// layer is stepped speculatively its fp32 master, exp_avg and exp_avg_sq
// are saved here, param by param; undoing the layer writes them back (and
// the engine re-derives the compute param from the master, which is always
// the master rounded to nearest even). So a skipped, clipped or failed step
// leaves every tensor bit for bit as sync mode would.
//
// Contract:
// - begin_step() decides whether this step speculates (the policy, and for
//   kAuto whether the host kept up with backward in the step before) and
//   forgets the previous step's copies.
// - reserve(layer) claims room for every param of the layer; a layer that
//   does not fit in capacity_floats is not stepped before the decision.
// - save(layer, param, ...) must precede any write to that param's state;
//   undo restores exactly the params saved, so a step that failed half way
//   through a layer is undone too. mark_stepped(layer) counts a layer whose
//   speculative step completed.
// - After the decision, plan(layer, ...) says what the layer still needs;
//   on a failed step every layer with copies() is restored.
//
// Threading: reserve, save and mark_stepped run on the engine's worker;
// every other method on the engine's thread while the worker is drained
// (OrderedWorker::drain orders the two). Memory: the copies are ordinary
// host memory, allocated on the first reserve() and kept.
#pragma once

#include <cstdint>
#include <vector>

namespace strata::engine {

enum class SpeculationPolicy {
  kAuto,    // speculate while the host kept up with backward in the previous step
  kAlways,  // every step (tests, benchmarks)
  kNever,   // overlap the gradient copies only; the optimizer runs after backward
};

class Speculation {
 public:
  // numels[layer][param]: the element count of every param.
  Speculation(SpeculationPolicy policy, std::vector<std::vector<uint64_t>> numels,
              uint64_t capacity_floats);

  // A new step; the timings are those of the previous step.
  void begin_step(double prev_host_seconds, double prev_backward_seconds);
  bool active() const { return active_; }

  bool reserve(int layer);
  void save(int layer, int param, const float* master, const float* exp_avg,
            const float* exp_avg_sq);
  // The same copy written by the optimizer's own pass: the param's slot
  // (master, exp_avg, exp_avg_sq, numel floats each, in that order), then
  // mark_saved once the pass has written it (before anything can fail).
  float* save_slot(int layer, int param);
  void mark_saved(int layer, int param);
  void mark_stepped(int layer) { stepped_[layer] = 1; }
  // The layer's speculative step was undone (more gradient arrived after
  // it): it is stepped after the decision; its copies stay for a failure.
  void mark_restored(int layer) { stepped_[layer] = 0; }

  bool stepped(int layer) const { return stepped_[layer] != 0; }
  int stepped_layers() const;
  // The layer has saved params (stepped, or failed while stepping).
  bool has_copies(int layer) const { return saved_[layer] > 0; }
  int saved_params(int layer) const { return saved_[layer]; }
  void restore(int layer, int param, float* master, float* exp_avg, float* exp_avg_sq) const;

  // What a layer needs once the step is decided (`apply`: not skipped;
  // `clipped`: the gradient is divided by a clip coefficient above 1).
  enum class Plan { kStep, kKeep, kRestore, kRestoreAndStep, kNothing };
  Plan plan(int layer, bool apply, bool clipped) const;

 private:
  uint64_t layer_floats(int layer) const;
  const float* slot(int layer, int param) const;

  SpeculationPolicy policy_;
  std::vector<std::vector<uint64_t>> numels_;
  uint64_t capacity_ = 0;  // floats
  bool active_ = false;
  std::vector<float> copies_;
  uint64_t used_ = 0;          // floats
  std::vector<int64_t> at_;    // per layer: offset in copies_, -1 none
  std::vector<int> saved_;     // per layer: params saved so far
  std::vector<char> stepped_;  // per layer: speculative step completed
};

}  // namespace strata::engine

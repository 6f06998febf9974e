// ZeRO's partition of one parameter across data-parallel ranks: the rule
// the optimizer (its store, its optimizer pass, its collectives), the
// placement (bytes per rank) and checkpoints (shards, resharding on load)
// share, so they cannot disagree.
//
// Each parameter's numel elements are split into world_size contiguous
// slices in rank order, as evenly as integers allow: every slice has
// numel / world elements and the first numel % world ranks one more
// (DeepSpeed splits its flat buffer evenly too; strata splits each
// parameter, so a parameter's slice never spans two tensors). A slice is
// empty only when numel < world_size. world_size 1: the whole parameter.
// ZeRO stage 0 splits nothing (state_slice): as in DeepSpeed it is plain
// data parallel, every rank holding the whole master and states, summing
// the gradients with all_reduce and applying the same whole update, with
// nothing to gather; stages 1 to 3 split the fp32 state by the rule.
// Pure functions; any thread.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace strata::engine {

struct ParamSlice {
  uint64_t offset = 0;  // first element of the rank's slice
  uint64_t numel = 0;   // elements in it (0 only when numel < world_size)
};

inline ParamSlice partition_slice(uint64_t numel, int rank, int world_size) {
  const uint64_t w = static_cast<uint64_t>(std::max(1, world_size));
  const uint64_t r = static_cast<uint64_t>(rank);
  const uint64_t base = numel / w, extra = numel % w;
  return ParamSlice{.offset = r * base + std::min(r, extra), .numel = base + (r < extra ? 1 : 0)};
}

// Whether ZeRO `stage` splits the fp32 state (master, moments, grad32)
// across ranks.
inline bool zero_partitions_state(int stage) { return stage >= 1; }

// The part of a parameter whose fp32 state `rank` holds at ZeRO `stage`:
// its partition_slice, or the whole parameter at stage 0.
inline ParamSlice state_slice(uint64_t numel, int rank, int world_size, int stage) {
  return zero_partitions_state(stage) ? partition_slice(numel, rank, world_size)
                                      : ParamSlice{.offset = 0, .numel = numel};
}

// Every rank's slice length, in rank order (the counts of all_gather and
// reduce_scatter).
inline std::vector<uint64_t> partition_counts(uint64_t numel, int world_size) {
  std::vector<uint64_t> counts;
  for (int r = 0; r < std::max(1, world_size); ++r) {
    counts.push_back(partition_slice(numel, r, world_size).numel);
  }
  return counts;
}

}  // namespace strata::engine

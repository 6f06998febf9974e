// OptimizerPools: stratad's optimizer threads, one pool per NUMA node, each
// with its FairScheduler (fair_scheduler.h) across the sessions it serves.
//
// plan_pools() spreads the thread count over the topology's NUMA nodes in
// proportion to their CPUs (each node's pool runs on that node's CPUs, so a
// pass reads its memory locally); on a one-node machine it is one pool. A
// session is pinned at attach to the pool with the fewest sessions (ties:
// the lowest node), and its arena's memory is bound to that pool's node
// before it is first touched (bind_to_node), so a session's passes read
// local memory.
//
// Threading: pick/release and the pools' schedulers from any thread; the
// pools live as long as the OptimizerPools.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "core/topology.h"
#include "daemon/fair_scheduler.h"
#include "oneapi/tbb/task_arena.h"

namespace strata::daemon {

struct PoolPlan {
  int node = 0;           // the NUMA node's os_index
  std::vector<int> cpus;  // its CPUs
  int threads = 0;        // >= 1
};
// threads 0: one per CPU of every node. Fewer threads than nodes: pools on
// the first `threads` nodes with CPUs, one thread each. A topology without
// NUMA nodes (or no CPUs listed) is one pool on node 0.
std::vector<PoolPlan> plan_pools(const Topology& topo, int threads);

struct OptimizerPool {
  PoolPlan plan;
  std::unique_ptr<tbb::task_arena> arena;
  FairScheduler scheduler;
  int sessions = 0;  // pinned to it (guarded by OptimizerPools' mutex)
};

class OptimizerPools {
 public:
  // Pools per plan_pools(topo, threads); a multi-node plan constrains each
  // arena to its node (TBB's NUMA constraints; ignored where oneTBB has no
  // tbbbind).
  OptimizerPools(const Topology& topo, int threads);

  int size() const { return static_cast<int>(pools_.size()); }
  OptimizerPool& pool(int i) { return *pools_[i]; }
  // The pool a new session is pinned to (counted until release()).
  int pick();
  void release(int i);

 private:
  std::mutex mu_;
  std::vector<std::unique_ptr<OptimizerPool>> pools_;
};

// Binds [addr, addr + bytes) to NUMA node `node` (mbind, MPOL_PREFERRED:
// the kernel still falls back to other nodes when this one is full). Call
// before the memory is first touched. A no-op returning OK on a kernel
// without NUMA support.
absl::Status bind_to_node(void* addr, uint64_t bytes, int node);

}  // namespace strata::daemon
